//! `ilanet lab up|down|status`.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use ila::ChecksumMode;
use lab::agents::StoreKind;
use lab::plan::{Mode, RoutingMode, Runtime};
use lab::{DownOutcome, LabSpec, LabStatus};

/// Name of the lab when `--name` is not given.
pub const DEFAULT_LAB: &str = "ilanet";

#[derive(Subcommand)]
pub enum LabCommand {
    /// Build a lab: N hosts on an IPv6 underlay, M containers each, programs and mappings in place.
    Up(UpArgs),
    /// Remove a lab (also after a crash); doing it twice is fine.
    Down(NameArg),
    /// Show hosts, containers, addresses and counters.
    Status(StatusArgs),
    /// Run a command inside a lab container's network namespace (whatever made the container).
    Exec(ExecArgs),
    /// Run the EVPN agents of an evpn lab's hosts (started by `lab up --mode evpn`).
    #[command(hide = true)]
    EvpnAgents(NameArg),
}

#[derive(Args)]
pub struct ExecArgs {
    #[command(flatten)]
    pub name: NameArg,
    /// Container name, as `lab status` lists it (e.g. site1-1).
    pub container: String,
    /// The command and its arguments (after `--`).
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

#[derive(Args)]
pub struct NameArg {
    /// Lab name (prefix of every namespace it creates).
    #[arg(long, default_value = DEFAULT_LAB)]
    pub name: String,
}

#[derive(Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub name: NameArg,
    /// Number of hosts (sites).
    #[arg(long, default_value_t = 2)]
    pub sites: usize,
    /// Containers per host.
    #[arg(long, default_value_t = 2)]
    pub containers: usize,
    /// Checksum mode of the mappings: neutral-map, adj-transport or no-action.
    #[arg(long, default_value = "neutral-map")]
    pub csum_mode: ChecksumMode,
    /// How hosts are joined: ila (translation in eBPF), native (plain routing), swarm (VXLAN)
    /// or evpn (VXLAN per tenant, MP-BGP EVPN through a route server; tenants share one
    /// prefix and reuse addresses).
    #[arg(long, default_value = "ila")]
    pub mode: Mode,
    /// Mapping store of the agents: embedded (one process) or etcd (a real 3-member cluster).
    #[arg(long, default_value = "embedded")]
    pub store: StoreKind,
    /// What makes the containers: agent (namespaces the agents create) or podman (podman + runc
    /// through the ilanet-cni plugin, which must lie beside ilanet).
    #[arg(long, default_value = "agent")]
    pub runtime: Runtime,
    /// Number of tenant networks (t1…tN, VNID k, SIR prefix fd00:dead:beef:<k-1>::/64);
    /// containers are spread over them in turn.
    #[arg(long, default_value_t = 1)]
    pub tenants: u16,
    /// How locators are routed: bird (BIRD 2 on the router as iBGP route reflector, the
    /// agents peer with it; the default in ila mode, as at SC17), frr, gobgp (the same with FRR
    /// or gobgpd), mesh (the agents peer with each other, BIRD on the router learns from them)
    /// or static (routes on the router; the default in native and swarm mode).
    #[arg(long)]
    pub routing: Option<RoutingMode>,
    /// Agents' lease time to live in seconds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=agent::MAX_LEASE_TTL.as_secs()))]
    pub lease_ttl: u64,
    /// With --store etcd: run etcd without TLS, client certificates and auth (anyone on this
    /// machine can then rewrite every mapping with etcdctl). By default the lab makes a CA, a
    /// certificate and an etcd user per host whose role may write only that host's keys.
    #[arg(long)]
    pub insecure_store: bool,
}

