//! Restore drills (`verify --restore-test`) against real servers: a good
//! backup passes with every table's exact count, for MariaDB, PostgreSQL and
//! SQLite; a backup whose dump lost one row before sealing fails, naming the
//! table and both counts; the metrics file parses after a pass and a failure.
#![allow(clippy::too_many_lines)]
// end-to-end scenarios read best in one piece
// Metric values are small integers and times, exact in f64.
#![allow(clippy::float_cmp, clippy::cast_precision_loss)]

mod common;
mod harness;

use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::*;
use harness::{MariaDb, Postgres};

struct Env {
    dir: tempfile::TempDir,
    key: PathBuf,
    /// coffer's TMPDIR: the scratch servers' directories are made here,
    /// reachable by the unprivileged user they run as when tests run as root.
    tmp: PathBuf,
}

impl Env {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        chmod(dir.path(), 0o755);
        let key = dir.path().join("backup.key");
        ok(&["keygen", "--type", "age", "--out", key.to_str().unwrap()]);
        let tmp = dir.path().join("tmp");
        fs::create_dir(&tmp).unwrap();
        chmod(&tmp, 0o1777);
        Env { dir, key, tmp }
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
    /// A job signed (as jobs are by default) with the signing key keygen
    /// made beside the backup key, unless `sources` brings its own.
    fn config(&self, sources: &str) -> PathBuf {
        let p = self.p().join("coffer.toml");
        let signing = if sources.contains("signing_key") {
            String::new()
        } else {
            format!("signing_key = \"{}/signing.key\"\n", self.p().display())
        };
        fs::write(
            &p,
            format!(
                "[job]\nname = \"prod\"\nrecipients = [\"{key}.pub\"]\nlock_file = \"{dir}/lock\"\nkeep_last = 10\n{signing}\
                 {sources}[[store]]\ntype = \"local\"\nname = \"local\"\npath = \"{store}\"\n",
                key = self.key.display(),
                dir = self.p().display(),
                store = self.store().display()
            ),
        )
        .unwrap();
        chmod(&p, 0o600);
        p
    }
    /// A job backing up database `shop` of `maria` as user `backup`.
    fn shop_job(&self, maria: &MariaDb) -> PathBuf {
        let options = maria.user_with_options_file("backup", "drill-pw", self.p());
        self.config(&format!(
            "[[source]]\ntype = \"mysql\"\nname = \"main\"\ndatabases = [\"shop\"]\noptions_file = \"{}\"\n",
            options.display()
        ))
    }
    /// Backs up, then drills the backup, which must pass: its reports.
    fn drilled(&self, cfg: &Path) -> serde_json::Value {
        self.backup(cfg, None);
        let (out, reports) = self.drill(cfg, None);
        assert!(out.status.success(), "{}", text(&out));
        reports
    }
    fn run(&self, args: &[&str], path: Option<&str>) -> Output {
        let mut c = Command::new(bin());
        c.args(args).env("TMPDIR", &self.tmp).stdin(Stdio::null());
        if let Some(p) = path {
            c.env("PATH", p);
        }
        c.output().unwrap()
    }
    fn backup(&self, cfg: &Path, path: Option<&str>) {
        let out = self.run(&["backup", "-c", cfg.to_str().unwrap()], path);
        assert!(out.status.success(), "{}", text(&out));
    }
    /// `verify latest --restore-test --json` (and a metrics file, if given).
    fn drill(&self, cfg: &Path, metrics: Option<&Path>) -> (Output, serde_json::Value) {
        let mut args = vec![
            "verify",
            "-c",
            cfg.to_str().unwrap(),
            "latest",
            "-i",
            self.key(),
            "--restore-test",
            "--json",
        ];
        if let Some(m) = metrics {
            args.extend(["--metrics-file", m.to_str().unwrap()]);
        }
        if fs::read_to_string(cfg).unwrap().contains("unsigned = true") {
            args.push("--trust-unsigned");
        }
        let out = self.run(&args, None);
        let reports: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        (out, reports)
    }
    /// Makes `cfg`'s job unsigned: for a test that edits a backup as a
    /// bug in coffer would, which no signature could then vouch for.
    fn unsigned(&self, cfg: &Path) {
        let signing = format!("signing_key = \"{}/signing.key\"\n", self.p().display());
        let text = fs::read_to_string(cfg).unwrap();
        assert!(text.contains(&signing));
        fs::write(cfg, text.replace(&signing, "unsigned = true\n")).unwrap();
    }
    /// A job signed with a new signing key, backing up `sources`.
    fn signed_config(&self, sources: &str) -> PathBuf {
        let sign = self.p().join("sign.key");
        ok(&[
            "keygen",
            "--type",
            "signing",
            "--out",
            sign.to_str().unwrap(),
        ]);
        self.config(&format!(
            "signing_key = \"{s}\"\nsigning_public_key = \"{s}.pub\"\n{sources}",
            s = sign.display()
        ))
    }
    /// `restore latest --into-db SOURCE --database DB`, which must succeed.
    fn load_into(&self, cfg: &Path, source: &str, db: &str) {
        let c = cfg.to_str().unwrap();
        let out = self.run(
            &[
                "restore",
                "-c",
                c,
                "-i",
                self.key(),
                "latest",
                "--into-db",
                source,
                "--database",
                db,
            ],
            None,
        );
        assert!(out.status.success(), "{}", text(&out));
    }
    fn latest_sealed(&self) -> PathBuf {
        let mut v: Vec<PathBuf> = fs::read_dir(self.store())
            .unwrap()
            .map(|x| x.unwrap().path())
            .filter(|p| p.to_string_lossy().ends_with(".coffer"))
            .collect();
        v.sort();
        v.pop().unwrap()
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The drill's tables as `kind source table expected restored status`.
fn tables(reports: &serde_json::Value) -> Vec<String> {
    let mut v: Vec<String> = reports[0]["drill"]["tables"]
        .as_array()
        .unwrap_or_else(|| panic!("no drill in {reports:#}"))
        .iter()
        .map(|t| {
            format!(
                "{} {} {} {} {} {}",
                t["kind"].as_str().unwrap(),
                t["source"].as_str().unwrap(),
                t["table"].as_str().unwrap(),
                t["expected"],
                t["restored"],
                t["status"].as_str().unwrap()
            )
        })
        .collect();
    v.sort();
    v
}

/// The drill measured a restore: time and rate.
fn assert_measured(reports: &serde_json::Value) {
    let d = &reports[0]["drill"];
    assert!(d["restore_seconds"].as_f64().unwrap() > 0.0, "{d:#}");
    assert!(d["restored_bytes"].as_u64().unwrap() > 0, "{d:#}");
    assert!(d["bytes_per_second"].as_f64().unwrap() > 0.0, "{d:#}");
}

/// The backup as it would have been sealed had `member` lost a row between
/// the counting and the sealing: the member edited by `edit`, the manifest's
/// hash and size of it updated, its row counts kept, sealed to the backup
/// key, and put in place of the stored backup (sidecar updated).
fn lose_a_row_before_sealing(e: &Env, member: &str, edit: impl Fn(Vec<u8>) -> Vec<u8>) {
    let sealed = e.latest_sealed();
    let out = ok(&[
        "restore",
        "-i",
        e.key(),
        sealed.to_str().unwrap(),
        "--stdout",
    ]);
    let mut archive = tar::Archive::new(&out.stdout[..]);
    let mut b = tar::Builder::new(Vec::new());
    let mut edited = None;
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        if path == member {
            data = edit(data);
            edited = Some((data.len(), hex::encode(blake3::hash(&data).as_bytes())));
        } else if path == "MANIFEST.json" {
            let (len, sha) = edited
                .clone()
                .expect("the member comes before the manifest");
            let mut m: serde_json::Value = serde_json::from_slice(&data).unwrap();
            for x in m["members"].as_array_mut().unwrap() {
                if x["path"] == member {
                    x["size"] = len.into();
                    x["blake3"] = sha.clone().into();
                }
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
        // As coffer writes it: the members' digests are BLAKE3, one each.
        member_hash: Some("blake3".into()),
        ..Default::default()
    };
    let mut w = coffer::envelope::seal(&recipients, meta, 65536, Vec::new()).unwrap();
    w.write_all(&tar).unwrap();
    fs::write(&sealed, w.finish().unwrap()).unwrap();
    let sidecar_path = format!("{}.json", sealed.display());
    let mut sidecar: serde_json::Value =
        serde_json::from_slice(&fs::read(&sidecar_path).unwrap()).unwrap();
    vouch_for(&mut sidecar, &sealed);
    fs::write(&sidecar_path, serde_json::to_vec(&sidecar).unwrap()).unwrap();
}

#[test]
fn sqlite_drill_counts_every_table_and_its_metrics_parse_after_pass_and_failure() {
    let e = Env::new();
    let db = e.p().join("app.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch(
        "CREATE TABLE items (id INTEGER PRIMARY KEY, v TEXT);
         WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < 500)
         INSERT INTO items SELECT n, 'item ' || n FROM s;
         CREATE TABLE \"odd \"\"name\"\"\" (x);
         INSERT INTO \"odd \"\"name\"\"\" VALUES (1), (2), (3);
         CREATE TABLE empty_one (x);",
    )
    .unwrap();
    drop(conn);
    let cfg = e.config(&format!(
        "[[source]]\ntype = \"sqlite\"\nname = \"app\"\npath = \"{}\"\n",
        db.display()
    ));
    e.unsigned(&cfg);
    // The backup's own metrics share the file: the drill keeps them.
    let metrics = e.p().join("coffer.prom");
    let out = e.run(
        &[
            "backup",
            "-c",
            cfg.to_str().unwrap(),
            "--metrics-file",
            metrics.to_str().unwrap(),
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out));

    let (out, reports) = e.drill(&cfg, Some(&metrics));
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        tables(&reports),
        [
            "sqlite app empty_one 0 0 ok",
            "sqlite app items 500 500 ok",
            "sqlite app odd \"name\" 3 3 ok",
        ]
    );
    assert_measured(&reports);
    assert!(
        reports[0]["checks"]
            .to_string()
            .contains("sqlite/app.db passes integrity_check"),
        "{reports:#}"
    );
    let s = parse_metrics(&metrics);
    let passed = value(
        &s,
        "coffer_restore_test_last_success_timestamp_seconds{job=prod}",
    );
    let now = chrono::Utc::now().timestamp() as f64;
    assert!((now - passed).abs() < 120.0, "{passed} vs {now}");
    assert_eq!(
        value(&s, "coffer_restore_test_tables{job=prod,status=ok}"),
        3.0
    );
    assert_eq!(
        value(&s, "coffer_restore_test_tables{job=prod,status=mismatch}"),
        0.0
    );
    assert!(value(&s, "coffer_restore_test_duration_seconds{job=prod}") > 0.0);
    assert_eq!(value(&s, "coffer_backup_last_run_success{job=prod}"), 1.0);

    // The human report: a table of expected and restored rows.
    let out = e.run(
        &[
            "verify",
            "-c",
            cfg.to_str().unwrap(),
            "latest",
            "-i",
            e.key(),
            "--restore-test",
            "--trust-unsigned",
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out));
    let human = String::from_utf8_lossy(&out.stdout);
    assert!(
        human
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()
                == ["sqlite", "app:", "items", "500", "500", "ok"]),
        "{human}"
    );
    assert!(human.contains("MiB/s"), "{human}");

