//! `coffer backup`: sources → archive → seal → hash → stores, in one stream,
//! then the sidecar, then retention — in that order, so a failed run deletes
//! nothing and leaves no file that looks like a backup.

mod fanout;
mod naming;
pub mod notify;
mod refill;
mod sidecar;

use fanout::{every_store_failed, open_uploads, sink_error, EveryStoreFailed, Fanout};
use naming::{ledger_position, record_position, unique_name};
use refill::refill;
use sidecar::{finish_stores, sidecar_files};

use std::io::{self, Write};
use std::path::Path;
use std::time::Instant;

use crate::about;
use crate::archive::{ArchiveWriter, EntryKind, EntryMeta};
use crate::config::Config;
use crate::envelope::{self, Metadata, Recipient, SealError, DEFAULT_CHUNK_SIZE};
use crate::error::{Error, Result};
use crate::manifest::{self, Inner, Sidecar, SourceEntry};
use crate::pipeline::job::{self, Job};
use crate::pipeline::prune::{self, PruneReport};
use crate::source::{Entry, Sink};

#[derive(Debug)]
pub struct Summary {
    pub name: String,
    pub size: u64,
    /// Bytes read from the sources, before compression.
    pub bytes_in: u64,
    pub duration_ms: u64,
    pub stores: Vec<String>,
    pub pruned: Vec<PruneReport>,
    pub warnings: Vec<String>,
}

/// Lets sources write into the archive without knowing it.
struct ArchiveSink<'a, W: Write>(&'a mut ArchiveWriter<W>);

impl<W: Write> Sink for ArchiveSink<'_, W> {
    fn stream(&mut self, path: &str, data: &mut dyn io::Read) -> io::Result<()> {
        self.0.append_stream(path, data).map(drop)
    }
    fn entry(&mut self, e: &Entry, data: &mut dyn io::Read) -> io::Result<()> {
        let kind = match &e.kind {
            crate::source::EntryKind::File => EntryKind::File,
            crate::source::EntryKind::Dir => EntryKind::Dir,
            crate::source::EntryKind::Symlink(t) => EntryKind::Symlink(t),
        };
        let meta = EntryMeta {
            path: &e.path,
            kind,
            mode: e.mode,
            uid: e.uid,
            gid: e.gid,
            mtime: e.mtime,
            size: e.size,
        };
        self.0.append_entry(&meta, data).map(drop)
    }
}

/// The configuration a run uses: the file, with `--job` applied.
pub fn load_config(config_path: &Path, job_name: Option<&str>) -> Result<Config> {
    let mut config = Config::load(config_path)?;
    if let Some(n) = job_name {
        // The same rule as the file's name: it becomes part of file names.
        crate::config::check_job_name(n).map_err(|m| Error::Usage(format!("--job: {m}")))?;
        n.clone_into(&mut config.job.name);
    }
    Ok(config)
}

/// A run that failed, with what it did do where the backup completed (its
/// size, what retention deleted, its warnings), for the hook, the log and
/// the metrics: a partial failure must not read as nothing done.
#[derive(Debug)]
pub struct Failed {
    pub error: Error,
    pub done: Option<Box<Summary>>,
}

impl From<Error> for Failed {
    fn from(error: Error) -> Self {
        Failed { error, done: None }
    }
}

