//! `ilanet bench converge`: how long a new endpoint's mapping takes to reach every other host's
//! eBPF out-map (creation returned → present on the last host), on a lab with the embedded store
//! or a 3-node etcd; and how long a cold resync of many mappings into an eBPF map takes.
//!
//! Convergence is observed from outside the agents, the way traffic would see it: the bench
//! polls the other hosts' pinned `ILA_OUT` maps with single-key lookups. Endpoints are created
//! one at a time by default so each measurement is free of the others' work.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::Ipv6Addr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use agent::api::Request;
use agent::reconcile::{self, LocalEndpoint};
use anyhow::{bail, Context, Result};
use clap::Args;
use dataplane::{HostDataplane, HostMaps};
use ila::{ChecksumMode, IdentifierAllocator, Locator};
use lab::agents::{self, StoreKind};
use lab::plan::Plan;
use lab::LabSpec;
use serde::Serialize;
use store::MappingRecord;

/// p99 targets of the issue for 16 hosts and 1,000 endpoints, in milliseconds.
const TARGET_P99_EMBEDDED_MS: f64 = 50.0;
const TARGET_P99_ETCD_MS: f64 = 200.0;
/// Target of a cold resync of 100,000 mappings, in milliseconds.
const TARGET_RESYNC_MS: f64 = 1000.0;
/// The resync target is stated for this many mappings.
const TARGET_RESYNC_ENTRIES: usize = 100_000;
/// Capacity of ILA_OUT (the ABI header defines it; the ABI test checks it against BTF).
const OUT_MAP_CAPACITY: usize = dataplane::OUT_MAX_ENTRIES;
/// Locators the resync's synthetic mappings are spread over.
const RESYNC_HOSTS: u16 = 16;

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

/// Nearest-rank summary of a set of durations, in milliseconds.
#[derive(Debug, Clone, Serialize)]
struct Summary {
    count: usize,
    min_ms: f64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    mean_ms: f64,
}

