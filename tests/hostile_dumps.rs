//! A forged backup's dump is hostile SQL: loading it (`verify --restore-test`
//! into the scratch server, `restore --into-db` into a real one) must never
//! run a command, write a file or read one outside the load. Anyone with the
//! public backup key can seal such a backup, so these are forged the way an
//! attacker would: a real backup with its dump replaced and its manifest made
//! consistent again.
#![allow(clippy::too_many_lines)] // end-to-end scenarios read best in one piece

mod common;
mod harness;

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use harness::MariaDb;

struct Env {
    dir: tempfile::TempDir,
    key: PathBuf,
    /// World-writable, like /tmp: only coffer's own confinement can keep a
    /// server or client from writing here.
    drop: PathBuf,
    /// A world-readable file a hostile dump tries to read.
    secret: PathBuf,
    /// coffer's TMPDIR, where the scratch server's directory is made.
    tmp: PathBuf,
}

impl Env {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        // Others may pass through, as through /tmp, so that the files below
        // are reachable by an unprivileged server: what stops it must be
        // coffer's confinement, not this directory's mode.
        chmod(dir.path(), 0o755);
        let key = dir.path().join("backup.key");
        ok(&["keygen", "--type", "age", "--out", key.to_str().unwrap()]);
        let drop = dir.path().join("drop");
        fs::create_dir(&drop).unwrap();
        chmod(&drop, 0o1777);
        let secret = dir.path().join("secret.txt");
        // Valid SQL, so that sourcing it would succeed and show.
        fs::write(&secret, "INSERT INTO t VALUES ('read');\n").unwrap();
        chmod(&secret, 0o644);
        let tmp = dir.path().join("tmp");
        fs::create_dir(&tmp).unwrap();
        chmod(&tmp, 0o1777);
        Env {
            dir,
            key,
            drop,
            secret,
            tmp,
        }
    }
    fn p(&self) -> &Path {
        self.dir.path()
    }
    fn key(&self) -> &str {
        self.key.to_str().unwrap()
    }
    fn store(&self) -> PathBuf {
        self.p().join("store")
    }
    /// A configuration with the one mysql source `main` (database `shop`)
    /// connecting through `options`.
    fn config(&self, name: &str, options: &Path) -> PathBuf {
        let p = self.p().join(name);
        fs::write(
            &p,
            format!(
                "[job]\nname = \"prod\"\nrecipients = [\"{key}.pub\"]\nlock_file = \"{dir}/lock\"\nkeep_last = 10\nunsigned = true\n\
                 [[source]]\ntype = \"mysql\"\nname = \"main\"\ndatabases = [\"shop\"]\noptions_file = \"{opt}\"\n\
                 [[store]]\ntype = \"local\"\nname = \"local\"\npath = \"{store}\"\n",
                key = self.key.display(),
                dir = self.p().display(),
                opt = options.display(),
                store = self.store().display()
            ),
        )
        .unwrap();
        chmod(&p, 0o600);
        p
    }
    fn run(&self, args: &[&str]) -> Output {
        Command::new(bin())
            .args(trusting(args))
            .env("TMPDIR", &self.tmp)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }
    /// Records any file a hostile dump made in `drop`, and removes it so
    /// that the next case starts clean.
    fn take_pwned(&self, what: &str, failures: &mut Vec<String>) {
        for f in fs::read_dir(&self.drop).unwrap() {
            let f = f.unwrap();
            failures.push(format!("{what}: created {}", f.path().display()));
            if f.file_type().unwrap().is_dir() {
                fs::remove_dir_all(f.path()).unwrap();
            } else {
                fs::remove_file(f.path()).unwrap();
            }
        }
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A `[client]` options file for `user`.
fn options_file(maria: &MariaDb, dir: &Path, user: &str, password: &str, extra: &str) -> PathBuf {
    let path = dir.join(format!("{user}.cnf"));
    fs::write(
        &path,
        format!(
            "[client]\nuser={user}\npassword={password}\nhost=127.0.0.1\nport={}\n{extra}",
            maria.port
        ),
    )
    .unwrap();
    chmod(&path, 0o600);
    path
}

/// A database with a trigger and a procedure (so that the dump needs
/// DELIMITER), backed up; returns the configuration and the sealed file.
fn backed_up(e: &Env, maria: &MariaDb) -> (PathBuf, PathBuf) {
    // The restore account: everything on the databases it restores into,
    // and the right to make the account an unsigned dump is loaded through,
    // as a careful operator sets it up.
    maria.sql(
        "CREATE USER 'restorer'@'127.0.0.1' IDENTIFIED BY 'restorer-pw'; \
         GRANT ALL ON `shop`.* TO 'restorer'@'127.0.0.1'; \
         GRANT ALL ON `hostile\\_%`.* TO 'restorer'@'127.0.0.1' WITH GRANT OPTION; \
         GRANT CREATE USER ON *.* TO 'restorer'@'127.0.0.1';",
    );
    maria.sql(
        "CREATE DATABASE shop; USE shop; \
         CREATE TABLE t (id INT PRIMARY KEY, v TEXT); \
         CREATE TABLE audit (n INT); \
         INSERT INTO t SELECT seq, CONCAT('v', seq) FROM seq_1_to_300; \
         CREATE DEFINER='restorer'@'127.0.0.1' TRIGGER t_ins AFTER INSERT ON t FOR EACH ROW INSERT INTO audit VALUES (NEW.id);",
    );
    let procedure = e.p().join("procedure.sql");
    fs::write(
        &procedure,
        "USE shop;\nDELIMITER ;;\n\
         CREATE DEFINER='restorer'@'127.0.0.1' PROCEDURE p() BEGIN SELECT COUNT(*) FROM t; SELECT 1; END;;\n\
         DELIMITER ;\n",
    )
    .unwrap();
    maria.load(&procedure);
    let backup = maria.user_with_options_file("backup", "backup-pw", e.p());
    let cfg = e.config("backup.toml", &backup);
    let out = e.run(&["backup", "-c", cfg.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let sealed = fs::read_dir(e.store())
        .unwrap()
        .map(|x| x.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(".coffer"))
        .unwrap();
    (cfg, sealed)
}

/// The backup's tar with `mysql/main.sql` replaced by `dump`, the manifest
/// updated to match (hash, size, no row counts), sealed to the backup key.
fn forge(e: &Env, sealed: &Path, dump: &str) -> Vec<u8> {
    let out = ok(&[
        "restore",
        "-i",
        e.key(),
        sealed.to_str().unwrap(),
        "--stdout",
    ]);
    let mut archive = tar::Archive::new(&out.stdout[..]);
    let mut b = tar::Builder::new(Vec::new());
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        if path == "mysql/main.sql" {
            data = dump.as_bytes().to_vec();
        } else if path == "MANIFEST.json" {
            let mut m: serde_json::Value = serde_json::from_slice(&data).unwrap();
            for member in m["members"].as_array_mut().unwrap() {
                if member["path"] == "mysql/main.sql" {
                    member["size"] = dump.len().into();
                    member["blake3"] = blake3::hash(dump.as_bytes()).to_hex().as_str().into();
                }
            }
            for source in m["sources"].as_array_mut().unwrap() {
                source["row_counts"] = serde_json::json!({});
            }
            data = serde_json::to_vec(&m).unwrap();
        }
        let mut h = entry.header().clone();
        h.set_size(data.len() as u64);
        b.append_data(&mut h, &path, &data[..]).unwrap();
    }
    let tar = b.into_inner().unwrap();

    let key = fs::read_to_string(format!("{}.pub", e.key.display())).unwrap();
    let recipients =
        coffer::envelope::parse_recipients_file(&key, &coffer::envelope::no_passphrase()).unwrap();
    let meta = coffer::envelope::Metadata {
        created: "2026-11-22T00:00:00Z".into(),
        job: Some("prod".into()),
        compression: Some("none".into()),
        content: Some("tar".into()),
        member_hash: Some("blake3".into()),
        ..Default::default()
    };
    let mut w = coffer::envelope::seal(&recipients, meta, 65536, Vec::new()).unwrap();
    w.write_all(&tar).unwrap();
    w.finish().unwrap()
}

/// Puts a forged backup in place of the stored one, sidecar updated, as a
/// hostile backup server would.
fn substitute(sealed: &Path, forged: &[u8]) {
    fs::write(sealed, forged).unwrap();
    let sidecar_path = format!("{}.json", sealed.display());
    let mut sidecar: serde_json::Value =
        serde_json::from_slice(&fs::read(&sidecar_path).unwrap()).unwrap();
    vouch_for(&mut sidecar, sealed);
    fs::write(&sidecar_path, serde_json::to_vec(&sidecar).unwrap()).unwrap();
}

/// A dump around one hostile line, shaped like mariadb-dump's.
fn dump_with(db: &str, line: &str) -> String {
    format!(
        "CREATE DATABASE IF NOT EXISTS `{db}`;\nUSE `{db}`;\n\
         CREATE TABLE t (x TEXT NOT NULL);\n{line}\nINSERT INTO t VALUES ('after');\n"
    )
}

/// The hostile lines: (what, line). Each would run a command, write a file
/// or read one, were the client or server let.
fn attacks(e: &Env) -> Vec<(&'static str, String)> {
    let d = e.drop.display();
    let s = e.secret.display();
    vec![
        ("shell escape", format!("\\! touch {d}/pwned1")),
        ("system command", format!("system touch {d}/pwned2")),
        (
            "shell escape mid-line",
            format!("SELECT 1; \\! touch {d}/pwned3"),
        ),
        ("outfile", format!("SELECT 'x' INTO OUTFILE '{d}/pwned4';")),
        (
            "dumpfile",
            format!("SELECT 'x' INTO DUMPFILE '{d}/pwned5';"),
        ),
        (
            "outfile through a role",
            format!("SET ROLE filer; SELECT 'x' INTO OUTFILE '{d}/pwned7';"),
        ),
        ("load data", format!("LOAD DATA INFILE '{s}' INTO TABLE t;")),
        (
            "load data local",
            format!("LOAD DATA LOCAL INFILE '{s}' INTO TABLE t;"),
        ),
        (
            "load_file",
            format!("INSERT INTO t VALUES (LOAD_FILE('{s}'));"),
        ),
        ("tee", format!("tee {d}/pwned6")),
        ("source", format!("source {s}")),
        ("plugin", "INSTALL SONAME 'ha_federatedx';".to_owned()),
        (
            "general log",
            format!("SET GLOBAL general_log_file = '{d}/pwned8'; SET GLOBAL general_log = 1;"),
        ),
        (
            "slow log",
            format!(
                "SET GLOBAL slow_query_log_file = '{d}/pwned9'; SET GLOBAL slow_query_log = 1;"
            ),
        ),
        (
            "a routine that runs as root",
            format!(
                "DELIMITER ;;\n\
                 CREATE DEFINER=`root`@`localhost` PROCEDURE up() SQL SECURITY DEFINER BEGIN \
                 SET GLOBAL general_log_file = '{d}/pwned10'; SET GLOBAL general_log = 1; \
                 SELECT 1; END;;\n\
                 DELIMITER ;\n\
                 CALL up();"
            ),
        ),
        (
            "an account written into the grant tables",
            format!(
                "INSERT INTO mysql.global_priv (Host, User, Priv) \
                 VALUES ('localhost', 'evil', '{{\"access\":18446744073709551615}}');\n\
                 CREATE USER someone@localhost;\n\
                 DELIMITER ;;\n\
                 CREATE DEFINER=`evil`@`localhost` PROCEDURE up2() SQL SECURITY DEFINER BEGIN \
                 SET GLOBAL general_log_file = '{d}/pwned11'; SET GLOBAL general_log = 1; \
                 SELECT 1; END;;\n\
                 DELIMITER ;\n\
                 CALL up2();"
            ),
        ),
        (
            "replication",
            "CHANGE MASTER TO MASTER_HOST = '127.0.0.1', MASTER_PORT = 9; START SLAVE;".to_owned(),
        ),
    ]
}

/// Tables whose files a dump asks for outside the data directory. The scratch
/// server ignores the request (and the load goes on); see docs/THREAT-MODEL.md
/// for `--into-db`, where it is the server's own setting.
fn elsewhere(e: &Env) -> Vec<(&'static str, String)> {
    let d = e.drop.display();
    ["InnoDB", "MyISAM", "Aria"]
        .into_iter()
        .map(|engine| {
            (
                engine,
                format!("CREATE TABLE t_{engine} (x INT) ENGINE={engine} DATA DIRECTORY = '{d}';"),
            )
        })
        .collect()
}

#[test]
fn restore_test_of_a_forged_dump_runs_no_command_and_touches_no_file() {
    let e = Env::new();
    let maria = MariaDb::start();
    let (cfg, sealed) = backed_up(&e, &maria);
    let c = cfg.to_str().unwrap();
    let original = fs::read(&sealed).unwrap();

    // The real dump, with its trigger and procedure (DELIMITER), still loads.
    let out = e.run(&["verify", "-c", c, "latest", "-i", e.key(), "--restore-test"]);
    assert!(out.status.success(), "{}", text(&out));
    // Sandboxed where the client can be, and said where it cannot.
    let help = Command::new("mariadb")
        .args(["--no-defaults", "--help"])
        .output()
        .unwrap();
    let sandbox = String::from_utf8_lossy(&help.stdout)
        .lines()
        .any(|l| l.split_whitespace().next() == Some("--sandbox"));
    assert_eq!(
        stderr(&out).contains("has no --sandbox"),
        !sandbox,
        "{}",
        text(&out)
    );
    assert!(
        text(&out).contains("restore test: mysql/main.sql loaded"),
        "{}",
        text(&out)
    );

    let mut failures = Vec::new();
    for (what, line) in attacks(&e) {
        let forged = forge(&e, &sealed, &dump_with("hostile", &line));
        substitute(&sealed, &forged);
        let out = e.run(&["verify", "-c", c, "latest", "-i", e.key(), "--restore-test"]);
        if out.status.success() {
            failures.push(format!("{what}: passed the restore test"));
        }
        if !text(&out).contains("restore test: loading mysql/main.sql failed") {
            failures.push(format!("{what}: the load did not fail:\n{}", text(&out)));
        }
        e.take_pwned(what, &mut failures);
    }
    for (engine, line) in elsewhere(&e) {
        let forged = forge(&e, &sealed, &dump_with("hostile", &line));
        substitute(&sealed, &forged);
        let out = e.run(&["verify", "-c", c, "latest", "-i", e.key(), "--restore-test"]);
        e.take_pwned(&format!("{engine} DATA DIRECTORY"), &mut failures);
        if !out.status.success() {
            failures.push(format!(
                "{engine}: ignoring DATA DIRECTORY should not fail the load: {}",
                text(&out)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The scratch servers are gone with their directories.
    let left: Vec<_> = fs::read_dir(&e.tmp).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
    fs::write(&sealed, original).unwrap();
}

#[test]
fn restore_into_db_of_a_forged_dump_runs_no_command_and_touches_no_file() {
    let e = Env::new();
    let maria = MariaDb::start();
    let (_, sealed) = backed_up(&e, &maria);
    // An operator's options file may well allow LOCAL INFILE for their own
    // use; a dump from a backup must not get it.
    let scoped = options_file(&maria, e.p(), "restorer", "restorer-pw", "local-infile=1\n");
    let scoped_cfg = e.config("scoped.toml", &scoped);
    maria.sql(
        "CREATE USER 'admin'@'127.0.0.1' IDENTIFIED BY 'admin-pw'; \
         GRANT ALL ON *.* TO 'admin'@'127.0.0.1' WITH GRANT OPTION;",
    );
    let admin = options_file(&maria, e.p(), "admin", "admin-pw", "");
    let admin_cfg = e.config("admin.toml", &admin);
    // FILE through a role that is granted but not active: the dump could
    // switch it on with SET ROLE.
    maria.sql(
        "CREATE ROLE filer; GRANT FILE ON *.* TO filer; \
         CREATE USER 'roled'@'127.0.0.1' IDENTIFIED BY 'roled-pw'; \
         GRANT ALL ON `hostile\\_%`.* TO 'roled'@'127.0.0.1'; \
         GRANT filer TO 'roled'@'127.0.0.1';",
    );
    let roled = options_file(&maria, e.p(), "roled", "roled-pw", "");
    let roled_cfg = e.config("roled.toml", &roled);

    // The real dump loads, trigger and procedure included; they run as the
    // account the load made (kept, locked), not as the dump named them.
    let out = e.run(&[
        "restore",
        "-c",
        scoped_cfg.to_str().unwrap(),
        "-i",
        e.key(),
        sealed.to_str().unwrap(),
        "--into-db",
        "main",
        "--database",
        "hostile_ok",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(maria.sql("SELECT COUNT(*) FROM hostile_ok.t").trim(), "300");
    let definers = maria.sql(
        "SELECT DEFINER FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = 'hostile_ok' \
         UNION ALL SELECT DEFINER FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = 'hostile_ok'",
    );
    let definers: Vec<&str> = definers.lines().collect();
    assert_eq!(definers.len(), 2, "{definers:?}");
    assert!(
        definers
            .iter()
            .all(|d| d.starts_with("coffer_load_") && *d == definers[0]),
        "{definers:?}"
    );
    assert!(
        text(&out).contains("run as 'coffer_load_") && text(&out).contains("locked"),
        "{}",
        text(&out)
    );
    let (user, host) = definers[0].split_once('@').unwrap();
    let shown = maria.sql(&format!("SHOW CREATE USER '{user}'@'{host}'"));
    assert!(shown.contains("ACCOUNT LOCK"), "{shown}");
    // The trigger still fires, as the locked account.
    maria.sql("INSERT INTO hostile_ok.t VALUES (1000, 'x')");
    assert_eq!(
        maria
            .sql("SELECT COUNT(*) FROM hostile_ok.audit WHERE n = 1000")
            .trim(),
        "1"
    );

    let exists = |db: &str| {
        maria
            .sql(&format!(
                "SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = '{db}'"
            ))
            .trim()
            == "1"
    };
    let mut failures = Vec::new();
    for (i, (what, line)) in attacks(&e).into_iter().enumerate() {
        let forged = e.p().join(format!("forged{i}.coffer"));
        fs::write(&forged, forge(&e, &sealed, &dump_with("shop", &line))).unwrap();
        let restore = |cfg: &Path, db: &str| {
            e.run(&[
                "restore",
                "-c",
                cfg.to_str().unwrap(),
                "-i",
                e.key(),
                forged.to_str().unwrap(),
                "--into-db",
                "main",
                "--database",
                db,
            ])
        };

        // Whether the configured account is scoped or holds every
        // privilege on the server (FILE with no secure_file_priv, SUPER,
        // the grant tables), the dump runs as the load account: the client
        // refuses its own commands and LOCAL files, the server the rest.
        for (account, cfg) in [("scoped", &scoped_cfg), ("admin", &admin_cfg)] {
            let db = format!("hostile_{account}_{i}");
            let out = restore(cfg, &db);
            if out.status.success() {
                failures.push(format!("{what} ({account}): loaded"));
            } else if !text(&out).contains("loading failed") {
                failures.push(format!(
                    "{what} ({account}): the load did not fail:\n{}",
                    text(&out)
                ));
            }
            if exists(&db) {
                failures.push(format!("{what}: the half-loaded {db} was left behind"));
            }
            e.take_pwned(&format!("{what} ({account})"), &mut failures);
        }

        // An account that cannot make a load account (its FILE comes
        // through a role the dump could switch on): nothing is loaded.
        let db = format!("hostile_roled_{i}");
        let out = restore(&roled_cfg, &db);
        if code(&out) != 2 || !text(&out).contains("cannot create one") {
            failures.push(format!(
                "{what}: through an account that cannot create the load account:\n{}",
                text(&out)
            ));
        }
        if exists(&db) {
            failures.push(format!("{what}: {db} was created"));
        }
        e.take_pwned(&format!("{what} (roled)"), &mut failures);
    }
    // Every load account is gone but the one the real dump's objects run as.
    let left = maria.sql("SELECT COUNT(*) FROM mysql.user WHERE User LIKE 'coffer\\_load\\_%'");
    if left.trim() != "1" {
        failures.push(format!("{} load accounts left, not 1", left.trim()));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The uid and scratch directory of the `mariadbd` whose command line
/// mentions `under`, once one runs.
fn scratch_server(under: &Path, deadline: Duration) -> Option<(u32, PathBuf)> {
    let under = under.to_string_lossy().into_owned();
    let started = Instant::now();
    while started.elapsed() < deadline {
        for p in fs::read_dir("/proc").unwrap().flatten() {
            let Ok(cmdline) = fs::read(p.path().join("cmdline")) else {
                continue;
            };
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let is_server = args
                .first()
                .is_some_and(|a| a.ends_with("/mariadbd") || a == "mariadbd");
            let datadir = args
                .iter()
                .find_map(|a| a.strip_prefix("--datadir="))
                .filter(|d| d.starts_with(&under));
            let (true, Some(datadir)) = (is_server, datadir) else {
                continue;
            };
            let Ok(status) = fs::read_to_string(p.path().join("status")) else {
                continue;
            };
            let uid = status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().next())
                .and_then(|u| u.parse().ok())?;
            let scratch = Path::new(datadir).parent()?.to_owned();
            return Some((uid, scratch));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

#[test]
fn the_scratch_server_runs_unprivileged_in_a_private_directory() {
    use std::os::unix::fs::MetadataExt;

    let e = Env::new();
    let maria = MariaDb::start();
    let (cfg, sealed) = backed_up(&e, &maria);
    // Slow enough to be caught running.
    let forged = forge(&e, &sealed, &dump_with("slow", "SELECT SLEEP(8);"));
    substitute(&sealed, &forged);
    let child = Command::new(bin())
        .args([
            "verify",
            "-c",
            cfg.to_str().unwrap(),
            "latest",
            "-i",
            e.key(),
            "--restore-test",
            "--trust-unsigned",
        ])
        .env("TMPDIR", &e.tmp)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let found = scratch_server(&e.tmp, Duration::from_secs(60));
    let (uid, scratch) = found.expect("no scratch mariadbd seen");
    let meta = fs::metadata(&scratch).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));

    let me = rustix::process::geteuid().as_raw();
    if me == 0 {
        assert_ne!(uid, 0, "the scratch server runs as root");
        // The account nothing else runs as (install-test-deps.sh and the
        // Debian package make it), not the shared `nobody`.
        let drill = Command::new("id")
            .args(["-u", "coffer-drill"])
            .output()
            .unwrap();
        if drill.status.success() {
            let drill: u32 = String::from_utf8_lossy(&drill.stdout)
                .trim()
                .parse()
                .unwrap();
            assert_eq!(
                uid, drill,
                "the scratch server does not run as coffer-drill"
            );
        }
    } else {
        assert_eq!(uid, me);
    }
    assert_eq!(
        meta.uid(),
        uid,
        "the scratch directory belongs to its server"
    );
    assert_eq!(
        meta.mode() & 0o077,
        0,
        "the scratch directory is open to others: {:o}",
        meta.mode()
    );
}

#[test]
fn the_scratch_server_needs_a_directory_its_user_can_reach() {
    let e = Env::new();
    let maria = MariaDb::start();
    let (cfg, _) = backed_up(&e, &maria);
    // A TMPDIR only coffer's own user may enter, as /root/tmp would be.
    let private = e.p().join("private");
    fs::create_dir(&private).unwrap();
    chmod(&private, 0o700);
    let out = Command::new(bin())
        .args([
            "verify",
            "-c",
            cfg.to_str().unwrap(),
            "latest",
            "-i",
            e.key(),
            "--restore-test",
            "--trust-unsigned",
        ])
        .env("TMPDIR", &private)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    // A relative TMPDIR works too, although the server runs from inside
    // its directory.
    let relative = Command::new(bin())
        .args([
            "verify",
            "-c",
            cfg.to_str().unwrap(),
            "latest",
            "-i",
            e.key(),
            "--restore-test",
            "--trust-unsigned",
        ])
        .env("TMPDIR", "tmp")
        .current_dir(e.p())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(relative.status.success(), "{}", text(&relative));

    if rustix::process::geteuid().is_root() {
        assert!(!out.status.success(), "{}", text(&out));
        assert!(
            text(&out).contains("cannot enter") && text(&out).contains("set TMPDIR"),
            "{}",
            text(&out)
        );
    } else {
        // The server runs as coffer's own user, who may.
        assert!(out.status.success(), "{}", text(&out));
    }
}

#[test]
fn a_signed_dump_loads_as_the_configured_account_and_an_unsigned_one_as_a_load_account() {
    // A dump anyone with the public key could have written runs as an
    // account made for its load; one the backup host signed is its own
    // dump, and keeps the definers it names.
    let e = Env::new();
    let maria = MariaDb::start();
    let (cfg, _) = backed_up(&e, &maria);
    let sign = e.p().join("sign.key");
    ok(&[
        "keygen",
        "--type",
        "signing",
        "--out",
        sign.to_str().unwrap(),
    ]);
    let signed_cfg = e.p().join("signed.toml");
    fs::write(
        &signed_cfg,
        fs::read_to_string(&cfg)
            .unwrap()
            .replace("unsigned = true\n", "")
            .replacen(
                "[job]\n",
                &format!("[job]\nsigning_key = \"{}\"\n", sign.display()),
                1,
            ),
    )
    .unwrap();
    chmod(&signed_cfg, 0o600);
    std::thread::sleep(Duration::from_millis(1100));
    let out = e.run(&["backup", "-c", signed_cfg.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let mut sealed: Vec<PathBuf> = fs::read_dir(e.store())
        .unwrap()
        .map(|x| x.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".coffer"))
        .collect();
    sealed.sort();
    let signed = sealed.pop().unwrap();
    maria.sql(
        "CREATE USER 'admin'@'127.0.0.1' IDENTIFIED BY 'admin-pw'; \
         GRANT ALL ON *.* TO 'admin'@'127.0.0.1' WITH GRANT OPTION;",
    );
    let admin = options_file(&maria, e.p(), "admin", "admin-pw", "");
    let admin_cfg = e.config("admin.toml", &admin);
    let restore = |extra: &[&str], db: &str| {
        let mut args = vec![
            "restore",
            "-c",
            admin_cfg.to_str().unwrap(),
            "-i",
            e.key(),
            signed.to_str().unwrap(),
            "--into-db",
            "main",
            "--database",
            db,
        ];
        args.extend_from_slice(extra);
        e.run(&args)
    };
    let definers = |db: &str| {
        maria.sql(&format!(
            "SELECT DEFINER FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = '{db}' \
             UNION SELECT DEFINER FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = '{db}'"
        ))
    };
    let accounts = || {
        maria
            .sql("SELECT COUNT(*) FROM mysql.user WHERE User LIKE 'coffer\\_load\\_%'")
            .trim()
            .to_owned()
    };
    let out = restore(&[], "hostile_unsigned");
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        definers("hostile_unsigned")
            .trim()
            .starts_with("coffer_load_"),
        "{}",
        definers("hostile_unsigned")
    );
    assert_eq!(accounts(), "1");
    let pubkey = format!("{}.pub", sign.display());
    let out = restore(&["--signing-key", &pubkey], "hostile_signed");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        maria.sql("SELECT COUNT(*) FROM hostile_signed.t").trim(),
        "300"
    );
    assert_eq!(definers("hostile_signed").trim(), "restorer@127.0.0.1");
    assert_eq!(accounts(), "1", "a signed load made an account");
}

#[test]
fn an_unsigned_dump_with_no_definers_leaves_no_load_account() {
    let e = Env::new();
    let maria = MariaDb::start();
    let (_, sealed) = backed_up(&e, &maria);
    let forged = e.p().join("plain.coffer");
    fs::write(
        &forged,
        forge(
            &e,
            &sealed,
            &dump_with("shop", "INSERT INTO t VALUES ('x');"),
        ),
    )
    .unwrap();
    let scoped = options_file(&maria, e.p(), "restorer", "restorer-pw", "");
    let scoped_cfg = e.config("scoped.toml", &scoped);
    let out = e.run(&[
        "restore",
        "-c",
        scoped_cfg.to_str().unwrap(),
        "-i",
        e.key(),
        forged.to_str().unwrap(),
        "--into-db",
        "main",
        "--database",
        "hostile_plain",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        maria.sql("SELECT COUNT(*) FROM hostile_plain.t").trim(),
        "2"
    );
    assert_eq!(
        maria
            .sql("SELECT COUNT(*) FROM mysql.user WHERE User LIKE 'coffer\\_load\\_%'")
            .trim(),
        "0"
    );
    assert!(!text(&out).contains("coffer_load_"), "{}", text(&out));
}

/// Waits for `child` at most `limit`; kills it and fails the test if it is
/// still running then (a hang must fail, not stall the suite).
fn bounded(mut child: std::process::Child, limit: Duration, what: &str) -> Output {
    let started = Instant::now();
    while started.elapsed() < limit {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    panic!(
        "{what} still running after {limit:?}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The dumps here are forgeries nothing signed: a load or drill of them
/// needs the operator's `--trust-unsigned`, and the fences under test are
/// what stands after it.
fn trusting<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut args = args.to_vec();
    if args
        .iter()
        .any(|a| *a == "--into-db" || *a == "--restore-test")
    {
        args.push("--trust-unsigned");
    }
    args
}

/// coffer with `args` (trusting what it loads), its output piped.
fn coffer_command(e: &Env, args: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.args(trusting(args))
        .env("TMPDIR", &e.tmp)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

fn spawn_coffer(e: &Env, args: &[&str]) -> std::process::Child {
    coffer_command(e, args).spawn().unwrap()
}

/// `restore SEALED --into-db main --database DB` through an account whose
/// rights cover only that database.
fn scoped_load(e: &Env, maria: &MariaDb, sealed: &Path, db: &str) -> Command {
    let scoped = options_file(maria, e.p(), "restorer", "restorer-pw", "");
    let scoped_cfg = e.config("scoped.toml", &scoped);
    coffer_command(
        e,
        &[
            "restore",
            "-c",
            scoped_cfg.to_str().unwrap(),
            "-i",
            e.key(),
            sealed.to_str().unwrap(),
            "--into-db",
            "main",
            "--database",
            db,
        ],
    )
}

/// [`scoped_load`], started in the background.
fn spawn_scoped_load(e: &Env, maria: &MariaDb, sealed: &Path, db: &str) -> std::process::Child {
    scoped_load(e, maria, sealed, db).spawn().unwrap()
}

#[test]
fn a_client_that_floods_its_error_output_fails_the_load_promptly() {
    // The client echoes the failing statement to stderr, far more than a
    // pipe holds, and would block there while coffer still writes its stdin.
    let e = Env::new();
    let maria = MariaDb::start();
    let (_, sealed) = backed_up(&e, &maria);
    let mut dump = format!("SELEC {};\n", "x".repeat(200 * 1024));
    dump.push_str(&"SELECT 1;\n".repeat(500_000));
    let forged = forge(&e, &sealed, &dump);
    substitute(&sealed, &forged);
    let cfg = e.p().join("backup.toml");
    let c = cfg.to_str().unwrap();
    let limit = Duration::from_secs(120);

    let child = spawn_coffer(
        &e,
        &["verify", "-c", c, "latest", "-i", e.key(), "--restore-test"],
    );
    let out = bounded(child, limit, "verify --restore-test");
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("restore test: loading mysql/main.sql failed"),
        "{}",
        text(&out)
    );
    let longest = text(&out).lines().map(str::len).max().unwrap_or(0);
    assert!(longest < 2000, "a line of {longest} bytes: {}", text(&out));
    let left: Vec<_> = fs::read_dir(&e.tmp).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");

    let child = spawn_scoped_load(&e, &maria, &sealed, "hostile_flood");
    let out = bounded(child, limit, "restore --into-db");
    assert_eq!(code(&out), 1, "{}", text(&out));
    let err = stderr(&out);
    assert!(err.contains("loading failed"), "{err}");
    assert!(err.lines().all(|l| l.len() < 1000), "{err}");
    assert_eq!(
        maria
            .sql("SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = 'hostile_flood'")
            .trim(),
        "0",
        "the database coffer created was left behind"
    );
}

/// Sends SIGTERM to `child`.
fn terminate(child: &std::process::Child) {
    let pid = rustix::process::Pid::from_raw(i32::try_from(child.id()).unwrap()).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::Term).unwrap();
}

#[test]
fn sigterm_during_a_restore_test_stops_the_scratch_server_and_removes_its_directory() {
    let e = Env::new();
    let maria = MariaDb::start();
    let (cfg, sealed) = backed_up(&e, &maria);
    // A load that takes far longer than the test waits.
    let forged = forge(&e, &sealed, &dump_with("slow", "SELECT SLEEP(600);"));
    substitute(&sealed, &forged);
    let c = cfg.to_str().unwrap();
    let child = spawn_coffer(
        &e,
        &["verify", "-c", c, "latest", "-i", e.key(), "--restore-test"],
    );
    scratch_server(&e.tmp, Duration::from_secs(60)).expect("no scratch mariadbd seen");
    // Well into the load, the client waiting on the server.
    std::thread::sleep(Duration::from_secs(3));
    terminate(&child);
    let out = bounded(child, Duration::from_secs(45), "verify after SIGTERM");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = stderr(&out);
    assert!(err.contains("cancelled"), "{err}");
    assert!(
        scratch_server(&e.tmp, Duration::from_millis(500)).is_none(),
        "the scratch server is still running"
    );
    let left: Vec<_> = fs::read_dir(&e.tmp).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn sigterm_during_a_load_into_a_database_drops_what_it_created() {
    let e = Env::new();
    let maria = MariaDb::start();
    let (_, sealed) = backed_up(&e, &maria);
    let forged = e.p().join("slow.coffer");
    fs::write(
        &forged,
        forge(&e, &sealed, &dump_with("shop", "SELECT SLEEP(600);")),
    )
    .unwrap();
    let child = spawn_scoped_load(&e, &maria, &forged, "hostile_slow");
    let exists = || {
        maria
            .sql("SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = 'hostile_slow'")
            .trim()
            == "1"
    };
    let started = Instant::now();
    while !exists() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the load never began"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(1));
    terminate(&child);
    let out = bounded(child, Duration::from_secs(45), "restore after SIGTERM");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(stderr(&out).contains("cancelled"), "{}", text(&out));
    assert_eq!(
        maria
            .sql("SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = 'hostile_slow'")
            .trim(),
        "0",
        "the database coffer created was left behind"
    );
}

/// [`scoped_load`] with HOME set to `home`.
fn scoped_load_with_home(e: &Env, maria: &MariaDb, sealed: &Path, db: &str, home: &Path) -> Output {
    scoped_load(e, maria, sealed, db)
        .env("HOME", home)
        .output()
        .unwrap()
}

#[test]
fn a_my_cnf_that_names_root_does_not_carry_an_unsigned_load() {
    // The client reads ~/.my.cnf after the options file coffer gives it;
    // one that names root (an administrator's convenience) must not decide
    // who a forged dump runs as.
    let e = Env::new();
    let maria = MariaDb::start();
    let (_, sealed) = backed_up(&e, &maria);
    let home = e.p().join("home");
    fs::create_dir(&home).unwrap();
    fs::write(
        home.join(".my.cnf"),
        format!(
            "[mysql]\nuser=root\npassword=\nhost=localhost\nsocket={}\n",
            maria.socket.display()
        ),
    )
    .unwrap();
    chmod(&home.join(".my.cnf"), 0o600);
    let forged = e.p().join("who.coffer");
    fs::write(
        &forged,
        forge(
            &e,
            &sealed,
            &dump_with("shop", "CREATE TABLE who AS SELECT CURRENT_USER() AS u;"),
        ),
    )
    .unwrap();
    let out = scoped_load_with_home(&e, &maria, &forged, "hostile_home", &home);
    assert!(out.status.success(), "{}", text(&out));
    let who = maria.sql("SELECT u FROM hostile_home.who");
    assert!(
        who.trim().starts_with("coffer_load_"),
        "the dump ran as {who}"
    );
}

#[test]
fn an_unsigned_load_into_a_database_with_code_in_it_is_refused() {
    // ALL on the target includes ALTER ROUTINE and EXECUTE: a routine root
    // defined there would run the dump's SQL as root.
    let e = Env::new();
    let maria = MariaDb::start();
    let (_, sealed) = backed_up(&e, &maria);
    maria.sql(
        "CREATE DATABASE hostile_code; \
         CREATE PROCEDURE hostile_code.helper() SQL SECURITY INVOKER SELECT 1;",
    );
    let home = e.p().join("home");
    fs::create_dir(&home).unwrap();
    let out = scoped_load_with_home(&e, &maria, &sealed, "hostile_code", &home);
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(text(&out).contains("routines, views"), "{}", text(&out));
    assert_eq!(
        maria
            .sql("SELECT COUNT(*) FROM mysql.user WHERE User LIKE 'coffer\\_load\\_%'")
            .trim(),
        "0"
    );
}

#[test]
fn the_load_account_reaches_the_server_hashed_and_invoker_code_is_named() {
    let e = Env::new();
    let maria = MariaDb::start();
    let (_, sealed) = backed_up(&e, &maria);
    let log = e.p().join("general.log");
    maria.sql(&format!(
        "SET GLOBAL general_log_file = '{}'; SET GLOBAL general_log = 1;",
        log.display()
    ));
    let forged = e.p().join("invoker.coffer");
    fs::write(
        &forged,
        forge(
            &e,
            &sealed,
            &dump_with(
                "shop",
                "CREATE PROCEDURE later() SQL SECURITY INVOKER INSERT INTO t VALUES (CURRENT_USER());",
            ),
        ),
    )
    .unwrap();
    let home = e.p().join("home");
    fs::create_dir(&home).unwrap();
    let out = scoped_load_with_home(&e, &maria, &forged, "hostile_invoker", &home);
    maria.sql("SET GLOBAL general_log = 0;");
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(
            "1 routines or views in hostile_invoker run with the rights of whoever calls them"
        ),
        "{}",
        text(&out)
    );
    let logged = fs::read_to_string(&log).unwrap();
    let created: Vec<&str> = logged
        .lines()
        .filter(|l| l.contains("CREATE USER 'coffer_load_"))
        .collect();
    assert_eq!(created.len(), 1, "{logged}");
    assert!(
        created[0].contains("IDENTIFIED BY PASSWORD '*"),
        "{}",
        created[0]
    );
}

#[test]
fn a_routine_a_forged_dump_leaves_running_is_killed_before_its_database_is_dropped() {
    // The client is gone when coffer is stopped, but a routine the dump
    // called runs on in the server (and makes its database again).
    let e = Env::new();
    let maria = MariaDb::start();
    let (_, sealed) = backed_up(&e, &maria);
    let forged = e.p().join("spin.coffer");
    fs::write(
        &forged,
        forge(
            &e,
            &sealed,
            &dump_with(
                "shop",
                "DELIMITER ;;\n\
                 CREATE PROCEDURE spin() BEGIN WHILE 1 DO \
                 CREATE DATABASE IF NOT EXISTS hostile_spin; DO SLEEP(0.2); END WHILE; END;;\n\
                 DELIMITER ;\n\
                 CALL spin();",
            ),
        ),
    )
    .unwrap();
    let child = spawn_scoped_load(&e, &maria, &forged, "hostile_spin");
    let running = || {
        maria
            .sql("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER LIKE 'coffer\\_load\\_%' AND COMMAND = 'Query' AND TIME > 0")
            .trim()
            != "0"
    };
    let started = Instant::now();
    while !running() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the load never began"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    terminate(&child);
    let out = bounded(child, Duration::from_secs(45), "restore after SIGTERM");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    // Long enough for a loop left running to make the database again.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        maria
            .sql("SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = 'hostile_spin'")
            .trim(),
        "0",
        "the database came back"
    );
    assert_eq!(
        maria
            .sql("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER LIKE 'coffer\\_load\\_%'")
            .trim(),
        "0"
    );
}
