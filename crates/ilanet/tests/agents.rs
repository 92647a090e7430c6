//! The agents and mapping distribution end to end: real etcd clusters, real namespaces, real
//! eBPF (needs root).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::Ipv6Addr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent::api::{AgentStatus, MappingRow, Request};
use agent::reconcile::LocalEndpoint;
use dataplane::HostMaps;
use lab::agents::{self, StoreKind};
use lab::plan::Plan;
use lab::state::{self, LabState};
use lab::{probe, LabSpec};

mod common;
use common::wait_for;

const BIN: &str = env!("CARGO_BIN_EXE_ilanet");
const T: Duration = Duration::from_secs(3);

fn lab_name(tag: &str) -> String {
    format!("a{}-{tag}", std::process::id())
}

struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = lab::down(&self.0);
    }
}

fn up(name: &str, sites: usize, containers: usize, store: StoreKind, ttl: u64) -> (Cleanup, Plan) {
    let cleanup = Cleanup(name.to_string());
    let mut spec = LabSpec::generic(name, sites, containers);
    spec.agent_binary = Some(BIN.into());
    spec.store = store;
    spec.lease_ttl = Duration::from_secs(ttl);
    let plan = lab::up(&spec).expect("lab up");
    (cleanup, plan)
}

fn status(lab: &str, host: &str) -> AgentStatus {
    serde_json::from_value(agents::call(lab, host, &Request::Status).expect("status"))
        .expect("json")
}

fn mappings(lab: &str, host: &str) -> Vec<MappingRow> {
    serde_json::from_value(agents::call(lab, host, &Request::Mappings).expect("mappings"))
        .expect("json")
}

fn add(lab: &str, host: &str, name: &str) -> Result<LocalEndpoint, lab::LabError> {
    add_with(lab, host, name, BTreeMap::new())
}

fn add_with(
    lab: &str,
    host: &str,
    name: &str,
    labels: BTreeMap<String, String>,
) -> Result<LocalEndpoint, lab::LabError> {
    agents::call(
        lab,
        host,
        &Request::EndpointAdd {
            name: name.into(),
            tenant: None,
            identifier: None,
            replace: false,
            labels,
        },
    )
    .map(|v| serde_json::from_value(v).expect("json"))
}

/// The SIR addresses in a host's out-map (read from the pinned map, not from the agent).
fn out_map(lab: &str, host: &str) -> Vec<Ipv6Addr> {
    HostMaps::open_pinned(&state::host_pin_dir(lab, host))
        .expect("maps")
        .out_entries()
        .expect("entries")
        .into_iter()
        .map(|(k, _)| k)
        .collect()
}

/// The lab's etcd client URLs, comma-separated.
fn etcd_endpoints(lab: &str) -> String {
    LabState::load(lab)
        .expect("load")
        .expect("rec")
        .etcd
        .expect("etcd")
        .client_endpoints()
        .join(",")
}