pub fn run(config: Config, dry_run: bool) -> std::result::Result<Summary, Failed> {
    let started = Instant::now();
    // Everything this run creates (uploads, sidecars, the lock) is private.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    if dry_run {
        let problems = job::check(&config);
        if !problems.is_empty() {
            return Err(Error::Check(problems).into());
        }
    }
    let mut job = job::prepare(config, !dry_run)?;
    let _lock = job::lock(&job)?;
    let now = chrono::Utc::now();
    let name = unique_name(&mut job, now)?;
    if dry_run {
        return Ok(dry_run_plan(&job, name));
    }
    crate::source::set_stall_limit(job.config.job.dump_stall_secs);
    crate::pipeline::plumbing::signals::stop_on_signals()?;

    let (unready, unready_key, unready_usage) = unready_failures(&job);
    let mut stored = match seal_and_store(&job, &name, now, started) {
        Ok(s) => s,
        Err(Error::StoresFailed {
            name,
            complete,
            mut failures,
            key_problem,
            usage_problem,
        }) => {
            failures.extend(unready);
            return Err(Error::StoresFailed {
                name,
                complete,
                failures,
                key_problem: key_problem || unready_key,
                usage_problem: usage_problem || unready_usage,
            }
            .into());
        }
        Err(e) => return Err(e.into()),
    };
    stored.warnings.extend(refill(&job, &stored.complete, now));
    stored.warnings.extend(store_notes(&job));
    let (pruned, prune_failed) = prune_where_complete(&job, &stored, &name, now);
    if !stored.failed.is_empty() || !unready.is_empty() || !prune_failed.is_empty() {
        let mut failures: Vec<String> = stored
            .failed
            .iter()
            .map(|(i, e)| {
                let store = job.stores[*i].name();
                format!("{store}: {}", about(e, store))
            })
            .collect();
        failures.extend(unready);
        failures.extend(prune_failed);
        failures.extend(stored.unread.iter().map(|u| format!("not read: {u}")));
        let complete: Vec<String> = stored
            .complete
            .iter()
            .map(|&i| job.stores[i].name().to_owned())
            .collect();
        let done = Summary {
            name: name.clone(),
            size: stored.sidecar.size,
            bytes_in: stored.bytes_in,
            duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            stores: complete.clone(),
            pruned,
            warnings: stored.warnings,
        };
        let error = Error::StoresFailed {
            name,
            complete,
            key_problem: unready_key
                || stored
                    .failed
                    .iter()
                    .any(|(_, e)| e.exit_code() == crate::ExitCode::Key),
            usage_problem: unready_usage
                || stored
                    .failed
                    .iter()
                    .any(|(_, e)| e.exit_code() == crate::ExitCode::Usage),
            failures,
        };
        return Err(Failed {
            error,
            done: Some(Box::new(done)),
        });
    }
    let summary = Summary {
        name,
        size: stored.sidecar.size,
        bytes_in: stored.bytes_in,
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        stores: job.stores.iter().map(|s| s.name().to_owned()).collect(),
        pruned,
        warnings: stored.warnings,
    };
    unless_unread(summary, stored.unread)
}

/// What each store said once about itself (a weaker guarantee there).
fn store_notes(job: &Job) -> Vec<String> {
    job.stores
        .iter()
        .flat_map(|s| s.notes().into_iter().map(|n| format!("{}: {n}", s.name())))
        .collect()
}

/// A backup stored everywhere is a success, unless paths could not be
/// read into it: then it is stored, and the run fails naming them.
fn unless_unread(summary: Summary, unread: Vec<String>) -> std::result::Result<Summary, Failed> {
    if unread.is_empty() {
        return Ok(summary);
    }
    Err(Failed {
        error: Error::Unread {
            name: summary.name.clone(),
            stores: summary.stores.clone(),
            paths: unread,
        },
        done: Some(Box::new(summary)),
    })
}

/// Stores the configuration left out of this run (a known_hosts file
/// missing, a key others can read, a directory that cannot be made): the
/// others still get the backup, and the run's failure names these. With
/// whether any is a key problem, and whether any is the configuration's.
fn unready_failures(job: &Job) -> (Vec<String>, bool, bool) {
    let any = |code| job.unready.iter().any(|(_, e)| e.exit_code() == code);
    (
        job.unready
            .iter()
            .map(|(store, e)| format!("{store}: {}", about(e, store)))
            .collect(),
        any(crate::ExitCode::Key),
        any(crate::ExitCode::Usage),
    )
}

/// What a dry run would do, as its summary's warnings.
fn dry_run_plan(job: &Job, name: String) -> Summary {
    let mut plan: Vec<String> = job
        .sources
        .iter()
        .map(|s| format!("would dump {} source {:?}", s.kind(), s.name()))
        .collect();
    plan.extend(job.stores.iter().map(|s| {
        format!(
            "would write {name}{} to {}",
            manifest::SEALED_SUFFIX,
            s.name()
        )
    }));
    plan.extend(
        job.unready
            .iter()
            .map(|(store, e)| format!("would leave out {store}: {}", about(e, store))),
    );
    plan.push("dry run: nothing was dumped, written or deleted".into());
    Summary {
        name,
        size: 0,
        bytes_in: 0,
        duration_ms: 0,
        stores: job.stores.iter().map(|s| s.name().to_owned()).collect(),
        pruned: Vec::new(),
        warnings: plan,
    }
}

