//! Enforcement (anti-spoofing, conntrack, identity policy, tenant isolation) through
//! BPF_PROG_TEST_RUN on handcrafted packets. Expectations come from the `policy` crate: the
//! policy is compiled with `policy::compile` from a CiliumNetworkPolicy fixture and every
//! verdict of the two-host data path is compared with the reference evaluator
//! (`policy::Evaluator`), which works on labels and rules, not on the compiled tables.

mod support;

use std::net::Ipv6Addr;

use dataplane::testrun::{TC_ACT_OK, TC_ACT_SHOT};
use dataplane::{
    Counters, FlowEvent, FlowVerdict, HostDataplane, InEntry, IpcacheEntry, LocalEndpoint,
    OutEntry, PolicyDirection, ProgramKind, VerdictEvent, VerdictReason,
};
use ila::{ChecksumMode, Identifier, IdentifierType, Locator, Mapping, SirPrefix, Vnid};
use policy::abi::{
    CidrKey, EndpointPolicy, PolicyKey, PolicyValue, DIR_EGRESS, DIR_INGRESS, EP_F_EGRESS_ENFORCED,
    EP_F_INGRESS_ENFORCED, VERDICT_ALLOW, VERDICT_DENY, VERDICT_NONE,
};
use policy::{
    CompileLimits, CompiledPolicy, Decision, Endpoint, EndpointId, Evaluator, FlowPeer, Identity,
    IdentityAllocator, IdentityTable, LabelSet, LookupPeer, Policy, Reason, Verdict,
};
use support::*;

const NH_SCTP: u8 = 132;

/// The fixture: two tenants, two hosts. Tenant 1 has web (enforced both ways), db (enforced
/// ingress with port, any-port, protocol-wide, deny-beats-allow, host, CIDR and cross-tenant
/// rules), cache (ingress from web on one port), admin (no policy). Tenant 2 has partner
/// (egress to tenant 1's db named explicitly) and x (no policy).
const FIXTURE: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: db, namespace: "1"}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: web}}]
      toPorts: [{ports: [{port: "5430", endPort: 5440, protocol: TCP}]}]
    - fromEndpoints: [{matchLabels: {app: web}}]
      toPorts: [{ports: [{protocol: UDP}]}]
    - fromEndpoints: [{matchLabels: {app: admin}}]
    - fromEntities: [host]
      toPorts: [{ports: [{port: "9100", protocol: TCP}]}]
    - fromEndpoints: [{matchLabels: {ilanet.io/tenant: "2", app: partner}}]
      toPorts: [{ports: [{port: "443", protocol: TCP}]}]
    - fromCIDRSet:
        - cidr: "2001:db8:ee::/48"
          except: ["2001:db8:ee:1::/64"]
      toPorts: [{ports: [{port: "22", protocol: TCP}]}]
  ingressDeny:
    - fromEndpoints: [{}]
      toPorts: [{ports: [{port: "5433", protocol: TCP}]}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web, namespace: "1"}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
    - fromEntities: [host]
  egress:
    - toEndpoints: [{}]
    - toCIDR: ["2001:db8:ee::/48"]
      toPorts: [{ports: [{port: "443", protocol: TCP}]}]
    - toEntities: [host]
  egressDeny:
    - toEndpoints: [{matchLabels: {app: db}}]
      toPorts: [{ports: [{port: "6379", protocol: TCP}]}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: cache, namespace: "1"}
spec:
  endpointSelector: {matchLabels: {app: cache}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: web}}]
      toPorts: [{ports: [{port: "6380", protocol: TCP}]}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: partner, namespace: "2"}
spec:
  endpointSelector: {matchLabels: {app: partner}}
  egress:
    - toEndpoints: [{}]
    - toEndpoints:
        - matchLabels: {ilanet.io/tenant: "1", app: db}
      toPorts: [{ports: [{port: "443", protocol: TCP}]}]
"#;

const LOC_A: u64 = 0x2001_0db8_00a0_0001;
const LOC_B: u64 = 0x2001_0db8_00b0_0001;
const HOST_ADDR: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xaaaa, 0, 0, 0, 0, 1);
const WORLD_IN: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xee, 0, 0, 0, 0, 5);
const WORLD_CARVED: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xee, 1, 0, 0, 0, 5);
const WORLD_OTHER: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x9999, 0, 0, 0, 0, 1);

