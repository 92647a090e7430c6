//! Interop against real daemons (BIRD 2, FRR bgpd, gobgpd) in a network namespace joined to
//! the test's namespace by a veth pair with per-run names and addresses. Our speaker runs in
//! the test process on the root-side veth address; the daemon in the namespace.
//!
//! Each scenario: session up; our /64 seen by the daemon; the daemon's /64 learned by us;
//! withdraw propagates; route refresh; hold-timer expiry while the daemon is SIGSTOPped;
//! graceful restart (our speaker dropped without NOTIFICATION: the daemon keeps our route;
//! restarted without it: cleared at our End-of-RIB).
//!
//! Set `BGP_CAPTURE=1` to write the daemon's OPEN and UPDATEs (as received on a raw socket)
//! to `tests/corpus/capture-<daemon>-valid.hex`.

mod common;
use common::{must, netns_with_veth, ns_exec_must, sh};

use bgp::evpn::parse_mac;
use bgp::message::{Capabilities, Family, GracefulRestart, Open};
use bgp::{
    codec, BestChange, EvpnNlri, EvpnRoute, Mac, PeerConfig, RouteDistinguisher, RouteTarget,
    Speaker, SpeakerConfig, State,
};
use ipnet::Ipv6Net;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc::Receiver;

const OUR_AS: u32 = 65001;
const THEIR_AS: u32 = 65002;
static RUN: AtomicU32 = AtomicU32::new(0);

/// A namespace, a veth pair and a temp dir; Drop kills the daemon and deletes all of it.
struct Net {
    ns: String,
    veth: String,
    dir: std::path::PathBuf,
    ours: Ipv6Addr,
    theirs: Ipv6Addr,
    daemon: Option<Child>,
    extra_pids: Vec<u32>,
    /// More daemons of the test, killed and reaped on drop.
    extra: Vec<Child>,
}

impl Net {
    fn new(tag: &str) -> Net {
        let n = RUN.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let ns = format!("ilbgp{pid}{tag}{n}");
        let veth = format!("vb{}{n}{}", pid % 100000, &tag[..1]);
        let base = 0x4000 + (pid % 0x3fff) as u16;
        let sub = (n as u16) << 4 | (tag.as_bytes()[0] as u16 & 0xf);
        let ours = Ipv6Addr::new(0xfd42, base, sub, 0, 0, 0, 0, 1);
        let theirs = Ipv6Addr::new(0xfd42, base, sub, 0, 0, 0, 0, 2);
        let dir = std::env::temp_dir().join(&ns);
        let net = Net {
            ns: ns.clone(),
            veth: veth.clone(),
            dir: dir.clone(),
            ours,
            theirs,
            daemon: None,
            extra_pids: vec![],
            extra: vec![],
        };
        std::fs::create_dir_all(&dir).unwrap();
        netns_with_veth(
            &ns,
            &veth,
            &format!("{ours}/64"),
            &format!("{theirs}/64"),
            &["nodad"],
        );
        net
    }

    fn exec(&self, args: &[&str]) -> std::process::Output {
        let mut v = vec!["ip", "netns", "exec", &self.ns];
        v.extend_from_slice(args);
        sh(&v)
    }

    fn exec_must(&self, args: &[&str]) {
        ns_exec_must(&self.ns, args);
    }

    fn spawn(&mut self, args: &[&str]) {
        let log = std::fs::File::create(self.dir.join("daemon.log")).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns])
            .args(args)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        self.daemon = Some(child);
    }

    fn pid(&self) -> u32 {
        self.daemon.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.pid() as i32, sig) };
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        if let Some(c) = self.daemon.as_mut() {
            // SAFETY: signals to our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGCONT) };
            let _ = c.kill();
            let _ = c.wait();
        }
        for c in &mut self.extra {
            let _ = c.kill();
            let _ = c.wait();
        }
        for p in &self.extra_pids {
            // SAFETY: pids read from the daemon's pid file in our temp dir.
            unsafe { libc::kill(*p as i32, libc::SIGKILL) };
        }
        let _ = sh(&["ip", "link", "del", &self.veth]);
        let _ = sh(&["ip", "netns", "del", &self.ns]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What a scenario needs from a daemon.
trait Daemon {
    fn name(&self) -> &'static str;
    /// The daemon's routing table has `p` from us.
    fn has_route(&self, net: &Net, p: &Ipv6Net) -> bool;
    /// Announce / withdraw the daemon's own prefix.
    fn originate(&self, net: &Net, p: &Ipv6Net, on: bool);
    /// Ask the daemon to send us ROUTE-REFRESH (None: it has no such command).
    fn request_refresh(&self, net: &Net) -> bool;
}

async fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(secs),
            "timed out ({secs}s) waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    t.elapsed()
}

async fn next_change(rx: &mut Receiver<BestChange>, secs: u64) -> Option<BestChange> {
    tokio::time::timeout(Duration::from_secs(secs), rx.recv())
        .await
        .ok()
        .flatten()
}

fn our_cfg(net: &Net, hold: u16, passive: bool) -> SpeakerConfig {
    SpeakerConfig {
        local_as: OUR_AS,
        router_id: Ipv4Addr::new(10, 255, 0, 1),
        listen: Some(SocketAddr::new(net.ours.into(), 179)),
        local_address: None,
        peers: vec![PeerConfig {
            address: net.theirs.into(),
            remote_as: THEIR_AS,
            passive,
            hold_time: hold,
            port: 179,
            max_prefixes: 1000,
            route_server: false,
        }],
        graceful_restart_time: Some(120),
        connect_retry_secs: 1,
        families: vec![bgp::Family::Ipv6Unicast],
    }
}

const OURS: &str = "2001:db8:a1::/64";
const THEIRS: &str = "2001:db8:b1::/64";

