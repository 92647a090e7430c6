//! Policy file parsing: good files, and bad files whose errors name the file, the path and the
//! problem.

use ila::Vnid;
use policy::{
    parse_policy_file, Cidr, Entity, Operator, Policy, PolicyFileError, PortRule, Protocol,
    Selector,
};

fn t(n: u32) -> Vnid {
    Vnid::new(n).unwrap()
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn ok(name: &str, text: &str) -> Vec<Policy> {
    match parse_policy_file(name, text.as_bytes(), t(1)) {
        Ok(p) => p,
        Err(e) => panic!("{name} should parse: {e}"),
    }
}

#[track_caller]
fn bad(name: &str, text: &str, path: &str, msg: &str) -> PolicyFileError {
    let e = match parse_policy_file(name, text.as_bytes(), t(1)) {
        Ok(p) => panic!("{name} should fail at {path}, parsed {p:?}"),
        Err(e) => e,
    };
    assert_eq!(e.file, name);
    assert_eq!(e.path, path, "error was: {e}");
    assert!(
        e.message.contains(msg),
        "message `{}` lacks `{msg}`",
        e.message
    );
    let shown = e.to_string();
    assert!(shown.starts_with(name), "{shown}");
    assert!(shown.contains(path), "{shown}");
    e
}

/// A CNP document around one spec given as YAML (indented 2 under `spec:`).
fn cnp(spec: &str) -> String {
    let body: String = spec.lines().map(|l| format!("  {l}\n")).collect();
    format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: p\nspec:\n{body}"
    )
}

fn ingress_ports(ports: &str) -> String {
    cnp(&format!(
        "endpointSelector: {{matchLabels: {{app: web}}}}\ningress:\n  - fromEndpoints: [{{}}]\n    toPorts:\n      - ports:\n{ports}"
    ))
}

#[test]
fn listing10_json_and_yaml_are_the_same_policy() {
    let json = parse_policy_file("listing10.json", &fixture("listing10.json"), t(1)).unwrap();
    let yaml =
        parse_policy_file("fixtures/listing10.yaml", &fixture("listing10.yaml"), t(1)).unwrap();
    assert_eq!(json, yaml);
    assert_eq!(json.len(), 1);
    let p = &json[0];
    assert_eq!(p.name, "listing10");
    assert_eq!(p.tenant, t(1));
    assert_eq!(p.specs.len(), 1);
    let s = &p.specs[0];
    assert_eq!(
        s.endpoint_selector
            .match_labels
            .get("id")
            .map(String::as_str),
        Some("service1")
    );
    assert_eq!(s.ingress.len(), 1);
    assert!(s.egress.is_empty() && s.ingress_deny.is_empty() && s.egress_deny.is_empty());
    assert_eq!(
        s.ingress[0].ports,
        vec![PortRule {
            protocol: Protocol::Tcp,
            ports: Some((5201, 5201))
        }]
    );
    assert_eq!(s.ingress[0].peers.endpoints.len(), 1);
}

#[test]
fn full_featured_multi_document_yaml() {
    let ps = parse_policy_file("full.yaml", &fixture("full.yaml"), t(1)).unwrap();
    assert_eq!(ps.len(), 2);
    let web = &ps[0];
    assert_eq!((web.name.as_str(), web.tenant), ("web", t(7)));
    let s = &web.specs[0];
    assert_eq!(s.description.as_deref(), Some("web tier"));
    assert_eq!(
        s.endpoint_selector.match_expressions[0].operator,
        Operator::NotIn
    );
    assert!(s.ingress[0].peers.endpoints[1].names_tenant());
    assert_eq!(
        s.ingress[0].ports[1],
        PortRule {
            protocol: Protocol::Any,
            ports: Some((8000, 8010))
        }
    );
    assert_eq!(s.ingress[1].peers.cidrs.len(), 2);
    assert_eq!(
        s.ingress[1].peers.cidrs[1].except,
        vec![Cidr::new("2001:db8:100:1::".parse().unwrap(), 64).unwrap()]
    );
    assert!(s.ingress[2].peers.entities.contains(&Entity::Host));
    assert_eq!(s.ingress_deny[0].ports[0].protocol, Protocol::Tcp);
    assert_eq!(s.egress[0].peers.endpoints, vec![Selector::default()]);
    let db = &ps[1];
    assert_eq!((db.name.as_str(), db.tenant), ("db", t(1)));
    assert!(db.specs[0].default_deny_ingress);
    assert!(!db.specs[0].default_deny_egress);
    assert_eq!(
        db.specs[0].egress_deny[0].ports[0],
        PortRule {
            protocol: Protocol::Any,
            ports: Some((25, 25))
        }
    );
}

