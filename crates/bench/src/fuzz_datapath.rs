//! `ilanet bench fuzz datapath`: random and mutated IPv6 packets through both eBPF programs
//! (from-container and from-wire, `BPF_PROG_TEST_RUN`, enforcement and tracing on) of two
//! hosts loaded with random endpoints and random policies, each verdict compared with a pure
//! reference.
//!
//! The reference has three parts, none of which reads the programs' maps:
//! * [`reference::parse`]: what a packet presents to policy (protocol, ports, ICMPv6 type, the
//!   flow an ICMPv6 error quotes), or why it cannot be classified completely (DESIGN §2 fail
//!   closed: an extension-header chain longer than [`reference::MAX_EXT_HDRS`], a header past
//!   the payload, a truncated L4 header: `Unclassified`; a non-first fragment: `Fragment`).
//! * `policy::Evaluator`: the verdict of the labels-and-rules semantics for that flow.
//! * A model of the hosts' tables and of conntrack (flows opened, who opened them, which side
//!   is local), so that replies, established flows and RELATED ICMPv6 errors have an expected
//!   verdict too.
//!
//! Compared per program run: the return code, the packet that comes out (only the destination
//! rewritten, as the mapping says) and every verdict event (allow/drop, reason, direction,
//! rule). Packets: extension-header chains of 0 to 11 headers (hop-by-hop, routing, destination
//! options, fragment, AH) of random lengths, first and non-first fragments, truncations at
//! every offset (with the payload length following or not), Ethernet padding, byte flips,
//! ICMPv6 errors quoting recent packets, replies to recent flows, neighbour discovery.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::Ipv6Addr;

use dataplane::testrun::{TC_ACT_OK, TC_ACT_SHOT};
use dataplane::{
    FlowEvent, FlowVerdict, HostDataplane, InEntry, IpcacheEntry, LocalEndpoint, OutEntry,
    PolicyDirection, ProgramKind, VerdictReason,
};
use ila::{ChecksumMode, Identifier, IdentifierType, Locator, Mapping, SirPrefix, Vnid};
use policy::{
    CompileLimits, Decision, Direction, Endpoint, EndpointId, Evaluator, FlowPeer, Identity,
    IdentityAllocator, IdentityTable, LabelSet, Policy, Reason, Verdict as PVerdict,
};
use serde_json::{json, Value};

use crate::fuzz_harness::{drive, FuzzConfig, FuzzReport, Generated, Rng, Verdict};
use crate::BenchError;

pub mod reference {
    //! The pure reference: what an IPv6 frame presents to policy, and the conntrack model.

    use std::collections::HashMap;
    use std::net::Ipv6Addr;

    /// Extension headers the programs walk at most (DESIGN §2: a longer chain fails closed).
    pub const MAX_EXT_HDRS: usize = 8;

    const ETH: usize = 14;
    const HDRS: usize = ETH + 40;

