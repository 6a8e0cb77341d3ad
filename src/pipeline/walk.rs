//! One authenticated pass over a sealed backup: hash the ciphertext, open the
//! envelope, decompress, walk the tar members (joining split streams), hash
//! each logical member, hand it to a consumer, and check everything against
//! the inner manifest. `verify` and `restore` are this walk with different
//! consumers.

use std::collections::BTreeMap;
use std::io::{self, BufReader, Read};
use std::path::PathBuf;

use sha2::{Digest, Sha256};

use crate::archive::{self, Compression, EntryKind, ReadError};
use crate::envelope::{self, Header, Identity, OpenError};
use crate::manifest::{Inner, INNER_NAME};

/// Hashes and counts everything read through it.
pub struct HashRead<R> {
    pub inner: R,
    hash: Sha256,
    pub len: u64,
}

impl<R: Read> HashRead<R> {
    pub fn new(inner: R) -> Self {
        HashRead {
            inner,
            hash: Sha256::new(),
            len: 0,
        }
    }

    pub fn hex(self) -> String {
        hex::encode(self.hash.finalize())
    }
}

impl<R: Read> Read for HashRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
}

/// A member as the consumer sees it: its logical name (a split stream's
/// parts all carry the stream's name), and where it is.
pub struct Member<'a> {
    pub name: &'a str,
    /// For a split stream, which part (0 for the first); `None` if not split.
    pub part: Option<u32>,
    pub kind: EntryKind<'a>,
    pub mode: u32,
    pub mtime: i64,
}

/// Why a walk failed.
#[derive(Debug, thiserror::Error)]
pub enum WalkError {
    /// The file is damaged, tampered or not what its manifest says (exit 3).
    #[error("{0}")]
    Integrity(String),
    #[error(transparent)]
    Envelope(envelope::EnvelopeError),
    /// A read or write failed (exit 1).
    #[error("{0}")]
    Io(String),
    /// The consumer refused a member (e.g. a path outside the target): the
    /// archive itself is hostile or malformed (exit 3).
    #[error("{0}")]
    Refused(String),
    /// The restore target already had something where a member goes (exit
    /// 2): the backup is fine, the target is in the way.
    #[error("{}: {problem}", .path.display())]
    TargetExists {
        path: PathBuf,
        problem: &'static str,
    },
    /// Writing to the restore target failed (exit 1): a full disk or missing
    /// permission says nothing about the backup.
    #[error("{}: cannot {op}: {source}", .path.display())]
    Target {
        path: PathBuf,
        op: &'static str,
        source: io::Error,
    },
}

impl WalkError {
    /// The crate error for a walk over `what` (a file or backup name).
    pub fn into_error(self, what: &str) -> crate::Error {
        match self {
            WalkError::Envelope(env) => crate::Error::envelope(what, env),
            WalkError::Integrity(message) | WalkError::Refused(message) => {
                crate::Error::Integrity {
                    what: what.to_owned(),
                    message,
                }
            }
            WalkError::Io(message) => crate::Error::Store {
                store: what.to_owned(),
                message,
            },
            WalkError::TargetExists { path, problem } => {
                crate::Error::TargetExists { path, problem }
            }
            WalkError::Target { path, op, source } => crate::Error::Target { path, op, source },
        }
    }

    /// A write to the restore target at `path` failed.
    pub fn target(path: impl Into<PathBuf>, op: &'static str, source: io::Error) -> Self {
        WalkError::Target {
            path: path.into(),
            op,
            source,
        }
    }
}

impl From<io::Error> for WalkError {
    fn from(e: io::Error) -> Self {
        match envelope::EnvelopeError::from_io(e) {
            Ok(env) => WalkError::Envelope(env),
            Err(e) => WalkError::Io(e.to_string()),
        }
    }
}

impl From<ReadError> for WalkError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Io(e) => e.into(),
            ReadError::Refused { .. } => WalkError::Refused(e.to_string()),
        }
    }
}

#[derive(Debug)]
pub struct Walked {
    pub header: Header,
    pub manifest: Inner,
    /// Logical members checked against the manifest.
    pub members: usize,
    pub ciphertext_len: u64,
    pub ciphertext_sha256: String,
}

/// A logical member being read: its parts' bytes all feed one hash.
struct Logical {
    hash: Sha256,
    size: u64,
    next_part: Option<u32>,
}

/// Feeds what is read into a logical member's running hash and size.
struct Tee<'a, R> {
    inner: R,
    logical: &'a mut Logical,
}

impl<R: Read> Read for Tee<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.logical.hash.update(&buf[..n]);
        self.logical.size += n as u64;
        Ok(n)
    }
}

/// Opens the envelope and checks that it holds a backup archive.
fn open_backup<R: Read>(
    raw: R,
    identities: &[Identity],
) -> Result<(Header, envelope::StreamReader<R>, Compression), WalkError> {
    let (header, plain) = envelope::open(identities, raw).map_err(|e| match e {
        OpenError::Envelope(e) => WalkError::Envelope(e),
        OpenError::Io(e) => WalkError::Io(e.to_string()),
    })?;
    let compression = Compression::parse(header.metadata.compression.as_deref().unwrap_or("none"))
        .map_err(|e| WalkError::Integrity(format!("header: {e}")))?;
    if header.metadata.content.as_deref() != Some("tar") {
        return Err(WalkError::Refused(
            "this is not a backup (no archive inside); open it with `coffer open`".into(),
        ));
    }
    Ok((header, plain, compression))
}