#[test]
fn numbers_or_strings_and_full_range() {
    let p = ok(
        "p.yaml",
        &ingress_ports("          - {port: 53, protocol: udp}\n          - {port: \"1\", endPort: 65535}\n          - {protocol: SCTP}\n"),
    );
    let ports = &p[0].specs[0].ingress[0].ports;
    assert_eq!(
        ports[0],
        PortRule {
            protocol: Protocol::Udp,
            ports: Some((53, 53))
        }
    );
    assert_eq!(
        ports[1],
        PortRule {
            protocol: Protocol::Any,
            ports: None
        }
    );
    assert_eq!(
        ports[2],
        PortRule {
            protocol: Protocol::Sctp,
            ports: None
        }
    );
}

#[test]
fn port_only_rule_means_own_tenant_endpoints_and_empty_rule_matches_nothing() {
    let p = ok(
        "p.json",
        r#"{"apiVersion":"cilium.io/v2","kind":"CiliumNetworkPolicy","metadata":{"name":"x"},
            "spec":{"endpointSelector":{},"ingress":[{"toPorts":[{"ports":[{"port":"80"}]}]},{}]}}"#,
    );
    let s = &p[0].specs[0];
    assert_eq!(s.ingress[0].peers.endpoints, vec![Selector::default()]);
    assert!(s.ingress[1].peers.endpoints.is_empty() && s.ingress[1].ports.is_empty());
}

#[test]
fn impossible_ports() {
    let e = bad(
        "p.yaml",
        &ingress_ports(
            "          - {port: \"80\"}\n          - {port: \"70000\", protocol: TCP}\n",
        ),
        "spec.ingress[0].toPorts[0].ports[1].port",
        "70000 is not a port (1-65535)",
    );
    assert_eq!(
        e.to_string(),
        "p.yaml: spec.ingress[0].toPorts[0].ports[1].port: 70000 is not a port (1-65535)"
    );
    bad(
        "p.yaml",
        &ingress_ports("          - {port: 0}\n"),
        "spec.ingress[0].toPorts[0].ports[0].port",
        "0 is not a port",
    );
    bad(
        "p.yaml",
        &ingress_ports("          - {port: -5}\n"),
        "spec.ingress[0].toPorts[0].ports[0].port",
        "-5 is not a port",
    );
    bad(
        "p.yaml",
        &ingress_ports("          - {port: http}\n"),
        "spec.ingress[0].toPorts[0].ports[0].port",
        "named ports are not supported",
    );
    bad(
        "p.yaml",
        &ingress_ports("          - {port: \"5x\"}\n"),
        "spec.ingress[0].toPorts[0].ports[0].port",
        "not a port number",
    );
    bad(
        "p.yaml",
        &ingress_ports("          - {port: 1.5}\n"),
        "spec.ingress[0].toPorts[0].ports[0].port",
        "not a port number",
    );
    bad(
        "p.yaml",
        &ingress_ports("          - {port: [1]}\n"),
        "spec.ingress[0].toPorts[0].ports[0].port",
        "invalid type",
    );
    bad(
        "p.yaml",
        &ingress_ports("          - {port: 90, endPort: 80}\n"),
        "spec.ingress[0].toPorts[0].ports[0].endPort",
        "80 is below port 90",
    );
    bad(
        "p.yaml",
        &ingress_ports("          - {endPort: 80}\n"),
        "spec.ingress[0].toPorts[0].ports[0].endPort",
        "endPort needs port",
    );
    bad(
        "p.yaml",
        &ingress_ports("          - {port: 80, endPort: 70000}\n"),
        "spec.ingress[0].toPorts[0].ports[0].endPort",
        "70000 is not a port",
    );
    bad(
        "p.yaml",
        &ingress_ports("          - {port: 1024, endPort: 65535}\n"),
        "spec.ingress[0].toPorts[0].ports[0].endPort",
        "at most 4096",
    );
    bad(
        "p.yaml",
        &ingress_ports("          - {port: 80, protocol: ICMP}\n"),
        "spec.ingress[0].toPorts[0].ports[0].protocol",
        "`ICMP` is not a protocol",
    );
    bad(
        "p.yaml",
        &ingress_ports("          - {port: 80, proto: TCP}\n"),
        "spec.ingress[0].toPorts[0].ports[0].proto",
        "unknown field `proto`",
    );
    bad(
        "p.yaml",
        &ingress_ports("          []\n"),
        "spec.ingress[0].toPorts[0].ports",
        "a toPorts item needs ports",
    );
}

