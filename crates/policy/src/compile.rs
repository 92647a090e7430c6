//! Compilation of a policy list over the known identities into the map entries of
//! [`crate::abi`], and the lookup the eBPF programs do on them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv6Addr;

use ila::Vnid;

use crate::abi::{
    CidrKey, EndpointPolicy, PolicyKey, PolicyValue, EP_F_EGRESS_ENFORCED, EP_F_INGRESS_ENFORCED,
    VERDICT_ALLOW, VERDICT_DENY, VERDICT_NONE,
};
use crate::error::CompileError;
use crate::eval::{combine, Decision, Explanation, Reason, Verdict};
use crate::identity::Identity;
use crate::labels::LabelSet;
use crate::model::{
    has_ports, number_rules, Cidr, Direction, Entity, Policy, PortKey, Rule, RuleId, RuleRef,
};

/// Size limits of the compiled maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompileLimits {
    /// Most entries in the `POLICY` hash map.
    pub max_entries: usize,
    /// Most entries in the `POLICY_CIDR` LPM map.
    pub max_cidr_entries: usize,
}

impl Default for CompileLimits {
    /// The sizes of the maps (1 Mi identity entries, 256 Ki CIDR entries).
    fn default() -> Self {
        Self {
            max_entries: crate::abi::POLICY_MAX_ENTRIES,
            max_cidr_entries: crate::abi::POLICY_CIDR_MAX_ENTRIES,
        }
    }
}

/// The peer of a packet as the data path knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LookupPeer {
    /// An address found in the ipcache: an endpoint (with its tenant) or the host
    /// ([`Identity::HOST`], no tenant).
    Identity {
        /// The peer identity.
        identity: Identity,
        /// The peer's tenant (`None` for the host).
        tenant: Option<Vnid>,
    },
    /// An address not in the ipcache (identity [`Identity::WORLD`]).
    Address(Ipv6Addr),
}

/// The compiled form: exactly the entries the agent writes into the maps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompiledPolicy {
    /// `POLICY_EP`: endpoint identity → tenant and enforcement flags.
    pub endpoints: BTreeMap<u32, EndpointPolicy>,
    /// `POLICY`: identity-keyed entries.
    pub entries: BTreeMap<PolicyKey, PolicyValue>,
    /// `POLICY_CIDR`: prefix-keyed entries for external peers.
    pub cidr_entries: BTreeMap<CidrKey, PolicyValue>,
    /// Rule origins: rule id `n` is `rules[n - 1]`.
    pub rules: Vec<RuleRef>,
    labels: BTreeMap<u32, LabelSet>,
    /// Prefix lengths present in `cidr_entries`, longest first (to emulate LPM quickly).
    cidr_lens: Vec<u8>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Best {
    deny: Option<u32>,
    allow: Option<u32>,
}

impl Best {
    fn add(&mut self, deny: bool, id: u32) {
        let slot = if deny {
            &mut self.deny
        } else {
            &mut self.allow
        };
        *slot = Some(slot.map_or(id, |o| o.min(id)));
    }
    fn merge(&mut self, o: &Best) {
        if let Some(d) = o.deny {
            self.add(true, d);
        }
        if let Some(a) = o.allow {
            self.add(false, a);
        }
    }
    fn value(&self) -> PolicyValue {
        match (self.deny, self.allow) {
            (Some(id), _) => PolicyValue {
                verdict: VERDICT_DENY,
                pad: [0; 3],
                rule_id: id,
            },
            (None, Some(id)) => PolicyValue {
                verdict: VERDICT_ALLOW,
                pad: [0; 3],
                rule_id: id,
            },
            (None, None) => PolicyValue {
                verdict: VERDICT_NONE,
                pad: [0; 3],
                rule_id: 0,
            },
        }
    }
}

/// The map port keys of a rule (ranges expanded, `ANY` split into TCP/UDP/SCTP).
fn port_keys(rule: &Rule) -> BTreeSet<PortKey> {
    let mut out = BTreeSet::new();
    if rule.ports.is_empty() {
        out.insert(PortKey::ANY);
    }
    for pr in &rule.ports {
        for &proto in pr.protocol.numbers() {
            match pr.ports {
                None => {
                    out.insert(PortKey { proto, port: 0 });
                }
                Some((lo, hi)) => {
                    for port in lo..=hi {
                        out.insert(PortKey { proto, port });
                    }
                }
            }
        }
    }
    out
}

struct CidrContribution {
    pk: PortKey,
    cidr: Cidr,
    except: Vec<Cidr>,
    deny: bool,
    id: u32,
}

