//! `coffer restore`: decrypt, authenticate and unpack a backup — into a
//! directory ([`extract`]), one member to stdout, or a database ([`load`]).
//! The backup is spooled or staged first, and authenticated by [`walk`], the
//! one pass that `verify` makes too. May call `catalog`, `keys` and
//! `plumbing`; never `verify` or `backup`.

pub mod extract;
pub mod load;
pub mod walk;

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::envelope::Header;
use crate::envelope::Identity;
use crate::error::{Error, Result};
use crate::manifest::HashKind;
use crate::pipeline::restore::walk::{walk, WalkError, Walked};
use extract::{copy_out, Extractor};

pub enum Target {
    Dir {
        dir: PathBuf,
        force: bool,
        keep_partial: bool,
    },
    /// One member (joined if split) to `out`.
    Member { name: String },
    /// The whole archive, decompressed, to `out` (for `tar -x`).
    Tar,
}

/// What the sidecar (signed, where signatures are configured) says the
/// sealed file is; a restore refuses a file that disagrees.
#[derive(Debug, Clone)]
pub struct Expect {
    pub name: String,
    pub job: String,
    pub size: u64,
    /// The digest the sidecar vouches with (BLAKE3 from v3 on), and its hex.
    pub digest: (HashKind, String),
    /// The SHA-256 a sidecar records beside its BLAKE3, for `sha256sum -c`:
    /// checked too, so that coffer and that independent check never
    /// disagree about one file.
    pub sha256: Option<String>,
}

impl Expect {
    pub fn of(s: &crate::manifest::Sidecar) -> Self {
        let (kind, hex) = s.file_digest();
        Expect {
            name: s.name.clone(),
            job: s.job.clone(),
            size: s.size,
            digest: (kind, hex.to_owned()),
            sha256: (kind != HashKind::Sha256).then(|| s.sha256.clone()),
        }
    }

    /// The ciphertext's size and digest against the sidecar.
    pub fn check_ciphertext(
        &self,
        len: u64,
        hex: &str,
        sha256: Option<&str>,
    ) -> std::result::Result<(), String> {
        if len > self.size {
            // Readers stop one byte past the sidecar's size.
            return Err(format!(
                "the sealed file is longer than the {} bytes its sidecar says",
                self.size
            ));
        }
        if len != self.size {
            return Err(format!(
                "the sealed file is {len} bytes, its sidecar says {}",
                self.size
            ));
        }
        let (kind, expected) = &self.digest;
        let same: bool = subtle::ConstantTimeEq::ct_eq(hex.as_bytes(), expected.as_bytes()).into();
        if !same {
            return Err(format!(
                "the sealed file's {} is {hex}, its sidecar says {expected}",
                kind.label()
            ));
        }
        if let (Some(want), Some(got)) = (&self.sha256, sha256) {
            let same: bool = subtle::ConstantTimeEq::ct_eq(got.as_bytes(), want.as_bytes()).into();
            if !same {
                return Err(format!(
                    "the sealed file's SHA-256 is {got}, its sidecar says {want} (its {} matches: the sidecar is wrong, and `sha256sum -c` would fail)",
                    kind.label()
                ));
            }
        }
        Ok(())
    }

    /// What [`Expect::check_ciphertext`] found to match, for a report.
    pub fn matched(&self) -> String {
        match self.sha256 {
            Some(_) => format!("{} and SHA-256 match the sidecar", self.digest.0.label()),
            None => format!("{} matches the sidecar", self.digest.0.label()),
        }
    }

    /// The authenticated header against the sidecar: its job, and its name
    /// where it gives one (backups of earlier versions do not).
    fn check_header(&self, header: &Header) -> std::result::Result<(), String> {
        if header.metadata.job.as_deref() != Some(self.job.as_str()) {
            return Err(format!(
                "the header names job {:?}, the sidecar {:?}",
                header.metadata.job, self.job
            ));
        }
        match &header.metadata.name {
            Some(name) if *name != self.name => Err(format!(
                "the header names backup {name}, the sidecar {}",
                self.name
            )),
            _ => Ok(()),
        }
    }

    /// What a walk of an already checked private copy learnt: the header
    /// and the inner manifest against the sidecar.
    fn check_archive(&self, w: &Walked) -> std::result::Result<(), String> {
        self.check_header(&w.header)?;
        if w.manifest.name != self.name || w.manifest.job != self.job {
            return Err(format!(
                "the inner manifest names {} of job {:?}, the sidecar {} of job {:?}",
                w.manifest.name, w.manifest.job, self.name, self.job
            ));
        }
        Ok(())
    }
}