#[test]
fn unknown_fields_anywhere() {
    bad(
        "p.yaml",
        &cnp("endpointSelector: {}\ningress:\n  - fromEndpoint: [{}]\n"),
        "spec.ingress[0].fromEndpoint",
        "unknown field `fromEndpoint`",
    );
    bad(
        "p.yaml",
        &cnp("endpointSelector: {matchLabel: {a: b}}\n"),
        "spec.endpointSelector.matchLabel",
        "unknown field",
    );
    bad(
        "p.yaml",
        &cnp("endpointSelector: {}\nfoo: 1\n"),
        "spec.foo",
        "unknown field `foo`",
    );
    bad(
        "p.yaml",
        &format!("{}extra: 1\n", cnp("endpointSelector: {}\n")),
        "extra",
        "unknown field `extra`",
    );
    bad("p.yaml", "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p, uid: x}\nspec: {endpointSelector: {}}\n", "metadata.uid", "unknown field `uid`");
    bad(
        "p.json",
        r#"[{"endpointSelector":{},"ingress":[{"fromEndpoints":[{}],"toPort":[]}]}]"#,
        "[0].ingress[0].toPort",
        "unknown field `toPort`",
    );
    bad(
        "p.yaml",
        &cnp("endpointSelector: {}\negress:\n  - toCIDR: 5\n"),
        "spec.egress[0].toCIDR",
        "invalid type",
    );
}

#[test]
fn bad_selectors() {
    bad(
        "p.yaml",
        &cnp(
            "endpointSelector:\n  matchExpressions:\n    - {key: app, operator: in, values: [a]}\n",
        ),
        "spec.endpointSelector.matchExpressions[0].operator",
        "`in` is not an operator",
    );
    bad(
        "p.yaml",
        &cnp("endpointSelector:\n  matchExpressions:\n    - {key: app, operator: In}\n"),
        "spec.endpointSelector.matchExpressions[0].values",
        "In needs at least one value",
    );
    bad("p.yaml", &cnp("endpointSelector:\n  matchExpressions:\n    - {key: app, operator: Exists, values: [x]}\n"), "spec.endpointSelector.matchExpressions[0].values", "Exists takes no values");
    bad(
        "p.yaml",
        &cnp("endpointSelector:\n  matchExpressions:\n    - {key: \"-app\", operator: Exists}\n"),
        "spec.endpointSelector.matchExpressions[0].key",
        "invalid label key `-app`",
    );
    bad("p.yaml", &cnp("endpointSelector:\n  matchExpressions:\n    - {key: app, operator: Exists, value: [x]}\n"), "spec.endpointSelector.matchExpressions[0].value", "unknown field `value`");
    bad(
        "p.yaml",
        &cnp("endpointSelector: {matchLabels: {\"a b\": x}}\n"),
        "spec.endpointSelector.matchLabels.a b",
        "invalid label key",
    );
    bad(
        "p.yaml",
        &cnp("endpointSelector: {matchLabels: {app: \"x y\"}}\n"),
        "spec.endpointSelector.matchLabels.app",
        "invalid value",
    );
    bad("p.yaml", &cnp("endpointSelector: {}\ningress:\n  - fromEndpoints: [{matchLabels: {ilanet.io/other: x}}]\n"), "spec.ingress[0].fromEndpoints[0].matchLabels.ilanet.io/other", "reserved");
    bad("p.yaml", &cnp("endpointSelector: {}\ningress:\n  - fromEndpoints: [{matchLabels: {ilanet.io/tenant: blue}}]\n"), "spec.ingress[0].fromEndpoints[0].matchLabels.ilanet.io/tenant", "not a VNID");
    bad(
        "p.yaml",
        &cnp("ingress: []\n"),
        "spec.endpointSelector",
        "missing",
    );
    // Source prefixes of Cilium labels are accepted.
    let p = ok(
        "p.yaml",
        &cnp("endpointSelector: {matchLabels: {\"k8s:app\": web, \"any:tier\": db}}\n"),
    );
    assert!(p[0].specs[0]
        .endpoint_selector
        .match_labels
        .contains_key("app"));
    assert!(p[0].specs[0]
        .endpoint_selector
        .match_labels
        .contains_key("tier"));
}

