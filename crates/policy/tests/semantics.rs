//! Semantics cases, each checked through the reference evaluator and the compiled tables.

mod common;

use common::{ep, vnid, World};
use policy::{
    compile, CompileError, CompileLimits, Direction, EndpointId, FlowPeer, Identity, LabelSet,
    LookupPeer, Reason, Section, Verdict,
};

const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMP6: u8 = 58;

fn e(id: u64) -> FlowPeer {
    FlowPeer::Endpoint(EndpointId(id))
}

fn w(a: &str) -> FlowPeer {
    FlowPeer::World(a.parse().unwrap())
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

#[test]
fn listing10_only_service1_to_service1_on_tcp_5201() {
    for file in ["listing10.json", "listing10.yaml"] {
        let eps = vec![
            ep(1, 1, "id=service1"),
            ep(2, 1, "id=service1"),
            ep(3, 1, "id=service2"),
        ];
        let policies = policy::parse_policy_file(file, fixture(file).as_bytes(), vnid(1)).unwrap();
        let world = common::World::new(policies, eps);
        let x = world.explain(e(1), e(2), 5201, TCP);
        assert_eq!(x.verdict, Verdict::Allow, "{x:?}");
        let rule = x.rule.unwrap();
        assert_eq!(
            (rule.policy.as_str(), rule.section, rule.index),
            ("listing10", Section::Ingress, 0)
        );
        assert_eq!(rule.direction(), Direction::Ingress);
        // Same identity talking to itself is allowed as well.
        assert_eq!(world.explain(e(2), e(1), 5201, TCP).verdict, Verdict::Allow);
        for (from, port, proto) in [
            (e(1), 5202, TCP),
            (e(1), 5201, UDP),
            (e(3), 5201, TCP),
            (FlowPeer::Host, 5201, TCP),
            (w("2001:db8::1"), 5201, TCP),
            (e(1), 0, ICMP6),
        ] {
            let x = world.explain(from, e(2), port, proto);
            assert_eq!(x.verdict, Verdict::Deny, "{from:?} {port} {proto}: {x:?}");
            assert_eq!(x.ingress.as_ref().unwrap().reason, Reason::DefaultDeny);
            assert!(x.rule.is_none());
            assert!(x.reason.contains("deny by default"), "{}", x.reason);
        }
        // service1 is not enforced for egress; service2 not at all.
        assert_eq!(world.explain(e(2), e(3), 80, TCP).verdict, Verdict::Allow);
        assert_eq!(
            world.explain(e(2), w("2001:db8::1"), 443, TCP).verdict,
            Verdict::Allow
        );
    }
}

#[test]
fn default_deny_only_in_the_selected_direction_and_empty_rule_denies_all() {
    let yaml = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: lock}
spec:
  endpointSelector: {matchLabels: {app: vault}}
  egress: [{}]
"#;
    let world = World::from_yaml(yaml, 1, vec![ep(1, 1, "app=vault"), ep(2, 1, "app=web")]);
    let x = world.explain(e(1), e(2), 80, TCP);
    assert_eq!(
        (x.verdict, x.egress.unwrap().reason),
        (Verdict::Deny, Reason::DefaultDeny)
    );
    assert_eq!(world.explain(e(2), e(1), 80, TCP).verdict, Verdict::Allow);
    assert_eq!(
        world.explain(e(1), FlowPeer::Host, 80, TCP).verdict,
        Verdict::Deny
    );
}

#[test]
fn deny_beats_allow() {
    let yaml = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
    - fromEndpoints: [{}]
    - fromEndpoints: [{matchLabels: {app: bad}}]
      toPorts: [{ports: [{port: "22", protocol: TCP}]}]
  ingressDeny:
    - fromEndpoints: [{matchLabels: {app: bad}}]
      toPorts: [{ports: [{port: "20", endPort: 23, protocol: TCP}]}]
"#;
    let world = World::from_yaml(
        yaml,
        1,
        vec![
            ep(1, 1, "app=web"),
            ep(2, 1, "app=bad"),
            ep(3, 1, "app=good"),
        ],
    );
    let x = world.explain(e(2), e(1), 22, TCP);
    assert_eq!(x.verdict, Verdict::Deny);
    let r = x.rule.unwrap();
    assert_eq!((r.section, r.index), (Section::IngressDeny, 0));
    assert!(x.reason.contains("ingressDeny[0]"), "{}", x.reason);
    assert_eq!(world.explain(e(2), e(1), 22, UDP).verdict, Verdict::Allow);
    assert_eq!(world.explain(e(2), e(1), 24, TCP).verdict, Verdict::Allow);
    assert_eq!(world.explain(e(3), e(1), 22, TCP).verdict, Verdict::Allow);
    assert_eq!(world.explain(e(2), e(1), 0, ICMP6).verdict, Verdict::Allow);
}

