//! Where backup data comes from. Each source writes its members into a
//! [`Sink`] as streams; a dump counts only if its process exited 0.
//!
//! A leaf: sources know nothing of archives, envelopes or stores.

mod command;
mod files;
mod mysql;
mod postgres;
mod process;
mod rowcount;
mod safepath;
mod sqlite;

use std::io::{self, Read};
use std::path::PathBuf;

use serde::Serialize;

pub use command::CommandSource;
pub use files::FilesSource;
pub use mysql::MysqlSource;
pub use postgres::{parse_counts, PostgresSource, COUNT_QUERY, PSQL_QUIET};
pub use process::set_stall_limit;
pub use process::{find_program, ChildStream};
pub use sqlite::{check_copy as check_sqlite_copy, SqliteSource};

/// One file-system entry for the archive, with what `tar` keeps of it.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The member name, exactly: a file's name need not be UTF-8.
    pub path: Vec<u8>,
    pub kind: EntryKind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    Symlink(PathBuf),
}

/// What a source writes into. The pipeline implements it over the archive.
pub trait Sink {
    /// A stream of unknown length (a dump's stdout).
    fn stream(&mut self, path: &str, data: &mut dyn Read) -> io::Result<()>;
    /// An entry of known size (a file, a page image); `data` yields exactly `size` bytes.
    fn entry(&mut self, entry: &Entry, data: &mut dyn Read) -> io::Result<()>;
}

/// What a source reports for the inner manifest.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// The commands run, as argv (never containing secrets).
    pub commands: Vec<Vec<String>>,
    /// `--version` output of the tools used.
    pub tool_versions: Vec<String>,
    /// Rows per table, where cheap to know exactly.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub row_counts: std::collections::BTreeMap<String, u64>,
    /// Notes (e.g. skipped special files).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Paths that could not be read and are not in the backup (each is
    /// among the warnings too): the run ends in a failure naming them.
    #[serde(skip)]
    pub unread: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{program} not found in PATH")]
    NotFound { program: String },
    #[error("cannot start {program}")]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },
    #[error("{program} {status}{}", fmt_stderr(.stderr))]
    Failed {
        program: String,
        status: String,
        stderr: String,
    },
    #[error("{program} output is incomplete: {reason}")]
    Incomplete { program: String, reason: String },
    #[error("{program} wrote nothing for {secs} s and was stopped (blocked behind a lock, or a server that stopped answering?)")]
    Stalled { program: String, secs: u64 },
    #[error("{}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Sqlite(String),
    #[error("{0}")]
    Invalid(String),
    /// The sink (archive, encryption, store) failed while the source wrote.
    #[error(transparent)]
    Sink(io::Error),
}

fn fmt_stderr(s: &str) -> String {
    let s = s.trim();
    if s.is_empty() {
        String::new()
    } else {
        // One line: the last line of stderr is usually the reason.
        let last = s.lines().last().unwrap_or(s);
        format!(": {last}")
    }
}

/// A source of backup data.
pub trait Source {
    fn kind(&self) -> &'static str;
    fn name(&self) -> &str;
    /// Checks that the tools and files exist, without running anything heavy.
    fn check(&self) -> Vec<String>;
    fn run(&self, sink: &mut dyn Sink) -> Result<Report, SourceError>;
}

/// Names of databases and members become archive paths: keep them plain.
pub(crate) fn check_component(what: &str, s: &str) -> Result<(), SourceError> {
    if s.is_empty() || s == "." || s == ".." || s.contains('/') || s.contains('\0') {
        return Err(SourceError::Invalid(format!(
            "{what} {s:?} is not a valid name"
        )));
    }
    Ok(())
}
