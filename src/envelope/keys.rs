//! Wrapping the data key for recipients and unwrapping it with identities.
//!
//! RSA: RSA-OAEP with SHA-256 for both the digest and MGF1 and an empty label,
//! exactly what `openssl pkeyutl -pkeyopt rsa_padding_mode:oaep -pkeyopt
//! rsa_oaep_md:sha256 -pkeyopt rsa_mgf1_md:sha256` produces and consumes.
//! age: the data key is the plaintext of a complete age file, so every age
//! recipient type (X25519, ssh, plugins) works and `age -d` can unwrap it.

use std::io::{Read, Write};
use std::str::FromStr;
use std::sync::Arc;

use age::secrecy::SecretString;
use rand::rngs::OsRng;
use rsa::pkcs1::{DecodeRsaPrivateKey, DecodeRsaPublicKey};
use rsa::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding,
};
use rsa::traits::PublicKeyParts;
use rsa::{Oaep, RsaPrivateKey, RsaPublicKey};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::header::Stanza;
use super::{DataKey, EnvelopeError};
use crate::error::Class;

pub const RSA_KIND: &str = "rsa-oaep-sha256";
pub const AGE_KIND: &str = "age";
pub const MIN_RSA_BITS: usize = 2048;

/// Asks for a passphrase given a description; `None` when none can be had.
pub type PassphraseFn = Arc<dyn Fn(&str) -> Option<Zeroizing<String>> + Send + Sync>;

/// A passphrase source that never has one (unattended use, tests).
pub fn no_passphrase() -> PassphraseFn {
    Arc::new(|_| None)
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("not a recognised recipient: {0}")]
    UnknownRecipient(String),
    #[error("cannot parse {what}: {reason}")]
    Parse { what: &'static str, reason: String },
    #[error("RSA key is {bits} bits; at least {MIN_RSA_BITS} are required")]
    TooSmall { bits: usize },
    #[error("this is a private key; a recipient is a public key")]
    PrivateAsRecipient,
    #[error("this is a public key; opening needs the private one")]
    PublicAsIdentity,
    #[error("the key is encrypted and no passphrase was given")]
    NoPassphrase,
    #[error("wrong passphrase, or a damaged encrypted key")]
    BadPassphrase,
    #[error("the key uses legacy PEM encryption (Proc-Type: 4,ENCRYPTED)")]
    LegacyEncryptedPem,
    #[error("no recipients or identities found in the file")]
    Empty,
    #[error("age: {0}")]
    Age(String),
}

impl KeyError {
    pub fn class(&self) -> Class {
        match self {
            KeyError::NoPassphrase | KeyError::BadPassphrase => Class::Key,
            _ => Class::Usage,
        }
    }

    pub fn hint(&self) -> Option<String> {
        Some(match self {
            KeyError::UnknownRecipient(_) => {
                "a recipient is an RSA public key PEM file, an age1… string, an ssh public key, or a file of them".into()
            }
            KeyError::TooSmall { .. } => "make a new key: coffer keygen --type rsa --bits 4096 --out KEY".into(),
            KeyError::PrivateAsRecipient => "give the public key (KEY.pub) instead; keep the private key offline".into(),
            KeyError::PublicAsIdentity => "pass the private key that belongs to it with -i (for KEY.pub, that is KEY)".into(),
            KeyError::NoPassphrase => {
                "run on a terminal to be asked, or set COFFER_PASSPHRASE_FILE to a file (mode 0600) holding it".into()
            }
            KeyError::LegacyEncryptedPem => {
                "convert it: openssl pkcs8 -topk8 -v2 aes-256-cbc -in KEY -out KEY.p8".into()
            }
            _ => return None,
        })
    }
}

fn parse_err(what: &'static str, e: impl std::fmt::Display) -> KeyError {
    KeyError::Parse {
        what,
        reason: e.to_string(),
    }
}

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// Prints age plugin messages and asks for passphrases through the given function.
#[derive(Clone)]
struct AgeCallbacks(PassphraseFn);

