//! `ilanet bench fuzz policy`: policy files (JSON and YAML) through `policy::parse_policy_file`
//! and, when accepted, `policy::compile`. Seeds are the parser's test fixtures; mutations are
//! byte-level plus hostile shapes aimed at each limit: YAML alias bombs, deep nesting (block,
//! flow, JSON; under ignored fields too), huge strings, huge lists, many documents, files
//! over the size limit.
//!
//! Oracle beyond "no panic": an input built to exceed a limit must be refused with an error
//! that starts with the file name and names the limit's constant (`MAX_DEPTH`, `MAX_NODES`,
//! ...); anything else is a violation.

use ila::Vnid;
use policy::{CompileLimits, Identity, LabelSet};

use crate::fuzz_harness::{drive, mutate_bytes, FuzzConfig, FuzzReport, Generated, Rng, Verdict};
use crate::BenchError;

const SEEDS: [(&str, &str); 6] = [
    ("full.yaml", include_str!("../../policy/tests/fixtures/full.yaml")),
    (
        "listing10.json",
        include_str!("../../policy/tests/fixtures/listing10.json"),
    ),
    (
        "listing10.yaml",
        include_str!("../../policy/tests/fixtures/listing10.yaml"),
    ),
    (
        "small.json",
        r#"{"apiVersion":"cilium.io/v2","kind":"CiliumNetworkPolicy","metadata":{"name":"p","namespace":"3"},"spec":{"endpointSelector":{"matchLabels":{"app":"db"}},"ingress":[{"fromEndpoints":[{"matchLabels":{"app":"web"}}],"toPorts":[{"ports":[{"port":"5432","protocol":"TCP"}]}]}],"egressDeny":[{"toCIDR":["2001:db8::/32"]}]}}"#,
    ),
    (
        "small.yaml",
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: p\nspec:\n  endpointSelector:\n    matchLabels: {app: db}\n  ingress:\n    - fromEndpoints: [{matchLabels: {app: web}}]\n      toPorts: [{ports: [{port: 80, endPort: 90, protocol: TCP}]}]\n    - fromEntities: [host, world]\n",
    ),
    (
        "anchors.yaml",
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: a}\nspec:\n  endpointSelector: &sel {matchLabels: {app: web}}\n  ingress:\n    - fromEndpoints: [*sel]\n  egress:\n    - toEndpoints: [*sel]\n",
    ),
];

/// Pieces spliced into seeds: YAML/JSON syntax that changes structure.
const PIECES: [&[u8]; 16] = [
    b"&a ",
    b"*a",
    b"[",
    b"{",
    b"]",
    b"}",
    b"- ",
    b": ",
    b"!!binary ",
    b"\n---\n",
    b"<<: *a\n",
    b"99999999999999999999999999",
    b"\"\\u0000\"",
    b"? ",
    b"|\n  ",
    b"%YAML 1.1\n",
];

