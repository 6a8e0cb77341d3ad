//! A directory on a local (or mounted) file system.

use std::fs;
use std::io::{BufReader, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::{valid_file_name, Object, Store, Upload};
use super::{Result, StoreError as Error};
use crate::fsutil::AtomicFile;

pub struct LocalStore {
    name: String,
    dir: PathBuf,
}

impl LocalStore {
    pub fn new(name: String, dir: &Path) -> Self {
        LocalStore {
            name,
            dir: dir.to_path_buf(),
        }
    }

    fn path(&self, file: &str) -> Result<PathBuf> {
        if !valid_file_name(file) {
            return Err(Error::Usage(format!("invalid store file name {file:?}")));
        }
        Ok(self.dir.join(file))
    }

    /// Creates the directory (mode 0700) if it does not exist.
    pub fn ensure_dir(&self) -> Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        if self.dir.is_dir() {
            return Ok(());
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|e| Error::io(&self.dir, "create directory", e))
    }
}

struct LocalUpload(std::io::BufWriter<AtomicFile>);

impl std::io::Write for LocalUpload {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

impl Upload for LocalUpload {
    fn commit(self: Box<Self>) -> Result<()> {
        let target = self.0.get_ref().target().to_path_buf();
        self.0
            .into_inner()
            .map_err(|e| Error::io(&target, "write", e.into_error()))?
            .commit()
            .map_err(Error::from)
    }
}

impl Store for LocalStore {
    fn name(&self) -> &str {
        &self.name
    }

    fn put(&self, file: &str) -> Result<Box<dyn Upload>> {
        let f = AtomicFile::create(&self.path(file)?, 0o600)?;
        Ok(Box::new(LocalUpload(std::io::BufWriter::with_capacity(
            1 << 20,
            f,
        ))))
    }

    /// Opens a regular file and nothing else. The listing saw a regular
    /// file, but the directory may be a hostile server's (NFS, SSHFS) or a
    /// synced copy that changes under us: a FIFO would block the restore
    /// forever and a symlink would read the restore machine's own files
    /// (`/dev/zero`, keys) as backup data. So: no following links, no
    /// blocking open, and the type checked on the opened file itself.
    fn get(&self, file: &str) -> Result<Box<dyn Read + Send>> {
        use std::os::unix::fs::OpenOptionsExt;
        let p = self.path(file)?;
        let f = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&p)
            .map_err(|e| Error::io(&p, "open", e))?;
        let meta = f.metadata().map_err(|e| Error::io(&p, "stat", e))?;
        if !meta.is_file() {
            return Err(Error::io(
                &p,
                "open",
                std::io::Error::other("not a regular file"),
            ));
        }
        Ok(Box::new(BufReader::with_capacity(1 << 20, f)))
    }

    fn list(&self) -> Result<Vec<Object>> {
        let mut out = Vec::new();
        let entries = fs::read_dir(&self.dir).map_err(|e| Error::io(&self.dir, "list", e))?;
        for e in entries {
            let e = e.map_err(|e| Error::io(&self.dir, "list", e))?;
            let Ok(name) = e.file_name().into_string() else {
                continue;
            };
            let Ok(meta) = e.metadata() else { continue };
            if meta.is_file() {
                // The cap every store's listing has: a directory that a
                // local user (or a full disk's worth of names) fills is
                // refused, not read into memory without end.
                if out.len() >= super::MAX_LISTED {
                    return Err(Error::Failed {
                        store: self.name.clone(),
                        message: format!(
                            "{} holds more than {} files; refusing to list it (move what is not coffer's elsewhere)",
                            self.dir.display(),
                            super::MAX_LISTED
                        ),
                    });
                }
                out.push(Object {
                    name,
                    size: meta.len(),
                    mtime: meta.mtime(),
                });
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn stat(&self, file: &str) -> Result<Option<Object>> {
        let p = self.path(file)?;
        match fs::symlink_metadata(&p) {
            Ok(m) => Ok(Some(Object {
                name: file.to_owned(),
                size: m.len(),
                mtime: m.mtime(),
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(&p, "stat", e)),
        }
    }

    fn delete(&self, file: &str) -> Result<()> {
        let p = self.path(file)?;
        fs::remove_file(&p).map_err(|e| Error::io(&p, "delete", e))?;
        crate::fsutil::sync_parent(&p).map_err(Error::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `get` answers (either way) within a few seconds.
    fn answers(store: LocalStore, file: &'static str) -> Option<bool> {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(store.get(file).is_ok());
        });
        rx.recv_timeout(std::time::Duration::from_secs(5)).ok()
    }

    #[test]
    fn only_regular_files_are_read_never_fifos_or_links() {
        let d = tempfile::tempdir().unwrap();
        let store = || LocalStore::new("s".into(), d.path());
        fs::write(d.path().join("a.coffer.json"), b"{}").unwrap();
        assert_eq!(answers(store(), "a.coffer.json"), Some(true));
        let fifo = std::process::Command::new("mkfifo")
            .arg(d.path().join("b.coffer.json"))
            .status()
            .unwrap();
        assert!(fifo.success());
        assert_eq!(
            answers(store(), "b.coffer.json"),
            Some(false),
            "a FIFO must be refused at once, not block"
        );
        std::os::unix::fs::symlink("/etc/hostname", d.path().join("c.coffer")).unwrap();
        assert_eq!(answers(store(), "c.coffer"), Some(false));
    }
}
