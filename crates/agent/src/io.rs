//! The shell's two narrow doors to the host — the eBPF maps and the endpoint plumbing — each
//! with a kernel implementation and an in-memory one (agents without root, in tests and in
//! the multi-agent harness).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv6Addr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dataplane::{
    Counters, DataplaneError, HostDataplane, InEntry, IpcacheEntry, OutEntry, ProgramKind,
};
use policy::abi::{CidrKey, EndpointPolicy, PolicyKey, PolicyValue};

use crate::core::{MapOps, PendingEndpoint};
use crate::endpoint::{self, Sandbox};
use crate::reconcile::{Current, LocalEndpoint, Ops};
use crate::{lock, AgentConfig, AgentError};

/// One of the mapping maps (for fill metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MappingMap {
    /// `ILA_OUT`.
    Out,
    /// `ILA_IN`.
    In,
    /// `ILA_ENDPOINTS`.
    Endpoints,
    /// `ILA_IPCACHE`.
    Ipcache,
}

/// The maps of one host, as the agent reads and writes them.
pub trait Maps: Send {
    /// Everything a full resync compares against.
    fn current(&mut self) -> Result<Current, DataplaneError>;
    /// Applies operations: policy in its one order, then mappings (writes before removals, so
    /// a moved entry never leaves a gap).
    fn apply(&mut self, ops: &MapOps) -> Result<(), DataplaneError>;
    /// The out-map.
    fn out_entries(&mut self) -> Result<Vec<(Ipv6Addr, OutEntry)>, DataplaneError>;
    /// One out-entry.
    fn get_out(&mut self, sir: Ipv6Addr) -> Result<Option<OutEntry>, DataplaneError>;
    /// Entries in one mapping map.
    fn fill(&mut self, map: MappingMap) -> Result<usize, DataplaneError>;
    /// Data path counters.
    fn counters(&mut self) -> Result<Counters, DataplaneError>;
    /// Removes conntrack entries idle this long; how many.
    fn expire_conntrack(&mut self, idle: Duration) -> Result<usize, DataplaneError>;
}

/// Endpoint plumbing: namespaces, veths, addresses, routes, program attachment.
pub trait Plumbing: Send + Sync {
    /// Attaches from-wire to the host's uplink.
    fn attach_uplink(&self) -> Result<(), AgentError>;
    /// Makes an endpoint (nothing stays if it fails).
    fn create(&self, req: &CreateEndpoint) -> Result<LocalEndpoint, AgentError>;
    /// Removes an endpoint's plumbing (a runtime's namespace is left to the runtime).
    fn destroy(&self, ep: &LocalEndpoint) -> Result<(), AgentError>;
    /// Verifies an endpoint's plumbing.
    fn check(&self, ep: &LocalEndpoint) -> Result<(), AgentError>;
    /// An endpoint recorded before a restart: whether it is still there (its ifindex refreshed
    /// and its program re-attached).
    fn revalidate(&self, ep: &mut LocalEndpoint) -> Result<bool, AgentError>;
    /// Removes what is left of a recorded endpoint that is gone.
    fn forget(&self, ep: &LocalEndpoint);
    /// Removes what a creation cut short by a crash made.
    fn remove_unfinished(&self, p: &PendingEndpoint);
}

/// What [`Plumbing::create`] makes.
#[derive(Debug, Clone)]
pub struct CreateEndpoint {
    /// Endpoint name.
    pub name: String,
    /// Whose namespace.
    pub sandbox: Sandbox,
    /// Its identifier.
    pub identifier: ila::Identifier,
    /// Its SIR address.
    pub sir_addr: Ipv6Addr,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Policy identity of the labels.
    pub identity: u32,
}

// ---- kernel ----

/// The host's pinned eBPF maps.
pub struct KernelMaps(pub Arc<Mutex<HostDataplane>>);

/// Applies mapping operations to real maps: writes before removals.
fn apply_mappings(maps: &mut dataplane::HostMaps, ops: &Ops) -> Result<(), DataplaneError> {
    for (k, v) in &ops.ipcache_put {
        maps.insert_ipcache(*k, v)?;
    }
    for (k, v) in &ops.ep_put {
        maps.insert_endpoint(*k, v)?;
    }
    for (k, v) in &ops.out_put {
        maps.insert_out(*k, v)?;
    }
    for (k, v) in &ops.in_put {
        maps.insert_in(*k, v)?;
    }
    for k in &ops.out_del {
        maps.remove_out(*k)?;
    }
    for k in &ops.in_del {
        maps.remove_in(*k)?;
    }
    for k in &ops.ep_del {
        maps.remove_endpoint(*k)?;
    }
    for k in &ops.ipcache_del {
        maps.remove_ipcache(*k)?;
    }
    Ok(())
}

