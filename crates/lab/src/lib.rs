//! The lab: a testbed of container hosts in network namespaces on an IPv6 underlay, with the ILA
//! programs attached. Used by `ilanet lab`, the demo, the tests and the benchmarks.
//!
//! Layout of a lab named `L`: a router namespace `L-underlay` joined to every host namespace
//! `L-<host>` by a veth (`to-<host>` ↔ `uplink`); each host has containers `L-<host>-<n>`
//! attached by a veth (`lxc<n>` ↔ `eth0`). Every host routes its locator /64 through the router;
//! the router learns where each locator lives over BGP from the hosts' agents (see [`routing`])
//! or, with static routing, from routes the lab installs.

pub mod agents;
mod modes;
pub mod plan;
pub mod podman;
pub mod probe;
pub mod routing;
pub mod state;

use std::net::Ipv6Addr;
use std::path::PathBuf;

use dataplane::{Counters, HostMaps};
use serde::Serialize;

use crate::plan::{ContainerPlan, HostPlan, Mode, Plan, Runtime, UPLINK_IFNAME};
use crate::state::{LabState, Phase};
use hostnet::link::{EndpointLink, Netlink};
pub use hostnet::{link, netns};

pub use modes::cmd::{package_of, require};
pub use modes::evpn;
pub use modes::swarm::{set_swarm_rules, SwarmRules, LISTING9_PORT};
pub use modes::tune::set_mtu;
pub use plan::LabSpec;

/// What can go wrong building, inspecting or removing a lab.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// The request itself is wrong.
    #[error("{0}")]
    Invalid(String),
    /// The lab needs root.
    #[error("the lab needs root (network namespaces and eBPF need CAP_SYS_ADMIN, CAP_NET_ADMIN and CAP_BPF); run it with sudo")]
    NotRoot,
    /// A lab of this name is already up.
    #[error(
        "lab '{lab}' is already up (record {record}); run `ilanet lab down --name {lab}` first"
    )]
    AlreadyUp {
        /// Lab name.
        lab: String,
        /// Its record.
        record: PathBuf,
    },
    /// A namespace with a planned name exists and is not the lab's.
    #[error("network namespace '{0}' already exists and does not belong to this lab; remove it (ip netns del) or choose another --name")]
    NetnsExists(String),
    /// The lab's on-disk record is unreadable.
    #[error("lab record {path} is unreadable: {reason}")]
    Record {
        /// Record path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A system call failed.
    #[error("{what}: {source}")]
    Os {
        /// What was being done.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Namespaces, links or routes.
    #[error(transparent)]
    Net(#[from] hostnet::NetError),
    /// The eBPF data plane failed.
    #[error("data plane of host '{host}': {source}")]
    Dataplane {
        /// Host name.
        host: String,
        /// The data plane error.
        source: dataplane::DataplaneError,
    },
    /// Address arithmetic failed.
    #[error(transparent)]
    Ila(#[from] ila::IlaError),
    /// An agent failed or refused.
    #[error("agent: {0}")]
    Agent(String),
    /// The lab's store failed.
    #[error("store: {0}")]
    Store(String),
    /// A probe did not get through.
    #[error("{0}")]
    Unreachable(String),
}

fn dp_err(host: &str) -> impl FnOnce(dataplane::DataplaneError) -> LabError + '_ {
    move |source| LabError::Dataplane {
        host: host.to_string(),
        source,
    }
}

fn require_root() -> Result<(), LabError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(LabError::NotRoot);
    }
    Ok(())
}

/// Builds a lab. On any failure everything built so far is removed again.
pub fn up(spec: &LabSpec) -> Result<Plan, LabError> {
    let plan = Plan::new(spec)?;
    require_root()?;
    if let Some(clash) = plan.netns_names().iter().find(|n| netns::exists(n)) {
        // Checked before claiming so a clash leaves no record behind.
        if LabState::load(&plan.name)?.is_none() {
            return Err(LabError::NetnsExists(clash.clone()));
        }
    }
    let mut state = LabState::claim(&plan)?;
    match build(&mut state, spec) {
        Ok(()) => {
            state.phase = Phase::Up;
            state.save()?;
            Ok(plan)
        }
        Err(e) => {
            // The logs stay: the error points at them.
            if let Err(cleanup) = teardown(&state, true) {
                log::error!("cleaning up after a failed lab up: {cleanup}");
            }
            Err(e)
        }
    }
}

