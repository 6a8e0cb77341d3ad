//! `coffer prune`, and the retention step of `backup` and `ingest`:
//! applying the retention plan to a store. Only complete backups (sealed
//! file plus a valid sidecar of this job) count and can be deleted; stale
//! partial uploads older than a day are removed.

use crate::error::Result;
use crate::manifest::is_backup_name;
use crate::manifest::{SEALED_SUFFIX, SIDECAR_SUFFIX};
use crate::pipeline::catalog::locate::{origin, plausible, Origin};
use crate::pipeline::catalog::{believed_time, list, Recorder, State};
use crate::retention::{self, Backup, Decision, Policy};
use crate::signing::{Verifier, SIGNATURE_SUFFIX};
use crate::store::Store;

const STALE_PARTIAL_SECS: i64 = 24 * 3600;

#[derive(Debug)]
pub struct PruneReport {
    pub store: String,
    pub decisions: Vec<Decision>,
    pub deleted: Vec<String>,
    pub stale_partials: Vec<String>,
    /// Sidecars that hold no keep slot and are never deleted: not a name a
    /// run makes, dated in the future, or (with a signing public key) not
    /// signed by it. With the reason.
    pub ignored: Vec<(String, String)>,
}

/// The backup a partial upload belongs to: `X.coffer.partial`,
/// `X.coffer.json.partial`, `X.coffer.json.minisig.partial` → `X`.
fn partial_owner(file: &str) -> Option<&str> {
    let stem = file.strip_suffix(".partial")?;
    let stem = stem.strip_suffix(SIGNATURE_SUFFIX).unwrap_or(stem);
    stem.strip_suffix(SIDECAR_SUFFIX)
        .or_else(|| stem.strip_suffix(SEALED_SUFFIX))
}

/// How a retention run goes.
#[derive(Clone, Copy)]
pub struct How<'a> {
    /// The backup this run just made, never deleted.
    pub protect: Option<&'a str>,
    pub dry_run: bool,
    pub now: chrono::DateTime<chrono::Utc>,
    /// With a signing public key: only what it signed holds a keep slot.
    pub verifier: Option<&'a Verifier>,
    /// Where deletions are recorded for `verify`.
    pub recorder: Option<&'a Recorder<'a>>,
}

/// Plans and (unless `dry_run`) deletes, in one store, for one job. Only
/// backups that could be genuine hold keep slots (see `PruneReport::ignored`),
/// ordered by the time the store vouches for, never by the uploader's word
/// alone; so nothing an uploader writes alone can push a genuine backup out.
pub fn apply(store: &dyn Store, job: &str, policy: Policy, how: &How<'_>) -> Result<PruneReport> {
    let How {
        protect,
        dry_run,
        now,
        verifier,
        recorder,
    } = *how;
    let (listed, partials) = list(store)?;
    let mut backups = Vec::new();
    let mut ignored = Vec::new();
    for l in &listed {
        let Some(s) = l.sidecar.as_ref().filter(|s| s.job == job) else {
            continue;
        };
        if l.state != State::Complete {
            continue;
        }
        let why = if !is_backup_name(job, &l.name) {
            Some(format!("not a name a run of job {job:?} makes"))
        } else if !plausible(l, job, now) {
            Some(format!("dated {}, in the future", s.created))
        } else if let Origin::Refused(why) = origin(store, l, verifier) {
            Some(why)
        } else {
            None
        };
        match (why, believed_time(l, verifier.is_some())) {
            (None, Some(created)) => backups.push(Backup {
                name: l.name.clone(),
                created,
            }),
            (Some(why), _) => ignored.push((l.name.clone(), why)),
            (None, None) => ignored.push((l.name.clone(), "no usable time".into())),
        }
    }
    // The newest ledger number among what holds keep slots (this job's,
    // plausible, signed where signatures count): nothing else may decide
    // which prune records are written or kept.
    let newest = newest_seq(
        listed
            .iter()
            .filter(|l| backups.iter().any(|b| b.name == l.name)),
    );
    let mut decisions = retention::plan(&backups, policy);
    // Whatever the clock says, a run never deletes the backup it just made.
    for d in &mut decisions {
        if Some(d.name.as_str()) == protect && !d.keep {
            d.keep = true;
            d.reasons = vec!["made by this run".into()];
        }
    }
    let mut deleted = Vec::new();
    for d in decisions.iter().filter(|d| !d.keep) {
        if !dry_run {
            // The record first: a later verify then knows this deletion
            // for retention's, not the store's doing.
            if let (Some(r), Some(l)) = (recorder, listed.iter().find(|l| l.name == d.name)) {
                let why = format!(
                    "retention (keep_last = {}; {})",
                    policy.keep_last,
                    d.reasons.join(", ")
                );
                r.record(store, job, l, &why, (newest, now))?;
            }
            // Sidecar first: if interrupted, what remains is an incomplete
            // backup (never counted), not a sidecar pointing at nothing.
            store.delete(&format!("{}{SIDECAR_SUFFIX}", d.name))?;
            let sig = format!("{}{SIDECAR_SUFFIX}{SIGNATURE_SUFFIX}", d.name);
            if store.stat(&sig)?.is_some() {
                store.delete(&sig)?;
            }
            store.delete(&format!("{}{SEALED_SUFFIX}", d.name))?;
        }
        deleted.push(d.name.clone());
    }
    let others = || {
        backups
            .iter()
            .map(|b| b.name.as_str())
            .filter(|&n| Some(n) != protect)
    };
    let span = (others().min(), others().max());
    let stale = leftovers(store, job, &listed, partials, how, (newest, span))?;
    Ok(PruneReport {
        store: store.name().to_owned(),
        decisions,
        deleted,
        stale_partials: stale,
        ignored,
    })
}

