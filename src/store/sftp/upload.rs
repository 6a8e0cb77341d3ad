//! An upload to `{file}.partial`, fsynced and renamed into place.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::store::{Result, StoreError as Error, Upload};

use super::Conn;
use crate::store::Notes;

/// SFTP's status for a request the server does not implement.
const SFTP_OP_UNSUPPORTED: i32 = 8;

/// Says what a failed SFTP write usually means. OpenSSH's sftp-server speaks
/// protocol version 3, which has no "disk full" status: ENOSPC and EDQUOT
/// arrive as the bare FAILURE status, which libssh2 words as just "failure".
pub(super) fn write_error(e: &io::Error, partial: &Path) -> io::Error {
    let said = e.to_string();
    let meaning = match said.as_str() {
        "failure" => "the server refused the write (SFTP status FAILURE), most often a full disk or quota on the server".to_owned(),
        "no space on filesystem" | "quota exceeded" => format!("the server refused the write: {said}"),
        _ => said,
    };
    io::Error::new(e.kind(), format!("{}: {meaning}", partial.display()))
}

pub(super) struct SftpUpload {
    pub(super) store: String,
    pub(super) file: Option<ssh2::File>,
    pub(super) partial: PathBuf,
    pub(super) target: PathBuf,
    pub(super) conn: Option<Conn>,
    pub(super) written: u64,
    /// How long writes may go on returning nothing before the upload is
    /// given up.
    pub(super) patience: Duration,
    /// Renamed into place: nothing left to remove.
    pub(super) done: bool,
    /// Where a weaker guarantee is said, once per store.
    pub(super) notes: Notes,
}

impl Write for SftpUpload {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let f = self
            .file
            .as_mut()
            .ok_or_else(|| io::Error::other("upload already finished"))?;
        // libssh2 pipelines writes: when the server's window is small
        // (dropbear's 24 KiB) a call can send a piece and return 0, to be
        // called again with the same bytes. Only a write that makes no
        // progress for the store's patience is an error.
        let started = Instant::now();
        loop {
            let n = f.write(buf).map_err(|e| write_error(&e, &self.partial))?;
            if n > 0 || buf.is_empty() {
                self.written += n as u64;
                return Ok(n);
            }
            if started.elapsed() > self.patience {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    format!(
                        "{}: the server took no data for {} s",
                        self.partial.display(),
                        self.patience.as_secs()
                    ),
                ));
            }
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self.file.as_mut() {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }
}

impl Upload for SftpUpload {
    fn commit(mut self: Box<Self>) -> Result<()> {
        let err = |m: String| Error::Failed {
            store: self.store.clone(),
            message: m,
        };
        let mut f = self
            .file
            .take()
            .ok_or_else(|| err("upload already finished".into()))?;
        f.flush()
            .map_err(|e| err(format!("{}: write: {e}", self.partial.display())))?;
        // fsync@openssh.com: the data is on the server's disk before the
        // name appears. A server without it (rclone serve sftp) still gets
        // the backup, its size checked below; the run says once that a
        // crash of that server could lose it.
        match f.fsync() {
            Ok(()) => {}
            Err(e) if matches!(e.code(), ssh2::ErrorCode::SFTP(SFTP_OP_UNSUPPORTED)) => {
                self.notes.say(
                    "the server does not offer fsync (fsync@openssh.com): a backup is stored \
                     once its size is checked, but may not be on the server's disk yet if the \
                     server crashes right after the run",
                );
            }
            Err(e) => return Err(err(format!("{}: fsync: {e}", self.partial.display()))),
        }
        drop(f);
        let conn = self
            .conn
            .as_ref()
            .ok_or_else(|| err("not connected".into()))?;
        // SFTP's rename refuses an existing target on OpenSSH, but some
        // servers (rclone) replace it: the target is looked for first. The
        // run's lock keeps this job's own runs from racing the check.
        // A server that answers a missing name with another status than
        // "no such file" leaves the decision to the rename.
        if conn.sftp.lstat(&self.target).is_ok() {
            return Err(err(format!(
                "{} already exists; a backup is never written over",
                self.target.display()
            )));
        }
        let st = conn
            .sftp
            .stat(&self.partial)
            .map_err(|e| err(format!("{}: stat: {e}", self.partial.display())))?;
        if st.size != Some(self.written) {
            return Err(err(format!(
                "{}: the server holds {:?} bytes, {} were sent",
                self.partial.display(),
                st.size,
                self.written
            )));
        }
        conn.sftp
            .rename(&self.partial, &self.target, None)
            .map_err(|e| {
                err(format!(
                    "rename {} to {}: {e}",
                    self.partial.display(),
                    self.target.display()
                ))
            })?;
        self.done = true;
        Ok(())
    }
}

impl Drop for SftpUpload {
    /// An upload that did not reach its name (a failed write, flush, fsync,
    /// size check or rename) removes its partial file where the connection
    /// still allows; the next run removes what it could not.
    fn drop(&mut self) {
        drop(self.file.take());
        if !self.done {
            if let Some(c) = &self.conn {
                let _ = c.sftp.unlink(&self.partial);
            }
        }
    }
}