/// Only now, and only where the new backup is complete, is anything
/// deleted. A store whose pruning fails keeps its new backup (and is named
/// in the run's failure); the others are pruned all the same. A backup that
/// lacks paths it could not read prunes as usual: a path that stays
/// unreadable would otherwise stop retention every night until the store is
/// full and the databases' backups fail too; the run's exit 1 names it.
fn prune_where_complete(
    job: &Job,
    stored: &Stored,
    name: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> (Vec<PruneReport>, Vec<String>) {
    let mut pruned = Vec::new();
    let mut failed = Vec::new();
    let complete = &stored.complete;
    let verifier = job.signer.as_ref().and_then(|s| s.verifier().ok());
    let recorder = crate::pipeline::catalog::Recorder {
        signer: job.signer.as_ref(),
        window: job.config.job.keep_last,
    };
    for &i in complete {
        if !job.prune[i] {
            continue;
        }
        let how = prune::How {
            protect: Some(name),
            dry_run: false,
            now,
            verifier: verifier.as_ref(),
            recorder: Some(&recorder),
        };
        match prune::apply(
            job.stores[i].as_ref(),
            &job.config.job.name,
            job.policy,
            &how,
        ) {
            Ok(r) => pruned.push(r),
            Err(e) => {
                let store = job.stores[i].name();
                failed.push(format!(
                    "{store}: the backup is complete there, but pruning failed: {}",
                    about(&e, store)
                ));
            }
        }
    }
    (pruned, failed)
}

/// Streams every source through archive and sealer into every store, then
/// commits the sealed files and writes the sidecars.
fn seal_and_store(
    job: &Job,
    name: &str,
    now: chrono::DateTime<chrono::Utc>,
    started: Instant,
) -> Result<Stored> {
    // Milliseconds: two runs in one second must still be ordered for retention.
    let created = now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let sealed_file = format!("{name}{}", manifest::SEALED_SUFFIX);
    let (seq, prev) = ledger_position(job, now);
    let fanout = open_uploads(job, &sealed_file)?;
    let compression = job.config.job.compression;
    let meta = Metadata {
        created: created.clone(),
        job: Some(job.config.job.name.clone()),
        compression: Some(compression.name().into()),
        content: Some("tar".into()),
        member_hash: Some(crate::archive::MEMBER_HASH.name().into()),
        zstd_frame_size: compression.frame_size(),
        name: Some(name.to_owned()),
        ..Metadata::default()
    };
    let sealer =
        envelope::seal(&job.recipients, meta, DEFAULT_CHUNK_SIZE, fanout).map_err(|e| match e {
            SealError::Envelope(e) => Error::envelope(&sealed_file, e),
            SealError::Io(e) => Error::io(&sealed_file, "write", e),
        })?;
    let mtime = u64::try_from(now.timestamp()).unwrap_or(0);
    let mut archive = ArchiveWriter::new(sealer, compression, mtime)
        .map_err(|e| Error::io(&sealed_file, "start compression", e))?;

    let (source_entries, warnings, unread) = dump_sources(job, name, &mut archive)?;
    let mut inner = Inner::new(
        name,
        &job.config.job.name,
        &created,
        &job::hostname(),
        source_entries,
    );
    let bytes_in = archive.totals().bytes;
    let sealer = archive
        .finish(&mut inner)
        .map_err(|e| sink_error(name, &sealed_file, e))?;
    let fanout = sealer
        .finish()
        .map_err(|e| sink_error(name, &sealed_file, e))?;
    let Fanout {
        slots,
        mut failed,
        digests,
        len,
        ..
    } = fanout;
    let (sha256, blake3) = digests.finish(&sealed_file)?;
    // The ciphertext is complete in every store before any sidecar exists.
    let mut complete = Vec::new();
    for mut slot in slots {
        if slot.tx.is_none() {
            continue; // already failed and recorded
        }
        match slot.finish(job.stores[slot.store].name(), true) {
            Ok(()) => complete.push(slot.store),
            Err(e) => failed.push((slot.store, e)),
        }
    }
    let sidecar = Sidecar {
        format: manifest::SIDECAR_FORMAT.into(),
        name: name.to_owned(),
        job: job.config.job.name.clone(),
        created,
        size: len,
        sha256,
        blake3: Some(blake3),
        format_version: 1,
        compression: compression.name().into(),
        recipients: job.recipients.iter().map(recipient_label).collect(),
        tool_version: env!("CARGO_PKG_VERSION").into(),
        sources: job
            .sources
            .iter()
            .map(|s| format!("{}/{}", s.kind(), s.name()))
            .collect(),
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        seq: Some(seq),
        prev: Some(prev),
    };
    let files = sidecar_files(job, &sidecar)?;
    let (done, failed, recopied) = finish_stores(job, &files, complete, failed);
    if !done.is_empty() {
        record_position(job, seq, crate::ledger::digest(&files.json));
    }
    let mut warnings = warnings;
    warnings.extend(recopied);
    Ok(Stored {
        sidecar,
        bytes_in,
        warnings,
        unread,
        complete: done,
        failed,
    })
}

/// What the sources put into the archive: the inner manifest's entries,
/// the run's warnings, and the paths that could not be read.
type Dumped = (Vec<SourceEntry>, Vec<String>, Vec<String>);

/// Runs every source into the archive; any failure fails the run.
fn dump_sources<W: Write>(job: &Job, name: &str, archive: &mut ArchiveWriter<W>) -> Result<Dumped> {
    let mut entries = Vec::new();
    let mut warnings = Vec::new();
    let mut unread = Vec::new();
    // What the inner manifest's warnings may take, as JSON: a reader allows
    // the manifest 64 MiB beyond its members (the sources, their warnings,
    // the member lists' entries), and one past it never reads back.
    let mut room: usize = MANIFEST_WARNINGS_MAX;
    for source in &job.sources {
        let report =
            source
                .run(&mut ArchiveSink(archive))
                .map_err(|e| match every_store_failed(&e) {
                    // The source was fine: the stores stopped taking its output.
                    Some(f) => EveryStoreFailed {
                        failures: f.failures.clone(),
                        key_problem: f.key_problem,
                        usage_problem: f.usage_problem,
                    }
                    .into_error(name),
                    None => Error::Source {
                        kind: source.kind(),
                        name: source.name().to_owned(),
                        source: e,
                    },
                })?;
        warnings.extend(
            report
                .warnings
                .iter()
                .map(|w| format!("{} {}: {w}", source.kind(), source.name())),
        );
        unread.extend(
            report
                .unread
                .iter()
                .map(|w| format!("{} {}: {w}", source.kind(), source.name())),
        );
        entries.push(SourceEntry {
            kind: source.kind().into(),
            name: source.name().into(),
            commands: report.commands,
            tool_versions: report.tool_versions,
            row_counts: report.row_counts,
            warnings: recorded(report.warnings, &mut room),
        });
    }
    Ok((entries, warnings, unread))
}

/// The most the inner manifest's warnings take, escaped as JSON.
const MANIFEST_WARNINGS_MAX: usize = 32 << 20;

/// The warnings the inner manifest records while `room` lasts, then a count
/// of the rest (all of them are still reported by the run).
fn recorded(all: Vec<String>, room: &mut usize) -> Vec<String> {
    let total = all.len();
    let mut kept = Vec::new();
    for w in all {
        // Escaped, quoted, indented and separated.
        let cost = serde_json::to_string(&w).map_or(usize::MAX, |j| j.len() + 16);
        if cost > *room {
            break;
        }
        *room -= cost;
        kept.push(w);
    }
    if kept.len() < total {
        kept.push(format!(
            "{} more warnings, not recorded here (the run reported them all)",
            total - kept.len()
        ));
    }
    kept
}

/// What a run left in its stores.
struct Stored {
    sidecar: Sidecar,
    bytes_in: u64,
    warnings: Vec<String>,
    /// Paths a source could not read: not in the backup.
    unread: Vec<String>,
    /// Stores holding the complete backup.
    complete: Vec<usize>,
    failed: Vec<(usize, Error)>,
}

pub fn recipient_label(r: &Recipient) -> String {
    format!("{} SHA256:{}", r.kind(), hex::encode(r.fingerprint()))
}