impl age::Callbacks for AgeCallbacks {
    fn display_message(&self, message: &str) {
        eprintln!("{message}");
    }
    fn confirm(&self, _message: &str, _yes: &str, _no: Option<&str>) -> Option<bool> {
        None
    }
    fn request_public_string(&self, _description: &str) -> Option<String> {
        None
    }
    fn request_passphrase(&self, description: &str) -> Option<SecretString> {
        (self.0)(description).map(|p| SecretString::from(p.as_str().to_owned()))
    }
}

/// Someone the data key is wrapped for.
pub enum Recipient {
    Rsa {
        key: RsaPublicKey,
        fingerprint: [u8; 32],
    },
    Age {
        inner: Box<dyn age::Recipient + Send + Sync>,
        label: String,
        fingerprint: [u8; 32],
    },
}

impl std::fmt::Debug for Recipient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} SHA256:{}",
            self.kind(),
            hex::encode(self.fingerprint())
        )
    }
}

impl Recipient {
    pub fn kind(&self) -> &'static str {
        match self {
            Recipient::Rsa { .. } => RSA_KIND,
            Recipient::Age { .. } => AGE_KIND,
        }
    }

    pub fn fingerprint(&self) -> [u8; 32] {
        match self {
            Recipient::Rsa { fingerprint, .. } | Recipient::Age { fingerprint, .. } => *fingerprint,
        }
    }

    pub fn from_rsa(key: RsaPublicKey) -> Result<Self, KeyError> {
        let bits = key.size() * 8;
        if bits < MIN_RSA_BITS {
            return Err(KeyError::TooSmall { bits });
        }
        Ok(Recipient::Rsa {
            fingerprint: rsa_fingerprint(&key)?,
            key,
        })
    }

    /// Parses one age-style recipient string: `age1…`, a plugin recipient
    /// `age1name1…`, or an ssh public key line.
    pub fn parse_age(s: &str, callbacks: &PassphraseFn) -> Result<Self, KeyError> {
        let s = s.trim();
        if s.starts_with("ssh-") || s.starts_with("ecdsa-") {
            let r = age::ssh::Recipient::from_str(s)
                .map_err(|e| parse_err("ssh recipient", format!("{e:?}")))?;
            // The comment field is not part of the key.
            let canonical: String = s.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
            return Ok(Recipient::Age {
                inner: Box::new(r),
                fingerprint: sha256(canonical.as_bytes()),
                label: canonical,
            });
        }
        if !s.starts_with("age1") {
            return Err(KeyError::UnknownRecipient(s.chars().take(40).collect()));
        }
        if let Ok(r) = age::x25519::Recipient::from_str(s) {
            return Ok(Recipient::Age {
                inner: Box::new(r),
                fingerprint: sha256(s.as_bytes()),
                label: s.to_owned(),
            });
        }
        let p = age::plugin::Recipient::from_str(s).map_err(|e| parse_err("age recipient", e))?;
        let plugin = age::plugin::RecipientPluginV1::new(
            p.plugin(),
            std::slice::from_ref(&p),
            &[],
            AgeCallbacks(callbacks.clone()),
        )
        .map_err(|e| KeyError::Age(format!("{e}")))?;
        Ok(Recipient::Age {
            inner: Box::new(plugin),
            fingerprint: sha256(s.as_bytes()),
            label: s.to_owned(),
        })
    }

    /// Wraps the data key for this recipient.
    pub fn wrap(&self, key: &DataKey) -> Result<Stanza, EnvelopeError> {
        match self {
            Recipient::Rsa {
                key: pk,
                fingerprint,
            } => {
                let body = pk
                    .encrypt(&mut OsRng, Oaep::new::<Sha256>(), key.expose())
                    .map_err(|e| EnvelopeError::Wrap {
                        recipient: format!("rsa SHA256:{}", hex::encode(fingerprint)),
                        reason: e.to_string(),
                    })?;
                Ok(Stanza {
                    kind: RSA_KIND.into(),
                    fingerprint: *fingerprint,
                    body,
                })
            }
            Recipient::Age {
                inner,
                label,
                fingerprint,
            } => {
                let wrap_err = |reason: String| EnvelopeError::Wrap {
                    recipient: label.clone(),
                    reason,
                };
                let enc = age::Encryptor::with_recipients(std::iter::once(
                    inner.as_ref() as &dyn age::Recipient
                ))
                .map_err(|e| wrap_err(e.to_string()))?;
                let mut body = Vec::with_capacity(256);
                let mut w = enc
                    .wrap_output(&mut body)
                    .map_err(|e| wrap_err(e.to_string()))?;
                w.write_all(key.expose())
                    .and_then(|()| w.finish().map(drop))
                    .map_err(|e| wrap_err(e.to_string()))?;
                Ok(Stanza {
                    kind: AGE_KIND.into(),
                    fingerprint: *fingerprint,
                    body,
                })
            }
        }
    }
}

