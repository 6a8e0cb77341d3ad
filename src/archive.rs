//! The archive stage: a tar stream, compressed, written into any `io::Write`.
//!
//! tar needs each member's size before its data, but a dump's size is not known
//! until it ends. A stream is therefore buffered in parts of at most
//! [`PART_SIZE`]: a stream that fits in one part becomes one ordinary member;
//! a longer one becomes consecutive members `NAME.000000`, `NAME.000001`, …
//! whose concatenation is the stream (`cat NAME.* > NAME` after `tar -x`).
//! Memory stays bounded by one part whatever the dump size, and nothing is
//! spooled to disk.
//!
//! A leaf: knows nothing of sources, envelopes or stores.

use std::io::{self, Read, Write};

use std::collections::HashSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::manifest::{self, HashKind, Hasher, Inner, ListEntry, MemberEntry, MemberList};

/// The most a stream member buffers in memory.
pub const PART_SIZE: usize = 8 * 1024 * 1024;

/// `zstd` (level 3), `zstd:N`, `gzip` (level 6), `gzip:N`, or `none`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Zstd(i32),
    Gzip(u32),
    None,
}

impl Default for Compression {
    fn default() -> Self {
        Compression::Zstd(3)
    }
}

impl Compression {
    pub fn name(self) -> &'static str {
        match self {
            Compression::Zstd(_) => "zstd",
            Compression::Gzip(_) => "gzip",
            Compression::None => "none",
        }
    }

    /// Bytes of tar per zstd frame in what coffer writes, for the header;
    /// `None` where the compression is not cut into frames.
    pub fn frame_size(self) -> Option<u64> {
        match self {
            Compression::Zstd(_) => Some(crate::frames::FRAME_SIZE as u64),
            Compression::Gzip(_) | Compression::None => None,
        }
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        let (algo, level) = match s.split_once(':') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let level_in = |lo: i64, hi: i64, default: i64| -> Result<i64, String> {
            level.map_or(Ok(default), |l| {
                l.parse::<i64>()
                    .ok()
                    .filter(|n| (lo..=hi).contains(n))
                    .ok_or_else(|| format!("compression level must be {lo}..={hi}, not {l:?}"))
            })
        };
        match algo {
            "zstd" => Ok(Compression::Zstd(
                i32::try_from(level_in(1, 22, 3)?).unwrap_or(3),
            )),
            "gzip" => Ok(Compression::Gzip(
                u32::try_from(level_in(1, 9, 6)?).unwrap_or(6),
            )),
            "none" if level.is_none() => Ok(Compression::None),
            _ => Err(format!(
                "unknown compression {s:?}: use zstd, zstd:LEVEL, gzip, gzip:LEVEL or none"
            )),
        }
    }
}

/// A compressor over `W`.
pub enum Compressor<W: Write> {
    Zstd(crate::frames::FrameWriter<W>),
    Gzip(flate2::write::GzEncoder<W>),
    None(W),
}

impl<W: Write> Compressor<W> {
    pub fn new(w: W, c: Compression) -> io::Result<Self> {
        Ok(match c {
            // Independent frames, compressed on every core while this
            // thread seals and stores what is done, so that a restore can
            // decompress on every core too (crate::frames).
            Compression::Zstd(level) => Compressor::Zstd(crate::frames::FrameWriter::new(
                w,
                level,
                crate::frames::FRAME_SIZE,
                crate::frames::workers(),
            )?),
            Compression::Gzip(level) => Compressor::Gzip(flate2::write::GzEncoder::new(
                w,
                flate2::Compression::new(level),
            )),
            Compression::None => Compressor::None(w),
        })
    }

    pub fn finish(self) -> io::Result<W> {
        match self {
            Compressor::Zstd(e) => e.finish(),
            Compressor::Gzip(e) => e.finish(),
            Compressor::None(mut w) => {
                w.flush()?;
                Ok(w)
            }
        }
    }
}

impl<W: Write> Write for Compressor<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Compressor::Zstd(e) => e.write(buf),
            Compressor::Gzip(e) => e.write(buf),
            Compressor::None(w) => w.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Compressor::Zstd(e) => e.flush(),
            Compressor::Gzip(e) => e.flush(),
            Compressor::None(w) => w.flush(),
        }
    }
}

