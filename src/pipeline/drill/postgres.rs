//! A throwaway PostgreSQL server for `verify --restore-test`, fenced like
//! [`crate::pipeline::drill::mariadb::ScratchMariaDb`]: `initdb` in a private temporary
//! directory (mode 0700, owned by the server's user), an unprivileged user
//! when coffer runs as root, a Unix socket in that directory and no TCP
//! (`listen_addresses = ''`), then stopped and removed with its data.
//!
//! A dump may be forged, so it is loaded by `pg_restore` (which runs no
//! client commands, unlike psql with a script) as a role that is not a
//! superuser: no `COPY … PROGRAM`, no server files, no untrusted language
//! or C function. Database names are coffer's own, never the dump's.

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::pipeline::drill::mariadb::{last_line, reachable, run_as, subdir, RunAs};
use crate::pipeline::plumbing::client::LoadClient;

/// The role that loads and counts; the bootstrap superuser only sets up.
const LOADER: &str = "coffer";
const SUPERUSER: &str = "postgres";

pub struct ScratchPostgres {
    dir: tempfile::TempDir,
    base: PathBuf,
    bin: PathBuf,
    child: Child,
    databases: u32,
}

/// The server's programs: the directory holding `initdb` (not on PATH on
/// Debian), its newest version; its own pg_restore and psql alongside.
fn pg_bin() -> Result<PathBuf, String> {
    let complete = |dir: &std::path::Path| {
        ["initdb", "postgres", "pg_restore", "psql"]
            .iter()
            .all(|p| dir.join(p).is_file())
    };
    // Resolved: /usr/local/bin may hold links to one version's programs.
    if let Some(initdb) = crate::source::find_program("initdb").and_then(|p| p.canonicalize().ok())
    {
        if let Some(dir) = initdb.parent().filter(|d| complete(d)) {
            return Ok(dir.to_owned());
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| {
                let e = e.ok()?;
                let v = e.file_name().to_str()?.parse().ok()?;
                let bin = e.path().join("bin");
                complete(&bin).then_some((v, bin))
            })
            .collect()
        })
        .unwrap_or_default();
    versions.sort();
    versions.pop().map(|(_, b)| b).ok_or_else(|| {
        "--restore-test of a PostgreSQL dump needs the PostgreSQL server \
         (Debian: apt install postgresql)"
            .to_owned()
    })
}

impl ScratchPostgres {
    pub fn start() -> Result<Self, String> {
        let bin = pg_bin()?;
        let who = run_as()?;
        let dir = tempfile::Builder::new()
            .prefix("coffer-restore-test-pg-")
            .permissions(std::fs::Permissions::from_mode(0o700))
            .tempdir()
            .map_err(|e| format!("scratch directory: {e}"))?;
        let base = dir
            .path()
            .canonicalize()
            .map_err(|e| format!("scratch directory: {e}"))?;
        if let Some(w) = &who {
            reachable(&base, w)?;
        }
        let data = subdir(&base, "data", who.as_ref(), 0o700)?;
        // The server's log is root's, made before the directory is handed
        // over: once it is, a name there may be a link its user planted.
        let log = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(base.join("postgres.log"))
            .map_err(|e| format!("scratch directory: {e}"))?;
        if let Some(w) = &who {
            std::os::unix::fs::chown(&base, Some(w.uid), Some(w.gid))
                .map_err(|e| format!("scratch directory: {e}"))?;
        }
        let as_user = |c: &mut Command, who: Option<&RunAs>| {
            c.current_dir(&base);
            c.env_remove("PGPASSWORD").env_remove("PGPASSFILE");
            if let Some(w) = who {
                c.uid(w.uid).gid(w.gid);
            }
        };
        let mut initdb = Command::new(bin.join("initdb"));
        initdb.arg("-D").arg(&data).args([
            "-U",
            SUPERUSER,
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ]);
        as_user(&mut initdb, who.as_ref());
        let out = initdb
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("initdb: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let mut server = Command::new(bin.join("postgres"));
        server.arg("-D").arg(&data).arg("-k").arg(&base).args([
            "-c",
            "listen_addresses=",
            "-c",
            "unix_socket_permissions=0700",
            "-c",
            "fsync=off",
            "-c",
            "full_page_writes=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "max_connections=10",
            "-c",
            "jit=off",
            // A drill needs no durability and no replica: no WAL beyond
            // what recovery of this very server would need, no checkpoint
            // in the middle of a load, room to build indexes.
            "-c",
            "wal_level=minimal",
            "-c",
            "max_wal_senders=0",
            "-c",
            "max_wal_size=4GB",
            "-c",
            "checkpoint_timeout=1h",
            "-c",
            "maintenance_work_mem=256MB",
        ]);
        as_user(&mut server, who.as_ref());
        let child = server
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("postgres: {e}"))?;
        let db = ScratchPostgres {
            dir,
            base,
            bin,
            child,
            databases: 0,
        };
        db.ready()
    }

