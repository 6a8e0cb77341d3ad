use std::path::PathBuf;

use crate::config::Config;
use crate::error::Error;
use crate::manifest::Sidecar;
use crate::pipeline::catalog::locate::{is_file, Catalog};
use crate::pipeline::keys::load_identities;
use crate::pipeline::plumbing::io::Output;
use crate::pipeline::restore::{restore, stage, Expect, Target};
use crate::signing::SIGNATURE_SUFFIX;

// Command-line flags: each bool is one switch the operator types.
#[allow(clippy::struct_excessive_bools)]
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["to", "stdout", "into_db"])))]
pub struct Args {
    /// The configuration naming the stores (not needed for a FILE)
    #[arg(short = 'c', long, value_name = "CONFIG", env = "COFFER_CONFIG")]
    config: Option<PathBuf>,
    /// The private key(s)
    #[arg(
        short = 'i',
        long = "identity",
        value_name = "IDENTITY",
        required = true
    )]
    identities: Vec<PathBuf>,
    /// A .coffer file, a backup name from `coffer list`, or `latest`
    what: String,
    /// Extract into this directory (created if missing)
    #[arg(long, value_name = "DIR")]
    to: Option<PathBuf>,
    /// Load the dump of this configured mysql or postgres source straight into its server
    #[arg(long, value_name = "SOURCE", requires = "config")]
    into_db: Option<String>,
    /// With --into-db: the database to load into (default: the one dumped)
    #[arg(long, requires = "into_db", value_name = "NAME")]
    database: Option<String>,
    /// Replace existing files in DIR, or load into a database that is not empty
    #[arg(long)]
    force: bool,
    /// If writing into DIR fails (a full disk), keep what was written instead
    /// of removing it (what a damaged archive wrote is removed all the same)
    #[arg(long, requires = "to")]
    keep_partial: bool,
    /// Write to stdout: one member with --member, else the whole tar archive
    #[arg(long)]
    stdout: bool,
    /// The backup host's signing public key (minisign): only a backup whose
    /// sidecar it signed is restored (default: the config's signing_public_key,
    /// else the public half of its signing_key)
    #[arg(long, value_name = "FILE")]
    signing_key: Option<PathBuf>,
    /// Load (--into-db) or replace files (--force) from a backup whose
    /// origin cannot be checked (no signing key): anyone with the public
    /// backup key could have made it
    #[arg(long)]
    trust_unsigned: bool,
    /// The member to write, e.g. mysql/main.sql (split dumps are joined)
    #[arg(long, requires = "stdout", value_name = "NAME")]
    member: Option<String>,
}

/// The sidecar beside a sealed file on disk (`X.coffer.json` beside
/// `X.coffer`), read once, with its signature checked when one is required.
fn sidecar_beside(
    file: &str,
    verifier: Option<&crate::signing::Verifier>,
) -> anyhow::Result<Option<Expect>> {
    let path = format!("{file}.json");
    // The cap every store listing applies (FORMAT.md §6).
    let cap = crate::pipeline::catalog::SIDECAR_MAX as u64;
    let raw = match crate::fsutil::read_regular(std::path::Path::new(&path), cap) {
        Ok(raw) => raw,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && verifier.is_none() => {
            return Ok(None)
        }
        Err(e) => {
            let hint = if verifier.is_some() {
                " (a signing public key is configured: the signed sidecar must lie beside the file)"
            } else {
                ""
            };
            return Err(Error::Integrity {
                what: file.to_owned(),
                message: format!("cannot read its sidecar {path}: {e}{hint}"),
            }
            .into());
        }
    };
    // The signature first: nothing an unchecked sidecar says is parsed.
    let mut signed_comment = None;
    if let Some(v) = verifier {
        let sig_path = format!("{path}{SIGNATURE_SUFFIX}");
        let sig = crate::fsutil::read_regular(std::path::Path::new(&sig_path), 64 * 1024).map_err(
            |e| Error::Integrity {
                what: file.to_owned(),
                message: format!("unsigned: cannot read {sig_path}: {e}"),
            },
        )?;
        let comment = v
            .verify(&raw, &String::from_utf8_lossy(&sig))
            .map_err(|e| Error::Integrity {
                what: path.clone(),
                message: format!("signature: {e}"),
            })?;
        signed_comment = Some(comment);
    }
    let sidecar = Sidecar::parse(&raw).map_err(|message| Error::Integrity {
        what: path.clone(),
        message,
    })?;
    // The signed name must be this file's: a server that renames an older
    // backup's three files to a newer name changes nothing that is signed.
    let base = std::path::Path::new(file)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if base != sidecar.sealed_name() {
        return Err(Error::Integrity {
            what: file.to_owned(),
            message: format!(
                "its sidecar describes {}, not {base} (restore the file under its own name)",
                sidecar.sealed_name()
            ),
        }
        .into());
    }
    // A signature made for another sidecar, moved beside this one.
    if let Some(comment) = signed_comment {
        crate::signing::check_comment(&comment, &sidecar.file_name()).map_err(|e| {
            Error::Integrity {
                what: path.clone(),
                message: format!("signature: {e}"),
            }
        })?;
    }
    Ok(Some(Expect::of(&sidecar)))
}

