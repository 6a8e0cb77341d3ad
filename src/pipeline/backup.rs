//! `coffer backup`: sources → archive → seal → hash → stores, in one stream,
//! then the sidecar, then retention — in that order, so a failed run deletes
//! nothing and leaves no file that looks like a backup.

use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::archive::{ArchiveWriter, EntryKind, EntryMeta};
use crate::config::Config;
use crate::envelope::{self, Metadata, Recipient, SealError, DEFAULT_CHUNK_SIZE};
use crate::error::{about, Error, Result};
use crate::ledger;
use crate::manifest::{self, Inner, Sidecar, SourceEntry};
use crate::pipeline::job::{self, Job};
use crate::pipeline::locate;
use crate::pipeline::retention::{self, PruneReport};
use crate::signing::SIGNATURE_SUFFIX;
use crate::source::{Entry, Sink};
use crate::store::{Store, Upload};

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

/// One store's upload within a run, on a thread of its own so stores (and a
/// slow network) run in parallel with each other and with compression.
///
/// A store that stops taking data — a server that hangs without closing
/// the connection, a hung network mount — must not hold the others: the
/// run watches each writer's progress, and one that takes no byte for the
/// store's stall limit is left behind (its thread detached) while the other
/// stores go on.
struct Slot {
    store: usize,
    tx: Option<SyncSender<Msg>>,
    /// The writer's last word: committed, or why not.
    done: Option<Receiver<std::result::Result<(), Failure>>>,
    worker: Option<JoinHandle<()>>,
    /// Bytes the writer has handed to the store so far.
    progress: Arc<AtomicU64>,
    /// Set when the run has failed: the writer drops what is still queued
    /// instead of sending it to a store that will delete it.
    abort: Arc<AtomicBool>,
    stall: Duration,
}

enum Msg {
    Piece(Arc<[u8]>),
    /// The stream is complete: commit it.
    End,
}

/// Why a writer stopped.
enum Failure {
    Write(io::Error),
    Commit(Error),
    /// The queue closed without an end: the run failed, and the upload was
    /// dropped (its partial file removed).
    Aborted,
}

/// Ciphertext pieces in flight per store (each up to one 64 KiB chunk).
const QUEUE: usize = 16;

/// How a hand-over to a writer went.
enum Sent {
    Yes,
    /// The writer stopped (its error is waiting).
    Gone,
    /// No progress for the stall limit.
    Stalled,
    Cancelled,
}