fn sir_prefix(tenant: u32) -> u64 {
    0xfd00_0000_0000_0000 | u64::from(tenant) << 16
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Host {
    A,
    B,
}

struct Ep {
    ep: Endpoint,
    host: Host,
    ifindex: u32,
    mapping: Mapping,
}

impl Ep {
    fn sir(&self) -> Ipv6Addr {
        self.mapping.sir_address()
    }
    fn ila(&self) -> Ipv6Addr {
        self.mapping.ila_address().expect("translates")
    }
}

/// Two hosts loaded with the same compiled policy and ipcache, each with its local endpoints.
struct Net {
    policies: Vec<Policy>,
    eps: Vec<Ep>,
    table: IdentityTable,
    compiled: CompiledPolicy,
    a: HostDataplane,
    b: HostDataplane,
}

fn vnid(n: u32) -> Vnid {
    Vnid::new(n).expect("vnid")
}

impl Net {
    fn new(yaml: &str) -> Net {
        Net::with(
            yaml,
            &[
                (1, 1, "app=web", Host::A),
                (2, 1, "app=db", Host::B),
                (3, 1, "app=cache", Host::A),
                (4, 1, "app=admin", Host::A),
                (5, 1, "app=web", Host::B),
                (6, 2, "app=partner", Host::A),
                (7, 2, "app=x", Host::B),
            ],
        )
    }

    /// Endpoints as (id, tenant, labels, host).
    fn with(yaml: &str, spec: &[(u64, u32, &str, Host)]) -> Net {
        let policies =
            policy::parse_policy_file("fixture.yaml", yaml.as_bytes(), vnid(1)).expect("fixture");
        let eps: Vec<Ep> = spec
            .iter()
            .map(|&(id, tenant, labels, host)| {
                let identifier = Identifier::new_vnid(
                    IdentifierType::VnidIpv6,
                    vnid(tenant),
                    0x0a00_0000 + id as u32 * 0x11,
                );
                let loc = if host == Host::A { LOC_A } else { LOC_B };
                Ep {
                    ep: Endpoint {
                        id: EndpointId(id),
                        tenant: vnid(tenant),
                        labels: LabelSet::parse(labels).expect("labels"),
                    },
                    host,
                    ifindex: 100 + id as u32,
                    mapping: Mapping::new(
                        SirPrefix(sir_prefix(tenant)),
                        identifier,
                        Locator(loc),
                        ChecksumMode::NeutralMap,
                    ),
                }
            })
            .collect();
        let mut table = IdentityTable::new();
        for e in &eps {
            table.allocate(&e.ep.identity_labels()).expect("identity");
        }
        let ids: Vec<(Identity, LabelSet)> = table.iter().map(|(i, l)| (i, l.clone())).collect();
        let compiled =
            policy::compile(&policies, &ids, &CompileLimits::default()).expect("compiles");
        let mut net = Net {
            policies,
            eps,
            table,
            compiled,
            a: load(),
            b: load(),
        };
        net.install(Host::A);
        net.install(Host::B);
        net
    }

    fn identity(&self, id: u64) -> u32 {
        self.table
            .lookup(&self.ep(id).ep.identity_labels())
            .expect("identity")
            .0
    }

    fn ep(&self, id: u64) -> &Ep {
        self.eps
            .iter()
            .find(|e| e.ep.id == EndpointId(id))
            .expect("endpoint")
    }

    fn dp(&mut self, h: Host) -> &mut HostDataplane {
        match h {
            Host::A => &mut self.a,
            Host::B => &mut self.b,
        }
    }

    fn install(&mut self, h: Host) {
        let rows: Vec<(Ipv6Addr, Ipv6Addr, bool, u32, u32, u32)> = self
            .eps
            .iter()
            .map(|e| {
                (
                    e.sir(),
                    e.ila(),
                    e.host == h,
                    self.table
                        .lookup(&e.ep.identity_labels())
                        .expect("identity")
                        .0,
                    e.ep.tenant.get(),
                    e.ifindex,
                )
            })
            .collect();
        let compiled = self.compiled.clone();
        let m = self.dp(h).maps();
        for (sir, ila, local, identity, vnid, ifindex) in rows {
            m.insert_ipcache(sir, &IpcacheEntry { identity, vnid })
                .expect("ipcache");
            m.insert_out(
                sir,
                &OutEntry {
                    ila,
                    csum_mode: ChecksumMode::NeutralMap,
                    local,
                },
            )
            .expect("out");
            if local {
                m.insert_endpoint(
                    sir,
                    &LocalEndpoint {
                        identity,
                        vnid,
                        ifindex,
                        flags: 0,
                    },
                )
                .expect("endpoint");
                m.insert_in(
                    ila,
                    &InEntry {
                        sir,
                        ifindex,
                        csum_mode: ChecksumMode::NeutralMap,
                        redirect: None,
                    },
                )
                .expect("in");
            }
        }
        m.insert_ipcache(
            HOST_ADDR,
            &IpcacheEntry {
                identity: Identity::HOST.0,
                vnid: 0,
            },
        )
        .expect("host");
        let sync = m.replace_policy(&compiled).expect("policy");
        assert_eq!(
            sync.written,
            compiled.entries.len() + compiled.cidr_entries.len() + compiled.endpoints.len()
        );
        m.set_enforce(true).expect("enforce");
        m.set_trace(true).expect("trace");
    }

    fn reset(&mut self) {
        for h in [Host::A, Host::B] {
            let m = self.dp(h).maps();
            m.flush_conntrack().expect("flush");
            m.drain_flow_events().expect("drain");
        }
    }

    fn verdicts(&mut self, h: Host) -> Vec<VerdictEvent> {
        self.dp(h)
            .maps()
            .drain_flow_events()
            .expect("drain")
            .into_iter()
            .filter_map(|e| match e {
                FlowEvent::Verdict(v) => Some(v),
                FlowEvent::Translation(_) => None,
            })
            .collect()
    }
}

fn load() -> HostDataplane {
    HostDataplane::load_unpinned().expect("load programs (root, verifier)")
}

fn packet(src: Ipv6Addr, dst: Ipv6Addr, proto: u8, sport: u16, dport: u16) -> Vec<u8> {
    match proto {
        NH_TCP | NH_UDP | NH_ICMPV6 => l4_packet(src, dst, proto, sport, dport, b"payload"),
        // SCTP common header: ports, verification tag, checksum (not checked by anyone here).
        _ => {
            let mut l4 = Vec::new();
            l4.extend_from_slice(&sport.to_be_bytes());
            l4.extend_from_slice(&dport.to_be_bytes());
            l4.extend_from_slice(&[0; 8]);
            frame(src, dst, proto, &l4)
        }
    }
}

/// Where a flow starts and ends in the matrix.
#[derive(Clone, Copy, Debug)]
enum End {
    Ep(u64),
    Host,
    World(Ipv6Addr),
}

impl End {
    fn peer(self) -> FlowPeer {
        match self {
            End::Ep(id) => FlowPeer::Endpoint(EndpointId(id)),
            End::Host => FlowPeer::Host,
            End::World(a) => FlowPeer::World(a),
        }
    }
}

/// What the data path did with one packet.
#[derive(Debug)]
struct Outcome {
    verdict: Verdict,
    /// The drop event, if dropped.
    drop: Option<VerdictEvent>,
    counters: Counters,
}

/// Sends one packet from `from` to `to` through the data path of the two hosts: from-container
/// at the sender's host, then from-wire at the receiver's host when the packet crosses.
fn send(net: &mut Net, from: End, to: End, proto: u8, dport: u16) -> Outcome {
    net.reset();
    let before_a = net.a.maps().counters().expect("counters");
    let before_b = net.b.maps().counters().expect("counters");
    let sport = 40000;
    let dst_addr = match to {
        End::Ep(id) => net.ep(id).sir(),
        End::Host => HOST_ADDR,
        End::World(a) => a,
    };
    let (rc, host, wire) = match from {
        End::Ep(id) => {
            let e = net.ep(id);
            let (src, h, ifindex) = (e.sir(), e.host, e.ifindex);
            let pkt = packet(src, dst_addr, proto, sport, dport);
            let o = net
                .dp(h)
                .test_run_on(ProgramKind::FromContainer, &pkt, 1, ifindex)
                .expect("run");
            (o.retval, h, o.packet)
        }
        End::Host | End::World(_) => {
            let src = if let End::World(a) = from {
                a
            } else {
                HOST_ADDR
            };
            let End::Ep(id) = to else {
                panic!("external to external")
            };
            let e = net.ep(id);
            let (h, ila) = (e.host, e.ila());
            (TC_ACT_OK, if h == Host::A { Host::B } else { Host::A }, {
                packet(src, ila, proto, sport, dport)
            })
        }
    };
    let mut verdict = if rc == TC_ACT_SHOT {
        Verdict::Deny
    } else {
        assert_eq!(rc, TC_ACT_OK);
        Verdict::Allow
    };
    let mut drop_host = host;
    if verdict == Verdict::Allow {
        if let End::Ep(id) = to {
            let (eh, ila, sir) = (net.ep(id).host, net.ep(id).ila(), net.ep(id).sir());
            if eh != host {
                assert_eq!(dst_of(&wire), ila, "translated on the way out");
                let o = net
                    .dp(eh)
                    .test_run(ProgramKind::FromWire, &wire, 1)
                    .expect("run");
                drop_host = eh;
                if o.retval == TC_ACT_SHOT {
                    verdict = Verdict::Deny;
                } else {
                    assert_eq!(o.retval, TC_ACT_OK);
                    assert_eq!(dst_of(&o.packet), sir, "translated back");
                }
            } else {
                assert_eq!(dst_of(&wire), sir, "local destination not translated");
            }
        }
    }
    let drop = net
        .verdicts(drop_host)
        .into_iter()
        .rfind(|v| v.verdict == FlowVerdict::Drop);
    let other = if drop_host == Host::A {
        Host::B
    } else {
        Host::A
    };
    assert!(
        net.verdicts(other)
            .iter()
            .all(|v| v.verdict == FlowVerdict::Allow),
        "drops only where the packet died"
    );
    let after_a = net.a.maps().counters().expect("counters");
    let after_b = net.b.maps().counters().expect("counters");
    Outcome {
        verdict,
        drop,
        counters: diff(&before_a, &after_a).plus(&diff(&before_b, &after_b)),
    }
}

trait Plus {
    fn plus(&self, o: &Counters) -> Counters;
}

impl Plus for Counters {
    fn plus(&self, o: &Counters) -> Counters {
        let p: Vec<u64> = self
            .pairs()
            .iter()
            .zip(o.pairs())
            .map(|((_, a), (_, b))| a + b)
            .collect();
        from_vec(&p)
    }
}

fn from_vec(p: &[u64]) -> Counters {
    Counters {
        out_translated: p[0],
        out_local: p[1],
        out_miss: p[2],
        in_translated: p[3],
        in_redirected: p[4],
        in_miss: p[5],
        not_ipv6: p[6],
        drop_malformed: p[7],
        drop_csum: p[8],
        drop_rewrite: p[9],
        drop_policy: p[10],
        drop_tenant: p[11],
        drop_spoofed: p[12],
        drop_no_endpoint: p[13],
        ct_new: p[14],
        ct_hit: p[15],
        drop_unclassified: p[16],
        drop_fragment: p[17],
    }
}

fn diff(a: &Counters, b: &Counters) -> Counters {
    let p: Vec<u64> = a
        .pairs()
        .iter()
        .zip(b.pairs())
        .map(|((_, x), (_, y))| y - x)
        .collect();
    from_vec(&p)
}

fn expected_reason(d: &Decision) -> VerdictReason {
    match d.reason {
        Reason::Rule => VerdictReason::Rule,
        Reason::DefaultDeny => VerdictReason::DefaultDeny,
        Reason::TenantIsolation => VerdictReason::TenantIsolation,
        Reason::DefaultAllow => VerdictReason::DefaultAllow,
        Reason::UnknownEndpoint => VerdictReason::NoPolicy,
    }
}

const PORTS: [(u8, u16); 11] = [
    (NH_TCP, 5432),
    (NH_TCP, 5433),
    (NH_TCP, 6379),
    (NH_TCP, 6380),
    (NH_TCP, 443),
    (NH_TCP, 22),
    (NH_TCP, 9100),
    (NH_UDP, 53),
    (NH_SCTP, 5432),
    (NH_ICMPV6, 0),
    (NH_TCP, 80),
];

#[test]
#[ignore = "needs root: eBPF (BPF_PROG_TEST_RUN)"]
fn every_flow_matches_the_reference_evaluator() {
    let mut net = Net::new(FIXTURE);
    let ids: Vec<u64> = net.eps.iter().map(|e| e.ep.id.0).collect();
    let mut flows: Vec<(End, End)> = Vec::new();
    for &a in &ids {
        for &b in &ids {
            if a != b {
                flows.push((End::Ep(a), End::Ep(b)));
            }
        }
        for x in [
            End::Host,
            End::World(WORLD_IN),
            End::World(WORLD_CARVED),
            End::World(WORLD_OTHER),
        ] {
            flows.push((End::Ep(a), x));
            flows.push((x, End::Ep(a)));
        }
    }
    let endpoints: Vec<Endpoint> = net.eps.iter().map(|e| e.ep.clone()).collect();
    let policies = net.policies.clone();
    let eval = Evaluator::new(&policies, &endpoints);
    let (mut allowed, mut denied, mut tenant) = (0, 0, 0);
    for (from, to) in flows {
        for (proto, dport) in PORTS {
            // ICMPv6 echo: identifier 0x1234 as both "ports"; policy sees no port.
            let (wire_port, policy_port) = if proto == NH_ICMPV6 {
                (0x1234, 0)
            } else {
                (dport, dport)
            };
            let want = eval.explain(&from.peer(), &to.peer(), policy_port, proto);
            let got = send(&mut net, from, to, proto, wire_port);
            let what = format!("{from:?} -> {to:?} proto {proto} port {dport}: {want:?}");
            assert_eq!(got.verdict, want.verdict, "{what}; got {got:?}");
            let c = got.counters;
            if want.verdict == Verdict::Allow {
                allowed += 1;
                assert!(got.drop.is_none(), "{what}");
                assert_eq!(
                    c.drop_policy + c.drop_tenant + c.drop_spoofed + c.drop_no_endpoint,
                    0,
                    "{what}"
                );
                // One conntrack entry per host that policed the flow.
                assert!(c.ct_new >= 1, "{what}: {c:?}");
                continue;
            }
            denied += 1;
            let (dir, decision) = match (&want.egress, &want.ingress) {
                (Some(d), _) if d.verdict == Verdict::Deny => (PolicyDirection::Egress, d),
                (_, Some(d)) => (PolicyDirection::Ingress, d),
                _ => unreachable!("{what}"),
            };
            let ev = got.drop.unwrap_or_else(|| panic!("{what}: no drop event"));
            assert_eq!(ev.direction, Some(dir), "{what}: {ev:?}");
            assert_eq!(ev.reason, expected_reason(decision), "{what}: {ev:?}");
            assert_eq!(ev.rule_id, decision.rule.map(|r| r.0), "{what}: {ev:?}");
            assert_eq!(ev.proto, proto);
            // ICMPv6 echo: the identifier (the builder's source port) stands for both ports.
            let port = if proto == NH_ICMPV6 { 40000 } else { wire_port };
            assert_eq!(ev.dport, port);
            let (policy_drops, tenant_drops) = match decision.reason {
                Reason::TenantIsolation => (0, 1),
                _ => (1, 0),
            };
            tenant += tenant_drops;
            assert_eq!(
                (c.drop_policy, c.drop_tenant, c.ct_new),
                (
                    policy_drops,
                    tenant_drops,
                    u64::from(
                        dir == PolicyDirection::Ingress
                            && matches!((from, to), (End::Ep(a), End::Ep(b)) if net.ep(a).host != net.ep(b).host)
                    )
                ),
                "{what}: {c:?}"
            );
        }
    }
    // The fixture exercises all outcomes (guards the test itself).
    assert!(
        allowed > 50 && denied > 50 && tenant > 5,
        "{allowed} {denied} {tenant}"
    );
}

#[test]
#[ignore = "needs root: eBPF (BPF_PROG_TEST_RUN)"]
fn spoofed_sources_are_dropped() {
    let mut net = Net::new(FIXTURE);
    let web = 1;
    net.reset();
    let (src, ifindex) = (net.ep(web).sir(), net.ep(web).ifindex);
    let admin = net.ep(4).sir();
    let db = net.ep(2).sir();
    let cases = [
        // Another local endpoint's address from web's interface.
        (admin, ifindex),
        // Web's address from admin's interface.
        (src, net.ep(4).ifindex),
        // An address that is no endpoint at all.
        ("fd00::1:2:3:4".parse().expect("addr"), ifindex),
        // A remote endpoint's address.
        (db, ifindex),
    ];
    for (s, i) in cases {
        let pkt = packet(s, db, NH_TCP, 1, 5432);
        let o = net
            .a
            .test_run_on(ProgramKind::FromContainer, &pkt, 1, i)
            .expect("run");
        assert_eq!(o.retval, TC_ACT_SHOT, "{s} on {i}");
    }
    let c = net.a.maps().counters().expect("counters");
    assert_eq!(c.drop_spoofed, 4);
    assert_eq!(c.out_translated, 0);
    let ev = net.verdicts(Host::A);
    assert_eq!(ev.len(), 4);
    assert!(ev
        .iter()
        .all(|e| e.reason == VerdictReason::Spoofed && e.direction.is_none()));
    // The genuine source passes.
    let pkt = packet(src, db, NH_TCP, 1, 5432);
    let o = net
        .a
        .test_run_on(ProgramKind::FromContainer, &pkt, 1, ifindex)
        .expect("run");
    assert_eq!((o.retval, dst_of(&o.packet)), (TC_ACT_OK, net.ep(2).ila()));
}

#[test]
#[ignore = "needs root: eBPF (BPF_PROG_TEST_RUN)"]
fn replies_pass_on_conntrack_although_ingress_denies() {
    let mut net = Net::new(FIXTURE);
    net.reset();
    let (web, db) = (net.ep(1), net.ep(2));
    let (web_sir, web_if, db_sir, db_if, web_ila) =
        (web.sir(), web.ifindex, db.sir(), db.ifindex, web.ila());
    // db -> web on a fresh flow: web's ingress only allows the host.
    let reply = packet(db_sir, web_sir, NH_TCP, 5432, 40001);
    let o = net
        .b
        .test_run_on(ProgramKind::FromContainer, &reply, 1, db_if)
        .expect("run");
    assert_eq!(o.retval, TC_ACT_OK, "db's egress is open");
    let o = net
        .a
        .test_run(ProgramKind::FromWire, &o.packet, 1)
        .expect("run");
    assert_eq!(
        o.retval, TC_ACT_SHOT,
        "web's ingress denies a new flow from db"
    );
    let ev = net.verdicts(Host::A);
    assert_eq!(
        ev.last().map(|e| e.reason),
        Some(VerdictReason::DefaultDeny)
    );
    net.reset();

    // web opens the connection: egress at A, ingress at B, conntrack on both.
    let syn = packet(web_sir, db_sir, NH_TCP, 40001, 5432);
    let o = net
        .a
        .test_run_on(ProgramKind::FromContainer, &syn, 1, web_if)
        .expect("run");
    assert_eq!(o.retval, TC_ACT_OK);
    let o = net
        .b
        .test_run(ProgramKind::FromWire, &o.packet, 1)
        .expect("run");
    assert_eq!(o.retval, TC_ACT_OK);
    let ct = net.a.maps().conntrack().expect("ct");
    assert_eq!(ct.len(), 1);
    assert_eq!(
        (
            ct[0].src,
            ct[0].dst,
            ct[0].sport,
            ct[0].dport,
            ct[0].proto,
            ct[0].from_wire
        ),
        (web_sir, db_sir, 40001, 5432, NH_TCP, false),
        "oriented as opened"
    );
    let ct_b = net.b.maps().conntrack().expect("ct");
    assert_eq!(
        (ct_b.len(), ct_b[0].from_wire, ct_b[0].src),
        (1, true, web_sir)
    );
    let hits = net.a.maps().counters().expect("c").ct_hit;

    // The reply now passes at B's from-container and A's from-wire.
    let o = net
        .b
        .test_run_on(ProgramKind::FromContainer, &reply, 1, db_if)
        .expect("run");
    assert_eq!((o.retval, dst_of(&o.packet)), (TC_ACT_OK, web_ila));
    let o = net
        .a
        .test_run(ProgramKind::FromWire, &o.packet, 1)
        .expect("run");
    assert_eq!((o.retval, dst_of(&o.packet)), (TC_ACT_OK, web_sir));
    assert_eq!(net.a.maps().counters().expect("c").ct_hit, hits + 1);
    // Established packets of the flow pass without new verdicts.
    net.verdicts(Host::A);
    let o = net
        .a
        .test_run_on(ProgramKind::FromContainer, &syn, 1, web_if)
        .expect("run");
    assert_eq!(o.retval, TC_ACT_OK);
    assert!(
        net.verdicts(Host::A).is_empty(),
        "no verdict for established"
    );

    // A different port is a different flow: denied again.
    let other = packet(db_sir, web_sir, NH_TCP, 5432, 40002);
    let o = net
        .a
        .test_run(
            ProgramKind::FromWire,
            &packet(db_sir, web_ila, NH_TCP, 5432, 40002),
            1,
        )
        .expect("run");
    assert_eq!(o.retval, TC_ACT_SHOT, "{other:?}");

    // Expiry and flush.
    assert_eq!(
        net.a
            .maps()
            .expire_conntrack(std::time::Duration::from_secs(3600))
            .expect("expire"),
        0
    );
    assert_eq!(net.a.maps().flush_conntrack().expect("flush"), 1);
    let o = net
        .a
        .test_run(
            ProgramKind::FromWire,
            &packet(db_sir, web_ila, NH_TCP, 5432, 40001),
            1,
        )
        .expect("run");
    assert_eq!(
        o.retval, TC_ACT_SHOT,
        "after the flush the reply is new again"
    );
}

#[test]
#[ignore = "needs root: eBPF (BPF_PROG_TEST_RUN)"]
fn icmp_echo_reply_and_related_errors_pass() {
    let mut net = Net::new(FIXTURE);
    net.reset();
    let (web, db) = (net.ep(1), net.ep(2));
    let (web_sir, web_if, web_ila, db_sir) = (web.sir(), web.ifindex, web.ila(), db.sir());
    // Echo request web -> db (web egress open to tenant 1; db's ingress: web has no ICMP rule,
    // so db denies it at B; the CT entry at A still lets A's side of the reply in).
    let req = l4_packet(web_sir, db_sir, NH_ICMPV6, 0x77, 1, b"ping");
    let o = net
        .a
        .test_run_on(ProgramKind::FromContainer, &req, 1, web_if)
        .expect("run");
    assert_eq!(o.retval, TC_ACT_OK);
    // The echo reply (type 129, same identifier) arrives at A.
    let mut rep = l4_packet(db_sir, web_ila, NH_ICMPV6, 0x77, 1, b"ping");
    rep[ETH_LEN + IP6_LEN] = 129;
    let o = net.a.test_run(ProgramKind::FromWire, &rep, 1).expect("run");
    assert_eq!(o.retval, TC_ACT_OK, "echo reply matches the request's flow");
    // Another identifier does not.
    let mut rep2 = l4_packet(db_sir, web_ila, NH_ICMPV6, 0x78, 1, b"ping");
    rep2[ETH_LEN + IP6_LEN] = 129;
    let o = net
        .a
        .test_run(ProgramKind::FromWire, &rep2, 1)
        .expect("run");
    assert_eq!(o.retval, TC_ACT_SHOT);
    // An echo *request* from db with the same identifier is not a reply of web's flow: it is
    // policed as new (web's ingress denies db) instead of riding on the conntrack entry.
    let rev = l4_packet(db_sir, web_ila, NH_ICMPV6, 0x77, 1, b"ping");
    let o = net.a.test_run(ProgramKind::FromWire, &rev, 1).expect("run");
    assert_eq!(
        o.retval, TC_ACT_SHOT,
        "a request in the other direction is a new flow"
    );
    // On an established flow, a packet from web's veth that claims db's address is spoofed.
    let mut forged = l4_packet(db_sir, web_sir, NH_ICMPV6, 0x77, 1, b"ping");
    forged[ETH_LEN + IP6_LEN] = 129;
    let before = net.a.maps().counters().expect("counters").drop_spoofed;
    let o = net
        .a
        .test_run_on(ProgramKind::FromContainer, &forged, 1, web_if)
        .expect("run");
    assert_eq!(o.retval, TC_ACT_SHOT);
    assert_eq!(
        net.a.maps().counters().expect("counters").drop_spoofed,
        before + 1
    );

    // TCP flow web -> db, then a Packet Too Big from a router (world) quoting it.
    let syn = packet(web_sir, db_sir, NH_TCP, 40100, 5432);
    let o = net
        .a
        .test_run_on(ProgramKind::FromContainer, &syn, 1, web_if)
        .expect("run");
    assert_eq!(o.retval, TC_ACT_OK);
    let mut icmp = vec![2u8, 0, 0, 0, 0, 0, 0x05, 0x00]; // type 2, MTU 1280
    icmp.extend_from_slice(&syn[ETH_LEN..ETH_LEN + IP6_LEN + 8]);
    let router: Ipv6Addr = "2001:db8:77::1".parse().expect("addr");
    let ptb = frame(router, web_ila, NH_ICMPV6, &icmp);
    let o = net.a.test_run(ProgramKind::FromWire, &ptb, 1).expect("run");
    assert_eq!(o.retval, TC_ACT_OK, "related ICMPv6 error passes");
    // The same error quoting an unknown flow is policed (world -> web: denied).
    let mut icmp2 = icmp.clone();
    icmp2[8 + IP6_LEN + 1] ^= 0x55; // another source port
    let o = net
        .a
        .test_run(
            ProgramKind::FromWire,
            &frame(router, web_ila, NH_ICMPV6, &icmp2),
            1,
        )
        .expect("run");
    assert_eq!(o.retval, TC_ACT_SHOT);
}

#[test]
#[ignore = "needs root: eBPF (BPF_PROG_TEST_RUN)"]
fn local_destination_gets_its_ingress_policy_in_from_container() {
    let mut net = Net::new(FIXTURE);
    net.reset();
    let (web, cache) = (net.ep(1), net.ep(3));
    let (web_sir, web_if, cache_sir) = (web.sir(), web.ifindex, cache.sir());
    let (web_id, cache_id) = (net.identity(1), net.identity(3));
    let ok = packet(web_sir, cache_sir, NH_TCP, 1000, 6380);
    let o = net
        .a
        .test_run_on(ProgramKind::FromContainer, &ok, 1, web_if)
        .expect("run");
    assert_eq!(o.retval, TC_ACT_OK);
    assert_eq!(o.packet, ok, "local: untranslated");
    let ev = net.verdicts(Host::A);
    assert_eq!(ev.len(), 2, "egress and ingress verdicts: {ev:?}");
    assert_eq!(ev[0].direction, Some(PolicyDirection::Egress));
    assert_eq!(ev[1].direction, Some(PolicyDirection::Ingress));
    assert!(ev.iter().all(|e| e.verdict == FlowVerdict::Allow));
    assert_eq!(ev[1].reason, VerdictReason::Rule);
    assert!(ev[1].rule_id.is_some());

    let bad = packet(web_sir, cache_sir, NH_TCP, 1000, 80);
    let o = net
        .a
        .test_run_on(ProgramKind::FromContainer, &bad, 1, web_if)
        .expect("run");
    assert_eq!(o.retval, TC_ACT_SHOT, "cache's ingress denies port 80");
    let ev = net.verdicts(Host::A);
    let d = ev.last().expect("drop event");
    assert_eq!(
        (
            d.verdict,
            d.reason,
            d.direction,
            d.program,
            d.src_identity,
            d.dst_identity,
            d.src_vnid,
            d.dst_vnid,
        ),
        (
            FlowVerdict::Drop,
            VerdictReason::DefaultDeny,
            Some(PolicyDirection::Ingress),
            ProgramKind::FromContainer,
            web_id,
            cache_id,
            1,
            1,
        )
    );
    assert_eq!(
        (d.sport, d.dport, d.proto, d.src, d.dst, d.ifindex),
        (1000, 80, NH_TCP, web_sir, cache_sir, 1)
    );
    assert_eq!(d.rule_id, None);
    let c = net.a.maps().counters().expect("c");
    assert_eq!((c.drop_policy, c.out_local), (1, 1));
}

#[test]
#[ignore = "needs root: eBPF (BPF_PROG_TEST_RUN)"]
fn wire_packets_to_a_local_sir_are_policed_too() {
    let mut net = Net::new(FIXTURE);
    net.reset();
    let web_sir = net.ep(1).sir();
    // Straight to the SIR address from the underlay, skipping ILA: web's ingress denies world.
    let pkt = packet(WORLD_OTHER, web_sir, NH_TCP, 1, 80);
    let o = net.a.test_run(ProgramKind::FromWire, &pkt, 1).expect("run");
    assert_eq!(o.retval, TC_ACT_SHOT);
    // From the host it is allowed, and stays untranslated.
    let pkt = packet(HOST_ADDR, web_sir, NH_TCP, 1, 80);
    let o = net.a.test_run(ProgramKind::FromWire, &pkt, 1).expect("run");
    assert_eq!((o.retval, o.packet), (TC_ACT_OK, pkt));
    // Without enforcement both pass.
    net.a.maps().set_enforce(false).expect("off");
    let pkt = packet(WORLD_OTHER, web_sir, NH_TCP, 1, 81);
    assert_eq!(
        net.a
            .test_run(ProgramKind::FromWire, &pkt, 1)
            .expect("run")
            .retval,
        TC_ACT_OK
    );
}

#[test]
#[ignore = "needs root: eBPF (BPF_PROG_TEST_RUN)"]
fn fail_closed_without_endpoint_or_policy_entry() {
    let mut net = Net::new(FIXTURE);
    net.reset();
    let (web_sir, web_if) = (net.ep(1).sir(), net.ep(1).ifindex);
    let cache_sir = net.ep(3).sir();
    // The local destination lost its ILA_ENDPOINTS entry.
    net.a.maps().remove_endpoint(cache_sir).expect("rm");
    let o = net
        .a
        .test_run_on(
            ProgramKind::FromContainer,
            &packet(web_sir, cache_sir, NH_TCP, 1, 6380),
            1,
            web_if,
        )
        .expect("run");
    assert_eq!(o.retval, TC_ACT_SHOT);
    let ev = net.verdicts(Host::A);
    assert_eq!(ev.last().map(|e| e.reason), Some(VerdictReason::NoEndpoint));
    // The source identity has no POLICY_EP entry.
    let web_id = net.identity(1);
    net.a.maps().remove_policy_ep(web_id).expect("rm");
    let o = net
        .a
        .test_run_on(
            ProgramKind::FromContainer,
            &packet(web_sir, WORLD_IN, NH_TCP, 1, 443),
            1,
            web_if,
        )
        .expect("run");
    assert_eq!(o.retval, TC_ACT_SHOT);
    assert_eq!(
        net.verdicts(Host::A).last().map(|e| e.reason),
        Some(VerdictReason::NoPolicy)
    );
    let c = net.a.maps().counters().expect("c");
    assert_eq!(c.drop_no_endpoint, 2);
}

#[test]
#[ignore = "needs root: eBPF (BPF_PROG_TEST_RUN)"]
fn neighbour_discovery_passes_and_bad_l4_is_dropped() {
    let mut net = Net::new(FIXTURE);
    net.reset();
    let (web_sir, web_if) = (net.ep(1).sir(), net.ep(1).ifindex);
    // Neighbour solicitation for the gateway fe80::1, from the link-local address.
    let ll: Ipv6Addr = "fe80::42".parse().expect("addr");
    let snm: Ipv6Addr = "ff02::1:ff00:1".parse().expect("addr");
    let mut ns = l4_packet(ll, snm, NH_ICMPV6, 0, 0, &[0; 16]);
    ns[ETH_LEN + IP6_LEN] = 135;
    let o = net
        .a
        .test_run_on(ProgramKind::FromContainer, &ns, 1, web_if)
        .expect("run");
    assert_eq!(o.retval, TC_ACT_OK);
    // The same ICMPv6 type to a routable destination is not link control: spoofed source.
    let mut fake = l4_packet(ll, WORLD_IN, NH_ICMPV6, 0, 0, &[0; 16]);
    fake[ETH_LEN + IP6_LEN] = 135;
    let o = net
        .a
        .test_run_on(ProgramKind::FromContainer, &fake, 1, web_if)
        .expect("run");
    assert_eq!(o.retval, TC_ACT_SHOT);
    // Truncated extension header while enforcing: not classified (fail closed).
    let cut = frame(web_sir, WORLD_IN, NH_HOPOPTS, &[NH_TCP]);
    let o = net
        .a
        .test_run_on(ProgramKind::FromContainer, &cut, 1, web_if)
        .expect("run");
    assert_eq!(o.retval, TC_ACT_SHOT);
    let c = net.a.maps().counters().expect("c");
    assert_eq!(
        (c.drop_spoofed, c.drop_unclassified, c.drop_malformed),
        (1, 1, 0)
    );
    // TCP behind extension headers: ports are found (web -> world 443 in the CIDR is allowed,
    // port 80 is not).
    let mut rest = opts_header(NH_TCP, 0);
    rest.extend_from_slice(&l4_segment(web_sir, WORLD_IN, NH_TCP, 5, 443, b"x"));
    let ok = frame(web_sir, WORLD_IN, NH_HOPOPTS, &rest);
    let o = net
        .a
        .test_run_on(ProgramKind::FromContainer, &ok, 1, web_if)
        .expect("run");
    assert_eq!(o.retval, TC_ACT_OK);
    let mut rest = opts_header(NH_TCP, 0);
    rest.extend_from_slice(&l4_segment(web_sir, WORLD_IN, NH_TCP, 5, 80, b"x"));
    let bad = frame(web_sir, WORLD_IN, NH_HOPOPTS, &rest);
    let o = net
        .a
        .test_run_on(ProgramKind::FromContainer, &bad, 1, web_if)
        .expect("run");
    assert_eq!(o.retval, TC_ACT_SHOT);
}

#[test]
#[ignore = "needs root: eBPF (BPF_PROG_TEST_RUN)"]
fn enforce_off_is_translation_only() {
    let mut net = Net::new(FIXTURE);
    let (web_sir, web_if, admin_sir) = (net.ep(1).sir(), net.ep(1).ifindex, net.ep(4).sir());
    let x = net.ep(7);
    let (x_sir, x_ila) = (x.sir(), x.ila());
    // Denied (spoofed, cross-tenant) with enforcement...
    let spoofed = packet(admin_sir, x_sir, NH_TCP, 1, 80);
    let o = net
        .a
        .test_run_on(ProgramKind::FromContainer, &spoofed, 1, web_if)
        .expect("run");
    assert_eq!(o.retval, TC_ACT_SHOT);
    // ... translated exactly as before without.
    net.a.maps().set_enforce(false).expect("off");
    assert!(!net.a.maps().enforce().expect("flag"));
    net.reset();
    let before = net.a.maps().counters().expect("c");
    let o = net
        .a
        .test_run_on(ProgramKind::FromContainer, &spoofed, 1, web_if)
        .expect("run");
    assert_eq!(o.retval, TC_ACT_OK);
    let mut want = spoofed.clone();
    want[DADDR_OFF..DADDR_OFF + 16].copy_from_slice(&x_ila.octets());
    assert_eq!(o.packet, want);
    let after = net.a.maps().counters().expect("c");
    assert_eq!(
        diff(&before, &after),
        Counters {
            out_translated: 1,
            ..Counters::default()
        }
    );
    assert!(net.a.maps().conntrack().expect("ct").is_empty());
    let ev = net.a.maps().drain_flow_events().expect("drain");
    assert_eq!(ev.len(), 1);
    assert!(matches!(ev[0], FlowEvent::Translation(_)));
    let _ = web_sir;
}

#[test]
#[ignore = "needs root: eBPF (BPF_PROG_TEST_RUN)"]
fn drain_events_keeps_translations_only() {
    let mut net = Net::new(FIXTURE);
    net.reset();
    let (web_sir, web_if, db_sir) = (net.ep(1).sir(), net.ep(1).ifindex, net.ep(2).sir());
    net.a
        .test_run_on(
            ProgramKind::FromContainer,
            &packet(web_sir, db_sir, NH_TCP, 9, 5432),
            1,
            web_if,
        )
        .expect("run");
    let ev = net.a.maps().drain_events().expect("drain");
    assert_eq!(ev.len(), 1, "the verdict event is not a translation");
    assert_eq!(ev[0].dst_before, db_sir);
}

// ---- Hand-written entries: the lookup order of policy::abi, transcribed here from its
// documentation (brute-force LPM), independent of the C code. (`CompiledPolicy::lookup` only
// works on the output of `policy::compile`: it caches the prefix lengths at compile time.) ----

/// The verdict `policy::abi` prescribes at endpoint identity `ep` in direction `dir`.
fn abi_lookup(
    c: &CompiledPolicy,
    ep: u32,
    dir: u8,
    peer: LookupPeer,
    proto: u8,
    dport: u16,
) -> Verdict {
    let Some(epv) = c.endpoints.get(&ep) else {
        return Verdict::Deny;
    };
    let dport = if matches!(proto, 6 | 17 | 132) {
        dport
    } else {
        0
    };
    let chain = [(proto, dport), (proto, 0), (0, 0)];
    let hit = match peer {
        LookupPeer::Identity { identity, .. } => [identity.0, 0].into_iter().find_map(|p| {
            chain
                .iter()
                .find_map(|&(pr, po)| c.entries.get(&PolicyKey::new(ep, p, dir, pr, po)))
        }),
        LookupPeer::Address(a) => chain.iter().find_map(|&(pr, po)| {
            (0..=128u8)
                .rev()
                .find_map(|len| c.cidr_entries.get(&CidrKey::new(ep, dir, pr, po, a, len)))
        }),
    };
    match hit.map(|v| v.verdict) {
        Some(VERDICT_ALLOW) => return Verdict::Allow,
        Some(VERDICT_DENY) => return Verdict::Deny,
        _ => {}
    }
    let bit = if dir == DIR_EGRESS {
        EP_F_EGRESS_ENFORCED
    } else {
        EP_F_INGRESS_ENFORCED
    };
    let cross = matches!(peer, LookupPeer::Identity { tenant: Some(t), .. } if t.get() != epv.vnid);
    if epv.flags & bit != 0 || cross {
        Verdict::Deny
    } else {
        Verdict::Allow
    }
}

/// A small deterministic generator (no extra dependencies).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[(self.next() % xs.len() as u64) as usize]
    }
}