    /// The flow an ICMPv6 error quotes.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Quoted {
        /// Quoted next header (extension headers not followed).
        pub proto: u8,
        /// Quoted source.
        pub src: Ipv6Addr,
        /// Quoted destination.
        pub dst: Ipv6Addr,
        /// Quoted ports (echo: the identifier for both), 0 if none.
        pub sport: u16,
        /// See `sport`.
        pub dport: u16,
    }

    /// What a completely classified packet presents to policy and conntrack.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Flow {
        /// Final next header.
        pub proto: u8,
        /// ICMPv6 type (proto 58), else 0.
        pub icmp_type: u8,
        /// Conntrack ports (echo: the identifier for both), 0 if none.
        pub sport: u16,
        /// See `sport`.
        pub dport: u16,
        /// The port policy matches: TCP/UDP/SCTP destination port, else 0.
        pub policy_port: u16,
        /// An ICMPv6 error (types 1-4) whose quoted packet is readable.
        pub related: Option<Quoted>,
    }

    /// The classification of one frame.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Parsed {
        /// Not IPv6 (EtherType): passed untouched.
        NotIpv6,
        /// The IPv6 header is truncated, not version 6, or announces more payload than the
        /// frame holds: dropped before anything else.
        Malformed,
        /// Not classified completely: fail closed under enforcement.
        Unclassified,
        /// A non-first fragment: fail closed under enforcement.
        Fragment,
        /// Classified.
        Flow(Flow),
    }

    fn be16(b: &[u8], at: usize) -> Option<u16> {
        Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
    }

    fn addr(b: &[u8], at: usize) -> Option<Ipv6Addr> {
        let s: [u8; 16] = b.get(at..at + 16)?.try_into().ok()?;
        Some(Ipv6Addr::from(s))
    }

    /// Source and destination of an IPv6 frame (None if too short).
    pub fn addrs(frame: &[u8]) -> Option<(Ipv6Addr, Ipv6Addr)> {
        Some((addr(frame, ETH + 8)?, addr(frame, ETH + 24)?))
    }

    /// Extension headers stepped over (RFC 8200 §4, RFC 4302; "no next header" and ESP end
    /// the chain).
    pub fn is_ext(nh: u8) -> bool {
        matches!(nh, 0 | 43 | 60 | 44 | 51)
    }

    /// The fixed L4 header a policy needs (TCP 20, SCTP 12, UDP and ICMPv6 8), 0 for protocols
    /// matched on the number alone.
    pub fn l4_min(proto: u8) -> usize {
        match proto {
            6 => 20,
            132 => 12,
            17 | 58 => 8,
            _ => 0,
        }
    }

    /// Classifies a frame (Ethernet + IPv6).
    pub fn parse(frame: &[u8]) -> Parsed {
        if be16(frame, 12) != Some(0x86dd) {
            return Parsed::NotIpv6;
        }
        let len = frame.len();
        if len < HDRS || frame[ETH] >> 4 != 6 {
            return Parsed::Malformed;
        }
        let plen = usize::from(be16(frame, ETH + 4).unwrap_or(0));
        if len < HDRS + plen {
            return Parsed::Malformed;
        }
        // Where the payload ends (a 0 payload length, as in BIG TCP, means the frame's end).
        let end = if plen == 0 { len } else { HDRS + plen };
        let mut nh = frame[ETH + 6];
        let mut off = HDRS;
        let mut walked = 0;
        while is_ext(nh) {
            if walked == MAX_EXT_HDRS {
                return Parsed::Unclassified;
            }
            // Each header's first 4 bytes must be in the frame, the header itself in the payload.
            let Some(h) = frame.get(off..off + 4) else {
                return Parsed::Unclassified;
            };
            let hlen = match nh {
                44 => 8,
                51 => (usize::from(h[1]) + 2) * 4,
                _ => (usize::from(h[1]) + 1) * 8,
            };
            if off + hlen > end {
                return Parsed::Unclassified;
            }
            let non_first = nh == 44 && u16::from_be_bytes([h[2], h[3]]) & 0xfff8 != 0;
            nh = h[0];
            off += hlen;
            walked += 1;
            if non_first {
                return Parsed::Fragment;
            }
        }
        let need = l4_min(nh);
        let mut flow = Flow {
            proto: nh,
            icmp_type: 0,
            sport: 0,
            dport: 0,
            policy_port: 0,
            related: None,
        };
        if need == 0 {
            return Parsed::Flow(flow);
        }
        if off + need > end {
            return Parsed::Unclassified;
        }
        let l4 = &frame[off..off + 8];
        if nh != 58 {
            flow.sport = u16::from_be_bytes([l4[0], l4[1]]);
            flow.dport = u16::from_be_bytes([l4[2], l4[3]]);
            flow.policy_port = flow.dport;
            return Parsed::Flow(flow);
        }
        flow.icmp_type = l4[0];
        match l4[0] {
            128 | 129 => {
                flow.sport = u16::from_be_bytes([l4[4], l4[5]]);
                flow.dport = flow.sport;
            }
            1..=4 => flow.related = quoted(frame, off + 8),
            _ => {}
        }
        Parsed::Flow(flow)
    }

    /// The flow quoted by an ICMPv6 error whose quoted IPv6 header starts at `at`: readable if
    /// it is in the frame (errors are cut to fit, so the payload length does not bound it).
    fn quoted(frame: &[u8], at: usize) -> Option<Quoted> {
        let ip = frame.get(at..at + 40)?;
        if ip[0] >> 4 != 6 {
            return None;
        }
        let (src, dst) = (addr(ip, 8)?, addr(ip, 24)?);
        let proto = ip[6];
        let (sport, dport) = match proto {
            6 | 17 | 132 => (be16(frame, at + 40)?, be16(frame, at + 42)?),
            58 => {
                let l4 = frame.get(at + 40..at + 48)?;
                if l4[0] != 128 && l4[0] != 129 {
                    return None;
                }
                let id = u16::from_be_bytes([l4[4], l4[5]]);
                (id, id)
            }
            _ => (0, 0),
        };
        Some(Quoted {
            proto,
            src,
            dst,
            sport,
            dport,
        })
    }

    /// Neighbour discovery and MLD to a link-scoped destination: never policed.
    pub fn link_control(f: &Flow, dst: Ipv6Addr) -> bool {
        let t = f.icmp_type;
        let o = dst.octets();
        f.proto == 58
            && (matches!(t, 130..=137) || t == 143)
            && ((o[0] == 0xfe && o[1] & 0xc0 == 0x80) || (o[0] == 0xff && o[1] & 0x0f == 0x02))
    }

    /// Flow opened by side b of its key.
    pub const ORIG_B: u32 = 0x1;
    /// Opened by from-wire.
    pub const FROM_WIRE: u32 = 0x2;
    /// The local endpoint is side b.
    pub const LOCAL_B: u32 = 0x4;
    /// Both ends are endpoints of this host.
    pub const BOTH_LOCAL: u32 = 0x8;

    /// A conntrack key: the two (address, port) ends in a fixed order, and the protocol.
    pub type CtKey = (Ipv6Addr, Ipv6Addr, u16, u16, u8);

    /// The normalised key of a flow and whether the source became side b. The order is the
    /// programs' (addresses compared as two little-endian 64-bit words, then the ports as
    /// stored), so that "side b" means the same here and there.
    pub fn ct_key(
        src: Ipv6Addr,
        dst: Ipv6Addr,
        sport: u16,
        dport: u16,
        proto: u8,
    ) -> (CtKey, bool) {
        let w = |a: Ipv6Addr, i: usize| {
            let o = a.octets();
            u64::from_le_bytes(o[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]))
        };
        let swap = if w(src, 0) != w(dst, 0) {
            w(src, 0) > w(dst, 0)
        } else if w(src, 1) != w(dst, 1) {
            w(src, 1) > w(dst, 1)
        } else {
            sport.swap_bytes() > dport.swap_bytes()
        };
        if swap {
            ((dst, src, dport, sport, proto), true)
        } else {
            ((src, dst, sport, dport, proto), false)
        }
    }

    /// One host's conntrack: key → (flags, local interface).
    #[derive(Debug, Default, Clone)]
    pub struct Conntrack(pub HashMap<CtKey, (u32, u32)>);

    impl Conntrack {
        /// The entry of a flow, if this packet may continue it: an echo request only continues
        /// a flow its source opened, an echo reply one its destination opened.
        pub fn find(&self, key: &CtKey, f: &Flow, src_is_b: bool) -> Option<(u32, u32)> {
            let v = *self.0.get(key)?;
            if f.proto == 58 && f.related.is_none() {
                let opened_by_src = (v.0 & ORIG_B != 0) == src_is_b;
                if (f.icmp_type == 128 && !opened_by_src) || (f.icmp_type == 129 && opened_by_src) {
                    return None;
                }
            }
            Some(v)
        }

        /// Whether the flow an ICMPv6 error quotes is known (RELATED).
        pub fn related(&self, q: &Quoted) -> bool {
            let (k, _) = ct_key(q.src, q.dst, q.sport, q.dport, q.proto);
            self.0.contains_key(&k)
        }

        /// Records a new flow.
        pub fn create(
            &mut self,
            key: CtKey,
            orig_b: bool,
            flags: u32,
            ifindex: u32,
            local_b: bool,
        ) {
            let f = flags | if orig_b { ORIG_B } else { 0 } | if local_b { LOCAL_B } else { 0 };
            self.0.insert(key, (f, ifindex));
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn frame(nh: u8, rest: &[u8]) -> Vec<u8> {
            let mut f = vec![0u8; 12];
            f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
            f.extend_from_slice(&(rest.len() as u16).to_be_bytes());
            f.extend_from_slice(&[nh, 64]);
            f.extend_from_slice(&[0u8; 32]);
            f.extend_from_slice(rest);
            f
        }

        fn tcp(dport: u16) -> Vec<u8> {
            let mut t = vec![0u8; 20];
            t[0..2].copy_from_slice(&1234u16.to_be_bytes());
            t[2..4].copy_from_slice(&dport.to_be_bytes());
            t
        }

        fn dstopts(n: usize, last: u8) -> Vec<u8> {
            let mut r = Vec::new();
            for i in 0..n {
                let next = if i + 1 == n { last } else { 60 };
                r.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]);
            }
            r
        }

        #[test]
        fn chains_up_to_the_walk_are_classified_longer_fail_closed() {
            for n in 0..=12 {
                let mut rest = dstopts(n, 6);
                rest.extend(tcp(80));
                let p = parse(&frame(if n == 0 { 6 } else { 60 }, &rest));
                if n <= MAX_EXT_HDRS {
                    assert!(
                        matches!(p, Parsed::Flow(f) if f.proto == 6 && f.policy_port == 80),
                        "{n}: {p:?}"
                    );
                } else {
                    assert_eq!(p, Parsed::Unclassified, "{n}");
                }
            }
        }

        #[test]
        fn fragments_truncations_and_errors() {
            // Non-first fragment.
            let mut rest = vec![6, 0, 0, 8 << 3, 0, 0, 0, 1];
            rest.extend(tcp(80));
            assert_eq!(parse(&frame(44, &rest)), Parsed::Fragment);
            // First fragment with the whole TCP header: classified.
            rest[3] = 1;
            assert!(matches!(parse(&frame(44, &rest)), Parsed::Flow(f) if f.dport == 80));
            // TCP header cut at every length below 20: unclassified.
            for cut in 0..20 {
                assert_eq!(
                    parse(&frame(6, &tcp(80)[..cut])),
                    Parsed::Unclassified,
                    "{cut}"
                );
            }
            // Payload length beyond the frame: malformed.
            let mut f = frame(6, &tcp(80));
            f[18] = 0xff;
            assert_eq!(parse(&f), Parsed::Malformed);
            // An ICMPv6 error quoting a UDP packet.
            let inner = frame(17, &[0, 53, 0x9c, 0x40, 0, 8, 0, 0]);
            let mut icmp = vec![1u8, 0, 0, 0, 0, 0, 0, 0];
            icmp.extend_from_slice(&inner[14..]);
            match parse(&frame(58, &icmp)) {
                Parsed::Flow(f) => {
                    let q = f.related.expect("related");
                    assert_eq!((q.proto, q.sport, q.dport), (17, 53, 40000));
                }
                other => panic!("{other:?}"),
            }
        }

        #[test]
        fn ct_key_is_symmetric() {
            let a: Ipv6Addr = "fd00::1".parse().unwrap();
            let b: Ipv6Addr = "fd00::2".parse().unwrap();
            let (k1, s1) = ct_key(a, b, 1, 2, 6);
            let (k2, s2) = ct_key(b, a, 2, 1, 6);
            assert_eq!(k1, k2);
            assert_ne!(s1, s2);
        }
    }
}

