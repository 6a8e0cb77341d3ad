//! Private database servers for the integration tests: each test starts its
//! own `mariadbd` or PostgreSQL in a temporary directory on a random loopback
//! port, and stops it when dropped. Nothing depends on servers that happen to
//! be running on the machine.
#![allow(dead_code)]

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn need(program: &str) -> PathBuf {
    let sbin = Path::new("/usr/sbin").join(program);
    coffer::source::find_program(program)
        .or_else(|| sbin.is_file().then_some(sbin))
        .unwrap_or_else(|| {
            panic!(
                "{program} is not installed: run scripts/install-test-deps.sh (or scripts/test.sh)"
            )
        })
}

fn wait_until(what: &str, log: &Path, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        if ready() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "{what} did not start within 60 s; log:\n{}",
        fs::read_to_string(log).unwrap_or_default()
    );
}

fn run_ok(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stop(child: &mut Child) {
    if let Some(pid) = i32::try_from(child.id())
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::Term);
    }
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A private MariaDB server. `root` has no password over the socket; tests
/// create password users for coffer to connect with.
pub struct MariaDb {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub socket: PathBuf,
    child: Child,
}

impl MariaDb {
    pub fn start() -> Self {
        let install = need("mariadb-install-db");
        let server = need("mariadbd");
        need("mariadb");
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        // A private tmpdir: servers sharing /tmp have been seen losing each
        // other's internal temporary tables.
        let tmp = dir.path().join("tmp");
        fs::create_dir(&tmp).unwrap();
        let tmpdir = format!("--tmpdir={}", tmp.display());
        let mut cmd = Command::new(install);
        cmd.args([
            "--no-defaults",
            &format!("--datadir={}", data.display()),
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
            &tmpdir,
        ]);
        if is_root() {
            cmd.arg("--user=root");
        }
        run_ok(&mut cmd, "mariadb-install-db");
        let port = free_port();
        let socket = dir.path().join("mysqld.sock");
        let log = dir.path().join("error.log");
        let mut cmd = Command::new(server);
        cmd.args([
            "--no-defaults",
            &format!("--datadir={}", data.display()),
            &format!("--socket={}", socket.display()),
            &format!("--port={port}"),
            "--bind-address=127.0.0.1",
            &format!("--pid-file={}", dir.path().join("mysqld.pid").display()),
            &format!("--log-error={}", log.display()),
            "--skip-log-bin",
            "--skip-name-resolve",
            &tmpdir,
            "--innodb-buffer-pool-size=32M",
            "--innodb-log-file-size=16M",
            "--innodb-flush-log-at-trx-commit=2",
        ]);
        if is_root() {
            cmd.arg("--user=root");
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mariadbd");
        let db = MariaDb {
            dir,
            port,
            socket,
            child,
        };
        wait_until("mariadbd", &log, || {
            db.client()
                .arg("-e")
                .arg("SELECT 1")
                .output()
                .is_ok_and(|o| o.status.success())
        });
        db
    }

    fn client(&self) -> Command {
        let mut c = Command::new("mariadb");
        c.args([
            "--no-defaults",
            &format!("--socket={}", self.socket.display()),
            "-uroot",
            "--batch",
            "--skip-column-names",
            "--default-character-set=utf8mb4",
        ]);
        c
    }

    /// Runs SQL as root; returns the tab-separated output.
    pub fn sql(&self, sql: &str) -> String {
        run_ok(self.client().arg("-e").arg(sql), &format!("mariadb: {sql}"))
    }

    /// Loads an SQL script (a dump) as root.
    pub fn load(&self, script: &Path) {
        let f = fs::File::open(script).unwrap();
        run_ok(self.client().stdin(f), "loading a dump into mariadb");
    }

    /// A user with a password, and a `[client]` options file for it (mode 0600).
    pub fn user_with_options_file(&self, user: &str, password: &str, dir: &Path) -> PathBuf {
        self.sql(&format!(
            "CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY '{password}'; \
             GRANT SELECT, SHOW VIEW, TRIGGER, LOCK TABLES, EVENT, PROCESS, RELOAD ON *.* TO '{user}'@'127.0.0.1'; \
             GRANT SELECT ON mysql.proc TO '{user}'@'127.0.0.1';"
        ));
        let path = dir.join(format!("{user}.cnf"));
        fs::write(
            &path,
            format!(
                "[client]\nuser={user}\npassword={password}\nhost=127.0.0.1\nport={}\n",
                self.port
            ),
        )
        .unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        path
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// A private PostgreSQL cluster with password (SCRAM) authentication over TCP.
pub struct Postgres {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub password: String,
    bin: PathBuf,
    child: Child,
}

fn pg_bin() -> PathBuf {
    let mut versions: Vec<PathBuf> = fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path().join("bin")))
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    versions
        .pop()
        .filter(|b| b.join("initdb").is_file())
        .unwrap_or_else(|| {
            panic!("PostgreSQL server is not installed: run scripts/install-test-deps.sh")
        })
}

impl Postgres {
    pub fn start() -> Self {
        let bin = pg_bin();
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let password = "pg-test-secret".to_owned();
        let pwfile = dir.path().join("pw");
        fs::write(&pwfile, &password).unwrap();
        // initdb refuses to run as root: run the server as the postgres user.
        if is_root() {
            run_ok(
                Command::new("chown")
                    .args(["-R", "postgres:"])
                    .arg(dir.path()),
                "chown",
            );
        }
        let as_owner = |program: &Path| {
            if is_root() {
                let mut c = Command::new("setpriv");
                c.args(["--reuid=postgres", "--regid=postgres", "--init-groups"])
                    .arg(program);
                c
            } else {
                Command::new(program)
            }
        };
        run_ok(
            as_owner(&bin.join("initdb"))
                .arg("-D")
                .arg(&data)
                .args([
                    "-U",
                    "postgres",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "-E",
                    "UTF8",
                    "--no-sync",
                ])
                .arg(format!("--pwfile={}", pwfile.display())),
            "initdb",
        );
        let port = free_port();
        let log = dir.path().join("postgres.log");
        let logf = fs::File::create(&log).unwrap();
        let child = as_owner(&bin.join("postgres"))
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-k"])
            .arg(dir.path())
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "full_page_writes=off",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(logf)
            .spawn()
            .expect("start postgres");
        let pg = Postgres {
            dir,
            port,
            password,
            bin,
            child,
        };
        wait_until("postgres", &log, || {
            Command::new(pg.bin.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &pg.port.to_string(), "-q"])
                .status()
                .is_ok_and(|s| s.success())
        });
        pg
    }

