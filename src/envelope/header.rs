//! The v1 header: fixed prefix, body (chunk size, salt, metadata, stanzas) and an
//! HMAC-SHA-256 over everything before it. Byte layout: docs/FORMAT.md.

use std::collections::BTreeMap;
use std::io::{self, Read};

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::keys::{Identity, AGE_KIND, RSA_KIND};
use super::stream::{MAX_CHUNK_SIZE, MIN_CHUNK_SIZE};
use super::{DataKey, EnvelopeError, OpenError};

pub const MAGIC: &[u8; 6] = b"COFFER";
pub const VERSION: u16 = 1;
const PREFIX_LEN: usize = 6 + 2 + 4;
pub const MAC_LEN: usize = 32;
/// Headers are small (a stanza is at most a few KiB); a larger length field is
/// corruption or an attack on the reader's memory.
pub const MAX_HEADER_BODY: usize = 1 << 20;
pub const MAX_STANZAS: usize = 1024;
/// Each `rsa-oaep-sha256` stanza is a possible private-key operation on
/// attacker-chosen bytes; no real file is sealed to more RSA keys than this.
pub const MAX_RSA_STANZAS: usize = 16;
/// An age identity that cannot name its recipient (a plugin) has to find its
/// stanza by trial; it tries at most this many.
pub const MAX_AGE_TRIALS: usize = 16;

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
    /// For backups: the digest of each member in the inner manifest,
    /// `blake3`; absent means `sha256` (backups of earlier versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member_hash: Option<String>,
    /// For backups compressed with zstd: the bytes of tar in each zstd frame
    /// (every frame but the last holds exactly this many); absent means one
    /// frame (backups of earlier versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zstd_frame_size: Option<u64>,
    /// For backups: the backup's name, as its sidecar gives it, so that a
    /// restore can tell one backup from another before it decrypts the rest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
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
    if version == 0 {
        return Err(EnvelopeError::InvalidVersion);
    }
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
            return Err(EnvelopeError::TooManyRecipients {
                kind: "all kinds",
                count: stanzas.len(),
                max: MAX_STANZAS,
            });
        }
        let rsa = rsa_count(&stanzas);
        if rsa > MAX_RSA_STANZAS {
            return Err(EnvelopeError::TooManyRecipients {
                kind: "RSA",
                count: rsa,
                max: MAX_RSA_STANZAS,
            });
        }
        if let Some((a, b)) = duplicate(&stanzas) {
            return Err(malformed(format!(
                "stanzas {a} and {b} are both for {}",
                stanzas[a].label()
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
        let metadata = parse_metadata(meta_bytes)?;
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
        // Both checks come before any key is touched, so a hostile header costs
        // the reader no private-key operation (docs/FORMAT.md 2.3).
        let rsa = rsa_count(&stanzas);
        if rsa > MAX_RSA_STANZAS {
            return Err(malformed(format!(
                "{rsa} {RSA_KIND} stanzas; at most {MAX_RSA_STANZAS}"
            )));
        }
        if let Some((a, b)) = duplicate(&stanzas) {
            return Err(malformed(format!(
                "stanzas {a} and {b} are both for {}; a file has one stanza per key",
                stanzas[a].label()
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
    /// Every stanza comes from the (untrusted) file, so the work is bounded
    /// (docs/FORMAT.md 2.3): an identity that knows its recipient's fingerprint
    /// (RSA, age X25519, ssh) tries only the stanza carrying that fingerprint,
    /// of which [`parse`](Self::parse) allows one; only an identity that
    /// cannot name its recipient (an age plugin) tries age stanzas by trial,
    /// at most [`MAX_AGE_TRIALS`] of them.
    pub fn unwrap_key(
        &self,
        identities: &[Identity],
        raw: &[u8],
    ) -> Result<DataKey, EnvelopeError> {
        let mut damaged = None;
        let mut claimed = vec![false; self.stanzas.len()];
        for id in identities {
            for (i, stanza) in self.stanzas.iter().enumerate() {
                if !id.matches(stanza) {
                    continue;
                }
                claimed[i] = true;
                // The fingerprint says this identity is the recipient, so any
                // failure (age reports it as "no matching keys") is damage.
                match id.unwrap(stanza) {
                    Some(Ok(key)) => return self.verify_mac(&key, raw).map(|()| key),
                    _ => damaged = damaged.or(Some(i)),
                }
            }
        }
        let trial: Vec<usize> = (0..self.stanzas.len())
            .filter(|&i| !claimed[i] && self.stanzas[i].kind == AGE_KIND)
            .take(MAX_AGE_TRIALS)
            .collect();
        for id in identities.iter().filter(|id| id.needs_trial()) {
            for &i in &trial {
                if let Some(Ok(key)) = id.unwrap(&self.stanzas[i]) {
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
        // A changed kind hides the stanza from its own key; without this the
        // damage would be reported as a wrong key.
        if let Some((index, s)) = self
            .stanzas
            .iter()
            .enumerate()
            .find(|(_, s)| s.kind != RSA_KIND && s.kind != AGE_KIND)
        {
            return Err(EnvelopeError::UnknownStanzaKind {
                index,
                kind: s.kind.clone(),
            });
        }
        Err(EnvelopeError::NoMatchingIdentity {
            wanted: self.stanzas.iter().map(Stanza::label).collect(),
        })
    }
}

fn rsa_count(stanzas: &[Stanza]) -> usize {
    stanzas.iter().filter(|s| s.kind == RSA_KIND).count()
}

/// The first two stanzas for the same key (same kind and fingerprint), if any.
fn duplicate(stanzas: &[Stanza]) -> Option<(usize, usize)> {
    let mut seen = BTreeMap::new();
    stanzas.iter().enumerate().find_map(|(i, s)| {
        seen.insert((s.kind.as_str(), s.fingerprint), i)
            .map(|first| (first, i))
    })
}

/// Parses the metadata JSON, naming what is wrong: bad JSON, not an object,
/// or a required member missing.
fn parse_metadata(bytes: &[u8]) -> Result<Metadata, EnvelopeError> {
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| malformed(format!("metadata is not valid JSON: {e}")))?;
    let Some(object) = value.as_object() else {
        return Err(malformed("metadata is not a JSON object"));
    };
    match object.get("created") {
        None => return Err(malformed("metadata lacks the required member \"created\"")),
        Some(v) if !v.is_string() => {
            return Err(malformed("metadata member \"created\" is not a string"))
        }
        Some(_) => {}
    }
    serde_json::from_value(value)
        .map_err(|e| malformed(format!("metadata has a member of the wrong type: {e}")))
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
    use crate::envelope::keys::tests::{
        rsa_identity, rsa_recipient, AGE_ATTEMPTS, RSA_DECRYPTIONS,
    };
    use crate::envelope::keys::{generate_age, no_passphrase, parse_recipients};
    use crate::exit::Class;
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

    fn meta() -> Metadata {
        Metadata {
            created: "2026-01-01T00:00:00Z".into(),
            ..Metadata::default()
        }
    }

    /// Serializes stanzas without `Header::new`'s checks: what only a hostile
    /// writer would make.
    fn hostile(stanzas: Vec<Stanza>) -> Vec<u8> {
        Header {
            version: VERSION,
            chunk_size: 4096,
            salt: [5; 32],
            metadata: meta(),
            stanzas,
            mac: [0; 32],
        }
        .to_bytes(&DataKey([3; 32]))
    }

    /// A header as a reader sees it: parsed back, with its MAC under `key`.
    fn sealed(stanzas: Vec<Stanza>, key: &DataKey) -> (Header, Vec<u8>) {
        let raw = Header::new(4096, [5; 32], meta(), stanzas)
            .unwrap()
            .to_bytes(key);
        (Header::parse(&raw).unwrap().0, raw)
    }

    fn decoy(kind: &str, fingerprint: u8) -> Stanza {
        Stanza {
            kind: kind.into(),
            fingerprint: [fingerprint; 32],
            body: vec![7; 256],
        }
    }

    fn rsa_decryptions() -> usize {
        RSA_DECRYPTIONS.with(std::cell::Cell::get)
    }

    fn age_attempts() -> usize {
        AGE_ATTEMPTS.with(std::cell::Cell::get)
    }

    #[test]
    fn more_than_16_rsa_stanzas_are_refused_before_any_key_is_used() {
        let at_cap = hostile((0..16).map(|i| decoy(RSA_KIND, i)).collect());
        assert!(Header::parse(&at_cap).is_ok());
        let over = hostile((0..17).map(|i| decoy(RSA_KIND, i)).collect());
        let before = rsa_decryptions();
        let err = crate::envelope::open(&[rsa_identity()], &over[..])
            .err()
            .unwrap();
        assert_eq!(rsa_decryptions(), before);
        let msg = err.to_string();
        assert!(
            msg.contains("17 rsa-oaep-sha256 stanzas; at most 16"),
            "{msg}"
        );
        assert!(matches!(
            err,
            OpenError::Envelope(EnvelopeError::HeaderMalformed(_))
        ));
        // Other kinds do not count toward the RSA cap.
        let mixed = hostile(
            (0..16)
                .map(|i| decoy(RSA_KIND, i))
                .chain((16..40).map(|i| decoy(AGE_KIND, i)))
                .collect(),
        );
        assert!(Header::parse(&mixed).is_ok());
    }

    #[test]
    fn the_writer_refuses_more_than_16_rsa_recipients() {
        let stanzas: Vec<_> = (0..17).map(|i| decoy(RSA_KIND, i)).collect();
        let err = Header::new(4096, [0; 32], meta(), stanzas).unwrap_err();
        assert!(matches!(
            err,
            EnvelopeError::TooManyRecipients {
                count: 17,
                max: 16,
                ..
            }
        ));
        assert_eq!(err.class(), Class::Usage);
    }

    #[test]
    fn two_stanzas_for_one_key_are_refused() {
        for kind in [RSA_KIND, AGE_KIND, "future-kind"] {
            let bytes = hostile(vec![decoy(kind, 1), decoy(RSA_KIND, 2), decoy(kind, 1)]);
            let err = Header::parse(&bytes).unwrap_err();
            assert!(
                matches!(&err, EnvelopeError::HeaderMalformed(m) if m.contains("stanzas 0 and 2 are both for")),
                "{kind}: {err}"
            );
            assert_eq!(err.class(), Class::Integrity);
            let stanzas = vec![decoy(kind, 1), decoy(kind, 1)];
            assert!(Header::new(4096, [0; 32], meta(), stanzas).is_err());
        }
        // The same fingerprint under two kinds is two keys' worth of stanzas.
        assert!(Header::parse(&hostile(vec![decoy(RSA_KIND, 1), decoy(AGE_KIND, 1)])).is_ok());
    }

    #[test]
    fn an_rsa_identity_tries_only_the_stanza_with_its_fingerprint() {
        let key = DataKey::generate();
        let own = rsa_recipient().wrap(&key).unwrap();
        let mut stanzas: Vec<Stanza> = (0..15).map(|i| decoy(RSA_KIND, i)).collect();
        stanzas.insert(7, own.clone());
        let (h, raw) = sealed(stanzas.clone(), &key);
        let before = rsa_decryptions();
        let got = h.unwrap_key(&[rsa_identity()], &raw).unwrap();
        assert_eq!(got.expose(), key.expose());
        assert_eq!(rsa_decryptions() - before, 1);

        // Its own stanza damaged: one attempt, reported as damage.
        stanzas[7].body[100] ^= 1;
        let (h, raw) = sealed(stanzas.clone(), &key);
        let before = rsa_decryptions();
        let err = h.unwrap_key(&[rsa_identity()], &raw).err().unwrap();
        assert_eq!(rsa_decryptions() - before, 1);
        assert!(
            matches!(err, EnvelopeError::StanzaDamaged { index: 7, .. }),
            "{err}"
        );

        // No stanza for it: no private-key operation at all.
        stanzas.remove(7);
        let (h, raw) = sealed(stanzas, &key);
        let before = rsa_decryptions();
        let err = h.unwrap_key(&[rsa_identity()], &raw).err().unwrap();
        assert_eq!(rsa_decryptions(), before);
        assert!(matches!(err, EnvelopeError::NoMatchingIdentity { .. }));
        assert_eq!(err.class(), Class::Key);
    }

    #[test]
    fn age_identities_match_by_fingerprint_and_trial_is_bounded() {
        let (id_text, public, _) = generate_age();
        let r = parse_recipients(public.trim(), &no_passphrase()).unwrap();
        let key = DataKey::generate();
        let own = r[0].wrap(&key).unwrap();
        // 40 stanzas of someone else's: real age bodies under other fingerprints.
        let (_, stranger, _) = generate_age();
        let other = parse_recipients(stranger.trim(), &no_passphrase()).unwrap()[0]
            .wrap(&key)
            .unwrap();
        let mut stanzas: Vec<Stanza> = (0..40)
            .map(|i| Stanza {
                fingerprint: [i; 32],
                ..other.clone()
            })
            .collect();
        stanzas.push(own);
        let (h, raw) = sealed(stanzas, &key);

        let id = crate::envelope::parse_identities(&id_text, "age", &no_passphrase()).unwrap();
        let before = age_attempts();
        assert!(h.unwrap_key(std::slice::from_ref(&id), &raw).is_ok());
        assert_eq!(
            age_attempts() - before,
            1,
            "X25519 goes straight to its stanza"
        );

        // An identity that cannot name its recipient (as a plugin's) tries
        // at most MAX_AGE_TRIALS stanzas, then gives up.
        let Identity::Age { identities, .. } = id else {
            unreachable!()
        };
        let blind = Identity::Age {
            identities,
            fingerprints: Vec::new(),
            trial: true,
        };
        let before = age_attempts();
        let err = h.unwrap_key(&[blind], &raw).err().unwrap();
        assert_eq!(age_attempts() - before, MAX_AGE_TRIALS);
        assert!(matches!(err, EnvelopeError::NoMatchingIdentity { .. }));
    }

    #[test]
    fn an_unknown_kind_is_reported_as_damage_not_as_a_wrong_key() {
        let key = DataKey::generate();
        let mut own = rsa_recipient().wrap(&key).unwrap();
        // One bit of the kind flipped, as in a damaged or edited file.
        own.kind = "rsa-oaep-sha257".into();
        let (h, raw) = sealed(vec![decoy(AGE_KIND, 2), own.clone()], &key);
        let before = rsa_decryptions();
        let err = h.unwrap_key(&[rsa_identity()], &raw).err().unwrap();
        assert_eq!(rsa_decryptions(), before);
        assert!(
            matches!(&err, EnvelopeError::UnknownStanzaKind { index: 1, kind } if kind == "rsa-oaep-sha257"),
            "{err}"
        );
        assert_eq!(err.class(), Class::Integrity);

        // A stanza of an unknown kind does not stand in the way of a key that matches.
        let good = rsa_recipient().wrap(&key).unwrap();
        let (h, raw) = sealed(vec![own, good], &key);
        assert!(h.unwrap_key(&[rsa_identity()], &raw).is_ok());
    }

    #[test]
    fn version_zero_is_invalid_not_from_a_newer_coffer() {
        let (h, key) = sample();
        let mut bytes = h.to_bytes(&key);
        bytes[7] = 0;
        let err = Header::parse(&bytes).unwrap_err();
        assert!(matches!(err, EnvelopeError::InvalidVersion));
        let msg = format!("{err} {}", err.hint().unwrap());
        assert!(msg.contains("invalid format version 0"), "{msg}");
        assert!(!msg.contains("newer"), "{msg}");
    }

    /// A header whose metadata is exactly `json`.
    fn with_metadata(json: &[u8]) -> Vec<u8> {
        let (h, key) = sample();
        let good = h.to_bytes(&key);
        let old_len = u32::from_be_bytes(good[48..52].try_into().unwrap()) as usize;
        let mut body = good[12..48].to_vec();
        body.extend_from_slice(&u32::try_from(json.len()).unwrap().to_be_bytes());
        body.extend_from_slice(json);
        body.extend_from_slice(&good[52 + old_len..good.len() - MAC_LEN]);
        let mut out = good[..8].to_vec();
        out.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes());
        out.extend_from_slice(&body);
        out.extend_from_slice(&[0; MAC_LEN]);
        out
    }

    #[test]
    fn metadata_errors_say_what_is_wrong() {
        let cases: [(&[u8], &str); 5] = [
            (br#"{"job":"x"}"#, r#"lacks the required member "created""#),
            (br#"{"created":5}"#, r#"member "created" is not a string"#),
            (b"[1]", "not a JSON object"),
            (b"{", "not valid JSON"),
            (br#"{"created":"t","job":5}"#, "wrong type"),
        ];
        for (json, want) in cases {
            let err = Header::parse(&with_metadata(json)).unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.contains(want),
                "{}: {msg}",
                String::from_utf8_lossy(json)
            );
        }
        let ok = Header::parse(&with_metadata(br#"{"created":"t","new":[1]}"#)).unwrap();
        assert_eq!(ok.0.metadata.created, "t");
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
