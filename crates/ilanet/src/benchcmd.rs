//! `ilanet bench paper|rules`: the paper's Fig. 14 comparison and the rule-count curve, with
//! presets, a progress line on stderr, and Ctrl-C that keeps what was measured.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use bench::model::Settings;
use bench::{PaperConfig, Progress, Results, RulesConfig};
use clap::Args;

/// Options shared by both campaigns.
#[derive(Args, Debug, Clone)]
pub struct CommonArgs {
    /// Runs per case (rounds); overrides the preset.
    #[arg(long)]
    pub runs: Option<usize>,
    /// Seconds per iperf3 run; overrides the preset.
    #[arg(long)]
    pub duration: Option<u32>,
    /// Leading 1-second intervals dropped from each run (warm-up); overrides the preset.
    #[arg(long)]
    pub skip: Option<usize>,
    /// Parallel TCP streams per client (iperf3 -P): one value, or for `bench paper` a
    /// comma-separated list to sweep over (`1,4,8`).
    #[arg(long, visible_alias = "parallel", default_value = "1", value_parser = parse_streams)]
    pub streams: List<u32>,
    /// Underlay MTU: 1500 or 9000 (overlay devices get 70 bytes less in swarm mode); for
    /// `bench paper` also both (`1500,9000`).
    #[arg(long, default_value = "1500", value_parser = parse_mtus)]
    pub mtu: List<u32>,
    /// Output directory (default: results/<UTC timestamp>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Short preset (smoke test).
    #[arg(long, conflicts_with = "paper")]
    pub quick: bool,
    /// The paper's settings (100 runs × 70 s, first 10 s dropped): hours.
    #[arg(long)]
    pub paper: bool,
}

/// A comma-separated list of values on the command line (`4` is a one-value list).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct List<T>(pub Vec<T>);

impl<T: Copy> List<T> {
    /// The only value; `Err` naming the flag if the list has more (a campaign that measures
    /// one point).
    fn single(&self, flag: &str, campaign: &str) -> Result<T> {
        match self.0.as_slice() {
            [v] => Ok(*v),
            _ => anyhow::bail!(
                "{campaign} measures one point: {flag} takes one value here (lists are for \
                 `bench paper`)"
            ),
        }
    }
}

fn parse_streams(s: &str) -> Result<List<u32>, String> {
    let v: Vec<u32> = bench::model::parse_list(s)?;
    let max = bench::model::MAX_STREAMS;
    if let Some(x) = v.iter().find(|x| !(1..=max).contains(*x)) {
        return Err(format!("{x} streams: expected 1..={max}"));
    }
    Ok(List(v))
}

fn parse_mtus(s: &str) -> Result<List<u32>, String> {
    let v: Vec<u32> = bench::model::parse_list(s)?;
    if let Some(x) = v.iter().find(|x| !matches!(x, 1500 | 9000)) {
        return Err(format!("expected 1500 or 9000, got '{x}'"));
    }
    Ok(List(v))
}

fn parse_pairs(s: &str) -> Result<List<usize>, String> {
    let v: Vec<usize> = bench::model::parse_list(s)?;
    let max = bench::model::MAX_PAIRS;
    if let Some(x) = v.iter().find(|x| !(1..=max).contains(*x)) {
        return Err(format!(
            "{x} pairs: expected 1..={max} container pairs measured at once"
        ));
    }
    Ok(List(v))
}

/// `ilanet bench paper`.
#[derive(Args, Debug)]
pub struct PaperArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Scenarios to run, comma-separated (native, ila, ila+policy, swarm, swarm+iptables,
    /// evpn).
    #[arg(long, value_delimiter = ',')]
    pub scenarios: Vec<String>,
    /// Container pairs measured at once (one container of each pair on each host, one iperf3
    /// client/server per pair, their throughput summed): one value or a comma-separated list.
    #[arg(long, default_value = "1", value_parser = parse_pairs)]
    pub pairs: List<usize>,
    /// Bound of a sweep's planned measuring time (points × scenarios × runs × duration),
    /// hours; a single-point campaign is not bounded.
    #[arg(long, default_value_t = bench::model::MAX_SWEEP_HOURS)]
    pub max_hours: f64,
}