fn summarize(values: &[f64]) -> Option<Summary> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    // Nearest rank: the smallest value with at least p % of the samples at or below it.
    let rank = |p: f64| {
        let r = (p / 100.0 * v.len() as f64).ceil() as usize;
        v[r.clamp(1, v.len()) - 1]
    };
    Some(Summary {
        count: v.len(),
        min_ms: v[0],
        p50_ms: rank(50.0),
        p90_ms: rank(90.0),
        p99_ms: rank(99.0),
        max_ms: v[v.len() - 1],
        mean_ms: v.iter().sum::<f64>() / v.len() as f64,
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// One endpoint's measurement.
#[derive(Debug, Clone, Serialize)]
struct Sample {
    endpoint: String,
    host: String,
    sir_addr: Ipv6Addr,
    /// Duration of the `endpoint_add` call (namespace, veth, program, publication).
    create_ms: f64,
    /// Creation returned → the first other host had the mapping.
    first_ms: f64,
    /// Creation returned → the last other host had the mapping (the convergence time).
    converge_ms: f64,
    /// Creation requested → the last other host had the mapping (creation included).
    from_request_ms: f64,
    /// The host that got it last.
    last_host: String,
}

/// Results of the cold-resync measurement.
#[derive(Debug, Clone, Serialize)]
struct ResyncReport {
    entries: usize,
    /// Building the agent's view (SIR address → record) from the snapshot's records.
    view_ms: f64,
    /// `reconcile::desired`.
    desired_ms: f64,
    /// Reading the maps' current content (empty: cold).
    read_ms: f64,
    /// `reconcile::diff`.
    diff_ms: f64,
    /// Writing every entry (the agent's loop of inserts).
    write_ms: f64,
    /// All of the above: what a cold agent spends before its maps match the store.
    total_ms: f64,
    /// `total_ms` per entry, in microseconds.
    per_entry_us: f64,
    /// Second resync, every entry already equal: read, compare, write nothing.
    warm_total_ms: f64,
    /// Entries written by the warm resync (0 expected).
    warm_written: usize,
    /// Sweep: maps hold every entry, the store none.
    sweep_total_ms: f64,
    /// Entries removed by the sweep.
    sweep_removed: usize,
    /// Target for 100,000 entries.
    target_ms: f64,
    /// Whether `total_ms` meets it (only judged at 100,000 entries or more).
    target_met: Option<bool>,
}

/// Results of a whole run.
#[derive(Debug, Clone, Serialize)]
struct Report {
    bench: &'static str,
    /// Name of the lab the run built (and removed).
    lab: String,
    timestamp: String,
    machine: bench::machine::Machine,
    hosts: usize,
    endpoints: usize,
    store: StoreKind,
    concurrency: usize,
    poll_us: u64,
    /// Endpoints actually measured (fewer when interrupted).
    measured: usize,
    interrupted: bool,
    /// Creation returned → present in every other host's out-map.
    convergence: Option<Summary>,
    /// Creation returned → present in the first other host's out-map.
    first_host: Option<Summary>,
    /// Duration of the creation call itself.
    create: Option<Summary>,
    /// Creation requested → present in every other host's out-map (creation included).
    from_request: Option<Summary>,
    target_p99_ms: f64,
    /// Whether p99 meets the target (only judged for ≥ 16 hosts and ≥ 1,000 endpoints).
    target_met: Option<bool>,
    samples: Vec<Sample>,
    resync: Option<ResyncReport>,
}

/// Removes the bench's lab when dropped: on success, on error and after Ctrl-C.
struct LabGuard(String);

impl Drop for LabGuard {
    fn drop(&mut self) {
        eprintln!("converge: removing lab {}", self.0);
        if let Err(e) = lab::down(&self.0) {
            eprintln!(
                "converge: removing lab {} failed: {e}; run `ilanet lab down --name {}`",
                self.0, self.0
            );
        }
    }
}

/// Runs `ilanet bench converge`.
pub fn run(args: &ConvergeArgs) -> Result<ExitCode> {
    if args.hosts < 2 {
        bail!(
            "--hosts must be at least 2 (convergence is measured on the other hosts), got {}",
            args.hosts
        );
    }
    if args.endpoints == 0 {
        bail!("--endpoints must be at least 1");
    }
    if args.concurrency == 0 || args.concurrency > args.endpoints {
        bail!(
            "--concurrency must be between 1 and --endpoints ({}), got {}",
            args.endpoints,
            args.concurrency
        );
    }
    if args.resync > OUT_MAP_CAPACITY {
        bail!(
            "--resync must be at most {OUT_MAP_CAPACITY} (the capacity of ILA_OUT), got {}",
            args.resync
        );
    }
    if args.timeout == 0 {
        bail!("--timeout must be at least 1 second");
    }
    crate::stop::install();

    // The resync runs first, with no lab up: nothing else competes for the CPUs.
    let resync = if args.resync > 0 {
        eprintln!("converge: cold resync of {} mappings", args.resync);
        Some(resync_bench(args.resync).context("cold resync measurement")?)
    } else {
        None
    };

    let name = format!("cv{}", std::process::id());
    let mut spec = LabSpec::generic(&name, args.hosts, 0);
    spec.store = args.store;
    spec.agent_binary = Some(std::env::current_exe().context("finding the ilanet executable")?);
    eprintln!(
        "converge: building lab {name} ({} hosts, {} store)",
        args.hosts, args.store
    );
    let plan = lab::up(&spec).with_context(|| format!("building lab {name}"))?;
    let guard = LabGuard(name.clone());
    let (samples, interrupted) = measure(&plan, args)?;
    drop(guard);

    let conv: Vec<f64> = samples.iter().map(|s| s.converge_ms).collect();
    let first: Vec<f64> = samples.iter().map(|s| s.first_ms).collect();
    let create: Vec<f64> = samples.iter().map(|s| s.create_ms).collect();
    let from_request: Vec<f64> = samples.iter().map(|s| s.from_request_ms).collect();
    let convergence = summarize(&conv);
    let target_p99_ms = match args.store {
        StoreKind::Embedded => TARGET_P99_EMBEDDED_MS,
        StoreKind::Etcd => TARGET_P99_ETCD_MS,
    };
    let judged = args.hosts >= 16 && args.endpoints >= 1000 && !interrupted;
    let report = Report {
        bench: "converge",
        lab: name,
        timestamp: bench::machine::now_rfc3339(),
        machine: bench::machine::Machine::detect(),
        hosts: args.hosts,
        endpoints: args.endpoints,
        store: args.store,
        concurrency: args.concurrency,
        poll_us: args.poll_us,
        measured: samples.len(),
        interrupted,
        target_met: convergence
            .as_ref()
            .filter(|_| judged)
            .map(|s| s.p99_ms <= target_p99_ms),
        convergence,
        first_host: summarize(&first),
        create: summarize(&create),
        from_request: summarize(&from_request),
        target_p99_ms,
        samples,
        resync,
    };
    if let Some(dir) = &args.out {
        write_out(dir, &report)?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    if interrupted {
        eprintln!("converge: interrupted; the lab is down");
        return Ok(ExitCode::from(130));
    }
    Ok(ExitCode::SUCCESS)
}

/// Creates the endpoints and measures each one's convergence. Returns the samples (in creation
/// order) and whether the run was interrupted.
fn measure(plan: &Plan, args: &ConvergeArgs) -> Result<(Vec<Sample>, bool)> {
    let workers = args.concurrency;
    let results: Vec<Result<Vec<(usize, Sample)>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|w| s.spawn(move || worker(plan, args, w)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a measuring thread panicked")))
            })
            .collect()
    });
    let mut all = Vec::with_capacity(args.endpoints);
    for r in results {
        all.extend(r?);
    }
    all.sort_by_key(|(i, _)| *i);
    let interrupted = crate::stop::requested() || all.len() < args.endpoints;
    Ok((all.into_iter().map(|(_, s)| s).collect(), interrupted))
}

