use std::path::PathBuf;

use clap::ValueEnum;

use crate::pipeline::keygen::{keygen, KeyType};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Type {
    /// RSA (PKCS#8 PEM, as `openssl genrsa` writes); public key as SPKI PEM
    Rsa,
    /// age X25519 (AGE-SECRET-KEY-1…); public key as an age1… recipient
    Age,
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
}

pub fn run(a: &Args) -> anyhow::Result<()> {
    let kind = match a.kind {
        Type::Rsa => KeyType::Rsa { bits: a.bits },
        Type::Age => KeyType::Age,
    };
    let g = keygen(kind, &a.out)?;
    eprintln!("private key: {} (keep it offline)", g.private.display());
    eprintln!("public key:  {}", g.public.display());
    eprintln!("fingerprint: {} {}", g.kind, g.fingerprint);
    if let Some(r) = g.recipient {
        eprintln!("recipient:   {r}");
    }
    Ok(())
}