use reference::{Conntrack, Flow, Parsed};

const LOC: [u64; 2] = [0x2001_0db8_00a0_0001, 0x2001_0db8_00b0_0001];
const HOST_ADDR: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xaaaa, 0, 0, 0, 0, 1);
const WORLD: [Ipv6Addr; 4] = [
    Ipv6Addr::new(0x2001, 0xdb8, 0xee, 0, 0, 0, 0, 5),
    Ipv6Addr::new(0x2001, 0xdb8, 0xee, 1, 0, 0, 0, 5),
    Ipv6Addr::new(0x2001, 0xdb8, 0x9999, 0, 0, 0, 0, 1),
    Ipv6Addr::new(0x2001, 0xdb8, 0x77, 0, 0, 0, 0, 1),
];
const LINK: [Ipv6Addr; 3] = [
    Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1),
    Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00, 1),
    Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x16),
];
/// Packets per world (endpoints, policies) before a new one is drawn.
const WORLD_PACKETS: u64 = 4000;

/// One endpoint of the world.
#[derive(Debug, Clone)]
struct Ep {
    ep: Endpoint,
    host: usize,
    ifindex: u32,
    identity: u32,
    mapping: Mapping,
    /// Its ILA_ENDPOINTS entry was left out (a stale or half-made endpoint: must fail closed).
    missing: bool,
}

impl Ep {
    fn sir(&self) -> Ipv6Addr {
        self.mapping.sir_address()
    }
    fn ila(&self) -> Ipv6Addr {
        self.mapping.ila_address().unwrap_or(Ipv6Addr::UNSPECIFIED)
    }
}

/// The world both hosts are loaded with, and the reference's view of it.
struct World {
    eps: Vec<Ep>,
    policies: Vec<Policy>,
    /// Per host: conntrack as the reference expects it.
    ct: [Conntrack; 2],
    /// Recent frames that passed (for replies and quoted errors).
    recent: Vec<Vec<u8>>,
    /// The endpoints as the evaluator takes them.
    eval_eps: Vec<Endpoint>,
    description: String,
}

impl World {
    fn peer_of(&self, a: Ipv6Addr) -> FlowPeer {
        if a == HOST_ADDR {
            return FlowPeer::Host;
        }
        match self.eps.iter().find(|e| e.sir() == a) {
            Some(e) => FlowPeer::Endpoint(e.ep.id),
            None => FlowPeer::World(a),
        }
    }
    /// The local endpoint entry of `a` on `host` (ILA_ENDPOINTS).
    fn endpoint(&self, host: usize, a: Ipv6Addr) -> Option<&Ep> {
        self.eps
            .iter()
            .find(|e| e.host == host && !e.missing && e.sir() == a)
    }
    /// ILA_OUT of `host` for SIR `a`: (ILA address, local).
    fn out(&self, host: usize, a: Ipv6Addr) -> Option<(Ipv6Addr, bool)> {
        self.eps
            .iter()
            .find(|e| e.sir() == a)
            .map(|e| (e.ila(), e.host == host))
    }
    /// ILA_IN of `host` for ILA address `a`: the SIR address.
    fn inn(&self, host: usize, a: Ipv6Addr) -> Option<Ipv6Addr> {
        self.eps
            .iter()
            .find(|e| e.host == host && e.ila() == a)
            .map(Ep::sir)
    }
}

fn vnid(n: u32) -> Vnid {
    Vnid::new(n).unwrap_or_else(|_| unreachable!("1 and 2 are VNIDs"))
}

fn selector(rng: &mut Rng) -> Value {
    let app = *rng.pick(&["a", "b", "c"]);
    match rng.below(6) {
        0 => json!({}),
        1 | 2 => json!({"matchLabels": {"app": app}}),
        3 => json!({"matchLabels": {"app": app, (policy::TENANT_LABEL): *rng.pick(&["1", "2"])}}),
        4 => json!({"matchLabels": {"role": "x"}}),
        _ => {
            json!({"matchExpressions": [{"key": "app", "operator": *rng.pick(&["In", "NotIn"]), "values": [app]}]})
        }
    }
}

fn ports(rng: &mut Rng) -> Value {
    let n = 1 + rng.below(3);
    let items: Vec<Value> = (0..n)
        .map(|_| {
            let proto = *rng.pick(&["TCP", "UDP", "SCTP", "ANY"]);
            match rng.below(4) {
                0 => json!({"protocol": proto}),
                1 => json!({"port": "5430", "endPort": 5440, "protocol": proto}),
                _ => json!({"port": rng.pick(&["22", "80", "443", "53", "8080", "6379"]).to_string(), "protocol": proto}),
            }
        })
        .collect();
    json!([{ "ports": items }])
}

