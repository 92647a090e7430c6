//! Ctrl-C (SIGINT) and SIGTERM as a request to stop: long commands check it, tear down what
//! they built and keep what they measured.

use std::sync::atomic::{AtomicBool, Ordering};

/// The flag itself, for code that takes an `&AtomicBool`.
pub static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Installs the handler (it only stores to an atomic, which is async-signal-safe).
pub fn install() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: see above.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

/// Whether a stop was requested.
pub fn requested() -> bool {
    STOP.load(Ordering::SeqCst)
}
