//! `ilanet bench chaos` for one minute on a 4-host etcd lab (needs root): every kind of fault is
//! injected, probes of every protocol are sent, no invariant is violated and nothing is left.

use std::process::{Command, Stdio};

/// Removes the soak's lab (named after the child's pid) even when the test fails.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = lab::down(&self.0);
    }
}

#[test]
#[ignore = "needs root: network namespaces, eBPF, a 3-member etcd cluster, signals to its processes"]
fn a_one_minute_chaos_soak_finds_no_violation_and_injects_every_fault() {
    let seed = std::env::var("ILANET_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(u64::from(std::process::id()));
    let child = Command::new(env!("CARGO_BIN_EXE_ilanet"))
        .args(["bench", "chaos", "--minutes", "1", "--hosts", "4", "--json"])
        .args(["--seed", &seed.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ilanet");
    let lab_name = format!("ch{}", child.id());
    let _cleanup = Cleanup(lab_name.clone());
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}); seed {seed}: {stderr}"));
    eprintln!(
        "chaos soak, seed {seed}: {} min, faults {}, probes {}, passed {}, forbidden {}, recovery max {} ms, violations {}",
        v["minutes"], v["faults"], v["probes"], v["passed"], v["forbidden_probes"], v["recovery_max_ms"], v["violation_count"]
    );
    assert_eq!(
        v["violation_count"], 0,
        "seed {seed}: violations {:#}",
        v["violations"]
    );
    assert!(out.status.success(), "seed {seed}: {stderr}");
    assert_eq!(v["lab"], lab_name.as_str());
    for kind in [
        "endpoint-add",
        "endpoint-del",
        "endpoint-move",
        "policy-apply",
        "policy-delete",
        "agent-kill",
        "etcd-member-kill",
        "store-freeze",
    ] {
        let n = v["faults"][kind].as_u64().unwrap_or(0);
        assert!(
            n >= 1,
            "seed {seed}: no {kind} fault injected: {}",
            v["faults"]
        );
    }
    for proto in ["tcp", "udp", "icmpv6"] {
        let n = v["probes"][proto].as_u64().unwrap_or(0);
        assert!(
            n >= 20,
            "seed {seed}: only {n} {proto} probes: {}",
            v["probes"]
        );
        // Each kind of probe saw deliveries: a forbidden probe that fails is not a broken probe.
        let passed = v["passed_by_protocol"][proto].as_u64().unwrap_or(0);
        assert!(passed >= 1, "seed {seed}: no {proto} probe passed: {v}");
    }
    // Both verdicts were exercised: some probes passed, some were forbidden.
    assert!(v["passed"].as_u64().unwrap_or(0) > 0, "{v}");
    assert!(v["forbidden_probes"].as_u64().unwrap_or(0) > 0, "{v}");
    assert!(v["quiet_checks"].as_u64().unwrap_or(0) >= 8, "{v}");
    assert!(v["minutes"].as_f64().unwrap_or(0.0) >= 0.99, "{v}");
    // Its lab is gone, pins included.
    let labs = lab::state::LabState::list().expect("list labs");
    assert!(!labs.contains(&lab_name), "lab {lab_name} left behind");
    assert!(!lab::state::pin_root(&lab_name).exists());
}
