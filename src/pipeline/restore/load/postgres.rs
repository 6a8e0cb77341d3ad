//! `--into-db` for a PostgreSQL source: the dump goes through pg_restore
//! as the source's role, which must not reach the server's operating
//! system account for an unsigned backup; the dump's table of contents
//! (read first) decides whether its owners are kept, and the database's
//! own comment and settings are applied after the load.

use std::io::{self, Read};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use super::{check_name, finish_load, prelude, query, Loader, Walk};
use crate::error::{Error, Result};
use crate::pipeline::restore::walk::{walk, WalkError, Walked};
use crate::source::find_program;

/// What the PostgreSQL role coffer loads through may do beyond the database
/// being loaded, that a dump's SQL (a function run by a materialized view's
/// refresh, a `COPY … TO PROGRAM`) would do with it: a superuser, or a
/// member of the roles that run programs or read and write the server's
/// files, reaches the database server's operating system account; a role
/// with CREATEROLE can make itself such a member (before PostgreSQL 16).
/// Roles the login role (the session's, which a role setting may differ
/// from) is a member of count as its own: the dump can `SET ROLE` to any
/// of them.
fn pg_server_privileges(passfile: Option<&PathBuf>, args: &[String]) -> Result<Vec<String>> {
    let mut probe = pg_command("psql", passfile, args)?;
    probe.args(["-X", "-A", "-t", "-d", "postgres", "-c"]).arg(
        "SELECT concat_ws(',', \
           CASE WHEN EXISTS (SELECT 1 FROM pg_roles s \
             WHERE s.rolsuper AND pg_has_role(session_user, s.oid, 'MEMBER')) \
             THEN 'superuser' END, \
           CASE WHEN EXISTS (SELECT 1 FROM pg_roles s \
             WHERE s.rolcreaterole AND pg_has_role(session_user, s.oid, 'MEMBER')) \
             THEN 'CREATEROLE' END, \
           CASE WHEN pg_has_role(session_user, 'pg_execute_server_program', 'MEMBER') \
             THEN 'pg_execute_server_program' END, \
           CASE WHEN pg_has_role(session_user, 'pg_read_server_files', 'MEMBER') \
             THEN 'pg_read_server_files' END, \
           CASE WHEN pg_has_role(session_user, 'pg_write_server_files', 'MEMBER') \
             THEN 'pg_write_server_files' END)",
    );
    let held = query(probe)?;
    Ok(held
        .split(',')
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect())
}

fn pg_command(program: &str, passfile: Option<&PathBuf>, args: &[String]) -> Result<Command> {
    let p =
        find_program(program).ok_or_else(|| Error::Usage(format!("{program} is not installed")))?;
    let mut c = Command::new(p);
    c.args(args).env_remove("PGPASSWORD");
    if let Some(f) = passfile {
        c.env("PGPASSFILE", f);
    }
    Ok(c)
}