/// `ilanet bench rules`.
#[derive(Args, Debug)]
pub struct RulesArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Non-matching rule counts, comma-separated (both series: iptables and eBPF).
    #[arg(long, alias = "rules", value_delimiter = ',', default_values_t = bench::scenario::RULE_COUNTS)]
    pub counts: Vec<usize>,
}

/// (runs, duration s, skip) of each preset.
struct Preset(usize, u32, usize);

impl CommonArgs {
    /// Settings of a campaign that measures one point (streams and MTU single values).
    fn settings(
        &self,
        campaign: &str,
        quick: Preset,
        default: Preset,
        paper: Preset,
    ) -> Result<Settings> {
        let mut s = self.sweep_settings(quick, default, paper);
        s.streams = self.streams.single("--streams", campaign)?;
        s.mtu = self.mtu.single("--mtu", campaign)?;
        Ok(s)
    }

    /// Settings with the first streams and MTU values (the sweep is added by the caller).
    fn sweep_settings(&self, quick: Preset, default: Preset, paper: Preset) -> Settings {
        let p = if self.quick {
            quick
        } else if self.paper {
            paper
        } else {
            default
        };
        Settings {
            runs: self.runs.unwrap_or(p.0),
            duration: self.duration.unwrap_or(p.1),
            skip: self.skip.unwrap_or(p.2),
            streams: self.streams.0.first().copied().unwrap_or(1),
            mtu: self.mtu.0.first().copied().unwrap_or(1500),
            port: lab::LISTING9_PORT,
            sweep: None,
        }
    }

    fn out_dir(&self) -> PathBuf {
        self.out
            .clone()
            .unwrap_or_else(|| PathBuf::from("results").join(bench::machine::now_compact()))
    }
}

fn fmt_secs(d: std::time::Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s % 3600 / 60)
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

/// Progress on stderr: one rewritten line on a terminal, one line per step otherwise.
fn progress_printer() -> impl FnMut(&Progress) {
    let tty = std::io::stderr().is_terminal();
    move |p: &Progress| {
        let line = if p.total == 0 {
            format!("bench: {}", p.doing)
        } else {
            let last = p
                .last
                .as_ref()
                .map(|(n, g)| format!(" | last: {n} {g:.2} Gbit/s"))
                .unwrap_or_default();
            format!(
                "bench: [{:>3}/{}] {}{last} | ~{} left",
                p.done + 1,
                p.total,
                p.doing,
                fmt_secs(p.eta)
            )
        };
        if tty {
            eprint!("\r\x1b[K{line}");
        } else {
            eprintln!("{line}");
        }
    }
}