fn rsa_fingerprint(key: &RsaPublicKey) -> Result<[u8; 32], KeyError> {
    let der = key
        .to_public_key_der()
        .map_err(|e| parse_err("RSA public key", e))?;
    Ok(sha256(der.as_bytes()))
}

/// One PEM block found in a text, with its label.
struct PemBlock<'a> {
    label: &'a str,
    text: &'a str,
}

/// Splits a text into PEM blocks and the lines outside them.
fn split_pem(text: &str) -> (Vec<PemBlock<'_>>, Vec<&str>) {
    let mut blocks = Vec::new();
    let mut lines = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN ") {
        lines.extend(rest[..start].lines());
        let after = &rest[start..];
        let Some(label_end) = after[11..].find("-----").map(|i| i + 11) else {
            rest = after;
            break;
        };
        let label = &after[11..label_end];
        let end_marker = format!("-----END {label}-----");
        if let Some(e) = after.find(&end_marker) {
            let end = e + end_marker.len();
            blocks.push(PemBlock {
                label,
                text: &after[..end],
            });
            rest = &after[end..];
        } else {
            // An unterminated block; hand it to the PEM parser for a precise error.
            blocks.push(PemBlock { label, text: after });
            rest = "";
        }
    }
    lines.extend(rest.lines());
    (blocks, lines)
}

fn rsa_public_from_pem(block: &PemBlock<'_>) -> Result<RsaPublicKey, KeyError> {
    match block.label {
        "PUBLIC KEY" => RsaPublicKey::from_public_key_pem(block.text)
            .map_err(|e| parse_err("RSA public key (SPKI PEM)", e)),
        "RSA PUBLIC KEY" => RsaPublicKey::from_pkcs1_pem(block.text)
            .map_err(|e| parse_err("RSA public key (PKCS#1 PEM)", e)),
        l if l.contains("PRIVATE KEY") => Err(KeyError::PrivateAsRecipient),
        other => Err(parse_err(
            "recipient",
            format!("unexpected PEM block {other}"),
        )),
    }
}

/// Parses a recipients text: RSA public key PEM blocks and/or age recipient
/// lines, with `#` comments and blank lines ignored (as age's `-R`).
pub fn parse_recipients_file(text: &str, cb: &PassphraseFn) -> Result<Vec<Recipient>, KeyError> {
    let (blocks, lines) = split_pem(text);
    let mut out = Vec::new();
    for b in &blocks {
        out.push(Recipient::from_rsa(rsa_public_from_pem(b)?)?);
    }
    for line in lines {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.starts_with("AGE-SECRET-KEY-") {
            return Err(KeyError::PrivateAsRecipient);
        }
        out.push(Recipient::parse_age(line, cb)?);
    }
    if out.is_empty() {
        return Err(KeyError::Empty);
    }
    Ok(out)
}

/// Parses a recipient given on the command line: an age/ssh recipient string.
/// (Paths are resolved by the caller, which reads the file and calls
/// [`parse_recipients_file`].)
pub fn parse_recipients(s: &str, cb: &PassphraseFn) -> Result<Vec<Recipient>, KeyError> {
    Recipient::parse_age(s, cb).map(|r| vec![r])
}

/// An RSA private key and the fingerprint of its public half.
pub struct RsaIdentity {
    key: RsaPrivateKey,
    fingerprint: [u8; 32],
}

