//! Tenants and identity-based policy enforced by the eBPF programs on a real lab, checked with
//! real TCP, UDP and ICMPv6 traffic against the pure reference evaluator (needs root).

use std::net::{Ipv6Addr, SocketAddrV6, UdpSocket};
use std::process::{Command, Stdio};
use std::time::Duration;

use agent::api::{PolicyRow, Request};
use agent::reconcile::LocalEndpoint;
use dataplane::HostMaps;
use ila::Vnid;
use lab::agents;
use lab::netns::NetnsGuard;
use lab::probe::{self, EchoServers};
use lab::state;
use lab::LabSpec;
use policy::{Endpoint, EndpointId, Evaluator, FlowPeer, LabelSet, Verdict};

const BIN: &str = env!("CARGO_BIN_EXE_ilanet");
const OK: Duration = Duration::from_secs(3);
/// How long a probe waits before counting as dropped (the lab's RTT is well under 1 ms).
const BLOCKED: Duration = Duration::from_millis(400);
const TCP_PORT: u16 = 5201;
const UDP_PORT: u16 = 8080;

struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = lab::down(&self.0);
    }
}

fn lab_up(tag: &str, tenants: u16) -> (Cleanup, String) {
    let name = format!("p{}-{tag}", std::process::id());
    let cleanup = Cleanup(name.clone());
    let mut spec = LabSpec::generic(&name, 2, 0);
    spec.agent_binary = Some(BIN.into());
    spec.tenants = lab::plan::numbered_tenants(tenants);
    lab::up(&spec).expect("lab up");
    (cleanup, name)
}

/// One endpoint of a test: where it runs, its tenant and labels.
struct Ep {
    host: &'static str,
    tenant: u32,
    app: &'static str,
    info: LocalEndpoint,
}

fn add(lab: &str, name: &str, host: &'static str, tenant: u32, app: &'static str) -> Ep {
    let v = agents::call(
        lab,
        host,
        &Request::EndpointAdd {
            name: name.into(),
            tenant: Some(format!("t{tenant}")),
            identifier: None,
            replace: false,
            labels: [("app".to_string(), app.to_string())].into(),
        },
    )
    .unwrap_or_else(|e| panic!("adding {name}: {e}"));
    Ep {
        host,
        tenant,
        app,
        info: serde_json::from_value(v).expect("endpoint"),
    }
}

fn apply(lab: &str, file: &str, text: &str) {
    let records = agent::policy_sync::records_for_file(file, text.as_bytes(), vnid(1))
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
    agents::call(lab, "site1", &Request::PolicyApply { records }).expect("apply");
}

fn vnid(n: u32) -> Vnid {
    Vnid::new(n).expect("vnid")
}

fn policy_names(lab: &str, host: &str) -> Vec<String> {
    let rows: Vec<PolicyRow> =
        serde_json::from_value(agents::call(lab, host, &Request::PolicyList).expect("list"))
            .expect("rows");
    rows.into_iter().map(|r| r.name).collect()
}

