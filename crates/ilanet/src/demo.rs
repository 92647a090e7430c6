//! `ilanet demo`: the paper's SC17 demonstration on the lab — four sites, two containers each,
//! every ordered pair checked with ICMPv6 echo and a verified TCP transfer.

use std::process::ExitCode;
use std::time::Duration;

use agent::api::Request;
use anyhow::{Context, Result};
use clap::Args;
use dataplane::{HostMaps, ProgramKind, TranslationEvent};
use ila::ChecksumMode;
use lab::plan::{ContainerPlan, HostPlan, Plan};
use lab::{probe, state, LabSpec};

#[derive(Args)]
pub struct DemoArgs {
    /// Leave the lab up afterwards (inspect it with `ilanet lab status --name demo`).
    #[arg(long)]
    keep: bool,
    /// Lab name used by the demo.
    #[arg(long, default_value = "demo")]
    name: String,
    /// Containers per site.
    #[arg(long, default_value_t = 2)]
    containers: usize,
    /// Checksum mode of the mappings: neutral-map, adj-transport or no-action.
    #[arg(long, default_value = "neutral-map")]
    csum_mode: ChecksumMode,
    /// Bytes sent (and echoed back, verified) per TCP transfer.
    #[arg(long, default_value_t = 256 * 1024)]
    bytes: usize,
    /// How locators are routed: bird (as at SC17), frr, gobgp, mesh or static. In evpn mode:
    /// the route server, gobgp (the default there, as in the paper) or frr.
    #[arg(long, default_value = "bird")]
    routing: lab::plan::RoutingMode,
    /// ila (the SC17 demonstration) or evpn (two tenants on the same addresses, kept apart by
    /// their VNIs: what ILA cannot do).
    #[arg(long, default_value = "ila")]
    mode: lab::plan::Mode,
}

const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a probe that must be dropped waits (the lab's round trip is well under 1 ms).
const BLOCK_TIMEOUT: Duration = Duration::from_millis(300);

/// Tears the demo lab down when dropped, unless told to keep it.
struct LabGuard<'a> {
    name: &'a str,
    keep: bool,
}

impl Drop for LabGuard<'_> {
    fn drop(&mut self) {
        if self.keep {
            println!(
                "\nThe lab is still up: `ilanet lab status --name {0}`, `ip netns exec {0}-nola-1 ping fd00:dead:beef::…`, `ilanet lab down --name {0}`.",
                self.name
            );
            return;
        }
        if let Err(e) = lab::down(self.name) {
            eprintln!("error: removing the demo lab: {e}");
        }
    }
}

pub fn run(args: &DemoArgs) -> Result<ExitCode> {
    if args.mode == lab::plan::Mode::Evpn {
        return run_evpn(args);
    }
    let mut spec = LabSpec::sc17(&args.name, args.containers);
    spec.csum_mode = args.csum_mode;
    spec.routing = args.routing;
    if lab::state::LabState::load(&args.name)?.is_some() {
        println!("removing the previous '{}' lab", args.name);
        lab::down(&args.name)?;
    }
    println!(
        "Building the SC17 topology: {} sites × {} containers, checksum mode {}, {} routing …",
        spec.sites.len(),
        args.containers,
        args.csum_mode,
        args.routing
    );
    let plan = lab::up(&spec).context("building the demo lab")?;
    let _guard = LabGuard {
        name: &args.name,
        keep: args.keep,
    };
    print_topology(&plan);
    print_routes(&plan)?;
    show_one_packet(&plan)?;

    let all: Vec<(&HostPlan, &ContainerPlan)> = plan
        .hosts
        .iter()
        .flat_map(|h| h.containers.iter().map(move |c| (h, c)))
        .collect();
    let results = check_pairs(&all, args.bytes);
    print_matrix(&all, &results);
    let mut failures: Vec<String> = results
        .iter()
        .filter(|r| r.passed() != r.expected)
        .map(|r| r.describe())
        .collect();
    let reachable = results.iter().filter(|r| r.expected).count();
    failures.extend(policy_phase(&plan, &all)?);
    print_counters(&plan)?;

    println!();
    if failures.is_empty() {
        println!(
            "All {} cross-site pairs behaved as expected: {reachable} same-tenant pairs passed ICMPv6 echo and a {} KiB TCP transfer verified byte for byte; {} cross-tenant pairs were dropped; the policy allowed and denied as written.",
            results.len(),
            args.bytes / 1024,
            results.len() - reachable
        );
        Ok(ExitCode::SUCCESS)
    } else {
        println!("{} checks FAILED:", failures.len());
        for f in failures {
            println!("  {f}");
        }
        Ok(ExitCode::FAILURE)
    }
}