#[test]
#[ignore = "needs root: eBPF (BPF_PROG_TEST_RUN)"]
fn hand_written_entries_follow_the_abi_lookup_order() {
    const EP: u32 = 1000;
    let peers = [0u32, 1, 1001, 1002, 1003];
    let protos = [0u8, NH_TCP, NH_UDP];
    let ports = [0u16, 80, 443];
    let verdicts = [VERDICT_ALLOW, VERDICT_DENY];
    let mut rng = Lcg(7);
    let mut dp = load();
    let src: Ipv6Addr = "fd00:1::1".parse().expect("addr");
    let peer_addr = |i: u32| Ipv6Addr::new(0xfd00, 2, 0, 0, 0, 0, 0, i as u16);
    let world = [
        Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 0, 0, 0, 1),
        Ipv6Addr::new(0x2001, 0xdb8, 1, 3, 0, 0, 0, 1),
        Ipv6Addr::new(0x2001, 0xdb9, 0, 0, 0, 0, 0, 1),
    ];
    for round in 0..6 {
        let mut c = CompiledPolicy::default();
        let flags = [0, EP_F_EGRESS_ENFORCED, EP_F_INGRESS_ENFORCED][round % 3];
        c.endpoints.insert(EP, EndpointPolicy { vnid: 5, flags });
        for _ in 0..25 {
            let proto = rng.pick(&protos);
            let port = if proto == 0 { 0 } else { rng.pick(&ports) };
            c.entries.insert(
                PolicyKey::new(EP, rng.pick(&peers), DIR_EGRESS, proto, port),
                PolicyValue {
                    verdict: rng.pick(&verdicts),
                    pad: [0; 3],
                    rule_id: rng.next() as u32 % 100 + 1,
                },
            );
        }
        for (addr, len) in [
            ("2001:db8::", 32u8),
            ("2001:db8:1::", 48),
            ("2001:db8:1:2::", 64),
        ] {
            for _ in 0..3 {
                let proto = rng.pick(&protos);
                let port = if proto == 0 { 0 } else { rng.pick(&ports) };
                c.cidr_entries.insert(
                    CidrKey::new(
                        EP,
                        DIR_EGRESS,
                        proto,
                        port,
                        addr.parse().expect("addr"),
                        len,
                    ),
                    PolicyValue {
                        verdict: rng.pick(&[VERDICT_ALLOW, VERDICT_DENY, VERDICT_NONE]),
                        pad: [0; 3],
                        rule_id: rng.next() as u32 % 100 + 1,
                    },
                );
            }
        }
        let m = dp.maps();
        m.replace_policy(&c).expect("replace");
        assert_eq!(m.policy_entries().expect("list").len(), c.entries.len());
        assert_eq!(m.cidr_entries().expect("list").len(), c.cidr_entries.len());
        m.insert_endpoint(
            src,
            &LocalEndpoint {
                identity: EP,
                vnid: 5,
                ifindex: 3,
                flags: 0,
            },
        )
        .expect("ep");
        // Peers 1001 and 1002 are in the ipcache (1002 in another tenant), 1003 is not.
        for (p, vnid) in [(1u32, 0u32), (1001, 5), (1002, 6)] {
            m.insert_ipcache(peer_addr(p), &IpcacheEntry { identity: p, vnid })
                .expect("ipcache");
        }
        m.set_enforce(true).expect("on");
        m.set_trace(true).expect("trace");
        for _ in 0..60 {
            dp.maps().flush_conntrack().expect("flush");
            let (dst, lookup_peer) = match rng.next() % 4 {
                0 => {
                    let a = rng.pick(&world);
                    (a, LookupPeer::Address(a))
                }
                _ => {
                    let p = rng.pick(&[1u32, 1001, 1002]);
                    (
                        peer_addr(p),
                        LookupPeer::Identity {
                            identity: Identity(p),
                            tenant: (p != 1).then(|| vnid(if p == 1002 { 6 } else { 5 })),
                        },
                    )
                }
            };
            let proto = rng.pick(&[NH_TCP, NH_UDP, NH_SCTP, NH_ICMPV6]);
            let port = rng.pick(&[80u16, 443, 8080]);
            let policy_port = if proto == NH_ICMPV6 { 0 } else { port };
            let want = abi_lookup(&c, EP, DIR_EGRESS, lookup_peer, proto, policy_port);
            let o = dp
                .test_run_on(
                    ProgramKind::FromContainer,
                    &packet(src, dst, proto, 7, port),
                    1,
                    3,
                )
                .expect("run");
            let got = if o.retval == TC_ACT_OK {
                Verdict::Allow
            } else {
                Verdict::Deny
            };
            let ev = dp.maps().drain_flow_events().expect("drain");
            assert_eq!(
                got, want,
                "round {round} to {dst} proto {proto} port {port}: {want:?}; data path: {ev:?}; \
                 cidr entries {:?}",
                c.cidr_entries
            );
        }
    }
    // An empty compilation sweeps everything.
    let sync = dp
        .maps()
        .replace_policy(&CompiledPolicy::default())
        .expect("replace");
    assert!(sync.removed > 0);
    assert!(dp.maps().policy_entries().expect("list").is_empty());
    assert!(dp.maps().cidr_entries().expect("list").is_empty());
    assert!(dp.maps().policy_eps().expect("list").is_empty());
}