/// A decompressor over `R`. `frame_size` is what the header says of zstd
/// frames: with it, frames are decompressed on every core; without it (a
/// backup of an earlier version, one frame), on this thread.
pub fn decompressor<'a, R: io::BufRead + 'a>(
    r: R,
    c: Compression,
    frame_size: Option<u64>,
) -> io::Result<Box<dyn Read + 'a>> {
    Ok(match (c, frame_size) {
        (Compression::Zstd(_), Some(size)) => Box::new(crate::frames::FrameReader::new(
            r,
            usize::try_from(size).unwrap_or(usize::MAX),
            crate::frames::workers(),
        )?),
        (Compression::Zstd(_), None) => Box::new(zstd::stream::read::Decoder::with_buffer(r)?),
        (Compression::Gzip(_), _) => Box::new(flate2::bufread::MultiGzDecoder::new(r)),
        (Compression::None, _) => Box::new(r),
    })
}

/// What the archive recorded about one logical member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRecord {
    /// The member's name, exactly (file names need not be UTF-8).
    pub path: Vec<u8>,
    /// `file`, `dir`, `symlink` or `stream`.
    pub kind: &'static str,
    pub size: u64,
    /// The [`MEMBER_HASH`] digest of the member's whole content (of all
    /// parts, concatenated), hex.
    pub digest: Option<String>,
    /// For a stream split into parts, the tar member names in order.
    pub parts: Vec<String>,
}

impl MemberRecord {
    pub fn entry(&self) -> MemberEntry {
        let mut e = MemberEntry::named(&self.path, self.kind, self.size);
        MEMBER_HASH.set(&mut e, self.digest.clone());
        e.parts.clone_from(&self.parts);
        e
    }
}

/// The digest archives are written with (the header says so, as
/// `member_hash`).
pub const MEMBER_HASH: HashKind = HashKind::Blake3;

/// A member list is written once this many members are pending…
pub const LIST_MEMBERS: usize = 1024;
/// …or once their names take this many bytes.
const LIST_NAME_BYTES: usize = 1 << 20;

/// A 128-bit digest of a member name: what is kept of each name to refuse a
/// second member of the same name, 16 bytes a member however long the name.
pub fn name_key(name: &[u8]) -> [u8; 16] {
    let d = Sha256::digest(name);
    let mut k = [0u8; 16];
    k.copy_from_slice(&d[..16]);
    k
}

/// What the writer produced: every member counted, the last ones listed.
#[derive(Debug, Default)]
pub struct Totals {
    pub members: u64,
    pub bytes: u64,
}

/// Metadata of an entry of known size.
#[derive(Debug, Clone)]
pub struct EntryMeta<'a> {
    pub path: &'a [u8],
    pub kind: EntryKind<'a>,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub size: u64,
}

#[derive(Debug, Clone, Copy)]
pub enum EntryKind<'a> {
    File,
    Dir,
    Symlink(&'a std::path::Path),
}

/// Hashes and counts what passes through.
struct Hashing<R> {
    inner: R,
    hash: Hasher,
    len: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
}

/// Writes members, and every [`LIST_MEMBERS`] of them a member list
/// (`MANIFEST.d/NNNNNN.json`) of what came since the previous one; the inner
/// manifest lists the rest. Memory holds one list's worth of records and a
/// 16-byte key per name, however many members there are.
pub struct ArchiveWriter<W: Write> {
    tar: tar::Builder<Compressor<W>>,
    /// Members since the last list.
    pending: Vec<MemberRecord>,
    pending_name_bytes: usize,
    lists: Vec<ListEntry>,
    names: HashSet<[u8; 16]>,
    totals: Totals,
    part: Vec<u8>,
    mtime: u64,
    list_members: usize,
}

