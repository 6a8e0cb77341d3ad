//! Finding backups: a file on disk, a backup name in a configured store, or
//! `latest` — the newest complete backup (partial uploads never count).

use std::path::Path;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::manifest::{Sidecar, SEALED_SUFFIX};
use crate::pipeline::job::build_stores;
use crate::pipeline::retention::{list, Listed, State};
use crate::store::Store;

/// The configured stores and what each holds.
pub struct Catalog {
    pub stores: Vec<Box<dyn Store>>,
    /// Per store, its backups (complete or not), oldest first.
    pub listed: Vec<Vec<Listed>>,
}

impl Catalog {
    pub fn load(config: &Config) -> Result<Self> {
        let stores: Vec<Box<dyn Store>> =
            build_stores(config).into_iter().map(|(s, _)| s).collect();
        let mut listed = Vec::new();
        for s in &stores {
            listed.push(list(s.as_ref())?.0);
        }
        Ok(Catalog { stores, listed })
    }

    /// Complete backups of `job`: (store index, sidecar).
    pub fn complete<'a>(&'a self, job: &'a str) -> impl Iterator<Item = (usize, &'a Sidecar)> + 'a {
        self.listed.iter().enumerate().flat_map(move |(i, l)| {
            l.iter()
                .filter(|b| b.state == State::Complete)
                .filter_map(|b| b.sidecar.as_ref())
                .filter(move |s| s.job == job)
                .map(move |s| (i, s))
        })
    }

    /// Resolves `what` (a backup name or `latest`) to one complete backup.
    pub fn find<'a>(&'a self, job: &'a str, what: &str) -> Result<(usize, &'a Sidecar)> {
        let wanted = what.strip_suffix(SEALED_SUFFIX).unwrap_or(what);
        let pick = if wanted == "latest" {
            // Newest by the sidecar's time; min_by keeps the first of equals,
            // so the first store wins a tie.
            self.complete(job)
                .min_by(|a, b| b.1.created().cmp(&a.1.created()))
        } else {
            self.complete(job).find(|(_, s)| s.name == wanted)
        };
        pick.ok_or_else(|| {
            Error::Usage(format!(
                "no complete backup {what:?} of job {job:?} in the configured stores (see `coffer list`)"
            ))
        })
    }
}

/// Is `what` a file on disk rather than a name?
pub fn is_file(what: &str) -> bool {
    Path::new(what).is_file()
}