/// Runs `etcdctl` (v3 API) against the lab's etcd cluster as its administrator (the lab's
/// `root` certificate), behind the agents' back; its stdout.
fn etcdctl(lab: &str, args: &[&str]) -> String {
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(agents::etcdctl_args(lab).expect("etcdctl args"))
        .args(args)
        .output()
        .expect("etcdctl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Signals an agent process and waits until it is gone.
fn kill_and_wait(pid: u32, sig: i32) {
    kill(pid, sig);
    wait_for("the agent to exit", Duration::from_secs(5), || !alive(pid));
}

fn kill(pid: u32, sig: i32) {
    // SAFETY: kill(2) on a pid the test's lab recorded.
    unsafe { libc::kill(pid as i32, sig) };
}

fn etcd_pids(lab: &str) -> Vec<u32> {
    LabState::load(lab)
        .expect("load")
        .expect("record")
        .etcd
        .expect("etcd")
        .members
        .iter()
        .filter_map(|m| m.pid)
        .collect()
}

fn agent_pids(lab: &str) -> Vec<u32> {
    LabState::load(lab).expect("load").expect("record").agents
}

/// Starts an agent process for one host and records it in the lab so `lab down` stops it
/// (and reaps it: `lab::agents::stop_agent` waits for its own children).
#[allow(clippy::zombie_processes)]
fn start_agent(lab: &str, extra: &[&str]) -> u32 {
    let mut args = vec!["agent", "--lab", lab, "--lease-ttl", "2"];
    args.extend_from_slice(extra);
    let child = Command::new(BIN)
        .args(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn agent");
    let mut st = LabState::load(lab).expect("load").expect("record");
    st.agents.push(child.id());
    st.save().expect("save");
    child.id()
}

#[test]
#[ignore = "needs root: network namespaces, eBPF, etcd"]
fn etcd_lab_converges_and_survives_a_dead_member() {
    let name = lab_name("etcd");
    let (_c, plan) = up(&name, 2, 1, StoreKind::Etcd, 2);
    let (a, b) = (&plan.hosts[0].containers[0], &plan.hosts[1].containers[0]);
    probe::ping(&a.netns, b.sir_addr, T).expect("ping a->b");
    probe::tcp_transfer(&b.netns, &a.netns, a.sir_addr, 7001, 100_000, T).expect("tcp b->a");

    // One of three members dies: the cluster keeps a quorum and mappings still converge.
    let pids = etcd_pids(&name);
    assert_eq!(pids.len(), 3);
    kill(pids[0], libc::SIGKILL);
    let ep = add(&name, "site1", "late").expect("add after a member died");
    wait_for("the new mapping on site2", Duration::from_secs(10), || {
        out_map(&name, "site2").contains(&ep.sir_addr)
    });
    probe::ping(&b.netns, ep.sir_addr, T).expect("ping the late endpoint");
    assert!(mappings(&name, "site2").iter().all(|m| m.installed));
}

#[test]
#[ignore = "needs root: network namespaces, eBPF, etcd"]
fn a_dead_hosts_mappings_are_withdrawn_after_its_lease() {
    let name = lab_name("lease");
    let (_c, plan) = up(&name, 2, 1, StoreKind::Etcd, 2);
    let gone = plan.hosts[1].containers[0].sir_addr;
    assert!(out_map(&name, "site1").contains(&gone));
    let pids = agent_pids(&name);
    kill(pids[1], libc::SIGKILL);
    let killed = Instant::now();
    wait_for(
        "site2's mapping to vanish from site1",
        Duration::from_secs(10),
        || !out_map(&name, "site1").contains(&gone),
    );
    // Not before the lease could have expired (2 s TTL; etcd may round up).
    assert!(
        killed.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        killed.elapsed()
    );
    // site1's own mapping is still there.
    assert!(out_map(&name, "site1").contains(&plan.hosts[0].containers[0].sir_addr));
}

#[test]
#[ignore = "needs root: network namespaces, eBPF, etcd"]
fn a_moved_endpoint_is_reached_at_the_same_address() {
    let name = lab_name("move");
    let (_c, plan) = up(&name, 2, 1, StoreKind::Embedded, 10);
    let (a, b) = (&plan.hosts[0].containers[0], &plan.hosts[1].containers[0]);
    let ep = add(&name, "site1", "mob").expect("add");
    probe::tcp_transfer(&b.netns, &ep.netns, ep.sir_addr, 7002, 50_000, T)
        .expect("before the move");
    let out = Command::new(BIN)
        .args(["endpoint", "move", "mob", "--to", "site2", "--lab", &name])
        .output()
        .expect("move");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(
        "site1 to map mob to site2's locator",
        Duration::from_secs(5),
        || {
            mappings(&name, "site1")
                .iter()
                .any(|m| m.endpoint == "mob" && m.host == "site2" && m.installed)
        },
    );
    // The same address, now on site2: reached from the other site (translated) and from its
    // new neighbour (local).
    probe::tcp_transfer(&a.netns, &ep.netns, ep.sir_addr, 7003, 50_000, T)
        .expect("after, cross-site");
    probe::tcp_transfer(&b.netns, &ep.netns, ep.sir_addr, 7004, 50_000, T)
        .expect("after, same host");
    let on2: Vec<LocalEndpoint> =
        serde_json::from_value(agents::call(&name, "site2", &Request::EndpointList).expect("list"))
            .expect("json");
    assert!(on2
        .iter()
        .any(|e| e.name == "mob" && e.sir_addr == ep.sir_addr));
}

/// A TCP echo stream that runs until stopped and reports bytes verified, or the first error.
#[test]
#[ignore = "needs root: network namespaces, eBPF, etcd"]
fn restarting_an_agent_keeps_a_tcp_stream_and_converges_again() {
    let name = lab_name("restart");
    let (_c, plan) = up(&name, 2, 1, StoreKind::Etcd, 2);
    let (a, b) = (&plan.hosts[0].containers[0], &plan.hosts[1].containers[0]);
    let stop = Arc::new(AtomicBool::new(false));
    let stream = probe::echo_stream(&a.netns, &b.netns, b.sir_addr, 7005, Arc::clone(&stop))
        .expect("stream");
    std::thread::sleep(Duration::from_millis(300));

    let endpoints = etcd_endpoints(&name);
    kill(agent_pids(&name)[0], libc::SIGKILL);
    std::thread::sleep(Duration::from_millis(500));
    start_agent(
        &name,
        &[
            "--host",
            "site1",
            "--store",
            "etcd",
            "--etcd-endpoints",
            &endpoints,
        ],
    );
    lab::agents::wait_ready(&plan).expect("restarted agent ready");
    wait_for("site1 to resync", Duration::from_secs(10), || {
        let s = status(&name, "site1");
        s.resyncs >= 1 && s.mappings == 2 && s.out_entries == 2 && s.in_entries == 1
    });
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let total = stream
        .join()
        .expect("join")
        .expect("the stream survived the restart");
    assert!(total > 10_000, "{total} bytes");
    // The restarted agent still serves: a new endpoint there converges on site2.
    let ep = add(&name, "site1", "after").expect("add");
    wait_for("the new mapping on site2", Duration::from_secs(5), || {
        out_map(&name, "site2").contains(&ep.sir_addr)
    });
}

#[test]
#[ignore = "needs root: network namespaces, eBPF, etcd"]
fn restarting_the_embedded_agents_keeps_a_tcp_stream() {
    let name = lab_name("emb");
    let (_c, plan) = up(&name, 2, 1, StoreKind::Embedded, 10);
    let (a, b) = (&plan.hosts[0].containers[0], &plan.hosts[1].containers[0]);
    let stop = Arc::new(AtomicBool::new(false));
    let stream = probe::echo_stream(&a.netns, &b.netns, b.sir_addr, 7006, Arc::clone(&stop))
        .expect("stream");
    std::thread::sleep(Duration::from_millis(300));
    // The whole process goes, store included; the new one starts from an empty store.
    kill(agent_pids(&name)[0], libc::SIGKILL);
    std::thread::sleep(Duration::from_millis(300));
    start_agent(&name, &["--store", "embedded"]);
    lab::agents::wait_ready(&plan).expect("ready");
    wait_for(
        "both hosts to know both mappings",
        Duration::from_secs(10),
        || {
            ["site1", "site2"].iter().all(|h| {
                let s = status(&name, h);
                s.mappings == 2 && s.out_entries == 2
            })
        },
    );
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let total = stream.join().expect("join").expect("the stream survived");
    assert!(total > 10_000, "{total} bytes");
}

#[test]
#[ignore = "needs root: network namespaces, eBPF, etcd"]
fn store_outage_keeps_the_data_path_and_refuses_changes_cleanly() {
    let name = lab_name("outage");
    let (_c, plan) = up(&name, 2, 1, StoreKind::Etcd, 2);
    let (a, b) = (&plan.hosts[0].containers[0], &plan.hosts[1].containers[0]);
    let pids = etcd_pids(&name);
    for p in &pids {
        kill(*p, libc::SIGSTOP);
    }
    struct Resume(Vec<u32>);
    impl Drop for Resume {
        fn drop(&mut self) {
            for p in &self.0 {
                kill(*p, libc::SIGCONT);
            }
        }
    }
    let resume = Resume(pids);
    wait_for(
        "site1 to notice the outage",
        Duration::from_secs(15),
        || !status(&name, "site1").store_connected,
    );
    // The data path stays at its last known state.
    probe::ping(&a.netns, b.sir_addr, T).expect("ping during the outage");
    // A change is refused and leaves nothing behind.
    let err = add(&name, "site1", "during").expect_err("no store");
    assert!(err.to_string().contains("not reachable"), "{err}");
    assert!(!lab::netns::exists(&format!("{name}-during")));
    drop(resume);
    wait_for("reconnection", Duration::from_secs(20), || {
        ["site1", "site2"]
            .iter()
            .all(|h| status(&name, h).store_connected)
    });
    let ep = add(&name, "site1", "after").expect("add after the outage");
    // Leases that expired while etcd was frozen take their mappings along until their agents
    // republish: wait until both hosts hold all three mappings again.
    wait_for(
        "every mapping on both hosts",
        Duration::from_secs(15),
        || {
            ["site1", "site2"].iter().all(|h| {
                let m = out_map(&name, h);
                m.len() == 3 && m.contains(&ep.sir_addr)
            })
        },
    );
    probe::ping(&b.netns, ep.sir_addr, T).expect("ping the new endpoint");
}

#[test]
#[ignore = "needs root: network namespaces, eBPF, etcd"]
fn an_agent_started_without_a_store_retries_and_says_why() {
    let name = lab_name("nostore");
    let (_c, _plan) = up(&name, 1, 0, StoreKind::Embedded, 10);
    // Replace the lab's agent by one pointed at a port where nothing listens.
    kill(agent_pids(&name)[0], libc::SIGKILL);
    std::thread::sleep(Duration::from_millis(200));
    let pid = start_agent(
        &name,
        &[
            "--store",
            "etcd",
            "--etcd-endpoints",
            "http://127.0.0.1:9",
            "--insecure-store",
        ],
    );
    wait_for("the agent's socket", Duration::from_secs(10), || {
        agents::call(&name, "site1", &Request::Status).is_ok()
    });
    // The first attempt fails (connection refused or timeout) and the reason names the store.
    wait_for("a failed attempt", Duration::from_secs(15), || {
        let s = status(&name, "site1");
        assert!(!s.store_connected);
        s.store_error
            .unwrap_or_default()
            .contains("unavailable at http://127.0.0.1:9")
    });
    assert!(
        std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "agent keeps running"
    );
}

#[test]
#[ignore = "needs root: network namespaces, eBPF, etcd"]
fn malformed_store_records_are_skipped_by_key() {
    let name = lab_name("junk");
    let (_c, plan) = up(&name, 2, 1, StoreKind::Etcd, 2);
    etcdctl(
        &name,
        &[
            "put",
            "/ilanet/v1/hosts/site2/mappings/not-an-address",
            "{garbage",
        ],
    );
    let ep = add(&name, "site2", "fine").expect("add");
    wait_for("the new mapping on site1", Duration::from_secs(5), || {
        out_map(&name, "site1").contains(&ep.sir_addr)
    });
    // Both agents still serve and hold exactly the well-formed mappings.
    for h in &plan.hosts {
        let s = status(&name, &h.name);
        assert!(s.store_connected);
        assert_eq!(s.mappings, 3, "{}", h.name);
    }
    let log =
        std::fs::read_to_string(agents::run_dir(&name).join("agent-site1.log")).unwrap_or_default();
    assert!(
        log.contains("/ilanet/v1/hosts/site2/mappings/not-an-address"),
        "the key is named in the log: {log}"
    );
}

#[test]
#[ignore = "needs root: network namespaces, eBPF, etcd"]
fn bad_requests_are_refused_and_change_nothing() {
    let name = lab_name("bad");
    let (_c, plan) = up(&name, 2, 1, StoreKind::Embedded, 10);
    let before: Vec<_> = plan.hosts.iter().map(|h| status(&name, &h.name)).collect();
    let taken = plan.hosts[1].containers[0].clone();
    // Duplicate name (on another host).
    let err = add(&name, "site1", &taken.name).expect_err("duplicate");
    assert!(err.to_string().contains("in use on host 'site2'"), "{err}");
    // Address in use.
    let err = agents::call(
        &name,
        "site1",
        &Request::EndpointAdd {
            name: "thief".into(),
            tenant: None,
            identifier: Some(taken.identifier),
            replace: false,
            labels: BTreeMap::new(),
        },
    )
    .expect_err("address in use");
    assert!(err.to_string().contains("is in use by endpoint"), "{err}");
    // Unknown host (CLI).
    let out = Command::new(BIN)
        .args(["endpoint", "add", "x", "--host", "mars", "--lab", &name])
        .output()
        .expect("cli");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown host 'mars'"));
    // Malformed request on the socket.
    let err = agent::api::call(
        &agents::socket_path(&name, "site1"),
        &Request::EndpointDel {
            name: "nope".into(),
            keep_mapping: false,
        },
        T,
    )
    .expect_err("no such endpoint");
    assert!(err.to_string().contains("no endpoint 'nope'"), "{err}");
    let after: Vec<_> = plan.hosts.iter().map(|h| status(&name, &h.name)).collect();
    for (x, y) in before.iter().zip(&after) {
        assert_eq!(
            (x.mappings, x.endpoints, x.out_entries, x.in_entries),
            (y.mappings, y.endpoints, y.out_entries, y.in_entries)
        );
    }
    assert!(!lab::netns::exists(&format!("{name}-thief")));
}

fn add_labeled(lab: &str, host: &str, name: &str, app: &str) -> LocalEndpoint {
    add_with(
        lab,
        host,
        name,
        [("app".to_string(), app.to_string())].into(),
    )
    .unwrap_or_else(|e| panic!("adding {name}: {e}"))
}

fn policy_names(lab: &str, host: &str) -> Vec<String> {
    let rows: Vec<agent::api::PolicyRow> =
        serde_json::from_value(agents::call(lab, host, &Request::PolicyList).expect("list"))
            .expect("rows");
    rows.into_iter().map(|r| r.name).collect()
}

fn alive(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty())
}

/// Number of POLICY_EP entries in a host's pinned map.
fn policy_eps(lab: &str, host: &str) -> usize {
    HostMaps::open_pinned(&state::host_pin_dir(lab, host))
        .and_then(|m| m.policy_eps())
        .map(|e| e.len())
        .unwrap_or(0)
}

#[test]
#[ignore = "needs root: network namespaces, eBPF, etcd"]
fn restarting_the_embedded_agent_keeps_policies_identities_and_new_flows() {
    let name = lab_name("persist");
    let (_c, plan) = up(&name, 2, 0, StoreKind::Embedded, 10);
    let client = add_labeled(&name, "site1", "client", "client");
    let server = add_labeled(&name, "site2", "server", "server");
    let policy = "{\"apiVersion\":\"cilium.io/v2\",\"kind\":\"CiliumNetworkPolicy\",\
        \"metadata\":{\"name\":\"to-server\"},\"spec\":{\"endpointSelector\":{\"matchLabels\":\
        {\"app\":\"server\"}},\"ingress\":[{\"fromEndpoints\":[{\"matchLabels\":{\"app\":\"client\"}}],\
        \"toPorts\":[{\"ports\":[{\"port\":\"5201\",\"protocol\":\"tcp\"}]}]}]}}";
    let records = agent::policy_sync::records_for_file(
        "to-server.json",
        policy.as_bytes(),
        ila::Vnid::new(1).expect("vnid"),
    )
    .expect("policy");
    agents::call(&name, "site1", &Request::PolicyApply { records }).expect("apply");
    wait_for("the policy on both hosts", Duration::from_secs(10), || {
        plan.hosts
            .iter()
            .all(|h| policy_names(&name, &h.name) == ["to-server"])
    });
    let transfer = |port| {
        probe::tcp_transfer(
            &client.netns,
            &server.netns,
            server.sir_addr,
            port,
            20_000,
            Duration::from_secs(2),
        )
    };
    transfer(5201).expect("allowed before the restart");
    assert!(transfer(5202).is_err(), "5202 is denied");
    let before: Vec<usize> = ["site1", "site2"]
        .iter()
        .map(|h| policy_eps(&name, h))
        .collect();
    assert!(before.iter().all(|n| *n > 0), "{before:?}");

    // Watch the per-endpoint policy entries through the whole restart.
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (stop, name) = (Arc::clone(&stop), name.clone());
        std::thread::spawn(move || {
            let mut least = [usize::MAX; 2];
            while !stop.load(Ordering::Relaxed) {
                for (i, h) in ["site1", "site2"].iter().enumerate() {
                    least[i] = least[i].min(policy_eps(&name, h));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            least
        })
    };
    let pid = agent_pids(&name)[0];
    kill_and_wait(pid, libc::SIGTERM);
    transfer(5201).expect("new flows pass while the agent is down");
    start_agent(&name, &["--store", "embedded"]);
    lab::agents::wait_ready(&plan).expect("ready");
    wait_for("a resync on both hosts", Duration::from_secs(10), || {
        plan.hosts
            .iter()
            .all(|h| status(&name, &h.name).resyncs > 0)
    });
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let least = watcher.join().expect("watcher");
    assert_eq!(
        least.to_vec(),
        before,
        "POLICY_EP entries dropped during the restart"
    );
    for h in &plan.hosts {
        assert_eq!(policy_names(&name, &h.name), ["to-server"], "{}", h.name);
    }
    transfer(5201).expect("new flows pass after the restart");
    assert!(transfer(5202).is_err(), "5202 is still denied");
}

#[test]
#[ignore = "needs root: network namespaces, eBPF, etcd"]
fn an_agent_started_by_hand_is_stopped_by_lab_down() {
    let name = lab_name("hand");
    let (c, _plan) = up(&name, 1, 0, StoreKind::Embedded, 10);
    let pid = agent_pids(&name)[0];
    kill_and_wait(pid, libc::SIGKILL);
    // Started as a user would, not recorded by the lab.
    let child = Command::new(BIN)
        .args(["agent", "--lab", &name])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let hand = child.id();
    wait_for("the hand-started agent", Duration::from_secs(10), || {
        agents::call(&name, "site1", &Request::Status).is_ok()
    });
    drop(c);
    let mut child = child;
    let deadline = Instant::now() + Duration::from_secs(10);
    let exited = loop {
        // `lab down` reaps the processes it stops when they are its children (ECHILD here).
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => break true,
            Ok(None) if Instant::now() > deadline => break false,
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    if !exited {
        kill(hand, libc::SIGKILL);
        let _ = child.wait();
    }
    assert!(exited, "lab down left the agent it did not start running");
}

#[test]
#[ignore = "needs root: network namespaces, eBPF, etcd"]
fn a_flood_of_connections_leaves_the_agent_serving() {
    let name = lab_name("flood");
    let (_c, _plan) = up(&name, 1, 0, StoreKind::Embedded, 10);
    let pid = agent_pids(&name)[0];
    // Fewer descriptors than the flood: before, the first failed accept ended the agent.
    let lim = libc::rlimit {
        rlim_cur: 400,
        rlim_max: 400,
    };
    // SAFETY: prlimit on the lab's agent with a valid limit struct.
    let rc = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            &lim,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0, "prlimit");
    let socket = agents::socket_path(&name, "site1");
    let mut flood = Vec::new();
    for _ in 0..1500 {
        if let Ok(s) = std::os::unix::net::UnixStream::connect(&socket) {
            flood.push(s);
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(alive(pid), "the agent died under the flood");
    drop(flood);
    wait_for("the agent to answer again", Duration::from_secs(10), || {
        agents::call(&name, "site1", &Request::Status).is_ok()
    });

    // Unfinished giant requests: the shared buffer budget refuses some instead of growing.
    let chunk = vec![b'x'; 1 << 20];
    let mut writers = Vec::new();
    for _ in 0..4 {
        let socket = socket.clone();
        let chunk = chunk.clone();
        writers.push(std::thread::spawn(move || {
            let mut s = std::os::unix::net::UnixStream::connect(&socket).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(20))).ok();
            for _ in 0..60 {
                if s.write_all(&chunk).is_err() {
                    break;
                }
            }
            // Refused connections were answered before being closed; the others wait.
            s.set_read_timeout(Some(Duration::from_secs(2))).ok();
            let mut reply = String::new();
            let _ = s.read_to_string(&mut reply);
            (s, reply)
        }));
    }
    let replies: Vec<_> = writers
        .into_iter()
        .map(|w| w.join().expect("writer"))
        .collect();
    let busy = replies.iter().filter(|(_, r)| r.contains("busy")).count();
    assert!(
        busy >= 1,
        "no request was refused: {:?}",
        replies.iter().map(|(_, r)| r).collect::<Vec<_>>()
    );
    drop(replies);
    assert!(alive(pid));
    wait_for(
        "the agent to answer after the giants",
        Duration::from_secs(10),
        || agents::call(&name, "site1", &Request::Status).is_ok(),
    );
}

fn netns_with_prefix(prefix: &str) -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
#[ignore = "needs root: network namespaces, eBPF, etcd"]
fn sigkill_during_endpoint_add_leaves_no_namespace_behind() {
    let name = lab_name("kill9");
    let (c, plan) = up(&name, 1, 0, StoreKind::Embedded, 10);
    for i in 0..8u64 {
        let ep = format!("k{i}");
        let adder = {
            let (name, ep) = (name.clone(), ep.clone());
            std::thread::spawn(move || add(&name, "site1", &ep).is_ok())
        };
        std::thread::sleep(Duration::from_millis(i * 5 % 30));
        let pid = *agent_pids(&name).last().expect("agent");
        kill(pid, libc::SIGKILL);
        wait_for("the agent to die", Duration::from_secs(5), || !alive(pid));
        let _ = adder.join();
        start_agent(&name, &["--store", "embedded"]);
        lab::agents::wait_ready(&plan).expect("ready");
        // Every endpoint namespace there is one the agent knows, and the other way round.
        let listed: Vec<LocalEndpoint> = serde_json::from_value(
            agents::call(&name, "site1", &Request::EndpointList).expect("list"),
        )
        .expect("json");
        let mut known: Vec<String> = listed.iter().map(|e| e.netns.clone()).collect();
        known.sort();
        let mut present: Vec<String> = netns_with_prefix(&format!("{name}-k"));
        present.sort();
        assert_eq!(present, known, "trial {i}: namespaces vs endpoints");
    }
    // Killed mid-add and not restarted: `lab down` removes what was being made.
    let adder = {
        let name = name.clone();
        std::thread::spawn(move || add(&name, "site1", "last").is_ok())
    };
    std::thread::sleep(Duration::from_millis(3));
    let pid = *agent_pids(&name).last().expect("agent");
    kill(pid, libc::SIGKILL);
    let _ = adder.join();
    drop(c);
    assert_eq!(netns_with_prefix(&format!("{name}-")), Vec::<String>::new());
}

#[test]
#[ignore = "needs root: network namespaces, eBPF, etcd"]
fn endpoint_names_that_clash_say_what_they_clash_with() {
    let name = lab_name("clash");
    let (_c, _plan) = up(&name, 2, 0, StoreKind::Embedded, 10);
    for taken in ["site1", "site2", "underlay"] {
        let out = Command::new(BIN)
            .args(["endpoint", "add", taken, "--host", "site2", "--lab", &name])
            .output()
            .expect("cli");
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!out.status.success(), "{taken}: {err}");
        assert!(err.contains("taken by lab"), "{taken}: {err}");
        assert!(!err.contains("ip netns del"), "{taken}: {err}");
    }
    assert!(
        lab::netns::exists(&format!("{name}-site1")),
        "the host stays"
    );
    // The same name on two hosts at once: one wins, the other is told why.
    for i in 0..5 {
        let ep = format!("dup{i}");
        let both: Vec<_> = ["site1", "site2"]
            .into_iter()
            .map(|h| {
                let (name, ep) = (name.clone(), ep.clone());
                std::thread::spawn(move || (h, add(&name, h, &ep)))
            })
            .collect();
        let results: Vec<_> = both.into_iter().map(|t| t.join().expect("add")).collect();
        let won: Vec<_> = results.iter().filter(|(_, r)| r.is_ok()).collect();
        assert_eq!(won.len(), 1, "{ep}: {results:?}");
        for (h, r) in &results {
            if let Err(e) = r {
                let msg = e.to_string();
                assert!(
                    msg.contains("in use") || msg.contains("taken"),
                    "{ep} on {h}: {msg}"
                );
                assert!(!msg.contains("ip netns del"), "{ep} on {h}: {msg}");
            }
        }
        let winner = won[0].0;
        let listed: Vec<LocalEndpoint> = serde_json::from_value(
            agents::call(&name, winner, &Request::EndpointList).expect("list"),
        )
        .expect("json");
        assert!(listed.iter().any(|e| e.name == ep), "{ep} on {winner}");
        assert!(lab::netns::exists(&format!("{name}-{ep}")));
    }
}

#[test]
#[ignore = "needs root: network namespaces, eBPF, etcd"]
fn records_deleted_behind_the_owners_back_are_written_again() {
    let name = lab_name("reassert");
    let (_c, plan) = up(&name, 2, 1, StoreKind::Etcd, 10);
    let etcdctl = |args: &[&str]| etcdctl(&name, args);
    let (a, b) = (&plan.hosts[0].containers[0], &plan.hosts[1].containers[0]);
    let key = format!("/ilanet/v1/hosts/site2/mappings/{}", b.sir_addr);
    etcdctl(&["del", &key]);
    etcdctl(&["del", "/ilanet/v1/hosts/site2/host"]);
    wait_for(
        "the mapping back in the store",
        Duration::from_secs(5),
        || etcdctl(&["get", &key, "--print-value-only"]).contains("site2"),
    );
    wait_for("the host record back", Duration::from_secs(5), || {
        etcdctl(&["get", "/ilanet/v1/hosts/site2/host", "--print-value-only"]).contains("site2")
    });
    wait_for(
        "site1 to hold the mapping again",
        Duration::from_secs(5),
        || out_map(&name, "site1").contains(&b.sir_addr),
    );
    probe::ping(&a.netns, b.sir_addr, T).expect("reachable again");
}

#[test]
#[ignore = "needs root: network namespaces, eBPF, etcd"]
fn a_namespace_cut_between_its_file_and_its_mount_is_removed_on_restart() {
    let name = lab_name("half");
    let (_c, plan) = up(&name, 1, 0, StoreKind::Embedded, 10);
    let pid = agent_pids(&name)[0];
    kill_and_wait(pid, libc::SIGKILL);
    // What a SIGKILL between creating /run/netns/<ns> and mounting the namespace on it leaves:
    // a plain file, and the agent's record of the endpoint being created.
    let ns = format!("{name}-half");
    struct RemoveFile(String);
    impl Drop for RemoveFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _file = RemoveFile(format!("/run/netns/{ns}"));
    std::fs::write(format!("/run/netns/{ns}"), b"").expect("half-made namespace file");
    let cfg = agents::agent_config(&plan, &plan.hosts[0], Duration::from_secs(10));
    let mut record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&cfg.state_file).expect("state")).expect("json");
    record["creating"] = serde_json::json!([{
        "name": "half",
        "netns": ns,
        "host_ifname": agent::endpoint::host_ifname("half"),
        "owns_netns": true
    }]);
    std::fs::write(&cfg.state_file, serde_json::to_vec(&record).expect("json")).expect("state");
    start_agent(&name, &["--store", "embedded"]);
    lab::agents::wait_ready(&plan).expect("ready");
    assert!(
        !std::path::Path::new(&format!("/run/netns/{ns}")).exists(),
        "the half-made namespace file is still there"
    );
}
