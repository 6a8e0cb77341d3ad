//! Files and directories, with modes, owners and mtimes. Symbolic links are
//! stored as links and never followed, so nothing outside the named trees is
//! read. Sockets, FIFOs and devices are skipped with a warning.
//!
//! The walk goes by directory handle, not by name: each entry is opened
//! relative to its parent's open descriptor with `O_NOFOLLOW`, and what is
//! recorded (type, mode, owner, size, mtime) comes from `fstat` of that
//! descriptor. A directory swapped for a symlink after it was listed then
//! fails to open instead of pulling another tree into the backup, and a file
//! swapped for a FIFO is opened without blocking, seen for what it is and
//! skipped. A name that vanishes before it is opened is skipped with a
//! warning too, as GNU tar does. A name this user may not read, and the
//! part of a tree nested deeper than the open-file limit (each level of the
//! walk holds its directory open), are left out and named: the rest of the
//! night's backup, databases included, is still made and stored, and the
//! run fails (exit 1) naming what it lacks. Any other error fails the run.

use std::ffi::{CStr, CString, OsStr};
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};

use super::safepath::{Place, Refused};
use super::{Entry, EntryKind, Report, Sink, Source, SourceError};

pub struct FilesSource {
    pub name: String,
    pub paths: Vec<String>,
}

fn expand(pattern: &str) -> Result<Vec<PathBuf>, SourceError> {
    let has_glob = pattern.contains(['*', '?', '[']);
    // A path that exists as written is that path, even with glob characters
    // in its name (`/srv/app[old]`): as a pattern it would match nothing.
    if !has_glob || Path::new(pattern).symlink_metadata().is_ok() {
        return Ok(vec![PathBuf::from(pattern)]);
    }
    let paths = glob::glob(pattern)
        .map_err(|e| SourceError::Invalid(format!("bad glob {pattern:?}: {e}")))?
        .filter_map(Result::ok)
        .collect::<Vec<_>>();
    Ok(paths)
}

