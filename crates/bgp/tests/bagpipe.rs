//! Interop with bagpipe-bgp (networking-bagpipe 17.0.0), the host daemon of the ILA paper's
//! EVPN setup. bagpipe-bgp runs in a network namespace of its own (veth to the test's
//! namespace, IPv4 because its `peers` option only takes IPv4) and speaks iBGP to a route
//! reflector: our `Speaker` plays that peer.
//!
//! Stock bagpipe-bgp is refused (its OPEN has no 4-octet AS capability); the exchange runs
//! with that capability turned on in bagpipe's exabgp `Neighbor` (see `start_bagpipe`).
//!
//! Dataplane: the `dummy` EVPN driver, whose calls (remote MAC → VTEP, BUM endpoint) are
//! checked in bagpipe's debug log. The `linux` (VXLAN) driver cannot start here: its
//! constructor runs `modprobe vxlan` through privsep and there is no `modprobe` binary
//! (`FileNotFoundError: [Errno 2] No such file or directory`, then bagpipe-bgp exits; kmod
//! would not help: there is no /lib/modules, VXLAN is built into this kernel); it also
//! drives bridges with `brctl` (bridge-utils), which is not installed.
//!
//! Ports are attached through bagpipe's REST API with the JSON body `bagpipe-rest-attach`
//! builds: the packaged `bagpipe-rest-attach` cannot send it under Python 3.11 (it passes a
//! `str` to urllib: `TypeError: POST data should be bytes ...`), and it always reads
//! /etc/bagpipe-bgp/bgp.conf and talks to 127.0.0.1. Routes are read from bagpipe's
//! looking glass (`/looking-glass/...`, what `bagpipe-looking-glass` prints).

mod common;
use bgp::evpn::parse_mac;
use bgp::{
    EvpnNlri, EvpnRoute, Family, PeerConfig, RouteDistinguisher, RouteTarget, Speaker,
    SpeakerConfig, State,
};
use common::{netns_with_veth, ns_exec_must, sh};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// bagpipe-bgp's `my_as` is limited to 16 bits; iBGP, so both sides use it.
const ASN: u32 = 64512;
const VNI: u32 = 100;
const API_PORT: u16 = 8082;
const INSTANCE: &str = "ilanet-bagpipe-evi";
const BAGPIPE_MAC: &str = "02:00:00:00:cc:01";
const BAGPIPE_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const OUR_MAC: &str = "02:00:00:00:dd:01";
const OUR_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 20);
const OUR_ID: Ipv4Addr = Ipv4Addr::new(10, 255, 0, 1);

/// bagpipe-bgp's namespace, veth pair and temp dir; Drop kills bagpipe-bgp's process group
/// (it forks privsep helpers) and deletes all of it.
struct Lab {
    ns: String,
    veth: String,
    dir: std::path::PathBuf,
    ours: Ipv4Addr,
    theirs: Ipv4Addr,
    bagpipe: Option<Child>,
}

impl Lab {
    fn new() -> Lab {
        let pid = std::process::id();
        let ns = format!("ilbagpipe{pid}");
        let veth = format!("vbp{}", pid % 1_000_000);
        let third = (pid % 250) as u8;
        let lab = Lab {
            ns: ns.clone(),
            veth: veth.clone(),
            dir: std::env::temp_dir().join(&ns),
            ours: Ipv4Addr::new(10, 252, third, 1),
            theirs: Ipv4Addr::new(10, 252, third, 2),
            bagpipe: None,
        };
        std::fs::create_dir_all(&lab.dir).unwrap();
        netns_with_veth(
            &ns,
            &veth,
            &format!("{}/24", lab.ours),
            &format!("{}/24", lab.theirs),
            &[],
        );
        for cmd in [
            // The port bagpipe attaches to the EVPN instance.
            vec![
                "ip", "link", "add", "bpport", "type", "veth", "peer", "name", "bpportp",
            ],
            vec!["ip", "link", "set", "bpport", "up"],
        ] {
            lab.exec_must(&cmd);
        }
        lab
    }

    fn exec_must(&self, args: &[&str]) {
        ns_exec_must(&self.ns, args);
    }