#[test]
#[ignore = "needs root: eBPF (BPF_PROG_TEST_RUN)"]
fn map_api_roundtrip() {
    let mut dp = load();
    let m = dp.maps();
    let a: Ipv6Addr = "fd00::a".parse().expect("addr");
    let ep = LocalEndpoint {
        identity: 300,
        vnid: 7,
        ifindex: 9,
        flags: 0,
    };
    m.insert_endpoint(a, &ep).expect("insert");
    assert_eq!(m.get_endpoint(a).expect("get"), Some(ep));
    assert_eq!(m.endpoints().expect("list"), vec![(a, ep)]);
    m.remove_endpoint(a).expect("rm");
    m.remove_endpoint(a).expect("rm is idempotent");
    assert_eq!(m.get_endpoint(a).expect("get"), None);

    let ic = IpcacheEntry {
        identity: 301,
        vnid: 8,
    };
    m.insert_ipcache(a, &ic).expect("insert");
    assert_eq!(m.get_ipcache(a).expect("get"), Some(ic));
    assert_eq!(m.ipcache().expect("list"), vec![(a, ic)]);
    m.remove_ipcache(a).expect("rm");
    m.remove_ipcache(a).expect("rm");
    assert!(m.ipcache().expect("list").is_empty());

    let pe = EndpointPolicy {
        vnid: 7,
        flags: EP_F_INGRESS_ENFORCED,
    };
    m.insert_policy_ep(300, &pe).expect("insert");
    assert_eq!(m.policy_eps().expect("list"), vec![(300, pe)]);
    m.remove_policy_ep(300).expect("rm");
    m.remove_policy_ep(300).expect("rm");

    let k = PolicyKey::new(300, 301, DIR_INGRESS, NH_TCP, 443);
    let v = PolicyValue {
        verdict: VERDICT_ALLOW,
        pad: [0; 3],
        rule_id: 3,
    };
    m.insert_policy(&k, &v).expect("insert");
    assert_eq!(m.policy_entries().expect("list"), vec![(k, v)]);
    m.remove_policy(&k).expect("rm");
    m.remove_policy(&k).expect("rm");
    assert!(m.policy_entries().expect("list").is_empty());

    let ck = CidrKey::new(
        300,
        DIR_EGRESS,
        NH_UDP,
        53,
        "2001:db8::".parse().expect("addr"),
        32,
    );
    m.insert_cidr(&ck, &v).expect("insert");
    assert_eq!(m.cidr_entries().expect("list"), vec![(ck, v)]);
    m.remove_cidr(&ck).expect("rm");
    m.remove_cidr(&ck).expect("rm");
    assert!(m.cidr_entries().expect("list").is_empty());

    assert!(!m.enforce().expect("flag"));
    m.set_enforce(true).expect("on");
    m.set_trace(true).expect("trace");
    m.set_trace(false).expect("trace");
    assert!(m.enforce().expect("flag"), "flags are independent");
    let limits = dataplane::compile_limits();
    assert_eq!(
        limits,
        CompileLimits::default(),
        "maps fit the default compile limits"
    );
}

