//! The sidecar, written last into every store where the sealed file is
//! complete (with its signature), and the stores that dropped out of the
//! stream filled from one that holds the finished backup.

use std::io::Write;

use super::refill::copy_backup;
use crate::about;
use crate::error::{Error, Result};
use crate::manifest::Sidecar;
use crate::pipeline::job::Job;
use crate::signing::SIGNATURE_SUFFIX;
use crate::store::Store;

/// Writes the sidecar where the sealed file is complete, then refills stores
/// that dropped out from one that has the finished backup. Returns the
/// stores done, those failed, and a warning for each store that got the
/// backup only by that copy (the run succeeded, but its upload did not).
pub(super) fn finish_stores(
    job: &Job,
    sidecar: &SidecarFiles,
    complete: Vec<usize>,
    mut failed: Vec<(usize, Error)>,
) -> (Vec<usize>, Vec<(usize, Error)>, Vec<String>) {
    let mut done = Vec::new();
    let mut recopied = Vec::new();
    for i in complete {
        match write_sidecar(job.stores[i].as_ref(), sidecar) {
            Ok(()) => done.push(i),
            Err(e) => failed.push((i, e)),
        }
    }
    // A store that dropped out gets the finished file from one that has it.
    if let Some(&from) = done.first() {
        let mut still = Vec::new();
        for (i, first_error) in failed {
            // A host key problem stays one (exit 4): no copy can cure it.
            if first_error.exit_code() == crate::ExitCode::Key {
                still.push((i, first_error));
                continue;
            }
            match copy_backup(job.stores[from].as_ref(), job.stores[i].as_ref(), sidecar) {
                Ok(()) => {
                    recopied.push(format!(
                        "{}: the upload failed ({}); the backup was copied there again from {}",
                        job.stores[i].name(),
                        about(&first_error, job.stores[i].name()),
                        job.stores[from].name()
                    ));
                    done.push(i);
                }
                Err(e) => still.push((
                    i,
                    Error::Store {
                        store: job.stores[i].name().to_owned(),
                        message: format!(
                            "{}; copying from {} failed too: {}",
                            about(&first_error, job.stores[i].name()),
                            job.stores[from].name(),
                            about(&e, job.stores[i].name())
                        ),
                    },
                )),
            }
        }
        failed = still;
    }
    (done, failed, recopied)
}

/// The sidecar exactly as written to every store, and its signature.
pub(super) struct SidecarFiles {
    pub(super) sidecar: Sidecar,
    pub(super) json: Vec<u8>,
    pub(super) signature: Option<String>,
}

pub(super) fn sidecar_files(job: &Job, sidecar: &Sidecar) -> Result<SidecarFiles> {
    let json = serde_json::to_vec_pretty(sidecar).map_err(|e| Error::Usage(e.to_string()))?;
    let signature = match &job.signer {
        Some(signer) => Some(
            signer
                .sign(&json, &sidecar.file_name())
                .map_err(|message| Error::Signing {
                    path: job.config.job.signing_key.clone().unwrap_or_default(),
                    message,
                })?,
        ),
        None => None,
    };
    Ok(SidecarFiles {
        sidecar: sidecar.clone(),
        json,
        signature,
    })
}

/// The sidecar goes last: until it exists, the sealed file is not a backup.
/// Its signature goes just before it.
pub(super) fn write_sidecar(store: &dyn Store, files: &SidecarFiles) -> Result<()> {
    let name = files.sidecar.file_name();
    if let Some(sig) = &files.signature {
        let sig_name = format!("{name}{SIGNATURE_SUFFIX}");
        // Left by an attempt that failed before its sidecar: not part of
        // any backup. (Write-only S3 credentials cannot even ask.)
        if matches!(store.stat(&sig_name), Ok(Some(_))) {
            store.delete(&sig_name)?;
        }
        let mut u = store.put(&sig_name)?;
        u.write_all(sig.as_bytes())
            .map_err(|e| Error::io(&sig_name, "write", e))?;
        u.commit()?;
    }
    let mut u = store.put(&name)?;
    u.write_all(&files.json)
        .map_err(|e| Error::io(&name, "write", e))?;
    Ok(u.commit()?)
}