impl RsaIdentity {
    pub fn new(key: RsaPrivateKey) -> Result<Self, KeyError> {
        Ok(RsaIdentity {
            fingerprint: rsa_fingerprint(&key.to_public_key())?,
            key,
        })
    }

    pub fn fingerprint(&self) -> [u8; 32] {
        self.fingerprint
    }

    /// The key itself, for reading the legacy recipe's PKCS#1 v1.5 files.
    pub fn private_key(&self) -> &RsaPrivateKey {
        &self.key
    }

    /// Unwraps a data key wrapped with RSA-OAEP-SHA256.
    ///
    /// Blinded: the `rsa` crate's private-key operation is not constant-time
    /// (RUSTSEC-2023-0071), and blinding at least decorrelates its timing from
    /// the attacker-chosen ciphertext.
    pub fn decrypt(&self, body: &[u8]) -> Option<DataKey> {
        #[cfg(test)]
        tests::RSA_DECRYPTIONS.with(|n| n.set(n.get() + 1));
        let plain = Zeroizing::new(
            self.key
                .decrypt_blinded(&mut OsRng, Oaep::new::<Sha256>(), body)
                .ok()?,
        );
        DataKey::from_bytes(&plain)
    }
}

/// Something that can unwrap a data key.
pub enum Identity {
    Rsa(Box<RsaIdentity>),
    Age {
        identities: Vec<Box<dyn age::Identity + Send + Sync>>,
        /// Fingerprints of the recipients these identities answer to, where
        /// they can be computed (X25519, ssh).
        fingerprints: Vec<[u8; 32]>,
        /// Some identity (a plugin's) has no computable fingerprint and must
        /// find its stanza by trial.
        trial: bool,
    },
}

impl Identity {
    pub fn fingerprints(&self) -> Vec<[u8; 32]> {
        match self {
            Identity::Rsa(r) => vec![r.fingerprint],
            Identity::Age { fingerprints, .. } => fingerprints.clone(),
        }
    }

    pub fn labels(&self) -> Vec<String> {
        let kind = match self {
            Identity::Rsa(_) => RSA_KIND,
            Identity::Age { .. } => AGE_KIND,
        };
        self.fingerprints()
            .iter()
            .map(|f| format!("{kind} SHA256:{}", hex::encode(f)))
            .collect()
    }

    /// Whether this identity must look for its stanza by trial (bounded by
    /// `MAX_AGE_TRIALS`) because it cannot name its recipient.
    pub(crate) fn needs_trial(&self) -> bool {
        matches!(self, Identity::Age { trial: true, .. })
    }

    pub(crate) fn matches(&self, stanza: &Stanza) -> bool {
        let kind_ok = matches!(
            (self, stanza.kind.as_str()),
            (Identity::Rsa(_), RSA_KIND) | (Identity::Age { .. }, AGE_KIND)
        );
        kind_ok && self.fingerprints().contains(&stanza.fingerprint)
    }

    /// `None`: this identity is not for this stanza. `Some(Err)`: it should be,
    /// but unwrapping failed.
    pub(crate) fn unwrap(&self, stanza: &Stanza) -> Option<Result<DataKey, ()>> {
        match (self, stanza.kind.as_str()) {
            (Identity::Rsa(r), RSA_KIND) => Some(r.decrypt(&stanza.body).ok_or(())),
            (Identity::Age { identities, .. }, AGE_KIND) => {
                #[cfg(test)]
                tests::AGE_ATTEMPTS.with(|n| n.set(n.get() + 1));
                // age tries every recipient line of the body, and an ssh-rsa
                // identity pays a private-key operation for each line whose
                // 4-byte tag matches, which anyone can compute.
                if age_recipient_lines(&stanza.body) > MAX_AGE_RECIPIENT_LINES {
                    return Some(Err(()));
                }
                let Ok(dec) = age::Decryptor::new(&stanza.body[..]) else {
                    return Some(Err(()));
                };
                let mut reader = match dec
                    .decrypt(identities.iter().map(|i| i.as_ref() as &dyn age::Identity))
                {
                    Ok(r) => r,
                    Err(age::DecryptError::NoMatchingKeys) => return None,
                    Err(_) => return Some(Err(())),
                };
                let mut plain = Zeroizing::new(Vec::with_capacity(32));
                if reader.read_to_end(&mut plain).is_err() {
                    return Some(Err(()));
                }
                Some(DataKey::from_bytes(&plain).ok_or(()))
            }
            _ => None,
        }
    }
}

