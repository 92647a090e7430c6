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

/// Asserts that `host`'s agent refuses to write policies (its store credentials are a host's,
/// which may only read them), with the reason in the error.
#[allow(dead_code)] // used by the etcd labs' tests only
pub fn assert_policy_writes_refused(lab: &str, host: &str, records: &[store::PolicyRecord]) {
    let refused = lab::agents::call(
        lab,
        host,
        &agent::api::Request::PolicyApply {
            records: records.to_vec(),
        },
    )
    .expect_err("a host without the policy administrator's certificate may not write policies");
    assert!(
        refused.to_string().contains("may only read policies"),
        "{refused}"
    );
}
