//! `native` mode: plain routed IPv6 between containers — no overlay, no translation, no eBPF.
//! The physical limit of the testbed, the baseline every other mode is compared with.
//!
//! Containers keep their planned SIR addresses (/128 on `eth0`, default route via the host's
//! link-local gateway, exactly as in ILA mode). The router learns one /128 per container towards
//! the container's host: SIR addresses of different hosts share one /64, so no per-host prefix
//! exists to aggregate on, and a /128 lookup costs the same as a /64 one.

use hostnet::link::Netlink;

use crate::plan::Plan;
use crate::{build_container_link, build_underlay, LabError};

/// Builds the hosts and containers of a `native` lab (the router is already configured).
pub(crate) fn build(nl: &Netlink, plan: &Plan) -> Result<(), LabError> {
    for host in &plan.hosts {
        build_underlay(nl, plan, host)?;
        for c in &host.containers {
            build_container_link(nl, host, c)?;
            nl.add_route(
                &plan.router_netns,
                c.sir_addr,
                128,
                Some(host.uplink_addr),
                &host.router_ifname,
            )?;
        }
    }
    Ok(())
}
