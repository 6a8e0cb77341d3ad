//! What the operator is told when things go wrong: the exit code and message
//! must point at the real problem — the target, the configuration, the lock —
//! and never call a good backup damaged.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::*;

/// A temporary directory with an age key pair and a config writer.
struct Env {
    dir: tempfile::TempDir,
    key: PathBuf,
}

impl Env {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("backup.key");
        ok(&["keygen", "--type", "age", "--out", key.to_str().unwrap()]);
        Env { dir, key }
    }

    fn p(&self) -> &Path {
        self.dir.path()
    }

    fn store(&self) -> PathBuf {
        self.p().join("store")
    }

    /// A config with one command source printing `script`'s output, and a
    /// local store; `job` and `stores` add lines to `[job]` and stores.
    fn config(&self, job: &str, script: &str, stores: &str) -> PathBuf {
        let p = self.p().join("coffer.toml");
        fs::write(
            &p,
            format!(
                "[job]\nname = \"prod\"\nrecipients = [\"{key}.pub\"]\nlock_file = \"{lock}\"\n{job}\n\
                 [[source]]\ntype = \"command\"\nname = \"data\"\nargv = [\"sh\", \"-c\", {script:?}]\n\n\
                 [[store]]\ntype = \"local\"\npath = \"{store}\"\n{stores}",
                key = self.key.display(),
                lock = self.p().join("coffer.lock").display(),
                store = self.store().display(),
            ),
        )
        .unwrap();
        chmod(&p, 0o600);
        p
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(bin())
            .args(args)
            .env("XDG_RUNTIME_DIR", self.p())
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Makes one backup of `script`'s output; returns the config.
    fn backup(&self, script: &str) -> PathBuf {
        let cfg = self.config("", script, "");
        let out = self.run(&["backup", "-c", cfg.to_str().unwrap()]);
        assert!(out.status.success(), "backup: {}", stderr(&out));
        cfg
    }

    fn restore_to(&self, cfg: &Path, dir: &Path, extra: &[&str]) -> Output {
        let mut args = vec![
            "restore",
            "-c",
            cfg.to_str().unwrap(),
            "-i",
            self.key.to_str().unwrap(),
            "latest",
            "--to",
            dir.to_str().unwrap(),
        ];
        args.extend(extra);
        self.run(&args)
    }
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Exit 3 and its hint are for a damaged backup only.
fn assert_not_called_damaged(out: &Output) {
    assert_ne!(code(out), 3, "{}", stderr(out));
    assert!(!stderr(out).contains("do not trust"), "{}", stderr(out));
}

#[test]
fn restore_over_an_existing_file_is_a_usage_error_not_damage() {
    let e = Env::new();
    let cfg = e.backup("echo precious");
    let target = e.p().join("target");
    fs::create_dir_all(target.join("command")).unwrap();
    fs::write(target.join("command/data"), "already here").unwrap();

    let out = e.restore_to(&cfg, &target, &[]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert_not_called_damaged(&out);
    let err = stderr(&out);
    assert!(
        err.contains(&target.join("command/data").display().to_string())
            && err.contains("already exists"),
        "{err}"
    );
    assert!(
        err.lines()
            .any(|l| l.starts_with("coffer: hint:") && l.contains("--force")),
        "{err}"
    );
    assert_eq!(
        fs::read_to_string(target.join("command/data")).unwrap(),
        "already here"
    );

    // The same backup is fine: --force restores it.
    let out = e.restore_to(&cfg, &target, &["--force"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        fs::read_to_string(target.join("command/data")).unwrap(),
        "precious\n"
    );
}

/// A small tmpfs, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Result<Self, String> {
        fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if out.status.success() {
            Ok(Tmpfs(at.to_path_buf()))
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn restore_onto_a_full_disk_blames_the_target_not_the_backup() {
    if !is_root() {
        eprintln!("SKIP: mounting a small tmpfs needs root");
        return;
    }
    let e = Env::new();
    // Incompressible, so the sealed file is as large as the member: 3 MiB
    // cannot fit on a 1 MiB filesystem.
    let cfg = e.backup("head -c 3145728 /dev/urandom");
    let full = match Tmpfs::mount(&e.p().join("small"), "1m") {
        Ok(m) => m,
        Err(why) => {
            eprintln!("SKIP: cannot mount a tmpfs here: {why}");
            return;
        }
    };
    let out = e.restore_to(&cfg, &full.0, &[]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert_not_called_damaged(&out);
    let err = stderr(&out);
    assert!(
        err.contains(&full.0.join("command/data").display().to_string()),
        "the message should name the file on the target: {err}"
    );
    assert!(
        err.lines()
            .any(|l| l.starts_with("coffer: hint:") && l.contains("full")),
        "{err}"
    );
    // What was extracted is removed, and the backup itself still verifies.
    assert!(!full.0.join("command/data").exists());
    let out = e.run(&[
        "verify",
        "-c",
        cfg.to_str().unwrap(),
        "latest",
        "-i",
        e.key.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
}
