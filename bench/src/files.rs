//! What the benchmarks start and read outside this binary: the `convsweep` binary (the trial and
//! coordinator benchmarks), and the peers' scripts and environments of the repository
//! (`bench/*.py`, `.deps/`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// The `convsweep` binary the benchmarks start: `explicit`, else the one beside this binary.
pub fn convsweep_binary(explicit: Option<&Path>) -> Result<PathBuf> {
    let path = match explicit {
        Some(p) => p.to_owned(),
        None => std::env::current_exe()
            .context("cannot find this benchmark's own path")?
            .with_file_name("convsweep"),
    };
    if !path.is_file() {
        bail!(
            "no convsweep binary at {}: build it beside this benchmark (`cargo build --release -p convsweep`, or \
             `--no-default-features` for a coordinator-only one) or give --convsweep PATH",
            path.display()
        );
    }
    Ok(path)
}

/// `relative` (a path from the repository's root, e.g. `bench/pytorch_reference.py`) from the
/// current folder when it is there (the GPU machine's copy of the repository), else from the
/// source tree this binary was built from.
pub fn repo_file(relative: &str) -> PathBuf {
    let here = PathBuf::from(relative);
    if here.exists() {
        return here;
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(relative)
}
