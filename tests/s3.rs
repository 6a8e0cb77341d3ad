//! The S3 store against a real 3-node Garage cluster (replication factor 3,
//! loopback ports) that each test starts with scripts/garage-dev.sh, and
//! against moto's S3 server and s3rver, other implementations with their own quirks.
//!
//! Without garage installed these tests print a loud SKIP and pass, except
//! under CI (`CI` set), where a missing garage fails them.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use coffer::store::Store;
use common::*;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/garage-dev.sh")
}

fn garage_installed() -> bool {
    let garage = std::env::var("GARAGE").unwrap_or_else(|_| "garage".into());
    Command::new(garage)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A running cluster; stopped when dropped.
struct Garage {
    dir: tempfile::TempDir,
    /// DIR/store.toml: the `[[store]]` block the script wrote.
    block: String,
}

impl Garage {
    /// None (after a loud SKIP) when garage is not installed and this is
    /// not CI; under CI a missing garage fails the test.
    fn start() -> Option<Self> {
        if !garage_installed() {
            assert!(
                std::env::var_os("CI").is_none(),
                "garage is not installed, and CI is set: run scripts/install-test-deps.sh"
            );
            eprintln!(
                "\n*** SKIP: garage is not installed (scripts/install-test-deps.sh installs it); the S3 tests did not run ***\n"
            );
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let cluster = dir.path().join("garage");
        let out = Command::new(script())
            .arg("start")
            .arg(&cluster)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "garage-dev.sh start failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            stderr(&out)
        );
        let block = fs::read_to_string(cluster.join("store.toml")).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            block,
            "start prints the block"
        );
        Some(Garage { dir, block })
    }

    fn cluster(&self) -> PathBuf {
        self.dir.path().join("garage")
    }

    fn kill_node(&self, n: u8) {
        let out = Command::new(script())
            .arg("kill-node")
            .arg(self.cluster())
            .arg(n.to_string())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    }

    fn stop(&self) {
        let out = Command::new(script())
            .arg("stop")
            .arg(self.cluster())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    }

    /// The store block with `extra` lines added to it.
    fn store(&self, extra: &str) -> String {
        format!("{}{extra}\n", self.block)
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        let _ = Command::new(script())
            .arg("stop")
            .arg(self.cluster())
            .output();
    }
}

struct Job {
    dir: tempfile::TempDir,
    key: PathBuf,
}

impl Job {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("backup.key");
        ok(&["keygen", "--type", "age", "--out", key.to_str().unwrap()]);
        fs::create_dir(dir.path().join("data")).unwrap();
        Job { dir, key }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn config(&self, file: &str, job_extra: &str, sources: &str, stores: &str) -> PathBuf {
        let p = self.path(file);
        fs::write(
            &p,
            format!(
                "[job]\nname = \"prod\"\nrecipients = [\"{}.pub\"]\nlock_file = \"{}/lock\"\n{}{job_extra}\n{sources}\n{stores}",
                self.key.display(),
                self.dir.path().display(),
                unsigned_unless_signed(job_extra)
            ),
        )
        .unwrap();
        chmod(&p, 0o600);
        p
    }

    fn files_source(&self) -> String {
        format!(
            "[[source]]\ntype = \"files\"\nname = \"data\"\npaths = [\"{}\"]\n",
            self.path("data").display()
        )
    }

