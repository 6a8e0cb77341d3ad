//! The write-only server recipe (docs/BACKUP-SERVER.md), against a real
//! sshd: the database host uploads into its chrooted incoming directory,
//! `coffer ingest` on the server moves each signed backup out of the upload
//! account's reach, and the server's `prune` and `verify` work on that
//! repository. The upload account then attacks with everything SFTP allows,
//! and every genuine backup survives and verifies.
#![allow(clippy::too_many_lines)]

mod common;
mod harness;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use harness::Sshd;

/// Runs one SFTP command as the upload account; true if it succeeded.
fn sftp(sshd: &Sshd, dir: &Path, command: &str) -> bool {
    let batch = dir.join("batch");
    fs::write(&batch, format!("{command}\n")).unwrap();
    Command::new("sftp")
        .args(["-q", "-b"])
        .arg(&batch)
        .arg("-i")
        .arg(&sshd.client_key)
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", sshd.known_hosts.display()))
        .args([
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-P",
        ])
        .arg(sshd.port.to_string())
        .arg(format!("{}@127.0.0.1", sshd.user))
        .current_dir(dir)
        .output()
        .expect("run sftp")
        .status
        .success()
}

fn write(p: &Path, body: &str) -> String {
    fs::write(p, body).unwrap();
    chmod(p, 0o600);
    p.display().to_string()
}

