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
/// Target of a cold resync of a million mappings, in milliseconds.
pub const TARGET_RESYNC_MILLION_MS: f64 = 3000.0;
/// The second resync target is stated for this many mappings.
pub const TARGET_RESYNC_MILLION_ENTRIES: usize = 1_000_000;
/// Target memory per mapping (kernel maps + the agent's view), in bytes.
pub const TARGET_BYTES_PER_MAPPING: f64 = 300.0;
/// Capacity of ILA_OUT and ILA_IPCACHE, the smaller (the ABI header defines them; the ABI test
/// checks them against BTF): every mapping has one entry in each.
pub const OUT_MAP_CAPACITY: usize = if dataplane::OUT_MAX_ENTRIES < dataplane::IPCACHE_MAX_ENTRIES {
    dataplane::OUT_MAX_ENTRIES
} else {
    dataplane::IPCACHE_MAX_ENTRIES
};
/// Target: a 100,000-rule policy in force on every host this long after `apply` returns, ms.
pub const TARGET_POLICY_MS: f64 = 1000.0;
/// The policy target is stated for this many rules.
pub const TARGET_POLICY_RULES: usize = 100_000;
/// Most applications of the policy in one run.
pub const MAX_POLICY_RUNS: usize = 20;
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
    /// Rules of the policy-in-force measurement (0 skips it).
    pub policy_rules: usize,
    /// Times the policy is applied (and removed again) for that measurement.
    pub policy_runs: usize,
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
                "--resync must be at most {OUT_MAP_CAPACITY} (the capacity of ILA_OUT and ILA_IPCACHE), got {}",
                self.resync
            ));
        }
        let max_rules = 3 * 65535;
        if self.policy_rules > max_rules {
            return invalid(format!(
                "--policy-rules must be at most {max_rules} (distinct port rules), got {}",
                self.policy_rules
            ));
        }
        if self.policy_rules > 0 && !(1..=MAX_POLICY_RUNS).contains(&self.policy_runs) {
            return invalid(format!(
                "--policy-runs must be between 1 and {MAX_POLICY_RUNS}, got {}",
                self.policy_runs
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
    /// Decoding the snapshot's key/value pairs (as the store holds them) into records.
    pub decode_ms: f64,
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
    /// All of the above: what a cold agent spends before its maps match the store (from the
    /// listing's bytes to the last map write).
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
    /// Target for this size: 1 s up to 100,000 entries, 3 s for a million.
    pub target_ms: f64,
    /// Whether `total_ms` meets it (only judged at 100,000 entries or more).
    pub target_met: Option<bool>,
    /// Memory the mappings cost.
    pub memory: MemoryReport,
}

/// Memory per mapping after the cold resync: the kernel's maps and the agent's view.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryReport {
    /// Kernel `memlock` of each mapping map (fdinfo) before the resync (empty maps), bytes.
    pub maps_empty: BTreeMap<String, u64>,
    /// The same after the cold resync.
    pub maps_full: BTreeMap<String, u64>,
    /// `max_entries` of each mapping map.
    pub max_entries: BTreeMap<String, u64>,
    /// (full − empty) summed over the maps, per mapping: what one more mapping costs.
    pub kernel_delta_bytes_per_mapping: f64,
    /// Full `memlock` summed over the maps, per mapping (buckets included).
    pub kernel_total_bytes_per_mapping: f64,
    /// Resident set growth of this process for the agent's view (decoded records keyed by SIR
    /// address, what the agent keeps), per mapping.
    pub view_rss_bytes_per_mapping: f64,
    /// Resident set growth at the peak of the resync (view + desired state + operations), per
    /// mapping: transient, freed after the resync.
    pub peak_rss_bytes_per_mapping: f64,
    /// `kernel_total_bytes_per_mapping + view_rss_bytes_per_mapping`.
    pub total_bytes_per_mapping: f64,
    /// Target per mapping, bytes.
    pub target_bytes: f64,
    /// Whether `total_bytes_per_mapping` meets it (judged at 100,000 entries or more).
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
    /// The policy-in-force measurement, unless skipped.
    pub policy: Option<PolicyReport>,
}

/// One application of the big policy.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyRun {
    /// Duration of the `policy apply` call (the agent stored the record).
    pub apply_ms: f64,
    /// Apply returned → the host's maps enforce the policy, per host (site order).
    pub in_force_ms: Vec<f64>,
    /// The slowest host: apply returned → the policy is in force everywhere.
    pub everywhere_ms: f64,
}

