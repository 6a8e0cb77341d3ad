//! Signals for the commands that start what must not outlive them: a
//! signal stops them through their own error paths, which undo what they
//! started.

use crate::error::{Error, Result};

/// Installs the handlers for a command that starts what must not outlive
/// it (scratch servers, a half-done load): a signal then stops the command
/// through its own error paths, which undo what it started, instead of
/// killing coffer mid-way.
pub fn stop_on_signals() -> Result<()> {
    crate::cancel::install_signal_handlers().map_err(|e| Error::Store {
        store: "signals".into(),
        message: format!("cannot install signal handlers: {e}"),
    })
}

/// [`Cancelled`](Error::Cancelled) once a signal has arrived.
pub fn check() -> Result<()> {
    if crate::cancel::is_cancelled() {
        Err(Error::Cancelled)
    } else {
        Ok(())
    }
}
