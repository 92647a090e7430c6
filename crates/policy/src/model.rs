//! The validated policy model (what a file parses into).

use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv6Addr;

use ila::Vnid;

use crate::selector::Selector;

/// Traffic direction, seen from the endpoint the policy selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    /// Packets arriving at the endpoint (peer = source).
    Ingress,
    /// Packets leaving the endpoint (peer = destination).
    Egress,
}

impl Direction {
    /// ABI value ([`crate::abi::DIR_INGRESS`] / [`crate::abi::DIR_EGRESS`]).
    pub fn as_u8(self) -> u8 {
        match self {
            Direction::Ingress => crate::abi::DIR_INGRESS,
            Direction::Egress => crate::abi::DIR_EGRESS,
        }
    }

    /// Both directions.
    pub const ALL: [Direction; 2] = [Direction::Ingress, Direction::Egress];
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        })
    }
}

/// One of the four rule lists of a spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Section {
    /// `ingress`
    Ingress,
    /// `ingressDeny`
    IngressDeny,
    /// `egress`
    Egress,
    /// `egressDeny`
    EgressDeny,
}

impl Section {
    /// All sections, in rule numbering order.
    pub const ALL: [Section; 4] = [
        Section::Ingress,
        Section::IngressDeny,
        Section::Egress,
        Section::EgressDeny,
    ];

    /// The direction the section applies to.
    pub fn direction(self) -> Direction {
        match self {
            Section::Ingress | Section::IngressDeny => Direction::Ingress,
            Section::Egress | Section::EgressDeny => Direction::Egress,
        }
    }

    /// Whether the rules of this section deny.
    pub fn is_deny(self) -> bool {
        matches!(self, Section::IngressDeny | Section::EgressDeny)
    }

    /// The field name in a policy file.
    pub fn field(self) -> &'static str {
        match self {
            Section::Ingress => "ingress",
            Section::IngressDeny => "ingressDeny",
            Section::Egress => "egress",
            Section::EgressDeny => "egressDeny",
        }
    }
}

/// L4 protocol of a port rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// TCP (6).
    Tcp,
    /// UDP (17).
    Udp,
    /// SCTP (132).
    Sctp,
    /// TCP, UDP or SCTP (Cilium's `ANY`).
    Any,
}

impl Protocol {
    /// IP protocol numbers this protocol stands for.
    pub fn numbers(self) -> &'static [u8] {
        match self {
            Protocol::Tcp => &[6],
            Protocol::Udp => &[17],
            Protocol::Sctp => &[132],
            Protocol::Any => &[6, 17, 132],
        }
    }

    /// Whether IP protocol `proto` is one of [`Protocol::numbers`].
    pub fn matches(self, proto: u8) -> bool {
        self.numbers().contains(&proto)
    }
}

/// Whether an IP protocol number carries ports in our sense (TCP, UDP, SCTP).
pub(crate) fn has_ports(proto: u8) -> bool {
    matches!(proto, 6 | 17 | 132)
}

/// One `toPorts[].ports[]` item after validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRule {
    /// Protocol.
    pub protocol: Protocol,
    /// Inclusive destination port range; `None` = every port of the protocol.
    pub ports: Option<(u16, u16)>,
}

impl PortRule {
    /// Whether a packet of IP protocol `proto` to destination port `dport` matches.
    pub fn matches(&self, proto: u8, dport: u16) -> bool {
        self.protocol.matches(proto) && self.ports.is_none_or(|(lo, hi)| (lo..=hi).contains(&dport))
    }
}

/// A (protocol, port) key of the compiled maps: `proto` 0 = any protocol (then `port` is 0),
/// `port` 0 = any port of `proto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortKey {
    /// IP protocol number, 0 = any.
    pub proto: u8,
    /// Destination port, 0 = any.
    pub port: u16,
}

impl PortKey {
    /// Any protocol, any port.
    pub const ANY: PortKey = PortKey { proto: 0, port: 0 };

    /// Whether every packet matching `other` also matches `self`.
    pub fn covers(self, other: PortKey) -> bool {
        (self.proto == 0 || self.proto == other.proto)
            && (self.port == 0 || self.port == other.port)
    }

