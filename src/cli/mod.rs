//! Command-line parsing and printing. No crypto and no I/O logic here: each
//! subcommand turns its arguments into a pipeline call and prints the result.

/// `println!` for results on stdout, which a reader may stop reading
/// (`coffer list | head -1`): see [`out_line`].
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::out_line(format_args!($($arg)*))
    };
}

mod backup;
mod config;
mod ingest;
mod inspect;
mod keygen;
mod keyscan;
mod legacy;
mod list;
mod open;
mod progress;
mod prune;
mod restore;
mod seal;
mod verify;

use clap::{Parser, Subcommand, ValueEnum};

use crate::error::{Error, ExitCode};

/// Where `-c` looks when neither it nor `COFFER_CONFIG` is given: where the
/// packages install the configuration.
pub const DEFAULT_CONFIG: &str = "/etc/coffer/coffer.toml";

#[derive(Debug, Parser)]
#[command(
    name = "coffer",
    version,
    about = "Encrypted, streaming backups sealed to a public key",
    long_about = "coffer seals data to public keys (RSA-OAEP-SHA256 or age) with AES-256-GCM in \
                  authenticated chunks. The machine that seals can never read back what it sealed.\n\n\
                  Exit codes: 0 success, 1 failure, 2 usage or configuration error, \
                  3 integrity failure (tampered or truncated), 4 wrong or missing key."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Print a summary line on success (cron stays silent without it)
    #[arg(short, long, global = true)]
    pub verbose: bool,
    /// Log format on stderr: one line of text, or one JSON object, per event
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// How results and problems are printed.
pub struct Output {
    verbose: bool,
    format: LogFormat,
}

impl Output {
    /// A success summary: only when asked for (-v or JSON), or forced.
    pub fn summary(&self, text: &str, json: &serde_json::Value, force: bool) {
        match self.format {
            LogFormat::Json => {
                eprintln!("{}", terminal_safe(&with_level(json, "info").to_string()));
            }
            LogFormat::Text if self.verbose || force => eprintln!("coffer: {}", one_line(text)),
            LogFormat::Text => {}
        }
    }

    pub fn warn(&self, text: &str) {
        match self.format {
            LogFormat::Json => eprintln!(
                "{}",
                terminal_safe(
                    &with_level(
                        &serde_json::json!({"event": "warning", "message": text}),
                        "warning"
                    )
                    .to_string()
                )
            ),
            LogFormat::Text => eprintln!("coffer: warning: {}", one_line(text)),
        }
    }
}

/// Escapes control characters so that names and paths (which may contain
/// newlines) can never forge extra log lines: one event, one line.
pub fn one_line(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() || reorders(c) => out.push_str(&c.escape_unicode().to_string()),
            c => out.push(c),
        }
    }
    out
}

/// JSON text with what a terminal would act on escaped (`\\u` escapes, still
/// the same JSON): serde_json escapes only the C0 controls, and DEL, the C1
/// controls (U+009B opens an escape sequence on many terminals) and the
/// bidirectional controls can only occur inside strings, where a program
/// reading the JSON back sees the same text.
pub fn terminal_safe(json: &str) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if c == '\u{7f}' || ('\u{80}'..='\u{9f}').contains(&c) || reorders(c) {
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    out
}

/// Unicode's bidirectional controls: invisible, they make a terminal show
/// the text around them in another order (a name that reads `…gpj.sh` as
/// `…hs.jpg`), so they are shown escaped like other controls.
fn reorders(c: char) -> bool {
    matches!(
        c,
        '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
    )
}

fn with_level(v: &serde_json::Value, level: &str) -> serde_json::Value {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        o.insert("level".into(), level.into());
        o.insert(
            "time".into(),
            chrono::Utc::now()
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                .into(),
        );
    }
    v
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Make a key pair: PATH (private, mode 0600) and PATH.pub
    Keygen(keygen::Args),
    /// Encrypt a stream (stdin by default) to one or more recipients
    Seal(seal::Args),
    /// Decrypt and authenticate a sealed stream
    Open(open::Args),
    /// Show a sealed file's header (version, recipients, metadata) without a key
    Inspect(inspect::Args),
    /// Run the backup job: dump, archive, compress, seal, store, rotate
    Backup(backup::Args),
    /// List the backups in the configured stores
    List(list::Args),
    /// Apply retention: delete old complete backups (needs no key)
    Prune(prune::Args),
    /// On the backup server: move finished uploads out of the upload account's reach
    Ingest(ingest::Args),
    /// Configuration tools
    #[command(subcommand)]
    Config(config::Command),
    /// Print a backup server's SSH host key as a known_hosts line, to verify out of band
    Keyscan(keyscan::Args),
    /// Restore a backup: into a directory, or one member to stdout
    Restore(restore::Args),
    /// Check backups in the stores: without a key (size, digest, header) or with one (everything)
    Verify(verify::Args),
    /// Decrypt a backup made by the old openssl recipe (enc -aes-256-cbc + rsautl)
    LegacyDecrypt(legacy::DecryptArgs),
    /// Re-seal a backup made by the old openssl recipe into a coffer file
    LegacyImport(legacy::ImportArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff) on stdout: `coffer man | man -l -`
    Man {
        /// Instead, write coffer.1 and a page per subcommand (coffer-backup.1, …) here
        #[arg(long, value_name = "DIR")]
        dir: Option<std::path::PathBuf>,
    },
}

