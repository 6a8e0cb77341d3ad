//! A directory on a backup server, over SFTP (libssh2), with a dedicated key
//! and a pinned host key.
//!
//! - Host keys are checked strictly against `known_hosts` with OpenSSH's
//!   semantics (see `known_hosts.rs`: a portless entry pins port 22 only,
//!   `@revoked` keys are refused, host certificates are not supported): an
//!   unknown or changed key refuses the connection, and the error shows the
//!   offered key and the line that would trust it.
//! - Only modern algorithms are offered: curve25519/ECDH key exchange,
//!   ed25519/ECDSA/RSA-SHA2 host keys, chacha20-poly1305/AES-GCM/AES-CTR with
//!   ETM MACs. No ssh-dss, CBC, 3DES or arcfour. libssh2 ≥ 1.11.1 implements
//!   strict key exchange, the Terrapin (CVE-2023-48795) countermeasure.
//! - Uploads go to `{file}.partial`, are fsynced (fsync@openssh.com) and then
//!   renamed with the plain SFTP rename, which OpenSSH performs as link+unlink:
//!   atomic and never replacing an existing file (posix-rename@openssh.com
//!   would silently replace one).

mod handshake;
mod upload;

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ssh2::{OpenFlags, OpenType, Session, Sftp};

use crate::store::known_hosts::{self, Verdict};
use crate::store::{valid_file_name, Notes, Object, Store, Upload};
use crate::store::{Result, StoreError as Error};

use handshake::host_pattern;
pub use handshake::{handshake, keyscan, HostKey};
use upload::SftpUpload;

/// How the dedicated key is found.
#[derive(Debug, Clone)]
pub enum Auth {
    KeyFile(PathBuf),
    Agent,
}

#[derive(Debug, Clone)]
pub struct SftpConfig {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub user: String,
    pub auth: Auth,
    pub known_hosts: PathBuf,
    pub path: String,
    pub timeout: Duration,
    /// Connection attempts before giving up (with exponential backoff).
    pub retries: u32,
}

struct Conn {
    _sess: Session,
    sftp: Sftp,
}

pub struct SftpStore {
    notes: Notes,
    cfg: SftpConfig,
    /// The run's one connection for listings, looks and reads, made on
    /// first use (uploads each have their own, to stream in parallel).
    conn: Mutex<Option<Arc<Conn>>>,
    /// Why connecting failed, once every attempt had: the rest of the run
    /// fails fast with the same error instead of waiting out the retries
    /// again at every listing, upload and copy.
    unreachable: Mutex<Option<String>>,
    /// Requests that timed out in this run.
    stalls: std::sync::atomic::AtomicU32,
}

impl SftpStore {
    pub fn new(cfg: SftpConfig) -> Self {
        SftpStore {
            notes: Notes::default(),
            cfg,
            conn: Mutex::new(None),
            unreachable: Mutex::new(None),
            stalls: std::sync::atomic::AtomicU32::new(0),
        }
    }

    fn err(&self, message: impl Into<String>) -> Error {
        Error::Failed {
            store: self.cfg.name.clone(),
            message: message.into(),
        }
    }

    /// The server refused our key: exit 4, as refused S3 credentials are.
    fn refused(&self, message: String) -> Error {
        Error::AuthRefused {
            store: self.cfg.name.clone(),
            message,
        }
    }

    fn remote(&self, file: &str) -> Result<PathBuf> {
        if !valid_file_name(file) {
            return Err(Error::Usage(format!("invalid store file name {file:?}")));
        }
        Ok(Path::new(&self.cfg.path).join(file))
    }

