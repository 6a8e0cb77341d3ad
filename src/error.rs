//! The crate's error type. Each error knows its exit code (DESIGN.md's contract)
//! and a one-line hint telling the operator what to do next.

use std::io;
use std::path::{Path, PathBuf};

use crate::envelope::{EnvelopeError, KeyError};

/// Process exit codes, fixed by the user-facing contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitCode {
    Success = 0,
    /// The job failed; nothing good was deleted.
    Failed = 1,
    /// Usage or configuration error.
    Usage = 2,
    /// Tampered, truncated, hash mismatch.
    Integrity = 3,
    /// Wrong or missing key.
    Key = 4,
}

/// Classifies an envelope or key error for the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Integrity,
    Key,
    Usage,
    Io,
}

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

    /// The restore target already had something where a member goes; the
    /// backup is not at fault.
    #[error("{}: {problem}", .path.display())]
    TargetExists {
        path: PathBuf,
        problem: &'static str,
    },

    /// Writing to the restore target failed; the backup is not at fault.
    #[error("{}: cannot {op} (restore target)", .path.display())]
    Target {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },

    /// A file or directory that the configuration or command line names is
    /// missing, unreadable, or of the wrong kind.
    #[error("{}: {problem}", .path.display())]
    Named {
        path: PathBuf,
        problem: String,
        fix: String,
    },

    #[error("refusing to write binary data to a terminal")]
    BinaryToTerminal,

    #[error("{0}")]
    Usage(String),

    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),

    #[error("{kind} source {name:?}")]
    Source {
        kind: &'static str,
        name: String,
        #[source]
        source: crate::source::SourceError,
    },

    #[error("another coffer run of job {job:?} holds the lock {}", .path.display())]
    Locked { job: String, path: PathBuf },

    #[error("{} problem(s) found: {}", .0.len(), .0.join("; "))]
    Check(Vec<String>),

    #[error("{store}: {message}")]
    Store { store: String, message: String },

    /// An S3 store's failure, which knows its exit code: refused
    /// credentials (4), a missing bucket (2), a network failure (1).
    #[error("{store}: {error}")]
    S3 {
        store: String,
        error: Box<crate::store::S3Error>,
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
        /// What the run did do where the backup completed (its size, what
        /// retention deleted, its warnings), for the hook, the log and the
        /// metrics: a partial failure must not read as nothing done.
        done: Option<Box<crate::pipeline::backup::Summary>>,
    },

    /// Damaged, tampered, truncated, or not matching its manifest.
    #[error("{what}: {message}")]
    Integrity { what: String, message: String },

    #[error("{}", .path.display())]
    Legacy {
        path: PathBuf,
        #[source]
        source: crate::legacy::LegacyError,
    },

    /// A signing key or signing public key that cannot be used.
    #[error("{}: {message}", .path.display())]
    Signing { path: PathBuf, message: String },

    #[error("{failed} of {total} backups failed verification")]
    VerifyFailed { failed: usize, total: usize },

    #[error("{store}: {message}")]
    HostKey {
        store: String,
        message: String,
        /// The known_hosts line that would trust the offered key (unknown host only).
        line: Option<String>,
    },

    /// A host key refused for a reason other than being unknown or changed
    /// (revoked, or trusted only through a certificate authority).
    #[error("{store}: {message}")]
    HostKeyRefused {
        store: String,
        message: String,
        fix: String,
    },

    /// SIGINT or SIGTERM stopped the command; what it had started (a load,
    /// scratch servers) was stopped and undone first.
    #[error("cancelled by a signal")]
    Cancelled,

    /// The server refused our key (SSH user authentication): a key
    /// problem (exit 4), as refused S3 credentials are.
    #[error("{store}: {message}")]
    AuthRefused { store: String, message: String },
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
            Err(source) => Error::Io {
                path: path.as_ref().to_path_buf(),
                op,
                source,
            },
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
                    rustix::process::geteuid().as_raw()
                ),
            ),
            _ => return Error::io(path, "read", source),
        };
        Error::Named { path, problem, fix }
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
            Error::Io { .. }
            | Error::Target { .. }
            | Error::Source { .. }
            | Error::Locked { .. }
            | Error::Store { .. }
            | Error::Cancelled
            | Error::StoresFailed {
                key_problem: false,
                usage_problem: false,
                ..
            } => Class::Io,
            Error::Integrity { .. } | Error::VerifyFailed { .. } => Class::Integrity,
            Error::S3 { error, .. } => match error.exit_code() {
                ExitCode::Key => Class::Key,
                ExitCode::Usage => Class::Usage,
                _ => Class::Io,
            },
            Error::Legacy { source, .. } => match source {
                crate::legacy::LegacyError::WrongKey | crate::legacy::LegacyError::NoKdfMatched => {
                    Class::Key
                }
                crate::legacy::LegacyError::Io(_) => Class::Io,
                _ => Class::Integrity,
            },
            Error::HostKey { .. }
            | Error::HostKeyRefused { .. }
            | Error::AuthRefused { .. }
            | Error::Signing { .. }
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
            | Error::Exists { .. }
            | Error::TargetExists { .. }
            | Error::Named { .. }
            | Error::Permissions { .. }
            | Error::BinaryToTerminal
            | Error::Usage(_) => Class::Usage,
        };
        match class {
            Class::Integrity => ExitCode::Integrity,
            Class::Key => ExitCode::Key,
            Class::Usage => ExitCode::Usage,
            Class::Io => ExitCode::Failed,
        }
    }

    /// What the operator should do about it, in one line.
    pub fn hint(&self) -> Option<String> {
        match self {
            Error::Envelope { source, .. } => source.hint().map(str::to_owned),
            Error::Key { source, .. } => source.hint(),
            Error::Exists { .. } => {
                Some("choose another name, or move the existing file away first".into())
            }
            Error::TargetExists { .. } => Some(
                "the backup is fine: restore into a new or empty directory, or use --force to replace existing files".into(),
            ),
            Error::Target { source, .. } => Some(target_hint(source)),
            Error::Permissions { fix, .. }
            | Error::Named { fix, .. }
            | Error::HostKeyRefused { fix, .. } => Some(fix.clone()),
            Error::BinaryToTerminal => {
                Some("redirect the output to a file or pipe, or use -o FILE".into())
            }
            Error::Config(c) => c.hint.clone(),
            Error::Source { source, .. } => source_hint(source),
            Error::Locked { .. } => Some(
                "wait for it to finish; if no coffer is running, the lock is stale only if its process is gone".into(),
            ),
            Error::Check(_) => Some("fix these, then run `coffer config check` again".into()),
            Error::HostKey { line: Some(line), .. } => Some(format!(
                "check the fingerprint out of band (e.g. on the server: ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub), then add to known_hosts: {line}"
            )),
            Error::S3 { error, .. } => error.hint(),
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
            Error::AuthRefused { .. } => Some(
                "check that the server's authorized_keys for this account holds the public half of `identity` (and that identity names the right key)".into(),
            ),
            Error::HostKey { line: None, .. } => Some(
                "if the server's key really changed, verify the new fingerprint out of band and replace its known_hosts line".into(),
            ),
            Error::Signing { .. } => Some(
                "make a signing key pair with `coffer keygen --type signing --out PATH` (or `minisign -G -W`)".into(),
            ),
            Error::Cancelled => Some(
                "stopped on request: what it had started was stopped and removed; run it again".into(),
            ),
            Error::Io { .. } | Error::Usage(_) | Error::Store { .. } => None,
        }
    }
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

fn source_hint(e: &crate::source::SourceError) -> Option<String> {
    use crate::source::SourceError as S;
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

/// An error's message without the store's name in front, for a line that
/// names the store once itself.
pub fn about(e: &dyn std::error::Error, store: &str) -> String {
    let text = crate::cli_chain(e);
    let prefix = format!("{store}: ");
    let mut rest = text.as_str();
    while let Some(r) = rest.strip_prefix(&prefix) {
        rest = r;
    }
    rest.to_owned()
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
