//! `coffer restore --into-db SOURCE`: stream a dump from a backup straight
//! into a database through the configured source's own credentials — the
//! `mariadb`/`mysql` client or `pg_restore` — never through a file.
//!
//! The target must be empty (or absent) unless `--force`; a target coffer
//! created is dropped again if the load fails.

mod account;
mod postgres;
mod prelude;
mod retarget;

use std::io::{self, Read};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::config::{self, Config};
use crate::envelope::Identity;
use crate::error::{Error, Result};
use crate::pipeline::plumbing::client::LoadClient;
use crate::pipeline::plumbing::sqlclient::{self, MysqlClient};
use crate::pipeline::restore::walk::{walk, WalkError, Walked};

use retarget::Retarget;
/// Database names become SQL identifiers and argv: keep them plain.
fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "database name {name:?}: use letters, digits and '_'"
        )))
    }
}

enum Engine {
    Mysql {
        options_file: Option<PathBuf>,
        /// The database the dump was made of (single-database dumps only).
        original: Option<String>,
    },
    Postgres {
        passfile: Option<PathBuf>,
        args: Vec<String>,
        databases: Vec<String>,
    },
}

fn engine(config: &Config, source: &str) -> Result<Engine> {
    let found = config.sources.iter().find(|s| s.name() == source);
    // The client runs with the restoring user's privileges and takes
    // settings (plugin-dir, default-auth) from the options file: it must be
    // a secret that only root or this user can change, as for a backup.
    if let Some(
        config::Source::Mysql {
            options_file: Some(f),
            ..
        }
        | config::Source::Postgres {
            passfile: Some(f), ..
        },
    ) = found
    {
        crate::fsutil::check_private(f)?;
    }
    match found {
        Some(config::Source::Mysql {
            options_file,
            databases,
            all,
            ..
        }) => Ok(Engine::Mysql {
            options_file: options_file.clone(),
            original: (!all && databases.len() == 1).then(|| databases[0].clone()),
        }),
        Some(config::Source::Postgres {
            passfile,
            host,
            port,
            user,
            databases,
            ..
        }) => {
            let mut args = vec!["--no-password".to_owned()];
            args.extend(host.iter().map(|h| format!("--host={h}")));
            args.extend(port.iter().map(|p| format!("--port={p}")));
            args.extend(user.iter().map(|u| format!("--username={u}")));
            Ok(Engine::Postgres {
                passfile: passfile.clone(),
                args,
                databases: databases.clone(),
            })
        }
        Some(other) => Err(Error::Usage(format!(
            "--into-db loads mysql or postgres sources; {source:?} is a {} source",
            other.kind()
        ))),
        None => Err(Error::Usage(format!(
            "no source named {source:?} in the configuration"
        ))),
    }
}

fn mysql_client(options_file: Option<&PathBuf>) -> Result<Command> {
    let mut c = mysql_program()?.command();
    if let Some(f) = options_file {
        c.arg(format!("--defaults-extra-file={}", f.display()));
    }
    Ok(c)
}

fn mysql_program() -> Result<&'static MysqlClient> {
    sqlclient::mysql_client()
        .ok_or_else(|| Error::Usage("neither mariadb nor mysql client is installed".into()))
}

/// A warning to show before loading SOURCE, if its client cannot be
/// sandboxed.
pub fn warning(config: &Config, source: &str) -> Option<String> {
    match engine(config, source) {
        Ok(Engine::Mysql { .. }) => sqlclient::mysql_client().and_then(MysqlClient::warning),
        _ => None,
    }
}

/// Runs a query and returns its trimmed output.
fn query(mut c: Command) -> Result<String> {
    answer(c.stdin(Stdio::null()).output())
}

