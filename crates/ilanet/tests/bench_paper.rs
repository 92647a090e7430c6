//! `ilanet bench paper` end to end on real namespaces (needs root and iperf3): a short campaign
//! whose `results.json` must hold a throughput and a sane interval for every available scenario.

use std::path::PathBuf;
use std::process::Command;

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ilanet-bench-paper-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn bench_paper_quick_writes_results_for_every_available_scenario() {
    let out = temp_dir();
    // Smaller than --quick: 2 rounds of 3 s (one warm-up interval dropped) keep this under a
    // minute while still giving two runs for a t-interval over runs.
    let status = Command::new(env!("CARGO_BIN_EXE_ilanet"))
        .args([
            "bench",
            "paper",
            "--quick",
            "--runs",
            "2",
            "--duration",
            "3",
            "--skip",
            "1",
        ])
        .arg("--out")
        .arg(&out)
        .status()
        .expect("run ilanet");
    assert!(status.success(), "ilanet bench paper failed: {status}");

    let text = std::fs::read_to_string(out.join("results.json")).expect("results.json");
    let v: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(v["complete"], true);
    let cases = v["cases"].as_array().expect("cases");
    let names: Vec<&str> = cases.iter().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(
        names,
        ["native", "ila", "ila+policy", "swarm", "swarm+iptables"]
    );
    for c in cases {
        let name = c["name"].as_str().unwrap_or("?");
        if c["available"] != true {
            assert!(
                c["note"]
                    .as_str()
                    .unwrap_or("")
                    .contains("not available yet"),
                "{name}: an unavailable scenario says why"
            );
            continue;
        }
        let s = &c["summary"];
        assert_eq!(s["runs"], 2, "{name}");
        for (what, sum) in [
            ("intervals", &s["intervals"]),
            ("run means", &s["run_means"]),
        ] {
            let mean = sum["mean"].as_f64().expect("mean");
            let lo = sum["ci_low"].as_f64().expect("ci_low");
            let hi = sum["ci_high"].as_f64().expect("ci_high");
            assert!(mean > 0.1, "{name} {what}: throughput {mean} Gbit/s");
            assert!(
                lo <= mean && mean <= hi,
                "{name} {what}: {lo} <= {mean} <= {hi}"
            );
        }
        let ratio = s["ratio_to_baseline"]["mean"].as_f64().expect("ratio");
        assert!(ratio > 0.0, "{name}: ratio to native {ratio}");
        for r in c["runs"].as_array().expect("runs") {
            let raw = out.join(r["raw"].as_str().expect("raw path"));
            assert!(raw.is_file(), "{name}: raw iperf3 JSON {}", raw.display());
        }
    }
    for f in [
        "results.csv",
        "results-samples.csv",
        "report.md",
        "fig14.png",
        "fig14.svg",
    ] {
        assert!(out.join(f).is_file(), "{f} written");
    }
    let report = std::fs::read_to_string(out.join("report.md")).expect("report");
    assert!(
        report.contains("not available yet"),
        "report notes ila+policy"
    );
    let _ = std::fs::remove_dir_all(&out);
}
