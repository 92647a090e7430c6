//! Mapping convergence (`ilanet bench converge`): how long a new endpoint's mapping takes to
//! reach every other host's eBPF out-map (creation returned → present on the last host), on a
//! lab with the embedded store or a 3-node etcd; and how long a cold resync of many mappings
//! into an eBPF map takes.
//!
//! Convergence is observed from outside the agents, the way traffic would see it: the bench
//! polls the other hosts' pinned `ILA_OUT` maps with single-key lookups. Endpoints are created
//! one at a time by default so each measurement is free of the others' work.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::Ipv6Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use agent::api::Request;
use agent::reconcile::{self, LocalEndpoint};
use dataplane::{HostDataplane, HostMaps};
use ila::{ChecksumMode, IdentifierAllocator, Locator};
use lab::agents::{self, StoreKind};
use lab::plan::Plan;
use lab::LabSpec;
use serde::Serialize;
use store::MappingRecord;

use crate::stats::Sorted;
use crate::BenchError;

/// p99 target of the issue for 16 hosts and 1,000 endpoints with the embedded store, in ms.
pub const TARGET_P99_EMBEDDED_MS: f64 = 50.0;
/// p99 target of the issue for 16 hosts and 1,000 endpoints with a 3-node etcd, in ms.
pub const TARGET_P99_ETCD_MS: f64 = 200.0;
/// Target of a cold resync of 100,000 mappings, in milliseconds.
pub const TARGET_RESYNC_MS: f64 = 1000.0;
/// The resync target is stated for this many mappings.
pub const TARGET_RESYNC_ENTRIES: usize = 100_000;
/// Capacity of ILA_OUT (the ABI header defines it; the ABI test checks it against BTF).
pub const OUT_MAP_CAPACITY: usize = dataplane::OUT_MAX_ENTRIES;
/// Locators the resync's synthetic mappings are spread over.
const RESYNC_HOSTS: u16 = 16;

/// What to measure.
#[derive(Debug, Clone)]
pub struct ConvergeConfig {
    /// Hosts in the lab (at least 2: convergence is measured on the other hosts).
    pub hosts: usize,
    /// Endpoints to create, round-robin over the hosts.
    pub endpoints: usize,
    /// Mapping store of the lab.
    pub store: StoreKind,
    /// Endpoints being created at the same time (1 = one at a time: clean measurements).
    pub concurrency: usize,
    /// Mappings of the cold-resync measurement (0 skips it).
    pub resync: usize,
    /// Sleep between two polls of the other hosts' maps, in microseconds (the resolution).
    pub poll_us: u64,
    /// Give up when a mapping has not reached every host after this many seconds.
    pub timeout_secs: u64,
    /// The `ilanet` executable the lab's agents run.
    pub agent_binary: PathBuf,
}

impl ConvergeConfig {
    /// Checks the numbers before anything is built.
    pub fn validate(&self) -> Result<(), BenchError> {
        let invalid = |m: String| Err(BenchError::Invalid(m));
        if self.hosts < 2 {
            return invalid(format!(
                "--hosts must be at least 2 (convergence is measured on the other hosts), got {}",
                self.hosts
            ));
        }
        if self.endpoints == 0 {
            return invalid("--endpoints must be at least 1".into());
        }
        if self.concurrency == 0 || self.concurrency > self.endpoints {
            return invalid(format!(
                "--concurrency must be between 1 and --endpoints ({}), got {}",
                self.endpoints, self.concurrency
            ));
        }
        if self.resync > OUT_MAP_CAPACITY {
            return invalid(format!(
                "--resync must be at most {OUT_MAP_CAPACITY} (the capacity of ILA_OUT), got {}",
                self.resync
            ));
        }
        if self.timeout_secs == 0 {
            return invalid("--timeout must be at least 1 second".into());
        }
        Ok(())
    }
}

/// Nearest-rank summary of a set of durations, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Number of durations.
    pub count: usize,
    /// Shortest.
    pub min_ms: f64,
    /// Median (nearest rank).
    pub p50_ms: f64,
    /// 90th percentile (nearest rank).
    pub p90_ms: f64,
    /// 99th percentile (nearest rank).
    pub p99_ms: f64,
    /// Longest.
    pub max_ms: f64,
    /// Arithmetic mean.
    pub mean_ms: f64,
}

