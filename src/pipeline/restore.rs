//! `coffer restore`: decrypt, authenticate and unpack a backup — into a
//! directory, or one member to stdout.
//!
//! Extraction never writes outside the target. Member paths must be relative
//! without `..`; hard links and device files are refused. Symlinks are
//! restored exactly as recorded, absolute or not (a backup of /etc is full of
//! them), and coffer never follows one: every member is created relative to
//! a directory opened one component at a time with `O_NOFOLLOW`, and a member
//! whose parent chain holds a link — one already in the target, or one made
//! earlier in the same archive — is refused. Whether a link's target lies
//! inside the directory is not checked: that cannot be decided by looking at
//! its text (`s -> .` makes `s/s/../..` climb), and does not matter when no
//! link is followed. Modes never carry set-uid or set-gid bits; a directory
//! that was already there keeps its own mode. Existing files are not
//! replaced without `--force`. If anything fails (a bad chunk, a member that
//! does not match the inner manifest), what was extracted is removed unless
//! `--keep-partial`.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps, UTIME_OMIT};
use rustix::io::Errno;

use crate::archive::EntryKind;
use crate::envelope::Header;
use crate::envelope::Identity;
use crate::error::{Error, Result};
use crate::manifest::HashKind;
use crate::pipeline::walk::{walk_copy, Member, WalkError, Walked};

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
fn safe_relative(name: &[u8]) -> std::result::Result<PathBuf, String> {
    let p = Path::new(OsStr::from_bytes(name));
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

/// Flags to open a directory only to work inside it. `NOFOLLOW` with
/// `DIRECTORY` fails on a symlink instead of resolving it, so a link put in
/// place after a check still cannot redirect anything.
const TRAVERSE: OFlags = OFlags::PATH
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// What is at `name` in `dir`, without following a link; `None` if nothing.
fn kind_at(dir: &OwnedFd, name: &OsStr) -> io::Result<Option<FileType>> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(FileType::from_raw_mode(st.st_mode))),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The directory `rel` under `root`, opened without following any link on
/// the way; `None` if it is gone. Used to finish and undo.
fn open_below(root: &OwnedFd, rel: &Path, last: OFlags) -> Option<OwnedFd> {
    let mut dir = rustix::fs::openat(root, ".", TRAVERSE, Mode::empty()).ok()?;
    let mut parts = rel.components().peekable();
    while let Some(c) = parts.next() {
        let flags = if parts.peek().is_some() {
            TRAVERSE
        } else {
            last
        };
        dir = rustix::fs::openat(&dir, c.as_os_str(), flags, Mode::empty()).ok()?;
    }
    Some(dir)
}

struct Extractor {
    /// The target directory, for messages.
    root: PathBuf,
    /// Every member is created relative to this, one component at a time.
    root_fd: OwnedFd,
    force: bool,
    /// The directories this restore made in directories it did not make
    /// (relative to the root): all that is in one is this restore's too.
    /// Only these, not every directory under them: a chain of a hundred
    /// thousand new directories (one member can name it) would otherwise
    /// cost the sum of all its prefixes, quadratic in its depth.
    made_dirs: HashSet<PathBuf>,
    /// The most components of any path in `made_dirs`: no deeper prefix
    /// needs looking up. It follows the target's own tree, which was there
    /// before, not the archive.
    made_depth: usize,
    /// What this restore made outside any directory it made, newest last:
    /// to undo on failure, these (directories with what is in them) are
    /// removed. Into a new or empty target that is only the top level, so
    /// memory follows the directories, not the files.
    undo_roots: Vec<PathBuf>,
    /// Directory modes and mtimes, applied last (a read-only directory would
    /// refuse its own contents).
    dirs: Vec<(PathBuf, u32, i64)>,
    /// Files and links `--force` replaced, moved aside in their own
    /// directory (the directory's path, the name aside, the name): removed
    /// once the whole restore succeeded, put back if it fails. A replaced
    /// file is never gone before the archive has proved itself.
    replaced: Vec<(PathBuf, std::ffi::OsString, std::ffi::OsString)>,
    /// The directory the last member went into, still open: the next member
    /// is most often its sibling (tar keeps a directory's entries together),
    /// and a held descriptor cannot be redirected.
    last_parent: Option<(PathBuf, OwnedFd)>,
}