/// Waits until every host's agent has exactly these policies compiled into its maps.
fn wait_policies(lab: &str, want: &[String]) {
    let mut want = want.to_vec();
    want.sort();
    for host in ["site1", "site2"] {
        let start = std::time::Instant::now();
        loop {
            let mut have = policy_names(lab, host);
            have.sort();
            if have == want {
                break;
            }
            assert!(start.elapsed() < OK, "{host} has {have:?}, want {want:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn flush_conntrack(lab: &str) {
    for host in ["site1", "site2"] {
        HostMaps::open_pinned(&state::host_pin_dir(lab, host))
            .expect("maps")
            .flush_conntrack()
            .expect("flush");
    }
}

fn counter(lab: &str, host: &str, name: &str) -> u64 {
    let c = HostMaps::open_pinned(&state::host_pin_dir(lab, host))
        .expect("maps")
        .counters()
        .expect("counters");
    c.pairs()
        .into_iter()
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("no counter {name}"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Probe {
    Tcp,
    Udp,
    Icmp,
}

impl Probe {
    fn proto_port(self) -> (u8, u16) {
        match self {
            Probe::Tcp => (6, TCP_PORT),
            Probe::Udp => (17, UDP_PORT),
            Probe::Icmp => (58, 0),
        }
    }

    fn run(self, from: &Ep, to: &Ep, timeout: Duration) -> bool {
        let (ns, addr) = (&from.info.netns, to.info.sir_addr);
        match self {
            Probe::Tcp => probe::tcp_echo(ns, addr, TCP_PORT, timeout).is_ok(),
            Probe::Udp => probe::udp_echo(ns, addr, UDP_PORT, timeout).is_ok(),
            Probe::Icmp => probe::ping(ns, addr, timeout).is_ok(),
        }
    }
}

/// Probes every ordered pair with every protocol (one thread per source) and returns
/// `(from, to, probe, passed)`.
fn reachability(eps: &[Ep]) -> Vec<(usize, usize, Probe, bool)> {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..eps.len())
            .map(|i| {
                s.spawn(move || {
                    let mut out = Vec::new();
                    for j in 0..eps.len() {
                        if i == j {
                            continue;
                        }
                        for p in [Probe::Tcp, Probe::Udp, Probe::Icmp] {
                            out.push((i, j, p, p.run(&eps[i], &eps[j], BLOCKED)));
                        }
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("probe thread"))
            .collect()
    })
}

fn reference_endpoints(eps: &[Ep]) -> Vec<Endpoint> {
    eps.iter()
        .enumerate()
        .map(|(i, e)| Endpoint {
            id: EndpointId(i as u64),
            tenant: vnid(e.tenant),
            labels: LabelSet::from_pairs([("app", e.app)]).expect("labels"),
        })
        .collect()
}

#[test]
#[ignore = "needs root: network namespaces, eBPF"]
fn listing10_allows_only_service1_to_service1_on_tcp_5201() {
    let (_c, lab) = lab_up("l10", 1);
    let s1 = add(&lab, "s1", "site1", 1, "service1");
    let s2 = add(&lab, "s2", "site2", 1, "service1");
    let o1 = add(&lab, "o1", "site1", 1, "other");
    let _servers: Vec<_> = [&s1, &s2, &o1]
        .iter()
        .flat_map(|e| {
            [TCP_PORT, 5202].map(|p| {
                EchoServers::start(&e.info.netns, e.info.sir_addr, p, UDP_PORT + p - TCP_PORT)
                    .expect("servers")
            })
        })
        .collect();
    // Before any policy everything within the tenant passes.
    assert!(probe::tcp_echo(&o1.info.netns, s2.info.sir_addr, TCP_PORT, OK).is_ok());

    // The paper's Listing 10, as a user writes it (a bare list of specs in YAML).
    let file = std::env::temp_dir().join(format!("listing10-{}.yaml", std::process::id()));
    std::fs::write(
        &file,
        "- endpointSelector:\n    matchLabels:\n      app: service1\n  ingress:\n  - fromEndpoints:\n    - matchLabels:\n        app: service1\n    toPorts:\n    - ports:\n      - port: \"5201\"\n        protocol: tcp\n",
    )
    .expect("write");
    let out = Command::new(BIN)
        .args(["policy", "apply"])
        .arg(&file)
        .args(["--lab", &lab])
        .output()
        .expect("policy apply");
    let _ = std::fs::remove_file(&file);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A bare list of specs is named after its file.
    wait_policies(&lab, &[format!("listing10-{}", std::process::id())]);
    flush_conntrack(&lab);

    let tcp = |a: &Ep, b: &Ep, port: u16| {
        probe::tcp_echo(&a.info.netns, b.info.sir_addr, port, BLOCKED).is_ok()
    };
    assert!(
        tcp(&s1, &s2, TCP_PORT),
        "service1 -> service1 tcp/5201 (cross-site)"
    );
    assert!(tcp(&s2, &s1, TCP_PORT), "and back");
    assert!(!tcp(&o1, &s2, TCP_PORT), "other -> service1 is denied");
    assert!(!tcp(&o1, &s1, TCP_PORT), "also on the same host");
    assert!(
        !tcp(&s1, &s2, 5202),
        "service1 -> service1 on another port is denied"
    );
    assert!(
        tcp(&s1, &o1, TCP_PORT),
        "o1 is not selected: it accepts anything"
    );
    assert!(
        probe::udp_echo(&s1.info.netns, s2.info.sir_addr, UDP_PORT, BLOCKED).is_err(),
        "udp is not in the policy"
    );
    // The large transfer of an allowed connection works (replies pass through conntrack).
    probe::tcp_transfer(
        &s1.info.netns,
        &s2.info.netns,
        s2.info.sir_addr,
        5301,
        1,
        BLOCKED,
    )
    .expect_err("port 5301 is not allowed either");
    assert!(counter(&lab, "site2", "drop_policy") > 0);
    assert!(
        counter(&lab, "site1", "drop_policy") > 0,
        "same-host denial happens at the sender's host"
    );

    // Explain names the rule and the default deny.
    let out = Command::new(BIN)
        .args([
            "policy", "explain", "--from", "o1", "--to", "s2", "--port", "5201", "--lab", &lab,
        ])
        .output()
        .expect("explain");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("verdict: DENY"), "{text}");
}

/// A small deterministic generator (xorshift) so a failing case can be replayed by its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len() as u64) as usize]
    }
}

/// A random CiliumNetworkPolicy of tenant 1 or 2: a selector, one to three sections, peers by
/// app label, by "everything in the tenant", or naming the other tenant; optional ports.
fn random_policy(rng: &mut Rng, name: &str) -> String {
    let tenant = 1 + rng.below(2);
    let other = 3 - tenant;
    let app_sel = |rng: &mut Rng| -> String {
        match rng.below(4) {
            0 => "{}".to_string(),
            1 => r#"{"matchLabels":{"app":"web"}}"#.to_string(),
            2 => r#"{"matchLabels":{"app":"db"}}"#.to_string(),
            _ => format!(r#"{{"matchLabels":{{"ilanet.io/tenant":"{other}"}}}}"#),
        }
    };
    let selector = match rng.below(3) {
        0 => "{}".to_string(),
        1 => r#"{"matchLabels":{"app":"web"}}"#.to_string(),
        _ => r#"{"matchLabels":{"app":"db"}}"#.to_string(),
    };
    let mut sections = Vec::new();
    for (section, peer_field) in [
        ("ingress", "fromEndpoints"),
        ("egress", "toEndpoints"),
        ("ingressDeny", "fromEndpoints"),
        ("egressDeny", "toEndpoints"),
    ] {
        if rng.below(2) == 0 {
            continue;
        }
        let peer = app_sel(rng);
        let ports = match rng.below(4) {
            0 => String::new(),
            1 => format!(r#","toPorts":[{{"ports":[{{"port":"{TCP_PORT}","protocol":"TCP"}}]}}]"#),
            2 => format!(r#","toPorts":[{{"ports":[{{"port":"{UDP_PORT}","protocol":"UDP"}}]}}]"#),
            _ => format!(
                r#","toPorts":[{{"ports":[{{"port":"{}","protocol":"ANY"}}]}}]"#,
                rng.pick(&[TCP_PORT, UDP_PORT])
            ),
        };
        sections.push(format!(
            r#""{section}":[{{"{peer_field}":[{peer}]{ports}}}]"#
        ));
    }
    if sections.is_empty() {
        sections.push(format!(
            r#""ingress":[{{"fromEndpoints":[{}]}}]"#,
            app_sel(rng)
        ));
    }
    format!(
        r#"{{"apiVersion":"cilium.io/v2","kind":"CiliumNetworkPolicy","metadata":{{"name":"{name}","namespace":"{tenant}"}},"spec":{{"endpointSelector":{selector},{}}}}}"#,
        sections.join(",")
    )
}

#[test]
#[ignore = "needs root: network namespaces, eBPF"]
fn real_reachability_equals_the_reference_for_random_policies() {
    let (_c, lab) = lab_up("prop", 2);
    let eps = vec![
        add(&lab, "a1", "site1", 1, "web"),
        add(&lab, "a2", "site1", 1, "db"),
        add(&lab, "b1", "site1", 2, "web"),
        add(&lab, "a3", "site2", 1, "web"),
        add(&lab, "b2", "site2", 2, "db"),
        add(&lab, "b3", "site2", 2, "web"),
    ];
    let _servers: Vec<_> = eps
        .iter()
        .map(|e| {
            EchoServers::start(&e.info.netns, e.info.sir_addr, TCP_PORT, UDP_PORT).expect("servers")
        })
        .collect();
    let reference_eps = reference_endpoints(&eps);
    let seed0 = std::env::var("ILANET_POLICY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x9e37_79b9_7f4a_7c15u64 ^ u64::from(std::process::id()));
    let mut mismatches = Vec::new();
    let mut applied: Vec<String> = Vec::new();
    let mut seen_allow = 0;
    let mut seen_deny = 0;
    for case in 0..4u64 {
        let seed = seed0.wrapping_add(case.wrapping_mul(0x1000_0001)) | 1;
        let mut rng = Rng(seed);
        for name in applied.drain(..) {
            agents::call(&lab, "site1", &Request::PolicyDelete { name }).expect("delete");
        }
        let n = 1 + rng.below(3);
        let texts: Vec<(String, String)> = (0..n)
            .map(|k| {
                let name = format!("case{case}-p{k}");
                let text = random_policy(&mut rng, &name);
                (name, text)
            })
            .collect();
        let mut policies = Vec::new();
        for (name, text) in &texts {
            apply(&lab, &format!("{name}.json"), text);
            policies.extend(
                policy::parse_policy_file(&format!("{name}.json"), text.as_bytes(), vnid(1))
                    .expect("parse"),
            );
            applied.push(name.clone());
        }
        wait_policies(&lab, &applied);
        flush_conntrack(&lab);
        let reference = Evaluator::new(&policies, &reference_eps);
        for (i, j, p, passed) in reachability(&eps) {
            let (proto, port) = p.proto_port();
            let want = reference
                .explain(
                    &FlowPeer::Endpoint(EndpointId(i as u64)),
                    &FlowPeer::Endpoint(EndpointId(j as u64)),
                    port,
                    proto,
                )
                .verdict
                == Verdict::Allow;
            if want {
                seen_allow += 1;
            } else {
                seen_deny += 1;
            }
            if want != passed {
                mismatches.push(format!(
                    "seed {seed:#x}: {} ({}/t{}/{}) -> {} ({}/t{}/{}) {p:?}: reference {}, lab {}",
                    eps[i].info.name,
                    eps[i].host,
                    eps[i].tenant,
                    eps[i].app,
                    eps[j].info.name,
                    eps[j].host,
                    eps[j].tenant,
                    eps[j].app,
                    if want { "allow" } else { "deny" },
                    if passed { "passed" } else { "dropped" },
                ));
            }
        }
        if !mismatches.is_empty() {
            let all: Vec<_> = texts.iter().map(|(_, t)| t.as_str()).collect();
            panic!(
                "{} mismatches (no leaks, no false drops allowed):\n{}\npolicies:\n{}",
                mismatches.len(),
                mismatches.join("\n"),
                all.join("\n")
            );
        }
    }
    // The cases exercised both outcomes (else the comparison proves little).
    assert!(
        seen_allow > 0 && seen_deny > 0,
        "allow {seen_allow}, deny {seen_deny}"
    );
}

#[test]
#[ignore = "needs root: network namespaces, eBPF"]
fn spoofing_and_cross_tenant_traffic_are_dropped_and_traced() {
    let (_c, lab) = lab_up("spoof", 2);
    let a1 = add(&lab, "a1", "site1", 1, "web");
    let a2 = add(&lab, "a2", "site2", 1, "web");
    let b2 = add(&lab, "b2", "site2", 2, "web");
    let _servers: Vec<_> = [&a1, &a2, &b2]
        .iter()
        .map(|e| {
            EchoServers::start(&e.info.netns, e.info.sir_addr, TCP_PORT, UDP_PORT).expect("servers")
        })
        .collect();
    assert!(
        probe::udp_echo(&a1.info.netns, a2.info.sir_addr, UDP_PORT, OK).is_ok(),
        "same tenant passes"
    );

    // A forged source: a second address on a1's interface that is not its SIR address.
    let forged: Ipv6Addr = "fd00:dead:beef:0:6000:1:dead:beef".parse().expect("addr");
    let st = Command::new("ip")
        .args([
            "-n",
            &a1.info.netns,
            "addr",
            "add",
            &format!("{forged}/128"),
            "dev",
            "eth0",
            "nodad",
        ])
        .status()
        .expect("ip");
    assert!(st.success());
    let before = counter(&lab, "site1", "drop_spoofed");
    let sock = {
        let _g = NetnsGuard::enter(&a1.info.netns).expect("enter");
        UdpSocket::bind(SocketAddrV6::new(forged, 0, 0, 0)).expect("bind forged")
    };
    sock.set_read_timeout(Some(BLOCKED)).expect("timeout");
    sock.send_to(
        b"spoofed",
        SocketAddrV6::new(a2.info.sir_addr, UDP_PORT, 0, 0),
    )
    .expect("send");
    let mut buf = [0u8; 16];
    assert!(
        sock.recv_from(&mut buf).is_err(),
        "no echo for a spoofed source"
    );
    assert!(counter(&lab, "site1", "drop_spoofed") > before);
    drop(sock);
    let st = Command::new("ip")
        .args([
            "-n",
            &a1.info.netns,
            "addr",
            "del",
            &format!("{forged}/128"),
            "dev",
            "eth0",
        ])
        .status()
        .expect("ip");
    assert!(st.success());

    // Cross-tenant: dropped at the receiver, and visible in `ilanet trace`.
    let trace = Command::new(BIN)
        .args([
            "trace",
            "--lab",
            &lab,
            "--json",
            "--drops",
            "--duration",
            "4",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("trace");
    std::thread::sleep(Duration::from_millis(500));
    assert!(probe::udp_echo(&a1.info.netns, b2.info.sir_addr, UDP_PORT, BLOCKED).is_err());
    assert!(probe::ping(&a1.info.netns, b2.info.sir_addr, BLOCKED).is_err());
    let out = trace.wait_with_output().expect("trace output");
    let lines = String::from_utf8_lossy(&out.stdout);
    let events: Vec<serde_json::Value> = lines
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let hit = events.iter().any(|e| {
        e["reason"] == "tenant-isolation"
            && e["src"] == a1.info.sir_addr.to_string()
            && e["dst"] == b2.info.sir_addr.to_string()
            && e["src_vnid"] == 1
            && e["dst_vnid"] == 2
    });
    assert!(
        hit,
        "a tenant-isolation drop a1 -> b2 in the trace:\n{lines}"
    );
    // Tenant isolation holds on both sides: the sender's egress already refuses it.
    assert!(counter(&lab, "site1", "drop_tenant") + counter(&lab, "site2", "drop_tenant") > 0);
}
