//! File-system helpers shared by the stages.

use crate::error::IoContext;
use crate::Result;
use std::path::Path;

/// The process's umask, read from `/proc/self/status` (reading it with `umask(2)` would have
/// to change it). `0o022` where it cannot be read.
#[cfg(unix)]
fn umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        })
        .unwrap_or(0o022)
}

/// Gives a file the permissions a plain `File::create` would have (`0o666 & !umask`).
/// Files written through a temporary file (safetensors does) are created `0o600`, which makes
/// a cache shared between users fail with "Permission denied".
pub fn honour_umask(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = 0o666 & !umask();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).at(path)?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Flushes a written file to disk, so a rename that follows never exposes a file whose data a
/// crash or power cut could still lose (a truncated checkpoint).
pub fn sync(path: &Path) -> Result<()> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .at(path)
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn temp_files_get_the_umask_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let f = tempfile::NamedTempFile::new_in(dir.path()).unwrap();
        let (_, path) = f.keep().unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        honour_umask(&path).unwrap();
        // The oracle: what the kernel gives a plain create under this process's umask.
        let plain = dir.path().join("plain");
        std::fs::File::create(&plain).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), mode(&plain));
    }
}