#[test]
fn cidrs() {
    let eg = |c: &str| {
        cnp(&format!(
            "endpointSelector: {{}}\negress:\n  - toCIDR: [\"{c}\"]\n"
        ))
    };
    bad(
        "p.yaml",
        &eg("10.0.0.0/8"),
        "spec.egress[0].toCIDR[0]",
        "IPv4 prefix `10.0.0.0/8` is not supported",
    );
    bad(
        "p.yaml",
        &eg("2001:db8::1/32"),
        "spec.egress[0].toCIDR[0]",
        "host bits set (did you mean 2001:db8::/32?)",
    );
    bad(
        "p.yaml",
        &eg("2001:db8::/129"),
        "spec.egress[0].toCIDR[0]",
        "prefix length",
    );
    bad(
        "p.yaml",
        &eg("nope"),
        "spec.egress[0].toCIDR[0]",
        "not an IPv6 prefix",
    );
    bad(
        "p.yaml",
        &cnp("endpointSelector: {}\negress:\n  - toCIDRSet: [{cidr: \"2001:db8::/32\", except: [\"2001:db9::/48\"]}]\n"),
        "spec.egress[0].toCIDRSet[0].except[0]",
        "2001:db9::/48 is not inside 2001:db8::/32",
    );
    bad(
        "p.yaml",
        &cnp("endpointSelector: {}\negress:\n  - toCIDRSet: [{cidrGroupRef: g}]\n"),
        "spec.egress[0].toCIDRSet[0].cidrGroupRef",
        "CIDR groups",
    );
    let p = ok("p.yaml", &eg("2001:db8::1"));
    assert_eq!(
        p[0].specs[0].egress[0].peers.cidrs[0].cidr.prefix_len(),
        128
    );
}

#[test]
fn refused_features_are_named() {
    let l7 = cnp("endpointSelector: {}\ningress:\n  - toPorts:\n      - ports: [{port: \"80\"}]\n        rules: {http: [{method: GET}]}\n");
    bad(
        "p.yaml",
        &l7,
        "spec.ingress[0].toPorts[0].rules",
        "L7 rules are not supported",
    );
    let cases = [
        (
            "egress:\n  - toFQDNs: [{matchName: a.b}]\n",
            "spec.egress[0].toFQDNs",
            "toFQDNs",
        ),
        (
            "egress:\n  - toServices: [{k8sService: {serviceName: a}}]\n",
            "spec.egress[0].toServices",
            "toServices is not supported",
        ),
        (
            "ingress:\n  - fromRequires: [{}]\n",
            "spec.ingress[0].fromRequires",
            "fromRequires is not supported",
        ),
        (
            "ingress:\n  - icmps: [{fields: [{type: 8}]}]\n",
            "spec.ingress[0].icmps",
            "ICMP rules",
        ),
        (
            "egress:\n  - toEntities: [cluster]\n",
            "spec.egress[0].toEntities[0]",
            "entity `cluster` is not supported",
        ),
        (
            "egress:\n  - toEntities: [world-ipv4]\n",
            "spec.egress[0].toEntities[0]",
            "IPv6-only",
        ),
        (
            "ingress:\n  - fromNodes: [{}]\n",
            "spec.ingress[0].fromNodes",
            "fromNodes is not supported",
        ),
        (
            "ingress:\n  - authentication: {mode: required}\n",
            "spec.ingress[0].authentication",
            "authentication",
        ),
        (
            "egress:\n  - toPorts: [{ports: [{port: \"443\"}], serverNames: [a.b]}]\n",
            "spec.egress[0].toPorts[0].serverNames",
            "serverNames",
        ),
        (
            "egress:\n  - toPorts: []\n",
            "spec.egress[0].toPorts",
            "is empty",
        ),
    ];
    for (rest, path, msg) in cases {
        bad(
            "p.yaml",
            &cnp(&format!("endpointSelector: {{}}\n{rest}")),
            path,
            msg,
        );
    }
    bad(
        "p.yaml",
        &cnp("nodeSelector: {}\n"),
        "spec.nodeSelector",
        "nodeSelector",
    );
}

