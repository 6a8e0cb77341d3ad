//! Parses arbitrary bytes as a sealed-file header; must never panic, and a
//! header that parses must re-parse identically from a streaming reader.
#![no_main]

use coffer::envelope::Header;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((header, len)) = Header::parse(data) {
        let (again, raw) = Header::read(&mut &data[..]).expect("parse and read agree");
        assert_eq!(header, again);
        assert_eq!(raw.len(), len);
    }
});
