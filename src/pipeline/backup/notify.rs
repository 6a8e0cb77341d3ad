//! After a backup run: the JSON summary, the metrics file, and the
//! `on_success` / `on_failure` hooks. None of these can change the run's
//! result; their own failures come back as warnings.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::Config;
use crate::error::Error;
use crate::metrics::{self, StoreRun};
use crate::pipeline::backup::{Failed, Summary};

/// How long a hook may run before it is killed.
const HOOK_TIMEOUT: Duration = Duration::from_secs(60);

/// A hook's environment: nothing inherited (no secrets can leak through it).
const HOOK_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, Clone, Serialize)]
pub struct StoreOutcome {
    pub name: String,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kept: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The run's summary, as hooks receive it on stdin.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub event: &'static str,
    pub status: &'static str,
    pub job: String,
    pub host: String,
    /// RFC 3339 UTC.
    pub started: String,
    pub finished: String,
    pub duration_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub stores: Vec<StoreOutcome>,
    pub deleted: Vec<String>,
    pub warnings: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub exit_code: u8,
}

impl Outcome {
    pub fn new(
        config: Option<&Config>,
        job: &str,
        started: chrono::DateTime<chrono::Utc>,
        result: &std::result::Result<Summary, Failed>,
    ) -> Self {
        let finished = chrono::Utc::now();
        let store_names: Vec<String> = config
            .map(|c| c.stores.iter().map(crate::config::Store::name).collect())
            .unwrap_or_default();
        let mut o = Outcome {
            event: "backup",
            status: if result.is_ok() { "success" } else { "failure" },
            job: job.to_owned(),
            host: crate::pipeline::job::hostname(),
            started: started.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            finished: finished.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            duration_ms: u64::try_from((finished - started).num_milliseconds()).unwrap_or(0),
            name: None,
            bytes_in: 0,
            bytes_out: 0,
            stores: Vec::new(),
            deleted: Vec::new(),
            warnings: Vec::new(),
            error: None,
            exit_code: 0,
        };
        match result {
            Ok(s) => {
                o.name = Some(s.name.clone());
                o.what_was_done(s);
                o.stores = s
                    .stores
                    .iter()
                    .map(|name| StoreOutcome {
                        name: name.clone(),
                        ok: true,
                        kept: kept_in(s, name),
                        error: None,
                    })
                    .collect();
            }
            Err(Failed { error: e, done }) => {
                o.error = Some(crate::cli_chain(e));
                o.exit_code = e.exit_code() as u8;
                let done = done.as_deref();
                let (complete, failures): (&[String], &[String]) = match e {
                    Error::StoresFailed {
                        name,
                        complete,
                        failures,
                        ..
                    } => {
                        o.name = Some(name.clone());
                        (complete, failures)
                    }
                    _ => (&[], &[]),
                };
                // Where the backup completed, what was written and deleted
                // is said as on success: a partial failure is not nothing.
                if let Some(s) = done {
                    o.what_was_done(s);
                }
                o.stores = store_names
                    .iter()
                    .map(|n| StoreOutcome {
                        name: n.clone(),
                        ok: complete.contains(n),
                        kept: done.and_then(|s| kept_in(s, n)),
                        error: failures
                            .iter()
                            .find(|f| f.starts_with(&format!("{n}: ")))
                            .cloned(),
                    })
                    .collect();
            }
        }
        o
    }

    /// The bytes, warnings and deletions of a run that completed somewhere.
    fn what_was_done(&mut self, s: &Summary) {
        self.bytes_in = s.bytes_in;
        self.bytes_out = s.size;
        self.warnings.clone_from(&s.warnings);
        self.deleted = s
            .pruned
            .iter()
            .flat_map(|p| p.deleted.iter().map(move |d| format!("{}:{d}", p.store)))
            .collect();
    }

