//! The reference evaluator: the policy semantics written directly on labels, selectors and
//! rules, independent of the compiled tables (which are checked against it).

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv6Addr;

use ila::Vnid;

use crate::labels::LabelSet;
use crate::model::{number_rules, Direction, Entity, NumberedRule, Policy, Rule, RuleId, RuleRef};

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verdict {
    /// The packet passes.
    Allow,
    /// The packet is dropped.
    Deny,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
        })
    }
}

/// Why a direction decided as it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// A rule matched (deny rules beat allow rules).
    Rule,
    /// No rule matched and a policy selects the endpoint for this direction.
    DefaultDeny,
    /// No rule matched, the endpoint is not enforced, and the peer is an endpoint of another
    /// tenant.
    TenantIsolation,
    /// No rule matched and the endpoint is not enforced for this direction.
    DefaultAllow,
    /// The endpoint (or its identity) is unknown.
    UnknownEndpoint,
}

/// The decision of one direction at one endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The verdict.
    pub verdict: Verdict,
    /// Why.
    pub reason: Reason,
    /// The deciding rule when `reason` is [`Reason::Rule`].
    pub rule: Option<RuleId>,
    /// Where that rule comes from.
    pub origin: Option<RuleRef>,
}

impl Decision {
    pub(crate) fn default_for(enforced: bool, cross_tenant: bool) -> Decision {
        let (verdict, reason) = if enforced {
            (Verdict::Deny, Reason::DefaultDeny)
        } else if cross_tenant {
            (Verdict::Deny, Reason::TenantIsolation)
        } else {
            (Verdict::Allow, Reason::DefaultAllow)
        };
        Decision {
            verdict,
            reason,
            rule: None,
            origin: None,
        }
    }

    pub(crate) fn unknown() -> Decision {
        Decision {
            verdict: Verdict::Deny,
            reason: Reason::UnknownEndpoint,
            rule: None,
            origin: None,
        }
    }
}

/// Handle of an endpoint in an [`Evaluator`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EndpointId(pub u64);

/// An endpoint as the policy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Handle.
    pub id: EndpointId,
    /// Tenant.
    pub tenant: Vnid,
    /// User labels (without the tenant label).
    pub labels: LabelSet,
}

impl Endpoint {
    /// The identity labels: user labels plus the tenant label.
    pub fn identity_labels(&self) -> LabelSet {
        self.labels.with_tenant(self.tenant)
    }
}

/// One end of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FlowPeer {
    /// An endpoint.
    Endpoint(EndpointId),
    /// The host.
    Host,
    /// An external address.
    World(Ipv6Addr),
}

/// The answer of `ilanet policy explain`: the verdict of a flow, the deciding rule and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    /// Whether the packet passes (egress of the source and ingress of the destination).
    pub verdict: Verdict,
    /// The deciding rule, if a rule decided.
    pub rule: Option<RuleRef>,
    /// One human sentence.
    pub reason: String,
    /// The decision at the source endpoint (None if the source is not an endpoint).
    pub egress: Option<Decision>,
    /// The decision at the destination endpoint (None if it is not an endpoint).
    pub ingress: Option<Decision>,
}

fn describe(dir: Direction, who: &str, d: &Decision) -> String {
    let at = match dir {
        Direction::Egress => format!("egress of {who}"),
        Direction::Ingress => format!("ingress of {who}"),
    };
    match (d.reason, &d.origin) {
        (Reason::Rule, Some(o)) => format!("{at}: {} by {o}", d.verdict),
        (Reason::Rule, None) => format!("{at}: {} by rule {:?}", d.verdict, d.rule),
        (Reason::DefaultDeny, _) => {
            format!("{at}: deny by default (a policy selects it for {dir} and no rule allows this peer)")
        }
        (Reason::TenantIsolation, _) => {
            format!("{at}: deny, tenant isolation (the peer is in another tenant and no policy names it)")
        }
        (Reason::DefaultAllow, _) => format!("{at}: allow (no policy selects it for {dir})"),
        (Reason::UnknownEndpoint, _) => format!("{at}: deny (unknown endpoint)"),
    }
}

/// Combines the two directions of a flow into an [`Explanation`].
pub(crate) fn combine(
    egress: Option<(String, Decision)>,
    ingress: Option<(String, Decision)>,
) -> Explanation {
    let eg = egress
        .as_ref()
        .map(|(w, d)| describe(Direction::Egress, w, d));
    let ing = ingress
        .as_ref()
        .map(|(w, d)| describe(Direction::Ingress, w, d));
    let e = egress.map(|(_, d)| d);
    let i = ingress.map(|(_, d)| d);
    let denied = |d: &Option<Decision>| d.as_ref().is_some_and(|d| d.verdict == Verdict::Deny);
    let (verdict, rule, reason) = if denied(&e) {
        let d = e.as_ref().and_then(|d| d.origin.clone());
        (Verdict::Deny, d, eg.clone().unwrap_or_default())
    } else if denied(&i) {
        let d = i.as_ref().and_then(|d| d.origin.clone());
        (Verdict::Deny, d, ing.clone().unwrap_or_default())
    } else {
        let rule = i
            .as_ref()
            .and_then(|d| d.origin.clone())
            .or_else(|| e.as_ref().and_then(|d| d.origin.clone()));
        let parts: Vec<String> = [eg, ing].into_iter().flatten().collect();
        let reason = if parts.is_empty() {
            "allow: neither end is an endpoint, no policy applies".to_string()
        } else {
            parts.join("; ")
        };
        (Verdict::Allow, rule, reason)
    };
    Explanation {
        verdict,
        rule,
        reason,
        egress: e,
        ingress: i,
    }
}