// ---- Fail closed on packets that cannot be classified completely (DESIGN.md §2, issue 9) ----

/// The shape of issue 9: `app=server` allows everything from `app=client` except TCP port 80.
const EXTHDR_FIXTURE: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server, namespace: "1"}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: client}}]
  ingressDeny:
    - fromEndpoints: [{matchLabels: {app: client}}]
      toPorts: [{ports: [{port: "80", protocol: TCP}]}]
"#;

/// Client on host A, a server on host B (reached over ILA), a server on host A (local
/// destination of the client: from-container applies its ingress policy).
const CLIENT: u64 = 1;
const SERVER_B: u64 = 2;
const SERVER_A: u64 = 3;
const DENIED: u16 = 80;
const ALLOWED: u16 = 8080;

fn exthdr_net() -> Net {
    let mut net = Net::with(
        EXTHDR_FIXTURE,
        &[
            (CLIENT, 1, "app=client", Host::A),
            (SERVER_B, 1, "app=server", Host::B),
            (SERVER_A, 1, "app=server", Host::A),
        ],
    );
    net.reset();
    net
}

/// One program that polices a client -> server packet.
#[derive(Clone, Copy, Debug)]
enum Hop {
    /// from-container at A, client -> remote server (SIR destination).
    OutRemote,
    /// from-container at A, client -> local server.
    OutLocal,
    /// from-wire at B, client -> server on B (ILA destination, as on the underlay).
    Wire,
}

