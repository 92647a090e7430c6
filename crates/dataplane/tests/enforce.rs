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
        let policies =
            policy::parse_policy_file("fixture.yaml", yaml.as_bytes(), vnid(1)).expect("fixture");
        let spec: [(u64, u32, &str, Host); 7] = [
            (1, 1, "app=web", Host::A),
            (2, 1, "app=db", Host::B),
            (3, 1, "app=cache", Host::A),
            (4, 1, "app=admin", Host::A),
            (5, 1, "app=web", Host::B),
            (6, 2, "app=partner", Host::A),
            (7, 2, "app=x", Host::B),
        ];
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
    // Truncated extension header while enforcing: malformed.
    let cut = frame(web_sir, WORLD_IN, NH_HOPOPTS, &[NH_TCP]);
    let o = net
        .a
        .test_run_on(ProgramKind::FromContainer, &cut, 1, web_if)
        .expect("run");
    assert_eq!(o.retval, TC_ACT_SHOT);
    let c = net.a.maps().counters().expect("c");
    assert_eq!((c.drop_spoofed, c.drop_malformed), (1, 1));
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