/// coffer writes one recipient line per age body and age adds one "grease"
/// line; the slack allows for a future age greasing more.
const MAX_AGE_RECIPIENT_LINES: usize = 4;

/// Counts the `-> ` recipient lines of a binary age header (they end at the
/// `--- ` MAC line; base64 body lines cannot start with `-`).
fn age_recipient_lines(body: &[u8]) -> usize {
    body.split(|&b| b == b'\n')
        .take_while(|line| !line.starts_with(b"--- "))
        .filter(|line| line.starts_with(b"-> "))
        .count()
}

/// Whether `text` holds public keys and no private key: an RSA public key PEM,
/// or age/ssh recipient lines. Tells a user who passed KEY.pub as an identity
/// what is wrong, rather than that the file's permissions are too open.
pub fn is_public_key(text: &str) -> bool {
    if text.contains("PRIVATE KEY-----") || text.contains("AGE-SECRET-KEY-") {
        return false;
    }
    if text.contains("-----BEGIN PUBLIC KEY-----")
        || text.contains("-----BEGIN RSA PUBLIC KEY-----")
    {
        return true;
    }
    let mut lines = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .peekable();
    lines.peek().is_some()
        && lines
            .all(|l| l.starts_with("age1") || l.starts_with("ssh-") || l.starts_with("ecdsa-sha2-"))
}

/// Parses an identity file: RSA private key PEM (PKCS#1, PKCS#8, encrypted
/// PKCS#8), an OpenSSH private key, or an age identity file.
pub fn parse_identities(
    text: &Zeroizing<String>,
    description: &str,
    passphrase: &PassphraseFn,
) -> Result<Identity, KeyError> {
    let t = text.as_str();
    if is_public_key(t) {
        return Err(KeyError::PublicAsIdentity);
    }
    if t.contains("-----BEGIN OPENSSH PRIVATE KEY-----") {
        return ssh_identity(t, description, passphrase);
    }
    if t.contains("-----BEGIN RSA PRIVATE KEY-----") {
        if t.contains("Proc-Type: 4,ENCRYPTED") {
            return Err(KeyError::LegacyEncryptedPem);
        }
        let key = RsaPrivateKey::from_pkcs1_pem(t)
            .map_err(|e| parse_err("RSA private key (PKCS#1)", e))?;
        return Ok(Identity::Rsa(Box::new(RsaIdentity::new(key)?)));
    }
    if t.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
        let pass =
            passphrase(&format!("passphrase for {description}")).ok_or(KeyError::NoPassphrase)?;
        let key = RsaPrivateKey::from_pkcs8_encrypted_pem(t, pass.as_bytes())
            .map_err(|_| KeyError::BadPassphrase)?;
        return Ok(Identity::Rsa(Box::new(RsaIdentity::new(key)?)));
    }
    if t.contains("-----BEGIN PRIVATE KEY-----") {
        let key = RsaPrivateKey::from_pkcs8_pem(t)
            .map_err(|e| parse_err("RSA private key (PKCS#8)", e))?;
        return Ok(Identity::Rsa(Box::new(RsaIdentity::new(key)?)));
    }
    let mut fingerprints = Vec::new();
    for line in t.lines().map(str::trim) {
        if line.starts_with("AGE-SECRET-KEY-1") {
            let id =
                age::x25519::Identity::from_str(line).map_err(|e| parse_err("age identity", e))?;
            fingerprints.push(sha256(id.to_public().to_string().as_bytes()));
        }
    }
    let file = age::IdentityFile::from_buffer(t.as_bytes())
        .map_err(|e| parse_err("age identity file", e))?
        .with_callbacks(AgeCallbacks(passphrase.clone()));
    let identities = file
        .into_identities()
        .map_err(|e| KeyError::Age(e.to_string()))?;
    if identities.is_empty() {
        return Err(KeyError::Empty);
    }
    // One identity per entry of the file: any beyond the X25519 keys (a
    // plugin's) cannot name its recipient.
    let trial = identities.len() > fingerprints.len();
    Ok(Identity::Age {
        identities,
        fingerprints,
        trial,
    })
}

