//! Link MTU of a running lab, for benchmarks at 1500 and 9000 bytes (the paper used 9000 on the
//! wire and 8950 inside its IPv4 overlay).

use super::cmd::{ip_batch, veth_names};
use super::swarm::{BRIDGE_IFNAME, VXLAN6_OVERHEAD, VXLAN_IFNAME};
use crate::plan::{Mode, UPLINK_IFNAME};
use crate::{plan_of, LabError};
use hostnet::link::ENDPOINT_IFNAME as CONTAINER_IFNAME;

/// Smallest MTU IPv6 allows.
const IPV6_MIN_MTU: u32 = 1280;
/// Largest MTU a veth takes.
const MAX_MTU: u32 = 65_535;

/// Sets the underlay MTU of lab `lab` to `mtu` and every container-side link to what fits:
/// the same in `ila` and `native` mode (nothing is added to packets), `mtu - 70` in `swarm` and
/// `evpn` mode (VXLAN over IPv6).
pub fn set_mtu(lab: &str, mtu: u32) -> Result<(), LabError> {
    let plan = plan_of(lab)?;
    let overhead = if matches!(plan.mode, Mode::Swarm | Mode::Evpn) {
        VXLAN6_OVERHEAD
    } else {
        0
    };
    if !(IPV6_MIN_MTU + overhead..=MAX_MTU).contains(&mtu) {
        return Err(LabError::Invalid(format!(
            "MTU {mtu} is out of range for a {} lab: {}..={MAX_MTU}",
            plan.mode,
            IPV6_MIN_MTU + overhead
        )));
    }
    let inner = mtu - overhead;
    for host in &plan.hosts {
        // Container ports by what exists, not by the plan: in ILA mode the agents name them.
        let ports: Vec<String> = veth_names(&host.netns)?
            .into_iter()
            .filter(|n| n != UPLINK_IFNAME)
            .collect();
        // A VXLAN device may not exceed its lower device's MTU minus the overhead: shrink the
        // overlay first, then set the underlay, then grow the overlay to its final size.
        let overlay = |m: u32| -> Vec<String> {
            let mut l: Vec<String> = ports
                .iter()
                .map(|p| format!("link set {p} mtu {m}"))
                .collect();
            if plan.mode == Mode::Swarm {
                l.push(format!("link set {VXLAN_IFNAME} mtu {m}"));
                l.push(format!("link set {BRIDGE_IFNAME} mtu {m}"));
            }
            if plan.mode == Mode::Evpn {
                for t in &plan.tenants {
                    let vni = t.vnid.get();
                    l.push(format!(
                        "link set {} mtu {m}",
                        hostnet::evpn::vxlan_ifname(vni)
                    ));
                    l.push(format!(
                        "link set {} mtu {m}",
                        hostnet::evpn::bridge_ifname(vni)
                    ));
                }
            }
            l
        };
        ip_batch(&host.netns, &overlay(IPV6_MIN_MTU))?;
        ip_batch(
            &plan.router_netns,
            &[format!("link set {} mtu {mtu}", host.router_ifname)],
        )?;
        ip_batch(
            &host.netns,
            &[format!("link set {UPLINK_IFNAME} mtu {mtu}")],
        )?;
        ip_batch(&host.netns, &overlay(inner))?;
        for c in &host.containers {
            ip_batch(
                &c.netns,
                &[format!("link set {CONTAINER_IFNAME} mtu {inner}")],
            )?;
        }
    }
    Ok(())
}
