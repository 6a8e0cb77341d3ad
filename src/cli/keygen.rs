use std::path::PathBuf;

use clap::ValueEnum;

use crate::pipeline::keygen::{keygen, KeyType};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Type {
    /// RSA (PKCS#8 PEM, as `openssl genrsa` writes); public key as SPKI PEM
    Rsa,
    /// age X25519 (AGE-SECRET-KEY-1…); public key as an age1… recipient
    Age,
    /// Ed25519 in minisign's format, for signing sidecars (`signing_key`)
    Signing,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Key type
    #[arg(long = "type", value_enum, default_value = "rsa")]
    kind: Type,
    /// RSA modulus size in bits (at least 2048)
    #[arg(long, default_value_t = 4096)]
    bits: usize,
    /// Where to write the private key; the public key goes to PATH.pub
    #[arg(long, short = 'o', value_name = "PATH")]
    out: PathBuf,
    /// With a backup key (rsa, age): do not also make the signing key pair
    /// `signing.key` / `signing.key.pub` beside it
    #[arg(long)]
    no_signing_key: bool,
}

/// The signing pair's name beside a backup key: the name the README's
/// configuration uses, so that the quick start is signed with no extra step.
const SIGNING_NAME: &str = "signing.key";

pub fn run(a: &Args) -> anyhow::Result<()> {
    let kind = match a.kind {
        Type::Rsa => KeyType::Rsa { bits: a.bits },
        Type::Age => KeyType::Age,
        Type::Signing => KeyType::Signing,
    };
    let g = keygen(kind, &a.out)?;
    let where_ = if matches!(a.kind, Type::Signing) {
        "for the backup host only"
    } else {
        "keep it offline"
    };
    eprintln!("private key: {} ({where_})", g.private.display());
    eprintln!("public key:  {}", g.public.display());
    if matches!(a.kind, Type::Signing) {
        eprintln!(
            "key id:      {} (set signing_key on the backup host, signing_public_key where you verify)",
            g.recipient.unwrap_or_default()
        );
        return Ok(());
    }
    eprintln!("fingerprint: {} {}", g.kind, g.fingerprint);
    if let Some(r) = g.recipient {
        eprintln!("recipient:   {r}");
    }
    if !a.no_signing_key {
        signing_pair_beside(&a.out)?;
    }
    Ok(())
}

/// Backups are signed by default: beside a new backup key pair goes a
/// signing pair, unless one is already there (one signing key serves every
/// backup key, and a key in use is never replaced).
fn signing_pair_beside(out: &std::path::Path) -> anyhow::Result<()> {
    let dir = out
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let path = dir.join(SIGNING_NAME);
    if path.symlink_metadata().is_ok() {
        eprintln!(
            "signing key: {} is already there, kept (set it as signing_key on the backup host)",
            path.display()
        );
        return Ok(());
    }
    let g = keygen(KeyType::Signing, &path)?;
    eprintln!(
        "signing key: {} (move it to the backup host: signing_key; keep no copy here)",
        g.private.display()
    );
    eprintln!(
        "signing public key: {} (where you restore and verify: signing_public_key)",
        g.public.display()
    );
    Ok(())
}
