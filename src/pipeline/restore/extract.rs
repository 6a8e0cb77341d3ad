//! Extraction into a directory. It never writes outside the target. Member
//! paths must be relative without `..`; hard links and device files are
//! refused. Symlinks are restored exactly as recorded, absolute or not (a
//! backup of /etc is full of them), and coffer never follows one: every
//! member is created relative to a directory opened one component at a time
//! with `O_NOFOLLOW`, and a member whose parent chain holds a link — one
//! already in the target, or one made earlier in the same archive — is
//! refused. Whether a link's target lies inside the directory is not
//! checked: that cannot be decided by looking at its text (`s -> .` makes
//! `s/s/../..` climb), and does not matter when no link is followed. Modes
//! never carry set-uid or set-gid bits; a directory that was already there
//! keeps its own mode. Existing files are not replaced without `--force`. If
//! anything fails (a bad chunk, a member that does not match the inner
//! manifest), what was extracted is removed unless `--keep-partial`.

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
use crate::error::{Error, Result};
use crate::pipeline::restore::walk::{Member, WalkError};

/// The relative path of a member inside the target, or why not.
pub(crate) fn safe_relative(name: &[u8]) -> std::result::Result<PathBuf, String> {
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
pub(super) fn copy_out(
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
pub(super) const TRAVERSE: OFlags = OFlags::PATH
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// What is at `name` in `dir`, without following a link; `None` if nothing.
pub(super) fn kind_at(dir: &OwnedFd, name: &OsStr) -> io::Result<Option<FileType>> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(FileType::from_raw_mode(st.st_mode))),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The directory `rel` under `root`, opened without following any link on
/// the way; `None` if it is gone. Used to finish and undo.
pub(super) fn open_below(root: &OwnedFd, rel: &Path, last: OFlags) -> Option<OwnedFd> {
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

pub(super) struct Extractor {
    /// The target directory, for messages.
    pub(super) root: PathBuf,
    /// Every member is created relative to this, one component at a time.
    pub(super) root_fd: OwnedFd,
    pub(super) force: bool,
    /// The directories this restore made in directories it did not make
    /// (relative to the root): all that is in one is this restore's too.
    /// Only these, not every directory under them: a chain of a hundred
    /// thousand new directories (one member can name it) would otherwise
    /// cost the sum of all its prefixes, quadratic in its depth.
    pub(super) made_dirs: HashSet<PathBuf>,
    /// The most components of any path in `made_dirs`: no deeper prefix
    /// needs looking up. It follows the target's own tree, which was there
    /// before, not the archive.
    pub(super) made_depth: usize,
    /// What this restore made outside any directory it made, newest last:
    /// to undo on failure, these (directories with what is in them) are
    /// removed. Into a new or empty target that is only the top level, so
    /// memory follows the directories, not the files.
    pub(super) undo_roots: Vec<PathBuf>,
    /// Directory modes and mtimes, applied last (a read-only directory would
    /// refuse its own contents).
    pub(super) dirs: Vec<(PathBuf, u32, i64)>,
    /// Files and links `--force` replaced, moved aside in their own
    /// directory (the directory's path, the name aside, the name): removed
    /// once the whole restore succeeded, put back if it fails. A replaced
    /// file is never gone before the archive has proved itself.
    pub(super) replaced: Vec<(PathBuf, std::ffi::OsString, std::ffi::OsString)>,
    /// The directory the last member went into, still open: the next member
    /// is most often its sibling (tar keeps a directory's entries together),
    /// and a held descriptor cannot be redirected.
    pub(super) last_parent: Option<(PathBuf, OwnedFd)>,
}

/// Why a directory that was in the target before is no place to restore
/// into: another user owns it (she could read what is written, or swap it),
/// or others may write it (they could swap what is written for a link).
/// Checked on the open handle.
fn not_ours(dir: &OwnedFd) -> Option<String> {
    let st = rustix::fs::fstat(dir).ok()?;
    let me = rustix::process::geteuid().as_raw();
    if st.st_uid != 0 && st.st_uid != me {
        return Some(format!(
            "was there before the restore and belongs to uid {}; a restore does not write into another user's directory",
            st.st_uid
        ));
    }
    if st.st_mode & 0o022 != 0 && st.st_mode & 0o1000 == 0 {
        return Some(
            "was there before the restore and others may write it; a restore does not write where others can swap what it wrote"
                .into(),
        );
    }
    None
}

pub(super) fn mtime_of(secs: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0))
}

impl Extractor {
    pub(super) fn open(root: PathBuf, force: bool) -> Result<Self> {
        let root_fd =
            rustix::fs::openat(rustix::fs::CWD, &root, TRAVERSE, Mode::empty()).map_err(|e| {
                Error::Target {
                    path: root.clone(),
                    op: "open",
                    source: e.into(),
                }
            })?;
        if let Some(problem) = not_ours(&root_fd) {
            return Err(Error::TargetUnsafe {
                path: root,
                problem,
            });
        }
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
    pub(super) fn made(&self, rel: &Path) -> bool {
        self.in_made_dir(rel) || self.undo_roots.iter().any(|r| r == rel)
    }

    /// Whether `rel` is, or is inside, a directory this restore made.
    pub(super) fn in_made_dir(&self, rel: &Path) -> bool {
        let mut prefix = PathBuf::new();
        rel.components().take(self.made_depth).any(|c| {
            prefix.push(c);
            self.made_dirs.contains(&prefix)
        })
    }

    /// Notes that `rel` was made (a directory if `dir`).
    pub(super) fn note_made(&mut self, rel: &Path, dir: bool) {
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
    pub(super) fn in_the_way(&self, rel: &Path, problem: &'static str) -> WalkError {
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
    pub(super) fn parent_of(&mut self, rel: &Path) -> std::result::Result<OwnedFd, WalkError> {
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

    pub(super) fn open_parent(&mut self, parent: &Path) -> std::result::Result<OwnedFd, WalkError> {
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
                Ok(d) if !self.made(&at) => match not_ours(&d) {
                    Some(problem) => {
                        return Err(WalkError::TargetUnsafe {
                            path: self.root.join(&at),
                            problem,
                        })
                    }
                    None => d,
                },
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

    pub(super) fn member(
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
    pub(super) fn make_room(
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

    pub(super) fn finish(&mut self) {
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

    pub(super) fn undo(&mut self) {
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
    pub(super) fn put_back_replaced(&mut self) {
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
pub(super) fn remove_tree(dir: &OwnedFd, name: &OsStr) {
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
pub(super) fn dir_mode(recorded: u32) -> u32 {
    recorded & 0o1777
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