impl Summary {
    /// The summary of `values` (milliseconds); `None` when there are none.
    pub fn of(values: &[f64]) -> Option<Self> {
        let s = Sorted::new(values)?;
        Some(Self {
            count: s.count(),
            min_ms: s.min(),
            p50_ms: s.percentile(50.0),
            p90_ms: s.percentile(90.0),
            p99_ms: s.percentile(99.0),
            max_ms: s.max(),
            mean_ms: s.mean(),
        })
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// One endpoint's measurement.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Endpoint name (`e<i>`).
    pub endpoint: String,
    /// Host it was created on.
    pub host: String,
    /// Its SIR address, the key looked up on the other hosts.
    pub sir_addr: Ipv6Addr,
    /// Duration of the `endpoint_add` call (namespace, veth, program, publication).
    pub create_ms: f64,
    /// Creation returned → the first other host had the mapping.
    pub first_ms: f64,
    /// Creation returned → the last other host had the mapping (the convergence time).
    pub converge_ms: f64,
    /// Creation requested → the last other host had the mapping (creation included).
    pub from_request_ms: f64,
    /// The host that got it last.
    pub last_host: String,
}

/// Results of the cold-resync measurement.
#[derive(Debug, Clone, Serialize)]
pub struct ResyncReport {
    /// Mappings resynchronised.
    pub entries: usize,
    /// Building the agent's view (SIR address → record) from the snapshot's records.
    pub view_ms: f64,
    /// `reconcile::desired`.
    pub desired_ms: f64,
    /// Reading the maps' current content (empty: cold).
    pub read_ms: f64,
    /// `reconcile::diff`.
    pub diff_ms: f64,
    /// Writing every entry (the agent's loop of inserts).
    pub write_ms: f64,
    /// All of the above: what a cold agent spends before its maps match the store.
    pub total_ms: f64,
    /// `total_ms` per entry, in microseconds.
    pub per_entry_us: f64,
    /// Second resync, every entry already equal: read, compare, write nothing.
    pub warm_total_ms: f64,
    /// Entries written by the warm resync (0 expected).
    pub warm_written: usize,
    /// Sweep: maps hold every entry, the store none.
    pub sweep_total_ms: f64,
    /// Entries removed by the sweep.
    pub sweep_removed: usize,
    /// Target for 100,000 entries.
    pub target_ms: f64,
    /// Whether `total_ms` meets it (only judged at 100,000 entries or more).
    pub target_met: Option<bool>,
}

/// Results of a whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Always `"converge"`.
    pub bench: &'static str,
    /// Name of the lab the run built (and removed).
    pub lab: String,
    /// When the run ended (RFC 3339, UTC).
    pub timestamp: String,
    /// The machine it ran on.
    pub machine: crate::machine::Machine,
    /// Hosts in the lab.
    pub hosts: usize,
    /// Endpoints requested.
    pub endpoints: usize,
    /// Mapping store of the lab.
    pub store: StoreKind,
    /// Endpoints created at the same time.
    pub concurrency: usize,
    /// Poll interval, in microseconds.
    pub poll_us: u64,
    /// Endpoints actually measured (fewer when interrupted).
    pub measured: usize,
    /// Whether the run was stopped before every endpoint was measured.
    pub interrupted: bool,
    /// Creation returned → present in every other host's out-map.
    pub convergence: Option<Summary>,
    /// Creation returned → present in the first other host's out-map.
    pub first_host: Option<Summary>,
    /// Duration of the creation call itself.
    pub create: Option<Summary>,
    /// Creation requested → present in every other host's out-map (creation included).
    pub from_request: Option<Summary>,
    /// The p99 target for this store.
    pub target_p99_ms: f64,
    /// Whether p99 meets the target (only judged for ≥ 16 hosts and ≥ 1,000 endpoints).
    pub target_met: Option<bool>,
    /// Every measurement, in creation order.
    pub samples: Vec<Sample>,
    /// The cold-resync measurement, unless skipped.
    pub resync: Option<ResyncReport>,
}

/// Attaches what was being done to an error, the way `anyhow::Context` does.
trait Step<T> {
    fn step(self, what: impl FnOnce() -> String) -> Result<T, BenchError>;
}

impl<T, E: std::error::Error + Send + Sync + 'static> Step<T> for Result<T, E> {
    fn step(self, what: impl FnOnce() -> String) -> Result<T, BenchError> {
        self.map_err(|e| BenchError::Step {
            what: what(),
            source: Box::new(e),
        })
    }
}

fn failed<T>(m: String) -> Result<T, BenchError> {
    Err(BenchError::Measurement(m))
}

/// Removes the bench's lab when dropped: on success, on error and after a stop.
struct LabGuard<'a> {
    name: String,
    note: &'a (dyn Fn(&str) + Sync),
}

impl Drop for LabGuard<'_> {
    fn drop(&mut self) {
        (self.note)(&format!("removing lab {}", self.name));
        if let Err(e) = lab::down(&self.name) {
            (self.note)(&format!(
                "removing lab {} failed: {e}; run `ilanet lab down --name {}`",
                self.name, self.name
            ));
        }
    }
}

