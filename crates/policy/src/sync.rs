//! Policy map changes: the difference between two compilations (or a compilation and the maps
//! as read), and the one order in which every policy change is written.

use std::collections::BTreeMap;

use crate::abi::{CidrKey, EndpointPolicy, PolicyKey, PolicyValue};
use crate::CompiledPolicy;

/// Map writes and removals that make the policy maps equal to the compilation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PolicyOps {
    /// `POLICY_EP` writes.
    pub ep_put: Vec<(u32, EndpointPolicy)>,
    /// `POLICY_EP` removals.
    pub ep_del: Vec<u32>,
    /// `POLICY` writes.
    pub put: Vec<(PolicyKey, PolicyValue)>,
    /// `POLICY` removals.
    pub del: Vec<PolicyKey>,
    /// `POLICY_CIDR` writes.
    pub cidr_put: Vec<(CidrKey, PolicyValue)>,
    /// `POLICY_CIDR` removals.
    pub cidr_del: Vec<CidrKey>,
}

impl PolicyOps {
    /// Number of writes and removals.
    pub fn len(&self) -> usize {
        self.ep_put.len()
            + self.ep_del.len()
            + self.put.len()
            + self.del.len()
            + self.cidr_put.len()
            + self.cidr_del.len()
    }

    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One write or removal of [`PolicyOps`], in the order it is applied to the maps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PolicyWrite {
    /// Write a `POLICY` entry.
    Rule(PolicyKey, PolicyValue),
    /// Write a `POLICY_CIDR` entry.
    Cidr(CidrKey, PolicyValue),
    /// Write a `POLICY_EP` entry.
    Endpoint(u32, EndpointPolicy),
    /// Remove a `POLICY` entry.
    RemoveRule(PolicyKey),
    /// Remove a `POLICY_CIDR` entry.
    RemoveCidr(CidrKey),
    /// Remove a `POLICY_EP` entry.
    RemoveEndpoint(u32),
}

impl PolicyOps {
    /// The one order every policy change is written in: rules, then endpoint entries, then
    /// rule removals, then endpoint removals. An endpoint entry that starts enforcing a direction
    /// is written only once its allow rules are in, and one that stops enforcing is written
    /// before its rules go, so a packet never meets a state that denies more than both the old
    /// and the new policy.
    pub fn ordered(&self) -> Vec<PolicyWrite> {
        let mut w = Vec::with_capacity(self.len());
        w.extend(self.put.iter().map(|(k, v)| PolicyWrite::Rule(*k, *v)));
        w.extend(self.cidr_put.iter().map(|(k, v)| PolicyWrite::Cidr(*k, *v)));
        w.extend(
            self.ep_put
                .iter()
                .map(|(k, v)| PolicyWrite::Endpoint(*k, *v)),
        );
        w.extend(self.del.iter().map(|k| PolicyWrite::RemoveRule(*k)));
        w.extend(self.cidr_del.iter().map(|k| PolicyWrite::RemoveCidr(*k)));
        w.extend(self.ep_del.iter().map(|k| PolicyWrite::RemoveEndpoint(*k)));
        w
    }
}

fn diff_maps<K: Ord + Copy, V: PartialEq + Copy>(
    desired: &BTreeMap<K, V>,
    cur: &BTreeMap<K, V>,
) -> (Vec<(K, V)>, Vec<K>) {
    let put = desired
        .iter()
        .filter(|(k, v)| cur.get(k) != Some(v))
        .map(|(k, v)| (*k, *v))
        .collect();
    let del = cur
        .keys()
        .filter(|k| !desired.contains_key(k))
        .copied()
        .collect();
    (put, del)
}

/// What to write and remove so that maps holding `old` hold `new`.
pub fn diff_compiled(new: &CompiledPolicy, old: &CompiledPolicy) -> PolicyOps {
    let (ep_put, ep_del) = diff_maps(&new.endpoints, &old.endpoints);
    let (put, del) = diff_maps(&new.entries, &old.entries);
    let (cidr_put, cidr_del) = diff_maps(&new.cidr_entries, &old.cidr_entries);
    PolicyOps {
        ep_put,
        ep_del,
        put,
        del,
        cidr_put,
        cidr_del,
    }
}

/// What to write and remove so that maps whose content was read as `cur_*` hold `new`.
pub fn against_current(
    new: &CompiledPolicy,
    cur_ep: &[(u32, EndpointPolicy)],
    cur: &[(PolicyKey, PolicyValue)],
    cur_cidr: &[(CidrKey, PolicyValue)],
) -> PolicyOps {
    let mut old = CompiledPolicy::default();
    old.endpoints = cur_ep.iter().copied().collect();
    old.entries = cur.iter().copied().collect();
    old.cidr_entries = cur_cidr.iter().copied().collect();
    diff_compiled(new, &old)
}
