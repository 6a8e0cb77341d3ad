use std::path::PathBuf;

use crate::config::Config;
use crate::error::Error;
use crate::pipeline::backup::notify;
use crate::pipeline::keys::load_identities;
use crate::pipeline::plumbing::sqlclient::{mysql_client, MysqlClient};
use crate::pipeline::verify::{verify, Drill, Outcome, Select, Verdict};

// Command-line flags: each bool is one switch the operator types.
#[allow(clippy::struct_excessive_bools)]
#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(short = 'c', long, value_name = "CONFIG", env = "COFFER_CONFIG", default_value = super::DEFAULT_CONFIG)]
    config: PathBuf,
    /// A backup name, or `latest`; every backup in every store if absent
    what: Option<String>,
    /// Every backup in every store (the default)
    #[arg(long, conflicts_with = "what")]
    all: bool,
    /// Also decrypt: authenticate every chunk and check every member
    #[arg(short = 'i', long = "identity", value_name = "IDENTITY")]
    identities: Vec<PathBuf>,
    /// Also restore every database (a drill): MariaDB/MySQL and PostgreSQL
    /// dumps into private scratch servers coffer starts, SQLite copies
    /// through integrity_check; compare every table's rows with the
    /// manifest and measure the restore time (needs -i)
    #[arg(long, requires = "identities")]
    restore_test: bool,
    /// Write the restore test's Prometheus textfile-collector metrics here,
    /// whatever its result (other metrics in the file are kept)
    #[arg(long, value_name = "PATH", requires = "restore_test")]
    metrics_file: Option<PathBuf>,
    /// Drill backups whose origin cannot be checked (no signing_public_key):
    /// anyone with the public backup key could have made what is loaded
    #[arg(long, requires = "restore_test")]
    trust_unsigned: bool,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

pub fn run(a: &Args, out: &super::Output) -> anyhow::Result<()> {
    let config = Config::load(&a.config)?;
    let identities = if a.identities.is_empty() {
        None
    } else {
        Some(load_identities(&a.identities)?)
    };
    let select = match a.what.as_deref() {
        None => Select::All,
        Some("latest") => Select::Latest,
        Some(n) => Select::Name(n.to_owned()),
    };
    if a.restore_test {
        if !a.trust_unsigned && crate::pipeline::job::trusted_verifier(&config)?.is_none() {
            let fix = if config.job.unsigned {
                "the job says unsigned = true, so pass --trust-unsigned to drill them anyway"
            } else {
                "set signing_public_key, or pass --trust-unsigned to drill them anyway"
            };
            return Err(Error::Usage(format!(
                "the drill restores {}'s backups (dumps into scratch database servers, SQLite copies), and \
                 nothing shows that this job's host made them (anyone with the public backup key can make a \
                 backup): {fix}",
                config.job.name
            ))
            .into());
        }
        if let Some(w) = mysql_client().and_then(MysqlClient::warning) {
            out.warn(&w);
        }
    }
    let started = std::time::Instant::now();
    let result = verify(&config, &select, identities.as_deref(), a.restore_test);
    if let Some(path) = &a.metrics_file {
        let drill = drill_metrics(&config.job.name, result.as_ref().ok(), started);
        if let Err(e) = notify::write_drill_metrics(path, &drill) {
            out.warn(&format!("metrics file: {}", crate::cli_chain(&e)));
        }
    }
    let outcome = result?;
    for u in &outcome.unreachable {
        out.warn(u);
    }
    let reports = &outcome.reports;
    print_reports(reports, a.json)?;
    let failed = reports
        .iter()
        .filter(|r| r.verdict == Verdict::Damaged)
        .count();
    if failed > 0 {
        return Err(Error::VerifyFailed {
            failed,
            total: reports.len(),
        }
        .into());
    }
    if let Some(e) = outcome.key_failure {
        // A host key that changed is not a network outage: exit 4, with
        // that store's own error and hint.
        return Err(e.into());
    }
    if !outcome.unreachable.is_empty() {
        // A verify job that stays green while a store cannot be reached
        // would hide exactly what it is run to find.
        return Err(Error::Store {
            store: "verify".into(),
            message: format!(
                "{} store(s) could not be reached (see the warnings): their backups were not verified, the others' were",
                outcome.unreachable.len()
            ),
        }
        .into());
    }
    if reports.is_empty() {
        return Err(Error::Usage("no backups to verify".into()).into());
    }
    let missing = reports
        .iter()
        .filter(|r| r.verdict == Verdict::Missing)
        .count();
    if missing > 0 {
        return Err(Error::VerifyMissing { stores: missing }.into());
    }
    Ok(())
}

