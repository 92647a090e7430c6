//! `ilanet agent --config` outside any lab, as on a real machine: the agent serves the network
//! namespace it runs in (here an emulated machine entered with nsenter), and the CLI talks to
//! it with `--socket`. Needs root.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::text;

const BIN: &str = env!("CARGO_BIN_EXE_ilanet");

/// One emulated machine: a namespace with an uplink, a scratch directory, pins, and the agent.
struct Machine {
    ns: String,
    dir: PathBuf,
    pins: PathBuf,
    agent: Option<Child>,
}

impl Machine {
    fn new(tag: &str) -> Self {
        let ns = format!("h{}-{tag}", std::process::id());
        let dir = std::env::temp_dir().join(format!("ilanet-host-{}-{tag}", std::process::id()));
        let pins = PathBuf::from(format!(
            "/sys/fs/bpf/ilanet-test-{}-{tag}",
            std::process::id()
        ));
        let m = Machine {
            ns,
            dir,
            pins,
            agent: None,
        };
        std::fs::create_dir_all(&m.dir).expect("dir");
        let ip = |args: &[&str]| {
            let o = Command::new("ip").args(args).output().expect("ip");
            assert!(o.status.success(), "ip {args:?}: {}", text(&o));
        };
        ip(&["netns", "add", &m.ns]);
        ip(&[
            "-n", &m.ns, "link", "add", "up0", "type", "veth", "peer", "name", "up1",
        ]);
        ip(&["-n", &m.ns, "link", "set", "up0", "up"]);
        ip(&["-n", &m.ns, "link", "set", "up1", "up"]);
        m
    }

    fn config(&self, uplink: &str) -> PathBuf {
        let path = self.dir.join("agent.yaml");
        std::fs::write(
            &path,
            format!(
                "host: box1\nuplink: {uplink}\nlocator: 2001:db8:77::/64\nunderlay: 2001:db8:ffff:77::2\n\
                 tenants:\n  - name: research\n    vnid: 1\n    sir_prefix: fd00:dead:beef::/64\n\
                 store:\n  kind: embedded\nsocket: {}\nstate_dir: {}\npin_dir: {}\nlog_level: info\n",
                self.socket().display(),
                self.dir.join("state").display(),
                self.pins.display()
            ),
        )
        .expect("config");
        path
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("agent.sock")
    }

    fn start(&mut self, config: &Path) {
        let log = std::fs::File::create(self.dir.join("agent.log")).expect("log");
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.ns))
            .arg(BIN)
            .args(["agent", "--config"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the agent");
        self.agent = Some(child);
        let start = Instant::now();
        loop {
            let o = ilanet(&[
                "agent",
                "status",
                "--socket",
                &self.socket().display().to_string(),
                "--json",
            ]);
            if o.status.success() && text(&o).contains("\"store_connected\": true") {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "agent not ready: {}\nlog: {}",
                text(&o),
                std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.agent.take() {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        self.stop();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
        let _ = std::fs::remove_dir_all(&self.pins);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn ilanet(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("run ilanet")
}

#[test]
#[ignore = "needs root: network namespaces, eBPF"]
fn a_host_agent_runs_from_its_config_and_keeps_policies_across_restarts() {
    let mut m = Machine::new("cfg");
    // A wrong uplink is refused, naming the field and what the host has.
    let bad = m.config("eth9");
    let o = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", m.ns))
        .arg(BIN)
        .args(["agent", "--config"])
        .arg(&bad)
        .output()
        .expect("agent");
    assert!(!o.status.success());
    let msg = text(&o);
    assert!(
        msg.contains("uplink") && msg.contains("eth9") && msg.contains("up0"),
        "{msg}"
    );

    let cfg = m.config("up0");
    m.start(&cfg);
    let socket = m.socket().display().to_string();
    let status = ilanet(&["agent", "status", "--socket", &socket, "--json"]);
    assert!(status.status.success(), "{}", text(&status));
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).expect("json");
    assert_eq!(v[0]["host"], "box1");
    assert_eq!(v[0]["locator"], "2001:db8:77::/64");
    // The socket is root's alone.
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(m.socket()).expect("socket").permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);

    let policy = m.dir.join("p.yaml");
    std::fs::write(
        &policy,
        "- endpointSelector:\n    matchLabels:\n      app: db\n  ingress:\n  - fromEndpoints:\n    - matchLabels:\n        app: web\n",
    )
    .expect("policy");
    let o = ilanet(&[
        "policy",
        "apply",
        &policy.display().to_string(),
        "--socket",
        &socket,
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let list = || {
        let o = ilanet(&["policy", "list", "--socket", &socket, "--json"]);
        assert!(o.status.success(), "{}", text(&o));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).expect("json")
    };
    assert_eq!(list()[0]["name"], "p");
    // A restart finds the policy in the embedded store's data directory.
    m.stop();
    m.start(&cfg);
    assert_eq!(list()[0]["name"], "p", "policy lost across the restart");
    let o = ilanet(&["mappings", "--socket", &socket, "--json"]);
    assert!(o.status.success(), "{}", text(&o));
}
