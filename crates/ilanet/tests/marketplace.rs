//! `ilanet marketplace` as a user runs it: the answer checked against this test's own
//! computation over the data files the search containers read, the exfiltration attempts
//! dropped by the data path (with its drop events), the other tenant unreachable, and bad
//! input refused before anything is built.

use std::collections::BTreeMap;
use std::process::{Command, Output};

mod common;
use common::text;

const BIN: &str = env!("CARGO_BIN_EXE_ilanet");

fn ilanet(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("run ilanet")
}

/// Removes the lab even when an assertion fails.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = ilanet(&["lab", "down", "--name", &self.0]);
    }
}

/// One record of a data file, parsed here without the binary's code.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    id: String,
    category: String,
    year: u64,
    score: u64,
}

fn read_rows(path: &str) -> Vec<Row> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("id,category,year,score,subject"),
        "{path}"
    );
    lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            assert_eq!(f.len(), 5, "{path}: {l}");
            assert!(f[4].starts_with("subject-"), "{path}: {l}");
            Row {
                id: f[0].to_string(),
                category: f[1].to_string(),
                year: f[2].parse().expect("year"),
                score: f[3].parse().expect("score"),
            }
        })
        .collect()
}

#[test]
#[ignore = "needs root: network namespaces, eBPF, agents"]
fn marketplace_answers_exactly_and_drops_every_exfiltration() {
    let name = format!("mk{}", std::process::id());
    let _cleanup = Cleanup(name.clone());
    // The query this test evaluates itself, below.
    let query = "category=genome and score>=40 and year<2020";
    let out = ilanet(&[
        "marketplace",
        "--name",
        &name,
        "--records",
        "400",
        "--seed",
        "99",
        "--query",
        query,
        "--keep",
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}\n{}", text(&out)));
    assert_eq!(v["passed"], true, "{v:#}");
    let markets = v["marketplaces"].as_array().expect("marketplaces");
    assert_eq!(markets.len(), 2);

    let mut answers = Vec::new();
    for m in markets {
        let sites = m["sites"].as_array().expect("sites");
        assert_eq!(sites.len(), 3);
        // This test's own computation over the files the containers read.
        let mut union: BTreeMap<String, Row> = BTreeMap::new();
        let mut copies = 0;
        for s in sites {
            let rows = read_rows(s["data_file"].as_str().expect("data_file"));
            assert_eq!(rows.len(), 400);
            for r in rows {
                if let Some(seen) = union.get(&r.id) {
                    assert_eq!(seen, &r, "a shared record is the same at every site");
                    copies += 1;
                } else {
                    union.insert(r.id.clone(), r);
                }
            }
            assert_eq!(s["delivered"], true, "{s}");
        }
        assert!(copies > 0, "the sites' data sets overlap");
        let expected: Vec<(String, String, u64, u64)> = union
            .into_values()
            .filter(|r| r.category == "genome" && r.score >= 40 && r.year < 2020)
            .map(|r| (r.id, r.category, r.year, r.score))
            .collect();
        let got: Vec<(String, String, u64, u64)> = m["answer"]
            .as_array()
            .expect("answer")
            .iter()
            .map(|h| {
                (
                    h["id"].as_str().expect("id").to_string(),
                    h["category"].as_str().expect("category").to_string(),
                    h["year"].as_u64().expect("year"),
                    h["score"].as_u64().expect("score"),
                )
            })
            .collect();
        assert!(!expected.is_empty(), "the query selects something");
        assert_eq!(got, expected, "{}: the answer", m["tenant"]);
        // Duplicates really were removed by the correlate, not avoided upstream.
        let matched: u64 = sites
            .iter()
            .map(|s| s["matched"].as_u64().expect("n"))
            .sum();
        assert_eq!(m["received"].as_u64(), Some(matched));
        assert_eq!(
            m["duplicates_removed"].as_u64().expect("dups") + got.len() as u64,
            matched
        );
        assert!(m["duplicates_removed"].as_u64() > Some(0));
        // Search → correlate went through the policy: allowed at egress and ingress.
        assert_eq!(m["allow_verdicts"], 6, "{m}");
        answers.push(got);
    }
    assert_ne!(
        answers[0], answers[1],
        "the two marketplaces hold different data"
    );

    let attempts = v["exfiltration"].as_array().expect("exfiltration");
    // Per marketplace: its New Orleans search sends its raw data to another of its sites and to
    // the other marketplace's correlate; its correlate (no egress policy) tries the other's.
    assert_eq!(attempts.len(), 6, "{attempts:#?}");
    for a in attempts {
        assert_eq!(a["dropped"], true, "{a:#}");
        assert_eq!(a["delivered"], false, "{a:#}");
        assert_eq!(a["failure"], "timed-out", "{a:#}");
        assert_eq!(a["reached_target"], 0, "{a:#}");
        let from_search = a["from"].as_str().is_some_and(|f| f.contains("-search-"));
        // Dropped where it left: the sender's own host, on its egress — by the marketplace
        // policy for a search container, by tenant isolation for the correlate.
        let (host, reason) = if from_search {
            ("nola", "default-deny")
        } else {
            ("denver", "tenant-isolation")
        };
        let events = a["drop_events"].as_array().expect("events");
        assert!(!events.is_empty(), "the data path reported the drop: {a:#}");
        for e in events {
            assert_eq!(e["host"], host, "{a:#}");
            assert_eq!(e["program"], "from-container", "{a:#}");
            assert_eq!(e["reason"], reason, "{a:#}");
            assert_eq!(e["direction"], "egress", "{a:#}");
        }
        assert_eq!(a["explain"]["verdict"], "deny", "{a:#}");
    }
    let cross: Vec<_> = attempts
        .iter()
        .filter(|a| a["tenant"] != a["to_tenant"])
        .collect();
    assert_eq!(cross.len(), 4, "two cross-tenant attempts per marketplace");
    assert!(cross
        .iter()
        .all(|a| a["to"].as_str().is_some_and(|t| t.ends_with("-correlate"))));
    assert!(v["drop_counters"]["nola"]["policy"].as_u64() >= Some(4));
    assert!(v["drop_counters"]["denver"]["tenant"].as_u64() >= Some(2));

    // The human output of the same data: the table says it too.
    let human = String::from_utf8_lossy(&out.stderr);
    assert!(human.contains("DROPPED"), "{human}");
    assert!(human.contains("EQUAL"), "{human}");

    // --keep kept it; `lab down` removes every namespace of it.
    let down = ilanet(&["lab", "down", "--name", &name]);
    assert!(down.status.success(), "{}", text(&down));
    let left: Vec<_> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&format!("{name}-")))
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "namespaces left: {left:?}");
}

