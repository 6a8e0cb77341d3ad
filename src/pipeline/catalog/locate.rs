//! Finding backups: a file on disk, a backup name in a configured store, or
//! `latest`. Everything read from a store is the server's word: a backup
//! counts only under a name a run makes, with a sidecar that agrees with the
//! sealed file's size, dated no later than the store saw it written and not
//! in the future; with a signing public key, only a good signature over the
//! sidecar's exact bytes makes it a candidate, and `latest` is the newest of
//! those by the signed ledger.

use std::io::Read;
use std::path::Path;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::ledger;
use crate::manifest::{is_backup_name, Sidecar, SEALED_SUFFIX, SIDECAR_SUFFIX};
use crate::pipeline::catalog::{believed_time, list, Listed, State};
use crate::pipeline::job::build_stores;
use crate::signing::{Verifier, SIGNATURE_SUFFIX};
use crate::store::Store;

/// The configured stores and what each holds.
pub struct Catalog {
    pub stores: Vec<Box<dyn Store>>,
    /// Per store, its backups (complete or not), oldest first; empty for a
    /// store that could not be listed.
    pub listed: Vec<Vec<Listed>>,
    /// One line per store that could not be listed.
    pub unreachable: Vec<String>,
    /// The first store that could not be listed because of a key (a host
    /// key changed or revoked, a key refused): what a command's exit code
    /// says when it could not do all it was asked.
    pub key_failure: Option<crate::Error>,
}

/// What a signature check of one sidecar found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Signed by the configured key.
    Signed(String),
    /// No signing public key is configured: nothing was checked.
    Unchecked,
    /// Unsigned, foreign or forged.
    Refused(String),
}

/// Checks the signature beside a listed sidecar over the sidecar bytes the
/// listing read (never a second read).
pub fn origin(store: &dyn Store, l: &Listed, verifier: Option<&Verifier>) -> Origin {
    let Some(v) = verifier else {
        return Origin::Unchecked;
    };
    let sig_name = format!("{}{SIDECAR_SUFFIX}{SIGNATURE_SUFFIX}", l.name);
    if !l.has_signature {
        return Origin::Refused(format!(
            "unsigned: {sig_name} is missing, and this job believes only signed backups"
        ));
    }
    let mut sig = Vec::new();
    let read = store
        .get(&sig_name)
        .map_err(|e| crate::cli_chain(&e))
        .and_then(|r| {
            r.take(64 * 1024)
                .read_to_end(&mut sig)
                .map_err(|e| format!("{sig_name}: {e}"))
        });
    if let Err(e) = read {
        return Origin::Refused(e);
    }
    let sidecar_name = format!("{}{SIDECAR_SUFFIX}", l.name);
    match v.verify_for(&l.raw, &String::from_utf8_lossy(&sig), &sidecar_name) {
        Ok(()) => Origin::Signed(v.key_id()),
        Err(e) => Origin::Refused(format!("signature: {e}")),
    }
}

/// The ledger entry of a listed backup (a sidecar of format 2).
pub fn ledger_entry(l: &Listed) -> Option<ledger::Entry> {
    let s = l.sidecar.as_ref()?;
    Some(ledger::Entry {
        name: s.name.clone(),
        seq: s.seq?,
        prev: s.prev.clone()?,
        digest: ledger::digest(&l.raw),
        created: s.created()?,
    })
}

/// Whether a listed backup may count as one of `job`'s at all (before any
/// signature): complete, a name a run makes, and not dated in the future.
pub fn plausible(l: &Listed, job: &str, now: chrono::DateTime<chrono::Utc>) -> bool {
    l.state == State::Complete
        && l.sidecar.as_ref().is_some_and(|s| s.job == job)
        && is_backup_name(job, &l.name)
        && l.sidecar
            .as_ref()
            .and_then(Sidecar::created)
            .is_some_and(|c| c <= now + ledger::future_slack())
}

/// One backup chosen from a store, with what was proven about it.
pub struct Found<'a> {
    pub store: usize,
    pub listed: &'a Listed,
    pub sidecar: &'a Sidecar,
    pub origin: Origin,
    /// Newer or other copies refused on the way, with the reason.
    pub passed_over: Vec<String>,
    /// Signed backups newer by their signed time that the ledger puts before
    /// this one (a restarted or forked ledger), by name.
    pub newer_by_time: Vec<String>,
    /// The same backup in other stores, passing the same checks: where a
    /// restore turns when this copy fails its own authentication.
    pub alternates: Vec<(usize, &'a Sidecar)>,
}

