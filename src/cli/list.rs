use std::path::PathBuf;

use crate::config::Config;
use crate::pipeline::job::build_stores;
use crate::pipeline::retention::{list, State};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(short = 'c', long, value_name = "CONFIG")]
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
    let mut rows = Vec::new();
    let mut failed = 0;
    let stores = build_stores(&config);
    let total = stores.len();
    for (store, _) in stores {
        if a.store.as_deref().is_some_and(|s| s != store.name()) {
            continue;
        }
        let (listed, partials) = match list(store.as_ref()) {
            Ok(x) => x,
            Err(e) => {
                // The other stores still answer: list them, and say which did not.
                eprintln!(
                    "coffer: warning: {} is unreachable, its backups are left out: {}",
                    store.name(),
                    crate::cli_chain(&e)
                );
                failed += 1;
                continue;
            }
        };
        for l in listed {
            let (status, created) = match (&l.state, &l.sidecar) {
                (State::Complete, Some(s)) => ("complete".to_owned(), s.created.clone()),
                (State::NoSidecar, _) => ("incomplete (no sidecar)".into(), String::new()),
                (State::NoSealedFile, _) => ("incomplete (no .coffer file)".into(), String::new()),
                (State::BadSidecar(e), _) => (format!("bad sidecar: {e}"), String::new()),
                (State::Complete, None) => ("complete".into(), String::new()),
            };
            rows.push(serde_json::json!({
                "store": store.name(), "name": l.name, "created": created,
                "size": l.size, "status": status,
            }));
        }
        for p in partials {
            rows.push(serde_json::json!({
                "store": store.name(), "name": p.name, "created": "", "size": p.size,
                "status": "partial upload",
            }));
        }
    }
    if failed > 0 && failed == total {
        anyhow::bail!(crate::Error::Store {
            store: "every store".into(),
            message: "none could be listed".into(),
        });
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "{:<40} {:<21} {:>14}  {:<24} STATUS",
        "NAME", "CREATED", "SIZE", "STORE"
    );
    for r in rows {
        println!(
            "{:<40} {:<21} {:>14}  {:<24} {}",
            r["name"].as_str().unwrap_or(""),
            r["created"].as_str().unwrap_or(""),
            r["size"]
                .as_u64()
                .map(|n| n.to_string())
                .unwrap_or_default(),
            r["store"].as_str().unwrap_or(""),
            r["status"].as_str().unwrap_or("")
        );
    }
    Ok(())
}
