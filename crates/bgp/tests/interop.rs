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

use bgp::message::{Capabilities, Family, GracefulRestart, Open};
use bgp::{codec, BestChange, PeerConfig, Speaker, SpeakerConfig, State};
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

fn sh(args: &[&str]) -> std::process::Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

fn must(args: &[&str]) {
    let o = sh(args);
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A namespace, a veth pair and a temp dir; Drop kills the daemon and deletes all of it.
struct Net {
    ns: String,
    veth: String,
    dir: std::path::PathBuf,
    ours: Ipv6Addr,
    theirs: Ipv6Addr,
    daemon: Option<Child>,
    extra_pids: Vec<u32>,
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
        };
        std::fs::create_dir_all(&dir).unwrap();
        must(&["ip", "netns", "add", &ns]);
        let peer = format!("{veth}p");
        must(&[
            "ip", "link", "add", &veth, "type", "veth", "peer", "name", &peer,
        ]);
        must(&["ip", "link", "set", &peer, "netns", &ns]);
        must(&[
            "ip",
            "addr",
            "add",
            &format!("{ours}/64"),
            "dev",
            &veth,
            "nodad",
        ]);
        must(&["ip", "link", "set", &veth, "up"]);
        net.exec_must(&[
            "ip",
            "addr",
            "add",
            &format!("{theirs}/64"),
            "dev",
            &peer,
            "nodad",
        ]);
        net.exec_must(&["ip", "link", "set", &peer, "up"]);
        net.exec_must(&["ip", "link", "set", "lo", "up"]);
        net
    }

    fn exec(&self, args: &[&str]) -> std::process::Output {
        let mut v = vec!["ip", "netns", "exec", &self.ns];
        v.extend_from_slice(args);
        sh(&v)
    }

    fn exec_must(&self, args: &[&str]) {
        let o = self.exec(args);
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
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
    if std::env::var_os("BGP_CAPTURE").is_none() {
        return;
    }
    let sock = tokio::net::TcpSocket::new_v6().unwrap();
    sock.bind(SocketAddr::new(net.ours.into(), 0)).unwrap();
    let Ok(Ok(mut s)) = tokio::time::timeout(
        Duration::from_secs(10),
        sock.connect(SocketAddr::new(net.theirs.into(), 179)),
    )
    .await
    else {
        println!("{}: capture: no connection", d.name());
        return;
    };
    let open = Open {
        asn: OUR_AS,
        hold_time: 90,
        router_id: Ipv4Addr::new(10, 255, 0, 1),
        capabilities: Capabilities {
            families: vec![Family::Ipv6Unicast],
            four_octet_as: Some(OUR_AS),
            route_refresh: true,
            graceful_restart: Some(GracefulRestart {
                restarting: false,
                restart_time: 120,
                families: vec![(Family::Ipv6Unicast, true)],
            }),
        },
    };
    s.write_all(&codec::encode_open(&open).unwrap())
        .await
        .unwrap();
    s.write_all(&codec::encode_keepalive()).await.unwrap();
    let mut lines = vec![format!(
        "# captured from {} (as received by ilanet's speaker)",
        d.name()
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
        .join(format!("tests/corpus/capture-{}-valid.hex", d.name()));
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    println!(
        "{}: captured {} messages to {}",
        d.name(),
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