fn finish(results: &Results, out: &std::path::Path) -> ExitCode {
    if std::io::stderr().is_terminal() {
        eprintln!();
    }
    // Policy columns only when a case has an eBPF policy behind it.
    let policy = results.cases.iter().any(|c| c.policy.is_some());
    let policy_head = if policy {
        format!(" {:>9} {:>10}", "entries", "apply s")
    } else {
        String::new()
    };
    // Sweep case names carry their point (`ila+policy/p4-s8-m9000`).
    let w = results
        .cases
        .iter()
        .map(|c| c.name.len())
        .max()
        .unwrap_or(0)
        .max(16);
    let bw = results
        .cases
        .iter()
        .filter_map(|c| results.baseline_of(c).map(str::len))
        .max()
        .unwrap_or(0)
        .max(10);
    println!(
        "{:<w$} {:>9} {:>19} {:>5} {:>24} {:<bw$} {:>9} {:>10} {:>24}{policy_head}",
        "case",
        "Gbit/s",
        "95% CI (runs)",
        "runs",
        "ratio [95% CI]",
        "to",
        "CPU%/Gbps",
        "mCPU%/Gbps",
        "mCPU ratio [95% CI]"
    );
    for c in &results.cases {
        let policy_cols = match (&c.policy, policy) {
            (Some(p), _) => format!(
                " {:>9} {:>10}",
                p.max_entries(),
                p.mean_apply_secs()
                    .map(|s| format!("{s:.3}"))
                    .unwrap_or_else(|| "–".into())
            ),
            (None, true) => format!(" {:>9} {:>10}", "–", "–"),
            (None, false) => String::new(),
        };
        match &c.summary {
            Some(s) => {
                let ci = match (s.run_means.ci_low, s.run_means.ci_high) {
                    (Some(l), Some(h)) => format!("{l:.2} – {h:.2}"),
                    _ => "–".into(),
                };
                let ratio_text = |r: Option<bench::stats::Summary>| {
                    r.map(|r| match (r.ci_low, r.ci_high) {
                        (Some(l), Some(h)) => format!("{:.3} [{l:.3}, {h:.3}]", r.mean),
                        _ => format!("{:.3}", r.mean),
                    })
                    .unwrap_or_default()
                };
                let ratio = ratio_text(s.ratio_to_baseline);
                let machine = s
                    .machine_cpu_per_gbps
                    .map(|x| format!("{x:.2}"))
                    .unwrap_or_else(|| "–".into());
                let machine_ratio = ratio_text(s.machine_cpu_ratio_to_baseline);
                println!(
                    "{:<w$} {:>9.3} {:>19} {:>5} {:>24} {:<bw$} {:>9.1} {:>10} {:>24}{policy_cols}",
                    c.name,
                    s.run_means.mean,
                    ci,
                    s.runs,
                    ratio,
                    results.baseline_of(c).unwrap_or(""),
                    s.cpu_per_gbps,
                    machine,
                    machine_ratio
                );
            }
            None => println!("{:<w$} {}", c.name, c.note.as_deref().unwrap_or("no runs")),
        }
    }
    if let Some(v) = bench::report::ebpf_verdict(results) {
        println!("{v}");
    }
    if results.campaign == bench::model::Campaign::Paper {
        if let Some(v) = bench::report::scale_summary(results) {
            println!("{v}");
        }
    }
    println!("report: {}", out.join("report.md").display());
    if results.interrupted {
        eprintln!(
            "interrupted: the labs are down; partial results are kept in {}",
            out.display()
        );
        return ExitCode::from(130);
    }
    ExitCode::SUCCESS
}

/// Runs `ilanet bench paper`.
pub fn paper(args: &PaperArgs) -> Result<ExitCode> {
    let cfg = paper_config(args, args.common.out_dir(), std::process::id())?;
    let out = cfg.out.clone();
    crate::stop::install();
    let results = bench::paper(&cfg, &crate::stop::STOP, &mut progress_printer())
        .with_context(|| format!("bench paper (results so far in {})", out.display()))?;
    Ok(finish(&results, &out))
}

/// What `ilanet bench paper` runs: the presets, the sweep of streams × pairs × MTU, checked
/// (sizes, ranges, the planned-time bound of a sweep) before any lab is built.
fn paper_config(args: &PaperArgs, out: PathBuf, pid: u32) -> Result<PaperConfig> {
    let mut settings =
        args.common
            .sweep_settings(Preset(2, 5, 1), Preset(10, 12, 2), Preset(100, 70, 10));
    let sweep = bench::model::Sweep {
        streams: args.common.streams.0.clone(),
        pairs: args.pairs.0.clone(),
        mtu: args.common.mtu.0.clone(),
    };
    sweep.validate()?;
    if !(args.max_hours.is_finite() && args.max_hours > 0.0) {
        anyhow::bail!(
            "--max-hours must be a positive number of hours, got {}",
            args.max_hours
        );
    }
    let scenarios = bench::runner::select_scenarios(&args.scenarios)?;
    sweep.check_time(
        scenarios.len(),
        settings.runs,
        settings.duration,
        args.max_hours,
    )?;
    settings.sweep = Some(sweep);
    settings.validate()?;
    Ok(PaperConfig {
        settings,
        scenarios: args.scenarios.clone(),
        out,
        lab_prefix: format!("b{pid}"),
        max_hours: args.max_hours,
    })
}