const HOPS: [Hop; 3] = [Hop::OutRemote, Hop::OutLocal, Hop::Wire];

impl Hop {
    /// (host, program, ingress ifindex, source, destination as written in the frame).
    fn at(self, net: &Net) -> (Host, ProgramKind, u32, Ipv6Addr, Ipv6Addr) {
        let c = net.ep(CLIENT);
        match self {
            Hop::OutRemote => (
                Host::A,
                ProgramKind::FromContainer,
                c.ifindex,
                c.sir(),
                net.ep(SERVER_B).sir(),
            ),
            Hop::OutLocal => (
                Host::A,
                ProgramKind::FromContainer,
                c.ifindex,
                c.sir(),
                net.ep(SERVER_A).sir(),
            ),
            Hop::Wire => (
                Host::B,
                ProgramKind::FromWire,
                0,
                c.sir(),
                net.ep(SERVER_B).ila(),
            ),
        }
    }
}

/// What one program did with one frame (conntrack flushed and events drained before).
struct HopRun {
    retval: i32,
    packet: Vec<u8>,
    events: Vec<VerdictEvent>,
    counters: Counters,
    /// Conntrack entries of both hosts afterwards.
    ct: Vec<dataplane::CtEntry>,
}

fn run_hop(net: &mut Net, hop: Hop, pkt: &[u8]) -> HopRun {
    net.reset();
    let (h, kind, ifindex, _, _) = hop.at(net);
    let before = net.dp(h).maps().counters().expect("counters");
    let o = net
        .dp(h)
        .test_run_on(kind, pkt, 1, ifindex)
        .expect("test run");
    let after = net.dp(h).maps().counters().expect("counters");
    let events = net.verdicts(h);
    let mut ct = net.a.maps().conntrack().expect("ct");
    ct.extend(net.b.maps().conntrack().expect("ct"));
    HopRun {
        retval: o.retval,
        packet: o.packet,
        events,
        counters: diff(&before, &after),
        ct,
    }
}

