//! `ilanet marketplace`: the paper's motivating use (section 2, Figs. 1–2) on the lab. Each
//! marketplace (tenant) has three data sites holding data that must not leave, a search
//! container shipped to each that runs a query over the local data, and a correlate container
//! at a fourth site that receives the results on tcp/5201, merges them and removes duplicates.
//! The answer is checked against the query run directly over all the data. The policy lets
//! search containers reach only the correlate service; the run shows that raw data sent
//! anywhere else (another site, another marketplace) is dropped, and why.

pub mod data;
pub mod programs;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::net::{Ipv6Addr, SocketAddrV6, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use agent::api::{ExplainReply, MappingRow, Request};
use agent::reconcile::LocalEndpoint;
use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use dataplane::{Counters, FlowEvent, FlowVerdict, HostMaps};
use ila::TenantNetwork;
use lab::plan::{HostPlan, Plan, RoutingMode};
use lab::{agents, LabSpec};
use serde::Serialize;

use data::{Hit, Query, DATA_SITES, MAX_RECORDS};
use programs::{CorrelateReport, Listening, SearchReport};

/// The correlate service's port (the demo's policy port).
pub const CORRELATE_PORT: u16 = 5201;
/// Most marketplaces side by side (each adds four containers).
pub const MAX_TENANTS: usize = 4;
/// The policy of one marketplace; `${TENANT}` and `${VNID}` are filled in per tenant.
const POLICY_TEMPLATE: &str = include_str!("../../../../deploy/marketplace/policy.yaml");
/// How long a raw-data send waits for its connection before it counts as dropped (the lab's
/// round trip is well under a millisecond; a SYN retransmit falls inside).
const EXFIL_CONNECT_TIMEOUT: Duration = Duration::from_millis(1500);
/// Targets of the exfiltration attempts.
const TARGET_SITE: &str = "another data site";
const TARGET_OTHER_MARKET: &str = "another marketplace's correlate";
const TARGET_ISOLATION: &str = "other market, sender without policy";
/// How long a container program may take at most.
const PROGRAM_TIMEOUT: Duration = Duration::from_secs(60);
/// How long new endpoints may take to be mapped on every host.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(20);

/// `ilanet marketplace` arguments.
#[derive(Args)]
pub struct MarketArgs {
    /// Marketplaces (tenants) side by side, each with three data sites and a correlate site.
    #[arg(long, default_value_t = 2)]
    tenants: usize,
    /// Records in each data site's data set.
    #[arg(long, default_value_t = 1000)]
    records: usize,
    /// Seed of the generated data sets (the same seed gives the same data).
    #[arg(long, default_value_t = 2017)]
    seed: u64,
    /// The query the search containers run: `field op value` joined by `and`; fields id,
    /// category, year, score.
    #[arg(long, default_value = data::DEFAULT_QUERY)]
    query: String,
    /// Lab name.
    #[arg(long, default_value = "market")]
    name: String,
    /// How locators are routed: static, bird, frr, gobgp or mesh.
    #[arg(long, default_value = "static")]
    routing: RoutingMode,
    /// Leave the lab (and the data files) up afterwards.
    #[arg(long)]
    keep: bool,
    /// Print the outcome as one JSON document on stdout (progress goes to stderr).
    #[arg(long)]
    json: bool,
    /// Afterwards, serve the dashboard on the marketplace's lab until Ctrl-C (loopback, with a
    /// token; see `ilanet ui`).
    #[arg(long)]
    ui: bool,
}

/// Progress and tables: on stdout, or on stderr when stdout carries the JSON.
#[derive(Clone, Copy)]
struct Out {
    json: bool,
}

impl Out {
    fn say(&self, s: impl AsRef<str>) {
        if self.json {
            eprintln!("{}", s.as_ref());
        } else {
            println!("{}", s.as_ref());
        }
    }
}

fn check_stop() -> Result<()> {
    if crate::stop::requested() {
        bail!("interrupted; tearing down");
    }
    Ok(())
}

/// Checks the arguments before anything is built.
fn validate(args: &MarketArgs) -> Result<Query> {
    if !(1..=MAX_TENANTS).contains(&args.tenants) {
        bail!("--tenants must be 1 to {MAX_TENANTS}, got {}", args.tenants);
    }
    if !(1..=MAX_RECORDS).contains(&args.records) {
        bail!(
            "--records must be 1 to {MAX_RECORDS} (records per data site), got {}",
            args.records
        );
    }
    lab::plan::validate_lab_name(&args.name).context("--name")?;
    args.query
        .parse()
        .with_context(|| format!("--query '{}'", args.query))
}

/// The marketplaces' tenant networks: `market-a`, `market-b`, … on VNID 1, 2, … and SIR
/// prefixes `fd00:dead:beef:<k-1>::/64`.
fn tenants(n: usize) -> Vec<TenantNetwork> {
    let mut ts = lab::plan::numbered_tenants(n as u16);
    for (t, letter) in ts.iter_mut().zip('a'..) {
        t.name = format!("market-{letter}");
    }
    ts
}

/// A marketplace's policy file, rendered from [`POLICY_TEMPLATE`].
fn policy_for(t: &TenantNetwork) -> String {
    POLICY_TEMPLATE
        .replace("${TENANT}", &t.name)
        .replace("${VNID}", &t.vnid.get().to_string())
}

/// Role of a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Search,
    Correlate,
}

