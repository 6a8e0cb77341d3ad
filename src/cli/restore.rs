use std::path::PathBuf;

use crate::config::Config;
use crate::error::Error;
use crate::pipeline::io::Output;
use crate::pipeline::keys::load_identities;
use crate::pipeline::locate::{is_file, Catalog};
use crate::pipeline::restore::{restore, Target};

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["to", "stdout", "into_db"])))]
pub struct Args {
    /// The configuration naming the stores (not needed for a FILE)
    #[arg(short = 'c', long, value_name = "CONFIG")]
    config: Option<PathBuf>,
    /// The private key(s)
    #[arg(
        short = 'i',
        long = "identity",
        value_name = "IDENTITY",
        required = true
    )]
    identities: Vec<PathBuf>,
    /// A .coffer file, a backup name from `coffer list`, or `latest`
    what: String,
    /// Extract into this directory (created if missing)
    #[arg(long, value_name = "DIR")]
    to: Option<PathBuf>,
    /// Load the dump of this configured mysql or postgres source straight into its server
    #[arg(long, value_name = "SOURCE", requires = "config")]
    into_db: Option<String>,
    /// With --into-db: the database to load into (default: the one dumped)
    #[arg(long, requires = "into_db", value_name = "NAME")]
    database: Option<String>,
    /// Replace existing files in DIR, or load into a database that is not empty
    #[arg(long)]
    force: bool,
    /// On failure, keep what was extracted instead of removing it
    #[arg(long, requires = "to")]
    keep_partial: bool,
    /// Write to stdout: one member with --member, else the whole tar archive
    #[arg(long)]
    stdout: bool,
    /// The member to write, e.g. mysql/main.sql (split dumps are joined)
    #[arg(long, requires = "stdout", value_name = "NAME")]
    member: Option<String>,
}

pub fn run(a: &Args, out: &super::Output) -> anyhow::Result<()> {
    let identities = load_identities(&a.identities)?;
    let config = a.config.as_deref().map(Config::load).transpose()?;
    let (input, what, total) = if is_file(&a.what) {
        let f = std::fs::File::open(&a.what).map_err(|e| Error::io(&a.what, "open", e))?;
        let total = f.metadata().ok().map(|m| m.len());
        (
            Box::new(std::io::BufReader::new(f)) as Box<dyn std::io::Read + Send>,
            a.what.clone(),
            total,
        )
    } else {
        let Some(config) = &config else {
            return Err(Error::Usage(format!(
                "{:?} is not a file; give -c CONFIG to find it in the stores",
                a.what
            ))
            .into());
        };
        let catalog = Catalog::load(config)?;
        let (i, sidecar) = catalog.find(&config.job.name, &a.what)?;
        let store = &catalog.stores[i];
        (
            store.get(&sidecar.sealed_name())?,
            format!("{} in {}", sidecar.name, store.name()),
            Some(sidecar.size),
        )
    };
    let input: Box<dyn std::io::Read + Send> =
        Box::new(super::progress::Progress::new(input, total, "restoring"));
    if let (Some(source), Some(config)) = (&a.into_db, &config) {
        if let Some(w) = crate::pipeline::load::warning(config, source) {
            out.warn(&w);
        }
        let w = crate::pipeline::load::into_db(
            config,
            source,
            a.database.as_deref(),
            a.force,
            input,
            &what,
            &identities,
        )?;
        out.summary(
            &format!(
                "restored {what} into the {source} server: every chunk authenticated, {} members match {}",
                w.members,
                crate::manifest::INNER_NAME
            ),
            &serde_json::json!({"event": "restore", "backup": what, "into_db": source}),
            true,
        );
        return Ok(());
    }
    let target = match (&a.to, &a.member) {
        (Some(dir), _) => Target::Dir {
            dir: dir.clone(),
            force: a.force,
            keep_partial: a.keep_partial,
        },
        (None, Some(name)) => Target::Member { name: name.clone() },
        (None, None) => Target::Tar,
    };
    let mut sink: Box<dyn std::io::Write> = if a.stdout {
        Box::new(Output::create(None, 0o600)?)
    } else {
        Box::new(std::io::sink())
    };
    let walked = restore(input, &what, &identities, target, &mut sink)?;
    if let Some(w) = walked {
        let place =
            a.to.as_ref()
                .map_or_else(|| "stdout".to_owned(), |d| d.display().to_string());
        out.summary(
            &format!(
                "restored {what} to {place}: every chunk authenticated, {} members match {}",
                w.members,
                crate::manifest::INNER_NAME
            ),
            &serde_json::json!({"event": "restore", "backup": what, "to": place, "members": w.members}),
            true,
        );
    }
    Ok(())
}