    /// The lookup chain of a packet: exact, any port of the protocol, any protocol. Duplicates
    /// are possible (e.g. port 0 for ICMPv6) and harmless.
    pub fn chain(proto: u8, dport: u16) -> [PortKey; 3] {
        [
            PortKey { proto, port: dport },
            PortKey { proto, port: 0 },
            PortKey::ANY,
        ]
    }
}

/// An IPv6 prefix with its host bits clear.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    addr: Ipv6Addr,
    len: u8,
}

impl Cidr {
    /// A prefix; `None` if `len` > 128 or host bits of `addr` are set.
    pub fn new(addr: Ipv6Addr, len: u8) -> Option<Cidr> {
        if len > 128 || mask(addr, len) != addr {
            return None;
        }
        Some(Cidr { addr, len })
    }

    /// `::/0`.
    pub const ALL: Cidr = Cidr {
        addr: Ipv6Addr::UNSPECIFIED,
        len: 0,
    };

    /// The network address.
    pub fn addr(self) -> Ipv6Addr {
        self.addr
    }

    /// The prefix length in bits.
    pub fn prefix_len(self) -> u8 {
        self.len
    }

    /// Whether `a` lies inside the prefix.
    pub fn contains(self, a: Ipv6Addr) -> bool {
        mask(a, self.len) == self.addr
    }

    /// Whether `other` lies entirely inside this prefix.
    pub fn contains_prefix(self, other: Cidr) -> bool {
        other.len >= self.len && self.contains(other.addr)
    }
}

/// `addr` with all bits after the first `len` cleared.
pub(crate) fn mask(addr: Ipv6Addr, len: u8) -> Ipv6Addr {
    let bits = u128::from(addr);
    let m = if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len.min(128)))
    };
    Ipv6Addr::from(bits & m)
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// A CIDR peer with optional carve-outs (`fromCIDR` items have none).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CidrRule {
    /// The prefix.
    pub cidr: Cidr,
    /// Sub-prefixes the rule does not apply to.
    pub except: Vec<Cidr>,
}

impl CidrRule {
    /// Whether external address `a` is matched.
    pub fn matches(&self, a: Ipv6Addr) -> bool {
        self.cidr.contains(a) && !self.except.iter().any(|e| e.contains(a))
    }
}

/// A reserved peer class (`fromEntities` / `toEntities`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Entity {
    /// The local host.
    Host,
    /// Every external address (what `::/0` matches), never an endpoint or the host.
    World,
    /// Everything: endpoints of every tenant, the host, external addresses.
    All,
}

/// The peers a rule applies to. A rule whose file form had `toPorts` but no peer field gets
/// `endpoints: [{}]`: every endpoint of the policy's tenant.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Peers {
    /// Endpoint selectors (restricted to the policy's tenant unless they name the tenant label).
    pub endpoints: Vec<Selector>,
    /// External prefixes.
    pub cidrs: Vec<CidrRule>,
    /// Entities.
    pub entities: BTreeSet<Entity>,
}

/// One rule of an `ingress`/`ingressDeny`/`egress`/`egressDeny` list.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rule {
    /// Peers.
    pub peers: Peers,
    /// Port rules; empty = every protocol and port (an L3-only rule).
    pub ports: Vec<PortRule>,
}

impl Rule {
    /// Whether a packet of `proto` to `dport` matches the port part of the rule.
    pub fn matches_port(&self, proto: u8, dport: u16) -> bool {
        self.ports.is_empty() || self.ports.iter().any(|p| p.matches(proto, dport))
    }
}

/// One spec of a policy (`spec`, or one item of `specs` or of a bare top-level list).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicySpec {
    /// Which endpoints of the policy's tenant the spec applies to.
    pub endpoint_selector: Selector,
    /// `ingress` allow rules.
    pub ingress: Vec<Rule>,
    /// `ingressDeny` rules.
    pub ingress_deny: Vec<Rule>,
    /// `egress` allow rules.
    pub egress: Vec<Rule>,
    /// `egressDeny` rules.
    pub egress_deny: Vec<Rule>,
    /// `enableDefaultDeny.ingress` (default true).
    pub default_deny_ingress: bool,
    /// `enableDefaultDeny.egress` (default true).
    pub default_deny_egress: bool,
    /// `description`, if any.
    pub description: Option<String>,
}

