//! Turning a configuration into the objects a run needs, with every check
//! that can fail before a byte is dumped.

use std::fs::OpenOptions;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::config::{self, Config};
use crate::envelope::Recipient;
use crate::error::{Error, Result};
use crate::fsutil;
use crate::pipeline::keys::load_recipients;
use crate::retention::Policy;
use crate::signing::{Signer, Verifier};
use crate::source::{
    CommandSource, FilesSource, MysqlSource, PostgresSource, Source, SqliteSource,
};
use crate::store::{Auth, LocalStore, S3Config, S3Store, SftpConfig, SftpStore, Store};

pub struct Job {
    pub config: Config,
    pub recipients: Vec<Recipient>,
    pub sources: Vec<Box<dyn Source>>,
    pub stores: Vec<Box<dyn Store>>,
    /// Whether retention applies in each store.
    pub prune: Vec<bool>,
    pub policy: Policy,
    pub signer: Option<Signer>,
    /// Stores left out of this run, by name, with why: their configuration
    /// (files, permissions, a directory that cannot be made) is not right.
    /// The other stores still get the backup; the run fails naming these.
    pub unready: Vec<(String, Error)>,
}

pub fn policy(c: &config::Job) -> Policy {
    Policy {
        keep_last: c.keep_last,
        keep_daily: c.keep_daily.unwrap_or(0),
        keep_weekly: c.keep_weekly.unwrap_or(0),
        keep_monthly: c.keep_monthly.unwrap_or(0),
    }
}

/// The secrets a source reads must be private (ssh's rule).
fn secret_files(c: &Config) -> Vec<PathBuf> {
    c.sources
        .iter()
        .filter_map(|s| match s {
            config::Source::Mysql { options_file, .. } => options_file.clone(),
            config::Source::Postgres { passfile, .. } => passfile.clone(),
            _ => None,
        })
        .chain(c.job.signing_key.clone())
        .collect()
}

/// The job's signing key, if it has one.
pub fn load_signer(c: &Config) -> Result<Option<Signer>> {
    let Some(path) = &c.job.signing_key else {
        return Ok(None);
    };
    let text = fsutil::read_secret(path)?;
    Signer::parse(&text)
        .map(Some)
        .map_err(|message| Error::Signing {
            path: path.clone(),
            message,
        })
}

/// A signing public key for `verify`, `restore` and `prune`. Whoever can
/// replace it decides which backups they believe, so it is held to the
/// same ownership rules as the configuration.
pub fn load_verifier(path: &Path) -> Result<Verifier> {
    fsutil::check_not_writable_by_others(path)?;
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, "read", e))?;
    Verifier::parse(&text).map_err(|message| Error::Signing {
        path: path.to_path_buf(),
        message,
    })
}

/// Whose signatures the job believes: `signing_public_key`, else the public
/// half of its own `signing_key` (the backup host's configuration): the
/// `.pub` file `coffer keygen` wrote beside it, or the key itself. A job
/// that signs never counts or deletes by an unsigned sidecar, whichever
/// command reads the store: `backup`, `prune`, `verify`, `list`, `restore`.
pub fn trusted_verifier(c: &Config) -> Result<Option<Verifier>> {
    if let Some(p) = &c.job.signing_public_key {
        return load_verifier(p).map(Some);
    }
    let Some(key) = &c.job.signing_key else {
        return Ok(None);
    };
    let mut public = key.clone().into_os_string();
    public.push(".pub");
    let public = PathBuf::from(public);
    if public.is_file() {
        return load_verifier(&public).map(Some);
    }
    let derived = load_signer(c).and_then(|s| {
        s.map(|s| {
            s.verifier().map_err(|message| Error::Signing {
                path: key.clone(),
                message,
            })
        })
        .transpose()
    });
    derived.map_err(|e| {
        Error::Usage(format!(
            "signing_key = {}: the job signs its backups, so only what its key signed is believed, \
             but neither {} nor the key can be read ({}); set signing_public_key to the signing \
             public key (the .pub file `coffer keygen --type signing` wrote)",
            key.display(),
            public.display(),
            crate::cli_chain(&e)
        ))
    })
}

fn build_source(s: &config::Source) -> Box<dyn Source> {
    match s.clone() {
        config::Source::Mysql {
            name,
            databases,
            all,
            options_file,
        } => Box::new(MysqlSource {
            name,
            databases,
            all,
            options_file,
        }),
        config::Source::Postgres {
            name,
            databases,
            globals,
            passfile,
            host,
            port,
            user,
            row_counts,
        } => Box::new(PostgresSource {
            name,
            databases,
            globals,
            passfile,
            host,
            port,
            user,
            row_counts,
        }),
        config::Source::Sqlite { path, .. } => Box::new(SqliteSource {
            name: s.name(),
            path,
        }),
        config::Source::Files { paths, .. } => Box::new(FilesSource {
            name: s.name(),
            paths,
        }),
        config::Source::Command { name, argv } => Box::new(CommandSource { name, argv }),
    }
}

