//! Files written whole or not at all, never readable by more than their mode allows.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Writes `bytes` to `path` whole or not at all: into a new file beside it, under a name unique
/// to this process and this write (two writers of one path never share a temporary file) and
/// created with `mode` (a key made 0600 is never readable by others, not even for a moment);
/// synced, renamed over `path`, then the folder synced so that the rename survives a crash.
/// On an error the temporary file is removed, and returned with the error.
pub fn replace(path: &Path, bytes: &[u8], mode: u32) -> Result<(), (PathBuf, std::io::Error)> {
    use std::os::unix::fs::OpenOptionsExt;
    static WRITES: AtomicU64 = AtomicU64::new(0);
    let n = WRITES.fetch_add(1, Ordering::Relaxed);
    let name = path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    let tmp = path.with_file_name(format!("{name}.{}-{n}.partial", std::process::id()));
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    written.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        (tmp, e)
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_file_is_replaced_whole_with_its_mode_and_no_temporary_file_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        replace(&path, b"first", 0o600).unwrap();
        replace(&path, b"second", 0o600).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        // A folder that is not there: the error names the temporary file, and nothing is left.
        let (tmp, _) = replace(&dir.path().join("gone/key"), b"x", 0o600).unwrap_err();
        assert!(tmp.to_string_lossy().ends_with(".partial"), "{}", tmp.display());
    }
}
