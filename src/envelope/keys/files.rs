//! Keys as text: PEM blocks (SPKI, PKCS#1, PKCS#8), age recipient and
//! identity files, OpenSSH keys, and new key pairs written out.

use std::str::FromStr;

use rand::rngs::OsRng;
use rsa::pkcs1::{DecodeRsaPrivateKey, DecodeRsaPublicKey};
use rsa::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding,
};
use rsa::{RsaPrivateKey, RsaPublicKey};
use zeroize::Zeroizing;

use super::{
    parse_err, rsa_fingerprint, sha256, AgeCallbacks, Identity, KeyError, PassphraseFn, Recipient,
    RsaIdentity, MIN_RSA_BITS,
};

/// One PEM block found in a text, with its label.
pub(super) struct PemBlock<'a> {
    pub(super) label: &'a str,
    pub(super) text: &'a str,
}

/// Splits a text into PEM blocks and the lines outside them.
pub(super) fn split_pem(text: &str) -> (Vec<PemBlock<'_>>, Vec<&str>) {
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

/// coffer writes one recipient line per age body and age adds one "grease"
/// line; the slack allows for a future age greasing more.
pub(super) const MAX_AGE_RECIPIENT_LINES: usize = 4;

/// Counts the `-> ` recipient lines of a binary age header (they end at the
/// `--- ` MAC line; base64 body lines cannot start with `-`).
pub(super) fn age_recipient_lines(body: &[u8]) -> usize {
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