    /// Connects, verifies the host key, authenticates — retrying transient
    /// failures with backoff; a host key or authentication failure is final.
    fn connect_once(&self) -> std::result::Result<Conn, (bool, Error)> {
        let c = &self.cfg;
        let (sess, key) = handshake(&c.host, c.port, c.timeout).map_err(|m| (true, self.err(m)))?;
        self.check_host_key(&key).map_err(|e| (false, e))?;
        match &c.auth {
            Auth::KeyFile(p) => {
                crate::fsutil::check_private(p).map_err(|e| (false, e.into()))?;
                sess.userauth_pubkey_file(&c.user, None, p, None)
                    .map_err(|e| {
                        (
                            false,
                            self.refused(format!(
                                "key authentication as {} with {} failed: {e}",
                                c.user,
                                p.display()
                            )),
                        )
                    })?;
            }
            Auth::Agent => sess.userauth_agent(&c.user).map_err(|e| {
                (
                    false,
                    self.refused(format!(
                        "ssh-agent authentication as {} failed: {e}",
                        c.user
                    )),
                )
            })?,
        }
        if !sess.authenticated() {
            return Err((
                false,
                self.refused(format!("the server did not accept the key for {}", c.user)),
            ));
        }
        let sftp = sess
            .sftp()
            .map_err(|e| (true, self.err(format!("cannot start SFTP: {e}"))))?;
        Ok(Conn { _sess: sess, sftp })
    }

    fn connect(&self) -> Result<Conn> {
        let known = self.unreachable.lock().ok().and_then(|g| g.clone());
        if let Some(message) = known {
            return Err(self.err(message));
        }
        match self.connect_retrying() {
            Ok(c) => Ok(c),
            // Only a server that could not be reached after every retry is
            // remembered: host key, authentication and permission failures
            // come at once (and keep their own exit code) every time.
            Err((true, e)) => {
                if let Ok(mut g) = self.unreachable.lock() {
                    *g = Some(crate::about(&e, &self.cfg.name));
                }
                Err(e)
            }
            Err((false, e)) => Err(e),
        }
    }

