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
//! Its password reaches the client through a pipe read as an options file,
//! never argv or the environment.

use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use rand::RngCore;
use zeroize::Zeroizing;

use super::{mysql_client, mysql_program, query};
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

/// A string quoted for SQL, whatever the server's SQL mode.
fn quoted(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Runs statements as the configured account, sent on stdin (they may
/// hold the load account's password).
fn run_sql(options_file: Option<&PathBuf>, sql: &str) -> Result<String> {
    let mut c = mysql_client(options_file)?;
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
    let out = child
        .wait_with_output()
        .map_err(|e| Error::Usage(format!("cannot run the database client: {e}")))?;
    if !out.status.success() {
        return Err(Error::Store {
            store: "database".into(),
            message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// A database name as a GRANT takes it: `_` is a wildcard there.
fn grant_pattern(target: &str) -> String {
    target.replace('_', "\\_")
}

impl<'a> LoadAccount<'a> {
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
        let host = {
            let mut c = mysql_client(options_file)?;
            c.args(["-N", "-B", "-e", "SELECT SUBSTRING_INDEX(USER(), '@', -1)"]);
            query(c)?
        };
        let account = format!("{}@{}", quoted(&user), quoted(&host));
        let created = run_sql(
            options_file,
            &format!(
                "CREATE USER {account} IDENTIFIED BY {};\n\
                 GRANT ALL PRIVILEGES ON `{}`.* TO {account};\n",
                quoted(&password),
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

    /// The client that loads as the account: its options file is a pipe
    /// that holds the configured options file's settings (host, port,
    /// TLS), then the account's name and password. The returned handle
    /// must live until the client has started.
    pub(super) fn client(&self) -> Result<(Command, OwnedFd)> {
        let fail = |e: std::io::Error| Error::Usage(format!("cannot pass the load account: {e}"));
        let mut text = Zeroizing::new(String::new());
        if let Some(f) = self.options_file {
            let f = f.to_str().filter(|f| !f.contains('\n')).ok_or_else(|| {
                Error::Usage(format!("options file {}: name it plainly", f.display()))
            })?;
            text.push_str("!include ");
            text.push_str(f);
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
        c.arg(format!(
            "--defaults-extra-file=/dev/fd/{}",
            read.as_raw_fd()
        ));
        Ok((c, read))
    }

    /// Drops the account, or, when objects in the target run as it, locks
    /// it and says so.
    pub(super) fn finish(mut self, warnings: &mut Vec<String>) {
        self.done = true;
        let count = run_sql(
            self.options_file,
            &format!(
                "SELECT COUNT(*) FROM (\
                 SELECT DEFINER AS d FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = {t} \
                 UNION ALL SELECT DEFINER FROM information_schema.VIEWS WHERE TABLE_SCHEMA = {t} \
                 UNION ALL SELECT DEFINER FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = {t} \
                 UNION ALL SELECT DEFINER FROM information_schema.EVENTS WHERE EVENT_SCHEMA = {t}\
                 ) AS x WHERE d = {d};\n",
                t = quoted(&self.target),
                d = quoted(&self.definer)
            ),
        )
        .map(|n| n.parse::<u64>().unwrap_or(0));
        match count {
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
    fn quoting_keeps_a_host_inside_its_string() {
        assert_eq!(quoted("a'b\\c"), "'a\\'b\\\\c'");
    }
}
