//! A consistent online copy of a live SQLite database, streamed.
//!
//! Inside one read transaction the database is a fixed snapshot (other
//! processes may keep writing in WAL mode; in rollback mode they wait). The
//! snapshot's pages are read from the `sqlite_dbpage` virtual table in order,
//! which yields exactly the bytes of a database file — so the copy streams
//! with a known size, needs no temporary file (the backup API would need a
//! destination database: a plaintext file, or the whole database in memory)
//! and restores with `cp`.

use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::{Entry, EntryKind, Report, Sink, Source, SourceError};

pub struct SqliteSource {
    pub name: String,
    pub path: PathBuf,
}

fn sql_err(path: &std::path::Path, e: &rusqlite::Error) -> SourceError {
    SourceError::Sqlite(format!("{}: {e}", path.display()))
}

/// Reads the concatenated `data` blobs of a page query.
struct Pages<'a> {
    rows: rusqlite::Rows<'a>,
    buf: Vec<u8>,
    pos: usize,
}

impl Read for Pages<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.buf.len() {
            if crate::cancel::is_cancelled() {
                return Err(crate::cancel::cancelled_error());
            }
            match self.rows.next().map_err(io::Error::other)? {
                Some(row) => {
                    self.buf = row.get(0).map_err(io::Error::other)?;
                    self.pos = 0;
                }
                None => return Ok(0),
            }
        }
        let n = (self.buf.len() - self.pos).min(out.len());
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Tables outside SQLite's own, by name.
fn table_names(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut st = conn.prepare(
        "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
    )?;
    let names = st.query_map([], |r| r.get(0))?.collect();
    names
}

/// Exact row counts of every table.
fn count_rows(conn: &Connection) -> rusqlite::Result<Vec<(String, u64)>> {
    let mut counts = Vec::new();
    for t in table_names(conn)? {
        let q = format!("SELECT count(*) FROM \"{}\"", t.replace('"', "\"\""));
        let n: i64 = conn.query_row(&q, [], |r| r.get(0))?;
        counts.push((t, u64::try_from(n).unwrap_or(0)));
    }
    Ok(counts)
}

/// The restore test of a copied database (a file in a private directory):
/// `PRAGMA integrity_check`, then every table's rows. The file may be
/// forged: it is opened read-only, with its schema untrusted (no function
/// a view or trigger names runs).
pub fn check_copy(path: &std::path::Path) -> Result<Vec<(String, u64)>, String> {
    let err = |e: rusqlite::Error| e.to_string();
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(err)?;
    conn.execute_batch("PRAGMA trusted_schema = OFF; PRAGMA cell_size_check = ON;")
        .map_err(err)?;
    let problems: Vec<String> = {
        let mut st = conn.prepare("PRAGMA integrity_check(10)").map_err(err)?;
        let rows = st
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(err)?
            .collect::<Result<_, _>>()
            .map_err(err)?;
        rows
    };
    if problems != ["ok"] {
        return Err(format!("integrity_check: {}", problems.join("; ")));
    }
    count_rows(&conn).map_err(err)
}

impl Source for SqliteSource {
    fn kind(&self) -> &'static str {
        "sqlite"
    }
    fn name(&self) -> &str {
        &self.name
    }

    fn check(&self) -> Vec<String> {
        if self.path.is_file() {
            Vec::new()
        } else {
            vec![format!("{}: no such database file", self.path.display())]
        }
    }

    fn run(&self, sink: &mut dyn Sink) -> Result<Report, SourceError> {
        let path = &self.path;
        let meta = std::fs::metadata(path).map_err(|source| SourceError::Io {
            path: path.clone(),
            source,
        })?;
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| sql_err(path, &e))?;
        conn.busy_timeout(Duration::from_secs(60))
            .map_err(|e| sql_err(path, &e))?;
        // The first read inside BEGIN fixes the snapshot everything below sees.
        conn.execute_batch("BEGIN").map_err(|e| sql_err(path, &e))?;
        let mut report = Report::default();
        report
            .row_counts
            .extend(count_rows(&conn).map_err(|e| sql_err(path, &e))?);
        let page_size: i64 = conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .map_err(|e| sql_err(path, &e))?;
        let page_count: i64 = conn
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .map_err(|e| sql_err(path, &e))?;
        let size = u64::try_from(page_size * page_count)
            .map_err(|_| SourceError::Sqlite("negative database size".into()))?;
        let mut st = conn
            .prepare("SELECT data FROM sqlite_dbpage ORDER BY pgno")
            .map_err(|e| {
                SourceError::Sqlite(format!(
                    "{}: {e} (this build of SQLite lacks sqlite_dbpage)",
                    path.display()
                ))
            })?;
        let rows = st.query([]).map_err(|e| sql_err(path, &e))?;
        let mut pages = Pages {
            rows,
            buf: Vec::new(),
            pos: 0,
        };
        let entry = Entry {
            path: format!("sqlite/{}.db", self.name).into_bytes(),
            kind: EntryKind::File,
            mode: 0o600,
            uid: meta.uid(),
            gid: meta.gid(),
            mtime: meta.mtime(),
            size,
        };
        sink.entry(&entry, &mut pages).map_err(SourceError::Sink)?;
        drop(pages);
        drop(st);
        conn.execute_batch("COMMIT")
            .map_err(|e| sql_err(path, &e))?;
        report
            .tool_versions
            .push(format!("SQLite {}", rusqlite::version()));
        report
            .commands
            .push(vec!["sqlite_dbpage".into(), path.display().to_string()]);
        Ok(report)
    }
}
