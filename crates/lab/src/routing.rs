//! Locator reachability over BGP in the lab: the router namespace runs a real routing daemon
//! (BIRD 2, FRR's bgpd + zebra, or gobgpd + zebra) and the hosts' agents peer with it, or with
//! each other (`mesh`). The daemon installs the locator routes into the router's kernel table;
//! the agents install them into the hosts' tables (proto 200).
//!
//! Daemons run from `<run dir>/router/` (configuration, control sockets, logs), are recorded in
//! the lab's state when started and stopped by `lab down`, which also finds any whose pid was
//! not recorded (a crash in between) by that directory in their command line.

use std::collections::BTreeSet;
use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bgp::{PeerConfig, SpeakerConfig};
use hostnet::route::{RouteTable, ILANET_ROUTE_PROTOCOL};
use serde::Serialize;

use crate::agents::run_dir;
use crate::plan::{HostPlan, Mode, Plan, RoutingMode};
use crate::state::LabState;
use crate::{netns, LabError};

/// The lab's AS: every session is iBGP.
pub const LAB_ASN: u32 = 65000;
/// The router's BGP identifier.
pub const ROUTER_ID: Ipv4Addr = Ipv4Addr::new(10, 255, 255, 254);
/// Route protocol number BIRD's kernel protocol marks its routes with (RTPROT_BIRD).
pub const PROTO_BIRD: u8 = 12;
/// Route protocol number of the routes the hosts' agents install.
pub const PROTO_ILANET: u8 = ILANET_ROUTE_PROTOCOL;
/// Route protocol number zebra marks BGP routes with (RTPROT_BGP).
pub const PROTO_ZEBRA_BGP: u8 = 186;
/// How long `lab up` waits for every locator to be routed everywhere.
pub const CONVERGE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a daemon gets to open its control socket.
const DAEMON_START_TIMEOUT: Duration = Duration::from_secs(10);

fn io_err(what: String) -> impl FnOnce(std::io::Error) -> LabError {
    move |source| LabError::Os { what, source }
}

/// Directory of the router's daemons (configuration, sockets, logs).
pub fn daemon_dir(lab: &str) -> PathBuf {
    run_dir(lab).join("router")
}

/// A host's BGP identifier (10.255.0.n for the n-th host).
pub fn host_router_id(plan: &Plan, host: &HostPlan) -> Ipv4Addr {
    let n = plan
        .hosts
        .iter()
        .position(|h| h.name == host.name)
        .unwrap_or(0)
        + 1;
    Ipv4Addr::new(10, 255, (n >> 8) as u8, (n & 0xff) as u8)
}

/// A host's own AS behind the EVPN route server: 65100 + n for the n-th host (private
/// 2-octet ASNs; a lab has at most 200 hosts).
pub fn host_asn(plan: &Plan, host: &HostPlan) -> u32 {
    let n = plan
        .hosts
        .iter()
        .position(|h| h.name == host.name)
        .unwrap_or(0) as u32
        + 1;
    65100 + n
}

/// The speaker configuration of a host's agent, `None` with static routing.
pub fn speaker_config(plan: &Plan, host: &HostPlan) -> Option<SpeakerConfig> {
    // EVPN behind gobgpd: eBGP to a transparent route server (see gobgp_evpn_conf).
    let route_server = plan.mode == Mode::Evpn && plan.routing == RoutingMode::Gobgp;
    let peer = |address: Ipv6Addr| PeerConfig {
        address: IpAddr::V6(address),
        remote_as: LAB_ASN,
        passive: false,
        hold_time: plan.bgp.hold_time,
        port: 179,
        max_prefixes: 10_000,
        route_server,
    };
    // The router's daemon is passive: the agents connect to it.
    let mut peers = vec![peer(host.router_addr)];
    let mut listen = None;
    match plan.routing {
        RoutingMode::Static => return None,
        RoutingMode::Bird | RoutingMode::Frr | RoutingMode::Gobgp => {}
        RoutingMode::Mesh => {
            peers.extend(
                plan.hosts
                    .iter()
                    .filter(|h| h.name != host.name)
                    .map(|h| peer(h.uplink_addr)),
            );
            listen = Some(SocketAddr::new(IpAddr::V6(host.uplink_addr), 179));
        }
    }
    Some(SpeakerConfig {
        local_as: if route_server {
            host_asn(plan, host)
        } else {
            LAB_ASN
        },
        router_id: host_router_id(plan, host),
        listen,
        local_address: Some(IpAddr::V6(host.uplink_addr)),
        peers,
        graceful_restart_time: (plan.bgp.graceful_restart > 0).then_some(plan.bgp.graceful_restart),
        connect_retry_secs: 1,
        families: vec![bgp::Family::Ipv6Unicast],
    })
}