    lose_a_row_before_sealing(&e, "sqlite/app.db", |data| {
        let copy = e.p().join("edit.db");
        fs::write(&copy, data).unwrap();
        let c = rusqlite::Connection::open(&copy).unwrap();
        c.execute("DELETE FROM items WHERE id = 250", []).unwrap();
        drop(c);
        fs::read(&copy).unwrap()
    });
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let (out, reports) = e.drill(&cfg, Some(&metrics));
    assert_eq!(code(&out), 3, "{}", text(&out));
    assert!(
        reports[0]["problems"]
            .to_string()
            .contains("restore test: items has 499 rows, the manifest says 500"),
        "{reports:#}"
    );
    assert!(
        tables(&reports).contains(&"sqlite app items 500 499 mismatch".to_owned()),
        "{reports:#}"
    );
    let s = parse_metrics(&metrics);
    assert_eq!(
        value(
            &s,
            "coffer_restore_test_last_success_timestamp_seconds{job=prod}"
        ),
        passed,
        "a failed drill keeps the last success time"
    );
    assert_eq!(
        value(&s, "coffer_restore_test_last_run_success{job=prod}"),
        0.0
    );
    assert_eq!(
        value(&s, "coffer_restore_test_tables{job=prod,status=mismatch}"),
        1.0
    );
    assert_eq!(
        value(&s, "coffer_restore_test_tables{job=prod,status=ok}"),
        2.0
    );
    assert_eq!(value(&s, "coffer_backup_last_run_success{job=prod}"), 1.0);
}