#[test]
fn tenants_are_isolated_without_policy_and_by_selectors() {
    // Same labels in two tenants; a policy in tenant 1 allowing app=x does not allow tenant 2's x.
    let yaml = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: x}
spec:
  endpointSelector: {matchLabels: {app: x}}
  ingress: [{fromEndpoints: [{matchLabels: {app: x}}]}]
"#;
    let eps = vec![
        ep(1, 1, "app=x"),
        ep(2, 1, "app=x"),
        ep(3, 2, "app=x"),
        ep(4, 2, "app=y"),
        ep(5, 1, "app=y"),
    ];
    let world = World::from_yaml(yaml, 1, eps.clone());
    assert_ne!(world.identity(EndpointId(1)), world.identity(EndpointId(3)));
    assert_eq!(world.explain(e(2), e(1), 80, TCP).verdict, Verdict::Allow);
    let x = world.explain(e(3), e(1), 80, TCP);
    assert_eq!(x.verdict, Verdict::Deny);
    assert_eq!(x.egress.unwrap().reason, Reason::TenantIsolation);
    assert_eq!(x.ingress.unwrap().reason, Reason::DefaultDeny);
    // No policy at all in tenant 2: same tenant talks, other tenants do not.
    assert_eq!(world.explain(e(3), e(4), 80, TCP).verdict, Verdict::Allow);
    let x = world.explain(e(4), e(5), 80, TCP);
    assert_eq!(x.verdict, Verdict::Deny);
    assert_eq!(x.egress.as_ref().unwrap().reason, Reason::TenantIsolation);
    assert!(x.reason.contains("tenant isolation"), "{}", x.reason);
    // The host and the world are not tenants.
    assert_eq!(
        world.explain(FlowPeer::Host, e(4), 80, TCP).verdict,
        Verdict::Allow
    );
    assert_eq!(
        world.explain(e(4), w("2001:db8::1"), 80, TCP).verdict,
        Verdict::Allow
    );
}

#[test]
fn cross_tenant_only_when_both_sides_name_the_other_tenant() {
    let server_side = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server, namespace: "2"}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
    - fromEndpoints:
        - matchLabels: {ilanet.io/tenant: "1", app: client}
      toPorts: [{ports: [{port: "443", protocol: TCP}]}]
"#;
    let client_side = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client, namespace: "1"}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
    - toEndpoints: [{}]
    - toEndpoints:
        - matchLabels: {app: server}
          matchExpressions: [{key: ilanet.io/tenant, operator: In, values: ["2"]}]
"#;
    let eps = || {
        vec![
            ep(1, 1, "app=client"),
            ep(2, 2, "app=server"),
            ep(3, 3, "app=client"),
            ep(4, 1, "app=other"),
        ]
    };
    // Only the server side names tenant 1: the client's egress still isolates.
    let world = World::from_yaml(server_side, 9, eps());
    let x = world.explain(e(1), e(2), 443, TCP);
    assert_eq!(x.verdict, Verdict::Deny);
    assert_eq!(x.egress.unwrap().reason, Reason::TenantIsolation);
    assert_eq!(x.ingress.unwrap().verdict, Verdict::Allow);
    // Both sides: allowed on 443 only, and only from tenant 1's client.
    let both = format!("{server_side}---\n{client_side}");
    let world = World::from_yaml(&both, 9, eps());
    let x = world.explain(e(1), e(2), 443, TCP);
    assert_eq!(x.verdict, Verdict::Allow, "{x:?}");
    assert_eq!(x.rule.unwrap().policy, "server");
    assert_eq!(world.explain(e(1), e(2), 80, TCP).verdict, Verdict::Deny);
    assert_eq!(world.explain(e(3), e(2), 443, TCP).verdict, Verdict::Deny);
    assert_eq!(world.explain(e(1), e(4), 80, TCP).verdict, Verdict::Allow);
    // The reverse direction is a different packet and is not allowed by these policies.
    assert_eq!(world.explain(e(2), e(1), 443, TCP).verdict, Verdict::Deny);
}

#[test]
fn cidr_peers_with_carve_outs_and_world() {
    let yaml = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: out}
