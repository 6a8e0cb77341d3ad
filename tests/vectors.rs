//! Data-driven test vectors (as age's testkit): each `tests/vectors/*.vector`
//! file is a few `key: value` lines, a blank line, then a sealed file. The
//! runner opens each with the real binary and with the independent Python
//! reader and checks the exit code, the error text and the plaintext hash.
//!
//! The vectors are committed, so they also pin the format: a change that can
//! no longer open `good-*` vectors breaks every backup already made.
//! Regenerate (only for a deliberate format change):
//! `COFFER_WRITE_VECTORS=1 cargo test --test vectors -- --ignored write_vectors`

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, KeyInit};
use common::*;
use sha2::{Digest, Sha256};

fn vector_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

struct Vector {
    name: String,
    fields: Vec<(String, String)>,
    data: Vec<u8>,
}

impl Vector {
    fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
    fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.fields
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

fn parse_vector(path: &Path) -> Vector {
    let raw = fs::read(path).unwrap();
    let split = raw
        .windows(2)
        .position(|w| w == b"\n\n")
        .expect("header lines end with a blank line");
    let head = std::str::from_utf8(&raw[..split]).unwrap();
    let fields = head
        .lines()
        .map(|l| {
            let (k, v) = l.split_once(": ").expect("key: value");
            (k.to_owned(), v.to_owned())
        })
        .collect();
    Vector {
        name: path.file_stem().unwrap().to_string_lossy().into_owned(),
        fields,
        data: raw[split + 2..].to_vec(),
    }
}

fn python_ok() -> bool {
    Command::new("python3")
        .args(["-c", "import cryptography"])
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn all_vectors() {
    let mut paths: Vec<_> = fs::read_dir(vector_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "vector"))
        .collect();
    paths.sort();
    assert!(
        paths.len() >= 25,
        "expected the full vector set, found {}",
        paths.len()
    );
    let tmp = tempfile::tempdir().unwrap();
    // Keys are committed world-readable; coffer rightly refuses such keys.
    for k in ["rsa.pem", "age.key", "other.key"] {
        let dst = tmp.path().join(k);
        fs::copy(vector_dir().join("keys").join(k), &dst).unwrap();
        chmod(&dst, 0o600);
    }
    let reader = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/open-coffer.py");
    let check_python = python_ok();
    let mut failures = Vec::new();
    for path in &paths {
        let v = parse_vector(path);
        let file = tmp.path().join(format!("{}.coffer", v.name));
        fs::write(&file, &v.data).unwrap();
        let identity = tmp.path().join(v.get("identity").expect("identity"));
        let want: i32 = v.get("exit").expect("exit").parse().unwrap();
        let out = coffer(&[
            "open",
            "-i",
            identity.to_str().unwrap(),
            file.to_str().unwrap(),
        ]);
        let err = stderr(&out);
        if code(&out) != want {
            failures.push(format!(
                "{}: exit {} want {want}: {err}",
                v.name,
                code(&out)
            ));
            continue;
        }
        for needle in v.all("stderr") {
            if !err.contains(needle) {
                failures.push(format!("{}: stderr lacks {needle:?}: {err}", v.name));
            }
        }
        if want == 0 {
            let got = hex::encode(Sha256::digest(&out.stdout));
            if Some(got.as_str()) != v.get("payload-sha256") {
                failures.push(format!("{}: payload hash {got}", v.name));
            }
        } else if err.lines().count() != 2 {
            failures.push(format!(
                "{}: want one error line and one hint: {err}",
                v.name
            ));
        }
        if check_python {
            let py_want: i32 = v.get("python-exit").map_or(want, |s| s.parse().unwrap());
            let py = Command::new("python3")
                .arg(&reader)
                .args([
                    "open",
                    "-i",
                    identity.to_str().unwrap(),
                    file.to_str().unwrap(),
                ])
                .output()
                .unwrap();
            let py_code = py.status.code().unwrap();
            if py_code != py_want {
                failures.push(format!(
                    "{}: python reader exit {py_code} want {py_want}: {}",
                    v.name,
                    String::from_utf8_lossy(&py.stderr)
                ));
            } else if want == 0
                && Some(hex::encode(Sha256::digest(&py.stdout)).as_str()) != v.get("payload-sha256")
            {
                failures.push(format!("{}: python reader payload differs", v.name));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} vector failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------
// The generator.

const CS: usize = 64;
const CS_U32: u32 = 64;
const FULL: usize = CS + 16;

struct Gen {
    dir: PathBuf,
}

impl Gen {
    fn write(&self, name: &str, fields: &[(&str, String)], data: &[u8]) {
        let mut out = Vec::new();
        for (k, v) in fields {
            out.extend_from_slice(format!("{k}: {v}\n").as_bytes());
        }
        out.push(b'\n');
        out.extend_from_slice(data);
        fs::write(self.dir.join(format!("{name}.vector")), out).unwrap();
    }

    fn fail(
        &self,
        name: &str,
        comment: &str,
        identity: &str,
        exit: i32,
        stderr: &[&str],
        data: &[u8],
    ) {
        self.fail_py(name, comment, identity, exit, exit, stderr, data);
    }

    /// A failure case where the Python reader's exit code differs from coffer's.
    #[allow(clippy::too_many_arguments)]
    fn fail_py(
        &self,
        name: &str,
        comment: &str,
        identity: &str,
        exit: i32,
        py: i32,
        stderr: &[&str],
        data: &[u8],
    ) {
        let mut f = vec![
            ("comment", comment.to_owned()),
            ("identity", identity.to_owned()),
            ("exit", exit.to_string()),
        ];
        if py != exit {
            f.push(("python-exit", py.to_string()));
        }
        for s in stderr {
            f.push(("stderr", (*s).to_owned()));
        }
        self.write(name, &f, data);
    }
}

fn seal_with(recipients: &[coffer::envelope::Recipient], plain: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let meta = coffer::envelope::Metadata {
        created: "2026-11-22T00:00:00Z".into(),
        job: Some("vectors".into()),
        ..Default::default()
    };
    let mut w = coffer::envelope::seal(recipients, meta, CS_U32, Vec::new()).unwrap();
    w.write_all(plain).unwrap();
    w.finish().unwrap()
}

/// Offsets of interesting header fields, walked from the layout in FORMAT.md.
struct Layout {
    header: usize,
    meta: usize,
    count: usize,
    stanza_fp: Vec<usize>,
    stanza_body: Vec<usize>,
}

fn layout(file: &[u8]) -> Layout {
    let (_, header) = coffer::envelope::Header::parse(file).unwrap();
    let meta = 12 + 4 + 32 + 4;
    let meta_len = u32::from_be_bytes(file[48..52].try_into().unwrap()) as usize;
    let count = meta + meta_len;
    let n = u16::from_be_bytes(file[count..count + 2].try_into().unwrap());
    let mut at = count + 2;
    let (mut fps, mut bodies) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let kind_len = file[at] as usize;
        at += 1 + kind_len;
        fps.push(at);
        at += 32;
        let len = u32::from_be_bytes(file[at..at + 4].try_into().unwrap()) as usize;
        at += 4;
        bodies.push(at);
        at += len;
    }
    assert_eq!(at + 32, header);
    Layout {
        header,
        meta,
        count,
        stanza_fp: fps,
        stanza_body: bodies,
    }
}

fn flip(data: &[u8], at: usize) -> Vec<u8> {
    let mut d = data.to_vec();
    d[at] ^= 0x01;
    d
}

#[test]
#[ignore = "writes tests/vectors; run only for a deliberate format change"]
#[allow(clippy::too_many_lines)] // one table of cases reads better than many helpers
fn write_vectors() {
    assert!(
        std::env::var_os("COFFER_WRITE_VECTORS").is_some(),
        "set COFFER_WRITE_VECTORS=1"
    );
    let g = Gen { dir: vector_dir() };
    let keys = g.dir.join("keys");
    fs::create_dir_all(&keys).unwrap();
    for old in fs::read_dir(&g.dir).unwrap() {
        let p = old.unwrap().path();
        if p.extension().is_some_and(|e| e == "vector") {
            fs::remove_file(p).unwrap();
        }
    }
    if !keys.join("rsa.pem").exists() {
        ok(&[
            "keygen",
            "--type",
            "rsa",
            "--bits",
            "2048",
            "--out",
            keys.join("rsa.pem").to_str().unwrap(),
        ]);
        ok(&[
            "keygen",
            "--type",
            "age",
            "--out",
            keys.join("age.key").to_str().unwrap(),
        ]);
        ok(&[
            "keygen",
            "--type",
            "age",
            "--out",
            keys.join("other.key").to_str().unwrap(),
        ]);
        fs::remove_file(keys.join("other.key.pub")).unwrap();
    }
    let cb = coffer::envelope::no_passphrase();
    let mut recipients = coffer::envelope::parse_recipients_file(
        &fs::read_to_string(keys.join("rsa.pem.pub")).unwrap(),
        &cb,
    )
    .unwrap();
    recipients.extend(
        coffer::envelope::parse_recipients_file(
            &fs::read_to_string(keys.join("age.key.pub")).unwrap(),
            &cb,
        )
        .unwrap(),
    );
    let rsa_id = coffer::envelope::parse_identities(
        &zeroize::Zeroizing::new(fs::read_to_string(keys.join("rsa.pem")).unwrap()),
        "rsa",
        &cb,
    )
    .unwrap();

    let plain = pattern(200, 7); // chunks of 64, 64, 64 and 8 bytes
    let hash = |d: &[u8]| hex::encode(Sha256::digest(d));
    let good = seal_with(&recipients, &plain);
    let l = layout(&good);
    let h = l.header;
    let chunk = |i: usize| h + i * FULL;
    for (name, id) in [("good-rsa", "rsa.pem"), ("good-age", "age.key")] {
        g.write(
            name,
            &[
                (
                    "comment",
                    "200 bytes in 4 chunks, sealed to an RSA and an age key".into(),
                ),
                ("identity", id.into()),
                ("exit", "0".into()),
                ("payload-sha256", hash(&plain)),
            ],
            &good,
        );
    }
    let empty = seal_with(&recipients, b"");
    g.write(
        "good-empty",
        &[
            (
                "comment",
                "an empty payload is one empty final chunk".into(),
            ),
            ("identity", "rsa.pem".into()),
            ("exit", "0".into()),
            ("payload-sha256", hash(b"")),
        ],
        &empty,
    );
    let exact = seal_with(&recipients, &plain[..128]);
    g.write(
        "good-exact-multiple",
        &[
            (
                "comment",
                "128 bytes: two full chunks, the second final".into(),
            ),
            ("identity", "age.key".into()),
            ("exit", "0".into()),
            ("payload-sha256", hash(&plain[..128])),
        ],
        &exact,
    );

    g.fail(
        "wrong-key",
        "an age key that is not a recipient",
        "other.key",
        4,
        &[
            "no identity given can open this file",
            "rsa-oaep-sha256 SHA256:",
        ],
        &good,
    );
    g.fail(
        "header-magic",
        "first byte of the magic changed",
        "rsa.pem",
        3,
        &["not a coffer file"],
        &flip(&good, 0),
    );
    let mut v2 = good.clone();
    v2[7] = 2;
    g.fail(
        "header-version",
        "version 2",
        "rsa.pem",
        3,
        &["unsupported format version 2"],
        &v2,
    );
    g.fail(
        "header-chunk-size",
        "chunk size changed",
        "rsa.pem",
        3,
        &["header authentication failed"],
        &flip(&good, 15),
    );
    g.fail(
        "header-salt",
        "salt changed",
        "rsa.pem",
        3,
        &["header authentication failed"],
        &flip(&good, 20),
    );
    let job_at = l.meta
        + good[l.meta..l.count]
            .windows(7)
            .position(|w| w == b"vectors")
            .unwrap();
    g.fail(
        "header-metadata",
        "job name in the metadata changed (still valid JSON)",
        "age.key",
        3,
        &["header authentication failed"],
        &flip(&good, job_at),
    );
    g.fail(
        "header-count",
        "stanza count changed",
        "rsa.pem",
        3,
        &["header is malformed"],
        &flip(&good, l.count + 1),
    );
    g.fail(
        "header-length",
        "header length field changed",
        "rsa.pem",
        3,
        &["header is malformed"],
        &flip(&good, 11),
    );
    g.fail(
        "stanza-rsa-fingerprint",
        "RSA stanza's fingerprint changed: no key is tried on it, and it cannot be told from a wrong key",
        "rsa.pem",
        4,
        &["no identity given can open this file"],
        &flip(&good, l.stanza_fp[0] + 3),
    );
    g.fail(
        "stanza-rsa-body",
        "RSA stanza's wrapped key changed",
        "rsa.pem",
        3,
        &["recipient stanza 0 (rsa-oaep-sha256", "damaged"],
        &flip(&good, l.stanza_body[0] + 100),
    );
    g.fail_py(
        "stanza-age-body",
        "age stanza's body changed",
        "age.key",
        3,
        4,
        &["recipient stanza 1 (age", "damaged"],
        &flip(&good, l.stanza_body[1] + 60),
    );
    g.fail(
        "header-mac",
        "last byte of the header MAC changed",
        "rsa.pem",
        3,
        &["header authentication failed"],
        &flip(&good, h - 1),
    );
    g.fail(
        "header-truncated",
        "the file ends inside the header",
        "rsa.pem",
        3,
        &["header is truncated"],
        &good[..h - 10],
    );
    g.fail(
        "no-payload",
        "a header and nothing else",
        "rsa.pem",
        3,
        &["truncated", "there is no payload"],
        &good[..h],
    );
    g.fail(
        "chunk-first",
        "a byte of chunk 0 changed",
        "rsa.pem",
        3,
        &[&format!("chunk 0 (byte offset {h}) failed authentication")],
        &flip(&good, chunk(0) + 5),
    );
    g.fail(
        "chunk-middle",
        "a byte of chunk 1 changed",
        "rsa.pem",
        3,
        &[&format!(
            "chunk 1 (byte offset {}) failed authentication",
            chunk(1)
        )],
        &flip(&good, chunk(1) + 70),
    );
    g.fail(
        "chunk-last",
        "a byte of the final chunk's tag changed",
        "rsa.pem",
        3,
        &[&format!(
            "chunk 3 (byte offset {}) failed authentication",
            chunk(3)
        )],
        &flip(&good, good.len() - 1),
    );
    let mut swapped = good[..chunk(1)].to_vec();
    swapped.extend_from_slice(&good[chunk(2)..chunk(3)]);
    swapped.extend_from_slice(&good[chunk(1)..chunk(2)]);
    swapped.extend_from_slice(&good[chunk(3)..]);
    g.fail(
        "chunks-swapped",
        "chunks 1 and 2 swapped",
        "rsa.pem",
        3,
        &["chunk 1 (byte offset"],
        &swapped,
    );
    let mut dup = good[..chunk(2)].to_vec();
    dup.extend_from_slice(&good[chunk(1)..]);
    g.fail(
        "chunk-duplicated",
        "chunk 1 appears twice",
        "rsa.pem",
        3,
        &["chunk 2 (byte offset"],
        &dup,
    );
    let mut dropped = good[..chunk(1)].to_vec();
    dropped.extend_from_slice(&good[chunk(2)..]);
    g.fail(
        "chunk-dropped",
        "chunk 1 removed",
        "rsa.pem",
        3,
        &["chunk 1 (byte offset"],
        &dropped,
    );
    g.fail(
        "truncated-at-boundary",
        "the file ends after chunk 2, a non-final chunk",
        "rsa.pem",
        3,
        &["truncated: the stream ends after chunk 2"],
        &good[..chunk(3)],
    );
    g.fail(
        "truncated-inside-chunk",
        "the file ends in the middle of chunk 1",
        "rsa.pem",
        3,
        &["chunk 1 (byte offset"],
        &good[..chunk(1) + 30],
    );
    g.fail(
        "truncated-inside-last",
        "the file ends inside the final chunk",
        "rsa.pem",
        3,
        &["chunk 3 (byte offset"],
        &good[..good.len() - 3],
    );
    let mut appended = good.clone();
    appended.extend_from_slice(b"extra");
    g.fail(
        "appended-short",
        "bytes appended after a short final chunk",
        "rsa.pem",
        3,
        &["chunk 3 (byte offset"],
        &appended,
    );
    let mut appended_full = exact.clone();
    appended_full.extend_from_slice(&[0u8; 100]);
    g.fail(
        "appended-after-full-final",
        "100 bytes appended after a full final chunk",
        "rsa.pem",
        3,
        &["trailing data after the final chunk 1"],
        &appended_full,
    );
    g.fail(
        "empty-file",
        "zero bytes",
        "rsa.pem",
        3,
        &["header is truncated"],
        b"",
    );

    // Crafted payloads, sealed with the real payload key of `good`'s header.
    let (header, raw) = coffer::envelope::Header::read(&mut &good[..]).unwrap();
    let data_key = header
        .unwrap_key(std::slice::from_ref(&rsa_id), &raw)
        .unwrap();
    let payload_key = data_key.payload_key(&header.salt);
    let aead = Aes256Gcm::new((&*payload_key).into());
    let seal_chunk = |i: u64, last: bool, data: &[u8]| {
        let mut n = [0u8; 12];
        n[3..11].copy_from_slice(&i.to_be_bytes());
        n[11] = u8::from(last);
        let mut buf = data.to_vec();
        let tag = aead
            .encrypt_in_place_detached(&n.into(), b"", &mut buf)
            .unwrap();
        buf.extend_from_slice(&tag);
        buf
    };
    let mut two_final = raw.clone();
    two_final.extend(seal_chunk(0, true, &plain[..64]));
    two_final.extend(seal_chunk(1, true, &plain[64..72]));
    g.fail(
        "two-final-chunks",
        "chunk 0 flagged final, then another final chunk",
        "rsa.pem",
        3,
        &["trailing data after the final chunk 0"],
        &two_final,
    );
    let mut empty_final = raw.clone();
    empty_final.extend(seal_chunk(0, false, &plain[..64]));
    empty_final.extend(seal_chunk(1, true, b""));
    g.fail(
        "empty-final-after-data",
        "a full chunk then an empty final chunk (non-canonical)",
        "rsa.pem",
        3,
        &["empty final chunk"],
        &empty_final,
    );
    let mut no_final = raw.clone();
    no_final.extend(seal_chunk(0, false, &plain[..64]));
    no_final.extend(seal_chunk(1, false, &plain[64..80]));
    g.fail(
        "no-final-flag",
        "the last chunk is not flagged final",
        "rsa.pem",
        3,
        &["truncated"],
        &no_final,
    );
    write_header_rule_vectors(&g, &good);
}

/// Adds only the header-rule vectors, crafted from the committed `good-rsa`
/// file, so the other vectors (which pin files already made) stay as they are.
#[test]
#[ignore = "writes tests/vectors; run only when the reader's header rules change"]
fn write_header_rule_vectors_only() {
    assert!(
        std::env::var_os("COFFER_WRITE_VECTORS").is_some(),
        "set COFFER_WRITE_VECTORS=1"
    );
    let good = parse_vector(&vector_dir().join("good-rsa.vector")).data;
    write_header_rule_vectors(&Gen { dir: vector_dir() }, &good);
}

/// A v1 header taken apart, to be put back together without the writer's
/// checks (and with the original, now wrong, MAC): headers the reader must
/// refuse before it uses any key.
#[derive(Clone)]
struct RawHeader {
    version: u16,
    /// `chunk_size` and `salt`.
    fixed: Vec<u8>,
    meta: Vec<u8>,
    /// (kind, fingerprint, body)
    stanzas: Vec<(Vec<u8>, Vec<u8>, Vec<u8>)>,
    /// The MAC and the payload after it.
    rest: Vec<u8>,
}

fn take_apart(file: &[u8]) -> RawHeader {
    let l = layout(file);
    let meta_len = u32::from_be_bytes(file[48..52].try_into().unwrap()) as usize;
    let mut stanzas = Vec::new();
    let mut at = l.count + 2;
    for _ in 0..l.stanza_fp.len() {
        let kind_len = file[at] as usize;
        let kind = file[at + 1..at + 1 + kind_len].to_vec();
        at += 1 + kind_len;
        let fp = file[at..at + 32].to_vec();
        at += 32;
        let len = u32::from_be_bytes(file[at..at + 4].try_into().unwrap()) as usize;
        at += 4;
        stanzas.push((kind, fp, file[at..at + len].to_vec()));
        at += len;
    }
    RawHeader {
        version: u16::from_be_bytes([file[6], file[7]]),
        fixed: file[12..48].to_vec(),
        meta: file[52..52 + meta_len].to_vec(),
        stanzas,
        rest: file[l.header - 32..].to_vec(),
    }
}

fn put_together(h: &RawHeader) -> Vec<u8> {
    let mut body = h.fixed.clone();
    body.extend_from_slice(&u32::try_from(h.meta.len()).unwrap().to_be_bytes());
    body.extend_from_slice(&h.meta);
    body.extend_from_slice(&u16::try_from(h.stanzas.len()).unwrap().to_be_bytes());
    for (kind, fp, stanza) in &h.stanzas {
        body.push(u8::try_from(kind.len()).unwrap());
        body.extend_from_slice(kind);
        body.extend_from_slice(fp);
        body.extend_from_slice(&u32::try_from(stanza.len()).unwrap().to_be_bytes());
        body.extend_from_slice(stanza);
    }
    let mut out = b"COFFER".to_vec();
    out.extend_from_slice(&h.version.to_be_bytes());
    out.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes());
    out.extend_from_slice(&body);
    out.extend_from_slice(&h.rest);
    out
}

/// The reader's header rules (docs/FORMAT.md 2.3), each broken once.
fn write_header_rule_vectors(g: &Gen, good: &[u8]) {
    let base = take_apart(good);
    assert_eq!(
        put_together(&base),
        good,
        "take_apart/put_together round trip"
    );
    let rsa = base.stanzas[0].clone();
    assert_eq!(rsa.0, b"rsa-oaep-sha256");

    let mut many = base.clone();
    many.stanzas
        .extend((0..16u8).map(|i| (rsa.0.clone(), vec![i; 32], rsa.2.clone())));
    g.fail(
        "stanza-rsa-17",
        "17 RSA stanzas (a reader allows 16): refused before any key is used",
        "rsa.pem",
        3,
        &["17 rsa-oaep-sha256 stanzas; at most 16"],
        &put_together(&many),
    );
    let mut twice = base.clone();
    twice.stanzas.push(rsa.clone());
    g.fail(
        "stanza-duplicate",
        "the RSA stanza appears twice",
        "rsa.pem",
        3,
        &["stanzas 0 and 2 are both for rsa-oaep-sha256"],
        &put_together(&twice),
    );
    let mut kind = base.clone();
    kind.stanzas[0].0 = b"rsa-oaep-sha257".to_vec();
    g.fail(
        "stanza-kind",
        "one bit of the RSA stanza's kind changed: damage, not a wrong key",
        "rsa.pem",
        3,
        &["\"rsa-oaep-sha257\"", "looks damaged or tampered with"],
        &put_together(&kind),
    );
    let mut v0 = base.clone();
    v0.version = 0;
    g.fail(
        "header-version-0",
        "version 0, which no coffer writes",
        "rsa.pem",
        3,
        &["invalid format version 0"],
        &put_together(&v0),
    );
    let mut meta = base.clone();
    meta.meta = br#"{"job":"vectors"}"#.to_vec();
    g.fail(
        "metadata-no-created",
        "valid JSON metadata without the required created member",
        "rsa.pem",
        3,
        &["lacks the required member \"created\""],
        &put_together(&meta),
    );
    write_metadata_and_kind_vectors(g, good, &base);
}

/// Replaces the header MAC of `file` with the right one under `key`, for a
/// header that a writer could have made (the reader must accept it).
fn remac(file: &mut [u8], key: &coffer::envelope::DataKey) {
    use hmac::{Hmac, Mac};
    let end = 12 + u32::from_be_bytes(file[8..12].try_into().unwrap()) as usize;
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(key.header_key(&file[16..48]).as_slice()).unwrap();
    mac.update(&file[..end]);
    file[end..end + 32].copy_from_slice(&mac.finalize().into_bytes());
}

/// The metadata rules of FORMAT.md 1.2, the stanza kind rules of section 2
/// and the short inputs of section 1, each once.
#[allow(clippy::too_many_lines)] // one table of cases reads better than many helpers
fn write_metadata_and_kind_vectors(g: &Gen, good: &[u8], base: &RawHeader) {
    // Every header below carries a good MAC, so a reader that lacks a rule
    // opens the file instead of failing on the MAC.
    let cb = coffer::envelope::no_passphrase();
    let rsa_id = coffer::envelope::parse_identities(
        &zeroize::Zeroizing::new(fs::read_to_string(g.dir.join("keys/rsa.pem")).unwrap()),
        "rsa",
        &cb,
    )
    .unwrap();
    let ids = std::slice::from_ref(&rsa_id);
    let (header, raw) = coffer::envelope::Header::read(&mut &good[..]).unwrap();
    let key = header.unwrap_key(ids, &raw).unwrap();
    let mut plain = Vec::new();
    std::io::Read::read_to_end(
        &mut coffer::envelope::open(ids, good).unwrap().1,
        &mut plain,
    )
    .unwrap();
    let with_meta = |json: &[u8]| {
        let mut h = base.clone();
        h.meta = json.to_vec();
        let mut file = put_together(&h);
        remac(&mut file, &key);
        file
    };
    let created = r#""created":"2026-11-22T00:00:00Z""#;
    let deep = format!("{{{created},\"x\":{}{}}}", "[".repeat(127), "]".repeat(127));
    let refused: [(&str, &str, String, &str); 6] = [
        (
            "metadata-job-number",
            "job is a number, not a string",
            format!(r#"{{{created},"job":5}}"#),
            "member of the wrong type",
        ),
        (
            "metadata-nan",
            "NaN is not JSON",
            format!(r#"{{{created},"x":NaN}}"#),
            "metadata is not valid JSON",
        ),
        (
            "metadata-out-of-range",
            "a number beyond the double range",
            format!(r#"{{{created},"x":1e400}}"#),
            "number out of range",
        ),
        (
            "metadata-surrogate",
            "a string with an unpaired surrogate escape",
            format!(r#"{{{created},"x":"\udc00"}}"#),
            "metadata is not valid JSON",
        ),
        (
            "metadata-too-deep",
            "arrays nested to level 128 (the object is level 1)",
            deep,
            "recursion limit exceeded",
        ),
        (
            "metadata-array",
            "metadata that is JSON but not an object",
            r#"["created"]"#.to_owned(),
            "not a JSON object",
        ),
    ];
    for (name, comment, json, err) in refused {
        g.fail(
            name,
            comment,
            "rsa.pem",
            3,
            &["header is malformed", err],
            &with_meta(json.as_bytes()),
        );
    }
    for (name, comment, kind) in [
        (
            "stanza-kind-space",
            "a stanza kind with a space in it spoils the whole header",
            &b"rsa-oaep sha256"[..],
        ),
        ("stanza-kind-empty", "a stanza kind of length 0", b""),
    ] {
        // Added next to the stanzas a key can open, which stay intact.
        let mut h = base.clone();
        h.stanzas.push((kind.to_vec(), vec![9; 32], vec![1, 2, 3]));
        let mut file = put_together(&h);
        remac(&mut file, &key);
        g.fail(
            name,
            comment,
            "rsa.pem",
            3,
            &["stanza 2 has an invalid kind"],
            &file,
        );
    }
    g.fail(
        "short-magic-prefix",
        "the six magic bytes and nothing more",
        "rsa.pem",
        3,
        &["header is truncated"],
        b"COFFER",
    );
    g.fail(
        "short-not-coffer",
        "three bytes that are not a prefix of the magic",
        "rsa.pem",
        3,
        &["not a coffer file"],
        b"CAT",
    );
    let header_len = layout(good).header;
    g.fail(
        "no-payload-wrong-key",
        "a header and nothing else, opened with a key that is not a recipient: the key is checked first",
        "other.key",
        4,
        &["no identity given can open this file"],
        &good[..header_len],
    );

    // Headers a writer may make: a reader must open them.
    let accepted: [(&str, &str, String); 3] = [
        (
            "metadata-depth-127",
            "arrays nested to level 127, the most a reader accepts",
            format!(
                "{{{created},\"x\":{}{}}}",
                "[".repeat(126),
                "]".repeat(126)
            ),
        ),
        (
            "metadata-lenient",
            "created that is not RFC 3339, job null, and unknown members (Created is one) are all accepted",
            r#"{"created":"yesterday","job":null,"Created":5,"future":{"a":[1,2.5,null,true]}}"#
                .to_owned(),
        ),
        (
            "metadata-duplicate",
            "job twice: the last one counts (the first, a number, would be refused)",
            format!(r#"{{{created},"job":5,"job":"vectors"}}"#),
        ),
    ];
    for (name, comment, json) in accepted {
        let file = with_meta(json.as_bytes());
        g.write(
            name,
            &[
                ("comment", comment.into()),
                ("identity", "rsa.pem".into()),
                ("exit", "0".into()),
                ("payload-sha256", hex::encode(Sha256::digest(&plain))),
            ],
            &file,
        );
    }
}

// ---------------------------------------------------------------------------
// The worked example of docs/FORMAT.md section 9.1, read out of the document
// itself so that the document cannot drift from what coffer does.

/// The fields of the two fenced blocks, in the order the document gives them.
const EXAMPLE_INPUTS: [&str; 8] = [
    "data_key",
    "salt",
    "plaintext",
    "header_key",
    "payload_key",
    "nonce_0",
    "nonce_1",
    "file_sha256",
];
const EXAMPLE_FILE: [&str; 18] = [
    "magic",
    "version",
    "body_len",
    "chunk_size",
    "salt",
    "meta_len",
    "metadata",
    "stanza_count",
    "kind_len",
    "kind",
    "fingerprint",
    "stanza_len",
    "stanza_body",
    "mac",
    "chunk_0",
    "tag_0",
    "chunk_1",
    "tag_1",
];

fn format_md() -> String {
    fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/FORMAT.md")).unwrap()
}

/// One block's fields, and the offset in `doc` of every hex digit in it.
type Fields = (Vec<(String, Vec<u8>)>, Vec<usize>);

/// Parses the fenced block opened by ```` ```coffer-vector {block} ````: lines
/// `name hex`, continued on lines that start with a space. Only lowercase hex
/// is accepted, so that every edit of a digit changes a value.
fn example_block(doc: &str, block: &str, names: &[&str]) -> Result<Fields, String> {
    let fence = format!("```coffer-vector {block}");
    let mut lines = Vec::new();
    let mut at = 0;
    for line in doc.split_inclusive('\n') {
        lines.push((at, line.trim_end_matches('\n')));
        at += line.len();
    }
    let opens: Vec<usize> = (0..lines.len()).filter(|&i| lines[i].1 == fence).collect();
    let [open] = opens[..] else {
        return Err(format!("{} lines {fence:?}; want one", opens.len()));
    };
    let close = (open + 1..lines.len())
        .find(|&i| lines[i].1 == "```")
        .ok_or_else(|| format!("{fence:?} is never closed"))?;
    let mut fields: Vec<(String, String)> = Vec::new();
    let mut digits = Vec::new();
    for &(start, line) in &lines[open + 1..close] {
        let (name, hex_part) = if line.starts_with(' ') {
            let (_, last) = fields
                .last_mut()
                .ok_or_else(|| format!("{block}: a continuation line comes first"))?;
            (None, last)
        } else {
            let name = line.split(' ').next().unwrap_or_default();
            fields.push((name.to_owned(), String::new()));
            (Some(name), &mut fields.last_mut().unwrap().1)
        };
        let skip = name.map_or(0, str::len);
        for (i, c) in line.char_indices().skip(skip) {
            match c {
                ' ' => {}
                '0'..='9' | 'a'..='f' => {
                    hex_part.push(c);
                    digits.push(start + i);
                }
                _ => return Err(format!("{block}: {c:?} in {line:?} is not lowercase hex")),
            }
        }
    }
    let got: Vec<&str> = fields.iter().map(|(n, _)| n.as_str()).collect();
    if got != names {
        return Err(format!("{block}: fields {got:?}, want {names:?}"));
    }
    let fields = fields
        .into_iter()
        .map(|(n, h)| match hex::decode(&h) {
            Ok(v) if !v.is_empty() => Ok((n, v)),
            _ => Err(format!("{block}: {n} is not whole bytes of hex")),
        })
        .collect::<Result<_, _>>()?;
    Ok((fields, digits))
}

struct Example {
    data_key: Vec<u8>,
    plaintext: Vec<u8>,
    file: Vec<u8>,
}

fn field<'a>(fields: &'a [(String, Vec<u8>)], name: &str) -> &'a [u8] {
    &fields
        .iter()
        .find(|(n, _)| n == name)
        .expect("field checked")
        .1
}

fn ensure(ok: bool, what: &str) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(format!("{what} does not match"))
    }
}

/// Checks every value of the worked example against coffer's own code, and
/// returns the sealed file it describes.
fn check_example(doc: &str) -> Result<Example, String> {
    use coffer::envelope::{DataKey, Header};
    let (inputs, _) = example_block(doc, "inputs", &EXAMPLE_INPUTS)?;
    let (parts, _) = example_block(doc, "file", &EXAMPLE_FILE)?;
    let input = |name| field(&inputs, name);
    let part = |name| field(&parts, name);
    let file: Vec<u8> = parts.iter().flat_map(|(_, v)| v.iter().copied()).collect();

    let (header, len) = Header::parse(&file).map_err(|e| format!("coffer: {e}"))?;
    let header_fields = EXAMPLE_FILE.iter().position(|&n| n == "mac").unwrap();
    let header_len: usize = parts[..=header_fields].iter().map(|(_, v)| v.len()).sum();
    ensure(
        len == header_len,
        "the header's length (its fields up to mac)",
    )?;
    let salt = input("salt");
    ensure(header.salt == salt && part("salt") == salt, "salt")?;
    let key = DataKey::from_bytes(input("data_key")).ok_or("data_key is not 32 bytes")?;
    ensure(
        key.header_key(salt).as_slice() == input("header_key"),
        "header_key",
    )?;
    let payload_key = key.payload_key(salt);
    ensure(
        payload_key.as_slice() == input("payload_key"),
        "payload_key",
    )?;
    header
        .verify_mac(&key, &file[..len])
        .map_err(|e| format!("mac: {e}"))?;
    ensure(header.mac == part("mac"), "mac")?;
    // coffer's own writer, given the same values, must produce these bytes.
    let rewritten = Header::new(
        header.chunk_size,
        header.salt,
        header.metadata.clone(),
        header.stanzas.clone(),
    )
    .map_err(|e| format!("coffer refuses to write the example's header: {e}"))?
    .to_bytes(&key);
    ensure(rewritten == file[..len], "the header coffer writes")?;

    let plaintext = input("plaintext");
    let cs = header.chunk_size as usize;
    ensure(
        plaintext.len() > cs && plaintext.len() <= 2 * cs,
        "a plaintext of exactly two chunks",
    )?;
    let aead = Aes256Gcm::new(payload_key.as_slice().into());
    let chunks = [
        (&plaintext[..cs], "nonce_0", "chunk_0", "tag_0", false),
        (&plaintext[cs..], "nonce_1", "chunk_1", "tag_1", true),
    ];
    for (i, (plain, nonce_name, chunk_name, tag_name, last)) in (0u64..).zip(chunks) {
        // Built as section 4 says, not copied from the document.
        let mut nonce = [0u8; 12];
        nonce[3..11].copy_from_slice(&i.to_be_bytes());
        nonce[11] = u8::from(last);
        ensure(input(nonce_name) == nonce, nonce_name)?;
        let mut sealed = plain.to_vec();
        let tag = aead
            .encrypt_in_place_detached(&nonce.into(), b"", &mut sealed)
            .unwrap();
        ensure(part(chunk_name) == sealed, chunk_name)?;
        ensure(part(tag_name) == tag.as_slice(), tag_name)?;
    }
    // Last, so that an edit elsewhere is reported by the field it changed.
    ensure(
        Sha256::digest(&file)[..] == *input("file_sha256"),
        "file_sha256",
    )?;
    Ok(Example {
        data_key: input("data_key").to_vec(),
        plaintext: plaintext.to_vec(),
        file,
    })
}

#[test]
fn the_worked_example_in_format_md_opens_with_coffer_and_the_python_reader() {
    let ex = check_example(&format_md()).unwrap_or_else(|e| panic!("FORMAT.md 9.1: {e}"));
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("example.coffer");
    fs::write(&file, &ex.file).unwrap();
    let key = tmp.path().join("rsa.pem");
    fs::copy(vector_dir().join("keys/rsa.pem"), &key).unwrap();
    chmod(&key, 0o600);

    // coffer finds the data key the real way, through the stanza.
    let out = coffer(&["open", "-i", key.to_str().unwrap(), file.to_str().unwrap()]);
    assert_eq!(code(&out), 0, "coffer open: {}", stderr(&out));
    assert!(
        out.stdout == ex.plaintext,
        "coffer opened another plaintext"
    );

    assert!(
        python_ok(),
        "the independent reader needs python3 with `cryptography` (scripts/install-test-deps.sh)"
    );
    let data_key = tmp.path().join("data.key");
    fs::write(&data_key, &ex.data_key).unwrap();
    let py = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/open-coffer.py"))
        .args(["open", "--data-key", data_key.to_str().unwrap()])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(
        py.status.code(),
        Some(0),
        "open-coffer.py: {}",
        String::from_utf8_lossy(&py.stderr)
    );
    assert!(
        py.stdout == ex.plaintext,
        "open-coffer.py opened another plaintext"
    );
}

#[test]
fn every_digit_of_the_worked_example_is_checked() {
    let doc = format_md();
    check_example(&doc).unwrap_or_else(|e| panic!("FORMAT.md 9.1: {e}"));
    let mut digits = example_block(&doc, "inputs", &EXAMPLE_INPUTS).unwrap().1;
    digits.extend(example_block(&doc, "file", &EXAMPLE_FILE).unwrap().1);
    // 541 bytes of file and 265 of inputs: a parser that found less has
    // lost part of a block.
    assert_eq!(digits.len(), 2 * (541 + 265));
    let unnoticed: Vec<usize> = digits
        .into_iter()
        .filter(|&at| {
            let mut edited = doc.clone().into_bytes();
            edited[at] = if edited[at] == b'0' { b'1' } else { b'0' };
            check_example(&String::from_utf8(edited).unwrap()).is_ok()
        })
        .collect();
    assert!(
        unnoticed.is_empty(),
        "edits at these byte offsets of FORMAT.md went unnoticed: {unnoticed:?}"
    );
}