/// Writes one entry as coffer writes every entry: a GNU header with the
/// entry's mode, owner and mtime, a file's data (which must be `e.size`
/// bytes), a symlink's target byte for byte (in a GNU long-link entry first
/// when it is longer than the header's field, as GNU tar writes it).
pub fn put_entry<W: Write>(
    tar: &mut tar::Builder<W>,
    e: &EntryMeta<'_>,
    data: &mut dyn Read,
) -> io::Result<()> {
    let path = Path::new(OsStr::from_bytes(e.path));
    let mut h = tar::Header::new_gnu();
    h.set_mode(e.mode);
    h.set_uid(u64::from(e.uid));
    h.set_gid(u64::from(e.gid));
    h.set_mtime(u64::try_from(e.mtime).unwrap_or(0));
    match e.kind {
        EntryKind::Dir => {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_size(0);
            tar.append_data(&mut h, path, io::empty())
        }
        EntryKind::Symlink(target) => {
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            // The tar crate tidies a target as a path ("./a//./b" becomes
            // "./a/b"); a link is restored byte for byte, so its bytes go in
            // as they are.
            let bytes = std::os::unix::ffi::OsStrExt::as_bytes(target.as_os_str());
            let gnu = h
                .as_gnu_mut()
                .ok_or_else(|| io::Error::other("not a GNU tar header"))?;
            let room = gnu.linkname.len();
            if bytes.len() > room {
                let mut long = tar::Header::new_gnu();
                let name = b"././@LongLink";
                if let Some(g) = long.as_gnu_mut() {
                    g.name[..name.len()].copy_from_slice(name);
                }
                long.set_mode(0o644);
                long.set_uid(0);
                long.set_gid(0);
                long.set_mtime(0);
                long.set_size(bytes.len() as u64 + 1);
                long.set_entry_type(tar::EntryType::GNULongLink);
                long.set_cksum();
                tar.append(&long, bytes.chain(&[0u8][..]))?;
            }
            let n = bytes.len().min(room);
            gnu.linkname[..n].copy_from_slice(&bytes[..n]);
            tar.append_data(&mut h, path, io::empty())
        }
        EntryKind::File => {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(e.size);
            tar.append_data(&mut h, path, data)
        }
    }
}

fn header(size: u64, mode: u32, mtime: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(size);
    h.set_mode(mode);
    h.set_mtime(mtime);
    h.set_uid(0);
    h.set_gid(0);
    h
}

impl<W: Write> ArchiveWriter<W> {
    /// `mtime` stamps members that have no time of their own (streams).
    pub fn new(out: W, compression: Compression, mtime: u64) -> io::Result<Self> {
        let mut tar = tar::Builder::new(Compressor::new(out, compression)?);
        tar.mode(tar::HeaderMode::Complete);
        tar.follow_symlinks(false);
        Ok(ArchiveWriter {
            tar,
            pending: Vec::new(),
            pending_name_bytes: 0,
            lists: Vec::new(),
            names: HashSet::new(),
            totals: Totals::default(),
            part: Vec::new(),
            mtime,
            list_members: LIST_MEMBERS,
        })
    }

    /// Lists every `n` members instead of every [`LIST_MEMBERS`] (tests).
    #[doc(hidden)]
    #[must_use]
    pub fn list_every(mut self, n: usize) -> Self {
        self.list_members = n.max(1);
        self
    }

    pub fn totals(&self) -> &Totals {
        &self.totals
    }