fn mtime_of(secs: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0))
}

impl Extractor {
    fn open(root: PathBuf, force: bool) -> Result<Self> {
        let root_fd =
            rustix::fs::openat(rustix::fs::CWD, &root, TRAVERSE, Mode::empty()).map_err(|e| {
                Error::Target {
                    path: root.clone(),
                    op: "open",
                    source: e.into(),
                }
            })?;
        Ok(Extractor {
            root,
            root_fd,
            force,
            made_dirs: HashSet::new(),
            made_depth: 0,
            undo_roots: Vec::new(),
            dirs: Vec::new(),
            replaced: Vec::new(),
            last_parent: None,
        })
    }

    /// Whether this restore made `rel`, as far as undoing goes.
    fn made(&self, rel: &Path) -> bool {
        self.in_made_dir(rel) || self.undo_roots.iter().any(|r| r == rel)
    }

    /// Whether `rel` is, or is inside, a directory this restore made.
    fn in_made_dir(&self, rel: &Path) -> bool {
        let mut prefix = PathBuf::new();
        rel.components().take(self.made_depth).any(|c| {
            prefix.push(c);
            self.made_dirs.contains(&prefix)
        })
    }

    /// Notes that `rel` was made (a directory if `dir`).
    fn note_made(&mut self, rel: &Path, dir: bool) {
        let inside_own = rel.parent().is_some_and(|p| self.in_made_dir(p));
        if !inside_own {
            self.undo_roots.push(rel.to_path_buf());
            if dir {
                self.made_dirs.insert(rel.to_path_buf());
                self.made_depth = self.made_depth.max(rel.components().count());
            }
        }
    }

    /// Something at `rel` stops a member from being written: if this restore
    /// made it, the archive contradicts itself (or is hostile); otherwise it
    /// was in the target before, and the backup is not at fault.
    fn in_the_way(&self, rel: &Path, problem: &'static str) -> WalkError {
        let path = self.root.join(rel);
        if self.made(rel) {
            WalkError::Refused(format!("{} {problem}", path.display()))
        } else {
            WalkError::TargetExists { path, problem }
        }
    }

    /// Opens the directory that will hold `rel`, creating what is missing
    /// (0700 until `finish`), and refusing to pass through any symlink: one
    /// planted earlier in the archive, or already in the target, could point
    /// anywhere.
    fn parent_of(&mut self, rel: &Path) -> std::result::Result<OwnedFd, WalkError> {
        let parent = rel.parent().unwrap_or(Path::new(""));
        if let Some((p, fd)) = &self.last_parent {
            if p == parent {
                return rustix::io::fcntl_dupfd_cloexec(fd, 0)
                    .map_err(|e| WalkError::target(self.root.join(p), "open", e.into()));
            }
        }
        let dir = self.open_parent(parent)?;
        let keep = rustix::io::fcntl_dupfd_cloexec(&dir, 0)
            .map_err(|e| WalkError::target(self.root.join(parent), "open", e.into()))?;
        self.last_parent = Some((parent.to_path_buf(), keep));
        Ok(dir)
    }

