//! A host agent with a `bgp` section peering with BIRD 2 (Debian's bird2) on its underlay
//! router, as at SC17: the locator is announced and seen by BIRD, BIRD's prefix lands in the
//! host's kernel table (proto 200), survives an agent crash and restart (graceful restart),
//! and goes when BIRD withdraws it. Needs root.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::text;

const BIN: &str = env!("CARGO_BIN_EXE_ilanet");

fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"))
}

fn must(cmd: &str, args: &[&str]) -> String {
    let o = run(cmd, args);
    assert!(o.status.success(), "{cmd} {args:?}: {}", text(&o));
    text(&o)
}

/// A router namespace with BIRD and a host namespace with the agent, joined by a veth.
struct Site {
    host_ns: String,
    router_ns: String,
    dir: PathBuf,
    pins: PathBuf,
    bird: Option<Child>,
    agent: Option<Child>,
}

const HOST_ADDR: &str = "2001:db8:ffff:51::2";
const ROUTER_ADDR: &str = "2001:db8:ffff:51::1";
const LOCATOR: &str = "2001:db8:1:51::/64";
const BIRD_PREFIX: &str = "2001:db8:99::/64";

impl Site {
    fn new() -> Self {
        let id = std::process::id();
        let s = Site {
            host_ns: format!("bh{id}"),
            router_ns: format!("br{id}"),
            dir: std::env::temp_dir().join(format!("ilanet-bgp-host-{id}")),
            pins: PathBuf::from(format!("/sys/fs/bpf/ilanet-test-bgp-{id}")),
            bird: None,
            agent: None,
        };
        std::fs::create_dir_all(&s.dir).expect("dir");
        must("ip", &["netns", "add", &s.host_ns]);
        must("ip", &["netns", "add", &s.router_ns]);
        must(
            "ip",
            &[
                "-n",
                &s.host_ns,
                "link",
                "add",
                "up0",
                "type",
                "veth",
                "peer",
                "name",
                "rt0",
                "netns",
                &s.router_ns,
            ],
        );
        for (ns, dev, addr) in [
            (&s.host_ns, "up0", HOST_ADDR),
            (&s.router_ns, "rt0", ROUTER_ADDR),
        ] {
            must(
                "ip",
                &[
                    "-n",
                    ns,
                    "addr",
                    "add",
                    &format!("{addr}/64"),
                    "dev",
                    dev,
                    "nodad",
                ],
            );
            must("ip", &["-n", ns, "link", "set", dev, "up"]);
            must("ip", &["-n", ns, "link", "set", "lo", "up"]);
        }
        s
    }

    fn birdc(&self, args: &[&str]) -> String {
        let sock = self.dir.join("bird.ctl").display().to_string();
        let mut all = vec!["-s", sock.as_str()];
        all.extend_from_slice(args);
        text(&run("birdc", &all))
    }

    fn start_bird(&mut self) {
        let conf = self.dir.join("bird.conf");
        std::fs::write(
            &conf,
            format!(
                "router id 10.255.0.1;\n\
                 protocol device {{}}\n\
                 protocol static s6 {{ ipv6; route {BIRD_PREFIX} unreachable; }}\n\
                 protocol bgp host1 {{\n\
                   local {ROUTER_ADDR} as 65000;\n\
                   neighbor {HOST_ADDR} as 65000;\n\
                   hold time 9;\n\
                   graceful restart on;\n\
                   ipv6 {{ import all; export all; next hop self; }};\n\
                 }}\n"
            ),
        )
        .expect("bird.conf");
        let log = std::fs::File::create(self.dir.join("bird.log")).expect("log");
        self.bird = Some(
            Command::new("nsenter")
                .arg(format!("--net=/run/netns/{}", self.router_ns))
                .args(["bird", "-f", "-c"])
                .arg(&conf)
                .arg("-s")
                .arg(self.dir.join("bird.ctl"))
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("bird (package bird2)"),
        );
    }

    fn socket(&self) -> String {
        self.dir.join("agent.sock").display().to_string()
    }