fn rule(rng: &mut Rng, ingress: bool) -> Value {
    let (eps, ents, cidr, cidrset) = if ingress {
        ("fromEndpoints", "fromEntities", "fromCIDR", "fromCIDRSet")
    } else {
        ("toEndpoints", "toEntities", "toCIDR", "toCIDRSet")
    };
    let mut r = serde_json::Map::new();
    match rng.below(6) {
        0 | 1 => {
            let n = 1 + rng.below(2);
            r.insert(
                eps.into(),
                Value::Array((0..n).map(|_| selector(rng)).collect()),
            );
        }
        2 => {
            r.insert(ents.into(), json!([*rng.pick(&["host", "world", "all"])]));
        }
        3 => {
            r.insert(
                cidr.into(),
                json!([*rng.pick(&[
                    "2001:db8:ee::/48",
                    "2001:db8::/32",
                    "::/0",
                    "2001:db8:77::1/128"
                ])]),
            );
        }
        4 => {
            r.insert(
                cidrset.into(),
                json!([{"cidr": "2001:db8:ee::/48", "except": ["2001:db8:ee:1::/64"]}]),
            );
        }
        _ => {}
    }
    if r.is_empty() || rng.one_in(2) {
        r.insert("toPorts".into(), ports(rng));
    }
    Value::Object(r)
}

fn random_policies(rng: &mut Rng) -> Vec<Value> {
    (0..rng.below(5))
        .map(|i| {
            let mut spec = serde_json::Map::new();
            spec.insert("endpointSelector".into(), selector(rng));
            for (section, ingress) in [
                ("ingress", true),
                ("ingressDeny", true),
                ("egress", false),
                ("egressDeny", false),
            ] {
                if rng.one_in(if section.ends_with("Deny") { 4 } else { 2 }) {
                    let n = 1 + rng.below(3);
                    spec.insert(
                        section.into(),
                        Value::Array((0..n).map(|_| rule(rng, ingress)).collect()),
                    );
                }
            }
            json!({
                "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
                "metadata": {"name": format!("p{i}"), "namespace": *rng.pick(&["1", "1", "2"])},
                "spec": Value::Object(spec),
            })
        })
        .collect()
}

/// The state shared by the generator and the target.
struct State {
    dps: [HostDataplane; 2],
    world: World,
    packets_in_world: u64,
    worlds: u64,
    runs: u64,
    /// Set when a run did not finish (a panic): the next input starts a new world.
    dirty: bool,
}

fn make_world(rng: &mut Rng) -> Result<World, BenchError> {
    let n = 3 + rng.below(5);
    let mut table = IdentityTable::new();
    let mut eps = Vec::new();
    for i in 0..n {
        let id = i as u64 + 1;
        let tenant = if rng.one_in(4) { 2 } else { 1 };
        let mut labels = format!("app={}", rng.pick(&["a", "b", "c"]));
        if rng.one_in(3) {
            labels.push_str(",role=x");
        }
        let labels =
            LabelSet::parse(&labels).map_err(|e| BenchError::Invalid(format!("labels: {e}")))?;
        let ep = Endpoint {
            id: EndpointId(id),
            tenant: vnid(tenant),
            labels,
        };
        let identity = table
            .allocate(&ep.identity_labels())
            .map_err(|e| BenchError::Invalid(format!("identity: {e}")))?
            .0;
        let host = rng.below(2);
        let identifier = Identifier::new_vnid(
            IdentifierType::VnidIpv6,
            vnid(tenant),
            0x0a00_0000 + id as u32 * 0x11,
        );
        eps.push(Ep {
            ep,
            host,
            ifindex: 100 + id as u32,
            identity,
            mapping: Mapping::new(
                SirPrefix(0xfd00_0000_0000_0000 | u64::from(tenant) << 16),
                identifier,
                Locator(LOC[host]),
                ChecksumMode::NeutralMap,
            ),
            missing: false,
        });
    }
    if rng.one_in(5) {
        let i = rng.below(eps.len());
        eps[i].missing = true;
    }
    let docs = random_policies(rng);
    let mut policies = Vec::new();
    for d in &docs {
        let text = serde_json::to_vec(d)?;
        let p = policy::parse_policy_file("fuzz.json", &text, vnid(1))
            .map_err(|e| BenchError::Invalid(format!("generated policy refused: {e}")))?;
        policies.extend(p);
    }
    let description = format!(
        "endpoints {:?}; policies {}",
        eps.iter()
            .map(|e| format!(
                "{} tenant {} {} host {} {}{}",
                e.ep.id.0,
                e.ep.tenant.get(),
                e.ep.labels,
                e.host,
                e.sir(),
                if e.missing {
                    " (no endpoint entry)"
                } else {
                    ""
                }
            ))
            .collect::<Vec<_>>(),
        serde_json::to_string(&docs)?
    );
    Ok(World {
        eval_eps: eps.iter().map(|e| e.ep.clone()).collect(),
        eps,
        policies,
        ct: [Conntrack::default(), Conntrack::default()],
        recent: Vec::new(),
        description,
    })
}

/// Loads `world` into both data paths, replacing the previous one.
fn install(dps: &mut [HostDataplane; 2], old: &World, world: &World) -> Result<(), BenchError> {
    let mut table = IdentityTable::new();
    for e in &world.eps {
        table
            .bind(e.ep.identity_labels(), Identity(e.identity))
            .map_err(|e| BenchError::Invalid(format!("identity: {e}")))?;
    }
    let ids: Vec<(Identity, LabelSet)> = table.iter().map(|(i, l)| (i, l.clone())).collect();
    let compiled = policy::compile(&world.policies, &ids, &CompileLimits::default())
        .map_err(|e| BenchError::Invalid(format!("compile: {e}")))?;
    for (h, dp) in dps.iter_mut().enumerate() {
        let m = dp.maps();
        for e in &old.eps {
            m.remove_out(e.sir()).ok();
            m.remove_ipcache(e.sir()).ok();
            if e.host == h {
                m.remove_in(e.ila()).ok();
                m.remove_endpoint(e.sir()).ok();
            }
        }
        m.flush_conntrack()?;
        m.drain_flow_events()?;
        for e in &world.eps {
            let local = e.host == h;
            m.insert_ipcache(
                e.sir(),
                &IpcacheEntry {
                    identity: e.identity,
                    vnid: e.ep.tenant.get(),
                },
            )?;
            m.insert_out(
                e.sir(),
                &OutEntry {
                    ila: e.ila(),
                    csum_mode: ChecksumMode::NeutralMap,
                    local,
                },
            )?;
            if local {
                if !e.missing {
                    m.insert_endpoint(
                        e.sir(),
                        &LocalEndpoint {
                            identity: e.identity,
                            vnid: e.ep.tenant.get(),
                            ifindex: e.ifindex,
                            flags: 0,
                        },
                    )?;
                }
                m.insert_in(
                    e.ila(),
                    &InEntry {
                        sir: e.sir(),
                        ifindex: e.ifindex,
                        csum_mode: ChecksumMode::NeutralMap,
                        redirect: None,
                    },
                )?;
            }
        }
        m.insert_ipcache(
            HOST_ADDR,
            &IpcacheEntry {
                identity: Identity::HOST.0,
                vnid: 0,
            },
        )?;
        m.replace_policy(&compiled)?;
        m.set_enforce(true)?;
        m.set_trace(true)?;
    }
    Ok(())
}

