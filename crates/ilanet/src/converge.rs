//! `ilanet bench converge`: arguments and printing of [`bench::converge`] (how long a new
//! endpoint's mapping takes to reach every other host's eBPF out-map, and a cold resync).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use bench::converge::{ConvergeConfig, Report};
use clap::Args;
use lab::agents::StoreKind;

/// `ilanet bench converge`.
#[derive(Args, Debug)]
pub struct ConvergeArgs {
    /// Hosts in the lab (at least 2: convergence is measured on the other hosts).
    #[arg(long, default_value_t = 16)]
    hosts: usize,
    /// Endpoints to create, round-robin over the hosts.
    #[arg(long, default_value_t = 1000)]
    endpoints: usize,
    /// Mapping store of the lab: embedded or etcd (3 members).
    #[arg(long, default_value = "embedded")]
    store: StoreKind,
    /// Endpoints being created at the same time (1 = one at a time: clean measurements).
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Mappings of the cold-resync measurement (0 skips it).
    #[arg(long, default_value_t = 100_000)]
    resync: usize,
    /// Sleep between two polls of the other hosts' maps, in microseconds (the resolution).
    #[arg(long, default_value_t = 100)]
    poll_us: u64,
    /// Give up when a mapping has not reached every host after this many seconds.
    #[arg(long, default_value_t = 10)]
    timeout: u64,
    /// Print the results as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Also write the results into this directory (one JSON file per run, plus a line appended
    /// to `converge.jsonl`).
    #[arg(long)]
    out: Option<PathBuf>,
}

impl ConvergeArgs {
    fn config(&self, agent_binary: PathBuf) -> ConvergeConfig {
        ConvergeConfig {
            hosts: self.hosts,
            endpoints: self.endpoints,
            store: self.store,
            concurrency: self.concurrency,
            resync: self.resync,
            poll_us: self.poll_us,
            timeout_secs: self.timeout,
            agent_binary,
        }
    }
}

/// Runs `ilanet bench converge`.
pub fn run(args: &ConvergeArgs) -> Result<ExitCode> {
    let exe = std::env::current_exe().context("finding the ilanet executable")?;
    let cfg = args.config(exe);
    cfg.validate()?;
    crate::stop::install();
    let name = format!("cv{}", std::process::id());
    let note = |m: &str| eprintln!("converge: {m}");
    let report = bench::converge::run(&cfg, &name, &crate::stop::STOP, &note)?;
    if let Some(dir) = &args.out {
        let file = bench::converge::write_out(dir, &report)?;
        eprintln!("converge: results in {}", file.display());
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    if report.interrupted {
        eprintln!("converge: interrupted; the lab is down");
        return Ok(ExitCode::from(130));
    }
    Ok(ExitCode::SUCCESS)
}

fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "met",
        Some(false) => "MISSED",
        None => "not judged at this size",
    }
}

fn print_table(r: &Report) {
    println!(
        "convergence: {} hosts, {} endpoints ({} measured), {} store, concurrency {}, poll {} µs",
        r.hosts, r.endpoints, r.measured, r.store, r.concurrency, r.poll_us
    );
    println!(
        "{:<34} {:>6} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "", "n", "p50 ms", "p90 ms", "p99 ms", "max ms", "mean ms"
    );
    for (label, s) in [
        ("created → every other host", &r.convergence),
        ("created → first other host", &r.first_host),
        ("creation call", &r.create),
        ("requested → every other host", &r.from_request),
    ] {
        if let Some(s) = s {
            println!(
                "{label:<34} {:>6} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
                s.count, s.p50_ms, s.p90_ms, s.p99_ms, s.max_ms, s.mean_ms
            );
        }
    }
    println!(
        "target p99 ≤ {} ms: {}",
        r.target_p99_ms,
        verdict(r.target_met)
    );
    if let Some(x) = &r.resync {
        println!(
            "cold resync of {} mappings: {:.1} ms ({:.2} µs/entry; view {:.1}, desired {:.1}, read {:.1}, diff {:.1}, write {:.1} ms); target ≤ {} ms: {}",
            x.entries,
            x.total_ms,
            x.per_entry_us,
            x.view_ms,
            x.desired_ms,
            x.read_ms,
            x.diff_ms,
            x.write_ms,
            x.target_ms,
            verdict(x.target_met)
        );
        println!(
            "warm resync (all equal): {:.1} ms, {} written; sweep of {}: {:.1} ms",
            x.warm_total_ms, x.warm_written, x.sweep_removed, x.sweep_total_ms
        );
    }
}
