use std::path::PathBuf;

use crate::config::Config;
use crate::error::Error;
use crate::pipeline::job::check;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Validate the configuration, files, permissions, keys and tools without running a backup
    Check {
        #[arg(short = 'c', long, value_name = "CONFIG", env = "COFFER_CONFIG", default_value = super::DEFAULT_CONFIG)]
        config: PathBuf,
    },
}

pub fn run(c: &Command, out: &super::Output) -> anyhow::Result<()> {
    match c {
        Command::Check { config } => {
            let cfg = Config::load(config)?;
            let problems = check(&cfg);
            if !problems.is_empty() {
                return Err(Error::Check(problems).into());
            }
            if cfg.job.unsigned {
                out.warn(&format!(
                    "this job is unsigned (unsigned = true): {}",
                    crate::config::UNSIGNED_COST
                ));
            }
            outln!("{}: ok", config.display());
            Ok(())
        }
    }
}
