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
        println!("{}", serde_json::to_string_pretty(&i)?);
        return Ok(());
    }
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let num = |v: Option<u64>| v.map_or_else(|| "unknown".into(), |n| n.to_string());
    println!("file:        {}", i.file);
    println!("format:      coffer v{}", i.format_version);
    println!("created:     {}", i.metadata.created);
    println!("job:         {}", opt(&i.metadata.job));
    println!("compression: {}", opt(&i.metadata.compression));
    println!("content:     {}", opt(&i.metadata.content));
    println!("chunk size:  {} bytes", i.chunk_size);
    println!("header:      {} bytes", i.header_bytes);
    println!(
        "payload:     {} bytes in {} chunks ({} bytes of plaintext)",
        num(i.payload_bytes),
        num(i.chunks),
        num(i.plaintext_bytes)
    );
    println!("recipients:");
    for r in &i.recipients {
        println!("  {} {}", r.kind, r.fingerprint);
    }
    println!("(unauthenticated until opened with a key: coffer open -i KEY)");
    Ok(())
}