#[test]
fn document_level_errors() {
    bad("p.yaml", "apiVersion: cilium.io/v1\nkind: CiliumNetworkPolicy\nmetadata: {name: p}\nspec: {endpointSelector: {}}\n", "apiVersion", "expected cilium.io/v2");
    bad("p.yaml", "apiVersion: cilium.io/v2\nkind: NetworkPolicy\nmetadata: {name: p}\nspec: {endpointSelector: {}}\n", "kind", "expected CiliumNetworkPolicy");
    bad("p.yaml", "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: p}\nspec: {endpointSelector: {}}\n", "kind", "one tenant");
    bad(
        "p.yaml",
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nspec: {endpointSelector: {}}\n",
        "metadata",
        "missing",
    );
    bad("p.yaml", "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {}\nspec: {endpointSelector: {}}\n", "metadata", "missing field `name`");
    bad(
        "p.yaml",
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p}\n",
        "spec",
        "missing",
    );
    bad("p.yaml", "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p, namespace: blue}\nspec: {endpointSelector: {}}\n", "metadata.namespace", "not a tenant VNID");
    bad("p.yaml", "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: \"a b\"}\nspec: {endpointSelector: {}}\n", "metadata.name", "not a policy name");
    bad("p.yaml", "", "", "no policy");
    bad("p.json", "[]", "", "no spec");
    bad("p.json", "{\"apiVersion\": ", "apiVersion", "EOF");
    bad("p.json", "[] []", "", "trailing");
    bad(
        "p.yaml",
        "just a string\n",
        "",
        "CiliumNetworkPolicy object or a list",
    );
    // Specs list paths.
    bad(
        "p.yaml",
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p}\nspecs:\n  - endpointSelector: {}\n  - endpointSelector: {}\n    egress: [{toCIDR: [\"10.1.0.0/16\"]}]\n",
        "specs[1].egress[0].toCIDR[0]",
        "IPv4",
    );
}

#[test]
fn nothing_of_a_bad_file_is_applied_and_documents_are_named() {
    let good = cnp("endpointSelector: {}\n");
    let text = format!(
        "{good}---\n{}",
        cnp("endpointSelector: {}\negress: [{toCIDR: [\"10.0.0.0/8\"]}]\n")
            .replace("name: p", "name: q")
    );
    let e = bad("multi.yaml", &text, "spec.egress[0].toCIDR[0]", "IPv4");
    assert_eq!(e.document, Some(1));
    assert!(
        e.to_string()
            .starts_with("multi.yaml: document 2: spec.egress[0].toCIDR[0]: "),
        "{e}"
    );
    // Duplicate names across documents.
    let e = bad(
        "multi.yaml",
        &format!("{good}---\n{good}"),
        "metadata.name",
        "used twice",
    );
    assert_eq!(e.document, Some(1));
    // YAML syntax errors carry the location.
    let e = parse_policy_file("p.yaml", b"apiVersion: \"unterminated\n", t(1)).unwrap_err();
    assert!(e.message.contains("line"), "{e}");
    let e = parse_policy_file("p.yaml", b"apiVersion: [cilium.io/v2]\n", t(1)).unwrap_err();
    assert_eq!(e.path, "apiVersion");
    assert!(e.message.contains("line 1"), "{e}");
}

#[test]
fn format_detection() {
    use policy::FileFormat;
    assert_eq!(FileFormat::detect("a.JSON", b"x"), FileFormat::Json);
    assert_eq!(FileFormat::detect("a.yml", b"{}"), FileFormat::Yaml);
    assert_eq!(FileFormat::detect("stdin", b"  [{}]"), FileFormat::Json);
    assert_eq!(
        FileFormat::detect("stdin", b"apiVersion: x"),
        FileFormat::Yaml
    );
}