/// The `bgp:` section of a host agent configuration file for `host` (empty with static
/// routing).
pub fn host_config_section(plan: &Plan, host: &HostPlan) -> String {
    use std::fmt::Write;
    let Some(cfg) = speaker_config(plan, host) else {
        return String::new();
    };
    let mut y = String::new();
    let _ = writeln!(y, "bgp:");
    let _ = writeln!(y, "  asn: {}", cfg.local_as);
    let _ = writeln!(y, "  router_id: \"{}\"", cfg.router_id);
    match cfg.listen {
        Some(l) => {
            let _ = writeln!(y, "  listen: \"{l}\"");
        }
        None => {
            let _ = writeln!(y, "  listen: \"off\"");
        }
    }
    if let Some(gr) = cfg.graceful_restart_time {
        let _ = writeln!(y, "  graceful_restart: {gr}");
    }
    let _ = writeln!(y, "  connect_retry: {}", cfg.connect_retry_secs);
    let _ = writeln!(y, "  peers:");
    for p in &cfg.peers {
        let _ = writeln!(
            y,
            "    - {{address: \"{}\", hold_time: {}}}",
            p.address, p.hold_time
        );
    }
    y
}

fn keepalive(hold: u16) -> u16 {
    (hold / 3).max(1)
}

/// BIRD 2's configuration: one session per host; reflector with `next hop self` (the hosts'
/// next hops are then on their own link), or (mesh) only learning.
fn bird_conf(plan: &Plan, dir: &Path) -> String {
    use std::fmt::Write;
    let reflect = plan.routing != RoutingMode::Mesh;
    let mut c = String::new();
    let _ = writeln!(c, "# generated by ilanet lab up ({} routing)", plan.routing);
    let _ = writeln!(c, "log \"{}\" all;", dir.join("bird.log").display());
    let _ = writeln!(c, "router id {ROUTER_ID};");
    let _ = writeln!(c, "protocol device {{ scan time 10; }}");
    // Only BGP's routes go to the kernel (the links' own routes are there already).
    let _ = writeln!(
        c,
        "protocol kernel {{ ipv6 {{ import none; export where source = RTS_BGP; }}; }}"
    );
    let _ = writeln!(c, "template bgp hosts {{");
    let _ = writeln!(c, "  local as {LAB_ASN};");
    let _ = writeln!(c, "  direct;");
    let _ = writeln!(c, "  passive on;");
    if plan.bgp.hold_time > 0 {
        let _ = writeln!(
            c,
            "  hold time {}; keepalive time {};",
            plan.bgp.hold_time,
            keepalive(plan.bgp.hold_time)
        );
    }
    let _ = writeln!(c, "  connect retry time 1; error wait time 1, 2;");
    let _ = writeln!(c, "  graceful restart on;");
    if reflect {
        let _ = writeln!(c, "  rr client;");
        let _ = writeln!(c, "  ipv6 {{ import all; export all; next hop self; }};");
    } else {
        let _ = writeln!(c, "  ipv6 {{ import all; export none; }};");
    }
    let _ = writeln!(c, "}}");
    for (i, h) in plan.hosts.iter().enumerate() {
        let _ = writeln!(
            c,
            "protocol bgp host{} from hosts {{ description \"{}\"; local {} as {LAB_ASN}; neighbor {} as {LAB_ASN}; }}",
            i + 1,
            h.name,
            h.router_addr,
            h.uplink_addr
        );
    }
    c
}