#[test]
#[ignore = "needs root: network namespaces, eBPF, agents"]
fn marketplace_without_keep_leaves_nothing_behind() {
    let name = format!("mq{}", std::process::id());
    let _cleanup = Cleanup(name.clone());
    let out = ilanet(&[
        "marketplace",
        "--name",
        &name,
        "--tenants",
        "1",
        "--records",
        "50",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains("EQUAL") && t.contains("All checks passed"),
        "{t}"
    );
    let left: Vec<_> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&format!("{name}-")))
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "namespaces left: {left:?}");
    let status = ilanet(&["lab", "status", "--name", &name]);
    assert!(
        !status.status.success(),
        "the lab is gone: {}",
        text(&status)
    );
}

/// GET `path` from the dashboard at `host_port` with the session cookie: status and body.
fn get(host_port: &str, path: &str, token: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(host_port).expect("connect to the dashboard");
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host_port}\r\nCookie: ilanet_ui={token}\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("response");
    let status = resp
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, resp)
}

#[test]
#[ignore = "needs root: network namespaces, eBPF, agents"]
fn marketplace_ui_shows_the_lab_and_both_replays_then_ctrl_c_tears_down() {
    use std::io::BufRead;
    let name = format!("mu{}", std::process::id());
    let _cleanup = Cleanup(name.clone());
    let mut child = Command::new(BIN)
        .args(["marketplace", "--name", &name, "--records", "100", "--ui"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = std::io::BufReader::new(stdout).lines();
    let mut url = None;
    let mut replays = Vec::new();
    let mut seen = String::new();
    for line in lines.by_ref() {
        let line = line.expect("line");
        seen.push_str(&line);
        seen.push('\n');
        if let Some(u) = line.strip_prefix("Dashboard: ") {
            url = Some(u.trim().to_string());
        }
        if line.contains("marketplace-search --data") {
            replays.push(line.trim().to_string());
        }
        if line.starts_with("Ctrl-C stops the dashboard") {
            break;
        }
    }
    assert!(seen.contains("All checks passed"), "{seen}");
    let url = url.unwrap_or_else(|| panic!("no dashboard URL in:\n{seen}"));
    let (host_port, token) = url
        .strip_prefix("http://")
        .and_then(|r| r.split_once("/?token="))
        .unwrap_or_else(|| panic!("URL {url}"));
    assert!(host_port.starts_with("127.0.0.1:"), "loopback only: {url}");
    let (status, _) = get(host_port, "/api/state", "0123");
    assert_eq!(status, 401, "a wrong token is refused");
    let (status, body) = get(host_port, "/api/state", token);
    assert_eq!(status, 200, "{body}");
    for c in [
        "a-search-nola",
        "a-search-austin",
        "a-search-slc",
        "a-correlate",
        "b-correlate",
    ] {
        assert!(body.contains(c), "{c} on the dashboard: {body}");
    }
    // The two commands the run printed, typed as in a container's terminal: the search is
    // delivered, its raw data is dropped; the dashboard shows both.
    let [search, raw] = &replays[..] else {
        panic!("two replay lines expected in:\n{seen}")
    };
    let in_container = |cmd: &str| {
        let words: Vec<&str> = cmd.split_whitespace().collect();
        Command::new("ip")
            .args(["netns", "exec", &format!("{name}-a-search-nola")])
            .args(&words)
            .output()
            .expect("replay")
    };
    let st = in_container(search);
    assert!(st.status.success(), "delivered: {}", text(&st));
    let st = in_container(raw);
    assert_eq!(st.status.code(), Some(2), "not delivered: {}", text(&st));
    assert!(
        String::from_utf8_lossy(&st.stdout).contains("timed-out"),
        "{}",
        text(&st)
    );
    common::wait_for(
        "both replays on the dashboard",
        std::time::Duration::from_secs(10),
        || {
            let (_, body) = get(host_port, "/api/state", token);
            body.contains("\"src_name\":\"a-search-nola\"")
                && body.contains("\"dst_name\":\"b-correlate\"")
                && body.contains("\"dst_name\":\"a-correlate\"")
                && body.contains("\"kind\":\"dropped\"")
                && body.contains("\"kind\":\"delivered\"")
        },
    );
    // Ctrl-C: the dashboard stops and the lab goes.
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let status = child.wait().expect("wait");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(status.success(), "{status}: {rest:?}");
    assert!(
        rest.iter().any(|l| l.contains("Removing the lab")),
        "{rest:?}"
    );
    let left: Vec<_> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&format!("{name}-")))
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "namespaces left: {left:?}");
}

#[test]
fn bad_input_is_refused_before_anything_is_built() {
    for (args, want) in [
        (vec!["--records", "0"], "--records must be 1 to 100000"),
        (vec!["--records", "100001"], "--records must be 1 to 100000"),
        (vec!["--records=-3"], "invalid value '-3' for '--records"),
        (vec!["--tenants", "0"], "--tenants must be 1 to 4"),
        (vec!["--tenants", "5"], "--tenants must be 1 to 4"),
        (vec!["--seed", "x"], "--seed"),
        (vec!["--query", "colour=red"], "unknown field 'colour'"),
        (vec!["--query", "score>=lots"], "score 'lots'"),
        (vec!["--name", "Bad Name"], "lab name 'Bad Name'"),
        (vec!["--routing", "ospf"], "unknown routing 'ospf'"),
        (vec!["--bogus"], "--bogus"),
    ] {
        let mut all = vec!["marketplace"];
        all.extend(&args);
        let out = ilanet(&all);
        let t = text(&out);
        assert!(!out.status.success(), "{args:?} must fail: {t}");
        assert!(t.contains(want), "{args:?}: expected '{want}' in: {t}");
        assert!(!t.contains("Building lab"), "{args:?}: nothing built: {t}");
    }
}
