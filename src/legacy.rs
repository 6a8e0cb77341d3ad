//! Reading backups made by the old shell recipe:
//!
//! ```sh
//! openssl rand 32 > pass
//! openssl enc -aes-256-cbc -salt -in data.tar.gz -out data.tar.gz.enc -pass file:pass
//! openssl rsautl -encrypt -pubin -inkey public-key.pem < pass > pass.enc
//! ```
//!
//! The passphrase file is RSA PKCS#1 v1.5-encrypted; the data is AES-256-CBC in
//! OpenSSL's salted format (`Salted__` + 8-byte salt), with the key and IV from
//! EVP_BytesToKey (SHA-256 since OpenSSL 1.1.0, MD5 before) or PBKDF2 with
//! `-pbkdf2`. None of it is authenticated: a wrong key or a damaged file is
//! caught only by chance (padding, or the gzip magic). A leaf module.

use std::io::{self, Read};

use aes::cipher::{BlockDecryptMut, KeyIvInit};
use rsa::{Pkcs1v15Encrypt, RsaPrivateKey};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

const SALT_MAGIC: &[u8; 8] = b"Salted__";
const BLOCK: usize = 16;

type Aes256CbcDec = cbc::Decryptor<aes::Aes256>;

#[derive(Debug, thiserror::Error)]
pub enum LegacyError {
    #[error("the passphrase file does not decrypt with this key (PKCS#1 v1.5)")]
    WrongKey,
    #[error("not an OpenSSL salted file (no \"Salted__\" header)")]
    NotSalted,
    #[error("the data is not a whole number of AES blocks: truncated or damaged")]
    Truncated,
    #[error("bad padding: wrong passphrase, wrong digest (-md), or a damaged file")]
    BadPadding,
    #[error(
        "no key derivation produced the expected content; try --md md5, --md sha256 or --pbkdf2"
    )]
    NoKdfMatched,
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// How `openssl enc` turned the passphrase into key and IV.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kdf {
    /// EVP_BytesToKey with one iteration of this digest.
    BytesToKey(Md),
    /// PBKDF2-HMAC-SHA256 with this many iterations (`-pbkdf2`, `-iter`).
    Pbkdf2(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Md {
    Sha256,
    Md5,
}

/// What `openssl … -pass file:F` takes from F: the first line (at most 1023
/// bytes, as `BIO_gets` into a 1024-byte buffer reads), without its newline,
/// and — since it is then used as a C string — only up to the first NUL byte.
/// So a binary `openssl rand 32` passphrase is often shorter than 32 bytes.
pub fn openssl_file_passphrase(raw: &[u8]) -> &[u8] {
    let limit = &raw[..raw.len().min(1023)];
    let line = match limit.iter().position(|&b| b == b'\n') {
        Some(i) => &limit[..i],
        None => limit,
    };
    match line.iter().position(|&b| b == 0) {
        Some(i) => &line[..i],
        None => line,
    }
}

/// Decrypts the wrapped passphrase file (`openssl rsautl -encrypt -pubin`).
///
/// PKCS#1 v1.5 decryption is the classic padding oracle (Bleichenbacher), and
/// the `rsa` crate's private-key operation is not constant-time
/// (RUSTSEC-2023-0071). So the operation is blinded, and every failure —
/// padding, length, a ciphertext out of range — is the one `WrongKey`, whose
/// message does not say which.
pub fn unwrap_passphrase(
    key: &RsaPrivateKey,
    wrapped: &[u8],
) -> Result<Zeroizing<Vec<u8>>, LegacyError> {
    key.decrypt_blinded(&mut rand::rngs::OsRng, Pkcs1v15Encrypt, wrapped)
        .map(Zeroizing::new)
        .map_err(|_| LegacyError::WrongKey)
}

/// EVP_BytesToKey(cipher, md, salt, pass, count = 1): D_i = md(D_{i-1} || pass || salt).
fn bytes_to_key(md: Md, pass: &[u8], salt: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(64));
    let mut prev: Vec<u8> = Vec::new();
    while out.len() < 48 {
        let d: Vec<u8> = match md {
            Md::Sha256 => Sha256::new()
                .chain_update(&prev)
                .chain_update(pass)
                .chain_update(salt)
                .finalize()
                .to_vec(),
            Md::Md5 => md5::Md5::new()
                .chain_update(&prev)
                .chain_update(pass)
                .chain_update(salt)
                .finalize()
                .to_vec(),
        };
        out.extend_from_slice(&d);
        prev = d;
    }
    out
}