    /// A libpq passfile for the postgres user (mode 0600) in `dir`.
    pub fn passfile(&self, dir: &Path) -> PathBuf {
        let p = dir.join("pgpass");
        fs::write(
            &p,
            format!("127.0.0.1:{}:*:postgres:{}\n", self.port, self.password),
        )
        .unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
        p
    }

    fn client(&self, program: &str, db: &str) -> Command {
        let mut c = Command::new(self.bin.join(program));
        c.args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-U",
            "postgres",
            "-d",
            db,
        ])
        .env("PGPASSWORD", &self.password);
        c
    }

    /// Starts SQL in the background (a session that holds a lock, say);
    /// the caller waits for or kills it.
    pub fn sql_in_background(&self, db: &str, sql: &str) -> Child {
        self.client("psql", db)
            .args(["-X", "-q", "-c", sql])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("psql")
    }

    /// Runs SQL; returns unaligned, tuples-only output.
    pub fn sql(&self, db: &str, sql: &str) -> String {
        run_ok(
            self.client("psql", db).args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ]),
            &format!("psql: {sql}"),
        )
    }

    /// `pg_dump --schema-only --create` of `db`: every object's definition,
    /// owner and grants, without comments and the dump's random
    /// `\restrict` key.
    pub fn schema(&self, db: &str) -> String {
        let out = run_ok(
            self.client("pg_dump", db)
                .args(["--schema-only", "--create"]),
            "pg_dump --schema-only",
        );
        out.lines()
            .filter(|l| {
                !l.starts_with("--")
                    && !l.starts_with("\\restrict")
                    && !l.starts_with("\\unrestrict")
            })
            .flat_map(|l| [l, "\n"])
            .collect()
    }

    /// Restores a custom-format dump into `db` (which must exist).
    pub fn restore(&self, db: &str, dump: &Path) {
        run_ok(
            self.client("pg_restore", "postgres")
                .args(["--no-owner", "--exit-on-error", "-d", db])
                .arg(dump),
            "pg_restore",
        );
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// A private OpenSSH server with its own host key and config: key-only auth,
/// an SFTP-only account (`ForceCommand internal-sftp`), chrooted when the
/// tests run as root. Backups land in `data_dir()` on the local disk.
pub struct Sshd {
    pub dir: tempfile::TempDir,
    /// The chroot must be root-owned all the way up, so not under /tmp.
    chroot: Option<tempfile::TempDir>,
    pub port: u16,
    pub user: String,
    /// The client's dedicated key (mode 0600).
    pub client_key: PathBuf,
    /// A known_hosts file that pins this server's key.
    pub known_hosts: PathBuf,
    /// The path to give coffer (relative to the login or chroot).
    pub remote_path: String,
    child: Option<Child>,
}

impl Sshd {
    pub fn start() -> Self {
        Sshd::start_with(None)
    }

    /// A server that accepts, authenticates and starts SFTP, then answers
    /// no request: OpenSSH's sftp-server behind a pipe that passes only its
    /// client's first message (SSH_FXP_INIT) and then holds the rest. Not
    /// chrooted (the pipe needs a shell).
    pub fn stalling() -> Self {
        Sshd::start_with(Some(9))
    }

    fn start_with(stall_after: Option<u64>) -> Self {
        need("sshd");
        need("ssh-keygen");
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::set_permissions(d, fs::Permissions::from_mode(0o755)).unwrap();
        run_ok(
            Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", "test-host", "-f"])
                .arg(d.join("host_ed25519")),
            "ssh-keygen host",
        );
        run_ok(
            Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", "coffer", "-f"])
                .arg(d.join("client_ed25519")),
            "ssh-keygen client",
        );
        fs::copy(d.join("client_ed25519.pub"), d.join("authorized_keys")).unwrap();
        let user = std::env::var("USER")
            .ok()
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| {
                if is_root() {
                    "root".into()
                } else {
                    String::from_utf8_lossy(&Command::new("id").arg("-un").output().unwrap().stdout)
                        .trim()
                        .to_owned()
                }
            });
        let (chroot, remote_path) = if is_root() && stall_after.is_none() {
            // sshd demands root ownership and no group/other write on every
            // component of the chroot path; /run qualifies, /tmp does not.
            fs::create_dir_all("/run/sshd").ok();
            let c = tempfile::Builder::new()
                .prefix("coffer-sshd-")
                .tempdir_in("/run")
                .unwrap();
            fs::set_permissions(c.path(), fs::Permissions::from_mode(0o755)).unwrap();
            fs::create_dir(c.path().join("backups")).unwrap();
            // As docs/BACKUP-SERVER.md spells it, word for word.
            (Some(c), "/backups".to_owned())
        } else {
            fs::create_dir(d.join("backups")).unwrap();
            (None, d.join("backups").display().to_string())
        };
        let port = free_port();
        let mut config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {hk}\nPidFile {d}/sshd.pid\n\
             AuthorizedKeysFile {d}/authorized_keys\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nPubkeyAuthentication yes\nPermitRootLogin prohibit-password\n\
             UsePAM no\nStrictModes no\nAllowTcpForwarding no\nAllowAgentForwarding no\nX11Forwarding no\n\
             PermitTTY no\nForceCommand internal-sftp\nSubsystem sftp internal-sftp\nLogLevel VERBOSE\n",
            hk = d.join("host_ed25519").display(),
            d = d.display()
        );
        if let Some(bytes) = stall_after {
            let server = Path::new("/usr/lib/openssh/sftp-server");
            assert!(server.is_file(), "OpenSSH's sftp-server is not installed");
            let wrapper = d.join("stalling-sftp");
            fs::write(
                &wrapper,
                format!(
                    "#!/bin/sh\n{{ head -c {bytes}; cat > /dev/null; }} | {}\n",
                    server.display()
                ),
            )
            .unwrap();
            fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).unwrap();
            config = config.replace(
                "ForceCommand internal-sftp\n",
                &format!("ForceCommand {}\n", wrapper.display()),
            );
        }
        if let Some(c) = &chroot {
            config = config.replace(
                "ForceCommand internal-sftp\n",
                "ForceCommand internal-sftp -d /backups\n",
            ) + "ChrootDirectory "
                + &c.path().display().to_string()
                + "\n";
        }
        fs::write(d.join("sshd_config"), config).unwrap();
        let host_pub = fs::read_to_string(d.join("host_ed25519.pub")).unwrap();
        let mut fields = host_pub.split_whitespace();
        let (kind, b64) = (fields.next().unwrap(), fields.next().unwrap());
        let known_hosts = d.join("known_hosts");
        fs::write(&known_hosts, format!("[127.0.0.1]:{port} {kind} {b64}\n")).unwrap();
        let client_key = d.join("client_ed25519");
        fs::set_permissions(&client_key, fs::Permissions::from_mode(0o600)).unwrap();
        let mut s = Sshd {
            dir,
            chroot,
            port,
            user,
            client_key,
            known_hosts,
            remote_path,
            child: None,
        };
        s.restart();
        s
    }

    /// Starts (again) on the same port with the same keys.
    pub fn restart(&mut self) {
        let log = self.dir.path().join("sshd.log");
        let logf = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new(need("sshd"))
            .args(["-D", "-e", "-f"])
            .arg(self.dir.path().join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(logf)
            .spawn()
            .expect("start sshd");
        self.child = Some(child);
        let port = self.port;
        wait_until("sshd", &log, || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
    }

    /// Kills the server and every session it serves, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = c.id().to_string();
            let _ = Command::new("pkill").args(["-KILL", "-P", &pid]).status();
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops (`SIGSTOP`) or resumes (`SIGCONT`) every session the server
    /// serves, the listener untouched: a server that hangs with its
    /// connections open, as a wedged host or a dead link does.
    pub fn freeze_sessions(&self, frozen: bool) {
        let Some(c) = &self.child else { return };
        // Every descendant: privilege separation puts the process that
        // speaks to the network, and sftp-server, below the session's own.
        let mut pids = Vec::new();
        let mut parents = vec![c.id().to_string()];
        while let Some(parent) = parents.pop() {
            let out = Command::new("pgrep")
                .args(["-P", &parent])
                .output()
                .expect("pgrep");
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                parents.push(pid.to_owned());
                pids.push(pid.to_owned());
            }
        }
        let signal = if frozen { "-STOP" } else { "-CONT" };
        for pid in pids {
            let _ = Command::new("kill").args([signal, &pid]).status();
        }
    }

    /// Where uploaded files land, on this machine's disk.
    pub fn data_dir(&self) -> PathBuf {
        match &self.chroot {
            Some(c) => c.path().join("backups"),
            None => PathBuf::from(&self.remote_path),
        }
    }

    /// A `[[store]]` block for coffer.
    pub fn store_config(&self, extra: &str) -> String {
        sftp_store(
            self.port,
            &self.user,
            &self.client_key,
            &self.known_hosts,
            &self.remote_path,
            extra,
        )
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `[[store]]` block for an SFTP server on loopback.
fn sftp_store(port: u16, user: &str, key: &Path, known: &Path, path: &str, extra: &str) -> String {
    format!(
        "[[store]]\ntype = \"sftp\"\nname = \"remote\"\nhost = \"127.0.0.1\"\nport = {port}\nuser = \"{user}\"\n\
         identity = \"{}\"\nknown_hosts = \"{}\"\npath = \"{path}\"\ntimeout_secs = 5\nretries = 2\n{extra}\n",
        key.display(),
        known.display(),
    )
}

/// An SFTP server other than OpenSSH's, on a random loopback port, with a
/// client key it accepts and a known_hosts file that pins its host key.
/// Stopped, with its sessions, when dropped.
pub struct SftpServer {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub client_key: PathBuf,
    pub known_hosts: PathBuf,
    user: &'static str,
    /// The store's `path`.
    path: String,
    child: Child,
}

impl SftpServer {
    /// A private directory with a client key pair, a port, and a
    /// known_hosts file pinning `host_pub` (`kind base64 …`) there.
    fn prepare(
        host_pub: impl FnOnce(&Path) -> String,
    ) -> (tempfile::TempDir, u16, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::create_dir(d.join("backups")).unwrap();
        run_ok(
            Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", "coffer", "-f"])
                .arg(d.join("client_ed25519")),
            "ssh-keygen client",
        );
        let client_key = d.join("client_ed25519");
        fs::set_permissions(&client_key, fs::Permissions::from_mode(0o600)).unwrap();
        let port = free_port();
        let line = host_pub(d);
        let mut fields = line.split_whitespace();
        let (kind, b64) = (fields.next().unwrap(), fields.next().unwrap());
        let known_hosts = d.join("known_hosts");
        fs::write(&known_hosts, format!("[127.0.0.1]:{port} {kind} {b64}\n")).unwrap();
        (dir, port, client_key, known_hosts)
    }

    /// Starts `cmd`, logging to DIR/server.log, and waits for its port.
    fn serve(
        what: &str,
        mut cmd: Command,
        (dir, port, client_key, known_hosts): (tempfile::TempDir, u16, PathBuf, PathBuf),
        user: &'static str,
        path: String,
    ) -> Self {
        let log = dir.path().join("server.log");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("start {what}: {e}"));
        wait_until(what, &log, || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        SftpServer {
            dir,
            port,
            client_key,
            known_hosts,
            user,
            path,
            child,
        }
    }

    /// Dropbear in its default configuration (its 24 KiB receive window
    /// included), serving SFTP through the machine's sftp-server. Dropbear
    /// reads a login's keys from its home directory only, so it runs in a
    /// mount namespace of its own where a temporary directory stands in
    /// for root's home: the machine's is never touched.
    pub fn dropbear() -> Self {
        let server = need("dropbear");
        let keygen = need("dropbearkey");
        need("unshare");
        let host_key = std::cell::RefCell::new(PathBuf::new());
        let prepared = SftpServer::prepare(|d| {
            *host_key.borrow_mut() = d.join("host_ed25519");
            let out = run_ok(
                Command::new(&keygen)
                    .args(["-t", "ed25519", "-f"])
                    .arg(d.join("host_ed25519")),
                "dropbearkey",
            );
            out.lines()
                .find(|l| l.starts_with("ssh-ed25519 "))
                .expect("dropbearkey prints the public key")
                .to_owned()
        });
        let d = prepared.0.path().to_owned();
        let home = d.join("home");
        fs::create_dir_all(home.join(".ssh")).unwrap();
        fs::set_permissions(home.join(".ssh"), fs::Permissions::from_mode(0o700)).unwrap();
        fs::copy(
            d.join("client_ed25519.pub"),
            home.join(".ssh/authorized_keys"),
        )
        .unwrap();
        let mut cmd = Command::new("unshare");
        if !is_root() {
            // A user namespace in which this user is root.
            cmd.arg("--map-root-user");
        }
        let script = format!(
            "mount --bind '{}' /root && exec '{}' -F -E -s -p 127.0.0.1:{} -r '{}' -P '{}'",
            home.display(),
            server.display(),
            prepared.1,
            host_key.borrow().display(),
            d.join("dropbear.pid").display()
        );
        cmd.args(["--mount", "--propagation", "private", "sh", "-c", &script]);
        let path = d.join("backups").display().to_string();
        SftpServer::serve("dropbear", cmd, prepared, "root", path)
    }

    /// ProFTPD's mod_sftp as Debian ships it (proftpd-core and
    /// proftpd-mod-crypto), standalone on loopback, key-only, with a
    /// virtual user (`AuthUserFile`) chrooted to the directory
    /// (`DefaultRoot ~`), so the store's `path` is `/`. Its authorized key
    /// is in RFC 4716 form, as mod_sftp reads it.
    pub fn proftpd() -> Self {
        let server = need("proftpd");
        need("unshare");
        let prepared = SftpServer::prepare(|d| {
            run_ok(
                Command::new("ssh-keygen")
                    .args(["-q", "-t", "rsa", "-b", "3072", "-m", "PEM", "-N", "", "-f"])
                    .arg(d.join("host_rsa")),
                "ssh-keygen host",
            );
            fs::read_to_string(d.join("host_rsa.pub")).unwrap()
        });
        let d = prepared.0.path().to_owned();
        let rfc4716 = run_ok(
            Command::new("ssh-keygen")
                .args(["-e", "-f"])
                .arg(d.join("client_ed25519.pub")),
            "ssh-keygen -e",
        );
        fs::write(d.join("authorized_keys"), rfc4716).unwrap();
        let private = |name: &str, text: String| {
            fs::write(d.join(name), text).unwrap();
            fs::set_permissions(d.join(name), fs::Permissions::from_mode(0o600)).unwrap();
        };
        private(
            "passwd",
            format!(
                "coffer:x:0:0:coffer:{}:/bin/sh\n",
                d.join("backups").display()
            ),
        );
        private("group", "coffer:x:0:\n".into());
        let p = |name: &str| d.join(name).display().to_string();
        private(
            "proftpd.conf",
            format!(
                "ServerName \"coffer test\"\nServerType standalone\nDefaultServer on\n\
                 Port {port}\nDefaultAddress 127.0.0.1\nSocketBindTight on\nUseIPv6 off\n\
                 UseReverseDNS off\nUser root\nGroup root\nPidFile {pid}\n\
                 ScoreboardFile {scoreboard}\nDelayTable none\nWtmpLog off\nTransferLog none\n\
                 SystemLog {log}\nModulePath /usr/lib/proftpd\nLoadModule mod_sftp.c\n\
                 SFTPEngine on\nSFTPLog {sftplog}\nSFTPHostKey {host}\n\
                 SFTPAuthMethods publickey\nSFTPAuthorizedUserKeys file:{keys}\n\
                 AuthOrder mod_auth_file.c\nAuthUserFile {passwd}\nAuthGroupFile {group}\n\
                 RequireValidShell off\nRootLogin on\nDefaultRoot ~\nUmask 077\n",
                port = prepared.1,
                pid = p("proftpd.pid"),
                scoreboard = p("proftpd.scoreboard"),
                log = p("proftpd.log"),
                sftplog = p("sftp.log"),
                host = p("host_rsa"),
                keys = p("authorized_keys"),
                passwd = p("passwd"),
                group = p("group"),
            ),
        );
        let mut cmd = Command::new("unshare");
        if !is_root() {
            cmd.arg("--map-root-user");
        }
        cmd.arg(server)
            .args(["-n", "-q", "-c"])
            .arg(d.join("proftpd.conf"));
        SftpServer::serve("proftpd", cmd, prepared, "coffer", "/".into())
    }

    /// `rclone serve sftp` of the directory, key-only, with its own host
    /// key and an empty rclone configuration; it shows the directory as `/`.
    pub fn rclone() -> Self {
        let rclone = need("rclone");
        let prepared = SftpServer::prepare(|d| {
            run_ok(
                Command::new("ssh-keygen")
                    .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                    .arg(d.join("host_ed25519")),
                "ssh-keygen host",
            );
            fs::read_to_string(d.join("host_ed25519.pub")).unwrap()
        });
        let d = prepared.0.path().to_owned();
        let mut cmd = Command::new(rclone);
        cmd.args(["serve", "sftp"])
            .arg(d.join("backups"))
            .args([
                "--addr",
                &format!("127.0.0.1:{}", prepared.1),
                "--user",
                "coffer",
            ])
            .arg("--key")
            .arg(d.join("host_ed25519"))
            .arg("--authorized-keys")
            .arg(d.join("client_ed25519.pub"))
            .arg("--config")
            .arg(d.join("rclone.conf"));
        SftpServer::serve("rclone serve sftp", cmd, prepared, "coffer", "/".into())
    }

    /// Where uploads land, on this machine's disk.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("backups")
    }

    /// A `[[store]]` block for coffer.
    pub fn store_config(&self, extra: &str) -> String {
        sftp_store(
            self.port,
            self.user,
            &self.client_key,
            &self.known_hosts,
            &self.path,
            extra,
        )
    }
}

impl Drop for SftpServer {
    fn drop(&mut self) {
        // Its sessions are its children: they go with it.
        let pid = self.child.id().to_string();
        let _ = Command::new("pkill").args(["-KILL", "-P", &pid]).status();
        stop(&mut self.child);
    }
}
