//! The fault matrix: a local store (on a tmpfs the test can fill) and a real
//! SFTP store side by side, with one fault injected per row — the server
//! unreachable, its host key changed, the disk full at the sealed file or at
//! the sidecar, `kill -9` at each commit and retention step (made
//! deterministic with strace's fault injection), SIGTERM. Each row checks:
//! the backup is made wherever it can be, the exit code and the message name
//! the store at fault, nothing good is deleted, the next run succeeds and
//! leaves both stores clean, and keyless verify is green afterwards.
#![allow(clippy::too_many_lines)]

mod common;
mod harness;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::*;
use harness::Sshd;

/// Root is needed to mount the tmpfs and for sshd's chroot; CI runs as root.
fn root_or_skip(test: &str) -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    eprintln!("SKIP {test}: needs root (a tmpfs store to fill, sshd's chroot); CI runs as root");
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must run the fault matrix as root"
    );
    false
}

/// A small tmpfs, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, options: &str) -> Self {
        fs::create_dir_all(at).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(at)
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs {options}");
        Tmpfs(at.to_path_buf())
    }
    fn remount(&self, options: &str) {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,{options}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(st.success(), "remount {options}");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

struct Rig {
    dir: tempfile::TempDir,
    sshd: Sshd,
    cfg: String,
    local: PathBuf,
    key: PathBuf,
}

impl Rig {
    /// `data` bytes of incompressible data to back up, a local store at
    /// `local` (often a tmpfs), and the SFTP store.
    fn new(data: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        let key = p.join("backup.key");
        ok(&["keygen", "--type", "age", "--out", key.to_str().unwrap()]);
        // Signed: refill copies only what this host signed.
        ok(&[
            "keygen",
            "--type",
            "signing",
            "--out",
            p.join("sign.key").to_str().unwrap(),
        ]);
        fs::create_dir(p.join("data")).unwrap();
        fs::write(p.join("data/blob"), pattern(data, 11)).unwrap();
        let sshd = Sshd::start();
        let local = p.join("local");
        let cfg = p.join("coffer.toml");
        fs::write(
            &cfg,
            format!(
                "[job]\nname = \"prod\"\nrecipients = [\"{k}.pub\"]\nlock_file = \"{l}\"\nkeep_last = 3\n\
                 signing_key = \"{sk}\"\nsigning_public_key = \"{sk}.pub\"\n\
                 [[source]]\ntype = \"files\"\nname = \"data\"\npaths = [\"{d}\"]\n\
                 [[store]]\ntype = \"local\"\nname = \"local\"\npath = \"{s}\"\n{remote}",
                k = key.display(),
                l = p.join("lock").display(),
                sk = p.join("sign.key").display(),
                d = p.join("data").display(),
                s = local.display(),
                remote = sshd.store_config(""),
            ),
        )
        .unwrap();
        chmod(&cfg, 0o600);
        Rig {
            cfg: cfg.display().to_string(),
            dir,
            sshd,
            local,
            key,
        }
    }
    fn backup(&self) -> Output {
        coffer(&["backup", "-c", &self.cfg])
    }
    fn files(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .map(|d| {
                d.map(|e| e.unwrap().file_name().into_string().unwrap())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
    fn backups(dir: &Path) -> Vec<String> {
        Self::files(dir)
            .into_iter()
            .filter_map(|f| f.strip_suffix(".coffer").map(str::to_owned))
            .collect()
    }
    /// Both stores hold complete backups only (sealed file and sidecar, no
    /// partial, no orphan), the same ones, and keyless verify is green.
    fn assert_clean_and_green(&self, want: usize) {
        for dir in [&self.local, &self.sshd.data_dir()] {
            let files = Self::files(dir);
            let sealed = files.iter().filter(|f| f.ends_with(".coffer")).count();
            let sidecars = files.iter().filter(|f| f.ends_with(".coffer.json")).count();
            let sigs = files.iter().filter(|f| f.ends_with(".minisig")).count();
            assert_eq!(sigs, want, "{}: {files:?}", dir.display());
            assert_eq!(sealed, want, "{}: {files:?}", dir.display());
            assert_eq!(sidecars, want, "{}: {files:?}", dir.display());
            assert_eq!(
                files.len(),
                3 * want,
                "leftovers in {}: {files:?}",
                dir.display()
            );
        }
        assert_eq!(
            Self::backups(&self.local),
            Self::backups(&self.sshd.data_dir())
        );
        let out = coffer(&["verify", "-c", &self.cfg]);
        assert_eq!(
            code(&out),
            0,
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            stderr(&out)
        );
    }
    fn p(&self) -> &Path {
        self.dir.path()
    }
}

/// `coffer backup` under strace, killed with SIGKILL at the `when`-th call
/// of `syscall` in the main thread (strace counts calls per thread), or, with
/// `threads`, in whichever thread makes that many first.
fn backup_killed_at(rig: &Rig, syscall: &str, when: u32, threads: bool) -> Output {
    let follow: &[&str] = if threads { &["-f"] } else { &[] };
    Command::new("strace")
        .args(follow)
        .args(["-qq", "-o", "/dev/null", "-e"])
        .arg(format!("trace={syscall}"))
        .arg("-e")
        .arg(format!("inject={syscall}:signal=KILL:when={when}"))
        .arg(bin())
        .args(["backup", "-c", &rig.cfg])
        .stdin(Stdio::null())
        .output()
        .expect("strace")
}

#[test]
fn an_unreachable_server_costs_no_backup_and_is_refilled() {
    if !root_or_skip("an_unreachable_server_costs_no_backup_and_is_refilled") {
        return;
    }
    let mut rig = Rig::new(10_000);
    ok(&["backup", "-c", &rig.cfg]);
    rig.sshd.kill();
    let out = rig.backup();
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("complete in [local]"), "{err}");
    assert!(err.contains("failed in remote: cannot connect"), "{err}");
    assert!(!err.contains("remote: remote:"), "{err}");
    assert_eq!(Rig::backups(&rig.local).len(), 2);
    // The local store still serves list, restore and verify; each warns once
    // about the server, and verify says it could not check it (exit 1).
    let out = coffer(&["list", "-c", &rig.cfg]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        stderr(&out).matches("unreachable").count(),
        1,
        "{}",
        stderr(&out)
    );
    let to = rig.p().join("restored");
    let out = coffer(&[
        "restore",
        "-c",
        &rig.cfg,
        "-i",
        rig.key.to_str().unwrap(),
        "latest",
        "--to",
        to.to_str().unwrap(),
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("remote is unreachable"),
        "{}",
        stderr(&out)
    );
    let out = coffer(&["verify", "-c", &rig.cfg]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("could not be reached"),
        "{}",
        stderr(&out)
    );
    // The server comes back: the next run makes its backup everywhere and
    // refills the one the server missed.
    rig.sshd.restart();
    let out = rig.backup();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    rig.assert_clean_and_green(3);
}

#[test]
fn a_changed_host_key_is_exit_4_and_the_local_copy_is_made() {
    if !root_or_skip("a_changed_host_key_is_exit_4_and_the_local_copy_is_made") {
        return;
    }
    let rig = Rig::new(10_000);
    let pinned = fs::read_to_string(&rig.sshd.known_hosts).unwrap();
    fs::write(
        &rig.sshd.known_hosts,
        format!(
            "[127.0.0.1]:{} ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOmOEFiPx06ZVvO9khHQB51Ik1K+QbQITJ3OCz29uC0U\n",
            rig.sshd.port
        ),
    )
    .unwrap();
    let out = rig.backup();
    assert_eq!(code(&out), 4, "{}", stderr(&out));
    assert!(
        stderr(&out).to_lowercase().contains("host key"),
        "{}",
        stderr(&out)
    );
    assert_eq!(Rig::backups(&rig.local).len(), 1);
    assert!(Rig::files(&rig.sshd.data_dir()).is_empty());
    fs::write(&rig.sshd.known_hosts, pinned).unwrap();
    ok(&["backup", "-c", &rig.cfg]);
    rig.assert_clean_and_green(2);
}

#[test]
fn a_full_disk_at_the_sealed_file_or_the_sidecar_leaves_no_leftover() {
    if !root_or_skip("a_full_disk_at_the_sealed_file_or_the_sidecar_leaves_no_leftover") {
        return;
    }
    let rig = Rig::new(400_000);
    // Full at the sealed file: 256 KiB cannot hold 400 KB of ciphertext.
    let fs_local = Tmpfs::mount(&rig.local, "size=256k,mode=0700");
    let out = rig.backup();
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("complete in [remote]"), "{err}");
    assert!(err.contains("failed in local"), "{err}");
    assert!(err.contains("No space left"), "{err}");
    assert!(
        Rig::files(&rig.local).is_empty(),
        "{:?}",
        Rig::files(&rig.local)
    );
    assert_eq!(Rig::backups(&rig.sshd.data_dir()).len(), 1);
    // Room again: the next run succeeds, refills, and both are clean.
    fs_local.remount("size=16m");
    ok(&["backup", "-c", &rig.cfg]);
    rig.assert_clean_and_green(2);

    // Full at the sidecar: inodes for the sealed file only.
    let used = Rig::files(&rig.local).len();
    fs_local.remount(&format!("nr_inodes={}", used + 2));
    let out = rig.backup();
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("complete in [remote]"), "{err}");
    assert!(!err.contains("complete in []"), "{err}");
    fs_local.remount("nr_inodes=1000");
    ok(&["backup", "-c", &rig.cfg]);
    rig.assert_clean_and_green(3);
    drop(fs_local);
}

#[test]
fn kill_9_at_each_commit_and_retention_step_loses_nothing() {
    if !root_or_skip("kill_9_at_each_commit_and_retention_step_loses_nothing") {
        return;
    }
    let rig = Rig::new(10_000);
    for _ in 0..3 {
        ok(&["backup", "-c", &rig.cfg]);
    }
    // Local commits are link + unlink per file: the sealed file's on its
    // writer's thread (the first link of any thread), then the signature's
    // and the sidecar's on the main thread; retention (keep_last = 3, so
    // one old backup goes) then unlinks its sidecar, signature and sealed
    // file, after the main thread's two commits.
    let steps = [
        ("linkat", 1, true),
        ("linkat", 1, false),
        ("linkat", 2, false),
        ("unlink", 3, false),
        ("unlink", 4, false),
        ("unlink", 5, false),
    ];
    for (syscall, when, threads) in steps {
        let before = Rig::backups(&rig.local);
        let out = backup_killed_at(&rig, syscall, when, threads);
        assert!(
            !out.status.success(),
            "{syscall}#{when}: the run was not killed"
        );
        // Every complete backup from before is still complete, unless
        // retention was deleting exactly that one.
        let now = Rig::backups(&rig.local);
        let lost: Vec<&String> = before.iter().filter(|b| !now.contains(b)).collect();
        assert!(lost.len() <= 1, "{syscall}#{when}: lost {lost:?}");
        let out = rig.backup();
        assert_eq!(
            code(&out),
            0,
            "after kill at {syscall}#{when}: {}",
            stderr(&out)
        );
        rig.assert_clean_and_green(3);
    }
}

#[test]
fn sigterm_stops_cleanly_and_the_next_run_succeeds() {
    if !root_or_skip("sigterm_stops_cleanly_and_the_next_run_succeeds") {
        return;
    }
    let rig = Rig::new(10_000);
    ok(&["backup", "-c", &rig.cfg]);
    // A slow source, so the run is mid-stream when the signal comes.
    let slow = rig.p().join("slow.toml");
    fs::write(
        &slow,
        fs::read_to_string(&rig.cfg).unwrap().replace(
            "[[store]]\ntype = \"local\"",
            "[[source]]\ntype = \"command\"\nname = \"slow\"\nargv = [\"sh\", \"-c\", \"head -c 100000 /dev/zero; sleep 30\"]\n\
             [[store]]\ntype = \"local\"",
        ),
    )
    .unwrap();
    chmod(&slow, 0o600);
    let child = Command::new(bin())
        .args(["backup", "-c", slow.to_str().unwrap()])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(2));
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(i32::try_from(child.id()).unwrap()).unwrap(),
        rustix::process::Signal::Term,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    assert_eq!(Rig::backups(&rig.local).len(), 1);
    ok(&["backup", "-c", &rig.cfg]);
    rig.assert_clean_and_green(2);
}

#[test]
fn jobs_sharing_a_store_leave_each_other_alone() {
    // No root needed: a plain local store shared by jobs `prod` and `prod-db`.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let key = p.join("backup.key");
    ok(&["keygen", "--type", "age", "--out", key.to_str().unwrap()]);
    fs::write(p.join("f"), "x").unwrap();
    let store = p.join("store");
    let cfg = |job: &str| {
        let c = p.join(format!("{job}.toml"));
        fs::write(
            &c,
            format!(
                "[job]\nname = \"{job}\"\nrecipients = [\"{k}.pub\"]\nlock_file = \"{l}\"\nkeep_last = 1\nunsigned = true\n\
                 [[source]]\ntype = \"files\"\npaths = [\"{f}\"]\n[[store]]\ntype = \"local\"\npath = \"{s}\"\n",
                k = key.display(),
                l = p.join(format!("{job}.lock")).display(),
                f = p.join("f").display(),
                s = store.display(),
            ),
        )
        .unwrap();
        chmod(&c, 0o600);
        c.display().to_string()
    };
    let (prod, prod_db) = (cfg("prod"), cfg("prod-db"));
    ok(&["backup", "-c", &prod_db]);
    // prod-db's upload in flight, and a day-old partial coffer cannot name.
    let in_flight = store.join("prod-db-20261123T000100Z.coffer.partial");
    fs::write(&in_flight, "uploading").unwrap();
    let foreign = store.join("not a coffer name.partial");
    fs::write(&foreign, "?").unwrap();
    sh(&format!("touch -d '3 days ago' '{}'", foreign.display()), p);
    for _ in 0..2 {
        let out = coffer(&["backup", "-c", &prod]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
    }
    assert!(
        in_flight.exists(),
        "prod removed prod-db's upload in flight"
    );
    assert!(foreign.exists());
    let files = Rig::files(&store);
    assert_eq!(
        files
            .iter()
            .filter(|f| f.starts_with("prod-db-") && f.ends_with(".coffer"))
            .count(),
        1,
        "{files:?}"
    );
    assert_eq!(
        files
            .iter()
            .filter(|f| f.starts_with("prod-2") && f.ends_with(".coffer"))
            .count(),
        1,
        "{files:?}"
    );
    // Its own job's dead partial is prod-db's next run's to remove.
    ok(&["backup", "-c", &prod_db]);
    assert!(!in_flight.exists());
    // What is wrong with prod-db's files (a sealed file whose sidecar went,
    // days ago; a sidecar alone) is prod-db's verdict, not prod's.
    let lost = store.join("prod-db-20200101T000000Z.coffer");
    fs::write(&lost, "sealed").unwrap();
    sh(&format!("touch -d '3 days ago' '{}'", lost.display()), p);
    fs::write(store.join("prod-db-20200102T000000Z.coffer.json"), "{}").unwrap();
    let out = coffer(&["verify", "-c", &prod]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = coffer(&["verify", "-c", &prod_db]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
}

#[test]
fn a_run_whose_only_store_is_full_blames_the_store_not_the_source() {
    if !root_or_skip("a_run_whose_only_store_is_full_blames_the_store_not_the_source") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let key = p.join("backup.key");
    ok(&["keygen", "--type", "age", "--out", key.to_str().unwrap()]);
    fs::write(p.join("blob"), pattern(2_000_000, 5)).unwrap();
    let store = p.join("store");
    let full = Tmpfs::mount(&store, "size=256k,mode=0700");
    let cfg = p.join("c.toml");
    fs::write(
        &cfg,
        format!(
            "[job]\nname = \"prod\"\nrecipients = [\"{k}.pub\"]\nlock_file = \"{l}\"\nunsigned = true\n\
             [[source]]\ntype = \"files\"\nname = \"data\"\npaths = [\"{b}\"]\n\
             [[store]]\ntype = \"local\"\nname = \"local\"\npath = \"{s}\"\n",
            k = key.display(),
            l = p.join("lock").display(),
            b = p.join("blob").display(),
            s = store.display(),
        ),
    )
    .unwrap();
    chmod(&cfg, 0o600);
    let out = coffer(&["backup", "-c", cfg.to_str().unwrap()]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("failed in every store"), "{err}");
    assert!(err.contains("local: "), "{err}");
    assert!(err.contains("No space left"), "{err}");
    assert!(
        !err.contains("files source"),
        "the source was blamed: {err}"
    );
    assert!(!err.contains("complete in []"), "{err}");
    assert!(err.contains("no copy of this backup was made"), "{err}");
    assert!(Rig::files(&store).is_empty(), "{:?}", Rig::files(&store));
    drop(full);
}

#[test]
fn an_unreachable_server_is_tried_once_per_run_not_at_every_step() {
    if !root_or_skip("an_unreachable_server_is_tried_once_per_run_not_at_every_step") {
        return;
    }
    // The ledger, the upload, the copy from the local store and retention
    // each need the server; once every attempt to connect has failed, the
    // rest of the run fails fast with the same error instead of waiting out
    // the retries (and their backoff) again at each step.
    let mut rig = Rig::new(10_000);
    rig.sshd.kill();
    let trace = rig.p().join("connects");
    let out = Command::new("strace")
        .args(["-f", "-qq", "-e", "trace=connect", "-o"])
        .arg(&trace)
        .arg(bin())
        .args(["backup", "-c", &rig.cfg])
        .stdin(Stdio::null())
        .output()
        .expect("strace");
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let port = format!("htons({})", rig.sshd.port);
    let attempts = fs::read_to_string(&trace)
        .unwrap()
        .lines()
        .filter(|l| l.contains(&port))
        .count();
    // `retries = 2` in the harness's store block: one run, two attempts.
    assert_eq!(attempts, 2, "connected {attempts} times");
    assert_eq!(Rig::backups(&rig.local).len(), 1);
}

/// A server that hangs mid-upload with its connection open (its sessions
/// stopped, as a wedged host or a dead link leaves them) must not hold the
/// night: the upload's write times out, the run goes on without waiting for
/// the dead upload to be torn down, the local store gets the whole backup,
/// and the server gets it again by a fresh connection (a new session) from
/// the local copy — with a warning that says so, not in silence.
#[test]
fn a_server_that_hangs_mid_upload_is_left_and_refilled_with_a_warning() {
    if !root_or_skip("a_server_that_hangs_mid_upload_is_left_and_refilled_with_a_warning") {
        return;
    }
    let sshd = Sshd::start();
    let t = tempfile::tempdir().unwrap();
    let p = t.path();
    let key = p.join("backup.key");
    ok(&["keygen", "--type", "age", "--out", key.to_str().unwrap()]);
    let local = p.join("local");
    let cfg = p.join("coffer.toml");
    // Some data, a pause (the upload is under way when the server hangs),
    // then more than every buffer on the way can hold.
    fs::write(
        &cfg,
        format!(
            "[job]\nname = \"prod\"\nrecipients = [\"{k}.pub\"]\nlock_file = \"{l}\"\ncompression = \"none\"\nunsigned = true\n\
             [[source]]\ntype = \"command\"\nname = \"data\"\n\
             argv = [\"sh\", \"-c\", \"head -c 2000000 /dev/urandom; sleep 3; head -c 40000000 /dev/urandom\"]\n\
             [[store]]\ntype = \"local\"\nname = \"local\"\npath = \"{s}\"\n{remote}",
            k = key.display(),
            l = p.join("lock").display(),
            s = local.display(),
            remote = sshd.store_config(""),
        ),
    )
    .unwrap();
    chmod(&cfg, 0o600);
    let mut child = Command::new(bin())
        .args(["backup", "-c", cfg.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    sshd.freeze_sessions(true);
    let started = std::time::Instant::now();
    let deadline = started + std::time::Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            sshd.freeze_sessions(false);
            panic!("the backup still waits on the hung server after 120 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    sshd.freeze_sessions(false);
    let out = child.wait_with_output().unwrap();
    let said = format!("after {:?}: {}", started.elapsed(), stderr(&out));
    assert_eq!(code(&out), 0, "{said}");
    assert!(
        said.contains("remote: the upload failed")
            && said.contains("copied there again from local"),
        "{said}"
    );
    let names = Rig::backups(&local);
    assert_eq!(names.len(), 1, "{:?}", Rig::files(&local));
    assert_eq!(Rig::backups(&sshd.data_dir()), names);
    let out = coffer(&["verify", "-c", cfg.to_str().unwrap()]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
}

/// One store's configuration that is not right — an SFTP store whose
/// known_hosts file is missing, whose key others can read, a local store
/// whose directory cannot be made — costs that store its copy, not the
/// night: the good store gets the backup, and the run exits 2 naming each
/// store left out. Several stores that all fail are each named.
#[test]
fn a_misconfigured_store_costs_only_its_own_copy() {
    let t = tempfile::tempdir().unwrap();
    let p = t.path();
    let key = p.join("backup.key");
    ok(&["keygen", "--type", "age", "--out", key.to_str().unwrap()]);
    fs::write(p.join("a-file"), "not a directory").unwrap();
    let loose = p.join("loose_ed25519");
    fs::write(&loose, "not really a key").unwrap();
    chmod(&loose, 0o644);
    let good = p.join("good");
    let config = |stores: &str| {
        let cfg = p.join("coffer.toml");
        let keep = "keep_last = 1\n";
        fs::write(
            &cfg,
            format!(
                "[job]\nname = \"prod\"\nrecipients = [\"{k}.pub\"]\nlock_file = \"{l}\"\nunsigned = true\n{keep}\
                 [[source]]\ntype = \"command\"\nname = \"db\"\nargv = [\"echo\", \"rows\"]\n{stores}",
                k = key.display(),
                l = p.join("lock").display(),
            ),
        )
        .unwrap();
        chmod(&cfg, 0o600);
        cfg.display().to_string()
    };
    let sftp = |name: &str, identity: &Path, known_hosts: &Path| {
        format!(
            "[[store]]\ntype = \"sftp\"\nname = \"{name}\"\nhost = \"127.0.0.1\"\nport = 9\nuser = \"backup\"\n\
             identity = \"{}\"\nknown_hosts = \"{}\"\npath = \"backups\"\n",
            identity.display(),
            known_hosts.display()
        )
    };
    let local = |name: &str, dir: &Path| {
        format!(
            "[[store]]\ntype = \"local\"\nname = \"{name}\"\npath = \"{}\"\n",
            dir.display()
        )
    };
    // A night before, with the good store alone (keep_last = 1).
    ok(&["backup", "-c", &config(&local("good", &good))]);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let cfg = config(&format!(
        "{}{}{}",
        local("good", &good),
        sftp("no-known-hosts", &loose, &p.join("missing_known_hosts")),
        local("not-a-dir", &p.join("a-file/store")),
    ));
    let metrics = p.join("coffer.prom");
    let out = coffer(&[
        "backup",
        "-c",
        &cfg,
        "--metrics-file",
        metrics.to_str().unwrap(),
    ]);
    let err = stderr(&out);
    assert_eq!(code(&out), 2, "{err}");
    // What did happen is said: the bytes written, what the good store kept
    // (retention ran there), and which stores failed.
    let m = fs::read_to_string(&metrics).unwrap();
    let value = |series: &str| -> f64 {
        m.lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in {m}"))
    };
    assert!(value("coffer_backup_last_run_bytes_out{") > 0.0, "{m}");
    assert!(
        (value("coffer_backup_kept{job=\"prod\",store=\"good\"}") - 1.0).abs() < f64::EPSILON,
        "{m}"
    );
    assert!(
        (value("coffer_backup_store_last_run_success{job=\"prod\",store=\"good\"}") - 1.0).abs()
            < f64::EPSILON,
        "{m}"
    );
    assert!(
        value("coffer_backup_store_last_run_success{job=\"prod\",store=\"not-a-dir\"}").abs()
            < f64::EPSILON,
        "{m}"
    );
    assert!(err.contains("complete in [good]"), "{err}");
    assert!(err.contains("no-known-hosts: "), "{err}");
    assert!(err.contains("not-a-dir: "), "{err}");
    assert_eq!(
        fs::read_dir(&good)
            .unwrap()
            .filter(|e| e
                .as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".coffer.json"))
            .count(),
        1
    );
    // Every store wrong: nothing is made, and each is named.
    let cfg = config(&format!(
        "{}{}",
        sftp("no-known-hosts", &loose, &p.join("missing_known_hosts")),
        local("not-a-dir", &p.join("a-file/store")),
    ));
    let out = coffer(&["backup", "-c", &cfg]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
}
