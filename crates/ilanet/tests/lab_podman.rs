//! `ilanet lab up --runtime podman`: the lab's containers made by podman 4.3 + runc through the
//! `ilanet-cni` plugin in each emulated host, probed across hosts, selected by policy through
//! the plan's labels, and removed without a trace by `lab down` — also after `lab up` was killed
//! half-way. Needs root, podman, runc, busybox-static and etcd.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use agent::api::Request;
use lab::agents;
use lab::plan::Plan;
use lab::state::LabState;
use lab::{netns, probe};

mod common;
use common::{text, wait_for};

const BIN: &str = env!("CARGO_BIN_EXE_ilanet");

fn lab_name(tag: &str) -> String {
    format!("q{}{tag}", std::process::id())
}

fn ilanet(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("run ilanet")
}

fn require_plugin() {
    let p = Path::new(BIN).with_file_name("ilanet-cni");
    assert!(
        p.exists(),
        "{} is missing: build it first (cargo build -p cni, or cargo test --workspace)",
        p.display()
    );
}

/// Removes the lab when the test ends, also when it fails.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = ilanet(&["lab", "down", "--name", &self.0]);
    }
}

/// Everything of a lab that must be gone after `lab down`.
struct Traces {
    lab: String,
    netns: Vec<String>,
    agents: Vec<u32>,
}

impl Traces {
    fn of(lab: &str) -> Self {
        let st = LabState::load(lab).expect("load").expect("record");
        let mut netns: Vec<String> = st.plan.netns_names();
        netns.extend(st.created_netns.iter().cloned());
        let mut agents = st.agents.clone();
        agents.extend(
            st.etcd
                .iter()
                .flat_map(|e| e.members.iter().filter_map(|m| m.pid)),
        );
        Self {
            lab: lab.to_string(),
            netns,
            agents,
        }
    }

    fn assert_gone(&self) {
        for ns in &self.netns {
            assert!(!netns::exists(ns), "namespace {ns} is left");
        }
        let run = agents::run_dir(&self.lab);
        let mounts = lab::podman::mounts_below(&run);
        assert!(mounts.is_empty(), "mounts left: {mounts:?}");
        assert!(!run.exists(), "{} is left", run.display());
        assert!(
            LabState::load(&self.lab).expect("load").is_none(),
            "record left"
        );
        let procs = lab::podman::processes_using(&run);
        assert!(procs.is_empty(), "processes left: {procs:?}");
        for pid in &self.agents {
            let alive = std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                c.split(|b| *b == 0)
                    .any(|a| a == self.lab.as_bytes() || a.starts_with(b"--config"))
            });
            assert!(!alive, "agent or etcd process {pid} is left");
        }
        // No veth of the lab anywhere: the host and router namespaces are gone, and nothing of
        // the lab leaked into the namespace the test runs in.
        let here = netns::current_path().expect("this namespace");
        let root = lab::link::names_in(&here).expect("links");
        assert!(
            !root.iter().any(|n| n.starts_with("lxc") || n == "uplink"),
            "{root:?}"
        );
    }
}

fn plan(lab: &str) -> Plan {
    lab::plan_of(lab).expect("plan")
}

fn podman_dir(lab: &str) -> PathBuf {
    lab::podman::dir(lab)
}

