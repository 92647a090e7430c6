//! Real containers on emulated machines: two host namespaces, one host agent process each
//! (started from a configuration file, etcd store), podman 4.3 with runc creating containers
//! through the `ilanet-cni` plugin in each host. Needs root, podman, runc and busybox-static.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use agent::api::Request;
use agent::reconcile::LocalEndpoint;
use lab::agents::{self, StoreKind};
use lab::{probe, LabSpec};

const BIN: &str = env!("CARGO_BIN_EXE_ilanet");

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
}

impl Machines {
    fn podman(&self, host: &str, args: &[&str], cni_args: Option<&str>) -> Output {
        let d = &self.dir;
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}-{host}", self.lab))
            .arg("podman")
            .args(["--network-backend", "cni"])
            .arg("--network-config-dir")
            .arg(d.join(format!("cni-{host}")))
            .arg("--root")
            .arg(d.join(format!("root-{host}")))
            .arg("--runroot")
            .arg(d.join(format!("runroot-{host}")))
            .args(["--runtime", "runc", "--cgroup-manager", "cgroupfs"])
            .args(["--events-backend", "none"])
            .args(args)
            .env("CONTAINERS_CONF", d.join("containers.conf"))
            .env_remove("CNI_ARGS");
        if let Some(a) = cni_args {
            cmd.env("CNI_ARGS", a);
        }
        cmd.output().expect("run podman")
    }

    fn run(&self, host: &str, name: &str, labels: &str) -> String {
        let rootfs = self.dir.join("rootfs");
        let out = self.podman(
            host,
            &[
                "run",
                "-d",
                "--name",
                name,
                "--network",
                "ilanet",
                "--ulimit",
                "nofile=1024:1024",
                "--ulimit",
                "nproc=4096:4096",
                "--rootfs",
                &rootfs.display().to_string(),
                "/bin/busybox",
                "sleep",
                "3600",
            ],
            Some(&format!("ILANET_LABELS={labels}")),
        );
        assert!(
            out.status.success(),
            "podman run {name} on {host}: {}",
            text(&out)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
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
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A busybox root: enough for `sleep` and `ping` inside the container.
fn make_rootfs(dir: &Path) {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).expect("rootfs");
    for d in ["proc", "sys", "dev", "etc", "tmp"] {
        std::fs::create_dir_all(dir.join(d)).expect("rootfs");
    }
    std::fs::copy("/bin/busybox", bin.join("busybox"))
        .expect("/bin/busybox (Debian package busybox-static)");
    for applet in ["sh", "sleep", "ping", "ip"] {
        let _ = std::os::unix::fs::symlink("busybox", bin.join(applet));
    }
}

#[test]
fn podman_containers_on_two_machines_reach_each_other_over_ila() {
    let lab = format!("p{}", std::process::id());
    let dir = std::env::temp_dir().join(format!("ilanet-podman-{}", std::process::id()));
    let m = Machines {
        lab: lab.clone(),
        dir: dir.clone(),
        hosts: vec!["site1".into(), "site2".into()],
    };
    std::fs::create_dir_all(dir.join("plugins")).expect("dir");
    std::fs::copy(plugin_binary(), dir.join("plugins/ilanet-cni")).expect("plugin");
    make_rootfs(&dir.join("rootfs"));
    std::fs::write(
        dir.join("containers.conf"),
        format!(
            "[network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{}\"]\n[engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"none\"\n",
            dir.join("plugins").display()
        ),
    )
    .expect("containers.conf");

    // Two emulated machines with etcd: each host agent runs from its own configuration file.
    let mut spec = LabSpec::generic(&lab, 2, 0);
    spec.agent_binary = Some(BIN.into());
    spec.store = StoreKind::Etcd;
    lab::up(&spec).expect("lab up");
    for h in &m.hosts {
        let conf = dir.join(format!("cni-{h}"));
        std::fs::create_dir_all(&conf).expect("cni dir");
        std::fs::write(
            conf.join("ilanet.conflist"),
            format!(
                "{{\"cniVersion\":\"1.0.0\",\"name\":\"ilanet\",\"plugins\":[{{\"type\":\"ilanet-cni\",\"socket\":\"{}\"}}]}}",
                agents::socket_path(&lab, h).display()
            ),
        )
        .expect("conflist");
    }

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
    agents::call(&lab, "site2", &Request::PolicyApply { records }).expect("apply");
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
