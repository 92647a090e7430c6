//! Property: for random tenants, labels and policies, the compiled-table lookup (what the eBPF
//! program does) gives the same verdict, reason and rule as the reference evaluator, for every
//! ordered pair of endpoints, the host and external addresses, both directions, several
//! protocols and ports.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv6Addr;

use common::{vnid, World};
use policy::{
    Cidr, CidrRule, Endpoint, EndpointId, Entity, LabelSet, Operator, Peers, Policy, PolicySpec,
    PortRule, Protocol, Requirement, Rule, Selector, TENANT_LABEL,
};
use proptest::prelude::*;

const KEYS: [&str; 3] = ["app", "tier", "env"];
const VALUES: [&str; 3] = ["a", "b", "c"];
const TENANTS: [u32; 3] = [1, 2, 3];
const PROTOS: [u8; 4] = [6, 17, 132, 58];
const PORTS: [u16; 7] = [0, 79, 80, 81, 82, 443, 1000];

fn cidr_pool() -> Vec<Cidr> {
    [
        ("::", 0),
        ("2001:db8::", 32),
        ("2001:db8::", 48),
        ("2001:db8:0:1::", 64),
        ("2001:db8::1", 128),
        ("2001:db9::", 32),
    ]
    .iter()
    .map(|(a, l)| Cidr::new(a.parse().unwrap(), *l).unwrap())
    .collect()
}

fn addrs() -> Vec<Ipv6Addr> {
    [
        "2001:db8::1",
        "2001:db8::2",
        "2001:db8:0:1::5",
        "2001:db8:1::1",
        "2001:db9::1",
        "fe80::1",
    ]
    .iter()
    .map(|a| a.parse().unwrap())
    .collect()
}

fn labels() -> impl Strategy<Value = LabelSet> {
    proptest::collection::btree_map(0..KEYS.len(), 0..VALUES.len(), 0..=3).prop_map(|m| {
        LabelSet::from_pairs(m.into_iter().map(|(k, v)| (KEYS[k], VALUES[v]))).unwrap()
    })
}

fn requirement() -> impl Strategy<Value = Requirement> {
    (
        0..KEYS.len() + 1,
        0..4u8,
        proptest::collection::btree_set(0..VALUES.len(), 1..=2),
        0..TENANTS.len(),
    )
        .prop_map(|(k, op, vals, t)| {
            let tenant_key = k == KEYS.len();
            let key = if tenant_key {
                TENANT_LABEL.to_string()
            } else {
                KEYS[k].to_string()
            };
            let operator = [
                Operator::In,
                Operator::NotIn,
                Operator::Exists,
                Operator::DoesNotExist,
            ][op as usize];
            let values = match operator {
                Operator::In | Operator::NotIn if tenant_key => [TENANTS[t].to_string()].into(),
                Operator::In | Operator::NotIn => {
                    vals.into_iter().map(|v| VALUES[v].to_string()).collect()
                }
                _ => BTreeSet::new(),
            };
            Requirement {
                key,
                operator,
                values,
            }
        })
}

fn selector() -> impl Strategy<Value = Selector> {
    (
        proptest::collection::btree_map(0..KEYS.len(), 0..VALUES.len(), 0..=1),
        proptest::option::weighted(0.2, 0..TENANTS.len()),
        proptest::collection::vec(requirement(), 0..=1),
    )
        .prop_map(|(ml, tenant, match_expressions)| {
            let mut match_labels: BTreeMap<String, String> = ml
                .into_iter()
                .map(|(k, v)| (KEYS[k].to_string(), VALUES[v].to_string()))
                .collect();
            if let Some(t) = tenant {
                match_labels.insert(TENANT_LABEL.to_string(), TENANTS[t].to_string());
            }
            Selector {
                match_labels,
                match_expressions,
            }
        })
}

fn port_rule() -> impl Strategy<Value = PortRule> {
    (
        0..4usize,
        prop_oneof![
            Just(None),
            Just(Some((80, 80))),
            Just(Some((80, 82))),
            Just(Some((443, 443))),
            Just(Some((81, 81)))
        ],
    )
        .prop_map(|(p, ports)| PortRule {
            protocol: [Protocol::Tcp, Protocol::Udp, Protocol::Sctp, Protocol::Any][p],
            ports,
        })
}

fn cidr_rule() -> impl Strategy<Value = CidrRule> {
    let pool = cidr_pool();
    (
        0..pool.len(),
        proptest::collection::vec(0..pool.len(), 0..=2),
    )
        .prop_map(move |(c, ex)| {
            let cidr = pool[c];
            let except = ex
                .into_iter()
                .map(|i| pool[i])
                .filter(|e| cidr.contains_prefix(*e) && *e != cidr)
                .collect();
            CidrRule { cidr, except }
        })
}

