//! Safe file handling: refuse secrets that others can read (as ssh does), and
//! write files atomically without ever replacing an existing one.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::exit::Class;

/// What can go wrong with a file the configuration or command line names,
/// or one coffer writes; each names the path.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("{}: cannot {op}", .path.display())]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },

    #[error("{}: already exists; coffer never overwrites a file", .path.display())]
    Exists { path: PathBuf },

    #[error("{}: {problem}", .path.display())]
    Permissions {
        path: PathBuf,
        problem: String,
        fix: String,
    },

    /// A file or directory that the configuration or command line names is
    /// missing, unreadable, or of the wrong kind.
    #[error("{}: {problem}", .path.display())]
    Named {
        path: PathBuf,
        problem: String,
        fix: String,
    },
}

use FsError as Error;

pub type Result<T, E = FsError> = std::result::Result<T, E>;

impl FsError {
    pub fn io(path: impl AsRef<Path>, op: &'static str, source: io::Error) -> Self {
        FsError::Io {
            path: path.as_ref().to_path_buf(),
            op,
            source,
        }
    }

    /// `what` (e.g. "recipients file") at `path` cannot be used: a missing or
    /// unreadable file the operator named is a configuration error (exit 2),
    /// not a failed job. Other I/O errors stay I/O errors.
    pub fn named(path: impl AsRef<Path>, what: &str, source: io::Error) -> Self {
        let path = path.as_ref().to_path_buf();
        let (problem, fix) = match source.kind() {
            io::ErrorKind::NotFound => (
                format!("no such file (the {what})"),
                "check the path; relative paths in a config are taken from the config file's directory"
                    .to_owned(),
            ),
            io::ErrorKind::PermissionDenied => (
                format!("cannot be read (the {what}): permission denied"),
                format!(
                    "make it readable by the user coffer runs as (uid {})",
                    current_uid()
                ),
            ),
            _ => return FsError::io(path, "read", source),
        };
        FsError::Named { path, problem, fix }
    }

    pub fn class(&self) -> Class {
        match self {
            FsError::Io { .. } => Class::Io,
            FsError::Exists { .. } | FsError::Permissions { .. } | FsError::Named { .. } => {
                Class::Usage
            }
        }
    }

    /// What the operator should do about it, in one line.
    pub fn hint(&self) -> Option<String> {
        match self {
            FsError::Io { .. } => None,
            FsError::Exists { .. } => {
                Some("choose another name, or move the existing file away first".into())
            }
            FsError::Permissions { fix, .. } | FsError::Named { fix, .. } => Some(fix.clone()),
        }
    }
}

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

/// Refuses a secret (private key, passphrase file, database options file)
/// that group or others can read or write, or that someone other than root
/// or this user could replace (see [`check_not_writable_by_others`]).
pub fn check_private(path: &Path) -> Result<()> {
    check_trusted(path, true)
}

/// Refuses a file others could modify (a config, recipients or known_hosts
/// file, a signing public key: whoever can edit it can redirect the backups
/// to their own key or decide what a restore trusts).
///
/// OpenSSH's StrictModes, after symlinks are resolved: the file must be
/// owned by root or this user and not writable by group or others, and so
/// must every directory above it up to `/`, both as named and as resolved
/// (whoever can write a directory can replace what is in it). One exception:
/// a sticky directory such as `/tmp` may be writable by all, since others
/// cannot rename or remove what root or this user owns there, and what is
/// below it is checked in turn.
pub fn check_not_writable_by_others(path: &Path) -> Result<()> {
    check_trusted(path, false)
}

/// Symlink hops followed before giving up, as the kernel's MAXSYMLINKS.
const MAX_SYMLINKS: usize = 40;

fn check_trusted(path: &Path, secret: bool) -> Result<()> {
    let me = current_uid();
    let abs = std::path::absolute(path).map_err(|e| Error::io(path, "resolve", e))?;
    let mut hop = abs.clone();
    // Every directory holding a name on the way to the file, link by link:
    // replacing a symlink redirects the file as surely as replacing it.
    for _ in 0..MAX_SYMLINKS {
        if let Some(dir) = hop.parent() {
            check_dirs(path, dir, me)?;
        }
        let meta = fs::symlink_metadata(&hop).map_err(|e| Error::io(path, "read", e))?;
        if !meta.file_type().is_symlink() {
            break;
        }
        let target = fs::read_link(&hop).map_err(|e| Error::io(&hop, "read the link", e))?;
        hop = hop.parent().unwrap_or(Path::new("/")).join(target);
    }
    let real = fs::canonicalize(path).map_err(|e| Error::io(path, "read", e))?;
    let meta = fs::metadata(&real).map_err(|e| Error::io(path, "read", e))?;
    let mode = meta.permissions().mode() & 0o777;
    if secret && mode & 0o077 != 0 {
        return Err(Error::Permissions {
            path: path.to_path_buf(),
            problem: format!(
                "is accessible by group or others (mode {mode:04o}); secrets must be private"
            ),
            fix: format!("chmod 600 {}", path.display()),
        });
    }
    if mode & 0o022 != 0 {
        return Err(Error::Permissions {
            path: path.to_path_buf(),
            problem: format!("is writable by group or others (mode {mode:04o})"),
            fix: format!("chmod go-w {}", path.display()),
        });
    }
    if meta.uid() != 0 && meta.uid() != me {
        let subject = if real == abs {
            "is".to_owned()
        } else {
            format!("resolves to {}, which is", real.display())
        };
        return Err(Error::Permissions {
            path: path.to_path_buf(),
            problem: format!(
                "{subject} owned by uid {}, neither root nor the user coffer runs as (uid {me}): its owner could change it",
                meta.uid()
            ),
            fix: format!(
                "make it owned by root or uid {me} (chown {me} {}), or name a file that is",
                real.display()
            ),
        });
    }
    if let Some(dir) = real.parent() {
        check_dirs(path, dir, me)?;
    }
    Ok(())
}

