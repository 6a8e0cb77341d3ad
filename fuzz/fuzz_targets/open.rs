//! Opens arbitrary bytes with fixed RSA and age identities: every outcome must
//! be a clean error or plaintext, never a panic or unbounded allocation. The
//! reader makes at most one RSA decryption per input (docs/FORMAT.md 2.3), so
//! the RSA path is cheap enough to fuzz. Seed the corpus with
//! tests/vectors/*.vector payloads (see docs/FUZZING.md).
#![no_main]

use std::io::Read;
use std::sync::OnceLock;

use coffer::envelope::{self, Identity};
use libfuzzer_sys::fuzz_target;
use zeroize::Zeroizing;

// The identities of the test vectors, so vector files are good seeds.
const RSA_KEY: &str = include_str!("../../tests/vectors/keys/rsa.pem");
const AGE_KEY: &str = include_str!("../../tests/vectors/keys/age.key");

fn identity() -> &'static [Identity] {
    static ID: OnceLock<Vec<Identity>> = OnceLock::new();
    ID.get_or_init(|| {
        [RSA_KEY, AGE_KEY]
            .into_iter()
            .map(|key| {
                let text = Zeroizing::new(key.to_owned());
                envelope::parse_identities(&text, "fuzz", &envelope::no_passphrase())
                    .expect("valid key")
            })
            .collect()
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
