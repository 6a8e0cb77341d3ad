use std::path::PathBuf;

use crate::config::Config;
use crate::pipeline::catalog::locate::{origin, plausible, Origin};
use crate::pipeline::catalog::{list, Listed, State};
use crate::pipeline::job::{build_stores, trusted_verifier};
use crate::signing::Verifier;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(short = 'c', long, value_name = "CONFIG", env = "COFFER_CONFIG", default_value = super::DEFAULT_CONFIG)]
    config: PathBuf,
    /// Only this store
    #[arg(long)]
    store: Option<String>,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

pub fn run(a: &Args) -> anyhow::Result<()> {
    let config = Config::load(&a.config)?;
    let verifier = trusted_verifier(&config)?;
    let now = chrono::Utc::now();
    let mut rows = Vec::new();
    let mut failed = 0;
    let mut first_error = None;
    let stores: Vec<_> = build_stores(&config)
        .into_iter()
        .filter(|(store, _)| a.store.as_deref().is_none_or(|s| s == store.name()))
        .collect();
    if stores.is_empty() {
        return Err(crate::Error::Usage(format!(
            "no store named {:?} in {}",
            a.store.as_deref().unwrap_or_default(),
            a.config.display()
        ))
        .into());
    }
    let total = stores.len();
    for (store, _) in stores {
        let (listed, partials) = match list(store.as_ref()) {
            Ok(x) => x,
            // The only store: its own error, with its exit code (a refused
            // key is 4, a missing S3 bucket 2).
            Err(e) if total == 1 => return Err(e.into()),
            Err(e) => {
                // The other stores still answer: list them, and say which did not.
                eprintln!(
                    "coffer: warning: {} is unreachable, its backups are left out: {}",
                    store.name(),
                    crate::about(&e, store.name())
                );
                failed += 1;
                if first_error.is_none() || e.exit_code() == crate::ExitCode::Key {
                    first_error = Some(e);
                }
                continue;
            }
        };
        for l in listed {
            let (status, created) = match (&l.state, &l.sidecar) {
                (State::Complete, Some(s)) => (
                    believed(store.as_ref(), &l, &config.job.name, now, verifier.as_ref()),
                    s.created.clone(),
                ),
                (State::NoSidecar, _) => ("incomplete (no sidecar)".into(), String::new()),
                (State::NoSealedFile, _) => ("incomplete (no .coffer file)".into(), String::new()),
                (State::BadSidecar(e), _) => (format!("bad sidecar: {e}"), String::new()),
                (State::Complete, None) => ("complete".into(), String::new()),
            };
            // "complete" stays the word for what counts (scripts filter on
            // it); the signature is its own field.
            let (status, signature) = match status.strip_suffix(", signed") {
                Some(s) => (s.to_owned(), "good"),
                None if status == "complete" && verifier.is_none() => (status, "not checked"),
                None => (status, ""),
            };
            rows.push(serde_json::json!({
                "store": store.name(), "name": l.name, "created": created,
                "size": l.size, "status": status, "signature": signature,
            }));
        }
        for p in partials {
            rows.push(serde_json::json!({
                "store": store.name(), "name": p.name, "created": "", "size": p.size,
                "status": "partial upload",
            }));
        }
    }
    if failed == total {
        // Every store failed (each named in a warning): the exit code is
        // that of a key problem if there was one, else the first failure's.
        if let Some(e) = first_error {
            return Err(e.into());
        }
    }
    if a.json {
        outln!(
            "{}",
            super::terminal_safe(&serde_json::to_string_pretty(&rows)?)
        );
        return Ok(());
    }
    print_table(&rows);
    Ok(())
}

/// A complete backup's status as `latest`, retention and restore see it:
/// "complete" only for what they count (the server's word is not enough).
fn believed(
    store: &dyn crate::store::Store,
    l: &Listed,
    job: &str,
    now: chrono::DateTime<chrono::Utc>,
    verifier: Option<&Verifier>,
) -> String {
    if !plausible(l, job, now) {
        let why = match &l.sidecar {
            Some(s) if s.job != job => format!("another job's ({})", s.job),
            Some(s)
                if s.created()
                    .is_some_and(|c| c > now + crate::ledger::future_slack()) =>
            {
                "dated in the future".into()
            }
            _ => "not a name a run makes".into(),
        };
        return format!("ignored: {why}");
    }
    match origin(store, l, verifier) {
        Origin::Signed(_) => "complete, signed".into(),
        Origin::Unchecked => "complete".into(),
        Origin::Refused(why) => format!("refused: {why}"),
    }
}

/// Columns as wide as their widest cell, so long job and store names line up.
fn print_table(rows: &[serde_json::Value]) {
    let cells: Vec<[String; 5]> = rows
        .iter()
        .map(|r| {
            // Names come from the store: a server must not be able to
            // write escape sequences to the operator's terminal.
            let text = |k: &str| super::one_line(r[k].as_str().unwrap_or(""));
            let size = r["size"]
                .as_u64()
                .map(|n| n.to_string())
                .unwrap_or_default();
            let status = match r["signature"].as_str() {
                Some("good") => format!("{}, signed", text("status")),
                _ => text("status"),
            };
            [text("name"), text("created"), size, text("store"), status]
        })
        .collect();
    let header = ["NAME", "CREATED", "SIZE", "STORE", "STATUS"].map(str::to_owned);
    let mut w = [0usize; 4];
    for row in std::iter::once(&header).chain(&cells) {
        for (i, c) in row.iter().take(4).enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    for [name, created, size, store, status] in std::iter::once(&header).chain(&cells) {
        let line = format!(
            "{name:<w0$}  {created:<w1$}  {size:>w2$}  {store:<w3$}  {status}",
            w0 = w[0],
            w1 = w[1],
            w2 = w[2],
            w3 = w[3],
        );
        outln!("{}", line.trim_end());
    }
}
