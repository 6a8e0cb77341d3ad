use std::path::PathBuf;

use crate::config::Config;
use crate::error::Error;
use crate::pipeline::ingest::ingest;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The server-side configuration: the job, its signing public key, and
    /// the store(s) the upload account cannot reach
    #[arg(short = 'c', long, value_name = "CONFIG")]
    config: PathBuf,
    /// The upload account's directory (e.g. its SFTP chroot)
    #[arg(long, value_name = "DIR")]
    from: PathBuf,
    /// Say what would be taken; copy and remove nothing
    #[arg(long)]
    dry_run: bool,
    /// Take this upload although it is dated no later than the newest
    /// backup held (a missed night copied in late): only the operator can
    /// tell it from a back-dated one a compromised host signed
    #[arg(long, value_name = "NAME")]
    accept_late: Vec<String>,
}

pub fn run(a: &Args, out: &super::Output) -> anyhow::Result<()> {
    let config = Config::load(&a.config)?;
    let r = ingest(&config, &a.from, a.dry_run, &a.accept_late)?;
    let verb = if a.dry_run {
        "would ingest"
    } else {
        "ingested"
    };
    for n in &r.ingested {
        outln!("{}", super::one_line(&format!("{verb} {n}")));
    }
    for (n, why) in &r.refused {
        out.warn(&format!("left {n} in {}: {why}", a.from.display()));
    }
    for (n, why) in &r.failed {
        out.warn(&format!(
            "left {n} in {}: a store failed: {why}",
            a.from.display()
        ));
    }
    if !r.refused.is_empty() {
        return Err(Error::Integrity {
            what: a.from.display().to_string(),
            message: format!(
                "{} upload(s) refused and left in place; {} ingested",
                r.refused.len(),
                r.ingested.len()
            ),
        }
        .into());
    }
    if !r.failed.is_empty() {
        // The uploads are sound; a store is not (full, gone): the next
        // ingest copies them into the stores that lack them.
        return Err(Error::Store {
            store: a.from.display().to_string(),
            message: format!(
                "{} upload(s) not taken by every store, left in place to be finished by the \
                 next ingest; {} ingested",
                r.failed.len(),
                r.ingested.len()
            ),
        }
        .into());
    }
    Ok(())
}
