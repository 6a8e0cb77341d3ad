//! One authenticated pass over a sealed backup: hash the ciphertext, open the
//! envelope, decompress, walk the tar members (joining split streams), hash
//! each logical member, hand it to a consumer, and check everything against
//! the inner manifest. `verify` and `restore` are this walk with different
//! consumers.

mod check;

use std::io::{self, BufReader, Read};
use std::path::PathBuf;

use sha2::{Digest, Sha256};

use crate::archive::{self, Compression, EntryKind, ReadError};
use crate::envelope::{self, Header, Identity, OpenError};
use crate::manifest::{self, HashKind, Hasher, Inner, INNER_NAME};

#[cfg(test)]
use check::Seen;
use check::{Checker, Logical};

/// Hashes (with the digest a sidecar names) and counts everything read
/// through it.
pub struct HashRead<R> {
    pub inner: R,
    hash: Hasher,
    /// The SHA-256 as well, where a sidecar records it beside its BLAKE3:
    /// on a thread of its own, so that checking both takes no longer than
    /// checking one.
    sha256: Option<SideSha256>,
    pub len: u64,
}

/// A SHA-256 computed on another thread from the pieces handed to it.
struct SideSha256 {
    tx: std::sync::mpsc::SyncSender<Vec<u8>>,
    worker: std::thread::JoinHandle<[u8; 32]>,
}

impl SideSha256 {
    fn start() -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(16);
        let worker = crate::pipeline::plumbing::thread::named_thread("sha256", move || {
            let mut h = Sha256::new();
            for piece in rx {
                h.update(&piece);
            }
            h.finalize().into()
        });
        SideSha256 { tx, worker }
    }

    /// The digest, or `None` if the thread failed (the check then fails).
    fn finish(self) -> Option<[u8; 32]> {
        drop(self.tx);
        self.worker.join().ok()
    }
}

impl<R: Read> HashRead<R> {
    pub fn new(inner: R, kind: HashKind) -> Self {
        HashRead {
            inner,
            hash: kind.hasher(),
            sha256: None,
            len: 0,
        }
    }

    /// Also computes the SHA-256 (see [`HashRead::hexes`]).
    #[must_use]
    pub fn and_sha256(mut self, also: bool) -> Self {
        self.sha256 = also.then(SideSha256::start);
        self
    }

    pub fn hex(self) -> String {
        self.hexes().0
    }

    /// The digest of its kind, and the SHA-256 when asked for (empty if
    /// its thread failed, which no sidecar matches).
    pub fn hexes(self) -> (String, Option<String>) {
        (
            hex::encode(self.hash.finalize()),
            self.sha256
                .map(|h| h.finish().map(hex::encode).unwrap_or_default()),
        )
    }
}

impl<R: Read> Read for HashRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let (Some(h), true) = (&self.sha256, n > 0) {
            // A closed queue means the thread failed: `hexes` says so.
            let _ = h.tx.send(buf[..n].to_vec());
        }
        self.hash.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
}