/// Key (32) and IV (16) for `kdf`.
pub fn derive(kdf: Kdf, pass: &[u8], salt: &[u8]) -> Zeroizing<Vec<u8>> {
    match kdf {
        Kdf::BytesToKey(md) => bytes_to_key(md, pass, salt),
        Kdf::Pbkdf2(iter) => {
            let mut out = Zeroizing::new(vec![0u8; 48]);
            pbkdf2::pbkdf2_hmac::<Sha256>(pass, salt, iter, &mut out);
            out
        }
    }
}

/// Reads the `Salted__` header; returns the salt to derive the key with.
pub fn read_salt<R: Read>(inner: &mut R) -> Result<[u8; 8], LegacyError> {
    let mut head = [0u8; 16];
    inner
        .read_exact(&mut head)
        .map_err(|_| LegacyError::NotSalted)?;
    if &head[..8] != SALT_MAGIC {
        return Err(LegacyError::NotSalted);
    }
    let mut salt = [0u8; 8];
    salt.copy_from_slice(&head[8..]);
    Ok(salt)
}

/// Streams the plaintext of an `openssl enc -aes-256-cbc` file, removing the
/// PKCS#7 padding at the end (the last block is held back until EOF).
pub struct CbcReader<R: Read> {
    inner: R,
    dec: Aes256CbcDec,
    /// Decrypted bytes ready to hand out.
    ready: Vec<u8>,
    pos: usize,
    /// The last decrypted block, kept until we know whether it is the final one.
    held: Option<[u8; BLOCK]>,
    done: bool,
}

impl<R: Read> CbcReader<R> {
    pub fn new(inner: R, key_iv: &[u8]) -> Self {
        let dec = Aes256CbcDec::new_from_slices(&key_iv[..32], &key_iv[32..48])
            .expect("32-byte key, 16-byte IV");
        CbcReader {
            inner,
            dec,
            ready: Vec::new(),
            pos: 0,
            held: None,
            done: false,
        }
    }

    fn refill(&mut self) -> Result<(), LegacyError> {
        let mut buf = vec![0u8; 64 * 1024];
        let mut n = 0;
        while n < buf.len() {
            match self.inner.read(&mut buf[n..])? {
                0 => break,
                k => n += k,
            }
        }
        if n % BLOCK != 0 {
            return Err(LegacyError::Truncated);
        }
        self.ready.clear();
        self.pos = 0;
        for chunk in buf[..n].chunks_exact_mut(BLOCK) {
            let block = aes::Block::from_mut_slice(chunk);
            self.dec.decrypt_block_mut(block);
            if let Some(h) = self
                .held
                .replace(block.as_slice().try_into().expect("16 bytes"))
            {
                self.ready.extend_from_slice(&h);
            }
        }
        if n < buf.len() {
            // End of input: the held block is the last; strip its padding.
            self.done = true;
            let last = self.held.take().ok_or(LegacyError::Truncated)?;
            let pad = usize::from(last[BLOCK - 1]);
            if pad == 0 || pad > BLOCK || last[BLOCK - pad..].iter().any(|&b| usize::from(b) != pad)
            {
                return Err(LegacyError::BadPadding);
            }
            self.ready.extend_from_slice(&last[..BLOCK - pad]);
        }
        Ok(())
    }
}