/// One copy of the backup to read: the sealed file, its name for messages,
/// its size, and what its sidecar says it is.
type Opened = (
    Box<dyn std::io::Read + Send>,
    String,
    Option<u64>,
    Option<Expect>,
);

/// The backup chosen and authenticated.
struct Staged {
    /// The checked private copy.
    copy: std::fs::File,
    /// Its name, for messages.
    what: String,
    /// What its sidecar says it is.
    expect: Option<Expect>,
    /// For `latest`: newer backups whose every copy failed authentication.
    passed_over: Vec<String>,
}

/// Finds the backup `a.what` names and authenticates a copy of it. For
/// `latest`, a backup whose every copy fails authentication is passed over,
/// and said to be, for the next newest: a damaged or rolled-back newest file
/// is refused the same way whether or not its size gives it away.
fn stage_backup(
    a: &Args,
    config: Option<&Config>,
    verifier: Option<&crate::signing::Verifier>,
    identities: &[crate::envelope::Identity],
    thorough: bool,
    out: &super::Output,
) -> anyhow::Result<Staged> {
    // With a configuration, `latest` is the keyword whatever lies in the
    // working directory (a file of that name is `./latest`).
    if is_file(&a.what) && !(config.is_some() && a.what == "latest") {
        let expect = sidecar_beside(&a.what, verifier)?;
        let f = std::fs::File::open(&a.what).map_err(|e| Error::io(&a.what, "open", e))?;
        let total = f.metadata().ok().map(|m| m.len());
        warn_unsigned(verifier, &a.what, out);
        let copy = (
            Box::new(std::io::BufReader::new(f)) as Box<dyn std::io::Read + Send>,
            a.what.clone(),
            total,
            expect,
        );
        let (copy, what, expect) = stage_first_good(vec![copy], identities, thorough, out)?;
        return Ok(Staged {
            copy,
            what,
            expect,
            passed_over: Vec::new(),
        });
    }
    let Some(config) = config else {
        return Err(Error::Usage(format!(
            "{:?} is not a file; give -c CONFIG to find it in the stores",
            a.what
        ))
        .into());
    };
    let catalog = Catalog::load(config)?;
    for u in &catalog.unreachable {
        out.warn(u);
    }
    let mut skip: Vec<String> = Vec::new();
    let mut told = std::collections::HashSet::new();
    let mut newest_failure: Option<Error> = None;
    loop {
        let found = match catalog.find_skipping(&config.job.name, &a.what, verifier, &skip) {
            Ok(found) => found,
            // Nothing older passes either: the newest's failure says most.
            Err(e) => return Err(newest_failure.unwrap_or(e).into()),
        };
        for p in &found.passed_over {
            if told.insert(p.clone()) {
                out.warn(&format!("passed over {p}"));
            }
        }
        let name = found.sidecar.name.clone();
        let newer = found.newer_by_time.clone();
        let copies = copies_in_stores(&catalog, found, out)?;
        if let (None, Some((_, what, _, _))) = (&newest_failure, copies.first()) {
            warn_unsigned(verifier, what, out);
        }
        match stage_first_good(copies, identities, thorough, out) {
            Ok((copy, what, expect)) => {
                skip.extend(newer);
                return Ok(Staged {
                    copy,
                    what,
                    expect,
                    passed_over: skip,
                });
            }
            Err(e) if a.what == "latest" && e.exit_code() == crate::ExitCode::Integrity => {
                out.warn(&format!(
                    "passed over {name}: {}; trying the next newest backup",
                    crate::cli_chain(&e)
                ));
                skip.push(name);
                newest_failure.get_or_insert(e);
            }
            // An older backup that fails otherwise (made for another key,
            // say) is not what went wrong with the one asked for.
            Err(e) => {
                return Err(match newest_failure {
                    Some(newest) => {
                        out.warn(&crate::cli_chain(&e));
                        newest
                    }
                    None => e,
                }
                .into())
            }
        }
    }
}

