//! `coffer ingest`, run on the backup server: moves finished uploads out of
//! the upload account's reach. The database host writes into an incoming
//! directory (its SFTP chroot); ingest copies each complete backup into the
//! configured stores — directories the upload account cannot reach — and
//! only then removes it from incoming. A copy, never a rename: the uploader
//! may still hold a file open, and a rename would keep its inode in reach.
//!
//! What incoming holds is the uploader's word: files are opened without
//! following symlinks and must be regular; only names a run of the job makes
//! count; the copy must match the sidecar's size and digest; with a signing
//! public key only what it signed is taken. A name already in a store is
//! never replaced, and a backup dated no later than the newest one already
//! held is refused: uploads are taken in the order they were made.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use rustix::fs::{Mode, OFlags};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::ledger;
use crate::manifest::{is_backup_name, Sidecar, SEALED_SUFFIX, SIDECAR_SUFFIX};
use crate::pipeline::job::{build_stores, load_verifier};
use crate::signing::SIGNATURE_SUFFIX;
use crate::store::Store;

/// What happened to each backup found in incoming.
#[derive(Debug, Default)]
pub struct IngestReport {
    pub ingested: Vec<String>,
    /// Left in incoming, with the reason (forged, damaged, a name clash).
    pub refused: Vec<(String, String)>,
    /// Left in incoming because a store failed to take it (full, gone):
    /// the next ingest finishes what this one began, in that store only.
    pub failed: Vec<(String, String)>,
}

/// Why one upload stays in incoming.
enum Left {
    /// The upload is at fault, or clashes with what a store holds.
    Refused(String),
    /// A store failed while taking it.
    StoreFailed(String),
}

impl From<String> for Left {
    fn from(why: String) -> Self {
        Left::Refused(why)
    }
}

/// What one store holds of an upload's name.
enum Holds {
    Nothing,
    /// The same sealed file and sidecar: a duplicate upload.
    All,
    /// The sealed file this upload vouches for, without its sidecar: an
    /// ingest interrupted between the two (a full disk, a crash).
    SealedFile,
}

/// Opens `name` in `dir` read-only, refusing symlinks, FIFOs and devices.
/// Below this, allocation is not judged: small files may sit inline in
/// their inode or in a tail block.
const SPARSE_FLOOR: u64 = 1 << 20;

fn open_regular(dir: &File, name: &str, max: Option<u64>) -> std::result::Result<File, String> {
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("{name}: {e}"))?;
    let f = File::from(fd);
    let meta = f.metadata().map_err(|e| format!("{name}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("{name} is not a regular file"));
    }
    if max.is_some_and(|m| meta.len() > m) {
        return Err(format!("{name} is too large"));
    }
    Ok(f)
}

fn read_small(dir: &File, name: &str) -> std::result::Result<Vec<u8>, String> {
    let mut buf = Vec::new();
    open_regular(
        dir,
        name,
        Some(crate::pipeline::catalog::SIDECAR_MAX as u64),
    )?
    .read_to_end(&mut buf)
    .map_err(|e| format!("{name}: {e}"))?;
    Ok(buf)
}

