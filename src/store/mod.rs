//! Where sealed backups are kept. One small trait; `local`, `sftp` and `s3` stores.
//!
//! A leaf: stores move opaque bytes and know nothing of their content.

mod known_hosts;
mod local;
mod s3;
mod sftp;

use std::io::{Read, Write};

pub use local::LocalStore;
pub use s3::{check_endpoint, S3Config, S3Error, S3Store, MIN_PART_SIZE};
pub use sftp::{keyscan, Auth, HostKey, SftpConfig, SftpStore};

use std::path::PathBuf;

use crate::exit::{Class, ExitCode};
use crate::fsutil::FsError;

/// What a store can fail with; each knows whose fault it is.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A local store's directory, or a key or known_hosts file a store
    /// reads.
    #[error(transparent)]
    Fs(#[from] FsError),

    #[error("{0}")]
    Usage(String),

    #[error("{store}: {message}")]
    Failed { store: String, message: String },

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

    /// The server refused our key (SSH user authentication): a key
    /// problem (exit 4), as refused S3 credentials are.
    #[error("{store}: {message}")]
    AuthRefused { store: String, message: String },

    /// An S3 store's failure, which knows its exit code: refused
    /// credentials (4), a missing bucket (2), a network failure (1).
    #[error("{store}: {error}")]
    S3 { store: String, error: Box<S3Error> },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

impl StoreError {
    pub fn io(path: impl Into<PathBuf>, op: &'static str, source: std::io::Error) -> Self {
        StoreError::Fs(FsError::Io {
            path: path.into(),
            op,
            source,
        })
    }

    pub fn class(&self) -> Class {
        match self {
            StoreError::Fs(e) => e.class(),
            StoreError::Usage(_) => Class::Usage,
            StoreError::Failed { .. } => Class::Io,
            StoreError::HostKey { .. }
            | StoreError::HostKeyRefused { .. }
            | StoreError::AuthRefused { .. } => Class::Key,
            StoreError::S3 { error, .. } => match error.exit_code() {
                ExitCode::Key => Class::Key,
                ExitCode::Usage => Class::Usage,
                _ => Class::Io,
            },
        }
    }

    pub fn exit_code(&self) -> ExitCode {
        self.class().exit_code()
    }

    /// What the operator should do about it, in one line.
    pub fn hint(&self) -> Option<String> {
        match self {
            StoreError::Fs(e) => e.hint(),
            StoreError::HostKeyRefused { fix, .. } => Some(fix.clone()),
            StoreError::HostKey { line: Some(line), .. } => Some(format!(
                "check the fingerprint out of band (e.g. on the server: ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub), then add to known_hosts: {line}"
            )),
            StoreError::HostKey { line: None, .. } => Some(
                "if the server's key really changed, verify the new fingerprint out of band and replace its known_hosts line".into(),
            ),
            StoreError::S3 { error, .. } => error.hint(),
            StoreError::AuthRefused { .. } => Some(
                "check that the server's authorized_keys for this account holds the public half of `identity` (and that identity names the right key)".into(),
            ),
            StoreError::Usage(_) | StoreError::Failed { .. } => None,
        }
    }
}

/// A file in a store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    pub name: String,
    pub size: u64,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
}

/// What a store could not promise or do in a run (a server without fsync,
/// one that cannot list unfinished uploads), each said once.
#[derive(Clone, Default)]
pub(crate) struct Notes(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl Notes {
    pub(crate) fn say(&self, note: &str) {
        if let Ok(mut v) = self.0.lock() {
            if !v.iter().any(|n| n == note) {
                v.push(note.to_owned());
            }
        }
    }
    pub(crate) fn all(&self) -> Vec<String> {
        self.0.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

/// An upload in progress under a temporary name. `commit` makes it durable and
/// visible under its final name (never replacing an existing file); dropping
/// it without commit removes the temporary file.
pub trait Upload: Write + Send {
    fn commit(self: Box<Self>) -> Result<()>;
}

pub trait Store: Send + Sync {
    /// A name for messages: `local:/var/backups/coffer`.
    fn name(&self) -> &str;
    fn put(&self, file: &str) -> Result<Box<dyn Upload>>;
    fn get(&self, file: &str) -> Result<Box<dyn Read + Send>>;
    fn list(&self) -> Result<Vec<Object>>;
    fn stat(&self, file: &str) -> Result<Option<Object>>;
    fn delete(&self, file: &str) -> Result<()>;
    /// How long an upload may take no data before the run leaves this store
    /// behind so that the others still get the backup: a server or mount
    /// that stopped answering without closing anything.
    /// The default, for a local directory: its commit flushes the whole
    /// file to disk, minutes of work on a slow disk, with no byte to show.
    fn stall_after(&self) -> std::time::Duration {
        std::time::Duration::from_secs(600)
    }
    /// What this store could not promise in this run, once each (a server
    /// without fsync): the run's warnings.
    fn notes(&self) -> Vec<String> {
        Vec::new()
    }
}

/// The most files a store may list. A job's directory holds a few files per
/// backup kept; a listing past this is a broken or hostile server (one that
/// pages without end, or streams names forever), refused before it takes
/// the restore machine's memory.
pub const MAX_LISTED: usize = 200_000;

/// The error for a listing past [`MAX_LISTED`].
pub(crate) fn too_many_listed() -> String {
    format!("the server lists more than {MAX_LISTED} files; refusing the listing (a broken or hostile server)")
}

/// Store file names are single path components coffer chose itself.
pub(crate) fn valid_file_name(file: &str) -> bool {
    !file.is_empty()
        && !file.starts_with('.')
        && file
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}
