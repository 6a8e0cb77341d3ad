//! Copies between the job's stores: a backup copied with its hash checked,
//! and the stores that missed nights refilled with what the others keep.

use std::io::{Read, Write};

use super::sidecar::{write_sidecar, SidecarFiles};
use crate::about;
use crate::error::{Error, Result};
use crate::pipeline::catalog;
use crate::pipeline::catalog::locate;
use crate::pipeline::job::Job;
use crate::signing::SIGNATURE_SUFFIX;
use crate::store::Store;

/// Copies a complete backup between stores, checking the hash on the way,
/// with a few attempts and backoff (the target may be reconnecting).
pub(super) fn copy_backup(from: &dyn Store, to: &dyn Store, files: &SidecarFiles) -> Result<()> {
    let sidecar = &files.sidecar;
    let sealed = sidecar.sealed_name();
    let mut delay = std::time::Duration::from_secs(1);
    let mut last = None;
    for _ in 0..3 {
        if crate::cancel::is_cancelled() {
            break;
        }
        let attempt = (|| -> Result<()> {
            // A partial left by the failed attempt would block the new
            // upload, and so would a sealed file whose sidecar never came
            // (without a sidecar it is no backup; the run holds the lock).
            if to.stat(&format!("{sealed}.partial"))?.is_some() {
                to.delete(&format!("{sealed}.partial"))?;
            }
            if to.stat(&sidecar.file_name())?.is_none() && to.stat(&sealed)?.is_some() {
                to.delete(&sealed)?;
            }
            let mut r = from.get(&sealed)?;
            let mut u = to.put(&sealed)?;
            let (kind, expected) = sidecar.file_digest();
            let mut hash = kind.hasher();
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let n = r
                    .read(&mut buf)
                    .map_err(|e| Error::io(&sealed, "read", e))?;
                if n == 0 {
                    break;
                }
                hash.update(&buf[..n]);
                u.write_all(&buf[..n])
                    .map_err(|e| Error::io(&sealed, "write", e))?;
            }
            if hex::encode(hash.finalize()) != expected {
                return Err(Error::Store {
                    store: from.name().to_owned(),
                    message: format!("{sealed} changed while being copied"),
                });
            }
            u.commit()?;
            write_sidecar(to, files)
        })();
        match attempt {
            Ok(()) => return Ok(()),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(delay);
        delay *= 2;
    }
    Err(last.unwrap_or_else(|| Error::Usage("cancelled".into())))
}

/// Heals stores that missed earlier backups (unreachable on a past night),
/// for jobs that sign their backups:
/// every backup another store holds that retention keeps there, and that
/// (with a signing key) carries this host's signature, is copied into each
/// store this run could write, hash-checked on the way. Failures are
/// warnings: the next run tries again.
pub(super) fn refill(
    job: &Job,
    healthy: &[usize],
    now: chrono::DateTime<chrono::Utc>,
) -> Vec<String> {
    // Only what this host signed is copied: unsigned, a forgery planted in
    // one store would spread to the others and push their backups out.
    let Some(verifier) = job.signer.as_ref().and_then(|s| s.verifier().ok()) else {
        return Vec::new();
    };
    let name = job.config.job.name.as_str();
    // Only the stores that took this run's backup are read: one that failed
    // (a stalled server) would cost its timeouts again for nothing.
    let listed: Vec<Option<Vec<catalog::Listed>>> = job
        .stores
        .iter()
        .enumerate()
        .map(|(i, s)| {
            healthy
                .contains(&i)
                .then(|| catalog::list(s.as_ref()).ok().map(|(l, _)| l))
                .flatten()
        })
        .collect();
    // The newest keep_last signed backups of the job across every store:
    // what each store should hold. Taken per store, a backup that only a
    // store which missed some nights still holds would be copied back into
    // the others, and their retention would delete it again, every night.
    let mut wanted: Vec<(
        Option<chrono::DateTime<chrono::Utc>>,
        usize,
        &catalog::Listed,
    )> = Vec::new();
    for (from, from_listed) in listed.iter().enumerate() {
        for l in from_listed.iter().flatten() {
            if locate::plausible(l, name, now)
                && matches!(
                    locate::origin(job.stores[from].as_ref(), l, Some(&verifier)),
                    locate::Origin::Signed(_)
                )
            {
                wanted.push((catalog::believed_time(l, true), from, l));
            }
        }
    }
    wanted.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.2.name.cmp(&b.2.name)));
    wanted.dedup_by(|a, b| a.2.name == b.2.name);
    wanted.truncate(usize::try_from(job.policy.keep_last).unwrap_or(usize::MAX));
    let mut notes = Vec::new();
    // A store with `prune = false` is the server's to manage (a write-only
    // account whose uploads `coffer ingest` moves away): it is not refilled.
    for &to in healthy.iter().filter(|&&i| job.prune[i]) {
        let Some(have) = &listed[to] else { continue };
        for &(_, holder, l) in &wanted {
            if have
                .iter()
                .any(|h| h.name == l.name && h.state == catalog::State::Complete)
            {
                continue;
            }
            if holder != to {
                notes.push(refill_one(job, holder, to, l));
            }
        }
    }
    notes
}

/// Copies the signed backup `l` from store `from` into store `to`; says
/// what it did, for the run's warnings.
pub(super) fn refill_one(job: &Job, from: usize, to: usize, l: &catalog::Listed) -> String {
    let from_store = job.stores[from].as_ref();
    let to_store = job.stores[to].as_ref();
    let Some(sidecar) = l.sidecar.clone() else {
        return format!(
            "could not refill {} into {}: no sidecar",
            l.name,
            to_store.name()
        );
    };
    let mut text = String::new();
    let signature = from_store
        .get(&format!("{}{SIGNATURE_SUFFIX}", sidecar.file_name()))
        .ok()
        .and_then(|r| r.take(64 * 1024).read_to_string(&mut text).ok())
        .map(|_| text);
    let files = SidecarFiles {
        sidecar,
        json: l.raw.clone(),
        signature,
    };
    match copy_backup(from_store, to_store, &files) {
        Ok(()) => format!(
            "refilled {} into {} (it missed it) from {}",
            l.name,
            to_store.name(),
            from_store.name()
        ),
        Err(e) => format!(
            "could not refill {} into {}: {}",
            l.name,
            to_store.name(),
            about(&e, to_store.name())
        ),
    }
}
