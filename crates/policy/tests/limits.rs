//! Resource limits of policy parsing (issue 9, item 4): a valid but hostile file is refused
//! quickly, with an error naming the limit, and never makes parsing slow or large. Every
//! input here used to be accepted (or to take minutes).

use ila::Vnid;
use policy::{
    parse_policy_file, PolicyFileError, MAX_DEPTH, MAX_FILE_BYTES, MAX_NODES,
    MAX_POLICIES_PER_FILE, MAX_PORTS_PER_RULE, MAX_RULES_PER_POLICY, MAX_SELECTORS_PER_RULE,
};

fn t(n: u32) -> Vnid {
    Vnid::new(n).unwrap()
}

#[track_caller]
fn refused(name: &str, text: &[u8], limit: &str, value: usize) -> PolicyFileError {
    let e = match parse_policy_file(name, text, t(1)) {
        Ok(p) => panic!(
            "{name} should be refused by {limit}, parsed {} policies",
            p.len()
        ),
        Err(e) => e,
    };
    let shown = e.to_string();
    assert!(shown.contains(limit), "`{shown}` does not name {limit}");
    assert!(
        shown.contains(&value.to_string()),
        "`{shown}` does not give the value {value} of {limit}"
    );
    assert!(shown.starts_with(name), "{shown}");
    e
}

/// Levels of nesting the issue's policy had.
const DEEP: usize = 60_000;

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

const JSON_HEAD: &str =
    r#"{"apiVersion":"cilium.io/v2","kind":"CiliumNetworkPolicy","metadata":{"name":"p"},"#;
const YAML_HEAD: &str =
    "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: p\n";