/// Results of the policy-in-force measurement.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyReport {
    /// Rules of the policy (each a `POLICY` entry per selected identity).
    pub rules: usize,
    /// Size of the policy file, bytes.
    pub file_bytes: usize,
    /// `POLICY` entries each host held with the policy in force.
    pub entries: Vec<usize>,
    /// Every application, in order.
    pub runs: Vec<PolicyRun>,
    /// Summary of `everywhere_ms` over the runs.
    pub everywhere: Option<Summary>,
    /// The target, ms.
    pub target_ms: f64,
    /// Whether the p50 of `everywhere_ms` meets it (judged at 100,000 rules or more).
    pub target_met: Option<bool>,
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
    let policy = if cfg.policy_rules > 0 && !stop.load(Ordering::SeqCst) {
        Some(policy_bench(&plan, cfg, stop, note)?)
    } else {
        None
    };
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
        policy,
    })
}

/// Rules per policy document of the policy measurement: a 100,000-rule document is over the
/// store's 16 MiB value limit, so the rules go in several policies applied in one request.
pub const POLICY_CHUNK_RULES: usize = 25_000;

/// `n` rules as CiliumNetworkPolicy documents of at most [`POLICY_CHUNK_RULES`] rules each,
/// all selecting `app=service1` and allowing `app=service1` in, each rule on its own
/// (protocol, port) so that each is one `POLICY` entry.
pub fn policy_chunks(n: usize) -> Vec<String> {
    let ports = ["TCP", "UDP", "SCTP"]
        .into_iter()
        .flat_map(|proto| (1..=65535u16).map(move |p| (proto, p)));
    let all: Vec<(&str, u16)> = ports.take(n).collect();
    all.chunks(POLICY_CHUNK_RULES)
        .enumerate()
        .map(|(i, chunk)| {
            let mut s = String::with_capacity(130 * chunk.len() + 256);
            s.push_str(&format!(
                "{{\"apiVersion\":\"cilium.io/v2\",\"kind\":\"CiliumNetworkPolicy\",\"metadata\":{{\"name\":\"bench-scale-{n}-{i}\"}},\
                 \"spec\":{{\"endpointSelector\":{{\"matchLabels\":{{\"app\":\"service1\"}}}},\"ingress\":["
            ));
            for (j, (proto, port)) in chunk.iter().enumerate() {
                if j > 0 {
                    s.push(',');
                }
                s.push_str(&format!(
                    "{{\"fromEndpoints\":[{{\"matchLabels\":{{\"app\":\"service1\"}}}}],\
                     \"toPorts\":[{{\"ports\":[{{\"port\":\"{port}\",\"protocol\":\"{proto}\"}}]}}]}}"
                ));
            }
            s.push_str("]}}\n");
            s
        })
        .collect()
}

/// Whether `identity`'s ingress is under policy on the host of `maps` (every local identity
/// has a `POLICY_EP` entry; the flag says whether a policy selects it).
fn enforced(maps: &HostMaps, identity: u32) -> Result<bool, BenchError> {
    Ok(maps
        .get_policy_ep(identity)?
        .is_some_and(|e| e.flags & policy::abi::EP_F_INGRESS_ENFORCED != 0))
}

