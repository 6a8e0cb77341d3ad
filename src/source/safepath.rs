//! Opening a configured path from the root down, one component at a time,
//! so that a local user cannot redirect it.
//!
//! A path such as `/home/alice/docs/project` passes through directories that
//! others own. Opened by name, a directory on the way that its owner swaps
//! for a symlink (`docs` → `/root`) would put another tree into the backup
//! under the configured name. Here each directory on the way is opened with
//! `O_NOFOLLOW` relative to the one before; a symlink met on the way is
//! followed only when neither it nor the directory holding it can be changed
//! by anyone but root or coffer's own user (the links an operator made, such
//! as `/var/lib/mysql` → `/srv/mysql`). Any other is refused, named, and the
//! path left out of the backup.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

/// Where a configured path was found.
pub(super) enum Place {
    /// Its last component, under this directory: opened by the walk without
    /// following it (a final link is backed up as a link).
    Under(OwnedFd, CString),
    /// The directory itself (the root, or a path written with a trailing
    /// slash, which asks for a final link to be followed).
    Itself(OwnedFd),
}

/// Why a configured path was not opened.
pub(super) enum Refused {
    Io(io::Error),
    /// It runs through a link someone else could have put there.
    Untrusted(String),
}

impl From<Errno> for Refused {
    fn from(e: Errno) -> Self {
        Refused::Io(e.into())
    }
}

/// How many links one path may pass through, as the kernel allows.
const HOPS_MAX: u32 = 40;

fn open_dir(dir: &OwnedFd, name: &OsStr) -> Result<OwnedFd, Errno> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

fn root() -> Result<OwnedFd, Errno> {
    rustix::fs::open(
        "/",
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// The components of `p` to walk, in order.
fn parts(p: &Path) -> Vec<OsString> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_owned()),
            Component::ParentDir => Some(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

/// Opens `p` (absolute, or taken from the current directory) down to its
/// last component.
pub(super) fn open(p: &Path) -> Result<Place, Refused> {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().map_err(Refused::Io)?.join(p)
    };
    // A trailing `/` or `/.` asks for a final link to be followed, as the
    // kernel does (`Path::components` drops the `.`).
    let bytes = abs.as_os_str().as_bytes();
    let trailing = (bytes.ends_with(b"/") || bytes.ends_with(b"/.")) && bytes.len() > 1;
    let mut todo: std::collections::VecDeque<OsString> = parts(&abs).into();
    let mut cur = root()?;
    let mut at = PathBuf::from("/");
    let mut hops = 0;
    while let Some(c) = todo.pop_front() {
        if todo.is_empty() && !trailing && c != ".." {
            let name = CString::new(c.into_vec())
                .map_err(|_| Refused::Io(io::Error::other("a NUL in the path")))?;
            return Ok(Place::Under(cur, name));
        }
        if c == ".." {
            cur = open_dir(&cur, OsStr::new(".."))?;
            at.pop();
            continue;
        }
        match open_dir(&cur, &c) {
            Ok(fd) => {
                cur = fd;
                at.push(&c);
            }
            Err(Errno::NOTDIR | Errno::LOOP) => {
                let st = rustix::fs::statat(&cur, &c, AtFlags::SYMLINK_NOFOLLOW)?;
                if FileType::from_raw_mode(st.st_mode) != FileType::Symlink {
                    return Err(Errno::NOTDIR.into());
                }
                let link = at.join(&c);
                trusted(&cur, &st).map_err(|who| {
                    Refused::Untrusted(format!(
                        "runs through {}, a symlink that {who} could have put there; configure the path it points to",
                        link.display()
                    ))
                })?;
                hops += 1;
                if hops > HOPS_MAX {
                    return Err(Errno::LOOP.into());
                }
                let target = PathBuf::from(OsString::from_vec(
                    rustix::fs::readlinkat(&cur, &c, Vec::new())?.into_bytes(),
                ));
                if target.is_absolute() {
                    cur = root()?;
                    at = PathBuf::from("/");
                }
                for t in parts(&target).into_iter().rev() {
                    todo.push_front(t);
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Place::Itself(cur))
}

/// Whether a link (`st`) in the directory `dir` is one only root or
/// coffer's user could have made or can replace; else who else could.
fn trusted(dir: &OwnedFd, st: &rustix::fs::Stat) -> Result<(), String> {
    let me = rustix::process::geteuid().as_raw();
    let ours = |uid: u32| uid == 0 || uid == me;
    if !ours(st.st_uid) {
        return Err(format!("uid {} (its owner)", st.st_uid));
    }
    let d = rustix::fs::fstat(dir).map_err(|e| format!("whoever ({e})"))?;
    if !ours(d.st_uid) {
        return Err(format!(
            "uid {} (who owns the directory it is in)",
            d.st_uid
        ));
    }
    // A sticky directory lets others add names but not replace this one.
    if d.st_mode & 0o022 != 0 && d.st_mode & 0o1000 == 0 {
        return Err("any user who may write its directory".into());
    }
    Ok(())
}