/// Runs the benchmark: the cold resync (unless `cfg.resync` is 0), then a lab of `cfg.hosts`
/// hosts named `lab_name`, the endpoints, and the lab's removal. `stop` ends the measurement
/// early (the report says so); `note` receives one-line progress notes (also from the
/// measuring threads).
pub fn run(
    cfg: &ConvergeConfig,
    lab_name: &str,
    stop: &AtomicBool,
    note: &(dyn Fn(&str) + Sync),
) -> Result<Report, BenchError> {
    cfg.validate()?;
    // The resync runs first, with no lab up: nothing else competes for the CPUs.
    let resync = if cfg.resync > 0 {
        note(&format!("cold resync of {} mappings", cfg.resync));
        Some(resync_bench(cfg.resync).step(|| "cold resync measurement".into())?)
    } else {
        None
    };

    let name = lab_name.to_string();
    let mut spec = LabSpec::generic(&name, cfg.hosts, 0);
    spec.store = cfg.store;
    spec.agent_binary = Some(cfg.agent_binary.clone());
    note(&format!(
        "building lab {name} ({} hosts, {} store)",
        cfg.hosts, cfg.store
    ));
    let plan = lab::up(&spec).step(|| format!("building lab {name}"))?;
    let guard = LabGuard {
        name: name.clone(),
        note,
    };
    let (samples, interrupted) = measure(&plan, cfg, stop, note)?;
    drop(guard);

    let conv: Vec<f64> = samples.iter().map(|s| s.converge_ms).collect();
    let first: Vec<f64> = samples.iter().map(|s| s.first_ms).collect();
    let create: Vec<f64> = samples.iter().map(|s| s.create_ms).collect();
    let from_request: Vec<f64> = samples.iter().map(|s| s.from_request_ms).collect();
    let convergence = Summary::of(&conv);
    let target_p99_ms = match cfg.store {
        StoreKind::Embedded => TARGET_P99_EMBEDDED_MS,
        StoreKind::Etcd => TARGET_P99_ETCD_MS,
    };
    let judged = cfg.hosts >= 16 && cfg.endpoints >= 1000 && !interrupted;
    Ok(Report {
        bench: "converge",
        lab: name,
        timestamp: crate::machine::now_rfc3339(),
        machine: crate::machine::Machine::detect(),
        hosts: cfg.hosts,
        endpoints: cfg.endpoints,
        store: cfg.store,
        concurrency: cfg.concurrency,
        poll_us: cfg.poll_us,
        measured: samples.len(),
        interrupted,
        target_met: convergence
            .as_ref()
            .filter(|_| judged)
            .map(|s| s.p99_ms <= target_p99_ms),
        convergence,
        first_host: Summary::of(&first),
        create: Summary::of(&create),
        from_request: Summary::of(&from_request),
        target_p99_ms,
        samples,
        resync,
    })
}

/// Creates the endpoints and measures each one's convergence. Returns the samples (in creation
/// order) and whether the run was interrupted.
fn measure(
    plan: &Plan,
    cfg: &ConvergeConfig,
    stop: &AtomicBool,
    note: &(dyn Fn(&str) + Sync),
) -> Result<(Vec<Sample>, bool), BenchError> {
    let workers = cfg.concurrency;
    let results: Vec<Result<Vec<(usize, Sample)>, BenchError>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|w| s.spawn(move || worker(plan, cfg, w, stop, note)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(BenchError::Measurement(
                        "a measuring thread panicked".into(),
                    ))
                })
            })
            .collect()
    });
    let mut all = Vec::with_capacity(cfg.endpoints);
    for r in results {
        all.extend(r?);
    }
    all.sort_by_key(|(i, _)| *i);
    let interrupted = stop.load(Ordering::SeqCst) || all.len() < cfg.endpoints;
    Ok((all.into_iter().map(|(_, s)| s).collect(), interrupted))
}