    /// Refuses a second member of one name: a reader would refuse the
    /// archive, so the backup fails now, naming it, instead.
    fn claim(&mut self, name: &[u8]) -> io::Result<()> {
        if self.names.insert(name_key(name)) {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{}: a second member of this name",
                    String::from_utf8_lossy(name)
                ),
            ))
        }
    }

    /// Records a finished member, and writes a member list when enough are
    /// pending.
    fn record(&mut self, r: MemberRecord) -> io::Result<()> {
        self.totals.members += 1;
        self.totals.bytes += r.size;
        self.pending_name_bytes += r.path.len() + r.parts.iter().map(String::len).sum::<usize>();
        self.pending.push(r);
        if self.pending.len() >= self.list_members || self.pending_name_bytes >= LIST_NAME_BYTES {
            self.write_list()?;
        }
        Ok(())
    }

    fn write_list(&mut self) -> io::Result<()> {
        let list = MemberList {
            format: manifest::LIST_FORMAT.into(),
            members: self.pending.iter().map(MemberRecord::entry).collect(),
        };
        let bytes = serde_json::to_vec(&list).map_err(io::Error::other)?;
        let path = manifest::list_name(self.lists.len());
        let mut h = header(bytes.len() as u64, 0o600, self.mtime);
        self.tar.append_data(&mut h, &path, &bytes[..])?;
        self.lists.push(ListEntry {
            path,
            members: self.pending.len() as u64,
            sha256: hex::encode(Sha256::digest(&bytes)),
        });
        self.pending.clear();
        self.pending_name_bytes = 0;
        Ok(())
    }

    /// Appends a stream of unknown length, split into parts if it is long.
    pub fn append_stream(&mut self, path: &str, data: &mut dyn Read) -> io::Result<()> {
        self.claim(path.as_bytes())?;
        let mut hash = MEMBER_HASH.hasher();
        let mut total = 0u64;
        let mut parts: Vec<String> = Vec::new();
        self.part.clear();
        loop {
            let full = fill(data, &mut self.part, PART_SIZE)?;
            hash.update(&self.part);
            total += self.part.len() as u64;
            if !full && parts.is_empty() {
                // The whole stream fit in one part: an ordinary member.
                let mut h = header(self.part.len() as u64, 0o600, self.mtime);
                self.tar.append_data(&mut h, path, &self.part[..])?;
                break;
            }
            let name = format!("{path}.{:06}", parts.len());
            let mut h = header(self.part.len() as u64, 0o600, self.mtime);
            self.tar.append_data(&mut h, &name, &self.part[..])?;
            parts.push(name);
            if !full {
                break;
            }
        }
        // Release a large buffer between members; the next dump may be small.
        self.part = Vec::new();
        self.record(MemberRecord {
            path: path.as_bytes().to_vec(),
            kind: "stream",
            size: total,
            digest: Some(hex::encode(hash.finalize())),
            parts,
        })
    }

    /// Appends an entry of known size; `data` must yield exactly `size` bytes.
    pub fn append_entry(&mut self, e: &EntryMeta<'_>, data: &mut dyn Read) -> io::Result<()> {
        self.claim(e.path)?;
        let (kind, digest) = match e.kind {
            EntryKind::Dir => {
                put_entry(&mut self.tar, e, &mut io::empty())?;
                ("dir", None)
            }
            EntryKind::Symlink(_) => {
                put_entry(&mut self.tar, e, &mut io::empty())?;
                ("symlink", None)
            }
            EntryKind::File => {
                let mut hashing = Hashing {
                    inner: data.take(e.size),
                    hash: MEMBER_HASH.hasher(),
                    len: 0,
                };
                put_entry(&mut self.tar, e, &mut hashing)?;
                if hashing.len != e.size {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "{}: expected {} bytes, got {}",
                            String::from_utf8_lossy(e.path),
                            e.size,
                            hashing.len
                        ),
                    ));
                }
                ("file", Some(hex::encode(hashing.hash.finalize())))
            }
        };
        self.record(MemberRecord {
            path: e.path.to_vec(),
            kind,
            size: e.size,
            digest,
            parts: Vec::new(),
        })
    }

    /// Completes `inner` with the members (those after the last list) and
    /// the lists, appends it as the last member, and closes the archive.
    pub fn finish(mut self, inner: &mut Inner) -> io::Result<W> {
        inner.members = self.pending.iter().map(MemberRecord::entry).collect();
        inner.member_lists = std::mem::take(&mut self.lists);
        inner.format = if inner.member_lists.is_empty() {
            manifest::INNER_FORMAT
        } else {
            manifest::INNER_FORMAT_V2
        }
        .into();
        let bytes = serde_json::to_vec_pretty(&inner).map_err(io::Error::other)?;
        let mut h = header(bytes.len() as u64, 0o600, self.mtime);
        self.tar
            .append_data(&mut h, manifest::INNER_NAME, &bytes[..])?;
        self.tar.into_inner()?.finish()
    }
}