pub(super) fn into_postgres(
    source: &str,
    database: Option<&str>,
    force: bool,
    w: Walk<'_>,
    conn: PgConn<'_>,
    databases: &[String],
    warnings: &mut Vec<String>,
) -> Result<Walked> {
    let (passfile, args) = conn;
    let Walk {
        input,
        what,
        identities,
        authenticated,
    } = w;

    let from = match (database, databases) {
        (Some(d), dbs) if dbs.iter().any(|x| x == d) => d.to_owned(),
        (_, [only]) => only.clone(),
        _ => {
            return Err(Error::Usage(format!(
                "source {source:?} dumps {} databases: name the one to restore with --database",
                databases.len()
            )))
        }
    };
    let target = database.unwrap_or(&from).to_owned();
    check_name(&target)?;
    let held = if authenticated {
        Vec::new()
    } else {
        pg_server_privileges(passfile, args)?
    };
    if !held.is_empty() {
        return Err(Error::Usage(format!(
            "source {source:?} loads through a PostgreSQL role with {} on the whole server, \
             and the dump would run with it: a forged backup could run programs or read and \
             write files as the server's operating system account. Load through a role that \
             may only create and own databases (CREATE ROLE … LOGIN CREATEDB), restore a signed \
             backup with its signing public key (signing_public_key or --signing-key), or load \
             a backup you trust yourself: coffer restore … --stdout --member \
             postgres/{source}/{from}.dump | pg_restore -d …",
            held.join(" and ")
        )));
    }
    let mut probe = pg_command("psql", passfile, args)?;
    probe
        .args(["-X", "-A", "-t", "-d", "postgres", "-c"])
        .arg(format!(
            "SELECT count(*) FROM pg_database WHERE datname = '{target}'"
        ));
    let exists = query(probe)? == "1";
    if exists {
        let mut count = pg_command("psql", passfile, args)?;
        count.args(["-X", "-A", "-t", "-d", &target, "-c"]).arg(
                    "SELECT count(*) FROM pg_catalog.pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')",
                );
        let tables: u64 = query(count)?.parse().unwrap_or(0);
        if tables > 0 && !force {
            return Err(Error::Usage(format!(
                        "database {target} is not empty ({tables} tables); use --force to load into it anyway"
                    )));
        }
    } else {
        let mut create = pg_command("psql", passfile, args)?;
        create
            .args(["-X", "-d", "postgres", "-c"])
            .arg(format!("CREATE DATABASE \"{target}\""));
        query(create)?;
    }
    // Every failure from here on, a signal before the client starts
    // included, drops the database this load created.
    let mut statements = Vec::new();
    let member = format!("postgres/{source}/{from}.dump");
    let mut loader: Option<Loader> = None;
    let result = walk(input, identities, |m, data| {
        if m.name != member {
            return Ok(());
        }
        // A dump longer than a part comes in several: the next goes on
        // into the pg_restore the first started.
        if let Some(l) = loader.as_mut() {
            return l.feed(data, &target);
        }
        // The table of contents comes first: who owns what decides how
        // pg_restore is run, so it is read before the load starts.
        let mut prefix = Vec::new();
        data.take(prelude::PREFIX_MAX)
            .read_to_end(&mut prefix)
            .map_err(|e| WalkError::Io(format!("reading {member}: {e}")))?;
        let (restore, todo) = pg_restore_for(conn, &prefix, (&from, &target, &member), warnings)
            .map_err(|e| WalkError::Io(e.to_string()))?;
        statements = todo;
        let l = loader.insert(Loader::start(restore).map_err(|e| WalkError::Io(e.to_string()))?);
        l.feed(&mut io::Cursor::new(prefix).chain(data), &target)
    });
    let found = loader.is_some();
    let outcome = finish_load(result.map(|w| (w, found)), loader, what, &member);
    if outcome.is_ok() {
        apply_database_statements(conn, &target, &statements, warnings);
    }
    if outcome.is_err() && !exists {
        let mut drop_db = pg_command("psql", passfile, args)?;
        drop_db
            .args(["-X", "-d", "postgres", "-c"])
            .arg(format!("DROP DATABASE IF EXISTS \"{target}\""));
        let _ = query(drop_db);
    }
    outcome
}