impl<R: Read> Read for CbcReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.ready.len() {
            if self.done {
                return Ok(0);
            }
            self.refill().map_err(|e| match e {
                LegacyError::Io(e) => e,
                other => io::Error::new(io::ErrorKind::InvalidData, other),
            })?;
        }
        let n = (self.ready.len() - self.pos).min(out.len());
        out[..n].copy_from_slice(&self.ready[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Picks the key derivation by decrypting the first block: the recipe
/// encrypts a gzip file, which starts with 1f 8b 08. Returns the candidates
/// in order when the content is not gzip (the caller then relies on padding).
pub fn guess_kdf(
    pass: &[u8],
    salt: &[u8],
    first_two_blocks: &[u8],
    candidates: &[Kdf],
) -> Option<Kdf> {
    if first_two_blocks.len() < BLOCK {
        return None;
    }
    candidates.iter().copied().find(|&kdf| {
        let key_iv = derive(kdf, pass, salt);
        let mut dec = Aes256CbcDec::new_from_slices(&key_iv[..32], &key_iv[32..48]).expect("sizes");
        let mut block = aes::Block::clone_from_slice(&first_two_blocks[..BLOCK]);
        dec.decrypt_block_mut(&mut block);
        block[..3] == [0x1f, 0x8b, 0x08]
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsa::pkcs8::DecodePrivateKey;
    use rsa::traits::PublicKeyParts;

    #[test]
    fn every_unwrap_failure_is_the_same_error() {
        let key =
            RsaPrivateKey::from_pkcs8_pem(include_str!("../tests/vectors/keys/rsa.pem")).unwrap();
        let public = key.to_public_key();
        let good = public
            .encrypt(&mut rand::rngs::OsRng, Pkcs1v15Encrypt, b"passphrase\n")
            .unwrap();
        assert_eq!(
            unwrap_passphrase(&key, &good).unwrap().as_slice(),
            b"passphrase\n"
        );
        let k = public.size();
        let mut bad_padding = good.clone();
        bad_padding[k / 2] ^= 0x40;
        let cases: [(&str, Vec<u8>); 6] = [
            ("bit flipped", bad_padding),
            ("garbage", vec![0x5a; k]),
            ("empty", Vec::new()),
            ("short", good[..k - 1].to_vec()),
            ("long", [good.as_slice(), &[0]].concat()),
            ("not below the modulus", vec![0xff; k]),
        ];
        let want = LegacyError::WrongKey.to_string();
        for (what, ct) in cases {
            match unwrap_passphrase(&key, &ct) {
                Err(e @ LegacyError::WrongKey) => assert_eq!(e.to_string(), want, "{what}"),
                other => panic!("{what}: {other:?}"),
            }
        }
    }

    #[test]
    fn passphrase_reading_mimics_openssl() {
        assert_eq!(openssl_file_passphrase(b"secret\n"), b"secret");
        assert_eq!(openssl_file_passphrase(b"secret\nsecond line\n"), b"secret");
        assert_eq!(openssl_file_passphrase(b"ab\0cd\n"), b"ab");
        assert_eq!(openssl_file_passphrase(b"\nrest"), b"");
        assert_eq!(openssl_file_passphrase(b"crlf\r\n"), b"crlf\r");
        let long = vec![b'x'; 2000];
        assert_eq!(openssl_file_passphrase(&long).len(), 1023);
    }

    #[test]
    fn key_derivations_match_openssl() {
        // From `openssl enc -aes-256-cbc [-md md5|-md sha256|-pbkdf2]
        //        -pass pass:password -S 0102030405060708 -P` (OpenSSL 3.0).
        let salt = [1, 2, 3, 4, 5, 6, 7, 8];
        let cases = [
            (
                Kdf::BytesToKey(Md::Md5),
                "E7B0971E52CA5CC8D0539FB3412F6316F7BA2E6EE293D9F3457B99436B51CE02",
                "8D450E2ED75A84A923D4EAC9FE49226B",
            ),
            (
                Kdf::BytesToKey(Md::Sha256),
                "2435177F1410536BAAD2ACC155C0F94783D58384573CB0F72157443606285D3F",
                "F96EFC044E0F1613BF324245C95E7411",
            ),
            (
                Kdf::Pbkdf2(10_000),
                "F550F3F36CA07658588CBEA7D3B646C64080F8E5384C695DB2F79E46195168B8",
                "B660854E36BE6D9E7AFD642DB034050E",
            ),
        ];
        for (kdf, key, iv) in cases {
            let kiv = derive(kdf, b"password", &salt);
            assert_eq!(hex::encode_upper(&kiv[..32]), key, "{kdf:?}");
            assert_eq!(hex::encode_upper(&kiv[32..48]), iv, "{kdf:?}");
        }
    }
}
