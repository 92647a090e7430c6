//! Real containers on emulated machines: two host namespaces, one host agent process each
//! (started from a configuration file, etcd store), podman 4.3 with runc creating containers
//! through the `ilanet-cni` plugin in each host. Needs root, podman, runc and busybox-static.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use agent::api::Request;
use agent::reconcile::LocalEndpoint;
use lab::agents::{self, StoreKind};
use lab::{probe, LabSpec};

mod common;
use common::{text, wait_for};

const BIN: &str = env!("CARGO_BIN_EXE_ilanet");

/// Containers the agent restarts under in the fault test.
const CLIENTS: usize = 50;

/// The plugin binary, built beside `ilanet` by `cargo test --workspace` (package `cni`).
fn plugin_binary() -> PathBuf {
    let p = Path::new(BIN).with_file_name("ilanet-cni");
    assert!(
        p.exists(),
        "{} is missing: build it first (cargo build -p cni, or cargo test --workspace)",
        p.display()
    );
    p
}

/// Everything the test made, removed on drop (also when it fails): containers, podman's
/// storage and configuration, the lab.
struct Machines {
    lab: String,
    dir: PathBuf,
    hosts: Vec<String>,
    podman: lab::podman::Podman,
}

impl Machines {
    fn podman(&self, host: &str, args: &[&str], cni_args: Option<&str>) -> Output {
        let ns = lab::netns::path(&format!("{}-{host}", self.lab));
        let mut cmd = self.podman.command(host, &ns);
        cmd.args(args);
        if let Some(a) = cni_args {
            cmd.env("CNI_ARGS", a);
        }
        cmd.output().expect("run podman")
    }

    fn run(&self, host: &str, name: &str, labels: &str) -> String {
        let out = self.try_run(host, name, labels);
        assert!(
            out.status.success(),
            "podman run {name} on {host}: {}",
            text(&out)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn try_run(&self, host: &str, name: &str, labels: &str) -> Output {
        let labels: Vec<(String, String)> = labels
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let ns = lab::netns::path(&format!("{}-{host}", self.lab));
        self.podman
            .run(host, &ns, name, "ilanet", &labels)
            .expect("run podman")
    }

    /// Kills a host's agent (SIGKILL: no chance to clean up) and waits until it is gone.
    fn kill_agent(&self, host: &str) {
        let pid = self.agent_pid(host);
        // SAFETY: kill(2) on the agent process the lab recorded for this host.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        wait_for("the agent to die", Duration::from_secs(5), || {
            std::fs::read(format!("/proc/{pid}/cmdline")).map_or(true, |c| c.is_empty())
        });
    }

