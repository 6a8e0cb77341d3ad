//! Micro-benchmarks of the pipeline's stages, in memory: the STREAM cipher
//! (seal and open) at several chunk sizes, SHA-256, and the archive stage
//! (tar + zstd). A plain harness on std::time keeps the dependency tree
//! small; `cargo bench` runs it, `cargo bench -- quick` runs a shorter pass.
//! Throughput is printed, never asserted.
// Benchmark data generators: truncating casts of random numbers are intended.
#![allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]

use std::hint::black_box;
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use coffer::archive::{ArchiveWriter, Compression};
use coffer::envelope::{self, Metadata};
use coffer::manifest::Inner;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// A writer that only counts.
struct Count(u64);
impl Write for Count {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0 += b.len() as u64;
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Text that compresses like a SQL dump (about 4:1 with zstd -3).
fn sql_like(len: usize) -> Vec<u8> {
    let words = [
        "INSERT",
        "INTO",
        "orders",
        "VALUES",
        "pending",
        "shipped",
        "customer",
        "'2024-05-01",
        "12:00:00'",
        "{\"sku\":",
        "\"qty\":",
        "example.com",
        "refund",
        "note",
        "delivered",
    ];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut v = Vec::with_capacity(len + 64);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let w = words[(x % words.len() as u64) as usize];
        v.extend_from_slice(w.as_bytes());
        v.extend_from_slice(format!(",{} ", x % 100_000).as_bytes());
    }
    v.truncate(len);
    v
}

/// Runs `f` until `min` has passed (at least 3 times); prints the best MB/s.
fn bench(name: &str, bytes: usize, min: Duration, mut f: impl FnMut()) {
    let start = Instant::now();
    let mut best = Duration::MAX;
    let mut runs = 0;
    while runs < 3 || start.elapsed() < min {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed());
        runs += 1;
    }
    #[allow(clippy::cast_precision_loss)]
    let mbs = bytes as f64 / 1e6 / best.as_secs_f64();
    println!("{name:<44} {mbs:>9.0} MB/s  (best of {runs})");
}

fn main() {
    let quick = std::env::args().any(|a| a == "quick");
    let (size, min) = if quick {
        (16 << 20, Duration::from_millis(300))
    } else {
        (128 << 20, Duration::from_secs(3))
    };
    let (secret, public, _) = envelope::generate_age();
    let recipients =
        envelope::parse_recipients(public.trim(), &envelope::no_passphrase()).expect("recipient");
    let identity = envelope::parse_identities(
        &Zeroizing::new(secret.to_string()),
        "bench",
        &envelope::no_passphrase(),
    )
    .expect("identity");
    let random: Vec<u8> = {
        let mut x: u64 = 1;
        (0..size)
            .map(|_| {
                x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                (x >> 56) as u8
            })
            .collect()
    };

    println!("coffer micro-benchmarks, {} MiB per run", size >> 20);
    for chunk in [16 << 10, 64 << 10, 256 << 10, 1 << 20] {
        let mut sealed = Vec::new();
        bench(
            &format!("seal, {} KiB chunks", chunk >> 10),
            size,
            min,
            || {
                let mut w =
                    envelope::seal(&recipients, Metadata::default(), chunk, Count(0)).unwrap();
                for piece in random.chunks(256 << 10) {
                    w.write_all(piece).unwrap();
                }
                black_box(w.finish().unwrap().0);
            },
        );
        let mut w = envelope::seal(&recipients, Metadata::default(), chunk, &mut sealed).unwrap();
        w.write_all(&random).unwrap();
        w.finish().unwrap();
        let mut buf = vec![0u8; 256 << 10];
        bench(
            &format!("open, {} KiB chunks", chunk >> 10),
            size,
            min,
            || {
                let (_, mut r) =
                    envelope::open(std::slice::from_ref(&identity), sealed.as_slice()).unwrap();
                let mut n = 0;
                loop {
                    let k = r.read(&mut buf).unwrap();
                    if k == 0 {
                        break;
                    }
                    n += k;
                }
                black_box(n);
            },
        );
    }
    bench("SHA-256", size, min, || {
        black_box(Sha256::digest(&random));
    });
    bench("BLAKE3 (member digests)", size, min, || {
        black_box(blake3::hash(&random));
    });

    let text = sql_like(size);
    for (name, c) in [
        (
            "archive: tar + zstd -3 (2 MiB frames, all cores)",
            Compression::parse("zstd").unwrap(),
        ),
        (
            "archive: tar + gzip -6",
            Compression::parse("gzip").unwrap(),
        ),
        (
            "archive: tar, no compression",
            Compression::parse("none").unwrap(),
        ),
    ] {
        if quick && name.contains("gzip") {
            continue;
        }
        bench(name, size, min, || {
            let mut a = ArchiveWriter::new(Count(0), c, 0).unwrap();
            a.append_stream("mysql/bench.sql", &mut text.as_slice())
                .unwrap();
            let mut inner = Inner::new("bench", "bench", "", "", vec![]);
            black_box(a.finish(&mut inner).unwrap().0);
        });
    }

    frames(&text, size, min);
}

/// zstd -3 in 2 MiB frames at 1, 2, … workers: how compression and
/// decompression scale with the cores (the machine's count is the top).
fn frames(text: &[u8], size: usize, min: Duration) {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let mut workers = vec![1];
    while workers.last().is_some_and(|&w| w * 2 <= cores.min(8)) {
        workers.push(workers.last().copied().unwrap_or(1) * 2);
    }
    let frame = coffer::frames::FRAME_SIZE;
    for &n in &workers {
        let mut compressed = Vec::new();
        bench(
            &format!("zstd -3 frames, compress, {n} workers"),
            size,
            min,
            || {
                let mut w = coffer::frames::FrameWriter::new(Vec::new(), 3, frame, n).unwrap();
                w.write_all(text).unwrap();
                compressed = w.finish().unwrap();
            },
        );
        let mut buf = vec![0u8; 256 << 10];
        bench(
            &format!("zstd frames, decompress, {n} workers"),
            size,
            min,
            || {
                let mut r =
                    coffer::frames::FrameReader::new(compressed.as_slice(), frame, n).unwrap();
                let mut total = 0;
                loop {
                    let k = r.read(&mut buf).unwrap();
                    if k == 0 {
                        break;
                    }
                    total += k;
                }
                black_box(total);
            },
        );
    }
    let one = zstd::encode_all(text, 3).unwrap();
    bench("zstd one frame, decompress (streaming)", size, min, || {
        black_box(zstd::decode_all(one.as_slice()).unwrap().len());
    });
}
