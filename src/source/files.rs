//! Files and directories, with modes, owners and mtimes. Symbolic links are
//! stored as links and never followed, so nothing outside the named trees is
//! read. Sockets, FIFOs and devices are skipped with a warning.

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

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

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().map_or_else(|_| p.to_path_buf(), |d| d.join(p))
    }
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

impl FilesSource {
    fn member(&self, p: &Path) -> String {
        let abs = absolute(p);
        let rel = abs.strip_prefix("/").unwrap_or(&abs);
        format!("files/{}/{}", self.name, rel.display())
    }

    fn walk(&self, p: &Path, sink: &mut dyn Sink, report: &mut Report) -> Result<(), SourceError> {
        let io_err = |source| SourceError::Io {
            path: p.to_path_buf(),
            source,
        };
        let meta = fs::symlink_metadata(p).map_err(io_err)?;
        let ft = meta.file_type();
        let mut entry = Entry {
            path: self.member(p),
            kind: EntryKind::File,
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
            mtime: meta.mtime(),
            size: 0,
        };
        if ft.is_symlink() {
            entry.kind = EntryKind::Symlink(fs::read_link(p).map_err(io_err)?);
            sink.entry(&entry, &mut io::empty())
                .map_err(SourceError::Sink)?;
        } else if ft.is_dir() {
            entry.kind = EntryKind::Dir;
            sink.entry(&entry, &mut io::empty())
                .map_err(SourceError::Sink)?;
            let mut children: Vec<_> = fs::read_dir(p)
                .map_err(io_err)?
                .map(|e| e.map(|e| e.path()))
                .collect::<Result<_, _>>()
                .map_err(io_err)?;
            children.sort();
            for c in children {
                self.walk(&c, sink, report)?;
            }
        } else if ft.is_file() {
            // O_NOFOLLOW: the path was a regular file a moment ago; never let a
            // swap for a symlink make us read something else.
            let f = File::options()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(p)
                .map_err(io_err)?;
            let size = f.metadata().map_err(io_err)?.len();
            entry.size = size;
            let mut exact = Exact {
                inner: crate::cancel::CancelReader(f),
                left: size,
                short: false,
            };
            sink.entry(&entry, &mut exact).map_err(SourceError::Sink)?;
            if exact.short {
                report
                    .warnings
                    .push(format!("{}: file shrank while being read", p.display()));
            }
        } else {
            report.warnings.push(format!(
                "{}: skipped (not a file, directory or link)",
                p.display()
            ));
        }
        Ok(())
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
        for pat in &self.paths {
            let matches = expand(pat)?;
            if matches.is_empty() {
                return Err(SourceError::Invalid(format!("{pat}: matches nothing")));
            }
            for p in matches {
                self.walk(&p, sink, &mut report)?;
            }
        }
        Ok(report)
    }
}
