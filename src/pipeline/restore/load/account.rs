//! The account an unsigned MariaDB/MySQL dump is loaded through. Anyone
//! with the backup public key can write such a dump, so it must not run
//! with the rights of the account the operator configured (which may be
//! root, or hold SET USER, FILE, or INSERT on the grant tables — a list of
//! dangerous privileges is never complete). coffer creates an account for
//! the load, with every privilege on the target database and nothing
//! else, loads through it, and drops it again.
//!
//! The dump's views, triggers, routines and events name who they run as
//! (`DEFINER=`); an unsigned dump does not get to choose, so those clauses
//! become `CURRENT_USER` (see [`super::retarget`]) and the objects run as
//! the load account. When any does, the account is kept, locked (no one can
//! log in as it), so that they keep working; the warning names it.
//!
//! Its password reaches the client through a pipe read as its only options
//! file (which includes the files the client would read, then names the
//! account last, and the name is on the command line too: a `~/.my.cnf` that
//! names root cannot win), never argv or the environment, and the server
//! is told only its hash (MariaDB writes `CREATE USER` to its general log as
//! sent). The dump's first statement stops the load unless it runs as the
//! account. Before the account or a database it made is dropped, its
//! sessions are killed: a dump's routine may run on after the client is
//! gone.

use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use rand::RngCore;
use zeroize::Zeroizing;

use super::{answer, mysql_client, mysql_program, query};
use crate::error::{Error, Result};

/// What every load account's name starts with, so an operator can tell
/// them apart (and find one a killed restore left behind).
pub(super) const PREFIX: &str = "coffer_load_";

pub(super) struct LoadAccount<'a> {
    options_file: Option<&'a PathBuf>,
    /// `'coffer_load_…'@'host'`, quoted for SQL.
    account: String,
    user: String,
    /// As the server's `DEFINER` columns spell it: `user@host`.
    definer: String,
    password: Zeroizing<String>,
    target: String,
    done: bool,
}

