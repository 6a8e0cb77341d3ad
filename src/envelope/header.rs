//! The v1 header: fixed prefix, body (chunk size, salt, metadata, stanzas) and an
//! HMAC-SHA-256 over everything before it. Byte layout: docs/FORMAT.md.

use std::collections::BTreeMap;
use std::io::{self, Read};

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::keys::Identity;
use super::stream::{MAX_CHUNK_SIZE, MIN_CHUNK_SIZE};
use super::{DataKey, EnvelopeError, OpenError};

pub const MAGIC: &[u8; 6] = b"COFFER";
pub const VERSION: u16 = 1;
const PREFIX_LEN: usize = 6 + 2 + 4;
pub const MAC_LEN: usize = 32;
/// Headers are small (a stanza is at most a few KiB); a larger length field is
/// corruption or an attack on the reader's memory.
pub const MAX_HEADER_BODY: usize = 1 << 20;
const MAX_STANZAS: usize = 1024;

type HmacSha256 = Hmac<Sha256>;

/// Plain, authenticated metadata. Unknown fields are kept so that a newer
/// writer's additions survive inspection.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    /// RFC 3339 UTC time the file was sealed.
    pub created: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// Compression of the sealed content (`zstd`, `gzip`, `none`), if coffer made it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<String>,
    /// What the plaintext is: `tar` for backups, absent for `coffer seal` data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl Metadata {
    pub fn now() -> Self {
        Metadata {
            created: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            ..Metadata::default()
        }
    }
}

/// One recipient's copy of the data key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stanza {
    /// `rsa-oaep-sha256` or `age`; unknown kinds are carried but never unwrapped.
    pub kind: String,
    /// SHA-256 of the recipient's public key (SPKI DER for RSA, recipient string for age).
    pub fingerprint: [u8; 32],
    pub body: Vec<u8>,
}

impl Stanza {
    pub fn label(&self) -> String {
        format!("{} SHA256:{}", self.kind, hex::encode(self.fingerprint))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    pub version: u16,
    pub chunk_size: u32,
    pub salt: [u8; 32],
    pub metadata: Metadata,
    pub stanzas: Vec<Stanza>,
    pub mac: [u8; 32],
}

fn malformed(msg: impl Into<String>) -> EnvelopeError {
    EnvelopeError::HeaderMalformed(msg.into())
}

/// A bounds-checked cursor over untrusted bytes.
struct Cursor<'a> {
    data: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], EnvelopeError> {
        if self.data.len() < n {
            return Err(malformed(format!("{what} runs past the end of the header")));
        }
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        Ok(head)
    }
    fn u8(&mut self, what: &str) -> Result<u8, EnvelopeError> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16, EnvelopeError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self, what: &str) -> Result<u32, EnvelopeError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn array32(&mut self, what: &str) -> Result<[u8; 32], EnvelopeError> {
        let b = self.take(32, what)?;
        let mut out = [0u8; 32];
        out.copy_from_slice(b);
        Ok(out)
    }
}

fn check_prefix(prefix: &[u8]) -> Result<usize, EnvelopeError> {
    let n = prefix.len().min(MAGIC.len());
    if prefix[..n] != MAGIC[..n] {
        return Err(EnvelopeError::NotCoffer);
    }
    if prefix.len() < PREFIX_LEN {
        return Err(EnvelopeError::HeaderTruncated);
    }
    let version = u16::from_be_bytes([prefix[6], prefix[7]]);
    if version != VERSION {
        return Err(EnvelopeError::UnsupportedVersion(version));
    }
    let body_len = u32::from_be_bytes([prefix[8], prefix[9], prefix[10], prefix[11]]) as usize;
    if body_len > MAX_HEADER_BODY {
        return Err(malformed(format!(
            "header length {body_len} exceeds the {MAX_HEADER_BODY}-byte limit"
        )));
    }
    Ok(body_len)
}

