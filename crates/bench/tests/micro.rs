//! The micro-benchmark runs end to end (small repeat count: correctness, not figures).

use bench::micro;
use dataplane::ProgramKind;

#[test]
#[ignore = "needs root: eBPF (BPF_PROG_TEST_RUN)"]
fn microbench_covers_every_configuration() {
    let r = micro::run(1000).expect("benchmark runs and every hit really hits");
    assert_eq!(r.len(), 2 * 3 * 2 + 6);
    for case in [
        "ct-hit",
        "ct-hit-1run",
        "ct-miss",
        "ct-hit/100k-rules",
        "ct-hit-1run/100k-rules",
        "ct-miss/100k-rules",
    ] {
        let x = r.iter().find(|x| x.case == case).expect("enforcement case");
        assert!(
            x.ns_per_packet > 0.0 && x.ns_per_packet < 100_000.0,
            "{x:?}"
        );
    }
    for p in ProgramKind::ALL {
        for m in dataplane::ChecksumMode::ALL {
            for case in ["hit", "miss"] {
                let x = r
                    .iter()
                    .find(|x| x.program == p && x.csum_mode == m && x.case == case)
                    .expect("configuration present");
                assert!(
                    x.ns_per_packet > 0.0 && x.ns_per_packet < 100_000.0,
                    "{x:?}"
                );
            }
        }
    }
}
