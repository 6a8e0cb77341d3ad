//! Optional signatures on sidecars, in minisign's format (Ed25519 over the
//! BLAKE2b-512 of the file, plus a signed trusted comment), so that the
//! standard `minisign -V` checks a backup as well as `coffer verify` does.
//!
//! The sidecar records the ciphertext's size and SHA-256, so a good signature
//! on it vouches for the whole `.coffer` file. A leaf: bytes in, bytes out.

use std::io::Cursor;

use minisign::{PublicKey, PublicKeyBox, SecretKey, SecretKeyBox, SignatureBox};

/// The detached signature beside a sidecar: `NAME.coffer.json.minisig`.
pub const SIGNATURE_SUFFIX: &str = ".minisig";

/// A signing key, loaded once per run.
pub struct Signer {
    sk: SecretKey,
    pk: PublicKey,
}

/// Why a signature was not accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("not a minisign signature: {0}")]
    Malformed(String),
    #[error("signed by key {found}, not by the configured key {expected}")]
    OtherKey { found: String, expected: String },
    #[error("the signature does not match: the file was changed or forged")]
    Mismatch,
    #[error("the signature was made for another file: its trusted comment is {found:?}, not {expected:?}")]
    OtherFile { found: String, expected: String },
}

/// The trusted comment coffer signs a sidecar (or a prune record) with: its
/// file name, so that a signature moved to another file is refused.
pub fn trusted_comment(file_name: &str) -> String {
    let what = if file_name.ends_with(".pruned") {
        "prune record"
    } else {
        "sidecar"
    };
    format!("coffer {what} {file_name}")
}

fn key_id(keynum: &[u8]) -> String {
    // minisign prints the little-endian key number as one hex integer.
    let mut id = keynum.to_vec();
    id.reverse();
    hex::encode_upper(id)
}

/// A new unencrypted key pair (the nightly job runs unattended): the secret
/// and public key files' contents, in minisign's formats.
pub fn generate() -> Result<(String, String), String> {
    let kp = minisign::KeyPair::generate_unencrypted_keypair().map_err(|e| e.to_string())?;
    let sk = kp
        .sk
        .to_box(Some("coffer signing key (minisign format, unencrypted)"))
        .map_err(|e| e.to_string())?
        .into_string();
    let pk = kp.pk.to_box().map_err(|e| e.to_string())?.into_string();
    Ok((sk, pk))
}

impl Signer {
    /// Parses a minisign secret key file's contents. Encrypted keys are
    /// refused: a timer cannot type a password.
    pub fn parse(text: &str) -> Result<Self, String> {
        let sk = SecretKeyBox::from_string(text)
            .and_then(SecretKeyBox::into_unencrypted_secret_key)
            .map_err(|e| {
                format!("not an unencrypted minisign secret key ({e}); make one with `coffer keygen --type signing`")
            })?;
        let pk = PublicKey::from_secret_key(&sk).map_err(|e| e.to_string())?;
        Ok(Signer { sk, pk })
    }

    pub fn key_id(&self) -> String {
        key_id(self.pk.keynum())
    }

    /// A verifier for this key's own signatures.
    pub fn verifier(&self) -> Result<Verifier, String> {
        let text = self.pk.to_box().map_err(|e| e.to_string())?.into_string();
        Verifier::parse(&text)
    }

    /// The `.minisig` file's contents for `data`. The trusted comment (which
    /// the signature covers) names the file, so a signature cannot be moved
    /// to another backup's sidecar unnoticed by a reader of `minisign -V`.
    pub fn sign(&self, data: &[u8], file_name: &str) -> Result<String, String> {
        let trusted = trusted_comment(file_name);
        let sig = minisign::sign(
            Some(&self.pk),
            &self.sk,
            Cursor::new(data),
            Some(&trusted),
            Some(&format!("signature from coffer key {}", self.key_id())),
        )
        .map_err(|e| e.to_string())?;
        Ok(sig.into_string())
    }
}

/// A checked signature's trusted comment must name the sidecar it signs.
pub fn check_comment(found: &str, file_name: &str) -> Result<(), SignatureError> {
    let expected = trusted_comment(file_name);
    if found == expected {
        Ok(())
    } else {
        Err(SignatureError::OtherFile {
            found: found.to_owned(),
            expected,
        })
    }
}

/// A public key to check signatures with.
pub struct Verifier {
    pk: PublicKey,
}