/// Where a packet enters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hop {
    /// from-container of `host`, arriving on interface `ifindex`.
    Out { host: usize, ifindex: u32 },
    /// from-wire of `host`.
    In { host: usize },
}

/// One generated packet.
pub struct DpInput {
    hop: Hop,
    frame: Vec<u8>,
}

/// A verdict event as compared: (verdict, reason, direction, rule).
type Ev = (
    FlowVerdict,
    VerdictReason,
    Option<PolicyDirection>,
    Option<u32>,
);

/// What the reference expects of one program run.
#[derive(Debug)]
struct Expected {
    retval: i32,
    frame: Vec<u8>,
    events: Vec<Ev>,
    /// Why it passes, in the reference (not compared: for the coverage counts).
    how: &'static str,
}

fn with_dst(frame: &[u8], dst: Ipv6Addr) -> Vec<u8> {
    let mut f = frame.to_vec();
    f[38..54].copy_from_slice(&dst.octets());
    f
}

fn reason_of(d: &Decision) -> VerdictReason {
    match d.reason {
        Reason::Rule => VerdictReason::Rule,
        Reason::DefaultDeny => VerdictReason::DefaultDeny,
        Reason::TenantIsolation => VerdictReason::TenantIsolation,
        Reason::DefaultAllow => VerdictReason::DefaultAllow,
        Reason::UnknownEndpoint => VerdictReason::NoPolicy,
    }
}

/// A policy decision as an event; `Err` carries the drop event (the run ends there).
fn decided(d: &Decision, dir: PolicyDirection) -> Result<Ev, Ev> {
    let rule = d.rule.map(|r| r.0);
    if d.verdict == PVerdict::Allow {
        Ok((FlowVerdict::Allow, reason_of(d), Some(dir), rule))
    } else {
        Err((FlowVerdict::Drop, reason_of(d), Some(dir), rule))
    }
}

fn drop_ev(reason: VerdictReason, dir: Option<PolicyDirection>) -> Ev {
    (FlowVerdict::Drop, reason, dir, None)
}

fn fail_closed(p: &Parsed) -> Option<VerdictReason> {
    match p {
        Parsed::Unclassified => Some(VerdictReason::Unclassified),
        Parsed::Fragment => Some(VerdictReason::Fragment),
        _ => None,
    }
}

/// The frame dropped with `events`.
fn shot(frame: &[u8], events: Vec<Ev>) -> Expected {
    Expected {
        retval: TC_ACT_SHOT,
        frame: frame.to_vec(),
        events,
        how: "",
    }
}

/// What both programs do first: pass what is not IPv6, drop what does not parse; otherwise the
/// parse and the addresses (source, destination).
fn prologue(frame: &[u8]) -> Result<(Parsed, Ipv6Addr, Ipv6Addr), Expected> {
    let p = reference::parse(frame);
    match p {
        Parsed::NotIpv6 => Err(Expected {
            retval: TC_ACT_OK,
            frame: frame.to_vec(),
            events: vec![],
            how: "not-ipv6",
        }),
        Parsed::Malformed => Err(shot(frame, vec![])),
        _ => match reference::addrs(frame) {
            Some((src, dst)) => Ok((p, src, dst)),
            None => Err(shot(frame, vec![])),
        },
    }
}

/// The reference for from-container of `host` on `frame` from interface `ifindex`; updates
/// the conntrack model as the program must.
fn expect_out(
    w: &World,
    ct: &mut Conntrack,
    eval: &Evaluator<'_>,
    host: usize,
    ifindex: u32,
    frame: &[u8],
) -> Expected {
    let shot = |events| shot(frame, events);
    let (p, src, dst) = match prologue(frame) {
        Ok(parsed) => parsed,
        Err(e) => return e,
    };
    let out = w.out(host, dst);
    let mut events = Vec::new();
    if let Some(r) = fail_closed(&p) {
        return shot(vec![drop_ev(r, None)]);
    }
    let Parsed::Flow(f) = p else {
        return shot(vec![]);
    };
    let mut how = "link-control";
    if !reference::link_control(&f, dst) {
        how = "conntrack";
        let (key, orig_b) = reference::ct_key(src, dst, f.sport, f.dport, f.proto);
        let entry = ct.find(&key, &f, orig_b);
        let ct_hit = matches!(entry, Some((flags, ifi)) if flags & reference::BOTH_LOCAL == 0
            && ifi == ifindex && (flags & reference::LOCAL_B != 0) == orig_b);
        if !ct_hit {
            let Some(sep) = w
                .endpoint(host, src)
                .filter(|e| e.ifindex == ifindex)
                .cloned()
            else {
                return shot(vec![drop_ev(VerdictReason::Spoofed, None)]);
            };
            let related = f.related.is_some_and(|q| ct.related(&q));
            let both_local =
                matches!(entry, Some((flags, _)) if flags & reference::BOTH_LOCAL != 0);
            how = if related {
                "related"
            } else {
                "conntrack-local"
            };
            if !(related || both_local) {
                how = "policy";
                match new_flow_out(w, eval, host, &f, &sep, dst, out, &mut events) {
                    Ok(dep) => {
                        let flags = if dep { reference::BOTH_LOCAL } else { 0 };
                        ct.create(key, orig_b, flags, sep.ifindex, orig_b);
                    }
                    Err(ev) => {
                        events.push(ev);
                        return shot(events);
                    }
                }
            }
        }
    }
    let frame = match out {
        Some((ila, false)) => with_dst(frame, ila),
        _ => frame.to_vec(),
    };
    Expected {
        retval: TC_ACT_OK,
        frame,
        events,
        how,
    }
}

/// A new flow at from-container: egress policy of the source, ingress policy of a local
/// destination. `Ok(local destination)`, or the drop event.
#[allow(clippy::too_many_arguments)]
fn new_flow_out(
    w: &World,
    eval: &Evaluator<'_>,
    host: usize,
    f: &Flow,
    sep: &Ep,
    dst: Ipv6Addr,
    out: Option<(Ipv6Addr, bool)>,
    events: &mut Vec<Ev>,
) -> Result<bool, Ev> {
    let local = matches!(out, Some((_, true)));
    let dep = if out.is_none() || local {
        w.endpoint(host, dst)
    } else {
        None
    };
    if local && dep.is_none() {
        return Err(drop_ev(
            VerdictReason::NoEndpoint,
            Some(PolicyDirection::Ingress),
        ));
    }
    let to = w.peer_of(dst);
    let d = eval.decide(sep.ep.id, Direction::Egress, &to, f.proto, f.policy_port);
    events.push(decided(&d, PolicyDirection::Egress)?);
    if let Some(dep) = dep {
        let from = FlowPeer::Endpoint(sep.ep.id);
        let d = eval.decide(dep.ep.id, Direction::Ingress, &from, f.proto, f.policy_port);
        events.push(decided(&d, PolicyDirection::Ingress)?);
    }
    Ok(dep.is_some())
}

