//! The hand-over of the container's settings: a file created 0600 (never replacing anything)
//! inside a fresh 0700 directory on tmpfs where there is one, owned by the user the container
//! runs as, and shredded (overwritten with zeros, synced, unlinked, directory removed) as soon
//! as the gateway has read it, or when anything fails: the guard shreds when dropped.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

/// `statfs` magic numbers of memory-backed file systems.
const TMPFS_MAGIC: i64 = 0x0102_1994;
const RAMFS_MAGIC: i64 = 0x8584_58f6;

/// A settings file that exists only until [`SettingsFile::shred`] or drop.
pub struct SettingsFile {
    dir: PathBuf,
    path: PathBuf,
    file: Option<File>,
    len: u64,
    pub in_memory: bool,
}

/// Where the private directory goes: `$XDG_RUNTIME_DIR`, `/dev/shm`, then the temp dir.
pub fn candidate_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        dirs.push(PathBuf::from(d));
    }
    dirs.push(PathBuf::from("/dev/shm"));
    dirs.push(std::env::temp_dir());
    dirs
}

/// True when `path` lives on tmpfs/ramfs (never written to a disk).
pub fn is_memory_fs(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statfs.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return false;
    }
    #[allow(clippy::unnecessary_cast)]
    let magic = st.f_type as i64;
    magic == TMPFS_MAGIC || magic == RAMFS_MAGIC
}

impl SettingsFile {
    /// Writes `settings` as `KEY=VALUE` lines to `<base>/lockstock-gateway-XXXXXX/settings`,
    /// owned by `owner` (uid, gid) when given (the directory too).
    pub fn create(
        settings: &BTreeMap<String, Zeroizing<String>>,
        owner: Option<(u32, u32)>,
    ) -> std::io::Result<Self> {
        let mut last = None;
        for base in candidate_dirs() {
            match Self::create_in(&base, settings, owner) {
                Ok(f) => return Ok(f),
                Err(e) => last = Some((base, e)),
            }
        }
        let (base, e) = last.expect("at least one candidate directory");
        Err(std::io::Error::new(
            e.kind(),
            format!(
                "cannot create the settings file (last tried {}): {e}",
                base.display()
            ),
        ))
    }

    fn create_in(
        base: &Path,
        settings: &BTreeMap<String, Zeroizing<String>>,
        owner: Option<(u32, u32)>,
    ) -> std::io::Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        if !base.is_dir() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{} is not a directory", base.display()),
            ));
        }
        let dir = tempfile::Builder::new()
            .prefix("lockstock-gateway-")
            .permissions(std::fs::Permissions::from_mode(0o700))
            .tempdir_in(base)?
            .keep();
        let mut guard = Self {
            path: dir.join("settings"),
            dir,
            file: None,
            len: 0,
            in_memory: is_memory_fs(base),
        };
        let mut text = Zeroizing::new(String::new());
        for (k, v) in settings {
            text.push_str(k);
            text.push('=');
            text.push_str(v);
            text.push('\n');
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&guard.path)?;
        guard.len = text.len() as u64;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        guard.file = Some(file);
        if let Some((uid, gid)) = owner {
            chown(&guard.path, uid, gid)?;
            chown(&guard.dir, uid, gid)?;
        }
        Ok(guard)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Overwrites the file with zeros, syncs, unlinks it and removes its directory.
    /// Idempotent.
    pub fn shred(&mut self) -> std::io::Result<()> {
        let Some(file) = self.file.take() else {
            return Ok(());
        };
        let zeros = vec![0u8; self.len as usize];
        let overwrite = file.write_all_at(&zeros, 0).and_then(|_| file.sync_all());
        drop(file);
        let unlink = match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
        let rmdir = match std::fs::remove_dir(&self.dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
        overwrite.and(unlink).and(rmdir)
    }
}

impl Drop for SettingsFile {
    fn drop(&mut self) {
        if let Err(e) = self.shred() {
            eprintln!(
                "warning: could not shred the settings file {}: {e}; remove {} by hand",
                self.path.display(),
                self.dir.display()
            );
        }
    }
}

pub fn chown(path: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_is_private_and_shredding_removes_file_and_directory() {
        let mut settings = BTreeMap::new();
        settings.insert("A".to_owned(), Zeroizing::new("secret-value".to_owned()));
        settings.insert("B".to_owned(), Zeroizing::new("two".to_owned()));
        let mut f = SettingsFile::create(&settings, None).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let text = std::fs::read_to_string(f.path()).unwrap();
        assert_eq!(text, "A=secret-value\nB=two\n");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(f.path()), 0o600);
        assert_eq!(mode(f.dir()), 0o700);
        // A reader that opened it before the shred sees only zeros afterwards.
        let reader = File::open(f.path()).unwrap();
        let (dir, path) = (f.dir().to_owned(), f.path().to_owned());
        f.shred().unwrap();
        assert!(!path.exists() && !dir.exists());
        let mut buf = vec![1u8; 32];
        let n = reader.read_at(&mut buf, 0).unwrap();
        assert_eq!(n, "A=secret-value\nB=two\n".len());
        assert!(buf[..n].iter().all(|b| *b == 0));
        f.shred().unwrap();
    }

    #[test]
    fn dropping_the_guard_shreds() {
        let settings = BTreeMap::from([("K".to_owned(), Zeroizing::new("v".to_owned()))]);
        let f = SettingsFile::create(&settings, None).unwrap();
        let dir = f.dir().to_owned();
        assert!(dir.exists());
        drop(f);
        assert!(!dir.exists());
    }
}
