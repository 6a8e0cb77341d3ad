//! The sealed file format v1 (docs/FORMAT.md): a MAC'd header carrying the per-file
//! data key wrapped for each recipient, followed by an AES-256-GCM STREAM payload.
//!
//! This module is a leaf: it knows nothing of backups, sources or stores.

mod header;
mod keys;
mod stream;

use std::io;

use hkdf::Hkdf;
use rand::rngs::OsRng;
use rand::RngCore;
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

pub use header::{
    Header, Metadata, Stanza, MAX_AGE_TRIALS, MAX_HEADER_BODY, MAX_RSA_STANZAS, MAX_STANZAS,
};
pub use keys::{
    generate_age, generate_rsa, is_public_key, no_passphrase, parse_identities, parse_recipients,
    parse_recipients_file, Identity, KeyError, PassphraseFn, Recipient, RsaIdentity, AGE_KIND,
    MIN_RSA_BITS, RSA_KIND,
};
pub use stream::{
    StreamReader, StreamWriter, DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE, TAG_LEN,
};

use crate::exit::Class;

/// The random per-file key. Zeroized on drop; never leaves the process except
/// wrapped for a recipient.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct DataKey([u8; 32]);

impl DataKey {
    pub fn generate() -> Self {
        let mut k = [0u8; 32];
        OsRng.fill_bytes(&mut k);
        DataKey(k)
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        <[u8; 32]>::try_from(bytes).ok().map(DataKey)
    }

    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }

    fn derive(&self, salt: &[u8], info: &[u8]) -> Zeroizing<[u8; 32]> {
        let hk = Hkdf::<Sha256>::new(Some(salt), &self.0);
        let mut out = Zeroizing::new([0u8; 32]);
        // 32 bytes is far below HKDF-SHA-256's 255*32 limit; expand cannot fail.
        hk.expand(info, out.as_mut())
            .expect("HKDF output length is valid");
        out
    }

    /// The header MAC key (docs/FORMAT.md section 3).
    pub fn header_key(&self, salt: &[u8]) -> Zeroizing<[u8; 32]> {
        self.derive(salt, b"coffer/v1/header")
    }

    /// The payload key (docs/FORMAT.md section 3).
    pub fn payload_key(&self, salt: &[u8]) -> Zeroizing<[u8; 32]> {
        self.derive(salt, b"coffer/v1/payload")
    }
}

/// Everything that can be wrong with a sealed file, or with sealing one.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("not a coffer file (bad magic bytes)")]
    NotCoffer,
    #[error("unsupported format version {0} (this coffer reads version 1)")]
    UnsupportedVersion(u16),
    /// Version 0 was never written: the field is damaged, not from the future.
    #[error("invalid format version 0 (versions start at 1): the header is damaged")]
    InvalidVersion,
    #[error("header is truncated")]
    HeaderTruncated,
    #[error("header is malformed: {0}")]
    HeaderMalformed(String),
    #[error("header authentication failed: the header was modified")]
    HeaderMac,
    #[error("recipient stanza {index} ({kind} {fingerprint}) is damaged and cannot be unwrapped")]
    StanzaDamaged {
        index: usize,
        kind: String,
        fingerprint: String,
    },
    #[error("no identity given can open this file; it was sealed to: {}", .wanted.join(", "))]
    NoMatchingIdentity { wanted: Vec<String> },
    /// No identity matched and a stanza's kind is not one this reader knows:
    /// a damaged kind would otherwise pass for a wrong key (docs/FORMAT.md 2.3).
    #[error("no identity given can open this file, and recipient stanza {index} has kind {kind:?}, which this coffer does not know: the header looks damaged or tampered with")]
    UnknownStanzaKind { index: usize, kind: String },
    #[error("truncated: the file ends right after the header (byte offset {offset}); there is no payload")]
    NoPayload { offset: u64 },
    #[error("truncated: the stream ends inside chunk {index} (byte offset {offset})")]
    TruncatedInChunk { index: u64, offset: u64 },
    #[error("chunk {index} (byte offset {offset}) failed authentication")]
    BadChunk { index: u64, offset: u64 },
    #[error("truncated: the stream ends after chunk {last_index} (byte offset {offset}) without a final chunk")]
    Truncated { last_index: u64, offset: u64 },
    #[error("trailing data after the final chunk {index} (byte offset {offset})")]
    TrailingData { index: u64, offset: u64 },
    #[error("chunk {index} is an empty final chunk, which only an empty payload may have")]
    EmptyFinalChunk { index: u64 },
    #[error("chunk counter overflow")]
    CounterOverflow,
    #[error("no recipients given")]
    NoRecipients,
    #[error("{count} recipients ({kind}); a file holds at most {max}")]
    TooManyRecipients {
        kind: &'static str,
        count: usize,
        max: usize,
    },
    #[error("cannot wrap the data key for {recipient}: {reason}")]
    Wrap { recipient: String, reason: String },
}

impl EnvelopeError {
    pub fn class(&self) -> Class {
        match self {
            EnvelopeError::NoMatchingIdentity { .. } | EnvelopeError::Wrap { .. } => Class::Key,
            EnvelopeError::NoRecipients | EnvelopeError::TooManyRecipients { .. } => Class::Usage,
            _ => Class::Integrity,
        }
    }

