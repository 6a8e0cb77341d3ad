use std::path::PathBuf;

use crate::config::Config;
use crate::error::Error;
use crate::pipeline::keys::load_identities;
use crate::pipeline::sqlclient::{mysql_client, MysqlClient};
use crate::pipeline::verify::{verify, Select};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(short = 'c', long, value_name = "CONFIG", env = "COFFER_CONFIG", default_value = super::DEFAULT_CONFIG)]
    config: PathBuf,
    /// A backup name, or `latest`; every backup in every store if absent
    what: Option<String>,
    /// Every backup in every store (the default)
    #[arg(long, conflicts_with = "what")]
    all: bool,
    /// Also decrypt: authenticate every chunk and check every member
    #[arg(short = 'i', long = "identity", value_name = "IDENTITY")]
    identities: Vec<PathBuf>,
    /// Also load each MariaDB/MySQL dump into a private scratch server coffer
    /// starts, and compare its row counts with the manifest (needs -i)
    #[arg(long, requires = "identities")]
    restore_test: bool,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

pub fn run(a: &Args, out: &super::Output) -> anyhow::Result<()> {
    let config = Config::load(&a.config)?;
    let identities = if a.identities.is_empty() {
        None
    } else {
        Some(load_identities(&a.identities)?)
    };
    let select = match a.what.as_deref() {
        None => Select::All,
        Some("latest") => Select::Latest,
        Some(n) => Select::Name(n.to_owned()),
    };
    if a.restore_test {
        if let Some(w) = mysql_client().and_then(MysqlClient::warning) {
            out.warn(&w);
        }
    }
    let outcome = verify(&config, &select, identities.as_deref(), a.restore_test)?;
    for u in &outcome.unreachable {
        out.warn(u);
    }
    let reports = &outcome.reports;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        for r in reports {
            if r.ok {
                // Names and messages quote the store: never raw to a terminal.
                println!(
                    "{}",
                    super::one_line(&format!(
                        "ok    {} ({}, {}): {}",
                        r.name,
                        r.store,
                        r.level,
                        r.checks.join("; ")
                    ))
                );
            } else {
                println!(
                    "{}",
                    super::one_line(&format!(
                        "FAIL  {} ({}, {}): {}",
                        r.name,
                        r.store,
                        r.level,
                        r.problems.join("; ")
                    ))
                );
            }
        }
    }
    let failed = reports.iter().filter(|r| !r.ok).count();
    if failed > 0 {
        return Err(Error::VerifyFailed {
            failed,
            total: reports.len(),
        }
        .into());
    }
    if !outcome.unreachable.is_empty() {
        // A verify job that stays green while a store cannot be reached
        // would hide exactly what it is run to find.
        return Err(Error::Store {
            store: "verify".into(),
            message: format!(
                "{} store(s) could not be reached (see the warnings): their backups were not verified, the others' were",
                outcome.unreachable.len()
            ),
        }
        .into());
    }
    if reports.is_empty() {
        return Err(Error::Usage("no backups to verify".into()).into());
    }
    Ok(())
}