/// Compiles `policies` for every identity in `identities` (endpoint identities, each with its
/// identity labels, which carry the tenant label).
///
/// Every identity gets a `POLICY_EP` entry and, per direction, the merged entries described in
/// [`crate::abi`]. The result is deterministic.
pub fn compile(
    policies: &[Policy],
    identities: &[(Identity, LabelSet)],
    limits: &CompileLimits,
) -> Result<CompiledPolicy, CompileError> {
    let rules = number_rules(policies);
    if u32::try_from(rules.len()).is_err() {
        return Err(CompileError::TooManyRules(rules.len()));
    }
    let mut universe: Vec<(u32, &LabelSet, Vnid)> = Vec::new();
    let mut seen = BTreeSet::new();
    for (id, labels) in identities {
        if id.is_reserved() {
            return Err(CompileError::ReservedIdentity(id.0));
        }
        if !seen.insert(id.0) {
            return Err(CompileError::DuplicateIdentity(id.0));
        }
        let tenant = labels.tenant().ok_or(CompileError::NoTenant(id.0))?;
        universe.push((id.0, labels, tenant));
    }

    let mut out = CompiledPolicy {
        rules: rules.iter().map(|r| r.origin.clone()).collect(),
        labels: universe
            .iter()
            .map(|(i, l, _)| (*i, (*l).clone()))
            .collect(),
        ..CompiledPolicy::default()
    };

    for &(local, labels, tenant) in &universe {
        let selected: Vec<_> = rules
            .iter()
            .filter(|nr| nr.policy.tenant == tenant && nr.spec.endpoint_selector.matches(labels))
            .collect();
        let mut flags = 0;
        for p in policies.iter().filter(|p| p.tenant == tenant) {
            for s in p
                .specs
                .iter()
                .filter(|s| s.endpoint_selector.matches(labels))
            {
                if s.enforces(Direction::Ingress) {
                    flags |= EP_F_INGRESS_ENFORCED;
                }
                if s.enforces(Direction::Egress) {
                    flags |= EP_F_EGRESS_ENFORCED;
                }
            }
        }
        out.endpoints.insert(
            local,
            EndpointPolicy {
                vnid: tenant.get(),
                flags,
            },
        );

        for dir in Direction::ALL {
            let mut table: BTreeMap<(u32, PortKey), Best> = BTreeMap::new();
            let mut cidrs: Vec<CidrContribution> = Vec::new();
            for nr in selected.iter().filter(|nr| nr.section.direction() == dir) {
                let deny = nr.section.is_deny();
                let id = nr.id.0;
                let pks = port_keys(nr.rule);
                let peers = &nr.rule.peers;
                let mut peer_ids: Vec<u32> = universe
                    .iter()
                    .filter(|(_, pl, pt)| {
                        peers
                            .endpoints
                            .iter()
                            .any(|s| s.matches(pl) && (s.names_tenant() || *pt == nr.policy.tenant))
                    })
                    .map(|(i, _, _)| *i)
                    .collect();
                if peers.entities.contains(&Entity::Host) {
                    peer_ids.push(Identity::HOST.0);
                }
                if peers.entities.contains(&Entity::All) {
                    peer_ids.push(Identity::ANY.0);
                }
                for &p in &peer_ids {
                    for &pk in &pks {
                        table.entry((p, pk)).or_default().add(deny, id);
                    }
                }
                let mut prefixes: Vec<(Cidr, Vec<Cidr>)> = peers
                    .cidrs
                    .iter()
                    .map(|c| (c.cidr, c.except.clone()))
                    .collect();
                if peers.entities.contains(&Entity::World) || peers.entities.contains(&Entity::All)
                {
                    prefixes.push((Cidr::ALL, Vec::new()));
                }
                for (cidr, except) in prefixes {
                    for &pk in &pks {
                        cidrs.push(CidrContribution {
                            pk,
                            cidr,
                            except: except.clone(),
                            deny,
                            id,
                        });
                    }
                }
            }

            // Materialise intersections of specific-peer keys with more specific wildcard keys.
            let any_keys: Vec<PortKey> = table
                .keys()
                .filter(|(p, _)| *p == Identity::ANY.0)
                .map(|(_, k)| *k)
                .collect();
            if !any_keys.is_empty() {
                let mut by_peer: BTreeMap<u32, Vec<PortKey>> = BTreeMap::new();
                for (p, k) in table.keys().filter(|(p, _)| *p != Identity::ANY.0) {
                    by_peer.entry(*p).or_default().push(*k);
                }
                for (p, ks) in by_peer {
                    for &q in &any_keys {
                        if ks.iter().any(|k| *k != q && k.covers(q)) {
                            table.entry((p, q)).or_default();
                        }
                    }
                }
            }
            for &(p, q) in table.keys() {
                let mut b = Best::default();
                for k in PortKey::chain(q.proto, q.port) {
                    if let Some(x) = table.get(&(p, k)) {
                        b.merge(x);
                    }
                    if p != Identity::ANY.0 {
                        if let Some(x) = table.get(&(Identity::ANY.0, k)) {
                            b.merge(x);
                        }
                    }
                }
                out.entries.insert(
                    PolicyKey::new(local, p, dir.as_u8(), q.proto, q.port),
                    b.value(),
                );
                if out.entries.len() > limits.max_entries {
                    return Err(CompileError::TooManyEntries {
                        limit: limits.max_entries,
                        identity: local,
                    });
                }
            }

            // CIDR levels: every level holds every prefix of the rules that cover it.
            let levels: BTreeSet<PortKey> = cidrs.iter().map(|c| c.pk).collect();
            for level in levels {
                let relevant: Vec<&CidrContribution> =
                    cidrs.iter().filter(|c| c.pk.covers(level)).collect();
                let prefixes: BTreeSet<Cidr> = relevant
                    .iter()
                    .flat_map(|c| std::iter::once(c.cidr).chain(c.except.iter().copied()))
                    .collect();
                for x in prefixes {
                    let mut b = Best::default();
                    for c in &relevant {
                        if c.cidr.contains_prefix(x)
                            && !c.except.iter().any(|e| e.contains_prefix(x))
                        {
                            b.add(c.deny, c.id);
                        }
                    }
                    out.cidr_entries.insert(
                        CidrKey::new(
                            local,
                            dir.as_u8(),
                            level.proto,
                            level.port,
                            x.addr(),
                            x.prefix_len(),
                        ),
                        b.value(),
                    );
                    if out.cidr_entries.len() > limits.max_cidr_entries {
                        return Err(CompileError::TooManyCidrEntries {
                            limit: limits.max_cidr_entries,
                            identity: local,
                        });
                    }
                }
            }
        }
    }
    let lens: BTreeSet<u8> = out.cidr_entries.keys().map(CidrKey::cidr_len).collect();
    out.cidr_lens = lens.into_iter().rev().collect();
    Ok(out)
}

