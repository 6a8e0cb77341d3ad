//! Applying the retention plan to a store: only complete backups (sealed file
//! plus a valid sidecar of this job) count and can be deleted; stale partial
//! uploads older than a day are removed.

use std::collections::BTreeMap;
use std::io::Read;

use crate::error::Result;
use crate::manifest::{Sidecar, SEALED_SUFFIX, SIDECAR_SUFFIX};
use crate::retention::{self, Backup, Decision, Policy};
use crate::signing::SIGNATURE_SUFFIX;
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
}

/// Reads a store's listing into backups, complete or not.
pub fn list(store: &dyn Store) -> Result<(Vec<Listed>, Vec<crate::store::Object>)> {
    let objects = store.list()?;
    let mut by_name: BTreeMap<String, (Option<u64>, bool)> = BTreeMap::new();
    let mut partials = Vec::new();
    for o in objects {
        if o.name.ends_with(".partial") {
            partials.push(o);
        } else if let Some(n) = o.name.strip_suffix(SIDECAR_SUFFIX) {
            by_name.entry(n.to_owned()).or_default().1 = true;
        } else if let Some(n) = o.name.strip_suffix(SEALED_SUFFIX) {
            by_name.entry(n.to_owned()).or_default().0 = Some(o.size);
        }
    }
    let mut out: Vec<Listed> = Vec::new();
    for (name, (size, has_sidecar)) in by_name {
        let (state, sidecar) = match (size, has_sidecar) {
            (Some(_), false) => (State::NoSidecar, None),
            (None, _) => (State::NoSealedFile, None),
            (Some(_), true) => match read_sidecar(store, &name) {
                Ok(s) if s.name == name => (State::Complete, Some(s)),
                Ok(s) => (State::BadSidecar(format!("names {:?}", s.name)), None),
                Err(e) => (State::BadSidecar(e), None),
            },
        };
        out.push(Listed {
            name,
            state,
            sidecar,
            size,
        });
    }
    // Oldest first by the sidecar's time; incomplete ones (no time) by name.
    out.sort_by(|a, b| {
        let t = |l: &Listed| l.sidecar.as_ref().and_then(Sidecar::created);
        t(a).cmp(&t(b)).then_with(|| a.name.cmp(&b.name))
    });
    Ok((out, partials))
}

pub fn read_sidecar(store: &dyn Store, name: &str) -> std::result::Result<Sidecar, String> {
    let mut r = store
        .get(&format!("{name}{SIDECAR_SUFFIX}"))
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    r.by_ref()
        .take(1 << 20)
        .read_to_end(&mut buf)
        .map_err(|e| e.to_string())?;
    Sidecar::parse(&buf)
}

#[derive(Debug)]
pub struct PruneReport {
    pub store: String,
    pub decisions: Vec<Decision>,
    pub deleted: Vec<String>,
    pub stale_partials: Vec<String>,
}

/// Plans and (unless `dry_run`) deletes, in one store, for one job.
pub fn apply(
    store: &dyn Store,
    job: &str,
    policy: Policy,
    protect: Option<&str>,
    dry_run: bool,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<PruneReport> {
    let (listed, partials) = list(store)?;
    let backups: Vec<Backup> = listed
        .iter()
        .filter(|l| l.state == State::Complete)
        .filter_map(|l| l.sidecar.as_ref())
        .filter(|s| s.job == job)
        .filter_map(|s| {
            s.created().map(|created| Backup {
                name: s.name.clone(),
                created,
            })
        })
        .collect();
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
    // A backup run holds the job's lock, so this job's partial uploads are
    // leftovers of dead runs; anyone else's are left a day to finish.
    let ours = format!("{job}-");
    for p in partials {
        let dead_run = protect.is_some() && p.name.starts_with(&ours);
        if dead_run || now.timestamp() - p.mtime > STALE_PARTIAL_SECS {
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
    })
}
