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

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use sha2::{Digest, Sha256};
use ssh2::{MethodType, OpenFlags, OpenType, Session, Sftp};

use super::known_hosts::{self, Verdict};
use super::{valid_file_name, Object, Store, Upload};
use crate::error::{Error, Result};

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

const KEX: &[&str] = &[
    "curve25519-sha256",
    "curve25519-sha256@libssh.org",
    "ecdh-sha2-nistp256",
    "ecdh-sha2-nistp384",
    "ecdh-sha2-nistp521",
    "diffie-hellman-group16-sha512",
    "diffie-hellman-group14-sha256",
];
const HOST_KEYS: &[&str] = &[
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "rsa-sha2-512",
    "rsa-sha2-256",
];
const CIPHERS: &[&str] = &[
    "chacha20-poly1305@openssh.com",
    "aes256-gcm@openssh.com",
    "aes128-gcm@openssh.com",
    "aes256-ctr",
    "aes192-ctr",
    "aes128-ctr",
];
const MACS: &[&str] = &[
    "hmac-sha2-256-etm@openssh.com",
    "hmac-sha2-512-etm@openssh.com",
    "hmac-sha2-256",
    "hmac-sha2-512",
];

/// What a host key looks like to a person: type and SHA256 fingerprint.
#[derive(Debug, Clone)]
pub struct HostKey {
    pub kind: String,
    pub blob: Vec<u8>,
}

impl HostKey {
    pub fn fingerprint(&self) -> String {
        let digest = Sha256::digest(&self.blob);
        format!(
            "SHA256:{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
        )
    }

    /// The `known_hosts` line that would trust this key.
    pub fn known_hosts_line(&self, host: &str, port: u16) -> String {
        let b64 = base64::engine::general_purpose::STANDARD.encode(&self.blob);
        format!("{} {} {b64}", host_pattern(host, port), self.kind)
    }
}

fn host_pattern(host: &str, port: u16) -> String {
    known_hosts::lookup_name(host, port)
}

fn key_kind(t: ssh2::HostKeyType, blob: &[u8]) -> String {
    // The blob starts with its own type name: trust it over the enum, which
    // lacks some types.
    if blob.len() > 4 {
        let n = u32::from_be_bytes([blob[0], blob[1], blob[2], blob[3]]) as usize;
        if let Some(name) = blob.get(4..4 + n).and_then(|b| std::str::from_utf8(b).ok()) {
            return name.to_owned();
        }
    }
    format!("{t:?}")
}

fn prefer(
    sess: &Session,
    kind: MethodType,
    wanted: &[&str],
) -> std::result::Result<(), ssh2::Error> {
    let supported = sess.supported_algs(kind)?;
    let list: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|w| supported.contains(w))
        .collect();
    sess.method_pref(kind, &list.join(","))
}

/// Opens a TCP connection and completes the SSH handshake with modern
/// algorithms only. Returns the session and the key the server offered.
pub fn handshake(
    host: &str,
    port: u16,
    timeout: Duration,
) -> std::result::Result<(Session, HostKey), String> {
    let addr = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .next()
        .ok_or_else(|| format!("cannot resolve {host}"))?;
    let tcp = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
    let mut sess = Session::new().map_err(|e| e.to_string())?;
    sess.set_timeout(u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX));
    for (kind, list) in [
        (MethodType::Kex, KEX),
        (MethodType::HostKey, HOST_KEYS),
        (MethodType::CryptCs, CIPHERS),
        (MethodType::CryptSc, CIPHERS),
        (MethodType::MacCs, MACS),
        (MethodType::MacSc, MACS),
    ] {
        prefer(&sess, kind, list).map_err(|e| format!("algorithm setup: {e}"))?;
    }
    sess.set_tcp_stream(tcp);
    sess.handshake()
        .map_err(|e| format!("SSH handshake with {host}:{port} failed: {e}"))?;
    let (blob, t) = sess
        .host_key()
        .ok_or_else(|| "the server offered no host key".to_owned())?;
    let key = HostKey {
        kind: key_kind(t, blob),
        blob: blob.to_vec(),
    };
    Ok((sess, key))
}

struct Conn {
    _sess: Session,
    sftp: Sftp,
}

pub struct SftpStore {
    cfg: SftpConfig,
    conn: Mutex<Option<Conn>>,
    /// Why connecting failed, once every attempt had: the rest of the run
    /// fails fast with the same error instead of waiting out the retries
    /// again at every listing, upload and copy.
    unreachable: Mutex<Option<String>>,
}

impl SftpStore {
    pub fn new(cfg: SftpConfig) -> Self {
        SftpStore {
            cfg,
            conn: Mutex::new(None),
            unreachable: Mutex::new(None),
        }
    }