fn rule() -> impl Strategy<Value = Rule> {
    (
        proptest::collection::vec(selector(), 0..=2),
        proptest::collection::vec(cidr_rule(), 0..=2),
        proptest::collection::btree_set(
            prop_oneof![Just(Entity::Host), Just(Entity::World), Just(Entity::All)],
            0..=1,
        ),
        proptest::collection::vec(port_rule(), 0..=2),
        proptest::bool::weighted(0.5),
    )
        .prop_map(|(endpoints, cidrs, entities, ports, keep_entities)| Rule {
            peers: Peers {
                endpoints,
                cidrs,
                entities: if keep_entities {
                    entities
                } else {
                    BTreeSet::new()
                },
            },
            ports,
        })
}

fn rules() -> impl Strategy<Value = Vec<Rule>> {
    proptest::collection::vec(rule(), 0..=2)
}

fn spec() -> impl Strategy<Value = PolicySpec> {
    (
        selector(),
        rules(),
        rules(),
        rules(),
        rules(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(endpoint_selector, ingress, ingress_deny, egress, egress_deny, ddi, dde)| {
                PolicySpec {
                    endpoint_selector,
                    ingress,
                    ingress_deny,
                    egress,
                    egress_deny,
                    default_deny_ingress: ddi,
                    default_deny_egress: dde,
                    description: None,
                }
            },
        )
}

fn policies() -> impl Strategy<Value = Vec<Policy>> {
    proptest::collection::vec(
        (0..TENANTS.len(), proptest::collection::vec(spec(), 1..=2)),
        0..=3,
    )
    .prop_map(|ps| {
        ps.into_iter()
            .enumerate()
            .map(|(i, (t, specs))| Policy {
                name: format!("p{i}"),
                tenant: vnid(TENANTS[t]),
                specs,
            })
            .collect()
    })
}

fn endpoints() -> impl Strategy<Value = Vec<Endpoint>> {
    proptest::collection::vec((0..TENANTS.len(), labels()), 1..=5).prop_map(|v| {
        v.into_iter()
            .enumerate()
            .map(|(i, (t, labels))| Endpoint {
                id: EndpointId(i as u64),
                tenant: vnid(TENANTS[t]),
                labels,
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn compiled_lookup_equals_reference(ps in policies(), eps in endpoints()) {
        let world = World::new(ps, eps);
        let bad = world.mismatches(&addrs(), &PROTOS, &PORTS);
        prop_assert!(bad.is_empty(), "{} mismatches, first: {}", bad.len(), bad[0]);
    }
}

/// The property is not vacuous: over a fixed sample the generated worlds produce every kind of
/// decision, and corrupting one compiled entry is detected.
#[test]
fn generator_covers_all_outcomes_and_corruption_is_caught() {
    use policy::{Direction, Evaluator, FlowPeer, Reason, Verdict};
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    let mut runner = TestRunner::deterministic();
    let mut seen = BTreeSet::new();
    let mut caught = 0;
    for _ in 0..100 {
        let ps = policies().new_tree(&mut runner).unwrap().current();
        let eps = endpoints().new_tree(&mut runner).unwrap().current();
        let mut world = World::new(ps, eps);
        let r = Evaluator::new(&world.policies, &world.endpoints);
        for a in &world.endpoints {
            for b in world
                .endpoints
                .iter()
                .map(|e| FlowPeer::Endpoint(e.id))
                .chain([FlowPeer::Host, FlowPeer::World(addrs()[0])])
            {
                for port in PORTS {
                    let d = r.decide(a.id, Direction::Ingress, &b, 6, port);
                    seen.insert(format!("{:?}/{:?}", d.verdict, d.reason));
                }
            }
        }
        // Flip the verdict of one entry: some lookup must now disagree.
        if let Some((k, v)) = world.compiled.entries.iter_mut().next() {
            v.verdict = if v.verdict == policy::abi::VERDICT_ALLOW {
                policy::abi::VERDICT_DENY
            } else {
                policy::abi::VERDICT_ALLOW
            };
            let mut ports = PORTS.to_vec();
            ports.push(k.dport());
            if !world.mismatches(&addrs(), &PROTOS, &ports).is_empty() {
                caught += 1;
            }
        }
    }
    for want in [
        format!("{:?}/{:?}", Verdict::Allow, Reason::Rule),
        format!("{:?}/{:?}", Verdict::Deny, Reason::Rule),
        format!("{:?}/{:?}", Verdict::Deny, Reason::DefaultDeny),
        format!("{:?}/{:?}", Verdict::Deny, Reason::TenantIsolation),
        format!("{:?}/{:?}", Verdict::Allow, Reason::DefaultAllow),
    ] {
        assert!(seen.contains(&want), "never saw {want}: {seen:?}");
    }
    assert!(caught > 5, "corruptions caught: {caught}");
}