/// Each report on one line (or all as JSON): ok, a note, what is missing
/// and where it is, or what is wrong.
fn print_reports(reports: &[crate::pipeline::verify::Report], json: bool) -> anyhow::Result<()> {
    if json {
        outln!(
            "{}",
            super::terminal_safe(&serde_json::to_string_pretty(&reports)?)
        );
    } else {
        for r in reports {
            let (label, said) = match r.verdict {
                Verdict::Ok => ("ok", &r.checks),
                Verdict::Leftover => ("note", &r.checks),
                Verdict::Missing => ("MISSING", &r.problems),
                Verdict::Damaged => ("FAIL", &r.problems),
            };
            // Names and messages quote the store: never raw to a terminal.
            outln!(
                "{}",
                super::one_line(&format!(
                    "{label:<5} {} ({}, {}): {}",
                    r.name,
                    r.store,
                    r.level,
                    said.join("; ")
                ))
            );
            if let Some(d) = &r.drill {
                print_drill(d);
            }
        }
    }
    Ok(())
}

/// The drill's table: each table's expected and restored rows, then the
/// measured restore time and rate.
fn print_drill(d: &Drill) {
    let rows: Vec<[String; 4]> = d
        .tables
        .iter()
        .map(|t| {
            [
                super::one_line(&format!("{} {}: {}", t.kind, t.source, t.table)),
                t.expected.to_string(),
                t.restored.map_or_else(|| "-".into(), |n| n.to_string()),
                t.status.to_owned(),
            ]
        })
        .collect();
    let head = [
        "TABLE".to_owned(),
        "EXPECTED".into(),
        "RESTORED".into(),
        "STATUS".into(),
    ];
    let width = |i: usize| {
        rows.iter()
            .chain(std::iter::once(&head))
            .map(|r| r[i].chars().count())
            .max()
            .unwrap_or(0)
    };
    let (w0, w1, w2) = (width(0), width(1), width(2));
    for r in std::iter::once(&head).chain(&rows) {
        outln!(
            "      {:<w0$}  {:>w1$}  {:>w2$}  {}",
            r[0],
            r[1],
            r[2],
            r[3]
        );
    }
    #[allow(clippy::cast_precision_loss)]
    let mib = d.restored_bytes as f64 / 1_048_576.0;
    outln!(
        "      restored {} bytes ({mib:.1} MiB) in {:.2} s: {:.1} MiB/s",
        d.restored_bytes,
        d.restore_seconds,
        d.bytes_per_second / 1_048_576.0
    );
}

/// The metrics of a drill; a verify that could not run at all failed.
fn drill_metrics(
    job: &str,
    outcome: Option<&Outcome>,
    started: std::time::Instant,
) -> crate::metrics::Drill {
    let finished = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let drills: Vec<&Drill> = outcome
        .map(|o| o.reports.iter().filter_map(|r| r.drill.as_ref()).collect())
        .unwrap_or_default();
    let success = outcome.is_some_and(|o| {
        o.unreachable.is_empty() && !o.reports.is_empty() && o.reports.iter().all(|r| r.ok)
    }) && !drills.is_empty();
    let mut tables: Vec<(String, u64)> = Vec::new();
    for t in drills.iter().flat_map(|d| &d.tables) {
        match tables.iter_mut().find(|(s, _)| s == t.status) {
            Some((_, n)) => *n += 1,
            None => tables.push((t.status.to_owned(), 1)),
        }
    }
    let duration = if drills.is_empty() {
        started.elapsed().as_secs_f64()
    } else {
        drills.iter().map(|d| d.restore_seconds).sum()
    };
    crate::metrics::Drill {
        job: job.to_owned(),
        success,
        finished,
        duration_secs: duration,
        tables,
    }
}