/// Ingests every complete backup of the job found in `incoming`.
/// `accept_late` names uploads the operator takes although they are dated
/// no later than the newest backup held.
pub fn ingest(
    config: &Config,
    incoming: &Path,
    dry_run: bool,
    accept_late: &[String],
) -> Result<IngestReport> {
    let verifier = config
        .job
        .signing_public_key
        .as_deref()
        .map(load_verifier)
        .transpose()?;
    if verifier.is_none() && !config.job.unsigned {
        return Err(Error::Usage(format!(
            "ingest copies only backups the database host signed, and {}'s [job] has no \
             signing_public_key: set it to the host's signing public key, or set unsigned = true \
             to take unsigned uploads ({})",
            config.job.name,
            crate::config::UNSIGNED_COST
        )));
    }
    for st in &config.stores {
        if let crate::config::Store::Local { path, .. } = st {
            crate::store::LocalStore::new(st.name(), path).ensure_dir()?;
        }
    }
    let stores: Vec<Box<dyn Store>> = build_stores(config).into_iter().map(|(s, _)| s).collect();
    if stores.is_empty() {
        return Err(Error::Usage(
            "ingest needs at least one [[store]] to copy into".into(),
        ));
    }
    let dir = File::open(incoming).map_err(|e| Error::io(incoming, "open", e))?;
    let mut names: Vec<String> = Vec::new();
    for (i, e) in std::fs::read_dir(incoming)
        .map_err(|e| Error::io(incoming, "list", e))?
        .enumerate()
    {
        // The cap every listing has: an upload account that fills its
        // directory with names cannot make the ingest read them all.
        if i >= crate::store::MAX_LISTED {
            return Err(Error::Store {
                store: incoming.display().to_string(),
                message: format!(
                    "holds more than {} names; refusing to list it (clear out what the upload account left)",
                    crate::store::MAX_LISTED
                ),
            });
        }
        let Some(name) = e.ok().and_then(|e| e.file_name().into_string().ok()) else {
            continue;
        };
        if let Some(n) = name.strip_suffix(SIDECAR_SUFFIX) {
            names.push(n.to_owned());
        }
    }
    names.sort();
    let job = config.job.name.as_str();
    let now = chrono::Utc::now();
    let mut newest = newest_held(&stores, job, now, verifier.as_ref())?;
    let mut report = IngestReport::default();
    for name in names {
        if !is_backup_name(job, &name) {
            // Another job's, or a name no run makes: not ours to judge.
            continue;
        }
        let ctx = Ctx {
            dir: &dir,
            job,
            now,
            verifier: verifier.as_ref(),
            stores: &stores,
            newest: newest.as_ref(),
            accept_late,
            dry_run,
        };
        match one(&ctx, &name) {
            Ok(created) => {
                newest = newest
                    .filter(|(n, _)| *n >= created)
                    .or(Some((created, name.clone())));
                report.ingested.push(name);
            }
            Err(Left::Refused(why)) => report.refused.push((name, why)),
            Err(Left::StoreFailed(why)) => report.failed.push((name, why)),
        }
    }
    Ok(report)
}

/// The newest backup of `job` the stores already hold, by its `created`,
/// among those that count (complete, a name a run makes, not future-dated,
/// and signed where a signing key is configured). An upload dated no later
/// is refused: a compromised database host holds the signing key, and
/// backups it back-dated would take the daily, weekly and monthly keep slots
/// of the genuine backups already ingested, and push them out. Nothing the
/// host signs can vouch for a late upload (not even the ledger: the host
/// writes it too); the operator can, by name (`--accept-late`).
fn newest_held(
    stores: &[Box<dyn Store>],
    job: &str,
    now: chrono::DateTime<chrono::Utc>,
    verifier: Option<&crate::signing::Verifier>,
) -> Result<Option<(chrono::DateTime<chrono::Utc>, String)>> {
    let mut newest: Option<(chrono::DateTime<chrono::Utc>, String)> = None;
    for store in stores {
        let (listed, _) = crate::pipeline::catalog::list(store.as_ref())?;
        for l in &listed {
            if !crate::pipeline::catalog::locate::plausible(l, job, now)
                || matches!(
                    crate::pipeline::catalog::locate::origin(store.as_ref(), l, verifier),
                    crate::pipeline::catalog::locate::Origin::Refused(_)
                )
            {
                continue;
            }
            if let Some(c) = l.sidecar.as_ref().and_then(Sidecar::created) {
                if newest.as_ref().is_none_or(|(n, _)| c > *n) {
                    newest = Some((c, l.name.clone()));
                }
            }
        }
    }
    Ok(newest)
}

/// What every upload of one ingest run is checked against.
struct Ctx<'a> {
    dir: &'a File,
    job: &'a str,
    now: chrono::DateTime<chrono::Utc>,
    verifier: Option<&'a crate::signing::Verifier>,
    stores: &'a [Box<dyn Store>],
    /// The newest backup already held (or ingested in this run).
    newest: Option<&'a (chrono::DateTime<chrono::Utc>, String)>,
    /// Uploads the operator takes although they are dated late.
    accept_late: &'a [String],
    dry_run: bool,
}