    /// Writes bagpipe-bgp's config (peer: us; API on its veth address) and starts it.
    /// `asn4`: run it with the 4-octet AS capability turned on (see below); else stock.
    fn start_bagpipe(&mut self, asn4: bool) {
        let conf = format!(
            "[BGP]\nlocal_address={theirs}\npeers={ours}\nmy_as={ASN}\nenable_rtc=False\n\
             [API]\nhost={theirs}\nport={API_PORT}\n\
             [DATAPLANE_DRIVER_IPVPN]\ndataplane_driver=dummy\n\
             [DATAPLANE_DRIVER_EVPN]\ndataplane_driver=dummy\n\
             [oslo_concurrency]\nlock_path={dir}/lock\n",
            theirs = self.theirs,
            ours = self.ours,
            dir = self.dir.display()
        );
        let conf_path = self.dir.join("bgp.conf");
        std::fs::write(&conf_path, conf).unwrap();
        // /usr/bin/bagpipe-bgp, plus one line: bagpipe builds its exabgp `Neighbor` without
        // setting `asn4`, so its OPEN lacks the 4-octet AS capability (RFC 6793) that our
        // speaker requires; exabgp implements it, bagpipe just never turns it on.
        let launcher = self.dir.join("bagpipe-bgp-asn4.py");
        std::fs::write(
            &launcher,
            "import sys\n\
             from exabgp.bgp import neighbor\n\
             init = neighbor.Neighbor.__init__\n\
             def asn4_init(self, *a, **k):\n    init(self, *a, **k)\n    self.asn4 = True\n\
             neighbor.Neighbor.__init__ = asn4_init\n\
             from networking_bagpipe.bagpipe_bgp.bgp_daemon import daemon_main\n\
             sys.exit(daemon_main())\n",
        )
        .unwrap();
        let program = if asn4 {
            launcher
        } else {
            "/usr/bin/bagpipe-bgp".into()
        };
        let out = std::fs::File::create(self.dir.join("stdout.log")).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns, "/usr/bin/python3"])
            .arg(&program)
            .arg("--config-file")
            .arg(&conf_path)
            .arg("--log-file")
            .arg(self.dir.join("bagpipe-bgp.log"))
            .arg("--debug")
            .current_dir(&self.dir)
            // Its privsep socket and other temp files go to our dir.
            .env("TMPDIR", &self.dir)
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .stdin(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("bagpipe-bgp: {e}"));
        self.bagpipe = Some(child);
    }

    /// Kills bagpipe-bgp's process group (it forks privsep helpers) and reaps it.
    fn stop_bagpipe(&mut self) {
        if let Some(mut c) = self.bagpipe.take() {
            // SAFETY: SIGKILL to the process group we created for our own child.
            unsafe { libc::kill(-(c.id() as i32), libc::SIGKILL) };
            let _ = c.wait();
        }
    }

    fn log_tail(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default();
        let log = read("stdout.log") + &read("bagpipe-bgp.log");
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// One HTTP/1.0 request to bagpipe's REST API: (status, body).
    fn http(&self, method: &str, path: &str, body: Option<&serde_json::Value>) -> (u16, String) {
        let addr = SocketAddr::new(self.theirs.into(), API_PORT);
        let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
            return (0, String::new());
        };
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let req = format!(
            "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        if s.write_all(req.as_bytes()).is_err() {
            return (0, String::new());
        }
        let mut resp = String::new();
        if s.read_to_string(&mut resp).is_err() {
            return (0, String::new());
        }
        let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        (status, body.to_string())
    }

    /// GET a looking-glass path as JSON (None while bagpipe-bgp is not answering).
    fn looking_glass(&self, path: &str) -> Option<serde_json::Value> {
        let (status, body) = self.http("GET", &format!("/looking-glass/{path}"), None);
        if status != 200 {
            return None;
        }
        serde_json::from_str(&body).ok()
    }

    /// The best routes of our EVPN instance in bagpipe's looking glass, as (route key, route):
    /// `{"('MAC', 02:..)": [{"evpn:macadv::<rd>:...": {route}}], ...}`.
    fn instance_routes(&self) -> Vec<(String, serde_json::Value)> {
        let Some(serde_json::Value::Object(entries)) =
            self.looking_glass(&format!("vpns/instances/{INSTANCE}/best_routes"))
        else {
            return vec![];
        };
        entries
            .into_iter()
            .filter_map(|(_, routes)| match routes {
                serde_json::Value::Array(r) => Some(r),
                _ => None,
            })
            .flatten()
            .filter_map(|route| match route {
                serde_json::Value::Object(m) => m.into_iter().next(),
                _ => None,
            })
            .collect()
    }

    /// bagpipe-bgp's log (with --debug the dummy dataplane driver logs every call).
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("bagpipe-bgp.log")).unwrap_or_default()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop_bagpipe();
        let _ = sh(&["ip", "link", "del", &self.veth]);
        let _ = sh(&["ip", "netns", "del", &self.ns]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn wait_for(what: &str, secs: u64, lab: &Lab, mut f: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(secs),
            "timed out ({secs}s) waiting for {what}; bagpipe-bgp log tail:\n{}",
            lab.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    t.elapsed()
}

/// The body `bagpipe-rest-attach --attach|--detach --port bpport --ip 192.0.2.10 --mac
/// 02:00:00:00:cc:01 --network-type evpn --vpn-instance-id … --rt 64512:100 --vni 100` sends.
fn port_request() -> serde_json::Value {
    serde_json::json!({
        "import_rt": [format!("{ASN}:{VNI}")],
        "export_rt": [format!("{ASN}:{VNI}")],
        "local_port": {"linuxif": "bpport"},
        "vpn_instance_id": INSTANCE,
        "vpn_type": "evpn",
        "gateway_ip": "192.0.2.254",
        "mac_address": BAGPIPE_MAC,
        "ip_address": format!("{BAGPIPE_IP}/24"),
        "advertise_subnet": false,
        "readvertise": null,
        "attract_traffic": {},
        "lb_consistent_hash_order": 0,
        "vni": VNI,
        "direction": "both",
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: network namespaces, bagpipe-bgp"]
async fn bagpipe_evpn_exchange() {
    let mut lab = Lab::new();
    let cfg = SpeakerConfig {
        local_as: ASN,
        router_id: OUR_ID,
        listen: Some(SocketAddr::new(lab.ours.into(), 179)),
        local_address: Some(lab.ours.into()),
        peers: vec![PeerConfig {
            address: lab.theirs.into(),
            remote_as: ASN,
            // bagpipe-bgp connects to its route reflector.
            passive: true,
            // bagpipe-bgp drops sessions whose negotiated hold time is not above 30 s
            // (`assert holdtime > 30` in its peer worker).
            hold_time: 90,
            port: 179,
            max_prefixes: 1000,
            route_server: false,
        }],
        graceful_restart_time: None,
        connect_retry_secs: 1,
        families: vec![Family::L2vpnEvpn],
    };
    let (sp, _v6) = Speaker::start(cfg).await.unwrap();

    // Stock bagpipe-bgp 17.0.0 sends no 4-octet AS capability, which this speaker refuses
    // (README: peers must support RFC 6793). When the speaker learns to talk to 2-octet-AS
    // speakers, this fails: then drop the asn4 launcher.
    lab.start_bagpipe(false);
    let t = wait_for("stock bagpipe-bgp refused", 60, &lab, || {
        sp.status().peers[0]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("4-octet AS capability"))
    })
    .await;
    println!(
        "bagpipe: stock bagpipe-bgp refused after {t:?}: {:?}",
        sp.status().peers[0].last_error
    );
    assert_ne!(sp.status().peers[0].state, State::Established);
    lab.stop_bagpipe();

    lab.start_bagpipe(true);
    let t = wait_for("bagpipe-bgp: REST API", 90, &lab, || {
        lab.looking_glass("summary").is_some()
    })
    .await;
    println!("bagpipe: REST API up after {t:?}");
    let t = Instant::now();
    while sp.status().peers[0].state != State::Established {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "no session with bagpipe-bgp: {:?}\nbagpipe-bgp log tail:\n{}",
            sp.status().peers[0],
            lab.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let t = t.elapsed();
    println!("bagpipe: session established after {t:?}");
    // bagpipe's own view of the session (its peer worker reports a moment later).
    wait_for("bagpipe: 1 established peer", 10, &lab, || {
        lab.looking_glass("summary")
            .and_then(|s| s["BGP_established_peers"].as_u64())
            == Some(1)
    })
    .await;

    // (a) bagpipe attaches a port → a type 2 for its MAC/IP and a type 3 (PMSI) reach us.
    let (status, body) = lab.http("POST", "/attach_localport", Some(&port_request()));
    assert_eq!(status, 200, "attach_localport: {body}");
    let their_mac = parse_mac(BAGPIPE_MAC).unwrap();
    let theirs: IpAddr = lab.theirs.into();
    let t = wait_for("bagpipe's type 2 and type 3", 20, &lab, || {
        let r = sp.evpn_routes();
        r.iter()
            .any(|b| matches!(b.route.nlri, EvpnNlri::MacIp { mac, .. } if mac == their_mac))
            && r.iter()
                .any(|b| matches!(b.route.nlri, EvpnNlri::Inclusive { .. }))
    })
    .await;
    println!("bagpipe: its routes reached us {t:?} after the attach");
    let routes = sp.evpn_routes();
    let rt = RouteTarget {
        asn: ASN,
        value: VNI,
    };
    let m = routes
        .iter()
        .find(|b| matches!(b.route.nlri, EvpnNlri::MacIp { mac, .. } if mac == their_mac))
        .unwrap();
    let EvpnNlri::MacIp {
        rd,
        ethernet_tag,
        ip,
        vni,
        ..
    } = m.route.nlri
    else {
        unreachable!()
    };
    assert_eq!(ip, Some(IpAddr::from(BAGPIPE_IP)), "{m:?}");
    assert_eq!(vni, VNI, "label1 carries the VNI: {m:?}");
    assert_eq!(ethernet_tag, 0);
    assert_eq!(
        rd.to_string().split(':').next(),
        Some(lab.theirs.to_string().as_str()),
        "bagpipe's RD is <local_address>:<n>: {m:?}"
    );
    assert_eq!(m.route.next_hop, theirs);
    assert_eq!(m.route.route_targets, vec![rt]);
    assert!(m.route.encapsulation_vxlan, "{m:?}");
    assert_eq!(m.peer, theirs);
    let inc = routes
        .iter()
        .find(|b| matches!(b.route.nlri, EvpnNlri::Inclusive { .. }))
        .unwrap();
    assert_eq!(
        inc.route.nlri,
        EvpnNlri::Inclusive {
            rd,
            ethernet_tag: 0,
            originator: theirs
        }
    );
    assert_eq!(inc.route.pmsi_vni, Some(VNI), "{inc:?}");
    assert_eq!(inc.route.next_hop, theirs);
    assert_eq!(inc.route.route_targets, vec![rt]);
    assert!(inc.route.encapsulation_vxlan, "{inc:?}");
    assert_eq!(routes.len(), 2, "nothing else from bagpipe: {routes:?}");
    println!("bagpipe: learned {} and {}", m.route.nlri, inc.route.nlri);

    // (b) our type 2 and type 3 with the instance's target → in bagpipe's EVPN instance.
    let our_rd = RouteDistinguisher::type1(OUR_ID, VNI as u16);
    let ours: IpAddr = lab.ours.into();
    let mac_route = EvpnRoute {
        nlri: EvpnNlri::MacIp {
            rd: our_rd,
            ethernet_tag: 0,
            mac: parse_mac(OUR_MAC).unwrap(),
            ip: Some(OUR_IP.into()),
            vni: VNI,
        },
        next_hop: ours,
        route_targets: vec![rt],
        encapsulation_vxlan: true,
        mac_mobility: None,
        pmsi_vni: None,
    };
    let inc_route = EvpnRoute {
        nlri: EvpnNlri::Inclusive {
            rd: our_rd,
            ethernet_tag: 0,
            originator: ours,
        },
        next_hop: ours,
        route_targets: vec![rt],
        encapsulation_vxlan: true,
        mac_mobility: None,
        pmsi_vni: Some(VNI),
    };
    sp.announce_evpn(mac_route.clone()).await;
    sp.announce_evpn(inc_route.clone()).await;
    // exabgp prints MACs in upper case: "evpn:macadv::<rd>:<esi>:-:<tag>:<MAC>/48:<ip>: ...".
    let mac_key = format!("{}/48:{OUR_IP}", OUR_MAC.to_uppercase());
    let find = |needle: &str| {
        lab.instance_routes()
            .into_iter()
            .find(|(k, _)| k.contains(needle))
    };
    let t = wait_for("our routes in bagpipe's instance", 20, &lab, || {
        find(&mac_key).is_some() && find(&format!("evpn:multicast::{OUR_ID}:")).is_some()
    })
    .await;
    println!("bagpipe: our routes in its EVPN instance {t:?} after announcing");
    let (key, r) = find(&mac_key).unwrap();
    println!("bagpipe: looking glass: {key} = {r}");
    assert!(
        key.starts_with(&format!("evpn:macadv::{OUR_ID}:{VNI}:")),
        "RD: {key}"
    );
    assert!(
        key.ends_with(&format!("({VNI})")),
        "label carries VNI {VNI}: {key}"
    );
    assert_eq!(r["next_hop"].as_str(), Some(lab.ours.to_string().as_str()));
    assert_eq!(r["afi-safi"].as_str(), Some("l2vpn/evpn"));
    assert_eq!(
        r["route_targets"],
        serde_json::json!([format!("target:{rt}")])
    );
    let ext = r["attributes"]["extended-community"].as_str().unwrap_or("");
    assert!(ext.contains("encap:VXLAN"), "{r}");
    let (key, r) = find(&format!("evpn:multicast::{OUR_ID}:")).unwrap();
    println!("bagpipe: looking glass: {key} = {r}");
    let pmsi = r["attributes"]["pmsi-tunnel"].as_str().unwrap_or("");
    assert!(
        pmsi.starts_with("pmsi:ingressreplication:") && pmsi.ends_with(&format!("({VNI}):{ours}")),
        "ingress replication to our VTEP, VNI {VNI}: {r}"
    );

    // What bagpipe asked its dataplane for (the dummy driver logs each call; the linux
    // driver would program the VXLAN FDB from the same calls).
    let setup = format!(
        "DummyVPNInstanceDataplane.setup_dataplane_for_remote_endpoint called with \
         ({}, '{ours}', {VNI},",
        OUR_MAC.to_uppercase()
    );
    let bum = format!(
        "DummyVPNInstanceDataplane.add_dataplane_for_bum_endpoint called with ('{ours}', {VNI},"
    );
    wait_for(
        "bagpipe: dataplane set up for our MAC and VTEP",
        5,
        &lab,
        || {
            let log = lab.log();
            log.contains(&setup) && log.contains(&bum)
        },
    )
    .await;

    // (c1) our withdrawal → gone from bagpipe's instance within 3 s.
    sp.withdraw_evpn(mac_route.nlri).await;
    // The type 3 staying in the same answer shows that the looking glass did answer, and
    // that only the withdrawn route went.
    let t = wait_for("our withdrawal at bagpipe", 3, &lab, || {
        let routes = lab.instance_routes();
        !routes.iter().any(|(k, _)| k.contains(&mac_key))
            && routes
                .iter()
                .any(|(k, _)| k.starts_with(&format!("evpn:multicast::{OUR_ID}:")))
    })
    .await;
    println!("bagpipe: our withdrawal effective {t:?}");
    let remove = format!(
        "DummyVPNInstanceDataplane.remove_dataplane_for_remote_endpoint called with \
         ({}, '{ours}', {VNI},",
        OUR_MAC.to_uppercase()
    );
    wait_for(
        "bagpipe: dataplane entry for our MAC removed",
        3,
        &lab,
        || lab.log().contains(&remove),
    )
    .await;

    // (c2) bagpipe detaches its port → its type 2 is withdrawn within 3 s; the type 3 goes
    // with the instance's last port.
    let (status, body) = lab.http("POST", "/detach_localport", Some(&port_request()));
    assert_eq!(status, 200, "detach_localport: {body}");
    let t = wait_for("bagpipe's withdrawals", 3, &lab, || {
        sp.evpn_routes().is_empty()
    })
    .await;
    println!("bagpipe: its type 2 and type 3 withdrawn {t:?} after the detach");
    assert_eq!(sp.status().peers[0].state, State::Established);
    sp.shutdown().await;
}