async fn scenario(net: &mut Net, d: &dyn Daemon, passive: bool) {
    let ours: Ipv6Net = OURS.parse().unwrap();
    let theirs: Ipv6Net = THEIRS.parse().unwrap();
    let name = d.name();
    let (sp, mut rx) = Speaker::start(our_cfg(net, 9, passive)).await.unwrap();
    let up = wait_for(&format!("{name}: Established"), 60, || {
        sp.status().peers[0].state == State::Established
    })
    .await;
    println!("{name}: established in {up:?}");
    sp.announce(ours, net.ours).await;
    let t = wait_for(&format!("{name}: sees our route"), 20, || {
        d.has_route(net, &ours)
    })
    .await;
    println!("{name}: our route seen in {t:?}");
    d.originate(net, &theirs, true);
    match next_change(&mut rx, 20).await {
        Some(BestChange::Changed(r)) => {
            assert_eq!(r.prefix, theirs, "{name}");
            assert_eq!(r.attrs.first_as(), Some(THEIR_AS), "{name}");
            println!("{name}: learned {} via {}", r.prefix, r.next_hop);
        }
        other => panic!("{name}: expected their route, got {other:?}\n{}", net.log()),
    }
    // Withdraw both ways.
    sp.withdraw(ours).await;
    wait_for(&format!("{name}: our withdraw"), 20, || {
        !d.has_route(net, &ours)
    })
    .await;
    d.originate(net, &theirs, false);
    assert_eq!(
        next_change(&mut rx, 20).await,
        Some(BestChange::Removed { prefix: theirs }),
        "{name}"
    );
    d.originate(net, &theirs, true);
    assert!(
        matches!(next_change(&mut rx, 20).await, Some(BestChange::Changed(_))),
        "{name}"
    );
    sp.announce(ours, net.ours).await;
    wait_for(&format!("{name}: our route again"), 20, || {
        d.has_route(net, &ours)
    })
    .await;

    // Route refresh: we ask, the daemon resends its UPDATE.
    let before = sp.status().peers[0].updates_received;
    sp.refresh(None).await;
    wait_for(&format!("{name}: refresh answered"), 20, || {
        sp.status().peers[0].updates_received > before
    })
    .await;
    if d.request_refresh(net) {
        wait_for(&format!("{name}: its refresh request"), 20, || {
            sp.status().peers[0].refreshes_received > 0
        })
        .await;
        assert!(d.has_route(net, &ours));
    }

    // Hold timer: the daemon frozen, our 9 s hold time runs out.
    net.signal(libc::SIGSTOP);
    let t = wait_for(&format!("{name}: hold timer expiry"), 20, || {
        sp.status().peers[0].state != State::Established
    })
    .await;
    let err = sp.status().peers[0].last_error.clone().unwrap_or_default();
    assert!(err.contains("hold timer expired"), "{name}: {err}");
    assert_eq!(
        next_change(&mut rx, 5).await,
        Some(BestChange::Removed { prefix: theirs }),
        "{name}"
    );
    println!("{name}: hold timer expired {t:?} after SIGSTOP ({err})");
    net.signal(libc::SIGCONT);
    wait_for(&format!("{name}: back after SIGCONT"), 90, || {
        sp.status().peers[0].state == State::Established
    })
    .await;
    assert!(
        matches!(next_change(&mut rx, 20).await, Some(BestChange::Changed(_))),
        "{name}"
    );
    wait_for(&format!("{name}: our route after SIGCONT"), 20, || {
        d.has_route(net, &ours)
    })
    .await;

    // Graceful restart: drop our speaker without NOTIFICATION; the daemon keeps our route.
    drop(sp);
    drop(rx);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        d.has_route(net, &ours),
        "{name}: our route kept across our restart\n{}",
        net.log()
    );
    // Restart without the route: our End-of-RIB makes the daemon drop the stale one.
    let (sp, mut rx) = Speaker::start(our_cfg(net, 9, passive)).await.unwrap();
    wait_for(&format!("{name}: re-established"), 60, || {
        sp.status().peers[0].state == State::Established
    })
    .await;
    let t = wait_for(&format!("{name}: stale route cleared"), 30, || {
        !d.has_route(net, &ours)
    })
    .await;
    println!("{name}: stale route cleared {t:?} after re-establishment");
    assert!(
        matches!(next_change(&mut rx, 20).await, Some(BestChange::Changed(_))),
        "{name}"
    );
    sp.shutdown().await;
}

/// Completes an OPEN exchange on a raw socket from our address and records what the daemon
/// sends (OPEN, KEEPALIVE, UPDATEs, End-of-RIB) into the corpus.
async fn capture(net: &Net, d: &dyn Daemon) {
    capture_as(net, d.name(), &[Family::Ipv6Unicast]).await
}

/// [`capture`] offering `families`, into `tests/corpus/capture-<name>-valid.hex`.
async fn capture_as(net: &Net, name: &str, families: &[Family]) {
    capture_from(net.ours.into(), net.theirs.into(), name, families).await
}

/// [`capture_as`] between any two addresses.
async fn capture_from(
    ours: std::net::IpAddr,
    theirs: std::net::IpAddr,
    name: &str,
    families: &[Family],
) {
    if std::env::var_os("BGP_CAPTURE").is_none() {
        return;
    }
    let sock = if ours.is_ipv6() {
        tokio::net::TcpSocket::new_v6()
    } else {
        tokio::net::TcpSocket::new_v4()
    }
    .unwrap();
    sock.bind(SocketAddr::new(ours, 0)).unwrap();
    let Ok(Ok(mut s)) = tokio::time::timeout(
        Duration::from_secs(10),
        sock.connect(SocketAddr::new(theirs, 179)),
    )
    .await
    else {
        println!("{name}: capture: no connection");
        return;
    };
    let open = Open {
        asn: OUR_AS,
        hold_time: 90,
        router_id: Ipv4Addr::new(10, 255, 0, 1),
        capabilities: Capabilities {
            families: families.to_vec(),
            four_octet_as: Some(OUR_AS),
            route_refresh: true,
            graceful_restart: Some(GracefulRestart {
                restarting: false,
                restart_time: 120,
                families: families.iter().map(|f| (*f, true)).collect(),
            }),
        },
    };
    s.write_all(&codec::encode_open(&open).unwrap())
        .await
        .unwrap();
    s.write_all(&codec::encode_keepalive()).await.unwrap();
    let mut lines = vec![format!(
        "# captured from {name} (as received by ilanet's speaker)"
    )];
    let end = Instant::now() + Duration::from_secs(4);
    let mut buf = Vec::new();
    while Instant::now() < end {
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout(Duration::from_millis(500), s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => {}
        }
        while let Ok(Some(len)) = codec::frame_len(&buf) {
            let m: Vec<u8> = buf.drain(..len).collect();
            lines.push(m.iter().map(|b| format!("{b:02x}")).collect());
        }
    }
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("tests/corpus/capture-{name}-valid.hex"));
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    println!(
        "{name}: captured {} messages to {}",
        lines.len() - 1,
        path.display()
    );
}

