//! Wrapping the data key for recipients and unwrapping it with identities.
//!
//! RSA: RSA-OAEP with SHA-256 for both the digest and MGF1 and an empty label,
//! exactly what `openssl pkeyutl -pkeyopt rsa_padding_mode:oaep -pkeyopt
//! rsa_oaep_md:sha256 -pkeyopt rsa_mgf1_md:sha256` produces and consumes.
//! age: the data key is the plaintext of a complete age file, so every age
//! recipient type (X25519, ssh, plugins) works and `age -d` can unwrap it.

mod files;

use std::io::{Read, Write};
use std::str::FromStr;
use std::sync::Arc;

use age::secrecy::SecretString;
use rand::rngs::OsRng;
use rsa::pkcs8::EncodePublicKey;
use rsa::traits::PublicKeyParts;
use rsa::{Oaep, RsaPrivateKey, RsaPublicKey};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::header::Stanza;
use super::{DataKey, EnvelopeError};
use crate::exit::Class;

#[cfg(test)]
use files::split_pem;
use files::{age_recipient_lines, MAX_AGE_RECIPIENT_LINES};
pub use files::{
    generate_age, generate_rsa, is_public_key, parse_identities, parse_recipients,
    parse_recipients_file,
};

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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rsa::pkcs8::DecodePrivateKey;

    thread_local! {
        /// RSA private-key operations on this thread: the seam that lets the
        /// header tests count unwrap attempts.
        pub(crate) static RSA_DECRYPTIONS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
        /// age stanzas handed to age on this thread.
        pub(crate) static AGE_ATTEMPTS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    /// The committed test-vector key (2048 bits), so no test waits for keygen.
    pub(crate) const RSA_PEM: &str = include_str!("../../../tests/vectors/keys/rsa.pem");

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
