use std::path::PathBuf;

use crate::envelope::{Metadata, DEFAULT_CHUNK_SIZE};
use crate::pipeline::keys::load_recipients;
use crate::pipeline::plumbing::io::{Input, Output};
use crate::pipeline::seal::{seal, SealRequest};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A recipient: an RSA public key PEM file, an age1… or ssh public key, or a file of them
    #[arg(short = 'r', long = "recipient", value_name = "RECIPIENT")]
    recipients: Vec<String>,
    /// A file of recipients, one per line (# comments) and/or RSA public key PEM blocks
    #[arg(short = 'R', long = "recipients-file", value_name = "FILE")]
    recipient_files: Vec<PathBuf>,
    /// Write here (atomically, never over an existing file) instead of stdout
    #[arg(short = 'o', long, value_name = "OUT")]
    output: Option<PathBuf>,
    /// A job name recorded in the header
    #[arg(long)]
    job: Option<String>,
    /// Plaintext bytes per authenticated chunk
    #[arg(long, default_value_t = DEFAULT_CHUNK_SIZE, value_parser = clap::value_parser!(u32).range(64..=16_777_216))]
    chunk_size: u32,
    /// Input file (stdin if absent or -)
    input: Option<PathBuf>,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let recipients = load_recipients(&a.recipients, &a.recipient_files)?;
    let mut metadata = Metadata::now();
    metadata.job = a.job;
    seal(SealRequest {
        recipients: &recipients,
        input: Input::from_arg(a.input.as_deref()),
        output: Output::create(a.output.as_deref(), 0o644)?,
        metadata,
        chunk_size: a.chunk_size,
    })?;
    Ok(())
}
