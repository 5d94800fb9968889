// Shared by the build scripts of every package whose binaries or tests link libtorch
// (`include!`d, because link arguments from a dependency's build script do not reach the
// dependent's binaries).
//
// - rpath: binaries find libtorch without LD_LIBRARY_PATH.
// - --no-as-needed around torch_cuda: nothing references its symbols directly, so the linker
//   would drop it and CUDA would never be registered.

/// Emits the link arguments for the libtorch that torch-sys was built against.
fn link_libtorch() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    if std::path::Path::new(&lib).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
}
