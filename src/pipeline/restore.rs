//! `coffer restore`: decrypt, authenticate and unpack a backup — into a
//! directory, or one member to stdout.
//!
//! Extraction never writes outside the target: absolute paths, `..`,
//! symlinks pointing out of the target, writing through a symlink, hard links
//! and device files are all refused. Existing files are not replaced without
//! `--force`. If anything fails (a bad chunk, a member that does not match
//! the inner manifest), what was extracted is removed unless `--keep-partial`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::archive::EntryKind;
use crate::envelope::Identity;
use crate::error::{Error, Result};
use crate::pipeline::walk::{walk, Member, WalkError, Walked};

pub enum Target {
    Dir {
        dir: PathBuf,
        force: bool,
        keep_partial: bool,
    },
    /// One member (joined if split) to `out`.
    Member { name: String },
    /// The whole archive, decompressed, to `out` (for `tar -x`).
    Tar,
}

/// The relative path of a member inside the target, or why not.
fn safe_relative(name: &str) -> std::result::Result<PathBuf, String> {
    let p = Path::new(name);
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(s) => out.push(s),
            Component::CurDir => {}
            Component::ParentDir => return Err("a path with \"..\" would leave the target".into()),
            Component::RootDir | Component::Prefix(_) => return Err("an absolute path".into()),
        }
    }
    if out.as_os_str().is_empty() {
        return Err("an empty path".into());
    }
    Ok(out)
}

/// Creates the parents of `rel` under `root`, refusing to pass through any
/// symlink (a link planted earlier in the archive could point anywhere).
/// Whether a refusal is the archive's fault or the target's depends on who
/// made the thing in the way: this restore (`created`) or someone before it.
fn safe_parents(
    root: &Path,
    rel: &Path,
    created: &mut Vec<PathBuf>,
) -> std::result::Result<PathBuf, WalkError> {
    let mut at = root.to_path_buf();
    let parent = rel.parent().unwrap_or(Path::new(""));
    for c in parent.components() {
        at.push(c);
        match fs::symlink_metadata(&at) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(in_the_way(
                    created,
                    &at,
                    "is a symlink; refusing to write through it",
                ))
            }
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(in_the_way(created, &at, "is not a directory")),
            Err(_) => {
                fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&at)
                    .map_err(|e| WalkError::target(&at, "create directory", e))?;
                created.push(at.clone());
            }
        }
    }
    Ok(root.join(rel))
}

/// Something at `path` stops a member from being written: if this restore
/// made it, the archive contradicts itself (or is hostile); otherwise it was
/// in the target before, and the backup is not at fault.
fn in_the_way(created: &[PathBuf], path: &Path, problem: &'static str) -> WalkError {
    if created.iter().any(|c| c == path) {
        WalkError::Refused(format!("{} {problem}", path.display()))
    } else {
        WalkError::TargetExists {
            path: path.to_path_buf(),
            problem,
        }
    }
}

/// Copies a member out, telling a damaged backup (the read side) from a
/// target that cannot take it (the write side).
fn copy_out(
    data: &mut dyn Read,
    out: &mut dyn Write,
    path: &Path,
) -> std::result::Result<(), WalkError> {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match data.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        out.write_all(&buf[..n])
            .map_err(|e| WalkError::target(path, "write", e))?;
    }
}

/// A symlink target must stay inside the target directory.
fn link_stays_inside(rel: &Path, target: &Path) -> bool {
    if target.is_absolute() {
        return false;
    }
    let mut depth = i64::try_from(rel.components().count()).unwrap_or(i64::MAX) - 1;
    for c in target.components() {
        match c {
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return false,
        }
        if depth < 0 {
            return false;
        }
    }
    true
}

struct Extractor {
    root: PathBuf,
    force: bool,
    /// Everything created, to undo on failure.
    created: Vec<PathBuf>,
    /// Directory modes and mtimes, applied last (a read-only directory would
    /// refuse its own contents).
    dirs: Vec<(PathBuf, u32, i64)>,
}

fn mtime_of(secs: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0))
}