/// FRR bgpd's configuration: reflector, `next-hop-self force` (reflected routes too).
fn frr_conf(plan: &Plan) -> String {
    use std::fmt::Write;
    let hold = plan.bgp.hold_time;
    let mut c = String::new();
    let _ = writeln!(c, "! generated by ilanet lab up");
    let _ = writeln!(c, "frr defaults traditional");
    let _ = writeln!(c, "hostname {}", plan.router_netns);
    let _ = writeln!(c, "router bgp {LAB_ASN}");
    let _ = writeln!(c, " bgp router-id {ROUTER_ID}");
    let _ = writeln!(c, " no bgp default ipv4-unicast");
    let _ = writeln!(c, " bgp graceful-restart");
    let _ = writeln!(c, " neighbor hosts peer-group");
    let _ = writeln!(c, " neighbor hosts remote-as {LAB_ASN}");
    let _ = writeln!(c, " neighbor hosts passive");
    let _ = writeln!(c, " neighbor hosts timers {} {hold}", keepalive(hold));
    let _ = writeln!(c, " neighbor hosts timers connect 1");
    for h in &plan.hosts {
        let _ = writeln!(c, " neighbor {} peer-group hosts", h.uplink_addr);
    }
    if plan.mode == Mode::Evpn {
        // EVPN: the routes are reflected as they are (the next hop is the VTEP).
        let _ = writeln!(c, " address-family l2vpn evpn");
        let _ = writeln!(c, "  neighbor hosts activate");
        let _ = writeln!(c, "  neighbor hosts route-reflector-client");
        let _ = writeln!(c, " exit-address-family");
        return c;
    }
    let _ = writeln!(c, " address-family ipv6 unicast");
    let _ = writeln!(c, "  neighbor hosts activate");
    let _ = writeln!(c, "  neighbor hosts route-reflector-client");
    let _ = writeln!(c, "  neighbor hosts next-hop-self force");
    let _ = writeln!(c, " exit-address-family");
    c
}

/// gobgpd as the EVPN route server of the paper's Fig. 8: every host a route-server client
/// (RFC 7947: transparent, next hop and AS path untouched), L2VPN EVPN only. The sessions are
/// eBGP, each host in an AS of its own ([`host_asn`]): gobgpd applies iBGP split horizon to
/// route-server clients too (with iBGP, as in the paper's Listing 3, no host would hear of
/// another), and refuses a neighbour that is both route-server and route-reflector client.
/// The hosts skip the first-AS check for it (`PeerConfig::route_server`); route targets stay
/// the lab's AS ([`LAB_ASN`]):VNI.
fn gobgp_evpn_conf(plan: &Plan) -> String {
    use std::fmt::Write;
    let hold = plan.bgp.hold_time;
    let mut c = String::new();
    let _ = writeln!(c, "# generated by ilanet lab up (evpn route server)");
    let _ = writeln!(
        c,
        "[global.config]\n  as = {LAB_ASN}\n  router-id = \"{ROUTER_ID}\"\n  port = 179"
    );
    for h in &plan.hosts {
        let _ = writeln!(
            c,
            "[[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"{}\"\n    peer-as = {}\n\
             \x20 [neighbors.timers.config]\n    hold-time = {hold}\n    keepalive-interval = {}\n    connect-retry = 1\n\
             \x20 [neighbors.transport.config]\n    passive-mode = true\n    local-address = \"{}\"\n\
             \x20 [neighbors.route-server.config]\n    route-server-client = true\n\
             \x20 [[neighbors.afi-safis]]\n    [neighbors.afi-safis.config]\n      afi-safi-name = \"l2vpn-evpn\"",
            h.uplink_addr,
            host_asn(plan, h),
            keepalive(hold),
            h.router_addr
        );
    }
    c
}