/// `p` made absolute and tidied by its text alone: `.` and empty
/// components dropped, `..` taking its parent off. This names members; the
/// walk itself opens `p` as written.
fn normalized(p: &Path) -> PathBuf {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().map_or_else(|_| p.to_path_buf(), |d| d.join(p))
    };
    let mut out = PathBuf::from("/");
    for c in abs.components() {
        match c {
            Component::Normal(s) => out.push(s),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

/// The configured paths, each once: one inside another (`/etc` and
/// `/etc/mysql`), or named twice, is already in the backup with the outer
/// one, and a second member of one name would make the backup unreadable.
/// Returns the paths to walk and a warning for each one dropped.
fn outermost(paths: Vec<PathBuf>) -> Result<(Vec<PathBuf>, Vec<String>), SourceError> {
    let mut named: Vec<(PathBuf, PathBuf)> = paths
        .into_iter()
        .map(|p| {
            let p = resolved(&p);
            (normalized(&p), p)
        })
        .collect();
    // Sorted by components, an ancestor comes right before its descendants.
    named.sort_by(|a, b| a.0.components().cmp(b.0.components()));
    let mut kept: Vec<(PathBuf, PathBuf)> = Vec::new();
    let mut warnings = Vec::new();
    for (norm, p) in named {
        match kept.last() {
            Some((outer, op)) if norm.starts_with(outer) => {
                // A link is backed up as a link, not followed: what is
                // under one is not in the backup with `op`, and would not
                // restore beside it.
                if let Some(link) = link_between(outer, op, &norm, &p) {
                    return Err(SourceError::Invalid(format!(
                        "{}: {} is a symlink the backup keeps as a link, so this is not under {}; configure the path it points to",
                        p.display(),
                        link.display(),
                        op.display()
                    )));
                }
                warnings.push(format!(
                    "{}: already in the backup under {}; backed up once",
                    p.display(),
                    op.display()
                ));
            }
            _ => kept.push((norm, p)),
        }
    }
    Ok((kept.into_iter().map(|(_, p)| p).collect(), warnings))
}

/// The symlink, if any, that makes `p` (named `norm`) not part of the walk
/// of `op` (named `outer`, an ancestor of `norm` or `norm` itself): `op`
/// itself when written without a trailing slash (kept as a link), any
/// directory between them, or `p` itself when only one of the two is
/// written to follow it.
fn link_between(outer: &Path, op: &Path, norm: &Path, p: &Path) -> Option<PathBuf> {
    let is_link = |q: &Path| fs::symlink_metadata(q).is_ok_and(|m| m.file_type().is_symlink());
    if norm == outer {
        return (is_link(op) != is_link(p)).then(|| norm.to_path_buf());
    }
    if is_link(op) {
        return Some(op.to_path_buf());
    }
    let mut at = outer.to_path_buf();
    let rest: Vec<_> = norm.strip_prefix(outer).ok()?.components().collect();
    for (i, c) in rest.iter().enumerate() {
        at.push(c);
        let last = i + 1 == rest.len();
        if is_link(&at) && (!last || is_link(p) != is_link(&at)) {
            return Some(at);
        }
    }
    None
}

/// `p` with everything up to its last `..` resolved as the kernel resolves
/// it (through links, `a/link/..` is the link target's parent, not `a`),
/// so that the name `normalized` gives it is the directory walked. A path
/// without `..`, whose start does not exist, or whose text alone leads to
/// the same directory, is returned as it is.
fn resolved(p: &Path) -> PathBuf {
    let parts: Vec<Component<'_>> = p.components().collect();
    let Some(last) = parts.iter().rposition(|c| *c == Component::ParentDir) else {
        return p.to_path_buf();
    };
    let head: PathBuf = parts[..=last].iter().collect();
    // A link on the way that someone else could have put there is not
    // resolved here by name: the walk meets it by handle and refuses it.
    if let Err(super::safepath::Refused::Untrusted(_)) = super::safepath::open(&head) {
        return p.to_path_buf();
    }
    let Ok(mut out) = fs::canonicalize(&head) else {
        return p.to_path_buf();
    };
    // Where the text alone leads to the same directory, its name stays.
    if fs::canonicalize(normalized(&head)).is_ok_and(|lexical| lexical == out) {
        return p.to_path_buf();
    }
    for c in &parts[last + 1..] {
        out.push(c);
    }
    // A trailing slash follows a final link; keep it.
    if p.as_os_str().as_bytes().ends_with(b"/") && parts.len() > last + 1 {
        out.as_mut_os_string().push("/");
    }
    out
}

/// Reads exactly `size` bytes: a file that shrinks is padded with zeros and a
/// file that grows is cut, as GNU tar does; either is reported.
struct Exact<R> {
    inner: R,
    left: u64,
    short: bool,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = usize::try_from(self.left.min(buf.len() as u64)).unwrap_or(buf.len());
        let n = if self.short {
            0
        } else {
            self.inner.read(&mut buf[..want])?
        };
        let n = if n == 0 {
            self.short = true;
            buf[..want].fill(0);
            want
        } else {
            n
        };
        self.left -= n as u64;
        Ok(n)
    }
}

/// What the listing (the directory entry's type, else `lstat`) said a name is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Listed {
    File,
    Dir,
    Symlink,
    /// A FIFO, socket or device: never opened.
    Special(FileType),
}

impl Listed {
    fn of(ft: FileType) -> Self {
        match ft {
            FileType::RegularFile => Listed::File,
            FileType::Directory => Listed::Dir,
            FileType::Symlink => Listed::Symlink,
            other => Listed::Special(other),
        }
    }
}

fn describe(ft: FileType) -> &'static str {
    match ft {
        FileType::RegularFile => "a regular file",
        FileType::Directory => "a directory",
        FileType::Symlink => "a symbolic link",
        FileType::Fifo => "a FIFO",
        FileType::Socket => "a socket",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        FileType::Unknown => "of an unknown type",
    }
}

/// What opening a listed name found.
#[derive(Debug)]
enum Opened {
    /// With the descriptor's own metadata, which describes exactly what is
    /// read.
    File(File, fs::Metadata),
    Dir(File, fs::Metadata),
    /// Not read; the reason goes into the run's report.
    Skipped(String),
}

/// Opens `name` under `dir` as what the listing said it was, without
/// following a symlink and without blocking: `O_NONBLOCK` makes opening a
/// FIFO return at once and `O_NOCTTY` keeps a terminal from becoming ours.
/// Whatever the descriptor turns out to be other than `listed` is skipped.
fn open_entry(dir: BorrowedFd<'_>, name: &CStr, listed: Listed) -> io::Result<Opened> {
    let mut flags =
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY;
    if listed == Listed::Dir {
        flags |= OFlags::DIRECTORY;
    }
    let fd = match rustix::fs::openat(dir, name, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(e) => return skipped_or(e, listed),
    };
    let file = File::from(fd);
    let meta = file.metadata()?;
    Ok(match (listed, FileType::from_raw_mode(meta.mode())) {
        (Listed::File, FileType::RegularFile) => Opened::File(file, meta),
        (Listed::Dir, FileType::Directory) => Opened::Dir(file, meta),
        (_, now) => Opened::Skipped(format!(
            "skipped: listed as {} but is now {}",
            describe(listed_type(listed)),
            describe(now)
        )),
    })
}

