//! `verify --restore-test`, the restore drill: a backup's dumps loaded into
//! throwaway servers that coffer starts and removes ([`mariadb`],
//! [`postgres`]; SQLite copies are checked in a private directory), then
//! counted against the manifest. May call `restore` (the walk's error) and
//! `plumbing`; never `verify`, which calls it.

mod definer;
pub mod mariadb;
pub mod postgres;

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::path::PathBuf;

use serde::Serialize;

use crate::pipeline::plumbing::client::LoadClient;
use crate::pipeline::restore::walk::WalkError;
use definer::DefinerFilter;
use mariadb::ScratchMariaDb;
use postgres::ScratchPostgres;

/// The largest list of roles a dump's policies may name.
const ROLES_MAX: u64 = 1 << 20;

/// Where the drill writes what it found: the caller's report lines.
pub(crate) struct Notes<'a> {
    pub checks: &'a mut Vec<String>,
    pub problems: &'a mut Vec<String>,
}

/// One table: its rows in the manifest and after the restore.
#[derive(Debug, Clone, Serialize)]
pub struct TableCheck {
    /// `mysql`, `postgres` or `sqlite`.
    pub kind: String,
    pub source: String,
    pub table: String,
    pub expected: u64,
    /// `None`: the table is not there after the restore.
    pub restored: Option<u64>,
    /// `ok`, `mismatch` or `missing`.
    pub status: &'static str,
}

/// A restore test's measurements.
#[derive(Debug, Clone, Serialize)]
pub struct Drill {
    /// Wall time from fetching the backup to the last dump loaded (the
    /// measured recovery time), scratch servers' start included.
    pub restore_seconds: f64,
    /// Bytes of dumps and database files loaded.
    pub restored_bytes: u64,
    pub bytes_per_second: f64,
    pub tables: Vec<TableCheck>,
}

/// Where a member is being restored.
enum Target {
    Mysql,
    Postgres {
        source: String,
        database: String,
        scratch: String,
    },
    Sqlite {
        source: String,
        path: PathBuf,
    },
}

enum Sink {
    Loader(LoadClient),
    /// A MariaDB/MySQL dump, its definers made the loader's.
    Mysql(LoadClient, DefinerFilter),
    File(std::fs::File),
}

struct Loaded {
    member: String,
    target: Target,
    result: std::result::Result<(), String>,
}

/// The restore test's state while the backup is walked: scratch servers
/// and the private directory for SQLite copies, started on first use.
#[derive(Default)]
pub(crate) struct Drilling {
    mysql: Option<ScratchMariaDb>,
    postgres: Option<ScratchPostgres>,
    files: Option<tempfile::TempDir>,
    loading: Option<(String, Target, Sink)>,
    loaded: Vec<Loaded>,
    skipped: Vec<String>,
    pub(crate) bytes: u64,
}

fn restore_error(e: impl std::fmt::Display) -> WalkError {
    WalkError::Io(format!("restore test: {e}"))
}