/// Ingests one upload; returns its `created`, or why it stays in incoming.
fn one(ctx: &Ctx<'_>, name: &str) -> std::result::Result<chrono::DateTime<chrono::Utc>, Left> {
    let Ctx {
        dir,
        job,
        now,
        verifier,
        stores,
        newest,
        accept_late,
        dry_run,
    } = *ctx;
    let sidecar_name = format!("{name}{SIDECAR_SUFFIX}");
    let sig_name = format!("{sidecar_name}{SIGNATURE_SUFFIX}");
    let sealed_name = format!("{name}{SEALED_SUFFIX}");
    let raw = read_small(dir, &sidecar_name)?;
    let sidecar = Sidecar::parse(&raw).map_err(|e| format!("sidecar is not valid: {e}"))?;
    if sidecar.name != name || sidecar.job != job {
        return Err(Left::Refused(format!(
            "the sidecar names {} of job {:?}",
            sidecar.name, sidecar.job
        )));
    }
    let created = sidecar
        .created()
        .filter(|c| *c <= now + ledger::future_slack())
        .ok_or_else(|| format!("dated {}, in the future", sidecar.created))?;
    let signature = match verifier {
        Some(v) => {
            let sig = read_small(dir, &sig_name).map_err(|e| format!("unsigned: {e}"))?;
            let text = String::from_utf8_lossy(&sig).into_owned();
            v.verify_for(&raw, &text, &sidecar_name)
                .map_err(|e| format!("signature: {e}"))?;
            Some(text)
        }
        None => read_small(dir, &sig_name)
            .ok()
            .map(|s| String::from_utf8_lossy(&s).into_owned()),
    };
    // Exactly the size the sidecar vouches for: a sparse file of terabytes
    // must not fill the repository's disk before the hash check fails.
    let mut sealed = open_regular(dir, &sealed_name, Some(sidecar.size))?;
    if sealed.metadata().map(|m| m.len()).ok() != Some(sidecar.size) {
        return Err(Left::Refused(format!(
            "{sealed_name} is not the {} bytes its sidecar says",
            sidecar.size
        )));
    }
    // Ciphertext has no holes: a sealed file mostly unallocated (a sparse
    // file a compromised host signed) would cost the repository its full
    // length in real blocks, for a backup that holds nothing.
    if let Ok(m) = sealed.metadata() {
        let allocated = m.blocks().saturating_mul(512);
        if m.len() >= SPARSE_FLOOR && allocated < m.len() / 2 {
            return Err(Left::Refused(format!(
                "{sealed_name} is a sparse file ({allocated} of its {} bytes allocated): \
                 a sealed file has no holes",
                m.len()
            )));
        }
    }
    let mut holding = Vec::with_capacity(stores.len());
    for store in stores {
        holding.push(holds(store.as_ref(), &sidecar, &raw)?);
    }
    let begun = holding.iter().any(|h| !matches!(h, Holds::Nothing));
    if !begun && !accept_late.iter().any(|n| n == name) {
        if let Some((at, held)) = newest.filter(|(at, _)| created <= *at) {
            return Err(Left::Refused(format!(
                "dated {}, no later than {held} ({}), the newest backup already ingested: \
                 backups are only taken in the order they were made, so that back-dated ones \
                 cannot push earlier ones out of retention (a missed night copied in late: \
                 `coffer ingest --accept-late NAME`)",
                sidecar.created,
                at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            )));
        }
    }
    if dry_run {
        return Ok(created);
    }
    // Only what each store lacks: a store that took it on an earlier,
    // interrupted ingest is not written again (coffer never overwrites).
    for (store, held) in stores.iter().zip(&holding) {
        let sealed_too = match held {
            Holds::All => continue,
            Holds::SealedFile => false,
            Holds::Nothing => {
                io::Seek::rewind(&mut sealed)
                    .map_err(|e| Left::StoreFailed(format!("{sealed_name}: {e}")))?;
                true
            }
        };
        copy_into(
            store.as_ref(),
            sealed_too.then_some(&mut sealed),
            &sidecar,
            &raw,
            signature.as_deref(),
        )
        .map_err(|e| match e {
            Left::StoreFailed(e) => Left::StoreFailed(format!("{}: {e}", store.name())),
            Left::Refused(e) => Left::Refused(format!("{}: {e}", store.name())),
        })?;
    }
    // Taken: only now does it leave incoming.
    remove_from_incoming(dir, [&sidecar_name, &sig_name, &sealed_name])
        .map(|()| created)
        .map_err(Left::StoreFailed)
}

/// Sidecar first: what is left of an interrupted removal is an incomplete
/// upload, never a backup.
fn remove_from_incoming(dir: &File, files: [&String; 3]) -> std::result::Result<(), String> {
    for f in files {
        match rustix::fs::unlinkat(dir, f.as_str(), rustix::fs::AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => {}
            Err(e) => {
                return Err(format!(
                    "ingested, but cannot remove {f} from incoming: {e}"
                ))
            }
        }
    }
    Ok(())
}

