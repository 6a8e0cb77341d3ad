//! What the operator is told when things go wrong: the exit code and message
//! must point at the real problem — the target, the configuration, the lock —
//! and never call a good backup damaged.

mod common;
mod harness;

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
                "[job]\nname = \"prod\"\nrecipients = [\"{key}.pub\"]\nlock_file = \"{lock}\"\n{unsigned}{job}\n\
                 [[source]]\ntype = \"command\"\nname = \"data\"\nargv = [\"sh\", \"-c\", {script:?}]\n\n\
                 [[store]]\ntype = \"local\"\npath = \"{store}\"\n{stores}",
                key = self.key.display(),
                lock = self.p().join("coffer.lock").display(),
                store = self.store().display(),
                unsigned = unsigned_unless_signed(job),
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
    let out = e.restore_to(&cfg, &target, &["--force", "--trust-unsigned"]);
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

/// Runs coffer as `nobody`, for what root could always read.
fn as_nobody(args: &[&str]) -> Output {
    Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
        .arg(bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn config_check(cfg: &Path) -> Output {
    Command::new(bin())
        .args(["config", "check", "-c", cfg.to_str().unwrap()])
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn restore_to_stdout_on_a_full_disk_blames_the_output_not_the_backup() {
    if !is_root() {
        eprintln!("SKIP: mounting a small tmpfs needs root");
        return;
    }
    let e = Env::new();
    let cfg = e.backup("head -c 3145728 /dev/urandom");
    let full = match Tmpfs::mount(&e.p().join("small"), "1m") {
        Ok(m) => m,
        Err(why) => {
            eprintln!("SKIP: cannot mount a tmpfs here: {why}");
            return;
        }
    };
    for member in [None, Some("command/data")] {
        let sink = full.0.join("out");
        let _ = fs::remove_file(&sink);
        let mut args = vec![
            "restore",
            "-c",
            cfg.to_str().unwrap(),
            "-i",
            e.key.to_str().unwrap(),
            "latest",
            "--stdout",
        ];
        args.extend(member.iter().flat_map(|m| ["--member", *m]));
        let out = Command::new(bin())
            .args(&args)
            .stdin(Stdio::null())
            .stdout(fs::File::create(&sink).unwrap())
            .output()
            .unwrap();
        assert_eq!(code(&out), 1, "{member:?}: {}", stderr(&out));
        assert_not_called_damaged(&out);
        let err = stderr(&out);
        assert!(
            err.contains("<stdout>: cannot write") && err.contains("not at fault"),
            "{member:?}: {err}"
        );
    }
}

#[test]
fn a_store_path_that_is_a_file_is_a_config_error() {
    let e = Env::new();
    fs::write(e.store(), "not a directory").unwrap();
    let cfg = e.config("", "echo x", "");
    let store = e.store().display().to_string();
    for out in [
        config_check(&cfg),
        e.run(&["backup", "-c", cfg.to_str().unwrap()]),
    ] {
        assert_eq!(code(&out), 2, "{}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains(&store) && err.contains("is not a directory"),
            "{err}"
        );
        assert!(!err.contains("does not exist"), "{err}");
    }
}

#[test]
fn a_missing_recipients_file_says_no_such_file() {
    let e = Env::new();
    let cfg = e.config("", "echo x", "");
    let missing = e.p().join("keys/backup-public-key-that-is-not-there.pem");
    let text = fs::read_to_string(&cfg).unwrap().replace(
        &format!("{}.pub", e.key.display()),
        &missing.display().to_string(),
    );
    fs::write(&cfg, text).unwrap();
    for out in [
        config_check(&cfg),
        e.run(&["backup", "-c", cfg.to_str().unwrap()]),
    ] {
        assert_eq!(code(&out), 2, "{}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains(&missing.display().to_string()) && err.contains("no such file"),
            "{err}"
        );
        assert!(!err.contains("not a recognised recipient"), "{err}");
    }
    assert!(!e.store().exists());
}

/// A missing known_hosts is the configuration's fault (exit 2, naming the
/// file), and costs only its own store: the local store still gets the
/// night's backup. `config check` finds it before any run.
#[test]
fn a_missing_known_hosts_costs_only_its_own_store() {
    let e = Env::new();
    let id = e.p().join("id_ed25519");
    fs::write(&id, "unused: the store is left out before reading it\n").unwrap();
    chmod(&id, 0o600);
    let known_hosts = e.p().join("ssh/known_hosts");
    let cfg = e.config(
        "",
        "echo x",
        &format!(
            "\n[[store]]\ntype = \"sftp\"\nhost = \"127.0.0.1\"\nuser = \"backup\"\nidentity = \"{}\"\nknown_hosts = \"{}\"\npath = \"backups\"\n",
            id.display(),
            known_hosts.display()
        ),
    );
    let out = e.run(&["backup", "-c", cfg.to_str().unwrap()]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&known_hosts.display().to_string()) && err.contains("no such file"),
        "{err}"
    );
    let sidecars = fs::read_dir(e.store())
        .unwrap()
        .filter(|f| {
            f.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".coffer.json")
        })
        .count();
    assert_eq!(sidecars, 1, "the local store did not get the backup: {err}");
    let out = config_check(&cfg);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(stderr(&out).contains("no such file"), "{}", stderr(&out));
}

#[test]
fn an_unreadable_recipients_file_is_the_same_error_from_backup_and_check() {
    if !is_root() {
        eprintln!("SKIP: making a file unreadable to coffer needs another user (run as root)");
        return;
    }
    let e = Env::new();
    // nobody must reach the config, but not read the recipients file.
    chmod(e.p(), 0o755);
    let recipients = e.p().join("recipients.txt");
    fs::copy(format!("{}.pub", e.key.display()), &recipients).unwrap();
    chmod(&recipients, 0o600);
    let cfg = e.config("", "echo x", "");
    let text = fs::read_to_string(&cfg).unwrap().replace(
        &format!("{}.pub", e.key.display()),
        &recipients.display().to_string(),
    );
    fs::write(&cfg, text).unwrap();
    chmod(&cfg, 0o644);

    let check = as_nobody(&["config", "check", "-c", cfg.to_str().unwrap()]);
    let backup = as_nobody(&["backup", "-c", cfg.to_str().unwrap()]);
    for out in [&check, &backup] {
        assert_eq!(code(out), 2, "{}", stderr(out));
        let err = stderr(out);
        assert!(
            err.contains(&recipients.display().to_string()) && err.contains("permission denied"),
            "{err}"
        );
    }
    assert!(!e.store().exists());
}

/// Holds `flock` on `path` as `nobody` until dropped.
struct HeldByNobody(std::process::Child);

impl HeldByNobody {
    fn start(path: &Path) -> Self {
        let child = Command::new("setpriv")
            .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
            .args(["flock", "-n"])
            .arg(path)
            .args(["sleep", "60"])
            .spawn()
            .unwrap();
        for _ in 0..100 {
            if path.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // flock creates the file before it locks it.
        std::thread::sleep(std::time::Duration::from_millis(200));
        HeldByNobody(child)
    }
}

impl Drop for HeldByNobody {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_lock_another_user_can_make_is_refused_not_honoured() {
    if !is_root() {
        eprintln!("SKIP: acting as another user (nobody) needs root");
        return;
    }
    let e = Env::new();
    // A world-writable, sticky directory like /run/lock: nobody makes the
    // lock file there first and holds it.
    let shared = e.p().join("shared");
    fs::create_dir(&shared).unwrap();
    chmod(&shared, 0o1777);
    chmod(e.p(), 0o755);
    let squatted = shared.join("coffer-prod.lock");
    let held = HeldByNobody::start(&squatted);
    let cfg = e.config("", "echo x", "");
    let text = fs::read_to_string(&cfg).unwrap().replace(
        &e.p().join("coffer.lock").display().to_string(),
        &squatted.display().to_string(),
    );
    fs::write(&cfg, text).unwrap();
    let out = e.run(&["backup", "-c", cfg.to_str().unwrap()]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        !err.contains("holds the lock"),
        "the squatter's lock was honoured: {err}"
    );
    assert!(
        err.contains(&shared.display().to_string()) && err.contains("writable by others"),
        "{err}"
    );
    assert!(!e.store().exists(), "a refused run created the store");
    drop(held);

    // The default lock lives in the runtime directory (systemd's
    // RuntimeDirectory=); a lock file there that another user owns is refused.
    let runtime = e.p().join("runtime");
    fs::create_dir(&runtime).unwrap();
    chmod(&runtime, 0o700);
    let planted = runtime.join("coffer-prod.lock");
    fs::write(&planted, "").unwrap();
    Command::new("chown")
        .args(["nobody:nogroup"])
        .arg(&planted)
        .status()
        .unwrap();
    let cfg = e.config("", "echo x", "");
    let text = fs::read_to_string(&cfg)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("lock_file"))
        .collect::<Vec<_>>()
        .join("\n");
    fs::write(&cfg, text).unwrap();
    let run = |env_dir: &Path| {
        Command::new(bin())
            .args(["backup", "-c", cfg.to_str().unwrap()])
            .env("RUNTIME_DIRECTORY", env_dir)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let out = run(&runtime);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&planted.display().to_string())
            && stderr(&out).contains("owned by uid 65534"),
        "{}",
        stderr(&out)
    );
    // Once it is gone, the run makes its own lock there, private.
    fs::remove_file(&planted).unwrap();
    let out = run(&runtime);
    assert!(out.status.success(), "{}", stderr(&out));
    let meta = fs::metadata(&planted).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::mode(&meta) & 0o777, 0o600);
}

