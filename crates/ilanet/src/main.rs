//! `ilanet`: the command line of the ILA container network.

mod agentcmd;
mod benchcmd;
mod converge;
mod demo;
mod labcmd;
mod marketplace;
mod policycmd;
mod stop;
mod ui;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

/// ilanet — stable IPv6 addresses for containers across sites, by Identifier-Locator Addressing
/// in eBPF.
#[derive(Parser)]
#[command(name = "ilanet", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the SC17 demo: four sites, two containers each, every cross-site pair checked.
    Demo(demo::DemoArgs),
    /// Build, inspect and remove a testbed of hosts and containers in network namespaces.
    Lab {
        #[command(subcommand)]
        command: labcmd::LabCommand,
    },
    /// Run the agent(s) of a lab's host(s), or `agent status`.
    Agent(agentcmd::AgentArgs),
    /// Create, remove, list and move endpoints.
    Endpoint {
        #[command(subcommand)]
        command: agentcmd::EndpointCommand,
    },
    /// The mappings a host's agent knows, and whether its eBPF map holds them.
    Mappings(agentcmd::Target),
    /// BGP: the speakers announcing the hosts' locators, and the routes they learned.
    Bgp {
        #[command(subcommand)]
        command: agentcmd::BgpCommand,
    },
    /// Apply, delete, list and explain identity-based policies.
    Policy {
        #[command(subcommand)]
        command: policycmd::PolicyCommand,
    },
    /// Live flow events: translations, policy verdicts and drops.
    Trace(policycmd::TraceArgs),
    /// The data marketplace (paper, Figs. 1–2): search containers at three data sites, a
    /// correlate container at a fourth, two tenants side by side; answer checked, raw data
    /// sent elsewhere dropped.
    Marketplace(marketplace::MarketArgs),
    /// Inside a marketplace container: query the site's data, send the results.
    #[command(hide = true)]
    MarketplaceSearch(marketplace::programs::SearchArgs),
    /// Inside a marketplace container: receive, merge and deduplicate the results.
    #[command(hide = true)]
    MarketplaceCorrelate(marketplace::programs::CorrelateArgs),
    /// The SC17 dashboard in the browser: map, container terminals, live translation steps.
    Ui(ui::UiArgs),
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Nanoseconds per packet of each program, checksum mode, hit and miss (BPF_PROG_TEST_RUN).
    Micro(MicroArgs),
    /// The paper's Fig. 14: iperf3 TCP throughput for native, ILA, ILA + policy, swarm and swarm +
    /// iptables, interleaved runs, mean/median/95 % CI, ratios to native, report with figures.
    Paper(benchcmd::PaperArgs),
    /// Request/response latency between containers on two hosts (TCP and UDP ping-pong,
    /// p50/p99/p99.9) for native, ILA, ILA + policy and swarm, interleaved, with the first
    /// packet of a new flow reported separately.
    Latency(benchcmd::LatencyArgs),
    /// TCP throughput against the number of filter rules (iptables; eBPF once policy exists).
    Rules(benchcmd::RulesArgs),
    /// Time from an endpoint's creation to its mapping in every other host's eBPF map (p50,
    /// p99, max) on a lab, and the time of a cold resync of many mappings into an eBPF map.
    Converge(converge::ConvergeArgs),
    /// CNI ADD → reachable from every other host, and DEL, through the real plugin on an etcd
    /// lab: p50/p99 one at a time and several at once.
    Cni(benchcmd::CniArgs),
    /// Locator convergence over BGP on a 16-host lab with BIRD as route reflector: agent
    /// started → routed everywhere, agent killed → withdrawn everywhere, packets lost across a
    /// graceful restart.
    Bgp(benchcmd::BgpArgs),
    /// Chaos soak on a 4-host etcd lab: random endpoint, policy, agent and etcd faults while
    /// probes run between every pair; exits non-zero on any invariant violation.
    Chaos(benchcmd::ChaosArgs),
    /// Random and mutated input against a parser and state machine (zero panics).
    Fuzz {
        #[command(subcommand)]
        target: benchcmd::FuzzTarget,
    },
}

