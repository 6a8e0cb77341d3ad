//! The TOML configuration (DESIGN.md): parsed strictly — an unknown key is an
//! error naming the file, line and key, with a suggestion for typos.

mod error;
mod store;

use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use crate::archive::Compression;
use crate::fsutil::FsError;
use error::suggestion;
pub use error::{ConfigError, LoadError};
pub use store::Store;
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub job: Job,
    /// Needed to back up; `list` and `prune` need none.
    #[serde(rename = "source", default)]
    pub sources: Vec<Source>,
    #[serde(rename = "store", default)]
    pub stores: Vec<Store>,
}

fn default_keep_last() -> u32 {
    7
}

fn default_max_age_hours() -> u32 {
    26
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Job {
    /// Used in backup file names: letters, digits, `-`, `_`, `.`.
    pub name: String,
    /// RSA public key PEM files, age recipients, or files of them. Needed to
    /// back up; `list` and `prune` (e.g. on the backup server) need none.
    #[serde(default)]
    pub recipients: Vec<String>,
    #[serde(default)]
    pub compression: Compression,
    #[serde(default = "default_keep_last")]
    pub keep_last: u32,
    #[serde(default)]
    pub keep_daily: Option<u32>,
    #[serde(default)]
    pub keep_weekly: Option<u32>,
    #[serde(default)]
    pub keep_monthly: Option<u32>,
    /// Where the run lock lives, in a directory only coffer's user can write;
    /// default `coffer-{name}.lock` in `$RUNTIME_DIRECTORY`, else
    /// `/run/coffer` for root, else `$XDG_RUNTIME_DIR` or `$TMPDIR/coffer-UID`.
    #[serde(default)]
    pub lock_file: Option<PathBuf>,
    /// A minisign secret key (unencrypted, mode 0600): each sidecar gets a
    /// detached `.minisig` signature.
    #[serde(default)]
    pub signing_key: Option<PathBuf>,
    /// The matching public key: `verify`, `restore` and `prune` then believe
    /// only what it signed.
    #[serde(default)]
    pub signing_public_key: Option<PathBuf>,
    /// Says, explicitly, that this job's backups are not signed: a backup
    /// needs a `signing_key` unless this is true (see `UNSIGNED_COST`).
    #[serde(default)]
    pub unsigned: bool,
    /// A dump program that writes nothing for this long (blocked behind a
    /// lock, a server that stopped answering) is stopped and the run fails:
    /// a nightly run must end, and end loudly. 0 turns this off.
    #[serde(default = "default_dump_stall_secs")]
    pub dump_stall_secs: u64,
    /// `verify` fails when a store's newest backup is older than this.
    #[serde(default = "default_max_age_hours")]
    pub max_age_hours: u32,
    /// A command (argv, no shell) run after a successful backup, with the
    /// run's summary as JSON on stdin.
    #[serde(default)]
    pub on_success: Vec<String>,
    /// The same, after a failed backup.
    #[serde(default)]
    pub on_failure: Vec<String>,
}

/// What a job without signatures gives up, said wherever it is chosen.
pub const UNSIGNED_COST: &str = "whoever holds the public backup key (a backup server among them) can \
     plant a backup that restore, verify and prune cannot tell from this host's; a store that missed \
     a night is not refilled; loading into a database, drills and `restore --force` then need \
     --trust-unsigned";

impl<'de> Deserialize<'de> for Compression {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Compression::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum Source {
    /// mariadb-dump / mysqldump, credentials only through an options file.
    Mysql {
        name: String,
        #[serde(default)]
        databases: Vec<String>,
        #[serde(default)]
        all: bool,
        /// `[client]` user/password/host/port/socket; mode 0600.
        options_file: Option<PathBuf>,
    },
    /// pg_dump --format=custom per database; pg_dumpall --globals-only.
    Postgres {
        name: String,
        #[serde(default)]
        databases: Vec<String>,
        #[serde(default)]
        globals: bool,
        /// A libpq passfile (host:port:db:user:password), mode 0600.
        passfile: Option<PathBuf>,
        host: Option<String>,
        port: Option<u16>,
        user: Option<String>,
        /// Exact per-table row counts in the dump's snapshot (a `count(*)`,
        /// so a full read, of every table); `false` to skip them.
        #[serde(default = "yes")]
        row_counts: bool,
    },
    /// A consistent online copy of a live SQLite database.
    Sqlite { name: Option<String>, path: PathBuf },
    /// Files and directories (globs allowed), with modes, owners and mtimes.
    Files {
        name: Option<String>,
        paths: Vec<String>,
    },
    /// Any program's standard output.
    Command { name: String, argv: Vec<String> },
}

impl Source {
    /// The source's name, unique within a job; used in archive member names.
    pub fn name(&self) -> String {
        match self {
            Source::Mysql { name, .. }
            | Source::Postgres { name, .. }
            | Source::Command { name, .. } => name.clone(),
            Source::Sqlite { name, path } => name.clone().unwrap_or_else(|| {
                path.file_stem()
                    .map_or_else(|| "sqlite".into(), |s| s.to_string_lossy().into_owned())
            }),
            Source::Files { name, .. } => name.clone().unwrap_or_else(|| "files".into()),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Source::Mysql { .. } => "mysql",
            Source::Postgres { .. } => "postgres",
            Source::Sqlite { .. } => "sqlite",
            Source::Files { .. } => "files",
            Source::Command { .. } => "command",
        }
    }
}

fn default_dump_stall_secs() -> u64 {
    1800
}

fn yes() -> bool {
    true
}

/// A job or source name goes into file and member names (backups, the
/// lock, archive members): letters, digits, `-`, `_` and `.`, not starting
/// with a dot, so never a path.
pub fn check_job_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "job name {name:?} must be 1-64 letters, digits, '-', '_' or '.'"
        ))
    }
}

