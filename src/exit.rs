//! Exit codes, fixed by the user-facing contract (DESIGN.md), and the
//! classes a leaf's error sorts itself into. A leaf: every error type may
//! say its exit code without knowing the crate's error.

/// Process exit codes, fixed by the user-facing contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitCode {
    Success = 0,
    /// The job failed; nothing good was deleted.
    Failed = 1,
    /// Usage or configuration error.
    Usage = 2,
    /// Tampered, truncated, hash mismatch.
    Integrity = 3,
    /// Wrong or missing key.
    Key = 4,
}

/// Classifies an error for the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Integrity,
    Key,
    Usage,
    Io,
}

impl Class {
    pub fn exit_code(self) -> ExitCode {
        match self {
            Class::Integrity => ExitCode::Integrity,
            Class::Key => ExitCode::Key,
            Class::Usage => ExitCode::Usage,
            Class::Io => ExitCode::Failed,
        }
    }
}