/// Fills `buf` with up to `limit` bytes; returns whether it is full (more may follow).
fn fill(r: &mut dyn Read, buf: &mut Vec<u8>, limit: usize) -> io::Result<bool> {
    buf.clear();
    // Exactly one part: read_to_end would otherwise grow the buffer past it.
    buf.reserve_exact(limit);
    r.take(limit as u64).read_to_end(buf)?;
    Ok(buf.len() == limit)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn inner() -> Inner {
        Inner::new(
            "j-20261123T000100Z",
            "j",
            "2026-11-23T00:01:00.000Z",
            "h",
            vec![],
        )
    }

    fn read_back(bytes: &[u8], c: Compression) -> Vec<(String, Vec<u8>)> {
        let dec = decompressor(bytes, c, c.frame_size()).unwrap();
        let mut ar = tar::Archive::new(dec);
        ar.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let p = e.path().unwrap().display().to_string();
                let mut d = Vec::new();
                e.read_to_end(&mut d).unwrap();
                (p, d)
            })
            .collect()
    }

    #[test]
    fn small_stream_is_one_member_large_is_split() {
        for c in [
            Compression::Zstd(3),
            Compression::Gzip(6),
            Compression::None,
        ] {
            let mut a = ArchiveWriter::new(Vec::new(), c, 0).unwrap();
            a.append_stream("mysql/small.sql", &mut &b"hello"[..])
                .unwrap();
            let big: Vec<u8> = (0..PART_SIZE * 2 + 5)
                .map(|i| u8::try_from(i % 251).unwrap())
                .collect();
            a.append_stream("mysql/big.sql", &mut &big[..]).unwrap();
            let rec = a.pending.last().unwrap().clone();
            assert_eq!(
                rec.parts,
                [
                    "mysql/big.sql.000000",
                    "mysql/big.sql.000001",
                    "mysql/big.sql.000002"
                ]
            );
            assert_eq!(rec.size, big.len() as u64);
            assert_eq!(
                rec.digest.as_deref(),
                Some(blake3::hash(&big).to_hex().as_str())
            );
            let out = a.finish(&mut inner()).unwrap();
            let members = read_back(&out, c);
            assert_eq!(members[0], ("mysql/small.sql".into(), b"hello".to_vec()));
            let joined: Vec<u8> = members[1..4].iter().flat_map(|m| m.1.clone()).collect();
            assert_eq!(joined, big);
            assert_eq!(members.last().unwrap().0, "MANIFEST.json");
        }
    }

    #[test]
    fn exact_part_size_stream_is_split_into_one_full_part_and_an_empty_one() {
        let mut a = ArchiveWriter::new(Vec::new(), Compression::None, 0).unwrap();
        let data = vec![7u8; PART_SIZE];
        a.append_stream("x", &mut &data[..]).unwrap();
        let rec = a.pending.last().unwrap().clone();
        assert_eq!(rec.parts.len(), 2);
        assert_eq!(rec.size, PART_SIZE as u64);
    }

    #[test]
    fn short_entry_data_is_an_error() {
        let mut a = ArchiveWriter::new(Vec::new(), Compression::None, 0).unwrap();
        let e = EntryMeta {
            path: b"f",
            kind: EntryKind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 0,
            size: 10,
        };
        assert!(a.append_entry(&e, &mut &b"abc"[..]).is_err());
    }

    #[test]
    fn link_targets_keep_their_bytes() {
        let long = format!("/usr/share/{}/./x/", "d".repeat(120));
        // 101 bytes, 98 once tidied: would fit the header's field.
        let tidied = format!("./{}//./x", "d".repeat(94));
        let exact = "e".repeat(100);
        let targets = [
            "sub/",
            "./a//./b",
            "../..",
            "/etc/x",
            long.as_str(),
            tidied.as_str(),
            exact.as_str(),
        ];
        let mut a = ArchiveWriter::new(Vec::new(), Compression::None, 0).unwrap();
        for (i, t) in targets.iter().enumerate() {
            let path = format!("files/l{i}");
            let e = EntryMeta {
                path: path.as_bytes(),
                kind: EntryKind::Symlink(std::path::Path::new(t)),
                mode: 0o777,
                uid: 0,
                gid: 0,
                mtime: 0,
                size: 0,
            };
            a.append_entry(&e, &mut io::empty()).unwrap();
        }
        let bytes = a.finish(&mut inner()).unwrap();
        let mut got = Vec::new();
        read_members(&bytes[..], |m| {
            if let EntryKind::Symlink(t) = m.kind {
                got.push(t.display().to_string());
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(got, targets);
    }

    fn file<'a>(path: &'a [u8], data: &[u8]) -> EntryMeta<'a> {
        EntryMeta {
            path,
            kind: EntryKind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 0,
            size: data.len() as u64,
        }
    }

    #[test]
    fn names_keep_their_bytes_and_lists_cover_every_member() {
        let mut a = ArchiveWriter::new(Vec::new(), Compression::None, 0)
            .unwrap()
            .list_every(3);
        let mut names: Vec<Vec<u8>> = (0..7)
            .map(|i| format!("files/t/f{i}").into_bytes())
            .collect();
        names.push(b"files/t/\xff".to_vec());
        names.push(b"files/t/\xfe".to_vec());
        let long = [b"files/t/".as_slice(), &[0xe9; 200]].concat();
        names.push(long);
        for n in &names {
            a.append_entry(&file(n, b"x"), &mut &b"x"[..]).unwrap();
        }
        // One name twice is refused at once.
        assert!(a
            .append_entry(&file(&names[7], b""), &mut io::empty())
            .is_err());
        assert_eq!(a.totals().members, 10);
        let mut m = inner();
        let bytes = a.finish(&mut m).unwrap();
        assert_eq!(m.format, manifest::INNER_FORMAT_V2);
        assert_eq!(m.member_lists.len(), 3);
        assert_eq!(m.members.len(), 1);
        let mut got = Vec::new();
        let mut lists = Vec::new();
        read_members(&bytes[..], |r| {
            if r.path.starts_with(b"MANIFEST") {
                lists.push(String::from_utf8(r.path).unwrap());
            } else {
                got.push(r.path);
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(got, names);
        assert_eq!(
            lists,
            [
                "MANIFEST.d/000000.json",
                "MANIFEST.d/000001.json",
                "MANIFEST.d/000002.json",
                "MANIFEST.json"
            ]
        );
        assert_eq!(m.members[0].name().unwrap(), names[9]);
    }

    /// Yields at most a few bytes a read, so headers straddle reads.
    struct Trickle<'a>(&'a [u8], usize);
    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.1 = self.1 % 7 + 1;
            let n = self.1.min(buf.len()).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn the_header_guard_follows_headers_across_reads_and_stops_long_names() {
        let mut a = ArchiveWriter::new(Vec::new(), Compression::None, 0).unwrap();
        let long = [b"files/t/".as_slice(), &[b'n'; 3000]].concat();
        a.append_entry(&file(&long, b"xyz"), &mut &b"xyz"[..])
            .unwrap();
        a.append_stream("mysql/x.sql", &mut &vec![5u8; 1000][..])
            .unwrap();
        let bytes = a.finish(&mut inner()).unwrap();
        let mut names = Vec::new();
        read_members(Trickle(&bytes, 0), |m| {
            names.push(m.path);
            Ok(())
        })
        .unwrap();
        assert_eq!(
            names,
            [long, b"mysql/x.sql".to_vec(), b"MANIFEST.json".to_vec()]
        );
        // A long name past the limit is refused before it is read.
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"././@LongLink");
        h.set_entry_type(tar::EntryType::GNULongName);
        h.set_size(LONG_NAME_MAX + 1);
        h.set_cksum();
        b.append(&h, io::repeat(b'a').take(LONG_NAME_MAX + 1))
            .unwrap();
        let bytes = b.into_inner().unwrap();
        match read_members(Trickle(&bytes, 0), |_| Ok(())) {
            Err(ReadError::Refused { reason, .. }) => {
                assert!(reason.contains("long name"), "{reason}");
            }
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("read"),
        }
    }

    #[test]
    fn a_small_archive_keeps_the_first_manifest_format() {
        let mut a = ArchiveWriter::new(Vec::new(), Compression::None, 0).unwrap();
        a.append_stream("mysql/x.sql", &mut &b"x"[..]).unwrap();
        let mut m = inner();
        a.finish(&mut m).unwrap();
        assert_eq!(m.format, manifest::INNER_FORMAT);
        assert!(m.member_lists.is_empty());
        assert_eq!(m.members.len(), 1);
    }

    #[test]
    fn compression_forms() {
        assert_eq!(Compression::parse("gzip").unwrap(), Compression::Gzip(6));
        assert_eq!(
            Compression::parse("zstd:19").unwrap(),
            Compression::Zstd(19)
        );
        assert!(Compression::parse("zstd:99").is_err());
        assert!(Compression::parse("lz4").is_err());
    }
}

/// If `path` is a part of a split stream (`NAME.000003`), its stream name and
/// index. Only source streams are split, never `files/` or `sqlite/` members.
pub fn split_part(path: &str) -> Option<(&str, u32)> {
    if path.starts_with("files/") || path.starts_with("sqlite/") {
        return None;
    }
    let (base, suffix) = path.rsplit_once('.')?;
    if suffix.len() == 6 && suffix.bytes().all(|b| b.is_ascii_digit()) {
        suffix.parse().ok().map(|n| (base, n))
    } else {
        None
    }
}

/// One member as read back.
pub struct ReadMember<'a> {
    /// Its name, exactly.
    pub path: Vec<u8>,
    pub kind: EntryKind<'a>,
    pub mode: u32,
    /// The recorded owner and group, as numbers.
    pub owner: (u32, u32),
    pub mtime: i64,
    pub size: u64,
    pub data: &'a mut dyn Read,
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("archive: {0}")]
    Io(#[from] io::Error),
    #[error("archive member {path:?}: {reason}")]
    Refused { path: String, reason: String },
}