/// gobgpd's configuration: reflector, next hop set to self by an export policy. No kernel
/// routes: gobgpd 3.10's zebra client cannot talk to FRR 8.4's zebra (it panics decoding ZAPI 6
/// messages, seen with every `software-name`), so in gobgp mode the router keeps static
/// locator routes and only the hosts' routes come from BGP.
fn gobgp_conf(plan: &Plan) -> String {
    use std::fmt::Write;
    let hold = plan.bgp.hold_time;
    let mut c = String::new();
    let _ = writeln!(c, "# generated by ilanet lab up");
    let _ = writeln!(
        c,
        "[global.config]\n  as = {LAB_ASN}\n  router-id = \"{ROUTER_ID}\"\n  port = 179"
    );
    let _ = writeln!(
        c,
        "[global.apply-policy.config]\n  export-policy-list = [\"next-hop-self\"]\n  default-export-policy = \"accept-route\""
    );
    for h in &plan.hosts {
        let _ = writeln!(
            c,
            "[[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"{}\"\n    peer-as = {LAB_ASN}\n\
             \x20 [neighbors.timers.config]\n    hold-time = {hold}\n    keepalive-interval = {}\n    connect-retry = 1\n\
             \x20 [neighbors.transport.config]\n    passive-mode = true\n    local-address = \"{}\"\n\
             \x20 [neighbors.route-reflector.config]\n    route-reflector-client = true\n    route-reflector-cluster-id = \"{ROUTER_ID}\"\n\
             \x20 [neighbors.graceful-restart.config]\n    enabled = true\n\
             \x20 [[neighbors.afi-safis]]\n    [neighbors.afi-safis.config]\n      afi-safi-name = \"ipv6-unicast\"\n\
             \x20   [neighbors.afi-safis.mp-graceful-restart.config]\n      enabled = true",
            h.uplink_addr,
            keepalive(hold),
            h.router_addr
        );
    }
    let _ = writeln!(
        c,
        "[[policy-definitions]]\n  name = \"next-hop-self\"\n  [[policy-definitions.statements]]\n    name = \"next-hop-self\"\n\
         \x20   [policy-definitions.statements.actions]\n      route-disposition = \"accept-route\"\n\
         \x20   [policy-definitions.statements.actions.bgp-actions]\n      set-next-hop = \"self\""
    );
    c
}

/// The route protocol the router's daemon gives its kernel routes.
pub fn router_protocol(routing: RoutingMode) -> Option<u8> {
    match routing {
        RoutingMode::Static => None,
        RoutingMode::Bird | RoutingMode::Mesh => Some(PROTO_BIRD),
        RoutingMode::Frr => Some(PROTO_ZEBRA_BGP),
        // See gobgp_conf: the router's locator routes stay static.
        RoutingMode::Gobgp => None,
    }
}

/// Package of each daemon binary (for the error when one is missing).
fn need(binary: &str, package: &str) -> Result<(), LabError> {
    if Path::new(binary).exists() {
        Ok(())
    } else {
        Err(LabError::Invalid(format!(
            "{binary} is missing: install the {package} package (scripts/setup.sh does)"
        )))
    }
}

const BIRD: &str = "/usr/sbin/bird";
const ZEBRA: &str = "/usr/lib/frr/zebra";
const BGPD: &str = "/usr/lib/frr/bgpd";
const GOBGPD: &str = "/usr/bin/gobgpd";
/// gobgpd's API, inside the router namespace.
const GOBGP_API: &str = "127.0.0.1:50051";

/// Runs `gobgp` against the lab's gobgpd (inside the router namespace).
pub fn gobgp_cli(plan: &Plan, args: &[&str]) -> Result<std::process::Output, LabError> {
    // Bounded: the client waits for ever on a daemon that accepts but does not answer.
    Command::new("timeout")
        .args(["3", "nsenter"])
        .arg(format!(
            "--net={}",
            netns::path(&plan.router_netns).display()
        ))
        .args(["gobgp", "-u", "127.0.0.1", "-p", "50051"])
        .args(args)
        .output()
        .map_err(io_err(
            "running gobgp (package gobgpd) through nsenter".into(),
        ))
}