fn warn_unsigned(verifier: Option<&crate::signing::Verifier>, what: &str, out: &super::Output) {
    if verifier.is_none() {
        out.warn(&format!(
            "the origin of {what} is not authenticated: anyone with the public backup key can make a backup; \
             set signing_public_key (or --signing-key) to restore only what the backup host signed"
        ));
    }
}

/// The chosen backup in its store, followed by the same backup in other
/// stores: every copy to try, best first.
fn copies_in_stores(
    catalog: &Catalog,
    found: crate::pipeline::catalog::locate::Found<'_>,
    out: &super::Output,
) -> anyhow::Result<Vec<Opened>> {
    let mut copies = Vec::new();
    let mut first_error = None;
    for (i, sidecar) in std::iter::once((found.store, found.sidecar)).chain(found.alternates) {
        let store = &catalog.stores[i];
        match store.get(&sidecar.sealed_name()) {
            Ok(r) => copies.push((
                r,
                format!("{} in {}", sidecar.name, store.name()),
                Some(sidecar.size),
                Some(Expect::of(sidecar)),
            )),
            Err(e) => {
                out.warn(&format!(
                    "{} in {}: {}",
                    sidecar.name,
                    store.name(),
                    crate::about(&e, store.name())
                ));
                first_error.get_or_insert(e);
            }
        }
    }
    match (copies.is_empty(), first_error) {
        (true, Some(e)) => Err(e.into()),
        _ => Ok(copies),
    }
}

/// Authenticates copies in turn until one passes: a copy one store damaged
/// or a server tampered with must not cost the restore when another store
/// holds the same backup intact.
fn stage_first_good(
    copies: Vec<Opened>,
    identities: &[crate::envelope::Identity],
    thorough: bool,
    out: &super::Output,
) -> crate::error::Result<(std::fs::File, String, Option<Expect>)> {
    let count = copies.len();
    for (k, (input, what, total, expect)) in copies.into_iter().enumerate() {
        let input: Box<dyn std::io::Read + Send> =
            Box::new(super::progress::Progress::new(input, total, "restoring"));
        match stage(input, &what, identities, expect.as_ref(), thorough) {
            Ok(copy) => return Ok((copy, what, expect)),
            Err(e) if k + 1 < count && e.exit_code() == crate::ExitCode::Integrity => {
                out.warn(&format!(
                    "{}; trying the same backup in another store",
                    crate::cli_chain(&e)
                ));
            }
            Err(e) => return Err(e),
        }
    }
    Err(Error::Usage("no copy of the backup to read".into()))
}

/// A load or a replacing restore of a backup nobody can vouch for, refused
/// before anything is read: anyone with the public key can make one.
fn untrusted(a: &Args) -> Error {
    let (does, alternative) = if a.into_db.is_some() {
        (
            "loads it into a database server",
            "restore it --to a new directory",
        )
    } else {
        (
            "replaces existing files with it",
            "restore it --to a new directory without --force",
        )
    };
    Error::Usage(format!(
        "{}: this restore cannot check the backup's signature (no signing_public_key, no \
         --signing-key), and it {does}: anyone with the public backup key can make a backup. Give the \
         backup host's signing public key with --signing-key, {alternative}, or pass \
         --trust-unsigned",
        a.what
    ))
}