impl CompiledPolicy {
    /// The origin of a rule id.
    pub fn rule(&self, id: RuleId) -> Option<&RuleRef> {
        let i = usize::try_from(id.0).ok()?.checked_sub(1)?;
        self.rules.get(i)
    }

    /// What a `BPF_MAP_TYPE_LPM_TRIE` lookup returns for a full-length key.
    fn lpm(&self, ep: u32, dir: u8, pk: PortKey, addr: Ipv6Addr) -> Option<&PolicyValue> {
        // Only lengths that occur can match: same answer as trying 128 down to 0.
        self.cidr_lens.iter().find_map(|&len| {
            self.cidr_entries
                .get(&CidrKey::new(ep, dir, pk.proto, pk.port, addr, len))
        })
    }

    /// The decision of the data path at endpoint identity `ep` for direction `dir`, doing
    /// exactly the lookups of [`crate::abi`] in the same order.
    pub fn lookup(
        &self,
        ep: Identity,
        dir: Direction,
        peer: LookupPeer,
        proto: u8,
        dport: u16,
    ) -> Decision {
        let Some(epv) = self.endpoints.get(&ep.0) else {
            return Decision::unknown();
        };
        let d = dir.as_u8();
        let dport = if has_ports(proto) { dport } else { 0 };
        let chain = PortKey::chain(proto, dport);
        let hit = match peer {
            LookupPeer::Identity { identity, .. } => [identity.0, Identity::ANY.0]
                .into_iter()
                .flat_map(|p| chain.iter().map(move |k| (p, *k)))
                .find_map(|(p, k)| {
                    self.entries
                        .get(&PolicyKey::new(ep.0, p, d, k.proto, k.port))
                }),
            LookupPeer::Address(a) => chain.iter().find_map(|k| self.lpm(ep.0, d, *k, a)),
        };
        if let Some(v) = hit.filter(|v| v.verdict != VERDICT_NONE) {
            let id = RuleId(v.rule_id);
            return Decision {
                verdict: if v.verdict == VERDICT_DENY {
                    Verdict::Deny
                } else {
                    Verdict::Allow
                },
                reason: Reason::Rule,
                rule: Some(id),
                origin: self.rule(id).cloned(),
            };
        }
        let bit = match dir {
            Direction::Ingress => EP_F_INGRESS_ENFORCED,
            Direction::Egress => EP_F_EGRESS_ENFORCED,
        };
        let cross =
            matches!(peer, LookupPeer::Identity { tenant: Some(t), .. } if t.get() != epv.vnid);
        Decision::default_for(epv.flags & bit != 0, cross)
    }

    fn name(&self, id: Identity) -> String {
        match self.labels.get(&id.0) {
            Some(l) => format!("identity {} [{l}]", id.0),
            None => format!("identity {}", id.0),
        }
    }

    /// `ilanet policy explain` on the compiled maps: a packet from `from` to `to` with
    /// destination port `dport` and IP protocol `proto`. Egress is checked at `from` and
    /// ingress at `to` when they are endpoint identities known to this compilation.
    pub fn explain(&self, from: LookupPeer, to: LookupPeer, dport: u16, proto: u8) -> Explanation {
        let local = |p: LookupPeer| match p {
            LookupPeer::Identity { identity, .. } if self.endpoints.contains_key(&identity.0) => {
                Some(identity)
            }
            _ => None,
        };
        let egress = local(from).map(|id| {
            (
                self.name(id),
                self.lookup(id, Direction::Egress, to, proto, dport),
            )
        });
        let ingress = local(to).map(|id| {
            (
                self.name(id),
                self.lookup(id, Direction::Ingress, from, proto, dport),
            )
        });
        combine(egress, ingress)
    }
}
