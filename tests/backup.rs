//! The nightly job end to end, against private MariaDB and PostgreSQL servers
//! started by the harness.

#![allow(clippy::too_many_lines)] // end-to-end scenarios read best in one piece

mod common;
mod harness;

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use harness::{MariaDb, Postgres};

struct Setup {
    dir: tempfile::TempDir,
    key: PathBuf,
    store: PathBuf,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("backup.key");
        ok(&["keygen", "--type", "age", "--out", key.to_str().unwrap()]);
        let store = dir.path().join("store");
        Setup { dir, key, store }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a config with `[job]`, the given sources and a local store.
    fn config(&self, extra_job: &str, sources: &str) -> PathBuf {
        let p = self.path().join("coffer.toml");
        let _ = fs::remove_file(&p);
        fs::write(
            &p,
            format!(
                "[job]\nname = \"prod\"\nrecipients = [\"{}.pub\"]\nlock_file = \"{}\"\n{}{extra_job}\n{sources}\n[[store]]\ntype = \"local\"\npath = \"{}\"\n",
                self.key.display(),
                self.path().join("coffer.lock").display(),
                unsigned_unless_signed(extra_job),
                self.store.display()
            ),
        )
        .unwrap();
        chmod(&p, 0o600);
        p
    }

    fn backup(&self, config: &Path) -> std::process::Output {
        Command::new(bin())
            .args(["backup", "-c", config.to_str().unwrap()])
            .env("TMPDIR", self.path().join("tmp"))
            .env("XDG_RUNTIME_DIR", self.path())
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn sealed(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(&self.store)
            .map(|d| d.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default();
        v.retain(|p| p.to_string_lossy().ends_with(".coffer"));
        v.sort();
        v
    }

    fn store_files(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(&self.store)
            .map(|d| {
                d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Opens a sealed backup and returns its tar members, in order.
    fn members(&self, sealed: &Path) -> Vec<(String, Vec<u8>)> {
        let out = ok(&[
            "open",
            "-i",
            self.key.to_str().unwrap(),
            sealed.to_str().unwrap(),
        ]);
        let dec = coffer::archive::decompressor(
            &out.stdout[..],
            coffer::archive::Compression::Zstd(3),
            None,
        )
        .unwrap();
        let mut ar = tar::Archive::new(dec);
        ar.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let p = e.path().unwrap().display().to_string();
                let mut d = Vec::new();
                e.read_to_end(&mut d).unwrap();
                (p, d)
            })
            .collect()
    }
}

/// A member's content, joining `NAME.000000`, `NAME.000001`, … if it was split.
fn member(members: &[(String, Vec<u8>)], path: &str) -> Vec<u8> {
    if let Some((_, d)) = members.iter().find(|(p, _)| p == path) {
        return d.clone();
    }
    let parts: Vec<u8> = members
        .iter()
        .filter(|(p, _)| {
            p.strip_prefix(path)
                .is_some_and(|s| s.len() == 7 && s.starts_with('.'))
        })
        .flat_map(|(_, d)| d.clone())
        .collect();
    assert!(
        !parts.is_empty(),
        "no member {path} in {:?}",
        members.iter().map(|m| &m.0).collect::<Vec<_>>()
    );
    parts
}

fn inner_manifest(members: &[(String, Vec<u8>)]) -> serde_json::Value {
    let (name, data) = members.last().unwrap();
    assert_eq!(
        name, "MANIFEST.json",
        "the inner manifest is the last member"
    );
    serde_json::from_slice(data).unwrap()
}

fn assert_no_partials(dir: &Path) {
    let partials: Vec<_> = fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n.ends_with(".partial"))
        .collect();
    assert!(partials.is_empty(), "partial files left: {partials:?}");
}

const MARKER: &str = "UNIQUE-PLAINTEXT-MARKER-7f3a9c";
const DB_PASSWORD: &str = "s3cret-Dump-Pw-91x";

fn seed_mariadb(db: &MariaDb) {
    db.sql(&format!(
        "CREATE DATABASE production CHARACTER SET utf8mb4;
         USE production;
         CREATE TABLE customers (id INT PRIMARY KEY AUTO_INCREMENT, email VARCHAR(200), note TEXT, photo LONGBLOB, balance DECIMAL(12,2)) ENGINE=InnoDB;
         CREATE TABLE audit (id INT PRIMARY KEY AUTO_INCREMENT, customer INT, at TIMESTAMP DEFAULT CURRENT_TIMESTAMP);
         CREATE TRIGGER customers_audit AFTER INSERT ON customers FOR EACH ROW INSERT INTO audit(customer) VALUES (NEW.id);
         CREATE FUNCTION double_it(x INT) RETURNS INT DETERMINISTIC RETURN x * 2;
         INSERT INTO customers(email, note, photo, balance) VALUES
           ('a@example.com', 'Grüße, 日本語, emoji 🎉', UNHEX('00FF10E0CAFE'), 12.50),
           ('b@example.com', '{MARKER}', NULL, -3.25),
           ('c@example.com', 'quote '' and backslash \\\\', UNHEX(REPEAT('AB', 5000)), 0);
         CREATE TABLE bulk (id INT PRIMARY KEY AUTO_INCREMENT, payload VARCHAR(100));
         INSERT INTO bulk(payload) SELECT CONCAT('row-', seq) FROM seq_1_to_200000;"
    ));
}

fn mariadb_checksums(db: &MariaDb) -> String {
    db.sql("CHECKSUM TABLE production.customers, production.audit, production.bulk EXTENDED")
}

fn seed_postgres(pg: &Postgres) {
    pg.sql("postgres", "CREATE DATABASE app");
    pg.sql(
        "app",
        &format!(
            "CREATE TABLE orders (id serial PRIMARY KEY, item text, qty int, data jsonb, raw bytea);
             INSERT INTO orders(item, qty, data, raw) SELECT 'item-' || g, g % 7, jsonb_build_object('g', g), decode(md5(g::text), 'hex') FROM generate_series(1, 5000) g;
             INSERT INTO orders(item, qty) VALUES ('{MARKER}', 1), ('Grüße 日本語', 2);"
        ),
    );
}

fn postgres_checksum(pg: &Postgres, db: &str) -> String {
    pg.sql(
        db,
        "SELECT count(*), md5(string_agg(o::text, ',' ORDER BY id)) FROM orders o",
    )
}

#[test]
fn mariadb_and_postgres_backup_restores_identical_tables() {
    let s = Setup::new();
    let maria = MariaDb::start();
    seed_mariadb(&maria);
    let pg = Postgres::start();
    seed_postgres(&pg);
    let options = maria.user_with_options_file("backup", DB_PASSWORD, s.path());
    let passfile = pg.passfile(s.path());
    let config = s.config(
        "",
        &format!(
            "[[source]]\ntype = \"mysql\"\nname = \"main\"\ndatabases = [\"production\"]\noptions_file = \"{}\"\n\n\
             [[source]]\ntype = \"postgres\"\nname = \"pg\"\ndatabases = [\"app\"]\nglobals = true\npassfile = \"{}\"\nhost = \"127.0.0.1\"\nport = {}\nuser = \"postgres\"\n",
            options.display(),
            passfile.display(),
            pg.port
        ),
    );
    fs::create_dir_all(s.path().join("tmp")).unwrap();

    // Watch every process's argv and environment while the backup runs: the
    // database password must never appear, and we must see the dump running.
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let (mut saw_dump, mut leaks) = (false, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                for e in fs::read_dir("/proc").unwrap().flatten() {
                    let cmdline = fs::read(e.path().join("cmdline")).unwrap_or_default();
                    let environ = fs::read(e.path().join("environ")).unwrap_or_default();
                    let text = String::from_utf8_lossy(&cmdline);
                    if text.contains("mariadb-dump")
                        || text.contains("mysqldump")
                        || text.contains("pg_dump")
                    {
                        saw_dump = true;
                    }
                    for (what, bytes) in [("cmdline", &cmdline), ("environ", &environ)] {
                        if String::from_utf8_lossy(bytes).contains(DB_PASSWORD) {
                            leaks.push(format!("{what}: {}", text.replace('\0', " ")));
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            (saw_dump, leaks)
        })
    };
    let out = s.backup(&config);
    stop.store(true, Ordering::Relaxed);
    let (saw_dump, leaks) = watcher.join().unwrap();
    assert!(out.status.success(), "backup failed: {}", stderr(&out));
    assert!(
        out.stderr.is_empty(),
        "a successful cron run is silent: {}",
        stderr(&out)
    );
    assert!(
        saw_dump,
        "the watcher never saw a dump process; the check proved nothing"
    );
    assert!(leaks.is_empty(), "password visible in /proc: {leaks:?}");

    // No plaintext anywhere on disk: store, temporary directory, working dir.
    let mut scanned = 0;
    for root in [
        s.store.clone(),
        s.path().join("tmp"),
        s.path().to_path_buf(),
    ] {
        for f in walk(&root) {
            let data = fs::read(&f).unwrap_or_default();
            scanned += 1;
            assert!(
                !data.windows(MARKER.len()).any(|w| w == MARKER.as_bytes()),
                "plaintext marker found in {}",
                f.display()
            );
        }
    }
    assert!(scanned >= 3);

    let sealed = s.sealed();
    assert_eq!(sealed.len(), 1);
    let sidecar: serde_json::Value =
        serde_json::from_slice(&fs::read(format!("{}.json", sealed[0].display())).unwrap())
            .unwrap();
    assert_eq!(sidecar["sha256"].as_str().unwrap(), sha256_file(&sealed[0]));
    assert_eq!(sidecar["blake3"].as_str().unwrap(), blake3_file(&sealed[0]));
    assert_eq!(
        sidecar["size"].as_u64().unwrap(),
        fs::metadata(&sealed[0]).unwrap().len()
    );
    assert_eq!(sidecar["job"], "prod");

    let members = s.members(&sealed[0]);
    let manifest = inner_manifest(&members);
    let names: Vec<&str> = manifest["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "mysql/main.sql",
            "postgres/pg/globals.sql",
            "postgres/pg/app.dump"
        ]
    );
    for m in manifest["members"].as_array().unwrap() {
        let data = member(&members, m["path"].as_str().unwrap());
        assert_eq!(data.len() as u64, m["size"].as_u64().unwrap());
        assert_eq!(
            blake3::hash(&data).to_hex().as_str(),
            m["blake3"].as_str().unwrap()
        );
    }
    // Exact row counts, counted from the dump stream itself.
    let counts = &manifest["sources"][0]["row_counts"];
    assert_eq!(counts["production.customers"], 3, "{counts}");
    assert_eq!(counts["production.audit"], 3, "{counts}");
    assert_eq!(counts["production.bulk"], 200_000, "{counts}");
    let dump_cmd = manifest["sources"][0]["commands"][0].to_string();
    assert!(
        dump_cmd.contains("--single-transaction") && dump_cmd.contains("--defaults-extra-file=")
    );
    assert!(!dump_cmd.contains(DB_PASSWORD));

    // Load the MariaDB dump into a fresh server and compare checksums.
    let sql = s.path().join("restored.sql");
    fs::write(&sql, member(&members, "mysql/main.sql")).unwrap();
    let fresh = MariaDb::start();
    fresh.load(&sql);
    assert_eq!(mariadb_checksums(&fresh), mariadb_checksums(&maria));
    assert_eq!(fresh.sql("SELECT production.double_it(21)").trim(), "42");
    assert_eq!(
        fresh.sql("SELECT COUNT(*) FROM information_schema.TRIGGERS WHERE TRIGGER_NAME = 'customers_audit'").trim(),
        "1"
    );

    // Restore the PostgreSQL dump into a new database and compare.
    let dump = s.path().join("app.dump");
    fs::write(&dump, member(&members, "postgres/pg/app.dump")).unwrap();
    pg.sql("postgres", "CREATE DATABASE restored");
    pg.restore("restored", &dump);
    assert_eq!(
        postgres_checksum(&pg, "restored"),
        postgres_checksum(&pg, "app")
    );
    assert!(
        String::from_utf8_lossy(&member(&members, "postgres/pg/globals.sql"))
            .contains("CREATE ROLE postgres")
    );
}

fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = fs::read_dir(root) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else if p.is_file() {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn failed_dumps_exit_nonzero_delete_nothing_and_leave_no_partial() {
    let s = Setup::new();
    let maria = MariaDb::start();
    seed_mariadb(&maria);
    let options = maria.user_with_options_file("backup", DB_PASSWORD, s.path());
    let sqlite = s.path().join("app.db");
    sh(
        &format!(
            "sqlite3 {} 'create table t(x); insert into t values (1)'",
            sqlite.display()
        ),
        s.path(),
    );
    let good = s.config(
        "keep_last = 1",
        &format!(
            "[[source]]\ntype = \"sqlite\"\npath = \"{}\"\n",
            sqlite.display()
        ),
    );
    ok(&["backup", "-c", good.to_str().unwrap()]);
    ok(&["backup", "-c", good.to_str().unwrap()]);
    let before = s.store_files();
    assert_eq!(before.len(), 2, "keep_last = 1: {before:?}");
    let before_hash = sha256_file(&s.sealed()[0]);

    let mysql = |db: &str| {
        format!(
            "[[source]]\ntype = \"mysql\"\nname = \"main\"\ndatabases = [\"{db}\"]\noptions_file = \"{}\"\n",
            options.display()
        )
    };
    let failing = [
        ("bad database name", mysql("no_such_db"), "mariadb-dump exited with status"),
        ("command exits 1", "[[source]]\ntype = \"command\"\nname = \"x\"\nargv = [\"sh\", \"-c\", \"echo partial output; exit 1\"]\n".to_owned(), "exited with status 1"),
        ("command killed mid-stream", "[[source]]\ntype = \"command\"\nname = \"x\"\nargv = [\"sh\", \"-c\", \"head -c 3000000 /dev/zero; kill -9 $$\"]\n".to_owned(), "killed by signal 9"),
    ];
    for (what, source, message) in failing {
        // The good source first, so the failure comes after data was written.
        let cfg = s.config(
            "keep_last = 1",
            &format!(
                "[[source]]\ntype = \"sqlite\"\npath = \"{}\"\n\n{source}",
                sqlite.display()
            ),
        );
        let out = s.backup(&cfg);
        assert_eq!(code(&out), 1, "{what}: {}", stderr(&out));
        assert!(stderr(&out).contains(message), "{what}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("deleted nothing"),
            "{what}: {}",
            stderr(&out)
        );
        assert_eq!(s.store_files(), before, "{what}: the store changed");
        assert_eq!(sha256_file(&s.sealed()[0]), before_hash);
        assert_no_partials(&s.store);
    }

    // A mariadb-dump killed while it streams a large table.
    let cfg = s.config("keep_last = 1", &mysql("production"));
    let child = Command::new(bin())
        .args(["backup", "-c", cfg.to_str().unwrap()])
        .env("XDG_RUNTIME_DIR", s.path())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut killed = false;
    for _ in 0..400 {
        if let Some(pid) = find_process("mariadb-dump") {
            std::thread::sleep(Duration::from_millis(20));
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            killed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let out = child.wait_with_output().unwrap();
    assert!(killed, "never saw mariadb-dump to kill");
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("killed by signal 9") || stderr(&out).contains("Dump completed"),
        "{}",
        stderr(&out)
    );
    assert_eq!(s.store_files(), before);
    assert_no_partials(&s.store);
}

fn find_process(name: &str) -> Option<u32> {
    for e in fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmd = fs::read(e.path().join("cmdline")).unwrap_or_default();
        let argv0 = cmd.split(|&b| b == 0).next().unwrap_or_default();
        if String::from_utf8_lossy(argv0).ends_with(name) {
            return Some(pid);
        }
    }
    None
}

#[test]
fn keep_last_three_after_five_runs_keeps_the_three_newest() {
    let s = Setup::new();
    let sqlite = s.path().join("app.db");
    sh(
        &format!("sqlite3 {} 'create table t(x)'", sqlite.display()),
        s.path(),
    );
    let cfg = s.config(
        "keep_last = 3",
        &format!(
            "[[source]]\ntype = \"sqlite\"\npath = \"{}\"\n",
            sqlite.display()
        ),
    );
    let mut made = Vec::new();
    for i in 0..5 {
        sh(
            &format!("sqlite3 {} 'insert into t values ({i})'", sqlite.display()),
            s.path(),
        );
        let out = Command::new(bin())
            .args(["backup", "-v", "-c", cfg.to_str().unwrap()])
            .env("XDG_RUNTIME_DIR", s.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let line = stderr(&out);
        let name = line
            .split_whitespace()
            .nth(2)
            .unwrap()
            .trim_end_matches(':')
            .to_owned();
        made.push(name);
    }
    let files = s.store_files();
    let mut want: Vec<String> = made[2..]
        .iter()
        .flat_map(|n| [format!("{n}.coffer"), format!("{n}.coffer.json")])
        .collect();
    want.sort();
    assert_eq!(files, want);
    // The newest really holds the last insert.
    let newest = s.store.join(format!("{}.coffer", made[4]));
    let members = s.members(&newest);
    let m = inner_manifest(&members);
    assert_eq!(m["sources"][0]["row_counts"]["t"], 5);
}

#[test]
fn sqlite_copy_taken_during_writes_is_consistent() {
    let s = Setup::new();
    let db = s.path().join("live.db");
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT); CREATE TABLE total(n INTEGER); INSERT INTO total VALUES (0);").unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (db, stop) = (db.clone(), Arc::clone(&stop));
        std::thread::spawn(move || {
            let c = rusqlite::Connection::open(&db).unwrap();
            c.busy_timeout(Duration::from_secs(10)).unwrap();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                // Each transaction keeps total.n equal to count(t): a torn copy breaks that.
                c.execute_batch(&format!(
                    "BEGIN; INSERT INTO t(v) SELECT hex(randomblob(200)) FROM (SELECT 1 UNION SELECT 2 UNION SELECT 3); UPDATE total SET n = n + 3; COMMIT; -- {n}"
                ))
                .unwrap();
                n += 1;
            }
            n
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let cfg = s.config(
        "",
        &format!(
            "[[source]]\ntype = \"sqlite\"\nname = \"live\"\npath = \"{}\"\n",
            db.display()
        ),
    );
    let mut copies = Vec::new();
    for _ in 0..3 {
        let out = s.backup(&cfg);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    stop.store(true, Ordering::Relaxed);
    let transactions = writer.join().unwrap();
    assert!(
        transactions > 10,
        "the writer barely ran ({transactions} transactions)"
    );
    for sealed in s.sealed() {
        let members = s.members(&sealed);
        let image = member(&members, "sqlite/live.db");
        let copy = s.path().join(format!("copy{}.db", copies.len()));
        fs::write(&copy, &image).unwrap();
        let c = rusqlite::Connection::open(&copy).unwrap();
        let check: String = c
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
        let count: i64 = c
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        let total: i64 = c
            .query_row("SELECT n FROM total", [], |r| r.get(0))
            .unwrap();
        assert_eq!(count, total, "the copy is not a single snapshot");
        let manifest = inner_manifest(&members);
        assert_eq!(
            manifest["sources"][0]["row_counts"]["t"].as_i64().unwrap(),
            count
        );
        copies.push(count);
    }
    assert_eq!(copies.len(), 3);
}

#[test]
fn concurrent_runs_second_exits_with_lock_message() {
    let s = Setup::new();
    let cfg = s.config("", "[[source]]\ntype = \"command\"\nname = \"slow\"\nargv = [\"sh\", \"-c\", \"sleep 2; echo done\"]\n");
    let first = Command::new(bin())
        .args(["backup", "-c", cfg.to_str().unwrap()])
        .env("XDG_RUNTIME_DIR", s.path())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    let second = s.backup(&cfg);
    let first = first.wait_with_output().unwrap();
    assert!(first.status.success(), "{}", stderr(&first));
    assert_eq!(code(&second), 1);
    assert!(
        stderr(&second).contains("holds the lock"),
        "{}",
        stderr(&second)
    );
    assert_eq!(s.sealed().len(), 1);
}

#[test]
fn sigterm_kills_the_dump_and_removes_partials() {
    let s = Setup::new();
    let pidfile = s.path().join("child.pid");
    let cfg = s.config(
        "",
        &format!(
            "[[source]]\ntype = \"command\"\nname = \"slow\"\nargv = [\"sh\", \"-c\", \"echo $$ > {}; head -c 100000 /dev/zero; exec sleep 60\"]\n",
            pidfile.display()
        ),
    );
    let child = Command::new(bin())
        .args(["backup", "-c", cfg.to_str().unwrap()])
        .env("XDG_RUNTIME_DIR", s.path())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    for _ in 0..100 {
        if pidfile.exists() && fs::read_dir(&s.store).is_ok_and(|mut d| d.next().is_some()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        s.store_files().len(),
        1,
        "the upload should be in progress: {:?}",
        s.store_files()
    );
    let started = std::time::Instant::now();
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let out = child.wait_with_output().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "did not stop promptly"
    );
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(stderr(&out).contains("cancelled"), "{}", stderr(&out));
    assert!(
        s.store_files().is_empty(),
        "left behind: {:?}",
        s.store_files()
    );
    let pid = fs::read_to_string(&pidfile).unwrap();
    assert!(
        !Path::new(&format!("/proc/{}", pid.trim())).exists(),
        "the dump process survived"
    );
}

#[test]
fn config_check_catches_each_problem() {
    let s = Setup::new();
    let options = s.path().join("my.cnf");
    fs::write(&options, "[client]\nuser=x\npassword=y\n").unwrap();
    chmod(&options, 0o600);
    let good = s.config(
        "",
        &format!("[[source]]\ntype = \"mysql\"\nname = \"m\"\ndatabases = [\"d\"]\noptions_file = \"{}\"\n", options.display()),
    );
    let check = |cfg: &Path, path_env: Option<&str>| {
        let mut c = Command::new(bin());
        c.args(["config", "check", "-c", cfg.to_str().unwrap()]);
        if let Some(p) = path_env {
            c.env("PATH", p);
        }
        c.output().unwrap()
    };
    let out = check(&good, None);
    assert!(out.status.success(), "{}", stderr(&out));

    let text = fs::read_to_string(&good).unwrap();
    fs::write(&good, text.replace("recipients =", "recipents =")).unwrap();
    let out = check(&good, None);
    assert_eq!(code(&out), 2);
    assert!(
        stderr(&out).contains("coffer.toml:3: unknown field `recipents`"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("did you mean `recipients`?"),
        "{}",
        stderr(&out)
    );

    fs::write(
        &good,
        text.replace(
            &format!("{}.pub", s.key.display()),
            "/nonexistent/backup.pub",
        ),
    )
    .unwrap();
    let out = check(&good, None);
    assert_eq!(code(&out), 2);
    assert!(
        stderr(&out).contains("recipients") && stderr(&out).contains("/nonexistent/backup.pub"),
        "{}",
        stderr(&out)
    );

    fs::write(&good, &text).unwrap();
    chmod(&options, 0o644);
    let out = check(&good, None);
    assert_eq!(code(&out), 2);
    assert!(
        stderr(&out).contains(&format!("chmod 600 {}", options.display())),
        "{}",
        stderr(&out)
    );
    chmod(&options, 0o600);

    let out = check(&good, Some("/nonexistent"));
    assert_eq!(code(&out), 2);
    assert!(
        stderr(&out).contains("mariadb-dump or mysqldump not found"),
        "{}",
        stderr(&out)
    );

    // A config others can write is refused before it is read.
    chmod(&good, 0o666);
    let out = check(&good, None);
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains("chmod go-w"), "{}", stderr(&out));
}

#[test]
fn files_source_keeps_modes_mtimes_and_links() {
    let s = Setup::new();
    let tree = s.path().join("etc-app");
    fs::create_dir_all(tree.join("sub")).unwrap();
    fs::write(tree.join("app.conf"), "key = value\n").unwrap();
    chmod(&tree.join("app.conf"), 0o640);
    fs::write(tree.join("sub/secret"), "s").unwrap();
    chmod(&tree.join("sub/secret"), 0o600);
    std::os::unix::fs::symlink("/etc/passwd", tree.join("outside")).unwrap();
    sh(
        "touch -d '2020-01-02 03:04:05 UTC' etc-app/app.conf",
        s.path(),
    );
    let cfg = s.config(
        "compression = \"gzip\"",
        &format!(
            "[[source]]\ntype = \"files\"\nname = \"conf\"\npaths = [\"{}\"]\n",
            tree.display()
        ),
    );
    let out = s.backup(&cfg);
    assert!(out.status.success(), "{}", stderr(&out));
    let plain = ok(&[
        "open",
        "-i",
        s.key.to_str().unwrap(),
        s.sealed()[0].to_str().unwrap(),
    ]);
    let dec = coffer::archive::decompressor(
        &plain.stdout[..],
        coffer::archive::Compression::Gzip(6),
        None,
    )
    .unwrap();
    let mut ar = tar::Archive::new(dec);
    let mut seen = BTreeMap::new();
    let prefix = format!("files/conf{}", tree.display());
    for e in ar.entries().unwrap() {
        let e = e.unwrap();
        let p = e.path().unwrap().display().to_string();
        let h = e.header();
        seen.insert(
            p.replace(&prefix, ""),
            (
                h.mode().unwrap() & 0o7777,
                h.mtime().unwrap(),
                h.link_name().unwrap().map(|l| l.display().to_string()),
            ),
        );
    }
    assert_eq!(seen["/app.conf"].0, 0o640);
    assert_eq!(seen["/app.conf"].1, 1_577_934_245);
    assert_eq!(seen["/sub/secret"].0, 0o600);
    // The link is stored as a link; /etc/passwd itself is not read.
    assert_eq!(seen["/outside"].2.as_deref(), Some("/etc/passwd"));
    assert!(!seen.keys().any(|k| k.contains("passwd") && k != "/outside"));
}

#[test]
fn stale_partials_are_removed_and_incomplete_uploads_never_count() {
    let s = Setup::new();
    let db = s.path().join("app.db");
    sh(
        &format!("sqlite3 {} 'create table t(x)'", db.display()),
        s.path(),
    );
    let cfg = s.config(
        "keep_last = 1",
        &format!(
            "[[source]]\ntype = \"sqlite\"\npath = \"{}\"\n",
            db.display()
        ),
    );
    fs::create_dir_all(&s.store).unwrap();
    // Left by crashed runs: an old partial, a recent one of this job, a recent
    // one of another job, and a sealed file whose sidecar was never written.
    for f in [
        "prod-20200101T000000Z.coffer.partial",
        "prod-29990101T000000Z.coffer.partial",
        "other-29990101T000000Z.coffer.partial",
        "prod-29990101T000001Z.coffer",
    ] {
        fs::write(s.store.join(f), b"junk").unwrap();
    }
    sh(
        "touch -d '3 days ago' store/prod-20200101T000000Z.coffer.partial",
        s.path(),
    );
    let listing = ok(&["list", "-c", cfg.to_str().unwrap()]);
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(listing.contains("incomplete (no sidecar)"), "{listing}");
    assert!(listing.contains("partial upload"), "{listing}");
    for _ in 0..2 {
        let out = s.backup(&cfg);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let files = s.store_files();
    // The run holds this job's lock: its partials are dead runs' leftovers.
    assert!(
        !files
            .iter()
            .any(|f| f.starts_with("prod-") && f.ends_with(".partial")),
        "{files:?}"
    );
    // Another job's fresh partial may be an upload in progress.
    assert!(
        files.contains(&"other-29990101T000000Z.coffer.partial".to_owned()),
        "{files:?}"
    );
    // A sealed file without its sidecar is no backup: the job's next run
    // (holding the lock, so nothing of the job is in flight) removes it.
    assert!(
        !files.contains(&"prod-29990101T000001Z.coffer".to_owned()),
        "{files:?}"
    );
    // keep_last = 1 counted only complete backups: exactly one remains.
    assert_eq!(
        files.iter().filter(|f| f.ends_with(".coffer.json")).count(),
        1,
        "{files:?}"
    );
    let dry = ok(&["prune", "-c", cfg.to_str().unwrap(), "--dry-run"]);
    assert!(
        String::from_utf8_lossy(&dry.stdout).contains("keep prod-"),
        "{}",
        String::from_utf8_lossy(&dry.stdout)
    );
}

#[test]
fn prune_needs_no_key_and_no_sources() {
    let s = Setup::new();
    let db = s.path().join("app.db");
    sh(
        &format!("sqlite3 {} 'create table t(x)'", db.display()),
        s.path(),
    );
    let cfg = s.config(
        "keep_last = 9",
        &format!(
            "[[source]]\ntype = \"sqlite\"\npath = \"{}\"\n",
            db.display()
        ),
    );
    for _ in 0..3 {
        let out = s.backup(&cfg);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    // What the backup server holds: a name, a policy and the directory.
    let server = s.path().join("server.toml");
    fs::write(
        &server,
        format!(
            "[job]\nname = \"prod\"\nkeep_last = 1\n\n[[store]]\ntype = \"local\"\npath = \"{}\"\n",
            s.store.display()
        ),
    )
    .unwrap();
    chmod(&server, 0o600);
    let out = ok(&["prune", "-c", server.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.matches("deleted").count(), 2, "{text}");
    assert_eq!(s.sealed().len(), 1);
    // Such a config cannot run a backup, and says why.
    let out = s.backup(&server);
    assert_eq!(code(&out), 2);
    assert!(
        stderr(&out).contains("recipients is empty"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn names_with_newlines_cannot_forge_log_lines() {
    let s = Setup::new();
    // A path holding a newline and a fake log line (TOML "\n" escape).
    let cfg = s.config("", "[[source]]\ntype = \"sqlite\"\nname = \"app\"\npath = \"/nonexistent/x\\n[ERROR] fake line.db\"\n");
    let text = s.backup(&cfg);
    assert_eq!(code(&text), 1, "{}", stderr(&text));
    let err = stderr(&text);
    assert_eq!(err.lines().count(), 1, "one error line: {err}");
    assert_eq!(
        err.matches("No such file").count(),
        1,
        "the cause is said once: {err}"
    );
    assert!(err.lines().all(|l| l.starts_with("coffer: ")), "{err}");
    assert!(err.contains("x\\n[ERROR] fake line.db"), "{err}");
    let json = Command::new(bin())
        .args([
            "backup",
            "-c",
            cfg.to_str().unwrap(),
            "--log-format",
            "json",
        ])
        .output()
        .unwrap();
    let err = stderr(&json);
    assert_eq!(err.lines().count(), 1, "{err}");
    let event: serde_json::Value = serde_json::from_str(err.trim()).unwrap();
    assert_eq!(event["level"], "error");
    assert!(event["message"]
        .as_str()
        .unwrap()
        .contains("x\n[ERROR] fake line.db"));
}

/// A dump blocked behind another session's lock writes nothing, and would
/// hold the night's run (and the next night's lock) for as long as the lock
/// is held. Once it has written nothing for `dump_stall_secs`, it is stopped:
/// the run fails (exit 1) naming the dump and what to look for, writes no
/// file, and deletes nothing.
#[test]
fn a_dump_blocked_behind_a_lock_is_stopped_and_the_run_fails_loudly() {
    let s = Setup::new();
    let pg = Postgres::start();
    seed_postgres(&pg);
    let passfile = pg.passfile(s.path());
    let cfg = s.config(
        "dump_stall_secs = 5",
        &format!(
            "[[source]]\ntype = \"postgres\"\nname = \"pg\"\ndatabases = [\"app\"]\npassfile = \"{}\"\n\
             host = \"127.0.0.1\"\nport = {}\nuser = \"postgres\"\n",
            passfile.display(),
            pg.port
        ),
    );
    ok(&["backup", "-c", cfg.to_str().unwrap()]);
    let before = s.store_files();
    let mut locker = pg.sql_in_background(
        "app",
        "BEGIN; LOCK TABLE orders IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(120); COMMIT;",
    );
    std::thread::sleep(Duration::from_millis(1500));
    let started = std::time::Instant::now();
    let out = coffer(&["backup", "-c", cfg.to_str().unwrap()]);
    let took = started.elapsed();
    let _ = locker.kill();
    let _ = locker.wait();
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("wrote nothing for 5 s"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("hint: "), "{}", stderr(&out));
    assert!(took < Duration::from_secs(60), "{took:?}");
    assert_eq!(s.store_files(), before);
    assert_no_partials(&s.store);
}
