//! The crate's error type. Each error knows its exit code (DESIGN.md's contract)
//! and a one-line hint telling the operator what to do next.

use std::io;
use std::path::{Path, PathBuf};

use crate::config::{ConfigError, LoadError};
use crate::envelope::{EnvelopeError, KeyError};
use crate::fsutil::FsError;
use crate::legacy::LegacyError;
use crate::source::SourceError;
use crate::store::StoreError;

pub use crate::exit::{Class, ExitCode};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}", .path.display())]
    Envelope {
        path: PathBuf,
        #[source]
        source: EnvelopeError,
    },

    #[error("{}", .path.display())]
    Key {
        path: PathBuf,
        #[source]
        source: KeyError,
    },

    /// The restore target already had something where a member goes; the
    /// backup is not at fault.
    #[error("{}: {problem}", .path.display())]
    TargetExists {
        path: PathBuf,
        problem: &'static str,
    },

    /// A restore target (or a directory in it) that another user owns or
    /// may write: what is written there could be read or swapped by them.
    #[error("{}: {problem}", .path.display())]
    TargetUnsafe { path: PathBuf, problem: String },

    /// Writing to the restore target failed; the backup is not at fault.
    #[error("{}: cannot {op} (restore target)", .path.display())]
    Target {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },

    #[error("refusing to write binary data to a terminal")]
    BinaryToTerminal,

    #[error("{0}")]
    Usage(String),

    /// A file the configuration or command line names, or one coffer
    /// writes.
    #[error(transparent)]
    Fs(#[from] FsError),

    #[error(transparent)]
    Config(#[from] ConfigError),

    /// A store's failure, which knows its exit code: a host key or refused
    /// credentials (4), a missing bucket (2), a network failure (1).
    #[error(transparent)]
    Storage(#[from] StoreError),

    #[error("{kind} source {name:?}")]
    Source {
        kind: &'static str,
        name: String,
        #[source]
        source: SourceError,
    },

    #[error("another coffer run of job {job:?} holds the lock {}", .path.display())]
    Locked { job: String, path: PathBuf },

    #[error("{} problem(s) found: {}", .0.len(), .0.join("; "))]
    Check(Vec<String>),

    #[error("{store}: {message}")]
    Store { store: String, message: String },

    /// The backup is stored, but paths a files source could not read (a
    /// permission, a tree deeper than the open-file limit) are not in it.
    #[error(
        "backup {name} is stored in [{}], but {} path(s) could not be read and are not in it: {}",
        stores.join(", "),
        paths.len(),
        paths.iter().take(5).cloned().collect::<Vec<_>>().join("; ")
    )]
    Unread {
        name: String,
        stores: Vec<String>,
        paths: Vec<String>,
    },

    #[error("{}", stores_failed(name, complete, failures))]
    StoresFailed {
        name: String,
        complete: Vec<String>,
        failures: Vec<String>,
        /// A failure was a host key or key problem (exit 4, not 1).
        key_problem: bool,
        /// A failure was the configuration's (a store's missing known_hosts,
        /// a key others can read, a directory that cannot be made): exit 2
        /// unless a key problem says 4.
        usage_problem: bool,
    },

    /// Damaged, tampered, truncated, or not matching its manifest.
    #[error("{what}: {message}")]
    Integrity { what: String, message: String },

    #[error("{}", .path.display())]
    Legacy {
        path: PathBuf,
        #[source]
        source: LegacyError,
    },

    /// A signing key or signing public key that cannot be used.
    #[error("{}: {message}", .path.display())]
    Signing { path: PathBuf, message: String },

    #[error("{failed} of {total} backups failed verification")]
    VerifyFailed { failed: usize, total: usize },

    /// Stores lack backups that another store holds: nothing is damaged,
    /// but a copy is missing (exit 1).
    #[error("{stores} store(s) lack backups that another store holds (see the MISSING lines); every copy present is good")]
    VerifyMissing { stores: usize },

    /// SIGINT or SIGTERM stopped the command; what it had started (a load,
    /// scratch servers) was stopped and undone first.
    #[error("cancelled by a signal")]
    Cancelled,
}