/// The newest ledger sequence number among `listed` (0: none).
fn newest_seq<'a>(listed: impl Iterator<Item = &'a crate::pipeline::catalog::Listed>) -> u64 {
    listed
        .filter_map(crate::pipeline::catalog::locate::ledger_entry)
        .map(|e| e.seq)
        .max()
        .unwrap_or(0)
}

/// Removes what interrupted runs left (and records no longer needed);
/// returns the files removed.
fn leftovers(
    store: &dyn Store,
    job: &str,
    listed: &[crate::pipeline::catalog::Listed],
    partials: Vec<crate::store::Object>,
    how: &How<'_>,
    (newest, (oldest_backup, newest_backup)): (u64, (Option<&str>, Option<&str>)),
) -> Result<Vec<String>> {
    let How {
        protect,
        dry_run,
        now,
        recorder,
        ..
    } = *how;
    let mut stale = Vec::new();
    // Leftovers of interrupted runs or removals — a sealed file without its
    // sidecar, a signature without both — are never backups. This job's are
    // removed by its next run (it holds the lock: nothing of the job is in
    // flight) where they are newer than its newest backup (what an
    // interrupted upload leaves) or older than its oldest (what an
    // interrupted removal leaves: retention deletes the sidecar first), or
    // by `prune` once a day old; never the backup just made. A sealed file
    // among the backups kept that lost its sidecar is not taken away by a
    // backup run.
    for l in listed {
        let leftover = matches!(l.state, State::NoSidecar | State::NoSealedFile)
            && is_backup_name(job, &l.name)
            && Some(l.name.as_str()) != protect;
        let old = l.sealed_mtime > 0 && now.timestamp() - l.sealed_mtime > STALE_PARTIAL_SECS;
        let name = l.name.as_str();
        let interrupted = match (oldest_backup, newest_backup) {
            (Some(o), Some(n)) => name > n || name < o,
            _ => !old,
        };
        let due = if protect.is_some() { interrupted } else { old };
        if !(leftover && due) {
            continue;
        }
        let mut removed = Vec::new();
        for suffix in [
            SIDECAR_SUFFIX.to_owned(),
            format!("{SIDECAR_SUFFIX}{SIGNATURE_SUFFIX}"),
            SEALED_SUFFIX.to_owned(),
        ] {
            let file = format!("{}{suffix}", l.name);
            if store.stat(&file)?.is_some() {
                if !dry_run {
                    store.delete(&file)?;
                }
                removed.push(file);
            }
        }
        stale.extend(removed);
    }
    // A backup run holds the job's lock, so this job's partial uploads are
    // leftovers of dead runs; anyone else's (another job's, or a name no run
    // makes) are left a day to finish, and one whose age is unknown is kept.
    for p in partials {
        let owner = partial_owner(&p.name);
        let ours = owner.is_some_and(|n| is_backup_name(job, n));
        let dead_run = protect.is_some() && ours;
        // Another job's partial may be in flight right now: only a day-old
        // one under a name coffer writes is removed; anything else is not
        // coffer's to judge (and must not fail the run).
        let old = p.mtime > 0
            && now.timestamp() - p.mtime > STALE_PARTIAL_SECS
            && owner.is_some()
            && crate::store::valid_file_name(&p.name);
        if dead_run || old {
            if !dry_run {
                store.delete(&p.name)?;
            }
            stale.push(p.name);
        }
    }
    // Records of entries verify no longer looks at: housekeeping, not
    // reported.
    if let (Some(r), false) = (recorder, dry_run) {
        r.expire(store, job, newest)?;
    }
    Ok(stale)
}

#[cfg(test)]
mod tests {
    use super::partial_owner;

    #[test]
    fn partials_name_their_backup() {
        assert_eq!(
            partial_owner("j-20261123T000100Z.coffer.partial"),
            Some("j-20261123T000100Z")
        );
        assert_eq!(
            partial_owner("j-20261123T000100Z.coffer.json.partial"),
            Some("j-20261123T000100Z")
        );
        assert_eq!(
            partial_owner("j-20261123T000100Z.coffer.json.minisig.partial"),
            Some("j-20261123T000100Z")
        );
        assert_eq!(partial_owner("j.coffer"), None);
        assert_eq!(partial_owner("x.partial"), None);
    }
}
