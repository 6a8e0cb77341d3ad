//! Running a dump program: its stdout streams into the archive; stderr is kept
//! (the last few KiB) for the error message; the exit status decides whether
//! the dump counts.

use std::io::{self, Read};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::thread::JoinHandle;

use super::SourceError;
use crate::cancel;

const STDERR_KEEP: usize = 8 * 1024;

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