impl Extractor {
    fn member(
        &mut self,
        m: &Member<'_>,
        data: &mut dyn Read,
    ) -> std::result::Result<(), WalkError> {
        let refuse = |why: String| WalkError::Refused(format!("{}: {why}", m.name));
        let rel = safe_relative(m.name).map_err(refuse)?;
        let path = safe_parents(&self.root, &rel, &mut self.created)?;
        match m.kind {
            EntryKind::Dir => {
                match fs::symlink_metadata(&path) {
                    // A directory that was there keeps its own mode.
                    Ok(md) if md.is_dir() => {}
                    Ok(_) => {
                        return Err(in_the_way(
                            &self.created,
                            &path,
                            "exists and is not a directory",
                        ))
                    }
                    Err(_) => {
                        fs::DirBuilder::new()
                            .mode(0o700)
                            .create(&path)
                            .map_err(|e| WalkError::target(&path, "create directory", e))?;
                        self.created.push(path.clone());
                        // Never set-id bits from an archive; sticky may stay.
                        self.dirs.push((path, m.mode & 0o1777, m.mtime));
                    }
                }
            }
            EntryKind::Symlink(target) => {
                if !link_stays_inside(&rel, target) {
                    return Err(refuse(format!(
                        "symlink to {} points outside the target",
                        target.display()
                    )));
                }
                self.make_room(&path)?;
                std::os::unix::fs::symlink(target, &path)
                    .map_err(|e| WalkError::target(&path, "create symlink", e))?;
                self.created.push(path);
            }
            EntryKind::File => {
                // Later parts of a split stream append to the file part 0 made.
                let append = m.part.is_some_and(|n| n > 0);
                if !append {
                    self.make_room(&path)?;
                }
                let mut f = OpenOptions::new()
                    .write(true)
                    .create_new(!append)
                    .append(append)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&path)
                    .map_err(|e| WalkError::target(&path, "create", e))?;
                if !append {
                    self.created.push(path.clone());
                }
                copy_out(data, &mut f, &path)?;
                // Streams (dumps) keep 0600; files get their recorded mode,
                // without set-id bits.
                let mode = if m.part.is_some() || !m.name.starts_with("files/") {
                    0o600
                } else {
                    m.mode & 0o777
                };
                f.set_permissions(fs::Permissions::from_mode(mode))
                    .and_then(|()| f.set_modified(mtime_of(m.mtime)))
                    .map_err(|e| WalkError::target(&path, "set mode and time of", e))?;
            }
        }
        Ok(())
    }

    /// An existing file is an error, or with `--force` is removed first.
    fn make_room(&self, path: &Path) -> std::result::Result<(), WalkError> {
        match fs::symlink_metadata(path) {
            Err(_) => Ok(()),
            Ok(m) if self.force && !m.is_dir() => {
                fs::remove_file(path).map_err(|e| WalkError::target(path, "replace", e))
            }
            Ok(_) => Err(in_the_way(
                &self.created,
                path,
                "already exists (use --force to replace files)",
            )),
        }
    }

    fn finish(&self) {
        for (p, mode, mtime) in self.dirs.iter().rev() {
            let _ = fs::set_permissions(p, fs::Permissions::from_mode(*mode));
            if let Ok(d) = File::open(p) {
                let _ = d.set_modified(mtime_of(*mtime));
            }
        }
    }

    fn undo(&self) {
        for p in self.created.iter().rev() {
            match fs::symlink_metadata(p) {
                Ok(m) if m.is_dir() => {
                    let _ = fs::remove_dir(p);
                }
                Ok(_) => {
                    let _ = fs::remove_file(p);
                }
                Err(_) => {}
            }
        }
    }
}

/// What the sidecar (signed, where signatures are configured) says the
/// sealed file is; a restore refuses a file that disagrees.
#[derive(Debug, Clone)]
pub struct Expect {
    pub name: String,
    pub job: String,
    pub size: u64,
    pub sha256: String,
}

impl Expect {
    pub fn of(s: &crate::manifest::Sidecar) -> Self {
        Expect {
            name: s.name.clone(),
            job: s.job.clone(),
            size: s.size,
            sha256: s.sha256.clone(),
        }
    }

