//! EVPN mode end to end, with real parts: kernel VXLAN + bridges, our speaker, gobgpd (and FRR
//! bgpd) on the router. Kernel state is read back with iproute2 (`bridge -j fdb`, `ip -j
//! neigh`), routes are injected and read with gobgp's own CLI, packets counted with tshark.
//! Tenants t1 and t2 share one prefix, so the same address exists in both (on VNI 1 and 2).
//! Needs root.

mod common;

use std::net::Ipv6Addr;
use std::process::Command;
use std::time::Duration;

use agent::api::Request;
use agent::evpn_host::EvpnEndpoint;
use common::wait_for;
use lab::plan::{overlapping_tenants, ContainerPlan, HostPlan, Mode, Plan, RoutingMode};
use lab::LabSpec;
use serde_json::Value;

/// Removes the lab when the test ends, also when it fails.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = lab::down(&self.0);
    }
}

fn up(tag: &str, sites: usize, containers: usize, routing: RoutingMode) -> (Plan, Cleanup) {
    let name = format!("e{}-{tag}", std::process::id());
    let cleanup = Cleanup(name.clone());
    let mut spec = LabSpec::generic(&name, sites, containers);
    spec.agent_binary = Some(env!("CARGO_BIN_EXE_ilanet").into());
    spec.mode = Mode::Evpn;
    spec.routing = routing;
    spec.tenants = overlapping_tenants(2);
    let plan = lab::up(&spec).unwrap_or_else(|e| panic!("lab up ({routing}): {e}"));
    (plan, cleanup)
}

fn json(ns: &str, args: &[&str]) -> Value {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .expect("iproute2");
    assert!(out.status.success(), "{args:?}: {}", common::text(&out));
    if out.stdout.iter().all(|b| b.is_ascii_whitespace()) {
        return Value::Array(vec![]);
    }
    serde_json::from_slice(&out.stdout).expect("json")
}

/// `bridge -j fdb show dev vx<vni>` in a host.
fn fdb(host: &HostPlan, vni: u32) -> Vec<Value> {
    json(
        &host.netns,
        &["bridge", "-j", "fdb", "show", "dev", &format!("vx{vni}")],
    )
    .as_array()
    .cloned()
    .unwrap_or_default()
}

/// The VTEP the VXLAN device of `vni` sends `mac` to (its `self` entry).
fn vtep_of(host: &HostPlan, vni: u32, mac: &str) -> Option<String> {
    fdb(host, vni)
        .iter()
        .find(|r| r["mac"] == mac && r["dst"].is_string())
        .and_then(|r| r["dst"].as_str().map(str::to_string))
}

fn flood_list(host: &HostPlan, vni: u32) -> Vec<String> {
    let mut v: Vec<String> = fdb(host, vni)
        .iter()
        .filter(|r| r["mac"] == "00:00:00:00:00:00")
        .filter_map(|r| r["dst"].as_str().map(str::to_string))
        .collect();
    v.sort();
    v
}

/// The permanent neighbour entry of `ip` on the bridge of `vni`.
fn neigh_of(host: &HostPlan, vni: u32, ip: &str) -> Option<String> {
    json(
        &host.netns,
        &[
            "ip",
            "-j",
            "-6",
            "neigh",
            "show",
            "dev",
            &format!("evbr{vni}"),
        ],
    )
    .as_array()
    .cloned()
    .unwrap_or_default()
    .iter()
    .find(|n| n["dst"] == ip)
    .and_then(|n| n["lladdr"].as_str().map(str::to_string))
}

