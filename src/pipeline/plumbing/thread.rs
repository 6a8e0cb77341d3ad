//! Named threads.

use std::thread::JoinHandle;

/// `std::thread::spawn` with a name, which per-thread CPU accounting (perf,
/// `top -H`) shows. Like `spawn`, panics only if the system cannot make a
/// thread at all.
pub(crate) fn named_thread<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> JoinHandle<T> {
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(f)
        .unwrap_or_else(|e| panic!("cannot start a thread: {e}"))
}
