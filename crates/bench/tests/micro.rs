//! The micro-benchmark runs end to end (small repeat count: correctness, not figures).

use bench::micro;
use dataplane::ProgramKind;

#[test]
#[ignore = "needs root: eBPF (BPF_PROG_TEST_RUN)"]
fn microbench_covers_every_configuration() {
    let r = micro::run(1000, 21).expect("benchmark runs and every hit really hits");
    assert_eq!(r.results.len(), 2 * 3 * 2 + 6);
    let sane = |x: &micro::MicroResult| {
        assert!(
            x.ns_per_packet > 0.0 && x.ns_per_packet < 100_000.0,
            "{x:?}"
        );
        assert!(x.baseline_ns > 0.0 && x.baseline_ns < 100_000.0, "{x:?}");
        // The difference is of the same pairs: it cannot exceed the raw figure's range.
        assert!(x.above_baseline_ns.is_finite(), "{x:?}");
        assert!(x.above_baseline_ns < x.ns_per_packet, "{x:?}");
        if let Some([lo, hi]) = x.above_ci95 {
            assert!(lo <= hi, "{x:?}");
        }
        let want = micro::target_for(x.csum_mode, &x.case).map(|t| t.0);
        assert_eq!(x.target.map(|t| t.kind), want, "{x:?}");
    };
    for (case, samples, repeat) in [
        ("ct-hit", micro::ROUNDS, 1000),
        ("ct-hit-1run", 21, 1),
        ("ct-miss", 21, 1),
        ("ct-hit/100k-rules", micro::ROUNDS, 1000),
        ("ct-hit-1run/100k-rules", 21, 1),
        ("ct-miss/100k-rules", 21, 1),
    ] {
        let x = r
            .results
            .iter()
            .find(|x| x.case == case)
            .expect("enforcement case");
        sane(x);
        assert_eq!((x.samples, x.repeat), (samples, repeat), "{x:?}");
    }
    for p in ProgramKind::ALL {
        for m in dataplane::ChecksumMode::ALL {
            for case in ["hit", "miss"] {
                let x = r
                    .results
                    .iter()
                    .find(|x| x.program == p && x.csum_mode == m && x.case == case)
                    .expect("configuration present");
                sane(x);
                assert_eq!(x.samples, micro::ROUNDS);
            }
        }
    }
    // The report round-trips through its JSON and renders every case.
    let dir = std::env::temp_dir().join(format!("ilanet-micro-{}", std::process::id()));
    bench::report::save_micro(&dir, &r).expect("report written");
    let md = std::fs::read_to_string(dir.join("report.md")).expect("report.md");
    let back: micro::MicroReport =
        serde_json::from_slice(&std::fs::read(dir.join("micro.json")).expect("micro.json"))
            .expect("micro.json parses");
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(back.results.len(), r.results.len());
    assert!(md.contains("above baseline"), "{md}");
    assert_eq!(md.matches("| from-container |").count(), 3 * 2 + 6, "{md}");
}
