//! PostgreSQL through `pg_dump --format=custom` per database (compression is
//! left to coffer) and `pg_dumpall --globals-only` for roles and tablespaces.
//! The password comes from a libpq passfile (PGPASSFILE), never argv.
//!
//! Exact row counts: per database, a `psql` session opens a repeatable-read
//! transaction and exports its snapshot; `pg_dump --snapshot` dumps exactly
//! that snapshot while the same session counts every table in it, so the
//! counts describe the dump, not the live database a moment later. A
//! `count(*)` reads the whole table: `row_counts = false` turns this off.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::thread::JoinHandle;

use super::process::{find_program, version_of, ChildStream};
use super::{check_component, Report, Sink, Source, SourceError};

pub struct PostgresSource {
    pub name: String,
    pub databases: Vec<String>,
    pub globals: bool,
    pub passfile: Option<PathBuf>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub user: Option<String>,
    /// Count every table's rows in the dump's snapshot.
    pub row_counts: bool,
}

/// Every ordinary table (and partition) outside the system schemas, with its
/// exact row count, as `schema.table` NUL count NUL. The counts run in the
/// server (`query_to_xml`) with identifiers quoted by `format('%I')`.
pub const COUNT_QUERY: &str = "SELECT format('%s.%s', n.nspname, c.relname), \
     (xpath('/row/c/text()', query_to_xml(format('SELECT count(*) AS c FROM %I.%I', n.nspname, c.relname), false, true, '')))[1]::text \
     FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
     WHERE c.relkind = 'r' AND c.relpersistence <> 't' \
     AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
     AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%' \
     ORDER BY 1;";

/// The roles the database's row-level security policies are granted to:
/// `pg_dump` (with or without `--no-owner`) writes them into the policies,
/// so a restore needs them to exist. NUL-separated (psql `-A -t -0`).
pub const POLICY_ROLES_QUERY: &str = "SELECT DISTINCT r.rolname \
     FROM pg_catalog.pg_policy p CROSS JOIN LATERAL unnest(p.polroles) AS u(oid) \
     JOIN pg_catalog.pg_roles r ON r.oid = u.oid ORDER BY 1;";

/// Parses [`COUNT_QUERY`]'s output (psql `-A -t -z -0`): `name\0count\0`...
pub fn parse_counts(out: &[u8]) -> Result<Vec<(String, u64)>, String> {
    let mut fields = out.split(|&b| b == 0);
    let mut counts = Vec::new();
    while let Some(name) = fields.next() {
        if name.is_empty() {
            // The end: every record ends with a NUL.
            break;
        }
        let count = fields
            .next()
            .and_then(|c| std::str::from_utf8(c).ok())
            .and_then(|c| c.trim().parse::<u64>().ok())
            .ok_or_else(|| format!("bad count for {}", String::from_utf8_lossy(name)))?;
        counts.push((String::from_utf8_lossy(name).into_owned(), count));
    }
    Ok(counts)
}

/// psql's options for the snapshot session and for the restore test's
/// counts: no psqlrc, quiet, unaligned, NUL-separated, stop at the first error.
pub const PSQL_QUIET: [&str; 8] = ["-X", "-q", "-A", "-t", "-z", "-0", "-v", "ON_ERROR_STOP=1"];

/// A psql session holding a repeatable-read transaction whose snapshot
/// pg_dump dumps. Killed if dropped before [`Snapshot::finish`].
struct Snapshot {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<std::process::ChildStdout>,
    stderr: Option<JoinHandle<Vec<u8>>>,
    id: String,
}

impl Snapshot {
    fn failed(&mut self, what: &str) -> SourceError {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let status = self
            .child
            .wait()
            .map_or_else(|e| e.to_string(), |s| s.to_string());
        let stderr = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        SourceError::Failed {
            program: format!("psql ({what})"),
            status,
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        }
    }