fn build(state: &mut LabState, spec: &LabSpec) -> Result<(), LabError> {
    let plan = state.plan.clone();
    dataplane::ensure_bpffs().map_err(dp_err("-"))?;
    // Record each namespace before creating it, so a crash in between cannot leak it; drop the
    // record again if creation fails (the name may belong to someone else).
    for name in plan.lab_netns() {
        state.created_netns.push(name.clone());
        state.save()?;
        if let Err(e) = netns::create(&name) {
            state.created_netns.pop();
            state.save()?;
            return Err(e.into());
        }
    }
    let nl = Netlink::new()?;
    configure_router(&nl, &plan)?;
    match plan.mode {
        Mode::Ila => {
            for host in &plan.hosts {
                build_underlay(&nl, &plan, host)?;
            }
            // The router's daemon first: the agents' first connection then finds it.
            routing::start(state)?;
            // The agents attach the programs, create the containers and distribute the
            // mappings, exactly as they would on real hosts.
            let binary = match &spec.agent_binary {
                Some(b) => b.clone(),
                None => std::env::current_exe().map_err(|source| LabError::Os {
                    what: "finding the ilanet executable".into(),
                    source,
                })?,
            };
            agents::start(state, &binary, spec.lease_ttl, spec.insecure_store)?;
            match plan.runtime {
                Runtime::Agent => agents::create_planned_endpoints(&plan)?,
                Runtime::Podman => {
                    let plugin = match &spec.cni_plugin {
                        Some(p) => p.clone(),
                        None => podman::plugin_beside(&binary),
                    };
                    // Records the addresses the agents gave the containers in the plan.
                    podman::create_containers(state, &plugin)?;
                }
            }
            agents::wait_converged(&state.plan)?;
            routing::wait_converged(&state.plan, routing::CONVERGE_TIMEOUT)
        }
        Mode::Native => modes::native::build(&nl, &plan),
        Mode::Swarm => modes::swarm::build(&nl, &plan),
        Mode::Evpn => {
            let binary = match &spec.agent_binary {
                Some(b) => b.clone(),
                None => std::env::current_exe().map_err(|source| LabError::Os {
                    what: "finding the ilanet executable".into(),
                    source,
                })?,
            };
            modes::evpn::build(&nl, state, &binary)
        }
    }
}

pub(crate) fn base_sysctls(ns: &str, forwarding: bool) -> Result<(), LabError> {
    netns::run_in(ns, || {
        // Addresses are planned to be unique: skip duplicate address detection (it would hold
        // every new address tentative for a second).
        netns::sysctl("net/ipv6/conf/all/accept_dad", "0")?;
        netns::sysctl("net/ipv6/conf/default/accept_dad", "0")?;
        if forwarding {
            netns::sysctl("net/ipv6/conf/all/forwarding", "1")?;
        }
        Ok(())
    })
}

fn configure_router(nl: &Netlink, plan: &Plan) -> Result<(), LabError> {
    base_sysctls(&plan.router_netns, true)?;
    Ok(nl.set_up(&plan.router_netns, "lo")?)
}

/// Host namespace basics and its link to the underlay router, with routes both ways for the
/// host's locator /64.
pub(crate) fn build_underlay(nl: &Netlink, plan: &Plan, host: &HostPlan) -> Result<(), LabError> {
    let rtr = &plan.router_netns;
    base_sysctls(&host.netns, true)?;
    nl.set_up(&host.netns, "lo")?;
    let n = host.locator.0.to_be_bytes()[5];
    nl.add_veth(
        rtr,
        &host.router_ifname,
        [0x02, 0x1a, 0xff, n, 0, 1],
        &host.netns,
        UPLINK_IFNAME,
        [0x02, 0x1a, 0xff, n, 0, 2],
    )?;
    nl.add_addr(rtr, &host.router_ifname, host.router_addr, 64)?;
    nl.add_addr(&host.netns, UPLINK_IFNAME, host.uplink_addr, 64)?;
    if routing::router_protocol(plan.routing).is_none() {
        let loc = host.locator.to_addr();
        nl.add_route(rtr, loc, 64, Some(host.uplink_addr), &host.router_ifname)?;
    }
    nl.add_route(
        &host.netns,
        Ipv6Addr::UNSPECIFIED,
        0,
        Some(host.router_addr),
        UPLINK_IFNAME,
    )?;
    Ok(())
}

