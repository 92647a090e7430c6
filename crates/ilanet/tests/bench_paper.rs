//! `ilanet bench paper` and `ilanet bench rules` end to end on real namespaces (needs root and
//! iperf3): short campaigns whose result files must hold a throughput and a sane interval for
//! every case, the eBPF policy cases included (with the policy checked in force and its
//! compiled map entries recorded).

use std::path::PathBuf;
use std::process::Command;

fn temp_dir(tag: &str) -> PathBuf {
    // Per test: the tests of this file run in parallel in one process.
    let dir = std::env::temp_dir().join(format!("ilanet-bench-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
#[ignore = "needs root: network namespaces, eBPF, iperf3, iptables"]
fn bench_paper_quick_writes_results_for_every_available_scenario() {
    let out = temp_dir("paper");
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
        [
            "native",
            "ila",
            "ila+policy",
            "swarm",
            "swarm+iptables",
            "evpn"
        ]
    );
    for c in cases {
        let name = c["name"].as_str().unwrap_or("?");
        assert_eq!(c["available"], true, "{name}: every scenario is available");
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
    // ila+policy: Listing 10 was checked in force and compiled into the maps of both hosts.
    let p = &cases[2]["policy"];
    assert_eq!(p["names"], serde_json::json!(["listing10"]), "{p}");
    let verified = p["verified"].as_array().expect("verified");
    assert!(
        verified.iter().any(|v| v == "tcp/5202 dropped")
            && verified.iter().any(|v| v == "tcp/5201 passes"),
        "{verified:?}"
    );
    let entries = p["entries"].as_array().expect("entries");
    assert_eq!(entries.len(), 2, "one count per host");
    assert!(entries.iter().all(|e| e.as_u64() >= Some(1)), "{entries:?}");
    let report = std::fs::read_to_string(out.join("report.md")).expect("report");
    assert!(
        report.contains("| ila+policy |") && report.contains("checked in force"),
        "report shows ila+policy"
    );
    assert!(!report.contains("not available yet"), "nothing is pending");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
#[ignore = "needs root: network namespaces, eBPF, iperf3, iptables"]
fn bench_rules_quick_measures_iptables_and_ebpf_side_by_side() {
    let out = temp_dir("rules");
    let status = Command::new(env!("CARGO_BIN_EXE_ilanet"))
        .args([
            "bench",
            "rules",
            "--quick",
            "--rules",
            "0,100",
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
    assert!(status.success(), "ilanet bench rules failed: {status}");

    let text = std::fs::read_to_string(out.join("rules.json")).expect("rules.json");
    let v: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(v["complete"], true);
    let cases = v["cases"].as_array().expect("cases");
    let names: Vec<&str> = cases.iter().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(
        names,
        [
            "no-filter",
            "iptables/0",
            "iptables/100",
            "ebpf/0",
            "ebpf/100"
        ]
    );
    for c in cases {
        let name = c["name"].as_str().unwrap_or("?");
        let s = &c["summary"];
        assert_eq!(s["runs"], 2, "{name}");
        let mean = s["run_means"]["mean"].as_f64().expect("mean");
        assert!(mean > 0.1, "{name}: throughput {mean} Gbit/s");
        let ratio = s["ratio_to_baseline"]["mean"].as_f64().expect("ratio");
        assert!(ratio > 0.0, "{name}: ratio {ratio}");
    }
    // Rounds alternate the series: run k of every case shares its round.
    let ebpf = |n: usize| &cases[3 + n];
    for (i, extra) in [(0, 0u64), (1, 100)] {
        let c = ebpf(i);
        assert_eq!(c["series"], "ebpf");
        assert_eq!(
            c["baseline"], "ebpf/0",
            "eBPF ratios are to its own 0-rule case"
        );
        assert_eq!(
            c["total_rules"],
            extra + 1,
            "Listing 10 plus the extra rules"
        );
        let entries: Vec<u64> = c["policy"]["entries"]
            .as_array()
            .expect("entries")
            .iter()
            .filter_map(|e| e.as_u64())
            .collect();
        assert_eq!(entries.len(), 2, "{entries:?}");
        // Both endpoints share one identity, so each rule is one entry: Listing 10's plus N.
        assert!(
            entries.iter().all(|e| *e == entries[0] && *e > extra),
            "ebpf/{extra}: {entries:?}"
        );
    }
    let e0 = ebpf(0)["policy"]["entries"][0].as_u64().expect("e0");
    let e100 = ebpf(1)["policy"]["entries"][0].as_u64().expect("e100");
    assert_eq!(e100 - e0, 100, "every extra rule is its own map entry");
    let applies = ebpf(1)["policy"]["apply_secs"].as_array().expect("apply");
    assert_eq!(
        applies.len(),
        2,
        "the 100 rules are applied before each of its runs"
    );
    assert!(applies.iter().all(|a| a.as_f64().is_some_and(|x| x > 0.0)));
    let notes = v["notes"].to_string();
    assert!(
        notes.contains("tcp/5202 dropped"),
        "Listing 10 checked: {notes}"
    );
    for f in [
        "rules.csv",
        "rules-samples.csv",
        "report.md",
        "rules.png",
        "rules.svg",
    ] {
        assert!(out.join(f).is_file(), "{f} written");
    }
    let report = std::fs::read_to_string(out.join("report.md")).expect("report");
    assert!(
        report.contains("eBPF target"),
        "report judges the eBPF target"
    );
    let _ = std::fs::remove_dir_all(&out);
}
