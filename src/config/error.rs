//! What can be wrong with a configuration: the file, or what it says
//! (with the line, and a suggestion for a misspelt key).

use std::fmt::Write as _;
use std::path::PathBuf;

use crate::fsutil::FsError;

/// Why a configuration file could not be loaded: the file itself, or what
/// it says.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    File(#[from] FsError),
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// A configuration error with where it is and what to do.
#[derive(Debug, thiserror::Error)]
#[error("{}{}: {message}", .path.display(), .line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct ConfigError {
    pub path: PathBuf,
    pub line: Option<usize>,
    pub message: String,
    pub hint: Option<String>,
}

/// For "unknown field `x`, expected one of `a`, `b`": the closest expected name.
pub(super) fn suggestion(message: &str) -> Option<String> {
    let unknown = message
        .strip_prefix("unknown field `")
        .or_else(|| message.strip_prefix("unknown variant `"))?;
    let (bad, rest) = unknown.split_once('`')?;
    let expected: Vec<&str> = rest.split('`').skip(1).step_by(2).collect();
    let best = expected
        .iter()
        .map(|e| (strsim::jaro_winkler(bad, e), *e))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))?;
    let mut s = String::new();
    let _ = write!(s, "did you mean `{}`?", best.1);
    Some(s)
}