    fn agent_pid(&self, host: &str) -> u32 {
        let st = lab::state::LabState::load(&self.lab)
            .expect("load")
            .expect("record");
        let cfg = agents::run_dir(&self.lab).join(format!("{host}.yaml"));
        let cfg = cfg.display().to_string();
        st.agents
            .iter()
            .rev()
            .copied()
            .find(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == cfg.as_bytes()))
            })
            .unwrap_or_else(|| panic!("no running agent for {host}"))
    }

    /// Starts a host's agent again from its configuration file, as systemd would, and waits
    /// until it is connected to the store.
    #[allow(clippy::zombie_processes)]
    fn start_agent(&self, host: &str) {
        let cfg = agents::run_dir(&self.lab).join(format!("{host}.yaml"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(agents::run_dir(&self.lab).join(format!("agent-{host}.log")))
            .expect("log");
        let child = Command::new(BIN)
            .args(["agent", "--config"])
            .arg(&cfg)
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start agent");
        // Recorded so that `lab down` stops it (and reaps it: it is our child).
        let mut st = lab::state::LabState::load(&self.lab)
            .expect("load")
            .expect("record");
        st.agents.push(child.id());
        st.save().expect("save");
        wait_for("the agent to be back", Duration::from_secs(20), || {
            agents::call(&self.lab, host, &Request::Status)
                .ok()
                .and_then(|v| serde_json::from_value::<agent::api::AgentStatus>(v).ok())
                .is_some_and(|s| s.store_connected)
        });
    }

    fn host_veths(&self, host: &str) -> Vec<String> {
        lab::link::names_in(&format!("{}-{host}", self.lab))
            .expect("links")
            .into_iter()
            .filter(|n| n.starts_with("lxc"))
            .collect()
    }

    fn knows(&self, host: &str, addr: std::net::Ipv6Addr) -> bool {
        let v = agents::call(&self.lab, host, &Request::Mappings).expect("mappings");
        let rows: Vec<agent::api::MappingRow> = serde_json::from_value(v).expect("json");
        rows.iter().any(|r| r.sir_addr == addr && r.installed)
    }

    fn endpoint_of(&self, host: &str, container_id: &str) -> Option<LocalEndpoint> {
        let v = agents::call(&self.lab, host, &Request::EndpointList).expect("list");
        let eps: Vec<LocalEndpoint> = serde_json::from_value(v).expect("json");
        eps.into_iter()
            .find(|e| e.container_id.as_deref() == Some(container_id))
    }
}

impl Drop for Machines {
    fn drop(&mut self) {
        for h in &self.hosts {
            let _ = self.podman(h, &["rm", "-f", "-a", "-t", "0"], None);
        }
        let _ = lab::down(&self.lab);
        lab::podman::unmount_below(&self.dir);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Two emulated machines on etcd, each host agent running from its own configuration file,
/// and podman set up for each with the plugin and a per-run storage. No pids limit: a cgroup
/// tree whose root delegates no controllers (a fresh minimal root) has no pids.max to write.
fn machines(tag: &str) -> Machines {
    let lab = format!("p{}{tag}", std::process::id());
    let dir = std::env::temp_dir().join(format!("ilanet-podman-{}-{tag}", std::process::id()));
    let m = Machines {
        lab: lab.clone(),
        dir: dir.clone(),
        hosts: vec!["site1".into(), "site2".into()],
        podman: lab::podman::Podman { dir: dir.clone() },
    };
    std::fs::create_dir_all(&dir).expect("dir");
    lab::podman::Podman::prepare(&dir, &plugin_binary()).expect("podman set up");
    let mut spec = LabSpec::generic(&lab, 2, 0);
    spec.agent_binary = Some(BIN.into());
    spec.store = StoreKind::Etcd;
    lab::up(&spec).expect("lab up");
    for h in &m.hosts {
        m.podman
            .write_network(h, "ilanet", &agents::socket_path(&lab, h), None)
            .expect("conflist");
    }
    m
}

#[test]
#[ignore = "needs root: network namespaces, eBPF, podman, etcd"]
fn podman_containers_on_two_machines_reach_each_other_over_ila() {
    let m = machines("up");
    let lab = m.lab.clone();

    let client_id = m.run("site1", "client", "app=client");
    let server_id = m.run("site2", "server", "app=server");
    let client = m
        .endpoint_of("site1", &client_id)
        .expect("client attached on site1");
    let server = m
        .endpoint_of("site2", &server_id)
        .expect("server attached on site2");
    assert_eq!(client.labels.get("app").map(String::as_str), Some("client"));
    assert_eq!(
        server.labels.get("name").map(String::as_str),
        Some("server")
    );
    wait_for(
        "site1 to know the server's mapping",
        Duration::from_secs(10),
        || {
            let v = agents::call(&lab, "site1", &Request::Mappings).expect("mappings");
            let rows: Vec<agent::api::MappingRow> = serde_json::from_value(v).expect("json");
            rows.iter()
                .any(|r| r.sir_addr == server.sir_addr && r.installed)
        },
    );

    // ICMPv6 from inside the container, as its own process sees the network.
    let ping = m.podman(
        "site1",
        &[
            "exec",
            "client",
            "/bin/busybox",
            "ping",
            "-c",
            "2",
            "-W",
            "3",
            &server.sir_addr.to_string(),
        ],
        None,
    );
    assert!(
        ping.status.success(),
        "ping from the client container: {}",
        text(&ping)
    );
    // TCP whose content is echoed back and compared, between the containers' namespaces.
    let tcp = |port| {
        probe::tcp_transfer(
            &client.netns,
            &server.netns,
            server.sir_addr,
            port,
            100_000,
            Duration::from_secs(3),
        )
    };
    tcp(5201).expect("verified TCP client -> server");

    // Selected by policy through the labels the runtime passed.
    let policy = "{\"apiVersion\":\"cilium.io/v2\",\"kind\":\"CiliumNetworkPolicy\",\
        \"metadata\":{\"name\":\"podman-server\"},\"spec\":{\"endpointSelector\":{\"matchLabels\":\
        {\"app\":\"server\"}},\"ingress\":[{\"fromEndpoints\":[{\"matchLabels\":{\"app\":\"client\"}}],\
        \"toPorts\":[{\"ports\":[{\"port\":\"5201\",\"protocol\":\"tcp\"}]}]}]}}";
    let records = agent::policy_sync::records_for_file(
        "podman-server.json",
        policy.as_bytes(),
        ila::Vnid::new(1).expect("vnid"),
    )
    .expect("policy");
    // site2's certificate may only read policies; site1 holds the policy administrator's.
    common::assert_policy_writes_refused(&lab, "site2", &records);
    agents::call(&lab, "site1", &Request::PolicyApply { records }).expect("apply");
    lab::agents::wait_policies(
        &lab,
        &["site1", "site2"],
        &["podman-server".to_string()],
        true,
        Duration::from_secs(10),
    )
    .expect("policy in force");
    tcp(5201).expect("5201 is allowed from app=client");
    assert!(tcp(5202).is_err(), "5202 must be denied by the policy");

    // CHECK through the plugin's own API path: the agent verifies the attachment.
    let check = agents::call(
        &lab,
        "site2",
        &Request::CniCheck {
            container_id: server_id.clone(),
            ifname: "eth0".into(),
            netns: server.netns.clone(),
        },
    );
    assert!(check.is_ok(), "CHECK of a healthy attachment: {check:?}");

    // `podman rm` removes the mapping everywhere.
    let rm = m.podman("site2", &["rm", "-f", "-t", "0", "server"], None);
    assert!(rm.status.success(), "{}", text(&rm));
    assert!(
        m.endpoint_of("site2", &server_id).is_none(),
        "endpoint gone on site2"
    );
    wait_for(
        "site1 to forget the server",
        Duration::from_secs(10),
        || {
            let v = agents::call(&lab, "site1", &Request::Mappings).expect("mappings");
            let rows: Vec<agent::api::MappingRow> = serde_json::from_value(v).expect("json");
            !rows.iter().any(|r| r.sir_addr == server.sir_addr)
        },
    );
}

#[test]
#[ignore = "needs root: network namespaces, eBPF, podman, etcd"]
fn podman_attachments_survive_agent_faults() {
    let m = machines("fault");

    // The agent is down: ADD fails with a CNI error and leaves nothing half-made.
    m.kill_agent("site1");
    let out = m.try_run("site1", "orphan", "app=orphan");
    assert!(
        !out.status.success(),
        "podman run without an agent: {}",
        text(&out)
    );
    assert!(
        text(&out).contains("ilanet"),
        "the plugin's error reaches the user: {}",
        text(&out)
    );
    assert_eq!(
        m.host_veths("site1"),
        Vec::<String>::new(),
        "no veth left behind"
    );
    let _ = m.podman("site1", &["rm", "-f", "-t", "0", "orphan"], None);
    m.start_agent("site1");

    // Containers with a TCP stream running: the agent restarts under them.
    let server_id = m.run("site2", "server", "app=server");
    let server = m.endpoint_of("site2", &server_id).expect("server");
    // 50 containers (the figure), started a few at a time as a runtime under load
    // would; podman serialises on its own locks, so more at once would not be faster.
    let mut clients = Vec::new();
    for batch in (0..CLIENTS).collect::<Vec<_>>().chunks(4) {
        let ids: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = batch
                .iter()
                .map(|i| {
                    let m = &m;
                    s.spawn(move || m.run("site1", &format!("c{i}"), "app=client"))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("podman run thread"))
                .collect()
        });
        for id in ids {
            clients.push(m.endpoint_of("site1", &id).expect("client"));
        }
    }
    for c in &clients {
        wait_for("site2 to know the client", Duration::from_secs(10), || {
            m.knows("site2", c.sir_addr)
        });
    }
    wait_for("site1 to know the server", Duration::from_secs(10), || {
        m.knows("site1", server.sir_addr)
    });
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stream = probe::echo_stream(
        &clients[0].netns,
        &server.netns,
        server.sir_addr,
        7010,
        std::sync::Arc::clone(&stop),
    )
    .expect("stream");
    std::thread::sleep(Duration::from_millis(300));
    m.kill_agent("site1");
    std::thread::sleep(Duration::from_millis(300));
    m.start_agent("site1");
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let echoed = stream
        .join()
        .expect("join")
        .expect("the stream survived the restart");
    assert!(echoed > 10_000, "{echoed} bytes");
    for c in &clients {
        probe::ping(&server.netns, c.sir_addr, Duration::from_secs(3))
            .unwrap_or_else(|e| panic!("{} unreachable after the restart: {e}", c.name));
    }
    assert_eq!(m.host_veths("site1").len(), clients.len());

    // `podman rm -f` while the agent is down: cleaned up once it returns.
    let gone = clients.pop().expect("a client");
    m.kill_agent("site1");
    let last = format!("c{}", CLIENTS - 1);
    let rm = m.podman("site1", &["rm", "-f", "-t", "0", &last], None);
    assert!(rm.status.success(), "{}", text(&rm));
    m.start_agent("site1");
    let listed: Vec<LocalEndpoint> = serde_json::from_value(
        agents::call(&m.lab, "site1", &Request::EndpointList).expect("list"),
    )
    .expect("json");
    assert!(
        !listed.iter().any(|e| e.name == gone.name),
        "the removed container's endpoint stays"
    );
    assert_eq!(m.host_veths("site1").len(), clients.len());
    // Its mapping goes with the dead agent's lease.
    wait_for(
        "site2 to forget the removed container",
        Duration::from_secs(25),
        || !m.knows("site2", gone.sir_addr),
    );
    for c in &clients {
        assert!(m.knows("site2", c.sir_addr), "{} lost its mapping", c.name);
    }
}
