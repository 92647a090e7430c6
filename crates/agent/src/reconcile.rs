//! Pure reconciliation: from the store's view and the host's local endpoints to the entries the
//! host's eBPF maps must hold, and from there to the operations that make the maps equal to it
//! (mark and sweep: everything desired is written, everything else is removed).

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv6Addr;

use dataplane::{InEntry, IpcacheEntry, OutEntry, Redirect};
use policy::abi::{CidrKey, EndpointPolicy, PolicyKey, PolicyValue};
use serde::{Deserialize, Serialize};
use store::MappingRecord;

/// An endpoint attached to this host, as the agent knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalEndpoint {
    /// Endpoint name (unique in the network).
    pub name: String,
    /// Its identifier.
    pub identifier: ila::Identifier,
    /// Its SIR address.
    pub sir_addr: Ipv6Addr,
    /// Its network namespace.
    pub netns: String,
    /// Host-side veth name.
    pub host_ifname: String,
    /// Host-side veth index (host namespace); refreshed at start.
    pub ifindex: u32,
    /// MAC of the endpoint's `eth0`.
    pub mac: [u8; 6],
    /// MAC of the host-side veth.
    pub host_mac: [u8; 6],
    /// Labels (`key=value`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Security identity of its label set (and tenant).
    #[serde(default)]
    pub identity: u32,
    /// The runtime's container id, when a runtime made the namespace (CNI); the agent then
    /// never creates or deletes the namespace itself.
    #[serde(default)]
    pub container_id: Option<String>,
    /// The endpoint's interface inside its namespace.
    #[serde(default = "default_ifname")]
    pub ifname: String,
}

fn default_ifname() -> String {
    hostnet::link::ENDPOINT_IFNAME.to_string()
}

/// The map content a host must have.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Desired {
    /// `ILA_OUT`: SIR address → entry.
    pub out: HashMap<Ipv6Addr, OutEntry>,
    /// `ILA_IN`: ILA address on the wire → entry.
    pub inbound: HashMap<Ipv6Addr, InEntry>,
    /// `ILA_IPCACHE`: every endpoint's SIR address → identity and tenant.
    pub ipcache: HashMap<Ipv6Addr, IpcacheEntry>,
    /// `ILA_ENDPOINTS`: this host's endpoints.
    pub endpoints: HashMap<Ipv6Addr, dataplane::LocalEndpoint>,
}

/// The ipcache entry of a mapping: who is behind that SIR address.
pub fn ipcache_entry(rec: &MappingRecord) -> IpcacheEntry {
    IpcacheEntry {
        identity: rec.identity,
        vnid: rec.identifier.vnid().map(|v| v.get()).unwrap_or(0),
    }
}

/// The data path's view of a local endpoint.
pub fn endpoint_entry(ep: &LocalEndpoint) -> dataplane::LocalEndpoint {
    dataplane::LocalEndpoint {
        identity: ep.identity,
        vnid: ep.identifier.vnid().map(|v| v.get()).unwrap_or(0),
        ifindex: ep.ifindex,
        flags: 0,
    }
}

/// A record that cannot be turned into map entries (logged and skipped, never fatal).
#[derive(Debug, Clone, PartialEq)]
pub struct Unusable {
    /// SIR address of the record.
    pub sir_addr: Ipv6Addr,
    /// Why.
    pub reason: String,
}

/// The out-entry of one mapping as seen from `host`.
pub fn out_entry(host: &str, rec: &MappingRecord) -> Result<OutEntry, Unusable> {
    let ila = rec.mapping().ila_address().map_err(|e| Unusable {
        sir_addr: rec.sir_address(),
        reason: e.to_string(),
    })?;
    Ok(OutEntry {
        ila,
        csum_mode: rec.mode,
        local: rec.host == host,
    })
}

