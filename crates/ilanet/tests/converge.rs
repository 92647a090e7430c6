//! `ilanet bench converge` end to end on a small lab (needs root). Checks that it runs, reports
//! consistent figures and removes its lab; the figures themselves are not asserted against the
//! targets (they are measurements, and this machine is shared).

use std::process::Command;
use std::time::{Duration, Instant};

use lab::state::LabState;

fn field(v: &serde_json::Value, path: &[&str]) -> serde_json::Value {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.clone()
}

fn num(v: &serde_json::Value, path: &[&str]) -> f64 {
    field(v, path)
        .as_f64()
        .unwrap_or_else(|| panic!("{} is not a number in {v}", path.join(".")))
}

#[test]
#[ignore = "needs root: network namespaces, eBPF"]
fn converge_bench_measures_every_endpoint_and_leaves_no_lab() {
    let before = LabState::list().expect("list labs");
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_ilanet"))
        .args([
            "bench",
            "converge",
            "--hosts",
            "3",
            "--endpoints",
            "20",
            "--store",
            "embedded",
            "--resync",
            "1000",
            "--json",
        ])
        .output()
        .expect("run ilanet");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed: {stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {stderr}"));

    let samples = field(&v, &["samples"]);
    let samples = samples.as_array().expect("samples");
    assert_eq!(samples.len(), 20, "{v}");
    assert_eq!(num(&v, &["measured"]), 20.0);
    assert_eq!(field(&v, &["interrupted"]), serde_json::Value::Bool(false));
    for s in samples {
        assert!(num(s, &["converge_ms"]) >= 0.0, "{s}");
        assert!(num(s, &["converge_ms"]) >= num(s, &["first_ms"]), "{s}");
        assert_ne!(
            s["host"], s["last_host"],
            "measured on the other hosts: {s}"
        );
    }

    let conv = ["convergence"];
    let p50 = num(&v, &[conv[0], "p50_ms"]);
    let p99 = num(&v, &[conv[0], "p99_ms"]);
    let max = num(&v, &[conv[0], "max_ms"]);
    assert_eq!(num(&v, &[conv[0], "count"]), 20.0);
    assert!(p50 > 0.0, "{v}");
    assert!(p99 >= p50, "{v}");
    assert!(max >= p99, "{v}");
    // Round-robin over three hosts: every host created some.
    for h in ["site1", "site2", "site3"] {
        assert!(samples.iter().any(|s| s["host"] == h), "{h} created none");
    }

    let r = field(&v, &["resync"]);
    assert_eq!(num(&r, &["entries"]), 1000.0);
    assert!(num(&r, &["total_ms"]) > 0.0, "{r}");
    assert_eq!(num(&r, &["warm_written"]), 0.0, "{r}");
    // Each mapping has an out-entry and an ipcache entry.
    assert_eq!(num(&r, &["sweep_removed"]), 2000.0, "{r}");

    // Its lab is gone.
    let lab = field(&v, &["lab"]);
    let lab = lab.as_str().expect("lab name");
    assert!(!before.iter().any(|n| n == lab), "{lab} existed before");
    let after = LabState::list().expect("list labs");
    assert!(!after.iter().any(|n| n == lab), "lab {lab} left behind");
    assert!(
        !lab::state::pin_root(lab).exists(),
        "pins of {lab} left behind"
    );
}
