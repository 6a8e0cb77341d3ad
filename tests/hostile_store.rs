//! The backup server is hostile: whatever it hands the restore side — a
//! substituted or rolled-back file, a future-dated sidecar, a cut stream, a
//! hidden or forked history — is refused before anything is written or
//! deleted, when the backup host signs its sidecars. Each test plays the
//! attacker with write access to the store and only the public keys.
#![allow(clippy::too_many_lines)] // attack scenarios read best in one piece

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::*;

struct Env {
    dir: tempfile::TempDir,
}

const SECRET: &str = "the genuine data";

impl Env {
    /// A job with a backup key, a signing key, one file to back up and a
    /// local store: the store directory is what the attacker controls.
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        ok(&[
            "keygen",
            "--type",
            "age",
            "--out",
            p.join("backup.key").to_str().unwrap(),
        ]);
        ok(&[
            "keygen",
            "--type",
            "signing",
            "--out",
            p.join("sign.key").to_str().unwrap(),
        ]);
        fs::create_dir(p.join("data")).unwrap();
        fs::write(p.join("data/file.txt"), SECRET).unwrap();
        Env { dir }
    }
    fn p(&self) -> &Path {
        self.dir.path()
    }
    fn store(&self) -> PathBuf {
        self.p().join("store")
    }
    /// The job's configuration; `signed` adds the signing key pair.
    fn config(&self, file: &str, signed: bool, extra: &str) -> String {
        let p = self.p();
        let signing = if signed {
            "signing_key = \"sign.key\"\nsigning_public_key = \"sign.key.pub\"\n"
        } else {
            ""
        };
        let path = p.join(file);
        fs::write(
            &path,
            format!(
                "[job]\nname = \"prod\"\nrecipients = [\"backup.key.pub\"]\nlock_file = \"{lock}\"\n\
                 {signing}{unsigned}{extra}\n\
                 [[source]]\ntype = \"files\"\nname = \"data\"\npaths = [\"{data}\"]\n\
                 [[store]]\ntype = \"local\"\npath = \"{store}\"\n",
                lock = p.join("lock").display(),
                data = p.join("data").display(),
                store = self.store().display(),
                unsigned = unsigned_unless_signed(&format!("{signing}{extra}")),
            ),
        )
        .unwrap();
        chmod(&path, 0o600);
        path.display().to_string()
    }
    fn key(&self) -> String {
        self.p().join("backup.key").display().to_string()
    }
    /// The job with two local stores, `first` (the usual one) and
    /// `second`; returns the config and the second store's directory.
    fn two_stores(&self, file: &str, signed: bool) -> (String, PathBuf) {
        let base = self.config(&format!("base-{file}"), signed, "");
        let second = self.p().join(format!("second-{file}"));
        let path = self.p().join(file);
        fs::write(
            &path,
            format!(
                "{}[[store]]\ntype = \"local\"\nname = \"second\"\npath = \"{}\"\n",
                fs::read_to_string(&base).unwrap().replace(
                    "[[store]]\ntype = \"local\"\n",
                    "[[store]]\ntype = \"local\"\nname = \"first\"\n"
                ),
                second.display()
            ),
        )
        .unwrap();
        chmod(&path, 0o600);
        (path.display().to_string(), second)
    }
    /// `coffer restore -c CFG -i KEY WHAT --to TO [EXTRA…]`.
    fn restore(&self, cfg: &str, what: &str, to: &Path, extra: &[&str]) -> std::process::Output {
        let key = self.key();
        let mut args = vec![
            "restore",
            "-c",
            cfg,
            "-i",
            &key,
            what,
            "--to",
            to.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        coffer(&args)
    }
    /// Backups in the store, oldest first by name.
    fn names(&self) -> Vec<String> {
        sealed_in(&self.store())
    }
    fn file(&self, name: &str, suffix: &str) -> PathBuf {
        self.store().join(format!("{name}{suffix}"))
    }
    /// Changes one byte in the middle of a backup's sealed file: the same
    /// size, another SHA-256.
    fn damage(&self, name: &str) {
        let path = self.file(name, ".coffer");
        let mut sealed = fs::read(&path).unwrap();
        let mid = sealed.len() / 2;
        sealed[mid] ^= 0x01;
        fs::write(&path, sealed).unwrap();
    }
    /// A backup anyone with the public key can make: same job, same
    /// recipient, other content, no signing key. Returns its files' bytes
    /// (sealed file, sidecar JSON).
    fn forge(&self, content: &str) -> (Vec<u8>, serde_json::Value) {
        self.forge_bytes(content.as_bytes())
    }
    /// A forgery of exactly the genuine sealed file's size, for a genuine
    /// backup made with `compression = "none"`: first a content length that
    /// gives the same payload (tar blocks), then tries until the header
    /// (whose age stanza carries random-length grease; a few dozen tries on
    /// average) is as long too. Only
    /// the signed SHA-256 can then tell the files apart.
    fn forge_same_size(&self, genuine: &Path) -> (Vec<u8>, serde_json::Value) {
        let sizes = |f: &Path| {
            let out = ok(&["inspect", "--json", f.to_str().unwrap()]);
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            (
                v["header_bytes"].as_u64().unwrap(),
                v["payload_bytes"].as_u64().unwrap(),
            )
        };
        let (header, payload) = sizes(genuine);
        let tmp = self.p().join("forged.coffer");
        for blocks in 0..4 {
            for _ in 0..3000 {
                let (sealed, sidecar) = self.forge_with(&pattern(16 + 512 * blocks, 99), "none");
                fs::write(&tmp, &sealed).unwrap();
                let (h, p) = sizes(&tmp);
                if p != payload {
                    break;
                }
                if h == header {
                    return (sealed, sidecar);
                }
            }
        }
        panic!("no forgery as long as {}", genuine.display());
    }
    fn forge_bytes(&self, content: &[u8]) -> (Vec<u8>, serde_json::Value) {
        self.forge_with(content, "zstd")
    }
    fn forge_with(&self, content: &[u8], compression: &str) -> (Vec<u8>, serde_json::Value) {
        let f = self.p().join("forger");
        fs::create_dir_all(f.join("data")).unwrap();
        fs::write(f.join("data/file.txt"), content).unwrap();
        let cfg = f.join("forger.toml");
        fs::write(
            &cfg,
            format!(
                "[job]\nname = \"prod\"\nrecipients = [\"{pubkey}\"]\nlock_file = \"{lock}\"\n\
                 compression = \"{compression}\"\nunsigned = true\n\
                 [[source]]\ntype = \"files\"\nname = \"data\"\npaths = [\"{data}\"]\n\
                 [[store]]\ntype = \"local\"\npath = \"{store}\"\n",
                pubkey = self.p().join("backup.key.pub").display(),
                lock = f.join("lock").display(),
                data = f.join("data").display(),
                store = f.join("store").display(),
            ),
        )
        .unwrap();
        chmod(&cfg, 0o600);
        let _ = fs::remove_dir_all(f.join("store"));
        ok(&["backup", "-c", cfg.to_str().unwrap()]);
        let sealed = fs::read_dir(f.join("store"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|x| x == "coffer"))
            .unwrap();
        let json: serde_json::Value =
            serde_json::from_slice(&fs::read(format!("{}.json", sealed.display())).unwrap())
                .unwrap();
        (fs::read(&sealed).unwrap(), json)
    }
    /// Plants a forged backup under `name`, its sidecar rewritten to match.
    fn plant(
        &self,
        name: &str,
        sealed: &[u8],
        mut sidecar: serde_json::Value,
        created: Option<&str>,
    ) {
        sidecar["name"] = name.into();
        if let Some(c) = created {
            sidecar["created"] = c.into();
        }
        fs::write(self.file(name, ".coffer"), sealed).unwrap();
        fs::write(
            self.file(name, ".coffer.json"),
            serde_json::to_vec_pretty(&sidecar).unwrap(),
        )
        .unwrap();
    }
    fn restored(&self, dir: &Path) -> Option<String> {
        restored_from(dir, &self.p().join("data/file.txt"))
    }
    /// A forgery's file, restored under the forger's path.
    fn restored_forgery(&self, dir: &Path) -> Option<String> {
        restored_from(dir, &self.p().join("forger/data/file.txt"))
    }
}

/// The backups whose sealed file is in `dir`, by name.
fn sealed_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            e.unwrap()
                .file_name()
                .into_string()
                .unwrap()
                .strip_suffix(".coffer")
                .map(str::to_owned)
        })
        .collect();
    v.sort();
    v
}

fn restored_from(dir: &Path, data: &Path) -> Option<String> {
    let rel = data.strip_prefix("/").unwrap();
    fs::read_to_string(dir.join("files/data").join(rel)).ok()
}