fn ssh_identity(
    t: &str,
    description: &str,
    passphrase: &PassphraseFn,
) -> Result<Identity, KeyError> {
    let id = age::ssh::Identity::from_buffer(t.as_bytes(), Some(description.to_owned()))
        .map_err(|e| parse_err("OpenSSH private key", e))?;
    if let age::ssh::Identity::Unsupported(k) = &id {
        return Err(parse_err("OpenSSH private key", format!("{k:?}")));
    }
    let boxed: Box<dyn age::Identity + Send + Sync> =
        Box::new(id.with_callbacks(AgeCallbacks(passphrase.clone())));
    // The public key is stored unencrypted in the file, so even a
    // passphrase-protected key names its stanza without being unlocked.
    let fingerprint = openssh_recipient(t).map(|r| sha256(r.as_bytes()));
    Ok(Identity::Age {
        identities: vec![boxed],
        fingerprints: fingerprint.into_iter().collect(),
        trial: fingerprint.is_none(),
    })
}

/// The recipient line (`ssh-ed25519 AAAA…`, no comment) of an OpenSSH private
/// key file, read from the public key blob in its unencrypted preamble
/// (PROTOCOL.key: magic, cipher, kdf, kdf options, key count, public key).
fn openssh_recipient(text: &str) -> Option<String> {
    use base64::Engine;
    const BEGIN: &str = "-----BEGIN OPENSSH PRIVATE KEY-----";
    let start = text.find(BEGIN)? + BEGIN.len();
    let end = start + text[start..].find("-----END OPENSSH PRIVATE KEY-----")?;
    // The decoded file holds the private key too (unencrypted, for keys
    // without a passphrase).
    let b64: Zeroizing<String> = Zeroizing::new(
        text[start..end]
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect(),
    );
    let raw = Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(b64.as_bytes())
            .ok()?,
    );
    let rest = raw.strip_prefix(b"openssh-key-v1\0")?;
    let (_cipher, rest) = ssh_string(rest)?;
    let (_kdf, rest) = ssh_string(rest)?;
    let (_kdf_options, rest) = ssh_string(rest)?;
    let (count, rest) = rest.split_first_chunk::<4>()?;
    // age reads only the first key of a file; so does this.
    if u32::from_be_bytes(*count) != 1 {
        return None;
    }
    let (blob, _) = ssh_string(rest)?;
    let (key_type, _) = ssh_string(blob)?;
    let key_type = std::str::from_utf8(key_type).ok()?;
    let encoded = base64::engine::general_purpose::STANDARD.encode(blob);
    Some(format!("{key_type} {encoded}"))
}

/// One length-prefixed SSH wire string and what follows it.
fn ssh_string(data: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, rest) = data.split_first_chunk::<4>()?;
    let len = usize::try_from(u32::from_be_bytes(*len)).ok()?;
    (rest.len() >= len).then(|| rest.split_at(len))
}

/// A new RSA key pair as PEM: (PKCS#8 private, SPKI public, fingerprint).
pub fn generate_rsa(bits: usize) -> Result<(Zeroizing<String>, String, [u8; 32]), KeyError> {
    if bits < MIN_RSA_BITS {
        return Err(KeyError::TooSmall { bits });
    }
    let key =
        RsaPrivateKey::new(&mut OsRng, bits).map_err(|e| parse_err("RSA key generation", e))?;
    let private = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| parse_err("RSA private key", e))?;
    let public = key
        .to_public_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(|e| parse_err("RSA public key", e))?;
    let fp = rsa_fingerprint(&key.to_public_key())?;
    Ok((Zeroizing::new(private.as_str().to_owned()), public, fp))
}