/// Worker `w` of `concurrency`: endpoints `w`, `w + concurrency`, … one after the other.
fn worker(
    plan: &Plan,
    cfg: &ConvergeConfig,
    w: usize,
    stop: &AtomicBool,
    note: &(dyn Fn(&str) + Sync),
) -> Result<Vec<(usize, Sample)>, BenchError> {
    // Opened once: the polls must cost one lookup each, not an open.
    let maps: Vec<HostMaps> = plan
        .hosts
        .iter()
        .map(|h| {
            HostMaps::open_pinned(&lab::state::host_pin_dir(&plan.name, &h.name))
                .step(|| format!("opening the maps of host {}", h.name))
        })
        .collect::<Result<_, _>>()?;
    let poll = Duration::from_micros(cfg.poll_us);
    let timeout = Duration::from_secs(cfg.timeout_secs);
    let progress_every = (cfg.endpoints / 10).max(1);
    let mut out = Vec::new();
    for i in (w..cfg.endpoints).step_by(cfg.concurrency) {
        if stop.load(Ordering::SeqCst) {
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
            .step(|| format!("creating endpoint {name} on host {}", host.name))?;
        let created = Instant::now();
        let ep: LocalEndpoint = serde_json::from_value(reply)
            .step(|| format!("reply to the creation of endpoint {name}"))?;
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
                    .step(|| format!("looking up {sir} on host {}", plan.hosts[o].name))?
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
                return failed(format!(
                    "the mapping of endpoint {name} ({sir}, host {}) has not reached host(s) {} after {timeout:?}",
                    host.name,
                    missing.join(", ")
                ));
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
        if w == 0 && (i / cfg.concurrency).is_multiple_of(progress_every) {
            note(&format!(
                "[{:>5}/{}] {} on {}: {:.3} ms (creation {:.1} ms)",
                i + 1,
                cfg.endpoints,
                sample.endpoint,
                sample.host,
                sample.converge_ms,
                sample.create_ms
            ));
        }
        out.push((i, sample));
    }
    Ok(out)
}

/// `n` distinct mappings spread over [`RESYNC_HOSTS`] locators, as a store snapshot lists them.
fn synthetic_records(n: usize) -> Result<Vec<MappingRecord>, BenchError> {
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
                labels_sha256: None,
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
fn resync_pass(
    dp: &mut HostDataplane,
    host: &str,
    records: &[MappingRecord],
) -> Result<Pass, BenchError> {
    let t = Instant::now();
    let view: BTreeMap<Ipv6Addr, &MappingRecord> =
        records.iter().map(|r| (r.sir_address(), r)).collect();
    let view_t = t.elapsed();

    let t = Instant::now();
    let (desired, unusable) = reconcile::desired(host, view.values().copied(), &BTreeMap::new());
    let desired_t = t.elapsed();
    if let Some(u) = unusable.first() {
        return failed(format!(
            "{} synthetic mappings unusable, e.g. {}: {}",
            unusable.len(),
            u.sir_addr,
            u.reason
        ));
    }

    let maps = dp.maps();
    let t = Instant::now();
    let current = agent::io::read_current(maps)?;
    let read_t = t.elapsed();

    let t = Instant::now();
    let ops = reconcile::diff(&desired, &current);
    let diff_t = t.elapsed();

    // The agent's own write path.
    let t = Instant::now();
    let ops = agent::core::MapOps {
        mappings: ops,
        ..Default::default()
    };
    agent::io::write_ops(maps, &ops)?;
    let ops = ops.mappings;
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
fn resync_bench(n: usize) -> Result<ResyncReport, BenchError> {
    let records = synthetic_records(n)?;
    let mut dp =
        HostDataplane::load_unpinned().step(|| "loading the data path (unpinned)".into())?;
    let host = "site1";

    let cold = resync_pass(&mut dp, host, &records)?;
    let held = dp.maps().out_entries()?.len();
    if held != n {
        return failed(format!(
            "after the cold resync ILA_OUT holds {held} entries, expected {n}"
        ));
    }
    for r in records.iter().step_by((n / 16).max(1)) {
        let want = reconcile::out_entry(host, r).map_err(|u| BenchError::Measurement(u.reason))?;
        if dp.maps().get_out(r.sir_address())? != Some(want) {
            return failed(format!(
                "after the cold resync {} is not mapped as expected",
                r.sir_address()
            ));
        }
    }

    let warm = resync_pass(&mut dp, host, &records)?;
    let sweep = resync_pass(&mut dp, host, &[])?;
    let left = dp.maps().out_entries()?.len();
    if left != 0 {
        return failed(format!(
            "after the sweep ILA_OUT still holds {left} entries"
        ));
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

/// Writes `report` into `dir` (created if needed) as one JSON file named after the run, and
/// appends it without its samples, as one line, to `converge.jsonl`. Returns the JSON file.
pub fn write_out(dir: &Path, report: &Report) -> Result<PathBuf, BenchError> {
    std::fs::create_dir_all(dir).step(|| format!("creating {}", dir.display()))?;
    let file = dir.join(format!(
        "converge-{}-{}h-{}e-{}.json",
        report.store,
        report.hosts,
        report.endpoints,
        crate::machine::now_compact()
    ));
    let json = serde_json::to_vec_pretty(report)?;
    std::fs::write(&file, json).step(|| format!("writing {}", file.display()))?;
    // The log line leaves the samples out: one short line per run.
    let mut line = serde_json::to_value(report)?;
    if let Some(o) = line.as_object_mut() {
        o.remove("samples");
    }
    let line = serde_json::to_string(&line)?;
    let log = dir.join("converge.jsonl");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .step(|| format!("opening {}", log.display()))?;
    writeln!(f, "{line}")
        .step(|| format!("appending to {}", log.display()))
        .map(|()| file)
}