fn listed_type(listed: Listed) -> FileType {
    match listed {
        Listed::File => FileType::RegularFile,
        Listed::Dir => FileType::Directory,
        Listed::Symlink => FileType::Symlink,
        Listed::Special(ft) => ft,
    }
}

/// An error opening or reading a listed name: one that says the name changed
/// since it was listed is a skip; anything else is an error for the caller
/// (a permission denied is left out and named by [`unread`], an I/O error
/// fails the run, as a backup silently missing data would be worse).
fn skipped_or(e: rustix::io::Errno, listed: Listed) -> io::Result<Opened> {
    use rustix::io::Errno;
    let was = describe(listed_type(listed));
    let reason = match e {
        Errno::NOENT => format!("skipped: {was} that vanished before it was read"),
        // O_NOFOLLOW met a symlink, O_DIRECTORY met something else, a
        // socket cannot be opened, readlinkat met a non-link.
        Errno::LOOP | Errno::NOTDIR | Errno::NXIO | Errno::INVAL => {
            format!("skipped: listed as {was} but changed before it was read")
        }
        e => return Err(e.into()),
    };
    Ok(Opened::Skipped(reason))
}

/// Records `p` as not read when `e` says this user may not read it or the
/// walk has no descriptor left for it (a tree deeper than the open-file
/// limit): what the run can read is still backed up, and the run's failure
/// names what it could not. Other errors (an I/O error) are not this.
fn unread(report: &mut Report, p: &Path, e: &io::Error) -> bool {
    use rustix::io::Errno;
    let why = match Errno::from_io_error(e) {
        Some(Errno::ACCESS | Errno::PERM) => "permission denied".to_owned(),
        Some(Errno::MFILE | Errno::NFILE) => {
            "nested deeper than the open-file limit lets the walk go (raise LimitNOFILE / ulimit -n)"
                .to_owned()
        }
        _ => return false,
    };
    let said = format!("{}: not backed up: {why}", p.display());
    report.warnings.push(said.clone());
    report.unread.push(said);
    true
}

/// The names in an open directory, sorted by bytes, with what the directory
/// says each is (asking `lstat` relative to `dir` where it does not say).
/// Names that vanish in between are left out.
fn list(dir: &File) -> io::Result<Vec<(CString, Listed)>> {
    let mut names = Vec::new();
    for e in rustix::fs::Dir::read_from(dir)? {
        let e = e?;
        let name = e.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        let ft = match e.file_type() {
            FileType::Unknown => match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => FileType::from_raw_mode(st.st_mode),
                Err(rustix::io::Errno::NOENT) => continue,
                Err(e) => return Err(e.into()),
            },
            ft => ft,
        };
        names.push((name.to_owned(), Listed::of(ft)));
    }
    names.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    Ok(names)
}

/// The mtime of an `lstat`, whatever integer type this platform gives it.
#[allow(clippy::useless_conversion)]
fn mtime_of(st: &rustix::fs::Stat) -> i64 {
    i64::try_from(st.st_mtime).unwrap_or(i64::MAX)
}

impl FilesSource {
    /// The member name of `p`: its bytes exactly, whatever they are.
    fn member(&self, p: &Path) -> Vec<u8> {
        let norm = normalized(p);
        let rel = norm.strip_prefix("/").unwrap_or(&norm);
        let mut name = format!("files/{}/", self.name).into_bytes();
        name.extend_from_slice(rel.as_os_str().as_bytes());
        if name.ends_with(b"/") {
            name.pop();
        }
        name
    }