#[test]
fn the_config_comes_from_coffer_config_or_the_default_path() {
    let e = Env::new();
    let cfg = e.config("", "echo x", "");
    let check = |env: Option<&Path>| {
        let mut c = Command::new(bin());
        c.args(["config", "check"]).env_remove("COFFER_CONFIG");
        if let Some(p) = env {
            c.env("COFFER_CONFIG", p);
        }
        c.stdin(Stdio::null()).output().unwrap()
    };
    let out = check(Some(&cfg));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&cfg.display().to_string()),
        "checked another file"
    );
    // An explicit -c wins over the environment.
    let out = Command::new(bin())
        .args(["config", "check", "-c", cfg.to_str().unwrap()])
        .env("COFFER_CONFIG", e.p().join("absent.toml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));

    let out = check(None);
    if Path::new("/etc/coffer/coffer.toml").exists() {
        eprintln!("/etc/coffer/coffer.toml exists here: not checking that it is the default");
    } else {
        assert_eq!(code(&out), 2, "{}", stderr(&out));
        assert!(
            stderr(&out).contains("/etc/coffer/coffer.toml: no such file")
                && stderr(&out).contains("COFFER_CONFIG"),
            "{}",
            stderr(&out)
        );
    }
}

#[test]
fn a_files_path_with_glob_characters_that_exists_is_taken_literally() {
    let e = Env::new();
    let odd = e.p().join("app[old]");
    fs::create_dir(&odd).unwrap();
    fs::write(odd.join("settings.ini"), "kept=1\n").unwrap();
    let cfg = e.config("", "echo x", "");
    let text = fs::read_to_string(&cfg).unwrap().replace(
        "[[store]]",
        &format!(
            "[[source]]\ntype = \"files\"\npaths = [{:?}]\n\n[[store]]",
            odd.display().to_string()
        ),
    );
    fs::write(&cfg, text).unwrap();
    let out = e.run(&["backup", "-c", cfg.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        !stderr(&out).contains("matches nothing"),
        "{}",
        stderr(&out)
    );
    let target = e.p().join("restored");
    let out = e.restore_to(&cfg, &target, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let member = target.join(format!("files/files{}/settings.ini", odd.display()));
    assert_eq!(fs::read_to_string(&member).unwrap(), "kept=1\n");
}

#[test]
fn list_columns_line_up_with_long_names() {
    let e = Env::new();
    let long_store = "offsite-copy-on-the-second-array-in-rack-7";
    let cfg = e.config(
        "",
        "echo x",
        &format!(
            "\n[[store]]\ntype = \"local\"\nname = \"{long_store}\"\npath = \"{}\"\n",
            e.p().join("store2").display()
        ),
    );
    let text = fs::read_to_string(&cfg).unwrap().replace(
        "name = \"prod\"",
        "name = \"production-database-cluster-eu-west-primary\"",
    );
    fs::write(&cfg, text).unwrap();
    let out = e.run(&["backup", "-c", cfg.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = e.run(&["list", "-c", cfg.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    let size_end = header.find("SIZE").unwrap() + "SIZE".len();
    let store_at = header.find("STORE").unwrap();
    let status_at = header.find("STATUS").unwrap();
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 2, "{text}");
    for row in &rows {
        assert_eq!(row.get(status_at..), Some("complete"), "{text}");
        assert!(
            row[..size_end].ends_with(|c: char| c.is_ascii_digit())
                && row[size_end..store_at].trim().is_empty(),
            "size not right-aligned under SIZE:\n{text}"
        );
        let store = row[store_at..status_at].trim_end();
        assert!(
            store == long_store || store.starts_with("local:"),
            "store column cut or shifted:\n{text}"
        );
    }
}

#[test]
fn a_hook_whose_background_child_keeps_stderr_open_does_not_hang_the_run() {
    let e = Env::new();
    let pidfile = e.p().join("hook-child.pid");
    let cfg = e.config(
        &format!(
            "on_success = [\"sh\", \"-c\", \"sleep 300 & echo $! > {}\"]",
            pidfile.display()
        ),
        "echo x",
        "",
    );
    let mut child = Command::new(bin())
        .args(["backup", "-c", cfg.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if started.elapsed() > std::time::Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    if let Ok(pid) = fs::read_to_string(&pidfile) {
        let _ = Command::new("kill").arg(pid.trim()).status();
    }
    let status = status.expect("the backup hung on its hook's background child");
    assert!(status.success());
    assert!(
        pidfile.exists(),
        "the hook did not run, so this test proved nothing"
    );
}

#[test]
fn a_full_sftp_disk_is_named_as_such_once_per_store() {
    if !is_root() {
        eprintln!("SKIP: filling the server's disk needs a tmpfs mount (root)");
        return;
    }
    let sshd = harness::Sshd::start();
    let full = match Tmpfs::mount(&sshd.data_dir(), "1m") {
        Ok(m) => m,
        Err(why) => {
            eprintln!("SKIP: cannot mount a tmpfs here: {why}");
            return;
        }
    };
    chmod(&full.0, 0o755);
    let e = Env::new();
    let cfg = e.config("", "head -c 3145728 /dev/urandom", &sshd.store_config(""));
    let out = e.run(&["backup", "-c", cfg.to_str().unwrap()]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("remote") && err.contains("refused the write") && err.contains("full disk"),
        "{err}"
    );
    assert!(!err.contains("failed: failure"), "{err}");
    assert!(!err.contains("remote: remote:"), "{err}");
    // The local store still got its copy, and the server kept no partial.
    assert_eq!(
        fs::read_dir(e.store())
            .unwrap()
            .filter(|f| f
                .as_ref()
                .unwrap()
                .path()
                .to_string_lossy()
                .ends_with(".coffer"))
            .count(),
        1
    );
    let left: Vec<_> = fs::read_dir(&full.0)
        .unwrap()
        .map(|f| f.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left on the server: {left:?}");
}

fn assert_refused(out: &Output, words: &[&str]) {
    let err = stderr(out);
    assert_eq!(code(out), 2, "{err}");
    for w in words {
        assert!(err.contains(w), "{w:?} missing: {err}");
    }
}

/// A private options file owned by `nobody`, reached through a symlink in
/// the test directory: (the link, the file, nobody's uid).
fn nobodys_options_file(e: &Env) -> (PathBuf, PathBuf, String) {
    // Private by mode, but nobody's: root's mariadb-dump would take
    // plugin-dir or default-auth from it.
    let theirs = e.p().join("theirs");
    fs::create_dir(&theirs).unwrap();
    let target = theirs.join("my.cnf");
    fs::write(&target, "[client]\nplugin-dir=/tmp/evil\n").unwrap();
    chmod(&target, 0o600);
    let nobody = String::from_utf8(
        Command::new("id")
            .args(["-u", "nobody"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_owned();
    assert!(Command::new("chown")
        .args(["nobody"])
        .arg(&target)
        .status()
        .unwrap()
        .success());
    let link = e.p().join("my.cnf");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    (link, target, nobody)
}

#[test]
fn an_options_file_another_user_owns_is_refused_even_through_a_symlink() {
    if !is_root() {
        eprintln!("SKIP: giving a file to another user needs root");
        return;
    }
    let e = Env::new();
    let (link, target, nobody) = nobodys_options_file(&e);
    let cfg = e.config("", "echo x", "");
    let text = fs::read_to_string(&cfg).unwrap().replace(
        "[[store]]",
        &format!(
            "[[source]]\ntype = \"mysql\"\nname = \"db\"\ndatabases = [\"app\"]\noptions_file = \"{}\"\n\n[[store]]",
            link.display()
        ),
    );
    fs::write(&cfg, text).unwrap();
    let out = e.run(&["backup", "-c", cfg.to_str().unwrap()]);
    assert_refused(
        &out,
        &[
            &link.display().to_string(),
            &format!("resolves to {}", target.display()),
            &format!("owned by uid {nobody}"),
        ],
    );
    assert!(!e.store().exists(), "a refused run made its store");
    let out = config_check(&cfg);
    assert_refused(&out, &[&format!("owned by uid {nobody}")]);
}

#[test]
fn a_secret_in_a_group_writable_directory_is_refused() {
    let e = Env::new();
    let sealed = seal_sample(e.p(), &format!("{}.pub", e.key.display()), b"hello");
    // The key itself is 0600, but its directory's group could swap it.
    let shared = e.p().join("shared");
    fs::create_dir(&shared).unwrap();
    let key = shared.join("backup.key");
    fs::copy(&e.key, &key).unwrap();
    chmod(&key, 0o600);
    chmod(&shared, 0o770);
    let out_file = e.p().join("out");
    let open = |k: &Path| {
        e.run(&[
            "open",
            "-i",
            k.to_str().unwrap(),
            "-o",
            out_file.to_str().unwrap(),
            sealed.to_str().unwrap(),
        ])
    };
    assert_refused(
        &open(&key),
        &[
            &key.display().to_string(),
            &format!(
                "is in {}, which is writable by group or others",
                shared.display()
            ),
            &format!("chmod go-w {}", shared.display()),
        ],
    );
    assert!(!out_file.exists());
    // Sticky, as /tmp: the key is accepted.
    chmod(&shared, 0o1777);
    let out = open(&key);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(fs::read(&out_file).unwrap(), b"hello");
}

#[test]
fn a_signing_public_key_others_can_write_is_refused() {
    let e = Env::new();
    let cfg = e.backup("echo x");
    let sign = e.p().join("sign.key");
    ok(&["keygen", "--type", "signing", "-o", sign.to_str().unwrap()]);
    let public = e.p().join("sign.key.pub");
    chmod(&public, 0o666);
    let text = fs::read_to_string(&cfg)
        .unwrap()
        .replace("unsigned = true\n", "")
        .replace(
            "[job]\n",
            &format!("[job]\nsigning_public_key = \"{}\"\n", public.display()),
        );
    fs::write(&cfg, text).unwrap();
    // Whoever can swap it decides which backups verify and restore believe.
    let out = e.run(&["verify", "-c", cfg.to_str().unwrap()]);
    assert_refused(
        &out,
        &[
            &public.display().to_string(),
            "writable by group or others",
            "chmod go-w",
        ],
    );
    let out = e.restore_to(&cfg, &e.p().join("restored"), &[]);
    assert_refused(&out, &["writable by group or others"]);
    assert!(!e.p().join("restored").exists());
}

#[test]
fn a_job_name_given_on_the_command_line_must_be_a_name() {
    let e = Env::new();
    let cfg = e.config("", "echo x", "");
    for bad in ["../x", "/tmp/x", ".hidden", ""] {
        let out = e.run(&["backup", "-c", cfg.to_str().unwrap(), "--job", bad]);
        assert_refused(&out, &["--job", "job name"]);
    }
    assert!(!e.store().exists(), "a refused run made its store");
    assert!(
        !fs::read_dir(e.p()).unwrap().any(|d| d
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with("x-")),
        "a backup escaped the store"
    );
    // A valid override still works.
    let out = e.run(&["backup", "-c", cfg.to_str().unwrap(), "--job", "other"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn restore_into_db_refuses_an_options_file_another_user_owns() {
    if !is_root() {
        eprintln!("SKIP: giving a file to another user needs root");
        return;
    }
    let e = Env::new();
    let cfg = e.backup("echo x");
    let (link, _, nobody) = nobodys_options_file(&e);
    let text = fs::read_to_string(&cfg).unwrap().replace(
        "[[store]]",
        &format!(
            "[[source]]\ntype = \"mysql\"\nname = \"db\"\ndatabases = [\"app\"]\noptions_file = \"{}\"\n\n[[store]]",
            link.display()
        ),
    );
    fs::write(&cfg, text).unwrap();
    // The client that loads the dump would read it with the restorer's rights.
    let out = e.run(&[
        "restore",
        "-c",
        cfg.to_str().unwrap(),
        "-i",
        e.key.to_str().unwrap(),
        "latest",
        "--into-db",
        "db",
        "--trust-unsigned",
    ]);
    assert_refused(
        &out,
        &[
            &link.display().to_string(),
            &format!("owned by uid {nobody}"),
        ],
    );
}

/// A path longer than the reader's name limit (1 MiB: a tree thousands of
/// directories deep) would make a backup no restore can read: it is left
/// out and named, and the rest is stored (exit 1).
#[test]
fn a_path_longer_than_any_reader_takes_is_left_out_and_named() {
    let e = Env::new();
    let p = e.p();
    let data = p.join("data");
    fs::create_dir(&data).unwrap();
    fs::write(data.join("a.txt"), "readable").unwrap();
    // 4300 directories of 250 bytes: past 1 MiB, made one level at a time.
    sh(
        "python3 -c \"import os\nos.chdir('data')\nfor _ in range(4300):\n    os.mkdir('d' * 250)\n    os.chdir('d' * 250)\nopen('f', 'w').write('deep')\"",
        p,
    );
    let cfg = e.config(
        "",
        "echo rows",
        &format!(
            "[[source]]\ntype = \"files\"\nname = \"tree\"\npaths = [\"{}\"]\n",
            data.display()
        ),
    );
    let out = Command::new(bin())
        .args(["backup", "-c", cfg.to_str().unwrap()])
        .env("XDG_RUNTIME_DIR", p)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = stderr(&out);
    sh("rm -rf data", p);
    assert_eq!(code(&out), 1, "{err}");
    assert!(
        err.contains("not backed up: a path longer than 1048576 bytes"),
        "{err}"
    );
    let listed = ok(&["list", "-c", cfg.to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains("complete"),
        "{}",
        String::from_utf8_lossy(&listed.stdout)
    );
}

#[test]
fn an_unreadable_file_costs_only_itself_not_the_night() {
    if !is_root() {
        eprintln!("SKIP: making a file unreadable to coffer needs another user (run as root)");
        return;
    }
    let e = Env::new();
    let p = e.p();
    let data = p.join("data");
    fs::create_dir_all(data.join("locked")).unwrap();
    fs::write(data.join("a.txt"), "readable").unwrap();
    fs::write(data.join("secret"), "root only").unwrap();
    fs::write(data.join("locked/inner"), "root only too").unwrap();
    let cfg = e.config(
        "keep_last = 1",
        "echo the database rows",
        &format!(
            "[[source]]\ntype = \"files\"\nname = \"tree\"\npaths = [\"{}\"]\n",
            data.display()
        ),
    );
    // Everything belongs to nobody but what the test makes unreadable.
    sh(&format!("chown -R nobody:nogroup {}", p.display()), p);
    chmod(p, 0o755);
    let cfg = cfg.to_str().unwrap();
    let backup = || {
        Command::new("setpriv")
            .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
            .arg(bin())
            .args(["backup", "-c", cfg])
            .env("XDG_RUNTIME_DIR", p)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let out = backup();
    assert!(out.status.success(), "{}", stderr(&out));

    sh(
        &format!(
            "chown root:root {d}/secret {d}/locked && chmod 000 {d}/secret && chmod 700 {d}/locked",
            d = data.display()
        ),
        p,
    );
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let out = backup();
    let err = stderr(&out);
    assert_eq!(code(&out), 1, "{err}");
    assert!(
        err.contains(&format!(
            "{}: not backed up: permission denied",
            data.join("secret").display()
        )) && err.contains(&format!(
            "{}: not backed up: permission denied",
            data.join("locked").display()
        )) && err.contains("2 path(s) could not be read"),
        "{err}"
    );
    // Stored, and retention ran as usual (keep_last = 1): a path that stays
    // unreadable must not stop pruning until the store is full.
    let mut sidecars: Vec<String> = fs::read_dir(e.store())
        .unwrap()
        .map(|f| f.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".coffer.json"))
        .collect();
    sidecars.sort();
    assert_eq!(sidecars.len(), 1, "{sidecars:?}");
    // It holds the command's output and the readable file (the restore
    // machine's root reads it from root's own directory).
    sh(&format!("chown -R root:root {}", p.display()), p);
    let newest = e.store().join(sidecars[0].trim_end_matches(".json"));
    let to = p.join("restored");
    let out = Command::new(bin())
        .args([
            "restore",
            "-i",
            e.key.to_str().unwrap(),
            newest.to_str().unwrap(),
            "--to",
            to.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let rows = fs::read_to_string(to.join("command/data")).unwrap();
    assert_eq!(rows, "the database rows\n");
    let rel = data.strip_prefix("/").unwrap();
    assert_eq!(
        fs::read_to_string(to.join("files/tree").join(rel).join("a.txt")).unwrap(),
        "readable"
    );
    assert!(!to.join("files/tree").join(rel).join("secret").exists());
}

#[test]
fn a_process_holding_a_private_key_cannot_be_dumped() {
    use std::os::unix::fs::MetadataExt;
    if !is_root() {
        eprintln!("SKIP: telling a non-dumpable process apart needs another user (run as root)");
        return;
    }
    let e = Env::new();
    sh(
        &format!("chown -R nobody:nogroup {}", e.p().display()),
        e.p(),
    );
    chmod(e.p(), 0o755);
    // Waits on stdin with the key loaded.
    let mut child = Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
        .arg(bin())
        .args(["open", "-i", e.key.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let proc = PathBuf::from(format!("/proc/{}", child.id()));
    let nobody = fs::metadata(e.p()).unwrap().uid();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let (mut core, mut owner) = (String::new(), nobody);
    while std::time::Instant::now() < deadline {
        core = fs::read_to_string(proc.join("limits"))
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("Max core file size"))
            .unwrap_or_default()
            .split_whitespace()
            .skip(4)
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        // A process that is not dumpable has its /proc files owned by root.
        owner = fs::metadata(proc.join("status")).map_or(nobody, |m| m.uid());
        if core == "0 0" && owner == 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    drop(child.stdin.take());
    let _ = child.wait();
    assert_eq!(core, "0 0", "core dumps are still allowed");
    assert_eq!(
        owner, 0,
        "the process is still dumpable (its /proc files are its user's)"
    );
}

#[test]
fn a_directory_above_a_configured_path_swapped_for_a_link_is_not_followed() {
    use std::os::unix::fs::symlink;
    if !is_root() {
        eprintln!("SKIP: a link another user owns needs another user (run as root)");
        return;
    }
    let e = Env::new();
    let p = e.p();
    chmod(p, 0o755);
    // Root's secrets, and a user's home with the tree the job backs up.
    fs::create_dir_all(p.join("secret/project")).unwrap();
    fs::write(p.join("secret/project/shadow"), "root only").unwrap();
    chmod(&p.join("secret"), 0o700);
    let home = p.join("home");
    fs::create_dir_all(home.join("docs/project")).unwrap();
    fs::write(home.join("docs/project/notes"), "hers").unwrap();
    // The operator's own link on the way is followed, as before.
    symlink(&home, p.join("home-link")).unwrap();
    let cfg = e.config(
        "",
        "echo the database rows",
        &format!(
            "[[source]]\ntype = \"files\"\nname = \"tree\"\npaths = [\"{}\"]\n",
            p.join("home-link/docs/project").display()
        ),
    );
    let cfg = cfg.to_str().unwrap();
    let out = e.run(&["backup", "-c", cfg]);
    assert!(out.status.success(), "{}", stderr(&out));
    // She owns her home, so she swaps `docs` for a link to root's tree.
    sh(&format!("chown -R nobody:nogroup {}", home.display()), p);
    fs::rename(home.join("docs"), home.join("docs.old")).unwrap();
    symlink(p.join("secret"), home.join("docs")).unwrap();
    sh(
        &format!("chown -h nobody:nogroup {}", home.join("docs").display()),
        p,
    );
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let out = e.run(&["backup", "-c", cfg]);
    let err = stderr(&out);
    assert_eq!(code(&out), 1, "{err}");
    assert!(
        err.contains(&format!("runs through {}", home.join("docs").display()))
            && err.contains("could have put there"),
        "{err}"
    );
    // The night's backup holds the rows and not root's file.
    let mut sealed: Vec<PathBuf> = fs::read_dir(e.store())
        .unwrap()
        .map(|f| f.unwrap().path())
        .filter(|f| f.to_string_lossy().ends_with(".coffer"))
        .collect();
    sealed.sort();
    let out = Command::new(bin())
        .args(["restore", "-i", e.key.to_str().unwrap()])
        .arg(sealed.last().unwrap())
        .arg("--stdout")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(listing.contains("the database rows"));
    assert!(
        !listing.contains("root only"),
        "root's file was backed up under her path"
    );
}

#[test]
fn a_restore_writes_only_into_directories_that_are_its_own_or_roots() {
    use std::os::unix::fs::symlink;
    if !is_root() {
        eprintln!("SKIP: a directory another user owns needs another user (run as root)");
        return;
    }
    let e = Env::new();
    let cfg = e.backup("echo precious");
    let refused = |target: &Path, why: &str| {
        let out = e.restore_to(&cfg, target, &[]);
        assert_eq!(code(&out), 2, "{}", stderr(&out));
        assert!(stderr(&out).contains(why), "{}", stderr(&out));
        assert_not_called_damaged(&out);
        assert!(
            !target.join("command/data").exists(),
            "written into {}",
            target.display()
        );
    };
    // A target another user made first.
    let hers = e.p().join("hers");
    fs::create_dir(&hers).unwrap();
    sh(&format!("chown nobody:nogroup {}", hers.display()), e.p());
    refused(&hers, "belongs to uid");
    // One anyone may write.
    let open = e.p().join("open");
    fs::create_dir(&open).unwrap();
    chmod(&open, 0o777);
    refused(&open, "others may write it");
    // A directory inside the target that the archive writes into.
    let mine = e.p().join("mine");
    fs::create_dir_all(mine.join("command")).unwrap();
    sh(
        &format!("chown nobody:nogroup {}", mine.join("command").display()),
        e.p(),
    );
    refused(&mine, "belongs to uid");
    // A link as the target: refused; the directory it names works.
    let real = e.p().join("real");
    fs::create_dir(&real).unwrap();
    let link = e.p().join("link");
    symlink(&real, &link).unwrap();
    refused(&link, "is a symlink");
    let out = e.restore_to(&cfg, &real, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        fs::read_to_string(real.join("command/data")).unwrap(),
        "precious\n"
    );
}
