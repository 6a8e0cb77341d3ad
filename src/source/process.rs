//! Running a dump program: its stdout streams into the archive; stderr is kept
//! (the last few KiB) for the error message; the exit status decides whether
//! the dump counts.

use std::io::{self, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::SourceError;
use crate::cancel;

const STDERR_KEEP: usize = 8 * 1024;
/// Pieces of a dump's output read ahead of the archive, at most, and their
/// size: with the pipe, 3 MiB the dump can write on while the archive takes
/// in a part. A live backup ran about 9 % faster (docs/PERFORMANCE.md); more
/// bought nothing measurable, and every MiB counts on the S3 path.
const READ_AHEAD: usize = 8;
const READ_PIECE: usize = 256 << 10;
/// What the pipe from a dump program holds: Linux's default limit for an
/// unprivileged process (`/proc/sys/fs/pipe-max-size`).
const PIPE_SIZE: usize = 1 << 20;

/// How long a dump program may write nothing before it is stopped, in
/// seconds (0: never); the run sets it from `dump_stall_secs`.
static STALL_SECS: AtomicU64 = AtomicU64::new(0);

/// Sets how long a dump program may write nothing before it is stopped.
pub fn set_stall_limit(secs: u64) {
    STALL_SECS.store(secs, Ordering::Relaxed);
}

/// Watches a child's output: kills it once coffer has waited on it for the
/// stall limit without a byte. Only time spent waiting in `read` counts: a
/// dump that coffer is not reading (its stores are slow, and the pipe is
/// full) is not the one stalling.
struct Watchdog {
    epoch: Instant,
    /// Milliseconds since `epoch` plus one when the current read began;
    /// 0 while coffer is not waiting on the child.
    waiting_since: Arc<AtomicU64>,
    fired: Arc<AtomicBool>,
    done: Arc<AtomicBool>,
    secs: u64,
}

impl Watchdog {
    fn start(pid: u32, secs: u64) -> Option<Self> {
        if secs == 0 {
            return None;
        }
        let w = Watchdog {
            epoch: Instant::now(),
            waiting_since: Arc::new(AtomicU64::new(0)),
            fired: Arc::new(AtomicBool::new(false)),
            done: Arc::new(AtomicBool::new(false)),
            secs,
        };
        let (waiting, fired, done) = (
            Arc::clone(&w.waiting_since),
            Arc::clone(&w.fired),
            Arc::clone(&w.done),
        );
        let epoch = w.epoch;
        std::thread::spawn(move || {
            let limit = Duration::from_secs(secs);
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200).min(limit));
                let since = waiting.load(Ordering::Relaxed);
                if since == 0 {
                    continue;
                }
                let began = Duration::from_millis(since - 1);
                if epoch.elapsed().saturating_sub(began) >= limit {
                    fired.store(true, Ordering::Relaxed);
                    if let Some(pid) = i32::try_from(pid)
                        .ok()
                        .and_then(rustix::process::Pid::from_raw)
                    {
                        let _ = rustix::process::kill_process(pid, rustix::process::Signal::Kill);
                    }
                    return;
                }
            }
        });
        Some(w)
    }

    /// `stdout`, marked as waited on while a read of it blocks.
    fn watch<R>(&self, stdout: R) -> Watched<R> {
        Watched {
            inner: stdout,
            epoch: self.epoch,
            waiting_since: Some(Arc::clone(&self.waiting_since)),
        }
    }
}

/// A child's output that tells its [`Watchdog`], if any, when a read of it
/// starts and ends.
struct Watched<R> {
    inner: R,
    epoch: Instant,
    waiting_since: Option<Arc<AtomicU64>>,
}

impl<R: Read> Read for Watched<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mark = |now: bool| {
            if let Some(w) = &self.waiting_since {
                let v = if now {
                    u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1
                } else {
                    0
                };
                w.store(v, Ordering::Relaxed);
            }
        };
        mark(true);
        let n = self.inner.read(buf);
        mark(false);
        n
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
    }
}