    fn start(mut cmd: Command) -> Result<Self, SourceError> {
        cmd.args(PSQL_QUIET)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|source| SourceError::Spawn {
            program: "psql".into(),
            source,
        })?;
        let (Some(stdin), Some(stdout), Some(mut err)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(SourceError::Invalid("psql: no pipes".into()));
        };
        let stderr = std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = err.read_to_end(&mut v);
            v
        });
        let mut s = Snapshot {
            child,
            stdin: Some(stdin),
            stdout: BufReader::new(stdout),
            stderr: Some(stderr),
            id: String::new(),
        };
        let begin = b"BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;\nSELECT pg_catalog.pg_export_snapshot();\n";
        if s.send(begin).is_err() {
            return Err(s.failed("exporting a snapshot"));
        }
        let mut id = Vec::new();
        match s.stdout.read_until(0, &mut id) {
            Ok(_) if id.last() == Some(&0) => {}
            _ => return Err(s.failed("exporting a snapshot")),
        }
        id.pop();
        let id = String::from_utf8_lossy(&id).trim().to_owned();
        // pg_dump gets it in argv: it must be the plain identifier it is.
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
            return Err(s.failed("exporting a snapshot"));
        }
        s.id = id;
        Ok(s)
    }

    fn send(&mut self, sql: &[u8]) -> std::io::Result<()> {
        match self.stdin.as_mut() {
            Some(w) => w.write_all(sql).and_then(|()| w.flush()),
            None => Err(std::io::Error::other("session closed")),
        }
    }

    /// Ends the transaction (after pg_dump) and returns the counts.
    fn finish(mut self) -> Result<Vec<(String, u64)>, SourceError> {
        if self.send(b"COMMIT;\n").is_err() {
            return Err(self.failed("counting rows"));
        }
        drop(self.stdin.take());
        let mut out = Vec::new();
        if self.stdout.read_to_end(&mut out).is_err() {
            return Err(self.failed("counting rows"));
        }
        match self.child.wait() {
            Ok(s) if s.success() => {}
            _ => return Err(self.failed("counting rows")),
        }
        parse_counts(&out).map_err(|e| SourceError::Incomplete {
            program: "psql".into(),
            reason: e,
        })
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl PostgresSource {
    fn connection_args(&self) -> Vec<String> {
        let mut a = vec!["--no-password".to_owned()];
        if let Some(h) = &self.host {
            a.push(format!("--host={h}"));
        }
        if let Some(p) = self.port {
            a.push(format!("--port={p}"));
        }
        if let Some(u) = &self.user {
            a.push(format!("--username={u}"));
        }
        a
    }

    fn command(&self, program: &PathBuf, args: &[String]) -> Command {
        let mut cmd = Command::new(program);
        cmd.args(args);
        cmd.env_remove("PGPASSWORD");
        if let Some(f) = &self.passfile {
            cmd.env("PGPASSFILE", f);
        }
        cmd
    }

    /// Records the roles the database's policies name, as the member
    /// `postgres/{source}/{db}.roles` (NUL-separated) before its dump, so
    /// that a restore drill can create them before it loads the dump.
    fn policy_roles(
        &self,
        db: &str,
        sink: &mut dyn Sink,
        report: &mut Report,
    ) -> Result<(), SourceError> {
        let psql = program("psql")?;
        let mut args = self.connection_args();
        args.push(format!("--dbname={db}"));
        args.extend(PSQL_QUIET.map(String::from));
        args.extend(["-c".to_owned(), POLICY_ROLES_QUERY.to_owned()]);
        let out = self
            .command(&psql, &args)
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| SourceError::Spawn {
                program: "psql (policy roles)".into(),
                source: e,
            })?;
        if !out.status.success() {
            return Err(SourceError::Failed {
                program: "psql (policy roles)".into(),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        if out.stdout.iter().all(|&b| b == 0) {
            return Ok(());
        }
        let member = format!("postgres/{}/{db}.roles", self.name);
        sink.stream(&member, &mut &out.stdout[..])
            .map_err(SourceError::Sink)?;
        let mut c = vec![psql.display().to_string()];
        c.extend(args);
        report.commands.push(c);
        Ok(())
    }

    fn dump(
        &self,
        program: &PathBuf,
        args: Vec<String>,
        member: &str,
        sink: &mut dyn Sink,
        report: &mut Report,
    ) -> Result<(), SourceError> {
        let mut child = ChildStream::spawn(self.command(program, &args))?;
        sink.stream(member, &mut child).map_err(SourceError::Sink)?;
        child.finish()?;
        let mut c = vec![program.display().to_string()];
        c.extend(args);
        report.commands.push(c);
        Ok(())
    }

    /// One database through pg_dump; with row counts, in a snapshot a psql
    /// session exported and counts in while pg_dump runs.
    fn dump_database(
        &self,
        pg_dump: &PathBuf,
        db: &str,
        sink: &mut dyn Sink,
        report: &mut Report,
    ) -> Result<(), SourceError> {
        let mut args = self.connection_args();
        args.extend([
            "--format=custom".into(),
            "--compress=0".into(),
            // The database's own comment and settings go into the archive
            // only with --create; a restore that does not create the
            // database skips them.
            "--create".into(),
            format!("--dbname={db}"),
        ]);
        let member = format!("postgres/{}/{db}.dump", self.name);
        self.policy_roles(db, sink, report)?;
        if !self.row_counts {
            return self.dump(pg_dump, args, &member, sink, report);
        }
        let psql = program("psql")?;
        let mut session_args = self.connection_args();
        session_args.push(format!("--dbname={db}"));
        let mut session = Snapshot::start(self.command(&psql, &session_args))?;
        args.push(format!("--snapshot={}", session.id));
        // Counted while pg_dump runs; psql waits on its pipe if the answer
        // is large, and is read once the dump is done.
        if session
            .send(COUNT_QUERY.as_bytes())
            .and_then(|()| session.send(b"\n"))
            .is_err()
        {
            return Err(session.failed("counting rows"));
        }
        self.dump(pg_dump, args, &member, sink, report)?;
        for (table, n) in session.finish()? {
            report.row_counts.insert(format!("{db}.{table}"), n);
        }
        let mut c = vec![psql.display().to_string()];
        c.extend(session_args);
        c.push("(row counts in the exported snapshot)".into());
        report.commands.push(c);
        Ok(())
    }
}

fn program(name: &str) -> Result<PathBuf, SourceError> {
    find_program(name).ok_or_else(|| SourceError::NotFound {
        program: name.into(),
    })
}

impl Source for PostgresSource {
    fn kind(&self) -> &'static str {
        "postgres"
    }
    fn name(&self) -> &str {
        &self.name
    }

    fn check(&self) -> Vec<String> {
        let mut p = Vec::new();
        if !self.databases.is_empty() {
            if let Err(e) = program("pg_dump") {
                p.push(e.to_string());
            }
        }
        if self.globals {
            if let Err(e) = program("pg_dumpall") {
                p.push(e.to_string());
            }
        }
        p
    }

    fn run(&self, sink: &mut dyn Sink) -> Result<Report, SourceError> {
        let mut report = Report::default();
        if self.globals {
            let dumpall = program("pg_dumpall")?;
            let mut args = self.connection_args();
            args.push("--globals-only".into());
            let member = format!("postgres/{}/globals.sql", self.name);
            self.dump(&dumpall, args, &member, sink, &mut report)?;
            report.tool_versions.extend(version_of(&dumpall));
        }
        if !self.databases.is_empty() {
            let pg_dump = program("pg_dump")?;
            for db in &self.databases {
                check_component("database", db)?;
                self.dump_database(&pg_dump, db, sink, &mut report)?;
            }
            report.tool_versions.extend(version_of(&pg_dump));
        }
        Ok(report)
    }
}
