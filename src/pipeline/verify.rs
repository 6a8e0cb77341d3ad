//! `coffer verify`: is what sits in the stores complete, untampered and
//! restorable? Without a key: sidecar, size, SHA-256, header. With a key:
//! also every chunk, the decompression, and every member against the inner
//! manifest.

use std::io::{self, Read};

use serde::Serialize;

use crate::config::Config;
use crate::envelope::{Header, Identity, OpenError};
use crate::error::Result;
use crate::ledger;
use crate::manifest::is_backup_name;
use crate::manifest::Sidecar;
use crate::pipeline::locate::{ledger_entry, origin, Catalog, Origin};
use crate::pipeline::retention::State;
use crate::pipeline::scratch::ScratchMariaDb;
use crate::pipeline::walk::{walk, HashRead, WalkError, Walked};

pub enum Select {
    All,
    Latest,
    Name(String),
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub store: String,
    pub name: String,
    pub ok: bool,
    /// `keyless` or `keyed`.
    pub level: &'static str,
    pub checks: Vec<String>,
    pub problems: Vec<String>,
}

/// `restore_test` (needs identities) also loads each MariaDB/MySQL dump into
/// a private scratch server and compares row counts with the manifest.
pub fn verify(
    config: &Config,
    select: &Select,
    identities: Option<&[Identity]>,
    restore_test: bool,
) -> Result<Outcome> {
    let verifier = match &config.job.signing_public_key {
        Some(p) => Some(crate::pipeline::job::load_verifier(p)?),
        None => None,
    };
    let catalog = Catalog::load(config)?;
    let job = config.job.name.as_str();
    let level = match (identities.is_some(), restore_test) {
        (true, true) => "restore-test",
        (true, false) => "keyed",
        _ => "keyless",
    };
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
    for (i, listed) in catalog.listed.iter().enumerate() {
        let store = catalog.stores[i].as_ref();
        let mut ledger_entries = Vec::new();
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
                level,
                checks: Vec::new(),
                problems: Vec::new(),
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
                (State::NoSidecar, _) => r
                    .problems
                    .push("no sidecar: an incomplete upload, not a backup".into()),
                (State::NoSealedFile, _) => {
                    r.problems.push("sidecar without its .coffer file".into());
                }
                (State::BadSidecar(e), _) => r.problems.push(format!("sidecar is not valid: {e}")),
                (State::Complete, None) => r.problems.push("sidecar unreadable".into()),
            }
            r.ok = r.problems.is_empty();
            reports.push(r);
        }
        let has_ledger = verifier.is_some() || !ledger_entries.is_empty();
        if chosen.is_none()
            && has_ledger
            && !catalog
                .unreachable
                .iter()
                .any(|u| u.starts_with(store.name()))
        {
            let f = ledger::check(
                &ledger_entries,
                config.job.keep_last,
                chrono::Duration::hours(i64::from(config.job.max_age_hours)),
                now,
            );
            reports.push(Report {
                store: store.name().to_owned(),
                name: format!("ledger of job {job}"),
                ok: f.problems.is_empty(),
                level: "ledger",
                checks: f.checks,
                problems: f.problems,
            });
        }
    }
    Ok(Outcome {
        reports,
        unreachable: catalog.unreachable,
    })
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
    l: &crate::pipeline::retention::Listed,
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
}

