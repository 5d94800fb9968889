//! Links libtorch into the `convsweep` binary and its tests with an rpath and a kept `libtorch_cuda`.

include!("../build-support/link_libtorch.rs");

fn main() {
    link_libtorch();
}
