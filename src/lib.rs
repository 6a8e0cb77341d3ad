//! coffer: encrypted, streaming backups.
//!
//! Data flows one way: source → archive → seal → store. The leaves never import
//! each other; only [`pipeline`] composes them, and only [`cli`] parses
//! arguments and prints.
//!
//! - [`source`]: database dumps, files and commands, streamed.
//! - [`archive`]: tar over zstd/gzip, bounded memory.
//! - [`frames`]: zstd in independent frames, on every core.
//! - [`store`]: where sealed backups live (local directory, SFTP).
//! - [`manifest`], [`retention`]: sidecar manifests and what to keep.
//! - [`signing`]: optional minisign signatures on sidecars.
//! - [`metrics`]: the Prometheus textfile a run leaves for monitoring.
//! - [`config`]: the TOML configuration.
//! - [`envelope`]: the sealed file format (docs/FORMAT.md): header, key wrapping, STREAM.
//! - [`fsutil`]: safe writes (temporary name, fsync, no-overwrite rename) and permission checks.
//! - [`pipeline`]: the commands' logic.
//! - [`cli`]: argument parsing and output.
//! - [`error`]: the error type, its exit codes and hints.

pub mod ahead;
pub mod archive;
pub mod cancel;
pub mod cli;
pub mod config;
pub mod envelope;
pub mod error;
pub mod exit;
pub mod frames;
pub mod fsutil;
pub mod ledger;
pub mod legacy;
pub mod manifest;
pub mod metrics;
pub mod pipeline;
pub mod retention;
pub mod signing;
pub mod source;
pub mod store;

/// An error and its causes on one line, as the CLI prints them.
pub fn cli_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// An error's message without the store's name in front, for a line that
/// names the store once itself.
pub fn about(e: &dyn std::error::Error, store: &str) -> String {
    let text = cli_chain(e);
    let prefix = format!("{store}: ");
    let mut rest = text.as_str();
    while let Some(r) = rest.strip_prefix(&prefix) {
        rest = r;
    }
    rest.to_owned()
}

pub use error::{Error, ExitCode, Result};
