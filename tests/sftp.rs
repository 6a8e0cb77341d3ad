//! Shipping backups over SFTP to a real OpenSSH sshd that the harness starts
//! on a random loopback port, with its own host key and a chrooted SFTP-only
//! account.

mod common;
mod harness;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use harness::{SftpServer, Sshd};

struct Job {
    dir: tempfile::TempDir,
    key: PathBuf,
}

impl Job {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("backup.key");
        ok(&["keygen", "--type", "age", "--out", key.to_str().unwrap()]);
        let db = dir.path().join("app.db");
        sh(
            "sqlite3 app.db 'create table t(x); insert into t values (42)'",
            dir.path(),
        );
        assert!(db.exists());
        Job { dir, key }
    }

    fn config(&self, job_extra: &str, sources: &str, stores: &str) -> PathBuf {
        let p = self.dir.path().join("coffer.toml");
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

    fn sqlite(&self) -> String {
        format!(
            "[[source]]\ntype = \"sqlite\"\npath = \"{}\"\n",
            self.dir.path().join("app.db").display()
        )
    }

    fn local(&self) -> String {
        format!(
            "[[store]]\ntype = \"local\"\nname = \"local\"\npath = \"{}\"\n",
            self.local_dir().display()
        )
    }

    fn local_dir(&self) -> PathBuf {
        self.dir.path().join("local")
    }

    fn backup(&self, cfg: &Path) -> std::process::Output {
        Command::new(bin())
            .args(["backup", "-c", cfg.to_str().unwrap()])
            .env("TMPDIR", self.dir.path())
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }
}

fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn backup_lands_remotely_complete_and_opens() {
    let sshd = Sshd::start();
    let j = Job::new();
    let cfg = j.config(
        "",
        &j.sqlite(),
        &format!("{}\n{}", j.local(), sshd.store_config("")),
    );
    let out = j.backup(&cfg);
    assert!(
        out.status.success(),
        "{}\nsshd log:\n{}",
        stderr(&out),
        sshd.log()
    );
    let remote = files(&sshd.data_dir());
    assert_eq!(remote.len(), 2, "{remote:?}");
    assert_eq!(
        remote,
        files(&j.local_dir()),
        "both stores hold the same backup"
    );
    let sealed = sshd.data_dir().join(&remote[0]);
    let sidecar: serde_json::Value =
        serde_json::from_slice(&fs::read(sshd.data_dir().join(&remote[1])).unwrap()).unwrap();
    assert_eq!(sidecar["sha256"].as_str().unwrap(), sha256_file(&sealed));
    assert_eq!(sidecar["blake3"].as_str().unwrap(), blake3_file(&sealed));
    assert_eq!(
        sidecar["size"].as_u64().unwrap(),
        fs::metadata(&sealed).unwrap().len()
    );
    assert_eq!(
        sha256_file(&sealed),
        sha256_file(&j.local_dir().join(&remote[0]))
    );
    let opened = ok(&[
        "open",
        "-i",
        j.key.to_str().unwrap(),
        sealed.to_str().unwrap(),
    ]);
    assert!(!opened.stdout.is_empty());
    // The upload used the pinned key and the dedicated client key.
    assert!(sshd.log().contains("Accepted publickey"), "{}", sshd.log());
    let listed = ok(&["list", "-c", cfg.to_str().unwrap(), "--store", "remote"]);
    assert!(String::from_utf8_lossy(&listed.stdout).contains("complete"));
}

