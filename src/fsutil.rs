//! Safe file handling: refuse secrets that others can read (as ssh does), and
//! write files atomically without ever replacing an existing one.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// Requires `path` to be an existing regular file (following symlinks), or
/// says which file is missing or of the wrong kind.
pub fn require_file(path: &Path, what: &str) -> Result<()> {
    let meta = fs::metadata(path).map_err(|e| Error::named(path, what, e))?;
    if meta.is_file() {
        Ok(())
    } else {
        Err(Error::Named {
            path: path.to_path_buf(),
            problem: format!("is not a regular file (the {what})"),
            fix: "name a file in the configuration".into(),
        })
    }
}

/// Requires `path`, if it exists, to be a directory: a store that is a
/// regular file is a configuration error, found before anything is created.
pub fn require_dir_or_absent(path: &Path, what: &str) -> Result<()> {
    match fs::metadata(path) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(Error::Named {
            path: path.to_path_buf(),
            problem: format!("is not a directory (the {what})"),
            fix: "point the store's path at a directory, or move the file away".into(),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::named(path, what, e)),
    }
}

/// Refuses a secret (private key, passphrase file) that group or others can
/// read or write.
pub fn check_private(path: &Path) -> Result<()> {
    let meta = fs::metadata(path).map_err(|e| Error::io(path, "read", e))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(Error::Permissions {
            path: path.to_path_buf(),
            problem: format!(
                "is accessible by group or others (mode {mode:04o}); secrets must be private"
            ),
            fix: format!("chmod 600 {}", path.display()),
        });
    }
    Ok(())
}

/// Refuses a file others could modify (a config or recipients file: whoever
/// can edit it can redirect the backups to their own key).
pub fn check_not_writable_by_others(path: &Path) -> Result<()> {
    let meta = fs::metadata(path).map_err(|e| Error::io(path, "read", e))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o022 != 0 {
        return Err(Error::Permissions {
            path: path.to_path_buf(),
            problem: format!("is writable by group or others (mode {mode:04o})"),
            fix: format!("chmod go-w {}", path.display()),
        });
    }
    let me = current_uid();
    if meta.uid() != 0 && meta.uid() != me {
        return Err(Error::Permissions {
            path: path.to_path_buf(),
            problem: format!("is owned by uid {}, neither root nor you", meta.uid()),
            fix: format!("chown {me} {}", path.display()),
        });
    }
    Ok(())
}

fn current_uid() -> u32 {
    // The owner of a file we just created is our effective uid.
    fs::metadata("/proc/self").map_or(0, |m| m.uid())
}

/// Reads a secret after checking its permissions. The buffer is zeroized on drop.
pub fn read_secret(path: &Path) -> Result<Zeroizing<String>> {
    check_private(path)?;
    let mut f = File::open(path).map_err(|e| Error::io(path, "open", e))?;
    let mut s = Zeroizing::new(String::new());
    f.read_to_string(&mut s)
        .map_err(|e| Error::io(path, "read", e))?;
    Ok(s)
}

/// Reads a small file that someone else may have placed: not through a
/// symlink, only a regular file (never a FIFO or device that could block or
/// never end), at most `max` bytes.
pub fn read_regular(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    if meta.len() > max {
        return Err(io::Error::other(format!("larger than {max} bytes")));
    }
    let mut buf = Vec::new();
    f.take(max).read_to_end(&mut buf)?;
    Ok(buf)
}

/// A file being written under `{path}.partial`; [`commit`](Self::commit)
/// fsyncs it and links it into place, failing if `path` exists. Dropped
/// without commit, the partial file is removed.
pub struct AtomicFile {
    file: Option<File>,
    partial: PathBuf,
    target: PathBuf,
}

pub fn partial_name(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".partial");
    PathBuf::from(p)
}

impl AtomicFile {
    /// Creates `{path}.partial` with `mode`. Fails if `path` already exists.
    pub fn create(path: &Path, mode: u32) -> Result<Self> {
        if path.symlink_metadata().is_ok() {
            return Err(Error::Exists {
                path: path.to_path_buf(),
            });
        }
        let partial = partial_name(path);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&partial)
            .map_err(|e| Error::io(&partial, "create", e))?;
        Ok(AtomicFile {
            file: Some(file),
            partial,
            target: path.to_path_buf(),
        })
    }

    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Makes the file durable and visible under its final name.
    pub fn commit(mut self) -> Result<()> {
        let file = self
            .file
            .take()
            .ok_or_else(|| Error::Usage("file already committed".into()))?;
        file.sync_all()
            .map_err(|e| Error::io(&self.partial, "fsync", e))?;
        drop(file);
        // link() fails if the target exists: a no-overwrite rename.
        fs::hard_link(&self.partial, &self.target).map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                Error::Exists {
                    path: self.target.clone(),
                }
            } else {
                Error::io(&self.target, "create", e)
            }
        })?;
        fs::remove_file(&self.partial).map_err(|e| Error::io(&self.partial, "remove", e))?;
        sync_parent(&self.target)?;
        Ok(())
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.file.as_mut() {
            Some(f) => f.write(buf),
            None => Err(io::Error::other("file already committed")),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self.file.as_mut() {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = fs::remove_file(&self.partial);
        }
    }
}

/// fsyncs the directory holding `path`, so the new name survives a crash.
pub fn sync_parent(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, "fsync", e))
}

/// Writes a complete new file atomically; never replaces an existing one.
pub fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let mut f = AtomicFile::create(path, mode)?;
    f.write_all(contents)
        .map_err(|e| Error::io(path, "write", e))?;
    f.commit()
}

/// Replaces `path` atomically with `contents` (temporary name, fsync,
/// rename): for files that are meant to be overwritten, such as a metrics
/// file that a collector may read at any moment.
pub fn replace(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(|e| Error::io(&tmp, "create", e))?;
        // Exactly `mode`, whatever the umask (a run sets 077).
        f.set_permissions(fs::Permissions::from_mode(mode))
            .and_then(|()| f.write_all(contents))
            .and_then(|()| f.sync_all())
            .map_err(|e| Error::io(&tmp, "write", e))?;
        fs::rename(&tmp, path).map_err(|e| Error::io(path, "replace", e))?;
        sync_parent(path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_file_never_overwrites_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out");
        write_new(&p, b"one", 0o600).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"one");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(matches!(
            write_new(&p, b"two", 0o600),
            Err(Error::Exists { .. })
        ));
        assert_eq!(fs::read(&p).unwrap(), b"one");
        let q = dir.path().join("dropped");
        {
            let mut f = AtomicFile::create(&q, 0o600).unwrap();
            f.write_all(b"half").unwrap();
        }
        assert!(!q.exists());
        assert!(!partial_name(&q).exists());
    }

    #[test]
    fn group_readable_secret_is_refused_with_fix() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("key");
        fs::write(&p, "x").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
        match read_secret(&p) {
            Err(Error::Permissions { fix, .. }) => assert!(fix.starts_with("chmod 600")),
            other => panic!("{:?}", other.map(|_| ())),
        }
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_secret(&p).unwrap().as_str(), "x");
    }
}