impl Catalog {
    /// Lists every store it can reach; a store that cannot be listed is
    /// reported in `unreachable`, and the others are still used. Fails only
    /// when no store at all can be listed.
    pub fn load(config: &Config) -> Result<Self> {
        let stores: Vec<Box<dyn Store>> =
            build_stores(config).into_iter().map(|(s, _)| s).collect();
        let mut listed = Vec::new();
        let mut unreachable = Vec::new();
        let mut first_error = None;
        let mut key_failure = None;
        for s in &stores {
            match list(s.as_ref()) {
                Ok((l, _)) => listed.push(l),
                Err(e) => {
                    unreachable.push(format!(
                        "{} is unreachable, its backups are left out: {}",
                        s.name(),
                        crate::about(&e, s.name())
                    ));
                    listed.push(Vec::new());
                    if e.exit_code() == crate::ExitCode::Key && key_failure.is_none() {
                        key_failure = Some(e);
                    } else {
                        first_error.get_or_insert(e);
                    }
                }
            }
        }
        if !stores.is_empty() && unreachable.len() == stores.len() {
            if let Some(e) = key_failure.take().or(first_error) {
                return Err(e);
            }
        }
        Ok(Catalog {
            stores,
            listed,
            unreachable,
            key_failure,
        })
    }

    /// Resolves `what` (a backup name or `latest`) to one backup of `job`
    /// that passes every check the configuration allows.
    pub fn find(&self, job: &str, what: &str, verifier: Option<&Verifier>) -> Result<Found<'_>> {
        self.find_skipping(job, what, verifier, &[])
    }

    /// [`Catalog::find`], leaving out the backups named in `skip`: for
    /// `latest`, the newer ones whose every copy failed authentication.
    pub fn find_skipping(
        &self,
        job: &str,
        what: &str,
        verifier: Option<&Verifier>,
        skip: &[String],
    ) -> Result<Found<'_>> {
        let wanted = what.strip_suffix(SEALED_SUFFIX).unwrap_or(what);
        let Sorted {
            mut candidates,
            mut refused,
            damaged,
            ahead,
        } = self.sort_listed(job, wanted, skip, chrono::Utc::now());
        // Newest first: by the signed ledger where signatures are checked
        // (unsigned, a sequence number is only the server's word), then by
        // the time the store vouches for; the first store wins a tie.
        let signed = verifier.is_some();
        candidates.sort_by(|a, b| {
            let key = |c: &(usize, &Listed, &Sidecar)| {
                (c.2.seq.filter(|_| signed), believed_time(c.1, signed))
            };
            key(b).cmp(&key(a)).then_with(|| a.0.cmp(&b.0))
        });
        for (k, &(i, l, s)) in candidates.iter().enumerate() {
            match origin(self.stores[i].as_ref(), l, verifier) {
                Origin::Refused(why) => {
                    refused.push(format!("{} in {}: {why}", l.name, self.stores[i].name()));
                }
                o => {
                    let alternates = candidates[k + 1..]
                        .iter()
                        .filter(|(j, m, _)| *j != i && m.name == l.name)
                        .filter(|(j, m, _)| {
                            !matches!(
                                origin(self.stores[*j].as_ref(), m, verifier),
                                Origin::Refused(_)
                            )
                        })
                        .map(|&(j, _, t)| (j, t))
                        .collect();
                    refused.extend(
                        damaged
                            .into_iter()
                            .chain(ahead)
                            .filter(|(n, _)| n.as_str() > l.name.as_str())
                            .map(|(_, m)| m),
                    );
                    let newer = if signed && wanted == "latest" {
                        self.newer_by_time(&candidates[k + 1..], l, s, verifier)
                    } else {
                        Vec::new()
                    };
                    let newer_by_time = newer.iter().map(|(n, _)| n.clone()).collect();
                    refused.extend(newer.into_iter().map(|(_, m)| m));
                    return Ok(Found {
                        newer_by_time,
                        store: i,
                        listed: l,
                        sidecar: s,
                        origin: o,
                        passed_over: refused,
                        alternates,
                    });
                }
            }
        }
        refused.extend(damaged.into_iter().map(|(_, m)| m));
        if refused.is_empty() && !ahead.is_empty() {
            let said: Vec<String> = ahead.into_iter().map(|(_, m)| m).collect();
            return Err(Error::Usage(format!(
                "no backup of job {job:?} is dated before this machine's clock allows: {}",
                said.join("; ")
            )));
        }
        if !refused.is_empty() {
            return Err(Error::Integrity {
                what: format!("backup {what:?} of job {job:?}"),
                message: format!("no copy can be trusted: {}", refused.join("; ")),
            });
        }
        Err(Error::Usage(format!(
            "no complete backup {what:?} of job {job:?} in the configured stores (see `coffer list`)"
        )))
    }
}