spec:
  endpointSelector: {matchLabels: {app: web}}
  egress:
    - toCIDRSet:
        - cidr: "2001:db8::/32"
          except: ["2001:db8:bad::/48"]
      toPorts: [{ports: [{port: "443", protocol: TCP}]}]
    - toCIDR: ["2001:db8:bad:1::/64"]
  egressDeny:
    - toCIDR: ["2001:db8:ffff::/48"]
  ingress:
    - fromEntities: [world]
      toPorts: [{ports: [{port: "80", protocol: TCP}]}]
    - fromCIDR: ["2001:db8::/32"]
"#;
    let world = World::from_yaml(yaml, 1, vec![ep(1, 1, "app=web"), ep(2, 1, "app=db")]);
    let v = |to: FlowPeer, port, proto| world.explain(e(1), to, port, proto).verdict;
    assert_eq!(v(w("2001:db8::1"), 443, TCP), Verdict::Allow);
    assert_eq!(v(w("2001:db8::1"), 80, TCP), Verdict::Deny);
    assert_eq!(v(w("2001:db8:bad::1"), 443, TCP), Verdict::Deny);
    assert_eq!(v(w("2001:db8:bad:1::1"), 443, TCP), Verdict::Allow);
    assert_eq!(v(w("2001:db8:bad:1::1"), 0, ICMP6), Verdict::Allow);
    assert_eq!(v(w("2001:db8:ffff::1"), 443, TCP), Verdict::Deny);
    assert_eq!(
        world
            .explain(e(1), w("2001:db8:ffff::1"), 443, TCP)
            .rule
            .unwrap()
            .section,
        Section::EgressDeny
    );
    assert_eq!(v(w("2001:db9::1"), 443, TCP), Verdict::Deny);
    // CIDR rules never match endpoints or the host; egress is enforced.
    assert_eq!(v(e(2), 443, TCP), Verdict::Deny);
    assert_eq!(v(FlowPeer::Host, 443, TCP), Verdict::Deny);
    // Ingress: world on 80, anything in the prefix on every port, nothing else.
    let i = |from: FlowPeer, port| world.explain(from, e(1), port, TCP).verdict;
    assert_eq!(i(w("2001:dead::1"), 80), Verdict::Allow);
    assert_eq!(i(w("2001:dead::1"), 81), Verdict::Deny);
    assert_eq!(i(w("2001:db8::7"), 81), Verdict::Allow);
    assert_eq!(i(e(2), 80), Verdict::Deny);
}

#[test]
fn entities_all_host_and_deny_only_policies() {
    let yaml = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: mail}
spec:
  endpointSelector: {}
  enableDefaultDeny: {egress: false, ingress: false}
  egressDeny:
    - toEntities: [all]
      toPorts: [{ports: [{port: "25"}]}]
  ingress:
    - fromEntities: [host]
"#;
    let world = World::from_yaml(
        yaml,
        1,
        vec![ep(1, 1, "app=a"), ep(2, 1, "app=b"), ep(3, 2, "app=c")],
    );
    for to in [e(2), e(3), FlowPeer::Host, w("2001:db8::1")] {
        let x = world.explain(e(1), to, 25, TCP);
        assert_eq!(x.verdict, Verdict::Deny, "{to:?}");
        assert_eq!(x.rule.unwrap().section, Section::EgressDeny);
        assert_eq!(
            world.explain(e(1), to, 25, ICMP6).verdict,
            if matches!(to, FlowPeer::Endpoint(EndpointId(3))) {
                Verdict::Deny
            } else {
                Verdict::Allow
            }
        );
    }
    assert_eq!(world.explain(e(1), e(2), 26, TCP).verdict, Verdict::Allow);
    // Not enforced: cross-tenant still isolated.
    assert_eq!(
        world.explain(e(1), e(3), 26, TCP).egress.unwrap().reason,
        Reason::TenantIsolation
    );
    let x = world.explain(FlowPeer::Host, e(2), 9999, UDP);
    assert_eq!(
        (x.verdict, x.rule.unwrap().section),
        (Verdict::Allow, Section::Ingress)
    );
}

#[test]
fn wildcard_allow_and_specific_deny_intersections() {
    // `all` allows everything on 80; a specific peer is denied on every TCP port: the compiled
    // tables need the intersection entry (peer, tcp/80) for deny to win.
    let yaml = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: mix}
spec:
  endpointSelector: {matchLabels: {app: a}}
  ingress:
    - fromEntities: [all]
      toPorts: [{ports: [{port: "80", protocol: TCP}]}]
    - fromEndpoints: [{matchLabels: {app: b}}]
  ingressDeny:
    - fromEndpoints: [{matchLabels: {app: c}}]
      toPorts: [{ports: [{protocol: TCP}]}]
