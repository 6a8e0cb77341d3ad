//! Applying the retention plan to a store: only complete backups (sealed file
//! plus a valid sidecar of this job) count and can be deleted; stale partial
//! uploads older than a day are removed.

use std::collections::BTreeMap;
use std::io::Read;

use crate::error::Result;
use crate::manifest::is_backup_name;
use crate::manifest::{Sidecar, SEALED_SUFFIX, SIDECAR_SUFFIX};
use crate::pipeline::locate::{origin, plausible, Origin};
use crate::retention::{self, Backup, Decision, Policy};
use crate::signing::{Verifier, SIGNATURE_SUFFIX};
use crate::store::Store;

const STALE_PARTIAL_SECS: i64 = 24 * 3600;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Complete,
    /// A sealed file without a sidecar: an upload that never finished.
    NoSidecar,
    /// A sidecar that does not parse, or names another file.
    BadSidecar(String),
    /// A sidecar whose sealed file is missing.
    NoSealedFile,
}

#[derive(Debug, Clone)]
pub struct Listed {
    pub name: String,
    pub state: State,
    pub sidecar: Option<Sidecar>,
    pub size: Option<u64>,
    /// The sidecar's exact bytes, read once: every check (signature, size,
    /// hash, ledger) uses these, never a second read the server could answer
    /// differently.
    pub raw: Vec<u8>,
    /// When the store wrote the sidecar, as the store itself reports it.
    pub observed: Option<i64>,
    /// Whether a `.minisig` was listed beside the sidecar.
    pub has_signature: bool,
    /// When the store wrote the sealed file (0 if unknown or absent).
    pub sealed_mtime: i64,
}

/// The time a backup is ordered by. Signed (`signed`: its signature was
/// checked), `created` is the backup host's word and stands. Unsigned, it is
/// believed no later than the store saw the sidecar written: an uploader
/// cannot make its own backup look newer than it is.
pub fn believed_time(l: &Listed, signed: bool) -> Option<chrono::DateTime<chrono::Utc>> {
    if signed {
        return l.sidecar.as_ref()?.created();
    }
    effective_time(l)
}

/// A sidecar's `created`, but never later than when the store saw the
/// sidecar written.
pub fn effective_time(l: &Listed) -> Option<chrono::DateTime<chrono::Utc>> {
    let created = l.sidecar.as_ref()?.created()?;
    let observed = l
        .observed
        .filter(|&t| t > 0)
        .and_then(|t| chrono::DateTime::from_timestamp(t, 0))
        .map(|t| t + chrono::Duration::seconds(1));
    Some(observed.map_or(created, |o| created.min(o)))
}

/// What a listing shows of one backup's files.
#[derive(Default)]
struct Seen {
    size: Option<u64>,
    sealed_mtime: i64,
    sidecar_mtime: Option<i64>,
    signature: bool,
}