impl Header {
    pub fn new(
        chunk_size: u32,
        salt: [u8; 32],
        metadata: Metadata,
        stanzas: Vec<Stanza>,
    ) -> Result<Self, EnvelopeError> {
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) {
            return Err(malformed(format!(
                "chunk size {chunk_size} is outside {MIN_CHUNK_SIZE}..={MAX_CHUNK_SIZE}"
            )));
        }
        if stanzas.is_empty() {
            return Err(EnvelopeError::NoRecipients);
        }
        // Never write a header this reader would refuse.
        if stanzas.len() > MAX_STANZAS {
            return Err(malformed(format!(
                "{} recipients; at most {MAX_STANZAS}",
                stanzas.len()
            )));
        }
        let meta_len = serde_json::to_vec(&metadata).map_or(0, |m| m.len());
        let size: usize = 42
            + meta_len
            + stanzas
                .iter()
                .map(|s| 1 + s.kind.len() + 32 + 4 + s.body.len())
                .sum::<usize>();
        if size > MAX_HEADER_BODY {
            return Err(malformed(format!(
                "the header would be {size} bytes; at most {MAX_HEADER_BODY}"
            )));
        }
        Ok(Header {
            version: VERSION,
            chunk_size,
            salt,
            metadata,
            stanzas,
            mac: [0; 32],
        })
    }

    /// Parses a header from the start of `data`; returns it and its length in bytes.
    /// The MAC is not checked here (that needs the data key).
    pub fn parse(data: &[u8]) -> Result<(Header, usize), EnvelopeError> {
        let body_len = check_prefix(&data[..data.len().min(PREFIX_LEN)])?;
        let total = PREFIX_LEN + body_len + MAC_LEN;
        if data.len() < total {
            return Err(EnvelopeError::HeaderTruncated);
        }
        let mut c = Cursor {
            data: &data[PREFIX_LEN..PREFIX_LEN + body_len],
        };
        let chunk_size = c.u32("chunk size")?;
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) {
            return Err(malformed(format!(
                "chunk size {chunk_size} is out of range"
            )));
        }
        let salt = c.array32("salt")?;
        let meta_len = c.u32("metadata length")? as usize;
        let meta_bytes = c.take(meta_len, "metadata")?;
        let metadata: Metadata = serde_json::from_slice(meta_bytes)
            .map_err(|e| malformed(format!("metadata is not valid JSON: {e}")))?;
        let count = c.u16("stanza count")? as usize;
        if count == 0 || count > MAX_STANZAS {
            return Err(malformed(format!("{count} recipient stanzas")));
        }
        let mut stanzas = Vec::with_capacity(count);
        for i in 0..count {
            let kind_len = c.u8("stanza kind length")? as usize;
            let kind = c.take(kind_len, "stanza kind")?;
            let kind = std::str::from_utf8(kind)
                .ok()
                .filter(|k| !k.is_empty() && k.bytes().all(|b| b.is_ascii_graphic()))
                .ok_or_else(|| malformed(format!("stanza {i} has an invalid kind")))?
                .to_owned();
            let fingerprint = c.array32("stanza fingerprint")?;
            let len = c.u32("stanza body length")? as usize;
            let body = c.take(len, "stanza body")?.to_vec();
            stanzas.push(Stanza {
                kind,
                fingerprint,
                body,
            });
        }
        if !c.data.is_empty() {
            return Err(malformed(format!(
                "{} unexpected bytes after the last stanza",
                c.data.len()
            )));
        }
        let mut mac = [0u8; 32];
        mac.copy_from_slice(&data[PREFIX_LEN + body_len..total]);
        Ok((
            Header {
                version: VERSION,
                chunk_size,
                salt,
                metadata,
                stanzas,
                mac,
            },
            total,
        ))
    }

    /// Reads exactly the header from a stream, returning it and its raw bytes
    /// (needed for the MAC and payload offsets).
    pub fn read<R: Read>(input: &mut R) -> Result<(Header, Vec<u8>), OpenError> {
        let mut raw = vec![0u8; PREFIX_LEN];
        let got = read_full(input, &mut raw)?;
        raw.truncate(got);
        let body_len = check_prefix(&raw)?;
        raw.resize(PREFIX_LEN + body_len + MAC_LEN, 0);
        let got = read_full(input, &mut raw[PREFIX_LEN..])?;
        if got < body_len + MAC_LEN {
            return Err(EnvelopeError::HeaderTruncated.into());
        }
        let (header, _) = Header::parse(&raw)?;
        Ok((header, raw))
    }

    fn body_bytes(&self) -> Vec<u8> {
        let meta = serde_json::to_vec(&self.metadata).expect("metadata serializes");
        let mut b = Vec::with_capacity(128 + meta.len());
        b.extend_from_slice(&self.chunk_size.to_be_bytes());
        b.extend_from_slice(&self.salt);
        b.extend_from_slice(&u32::try_from(meta.len()).expect("small").to_be_bytes());
        b.extend_from_slice(&meta);
        b.extend_from_slice(
            &u16::try_from(self.stanzas.len())
                .expect("few")
                .to_be_bytes(),
        );
        for s in &self.stanzas {
            b.push(u8::try_from(s.kind.len()).expect("short kind"));
            b.extend_from_slice(s.kind.as_bytes());
            b.extend_from_slice(&s.fingerprint);
            b.extend_from_slice(&u32::try_from(s.body.len()).expect("small").to_be_bytes());
            b.extend_from_slice(&s.body);
        }
        b
    }

    /// Serializes the header and its MAC under `key`.
    pub fn to_bytes(&self, key: &DataKey) -> Vec<u8> {
        let body = self.body_bytes();
        let mut out = Vec::with_capacity(PREFIX_LEN + body.len() + MAC_LEN);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_be_bytes());
        out.extend_from_slice(&u32::try_from(body.len()).expect("small").to_be_bytes());
        out.extend_from_slice(&body);
        let mac = mac(key, &self.salt, &out);
        out.extend_from_slice(&mac);
        out
    }

    /// Checks the MAC over the raw header bytes in constant time.
    pub fn verify_mac(&self, key: &DataKey, raw: &[u8]) -> Result<(), EnvelopeError> {
        let signed = &raw[..raw.len().saturating_sub(MAC_LEN)];
        hmac_for(key, &self.salt, signed)
            .verify_slice(&self.mac)
            .map_err(|_| EnvelopeError::HeaderMac)
    }

    /// Finds the data key with one of `identities` and authenticates the header.
    ///
    /// Stanzas whose fingerprint matches an identity are tried first; then every
    /// identity is tried on every stanza of its kind, so a damaged fingerprint is
    /// reported as tampering (exit 3), not as a wrong key.
    pub fn unwrap_key(
        &self,
        identities: &[Identity],
        raw: &[u8],
    ) -> Result<DataKey, EnvelopeError> {
        let mut damaged = None;
        let mut tried = vec![false; self.stanzas.len()];
        // Pass 1: fingerprint matches. A failure here means the stanza is damaged.
        for (i, stanza) in self.stanzas.iter().enumerate() {
            for id in identities.iter().filter(|id| id.matches(stanza)) {
                tried[i] = true;
                // The fingerprint says this identity is the recipient, so any
                // failure (age reports it as "no matching keys") is damage.
                if let Some(Ok(key)) = id.unwrap(stanza) {
                    return self.verify_mac(&key, raw).map(|()| key);
                }
                damaged = damaged.or(Some(i));
            }
        }
        // Pass 2: trial decryption for identities without a known fingerprint
        // (ssh, plugins) and for stanzas whose fingerprint was altered.
        for (i, stanza) in self.stanzas.iter().enumerate() {
            if tried[i] {
                continue;
            }
            for id in identities {
                if let Some(Ok(key)) = id.unwrap(stanza) {
                    return self.verify_mac(&key, raw).map(|()| key);
                }
            }
        }
        if let Some(index) = damaged {
            let s = &self.stanzas[index];
            return Err(EnvelopeError::StanzaDamaged {
                index,
                kind: s.kind.clone(),
                fingerprint: format!("SHA256:{}", hex::encode(s.fingerprint)),
            });
        }
        Err(EnvelopeError::NoMatchingIdentity {
            wanted: self.stanzas.iter().map(Stanza::label).collect(),
        })
    }
}