#[test]
fn postgres_drill_restores_exact_counts_and_catches_a_dump_that_lost_a_row() {
    let e = Env::new();
    let pg = Postgres::start();
    pg.sql("postgres", "CREATE DATABASE app");
    pg.sql(
        "app",
        "CREATE TABLE items (id serial PRIMARY KEY, v text);
         INSERT INTO items(v) SELECT 'v' || g FROM generate_series(1, 1000) g;
         CREATE SCHEMA \"Sales\";
         CREATE TABLE \"Sales\".\"order lines\" (n int);
         INSERT INTO \"Sales\".\"order lines\" SELECT g FROM generate_series(1, 42) g;
         CREATE TABLE empty_one (x int);",
    );
    let passfile = pg.passfile(e.p());
    let cfg = e.config(&format!(
        "[[source]]\ntype = \"postgres\"\nname = \"pg\"\ndatabases = [\"app\"]\nglobals = true\n\
         passfile = \"{}\"\nhost = \"127.0.0.1\"\nport = {}\nuser = \"postgres\"\n",
        passfile.display(),
        pg.port
    ));
    let reports = e.drilled(&cfg);
    assert_eq!(
        tables(&reports),
        [
            "postgres pg app.Sales.order lines 42 42 ok",
            "postgres pg app.public.empty_one 0 0 ok",
            "postgres pg app.public.items 1000 1000 ok",
        ]
    );
    assert_measured(&reports);
    let checks = reports[0]["checks"].to_string();
    assert!(
        checks.contains("postgres/pg/app.dump loaded into a scratch PostgreSQL"),
        "{checks}"
    );

    // A pg_dump that loses a row: it dumps a moment after the snapshot
    // coffer counted in (a row deleted meanwhile), as a dump that ignored
    // --snapshot would.
    let real = coffer::source::find_program("pg_dump").unwrap();
    let wrappers = e.p().join("wrappers");
    fs::create_dir(&wrappers).unwrap();
    let psql = coffer::source::find_program("psql").unwrap();
    fs::write(
        wrappers.join("pg_dump"),
        format!(
            "#!/bin/sh\n\
             case \"$*\" in *--dbname=app*) \"{psql}\" -X -q -h 127.0.0.1 -p {port} -U postgres -d app \
             -c 'DELETE FROM items WHERE id = 500' || exit 1;; esac\n\
             for a do shift; case \"$a\" in --snapshot=*) ;; *) set -- \"$@\" \"$a\";; esac; done\n\
             exec \"{real}\" \"$@\"\n",
            psql = psql.display(),
            port = pg.port,
            real = real.display()
        ),
    )
    .unwrap();
    chmod(&wrappers.join("pg_dump"), 0o755);
    let path = format!(
        "{}:{}",
        wrappers.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    std::thread::sleep(std::time::Duration::from_millis(1100));
    e.backup(&cfg, Some(&path));
    assert_eq!(pg.sql("app", "SELECT count(*) FROM items").trim(), "999");
    let (out, reports) = e.drill(&cfg, None);
    assert_eq!(code(&out), 3, "{}", text(&out));
    assert!(
        reports[0]["problems"]
            .to_string()
            .contains("restore test: app.public.items has 999 rows, the manifest says 1000"),
        "{reports:#}"
    );
    assert!(
        tables(&reports).contains(&"postgres pg app.public.items 1000 999 mismatch".to_owned()),
        "{reports:#}"
    );
}

#[test]
fn mariadb_drill_restores_exact_counts_and_catches_a_row_lost_before_sealing() {
    let e = Env::new();
    let maria = MariaDb::start();
    maria.sql(
        "CREATE DATABASE shop; USE shop; CREATE TABLE t (id INT PRIMARY KEY, v TEXT); \
         INSERT INTO t SELECT seq, CONCAT('v', seq) FROM seq_1_to_3000; CREATE TABLE empty_one (x INT);",
    );
    let cfg = e.shop_job(&maria);
    e.unsigned(&cfg);
    let reports = e.drilled(&cfg);
    assert_eq!(
        tables(&reports),
        [
            "mysql main shop.empty_one 0 0 ok",
            "mysql main shop.t 3000 3000 ok"
        ]
    );
    assert_measured(&reports);

    // The rows are counted as the dump streams into the archive: a row lost
    // after that, before the seal, leaves the manifest's count standing.
    lose_a_row_before_sealing(&e, "mysql/main.sql", |data| {
        let dump = String::from_utf8(data).unwrap();
        assert!(dump.contains("(1500,'v1500'),"), "{dump}");
        dump.replacen("(1500,'v1500'),", "", 1).into_bytes()
    });
    let (out, reports) = e.drill(&cfg, None);
    assert_eq!(code(&out), 3, "{}", text(&out));
    assert!(
        reports[0]["problems"]
            .to_string()
            .contains("restore test: shop.t has 2999 rows, the manifest says 3000"),
        "{reports:#}"
    );
}

#[test]
fn a_postgres_dump_cannot_run_a_program_in_the_scratch_server() {
    // A dump whose CHECK constraint calls a function that runs a shell
    // command, as a forged dump could: the function runs for each row
    // pg_restore loads. The loading role is no superuser: COPY … TO
    // PROGRAM is refused and the drill fails.
    let e = Env::new();
    let drop = e.p().join("drop");
    fs::create_dir(&drop).unwrap();
    chmod(&drop, 0o1777);
    let pwned = drop.join("pwned");
    let pg = Postgres::start();
    pg.sql("postgres", "CREATE DATABASE app");
    pg.sql(
        "app",
        &format!(
            "CREATE TABLE t (x int); INSERT INTO t VALUES (1), (2);
             CREATE FUNCTION public.f(x int) RETURNS int LANGUAGE plpgsql AS $$
             BEGIN
               IF current_database() <> 'app' THEN
                 COPY (SELECT 1) TO PROGRAM 'touch {}';
               END IF;
               RETURN x;
             END $$;
             ALTER TABLE t ADD CONSTRAINT runs CHECK (public.f(x) > 0);",
            pwned.display()
        ),
    );
    let passfile = pg.passfile(e.p());
    let cfg = e.config(&format!(
        "[[source]]\ntype = \"postgres\"\nname = \"pg\"\ndatabases = [\"app\"]\n\
         passfile = \"{}\"\nhost = \"127.0.0.1\"\nport = {}\nuser = \"postgres\"\n",
        passfile.display(),
        pg.port
    ));
    e.backup(&cfg, None);
    let (out, reports) = e.drill(&cfg, None);
    assert!(!pwned.exists(), "the dump ran a program: {}", text(&out));
    assert_eq!(code(&out), 3, "{}", text(&out));
    let problems = reports[0]["problems"].to_string();
    assert!(
        problems.contains("restore test: loading postgres/pg/app.dump failed")
            && problems.contains("pg_execute_server_program"),
        "{problems}"
    );
}

/// A table whose default draws from a sequence (`DEFAULT NEXTVAL(s)`): a
/// dump with table locks cannot be loaded by its own client (ERROR 1100,
/// the sequence is not locked). The dump is made without them, so the
/// backup restores, and the drill that loads it passes.
#[test]
fn a_mariadb_table_whose_default_draws_from_a_sequence_restores() {
    let e = Env::new();
    let maria = MariaDb::start();
    maria.sql(
        "CREATE DATABASE shop; USE shop; CREATE SEQUENCE ids; \
         CREATE TABLE t (id INT DEFAULT NEXTVAL(ids), v INT); \
         INSERT INTO t (v) SELECT seq FROM seq_1_to_50;",
    );
    let cfg = e.shop_job(&maria);
    let reports = e.drilled(&cfg);
    assert!(
        tables(&reports).contains(&"mysql main shop.t 50 50 ok".to_owned()),
        "{reports:#}"
    );
}

/// A MariaDB schema as people have them: a table whose name holds a
/// backtick, a table with an invisible column among many (its INSERT lists
/// the columns), a trigger and a procedure whose bodies INSERT. The drill
/// counts exactly the rows the dump holds, and every table loads.
#[test]
fn mariadb_drill_counts_real_schemas_exactly() {
    let e = Env::new();
    let maria = MariaDb::start();
    let cols = (1..=40)
        .map(|i| format!("column_with_a_long_name_{i} INT DEFAULT 0, "))
        .collect::<Vec<_>>()
        .concat();
    maria.sql(&format!(
        "CREATE DATABASE shop; USE shop; \
         CREATE TABLE `we``ird` (id INT); INSERT INTO `we``ird` VALUES (1),(2); \
         CREATE TABLE inv (id INT, secret INT INVISIBLE, {cols}last INT); \
         INSERT INTO inv (id, secret, last) VALUES (1,2,3),(4,5,6),(7,8,9); \
         CREATE TABLE log (x INT); CREATE TABLE t (id INT); \
         CREATE TRIGGER tr AFTER INSERT ON t FOR EACH ROW INSERT INTO log VALUES (NEW.id); \
         INSERT INTO t VALUES (1),(2),(3);"
    ));
    let body = e.p().join("proc.sql");
    fs::write(
        &body,
        "USE shop;\nDELIMITER //\nCREATE PROCEDURE p() BEGIN\nINSERT INTO log VALUES (99);\nINSERT INTO `log` VALUES (100);\nEND//\nDELIMITER ;\n",
    )
    .unwrap();
    maria.load(&body);
    let cfg = e.shop_job(&maria);
    let reports = e.drilled(&cfg);
    assert_eq!(
        tables(&reports),
        [
            "mysql main shop.inv 3 3 ok",
            "mysql main shop.log 3 3 ok",
            "mysql main shop.t 3 3 ok",
            "mysql main shop.we`ird 2 2 ok",
        ]
    );
}

/// Row-level security as applications use it: a policy granted to a named
/// role (which the scratch server has no reason to know), and a table whose
/// owner is held to its policies (FORCE). The drill loads what a real
/// restore loads and counts every row, not those the policies let through.
#[test]
fn postgres_drill_loads_and_counts_tables_under_row_level_security() {
    let e = Env::new();
    let pg = Postgres::start();
    pg.sql("postgres", "CREATE DATABASE app");
    pg.sql("postgres", "CREATE ROLE app_user NOLOGIN");
    pg.sql(
        "app",
        "CREATE TABLE notes (id int, owner text DEFAULT current_user);
         INSERT INTO notes(id) SELECT g FROM generate_series(1, 30) g;
         ALTER TABLE notes ENABLE ROW LEVEL SECURITY;
         ALTER TABLE notes FORCE ROW LEVEL SECURITY;
         CREATE POLICY mine ON notes TO app_user USING (owner = current_user);",
    );
    let passfile = pg.passfile(e.p());
    let cfg = e.config(&format!(
        "[[source]]\ntype = \"postgres\"\nname = \"pg\"\ndatabases = [\"app\"]\n\
         passfile = \"{}\"\nhost = \"127.0.0.1\"\nport = {}\nuser = \"postgres\"\n",
        passfile.display(),
        pg.port
    ));
    let reports = e.drilled(&cfg);
    assert_eq!(tables(&reports), ["postgres pg app.public.notes 30 30 ok"]);
}

/// A view whose definer is the server's root account and which calls a
/// stored function: the dump names `DEFINER=root@localhost`, which a real
/// restore onto the same server has. The drill loads it too.
#[test]
fn mariadb_drill_loads_a_root_definer_view_that_calls_a_function() {
    let e = Env::new();
    let maria = MariaDb::start();
    maria.sql(
        "CREATE DATABASE shop; USE shop; CREATE TABLE t (id INT); \
         INSERT INTO t VALUES (1),(2),(3); \
         CREATE FUNCTION twice(x INT) RETURNS INT DETERMINISTIC RETURN x * 2; \
         CREATE DEFINER = root@localhost VIEW v AS SELECT twice(id) AS d FROM t;",
    );
    let cfg = e.shop_job(&maria);
    // Dumping a view's columns runs its function.
    maria.sql("GRANT EXECUTE ON shop.* TO 'backup'@'127.0.0.1'");
    let reports = e.drilled(&cfg);
    assert_eq!(tables(&reports), ["mysql main shop.t 3 3 ok"]);
}

/// A view whose definer is a role (`DEFINER=`reporting``, no host) and
/// which calls a stored function: the scratch server has no such role, and
/// the drill loads the view as the loading account's, as it does for
/// accounts it lacks.
#[test]
fn mariadb_drill_loads_a_view_whose_definer_is_a_role() {
    let e = Env::new();
    let maria = MariaDb::start();
    maria.sql(
        "CREATE DATABASE shop; USE shop; CREATE TABLE t (id INT); \
         INSERT INTO t VALUES (1),(2); CREATE ROLE reporting; \
         GRANT SELECT, EXECUTE ON shop.* TO reporting; \
         CREATE FUNCTION twice(x INT) RETURNS INT DETERMINISTIC RETURN x * 2; \
         CREATE DEFINER = reporting VIEW v AS SELECT twice(id) AS d FROM t;",
    );
    assert!(
        maria
            .sql("SHOW CREATE VIEW shop.v")
            .contains("DEFINER=`reporting` SQL SECURITY"),
        "the server writes a role definer without a host"
    );
    let cfg = e.shop_job(&maria);
    // Dumping a view's columns runs its function.
    maria.sql("GRANT EXECUTE ON shop.* TO 'backup'@'127.0.0.1'");
    let reports = e.drilled(&cfg);
    assert_eq!(tables(&reports), ["mysql main shop.t 2 2 ok"]);
}

/// A MyISAM or Aria table is not in the InnoDB snapshot a single-transaction
/// dump reads: the backup says so once, by name, and still succeeds; the
/// InnoDB tables are not named.
#[test]
fn a_table_outside_the_snapshot_is_named_once() {
    let e = Env::new();
    let maria = MariaDb::start();
    maria.sql(
        "CREATE DATABASE shop; USE shop; CREATE TABLE a (id INT) ENGINE=Aria; \
         CREATE TABLE m (id INT) ENGINE=MyISAM; CREATE TABLE i (id INT) ENGINE=InnoDB;",
    );
    let cfg = e.shop_job(&maria);
    let out = e.run(&["backup", "-c", cfg.to_str().unwrap()], None);
    assert!(out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert_eq!(
        said.matches("shop.a (Aria) does not take part").count(),
        1,
        "{said}"
    );
    assert_eq!(
        said.matches("shop.m (MyISAM) does not take part").count(),
        1,
        "{said}"
    );
    assert!(!said.contains("shop.i "), "{said}");
}

/// A system-versioned table keeps its history: the dump holds every row
/// version (the drill counts them all, restored and expected), a restore
/// into a database brings the history back, and a table versioned by
/// transaction id — whose history mariadb-dump cannot dump — is named in
/// a warning instead of failing the night.
#[test]
fn a_mariadb_system_versioned_table_keeps_its_history() {
    let e = Env::new();
    let maria = MariaDb::start();
    maria.sql(
        "CREATE DATABASE shop; USE shop; \
         CREATE TABLE prices (id INT PRIMARY KEY, v INT) WITH SYSTEM VERSIONING; \
         INSERT INTO prices VALUES (1, 1), (2, 2); UPDATE prices SET v = 10 WHERE id = 1; \
         DELETE FROM prices WHERE id = 2;",
    );
    let cfg = e.shop_job(&maria);
    let reports = e.drilled(&cfg);
    assert_eq!(tables(&reports), ["mysql main shop.prices 3 3 ok"]);
    maria.sql("GRANT ALL ON copy.* TO 'backup'@'127.0.0.1'");
    e.load_into(&cfg, "main", "copy");
    assert_eq!(
        maria
            .sql("SELECT COUNT(*) FROM copy.prices FOR SYSTEM_TIME ALL")
            .trim(),
        "3"
    );
    assert_eq!(maria.sql("SELECT COUNT(*) FROM copy.prices").trim(), "1");

    maria.sql(
        "USE shop; CREATE TABLE tx (id INT, s BIGINT UNSIGNED AS ROW START INVISIBLE, \
         e BIGINT UNSIGNED AS ROW END INVISIBLE, PERIOD FOR SYSTEM_TIME(s, e)) \
         ENGINE=InnoDB WITH SYSTEM VERSIONING; INSERT INTO tx VALUES (1); UPDATE tx SET id = 2;",
    );
    let out = e.run(&["backup", "-c", cfg.to_str().unwrap()], None);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("the history of shop.tx is not in the backup"),
        "{}",
        text(&out)
    );
}

/// A MariaDB schema with every kind of object people keep: a database
/// collation, column collations and character sets, BLOBs with zero bytes,
/// JSON, spatial and full-text indexes, generated and invisible columns, a
/// sequence drawn by a default, partitions, system versioning, a foreign
/// key, a non-transactional table, a trigger, a function, a procedure, an
/// event, and views with DEFINER and SQL SECURITY.
const MARIADB_KITCHEN_SINK: &str = r#"
CREATE DATABASE ks CHARACTER SET utf8mb4 COLLATE utf8mb4_swedish_ci;
USE ks;
CREATE SEQUENCE seq START WITH 100 INCREMENT BY 5;
CREATE TABLE items (
  id INT PRIMARY KEY AUTO_INCREMENT,
  name VARCHAR(50) COLLATE utf8mb4_bin,
  latin VARCHAR(20) CHARACTER SET latin1 COLLATE latin1_german2_ci,
  data BLOB,
  doc JSON,
  pt POINT NOT NULL,
  total DECIMAL(10,2),
  g DECIMAL(12,2) AS (total * 2) VIRTUAL,
  gs VARCHAR(60) AS (UPPER(name)) STORED,
  hidden INT INVISIBLE DEFAULT 7,
  n BIGINT DEFAULT NEXTVAL(seq),
  SPATIAL INDEX(pt),
  FULLTEXT KEY ft (name)
) ENGINE=InnoDB COMMENT='items table';
INSERT INTO items (name, latin, data, doc, pt, total) VALUES
 ('a', 'Straße', X'00FF0000', '{"k": [1,2]}', POINT(1,2), 1.50),
 ('b\'q', 'Öl', X'', '{"e": "\\u00e9"}', POINT(-3.5, 4.25), NULL),
 ('c;\n--x', NULL, NULL, NULL, ST_GeomFromText('POINT(0 0)'), 0);
CREATE TABLE parts (id INT, d DATE, PRIMARY KEY (id, d)) PARTITION BY RANGE (YEAR(d))
  (PARTITION p0 VALUES LESS THAN (2020), PARTITION p1 VALUES LESS THAN MAXVALUE);
INSERT INTO parts VALUES (1, '2019-01-01'), (2, '2024-05-06');
CREATE TABLE hist (id INT PRIMARY KEY, v INT) WITH SYSTEM VERSIONING;
INSERT INTO hist VALUES (1, 1); UPDATE hist SET v = 2;
CREATE TABLE child (id INT PRIMARY KEY, item INT,
  FOREIGN KEY (item) REFERENCES items(id) ON DELETE CASCADE);
CREATE TABLE audit (x INT) ENGINE=Aria;
CREATE TRIGGER trg AFTER INSERT ON child FOR EACH ROW INSERT INTO audit VALUES (NEW.id);
INSERT INTO child VALUES (1, 1), (2, 2);
CREATE FUNCTION twice(x INT) RETURNS INT DETERMINISTIC RETURN x * 2;
DELIMITER //
CREATE PROCEDURE fill(IN k INT) BEGIN
  INSERT INTO audit VALUES (k);
  SELECT 'é' INTO @x;
END//
DELIMITER ;
CREATE EVENT ev ON SCHEDULE EVERY 1 DAY DISABLE DO INSERT INTO audit VALUES (0);
CREATE DEFINER = root@localhost SQL SECURITY DEFINER VIEW v AS SELECT id, twice(id) AS d FROM items;
CREATE SQL SECURITY INVOKER VIEW v2 AS SELECT name FROM items WHERE name LIKE 'a%';
"#;

/// Every object of database `db` as the server shows it (`SHOW CREATE`),
/// with each table's checksum and a versioned table's whole history, the
/// database's own name written `DB`.
fn mariadb_objects(maria: &MariaDb, db: &str) -> String {
    let q = |sql: String| maria.sql(&sql).replace(&format!("`{db}`"), "`DB`");
    let names =
        |sql: String| -> Vec<String> { maria.sql(&sql).lines().map(str::to_owned).collect() };
    let database = q(format!("SHOW CREATE DATABASE `{db}`"));
    let mut out = database.split('\t').nth(1).unwrap_or_default().to_owned();
    for t in names(format!(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = '{db}' ORDER BY 1"
    )) {
        out += &q(format!("SHOW CREATE TABLE `{db}`.`{t}`"));
    }
    for t in names(format!(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = '{db}' \
         AND table_type IN ('BASE TABLE', 'SYSTEM VERSIONED') ORDER BY 1"
    )) {
        let sum = maria.sql(&format!("CHECKSUM TABLE `{db}`.`{t}` EXTENDED"));
        let _ = writeln!(
            out,
            "{t} {}",
            sum.split_whitespace().nth(1).unwrap_or("none")
        );
    }
    out += &maria.sql(&format!(
        "SELECT id, v, row_start, row_end FROM `{db}`.hist FOR SYSTEM_TIME ALL ORDER BY row_start"
    ));
    for r in names(format!(
        "SELECT CONCAT(routine_type, ' `', routine_name, '`') FROM information_schema.routines \
         WHERE routine_schema = '{db}' ORDER BY 1"
    )) {
        out += &q(format!("USE `{db}`; SHOW CREATE {r}"));
    }
    for t in names(format!(
        "SELECT trigger_name FROM information_schema.triggers WHERE trigger_schema = '{db}' ORDER BY 1"
    )) {
        // Without its creation time, which a load sets anew.
        let shown = q(format!("USE `{db}`; SHOW CREATE TRIGGER `{t}`"));
        out += &shown.split('\t').take(6).collect::<Vec<_>>().join("\t");
    }
    for ev in names(format!(
        "SELECT event_name FROM information_schema.events WHERE event_schema = '{db}' ORDER BY 1"
    )) {
        out += &q(format!("USE `{db}`; SHOW CREATE EVENT `{ev}`"));
    }
    out
}

/// The kitchen sink drills with every table's exact count, and a restore
/// into another database is the same database: every object's definition,
/// every table's checksum, the versioned table's history; its sequence
/// carries on at or past the source's next value (a dump records the next
/// value not cached, as a server restart does).
#[test]
fn a_mariadb_kitchen_sink_drills_and_restores_as_it_was() {
    let e = Env::new();
    let maria = MariaDb::start();
    let script = e.p().join("ks.sql");
    fs::write(&script, MARIADB_KITCHEN_SINK).unwrap();
    maria.load(&script);
    // Signed, through the server's root: definers are kept as they were.
    let options = e.p().join("root.cnf");
    fs::write(
        &options,
        format!("[client]\nuser=root\nsocket={}\n", maria.socket.display()),
    )
    .unwrap();
    chmod(&options, 0o600);
    let cfg = e.signed_config(&format!(
        "[[source]]\ntype = \"mysql\"\nname = \"main\"\ndatabases = [\"ks\"]\noptions_file = \"{}\"\n",
        options.display()
    ));
    let reports = e.drilled(&cfg);
    assert_eq!(
        tables(&reports),
        [
            "mysql main ks.audit 2 2 ok",
            "mysql main ks.child 2 2 ok",
            "mysql main ks.hist 2 2 ok",
            "mysql main ks.items 3 3 ok",
            "mysql main ks.parts 2 2 ok",
        ]
    );
    e.load_into(&cfg, "main", "ks_copy");
    let source = mariadb_objects(&maria, "ks");
    assert!(source.contains("nextval(`DB`.`seq`)"), "{source}");
    assert_eq!(mariadb_objects(&maria, "ks_copy"), source);
    let next = |db: &str| -> u64 {
        maria
            .sql(&format!("SELECT NEXTVAL(`{db}`.seq)"))
            .trim()
            .parse()
            .unwrap()
    };
    assert!(next("ks_copy") >= next("ks"));
    // The copy draws from its own sequence, not the source's.
    maria.sql("INSERT INTO ks_copy.items (name, pt) VALUES ('new', POINT(0, 0))");
    assert_eq!(maria.sql("SELECT COUNT(*) FROM ks.items").trim(), "3");
}

/// A PostgreSQL database with every kind of object people keep: a comment
/// and a setting on the database, an extension, a schema owned by another
/// role, enum, domain and range types, a sequence drawn by a default, BYTEA
/// with zero bytes, JSONB, arrays, a generated column, a partitioned table,
/// row-level security with a policy to a named role and FORCE, a trigger
/// function, a view, a materialized view, an index, grants, a large object.
const POSTGRES_KITCHEN_SINK: &str = r#"
COMMENT ON DATABASE pks IS 'kitchen sink';
ALTER DATABASE pks SET work_mem = '8MB';
CREATE EXTENSION pgcrypto;
CREATE SCHEMA app AUTHORIZATION ks_owner;
CREATE TYPE app.mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN app.posint AS integer CHECK (VALUE > 0);
CREATE TYPE app.floatrange AS RANGE (subtype = float8);
CREATE SEQUENCE app.counter START 1000;
CREATE TABLE app.items (
  id serial PRIMARY KEY,
  name text COLLATE "C" NOT NULL,
  mood app.mood DEFAULT 'ok',
  qty app.posint,
  span app.floatrange,
  data bytea,
  doc jsonb,
  tags text[],
  total numeric(10,2),
  doubled numeric GENERATED ALWAYS AS (total * 2) STORED,
  n bigint DEFAULT nextval('app.counter'),
  created timestamptz DEFAULT '2026-01-01 00:00:00+00'
);
ALTER TABLE app.items OWNER TO ks_owner;
INSERT INTO app.items (name, mood, qty, span, data, doc, tags, total) VALUES
 ('a', 'happy', 1, '[1.5,2.5)', '\x00ff00'::bytea, '{"k": [1, 2]}', '{x,y}', 1.5),
 ('b''q', 'sad', 2, NULL, '', '{"e": "é"}', '{}', NULL),
 (E'c\n\\.', 'ok', 3, 'empty', NULL, NULL, NULL, 0);
CREATE TABLE app.events (id int, at date NOT NULL) PARTITION BY RANGE (at);
CREATE TABLE app.events_2025 PARTITION OF app.events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE app.events_2026 PARTITION OF app.events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
INSERT INTO app.events VALUES (1, '2025-03-01'), (2, '2026-03-01'), (3, '2026-04-01');
CREATE TABLE app.notes (id int, owner text DEFAULT current_user);
INSERT INTO app.notes(id) SELECT g FROM generate_series(1, 20) g;
ALTER TABLE app.notes ENABLE ROW LEVEL SECURITY;
ALTER TABLE app.notes FORCE ROW LEVEL SECURITY;
CREATE POLICY mine ON app.notes TO ks_reader USING (owner = current_user);
CREATE TABLE app.audit (at timestamptz DEFAULT '2026-01-01', what text);
CREATE FUNCTION app.log_item() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO app.audit(what) VALUES ('item ' || NEW.id); RETURN NEW; END $$;
CREATE TRIGGER items_log AFTER INSERT ON app.items FOR EACH ROW EXECUTE FUNCTION app.log_item();
INSERT INTO app.items (name) VALUES ('d');
CREATE VIEW app.happy AS SELECT id, name FROM app.items WHERE mood = 'happy';
CREATE MATERIALIZED VIEW app.counts AS SELECT mood, count(*) FROM app.items GROUP BY mood;
CREATE INDEX items_doc ON app.items USING gin (doc);
GRANT USAGE ON SCHEMA app TO ks_reader;
GRANT SELECT ON app.items, app.happy TO ks_reader;
COMMENT ON TABLE app.items IS 'the items';
SELECT lo_from_bytea(0, '\x00010203'::bytea);
CREATE TABLE public.plain (id int PRIMARY KEY, digest bytea DEFAULT digest('x', 'sha256'));
INSERT INTO public.plain (id) VALUES (1), (2);
"#;

/// Database `db` as `pg_dump --schema-only` shows it (owners and grants
/// included), each table's count and ordered digest, the large objects,
/// the materialized view's rows, and the database's comment and settings;
/// its own name written `DB`.
fn postgres_objects(pg: &Postgres, db: &str) -> String {
    let mut out = pg.schema(db).replace(db, "DB");
    for t in pg
        .sql(
            db,
            "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables \
             WHERE schemaname IN ('app', 'public') ORDER BY 1",
        )
        .lines()
    {
        out += &pg.sql(
            db,
            &format!(
                "SELECT '{t}', count(*), md5(coalesce(string_agg(x::text, ',' ORDER BY x::text), '')) FROM {t} x"
            ),
        );
    }
    out += &pg.sql(
        db,
        "SELECT md5(string_agg(lo_get(oid)::text, ',' ORDER BY oid)) FROM pg_largeobject_metadata",
    );
    out += &pg.sql(db, "SELECT * FROM app.counts ORDER BY 1");
    out += &pg.sql(
        "postgres",
        &format!(
            "SELECT shobj_description(oid, 'pg_database'), \
             (SELECT setconfig FROM pg_db_role_setting WHERE setdatabase = d.oid) \
             FROM pg_database d WHERE datname = '{db}'"
        ),
    );
    out
}

/// The kitchen sink drills with every table's exact count (row-level
/// security bypassed), and a restore into another database is the same
/// database: the schema dump (owners, grants, policies) compares equal, so
/// do every table's rows, the large object, and the database's comment and
/// settings.
#[test]
fn a_postgres_kitchen_sink_drills_and_restores_as_it_was() {
    let e = Env::new();
    let pg = Postgres::start();
    pg.sql("postgres", "CREATE ROLE ks_owner NOLOGIN");
    pg.sql("postgres", "CREATE ROLE ks_reader NOLOGIN");
    pg.sql("postgres", "CREATE DATABASE pks");
    pg.sql("pks", POSTGRES_KITCHEN_SINK);
    // Loads through the superuser, which only a signed backup may.
    let passfile = pg.passfile(e.p());
    let cfg = e.signed_config(&format!(
        "[[source]]\ntype = \"postgres\"\nname = \"pg\"\ndatabases = [\"pks\"]\n\
         passfile = \"{}\"\nhost = \"127.0.0.1\"\nport = {}\nuser = \"postgres\"\n",
        passfile.display(),
        pg.port
    ));
    let reports = e.drilled(&cfg);
    assert_eq!(
        tables(&reports),
        [
            "postgres pg pks.app.audit 1 1 ok",
            "postgres pg pks.app.events_2025 1 1 ok",
            "postgres pg pks.app.events_2026 2 2 ok",
            "postgres pg pks.app.items 4 4 ok",
            "postgres pg pks.app.notes 20 20 ok",
            "postgres pg pks.public.plain 2 2 ok",
        ]
    );
    e.load_into(&cfg, "pg", "pks_copy");
    // A restore refreshes materialized views; so does the source here.
    pg.sql("pks", "REFRESH MATERIALIZED VIEW app.counts");
    let source = postgres_objects(&pg, "pks");
    assert!(source.contains("OWNER TO ks_owner"), "{source}");
    assert!(source.contains("kitchen sink|{work_mem=8MB}"), "{source}");
    assert_eq!(postgres_objects(&pg, "pks_copy"), source);
}