/// Copies the sealed file (ciphertext, never plaintext) into a private
/// unlinked temporary file, at most one byte more than the sidecar says, and
/// checks its size and digest against the sidecar; returns it rewound. What
/// is decrypted afterwards is exactly what was checked: a server that
/// answers a second read differently, or cuts the stream, gets nowhere.
pub fn spool(input: Box<dyn Read + Send>, what: &str, expect: Option<&Expect>) -> Result<File> {
    let mut spool = tempfile::tempfile().map_err(|e| {
        Error::io(
            std::env::temp_dir(),
            "create a private copy of the sealed file in",
            e,
        )
    })?;
    let limit = expect.map_or(u64::MAX, |x| x.size.saturating_add(1));
    let kind = expect.map_or(HashKind::Blake3, |x| x.digest.0);
    let mut hashed = crate::pipeline::restore::walk::HashRead::new(input.take(limit), kind)
        .and_sha256(expect.is_some_and(|x| x.sha256.is_some()));
    // In large pieces: BLAKE3 hashes many 1 KiB chunks at once only when it
    // is given them at once, and io::copy's own buffer is 8 KiB.
    let mut piece = vec![0u8; SPOOL_PIECE];
    loop {
        let n = match hashed.read(&mut piece) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io(what, "read", e)),
        };
        spool.write_all(&piece[..n]).map_err(|e| {
            Error::io(
                std::env::temp_dir(),
                "write the private copy of the sealed file to",
                e,
            )
        })?;
    }
    let len = hashed.len;
    let (hex, sha256) = hashed.hexes();
    if let Some(x) = expect {
        x.check_ciphertext(len, &hex, sha256.as_deref())
            .map_err(|message| integrity(what, message))?;
    }
    rewind(&mut spool)?;
    Ok(spool)
}

/// What [`spool`] reads from a store at a time.
const SPOOL_PIECE: usize = 256 << 10;

fn integrity(what: &str, message: String) -> Error {
    Error::Integrity {
        what: what.to_owned(),
        message,
    }
}

fn rewind(f: &mut File) -> Result<()> {
    io::Seek::seek(f, io::SeekFrom::Start(0))
        .map(drop)
        .map_err(|e| Error::io(std::env::temp_dir(), "rewind the private copy in", e))
}

/// A restore that writes or loads anything first authenticates all of the
/// ciphertext, and returns the private copy it checked, rewound, for the
/// pass that writes. First [`spool`] copies the sealed file and checks its
/// size and hash against the sidecar; only then does a private key touch
/// it: a copy the sidecar does not vouch for never reaches a passphrase
/// prompt, a hardware token, an age plugin or an RSA decryption. Then every
/// chunk and the header are authenticated, and the header must name the job
/// and the backup the sidecar names. Nothing is decompressed: a forger who
/// could pass these checks could equally have written an archive consistent
/// in itself, so the archive's own checks (every member against the inner
/// manifest) run in the writing pass, which undoes what it wrote on a
/// mismatch.
///
/// `thorough` adds a full pass over the archive before anything is written,
/// for what cannot be undone (a load into a database, files replaced by
/// `--force`). Backups of earlier versions, whose header does not name them,
/// always get it: only their inner manifest, at the archive's end, ties the
/// file to its sidecar.
pub fn stage(
    input: Box<dyn Read + Send>,
    what: &str,
    identities: &[Identity],
    expect: Option<&Expect>,
    thorough: bool,
) -> Result<File> {
    let mut spool = spool(input, what, expect)?;
    let header = authenticate(&spool, identities).map_err(|e| e.into_error(what))?;
    if let Some(x) = expect {
        x.check_header(&header)
            .map_err(|message| integrity(what, message))?;
    }
    if thorough || (expect.is_some() && header.metadata.name.is_none()) {
        let w = walk(reopen(&spool)?, identities, |_, _| Ok(())).map_err(|e| e.into_error(what))?;
        if let Some(x) = expect {
            x.check_archive(&w)
                .map_err(|message| integrity(what, message))?;
        }
    }
    rewind(&mut spool)?;
    Ok(spool)
}

/// A second handle on the private copy, from its start.
fn reopen(spool: &File) -> Result<io::BufReader<File>> {
    let mut copy = spool
        .try_clone()
        .map_err(|e| Error::io(std::env::temp_dir(), "reopen the private copy in", e))?;
    rewind(&mut copy)?;
    Ok(io::BufReader::with_capacity(256 << 10, copy))
}

/// Opens the envelope and authenticates every chunk of the private copy, on
/// every core, without decompressing.
fn authenticate(spool: &File, identities: &[Identity]) -> std::result::Result<Header, WalkError> {
    let header = crate::envelope::authenticate(identities, spool, crate::frames::workers())?;
    crate::pipeline::restore::walk::archive_of(&header)?;
    Ok(header)
}

