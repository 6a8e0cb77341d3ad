use std::path::PathBuf;

use clap::ValueEnum;

use crate::envelope::{Metadata, DEFAULT_CHUNK_SIZE};
use crate::error::Error;
use crate::legacy::Md;
use crate::pipeline::keys::{load_identities, load_recipients};
use crate::pipeline::legacy::{open, KdfChoice};
use crate::pipeline::plumbing::io::{Input, Output};
use crate::pipeline::seal::copy;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Digest {
    Sha256,
    Md5,
}

/// The old recipe's pair of files and how they were made.
#[derive(Debug, clap::Args)]
pub struct Legacy {
    /// The RSA private key whose public half wrapped the passphrase
    #[arg(short = 'i', long = "identity", value_name = "PRIVATE-KEY")]
    identity: PathBuf,
    /// The encrypted data (`openssl enc -aes-256-cbc` output, e.g. backup.tar.gz.enc)
    data: PathBuf,
    /// The wrapped passphrase (`openssl rsautl -encrypt -pubin` output)
    passphrase: PathBuf,
    /// The digest `openssl enc` used (default: guessed; sha256 since OpenSSL 1.1.0, md5 before)
    #[arg(long, value_enum)]
    md: Option<Digest>,
    /// The data was encrypted with `-pbkdf2`
    #[arg(long)]
    pbkdf2: bool,
    /// `-iter` used with -pbkdf2
    #[arg(long, default_value_t = 10_000, requires = "pbkdf2")]
    iter: u32,
}

#[derive(Debug, clap::Args)]
pub struct DecryptArgs {
    #[command(flatten)]
    legacy: Legacy,
    /// Write here (mode 0600, never over an existing file) instead of stdout
    #[arg(short = 'o', long)]
    output: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    #[command(flatten)]
    legacy: Legacy,
    /// Recipients of the new coffer file (as for `coffer seal`)
    #[arg(short = 'r', long = "recipient", value_name = "RECIPIENT")]
    recipients: Vec<String>,
    #[arg(short = 'R', long = "recipients-file", value_name = "FILE")]
    recipient_files: Vec<PathBuf>,
    /// The new sealed file
    #[arg(short = 'o', long)]
    output: PathBuf,
}

const WARNING: &str = "the legacy format (AES-CBC without a MAC) is unauthenticated: \
a wrong key or a damaged file is caught only by chance; check what you restore";

fn reader(
    l: &Legacy,
    out: &super::Output,
) -> anyhow::Result<crate::pipeline::legacy::LegacyReader> {
    out.warn(WARNING);
    let ids = load_identities(std::slice::from_ref(&l.identity))?;
    let choice = KdfChoice {
        md: l.md.map(|d| match d {
            Digest::Sha256 => Md::Sha256,
            Digest::Md5 => Md::Md5,
        }),
        pbkdf2: l.pbkdf2.then_some(l.iter),
    };
    Ok(open(&ids[0], &l.data, &l.passphrase, choice)?)
}

pub fn decrypt(a: &DecryptArgs, out: &super::Output) -> anyhow::Result<()> {
    let mut r = reader(&a.legacy, out)?;
    let mut output = Output::create(a.output.as_deref(), 0o600)?;
    let name = output.name();
    copy(&mut r, &mut output, &a.legacy.data, &name).map_err(|e| legacy_io(e, &a.legacy.data))?;
    output.commit()?;
    Ok(())
}

pub fn import(a: &ImportArgs, out: &super::Output) -> anyhow::Result<()> {
    let recipients = load_recipients(&a.recipients, &a.recipient_files)?;
    let r = reader(&a.legacy, out)?;
    let mut metadata = Metadata::now();
    metadata.extra.insert(
        "imported_from".into(),
        a.legacy.data.display().to_string().into(),
    );
    crate::pipeline::seal::seal_reader(
        &recipients,
        Box::new(r),
        &Input::File(a.legacy.data.clone()).name(),
        Output::create(Some(&a.output), 0o644)?,
        metadata,
        DEFAULT_CHUNK_SIZE,
    )
    .map_err(|e| legacy_io(e, &a.legacy.data))?;
    Ok(())
}

/// A padding or truncation error found while streaming keeps its meaning.
fn legacy_io(e: Error, data: &std::path::Path) -> anyhow::Error {
    if let Error::Fs(crate::fsutil::FsError::Io { source, .. }) = &e {
        if let Some(inner) = source
            .get_ref()
            .and_then(|i| i.downcast_ref::<crate::legacy::LegacyError>())
        {
            let kind = match inner {
                crate::legacy::LegacyError::BadPadding => crate::legacy::LegacyError::BadPadding,
                crate::legacy::LegacyError::Truncated => crate::legacy::LegacyError::Truncated,
                _ => return e.into(),
            };
            return Error::Legacy {
                path: data.to_path_buf(),
                source: kind,
            }
            .into();
        }
    }
    e.into()
}