    /// The ciphertext's size and hash against the sidecar.
    fn check_ciphertext(&self, len: u64, sha256: &str) -> std::result::Result<(), String> {
        if len != self.size {
            return Err(format!(
                "the sealed file is {len} bytes, its sidecar says {}",
                self.size
            ));
        }
        let same: bool =
            subtle::ConstantTimeEq::ct_eq(sha256.as_bytes(), self.sha256.as_bytes()).into();
        if !same {
            return Err(format!(
                "the sealed file's SHA-256 is {sha256}, its sidecar says {}",
                self.sha256
            ));
        }
        Ok(())
    }

    /// Everything the walk learnt against the sidecar: the ciphertext, the
    /// header's job, and the inner manifest's name and job.
    fn check(&self, w: &Walked) -> std::result::Result<(), String> {
        self.check_ciphertext(w.ciphertext_len, &w.ciphertext_sha256)?;
        if w.header.metadata.job.as_deref() != Some(self.job.as_str()) {
            return Err(format!(
                "the header names job {:?}, the sidecar {:?}",
                w.header.metadata.job, self.job
            ));
        }
        if w.manifest.name != self.name || w.manifest.job != self.job {
            return Err(format!(
                "the inner manifest names {} of job {:?}, the sidecar {} of job {:?}",
                w.manifest.name, w.manifest.job, self.name, self.job
            ));
        }
        Ok(())
    }
}

/// Copies the sealed file (ciphertext, never plaintext) into a private
/// unlinked temporary file, at most one byte more than the sidecar says, and
/// checks its size and SHA-256 against the sidecar; returns it rewound. What
/// is decrypted afterwards is exactly what was checked: a server that
/// answers a second read differently, or cuts the stream, gets nowhere.
pub fn spool(input: Box<dyn Read + Send>, what: &str, expect: Option<&Expect>) -> Result<File> {
    let mut spool = tempfile::tempfile().map_err(|e| {
        Error::io(
            std::env::temp_dir(),
            "create a private copy of the sealed file in",
            e,
        )
    })?;
    let limit = expect.map_or(u64::MAX, |x| x.size.saturating_add(1));
    let mut hashed = crate::pipeline::walk::HashRead::new(input.take(limit));
    io::copy(&mut hashed, &mut spool).map_err(|e| Error::io(what, "read", e))?;
    let len = hashed.len;
    let sha = hashed.hex();
    if let Some(x) = expect {
        x.check_ciphertext(len, &sha)
            .map_err(|message| integrity(what, message))?;
    }
    rewind(&mut spool)?;
    Ok(spool)
}

fn integrity(what: &str, message: String) -> Error {
    Error::Integrity {
        what: what.to_owned(),
        message,
    }
}

fn rewind(f: &mut File) -> Result<()> {
    io::Seek::seek(f, io::SeekFrom::Start(0))
        .map(drop)
        .map_err(|e| Error::io(std::env::temp_dir(), "rewind the private copy in", e))
}

/// A restore that writes or loads anything first authenticates all of it:
/// [`spool`], then a pass that checks every chunk and member (and the inner
/// manifest against the sidecar), and returns the copy, rewound, for the
/// pass that writes.
pub fn stage(
    input: Box<dyn Read + Send>,
    what: &str,
    identities: &[Identity],
    expect: Option<&Expect>,
) -> Result<File> {
    let mut spool = spool(input, what, expect)?;
    let copy = spool
        .try_clone()
        .map_err(|e| Error::io(std::env::temp_dir(), "reopen the private copy in", e))?;
    let w = walk(io::BufReader::new(copy), identities, |_, _| Ok(()))
        .map_err(|e| e.into_error(what))?;
    if let Some(x) = expect {
        x.check(&w).map_err(|message| integrity(what, message))?;
    }
    rewind(&mut spool)?;
    Ok(spool)
}