fn is_empty_or_absent(dir: &Path) -> bool {
    fs::read_dir(dir).map_or(true, |mut d| d.next().is_none())
}

#[test]
fn a_forgery_under_the_newest_name_is_refused_before_anything_is_written() {
    let e = Env::new();
    let signed = e.config("signed.toml", true, "");
    let unsigned = e.config("unsigned.toml", false, "");
    ok(&["backup", "-c", &signed]);
    ok(&["backup", "-c", &signed]);
    let newest = e.names().pop().unwrap();
    let (sealed, sidecar) = e.forge("the attacker's data");
    // The genuine signature stays beside the forged sidecar; removing it
    // makes the backup unsigned: both are refused.
    e.plant(&newest, &sealed, sidecar, None);
    {
        let what = newest.as_str();
        let to = e.p().join(format!("out-{what}"));
        let out = e.restore(&signed, what, &to, &[]);
        assert_eq!(code(&out), 3, "{what}: {}", stderr(&out));
        assert!(stderr(&out).contains("signature"), "{}", stderr(&out));
        assert!(is_empty_or_absent(&to), "{what}: something was written");
    }
    fs::remove_file(e.file(&newest, ".coffer.json.minisig")).unwrap();
    let to = e.p().join("out-unsigned");
    let out = e.restore(&signed, &newest, &to, &[]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert!(stderr(&out).contains("unsigned"), "{}", stderr(&out));
    assert!(is_empty_or_absent(&to));
    // `latest` is the newest validly signed backup: the older genuine one,
    // and the forgery passed over is named.
    let to = e.p().join("out-latest");
    let out = e.restore(&signed, "latest", &to, &[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("passed over {newest}")),
        "{}",
        stderr(&out)
    );
    assert_eq!(e.restored(&to).as_deref(), Some(SECRET));
    // Keyed verify never decrypts the forgery, and says why.
    let out = coffer(&["verify", "-c", &signed, "-i", &e.key(), &newest]);
    assert_eq!(code(&out), 3);
    assert!(
        stderr(&out).contains("no copy can be trusted"),
        "{}",
        stderr(&out)
    );
    let out = coffer(&["verify", "-c", &signed, "-i", &e.key()]);
    assert_eq!(code(&out), 3);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("not decrypted"), "{text}");
    // A forgery consistent inside (under the name it was made with) passes
    // every check but the signature: without a signing public key it is
    // restored, with a warning that nothing vouched for its origin.
    let (sealed, sidecar) = e.forge("the attacker's data");
    let own = sidecar["name"].as_str().unwrap().to_owned();
    e.plant(&own, &sealed, sidecar, None);
    let to = e.p().join("out-no-key");
    let out = e.restore(&unsigned, &own, &to, &[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not authenticated"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        e.restored_forgery(&to).as_deref(),
        Some("the attacker's data")
    );
    let to = e.p().join("out-own-signed");
    let out = e.restore(&signed, &own, &to, &[]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert!(is_empty_or_absent(&to));
}

#[test]
fn a_rollback_under_the_newest_name_is_refused() {
    let e = Env::new();
    let signed = e.config("signed.toml", true, "");
    ok(&["backup", "-c", &signed]);
    fs::write(e.p().join("data/file.txt"), "newer data").unwrap();
    ok(&["backup", "-c", &signed]);
    let names = e.names();
    let (old, new) = (&names[0], &names[1]);
    // The server serves the old sealed file (a complete, valid file) under
    // the new name, keeping the new, genuinely signed sidecar.
    fs::copy(e.file(old, ".coffer"), e.file(new, ".coffer")).unwrap();
    for what in ["latest", new.as_str()] {
        let to = e.p().join(format!("out-{what}"));
        let out = e.restore(&signed, what, &to, &[]);
        assert!(
            is_empty_or_absent(&to) || e.restored(&to).as_deref() == Some(SECRET),
            "{what}"
        );
        if what == "latest" {
            // The newest name is passed over, and said to be.
            assert_eq!(code(&out), 0, "{}", stderr(&out));
            assert!(
                stderr(&out).contains(&format!("passed over {new}")),
                "{}",
                stderr(&out)
            );
            assert_eq!(e.restored(&to).as_deref(), Some(SECRET));
        } else {
            assert_eq!(code(&out), 3, "{}", stderr(&out));
            assert!(is_empty_or_absent(&to), "a rolled-back file was extracted");
        }
    }
    // The same three files renamed, downloaded and restored as a FILE: the
    // signed sidecar names the old backup, not the file.
    let dl = e.p().join("dl");
    fs::create_dir(&dl).unwrap();
    for suffix in [".coffer", ".coffer.json", ".coffer.json.minisig"] {
        fs::copy(e.file(old, suffix), dl.join(format!("{new}{suffix}"))).unwrap();
    }
    let file = dl.join(format!("{new}.coffer"));
    let pubkey = e.p().join("sign.key.pub");
    let to = e.p().join("out-file");
    let out = coffer(&[
        "restore",
        "-i",
        &e.key(),
        "--signing-key",
        pubkey.to_str().unwrap(),
        file.to_str().unwrap(),
        "--to",
        to.to_str().unwrap(),
    ]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert!(stderr(&out).contains("describes"), "{}", stderr(&out));
    assert!(is_empty_or_absent(&to));
}

#[test]
fn a_same_size_damaged_newest_copy_is_passed_over_for_latest() {
    // The rollback above is caught by its size only when the two files'
    // sizes differ, which is chance. Here the newest sealed file keeps its
    // size and loses its hash (one byte changed): `latest` must pass over it
    // exactly as it does a file whose size gives it away, and by name it is
    // refused.
    let e = Env::new();
    let signed = e.config("signed.toml", true, "");
    ok(&["backup", "-c", &signed]);
    let only = e.names().pop().unwrap();
    // With nothing older to turn to, the damage is what is reported (exit
    // 3), not "no backup" (exit 2).
    e.damage(&only);
    let to = e.p().join("out-only");
    let out = e.restore(&signed, "latest", &to, &[]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert!(stderr(&out).contains("BLAKE3"), "{}", stderr(&out));
    assert!(is_empty_or_absent(&to));
    fs::remove_file(e.file(&only, ".coffer")).unwrap();
    fs::remove_file(e.file(&only, ".coffer.json")).unwrap();
    fs::remove_file(e.file(&only, ".coffer.json.minisig")).unwrap();

    ok(&["backup", "-c", &signed]);
    fs::write(e.p().join("data/file.txt"), "newer data").unwrap();
    ok(&["backup", "-c", &signed]);
    let names = e.names();
    let new = names.last().unwrap();
    e.damage(new);
    let to = e.p().join("out-latest");
    let out = e.restore(&signed, "latest", &to, &[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("passed over {new}")),
        "{}",
        stderr(&out)
    );
    assert_eq!(e.restored(&to).as_deref(), Some(SECRET));
    // The summary, which is what a script or a tired reader keeps, says so
    // too.
    assert!(
        stderr(&out).contains(&format!("NOT the newest: passed over {new}")),
        "{}",
        stderr(&out)
    );
    let to = e.p().join("out-named");
    let out = e.restore(&signed, new, &to, &[]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert!(is_empty_or_absent(&to));
}

#[test]
fn a_copy_the_signed_sidecar_does_not_vouch_for_never_reaches_the_private_key() {
    // The identity is an age plugin's, standing for a hardware token or a
    // passphrase: the plugin leaves a mark whenever coffer asks it to unwrap
    // a stanza. A copy whose hash the signed sidecar refuses must be refused
    // before that: a forger must not get a token touch, a passphrase prompt,
    // a plugin run on a stanza of their choosing, or an RSA decryption.
    let e = Env::new();
    let signed = e.config("signed.toml", true, "");
    ok(&["backup", "-c", &signed]);
    let name = e.names().pop().unwrap();
    let plugins = e.p().join("bin");
    fs::create_dir(&plugins).unwrap();
    let mark = e.p().join("plugin-ran");
    let plugin = plugins.join("age-plugin-tripwire");
    fs::write(
        &plugin,
        format!("#!/bin/sh\ntouch '{}'\nexit 1\n", mark.display()),
    )
    .unwrap();
    chmod(&plugin, 0o755);
    let identity = e.p().join("token.key");
    fs::write(
        &identity,
        format!(
            "{}\n",
            age::plugin::Identity::default_for_plugin("tripwire").unwrap()
        ),
    )
    .unwrap();
    chmod(&identity, 0o600);
    let path = format!(
        "{}:{}",
        plugins.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let restore = |to: &str| {
        std::process::Command::new(bin())
            .env("PATH", &path)
            .stdin(std::process::Stdio::null())
            .args(["restore", "-c", &signed, "-i"])
            .arg(&identity)
            .arg(&name)
            .arg("--to")
            .arg(e.p().join(to))
            .output()
            .unwrap()
    };
    // The genuine copy does reach the plugin (which fails): the mark works.
    let out = restore("out-genuine");
    assert_ne!(code(&out), 0, "{}", stderr(&out));
    assert!(mark.exists(), "the plugin never ran: {}", stderr(&out));
    fs::remove_file(&mark).unwrap();
    e.damage(&name);
    let out = restore("out-damaged");
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert!(stderr(&out).contains("BLAKE3"), "{}", stderr(&out));
    assert!(
        !mark.exists(),
        "the private key was asked to unwrap a copy the sidecar refuses"
    );
}

#[test]
fn a_fallback_that_meets_another_failure_reports_the_newest_backups() {
    // The newest backup is damaged; the one before was made for a key that
    // has since been retired. The operator, holding the current key, must
    // hear what is wrong with the backup asked for (exit 3), not be sent
    // looking for the old key (exit 4).
    let e = Env::new();
    let signed = e.config("signed.toml", true, "");
    ok(&["backup", "-c", &signed]);
    ok(&[
        "keygen",
        "--type",
        "age",
        "--out",
        e.p().join("new.key").to_str().unwrap(),
    ]);
    let rotated = e.p().join("rotated.toml");
    fs::write(
        &rotated,
        fs::read_to_string(&signed)
            .unwrap()
            .replace("backup.key.pub", "new.key.pub"),
    )
    .unwrap();
    chmod(&rotated, 0o600);
    let rotated = rotated.display().to_string();
    ok(&["backup", "-c", &rotated]);
    let newest = e.names().pop().unwrap();
    e.damage(&newest);
    let to = e.p().join("out");
    let new_key = e.p().join("new.key");
    let out = coffer(&[
        "restore",
        "-c",
        &rotated,
        "-i",
        new_key.to_str().unwrap(),
        "latest",
        "--to",
        to.to_str().unwrap(),
    ]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("error: {newest}")),
        "{}",
        stderr(&out)
    );
    assert!(is_empty_or_absent(&to));
}

#[test]
fn an_unsigned_rollback_is_refused_before_a_byte_is_written() {
    // Without signatures the server can rewrite a sidecar at will: here it
    // serves the older genuine sealed file under the newest name, with the
    // sidecar's size and SHA-256 made to match. The header, authenticated
    // with the data key the server cannot reach, names the older backup; the
    // first pass must catch that, before anything reaches stdout, where
    // nothing can be taken back.
    let e = Env::new();
    let unsigned = e.config("unsigned.toml", false, "");
    ok(&["backup", "-c", &unsigned]);
    fs::write(e.p().join("data/file.txt"), "newer data").unwrap();
    ok(&["backup", "-c", &unsigned]);
    let names = e.names();
    let (old, new) = (&names[0], &names[1]);
    let sealed = fs::read(e.file(old, ".coffer")).unwrap();
    let mut sidecar: serde_json::Value =
        serde_json::from_slice(&fs::read(e.file(new, ".coffer.json")).unwrap()).unwrap();
    vouch_for(&mut sidecar, &e.file(old, ".coffer"));
    e.plant(new, &sealed, sidecar, None);
    let key = e.key();
    let out = coffer(&["restore", "-c", &unsigned, "-i", &key, new, "--stdout"]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("the header names backup {old}")),
        "{}",
        stderr(&out)
    );
    assert!(
        out.stdout.is_empty(),
        "{} bytes reached stdout",
        out.stdout.len()
    );
    let to = e.p().join("out");
    let out = e.restore(&unsigned, new, &to, &[]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert!(is_empty_or_absent(&to), "a rolled-back file was extracted");
    // Keyless verify reads the header's name too (plain text until a key
    // checks it, but a rollback that did not rewrite it is caught).
    let out = coffer(&["verify", "-c", &unsigned, new]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("the header names backup"), "{said}");
}

#[test]
fn a_same_size_forgery_under_a_signed_sidecar_is_never_decrypted_nor_written() {
    let e = Env::new();
    let signed = e.config("signed.toml", true, "compression = \"none\"");
    ok(&["backup", "-c", &signed]);
    let name = e.names().pop().unwrap();
    let (sealed, _) = e.forge_same_size(&e.file(&name, ".coffer"));
    fs::write(e.file(&name, ".coffer"), &sealed).unwrap();
    // Extracting into a directory, even keeping partial files, writes nothing.
    let to = e.p().join("out");
    let out = e.restore(&signed, &name, &to, &["--keep-partial"]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert!(is_empty_or_absent(&to), "forged plaintext was written");
    // Keyed verify checks the hash before it decrypts: the walk never runs.
    let out = coffer(&["verify", "-c", &signed, "-i", &e.key(), "--json"]);
    assert_eq!(code(&out), 3);
    let reports: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let mine = reports.iter().find(|r| r["name"] == name.as_str()).unwrap();
    let problems = mine["problems"].to_string();
    assert!(problems.contains("BLAKE3"), "{problems}");
    assert!(
        !problems.contains("chunk") && !problems.contains("member"),
        "{problems}"
    );
}

#[test]
fn backdated_store_times_never_evict_signed_backups() {
    let e = Env::new();
    let signed = e.config("signed.toml", true, "keep_last = 2");
    for _ in 0..4 {
        ok(&["backup", "-c", &signed]);
    }
    // keep_last = 2 left two; the server backdates both sidecars' mtimes.
    let names = e.names();
    assert_eq!(names.len(), 2);
    for n in &names {
        sh(
            &format!(
                "touch -d 2001-01-01 '{}'",
                e.file(n, ".coffer.json").display()
            ),
            e.p(),
        );
    }
    ok(&["prune", "-c", &signed]);
    assert_eq!(e.names(), names, "a backdated signed backup was deleted");
}

#[test]
fn refill_never_spreads_a_forgery_between_stores() {
    // Unsigned job, two stores: a forgery planted in one (consistent inside,
    // under its own name) must not be copied into the other by a later run
    // — there it would push genuine backups out.
    let e = Env::new();
    let unsigned = e.config("unsigned.toml", false, "keep_last = 2");
    let second = e.p().join("store2");
    let two = e.p().join("two.toml");
    fs::write(
        &two,
        fs::read_to_string(&unsigned).unwrap()
            + &format!(
                "[[store]]\ntype = \"local\"\nname = \"second\"\npath = \"{}\"\n",
                second.display()
            ),
    )
    .unwrap();
    chmod(&two, 0o600);
    let two = two.display().to_string();
    ok(&["backup", "-c", &two]);
    // (A second later, so the forgery's name is its own.)
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let (sealed, sidecar) = e.forge("the attacker's data");
    let own = sidecar["name"].as_str().unwrap().to_owned();
    e.plant(&own, &sealed, sidecar, None);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    ok(&["backup", "-c", &two]);
    let in_second: Vec<String> = fs::read_dir(&second)
        .unwrap()
        .map(|f| f.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        !in_second.iter().any(|f| f.starts_with(&own)),
        "{in_second:?}"
    );
    assert_eq!(in_second.len(), 4, "{in_second:?}");
}

#[test]
fn future_dated_forgeries_never_become_latest_nor_evict_genuine_backups() {
    let e = Env::new();
    let unsigned = e.config("unsigned.toml", false, "keep_last = 2");
    let signed = e.config("signed.toml", true, "keep_last = 2");
    ok(&["backup", "-c", &signed]);
    ok(&["backup", "-c", &signed]);
    let genuine = e.names();
    let (sealed, sidecar) = e.forge("the attacker's data");
    // keep_last forgeries, dated in the future so that they sort newest.
    e.plant(
        "prod-20991231T000000Z",
        &sealed,
        sidecar.clone(),
        Some("2099-12-31T00:00:00.000Z"),
    );
    e.plant(
        "prod-20991231T000001Z",
        &sealed,
        sidecar.clone(),
        Some("2099-12-31T00:00:01.000Z"),
    );
    // And forgeries under names no run makes, dated now.
    e.plant("prod-latest", &sealed, sidecar.clone(), None);
    e.plant("zzz-20261123T000000Z", &sealed, sidecar, None);
    for cfg in [&unsigned, &signed] {
        let to = e.p().join(format!("out-{}", cfg.len()));
        let out = e.restore(cfg, "latest", &to, &[]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        assert_eq!(e.restored(&to).as_deref(), Some(SECRET), "{cfg}");
        let out = coffer(&["prune", "-c", cfg]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        let printed = String::from_utf8_lossy(&out.stdout);
        assert!(
            printed.contains("ignore prod-20991231T000000Z"),
            "{printed}"
        );
        assert!(printed.contains("ignore prod-latest"), "{printed}");
        for g in &genuine {
            assert!(e.file(g, ".coffer").exists(), "{g} was deleted: {printed}");
            assert!(e.file(g, ".coffer.json").exists());
        }
    }
    // The backup host's own retention believes them no more.
    ok(&["backup", "-c", &signed]);
    // keep_last = 2 holds exactly the two newest genuine backups.
    let left: Vec<String> = e
        .names()
        .into_iter()
        .filter(|n| n.starts_with("prod-2026"))
        .collect();
    assert_eq!(left.len(), 2, "{left:?}");
    // Verify names each forgery.
    let out = coffer(&["verify", "-c", &signed]);
    assert_eq!(code(&out), 3);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("in the future"), "{text}");
    assert!(text.contains("not a name a run"), "{text}");
}

#[test]
fn verify_reads_each_sidecar_once() {
    // A server that answers a second read differently (the signature checked
    // over one answer, size and hash taken from another) gets one read only.
    let e = Env::new();
    let signed = e.config("signed.toml", true, "");
    ok(&["backup", "-c", &signed]);
    let name = e.names().pop().unwrap();
    let trace = e.p().join("trace");
    let out = std::process::Command::new("strace")
        .args(["-f", "-e", "trace=open,openat", "-o"])
        .arg(&trace)
        .arg(bin())
        .args(["verify", "-c", &signed])
        .output()
        .expect("strace");
    assert!(out.status.success(), "{}", stderr(&out));
    let opened = fs::read_to_string(&trace)
        .unwrap()
        .lines()
        .filter(|l| l.contains(&format!("{name}.coffer.json\"")))
        .count();
    assert_eq!(opened, 1, "the sidecar was opened {opened} times");
}

#[test]
fn the_ledger_shows_hidden_forked_and_stale_histories() {
    let e = Env::new();
    let signed = e.config("signed.toml", true, "");
    for _ in 0..4 {
        ok(&["backup", "-c", &signed]);
    }
    let out = coffer(&["verify", "-c", &signed]);
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stdout));
    assert!(String::from_utf8_lossy(&out.stdout).contains("ledger"));
    let names = e.names();
    // The server hides the third backup.
    let hide = e.p().join("hidden");
    fs::create_dir(&hide).unwrap();
    for suffix in [".coffer", ".coffer.json", ".coffer.json.minisig"] {
        fs::rename(
            e.file(&names[2], suffix),
            hide.join(format!("{}{suffix}", names[2])),
        )
        .unwrap();
    }
    let out = coffer(&["verify", "-c", &signed]);
    assert_eq!(code(&out), 3);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("missing: ledger entries #3"), "{text}");
    // The server also hides the newest; the next run chains to what it sees,
    // so when the server shows everything again the ledger has forked.
    for suffix in [".coffer", ".coffer.json", ".coffer.json.minisig"] {
        fs::rename(
            e.file(&names[3], suffix),
            hide.join(format!("{}{suffix}", names[3])),
        )
        .unwrap();
    }
    // (A second later: a new name, as a nightly run would have.)
    std::thread::sleep(std::time::Duration::from_millis(1100));
    ok(&["backup", "-c", &signed]);
    for n in &names[2..] {
        for suffix in [".coffer", ".coffer.json", ".coffer.json.minisig"] {
            fs::rename(hide.join(format!("{n}{suffix}")), e.file(n, suffix)).unwrap();
        }
    }
    let out = coffer(&["verify", "-c", &signed]);
    assert_eq!(code(&out), 3);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("forked"), "{text}");
    // A store whose newest backup is older than max_age fails: with
    // max_age_hours = 0 every backup is too old.
    let stale = e.config("stale.toml", true, "max_age_hours = 0");
    std::thread::sleep(std::time::Duration::from_millis(20));
    let out = coffer(&["verify", "-c", &stale]);
    assert_eq!(code(&out), 3);
    assert!(String::from_utf8_lossy(&out.stdout).contains("stale: the newest backup"));
}

/// An unsigned job cannot tell its own ledger entries from ones a store
/// planted: it goes on from its own record of the last entry it wrote, and
/// without one (a first run, a lost record) takes no number past 2^32 from
/// a store, so a planted entry at the end of the numbers cannot pin every
/// later run to one number (a fork, every night).
#[test]
fn an_unsigned_job_numbers_its_ledger_from_its_own_record_not_a_stores_claim() {
    let e = Env::new();
    let unsigned = e.config("unsigned.toml", false, "");
    let seq_of = |name: &str| -> u64 {
        let j: serde_json::Value =
            serde_json::from_slice(&fs::read(e.file(name, ".coffer.json")).unwrap()).unwrap();
        j["seq"].as_u64().unwrap()
    };
    let plant = |from: &str, seq: u64| {
        let name = format!("{from}-9");
        fs::copy(e.file(from, ".coffer"), e.file(&name, ".coffer")).unwrap();
        let mut j: serde_json::Value =
            serde_json::from_slice(&fs::read(e.file(from, ".coffer.json")).unwrap()).unwrap();
        j["name"] = name.clone().into();
        j["seq"] = seq.into();
        fs::write(
            e.file(&name, ".coffer.json"),
            serde_json::to_vec(&j).unwrap(),
        )
        .unwrap();
        name
    };
    let night = || {
        std::thread::sleep(std::time::Duration::from_millis(1100));
        ok(&["backup", "-c", &unsigned]);
        let names = e.names();
        names
            .iter()
            .filter(|n| !n.ends_with("-9"))
            .max()
            .unwrap()
            .clone()
    };
    night();
    let second = night();
    assert_eq!(seq_of(&second), 2);
    let planted = plant(&second, u64::MAX - 1);
    let third = night();
    assert_eq!(seq_of(&third), 3, "took the number from {planted}");
    // The record lost: the stores' entries, but none past 2^32.
    fs::remove_file(e.p().join("lock.ledger")).unwrap();
    let fourth = night();
    assert_eq!(seq_of(&fourth), 4);
}

#[test]
fn a_forced_restore_destroys_nothing_before_the_whole_file_is_authenticated() {
    let e = Env::new();
    // Big enough for several chunks, incompressible, so a cut lands after
    // the file's member has begun.
    fs::write(e.p().join("data/file.txt"), pattern(600_000, 7)).unwrap();
    let unsigned = e.config("unsigned.toml", false, "");
    ok(&["backup", "-c", &unsigned]);
    let name = e.names().pop().unwrap();
    let to = e.p().join("out");
    ok(&[
        "restore",
        "-c",
        &unsigned,
        "-i",
        &e.key(),
        &name,
        "--to",
        to.to_str().unwrap(),
    ]);
    let rel = e.p().join("data/file.txt");
    let restored = to.join("files/data").join(rel.strip_prefix("/").unwrap());
    fs::write(&restored, "the operator's current file").unwrap();
    // The server cuts the stream three chunks (64 KiB + a 16-byte tag
    // each) before its end, well after the file's member has begun.
    let sealed = fs::read(e.file(&name, ".coffer")).unwrap();
    let chunk = 65_536 + 16;
    let cut = e.p().join("cut.coffer");
    fs::write(&cut, &sealed[..sealed.len() - 3 * chunk]).unwrap();
    let out = coffer(&[
        "restore",
        "-i",
        &e.key(),
        cut.to_str().unwrap(),
        "--to",
        to.to_str().unwrap(),
        "--force",
        "--trust-unsigned",
    ]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert_eq!(
        fs::read_to_string(&restored).unwrap(),
        "the operator's current file",
        "an existing file was replaced by an unauthenticated stream"
    );
}

#[test]
fn store_file_names_never_reach_the_terminal_raw() {
    // A server that names a file with an escape sequence could overwrite a
    // FAIL line on the operator's terminal.
    let e = Env::new();
    let signed = e.config("signed.toml", true, "");
    ok(&["backup", "-c", &signed]);
    let evil = "prod-\u{1b}[2K\u{1b}[1Aok    all good";
    fs::write(e.store().join(format!("{evil}.coffer")), b"x").unwrap();
    fs::write(e.store().join(format!("{evil}.coffer.json")), b"{}").unwrap();
    for args in [
        vec!["list", "-c", &signed],
        vec!["verify", "-c", &signed],
        vec!["prune", "-c", &signed, "--dry-run"],
    ] {
        let out = coffer(&args);
        for stream in [&out.stdout, &out.stderr] {
            assert!(
                !stream.contains(&0x1b),
                "{args:?}: a raw ESC reached the terminal"
            );
        }
        if args[0] != "prune" {
            // Shown, escaped (prune ignores it silently: no name a run makes).
            let all = String::from_utf8_lossy(&out.stdout).into_owned() + &stderr(&out);
            assert!(all.contains("\\u{1b}"), "{args:?}: {all}");
        }
    }
}

#[test]
fn a_damaged_copy_in_one_store_falls_back_to_the_same_backup_in_another() {
    // One store's copy was tampered with (same size, so it is listed as
    // complete); the other store holds the same backup intact. The restore
    // must not be lost: it says what it found and uses the good copy.
    let e = Env::new();
    let signed = e.config("signed.toml", true, "");
    let second = e.p().join("store2");
    let two = e.p().join("two.toml");
    fs::write(
        &two,
        fs::read_to_string(&signed).unwrap()
            + &format!(
                "[[store]]\ntype = \"local\"\nname = \"second\"\npath = \"{}\"\n",
                second.display()
            ),
    )
    .unwrap();
    chmod(&two, 0o600);
    let two = two.display().to_string();
    ok(&["backup", "-c", &two]);
    let name = e.names().pop().unwrap();
    let mut bytes = fs::read(e.file(&name, ".coffer")).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    fs::write(e.file(&name, ".coffer"), &bytes).unwrap();
    for what in ["latest", name.as_str()] {
        let to = e.p().join(format!("out-{what}"));
        let out = e.restore(&two, what, &to, &[]);
        assert_eq!(code(&out), 0, "{what}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("trying the same backup in another store"),
            "{}",
            stderr(&out)
        );
        assert!(stderr(&out).contains("BLAKE3"), "{}", stderr(&out));
        assert_eq!(e.restored(&to).as_deref(), Some(SECRET));
    }
    // With only the damaged store, the restore fails (exit 3) and writes nothing.
    let to = e.p().join("out-one");
    let out = e.restore(&signed, &name, &to, &[]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert!(is_empty_or_absent(&to));
}

/// Sidecars vouch for the sealed file with its BLAKE3 from coffer-sidecar/3
/// on (its SHA-256 stays, for `sha256sum`); sidecars of earlier versions
/// carry only the SHA-256, and are still read and checked by it. Either way
/// a changed byte is caught, by keyless verify and by restore alike.
#[test]
fn sidecars_are_checked_by_blake3_and_earlier_ones_by_sha256() {
    let e = Env::new();
    let unsigned = e.config("unsigned.toml", false, "");
    ok(&["backup", "-c", &unsigned]);
    let name = e.names().pop().unwrap();
    let sealed = e.file(&name, ".coffer");
    let sidecar_path = e.file(&name, ".coffer.json");
    let genuine: serde_json::Value =
        serde_json::from_slice(&fs::read(&sidecar_path).unwrap()).unwrap();
    assert_eq!(genuine["format"], "coffer-sidecar/3");
    assert_eq!(genuine["blake3"].as_str().unwrap(), blake3_file(&sealed));
    assert_eq!(genuine["sha256"].as_str().unwrap(), sha256_file(&sealed));
    let verify = || coffer(&["verify", "-c", &unsigned]);
    let said = |out: &std::process::Output| {
        format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(out))
    };

    // A right SHA-256 does not make up for a wrong BLAKE3: the BLAKE3 is
    // what a v3 sidecar is checked by.
    let mut wrong = genuine.clone();
    wrong["blake3"] = "00".repeat(32).into();
    fs::write(&sidecar_path, serde_json::to_vec(&wrong).unwrap()).unwrap();
    let out = verify();
    assert_eq!(code(&out), 3, "{}", said(&out));
    assert!(said(&out).contains("BLAKE3"), "{}", said(&out));

    // The same backup under a coffer-sidecar/2, as earlier versions wrote.
    let mut v2 = genuine.clone();
    v2["format"] = "coffer-sidecar/2".into();
    v2.as_object_mut().unwrap().remove("blake3");
    fs::write(&sidecar_path, serde_json::to_vec(&v2).unwrap()).unwrap();
    let out = verify();
    assert_eq!(code(&out), 0, "{}", said(&out));
    let to = e.p().join("out-v2");
    let out = e.restore(&unsigned, &name, &to, &[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(e.restored(&to).as_deref(), Some(SECRET));

    // One changed byte: caught by the SHA-256, nothing restored.
    e.damage(&name);
    let out = verify();
    assert_eq!(code(&out), 3, "{}", said(&out));
    assert!(said(&out).contains("SHA-256"), "{}", said(&out));
    let to = e.p().join("out-v2-damaged");
    let out = e.restore(&unsigned, &name, &to, &[]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert!(stderr(&out).contains("SHA-256"), "{}", stderr(&out));
    assert!(is_empty_or_absent(&to));

    // And under its own v3 sidecar, by the BLAKE3.
    fs::write(&sidecar_path, serde_json::to_vec(&genuine).unwrap()).unwrap();
    let out = e.restore(&unsigned, &name, &to, &[]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert!(stderr(&out).contains("BLAKE3"), "{}", stderr(&out));
    assert!(is_empty_or_absent(&to));
}

/// The backup host's own configuration names its `signing_key` and no
/// `signing_public_key`: every command that reads a store with it believes
/// only what that key signed, as `backup` always has. Unsigned forgeries a
/// write-only uploader (or the server) plants, dated newest, never push the
/// genuine backups out of `prune`, never read "complete" in `list`, and are
/// never `latest`.
#[test]
fn the_backup_hosts_own_config_believes_only_what_its_key_signed() {
    let e = Env::new();
    let host = e.config(
        "host.toml",
        false,
        "keep_last = 2\nsigning_key = \"sign.key\"",
    );
    ok(&["backup", "-c", &host]);
    ok(&["backup", "-c", &host]);
    let genuine = e.names();
    let (sealed, sidecar) = e.forge("the attacker's data");
    let soon = chrono::Utc::now() + chrono::Duration::seconds(60);
    for i in 0..2 {
        let at = soon + chrono::Duration::seconds(i);
        e.plant(
            &format!("prod-{}", at.format("%Y%m%dT%H%M%SZ")),
            &sealed,
            sidecar.clone(),
            Some(&at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        );
    }
    let forged: Vec<String> = e
        .names()
        .into_iter()
        .filter(|n| !genuine.contains(n))
        .collect();
    assert_eq!(forged.len(), 2);

    let out = coffer(&["list", "-c", &host]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    for line in listed.lines() {
        if genuine.iter().any(|g| line.contains(g.as_str())) {
            assert!(line.ends_with("complete, signed"), "{listed}");
        }
        if forged.iter().any(|f| line.contains(f.as_str())) {
            assert!(line.contains("refused: unsigned"), "{listed}");
        }
    }

    let out = coffer(&["prune", "-c", &host]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let printed = String::from_utf8_lossy(&out.stdout);
    for g in &genuine {
        assert!(e.file(g, ".coffer").exists(), "{g} was deleted: {printed}");
    }
    for f in &forged {
        assert!(printed.contains(&format!("ignore {f}")), "{printed}");
    }

    let to = e.p().join("out");
    let out = e.restore(&host, "latest", &to, &[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(e.restored(&to).as_deref(), Some(SECRET));
}

/// `--force` replaces existing files, but a restore that fails after it has
/// replaced one — a later member in the way (a symlink already in the
/// target), or an archive that fails its own checks — puts every replaced
/// file back as it was: nothing is lost to a restore that did not finish.
#[test]
fn a_forced_restore_that_fails_later_puts_back_what_it_replaced() {
    let e = Env::new();
    fs::create_dir(e.p().join("data/sub")).unwrap();
    fs::write(e.p().join("data/sub/z.txt"), "later member").unwrap();
    let unsigned = e.config("unsigned.toml", false, "");
    ok(&["backup", "-c", &unsigned]);
    let name = e.names().pop().unwrap();
    let to = e.p().join("out");
    let at = |rel: &str| {
        to.join("files/data")
            .join(e.p().join("data").join(rel).strip_prefix("/").unwrap())
    };
    fs::create_dir_all(at("")).unwrap();
    fs::write(at("file.txt"), "the operator's current file").unwrap();
    // A later member's directory is a symlink in the target: the restore
    // refuses to write through it, after file.txt's member was written.
    fs::create_dir(e.p().join("elsewhere")).unwrap();
    std::os::unix::fs::symlink(e.p().join("elsewhere"), at("sub")).unwrap();
    let out = e.restore(&unsigned, &name, &to, &["--force", "--trust-unsigned"]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(stderr(&out).contains("/sub"), "{}", stderr(&out));
    assert_eq!(
        fs::read_to_string(at("file.txt")).unwrap(),
        "the operator's current file",
        "a replaced file was lost to a restore that failed"
    );
    let names: Vec<String> = fs::read_dir(at(""))
        .unwrap()
        .map(|d| d.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|n| !n.contains("coffer-replaced")),
        "{names:?}"
    );
    assert!(fs::read_dir(e.p().join("elsewhere"))
        .unwrap()
        .next()
        .is_none());
    // Without the link in the way, --force replaces it, and leaves nothing
    // aside.
    fs::remove_file(at("sub")).unwrap();
    let out = e.restore(&unsigned, &name, &to, &["--force", "--trust-unsigned"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(e.restored(&to).as_deref(), Some(SECRET));
    assert_eq!(fs::read_to_string(at("sub/z.txt")).unwrap(), "later member");
    assert!(fs::read_dir(at("")).unwrap().all(|d| !d
        .unwrap()
        .file_name()
        .to_string_lossy()
        .contains("coffer-replaced")));
}

/// What a hostile S3 endpoint does.
#[derive(Clone, Copy)]
enum Hostile {
    /// Every ListObjectsV2 answer is truncated, with the same continuation
    /// token and a thousand fresh keys.
    CircularListing,
    /// Lists one backup; every object's body promises a megabyte and sends
    /// a byte a second.
    Trickle,
}

/// A tiny S3 endpoint on loopback, hostile as told.
fn hostile_s3(how: Hostile) -> u16 {
    use std::fmt::Write as _;
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for (n, conn) in listener.incoming().enumerate() {
            let Ok(conn) = conn else { return };
            std::thread::spawn(move || {
                let mut r = BufReader::new(conn.try_clone().unwrap());
                let mut w = conn;
                loop {
                    let mut request = String::new();
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if r.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if request.is_empty() {
                            request.clone_from(&line);
                        }
                        if line == "\r\n" {
                            break;
                        }
                    }
                    let listing = request.contains("list-type=2");
                    let body = if request.contains("uploads") {
                        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><ListMultipartUploadsResult>\
                         <Bucket>b</Bucket><IsTruncated>false</IsTruncated></ListMultipartUploadsResult>"
                            .to_owned()
                    } else if listing {
                        let (keys, truncated): (Vec<String>, bool) = match how {
                            Hostile::CircularListing => {
                                ((0..1000).map(|i| format!("x-{n}-{i}")).collect(), true)
                            }
                            Hostile::Trickle => (
                                [
                                    "prod-20261201T000000Z.coffer",
                                    "prod-20261201T000000Z.coffer.json",
                                ]
                                .map(str::to_owned)
                                .to_vec(),
                                false,
                            ),
                        };
                        let mut items = String::new();
                        for k in keys {
                            write!(
                                items,
                                "<Contents><Key>{k}</Key><Size>1000000</Size>\
                                 <LastModified>2026-12-01T00:00:00.000Z</LastModified></Contents>"
                            )
                            .unwrap();
                        }
                        format!(
                            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><ListBucketResult>\
                             <Name>b</Name><Prefix></Prefix><IsTruncated>{truncated}</IsTruncated>\
                             <NextContinuationToken>same-token</NextContinuationToken>\
                             {items}</ListBucketResult>"
                        )
                    } else {
                        // An object: a megabyte promised, a byte a second.
                        let head = "HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n";
                        if w.write_all(head.as_bytes()).is_err() {
                            return;
                        }
                        loop {
                            if w.write_all(b"{").and_then(|()| w.flush()).is_err() {
                                return;
                            }
                            std::thread::sleep(std::time::Duration::from_secs(1));
                        }
                    };
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n",
                        body.len()
                    );
                    if w.write_all(head.as_bytes()).is_err()
                        || w.write_all(body.as_bytes()).is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    port
}

/// Runs `coffer ARGS` against `hostile`'s endpoint; fails the test if it
/// is still running after `limit`.
fn against_hostile_s3(
    e: &Env,
    how: Hostile,
    timeout_secs: u32,
    args: &[&str],
    limit: std::time::Duration,
) -> std::process::Output {
    let port = hostile_s3(how);
    let creds = e.p().join("creds");
    fs::write(
        &creds,
        "[default]\naws_access_key_id = AKIAEXAMPLE\naws_secret_access_key = secret\n",
    )
    .unwrap();
    chmod(&creds, 0o600);
    let cfg = e.p().join("s3.toml");
    fs::write(
        &cfg,
        format!(
            "[job]\nname = \"prod\"\nrecipients = [\"backup.key.pub\"]\n\
             [[store]]\ntype = \"s3\"\nname = \"hostile\"\nendpoint = \"http://127.0.0.1:{port}\"\n\
             bucket = \"backups\"\npath_style = true\ncredentials = \"{}\"\n\
             timeout_secs = {timeout_secs}\nretries = 1\n",
            creds.display()
        ),
    )
    .unwrap();
    chmod(&cfg, 0o600);
    let mut child = std::process::Command::new(bin())
        .args(args)
        .args(["-c", cfg.to_str().unwrap()])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("coffer {args:?} still running after {limit:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    child.wait_with_output().unwrap()
}

/// An S3 server that pages its listing without end (the same continuation
/// token every time) is refused at once, not followed forever with memory
/// growing by the page.
#[test]
fn an_s3_listing_that_pages_in_a_circle_is_refused() {
    let e = Env::new();
    let out = against_hostile_s3(
        &e,
        Hostile::CircularListing,
        5,
        &["list"],
        std::time::Duration::from_secs(60),
    );
    assert_ne!(code(&out), 0);
    assert!(
        stderr(&out).contains("continuation token"),
        "{}",
        stderr(&out)
    );
}

/// An S3 server that sends an object a byte at a time — never idle long
/// enough for a timeout — is given up on once a window of `timeout_secs`
/// brings less than 64 KiB, instead of holding the restore for weeks.
#[test]
fn an_s3_body_that_trickles_is_given_up_on() {
    let e = Env::new();
    let out = against_hostile_s3(
        &e,
        Hostile::Trickle,
        2,
        &["restore", "latest", "-i", &e.key(), "--stdout"],
        std::time::Duration::from_secs(60),
    );
    assert_ne!(code(&out), 0);
    assert!(stderr(&out).contains("giving up"), "{}", stderr(&out));
}

/// `latest` follows the signed ledger, but a ledger can restart: a server
/// that hid every sidecar while a backup ran made the host begin again at
/// seq 1. That newest backup, signed and dated last, is then earlier in the
/// ledger than the older ones; a restore of `latest` names it rather than
/// passing it by in silence.
#[test]
fn latest_names_a_newer_signed_backup_that_a_restarted_ledger_puts_first() {
    let e = Env::new();
    let signed = e.config("signed.toml", true, "");
    ok(&["backup", "-c", &signed]);
    ok(&["backup", "-c", &signed]);
    let older = e.names();
    let hidden = e.p().join("hidden");
    fs::rename(e.store(), &hidden).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    ok(&["backup", "-c", &signed]);
    let newest = e.names().pop().unwrap();
    for f in fs::read_dir(&hidden).unwrap() {
        let f = f.unwrap();
        fs::rename(f.path(), e.store().join(f.file_name())).unwrap();
    }
    let to = e.p().join("out");
    let out = e.restore(&signed, "latest", &to, &[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("{newest} in")) && stderr(&out).contains("ledger restarted"),
        "{older:?} {newest}: {}",
        stderr(&out)
    );
    // The summary, what a script or a tired reader keeps, says so too.
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    let summary = said
        .lines()
        .find(|l| l.contains("NOT the newest"))
        .unwrap_or_else(|| panic!("no summary naming it: {said}"));
    assert!(summary.contains(newest.as_str()), "{summary}");
}

/// Makes `dir` claim to hold every name a run of job `prod` in the next
/// minute could take, up to `per_second` per second: a signature file is
/// enough for coffer to take the name as used.
fn claim_every_name(dir: &Path, per_second: usize) {
    let now = chrono::Utc::now();
    for s in -2..60 {
        let at = now + chrono::Duration::seconds(s);
        let base = format!("prod-{}", at.format("%Y%m%dT%H%M%SZ"));
        for i in 0..per_second {
            let name = if i == 0 {
                base.clone()
            } else {
                format!("{base}-{i}")
            };
            fs::write(dir.join(format!("{name}.coffer.json.minisig")), "").unwrap();
        }
    }
}

/// Stores left out of a run take their own settings with them: a store
/// after them keeps its `prune = false` (another machine prunes it).
#[test]
fn a_store_left_out_before_another_does_not_change_what_is_pruned_there() {
    let env = Env::new();
    let p = env.p();
    let hostile = p.join("hostile");
    let kept = p.join("kept");
    fs::create_dir(&hostile).unwrap();
    let cfg = p.join("order.toml");
    fs::write(
        &cfg,
        format!(
            "[job]\nname = \"prod\"\nrecipients = [\"backup.key.pub\"]\nlock_file = \"{lock}\"\n\
             keep_last = 1\nsigning_key = \"sign.key\"\nsigning_public_key = \"sign.key.pub\"\n\
             [[source]]\ntype = \"files\"\nname = \"data\"\npaths = [\"{data}\"]\n\
             [[store]]\ntype = \"local\"\nname = \"hostile\"\npath = \"{hostile}\"\n\
             [[store]]\ntype = \"local\"\nname = \"kept\"\npath = \"{kept}\"\nprune = false\n",
            lock = p.join("lock").display(),
            data = p.join("data").display(),
            hostile = hostile.display(),
            kept = kept.display(),
        ),
    )
    .unwrap();
    chmod(&cfg, 0o600);
    let cfg = cfg.to_str().unwrap();
    ok(&["backup", "-c", cfg]);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    claim_every_name(&hostile, 10);
    let out = coffer(&["backup", "-c", cfg]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert_eq!(
        sealed_in(&kept).len(),
        2,
        "prune = false kept both: {}",
        stderr(&out)
    );
}

#[test]
fn a_store_that_claims_every_name_costs_only_its_own_copy() {
    let env = Env::new();
    let p = env.p();
    let cfg = env.config("c.toml", true, "");
    let hostile = p.join("hostile");
    fs::create_dir(&hostile).unwrap();
    let text = fs::read_to_string(&cfg).unwrap();
    let second = format!(
        "[[store]]\ntype = \"local\"\nname = \"hostile\"\npath = \"{}\"\n",
        hostile.display()
    );
    fs::write(&cfg, text + &second).unwrap();
    // The attacker's server answers "exists" for every name a run in the
    // next minute could take (a server can say so without holding a byte).
    claim_every_name(&hostile, 1000);
    let out = coffer(&["backup", "-c", &cfg]);
    let err = stderr(&out);
    assert_eq!(code(&out), 1, "{err}");
    assert!(
        err.contains("hostile") && err.contains("claims to hold"),
        "{err}"
    );
    assert!(!err.contains("no free backup name"), "{err}");
    // The honest store got the backup, and it restores.
    assert_eq!(env.names().len(), 1, "{err}");
    let to = p.join("out");
    let r = env.restore(&cfg, "latest", &to, &[]);
    assert!(r.status.success(), "{}", stderr(&r));
    assert_eq!(env.restored(&to).as_deref(), Some(SECRET));
    // Nothing was written into the store that claimed the names.
    assert!(fs::read_dir(&hostile).unwrap().all(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .ends_with(".minisig")));
}

/// Peak RSS of `coffer ARGS` in KiB, with its output.
fn peak_kib(args: &[&str]) -> (u64, std::process::Output) {
    let out = std::process::Command::new("/usr/bin/time")
        .args(["-f", "peak %M KiB"])
        .arg(bin())
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let err = stderr(&out);
    let peak = err
        .lines()
        .find_map(|l| l.strip_prefix("peak ")?.strip_suffix(" KiB")?.parse().ok())
        .unwrap_or_else(|| panic!("no peak in {err}"));
    (peak, out)
}

#[test]
fn sidecars_a_store_pads_cannot_fill_the_memory_of_runs_that_list_it() {
    let env = Env::new();
    let p = env.p();
    let cfg = env.config("c.toml", true, "");
    ok(&["backup", "-c", &cfg]);
    let genuine = env.names();
    // Valid sidecars, padded with white space to 1 MiB each.
    let (_, sidecar) = env.forge("padded");
    let mut text = serde_json::to_string(&sidecar).unwrap();
    text.push_str(&" ".repeat(1 << 20));
    for i in 0..64 {
        let name = format!("prod-20260101T0000{:02}Z", i % 60) + &"-1".repeat(i / 60);
        fs::write(env.file(&name, ".coffer"), [0u8]).unwrap();
        fs::write(env.file(&name, ".coffer.json"), &text).unwrap();
    }
    let (peak, out) = peak_kib(&["list", "-c", &cfg]);
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        peak < 48 << 10,
        "list held {peak} KiB for 64 MiB of padded sidecars"
    );
    assert!(listed.contains("larger than 64 KiB"), "{listed}");
    assert!(listed.contains(&genuine[0]), "{listed}");

    // Many sidecars within the size of one, together past what a listing
    // holds: the store is refused, and the nightly run's other store still
    // gets the backup.
    for entry in fs::read_dir(env.store()).unwrap() {
        let path = entry.unwrap().path();
        if !genuine
            .iter()
            .any(|g| path.to_string_lossy().contains(g.as_str()))
        {
            fs::remove_file(path).unwrap();
        }
    }
    let mut text = serde_json::to_string(&sidecar).unwrap();
    text.push_str(&" ".repeat(60 << 10));
    for i in 0..600 {
        let name = format!("prod-20260101T{:02}{:02}00Z", i / 60, i % 60);
        fs::write(env.file(&name, ".coffer"), [0u8]).unwrap();
        fs::write(env.file(&name, ".coffer.json"), &text).unwrap();
    }
    let good = p.join("good");
    let second = format!(
        "[[store]]\ntype = \"local\"\nname = \"good\"\npath = \"{}\"\n",
        good.display()
    );
    fs::write(&cfg, fs::read_to_string(&cfg).unwrap() + &second).unwrap();
    let out = coffer(&["backup", "-c", &cfg]);
    let err = stderr(&out);
    assert_eq!(code(&out), 1, "{err}");
    assert!(err.contains("sidecars add up to more than 32 MiB"), "{err}");
    let made: Vec<_> = fs::read_dir(&good)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "coffer")
        })
        .collect();
    assert_eq!(made.len(), 1, "{err}");
}

#[test]
fn a_file_named_latest_in_the_working_directory_is_not_the_latest_backup() {
    let env = Env::new();
    let p = env.p();
    let cfg = env.config("c.toml", true, "");
    ok(&["backup", "-c", &cfg]);
    let (sealed, _) = env.forge("planted in the working directory");
    let cwd = p.join("cwd");
    fs::create_dir(&cwd).unwrap();
    fs::write(cwd.join("latest"), sealed).unwrap();
    let to = p.join("out");
    let out = std::process::Command::new(bin())
        .current_dir(&cwd)
        .args(["restore", "-c", &cfg, "-i", &env.key(), "latest", "--to"])
        .arg(&to)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(env.restored(&to).as_deref(), Some(SECRET));
}

/// A store that missed a night still holds a backup the others have pruned
/// since. Refill copies only what the job's newest backups across all
/// stores are, so it neither copies that older backup back into the others
/// (whose retention would delete it again, every night) nor misses the
/// night the store missed.
#[test]
fn refill_copies_the_newest_backups_not_what_a_lagging_store_still_holds() {
    let env = Env::new();
    let p = env.p();
    let cfg = env.config("c.toml", true, "keep_last = 2\n");
    let second = p.join("second");
    let with_second = fs::read_to_string(&cfg).unwrap()
        + &format!(
            "[[store]]\ntype = \"local\"\nname = \"second\"\npath = \"{}\"\n",
            second.display()
        );
    fs::write(&cfg, with_second).unwrap();
    let night = || {
        std::thread::sleep(std::time::Duration::from_millis(1100));
        coffer(&["backup", "-c", &cfg])
    };
    let first = night();
    assert!(first.status.success(), "{}", stderr(&first));
    let x1 = env.names().pop().unwrap();
    // The second store is away for two nights; the first prunes x1 meanwhile.
    fs::rename(&second, p.join("away")).unwrap();
    fs::write(&second, "not a directory").unwrap();
    for _ in 0..2 {
        let out = night();
        assert_eq!(code(&out), 2, "{}", stderr(&out));
    }
    let x2 = env.names().pop().unwrap();
    assert!(!env.names().contains(&x1));
    fs::remove_file(&second).unwrap();
    fs::rename(p.join("away"), &second).unwrap();
    let out = night();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains(&format!("refilled {x1}")), "{err}");
    assert!(err.contains(&format!("refilled {x2} into second")), "{err}");
    let x3 = env.names().pop().unwrap();
    assert_eq!(sealed_in(&env.store()), vec![x2.clone(), x3.clone()]);
    assert_eq!(sealed_in(&second), vec![x2, x3]);
}

/// A signed v3 sidecar vouches for its sealed file twice, by BLAKE3 (what
/// coffer checks) and SHA-256 (what `sha256sum -c` checks): one that is
/// wrong fails `verify` and `restore` (exit 3), so coffer never says good
/// where the independent check says bad. And a good signature whose trusted
/// comment names another file was made for that file: refused too.
#[test]
fn a_signed_sidecar_must_agree_with_sha256sum_and_name_its_own_file() {
    let e = Env::new();
    let cfg = e.config("signed.toml", true, "");
    ok(&["backup", "-c", &cfg]);
    let name = e.names().pop().unwrap();
    let sidecar_path = e.file(&name, ".coffer.json");
    let sig_path = e.file(&name, ".coffer.json.minisig");
    let genuine = fs::read(&sidecar_path).unwrap();
    let genuine_sig = fs::read(&sig_path).unwrap();
    let signer =
        coffer::signing::Signer::parse(&fs::read_to_string(e.p().join("sign.key")).unwrap())
            .unwrap();
    let said = |out: &std::process::Output| {
        format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(out))
    };
    let file_name = format!("{name}.coffer.json");

    // The signing key's holder wrote a wrong SHA-256 (a bug, or a host
    // that lies to sha256sum): the BLAKE3 still matches.
    let mut wrong: serde_json::Value = serde_json::from_slice(&genuine).unwrap();
    wrong["sha256"] = "00".repeat(32).into();
    let wrong = serde_json::to_vec(&wrong).unwrap();
    fs::write(&sidecar_path, &wrong).unwrap();
    fs::write(&sig_path, signer.sign(&wrong, &file_name).unwrap()).unwrap();
    let out = coffer(&["verify", "-c", &cfg]);
    assert_eq!(code(&out), 3, "{}", said(&out));
    assert!(said(&out).contains("SHA-256"), "{}", said(&out));
    let to = e.p().join("out-sha");
    let out = e.restore(&cfg, &name, &to, &[]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert!(is_empty_or_absent(&to));

    // The genuine bytes, signed with a trusted comment naming another file.
    fs::write(&sidecar_path, &genuine).unwrap();
    fs::write(
        &sig_path,
        signer
            .sign(&genuine, "prod-20200101T000000Z.coffer.json")
            .unwrap(),
    )
    .unwrap();
    let out = coffer(&["verify", "-c", &cfg]);
    assert_eq!(code(&out), 3, "{}", said(&out));
    assert!(said(&out).contains("trusted comment"), "{}", said(&out));
    // The same three files restored as a file, with the signing key.
    let to = e.p().join("out-comment");
    let out = coffer(&[
        "restore",
        "-i",
        &e.key(),
        "--signing-key",
        e.p().join("sign.key.pub").to_str().unwrap(),
        e.file(&name, ".coffer").to_str().unwrap(),
        "--to",
        to.to_str().unwrap(),
    ]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert!(stderr(&out).contains("trusted comment"), "{}", stderr(&out));
    assert!(is_empty_or_absent(&to));

    // Put back as it was made: good again.
    fs::write(&sig_path, &genuine_sig).unwrap();
    let out = coffer(&["verify", "-c", &cfg]);
    assert_eq!(code(&out), 0, "{}", said(&out));
}

/// A deliberate `prune --keep-last 3` under the job's own configuration
/// (keep_last = 7) is recorded, signed by the host's key: a later verify
/// says those entries were removed by retention, and passes. A backup the
/// store removes on its own, with no record, is still the alarm (exit 3),
/// and the message says the copies present are not affected.
#[test]
fn a_deliberate_prune_is_not_reported_as_a_store_that_lost_backups() {
    let e = Env::new();
    let signed = e.config("signed.toml", true, "");
    for _ in 0..6 {
        ok(&["backup", "-c", &signed]);
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    let said = |out: &std::process::Output| {
        format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(out))
    };
    ok(&["prune", "-c", &signed, "--keep-last", "3"]);
    assert_eq!(e.names().len(), 3);
    let out = coffer(&["verify", "-c", &signed]);
    assert_eq!(code(&out), 0, "{}", said(&out));
    assert!(
        said(&out).contains("removed by retention, as recorded"),
        "{}",
        said(&out)
    );
    // The store drops one of the three kept, with no record of it.
    let names = e.names();
    for suffix in [".coffer", ".coffer.json", ".coffer.json.minisig"] {
        fs::remove_file(e.file(&names[1], suffix)).unwrap();
    }
    let out = coffer(&["verify", "-c", &signed]);
    assert_eq!(code(&out), 3, "{}", said(&out));
    assert!(said(&out).contains("not affected"), "{}", said(&out));
    // An unsigned record the store writes itself excuses nothing.
    let fake = e.file(&names[1], ".coffer.pruned");
    fs::write(
        &fake,
        format!(
            "{{\"format\":\"coffer-pruned/1\",\"name\":\"{}\",\"job\":\"prod\",\"seq\":5,\"digest\":\"{}\",\"pruned\":\"2026-12-01T00:00:00.000Z\",\"why\":\"retention\"}}",
            names[1],
            "00".repeat(32)
        ),
    )
    .unwrap();
    let out = coffer(&["verify", "-c", &signed]);
    assert_eq!(code(&out), 3, "{}", said(&out));
}

/// A night that did not reach one store (the server was down) is not a
/// damaged backup: verify names the store that holds a good copy (exit 1,
/// not 3), and the next run refills the store, after which verify passes.
/// A sealed file whose sidecar never arrived is a leftover, not damage.
#[test]
fn a_missed_night_in_one_store_names_the_good_copy_and_heals() {
    let e = Env::new();
    let (two, second) = e.two_stores("two.toml", true);
    let two = two.as_str();
    let said = |out: &std::process::Output| {
        format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(out))
    };
    for _ in 0..3 {
        ok(&["backup", "-c", two]);
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    // The second store missed the newest night.
    let newest = e.names().pop().unwrap();
    for suffix in [".coffer", ".coffer.json", ".coffer.json.minisig"] {
        fs::remove_file(second.join(format!("{newest}{suffix}"))).unwrap();
    }
    let out = coffer(&["verify", "-c", two]);
    assert_eq!(code(&out), 1, "{}", said(&out));
    assert!(said(&out).contains("MISSING"), "{}", said(&out));
    assert!(
        said(&out).contains(&format!("{newest} in first")),
        "{}",
        said(&out)
    );
    // An upload whose sidecar never arrived (a run in the same second as
    // the newest): a leftover, said as such.
    let partial = format!("{newest}-1");
    fs::write(second.join(format!("{partial}.coffer")), b"partial").unwrap();
    let out = coffer(&["verify", "-c", two]);
    assert_eq!(code(&out), 1, "{}", said(&out));
    assert!(
        said(&out).contains(&format!("note  {partial}")),
        "{}",
        said(&out)
    );
    // The next run refills the second store and removes the leftover.
    ok(&["backup", "-c", two]);
    assert!(second.join(format!("{newest}.coffer.json")).exists());
    assert!(!second.join(format!("{partial}.coffer")).exists());
    let out = coffer(&["verify", "-c", two]);
    assert_eq!(code(&out), 0, "{}", said(&out));
}

/// An unsigned job never copies backups between stores (a forgery in one
/// would spread): the MISSING line says so and what to do, instead of
/// promising a refill that does not come.
#[test]
fn a_missed_night_of_an_unsigned_job_says_how_to_copy_it_back() {
    let e = Env::new();
    let (two, second) = e.two_stores("unsigned-two.toml", false);
    for _ in 0..2 {
        ok(&["backup", "-c", &two]);
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    let newest = e.names().pop().unwrap();
    for suffix in [".coffer", ".coffer.json"] {
        fs::remove_file(second.join(format!("{newest}{suffix}"))).unwrap();
    }
    let out = coffer(&["verify", "-c", &two]);
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert_eq!(code(&out), 1, "{said}");
    assert!(said.contains("this job is unsigned"), "{said}");
    assert!(said.contains(&format!("{newest} in first")), "{said}");
}

/// A store that loses (or drops) every sidecar of an unsigned job is not a
/// store of leftovers: sealed files older than the newest complete backup
/// and than a day are backups whose sidecars are gone, and verify fails
/// (exit 3) instead of passing with notes; a backup run does not delete
/// them as interrupted uploads.
#[test]
fn sealed_files_that_lost_their_sidecars_are_not_leftovers() {
    let e = Env::new();
    let unsigned = e.config("unsigned.toml", false, "");
    for _ in 0..2 {
        ok(&["backup", "-c", &unsigned]);
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    let names = e.names();
    for n in &names {
        fs::remove_file(e.file(n, ".coffer.json")).unwrap();
        sh(
            &format!("touch -d '2 days ago' {}", e.file(n, ".coffer").display()),
            e.p(),
        );
    }
    let out = coffer(&["verify", "-c", &unsigned]);
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert_eq!(code(&out), 3, "{said}");
    assert!(said.contains("sidecar is gone"), "{said}");
    ok(&["backup", "-c", &unsigned]);
    for n in &names {
        assert!(e.file(n, ".coffer").exists(), "{n} was deleted");
    }
}
