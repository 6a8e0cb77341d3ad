//! The Prometheus text-format file a backup run leaves for node_exporter's
//! textfile collector. A failed run keeps the previous run's success time,
//! so "no successful backup in 26 hours" stays answerable after failures.
//! A leaf: values in, text out.

use std::fmt::Write as _;

/// One store's part of a run.
#[derive(Debug, Clone)]
pub struct StoreRun {
    pub name: String,
    /// Whether this run's backup is complete in the store.
    pub ok: bool,
    /// Complete backups of the job in the store after retention, where known.
    pub kept: Option<u64>,
}

/// What a run reports.
#[derive(Debug, Clone)]
pub struct Run {
    pub job: String,
    pub success: bool,
    /// Seconds since the epoch at the end of the run.
    pub finished: f64,
    pub duration_secs: f64,
    /// Bytes read from the sources (before compression).
    pub bytes_in: u64,
    /// Bytes of the sealed file.
    pub bytes_out: u64,
    pub stores: Vec<StoreRun>,
}

const LAST_SUCCESS: &str = "coffer_backup_last_success_timestamp_seconds";

/// Escapes a label value as the text format requires.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The success time recorded in a previous file of this job, if any.
pub fn previous_success(text: &str, job: &str) -> Option<f64> {
    let prefix = format!("{LAST_SUCCESS}{{job=\"{}\"}} ", label(job));
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v > 0.0)
}

/// The file's contents. `previous_success` is used when this run failed.
pub fn render(run: &Run, previous_success: Option<f64>) -> String {
    let job = label(&run.job);
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, samples: &[(String, f64)]| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    };
    let j = format!("job=\"{job}\"");
    let last_success = if run.success {
        Some(run.finished)
    } else {
        previous_success
    };
    gauge(
        LAST_SUCCESS,
        "When the job last made a complete backup (0: never seen).",
        &[(j.clone(), last_success.unwrap_or(0.0))],
    );
    gauge(
        "coffer_backup_last_run_timestamp_seconds",
        "When the job last finished a run, successful or not.",
        &[(j.clone(), run.finished)],
    );
    gauge(
        "coffer_backup_last_run_success",
        "1 if the last run made a complete backup in every store, else 0.",
        &[(j.clone(), if run.success { 1.0 } else { 0.0 })],
    );
    gauge(
        "coffer_backup_last_run_duration_seconds",
        "How long the last run took.",
        &[(j.clone(), run.duration_secs)],
    );
    #[allow(clippy::cast_precision_loss)] // byte counts far below 2^53
    {
        gauge(
            "coffer_backup_last_run_bytes_in",
            "Bytes read from the sources by the last run, before compression.",
            &[(j.clone(), run.bytes_in as f64)],
        );
        gauge(
            "coffer_backup_last_run_bytes_out",
            "Bytes of the sealed file the last run wrote.",
            &[(j.clone(), run.bytes_out as f64)],
        );
    }
    let store_ok: Vec<(String, f64)> = run
        .stores
        .iter()
        .map(|s| {
            (
                format!("{j},store=\"{}\"", label(&s.name)),
                if s.ok { 1.0 } else { 0.0 },
            )
        })
        .collect();
    gauge(
        "coffer_backup_store_last_run_success",
        "1 if the last run's backup is complete in this store, else 0.",
        &store_ok,
    );
    #[allow(clippy::cast_precision_loss)]
    let kept: Vec<(String, f64)> = run
        .stores
        .iter()
        .filter_map(|s| {
            s.kept
                .map(|k| (format!("{j},store=\"{}\"", label(&s.name)), k as f64))
        })
        .collect();
    if !kept.is_empty() {
        gauge(
            "coffer_backup_kept",
            "Complete backups of the job in this store after retention.",
            &kept,
        );
    }
    out
}

/// What a restore test (`verify --restore-test`) reports.
#[derive(Debug, Clone)]
pub struct Drill {
    pub job: String,
    /// Every backup tested passed.
    pub success: bool,
    /// Seconds since the epoch at the end of the drill.
    pub finished: f64,
    /// The measured restore time (fetch, decrypt, load) of the backups tested.
    pub duration_secs: f64,
    /// Tables per status (`ok`, `mismatch`, `missing`).
    pub tables: Vec<(String, u64)>,
}

const DRILL_PREFIX: &str = "coffer_restore_test_";
const DRILL_SUCCESS: &str = "coffer_restore_test_last_success_timestamp_seconds";

/// The metric family a line of the text format belongs to: the sample's
/// name, or the name a `# HELP`/`# TYPE` line describes.
fn family(line: &str) -> Option<&str> {
    let rest = line
        .strip_prefix("# HELP ")
        .or_else(|| line.strip_prefix("# TYPE "))
        .unwrap_or(line);
    rest.split(|c: char| c == '{' || c.is_whitespace()).next()
}

