//! Signed is the default: `keygen` makes the signing pair with the backup
//! pair, a job without a signing key must say it is unsigned, and on the
//! restore side what nobody can vouch for is never loaded, drilled or used to
//! replace files without a flag that names the risk.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::*;

/// A job backing up one file into a local store; `job` adds `[job]` lines
/// (none: a job that says nothing about signing).
fn config(dir: &Path, job: &str, extra: &str) -> PathBuf {
    fs::write(dir.join("data.txt"), "the rows").unwrap();
    let p = dir.join("coffer.toml");
    fs::write(
        &p,
        format!(
            "[job]\nname = \"prod\"\nrecipients = [\"backup.key.pub\"]\nlock_file = \"{lock}\"\n{job}\n\
             [[source]]\ntype = \"files\"\nname = \"data\"\npaths = [\"data.txt\"]\n\
             [[store]]\ntype = \"local\"\npath = \"store\"\n{extra}",
            lock = dir.join("lock").display(),
        ),
    )
    .unwrap();
    chmod(&p, 0o600);
    p
}

/// The contents of every regular file under `dir`.
fn contents(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            found.extend(contents(&p));
        } else if p.file_name().is_some_and(|n| n != "MANIFEST.json") {
            found.push(fs::read_to_string(&p).unwrap());
        }
    }
    found
}

fn keygen(dir: &Path) -> String {
    let out = ok(&[
        "keygen",
        "--type",
        "age",
        "--out",
        dir.join("backup.key").to_str().unwrap(),
    ]);
    stderr(&out)
}