/// Outcome of one ordered pair.
struct PairResult {
    from: String,
    to: String,
    /// Same tenant: must pass; another tenant: must be dropped.
    expected: bool,
    ping: Result<Duration, String>,
    tcp: Result<Duration, String>,
}

impl PairResult {
    fn passed(&self) -> bool {
        self.ping.is_ok() && self.tcp.is_ok()
    }

    fn blocked(&self) -> bool {
        self.ping.is_err() && self.tcp.is_err()
    }

    fn describe(&self) -> String {
        let what = if self.expected {
            "should pass"
        } else {
            "should be dropped (other tenant)"
        };
        let err = |r: &Result<Duration, String>| match r {
            Ok(_) => "passed".to_string(),
            Err(e) => e.clone(),
        };
        format!(
            "{} -> {} {what}: ping {}; tcp {}",
            self.from,
            self.to,
            err(&self.ping),
            err(&self.tcp)
        )
    }
}

/// Every ordered pair of containers on different sites, with ICMPv6 echo and a verified TCP
/// transfer; one thread per source so that the expected drops (which wait for a timeout) overlap.
fn check_pairs(all: &[(&HostPlan, &ContainerPlan)], bytes: usize) -> Vec<PairResult> {
    std::thread::scope(|s| {
        let handles: Vec<_> = all
            .iter()
            .enumerate()
            .map(|(i, (sh, src))| {
                s.spawn(move || {
                    let mut out = Vec::new();
                    for (j, (dh, dst)) in all.iter().enumerate() {
                        if sh.name == dh.name {
                            continue;
                        }
                        let expected = src.tenant == dst.tenant;
                        let timeout = if expected {
                            PROBE_TIMEOUT
                        } else {
                            BLOCK_TIMEOUT
                        };
                        let port = 20000 + (i * all.len() + j) as u16;
                        let ping = probe::ping(&src.netns, dst.sir_addr, timeout)
                            .map_err(|e| e.to_string());
                        let tcp = probe::tcp_transfer(
                            &src.netns,
                            &dst.netns,
                            dst.sir_addr,
                            port,
                            bytes,
                            timeout,
                        )
                        .map(|t| t.elapsed)
                        .map_err(|e| e.to_string());
                        out.push(PairResult {
                            from: src.name.clone(),
                            to: dst.name.clone(),
                            expected,
                            ping,
                            tcp,
                        });
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    })
}

/// The mission's policy: in the research tenant, the correlate container accepts results from
/// search containers on tcp/5201 and nothing else.
const DEMO_POLICY: &str = r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: correlate-ingress
spec:
  endpointSelector:
    matchLabels:
      app: correlate
  ingress:
  - fromEndpoints:
    - matchLabels:
        app: search
    toPorts:
    - ports:
      - port: "5201"
        protocol: TCP
"#;

/// Applies [`DEMO_POLICY`] through the agents and checks what it allows and denies. Returns
/// the checks that failed.
fn policy_phase(plan: &Plan, all: &[(&HostPlan, &ContainerPlan)]) -> Result<Vec<String>> {
    let role = |c: &ContainerPlan| c.labels.get("app").cloned().unwrap_or_default();
    let Some((_, correlate)) = all.iter().find(|(_, c)| role(c) == "correlate") else {
        return Ok(Vec::new());
    };
    let research = &correlate.tenant;
    let tenant = plan
        .tenants
        .iter()
        .find(|t| &t.name == research)
        .ok_or_else(|| anyhow::anyhow!("tenant {research} missing"))?;
    println!("\nPolicy (tenant {research}): the correlate container accepts results from search containers on tcp/5201 only:");
    for line in DEMO_POLICY.lines() {
        println!("    {line}");
    }
    let records = agent::policy_sync::records_for_file(
        "correlate-ingress.yaml",
        DEMO_POLICY.as_bytes(),
        tenant.vnid,
    )?;
    let names = records.iter().map(|r| r.name.clone()).collect::<Vec<_>>();
    lab::agents::call(
        &plan.name,
        &plan.hosts[0].name,
        &Request::PolicyApply { records },
    )?;
    let hosts: Vec<&str> = plan.hosts.iter().map(|h| h.name.as_str()).collect();
    lab::agents::wait_policies(&plan.name, &hosts, &names, true, Duration::from_secs(5))?;

    let mut failures = Vec::new();
    println!(
        "\n  {:<10} -> {:<10} {:<9} {:<8} result",
        "from", "to", "port", "expected"
    );
    for (_, c) in all.iter().filter(|(_, c)| c.name != correlate.name) {
        for (port, want) in [
            (5201u16, role(c) == "search" && &c.tenant == research),
            (8080, false),
        ] {
            let timeout = if want { PROBE_TIMEOUT } else { BLOCK_TIMEOUT };
            let got = probe::tcp_transfer(
                &c.netns,
                &correlate.netns,
                correlate.sir_addr,
                port,
                4096,
                timeout,
            )
            .is_ok();
            let reason = if &c.tenant != research {
                "other tenant"
            } else if port != 5201 {
                "port not allowed"
            } else {
                "search → correlate"
            };
            println!(
                "  {:<10} -> {:<10} tcp/{:<5} {:<8} {}{}",
                c.name,
                correlate.name,
                port,
                if want { "allow" } else { "deny" },
                if got { "passed" } else { "dropped" },
                if got == want {
                    format!("  ({reason})")
                } else {
                    "  UNEXPECTED".to_string()
                }
            );
            if got != want {
                failures.push(format!(
                    "{} -> {} tcp/{port}: expected {}",
                    c.name,
                    correlate.name,
                    if want { "allow" } else { "deny" }
                ));
            }
        }
    }
    if let Some((_, other)) = all
        .iter()
        .find(|(_, c)| &c.tenant == research && role(c) == "search")
    {
        let v = lab::agents::call(
            &plan.name,
            &plan.hosts[0].name,
            &Request::PolicyExplain {
                from: other.name.clone(),
                to: correlate.name.clone(),
                port: 8080,
                proto: "tcp".into(),
            },
        )?;
        let e: agent::api::ExplainReply = serde_json::from_value(v)?;
        println!(
            "\n  ilanet policy explain --from {} --to {} --port 8080 --proto tcp",
            other.name, correlate.name
        );
        println!("    verdict {}: {}", e.verdict.to_uppercase(), e.reason);
    }
    Ok(failures)
}

fn print_topology(plan: &Plan) {
    for t in &plan.tenants {
        println!(
            "\nTenant {} (VNID {}): SIR prefix {} (what its containers use)",
            t.name, t.vnid, t.sir
        );
    }
    println!("One locator per site:");
    for h in &plan.hosts {
        println!(
            "  {:<15} locator {:<22} underlay {}",
            h.display,
            h.locator.to_string(),
            h.uplink_addr
        );
        for c in &h.containers {
            println!("      {:<10} {}", c.name, c.sir_addr);
        }
    }
}

/// Each host's locator routes as its agent learned them over BGP (peer, next hop, kernel
/// gateway), and the router's, as its daemon installed them.
fn print_routes(plan: &Plan) -> Result<()> {
    use lab::plan::RoutingMode;
    if plan.routing == RoutingMode::Static {
        println!("\nLocator routes: static, on the underlay router.");
        return Ok(());
    }
    let daemon = match plan.routing {
        RoutingMode::Bird => "BIRD 2 (route reflector)",
        RoutingMode::Frr => "FRR bgpd (route reflector)",
        RoutingMode::Gobgp => "gobgpd (route reflector)",
        RoutingMode::Mesh => "iBGP full mesh between the agents; BIRD 2 on the router learns",
        RoutingMode::Static => "static",
    };
    println!(
        "\nLocator routes over BGP (AS {}, {daemon}):",
        lab::routing::LAB_ASN
    );
    let who = |addr: &str| -> String {
        plan.hosts
            .iter()
            .find_map(|h| {
                if h.router_addr.to_string() == addr {
                    Some("router".to_string())
                } else if h.uplink_addr.to_string() == addr {
                    Some(h.name.clone())
                } else {
                    None
                }
            })
            .unwrap_or_else(|| addr.to_string())
    };
    for h in &plan.hosts {
        let rows: Vec<agent::routing::RouteRow> = serde_json::from_value(
            lab::agents::call(&plan.name, &h.name, &Request::BgpRoutes)
                .with_context(|| format!("bgp routes of {}", h.name))?,
        )?;
        println!("  {} ({}):", h.display, h.name);
        for r in rows {
            let owner = plan
                .hosts
                .iter()
                .find(|o| format!("{}/64", o.locator.to_addr()) == r.prefix)
                .map_or("?", |o| o.name.as_str());
            println!(
                "      {:<22} ({:<6}) learned from {:<6} [{}] next hop {}, kernel via {} proto 200",
                r.prefix,
                owner,
                who(&r.peer),
                r.peer,
                r.next_hop,
                r.installed_via
                    .map_or_else(|| "-".to_string(), |v| v.to_string())
            );
        }
    }
    let tables = lab::routing::Tables::open(plan)?;
    if let Some(proto) = lab::routing::router_protocol(plan.routing) {
        println!("  underlay router (kernel routes its daemon installed, proto {proto}):");
        for r in tables.locators(&plan.router_netns, proto)? {
            let via = r.via.map(|v| v.to_string()).unwrap_or_default();
            println!("      {:<22} via {} ({})", r.prefix, via, who(&via));
        }
    }
    Ok(())
}

fn host_maps(plan: &Plan, host: &HostPlan) -> Result<HostMaps> {
    HostMaps::open_pinned(&state::host_pin_dir(&plan.name, &host.name))
        .with_context(|| format!("opening the maps of host '{}'", host.name))
}

/// Traces one ICMPv6 echo from the first site to the third and prints its destination before
/// and after each translation, as the two hosts' programs reported it.
fn show_one_packet(plan: &Plan) -> Result<()> {
    let (Some(sh), Some(dh)) = (plan.hosts.first(), plan.hosts.get(2).or(plan.hosts.last())) else {
        return Ok(());
    };
    let (Some(src), Some(dst)) = (sh.containers.first(), dh.containers.first()) else {
        return Ok(());
    };
    let mut smaps = host_maps(plan, sh)?;
    let mut dmaps = host_maps(plan, dh)?;
    smaps.drain_events()?;
    dmaps.drain_events()?;
    smaps.set_trace(true)?;
    dmaps.set_trace(true)?;
    let ping = probe::ping(&src.netns, dst.sir_addr, PROBE_TIMEOUT);
    smaps.set_trace(false)?;
    dmaps.set_trace(false)?;
    let out_ev = smaps.drain_events()?;
    let in_ev = dmaps.drain_events()?;
    println!(
        "\nOne packet: ICMPv6 echo request {} ({}) → {} ({}){}",
        src.name,
        sh.display,
        dst.name,
        dh.display,
        if ping.is_ok() { "" } else { "  [no reply]" }
    );
    let first = |evs: &[TranslationEvent], kind: ProgramKind| {
        evs.iter()
            .find(|e| e.direction == kind && e.src == src.sir_addr)
            .cloned()
    };
    println!(
        "  sent by {:<28} src {}  dst {}",
        src.name, src.sir_addr, dst.sir_addr
    );
    match first(&out_ev, ProgramKind::FromContainer) {
        Some(e) => println!(
            "  {:<8} from-container SIR→ILA  dst {} → {}  ({})",
            sh.name, e.dst_before, e.dst_after, e.csum_mode
        ),
        None => println!("  {:<8} from-container: no translation event seen", sh.name),
    }
    match first(&in_ev, ProgramKind::FromWire) {
        Some(e) => println!(
            "  {:<8} from-wire      ILA→SIR  dst {} → {}  (delivered to {})",
            dh.name, e.dst_before, e.dst_after, dst.name
        ),
        None => println!("  {:<8} from-wire: no translation event seen", dh.name),
    }
    Ok(())
}

fn print_matrix(all: &[(&HostPlan, &ContainerPlan)], results: &[PairResult]) {
    println!("\nReachability (row = from, column = to):");
    print!("{:<12}", "");
    for (_, c) in all {
        print!("{:>10}", c.name);
    }
    println!();
    for (_, s) in all {
        print!("{:<12}", format!("{} {}", s.name, tenant_mark(s)));
        for (_, d) in all {
            let cell = match results.iter().find(|r| r.from == s.name && r.to == d.name) {
                None => "·",
                Some(r) if r.expected && r.passed() => "ok",
                Some(r) if !r.expected && r.blocked() => "dropped",
                Some(r) if r.expected => "FAIL",
                Some(_) => "LEAK",
            };
            print!("{cell:>10}");
        }
        println!();
    }
    println!("(ok = ICMPv6 echo + verified TCP transfer; dropped = other tenant, as it must be; · = same site)");
}

/// A one-letter tenant mark for the matrix rows.
fn tenant_mark(c: &ContainerPlan) -> String {
    format!("[{}]", c.tenant.chars().next().unwrap_or('?'))
}

fn print_counters(plan: &Plan) -> Result<()> {
    println!("\nTranslation counters per host:");
    for h in &plan.hosts {
        let c = host_maps(plan, h)?.counters()?;
        let line: Vec<String> = c
            .pairs()
            .into_iter()
            .filter(|(_, v)| *v > 0)
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        println!("  {:<15} {}", h.display, line.join("  "));
    }
    Ok(())
}

/// `ilanet demo --mode evpn`: the SC17 sites with two tenants that use the same addresses (one
/// prefix, VNI 1 and 2). Every same-tenant pair must pass ICMPv6 echo and a verified TCP
/// transfer; no cross-tenant pair may reach the other tenant's container, although its address
/// exists in both.
fn run_evpn(args: &DemoArgs) -> Result<ExitCode> {
    use lab::plan::{Mode, RoutingMode};
    let mut spec = LabSpec::sc17(&args.name, args.containers.max(2));
    spec.mode = Mode::Evpn;
    spec.app_roles = false;
    spec.routing = match args.routing {
        RoutingMode::Frr => RoutingMode::Frr,
        _ => RoutingMode::Gobgp,
    };
    spec.tenants = lab::plan::overlapping_tenants(2);
    spec.tenants[0].name = "research".into();
    spec.tenants[1].name = "market".into();
    if lab::state::LabState::load(&args.name)?.is_some() {
        println!("removing the previous '{}' lab", args.name);
        lab::down(&args.name)?;
    }
    println!(
        "Building the SC17 topology in EVPN mode: {} sites × {} containers, tenants research \
         (VNI 1) and market (VNI 2) both on {}, {} as route server …",
        spec.sites.len(),
        args.containers.max(2),
        lab::plan::default_sir_prefix(),
        spec.routing
    );
    let plan = lab::up(&spec).context("building the EVPN demo lab")?;
    let _guard = LabGuard {
        name: &args.name,
        keep: args.keep,
    };
    let vni_of = |c: &ContainerPlan| {
        plan.tenants
            .iter()
            .find(|t| t.name == c.tenant)
            .map_or(0, |t| t.vnid.get())
    };
    println!(
        "\n{:<10} {:<10} {:>4}  {:<24} MAC",
        "container", "tenant", "VNI", "address"
    );
    for h in &plan.hosts {
        for c in &h.containers {
            let mac: Vec<String> = c.mac.iter().map(|b| format!("{b:02x}")).collect();
            println!(
                "{:<10} {:<10} {:>4}  {:<24} {}",
                c.name,
                c.tenant,
                vni_of(c),
                c.sir_addr.to_string(),
                mac.join(":")
            );
        }
    }
    // One host's view: the same address twice, once per VNI, each behind its own MAC.
    let h0 = &plan.hosts[0];
    let v = lab::evpn::view(&plan, h0)?;
    println!(
        "\n{} learned over EVPN ({} Type-2/Type-3 routes): neighbour entries for suppression",
        h0.name,
        v.routes.len()
    );
    for n in &v.neigh {
        let fdb = v.fdb.iter().find(|f| f.vni == n.vni && f.mac == n.mac);
        println!(
            "  VNI {}  {:<24} → {}  via VTEP {}",
            n.vni,
            n.ip.to_string(),
            n.mac,
            fdb.map_or("?".to_string(), |f| f.vtep.to_string())
        );
    }
    let all: Vec<(&HostPlan, &ContainerPlan)> = plan
        .hosts
        .iter()
        .flat_map(|h| h.containers.iter().map(move |c| (h, c)))
        .collect();
    let mut failures = Vec::new();
    let (mut passed, mut isolated) = (0, 0);
    for (i, (sh, src)) in all.iter().enumerate() {
        for (j, (dh, dst)) in all.iter().enumerate() {
            if sh.name == dh.name {
                continue;
            }
            let port = 21000 + (i * all.len() + j) as u16;
            let same = src.tenant == dst.tenant;
            let timeout = if same { PROBE_TIMEOUT } else { BLOCK_TIMEOUT };
            // The echo server runs in dst's namespace: a transfer that completes reached dst.
            let tcp = probe::tcp_transfer(
                &src.netns,
                &dst.netns,
                dst.sir_addr,
                port,
                args.bytes,
                timeout,
            );
            if same {
                let ping = probe::ping(&src.netns, dst.sir_addr, PROBE_TIMEOUT);
                match (ping, tcp) {
                    (Ok(_), Ok(_)) => passed += 1,
                    (p, t) => failures.push(format!(
                        "{} -> {} (tenant {}) should pass: ping {:?}, tcp {:?}",
                        src.name,
                        dst.name,
                        src.tenant,
                        p.err().map(|e| e.to_string()),
                        t.err().map(|e| e.to_string())
                    )),
                }
            } else if tcp.is_ok() {
                failures.push(format!(
                    "{} ({}) reached {} ({}) at {}: tenants are not isolated",
                    src.name, src.tenant, dst.name, dst.tenant, dst.sir_addr
                ));
            } else {
                isolated += 1;
            }
        }
    }
    println!();
    if failures.is_empty() {
        println!(
            "All {} cross-site pairs behaved as expected: {passed} same-tenant pairs passed ICMPv6 \
             echo and a {} KiB TCP transfer verified byte for byte; {isolated} cross-tenant pairs \
             never reached the other tenant's container, although both tenants use the same \
             addresses.",
            passed + isolated,
            args.bytes / 1024
        );
        Ok(ExitCode::SUCCESS)
    } else {
        println!("{} checks FAILED:", failures.len());
        for f in failures {
            println!("  {f}");
        }
        Ok(ExitCode::FAILURE)
    }
}