/// Which limit a hostile input is built to exceed (its constant's name must be in the error).
#[derive(Debug, Clone, Copy)]
enum Expect {
    Any,
    Limit(&'static str),
}

/// One input: a file name (it picks the format) and its bytes.
pub struct PolicyInput {
    name: &'static str,
    bytes: Vec<u8>,
    expect: Expect,
}

fn deep_yaml_block(depth: usize) -> String {
    let mut s = String::from("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p}\nspec: {endpointSelector: {}}\nstatus:\n");
    for i in 0..depth {
        s.push_str(&" ".repeat(2 * (i + 1)));
        s.push_str("a:\n");
    }
    s.push_str(&" ".repeat(2 * (depth + 1)));
    s.push_str("b: 1\n");
    s
}

fn nested(open: &str, close: &str, n: usize) -> String {
    let mut s = String::with_capacity((open.len() + close.len()) * n);
    for _ in 0..n {
        s.push_str(open);
    }
    for _ in 0..n {
        s.push_str(close);
    }
    s
}

/// "Billion laughs": `levels` anchors, each a list of `width` aliases of the one before.
fn alias_bomb(levels: usize, width: usize) -> String {
    let mut s = String::from("a0: &a0 [x]\n");
    for l in 1..=levels {
        s.push_str(&format!("a{l}: &a{l} ["));
        for w in 0..width {
            if w > 0 {
                s.push(',');
            }
            s.push_str(&format!("*a{}", l - 1));
        }
        s.push_str("]\n");
    }
    format!("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: p}}\nspec: {{endpointSelector: {{}}}}\nstatus:\n  {}", s.replace('\n', "\n  "))
}

fn hostile(rng: &mut Rng) -> (&'static str, PolicyInput) {
    let head_json =
        r#"{"apiVersion":"cilium.io/v2","kind":"CiliumNetworkPolicy","metadata":{"name":"p"},"#;
    match rng.below(9) {
        0 => {
            // Deep JSON under an ignored field, beyond MAX_DEPTH (sometimes far beyond).
            let depth = if rng.one_in(20) {
                10_000 + rng.below(50_000)
            } else {
                policy::MAX_DEPTH + rng.below(8)
            };
            let (o, c) = *rng.pick(&[("[", "]"), (r#"{"a":"#, "}")]);
            let text = format!(
                r#"{head_json}"spec":{{"endpointSelector":{{}}}},"status":{}}}"#,
                nested(o, c, depth)
            );
            (
                "deep-json",
                PolicyInput {
                    name: "deep.json",
                    bytes: text.into_bytes(),
                    expect: Expect::Limit("MAX_DEPTH"),
                },
            )
        }
        1 => {
            let depth = if rng.one_in(20) {
                10_000 + rng.below(50_000)
            } else {
                policy::MAX_DEPTH + rng.below(8)
            };
            let text = format!(
                "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: p}}\nspec: {{endpointSelector: {{}}}}\nstatus: {}\n",
                {
                    let (o, c) = *rng.pick(&[("[", "]"), ("{a: ", "}")]);
                    nested(o, c, depth)
                }
            );
            (
                "deep-yaml-flow",
                PolicyInput {
                    name: "deep.yaml",
                    bytes: text.into_bytes(),
                    expect: Expect::Limit("MAX_DEPTH"),
                },
            )
        }
        2 => {
            let spread = if rng.one_in(20) { 3000 } else { 8 };
            let depth = policy::MAX_DEPTH + rng.below(spread);
            (
                "deep-yaml-block",
                PolicyInput {
                    name: "deep.yaml",
                    bytes: deep_yaml_block(depth).into_bytes(),
                    expect: Expect::Limit("MAX_DEPTH"),
                },
            )
        }
        3 => {
            // 9^k values: beyond MAX_NODES (4 Mi) from k = 7.
            let levels = 7 + rng.below(3);
            (
                "alias-bomb",
                PolicyInput {
                    name: "bomb.yaml",
                    bytes: alias_bomb(levels, 9).into_bytes(),
                    expect: Expect::Limit("MAX_NODES"),
                },
            )
        }
        4 => {
            // A small bomb: accepted or refused for other reasons, never slow.
            let levels = 1 + rng.below(4);
            (
                "alias-small",
                PolicyInput {
                    name: "bomb.yaml",
                    bytes: alias_bomb(levels, 1 + rng.below(9)).into_bytes(),
                    expect: Expect::Any,
                },
            )
        }
        5 => {
            // Too many ports in one rule.
            let n = policy::MAX_PORTS_PER_RULE + 1 + rng.below(100);
            let ports: Vec<String> = (0..n)
                .map(|i| format!(r#"{{"port":"{}"}}"#, 1 + i % 60000))
                .collect();
            let text = format!(
                r#"{head_json}"spec":{{"endpointSelector":{{}},"ingress":[{{"toPorts":[{{"ports":[{}]}}]}}]}}}}"#,
                ports.join(",")
            );
            (
                "many-ports",
                PolicyInput {
                    name: "ports.json",
                    bytes: text.into_bytes(),
                    expect: Expect::Limit("MAX_PORTS_PER_RULE"),
                },
            )
        }
        6 => {
            let n = policy::MAX_POLICIES_PER_FILE + 1 + rng.below(10);
            let mut text = String::new();
            for i in 0..n {
                text.push_str(&format!("---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: p{i}}}\nspec: {{endpointSelector: {{}}}}\n"));
            }
            (
                "many-documents",
                PolicyInput {
                    name: "docs.yaml",
                    bytes: text.into_bytes(),
                    expect: Expect::Limit("MAX_POLICIES_PER_FILE"),
                },
            )
        }
        7 => {
            // A huge string value (up to 1 MiB) where a label value goes: refused by label
            // validation or accepted, quickly either way.
            let n = 1 + rng.below(1 << 20);
            let text = format!(
                r#"{head_json}"spec":{{"endpointSelector":{{"matchLabels":{{"app":"{}"}}}}}}}}"#,
                "x".repeat(n)
            );
            (
                "huge-string",
                PolicyInput {
                    name: "huge.json",
                    bytes: text.into_bytes(),
                    expect: Expect::Any,
                },
            )
        }
        _ => {
            let n = policy::MAX_FILE_BYTES + 1 + rng.below(1024);
            let mut text = format!(r#"{head_json}"spec":{{"endpointSelector":{{}}}},"status":""#);
            text.push_str(&"y".repeat(n));
            text.push_str("\"}");
            (
                "over-file-size",
                PolicyInput {
                    name: "big.json",
                    bytes: text.into_bytes(),
                    expect: Expect::Limit("MAX_FILE_BYTES"),
                },
            )
        }
    }
}

fn generate(rng: &mut Rng) -> Generated<PolicyInput> {
    let (kind, input) = match rng.below(1000) {
        // Hostile inputs cost up to a second (a 4-Mi-value bomb is counted to its limit), so
        // they are a small share of a run.
        0..=9 => {
            let (k, i) = hostile(rng);
            if matches!(
                k,
                "alias-bomb" | "over-file-size" | "many-documents" | "huge-string"
            ) && !rng.one_in(8)
            {
                // Keep the expensive ones rarer still.
                let (name, text) = *rng.pick(&SEEDS);
                (
                    "seed",
                    PolicyInput {
                        name: name_of(name),
                        bytes: text.as_bytes().to_vec(),
                        expect: Expect::Any,
                    },
                )
            } else {
                (k, i)
            }
        }
        10..=49 => {
            let (name, text) = *rng.pick(&SEEDS);
            (
                "seed",
                PolicyInput {
                    name: name_of(name),
                    bytes: text.as_bytes().to_vec(),
                    expect: Expect::Any,
                },
            )
        }
        50..=99 => {
            // Same bytes, the other parser (JSON is YAML too).
            let (name, text) = *rng.pick(&SEEDS);
            let other = if name.ends_with(".json") {
                "x.yaml"
            } else {
                "x.json"
            };
            (
                "cross-format",
                PolicyInput {
                    name: other,
                    bytes: mutate_bytes(rng, text.as_bytes(), &PIECES),
                    expect: Expect::Any,
                },
            )
        }
        _ => {
            let (name, text) = *rng.pick(&SEEDS);
            let mut bytes = text.as_bytes().to_vec();
            let rounds = if rng.one_in(4) { 2 + rng.below(2) } else { 1 };
            for _ in 0..rounds {
                bytes = mutate_bytes(rng, &bytes, &PIECES);
            }
            (
                "mutated",
                PolicyInput {
                    name: name_of(name),
                    bytes,
                    expect: Expect::Any,
                },
            )
        }
    };
    let size = input.bytes.len();
    Generated { kind, input, size }
}

/// The seed's file name, as a static string with the same extension.
fn name_of(seed: &str) -> &'static str {
    if seed.ends_with(".json") {
        "fuzz.json"
    } else {
        "fuzz.yaml"
    }
}

fn identities() -> Vec<(Identity, LabelSet)> {
    ["app=web", "app=db", "app=lb,role=x", "app=web,stage=test"]
        .iter()
        .enumerate()
        .filter_map(|(i, l)| {
            let labels = LabelSet::parse(&format!("{l},ilanet.io/tenant=7")).ok()?;
            Some((Identity(300 + i as u32), labels))
        })
        .collect()
}

/// Feeds one input; the outcome name is `accepted:<n policies>` or `refused:<limit or kind>`.
pub fn feed(input: &PolicyInput) -> Verdict {
    let Ok(tenant) = Vnid::new(7) else {
        return Verdict::Violation("setup".into(), "VNID 7 is not valid".into());
    };
    match policy::parse_policy_file(input.name, &input.bytes, tenant) {
        Ok(policies) => {
            if let Expect::Limit(limit) = input.expect {
                return Verdict::Violation(
                    "accepted-over-limit".into(),
                    format!(
                        "built to exceed {limit}, but {} policies parsed",
                        policies.len()
                    ),
                );
            }
            let compiled = policy::compile(&policies, &identities(), &CompileLimits::default());
            Verdict::ok(match compiled {
                Ok(_) => "accepted+compiled",
                Err(_) => "accepted+compile-refused",
            })
        }
        Err(e) => {
            let shown = e.to_string();
            if !shown.starts_with(input.name) {
                return Verdict::Violation(
                    "refused-without-file".into(),
                    format!("error does not name the file: {shown}"),
                );
            }
            let named = [
                "MAX_DEPTH",
                "MAX_NODES",
                "MAX_FILE_BYTES",
                "MAX_POLICIES_PER_FILE",
                "MAX_PORTS_PER_RULE",
                "MAX_RULES_PER_POLICY",
                "MAX_SPECS_PER_POLICY",
                "MAX_SELECTORS_PER_RULE",
                "MAX_CIDRS_PER_RULE",
                "MAX_LABELS_PER_SELECTOR",
                "MAX_VALUES_PER_EXPRESSION",
            ]
            .into_iter()
            .find(|l| shown.contains(l));
            match (input.expect, named) {
                (Expect::Limit(want), Some(got)) if want == got => {
                    Verdict::ok(format!("refused:{got}"))
                }
                (Expect::Limit(want), other) => Verdict::Violation(
                    format!("refused-not-naming:{want}"),
                    format!(
                        "built to exceed {want}, refused with {}: {}",
                        other.unwrap_or("no limit"),
                        shown.chars().take(300).collect::<String>()
                    ),
                ),
                (Expect::Any, Some(got)) => Verdict::ok(format!("refused:{got}")),
                (Expect::Any, None) => Verdict::ok("refused:invalid"),
            }
        }
    }
}

/// Runs the policy fuzzer.
pub fn run(cfg: &FuzzConfig, progress: &mut dyn FnMut(u64)) -> Result<FuzzReport, BenchError> {
    drive("policy", cfg, progress, generate, feed, |i| {
        let mut b = format!("# file name: {}\n", i.name).into_bytes();
        b.extend_from_slice(&i.bytes);
        b
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_run_has_no_panics_or_violations() {
        let r = run(
            &FuzzConfig {
                count: 3000,
                seed: 11,
                save_dir: None,
            },
            &mut |_| {},
        )
        .expect("run");
        assert_eq!((r.panics, r.violations), (0, 0), "{:#?}", r.findings);
        assert!(r.outcomes.keys().any(|k| k.starts_with("accepted")));
        assert!(r.outcomes.keys().any(|k| k.starts_with("refused")));
    }

    #[test]
    fn every_hostile_shape_is_refused_naming_its_limit() {
        let mut rng = Rng(5);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..400 {
            let (kind, input) = hostile(&mut rng);
            if kind == "over-file-size" && seen.contains(kind) {
                continue;
            }
            seen.insert(kind);
            match feed(&input) {
                Verdict::Ok(_) => {}
                Verdict::Violation(o, why) => panic!("{kind}: {o}: {why}"),
            }
        }
        assert_eq!(seen.len(), 9, "{seen:?}");
    }
}