    /// Waits for the server, then adds the loading role.
    fn ready(self) -> Result<Self, String> {
        let started = Instant::now();
        let mut last = String::new();
        while started.elapsed() < Duration::from_secs(60) {
            if crate::cancel::is_cancelled() {
                return Err(crate::cancel::cancelled_error().to_string());
            }
            if let Err(e) = self.query(SUPERUSER, "postgres", "SELECT 1") {
                last = e;
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            self.query(
                SUPERUSER,
                "postgres",
                // BYPASSRLS: the loader owns what it loads, and a table
                // that forces row-level security on its owner would
                // otherwise count only the rows its policies let through.
                &format!(
                    "CREATE ROLE {LOADER} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE BYPASSRLS"
                ),
            )
            .map_err(|e| format!("setting up the scratch server: {e}"))?;
            return Ok(self);
        }
        Err(format!(
            "the scratch PostgreSQL server did not start: {last} ({})",
            last_line(&self.base.join("postgres.log"))
        ))
    }

    fn connect(&self, program: &str, user: &str, database: &str) -> Command {
        let mut c = Command::new(self.bin.join(program));
        c.env_remove("PGPASSWORD")
            .env_remove("PGPASSFILE")
            .env_remove("PGSERVICE")
            .env("PGSYSCONFDIR", self.dir.path())
            .arg(format!("--host={}", self.base.display()))
            .arg(format!("--username={user}"))
            .arg(format!("--dbname={database}"))
            .arg("--no-password");
        c
    }

    fn query(&self, user: &str, database: &str, sql: &str) -> Result<Vec<u8>, String> {
        let out = self
            .connect("psql", user, database)
            .args(crate::source::PSQL_QUIET)
            .arg("-c")
            .arg(sql)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("psql: {e}"))?;
        if out.status.success() {
            Ok(out.stdout)
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
        }
    }

    /// Creates a fresh database, owned by the loading role, and starts
    /// `pg_restore` into it; write the custom-format dump to its stdin.
    /// Returns the database's name (coffer's own) and the loader.
    pub fn loader(&mut self) -> Result<(String, LoadClient), String> {
        self.databases += 1;
        let name = format!("coffer_restore_{}", self.databases);
        self.query(
            SUPERUSER,
            "postgres",
            &format!("CREATE DATABASE {name} OWNER {LOADER}"),
        )?;
        let mut restore = self.connect("pg_restore", LOADER, &name);
        restore.args(["--no-owner", "--no-acl", "--exit-on-error"]);
        let child = LoadClient::spawn(restore).map_err(|e| format!("pg_restore: {e}"))?;
        Ok((name, child))
    }

    /// Makes the roles a dump's row-level security policies name (NOLOGIN,
    /// no privilege), where they do not exist yet. The names are the
    /// backup's: quoted as identifiers and literals, never spliced as SQL.
    pub fn create_roles(&self, roles: &[String]) -> Result<(), String> {
        for role in roles.iter().take(1000) {
            if role.starts_with("pg_") || role.contains('\0') {
                continue;
            }
            let literal = role.replace('\'', "''");
            let exists = self.query(
                SUPERUSER,
                "postgres",
                &format!("SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = '{literal}'"),
            )?;
            if exists.contains(&b'1') {
                continue;
            }
            let ident = role.replace('"', "\"\"");
            self.query(
                SUPERUSER,
                "postgres",
                &format!("CREATE ROLE \"{ident}\" NOLOGIN"),
            )?;
        }
        Ok(())
    }

    /// Exact row counts of every table in `database`, as `schema.table`.
    pub fn counts(&self, database: &str) -> Result<Vec<(String, u64)>, String> {
        let out = self.query(LOADER, database, crate::source::COUNT_QUERY)?;
        crate::source::parse_counts(&out)
    }
}

impl Drop for ScratchPostgres {
    fn drop(&mut self) {
        // SIGINT: PostgreSQL's fast shutdown.
        crate::pipeline::drill::mariadb::stop_server(&mut self.child, rustix::process::Signal::Int);
    }
}