/// A member as the consumer sees it: its logical name (a split stream's
/// parts all carry the stream's name), and where it is.
pub struct Member<'a> {
    /// The name for messages and matching: a name that is not UTF-8 has its
    /// bad bytes shown as U+FFFD here.
    pub name: &'a str,
    /// The name exactly, for anything that creates a file by it.
    pub raw: &'a [u8],
    /// For a split stream, which part (0 for the first); `None` if not split.
    pub part: Option<u32>,
    pub kind: EntryKind<'a>,
    pub mode: u32,
    pub mtime: i64,
    /// The name the tar entry carries (for a part of a split stream, the
    /// part's own name, where `raw` names the stream).
    pub stored: &'a [u8],
    /// The recorded owner and group, as numbers.
    pub owner: (u32, u32),
    /// This entry's size.
    pub size: u64,
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
    /// A directory in the target that another user owns or may write (exit
    /// 2): the target is unsafe, the backup is fine.
    #[error("{}: {problem}", .path.display())]
    TargetUnsafe { path: PathBuf, problem: String },
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
            WalkError::TargetUnsafe { path, problem } => {
                crate::Error::TargetUnsafe { path, problem }
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
            // What the decompressors find wrong with what they are given:
            // after authentication, the archive is not what coffer writes.
            Err(e) if e.kind() == io::ErrorKind::InvalidData => WalkError::Integrity(e.to_string()),
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
pub fn open_backup<R: Read>(
    raw: R,
    identities: &[Identity],
) -> Result<(Header, envelope::StreamReader<R>, Compression), WalkError> {
    let (header, plain) = envelope::open(identities, raw).map_err(WalkError::from)?;
    let compression = archive_of(&header)?;
    Ok((header, plain, compression))
}

impl From<OpenError> for WalkError {
    fn from(e: OpenError) -> Self {
        match e {
            OpenError::Envelope(e) => WalkError::Envelope(e),
            OpenError::Io(e) => WalkError::Io(e.to_string()),
        }
    }
}

/// Checks that an authenticated header describes a backup archive coffer
/// reads, and returns its compression.
pub fn archive_of(header: &Header) -> Result<Compression, WalkError> {
    let compression = Compression::parse(header.metadata.compression.as_deref().unwrap_or("none"))
        .map_err(|e| WalkError::Integrity(format!("header: {e}")))?;
    match (compression, header.metadata.zstd_frame_size) {
        (_, None) => {}
        (Compression::Zstd(_), Some(n)) if crate::frames::valid_size(n) => {}
        (c, Some(n)) => {
            return Err(WalkError::Integrity(format!(
                "header: zstd frames of {n} bytes with compression {}",
                c.name()
            )))
        }
    }
    if header.metadata.content.as_deref() != Some("tar") {
        return Err(WalkError::Refused(
            "this is not a backup (no archive inside); open it with `coffer open`".into(),
        ));
    }
    Ok(compression)
}

/// Walks `input` with `identities`; `consume` sees each member's data.
/// The ciphertext is not hashed here: a walk runs over a private copy that
/// [`crate::pipeline::restore::spool`] already checked against its sidecar.
pub fn walk<R: Read + Send>(
    input: R,
    identities: &[Identity],
    consume: impl FnMut(&Member<'_>, &mut dyn Read) -> Result<(), WalkError>,
) -> Result<Walked, WalkError> {
    let (header, manifest, members) = walk_stream(input, identities, consume)?;
    Ok(Walked {
        header,
        manifest,
        members,
    })
}

fn walk_stream<R: Read + Send>(
    raw: R,
    identities: &[Identity],
    consume: impl FnMut(&Member<'_>, &mut dyn Read) -> Result<(), WalkError>,
) -> Result<(Header, Inner, usize), WalkError> {
    let (header, plain, compression) = open_backup(raw, identities)?;
    let hash = HashKind::of(header.metadata.member_hash.as_deref()).ok_or_else(|| {
        WalkError::Integrity(format!(
            "header: unknown member_hash {:?} (a newer coffer may read it)",
            header.metadata.member_hash
        ))
    })?;
    // Decryption reads ahead on a thread of its own: the AEAD runs on one
    // core while this one walks and hashes, and the zstd workers use the rest.
    let walked = crate::ahead::scoped(plain, "coffer-decrypt", 4, |plain| {
        let mut buffered = BufReader::with_capacity(1 << 20, plain);
        let dec =
            archive::decompressor(&mut buffered, compression, header.metadata.zstd_frame_size)?;
        let (mut dec, walked) = walk_archive(dec, hash, consume)?;
        // The end of the tar is not the end of the stream: read on, so the
        // final chunk is authenticated.
        io::copy(&mut dec, &mut io::sink())?;
        drop(dec);
        io::copy(&mut buffered, &mut io::sink())?;
        Ok::<_, WalkError>(walked)
    })?;
    let (manifest, members) = walked?;
    Ok((header, manifest, members))
}

/// The archive half of [`walk`], on a decompressed tar stream: hands each
/// member to `consume` and checks them all against the member lists and the
/// inner manifest. Returns the stream, positioned after the tar's end, the
/// inner manifest and the number of logical members.
pub fn walk_archive<R: Read>(
    tar: R,
    hash: HashKind,
    mut consume: impl FnMut(&Member<'_>, &mut dyn Read) -> Result<(), WalkError>,
) -> Result<(R, (Inner, usize)), WalkError> {
    let mut check = Checker {
        hash,
        ..Checker::default()
    };
    let mut manifest: Option<Inner> = None;
    // The tar reader only carries its own error type; the consumer's error is
    // kept here so that a full target disk is not reported as a damaged
    // backup.
    let mut consumer_error: Option<WalkError> = None;
    let mut drain = vec![0u8; DRAIN_SIZE];
    let read_failed = std::cell::Cell::new(false);
    let rest = archive::read_members(Watch::new(tar, &read_failed), |m| {
        let shown = String::from_utf8_lossy(&m.path).into_owned();
        let refuse = |reason: String| ReadError::Refused {
            path: shown.clone(),
            reason,
        };
        if manifest.is_some() {
            return Err(refuse(format!("member after {INNER_NAME}")));
        }
        let is_manifest = m.path == INNER_NAME.as_bytes();
        if is_manifest || m.path.starts_with(manifest::LIST_DIR.as_bytes()) {
            check.close();
            let (limit, expected) = if is_manifest {
                (check.limit(MANIFEST_BASE), INNER_NAME.to_owned())
            } else {
                (
                    check.limit(LIST_BASE),
                    manifest::list_name(check.lists.len()),
                )
            };
            if shown != expected {
                return Err(refuse(format!("expected {expected} here")));
            }
            if !matches!(m.kind, EntryKind::File) {
                return Err(refuse("not a regular file".into()));
            }
            let b = read_manifest(&mut *m.data, limit, &shown)?;
            let integrity = |slot: &mut Option<WalkError>, e: String| {
                keep(slot, &shown, WalkError::Integrity(e))
            };
            if is_manifest {
                let inner: Inner = serde_json::from_slice(&b).map_err(|e| {
                    integrity(
                        &mut consumer_error,
                        format!("{INNER_NAME} is not valid: {e}"),
                    )
                })?;
                check
                    .manifest(&inner)
                    .map_err(|e| integrity(&mut consumer_error, e))?;
                manifest = Some(inner);
            } else {
                check
                    .list(&shown, &b)
                    .map_err(|e| integrity(&mut consumer_error, e))?;
            }
            let member = Member {
                name: &shown,
                raw: &m.path,
                part: None,
                kind: m.kind,
                mode: m.mode,
                mtime: m.mtime,
                stored: &m.path,
                owner: m.owner,
                size: b.len() as u64,
            };
            consume(&member, &mut &b[..]).map_err(|e| keep(&mut consumer_error, &shown, e))?;
            return Ok(());
        }
        let (name, part) = check.start(&m.path, &m.kind).map_err(refuse)?;
        let logical = check.current.as_mut().expect("just started");
        let mut hashing = Tee {
            inner: &mut *m.data,
            logical,
        };
        let lossy = String::from_utf8_lossy(&name);
        let member = Member {
            name: &lossy,
            raw: &name,
            part,
            kind: m.kind,
            mode: m.mode,
            mtime: m.mtime,
            stored: &m.path,
            owner: m.owner,
            size: m.size,
        };
        consume(&member, &mut hashing).map_err(|e| keep(&mut consumer_error, &shown, e))?;
        drain_rest(&mut hashing, &mut drain)?;
        Ok(())
    });
    // What the consumer failed at (a load, a write) is its own; only the
    // tar reader's own error is judged by whether its stream ever failed.
    let rest = match (rest, consumer_error) {
        (Ok(watched), _) => watched.inner,
        (Err(e), consumer) => return Err(tar_verdict(e, consumer, read_failed.get())),
    };
    let manifest =
        manifest.ok_or_else(|| WalkError::Integrity(format!("the archive has no {INNER_NAME}")))?;
    Ok((rest, (manifest, check.members)))
}

/// Reads what the consumer left of a member, so that it still counts
/// toward the hash, in large pieces: BLAKE3 hashes many 1 KiB chunks at once
/// only when it is given them at once (8 KiB reads cost it six times the
/// CPU).
fn drain_rest(r: &mut impl Read, buf: &mut [u8]) -> io::Result<()> {
    loop {
        match r.read(buf) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// An I/O error from a walk whose stream never failed: the stream under the
/// tar reader gave every byte it was asked for, authenticated, so the tar
/// structure itself is wrong (a stream ending inside a header or a member,
/// a size that is no number) — damage, as in verify.
/// What the consumer failed at (a load, a write) is its own error.
fn tar_verdict(e: ReadError, consumer: Option<WalkError>, read_failed: bool) -> WalkError {
    match (consumer, WalkError::from(e)) {
        (Some(consumer), _) => consumer,
        (None, WalkError::Io(e)) if !read_failed => {
            WalkError::Integrity(format!("the archive is not a well-formed tar stream: {e}"))
        }
        (None, other) => other,
    }
}

/// A reader that notes whether its inner reader ever failed, so that an
/// error the tar reader makes of good bytes is told from one it passed on.
struct Watch<'f, R> {
    inner: R,
    failed: &'f std::cell::Cell<bool>,
}

impl<'f, R> Watch<'f, R> {
    fn new(inner: R, failed: &'f std::cell::Cell<bool>) -> Self {
        Watch { inner, failed }
    }
}

impl<R: Read> Read for Watch<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).inspect_err(|_| self.failed.set(true))
    }
}

/// How much of a member the walk reads at a time where the consumer left it.
const DRAIN_SIZE: usize = 256 << 10;

/// What MANIFEST.json or a member list may not exceed whatever the archive
/// holds: 1 GiB, about four million members of the first format, which has
/// no lists. Past it a backup is refused, not truncated.
pub const MANIFEST_CAP: u64 = 1 << 30;
/// What the manifest may take beyond its members (the sources, their
/// commands and warnings, the lists' entries): the limit that held before it
/// grew with them.
const MANIFEST_BASE: u64 = 64 << 20;
/// The most members a list or the manifest may have to account for at once:
/// coffer writes a list every 1024, and its first manifest format, which had
/// none, held about this many within [`MANIFEST_CAP`]. More is refused before
/// it can fill the reader's memory.
pub(super) const PENDING_CAP: usize = 4 << 20;
/// The longest file name (one path component) Linux file systems take.
pub(super) const NAME_MAX: usize = 255;
/// What a member list may take beyond its members.
const LIST_BASE: u64 = 64 << 10;

/// Reads a whole manifest or list, or refuses it if longer than `limit`.
fn read_manifest(data: &mut dyn Read, limit: u64, path: &str) -> Result<Vec<u8>, ReadError> {
    let mut b = Vec::new();
    data.take(limit.saturating_add(1)).read_to_end(&mut b)?;
    if b.len() as u64 > limit {
        return Err(ReadError::Refused {
            path: path.to_owned(),
            reason: format!(
                "longer than the {limit} bytes a list of this archive's members can take"
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{MemberEntry, MemberList};

    fn seen(check: &mut Checker, name: &[u8], data: &[u8]) {
        check.start(name, &EntryKind::File).unwrap();
        let l = check.current.as_mut().unwrap();
        l.hash.update(data);
        l.size += data.len() as u64;
        check.close();
    }

    fn file(path: &[u8], data: &[u8]) -> MemberEntry {
        let mut e = MemberEntry::named(path, "file", data.len() as u64);
        e.blake3 = Some(blake3::hash(data).to_hex().to_string());
        e
    }

    fn list(members: Vec<MemberEntry>) -> Vec<u8> {
        serde_json::to_vec(&MemberList {
            format: manifest::LIST_FORMAT.into(),
            members,
        })
        .unwrap()
    }

    /// A list of a thousand long names fits what the walk allows it.
    #[test]
    fn a_list_of_many_members_fits_its_limit() {
        let mut check = Checker::default();
        let mut members = Vec::new();
        for i in 0..1000 {
            let path = format!(
                "files/home/srv/app/d{:04}/{}f{i:07}",
                i / 100,
                "\u{1}".repeat(40)
            );
            seen(&mut check, path.as_bytes(), b"");
            members.push(file(path.as_bytes(), b""));
        }
        let bytes = list(members);
        let limit = check.limit(0);
        assert!(bytes.len() as u64 <= limit, "{} > {limit}", bytes.len());
        check.list("MANIFEST.d/000000.json", &bytes).unwrap();
        assert!(check.pending.is_empty());
        assert_eq!(check.members, 1000);
    }

    #[test]
    fn a_list_past_its_limit_is_refused_not_truncated() {
        let data = vec![b' '; 1000];
        assert_eq!(
            read_manifest(&mut &data[..], 1000, "x").unwrap().len(),
            1000
        );
        match read_manifest(&mut &data[..], 999, INNER_NAME) {
            Err(ReadError::Refused { path, .. }) => assert_eq!(path, INNER_NAME),
            other => panic!("{other:?}"),
        }
        let mut huge = Checker::default();
        huge.pending.push(Seen {
            name: vec![b'x'; 1 << 20],
            kind: "file",
            size: 0,
            digest: [0; 32],
            parts: u32::MAX,
        });
        assert_eq!(huge.limit(0), MANIFEST_CAP);
    }

    #[test]
    fn members_are_matched_in_order_both_ways() {
        let mut check = Checker::default();
        seen(&mut check, b"a", b"1");
        seen(&mut check, b"b", b"2");
        for (listed, problem) in [
            (
                vec![file(b"a", b"1")],
                "lists 1 members where the archive has 2",
            ),
            (
                vec![file(b"b", b"2"), file(b"a", b"1")],
                "lists b where the archive has a",
            ),
            (vec![file(b"a", b"1"), file(b"b", b"3")], "b: blake3"),
            (
                vec![file(b"a", b"1"), file(b"b", b"2"), file(b"c", b"")],
                "lists 3 members",
            ),
        ] {
            let e = check.matches("L", &listed).unwrap_err();
            assert!(e.contains(problem), "{e}");
        }
        check
            .matches("L", &[file(b"a", b"1"), file(b"b", b"2")])
            .unwrap();
    }

    #[test]
    fn names_that_differ_only_in_bad_bytes_stay_apart() {
        let mut check = Checker::default();
        seen(&mut check, b"files/x/\xff", b"1");
        seen(&mut check, b"files/x/\xfe", b"2");
        check
            .matches(
                "L",
                &[file(b"files/x/\xff", b"1"), file(b"files/x/\xfe", b"2")],
            )
            .unwrap();
        let e = check
            .matches(
                "L",
                &[file(b"files/x/\xfe", b"2"), file(b"files/x/\xff", b"1")],
            )
            .unwrap_err();
        assert!(e.contains("where the archive has"), "{e}");
    }

    #[test]
    fn members_with_no_list_for_them_are_bounded() {
        let mut check = Checker {
            cap: 3,
            ..Checker::default()
        };
        for n in [b"a", b"b", b"c"] {
            seen(&mut check, n, b"");
        }
        let e = check.start(b"d", &EntryKind::File).unwrap_err();
        assert!(
            e.contains("more than 3 members without a member list"),
            "{e}"
        );
        check
            .list(
                "MANIFEST.d/000000.json",
                &list(vec![file(b"a", b""), file(b"b", b""), file(b"c", b"")]),
            )
            .unwrap();
        check.start(b"d", &EntryKind::File).unwrap();
    }

    #[test]
    fn digests_are_of_the_archive_s_kind() {
        let mut check = Checker::default();
        seen(&mut check, b"a", b"1");
        let mut other = MemberEntry::named(b"a", "file", 1);
        other.sha256 = Some(hex::encode(Sha256::digest(b"1")));
        let e = check.matches("L", &[other]).unwrap_err();
        assert!(
            e.contains("a digest other than the archive's blake3"),
            "{e}"
        );
        // Archives of earlier versions: SHA-256.
        let mut old = Checker {
            hash: HashKind::Sha256,
            ..Checker::default()
        };
        seen(&mut old, b"a", b"1");
        let mut entry = MemberEntry::named(b"a", "file", 1);
        entry.sha256 = Some(hex::encode(Sha256::digest(b"1")));
        old.matches("L", &[entry]).unwrap();
    }

    #[test]
    fn only_file_names_may_be_other_than_utf8() {
        let mut check = Checker::default();
        check.start(b"files/t/\xff", &EntryKind::File).unwrap();
        let e = check
            .start(b"mysql/\xff.sql", &EntryKind::File)
            .unwrap_err();
        assert!(e.contains("not UTF-8 outside files/"), "{e}");
    }

    #[test]
    fn a_second_member_of_one_name_is_refused() {
        let mut check = Checker::default();
        seen(&mut check, b"files/a", b"");
        seen(&mut check, b"files/b", b"");
        let e = check.start(b"files/a", &EntryKind::File).unwrap_err();
        assert!(e.contains("second member"), "{e}");
    }

    #[test]
    fn parts_must_follow_one_another() {
        let mut check = Checker::default();
        assert_eq!(
            check
                .start(b"mysql/x.sql.000000", &EntryKind::File)
                .unwrap(),
            (b"mysql/x.sql".to_vec(), Some(0))
        );
        check
            .start(b"mysql/x.sql.000001", &EntryKind::File)
            .unwrap();
        assert!(check
            .start(b"mysql/x.sql.000003", &EntryKind::File)
            .is_err());
        check.start(b"mysql/y.sql", &EntryKind::File).unwrap();
        // A part of a stream already closed does not reopen it.
        assert!(check
            .start(b"mysql/x.sql.000002", &EntryKind::File)
            .is_err());
        check.close();
        assert_eq!(check.pending[0].parts, 2);
        assert_eq!(check.pending[1].parts, 0);
    }

    #[test]
    fn the_manifest_must_record_the_lists_read() {
        let mut check = Checker::default();
        seen(&mut check, b"a", b"1");
        let bytes = list(vec![file(b"a", b"1")]);
        check.list("MANIFEST.d/000000.json", &bytes).unwrap();
        seen(&mut check, b"b", b"2");
        let mut inner = crate::archive::tests::inner();
        inner.format = manifest::INNER_FORMAT_V2.into();
        inner.members = vec![file(b"b", b"2")];
        let e = check.manifest(&inner).unwrap_err();
        assert!(e.contains("member lists"), "{e}");
        inner.member_lists.clone_from(&check.lists);
        check.manifest(&inner).unwrap();
        inner.format = manifest::INNER_FORMAT.into();
        assert!(check.manifest(&inner).is_err());
    }

    mod prop {
        use super::*;
        use crate::archive::{ArchiveWriter, Compression, EntryMeta};
        use proptest::prelude::*;

        /// Writes `names` (files of a byte each) with a list every `every`.
        fn archive(names: &[Vec<u8>], every: usize) -> Vec<u8> {
            let mut a = ArchiveWriter::new(Vec::new(), Compression::None, 0)
                .unwrap()
                .list_every(every);
            for n in names {
                let e = EntryMeta {
                    path: n,
                    kind: EntryKind::File,
                    mode: 0o644,
                    uid: 0,
                    gid: 0,
                    mtime: 0,
                    size: 1,
                };
                a.append_entry(&e, &mut &n[..1]).unwrap();
            }
            a.finish(&mut crate::archive::tests::inner()).unwrap()
        }

        fn names() -> impl Strategy<Value = Vec<Vec<u8>>> {
            // Any bytes but NUL and '/', under files/: names tar can carry.
            proptest::collection::btree_set(
                proptest::collection::vec(1u8..=255, 1..40).prop_filter("no slash", |v| {
                    !v.contains(&b'/') && v != b"." && v != b".."
                }),
                1..60,
            )
            .prop_map(|set| {
                set.into_iter()
                    .map(|n| [b"files/t/".as_slice(), &n].concat())
                    .collect()
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]

            /// Whatever the names and however the lists fall, what the
            /// writer writes the reader takes, every name as it was.
            #[test]
            fn what_is_written_is_read_back(names in names(), every in 1usize..8) {
                let bytes = archive(&names, every);
                let mut seen = Vec::new();
                let (_, (inner, count)) = walk_archive(&bytes[..], HashKind::Blake3, |m, _| {
                    if !m.raw.starts_with(b"MANIFEST") {
                        seen.push(m.raw.to_vec());
                    }
                    Ok(())
                })
                .unwrap();
                prop_assert_eq!(count, names.len());
                prop_assert_eq!(&seen, &names);
                prop_assert_eq!(inner.member_lists.len(), names.len() / every);
            }

            /// A member list that leaves one member out, or names another,
            /// fails the walk.
            #[test]
            fn a_list_that_differs_is_refused(names in names(), drop_at in 0usize..1000) {
                prop_assume!(names.len() >= 2);
                let bytes = archive(&names, names.len());
                // One list, then MANIFEST.json with no members: edit the list.
                let mut check = Checker::default();
                for n in &names {
                    check.start(n, &EntryKind::File).unwrap();
                    let l = check.current.as_mut().unwrap();
                    l.hash.update(&n[..1]);
                    l.size += 1;
                }
                check.close();
                let mut listed: Vec<MemberEntry> = names
                    .iter()
                    .map(|n| {
                        file(n, &n[..1])
                    })
                    .collect();
                prop_assert!(check.matches("L", &listed).is_ok());
                let i = drop_at % listed.len();
                listed.remove(i);
                prop_assert!(check.matches("L", &listed).is_err());
                prop_assert!(walk_archive(&bytes[..], HashKind::Blake3, |_, _| Ok(())).is_ok());
            }
        }
    }
}
