//! What the dashboard shows, read from the agents (blocking calls, made off the async runtime):
//! sites with their place and containers, the mapping table, policies and per-host counters.

use std::collections::BTreeMap;
use std::net::Ipv6Addr;
use std::path::PathBuf;
use std::time::Duration;

use agent::api::{AgentStatus, Client, MappingRow, PolicyRow};
use agent::host_config::Location;
use agent::reconcile::LocalEndpoint;
use anyhow::{Context, Result};
use serde::Serialize;

use super::UiSource;

/// Time allowed for one agent call while refreshing the view (a stuck agent must not stall it).
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// One host the dashboard watches.
#[derive(Debug, Clone)]
pub struct HostRef {
    /// Host name.
    pub name: String,
    /// Place name.
    pub display: String,
    /// Agent API socket.
    pub socket: PathBuf,
    /// Where its maps are pinned (flow events), if known.
    pub pin_dir: Option<PathBuf>,
    /// Its place on the map.
    pub location: Option<Location>,
    /// Names a lab gave its runtime's containers, by container id (the agent knows them by
    /// endpoint names such as `cni-…`).
    pub names: BTreeMap<String, String>,
}

/// The hosts of a source, resolved once at start.
pub fn hosts_of(source: &UiSource) -> Result<(String, Vec<HostRef>)> {
    match source {
        UiSource::Lab(name) => {
            let plan = lab::plan_of(name)?;
            let hosts = plan
                .hosts
                .iter()
                .enumerate()
                .map(|(i, h)| HostRef {
                    name: h.name.clone(),
                    display: h.display.clone(),
                    socket: lab::agents::socket_path(&plan.name, &h.name),
                    pin_dir: Some(lab::state::host_pin_dir(&plan.name, &h.name)),
                    location: Some(lab::state::site_location(&h.name, &h.display, i)),
                    names: h
                        .containers
                        .iter()
                        .filter_map(|c| Some((c.container_id.clone()?, c.name.clone())))
                        .collect(),
                })
                .collect();
            Ok((format!("lab {}", plan.name), hosts))
        }
        UiSource::Socket { socket, config } => {
            let status = Client::new(socket.clone())
                .with_timeout(CALL_TIMEOUT)
                .status()
                .with_context(|| format!("asking the agent at {}", socket.display()))?;
            let (pin_dir, location) = match config {
                Some(c) => (Some(c.agent.pin_dir.clone()), c.location.clone()),
                None => {
                    let p = PathBuf::from("/sys/fs/bpf/ilanet/host").join(&status.host);
                    (p.exists().then_some(p), None)
                }
            };
            Ok((
                format!("host {}", status.host),
                vec![HostRef {
                    name: status.host.clone(),
                    display: location
                        .as_ref()
                        .map_or(status.host.clone(), |l| l.name.clone()),
                    socket: socket.clone(),
                    pin_dir,
                    location,
                    names: BTreeMap::new(),
                }],
            ))
        }
    }
}

/// A tenant network.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TenantView {
    /// Name.
    pub name: String,
    /// VNID.
    pub vnid: u32,
    /// SIR prefix.
    pub sir: String,
}

/// A container (endpoint) as the map lists it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ContainerView {
    /// Name shown (the lab's name for it, else the endpoint name).
    pub name: String,
    /// The agent's endpoint name.
    pub endpoint: String,
    /// Host it runs on.
    pub site: String,
    /// Its network namespace (name under /run/netns, or a path).
    pub netns: String,
    /// The runtime's container id, if a runtime made it.
    pub container_id: Option<String>,
    /// SIR address.
    pub sir_addr: Ipv6Addr,
    /// ILA address on the wire (its host's locator + identifier, C bit per mode).
    pub ila_addr: Option<Ipv6Addr>,
    /// Tenant network name (by SIR prefix).
    pub tenant: Option<String>,
    /// Tenant VNID.
    pub vnid: Option<u32>,
    /// Policy identity.
    pub identity: u32,
    /// Labels.
    pub labels: BTreeMap<String, String>,
}

/// A site (host) on the map.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SiteView {
    /// Host name.
    pub name: String,
    /// Place name.
    pub display: String,
    /// Place on the map.
    pub location: Option<Location>,
    /// Locator prefix.
    pub locator: Option<String>,
    /// Whether the agent answered.
    pub agent_up: bool,
    /// Data-path counters (name, value).
    pub counters: Vec<(String, u64)>,
    /// Locator routes its BGP speaker learned (empty with static routing).
    pub routes: Vec<agent::routing::RouteRow>,
    /// Containers.
    pub containers: Vec<ContainerView>,
}

/// One mapping, with the hosts whose out-map holds it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MappingView {
    /// Endpoint name.
    pub endpoint: String,
    /// Host that runs it.
    pub host: String,
    /// SIR address.
    pub sir_addr: Ipv6Addr,
    /// Locator.
    pub locator: String,
    /// ILA address.
    pub ila_addr: Option<Ipv6Addr>,
    /// Checksum mode.
    pub mode: String,
    /// Hosts whose eBPF out-map holds exactly this mapping.
    pub installed_on: Vec<String>,
}

