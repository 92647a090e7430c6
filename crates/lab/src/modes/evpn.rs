//! `evpn` mode, as in the paper's section 4: a route server on the router (gobgpd with every
//! host as route-server client, or FRR's bgpd) and on each host an EVPN agent
//! ([`agent::evpn_host`]): per tenant a VXLAN segment, endpoints bridged into it, Type-2 and
//! Type-3 routes announced over MP-BGP EVPN, FDB, flood lists and neighbour entries programmed
//! from the routes received. One process (`ilanet lab evpn-agents`) runs every host's agent,
//! each with its sockets and links in its host's namespace.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agent::api::Request;
use agent::evpn_host::{EvpnConfig, EvpnHost, EvpnView};
use hostnet::link::Netlink;

use crate::agents::{self, run_dir};
use crate::plan::{HostPlan, Plan, RoutingMode, UPLINK_IFNAME};
use crate::state::LabState;
use crate::{build_underlay, routing, LabError};

/// How long `lab up` waits for every host to have learned every other.
pub const CONVERGE_TIMEOUT: Duration = Duration::from_secs(30);
/// Underlay MTU of a lab (the benchmarks change it afterwards).
const UNDERLAY_MTU: u32 = 1500;

/// The record of a host's EVPN endpoints.
pub fn state_file(plan: &Plan, host: &HostPlan) -> PathBuf {
    run_dir(&plan.name)
        .join(&host.name)
        .join("evpn-endpoints.json")
}

/// The EVPN agent configuration of a lab host.
pub fn host_config(plan: &Plan, host: &HostPlan) -> Result<EvpnConfig, LabError> {
    let speaker = routing::speaker_config(plan, host).ok_or_else(|| {
        LabError::Invalid(format!(
            "evpn lab '{}' has no route server ({} routing)",
            plan.name, plan.routing
        ))
    })?;
    Ok(EvpnConfig {
        host: host.name.clone(),
        host_netns: host.netns.clone(),
        uplink: UPLINK_IFNAME.to_string(),
        underlay: host.uplink_addr,
        tenants: plan.tenants.clone(),
        socket: agents::socket_path(&plan.name, &host.name),
        state_file: state_file(plan, host),
        netns_prefix: plan.name.clone(),
        underlay_mtu: UNDERLAY_MTU,
        speaker,
        // FRR 8.4 parses neither a Type-3 NLRI with an IPv6 originator nor a PMSI tunnel
        // attribute with an IPv6 endpoint, and resets the session on either: behind FRR,
        // flood lists come from Type-2 next hops (see agent::evpn::EvpnSite::type3).
        type3: plan.routing != RoutingMode::Frr,
        route_target_asn: Some(routing::LAB_ASN),
    })
}

/// Runs every host's EVPN agent of lab `lab` in this process until one fails.
pub fn run_agents(lab: &str) -> Result<(), LabError> {
    let plan = crate::plan_of(lab)?;
    agents::register_agent(lab)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|source| LabError::Os {
            what: "starting the agents' runtime".into(),
            source,
        })?;
    runtime.block_on(async {
        let mut servers = tokio::task::JoinSet::new();
        for host in &plan.hosts {
            let cfg = host_config(&plan, host)?;
            let h = EvpnHost::start(cfg)
                .await
                .map_err(|e| LabError::Agent(format!("host '{}': {e}", host.name)))?;
            log::info!(
                "host {}: EVPN agent (VTEP {}) peering with the route server at {}",
                host.name,
                host.uplink_addr,
                host.router_addr
            );
            servers.spawn(h.serve());
        }
        match servers.join_next().await {
            Some(Ok(Err(e))) => Err(LabError::Agent(e.to_string())),
            Some(Err(e)) => Err(LabError::Agent(format!("api server task failed: {e}"))),
            _ => Ok(()),
        }
    })
}

/// The EVPN state of a host's agent.
pub fn view(plan: &Plan, host: &HostPlan) -> Result<EvpnView, LabError> {
    let v = agents::call(&plan.name, &host.name, &Request::EvpnState)?;
    serde_json::from_value(v).map_err(|e| LabError::Agent(format!("host '{}': {e}", host.name)))
}