/// Finds a program in PATH.
pub fn find_program(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let p = PathBuf::from(name);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A running child whose stdout is read as a stream. Killed if dropped before
/// [`finish`](Self::finish).
pub struct ChildStream {
    program: String,
    child: Option<Child>,
    /// The child's stdout, read ahead on a thread of its own (only while
    /// that thread waits in a read does the watchdog count).
    stdout: Option<crate::ahead::Ahead>,
    stderr: Option<JoinHandle<Vec<u8>>>,
    watchdog: Option<Watchdog>,
}

impl ChildStream {
    pub fn spawn(cmd: Command) -> Result<Self, SourceError> {
        Self::spawn_with_stall(cmd, STALL_SECS.load(Ordering::Relaxed))
    }

    /// [`spawn`](Self::spawn), stopping the child once it has been waited
    /// on for `stall_secs` without a byte (0: never).
    fn spawn_with_stall(mut cmd: Command, stall_secs: u64) -> Result<Self, SourceError> {
        let program = cmd.get_program().to_string_lossy().into_owned();
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound {
                SourceError::NotFound {
                    program: program.clone(),
                }
            } else {
                SourceError::Spawn {
                    program: program.clone(),
                    source,
                }
            }
        })?;
        cancel::register_child(child.id());
        let watchdog = Watchdog::start(child.id(), stall_secs);
        let stdout = match child.stdout.take() {
            Some(out) => {
                // A larger pipe lets the dump write on while the reading
                // thread hands pieces over (best effort: the system may cap
                // pipe sizes lower).
                let _ = rustix::pipe::fcntl_setpipe_size(&out, PIPE_SIZE);
                let watched = match &watchdog {
                    Some(w) => w.watch(out),
                    None => Watched {
                        inner: out,
                        epoch: Instant::now(),
                        waiting_since: None,
                    },
                };
                let ahead = crate::ahead::detached(watched, "dump-reader", READ_AHEAD, READ_PIECE)
                    .map_err(|source| SourceError::Spawn {
                        program: program.clone(),
                        source,
                    })?;
                Some(ahead)
            }
            None => None,
        };
        let stderr = child.stderr.take().map(|mut e| {
            std::thread::spawn(move || {
                // Keep only the tail; a chatty dump must not grow memory.
                let mut tail = Vec::new();
                let mut buf = [0u8; 4096];
                while let Ok(n) = e.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    tail.extend_from_slice(&buf[..n]);
                    if tail.len() > STDERR_KEEP {
                        tail.drain(..tail.len() - STDERR_KEEP);
                    }
                }
                tail
            })
        });
        Ok(ChildStream {
            program,
            child: Some(child),
            stdout,
            stderr,
            watchdog,
        })
    }

    pub fn program(&self) -> &str {
        &self.program
    }

    /// Waits for the child; the dump counts only if it exited 0.
    pub fn finish(mut self) -> Result<(), SourceError> {
        drop(self.stdout.take());
        let status = self
            .child
            .take()
            .map(|mut c| {
                let s = c.wait();
                cancel::unregister_child(c.id());
                s
            })
            .transpose()
            .map_err(|source| SourceError::Spawn {
                program: self.program.clone(),
                source,
            })?;
        let stderr = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        if let Some(w) = self.watchdog.take() {
            if w.fired.load(Ordering::Relaxed) {
                return Err(SourceError::Stalled {
                    program: self.program.clone(),
                    secs: w.secs,
                });
            }
        }
        match status {
            Some(s) if s.success() => Ok(()),
            Some(s) => Err(SourceError::Failed {
                program: self.program.clone(),
                status: describe(s),
                stderr: String::from_utf8_lossy(&stderr).into_owned(),
            }),
            None => Ok(()),
        }
    }
}

fn describe(s: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(sig)) => format!("was killed by signal {sig}"),
        _ => "failed".into(),
    }
}

impl Read for ChildStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if cancel::is_cancelled() {
            return Err(cancel::cancelled_error());
        }
        let n = match self.stdout.as_mut() {
            Some(s) => s.read(buf)?,
            None => 0,
        };
        if let Some(w) = &self.watchdog {
            if w.fired.load(Ordering::Relaxed) {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    SourceError::Stalled {
                        program: self.program.clone(),
                        secs: w.secs,
                    },
                ));
            }
        }
        // A dump killed by our own signal handler ends its output early.
        if cancel::is_cancelled() {
            return Err(cancel::cancelled_error());
        }
        Ok(n)
    }
}

impl Drop for ChildStream {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            cancel::unregister_child(c.id());
        }
    }
}

/// Runs `program --version` and returns its first line.
pub fn version_of(program: &std::path::Path) -> Option<String> {
    let out = Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .map(|l| l.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut c = Command::new("sh");
        c.args(["-c", script]);
        c
    }

    #[test]
    fn a_child_waited_on_without_a_byte_is_stopped() {
        let mut child = ChildStream::spawn_with_stall(sh("echo start; exec sleep 30"), 1).unwrap();
        let started = Instant::now();
        let mut out = Vec::new();
        let e = child.read_to_end(&mut out).unwrap_err();
        assert!(e.to_string().contains("wrote nothing for 1 s"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(20));
        assert!(matches!(
            child.finish(),
            Err(SourceError::Stalled { secs: 1, .. })
        ));
    }

    #[test]
    fn a_child_that_coffer_is_not_reading_is_not_blamed() {
        // The child has written all it has (the pipe holds it); coffer
        // reads a little, then stops reading for longer than the limit, as
        // it does while a slow store catches up. Not the child's stall.
        let mut child = ChildStream::spawn_with_stall(sh("head -c 20000 /dev/zero"), 1).unwrap();
        let mut buf = [0u8; 100];
        child.read_exact(&mut buf).unwrap();
        std::thread::sleep(Duration::from_millis(2500));
        let mut rest = Vec::new();
        child.read_to_end(&mut rest).unwrap();
        assert_eq!(rest.len(), 20000 - 100);
        child.finish().unwrap();
    }
}
