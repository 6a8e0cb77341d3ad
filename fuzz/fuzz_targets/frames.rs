//! Reads arbitrary bytes as the zstd frames of a backup archive, as the
//! header of a backup declares them (coffer::frames). Every outcome must be
//! a clean error or content within the bounds the declared frame size sets,
//! never a panic, a hang, or memory past a few frames (docs/FORMAT.md,
//! section 3). Seed the corpus with concatenated zstd frames, e.g. a test
//! backup's compressed payload.
#![no_main]

use std::io::Read;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let size = coffer::frames::MIN_FRAME_SIZE;
    let Ok(mut r) = coffer::frames::FrameReader::new(data, size, 2) else {
        return;
    };
    let mut buf = vec![0u8; 64 << 10];
    let mut total = 0usize;
    while let Ok(n) = r.read(&mut buf) {
        if n == 0 {
            break;
        }
        total += n;
        // A zstd frame takes at least 9 bytes; each holds at most `size`.
        assert!(total <= size * (data.len() / 9 + 1));
    }
});