    /// Backs up `name` under the directory `dir` (`p` is its path, for the
    /// member name and messages), and everything below it.
    fn visit(
        &self,
        dir: BorrowedFd<'_>,
        name: &CStr,
        p: &Path,
        listed: Listed,
        sink: &mut dyn Sink,
        report: &mut Report,
    ) -> Result<(), SourceError> {
        let io_err = |source| SourceError::Io {
            path: p.to_path_buf(),
            source,
        };
        // No reader takes a longer name (it holds one whole in memory):
        // the path is left out and named rather than written unreadable.
        if self.member(p).len() as u64 > crate::archive::LONG_NAME_MAX {
            let said = format!(
                "{}…: not backed up: a path longer than {} bytes",
                p.display()
                    .to_string()
                    .chars()
                    .take(200)
                    .collect::<String>(),
                crate::archive::LONG_NAME_MAX
            );
            report.warnings.push(said.clone());
            report.unread.push(said);
            return Ok(());
        }
        let skip = |report: &mut Report, reason: &str| {
            report.warnings.push(format!("{}: {reason}", p.display()));
        };
        let opened = match listed {
            Listed::Special(ft) => {
                skip(
                    report,
                    &format!("skipped ({}: not a file, directory or link)", describe(ft)),
                );
                return Ok(());
            }
            Listed::Symlink => return self.link(dir, name, p, sink, report),
            Listed::File | Listed::Dir => match open_entry(dir, name, listed) {
                Err(e) if unread(report, p, &e) => return Ok(()),
                other => other.map_err(io_err)?,
            },
        };
        let (file, meta, is_dir) = match opened {
            Opened::Skipped(reason) => {
                skip(report, &reason);
                return Ok(());
            }
            Opened::File(f, meta) => (f, meta, false),
            Opened::Dir(f, meta) => (f, meta, true),
        };
        let mut entry = Entry {
            path: self.member(p),
            kind: EntryKind::File,
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
            mtime: meta.mtime(),
            size: 0,
        };
        if is_dir {
            entry.kind = EntryKind::Dir;
            sink.entry(&entry, &mut io::empty())
                .map_err(SourceError::Sink)?;
            let children = match list(&file) {
                Err(e) if unread(report, p, &e) => return Ok(()),
                other => other.map_err(io_err)?,
            };
            for (child, listed) in children {
                let path = p.join(OsStr::from_bytes(child.to_bytes()));
                self.visit(file.as_fd(), &child, &path, listed, sink, report)?;
            }
            return Ok(());
        }
        entry.size = meta.len();
        let mut exact = Exact {
            inner: crate::cancel::CancelReader(file),
            left: entry.size,
            short: false,
        };
        sink.entry(&entry, &mut exact).map_err(SourceError::Sink)?;
        if exact.short {
            report
                .warnings
                .push(format!("{}: file shrank while being read", p.display()));
        }
        Ok(())
    }

    /// Records the symlink `name` under `dir` as a link; its target is never
    /// opened.
    fn link(
        &self,
        dir: BorrowedFd<'_>,
        name: &CStr,
        p: &Path,
        sink: &mut dyn Sink,
        report: &mut Report,
    ) -> Result<(), SourceError> {
        let mut skip_or_fail = |e| match skipped_or(e, Listed::Symlink) {
            Ok(Opened::Skipped(reason)) => {
                report.warnings.push(format!("{}: {reason}", p.display()));
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(source) => Err(SourceError::Io {
                path: p.to_path_buf(),
                source,
            }),
        };
        let st = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(e) => return skip_or_fail(e),
        };
        if FileType::from_raw_mode(st.st_mode) != FileType::Symlink {
            return skip_or_fail(rustix::io::Errno::INVAL);
        }
        // Should it change again now, readlinkat fails (EINVAL) on anything
        // but a link: nothing is ever followed.
        let target = match rustix::fs::readlinkat(dir, name, Vec::new()) {
            Ok(t) => t,
            Err(e) => return skip_or_fail(e),
        };
        let entry = Entry {
            path: self.member(p),
            kind: EntryKind::Symlink(PathBuf::from(OsStr::from_bytes(target.as_bytes()))),
            mode: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
            mtime: mtime_of(&st),
            size: 0,
        };
        sink.entry(&entry, &mut io::empty())
            .map_err(SourceError::Sink)
    }

