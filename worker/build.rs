//! Links libtorch into this crate's tests with an rpath and a kept `libtorch_cuda`, and, when
//! libtorch has CUDA and its headers are at hand, compiles the CUDA memory-statistics shim
//! and autocast-dtype shim (`csrc/cuda_stats.cpp`, cfg `convsweep_cuda_stats`).

include!("../build-support/link_libtorch.rs");

use std::path::{Path, PathBuf};

/// A complete set of CUDA runtime headers (c10's include `cuda_runtime.h`, which needs nvcc's
/// `crt/`): CUDA_HOME, /usr/local/cuda, or what the PyPI wheels bring (the nvidia runtime
/// package lacks `crt/`; triton's bundled headers have it).
fn cuda_include(libtorch_lib: &Path) -> Option<PathBuf> {
    let site = libtorch_lib.parent()?.parent()?;
    let mut candidates = vec![
        PathBuf::from("/usr/local/cuda/include"),
        site.join("nvidia/cu13/include"),
        site.join("nvidia/cuda_runtime/include"),
        site.join("triton/backends/nvidia/include"),
    ];
    if let Ok(home) = std::env::var("CUDA_HOME") {
        candidates.insert(0, PathBuf::from(home).join("include"));
    }
    candidates
        .into_iter()
        .find(|d| d.join("cuda_runtime_api.h").exists() && d.join("crt/host_config.h").exists())
}

fn main() {
    link_libtorch();
    println!("cargo::rustc-check-cfg=cfg(convsweep_cuda_stats)");
    println!("cargo:rerun-if-changed=csrc/cuda_stats.cpp");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    let lib = PathBuf::from(lib);
    if !lib.join("libtorch_cuda.so").exists() {
        return;
    }
    let Some(cuda) = cuda_include(&lib) else {
        println!("cargo:warning=libtorch has CUDA but no CUDA headers were found: peak memory will be the process RSS");
        return;
    };
    let include = lib.parent().expect("libtorch/lib has a parent").join("include");
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .include(&cuda)
        .flag("-std=c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .file("csrc/cuda_stats.cpp")
        .compile("convsweep_cuda_stats");
    println!("cargo:rustc-link-search=native={}", lib.display());
    println!("cargo:rustc-link-lib=c10_cuda");
    println!("cargo:rustc-link-lib=c10");
    println!("cargo:rustc-cfg=convsweep_cuda_stats");
}