/// Reads a store's listing into backups, complete or not.
pub fn list(store: &dyn Store) -> Result<(Vec<Listed>, Vec<crate::store::Object>)> {
    let objects = store.list()?;
    let mut by_name: BTreeMap<String, Seen> = BTreeMap::new();
    let mut partials = Vec::new();
    for o in objects {
        if o.name.ends_with(".partial") {
            partials.push(o);
        } else if let Some(n) = o
            .name
            .strip_suffix(SIGNATURE_SUFFIX)
            .and_then(|n| n.strip_suffix(SIDECAR_SUFFIX))
        {
            by_name.entry(n.to_owned()).or_default().signature = true;
        } else if let Some(n) = o.name.strip_suffix(SIDECAR_SUFFIX) {
            by_name.entry(n.to_owned()).or_default().sidecar_mtime = Some(o.mtime);
        } else if let Some(n) = o.name.strip_suffix(SEALED_SUFFIX) {
            let seen = by_name.entry(n.to_owned()).or_default();
            seen.size = Some(o.size);
            seen.sealed_mtime = o.mtime;
        }
    }
    let mut out: Vec<Listed> = Vec::new();
    let mut held = 0usize;
    for (name, seen) in by_name {
        if held > LISTED_SIDECARS_MAX {
            return Err(crate::Error::Store {
                store: store.name().to_owned(),
                message: format!(
                    "its sidecars add up to more than {} MiB; refusing the listing (a broken \
                     or hostile server)",
                    LISTED_SIDECARS_MAX >> 20
                ),
            });
        }
        let mut raw = Vec::new();
        let (state, sidecar) = match (seen.size, seen.sidecar_mtime) {
            (Some(_), None) => (State::NoSidecar, None),
            // A sidecar, or a lone signature, without the sealed file: a
            // leftover of an interrupted run or removal.
            (None, _) => (State::NoSealedFile, None),
            (Some(size), Some(_)) => match read_sidecar(store, &name) {
                Ok((s, bytes)) => {
                    held += bytes.len();
                    raw = bytes;
                    if s.name != name {
                        (State::BadSidecar(format!("names {:?}", s.name)), None)
                    } else if s.size != size {
                        (
                            State::BadSidecar(format!(
                                "says {} bytes, the sealed file has {size}",
                                s.size
                            )),
                            None,
                        )
                    } else {
                        (State::Complete, Some(s))
                    }
                }
                Err(e) => (State::BadSidecar(e), None),
            },
        };
        out.push(Listed {
            name,
            state,
            sidecar,
            size: seen.size,
            raw,
            observed: seen.sidecar_mtime,
            has_signature: seen.signature,
            sealed_mtime: seen.sealed_mtime,
        });
    }
    // Oldest first by the believed time; incomplete ones (no time) by name.
    out.sort_by(|a, b| {
        effective_time(a)
            .cmp(&effective_time(b))
            .then_with(|| a.name.cmp(&b.name))
    });
    Ok((out, partials))
}

/// The largest sidecar coffer reads. One coffer writes takes well under a
/// kilobyte, plus a line per source and per recipient; a store that hands
/// over more is not handing over a sidecar.
pub const SIDECAR_MAX: usize = 64 << 10;
/// What the sidecars of one store's listing may hold together: a year of
/// hourly backups takes about 9 MiB. Past it the listing is refused, so
/// that a hostile store cannot make every run that lists it (the nightly
/// backup among them) hold gigabytes.
const LISTED_SIDECARS_MAX: usize = 32 << 20;

/// A sidecar and its exact bytes.
pub fn read_sidecar(
    store: &dyn Store,
    name: &str,
) -> std::result::Result<(Sidecar, Vec<u8>), String> {
    let mut r = store
        .get(&format!("{name}{SIDECAR_SUFFIX}"))
        .map_err(|e| crate::cli_chain(&e))?;
    let mut buf = Vec::new();
    r.by_ref()
        .take(SIDECAR_MAX as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|e| e.to_string())?;
    if buf.len() > SIDECAR_MAX {
        return Err(format!("larger than {} KiB", SIDECAR_MAX >> 10));
    }
    Sidecar::parse(&buf).map(|s| (s, buf))
}

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

/// Plans and (unless `dry_run`) deletes, in one store, for one job. Only
/// backups that could be genuine hold keep slots (see `PruneReport::ignored`),
/// ordered by the time the store vouches for, never by the uploader's word
/// alone; so nothing an uploader writes alone can push a genuine backup out.
pub fn apply(
    store: &dyn Store,
    job: &str,
    policy: Policy,
    protect: Option<&str>,
    dry_run: bool,
    now: chrono::DateTime<chrono::Utc>,
    verifier: Option<&Verifier>,
) -> Result<PruneReport> {
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
    let mut stale = Vec::new();
    // Leftovers of interrupted runs or removals — a sealed file without its
    // sidecar, a signature without both — are never backups. This job's are
    // removed by its next run (it holds the lock: nothing of the job is in
    // flight) or, by `prune`, once a day old; never the backup just made.
    for l in &listed {
        let leftover = matches!(l.state, State::NoSidecar | State::NoSealedFile)
            && is_backup_name(job, &l.name)
            && Some(l.name.as_str()) != protect;
        let old = l.sealed_mtime > 0 && now.timestamp() - l.sealed_mtime > STALE_PARTIAL_SECS;
        if !(leftover && (protect.is_some() || old)) {
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
    Ok(PruneReport {
        store: store.name().to_owned(),
        decisions,
        deleted,
        stale_partials: stale,
        ignored,
    })
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