/// Worker `w` of `--concurrency`: endpoints `w`, `w + concurrency`, … one after the other.
fn worker(plan: &Plan, args: &ConvergeArgs, w: usize) -> Result<Vec<(usize, Sample)>> {
    // Opened once: the polls must cost one lookup each, not an open.
    let maps: Vec<HostMaps> = plan
        .hosts
        .iter()
        .map(|h| {
            HostMaps::open_pinned(&lab::state::host_pin_dir(&plan.name, &h.name))
                .with_context(|| format!("opening the maps of host {}", h.name))
        })
        .collect::<Result<_>>()?;
    let poll = Duration::from_micros(args.poll_us);
    let timeout = Duration::from_secs(args.timeout);
    let progress_every = (args.endpoints / 10).max(1);
    let mut out = Vec::new();
    for i in (w..args.endpoints).step_by(args.concurrency) {
        if crate::stop::requested() {
            break;
        }
        let h = i % plan.hosts.len();
        let host = &plan.hosts[h];
        let name = format!("e{i}");
        let req = Request::EndpointAdd {
            tenant: None,
            name: name.clone(),
            identifier: None,
            replace: false,
            labels: BTreeMap::new(),
        };
        let started = Instant::now();
        let reply = agents::call(&plan.name, &host.name, &req)
            .with_context(|| format!("creating endpoint {name} on host {}", host.name))?;
        let created = Instant::now();
        let ep: LocalEndpoint = serde_json::from_value(reply)
            .with_context(|| format!("reply to the creation of endpoint {name}"))?;
        let sir = ep.sir_addr;
        let mut pending: Vec<usize> = (0..plan.hosts.len()).filter(|o| *o != h).collect();
        let mut first = None;
        let mut last = (created, h);
        loop {
            let mut i = 0;
            while i < pending.len() {
                let o = pending[i];
                let present = maps[o]
                    .get_out(sir)
                    .with_context(|| format!("looking up {sir} on host {}", plan.hosts[o].name))?
                    .is_some();
                if present {
                    // Stamped after the lookup: an upper bound, at most one poll late.
                    let now = Instant::now();
                    first.get_or_insert(now);
                    last = (now, o);
                    pending.swap_remove(i);
                } else {
                    i += 1;
                }
            }
            if pending.is_empty() {
                break;
            }
            if created.elapsed() > timeout {
                let missing: Vec<&str> = pending
                    .iter()
                    .map(|o| plan.hosts[*o].name.as_str())
                    .collect();
                bail!(
                    "the mapping of endpoint {name} ({sir}, host {}) has not reached host(s) {} after {timeout:?}",
                    host.name,
                    missing.join(", ")
                );
            }
            std::thread::sleep(poll);
        }
        let sample = Sample {
            endpoint: name,
            host: host.name.clone(),
            sir_addr: sir,
            create_ms: ms(created - started),
            first_ms: ms(first.unwrap_or(last.0) - created),
            converge_ms: ms(last.0 - created),
            from_request_ms: ms(last.0 - started),
            last_host: plan.hosts[last.1].name.clone(),
        };
        if w == 0 && (i / args.concurrency).is_multiple_of(progress_every) {
            eprintln!(
                "converge: [{:>5}/{}] {} on {}: {:.3} ms (creation {:.1} ms)",
                i + 1,
                args.endpoints,
                sample.endpoint,
                sample.host,
                sample.converge_ms,
                sample.create_ms
            );
        }
        out.push((i, sample));
    }
    Ok(out)
}

/// `n` distinct mappings spread over [`RESYNC_HOSTS`] locators, as a store snapshot lists them.
fn synthetic_records(n: usize) -> Result<Vec<MappingRecord>> {
    let sir = lab::plan::default_sir_prefix();
    let mut alloc = IdentifierAllocator::for_vnid(lab::plan::default_vnid());
    (0..n)
        .map(|i| {
            let h = (i % usize::from(RESYNC_HOSTS)) as u16 + 1;
            Ok(MappingRecord {
                endpoint: format!("e{i}"),
                host: format!("site{h}"),
                sir,
                identifier: alloc.allocate()?,
                locator: Locator::from_addr(Ipv6Addr::new(0x2001, 0xdb8, h, 0, 0, 0, 0, 0)),
                mode: ChecksumMode::NeutralMap,
                identity: 0,
            })
        })
        .collect()
}