/// The reference for from-wire of `host` on `frame`.
fn expect_in(
    w: &World,
    ct: &mut Conntrack,
    eval: &Evaluator<'_>,
    host: usize,
    frame: &[u8],
) -> Expected {
    let shot = |events| shot(frame, events);
    let (p, src, dst) = match prologue(frame) {
        Ok(parsed) => parsed,
        Err(e) => return e,
    };
    let sir = w.inn(host, dst);
    let target = match sir {
        Some(s) => Some((s, None)),
        None => w.endpoint(host, dst).map(|e| (dst, Some(e.clone()))),
    };
    let mut events = Vec::new();
    let mut how = "not-policed";
    if let Some((dst_sir, dep)) = target {
        how = "related";
        if let Some(r) = fail_closed(&p) {
            return shot(vec![drop_ev(r, None)]);
        }
        let Parsed::Flow(f) = p else {
            return shot(vec![]);
        };
        let related = f.related.is_some_and(|q| ct.related(&q));
        if !related {
            how = "conntrack";
            let (key, orig_b) = reference::ct_key(src, dst_sir, f.sport, f.dport, f.proto);
            let entry = ct.find(&key, &f, orig_b);
            let hit =
                matches!(entry, Some((flags, _)) if (flags & reference::LOCAL_B != 0) != orig_b);
            if !hit {
                how = "policy";
                let from = w.peer_of(src);
                let Some(dep) = dep.or_else(|| w.endpoint(host, dst_sir).cloned()) else {
                    return shot(vec![drop_ev(
                        VerdictReason::NoEndpoint,
                        Some(PolicyDirection::Ingress),
                    )]);
                };
                let d = eval.decide(dep.ep.id, Direction::Ingress, &from, f.proto, f.policy_port);
                match decided(&d, PolicyDirection::Ingress) {
                    Ok(ev) => events.push(ev),
                    Err(ev) => return shot(vec![ev]),
                }
                ct.create(key, orig_b, reference::FROM_WIRE, dep.ifindex, !orig_b);
            }
        }
    }
    Expected {
        retval: TC_ACT_OK,
        frame: match sir {
            Some(s) => with_dst(frame, s),
            None => frame.to_vec(),
        },
        events,
        how,
    }
}

// ---------------------------------------------------------------------------------------------
// Packet generation

fn eth(rng: &mut Rng) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 0xb, 0x02, 0, 0, 0, 0, 0xa];
    let et: u16 = match rng.below(200) {
        0 => 0x0800,
        1 => rng.next_u64() as u16,
        _ => 0x86dd,
    };
    f.extend_from_slice(&et.to_be_bytes());
    f
}

fn port(rng: &mut Rng) -> u16 {
    let any = rng.next_u64() as u16;
    *rng.pick(&[22, 80, 443, 53, 5432, 5435, 6379, 8080, 0, 40000, any])
}