pub fn build_stores(c: &Config) -> Vec<(Box<dyn Store>, bool)> {
    c.stores
        .iter()
        .map(|st| match st {
            config::Store::Local { path, prune, .. } => (
                Box::new(LocalStore::new(st.name(), path)) as Box<dyn Store>,
                *prune,
            ),
            config::Store::Sftp {
                host,
                port,
                user,
                identity,
                known_hosts,
                path,
                prune,
                timeout_secs,
                retries,
                ..
            } => {
                let auth = if identity == "agent" {
                    Auth::Agent
                } else {
                    Auth::KeyFile(PathBuf::from(identity))
                };
                let store = SftpStore::new(SftpConfig {
                    name: st.name(),
                    host: host.clone(),
                    port: *port,
                    user: user.clone(),
                    auth,
                    known_hosts: known_hosts.clone(),
                    path: path.clone(),
                    timeout: std::time::Duration::from_secs(*timeout_secs),
                    retries: *retries,
                });
                (Box::new(store) as Box<dyn Store>, *prune)
            }
            config::Store::S3 {
                endpoint,
                region,
                bucket,
                prefix,
                path_style,
                credentials,
                profile,
                prune,
                part_size_mib,
                parts_in_flight,
                object_lock_days,
                timeout_secs,
                retries,
                ..
            } => {
                let store = S3Store::new(S3Config {
                    name: st.name(),
                    endpoint: endpoint
                        .clone()
                        .unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com")),
                    region: region.clone(),
                    bucket: bucket.clone(),
                    prefix: prefix.clone(),
                    path_style: *path_style,
                    credentials: credentials.clone(),
                    profile: profile.clone(),
                    part_size: usize::try_from(*part_size_mib).unwrap_or(8) << 20,
                    parts_in_flight: usize::try_from(*parts_in_flight).unwrap_or(4),
                    retries: *retries,
                    timeout: std::time::Duration::from_secs(*timeout_secs),
                    object_lock_days: *object_lock_days,
                });
                (Box::new(store) as Box<dyn Store>, *prune)
            }
        })
        .collect()
}

/// The files a store depends on: (path, whether it is a secret).
fn store_files(st: &config::Store) -> Vec<(PathBuf, bool)> {
    match st {
        config::Store::Local { .. } => Vec::new(),
        config::Store::S3 { credentials, .. } => {
            credentials.iter().map(|c| (c.clone(), true)).collect()
        }
        config::Store::Sftp {
            identity,
            known_hosts,
            ..
        } => {
            let mut v = vec![(known_hosts.clone(), false)];
            if identity != "agent" {
                v.push((PathBuf::from(identity), true));
            }
            v
        }
    }
}

fn check_store_files(st: &config::Store) -> Result<()> {
    if let config::Store::Local { path, .. } = st {
        fsutil::require_dir_or_absent(path, "store directory")?;
    }
    for (path, secret) in store_files(st) {
        let what = match (secret, st) {
            (true, config::Store::S3 { .. }) => "S3 credentials file",
            (true, _) => "SSH identity",
            (false, _) => "known_hosts file",
        };
        fsutil::require_file(&path, what)?;
        if secret {
            fsutil::check_private(&path)?;
        } else {
            fsutil::check_not_writable_by_others(&path)?;
        }
    }
    Ok(())
}

