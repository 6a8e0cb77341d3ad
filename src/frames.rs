//! Independent zstd frames, compressed and decompressed on every core.
//!
//! One zstd frame can only be decompressed from its start, on one thread, so
//! a restore of a single-frame archive runs at one core's speed whatever the
//! machine. A backup therefore cuts its tar stream into pieces of a fixed
//! size and compresses each as a frame of its own (docs/FORMAT.md §3). The
//! frames are one valid zstd stream, so `zstd -d` reads them as it reads any
//! other; coffer finds each frame's end with libzstd and decompresses several
//! at once. The pieces cost nothing measurable in ratio at 2 MiB (zstd -3's
//! window is 2 MiB anyway).
//!
//! The header records the piece size, and the reader holds every frame to it:
//! no frame may hold more, only the last may hold less, and a frame must be
//! a zstd frame (no skippable ones) that fits in the bound of its size. What
//! a frame may do to memory is thereby bounded before it is decompressed.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Bytes of tar per frame in what coffer writes.
pub const FRAME_SIZE: usize = 2 << 20;
/// The range a header may declare. The upper end, with [`BUDGET_BYTES`],
/// bounds what a reader holds whatever a (forgeable) header says.
pub const MIN_FRAME_SIZE: usize = 64 << 10;
pub const MAX_FRAME_SIZE: usize = 4 << 20;

/// More workers than this buy little (the rest of the pipeline is one
/// thread) and cost memory: each holds a frame in and a frame out.
const MAX_WORKERS: usize = 8;
/// What the frame buffers of one reader or writer may hold together,
/// whatever the frame size and the core count. Each frame in flight holds
/// two (its input and its output); besides those there are at most four
/// more: the frame being handed out, the one being cut, and the spares they
/// leave. At [`MAX_FRAME_SIZE`] that allows two frames in flight (each
/// buffer a frame's size, plus zstd's bound on incompressible input, under
/// 0.5 %); at coffer's 2 MiB, up to eight.
const BUDGET_BYTES: usize = 48 << 20;
/// Bytes read from the compressed stream at a time while looking for a
/// frame's end.
const READ_SIZE: usize = 256 << 10;
/// The magic number that opens every zstd frame (RFC 8878 §3.1.1).
const MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// How many frames may be in flight: enough to keep every worker busy while
/// the oldest is handed on, within [`BUDGET_BYTES`], and never fewer than
/// two, so that a worker always has the next.
fn max_pending(workers: usize, frame_size: usize) -> usize {
    ((BUDGET_BYTES / frame_size.max(1)).saturating_sub(4) / 2).clamp(2, workers + 2)
}

/// Worker threads for this machine.
pub fn workers() -> usize {
    std::thread::available_parallelism()
        .map_or(1, std::num::NonZero::get)
        .clamp(1, MAX_WORKERS)
}

