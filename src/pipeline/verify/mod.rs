//! `coffer verify`: is what sits in the stores complete, untampered and
//! restorable? Without a key: sidecar, size, digest (BLAKE3, or SHA-256
//! for older sidecars), header. With a key: also every chunk, the
//! decompression, and every member against the inner manifest.

use std::io::{self, Read};
use std::time::Instant;

use serde::Serialize;

use crate::config::Config;
use crate::envelope::{Header, Identity, OpenError};
use crate::error::Result;
use crate::ledger;
use crate::manifest::is_backup_name;
use crate::manifest::Sidecar;
use crate::pipeline::catalog::locate::{ledger_entry, origin, Catalog, Origin};
use crate::pipeline::catalog::State;
pub use crate::pipeline::drill::{Drill, TableCheck};
use crate::pipeline::drill::{Drilling, Notes};
use crate::pipeline::restore::walk::{walk, HashRead, WalkError, Walked};

/// How long a sealed file with no sidecar may be an upload just interrupted.
const LEFTOVER_GRACE_SECS: i64 = 24 * 3600;

pub enum Select {
    All,
    Latest,
    Name(String),
}

/// What a report says of what it checked. Only `Damaged` is about the
/// bytes (exit 3); the others say what is missing and where a good copy
/// is, or that nothing is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Ok,
    /// An incomplete upload, not a backup: removed by the job's next run
    /// (or `coffer prune`, once a day old). Nothing is wrong with any backup.
    Leftover,
    /// Backups this store should hold are not there, and another store
    /// holds a good copy: the next backup run (or `ingest`) refills it.
    Missing,
    /// Damaged, forged, or will not restore; or a store that lost or hides
    /// backups no other store holds.
    Damaged,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub store: String,
    pub name: String,
    /// The verdict is `ok` or `leftover`: nothing needs doing.
    pub ok: bool,
    pub verdict: Verdict,
    /// `keyless` or `keyed`.
    pub level: &'static str,
    pub checks: Vec<String>,
    pub problems: Vec<String>,
    /// What the restore test (the drill) restored, and how fast.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drill: Option<Drill>,
}

/// `restore_test` (needs identities) also loads each database dump into a
/// private scratch server (MariaDB, PostgreSQL) or a private copy (SQLite)
/// and compares every table's row count with the manifest.
fn level_of(keyed: bool, restore_test: bool) -> &'static str {
    match (keyed, restore_test) {
        (true, true) => "restore-test",
        (true, false) => "keyed",
        _ => "keyless",
    }
}