    fn start_agent(&mut self) {
        let conf = self.dir.join("agent.yaml");
        std::fs::write(
            &conf,
            format!(
                "host: bgp1\nuplink: up0\nlocator: {LOCATOR}\nunderlay: {HOST_ADDR}\n\
                 tenants:\n  - name: research\n    vnid: 1\n    sir_prefix: fd00:dead:beef::/64\n\
                 store:\n  kind: embedded\nsocket: {}\nstate_dir: {}\npin_dir: {}\n\
                 bgp:\n  asn: 65000\n  peers:\n    - address: {ROUTER_ADDR}\n      hold_time: 9\n",
                self.socket(),
                self.dir.join("state").display(),
                self.pins.display()
            ),
        )
        .expect("agent.yaml");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("agent.log"))
            .expect("log");
        self.agent = Some(
            Command::new("nsenter")
                .arg(format!("--net=/run/netns/{}", self.host_ns))
                .arg(BIN)
                .args(["agent", "--config"])
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("agent"),
        );
    }

    fn kill_agent(&mut self) {
        if let Some(mut c) = self.agent.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn kernel_routes(&self) -> String {
        must(
            "ip",
            &["-n", &self.host_ns, "-6", "route", "show", "proto", "200"],
        )
    }

    /// Waits up to 30 s for `cond`, then fails with the logs.
    fn until(&self, what: &str, cond: impl Fn(&Site) -> bool) {
        let start = Instant::now();
        while !cond(self) {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{what}: not within 30 s\nkernel: {}\nbird: {}\nagent log: {}\nbird log: {}",
                self.kernel_routes(),
                self.birdc(&["show", "route", "all"]),
                std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default(),
                std::fs::read_to_string(self.dir.join("bird.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        self.kill_agent();
        if let Some(mut b) = self.bird.take() {
            let _ = b.kill();
            let _ = b.wait();
        }
        let _ = run("ip", &["netns", "del", &self.host_ns]);
        let _ = run("ip", &["netns", "del", &self.router_ns]);
        let _ = std::fs::remove_dir_all(&self.pins);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn bird_has_locator(s: &Site) -> bool {
    let r = s.birdc(&["show", "route", "for", LOCATOR, "all"]);
    r.contains(LOCATOR.trim_end_matches("/64")) && r.contains(HOST_ADDR)
}

#[test]
#[ignore = "needs root: network namespaces, eBPF, bird2"]
fn a_host_agent_announces_its_locator_to_bird_and_installs_what_bird_announces() {
    if run("which", &["bird"]).stdout.is_empty() {
        panic!("bird not found: install Debian's bird2 (scripts/setup.sh does)");
    }
    let mut s = Site::new();
    s.start_bird();
    s.start_agent();
    s.until("BIRD learns the locator from the agent", bird_has_locator);
    s.until("the agent installs BIRD's prefix", |s| {
        s.kernel_routes()
            .contains(&format!("{BIRD_PREFIX} via {ROUTER_ADDR}"))
    });

    // What the CLI reports, as JSON, cross-checked with the kernel and BIRD above.
    let sock = s.socket();
    let routes = must(BIN, &["bgp", "routes", "--socket", &sock, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&routes).expect("json");
    let rows = v["bgp1"].as_array().expect("rows of host bgp1");
    let row = rows
        .iter()
        .find(|r| r["prefix"] == BIRD_PREFIX)
        .unwrap_or_else(|| panic!("{BIRD_PREFIX} in {routes}"));
    assert_eq!(row["installed_via"], ROUTER_ADDR, "{routes}");
    assert_eq!(row["peer"], ROUTER_ADDR, "{routes}");
    let status = must(BIN, &["bgp", "status", "--socket", &sock, "--json"]);
    assert!(status.contains("Established"), "{status}");

    // Crash: BIRD keeps our route (graceful restart) and the kernel keeps BIRD's; the
    // restarted agent takes over without the route ever going.
    s.kill_agent();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        bird_has_locator(&s),
        "BIRD dropped the locator at once: {}",
        s.birdc(&["show", "route", "all"])
    );
    assert!(s.kernel_routes().contains(BIRD_PREFIX));
    s.start_agent();
    s.until("the session is back", |s| {
        let o = run(BIN, &["bgp", "status", "--socket", &s.socket(), "--json"]);
        text(&o).contains("Established")
    });
    assert!(bird_has_locator(&s));
    assert!(s.kernel_routes().contains(BIRD_PREFIX));

    // BIRD withdraws its prefix: the kernel route goes.
    let o = s.birdc(&["disable", "s6"]);
    assert!(o.contains("disabled"), "{o}");
    s.until("the withdrawn prefix leaves the kernel", |s| {
        !s.kernel_routes().contains(BIRD_PREFIX)
    });
}
