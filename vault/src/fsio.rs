//! File-system plumbing: private directories, bounded reads, a lock file, atomic writes.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::error::Error;

/// Prefix of temporary files next to their target; stale ones are removed under the lock.
const TEMP_PREFIX: &str = ".tmp-";

/// Creates `dir` (and parents) as 0700 if missing, and makes `dir` itself 0700.
pub(crate) fn ensure_private_dir(dir: &Path) -> Result<(), Error> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::io("create the directory", dir, e))?;
    let mode = fs::metadata(dir)
        .map_err(|e| Error::io("inspect the directory", dir, e))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::io("restrict the permissions of", dir, e))?;
    }
    Ok(())
}

/// Reads at most `limit` bytes; `Ok(None)` when the file does not exist. A larger file is an
/// error, detected from its size before anything is read.
pub(crate) fn read_bounded(path: &Path, limit: u64) -> Result<Option<Vec<u8>>, Error> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("open", path, e)),
    };
    let too_big = || {
        Error::corrupt(
            path,
            format!(
                "it is larger than {} MiB, far beyond any vault",
                limit >> 20
            ),
        )
    };
    let meta = file.metadata().map_err(|e| Error::io("inspect", path, e))?;
    if !meta.is_file() {
        return Err(Error::corrupt(path, "it is not a regular file"));
    }
    if meta.len() > limit {
        return Err(too_big());
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io("read", path, e))?;
    if bytes.len() as u64 > limit {
        return Err(too_big());
    }
    Ok(Some(bytes))
}

/// An exclusive lock on a lock file, released on drop (when the file is closed).
pub(crate) struct LockGuard {
    _file: File,
}

/// Blocks until this process holds the exclusive lock on `path` (created 0600 if missing).
pub(crate) fn lock_exclusive(path: &Path) -> Result<LockGuard, Error> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io("open the lock file", path, e))?;
    file.lock().map_err(|e| Error::io("lock", path, e))?;
    Ok(LockGuard { _file: file })
}

/// Replaces `target` with `bytes` atomically: a 0600 temporary file in the same directory,
/// written and fsynced, renamed over the target, then the directory fsynced. A crash at any
/// point leaves either the old file or the new one, never a mix.
pub(crate) fn write_atomic(target: &Path, bytes: &[u8]) -> Result<(), Error> {
    let dir = parent(target);
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let suffix: [u8; 8] = crate::crypto::random_array()?;
    let temp = dir.join(format!(
        "{TEMP_PREFIX}{name}-{}-{}",
        std::process::id(),
        hex::encode(suffix)
    ));
    let result = write_then_rename(&temp, target, bytes);
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result?;
    sync_dir(dir)
}

fn write_then_rename(temp: &Path, target: &Path, bytes: &[u8]) -> Result<(), Error> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(temp)
        .map_err(|e| Error::io("create the temporary file", temp, e))?;
    file.write_all(bytes)
        .map_err(|e| Error::io("write the temporary file", temp, e))?;
    file.sync_all()
        .map_err(|e| Error::io("sync the temporary file", temp, e))?;
    drop(file);
    test_pause_before_rename();
    fs::rename(temp, target).map_err(|e| Error::io("replace", target, e))
}

fn sync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("sync the directory", dir, e))
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Removes temporary files left in `dir` by writers that died mid-write. Call only while
/// holding the lock, when no live writer can own one.
pub(crate) fn remove_stale_temps(dir: &Path) {
    let Ok(read) = fs::read_dir(dir) else { return };
    for entry in read.flatten() {
        if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

#[cfg(debug_assertions)]
fn test_pause_before_rename() {
    if let Some(ms) = std::env::var(crate::env::LIBERTY_TEST_PAUSE_WRITE_MS)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
}

#[cfg(not(debug_assertions))]
fn test_pause_before_rename() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_is_private_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("f");
        write_atomic(&target, b"one").unwrap();
        write_atomic(&target, b"two").unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&target).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "no temp left");
    }

    #[test]
    fn bounded_read_refuses_large_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big");
        fs::write(&p, vec![b'x'; 2048]).unwrap();
        assert!(read_bounded(&p, 1024).is_err());
        assert_eq!(read_bounded(&p, 4096).unwrap().unwrap().len(), 2048);
        assert!(
            read_bounded(&dir.path().join("none"), 10)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn private_dir_is_0700() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("a/b");
        ensure_private_dir(&d).unwrap();
        assert_eq!(
            fs::metadata(&d).unwrap().permissions().mode() & 0o777,
            0o700
        );
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
        ensure_private_dir(&d).unwrap();
        assert_eq!(
            fs::metadata(&d).unwrap().permissions().mode() & 0o777,
            0o700
        );
    }
}