    fn local(&self) -> String {
        format!(
            "[[store]]\ntype = \"local\"\nname = \"local\"\npath = \"{}\"\n",
            self.path("local").display()
        )
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(bin())
            .args(args)
            .env("TMPDIR", self.dir.path())
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn backup(&self, cfg: &Path) -> Output {
        self.run(&["backup", "-c", cfg.to_str().unwrap()])
    }
}

/// The S3 store of a configuration, to look into the bucket directly.
fn s3_store(cfg: &Path) -> Box<dyn Store> {
    let config = coffer::config::Config::load(cfg).unwrap();
    coffer::pipeline::job::build_stores(&config)
        .into_iter()
        .map(|(s, _)| s)
        .find(|s| s.name() == "garage")
        .expect("a store named garage")
}

fn names(store: &dyn Store) -> Vec<String> {
    store.list().unwrap().into_iter().map(|o| o.name).collect()
}

fn local_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn read_all(store: &dyn Store, file: &str) -> Vec<u8> {
    let mut v = Vec::new();
    std::io::Read::read_to_end(&mut store.get(file).unwrap(), &mut v).unwrap();
    v
}

/// The lines coffer printed as `coffer: error:` and `coffer: hint:`.
fn error_lines(out: &Output) -> (Vec<String>, Vec<String>) {
    let text = stderr(out);
    let errors = text
        .lines()
        .filter(|l| l.starts_with("coffer: error:"))
        .map(str::to_owned)
        .collect();
    let hints = text
        .lines()
        .filter(|l| l.starts_with("coffer: hint:"))
        .map(str::to_owned)
        .collect();
    (errors, hints)
}

#[test]
fn backup_lands_in_s3_and_local_and_restores_byte_exact_from_s3() {
    let Some(g) = Garage::start() else { return };
    let j = Job::new();
    // Incompressible and several parts long (5 MiB parts), with a short tail.
    let big = pattern(17 * 1024 * 1024 + 12345, 7);
    fs::write(j.path("data/big.bin"), &big).unwrap();
    fs::write(j.path("data/small.txt"), b"hello\n").unwrap();
    let stores = format!("{}\n{}", j.local(), g.store("part_size_mib = 5"));
    let cfg = j.config("both.toml", "", &j.files_source(), &stores);
    let out = j.backup(&cfg);
    assert!(out.status.success(), "{}", stderr(&out));

    let s3cfg = j.config("s3.toml", "", &j.files_source(), &g.store(""));
    let s3 = s3_store(&s3cfg);
    let remote = names(s3.as_ref());
    assert_eq!(remote, local_files(&j.path("local")), "both stores hold it");
    assert_eq!(remote.len(), 2, "{remote:?}");
    assert!(remote[0].ends_with(".coffer") && remote[1].ends_with(".coffer.json"));
    assert_eq!(
        read_all(s3.as_ref(), &remote[0]),
        fs::read(j.path("local").join(&remote[0])).unwrap(),
        "the same ciphertext in both"
    );

    // Keyless and keyed verify, and restore, from S3 alone.
    let out = j.run(&["verify", "-c", s3cfg.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let key = j.key.to_str().unwrap();
    let out = j.run(&["verify", "-c", s3cfg.to_str().unwrap(), "-i", key, "latest"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let to = j.path("restored");
    let out = j.run(&[
        "restore",
        "-c",
        s3cfg.to_str().unwrap(),
        "-i",
        key,
        "latest",
        "--to",
        to.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let found: Vec<PathBuf> = walk(&to)
        .into_iter()
        .filter(|p| p.ends_with("big.bin"))
        .collect();
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(fs::read(&found[0]).unwrap() == big, "restored byte-exact");
    let small: Vec<PathBuf> = walk(&to)
        .into_iter()
        .filter(|p| p.ends_with("small.txt"))
        .collect();
    assert_eq!(fs::read(&small[0]).unwrap(), b"hello\n");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// A command source that writes `first` MiB, waits for `go` to exist, then
/// writes `second` MiB (random, so incompressible).
fn paused_source(j: &Job, first: u32, second: u32) -> String {
    format!(
        "[[source]]\ntype = \"command\"\nname = \"stream\"\nargv = [\"sh\", \"-c\", \"head -c {first}M /dev/urandom; while [ ! -e {go} ]; do sleep 0.1; done; head -c {second}M /dev/urandom\"]\n",
        go = j.path("go").display()
    )
}

/// Waits until the bucket shows an unfinished upload of a sealed file.
fn wait_for_partial(s3: &dyn Store) -> String {
    let start = Instant::now();
    loop {
        if let Some(p) = names(s3)
            .into_iter()
            .find(|n| n.ends_with(".coffer.partial"))
        {
            return p;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no upload started"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// With replication factor 3, Garage writes each block and metadata entry to
/// a quorum of 2 nodes: a node killed mid-upload (not the one coffer talks
/// to) costs nothing, and the backup completes on the other two.
#[test]
fn node_killed_mid_upload_completes_on_quorum() {
    let Some(g) = Garage::start() else { return };
    let j = Job::new();
    let cfg = j.config(
        "s3.toml",
        "",
        &paused_source(&j, 12, 12),
        &g.store("part_size_mib = 5"),
    );
    let s3 = s3_store(&cfg);
    let child = Command::new(bin())
        .args(["backup", "-c", cfg.to_str().unwrap()])
        .env("TMPDIR", j.dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let partial = wait_for_partial(s3.as_ref());
    // Parts are going up: now node 3 dies, and the rest of the stream follows.
    std::thread::sleep(Duration::from_millis(500));
    g.kill_node(3);
    fs::write(j.path("go"), b"").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let sealed = partial.strip_suffix(".partial").unwrap();
    let remote = names(s3.as_ref());
    assert!(remote.contains(&sealed.to_owned()), "{remote:?}");
    assert!(
        !remote.iter().any(|n| n.ends_with(".partial")),
        "{remote:?}"
    );
    // Read back through the two nodes left: it decrypts and checks.
    let out = j.run(&[
        "verify",
        "-c",
        cfg.to_str().unwrap(),
        "-i",
        j.key.to_str().unwrap(),
        "latest",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn all_nodes_down_local_still_gets_it_and_exit_1_names_s3() {
    let Some(g) = Garage::start() else { return };
    let j = Job::new();
    fs::write(j.path("data/a.txt"), b"a").unwrap();
    let stores = format!("{}\n{}", j.local(), g.store("retries = 2"));
    let cfg = j.config("both.toml", "", &j.files_source(), &stores);
    g.stop();
    let started = Instant::now();
    let out = j.backup(&cfg);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let (errors, _) = error_lines(&out);
    assert_eq!(errors.len(), 1, "{}", stderr(&out));
    assert!(
        errors[0].contains("complete in [local]") && errors[0].contains("garage"),
        "{}",
        errors[0]
    );
    assert!(errors[0].contains("unreachable"), "{}", errors[0]);
    let local = local_files(&j.path("local"));
    assert_eq!(local.len(), 2, "{local:?}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "an unreachable endpoint is given up on quickly: {:?}",
        started.elapsed()
    );
}

#[test]
fn wrong_credentials_exit_4_with_one_line() {
    let Some(g) = Garage::start() else { return };
    let j = Job::new();
    fs::write(j.path("data/a.txt"), b"a").unwrap();
    let real = fs::read_to_string(g.cluster().join("credentials")).unwrap();
    let bad = j.path("bad-credentials");
    let id = real
        .lines()
        .find_map(|l| l.strip_prefix("aws_access_key_id = "))
        .unwrap();
    fs::write(
        &bad,
        format!(
            "[default]\naws_access_key_id = {id}\naws_secret_access_key = {}\n",
            "0".repeat(64)
        ),
    )
    .unwrap();
    chmod(&bad, 0o600);
    let block = g.block.replace(
        &g.cluster().join("credentials").display().to_string(),
        &bad.display().to_string(),
    );
    let cfg = j.config("s3.toml", "", &j.files_source(), &block);
    let out = j.backup(&cfg);
    assert_eq!(code(&out), 4, "{}", stderr(&out));
    let (errors, hints) = error_lines(&out);
    assert_eq!(errors.len(), 1, "{}", stderr(&out));
    assert!(
        errors[0].contains("garage") && errors[0].contains("credentials were refused"),
        "{}",
        errors[0]
    );
    assert_eq!(hints.len(), 1, "{}", stderr(&out));
    assert!(
        !stderr(&out).contains(&"0".repeat(64)),
        "the secret is never shown"
    );
    // `list` says the same.
    let out = j.run(&["list", "-c", cfg.to_str().unwrap()]);
    assert_eq!(code(&out), 4, "{}", stderr(&out));

    // A credentials file others can read is refused before any request.
    chmod(&bad, 0o644);
    let out = j.backup(&cfg);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
}

#[test]
fn missing_bucket_exit_2_with_one_line() {
    let Some(g) = Garage::start() else { return };
    let j = Job::new();
    fs::write(j.path("data/a.txt"), b"a").unwrap();
    let block = g
        .block
        .replace("bucket = \"coffer\"", "bucket = \"no-such-bucket\"");
    let cfg = j.config("s3.toml", "", &j.files_source(), &block);
    let out = j.backup(&cfg);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    let (errors, hints) = error_lines(&out);
    assert_eq!(errors.len(), 1, "{}", stderr(&out));
    assert!(
        errors[0].contains("bucket \"no-such-bucket\" does not exist"),
        "{}",
        errors[0]
    );
    assert_eq!(hints.len(), 1, "{}", stderr(&out));
}

#[test]
fn keep_last_applies_in_s3() {
    let Some(g) = Garage::start() else { return };
    let j = Job::new();
    fs::write(j.path("data/a.txt"), b"a").unwrap();
    let cfg = j.config("s3.toml", "keep_last = 2", &j.files_source(), &g.store(""));
    let s3 = s3_store(&cfg);
    let mut made = Vec::new();
    for _ in 0..3 {
        let out = j.backup(&cfg);
        assert!(out.status.success(), "{}", stderr(&out));
        let now: Vec<String> = names(s3.as_ref())
            .into_iter()
            .filter(|n| n.ends_with(".coffer"))
            .collect();
        made.extend(
            now.into_iter()
                .filter(|n| !made.contains(n))
                .collect::<Vec<_>>(),
        );
    }
    assert_eq!(made.len(), 3, "{made:?}");
    let left = names(s3.as_ref());
    assert_eq!(left.len(), 4, "two backups, two files each: {left:?}");
    assert!(!left.contains(&made[0]), "the oldest went: {left:?}");
    assert!(
        left.contains(&made[1]) && left.contains(&made[2]),
        "{left:?}"
    );
}

#[test]
fn keyless_verify_from_s3_catches_a_replaced_object() {
    let Some(g) = Garage::start() else { return };
    let j = Job::new();
    fs::write(j.path("data/a.txt"), pattern(100_000, 3)).unwrap();
    let cfg = j.config("s3.toml", "", &j.files_source(), &g.store(""));
    let out = j.backup(&cfg);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = j.run(&["verify", "-c", cfg.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));

    // Someone with write access swaps the sealed object for one of the same size.
    let s3 = s3_store(&cfg);
    let sealed = names(s3.as_ref())
        .into_iter()
        .find(|n| n.ends_with(".coffer"))
        .unwrap();
    let mut bytes = read_all(s3.as_ref(), &sealed);
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    s3.delete(&sealed).unwrap();
    let mut u = s3.put(&sealed).unwrap();
    std::io::Write::write_all(&mut u, &bytes).unwrap();
    u.commit().unwrap();

    let out = j.run(&["verify", "-c", cfg.to_str().unwrap()]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    let name = sealed.strip_suffix(".coffer").unwrap();
    assert!(
        said.lines()
            .any(|l| l.contains(name) && l.contains("BLAKE3") && !l.starts_with("ok")),
        "{said}"
    );
}

/// A run killed mid-upload leaves an unfinished multipart upload (a
/// `.partial` in the listing); the next run aborts it.
#[test]
fn aborted_multipart_upload_is_cleaned_by_the_next_run() {
    let Some(g) = Garage::start() else { return };
    let j = Job::new();
    let cfg = j.config(
        "s3.toml",
        "",
        &paused_source(&j, 12, 1),
        &g.store("part_size_mib = 5"),
    );
    let s3 = s3_store(&cfg);
    let mut child = Command::new(bin())
        .args(["backup", "-c", cfg.to_str().unwrap()])
        .env("TMPDIR", j.dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let partial = wait_for_partial(s3.as_ref());
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        names(s3.as_ref()).contains(&partial),
        "SIGKILL leaves the upload behind"
    );
    assert!(s3.stat(&partial).unwrap().is_some());

    fs::write(j.path("go"), b"").unwrap();
    let out = j.backup(&cfg);
    assert!(out.status.success(), "{}", stderr(&out));
    let left = names(s3.as_ref());
    assert!(!left.iter().any(|n| n.ends_with(".partial")), "{left:?}");
    assert_eq!(left.len(), 2, "only the new backup: {left:?}");
    assert!(s3.stat(&partial).unwrap().is_none());
}

/// Credentials that may write but not read or delete (`prune = false`): the
/// backup lands; what it cannot do (list, stat, retention) it does not need.
#[test]
fn write_only_credentials_with_prune_false() {
    let Some(g) = Garage::start() else { return };
    let j = Job::new();
    fs::write(j.path("data/a.txt"), b"a").unwrap();
    let garage = std::env::var("GARAGE").unwrap_or_else(|_| "garage".into());
    let conf = g.cluster().join("node1/garage.toml");
    let out = Command::new(&garage)
        .arg("-c")
        .arg(&conf)
        .args(["json-api", "CreateKey", "{\"name\":\"write-only\"}"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let key: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = key["accessKeyId"].as_str().unwrap();
    let secret = key["secretAccessKey"].as_str().unwrap();
    let out = Command::new(&garage)
        .arg("-c")
        .arg(&conf)
        .args(["bucket", "allow", "--write", "coffer", "--key", id])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let creds = j.path("write-only");
    fs::write(
        &creds,
        format!("[default]\naws_access_key_id = {id}\naws_secret_access_key = {secret}\n"),
    )
    .unwrap();
    chmod(&creds, 0o600);
    let block = g.block.replace(
        &g.cluster().join("credentials").display().to_string(),
        &creds.display().to_string(),
    );
    let cfg = j.config(
        "wo.toml",
        "",
        &j.files_source(),
        &format!("{block}prune = false\n"),
    );
    let out = j.backup(&cfg);
    assert!(out.status.success(), "{}", stderr(&out));
    // The owner's key sees it complete.
    let full = j.config("s3.toml", "", &j.files_source(), &g.store(""));
    let left = names(s3_store(&full).as_ref());
    assert_eq!(left.len(), 2, "{left:?}");
    let out = j.run(&["verify", "-c", full.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// Garage has no Object Lock: asked for it, coffer refuses to write (exit 2)
/// rather than store objects that are not locked. (The request it makes where
/// the server supports it is checked in src/store/s3.rs's unit tests.)
#[test]
fn object_lock_where_the_server_has_none_is_refused() {
    let Some(g) = Garage::start() else { return };
    let j = Job::new();
    fs::write(j.path("data/a.txt"), b"a").unwrap();
    let cfg = j.config(
        "s3.toml",
        "",
        &j.files_source(),
        &g.store("object_lock_days = 7"),
    );
    let out = j.backup(&cfg);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    let (errors, hints) = error_lines(&out);
    assert_eq!(errors.len(), 1, "{}", stderr(&out));
    assert!(errors[0].contains("object_lock_days"), "{}", errors[0]);
    assert_eq!(hints.len(), 1, "{}", stderr(&out));
    let s3 = s3_store(&j.config("plain.toml", "", &j.files_source(), &g.store("")));
    assert!(names(s3.as_ref()).is_empty(), "nothing was written");
}

/// Anyone who may put an object can give it a key with a control
/// character, which S3's XML listing cannot carry: the listing must still
/// parse (coffer asks for URL-encoded keys), so that one such key does not
/// blind restore and verify to the store and stop its retention.
#[test]
fn a_key_with_a_control_character_does_not_break_the_listing() {
    let Some(g) = Garage::start() else { return };
    let j = Job::new();
    fs::write(j.path("data/a.txt"), pattern(10_000, 4)).unwrap();
    let cfg = j.config("s3.toml", "keep_last = 1", &j.files_source(), &g.store(""));
    let out = j.backup(&cfg);
    assert!(out.status.success(), "{}", stderr(&out));
    let field = |name: &str| {
        g.block
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} = \"")))
            .and_then(|v| v.strip_suffix('"'))
            .unwrap()
            .to_owned()
    };
    let creds = fs::read_to_string(field("credentials")).unwrap();
    let cred = |name: &str| {
        creds
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} = ")))
            .unwrap()
            .to_owned()
    };
    let url = format!(
        "{}/{}/backups/prod-20261205T235959Z.coffer%1B%5B31mRED",
        field("endpoint"),
        field("bucket")
    );
    let put = Command::new("curl")
        .args([
            "-sS",
            "--fail",
            "-H",
            "x-amz-content-sha256: UNSIGNED-PAYLOAD",
        ])
        .args(["--aws-sigv4", "aws:amz:garage:s3", "--user"])
        .arg(format!(
            "{}:{}",
            cred("aws_access_key_id"),
            cred("aws_secret_access_key")
        ))
        .args(["--data-binary", "x", "-X", "PUT", &url])
        .output()
        .unwrap();
    assert!(put.status.success(), "curl: {}", stderr(&put));

    let out = j.run(&["list", "-c", cfg.to_str().unwrap()]);
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("unreachable"), "{}", stderr(&out));
    assert!(listed.contains("prod-2"), "{listed}");
    // The nightly run still prunes there.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let out = j.backup(&cfg);
    assert!(out.status.success(), "{}", stderr(&out));
    let sealed: Vec<String> = names(s3_store(&cfg).as_ref())
        .into_iter()
        .filter(|n| n.ends_with(".coffer"))
        .collect();
    assert_eq!(
        sealed.len(),
        1,
        "keep_last = 1 pruned the older one: {sealed:?}"
    );
}

/// An endpoint on `http://localhost` without `path_style`: the bucket is
/// addressed in the path, so nothing is looked up in DNS
/// (`<bucket>.localhost`) and nothing leaves the machine; backup, list and
/// keyless verify work as with the explicit setting.
#[test]
fn a_localhost_endpoint_is_addressed_path_style() {
    let Some(g) = Garage::start() else { return };
    let j = Job::new();
    fs::write(j.path("data/a.txt"), b"a").unwrap();
    assert!(g.block.contains("path_style = true") && g.block.contains("http://127.0.0.1:"));
    let block = g
        .block
        .replace("path_style = true\n", "")
        .replace("http://127.0.0.1:", "http://localhost:");
    let cfg = j.config("s3.toml", "", &j.files_source(), &block);
    let out = j.backup(&cfg);
    assert!(out.status.success(), "{}", stderr(&out));
    let c = cfg.to_str().unwrap();
    let listed = j.run(&["list", "-c", c]);
    assert!(listed.status.success(), "{}", stderr(&listed));
    assert_eq!(
        String::from_utf8_lossy(&listed.stdout)
            .matches("complete")
            .count(),
        1
    );
    let verified = j.run(&["verify", "-c", c]);
    assert!(verified.status.success(), "{}", stderr(&verified));
}

/// An S3 server other than Garage (`program`, from
/// scripts/install-test-deps.sh) on a random loopback port, with the access
/// key it accepts (used as key id and secret alike). Stopped when dropped.
struct Emulator {
    port: u16,
    dir: tempfile::TempDir,
    child: std::process::Child,
}

impl Emulator {
    fn start(program: &str, args: &dyn Fn(u16, &Path) -> Vec<String>, key: &str) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("server.log");
        let child = Command::new(program)
            .args(args(port, dir.path()))
            .stdin(Stdio::null())
            .stdout(fs::File::create(dir.path().join("server.out")).unwrap())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{program} (scripts/install-test-deps.sh installs it): {e}")
            });
        let e = Emulator { port, dir, child };
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "{program} did not start: {}",
                fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let creds = e.dir.path().join("credentials");
        fs::write(
            &creds,
            format!("[default]\naws_access_key_id = {key}\naws_secret_access_key = {key}\n"),
        )
        .unwrap();
        chmod(&creds, 0o600);
        e
    }

    /// moto's server, with two buckets: `plain`, and `locked` (Object Lock
    /// enabled).
    fn moto() -> Self {
        let m = Emulator::start(
            "moto_server",
            &|port, _| {
                vec![
                    "-H".into(),
                    "127.0.0.1".into(),
                    "-p".into(),
                    port.to_string(),
                ]
            },
            "test",
        );
        for (bucket, lock) in [("plain", "false"), ("locked", "true")] {
            let out = Command::new("curl")
                .args(["-sf", "-X", "PUT", "-H"])
                .arg(format!("x-amz-bucket-object-lock-enabled: {lock}"))
                .arg(format!("http://127.0.0.1:{}/{bucket}", m.port))
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "create bucket {bucket}: {}",
                stderr(&out)
            );
        }
        m
    }

    /// s3rver, with the bucket `plain`.
    fn s3rver() -> Self {
        Emulator::start(
            "s3rver",
            &|port, dir| {
                vec![
                    "-d".into(),
                    dir.join("data").display().to_string(),
                    "-a".into(),
                    "127.0.0.1".into(),
                    "-p".into(),
                    port.to_string(),
                    "--configure-bucket".into(),
                    "plain".into(),
                ]
            },
            "S3RVER",
        )
    }

    /// A `[[store]]` block for `bucket`, with `extra` lines.
    fn store(&self, bucket: &str, extra: &str) -> String {
        format!(
            "[[store]]\ntype = \"s3\"\nname = \"emulated\"\nendpoint = \"http://127.0.0.1:{}\"\n\
             region = \"us-east-1\"\nbucket = \"{bucket}\"\ncredentials = \"{}\"\n{extra}\n",
            self.port,
            self.dir.path().join("credentials").display()
        )
    }

    /// Every command against `bucket`: what the last night said.
    fn every_command(&self, bucket: &str) -> String {
        let block = self.store(bucket, "");
        let probe = self.dir.path().join("probe.toml");
        fs::write(
            &probe,
            format!("[job]\nname = \"prod\"\nrecipients = []\n{block}"),
        )
        .unwrap();
        let held = || -> Vec<String> {
            let config = coffer::config::Config::load(&probe).unwrap();
            let stores = coffer::pipeline::job::build_stores(&config);
            names(stores[0].0.as_ref())
        };
        every_command(&block, &held)
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// moto server answers CompleteMultipartUpload with a reply of the wrong
/// root element though the object is made: coffer looks (HEAD) and counts
/// the object, instead of reporting "no copy" and leaving it behind. Then
/// every command works against it.
#[test]
fn moto_server_serves_every_command() {
    let said = Emulator::moto().every_command("plain");
    assert!(!said.contains("warning"), "{said}");
}

/// s3rver answers 501 to listing unfinished multipart uploads, which only
/// the cleanup of interrupted uploads needs: every command works, and the
/// run says once what it cannot clean.
#[test]
fn s3rver_serves_every_command_without_listing_unfinished_uploads() {
    let said = Emulator::s3rver().every_command("plain");
    assert_eq!(
        said.matches("cannot list unfinished multipart uploads")
            .count(),
        1,
        "{said}"
    );
}

/// moto keeps no Object Lock on multipart uploads: with object_lock_days an
/// unlocked object is an error (exit 2) naming what the server holds, not a
/// success, and it is not left in the bucket.
#[test]
fn an_object_the_server_did_not_lock_is_an_error_not_a_backup() {
    let m = Emulator::moto();
    let j = Job::new();
    fs::write(j.path("data/a.txt"), b"a").unwrap();
    let cfg = j.config(
        "lock.toml",
        "",
        &j.files_source(),
        &m.store("locked", "object_lock_days = 1"),
    );
    let out = j.backup(&cfg);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("without the lock asked for (COMPLIANCE until"),
        "{}",
        stderr(&out)
    );
    let config = coffer::config::Config::load(&cfg).unwrap();
    let stores = coffer::pipeline::job::build_stores(&config);
    let left = names(stores[0].0.as_ref());
    assert!(left.is_empty(), "{left:?}");
}
