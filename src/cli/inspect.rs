use std::path::PathBuf;

use crate::pipeline::inspect::inspect;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print JSON instead of text
    #[arg(long)]
    json: bool,
    /// A sealed file
    file: PathBuf,
}

pub fn run(a: &Args) -> anyhow::Result<()> {
    let i = inspect(&a.file)?;
    if a.json {
        outln!(
            "{}",
            super::terminal_safe(&serde_json::to_string_pretty(&i)?)
        );
        return Ok(());
    }
    // The header is unauthenticated: nothing in it reaches the terminal raw.
    let opt = |v: &Option<String>| super::one_line(v.as_deref().unwrap_or("-"));
    let num = |v: Option<u64>| v.map_or_else(|| "unknown".into(), |n| n.to_string());
    outln!("file:        {}", super::one_line(&i.file));
    outln!("format:      coffer v{}", i.format_version);
    outln!("created:     {}", super::one_line(&i.metadata.created));
    outln!("job:         {}", opt(&i.metadata.job));
    outln!("compression: {}", opt(&i.metadata.compression));
    outln!("content:     {}", opt(&i.metadata.content));
    outln!("chunk size:  {} bytes", i.chunk_size);
    outln!("header:      {} bytes", i.header_bytes);
    outln!(
        "payload:     {} bytes in {} chunks ({} bytes of plaintext)",
        num(i.payload_bytes),
        num(i.chunks),
        num(i.plaintext_bytes)
    );
    outln!("recipients:");
    for r in &i.recipients {
        outln!(
            "  {}",
            super::one_line(&format!("{} {}", r.kind, r.fingerprint))
        );
    }
    outln!("(unauthenticated until opened with a key: coffer open -i KEY)");
    Ok(())
}