fn check_one(
    store: &dyn crate::store::Store,
    sidecar: &Sidecar,
    identities: Option<&[Identity]>,
    restore_test: bool,
    r: &mut Report,
) {
    let reader = match store.get(&sidecar.sealed_name()) {
        Ok(x) => x,
        Err(e) => {
            r.problems.push(crate::cli_chain(&e));
            return;
        }
    };
    let (header, len, sha) = match identities {
        Some(ids) => {
            // Decrypt (let alone load into a database) only what matches the
            // sidecar: a private copy, checked first, is what gets opened.
            let copy = match crate::pipeline::restore::spool(
                reader,
                &sidecar.name,
                Some(&crate::pipeline::restore::Expect::of(sidecar)),
            ) {
                Ok(c) => c,
                Err(e) => {
                    r.problems.push(crate::cli_chain(&e));
                    return;
                }
            };
            match keyed_checked(
                Box::new(io::BufReader::new(copy)),
                ids,
                restore_test,
                sidecar,
                r,
            ) {
                Some(x) => x,
                None => return,
            }
        }
        None => match keyless(reader) {
            Ok(x) => x,
            Err(e) => {
                r.problems.push(e);
                return;
            }
        },
    };
    if len == sidecar.size {
        r.checks.push(format!("size {len} bytes"));
    } else {
        r.problems.push(format!(
            "size is {len} bytes, the sidecar says {}",
            sidecar.size
        ));
    }
    if sha == sidecar.sha256 {
        r.checks.push("SHA-256 matches the sidecar".into());
    } else {
        r.problems.push(format!(
            "SHA-256 is {sha}, the sidecar says {}",
            sidecar.sha256
        ));
    }
    if header.metadata.job.as_deref() != Some(sidecar.job.as_str()) {
        r.problems.push(format!(
            "the header's job {:?} differs from the sidecar's",
            header.metadata.job
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

/// The keyed walk over a checked copy: header, length and hash for the
/// common checks, or `None` (problems recorded) if the walk failed.
fn keyed_checked(
    reader: Box<dyn Read + Send>,
    ids: &[Identity],
    restore_test: bool,
    sidecar: &Sidecar,
    r: &mut Report,
) -> Option<(Header, u64, String)> {
    let w = keyed(reader, ids, restore_test, r)?;
    if w.manifest.name != sidecar.name || w.manifest.job != sidecar.job {
        r.problems.push(format!(
            "the inner manifest names {:?} of job {:?}",
            w.manifest.name, w.manifest.job
        ));
    }
    Some((w.header, w.ciphertext_len, w.ciphertext_sha256))
}

/// Decrypts and checks everything; with `restore_test`, loads MariaDB dumps
/// into a scratch server on the way and compares row counts.
fn keyed(
    reader: Box<dyn Read + Send>,
    ids: &[Identity],
    restore_test: bool,
    r: &mut Report,
) -> Option<Walked> {
    let scratch = if restore_test {
        match ScratchMariaDb::start() {
            Ok(s) => Some(s),
            Err(e) => {
                r.problems.push(format!("restore test: {e}"));
                return None;
            }
        }
    } else {
        None
    };
    let mut loading: Option<(String, std::process::Child)> = None;
    let mut loaded: Vec<(String, std::result::Result<(), String>)> = Vec::new();
    let walked = walk(reader, ids, |m, data| {
        let Some(db) = &scratch else { return Ok(()) };
        if !m.name.starts_with("mysql/") {
            return Ok(());
        }
        if loading.as_ref().is_none_or(|(n, _)| n != m.name) {
            if let Some((n, child)) = loading.take() {
                loaded.push((n, ScratchMariaDb::finish_loader(child)));
            }
            let child = db
                .loader()
                .map_err(|e| WalkError::Io(format!("restore test: {e}")))?;
            loading = Some((m.name.to_owned(), child));
        }
        if let Some(stdin) = loading.as_mut().and_then(|(_, c)| c.stdin.as_mut()) {
            // A load that fails stops reading; the failure is reported when it is waited for.
            let _ = io::copy(data, stdin);
        }
        Ok(())
    });
    if let Some((n, child)) = loading.take() {
        loaded.push((n, ScratchMariaDb::finish_loader(child)));
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
    if let Some(db) = &scratch {
        for (member, result) in &loaded {
            match result {
                Ok(()) => r.checks.push(format!(
                    "restore test: {member} loaded into a scratch MariaDB"
                )),
                Err(e) => r
                    .problems
                    .push(format!("restore test: loading {member} failed: {e}")),
            }
        }
        for source in w.manifest.sources.iter().filter(|s| s.kind == "mysql") {
            let mut tables = 0;
            for (table, want) in &source.row_counts {
                match db.count(table) {
                    Ok(got) if got == *want => tables += 1,
                    Ok(got) => r.problems.push(format!(
                        "restore test: {table} has {got} rows, the manifest says {want}"
                    )),
                    Err(e) => r.problems.push(format!("restore test: {table}: {e}")),
                }
            }
            r.checks
                .push(format!("restore test: row counts of {tables} tables match"));
        }
        if loaded.is_empty() {
            r.checks
                .push("restore test: no MariaDB/MySQL dump in this backup".into());
        }
    }
    Some(w)
}

/// Hashes the whole file and parses its header.
fn keyless(reader: Box<dyn Read + Send>) -> std::result::Result<(Header, u64, String), String> {
    let mut raw = HashRead::new(reader);
    let (header, _) = Header::read(&mut raw).map_err(|e| match e {
        OpenError::Envelope(e) => format!("header: {e}"),
        OpenError::Io(e) => format!("read: {e}"),
    })?;
    io::copy(&mut raw, &mut io::sink()).map_err(|e| format!("read: {e}"))?;
    let len = raw.len;
    Ok((header, len, raw.hex()))
}

fn describe(e: &WalkError) -> String {
    match e {
        WalkError::Envelope(env) => env.to_string(),
        other => other.to_string(),
    }
}
