//! Prune records: what coffer's retention deleted from a store, so that a
//! later `verify` tells a deliberate prune (`prune --keep-last 3`, or the
//! job's own rules) from a store that lost or hides backups.
//!
//! `{name}.coffer.pruned` holds the deleted backup's ledger entry (its
//! `seq` and the SHA-256 of its sidecar) and the policy that deleted it,
//! signed like a sidecar (`.minisig`) when the pruning machine holds the
//! job's signing key. With a signing public key configured, `verify`
//! believes only signed records: a store cannot excuse a deletion of its
//! own. Records are kept while their entry is within the ledger window that
//! `verify` checks, then removed.

use std::collections::BTreeMap;
use std::io::{Read, Write};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::manifest::is_backup_name;
use crate::pipeline::catalog::Listed;
use crate::signing::{check_comment, Signer, Verifier, SIGNATURE_SUFFIX};
use crate::store::Store;

/// The record file beside where a backup was: `{name}.coffer.pruned`.
pub const PRUNED_SUFFIX: &str = ".coffer.pruned";

/// The largest record read: one is a few hundred bytes.
const RECORD_MAX: u64 = 4096;

/// The most records read from one store, newest first: they are kept only
/// within the ledger window, so more is a store padding its listing (and
/// padding with older names cannot push the newest out of view).
const RECORDS_MAX: usize = 1024;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    format: String,
    name: String,
    job: String,
    seq: u64,
    /// The SHA-256 (hex) of the deleted sidecar's exact bytes.
    digest: String,
    pruned: String,
    /// The rule that deleted it, as `prune` printed it.
    why: String,
}

/// How a retention run records what it deletes.
pub struct Recorder<'a> {
    /// Signs each record, where the machine holds the job's signing key.
    pub signer: Option<&'a Signer>,
    /// The job's `keep_last`: `verify` checks the newest that many ledger
    /// entries, so records of older ones are no longer needed.
    pub window: u32,
}

impl Recorder<'_> {
    /// Writes the record of `l` (deleted for `why`) before it is deleted,
    /// where `verify` will look for it: within the window below `newest`,
    /// the newest sequence number the store holds. A backup with no ledger
    /// entry (format 1) needs none.
    pub fn record(
        &self,
        store: &dyn Store,
        job: &str,
        l: &Listed,
        why: &str,
        (newest, now): (u64, chrono::DateTime<chrono::Utc>),
    ) -> Result<()> {
        let Some(entry) = crate::pipeline::catalog::locate::ledger_entry(l) else {
            return Ok(());
        };
        if entry.seq <= newest.saturating_sub(u64::from(self.window.max(1))) {
            return Ok(());
        }
        let file = format!("{}{PRUNED_SUFFIX}", l.name);
        let sig_file = format!("{file}{SIGNATURE_SUFFIX}");
        if store.stat(&file)?.is_some() {
            // Kept if it is signed, or nothing here could sign it; an
            // unsigned one (planted, or written without the key) is
            // replaced by a signed one.
            if self.signer.is_none() || store.stat(&sig_file)?.is_some() {
                return Ok(());
            }
            store.delete(&file)?;
        }
        // The signature is written first, so that no record is ever there
        // unsigned where a key signs; one left by an interrupted run goes.
        if store.stat(&sig_file)?.is_some() {
            store.delete(&sig_file)?;
        }
        let bytes = serde_json::to_vec(&Record {
            format: "coffer-pruned/1".into(),
            name: l.name.clone(),
            job: job.to_owned(),
            seq: entry.seq,
            digest: entry.digest,
            pruned: now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            why: why.to_owned(),
        })
        .map_err(|e| Error::Usage(format!("prune record: {e}")))?;
        if let Some(s) = self.signer {
            let sig = s.sign(&bytes, &file).map_err(|message| Error::Signing {
                path: file.clone().into(),
                message,
            })?;
            let mut u = store.put(&sig_file)?;
            u.write_all(sig.as_bytes())
                .map_err(|e| Error::io(&file, "write", e))?;
            u.commit()?;
        }
        let mut u = store.put(&file)?;
        u.write_all(&bytes)
            .map_err(|e| Error::io(&file, "write", e))?;
        Ok(u.commit()?)
    }

    /// Removes the records of entries older than the window below `newest`
    /// (the newest sequence number the store holds); returns their files.
    pub fn expire(&self, store: &dyn Store, job: &str, newest: u64) -> Result<Vec<String>> {
        let floor = newest.saturating_sub(u64::from(self.window.max(1)));
        let mut gone = Vec::new();
        for (seq, name) in records(store, job, None)?
            .into_iter()
            .map(|(seq, r)| (seq, r.0))
        {
            if seq > floor {
                continue;
            }
            let file = format!("{name}{PRUNED_SUFFIX}");
            let sig = format!("{file}{SIGNATURE_SUFFIX}");
            if store.stat(&sig)?.is_some() {
                store.delete(&sig)?;
            }
            store.delete(&file)?;
            gone.push(file);
        }
        Ok(gone)
    }
}

/// The records in `store` of `job` that can be believed (signed by the
/// key, where a signing public key is configured): seq → why.
pub fn pruned(store: &dyn Store, job: &str, verifier: Option<&Verifier>) -> BTreeMap<u64, String> {
    records(store, job, verifier)
        .unwrap_or_default()
        .into_iter()
        .map(|(seq, (name, why))| (seq, format!("{name}: {why}")))
        .collect()
}

/// seq → (backup name, why) of each record that reads well and, with a
/// verifier, is signed by it.
fn records(
    store: &dyn Store,
    job: &str,
    verifier: Option<&Verifier>,
) -> Result<BTreeMap<u64, (String, String)>> {
    let mut out = BTreeMap::new();
    let mut names: Vec<String> = store
        .list()?
        .into_iter()
        .filter_map(|o| o.name.strip_suffix(PRUNED_SUFFIX).map(str::to_owned))
        .filter(|n| is_backup_name(job, n))
        .collect();
    names.sort_unstable_by(|a, b| b.cmp(a));
    names.truncate(RECORDS_MAX);
    for name in names {
        let file = format!("{name}{PRUNED_SUFFIX}");
        let Some(bytes) = read_small(store, &file) else {
            continue;
        };
        if let Some(v) = verifier {
            let Some(sig) = read_small(store, &format!("{file}{SIGNATURE_SUFFIX}")) else {
                continue;
            };
            let signed = v
                .verify(&bytes, &String::from_utf8_lossy(&sig))
                .and_then(|comment| check_comment(&comment, &file));
            if signed.is_err() {
                continue;
            }
        }
        let Ok(r) = serde_json::from_slice::<Record>(&bytes) else {
            continue;
        };
        if r.format == "coffer-pruned/1" && r.job == job && r.name == name {
            out.insert(r.seq, (r.name, format!("pruned {} by {}", r.pruned, r.why)));
        }
    }
    Ok(out)
}

fn read_small(store: &dyn Store, file: &str) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    store
        .get(file)
        .ok()?
        .take(RECORD_MAX + 1)
        .read_to_end(&mut buf)
        .ok()?;
    (buf.len() as u64 <= RECORD_MAX).then_some(buf)
}