/// The in-entry of one mapping, if it names an endpoint attached to this host.
pub fn in_entry(
    host: &str,
    rec: &MappingRecord,
    local: &BTreeMap<String, LocalEndpoint>,
) -> Result<Option<(Ipv6Addr, InEntry)>, Unusable> {
    if rec.host != host {
        return Ok(None);
    }
    let Some(ep) = local.get(&rec.endpoint) else {
        return Ok(None);
    };
    if ep.sir_addr != rec.sir_address() {
        return Err(Unusable {
            sir_addr: rec.sir_address(),
            reason: format!(
                "record names endpoint '{}' of this host, which has address {}",
                ep.name, ep.sir_addr
            ),
        });
    }
    let entry = out_entry(host, rec)?;
    Ok(Some((
        entry.ila,
        InEntry {
            sir: ep.sir_addr,
            ifindex: ep.ifindex,
            csum_mode: rec.mode,
            redirect: Some(Redirect {
                endpoint_mac: ep.mac,
                host_mac: ep.host_mac,
            }),
        },
    )))
}

/// Everything `host`'s maps must hold for this view of the store.
pub fn desired<'a>(
    host: &str,
    view: impl IntoIterator<Item = &'a MappingRecord>,
    local: &BTreeMap<String, LocalEndpoint>,
) -> (Desired, Vec<Unusable>) {
    let mut d = Desired::default();
    let mut bad = Vec::new();
    for rec in view {
        match out_entry(host, rec) {
            Ok(e) => {
                d.out.insert(rec.sir_address(), e);
            }
            Err(u) => {
                bad.push(u);
                continue;
            }
        }
        d.ipcache.insert(rec.sir_address(), ipcache_entry(rec));
        match in_entry(host, rec, local) {
            Ok(Some((k, v))) => {
                d.inbound.insert(k, v);
                if let Some(ep) = local.get(&rec.endpoint) {
                    d.endpoints.insert(ep.sir_addr, endpoint_entry(ep));
                }
            }
            Ok(None) => {}
            Err(u) => bad.push(u),
        }
    }
    (d, bad)
}

/// Writes and removals that turn the current map content into the desired one.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ops {
    /// Out-entries to write (new or changed).
    pub out_put: Vec<(Ipv6Addr, OutEntry)>,
    /// Out-entries to remove.
    pub out_del: Vec<Ipv6Addr>,
    /// In-entries to write.
    pub in_put: Vec<(Ipv6Addr, InEntry)>,
    /// In-entries to remove.
    pub in_del: Vec<Ipv6Addr>,
    /// Ipcache entries to write.
    pub ipcache_put: Vec<(Ipv6Addr, IpcacheEntry)>,
    /// Ipcache entries to remove.
    pub ipcache_del: Vec<Ipv6Addr>,
    /// Local endpoint entries to write.
    pub ep_put: Vec<(Ipv6Addr, dataplane::LocalEndpoint)>,
    /// Local endpoint entries to remove.
    pub ep_del: Vec<Ipv6Addr>,
}

impl Ops {
    /// Number of writes and removals.
    pub fn len(&self) -> usize {
        self.out_put.len()
            + self.out_del.len()
            + self.in_put.len()
            + self.in_del.len()
            + self.ipcache_put.len()
            + self.ipcache_del.len()
            + self.ep_put.len()
            + self.ep_del.len()
    }

    /// Whether nothing needs to change.
    pub fn is_empty(&self) -> bool {
        self.out_put.is_empty()
            && self.out_del.is_empty()
            && self.in_put.is_empty()
            && self.in_del.is_empty()
            && self.ipcache_put.is_empty()
            && self.ipcache_del.is_empty()
            && self.ep_put.is_empty()
            && self.ep_del.is_empty()
    }
}

