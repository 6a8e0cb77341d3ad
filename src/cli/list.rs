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
    for (store, _) in build_stores(&config) {
        if a.store.as_deref().is_some_and(|s| s != store.name()) {
            continue;
        }
        let (listed, partials) = list(store.as_ref())?;
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