#[test]
#[ignore = "needs root: network namespaces, eBPF, podman"]
fn lab_up_with_podman_on_etcd_probes_and_cleans_up() {
    require_plugin();
    let lab = lab_name("up");
    let _cleanup = Cleanup(lab.clone());
    let up = ilanet(&[
        "lab",
        "up",
        "--name",
        &lab,
        "--sites",
        "2",
        "--containers",
        "2",
        "--store",
        "etcd",
        "--runtime",
        "podman",
    ]);
    assert!(up.status.success(), "lab up: {}", text(&up));
    assert!(text(&up).contains("podman runtime"), "{}", text(&up));
    let p = plan(&lab);
    let traces = Traces::of(&lab);

    // Every container is podman's: its id and namespace path are recorded, the agent agrees.
    for h in &p.hosts {
        let v = agents::call(&lab, &h.name, &Request::EndpointList).expect("list");
        let eps: Vec<agent::reconcile::LocalEndpoint> = serde_json::from_value(v).expect("json");
        assert_eq!(eps.len(), h.containers.len(), "{eps:?}");
        for c in &h.containers {
            let id = c.container_id.as_deref().expect("a container id");
            let ep = eps
                .iter()
                .find(|e| e.container_id.as_deref() == Some(id))
                .expect("the agent's attachment of the container");
            assert_eq!(ep.sir_addr, c.sir_addr);
            assert_eq!(ep.netns, c.netns);
            assert!(c.netns.starts_with('/'), "a runtime's path: {}", c.netns);
            // Labels from the plan reach the agent through CNI_ARGS.
            assert_eq!(ep.labels.get("site"), Some(&h.name), "{:?}", ep.labels);
            assert_eq!(ep.labels.get("tenant"), Some(&c.tenant));
        }
    }
    let status = ilanet(&["lab", "status", "--name", &lab]);
    assert!(status.status.success(), "{}", text(&status));
    assert!(text(&status).contains("site2-1"), "{}", text(&status));

    // `lab exec` runs in the container's namespace: it sees the SIR address on eth0.
    let c1 = &p.hosts[0].containers[0];
    let exec = ilanet(&[
        "lab", "exec", "--name", &lab, &c1.name, "--", "ip", "-6", "addr", "show", "dev", "eth0",
    ]);
    assert!(exec.status.success(), "lab exec: {}", text(&exec));
    assert!(
        text(&exec).contains(&c1.sir_addr.to_string()),
        "{}",
        text(&exec)
    );
    let missing = ilanet(&["lab", "exec", "--name", &lab, "nope", "--", "true"]);
    assert!(!missing.status.success());
    assert!(
        text(&missing).contains("no container 'nope'"),
        "{}",
        text(&missing)
    );

    // Cross-host ICMPv6 and verified TCP between podman containers, every pair.
    let all: Vec<_> = p
        .hosts
        .iter()
        .flat_map(|h| h.containers.iter().map(move |c| (&h.name, c)))
        .collect();
    let mut port = 32100;
    for (sh, s) in &all {
        for (dh, d) in &all {
            if sh == dh {
                continue;
            }
            probe::ping(&s.netns, d.sir_addr, Duration::from_secs(3))
                .unwrap_or_else(|e| panic!("ping {} -> {}: {e}", s.name, d.name));
            probe::tcp_transfer(
                &s.netns,
                &d.netns,
                d.sir_addr,
                port,
                200_000,
                Duration::from_secs(3),
            )
            .unwrap_or_else(|e| panic!("tcp {} -> {}: {e}", s.name, d.name));
            port += 1;
        }
    }

    // Policy by the plan's labels: site1's containers may reach site2's on 5201 only.
    let policy = r#"{"apiVersion":"cilium.io/v2","kind":"CiliumNetworkPolicy",
        "metadata":{"name":"from-site1"},"spec":{"endpointSelector":{"matchLabels":{"site":"site2"}},
        "ingress":[{"fromEndpoints":[{"matchLabels":{"site":"site1"}}],
        "toPorts":[{"ports":[{"port":"5201","protocol":"tcp"}]}]}]}}"#;
    let records = agent::policy_sync::records_for_file(
        "from-site1.json",
        policy.as_bytes(),
        ila::Vnid::new(1).expect("vnid"),
    )
    .expect("policy");
    // site1 is the lab's policy administrator (the others may only read policies).
    agents::call(&lab, "site1", &Request::PolicyApply { records }).expect("apply");
    agents::wait_policies(
        &lab,
        &["site1", "site2"],
        &["from-site1".to_string()],
        true,
        Duration::from_secs(10),
    )
    .expect("policy in force");
    let (src, dst) = (&p.hosts[0].containers[0], &p.hosts[1].containers[0]);
    let tcp = |port| {
        probe::tcp_transfer(
            &src.netns,
            &dst.netns,
            dst.sir_addr,
            port,
            50_000,
            Duration::from_secs(2),
        )
    };
    tcp(5201).expect("5201 is allowed from site=site1");
    assert!(tcp(5202).is_err(), "5202 must be denied by the policy");

    let podman_netns: Vec<String> = all.iter().map(|(_, c)| c.netns.clone()).collect();
    let down = ilanet(&["lab", "down", "--name", &lab]);
    assert!(down.status.success(), "lab down: {}", text(&down));
    traces.assert_gone();
    for ns in podman_netns {
        assert!(!Path::new(&ns).exists(), "podman's namespace {ns} is left");
    }
    assert!(!podman_dir(&lab).exists());
}

/// `lab up` killed (SIGKILL) while podman is creating containers: `lab down` still removes the
/// containers, podman's storage and mounts, the agents and every namespace.
#[test]
#[ignore = "needs root: network namespaces, eBPF, podman"]
fn lab_down_cleans_a_podman_lab_whose_up_was_killed() {
    require_plugin();
    let lab = lab_name("kill");
    let _cleanup = Cleanup(lab.clone());
    let mut up = Command::new(BIN)
        .args([
            "lab",
            "up",
            "--name",
            &lab,
            "--sites",
            "2",
            "--containers",
            "4",
        ])
        .args(["--runtime", "podman"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("lab up");
    // Mid-way: some container exists (recorded), not all.
    wait_for("a first podman container", Duration::from_secs(60), || {
        LabState::load(&lab).ok().flatten().is_some_and(|s| {
            s.plan
                .hosts
                .iter()
                .flat_map(|h| &h.containers)
                .any(|c| c.container_id.is_some())
        })
    });
    up.kill().expect("kill -9 lab up");
    let _ = up.wait();
    let st = LabState::load(&lab).expect("load").expect("record");
    assert!(
        st.plan
            .hosts
            .iter()
            .flat_map(|h| &h.containers)
            .any(|c| c.container_id.is_none()),
        "killed before the last container"
    );
    let traces = Traces::of(&lab);
    let recorded: Vec<String> = st
        .plan
        .hosts
        .iter()
        .flat_map(|h| &h.containers)
        .filter(|c| c.container_id.is_some())
        .map(|c| c.netns.clone())
        .collect();
    assert!(!lab::podman::mounts_below(&podman_dir(&lab)).is_empty() || podman_dir(&lab).exists());

    let down = ilanet(&["lab", "down", "--name", &lab]);
    assert!(down.status.success(), "lab down: {}", text(&down));
    traces.assert_gone();
    for ns in recorded {
        assert!(!Path::new(&ns).exists(), "podman's namespace {ns} is left");
    }
    // A second `down` has nothing to do.
    let again = ilanet(&["lab", "down", "--name", &lab]);
    assert!(again.status.success(), "{}", text(&again));
    assert!(text(&again).contains("not up"), "{}", text(&again));
}