/// An L4 header (and a little payload) of `proto`.
fn l4(rng: &mut Rng, w: &World, proto: u8, sport: u16, dport: u16) -> Vec<u8> {
    let mut h = match proto {
        6 => {
            let mut h = vec![0u8; 20];
            h[12] = 5 << 4;
            h[13] = *rng.pick(&[0x02, 0x10, 0x18, 0x12]);
            h
        }
        17 => vec![0u8; 8],
        132 => vec![0u8; 12],
        58 => {
            let t = *rng.pick(&[
                128u8, 129, 128, 129, 1, 2, 3, 4, 1, 133, 135, 136, 143, 130, 200, 0,
            ]);
            let mut h = vec![t, 0, 0, 0, 0, 0, 0, 0];
            if t == 128 || t == 129 {
                h[4..6].copy_from_slice(&sport.to_be_bytes());
                h[6..8].copy_from_slice(&dport.to_be_bytes());
            } else if (1..=4).contains(&t) {
                h.extend(quote(rng, w));
            }
            let extra = rng.below(16);
            h.extend(rng.bytes(extra));
            return h;
        }
        _ => {
            let n = rng.below(24);
            return rng.bytes(n);
        }
    };
    h[0..2].copy_from_slice(&sport.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    let n = rng.below(32);
    h.extend(rng.bytes(n));
    h
}

/// The packet an ICMPv6 error quotes: a recent one (its IPv6 header and some L4), or made up.
fn quote(rng: &mut Rng, w: &World) -> Vec<u8> {
    let mut q = if !w.recent.is_empty() && !rng.one_in(4) {
        let f = rng.pick(&w.recent);
        f.get(14..).unwrap_or_default().to_vec()
    } else {
        let mut q = vec![
            0x60,
            0,
            0,
            0,
            0,
            8,
            *rng.pick(&[6u8, 17, 58, 132, 60, 50]),
            64,
        ];
        for _ in 0..2 {
            q.extend(pick_addr(rng, w).octets());
        }
        q.extend(rng.bytes(8));
        q
    };
    // Errors quote as much as fits: often only the headers, sometimes less.
    let keep = match rng.below(4) {
        0 => rng.below(q.len() + 1),
        1 => q.len(),
        _ => q.len().min(48),
    };
    q.truncate(keep);
    q
}

fn pick_addr(rng: &mut Rng, w: &World) -> Ipv6Addr {
    match rng.below(10) {
        0..=3 => rng.pick(&w.eps).sir(),
        4 | 5 => rng.pick(&w.eps).ila(),
        6 => HOST_ADDR,
        7 => *rng.pick(&WORLD),
        8 => *rng.pick(&LINK),
        _ => Ipv6Addr::from(u128::from(rng.next_u64()) << 64 | u128::from(rng.next_u64())),
    }
}

/// An extension-header chain of random length (0 to 11: past the walk's 8), then `l4` with
/// next header `proto`. Returns the IPv6 next header and the bytes after the IPv6 header.
fn chain(rng: &mut Rng, proto: u8, l4: Vec<u8>) -> (u8, Vec<u8>) {
    let n = match rng.below(10) {
        0..=4 => 0,
        5 | 6 => 1 + rng.below(3),
        7 => 4 + rng.below(4),
        _ => 7 + rng.below(5),
    };
    let types: Vec<u8> = (0..n)
        .map(|_| *rng.pick(&[0u8, 60, 60, 43, 44, 51]))
        .collect();
    let mut rest = Vec::new();
    for (i, &t) in types.iter().enumerate() {
        let next = types.get(i + 1).copied().unwrap_or(proto);
        match t {
            44 => {
                let offset: u16 = if rng.one_in(4) {
                    1 + rng.below(200) as u16
                } else {
                    0
                };
                let more = rng.one_in(2);
                rest.extend([next, 0]);
                rest.extend(((offset << 3) | u16::from(more)).to_be_bytes());
                rest.extend(rng.bytes(4));
            }
            51 => {
                let len = 1 + rng.below(4);
                let mut h = vec![0u8; (len + 2) * 4];
                h[0] = next;
                h[1] = len as u8;
                rest.extend(h);
            }
            _ => {
                let len8 = rng.below(3);
                let mut h = vec![0u8; (len8 + 1) * 8];
                h[0] = next;
                h[1] = len8 as u8;
                h[2] = 1;
                h[3] = (h.len() - 4) as u8;
                rest.extend(h);
            }
        }
    }
    rest.extend(l4);
    (types.first().copied().unwrap_or(proto), rest)
}

fn ipv6(rng: &mut Rng, src: Ipv6Addr, dst: Ipv6Addr, nh: u8, rest: &[u8]) -> Vec<u8> {
    let mut f = eth(rng);
    let version = if rng.one_in(300) { 4 } else { 6 };
    f.extend([version << 4, 0, 0, 0]);
    let plen = match rng.below(40) {
        0 => 0,
        1 => rest.len() as u16 + 1 + rng.below(8) as u16,
        2 => rest.len().saturating_sub(1 + rng.below(16)) as u16,
        _ => rest.len() as u16,
    };
    f.extend(plen.to_be_bytes());
    f.extend([nh, 64]);
    f.extend(src.octets());
    f.extend(dst.octets());
    f.extend_from_slice(rest);
    f
}

/// Damage after building: truncation (the payload length following or not), Ethernet padding,
/// byte flips in the headers.
fn damage(rng: &mut Rng, mut f: Vec<u8>) -> Vec<u8> {
    match rng.below(12) {
        0 => {
            // Cut anywhere past Ethernet; the payload length follows the cut.
            let cut = 14 + rng.below(f.len().saturating_sub(13));
            f.truncate(cut);
            if f.len() >= 20 {
                let plen = f.len().saturating_sub(54) as u16;
                f[18..20].copy_from_slice(&plen.to_be_bytes());
            }
        }
        1 => {
            let cut = 14 + rng.below(f.len().saturating_sub(13));
            f.truncate(cut);
        }
        2 => {
            let n = 1 + rng.below(40);
            f.extend(std::iter::repeat_n(0, n));
        }
        3 | 4 => {
            for _ in 0..1 + rng.below(3) {
                let i = 54 + rng.below(f.len().saturating_sub(54).clamp(1, 80));
                if i < f.len() {
                    f[i] ^= 1 << rng.below(8);
                }
            }
        }
        _ => {}
    }
    f
}

fn generate(st: &RefCell<State>, rng: &mut Rng) -> Result<DpInput, BenchError> {
    let mut s = st.borrow_mut();
    if s.dirty || s.packets_in_world >= WORLD_PACKETS {
        let world = make_world(rng)?;
        let s = &mut *s;
        install(&mut s.dps, &s.world, &world)?;
        s.world = world;
        s.packets_in_world = 0;
        s.worlds += 1;
        s.dirty = false;
    }
    s.packets_in_world += 1;
    let w = &s.world;
    let ep = rng.pick(&w.eps).clone();
    let proto = *rng.pick(&[6u8, 6, 17, 17, 58, 58, 132, 50, 59, 0]);
    let (mut sport, mut dport) = (port(rng), port(rng));
    let kind = rng.below(10);
    let (hop, src, dst) = if kind < 2 && !w.recent.is_empty() {
        // A reply to a recent packet, from its destination's side.
        let r = rng.pick(&w.recent).clone();
        let (osrc, odst) = reference::addrs(&r).unwrap_or((HOST_ADDR, HOST_ADDR));
        if let Parsed::Flow(f) = reference::parse(&r) {
            sport = f.dport;
            dport = f.sport;
        }
        // The original destination as the replier knows it (its SIR address).
        let replier = w
            .eps
            .iter()
            .find(|e| e.sir() == odst || e.ila() == odst)
            .cloned();
        let origin = w.eps.iter().find(|e| e.sir() == osrc).cloned();
        match (replier, origin) {
            (Some(rep), _) if !rng.one_in(4) => (
                Hop::Out {
                    host: rep.host,
                    ifindex: rep.ifindex,
                },
                rep.sir(),
                osrc,
            ),
            (_, Some(orig)) => (
                Hop::In { host: orig.host },
                odst,
                if rng.one_in(3) {
                    orig.sir()
                } else {
                    orig.ila()
                },
            ),
            _ => (Hop::In { host: rng.below(2) }, odst, osrc),
        }
    } else if kind < 6 {
        let ifindex = if rng.one_in(12) {
            rng.pick(&w.eps).ifindex
        } else {
            ep.ifindex
        };
        let src = if rng.one_in(12) {
            pick_addr(rng, w)
        } else {
            ep.sir()
        };
        (
            Hop::Out {
                host: ep.host,
                ifindex,
            },
            src,
            pick_addr(rng, w),
        )
    } else {
        let dst = match rng.below(4) {
            0 | 1 => ep.ila(),
            2 => ep.sir(),
            _ => pick_addr(rng, w),
        };
        (Hop::In { host: ep.host }, pick_addr(rng, w), dst)
    };
    let body = l4(rng, w, proto, sport, dport);
    let (nh, rest) = chain(rng, proto, body);
    let built = ipv6(rng, src, dst, nh, &rest);
    let frame = damage(rng, built);
    Ok(DpInput { hop, frame })
}

/// One program run: `Ok(Some((host, frame)))` when the packet goes on to that host's
/// from-wire, `Err` a mismatch with the reference.
type RunResult = Result<Option<(usize, Vec<u8>)>, String>;

fn run_one(
    s: &mut State,
    hop: Hop,
    frame: &[u8],
    outcomes: &mut Vec<String>,
) -> Result<RunResult, BenchError> {
    let State { dps, world, .. } = s;
    let (host, kind, ifindex) = match hop {
        Hop::Out { host, ifindex } => (host, ProgramKind::FromContainer, ifindex),
        Hop::In { host } => (host, ProgramKind::FromWire, 0),
    };
    let mut ct = std::mem::take(&mut world.ct[host]);
    let eval = Evaluator::new(&world.policies, &world.eval_eps);
    let want = match hop {
        Hop::Out { .. } => expect_out(world, &mut ct, &eval, host, ifindex, frame),
        Hop::In { .. } => expect_in(world, &mut ct, &eval, host, frame),
    };
    world.ct[host] = ct;
    let o = match dps[host].test_run_on(kind, frame, 1, ifindex) {
        Ok(o) => o,
        // The kernel's test harness refuses it before the program runs; any other refusal
        // is an error.
        Err(_) if not_testable(frame) => {
            outcomes.push(format!("{kind}:not-testable:short-l3-header"));
            return Ok(Ok(None));
        }
        Err(e) => Err(e).map_err(|e| BenchError::Step {
            what: format!("{hop:?}: {} bytes {}", frame.len(), hex(frame)),
            source: Box::new(e),
        })?,
    };
    let events: Vec<Ev> = dps[host]
        .maps()
        .drain_flow_events()?
        .into_iter()
        .filter_map(|e| match e {
            FlowEvent::Verdict(v) => Some((v.verdict, v.reason, v.direction, v.rule_id)),
            FlowEvent::Translation(_) => None,
        })
        .collect();
    let got = Expected {
        retval: o.retval,
        frame: o.packet,
        events,
        how: "",
    };
    let label = match (&got.retval, got.events.last()) {
        (&TC_ACT_SHOT, Some(e)) => format!("{kind}:drop:{:?}", e.1),
        (&TC_ACT_SHOT, None) => format!("{kind}:drop:malformed"),
        (&TC_ACT_OK, _) => format!("{kind}:pass:{}", want.how),
        (r, _) => format!("{kind}:retval:{r}"),
    };
    outcomes.push(label);
    if (got.retval, &got.frame, &got.events) != (want.retval, &want.frame, &want.events) {
        return Ok(Err(format!(
            "{hop:?} frame {}: expected {want:?}, got {got:?}; parsed {:?}; world: {}",
            hex(frame),
            reference::parse(frame),
            world.description
        )));
    }
    if got.retval == TC_ACT_OK {
        if world.recent.len() >= 64 {
            let i = frame.len() % 64;
            world.recent[i] = frame.to_vec();
        } else {
            world.recent.push(frame.to_vec());
        }
        // Translated towards an endpoint of the other host: it crosses the wire.
        if let Hop::Out { host, .. } = hop {
            if let Some((_, dst)) = reference::addrs(&got.frame) {
                if let Some(e) = world.eps.iter().find(|e| e.ila() == dst && e.host != host) {
                    return Ok(Ok(Some((e.host, got.frame))));
                }
            }
        }
    }
    Ok(Ok(None))
}

/// Frames `BPF_PROG_TEST_RUN` refuses (EINVAL) before the program runs: IPv6 or IPv4 shorter
/// than their fixed header. (On a real interface the program sees them: ipv6_header() drops a
/// short IPv6 header as malformed, IPv4 passes untouched.)
fn not_testable(frame: &[u8]) -> bool {
    match u16::from_be_bytes([frame[12], frame[13]]) {
        0x86dd => frame.len() < 14 + 40,
        0x0800 => frame.len() < 14 + 20,
        _ => false,
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Runs the data-path fuzzer (root: loads the programs twice).
pub fn run(cfg: &FuzzConfig, progress: &mut dyn FnMut(u64)) -> Result<FuzzReport, BenchError> {
    let mut rng = Rng(cfg.seed ^ 0xda7a_0000);
    let world = make_world(&mut rng)?;
    let mut dps = [
        HostDataplane::load_unpinned()?,
        HostDataplane::load_unpinned()?,
    ];
    let empty = World {
        eps: Vec::new(),
        policies: Vec::new(),
        ct: Default::default(),
        recent: Vec::new(),
        eval_eps: Vec::new(),
        description: String::new(),
    };
    install(&mut dps, &empty, &world)?;
    let st = RefCell::new(State {
        dps,
        world,
        packets_in_world: 0,
        worlds: 1,
        runs: 0,
        dirty: false,
    });
    let setup_error: RefCell<Option<BenchError>> = RefCell::new(None);
    let mut r = drive(
        "datapath",
        cfg,
        progress,
        |rng| match generate(&st, rng) {
            Ok(input) => {
                let size = input.frame.len();
                Generated {
                    kind: match input.hop {
                        Hop::Out { .. } => "from-container",
                        Hop::In { .. } => "from-wire",
                    },
                    input: Some(input),
                    size,
                }
            }
            Err(e) => {
                setup_error.borrow_mut().get_or_insert(e);
                Generated {
                    kind: "setup-error",
                    input: None,
                    size: 0,
                }
            }
        },
        |input| {
            let Some(input) = input else {
                return Verdict::Violation("setup-error".into(), "see the run's error".into());
            };
            let mut s = st.borrow_mut();
            s.dirty = true;
            let mut labels = Vec::new();
            let mut next = Some((input.hop, input.frame.clone()));
            let mut verdict = None;
            while let Some((hop, frame)) = next.take() {
                s.runs += 1;
                match run_one(&mut s, hop, &frame, &mut labels) {
                    Ok(Ok(Some((host, f)))) => next = Some((Hop::In { host }, f)),
                    Ok(Ok(None)) => {}
                    Ok(Err(why)) => {
                        verdict = Some(Verdict::Violation("MISMATCH".into(), why));
                        // The model and the maps may disagree from here: new world.
                        s.packets_in_world = WORLD_PACKETS;
                    }
                    Err(e) => {
                        let chain: Vec<String> =
                            std::iter::successors(Some(&e as &dyn std::error::Error), |e| {
                                e.source()
                            })
                            .map(|e| e.to_string())
                            .collect();
                        verdict =
                            Some(Verdict::Violation("harness-error".into(), chain.join(": ")));
                    }
                }
            }
            s.dirty = false;
            verdict.unwrap_or_else(|| Verdict::Ok(labels.join(" then ")))
        },
        |input| match input {
            Some(i) => format!("{:?}\n{}\n", i.hop, hex(&i.frame)).into_bytes(),
            None => Vec::new(),
        },
    )?;
    if let Some(e) = setup_error.into_inner() {
        return Err(e);
    }
    let s = st.into_inner();
    r.outcomes.insert("(program runs)".into(), s.runs);
    r.outcomes.insert("(worlds)".into(), s.worlds);
    // Outcome labels with chained runs are many; fold them to the first hop's outcome.
    let mut folded: BTreeMap<String, u64> = BTreeMap::new();
    for (k, v) in std::mem::take(&mut r.outcomes) {
        let head = k.split(" then ").next().unwrap_or(&k).to_string();
        let key = if k.contains(" then ") {
            format!("{head} then from-wire")
        } else {
            head
        };
        *folded.entry(key).or_insert(0) += v;
    }
    r.outcomes = folded;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The short form `make test` runs: 20,000 packets, every verdict as the reference says.
    #[test]
    #[ignore = "needs root: eBPF (BPF_PROG_TEST_RUN)"]
    fn twenty_thousand_packets_match_the_reference() {
        let r = run(
            &FuzzConfig {
                count: 20_000,
                seed: 2,
                save_dir: None,
            },
            &mut |_| {},
        )
        .expect("run");
        assert_eq!((r.panics, r.violations), (0, 0), "{:#?}", r.findings);
        // The generator reaches every kind of verdict (guards the fuzzer itself).
        let keys: Vec<&String> = r.outcomes.keys().collect();
        for want in [
            "from-container:pass:policy",
            "from-container:pass:conntrack",
            "from-wire:pass:policy",
            "from-wire:pass:conntrack",
            "pass:related",
            "drop:Unclassified",
            "drop:Fragment",
            "drop:Spoofed",
            "drop:DefaultDeny",
            "drop:malformed",
            "then from-wire",
        ] {
            assert!(keys.iter().any(|k| k.contains(want)), "{want}: {keys:?}");
        }
    }
}