    /// Backs up a path named in the configuration, opened from the root
    /// down by handle (see `safepath`: a link on the way is followed only
    /// when no one but root or coffer's user could have put it there), and
    /// everything below it by handle too.
    fn walk(&self, p: &Path, sink: &mut dyn Sink, report: &mut Report) -> Result<(), SourceError> {
        let io_err = |source| SourceError::Io {
            path: p.to_path_buf(),
            source,
        };
        let place = match super::safepath::open(p) {
            Ok(place) => place,
            Err(Refused::Io(e)) if unread(report, p, &e) => return Ok(()),
            Err(Refused::Io(e)) => return Err(io_err(e)),
            Err(Refused::Untrusted(why)) => {
                let said = format!("{}: not backed up: {why}", p.display());
                report.warnings.push(said.clone());
                report.unread.push(said);
                return Ok(());
            }
        };
        match place {
            Place::Under(dir, name) => {
                let st = match rustix::fs::statat(&dir, &name, AtFlags::SYMLINK_NOFOLLOW) {
                    Err(e) if unread(report, p, &e.into()) => return Ok(()),
                    other => other.map_err(|e| io_err(e.into()))?,
                };
                let listed = Listed::of(FileType::from_raw_mode(st.st_mode));
                self.visit(dir.as_fd(), &name, p, listed, sink, report)
            }
            Place::Itself(dir) => self.visit(dir.as_fd(), c".", p, Listed::Dir, sink, report),
        }
    }
}

impl Source for FilesSource {
    fn kind(&self) -> &'static str {
        "files"
    }
    fn name(&self) -> &str {
        &self.name
    }

    fn check(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for pat in &self.paths {
            match expand(pat) {
                Ok(v) if v.is_empty() => problems.push(format!("{pat}: matches nothing")),
                Ok(v) => {
                    for p in v {
                        if fs::symlink_metadata(&p).is_err() {
                            problems.push(format!("{}: does not exist", p.display()));
                        }
                    }
                }
                Err(e) => problems.push(e.to_string()),
            }
        }
        problems
    }

    fn run(&self, sink: &mut dyn Sink) -> Result<Report, SourceError> {
        let mut report = Report::default();
        let mut all = Vec::new();
        for pat in &self.paths {
            let matches = expand(pat)?;
            if matches.is_empty() {
                return Err(SourceError::Invalid(format!("{pat}: matches nothing")));
            }
            all.extend(matches);
        }
        let (roots, dropped) = outermost(all)?;
        report.warnings.extend(dropped);
        for p in roots {
            self.walk(&p, sink, &mut report)?;
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    fn dir_of(p: &Path) -> File {
        File::open(p).unwrap()
    }

    /// Runs `open_entry` on a thread, so that a regression that blocks fails
    /// the test instead of hanging it.
    fn open_bounded(dir: &Path, name: &str, listed: Listed) -> Opened {
        let dir = dir_of(dir);
        let name = CString::new(name).unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(open_entry(dir.as_fd(), &name, listed).unwrap());
        });
        rx.recv_timeout(Duration::from_secs(20))
            .expect("opening did not return: it blocked")
    }

    fn fifo(p: &Path) {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            p,
            FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
    }

    #[test]
    fn dotdot_through_a_link_others_own_is_not_resolved() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("SKIP: a link another user owns needs root");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("secret/project")).unwrap();
        fs::create_dir(d.path().join("home")).unwrap();
        let link = d.path().join("home/docs");
        std::os::unix::fs::symlink(d.path().join("secret"), &link).unwrap();
        let through = link.join("../secret/project");
        // The operator's own link is resolved as the kernel would…
        assert_eq!(
            resolved(&through),
            d.path().canonicalize().unwrap().join("secret/project")
        );
        // …one another user owns is left for the walk, which refuses it.
        std::os::unix::fs::lchown(&link, Some(65534), None).unwrap();
        assert_eq!(resolved(&through), through);
        assert!(matches!(
            super::super::safepath::open(&through),
            Err(Refused::Untrusted(_))
        ));
    }

    #[test]
    fn each_configured_path_is_walked_once() {
        let (kept, warnings) = outermost(
            [
                "/etc/mysql",
                "/etc",
                "/etc/./mysql/",
                "/var/lib/x",
                "/etcetera",
                "/var/lib/x/../x",
            ]
            .iter()
            .map(PathBuf::from)
            .collect(),
        )
        .unwrap();
        assert_eq!(
            kept,
            [
                PathBuf::from("/etc"),
                PathBuf::from("/etcetera"),
                PathBuf::from("/var/lib/x")
            ]
        );
        assert_eq!(warnings.len(), 3, "{warnings:?}");
        assert!(warnings[0].contains("already in the backup under /etc"));
    }

    #[test]
    fn a_path_under_a_link_is_not_dropped_as_already_backed_up() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("d");
        fs::create_dir_all(d.join("real/x")).unwrap();
        std::os::unix::fs::symlink(d.join("real"), d.join("l")).unwrap();
        // Under a directory, through a link inside it: refused.
        assert!(outermost(vec![d.clone(), d.join("l/x")]).is_err());
        // The link itself, as written, is what walking `d` records: dropped.
        let (kept, warnings) = outermost(vec![d.clone(), d.join("l")]).unwrap();
        assert_eq!((kept, warnings.len()), (vec![d.clone()], 1));
        // Followed (trailing slash), it is not: refused.
        let mut followed = d.join("l").into_os_string();
        followed.push("/");
        assert!(outermost(vec![d.clone(), PathBuf::from(followed)]).is_err());
        // A plain subdirectory: dropped.
        assert!(outermost(vec![d.clone(), d.join("real/x")]).is_ok());
    }

    #[test]
    fn member_names_keep_their_bytes() {
        let s = FilesSource {
            name: "cfg".into(),
            paths: vec![],
        };
        let p = Path::new(OsStr::from_bytes(b"/srv/./a\xff//b/../c"));
        assert_eq!(s.member(p), b"files/cfg/srv/a\xff/c");
        assert_eq!(s.member(Path::new("/")), b"files/cfg");
    }

    #[test]
    fn a_file_swapped_for_a_fifo_is_skipped_without_blocking() {
        let t = tempfile::tempdir().unwrap();
        fifo(&t.path().join("f"));
        // Listed as a file: the walk saw a regular file, then it was swapped.
        match open_bounded(t.path(), "f", Listed::File) {
            Opened::Skipped(reason) => assert!(reason.contains("now a FIFO"), "{reason}"),
            other => panic!("a FIFO was opened as {other:?}"),
        }
    }

    #[test]
    fn a_swapped_in_symlink_is_never_followed() {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir(t.path().join("real")).unwrap();
        fs::write(t.path().join("real/secret"), "root only").unwrap();
        std::os::unix::fs::symlink(t.path().join("real"), t.path().join("d")).unwrap();
        std::os::unix::fs::symlink(t.path().join("real/secret"), t.path().join("f")).unwrap();
        for (name, listed) in [("d", Listed::Dir), ("f", Listed::File)] {
            match open_bounded(t.path(), name, listed) {
                Opened::Skipped(reason) => assert!(reason.contains("changed"), "{reason}"),
                other => panic!("{name}: the link was followed to {other:?}"),
            }
        }
    }

    #[test]
    fn a_type_change_is_seen_on_the_descriptor() {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir(t.path().join("was-a-file")).unwrap();
        fs::write(t.path().join("was-a-dir"), "x").unwrap();
        for (name, listed, now) in [
            ("was-a-file", Listed::File, "now a directory"),
            ("was-a-dir", Listed::Dir, "changed"),
            ("gone", Listed::File, "vanished"),
        ] {
            match open_bounded(t.path(), name, listed) {
                Opened::Skipped(reason) => assert!(reason.contains(now), "{name}: {reason}"),
                other => panic!("{name}: opened as {other:?}"),
            }
        }
        assert!(matches!(
            open_bounded(t.path(), "was-a-dir", Listed::File),
            Opened::File(..)
        ));
        assert!(matches!(
            open_bounded(t.path(), "was-a-file", Listed::Dir),
            Opened::Dir(..)
        ));
    }
}