"#;
    let world = World::from_yaml(
        yaml,
        1,
        vec![ep(1, 1, "app=a"), ep(2, 1, "app=b"), ep(3, 1, "app=c")],
    );
    assert_eq!(world.explain(e(3), e(1), 80, TCP).verdict, Verdict::Deny);
    assert_eq!(world.explain(e(3), e(1), 80, UDP).verdict, Verdict::Deny);
    assert_eq!(world.explain(e(2), e(1), 80, TCP).verdict, Verdict::Allow);
    assert_eq!(world.explain(e(2), e(1), 81, UDP).verdict, Verdict::Allow);
    assert_eq!(
        world.explain(FlowPeer::Host, e(1), 80, TCP).verdict,
        Verdict::Allow
    );
    assert_eq!(
        world.explain(w("2001:db8::9"), e(1), 80, TCP).verdict,
        Verdict::Allow
    );
    assert_eq!(
        world.explain(w("2001:db8::9"), e(1), 81, TCP).verdict,
        Verdict::Deny
    );
    assert!(world
        .mismatches(
            &["2001:db8::9".parse().unwrap()],
            &[TCP, UDP, ICMP6],
            &[0, 79, 80, 81]
        )
        .is_empty());
}

#[test]
fn compiled_layout_and_flags() {
    let world = World::from_yaml(
        &fixture("listing10.yaml"),
        1,
        vec![ep(1, 1, "id=service1"), ep(2, 1, "id=other")],
    );
    let s1 = world.identity(EndpointId(1)).0;
    let other = world.identity(EndpointId(2)).0;
    let c = &world.compiled;
    assert_eq!(c.endpoints[&s1].flags, policy::abi::EP_F_INGRESS_ENFORCED);
    assert_eq!(c.endpoints[&s1].vnid, 1);
    assert_eq!(c.endpoints[&other].flags, 0);
    // Exactly one entry: (service1, service1, ingress, tcp, 5201) -> allow, rule 1.
    assert_eq!(c.entries.len(), 1);
    let (k, v) = c.entries.iter().next().unwrap();
    assert_eq!(
        *k,
        policy::abi::PolicyKey::new(s1, s1, policy::abi::DIR_INGRESS, TCP, 5201)
    );
    assert_eq!((v.verdict, v.rule_id), (policy::abi::VERDICT_ALLOW, 1));
    assert!(c.cidr_entries.is_empty());
    assert_eq!(c.rules.len(), 1);
}

#[test]
fn compile_errors_and_limits() {
    let policies =
        policy::parse_policy_file("l.yaml", fixture("listing10.yaml").as_bytes(), vnid(1)).unwrap();
    let l = LabelSet::parse("id=service1").unwrap().with_tenant(vnid(1));
    let ok = [(Identity(256), l.clone())];
    assert!(compile(&policies, &ok, &CompileLimits::default()).is_ok());
    let tight = CompileLimits {
        max_entries: 0,
        max_cidr_entries: 0,
    };
    assert!(matches!(
        compile(&policies, &ok, &tight),
        Err(CompileError::TooManyEntries {
            limit: 0,
            identity: 256
        })
    ));
    assert!(matches!(
        compile(
            &policies,
            &[(Identity(2), l.clone())],
            &CompileLimits::default()
        ),
        Err(CompileError::ReservedIdentity(2))
    ));
    assert!(matches!(
        compile(
            &policies,
            &[(Identity(256), l.clone()), (Identity(256), l.clone())],
            &CompileLimits::default()
        ),
        Err(CompileError::DuplicateIdentity(256))
    ));
    let no_tenant = LabelSet::parse("id=service1").unwrap();
    assert!(matches!(
        compile(
            &policies,
            &[(Identity(300), no_tenant)],
            &CompileLimits::default()
        ),
        Err(CompileError::NoTenant(300))
    ));
    // Unknown endpoint identities fail closed.
    let c = compile(&policies, &ok, &CompileLimits::default()).unwrap();
    let d = c.lookup(
        Identity(999),
        Direction::Ingress,
        LookupPeer::Identity {
            identity: Identity(256),
            tenant: Some(vnid(1)),
        },
        TCP,
        5201,
    );
    assert_eq!(
        (d.verdict, d.reason),
        (Verdict::Deny, Reason::UnknownEndpoint)
    );
}
