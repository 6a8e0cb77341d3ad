//! Reading an object: streamed, paced (a server that trickles is cut
//! off), and checked against the length it announced.

use std::io::{self, Read};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;

use super::error::root_cause;
use super::Inner;

pub(super) struct S3Read {
    pub(super) inner: Arc<Inner>,
    pub(super) body: ByteStream,
    pub(super) cur: Bytes,
    pub(super) expected: Option<u64>,
    pub(super) read: u64,
    pub(super) key: String,
    pub(super) pace: Pace,
}

/// The least a body must deliver in each window of `timeout_secs`: a server
/// that trickles a byte now and then (never idle long enough for a
/// timeout) would otherwise hold a restore for weeks. As curl's
/// `--speed-limit` with `--speed-time`.
pub(super) const MIN_BYTES_PER_WINDOW: u64 = 64 << 10;

/// Counts only the time spent waiting on the server, not the reader's own:
/// a copy opened early and read later (a restore's fallback), or a reader
/// that pauses while it writes elsewhere, is not judged for that.
pub(super) struct Pace {
    pub(super) window: Duration,
    pub(super) waited: Duration,
    pub(super) bytes: u64,
}

impl Pace {
    pub(super) fn new(window: Duration) -> Self {
        Pace {
            window,
            waited: Duration::ZERO,
            bytes: 0,
        }
    }

    /// How long the next wait may take before the window is judged.
    pub(super) fn left(&self) -> Duration {
        self.window.saturating_sub(self.waited)
    }

    /// Counts a wait of `took` that brought `n` bytes; once the waits fill
    /// a window, fails if they brought too few.
    pub(super) fn got(&mut self, n: u64, took: Duration, key: &str) -> io::Result<()> {
        self.bytes += n;
        self.waited += took;
        if self.waited < self.window {
            return Ok(());
        }
        if self.bytes < MIN_BYTES_PER_WINDOW {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "{key}: the server sent {} bytes in {}s, less than {} KiB; giving up on it",
                    self.bytes,
                    self.window.as_secs(),
                    MIN_BYTES_PER_WINDOW >> 10
                ),
            ));
        }
        self.waited = Duration::ZERO;
        self.bytes = 0;
        Ok(())
    }
}

impl Read for S3Read {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.cur.is_empty() {
            let left = self.pace.left();
            let body = &mut self.body;
            let asked = std::time::Instant::now();
            // The timer is made inside the runtime, which drives it.
            let next = self
                .inner
                .rt
                .block_on(async { tokio::time::timeout(left, body.next()).await });
            let took = asked.elapsed();
            let Ok(next) = next else {
                // Nothing more within the window: judge it.
                self.pace.got(0, took, &self.key)?;
                continue;
            };
            match next {
                Some(Ok(b)) => {
                    self.pace.got(b.len() as u64, took, &self.key)?;
                    self.cur = b;
                }
                Some(Err(e)) => {
                    return Err(io::Error::other(format!(
                        "{}: {}",
                        self.key,
                        root_cause(&e)
                    )))
                }
                None => {
                    if let Some(n) = self.expected.filter(|&n| n != self.read) {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!("{}: the server sent {} of {n} bytes", self.key, self.read),
                        ));
                    }
                    return Ok(0);
                }
            }
        }
        let n = self.cur.len().min(buf.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        let _ = self.cur.split_to(n);
        self.read += n as u64;
        Ok(n)
    }
}