/// Walks a (decompressed) tar stream, handing each member to `f` in order;
/// returns the input, positioned after the end-of-archive marker.
/// Hard links, devices, FIFOs and other special entries are refused: coffer
/// never writes them, so their presence means the archive is not coffer's.
pub fn read_members<R: Read>(
    input: R,
    mut f: impl FnMut(ReadMember<'_>) -> Result<(), ReadError>,
) -> Result<R, ReadError> {
    let refused = std::rc::Rc::new(std::cell::RefCell::new(None));
    let mut ar = tar::Archive::new(HeaderGuard {
        inner: input,
        pos: 0,
        next: 0,
        block: [0; 512],
        done: false,
        refused: refused.clone(),
    });
    let walked = each_member(&mut ar, &mut f);
    if let Err(ReadError::Io(_)) = &walked {
        if let Some(reason) = refused.borrow_mut().take() {
            return Err(ReadError::Refused {
                path: "(a tar header)".into(),
                reason,
            });
        }
    }
    walked?;
    Ok(ar.into_inner().inner)
}

/// The longest GNU long name (or long link target) a reader takes: the tar
/// crate reads one whole into memory, whatever size its header claims.
pub const LONG_NAME_MAX: u64 = 1 << 20;

/// Reads the tar headers as they pass to the tar crate, and stops the
/// stream at one it would act on unboundedly: a GNU long name past
/// [`LONG_NAME_MAX`], or a PAX record (read whole; coffer never writes one).
struct HeaderGuard<R> {
    inner: R,
    /// Offset of what `inner` yields next.
    pos: u64,
    /// Offset of the next header.
    next: u64,
    block: [u8; 512],
    /// Past the end-of-archive block (or a header the tar crate will refuse).
    done: bool,
    refused: std::rc::Rc<std::cell::RefCell<Option<String>>>,
}

impl<R> HeaderGuard<R> {
    fn header(&mut self) -> io::Result<()> {
        let h = &self.block;
        if h.iter().all(|&b| b == 0) {
            self.done = true;
            return Ok(());
        }
        if !checksum_matches(h) {
            // The tar crate refuses it too, but as an I/O error: damage in
            // an authenticated archive is the archive's, in restore as in
            // verify.
            let reason = "a tar header whose checksum does not match".to_owned();
            *self.refused.borrow_mut() = Some(reason.clone());
            return Err(io::Error::new(io::ErrorKind::InvalidData, reason));
        }
        let field = &h[124..136];
        let size = if field[0] & 0x80 != 0 {
            field[4..]
                .iter()
                .fold(0u64, |a, &b| (a << 8) | u64::from(b))
        } else {
            let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
            let parsed = std::str::from_utf8(&field[..end])
                .ok()
                .and_then(|t| u64::from_str_radix(t.trim(), 8).ok());
            let Some(n) = parsed else {
                // The tar crate refuses it.
                self.done = true;
                return Ok(());
            };
            n
        };
        let problem = match h[156] {
            b'x' | b'g' => Some("PAX extended headers are not coffer's".to_owned()),
            b'L' | b'K' if size > LONG_NAME_MAX => Some(format!(
                "a long name of {size} bytes (at most {LONG_NAME_MAX})"
            )),
            // Sparse entries carry more header blocks; coffer refuses them.
            b'S' => Some("GNUSparse entries are not allowed".to_owned()),
            _ => None,
        };
        if let Some(reason) = problem {
            *self.refused.borrow_mut() = Some(reason.clone());
            return Err(io::Error::new(io::ErrorKind::InvalidData, reason));
        }
        self.next = self
            .next
            .saturating_add(512)
            .saturating_add(size.div_ceil(512).saturating_mul(512));
        Ok(())
    }
}

/// A ustar/GNU header's checksum: the unsigned sum of its bytes, the
/// checksum field counted as spaces, in octal in that field.
fn checksum_matches(h: &[u8; 512]) -> bool {
    let field = &h[148..156];
    let end = field
        .iter()
        .position(|&b| b == 0 || b == b' ')
        .unwrap_or(field.len());
    let start = field[..end].iter().take_while(|&&b| b == b' ').count();
    let stored = std::str::from_utf8(&field[start..end])
        .ok()
        .and_then(|t| u64::from_str_radix(t, 8).ok());
    let sum: u64 = h
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u64::from(b)
            }
        })
        .sum();
    stored == Some(sum)
}

