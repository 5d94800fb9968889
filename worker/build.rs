//! Links libtorch into this crate's tests with an rpath and a kept `libtorch_cuda`.

include!("../build-support/link_libtorch.rs");

fn main() {
    link_libtorch();
}