/// A new age X25519 identity: (identity file text, recipient line, fingerprint).
pub fn generate_age() -> (Zeroizing<String>, String, [u8; 32]) {
    use age::secrecy::ExposeSecret;
    let id = age::x25519::Identity::generate();
    let public = id.to_public().to_string();
    let created = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let text = Zeroizing::new(format!(
        "# created: {created}\n# public key: {public}\n{}\n",
        id.to_string().expose_secret()
    ));
    let fp = sha256(public.as_bytes());
    (text, format!("{public}\n"), fp)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    thread_local! {
        /// RSA private-key operations on this thread: the seam that lets the
        /// header tests count unwrap attempts.
        pub(crate) static RSA_DECRYPTIONS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
        /// age stanzas handed to age on this thread.
        pub(crate) static AGE_ATTEMPTS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    /// The committed test-vector key (2048 bits), so no test waits for keygen.
    pub(crate) const RSA_PEM: &str = include_str!("../../tests/vectors/keys/rsa.pem");

    pub(crate) fn rsa_identity() -> Identity {
        parse_identities(
            &Zeroizing::new(RSA_PEM.to_owned()),
            "rsa.pem",
            &no_passphrase(),
        )
        .unwrap()
    }

    pub(crate) fn rsa_recipient() -> Recipient {
        let key = RsaPrivateKey::from_pkcs8_pem(RSA_PEM).unwrap();
        Recipient::from_rsa(key.to_public_key()).unwrap()
    }

    const SSH_ED25519: &str = "-----BEGIN OPENSSH PRIVATE KEY-----
b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW
QyNTUxOQAAACClw3Ced3/Fs3w0fIJOddcgv2MOvDU7mcltk84W8+FgCAAAAIiUte7WlLXu
1gAAAAtzc2gtZWQyNTUxOQAAACClw3Ced3/Fs3w0fIJOddcgv2MOvDU7mcltk84W8+FgCA
AAAEDi7ybs6VlVGCxflFFN2IyivRpu/G3KURCDg6ov9TcXQKXDcJ53f8WzfDR8gk511yC/
Yw68NTuZyW2Tzhbz4WAIAAAABHRlc3QB
-----END OPENSSH PRIVATE KEY-----
";
    const SSH_ED25519_PUB: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKXDcJ53f8WzfDR8gk511yC/Yw68NTuZyW2Tzhbz4WAI test";
    /// Passphrase "pw".
    const SSH_ED25519_ENCRYPTED: &str = "-----BEGIN OPENSSH PRIVATE KEY-----
b3BlbnNzaC1rZXktdjEAAAAACmFlczI1Ni1jdHIAAAAGYmNyeXB0AAAAGAAAABD6GSsgNR
oHRE13Dt/pIRFXAAAAEAAAAAEAAAAzAAAAC3NzaC1lZDI1NTE5AAAAICPkbNAflWZmqgaA
SPY+7UyD8yn9JB1dCfWTs1lPZUstAAAAkEYDlEpTAmDhMGO4r+afO+xsqkljwhT6lP/yAb
44ejlcNS2UHPAj1X5Ji5fKzCO0cYZRPGzuIK9vZXsznmq8h/j92K2TUmTV549cGtKTasFJ
zUivBqgzs0Y4FTI0TuXxpmQOyN7ieSCBC5uOpVQHrUFRi8mnb2VIARlHAbgVEkqXK5SIOU
ZDEQo+pV4NEpmq0A==
-----END OPENSSH PRIVATE KEY-----
";
    const SSH_ED25519_ENCRYPTED_PUB: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICPkbNAflWZmqgaASPY+7UyD8yn9JB1dCfWTs1lPZUst";

    #[test]
    fn ssh_identities_name_their_stanza_without_trial() {
        for (private, public) in [
            (SSH_ED25519, SSH_ED25519_PUB),
            // Locked: the public key is read without asking for the passphrase.
            (SSH_ED25519_ENCRYPTED, SSH_ED25519_ENCRYPTED_PUB),
        ] {
            let r = parse_recipients(public, &no_passphrase()).unwrap();
            let stanza = r[0].wrap(&DataKey::generate()).unwrap();
            let id =
                parse_identities(&Zeroizing::new(private.into()), "ssh", &no_passphrase()).unwrap();
            assert!(!id.needs_trial());
            assert!(id.matches(&stanza), "{public}");
        }
        let id =
            parse_identities(&Zeroizing::new(SSH_ED25519.into()), "ssh", &no_passphrase()).unwrap();
        let r = parse_recipients(SSH_ED25519_PUB, &no_passphrase()).unwrap();
        let key = DataKey::generate();
        let got = id.unwrap(&r[0].wrap(&key).unwrap()).unwrap().unwrap();
        assert_eq!(got.expose(), key.expose());
    }

    #[test]
    fn rsa_unwrap_is_blinded_and_round_trips() {
        let id = rsa_identity();
        let key = DataKey::generate();
        let stanza = rsa_recipient().wrap(&key).unwrap();
        assert!(id.matches(&stanza));
        let got = id.unwrap(&stanza).unwrap().unwrap();
        assert_eq!(got.expose(), key.expose());
    }

    #[test]
    fn an_age_body_with_many_recipient_lines_is_not_handed_to_age() {
        let (id_text, public, _) = generate_age();
        let r = parse_recipients(public.trim(), &no_passphrase()).unwrap();
        let mut stanza = r[0].wrap(&DataKey::generate()).unwrap();
        assert_eq!(age_recipient_lines(&stanza.body), 2, "recipient and grease");
        // Repeat the first recipient line: a body that would have age work once per line.
        let text = stanza.body.clone();
        let first = text.windows(3).position(|w| w == b"-> ").unwrap();
        let mac = text.windows(4).position(|w| w == b"--- ").unwrap();
        let mut body = text[..mac].to_vec();
        for _ in 0..MAX_AGE_RECIPIENT_LINES {
            body.extend_from_slice(&text[first..mac]);
        }
        body.extend_from_slice(&text[mac..]);
        stanza.body = body;
        let id = parse_identities(&id_text, "test", &no_passphrase()).unwrap();
        assert!(matches!(id.unwrap(&stanza), Some(Err(()))));
    }

    #[test]
    fn public_keys_are_told_apart_from_identities() {
        let (id_text, public, _) = generate_age();
        assert!(is_public_key(&public));
        assert!(is_public_key(SSH_ED25519_PUB));
        assert!(is_public_key(
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"
        ));
        assert!(!is_public_key(&id_text));
        assert!(!is_public_key(SSH_ED25519));
        assert!(!is_public_key(RSA_PEM));
        assert!(!is_public_key(""));
        assert!(matches!(
            parse_identities(&Zeroizing::new(public), "pub", &no_passphrase()),
            Err(KeyError::PublicAsIdentity)
        ));
    }

    #[test]
    fn pem_splitting_finds_blocks_and_lines() {
        let text = "# comment\nage1abc\n-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\nssh-ed25519 X\n";
        let (blocks, lines) = split_pem(text);
        assert_eq!(blocks.len(), 1);
        assert_eq!(blocks[0].label, "PUBLIC KEY");
        let lines: Vec<_> = lines
            .into_iter()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        assert_eq!(lines, ["# comment", "age1abc", "ssh-ed25519 X"]);
    }

    #[test]
    fn age_wrap_unwrap_and_fingerprint_match() {
        let (id_text, public, fp) = generate_age();
        let r = parse_recipients(public.trim(), &no_passphrase()).unwrap();
        assert_eq!(r[0].fingerprint(), fp);
        let key = DataKey::generate();
        let stanza = r[0].wrap(&key).unwrap();
        let id = parse_identities(&id_text, "test", &no_passphrase()).unwrap();
        assert!(id.matches(&stanza));
        assert!(!id.needs_trial(), "an X25519 key names its stanza");
        let got = id.unwrap(&stanza).unwrap().unwrap();
        assert_eq!(got.expose(), key.expose());
    }

    #[test]
    fn private_key_is_refused_as_recipient() {
        let (id_text, _, _) = generate_age();
        assert!(matches!(
            parse_recipients_file(&id_text, &no_passphrase()),
            Err(KeyError::PrivateAsRecipient)
        ));
    }

    #[test]
    fn garbage_recipient_is_refused() {
        assert!(parse_recipients("hello", &no_passphrase()).is_err());
        assert!(parse_recipients("age1notvalid", &no_passphrase()).is_err());
    }
}
