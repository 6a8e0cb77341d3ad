use std::time::Duration;

use crate::store::keyscan;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The backup server
    host: String,
    #[arg(long, short = 'p', default_value_t = 22)]
    port: u16,
    /// Seconds to wait for the server
    #[arg(long, default_value_t = 10)]
    timeout: u64,
}

pub fn run(a: &Args) -> anyhow::Result<()> {
    let key = keyscan(&a.host, a.port, Duration::from_secs(a.timeout)).map_err(|m| {
        crate::Error::Store {
            store: format!("{}:{}", a.host, a.port),
            message: m,
        }
    })?;
    // The line on stdout (append it to known_hosts); how to check it on stderr.
    outln!("{}", key.known_hosts_line(&a.host, a.port));
    eprintln!(
        "{} {} — compare with `ssh-keygen -lf /etc/ssh/ssh_host_{}_key.pub` run on the server itself before trusting it",
        key.kind,
        key.fingerprint(),
        key.kind.trim_start_matches("ssh-").split('-').next().unwrap_or("ed25519")
    );
    Ok(())
}