    fn open_parent(&mut self, parent: &Path) -> std::result::Result<OwnedFd, WalkError> {
        let mut dir = rustix::fs::openat(&self.root_fd, ".", TRAVERSE, Mode::empty())
            .map_err(|e| WalkError::target(&self.root, "open", e.into()))?;
        let mut at = PathBuf::new();
        for c in parent.components() {
            let name = c.as_os_str();
            at.push(name);
            match kind_at(&dir, name) {
                Ok(Some(FileType::Symlink)) => {
                    return Err(self.in_the_way(&at, "is a symlink; refusing to write through it"))
                }
                Ok(Some(FileType::Directory)) => {}
                Ok(Some(_)) => return Err(self.in_the_way(&at, "is not a directory")),
                Ok(None) => {
                    rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(0o700)).map_err(|e| {
                        WalkError::target(self.root.join(&at), "create directory", e.into())
                    })?;
                    self.note_made(&at, true);
                }
                Err(e) => return Err(WalkError::target(self.root.join(&at), "inspect", e)),
            }
            dir = match rustix::fs::openat(&dir, name, TRAVERSE, Mode::empty()) {
                Ok(d) => d,
                // Swapped for a link or a file since it was looked at.
                Err(Errno::LOOP | Errno::NOTDIR) => {
                    return Err(
                        self.in_the_way(&at, "changed during the restore; refusing to follow it")
                    )
                }
                Err(e) => return Err(WalkError::target(self.root.join(&at), "open", e.into())),
            };
        }
        Ok(dir)
    }

    fn member(
        &mut self,
        m: &Member<'_>,
        data: &mut dyn Read,
    ) -> std::result::Result<(), WalkError> {
        let refuse = |why: &str| WalkError::Refused(format!("{}: {why}", m.name));
        let rel = safe_relative(m.raw).map_err(|why| refuse(&why))?;
        let name = rel
            .file_name()
            .ok_or_else(|| refuse("no file name"))?
            .to_owned();
        let name = name.as_os_str();
        let dir = self.parent_of(&rel)?;
        let path = self.root.join(&rel);
        match m.kind {
            EntryKind::Dir => match kind_at(&dir, name) {
                // A directory that was there before keeps its own mode; one
                // this restore made as a parent takes the recorded one.
                Ok(Some(FileType::Directory)) => {
                    if self.in_made_dir(&rel) {
                        self.dirs.push((rel, dir_mode(m.mode), m.mtime));
                    }
                }
                Ok(Some(_)) => return Err(self.in_the_way(&rel, "exists and is not a directory")),
                Ok(None) => {
                    rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(0o700))
                        .map_err(|e| WalkError::target(&path, "create directory", e.into()))?;
                    self.note_made(&rel, true);
                    self.dirs.push((rel, dir_mode(m.mode), m.mtime));
                }
                Err(e) => return Err(WalkError::target(&path, "inspect", e)),
            },
            EntryKind::Symlink(target) => {
                // Restored as recorded, wherever it points (/etc/localtime ->
                // /usr/share/zoneinfo/...): what keeps a link from being an
                // escape is that nothing is ever written through one.
                self.make_room(&dir, name, &rel)?;
                rustix::fs::symlinkat(target, &dir, name)
                    .map_err(|e| WalkError::target(&path, "create symlink", e.into()))?;
                self.note_made(&rel, false);
                let t = Timespec {
                    tv_sec: m.mtime.max(0),
                    tv_nsec: 0,
                };
                let times = Timestamps {
                    last_access: Timespec {
                        tv_sec: 0,
                        tv_nsec: UTIME_OMIT,
                    },
                    last_modification: t,
                };
                rustix::fs::utimensat(&dir, name, &times, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| WalkError::target(&path, "set the time of", e.into()))?;
            }
            EntryKind::File => {
                // Later parts of a split stream append to the file part 0 made.
                let append = m.part.is_some_and(|n| n > 0);
                let mut flags = OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
                if append {
                    flags |= OFlags::APPEND;
                } else {
                    self.make_room(&dir, name, &rel)?;
                    flags |= OFlags::CREATE | OFlags::EXCL;
                }
                let fd = match rustix::fs::openat(&dir, name, flags, Mode::from_raw_mode(0o600)) {
                    Ok(fd) => fd,
                    Err(Errno::LOOP) => {
                        return Err(
                            self.in_the_way(&rel, "is a symlink; refusing to write through it")
                        )
                    }
                    Err(e) => return Err(WalkError::target(&path, "create", e.into())),
                };
                let mut f = File::from(fd);
                if !append {
                    self.note_made(&rel, false);
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

    /// An existing file or link is an error, or with `--force` is moved
    /// aside (the link itself, never what it points to), to be removed when
    /// the restore succeeds or put back when it fails.
    fn make_room(
        &mut self,
        dir: &OwnedFd,
        name: &OsStr,
        rel: &Path,
    ) -> std::result::Result<(), WalkError> {
        let path = self.root.join(rel);
        match kind_at(dir, name) {
            Ok(None) => Ok(()),
            Ok(Some(kind)) if self.force && kind != FileType::Directory => {
                let aside = std::ffi::OsString::from(format!(
                    ".coffer-replaced-{}-{}-{:08x}",
                    std::process::id(),
                    self.replaced.len(),
                    rand::random::<u32>()
                ));
                rustix::fs::renameat_with(
                    dir,
                    name,
                    dir,
                    &aside,
                    rustix::fs::RenameFlags::NOREPLACE,
                )
                .map_err(|e| WalkError::target(&path, "move aside (to replace)", e.into()))?;
                let parent = rel.parent().unwrap_or(Path::new("")).to_path_buf();
                self.replaced.push((parent, aside, name.to_owned()));
                Ok(())
            }
            Ok(Some(_)) => {
                Err(self.in_the_way(rel, "already exists (use --force to replace files)"))
            }
            Err(e) => Err(WalkError::target(&path, "inspect", e)),
        }
    }

    fn finish(&mut self) {
        for (parent, aside, _) in std::mem::take(&mut self.replaced) {
            if let Some(dir) = open_below(&self.root_fd, &parent, TRAVERSE) {
                let _ = rustix::fs::unlinkat(&dir, &aside, AtFlags::empty());
            }
        }
        let last = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        for (rel, mode, mtime) in self.dirs.iter().rev() {
            if let Some(fd) = open_below(&self.root_fd, rel, last) {
                let d = File::from(fd);
                let _ = d.set_permissions(fs::Permissions::from_mode(*mode));
                let _ = d.set_modified(mtime_of(*mtime));
            }
        }
    }

    fn undo(&mut self) {
        self.last_parent = None;
        for rel in self.undo_roots.iter().rev() {
            let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else {
                continue;
            };
            let Some(dir) = open_below(&self.root_fd, parent, TRAVERSE) else {
                continue;
            };
            match kind_at(&dir, name) {
                Ok(Some(FileType::Directory)) => remove_tree(&dir, name),
                Ok(Some(_)) => {
                    let _ = rustix::fs::unlinkat(&dir, name, AtFlags::empty());
                }
                Ok(None) | Err(_) => {}
            }
        }
        self.put_back_replaced();
    }

    /// What --force moved aside goes back, newest first (a name replaced
    /// twice returns to its first content), over whatever this restore
    /// wrote there: a restore that did not finish never costs an old file.
    fn put_back_replaced(&mut self) {
        for (parent, aside, name) in std::mem::take(&mut self.replaced).into_iter().rev() {
            if let Some(dir) = open_below(&self.root_fd, &parent, TRAVERSE) {
                let _ = rustix::fs::renameat(&dir, &aside, &dir, &name);
            }
        }
    }
}

/// Removes the directory `name` under `dir` and all in it, by handle: a
/// link inside is removed, never followed. One directory is open at a time,
/// however deep the tree (a restore may make one deeper than the open-file
/// limit): the walk climbs back by `..`, and stops if that is not the
/// directory it came from.
fn remove_tree(dir: &OwnedFd, name: &OsStr) {
    const OPEN: OFlags = OFlags::RDONLY
        .union(OFlags::DIRECTORY)
        .union(OFlags::NOFOLLOW)
        .union(OFlags::CLOEXEC);
    let id = |fd: &OwnedFd| rustix::fs::fstat(fd).ok().map(|st| (st.st_dev, st.st_ino));
    // Clears the files out of `fd` and returns its subdirectories.
    let clear = |fd: &OwnedFd| -> Vec<std::ffi::OsString> {
        let mut subdirs = Vec::new();
        let Ok(mut entries) = rustix::fs::Dir::read_from(fd) else {
            return subdirs;
        };
        let mut files = Vec::new();
        while let Some(Ok(e)) = entries.next() {
            let n = e.file_name();
            if n == c"." || n == c".." {
                continue;
            }
            let is_dir = match e.file_type() {
                FileType::Unknown => rustix::fs::statat(fd, n, AtFlags::SYMLINK_NOFOLLOW)
                    .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::Directory),
                ft => ft == FileType::Directory,
            };
            let owned = OsStr::from_bytes(n.to_bytes()).to_owned();
            if is_dir {
                subdirs.push(owned);
            } else {
                files.push(owned);
            }
        }
        for f in files {
            let _ = rustix::fs::unlinkat(fd, &f, AtFlags::empty());
        }
        subdirs
    };
    let Ok(top) = rustix::fs::openat(dir, name, OPEN, Mode::empty()) else {
        let _ = rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR);
        return;
    };
    // Per level below `dir`: the directory's name in its parent, its
    // identity, and the subdirectories still to empty.
    let mut levels = vec![(name.to_owned(), id(&top), clear(&top))];
    let mut cur = top;
    while let Some((_, _, pending)) = levels.last_mut() {
        if let Some(child) = pending.pop() {
            match rustix::fs::openat(&cur, &child, OPEN, Mode::empty()) {
                Ok(fd) => {
                    let subdirs = clear(&fd);
                    levels.push((child, id(&fd), subdirs));
                    cur = fd;
                }
                Err(_) => {
                    let _ = rustix::fs::unlinkat(&cur, &child, AtFlags::REMOVEDIR);
                }
            }
            continue;
        }
        let (done, _, _) = levels.pop().expect("not empty");
        let Some((_, parent_id, _)) = levels.last() else {
            drop(cur);
            let _ = rustix::fs::unlinkat(dir, &done, AtFlags::REMOVEDIR);
            return;
        };
        match rustix::fs::openat(&cur, "..", OPEN, Mode::empty()) {
            Ok(up) if id(&up) == *parent_id && parent_id.is_some() => {
                cur = up;
                let _ = rustix::fs::unlinkat(&cur, &done, AtFlags::REMOVEDIR);
            }
            // Moved meanwhile: leave the rest rather than guess.
            _ => return,
        }
    }
}