#[test]
fn keygen_and_the_quick_start_config_make_a_signed_setup() {
    let d = tempfile::tempdir().unwrap();
    let said = keygen(d.path());
    // The pair the README's configuration names, beside the backup key.
    let secret = d.path().join("signing.key");
    let public = d.path().join("signing.key.pub");
    assert!(
        said.contains("signing_key") && said.contains("signing_public_key"),
        "{said}"
    );
    assert_eq!(
        fs::metadata(&secret).unwrap().len() > 0,
        fs::metadata(&public).unwrap().len() > 0
    );
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&secret).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    // A second backup key (the RSA one beside it) keeps the signing key.
    let before = fs::read(&secret).unwrap();
    let out = ok(&[
        "keygen",
        "--type",
        "rsa",
        "--bits",
        "2048",
        "--out",
        d.path().join("backup-rsa.pem").to_str().unwrap(),
    ]);
    assert!(stderr(&out).contains("kept"), "{}", stderr(&out));
    assert_eq!(fs::read(&secret).unwrap(), before);
    // `--no-signing-key` makes only the backup pair.
    let other = tempfile::tempdir().unwrap();
    ok(&[
        "keygen",
        "--type",
        "age",
        "--no-signing-key",
        "--out",
        other.path().join("k").to_str().unwrap(),
    ]);
    assert!(!other.path().join("signing.key").exists());

    // The configuration with the key keygen made: signed backups that the
    // restore side believes by the .pub beside it.
    let cfg = config(d.path(), "signing_key = \"signing.key\"", "");
    let cfg = cfg.to_str().unwrap();
    ok(&["config", "check", "-c", cfg]);
    ok(&["backup", "-c", cfg]);
    let store = d.path().join("store");
    let signed = fs::read_dir(&store)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".coffer.json.minisig")
        })
        .count();
    assert_eq!(signed, 1);
    let key = d.path().join("backup.key");
    let to = d.path().join("restored");
    fs::create_dir(&to).unwrap();
    fs::write(to.join("old"), "x").unwrap();
    // A signed backup replaces files with no extra flag.
    let out = ok(&[
        "restore",
        "-c",
        cfg,
        "-i",
        key.to_str().unwrap(),
        "latest",
        "--to",
        to.to_str().unwrap(),
        "--force",
    ]);
    assert!(
        !stderr(&out).contains("not authenticated"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_job_without_a_signing_key_must_say_it_is_unsigned() {
    let d = tempfile::tempdir().unwrap();
    keygen(d.path());
    let cfg = config(d.path(), "", "");
    let cfg = cfg.to_str().unwrap();
    for args in [
        vec!["backup", "-c", cfg],
        vec!["config", "check", "-c", cfg],
    ] {
        let out = coffer(&args);
        assert_eq!(code(&out), 2, "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains("no signing_key")
                && err.contains("coffer keygen --type signing")
                && err.contains("unsigned = true"),
            "{err}"
        );
    }
    assert!(
        !d.path().join("store").exists(),
        "a refused run made its store"
    );

    // Saying so works, and config check says what it costs.
    let cfg = config(d.path(), "unsigned = true", "");
    let cfg = cfg.to_str().unwrap();
    let out = ok(&["config", "check", "-c", cfg]);
    assert!(
        stderr(&out).contains("unsigned") && stderr(&out).contains("plant a backup"),
        "{}",
        stderr(&out)
    );
    ok(&["backup", "-c", cfg]);

    // Unsigned and a signing key at once is a contradiction.
    let cfg = config(
        d.path(),
        "unsigned = true\nsigning_key = \"signing.key\"",
        "",
    );
    let out = coffer(&["backup", "-c", cfg.to_str().unwrap()]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(stderr(&out).contains("keep one"), "{}", stderr(&out));
}

#[test]
fn an_unsigned_backup_is_loaded_drilled_or_replaces_files_only_when_trusted_by_flag() {
    let d = tempfile::tempdir().unwrap();
    keygen(d.path());
    let cfg = config(d.path(), "unsigned = true", "");
    let cfg = cfg.to_str().unwrap();
    ok(&["backup", "-c", cfg]);
    let key = d.path().join("backup.key");
    let key = key.to_str().unwrap();

    // Into a new directory: restored, with a warning.
    let fresh = d.path().join("fresh");
    let out = ok(&[
        "restore",
        "-c",
        cfg,
        "-i",
        key,
        "latest",
        "--to",
        fresh.to_str().unwrap(),
    ]);
    assert!(
        stderr(&out).contains("not authenticated"),
        "{}",
        stderr(&out)
    );
    assert_eq!(contents(&fresh), vec!["the rows".to_owned()]);

    // Replacing files: refused before anything is read or written.
    let target = d.path().join("target");
    fs::create_dir(&target).unwrap();
    fs::write(target.join("keep.txt"), "mine").unwrap();
    let force = [
        "restore",
        "-c",
        cfg,
        "-i",
        key,
        "latest",
        "--to",
        target.to_str().unwrap(),
        "--force",
    ];
    let out = coffer(&force);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--trust-unsigned"),
        "{}",
        stderr(&out)
    );
    assert_eq!(fs::read_dir(&target).unwrap().count(), 1);
    let mut trusted = force.to_vec();
    trusted.push("--trust-unsigned");
    ok(&trusted);
    assert!(fs::read_dir(&target).unwrap().count() > 1);

    // The drill: refused without the flag.
    let out = coffer(&["verify", "-c", cfg, "-i", key, "--restore-test"]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--trust-unsigned"),
        "{}",
        stderr(&out)
    );
    ok(&[
        "verify",
        "-c",
        cfg,
        "-i",
        key,
        "--restore-test",
        "--trust-unsigned",
    ]);

    // Loading into a database: refused before the server is contacted
    // (this one does not exist).
    let opts = d.path().join("my.cnf");
    fs::write(&opts, "[client]\nsocket=/nonexistent/mysqld.sock\n").unwrap();
    chmod(&opts, 0o600);
    let db_cfg = config(
        d.path(),
        "unsigned = true",
        &format!(
            "[[source]]\ntype = \"mysql\"\nname = \"main\"\ndatabases = [\"shop\"]\noptions_file = \"{}\"\n",
            opts.display()
        ),
    );
    let out = coffer(&[
        "restore",
        "-c",
        db_cfg.to_str().unwrap(),
        "-i",
        key,
        "latest",
        "--into-db",
        "main",
    ]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("loads it into a database")
            && stderr(&out).contains("--trust-unsigned"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn ingest_takes_unsigned_uploads_only_from_a_job_that_says_it_is_unsigned() {
    let d = tempfile::tempdir().unwrap();
    keygen(d.path());
    let host = config(d.path(), "unsigned = true", "");
    ok(&["backup", "-c", host.to_str().unwrap()]);
    let server = |job: &str| {
        let p = d.path().join("server.toml");
        fs::write(
            &p,
            format!(
                "[job]\nname = \"prod\"\n{job}\n[[store]]\ntype = \"local\"\npath = \"{}\"\n",
                d.path().join("repo").display()
            ),
        )
        .unwrap();
        chmod(&p, 0o600);
        p
    };
    let from = d.path().join("store");
    let from = from.to_str().unwrap();
    let cfg = server("");
    let out = coffer(&["ingest", "-c", cfg.to_str().unwrap(), "--from", from]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("signing_public_key") && stderr(&out).contains("unsigned = true"),
        "{}",
        stderr(&out)
    );
    assert!(
        !d.path().join("repo").exists()
            || fs::read_dir(d.path().join("repo")).unwrap().count() == 0
    );
    let cfg = server("unsigned = true");
    let out = ok(&["ingest", "-c", cfg.to_str().unwrap(), "--from", from]);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ingested prod-"));
}

/// An upload account that fills its directory with names cannot make the
/// ingest read them all: the listing stops at the cap every listing has.
#[test]
fn ingest_refuses_an_incoming_directory_with_more_names_than_a_store_holds() {
    let d = tempfile::tempdir().unwrap();
    keygen(d.path());
    let incoming = d.path().join("incoming");
    fs::create_dir(&incoming).unwrap();
    for i in 0..=200_000 {
        fs::File::create(incoming.join(format!("x{i}"))).unwrap();
    }
    let p = d.path().join("server.toml");
    fs::write(
        &p,
        format!(
            "[job]\nname = \"prod\"\nunsigned = true\n[[store]]\ntype = \"local\"\npath = \"{}\"\n",
            d.path().join("repo").display()
        ),
    )
    .unwrap();
    chmod(&p, 0o600);
    let out = coffer(&[
        "ingest",
        "-c",
        p.to_str().unwrap(),
        "--from",
        incoming.to_str().unwrap(),
    ]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("holds more than 200000 names"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn ingest_refuses_a_sparse_upload_before_copying_it() {
    let d = tempfile::tempdir().unwrap();
    keygen(d.path());
    // A host that uploads 4 MiB of sealed data.
    let host = config(
        d.path(),
        "signing_key = \"signing.key\"\ncompression = \"none\"",
        "",
    );
    fs::write(d.path().join("data.txt"), common::pattern(4 << 20, 3)).unwrap();
    ok(&["backup", "-c", host.to_str().unwrap()]);
    let store = d.path().join("store");
    let sealed = fs::read_dir(&store)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(".coffer"))
        .unwrap();
    // The same length, all of it a hole.
    let len = fs::metadata(&sealed).unwrap().len();
    fs::remove_file(&sealed).unwrap();
    let f = fs::File::create(&sealed).unwrap();
    f.set_len(len).unwrap();
    drop(f);
    let server = d.path().join("server.toml");
    fs::write(
        &server,
        format!(
            "[job]\nname = \"prod\"\nsigning_public_key = \"signing.key.pub\"\n[[store]]\ntype = \"local\"\npath = \"{}\"\n",
            d.path().join("repo").display()
        ),
    )
    .unwrap();
    chmod(&server, 0o600);
    let out = coffer(&[
        "ingest",
        "-c",
        server.to_str().unwrap(),
        "--from",
        store.to_str().unwrap(),
    ]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    assert!(stderr(&out).contains("sparse file"), "{}", stderr(&out));
    let copied: u64 = fs::read_dir(d.path().join("repo"))
        .map_or(0, |r| r.map(|e| e.unwrap().metadata().unwrap().len()).sum());
    assert_eq!(copied, 0, "the repository took the hole's length");
}