/// Restores `input` (named `what` in messages). Returns what the walk
/// checked, except for `Target::Tar`, which passes the archive through.
pub fn restore(
    input: Box<dyn Read + Send>,
    what: &str,
    identities: &[Identity],
    target: Target,
    out: &mut dyn Write,
    expect: Option<&Expect>,
) -> Result<Option<Walked>> {
    let mismatch = |message: String| integrity(what, message);
    match target {
        Target::Dir {
            dir,
            force,
            keep_partial,
        } => {
            // A link given as the target is followed only when asked for by
            // its own name: one another user placed could send the restore
            // anywhere.
            if let Ok(target) = fs::read_link(&dir) {
                return Err(Error::TargetUnsafe {
                    path: dir.clone(),
                    problem: format!(
                        "is a symlink (to {}); give the directory it points to as --to",
                        target.display()
                    ),
                });
            }
            fs::create_dir_all(&dir).map_err(|e| Error::Target {
                path: dir.clone(),
                op: "create directory",
                source: e,
            })?;
            let root = fs::canonicalize(&dir).map_err(|e| Error::io(&dir, "resolve", e))?;
            let mut ex = Extractor::open(root, force)?;
            match walk(input, identities, |m, data| ex.member(m, data)) {
                Ok(w) => {
                    if let Some(Err(message)) = expect.map(|x| x.check_archive(&w)) {
                        ex.undo();
                        return Err(mismatch(message));
                    }
                    ex.finish();
                    Ok(Some(w))
                }
                Err(e) => {
                    let e = e.into_error(what);
                    // --keep-partial keeps what a failing target (a full
                    // disk) got; what a damaged or forged archive wrote
                    // always goes.
                    if keep_partial && matches!(e, Error::Target { .. }) {
                        // What was written stays; what it replaced comes back.
                        ex.put_back_replaced();
                    } else {
                        ex.undo();
                    }
                    Err(e)
                }
            }
        }
        Target::Tar => to_tar(input, what, identities, out, expect),
        Target::Member { name } => {
            let mut found = false;
            // What to offer if the name is not there: the dumps, not every
            // file of a tree.
            let mut offer: Vec<String> = Vec::new();
            let mut files = 0u64;
            let w = walk(input, identities, |m, data| {
                // By its bytes: two names that differ only in bytes that are
                // not UTF-8 read the same once made lossy, and are two files.
                if m.raw == name.as_bytes() {
                    found = true;
                    copy_out(data, out, Path::new("<stdout>"))?;
                }
                if m.part.is_none_or(|n| n == 0) {
                    if m.name.starts_with("files/") {
                        files += 1;
                    } else if offer.len() < 50 && !m.name.starts_with("MANIFEST") {
                        offer.push(m.name.to_owned());
                    }
                }
                Ok(())
            })
            .map_err(|e| e.into_error(what))?;
            flush(out)?;
            if let Some(x) = expect {
                x.check_archive(&w).map_err(mismatch)?;
            }
            if !found {
                if files > 0 {
                    offer.push(format!(
                        "{files} files/ members (restore --to DIR to see them)"
                    ));
                }
                let holds = offer.join(", ");
                return Err(Error::Usage(format!(
                    "{what} has no member {name:?}; it holds: {holds}"
                )));
            }
            Ok(Some(w))
        }
    }
}

fn flush(out: &mut dyn Write) -> Result<()> {
    out.flush().map_err(|e| Error::Target {
        path: "<stdout>".into(),
        op: "write",
        source: e,
    })
}

/// The whole archive, as tar, on `out`. Each member is written anew once
/// the walk has taken its name, as `--to` would check it: no name the walk
/// refuses reaches tar, and no set-user-ID or set-group-ID bit. Nothing
/// after the archive's end does either.
fn to_tar(
    input: Box<dyn Read + Send>,
    what: &str,
    identities: &[Identity],
    out: &mut dyn Write,
    expect: Option<&Expect>,
) -> Result<Option<Walked>> {
    let mismatch = |message: String| integrity(what, message);
    let mut tar = tar::Builder::new(&mut *out);
    let w = walk(input, identities, |m, data| {
        let entry = crate::archive::EntryMeta {
            path: m.stored,
            kind: m.kind,
            mode: m.mode & !0o6000,
            uid: m.owner.0,
            gid: m.owner.1,
            mtime: m.mtime,
            size: m.size,
        };
        crate::archive::put_entry(&mut tar, &entry, data)
            .map_err(|e| WalkError::target("<stdout>", "write", e))
    })
    .map_err(|e| e.into_error(what))?;
    tar.finish()
        .map_err(|e| Error::io("<stdout>", "write", e))?;
    drop(tar);
    flush(out)?;
    if let Some(x) = expect {
        x.check_archive(&w).map_err(mismatch)?;
    }
    Ok(None)
}