/// Phase timings of one resync.
struct Pass {
    view: Duration,
    desired: Duration,
    read: Duration,
    diff: Duration,
    write: Duration,
    written: usize,
    removed: usize,
}

impl Pass {
    fn total(&self) -> Duration {
        self.view + self.desired + self.read + self.diff + self.write
    }
}

/// One full resync of `dp` to `records` as seen from host `host`, on the agent's code path:
/// view, `reconcile::desired`, read the maps, `reconcile::diff`, then the agent's write loop.
fn resync_pass(dp: &mut HostDataplane, host: &str, records: &[MappingRecord]) -> Result<Pass> {
    let t = Instant::now();
    let view: BTreeMap<Ipv6Addr, &MappingRecord> =
        records.iter().map(|r| (r.sir_address(), r)).collect();
    let view_t = t.elapsed();

    let t = Instant::now();
    let (desired, unusable) = reconcile::desired(host, view.values().copied(), &BTreeMap::new());
    let desired_t = t.elapsed();
    if let Some(u) = unusable.first() {
        bail!(
            "{} synthetic mappings unusable, e.g. {}: {}",
            unusable.len(),
            u.sir_addr,
            u.reason
        );
    }

    let maps = dp.maps();
    let t = Instant::now();
    let current = agent::maps_io::current(maps)?;
    let read_t = t.elapsed();

    let t = Instant::now();
    let ops = reconcile::diff(&desired, &current);
    let diff_t = t.elapsed();

    // The agent's own write path.
    let t = Instant::now();
    agent::maps_io::apply(maps, &ops)?;
    let write_t = t.elapsed();
    Ok(Pass {
        view: view_t,
        desired: desired_t,
        read: read_t,
        diff: diff_t,
        write: write_t,
        written: ops.out_put.len() + ops.in_put.len() + ops.ipcache_put.len(),
        removed: ops.out_del.len() + ops.in_del.len() + ops.ipcache_del.len(),
    })
}

/// Cold resync of `n` mappings into fresh (unpinned) maps, then a warm one and a sweep.
fn resync_bench(n: usize) -> Result<ResyncReport> {
    let records = synthetic_records(n)?;
    let mut dp = HostDataplane::load_unpinned().context("loading the data path (unpinned)")?;
    let host = "site1";

    let cold = resync_pass(&mut dp, host, &records)?;
    let held = dp.maps().out_entries()?.len();
    if held != n {
        bail!("after the cold resync ILA_OUT holds {held} entries, expected {n}");
    }
    for r in records.iter().step_by((n / 16).max(1)) {
        let want = reconcile::out_entry(host, r).map_err(|u| anyhow::anyhow!(u.reason))?;
        if dp.maps().get_out(r.sir_address())? != Some(want) {
            bail!(
                "after the cold resync {} is not mapped as expected",
                r.sir_address()
            );
        }
    }

    let warm = resync_pass(&mut dp, host, &records)?;
    let sweep = resync_pass(&mut dp, host, &[])?;
    let left = dp.maps().out_entries()?.len();
    if left != 0 {
        bail!("after the sweep ILA_OUT still holds {left} entries");
    }
    let total_ms = ms(cold.total());
    Ok(ResyncReport {
        entries: n,
        view_ms: ms(cold.view),
        desired_ms: ms(cold.desired),
        read_ms: ms(cold.read),
        diff_ms: ms(cold.diff),
        write_ms: ms(cold.write),
        total_ms,
        per_entry_us: total_ms * 1e3 / n as f64,
        warm_total_ms: ms(warm.total()),
        warm_written: warm.written,
        sweep_total_ms: ms(sweep.total()),
        sweep_removed: sweep.removed,
        target_ms: TARGET_RESYNC_MS,
        target_met: (n >= TARGET_RESYNC_ENTRIES).then_some(total_ms <= TARGET_RESYNC_MS),
    })
}

fn write_out(dir: &Path, report: &Report) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let file = dir.join(format!(
        "converge-{}-{}h-{}e-{}.json",
        report.store,
        report.hosts,
        report.endpoints,
        bench::machine::now_compact()
    ));
    let json = serde_json::to_vec_pretty(report)?;
    std::fs::write(&file, json).with_context(|| format!("writing {}", file.display()))?;
    // The log line leaves the samples out: one short line per run.
    let mut line = serde_json::to_value(report)?;
    if let Some(o) = line.as_object_mut() {
        o.remove("samples");
    }
    let log = dir.join("converge.jsonl");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .with_context(|| format!("opening {}", log.display()))?;
    writeln!(f, "{}", serde_json::to_string(&line)?)
        .with_context(|| format!("appending to {}", log.display()))?;
    eprintln!("converge: results in {}", file.display());
    Ok(())
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
