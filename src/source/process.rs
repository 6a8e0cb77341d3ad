//! Running a dump program: its stdout streams into the archive; stderr is kept
//! (the last few KiB) for the error message; the exit status decides whether
//! the dump counts.

use std::io::{self, Read};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::SourceError;
use crate::cancel;

const STDERR_KEEP: usize = 8 * 1024;

/// How long a dump program may write nothing before it is stopped, in
/// seconds (0: never); the run sets it from `dump_stall_secs`.
static STALL_SECS: AtomicU64 = AtomicU64::new(0);

/// Sets how long a dump program may write nothing before it is stopped.
pub fn set_stall_limit(secs: u64) {
    STALL_SECS.store(secs, Ordering::Relaxed);
}

/// Watches a child's output: kills it once it has written nothing for the
/// stall limit, and says so.
struct Watchdog {
    read: Arc<AtomicU64>,
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
            read: Arc::new(AtomicU64::new(0)),
            fired: Arc::new(AtomicBool::new(false)),
            done: Arc::new(AtomicBool::new(false)),
            secs,
        };
        let (read, fired, done) = (
            Arc::clone(&w.read),
            Arc::clone(&w.fired),
            Arc::clone(&w.done),
        );
        std::thread::spawn(move || {
            let limit = Duration::from_secs(secs);
            let mut seen = read.load(Ordering::Relaxed);
            let mut since = Instant::now();
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200).min(limit));
                let now = read.load(Ordering::Relaxed);
                if now != seen {
                    seen = now;
                    since = Instant::now();
                } else if since.elapsed() >= limit {
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
    stdout: Option<ChildStdout>,
    stderr: Option<JoinHandle<Vec<u8>>>,
    watchdog: Option<Watchdog>,
}

impl ChildStream {
    pub fn spawn(mut cmd: Command) -> Result<Self, SourceError> {
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
        let watchdog = Watchdog::start(child.id(), STALL_SECS.load(Ordering::Relaxed));
        let stdout = child.stdout.take();
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
            w.read.fetch_add(n as u64 + 1, Ordering::Relaxed);
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