/// A container's veth to its host (see [`Netlink::plumb_endpoint`]).
pub(crate) fn build_container_link(
    nl: &Netlink,
    host: &HostPlan,
    c: &ContainerPlan,
) -> Result<(), LabError> {
    nl.plumb_endpoint(&EndpointLink {
        host_netns: &host.netns,
        netns: &c.netns,
        host_ifname: &c.host_ifname,
        host_mac: c.host_mac,
        mac: c.mac,
        ifname: link::ENDPOINT_IFNAME,
        addr: c.sir_addr,
    })?;
    Ok(())
}

/// Result of [`down`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownOutcome {
    /// The lab was removed.
    Removed,
    /// There was no such lab.
    NotUp,
}

/// Removes a lab: its namespaces (only those it recorded), pinned programs and maps, and its
/// record. Idempotent.
pub fn down(lab: &str) -> Result<DownOutcome, LabError> {
    require_root()?;
    let Some(state) = LabState::load(lab)? else {
        // No record, but a crash may have left pins: those are ours by path.
        dataplane::remove_pins(&state::pin_root(lab)).map_err(dp_err("-"))?;
        return Ok(DownOutcome::NotUp);
    };
    teardown(&state, false)?;
    Ok(DownOutcome::Removed)
}

fn teardown(state: &LabState, keep_logs: bool) -> Result<(), LabError> {
    let mut first_error = None;
    // podman's containers first, while the agents still answer their CNI DEL.
    if state.plan.runtime == Runtime::Podman {
        if let Err(e) = podman::teardown(&state.plan) {
            log::error!("{e}");
            first_error.get_or_insert(e);
        }
        // A namespace podman made and could not remove (its container was being torn down
        // by a crash) goes by the path the lab recorded.
        for c in state.plan.hosts.iter().flat_map(|h| &h.containers) {
            if c.container_id.is_some() && c.netns.starts_with(netns::NETNS_DIR) {
                if let Err(e) = netns::delete(&c.netns) {
                    log::error!("{e}");
                    first_error.get_or_insert(LabError::from(e));
                }
            }
        }
    }
    // Agents next, so nothing recreates what is being removed; then the endpoints they made.
    let endpoint_netns = match agents::stop(state) {
        Ok(n) => n,
        Err(e) => {
            log::error!("{e}");
            first_error.get_or_insert(e);
            Vec::new()
        }
    };
    // The router's daemons before its namespace goes (a process would keep it alive).
    if let Err(e) = routing::stop(state) {
        log::error!("{e}");
        first_error.get_or_insert(e);
    }
    for name in &endpoint_netns {
        if let Err(e) = netns::delete(name) {
            log::error!("{e}");
            first_error.get_or_insert(LabError::from(e));
        }
    }
    // Containers and hosts, the router last: the reverse of creation.
    for name in state.created_netns.iter().rev() {
        if let Err(e) = netns::delete(name) {
            log::error!("{e}");
            first_error.get_or_insert(LabError::from(e));
        }
    }
    let pin_root = state::pin_root(&state.plan.name);
    if let Err(e) = dataplane::remove_pins(&pin_root) {
        first_error.get_or_insert(dp_err("-")(e));
    }
    // The shared parent goes with the last lab (fails harmlessly while other labs are up).
    if let Some(parent) = pin_root.parent() {
        let _ = std::fs::remove_dir(parent);
    }
    match first_error {
        // Keep the record so a later `down` can finish the job.
        Some(e) => Err(e),
        None => {
            // Sockets, agent records, store data and (unless kept) logs go with the lab.
            let dir = agents::run_dir(&state.plan.name);
            if let Err(e) = agents::remove_run_dir(&dir, keep_logs) {
                log::error!("removing {}: {e}", dir.display());
            }
            LabState::remove(&state.plan.name)
        }
    }
}

/// Loads the plan of a running lab.
pub fn plan_of(lab: &str) -> Result<Plan, LabError> {
    match LabState::load(lab)? {
        Some(s) => Ok(s.plan),
        None => Err(LabError::Invalid(format!(
            "lab '{lab}' is not up (start it with `ilanet lab up --name {lab}`)"
        ))),
    }
}

/// Live view of a lab.
#[derive(Debug, Clone, Serialize)]
pub struct LabStatus {
    /// Lab name.
    pub name: String,
    /// Lifecycle phase.
    pub phase: Phase,
    /// Tenant networks: name, VNID and SIR prefix.
    pub tenants: Vec<ila::TenantNetwork>,
    /// Checksum mode.
    pub csum_mode: String,
    /// How locators are routed (static, bird, frr, gobgp, mesh).
    pub routing: String,
    /// Hosts.
    pub hosts: Vec<HostStatus>,
}

