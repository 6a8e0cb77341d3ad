use std::path::PathBuf;

use crate::pipeline::keys::load_identities;
use crate::pipeline::plumbing::io::{Input, Output};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A private key: RSA PEM (PKCS#1, PKCS#8, encrypted PKCS#8), age identity file, or ssh key
    #[arg(
        short = 'i',
        long = "identity",
        value_name = "IDENTITY",
        required = true
    )]
    identities: Vec<PathBuf>,
    /// Write here (mode 0600, atomically, never over an existing file) instead of stdout
    #[arg(short = 'o', long, value_name = "OUT")]
    output: Option<PathBuf>,
    /// Sealed input (stdin if absent or -)
    input: Option<PathBuf>,
}

pub fn run(a: &Args) -> anyhow::Result<()> {
    let identities = load_identities(&a.identities)?;
    let output = Output::create(a.output.as_deref(), 0o600)?;
    crate::pipeline::open::open(&identities, &Input::from_arg(a.input.as_deref()), output)?;
    Ok(())
}