/// A string quoted for SQL: a quote doubled, which every SQL mode reads
/// alike. (What is quoted here holds no backslash, which
/// NO_BACKSLASH_ESCAPES would read otherwise: hex, names of letters, digits
/// and `_`, and the host name the server itself reported.)
fn quoted(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Runs statements as the configured account, sent on stdin (they may
/// hold the load account's password).
fn run_sql(options_file: Option<&PathBuf>, sql: &str) -> Result<String> {
    run_with(mysql_client(options_file)?, sql)
}

/// Runs statements through the client `c`, sent on stdin.
fn run_with(mut c: Command, sql: &str) -> Result<String> {
    c.args(["-N", "-B"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c
        .spawn()
        .map_err(|e| Error::Usage(format!("cannot run the database client: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A client that quit early says why on stderr.
        let _ = stdin.write_all(sql.as_bytes());
    }
    answer(child.wait_with_output())
}

/// MariaDB's `mysql_native_password` hash of `password`: `*` and the
/// upper-case hex of SHA1(SHA1(password)).
fn native_hash(password: &str) -> String {
    use sha1::{Digest, Sha1};
    let inner = Sha1::digest(password.as_bytes());
    format!("*{}", hex::encode_upper(Sha1::digest(inner)))
}

/// The options files the client reads by default, in its order (`mariadb
/// --help` lists them), with the configured one where it reads
/// `--defaults-extra-file`: each named so that `!include` takes it whole.
fn default_files(configured: Option<&PathBuf>) -> Result<Vec<String>> {
    let home = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".my.cnf"));
    let mut files: Vec<PathBuf> = ["/etc/my.cnf", "/etc/mysql/my.cnf"]
        .iter()
        .map(PathBuf::from)
        .filter(|f| f.is_file())
        .collect();
    files.extend(configured.cloned());
    files.extend(home.filter(|f| f.is_file()));
    files
        .iter()
        .map(|f| {
            f.to_str()
                .filter(|s| !s.contains('\n') && s.trim() == *s && !s.is_empty())
                .map(str::to_owned)
                .ok_or_else(|| {
                    Error::Usage(format!(
                        "options file {:?}: the load client cannot include a name with a \
                         newline or leading or trailing spaces; rename it",
                        f.display()
                    ))
                })
        })
        .collect()
}

/// A database name as a GRANT takes it: `_` is a wildcard there.
fn grant_pattern(target: &str) -> String {
    target.replace('_', "\\_")
}

impl<'a> LoadAccount<'a> {
    /// Refuses a target that holds code an unsigned dump could call or
    /// change (with ALTER ROUTINE and EXECUTE on it), running as whoever
    /// defined it, `--force` or not.
    pub(super) fn check_target(options_file: Option<&PathBuf>, target: &str) -> Result<()> {
        let t = quoted(target);
        let n = run_sql(
            options_file,
            &format!(
                "SELECT (SELECT COUNT(*) FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = {t}) \
                 + (SELECT COUNT(*) FROM information_schema.VIEWS WHERE TABLE_SCHEMA = {t}) \
                 + (SELECT COUNT(*) FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = {t}) \
                 + (SELECT COUNT(*) FROM information_schema.EVENTS WHERE EVENT_SCHEMA = {t});\n"
            ),
        )?;
        if n.parse::<u64>().unwrap_or(1) > 0 {
            return Err(Error::Usage(format!(
                "database {target} holds {n} routines, views, triggers or events, which run as \
                 whoever defined them: an unsigned dump loaded into it could call or change them \
                 (--force or not). Load it into a new database, or restore a signed backup"
            )));
        }
        Ok(())
    }

    /// Creates the account, with every privilege on `target` only.
    pub(super) fn create(
        options_file: Option<&'a PathBuf>,
        source: &str,
        target: &str,
    ) -> Result<Self> {
        let mut bytes = [0u8; 20];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        let user = format!("{PREFIX}{}", hex::encode(&bytes[..4]));
        let password = Zeroizing::new(hex::encode(&bytes[4..]));
        zeroize::Zeroize::zeroize(&mut bytes);
        // The host part the server sees this client connect from, so that
        // the load client (started the same way) logs in as the account.
        let said = {
            let mut c = mysql_client(options_file)?;
            c.args([
                "-N",
                "-B",
                "-e",
                "SELECT SUBSTRING_INDEX(USER(), '@', -1), VERSION() LIKE '%MariaDB%'",
            ]);
            query(c)?
        };
        let (host, mariadb) = said.rsplit_once('\t').unwrap_or((said.as_str(), "0"));
        let host = host.to_owned();
        if host.contains('\\') || host.is_empty() {
            return Err(Error::Usage(format!(
                "the server names this client's host {host:?}; coffer cannot make a load account for it"
            )));
        }
        let account = format!("{}@{}", quoted(&user), quoted(&host));
        // MariaDB logs the statement as sent: it gets the hash. (MySQL
        // rewrites passwords in its logs, and 8.0 has no such syntax.)
        let identified = if mariadb == "1" {
            format!("IDENTIFIED BY PASSWORD '{}'", native_hash(&password))
        } else {
            format!("IDENTIFIED BY {}", quoted(&password))
        };
        let created = run_sql(
            options_file,
            &format!(
                "CREATE USER {account} {identified};\n\
                 GRANT ALL PRIVILEGES ON `{}`.* TO {account};\n",
                grant_pattern(target)
            ),
        );
        let me = LoadAccount {
            options_file,
            definer: format!("{user}@{host}"),
            account,
            user,
            password,
            target: target.to_owned(),
            done: false,
        };
        if let Err(e) = created {
            drop(me);
            return Err(Error::Usage(format!(
                "an unsigned backup is loaded through an account coffer creates for the load, \
                 with privileges on {target} only, and source {source:?}'s account cannot create \
                 one ({}): grant that account CREATE USER and ALL ON `{target}`.* WITH GRANT \
                 OPTION, restore a signed backup with its signing public key (signing_public_key \
                 or --signing-key), or load a backup you trust yourself: coffer restore … \
                 --stdout --member mysql/{source}.sql | mariadb --binary-mode",
                crate::cli_chain(&e)
            )));
        }
        Ok(me)
    }

    /// The client that loads as the account: its only options file is a
    /// pipe that includes what the client reads by default (the global
    /// files, the configured options file, `~/.my.cnf`, in its order: host,
    /// port, TLS), then names the account and its password, last, so they
    /// win. The returned handle must live until the client has started.
    pub(super) fn client(&self) -> Result<(Command, OwnedFd)> {
        let fail = |e: std::io::Error| Error::Usage(format!("cannot pass the load account: {e}"));
        let mut text = Zeroizing::new(String::new());
        for f in default_files(self.options_file)? {
            text.push_str("!include ");
            text.push_str(&f);
            text.push('\n');
        }
        for line in [
            "[client]\nuser=",
            &self.user,
            "\npassword=",
            &self.password,
            "\n",
        ] {
            text.push_str(line);
        }
        // The read end is inherited by the client (no close-on-exec); the
        // write end is closed once the text is in the pipe, which holds far
        // more than these few lines.
        let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(|e| fail(e.into()))?;
        rustix::io::fcntl_setfd(&read, rustix::io::FdFlags::empty()).map_err(|e| fail(e.into()))?;
        std::fs::File::from(write)
            .write_all(text.as_bytes())
            .map_err(fail)?;
        let mut c = mysql_program()?.command();
        c.arg(format!("--defaults-file=/dev/fd/{}", read.as_raw_fd()))
            .arg(format!("--user={}", self.user));
        Ok((c, read))
    }

    /// The statement a load starts with: it fails, and with it the load,
    /// unless the dump runs as the account.
    pub(super) fn first_statement(&self) -> String {
        format!(
            "SELECT IF(CURRENT_USER() = {}, 1, (SELECT 1 UNION SELECT 2)) AS coffer_load_account;\n",
            quoted(&self.definer)
        )
    }

    /// Kills the account's sessions: a routine the dump started may run on
    /// after its client is gone (and make again what is dropped). As the
    /// account itself, which may always see and kill its own sessions
    /// (the configured account may not: that takes PROCESS and SUPER).
    pub(super) fn end_sessions(&self) {
        let as_account = |sql: &str| {
            let (c, pipe) = self.client()?;
            let out = run_with(c, sql);
            drop(pipe);
            out
        };
        let ids = as_account(
            "SELECT ID FROM information_schema.PROCESSLIST WHERE ID <> CONNECTION_ID();\n",
        )
        .unwrap_or_default();
        let mut kills = String::new();
        for id in ids
            .lines()
            .filter(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
        {
            kills.push_str("KILL CONNECTION ");
            kills.push_str(id);
            kills.push_str(";\n");
        }
        if !kills.is_empty() {
            let _ = as_account(&kills);
        }
    }

    /// Drops the account, or, when objects in the target run as it, locks
    /// it and says so.
    pub(super) fn finish(mut self, warnings: &mut Vec<String>) {
        self.done = true;
        let counts = run_sql(
            self.options_file,
            &format!(
                "SELECT COUNT(*), IFNULL(SUM(s = 'INVOKER'), 0) FROM (\
                 SELECT DEFINER AS d, SECURITY_TYPE AS s FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = {t} \
                 UNION ALL SELECT DEFINER, SECURITY_TYPE FROM information_schema.VIEWS WHERE TABLE_SCHEMA = {t} \
                 UNION ALL SELECT DEFINER, 'DEFINER' FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = {t} \
                 UNION ALL SELECT DEFINER, 'DEFINER' FROM information_schema.EVENTS WHERE EVENT_SCHEMA = {t}\
                 ) AS x WHERE d = {d};\n",
                t = quoted(&self.target),
                d = quoted(&self.definer)
            ),
        );
        let count = counts.map(|c| {
            let mut n = c.split('\t').map(|n| n.trim().parse::<u64>().unwrap_or(0));
            (n.next().unwrap_or(0), n.next().unwrap_or(0))
        });
        if let Ok((_, invokers)) = &count {
            if *invokers > 0 {
                warnings.push(format!(
                    "{invokers} routines or views in {} run with the rights of whoever calls \
                     them (SQL SECURITY INVOKER) and hold the unsigned dump's code: read them \
                     before an account with more rights than {} calls them",
                    self.target, self.account
                ));
            }
        }
        match count.map(|(all, _)| all) {
            Ok(0) => {
                if let Err(e) =
                    run_sql(self.options_file, &format!("DROP USER {};\n", self.account))
                {
                    warnings.push(format!(
                        "could not drop the load account {}: {e}; drop it by hand",
                        self.account
                    ));
                }
            }
            Ok(n) => {
                let locked = run_sql(
                    self.options_file,
                    &format!("ALTER USER {} ACCOUNT LOCK;\n", self.account),
                );
                warnings.push(format!(
                    "{n} views, triggers, routines or events in {} run as {} ({}, privileges on \
                     {} only), not as the backup named them: an unsigned dump does not choose who \
                     its code runs as. Give them their definers back from a signed backup, or \
                     recreate them as the account they should run as",
                    self.target,
                    self.account,
                    match locked {
                        Ok(_) => "locked: no one can log in as it".to_owned(),
                        Err(e) => format!("NOT locked ({e}): lock it by hand"),
                    },
                    self.target
                ));
            }
            Err(e) => warnings.push(format!(
                "cannot tell whether objects in {} run as the load account {} ({e}): it is left \
                 as it is; drop it by hand once nothing names it as definer",
                self.target, self.account
            )),
        }
    }
}

impl Drop for LoadAccount<'_> {
    /// A load that failed or was stopped: the account goes, with whatever
    /// it made (the database itself is dropped by the caller).
    fn drop(&mut self) {
        if !self.done {
            self.end_sessions();
            let _ = run_sql(
                self.options_file,
                &format!("DROP USER IF EXISTS {};\n", self.account),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grant_patterns_match_only_the_target() {
        assert_eq!(grant_pattern("shop_2026"), "shop\\_2026");
        assert_eq!(grant_pattern("plain"), "plain");
    }

    #[test]
    fn the_native_hash_is_mariadbs() {
        // SELECT PASSWORD('coffer') on MariaDB 10.11.
        assert_eq!(
            native_hash("coffer"),
            "*CBA23DBEC99C38EFB704F995082D8B832FED4BA0"
        );
    }

    #[test]
    fn quoting_keeps_a_host_inside_its_string() {
        assert_eq!(quoted("it's"), "'it''s'");
    }
}
