//! Opens arbitrary bytes with a fixed age identity: every outcome must be a
//! clean error or plaintext, never a panic or unbounded allocation. Seed the
//! corpus with tests/vectors/*.vector payloads (see docs/FUZZING.md).
#![no_main]

use std::io::Read;
use std::sync::OnceLock;

use coffer::envelope::{self, Identity};
use libfuzzer_sys::fuzz_target;
use zeroize::Zeroizing;

// The identity of tests/vectors/keys/age.key, so vector files are good seeds.
const AGE_KEY: &str = include_str!("../../tests/vectors/keys/age.key");

fn identity() -> &'static [Identity] {
    static ID: OnceLock<Vec<Identity>> = OnceLock::new();
    ID.get_or_init(|| {
        let text = Zeroizing::new(AGE_KEY.to_owned());
        vec![
            envelope::parse_identities(&text, "fuzz", &envelope::no_passphrase())
                .expect("valid key"),
        ]
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok((_, mut reader)) = envelope::open(identity(), data) {
        let mut sink = [0u8; 4096];
        while let Ok(n) = reader.read(&mut sink) {
            if n == 0 {
                break;
            }
        }
    }
});
