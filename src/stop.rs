//! The process's stop flag: set by SIGINT or SIGTERM ([`install_signal_handlers`]) or
//! by the node itself ([`request_stop`]: a finished join, a failed shard), and polled
//! by every loop that must end when the node stops (`serve`, object sync retries,
//! the quick start). A module of its own so that the shard's code and `serve`
//! depend on it, not on each other.

use std::sync::atomic::{AtomicBool, Ordering};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Makes SIGINT and SIGTERM request a clean stop (see [`stop_requested`]).
pub fn install_signal_handlers() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

/// Whether SIGINT or SIGTERM arrived (or [`request_stop`] was called).
pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Asks every loop that polls [`stop_requested`] to end.
pub fn request_stop() {
    STOP.store(true, Ordering::SeqCst);
}