/// A 300 MB backup of incompressible data (the whole stream crosses every
/// stage) over SFTP, sealed file and sidecar alike, within the backup's
/// memory goal (64 MiB peak RSS, as scripts/measure-memory.sh holds the
/// local and S3 stores to for 1 GiB), and whole on the server.
#[test]
fn a_300_mb_backup_over_sftp_stays_within_the_memory_goal() {
    let sshd = Sshd::start();
    let j = Job::new();
    let cfg = j.config(
        "",
        "[[source]]\ntype = \"command\"\nname = \"dump\"\nargv = [\"sh\", \"-c\", \"head -c 300M /dev/urandom\"]\n",
        &sshd.store_config(""),
    );
    let peak = j.dir.path().join("peak.kib");
    let out = Command::new("/usr/bin/time")
        .args(["-f", "%M", "-o"])
        .arg(&peak)
        .arg(bin())
        .args(["backup", "-c", cfg.to_str().unwrap()])
        .env("TMPDIR", j.dir.path())
        .stdin(Stdio::null())
        .output()
        .expect("GNU time (/usr/bin/time; scripts/install-test-deps.sh installs it)");
    assert!(out.status.success(), "{}", stderr(&out));
    let kib: u64 = fs::read_to_string(&peak)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    eprintln!("300 MB over SFTP: peak RSS {kib} KiB");
    assert!(kib < 64 * 1024, "peak RSS {kib} KiB over 64 MiB");
    let remote = files(&sshd.data_dir());
    let sealed = remote.iter().find(|f| f.ends_with(".coffer")).unwrap();
    let len = fs::metadata(sshd.data_dir().join(sealed)).unwrap().len();
    assert!(len > 300 << 20, "{len}");
    ok(&["verify", "-c", cfg.to_str().unwrap()]);
}

