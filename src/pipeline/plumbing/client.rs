//! A database client that coffer feeds a dump through its stdin (`mariadb`,
//! `pg_restore`), for `restore --into-db` and `verify --restore-test`.
//!
//! Its stderr is drained on a thread of its own while the dump is written: a
//! client that says a lot (an error that echoes a long statement) would
//! otherwise fill the pipe and block there, while coffer blocks writing to
//! its stdin. Only the head and the tail of what it says are kept, so that a
//! hostile dump cannot grow coffer's memory through it; the head holds the
//! first error (the clients stop there), the tail how the client ended.

use std::io::{self, Read};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::thread::JoinHandle;

use crate::cancel;

/// Bytes kept of each end of the client's error output.
const KEEP: usize = 4 * 1024;
/// Characters of the client's error line shown in a message.
const EXCERPT: usize = 400;

/// A running client, killed if dropped before [`finish`](Self::finish).
pub struct LoadClient {
    child: Child,
    stdin: Option<ChildStdin>,
    stderr: Option<JoinHandle<Said>>,
}

impl LoadClient {
    /// Starts `c` with its stdin piped from coffer; stdout is discarded.
    /// A signal (SIGINT, SIGTERM) terminates it, which ends the load.
    pub fn spawn(mut c: Command) -> io::Result<Self> {
        let mut child = c
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        cancel::register_child(child.id());
        let stdin = child.stdin.take();
        let stderr = child.stderr.take();
        let mut client = LoadClient {
            child,
            stdin,
            stderr: None,
        };
        // A signal that came before the registration terminated nothing.
        if cancel::is_cancelled() {
            return Err(cancel::cancelled_error());
        }
        if let Some(e) = stderr {
            let drain = std::thread::Builder::new()
                .name("client-stderr".into())
                .spawn(move || Said::read(e))?;
            client.stderr = Some(drain);
        }
        Ok(client)
    }

    /// Where the dump goes; `None` once the client is gone.
    pub fn stdin(&mut self) -> Option<&mut ChildStdin> {
        self.stdin.as_mut()
    }

    /// Ends the dump and waits for the client; if it failed, the line of
    /// its error output that says why, cut short.
    pub fn finish(mut self) -> Result<(), String> {
        drop(self.stdin.take());
        let status = self.child.wait().map_err(|e| e.to_string());
        cancel::unregister_child(self.child.id());
        let said = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        match status? {
            s if s.success() => Ok(()),
            s => Err(said
                .excerpt()
                .unwrap_or_else(|| format!("the client ended with {s}"))),
        }
    }
}

impl Drop for LoadClient {
    fn drop(&mut self) {
        drop(self.stdin.take());
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        cancel::unregister_child(self.child.id());
    }
}

/// The head and the tail of a client's error output.
#[derive(Default)]
struct Said {
    head: Vec<u8>,
    tail: Vec<u8>,
    /// Bytes between the head and the tail were dropped.
    gap: bool,
}

impl Said {
    fn read(mut from: impl Read) -> Self {
        let mut said = Said::default();
        let mut buf = [0u8; 8192];
        loop {
            match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => said.push(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        said
    }

    fn push(&mut self, mut data: &[u8]) {
        let room = KEEP - self.head.len();
        if room > 0 {
            let n = room.min(data.len());
            self.head.extend_from_slice(&data[..n]);
            data = &data[n..];
        }
        self.tail.extend_from_slice(data);
        // Trimmed in batches, not on every read.
        if self.tail.len() > 2 * KEEP {
            self.tail.drain(..self.tail.len() - KEEP);
            self.gap = true;
        }
    }

    /// The first error line (the clients stop at the first error; the last
    /// line of pg_restore's is the failed statement, `Command was: …`),
    /// else the last line; control characters blanked, cut short.
    fn excerpt(&self) -> Option<String> {
        let mut text = String::from_utf8_lossy(&self.head).into_owned();
        let tail = if self.tail.len() > KEEP {
            &self.tail[self.tail.len() - KEEP..]
        } else {
            &self.tail[..]
        };
        if self.gap || self.tail.len() > KEEP {
            // What follows the gap starts in the middle of some line.
            text.push('\n');
        }
        text.push_str(&String::from_utf8_lossy(tail));
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        let line = ["ERROR", "error:"]
            .iter()
            .find_map(|p| lines.iter().find(|l| l.contains(p)))
            .or(lines.last())?;
        Some(one_line(line))
    }
}

/// `line` with control characters blanked, at most [`EXCERPT`] characters.
fn one_line(line: &str) -> String {
    let mut out: String = line
        .chars()
        .take(EXCERPT)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if line.chars().nth(EXCERPT).is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn said(data: &[u8]) -> Said {
        Said::read(data)
    }

    #[test]
    fn a_flood_of_error_output_keeps_a_short_error_line() {
        let mut flood = b"ERROR 1064 (42000) at line 1: near 'SELEC ".to_vec();
        flood.extend(std::iter::repeat_n(b'x', 5 << 20));
        flood.extend_from_slice(b"' at line 1\n");
        let s = said(&flood);
        assert!(s.head.len() + s.tail.len() <= 3 * KEEP);
        let line = s.excerpt().unwrap();
        assert!(line.starts_with("ERROR 1064 (42000) at line 1"), "{line}");
        assert!(line.chars().count() <= EXCERPT + 1, "{}", line.len());
        assert!(!line.contains('\n'));
    }

    #[test]
    fn the_error_line_is_preferred_to_the_last_and_controls_are_blanked() {
        let s = said(
            b"pg_restore: warning: x\npg_restore: error: ERROR:  boom\x1b[2J\nCommand was: COPY\n",
        );
        assert_eq!(s.excerpt().unwrap(), "pg_restore: error: ERROR:  boom [2J");
        let s = said(b"first\nlast words\n\n");
        assert_eq!(s.excerpt().unwrap(), "last words");
        assert!(said(b"").excerpt().is_none());
    }

    #[test]
    fn an_error_after_a_long_flood_is_found_in_the_tail() {
        let mut flood = "warning: chatter\n".repeat(10_000).into_bytes();
        flood.extend_from_slice(b"ERROR 2013: lost connection\n");
        let s = said(&flood);
        assert!(s.gap);
        assert_eq!(s.excerpt().unwrap(), "ERROR 2013: lost connection");
    }

    #[test]
    fn a_client_that_says_more_than_a_pipe_holds_does_not_block_its_feeder() {
        use std::io::Write;
        // Echoes every byte of its input to stderr, as a chatty client might.
        let mut c = Command::new("sh");
        c.args(["-c", "cat >&2; exit 1"]);
        let mut client = LoadClient::spawn(c).unwrap();
        let chunk = vec![b'y'; 1 << 20];
        let stdin = client.stdin().unwrap();
        for _ in 0..8 {
            stdin.write_all(&chunk).unwrap();
        }
        let e = client.finish().unwrap_err();
        assert!(e.chars().count() <= EXCERPT + 1, "{}", e.len());
    }
}