impl Config {
    /// Parses `text` (read from `path`, named in errors) and checks what can be
    /// checked without touching the system.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            let message = e.message().trim().to_owned();
            ConfigError {
                path: path.to_path_buf(),
                line,
                hint: suggestion(&message),
                message,
            }
        })?;
        config.validate().map_err(|message| ConfigError {
            path: path.to_path_buf(),
            line: None,
            message,
            hint: None,
        })?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        check_job_name(&self.job.name)?;
        if self.job.unsigned {
            if let Some(which) = [
                ("signing_key", &self.job.signing_key),
                ("signing_public_key", &self.job.signing_public_key),
            ]
            .iter()
            .find_map(|(n, k)| k.as_ref().map(|_| n))
            {
                return Err(format!(
                    "[job] says unsigned = true and also sets {which}: keep one (signed is the default)"
                ));
            }
        }
        if self.stores.is_empty() {
            return Err("no [[store]]: nowhere to keep backups".into());
        }
        if self.job.keep_last == 0
            && self.job.keep_daily.unwrap_or(0) == 0
            && self.job.keep_weekly.unwrap_or(0) == 0
            && self.job.keep_monthly.unwrap_or(0) == 0
        {
            return Err("retention keeps nothing: keep_last must be at least 1".into());
        }
        let mut seen = std::collections::HashSet::new();
        for s in &self.sources {
            let name = s.name();
            if check_job_name(&name).is_err() {
                return Err(format!(
                    "{} source name {name:?} must be letters, digits, '-', '_' or '.'",
                    s.kind()
                ));
            }
            // `command/NAME.000000` would read back as part 0 of a split
            // stream `command/NAME`, and the backup would never restore.
            if matches!(s, Source::Command { .. })
                && crate::archive::split_part(&format!("command/{name}")).is_some()
            {
                return Err(format!(
                    "command source name {name:?} must not end in '.' and six digits (the form of a split dump's parts)"
                ));
            }
            if !seen.insert((s.kind(), name.clone())) {
                return Err(format!("two {} sources are named {name:?}", s.kind()));
            }
            match s {
                Source::Mysql { databases, all, .. } if databases.is_empty() != *all => {
                    return Err(format!(
                        "mysql source {name:?}: give either databases = [...] or all = true"
                    ));
                }
                Source::Postgres {
                    databases, globals, ..
                } if databases.is_empty() && !globals => {
                    return Err(format!(
                        "postgres source {name:?}: give databases = [...] and/or globals = true"
                    ));
                }
                Source::Files { paths, .. } if paths.is_empty() => {
                    return Err(format!("files source {name:?}: paths is empty"));
                }
                Source::Command { argv, .. } if argv.is_empty() => {
                    return Err(format!("command source {name:?}: argv is empty"));
                }
                _ => {}
            }
        }
        let mut store_names = std::collections::HashSet::new();
        for st in &self.stores {
            if !store_names.insert(st.name()) {
                return Err(format!("two stores are named {:?}", st.name()));
            }
            st.check_s3()?;
        }
        Ok(())
    }
}

