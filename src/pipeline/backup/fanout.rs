//! The sealed stream's fan-out: one writer thread per store, each watched
//! for progress, the digests on a thread of their own, and the uploads
//! started and finished. Owned by `backup`; calls only the stores.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::about;
use crate::error::{Error, Result};
use crate::manifest;
use crate::pipeline::job::Job;
use crate::pipeline::plumbing::thread::named_thread;
use crate::store::{StoreError, Upload};

/// One store's upload within a run, on a thread of its own so stores (and a
/// slow network) run in parallel with each other and with compression.
///
/// A store that stops taking data — a server that hangs without closing
/// the connection, a hung network mount — must not hold the others: the
/// run watches each writer's progress, and one that takes no byte for the
/// store's stall limit is left behind (its thread detached) while the other
/// stores go on.
pub(super) struct Slot {
    pub(super) store: usize,
    pub(super) tx: Option<SyncSender<Msg>>,
    /// The writer's last word: committed, or why not.
    pub(super) done: Option<Receiver<std::result::Result<(), Failure>>>,
    pub(super) worker: Option<JoinHandle<()>>,
    /// Bytes the writer has handed to the store so far.
    pub(super) progress: Arc<AtomicU64>,
    /// Set when the run has failed: the writer drops what is still queued
    /// instead of sending it to a store that will delete it.
    pub(super) abort: Arc<AtomicBool>,
    pub(super) stall: Duration,
}

pub(super) enum Msg {
    Piece(Arc<[u8]>),
    /// The stream is complete: commit it.
    End,
}

/// Why a writer stopped.
pub(super) enum Failure {
    Write(io::Error),
    Commit(Error),
    /// The queue closed without an end: the run failed, and the upload was
    /// dropped (its partial file removed).
    Aborted,
}

/// Ciphertext pieces in flight per store (each up to one 64 KiB chunk).
pub(super) const QUEUE: usize = 16;

/// How a hand-over to a writer went.
pub(super) enum Sent {
    Yes,
    /// The writer stopped (its error is waiting).
    Gone,
    /// No progress for the stall limit.
    Stalled,
    Cancelled,
}

impl Slot {
    pub(super) fn start(store: usize, mut upload: Box<dyn Upload>, stall: Duration) -> Self {
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
                        let _ =
                            done_tx.send(upload.commit().map_err(|e| Failure::Commit(e.into())));
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
    pub(super) fn send(&self, msg: Msg) -> Sent {
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
    pub(super) fn abandon(&mut self, store: &str) -> Error {
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
    pub(super) fn finish(&mut self, store: &str, commit: bool) -> Result<()> {
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
pub(super) fn write_counted(
    w: &mut dyn Write,
    mut buf: &[u8],
    counter: &AtomicU64,
) -> io::Result<()> {
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
pub(super) fn upload_error(e: io::Error, store: &str) -> Error {
    type Inner = dyn std::error::Error + Send + Sync;
    let own = e
        .get_ref()
        .is_some_and(|i| Inner::is::<Error>(i) || Inner::is::<StoreError>(i));
    let message = if own {
        match e.into_inner() {
            Some(inner) => match inner.downcast::<StoreError>() {
                Ok(s) => return Error::Storage(*s),
                Err(inner) => match inner.downcast::<Error>() {
                    Ok(err) => return *err,
                    Err(_) => "upload failed".to_owned(),
                },
            },
            None => "upload failed".to_owned(),
        }
    } else {
        format!("upload failed: {e}")
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
pub(super) struct Digests {
    pub(super) tx: Option<SyncSender<Arc<[u8]>>>,
    pub(super) worker: Option<JoinHandle<(String, String)>>,
}

impl Digests {
    pub(super) fn start() -> Self {
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

    pub(super) fn update(&self, piece: &Arc<[u8]>) {
        if let Some(tx) = &self.tx {
            // The worker only stops when the queue closes, or by panicking,
            // which `finish` reports.
            let _ = tx.send(Arc::clone(piece));
        }
    }

    /// The SHA-256 and BLAKE3 (hex) of everything handed over.
    pub(super) fn finish(mut self, what: &str) -> Result<(String, String)> {
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
pub(super) struct Fanout<'a> {
    pub(super) job: &'a Job,
    pub(super) slots: Vec<Slot>,
    pub(super) failed: Vec<(usize, Error)>,
    pub(super) digests: Digests,
    pub(super) len: u64,
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
pub(super) struct EveryStoreFailed {
    pub(super) failures: Vec<String>,
    pub(super) key_problem: bool,
    pub(super) usage_problem: bool,
}

/// The store failure inside a source's error, if that is what stopped it.
pub(super) fn every_store_failed(e: &crate::source::SourceError) -> Option<&EveryStoreFailed> {
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
    pub(super) fn into_error(self, name: &str) -> Error {
        Error::StoresFailed {
            name: name.to_owned(),
            complete: Vec::new(),
            failures: self.failures,
            key_problem: self.key_problem,
            usage_problem: self.usage_problem,
        }
    }
}

/// A write error of the sealed stream: the stores' failure if that is what
/// it is, else an I/O error on the sealed file.
pub(super) fn sink_error(name: &str, sealed_file: &str, e: io::Error) -> Error {
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

/// Starts the sealed file's upload in every store. A store that cannot start
/// is recorded as failed; with no store at all, the run fails before dumping.
pub(super) fn open_uploads<'a>(job: &'a Job, sealed_file: &str) -> Result<Fanout<'a>> {
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
            Err(e) => fanout.failed.push((i, e.into())),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A store's own error carried through `Write` (S3 refusing a part for
    /// its credentials) keeps its exit code: a key problem, not a failed
    /// write.
    #[test]
    fn a_stores_own_write_error_keeps_its_exit_code() {
        let refused = io::Error::other(StoreError::AuthRefused {
            store: "s3".into(),
            message: "credentials refused".into(),
        });
        let e = upload_error(refused, "s3");
        assert_eq!(e.exit_code(), crate::ExitCode::Key, "{e}");
        assert_eq!(e.to_string(), "s3: credentials refused");
        let plain = upload_error(io::Error::other("connection reset"), "s3");
        assert_eq!(plain.exit_code(), crate::ExitCode::Failed);
        assert_eq!(plain.to_string(), "s3: upload failed: connection reset");
    }

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
        fn commit(self: Box<Self>) -> crate::store::Result<()> {
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
        fn commit(self: Box<Self>) -> crate::store::Result<()> {
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