/// `pkt` is dropped at `hop` with `reason` before any policy, counted in the reason's own
/// counter alone, and leaves no conntrack state.
fn assert_fails_closed(net: &mut Net, hop: Hop, pkt: &[u8], reason: VerdictReason, what: &str) {
    let r = run_hop(net, hop, pkt);
    let what = format!("{what} at {hop:?}");
    assert_eq!(
        r.retval, TC_ACT_SHOT,
        "{what}: not dropped; events {:?}, counters {:?}, conntrack {:?}",
        r.events, r.counters, r.ct
    );
    assert_eq!(
        r.events.len(),
        1,
        "{what}: one drop event, no allow: {:?}",
        r.events
    );
    let ev = &r.events[0];
    assert_eq!(
        (ev.verdict, ev.reason, ev.direction),
        (FlowVerdict::Drop, reason, None),
        "{what}: {ev:?}"
    );
    let want = match reason {
        VerdictReason::Unclassified => Counters {
            drop_unclassified: 1,
            ..Counters::default()
        },
        VerdictReason::Fragment => Counters {
            drop_fragment: 1,
            ..Counters::default()
        },
        other => panic!("not a fail-closed reason: {other:?}"),
    };
    assert_eq!(r.counters, want, "{what}");
    assert!(r.ct.is_empty(), "{what}: conntrack state {:?}", r.ct);
}

fn dstopts(n: usize) -> Vec<u8> {
    vec![NH_DSTOPTS; n]
}

fn chain_of(first: u8, n_dstopts: usize) -> Vec<u8> {
    let mut c = vec![first];
    c.extend(dstopts(n_dstopts));
    c
}

/// Issue 9: a SYN to a denied port behind 9 or more extension headers was classified as
/// protocol 60 port 0, matched the any-protocol allow and created conntrack state.
#[test]
#[ignore = "needs root: eBPF (BPF_PROG_TEST_RUN)"]
fn long_extension_header_chains_fail_closed() {
    let mut net = exthdr_net();
    let chains = [
        ("9 destination options", dstopts(9)),
        ("10 destination options", dstopts(10)),
        ("16 destination options", dstopts(16)),
        (
            "hop-by-hop + 9 destination options",
            chain_of(NH_HOPOPTS, 9),
        ),
        (
            "atomic fragment + 9 destination options",
            chain_of(NH_FRAG, 9),
        ),
    ];
    for hop in HOPS {
        let (_, _, _, src, dst) = hop.at(&net);
        for (name, chain) in &chains {
            for dport in [DENIED, ALLOWED] {
                let syn = syn_segment(src, dst, 40000, dport);
                let pkt = with_chain(src, dst, chain, NH_TCP, &syn);
                // The builder: an independent walk finds the SYN, and its checksum verifies.
                let (nh, off, _) = l4_of(&pkt);
                assert_eq!((nh, &pkt[off..]), (NH_TCP, &syn[..]), "builder");
                assert!(l4_valid(src, dst, NH_TCP, &pkt[off..]), "builder");
                assert_fails_closed(
                    &mut net,
                    hop,
                    &pkt,
                    VerdictReason::Unclassified,
                    &format!("SYN to port {dport} behind {name}"),
                );
            }
        }
    }
    // What the issue exploited: with no state left behind, the plain packets of that
    // connection still meet the port deny.
    let (_, _, _, src, dst) = Hop::Wire.at(&net);
    let r = run_hop(
        &mut net,
        Hop::Wire,
        &packet(src, dst, NH_TCP, 40000, DENIED),
    );
    assert_eq!(r.retval, TC_ACT_SHOT);
    assert_eq!(
        r.events.last().map(|e| (e.reason, e.direction)),
        Some((VerdictReason::Rule, Some(PolicyDirection::Ingress)))
    );
}

/// Non-first fragments carry no L4 header and fragments are not tracked: under enforcement
/// every one is dropped with its own reason, also when the first fragment opened a flow.
#[test]
#[ignore = "needs root: eBPF (BPF_PROG_TEST_RUN)"]
fn non_first_fragments_fail_closed() {
    let mut net = exthdr_net();
    for hop in HOPS {
        let (h, kind, ifindex, src, dst) = hop.at(&net);
        for dport in [ALLOWED, DENIED] {
            let seg = l4_segment(src, dst, NH_TCP, 40000, dport, &[0x5a; 40]);
            let (a, b) = seg.split_at(24);
            let mut r1 = frag_header(NH_TCP, 0, true, 0xf00d);
            r1.extend_from_slice(a);
            let first = frame(src, dst, NH_FRAG, &r1);
            let mut r2 = frag_header(NH_TCP, 3, false, 0xf00d);
            r2.extend_from_slice(b);
            let second = frame(src, dst, NH_FRAG, &r2);
            // The builder: the two fragments reassemble into a valid segment.
            assert!(fragments_valid(&first, &second, dst), "builder");
            assert_eq!(l4_of(&second).2, Some(24), "builder");
            let what = format!("non-first fragment to port {dport}");
            assert_fails_closed(&mut net, hop, &second, VerdictReason::Fragment, &what);
            // Behind a destination options header too.
            let mut r3 = opts_header(NH_FRAG, 0);
            r3.extend_from_slice(&r2);
            let behind = frame(src, dst, NH_DSTOPTS, &r3);
            assert_fails_closed(
                &mut net,
                hop,
                &behind,
                VerdictReason::Fragment,
                &format!("{what} behind destination options"),
            );

            // The first fragment holds the whole TCP header: classified and policed as usual.
            let r = run_hop(&mut net, hop, &first);
            let denied = dport == DENIED && !matches!(hop, Hop::OutRemote);
            if denied {
                assert_eq!(r.retval, TC_ACT_SHOT, "first fragment at {hop:?}");
                assert_eq!(r.events.last().map(|e| e.reason), Some(VerdictReason::Rule));
                assert!(r.ct.is_empty());
                continue;
            }
            assert_eq!(
                r.retval, TC_ACT_OK,
                "first fragment at {hop:?}: {:?}",
                r.events
            );
            assert_eq!(r.ct.len(), 1, "{hop:?}");
            assert_eq!(
                (r.ct[0].proto, r.ct[0].sport, r.ct[0].dport),
                (NH_TCP, 40000, dport)
            );
            // With the flow tracked, the rest of the datagram is still dropped (no state is
            // consulted or created for it).
            let before = net.dp(h).maps().counters().expect("c");
            let o = net
                .dp(h)
                .test_run_on(kind, &second, 1, ifindex)
                .expect("run");
            let c = diff(&before, &net.dp(h).maps().counters().expect("c"));
            assert_eq!(
                o.retval, TC_ACT_SHOT,
                "tracked non-first fragment at {hop:?}"
            );
            assert_eq!(
                c,
                Counters {
                    drop_fragment: 1,
                    ..Counters::default()
                },
                "{hop:?}"
            );
            assert_eq!(
                net.verdicts(h).last().map(|e| e.reason),
                Some(VerdictReason::Fragment)
            );
            let ct_after = net.dp(h).maps().conntrack().expect("ct");
            assert_eq!(ct_after.len(), 1, "{hop:?}: no new conntrack entry");
        }
    }
}

