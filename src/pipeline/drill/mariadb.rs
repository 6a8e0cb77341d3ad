//! A throwaway MariaDB server for `verify --restore-test`: started by coffer in
//! a private temporary directory (mode 0700) on a socket only, never on the
//! network, used to load a dump and count its rows, then stopped and removed.
//! It needs no privilege on any production server.
//!
//! The dump it loads may be forged, so the server is fenced in: it runs as an
//! unprivileged user when coffer runs as root, its file import and export
//! are confined to an empty directory it cannot write, it loads no plugins,
//! and its client runs no client commands and sends no local files.

use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::pipeline::plumbing::client::LoadClient;
use crate::pipeline::plumbing::sqlclient::{mysql_client, MysqlClient};
use crate::source::find_program;

/// The account the scratch server runs as when coffer runs as root, unless
/// `COFFER_SCRATCH_USER` names another: the package's own `coffer-drill`,
/// which nothing else runs as, else `nobody` (shared with other daemons,
/// which could then reach the scratch server's files).
const DEDICATED_USER: &str = "coffer-drill";
const FALLBACK_USER: &str = "nobody";

pub struct ScratchMariaDb {
    dir: tempfile::TempDir,
    socket: PathBuf,
    child: Child,
    client: &'static MysqlClient,
    /// Who coffer connects as: root to set the server up, then [`LOADER`].
    user: &'static str,
}

/// The one account left once the server is set up.
const LOADER: &str = "coffer";

