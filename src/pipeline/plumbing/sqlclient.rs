//! The `mariadb`/`mysql` client as coffer runs it to load a dump from a
//! backup. A backup can be forged by anyone with the public key, so its dump
//! is untrusted text: the client must treat it as SQL for the server and
//! nothing else — no `\!`/`system` shell escapes, no `tee`/`source` files,
//! no LOAD DATA LOCAL reading the restore machine's files.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use crate::source::find_program;

pub struct MysqlClient {
    program: PathBuf,
    /// `--sandbox` (MariaDB 10.5.25, 10.6.18, 10.11.8, 11.x and later)
    /// refuses every client command that touches the file system, even those
    /// `--binary-mode` lets through.
    sandbox: bool,
}

static CLIENT: OnceLock<Option<MysqlClient>> = OnceLock::new();

/// The client (`mariadb`, else `mysql`), probed once per run.
pub fn mysql_client() -> Option<&'static MysqlClient> {
    CLIENT
        .get_or_init(|| {
            let program = find_program("mariadb").or_else(|| find_program("mysql"))?;
            let sandbox = has_sandbox(&program);
            Some(MysqlClient { program, sandbox })
        })
        .as_ref()
}

/// Whether `--help` lists `--sandbox`; an older client would refuse to start
/// with an option it does not know.
fn has_sandbox(program: &PathBuf) -> bool {
    Command::new(program)
        .args(["--no-defaults", "--help"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.split_whitespace().next() == Some("--sandbox"))
        })
}

impl MysqlClient {
    /// The client, with no argument yet: an options-file argument
    /// (`--no-defaults`, `--defaults-extra-file=…`) must come first.
    pub fn command(&self) -> Command {
        let mut c = Command::new(&self.program);
        c.env_remove("MYSQL_PWD");
        c
    }

    /// Options for a client that reads a dump from a backup on stdin. They
    /// come after any options file on the command line, so they win over it.
    ///
    /// `--binary-mode` turns off every client command but `\C` and
    /// `DELIMITER` (which dumps with triggers and routines need); an escape
    /// the client does not run is sent to the server, fails as SQL, and
    /// stops the load. `--local-infile=0` keeps LOAD DATA LOCAL from reading
    /// this machine's files, whatever an options file says.
    pub fn dump_loader_args(&self) -> &'static [&'static str] {
        if self.sandbox {
            &["--binary-mode", "--sandbox", "--local-infile=0"]
        } else {
            &["--binary-mode", "--local-infile=0"]
        }
    }

    /// Said when the client cannot be sandboxed.
    pub fn warning(&self) -> Option<String> {
        (!self.sandbox).then(|| {
            format!(
                "{} has no --sandbox (MariaDB before 10.5.25, 10.6.18 or 10.11.8, or MySQL): \
                 loading dumps with --binary-mode only, which also turns off its shell and file commands",
                self.program.display()
            )
        })
    }
}

/// How a dump's `DEFINER=` clauses start (mariadb-dump and mysqldump
/// alike): a routine, a view, a trigger, an event.
pub const DEFINER_STARTS: [&[u8]; 4] = [
    b"CREATE DEFINER=",
    b"/*!50013 DEFINER=",
    b"/*!50003 CREATE*/ /*!50017 DEFINER=",
    b"/*!50106 CREATE*/ /*!50117 DEFINER=",
];

/// The line with its `DEFINER=`user`@`host`` made `DEFINER=CURRENT_USER`,
/// where a dump puts that clause; `None` when it has none there. A dump's
/// code then runs as the account that loads it. (A clause anywhere else is
/// left to the server, which refuses a definer other than the loading
/// account unless that account may set any.)
pub fn own_definer(line: &[u8]) -> Option<Vec<u8>> {
    let prefix = DEFINER_STARTS.iter().find(|p| line.starts_with(p))?;
    let rest = &line[prefix.len()..];
    let user = quoted_len(rest)?;
    let host = rest.get(user..)?.strip_prefix(b"@")?;
    let tail = &host[quoted_len(host)?..];
    Some([&line[..prefix.len()], b"CURRENT_USER", tail].concat())
}

/// The length of the backquoted name `s` starts with (a backtick in a name
/// is written doubled).
pub fn quoted_len(s: &[u8]) -> Option<usize> {
    if s.first() != Some(&b'`') {
        return None;
    }
    let mut i = 1;
    loop {
        match s.get(i)? {
            b'`' if s.get(i + 1) == Some(&b'`') => i += 2,
            b'`' => return Some(i + 1),
            _ => i += 1,
        }
    }
}
