//! AES-256-GCM in the STREAM construction (Hoang, Reyhanitabar, Rogaway, Vizár),
//! as age uses ChaCha20-Poly1305: the payload is cut into fixed-size chunks, each
//! sealed with nonce = 88-bit big-endian chunk counter || 8-bit last-chunk flag.
//! Dropping, reordering, duplicating or truncating chunks changes some chunk's
//! nonce and therefore fails authentication.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce, Tag};
use zeroize::Zeroize;

use super::EnvelopeError;

pub const TAG_LEN: usize = 16;
/// 64 KiB: large enough that the per-chunk tag and call overhead vanish in the
/// noise, small enough to keep memory flat (see docs/PERFORMANCE.md).
pub const DEFAULT_CHUNK_SIZE: u32 = 64 * 1024;
pub const MIN_CHUNK_SIZE: u32 = 64;
pub const MAX_CHUNK_SIZE: u32 = 16 * 1024 * 1024;

/// The counter is 11 bytes; a file would need 2^88 chunks to wrap it.
const COUNTER_LIMIT: u128 = 1 << 88;

fn nonce(counter: u64, last: bool) -> Nonce<aes_gcm::aead::consts::U12> {
    let mut n = [0u8; 12];
    n[3..11].copy_from_slice(&counter.to_be_bytes());
    n[11] = u8::from(last);
    n.into()
}

fn cipher(key: &[u8; 32]) -> Aes256Gcm {
    Aes256Gcm::new(key.into())
}

/// Encrypts everything written to it; [`finish`](Self::finish) seals the final chunk.
pub struct StreamWriter<W: Write> {
    inner: Option<W>,
    cipher: Aes256Gcm,
    chunk_size: usize,
    buf: Vec<u8>,
    counter: u64,
}

impl<W: Write> StreamWriter<W> {
    pub(crate) fn new(inner: W, key: &[u8; 32], chunk_size: u32) -> Self {
        let chunk_size = chunk_size as usize;
        StreamWriter {
            inner: Some(inner),
            cipher: cipher(key),
            chunk_size,
            buf: Vec::with_capacity(chunk_size + TAG_LEN),
            counter: 0,
        }
    }

    fn flush_chunk(&mut self, last: bool) -> io::Result<()> {
        if u128::from(self.counter) >= COUNTER_LIMIT - 1 {
            return Err(EnvelopeError::CounterOverflow.into_io());
        }
        let tag = self
            .cipher
            .encrypt_in_place_detached(&nonce(self.counter, last), b"", &mut self.buf)
            .map_err(|_| io::Error::other("AES-GCM refused to encrypt a chunk"))?;
        self.buf.extend_from_slice(&tag);
        let inner = self
            .inner
            .as_mut()
            .ok_or_else(|| io::Error::other("stream already finished"))?;
        inner.write_all(&self.buf)?;
        // The plaintext was encrypted in place; nothing sensitive remains, but
        // clear anyway so a later bug cannot leak it.
        self.buf.zeroize();
        self.buf.clear();
        self.counter += 1;
        Ok(())
    }

    /// Seals the last (possibly short, possibly empty-if-only) chunk and returns
    /// the inner writer, flushed.
    pub fn finish(mut self) -> io::Result<W> {
        self.flush_chunk(true)?;
        let mut inner = self
            .inner
            .take()
            .ok_or_else(|| io::Error::other("stream already finished"))?;
        inner.flush()?;
        Ok(inner)
    }

    /// The number of plaintext bytes written so far.
    pub fn plaintext_len(&self) -> u64 {
        self.counter * self.chunk_size as u64 + self.buf.len() as u64
    }
}

