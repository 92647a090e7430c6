//! Regression cases in `tests/regressions/` (see its README): hostile policy files are refused
//! quickly with an error that names the file and the limit; `ok--` files parse.

use std::time::{Duration, Instant};

use ila::Vnid;

#[test]
fn every_regression_case_is_refused_naming_its_limit() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/regressions");
    let mut cases = 0;
    for entry in std::fs::read_dir(&dir).expect("regressions dir") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("name")
            .to_string();
        let Some((limit, _)) = name.split_once("--") else {
            continue;
        };
        let bytes = std::fs::read(&path).expect("read");
        let started = Instant::now();
        let result = policy::parse_policy_file(&name, &bytes, Vnid::new(1).expect("vnid"));
        // No slowness from hostile shapes (generous: debug build, shared machine).
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{name} took {:?}",
            started.elapsed()
        );
        match (limit, result) {
            ("ok", Ok(_)) => {}
            ("ok", Err(e)) => panic!("{name} must parse: {e}"),
            (limit, Ok(p)) => panic!(
                "{name} must be refused by {limit}, parsed {} policies",
                p.len()
            ),
            (limit, Err(e)) => {
                let shown = e.to_string();
                assert!(shown.starts_with(&name), "{name}: {shown}");
                assert!(
                    shown.contains(limit),
                    "{name}: `{shown}` does not name {limit}"
                );
            }
        }
        cases += 1;
    }
    assert!(cases >= 7, "{cases} cases in {}", dir.display());
}