/// Waits (10 s at most) until the daemon answers its CLI.
fn wait_up(net: &Net, what: &str, mut up: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(10);
    while !up() {
        assert!(
            Instant::now() < end,
            "{what} did not come up:\n{}",
            net.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Captures with the daemon's prefix originated (so an UPDATE with NLRI is in the corpus),
/// then leaves it withdrawn for the scenario.
async fn with_capture(net: &Net, d: &dyn Daemon) {
    let theirs: Ipv6Net = THEIRS.parse().unwrap();
    d.originate(net, &theirs, true);
    capture(net, d).await;
    d.originate(net, &theirs, false);
}

// ---- BIRD ----

struct Bird {
    sock: String,
}

impl Daemon for Bird {
    fn name(&self) -> &'static str {
        "bird"
    }
    fn has_route(&self, net: &Net, p: &Ipv6Net) -> bool {
        let o = net.exec(&[
            "birdc", "-s", &self.sock, "show", "route", "protocol", "ila",
        ]);
        String::from_utf8_lossy(&o.stdout).contains(&p.to_string())
    }
    fn originate(&self, net: &Net, _p: &Ipv6Net, on: bool) {
        net.exec_must(&[
            "birdc",
            "-s",
            &self.sock,
            if on { "enable" } else { "disable" },
            "mine",
        ]);
    }
    fn request_refresh(&self, net: &Net) -> bool {
        net.exec_must(&["birdc", "-s", &self.sock, "reload", "in", "ila"]);
        true
    }
}

fn start_bird(net: &mut Net, passive: bool) -> Bird {
    let conf = format!(
        "router id 10.255.0.2;\n\
         protocol device {{}}\n\
         protocol static mine {{ ipv6; route {THEIRS} unreachable; }}\n\
         protocol bgp ila {{\n  local {theirs} as {THEIR_AS};\n  neighbor {ours} as {OUR_AS};\n  \
         hold time 9; keepalive time 3; connect retry time 1; error wait time 1, 2;\n  \
         graceful restart on;\n  {passive}\n  ipv6 {{ import all; export all; next hop self; }};\n}}\n",
        theirs = net.theirs,
        ours = net.ours,
        passive = if passive { "passive on;" } else { "" },
    );
    let path = net.dir.join("bird.conf");
    std::fs::write(&path, conf).unwrap();
    let sock = net.dir.join("bird.ctl").display().to_string();
    net.spawn(&[
        "/usr/sbin/bird",
        "-c",
        &path.display().to_string(),
        "-s",
        &sock,
        "-f",
    ]);
    Bird { sock }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: network namespaces, bird2"]
async fn bird_interop() {
    let mut net = Net::new("bird");
    let bird = start_bird(&mut net, false);
    std::thread::sleep(Duration::from_millis(500));
    with_capture(&net, &bird).await;
    scenario(&mut net, &bird, false).await;
}

// ---- gobgpd ----

struct Gobgp {
    api: String,
}

impl Gobgp {
    fn cli(&self, net: &Net, args: &[&str]) -> std::process::Output {
        let mut v = vec!["gobgp", "-u", "127.0.0.1", "-p", &self.api];
        v.extend_from_slice(args);
        net.exec(&v)
    }
}

impl Daemon for Gobgp {
    fn name(&self) -> &'static str {
        "gobgp"
    }
    fn has_route(&self, net: &Net, p: &Ipv6Net) -> bool {
        let o = self.cli(net, &["global", "rib", "-a", "ipv6"]);
        String::from_utf8_lossy(&o.stdout).contains(&p.to_string())
    }
    fn originate(&self, net: &Net, p: &Ipv6Net, on: bool) {
        let nh = net.theirs.to_string();
        let o = self.cli(
            net,
            &[
                "global",
                "rib",
                if on { "add" } else { "del" },
                "-a",
                "ipv6",
                &p.to_string(),
                "nexthop",
                &nh,
            ],
        );
        assert!(
            o.status.success(),
            "gobgp rib: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    fn request_refresh(&self, _net: &Net) -> bool {
        // `gobgp neighbor X softresetin` re-runs policy over gobgpd's own Adj-RIB-In and sends
        // no ROUTE-REFRESH (seen here: none arrived in 20 s), so only our request is tested.
        false
    }
}

fn start_gobgp(net: &mut Net, passive: bool) -> Gobgp {
    let api = "50051".to_string();
    let conf = format!(
        "[global.config]\n  as = {THEIR_AS}\n  router-id = \"10.255.0.3\"\n  port = 179\n  local-address-list = [\"{theirs}\"]\n\n\
         [[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"{ours}\"\n    peer-as = {OUR_AS}\n\
         \x20 [neighbors.timers.config]\n    hold-time = 9\n    keepalive-interval = 3\n    connect-retry = 1\n\
         \x20 [neighbors.transport.config]\n    passive-mode = {passive}\n\
         \x20 [neighbors.graceful-restart.config]\n    enabled = true\n    restart-time = 120\n\
         \x20 [[neighbors.afi-safis]]\n    [neighbors.afi-safis.config]\n      afi-safi-name = \"ipv6-unicast\"\n\
         \x20   [neighbors.afi-safis.mp-graceful-restart.config]\n      enabled = true\n",
        theirs = net.theirs,
        ours = net.ours,
    );
    spawn_gobgpd(net, &conf, api)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: network namespaces, gobgpd"]
async fn gobgp_interop() {
    let mut net = Net::new("gobgp");
    let g = start_gobgp(&mut net, false);
    wait_up(&net, "gobgpd", || g.cli(&net, &["global"]).status.success());
    with_capture(&net, &g).await;
    scenario(&mut net, &g, false).await;
}

// ---- FRR bgpd ----

struct Frr {
    vty: String,
}

impl Frr {
    fn vtysh(&self, net: &Net, cmds: &[&str]) -> std::process::Output {
        let mut v = vec!["vtysh", "--vty_socket", &self.vty, "-d", "bgpd"];
        for c in cmds {
            v.push("-c");
            v.push(c);
        }
        net.exec(&v)
    }
}

impl Daemon for Frr {
    fn name(&self) -> &'static str {
        "frr"
    }
    fn has_route(&self, net: &Net, p: &Ipv6Net) -> bool {
        let o = self.vtysh(net, &["show bgp ipv6 unicast"]);
        String::from_utf8_lossy(&o.stdout).contains(&p.to_string())
    }
    fn originate(&self, net: &Net, p: &Ipv6Net, on: bool) {
        let net_cmd = format!("{}network {p}", if on { "" } else { "no " });
        let as_cmd = format!("router bgp {THEIR_AS}");
        let o = self.vtysh(
            net,
            &[
                "configure terminal",
                &as_cmd,
                "address-family ipv6 unicast",
                &net_cmd,
            ],
        );
        assert!(
            o.status.success(),
            "vtysh: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    fn request_refresh(&self, net: &Net) -> bool {
        let cmd = format!("clear bgp ipv6 unicast {} soft in", net.ours);
        self.vtysh(net, &[&cmd]).status.success()
    }
}

fn start_frr(net: &mut Net, passive: bool) -> Frr {
    let conf = format!(
        "hostname frr-{ns}\n\
         router bgp {THEIR_AS}\n bgp router-id 10.255.0.4\n no bgp ebgp-requires-policy\n no bgp default ipv4-unicast\n\
         \x20no bgp network import-check\n bgp graceful-restart\n bgp graceful-restart restart-time 120\n\
         \x20neighbor {ours} remote-as {OUR_AS}\n neighbor {ours} timers 3 9\n neighbor {ours} timers connect 1\n{passive}\
         \x20address-family ipv6 unicast\n  neighbor {ours} activate\n exit-address-family\n",
        ns = net.ns,
        ours = net.ours,
        passive = if passive { format!(" neighbor {} passive\n", net.ours) } else { String::new() },
    );
    let path = net.dir.join("bgpd.conf");
    std::fs::write(&path, conf).unwrap();
    let vty = net.dir.display().to_string();
    let pidf = net.dir.join("bgpd.pid").display().to_string();
    let listen = net.theirs.to_string();
    net.spawn(&[
        "/usr/lib/frr/bgpd",
        "-f",
        &path.display().to_string(),
        "-i",
        &pidf,
        "--vty_socket",
        &vty,
        "-Z",
        "-S",
        "-l",
        &listen,
        "-p",
        "179",
        "--log",
        "stdout",
        "-P",
        "0",
    ]);
    Frr { vty }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: network namespaces, frr bgpd"]
async fn frr_interop() {
    let mut net = Net::new("frr");
    let f = start_frr(&mut net, false);
    wait_up(&net, "bgpd", || {
        f.vtysh(&net, &["show bgp summary"]).status.success()
    });
    with_capture(&net, &f).await;
    scenario(&mut net, &f, false).await;
}

// ---- L2VPN EVPN through gobgpd as route server ----

const VNI: u32 = 100;
const RS_ID: Ipv4Addr = Ipv4Addr::new(10, 255, 0, 3);
/// The route server's AS; its clients: A [`OUR_AS`], B [`B_AS`], the injector [`INJ_AS`].
const RS_AS: u32 = 65002;
const B_AS: u32 = 65003;
const INJ_AS: u32 = 65004;
const INJ_ID: Ipv4Addr = Ipv4Addr::new(10, 255, 0, 5);

/// Our second address on the veth (a second route-server client).
fn second_addr(net: &Net) -> Ipv6Addr {
    let mut s = net.ours.segments();
    s[7] = 3;
    let a = Ipv6Addr::from(s);
    must(&[
        "ip",
        "addr",
        "add",
        &format!("{a}/64"),
        "dev",
        &net.veth,
        "nodad",
    ]);
    a
}

/// gobgpd as route server (AS [`RS_AS`], eBGP; it keeps iBGP split horizon even for
/// route-server clients) with each of `clients` (address, AS) a passive route-server client
/// for L2VPN EVPN only.
fn start_gobgp_rs(net: &mut Net, clients: &[(Ipv6Addr, u32)]) -> Gobgp {
    let api = "50051".to_string();
    let mut conf = format!(
        "[global.config]\n  as = {RS_AS}\n  router-id = \"{RS_ID}\"\n  port = 179\n  local-address-list = [\"{}\"]\n",
        net.theirs
    );
    for (c, asn) in clients {
        conf.push_str(&format!(
            "\n[[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"{c}\"\n    peer-as = {asn}\n\
             \x20 [neighbors.timers.config]\n    hold-time = 9\n    keepalive-interval = 3\n    connect-retry = 1\n\
             \x20 [neighbors.transport.config]\n    passive-mode = true\n\
             \x20 [neighbors.route-server.config]\n    route-server-client = true\n\
             \x20 [[neighbors.afi-safis]]\n    [neighbors.afi-safis.config]\n      afi-safi-name = \"l2vpn-evpn\"\n"
        ));
    }
    spawn_gobgpd(net, &conf, api)
}

/// Writes `conf` and starts gobgpd on it in `net`'s namespace, its API on `api`.
fn spawn_gobgpd(net: &mut Net, conf: &str, api: String) -> Gobgp {
    let path = net.dir.join("gobgpd.toml");
    std::fs::write(&path, conf).unwrap();
    net.spawn(&[
        "gobgpd",
        "-f",
        &path.display().to_string(),
        "--api-hosts",
        &format!("127.0.0.1:{api}"),
        "-l",
        "info",
    ]);
    Gobgp { api }
}

/// A second gobgpd in the namespace, on `addr`, a client of the route server at
/// `net.theirs`: gobgpd's route server passes nothing from its own global RIB to its clients,
/// so routes are injected here (`gobgp global rib add`) and reach us through the server.
fn start_gobgp_injector(net: &mut Net, addr: Ipv6Addr) -> Gobgp {
    let api = "50052".to_string();
    let conf = format!(
        "[global.config]\n  as = {INJ_AS}\n  router-id = \"{INJ_ID}\"\n  port = 179\n  local-address-list = [\"{addr}\"]\n\n\
         [[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"{rs}\"\n    peer-as = {RS_AS}\n\
         \x20 [neighbors.timers.config]\n    hold-time = 9\n    keepalive-interval = 3\n    connect-retry = 1\n\
         \x20 [neighbors.transport.config]\n    local-address = \"{addr}\"\n\
         \x20 [[neighbors.afi-safis]]\n    [neighbors.afi-safis.config]\n      afi-safi-name = \"l2vpn-evpn\"\n",
        rs = net.theirs
    );
    let path = net.dir.join("gobgpd-injector.toml");
    std::fs::write(&path, conf).unwrap();
    let log = std::fs::File::create(net.dir.join("injector.log")).unwrap();
    let child = Command::new("ip")
        .args(["netns", "exec", &net.ns, "gobgpd", "-f"])
        .arg(&path)
        .args(["--api-hosts", &format!("127.0.0.1:{api}"), "-l", "info"])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    net.extra.push(child);
    Gobgp { api }
}

fn evpn_cfg(me: Ipv6Addr, id: u8, asn: u32, rs: Ipv6Addr) -> SpeakerConfig {
    SpeakerConfig {
        local_as: asn,
        router_id: Ipv4Addr::new(10, 255, 1, id),
        listen: None,
        local_address: Some(me.into()),
        peers: vec![PeerConfig {
            address: rs.into(),
            remote_as: RS_AS,
            passive: false,
            hold_time: 9,
            port: 179,
            max_prefixes: 1000,
            route_server: true,
        }],
        graceful_restart_time: Some(120),
        connect_retry_secs: 1,
        // Both offered; gobgpd offers EVPN only, so only EVPN is negotiated.
        families: vec![Family::Ipv6Unicast, Family::L2vpnEvpn],
    }
}

fn mac_ip(rd: RouteDistinguisher, mac: Mac, ip: Option<std::net::IpAddr>) -> EvpnNlri {
    EvpnNlri::MacIp {
        rd,
        ethernet_tag: 0,
        mac,
        ip,
        vni: VNI,
    }
}

fn our_mac_route(nlri: EvpnNlri, vtep: Ipv6Addr, seq: Option<u32>) -> EvpnRoute {
    EvpnRoute {
        nlri,
        next_hop: vtep.into(),
        route_targets: vec![RouteTarget::for_vni(OUR_AS, VNI)],
        encapsulation_vxlan: true,
        mac_mobility: seq,
        pmsi_vni: None,
    }
}

/// The JSON of gobgpd's Adj-RIB-In for `client`, EVPN.
fn adj_in(g: &Gobgp, net: &Net, client: Ipv6Addr) -> serde_json::Value {
    let o = g.cli(
        net,
        &[
            "neighbor",
            &client.to_string(),
            "adj-in",
            "-a",
            "evpn",
            "-j",
        ],
    );
    serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null)
}

/// Paths of gobgpd's JSON RIB output whose NLRI key contains `needle`.
fn paths_matching<'a>(rib: &'a serde_json::Value, needle: &str) -> Vec<&'a serde_json::Value> {
    let mut out = Vec::new();
    if let Some(m) = rib.as_object() {
        for (k, v) in m {
            if k.contains(needle) {
                out.extend(v.as_array().into_iter().flatten());
            }
        }
    }
    out
}

fn attr_of(path: &serde_json::Value, code: u64) -> Option<&serde_json::Value> {
    path["attrs"]
        .as_array()?
        .iter()
        .find(|a| a["type"].as_u64() == Some(code))
}

fn gobgp_add(g: &Gobgp, net: &Net, args: &[&str]) {
    let mut v = vec!["global", "rib", "add", "-a", "evpn"];
    v.extend_from_slice(args);
    let o = g.cli(net, &v);
    assert!(
        o.status.success(),
        "gobgp {v:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn gobgp_del(g: &Gobgp, net: &Net, args: &[&str]) {
    let mut v = vec!["global", "rib", "del", "-a", "evpn"];
    v.extend_from_slice(args);
    let o = g.cli(net, &v);
    assert!(
        o.status.success(),
        "gobgp {v:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: network namespaces, gobgpd"]
async fn gobgp_evpn_route_server() {
    let mut net = Net::new("evpn");
    let ours2 = second_addr(&net);
    let ours = net.ours;
    let mut s = net.theirs.segments();
    s[7] = 4;
    let inj_addr = Ipv6Addr::from(s);
    let peer_if = format!("{}p", net.veth);
    net.exec_must(&[
        "ip",
        "addr",
        "add",
        &format!("{inj_addr}/64"),
        "dev",
        &peer_if,
        "nodad",
    ]);
    let g = start_gobgp_rs(
        &mut net,
        &[(ours, OUR_AS), (ours2, B_AS), (inj_addr, INJ_AS)],
    );
    wait_up(&net, "gobgpd", || g.cli(&net, &["global"]).status.success());
    let inj = start_gobgp_injector(&mut net, inj_addr);
    wait_up(&net, "gobgpd injector", || {
        inj.cli(&net, &["global"]).status.success()
    });
    let rs = net.theirs;
    let rs_rd = format!("{INJ_ID}:{VNI}");
    let rt = format!("{OUR_AS}:{VNI}");
    let vni = VNI.to_string();
    let mac1 = "02:00:00:00:00:01";
    let ip1 = "192.0.2.1";
    let vtep_rs = inj_addr.to_string();
    // (a) routes injected into gobgpd: a MAC/IP and an inclusive multicast with PMSI.
    gobgp_add(
        &inj,
        &net,
        &[
            "macadv", mac1, ip1, "etag", "0", "label", &vni, "rd", &rs_rd, "rt", &rt, "encap",
            "vxlan",
        ],
    );
    gobgp_add(
        &inj,
        &net,
        &[
            "multicast",
            &vtep_rs,
            "etag",
            "0",
            "rd",
            &rs_rd,
            "rt",
            &rt,
            "encap",
            "vxlan",
            "pmsi",
            "ingress-repl",
            &vni,
            &vtep_rs,
        ],
    );
    wait_for(
        "gobgp-evpn: injected routes at the route server",
        30,
        || {
            let rib = adj_in(&g, &net, inj_addr);
            !paths_matching(&rib, mac1).is_empty() && !paths_matching(&rib, "multicast").is_empty()
        },
    )
    .await;
    capture_as(&net, "gobgp-evpn", &[Family::L2vpnEvpn]).await;

    let (mut a, _a_v6) = Speaker::start(evpn_cfg(net.ours, 1, OUR_AS, rs))
        .await
        .unwrap();
    let mut a_evpn = a.evpn_changes().unwrap();
    let (b, _b_v6) = Speaker::start(evpn_cfg(ours2, 2, B_AS, rs)).await.unwrap();
    let up = wait_for("gobgp-evpn: both Established", 60, || {
        a.status().peers[0].state == State::Established
            && b.status().peers[0].state == State::Established
    })
    .await;
    println!("gobgp-evpn: established in {up:?}");
    assert_eq!(a.status().peers[0].families, vec![Family::L2vpnEvpn]);

    let rs_rd_v: RouteDistinguisher = rs_rd.parse().unwrap();
    let m1 = mac_ip(
        rs_rd_v,
        parse_mac(mac1).unwrap(),
        Some(ip1.parse().unwrap()),
    );
    let t = wait_for("gobgp-evpn: injected routes at A", 20, || {
        a.evpn_routes().len() >= 2
    })
    .await;
    println!("gobgp-evpn: injected routes arrived in {t:?}");
    let routes = a.evpn_routes();
    let got = routes
        .iter()
        .find(|r| r.route.nlri.route_key() == m1.route_key())
        .unwrap_or_else(|| panic!("no {m1} in {routes:#?}"));
    assert_eq!(
        got.route.nlri, m1,
        "MAC, IP, RD and VNI (label) as injected"
    );
    assert_eq!(
        got.route.route_targets,
        vec![RouteTarget::for_vni(OUR_AS, VNI)]
    );
    assert!(got.route.encapsulation_vxlan);
    assert_eq!(got.route.mac_mobility, None);
    println!(
        "gobgp-evpn: A learned {} via {}",
        got.route.nlri, got.route.next_hop
    );
    let inc = routes
        .iter()
        .find(|r| matches!(r.route.nlri, EvpnNlri::Inclusive { .. }))
        .unwrap();
    assert_eq!(
        inc.route.nlri,
        EvpnNlri::Inclusive {
            rd: rs_rd_v,
            ethernet_tag: 0,
            originator: inj_addr.into()
        }
    );
    assert_eq!(
        inc.route.pmsi_vni,
        Some(VNI),
        "PMSI ingress replication label"
    );
    assert!(inc.route.encapsulation_vxlan);
    println!(
        "gobgp-evpn: A learned {} pmsi {:?} via {}",
        inc.route.nlri, inc.route.pmsi_vni, inc.route.next_hop
    );
    // The route server passes the injected routes unchanged: next hop = the injector.
    assert_eq!(
        got.route.next_hop,
        std::net::IpAddr::from(inj_addr),
        "next hop"
    );

    // (b) B announces a MAC/IP (with MAC mobility) and its inclusive multicast route.
    let b_rd = RouteDistinguisher::type1(Ipv4Addr::new(10, 255, 1, 2), VNI as u16);
    let mac2: Mac = [2, 0, 0, 0, 0, 2];
    let m2 = mac_ip(b_rd, mac2, Some("192.0.2.2".parse().unwrap()));
    b.announce_evpn(our_mac_route(m2, ours2, Some(3))).await;
    let b_inc = EvpnRoute {
        nlri: EvpnNlri::Inclusive {
            rd: b_rd,
            ethernet_tag: 0,
            originator: ours2.into(),
        },
        next_hop: ours2.into(),
        route_targets: vec![RouteTarget::for_vni(OUR_AS, VNI)],
        encapsulation_vxlan: true,
        mac_mobility: None,
        pmsi_vni: Some(VNI),
    };
    b.announce_evpn(b_inc.clone()).await;
    let t = wait_for("gobgp-evpn: B's routes in gobgpd", 20, || {
        let rib = adj_in(&g, &net, ours2);
        !paths_matching(&rib, "02:00:00:00:00:02").is_empty()
            && !paths_matching(&rib, "multicast").is_empty()
    })
    .await;
    println!("gobgp-evpn: B's routes in gobgpd's adj-in after {t:?}");
    let rib = adj_in(&g, &net, ours2);
    let p = paths_matching(&rib, "02:00:00:00:00:02")[0];
    let nlri = &p["nlri"]["value"];
    assert_eq!(nlri["rd"]["admin"], "10.255.1.2", "{p}");
    assert_eq!(nlri["rd"]["assigned"], VNI, "{p}");
    assert_eq!(nlri["ip"], "192.0.2.2", "{p}");
    assert_eq!(nlri["labels"][0], VNI, "{p}");
    let ecs = attr_of(p, 16).unwrap_or_else(|| panic!("no ext communities: {p}"));
    let ecs = ecs["value"].as_array().unwrap();
    assert!(
        ecs.iter()
            .any(|e| e["type"] == 0 && e["subtype"] == 2 && e["value"] == rt),
        "route target: {p}"
    );
    assert!(
        ecs.iter()
            .any(|e| e["type"] == 3 && e["subtype"] == 12 && e["tunnel_type"] == 8),
        "encapsulation VXLAN: {p}"
    );
    assert!(
        ecs.iter()
            .any(|e| e["type"] == 6 && e["subtype"] == 0 && e["sequence"] == 3),
        "MAC mobility seq 3: {p}"
    );
    assert_eq!(attr_of(p, 14).unwrap()["nexthop"], ours2.to_string(), "{p}");
    let pm = paths_matching(&rib, "multicast")[0];
    let pmsi = attr_of(pm, 22).unwrap_or_else(|| panic!("no PMSI: {pm}"));
    println!("gobgp-evpn: gobgpd sees B's PMSI {pmsi}");
    assert_eq!(pmsi["label"], VNI, "{pm}");
    assert_eq!(pmsi["tunnel-type"], 6, "ingress replication: {pm}");
    assert_eq!(pmsi["tunnel-id"], ours2.to_string(), "{pm}");
    // A learns B's routes through the route server, unchanged.
    wait_for("gobgp-evpn: A learns B's MAC", 20, || {
        a.evpn_routes().iter().any(|r| r.route.nlri == m2)
    })
    .await;
    let r = a
        .evpn_routes()
        .into_iter()
        .find(|r| r.route.nlri == m2)
        .unwrap();
    assert_eq!(r.route.mac_mobility, Some(3));
    assert_eq!(r.route.next_hop, std::net::IpAddr::from(ours2));

    // (c) withdraw → gone from gobgpd and from A within 3 s.
    b.withdraw_evpn(m2).await;
    let t = wait_for("gobgp-evpn: withdraw in gobgpd", 3, || {
        paths_matching(&adj_in(&g, &net, ours2), "02:00:00:00:00:02").is_empty()
    })
    .await;
    let t2 = wait_for("gobgp-evpn: withdraw at A", 3, || {
        !a.evpn_routes().iter().any(|r| r.route.nlri == m2)
    })
    .await;
    println!("gobgp-evpn: withdrawal seen by gobgpd in {t:?}, by A in {t2:?}");
    gobgp_del(
        &inj,
        &net,
        &[
            "macadv", mac1, ip1, "etag", "0", "label", &vni, "rd", &rs_rd, "rt", &rt,
        ],
    );
    wait_for("gobgp-evpn: injected withdraw at A", 3, || {
        !a.evpn_routes()
            .iter()
            .any(|r| r.route.key() == m1.route_key())
    })
    .await;

    // (d) MAC move: MAC 3 at the route server's RD (no mobility: seq 0), then at B's RD with
    // seq 1. A sees both NLRI; the MAC table picks the moved one.
    let mac3 = "02:00:00:00:00:03";
    gobgp_add(
        &inj,
        &net,
        &[
            "macadv", mac3, "0.0.0.0", "etag", "0", "label", &vni, "rd", &rs_rd, "rt", &rt,
            "encap", "vxlan",
        ],
    );
    let mac3_v = parse_mac(mac3).unwrap();
    wait_for("gobgp-evpn: MAC 3 at A", 20, || {
        bgp::evpn::mac_table(&a.evpn_routes())
            .get(&(VNI, mac3_v))
            .is_some_and(|r| r.route.nlri.rd() == rs_rd_v)
    })
    .await;
    let moved = mac_ip(b_rd, mac3_v, None);
    b.announce_evpn(our_mac_route(moved, ours2, Some(1))).await;
    let t = wait_for("gobgp-evpn: moved MAC wins at A", 20, || {
        bgp::evpn::mac_table(&a.evpn_routes())
            .get(&(VNI, mac3_v))
            .is_some_and(|r| r.route.nlri == moved)
    })
    .await;
    let both = a
        .evpn_routes()
        .iter()
        .filter(|r| matches!(r.route.nlri, EvpnNlri::MacIp { mac, .. } if mac == mac3_v))
        .count();
    // gobgpd applies RFC 7432 §15 itself: it drops the seq-0 location from what it passes
    // on once the seq-1 one arrives, so A holds 1 or 2 MAC/IP routes for MAC 3; either way
    // the MAC table (what the agent programs) has the moved one.
    println!("gobgp-evpn: A holds {both} route(s) for the moved MAC");
    assert!((1..=2).contains(&both));
    println!("gobgp-evpn: MAC move (seq 1 over seq 0) effective at A after {t:?}");
    // The change stream told A about all of it.
    let mut changes = 0;
    while let Ok(c) = a_evpn.try_recv() {
        changes += 1;
        let _ = c;
    }
    assert!(changes >= 6, "EVPN changes seen on the stream: {changes}");
    let st = a.status();
    assert!(st.peers[0].evpn_received >= 3, "{st:?}");
    assert_eq!(b.status().peers[0].evpn_sent, 2);
    b.shutdown().await;
    a.shutdown().await;
}

// ---- L2VPN EVPN with FRR (zebra + bgpd, advertise-all-vni over a real VXLAN device) ----

/// IPv4 addresses on the veth (FRR 8.4's EVPN wants an IPv4 VTEP), unique per run.
fn add_v4(net: &Net) -> (Ipv4Addr, Ipv4Addr) {
    let n = RUN.load(Ordering::SeqCst) as u8;
    let p = (std::process::id() % 250) as u8;
    let ours = Ipv4Addr::new(10, 200u8.wrapping_add(n % 50), p, 1);
    let theirs = Ipv4Addr::new(10, 200u8.wrapping_add(n % 50), p, 2);
    must(&["ip", "addr", "add", &format!("{ours}/24"), "dev", &net.veth]);
    let peer_if = format!("{}p", net.veth);
    net.exec_must(&[
        "ip",
        "addr",
        "add",
        &format!("{theirs}/24"),
        "dev",
        &peer_if,
    ]);
    (ours, theirs)
}

const FRR_MAC: &str = "02:00:00:00:aa:01";

fn frr_evpn_json(f: &Frr, net: &Net) -> String {
    String::from_utf8_lossy(&f.vtysh(net, &["show bgp l2vpn evpn json"]).stdout).into_owned()
}

fn vxlan_fdb(net: &Net) -> String {
    String::from_utf8_lossy(
        &net.exec(&["bridge", "fdb", "show", "dev", "vxlan100"])
            .stdout,
    )
    .into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: network namespaces, VXLAN device, frr zebra + bgpd"]
async fn frr_evpn_exchange() {
    let mut net = Net::new("fevpn");
    let (ours4, theirs4) = add_v4(&net);
    // VNI 100 in FRR's namespace: bridge, VXLAN device (learning off) and a port with a MAC.
    for cmd in [
        "ip link add br100 type bridge".to_string(),
        "ip link set br100 up".into(),
        format!("ip link add vxlan100 type vxlan id {VNI} local {theirs4} dstport 4789 nolearning"),
        "ip link set vxlan100 master br100".into(),
        "ip link set vxlan100 up".into(),
        "ip link add port1 type veth peer name port1p".into(),
        "ip link set port1 master br100".into(),
        "ip link set port1 up".into(),
        "ip link set port1p up".into(),
        format!("bridge fdb add {FRR_MAC} dev port1 master static"),
    ] {
        let args: Vec<&str> = cmd.split(' ').collect();
        net.exec_must(&args);
    }
    // FRR's daemons drop to the frr user: let them write their sockets here.
    std::fs::set_permissions(
        &net.dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let d = net.dir.display().to_string();
    std::fs::write(net.dir.join("zebra.conf"), "hostname z\n").unwrap();
    let conf = format!(
        "hostname frr-{ns}\nrouter bgp {THEIR_AS}\n bgp router-id 10.255.0.4\n no bgp ebgp-requires-policy\n\
         \x20no bgp default ipv4-unicast\n neighbor {ours4} remote-as {OUR_AS}\n neighbor {ours4} timers 3 9\n\
         \x20neighbor {ours4} timers connect 1\n address-family l2vpn evpn\n  neighbor {ours4} activate\n\
         \x20 advertise-all-vni\n exit-address-family\n",
        ns = net.ns
    );
    std::fs::write(net.dir.join("bgpd.conf"), conf).unwrap();
    let zlog = std::fs::File::create(net.dir.join("zebra.log")).unwrap();
    let zebra = Command::new("ip")
        .args(["netns", "exec", &net.ns, "/usr/lib/frr/zebra", "-f"])
        .arg(format!("{d}/zebra.conf"))
        .args([
            "-i",
            &format!("{d}/zebra.pid"),
            "-z",
            &format!("{d}/zserv.api"),
        ])
        .args(["--vty_socket", &d, "--log", "stdout", "-P", "0"])
        .stdout(zlog.try_clone().unwrap())
        .stderr(zlog)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    net.extra.push(zebra);
    let f = Frr { vty: d.clone() };
    wait_up(&net, "zebra", || {
        net.exec(&[
            "vtysh",
            "--vty_socket",
            &d,
            "-d",
            "zebra",
            "-c",
            "show evpn vni",
        ])
        .status
        .success()
    });
    let listen = theirs4.to_string();
    net.spawn(&[
        "/usr/lib/frr/bgpd",
        "-f",
        &format!("{d}/bgpd.conf"),
        "-i",
        &format!("{d}/bgpd.pid"),
        "-z",
        &format!("{d}/zserv.api"),
        "--vty_socket",
        &d,
        "-l",
        &listen,
        "-p",
        "179",
        "--log",
        "stdout",
        "-P",
        "0",
    ]);
    wait_up(&net, "bgpd", || {
        f.vtysh(&net, &["show bgp summary"]).status.success()
    });

    if std::env::var_os("BGP_CAPTURE").is_some() {
        // Let zebra hand the VNI and the MAC to bgpd before recording what it sends.
        wait_for("frr-evpn: FRR's own routes", 20, || {
            frr_evpn_json(&f, &net).contains(FRR_MAC)
        })
        .await;
    }
    capture_from(
        ours4.into(),
        theirs4.into(),
        "frr-evpn",
        &[Family::L2vpnEvpn],
    )
    .await;
    let cfg = SpeakerConfig {
        local_as: OUR_AS,
        router_id: Ipv4Addr::new(10, 255, 0, 1),
        listen: None,
        local_address: Some(ours4.into()),
        peers: vec![PeerConfig {
            address: theirs4.into(),
            remote_as: THEIR_AS,
            passive: false,
            hold_time: 9,
            port: 179,
            max_prefixes: 1000,
            route_server: false,
        }],
        graceful_restart_time: Some(120),
        connect_retry_secs: 1,
        families: vec![Family::L2vpnEvpn],
    };
    let (sp, _v6) = Speaker::start(cfg).await.unwrap();
    let up = wait_for("frr-evpn: Established", 60, || {
        sp.status().peers[0].state == State::Established
    })
    .await;
    println!("frr-evpn: established in {up:?}");

    // FRR → us: its local MAC (type 2) and its VTEP (type 3 with PMSI), VNI 100.
    let frr_mac = parse_mac(FRR_MAC).unwrap();
    let t = wait_for("frr-evpn: FRR's routes", 30, || {
        let r = sp.evpn_routes();
        r.iter()
            .any(|b| matches!(b.route.nlri, EvpnNlri::MacIp { mac, .. } if mac == frr_mac))
            && r.iter()
                .any(|b| matches!(b.route.nlri, EvpnNlri::Inclusive { .. }))
    })
    .await;
    let routes = sp.evpn_routes();
    println!(
        "frr-evpn: FRR's routes arrived in {t:?}: {} routes",
        routes.len()
    );
    let m = routes
        .iter()
        .find(|b| matches!(b.route.nlri, EvpnNlri::MacIp { mac, .. } if mac == frr_mac))
        .unwrap();
    let EvpnNlri::MacIp {
        rd,
        vni,
        ethernet_tag,
        ..
    } = m.route.nlri
    else {
        unreachable!()
    };
    assert_eq!(vni, VNI, "{m:?}");
    assert_eq!(ethernet_tag, 0);
    assert_eq!(
        rd.to_string().split(':').next(),
        Some("10.255.0.4"),
        "FRR's auto RD"
    );
    assert_eq!(m.route.next_hop, std::net::IpAddr::from(theirs4));
    assert!(m.route.encapsulation_vxlan, "{m:?}");
    assert_eq!(
        m.route.route_targets,
        vec![RouteTarget::for_vni(THEIR_AS, VNI)]
    );
    let inc = routes
        .iter()
        .find(|b| matches!(b.route.nlri, EvpnNlri::Inclusive { .. }))
        .unwrap();
    assert_eq!(
        inc.route.nlri,
        EvpnNlri::Inclusive {
            rd,
            ethernet_tag: 0,
            originator: theirs4.into()
        }
    );
    assert_eq!(inc.route.pmsi_vni, Some(VNI), "{inc:?}");
    println!("frr-evpn: learned {} and {}", m.route.nlri, inc.route.nlri);

    // us → FRR: a MAC/IP and our VTEP, with FRR's route target so FRR imports them into VNI
    // 100; zebra then programs the VXLAN device's FDB.
    let our_rd = RouteDistinguisher::type1(Ipv4Addr::new(10, 255, 0, 1), VNI as u16);
    let our_mac: Mac = [2, 0, 0, 0, 0xbb, 1];
    let rt = RouteTarget::for_vni(THEIR_AS, VNI);
    let mac_route = EvpnRoute {
        nlri: EvpnNlri::MacIp {
            rd: our_rd,
            ethernet_tag: 0,
            mac: our_mac,
            ip: Some("192.0.2.50".parse().unwrap()),
            vni: VNI,
        },
        next_hop: ours4.into(),
        route_targets: vec![rt],
        encapsulation_vxlan: true,
        mac_mobility: Some(0),
        pmsi_vni: None,
    };
    let inc_route = EvpnRoute {
        nlri: EvpnNlri::Inclusive {
            rd: our_rd,
            ethernet_tag: 0,
            originator: ours4.into(),
        },
        next_hop: ours4.into(),
        route_targets: vec![rt],
        encapsulation_vxlan: true,
        mac_mobility: None,
        pmsi_vni: Some(VNI),
    };
    sp.announce_evpn(mac_route.clone()).await;
    sp.announce_evpn(inc_route.clone()).await;
    let t = wait_for("frr-evpn: our routes in FRR's table", 20, || {
        let j = frr_evpn_json(&f, &net);
        j.contains("02:00:00:00:bb:01") && j.contains(&format!("[3]:[0]:[32]:[{ours4}]"))
    })
    .await;
    println!("frr-evpn: our routes in `show bgp l2vpn evpn json` after {t:?}");
    let t = wait_for("frr-evpn: FDB on vxlan100", 20, || {
        let fdb = vxlan_fdb(&net);
        fdb.contains(&format!("02:00:00:00:bb:01 dst {ours4}"))
            && fdb.contains(&format!("00:00:00:00:00:00 dst {ours4}"))
    })
    .await;
    println!(
        "frr-evpn: zebra programmed vxlan100 after {t:?}:\n{}",
        vxlan_fdb(&net)
    );

    // Withdraw: gone from FRR's table and the FDB within 3 s.
    sp.withdraw_evpn(mac_route.nlri).await;
    let t = wait_for("frr-evpn: withdraw", 3, || {
        !frr_evpn_json(&f, &net).contains("02:00:00:00:bb:01")
            && !vxlan_fdb(&net).contains("02:00:00:00:bb:01")
    })
    .await;
    println!("frr-evpn: withdrawal effective in FRR after {t:?}");
    sp.shutdown().await;
}