/// Applies a policy of `cfg.policy_rules` rules selecting one endpoint on every host,
/// `cfg.policy_runs` times, and measures when each host's maps enforce all of it: its
/// endpoint's `POLICY_EP` entry enforcing and `POLICY` holding every rule (the agents put the
/// policies in one by one; the first makes the entry enforcing). The count is a batched dump
/// of the map, which bounds the resolution to one dump (milliseconds).
fn policy_bench(
    plan: &Plan,
    cfg: &ConvergeConfig,
    stop: &AtomicBool,
    note: &(dyn Fn(&str) + Sync),
) -> Result<PolicyReport, BenchError> {
    let n = cfg.policy_rules;
    let maps: Vec<HostMaps> = plan
        .hosts
        .iter()
        .map(|h| {
            HostMaps::open_pinned(&lab::state::host_pin_dir(&plan.name, &h.name))
                .step(|| format!("opening the maps of host {}", h.name))
        })
        .collect::<Result<_, _>>()?;
    let mut identities = Vec::new();
    for (i, h) in plan.hosts.iter().enumerate() {
        let req = Request::EndpointAdd {
            tenant: None,
            name: format!("pol{i}"),
            identifier: None,
            replace: false,
            labels: BTreeMap::from([("app".to_string(), "service1".to_string())]),
        };
        let reply = agents::call(&plan.name, &h.name, &req)
            .step(|| format!("creating the policy endpoint on host {}", h.name))?;
        let ep: LocalEndpoint =
            serde_json::from_value(reply).step(|| format!("reply to the creation of pol{i}"))?;
        identities.push(ep.identity);
    }
    let mut records = Vec::new();
    let mut file_bytes = 0;
    for (i, text) in policy_chunks(n).iter().enumerate() {
        let file = format!("bench-scale-{n}-{i}.json");
        file_bytes += text.len();
        records.extend(
            agent::policy_sync::records_for_file(&file, text.as_bytes(), lab::plan::default_vnid())
                .map_err(|e| {
                    BenchError::Invalid(format!("the {n}-rule policy does not parse: {e}"))
                })?,
        );
    }
    let names: Vec<String> = records.iter().map(|r| r.name.clone()).collect();
    let timeout = Duration::from_secs(cfg.timeout_secs.max(30));
    let poll = Duration::from_micros(cfg.poll_us);
    let first = &plan.hosts[0].name;
    let mut runs = Vec::new();
    let mut entries = Vec::new();
    for run in 0..cfg.policy_runs {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let started = Instant::now();
        agents::call(
            &plan.name,
            first,
            &Request::PolicyApply {
                records: records.clone(),
            },
        )
        .step(|| format!("applying the {n}-rule policy"))?;
        let returned = Instant::now();
        let mut done: Vec<Option<f64>> = vec![None; maps.len()];
        while done.iter().any(Option::is_none) {
            for (h, m) in maps.iter().enumerate() {
                if done[h].is_none()
                    && enforced(m, identities[h])?
                    && m.policy_entries()?.len() >= n
                {
                    done[h] = Some(ms(returned.elapsed()));
                }
            }
            if returned.elapsed() > timeout {
                return failed(format!(
                    "the {n}-rule policy is not in force on every host after {timeout:?}"
                ));
            }
            std::thread::sleep(poll);
        }
        let in_force_ms: Vec<f64> = done.into_iter().map(|d| d.unwrap_or(0.0)).collect();
        if run == 0 {
            entries = maps
                .iter()
                .map(|m| m.policy_entries().map(|v| v.len()))
                .collect::<Result<_, _>>()?;
            if let Some((h, e)) = entries.iter().enumerate().find(|(_, e)| **e < n) {
                return failed(format!(
                    "host {} enforces the policy with {e} POLICY entries, fewer than its {n} rules",
                    plan.hosts[h].name
                ));
            }
        }
        let r = PolicyRun {
            apply_ms: ms(returned - started),
            everywhere_ms: in_force_ms.iter().copied().fold(0.0, f64::max),
            in_force_ms,
        };
        note(&format!(
            "policy run {}/{}: apply {:.1} ms, in force everywhere {:.1} ms later",
            run + 1,
            cfg.policy_runs,
            r.apply_ms,
            r.everywhere_ms
        ));
        runs.push(r);
        for name in &names {
            agents::call(
                &plan.name,
                first,
                &Request::PolicyDelete { name: name.clone() },
            )
            .step(|| format!("deleting policy {name}"))?;
        }
        let gone = Instant::now();
        loop {
            let mut left = false;
            for (h, m) in maps.iter().enumerate() {
                left |= enforced(m, identities[h])?;
            }
            if !left {
                break;
            }
            if gone.elapsed() > timeout {
                return failed(format!(
                    "the {n}-rule policy is still in force somewhere {timeout:?} after its removal"
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let every: Vec<f64> = runs.iter().map(|r| r.everywhere_ms).collect();
    let everywhere = Summary::of(&every);
    Ok(PolicyReport {
        rules: n,
        file_bytes,
        entries,
        target_met: everywhere
            .as_ref()
            .filter(|_| n >= TARGET_POLICY_RULES)
            .map(|s| s.p50_ms <= TARGET_POLICY_MS),
        everywhere,
        runs,
        target_ms: TARGET_POLICY_MS,
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
    decode: Duration,
    view: Duration,
    desired: Duration,
    read: Duration,
    diff: Duration,
    write: Duration,
    written: usize,
    removed: usize,
    /// Resident set (bytes) once the view is built, and at the end of the writes.
    rss_view: u64,
    rss_peak: u64,
}

impl Pass {
    fn total(&self) -> Duration {
        self.decode + self.view + self.desired + self.read + self.diff + self.write
    }
}

/// A store listing: (key, value) bytes of each record.
type Listing = Vec<(Vec<u8>, Vec<u8>)>;

/// The snapshot as the store lists it: (key, value) bytes of each mapping record.
fn encode_snapshot(records: &[MappingRecord]) -> Result<Listing, BenchError> {
    records
        .iter()
        .map(|r| {
            let key = store::mapping_key(&r.host, r.sir_address()).into_bytes();
            Ok((key, serde_json::to_vec(r)?))
        })
        .collect()
}

/// Resident set size of this process, bytes (0 if unreadable: the figure is then absent).
fn rss_bytes() -> u64 {
    // SAFETY: malloc_trim only returns free heap memory to the kernel; it makes the RSS
    // figures reflect live allocations rather than what the allocator kept.
    unsafe { libc::malloc_trim(0) };
    let page = 4096u64;
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |p| p * page)
}

/// One full resync of `dp` to the listed `snapshot` as seen from host `host`, on the agent's
/// code path: decode, view, `reconcile::desired`, read the maps, `reconcile::diff`, then the
/// agent's write path.
fn resync_pass(
    dp: &mut HostDataplane,
    host: &str,
    snapshot: &[(Vec<u8>, Vec<u8>)],
) -> Result<Pass, BenchError> {
    let t = Instant::now();
    let mut records = Vec::with_capacity(snapshot.len());
    for (k, v) in snapshot {
        match store::decode_record(k, Some(v)).step(|| "decoding a mapping record".into())? {
            Some(store::StoreEvent::PutMapping(r)) => records.push(r),
            other => return failed(format!("a mapping key decoded as {other:?}")),
        }
    }
    let decode_t = t.elapsed();

    // Owned records keyed by SIR address: what the agent keeps as its view.
    let t = Instant::now();
    let view: BTreeMap<Ipv6Addr, MappingRecord> =
        records.into_iter().map(|r| (r.sir_address(), r)).collect();
    let view_t = t.elapsed();
    let rss_view = rss_bytes();

    let t = Instant::now();
    let (desired, unusable) = reconcile::desired(host, view.values(), &BTreeMap::new());
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
    let rss_peak = rss_bytes();
    Ok(Pass {
        decode: decode_t,
        view: view_t,
        desired: desired_t,
        read: read_t,
        diff: diff_t,
        write: write_t,
        written: ops.out_put.len() + ops.in_put.len() + ops.ipcache_put.len(),
        removed: ops.out_del.len() + ops.in_del.len() + ops.ipcache_del.len(),
        rss_view,
        rss_peak,
    })
}

/// The resync target for `n` entries: `None` below 100,000 (not judged).
pub fn resync_target_ms(n: usize) -> (f64, Option<f64>) {
    if n >= TARGET_RESYNC_MILLION_ENTRIES {
        (TARGET_RESYNC_MILLION_MS, Some(TARGET_RESYNC_MILLION_MS))
    } else if n >= TARGET_RESYNC_ENTRIES {
        (TARGET_RESYNC_MS, Some(TARGET_RESYNC_MS))
    } else {
        (TARGET_RESYNC_MS, None)
    }
}

fn memlocks(dp: &mut HostDataplane) -> Result<Vec<(&'static str, u64, u64)>, BenchError> {
    Ok(dp.maps().mapping_memory()?)
}

/// Cold resync of `n` mappings into fresh (unpinned) maps, then a warm one and a sweep.
fn resync_bench(n: usize) -> Result<ResyncReport, BenchError> {
    let records = synthetic_records(n)?;
    let snapshot = encode_snapshot(&records)?;
    let mut dp =
        HostDataplane::load_unpinned().step(|| "loading the data path (unpinned)".into())?;
    let host = "site1";

    let empty = memlocks(&mut dp)?;
    let rss0 = rss_bytes();
    let cold = resync_pass(&mut dp, host, &snapshot)?;
    let full = memlocks(&mut dp)?;
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
    drop(records);

    let warm = resync_pass(&mut dp, host, &snapshot)?;
    let sweep = resync_pass(&mut dp, host, &[])?;
    let left = dp.maps().out_entries()?.len();
    if left != 0 {
        return failed(format!(
            "after the sweep ILA_OUT still holds {left} entries"
        ));
    }
    let total_ms = ms(cold.total());
    let (target_ms, judged) = resync_target_ms(n);
    let memory = memory_report(n, &empty, &full, rss0, &cold);
    Ok(ResyncReport {
        entries: n,
        decode_ms: ms(cold.decode),
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
        target_ms,
        target_met: judged.map(|t| total_ms <= t),
        memory,
    })
}

/// Per-mapping memory from the maps' `memlock` before and after and the RSS figures of a pass.
fn memory_report(
    n: usize,
    empty: &[(&'static str, u64, u64)],
    full: &[(&'static str, u64, u64)],
    rss0: u64,
    cold: &Pass,
) -> MemoryReport {
    let per = |bytes: f64| if n == 0 { 0.0 } else { bytes / n as f64 };
    let sum = |v: &[(&'static str, u64, u64)]| v.iter().map(|(_, m, _)| *m).sum::<u64>();
    let kernel_total = per(sum(full) as f64);
    let kernel_delta = per(sum(full).saturating_sub(sum(empty)) as f64);
    let view = per(cold.rss_view.saturating_sub(rss0) as f64);
    let peak = per(cold.rss_peak.max(cold.rss_view).saturating_sub(rss0) as f64);
    let total = kernel_total + view;
    MemoryReport {
        maps_empty: empty.iter().map(|(k, m, _)| (k.to_string(), *m)).collect(),
        maps_full: full.iter().map(|(k, m, _)| (k.to_string(), *m)).collect(),
        max_entries: full.iter().map(|(k, _, e)| (k.to_string(), *e)).collect(),
        kernel_delta_bytes_per_mapping: kernel_delta,
        kernel_total_bytes_per_mapping: kernel_total,
        view_rss_bytes_per_mapping: view,
        peak_rss_bytes_per_mapping: peak,
        total_bytes_per_mapping: total,
        target_bytes: TARGET_BYTES_PER_MAPPING,
        target_met: (n >= TARGET_RESYNC_ENTRIES).then_some(total <= TARGET_BYTES_PER_MAPPING),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ConvergeConfig {
        ConvergeConfig {
            hosts: 2,
            endpoints: 1,
            store: StoreKind::Embedded,
            concurrency: 1,
            resync: 0,
            policy_rules: 0,
            policy_runs: 1,
            poll_us: 100,
            timeout_secs: 1,
            agent_binary: PathBuf::from("ilanet"),
        }
    }

    #[test]
    fn sizes_are_bounded() {
        assert!(cfg().validate().is_ok());
        let c = ConvergeConfig {
            resync: 1_000_000,
            ..cfg()
        };
        assert!(c.validate().is_ok(), "a million mappings fit the maps");
        let c = ConvergeConfig {
            resync: OUT_MAP_CAPACITY + 1,
            ..cfg()
        };
        assert!(c.validate().is_err());
        let c = ConvergeConfig {
            policy_rules: 3 * 65535 + 1,
            ..cfg()
        };
        assert!(c.validate().is_err());
        let c = ConvergeConfig {
            policy_rules: 10,
            policy_runs: 0,
            ..cfg()
        };
        assert!(c.validate().is_err());
    }

    #[test]
    fn resync_targets_by_size() {
        assert_eq!(resync_target_ms(1000).1, None);
        assert_eq!(resync_target_ms(100_000).1, Some(TARGET_RESYNC_MS));
        assert_eq!(
            resync_target_ms(1_000_000).1,
            Some(TARGET_RESYNC_MILLION_MS)
        );
    }

    #[test]
    fn policy_chunks_parse_and_hold_every_rule_once() {
        let chunks = policy_chunks(POLICY_CHUNK_RULES + 3);
        assert_eq!(chunks.len(), 2);
        let vnid = lab::plan::default_vnid();
        let mut names = Vec::new();
        for (i, text) in chunks.iter().enumerate() {
            let recs =
                agent::policy_sync::records_for_file(&format!("c{i}.json"), text.as_bytes(), vnid)
                    .expect("parses");
            names.extend(recs.into_iter().map(|r| r.name));
        }
        names.sort();
        names.dedup();
        assert_eq!(names.len(), 2, "one policy per chunk: {names:?}");
        let rules: usize = chunks.iter().map(|c| c.matches("toPorts").count()).sum();
        assert_eq!(rules, POLICY_CHUNK_RULES + 3);
        assert!(chunks.iter().all(|c| c.len() < store::MAX_VALUE_BYTES / 2));
    }
}
