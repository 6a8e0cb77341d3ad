use std::path::PathBuf;

use crate::config::Config;
use crate::pipeline::job::{build_stores, policy};
use crate::pipeline::prune::{apply, How};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(short = 'c', long, value_name = "CONFIG", env = "COFFER_CONFIG", default_value = super::DEFAULT_CONFIG)]
    config: PathBuf,
    /// Override the configured keep_last
    #[arg(long)]
    keep_last: Option<u32>,
    /// Print what would be kept and deleted, and why; delete nothing
    #[arg(long)]
    dry_run: bool,
    /// Only this store
    #[arg(long)]
    store: Option<String>,
}

/// Store file names are the server's: escaped, never raw to a terminal.
fn say(line: &str) {
    outln!("{}", super::one_line(line));
}

pub fn run(a: &Args) -> anyhow::Result<()> {
    let config = Config::load(&a.config)?;
    let mut p = policy(&config.job);
    if let Some(n) = a.keep_last {
        anyhow::ensure!(n >= 1, "--keep-last must be at least 1");
        p.keep_last = n;
    }
    let now = chrono::Utc::now();
    let verifier = crate::pipeline::job::trusted_verifier(&config)?;
    // Where this machine holds the signing key (the backup host), what it
    // deletes is recorded signed: a later verify believes the record.
    let signer = match crate::pipeline::job::load_signer(&config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "coffer: warning: {}",
                super::one_line(&format!(
                    "prune records are written unsigned, so verify with a signing public key will not believe them: {}",
                    crate::cli_chain(&e)
                ))
            );
            None
        }
    };
    let recorder = crate::pipeline::catalog::Recorder {
        signer: signer.as_ref(),
        window: config.job.keep_last,
    };
    for (store, prune) in build_stores(&config) {
        if a.store.as_deref().is_some_and(|s| s != store.name()) {
            continue;
        }
        if !prune && a.store.is_none() {
            outln!("{}: prune = false, skipped", store.name());
            continue;
        }
        let how = How {
            protect: None,
            dry_run: a.dry_run,
            now,
            verifier: verifier.as_ref(),
            recorder: Some(&recorder),
        };
        let r = apply(store.as_ref(), &config.job.name, p, &how)?;
        for (name, why) in &r.ignored {
            say(&format!(
                "{}: ignore {name} (never counted, never deleted: {why})",
                r.store
            ));
        }
        let verb = if a.dry_run { "would delete" } else { "deleted" };
        for d in &r.decisions {
            let what = if d.keep {
                "keep".to_owned()
            } else {
                verb.to_owned()
            };
            say(&format!(
                "{}: {what} {} ({})",
                r.store,
                d.name,
                d.reasons.join(", ")
            ));
        }
        for s in &r.stale_partials {
            say(&format!(
                "{}: {verb} {s} (left by an interrupted upload or removal)",
                r.store
            ));
        }
    }
    Ok(())
}