#[derive(Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub name: NameArg,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(cmd: &LabCommand) -> Result<ExitCode> {
    match cmd {
        LabCommand::Up(args) => {
            let mut spec = LabSpec::generic(&args.name.name, args.sites, args.containers);
            spec.csum_mode = args.csum_mode;
            spec.mode = args.mode;
            spec.store = args.store;
            spec.insecure_store = args.insecure_store;
            spec.runtime = args.runtime;
            spec.routing = args.routing.unwrap_or(match args.mode {
                Mode::Ila => RoutingMode::Bird,
                // The paper's EVPN route server.
                Mode::Evpn => RoutingMode::Gobgp,
                Mode::Native | Mode::Swarm => RoutingMode::Static,
            });
            if args.tenants == 0 {
                anyhow::bail!("--tenants must be at least 1");
            }
            if args.mode == Mode::Evpn {
                spec.tenants = lab::plan::overlapping_tenants(args.tenants);
            } else if args.tenants > 1 {
                spec.tenants = lab::plan::numbered_tenants(args.tenants);
            }
            spec.lease_ttl = std::time::Duration::from_secs(args.lease_ttl);
            let plan = lab::up(&spec).with_context(|| format!("lab up '{}'", args.name.name))?;
            let containers: usize = plan.hosts.iter().map(|h| h.containers.len()).sum();
            println!(
                "lab '{}' is up ({} mode, {} store, {} runtime, {} routing): {} hosts, {} containers (see `ilanet lab status --name {}`)",
                plan.name,
                plan.mode,
                plan.store,
                plan.runtime,
                plan.routing,
                plan.hosts.len(),
                containers,
                plan.name
            );
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Down(args) => {
            match lab::down(&args.name).with_context(|| format!("lab down '{}'", args.name))? {
                DownOutcome::Removed => println!("lab '{}' removed", args.name),
                DownOutcome::NotUp => println!("lab '{}' is not up; nothing to do", args.name),
            }
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Exec(args) => exec(args),
        LabCommand::EvpnAgents(args) => {
            lab::evpn::run_agents(&args.name)
                .with_context(|| format!("EVPN agents of lab '{}'", args.name))?;
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Status(args) => {
            let status = lab::status(&args.name.name)?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print_status(&status);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Runs a command in a container's network namespace (`nsenter --net`), with its exit status.
fn exec(args: &ExecArgs) -> Result<ExitCode> {
    let plan = lab::plan_of(&args.name.name)?;
    let Some((_, c)) = plan.container(&args.container) else {
        let names: Vec<&str> = plan
            .hosts
            .iter()
            .flat_map(|h| h.containers.iter().map(|c| c.name.as_str()))
            .collect();
        anyhow::bail!(
            "lab '{}' has no container '{}' (it has: {})",
            plan.name,
            args.container,
            names.join(", ")
        );
    };
    lab::require("nsenter")?;
    let ns = lab::netns::path(&c.netns);
    let status = std::process::Command::new("nsenter")
        .arg(format!("--net={}", ns.display()))
        .arg("--")
        .args(&args.command)
        .status()
        .with_context(|| format!("running nsenter into {}", ns.display()))?;
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(n) => ExitCode::from(u8::try_from(n).unwrap_or(1)),
        None => ExitCode::FAILURE,
    })
}

/// Prints a lab's status as text.
pub fn print_status(s: &LabStatus) {
    println!(
        "lab '{}' ({:?}), checksum mode {}, {} routing, tenants: {}",
        s.name,
        s.phase,
        s.csum_mode,
        s.routing,
        s.tenants
            .iter()
            .map(|t| format!("{} (VNID {}, {})", t.name, t.vnid, t.sir))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for h in &s.hosts {
        println!(
            "\nhost {} ({}) netns {}{} locator {} uplink {}  mappings: {} out, {} in",
            h.name,
            h.display,
            h.netns,
            if h.present { "" } else { " [MISSING]" },
            h.locator,
            h.uplink_addr,
            h.out_mappings,
            h.in_mappings
        );
        for c in &h.containers {
            println!(
                "  {:<14} {:<40} SIR {:<28} ILA {}{}",
                c.name,
                c.netns,
                c.sir_addr.to_string(),
                c.ila_addr,
                if c.present { "" } else { " [MISSING]" }
            );
        }
        match &h.counters {
            Some(c) => {
                let line: Vec<String> = c
                    .pairs()
                    .into_iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                println!("  counters: {}", line.join(" "));
            }
            None => println!("  counters: unavailable (maps not pinned)"),
        }
    }
}