#[test]
fn deep_json_under_status_is_refused() {
    for deep in [nested("[", "]", DEEP), nested(r#"{"a":"#, "}", DEEP)] {
        let text = format!(r#"{JSON_HEAD}"spec":{{"endpointSelector":{{}}}},"status":{deep}}}"#);
        let e = refused("deep.json", text.as_bytes(), "MAX_DEPTH", MAX_DEPTH);
        assert!(e.path.starts_with("status"), "{e}");
    }
}

#[test]
fn deep_json_under_spec_is_refused() {
    let deep = nested("[", "]", DEEP);
    let text = format!(r#"{JSON_HEAD}"spec":{{"endpointSelector":{{}},"labels":{deep}}}}}"#);
    let e = refused("deep.json", text.as_bytes(), "MAX_DEPTH", MAX_DEPTH);
    assert!(e.path.starts_with("spec.labels"), "{e}");
    // The same in a bare list of specs.
    let text = format!(r#"[{{"endpointSelector":{{}},"labels":{deep}}}]"#);
    let e = refused("deep.json", text.as_bytes(), "MAX_DEPTH", MAX_DEPTH);
    assert!(e.path.starts_with("[0].labels"), "{e}");
}

#[test]
fn deep_yaml_under_status_is_refused() {
    for deep in [nested("[", "]", DEEP), nested("{a: ", "}", DEEP)] {
        let text = format!("{YAML_HEAD}spec:\n  endpointSelector: {{}}\nstatus: {deep}\n");
        // Refused by the pre-scan, before libyaml: named by line and column.
        let e = refused("deep.yaml", text.as_bytes(), "MAX_DEPTH", MAX_DEPTH);
        assert!(e.message.starts_with("line 7 column "), "{e}");
    }
}

#[test]
fn deep_yaml_under_spec_is_refused() {
    let deep = nested("[", "]", DEEP);
    let text = format!("{YAML_HEAD}spec:\n  endpointSelector: {{}}\n  labels: {deep}\n");
    let e = refused("deep.yaml", text.as_bytes(), "MAX_DEPTH", MAX_DEPTH);
    assert!(e.message.starts_with("line 7 column "), "{e}");
}

#[test]
fn deep_yaml_block_nesting_is_refused() {
    // Block style nests too: `- - - - x` is a sequence of sequences of ...
    let text = format!(
        "{YAML_HEAD}spec:\n  endpointSelector: {{}}\nstatus:\n{}x\n",
        "- ".repeat(MAX_DEPTH + 1)
    );
    let e = refused("deep.yaml", text.as_bytes(), "MAX_DEPTH", MAX_DEPTH);
    assert!(e.path.starts_with("status"), "{e}");
}

#[test]
fn nesting_up_to_the_limit_is_accepted() {
    // The document itself is level 1: the value under `status` may nest MAX_DEPTH - 1 levels.
    let deep = nested("[", "]", MAX_DEPTH - 1);
    let text = format!(r#"{JSON_HEAD}"spec":{{"endpointSelector":{{}}}},"status":{deep}}}"#);
    parse_policy_file("ok.json", text.as_bytes(), t(1)).unwrap();
    let text = format!("{YAML_HEAD}spec:\n  endpointSelector: {{}}\nstatus: {deep}\n");
    parse_policy_file("ok.yaml", text.as_bytes(), t(1)).unwrap();
    let deep = nested("[", "]", MAX_DEPTH);
    let text = format!(r#"{JSON_HEAD}"spec":{{"endpointSelector":{{}}}},"status":{deep}}}"#);
    refused("deep.json", text.as_bytes(), "MAX_DEPTH", MAX_DEPTH);
}

/// "Billion laughs": ten levels of ten aliases each expand to 10^10 nodes.
fn alias_bomb(indent: &str) -> String {
    let mut s = format!("{indent}a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for i in 1..10 {
        let p = i - 1;
        s.push_str(&format!(
            "{indent}a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
        ));
    }
    s
}

#[test]
fn yaml_alias_bomb_is_refused() {
    let text = format!(
        "{YAML_HEAD}spec:\n  endpointSelector: {{}}\nstatus:\n{}",
        alias_bomb("  ")
    );
    refused("bomb.yaml", text.as_bytes(), "MAX_NODES", MAX_NODES);
    // Also where the values are used: every selector an alias of a big selector list.
    let mut text = format!(
        "{YAML_HEAD}spec:\n  endpointSelector: {{}}\n  ingress:\n  - fromEndpoints: &s0 [{{}}, {{}}, {{}}, {{}}, {{}}, {{}}, {{}}, {{}}, {{}}, {{}}]\n"
    );
    for i in 1..10 {
        let p = i - 1;
        text.push_str(&format!(
            "  - fromEndpoints: &s{i} [*s{p}, *s{p}, *s{p}, *s{p}, *s{p}, *s{p}, *s{p}, *s{p}, *s{p}, *s{p}]\n"
        ));
    }
    let e = match parse_policy_file("bomb.yaml", text.as_bytes(), t(1)) {
        Ok(p) => panic!("parsed {} policies", p.len()),
        Err(e) => e,
    };
    assert!(e.path.starts_with("spec.ingress"), "{e}");
}

#[test]
fn small_aliases_still_work() {
    let text = format!(
        "{YAML_HEAD}spec:\n  endpointSelector: &web {{matchLabels: {{app: web}}}}\n  ingress:\n  - fromEndpoints: [*web]\n"
    );
    let p = parse_policy_file("alias.yaml", text.as_bytes(), t(1)).unwrap();
    assert_eq!(
        p[0].specs[0].ingress[0].peers.endpoints[0],
        p[0].specs[0].endpoint_selector
    );
}

#[test]
fn oversize_file_is_refused() {
    let mut text = format!(r#"{JSON_HEAD}"spec":{{"endpointSelector":{{}},"description":""#);
    text.push_str(&"x".repeat(MAX_FILE_BYTES));
    text.push_str("\"}}");
    let e = refused(
        "big.json",
        text.as_bytes(),
        "MAX_FILE_BYTES",
        MAX_FILE_BYTES,
    );
    assert_eq!(e.path, "");
    refused(
        "big.yaml",
        text.as_bytes(),
        "MAX_FILE_BYTES",
        MAX_FILE_BYTES,
    );
}

/// The shape of `bench::ebpf::extra_rules_policy`: one spec with `n` ingress rules, each one
/// selector and one port.
fn many_rules(n: usize) -> String {
    let mut s = format!(
        r#"{JSON_HEAD}"spec":{{"endpointSelector":{{"matchLabels":{{"app":"service1"}}}},"ingress":["#
    );
    let protos = ["TCP", "UDP", "SCTP"];
    for i in 0..n {
        if i > 0 {
            s.push(',');
        }
        let port = 1 + i % 65535;
        let proto = protos[(i / 65535) % 3];
        s.push_str(&format!(
            r#"{{"fromEndpoints":[{{"matchLabels":{{"app":"service1"}}}}],"toPorts":[{{"ports":[{{"port":"{port}","protocol":"{proto}"}}]}}]}}"#
        ));
    }
    s.push_str("]}}\n");
    s
}

#[test]
fn bench_policy_of_100k_rules_parses() {
    let text = many_rules(100_000);
    assert!(text.len() < MAX_FILE_BYTES);
    let p = parse_policy_file("bench-extra-100000.json", text.as_bytes(), t(1)).unwrap();
    assert_eq!(p[0].specs[0].ingress.len(), 100_000);
}

#[test]
fn too_many_rules_are_refused() {
    // Empty rules are the cheapest to write; they still count.
    let n = MAX_RULES_PER_POLICY + 1;
    let rules = vec!["{}"; n].join(",");
    let text = format!(r#"{JSON_HEAD}"spec":{{"endpointSelector":{{}},"ingress":[{rules}]}}}}"#);
    refused(
        "rules.json",
        text.as_bytes(),
        "MAX_RULES_PER_POLICY",
        MAX_RULES_PER_POLICY,
    );
    // Across specs and sections too.
    let half = vec!["{}"; n / 2 + 1].join(",");
    let text = format!(
        r#"{JSON_HEAD}"specs":[{{"endpointSelector":{{}},"ingress":[{half}]}},{{"endpointSelector":{{}},"egressDeny":[{half}]}}]}}"#
    );
    let e = refused(
        "rules.json",
        text.as_bytes(),
        "MAX_RULES_PER_POLICY",
        MAX_RULES_PER_POLICY,
    );
    assert!(e.path.starts_with("specs[1].egressDeny"), "{e}");
}

#[test]
fn too_many_selectors_ports_and_policies_are_refused() {
    let sels = vec!["{}"; MAX_SELECTORS_PER_RULE + 1].join(",");
    let text = format!(
        r#"{JSON_HEAD}"spec":{{"endpointSelector":{{}},"ingress":[{{"fromEndpoints":[{sels}]}}]}}}}"#
    );
    let e = refused(
        "sels.json",
        text.as_bytes(),
        "MAX_SELECTORS_PER_RULE",
        MAX_SELECTORS_PER_RULE,
    );
    assert!(e.path.starts_with("spec.ingress[0].fromEndpoints"), "{e}");

    let ports: Vec<String> = (1..=MAX_PORTS_PER_RULE + 1)
        .map(|p| format!(r#"{{"port":"{p}"}}"#))
        .collect();
    let text = format!(
        r#"{JSON_HEAD}"spec":{{"endpointSelector":{{}},"ingress":[{{"toPorts":[{{"ports":[{}]}}]}}]}}}}"#,
        ports.join(",")
    );
    let e = refused(
        "ports.json",
        text.as_bytes(),
        "MAX_PORTS_PER_RULE",
        MAX_PORTS_PER_RULE,
    );
    assert!(e.path.starts_with("spec.ingress[0].toPorts"), "{e}");

    let mut text = String::new();
    for i in 0..=MAX_POLICIES_PER_FILE {
        text.push_str(&format!(
            "---\n{}spec:\n  endpointSelector: {{}}\n",
            YAML_HEAD.replace("name: p", &format!("name: p{i}"))
        ));
    }
    refused(
        "many.yaml",
        text.as_bytes(),
        "MAX_POLICIES_PER_FILE",
        MAX_POLICIES_PER_FILE,
    );
}

#[test]
fn too_many_labels_are_refused() {
    let labels: Vec<String> = (0..=policy::MAX_LABELS_PER_SELECTOR)
        .map(|i| format!(r#""k{i}":"v""#))
        .collect();
    let text = format!(
        r#"{JSON_HEAD}"spec":{{"endpointSelector":{{"matchLabels":{{{}}}}}}}}}"#,
        labels.join(",")
    );
    let e = refused(
        "labels.json",
        text.as_bytes(),
        "MAX_LABELS_PER_SELECTOR",
        policy::MAX_LABELS_PER_SELECTOR,
    );
    assert!(e.path.starts_with("spec.endpointSelector"), "{e}");
}

#[test]
fn brackets_in_strings_comments_and_block_scalars_do_not_count() {
    let b = "[".repeat(MAX_DEPTH + 10);
    for spec in [
        format!("  description: \"{b}\"\n  endpointSelector: {{}}"),
        format!("  description: '{b}'\n  endpointSelector: {{}}"),
        format!("  endpointSelector: {{matchLabels: {{app: web}}}} # {b}"),
        format!("  description: |\n    {b}\n    don't '{b}\n  endpointSelector: {{}}"),
        format!("  description: don't x[1] {b}\n  endpointSelector: {{}}"),
        format!("  description: it's\n    'multi {b}\n  endpointSelector: {{}}"),
    ] {
        let text = format!("{YAML_HEAD}spec:\n{spec}\n");
        if let Err(e) = parse_policy_file("ok.yaml", text.as_bytes(), t(1)) {
            panic!("{text}\nshould parse: {e}");
        }
    }
    // A quote inside a flow plain scalar is not a quote: the brackets after it count.
    let text = format!(
        "{YAML_HEAD}spec:\n  endpointSelector: {{}}\nstatus: {}\n",
        "[ a 'b, 'x]]]]]' ".repeat(MAX_DEPTH + 1)
    );
    refused("tricky.yaml", text.as_bytes(), "MAX_DEPTH", MAX_DEPTH);
}