/// Whether a header's declared frame size is one coffer reads.
pub fn valid_size(size: u64) -> bool {
    (MIN_FRAME_SIZE as u64..=MAX_FRAME_SIZE as u64).contains(&size)
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

fn worker_lost() -> io::Error {
    io::Error::other("a zstd worker thread stopped")
}

/// Two buffers a job carries: its input, and one to write its output into.
/// Both come back with the result so that they are used again: a fresh
/// 2 MiB allocation per frame would fault in every page of it again.
type Buffers = (Vec<u8>, Vec<u8>);
type Reply = io::Result<Buffers>;

/// A fixed set of threads, each with its own zstd context, taking jobs in
/// the order they come. Each job answers on its own channel, so the caller
/// collects results in the order it submitted them.
struct Pool {
    jobs: Option<Sender<(Buffers, SyncSender<Reply>)>>,
    threads: Vec<JoinHandle<()>>,
}

impl Pool {
    fn new<S: Send + 'static>(
        name: &str,
        workers: usize,
        mut state: impl FnMut() -> io::Result<S>,
        work: fn(&mut S, Buffers) -> Reply,
    ) -> io::Result<Self> {
        let (tx, rx) = mpsc::channel::<(Buffers, SyncSender<Reply>)>();
        let rx = Arc::new(Mutex::new(rx));
        let mut threads = Vec::with_capacity(workers);
        for _ in 0..workers {
            let mut s = state()?;
            let rx = Arc::clone(&rx);
            // Named, so that per-thread CPU (perf, top -H) says what it is.
            let thread = std::thread::Builder::new()
                .name(name.to_owned())
                .spawn(move || loop {
                    let job = match rx.lock() {
                        Ok(guard) => guard.recv(),
                        Err(_) => return,
                    };
                    let Ok((buffers, reply)) = job else { return };
                    // The caller may have gone (an error elsewhere).
                    let _ = reply.send(work(&mut s, buffers));
                })?;
            threads.push(thread);
        }
        Ok(Pool {
            jobs: Some(tx),
            threads,
        })
    }

    fn submit(&self, buffers: Buffers) -> Receiver<Reply> {
        let (tx, rx) = mpsc::sync_channel(1);
        if let Some(jobs) = &self.jobs {
            // If every worker is gone, `rx` reports it when read.
            let _ = jobs.send((buffers, tx));
        }
        rx
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.jobs = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn collect(rx: &Receiver<Reply>) -> Reply {
    rx.recv().map_err(|_| worker_lost())?
}

/// Compresses what is written to it, a frame per `frame_size` bytes, and
/// writes the frames to `inner` in order. Call [`FrameWriter::finish`].
pub struct FrameWriter<W: Write> {
    inner: W,
    pool: Pool,
    frame_size: usize,
    buf: Vec<u8>,
    pending: VecDeque<Receiver<Reply>>,
    max_pending: usize,
    spare: Vec<Vec<u8>>,
    frames: u64,
}

impl<W: Write> FrameWriter<W> {
    pub fn new(inner: W, level: i32, frame_size: usize, workers: usize) -> io::Result<Self> {
        let workers = workers.max(1);
        let pool = Pool::new(
            "zstd-compress",
            workers,
            || {
                let mut c = zstd::bulk::Compressor::new(level)?;
                c.set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(true))?;
                c.set_parameter(zstd::zstd_safe::CParameter::ContentSizeFlag(true))?;
                Ok(c)
            },
            |c: &mut zstd::bulk::Compressor<'static>, (input, mut out)| {
                out.clear();
                out.reserve_exact(zstd::zstd_safe::compress_bound(input.len()));
                c.compress_to_buffer(&input, &mut out)?;
                Ok((input, out))
            },
        )?;
        Ok(FrameWriter {
            inner,
            pool,
            frame_size,
            buf: Vec::with_capacity(frame_size),
            pending: VecDeque::new(),
            max_pending: max_pending(workers, frame_size),
            spare: Vec::new(),
            frames: 0,
        })
    }

    fn emit(&mut self, reply: Reply) -> io::Result<()> {
        let (input, out) = reply?;
        self.inner.write_all(&out)?;
        self.spare.push(input);
        self.spare.push(out);
        Ok(())
    }

    fn submit(&mut self) -> io::Result<()> {
        while self.pending.len() >= self.max_pending {
            self.write_oldest()?;
        }
        let next = self
            .spare
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(self.frame_size));
        let input = std::mem::replace(&mut self.buf, next);
        self.buf.clear();
        let out = self.spare.pop().unwrap_or_default();
        self.pending.push_back(self.pool.submit((input, out)));
        self.frames += 1;
        // Pass on what is done without waiting for what is not.
        loop {
            let reply = match self.pending.front().map(Receiver::try_recv) {
                Some(Ok(reply)) => reply,
                Some(Err(TryRecvError::Disconnected)) => return Err(worker_lost()),
                Some(Err(TryRecvError::Empty)) | None => return Ok(()),
            };
            self.pending.pop_front();
            self.emit(reply)?;
        }
    }

    fn write_oldest(&mut self) -> io::Result<()> {
        if let Some(rx) = self.pending.pop_front() {
            let reply = collect(&rx);
            self.emit(reply)?;
        }
        Ok(())
    }

    /// Compresses what is left as the last frame (an empty archive still
    /// gets one), writes every frame, and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        if !self.buf.is_empty() || self.frames == 0 {
            self.submit()?;
        }
        while !self.pending.is_empty() {
            self.write_oldest()?;
        }
        self.inner.flush()?;
        let FrameWriter { inner, .. } = self;
        Ok(inner)
    }
}

