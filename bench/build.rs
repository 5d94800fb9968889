//! Links libtorch into the bench binary with an rpath and a kept `libtorch_cuda`.

include!("../build-support/link_libtorch.rs");

fn main() {
    link_libtorch();
}