/// Live view of one host.
#[derive(Debug, Clone, Serialize)]
pub struct HostStatus {
    /// Short name.
    pub name: String,
    /// Place name.
    pub display: String,
    /// Namespace.
    pub netns: String,
    /// Whether the namespace exists.
    pub present: bool,
    /// Locator prefix.
    pub locator: String,
    /// Underlay address.
    pub uplink_addr: Ipv6Addr,
    /// Number of out-mappings (SIR → ILA) in the host's map.
    pub out_mappings: usize,
    /// Number of in-mappings (ILA → local endpoint).
    pub in_mappings: usize,
    /// Translation counters, summed over CPUs.
    pub counters: Option<Counters>,
    /// Containers.
    pub containers: Vec<ContainerStatus>,
}

/// Live view of one container.
#[derive(Debug, Clone, Serialize)]
pub struct ContainerStatus {
    /// Name.
    pub name: String,
    /// Namespace.
    pub netns: String,
    /// Whether the namespace exists.
    pub present: bool,
    /// SIR address.
    pub sir_addr: Ipv6Addr,
    /// ILA address on the wire.
    pub ila_addr: Ipv6Addr,
}

/// Reads a lab's live status.
pub fn status(lab: &str) -> Result<LabStatus, LabError> {
    require_root()?;
    let state = LabState::load(lab)?.ok_or_else(|| {
        LabError::Invalid(format!(
            "lab '{lab}' is not up (no record under {})",
            state::state_dir().display()
        ))
    })?;
    let plan = &state.plan;
    let mappings = plan.mappings();
    let mut hosts = Vec::new();
    for host in &plan.hosts {
        let maps = HostMaps::open_pinned(&state::host_pin_dir(&plan.name, &host.name)).ok();
        let (out_mappings, in_mappings, counters) = match &maps {
            Some(m) => (
                m.out_entries().map(|e| e.len()).unwrap_or(0),
                m.in_entries().map(|e| e.len()).unwrap_or(0),
                m.counters().ok(),
            ),
            None => (0, 0, None),
        };
        // In ILA mode the agent knows the endpoints as they are now (added, moved, removed);
        // otherwise, or if it does not answer, the plan says what was built.
        let live = (plan.mode == Mode::Ila)
            .then(|| agents::call(&plan.name, &host.name, &agent::api::Request::EndpointList).ok())
            .flatten()
            .and_then(|v| serde_json::from_value::<Vec<agent::reconcile::LocalEndpoint>>(v).ok());
        let containers = match live {
            Some(eps) => eps
                .iter()
                .map(|ep| {
                    let m = ila::Mapping::new(
                        ila::SirPrefix::from_addr(ep.sir_addr),
                        ep.identifier,
                        host.locator,
                        plan.csum_mode,
                    );
                    // A podman container is listed by the name the lab gave it.
                    let name = host
                        .containers
                        .iter()
                        .find(|c| c.container_id.is_some() && c.container_id == ep.container_id)
                        .map_or(&ep.name, |c| &c.name);
                    Ok(ContainerStatus {
                        name: name.clone(),
                        netns: ep.netns.clone(),
                        present: netns::exists(&ep.netns),
                        sir_addr: ep.sir_addr,
                        ila_addr: m.ila_address()?,
                    })
                })
                .collect::<Result<Vec<_>, LabError>>()?,
            None => mappings
                .iter()
                .filter(|(h, _, _)| h.name == host.name)
                .map(|(_, c, m)| {
                    Ok(ContainerStatus {
                        name: c.name.clone(),
                        netns: c.netns.clone(),
                        present: netns::exists(&c.netns),
                        sir_addr: c.sir_addr,
                        // EVPN never translates: the address is what crosses the overlay.
                        ila_addr: if plan.mode == Mode::Evpn {
                            c.sir_addr
                        } else {
                            m.ila_address()?
                        },
                    })
                })
                .collect::<Result<Vec<_>, LabError>>()?,
        };
        hosts.push(HostStatus {
            name: host.name.clone(),
            display: host.display.clone(),
            netns: host.netns.clone(),
            present: netns::exists(&host.netns),
            locator: host.locator.to_string(),
            uplink_addr: host.uplink_addr,
            out_mappings,
            in_mappings,
            counters,
            containers,
        });
    }
    Ok(LabStatus {
        name: plan.name.clone(),
        phase: state.phase,
        tenants: plan.tenants.clone(),
        csum_mode: plan.csum_mode.to_string(),
        routing: plan.routing.to_string(),
        hosts,
    })
}