/// Never set-id bits from an archive on a directory; sticky may stay (/tmp).
fn dir_mode(recorded: u32) -> u32 {
    recorded & 0o1777
}

/// What the sidecar (signed, where signatures are configured) says the
/// sealed file is; a restore refuses a file that disagrees.
#[derive(Debug, Clone)]
pub struct Expect {
    pub name: String,
    pub job: String,
    pub size: u64,
    /// The digest the sidecar vouches with (BLAKE3 from v3 on), and its hex.
    pub digest: (HashKind, String),
}

impl Expect {
    pub fn of(s: &crate::manifest::Sidecar) -> Self {
        let (kind, hex) = s.file_digest();
        Expect {
            name: s.name.clone(),
            job: s.job.clone(),
            size: s.size,
            digest: (kind, hex.to_owned()),
        }
    }

    /// The ciphertext's size and digest against the sidecar.
    pub fn check_ciphertext(&self, len: u64, hex: &str) -> std::result::Result<(), String> {
        if len > self.size {
            // Readers stop one byte past the sidecar's size.
            return Err(format!(
                "the sealed file is longer than the {} bytes its sidecar says",
                self.size
            ));
        }
        if len != self.size {
            return Err(format!(
                "the sealed file is {len} bytes, its sidecar says {}",
                self.size
            ));
        }
        let (kind, expected) = &self.digest;
        let same: bool = subtle::ConstantTimeEq::ct_eq(hex.as_bytes(), expected.as_bytes()).into();
        if !same {
            return Err(format!(
                "the sealed file's {} is {hex}, its sidecar says {expected}",
                kind.label()
            ));
        }
        Ok(())
    }

