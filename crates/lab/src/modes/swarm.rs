//! `swarm` mode: a Docker-Swarm-like overlay. Each host has a Linux bridge `br0` with its
//! containers' veths and a kernel VXLAN device `vxlan0` (VNI 4096, UDP 4789, over the IPv6
//! underlay) as ports. The containers' SIR addresses are on-link in one /64 across all hosts: a
//! packet to a container on another host is bridged into `vxlan0` and encapsulated there.
//!
//! As in Docker's overlay driver, the control plane (here: the plan) programs static state and
//! the data plane keeps learning on: one FDB entry per remote container MAC towards its host's
//! VTEP, an all-zero entry per remote VTEP for flooding, and permanent neighbour entries on
//! `vxlan0` (Docker answers ARP by proxy from them).
//!
//! Filtering is the paper's Listing 9 in each host's FORWARD chain. Bridged IPv6 traverses it
//! because `bridge-nf-call-ip6tables` is on (what Docker's br_netfilter setting does). Unlike
//! ARP in the paper's IPv4 overlay, IPv6 neighbour discovery is ICMPv6 and would be dropped by
//! Listing 9's `-P FORWARD DROP`; containers therefore get permanent neighbour entries for
//! every peer, so the rules stay exactly as in the listing.

use std::fmt::Write as _;

use hostnet::link::Netlink;
use hostnet::netns;
use serde::{Deserialize, Serialize};

use super::cmd::{bridge_batch, ip_batch, mac, run};
use crate::plan::{Mode, Plan, UPLINK_IFNAME};
use crate::{base_sysctls, build_underlay, plan_of, LabError};
use hostnet::link::ENDPOINT_IFNAME as CONTAINER_IFNAME;

/// Name of the overlay bridge in each host namespace.
pub const BRIDGE_IFNAME: &str = "br0";
/// Name of the VXLAN device in each host namespace.
pub const VXLAN_IFNAME: &str = "vxlan0";
/// VXLAN network identifier of the overlay (Docker numbers its overlays from 4096).
pub const VNI: u32 = 4096;
/// UDP port of the overlay (IANA VXLAN).
pub const VXLAN_PORT: u16 = 4789;
/// Bytes VXLAN adds over an IPv6 underlay: outer Ethernet 14 + IPv6 40 + UDP 8 + VXLAN 8.
pub const VXLAN6_OVERHEAD: u32 = 70;
/// The TCP port Listing 9 lets through (iperf3's default).
pub const LISTING9_PORT: u16 = 5201;
/// The iptables flavour used: the x_tables ("legacy") back end, the one Docker drove in 2017.
pub const IP6TABLES_RESTORE: &str = "ip6tables-legacy-restore";

/// Packet filter of a swarm lab's hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum SwarmRules {
    /// No filter: empty FORWARD chain, policy ACCEPT (the paper's `ipt_no_rules`).
    Off,
    /// The paper's Listing 9 (`ESTABLISHED,RELATED` accept, TCP 5201 accept, policy DROP) with
    /// `extra` rules that never match placed first, so every packet walks past all of them
    /// (the rule-count curve). `extra: 0` is Listing 9 verbatim (`ipt_tcp5201`).
    Listing9 {
        /// Non-matching rules before the accepts.
        extra: usize,
    },
}

impl SwarmRules {
    /// Total rules in FORWARD.
    pub fn rule_count(&self) -> usize {
        match self {
            SwarmRules::Off => 0,
            SwarmRules::Listing9 { extra } => extra + 2,
        }
    }

    /// The `ip6tables-restore` input that installs these rules (replacing the filter table).
    pub fn restore_script(&self) -> String {
        let mut s = String::from("*filter\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n");
        match self {
            SwarmRules::Off => s.push_str(":FORWARD ACCEPT [0:0]\n"),
            SwarmRules::Listing9 { extra } => {
                s.push_str(":FORWARD DROP [0:0]\n");
                s.reserve(extra * 80);
                for i in 0..*extra {
                    // Sources from a prefix the lab never uses: the rule is evaluated (address
                    // compare, then the tcp match is never reached) and never matches.
                    let _ = writeln!(
                        s,
                        "-A FORWARD -s fd00:ffff:{:x}:{:x}::1/128 -p tcp -m tcp --dport {LISTING9_PORT} -j ACCEPT",
                        i >> 16,
                        i & 0xffff
                    );
                }
                s.push_str("-A FORWARD -m state --state ESTABLISHED,RELATED -j ACCEPT\n");
                let _ = writeln!(
                    s,
                    "-A FORWARD -p tcp -m tcp --dport {LISTING9_PORT} -j ACCEPT"
                );
            }
        }
        s.push_str("COMMIT\n");
        s
    }
}

/// Installs `rules` in the FORWARD chain of every host of swarm lab `lab` (atomically per host,
/// through `ip6tables-legacy-restore`, so 100 000 rules load in about a second).
pub fn set_swarm_rules(lab: &str, rules: SwarmRules) -> Result<(), LabError> {
    let plan = plan_of(lab)?;
    if plan.mode != Mode::Swarm {
        return Err(LabError::Invalid(format!(
            "lab '{lab}' is in {} mode; iptables rules apply to swarm labs only",
            plan.mode
        )));
    }
    let script = rules.restore_script();
    for host in &plan.hosts {
        run(
            "ip",
            &["netns", "exec", &host.netns, IP6TABLES_RESTORE, "-w"],
            &script,
        )
        .map_err(|e| {
            LabError::Invalid(format!(
                "installing {} iptables rules on host '{}': {e}",
                rules.rule_count(),
                host.name
            ))
        })?;
    }
    Ok(())
}