/// Set once stdout's reader has gone: what is left to say is dropped, and
/// the command finishes with its own exit code instead of a panic (101).
static STDOUT_GONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// Any other failure to write stdout (a full disk under `> report.json`):
/// the command fails with it once it is done.
static STDOUT_FAILED: std::sync::Mutex<Option<std::io::Error>> = std::sync::Mutex::new(None);

/// One line of a command's result on stdout.
pub fn out_line(args: std::fmt::Arguments<'_>) {
    out_bytes(format!("{args}\n").as_bytes());
}

/// A command's result on stdout, as bytes (completions, a manual page).
pub fn out_bytes(bytes: &[u8]) {
    use std::io::Write as _;
    use std::sync::atomic::Ordering;
    if STDOUT_GONE.load(Ordering::Relaxed) {
        return;
    }
    let mut o = std::io::stdout().lock();
    if let Err(e) = o.write_all(bytes).and_then(|()| o.flush()) {
        STDOUT_GONE.store(true, Ordering::Relaxed);
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            if let Ok(mut failed) = STDOUT_FAILED.lock() {
                failed.get_or_insert(e);
            }
        }
    }
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    // Before any key, credential or SSH identity is read, by coffer or by
    // a library (libssh2 reads the SFTP key itself).
    crate::fsutil::no_core_dumps();
    let result = run_command(cli);
    let failed = STDOUT_FAILED.lock().ok().and_then(|mut f| f.take());
    match (result, failed) {
        (Ok(()), Some(e)) => Err(Error::io("stdout", "write", e).into()),
        (result, _) => result,
    }
}

fn run_command(cli: Cli) -> anyhow::Result<()> {
    let out = Output {
        verbose: cli.verbose,
        format: cli.log_format,
    };
    LOG_FORMAT.store(
        cli.log_format == LogFormat::Json,
        std::sync::atomic::Ordering::Relaxed,
    );
    match cli.command {
        Command::Backup(a) => backup::run(&a, &out),
        Command::List(a) => list::run(&a),
        Command::Prune(a) => prune::run(&a),
        Command::Ingest(a) => ingest::run(&a, &out),
        Command::Config(c) => config::run(&c, &out),
        Command::Keyscan(a) => keyscan::run(&a),
        Command::Restore(a) => restore::run(&a, &out),
        Command::Verify(a) => verify::run(&a, &out),
        Command::LegacyDecrypt(a) => legacy::decrypt(&a, &out),
        Command::LegacyImport(a) => legacy::import(&a, &out),
        Command::Keygen(a) => keygen::run(&a),
        Command::Seal(a) => seal::run(a),
        Command::Open(a) => open::run(&a),
        Command::Inspect(a) => inspect::run(&a),
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(
                shell,
                &mut <Cli as clap::CommandFactory>::command(),
                "coffer",
                &mut script,
            );
            out_bytes(&script);
            Ok(())
        }
        Command::Man { dir: None } => {
            let mut page = Vec::new();
            clap_mangen::Man::new(<Cli as clap::CommandFactory>::command())
                .render(&mut page)
                .map_err(|e| Error::io("stdout", "write", e))?;
            out_bytes(&page);
            Ok(())
        }
        Command::Man { dir: Some(dir) } => {
            clap_mangen::generate_to(<Cli as clap::CommandFactory>::command(), &dir)
                .map_err(|e| Error::io(&dir, "write manual pages to", e))?;
            Ok(())
        }
    }
}

static LOG_FORMAT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Prints the error (and its hint) on stderr; returns the exit code.
pub fn report(err: &anyhow::Error) -> u8 {
    let (code, hint) = match err.chain().find_map(crate::error::verdict) {
        Some((code, hint)) => (code as u8, hint),
        None => (ExitCode::Failed as u8, None),
    };
    if LOG_FORMAT.load(std::sync::atomic::Ordering::Relaxed) {
        let v = serde_json::json!({
            "event": "error", "message": format!("{err:#}"), "hint": hint, "exit_code": code,
        });
        eprintln!("{}", terminal_safe(&with_level(&v, "error").to_string()));
    } else {
        eprintln!("coffer: error: {}", one_line(&format!("{err:#}")));
        if let Some(hint) = hint {
            eprintln!("coffer: hint: {}", one_line(&hint));
        }
    }
    code
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[test]
    fn log_lines_cannot_be_forged() {
        assert_eq!(one_line("a\n[ERROR] fake line"), "a\\n[ERROR] fake line");
        assert_eq!(one_line("tab\there\r\x1b[31m"), "tab\\there\\r\\u{1b}[31m");
        assert_eq!(one_line("back\\slash"), "back\\\\slash");
        assert_eq!(one_line("plain/path.db"), "plain/path.db");
    }

    #[test]
    fn names_cannot_reorder_what_the_terminal_shows() {
        assert_eq!(one_line("prod-x\u{202e}gpj.sh"), "prod-x\\u{202e}gpj.sh");
        assert_eq!(one_line("a\u{2066}b\u{200f}"), "a\\u{2066}b\\u{200f}");
        assert_eq!(one_line("café ü"), "café ü");
    }

    #[test]
    fn json_for_a_terminal_escapes_what_the_terminal_would_act_on() {
        let v = serde_json::json!({"name": "a\u{9b}31mb\u{7f}\u{202e}c é"});
        let text = super::terminal_safe(&v.to_string());
        assert_eq!(text, r#"{"name":"a\u009b31mb\u007f\u202ec é"}"#);
        let back: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back, v);
    }
}