/// A catalog's listings sorted for [`Catalog::find_skipping`].
struct Sorted<'a> {
    candidates: Vec<(usize, &'a Listed, &'a Sidecar)>,
    /// Copies refused, with the reason.
    refused: Vec<String>,
    /// For `latest`: backups of the job whose sidecar is not valid, by
    /// name, reported if newer than what is chosen.
    damaged: Vec<(String, String)>,
    /// For `latest`: backups of the job dated ahead of this machine's clock,
    /// by name: never `latest`, but never passed over in silence either (a
    /// clock that is behind would restore yesterday's backup otherwise).
    ahead: Vec<(String, String)>,
}

impl Catalog {
    fn sort_listed<'a>(
        &'a self,
        job: &str,
        wanted: &str,
        skip: &[String],
        now: chrono::DateTime<chrono::Utc>,
    ) -> Sorted<'a> {
        let mut out = Sorted {
            candidates: Vec::new(),
            refused: Vec::new(),
            damaged: Vec::new(),
            ahead: Vec::new(),
        };
        for (i, l) in self.listed.iter().enumerate() {
            let store = self.stores[i].name();
            for b in l {
                if (wanted != "latest" && b.name != wanted) || skip.contains(&b.name) {
                    continue;
                }
                match (&b.sidecar, &b.state) {
                    (Some(s), _) if plausible(b, job, now) => out.candidates.push((i, b, s)),
                    // Asked for by name, a copy that is not one is the
                    // server's doing, and worth saying so.
                    (_, State::BadSidecar(why)) if wanted != "latest" => out.refused.push(format!(
                        "{} in {store}: sidecar is not valid: {why}",
                        b.name
                    )),
                    // For `latest`, a newer name whose copy is damaged must
                    // not be skipped in silence.
                    (_, State::BadSidecar(why)) if is_backup_name(job, &b.name) => {
                        out.damaged.push((
                            b.name.clone(),
                            format!("{} in {store}: sidecar is not valid: {why}", b.name),
                        ));
                    }
                    (Some(s), State::Complete)
                        if wanted == "latest" && s.job == job && is_backup_name(job, &b.name) =>
                    {
                        out.ahead.push((
                            b.name.clone(),
                            format!(
                                "{} in {store}: dated {}, more than {} minutes ahead of this \
                                 machine's clock ({}); if the clock is behind, set it right and \
                                 run again",
                                b.name,
                                s.created,
                                ledger::future_slack().num_minutes(),
                                now.format("%Y-%m-%dT%H:%M:%SZ")
                            ),
                        ));
                    }
                    (Some(s), _) if wanted != "latest" && s.job == job => {
                        out.refused.push(format!(
                            "{} in {store}: not a name a run makes, or dated in the future ({})",
                            b.name, s.created
                        ));
                    }
                    _ => {}
                }
            }
        }
        out
    }
}

impl Catalog {
    /// Signed backups dated after `chosen` that the ledger puts before it: a
    /// ledger that restarted (the host once saw none of its sidecars, say
    /// because a server hid them) or forked. `latest` keeps to the ledger,
    /// but says which backup is newer by its signed time.
    fn newer_by_time(
        &self,
        rest: &[(usize, &Listed, &Sidecar)],
        chosen: &Listed,
        sidecar: &Sidecar,
        verifier: Option<&Verifier>,
    ) -> Vec<(String, String)> {
        let Some(at) = sidecar.created() else {
            return Vec::new();
        };
        let mut seen = Vec::new();
        let mut said = Vec::new();
        for &(i, l, s) in rest {
            if l.name == chosen.name
                || seen.contains(&l.name)
                || s.created().is_none_or(|c| c <= at)
                || matches!(
                    origin(self.stores[i].as_ref(), l, verifier),
                    Origin::Refused(_)
                )
            {
                continue;
            }
            seen.push(l.name.clone());
            said.push((l.name.clone(), format!(
                "{} in {} is signed and newer ({}) but earlier in the ledger (seq {}, the chosen {} has {}): \
                 the ledger restarted or forked; `coffer verify` shows it, and `restore {}` takes that one",
                l.name,
                self.stores[i].name(),
                s.created,
                s.seq.unwrap_or(0),
                chosen.name,
                sidecar.seq.unwrap_or(0),
                l.name
            )));
        }
        said
    }
}

/// Is `what` a file on disk rather than a name?
pub fn is_file(what: &str) -> bool {
    Path::new(what).is_file()
}