    /// The authenticated header against the sidecar: its job, and its name
    /// where it gives one (backups of earlier versions do not).
    fn check_header(&self, header: &Header) -> std::result::Result<(), String> {
        if header.metadata.job.as_deref() != Some(self.job.as_str()) {
            return Err(format!(
                "the header names job {:?}, the sidecar {:?}",
                header.metadata.job, self.job
            ));
        }
        match &header.metadata.name {
            Some(name) if *name != self.name => Err(format!(
                "the header names backup {name}, the sidecar {}",
                self.name
            )),
            _ => Ok(()),
        }
    }

    /// What a walk of an already checked private copy learnt: the header
    /// and the inner manifest against the sidecar.
    fn check_archive(&self, w: &Walked) -> std::result::Result<(), String> {
        self.check_header(&w.header)?;
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
/// checks its size and digest against the sidecar; returns it rewound. What
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
    let kind = expect.map_or(HashKind::Blake3, |x| x.digest.0);
    let mut hashed = crate::pipeline::walk::HashRead::new(input.take(limit), kind);
    // In large pieces: BLAKE3 hashes many 1 KiB chunks at once only when it
    // is given them at once, and io::copy's own buffer is 8 KiB.
    let mut piece = vec![0u8; SPOOL_PIECE];
    loop {
        let n = match hashed.read(&mut piece) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io(what, "read", e)),
        };
        spool.write_all(&piece[..n]).map_err(|e| {
            Error::io(
                std::env::temp_dir(),
                "write the private copy of the sealed file to",
                e,
            )
        })?;
    }
    let len = hashed.len;
    let hex = hashed.hex();
    if let Some(x) = expect {
        x.check_ciphertext(len, &hex)
            .map_err(|message| integrity(what, message))?;
    }
    rewind(&mut spool)?;
    Ok(spool)
}