/// Restores `input` (named `what` in messages). Returns what the walk
/// checked, except for `Target::Tar`, which passes the archive through.
pub fn restore(
    input: Box<dyn Read + Send>,
    what: &str,
    identities: &[Identity],
    target: Target,
    out: &mut dyn Write,
    expect: Option<&Expect>,
) -> Result<Option<Walked>> {
    let mismatch = |message: String| integrity(what, message);
    match target {
        Target::Dir {
            dir,
            force,
            keep_partial,
        } => {
            fs::create_dir_all(&dir).map_err(|e| Error::Target {
                path: dir.clone(),
                op: "create directory",
                source: e,
            })?;
            let root = fs::canonicalize(&dir).map_err(|e| Error::io(&dir, "resolve", e))?;
            let mut ex = Extractor {
                root,
                force,
                created: Vec::new(),
                dirs: Vec::new(),
            };
            match walk(input, identities, |m, data| ex.member(m, data)) {
                Ok(w) => {
                    if let Some(Err(message)) = expect.map(|x| x.check(&w)) {
                        if !keep_partial {
                            ex.undo();
                        }
                        return Err(mismatch(message));
                    }
                    ex.finish();
                    Ok(Some(w))
                }
                Err(e) => {
                    if !keep_partial {
                        ex.undo();
                    }
                    Err(e.into_error(what))
                }
            }
        }
        Target::Tar => tar_out(input, what, identities, out).map(|()| None),
        Target::Member { name } => {
            let mut found = false;
            let w = walk(input, identities, |m, data| {
                if m.name == name {
                    found = true;
                    copy_out(data, out, Path::new("<stdout>"))?;
                }
                Ok(())
            })
            .map_err(|e| e.into_error(what))?;
            out.flush().map_err(|e| Error::Target {
                path: "<stdout>".into(),
                op: "write",
                source: e,
            })?;
            if let Some(x) = expect {
                x.check(&w).map_err(mismatch)?;
            }
            if !found {
                let names: Vec<&str> = w.manifest.members.iter().map(|m| m.path.as_str()).collect();
                return Err(Error::Usage(format!(
                    "{what} has no member {name:?}; it holds: {}",
                    names.join(", ")
                )));
            }
            Ok(Some(w))
        }
    }
}

/// Decrypts and decompresses to `out`; the tar stream passes as it is.
fn tar_out(
    input: Box<dyn Read + Send>,
    what: &str,
    identities: &[Identity],
    out: &mut dyn Write,
) -> Result<()> {
    // A tee to `out` while walking would need two readers of one stream; the
    // walk's consumer sees members, not the tar bytes. So: decrypt and
    // decompress straight through, authenticating every chunk on the way.
    let (header, plain) = crate::envelope::open(identities, input).map_err(|e| match e {
        crate::envelope::OpenError::Envelope(e) => Error::envelope(what, e),
        crate::envelope::OpenError::Io(e) => Error::io(what, "read", e),
    })?;
    let compression = crate::archive::Compression::parse(
        header.metadata.compression.as_deref().unwrap_or("none"),
    )
    .map_err(|message| Error::Integrity {
        what: what.to_owned(),
        message,
    })?;
    let mut dec = crate::archive::decompressor(io::BufReader::new(plain), compression)
        .map_err(|e| Error::io(what, "decompress", e))?;
    copy_out(&mut dec, out, Path::new("<stdout>")).map_err(|e| e.into_error(what))?;
    out.flush().map_err(|e| Error::Target {
        path: "<stdout>".into(),
        op: "write",
        source: e,
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_confined() {
        assert!(safe_relative("mysql/main.sql").is_ok());
        assert!(safe_relative("./a/b").is_ok());
        assert!(safe_relative("../../etc/x").is_err());
        assert!(safe_relative("a/../../x").is_err());
        assert!(safe_relative("/etc/passwd").is_err());
        assert!(safe_relative("").is_err());
    }

    #[test]
    fn symlink_targets_are_confined() {
        let rel = Path::new("files/etc/link");
        assert!(link_stays_inside(rel, Path::new("other")));
        assert!(link_stays_inside(rel, Path::new("../../x")));
        assert!(!link_stays_inside(rel, Path::new("../../../x")));
        assert!(!link_stays_inside(rel, Path::new("/etc/passwd")));
    }
}