/// Reads everything the mapping reconciliation compares against.
pub fn read_current(maps: &dataplane::HostMaps) -> Result<Current, DataplaneError> {
    Ok(Current {
        out: maps.out_entries()?,
        inbound: maps.in_entries()?,
        ipcache: maps.ipcache()?,
        endpoints: maps.endpoints()?,
        policy_eps: maps.policy_eps()?,
        policy: maps.policy_entries()?,
        cidr: maps.cidr_entries()?,
    })
}

/// Applies mapping and policy operations to real maps (the agent's one write path; the
/// convergence benchmark uses it too).
pub fn write_ops(maps: &mut dataplane::HostMaps, ops: &MapOps) -> Result<(), DataplaneError> {
    maps.apply_policy(&ops.policy)?;
    apply_mappings(maps, &ops.mappings)
}

impl Maps for KernelMaps {
    fn current(&mut self) -> Result<Current, DataplaneError> {
        read_current(lock(&self.0).maps())
    }

    fn apply(&mut self, ops: &MapOps) -> Result<(), DataplaneError> {
        write_ops(lock(&self.0).maps(), ops)
    }

    fn out_entries(&mut self) -> Result<Vec<(Ipv6Addr, OutEntry)>, DataplaneError> {
        lock(&self.0).maps().out_entries()
    }

    fn get_out(&mut self, sir: Ipv6Addr) -> Result<Option<OutEntry>, DataplaneError> {
        lock(&self.0).maps().get_out(sir)
    }

    fn fill(&mut self, map: MappingMap) -> Result<usize, DataplaneError> {
        let mut dp = lock(&self.0);
        let m = dp.maps();
        match map {
            MappingMap::Out => m.out_entries().map(|v| v.len()),
            MappingMap::In => m.in_entries().map(|v| v.len()),
            MappingMap::Endpoints => m.endpoints().map(|v| v.len()),
            MappingMap::Ipcache => m.ipcache().map(|v| v.len()),
        }
    }

    fn counters(&mut self) -> Result<Counters, DataplaneError> {
        lock(&self.0).maps().counters()
    }

    fn expire_conntrack(&mut self, idle: Duration) -> Result<usize, DataplaneError> {
        lock(&self.0).maps().expire_conntrack(idle)
    }
}

/// Plumbing with netlink and setns in the host's namespaces.
pub struct KernelPlumbing {
    /// The agent's configuration (host namespace, pins, prefixes).
    pub cfg: AgentConfig,
    /// The data path (programs are attached to new veths).
    pub dp: Arc<Mutex<HostDataplane>>,
}

impl Plumbing for KernelPlumbing {
    fn attach_uplink(&self) -> Result<(), AgentError> {
        hostnet::netns::run_in(&self.cfg.host_netns, || {
            lock(&self.dp)
                .attach(ProgramKind::FromWire, &self.cfg.uplink)
                .map_err(AgentError::from)
        })
    }

    fn create(&self, r: &CreateEndpoint) -> Result<LocalEndpoint, AgentError> {
        endpoint::create(
            &self.cfg,
            &self.dp,
            &r.name,
            &r.sandbox,
            r.identifier,
            r.sir_addr,
            r.labels.clone(),
            r.identity,
        )
    }

    fn destroy(&self, ep: &LocalEndpoint) -> Result<(), AgentError> {
        endpoint::destroy(&self.cfg, ep)
    }

    fn check(&self, ep: &LocalEndpoint) -> Result<(), AgentError> {
        endpoint::check(&self.cfg, ep)
    }

    fn revalidate(&self, ep: &mut LocalEndpoint) -> Result<bool, AgentError> {
        if !endpoint::revalidate(&self.cfg, ep) {
            return Ok(false);
        }
        // Re-attach: the program may be a newer build; the pinned link is updated in place.
        hostnet::netns::run_in(&self.cfg.host_netns, || {
            lock(&self.dp)
                .attach(ProgramKind::FromContainer, &ep.host_ifname)
                .map_err(AgentError::from)
        })?;
        Ok(true)
    }

    fn forget(&self, ep: &LocalEndpoint) {
        endpoint::forget(&self.cfg, ep)
    }