pub fn run(a: &Args, out: &super::Output) -> anyhow::Result<()> {
    let identities = load_identities(&a.identities)?;
    let config = a.config.as_deref().map(Config::load).transpose()?;
    let verifier = match (&a.signing_key, &config) {
        (Some(key), _) => Some(crate::pipeline::job::load_verifier(key)?),
        (None, Some(c)) => crate::pipeline::job::trusted_verifier(c)?,
        (None, None) => None,
    };
    // Nothing is written, replaced, loaded or piped before all of the file
    // is authenticated: every restore reads a checked private copy. What
    // cannot be undone (a load, files replaced) waits for the whole archive
    // to be checked as well.
    let thorough = a.into_db.is_some() || a.force;
    if thorough && verifier.is_none() && !a.trust_unsigned {
        return Err(untrusted(a).into());
    }
    let Staged {
        copy,
        what,
        expect,
        passed_over,
    } = stage_backup(
        a,
        config.as_ref(),
        verifier.as_ref(),
        &identities,
        thorough,
        out,
    )?;
    let input: Box<dyn std::io::Read + Send> = Box::new(std::io::BufReader::new(copy));
    if let (Some(source), Some(config)) = (&a.into_db, &config) {
        if let Some(w) = crate::pipeline::restore::load::warning(config, source) {
            out.warn(&w);
        }
        let loaded = crate::pipeline::restore::load::into_db(
            config,
            source,
            a.database.as_deref(),
            a.force,
            crate::pipeline::restore::load::Walk {
                input,
                what: &what,
                identities: &identities,
                // Reaching here with a signing key means its signature held.
                authenticated: verifier.is_some(),
            },
        )?;
        for w in &loaded.warnings {
            out.warn(w);
        }
        out.summary(
            &format!(
                "restored {what} into the {source} server: every chunk authenticated, {} members match {}{}",
                loaded.walked.members,
                crate::manifest::INNER_NAME,
                older_than(&passed_over)
            ),
            &serde_json::json!({"event": "restore", "backup": what, "into_db": source, "passed_over": passed_over}),
            true,
        );
        return Ok(());
    }
    let target = match (&a.to, &a.member) {
        (Some(dir), _) => Target::Dir {
            dir: dir.clone(),
            force: a.force,
            keep_partial: a.keep_partial,
        },
        (None, Some(name)) => Target::Member { name: name.clone() },
        (None, None) => Target::Tar,
    };
    let mut sink: Box<dyn std::io::Write> = if a.stdout {
        Box::new(Output::create(None, 0o600)?)
    } else {
        Box::new(std::io::sink())
    };
    let walked = restore(
        input,
        &what,
        &identities,
        target,
        &mut sink,
        expect.as_ref(),
    )?;
    if let Some(w) = walked {
        let place =
            a.to.as_ref()
                .map_or_else(|| "stdout".to_owned(), |d| d.display().to_string());
        out.summary(
            &format!(
                "restored {what} to {place}: every chunk authenticated, {} members match {}{}",
                w.members,
                crate::manifest::INNER_NAME,
                older_than(&passed_over)
            ),
            &serde_json::json!({"event": "restore", "backup": what, "to": place, "members": w.members, "passed_over": passed_over}),
            true,
        );
    }
    Ok(())
}

/// What a summary adds when `latest` had to pass over newer backups: the
/// restored one is older than the operator asked for, and the summary line,
/// which is what a script or a tired reader keeps, must say so.
fn older_than(passed_over: &[String]) -> String {
    if passed_over.is_empty() {
        String::new()
    } else {
        format!(
            " — NOT the newest: passed over {} (see the warnings above)",
            passed_over.join(", ")
        )
    }
}