pub fn verify(
    config: &Config,
    select: &Select,
    identities: Option<&[Identity]>,
    restore_test: bool,
) -> Result<Outcome> {
    let verifier = crate::pipeline::job::trusted_verifier(config)?;
    if restore_test {
        // Scratch servers and their plain-text data must not outlive coffer.
        crate::pipeline::plumbing::signals::stop_on_signals()?;
    }
    let catalog = Catalog::load(config)?;
    let job = config.job.name.as_str();
    let level = level_of(identities.is_some(), restore_test);
    let now = chrono::Utc::now();
    let mut reports = Vec::new();
    let chosen: Option<(usize, String)> = match select {
        Select::All => None,
        Select::Latest => {
            let f = catalog.find(job, "latest", verifier.as_ref())?;
            Some((f.store, f.listed.name.clone()))
        }
        Select::Name(n) => {
            let f = catalog.find(job, n, verifier.as_ref())?;
            Some((f.store, f.listed.name.clone()))
        }
    };
    // Each store's trusted ledger entries, where its ledger is checked.
    let mut ledgers: Vec<(usize, Vec<ledger::Entry>)> = Vec::new();
    for (i, listed) in catalog.listed.iter().enumerate() {
        let store = catalog.stores[i].as_ref();
        let mut ledger_entries = Vec::new();
        let span = complete_span(listed, job);
        for l in listed {
            if let Some((ci, cn)) = &chosen {
                if *ci != i || cn != &l.name {
                    continue;
                }
            }
            let mut r = Report {
                store: store.name().to_owned(),
                name: l.name.clone(),
                ok: false,
                verdict: Verdict::Damaged,
                level,
                checks: Vec::new(),
                problems: Vec::new(),
                drill: None,
            };
            match (&l.state, &l.sidecar) {
                (State::Complete, Some(sidecar)) => {
                    if sidecar.job != job {
                        continue;
                    }
                    let ctx = Context {
                        job,
                        verifier: verifier.as_ref(),
                        identities,
                        restore_test,
                        now,
                    };
                    if complete(store, l, sidecar, &ctx, &mut r) {
                        ledger_entries.extend(ledger_entry(l));
                    }
                }
                // Another job's file in a shared store: its verify's
                // business (this job's own losses show in its ledger).
                (_, _) if another_jobs(job, &l.name) => continue,
                (_, _) => not_a_backup(l, span, (job, now), &mut r),
            }
            if r.verdict != Verdict::Leftover {
                r.verdict = if r.problems.is_empty() {
                    Verdict::Ok
                } else {
                    Verdict::Damaged
                };
            }
            r.ok = r.verdict != Verdict::Damaged;
            reports.push(r);
        }
        // A drill a signal stopped (its servers stopped and removed, the
        // backups after it failing at their first read) reports the signal.
        crate::pipeline::plumbing::signals::check()?;
        let has_ledger = verifier.is_some() || !ledger_entries.is_empty();
        if chosen.is_none()
            && has_ledger
            && !catalog
                .unreachable
                .iter()
                .any(|u| u.starts_with(store.name()))
        {
            ledgers.push((i, ledger_entries));
        }
    }
    reports.extend(ledger_reports(
        config,
        &catalog,
        &ledgers,
        verifier.as_ref(),
        now,
    ));
    Ok(Outcome {
        reports,
        unreachable: catalog.unreachable,
        key_failure: catalog.key_failure,
    })
}

/// The ledger of each store whose ledger is checked, once every store is
/// read: an entry one store lacks may be where another holds it, or
/// removed by retention as a record says.
fn ledger_reports(
    config: &Config,
    catalog: &Catalog,
    ledgers: &[(usize, Vec<ledger::Entry>)],
    verifier: Option<&crate::signing::Verifier>,
    now: chrono::DateTime<chrono::Utc>,
) -> Vec<Report> {
    let job = config.job.name.as_str();
    let mut out = Vec::new();
    for (i, entries) in ledgers {
        let store = catalog.stores[*i].as_ref();
        let pruned = crate::pipeline::catalog::pruned(store, job, verifier);
        let held_elsewhere = |seq: u64| {
            ledgers.iter().filter(|(j, _)| j != i).find_map(|(j, es)| {
                es.iter()
                    .find(|e| e.seq == seq)
                    .map(|e| (catalog.stores[*j].name(), e.name.as_str()))
            })
        };
        // How this store gets a backup back, truthfully for its kind.
        let refill_hint = |name: &str, other: &str| {
            let managed = config
                .stores
                .get(*i)
                .is_none_or(crate::config::Store::prune);
            if config.job.signing_key.is_none() && config.job.signing_public_key.is_none() {
                format!("this job is unsigned, so no run copies backups between stores: copy {name}'s files from {other} into this store yourself, or sign the job (signing_key)")
            } else if managed {
                "the next `coffer backup` copies it back".to_owned()
            } else {
                format!("this store is the server's to fill (prune = false): upload {name} into its incoming directory again and run `coffer ingest --accept-late {name}` there")
            }
        };
        let explain = |seq: u64| {
            if let Some(why) = pruned.get(&seq) {
                return Some(ledger::Absence::Pruned(why.clone()));
            }
            held_elsewhere(seq).map(|(other, name)| {
                ledger::Absence::Elsewhere(format!(
                    "{name} in {other}; {}",
                    refill_hint(name, other)
                ))
            })
        };
        let others = ledger::Elsewhere {
            explain: &explain,
            newest: ledgers
                .iter()
                .filter(|(j, _)| j != i)
                .flat_map(|(_, es)| es.iter().map(|e| e.seq))
                .max(),
        };
        let f = ledger::check_with(
            entries,
            config.job.keep_last,
            chrono::Duration::hours(i64::from(config.job.max_age_hours)),
            now,
            &others,
        );
        let verdict = if !f.problems.is_empty() {
            Verdict::Damaged
        } else if !f.elsewhere.is_empty() {
            Verdict::Missing
        } else {
            Verdict::Ok
        };
        let mut problems = f.problems;
        problems.extend(f.elsewhere);
        out.push(Report {
            store: store.name().to_owned(),
            name: format!("ledger of job {job}"),
            ok: verdict == Verdict::Ok,
            verdict,
            level: "ledger",
            checks: f.checks,
            problems,
            drill: None,
        });
    }
    out
}