/// What [`spool`] reads from a store at a time.
const SPOOL_PIECE: usize = 256 << 10;

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

/// A restore that writes or loads anything first authenticates all of the
/// ciphertext, and returns the private copy it checked, rewound, for the
/// pass that writes. First [`spool`] copies the sealed file and checks its
/// size and hash against the sidecar; only then does a private key touch
/// it: a copy the sidecar does not vouch for never reaches a passphrase
/// prompt, a hardware token, an age plugin or an RSA decryption. Then every
/// chunk and the header are authenticated, and the header must name the job
/// and the backup the sidecar names. Nothing is decompressed: a forger who
/// could pass these checks could equally have written an archive consistent
/// in itself, so the archive's own checks (every member against the inner
/// manifest) run in the writing pass, which undoes what it wrote on a
/// mismatch.
///
/// `thorough` adds a full pass over the archive before anything is written,
/// for what cannot be undone (a load into a database, files replaced by
/// `--force`). Backups of earlier versions, whose header does not name them,
/// always get it: only their inner manifest, at the archive's end, ties the
/// file to its sidecar.
pub fn stage(
    input: Box<dyn Read + Send>,
    what: &str,
    identities: &[Identity],
    expect: Option<&Expect>,
    thorough: bool,
) -> Result<File> {
    let mut spool = spool(input, what, expect)?;
    let header = authenticate(&spool, identities).map_err(|e| e.into_error(what))?;
    if let Some(x) = expect {
        x.check_header(&header)
            .map_err(|message| integrity(what, message))?;
    }
    if thorough || (expect.is_some() && header.metadata.name.is_none()) {
        let w = walk_copy(reopen(&spool)?, identities, None, |_, _| Ok(()))
            .map_err(|e| e.into_error(what))?;
        if let Some(x) = expect {
            x.check_archive(&w)
                .map_err(|message| integrity(what, message))?;
        }
    }
    rewind(&mut spool)?;
    Ok(spool)
}