/// Runs `ilanet bench rules`.
pub fn rules(args: &RulesArgs) -> Result<ExitCode> {
    let settings = args.common.settings(
        "bench rules",
        Preset(1, 4, 1),
        Preset(3, 10, 2),
        Preset(20, 30, 5),
    )?;
    let out = args.common.out_dir();
    let cfg = RulesConfig {
        settings,
        counts: args.counts.clone(),
        out: out.clone(),
        lab_prefix: format!("b{}", std::process::id()),
    };
    crate::stop::install();
    let results = bench::rules(&cfg, &crate::stop::STOP, &mut progress_printer())
        .with_context(|| format!("bench rules (results so far in {})", out.display()))?;
    Ok(finish(&results, &out))
}

#[derive(Args)]
pub struct CniArgs {
    /// Hosts of the etcd lab the benchmark builds (reachability is measured on all but the first).
    #[arg(long, default_value_t = 2)]
    hosts: usize,
    /// Containers attached per round.
    #[arg(long, default_value_t = 100)]
    containers: usize,
    /// Rounds, by how many ADDs run at once (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    parallel: Vec<usize>,
    /// Lab name (must not be up).
    #[arg(long, default_value = "benchcni")]
    lab: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// `ilanet bench cni`: ADD, reachability everywhere and DEL through the real plugin.
pub fn cni(args: &CniArgs) -> Result<ExitCode> {
    let me = std::env::current_exe().context("finding the ilanet binary")?;
    let cfg = bench::cni::CniBenchConfig {
        lab: args.lab.clone(),
        hosts: args.hosts,
        containers: args.containers,
        parallel: args.parallel.clone(),
        plugin: me.with_file_name("ilanet-cni"),
        agent_binary: me,
    };
    let rounds = bench::cni::run(&cfg)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rounds)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:>8}  {:>22}  {:>22}  {:>22}  targets (ADD p50≤25, p99≤60; reach p99≤80; DEL p99≤25 ms)",
        "parallel", "ADD p50/p99/max ms", "reachable p50/p99/max", "DEL p50/p99/max"
    );
    for r in &rounds {
        let v = r.verdict();
        let ok = |b: bool| if b { "met" } else { "MISSED" };
        let f =
            |l: &bench::cni::Latency| format!("{:.1}/{:.1}/{:.1}", l.p50_ms, l.p99_ms, l.max_ms);
        println!(
            "{:>8}  {:>22}  {:>22}  {:>22}  ADD p50 {} p99 {}, reach {}, DEL {}",
            r.parallel,
            f(&r.add),
            f(&r.reachable),
            f(&r.del),
            ok(v.add_p50),
            ok(v.add_p99),
            ok(v.reachable_p99),
            ok(v.del_p99)
        );
    }
    println!(
        "({} containers per round, {} hosts, etcd store)",
        args.containers, args.hosts
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct BgpArgs {
    /// Hosts of the lab.
    #[arg(long, default_value_t = 16)]
    hosts: usize,
    /// Kill/start rounds, each on the next host (default: one per host but the first).
    #[arg(long)]
    rounds: Option<usize>,
    /// BGP hold time in seconds (also the agents' graceful-restart time).
    #[arg(long, default_value_t = 3)]
    hold_time: u16,
    /// Lab name (must not be up).
    #[arg(long, default_value = "benchbgp")]
    lab: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// `ilanet bench bgp`.
pub fn bgp(args: &BgpArgs) -> Result<ExitCode> {
    let me = std::env::current_exe().context("finding the ilanet binary")?;
    let cfg = bench::bgp::BgpBenchConfig {
        lab: args.lab.clone(),
        hosts: args.hosts,
        rounds: args.rounds.unwrap_or(args.hosts.saturating_sub(1)).max(1),
        hold_time: args.hold_time,
        stream_after: 2,
        agent_binary: me,
    };
    let quiet = args.json;
    let r = bench::bgp::run(&cfg, |line| {
        if !quiet {
            eprintln!("{line}");
        }
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(ExitCode::SUCCESS);
    }
    let (up_ok, wd_ok, gr_ok) = r.verdict();
    let ok = |b: bool| if b { "met" } else { "MISSED" };
    let f = |m: &Option<bench::bgp::Millis>| match m {
        Some(m) => format!(
            "p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms ({} samples)",
            m.p50_ms, m.p99_ms, m.max_ms, m.count
        ),
        None => "no samples".into(),
    };
    println!(
        "BGP locator convergence: {} hosts, BIRD 2 route reflector, hold time {} s, graceful restart {} s, etcd store (lab up {:.1} s)",
        r.hosts, r.hold_time, r.hold_time, r.lab_up_secs
    );
    println!(
        "  host's session up → locator in every other host's table: {}   target p99 ≤ {:.0} ms: {}",
        f(&r.up),
        r.up_target_p99_ms,
        ok(up_ok)
    );
    println!(
        "  (agent process started → locator everywhere, its own start included: {})",
        f(&r.up_from_start)
    );
    println!(
        "  agent killed → withdrawn from every table:           {}   target ≤ {:.0} ms: {}",
        f(&r.withdraw),
        r.withdraw_target_ms,
        ok(wd_ok)
    );
    println!(
        "  agent restarted under graceful restart ({}): {} of {} datagrams lost, TCP stream {} ({} bytes verified), routes back in {:.0} ms   target 0 lost: {}",
        r.restart.host,
        r.restart.udp_lost,
        r.restart.udp_sent,
        match &r.restart.tcp_error {
            None => "survived".to_string(),
            Some(e) => format!("BROKE: {e}"),
        },
        r.restart.tcp_bytes,
        r.restart.reconverged_ms,
        ok(gr_ok)
    );
    Ok(ExitCode::SUCCESS)
}

/// What `bench fuzz` exercises.
#[derive(clap::Subcommand)]
pub enum FuzzTarget {
    /// The BGP decoder and session state machine, seeded from crates/bgp/tests/corpus.
    Bgp(FuzzBgpArgs),
    /// Policy files, JSON and YAML (alias bombs, deep nesting, huge strings and lists): the
    /// parser and the compiler; hostile inputs must be refused naming their limit.
    Policy(FuzzArgs),
    /// Agent API request lines: the decoder the agent's socket uses, with its bounds.
    Api(FuzzArgs),
    /// Store records (keys and values of puts and deletes): the decoder both backends use.
    Store(FuzzArgs),
    /// The CNI plugin: CNI_* environment, stdin configuration and agent replies.
    Cni(FuzzArgs),
    /// IPv6 packets through both eBPF programs (BPF_PROG_TEST_RUN, root) with random
    /// endpoints and policies; every verdict must equal the pure reference's.
    Datapath(FuzzArgs),
}

/// Options of `bench fuzz policy|api|store|cni|datapath`.
#[derive(Args)]
pub struct FuzzArgs {
    /// Inputs to feed.
    #[arg(long, default_value_t = 1_000_000)]
    count: u64,
    /// PRNG seed (the same seed feeds the same inputs).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Directory for inputs that panic, contradict the oracle or are slow (created on the
    /// first one).
    #[arg(long, default_value = "fuzz-findings")]
    save_dir: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct FuzzBgpArgs {
    /// Messages to generate.
    #[arg(long, alias = "count", default_value_t = 1_000_000)]
    messages: u64,
    /// PRNG seed (the same seed feeds the same messages).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// `ilanet bench fuzz …`.
pub fn fuzz(target: &FuzzTarget) -> Result<ExitCode> {
    let (args, run): (&FuzzArgs, FuzzRun) = match target {
        FuzzTarget::Bgp(args) => return fuzz_bgp(args),
        FuzzTarget::Policy(a) => (a, bench::fuzz_policy::run),
        FuzzTarget::Api(a) => (a, bench::fuzz_api::run),
        FuzzTarget::Store(a) => (a, bench::fuzz_store::run),
        FuzzTarget::Cni(a) => (a, bench::fuzz_cni::run),
        FuzzTarget::Datapath(a) => (a, bench::fuzz_datapath::run),
    };
    let quiet = args.json || !std::io::stderr().is_terminal();
    let total = args.count;
    let cfg = bench::fuzz_harness::FuzzConfig {
        count: args.count,
        seed: args.seed,
        save_dir: Some(args.save_dir.clone()),
    };
    let r = run(&cfg, &mut |done| {
        if !quiet {
            eprint!("\r{done}/{total} inputs");
        }
    })?;
    if !quiet {
        eprintln!();
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print_fuzz_report(&r);
    }
    Ok(if r.panics == 0 && r.violations == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// A surface's runner.
type FuzzRun = fn(
    &bench::fuzz_harness::FuzzConfig,
    &mut dyn FnMut(u64),
) -> Result<bench::fuzz_harness::FuzzReport, bench::BenchError>;

fn print_fuzz_report(r: &bench::fuzz_harness::FuzzReport) {
    println!(
        "{} fuzz: {} inputs (seed {}) in {:.1} s = {:.0} inputs/s; panics: {}; oracle violations: {}; peak RSS {}; slowest input {:.1} ms; largest {} bytes",
        r.surface,
        r.inputs,
        r.seed,
        r.seconds,
        r.inputs_per_sec,
        r.panics,
        r.violations,
        r.peak_rss_kib
            .map(|k| format!("{:.1} MiB", k as f64 / 1024.0))
            .unwrap_or_else(|| "unknown".into()),
        r.slowest_input_ms,
        r.max_input_bytes
    );
    let show = |title: &str, m: &std::collections::BTreeMap<String, u64>| {
        println!("  {title}:");
        for (k, v) in m {
            println!("    {k:<40} {v}");
        }
    };
    show("generated", &r.generators);
    show("outcomes", &r.outcomes);
    for f in &r.findings {
        println!("  FINDING {f}");
    }
}

fn fuzz_bgp(args: &FuzzBgpArgs) -> Result<ExitCode> {
    let quiet = args.json || !std::io::stderr().is_terminal();
    let total = args.messages;
    let r = bench::fuzz_bgp::run(
        bench::fuzz_bgp::FuzzConfig {
            messages: args.messages,
            seed: args.seed,
        },
        |done| {
            if !quiet {
                eprint!("\r{done}/{total} messages");
            }
        },
    )?;
    if !quiet {
        eprintln!();
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "BGP fuzz: {} messages (seed {}, {} corpus seeds) in {:.1} s = {:.0} messages/s; panics: {}",
            r.messages, r.seed, r.corpus_messages, r.seconds, r.messages_per_sec, r.panics
        );
        let show = |title: &str, m: &std::collections::BTreeMap<String, u64>| {
            println!("  {title}:");
            for (k, v) in m {
                println!("    {k:<28} {v}");
            }
        };
        show("generated", &r.generators);
        show("decoder", &r.decoder);
        show("fresh Established session", &r.established);
        show("fresh OpenSent session", &r.open_sent);
        println!(
            "  long-lived session re-established {} times",
            r.stateful_resets
        );
        for p in &r.panic_samples {
            println!("  PANIC on {p}");
        }
        if let Some(k) = bench::fuzz_harness::peak_rss_kib() {
            println!("  peak RSS {:.1} MiB", k as f64 / 1024.0);
        }
    }
    Ok(if r.panics == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `ilanet bench chaos`.
#[derive(Args, Debug)]
pub struct ChaosArgs {
    /// Minutes of fault schedule (fractions allowed, at least 10 s).
    #[arg(long, default_value_t = 10.0)]
    minutes: f64,
    /// Seed of the fault schedule and the probes (default: from the clock; printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Hosts in the lab.
    #[arg(long, default_value_t = 4)]
    hosts: usize,
    /// Lease TTL of the agents in seconds (the recovery bound is TTL + 1 s).
    #[arg(long, default_value_t = 3)]
    lease_ttl: u64,
    /// Print the report as JSON instead of Markdown.
    #[arg(long)]
    json: bool,
    /// Also write the report into this directory (JSON and Markdown).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Runs `ilanet bench chaos`: exits non-zero when an invariant was violated.
pub fn chaos(args: &ChaosArgs) -> Result<ExitCode> {
    if !(args.minutes.is_finite() && args.minutes > 0.0 && args.minutes <= 24.0 * 60.0) {
        anyhow::bail!(
            "--minutes must be between 10 s and 24 h, got {}",
            args.minutes
        );
    }
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let cfg = bench::chaos::ChaosConfig {
        duration: std::time::Duration::from_secs_f64(args.minutes * 60.0),
        seed,
        hosts: args.hosts,
        lease_ttl_secs: args.lease_ttl,
        agent_binary: std::env::current_exe().context("finding the ilanet executable")?,
    };
    cfg.validate()?;
    crate::stop::install();
    let name = format!("ch{}", std::process::id());
    let note = |m: &str| eprintln!("chaos: {m}");
    note(&format!("seed {seed} (replay with --seed {seed})"));
    let report = bench::chaos::run(&cfg, &name, &crate::stop::STOP, &note)?;
    if let Some(dir) = &args.out {
        let file = bench::chaos::write_out(dir, &report)?;
        eprintln!("chaos: report in {}", file.display());
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", bench::chaos::markdown(&report));
    }
    if report.violation_count > 0 {
        eprintln!(
            "chaos: {} invariant violation(s); seed {seed}",
            report.violation_count
        );
        return Ok(ExitCode::FAILURE);
    }
    if report.interrupted {
        return Ok(ExitCode::from(130));
    }
    Ok(ExitCode::SUCCESS)
}

/// `ilanet bench latency`.
#[derive(Args)]
pub struct LatencyArgs {
    /// Modes, comma-separated (native, ila, ila+policy, swarm, evpn; default: all).
    #[arg(long, value_delimiter = ',')]
    modes: Vec<String>,
    /// Interleaved rounds (the mode order rotates every round).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Requests per protocol, mode and round.
    #[arg(long, default_value_t = 2000)]
    requests: usize,
    /// Fresh flows (TCP connects, first UDP requests) per protocol, mode and round.
    #[arg(long, default_value_t = 200)]
    new_flows: usize,
    /// Request size in bytes.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Output directory for latency.json and report.md (default: results/<UTC timestamp>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Runs `ilanet bench latency`.
pub fn latency(args: &LatencyArgs) -> Result<ExitCode> {
    let cfg = bench::latency::LatencyConfig {
        modes: args.modes.clone(),
        rounds: args.rounds,
        requests: args.requests,
        new_flows: args.new_flows,
        size: args.size,
        lab_prefix: format!("l{}", std::process::id()),
    };
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("results").join(bench::machine::now_compact()));
    let quiet = args.json;
    let r = bench::latency::run(&cfg, &mut |line: &str| {
        if !quiet {
            eprintln!("bench: {line}");
        }
    })
    .context("bench latency")?;
    bench::report::save_latency(&out, &r)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<11} {:<4} {:<9} {:>7} {:>5} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8}",
        "mode",
        "prot",
        "kind",
        "count",
        "lost",
        "p50 µs",
        "p99 µs",
        "p99.9 µs",
        "p50-nat",
        "p50 ×",
        "p99 ×"
    );
    let o = |v: Option<f64>, d: usize| v.map(|x| format!("{x:.d$}")).unwrap_or_default();
    for c in &r.cases {
        println!(
            "{:<11} {:<4} {:<9} {:>7} {:>5} {:>9.1} {:>9.1} {:>9.1} {:>9} {:>8} {:>8}",
            c.mode,
            c.proto,
            c.kind,
            c.count,
            c.lost,
            c.p50_us,
            c.p99_us,
            c.p999_us,
            o(c.p50_above_native_us, 1),
            o(c.p50_ratio, 3),
            o(c.p99_ratio, 3)
        );
    }
    for v in &r.verdicts {
        println!("{v}");
    }
    println!("report: {}", out.join("report.md").display());
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Paper {
        #[command(flatten)]
        args: PaperArgs,
    }

    #[derive(Parser)]
    struct Rules {
        #[command(flatten)]
        args: RulesArgs,
    }

    fn paper_of(argv: &[&str]) -> Result<PaperConfig> {
        let p = Paper::try_parse_from(std::iter::once("paper").chain(argv.iter().copied()))?;
        paper_config(&p.args, PathBuf::from("/nonexistent"), 7)
    }

    fn paper_err(argv: &[&str]) -> String {
        format!("{:#}", paper_of(argv).expect_err("refused"))
    }

    #[test]
    fn paper_lists_become_a_sweep_and_single_values_still_work() {
        let cfg = paper_of(&[
            "--quick",
            "--streams",
            "1,4,8",
            "--pairs",
            "1,4",
            "--mtu",
            "1500,9000",
        ])
        .expect("config");
        let sweep = cfg.settings.sweep.clone().expect("sweep");
        assert_eq!(
            (sweep.streams, sweep.pairs, sweep.mtu),
            (vec![1, 4, 8], vec![1, 4], vec![1500, 9000])
        );
        assert_eq!(
            (cfg.settings.runs, cfg.settings.duration),
            (2, 5),
            "--quick"
        );
        assert_eq!((cfg.settings.streams, cfg.settings.mtu), (1, 1500));
        assert_eq!(cfg.lab_prefix, "b7");

        // The old spelling: one value, and --parallel as an alias of --streams.
        let cfg = paper_of(&["--parallel", "4", "--mtu", "9000"]).expect("config");
        let sweep = cfg.settings.sweep.expect("sweep");
        assert_eq!(
            (sweep.streams, sweep.pairs, sweep.mtu),
            (vec![4], vec![1], vec![9000])
        );
        assert_eq!((cfg.settings.streams, cfg.settings.mtu), (4, 9000));
        let cfg = paper_of(&[]).expect("defaults");
        assert_eq!(cfg.settings.sweep.map(|w| w.len()), Some(1));
    }

    #[test]
    fn bad_paper_lists_are_refused_with_the_reason() {
        let e = paper_err(&["--pairs", "0"]);
        assert!(e.contains("0 pairs: expected 1..=8"), "{e}");
        let e = paper_err(&["--streams", "1,,4"]);
        assert!(e.contains("entry 2 of '1,,4' is empty"), "{e}");
        let e = paper_err(&["--streams", "1,4,1"]);
        assert!(e.contains("listed twice"), "{e}");
        let e = paper_err(&["--streams", "0"]);
        assert!(e.contains("expected 1..=128"), "{e}");
        let e = paper_err(&["--mtu", "1500,1400"]);
        assert!(e.contains("expected 1500 or 9000, got '1400'"), "{e}");
        let e = paper_err(&[
            "--streams",
            "1,2,3,4,5,6,7,8",
            "--pairs",
            "1,2",
            "--mtu",
            "1500,9000",
        ]);
        assert!(e.contains("32 points; at most 24"), "{e}");
        // Within the point bound, but hours of measuring with the default preset.
        let e = paper_err(&[
            "--streams",
            "1,2,4,8",
            "--pairs",
            "1,2,4",
            "--mtu",
            "1500,9000",
            "--runs",
            "20",
        ]);
        assert!(e.contains("the bound is 8 h (--max-hours)"), "{e}");
        assert!(paper_of(&[
            "--streams",
            "1,2,4,8",
            "--pairs",
            "1,2,4",
            "--mtu",
            "1500,9000",
            "--runs",
            "20",
            "--max-hours",
            "24"
        ])
        .is_ok());
        let e = paper_err(&["--max-hours", "0"]);
        assert!(e.contains("--max-hours must be a positive"), "{e}");
        let e = paper_err(&["--scenarios", "nope"]);
        assert!(e.contains("unknown scenario 'nope'"), "{e}");
    }

    #[test]
    fn rules_measures_one_point() {
        let settings = |argv: &[&str]| {
            Rules::try_parse_from(argv)
                .expect("args")
                .args
                .common
                .settings(
                    "bench rules",
                    Preset(1, 4, 1),
                    Preset(3, 10, 2),
                    Preset(20, 30, 5),
                )
        };
        let s = settings(&["rules", "--parallel", "2", "--mtu", "9000"]).expect("settings");
        assert_eq!((s.streams, s.mtu, s.sweep), (2, 9000, None));
        let e = settings(&["rules", "--streams", "1,4"]).expect_err("a list");
        assert!(
            e.to_string().contains("--streams takes one value here"),
            "{e}"
        );
    }
}