    fn metrics_run(&self) -> metrics::Run {
        let finished = chrono::DateTime::parse_from_rfc3339(&self.finished)
            .map_or(0, |t| t.timestamp_millis());
        #[allow(clippy::cast_precision_loss)] // milliseconds since 1970 fit in f64
        metrics::Run {
            job: self.job.clone(),
            success: self.status == "success",
            finished: finished as f64 / 1000.0,
            duration_secs: self.duration_ms as f64 / 1000.0,
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            stores: self
                .stores
                .iter()
                .map(|s| StoreRun {
                    name: s.name.clone(),
                    ok: s.ok,
                    kept: s.kept,
                })
                .collect(),
        }
    }
}

/// How many backups retention kept in `store`, if it ran there.
fn kept_in(s: &Summary, store: &str) -> Option<u64> {
    s.pruned
        .iter()
        .find(|p| p.store == store)
        .map(|p| p.decisions.iter().filter(|d| d.keep).count() as u64)
}

/// Writes the metrics file (atomically, world-readable for the collector),
/// keeping the previous success time across failures.
pub fn write_metrics(path: &Path, outcome: &Outcome) -> Result<(), Error> {
    let previous = std::fs::read_to_string(path)
        .ok()
        .and_then(|t| metrics::previous_success(&t, &outcome.job));
    let text = metrics::render(&outcome.metrics_run(), previous);
    crate::fsutil::replace(path, text.as_bytes(), 0o644).map_err(Error::from)
}

/// Writes a restore test's metrics into `path` (atomically, world-readable),
/// keeping the metric families of others in it and the previous success
/// time across failures.
pub fn write_drill_metrics(path: &Path, drill: &metrics::Drill) -> Result<(), Error> {
    let previous = std::fs::read_to_string(path).unwrap_or_default();
    let text = metrics::render_drill(drill, &previous);
    crate::fsutil::replace(path, text.as_bytes(), 0o644).map_err(Error::from)
}

/// Runs the hook the outcome calls for, if configured. Returns a warning
/// when it could not run or failed.
pub fn run_hook(config: &Config, outcome: &Outcome) -> Option<String> {
    let command = if outcome.status == "success" {
        &config.job.on_success
    } else {
        &config.job.on_failure
    };
    let which = if outcome.status == "success" {
        "on_success"
    } else {
        "on_failure"
    };
    let (program, args) = command.split_first()?;
    let json = serde_json::to_vec(outcome).ok()?;
    hook(program, args, &json, outcome)
        .err()
        .map(|e| format!("{which} hook {program:?}: {e}"))
}

fn hook(program: &str, args: &[String], json: &[u8], outcome: &Outcome) -> Result<(), String> {
    let mut child = Command::new(program)
        .args(args)
        .env_clear()
        .env("PATH", HOOK_PATH)
        .env("LANG", "C.UTF-8")
        .env("COFFER_JOB", &outcome.job)
        .env("COFFER_STATUS", outcome.status)
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start: {e}"))?;
    // Feed stdin and drain stderr on threads: a hook that reads nothing, or
    // writes a lot, must not block the run.
    let stdin = child.stdin.take();
    let payload = json.to_vec();
    let feeder = std::thread::spawn(move || {
        if let Some(mut w) = stdin {
            let _ = w.write_all(&payload);
        }
    });
    let stderr = child.stderr.take();
    let drainer = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(r) = stderr {
            let _ = r.take(64 * 1024).read_to_end(&mut buf);
        }
        buf
    });
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if start.elapsed() > HOOK_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("killed after {} s", HOOK_TIMEOUT.as_secs()));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(e.to_string()),
        }
    };
    // A hook that left a background child holding its stderr must not hang
    // the run: wait a moment for the rest of the output, then let it go.
    let waited = Instant::now();
    while !(feeder.is_finished() && drainer.is_finished())
        && waited.elapsed() < Duration::from_secs(1)
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    let err = if drainer.is_finished() {
        drainer.join().unwrap_or_default()
    } else {
        Vec::new()
    };
    if status.success() {
        return Ok(());
    }
    let last = String::from_utf8_lossy(&err)
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| format!(": {}", l.trim()))
        .unwrap_or_default();
    Err(format!("{status}{last}"))
}