/// A listed entry that is not a complete backup: a leftover of an
/// interrupted upload (not damage), or a sidecar that vouches for nothing.
/// The names of the oldest and the newest complete backup of `job` listed.
fn complete_span<'a>(
    listed: &'a [crate::pipeline::catalog::Listed],
    job: &str,
) -> Option<(&'a str, &'a str)> {
    let names = || {
        listed
            .iter()
            .filter(|l| {
                l.state == State::Complete
                    && l.sidecar.as_ref().is_some_and(|s| s.job == job)
                    && is_backup_name(job, &l.name)
            })
            .map(|l| l.name.as_str())
    };
    Some((names().min()?, names().max()?))
}

/// Whether `name` is a backup name of a job other than `job`
/// (`{other}-{YYYYMMDDTHHMMSSZ}[-N]`).
fn another_jobs(job: &str, name: &str) -> bool {
    name.match_indices('-')
        .map(|(i, _)| &name[..i])
        .any(|prefix| prefix != job && !prefix.is_empty() && is_backup_name(prefix, name))
}

/// An interrupted upload is newer than the newest complete backup, an
/// interrupted removal older than the oldest (retention deletes the sidecar
/// first), and either may be at most a day old; a sealed file among the
/// complete backups whose sidecar is gone is a backup the store lost the
/// sidecar of, not a leftover.
fn not_a_backup(
    l: &crate::pipeline::catalog::Listed,
    span: Option<(&str, &str)>,
    (job, now): (&str, chrono::DateTime<chrono::Utc>),
    r: &mut Report,
) {
    match &l.state {
        State::NoSidecar => {
            let name = l.name.as_str();
            let newer = span.is_some_and(|(oldest, newest)| name > newest || name < oldest);
            let recent =
                l.sealed_mtime > 0 && now.timestamp() - l.sealed_mtime <= LEFTOVER_GRACE_SECS;
            if is_backup_name(job, &l.name) && (newer || recent) {
                r.verdict = Verdict::Leftover;
                r.checks.push(
                    "an incomplete upload (a sealed file with no sidecar), not a backup: the job's next run removes it, or `coffer prune` once it is a day old".into(),
                );
            } else {
                r.problems.push(
                    "a sealed file with no sidecar, among the complete backups and older than a day: not an interrupted upload or removal but a backup whose sidecar is gone (it cannot be trusted to restore; another store may hold it)".into(),
                );
            }
        }
        State::NoSealedFile => r.problems.push("sidecar without its .coffer file".into()),
        State::BadSidecar(e) => r.problems.push(format!("sidecar is not valid: {e}")),
        State::Complete => r.problems.push("sidecar unreadable".into()),
    }
}

struct Context<'a> {
    job: &'a str,
    verifier: Option<&'a crate::signing::Verifier>,
    identities: Option<&'a [Identity]>,
    restore_test: bool,
    now: chrono::DateTime<chrono::Utc>,
}