#[derive(Args)]
struct MicroArgs {
    /// Repetitions per measurement (the kernel runs the program this many times).
    #[arg(long, default_value_t = bench::micro::DEFAULT_REPEAT)]
    repeat: u32,
    /// Samples of the single-run cases (new flow, established flow timed alone).
    #[arg(long, default_value_t = bench::micro::SINGLE_RUN_SAMPLES)]
    samples: usize,
    /// Output directory for micro.json and report.md (default: results/<UTC timestamp>).
    #[arg(long)]
    out: Option<std::path::PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

fn bench_micro(args: &MicroArgs) -> Result<ExitCode> {
    if args.repeat < 1000 {
        anyhow::bail!("--repeat must be at least 1000, got {}", args.repeat);
    }
    if !(11..=1_000_000).contains(&args.samples) {
        anyhow::bail!("--samples must be 11 to 1000000, got {}", args.samples);
    }
    let report = bench::micro::run(args.repeat, args.samples)?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| std::path::PathBuf::from("results").join(bench::machine::now_compact()));
    bench::report::save_micro(&out, &report)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<16} {:<14} {:<22} {:>7} {:>9} {:>9} {:>9} {:>15}  target",
        "program", "csum-mode", "case", "repeat", "raw ns", "base ns", "above ns", "95% CI"
    );
    for r in &report.results {
        let ci = r
            .above_ci95
            .map(|[l, h]| format!("{l:.1} – {h:.1}"))
            .unwrap_or_default();
        let target = match r.target {
            Some(t) => format!(
                "{} {:.0}: {}",
                match t.kind {
                    bench::micro::TargetKind::AboveBaseline => "≤ base +",
                    bench::micro::TargetKind::Absolute => "≤ raw",
                },
                t.max_ns,
                if t.met { "met" } else { "MISSED" }
            ),
            None => String::new(),
        };
        println!(
            "{:<16} {:<14} {:<22} {:>7} {:>9.1} {:>9.1} {:>9.1} {:>15}  {target}",
            r.program.to_string(),
            r.csum_mode.to_string(),
            r.case,
            r.repeat,
            r.ns_per_packet,
            r.baseline_ns,
            r.above_baseline_ns,
            ci
        );
    }
    println!(
        "({} repeats per measurement, median of {} interleaved rounds, each paired with the empty \
         program; single runs: {} samples; load average {})",
        report.repeat,
        report.rounds,
        report.single_run_samples,
        report
            .load_after
            .map(|[a, b, c]| format!("{a:.2} {b:.2} {c:.2}"))
            .unwrap_or_else(|| "?".into())
    );
    println!("report: {}", out.join("report.md").display());
    Ok(ExitCode::SUCCESS)
}

/// Starts logging: `RUST_LOG` if set, else `default`.
pub(crate) fn init_logging(default: &str) {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default)).init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A host agent takes its log level from its configuration file (it starts logging itself).
    if !matches!(&cli.command, Command::Agent(a) if a.has_config()) {
        init_logging("warn");
    }
    let result = match &cli.command {
        Command::Demo(args) => demo::run(args),
        Command::Lab { command } => labcmd::run(command),
        Command::Agent(args) => agentcmd::run(args),
        Command::Endpoint { command } => agentcmd::endpoint(command),
        Command::Mappings(t) => agentcmd::mappings(t),
        Command::Bgp { command } => agentcmd::bgp(command),
        Command::Policy { command } => policycmd::run(command),
        Command::Trace(args) => policycmd::trace(args),
        Command::Marketplace(args) => marketplace::run(args),
        Command::MarketplaceSearch(args) => marketplace::programs::search_main(args),
        Command::MarketplaceCorrelate(args) => marketplace::programs::correlate_main(args),
        Command::Ui(args) => ui::run(args),
        Command::Bench { command } => match command {
            BenchCommand::Micro(args) => bench_micro(args),
            BenchCommand::Paper(args) => benchcmd::paper(args),
            BenchCommand::Latency(args) => benchcmd::latency(args),
            BenchCommand::Rules(args) => benchcmd::rules(args),
            BenchCommand::Converge(args) => converge::run(args),
            BenchCommand::Cni(args) => benchcmd::cni(args),
            BenchCommand::Bgp(args) => benchcmd::bgp(args),
            BenchCommand::Chaos(args) => benchcmd::chaos(args),
            BenchCommand::Fuzz { target } => benchcmd::fuzz(target),
        },
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