/// Starts the router's daemon(s), recording each before waiting for it.
pub(crate) fn start(state: &mut LabState) -> Result<(), LabError> {
    let plan = state.plan.clone();
    if !plan.routing.is_bgp() {
        return Ok(());
    }
    let dir = daemon_dir(&plan.name);
    fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
    let d = |f: &str| dir.join(f).display().to_string();
    let write = |f: &str, text: String| {
        let p = dir.join(f);
        fs::write(&p, text).map_err(io_err(format!("writing {}", p.display())))
    };
    match plan.routing {
        RoutingMode::Static => {}
        RoutingMode::Bird | RoutingMode::Mesh => {
            need(BIRD, "bird2")?;
            write("bird.conf", bird_conf(&plan, &dir))?;
            let args = ["-f", "-c", &d("bird.conf"), "-s", &d("bird.ctl")];
            spawn(state, BIRD, &args, &dir.join("bird.out"))?;
            wait_socket(&dir.join("bird.ctl"), "bird", &dir.join("bird.out"))?;
        }
        RoutingMode::Gobgp => {
            need(GOBGPD, "gobgpd")?;
            let conf = if plan.mode == Mode::Evpn {
                gobgp_evpn_conf(&plan)
            } else {
                gobgp_conf(&plan)
            };
            write("gobgpd.toml", conf)?;
            // The API listens on the router namespace's own loopback: private to the lab.
            let gargs = [
                "-f",
                &d("gobgpd.toml"),
                "--api-hosts",
                GOBGP_API,
                "-l",
                "info",
            ];
            spawn(state, GOBGPD, &gargs, &dir.join("gobgpd.log"))?;
            let start = Instant::now();
            while !gobgp_cli(&plan, &["global"])?.status.success() {
                if start.elapsed() > DAEMON_START_TIMEOUT {
                    let log = dir.join("gobgpd.log");
                    return Err(LabError::Agent(format!(
                        "gobgpd does not answer on {GOBGP_API} within {DAEMON_START_TIMEOUT:?}; {}:\n{}",
                        log.display(),
                        tail(&log)
                    )));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        RoutingMode::Frr => {
            need(ZEBRA, "frr")?;
            // zebra drops to the `frr` user (its vty group must be frrvty): the directory it
            // makes its sockets in must be that user's.
            give_to_frr(&dir)?;
            write("zebra.conf", format!("hostname {}\n", plan.router_netns))?;
            let zargs = [
                "-f",
                &d("zebra.conf"),
                "-i",
                &d("zebra.pid"),
                "-z",
                &d("zserv.api"),
                "--vty_socket",
                &d(""),
                "-P",
                "0",
                "--log",
                &format!("file:{}", d("zebra.log")),
            ];
            spawn(state, ZEBRA, &zargs, &dir.join("zebra.out"))?;
            wait_socket(&dir.join("zserv.api"), "zebra", &dir.join("zebra.out"))?;
            need(BGPD, "frr")?;
            write("bgpd.conf", frr_conf(&plan))?;
            let bargs = [
                "-f",
                &d("bgpd.conf"),
                "-i",
                &d("bgpd.pid"),
                "-z",
                &d("zserv.api"),
                "--vty_socket",
                &d(""),
                "-S",
                "-p",
                "179",
                "-P",
                "0",
                "--log",
                &format!("file:{}", d("bgpd.log")),
            ];
            spawn(state, BGPD, &bargs, &dir.join("bgpd.out"))?;
            wait_socket(&dir.join("bgpd.vty"), "bgpd", &dir.join("bgpd.out"))?;
        }
    }
    Ok(())
}

fn give_to_frr(dir: &Path) -> Result<(), LabError> {
    let name = c"frr";
    // SAFETY: getpwnam with a NUL-terminated name; the record is read at once.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        return Err(LabError::Invalid(
            "there is no user 'frr': install the frr package (scripts/setup.sh does)".into(),
        ));
    }
    // SAFETY: pw is a valid passwd record (checked non-null above).
    let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
    std::os::unix::fs::chown(dir, Some(uid), Some(gid))
        .map_err(io_err(format!("giving {} to user frr", dir.display())))
}

