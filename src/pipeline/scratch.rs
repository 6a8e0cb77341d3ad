//! A throwaway MariaDB server for `verify --restore-test`: started by coffer in
//! a private temporary directory (mode 0700) on a socket only, never on the
//! network, used to load a dump and count its rows, then stopped and removed.
//! It needs no privilege on any production server.

use std::io::{self, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::source::find_program;

pub struct ScratchMariaDb {
    dir: tempfile::TempDir,
    socket: PathBuf,
    child: Child,
}

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

impl ScratchMariaDb {
    pub fn start() -> Result<Self, String> {
        let install = program("mariadb-install-db")?;
        let server = program("mariadbd")?;
        program("mariadb")?;
        let dir = tempfile::Builder::new()
            .prefix("coffer-restore-test-")
            .tempdir()
            .map_err(|e| format!("scratch directory: {e}"))?;
        let data = dir.path().join("data");
        // A private tmpdir: servers sharing /tmp have been seen losing each
        // other's internal temporary tables.
        let tmp = dir.path().join("tmp");
        std::fs::create_dir(&tmp).map_err(|e| format!("scratch directory: {e}"))?;
        let tmpdir = format!("--tmpdir={}", tmp.display());
        let user = if is_root() {
            vec!["--user=root".to_owned()]
        } else {
            Vec::new()
        };
        let out = Command::new(install)
            .args([
                "--no-defaults",
                &format!("--datadir={}", data.display()),
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                &tmpdir,
            ])
            .args(&user)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("mariadb-install-db: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mariadb-install-db failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let socket = dir.path().join("mysqld.sock");
        let child = Command::new(server)
            .args([
                "--no-defaults",
                &format!("--datadir={}", data.display()),
                &format!("--socket={}", socket.display()),
                "--skip-networking",
                &tmpdir,
                &format!("--log-error={}", dir.path().join("error.log").display()),
                &format!("--pid-file={}", dir.path().join("mysqld.pid").display()),
                "--skip-log-bin",
                "--innodb-buffer-pool-size=64M",
                "--innodb-flush-log-at-trx-commit=0",
            ])
            .args(&user)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("mariadbd: {e}"))?;
        let db = ScratchMariaDb { dir, socket, child };
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(60) {
            if db.query("SELECT 1").is_ok() {
                return Ok(db);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!(
            "the scratch MariaDB server did not start: {}",
            std::fs::read_to_string(db.dir.path().join("error.log"))
                .unwrap_or_default()
                .lines()
                .last()
                .unwrap_or("")
        ))
    }

    fn client(&self) -> Command {
        let mut c = Command::new("mariadb");
        c.args([
            "--no-defaults",
            &format!("--socket={}", self.socket.display()),
            "-uroot",
            "--batch",
            "--skip-column-names",
        ]);
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

    /// Starts loading a dump; write it to the returned child's stdin.
    pub fn loader(&self) -> io::Result<Child> {
        self.client()
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
    }

    /// Waits for a loader; its error output if it failed.
    pub fn finish_loader(mut child: Child) -> Result<(), String> {
        drop(child.stdin.take());
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        match child.wait() {
            Ok(s) if s.success() => Ok(()),
            Ok(_) => Err(err
                .trim()
                .lines()
                .last()
                .unwrap_or("the load failed")
                .to_owned()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Exact row count of `db.table`.
    pub fn count(&self, qualified: &str) -> Result<u64, String> {
        let (db, table) = qualified
            .split_once('.')
            .ok_or_else(|| format!("bad table name {qualified}"))?;
        let q = format!(
            "SELECT COUNT(*) FROM `{}`.`{}`",
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
        if let Some(pid) = i32::try_from(self.child.id())
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::Term);
        }
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
