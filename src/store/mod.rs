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

use crate::error::Result;

/// A file in a store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    pub name: String,
    pub size: u64,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
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
