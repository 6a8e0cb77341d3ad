//! A run's name and its place in the job's ledger: never a name a store
//! already holds, never a ledger number a store could have made up.

use crate::error::{Error, Result};
use crate::ledger;
use crate::manifest::{self};
use crate::pipeline::catalog;
use crate::pipeline::catalog::locate;
use crate::pipeline::job::{self, Job};
use crate::store::Store;

/// The highest sequence number an unsigned job takes from a store when the
/// host has no record of its own: a store can then push the ledger on, but
/// not to the end of the numbers, where it would stay.
const UNVOUCHED_MAX: u64 = 1 << 32;

/// The last entry this host wrote, as it recorded it.
#[derive(serde::Serialize, serde::Deserialize)]
struct Record {
    seq: u64,
    digest: String,
}

/// Notes the entry this run wrote (best effort: without it, the next run
/// falls back to the stores' entries).
pub(super) fn record_position(job: &Job, seq: u64, digest: String) {
    if let Ok(json) = serde_json::to_vec(&Record { seq, digest }) {
        let _ = crate::fsutil::replace(&job::ledger_record_path(&job.config), &json, 0o600);
    }
}

fn recorded_position(job: &Job) -> Option<Record> {
    let path = job::ledger_record_path(&job.config);
    let bytes = crate::fsutil::read_regular(&path, 4096).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Where this run's entry goes in the job's ledger: after the newest entry
/// that any reachable store holds and this host signed. A server that hides
/// entries makes the next run fork the ledger, which `verify` reports; it
/// cannot make the host sign a lie. An unsigned job has no signature to
/// tell its entries from a store's inventions: it goes on from its own
/// record of the last entry it wrote, and only without one (a first run, a
/// lost record) from the stores' plausible entries, up to
/// [`UNVOUCHED_MAX`].
pub(super) fn ledger_position(job: &Job, now: chrono::DateTime<chrono::Utc>) -> (u64, String) {
    let verifier = job.signer.as_ref().and_then(|s| s.verifier().ok());
    if verifier.is_none() {
        if let Some(r) = recorded_position(job) {
            return (r.seq.saturating_add(1), r.digest);
        }
    }
    let mut known = Vec::new();
    for store in &job.stores {
        let Ok((listed, _)) = catalog::list(store.as_ref()) else {
            continue;
        };
        for l in listed
            .iter()
            .filter(|l| locate::plausible(l, &job.config.job.name, now))
        {
            if let Some(v) = &verifier {
                if !matches!(
                    locate::origin(store.as_ref(), l, Some(v)),
                    locate::Origin::Signed(_)
                ) {
                    continue;
                }
            }
            known.extend(
                locate::ledger_entry(l).filter(|e| verifier.is_some() || e.seq <= UNVOUCHED_MAX),
            );
        }
    }
    ledger::next(&known)
}

/// How many of a run's candidate names one store may claim to hold before
/// it is left out of the run. An honest store holds a candidate only if
/// runs started within one second; a hostile server can answer "exists" to
/// every name, and must not thereby cost the other stores their copy.
pub(super) const CLAIMS_BEFORE_LEFT_OUT: usize = 8;

/// A name no store has used: `{job}-{YYYYMMDDTHHMMSSZ}`, then `-1`, `-2`, …
/// A store that claims to hold [`CLAIMS_BEFORE_LEFT_OUT`] of them is left
/// out of the run (into `job.unready`), and the run's failure names it.
pub(super) fn unique_name(job: &mut Job, now: chrono::DateTime<chrono::Utc>) -> Result<String> {
    let base = format!("{}-{}", job.config.job.name, now.format("%Y%m%dT%H%M%SZ"));
    let mut claims = vec![0usize; job.stores.len()];
    for i in 0..1000 {
        let name = if i == 0 {
            base.clone()
        } else {
            format!("{base}-{i}")
        };
        let mut taken = false;
        for (store, claimed) in job.stores.iter().zip(claims.iter_mut()) {
            if *claimed < CLAIMS_BEFORE_LEFT_OUT && holds_name(store.as_ref(), &name) {
                *claimed += 1;
                taken = true;
            }
        }
        if !taken {
            leave_out_claiming(job, &claims, &base)?;
            return Ok(name);
        }
    }
    Err(Error::Usage(format!("no free backup name for {base}")))
}

/// Whether `store` says it holds any file of the backup `name`. A store that
/// cannot answer is no reason to lose the night in the others: its upload
/// fails and is reported.
pub(super) fn holds_name(store: &dyn Store, name: &str) -> bool {
    [
        manifest::SEALED_SUFFIX,
        manifest::SIDECAR_SUFFIX,
        ".coffer.partial",
        ".coffer.json.partial",
        ".coffer.json.minisig",
    ]
    .iter()
    .any(|suffix| matches!(store.stat(&format!("{name}{suffix}")), Ok(Some(_))))
}

/// Moves the stores that claimed every name they were asked about out of
/// the run; fails if that leaves none.
pub(super) fn leave_out_claiming(job: &mut Job, claims: &[usize], base: &str) -> Result<()> {
    let left_out = |k: usize| claims.get(k).is_some_and(|&c| c >= CLAIMS_BEFORE_LEFT_OUT);
    // Each store's prune flag goes with it: both are looked up by position.
    let mut k = 0;
    job.prune.retain(|_| {
        k += 1;
        !left_out(k - 1)
    });
    let mut k = 0;
    job.stores.retain(|store| {
        let claimed = left_out(k);
        k += 1;
        if claimed {
            let message = format!(
                "claims to hold {base} and the next {} names a run could take: \
                 left out of this run (coffer never overwrites); look at what the \
                 store holds under those names",
                CLAIMS_BEFORE_LEFT_OUT - 1
            );
            job.unready.push((
                store.name().to_owned(),
                Error::Store {
                    store: store.name().to_owned(),
                    message,
                },
            ));
        }
        !claimed
    });
    if job.stores.is_empty() {
        if let Some((_, e)) = job.unready.pop() {
            return Err(e);
        }
    }
    Ok(())
}