impl<W: Write> Write for FrameWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = (self.frame_size - self.buf.len()).min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == self.frame_size {
            self.submit()?;
        }
        Ok(n)
    }

    /// Writes out the frames already cut. A partial frame stays: cutting it
    /// early would make a short frame that is not the last.
    fn flush(&mut self) -> io::Result<()> {
        while !self.pending.is_empty() {
            self.write_oldest()?;
        }
        self.inner.flush()
    }
}

/// Reads the frames [`FrameWriter`] wrote, several at once, and returns
/// their content in order.
pub struct FrameReader<R: Read> {
    inner: R,
    pool: Pool,
    frame_size: usize,
    /// The most compressed bytes one frame of `frame_size` can take.
    max_compressed: usize,
    /// Compressed bytes read but not yet handed to a worker.
    inbuf: Vec<u8>,
    eof: bool,
    pending: VecDeque<Receiver<Reply>>,
    max_pending: usize,
    current: Vec<u8>,
    pos: usize,
    /// A frame held less than `frame_size`: it must have been the last.
    short: bool,
    /// Frames handed out, for messages.
    frames: u64,
    spare: Vec<Vec<u8>>,
}

impl<R: Read> FrameReader<R> {
    pub fn new(inner: R, frame_size: usize, workers: usize) -> io::Result<Self> {
        if !valid_size(frame_size as u64) {
            return Err(invalid(format!(
                "zstd frames of {frame_size} bytes (coffer reads {MIN_FRAME_SIZE} to {MAX_FRAME_SIZE})"
            )));
        }
        let workers = workers.max(1);
        let pool = Pool::new(
            "zstd-decompress",
            workers,
            || {
                let mut d = zstd::bulk::Decompressor::new()?;
                // A frame's window cannot exceed what it holds, and what it
                // holds is bounded; refuse a header that claims more.
                d.set_parameter(zstd::zstd_safe::DParameter::WindowLogMax(24))?;
                Ok((d, frame_size))
            },
            |(d, frame_size): &mut (zstd::bulk::Decompressor<'static>, usize), (input, mut out)| {
                let too_big = |n: u64| {
                    invalid(format!(
                        "a zstd frame holds {n} bytes, the header says at most {frame_size}"
                    ))
                };
                // The frame's own header says how much it holds (coffer
                // always writes it); more than declared is refused unread.
                if let Ok(Some(n)) = zstd::zstd_safe::get_frame_content_size(&input) {
                    if n > *frame_size as u64 {
                        return Err(too_big(n));
                    }
                }
                out.clear();
                out.reserve_exact(*frame_size);
                d.decompress_to_buffer(&input, &mut out).map_err(|e| {
                    invalid(format!(
                        "a zstd frame does not decompress into the {frame_size} bytes the header allows: {e}"
                    ))
                })?;
                if out.len() > *frame_size {
                    return Err(too_big(out.len() as u64));
                }
                Ok((input, out))
            },
        )?;
        Ok(FrameReader {
            inner,
            pool,
            frame_size,
            max_compressed: zstd::zstd_safe::compress_bound(frame_size) + 64,
            inbuf: Vec::with_capacity(2 * READ_SIZE),
            eof: false,
            pending: VecDeque::new(),
            max_pending: max_pending(workers, frame_size),
            current: Vec::new(),
            pos: 0,
            short: false,
            frames: 0,
            spare: Vec::new(),
        })
    }