impl Error {
    pub fn io(path: impl AsRef<Path>, op: &'static str, source: io::Error) -> Self {
        // A streaming reader wraps envelope failures in io::Error so that it can
        // implement `Read`; unwrap them here so they keep their exit code.
        match EnvelopeError::from_io(source) {
            Ok(env) => Error::Envelope {
                path: path.as_ref().to_path_buf(),
                source: env,
            },
            Err(source) => Error::Fs(FsError::io(path, op, source)),
        }
    }

    /// `what` (e.g. "recipients file") at `path` cannot be used: see
    /// [`FsError::named`].
    pub fn named(path: impl AsRef<Path>, what: &str, source: io::Error) -> Self {
        Error::Fs(FsError::named(path, what, source))
    }

    pub fn envelope(path: impl AsRef<Path>, source: EnvelopeError) -> Self {
        Error::Envelope {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    pub fn key(path: impl AsRef<Path>, source: KeyError) -> Self {
        Error::Key {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    pub fn exit_code(&self) -> ExitCode {
        let class = match self {
            Error::Envelope { source, .. } => source.class(),
            Error::Key { source, .. } => source.class(),
            Error::Fs(e) => e.class(),
            Error::Storage(e) => e.class(),
            Error::Target { .. }
            | Error::Source { .. }
            | Error::Locked { .. }
            | Error::Store { .. }
            | Error::VerifyMissing { .. }
            | Error::Cancelled
            | Error::Unread { .. }
            | Error::StoresFailed {
                key_problem: false,
                usage_problem: false,
                ..
            } => Class::Io,
            Error::Integrity { .. } | Error::VerifyFailed { .. } => Class::Integrity,
            Error::Legacy { source, .. } => match source {
                LegacyError::WrongKey | LegacyError::NoKdfMatched => Class::Key,
                LegacyError::Io(_) => Class::Io,
                _ => Class::Integrity,
            },
            Error::Signing { .. }
            | Error::StoresFailed {
                key_problem: true, ..
            } => Class::Key,
            Error::StoresFailed {
                key_problem: false,
                usage_problem: true,
                ..
            }
            | Error::Config(_)
            | Error::Check(_)
            | Error::TargetExists { .. }
            | Error::TargetUnsafe { .. }
            | Error::BinaryToTerminal
            | Error::Usage(_) => Class::Usage,
        };
        class.exit_code()
    }

    /// What the operator should do about it, in one line.
    pub fn hint(&self) -> Option<String> {
        match self {
            Error::Envelope { source, .. } => source.hint().map(str::to_owned),
            Error::Key { source, .. } => source.hint(),
            Error::Fs(e) => e.hint(),
            Error::Storage(e) => e.hint(),
            Error::TargetExists { .. } => Some(
                "the backup is fine: restore into a new or empty directory, or use --force to replace existing files".into(),
            ),
            Error::TargetUnsafe { .. } => Some(
                "the backup is fine: restore into a new directory (coffer makes it, private), or make this one yours first (chown, chmod go-w)".into(),
            ),
            Error::Target { source, .. } => Some(target_hint(source)),
            Error::BinaryToTerminal => {
                Some("redirect the output to a file or pipe, or use -o FILE".into())
            }
            Error::Config(c) => c.hint.clone(),
            Error::Source { source, .. } => source_hint(source),
            Error::Locked { .. } => Some(
                "wait for it to finish; if no coffer is running, the lock is stale only if its process is gone".into(),
            ),
            Error::Check(_) => Some("fix these, then run `coffer config check` again".into()),
            Error::Legacy { .. } => Some(
                "the legacy format is unauthenticated: check the restored data before trusting it".into(),
            ),
            Error::Integrity { .. } | Error::VerifyFailed { .. } => Some(
                "do not trust this copy: restore from another backup or another store".into(),
            ),
            Error::StoresFailed { complete, .. } if complete.is_empty() => Some(
                "no copy of this backup was made and nothing was deleted; fix the store (space, permissions, network) and run again".into(),
            ),
            Error::StoresFailed { .. } => Some(
                "the complete copies are kept and nothing was deleted where the upload failed; the next run refills that store (signed jobs) once it is fixed".into(),
            ),
            Error::Signing { .. } => Some(
                "make a signing key pair with `coffer keygen --type signing --out PATH` (or `minisign -G -W`)".into(),
            ),
            Error::Unread { .. } => Some(
                "everything else is backed up and retention ran as usual, so older backups that hold these paths age out: \
                 let coffer's user read the path (e.g. setfacl -m u:coffer:rX PATH), configure the directory a refused link \
                 points to, or take the path out of the source".into(),
            ),
            Error::Cancelled => Some(
                "stopped on request: what it had started was stopped and removed; run it again".into(),
            ),
            Error::VerifyMissing { .. } => Some(
                "nothing present is damaged; each MISSING line names the store with the good copy and how this store gets it back".into(),
            ),
            Error::Usage(_) | Error::Store { .. } => None,
        }
    }
}

impl From<LoadError> for Error {
    fn from(e: LoadError) -> Self {
        match e {
            LoadError::File(e) => Error::Fs(e),
            LoadError::Config(e) => Error::Config(e),
        }
    }
}

/// The exit code and hint of an error that reached the command line, by
/// whichever type it kept: the crate's, or a leaf's that came through
/// unconverted.
pub fn verdict(e: &(dyn std::error::Error + 'static)) -> Option<(ExitCode, Option<String>)> {
    if let Some(e) = e.downcast_ref::<Error>() {
        return Some((e.exit_code(), e.hint()));
    }
    if let Some(e) = e.downcast_ref::<FsError>() {
        return Some((e.class().exit_code(), e.hint()));
    }
    if let Some(e) = e.downcast_ref::<StoreError>() {
        return Some((e.class().exit_code(), e.hint()));
    }
    if let Some(e) = e.downcast_ref::<ConfigError>() {
        return Some((ExitCode::Usage, e.hint.clone()));
    }
    e.downcast_ref::<LoadError>().map(|e| match e {
        LoadError::File(e) => (e.class().exit_code(), e.hint()),
        LoadError::Config(e) => (ExitCode::Usage, e.hint.clone()),
    })
}

/// Why a write to the restore target may have failed; never "do not trust
/// this copy", which is for the backup itself.
fn target_hint(e: &io::Error) -> String {
    let cause = match e.raw_os_error() {
        Some(libc::ENOSPC | libc::EDQUOT) => {
            "the target is full: free space there (df -h) or restore elsewhere"
        }
        Some(libc::EACCES | libc::EPERM | libc::EROFS) => {
            "check the target's permissions (and that it is not mounted read-only)"
        }
        _ => "check free space and permissions on the target",
    };
    format!("the backup is not at fault; {cause}, then restore again")
}

fn source_hint(e: &SourceError) -> Option<String> {
    use SourceError as S;
    Some(match e {
        S::NotFound { .. } => "install the database client tools (e.g. mariadb-client, postgresql-client)".into(),
        S::Failed { .. } | S::Incomplete { .. } => {
            "the dump failed, so this run made no backup and deleted nothing; fix the cause and run again".into()
        }
        // A stall seen by the reader, carried in its I/O error.
        S::Io { source, .. } | S::Sink(source) => {
            return source
                .get_ref()
                .and_then(|e| e.downcast_ref::<S>())
                .and_then(source_hint)
        }
        S::Stalled { .. } => {
            "this run made no backup and deleted nothing; look for what blocked the dump (a lock held by another session: pg_stat_activity, SHOW PROCESSLIST), or raise dump_stall_secs".into()
        }
        _ => return None,
    })
}

fn stores_failed(name: &str, complete: &[String], failures: &[String]) -> String {
    if complete.is_empty() {
        format!(
            "backup {name} failed in every store: {}",
            failures.join("; ")
        )
    } else {
        format!(
            "backup {name} is complete in [{}] but failed in {}",
            complete.join(", "),
            failures.join("; ")
        )
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