fn backups(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| {
                e.ok()?
                    .file_name()
                    .into_string()
                    .ok()?
                    .strip_suffix(".coffer")
                    .map(str::to_owned)
            })
            .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn a_write_only_upload_account_cannot_hurt_ingested_backups() {
    if !rustix::process::geteuid().is_root() {
        // sshd chroots only for root: unprivileged, the repository would be
        // in the upload account's reach and the test would prove nothing.
        eprintln!("SKIP: needs root for sshd's ChrootDirectory (CI runs as root)");
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run this test as root"
        );
        return;
    }
    let sshd = Sshd::start();
    let t = tempfile::tempdir().unwrap();
    let p = t.path();
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
    fs::write(p.join("data/db.sql"), "genuine rows").unwrap();
    let job = format!(
        "[job]\nname = \"prod\"\nrecipients = [\"{k}.pub\"]\nlock_file = \"{l}\"\n",
        k = p.join("backup.key").display(),
        l = p.join("lock").display()
    );
    let source = format!(
        "[[source]]\ntype = \"files\"\nname = \"data\"\npaths = [\"{}\"]\n",
        p.join("data").display()
    );
    // The database host: signs, keeps its own copies, uploads, deletes
    // nothing remotely.
    let host = write(
        &p.join("host.toml"),
        &format!(
            "{job}signing_key = \"{s}\"\n{source}[[store]]\ntype = \"local\"\npath = \"{h}\"\n{remote}",
            s = p.join("sign.key").display(),
            h = p.join("host-store").display(),
            remote = sshd.store_config("prune = false"),
        ),
    );
    // The backup server: the repository, out of the upload account's reach
    // (outside its chroot), and only the signing public key.
    let repo = p.join("repo");
    let server = write(
        &p.join("server.toml"),
        &format!(
            "[job]\nname = \"prod\"\nkeep_last = 3\nsigning_public_key = \"{s}.pub\"\n\
             [[store]]\ntype = \"local\"\npath = \"{r}\"\n",
            s = p.join("sign.key").display(),
            r = repo.display(),
        ),
    );
    let incoming = sshd.data_dir();
    let from = incoming.to_str().unwrap();
    for _ in 0..3 {
        ok(&["backup", "-c", &host]);
        let out = ok(&["ingest", "-c", &server, "--from", from]);
        assert!(String::from_utf8_lossy(&out.stdout).starts_with("ingested prod-"));
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    let genuine = backups(&repo);
    assert_eq!(genuine.len(), 3, "{genuine:?}");
    assert!(
        backups(&incoming).is_empty(),
        "ingest leaves nothing in incoming"
    );

    // The attacker holds the upload account (and the public backup key).
    // The repository is not in its world: delete, rename, truncate fail.
    let victim = &genuine[0];
    for attack in [
        format!("rm {}/{victim}.coffer", repo.display()),
        format!("rm ../{victim}.coffer"),
        format!(
            "rename {0}/{victim}.coffer {0}/{victim}.coffer.partial",
            repo.display()
        ),
        format!("put /dev/null {}/{victim}.coffer", repo.display()),
    ] {
        assert!(
            !sftp(&sshd, p, &attack),
            "the upload account could: {attack}"
        );
    }
    // It plants keep_last forged backups (sealed to the public key, dated in
    // the future or now, unsigned or with a stolen genuine signature).
    let forger = p.join("forger");
    fs::create_dir_all(forger.join("data")).unwrap();
    fs::write(forger.join("data/db.sql"), "forged rows").unwrap();
    let forger_cfg = write(
        &forger.join("f.toml"),
        &format!(
            "[job]\nname = \"prod\"\nrecipients = [\"{k}.pub\"]\nlock_file = \"{l}\"\nunsigned = true\n\
             [[source]]\ntype = \"files\"\npaths = [\"{d}\"]\n[[store]]\ntype = \"local\"\npath = \"{s}\"\n",
            k = p.join("backup.key").display(),
            l = forger.join("lock").display(),
            d = forger.join("data").display(),
            s = forger.join("out").display(),
        ),
    );
    ok(&["backup", "-c", &forger_cfg]);
    let forged_name = backups(&forger.join("out")).pop().unwrap();
    let sealed = fs::read(forger.join("out").join(format!("{forged_name}.coffer"))).unwrap();
    let original: serde_json::Value = serde_json::from_slice(
        &fs::read(
            forger
                .join("out")
                .join(format!("{forged_name}.coffer.json")),
        )
        .unwrap(),
    )
    .unwrap();
    let stolen_sig = fs::read(repo.join(format!("{}.coffer.json.minisig", genuine[2]))).unwrap();
    let stage = p.join("stage");
    fs::create_dir(&stage).unwrap();
    for (i, created) in [
        "2099-01-01T00:00:00.000Z",
        "2099-01-02T00:00:00.000Z",
        "now",
        "now",
    ]
    .iter()
    .enumerate()
    {
        let name = if *created == "now" {
            format!("{forged_name}-{}", i + 1)
        } else {
            format!("prod-2099010{}T000000Z", i + 1)
        };
        let mut sidecar = original.clone();
        sidecar["name"] = name.clone().into();
        if *created != "now" {
            sidecar["created"] = (*created).into();
        }
        fs::write(stage.join(format!("{name}.coffer")), &sealed).unwrap();
        fs::write(
            stage.join(format!("{name}.coffer.json")),
            serde_json::to_vec(&sidecar).unwrap(),
        )
        .unwrap();
        if i == 3 {
            fs::write(
                stage.join(format!("{name}.coffer.json.minisig")),
                &stolen_sig,
            )
            .unwrap();
        }
    }
    for f in fs::read_dir(&stage).unwrap() {
        let f = f.unwrap().file_name().into_string().unwrap();
        assert!(
            sftp(&sshd, &stage, &format!("put {f} {}/{f}", sshd.remote_path)),
            "upload {f}"
        );
    }
    // The server ingests what is genuine and leaves the rest, loudly.
    ok(&["backup", "-c", &host]);
    let out = coffer(&["ingest", "-c", &server, "--from", from]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    let text = stderr(&out);
    assert!(text.contains("unsigned"), "{text}");
    assert!(text.contains("signature"), "{text}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        1,
        "one genuine new backup"
    );
    assert!(backups(&repo)
        .iter()
        .all(|n| genuine.contains(n) || n.starts_with("prod-2026")));
    assert!(!backups(&repo)
        .iter()
        .any(|n| n.contains("2099") || n.starts_with(&forged_name)));

    // The server's retention (keep_last = 3) keeps the three newest genuine
    // backups; nothing forged holds a slot; the repository verifies.
    ok(&["prune", "-c", &server]);
    let left = backups(&repo);
    assert_eq!(left.len(), 3, "{left:?}");
    assert_eq!(
        left[..2],
        genuine[1..],
        "the newest genuine backups are kept"
    );
    let out = coffer(&["verify", "-c", &server]);
    assert_eq!(
        code(&out),
        0,
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
    // And the restore machine gets the genuine data back from the repository.
    let to = p.join("restored");
    ok(&[
        "restore",
        "-c",
        &server,
        "-i",
        p.join("backup.key").to_str().unwrap(),
        "latest",
        "--to",
        to.to_str().unwrap(),
    ]);
    let rel = p.join("data/db.sql");
    assert_eq!(
        fs::read_to_string(to.join("files/data").join(rel.strip_prefix("/").unwrap())).unwrap(),
        "genuine rows"
    );
}

/// A signing database host that uploads into `incoming` (a local directory
/// standing in for its chroot), and a backup server that ingests from there
/// into `repo` with `server_keep` as its retention.
struct Ingest {
    incoming: PathBuf,
    host: String,
    repo: PathBuf,
    server: String,
}

impl Ingest {
    fn new(p: &Path, server_keep: &str) -> Self {
        for (kind, file) in [("age", "backup.key"), ("signing", "sign.key")] {
            ok(&[
                "keygen",
                "--type",
                kind,
                "--out",
                p.join(file).to_str().unwrap(),
            ]);
        }
        let incoming = p.join("incoming");
        let host = write(
            &p.join("host.toml"),
            &format!(
                "[job]\nname = \"prod\"\nrecipients = [\"{k}.pub\"]\nlock_file = \"{l}\"\n\
                 signing_key = \"{s}\"\n\
                 [[source]]\ntype = \"command\"\nname = \"db\"\nargv = [\"echo\", \"rows\"]\n\
                 [[store]]\ntype = \"local\"\npath = \"{i}\"\nprune = false\n",
                k = p.join("backup.key").display(),
                l = p.join("lock").display(),
                s = p.join("sign.key").display(),
                i = incoming.display(),
            ),
        );
        let repo = p.join("repo");
        let server = write(
            &p.join("server.toml"),
            &format!(
                "[job]\nname = \"prod\"\n{server_keep}\nsigning_public_key = \"{s}.pub\"\n\
                 [[store]]\ntype = \"local\"\npath = \"{r}\"\n",
                s = p.join("sign.key").display(),
                r = repo.display(),
            ),
        );
        Ingest {
            incoming,
            host,
            repo,
            server,
        }
    }
}

/// Moves the backup `name` in `dir` to the name and `created` of another
/// day, and signs its rewritten sidecar with the host's key: what a backup
/// made on that day looks like, or what a compromised database host, which
/// holds the signing key, can make at will. Returns the new name.
fn redate(dir: &Path, name: &str, at: chrono::DateTime<chrono::Utc>, sign_key: &Path) -> String {
    let new = format!("prod-{}", at.format("%Y%m%dT%H%M%SZ"));
    let sidecar_path = dir.join(format!("{name}.coffer.json"));
    let mut sidecar: serde_json::Value =
        serde_json::from_slice(&fs::read(&sidecar_path).unwrap()).unwrap();
    sidecar["name"] = new.clone().into();
    sidecar["created"] = at
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        .into();
    let bytes = serde_json::to_vec(&sidecar).unwrap();
    let signer = coffer::signing::Signer::parse(&fs::read_to_string(sign_key).unwrap()).unwrap();
    let file = format!("{new}.coffer.json");
    let sig = signer.sign(&bytes, &file).unwrap();
    fs::rename(
        dir.join(format!("{name}.coffer")),
        dir.join(format!("{new}.coffer")),
    )
    .unwrap();
    fs::remove_file(&sidecar_path).unwrap();
    let _ = fs::remove_file(dir.join(format!("{name}.coffer.json.minisig")));
    fs::write(dir.join(&file), bytes).unwrap();
    fs::write(dir.join(format!("{file}.minisig")), sig).unwrap();
    new
}

/// A compromised database host holds the signing key, so it can sign
/// backups dated whenever it likes. Dated just before midnight on the days
/// the repository already holds, they would take those days' keep_daily
/// slots from the genuine backups, and the server's own prune would delete
/// the genuine ones. Ingest takes uploads only in the order they were made:
/// one dated before the newest backup already held stays in incoming,
/// reported, and the days before the newest keep their genuine backups.
/// (What is dated after the newest held can still take the newest's own
/// day and keep_last slots: docs/BACKUP-SERVER.md says so.)
#[test]
fn back_dated_uploads_cannot_take_the_keep_slots_of_days_already_ingested() {
    let t = tempfile::tempdir().unwrap();
    let p = t.path();
    let Ingest {
        incoming,
        host,
        repo,
        server,
    } = Ingest::new(p, "keep_last = 1\nkeep_daily = 7");
    let from = incoming.to_str().unwrap();
    let today = chrono::Utc::now().date_naive();
    let at = |days_ago: u64, h: u32, m: u32| {
        (today - chrono::Days::new(days_ago))
            .and_hms_opt(h, m, 0)
            .unwrap()
            .and_utc()
    };
    // The genuine nightly backups of the last three days, each ingested on
    // its night.
    let mut genuine = Vec::new();
    for days_ago in [3, 2, 1] {
        ok(&["backup", "-c", &host]);
        let made = backups(&incoming).pop().unwrap();
        genuine.push(redate(
            &incoming,
            &made,
            at(days_ago, 1, 0),
            &p.join("sign.key"),
        ));
        ok(&["ingest", "-c", &server, "--from", from]);
    }
    assert_eq!(backups(&repo), genuine);

    // The compromised host's: signed, dated 23:59 on those same days.
    let mut forged = Vec::new();
    for days_ago in [3, 2, 1] {
        ok(&["backup", "-c", &host]);
        let made = backups(&incoming)
            .into_iter()
            .find(|n| !forged.contains(n))
            .unwrap();
        forged.push(redate(
            &incoming,
            &made,
            at(days_ago, 23, 59),
            &p.join("sign.key"),
        ));
    }
    let out = coffer(&["ingest", "-c", &server, "--from", from]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    let (before, after) = forged.split_at(2);
    for f in before {
        assert!(stderr(&out).contains(f.as_str()), "{f}: {}", stderr(&out));
    }
    assert!(
        stderr(&out).contains("newest backup already ingested"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        backups(&incoming),
        before,
        "refused uploads stay in incoming"
    );
    let mut held = genuine.clone();
    held.extend_from_slice(after);
    assert_eq!(backups(&repo), held);

    // The server's retention then keeps the genuine backups of the days
    // before the newest (the forgery dated after it takes its day).
    ok(&["prune", "-c", &server]);
    let mut kept = genuine[..2].to_vec();
    kept.extend_from_slice(after);
    assert_eq!(backups(&repo), kept);

    // A backup made after the newest held is still taken.
    ok(&["backup", "-c", &host]);
    let newer = backups(&incoming)
        .into_iter()
        .find(|n| !before.contains(n))
        .unwrap();
    let out = coffer(&["ingest", "-c", &server, "--from", from]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(newer.as_str()),
        "{}",
        stderr(&out)
    );

    // A genuine sidecar beside a sealed file of a terabyte (sparse: it costs
    // the uploader nothing) is refused by its size, before a byte is copied
    // into the repository. (A second later: incoming no longer holds the
    // last name, so a run in the same second would take it again.)
    std::thread::sleep(std::time::Duration::from_millis(1100));
    ok(&["backup", "-c", &host]);
    let big = backups(&incoming)
        .into_iter()
        .find(|n| !before.contains(n))
        .unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(incoming.join(format!("{big}.coffer")))
        .unwrap()
        .set_len(1 << 40)
        .unwrap();
    let out = coffer(&["ingest", "-c", &server, "--from", from]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert!(stderr(&out).contains("too large"), "{}", stderr(&out));
    assert!(!backups(&repo).contains(&big));
    assert!(fs::read_dir(&repo).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .ends_with(".partial")));
}

/// A genuine backup that reaches incoming late — a missed night copied in
/// by hand after the next night was ingested — is older than the newest one
/// held, and nothing the host signs can tell it from a back-dated one (a
/// compromised host writes the ledger too: it could sign a new backup whose
/// `prev` names its own back-dated forgery). So it is refused, by name, with
/// what to do; the operator takes it with `--accept-late NAME`.
#[test]
fn a_late_upload_is_refused_until_the_operator_accepts_it_by_name() {
    let t = tempfile::tempdir().unwrap();
    let p = t.path();
    let Ingest {
        incoming,
        host,
        repo,
        server,
    } = Ingest::new(p, "keep_last = 7");
    let from = incoming.to_str().unwrap();
    ok(&["backup", "-c", &host]);
    let missed = backups(&incoming).pop().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    ok(&["backup", "-c", &host]);
    // The missed night's files are away while the next one is ingested.
    let aside = p.join("aside");
    fs::create_dir(&aside).unwrap();
    for f in fs::read_dir(&incoming).unwrap() {
        let f = f.unwrap();
        if f.file_name().to_string_lossy().starts_with(&missed) {
            fs::rename(f.path(), aside.join(f.file_name())).unwrap();
        }
    }
    ok(&["ingest", "-c", &server, "--from", from]);
    assert_eq!(backups(&repo).len(), 1);
    for f in fs::read_dir(&aside).unwrap() {
        let f = f.unwrap();
        fs::rename(f.path(), incoming.join(f.file_name())).unwrap();
    }
    let out = coffer(&["ingest", "-c", &server, "--from", from]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert!(stderr(&out).contains("--accept-late"), "{}", stderr(&out));
    assert!(!backups(&repo).contains(&missed));
    let out = coffer(&[
        "ingest",
        "-c",
        &server,
        "--from",
        from,
        "--accept-late",
        &missed,
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(backups(&repo).contains(&missed));
    assert!(backups(&incoming).is_empty());
}

/// Complete backups (sealed file and sidecar) in `dir`.
fn complete(dir: &Path) -> Vec<String> {
    backups(dir)
        .into_iter()
        .filter(|n| dir.join(format!("{n}.coffer.json")).exists())
        .collect()
}

/// An ingest into two stores that one of them interrupts (a full disk, a
/// crash between the sealed file and its sidecar) is finished by the next
/// ingest, in the store that lacks it, and says the store failed (exit 1),
/// not that the upload is untrustworthy (exit 3).
#[test]
fn an_ingest_one_store_interrupted_is_finished_by_the_next() {
    let t = tempfile::tempdir().unwrap();
    let p = t.path();
    let Ingest {
        incoming,
        host,
        repo,
        server,
    } = Ingest::new(p, "keep_last = 7");
    let from = incoming.to_str().unwrap();
    let second = p.join("repo2");
    fs::create_dir(&second).unwrap();
    let server = write(
        Path::new(&server),
        &(fs::read_to_string(&server).unwrap()
            + &format!(
                "[[store]]\ntype = \"local\"\nname = \"second\"\npath = \"{}\"\n",
                second.display()
            )),
    );

    // The second store cannot take the file this time.
    ok(&["backup", "-c", &host]);
    let first = backups(&incoming).pop().unwrap();
    let blocker = second.join(format!("{first}.coffer.partial"));
    fs::create_dir(&blocker).unwrap();
    let out = coffer(&["ingest", "-c", &server, "--from", from]);
    let err = stderr(&out);
    assert_eq!(code(&out), 1, "{err}");
    assert!(
        err.contains("second") && err.contains("next ingest"),
        "{err}"
    );
    assert!(!err.contains("do not trust"), "{err}");
    assert_eq!(complete(&repo), vec![first.clone()]);
    assert!(
        backups(&incoming).contains(&first),
        "stays until every store has it"
    );
    fs::remove_dir(&blocker).unwrap();
    let out = coffer(&["ingest", "-c", &server, "--from", from]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(complete(&second), vec![first.clone()]);
    assert!(backups(&incoming).is_empty());

    // An ingest stopped between the sealed file and its sidecar left the
    // sealed file alone in the second store.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    ok(&["backup", "-c", &host]);
    let next = backups(&incoming).pop().unwrap();
    fs::copy(
        incoming.join(format!("{next}.coffer")),
        second.join(format!("{next}.coffer")),
    )
    .unwrap();
    let out = coffer(&["ingest", "-c", &server, "--from", from]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    for store in [&repo, &second] {
        assert_eq!(complete(store), vec![first.clone(), next.clone()]);
    }
    assert!(backups(&incoming).is_empty());
    // What the second store was finished with is what the upload vouched for.
    let out = coffer(&["verify", "-c", &server, &next]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
}