/// Everything but the flows.
#[derive(Debug, Clone, Serialize, Default, PartialEq)]
pub struct Snapshot {
    /// What is shown (`lab demo`, `host site1`).
    pub title: String,
    /// Terminals are off.
    pub read_only: bool,
    /// Tenant networks.
    pub tenants: Vec<TenantView>,
    /// Sites.
    pub sites: Vec<SiteView>,
    /// Mapping table.
    pub mappings: Vec<MappingView>,
    /// Policies in force.
    pub policies: Vec<PolicyRow>,
    /// Agents that did not answer, and why.
    pub errors: Vec<String>,
}

impl Snapshot {
    /// Name of the container with that SIR address.
    pub fn name_of(&self, sir: Ipv6Addr) -> Option<&str> {
        self.sites
            .iter()
            .flat_map(|s| s.containers.iter())
            .find(|c| c.sir_addr == sir)
            .map(|c| c.name.as_str())
    }

    /// The site whose locator (upper 64 bits) an ILA address carries.
    pub fn site_of_locator(&self, ila: Ipv6Addr) -> Option<&SiteView> {
        let upper = u128::from(ila) >> 64;
        self.sites.iter().find(|s| {
            s.locator
                .as_deref()
                .and_then(|l| l.split('/').next())
                .and_then(|a| a.parse::<Ipv6Addr>().ok())
                .is_some_and(|a| u128::from(a) >> 64 == upper)
        })
    }
}

/// Reads the whole view from the agents. An agent that does not answer is listed in `errors`
/// and its site shown without containers; the rest still shows.
pub fn collect(title: &str, hosts: &[HostRef], read_only: bool) -> Snapshot {
    let mut snap = Snapshot {
        title: title.to_string(),
        read_only,
        ..Snapshot::default()
    };
    let mut mappings: BTreeMap<Ipv6Addr, MappingView> = BTreeMap::new();
    for h in hosts {
        let client = Client::new(h.socket.clone()).with_timeout(CALL_TIMEOUT);
        let status: Result<AgentStatus, _> = client.status();
        let mut site = SiteView {
            name: h.name.clone(),
            display: h.display.clone(),
            location: h.location.clone(),
            locator: None,
            agent_up: false,
            counters: Vec::new(),
            routes: Vec::new(),
            containers: Vec::new(),
        };
        let status = match status {
            Ok(s) => s,
            Err(e) => {
                snap.errors.push(format!("host {}: {e}", h.name));
                snap.sites.push(site);
                continue;
            }
        };
        site.agent_up = true;
        site.locator = Some(status.locator.clone());
        site.counters = status
            .counters
            .as_ref()
            .map(|c| {
                c.pairs()
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect()
            })
            .unwrap_or_default();
        for t in &status.tenants {
            let tv = TenantView {
                name: t.name.clone(),
                vnid: t.vnid.get(),
                sir: t.sir.to_string(),
            };
            if !snap.tenants.contains(&tv) {
                snap.tenants.push(tv);
            }
        }
        let rows: Vec<MappingRow> = client.mappings().unwrap_or_else(|e| {
            snap.errors.push(format!("host {} mappings: {e}", h.name));
            Vec::new()
        });
        match client.request::<Vec<LocalEndpoint>>(&agent::api::Request::EndpointList) {
            Ok(eps) => {
                site.containers = eps
                    .into_iter()
                    .map(|ep| {
                        let tenant = status.tenants.iter().find(|t| t.sir.contains(ep.sir_addr));
                        let ila_addr = rows
                            .iter()
                            .find(|r| r.sir_addr == ep.sir_addr)
                            .and_then(|r| r.ila_addr);
                        let name = ep
                            .container_id
                            .as_ref()
                            .and_then(|id| h.names.get(id))
                            .cloned()
                            .unwrap_or_else(|| ep.name.clone());
                        ContainerView {
                            name,
                            endpoint: ep.name,
                            site: h.name.clone(),
                            netns: ep.netns,
                            container_id: ep.container_id,
                            sir_addr: ep.sir_addr,
                            ila_addr,
                            tenant: tenant.map(|t| t.name.clone()),
                            vnid: tenant.map(|t| t.vnid.get()),
                            identity: ep.identity,
                            labels: ep.labels,
                        }
                    })
                    .collect();
                site.containers.sort_by(|a, b| a.name.cmp(&b.name));
            }
            Err(e) => snap.errors.push(format!("host {} endpoints: {e}", h.name)),
        }
        for r in rows {
            let m = mappings.entry(r.sir_addr).or_insert_with(|| MappingView {
                endpoint: r.endpoint.clone(),
                host: r.host.clone(),
                sir_addr: r.sir_addr,
                locator: r.locator.clone(),
                ila_addr: r.ila_addr,
                mode: r.mode.clone(),
                installed_on: Vec::new(),
            });
            if r.installed {
                m.installed_on.push(h.name.clone());
            }
        }
        // An agent without a BGP speaker refuses; its locators are routed statically.
        site.routes = client.bgp_routes().unwrap_or_default();
        if snap.policies.is_empty() {
            snap.policies = client.policy_list().unwrap_or_default();
        }
        snap.sites.push(site);
    }
    snap.mappings = mappings.into_values().collect();
    snap
}
