//! The lab on BGP with real daemons (BIRD 2, FRR, gobgpd) and the iBGP full mesh: every host's
//! kernel has every other locator (proto 200), the router's from its daemon, traffic passes, a
//! host whose agent is killed is withdrawn everywhere, and `lab down` leaves no daemon,
//! namespace or file. One small lab per mode, agents per host (etcd) so one can be killed.
//! Needs root.

use std::time::{Duration, Instant};

use lab::agents::{signal_host_agent, AgentSignal, StoreKind};
use lab::plan::{BgpTimers, Plan, RoutingMode};
use lab::routing::{self, Tables, PROTO_ILANET};
use lab::{netns, probe, LabSpec};

/// Hold time and graceful-restart time of the test labs.
const HOLD: u16 = 3;

/// Removes the lab when the test ends, also when it fails.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = lab::down(&self.0);
    }
}

fn has(tables: &Tables, ns: &str, proto: u8, prefix: &str) -> bool {
    tables
        .locators(ns, proto)
        .expect("kernel routes")
        .iter()
        .any(|r| r.prefix == prefix)
}

fn daemons_running(lab: &str) -> Vec<String> {
    let needle = format!("{}/", routing::daemon_dir(lab).display());
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(&needle))
        .collect()
}

fn run(tag: &str, routing: RoutingMode) {
    let name = format!("b{}-{tag}", std::process::id());
    let _cleanup = Cleanup(name.clone());
    let mut spec = LabSpec::generic(&name, 3, 1);
    spec.agent_binary = Some(env!("CARGO_BIN_EXE_ilanet").into());
    spec.store = StoreKind::Etcd;
    spec.routing = routing;
    spec.bgp = BgpTimers {
        hold_time: HOLD,
        graceful_restart: HOLD,
    };
    let plan: Plan = lab::up(&spec).unwrap_or_else(|e| panic!("lab up ({routing}): {e}"));
    assert!(
        !daemons_running(&name).is_empty() || routing == RoutingMode::Static,
        "no daemon runs"
    );

    // Every host has every other locator from BGP; the router has them from its daemon (or,
    // with gobgp, static routes: see lab::routing).
    let tables = Tables::open(&plan).expect("tables");
    assert_eq!(tables.missing(&plan).expect("tables"), vec![]);
    for h in &plan.hosts {
        let routes = tables.locators(&h.netns, PROTO_ILANET).expect("routes");
        assert_eq!(routes.len(), plan.hosts.len() - 1, "{}: {routes:?}", h.name);
        // Next hop on the host's own link (reflector: next hop self; mesh: resolved).
        for r in &routes {
            assert_eq!(r.via, Some(h.router_addr), "{}: {r:?}", h.name);
        }
    }

    // Traffic passes between every pair of hosts.
    for s in &plan.hosts {
        for d in &plan.hosts {
            if s.name == d.name {
                continue;
            }
            let (sc, dc) = (&s.containers[0], &d.containers[0]);
            probe::ping(&sc.netns, dc.sir_addr, Duration::from_secs(3))
                .unwrap_or_else(|e| panic!("ping {} -> {}: {e}", sc.name, dc.name));
        }
    }

    // A host whose agent is killed is withdrawn everywhere once its graceful-restart window
    // (= the hold time here) is over.
    let dead = &plan.hosts[2];
    let prefix = format!("{}/64", dead.locator.to_addr());
    signal_host_agent(&name, &dead.name, AgentSignal::Kill).expect("kill agent");
    let t0 = Instant::now();
    let limit = Duration::from_secs(u64::from(HOLD) * 2 + 3);
    let mut withdrawn_at = None;
    while t0.elapsed() < limit {
        let others_clear = plan
            .hosts
            .iter()
            .filter(|h| h.name != dead.name)
            .all(|h| !has(&tables, &h.netns, PROTO_ILANET, &prefix));
        let router_clear = routing::router_protocol(routing)
            .is_none_or(|p| !has(&tables, &plan.router_netns, p, &prefix));
        if others_clear && router_clear {
            withdrawn_at = Some(t0.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let at = withdrawn_at.unwrap_or_else(|| panic!("{prefix} not withdrawn within {limit:?}"));
    eprintln!("{routing}: {prefix} withdrawn everywhere {at:?} after the kill");
    // The other hosts still reach each other.
    let (a, b) = (&plan.hosts[0], &plan.hosts[1]);
    probe::ping(
        &a.containers[0].netns,
        b.containers[0].sir_addr,
        Duration::from_secs(3),
    )
    .expect("ping between the live hosts");

    // Down: no daemon, namespace or file left.
    drop(tables);
    lab::down(&name).expect("lab down");
    assert_eq!(daemons_running(&name), Vec::<String>::new());
    for ns in plan.netns_names() {
        assert!(!netns::exists(&ns), "{ns} left behind");
    }
    assert!(
        !lab::agents::run_dir(&name).exists(),
        "{} left behind",
        lab::agents::run_dir(&name).display()
    );
    assert!(lab::state::LabState::load(&name).expect("record").is_none());
}

#[test]
#[ignore = "needs root: network namespaces, eBPF, etcd, bird2"]
fn lab_on_bird() {
    run("bird", RoutingMode::Bird);
}

#[test]
#[ignore = "needs root: network namespaces, eBPF, etcd, frr"]
fn lab_on_frr() {
    run("frr", RoutingMode::Frr);
}

#[test]
#[ignore = "needs root: network namespaces, eBPF, etcd, gobgpd"]
fn lab_on_gobgp() {
    run("gobgp", RoutingMode::Gobgp);
}

#[test]
#[ignore = "needs root: network namespaces, eBPF, etcd, bird2"]
fn lab_on_mesh() {
    run("mesh", RoutingMode::Mesh);
}

/// A crash of `lab up` after the daemon started leaves it unrecorded; `lab down` still finds
/// and stops it by its directory.
#[test]
#[ignore = "needs root: network namespaces, eBPF, bird2"]
fn down_stops_a_daemon_it_did_not_record() {
    let name = format!("b{}-orphan", std::process::id());
    let _cleanup = Cleanup(name.clone());
    let mut spec = LabSpec::generic(&name, 2, 0);
    spec.agent_binary = Some(env!("CARGO_BIN_EXE_ilanet").into());
    spec.routing = RoutingMode::Bird;
    lab::up(&spec).expect("lab up");
    let mut st = lab::state::LabState::load(&name)
        .expect("record")
        .expect("up");
    st.daemons.clear();
    st.save().expect("save");
    assert!(!daemons_running(&name).is_empty());
    lab::down(&name).expect("lab down");
    assert_eq!(daemons_running(&name), Vec::<String>::new());
}
