//! Helpers shared by the CLI's integration tests.

use std::process::Output;

/// A finished command's stdout and stderr, as text.
#[allow(dead_code)] // not every test file prints output
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Polls `f` until it holds; fails the test after `timeout`, naming `what`.
#[allow(dead_code)] // not every test file waits
pub fn wait_for(what: &str, timeout: std::time::Duration, mut f: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !f() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
}