#[test]
fn unknown_and_changed_host_keys_are_refused() {
    let sshd = Sshd::start();
    let j = Job::new();
    // Unknown: known_hosts pins some other server only.
    let other = j.dir.path().join("kh-unknown");
    fs::write(&other, "[127.0.0.1]:1 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOmOEFiPx06ZVvO9khHQB51Ik1K+QbQITJ3OCz29uC0U\n").unwrap();
    let store = sshd
        .store_config("")
        .replace(sshd.known_hosts.to_str().unwrap(), other.to_str().unwrap());
    let cfg = j.config("", &j.sqlite(), &store);
    let out = j.backup(&cfg);
    assert_eq!(code(&out), 4, "{}", stderr(&out));
    let err = stderr(&out);
    let host_pub = fs::read_to_string(sshd.dir.path().join("host_ed25519.pub")).unwrap();
    let b64 = host_pub.split_whitespace().nth(1).unwrap();
    let fp = String::from_utf8(
        Command::new("ssh-keygen")
            .arg("-lf")
            .arg(sshd.dir.path().join("host_ed25519.pub"))
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let fp = fp.split_whitespace().nth(1).unwrap().to_owned();
    assert!(
        err.contains(&format!("ssh-ed25519 {fp}")),
        "fingerprint {fp} missing: {err}"
    );
    assert!(
        err.contains(&format!("[127.0.0.1]:{} ssh-ed25519 {b64}", sshd.port)),
        "trust line missing: {err}"
    );
    assert!(files(&sshd.data_dir()).is_empty(), "something was uploaded");
    assert!(
        !sshd.log().contains("Accepted publickey"),
        "the client authenticated to an unverified server"
    );

    // Changed: the right host pattern with a different key.
    let changed = j.dir.path().join("kh-changed");
    fs::write(&changed, format!("[127.0.0.1]:{} ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOmOEFiPx06ZVvO9khHQB51Ik1K+QbQITJ3OCz29uC0U\n", sshd.port)).unwrap();
    let store = sshd.store_config("").replace(
        sshd.known_hosts.to_str().unwrap(),
        changed.to_str().unwrap(),
    );
    let cfg = j.config("", &j.sqlite(), &store);
    let out = j.backup(&cfg);
    assert_eq!(code(&out), 4, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("HOST KEY CHANGED"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains(&fp), "{}", stderr(&out));
    assert!(files(&sshd.data_dir()).is_empty());

    // Hashed known_hosts entries work (ssh-keygen -H).
    let hashed = j.dir.path().join("kh-hashed");
    fs::copy(&sshd.known_hosts, &hashed).unwrap();
    sh(
        &format!(
            "ssh-keygen -q -H -f {} && rm -f {}.old",
            hashed.display(),
            hashed.display()
        ),
        j.dir.path(),
    );
    assert!(fs::read_to_string(&hashed).unwrap().starts_with("|1|"));
    let store = sshd
        .store_config("")
        .replace(sshd.known_hosts.to_str().unwrap(), hashed.to_str().unwrap());
    let cfg = j.config("", &j.sqlite(), &store);
    let out = j.backup(&cfg);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// A backup through a store whose known_hosts holds `lines`: refused with
/// exit 4 before the client authenticates, and the error.
fn refused_with_known_hosts(sshd: &Sshd, j: &Job, name: &str, lines: &str) -> String {
    let kh = j.dir.path().join(name);
    fs::write(&kh, lines).unwrap();
    let store = sshd
        .store_config("")
        .replace(sshd.known_hosts.to_str().unwrap(), kh.to_str().unwrap());
    let cfg = j.config("", &j.sqlite(), &store);
    let out = j.backup(&cfg);
    let err = stderr(&out);
    assert_eq!(code(&out), 4, "{name}: {err}");
    assert!(files(&sshd.data_dir()).is_empty(), "{name}: uploaded");
    assert!(
        !sshd.log().contains("Accepted publickey"),
        "{name}: the client authenticated to a refused server"
    );
    err
}

#[test]
fn revoked_certificate_only_and_portless_pins_are_refused() {
    let sshd = Sshd::start();
    let j = Job::new();
    let host_pub = fs::read_to_string(sshd.dir.path().join("host_ed25519.pub")).unwrap();
    let b64 = host_pub.split_whitespace().nth(1).unwrap();
    let trusted = fs::read_to_string(&sshd.known_hosts).unwrap();

    // A revocation wins over a trust line for the same key, before or after it.
    for (name, lines) in [
        (
            "kh-revoked-after",
            format!("{trusted}@revoked * ssh-ed25519 {b64}\n"),
        ),
        (
            "kh-revoked-before",
            format!("@revoked * ssh-ed25519 {b64}\n{trusted}"),
        ),
    ] {
        let err = refused_with_known_hosts(&sshd, &j, name, &lines);
        assert!(err.contains("REVOKED"), "{name}: {err}");
    }

    // Only a certificate authority names the host: refused with the reason,
    // not silently treated as unknown.
    let ca = format!(
        "@cert-authority [127.0.0.1]:{} ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOmOEFiPx06ZVvO9khHQB51Ik1K+QbQITJ3OCz29uC0U\n",
        sshd.port
    );
    let err = refused_with_known_hosts(&sshd, &j, "kh-ca", &ca);
    assert!(err.contains("does not support host certificates"), "{err}");
    assert!(
        err.contains(&trusted.trim().to_string()),
        "no pin line: {err}"
    );

    // A pin without a port is for port 22; the server listens elsewhere.
    assert_ne!(sshd.port, 22);
    let err = refused_with_known_hosts(
        &sshd,
        &j,
        "kh-portless",
        &format!("127.0.0.1 ssh-ed25519 {b64}\n"),
    );
    assert!(
        err.contains(&format!("host [127.0.0.1]:{} is not in", sshd.port)),
        "{err}"
    );

    // The same key pinned with its port is accepted, also hashed.
    let hashed = j.dir.path().join("kh-hashed-revoked");
    fs::write(&hashed, &trusted).unwrap();
    sh(
        &format!(
            "ssh-keygen -q -H -f {} && rm -f {}.old",
            hashed.display(),
            hashed.display()
        ),
        j.dir.path(),
    );
    let hashed_line = fs::read_to_string(&hashed).unwrap();
    assert!(hashed_line.starts_with("|1|"));
    let err = refused_with_known_hosts(
        &sshd,
        &j,
        "kh-hashed-revoked",
        &format!("{hashed_line}@revoked * ssh-ed25519 {b64}\n"),
    );
    assert!(err.contains("REVOKED"), "{err}");
    let store = sshd
        .store_config("")
        .replace(sshd.known_hosts.to_str().unwrap(), hashed.to_str().unwrap());
    fs::write(&hashed, &hashed_line).unwrap();
    let out = j.backup(&j.config("", &j.sqlite(), &store));
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn list_refuses_a_known_hosts_others_can_write_before_authenticating() {
    let sshd = Sshd::start();
    let j = Job::new();
    let cfg = j.config("", &j.sqlite(), &sshd.store_config(""));
    // Not only a backup checks it: list, prune and restore connect too.
    chmod(&sshd.known_hosts, 0o666);
    let out = coffer(&["list", "-c", cfg.to_str().unwrap(), "--store", "remote"]);
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&sshd.known_hosts.display().to_string())
            && err.contains("writable by group or others"),
        "{err}"
    );
    assert!(
        !sshd.log().contains("Accepted publickey"),
        "the client authenticated through an unchecked known_hosts"
    );
    chmod(&sshd.known_hosts, 0o644);
    let out = coffer(&["list", "-c", cfg.to_str().unwrap(), "--store", "remote"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn keyscan_prints_the_line_that_pins_the_server() {
    let sshd = Sshd::start();
    let out = ok(&["keyscan", "127.0.0.1", "--port", &sshd.port.to_string()]);
    let line = String::from_utf8(out.stdout.clone()).unwrap();
    assert_eq!(line, fs::read_to_string(&sshd.known_hosts).unwrap());
    assert!(stderr(&out).contains("SHA256:"));
}

#[test]
fn remote_retention_keeps_three_and_prune_false_keeps_all() {
    let sshd = Sshd::start();
    let j = Job::new();
    let cfg = j.config("keep_last = 3", &j.sqlite(), &sshd.store_config(""));
    for _ in 0..5 {
        let out = j.backup(&cfg);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let remote = files(&sshd.data_dir());
    assert_eq!(
        remote.iter().filter(|f| f.ends_with(".coffer")).count(),
        3,
        "{remote:?}"
    );
    assert_eq!(
        remote
            .iter()
            .filter(|f| f.ends_with(".coffer.json"))
            .count(),
        3,
        "{remote:?}"
    );

    let cfg = j.config(
        "keep_last = 1",
        &j.sqlite(),
        &sshd.store_config("prune = false"),
    );
    for _ in 0..2 {
        let out = j.backup(&cfg);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let remote = files(&sshd.data_dir());
    assert_eq!(
        remote.iter().filter(|f| f.ends_with(".coffer")).count(),
        5,
        "prune = false deleted something: {remote:?}"
    );
}

#[test]
fn readable_ssh_key_is_refused_with_the_fix() {
    let sshd = Sshd::start();
    let j = Job::new();
    chmod(&sshd.client_key, 0o644);
    let cfg = j.config("", &j.sqlite(), &sshd.store_config(""));
    let out = j.backup(&cfg);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("chmod 600 {}", sshd.client_key.display())),
        "{}",
        stderr(&out)
    );
    chmod(&sshd.client_key, 0o600);
}

#[test]
fn sshd_killed_mid_upload_fails_cleanly_and_the_next_run_recovers() {
    let mut sshd = Sshd::start();
    let j = Job::new();
    // A first good backup, which must survive everything below.
    let slow = "[[source]]\ntype = \"command\"\nname = \"slow\"\nargv = [\"sh\", \"-c\", \"head -c 3000000 /dev/urandom; sleep 3; head -c 1000 /dev/urandom\"]\n";
    let quick = j.config(
        "keep_last = 2",
        &j.sqlite(),
        &format!("{}\n{}", j.local(), sshd.store_config("")),
    );
    let out = j.backup(&quick);
    assert!(out.status.success(), "{}", stderr(&out));
    let first = files(&sshd.data_dir());
    let first_hash = sha256_file(&sshd.data_dir().join(&first[0]));

    let cfg = j.config(
        "keep_last = 2",
        slow,
        &format!("{}\n{}", j.local(), sshd.store_config("")),
    );
    let child = Command::new(bin())
        .args(["backup", "-c", cfg.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut saw_partial = false;
    for _ in 0..200 {
        if files(&sshd.data_dir())
            .iter()
            .any(|f| f.ends_with(".partial"))
        {
            saw_partial = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(saw_partial, "the upload never started");
    std::thread::sleep(Duration::from_millis(300));
    sshd.kill();
    let out = child.wait_with_output().unwrap();
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("complete in [local]") && err.contains("failed in remote"),
        "{err}"
    );

    // The first backup is intact.
    assert_eq!(sha256_file(&sshd.data_dir().join(&first[0])), first_hash);
    let remote_complete: Vec<String> = files(&sshd.data_dir())
        .into_iter()
        .filter(|f| f.ends_with(".coffer.json"))
        .collect();
    assert_eq!(
        remote_complete.len(),
        1,
        "only the first backup is complete remotely"
    );
    // The local store got the new backup.
    assert_eq!(
        files(&j.local_dir())
            .iter()
            .filter(|f| f.ends_with(".coffer.json"))
            .count(),
        2
    );

    // The server comes back. The dead upload is listed as a partial, never as a backup.
    sshd.restart();
    let listing = ok(&[
        "list",
        "-c",
        cfg.to_str().unwrap(),
        "--store",
        "remote",
        "--json",
    ]);
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&listing.stdout).unwrap();
    let complete: Vec<_> = rows.iter().filter(|r| r["status"] == "complete").collect();
    assert_eq!(complete.len(), 1, "{rows:?}");
    assert!(
        rows.iter().any(|r| r["status"] == "partial upload"),
        "{rows:?}"
    );
    // The next run succeeds and cleans the dead partial.
    let out = j.backup(&quick);
    assert!(out.status.success(), "{}", stderr(&out));
    let remote = files(&sshd.data_dir());
    assert!(
        !remote.iter().any(|f| f.ends_with(".partial")),
        "{remote:?}"
    );
    assert_eq!(
        remote
            .iter()
            .filter(|f| f.ends_with(".coffer.json"))
            .count(),
        2,
        "{remote:?}"
    );
}

/// A key the server refuses is a key problem (exit 4, as refused S3
/// credentials are), named with the account and the key, with a hint; the
/// local store still gets the backup.
#[test]
fn a_refused_ssh_key_is_exit_4_and_the_local_copy_is_made() {
    let sshd = Sshd::start();
    let j = Job::new();
    let other = j.dir.path().join("other_ed25519");
    let made = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&other)
        .status()
        .unwrap();
    assert!(made.success());
    let store = sshd.store_config("").replace(
        &sshd.client_key.display().to_string(),
        &other.display().to_string(),
    );
    let cfg = j.config("", &j.sqlite(), &format!("{}\n{store}", j.local()));
    let out = j.backup(&cfg);
    let err = stderr(&out);
    assert_eq!(code(&out), 4, "{err}");
    assert!(err.contains("complete in [local]"), "{err}");
    assert!(err.contains("authentication as"), "{err}");
    assert!(err.contains("hint: "), "{err}");
    assert_eq!(files(&j.local_dir()).len(), 2);
}

/// A server whose host key changed is a key problem, not an outage: `list`
/// and `verify` say so with exit 4, as `backup` does, and a `list` of that
/// store alone does not print an empty table and succeed.
#[test]
fn list_and_verify_report_a_changed_host_key_as_exit_4() {
    let sshd = Sshd::start();
    let j = Job::new();
    let cfg = j.config(
        "",
        &j.sqlite(),
        &format!("{}\n{}", j.local(), sshd.store_config("")),
    );
    let out = j.backup(&cfg);
    assert!(out.status.success(), "{}", stderr(&out));
    let changed = j.dir.path().join("kh-changed");
    fs::write(&changed, format!("[127.0.0.1]:{} ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOmOEFiPx06ZVvO9khHQB51Ik1K+QbQITJ3OCz29uC0U\n", sshd.port)).unwrap();
    let text = fs::read_to_string(&cfg).unwrap().replace(
        sshd.known_hosts.to_str().unwrap(),
        changed.to_str().unwrap(),
    );
    fs::write(&cfg, text).unwrap();
    let c = cfg.to_str().unwrap();
    let out = coffer(&["verify", "-c", c]);
    assert_eq!(code(&out), 4, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("HOST KEY CHANGED"),
        "{}",
        stderr(&out)
    );
    let out = coffer(&["list", "-c", c, "--store", "remote"]);
    assert_eq!(code(&out), 4, "{}", stderr(&out));
    // The store that answers is still listed when both are asked for.
    let out = coffer(&["list", "-c", c]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("local"));
    let out = coffer(&["list", "-c", c, "--store", "nowhere"]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
}

/// Dropbear in its default configuration: a 24 KiB receive window, on which
/// libssh2 hands back writes of zero bytes that are to be repeated.
#[test]
fn dropbear_with_its_default_window_serves_every_command() {
    let server = SftpServer::dropbear();
    let held = server.data_dir();
    let said = every_command(&server.store_config(""), &|| files(&held));
    assert!(!said.contains("warning"), "{said}");
}

/// ProFTPD's mod_sftp, chrooted to the store's directory.
#[test]
fn proftpd_mod_sftp_serves_every_command() {
    let server = SftpServer::proftpd();
    let held = server.data_dir();
    let said = every_command(&server.store_config(""), &|| files(&held));
    assert!(!said.contains("warning"), "{said}");
}

/// `rclone serve sftp`: no fsync@openssh.com (the run says once that the
/// server's durability is weaker, and stores the backup), and a rename that
/// would replace an existing file (coffer looks first).
#[test]
fn rclone_serve_sftp_serves_every_command_and_says_what_it_cannot_promise() {
    let server = SftpServer::rclone();
    let held = server.data_dir();
    let said = every_command(&server.store_config(""), &|| files(&held));
    assert_eq!(
        said.matches("the server does not offer fsync").count(),
        1,
        "{said}"
    );
}

/// A relative `path` starts at the login directory, which the chroot
/// recipe's `internal-sftp -d /backups` moves: the error names where the
/// path led and how to write it, and the local store still gets the backup.
#[test]
fn a_store_directory_that_is_not_there_is_named_with_the_fix() {
    let sshd = Sshd::start();
    let j = Job::new();
    let store = sshd.store_config("").replace(
        &format!("path = \"{}\"", sshd.remote_path),
        "path = \"backups\"",
    );
    assert!(store.contains("path = \"backups\""), "{store}");
    let cfg = j.config("", &j.sqlite(), &format!("{}\n{store}", j.local()));
    let out = j.backup(&cfg);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let said = stderr(&out);
    assert!(
        said.contains("directory \"backups\" does not exist on the server: a relative path starts at the login directory")
            && said.contains("path = \"/backups\""),
        "{said}"
    );
    assert_eq!(
        files(&j.local_dir()).len(),
        2,
        "{:?}",
        files(&j.local_dir())
    );
}

/// A server that accepts and then answers no request costs the run two
/// timeouts, not one per file: after a request goes unanswered on a fresh
/// connection too, the store is left for the rest of the run, the local
/// store gets the backup, and the failure says what happened.
#[test]
fn a_server_that_stops_answering_costs_one_timeout_not_one_per_file() {
    let sshd = Sshd::stalling();
    let j = Job::new();
    let cfg = j.config(
        "",
        &j.sqlite(),
        &format!(
            "{}\n{}",
            j.local(),
            sshd.store_config("")
                .replace("timeout_secs = 5", "timeout_secs = 2")
        ),
    );
    let out = j.backup(&cfg);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert_eq!(
        files(&j.local_dir()).len(),
        2,
        "{:?}",
        files(&j.local_dir())
    );
    // Whether a request, SFTP's own start or (on a loaded machine) the
    // handshake went unanswered.
    let said = stderr(&out);
    assert!(
        said.contains("stopped answering (a request had no reply within 2 s)")
            || said.contains("Timed out"),
        "{said}"
    );
    // A second connection after the first stall (a wedged session may be
    // alone in it), and the retries of a start that stalled (retries = 2):
    // a handful at most, where a run that waited out each file took one
    // connection per file.
    let connections = sshd.log().matches("Accepted publickey").count();
    assert!((1..=6).contains(&connections), "{}", sshd.log());
}

/// A run opens one SSH connection for everything it lists, looks at and
/// reads in a store (the sidecars and signatures of the backups held), and
/// one per file it uploads: not one per file it reads.
#[test]
fn a_run_reads_a_store_over_one_connection() {
    let sshd = Sshd::start();
    let j = Job::new();
    let sign = j.dir.path().join("sign.key");
    ok(&[
        "keygen",
        "--type",
        "signing",
        "--out",
        sign.to_str().unwrap(),
    ]);
    let cfg = j.config(
        &format!(
            "keep_last = 7\nsigning_key = \"{s}\"\nsigning_public_key = \"{s}.pub\"",
            s = sign.display()
        ),
        &j.sqlite(),
        &sshd.store_config(""),
    );
    for _ in 0..7 {
        let out = j.backup(&cfg);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let before = sshd.log().matches("Accepted publickey").count();
    let out = j.backup(&cfg);
    assert!(out.status.success(), "{}", stderr(&out));
    let during = sshd.log().matches("Accepted publickey").count() - before;
    // The sealed file, its sidecar and its signature each upload over
    // their own; everything else shares one.
    assert!(during <= 4, "{during} connections for one run");
    let held = files(&sshd.data_dir());
    assert_eq!(
        held.iter().filter(|f| f.ends_with(".coffer")).count(),
        7,
        "{held:?}"
    );
}
