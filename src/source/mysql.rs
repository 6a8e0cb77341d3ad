//! MariaDB/MySQL through `mariadb-dump` (or `mysqldump`). Credentials come only
//! from an options file passed with `--defaults-extra-file`; the password is
//! never in argv or the environment.

use std::io::{self, Read};
use std::path::PathBuf;
use std::process::Command;

use super::process::{find_program, version_of, ChildStream};
use super::{check_component, Report, Sink, Source, SourceError};

pub struct MysqlSource {
    pub name: String,
    pub databases: Vec<String>,
    pub all: bool,
    pub options_file: Option<PathBuf>,
}

const TRAILER: &[u8] = b"-- Dump completed";

impl MysqlSource {
    fn program() -> Result<PathBuf, SourceError> {
        find_program("mariadb-dump")
            .or_else(|| find_program("mysqldump"))
            .ok_or_else(|| SourceError::NotFound {
                program: "mariadb-dump or mysqldump".into(),
            })
    }

    fn argv(&self, history: bool) -> Vec<String> {
        let mut a = Vec::new();
        // Must be the first option, or the client ignores it.
        if let Some(f) = &self.options_file {
            a.push(format!("--defaults-extra-file={}", f.display()));
        }
        a.extend(
            [
                "--single-transaction",
                // No LOCK TABLES around each table's rows: a table whose
                // default draws from a sequence (DEFAULT NEXTVAL(s)) could
                // not be loaded by the client (ERROR 1100, the sequence is
                // not locked), and a single transaction needs none.
                "--skip-add-locks",
                "--routines",
                "--triggers",
                "--events",
                "--hex-blob",
                "--default-character-set=utf8mb4",
            ]
            .map(String::from),
        );
        if history {
            // Every row version of a system-versioned table, and its load
            // sets system_versioning_insert_history: without it a restore
            // keeps only the current rows.
            a.push("--dump-history".into());
        }
        if self.all {
            a.push("--all-databases".into());
        } else {
            a.push("--databases".into());
            a.extend(self.databases.iter().cloned());
        }
        a
    }
}

/// Remembers the last bytes that passed, to check the dump's trailer.
struct Tail<R> {
    inner: R,
    tail: Vec<u8>,
}

impl<R: Read> Read for Tail<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        // Only the last 512 bytes matter: copy no more of a large read.
        let new = &buf[n.saturating_sub(512)..n];
        self.tail.extend_from_slice(new);
        if self.tail.len() > 512 {
            self.tail.drain(..self.tail.len() - 512);
        }
        Ok(n)
    }
}

impl Source for MysqlSource {
    fn kind(&self) -> &'static str {
        "mysql"
    }
    fn name(&self) -> &str {
        &self.name
    }

    fn check(&self) -> Vec<String> {
        let mut p = Vec::new();
        if let Err(e) = Self::program() {
            p.push(e.to_string());
        }
        p
    }

    fn run(&self, sink: &mut dyn Sink) -> Result<Report, SourceError> {
        for db in &self.databases {
            check_component("database", db)?;
        }
        let program = Self::program()?;
        let mut warnings = self.outside_the_snapshot();
        let history = self.history(&program, &mut warnings);
        let argv = self.argv(history);
        let mut cmd = Command::new(&program);
        cmd.args(&argv);
        // A password in the environment would show in /proc/PID/environ.
        cmd.env_remove("MYSQL_PWD");
        let child = ChildStream::spawn(cmd)?;
        let name = child.program().to_owned();
        let mut tail = Tail {
            inner: super::rowcount::Counting {
                inner: child,
                counter: super::rowcount::RowCounter::default(),
            },
            tail: Vec::new(),
        };
        let member = format!("mysql/{}.sql", self.name);
        sink.stream(&member, &mut tail).map_err(SourceError::Sink)?;
        let Tail {
            inner: counting,
            tail,
        } = tail;
        let super::rowcount::Counting {
            inner: child,
            counter,
        } = counting;
        child.finish()?;
        // mysqldump ends a complete dump with "-- Dump completed on <date>".
        let last_line = tail
            .split(|&b| b == b'\n')
            .rev()
            .find(|l| !l.is_empty())
            .unwrap_or(&[]);
        if !last_line.starts_with(TRAILER) {
            return Err(SourceError::Incomplete {
                program: name,
                reason: "the dump does not end with \"-- Dump completed\"".into(),
            });
        }
        let mut command = vec![program.display().to_string()];
        command.extend(argv);
        Ok(Report {
            commands: vec![command],
            tool_versions: version_of(&program).into_iter().collect(),
            row_counts: counter.counts,
            warnings,
            ..Report::default()
        })
    }
}

