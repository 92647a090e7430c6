//! `ilanet bench latency` end to end on real namespaces (needs root): a tiny campaign of two
//! modes whose report must be sane — every case measured, counts as asked, p50 ≤ p99 ≤ p99.9,
//! ratios to native present.

use std::process::Command;

#[test]
#[ignore = "needs root: network namespaces, eBPF, lab agents"]
fn bench_latency_tiny_reports_sane_percentiles_for_two_modes() {
    let out = std::env::temp_dir().join(format!("ilanet-bench-latency-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let (rounds, requests, new_flows) = (2, 150, 10);
    let status = Command::new(env!("CARGO_BIN_EXE_ilanet"))
        .args(["bench", "latency", "--modes", "native,ila+policy"])
        .args(["--rounds", &rounds.to_string()])
        .args(["--requests", &requests.to_string()])
        .args(["--new-flows", &new_flows.to_string()])
        .arg("--out")
        .arg(&out)
        .status()
        .expect("run ilanet");
    assert!(status.success(), "ilanet bench latency failed: {status}");
    let text = std::fs::read_to_string(out.join("latency.json")).expect("latency.json");
    let md = std::fs::read_to_string(out.join("report.md")).expect("report.md");
    let _ = std::fs::remove_dir_all(&out);
    let v: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    let cases = v["cases"].as_array().expect("cases");
    assert_eq!(
        cases.len(),
        2 * 4,
        "2 modes × (tcp, udp) × (request, new-flow)"
    );
    assert_eq!(v["order"].as_array().map(Vec::len), Some(rounds));
    // Rotated: the second round starts with the mode the first did not.
    assert_ne!(v["order"][0][0], v["order"][1][0]);
    for c in cases {
        let name = format!("{} {} {}", c["mode"], c["proto"], c["kind"]);
        let f = |k: &str| c[k].as_f64().unwrap_or_else(|| panic!("{name}: {k}"));
        let (count, lost) = (
            c["count"].as_u64().expect("count") as usize,
            c["lost"].as_u64().expect("lost") as usize,
        );
        let asked = rounds
            * if c["kind"] == "request" {
                requests
            } else {
                new_flows
            };
        assert_eq!(count + lost, asked, "{name}: every request counted once");
        if c["proto"] == "tcp" {
            assert_eq!(lost, 0, "{name}: TCP loses nothing");
        }
        assert!(lost * 10 <= asked, "{name}: {lost} of {asked} lost");
        let (p50, p99, p999) = (f("p50_us"), f("p99_us"), f("p999_us"));
        assert!(f("min_us") > 0.0, "{name}");
        assert!(
            f("min_us") <= p50 && p50 <= p99 && p99 <= p999 && p999 <= f("max_us"),
            "{name}: {p50} {p99} {p999}"
        );
        assert!(
            p50 < 1_000_000.0,
            "{name}: p50 {p50} µs is not a lab round trip"
        );
        assert!(f("p50_ratio") > 0.0, "{name}: ratio to native");
        if c["mode"] == "native" {
            assert_eq!(f("p50_ratio"), 1.0, "{name}");
        }
    }
    assert!(
        md.contains("bench latency") && md.contains("ila+policy"),
        "{md}"
    );
}