/// Everything a backup run needs, checked. `create_dirs` makes missing local
/// store directories (not on a dry run).
pub fn prepare(config: Config, create_dirs: bool) -> Result<Job> {
    let missing = config.backup_problems();
    if !missing.is_empty() {
        return Err(Error::Check(missing));
    }
    for f in secret_files(&config) {
        fsutil::check_private(&f)?;
    }
    let recipients = load_recipients(&config.job.recipients, &[] as &[PathBuf])?;
    let signer = load_signer(&config)?;
    let sources = config.sources.iter().map(build_source).collect();
    // Every store and the lock's place are checked before any directory is
    // made: a refused run leaves nothing behind. A store whose files are not
    // right is left out of the run, not the whole night: the other stores
    // still get the backup (the run then fails naming it).
    let mut unready: Vec<(String, Error)> = Vec::new();
    for st in &config.stores {
        if let Err(e) = check_store_files(st) {
            unready.push((st.name(), e));
        }
    }
    if unready.len() == config.stores.len() {
        if let Some((_, e)) = unready.into_iter().next() {
            return Err(e);
        }
        return Err(Error::Usage("no store is configured".into()));
    }
    check_lock_dir(&config)?;
    for st in &config.stores {
        if let (true, config::Store::Local { path, .. }) = (create_dirs, st) {
            if unready.iter().any(|(n, _)| *n == st.name()) {
                continue;
            }
            if let Err(e) = LocalStore::new(st.name(), path).ensure_dir() {
                unready.push((st.name(), e.into()));
            }
        }
    }
    if unready.len() == config.stores.len() && !unready.is_empty() {
        return Err(unready.swap_remove(0).1);
    }
    let mut stores = Vec::new();
    let mut prune = Vec::new();
    for (st, p) in build_stores(&config) {
        if unready.iter().any(|(n, _)| n == st.name()) {
            continue;
        }
        stores.push(st);
        prune.push(p);
    }
    Ok(Job {
        policy: policy(&config.job),
        signer,
        config,
        recipients,
        sources,
        stores,
        prune,
        unready,
    })
}

/// Every problem `config check` can find, without running a backup.
pub fn check(config: &Config) -> Vec<String> {
    let mut problems = config.backup_problems();
    for f in secret_files(config) {
        if let Err(e) = fsutil::check_private(&f) {
            problems.push(format!(
                "{e}{}",
                e.hint().map(|h| format!(" ({h})")).unwrap_or_default()
            ));
        }
    }
    if let Err(e) = load_recipients(&config.job.recipients, &[] as &[PathBuf]) {
        problems.push(format!("recipients: {}", crate::cli_chain(&e)));
    }
    if let Err(e @ Error::Signing { .. }) = load_signer(config) {
        problems.push(format!("signing_key: {e}"));
    }
    if let Some(p) = &config.job.signing_public_key {
        if let Err(e) = load_verifier(p) {
            problems.push(format!("signing_public_key: {}", crate::cli_chain(&e)));
        }
    }
    for s in &config.sources {
        let src = build_source(s);
        for p in src.check() {
            problems.push(format!("{} source {:?}: {p}", src.kind(), src.name()));
        }
    }
    if let Err(e) = check_lock_dir(config) {
        let hint = e.hint().map(|h| format!(" ({h})")).unwrap_or_default();
        problems.push(format!("lock: {e}{hint}"));
    }
    for st in &config.stores {
        if let Err(e) = check_store_files(st) {
            let hint = e.hint().map(|h| format!(" ({h})")).unwrap_or_default();
            problems.push(format!("store {}: {e}{hint}", st.name()));
        }
        let config::Store::Local { path, .. } = st else {
            continue;
        };
        if path.exists() && !path.is_dir() {
            // Already reported by check_store_files.
            continue;
        }
        let probe = if path.exists() {
            path.clone()
        } else {
            path.parent().map(PathBuf::from).unwrap_or_default()
        };
        if probe.exists() && !probe.is_dir() {
            problems.push(format!(
                "store {}: {} is not a directory",
                st.name(),
                probe.display()
            ));
        } else if !probe.is_dir() {
            problems.push(format!(
                "store {}: {} does not exist",
                st.name(),
                probe.display()
            ));
        } else if rustix::fs::access(&probe, rustix::fs::Access::WRITE_OK).is_err() {
            problems.push(format!(
                "store {}: {} is not writable",
                st.name(),
                probe.display()
            ));
        }
    }
    problems
}

/// Held for the whole run; released when dropped (or when the process dies).
pub struct Lock(#[allow(dead_code)] std::fs::File);

/// The default lock directory: one only the running user can write, so that
/// no other local user can create or hold the lock and stop the backups (as
/// anyone could in the world-writable `/run/lock`).
fn default_lock_dir(
    root: bool,
    runtime_directory: Option<&std::ffi::OsStr>,
    xdg_runtime_dir: Option<&std::ffi::OsStr>,
    uid: u32,
) -> PathBuf {
    // systemd's RuntimeDirectory= (it may list several, colon-separated).
    let first = runtime_directory
        .and_then(|v| v.to_str())
        .and_then(|v| v.split(':').next())
        .filter(|v| !v.is_empty());
    if let Some(d) = first {
        return PathBuf::from(d);
    }
    if root {
        return PathBuf::from("/run/coffer");
    }
    match xdg_runtime_dir.filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => std::env::temp_dir().join(format!("coffer-{uid}")),
    }
}

