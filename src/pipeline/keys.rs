//! Loading recipients and identities from the places users name them, with the
//! permission checks that keep keys honest.

use std::io::IsTerminal;
use std::path::Path;
use std::sync::Arc;

use zeroize::Zeroizing;

use crate::envelope::{self, Identity, KeyError, PassphraseFn, Recipient};
use crate::error::{Error, Result};
use crate::fsutil;

/// Where passphrases come from: the file named by `COFFER_PASSPHRASE_FILE`
/// (first line, mode 0600), else a prompt on the terminal, else none.
pub fn passphrase_source() -> PassphraseFn {
    Arc::new(|description: &str| {
        if let Some(path) = std::env::var_os("COFFER_PASSPHRASE_FILE") {
            let text = fsutil::read_secret(Path::new(&path)).ok()?;
            let line = text.split('\n').next().unwrap_or("");
            return Some(Zeroizing::new(line.trim_end_matches('\r').to_owned()));
        }
        if !std::io::stderr().is_terminal() {
            return None;
        }
        rpassword::prompt_password(format!("{description}: "))
            .ok()
            .map(Zeroizing::new)
    })
}

/// Resolves `-r` values (a file of recipients, or a recipient string) and `-R`
/// files into recipients.
pub fn load_recipients(args: &[String], files: &[impl AsRef<Path>]) -> Result<Vec<Recipient>> {
    let cb = passphrase_source();
    let mut out = Vec::new();
    for arg in args {
        let path = Path::new(arg);
        if path.is_file() {
            out.extend(recipients_file(path, &cb)?);
        } else {
            match envelope::parse_recipients(arg, &cb) {
                Ok(r) => out.extend(r),
                // Meant as a file: say it is missing, not that its name is a bad key.
                Err(e) if looks_like_path(arg) => {
                    fsutil::require_file(path, "recipients file")?;
                    return Err(Error::key(arg, e));
                }
                Err(e) => return Err(Error::key(arg, e)),
            }
        }
    }
    for f in files {
        out.extend(recipients_file(f.as_ref(), &cb)?);
    }
    if out.is_empty() {
        return Err(Error::Usage(
            "no recipients: give -r RECIPIENT or -R FILE".into(),
        ));
    }
    Ok(out)
}

/// An `age1…` recipient has no slash or dot, and an ssh key line has spaces;
/// a file name usually has a slash (config paths always do) or a key-file
/// extension.
fn looks_like_path(arg: &str) -> bool {
    !arg.contains(char::is_whitespace)
        && (arg.contains('/')
            || Path::new(arg)
                .extension()
                .is_some_and(|e| ["pub", "pem", "txt", "key"].iter().any(|k| e == *k)))
}

fn recipients_file(path: &Path, cb: &PassphraseFn) -> Result<Vec<Recipient>> {
    fsutil::check_not_writable_by_others(path)?;
    let text =
        std::fs::read_to_string(path).map_err(|e| Error::named(path, "recipients file", e))?;
    envelope::parse_recipients_file(&text, cb).map_err(|e| Error::key(path, e))
}

/// Reads identity files, refusing any that others can read.
pub fn load_identities(paths: &[impl AsRef<Path>]) -> Result<Vec<Identity>> {
    if paths.is_empty() {
        return Err(Error::Usage(
            "no identity: give the private key with -i KEY".into(),
        ));
    }
    let cb = passphrase_source();
    paths
        .iter()
        .map(|p| {
            let p = p.as_ref();
            let text = match fsutil::read_secret(p) {
                // A public key is rightly world-readable; the problem to name
                // is that it is not the private key.
                Err(crate::fsutil::FsError::Permissions { .. }) if is_public_key_file(p) => {
                    return Err(Error::key(p, KeyError::PublicAsIdentity));
                }
                other => other?,
            };
            envelope::parse_identities(&text, &p.display().to_string(), &cb)
                .map_err(|e| Error::key(p, e))
        })
        .collect()
}

/// Whether the file at `path` holds only public keys. Reads at most 64 KiB
/// (a key file is far smaller); the bytes may be a private key after all, so
/// they are zeroized, in a buffer that never grows (growing would leave
/// copies behind).
fn is_public_key_file(path: &Path) -> bool {
    use std::io::Read;
    const LIMIT: usize = 64 * 1024;
    let mut bytes = Zeroizing::new(Vec::with_capacity(LIMIT));
    let read = std::fs::File::open(path).and_then(|f| f.take(LIMIT as u64).read_to_end(&mut bytes));
    read.is_ok() && std::str::from_utf8(&bytes).is_ok_and(envelope::is_public_key)
}