impl<R: Read> Read for HeaderGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut i = 0;
        while !self.done && i < n {
            let at = self.pos + i as u64;
            if at < self.next {
                i += usize::try_from(self.next - at).map_or(n - i, |d| d.min(n - i));
                continue;
            }
            let off = usize::try_from(at - self.next).unwrap_or(512);
            if off >= 512 {
                // Cannot happen: a header is checked as soon as it is whole.
                self.done = true;
                break;
            }
            let take = (512 - off).min(n - i);
            self.block[off..off + take].copy_from_slice(&buf[i..i + take]);
            i += take;
            if off + take == 512 {
                self.header()?;
            }
        }
        self.pos += n as u64;
        Ok(n)
    }
}

fn each_member<R: Read>(
    ar: &mut tar::Archive<R>,
    f: &mut impl FnMut(ReadMember<'_>) -> Result<(), ReadError>,
) -> Result<(), ReadError> {
    for entry in ar.entries()? {
        let mut entry = entry?;
        // coffer writes GNU headers only. A PAX record could name a member
        // one way to this reader (which prefers a GNU long name) and
        // another to GNU tar (which prefers the record).
        if entry.pax_extensions()?.is_some() {
            return Err(ReadError::Refused {
                path: String::from_utf8_lossy(&entry.path_bytes()).into_owned(),
                reason: "PAX extended headers are not coffer's".into(),
            });
        }
        let path = entry.path_bytes().into_owned();
        let shown = || String::from_utf8_lossy(&path).into_owned();
        let header = entry.header();
        let mode = header.mode().unwrap_or(0o600);
        let mtime = i64::try_from(header.mtime().unwrap_or(0)).unwrap_or(0);
        let size = entry.size();
        let etype = header.entry_type();
        let link = entry.link_name()?.map(std::borrow::Cow::into_owned);
        let kind = match etype {
            tar::EntryType::Regular | tar::EntryType::Continuous => EntryKind::File,
            tar::EntryType::Directory => EntryKind::Dir,
            tar::EntryType::Symlink => match &link {
                Some(l) => EntryKind::Symlink(l),
                None => {
                    return Err(ReadError::Refused {
                        path: shown(),
                        reason: "symlink without a target".into(),
                    })
                }
            },
            other => {
                return Err(ReadError::Refused {
                    path: shown(),
                    reason: format!("{other:?} entries are not allowed"),
                })
            }
        };
        let owner = (
            u32::try_from(header.uid().unwrap_or(0)).unwrap_or(0),
            u32::try_from(header.gid().unwrap_or(0)).unwrap_or(0),
        );
        f(ReadMember {
            path,
            kind,
            mode,
            owner,
            mtime,
            size,
            data: &mut entry,
        })?;
    }
    Ok(())
}