    /// The next whole frame's compressed bytes, or `None` at the end.
    fn next_frame(&mut self) -> io::Result<Option<Vec<u8>>> {
        loop {
            if !self.inbuf.is_empty() {
                let at = self.frames + self.pending.len() as u64;
                if self.inbuf.len() >= MAGIC.len() && self.inbuf[..MAGIC.len()] != MAGIC {
                    return Err(invalid(format!("zstd frame {at}: not a zstd frame")));
                }
                if let Ok(n) = zstd::zstd_safe::find_frame_compressed_size(&self.inbuf) {
                    if n > self.max_compressed {
                        return Err(invalid(format!(
                            "zstd frame {at} takes {n} bytes, more than a frame of {} can",
                            self.frame_size
                        )));
                    }
                    let mut frame = self.spare.pop().unwrap_or_default();
                    frame.clear();
                    frame.extend_from_slice(&self.inbuf[..n]);
                    self.inbuf.drain(..n);
                    return Ok(Some(frame));
                }
                if self.eof {
                    return Err(invalid(format!(
                        "zstd frame {at} is cut short or damaged ({} bytes left)",
                        self.inbuf.len()
                    )));
                }
                if self.inbuf.len() > self.max_compressed {
                    return Err(invalid(format!(
                        "zstd frame {at} does not end within {} bytes",
                        self.max_compressed
                    )));
                }
            } else if self.eof {
                return Ok(None);
            }
            let start = self.inbuf.len();
            self.inbuf.resize(start + READ_SIZE, 0);
            let n = loop {
                match self.inner.read(&mut self.inbuf[start..]) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    other => break other,
                }
            };
            let n = match n {
                Ok(n) => n,
                Err(e) => {
                    self.inbuf.truncate(start);
                    return Err(e);
                }
            };
            self.inbuf.truncate(start + n);
            self.eof = n == 0;
        }
    }

    fn fill(&mut self) -> io::Result<()> {
        while self.pending.len() < self.max_pending {
            let Some(frame) = self.next_frame()? else {
                break;
            };
            let out = self.spare.pop().unwrap_or_default();
            self.pending.push_back(self.pool.submit((frame, out)));
        }
        Ok(())
    }
}