fn diff_map<V: PartialEq + Copy>(
    desired: &HashMap<Ipv6Addr, V>,
    current: &[(Ipv6Addr, V)],
) -> (Vec<(Ipv6Addr, V)>, Vec<Ipv6Addr>) {
    let current: HashMap<Ipv6Addr, V> = current.iter().copied().collect();
    let mut put: Vec<_> = desired
        .iter()
        .filter(|(k, v)| current.get(k) != Some(v))
        .map(|(k, v)| (*k, *v))
        .collect();
    let mut del: Vec<_> = current
        .keys()
        .filter(|k| !desired.contains_key(k))
        .copied()
        .collect();
    put.sort_by_key(|(k, _)| *k);
    del.sort();
    (put, del)
}

/// The current content of the maps the agent reconciles.
#[derive(Debug, Clone, Default)]
pub struct Current {
    /// `ILA_OUT`.
    pub out: Vec<(Ipv6Addr, OutEntry)>,
    /// `ILA_IN`.
    pub inbound: Vec<(Ipv6Addr, InEntry)>,
    /// `ILA_IPCACHE`.
    pub ipcache: Vec<(Ipv6Addr, IpcacheEntry)>,
    /// `ILA_ENDPOINTS`.
    pub endpoints: Vec<(Ipv6Addr, dataplane::LocalEndpoint)>,
    /// `POLICY_EP`.
    pub policy_eps: Vec<(u32, EndpointPolicy)>,
    /// `POLICY`.
    pub policy: Vec<(PolicyKey, PolicyValue)>,
    /// `POLICY_CIDR`.
    pub cidr: Vec<(CidrKey, PolicyValue)>,
}

