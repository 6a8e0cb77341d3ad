//! Reading ahead on a thread of its own, so that what produces a stream runs
//! on one core while what consumes it runs on the others: a restore's AEAD
//! decryption ahead of decompression and the tar walk; a dump program's
//! output ahead of the archive, so that the dump never waits while coffer
//! hashes and hands a part to the compressors.

use std::io::{self, Read};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};

use zeroize::Zeroize;

/// Bytes handed over at a time, unless a caller says otherwise.
pub const PIECE: usize = 1 << 20;

type Piece = (Vec<u8>, usize);

/// Runs `consume` on a reader of `inner`, which a scoped thread reads up to
/// `depth` pieces ahead, each filled whole unless `inner` ends. An error
/// reading `inner` reaches `consume` where it would have read it. When
/// `consume` returns, the thread stops at its next piece. Fails only if the
/// thread cannot be started.
pub fn scoped<R: Read + Send, T>(
    inner: R,
    name: &str,
    depth: usize,
    consume: impl FnOnce(&mut dyn Read) -> T,
) -> io::Result<T> {
    std::thread::scope(|s| {
        let (mut reader, tx, spares) = channel(depth);
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn_scoped(s, move || produce(inner, PIECE, &tx, &spares))?;
        Ok(consume(&mut reader))
    })
}

/// A reader of `inner` that a thread of its own reads up to `depth` pieces
/// of `piece` bytes ahead, as [`scoped`] does. Dropping the reader leaves the thread to stop
/// at its next piece: its owner makes a read that blocks return (a dump
/// program is killed).
pub fn detached<R: Read + Send + 'static>(
    inner: R,
    name: &str,
    depth: usize,
    piece: usize,
) -> io::Result<Ahead> {
    let (reader, tx, spares) = channel(depth);
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || produce(inner, piece.max(1), &tx, &spares))?;
    Ok(reader)
}

type Channel = (Ahead, SyncSender<io::Result<Piece>>, Receiver<Vec<u8>>);

fn channel(depth: usize) -> Channel {
    let (tx, rx) = mpsc::sync_channel(depth.max(1));
    let (back, spares) = mpsc::channel();
    let reader = Ahead {
        rx,
        back,
        current: (Vec::new(), 0),
        pos: 0,
        ended: false,
    };
    (reader, tx, spares)
}

fn produce(
    mut inner: impl Read,
    piece: usize,
    tx: &SyncSender<io::Result<Piece>>,
    spares: &Receiver<Vec<u8>>,
) {
    loop {
        let mut buf = spares.try_recv().unwrap_or_else(|_| vec![0u8; piece]);
        let (n, failed) = fill(&mut inner, &mut buf);
        let mut pieces = Vec::with_capacity(2);
        if n > 0 {
            pieces.push(Ok((buf, n)));
        } else {
            buf.zeroize();
        }
        let end = match failed {
            Some(e) => Some(Err(e)),
            // The end, said: a thread that stops without it failed.
            None if n == 0 => Some(Ok((Vec::new(), 0))),
            None => None,
        };
        let last = end.is_some();
        pieces.extend(end);
        let mut gone = false;
        for piece in pieces {
            if gone {
                // The consumer has stopped: what is left is only wiped.
                if let Ok((mut buf, _)) = piece {
                    buf.zeroize();
                }
            } else if let Err(mpsc::SendError(Ok((mut buf, _)))) = tx.send(piece) {
                buf.zeroize();
                gone = true;
            }
        }
        if last || gone {
            break;
        }
    }
    for mut b in spares.try_iter() {
        b.zeroize();
    }
}

/// Reads until `buf` is full or `inner` ends or fails (a piece per read of
/// a pipe would cost a hand-over per write of the program at its other
/// end). Returns what it read, and the error that stopped it, if any.
fn fill(inner: &mut impl Read, buf: &mut [u8]) -> (usize, Option<io::Error>) {
    let mut n = 0;
    while n < buf.len() {
        match inner.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (n, Some(e)),
        }
    }
    (n, None)
}

/// The consumer's side: pieces in order, each given back once read.
pub struct Ahead {
    rx: Receiver<io::Result<Piece>>,
    back: Sender<Vec<u8>>,
    current: Piece,
    pos: usize,
    /// The thread has said that `inner` ended.
    ended: bool,
}

impl Read for Ahead {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.current.1 {
            if self.ended {
                return Ok(0);
            }
            let next = match self.rx.recv() {
                Err(_) => return Err(io::Error::other("the reading thread stopped")),
                Ok(piece) => piece?,
            };
            self.ended = next.1 == 0;
            let (done, _) = std::mem::replace(&mut self.current, next);
            self.pos = 0;
            if !done.is_empty() {
                // The thread may have stopped: then the piece is wiped here.
                if let Err(mpsc::SendError(mut done)) = self.back.send(done) {
                    done.zeroize();
                }
            }
        }
        let (buf, len) = &self.current;
        let n = (len - self.pos).min(out.len());
        out[..n].copy_from_slice(&buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl Drop for Ahead {
    fn drop(&mut self) {
        self.current.0.zeroize();
        for (mut buf, _) in self.rx.try_iter().flatten() {
            buf.zeroize();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data() -> Vec<u8> {
        (0..3 * PIECE + 12345)
            .map(|i| u8::try_from(i % 251).unwrap())
            .collect()
    }

    #[test]
    fn hands_on_everything_in_order_then_the_end() {
        let data = data();
        let mut got = Vec::new();
        let n = scoped(&data[..], "t", 4, |r| r.read_to_end(&mut got))
            .unwrap()
            .unwrap();
        assert_eq!(n, data.len());
        assert_eq!(got, data);
        let mut got = Vec::new();
        detached(io::Cursor::new(data.clone()), "t", 2, 1000)
            .unwrap()
            .read_to_end(&mut got)
            .unwrap();
        assert_eq!(got, data);
    }

    struct Failing(usize);
    impl Read for Failing {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0 == 0 {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "bad chunk 7"));
            }
            let n = buf.len().min(self.0).min(1000);
            buf[..n].fill(1);
            self.0 -= n;
            Ok(n)
        }
    }

    #[test]
    fn an_error_arrives_where_it_happened() {
        let mut got = Vec::new();
        let e = scoped(Failing(PIECE + 10), "t", 4, |r| r.read_to_end(&mut got))
            .unwrap()
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert_eq!(e.to_string(), "bad chunk 7");
        assert_eq!(got.len(), PIECE + 10, "what came before the error is read");

        let mut got = Vec::new();
        let e = detached(Failing(5000), "t", 4, PIECE)
            .unwrap()
            .read_to_end(&mut got)
            .unwrap_err();
        assert_eq!(e.to_string(), "bad chunk 7");
        assert_eq!(got.len(), 5000);
    }

    #[test]
    fn a_consumer_that_stops_early_stops_the_thread() {
        let mut first = [0u8; 10];
        scoped(io::repeat(7), "t", 2, |r| r.read_exact(&mut first))
            .unwrap()
            .unwrap();
        assert_eq!(first, [7u8; 10]);
    }

    #[test]
    fn a_thread_that_dies_is_not_an_end() {
        struct Panics;
        impl Read for Panics {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                panic!("reader bug")
            }
        }
        let mut got = Vec::new();
        let e = detached(Panics, "t", 2, PIECE)
            .unwrap()
            .read_to_end(&mut got)
            .unwrap_err();
        assert_eq!(e.to_string(), "the reading thread stopped");
    }
}
