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