impl<W: Write> Write for StreamWriter<W> {
    fn write(&mut self, mut data: &[u8]) -> io::Result<usize> {
        let total = data.len();
        while !data.is_empty() {
            // A full buffer is only sealed once more data arrives: until then it
            // might be the last chunk, whose nonce differs.
            if self.buf.len() == self.chunk_size {
                self.flush_chunk(false)?;
            }
            let take = (self.chunk_size - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
        }
        Ok(total)
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.inner.as_mut() {
            Some(w) => w.flush(),
            None => Ok(()),
        }
    }
}

impl<W: Write> Drop for StreamWriter<W> {
    fn drop(&mut self) {
        self.buf.zeroize();
    }
}

/// Decrypts and authenticates a STREAM payload. Plaintext is released one
/// authenticated chunk at a time; the end of the stream is only accepted after
/// a chunk flagged as last.
pub struct StreamReader<R: Read> {
    inner: R,
    cipher: Aes256Gcm,
    chunk_size: usize,
    /// Ciphertext, then plaintext after decryption; one byte of look-ahead
    /// beyond a full chunk tells whether the chunk is the last.
    buf: Vec<u8>,
    /// Valid plaintext is `buf[pos..end]`.
    pos: usize,
    end: usize,
    /// A look-ahead byte read past the current chunk, if any.
    carry: Option<u8>,
    counter: u64,
    /// Where the payload starts in the file, for error messages.
    payload_offset: u64,
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Reading,
    Done,
    Failed,
}

impl<R: Read> StreamReader<R> {
    pub(crate) fn new(inner: R, key: &[u8; 32], chunk_size: u32, payload_offset: u64) -> Self {
        let chunk_size = chunk_size as usize;
        StreamReader {
            inner,
            cipher: cipher(key),
            chunk_size,
            buf: vec![0u8; chunk_size + TAG_LEN + 1],
            pos: 0,
            end: 0,
            carry: None,
            counter: 0,
            payload_offset,
            state: State::Reading,
        }
    }

    fn chunk_offset(&self, index: u64) -> u64 {
        self.payload_offset + index * (self.chunk_size + TAG_LEN) as u64
    }

    /// Fills `buf` with up to one full chunk plus one look-ahead byte.
    fn fill(&mut self) -> io::Result<usize> {
        let mut n = 0;
        if let Some(b) = self.carry.take() {
            self.buf[0] = b;
            n = 1;
        }
        let want = self.chunk_size + TAG_LEN + 1;
        while n < want {
            match self.inner.read(&mut self.buf[n..want]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }

    fn decrypt(&self, data: &mut [u8], last: bool) -> bool {
        let split = data.len() - TAG_LEN;
        let (ct, tag) = data.split_at_mut(split);
        let tag = Tag::clone_from_slice(tag);
        self.cipher
            .decrypt_in_place_detached(&nonce(self.counter, last), b"", ct, &tag)
            .is_ok()
    }

    fn next_chunk(&mut self) -> io::Result<()> {
        if u128::from(self.counter) >= COUNTER_LIMIT - 1 {
            return Err(EnvelopeError::CounterOverflow.into_io());
        }
        let n = self.fill()?;
        let index = self.counter;
        let offset = self.chunk_offset(index);
        let full = self.chunk_size + TAG_LEN;
        if n < TAG_LEN {
            // Nothing, or less than a tag: the stream stopped before its final chunk.
            let err = match (index, n) {
                // "Ends after chunk 0" would name a chunk that is not there.
                (0, 0) => EnvelopeError::NoPayload { offset },
                (_, 0) => EnvelopeError::Truncated {
                    last_index: index - 1,
                    offset: self.chunk_offset(index - 1),
                },
                _ => EnvelopeError::TruncatedInChunk { index, offset },
            };
            return Err(err.into_io());
        }
        let last = n <= full;
        let len = n.min(full);
        if !last {
            self.carry = Some(self.buf[full]);
        }
        // GCM checks the tag before decrypting, so on failure the ciphertext is
        // intact and can be tried with the other flag to tell the user why.
        let mut chunk = std::mem::take(&mut self.buf);
        let ok = self.decrypt(&mut chunk[..len], last);
        let result = if ok {
            if last && len == TAG_LEN && index > 0 {
                Err(EnvelopeError::EmptyFinalChunk { index })
            } else {
                Ok(())
            }
        } else if self.decrypt(&mut chunk[..len], !last) {
            if last {
                Err(EnvelopeError::Truncated {
                    last_index: index,
                    offset,
                })
            } else {
                Err(EnvelopeError::TrailingData { index, offset })
            }
        } else {
            Err(EnvelopeError::BadChunk { index, offset })
        };
        self.buf = chunk;
        result.map_err(EnvelopeError::into_io)?;
        self.pos = 0;
        self.end = len - TAG_LEN;
        self.counter += 1;
        if last {
            self.state = State::Done;
        }
        Ok(())
    }
}

impl<R: Read> Read for StreamReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.pos < self.end {
                let n = (self.end - self.pos).min(out.len());
                out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            match self.state {
                State::Done => return Ok(0),
                State::Failed => {
                    return Err(io::Error::other("stream already failed authentication"))
                }
                State::Reading => {}
            }
            if let Err(e) = self.next_chunk() {
                self.state = State::Failed;
                self.buf.zeroize();
                return Err(e);
            }
        }
    }
}

/// Reads a file from a position on, with positioned reads: the file's own
/// cursor is left alone, so several readers can share it.
pub(crate) struct At<'f> {
    pub file: &'f File,
    pub pos: u64,
}