/// A second handle on the private copy, from its start.
fn reopen(spool: &File) -> Result<io::BufReader<File>> {
    let mut copy = spool
        .try_clone()
        .map_err(|e| Error::io(std::env::temp_dir(), "reopen the private copy in", e))?;
    rewind(&mut copy)?;
    Ok(io::BufReader::with_capacity(256 << 10, copy))
}

/// Opens the envelope and authenticates every chunk of the private copy, on
/// every core, without decompressing.
fn authenticate(spool: &File, identities: &[Identity]) -> std::result::Result<Header, WalkError> {
    let header = crate::envelope::authenticate(identities, spool, crate::frames::workers())?;
    crate::pipeline::walk::archive_of(&header)?;
    Ok(header)
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
            let mut ex = Extractor::open(root, force)?;
            match walk_copy(input, identities, None, |m, data| ex.member(m, data)) {
                Ok(w) => {
                    if let Some(Err(message)) = expect.map(|x| x.check_archive(&w)) {
                        ex.undo();
                        return Err(mismatch(message));
                    }
                    ex.finish();
                    Ok(Some(w))
                }
                Err(e) => {
                    let e = e.into_error(what);
                    // --keep-partial keeps what a failing target (a full
                    // disk) got; what a damaged or forged archive wrote
                    // always goes.
                    if keep_partial && matches!(e, Error::Target { .. }) {
                        // What was written stays; what it replaced comes back.
                        ex.put_back_replaced();
                    } else {
                        ex.undo();
                    }
                    Err(e)
                }
            }
        }
        Target::Tar => {
            let w = walk_copy(input, identities, Some(&mut *out), |_, _| Ok(()))
                .map_err(|e| e.into_error(what))?;
            flush(out)?;
            if let Some(x) = expect {
                x.check_archive(&w).map_err(mismatch)?;
            }
            Ok(None)
        }
        Target::Member { name } => {
            let mut found = false;
            // What to offer if the name is not there: the dumps, not every
            // file of a tree.
            let mut offer: Vec<String> = Vec::new();
            let mut files = 0u64;
            let w = walk_copy(input, identities, None, |m, data| {
                // By its bytes: two names that differ only in bytes that are
                // not UTF-8 read the same once made lossy, and are two files.
                if m.raw == name.as_bytes() {
                    found = true;
                    copy_out(data, out, Path::new("<stdout>"))?;
                }
                if m.part.is_none_or(|n| n == 0) {
                    if m.name.starts_with("files/") {
                        files += 1;
                    } else if offer.len() < 50 && !m.name.starts_with("MANIFEST") {
                        offer.push(m.name.to_owned());
                    }
                }
                Ok(())
            })
            .map_err(|e| e.into_error(what))?;
            flush(out)?;
            if let Some(x) = expect {
                x.check_archive(&w).map_err(mismatch)?;
            }
            if !found {
                if files > 0 {
                    offer.push(format!(
                        "{files} files/ members (restore --to DIR to see them)"
                    ));
                }
                let holds = offer.join(", ");
                return Err(Error::Usage(format!(
                    "{what} has no member {name:?}; it holds: {holds}"
                )));
            }
            Ok(Some(w))
        }
    }
}

fn flush(out: &mut dyn Write) -> Result<()> {
    out.flush().map_err(|e| Error::Target {
        path: "<stdout>".into(),
        op: "write",
        source: e,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_confined() {
        assert!(safe_relative(b"mysql/main.sql").is_ok());
        assert!(safe_relative(b"./a/b").is_ok());
        assert!(safe_relative(b"files/x/\xff").is_ok());
        assert!(safe_relative(b"../../etc/x").is_err());
        assert!(safe_relative(b"a/../../x").is_err());
        assert!(safe_relative(b"/etc/passwd").is_err());
        assert!(safe_relative(b"").is_err());
    }
}