/// Builds the hosts of an `evpn` lab (the router is configured): underlay links, the route
/// server, the agents, then the planned containers through them.
pub(crate) fn build(nl: &Netlink, state: &mut LabState, binary: &Path) -> Result<(), LabError> {
    let plan = state.plan.clone();
    for host in &plan.hosts {
        build_underlay(nl, &plan, host)?;
    }
    routing::start(state)?;
    let dir = run_dir(&plan.name);
    std::fs::create_dir_all(&dir).map_err(|source| LabError::Os {
        what: format!("creating {}", dir.display()),
        source,
    })?;
    let pid = agents::spawn_detached(
        binary,
        &[
            "lab".to_string(),
            "evpn-agents".into(),
            "--name".into(),
            plan.name.clone(),
        ],
        &dir.join("agent.log"),
    )?;
    state.agents.push(pid);
    state.save()?;
    wait_ready(&plan)?;
    for host in &plan.hosts {
        for c in &host.containers {
            agents::call(
                &plan.name,
                &host.name,
                &Request::EvpnEndpointAdd {
                    name: c.name.clone(),
                    tenant: Some(c.tenant.clone()),
                    addr: c.sir_addr,
                    mac: Some(bgp::evpn::fmt_mac(&c.mac)),
                },
            )?;
        }
    }
    wait_converged(&plan, CONVERGE_TIMEOUT)
}

/// Waits until every host's agent answers.
fn wait_ready(plan: &Plan) -> Result<(), LabError> {
    let deadline = Instant::now() + Duration::from_secs(20);
    for host in &plan.hosts {
        loop {
            match agents::call(&plan.name, &host.name, &Request::Status) {
                Ok(_) => break,
                Err(e) if Instant::now() > deadline => {
                    return Err(LabError::Agent(format!(
                        "the EVPN agent of host '{}' does not answer ({e}); see {}",
                        host.name,
                        run_dir(&plan.name).join("agent.log").display()
                    )))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
    Ok(())
}

/// What host `host` still misses: remote MACs of its tenants' planned containers and flood
/// entries towards every other host, as (what, where) texts. Empty: converged.
pub fn missing(plan: &Plan, host: &HostPlan, v: &EvpnView) -> Vec<String> {
    let tenant_vni = |name: &str| {
        plan.tenants
            .iter()
            .find(|t| t.name == name)
            .map(|t| t.vnid.get())
    };
    let mut missing = Vec::new();
    let type3 = plan.routing != RoutingMode::Frr;
    for other in plan.hosts.iter().filter(|o| o.name != host.name) {
        let vtep = IpAddr::V6(other.uplink_addr);
        for t in &plan.tenants {
            // Without Type-3 routes a host floods a segment only to hosts with endpoints in it.
            let expected = type3 || other.containers.iter().any(|c| c.tenant == t.name);
            if expected && !v.flood.contains(&(t.vnid.get(), vtep)) {
                missing.push(format!("flood VNI {} → {vtep}", t.vnid.get()));
            }
        }
        for c in &other.containers {
            let mac = bgp::evpn::fmt_mac(&c.mac);
            let vni = tenant_vni(&c.tenant);
            if !v
                .fdb
                .iter()
                .any(|f| Some(f.vni) == vni && f.mac == mac && f.vtep == vtep)
            {
                missing.push(format!("fdb {mac} → {vtep}"));
            }
        }
    }
    missing
}

/// Waits until every host has every planned remote MAC and flood entry installed.
pub fn wait_converged(plan: &Plan, timeout: Duration) -> Result<(), LabError> {
    let start = Instant::now();
    for host in &plan.hosts {
        loop {
            let v = view(plan, host)?;
            let m = missing(plan, host, &v);
            if m.is_empty() {
                break;
            }
            if start.elapsed() > timeout {
                return Err(LabError::Agent(format!(
                    "evpn ({} routing): host '{}' still misses {} entries after {timeout:?} ({}…); see {} and {}",
                    plan.routing,
                    host.name,
                    m.len(),
                    m.iter().take(4).cloned().collect::<Vec<_>>().join(", "),
                    routing::daemon_dir(&plan.name).display(),
                    run_dir(&plan.name).join("agent.log").display()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(())
}