impl Read for At<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Bytes a worker of [`authenticate_file`] reads at once, at most (always
/// at least one chunk).
const CHECK_BATCH: usize = 1 << 20;
/// What the workers of [`authenticate_file`] may hold together.
const CHECK_BUDGET: usize = 16 << 20;

/// Authenticates the whole payload of a sealed file that nothing else
/// writes (a private copy), its chunks split between `workers` threads:
/// STREAM chunks are independent once their count is known, and a file's
/// length gives it (every chunk but the last is full). Nothing decrypted
/// leaves this function. The verdict is the same as reading the payload
/// through a [`StreamReader`], which is what runs whenever the layout is
/// not that of a well-formed payload or a chunk fails, so that the error
/// names the same chunk and cause a sequential read would.
pub(crate) fn authenticate_file(
    file: &File,
    key: &[u8; 32],
    chunk_size: u32,
    payload_offset: u64,
    workers: usize,
) -> io::Result<()> {
    let sequential = || -> io::Result<()> {
        let at = At {
            file,
            pos: payload_offset,
        };
        let mut reader = StreamReader::new(at, key, chunk_size, payload_offset);
        io::copy(&mut reader, &mut io::sink()).map(drop)
    };
    let full_len = chunk_size as usize + TAG_LEN;
    let full = full_len as u64;
    let payload = file.metadata()?.len().saturating_sub(payload_offset);
    let chunks = payload.div_ceil(full);
    let last_len = payload - chunks.saturating_sub(1) * full;
    let well_formed = chunks > 0
        && u128::from(chunks) < COUNTER_LIMIT - 1
        && last_len >= TAG_LEN as u64
        && !(chunks > 1 && last_len == TAG_LEN as u64);
    let batch = (CHECK_BATCH / full_len).max(1);
    // Within CHECK_BUDGET whatever chunk size a (forgeable) header declares:
    // at 16 MiB chunks that is one worker, as the sequential reader holds.
    let workers = workers.min(CHECK_BUDGET / (batch * full_len));
    if !well_formed || workers < 2 || chunks < 2 {
        return sequential();
    }
    let failed = std::sync::atomic::AtomicBool::new(false);
    let per = chunks.div_ceil(workers as u64);
    let cipher = cipher(key);
    let check = |first: u64, end: u64| {
        let mut buf = vec![0u8; batch * full_len];
        let mut index = first;
        while index < end && !failed.load(std::sync::atomic::Ordering::Relaxed) {
            let start = index * full;
            // Whole chunks, but the payload's last one may be short.
            let len = usize::try_from(payload - start).map_or(buf.len(), |n| n.min(buf.len()));
            let count = len
                .div_ceil(full_len)
                .min(usize::try_from(end - index).unwrap_or(batch));
            let data = &mut buf[..len.min(count * full_len)];
            let ok = file.read_exact_at(data, payload_offset + start).is_ok()
                && data.chunks_mut(full_len).zip(index..).all(|(c, i)| {
                    let (ct, tag) = c.split_at_mut(c.len() - TAG_LEN);
                    let tag = Tag::clone_from_slice(tag);
                    cipher
                        .decrypt_in_place_detached(&nonce(i, i + 1 == chunks), b"", ct, &tag)
                        .is_ok()
                });
            if !ok {
                failed.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            index += count as u64;
        }
        buf.zeroize();
    };
    std::thread::scope(|s| {
        for w in 1..workers as u64 {
            let (first, end) = ((w * per).min(chunks), ((w + 1) * per).min(chunks));
            s.spawn(move || check(first, end));
        }
        check(0, per.min(chunks));
    });
    if failed.into_inner() {
        // A failure says no more than "some chunk": the sequential read
        // says which and why.
        sequential()?;
        return Err(io::Error::other(
            "a chunk failed to authenticate, then passed when read again",
        ));
    }
    Ok(())
}

impl<R: Read> Drop for StreamReader<R> {
    fn drop(&mut self) {
        self.buf.zeroize();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY: [u8; 32] = [7u8; 32];

    fn seal(data: &[u8], cs: u32) -> Vec<u8> {
        let mut w = StreamWriter::new(Vec::new(), &KEY, cs);
        w.write_all(data).unwrap();
        w.finish().unwrap()
    }

    fn open(ct: &[u8], cs: u32) -> Result<Vec<u8>, EnvelopeError> {
        let mut r = StreamReader::new(ct, &KEY, cs, 0);
        let mut out = Vec::new();
        match r.read_to_end(&mut out) {
            Ok(_) => Ok(out),
            Err(e) => Err(EnvelopeError::from_io(e).expect("envelope error")),
        }
    }

    #[test]
    fn empty_payload_is_one_empty_final_chunk() {
        let ct = seal(b"", 64);
        assert_eq!(ct.len(), TAG_LEN);
        assert_eq!(open(&ct, 64).unwrap(), b"");
    }

    #[test]
    fn exact_multiple_ends_with_full_final_chunk() {
        let data = vec![1u8; 128];
        let ct = seal(&data, 64);
        assert_eq!(ct.len(), 2 * (64 + TAG_LEN));
        assert_eq!(open(&ct, 64).unwrap(), data);
    }

    #[test]
    fn a_missing_payload_is_named_as_such_not_as_chunk_0() {
        let err = open(b"", 64).unwrap_err();
        assert!(matches!(err, EnvelopeError::NoPayload { offset: 0 }));
        let msg = err.to_string();
        assert!(msg.contains("no payload"), "{msg}");
        assert!(!msg.contains("after chunk"), "{msg}");
    }

    #[test]
    fn a_payload_cut_inside_a_chunk_names_that_chunk() {
        let ct = seal(&[3u8; 200], 64);
        assert!(matches!(
            open(&ct[..5], 64),
            Err(EnvelopeError::TruncatedInChunk { index: 0, .. })
        ));
        assert!(matches!(
            open(&ct[..64 + TAG_LEN + 5], 64),
            Err(EnvelopeError::TruncatedInChunk { index: 1, .. })
        ));
    }

    #[test]
    fn truncation_at_boundary_is_reported_as_truncation() {
        let ct = seal(&[3u8; 200], 64);
        let cut = &ct[..2 * (64 + TAG_LEN)];
        assert!(matches!(
            open(cut, 64),
            Err(EnvelopeError::Truncated { last_index: 1, .. })
        ));
    }

    #[test]
    fn appended_bytes_after_full_final_chunk_are_trailing_data() {
        let mut ct = seal(&[3u8; 128], 64);
        ct.extend_from_slice(b"x");
        assert!(matches!(
            open(&ct, 64),
            Err(EnvelopeError::TrailingData { index: 1, .. })
        ));
    }

    #[test]
    fn flipped_bit_names_the_chunk_and_offset() {
        let mut ct = seal(&[3u8; 300], 64);
        ct[2 * 80 + 5] ^= 1;
        match open(&ct, 64) {
            Err(EnvelopeError::BadChunk { index, offset }) => {
                assert_eq!(index, 2);
                assert_eq!(offset, 160);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn crafted_empty_final_chunk_after_data_is_rejected() {
        // A full non-final chunk followed by an empty final chunk is a second,
        // non-canonical encoding of the same plaintext; reject it.
        let c = cipher(&KEY);
        let mut first = vec![9u8; 64];
        let t0 = c
            .encrypt_in_place_detached(&nonce(0, false), b"", &mut first)
            .unwrap();
        first.extend_from_slice(&t0);
        let mut empty = Vec::new();
        let t1 = c
            .encrypt_in_place_detached(&nonce(1, true), b"", &mut empty)
            .unwrap();
        first.extend_from_slice(&t1);
        assert!(matches!(
            open(&first, 64),
            Err(EnvelopeError::EmptyFinalChunk { index: 1 })
        ));
    }

    #[test]
    fn reads_through_tiny_inner_reads() {
        struct OneByte<'a>(&'a [u8]);
        impl Read for OneByte<'_> {
            fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
                if self.0.is_empty() || out.is_empty() {
                    return Ok(0);
                }
                out[0] = self.0[0];
                self.0 = &self.0[1..];
                Ok(1)
            }
        }
        let data: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        let ct = seal(&data, 64);
        let mut r = StreamReader::new(OneByte(&ct), &KEY, 64, 0);
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, data);
    }

    /// What [`authenticate_file`] says of `ct`, stored after a prefix
    /// standing for the header, as text to compare.
    fn verdict_in_file(ct: &[u8], cs: u32, prefix: usize, workers: usize) -> String {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&vec![0xAA; prefix]).unwrap();
        f.write_all(ct).unwrap();
        match authenticate_file(&f, &KEY, cs, prefix as u64, workers) {
            Ok(()) => "ok".into(),
            Err(e) => EnvelopeError::from_io(e)
                .expect("envelope error")
                .to_string(),
        }
    }

    fn verdict_read(ct: &[u8], cs: u32, prefix: usize) -> String {
        let mut r = StreamReader::new(ct, &KEY, cs, prefix as u64);
        match io::copy(&mut r, &mut io::sink()) {
            Ok(_) => "ok".into(),
            Err(e) => EnvelopeError::from_io(e)
                .expect("envelope error")
                .to_string(),
        }
    }

    #[test]
    fn a_file_checked_on_several_threads_gets_the_verdict_of_one_read() {
        let data: Vec<u8> = (0..10_000u32)
            .map(|i| u8::try_from(i % 253).unwrap())
            .collect();
        let ct = seal(&data, 64);
        for workers in [1, 2, 3, 8] {
            assert_eq!(verdict_in_file(&ct, 64, 37, workers), "ok");
        }
        // A damaged chunk far from the first worker's range is still named.
        let mut bad = ct.clone();
        let at = ct.len() - 500;
        bad[at] ^= 1;
        let said = verdict_in_file(&bad, 64, 37, 2);
        assert_eq!(said, verdict_read(&bad, 64, 37));
        assert!(said.contains("chunk"), "{said}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn checking_a_file_in_parallel_agrees_with_reading_it(
            data in proptest::collection::vec(any::<u8>(), 0..3000),
            cs in 64u32..200,
            prefix in 0usize..50,
            workers in 1usize..5,
            damage in 0u8..4,
            at in any::<prop::sample::Index>(),
            extra in proptest::collection::vec(any::<u8>(), 1..300),
        ) {
            let mut ct = seal(&data, cs);
            match damage {
                1 => { let i = at.index(ct.len()); ct[i] ^= 0x10; }
                2 => { let i = at.index(ct.len()); ct.truncate(i); }
                3 => ct.extend_from_slice(&extra),
                _ => {}
            }
            prop_assert_eq!(
                verdict_in_file(&ct, cs, prefix, workers),
                verdict_read(&ct, cs, prefix)
            );
        }

        #[test]
        fn round_trip_any_size_and_write_pattern(
            data in proptest::collection::vec(any::<u8>(), 0..2000),
            cs in 64u32..300,
            writes in proptest::collection::vec(1usize..500, 1..20),
        ) {
            let mut w = StreamWriter::new(Vec::new(), &KEY, cs);
            let mut rest = &data[..];
            let mut i = 0;
            while !rest.is_empty() {
                let n = writes[i % writes.len()].min(rest.len());
                w.write_all(&rest[..n]).unwrap();
                rest = &rest[n..];
                i += 1;
            }
            let ct = w.finish().unwrap();
            let chunks = if data.is_empty() { 1 } else { data.len().div_ceil(cs as usize) };
            prop_assert_eq!(ct.len(), data.len() + chunks * TAG_LEN);
            prop_assert_eq!(open(&ct, cs).unwrap(), data);
        }

        #[test]
        fn any_truncation_or_extension_fails(
            data in proptest::collection::vec(any::<u8>(), 0..1000),
            cs in 64u32..200,
            cut in any::<prop::sample::Index>(),
            extra in proptest::collection::vec(any::<u8>(), 1..100),
        ) {
            let ct = seal(&data, cs);
            let at = cut.index(ct.len());
            prop_assert!(open(&ct[..at], cs).is_err());
            let mut longer = ct.clone();
            longer.extend_from_slice(&extra);
            prop_assert!(open(&longer, cs).is_err());
        }

        #[test]
        fn any_bit_flip_fails(
            data in proptest::collection::vec(any::<u8>(), 0..1000),
            cs in 64u32..200,
            at in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            let mut ct = seal(&data, cs);
            let i = at.index(ct.len());
            ct[i] ^= 1 << bit;
            prop_assert!(open(&ct, cs).is_err());
        }
    }
}