/// Where the host keeps its own record of the last ledger entry it wrote:
/// `$STATE_DIRECTORY` (the unit's `StateDirectory=coffer`, kept between
/// runs), else beside the lock, which is private to coffer's user.
pub fn ledger_record_path(c: &Config) -> PathBuf {
    if let Some(d) = std::env::var_os("STATE_DIRECTORY").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join(format!("coffer-{}.ledger", c.job.name));
    }
    let mut p = lock_location(c).0.into_os_string();
    p.push(".ledger");
    PathBuf::from(p)
}

/// The lock file and whether its directory is coffer's own default (which it
/// may create).
fn lock_location(c: &Config) -> (PathBuf, bool) {
    if let Some(p) = &c.job.lock_file {
        return (p.clone(), false);
    }
    let dir = default_lock_dir(
        rustix::process::geteuid().is_root(),
        std::env::var_os("RUNTIME_DIRECTORY").as_deref(),
        std::env::var_os("XDG_RUNTIME_DIR").as_deref(),
        rustix::process::geteuid().as_raw(),
    );
    (dir.join(format!("coffer-{}.lock", c.job.name)), true)
}

/// Refuses a lock directory that someone else could write: whoever can
/// create the lock file can hold it and stop every run. An absent default
/// directory is fine (the run creates it, 0700).
pub fn check_lock_dir(c: &Config) -> Result<()> {
    let (path, default) = lock_location(c);
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let meta = match std::fs::metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && default => return Ok(()),
        Err(e) => return Err(Error::named(dir, "lock directory", e)),
    };
    let fix = if default {
        format!(
            "make {} a directory only you can write (chmod 700), or set lock_file in [job]",
            dir.display()
        )
    } else {
        "set lock_file in [job] to a path in a directory only coffer's user can write".into()
    };
    let me = rustix::process::geteuid().as_raw();
    let problem = if !meta.is_dir() {
        "is not a directory (the lock directory)".to_owned()
    } else if meta.uid() != me && meta.uid() != 0 {
        format!(
            "is owned by uid {}: another user could hold the run lock and stop the backups",
            meta.uid()
        )
    } else if meta.mode() & 0o022 != 0 {
        format!(
            "is writable by others (mode {:04o}): anyone could hold the run lock and stop the backups",
            meta.mode() & 0o7777
        )
    } else {
        return Ok(());
    };
    Err(Error::Fs(crate::fsutil::FsError::Permissions {
        path: dir.to_path_buf(),
        problem,
        fix,
    }))
}

pub fn lock(job: &Job) -> Result<Lock> {
    let (path, default) = lock_location(&job.config);
    if default {
        if let Some(dir) = path.parent() {
            // Not recursive: the parent of a runtime directory is the system's.
            match std::fs::DirBuilder::new().mode(0o700).create(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(Error::io(dir, "create the lock directory", e)),
            }
        }
    }
    check_lock_dir(&job.config)?;
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(|e| Error::io(&path, "open the lock file", e))?;
    let meta = f
        .metadata()
        .map_err(|e| Error::io(&path, "inspect the lock file", e))?;
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return Err(Error::Fs(crate::fsutil::FsError::Permissions {
            problem: format!(
                "is owned by uid {}, not by this user: someone else made the lock file",
                meta.uid()
            ),
            fix: format!(
                "check who made it; if no coffer is running, remove it: rm {}",
                path.display()
            ),
            path,
        }));
    }
    match rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(Lock(f)),
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => Err(Error::Locked {
            job: job.config.job.name.clone(),
            path,
        }),
        Err(e) => Err(Error::io(&path, "lock", e.into())),
    }
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::default_lock_dir;
    use std::ffi::OsStr;
    use std::path::PathBuf;

    #[test]
    fn the_default_lock_is_never_in_a_shared_directory() {
        let rt = Some(OsStr::new("/run/coffer:/run/other"));
        let xdg = Some(OsStr::new("/run/user/1000"));
        assert_eq!(
            default_lock_dir(true, None, None, 0),
            PathBuf::from("/run/coffer")
        );
        assert_eq!(
            default_lock_dir(true, None, xdg, 0),
            PathBuf::from("/run/coffer")
        );
        assert_eq!(
            default_lock_dir(false, rt, xdg, 999),
            PathBuf::from("/run/coffer")
        );
        assert_eq!(
            default_lock_dir(false, None, xdg, 1000),
            PathBuf::from("/run/user/1000")
        );
        assert_eq!(
            default_lock_dir(false, None, None, 1000),
            std::env::temp_dir().join("coffer-1000")
        );
        assert_ne!(
            default_lock_dir(true, None, None, 0),
            PathBuf::from("/run/lock")
        );
    }
}