impl Slot {
    fn start(store: usize, mut upload: Box<dyn Upload>, stall: Duration) -> Self {
        let (tx, rx) = sync_channel::<Msg>(QUEUE);
        let (done_tx, done) = std::sync::mpsc::channel();
        let progress = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&progress);
        let abort = Arc::new(AtomicBool::new(false));
        let aborted = Arc::clone(&abort);
        // Named, so that per-thread CPU (perf, top -H) says what it is.
        let worker = named_thread("store-writer", move || {
            for msg in rx {
                if aborted.load(Ordering::Relaxed) || crate::cancel::is_cancelled() {
                    break;
                }
                match msg {
                    Msg::Piece(piece) => {
                        if let Err(e) = write_counted(&mut upload, &piece, &counter) {
                            // Said first, so that the run goes on at once;
                            // then the upload is dropped (a remote partial
                            // removed) here, off the run's path, however
                            // long a failing server takes to answer.
                            let _ = done_tx.send(Err(Failure::Write(e)));
                            return;
                        }
                    }
                    Msg::End => {
                        let _ = done_tx.send(upload.commit().map_err(Failure::Commit));
                        return;
                    }
                }
            }
            // The run failed: the upload is dropped (its partial removed)
            // before the run hears of it, so that nothing is left behind.
            drop(upload);
            let _ = done_tx.send(Err(Failure::Aborted));
        });
        Slot {
            store,
            tx: Some(tx),
            done: Some(done),
            worker: Some(worker),
            progress,
            abort,
            stall,
        }
    }

    /// Hands `msg` to the writer, waiting while its queue is full for as
    /// long as it makes progress.
    fn send(&self, msg: Msg) -> Sent {
        let Some(tx) = &self.tx else {
            return Sent::Gone;
        };
        let mut msg = msg;
        let mut seen = self.progress.load(Ordering::Relaxed);
        let mut since = Instant::now();
        let mut nap = Duration::from_micros(50);
        // A full queue is most often a writer a few microseconds behind:
        // give it the core a while before sleeping, which costs far more.
        let mut yields = 0u32;
        loop {
            match tx.try_send(msg) {
                Ok(()) => return Sent::Yes,
                Err(TrySendError::Disconnected(_)) => return Sent::Gone,
                Err(TrySendError::Full(m)) => msg = m,
            }
            if yields < 256 {
                yields += 1;
                std::thread::yield_now();
                continue;
            }
            if crate::cancel::is_cancelled() {
                return Sent::Cancelled;
            }
            let now = self.progress.load(Ordering::Relaxed);
            if now != seen {
                seen = now;
                since = Instant::now();
            } else if since.elapsed() > self.stall {
                return Sent::Stalled;
            }
            std::thread::sleep(nap);
            nap = (nap * 2).min(Duration::from_millis(10));
        }
    }

    /// Leaves a writer that stopped making progress behind: its thread is
    /// detached (it may be blocked in the kernel for good), and its partial
    /// file is for the next run to clean.
    fn abandon(&mut self, store: &str) -> Error {
        drop(self.tx.take());
        drop(self.done.take());
        drop(self.worker.take());
        Error::Store {
            store: store.to_owned(),
            message: format!(
                "stalled: the store took no data for {} s (a server or mount that stopped answering); \
                 left behind so that the other stores get the backup",
                self.stall.as_secs()
            ),
        }
    }

    /// Ends the writer's queue — with `commit`, telling it the stream is
    /// complete — and waits for its last word while it makes progress.
    fn finish(&mut self, store: &str, commit: bool) -> Result<()> {
        if !commit {
            self.abort.store(true, Ordering::Relaxed);
        }
        if commit {
            match self.send(Msg::End) {
                Sent::Yes | Sent::Gone => {}
                Sent::Stalled => return Err(self.abandon(store)),
                Sent::Cancelled => {
                    return Err(Error::Store {
                        store: store.to_owned(),
                        message: "cancelled by a signal".into(),
                    })
                }
            }
        }
        drop(self.tx.take());
        let Some(done) = self.done.take() else {
            return Err(Error::Store {
                store: store.to_owned(),
                message: "upload already finished".into(),
            });
        };
        let mut seen = self.progress.load(Ordering::Relaxed);
        let mut since = Instant::now();
        let result = loop {
            match done.recv_timeout(Duration::from_millis(200)) {
                Ok(r) => break r,
                Err(RecvTimeoutError::Disconnected) => {
                    drop(self.worker.take().map(JoinHandle::join));
                    return Err(Error::Store {
                        store: store.to_owned(),
                        message: "upload thread panicked".into(),
                    });
                }
                Err(RecvTimeoutError::Timeout) => {
                    let now = self.progress.load(Ordering::Relaxed);
                    if now != seen {
                        seen = now;
                        since = Instant::now();
                    } else if since.elapsed() > self.stall {
                        self.done = Some(done);
                        return Err(self.abandon(store));
                    }
                }
            }
        };
        // Not joined: after a write error the thread may still be tearing
        // the upload down, and the run need not wait for that.
        drop(self.worker.take());
        match result {
            Ok(()) => Ok(()),
            Err(Failure::Commit(e)) => Err(e),
            Err(Failure::Write(e)) => Err(upload_error(e, store)),
            Err(Failure::Aborted) => Err(Error::Store {
                store: store.to_owned(),
                message: "upload stopped".into(),
            }),
        }
    }
}

/// `write_all`, counting every byte the store takes as it takes it: a slow
/// store is making progress, a stalled one is not.
/// `std::thread::spawn` with a name, which per-thread CPU accounting (perf,
/// `top -H`) shows. Like `spawn`, panics only if the system cannot make a
/// thread at all.
fn named_thread<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> JoinHandle<T> {
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(f)
        .unwrap_or_else(|e| panic!("cannot start a thread: {e}"))
}