    /// Connects with retries and backoff; the error says whether the last
    /// attempt failed for a transient (network) reason.
    fn connect_retrying(&self) -> std::result::Result<Conn, (bool, Error)> {
        let mut delay = Duration::from_millis(500);
        let attempts = self.cfg.retries.max(1);
        for attempt in 1..=attempts {
            match self.connect_once() {
                Ok(c) => return Ok(c),
                Err((true, _)) if attempt < attempts && !crate::cancel::is_cancelled() => {
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
                Err(e) => return Err(e),
            }
        }
        Err((false, self.err("no connection attempts made")))
    }

    /// A request the server let time out: it accepted the connection and
    /// then stopped answering. The first time, the next call tries a new
    /// connection (a wedged session, a new one may be fine); the second,
    /// the rest of the run fails fast on this store instead of waiting out
    /// the timeout once more for every file.
    fn note_stall(&self, e: &ssh2::Error) {
        if !matches!(e.code(), ssh2::ErrorCode::Session(LIBSSH2_ERROR_TIMEOUT)) {
            return;
        }
        if self
            .stalls
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            >= 1
        {
            if let Ok(mut g) = self.unreachable.lock() {
                g.get_or_insert_with(|| {
                    format!(
                        "{}:{} stopped answering (a request had no reply within {} s); \
                         this run leaves it",
                        self.cfg.host,
                        self.cfg.port,
                        self.cfg.timeout.as_secs()
                    )
                });
            }
        }
    }

    fn check_host_key(&self, key: &HostKey) -> Result<()> {
        let c = &self.cfg;
        let file = c.known_hosts.display();
        // Checked here, not only when a backup starts: list, prune and
        // restore connect too, and whoever can edit this file picks the
        // server they talk to.
        crate::fsutil::check_not_writable_by_others(&c.known_hosts)?;
        let text = std::fs::read_to_string(&c.known_hosts).map_err(|e| Error::HostKey {
            store: c.name.clone(),
            message: format!("cannot read known_hosts {file}: {e}"),
            line: None,
        })?;
        let verdict = known_hosts::check(&text, &c.host, c.port, &key.blob).map_err(|e| {
            Error::HostKeyRefused {
                store: c.name.clone(),
                message: format!("known_hosts {file}: {e}"),
                fix: "correct or remove that line (a skipped line could be a revocation)".into(),
            }
        })?;
        let host = host_pattern(&c.host, c.port);
        let offered = format!("{} {}", key.kind, key.fingerprint());
        match verdict {
            Verdict::Trusted => Ok(()),
            Verdict::Revoked { line } => Err(Error::HostKeyRefused {
                store: c.name.clone(),
                message: format!(
                    "host {host} offered {offered}, a key REVOKED by {file}:{line}; refusing it whatever other lines say"
                ),
                fix: "the server must get a new host key; pin that one after checking its fingerprint out of band".into(),
            }),
            Verdict::CertAuthorityOnly { line } => Err(Error::HostKeyRefused {
                store: c.name.clone(),
                message: format!(
                    "host {host} is trusted in {file} only through @cert-authority (line {line}); coffer does not support host certificates; it offered {offered}"
                ),
                fix: format!(
                    "pin the host key itself, after checking it out of band: {}",
                    key.known_hosts_line(&c.host, c.port)
                ),
            }),
            Verdict::Unknown => Err(Error::HostKey {
                store: c.name.clone(),
                message: format!("host {host} is not in {file}; it offered {offered}"),
                line: Some(key.known_hosts_line(&c.host, c.port)),
            }),
            Verdict::Changed { ca_lines } => Err(Error::HostKey {
                store: c.name.clone(),
                message: format!(
                    "HOST KEY CHANGED for {host}: it offered {offered}, which does not match {file}; someone may be intercepting the connection{}",
                    if ca_lines {
                        " (its @cert-authority lines are not used: coffer does not support host certificates)"
                    } else {
                        ""
                    }
                ),
                line: None,
            }),
        }
    }

    /// Runs `f` on the store's connection; a failure names `about`, the
    /// remote path it was about.
    fn with_conn<T>(
        &self,
        about: &Path,
        f: impl Fn(&Sftp) -> std::result::Result<T, ssh2::Error>,
    ) -> Result<T> {
        let mut guard = self
            .conn
            .lock()
            .map_err(|_| self.err("connection lock poisoned"))?;
        if guard.is_none() {
            *guard = Some(Arc::new(self.connect()?));
        }
        let conn = guard.as_ref().ok_or_else(|| self.err("not connected"))?;
        match f(&conn.sftp) {
            Ok(v) => Ok(v),
            Err(e) if is_not_found(&e) && about == Path::new(&self.cfg.path) => {
                let login = conn.sftp.realpath(Path::new(".")).ok();
                Err(self.err(missing_directory(&self.cfg.path, login.as_deref())))
            }
            Err(e) => {
                // A failed call may mean a dead connection: start afresh next time.
                *guard = None;
                self.note_stall(&e);
                Err(self.err(format!("{}: {e}", about.display())))
            }
        }
    }
}

const SFTP_NO_SUCH_FILE: i32 = 2;
/// libssh2's code for a blocking call that reached the session's timeout.
const LIBSSH2_ERROR_TIMEOUT: i32 = -9;

/// The store's directory is not on the server: where a relative `path`
/// led (it starts at the login directory, which a chroot's
/// `internal-sftp -d` moves), and how to write it.
fn missing_directory(path: &str, login: Option<&Path>) -> String {
    match login {
        Some(login) if !path.starts_with('/') => format!(
            "directory {path:?} does not exist on the server: a relative path starts at the \
             login directory, {}, so it is {}; write the directory from the server's (or \
             chroot's) root, e.g. path = \"/{path}\"",
            login.display(),
            login.join(path).display()
        ),
        _ => format!("directory {path:?} does not exist on the server"),
    }
}

fn is_not_found(e: &ssh2::Error) -> bool {
    matches!(e.code(), ssh2::ErrorCode::SFTP(SFTP_NO_SUCH_FILE))
}

impl Store for SftpStore {
    fn name(&self) -> &str {
        &self.cfg.name
    }

