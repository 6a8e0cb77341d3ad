//! What a store holds: its listing read into backups (a sealed file, its
//! sidecar and signature) with each one's state, and the backups found by
//! name or as `latest` (`locate`). Shared by every command that reads a
//! store; it reads and never deletes.

pub mod locate;
pub mod pruned;

pub use pruned::{pruned, Recorder, PRUNED_SUFFIX};

use std::collections::BTreeMap;
use std::io::Read;

use crate::error::Result;
use crate::manifest::{Sidecar, SEALED_SUFFIX, SIDECAR_SUFFIX};
use crate::signing::SIGNATURE_SUFFIX;
use crate::store::Store;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Complete,
    /// A sealed file without a sidecar: an upload that never finished.
    NoSidecar,
    /// A sidecar that does not parse, or names another file.
    BadSidecar(String),
    /// A sidecar whose sealed file is missing.
    NoSealedFile,
}

#[derive(Debug, Clone)]
pub struct Listed {
    pub name: String,
    pub state: State,
    pub sidecar: Option<Sidecar>,
    pub size: Option<u64>,
    /// The sidecar's exact bytes, read once: every check (signature, size,
    /// hash, ledger) uses these, never a second read the server could answer
    /// differently.
    pub raw: Vec<u8>,
    /// When the store wrote the sidecar, as the store itself reports it.
    pub observed: Option<i64>,
    /// Whether a `.minisig` was listed beside the sidecar.
    pub has_signature: bool,
    /// When the store wrote the sealed file (0 if unknown or absent).
    pub sealed_mtime: i64,
}

/// The time a backup is ordered by. Signed (`signed`: its signature was
/// checked), `created` is the backup host's word and stands. Unsigned, it is
/// believed no later than the store saw the sidecar written: an uploader
/// cannot make its own backup look newer than it is.
pub fn believed_time(l: &Listed, signed: bool) -> Option<chrono::DateTime<chrono::Utc>> {
    if signed {
        return l.sidecar.as_ref()?.created();
    }
    effective_time(l)
}

/// A sidecar's `created`, but never later than when the store saw the
/// sidecar written.
pub fn effective_time(l: &Listed) -> Option<chrono::DateTime<chrono::Utc>> {
    let created = l.sidecar.as_ref()?.created()?;
    let observed = l
        .observed
        .filter(|&t| t > 0)
        .and_then(|t| chrono::DateTime::from_timestamp(t, 0))
        .map(|t| t + chrono::Duration::seconds(1));
    Some(observed.map_or(created, |o| created.min(o)))
}

/// What a listing shows of one backup's files.
#[derive(Default)]
struct Seen {
    size: Option<u64>,
    sealed_mtime: i64,
    sidecar_mtime: Option<i64>,
    signature: bool,
}

/// Reads a store's listing into backups, complete or not.
pub fn list(store: &dyn Store) -> Result<(Vec<Listed>, Vec<crate::store::Object>)> {
    let objects = store.list()?;
    let mut by_name: BTreeMap<String, Seen> = BTreeMap::new();
    let mut partials = Vec::new();
    for o in objects {
        if o.name.ends_with(".partial") {
            partials.push(o);
        } else if let Some(n) = o
            .name
            .strip_suffix(SIGNATURE_SUFFIX)
            .and_then(|n| n.strip_suffix(SIDECAR_SUFFIX))
        {
            by_name.entry(n.to_owned()).or_default().signature = true;
        } else if let Some(n) = o.name.strip_suffix(SIDECAR_SUFFIX) {
            by_name.entry(n.to_owned()).or_default().sidecar_mtime = Some(o.mtime);
        } else if let Some(n) = o.name.strip_suffix(SEALED_SUFFIX) {
            let seen = by_name.entry(n.to_owned()).or_default();
            seen.size = Some(o.size);
            seen.sealed_mtime = o.mtime;
        }
    }
    let mut out: Vec<Listed> = Vec::new();
    let mut held = 0usize;
    for (name, seen) in by_name {
        if held > LISTED_SIDECARS_MAX {
            return Err(crate::Error::Store {
                store: store.name().to_owned(),
                message: format!(
                    "its sidecars add up to more than {} MiB; refusing the listing (a broken \
                     or hostile server)",
                    LISTED_SIDECARS_MAX >> 20
                ),
            });
        }
        let mut raw = Vec::new();
        let (state, sidecar) = match (seen.size, seen.sidecar_mtime) {
            (Some(_), None) => (State::NoSidecar, None),
            // A sidecar, or a lone signature, without the sealed file: a
            // leftover of an interrupted run or removal.
            (None, _) => (State::NoSealedFile, None),
            (Some(size), Some(_)) => match read_sidecar(store, &name) {
                Ok((s, bytes)) => {
                    held += bytes.len();
                    raw = bytes;
                    if s.name != name {
                        (State::BadSidecar(format!("names {:?}", s.name)), None)
                    } else if s.size != size {
                        (
                            State::BadSidecar(format!(
                                "says {} bytes, the sealed file has {size}",
                                s.size
                            )),
                            None,
                        )
                    } else {
                        (State::Complete, Some(s))
                    }
                }
                Err(e) => (State::BadSidecar(e), None),
            },
        };
        out.push(Listed {
            name,
            state,
            sidecar,
            size: seen.size,
            raw,
            observed: seen.sidecar_mtime,
            has_signature: seen.signature,
            sealed_mtime: seen.sealed_mtime,
        });
    }
    // Oldest first by the believed time; incomplete ones (no time) by name.
    out.sort_by(|a, b| {
        effective_time(a)
            .cmp(&effective_time(b))
            .then_with(|| a.name.cmp(&b.name))
    });
    Ok((out, partials))
}

/// The largest sidecar coffer reads. One coffer writes takes well under a
/// kilobyte, plus a line per source and per recipient; a store that hands
/// over more is not handing over a sidecar.
pub const SIDECAR_MAX: usize = 64 << 10;
/// What the sidecars of one store's listing may hold together: a year of
/// hourly backups takes about 9 MiB. Past it the listing is refused, so
/// that a hostile store cannot make every run that lists it (the nightly
/// backup among them) hold gigabytes.
const LISTED_SIDECARS_MAX: usize = 32 << 20;

/// A sidecar and its exact bytes.
pub fn read_sidecar(
    store: &dyn Store,
    name: &str,
) -> std::result::Result<(Sidecar, Vec<u8>), String> {
    let mut r = store
        .get(&format!("{name}{SIDECAR_SUFFIX}"))
        .map_err(|e| crate::cli_chain(&e))?;
    let mut buf = Vec::new();
    r.by_ref()
        .take(SIDECAR_MAX as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|e| e.to_string())?;
    if buf.len() > SIDECAR_MAX {
        return Err(format!("larger than {} KiB", SIDECAR_MAX >> 10));
    }
    Sidecar::parse(&buf).map(|s| (s, buf))
}