fn write_counted(w: &mut dyn Write, mut buf: &[u8], counter: &AtomicU64) -> io::Result<()> {
    while !buf.is_empty() {
        match w.write(buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                counter.fetch_add(n as u64, Ordering::Relaxed);
                buf = &buf[n..];
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A store's write error: its own (e.g. S3's refused credentials) keeps its
/// exit code.
fn upload_error(e: io::Error, store: &str) -> Error {
    let message = match e
        .get_ref()
        .map(<dyn std::error::Error + Send + Sync>::is::<Error>)
    {
        Some(true) => match e
            .into_inner()
            .map(<dyn std::error::Error + Send + Sync>::downcast::<Error>)
        {
            Some(Ok(inner)) => return *inner,
            _ => "upload failed".to_owned(),
        },
        _ => format!("upload failed: {e}"),
    };
    Error::Store {
        store: store.to_owned(),
        message,
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        // A run that fails drops its slots: wait (while it makes progress)
        // for each writer to drop its upload, removing the partial file,
        // before the process exits.
        if self.done.is_some() {
            drop(self.finish("", false));
        }
    }
}

/// The sealed file's digests for its sidecar — SHA-256, which `sha256sum`
/// checks, and BLAKE3, which coffer checks — on a thread of their own, so
/// that the sealing thread, which every byte passes, only hands pieces over.
struct Digests {
    tx: Option<SyncSender<Arc<[u8]>>>,
    worker: Option<JoinHandle<(String, String)>>,
}

impl Digests {
    fn start() -> Self {
        let (tx, rx) = sync_channel::<Arc<[u8]>>(QUEUE);
        let worker = named_thread("digests", move || {
            let mut sha = Sha256::new();
            let mut b3 = blake3::Hasher::new();
            for piece in rx {
                sha.update(&piece);
                b3.update(&piece);
            }
            (
                hex::encode(sha.finalize()),
                b3.finalize().to_hex().to_string(),
            )
        });
        Digests {
            tx: Some(tx),
            worker: Some(worker),
        }
    }

    fn update(&self, piece: &Arc<[u8]>) {
        if let Some(tx) = &self.tx {
            // The worker only stops when the queue closes, or by panicking,
            // which `finish` reports.
            let _ = tx.send(Arc::clone(piece));
        }
    }

    /// The SHA-256 and BLAKE3 (hex) of everything handed over.
    fn finish(mut self, what: &str) -> Result<(String, String)> {
        drop(self.tx.take());
        self.worker
            .take()
            .and_then(|w| w.join().ok())
            .ok_or_else(|| Error::io(what, "hash", io::Error::other("the hashing thread failed")))
    }
}

/// The tee at the end of the pipeline: hands the ciphertext to the hashing
/// thread and to every store still alive. A store that fails drops out (its
/// error kept); the run goes on while at least one store is writing.
struct Fanout<'a> {
    job: &'a Job,
    slots: Vec<Slot>,
    failed: Vec<(usize, Error)>,
    digests: Digests,
    len: u64,
}

impl Write for Fanout<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let piece: Arc<[u8]> = Arc::from(buf);
        for slot in &mut self.slots {
            if slot.tx.is_none() {
                continue;
            }
            let store = self.job.stores[slot.store].name().to_owned();
            match slot.send(Msg::Piece(Arc::clone(&piece))) {
                Sent::Yes => {}
                Sent::Gone => {
                    let e = slot.finish(&store, false).err().unwrap_or(Error::Store {
                        store,
                        message: "upload stopped".into(),
                    });
                    self.failed.push((slot.store, e));
                }
                Sent::Stalled => {
                    let e = slot.abandon(&store);
                    self.failed.push((slot.store, e));
                }
                Sent::Cancelled => return Err(io::Error::other("cancelled by a signal")),
            }
        }
        if self.slots.iter().all(|s| s.tx.is_none()) {
            return Err(io::Error::other(EveryStoreFailed {
                failures: self
                    .failed
                    .iter()
                    .map(|(i, e)| {
                        let store = self.job.stores[*i].name();
                        format!("{store}: {}", about(e, store))
                    })
                    .collect(),
                key_problem: self
                    .failed
                    .iter()
                    .any(|(_, e)| e.exit_code() == crate::ExitCode::Key),
                usage_problem: self
                    .failed
                    .iter()
                    .any(|(_, e)| e.exit_code() == crate::ExitCode::Usage),
            }));
        }
        self.digests.update(&piece);
        self.len += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Why the stream stopped when the last store dropped out: carried through
/// the archive and sealer as an `io::Error`, so that the run blames the
/// stores, not the source that was writing at the time.
#[derive(Debug, thiserror::Error)]
#[error("every store failed: {}", .failures.join("; "))]
struct EveryStoreFailed {
    failures: Vec<String>,
    key_problem: bool,
    usage_problem: bool,
}

/// The store failure inside a source's error, if that is what stopped it.
fn every_store_failed(e: &crate::source::SourceError) -> Option<&EveryStoreFailed> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            if let Some(found) = io
                .get_ref()
                .and_then(|i| i.downcast_ref::<EveryStoreFailed>())
            {
                return Some(found);
            }
        }
        if let Some(found) = err.downcast_ref::<EveryStoreFailed>() {
            return Some(found);
        }
        cur = err.source();
    }
    None
}