impl Config {
    /// What a backup needs beyond what `list` and `prune` need.
    pub fn backup_problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.job.recipients.is_empty() {
            p.push("[job] recipients is empty: backups must be sealed to a key".into());
        }
        if self.sources.is_empty() {
            p.push("no [[source]]: nothing to back up".into());
        }
        if let (None, Some(public)) = (&self.job.signing_key, &self.job.signing_public_key) {
            p.push(format!(
                "[job] has signing_public_key ({}) but no signing_key: this configuration checks \
                 backups (restore, verify, prune) and cannot make them; the backup host's \
                 configuration sets signing_key",
                public.display()
            ));
        } else if self.job.signing_key.is_none() && !self.job.unsigned {
            p.push(format!(
                "[job] has no signing_key: backups are signed by default. Make one with \
                 `coffer keygen --type signing -o /etc/coffer/signing.key` and set \
                 signing_key = \"/etc/coffer/signing.key\" (its .pub goes to where you restore and \
                 verify), or set unsigned = true to accept that {UNSIGNED_COST}"
            ));
        }
        // Two local stores in one directory would each find the other's
        // upload in the way, every night.
        let mut dirs: Vec<(String, PathBuf)> = Vec::new();
        for st in &self.stores {
            if let Store::Local { path, .. } = st {
                let dir = std::fs::canonicalize(path).unwrap_or_else(|_| path.clone());
                if let Some((other, _)) = dirs.iter().find(|(_, d)| *d == dir) {
                    p.push(format!(
                        "stores {other:?} and {:?} are the same directory {}: keep one",
                        st.name(),
                        dir.display()
                    ));
                }
                dirs.push((st.name(), dir));
            }
        }
        p
    }

    /// Reads, checks (a config others can modify is refused) and parses the
    /// configuration; relative paths in it are taken from its directory.
    pub fn load(path: &Path) -> Result<Config, LoadError> {
        if !path.exists() {
            return Err(FsError::Named {
                path: path.to_path_buf(),
                problem: "no such file (the configuration)".into(),
                fix: "give the configuration with -c FILE or in COFFER_CONFIG (the default is /etc/coffer/coffer.toml)".into(),
            }
            .into());
        }
        crate::fsutil::check_not_writable_by_others(path)?;
        let text =
            std::fs::read_to_string(path).map_err(|e| FsError::named(path, "configuration", e))?;
        let mut c = Config::parse(path, &text)?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let base = std::path::absolute(dir).map_err(|e| FsError::io(dir, "resolve", e))?;
        c.resolve_paths(&base);
        Ok(c)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        for r in &mut self.job.recipients {
            let looks_like_key =
                r.starts_with("age1") || r.starts_with("ssh-") || r.starts_with("ecdsa-");
            if !looks_like_key && Path::new(r).is_relative() {
                *r = base.join(&*r).display().to_string();
            }
        }
        for k in [&mut self.job.signing_key, &mut self.job.signing_public_key]
            .into_iter()
            .flatten()
        {
            fix(k);
        }
        if let Some(l) = &mut self.job.lock_file {
            fix(l);
        }
        for s in &mut self.sources {
            match s {
                Source::Mysql { options_file, .. } => options_file.iter_mut().for_each(fix),
                Source::Postgres { passfile, .. } => passfile.iter_mut().for_each(fix),
                Source::Sqlite { path, .. } => fix(path),
                Source::Files { paths, .. } => {
                    for p in paths {
                        if Path::new(p).is_relative() {
                            *p = base.join(&*p).display().to_string();
                        }
                    }
                }
                Source::Command { .. } => {}
            }
        }
        for st in &mut self.stores {
            match st {
                Store::Local { path, .. } => fix(path),
                Store::Sftp {
                    identity,
                    known_hosts,
                    ..
                } => {
                    fix(known_hosts);
                    if identity != "agent" && Path::new(identity.as_str()).is_relative() {
                        *identity = base.join(&*identity).display().to_string();
                    }
                }
                Store::S3 { credentials, .. } => credentials.iter_mut().for_each(fix),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[job]
name = "production"
recipients = ["/etc/coffer/backup.pem"]
compression = "zstd:19"
keep_last = 7

[[source]]
type = "mysql"
name = "main"
databases = ["production"]
options_file = "/etc/coffer/my.cnf"

[[source]]
type = "sqlite"
path = "/var/lib/app/app.db"

[[store]]
type = "local"
path = "/var/backups/coffer"
"#;

    #[test]
    fn parses_the_design_example() {
        let c = Config::parse(Path::new("c.toml"), GOOD).unwrap();
        assert_eq!(c.job.compression, Compression::Zstd(19));
        assert_eq!(c.sources[1].name(), "app");
        assert!(c.stores[0].prune());
    }

    #[test]
    fn unknown_key_names_line_and_suggests() {
        let bad = GOOD.replace("recipients =", "recipents =");
        let e = Config::parse(Path::new("c.toml"), &bad).unwrap_err();
        assert_eq!(e.line, Some(4));
        assert!(
            e.message.contains("unknown field `recipents`"),
            "{}",
            e.message
        );
        assert_eq!(e.hint.as_deref(), Some("did you mean `recipients`?"));
        let bad = GOOD.replace("options_file", "option_file");
        let e = Config::parse(Path::new("c.toml"), &bad).unwrap_err();
        assert_eq!(e.hint.as_deref(), Some("did you mean `options_file`?"));
    }

    #[test]
    fn two_local_stores_in_one_directory_are_a_problem() {
        let d = tempfile::tempdir().unwrap();
        let two = |a: &str, b: &str| {
            let text = format!(
                "{GOOD}\n[[store]]\ntype = \"local\"\nname = \"a\"\npath = \"{}\"\n\
                 [[store]]\ntype = \"local\"\nname = \"b\"\npath = \"{}\"\n",
                d.path().join(a).display(),
                d.path().join(b).display()
            );
            Config::parse(Path::new("t.toml"), &text)
                .unwrap()
                .backup_problems()
        };
        std::fs::create_dir(d.path().join("x")).unwrap();
        std::os::unix::fs::symlink(d.path().join("x"), d.path().join("y")).unwrap();
        assert!(two("x", "y").iter().any(|p| p.contains("same directory")));
        assert!(two("x", "x").iter().any(|p| p.contains("same directory")));
        assert!(two("x", "z").iter().all(|p| !p.contains("same directory")));
    }

    #[test]
    fn s3_store_checks() {
        let s3 = |extra: &str| {
            format!(
                "{GOOD}\n[[store]]\ntype = \"s3\"\nbucket = \"backups\"\nprefix = \"db1/prod\"\n{extra}\n"
            )
        };
        let c =
            Config::parse(Path::new("c"), &s3("endpoint = \"https://s3.example.com\"")).unwrap();
        assert_eq!(c.stores[1].name(), "s3://backups/db1/prod");
        assert!(c.stores[1].prune());
        assert!(Config::parse(Path::new("c"), &s3("endpoint = \"http://127.0.0.1:3900\"")).is_ok());
        let e =
            Config::parse(Path::new("c"), &s3("endpoint = \"http://s3.example.com\"")).unwrap_err();
        assert!(e.message.contains("use https"), "{}", e.message);
        let e = Config::parse(Path::new("c"), &s3("part_size_mib = 4")).unwrap_err();
        assert!(e.message.contains("5 MiB"), "{}", e.message);
        let e = Config::parse(Path::new("c"), &s3("object_lock_days = 0")).unwrap_err();
        assert!(e.message.contains("object_lock_days"), "{}", e.message);
        let bad_prefix = s3("").replace("db1/prod", "/db1/");
        assert!(Config::parse(Path::new("c"), &bad_prefix).is_err());
        let e = Config::parse(Path::new("c"), &s3("secret_access_key = \"x\"")).unwrap_err();
        assert!(e.message.contains("unknown field"), "{}", e.message);
    }

    #[test]
    fn semantic_errors() {
        let bad = GOOD.replace("databases = [\"production\"]", "");
        assert!(Config::parse(Path::new("c"), &bad)
            .unwrap_err()
            .message
            .contains("either databases"));
        let bad = GOOD.replace("name = \"production\"", "name = \"../x\"");
        assert!(Config::parse(Path::new("c"), &bad).is_err());
    }
}