/// The file's contents after a drill: the families already in `previous`
/// that are not the drill's (a backup's or another job's metrics, when
/// they share a file) are kept as they were, and the drill's are replaced.
/// A failed drill keeps the previous success time.
pub fn render_drill(drill: &Drill, previous: &str) -> String {
    let job = label(&drill.job);
    let j = format!("job=\"{job}\"");
    let prefix = format!("{DRILL_SUCCESS}{{{j}}} ");
    let previous_success = previous
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v > 0.0);
    // Other jobs' drill samples are kept too: only this job's are replaced.
    let mut kept_drill: Vec<(String, Vec<&str>)> = Vec::new();
    let mut out = String::new();
    for line in previous.lines() {
        let Some(name) = family(line) else { continue };
        if !name.starts_with(DRILL_PREFIX) {
            let _ = writeln!(out, "{line}");
        } else if !line.starts_with('#') && !line.contains(&j) {
            match kept_drill.iter_mut().find(|(n, _)| n == name) {
                Some((_, v)) => v.push(line),
                None => kept_drill.push((name.to_owned(), vec![line])),
            }
        }
    }
    let mut gauge = |name: &str, help: &str, samples: &[(String, f64)]| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        for (_, lines) in kept_drill.iter().filter(|(n, _)| n == name) {
            for l in lines {
                let _ = writeln!(out, "{l}");
            }
        }
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    };
    let success = if drill.success {
        Some(drill.finished)
    } else {
        previous_success
    };
    gauge(
        DRILL_SUCCESS,
        "When a restore test of the job last passed (0: never seen).",
        &[(j.clone(), success.unwrap_or(0.0))],
    );
    gauge(
        "coffer_restore_test_last_run_timestamp_seconds",
        "When a restore test of the job last finished, passed or not.",
        &[(j.clone(), drill.finished)],
    );
    gauge(
        "coffer_restore_test_last_run_success",
        "1 if the last restore test passed, else 0.",
        &[(j.clone(), if drill.success { 1.0 } else { 0.0 })],
    );
    gauge(
        "coffer_restore_test_duration_seconds",
        "The last restore test's measured restore time: fetch, decrypt and load.",
        &[(j.clone(), drill.duration_secs)],
    );
    #[allow(clippy::cast_precision_loss)] // table counts far below 2^53
    let tables: Vec<(String, f64)> = ["ok", "mismatch", "missing"]
        .iter()
        .map(|status| {
            let n = drill
                .tables
                .iter()
                .filter(|(s, _)| s == status)
                .map(|(_, n)| *n)
                .sum::<u64>();
            (format!("{j},status=\"{status}\""), n as f64)
        })
        .collect();
    gauge(
        "coffer_restore_test_tables",
        "Tables the last restore test compared, by status (ok, mismatch, missing).",
        &tables,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(success: bool) -> Run {
        Run {
            job: "db\"main\n".into(),
            success,
            finished: 1_700_000_000.5,
            duration_secs: 2.25,
            bytes_in: 10,
            bytes_out: 20,
            stores: vec![StoreRun {
                name: "local".into(),
                ok: success,
                kept: Some(7),
            }],
        }
    }

    #[test]
    fn a_failure_keeps_the_previous_success_time() {
        let ok = render(&run(true), None);
        let prev = previous_success(&ok, "db\"main\n");
        assert_eq!(prev, Some(1_700_000_000.5));
        let failed = render(&run(false), prev);
        assert!(failed.contains(
            "coffer_backup_last_success_timestamp_seconds{job=\"db\\\"main\\n\"} 1700000000.5"
        ));
        assert!(failed.contains("coffer_backup_last_run_success{job=\"db\\\"main\\n\"} 0"));
        // Never succeeded: 0, so a staleness alert fires.
        assert!(render(&run(false), None)
            .contains("coffer_backup_last_success_timestamp_seconds{job=\"db\\\"main\\n\"} 0"));
    }

    #[test]
    fn one_sample_per_line_whatever_the_names() {
        let text = render(&run(true), None);
        for line in text.lines() {
            assert!(
                line.starts_with("# ") || line.starts_with("coffer_backup_"),
                "{line}"
            );
        }
    }

    fn drill(job: &str, success: bool) -> Drill {
        Drill {
            job: job.into(),
            success,
            finished: 1_700_000_100.0,
            duration_secs: 3.5,
            tables: vec![("ok".into(), 4), ("mismatch".into(), 1)],
        }
    }

    #[test]
    fn a_drill_keeps_other_metrics_and_other_jobs() {
        let backup = render(&run(true), None);
        let first = render_drill(&drill("a", true), &backup);
        let both = render_drill(&drill("b", false), &first);
        // The backup's families are untouched, once each.
        assert_eq!(both.matches("# TYPE coffer_backup_kept gauge").count(), 1);
        assert!(both.contains("coffer_backup_kept{job=\"db\\\"main\\n\",store=\"local\"} 7"));
        // One HELP/TYPE per drill family, both jobs' samples under it.
        assert_eq!(
            both.matches("# TYPE coffer_restore_test_tables gauge")
                .count(),
            1
        );
        assert!(both
            .contains("coffer_restore_test_last_success_timestamp_seconds{job=\"a\"} 1700000100"));
        assert!(both.contains("coffer_restore_test_last_success_timestamp_seconds{job=\"b\"} 0"));
        assert!(both.contains("coffer_restore_test_tables{job=\"b\",status=\"mismatch\"} 1"));
        assert!(both.contains("coffer_restore_test_tables{job=\"b\",status=\"missing\"} 0"));
        // A failure of job a keeps its last success.
        let failed = render_drill(&drill("a", false), &both);
        assert!(failed
            .contains("coffer_restore_test_last_success_timestamp_seconds{job=\"a\"} 1700000100"));
        assert!(failed.contains("coffer_restore_test_last_run_success{job=\"a\"} 0"));
        assert_eq!(failed.matches("{job=\"a\"}").count(), 4);
    }
}