impl EveryStoreFailed {
    fn into_error(self, name: &str) -> Error {
        Error::StoresFailed {
            name: name.to_owned(),
            complete: Vec::new(),
            failures: self.failures,
            key_problem: self.key_problem,
            usage_problem: self.usage_problem,
            done: None,
        }
    }
}

/// A write error of the sealed stream: the stores' failure if that is what
/// it is, else an I/O error on the sealed file.
fn sink_error(name: &str, sealed_file: &str, e: io::Error) -> Error {
    if let Some(f) = e
        .get_ref()
        .and_then(|i| i.downcast_ref::<EveryStoreFailed>())
    {
        return EveryStoreFailed {
            failures: f.failures.clone(),
            key_problem: f.key_problem,
            usage_problem: f.usage_problem,
        }
        .into_error(name);
    }
    Error::io(sealed_file, "write", e)
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

/// Where this run's entry goes in the job's ledger: after the newest entry
/// that any reachable store holds and this host signed (unsigned jobs: any
/// plausible entry). A server that hides entries makes the next run fork the
/// ledger, which `verify` reports; it cannot make the host sign a lie.
fn ledger_position(job: &Job, now: chrono::DateTime<chrono::Utc>) -> (u64, String) {
    let verifier = job.signer.as_ref().and_then(|s| s.verifier().ok());
    let mut known = Vec::new();
    for store in &job.stores {
        let Ok((listed, _)) = retention::list(store.as_ref()) else {
            continue;
        };
        for l in listed
            .iter()
            .filter(|l| locate::plausible(l, &job.config.job.name, now))
        {
            if let Some(v) = &verifier {
                if !matches!(
                    locate::origin(store.as_ref(), l, Some(v)),
                    locate::Origin::Signed(_)
                ) {
                    continue;
                }
            }
            known.extend(locate::ledger_entry(l));
        }
    }
    ledger::next(&known)
}

/// How many of a run's candidate names one store may claim to hold before
/// it is left out of the run. An honest store holds a candidate only if
/// runs started within one second; a hostile server can answer "exists" to
/// every name, and must not thereby cost the other stores their copy.
const CLAIMS_BEFORE_LEFT_OUT: usize = 8;

/// A name no store has used: `{job}-{YYYYMMDDTHHMMSSZ}`, then `-1`, `-2`, …
/// A store that claims to hold [`CLAIMS_BEFORE_LEFT_OUT`] of them is left
/// out of the run (into `job.unready`), and the run's failure names it.
fn unique_name(job: &mut Job, now: chrono::DateTime<chrono::Utc>) -> Result<String> {
    let base = format!("{}-{}", job.config.job.name, now.format("%Y%m%dT%H%M%SZ"));
    let mut claims = vec![0usize; job.stores.len()];
    for i in 0..1000 {
        let name = if i == 0 {
            base.clone()
        } else {
            format!("{base}-{i}")
        };
        let mut taken = false;
        for (store, claimed) in job.stores.iter().zip(claims.iter_mut()) {
            if *claimed < CLAIMS_BEFORE_LEFT_OUT && holds_name(store.as_ref(), &name) {
                *claimed += 1;
                taken = true;
            }
        }
        if !taken {
            leave_out_claiming(job, &claims, &base)?;
            return Ok(name);
        }
    }
    Err(Error::Usage(format!("no free backup name for {base}")))
}

/// Whether `store` says it holds any file of the backup `name`. A store that
/// cannot answer is no reason to lose the night in the others: its upload
/// fails and is reported.
fn holds_name(store: &dyn Store, name: &str) -> bool {
    [
        manifest::SEALED_SUFFIX,
        manifest::SIDECAR_SUFFIX,
        ".coffer.partial",
        ".coffer.json.partial",
        ".coffer.json.minisig",
    ]
    .iter()
    .any(|suffix| matches!(store.stat(&format!("{name}{suffix}")), Ok(Some(_))))
}

/// Moves the stores that claimed every name they were asked about out of
/// the run; fails if that leaves none.
fn leave_out_claiming(job: &mut Job, claims: &[usize], base: &str) -> Result<()> {
    let left_out = |k: usize| claims.get(k).is_some_and(|&c| c >= CLAIMS_BEFORE_LEFT_OUT);
    // Each store's prune flag goes with it: both are looked up by position.
    let mut k = 0;
    job.prune.retain(|_| {
        k += 1;
        !left_out(k - 1)
    });
    let mut k = 0;
    job.stores.retain(|store| {
        let claimed = left_out(k);
        k += 1;
        if claimed {
            let message = format!(
                "claims to hold {base} and the next {} names a run could take: \
                 left out of this run (coffer never overwrites); look at what the \
                 store holds under those names",
                CLAIMS_BEFORE_LEFT_OUT - 1
            );
            job.unready.push((
                store.name().to_owned(),
                Error::Store {
                    store: store.name().to_owned(),
                    message,
                },
            ));
        }
        !claimed
    });
    if job.stores.is_empty() {
        if let Some((_, e)) = job.unready.pop() {
            return Err(e);
        }
    }
    Ok(())
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

pub fn run(config: Config, dry_run: bool) -> Result<Summary> {
    let started = Instant::now();
    // Everything this run creates (uploads, sidecars, the lock) is private.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    if dry_run {
        let problems = job::check(&config);
        if !problems.is_empty() {
            return Err(Error::Check(problems));
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
    crate::cancel::install_signal_handlers().map_err(|e| Error::Store {
        store: "signals".into(),
        message: format!("cannot install signal handlers: {e}"),
    })?;

    let (unready, unready_key, unready_usage) = unready_failures(&job);
    let mut stored = match seal_and_store(&job, &name, now, started) {
        Ok(s) => s,
        Err(Error::StoresFailed {
            name,
            complete,
            mut failures,
            key_problem,
            usage_problem,
            done,
        }) => {
            failures.extend(unready);
            return Err(Error::StoresFailed {
                name,
                complete,
                failures,
                key_problem: key_problem || unready_key,
                usage_problem: usage_problem || unready_usage,
                done,
            });
        }
        Err(e) => return Err(e),
    };
    stored.warnings.extend(refill(&job, &stored.complete, now));
    let (pruned, prune_failed) = prune_where_complete(&job, &stored.complete, &name, now);
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
        return Err(Error::StoresFailed {
            name,
            complete,
            done: Some(Box::new(done)),
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
        });
    }
    Ok(Summary {
        name,
        size: stored.sidecar.size,
        bytes_in: stored.bytes_in,
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        stores: job.stores.iter().map(|s| s.name().to_owned()).collect(),
        pruned,
        warnings: stored.warnings,
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
/// in the run's failure); the others are pruned all the same.
fn prune_where_complete(
    job: &Job,
    complete: &[usize],
    name: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> (Vec<PruneReport>, Vec<String>) {
    let mut pruned = Vec::new();
    let mut failed = Vec::new();
    let verifier = job.signer.as_ref().and_then(|s| s.verifier().ok());
    for &i in complete {
        if !job.prune[i] {
            continue;
        }
        match retention::apply(
            job.stores[i].as_ref(),
            &job.config.job.name,
            job.policy,
            Some(name),
            false,
            now,
            verifier.as_ref(),
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

    let (source_entries, warnings) = dump_sources(job, name, &mut archive)?;
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
    let mut warnings = warnings;
    warnings.extend(recopied);
    Ok(Stored {
        sidecar,
        bytes_in,
        warnings,
        complete: done,
        failed,
    })
}

/// Starts the sealed file's upload in every store. A store that cannot start
/// is recorded as failed; with no store at all, the run fails before dumping.
fn open_uploads<'a>(job: &'a Job, sealed_file: &str) -> Result<Fanout<'a>> {
    let mut fanout = Fanout {
        job,
        slots: Vec::new(),
        failed: Vec::new(),
        digests: Digests::start(),
        len: 0,
    };
    for (i, store) in job.stores.iter().enumerate() {
        match store.put(sealed_file) {
            Ok(u) => fanout.slots.push(Slot::start(i, u, store.stall_after())),
            Err(e) => fanout.failed.push((i, e)),
        }
    }
    if fanout.slots.is_empty() {
        // Nowhere to write: fail before dumping anything. One store's own
        // error as it is; several, each named (a changed host key in one
        // must not hide behind a full disk in another).
        if fanout.failed.len() == 1 {
            return Err(fanout.failed.swap_remove(0).1);
        }
        let code = |c| fanout.failed.iter().any(|(_, e)| e.exit_code() == c);
        return Err(Error::StoresFailed {
            name: sealed_file
                .strip_suffix(manifest::SEALED_SUFFIX)
                .unwrap_or(sealed_file)
                .to_owned(),
            complete: Vec::new(),
            key_problem: code(crate::ExitCode::Key),
            usage_problem: code(crate::ExitCode::Usage),
            done: None,
            failures: fanout
                .failed
                .iter()
                .map(|(i, e)| {
                    let store = job.stores[*i].name();
                    format!("{store}: {}", about(e, store))
                })
                .collect(),
        });
    }
    Ok(fanout)
}

/// Writes the sidecar where the sealed file is complete, then refills stores
/// that dropped out from one that has the finished backup. Returns the
/// stores done, those failed, and a warning for each store that got the
/// backup only by that copy (the run succeeded, but its upload did not).
fn finish_stores(
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

/// Runs every source into the archive; any failure fails the run.
fn dump_sources<W: Write>(
    job: &Job,
    name: &str,
    archive: &mut ArchiveWriter<W>,
) -> Result<(Vec<SourceEntry>, Vec<String>)> {
    let mut entries = Vec::new();
    let mut warnings = Vec::new();
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
        entries.push(SourceEntry {
            kind: source.kind().into(),
            name: source.name().into(),
            commands: report.commands,
            tool_versions: report.tool_versions,
            row_counts: report.row_counts,
            warnings: recorded(report.warnings, &mut room),
        });
    }
    Ok((entries, warnings))
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

/// The sidecar exactly as written to every store, and its signature.
struct SidecarFiles {
    sidecar: Sidecar,
    json: Vec<u8>,
    signature: Option<String>,
}

fn sidecar_files(job: &Job, sidecar: &Sidecar) -> Result<SidecarFiles> {
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
fn write_sidecar(store: &dyn Store, files: &SidecarFiles) -> Result<()> {
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
    u.commit()
}

/// Copies a complete backup between stores, checking the hash on the way,
/// with a few attempts and backoff (the target may be reconnecting).
fn copy_backup(from: &dyn Store, to: &dyn Store, files: &SidecarFiles) -> Result<()> {
    let sidecar = &files.sidecar;
    let sealed = sidecar.sealed_name();
    let mut delay = std::time::Duration::from_secs(1);
    let mut last = None;
    for _ in 0..3 {
        if crate::cancel::is_cancelled() {
            break;
        }
        let attempt = (|| -> Result<()> {
            // A partial left by the failed attempt would block the new
            // upload, and so would a sealed file whose sidecar never came
            // (without a sidecar it is no backup; the run holds the lock).
            if to.stat(&format!("{sealed}.partial"))?.is_some() {
                to.delete(&format!("{sealed}.partial"))?;
            }
            if to.stat(&sidecar.file_name())?.is_none() && to.stat(&sealed)?.is_some() {
                to.delete(&sealed)?;
            }
            let mut r = from.get(&sealed)?;
            let mut u = to.put(&sealed)?;
            let (kind, expected) = sidecar.file_digest();
            let mut hash = kind.hasher();
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let n = r
                    .read(&mut buf)
                    .map_err(|e| Error::io(&sealed, "read", e))?;
                if n == 0 {
                    break;
                }
                hash.update(&buf[..n]);
                u.write_all(&buf[..n])
                    .map_err(|e| Error::io(&sealed, "write", e))?;
            }
            if hex::encode(hash.finalize()) != expected {
                return Err(Error::Store {
                    store: from.name().to_owned(),
                    message: format!("{sealed} changed while being copied"),
                });
            }
            u.commit()?;
            write_sidecar(to, files)
        })();
        match attempt {
            Ok(()) => return Ok(()),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(delay);
        delay *= 2;
    }
    Err(last.unwrap_or_else(|| Error::Usage("cancelled".into())))
}

/// Heals stores that missed earlier backups (unreachable on a past night),
/// for jobs that sign their backups:
/// every backup another store holds that retention keeps there, and that
/// (with a signing key) carries this host's signature, is copied into each
/// store this run could write, hash-checked on the way. Failures are
/// warnings: the next run tries again.
fn refill(job: &Job, healthy: &[usize], now: chrono::DateTime<chrono::Utc>) -> Vec<String> {
    // Only what this host signed is copied: unsigned, a forgery planted in
    // one store would spread to the others and push their backups out.
    let Some(verifier) = job.signer.as_ref().and_then(|s| s.verifier().ok()) else {
        return Vec::new();
    };
    let name = job.config.job.name.as_str();
    // Only the stores that took this run's backup are read: one that failed
    // (a stalled server) would cost its timeouts again for nothing.
    let listed: Vec<Option<Vec<retention::Listed>>> = job
        .stores
        .iter()
        .enumerate()
        .map(|(i, s)| {
            healthy
                .contains(&i)
                .then(|| retention::list(s.as_ref()).ok().map(|(l, _)| l))
                .flatten()
        })
        .collect();
    // The newest keep_last signed backups of the job across every store:
    // what each store should hold. Taken per store, a backup that only a
    // store which missed some nights still holds would be copied back into
    // the others, and their retention would delete it again, every night.
    let mut wanted: Vec<(
        Option<chrono::DateTime<chrono::Utc>>,
        usize,
        &retention::Listed,
    )> = Vec::new();
    for (from, from_listed) in listed.iter().enumerate() {
        for l in from_listed.iter().flatten() {
            if locate::plausible(l, name, now)
                && matches!(
                    locate::origin(job.stores[from].as_ref(), l, Some(&verifier)),
                    locate::Origin::Signed(_)
                )
            {
                wanted.push((retention::believed_time(l, true), from, l));
            }
        }
    }
    wanted.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.2.name.cmp(&b.2.name)));
    wanted.dedup_by(|a, b| a.2.name == b.2.name);
    wanted.truncate(usize::try_from(job.policy.keep_last).unwrap_or(usize::MAX));
    let mut notes = Vec::new();
    // A store with `prune = false` is the server's to manage (a write-only
    // account whose uploads `coffer ingest` moves away): it is not refilled.
    for &to in healthy.iter().filter(|&&i| job.prune[i]) {
        let Some(have) = &listed[to] else { continue };
        for &(_, holder, l) in &wanted {
            if have
                .iter()
                .any(|h| h.name == l.name && h.state == retention::State::Complete)
            {
                continue;
            }
            if holder != to {
                notes.push(refill_one(job, holder, to, l));
            }
        }
    }
    notes
}

/// Copies the signed backup `l` from store `from` into store `to`; says
/// what it did, for the run's warnings.
fn refill_one(job: &Job, from: usize, to: usize, l: &retention::Listed) -> String {
    let from_store = job.stores[from].as_ref();
    let to_store = job.stores[to].as_ref();
    let Some(sidecar) = l.sidecar.clone() else {
        return format!(
            "could not refill {} into {}: no sidecar",
            l.name,
            to_store.name()
        );
    };
    let mut text = String::new();
    let signature = from_store
        .get(&format!("{}{SIGNATURE_SUFFIX}", sidecar.file_name()))
        .ok()
        .and_then(|r| r.take(64 * 1024).read_to_string(&mut text).ok())
        .map(|_| text);
    let files = SidecarFiles {
        sidecar,
        json: l.raw.clone(),
        signature,
    };
    match copy_backup(from_store, to_store, &files) {
        Ok(()) => format!(
            "refilled {} into {} (it missed it) from {}",
            l.name,
            to_store.name(),
            from_store.name()
        ),
        Err(e) => format!(
            "could not refill {} into {}: {}",
            l.name,
            to_store.name(),
            about(&e, to_store.name())
        ),
    }
}

/// What a run left in its stores.
struct Stored {
    sidecar: Sidecar,
    bytes_in: u64,
    warnings: Vec<String>,
    /// Stores holding the complete backup.
    complete: Vec<usize>,
    failed: Vec<(usize, Error)>,
}

pub fn recipient_label(r: &Recipient) -> String {
    format!("{} SHA256:{}", r.kind(), hex::encode(r.fingerprint()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An upload whose writes and commit never return: a hung mount or a
    /// server that stopped answering with its connection open.
    struct Hung(std::sync::mpsc::Receiver<()>);

    impl Write for Hung {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            let _ = self.0.recv();
            Err(io::Error::other("released"))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Upload for Hung {
        fn commit(self: Box<Self>) -> Result<()> {
            let _ = self.0.recv();
            Ok(())
        }
    }

    fn hung() -> (Box<dyn Upload>, std::sync::mpsc::Sender<()>) {
        let (tx, rx) = std::sync::mpsc::channel();
        (Box::new(Hung(rx)), tx)
    }

    #[test]
    fn a_writer_that_takes_nothing_is_left_behind_after_its_stall_limit() {
        let (upload, _keep) = hung();
        let stall = Duration::from_millis(300);
        let mut slot = Slot::start(0, upload, stall);
        let started = Instant::now();
        let piece: Arc<[u8]> = Arc::from(&[0u8; 1024][..]);
        let mut outcome = Sent::Yes;
        for _ in 0..=QUEUE + 1 {
            outcome = slot.send(Msg::Piece(Arc::clone(&piece)));
            if !matches!(outcome, Sent::Yes) {
                break;
            }
        }
        assert!(matches!(outcome, Sent::Stalled));
        let waited = started.elapsed();
        assert!(
            waited >= stall && waited < Duration::from_secs(10),
            "{waited:?}"
        );
        let e = slot.abandon("hung");
        assert!(e.to_string().contains("stalled"), "{e}");
        // Dropping the abandoned slot does not wait for the hung thread.
        drop(slot);
    }

    #[test]
    fn a_commit_that_never_returns_is_left_behind_too() {
        let (upload, _keep) = hung();
        let mut slot = Slot::start(0, upload, Duration::from_millis(300));
        let started = Instant::now();
        let e = slot.finish("hung", true).unwrap_err();
        assert!(e.to_string().contains("stalled"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    /// Takes a byte every 50 ms: slow, never stalled.
    struct Slow;
    impl Write for Slow {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            std::thread::sleep(Duration::from_millis(50));
            Ok(buf.len().min(1))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    impl Upload for Slow {
        fn commit(self: Box<Self>) -> Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_failed_run_does_not_wait_for_a_slow_store_to_take_what_is_queued() {
        let slot = Slot::start(0, Box::new(Slow), Duration::from_secs(2));
        let piece: Arc<[u8]> = Arc::from(&[0u8; 8][..]);
        for _ in 0..QUEUE {
            assert!(matches!(
                slot.send(Msg::Piece(Arc::clone(&piece))),
                Sent::Yes
            ));
        }
        // What is queued would take the writer about 6 s to send.
        let started = Instant::now();
        drop(slot);
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn a_writer_that_keeps_going_is_waited_for() {
        let mut slot = Slot::start(0, Box::new(Slow), Duration::from_secs(2));
        let piece: Arc<[u8]> = Arc::from(&[0u8; 8][..]);
        for _ in 0..QUEUE + 4 {
            assert!(matches!(
                slot.send(Msg::Piece(Arc::clone(&piece))),
                Sent::Yes
            ));
        }
        slot.finish("slow", true).unwrap();
    }
}