fn hmac_for(key: &DataKey, salt: &[u8], signed: &[u8]) -> HmacSha256 {
    let mut m = HmacSha256::new_from_slice(key.header_key(salt).as_ref())
        .expect("HMAC takes any key length");
    m.update(signed);
    m
}

fn mac(key: &DataKey, salt: &[u8], signed: &[u8]) -> [u8; 32] {
    hmac_for(key, salt, signed).finalize().into_bytes().into()
}

fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> (Header, DataKey) {
        let h = Header::new(
            4096,
            [5; 32],
            Metadata {
                created: "2026-01-01T00:00:00Z".into(),
                job: Some("prod".into()),
                ..Metadata::default()
            },
            vec![
                Stanza {
                    kind: "rsa-oaep-sha256".into(),
                    fingerprint: [1; 32],
                    body: vec![9; 256],
                },
                Stanza {
                    kind: "age".into(),
                    fingerprint: [2; 32],
                    body: vec![8; 200],
                },
            ],
        )
        .unwrap();
        (h, DataKey([3; 32]))
    }

    #[test]
    fn serialize_parse_round_trip_and_mac() {
        let (h, key) = sample();
        let bytes = h.to_bytes(&key);
        let (parsed, len) = Header::parse(&bytes).unwrap();
        assert_eq!(len, bytes.len());
        assert_eq!(parsed.stanzas, h.stanzas);
        assert_eq!(parsed.metadata, h.metadata);
        parsed.verify_mac(&key, &bytes).unwrap();
        let (read, raw) = Header::read(&mut &bytes[..]).unwrap();
        assert_eq!(read, parsed);
        assert_eq!(raw, bytes);
    }

    #[test]
    fn wrong_key_fails_mac() {
        let (h, key) = sample();
        let bytes = h.to_bytes(&key);
        let (parsed, _) = Header::parse(&bytes).unwrap();
        assert!(matches!(
            parsed.verify_mac(&DataKey([4; 32]), &bytes),
            Err(EnvelopeError::HeaderMac)
        ));
    }

    #[test]
    fn unknown_version_and_bad_magic() {
        let (h, key) = sample();
        let mut bytes = h.to_bytes(&key);
        bytes[7] = 2;
        assert!(matches!(
            Header::parse(&bytes),
            Err(EnvelopeError::UnsupportedVersion(2))
        ));
        bytes[0] = b'X';
        assert!(matches!(
            Header::parse(&bytes),
            Err(EnvelopeError::NotCoffer)
        ));
        assert!(matches!(
            Header::parse(b"COF"),
            Err(EnvelopeError::HeaderTruncated)
        ));
    }

    #[test]
    fn refuses_to_write_what_it_would_not_read() {
        let stanza = Stanza {
            kind: "age".into(),
            fingerprint: [0; 32],
            body: vec![0; 10],
        };
        let many = vec![stanza.clone(); MAX_STANZAS + 1];
        assert!(Header::new(4096, [0; 32], Metadata::default(), many).is_err());
        let big = vec![
            Stanza {
                body: vec![0; MAX_HEADER_BODY],
                ..stanza
            };
            1
        ];
        assert!(Header::new(4096, [0; 32], Metadata::default(), big).is_err());
    }

    proptest! {
        #[test]
        fn parse_never_panics(data in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = Header::parse(&data);
        }

        #[test]
        fn every_bit_of_the_header_is_authenticated(at in any::<prop::sample::Index>(), bit in 0u8..8) {
            let (h, key) = sample();
            let mut bytes = h.to_bytes(&key);
            let i = at.index(bytes.len());
            bytes[i] ^= 1 << bit;
            let ok = Header::parse(&bytes).and_then(|(p, n)| p.verify_mac(&key, &bytes[..n]));
            prop_assert!(ok.is_err());
        }
    }
}