/// Starts `binary` inside the router's namespace in a session of its own (it outlives
/// `lab up`), output to `log`; records its pid.
fn spawn(state: &mut LabState, binary: &str, args: &[&str], log: &Path) -> Result<(), LabError> {
    let (out, err) = crate::agents::log_files(log)?;
    let mut cmd = Command::new(binary);
    cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let child = netns::spawn_in(&state.plan.router_netns, &mut cmd)?;
    state.daemons.push(child.id());
    state.save()
}

fn tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(8)..].join("\n")
}

fn wait_socket(sock: &Path, what: &str, log: &Path) -> Result<(), LabError> {
    let start = Instant::now();
    while !sock.exists() {
        if start.elapsed() > DAEMON_START_TIMEOUT {
            return Err(LabError::Agent(format!(
                "{what} did not open {} within {DAEMON_START_TIMEOUT:?}; {}:\n{}",
                sock.display(),
                log.display(),
                tail(log)
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Pids of processes whose command line names the lab's daemon directory.
fn daemons_by_dir(lab: &str) -> Vec<u32> {
    let dir = daemon_dir(lab);
    let needle = format!("{}/", dir.display());
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| is_daemon_of(*pid, &needle))
        .collect()
}

fn is_daemon_of(pid: u32, needle: &str) -> bool {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            c.split(|b| *b == 0)
                .any(|a| a.windows(needle.len()).any(|w| w == needle.as_bytes()))
        })
        .unwrap_or(false)
}

/// Stops the lab's daemons (recorded or found by their directory): SIGTERM, SIGKILL after 3 s.
pub(crate) fn stop(state: &LabState) -> Result<(), LabError> {
    let lab = &state.plan.name;
    let needle = format!("{}/", daemon_dir(lab).display());
    let mut pids: BTreeSet<u32> = state
        .daemons
        .iter()
        .copied()
        .filter(|p| is_daemon_of(*p, &needle))
        .collect();
    pids.extend(daemons_by_dir(lab));
    if pids.is_empty() {
        return Ok(());
    }
    for pid in &pids {
        // SAFETY: plain kill(2) on a pid whose command line names this lab's directory.
        unsafe { libc::kill(*pid as libc::pid_t, libc::SIGTERM) };
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        for pid in &pids {
            // Reap it if it is our child (a test that built the lab in-process).
            // SAFETY: non-blocking waitpid on a specific pid.
            unsafe { libc::waitpid(*pid as libc::pid_t, std::ptr::null_mut(), libc::WNOHANG) };
        }
        let left: Vec<u32> = pids
            .iter()
            .copied()
            .filter(|p| is_daemon_of(*p, &needle))
            .collect();
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            for pid in &left {
                // SAFETY: as above.
                unsafe { libc::kill(*pid as libc::pid_t, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(100));
            let still: Vec<u32> = left
                .into_iter()
                .filter(|p| is_daemon_of(*p, &needle))
                .collect();
            return if still.is_empty() {
                Ok(())
            } else {
                Err(LabError::Agent(format!(
                    "routing daemons {still:?} of lab '{lab}' did not stop"
                )))
            };
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One locator route in a kernel table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KernelRoute {
    /// Namespace of the table.
    pub netns: String,
    /// Destination (a locator /64).
    pub prefix: String,
    /// Gateway.
    pub via: Option<Ipv6Addr>,
    /// Route protocol number.
    pub proto: u8,
}

/// Reads kernel routing tables of a lab (one netlink socket per namespace, opened once).
pub struct Tables {
    rt: tokio::runtime::Runtime,
    tables: Vec<(String, RouteTable)>,
}

impl Tables {
    /// Opens the tables of the router and every host.
    pub fn open(plan: &Plan) -> Result<Self, LabError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(io_err("starting a runtime for netlink".into()))?;
        let mut tables = Vec::new();
        let _guard = rt.enter();
        for ns in std::iter::once(&plan.router_netns).chain(plan.hosts.iter().map(|h| &h.netns)) {
            tables.push((ns.clone(), RouteTable::open(ns)?));
        }
        drop(_guard);
        Ok(Self { rt, tables })
    }

    /// The /64 routes with `proto` in namespace `ns`.
    pub fn locators(&self, ns: &str, proto: u8) -> Result<Vec<KernelRoute>, LabError> {
        let Some((_, t)) = self.tables.iter().find(|(n, _)| n == ns) else {
            return Err(LabError::Invalid(format!(
                "namespace '{ns}' is not the lab's"
            )));
        };
        let routes = self.rt.block_on(t.list(proto))?;
        Ok(routes
            .into_iter()
            .filter(|r| r.plen == 64)
            .map(|r| KernelRoute {
                netns: ns.to_string(),
                prefix: format!("{}/64", r.dest),
                via: r.via,
                proto,
            })
            .collect())
    }

    /// Locators (as `addr/64`) missing: per namespace, those not in its table with the
    /// protocol that should have put them there. Empty: converged.
    pub fn missing(&self, plan: &Plan) -> Result<Vec<(String, String)>, LabError> {
        let mut missing = Vec::new();
        if let Some(proto) = router_protocol(plan.routing) {
            let have = self.locators(&plan.router_netns, proto)?;
            for h in &plan.hosts {
                let want = format!("{}/64", h.locator.to_addr());
                if !have.iter().any(|r| r.prefix == want) {
                    missing.push((plan.router_netns.clone(), want));
                }
            }
        }
        for host in &plan.hosts {
            let have = self.locators(&host.netns, ILANET_ROUTE_PROTOCOL)?;
            for h in plan.hosts.iter().filter(|h| h.name != host.name) {
                let want = format!("{}/64", h.locator.to_addr());
                if !have.iter().any(|r| r.prefix == want) {
                    missing.push((host.netns.clone(), want));
                }
            }
        }
        Ok(missing)
    }
}

/// Waits until the router and every host route every other host's locator over BGP.
pub fn wait_converged(plan: &Plan, timeout: Duration) -> Result<(), LabError> {
    if !plan.routing.is_bgp() {
        return Ok(());
    }
    let tables = Tables::open(plan)?;
    let start = Instant::now();
    loop {
        let missing = tables.missing(plan)?;
        if missing.is_empty() {
            return Ok(());
        }
        if start.elapsed() > timeout {
            let shown: Vec<String> = missing
                .iter()
                .take(6)
                .map(|(ns, p)| format!("{p} in {ns}"))
                .collect();
            return Err(LabError::Agent(format!(
                "{} routing: {} locator routes still missing after {timeout:?} ({}…); see {} and the agent logs in {}",
                plan.routing,
                missing.len(),
                shown.join(", "),
                daemon_dir(&plan.name).display(),
                run_dir(&plan.name).display()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The router daemon's view of its sessions and routes, as its own CLI prints it (for the demo
/// and for debugging).
pub fn daemon_show(plan: &Plan) -> Result<String, LabError> {
    let dir = daemon_dir(&plan.name);
    let d = |f: &str| dir.join(f).display().to_string();
    let (cmd, args): (&str, Vec<String>) = match plan.routing {
        RoutingMode::Static => return Ok(String::new()),
        RoutingMode::Bird | RoutingMode::Mesh => (
            "birdc",
            vec!["-s".into(), d("bird.ctl"), "show route".into()],
        ),
        RoutingMode::Frr => (
            "vtysh",
            vec![
                "--vty_socket".into(),
                d(""),
                "-d".into(),
                "bgpd".into(),
                "-c".into(),
                if plan.mode == Mode::Evpn {
                    "show bgp l2vpn evpn".into()
                } else {
                    "show bgp ipv6 unicast".into()
                },
            ],
        ),
        RoutingMode::Gobgp => {
            let family = if plan.mode == Mode::Evpn {
                "evpn"
            } else {
                "ipv6"
            };
            let o = gobgp_cli(plan, &["global", "rib", "-a", family])?;
            return Ok(String::from_utf8_lossy(&o.stdout).into_owned());
        }
    };
    let o = Command::new(cmd)
        .args(&args)
        .output()
        .map_err(io_err(format!("running {cmd}")))?;
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}