/// Checks `dir` and every directory above it, both as named (each followed
/// through symlinks) and fully resolved.
fn check_dirs(path: &Path, dir: &Path, me: u32) -> Result<()> {
    let resolved = fs::canonicalize(dir).map_err(|e| Error::io(dir, "resolve", e))?;
    for d in dir.ancestors().chain(resolved.ancestors()) {
        if d.as_os_str().is_empty() {
            continue;
        }
        let meta = fs::metadata(d).map_err(|e| Error::io(d, "read", e))?;
        let mode = meta.permissions().mode() & 0o7777;
        let problem = if meta.uid() != 0 && meta.uid() != me {
            format!(
                "is in {}, owned by uid {}, neither root nor the user coffer runs as (uid {me}): that user could replace it",
                d.display(),
                meta.uid()
            )
        } else if mode & 0o022 != 0 && mode & 0o1000 == 0 {
            format!(
                "is in {}, which is writable by group or others (mode {mode:04o}): anyone who can write there could replace it",
                d.display()
            )
        } else {
            continue;
        };
        return Err(Error::Permissions {
            path: path.to_path_buf(),
            problem,
            fix: format!(
                "chmod go-w {} (and make it owned by root or uid {me}), or keep the file in a directory only root or uid {me} can write",
                d.display()
            ),
        });
    }
    Ok(())
}

fn current_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Keeps a process that holds a secret from being dumped: no core file
/// (`RLIMIT_CORE` 0, inherited by what it starts) and not dumpable
/// (`PR_SET_DUMPABLE` 0: no ptrace attach and no `/proc/PID/mem` for other
/// processes of the same user). Best effort: a kernel that refuses leaves
/// the process as it was, and nothing else depends on it.
pub fn no_core_dumps() {
    use rustix::process::{set_dumpable_behavior, setrlimit, DumpableBehavior, Resource, Rlimit};
    let _ = setrlimit(
        Resource::Core,
        Rlimit {
            current: Some(0),
            maximum: Some(0),
        },
    );
    let _ = set_dumpable_behavior(DumpableBehavior::NotDumpable);
}

/// Reads a secret after checking its permissions, in a process that can no
/// longer be dumped. The buffer is zeroized on drop.
pub fn read_secret(path: &Path) -> Result<Zeroizing<String>> {
    check_private(path)?;
    no_core_dumps();
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
        let file = self.file.take().ok_or_else(|| {
            Error::io(
                &self.partial,
                "commit",
                io::Error::other("already committed"),
            )
        })?;
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

    #[test]
    fn a_directory_others_can_write_exposes_what_is_in_it_unless_sticky() {
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("shared");
        fs::create_dir(&shared).unwrap();
        let p = shared.join("key");
        fs::write(&p, "x").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
        let links = dir.path().join("links");
        fs::create_dir(&links).unwrap();
        let link = links.join("link");
        std::os::unix::fs::symlink(&p, &link).unwrap();
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o770)).unwrap();
        for named in [&p, &link] {
            match check_private(named) {
                Err(Error::Permissions { problem, .. }) => {
                    assert!(problem.contains("shared"), "{problem}");
                }
                other => panic!("{}: {other:?}", named.display()),
            }
            assert!(check_not_writable_by_others(named).is_err());
        }
        // Sticky, as /tmp: others cannot replace what root or this user owns.
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o1777)).unwrap();
        check_private(&p).unwrap();
        check_private(&link).unwrap();
        // The link's own directory counts too: there it can be swapped.
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o700)).unwrap();
        fs::set_permissions(&links, fs::Permissions::from_mode(0o777)).unwrap();
        check_private(&p).unwrap();
        assert!(check_private(&link).is_err());
    }
}