/// A finished client's trimmed output, or its error output as the error.
fn answer(out: io::Result<std::process::Output>) -> Result<String> {
    let out = out.map_err(|e| Error::Usage(format!("cannot run the database client: {e}")))?;
    if !out.status.success() {
        return Err(Error::Store {
            store: "database".into(),
            message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

struct Loader {
    /// `None` once the client has quit and been waited for.
    client: Option<LoadClient>,
}

impl Loader {
    fn start(c: Command) -> Result<Self> {
        let client = LoadClient::spawn(c)
            .map_err(|e| Error::Usage(format!("cannot start the database client: {e}")))?;
        Ok(Loader {
            client: Some(client),
        })
    }

    /// Pipes a dump into the client.
    fn feed(&mut self, data: &mut dyn Read, target: &str) -> std::result::Result<(), WalkError> {
        let stdin = self
            .client
            .as_mut()
            .and_then(LoadClient::stdin)
            .ok_or_else(|| WalkError::Io("the database client is gone".into()))?;
        match io::copy(data, stdin) {
            Ok(_) => Ok(()),
            // The client quit, at an error in the dump: its own words say
            // why, where the broken pipe would not.
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                match self.client.take().map(LoadClient::finish) {
                    Some(Err(why)) => Err(WalkError::Io(format!("loading failed: {why}"))),
                    _ => Err(WalkError::Io(format!("loading into {target}: {e}"))),
                }
            }
            Err(e) => Err(WalkError::Io(format!("loading into {target}: {e}"))),
        }
    }

    fn finish(self) -> Result<()> {
        let client = self.client.ok_or_else(|| Error::Store {
            store: "database".into(),
            message: "the database client is gone".into(),
        })?;
        client.finish().map_err(|why| Error::Store {
            store: "database".into(),
            message: format!("loading failed: {why}"),
        })
    }
}

/// Loads the SOURCE's dump from the backup into `database`.
pub fn into_db(
    config: &Config,
    source: &str,
    database: Option<&str>,
    force: bool,
    walk_in: Walk<'_>,
) -> Result<Loaded> {
    let engine = engine(config, source)?;
    let mut warnings = Vec::new();
    // A signal stops the load (it terminates the client, and the walk's
    // reads fail) so that a database coffer created is dropped again,
    // rather than killing coffer with the load half done.
    crate::pipeline::plumbing::signals::stop_on_signals()?;
    let walk_in = Walk {
        input: Box::new(crate::cancel::CancelReader(walk_in.input)),
        ..walk_in
    };
    let loaded = match engine {
        Engine::Mysql {
            options_file,
            original,
        } => into_mysql(
            source,
            (database, original.as_ref()),
            force,
            walk_in,
            options_file.as_ref(),
            &mut warnings,
        ),
        Engine::Postgres {
            passfile,
            args,
            databases,
        } => postgres::into_postgres(
            source,
            database,
            force,
            walk_in,
            (passfile.as_ref(), &args),
            &databases,
            &mut warnings,
        ),
    };
    let walked = loaded.map_err(|e| {
        if crate::cancel::is_cancelled() {
            Error::Cancelled
        } else {
            e
        }
    })?;
    Ok(Loaded { walked, warnings })
}

/// A finished load: the backup as checked, and what the target did not
/// take as the source had it.
pub struct Loaded {
    pub walked: Walked,
    pub warnings: Vec<String>,
}

/// The backup to read, for the loaders.
pub struct Walk<'a> {
    pub input: Box<dyn Read + Send>,
    /// The backup's name, for messages.
    pub what: &'a str,
    pub identities: &'a [Identity],
    /// The backup host's signature was checked: the dump is its, not a
    /// forger's, and may run with the configured account's rights (an
    /// unsigned MariaDB/MySQL dump runs as a load account instead).
    pub authenticated: bool,
}

fn into_mysql(
    source: &str,
    (database, original): (Option<&str>, Option<&String>),
    force: bool,
    w: Walk<'_>,
    options_file: Option<&PathBuf>,
    warnings: &mut Vec<String>,
) -> Result<Walked> {
    let Walk {
        input,
        what,
        identities,
        authenticated,
    } = w;

    let target = match (database, original) {
        (Some(d), _) => d.to_owned(),
        (None, Some(o)) => (*o).clone(),
        (None, None) => {
            return Err(Error::Usage(format!(
                "source {source:?} dumps several databases; load them as they are with \
                         `coffer restore … --stdout --member mysql/{source}.sql | mariadb`"
            )))
        }
    };
    check_name(&target)?;
    let count = |sql: String| -> Result<u64> {
        let mut probe = mysql_client(options_file)?;
        probe.args(["-N", "-B", "-e"]).arg(sql);
        Ok(query(probe)?.parse().unwrap_or(0))
    };
    let existed = count(format!(
        "SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = '{target}'"
    ))? > 0;
    let tables = count(format!(
        "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = '{target}'"
    ))?;
    if tables > 0 && !force {
        return Err(Error::Usage(format!(
            "database {target} is not empty ({tables} tables); use --force to load into it anyway"
        )));
    }
    // A dump nothing vouches for runs as an account made for it (see
    // [`account`]); the backup host's own, as the configured account.
    let account = if authenticated {
        None
    } else {
        account::LoadAccount::check_target(options_file, &target)?;
        Some(account::LoadAccount::create(options_file, source, &target)?)
    };
    let mut create = mysql_client(options_file)?;
    create
        .arg("-e")
        .arg(format!("CREATE DATABASE IF NOT EXISTS `{target}`"));
    query(create)?;
    // Every failure from here on, a signal before the client starts
    // included, drops the database this load created.
    let outcome = (|| {
        let (mut client, pipe) = match &account {
            Some(a) => {
                let (c, pipe) = a.client()?;
                (c, Some(pipe))
            }
            None => (mysql_client(options_file)?, None),
        };
        client
            .args(mysql_program()?.dump_loader_args())
            .arg(&target);
        let mut loader = Loader::start(client)?;
        drop(pipe);
        let member = format!("mysql/{source}.sql");
        let first = account.as_ref().map(account::LoadAccount::first_statement);
        let (result, found) =
            feed_member(&mut loader, (input, identities), &member, &target, first);
        finish_load(result.map(|w| (w, found)), Some(loader), what, &member)
    })();
    if let (Err(_), Some(a)) = (&outcome, &account) {
        a.end_sessions();
    }
    if outcome.is_err() && !existed {
        let mut drop_db = mysql_client(options_file)?;
        drop_db
            .arg("-e")
            .arg(format!("DROP DATABASE IF EXISTS `{target}`"));
        let _ = query(drop_db);
    }
    if let (Ok(_), Some(a)) = (&outcome, account) {
        a.finish(warnings);
    }
    outcome
}

/// Walks the backup, handing `member` to `loader` through one rewrite
/// ([`Retarget`]) that reads all its parts: a dump longer than a part
/// comes in several, and a line may run from one into the next. `first`
/// (a load account's check) goes before the dump, and the dump's definers
/// become the load account. Returns the walk, the client's own words first
/// when it stopped the load, and whether the member was there.
fn feed_member<R: Read + Send>(
    loader: &mut Loader,
    (input, identities): (R, &[Identity]),
    member: &str,
    target: &str,
    first: Option<String>,
) -> (std::result::Result<Walked, WalkError>, bool) {
    let mut found = false;
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(4);
    let (result, fed) = std::thread::scope(|s| {
        let feeder = s.spawn(move || {
            let own = first.is_some();
            let first = io::Cursor::new(first.unwrap_or_default());
            let mut dump = Retarget::new(first.chain(Parts::new(rx)));
            if own {
                dump = dump.owning_definers();
            }
            loader.feed(&mut dump, target)
        });
        let result = walk(input, identities, |m, data| {
            if m.name == member {
                found = true;
                hand_over(data, &tx)?;
            }
            Ok(())
        });
        drop(tx);
        let fed = feeder
            .join()
            .unwrap_or_else(|_| Err(WalkError::Io("the loading thread failed".into())));
        (result, fed)
    });
    (fed.and(result), found)
}

/// A member's data, handed to the thread that loads it in pieces; an
/// error when that thread has stopped (its own error says why).
fn hand_over(
    data: &mut dyn Read,
    to: &std::sync::mpsc::SyncSender<Vec<u8>>,
) -> std::result::Result<(), WalkError> {
    loop {
        let mut piece = vec![0u8; 1 << 20];
        let n = match data.read(&mut piece) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(WalkError::Io(e.to_string())),
        };
        piece.truncate(n);
        to.send(piece)
            .map_err(|_| WalkError::Io("the database client is gone".into()))?;
    }
}

/// The pieces [`hand_over`] sends, read as one stream.
struct Parts {
    rx: std::sync::mpsc::Receiver<Vec<u8>>,
    piece: Vec<u8>,
    at: usize,
}

impl Parts {
    fn new(rx: std::sync::mpsc::Receiver<Vec<u8>>) -> Self {
        Parts {
            rx,
            piece: Vec::new(),
            at: 0,
        }
    }
}

impl Read for Parts {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.at == self.piece.len() {
            match self.rx.recv() {
                Ok(piece) => {
                    self.piece = piece;
                    self.at = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.piece.len() - self.at);
        out[..n].copy_from_slice(&self.piece[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

fn finish_load(
    result: std::result::Result<(Walked, bool), WalkError>,
    loader: Option<Loader>,
    what: &str,
    member: &str,
) -> Result<Walked> {
    match result {
        Ok((w, found)) => {
            let Some(loader) = loader.filter(|_| found) else {
                return Err(Error::Usage(format!("{what} has no member {member}")));
            };
            loader.finish()?;
            Ok(w)
        }
        Err(e) => {
            // Dropping the loader kills the client: nothing more is loaded.
            drop(loader);
            Err(e.into_error(what))
        }
    }
}