/// Reads the dump's table of contents from the start of the member (see
/// [`prelude`]); `None` when pg_restore cannot (a table of contents longer
/// than the prefix).
fn pg_prelude(
    passfile: Option<&PathBuf>,
    args: &[String],
    prefix: &[u8],
    from: &str,
    target: &str,
) -> Option<prelude::Prelude> {
    let mut c = pg_command("pg_restore", passfile, args).ok()?;
    c.args(["--create", "--schema-only", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = c.spawn().ok()?;
    let mut stdin = child.stdin.take()?;
    let out = std::thread::scope(|s| {
        // pg_restore stops reading once it has the contents: a write into
        // the closed pipe is no error here.
        s.spawn(move || {
            let _ = io::Write::write_all(&mut stdin, prefix);
        });
        child.wait_with_output()
    })
    .ok()?;
    out.status
        .success()
        .then(|| prelude::parse(&String::from_utf8_lossy(&out.stdout), from, target))
}

/// Whether the dump's owners are kept (pg_restore without `--no-owner`),
/// and if not, the warning that says whose objects the loading role now
/// owns and why: only a superuser gives objects away, and only to roles
/// that exist.
fn pg_owners(
    passfile: Option<&PathBuf>,
    args: &[String],
    owners: &std::collections::BTreeSet<String>,
    target: &str,
) -> (bool, Option<String>) {
    let ask = |sql: &str| {
        let mut c = pg_command("psql", passfile, args).ok()?;
        c.args(["-X", "-A", "-t", "-d", "postgres", "-c", sql]);
        query(c).ok()
    };
    let Some(me) = ask("SELECT current_user || ' ' || (SELECT rolsuper::int FROM pg_roles WHERE rolname = current_user)") else {
        return (false, Some(format!("cannot ask the server which roles exist: the objects in {target} are owned by the loading role")));
    };
    let (me, superuser) = me.rsplit_once(' ').unwrap_or((me.as_str(), "0"));
    let others: Vec<&String> = owners.iter().filter(|o| o.as_str() != me).collect();
    if others.is_empty() {
        return (false, None);
    }
    let listed = |v: &[&String]| v.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ");
    if superuser != "1" {
        return (
            false,
            Some(format!(
                "objects the backup has owned by {} are owned by {me} in {target}: only a superuser can give objects to other roles",
                listed(&others)
            )),
        );
    }
    let roles: std::collections::BTreeSet<String> = ask("SELECT rolname FROM pg_roles")
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect();
    let missing: Vec<&String> = others
        .iter()
        .copied()
        .filter(|o| !roles.contains(*o))
        .collect();
    if missing.is_empty() {
        return (true, None);
    }
    (
        false,
        Some(format!(
            "objects the backup has owned by {} are owned by {me} in {target}: role {} does not exist on this server (create it, from the backup's globals member if it has one, and restore again to keep ownership)",
            listed(&others),
            listed(&missing)
        )),
    )
}

/// The pg_restore that loads a dump, as its table of contents (in
/// `prefix`) allows: owners kept where they can be. Returns it, and the
/// database's own comment and settings to apply after the load.
fn pg_restore_for(
    (passfile, args): PgConn<'_>,
    prefix: &[u8],
    (from, target, member): (&str, &str, &str),
    warnings: &mut Vec<String>,
) -> Result<(Command, Vec<String>)> {
    let mut restore = pg_command("pg_restore", passfile, args)?;
    let mut statements = Vec::new();
    if let Some(p) = pg_prelude(passfile, args, prefix, from, target) {
        let (keep, why) = pg_owners(passfile, args, &p.owners, target);
        if !keep {
            restore.arg("--no-owner");
        }
        warnings.extend(why);
        statements = p.statements;
        warnings.extend(
            p.skipped
                .iter()
                .map(|s| format!("not applied to {target} (it names another database): {s}")),
        );
    } else {
        restore.arg("--no-owner");
        warnings.push(format!(
            "{member}'s table of contents is longer than {} MiB: its objects are owned by the loading role, and the database's comment and settings are not restored",
            prelude::PREFIX_MAX >> 20
        ));
    }
    restore.args(["--exit-on-error", "-d", target]);
    Ok((restore, statements))
}

/// The database's own comment, settings and grants, which pg_restore
/// writes only into a database of the original name; one that the server
/// refuses (a setting only a superuser may make, a role that is not there)
/// is a warning. Each is one statement written anew from its tokens
/// ([`super::prelude`]), sent alone, its strings read as written (standard
/// strings, whatever the server's default).
fn apply_database_statements(
    (passfile, args): PgConn<'_>,
    target: &str,
    statements: &[String],
    warnings: &mut Vec<String>,
) {
    for statement in statements {
        let applied = pg_command("psql", passfile, args).and_then(|mut apply| {
            apply
                .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", target, "-c"])
                .arg(statement)
                .env("PGOPTIONS", "-c standard_conforming_strings=on");
            query(apply)
        });
        if let Err(e) = applied {
            warnings.push(format!("not applied to {target}: {statement}: {e}"));
        }
    }
}

/// How coffer reaches a PostgreSQL server: its passfile and client
/// arguments.
pub(super) type PgConn<'a> = (Option<&'a PathBuf>, &'a [String]);
