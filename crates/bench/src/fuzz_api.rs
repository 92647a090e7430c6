//! `ilanet bench fuzz api`: agent API request lines through `agent::api::decode_request` (what
//! the agent's socket server decodes each line with), and the same bytes as a response line
//! through the client's decoder.
//!
//! Oracle beyond "no panic": a request built within the bounds decodes to itself (round trip);
//! one built beyond a bound (labels, string length, policy records, attachments) is refused
//! with an error naming the limit.

use std::collections::BTreeMap;

use agent::api::{
    decode_request, CniAttachmentId, Request, Response, MAX_REQUEST_ATTACHMENTS, MAX_REQUEST_FIELD,
    MAX_REQUEST_LABELS, MAX_REQUEST_POLICIES,
};

use crate::fuzz_harness::{drive, mutate_bytes, FuzzConfig, FuzzReport, Generated, Rng, Verdict};
use crate::BenchError;

/// One input: a request line, and what it must decode to if known.
pub struct ApiInput {
    line: Vec<u8>,
    expect: Expect,
}

enum Expect {
    Any,
    Same(Box<Request>),
    Limit(&'static str),
}

const WORDS: [&str; 8] = [
    "web",
    "db-1",
    "",
    "eth0",
    "/run/netns/a",
    "tcp",
    "é\u{0}",
    "x.y_z",
];
const PIECES: [&[u8]; 10] = [
    b"\"op\":",
    b"\"status\"",
    b"{",
    b"[",
    b"\\u0000",
    b"\\ud800",
    b"1e999",
    b"-1",
    b"99999999999999999999",
    b"null",
];

fn word(rng: &mut Rng) -> String {
    rng.pick(&WORDS).to_string()
}

fn labels(rng: &mut Rng, n: usize) -> BTreeMap<String, String> {
    (0..n)
        .map(|i| (format!("k{i}-{}", word(rng)), word(rng)))
        .collect()
}

fn request(rng: &mut Rng) -> Request {
    match rng.below(15) {
        0 => Request::Status,
        1 => {
            let n = rng.below(4);
            Request::EndpointAdd {
                name: word(rng),
                tenant: rng.one_in(2).then(|| word(rng)),
                identifier: rng.one_in(2).then(|| ila::Identifier(rng.next_u64())),
                replace: rng.one_in(2),
                labels: labels(rng, n),
            }
        }
        2 => Request::EndpointDel {
            name: word(rng),
            keep_mapping: rng.one_in(2),
        },
        3 => Request::EndpointList,
        4 => Request::Mappings,
        5 => Request::PolicyApply {
            records: (0..rng.below(3))
                .map(|_| store::PolicyRecord {
                    name: word(rng),
                    document: r#"{"spec":{}}"#.into(),
                })
                .collect(),
        },
        6 => Request::PolicyDelete { name: word(rng) },
        7 => Request::PolicyList,
        8 => {
            let n = rng.below(4);
            Request::CniAdd {
                container_id: word(rng),
                netns: word(rng),
                ifname: word(rng),
                tenant: rng.one_in(2).then(|| word(rng)),
                labels: labels(rng, n),
            }
        }
        9 => Request::CniDel {
            container_id: word(rng),
            ifname: word(rng),
        },
        10 => Request::CniCheck {
            container_id: word(rng),
            ifname: word(rng),
            netns: word(rng),
        },
        11 => Request::CniGc {
            valid: (0..rng.below(4))
                .map(|_| CniAttachmentId {
                    container_id: word(rng),
                    ifname: word(rng),
                })
                .collect(),
        },
        12 => Request::BgpStatus,
        13 => Request::BgpRoutes,
        _ => Request::PolicyExplain {
            from: word(rng),
            to: word(rng),
            port: rng.next_u64() as u16,
            proto: word(rng),
        },
    }
}

fn over_limit(rng: &mut Rng) -> (Request, &'static str) {
    match rng.below(4) {
        0 => {
            let n = MAX_REQUEST_LABELS + 1 + rng.below(100);
            (
                Request::CniAdd {
                    container_id: "c".into(),
                    netns: "/run/netns/x".into(),
                    ifname: "eth0".into(),
                    tenant: None,
                    labels: labels(rng, n),
                },
                "MAX_REQUEST_LABELS",
            )
        }
        1 => (
            Request::EndpointDel {
                name: "n".repeat(MAX_REQUEST_FIELD + 1 + rng.below(1 << 16)),
                keep_mapping: false,
            },
            "MAX_REQUEST_FIELD",
        ),
        2 => (
            Request::PolicyApply {
                records: (0..MAX_REQUEST_POLICIES + 1)
                    .map(|i| store::PolicyRecord {
                        name: format!("p{i}"),
                        document: "{}".into(),
                    })
                    .collect(),
            },
            "MAX_REQUEST_POLICIES",
        ),
        _ => (
            Request::CniGc {
                valid: (0..MAX_REQUEST_ATTACHMENTS + 1)
                    .map(|i| CniAttachmentId {
                        container_id: format!("{i}"),
                        ifname: "eth0".into(),
                    })
                    .collect(),
            },
            "MAX_REQUEST_ATTACHMENTS",
        ),
    }
}

fn generate(rng: &mut Rng) -> Generated<ApiInput> {
    let (kind, input) = match rng.below(1000) {
        0..=1 => {
            let (req, limit) = over_limit(rng);
            if limit == "MAX_REQUEST_ATTACHMENTS" && !rng.one_in(20) {
                // 100,001 attachments is 4 MB of JSON: keep it rare.
                let req = request(rng);
                (
                    "valid",
                    ApiInput {
                        line: serde_json::to_vec(&req).unwrap_or_default(),
                        expect: Expect::Same(Box::new(req)),
                    },
                )
            } else {
                (
                    "over-limit",
                    ApiInput {
                        line: serde_json::to_vec(&req).unwrap_or_default(),
                        expect: Expect::Limit(limit),
                    },
                )
            }
        }
        2..=5 => {
            // Deep nesting where a value goes (serde_json's recursion limit must hold).
            let depth = 100 + rng.below(100_000);
            let mut line = br#"{"op":"policy_apply","records":"#.to_vec();
            line.extend(std::iter::repeat_n(b'[', depth));
            line.extend(std::iter::repeat_n(b']', depth));
            line.push(b'}');
            (
                "deep",
                ApiInput {
                    line,
                    expect: Expect::Any,
                },
            )
        }
        6..=200 => {
            let req = request(rng);
            (
                "valid",
                ApiInput {
                    line: serde_json::to_vec(&req).unwrap_or_default(),
                    expect: Expect::Same(Box::new(req)),
                },
            )
        }
        201..=230 => {
            let n = rng.below(200);
            (
                "random",
                ApiInput {
                    line: rng.bytes(n),
                    expect: Expect::Any,
                },
            )
        }
        _ => {
            let req = request(rng);
            let mut line = serde_json::to_vec(&req).unwrap_or_default();
            for _ in 0..1 + rng.below(3) {
                line = mutate_bytes(rng, &line, &PIECES);
            }
            (
                "mutated",
                ApiInput {
                    line,
                    expect: Expect::Any,
                },
            )
        }
    };
    let size = input.line.len();
    Generated { kind, input, size }
}

/// Feeds one line; outcomes: `request:<op>`, `refused:<limit>`, `refused:invalid`.
pub fn feed(i: &ApiInput) -> Verdict {
    // The client's reply decoder sees whatever an agent (or an impostor) writes.
    let _ = serde_json::from_slice::<Response>(&i.line);
    let got = decode_request(&i.line);
    match (&i.expect, got) {
        (Expect::Same(want), Ok(req)) if **want == req => {
            Verdict::ok(format!("request:{}", op(&req)))
        }
        (Expect::Same(want), other) => Verdict::Violation(
            "round-trip".into(),
            format!("encoded {want:?}, decoded {other:?}"),
        ),
        (Expect::Limit(limit), Err(e)) if e.contains(limit) => {
            Verdict::ok(format!("refused:{limit}"))
        }
        (Expect::Limit(limit), other) => Verdict::Violation(
            format!("not-refused:{limit}"),
            format!(
                "built beyond {limit}: {}",
                format!("{other:?}").chars().take(300).collect::<String>()
            ),
        ),
        (Expect::Any, Ok(req)) => Verdict::ok(format!("request:{}", op(&req))),
        (Expect::Any, Err(e)) => Verdict::ok(match e.find("(limit ") {
            Some(_) => "refused:limit",
            None => "refused:invalid",
        }),
    }
}

fn op(r: &Request) -> String {
    serde_json::to_value(r)
        .ok()
        .and_then(|v| v.get("op").and_then(|o| o.as_str()).map(str::to_string))
        .unwrap_or_default()
}

/// Runs the API fuzzer.
pub fn run(cfg: &FuzzConfig, progress: &mut dyn FnMut(u64)) -> Result<FuzzReport, BenchError> {
    drive("api", cfg, progress, generate, feed, |i| i.line.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_run_has_no_panics_or_violations() {
        let r = run(
            &FuzzConfig {
                count: 5000,
                seed: 9,
                save_dir: None,
            },
            &mut |_| {},
        )
        .expect("run");
        assert_eq!((r.panics, r.violations), (0, 0), "{:#?}", r.findings);
        assert!(r.outcomes.keys().any(|k| k.starts_with("request:")));
        assert!(r.outcomes.contains_key("refused:invalid"));
    }

    #[test]
    fn every_bound_is_refused_naming_its_limit() {
        let mut rng = Rng(1);
        let mut seen = std::collections::BTreeSet::new();
        while seen.len() < 4 {
            let (req, limit) = over_limit(&mut rng);
            seen.insert(limit);
            let line = serde_json::to_vec(&req).expect("json");
            let e = decode_request(&line).expect_err(limit);
            assert!(e.contains(limit), "{e}");
        }
    }
}