/// Whether `store` holds exactly `bytes` under `file`.
fn same_file(store: &dyn Store, file: &str, bytes: &[u8]) -> bool {
    let mut held = Vec::new();
    store
        .get(file)
        .ok()
        .and_then(|r| {
            r.take(crate::pipeline::catalog::SIDECAR_MAX as u64 + 1)
                .read_to_end(&mut held)
                .ok()
        })
        .is_some_and(|_| held == bytes)
}

/// What `store` holds under the name of the upload `sidecar` (exact bytes
/// `raw`) describes; anything but this upload itself is refused, never
/// replaced.
fn holds(store: &dyn Store, sidecar: &Sidecar, raw: &[u8]) -> std::result::Result<Holds, Left> {
    let failed = |e: crate::store::StoreError| {
        Left::StoreFailed(format!("{}: {}", store.name(), crate::cli_chain(&e)))
    };
    let sealed = store.stat(&sidecar.sealed_name()).map_err(failed)?;
    let side = store.stat(&sidecar.file_name()).map_err(failed)?;
    let clash = || {
        Left::Refused(format!(
            "{} is already in {}: never replaced",
            sidecar.name,
            store.name()
        ))
    };
    match (sealed, side) {
        (None, None) => Ok(Holds::Nothing),
        // The very same signed sidecar uploaded again (a retried run) is
        // a duplicate.
        (Some(_), Some(_)) if same_file(store, &sidecar.file_name(), raw) => Ok(Holds::All),
        (Some(o), None) if o.size == sidecar.size && holds_sealed(store, sidecar) => {
            Ok(Holds::SealedFile)
        }
        _ => Err(clash()),
    }
}

/// Whether the sealed file `store` holds is the one `sidecar` vouches for.
fn holds_sealed(store: &dyn Store, sidecar: &Sidecar) -> bool {
    let (kind, expected) = sidecar.file_digest();
    let Ok(r) = store.get(&sidecar.sealed_name()) else {
        return false;
    };
    let mut hashed = crate::pipeline::restore::walk::HashRead::new(r.take(sidecar.size + 1), kind);
    io::copy(&mut hashed, &mut io::sink()).is_ok()
        && hashed.len == sidecar.size
        && hashed.hex() == expected
}

/// Copies the sealed file (if `sealed`), checking size and hash on the way,
/// then the signature and the sidecar's exact bytes, each under a
/// temporary name.
fn copy_into(
    store: &dyn Store,
    sealed: Option<&mut File>,
    sidecar: &Sidecar,
    raw: &[u8],
    signature: Option<&str>,
) -> std::result::Result<(), Left> {
    let failed = |e: crate::store::StoreError| Left::StoreFailed(crate::cli_chain(&e));
    if let Some(sealed) = sealed {
        let sealed_name = sidecar.sealed_name();
        let mut u = store.put(&sealed_name).map_err(failed)?;
        let (kind, expected) = sidecar.file_digest();
        let mut hash = kind.hasher();
        let mut len = 0u64;
        let mut buf = vec![0u8; 256 * 1024];
        let mut sealed = sealed.take(sidecar.size.saturating_add(1));
        loop {
            let n = sealed
                .read(&mut buf)
                .map_err(|e| Left::Refused(format!("{sealed_name}: {e}")))?;
            if n == 0 {
                break;
            }
            hash.update(&buf[..n]);
            len += n as u64;
            u.write_all(&buf[..n])
                .map_err(|e| Left::StoreFailed(format!("{sealed_name}: {e}")))?;
        }
        if len != sidecar.size || hex::encode(hash.finalize()) != expected {
            return Err(Left::Refused(format!(
                "{sealed_name} does not match its sidecar's size and {}",
                kind.label()
            )));
        }
        u.commit().map_err(failed)?;
    }
    let small = |file: String, bytes: &[u8]| -> std::result::Result<(), Left> {
        // Left by an ingest interrupted after it (the sidecar comes last).
        if same_file(store, &file, bytes) {
            return Ok(());
        }
        let mut u = store.put(&file).map_err(failed)?;
        u.write_all(bytes)
            .map_err(|e| Left::StoreFailed(format!("{file}: {e}")))?;
        u.commit().map_err(failed)
    };
    if let Some(sig) = signature {
        small(
            format!("{}{SIGNATURE_SUFFIX}", sidecar.file_name()),
            sig.as_bytes(),
        )?;
    }
    small(sidecar.file_name(), raw)
}