    fn remove_unfinished(&self, p: &PendingEndpoint) {
        endpoint::remove_unfinished(&self.cfg, p)
    }
}

// ---- in memory ----

/// Maps held in memory: what an agent without root writes, and what tests read back.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct MemoryMaps {
    /// `ILA_OUT`.
    pub out: HashMap<Ipv6Addr, OutEntry>,
    /// `ILA_IN`.
    pub inbound: HashMap<Ipv6Addr, InEntry>,
    /// `ILA_IPCACHE`.
    pub ipcache: HashMap<Ipv6Addr, IpcacheEntry>,
    /// `ILA_ENDPOINTS`.
    pub endpoints: HashMap<Ipv6Addr, dataplane::LocalEndpoint>,
    /// `POLICY_EP`.
    pub policy_eps: BTreeMap<u32, EndpointPolicy>,
    /// `POLICY`.
    pub policy: BTreeMap<PolicyKey, PolicyValue>,
    /// `POLICY_CIDR`.
    pub cidr: BTreeMap<CidrKey, PolicyValue>,
}

/// A handle on [`MemoryMaps`] shared between an agent and the test that watches it.
#[derive(Debug, Default, Clone)]
pub struct SharedMemoryMaps(pub Arc<Mutex<MemoryMaps>>);

impl SharedMemoryMaps {
    /// A copy of the maps' content now.
    pub fn snapshot(&self) -> MemoryMaps {
        lock(&self.0).clone()
    }
}

impl MemoryMaps {
    fn apply(&mut self, ops: &MapOps) {
        use crate::policy_sync::PolicyWrite as W;
        for w in ops.policy.ordered() {
            match w {
                W::Rule(k, v) => {
                    self.policy.insert(k, v);
                }
                W::Cidr(k, v) => {
                    self.cidr.insert(k, v);
                }
                W::Endpoint(k, v) => {
                    self.policy_eps.insert(k, v);
                }
                W::RemoveRule(k) => {
                    self.policy.remove(&k);
                }
                W::RemoveCidr(k) => {
                    self.cidr.remove(&k);
                }
                W::RemoveEndpoint(k) => {
                    self.policy_eps.remove(&k);
                }
            }
        }
        let m = &ops.mappings;
        self.ipcache.extend(m.ipcache_put.iter().copied());
        self.endpoints.extend(m.ep_put.iter().copied());
        self.out.extend(m.out_put.iter().copied());
        self.inbound.extend(m.in_put.iter().copied());
        for k in &m.out_del {
            self.out.remove(k);
        }
        for k in &m.in_del {
            self.inbound.remove(k);
        }
        for k in &m.ep_del {
            self.endpoints.remove(k);
        }
        for k in &m.ipcache_del {
            self.ipcache.remove(k);
        }
    }
}

impl Maps for SharedMemoryMaps {
    fn current(&mut self) -> Result<Current, DataplaneError> {
        let m = lock(&self.0);
        Ok(Current {
            out: m.out.iter().map(|(k, v)| (*k, *v)).collect(),
            inbound: m.inbound.iter().map(|(k, v)| (*k, *v)).collect(),
            ipcache: m.ipcache.iter().map(|(k, v)| (*k, *v)).collect(),
            endpoints: m.endpoints.iter().map(|(k, v)| (*k, *v)).collect(),
            policy_eps: m.policy_eps.iter().map(|(k, v)| (*k, *v)).collect(),
            policy: m.policy.iter().map(|(k, v)| (*k, *v)).collect(),
            cidr: m.cidr.iter().map(|(k, v)| (*k, *v)).collect(),
        })
    }

    fn apply(&mut self, ops: &MapOps) -> Result<(), DataplaneError> {
        lock(&self.0).apply(ops);
        Ok(())
    }

