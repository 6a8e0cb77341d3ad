//! The SSH handshake: only modern algorithms offered, and the host key
//! the server shows, for the pin check (and `coffer keyscan`).

use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use base64::Engine as _;
use sha2::{Digest, Sha256};
use ssh2::{MethodType, Session};

use crate::store::known_hosts::{self};

pub(super) const KEX: &[&str] = &[
    "curve25519-sha256",
    "curve25519-sha256@libssh.org",
    "ecdh-sha2-nistp256",
    "ecdh-sha2-nistp384",
    "ecdh-sha2-nistp521",
    "diffie-hellman-group16-sha512",
    "diffie-hellman-group14-sha256",
];
pub(super) const HOST_KEYS: &[&str] = &[
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "rsa-sha2-512",
    "rsa-sha2-256",
];
pub(super) const CIPHERS: &[&str] = &[
    "chacha20-poly1305@openssh.com",
    "aes256-gcm@openssh.com",
    "aes128-gcm@openssh.com",
    "aes256-ctr",
    "aes192-ctr",
    "aes128-ctr",
];
pub(super) const MACS: &[&str] = &[
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

pub(super) fn host_pattern(host: &str, port: u16) -> String {
    known_hosts::lookup_name(host, port)
}

pub(super) fn key_kind(t: ssh2::HostKeyType, blob: &[u8]) -> String {
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

pub(super) fn prefer(
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

/// `coffer keyscan`: the key a server offers, to verify out of band.
pub fn keyscan(host: &str, port: u16, timeout: Duration) -> std::result::Result<HostKey, String> {
    handshake(host, port, timeout).map(|(_, k)| k)
}
