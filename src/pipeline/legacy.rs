//! `coffer legacy-decrypt` / `legacy-import`: the old recipe's backups.

use std::fs::File;
use std::io::{BufReader, Cursor, Read};
use std::path::Path;

use crate::envelope::Identity;
use crate::error::{Error, Result};
use crate::legacy::{
    guess_kdf, openssl_file_passphrase, read_salt, unwrap_passphrase, CbcReader, Kdf, LegacyError,
    Md,
};

fn legacy_err(path: &Path, source: LegacyError) -> Error {
    Error::Legacy {
        path: path.to_path_buf(),
        source,
    }
}

/// How the data was encrypted, when not guessed.
#[derive(Debug, Clone, Copy, Default)]
pub struct KdfChoice {
    pub md: Option<Md>,
    /// `-pbkdf2`, with `-iter` (OpenSSL's default 10000).
    pub pbkdf2: Option<u32>,
}

pub type LegacyReader = CbcReader<std::io::Chain<Cursor<Vec<u8>>, BufReader<File>>>;

/// Opens the pair (data, wrapped passphrase) with an RSA identity; the reader
/// yields the original file (a tar.gz in the recipe).
pub fn open(
    identity: &Identity,
    data: &Path,
    wrapped: &Path,
    choice: KdfChoice,
) -> Result<LegacyReader> {
    let Identity::Rsa(rsa) = identity else {
        return Err(Error::Usage(
            "the legacy recipe used an RSA key: give its private key PEM with -i".into(),
        ));
    };
    let wrapped_bytes = std::fs::read(wrapped).map_err(|e| Error::io(wrapped, "read", e))?;
    let raw_pass = unwrap_passphrase(rsa.private_key(), &wrapped_bytes)
        .map_err(|source| legacy_err(wrapped, source))?;
    let pass = openssl_file_passphrase(&raw_pass);
    let mut file = BufReader::with_capacity(
        1 << 20,
        File::open(data).map_err(|e| Error::io(data, "open", e))?,
    );
    let salt = read_salt(&mut file).map_err(|source| legacy_err(data, source))?;
    // The first block decides between the key derivations (see guess_kdf).
    let mut first = Vec::with_capacity(16);
    file.by_ref()
        .take(16)
        .read_to_end(&mut first)
        .map_err(|e| Error::io(data, "read", e))?;
    let kdf = match choice {
        KdfChoice {
            pbkdf2: Some(iter), ..
        } => Kdf::Pbkdf2(iter),
        KdfChoice { md: Some(md), .. } => Kdf::BytesToKey(md),
        _ => {
            let candidates = [Kdf::BytesToKey(Md::Sha256), Kdf::BytesToKey(Md::Md5)];
            guess_kdf(pass, &salt, &first, &candidates)
                .ok_or(LegacyError::NoKdfMatched)
                .map_err(|source| legacy_err(data, source))?
        }
    };
    let key_iv = crate::legacy::derive(kdf, pass, &salt);
    Ok(CbcReader::new(Cursor::new(first).chain(file), &key_iv))
}
