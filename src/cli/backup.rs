use std::path::PathBuf;

use crate::pipeline::backup::{self, notify};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The configuration file
    #[arg(short = 'c', long, value_name = "CONFIG", env = "COFFER_CONFIG", default_value = super::DEFAULT_CONFIG)]
    config: PathBuf,
    /// Run the job under this name instead of [job] name
    #[arg(long)]
    job: Option<String>,
    /// Check everything and print the plan; dump, write and delete nothing
    #[arg(long)]
    dry_run: bool,
    /// Write a Prometheus textfile-collector file here after the run, whatever its result
    #[arg(long, value_name = "PATH")]
    metrics_file: Option<PathBuf>,
}

pub fn run(a: &Args, out: &super::Output) -> anyhow::Result<()> {
    let started = chrono::Utc::now();
    let config = backup::load_config(&a.config, a.job.as_deref());
    let result = match &config {
        Ok(c) => backup::run(c.clone(), a.dry_run),
        Err(_) => Err(backup::Failed::from(config.as_ref().err().map_or_else(
            || crate::Error::Usage("no configuration".into()),
            |e| crate::Error::Usage(crate::cli_chain(e)),
        ))),
    };
    if a.dry_run {
        print_summary(a, out, &result.map_err(|f| f.error)?);
        return Ok(());
    }
    let job = match &config {
        Ok(c) => c.job.name.clone(),
        // A refused --job names nothing: it would otherwise reach the
        // metrics labels and the hook's environment unchecked.
        Err(_) => a
            .job
            .clone()
            .filter(|n| crate::config::check_job_name(n).is_ok())
            .unwrap_or_else(|| {
                a.config
                    .file_stem()
                    .map_or_else(|| "coffer".into(), |s| s.to_string_lossy().into_owned())
            }),
    };
    let outcome = notify::Outcome::new(config.as_ref().ok(), &job, started, &result);
    if let Some(path) = &a.metrics_file {
        if let Err(e) = notify::write_metrics(path, &outcome) {
            out.warn(&format!("metrics file: {}", crate::cli_chain(&e)));
        }
    }
    if let Ok(c) = &config {
        if let Some(w) = notify::run_hook(c, &outcome) {
            out.warn(&w);
        }
    }
    // A run that failed in some stores still says what it warned of where
    // it completed (a store refilled, a source's skipped files).
    if let Err(backup::Failed {
        done: Some(done), ..
    }) = &result
    {
        for w in &done.warnings {
            out.warn(w);
        }
    }
    // A config that failed to load keeps its own error (and exit code).
    let s = match (config, result) {
        (Err(e), _) => return Err(e.into()),
        (Ok(_), Err(f)) => return Err(f.error.into()),
        (Ok(_), Ok(s)) => s,
    };
    print_summary(a, out, &s);
    Ok(())
}

fn print_summary(a: &Args, out: &super::Output, s: &backup::Summary) {
    for w in &s.warnings {
        // A dry run's "warnings" are its plan.
        if a.dry_run {
            outln!("{w}");
        } else {
            out.warn(w);
        }
    }
    if a.dry_run {
        return;
    }
    let deleted: Vec<String> = s
        .pruned
        .iter()
        .flat_map(|p| {
            p.deleted
                .iter()
                .chain(&p.stale_partials)
                .map(move |d| format!("{}:{d}", p.store))
        })
        .collect();
    out.summary(
        &format!(
            "backup {}: {} bytes in {:.1}s, stores: {}{}",
            s.name,
            s.size,
            std::time::Duration::from_millis(s.duration_ms).as_secs_f64(),
            s.stores.join(", "),
            if deleted.is_empty() {
                String::new()
            } else {
                format!(", pruned: {}", deleted.join(", "))
            }
        ),
        &serde_json::json!({
            "event": "backup",
            "name": s.name,
            "size": s.size,
            "duration_ms": s.duration_ms,
            "stores": s.stores,
            "deleted": deleted,
        }),
        false,
    );
}