/// Walks `input` with `identities`; `consume` sees each member's data.
pub fn walk<R: Read>(
    input: R,
    identities: &[Identity],
    mut consume: impl FnMut(&Member<'_>, &mut dyn Read) -> Result<(), WalkError>,
) -> Result<Walked, WalkError> {
    let mut raw = HashRead::new(input);
    let (header, mut plain, compression) = open_backup(&mut raw, identities)?;
    let mut seen: BTreeMap<String, Logical> = BTreeMap::new();
    let mut manifest_bytes: Option<Vec<u8>> = None;
    // The tar reader only carries its own error type; the consumer's error is
    // kept here so that a full target disk is not reported as a damaged
    // backup.
    let mut consumer_error: Option<WalkError> = None;
    {
        let mut buffered = BufReader::with_capacity(1 << 20, &mut plain);
        let dec = archive::decompressor(&mut buffered, compression)?;
        let dec = archive::read_members(dec, |m| {
            if manifest_bytes.is_some() {
                return Err(ReadError::Refused {
                    path: m.path,
                    reason: format!("member after {INNER_NAME}"),
                });
            }
            if m.path == INNER_NAME {
                let mut b = Vec::new();
                m.data.take(64 << 20).read_to_end(&mut b)?;
                let member = Member {
                    name: INNER_NAME,
                    part: None,
                    kind: m.kind,
                    mode: m.mode,
                    mtime: m.mtime,
                };
                consume(&member, &mut &b[..]).map_err(|e| keep(&mut consumer_error, &m.path, e))?;
                manifest_bytes = Some(b);
                return Ok(());
            }
            let (name, part) = match archive::split_part(&m.path) {
                Some((base, n)) => (base.to_owned(), Some(n)),
                None => (m.path.clone(), None),
            };
            let entry = seen.entry(name.clone()).or_insert_with(|| Logical {
                hash: Sha256::new(),
                size: 0,
                next_part: part.map(|_| 0),
            });
            if let Some(n) = part {
                if entry.next_part != Some(n) {
                    return Err(ReadError::Refused {
                        path: m.path,
                        reason: format!("part {n} out of order"),
                    });
                }
                entry.next_part = Some(n + 1);
            }
            let mut hashing = Tee {
                inner: &mut *m.data,
                logical: entry,
            };
            let member = Member {
                name: &name,
                part,
                kind: m.kind,
                mode: m.mode,
                mtime: m.mtime,
            };
            consume(&member, &mut hashing).map_err(|e| keep(&mut consumer_error, &m.path, e))?;
            // Whatever the consumer skipped still counts toward the hash.
            io::copy(&mut hashing, &mut io::sink())?;
            Ok(())
        });
        let mut dec = dec.map_err(|e| consumer_error.take().unwrap_or_else(|| e.into()))?;
        // The end of the tar is not the end of the stream: read on, so the
        // final chunk is authenticated and the whole ciphertext hashed.
        io::copy(&mut dec, &mut io::sink())?;
        drop(dec);
        io::copy(&mut buffered, &mut io::sink())?;
    }
    io::copy(&mut plain, &mut io::sink())?;
    drop(plain);
    io::copy(&mut raw, &mut io::sink())?;
    let ciphertext_len = raw.len;
    let ciphertext_sha256 = raw.hex();

    let bytes = manifest_bytes
        .ok_or_else(|| WalkError::Integrity(format!("the archive has no {INNER_NAME}")))?;
    let manifest: Inner = serde_json::from_slice(&bytes)
        .map_err(|e| WalkError::Integrity(format!("{INNER_NAME} is not valid: {e}")))?;
    let members = check_against(&manifest, &seen)?;
    Ok(Walked {
        header,
        manifest,
        members,
        ciphertext_len,
        ciphertext_sha256,
    })
}

/// Keeps the consumer's error for the caller and gives the tar reader one of
/// its own to stop on.
fn keep(slot: &mut Option<WalkError>, path: &str, e: WalkError) -> ReadError {
    let stop = ReadError::Refused {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    *slot = Some(e);
    stop
}

/// Every member the manifest lists is present with its size and hash, and
/// nothing else is.
fn check_against(manifest: &Inner, seen: &BTreeMap<String, Logical>) -> Result<usize, WalkError> {
    let mut problems = Vec::new();
    for m in &manifest.members {
        let Some(l) = seen.get(&m.path) else {
            problems.push(format!(
                "{} is in the manifest but not in the archive",
                m.path
            ));
            continue;
        };
        if l.size != m.size {
            problems.push(format!(
                "{}: {} bytes, the manifest says {}",
                m.path, l.size, m.size
            ));
        }
        let digest = hex::encode(l.hash.clone().finalize());
        if let Some(want) = &m.sha256 {
            if &digest != want {
                problems.push(format!(
                    "{}: SHA-256 {digest} differs from the manifest's {want}",
                    m.path
                ));
            }
        }
    }
    for name in seen.keys() {
        if !manifest.members.iter().any(|m| &m.path == name) {
            problems.push(format!("{name} is in the archive but not in the manifest"));
        }
    }
    if problems.is_empty() {
        Ok(manifest.members.len())
    } else {
        Err(WalkError::Integrity(problems.join("; ")))
    }
}
