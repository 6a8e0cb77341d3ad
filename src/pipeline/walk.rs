//! One authenticated pass over a sealed backup: hash the ciphertext, open the
//! envelope, decompress, walk the tar members (joining split streams), hash
//! each logical member, hand it to a consumer, and check everything against
//! the inner manifest. `verify` and `restore` are this walk with different
//! consumers.

use std::collections::{BTreeMap, HashSet};
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
                let b = read_manifest(&mut *m.data, manifest_limit(&seen))?;
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

/// What MANIFEST.json may not exceed whatever the archive holds: 1 GiB,
/// about four million members. Past it a backup is refused, not truncated.
pub const MANIFEST_CAP: u64 = 1 << 30;
/// What the manifest may take beyond its members (the sources, their
/// commands and warnings): the limit that held before it grew with them.
const MANIFEST_BASE: u64 = 64 << 20;

/// The most MANIFEST.json may take once the walk has seen `seen`: the
/// manifest is the last member, so every entry it can honestly list is
/// known. Each entry gets room for its path escaped at the worst (six bytes
/// a byte, `\u001f`), its fixed fields pretty-printed, and the names of its
/// parts. Memory stays proportional to the archive, never to what a hostile
/// manifest claims.
fn manifest_limit(seen: &BTreeMap<String, Logical>) -> u64 {
    let members: u64 = seen
        .iter()
        .map(|(name, l)| {
            let escaped = 6 * name.len() as u64;
            let parts = u64::from(l.next_part.unwrap_or(0));
            512 + escaped + parts * (escaped + 32)
        })
        .sum();
    MANIFEST_BASE.saturating_add(members).min(MANIFEST_CAP)
}

/// Reads the whole manifest, or refuses it if it is longer than `limit`.
fn read_manifest(data: &mut dyn Read, limit: u64) -> Result<Vec<u8>, ReadError> {
    let mut b = Vec::new();
    data.take(limit.saturating_add(1)).read_to_end(&mut b)?;
    if b.len() as u64 > limit {
        return Err(ReadError::Refused {
            path: INNER_NAME.to_owned(),
            reason: format!(
                "longer than the {limit} bytes a manifest of this archive's members can take"
            ),
        });
    }
    Ok(b)
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
    // A set, not a scan per name: archives hold hundreds of thousands.
    let mut listed = HashSet::with_capacity(manifest.members.len());
    for m in &manifest.members {
        if !listed.insert(m.path.as_str()) {
            problems.push(format!("{} is listed twice in the manifest", m.path));
        }
    }
    for name in seen.keys() {
        if !listed.contains(name.as_str()) {
            problems.push(format!("{name} is in the archive but not in the manifest"));
        }
    }
    if problems.is_empty() {
        Ok(manifest.members.len())
    } else {
        Err(WalkError::Integrity(problems.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::MemberEntry;

    fn logical(parts: Option<u32>) -> Logical {
        Logical {
            hash: Sha256::new(),
            size: 0,
            next_part: parts,
        }
    }

    fn manifest(members: Vec<MemberEntry>) -> Inner {
        Inner {
            format: crate::manifest::INNER_FORMAT.into(),
            name: "j-20261123T000100Z".into(),
            job: "j".into(),
            created: "2026-11-23T00:01:00.000Z".into(),
            tool_version: "0".into(),
            host: "h".into(),
            sources: vec![],
            members,
        }
    }

    fn file(path: &str) -> MemberEntry {
        MemberEntry {
            path: path.into(),
            kind: "file".into(),
            size: 0,
            sha256: Some(hex::encode(Sha256::digest(b""))),
            parts: vec![],
        }
    }

    /// About 400 000 files make a manifest past the 64 MiB that once was
    /// the fixed limit; what the walk has seen must admit it.
    #[test]
    fn a_manifest_of_many_members_fits_its_limit() {
        let n = 400_000;
        let mut seen = BTreeMap::new();
        let mut members = Vec::with_capacity(n);
        for i in 0..n {
            let path = format!("files/home/srv/app/d{:04}/f{i:07}", i / 1000);
            members.push(file(&path));
            seen.insert(path, logical(None));
        }
        let json = serde_json::to_vec_pretty(&manifest(members)).unwrap();
        assert!(json.len() > 64 << 20, "{} bytes", json.len());
        let limit = manifest_limit(&seen);
        assert!(json.len() as u64 <= limit, "{} > {limit}", json.len());
        let read = read_manifest(&mut &json[..], limit).unwrap();
        assert_eq!(read.len(), json.len());
    }

    #[test]
    fn escaped_names_and_parts_fit_too() {
        let name: String = (1u8..32).map(char::from).collect::<String>().repeat(8);
        let stream = "command/\u{1}\u{2}";
        let mut split = file(stream);
        split.parts = (0..10).map(|n| format!("{stream}.{n:06}")).collect();
        let mut seen = BTreeMap::new();
        seen.insert(name.clone(), logical(None));
        seen.insert(stream.to_owned(), logical(Some(10)));
        let json = serde_json::to_vec_pretty(&manifest(vec![file(&name), split])).unwrap();
        let limit = manifest_limit(&seen) - MANIFEST_BASE;
        assert!(json.len() as u64 <= limit, "{} > {limit}", json.len());
    }

    #[test]
    fn a_manifest_past_its_limit_is_refused_not_truncated() {
        let data = vec![b' '; 1000];
        assert_eq!(read_manifest(&mut &data[..], 1000).unwrap().len(), 1000);
        match read_manifest(&mut &data[..], 999) {
            Err(ReadError::Refused { path, .. }) => assert_eq!(path, INNER_NAME),
            other => panic!("{other:?}"),
        }
        let mut huge = BTreeMap::new();
        huge.insert("x".repeat(1 << 20), logical(Some(u32::MAX)));
        assert_eq!(manifest_limit(&huge), MANIFEST_CAP);
    }

    #[test]
    fn members_are_matched_both_ways() {
        let mut seen = BTreeMap::new();
        seen.insert("a".to_owned(), logical(None));
        seen.insert("extra".to_owned(), logical(None));
        let m = manifest(vec![file("a"), file("a"), file("missing")]);
        let Err(WalkError::Integrity(problems)) = check_against(&m, &seen) else {
            panic!("accepted");
        };
        assert!(problems.contains("a is listed twice"), "{problems}");
        assert!(problems.contains("missing is in the manifest but not in the archive"));
        assert!(problems.contains("extra is in the archive but not in the manifest"));
        seen.remove("extra");
        let m = manifest(vec![file("a")]);
        assert_eq!(check_against(&m, &seen).unwrap(), 1);
    }
}
