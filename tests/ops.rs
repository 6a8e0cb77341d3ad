//! Operations: signed sidecars (checked by coffer and by minisign itself),
//! the Prometheus metrics file (parsed by the reference client's parser),
//! and the success/failure hooks.
// Metric values are small integers or copied timestamps: exact comparison is meant.
#![allow(clippy::float_cmp, clippy::cast_precision_loss)]

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        let e = Env {
            dir: tempfile::tempdir().unwrap(),
        };
        ok(&[
            "keygen",
            "--type",
            "age",
            "-o",
            e.p("age.key").to_str().unwrap(),
        ]);
        e
    }

    fn p(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn recipient(&self) -> String {
        fs::read_to_string(self.p("age.key.pub"))
            .unwrap()
            .trim()
            .to_owned()
    }

    /// A config file for job `db` with one command source.
    fn config(&self, file: &str, job_extra: &str, argv: &str) -> PathBuf {
        let path = self.p(file);
        fs::write(
            &path,
            format!(
                "[job]\nname = \"db\"\nrecipients = [\"{}\"]\nlock_file = \"run.lock\"\n{}{job_extra}\n\
                 [[source]]\ntype = \"command\"\nname = \"dump\"\nargv = {argv}\n\
                 [[store]]\ntype = \"local\"\npath = \"store\"\n",
                self.recipient(),
                unsigned_unless_signed(job_extra)
            ),
        )
        .unwrap();
        chmod(&path, 0o600);
        path
    }

    fn store_files(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.p("store"))
            .map(|d| {
                d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    fn newest(&self, suffix: &str) -> PathBuf {
        let f = self
            .store_files()
            .into_iter()
            .filter(|f| f.ends_with(suffix))
            .max()
            .unwrap_or_else(|| panic!("no *{suffix} in {:?}", self.store_files()));
        self.p("store").join(f)
    }
}

const ECHO: &str = r#"["sh", "-c", "echo 'CREATE TABLE t (x INT);'"]"#;

fn verify(cfg: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["verify", "-c", cfg.to_str().unwrap()];
    args.extend_from_slice(extra);
    coffer(&args)
}

#[test]
fn signed_backups_verify_and_forged_or_unsigned_ones_fail() {
    let e = Env::new();
    let key = e.p("sign.key");
    let out = ok(&["keygen", "--type", "signing", "-o", key.to_str().unwrap()]);
    assert!(stderr(&out).contains("key id:"), "{}", stderr(&out));
    assert_eq!(
        fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let signed = e.config(
        "signed.toml",
        "signing_key = \"sign.key\"\nsigning_public_key = \"sign.key.pub\"",
        ECHO,
    );
    ok(&["backup", "-c", signed.to_str().unwrap()]);
    let sidecar = e.newest(".coffer.json");
    let sig = e.newest(".coffer.json.minisig");
    let out = verify(&signed, &["--json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("signed by key"));

    // The standard tool agrees, from the files alone.
    let mv = Command::new("minisign")
        .args(["-V", "-p"])
        .arg(e.p("sign.key.pub"))
        .arg("-m")
        .arg(&sidecar)
        .output()
        .expect("minisign is installed by scripts/install-test-deps.sh");
    assert!(
        mv.status.success(),
        "{}",
        String::from_utf8_lossy(&mv.stderr)
    );
    assert!(String::from_utf8_lossy(&mv.stdout).contains("Trusted comment: coffer sidecar"));

    // A backup sealed to the same public key by someone without the signing
    // key: unsigned, so it fails.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let unsigned = e.config(
        "unsigned.toml",
        "",
        r#"["sh", "-c", "echo 'DROP TABLE t;'"]"#,
    );
    ok(&["backup", "-c", unsigned.to_str().unwrap()]);
    let forged_sidecar = e.newest(".coffer.json");
    assert_ne!(forged_sidecar, sidecar);
    let out = verify(&signed, &[]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &stderr(&out);
    assert!(text.contains("unsigned"), "{text}");

    // Now the forger replaces the signed backup itself (sealed file and a
    // sidecar edited to carry the old name): the old signature fails.
    let forged_sealed = e.newest(".coffer");
    let old_name = sidecar
        .file_name()
        .unwrap()
        .to_string_lossy()
        .trim_end_matches(".coffer.json")
        .to_owned();
    let new_name = forged_sidecar
        .file_name()
        .unwrap()
        .to_string_lossy()
        .trim_end_matches(".coffer.json")
        .to_owned();
    let json = fs::read_to_string(&forged_sidecar)
        .unwrap()
        .replace(&new_name, &old_name);
    fs::write(&sidecar, json).unwrap();
    fs::copy(
        &forged_sealed,
        e.p("store").join(format!("{old_name}.coffer")),
    )
    .unwrap();
    fs::remove_file(&forged_sidecar).unwrap();
    fs::remove_file(&forged_sealed).unwrap();
    let out = verify(&signed, &["latest"]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &stderr(&out);
    assert!(text.contains("forged"), "{text}");
    // Without the signature check, only the header's name gives this one
    // away (it was sealed under the forger's own name); a forgery made
    // under the stolen name would pass: that is exactly what signing adds.
    let out = verify(&unsigned, &["latest"]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains(&format!("the header names backup \"{new_name}\"")),
        "{text}"
    );

    // A removed signature is as bad as a wrong one.
    fs::remove_file(&sig).unwrap();
    assert_eq!(code(&verify(&signed, &["latest"])), 3);
}

#[test]
fn retention_removes_signatures_with_their_backups() {
    let e = Env::new();
    let key = e.p("sign.key");
    ok(&["keygen", "--type", "signing", "-o", key.to_str().unwrap()]);
    let cfg = e.config("c.toml", "keep_last = 1\nsigning_key = \"sign.key\"", ECHO);
    for _ in 0..3 {
        ok(&["backup", "-c", cfg.to_str().unwrap()]);
    }
    let files = e.store_files();
    assert_eq!(files.len(), 3, "{files:?}");
    assert!(files.iter().any(|f| f.ends_with(".minisig")), "{files:?}");
}

#[test]
fn a_group_readable_signing_key_is_refused() {
    let e = Env::new();
    let key = e.p("sign.key");
    ok(&["keygen", "--type", "signing", "-o", key.to_str().unwrap()]);
    chmod(&key, 0o640);
    let cfg = e.config("c.toml", "signing_key = \"sign.key\"", ECHO);
    let out = coffer(&["backup", "-c", cfg.to_str().unwrap()]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(stderr(&out).contains("chmod 600"), "{}", stderr(&out));
    assert!(e.store_files().is_empty());
}

#[test]
fn metrics_file_parses_after_success_and_after_failure() {
    let e = Env::new();
    let metrics = e.p("coffer.prom");
    let good = e.config("good.toml", "", ECHO);
    ok(&[
        "backup",
        "-c",
        good.to_str().unwrap(),
        "--metrics-file",
        metrics.to_str().unwrap(),
    ]);
    let store = format!("local:{}", e.p("store").display());
    let s = parse_metrics(&metrics);
    let success = value(&s, "coffer_backup_last_success_timestamp_seconds{job=db}");
    let now = chrono::Utc::now().timestamp() as f64;
    assert!((now - success).abs() < 120.0, "{success} vs {now}");
    assert_eq!(value(&s, "coffer_backup_last_run_success{job=db}"), 1.0);
    assert_eq!(value(&s, "coffer_backup_last_run_bytes_in{job=db}"), 24.0);
    assert!(value(&s, "coffer_backup_last_run_bytes_out{job=db}") > 24.0);
    assert!(value(&s, "coffer_backup_last_run_duration_seconds{job=db}") >= 0.0);
    assert_eq!(
        value(
            &s,
            &format!("coffer_backup_store_last_run_success{{job=db,store={store}}}")
        ),
        1.0
    );
    assert_eq!(
        value(&s, &format!("coffer_backup_kept{{job=db,store={store}}}")),
        1.0
    );
    assert_eq!(
        fs::metadata(&metrics).unwrap().permissions().mode() & 0o777,
        0o644,
        "the collector must be able to read it"
    );

    std::thread::sleep(std::time::Duration::from_millis(50));
    let bad = e.config("bad.toml", "", r#"["sh", "-c", "echo partial; exit 1"]"#);
    let out = coffer(&[
        "backup",
        "-c",
        bad.to_str().unwrap(),
        "--metrics-file",
        metrics.to_str().unwrap(),
    ]);
    assert_eq!(code(&out), 1);
    let s = parse_metrics(&metrics);
    assert_eq!(value(&s, "coffer_backup_last_run_success{job=db}"), 0.0);
    assert_eq!(
        value(&s, "coffer_backup_last_success_timestamp_seconds{job=db}"),
        success,
        "a failure keeps the last success time"
    );
    assert!(value(&s, "coffer_backup_last_run_timestamp_seconds{job=db}") >= success);
    assert_eq!(
        value(
            &s,
            &format!("coffer_backup_store_last_run_success{{job=db,store={store}}}")
        ),
        0.0
    );
    // No temporary file is left beside it.
    let left: Vec<_> = fs::read_dir(e.dir.path())
        .unwrap()
        .map(|d| d.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".prom."))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn hooks_get_the_summary_and_a_clean_environment_and_cannot_change_the_result() {
    let e = Env::new();
    let out_dir = e.p("hook-out");
    fs::create_dir(&out_dir).unwrap();
    let record = |what: &str| {
        format!(
            r#"["sh", "-c", "cat > {0}/{what}.json; env > {0}/{what}.env"]"#,
            out_dir.display()
        )
    };
    let cfg = e.config(
        "c.toml",
        &format!(
            "on_success = {}\non_failure = {}",
            record("success"),
            record("failure")
        ),
        ECHO,
    );
    let run = |cfg: &Path| {
        Command::new(bin())
            .args(["backup", "-c", cfg.to_str().unwrap()])
            .env("COFFER_PASSPHRASE_FILE", "/secret/should-not-leak")
            .env("MYSQL_PWD", "hunter2")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let out = run(&cfg);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let summary: serde_json::Value =
        serde_json::from_slice(&fs::read(out_dir.join("success.json")).unwrap()).unwrap();
    assert_eq!(summary["status"], "success");
    assert_eq!(summary["job"], "db");
    assert_eq!(summary["exit_code"], 0);
    assert!(summary["name"].as_str().unwrap().starts_with("db-"));
    assert_eq!(summary["stores"][0]["ok"], true);
    let env = fs::read_to_string(out_dir.join("success.env")).unwrap();
    assert!(
        !env.contains("hunter2") && !env.contains("should-not-leak"),
        "{env}"
    );
    assert!(env.contains("COFFER_STATUS=success"), "{env}");
    assert!(!out_dir.join("failure.json").exists());

    // A failed run: the failure hook gets the error.
    let bad = e.config(
        "bad.toml",
        &format!("on_failure = {}", record("failure")),
        r#"["sh", "-c", "exit 3"]"#,
    );
    let out = run(&bad);
    assert_eq!(code(&out), 1);
    let summary: serde_json::Value =
        serde_json::from_slice(&fs::read(out_dir.join("failure.json")).unwrap()).unwrap();
    assert_eq!(summary["status"], "failure");
    assert_eq!(summary["exit_code"], 1);
    assert!(
        summary["error"].as_str().unwrap().contains("dump"),
        "{summary}"
    );

    // A failing hook is reported, and the backup still succeeds.
    let failing = e.config(
        "failing.toml",
        r#"on_success = ["sh", "-c", "echo 'webhook said no' >&2; exit 7"]"#,
        ECHO,
    );
    let before = e.store_files().len();
    let out = run(&failing);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("on_success hook") && stderr(&out).contains("webhook said no"),
        "{}",
        stderr(&out)
    );
    assert!(e.store_files().len() > before);
}