impl PolicySpec {
    /// The rules of one section.
    pub fn section(&self, s: Section) -> &[Rule] {
        match s {
            Section::Ingress => &self.ingress,
            Section::IngressDeny => &self.ingress_deny,
            Section::Egress => &self.egress,
            Section::EgressDeny => &self.egress_deny,
        }
    }

    /// Whether the spec puts the endpoints it selects into default deny for `dir`: it has a
    /// rule (allow or deny) for that direction and does not disable default deny for it.
    pub fn enforces(&self, dir: Direction) -> bool {
        match dir {
            Direction::Ingress => {
                self.default_deny_ingress
                    && !(self.ingress.is_empty() && self.ingress_deny.is_empty())
            }
            Direction::Egress => {
                self.default_deny_egress && !(self.egress.is_empty() && self.egress_deny.is_empty())
            }
        }
    }
}

/// A named policy of one tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// `metadata.name`, or the file name for a bare list of specs.
    pub name: String,
    /// The tenant the policy belongs to.
    pub tenant: Vnid,
    /// Its specs.
    pub specs: Vec<PolicySpec>,
}

/// Number of a rule in a policy list: 1-based position when every rule of every spec of every
/// policy is listed in order (sections in [`Section::ALL`] order). 0 is "no rule" in the maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleId(pub u32);

/// Where a rule comes from, for `explain` and flow records.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleRef {
    /// Policy name.
    pub policy: String,
    /// Policy tenant.
    pub tenant: Vnid,
    /// Index of the spec inside the policy.
    pub spec: usize,
    /// Section of the rule.
    pub section: Section,
    /// Index of the rule inside its section.
    pub index: usize,
}

impl RuleRef {
    /// The direction of the rule.
    pub fn direction(&self) -> Direction {
        self.section.direction()
    }
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "policy {} (tenant {}) specs[{}].{}[{}]",
            self.policy,
            self.tenant,
            self.spec,
            self.section.field(),
            self.index
        )
    }
}

/// A rule with its number and origin, in numbering order.
pub(crate) struct NumberedRule<'a> {
    pub id: RuleId,
    pub policy: &'a Policy,
    pub spec: &'a PolicySpec,
    pub section: Section,
    pub rule: &'a Rule,
    pub origin: RuleRef,
}

/// Numbers every rule of `policies` (see [`RuleId`]).
pub(crate) fn number_rules(policies: &[Policy]) -> Vec<NumberedRule<'_>> {
    let mut out = Vec::new();
    let mut next = 1u32;
    for policy in policies {
        for (si, spec) in policy.specs.iter().enumerate() {
            for section in Section::ALL {
                for (index, rule) in spec.section(section).iter().enumerate() {
                    out.push(NumberedRule {
                        id: RuleId(next),
                        policy,
                        spec,
                        section,
                        rule,
                        origin: RuleRef {
                            policy: policy.name.clone(),
                            tenant: policy.tenant,
                            spec: si,
                            section,
                            index,
                        },
                    });
                    next = next.saturating_add(1);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_math() {
        let p = Cidr::new("2001:db8::".parse().unwrap(), 32).unwrap();
        assert!(Cidr::new("2001:db8::1".parse().unwrap(), 32).is_none());
        assert!(p.contains("2001:db8:ffff::1".parse().unwrap()));
        assert!(!p.contains("2001:db9::1".parse().unwrap()));
        assert!(Cidr::ALL.contains_prefix(p));
        assert!(!p.contains_prefix(Cidr::ALL));
        assert_eq!(mask("ffff::".parse().unwrap(), 0), Ipv6Addr::UNSPECIFIED);
        let h = Cidr::new("2001:db8::1".parse().unwrap(), 128).unwrap();
        assert!(p.contains_prefix(h));
    }

    #[test]
    fn port_keys() {
        let exact = PortKey { proto: 6, port: 80 };
        let tcp = PortKey { proto: 6, port: 0 };
        assert!(PortKey::ANY.covers(exact));
        assert!(tcp.covers(exact));
        assert!(!exact.covers(tcp));
        assert!(!PortKey { proto: 17, port: 0 }.covers(exact));
    }
}
