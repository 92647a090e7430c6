//! `ilanet demo`: the paper's SC17 demonstration on the lab — four sites, two containers each,
//! every ordered pair checked with ICMPv6 echo and a verified TCP transfer.

use std::process::ExitCode;
use std::time::Duration;

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
}

const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

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

/// Outcome of one ordered pair.
struct PairResult {
    ping: Result<Duration, String>,
    tcp: Result<Duration, String>,
}

impl PairResult {
    fn ok(&self) -> bool {
        self.ping.is_ok() && self.tcp.is_ok()
    }
}

pub fn run(args: &DemoArgs) -> Result<ExitCode> {
    let mut spec = LabSpec::sc17(&args.name, args.containers);
    spec.csum_mode = args.csum_mode;
    if lab::state::LabState::load(&args.name)?.is_some() {
        println!("removing the previous '{}' lab", args.name);
        lab::down(&args.name)?;
    }
    println!(
        "Building the SC17 topology: {} sites × {} containers, checksum mode {} …",
        spec.sites.len(),
        args.containers,
        args.csum_mode
    );
    let plan = lab::up(&spec).context("building the demo lab")?;
    let _guard = LabGuard {
        name: &args.name,
        keep: args.keep,
    };
    print_topology(&plan);
    show_one_packet(&plan)?;

    let all: Vec<(&HostPlan, &ContainerPlan)> = plan
        .hosts
        .iter()
        .flat_map(|h| h.containers.iter().map(move |c| (h, c)))
        .collect();
    let mut results = Vec::new();
    let mut port = 20000u16;
    for (sh, src) in &all {
        for (dh, dst) in &all {
            if sh.name == dh.name {
                continue;
            }
            port = port.wrapping_add(1);
            let ping =
                probe::ping(&src.netns, dst.sir_addr, PROBE_TIMEOUT).map_err(|e| e.to_string());
            let tcp = probe::tcp_transfer(
                &src.netns,
                &dst.netns,
                dst.sir_addr,
                port,
                args.bytes,
                PROBE_TIMEOUT,
            )
            .map(|t| t.elapsed)
            .map_err(|e| e.to_string());
            results.push(((*src).clone(), (*dst).clone(), PairResult { ping, tcp }));
        }
    }
    print_matrix(&all, &results);
    print_counters(&plan)?;

    let failed: Vec<_> = results.iter().filter(|(_, _, r)| !r.ok()).collect();
    println!();
    if failed.is_empty() {
        println!(
            "All {} cross-site pairs passed: ICMPv6 echo and a {} KiB TCP transfer verified byte for byte.",
            results.len(),
            args.bytes / 1024
        );
        Ok(ExitCode::SUCCESS)
    } else {
        println!("{} of {} pairs FAILED:", failed.len(), results.len());
        for (s, d, r) in failed {
            if let Err(e) = &r.ping {
                println!("  {} -> {}: ping: {e}", s.name, d.name);
            }
            if let Err(e) = &r.tcp {
                println!("  {} -> {}: tcp: {e}", s.name, d.name);
            }
        }
        Ok(ExitCode::FAILURE)
    }
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

fn print_matrix(
    all: &[(&HostPlan, &ContainerPlan)],
    results: &[(ContainerPlan, ContainerPlan, PairResult)],
) {
    println!("\nReachability (row = from, column = to; ok = ICMPv6 echo + verified TCP transfer):");
    print!("{:<12}", "");
    for (_, c) in all {
        print!("{:>10}", c.name);
    }
    println!();
    for (_, s) in all {
        print!("{:<12}", s.name);
        for (_, d) in all {
            let cell = match results
                .iter()
                .find(|(a, b, _)| a.name == s.name && b.name == d.name)
            {
                None => "·",
                Some((_, _, r)) if r.ok() => "ok",
                Some((_, _, r)) if r.ping.is_err() && r.tcp.is_err() => "FAIL",
                Some((_, _, r)) if r.ping.is_err() => "ping✗",
                Some(_) => "tcp✗",
            };
            print!("{cell:>10}");
        }
        println!();
    }
    println!("(· = same site, not a cross-site pair)");
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