impl Drilling {
    pub(crate) fn member(
        &mut self,
        name: &str,
        data: &mut dyn Read,
    ) -> std::result::Result<(), WalkError> {
        if crate::cancel::is_cancelled() {
            return Err(restore_error(crate::cancel::cancelled_error()));
        }
        if name.starts_with("postgres/")
            && std::path::Path::new(name)
                .extension()
                .is_some_and(|e| e == "roles")
        {
            // The roles the next dump's policies name: made first, as a
            // real restore needs them to exist.
            self.finish_loading();
            let mut roles = Vec::new();
            data.take(ROLES_MAX + 1)
                .read_to_end(&mut roles)
                .map_err(restore_error)?;
            if roles.len() as u64 > ROLES_MAX {
                return Err(restore_error(format!(
                    "{name}: larger than {ROLES_MAX} bytes"
                )));
            }
            if self.postgres.is_none() {
                self.postgres = Some(ScratchPostgres::start().map_err(restore_error)?);
            }
            if let Some(pg) = &self.postgres {
                let names: Vec<String> = roles
                    .split(|&b| b == 0)
                    .filter(|r| !r.is_empty())
                    .map(|r| String::from_utf8_lossy(r).into_owned())
                    .collect();
                pg.create_roles(&names)
                    .map_err(|e| restore_error(format!("{name}: {e}")))?;
            }
            return Ok(());
        }
        let same = self.loading.as_ref().is_some_and(|(n, _, _)| n == name);
        if !same {
            self.finish_loading();
            let Some((target, sink)) = self.start(name)? else {
                return Ok(());
            };
            self.loading = Some((name.to_owned(), target, sink));
        }
        let Some((_, _, sink)) = self.loading.as_mut() else {
            return Ok(());
        };
        match sink {
            Sink::Loader(client) => {
                if let Some(stdin) = client.stdin() {
                    // A load that fails stops reading; the failure is
                    // reported when it is waited for.
                    let mut counted = Counted { inner: stdin, n: 0 };
                    let _ = io::copy(data, &mut counted);
                    self.bytes += counted.n;
                }
            }
            Sink::Mysql(client, filter) => {
                if let Some(stdin) = client.stdin() {
                    // As above: a failing load is reported when waited for.
                    let mut piece = vec![0u8; 64 << 10];
                    loop {
                        let n = match data.read(&mut piece) {
                            Ok(0) => break,
                            Ok(n) => n,
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                            Err(e) => return Err(restore_error(e)),
                        };
                        self.bytes += n as u64;
                        if filter.feed(&piece[..n], stdin).is_err() {
                            break;
                        }
                    }
                }
            }
            Sink::File(f) => {
                self.bytes += io::copy(data, f).map_err(restore_error)?;
            }
        }
        Ok(())
    }

    /// Starts restoring a member, if it is a database.
    fn start(&mut self, name: &str) -> std::result::Result<Option<(Target, Sink)>, WalkError> {
        if name.starts_with("mysql/") {
            if self.mysql.is_none() {
                self.mysql = Some(ScratchMariaDb::start().map_err(restore_error)?);
            }
            let Some(db) = &self.mysql else {
                return Ok(None);
            };
            let child = db.loader().map_err(restore_error)?;
            return Ok(Some((
                Target::Mysql,
                Sink::Mysql(child, DefinerFilter::default()),
            )));
        }
        if let Some(rest) = name.strip_prefix("postgres/") {
            let Some((source, file)) = rest.split_once('/') else {
                return Ok(None);
            };
            let Some(database) = file.strip_suffix(".dump") else {
                // globals.sql is plain SQL: only psql runs it, and psql
                // obeys backslash commands in its input. The dumps load
                // with --no-owner --no-acl and need no roles.
                self.skipped.push(name.to_owned());
                return Ok(None);
            };
            if self.postgres.is_none() {
                self.postgres = Some(ScratchPostgres::start().map_err(restore_error)?);
            }
            let Some(pg) = self.postgres.as_mut() else {
                return Ok(None);
            };
            let (scratch, child) = pg.loader().map_err(restore_error)?;
            let target = Target::Postgres {
                source: source.to_owned(),
                database: database.to_owned(),
                scratch,
            };
            return Ok(Some((target, Sink::Loader(child))));
        }
        if let Some(source) = name
            .strip_prefix("sqlite/")
            .and_then(|n| n.strip_suffix(".db"))
        {
            if self.files.is_none() {
                // Mode 0700, removed afterwards: the same as a scratch
                // server's data directory.
                let dir = tempfile::Builder::new()
                    .prefix("coffer-restore-test-sqlite-")
                    .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
                    .tempdir()
                    .map_err(restore_error)?;
                self.files = Some(dir);
            }
            let Some(dir) = &self.files else {
                return Ok(None);
            };
            let path = dir.path().join(format!("{}.db", self.loaded.len()));
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .map_err(restore_error)?;
            let target = Target::Sqlite {
                source: source.to_owned(),
                path,
            };
            return Ok(Some((target, Sink::File(file))));
        }
        Ok(None)
    }

    pub(crate) fn finish_loading(&mut self) {
        let Some((member, target, sink)) = self.loading.take() else {
            return;
        };
        let result = match sink {
            Sink::Loader(client) => client.finish(),
            Sink::Mysql(mut client, mut filter) => {
                if let Some(stdin) = client.stdin() {
                    let _ = filter.end(stdin);
                }
                client.finish()
            }
            Sink::File(f) => f.sync_all().map_err(|e| e.to_string()),
        };
        self.loaded.push(Loaded {
            member,
            target,
            result,
        });
    }

