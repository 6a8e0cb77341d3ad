//! Cooperative cancellation: SIGINT/SIGTERM set a flag that every stage's read
//! loop checks, and terminate the running dump processes (a read blocked on a
//! silent dump's pipe then ends), so a run unwinds normally — partial files
//! removed by their destructors — instead of dying mid-write.

use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

static CANCELLED: AtomicBool = AtomicBool::new(false);

fn children() -> &'static Mutex<Vec<u32>> {
    static CHILDREN: OnceLock<Mutex<Vec<u32>>> = OnceLock::new();
    CHILDREN.get_or_init(|| Mutex::new(Vec::new()))
}

/// Watches for SIGINT and SIGTERM on a thread of its own.
pub fn install_signal_handlers() -> io::Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if signals.forever().next().is_some() {
                CANCELLED.store(true, Ordering::SeqCst);
                let pids = children().lock().map(|c| c.clone()).unwrap_or_default();
                for pid in pids {
                    if let Some(pid) = i32::try_from(pid)
                        .ok()
                        .and_then(rustix::process::Pid::from_raw)
                    {
                        let _ = rustix::process::kill_process(pid, rustix::process::Signal::Term);
                    }
                }
            }
        })?;
    Ok(())
}

/// Records a child process to terminate on cancellation.
pub fn register_child(pid: u32) {
    if let Ok(mut c) = children().lock() {
        c.push(pid);
    }
}

pub fn unregister_child(pid: u32) {
    if let Ok(mut c) = children().lock() {
        c.retain(|&p| p != pid);
    }
}

pub fn is_cancelled() -> bool {
    CANCELLED.load(Ordering::SeqCst)
}

pub fn cancelled_error() -> io::Error {
    // Not `Interrupted`: callers retry on that kind.
    io::Error::other("cancelled by a signal")
}

/// Fails reads once a signal has arrived.
pub struct CancelReader<R>(pub R);

impl<R: Read> Read for CancelReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if is_cancelled() {
            return Err(cancelled_error());
        }
        self.0.read(buf)
    }
}