/// One container of a marketplace, as its agent created it.
#[derive(Debug, Clone)]
struct Container {
    host: String,
    display: String,
    ep: LocalEndpoint,
}

impl Container {
    fn name(&self) -> &str {
        &self.ep.name
    }
    fn addr(&self) -> Ipv6Addr {
        self.ep.sir_addr
    }
}

/// One marketplace: its tenant, three search containers (one per data site, with the site's
/// data file) and a correlate container.
struct Market {
    tenant: TenantNetwork,
    searches: Vec<(Container, PathBuf)>,
    correlate: Container,
}

/// Tears the lab down when dropped, unless told to keep it.
struct LabGuard {
    name: String,
    keep: bool,
    out: Out,
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        if self.keep {
            let n = &self.name;
            self.out.say(format!(
                "\nThe lab is still up (data files under {}): `ilanet lab status --name {n}`, `ilanet trace --lab {n}`, `ilanet lab down --name {n}`.",
                agents::run_dir(n).join("containers").display()
            ));
            return;
        }
        self.out.say(format!("Removing the lab '{}' …", self.name));
        if let Err(e) = lab::down(&self.name) {
            eprintln!("error: removing the marketplace lab: {e}");
        }
    }
}

/// `ilanet marketplace`: builds the lab, runs the marketplaces, checks them, tears down (unless
/// `--keep`); fails when any check fails.
pub fn run(args: &MarketArgs) -> Result<ExitCode> {
    let query = validate(args)?;
    let out = Out { json: args.json };
    crate::stop::install();
    let mut spec = LabSpec::sc17(&args.name, 0);
    spec.tenants = tenants(args.tenants);
    spec.app_roles = false;
    spec.routing = args.routing;
    if spec.sites.len() != DATA_SITES + 1 {
        bail!("the marketplace needs {} sites", DATA_SITES + 1);
    }
    out.say(format!(
        "Building lab '{}': data sites {}, correlate site {}; {} marketplace(s); {} routing …",
        args.name,
        spec.sites[..DATA_SITES]
            .iter()
            .map(|s| s.display.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        spec.sites[DATA_SITES].display,
        args.tenants,
        args.routing
    ));
    let plan = lab::up(&spec).context("building the marketplace lab")?;
    let _guard = LabGuard {
        name: args.name.clone(),
        keep: args.keep,
        out,
    };
    let report = run_on(&plan, args, &query, out)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    if args.ui {
        dashboard(&plan, &report, out)?;
    }
    Ok(if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// How long the correlate services answer while the dashboard runs.
const DASHBOARD_SERVICE_TIME: Duration = Duration::from_secs(600);

/// Serves the dashboard on the marketplace's lab until Ctrl-C, with the correlate services up
/// again and two commands to type into a search container's terminal: a search (delivered)
/// and a raw-data send (dropped).
fn dashboard(plan: &Plan, report: &RunReport, out: Out) -> Result<()> {
    // Killed when this returns.
    let mut services = Vec::new();
    for m in &report.marketplaces {
        let c = &m.correlate;
        let eps: Vec<LocalEndpoint> =
            serde_json::from_value(agents::call(&plan.name, &c.site, &Request::EndpointList)?)?;
        let ep = eps
            .iter()
            .find(|e| e.name == c.name)
            .ok_or_else(|| anyhow!("container {} is gone from {}", c.name, c.site))?;
        let listen = SocketAddrV6::new(c.address, CORRELATE_PORT, 0, 0).to_string();
        let mut p = Program::spawn(
            &ep.netns,
            &[
                "marketplace-correlate",
                "--listen",
                &listen,
                "--expect",
                &programs::MAX_EXPECT.to_string(),
                "--timeout-ms",
                &DASHBOARD_SERVICE_TIME.as_millis().to_string(),
            ],
            format!("correlate of {} (dashboard)", m.tenant),
        )?;
        p.next_line(Duration::from_secs(10))?;
        services.push(p);
    }
    let handle = crate::ui::serve(
        crate::ui::UiSource::Lab(plan.name.clone()),
        crate::ui::UiOptions {
            title: Some(format!("data marketplace (lab {})", plan.name)),
            ..Default::default()
        },
    )
    .context("starting the dashboard")?;
    out.say(format!("\nDashboard: {}", handle.url()));
    out.say("(loopback only; the token is the key: its terminals are root shells inside the containers)");
    let exe = std::env::current_exe().context("finding the ilanet executable")?;
    // The first marketplace's first data site, and its attempt on the other marketplace.
    let market = report.marketplaces.first();
    let site = market.and_then(|m| m.sites.first());
    let replay = report
        .exfiltration
        .iter()
        .find(|a| a.target == TARGET_OTHER_MARKET)
        .or(report.exfiltration.first());
    if let (Some(m), Some(site), Some(a)) = (market, site, replay) {
        let file = site.data_file.display();
        out.say(format!(
            "Open a terminal in {} ({}); the correlate services take results for {} min. The search (delivered; the steps show SIR → ILA → SIR):\n  {} marketplace-search --data {file} --to [{}]:{CORRELATE_PORT} --site {}",
            site.container,
            site.display,
            DASHBOARD_SERVICE_TIME.as_secs() / 60,
            exe.display(),
            m.correlate.address,
            site.site
        ));
        out.say(format!(
            "Its raw data to {} instead (dropped; the steps show where and why):\n  {} marketplace-search --data {file} --raw --to [{}]:{CORRELATE_PORT} --site {} --connect-timeout-ms 2000",
            a.to,
            exe.display(),
            a.to_address,
            site.site
        ));
    }
    out.say("Ctrl-C stops the dashboard.");
    let result = handle.wait();
    drop(services);
    result
}

/// What the run found (the `--json` output).
#[derive(Debug, Serialize)]
struct RunReport {
    lab: String,
    seed: u64,
    records_per_site: usize,
    query: String,
    kept: bool,
    marketplaces: Vec<MarketOut>,
    exfiltration: Vec<AttemptOut>,
    /// Per host: drops the data path counted while the exfiltration attempts ran.
    drop_counters: BTreeMap<String, DropCounters>,
    failures: Vec<String>,
    passed: bool,
}

#[derive(Debug, Serialize)]
struct MarketOut {
    tenant: String,
    vnid: u32,
    sir_prefix: String,
    correlate: EndpointOut,
    sites: Vec<SiteOut>,
    /// Results the correlate received, duplicates included.
    received: usize,
    duplicates_removed: usize,
    conflicts: Vec<String>,
    /// Allow verdicts of the data path for search → correlate tcp/5201: one at each search
    /// host's egress and one at the correlate host's ingress per search.
    allow_verdicts: usize,
    answer: Vec<Hit>,
    direct: DirectOut,
    answer_matches: bool,
}

#[derive(Debug, Serialize)]
struct EndpointOut {
    name: String,
    site: String,
    address: Ipv6Addr,
}

#[derive(Debug, Serialize)]
struct SiteOut {
    site: String,
    display: String,
    container: String,
    address: Ipv6Addr,
    data_file: PathBuf,
    records: usize,
    matched: usize,
    sent: usize,
    delivered: bool,
}

/// The reference computation in this process, straight over the data files.
#[derive(Debug, Serialize)]
struct DirectOut {
    records: usize,
    distinct_records: usize,
    unique: usize,
}

#[derive(Debug, Serialize)]
struct AttemptOut {
    tenant: String,
    from: String,
    from_site: String,
    from_address: Ipv6Addr,
    to: String,
    to_tenant: String,
    to_address: Ipv6Addr,
    port: u16,
    /// [`TARGET_SITE`], [`TARGET_OTHER_MARKET`] or [`TARGET_ISOLATION`].
    target: String,
    delivered: bool,
    failure: Option<String>,
    /// Bytes or connections that reached the target (must be 0).
    reached_target: usize,
    drop_events: Vec<DropOut>,
    explain: Option<ExplainOut>,
    dropped: bool,
}

#[derive(Debug, Serialize)]
struct DropOut {
    host: String,
    program: String,
    reason: String,
    direction: Option<String>,
}

#[derive(Debug, Serialize)]
struct ExplainOut {
    verdict: String,
    reason: String,
}

#[derive(Debug, Default, Serialize)]
struct DropCounters {
    policy: u64,
    tenant: u64,
}

fn run_on(plan: &Plan, args: &MarketArgs, query: &Query, out: Out) -> Result<RunReport> {
    check_stop()?;
    let data_hosts: Vec<&HostPlan> = plan.hosts[..DATA_SITES].iter().collect();
    let corr_host = &plan.hosts[DATA_SITES];

    // Policy first: every container is under it from the moment it exists.
    out.say("\nPolicy, per marketplace (deploy/marketplace/policy.yaml): search → correlate tcp/5201 only; correlate accepts search only.");
    let mut names = Vec::new();
    for t in &plan.tenants {
        let text = policy_for(t);
        let file = format!("{}-policy.yaml", t.name);
        let records = agent::policy_sync::records_for_file(&file, text.as_bytes(), t.vnid)?;
        names.extend(records.iter().map(|r| r.name.clone()));
        agents::call(
            &plan.name,
            &plan.hosts[0].name,
            &Request::PolicyApply { records },
        )
        .with_context(|| format!("applying the policy of {}", t.name))?;
        out.say(format!(
            "  {:<9} VNID {}  SIR {}  policies {}-search-egress, {}-correlate-ingress",
            t.name,
            t.vnid.get(),
            t.sir,
            t.name,
            t.name
        ));
    }
    let hosts: Vec<&str> = plan.hosts.iter().map(|h| h.name.as_str()).collect();
    agents::wait_policies(&plan.name, &hosts, &names, true, Duration::from_secs(10))?;
    check_stop()?;

    // Containers, and each data site's data set in the search container's own directory.
    out.say(format!(
        "\nShipping containers and writing data sets ({} records per site, seed {}):",
        args.records, args.seed
    ));
    let mut markets = Vec::new();
    for (k, t) in plan.tenants.iter().enumerate() {
        let letter = t.name.trim_start_matches("market-");
        let sets = data::generate(args.seed, t.vnid.get(), args.records);
        let mut searches = Vec::new();
        for (h, set) in data_hosts.iter().zip(&sets) {
            let c = add_container(
                plan,
                h,
                &format!("{letter}-search-{}", h.name),
                t,
                Role::Search,
            )?;
            let dir = agents::run_dir(&plan.name)
                .join("containers")
                .join(c.name());
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let file = dir.join("data.csv");
            std::fs::write(&file, data::to_csv(set))
                .with_context(|| format!("writing {}", file.display()))?;
            out.say(format!(
                "  {:<9} {:<15} {:<16} {:<31} {} records in {}",
                t.name,
                h.display,
                c.name(),
                c.addr().to_string(),
                set.len(),
                file.display()
            ));
            searches.push((c, file));
        }
        let correlate = add_container(
            plan,
            corr_host,
            &format!("{letter}-correlate"),
            t,
            Role::Correlate,
        )?;
        out.say(format!(
            "  {:<9} {:<15} {:<16} {:<31} correlate, tcp/{CORRELATE_PORT}",
            t.name,
            corr_host.display,
            correlate.name(),
            correlate.addr().to_string()
        ));
        markets.push(Market {
            tenant: plan.tenants[k].clone(),
            searches,
            correlate,
        });
    }
    let all: Vec<Ipv6Addr> = markets
        .iter()
        .flat_map(|m| {
            m.searches
                .iter()
                .map(|(c, _)| c.addr())
                .chain([m.correlate.addr()])
        })
        .collect();
    wait_mapped(plan, &all)?;
    check_stop()?;

    // The correlate services.
    let mut correlates = Vec::new();
    for m in &markets {
        let listen = SocketAddrV6::new(m.correlate.addr(), CORRELATE_PORT, 0, 0).to_string();
        let mut p = Program::spawn(
            &m.correlate.ep.netns,
            &[
                "marketplace-correlate",
                "--listen",
                &listen,
                "--expect",
                &DATA_SITES.to_string(),
                "--timeout-ms",
                &PROGRAM_TIMEOUT.as_millis().to_string(),
            ],
            format!("correlate of {}", m.tenant.name),
        )?;
        let line = p.next_line(Duration::from_secs(10))?;
        let l: Listening = serde_json::from_str(&line)
            .with_context(|| format!("{}: unexpected first line {line:?}", p.what))?;
        out.say(format!(
            "  {} listens on {}",
            m.correlate.name(),
            l.listening
        ));
        correlates.push(p);
    }

    let mut maps = Vec::new();
    for h in &plan.hosts {
        let m = HostMaps::open_pinned(&lab::state::host_pin_dir(&plan.name, &h.name))
            .with_context(|| format!("opening the maps of host '{}'", h.name))?;
        maps.push((h.name.clone(), m));
    }

    check_stop()?;
    let (exfiltration, drop_counters) = exfiltrate(plan, &markets, &mut maps, out)?;
    check_stop()?;

    // The real job: every search container queries its site's data and sends the hits.
    out.say(format!("\nSearching: '{query}' at every data site …"));
    let (searched, events) = traced(&mut maps, |_| run_searches(&markets, query))?;

    let mut failures = Vec::new();
    let mut outs = Vec::new();
    for ((m, reports), mut corr) in markets.iter().zip(searched).zip(correlates) {
        // With a result set missing, the correlate would wait for it until its timeout.
        let wait = if reports.iter().all(|r| r.delivered) {
            PROGRAM_TIMEOUT
        } else {
            Duration::from_secs(1)
        };
        let cr = match corr.finish(wait) {
            Ok((status, last)) => serde_json::from_str(&last).with_context(|| {
                format!("{}: unreadable answer ({status}): {last:?}", corr.what)
            })?,
            Err(e) => {
                failures.push(format!("{}: {e:#}", corr.what));
                CorrelateReport {
                    listen: String::new(),
                    connections: Vec::new(),
                    complete: false,
                    merged: data::Merged::default(),
                }
            }
        };
        let mo = check_market(m, &reports, &cr, query, &events, &mut failures)?;
        outs.push(mo);
    }

    print_summary(&outs, &exfiltration, &drop_counters, out);
    for a in &exfiltration {
        if !a.dropped {
            failures.push(format!(
                "{} → {} ({}): raw data was not dropped as it must be",
                a.from, a.to, a.target
            ));
        }
    }
    let passed = failures.is_empty();
    if passed {
        out.say(format!(
            "\nAll checks passed: {} marketplace(s) answered exactly the direct computation; {} exfiltration attempt(s) dropped by the data path.",
            outs.len(),
            exfiltration.len()
        ));
    } else {
        out.say(format!("\n{} checks FAILED:", failures.len()));
        for f in &failures {
            out.say(format!("  {f}"));
        }
    }
    Ok(RunReport {
        lab: plan.name.clone(),
        seed: args.seed,
        records_per_site: args.records,
        query: query.to_string(),
        kept: args.keep,
        marketplaces: outs,
        exfiltration,
        drop_counters,
        failures,
        passed,
    })
}

/// Creates a container through its host's agent.
fn add_container(
    plan: &Plan,
    host: &HostPlan,
    name: &str,
    t: &TenantNetwork,
    role: Role,
) -> Result<Container> {
    let app = match role {
        Role::Search => "search",
        Role::Correlate => "correlate",
    };
    let v = agents::call(
        &plan.name,
        &host.name,
        &Request::EndpointAdd {
            name: name.to_string(),
            tenant: Some(t.name.clone()),
            identifier: None,
            replace: false,
            labels: BTreeMap::from([
                ("app".to_string(), app.to_string()),
                ("site".to_string(), host.name.clone()),
            ]),
        },
    )
    .with_context(|| format!("creating container {name} at {}", host.name))?;
    let ep: LocalEndpoint = serde_json::from_value(v)?;
    Ok(Container {
        host: host.name.clone(),
        display: host.display.clone(),
        ep,
    })
}

/// Waits until every host's maps hold the mapping of every listed address.
fn wait_mapped(plan: &Plan, addrs: &[Ipv6Addr]) -> Result<()> {
    let deadline = Instant::now() + CONVERGE_TIMEOUT;
    for h in &plan.hosts {
        loop {
            check_stop()?;
            let rows: Vec<MappingRow> =
                serde_json::from_value(agents::call(&plan.name, &h.name, &Request::Mappings)?)?;
            let missing = addrs
                .iter()
                .filter(|a| !rows.iter().any(|r| r.sir_addr == **a && r.installed))
                .count();
            if missing == 0 {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "host '{}' still misses {missing} container mappings after {CONVERGE_TIMEOUT:?}",
                    h.name
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(())
}

/// A container program: this binary, started inside a container's network namespace, its
/// stdout read line by line. Killed when dropped.
struct Program {
    what: String,
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Program {
    fn spawn(netns: &str, args: &[&str], what: String) -> Result<Self> {
        let exe = std::env::current_exe().context("finding the ilanet executable")?;
        let mut cmd = Command::new(exe);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = lab::netns::spawn_in(netns, &mut cmd)
            .with_context(|| format!("starting the {what} in {netns}"))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("{what}: no stdout"))?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Program { what, child, lines })
    }

    /// The next line, waiting at most `timeout` (and not past a stop request).
    fn next_line(&mut self, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            check_stop()?;
            match self.lines.recv_timeout(Duration::from_millis(50)) {
                Ok(l) => return Ok(l),
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    bail!("{}: no output within {timeout:?}", self.what)
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait()?;
                    bail!("{} ended ({status}) without the expected output", self.what)
                }
            }
        }
    }

    /// Waits for the program to end; its exit status and last line of output.
    fn finish(&mut self, timeout: Duration) -> Result<(ExitStatus, String)> {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        loop {
            check_stop()?;
            match self.lines.recv_timeout(Duration::from_millis(50)) {
                Ok(l) => last = l,
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    bail!("{} did not finish within {timeout:?}", self.what)
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        Ok((self.child.wait()?, last))
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        // Only our own child, by its handle; harmless if it has exited.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP listener inside a container that counts whatever reaches it: the stand-in for a
/// place raw data must never get to.
struct Sink {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<usize>>,
}

impl Sink {
    fn start(netns: &str, addr: Ipv6Addr, port: u16) -> Result<Self> {
        let listener = {
            let _g = lab::netns::NetnsGuard::enter(netns)?;
            TcpListener::bind(SocketAddrV6::new(addr, port, 0, 0))
                .with_context(|| format!("listening on [{addr}]:{port} in {netns}"))?
        };
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut reached = 0usize;
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut c, _)) => {
                        reached += 1;
                        let _ = c.set_nonblocking(false);
                        let _ = c.set_read_timeout(Some(Duration::from_secs(1)));
                        let mut buf = [0u8; 4096];
                        while let Ok(n) = c.read(&mut buf) {
                            if n == 0 {
                                break;
                            }
                            reached += n;
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
            reached
        });
        Ok(Sink {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the sink; connections plus bytes that reached it.
    fn finish(mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .map(|t| t.join().unwrap_or(usize::MAX))
            .unwrap_or(0)
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn reason_name<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

fn drop_counts(maps: &[(String, HostMaps)]) -> Result<Vec<Counters>> {
    maps.iter()
        .map(|(h, m)| {
            m.counters()
                .with_context(|| format!("reading the counters of host '{h}'"))
        })
        .collect()
}

/// One exfiltration attempt to make.
struct Attempt<'a> {
    market: &'a Market,
    from: &'a Container,
    /// The sender's data file: it sends it raw. `None`: a bare connection attempt.
    from_data: Option<&'a Path>,
    to: &'a Container,
    to_tenant: &'a TenantNetwork,
    target: &'static str,
}

/// Runs `f` with the data path tracing on every host, and turns tracing off again whatever
/// `f` returns; `f`'s value and the flow events of the hosts meanwhile.
fn traced<T>(
    maps: &mut [(String, HostMaps)],
    f: impl FnOnce(&[(String, HostMaps)]) -> Result<T>,
) -> Result<(T, Vec<(String, FlowEvent)>)> {
    let mut on = Ok(());
    for (_, m) in maps.iter_mut() {
        // Events from before belong to something else.
        on = on
            .and(m.drain_flow_events().map(drop))
            .and(m.set_trace(true));
    }
    let result = on.map_err(anyhow::Error::from).and_then(|()| f(maps));
    let mut events = Vec::new();
    let mut off = Ok(());
    for (host, m) in maps.iter_mut() {
        off = off.and(m.set_trace(false));
        match m.drain_flow_events() {
            Ok(evs) => events.extend(evs.into_iter().map(|e| (host.clone(), e))),
            Err(e) => off = off.and(Err(e)),
        }
    }
    let value = result?;
    off?;
    Ok((value, events))
}

/// Each marketplace's first search container sends its raw data set to another data site of
/// its own marketplace, and to the next marketplace's correlate service, while the data path
/// traces. Both must be dropped at the sending host.
fn exfiltrate(
    plan: &Plan,
    markets: &[Market],
    maps: &mut [(String, HostMaps)],
    out: Out,
) -> Result<(Vec<AttemptOut>, BTreeMap<String, DropCounters>)> {
    let mut attempts = Vec::new();
    for (k, m) in markets.iter().enumerate() {
        let (from, from_data) = &m.searches[0];
        attempts.push(Attempt {
            market: m,
            from,
            from_data: Some(from_data),
            to: &m.searches[1].0,
            to_tenant: &m.tenant,
            target: TARGET_SITE,
        });
        if markets.len() > 1 {
            let other = &markets[(k + 1) % markets.len()];
            attempts.push(Attempt {
                market: m,
                from,
                from_data: Some(from_data),
                to: &other.correlate,
                to_tenant: &other.tenant,
                target: TARGET_OTHER_MARKET,
            });
            // No policy limits the correlate's egress: only tenant isolation stands between
            // the two marketplaces here.
            attempts.push(Attempt {
                market: m,
                from: &m.correlate,
                from_data: None,
                to: &other.correlate,
                to_tenant: &other.tenant,
                target: TARGET_ISOLATION,
            });
        }
    }
    out.say(format!(
        "\nExfiltration: {} search container(s) try to send their raw data set (subjects included) elsewhere{} …",
        markets.len(),
        if markets.len() > 1 {
            "; each correlate tries to reach the other marketplace"
        } else {
            ""
        }
    ));
    // Something listens at every target: a drop is then the network's doing, not a closed port.
    let sinks: Vec<Option<Sink>> = attempts
        .iter()
        .map(|a| {
            if a.target == TARGET_SITE {
                Sink::start(&a.to.ep.netns, a.to.addr(), CORRELATE_PORT).map(Some)
            } else {
                Ok(None) // the other marketplace's correlate service is listening
            }
        })
        .collect::<Result<_>>()?;
    let ((reports, before, after), events) = traced(maps, |maps| {
        let before = drop_counts(maps)?;
        let reports = raw_sends(&attempts)?;
        Ok((reports, before, drop_counts(maps)?))
    })?;
    let mut counters = BTreeMap::new();
    for (((host, _), b), a) in maps.iter().zip(&before).zip(&after) {
        counters.insert(
            host.clone(),
            DropCounters {
                policy: a.drop_policy.saturating_sub(b.drop_policy),
                tenant: a.drop_tenant.saturating_sub(b.drop_tenant),
            },
        );
    }
    let mut outs = Vec::new();
    for ((a, r), sink) in attempts.iter().zip(reports).zip(sinks) {
        let reached = sink.map(Sink::finish).unwrap_or(0);
        let drop_events: Vec<DropOut> = events
            .iter()
            .filter_map(|(host, e)| match e {
                FlowEvent::Verdict(v)
                    if v.verdict == FlowVerdict::Drop
                        && v.src == a.from.addr()
                        && v.dst == a.to.addr()
                        && v.dport == CORRELATE_PORT =>
                {
                    Some(DropOut {
                        host: host.clone(),
                        program: v.program.as_str().to_string(),
                        reason: reason_name(&v.reason),
                        direction: v.direction.map(|d| reason_name(&d)),
                    })
                }
                _ => None,
            })
            .collect();
        let explain = agents::call(
            &plan.name,
            &a.from.host,
            &Request::PolicyExplain {
                from: a.from.name().to_string(),
                to: a.to.name().to_string(),
                port: CORRELATE_PORT,
                proto: "tcp".into(),
            },
        )
        .ok()
        .and_then(|v| serde_json::from_value::<ExplainReply>(v).ok())
        .map(|e| ExplainOut {
            verdict: e.verdict,
            reason: e.reason,
        });
        let src_counted = counters
            .get(&a.from.host)
            .is_some_and(|c| c.policy + c.tenant > 0);
        // Dropped: nothing answered (not even a reset), nothing arrived, and the data path
        // reported the drop (its events; its counters if another reader took the events).
        let dropped = !r.delivered
            && r.failure.as_deref() == Some("timed-out")
            && reached == 0
            && (!drop_events.is_empty() || src_counted);
        outs.push(AttemptOut {
            tenant: a.market.tenant.name.clone(),
            from: a.from.name().to_string(),
            from_site: a.from.display.clone(),
            from_address: a.from.addr(),
            to: a.to.name().to_string(),
            to_tenant: a.to_tenant.name.clone(),
            to_address: a.to.addr(),
            port: CORRELATE_PORT,
            target: a.target.to_string(),
            delivered: r.delivered,
            failure: r.failure.clone(),
            reached_target: reached,
            drop_events,
            explain,
            dropped,
        });
    }
    Ok((outs, counters))
}

/// Runs every raw-data send at once; their reports, in order.
fn raw_sends(attempts: &[Attempt]) -> Result<Vec<SearchReport>> {
    let timeout_ms = EXFIL_CONNECT_TIMEOUT.as_millis().to_string();
    enum Running {
        Program(Program),
        Probe(std::thread::JoinHandle<SearchReport>),
    }
    let mut running = Vec::new();
    for a in attempts {
        let to = SocketAddrV6::new(a.to.addr(), CORRELATE_PORT, 0, 0);
        running.push(match a.from_data {
            Some(file) => Running::Program(Program::spawn(
                &a.from.ep.netns,
                &[
                    "marketplace-search",
                    "--data",
                    &file.display().to_string(),
                    "--to",
                    &to.to_string(),
                    "--site",
                    &a.from.host,
                    "--raw",
                    "--connect-timeout-ms",
                    &timeout_ms,
                ],
                format!("raw send {} → {}", a.from.name(), a.to.name()),
            )?),
            None => {
                let netns = a.from.ep.netns.clone();
                let site = a.from.host.clone();
                Running::Probe(std::thread::spawn(move || connect_probe(&netns, &site, to)))
            }
        });
    }
    let mut reports = Vec::new();
    for r in running {
        reports.push(match r {
            Running::Program(mut p) => {
                let (_, last) = p.finish(PROGRAM_TIMEOUT)?;
                serde_json::from_str(&last)
                    .with_context(|| format!("{}: unreadable report {last:?}", p.what))?
            }
            Running::Probe(t) => t
                .join()
                .map_err(|_| anyhow!("a connection probe panicked"))?,
        });
    }
    Ok(reports)
}

/// A bare TCP connection attempt from inside a container, reported like a search.
fn connect_probe(netns: &str, site: &str, to: SocketAddrV6) -> SearchReport {
    let start = Instant::now();
    let mut r = SearchReport {
        site: site.to_string(),
        scanned: 0,
        matched: 0,
        kind: "connect".into(),
        sent: 0,
        delivered: false,
        failure: None,
        error: None,
        elapsed_ms: 0,
    };
    let conn = lab::netns::NetnsGuard::enter(netns)
        .map_err(|e| ("error", e.to_string()))
        .and_then(|_g| {
            std::net::TcpStream::connect_timeout(&to.into(), EXFIL_CONNECT_TIMEOUT).map_err(|e| {
                let class = match e.kind() {
                    std::io::ErrorKind::TimedOut => "timed-out",
                    std::io::ErrorKind::ConnectionRefused => "refused",
                    _ => "error",
                };
                (class, format!("connecting to {to}: {e}"))
            })
        });
    match conn {
        Ok(_) => r.delivered = true,
        Err((class, e)) => {
            r.failure = Some(class.into());
            r.error = Some(e);
        }
    }
    r.elapsed_ms = start.elapsed().as_millis() as u64;
    r
}

/// Runs the three search containers of every marketplace at once; their reports, per market.
fn run_searches(markets: &[Market], query: &Query) -> Result<Vec<Vec<SearchReport>>> {
    let q = query.to_string();
    let mut programs = Vec::new();
    for m in markets {
        let to = SocketAddrV6::new(m.correlate.addr(), CORRELATE_PORT, 0, 0).to_string();
        let mut ps = Vec::new();
        for (c, file) in &m.searches {
            ps.push(Program::spawn(
                &c.ep.netns,
                &[
                    "marketplace-search",
                    "--data",
                    &file.display().to_string(),
                    "--query",
                    &q,
                    "--to",
                    &to,
                    "--site",
                    &c.host,
                ],
                format!("search {}", c.name()),
            )?);
        }
        programs.push(ps);
    }
    let mut out = Vec::new();
    for ps in &mut programs {
        let mut reports = Vec::new();
        for p in ps {
            let (status, last) = p.finish(PROGRAM_TIMEOUT)?;
            let r: SearchReport = serde_json::from_str(&last)
                .with_context(|| format!("{}: unreadable report ({status}) {last:?}", p.what))?;
            reports.push(r);
        }
        out.push(reports);
    }
    Ok(out)
}

/// Checks one marketplace's answer against the direct computation over its data files.
fn check_market(
    m: &Market,
    reports: &[SearchReport],
    cr: &CorrelateReport,
    query: &Query,
    events: &[(String, FlowEvent)],
    failures: &mut Vec<String>,
) -> Result<MarketOut> {
    let t = &m.tenant.name;
    // The reference: the data files as written, read back here, queried directly.
    let mut sites = Vec::new();
    for (_, file) in &m.searches {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        sites.push(data::parse_csv(&text).with_context(|| file.display().to_string())?);
    }
    let records: usize = sites.iter().map(Vec::len).sum();
    let (distinct, direct) = data::direct_answer(&sites, query);
    let answer_matches = cr.complete && cr.merged.answer == direct;
    if !cr.complete {
        failures.push(format!(
            "{t}: the correlate did not receive every site's results"
        ));
    }
    if !answer_matches {
        failures.push(format!(
            "{t}: the answer ({} records) differs from the direct computation ({} records)",
            cr.merged.answer.len(),
            direct.len()
        ));
    }
    if !cr.merged.conflicts.is_empty() {
        failures.push(format!(
            "{t}: conflicting duplicates {:?}",
            cr.merged.conflicts
        ));
    }
    let ours: Vec<String> = m
        .searches
        .iter()
        .map(|(c, _)| c.addr().to_string())
        .collect();
    for c in &cr.connections {
        if !ours.contains(&c.peer) || !c.accepted {
            failures.push(format!(
                "{t}: the correlate got a connection from {} ({} {}): {}",
                c.peer,
                c.kind,
                c.site,
                c.error.as_deref().unwrap_or("accepted")
            ));
        }
    }
    let mut site_outs = Vec::new();
    for ((c, file), r) in m.searches.iter().zip(reports) {
        if !r.delivered {
            failures.push(format!(
                "{t}: search {} could not deliver: {}",
                c.name(),
                r.error.as_deref().unwrap_or("?")
            ));
        }
        site_outs.push(SiteOut {
            site: c.host.clone(),
            display: c.display.clone(),
            container: c.name().to_string(),
            address: c.addr(),
            data_file: file.clone(),
            records: r.scanned,
            matched: r.matched,
            sent: r.sent,
            delivered: r.delivered,
        });
    }
    let allow_verdicts = events
        .iter()
        .filter(|(_, e)| {
            matches!(e, FlowEvent::Verdict(v)
                if v.verdict == FlowVerdict::Allow
                    && v.dst == m.correlate.addr()
                    && v.dport == CORRELATE_PORT
                    && ours.contains(&v.src.to_string()))
        })
        .count();
    Ok(MarketOut {
        tenant: t.clone(),
        vnid: m.tenant.vnid.get(),
        sir_prefix: m.tenant.sir.to_string(),
        correlate: EndpointOut {
            name: m.correlate.name().to_string(),
            site: m.correlate.host.clone(),
            address: m.correlate.addr(),
        },
        sites: site_outs,
        received: cr.merged.received,
        duplicates_removed: cr.merged.duplicates,
        conflicts: cr.merged.conflicts.clone(),
        allow_verdicts,
        answer: cr.merged.answer.clone(),
        direct: DirectOut {
            records,
            distinct_records: distinct,
            unique: direct.len(),
        },
        answer_matches,
    })
}

fn print_summary(
    markets: &[MarketOut],
    attempts: &[AttemptOut],
    counters: &BTreeMap<String, DropCounters>,
    out: Out,
) {
    out.say("\nExfiltration attempts (raw data sets, subjects included; and a bare connection from one marketplace's correlate to the other's): each must be dropped.");
    out.say(format!(
        "  {:<18} {:<16} {:<36} {:<9} {:<8} evidence",
        "from", "to", "target", "port", "result"
    ));
    for a in attempts {
        let evidence = match a.drop_events.first() {
            Some(d) => format!(
                "{} drop event(s) at {} {}: {}{}",
                a.drop_events.len(),
                d.host,
                d.program,
                d.reason,
                d.direction
                    .as_deref()
                    .map(|x| format!(" ({x})"))
                    .unwrap_or_default()
            ),
            None => "no drop event seen (counters only)".to_string(),
        };
        out.say(format!(
            "  {:<18} {:<16} {:<36} tcp/{:<5} {:<8} {}",
            a.from,
            a.to,
            a.target,
            a.port,
            if a.dropped {
                "DROPPED"
            } else if a.delivered {
                "LEAKED"
            } else {
                "FAILED?"
            },
            evidence
        ));
        if let Some(e) = &a.explain {
            out.say(format!(
                "  {:<18} policy explain: {} — {}",
                "",
                e.verdict.to_uppercase(),
                e.reason
            ));
        }
    }
    let counted: Vec<String> = counters
        .iter()
        .filter(|(_, c)| c.policy + c.tenant > 0)
        .map(|(h, c)| format!("{h}: drop_policy +{} drop_tenant +{}", c.policy, c.tenant))
        .collect();
    out.say(format!(
        "  data path counters meanwhile: {}",
        if counted.is_empty() {
            "no drops".to_string()
        } else {
            counted.join(", ")
        }
    ));

    out.say("\nResults per data site:");
    out.say(format!(
        "  {:<9} {:<15} {:<18} {:>8} {:>8} {:>6}  delivered",
        "market", "site", "search", "records", "matched", "sent"
    ));
    for m in markets {
        for s in &m.sites {
            out.say(format!(
                "  {:<9} {:<15} {:<18} {:>8} {:>8} {:>6}  {}",
                m.tenant,
                s.display,
                s.container,
                s.records,
                s.matched,
                s.sent,
                if s.delivered { "yes" } else { "NO" }
            ));
        }
    }
    out.say("\nAnswers (correlate: merged, duplicates removed; allow: the data path's allow verdicts for search → correlate; direct: the query run here over all data):");
    out.say(format!(
        "  {:<9} {:<14} {:>8} {:>10} {:>7} {:>6} | {:>8} {:>9} {:>7}  check",
        "market",
        "correlate",
        "received",
        "duplicates",
        "unique",
        "allow",
        "records",
        "distinct",
        "unique"
    ));
    for m in markets {
        out.say(format!(
            "  {:<9} {:<14} {:>8} {:>10} {:>7} {:>6} | {:>8} {:>9} {:>7}  {}",
            m.tenant,
            m.correlate.name,
            m.received,
            m.duplicates_removed,
            m.answer.len(),
            m.allow_verdicts,
            m.direct.records,
            m.direct.distinct_records,
            m.direct.unique,
            if m.answer_matches {
                "EQUAL"
            } else {
                "DIFFERENT"
            }
        ));
    }
    for m in markets {
        let sample: Vec<String> = m.answer.iter().take(3).map(Hit::to_line).collect();
        if !sample.is_empty() {
            out.say(format!(
                "  {} answer, first records: {}{}",
                m.tenant,
                sample.join("  "),
                if m.answer.len() > 3 { "  …" } else { "" }
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_template_renders_to_a_valid_file_per_tenant() {
        for t in tenants(MAX_TENANTS) {
            let text = policy_for(&t);
            assert!(!text.contains("${"), "{text}");
            let ps = policy::parse_policy_file("p.yaml", text.as_bytes(), t.vnid)
                .unwrap_or_else(|e| panic!("{e}\n{text}"));
            let names: Vec<String> = ps.iter().map(|p| p.name.clone()).collect();
            assert_eq!(
                names,
                [
                    format!("{}-search-egress", t.name),
                    format!("{}-correlate-ingress", t.name)
                ]
            );
        }
    }

    #[test]
    fn tenants_are_named_and_separate() {
        let ts = tenants(2);
        assert_eq!(ts[0].name, "market-a");
        assert_eq!(ts[1].name, "market-b");
        assert_ne!(ts[0].sir, ts[1].sir);
        assert_ne!(ts[0].vnid, ts[1].vnid);
    }
}