/// An L4 header shorter than its fixed part (or past the IPv6 payload), an extension header
/// running past the payload, a first fragment too short for the TCP header: all dropped as
/// unclassified, even to an allowed port.
#[test]
#[ignore = "needs root: eBPF (BPF_PROG_TEST_RUN)"]
fn truncated_headers_fail_closed() {
    let mut net = exthdr_net();
    for hop in HOPS {
        let (_, _, _, src, dst) = hop.at(&net);
        let tcp = syn_segment(src, dst, 40000, ALLOWED);
        let udp = l4_segment(src, dst, NH_UDP, 40000, ALLOWED, b"");
        let icmp = l4_segment(src, dst, NH_ICMPV6, 0x77, 1, b"");
        let mut sctp = Vec::new();
        sctp.extend_from_slice(&40000u16.to_be_bytes());
        sctp.extend_from_slice(&ALLOWED.to_be_bytes());
        sctp.extend_from_slice(&[0; 8]);

        let mut past_payload = frame(src, dst, NH_TCP, &tcp);
        let plen = 12u16; // the last 8 bytes of the TCP header are trailing bytes of the frame
        past_payload[ETH_LEN + 4..ETH_LEN + 6].copy_from_slice(&plen.to_be_bytes());
        let mut tiny_first = frag_header(NH_TCP, 0, true, 0xbeef);
        tiny_first.extend_from_slice(&tcp[..8]);
        // Destination options announcing 32 bytes with 16 in the packet, then a TCP header.
        let mut long_opt = opts_header(NH_TCP, 3);
        long_opt.truncate(16);
        let cases: Vec<(&str, Vec<u8>)> = vec![
            (
                "TCP header of 12 bytes",
                frame(src, dst, NH_TCP, &tcp[..12]),
            ),
            (
                "TCP header of 19 bytes",
                frame(src, dst, NH_TCP, &tcp[..19]),
            ),
            (
                "TCP header of 16 bytes behind two destination options",
                with_chain(src, dst, &dstopts(2), NH_TCP, &tcp[..16]),
            ),
            ("TCP header past the payload length", past_payload),
            ("UDP header of 4 bytes", frame(src, dst, NH_UDP, &udp[..4])),
            (
                "SCTP header of 8 bytes",
                frame(src, dst, NH_SCTP, &sctp[..8]),
            ),
            (
                "ICMPv6 echo of 4 bytes",
                frame(src, dst, NH_ICMPV6, &icmp[..4]),
            ),
            (
                "first fragment with 8 bytes of TCP",
                frame(src, dst, NH_FRAG, &tiny_first),
            ),
            (
                "TCP announced, nothing follows",
                frame(src, dst, NH_TCP, &[]),
            ),
            (
                "destination options longer than the packet",
                frame(src, dst, NH_DSTOPTS, &long_opt),
            ),
            (
                "destination options cut short",
                frame(src, dst, NH_DSTOPTS, &[NH_TCP]),
            ),
        ];
        for (what, pkt) in &cases {
            assert_fails_closed(&mut net, hop, pkt, VerdictReason::Unclassified, what);
        }
        // The complete headers pass (guards the cases above).
        for pkt in [
            frame(src, dst, NH_TCP, &tcp),
            frame(src, dst, NH_UDP, &udp),
            frame(src, dst, NH_SCTP, &sctp),
            frame(src, dst, NH_ICMPV6, &icmp),
        ] {
            let r = run_hop(&mut net, hop, &pkt);
            assert_eq!(r.retval, TC_ACT_OK, "{hop:?}: {:?}", r.events);
            assert_eq!(r.ct.len(), 1, "{hop:?}");
        }
    }
}

/// Sends a client -> server packet along the whole path: from-container at A, then (remote
/// server) from-wire at B. Returns the last program's verdict, the drop event if any, and the
/// conntrack entries of both hosts.
fn client_to_server(
    net: &mut Net,
    server: u64,
    build: impl Fn(Ipv6Addr, Ipv6Addr) -> Vec<u8>,
) -> (i32, Option<VerdictEvent>, Vec<dataplane::CtEntry>) {
    net.reset();
    let (c_sir, c_if) = (net.ep(CLIENT).sir(), net.ep(CLIENT).ifindex);
    let (s_sir, s_ila, s_host) = (
        net.ep(server).sir(),
        net.ep(server).ila(),
        net.ep(server).host,
    );
    let pkt = build(c_sir, s_sir);
    let o = net
        .a
        .test_run_on(ProgramKind::FromContainer, &pkt, 1, c_if)
        .expect("run");
    let mut rc = o.retval;
    let mut drop_host = Host::A;
    if rc == TC_ACT_OK && s_host == Host::B {
        assert_eq!(dst_of(&o.packet), s_ila, "translated");
        let o = net
            .b
            .test_run(ProgramKind::FromWire, &o.packet, 1)
            .expect("run");
        rc = o.retval;
        drop_host = Host::B;
        if rc == TC_ACT_OK {
            assert_eq!(o.packet, pkt, "translated back");
        }
    } else if rc == TC_ACT_OK {
        assert_eq!(o.packet, pkt, "local: untouched");
    }
    let drop = net
        .verdicts(drop_host)
        .into_iter()
        .rfind(|e| e.verdict == FlowVerdict::Drop);
    let mut ct = net.a.maps().conntrack().expect("ct");
    ct.extend(net.b.maps().conntrack().expect("ct"));
    (rc, drop, ct)
}

/// Chains the walk supports (up to 8 extension headers) are classified to the TCP header:
/// the allowed port passes with conntrack state on the flow's real ports, the port deny
/// still applies.
#[test]
#[ignore = "needs root: eBPF (BPF_PROG_TEST_RUN)"]
fn short_extension_header_chains_are_classified() {
    let mut net = exthdr_net();
    let mut chains: Vec<Vec<u8>> = (1..=8).map(dstopts).collect();
    chains.push(chain_of(NH_HOPOPTS, 7));
    chains.push(chain_of(NH_FRAG, 7));
    chains.push(vec![NH_HOPOPTS, NH_DSTOPTS, NH_FRAG, NH_DSTOPTS]);
    for server in [SERVER_B, SERVER_A] {
        for chain in &chains {
            let build = |dport: u16| {
                move |s: Ipv6Addr, d: Ipv6Addr| {
                    with_chain(s, d, chain, NH_TCP, &syn_segment(s, d, 40000, dport))
                }
            };
            let what = format!("server {server}, chain {chain:?}");
            let (rc, drop, ct) = client_to_server(&mut net, server, build(ALLOWED));
            assert_eq!((rc, drop), (TC_ACT_OK, None), "{what}");
            // One entry per host that policed the flow, on the real protocol and ports.
            assert_eq!(ct.len(), if server == SERVER_B { 2 } else { 1 }, "{what}");
            assert!(
                ct.iter()
                    .all(|e| (e.proto, e.sport, e.dport) == (NH_TCP, 40000, ALLOWED)),
                "{what}: {ct:?}"
            );
            let (rc, drop, ct) = client_to_server(&mut net, server, build(DENIED));
            assert_eq!(rc, TC_ACT_SHOT, "{what}: port deny");
            let d = drop.expect("drop event");
            assert_eq!(
                (d.reason, d.direction, d.proto, d.dport),
                (
                    VerdictReason::Rule,
                    Some(PolicyDirection::Ingress),
                    NH_TCP,
                    DENIED
                ),
                "{what}"
            );
            // The client's egress is open, so host A keeps state only for the remote case.
            assert_eq!(ct.len(), usize::from(server == SERVER_B), "{what}: {ct:?}");
        }
    }
    let c = net.a.maps().counters().expect("c");
    let c_b = net.b.maps().counters().expect("c");
    assert_eq!(
        (
            c.drop_unclassified + c_b.drop_unclassified,
            c.drop_fragment + c_b.drop_fragment
        ),
        (0, 0)
    );
}

/// The Authentication Header is an extension header (RFC 4302): the walk steps over it to
/// the TCP header instead of classifying the packet as protocol 51.
#[test]
#[ignore = "needs root: eBPF (BPF_PROG_TEST_RUN)"]
fn authentication_header_is_walked_to_the_l4_header() {
    let mut net = exthdr_net();
    for server in [SERVER_B, SERVER_A] {
        for chain in [vec![NH_AH], vec![NH_HOPOPTS, NH_AH, NH_DSTOPTS]] {
            let what = format!("server {server}, chain {chain:?}");
            let (rc, drop, _) = client_to_server(&mut net, server, |s, d| {
                with_chain(s, d, &chain, NH_TCP, &syn_segment(s, d, 40000, DENIED))
            });
            assert_eq!(rc, TC_ACT_SHOT, "{what}: port deny behind AH");
            assert_eq!(
                drop.map(|d| (d.reason, d.proto, d.dport)),
                Some((VerdictReason::Rule, NH_TCP, DENIED)),
                "{what}"
            );
            let (rc, _, ct) = client_to_server(&mut net, server, |s, d| {
                with_chain(s, d, &chain, NH_TCP, &syn_segment(s, d, 40000, ALLOWED))
            });
            assert_eq!(rc, TC_ACT_OK, "{what}");
            assert!(ct.iter().all(|e| e.proto == NH_TCP && e.dport == ALLOWED));
        }
    }
}

/// Without enforcement the data path only translates: a chain it cannot walk is still
/// forwarded (neutral-map mode never reads L4).
#[test]
#[ignore = "needs root: eBPF (BPF_PROG_TEST_RUN)"]
fn enforce_off_forwards_long_chains() {
    let mut net = exthdr_net();
    net.a.maps().set_enforce(false).expect("off");
    let (_, _, _, src, dst) = Hop::OutRemote.at(&net);
    let pkt = with_chain(
        src,
        dst,
        &dstopts(16),
        NH_TCP,
        &syn_segment(src, dst, 1, DENIED),
    );
    let r = run_hop(&mut net, Hop::OutRemote, &pkt);
    assert_eq!(r.retval, TC_ACT_OK);
    assert_eq!(dst_of(&r.packet), net.ep(SERVER_B).ila());
    assert_eq!(
        r.counters,
        Counters {
            out_translated: 1,
            ..Counters::default()
        }
    );
    assert!(r.ct.is_empty());
}
