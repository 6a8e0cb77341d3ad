use std::path::PathBuf;

use crate::pipeline::backup;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The configuration file
    #[arg(short = 'c', long, value_name = "CONFIG")]
    config: PathBuf,
    /// Run the job under this name instead of [job] name
    #[arg(long)]
    job: Option<String>,
    /// Check everything and print the plan; dump, write and delete nothing
    #[arg(long)]
    dry_run: bool,
}

pub fn run(a: &Args, out: &super::Output) -> anyhow::Result<()> {
    let s = backup::run(&a.config, a.job.as_deref(), a.dry_run)?;
    for w in &s.warnings {
        // A dry run's "warnings" are its plan.
        if a.dry_run {
            println!("{w}");
        } else {
            out.warn(w);
        }
    }
    if a.dry_run {
        return Ok(());
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
    Ok(())
}