    /// Counts what was restored, compares it with the manifest and records
    /// checks and problems; returns every table's comparison.
    pub(crate) fn compare(
        &self,
        manifest: &crate::manifest::Inner,
        r: &mut Notes<'_>,
    ) -> Vec<TableCheck> {
        let restored = self.restored(r);
        for s in &self.skipped {
            r.checks.push(format!(
                "restore test: {s} not loaded (plain SQL; the dumps load without owners and privileges)"
            ));
        }
        let mut tables = Vec::new();
        for source in &manifest.sources {
            let kind = source.kind.as_str();
            if !matches!(kind, "mysql" | "postgres" | "sqlite") {
                continue;
            }
            if source.row_counts.is_empty() {
                r.checks.push(format!(
                    "restore test: {kind} source {:?} recorded no row counts",
                    source.name
                ));
                continue;
            }
            let got = restored.get(&(kind, source.name.clone()));
            let mut matched = 0;
            for (table, &want) in &source.row_counts {
                let count = match kind {
                    "mysql" => self.mysql.as_ref().and_then(|db| {
                        db.count(table)
                            .map_err(|e| r.problems.push(format!("restore test: {table}: {e}")))
                            .ok()
                    }),
                    _ => got.and_then(|g| g.get(table).copied()),
                };
                let status = match count {
                    Some(n) if n == want => {
                        matched += 1;
                        "ok"
                    }
                    Some(n) => {
                        r.problems.push(format!(
                            "restore test: {table} has {n} rows, the manifest says {want}"
                        ));
                        "mismatch"
                    }
                    None => {
                        r.problems.push(format!(
                            "restore test: {table} is missing after the restore, the manifest says {want} rows"
                        ));
                        "missing"
                    }
                };
                tables.push(TableCheck {
                    kind: kind.to_owned(),
                    source: source.name.clone(),
                    table: table.clone(),
                    expected: want,
                    restored: count,
                    status,
                });
            }
            r.checks.push(format!(
                "restore test: row counts of {matched} tables match"
            ));
        }
        if self.loaded.is_empty() {
            r.checks
                .push("restore test: no database dump in this backup".into());
        }
        tables
    }

    /// Records each load's result; returns the restored PostgreSQL and
    /// SQLite counts per (kind, source): table → rows.
    fn restored(
        &self,
        r: &mut Notes<'_>,
    ) -> BTreeMap<(&'static str, String), BTreeMap<String, u64>> {
        let mut restored: BTreeMap<(&'static str, String), BTreeMap<String, u64>> = BTreeMap::new();
        for l in &self.loaded {
            if let Err(e) = &l.result {
                r.problems
                    .push(format!("restore test: loading {} failed: {e}", l.member));
                continue;
            }
            match &l.target {
                Target::Mysql => r.checks.push(format!(
                    "restore test: {} loaded into a scratch MariaDB",
                    l.member
                )),
                Target::Postgres {
                    source,
                    database,
                    scratch,
                } => {
                    r.checks.push(format!(
                        "restore test: {} loaded into a scratch PostgreSQL",
                        l.member
                    ));
                    let counts = self
                        .postgres
                        .as_ref()
                        .ok_or_else(|| "no scratch server".to_owned())
                        .and_then(|pg| pg.counts(scratch));
                    match counts {
                        Ok(c) => restored
                            .entry(("postgres", source.clone()))
                            .or_default()
                            .extend(c.into_iter().map(|(t, n)| (format!("{database}.{t}"), n))),
                        Err(e) => r
                            .problems
                            .push(format!("restore test: counting {}: {e}", l.member)),
                    }
                }
                Target::Sqlite { source, path } => match crate::source::check_sqlite_copy(path) {
                    Ok(c) => {
                        r.checks
                            .push(format!("restore test: {} passes integrity_check", l.member));
                        restored
                            .entry(("sqlite", source.clone()))
                            .or_default()
                            .extend(c);
                    }
                    Err(e) => r.problems.push(format!("restore test: {}: {e}", l.member)),
                },
            }
        }
        restored
    }
}

/// Counts what passes into a loader.
struct Counted<W> {
    inner: W,
    n: u64,
}

impl<W: Write> Write for Counted<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