    pub fn hint(&self) -> Option<&'static str> {
        Some(match self {
            EnvelopeError::NotCoffer => "check the file name; `coffer inspect FILE` tells what a file is",
            EnvelopeError::UnsupportedVersion(_) => {
                "the file was written by a newer coffer; upgrade coffer to open it"
            }
            EnvelopeError::NoMatchingIdentity { .. } => {
                "pass the private key whose public key fingerprint is listed (-i KEY); `coffer inspect` shows them"
            }
            EnvelopeError::NoRecipients => "give at least one recipient with -r or -R",
            EnvelopeError::TooManyRecipients { .. } => {
                "seal to fewer keys, e.g. one shared backup key instead of one per person"
            }
            EnvelopeError::UnknownStanzaKind { .. } => {
                "use another copy of this backup; if it was made by a newer coffer, upgrade coffer"
            }
            EnvelopeError::Wrap { .. } => "check the recipient (and that its age plugin is installed)",
            EnvelopeError::CounterOverflow => return None,
            _ => {
                "the file is corrupted, truncated or was tampered with; use another copy of this backup"
            }
        })
    }

    /// Wraps the error in an `io::Error` so it can cross a `Read`/`Write` boundary.
    pub(crate) fn into_io(self) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, self)
    }

    /// The reverse of [`into_io`](Self::into_io): recovers an envelope error from
    /// an `io::Error`, or hands the original back.
    pub fn from_io(err: io::Error) -> Result<Self, io::Error> {
        if err
            .get_ref()
            .is_some_and(<dyn std::error::Error + Send + Sync>::is::<EnvelopeError>)
        {
            match err
                .into_inner()
                .map(<dyn std::error::Error + Send + Sync>::downcast::<EnvelopeError>)
            {
                Some(Ok(env)) => Ok(*env),
                // Unreachable: checked with `is` above.
                _ => Err(io::Error::other("lost envelope error")),
            }
        } else {
            Err(err)
        }
    }
}

/// Seals a stream: writes the header for `recipients` then returns a writer
/// that encrypts everything written to it. Call [`StreamWriter::finish`].
pub fn seal<W: io::Write>(
    recipients: &[Recipient],
    metadata: Metadata,
    chunk_size: u32,
    mut out: W,
) -> Result<StreamWriter<W>, SealError> {
    if recipients.is_empty() {
        return Err(SealError::Envelope(EnvelopeError::NoRecipients));
    }
    let key = DataKey::generate();
    let mut salt = [0u8; 32];
    OsRng.fill_bytes(&mut salt);
    // The reader refuses two stanzas for one key (docs/FORMAT.md 2), and a key
    // named twice (say in the config and again with -r) gains nothing from a
    // second copy, so repeats are dropped.
    let mut seen = std::collections::BTreeSet::new();
    let stanzas = recipients
        .iter()
        .filter(|r| seen.insert((r.kind(), r.fingerprint())))
        .map(|r| r.wrap(&key))
        .collect::<Result<Vec<_>, _>>()
        .map_err(SealError::Envelope)?;
    let header = Header::new(chunk_size, salt, metadata, stanzas).map_err(SealError::Envelope)?;
    let bytes = header.to_bytes(&key);
    out.write_all(&bytes).map_err(SealError::Io)?;
    let payload_key = key.payload_key(&salt);
    Ok(StreamWriter::new(out, &payload_key, chunk_size))
}

/// Errors while sealing: either the envelope or the output.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error(transparent)]
    Envelope(EnvelopeError),
    #[error(transparent)]
    Io(io::Error),
}

/// Opens a sealed stream: reads and authenticates the header with one of
/// `identities`, then returns the header and a reader of the plaintext.
pub fn open<R: io::Read>(
    identities: &[Identity],
    mut input: R,
) -> Result<(Header, StreamReader<R>), OpenError> {
    let (header, raw) = Header::read(&mut input)?;
    let key = header.unwrap_key(identities, &raw)?;
    let payload_key = key.payload_key(&header.salt);
    let offset = raw.len() as u64;
    let reader = StreamReader::new(input, &payload_key, header.chunk_size, offset);
    Ok((header, reader))
}

/// [`open`] for a private copy held in a file, without the plaintext:
/// authenticates the header and every chunk of the payload, on `workers`
/// threads, and returns the header. The file's cursor is not moved.
pub fn authenticate(
    identities: &[Identity],
    file: &std::fs::File,
    workers: usize,
) -> Result<Header, OpenError> {
    let (header, raw) = Header::read(&mut io::BufReader::new(stream::At { file, pos: 0 }))?;
    let key = header.unwrap_key(identities, &raw)?;
    let payload_key = key.payload_key(&header.salt);
    stream::authenticate_file(
        file,
        &payload_key,
        header.chunk_size,
        raw.len() as u64,
        workers,
    )?;
    Ok(header)
}

/// Errors while opening: the envelope, or reading the input.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    #[error(transparent)]
    Io(io::Error),
}

impl From<io::Error> for OpenError {
    fn from(e: io::Error) -> Self {
        match EnvelopeError::from_io(e) {
            Ok(env) => OpenError::Envelope(env),
            Err(e) => OpenError::Io(e),
        }
    }
}