/// Checks one complete backup; true if it is a trusted ledger entry.
fn complete(
    store: &dyn crate::store::Store,
    l: &crate::pipeline::catalog::Listed,
    sidecar: &Sidecar,
    ctx: &Context<'_>,
    r: &mut Report,
) -> bool {
    if !is_backup_name(ctx.job, &l.name) {
        r.problems.push(format!(
            "not a name a run of job {:?} makes: never counted as a backup",
            ctx.job
        ));
    }
    if sidecar
        .created()
        .is_none_or(|c| c > ctx.now + ledger::future_slack())
    {
        r.problems
            .push(format!("dated {}, in the future", sidecar.created));
    }
    let trusted = match origin(store, l, ctx.verifier) {
        Origin::Signed(key) => {
            r.checks.push(format!("signed by key {key}"));
            true
        }
        Origin::Unchecked => true,
        Origin::Refused(why) => {
            r.problems.push(why);
            false
        }
    };
    let entry = trusted && r.problems.is_empty();
    // Nothing unauthenticated is decrypted, let alone loaded into a
    // database: a forged backup gets the keyless checks only.
    let ids = ctx.identities.filter(|_| trusted);
    if ctx.identities.is_some() && ids.is_none() {
        r.problems
            .push("not decrypted or restore-tested: its origin is not authenticated".into());
    }
    check_one(store, sidecar, ids, ctx.restore_test && trusted, r);
    entry
}

/// What a verify run found, and which stores it could not reach.
pub struct Outcome {
    pub reports: Vec<Report>,
    pub unreachable: Vec<String>,
    /// A store that could not be listed because of a key, if any.
    pub key_failure: Option<crate::Error>,
}

fn check_one(
    store: &dyn crate::store::Store,
    sidecar: &Sidecar,
    identities: Option<&[Identity]>,
    restore_test: bool,
    r: &mut Report,
) {
    let started = Instant::now();
    let reader: Box<dyn Read + Send> = match store.get(&sidecar.sealed_name()) {
        Ok(x) => Box::new(crate::cancel::CancelReader(x)),
        Err(e) => {
            r.problems.push(crate::cli_chain(&e));
            return;
        }
    };
    let expect = crate::pipeline::restore::Expect::of(sidecar);
    let header = match identities {
        Some(ids) => {
            // Decrypt (let alone load into a database) only what matches the
            // sidecar: a private copy, checked first, is what gets opened.
            let copy = match crate::pipeline::restore::spool(reader, &sidecar.name, Some(&expect)) {
                Ok(c) => c,
                Err(e) => {
                    r.problems.push(crate::cli_chain(&e));
                    return;
                }
            };
            r.checks.push(format!("size {} bytes", sidecar.size));
            r.checks.push(expect.matched());
            match keyed_checked(
                Box::new(io::BufReader::new(copy)),
                ids,
                restore_test.then_some(started),
                sidecar,
                r,
            ) {
                Some(x) => x,
                None => return,
            }
        }
        None => match keyless(reader, &expect, r) {
            Ok(x) => x,
            Err(e) => {
                r.problems.push(e);
                return;
            }
        },
    };
    if header.metadata.job.as_deref() != Some(sidecar.job.as_str()) {
        r.problems.push(format!(
            "the header's job {:?} differs from the sidecar's",
            header.metadata.job
        ));
    }
    // The header's name is plain text until a key checks its MAC, but a
    // server that serves an older backup under the newest name and forgets
    // it is caught here without one. (Backups of earlier versions have none.)
    if let Some(n) = header
        .metadata
        .name
        .as_deref()
        .filter(|n| *n != sidecar.name)
    {
        r.problems.push(format!(
            "the header names backup {n:?}, the sidecar {}",
            sidecar.name
        ));
    }
    let mut in_header: Vec<String> = header
        .stanzas
        .iter()
        .map(crate::envelope::Stanza::label)
        .collect();
    let mut in_sidecar = sidecar.recipients.clone();
    in_header.sort();
    in_sidecar.sort();
    if in_header == in_sidecar {
        r.checks.push("header parses; recipients match".into());
    } else {
        r.problems
            .push("the header's recipients differ from the sidecar's".into());
    }
}