impl<R: Read> Read for FrameReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.current.len() {
            self.fill()?;
            let Some(rx) = self.pending.pop_front() else {
                return Ok(0);
            };
            let (input, content) = collect(&rx)?;
            let at = self.frames;
            self.frames += 1;
            if self.short {
                return Err(invalid(format!(
                    "zstd frame {at} follows a frame shorter than {} bytes, which must be the last",
                    self.frame_size
                )));
            }
            self.short = content.len() < self.frame_size;
            self.spare.push(input);
            let done = std::mem::replace(&mut self.current, content);
            self.spare.push(done);
            self.pos = 0;
        }
        let n = out.len().min(self.current.len() - self.pos);
        out[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize) -> Vec<u8> {
        // Compressible but not trivially: a counter in text.
        let mut v = Vec::with_capacity(len + 16);
        let mut i = 0u64;
        while v.len() < len {
            v.extend_from_slice(format!("row {i} value {}\n", i * 7919 % 1000).as_bytes());
            i += 1;
        }
        v.truncate(len);
        v
    }

    fn frames(content: &[u8], frame_size: usize, workers: usize) -> Vec<u8> {
        let mut w = FrameWriter::new(Vec::new(), 3, frame_size, workers).unwrap();
        // Odd write sizes, to cross frame boundaries mid-write.
        for piece in content.chunks(12_345) {
            w.write_all(piece).unwrap();
        }
        w.finish().unwrap()
    }

    fn read_all(compressed: &[u8], frame_size: usize, workers: usize) -> io::Result<Vec<u8>> {
        let mut r = FrameReader::new(compressed, frame_size, workers)?;
        let mut out = Vec::new();
        r.read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn round_trips_and_plain_zstd_reads_it_too() {
        for len in [
            0,
            1,
            MIN_FRAME_SIZE - 1,
            MIN_FRAME_SIZE,
            5 * MIN_FRAME_SIZE + 17,
        ] {
            let content = data(len);
            for workers in [1, 3] {
                let z = frames(&content, MIN_FRAME_SIZE, workers);
                assert_eq!(read_all(&z, MIN_FRAME_SIZE, workers).unwrap(), content);
                assert_eq!(zstd::decode_all(&z[..]).unwrap(), content, "len {len}");
            }
        }
    }

    #[test]
    fn frames_are_cut_at_the_declared_size() {
        let content = data(3 * MIN_FRAME_SIZE + 10);
        let z = frames(&content, MIN_FRAME_SIZE, 2);
        let mut sizes = Vec::new();
        let mut rest = &z[..];
        while !rest.is_empty() {
            let n = zstd::zstd_safe::find_frame_compressed_size(rest).unwrap();
            sizes.push(zstd::decode_all(&rest[..n]).unwrap().len());
            rest = &rest[n..];
        }
        assert_eq!(sizes, [MIN_FRAME_SIZE, MIN_FRAME_SIZE, MIN_FRAME_SIZE, 10]);
    }

    #[test]
    fn a_frame_larger_than_declared_is_refused() {
        let content = data(2 * MIN_FRAME_SIZE);
        let z = frames(&content, 2 * MIN_FRAME_SIZE, 1);
        let e = read_all(&z, MIN_FRAME_SIZE, 2).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn a_short_frame_must_be_the_last() {
        let short = frames(&data(100), MIN_FRAME_SIZE, 1);
        let full = frames(&data(MIN_FRAME_SIZE), MIN_FRAME_SIZE, 1);
        let mut z = short.clone();
        z.extend_from_slice(&full);
        let e = read_all(&z, MIN_FRAME_SIZE, 2).unwrap_err();
        assert!(e.to_string().contains("must be the last"), "{e}");
        let mut ok = full.clone();
        ok.extend_from_slice(&short);
        assert_eq!(
            read_all(&ok, MIN_FRAME_SIZE, 2).unwrap().len(),
            MIN_FRAME_SIZE + 100
        );
    }

    #[test]
    fn truncation_garbage_and_skippable_frames_are_refused() {
        let z = frames(&data(3 * MIN_FRAME_SIZE), MIN_FRAME_SIZE, 2);
        for cut in [1, 5, z.len() / 2, z.len() - 1] {
            assert!(
                read_all(&z[..cut], MIN_FRAME_SIZE, 2).is_err(),
                "cut at {cut}"
            );
        }
        let mut trailing = z.clone();
        trailing.extend_from_slice(b"junk");
        assert!(read_all(&trailing, MIN_FRAME_SIZE, 2).is_err());
        // A skippable frame (magic 0x184D2A50, 4 bytes of payload).
        let mut skippable = vec![0x50, 0x2a, 0x4d, 0x18, 4, 0, 0, 0, 1, 2, 3, 4];
        skippable.extend_from_slice(&z);
        assert!(read_all(&skippable, MIN_FRAME_SIZE, 2).is_err());
        let mut flipped = z.clone();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 1;
        assert!(read_all(&flipped, MIN_FRAME_SIZE, 2).is_err());
    }

    #[test]
    fn frames_in_flight_stay_within_their_budget() {
        for workers in 1..=MAX_WORKERS {
            for size in [MIN_FRAME_SIZE, FRAME_SIZE, MAX_FRAME_SIZE] {
                let n = max_pending(workers, size);
                assert!(n >= 2, "{workers} workers, {size}");
                assert!(n <= workers + 2);
                // Every buffer a frame's size, with zstd's bound on
                // incompressible input.
                let buffer = zstd::zstd_safe::compress_bound(size) + 64;
                assert!(
                    (2 * n + 4) * buffer <= BUDGET_BYTES + BUDGET_BYTES / 100,
                    "{workers} workers, {size}: {n} in flight"
                );
            }
        }
        // Two cores, coffer's own frames: every worker busy, and one spare.
        assert_eq!(max_pending(2, FRAME_SIZE), 4);
        assert_eq!(max_pending(8, MAX_FRAME_SIZE), 4);
    }

    #[test]
    fn sizes_outside_the_range_are_refused() {
        assert!(FrameReader::new(&b""[..], MIN_FRAME_SIZE - 1, 1).is_err());
        assert!(FrameReader::new(&b""[..], MAX_FRAME_SIZE + 1, 1).is_err());
        assert!(valid_size(FRAME_SIZE as u64));
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(32))]
            #[test]
            fn any_bytes_read_as_frames_fail_or_stay_bounded(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
                // Whatever the input, the reader ends (error or not) and never
                // returns more than the frames it was given could hold.
                let mut r = FrameReader::new(&bytes[..], MIN_FRAME_SIZE, 2).unwrap();
                let mut out = Vec::new();
                if r.read_to_end(&mut out).is_ok() {
                    prop_assert!(out.len() <= MIN_FRAME_SIZE * (bytes.len() / 9 + 1));
                }
            }

            #[test]
            fn writes_of_any_shape_round_trip(len in 0usize..300_000, piece in 1usize..70_000) {
                let content = data(len);
                let mut w = FrameWriter::new(Vec::new(), 1, MIN_FRAME_SIZE, 2).unwrap();
                for p in content.chunks(piece) {
                    w.write_all(p).unwrap();
                }
                let z = w.finish().unwrap();
                prop_assert_eq!(read_all(&z, MIN_FRAME_SIZE, 2).unwrap(), content);
            }
        }
    }
}