impl MysqlSource {
    /// The tables `--single-transaction` cannot make consistent (MyISAM,
    /// Aria, MEMORY: engines without transactions), each said once by name:
    /// writes while the dump runs may be partly in them. Best effort: a
    /// client that cannot ask says nothing, and the dump goes on.
    fn outside_the_snapshot(&self) -> Vec<String> {
        let sql = format!(
            "SELECT CONCAT(TABLE_SCHEMA, '.', TABLE_NAME, ' (', ENGINE, ')') \
             FROM information_schema.TABLES WHERE TABLE_TYPE = 'BASE TABLE' AND {} \
             AND ENGINE IN (SELECT ENGINE FROM information_schema.ENGINES WHERE TRANSACTIONS = 'NO') \
             ORDER BY 1",
            self.which_schemas()
        );
        self.ask(&sql)
            .into_iter()
            .map(|t| {
                format!(
                    "{t} does not take part in transactions: --single-transaction cannot make it consistent with the rest of the dump, and writes while the backup ran may be partly in it (convert it to InnoDB, or back it up while nothing writes)"
                )
            })
            .collect()
    }

    /// Whether the dump keeps the history of system-versioned tables
    /// (`--dump-history`, mariadb-dump 10.11 and later). Where it cannot —
    /// an older or MySQL client, or a table versioned by transaction id,
    /// which the option refuses to dump at all — the dump keeps the current
    /// rows, and a warning names what is not kept.
    fn history(&self, program: &std::path::Path, warnings: &mut Vec<String>) -> bool {
        let sql = format!(
            "SELECT CONCAT(t.TABLE_SCHEMA, '.', t.TABLE_NAME, IF(EXISTS(SELECT 1 FROM information_schema.COLUMNS c \
             WHERE c.TABLE_SCHEMA = t.TABLE_SCHEMA AND c.TABLE_NAME = t.TABLE_NAME \
             AND c.GENERATION_EXPRESSION = 'ROW START' AND c.DATA_TYPE = 'bigint'), ' trx', '')) \
             FROM information_schema.TABLES t WHERE t.TABLE_TYPE = 'SYSTEM VERSIONED' AND {} ORDER BY 1",
            self.which_schemas().replace("TABLE_SCHEMA", "t.TABLE_SCHEMA")
        );
        let versioned = self.ask(&sql);
        if versioned.is_empty() {
            return false;
        }
        let by_trx: Vec<&str> = versioned
            .iter()
            .filter_map(|t| t.strip_suffix(" trx"))
            .collect();
        if !by_trx.is_empty() {
            warnings.push(format!(
                "the history of {} is not in the backup, only its current rows: it is versioned by transaction id, whose history mariadb-dump cannot dump",
                by_trx.join(", ")
            ));
            return false;
        }
        let can = Command::new(program)
            .arg("--help")
            .env_remove("MYSQL_PWD")
            .stdin(std::process::Stdio::null())
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("--dump-history"));
        if !can {
            warnings.push(format!(
                "the history of {} is not in the backup, only its current rows: {} cannot dump it (mariadb-dump 10.11 or later can)",
                versioned.join(", "),
                program.display()
            ));
        }
        can
    }

    /// The SQL condition on TABLE_SCHEMA that selects the dumped databases.
    fn which_schemas(&self) -> String {
        let quoted: Vec<String> = self
            .databases
            .iter()
            .map(|d| format!("'{}'", d.replace('\\', "\\\\").replace('\'', "''")))
            .collect();
        if self.all || quoted.is_empty() {
            "TABLE_SCHEMA NOT IN ('mysql', 'information_schema', 'performance_schema', 'sys')"
                .to_owned()
        } else {
            format!("TABLE_SCHEMA IN ({})", quoted.join(", "))
        }
    }

    /// The first column of each row `sql` returns, through the client with
    /// the source's option file. Best effort: a client that cannot ask
    /// returns nothing, and the dump goes on.
    fn ask(&self, sql: &str) -> Vec<String> {
        let Some(client) = find_program("mariadb").or_else(|| find_program("mysql")) else {
            return Vec::new();
        };
        let mut cmd = Command::new(client);
        // Must be the first option, or the client ignores it.
        if let Some(f) = &self.options_file {
            cmd.arg(format!("--defaults-extra-file={}", f.display()));
        }
        cmd.args(["--batch", "--skip-column-names", "-e", sql])
            .env_remove("MYSQL_PWD")
            .stdin(std::process::Stdio::null());
        let Ok(out) = cmd.output() else {
            return Vec::new();
        };
        if !out.status.success() {
            return Vec::new();
        }
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .take(100)
            .map(str::to_owned)
            .collect()
    }
}
