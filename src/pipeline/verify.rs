//! `coffer verify`: is what sits in the stores complete, untampered and
//! restorable? Without a key: sidecar, size, SHA-256, header. With a key:
//! also every chunk, the decompression, and every member against the inner
//! manifest.

use std::io::{self, Read};

use serde::Serialize;

use crate::config::Config;
use crate::envelope::{Header, Identity, OpenError};
use crate::error::Result;
use crate::manifest::Sidecar;
use crate::pipeline::locate::Catalog;
use crate::pipeline::retention::State;
use crate::pipeline::scratch::ScratchMariaDb;
use crate::pipeline::walk::{walk, HashRead, WalkError, Walked};
use crate::signing::{Verifier, SIGNATURE_SUFFIX};

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
) -> Result<Vec<Report>> {
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
    let mut reports = Vec::new();
    let chosen: Option<(usize, String)> = match select {
        Select::All => None,
        Select::Latest => Some(
            catalog
                .find(job, "latest")
                .map(|(i, s)| (i, s.name.clone()))?,
        ),
        Select::Name(n) => Some(catalog.find(job, n).map(|(i, s)| (i, s.name.clone()))?),
    };
    for (i, listed) in catalog.listed.iter().enumerate() {
        let store = catalog.stores[i].as_ref();
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
                    if let Some(v) = &verifier {
                        check_signature(store, sidecar, v, &mut r);
                    }
                    check_one(store, sidecar, identities, restore_test, &mut r);
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
    }
    Ok(reports)
}

/// The sidecar (which holds the ciphertext's SHA-256) must carry a good
/// signature by the configured key: unsigned or forged fails.
fn check_signature(
    store: &dyn crate::store::Store,
    sidecar: &Sidecar,
    verifier: &Verifier,
    r: &mut Report,
) {
    let name = sidecar.file_name();
    let sig_name = format!("{name}{SIGNATURE_SUFFIX}");
    let read = |file: &str| -> std::result::Result<Vec<u8>, String> {
        let mut buf = Vec::new();
        store
            .get(file)
            .map_err(|e| crate::cli_chain(&e))?
            .take(1 << 20)
            .read_to_end(&mut buf)
            .map_err(|e| format!("{file}: {e}"))?;
        Ok(buf)
    };
    let json = match read(&name) {
        Ok(j) => j,
        Err(e) => return r.problems.push(e),
    };
    let signature = match store.stat(&sig_name) {
        Ok(Some(_)) => match read(&sig_name) {
            Ok(s) => String::from_utf8_lossy(&s).into_owned(),
            Err(e) => return r.problems.push(e),
        },
        Ok(None) => {
            return r.problems.push(format!(
                "unsigned: {sig_name} is missing, and signing_public_key requires a signature"
            ))
        }
        Err(e) => return r.problems.push(crate::cli_chain(&e)),
    };
    match verifier.verify(&json, &signature) {
        Ok(()) => r
            .checks
            .push(format!("signed by key {}", verifier.key_id())),
        Err(e) => r.problems.push(format!("signature: {e}")),
    }
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
        Some(ids) => match keyed(reader, ids, restore_test, r) {
            Some(w) => {
                if w.manifest.name != sidecar.name {
                    r.problems
                        .push(format!("the inner manifest names {:?}", w.manifest.name));
                }
                (w.header, w.ciphertext_len, w.ciphertext_sha256)
            }
            None => return,
        },
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