/// The reference evaluator over a policy list and the known endpoints.
pub struct Evaluator<'a> {
    endpoints: BTreeMap<EndpointId, (&'a Endpoint, LabelSet)>,
    rules: Vec<NumberedRule<'a>>,
    policies: &'a [Policy],
}

impl<'a> Evaluator<'a> {
    /// An evaluator of `policies` (in rule numbering order) over `endpoints`.
    pub fn new(policies: &'a [Policy], endpoints: &'a [Endpoint]) -> Self {
        Self {
            endpoints: endpoints
                .iter()
                .map(|e| (e.id, (e, e.identity_labels())))
                .collect(),
            rules: number_rules(policies),
            policies,
        }
    }

    fn selects(
        policy: &Policy,
        spec: &crate::model::PolicySpec,
        ep: &Endpoint,
        labels: &LabelSet,
    ) -> bool {
        policy.tenant == ep.tenant && spec.endpoint_selector.matches(labels)
    }

    fn peer_matches(&self, policy: &Policy, rule: &Rule, peer: &FlowPeer) -> bool {
        let p = &rule.peers;
        if p.entities.contains(&Entity::All) {
            return true;
        }
        match peer {
            FlowPeer::Host => p.entities.contains(&Entity::Host),
            FlowPeer::World(a) => {
                p.entities.contains(&Entity::World) || p.cidrs.iter().any(|c| c.matches(*a))
            }
            FlowPeer::Endpoint(id) => match self.endpoints.get(id) {
                None => false,
                Some((ep, labels)) => p
                    .endpoints
                    .iter()
                    .any(|s| s.matches(labels) && (s.names_tenant() || ep.tenant == policy.tenant)),
            },
        }
    }

    /// Whether endpoint `id` is default deny in `dir` (None if unknown).
    pub fn enforced(&self, id: EndpointId, dir: Direction) -> Option<bool> {
        let (ep, labels) = self.endpoints.get(&id)?;
        Some(self.policies.iter().any(|p| {
            p.specs
                .iter()
                .any(|s| s.enforces(dir) && Self::selects(p, s, ep, labels))
        }))
    }

    /// The decision at endpoint `local` for a packet in direction `dir` whose peer (source on
    /// ingress, destination on egress) is `peer`, of IP protocol `proto` to destination port
    /// `dport` (0 for protocols without ports).
    pub fn decide(
        &self,
        local: EndpointId,
        dir: Direction,
        peer: &FlowPeer,
        proto: u8,
        dport: u16,
    ) -> Decision {
        let Some((ep, labels)) = self.endpoints.get(&local) else {
            return Decision::unknown();
        };
        let mut first_deny: Option<&NumberedRule<'_>> = None;
        let mut first_allow: Option<&NumberedRule<'_>> = None;
        for nr in &self.rules {
            if nr.section.direction() != dir
                || !Self::selects(nr.policy, nr.spec, ep, labels)
                || !nr.rule.matches_port(proto, dport)
                || !self.peer_matches(nr.policy, nr.rule, peer)
            {
                continue;
            }
            let slot = if nr.section.is_deny() {
                &mut first_deny
            } else {
                &mut first_allow
            };
            if slot.is_none() {
                *slot = Some(nr);
            }
        }
        if let Some(nr) = first_deny.or(first_allow) {
            return Decision {
                verdict: if nr.section.is_deny() {
                    Verdict::Deny
                } else {
                    Verdict::Allow
                },
                reason: Reason::Rule,
                rule: Some(nr.id),
                origin: Some(nr.origin.clone()),
            };
        }
        let enforced = self.enforced(local, dir).unwrap_or(false);
        let cross_tenant = match peer {
            FlowPeer::Endpoint(id) => self
                .endpoints
                .get(id)
                .is_none_or(|(p, _)| p.tenant != ep.tenant),
            FlowPeer::Host | FlowPeer::World(_) => false,
        };
        Decision::default_for(enforced, cross_tenant)
    }

    fn name(&self, id: EndpointId) -> String {
        match self.endpoints.get(&id) {
            Some((_, labels)) => format!("endpoint {} [{labels}]", id.0),
            None => format!("endpoint {}", id.0),
        }
    }

    /// Explains a packet from `from` to `to` with destination port `dport` and IP protocol
    /// `proto`: egress at `from` (if an endpoint), then ingress at `to` (if an endpoint).
    pub fn explain(&self, from: &FlowPeer, to: &FlowPeer, dport: u16, proto: u8) -> Explanation {
        let egress = match from {
            FlowPeer::Endpoint(id) => Some((
                self.name(*id),
                self.decide(*id, Direction::Egress, to, proto, dport),
            )),
            _ => None,
        };
        let ingress = match to {
            FlowPeer::Endpoint(id) => Some((
                self.name(*id),
                self.decide(*id, Direction::Ingress, from, proto, dport),
            )),
            _ => None,
        };
        combine(egress, ingress)
    }
}