fn ping(ns: &str, addr: Ipv6Addr) -> bool {
    Command::new("ip")
        .args(["netns", "exec", ns, "ping", "-c1", "-W1", "-q"])
        .arg(addr.to_string())
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn mac(c: &ContainerPlan) -> String {
    c.mac
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn vni(plan: &Plan, c: &ContainerPlan) -> u32 {
    plan.tenants
        .iter()
        .find(|t| t.name == c.tenant)
        .map(|t| t.vnid.get())
        .expect("tenant")
}

/// The injector's address, on a link of its own to the router.
const INJECTOR_ADDR: &str = "2001:db8:ffff:99::2";
const INJECTOR_ASN: &str = "65199";

/// gobgpd as a remote VTEP's daemon: its own namespace, linked to the router, added to the
/// lab's route server as a route-server client. Killed and removed when dropped.
struct Injector {
    netns: String,
    daemon: std::process::Child,
    dir: std::path::PathBuf,
}

impl Injector {
    fn start(plan: &Plan) -> Self {
        let netns = format!("{}-inj", plan.name);
        lab::netns::create(&netns).expect("injector netns");
        let dir = std::env::temp_dir().join(&netns);
        std::fs::create_dir_all(&dir).expect("injector dir");
        let sh = |args: &[&str]| {
            let o = Command::new("ip").args(args).output().expect("ip");
            assert!(o.status.success(), "ip {args:?}: {}", common::text(&o));
        };
        let rtr = plan.router_netns.as_str();
        sh(&[
            "link", "add", "to-inj", "netns", rtr, "type", "veth", "peer", "name", "uplink",
            "netns", &netns,
        ]);
        sh(&[
            "-n",
            rtr,
            "addr",
            "add",
            "2001:db8:ffff:99::1/64",
            "dev",
            "to-inj",
            "nodad",
        ]);
        sh(&[
            "-n",
            &netns,
            "addr",
            "add",
            &format!("{INJECTOR_ADDR}/64"),
            "dev",
            "uplink",
            "nodad",
        ]);
        for (ns, dev) in [
            (rtr, "to-inj"),
            (netns.as_str(), "uplink"),
            (netns.as_str(), "lo"),
        ] {
            sh(&["-n", ns, "link", "set", dev, "up"]);
        }
        let conf = dir.join("gobgpd.toml");
        std::fs::write(
            &conf,
            format!(
                "[global.config]\n  as = {INJECTOR_ASN}\n  router-id = \"10.255.9.9\"\n  port = -1\n\
                 [[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"2001:db8:ffff:99::1\"\n    peer-as = 65000\n\
                 \x20 [neighbors.transport.config]\n    local-address = \"{INJECTOR_ADDR}\"\n\
                 \x20 [neighbors.timers.config]\n    connect-retry = 1\n\
                 \x20 [[neighbors.afi-safis]]\n    [neighbors.afi-safis.config]\n      afi-safi-name = \"l2vpn-evpn\"\n"
            ),
        )
        .expect("injector config");
        let daemon = Command::new("ip")
            .args(["netns", "exec", &netns, "gobgpd", "-f"])
            .arg(&conf)
            .args(["--api-hosts", "127.0.0.1:50051"])
            .stdout(std::fs::File::create(dir.join("gobgpd.log")).expect("log"))
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("gobgpd");
        let inj = Injector { netns, daemon, dir };
        let o = lab::routing::gobgp_cli(
            plan,
            &[
                "neighbor",
                "add",
                INJECTOR_ADDR,
                "as",
                INJECTOR_ASN,
                "family",
                "l2vpn-evpn",
                "route-server-client",
            ],
        )
        .expect("gobgp");
        assert!(o.status.success(), "{}", common::text(&o));
        wait_for("the injector's session", Duration::from_secs(10), || {
            inj.try_gobgp(&["neighbor"])
                .is_some_and(|t| t.contains("Establ"))
        });
        inj
    }

    fn try_gobgp(&self, args: &[&str]) -> Option<String> {
        let o = Command::new("timeout")
            .args(["3", "ip", "netns", "exec", &self.netns, "gobgp"])
            .args(args)
            .output()
            .ok()?;
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
    }

    fn gobgp(&self, args: &[&str]) -> String {
        self.try_gobgp(args)
            .unwrap_or_else(|| panic!("gobgp {args:?} in the injector failed"))
    }
}

impl Drop for Injector {
    fn drop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
        let _ = lab::netns::delete(&self.netns);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Within a tenant every pair reaches each other; across tenants never, also where both
/// tenants use the same address (the answer comes from the sender's own tenant).
fn check_reachability(plan: &Plan) {
    let all: Vec<(&HostPlan, &ContainerPlan)> = plan
        .hosts
        .iter()
        .flat_map(|h| h.containers.iter().map(move |c| (h, c)))
        .collect();
    for (_, a) in &all {
        for (_, b) in &all {
            if a.name == b.name {
                continue;
            }
            let same_tenant = a.tenant == b.tenant;
            let reused = all
                .iter()
                .any(|(_, x)| x.tenant == a.tenant && x.sir_addr == b.sir_addr);
            if same_tenant {
                assert!(
                    ping(&a.netns, b.sir_addr),
                    "{} → {} ({})",
                    a.name,
                    b.name,
                    b.sir_addr
                );
                // The neighbour the sender resolved is b's MAC: its own tenant's container.
                let n = json(
                    &a.netns,
                    &["ip", "-j", "-6", "neigh", "show", "dev", "eth0"],
                );
                let resolved = n
                    .as_array()
                    .and_then(|v| v.iter().find(|e| e["dst"] == b.sir_addr.to_string()))
                    .and_then(|e| e["lladdr"].as_str().map(str::to_string));
                assert_eq!(
                    resolved.as_deref(),
                    Some(mac(b).as_str()),
                    "{} → {}",
                    a.name,
                    b.name
                );
            } else if !reused {
                assert!(
                    !ping(&a.netns, b.sir_addr),
                    "{} ({}) reached {} ({}) across tenants",
                    a.name,
                    a.tenant,
                    b.name,
                    b.tenant
                );
            }
        }
    }
}

#[test]
#[ignore = "needs root: builds an EVPN lab with network namespaces, VXLAN and gobgpd"]
fn gobgp_lab_reaches_within_tenants_programs_routes_and_moves_macs() {
    let (plan, _cleanup) = up("g", 3, 3, RoutingMode::Gobgp);
    let (h1, h2, h3) = (&plan.hosts[0], &plan.hosts[1], &plan.hosts[2]);
    // Overlap: the first container of t1 and of t2 on each host have the same address.
    assert_eq!(h1.containers[0].sir_addr, h1.containers[1].sir_addr);
    assert_ne!(h1.containers[0].tenant, h1.containers[1].tenant);

    // Type-3 routes: each host floods to every other VTEP, per tenant.
    for h in &plan.hosts {
        for vni in [1, 2] {
            let mut want: Vec<String> = plan
                .hosts
                .iter()
                .filter(|o| o.name != h.name)
                .map(|o| o.uplink_addr.to_string())
                .collect();
            want.sort();
            assert_eq!(flood_list(h, vni), want, "{} VNI {vni}", h.name);
        }
    }
    check_reachability(&plan);

    // No neighbour solicitation for a suppressed (known) address crosses the VXLAN; one for
    // an unknown address is replicated to every VTEP (the check can fail).
    let a = &h1.containers[0];
    let b = &h2.containers[0];
    Command::new("ip")
        .args([
            "netns", "exec", &a.netns, "ip", "-6", "neigh", "flush", "dev", "eth0",
        ])
        .status()
        .expect("flush");
    let capture = Command::new("ip")
        .args([
            "netns", "exec", &h1.netns, "timeout", "6", "tshark", "-i", "uplink",
        ])
        .args(["-f", "udp port 4789", "-Y", "icmpv6.type == 135"])
        .args(["-T", "fields", "-e", "icmpv6.nd.ns.target_address"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("tshark (package tshark)");
    std::thread::sleep(Duration::from_secs(2));
    assert!(ping(&a.netns, b.sir_addr));
    let unknown: Ipv6Addr = "fd00:dead:beef::77:77".parse().unwrap();
    assert!(!ping(&a.netns, unknown));
    let out = capture.wait_with_output().expect("tshark");
    let targets = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        !targets.lines().any(|l| l.trim() == b.sir_addr.to_string()),
        "an NS for the suppressed {} crossed the VXLAN: {targets}",
        b.sir_addr
    );
    let flooded = targets
        .lines()
        .filter(|l| l.trim() == unknown.to_string())
        .count();
    assert!(
        flooded >= 2,
        "the unknown address's NS was not replicated: {targets:?}"
    );

    // A remote VTEP's BGP daemon: gobgpd in a namespace of its own, a route-server client of
    // the lab's gobgpd like the hosts; routes injected into it reach every host.
    let inj = Injector::start(&plan);
    let vtep9 = INJECTOR_ADDR;
    let route = [
        "macadv",
        "02:aa:bb:cc:dd:01",
        "fd00:dead:beef::99",
        "etag",
        "0",
        "label",
        "1",
        "rd",
        "10.255.9.9:1",
    ];
    let attrs = ["rt", "65000:1", "encap", "vxlan", "nexthop", vtep9];
    let add: Vec<&str> = ["global", "rib", "add", "-a", "evpn"]
        .iter()
        .chain(&route)
        .chain(&attrs)
        .copied()
        .collect();
    inj.gobgp(&add);
    // And one of a tenant nobody has (RT 65000:9, VNI 9): installed nowhere.
    inj.gobgp(&[
        "global",
        "rib",
        "add",
        "-a",
        "evpn",
        "macadv",
        "02:aa:bb:cc:dd:09",
        "fd00:dead:beef::9",
        "etag",
        "0",
        "label",
        "9",
        "rd",
        "10.255.9.9:9",
        "rt",
        "65000:9",
        "encap",
        "vxlan",
        "nexthop",
        vtep9,
    ]);
    for h in &plan.hosts {
        wait_for(
            &format!("the injected MAC on {}", h.name),
            Duration::from_secs(5),
            || {
                vtep_of(h, 1, "02:aa:bb:cc:dd:01").as_deref() == Some(vtep9)
                    && neigh_of(h, 1, "fd00:dead:beef::99").as_deref() == Some("02:aa:bb:cc:dd:01")
            },
        );
        assert!(
            fdb(h, 2).iter().all(|r| r["mac"] != "02:aa:bb:cc:dd:01"),
            "VNI 2 has it"
        );
        for vni in [1, 2] {
            assert!(fdb(h, vni).iter().all(|r| r["mac"] != "02:aa:bb:cc:dd:09"));
        }
    }
    // Withdrawn: gone within 3 s.
    let del: Vec<&str> = ["global", "rib", "del", "-a", "evpn"]
        .iter()
        .chain(&route)
        .copied()
        .collect();
    inj.gobgp(&del);
    for h in &plan.hosts {
        wait_for(
            &format!("the withdrawn MAC gone on {}", h.name),
            Duration::from_secs(3),
            || {
                vtep_of(h, 1, "02:aa:bb:cc:dd:01").is_none()
                    && neigh_of(h, 1, "fd00:dead:beef::99").is_none()
            },
        );
    }
    // A Type-3 route injected: the new VTEP joins every host's flood list of VNI 1 only.
    inj.gobgp(&[
        "global",
        "rib",
        "add",
        "-a",
        "evpn",
        "multicast",
        vtep9,
        "etag",
        "0",
        "rd",
        "10.255.9.9:1",
        "rt",
        "65000:1",
        "encap",
        "vxlan",
        "pmsi",
        "ingress-repl",
        "1",
        vtep9,
        "nexthop",
        vtep9,
    ]);
    for h in &plan.hosts {
        wait_for(
            &format!("flood entry to {vtep9} on {}", h.name),
            Duration::from_secs(3),
            || flood_list(h, 1).contains(&vtep9.to_string()),
        );
        assert!(!flood_list(h, 2).contains(&vtep9.to_string()));
    }

    // A move: h2's first container appears on h3 (same MAC, address, tenant): sequence 1,
    // every host points the MAC at h3; once h2 removes its endpoint nothing points at h2.
    let moving = &h2.containers[0];
    let v = vni(&plan, moving);
    let before = inj.gobgp(&["global", "rib", "-a", "evpn"]);
    assert!(!before.contains("mac-mobility"), "{before}");
    let reply = lab::agents::call(
        &plan.name,
        &h3.name,
        &Request::EvpnEndpointAdd {
            name: format!("{}-moved", moving.name),
            tenant: Some(moving.tenant.clone()),
            addr: moving.sir_addr,
            mac: Some(mac(moving)),
        },
    )
    .expect("add on h3");
    let ep: EvpnEndpoint = serde_json::from_value(reply).expect("endpoint");
    assert_eq!(ep.seq, 1, "MAC mobility sequence after the move");
    let h3_vtep = h3.uplink_addr.to_string();
    wait_for(
        "h1 points the moved MAC at h3",
        Duration::from_secs(3),
        || vtep_of(h1, v, &mac(moving)).as_deref() == Some(h3_vtep.as_str()),
    );
    // As another VTEP's gobgpd sees it: h3's route carries MAC mobility sequence 1, and h2,
    // beaten by the higher sequence, has withdrawn its own (RFC 7432 §15.1).
    wait_for(
        "h3's route with mac-mobility 1 alone",
        Duration::from_secs(3),
        || {
            let rib = inj.gobgp(&["global", "rib", "-a", "evpn"]);
            let lines: Vec<&str> = rib.lines().filter(|l| l.contains(&mac(moving))).collect();
            lines.len() == 1
                && lines[0].contains("[mac-mobility: 1]")
                && lines[0].contains(&h3.uplink_addr.to_string())
        },
    );
    lab::agents::call(
        &plan.name,
        &h2.name,
        &Request::EndpointDel {
            name: moving.name.clone(),
            keep_mapping: false,
        },
    )
    .expect("del on h2");
    let h2_vtep = h2.uplink_addr.to_string();
    for h in [h1, h2] {
        wait_for(
            &format!("{} has the MAC at h3 only", h.name),
            Duration::from_secs(3),
            || {
                vtep_of(h, v, &mac(moving)).as_deref() == Some(h3_vtep.as_str())
                    && !fdb(h, v)
                        .iter()
                        .any(|r| r["mac"] == mac(moving) && r["dst"] == h2_vtep.as_str())
            },
        );
    }
    let moved_ns = format!("{}-{}-moved", plan.name, moving.name);
    assert!(
        ping(&h1.containers[2].netns, moving.sir_addr),
        "moved endpoint unreachable"
    );
    assert!(lab::netns::exists(&moved_ns));
}

#[test]
#[ignore = "needs root: builds an EVPN lab with network namespaces, VXLAN and FRR bgpd"]
/// FRR 8.4 takes no Type-3 route with an IPv6 VTEP: flood lists come from Type-2 next hops.
fn frr_lab_reaches_within_tenants_only() {
    let (plan, _cleanup) = up("f", 2, 3, RoutingMode::Frr);
    // FRR's own table holds every container's Type-2 route.
    let table = lab::routing::daemon_show(&plan).expect("vtysh");
    for c in plan.hosts.iter().flat_map(|h| &h.containers) {
        assert!(table.contains(&mac(c)), "FRR lacks {}: {table}", mac(c));
    }
    check_reachability(&plan);

    // The agents crash and start again: they recover their endpoints from their records,
    // announce them again, and the lab converges as before.
    let state = lab::state::LabState::load(&plan.name)
        .expect("state")
        .expect("up");
    let pid = *state.agents.first().expect("agent pid");
    // SAFETY: kill(2) on the pid of the agent process this test's lab started.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) }, 0);
    // SAFETY: waitpid on that pid (a child of this process: lab up ran in it).
    unsafe { libc::waitpid(pid as libc::pid_t, std::ptr::null_mut(), 0) };
    let args: Vec<String> = [
        env!("CARGO_BIN_EXE_ilanet"),
        "lab",
        "evpn-agents",
        "--name",
        &plan.name,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    lab::agents::respawn_agent(&plan.name, "all", &args).expect("respawn");
    wait_for("the agents answer again", Duration::from_secs(10), || {
        plan.hosts.iter().all(|h| lab::evpn::view(&plan, h).is_ok())
    });
    for h in &plan.hosts {
        let v = lab::evpn::view(&plan, h).expect("view");
        assert_eq!(
            v.endpoints.len(),
            h.containers.len(),
            "{}: {:?}",
            h.name,
            v.endpoints
        );
    }
    lab::evpn::wait_converged(&plan, Duration::from_secs(30)).expect("converged again");
    check_reachability(&plan);
}

#[test]
#[ignore = "needs root: runs the EVPN demo (network namespaces, VXLAN, gobgpd)"]
fn demo_in_evpn_mode_shows_overlapping_tenants_isolated() {
    let name = format!("e{}-d", std::process::id());
    let _cleanup = Cleanup(name.clone());
    let out = Command::new(env!("CARGO_BIN_EXE_ilanet"))
        .args([
            "demo", "--mode", "evpn", "--name", &name, "--bytes", "65536",
        ])
        .output()
        .expect("run ilanet demo");
    let text = common::text(&out);
    assert!(out.status.success(), "{text}");
    // Four sites × two tenants: every address appears twice, once per VNI.
    assert!(text.contains("fd00:dead:beef::1:1"), "{text}");
    assert!(
        text.contains("24 same-tenant pairs passed")
            && text.contains("24 cross-tenant pairs never reached"),
        "{text}"
    );
    assert!(
        !lab::netns::exists(&format!("{name}-nola")),
        "the demo lab stayed up"
    );
}
