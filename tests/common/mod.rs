//! Helpers shared by the integration tests: run the real binary, make keys.
#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use sha2::{Digest, Sha256};

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_coffer"))
}

pub fn coffer(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run coffer")
}

/// Runs coffer; panics with its stderr unless it exits 0.
pub fn ok(args: &[&str]) -> Output {
    let out = coffer(args);
    assert!(
        out.status.success(),
        "coffer {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn code(out: &Output) -> i32 {
    out.status.code().expect("exited normally")
}

pub fn sha256_file(p: &Path) -> String {
    let mut h = Sha256::new();
    let mut f = fs::File::open(p).unwrap();
    std::io::copy(&mut f, &mut h).unwrap();
    hex::encode(h.finalize())
}

pub fn blake3_file(p: &Path) -> String {
    blake3::hash(&fs::read(p).unwrap()).to_hex().to_string()
}

/// Makes a sidecar (JSON) vouch for the sealed file at `sealed`, as a
/// hostile server that rewrites an unsigned sidecar would: its size, its
/// SHA-256 and, where the sidecar has one, its BLAKE3.
pub fn vouch_for(sidecar: &mut serde_json::Value, sealed: &Path) {
    sidecar["size"] = fs::metadata(sealed).unwrap().len().into();
    sidecar["sha256"] = sha256_file(sealed).into();
    if sidecar.get("blake3").is_some() {
        sidecar["blake3"] = blake3_file(sealed).into();
    }
}

pub fn sh(cmd: &str, dir: &Path) -> Output {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .current_dir(dir)
        .output()
        .expect("run sh");
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `unsigned = true` for a test job whose lines set no signing key (signed
/// is the default, and a job without a key must say so), else nothing.
pub fn unsigned_unless_signed(job_lines: &str) -> &'static str {
    if job_lines.contains("signing_key") || job_lines.contains("signing_public_key") {
        ""
    } else {
        "unsigned = true\n"
    }
}

pub fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

/// Deterministic pseudo-random bytes (xorshift), so large inputs need no RNG crate.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// Key pairs of each kind in `dir`: (private, public or recipient argument).
pub struct Keys {
    pub rsa: (PathBuf, String),
    pub age: (PathBuf, String),
    pub ssh: (PathBuf, String),
}

pub fn keys(dir: &Path) -> Keys {
    let rsa = dir.join("rsa.pem");
    ok(&[
        "keygen",
        "--type",
        "rsa",
        "--bits",
        "2048",
        "--out",
        rsa.to_str().unwrap(),
    ]);
    let age = dir.join("age.key");
    ok(&["keygen", "--type", "age", "--out", age.to_str().unwrap()]);
    sh("ssh-keygen -q -t ed25519 -N '' -C test -f ssh_ed25519", dir);
    let ssh_pub = fs::read_to_string(dir.join("ssh_ed25519.pub")).unwrap();
    Keys {
        rsa: (rsa.clone(), format!("{}.pub", rsa.display())),
        age: (
            age.clone(),
            fs::read_to_string(format!("{}.pub", age.display()))
                .unwrap()
                .trim()
                .to_owned(),
        ),
        ssh: (dir.join("ssh_ed25519"), ssh_pub.trim().to_owned()),
    }
}

/// Writes `content` to `dir/p` and seals it to `recipient` as `dir/p.coffer`.
pub fn seal_sample(dir: &Path, recipient: &str, content: &[u8]) -> PathBuf {
    let plain = dir.join("p");
    fs::write(&plain, content).unwrap();
    let sealed = dir.join("p.coffer");
    ok(&[
        "seal",
        "-r",
        recipient,
        "-o",
        sealed.to_str().unwrap(),
        plain.to_str().unwrap(),
    ]);
    sealed
}

/// Parses a metrics file with the Prometheus reference client's parser and
/// returns `name{labels} value` lines, sorted.
pub fn parse_metrics(path: &Path) -> Vec<String> {
    let script = r#"
import sys
from prometheus_client.parser import text_string_to_metric_families
for fam in text_string_to_metric_families(open(sys.argv[1]).read()):
    assert fam.type == "gauge", fam
    assert fam.documentation, fam
    for s in fam.samples:
        labels = ",".join(f'{k}={v}' for k, v in sorted(s.labels.items()))
        print(f"{s.name}{{{labels}}} {s.value}")
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the metrics file does not parse: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        fs::read_to_string(path).unwrap_or_default()
    );
    let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    v.sort();
    v
}

pub fn value(samples: &[String], prefix: &str) -> f64 {
    samples
        .iter()
        .find_map(|s| s.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no {prefix} in {samples:#?}"))
        .trim()
        .parse()
        .unwrap()
}

/// Nine nights of a 2 MiB file to `store`, a `[[store]]` block (keep_last
/// = 7 deletes), then every command an operator runs: list, keyless and
/// keyed verify, restore, prune. `held` names the files the store holds.
/// What the last night said on stderr.
pub fn every_command(store: &str, held: &dyn Fn() -> Vec<String>) -> String {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key = d.join("backup.key");
    ok(&["keygen", "--type", "age", "--out", key.to_str().unwrap()]);
    let data = d.join("data.bin");
    fs::write(&data, pattern(2 << 20, 7)).unwrap();
    let cfg = d.join("coffer.toml");
    fs::write(
        &cfg,
        format!(
            "[job]\nname = \"prod\"\nrecipients = [\"{}.pub\"]\nlock_file = \"{}/lock\"\nkeep_last = 7\nunsigned = true\n\
             [[source]]\ntype = \"files\"\nname = \"data\"\npaths = [\"{}\"]\n{store}",
            key.display(),
            d.display(),
            data.display()
        ),
    )
    .unwrap();
    chmod(&cfg, 0o600);
    let c = cfg.to_str().unwrap();
    let sealed = || held().iter().filter(|f| f.ends_with(".coffer")).count();
    let mut said = String::new();
    for night in 0..9 {
        let out = Command::new(bin())
            .args(["backup", "-c", c])
            .env("TMPDIR", d)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "night {night}: {}", stderr(&out));
        said = stderr(&out);
    }
    assert_eq!(sealed(), 7, "{:?}", held());
    assert!(
        !held().iter().any(|f| f.ends_with(".partial")),
        "{:?}",
        held()
    );
    let listed = ok(&["list", "-c", c]);
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert_eq!(listed.matches("complete").count(), 7, "{listed}");
    ok(&["verify", "-c", c]);
    let k = key.to_str().unwrap();
    ok(&["verify", "-c", c, "-i", k, "latest"]);
    let member = format!("files/data{}", data.display());
    let out = ok(&[
        "restore", "-c", c, "-i", k, "latest", "--stdout", "--member", &member,
    ]);
    assert!(
        out.stdout == fs::read(&data).unwrap(),
        "the restored file differs"
    );
    ok(&["prune", "-c", c, "--keep-last", "3"]);
    assert_eq!(sealed(), 3, "{:?}", held());
    ok(&["verify", "-c", c]);
    said
}