/// Builds the hosts and containers of a `swarm` lab (the router is already configured).
pub(crate) fn build(nl: &Netlink, plan: &Plan) -> Result<(), LabError> {
    let inner_mtu = 1500 - VXLAN6_OVERHEAD;
    for host in &plan.hosts {
        build_underlay(nl, plan, host)?;
        // Bridged IPv6 goes through ip6tables (Listing 9 filters bridged traffic).
        netns::run_in(&host.netns, || -> Result<(), LabError> {
            netns::sysctl("net/bridge/bridge-nf-call-ip6tables", "1")?;
            Ok(())
        })?;
        let n = host.locator.0.to_be_bytes()[5];
        let mut lines = vec![
            format!(
                "link add {BRIDGE_IFNAME} address {} mtu {inner_mtu} type bridge mcast_snooping 0",
                mac([0x02, 0x1a, 0xfe, n, 0, 1])
            ),
            format!(
                "link add {VXLAN_IFNAME} address {} mtu {inner_mtu} type vxlan id {VNI} local {} dev {UPLINK_IFNAME} dstport {VXLAN_PORT} learning proxy",
                mac([0x02, 0x1a, 0xfe, n, 0, 2]),
                host.uplink_addr
            ),
            format!("link set {VXLAN_IFNAME} master {BRIDGE_IFNAME} up"),
            format!("link set {BRIDGE_IFNAME} up"),
        ];
        for c in &host.containers {
            base_sysctls(&c.netns, false)?;
            nl.set_up(&c.netns, "lo")?;
            nl.add_veth(
                &host.netns,
                &c.host_ifname,
                c.host_mac,
                &c.netns,
                CONTAINER_IFNAME,
                c.mac,
            )?;
            // On-link in the overlay: the whole SIR /64 is one L2 segment.
            nl.add_addr(&c.netns, CONTAINER_IFNAME, c.sir_addr, 64)?;
            ip_batch(
                &c.netns,
                &[format!("link set {CONTAINER_IFNAME} mtu {inner_mtu}")],
            )?;
            lines.push(format!(
                "link set {} mtu {inner_mtu} master {BRIDGE_IFNAME} up",
                c.host_ifname
            ));
        }
        ip_batch(&host.netns, &lines)?;
    }
    program_overlay(plan)
}

/// The overlay's static state: FDB and neighbours towards remote containers on every host, and
/// every peer's MAC in every container.
fn program_overlay(plan: &Plan) -> Result<(), LabError> {
    for host in &plan.hosts {
        let mut fdb = Vec::new();
        let mut neigh = Vec::new();
        for other in plan.hosts.iter().filter(|o| o.name != host.name) {
            let vtep = other.uplink_addr;
            fdb.push(format!(
                "fdb append 00:00:00:00:00:00 dev {VXLAN_IFNAME} dst {vtep} self permanent"
            ));
            for c in &other.containers {
                // `replace`, not `add`: a container that already sent (DAD, MLD) through the
                // flood entry above may have been learned here, and `add` then fails.
                fdb.push(format!(
                    "fdb replace {} dev {VXLAN_IFNAME} dst {vtep} self permanent",
                    mac(c.mac)
                ));
                neigh.push(format!(
                    "neigh replace {} lladdr {} dev {VXLAN_IFNAME} nud permanent",
                    c.sir_addr,
                    mac(c.mac)
                ));
            }
        }
        bridge_batch(&host.netns, &fdb)?;
        ip_batch(&host.netns, &neigh)?;
    }
    let all: Vec<_> = plan.hosts.iter().flat_map(|h| &h.containers).collect();
    for c in &all {
        let lines: Vec<String> = all
            .iter()
            .filter(|d| d.name != c.name)
            .map(|d| {
                format!(
                    "neigh replace {} lladdr {} dev {CONTAINER_IFNAME} nud permanent",
                    d.sir_addr,
                    mac(d.mac)
                )
            })
            .collect();
        ip_batch(&c.netns, &lines)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing9_script_has_the_paper_rules_after_the_extra_ones() {
        let s = SwarmRules::Listing9 { extra: 3 }.restore_script();
        let rules: Vec<_> = s.lines().filter(|l| l.starts_with("-A FORWARD")).collect();
        assert_eq!(rules.len(), 5);
        assert!(rules[..3].iter().all(|r| r.contains("-s fd00:ffff:")));
        assert_eq!(
            rules[3],
            "-A FORWARD -m state --state ESTABLISHED,RELATED -j ACCEPT"
        );
        assert_eq!(rules[4], "-A FORWARD -p tcp -m tcp --dport 5201 -j ACCEPT");
        assert!(s.contains(":FORWARD DROP"));
        assert_eq!(SwarmRules::Listing9 { extra: 3 }.rule_count(), 5);
    }

    #[test]
    fn extra_rule_sources_are_distinct() {
        let s = SwarmRules::Listing9 { extra: 70_000 }.restore_script();
        let mut srcs: Vec<_> = s
            .lines()
            .filter_map(|l| l.strip_prefix("-A FORWARD -s "))
            .map(|l| l.split(' ').next().unwrap_or(""))
            .collect();
        assert_eq!(srcs.len(), 70_000);
        srcs.sort();
        srcs.dedup();
        assert_eq!(srcs.len(), 70_000);
    }

    #[test]
    fn off_accepts_everything() {
        let s = SwarmRules::Off.restore_script();
        assert!(s.contains(":FORWARD ACCEPT"));
        assert!(!s.contains("-A "));
    }
}