#[cfg(test)]
mod long_names {
    use super::*;

    /// Counts what the walk hands on.
    struct Count(usize);

    impl Sink for Count {
        fn stream(&mut self, _: &str, _: &mut dyn Read) -> io::Result<()> {
            self.0 += 1;
            Ok(())
        }
        fn entry(&mut self, _: &Entry, _: &mut dyn Read) -> io::Result<()> {
            self.0 += 1;
            Ok(())
        }
    }

    #[test]
    fn a_path_no_reader_takes_is_left_out_and_named() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("f"), "x").unwrap();
        let src = FilesSource {
            name: "tree".into(),
            paths: Vec::new(),
        };
        let dir = File::open(d.path()).unwrap();
        let visit = |p: &Path| {
            let mut sink = Count(0);
            let mut report = Report::default();
            src.visit(dir.as_fd(), c"f", p, Listed::File, &mut sink, &mut report)
                .unwrap();
            (sink.0, report.unread)
        };
        // The same file under a name a reader takes, and one it does not.
        assert_eq!(visit(&d.path().join("f")), (1, Vec::new()));
        let long = PathBuf::from("/").join("a/".repeat(600 << 10));
        let (written, unread) = visit(&long);
        assert_eq!(written, 0);
        assert_eq!(unread.len(), 1);
        assert!(unread[0].contains("a path longer than"), "{unread:?}");
    }
}