    fn put(&self, file: &str) -> Result<Box<dyn Upload>> {
        let target = self.remote(file)?;
        let partial = self.remote(&format!("{file}.partial"))?;
        // Each upload has its own connection, so stores and files stream in parallel.
        let conn = self.connect()?;
        let f = conn
            .sftp
            .open_mode(
                &partial,
                OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::EXCLUSIVE,
                0o600,
                OpenType::File,
            )
            .map_err(|e| {
                let dir = Path::new(&self.cfg.path);
                if is_not_found(&e) && conn.sftp.stat(dir).is_err_and(|e| is_not_found(&e)) {
                    let login = conn.sftp.realpath(Path::new(".")).ok();
                    return self.err(missing_directory(&self.cfg.path, login.as_deref()));
                }
                self.note_stall(&e);
                self.err(format!("create {}: {e}", partial.display()))
            })?;
        Ok(Box::new(SftpUpload {
            store: self.cfg.name.clone(),
            file: Some(f),
            partial,
            target,
            conn: Some(conn),
            written: 0,
            patience: self.stall_after(),
            done: false,
            notes: self.notes.clone(),
        }))
    }

    fn get(&self, file: &str) -> Result<Box<dyn Read + Send>> {
        let p = self.remote(file)?;
        let conn = {
            let mut guard = self
                .conn
                .lock()
                .map_err(|_| self.err("connection lock poisoned"))?;
            if guard.is_none() {
                *guard = Some(Arc::new(self.connect()?));
            }
            Arc::clone(guard.as_ref().ok_or_else(|| self.err("not connected"))?)
        };
        let f = conn.sftp.open(&p).map_err(|e| {
            self.note_stall(&e);
            if !is_not_found(&e) {
                // Perhaps a dead connection: the next call makes a new one.
                if let Ok(mut guard) = self.conn.lock() {
                    *guard = None;
                }
            }
            self.err(format!("open {}: {e}", p.display()))
        })?;
        Ok(Box::new(RemoteRead {
            _conn: conn,
            file: f,
        }))
    }

    fn list(&self) -> Result<Vec<Object>> {
        let dir = PathBuf::from(&self.cfg.path);
        // One entry at a time, at most MAX_LISTED: a server that streams
        // names without end is refused, not buffered.
        let entries = self.with_conn(&dir, |s| {
            let mut d = s.opendir(&dir)?;
            let mut entries = Vec::new();
            let mut read = 0usize;
            loop {
                read += 1;
                match d.readdir() {
                    Ok((p, st)) => {
                        if p.as_os_str() != "." && p.as_os_str() != ".." {
                            entries.push((p, st));
                        }
                    }
                    // LIBSSH2_ERROR_FILE: the end of the directory.
                    Err(e) if matches!(e.code(), ssh2::ErrorCode::Session(-16)) => break,
                    Err(e) => return Err(e),
                }
                if read > super::MAX_LISTED + 2 {
                    return Err(ssh2::Error::new(
                        ssh2::ErrorCode::Session(-31),
                        "the server lists more files than a store holds; refusing the listing (a broken or hostile server)",
                    ));
                }
            }
            Ok(entries)
        })?;
        let mut out: Vec<Object> = entries
            .into_iter()
            .filter(|(_, st)| st.is_file())
            .filter_map(|(p, st)| {
                let name = p.file_name()?.to_str()?.to_owned();
                Some(Object {
                    name,
                    size: st.size.unwrap_or(0),
                    mtime: i64::try_from(st.mtime.unwrap_or(0)).unwrap_or(0),
                })
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn stat(&self, file: &str) -> Result<Option<Object>> {
        let p = self.remote(file)?;
        let r = self.with_conn(&p, |s| match s.lstat(&p) {
            Ok(st) => Ok(Some(st)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(e),
        })?;
        Ok(r.map(|st| Object {
            name: file.to_owned(),
            size: st.size.unwrap_or(0),
            mtime: i64::try_from(st.mtime.unwrap_or(0)).unwrap_or(0),
        }))
    }

    fn delete(&self, file: &str) -> Result<()> {
        let p = self.remote(file)?;
        self.with_conn(&p, |s| s.unlink(&p))
    }

    fn notes(&self) -> Vec<String> {
        self.notes.all()
    }

    /// Twice the time any one request may take.
    fn stall_after(&self) -> Duration {
        self.cfg
            .timeout
            .saturating_mul(2)
            .max(Duration::from_secs(10))
    }
}

struct RemoteRead {
    /// Kept open while the file is read, even if the store moves on to a
    /// new connection.
    _conn: Arc<Conn>,
    file: ssh2::File,
}

impl Read for RemoteRead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf)
    }
}
