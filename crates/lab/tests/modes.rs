//! Real namespaces: the `native` and `swarm` lab modes end to end (needs root).

use std::time::Duration;

use lab::plan::{Mode, Plan};
use lab::{probe, LabSpec, SwarmRules, LISTING9_PORT};

const TIMEOUT: Duration = Duration::from_secs(3);

/// Per-run unique lab name, so parallel runs never collide.
fn lab_name(tag: &str) -> String {
    format!("m{}-{tag}", std::process::id())
}

/// Removes the lab when the test ends, also when it fails.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = lab::down(&self.0);
    }
}

fn pairs(plan: &Plan) -> Vec<(String, String, std::net::Ipv6Addr, String)> {
    let all: Vec<_> = plan.hosts.iter().flat_map(|h| &h.containers).collect();
    let mut out = Vec::new();
    for s in &all {
        for d in &all {
            if s.name != d.name {
                out.push((
                    format!("{} -> {}", s.name, d.name),
                    s.netns.clone(),
                    d.sir_addr,
                    d.netns.clone(),
                ));
            }
        }
    }
    out
}

fn check_all_pairs(plan: &Plan, ping: bool, port: u16, bytes: usize) {
    for (what, src, dst, dst_ns) in pairs(plan) {
        if ping {
            probe::ping(&src, dst, TIMEOUT).unwrap_or_else(|e| panic!("ping {what}: {e}"));
        }
        let t = probe::tcp_transfer(&src, &dst_ns, dst, port, bytes, TIMEOUT)
            .unwrap_or_else(|e| panic!("tcp {what}: {e}"));
        assert_eq!(t.bytes, bytes);
    }
}

fn up(tag: &str, mode: Mode) -> (Cleanup, Plan) {
    let name = lab_name(tag);
    let cleanup = Cleanup(name.clone());
    let mut spec = LabSpec::generic(&name, 2, 2);
    spec.mode = mode;
    let plan = lab::up(&spec).expect("lab up");
    (cleanup, plan)
}

#[test]
#[ignore = "needs root: network namespaces, eBPF, iptables"]
fn native_mode_connects_every_pair() {
    let (_c, plan) = up("nat", Mode::Native);
    check_all_pairs(&plan, true, 32000, 200_000);
    lab::set_mtu(&plan.name, 9000).expect("mtu 9000");
    check_all_pairs(&plan, true, 32001, 1_000_000);
}

#[test]
#[ignore = "needs root: network namespaces, eBPF, iptables"]
fn swarm_mode_connects_every_pair_and_listing9_filters() {
    let (_c, plan) = up("swm", Mode::Swarm);
    check_all_pairs(&plan, true, 33000, 200_000);
    lab::set_mtu(&plan.name, 9000).expect("mtu 9000");
    check_all_pairs(&plan, true, 33001, 1_000_000);

    // Listing 9: TCP to 5201 passes (and its replies, as ESTABLISHED); anything else is dropped.
    lab::set_swarm_rules(&plan.name, SwarmRules::Listing9 { extra: 100 }).expect("rules");
    check_all_pairs(&plan, false, LISTING9_PORT, 100_000);
    let (what, src, dst, dst_ns) = pairs(&plan)
        .into_iter()
        .find(|(w, ..)| w.starts_with("site1-1") && w.contains("site2"))
        .expect("a cross-host pair");
    assert!(
        probe::ping(&src, dst, Duration::from_millis(500)).is_err(),
        "ping {what} must be dropped by Listing 9"
    );
    assert!(
        probe::tcp_transfer(&src, &dst_ns, dst, 33002, 1000, Duration::from_millis(500)).is_err(),
        "tcp {what} to a port other than 5201 must be dropped"
    );

    lab::set_swarm_rules(&plan.name, SwarmRules::Off).expect("rules off");
    check_all_pairs(&plan, true, 33003, 100_000);
}

#[test]
#[ignore = "needs root: network namespaces"]
fn swarm_rules_are_refused_on_other_modes() {
    let (_c, plan) = up("nrl", Mode::Native);
    let err = lab::set_swarm_rules(&plan.name, SwarmRules::Off).unwrap_err();
    assert!(err.to_string().contains("swarm labs only"), "{err}");
}