    fn err(&self, message: impl Into<String>) -> Error {
        Error::Store {
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
                crate::fsutil::check_private(p).map_err(|e| (false, e))?;
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
                    *g = Some(crate::error::about(&e, &self.cfg.name));
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

    fn with_conn<T>(&self, f: impl Fn(&Sftp) -> std::result::Result<T, ssh2::Error>) -> Result<T> {
        let mut guard = self
            .conn
            .lock()
            .map_err(|_| self.err("connection lock poisoned"))?;
        if guard.is_none() {
            *guard = Some(self.connect()?);
        }
        let conn = guard.as_ref().ok_or_else(|| self.err("not connected"))?;
        match f(&conn.sftp) {
            Ok(v) => Ok(v),
            Err(e) => {
                // A failed call may mean a dead connection: start afresh next time.
                *guard = None;
                Err(self.err(e.to_string()))
            }
        }
    }
}

const SFTP_NO_SUCH_FILE: i32 = 2;

fn is_not_found(e: &ssh2::Error) -> bool {
    matches!(e.code(), ssh2::ErrorCode::SFTP(SFTP_NO_SUCH_FILE))
}

/// Says what a failed SFTP write usually means. OpenSSH's sftp-server speaks
/// protocol version 3, which has no "disk full" status: ENOSPC and EDQUOT
/// arrive as the bare FAILURE status, which libssh2 words as just "failure".
fn write_error(e: &io::Error, partial: &Path) -> io::Error {
    let said = e.to_string();
    let meaning = match said.as_str() {
        "failure" => "the server refused the write (SFTP status FAILURE), most often a full disk or quota on the server".to_owned(),
        "no space on filesystem" | "quota exceeded" => format!("the server refused the write: {said}"),
        _ => said,
    };
    io::Error::new(e.kind(), format!("{}: {meaning}", partial.display()))
}

struct SftpUpload {
    store: String,
    file: Option<ssh2::File>,
    partial: PathBuf,
    target: PathBuf,
    conn: Option<Conn>,
    written: u64,
}

impl Write for SftpUpload {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let f = self
            .file
            .as_mut()
            .ok_or_else(|| io::Error::other("upload already finished"))?;
        let n = f.write(buf).map_err(|e| write_error(&e, &self.partial))?;
        self.written += n as u64;
        Ok(n)
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
        let err = |m: String| Error::Store {
            store: self.store.clone(),
            message: m,
        };
        let mut f = self
            .file
            .take()
            .ok_or_else(|| err("upload already finished".into()))?;
        f.flush()
            .map_err(|e| err(format!("{}: write: {e}", self.partial.display())))?;
        // fsync@openssh.com: the data is on the server's disk before the name appears.
        f.fsync()
            .map_err(|e| err(format!("{}: fsync: {e}", self.partial.display())))?;
        drop(f);
        let conn = self
            .conn
            .as_ref()
            .ok_or_else(|| err("not connected".into()))?;
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
        Ok(())
    }
}

impl Drop for SftpUpload {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            if let Some(c) = &self.conn {
                let _ = c.sftp.unlink(&self.partial);
            }
        }
    }
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
            .map_err(|e| self.err(format!("create {}: {e}", partial.display())))?;
        Ok(Box::new(SftpUpload {
            store: self.cfg.name.clone(),
            file: Some(f),
            partial,
            target,
            conn: Some(conn),
            written: 0,
        }))
    }

    fn get(&self, file: &str) -> Result<Box<dyn Read + Send>> {
        let p = self.remote(file)?;
        let conn = self.connect()?;
        let f = conn
            .sftp
            .open(&p)
            .map_err(|e| self.err(format!("open {}: {e}", p.display())))?;
        Ok(Box::new(RemoteRead {
            _conn: conn,
            file: f,
        }))
    }

    fn list(&self) -> Result<Vec<Object>> {
        let dir = PathBuf::from(&self.cfg.path);
        // One entry at a time, at most MAX_LISTED: a server that streams
        // names without end is refused, not buffered.
        let entries = self.with_conn(|s| {
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
        let r = self.with_conn(|s| match s.lstat(&p) {
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
        self.with_conn(|s| s.unlink(&p))
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
    _conn: Conn,
    file: ssh2::File,
}

impl Read for RemoteRead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf)
    }
}

/// `coffer keyscan`: the key a server offers, to verify out of band.
pub fn keyscan(host: &str, port: u16, timeout: Duration) -> std::result::Result<HostKey, String> {
    handshake(host, port, timeout).map(|(_, k)| k)
}