impl Verifier {
    pub fn parse(text: &str) -> Result<Self, String> {
        // Accept the two-line file and the bare base64 line minisign's `-P` takes.
        let pk = PublicKeyBox::from_string(text)
            .and_then(PublicKeyBox::into_public_key)
            .or_else(|_| {
                let line = text
                    .lines()
                    .map(str::trim)
                    .find(|l| !l.is_empty() && !l.starts_with("untrusted comment:"))
                    .unwrap_or("");
                PublicKey::from_base64(line)
            })
            .map_err(|e| format!("not a minisign public key: {e}"))?;
        Ok(Verifier { pk })
    }

    pub fn key_id(&self) -> String {
        key_id(self.pk.keynum())
    }

    /// Checks `signature` (a `.minisig` file's contents) over `data`, the
    /// sidecar stored as `file_name`: the signature, and the trusted comment
    /// that names the file.
    pub fn verify_for(
        &self,
        data: &[u8],
        signature: &str,
        file_name: &str,
    ) -> Result<(), SignatureError> {
        check_comment(&self.verify(data, signature)?, file_name)
    }

    /// Checks `signature` over `data`; returns its trusted comment (which
    /// the signature covers), for [`check_comment`].
    pub fn verify(&self, data: &[u8], signature: &str) -> Result<String, SignatureError> {
        let sig = SignatureBox::from_string(signature)
            .map_err(|e| SignatureError::Malformed(e.to_string()))?;
        if sig.keynum() != self.pk.keynum() {
            return Err(SignatureError::OtherKey {
                found: key_id(sig.keynum()),
                expected: self.key_id(),
            });
        }
        // Legacy (non-prehashed) signatures are refused: coffer never makes them.
        minisign::verify(&self.pk, &sig, Cursor::new(data), true, false, false)
            .map_err(|_| SignatureError::Mismatch)?;
        // Covered by the signature (checked above), so only the signer
        // could have written it.
        sig.trusted_comment()
            .map_err(|e| SignatureError::Malformed(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_and_verify_round_trip_and_refuse_changes() {
        let (sk, pk) = generate().unwrap();
        let signer = Signer::parse(&sk).unwrap();
        let verifier = Verifier::parse(&pk).unwrap();
        assert_eq!(signer.key_id(), verifier.key_id());
        let sig = signer
            .sign(b"{\"sha256\":\"ab\"}", "x.coffer.json")
            .unwrap();
        assert_eq!(
            verifier.verify_for(b"{\"sha256\":\"ab\"}", &sig, "x.coffer.json"),
            Ok(())
        );
        assert_eq!(
            verifier.verify_for(b"{\"sha256\":\"ac\"}", &sig, "x.coffer.json"),
            Err(SignatureError::Mismatch)
        );
        // Another key's signature names both keys.
        let (sk2, _) = generate().unwrap();
        let other = Signer::parse(&sk2).unwrap().sign(b"{}", "x").unwrap();
        assert!(matches!(
            verifier.verify_for(b"{}", &other, "x"),
            Err(SignatureError::OtherKey { .. })
        ));
        assert!(matches!(
            verifier.verify_for(b"{}", "garbage", "x"),
            Err(SignatureError::Malformed(_))
        ));
    }

    #[test]
    fn a_tampered_trusted_comment_is_refused() {
        let (sk, pk) = generate().unwrap();
        let sig = Signer::parse(&sk)
            .unwrap()
            .sign(b"data", "a.coffer.json")
            .unwrap();
        let forged = sig.replace("a.coffer.json", "b.coffer.json");
        assert_ne!(sig, forged);
        assert_eq!(
            Verifier::parse(&pk)
                .unwrap()
                .verify_for(b"data", &forged, "b.coffer.json"),
            Err(SignatureError::Mismatch)
        );
    }

    /// A good signature over another backup's sidecar bytes, put beside
    /// this one under its name, names the other file in its trusted
    /// comment: refused, as `minisign -V` shows it.
    #[test]
    fn a_signature_made_for_another_file_is_refused() {
        let (sk, pk) = generate().unwrap();
        let sig = Signer::parse(&sk)
            .unwrap()
            .sign(b"data", "a.coffer.json")
            .unwrap();
        let v = Verifier::parse(&pk).unwrap();
        assert_eq!(v.verify_for(b"data", &sig, "a.coffer.json"), Ok(()));
        assert!(matches!(
            v.verify_for(b"data", &sig, "b.coffer.json"),
            Err(SignatureError::OtherFile { .. })
        ));
    }

    #[test]
    fn public_key_as_a_bare_line_is_accepted_and_junk_refused() {
        let (_, pk) = generate().unwrap();
        let line = pk.lines().nth(1).unwrap();
        assert!(Verifier::parse(line).is_ok());
        assert!(Verifier::parse("untrusted comment: x\nnot base64").is_err());
        assert!(Signer::parse(&pk).is_err());
    }
}
