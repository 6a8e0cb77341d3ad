//! `coffer keygen`: a new key pair, private part mode 0600, never overwriting.

use std::path::{Path, PathBuf};

use crate::envelope;
use crate::error::{Error, Result};
use crate::fsutil;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    Rsa {
        bits: usize,
    },
    Age,
    /// A minisign (Ed25519) key pair for signing sidecars.
    Signing,
}

pub struct Generated {
    pub private: PathBuf,
    pub public: PathBuf,
    pub kind: &'static str,
    pub fingerprint: String,
    /// For age keys, the recipient string to put in a config.
    pub recipient: Option<String>,
}

pub fn keygen(kind: KeyType, out: &Path) -> Result<Generated> {
    let mut public = out.as_os_str().to_owned();
    public.push(".pub");
    let public = PathBuf::from(public);
    // Check both names first so a clash leaves nothing behind.
    for p in [out, public.as_path()] {
        if p.symlink_metadata().is_ok() {
            return Err(Error::Fs(crate::fsutil::FsError::Exists {
                path: p.to_path_buf(),
            }));
        }
    }
    let (private_text, public_text, fp, kind_name, recipient) = match kind {
        KeyType::Rsa { bits } => {
            let (s, p, fp) = envelope::generate_rsa(bits).map_err(|e| Error::key(out, e))?;
            (s, p, Some(fp), envelope::RSA_KIND, None)
        }
        KeyType::Age => {
            let (s, p, fp) = envelope::generate_age();
            let r = p.trim().to_owned();
            (s, p, Some(fp), envelope::AGE_KIND, Some(r))
        }
        KeyType::Signing => {
            let (s, p) = crate::signing::generate().map_err(|message| Error::Signing {
                path: out.to_path_buf(),
                message,
            })?;
            let id = crate::signing::Verifier::parse(&p)
                .map_err(|message| Error::Signing {
                    path: out.to_path_buf(),
                    message,
                })?
                .key_id();
            (zeroize::Zeroizing::new(s), p, None, "minisign", Some(id))
        }
    };
    fsutil::write_new(out, private_text.as_bytes(), 0o600)?;
    fsutil::write_new(&public, public_text.as_bytes(), 0o644)?;
    Ok(Generated {
        private: out.to_path_buf(),
        public,
        kind: kind_name,
        fingerprint: fp
            .map(|fp| format!("SHA256:{}", hex::encode(fp)))
            .unwrap_or_default(),
        recipient,
    })
}