fn program(name: &str) -> Result<PathBuf, String> {
    find_program(name)
        .or_else(|| {
            let p = PathBuf::from("/usr/sbin").join(name);
            p.is_file().then_some(p)
        })
        .ok_or_else(|| format!("--restore-test needs {name} (Debian: apt install mariadb-server)"))
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Who the server runs as: an unprivileged account when coffer is root, so
/// that a hostile dump that gets past every other fence still acts as nobody
/// in particular; otherwise coffer's own user.
pub(super) struct RunAs {
    pub(super) name: String,
    pub(super) uid: u32,
    pub(super) gid: u32,
}

pub(super) fn run_as() -> Result<Option<RunAs>, String> {
    if !is_root() {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd").map_err(|e| format!("/etc/passwd: {e}"))?;
    let lookup = |name: &str| {
        passwd.lines().find_map(|l| {
            let mut f = l.split(':');
            (f.next() == Some(name)).then_some(())?;
            let uid = f.nth(1)?.parse().ok()?;
            let gid = f.next()?.parse().ok()?;
            Some((uid, gid))
        })
    };
    let name = std::env::var("COFFER_SCRATCH_USER").unwrap_or_else(|_| {
        if lookup(DEDICATED_USER).is_some() {
            DEDICATED_USER
        } else {
            FALLBACK_USER
        }
        .to_owned()
    });
    let (uid, gid) = lookup(&name).ok_or_else(|| {
        format!(
            "no user {name:?} in /etc/passwd to run the scratch server as; set COFFER_SCRATCH_USER"
        )
    })?;
    if uid == 0 {
        return Err(format!(
            "the scratch server must not run as root, and {name:?} is uid 0; set COFFER_SCRATCH_USER"
        ));
    }
    Ok(Some(RunAs { name, uid, gid }))
}

/// The server must be able to reach its directory through every parent.
pub(super) fn reachable(dir: &Path, who: &RunAs) -> Result<(), String> {
    for parent in dir.ancestors().skip(1) {
        let m = std::fs::metadata(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        let mode = m.mode();
        let ok = mode & 0o001 != 0
            || (m.uid() == who.uid && mode & 0o100 != 0)
            || (m.gid() == who.gid && mode & 0o010 != 0);
        if !ok {
            return Err(format!(
                "the scratch server runs as {:?}, which cannot enter {}: set TMPDIR to a \
                 directory it can reach (such as /tmp), or COFFER_SCRATCH_USER to another user",
                who.name,
                parent.display()
            ));
        }
    }
    Ok(())
}

/// A directory inside the scratch directory, the server's own. Made, given
/// away and chmodded by name, so only while the scratch directory is still
/// root's alone: after it is handed to the server's user, a name in it may
/// be a link that user planted.
pub(super) fn subdir(
    dir: &Path,
    name: &str,
    who: Option<&RunAs>,
    mode: u32,
) -> Result<PathBuf, String> {
    let p = dir.join(name);
    std::fs::create_dir(&p).map_err(|e| format!("scratch directory: {e}"))?;
    if let Some(w) = who {
        std::os::unix::fs::chown(&p, Some(w.uid), Some(w.gid))
            .map_err(|e| format!("scratch directory: {e}"))?;
    }
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("scratch directory: {e}"))?;
    Ok(p)
}

/// The scratch server's buffer pool: an eighth of the machine's memory,
/// between 64 MiB and 2 GiB (a drill shares the machine with its server).
fn buffer_pool_mib() -> u64 {
    let total_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .unwrap_or(0);
    (total_kib / 1024 / 8).clamp(64, 2048)
}

/// The last line of a log the server wrote in its own directory, read as
/// any file its user could have replaced: not through a link, regular
/// only, at most 1 MiB.
pub(super) fn last_line(log: &Path) -> String {
    crate::fsutil::read_regular(log, 1 << 20)
        .map(|b| {
            String::from_utf8_lossy(&b)
                .lines()
                .last()
                .unwrap_or("")
                .to_owned()
        })
        .unwrap_or_default()
}

impl ScratchMariaDb {
    pub fn start() -> Result<Self, String> {
        let install = program("mariadb-install-db")?;
        let server = program("mariadbd")?;
        let client = mysql_client().ok_or_else(|| {
            "--restore-test needs the mariadb client (Debian: apt install mariadb-client)"
                .to_owned()
        })?;
        let who = run_as()?;
        // Mode 0700 (tempfile's default follows the umask: 0755 would let
        // any local user reach the socket, where root has no password), and
        // owned by the server's user: no one else gets in.
        let dir = tempfile::Builder::new()
            .prefix("coffer-restore-test-")
            .permissions(std::fs::Permissions::from_mode(0o700))
            .tempdir()
            .map_err(|e| format!("scratch directory: {e}"))?;
        // Resolved, so that the check below walks the directories the
        // server really passes through when TMPDIR holds a symlink.
        let base = dir
            .path()
            .canonicalize()
            .map_err(|e| format!("scratch directory: {e}"))?;
        if let Some(w) = &who {
            reachable(&base, w)?;
        }
        let data = base.join("data");
        // A private tmpdir: servers sharing /tmp have been seen losing each
        // other's internal temporary tables.
        let tmp = subdir(&base, "tmp", who.as_ref(), 0o700)?;
        // SELECT … INTO OUTFILE, LOAD DATA INFILE and LOAD_FILE() are
        // confined to an empty directory the server may not write: a dump
        // gets no file in or out, and a restore test never needs one.
        let files = subdir(&base, "files", who.as_ref(), 0o500)?;
        // No plugin to INSTALL: the system's directory holds engines such
        // as FEDERATED and CONNECT, which reach other servers and files.
        let plugins = subdir(&base, "plugins", who.as_ref(), 0o500)?;
        // Only now is the directory the server's: every name root made in
        // it was made while no one else could plant a link there.
        if let Some(w) = &who {
            std::os::unix::fs::chown(&base, Some(w.uid), Some(w.gid))
                .map_err(|e| format!("scratch directory: {e}"))?;
        }
        let tmpdir = format!("--tmpdir={}", tmp.display());
        let as_user = |c: &mut Command| {
            c.current_dir(&base);
            if let Some(w) = &who {
                c.uid(w.uid).gid(w.gid);
            }
        };
        let mut install = Command::new(install);
        install.args([
            "--no-defaults",
            &format!("--datadir={}", data.display()),
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
            &tmpdir,
        ]);
        as_user(&mut install);
        let out = install
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("mariadb-install-db: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mariadb-install-db failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let socket = base.join("mysqld.sock");
        let mut server = Command::new(server);
        server.args([
            "--no-defaults",
            &format!("--datadir={}", data.display()),
            &format!("--socket={}", socket.display()),
            "--skip-networking",
            &tmpdir,
            &format!("--secure-file-priv={}", files.display()),
            &format!("--plugin-dir={}", plugins.display()),
            "--local-infile=0",
            &format!("--log-error={}", base.join("error.log").display()),
            &format!("--pid-file={}", base.join("mysqld.pid").display()),
            // DATA DIRECTORY and INDEX DIRECTORY are ignored: a table's files
            // stay in the data directory.
            "--skip-symbolic-links",
            "--skip-log-bin",
            // A drill needs no durability: no doublewrite buffer, no log
            // flush per commit, and a buffer pool that holds the load.
            &format!("--innodb-buffer-pool-size={}M", buffer_pool_mib()),
            "--innodb-flush-log-at-trx-commit=0",
            "--skip-innodb-doublewrite",
            "--innodb-log-file-size=256M",
        ]);
        as_user(&mut server);
        let child = server
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("mariadbd: {e}"))?;
        ScratchMariaDb {
            dir,
            socket,
            child,
            client,
            user: "root",
        }
        .ready()
    }

    /// Waits for the server to answer, then locks it down.
    fn ready(mut self) -> Result<Self, String> {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(60) {
            if crate::cancel::is_cancelled() {
                return Err(crate::cancel::cancelled_error().to_string());
            }
            if self.query("SELECT 1").is_ok() {
                self.lock_down()?;
                return Ok(self);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!(
            "the scratch MariaDB server did not start: {}",
            last_line(&self.dir.path().join("error.log"))
        ))
    }

    /// Leaves one account, [`LOADER`], with every privilege a dump needs on
    /// its own databases and none over the server: no SUPER (SET GLOBAL,
    /// which can point the general or slow log at any path), no FILE, no
    /// replication (CHANGE MASTER connects out), no SHUTDOWN, no GRANT. The
    /// root accounts go: a dump may name any DEFINER (it needs to, to load
    /// its views and triggers), and a routine defined by root would run as
    /// root.
    fn lock_down(&mut self) -> Result<(), String> {
        let who = format!("'{LOADER}'@'localhost'");
        self.query(&format!(
            "CREATE USER {who}; \
             GRANT SELECT, INSERT, UPDATE, DELETE, CREATE, DROP, REFERENCES, INDEX, ALTER, \
             SHOW DATABASES, CREATE TEMPORARY TABLES, LOCK TABLES, EXECUTE, CREATE VIEW, \
             SHOW VIEW, CREATE ROUTINE, ALTER ROUTINE, EVENT, TRIGGER ON *.* TO {who}"
        ))
        .map_err(|e| format!("setting up the scratch server: {e}"))?;
        // Newer servers split these out of SUPER; an older one that lacks
        // them fails only those dumps that need them.
        for optional in ["SET USER", "DELETE HISTORY"] {
            let _ = self.query(&format!("GRANT {optional} ON *.* TO {who}"));
        }
        self.query("DELETE FROM mysql.global_priv WHERE User = 'root'; FLUSH PRIVILEGES")
            .map_err(|e| format!("setting up the scratch server: {e}"))?;
        self.user = LOADER;
        self.query("SELECT 1")
            .map_err(|e| format!("setting up the scratch server: {e}"))?;
        Ok(())
    }

    /// Queries name tables from the (untrusted) manifest, so they get the
    /// same fences as the load itself.
    fn client(&self) -> Command {
        let mut c = self.client.command();
        c.args([
            "--no-defaults",
            &format!("--socket={}", self.socket.display()),
            &format!("--user={}", self.user),
            "--batch",
            "--skip-column-names",
        ])
        .args(self.client.dump_loader_args());
        c
    }

    pub fn query(&self, sql: &str) -> Result<String, String> {
        let out = self
            .client()
            .arg("-e")
            .arg(sql)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
        }
    }

    /// Starts loading a dump; write it to the returned client's stdin.
    pub fn loader(&self) -> io::Result<LoadClient> {
        LoadClient::spawn(self.client())
    }

    /// Exact row count of `db.table`.
    pub fn count(&self, qualified: &str) -> Result<u64, String> {
        let (db, table) = qualified
            .split_once('.')
            .ok_or_else(|| format!("bad table name {qualified}"))?;
        // A system-versioned table's dump carries its history (every row
        // version), so what it holds is counted with the history too.
        let literal = |s: &str| format!("'{}'", s.replace('\\', "\\\\").replace('\'', "''"));
        let kind = self.query(&format!(
            "SELECT TABLE_TYPE FROM information_schema.TABLES WHERE TABLE_SCHEMA = {} AND TABLE_NAME = {}",
            literal(db),
            literal(table)
        ))?;
        let history = if kind == "SYSTEM VERSIONED" {
            " FOR SYSTEM_TIME ALL"
        } else {
            ""
        };
        let q = format!(
            "SELECT COUNT(*) FROM `{}`.`{}`{history}",
            db.replace('`', "``"),
            table.replace('`', "``")
        );
        self.query(&q)?
            .parse()
            .map_err(|e| format!("{qualified}: {e}"))
    }
}

impl Drop for ScratchMariaDb {
    fn drop(&mut self) {
        stop_server(&mut self.child, rustix::process::Signal::Term);
    }
}

/// Asks a scratch server to shut down with `signal`, waits up to 20 s for
/// it, then kills it.
pub(crate) fn stop_server(child: &mut std::process::Child, signal: rustix::process::Signal) {
    if let Some(pid) = i32::try_from(child.id())
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process(pid, signal);
    }
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(20) {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}