/// The keyed walk over a checked copy: the header for the common checks, or
/// `None` (problems recorded) if the walk failed.
fn keyed_checked(
    reader: Box<dyn Read + Send>,
    ids: &[Identity],
    restore_test: Option<Instant>,
    sidecar: &Sidecar,
    r: &mut Report,
) -> Option<Header> {
    let w = keyed(reader, ids, restore_test, r)?;
    if w.manifest.name != sidecar.name || w.manifest.job != sidecar.job {
        r.problems.push(format!(
            "the inner manifest names {:?} of job {:?}",
            w.manifest.name, w.manifest.job
        ));
    }
    Some(w.header)
}

/// Decrypts and checks everything; with `restore_test` (the time the
/// restore started), loads each database dump on the way and compares row
/// counts.
fn keyed(
    reader: Box<dyn Read + Send>,
    ids: &[Identity],
    restore_test: Option<Instant>,
    r: &mut Report,
) -> Option<Walked> {
    let mut drill = restore_test.map(|_| Drilling::default());
    let reader = Box::new(crate::cancel::CancelReader(reader));
    let walked = walk(reader, ids, |m, data| match drill.as_mut() {
        Some(d) => d.member(m.name, data),
        None => Ok(()),
    });
    if let Some(d) = drill.as_mut() {
        d.finish_loading();
    }
    let w = match walked {
        Ok(w) => w,
        Err(e) => {
            r.problems.push(describe(&e));
            return None;
        }
    };
    r.checks.push(format!(
        "every chunk authenticated; {} members match {}",
        w.members,
        crate::manifest::INNER_NAME
    ));
    if let (Some(d), Some(started)) = (drill, restore_test) {
        let seconds = started.elapsed().as_secs_f64();
        let tables = d.compare(
            &w.manifest,
            &mut Notes {
                checks: &mut r.checks,
                problems: &mut r.problems,
            },
        );
        #[allow(clippy::cast_precision_loss)] // byte counts far below 2^53
        let rate = if seconds > 0.0 {
            d.bytes as f64 / seconds
        } else {
            0.0
        };
        r.drill = Some(Drill {
            restore_seconds: seconds,
            restored_bytes: d.bytes,
            bytes_per_second: rate,
            tables,
        });
    }
    Some(w)
}

/// Hashes the whole file and parses its header.
/// The keyless checks: the header parses, and the whole file's size and
/// digest (a problem each, recorded) are the sidecar's. At most one byte
/// past the sidecar's size is read: a server that streams without end is
/// caught there.
fn keyless(
    reader: Box<dyn Read + Send>,
    expect: &crate::pipeline::restore::Expect,
    r: &mut Report,
) -> std::result::Result<Header, String> {
    let mut raw = HashRead::new(reader.take(expect.size.saturating_add(1)), expect.digest.0)
        .and_sha256(expect.sha256.is_some());
    let (header, _) = Header::read(&mut raw).map_err(|e| match e {
        OpenError::Envelope(e) => format!("header: {e}"),
        OpenError::Io(e) => format!("read: {e}"),
    })?;
    io::copy(&mut raw, &mut io::sink()).map_err(|e| format!("read: {e}"))?;
    let len = raw.len;
    let (hex, sha256) = raw.hexes();
    match expect.check_ciphertext(len, &hex, sha256.as_deref()) {
        Ok(()) => {
            r.checks.push(format!("size {len} bytes"));
            r.checks.push(expect.matched());
        }
        Err(e) => r.problems.push(e),
    }
    Ok(header)
}

fn describe(e: &WalkError) -> String {
    match e {
        WalkError::Envelope(env) => env.to_string(),
        other => other.to_string(),
    }
}