/// Mark and sweep: the operations that make `current` equal to `desired`.
pub fn diff(desired: &Desired, current: &Current) -> Ops {
    let (out_put, out_del) = diff_map(&desired.out, &current.out);
    let (in_put, in_del) = diff_map(&desired.inbound, &current.inbound);
    let (ipcache_put, ipcache_del) = diff_map(&desired.ipcache, &current.ipcache);
    let (ep_put, ep_del) = diff_map(&desired.endpoints, &current.endpoints);
    Ops {
        out_put,
        out_del,
        in_put,
        in_del,
        ipcache_put,
        ipcache_del,
        ep_put,
        ep_del,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ila::{ChecksumMode, Identifier, IdentifierType, Locator, SirPrefix, Vnid};

    fn rec(endpoint: &str, host: &str, virt: u32, loc: u16) -> MappingRecord {
        MappingRecord {
            endpoint: endpoint.into(),
            host: host.into(),
            sir: SirPrefix::from_addr("fd00:dead:beef::".parse().expect("addr")),
            identifier: Identifier::new_vnid(
                IdentifierType::VnidIpv6,
                Vnid::new(1).expect("vnid"),
                virt,
            ),
            locator: Locator::from_addr(Ipv6Addr::new(0x2001, 0xdb8, loc, 0, 0, 0, 0, 0)),
            mode: ChecksumMode::NeutralMap,
            identity: 300,
            labels_sha256: None,
        }
    }

    fn local_ep(r: &MappingRecord, ifindex: u32) -> LocalEndpoint {
        LocalEndpoint {
            name: r.endpoint.clone(),
            identifier: r.identifier,
            sir_addr: r.sir_address(),
            netns: format!("ns-{}", r.endpoint),
            host_ifname: "lxc1".into(),
            ifindex,
            mac: [2, 0, 0, 0, 0, 1],
            host_mac: [2, 0, 0, 0, 0, 2],
            labels: BTreeMap::new(),
            identity: 300,
            container_id: None,
            ifname: "eth0".into(),
        }
    }

    #[test]
    fn local_records_get_in_entries_and_the_local_flag() {
        let a = rec("a", "h1", 1, 1);
        let b = rec("b", "h2", 2, 2);
        let local: BTreeMap<_, _> = [("a".to_string(), local_ep(&a, 7))].into();
        let (d, bad) = desired("h1", [&a, &b], &local);
        assert!(bad.is_empty());
        assert_eq!(d.out.len(), 2);
        assert!(d.out[&a.sir_address()].local);
        assert!(!d.out[&b.sir_address()].local);
        let ila_b = d.out[&b.sir_address()].ila;
        assert_eq!(Locator::from_addr(ila_b), b.locator);
        assert_eq!(d.inbound.len(), 1);
        let (k, v) = d.inbound.iter().next().expect("one");
        assert_eq!(*k, d.out[&a.sir_address()].ila);
        assert_eq!(v.sir, a.sir_address());
        assert_eq!(v.ifindex, 7);
        // Seen from h2, nothing of a is local.
        let (d2, _) = desired("h2", [&a, &b], &BTreeMap::new());
        assert!(d2.inbound.is_empty());
        assert!(d2.out[&b.sir_address()].local);
    }

    #[test]
    fn a_moved_endpoint_loses_its_in_entry_on_the_old_host() {
        let a_old = rec("a", "h1", 1, 1);
        let local: BTreeMap<_, _> = [("a".to_string(), local_ep(&a_old, 7))].into();
        let (before, _) = desired("h1", [&a_old], &local);
        let current = Current {
            out: before.out.iter().map(|(k, v)| (*k, *v)).collect(),
            inbound: before.inbound.iter().map(|(k, v)| (*k, *v)).collect(),
            ipcache: before.ipcache.iter().map(|(k, v)| (*k, *v)).collect(),
            endpoints: before.endpoints.iter().map(|(k, v)| (*k, *v)).collect(),
            ..Current::default()
        };
        assert_eq!(current.endpoints.len(), 1, "a is a local endpoint of h1");
        let a_new = rec("a", "h2", 1, 2);
        let (after, _) = desired("h1", [&a_new], &local);
        let ops = diff(&after, &current);
        assert_eq!(ops.ep_del, vec![a_old.sir_address()], "no longer local");
        assert!(ops.ipcache_put.is_empty(), "same identity and tenant");
        assert_eq!(ops.in_del.len(), 1, "{ops:?}");
        assert!(ops.in_put.is_empty());
        assert_eq!(ops.out_put.len(), 1, "the out entry now points to h2");
        assert!(!ops.out_put[0].1.local);
        assert!(ops.out_del.is_empty());
    }

    #[test]
    fn diff_sweeps_stale_entries_and_keeps_equal_ones() {
        let a = rec("a", "h2", 1, 2);
        let b = rec("b", "h2", 2, 2);
        let (d, _) = desired("h1", [&a], &BTreeMap::new());
        let stale = out_entry("h1", &b).expect("entry");
        let ipcache: Vec<_> = d.ipcache.iter().map(|(k, v)| (*k, *v)).collect();
        let current = Current {
            out: vec![
                (a.sir_address(), d.out[&a.sir_address()]),
                (b.sir_address(), stale),
            ],
            ipcache: ipcache.clone(),
            ..Current::default()
        };
        let ops = diff(&d, &current);
        assert!(ops.out_put.is_empty());
        assert_eq!(ops.out_del, vec![b.sir_address()]);
        let ops = diff(&d, &Current::default());
        assert_eq!(ops.out_put.len(), 1);
        assert_eq!(ops.ipcache_put.len(), 1);
        let exact = Current {
            out: current.out[..1].to_vec(),
            ipcache,
            ..Current::default()
        };
        assert!(diff(&d, &exact).is_empty());
    }

    #[test]
    fn untranslatable_records_are_reported_not_fatal() {
        // Low 16 bits zero: no checksum-neutral mapping exists.
        let bad = rec("z", "h2", 0x10000, 2);
        let good = rec("g", "h2", 3, 2);
        let (d, unusable) = desired("h1", [&bad, &good], &BTreeMap::new());
        assert_eq!(unusable.len(), 1);
        assert_eq!(unusable[0].sir_addr, bad.sir_address());
        assert_eq!(d.out.len(), 1);
    }
}
