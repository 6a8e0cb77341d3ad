//! Walks arbitrary bytes as a decrypted, decompressed backup archive: the
//! tar reader, member names, split parts, member lists and the inner
//! manifest are all parsed from what the archive says. Every outcome must be
//! a clean error or a walk that matched, never a panic or an allocation past
//! what the input itself holds (docs/FORMAT.md, section 5). Seed the corpus
//! with tar streams, e.g. `coffer restore --stdout` of a test backup.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let hash = coffer::manifest::HashKind::Blake3;
    let _ = coffer::pipeline::restore::walk::walk_archive(data, hash, |_, member| {
        let mut sink = [0u8; 4096];
        while let Ok(n) = member.read(&mut sink) {
            if n == 0 {
                break;
            }
        }
        Ok(())
    });
});