    fn out_entries(&mut self) -> Result<Vec<(Ipv6Addr, OutEntry)>, DataplaneError> {
        Ok(lock(&self.0).out.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn get_out(&mut self, sir: Ipv6Addr) -> Result<Option<OutEntry>, DataplaneError> {
        Ok(lock(&self.0).out.get(&sir).copied())
    }

    fn fill(&mut self, map: MappingMap) -> Result<usize, DataplaneError> {
        let m = lock(&self.0);
        Ok(match map {
            MappingMap::Out => m.out.len(),
            MappingMap::In => m.inbound.len(),
            MappingMap::Endpoints => m.endpoints.len(),
            MappingMap::Ipcache => m.ipcache.len(),
        })
    }

    fn counters(&mut self) -> Result<Counters, DataplaneError> {
        Ok(Counters::default())
    }

    fn expire_conntrack(&mut self, _idle: Duration) -> Result<usize, DataplaneError> {
        Ok(0)
    }
}

/// Plumbing that only keeps books: namespaces and host-side veths that "exist". A runtime's
/// namespace must be made to exist first ([`MemoryPlumbing::add_runtime_netns`]), as a real
/// runtime would.
#[derive(Debug, Default)]
pub struct MemoryPlumbing {
    netns: Mutex<BTreeSet<String>>,
    veths: Mutex<BTreeSet<String>>,
    next_ifindex: AtomicU32,
    /// Makes every following `create` fail (as a netlink error would).
    pub fail_create: AtomicBool,
}

impl MemoryPlumbing {
    /// Makes a runtime's namespace exist.
    pub fn add_runtime_netns(&self, path: &str) {
        lock(&self.netns).insert(path.to_string());
    }

    /// Makes a namespace disappear (a runtime removed it, or it was deleted by hand).
    pub fn remove_netns(&self, path: &str) {
        lock(&self.netns).remove(path);
    }

    /// Namespaces that exist.
    pub fn netns(&self) -> BTreeSet<String> {
        lock(&self.netns).clone()
    }

    /// Host-side veths that exist.
    pub fn veths(&self) -> BTreeSet<String> {
        lock(&self.veths).clone()
    }
}

impl Plumbing for MemoryPlumbing {
    fn attach_uplink(&self) -> Result<(), AgentError> {
        Ok(())
    }

    fn create(&self, r: &CreateEndpoint) -> Result<LocalEndpoint, AgentError> {
        if self.fail_create.load(Ordering::SeqCst) {
            return Err(AgentError::Internal(format!(
                "endpoint '{}': plumbing failed (injected)",
                r.name
            )));
        }
        let host_ifname = endpoint::host_ifname(&r.name);
        let (netns, ifname, container_id) = match &r.sandbox {
            Sandbox::Own => (format!("mem-{}", r.name), "eth0".to_string(), None),
            Sandbox::Runtime {
                netns,
                ifname,
                container_id,
            } => {
                if !lock(&self.netns).contains(netns) {
                    return Err(AgentError::Invalid(format!(
                        "network namespace {netns} does not exist"
                    )));
                }
                (netns.clone(), ifname.clone(), Some(container_id.clone()))
            }
        };
        if !lock(&self.veths).insert(host_ifname.clone()) {
            return Err(AgentError::Conflict(format!(
                "host-side veth {host_ifname} exists already"
            )));
        }
        if container_id.is_none() {
            lock(&self.netns).insert(netns.clone());
        }
        let (mac, host_mac) = endpoint::macs(&r.name);
        Ok(LocalEndpoint {
            name: r.name.clone(),
            identifier: r.identifier,
            sir_addr: r.sir_addr,
            netns,
            host_ifname,
            ifindex: 100 + self.next_ifindex.fetch_add(1, Ordering::SeqCst),
            mac,
            host_mac,
            labels: r.labels.clone(),
            identity: r.identity,
            container_id,
            ifname,
        })
    }

    fn destroy(&self, ep: &LocalEndpoint) -> Result<(), AgentError> {
        lock(&self.veths).remove(&ep.host_ifname);
        if ep.container_id.is_none() {
            lock(&self.netns).remove(&ep.netns);
        }
        Ok(())
    }

    fn check(&self, ep: &LocalEndpoint) -> Result<(), AgentError> {
        if !lock(&self.netns).contains(&ep.netns) {
            return Err(AgentError::Invalid(format!(
                "endpoint '{}': namespace {} is gone",
                ep.name, ep.netns
            )));
        }
        if !lock(&self.veths).contains(&ep.host_ifname) {
            return Err(AgentError::Invalid(format!(
                "endpoint '{}': host-side veth {} is gone",
                ep.name, ep.host_ifname
            )));
        }
        Ok(())
    }

    fn revalidate(&self, ep: &mut LocalEndpoint) -> Result<bool, AgentError> {
        Ok(lock(&self.netns).contains(&ep.netns) && lock(&self.veths).contains(&ep.host_ifname))
    }

    fn forget(&self, ep: &LocalEndpoint) {
        lock(&self.veths).remove(&ep.host_ifname);
    }

    fn remove_unfinished(&self, p: &PendingEndpoint) {
        lock(&self.veths).remove(&p.host_ifname);
        if p.owns_netns {
            lock(&self.netns).remove(&p.netns);
        }
    }
}
