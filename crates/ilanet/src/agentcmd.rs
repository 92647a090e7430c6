//! `ilanet agent`, `ilanet agent status`, `ilanet endpoint …`, `ilanet mappings`.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use agent::api::{AgentStatus, MappingRow, Request};
use agent::reconcile::LocalEndpoint;
use agent::Agent;
use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use lab::agents::{self, StoreKind};
use lab::plan::Plan;
use store::{EmbeddedStore, StoreConfig};

use crate::labcmd::DEFAULT_LAB;

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AgentArgs {
    #[command(subcommand)]
    command: Option<AgentCommand>,
    /// Run the host agent of this machine from a configuration file (see deploy/agent.yaml)
    /// instead of a lab's agents.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["host", "store", "etcd_endpoints", "lease_ttl"])]
    config: Option<std::path::PathBuf>,
    /// Lab whose host(s) this agent serves.
    #[arg(long, default_value = DEFAULT_LAB)]
    lab: String,
    /// Serve only this host (default: every host of the lab, in this one process).
    #[arg(long)]
    host: Option<String>,
    /// Mapping store: embedded (in this process) or etcd.
    #[arg(long, default_value = "embedded")]
    store: StoreKind,
    /// etcd client URLs, comma-separated (with --store etcd).
    #[arg(long, value_delimiter = ',')]
    etcd_endpoints: Vec<String>,
    /// Lease time to live in seconds: a dead host's mappings vanish this long after it dies.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=agent::MAX_LEASE_TTL.as_secs()))]
    lease_ttl: u64,
    /// Serve Prometheus metrics of every host of this process at HOST:PORT (a bare port means
    /// 127.0.0.1:PORT), series labelled by host; off unless given. A host agent takes the
    /// address from its configuration's `metrics` instead.
    #[arg(long, value_name = "ADDR", conflicts_with = "config", value_parser = parse_metrics)]
    metrics: Option<std::net::SocketAddr>,
    /// Allow etcd without TLS and auth (anyone who reaches it can rewrite every mapping): a
    /// configuration's etcd section may then lack ca/cert/key, as with `insecure: true`; a lab's
    /// agent may use a lab etcd without certificates.
    #[arg(long)]
    insecure_store: bool,
}

fn parse_metrics(s: &str) -> Result<std::net::SocketAddr, String> {
    agent::metrics::parse_listen(s).map_err(|e| e.to_string())
}

/// Binds the metrics endpoint (an address that cannot be bound stops the start) and serves it
/// in the background.
async fn start_metrics(addr: std::net::SocketAddr, agents: Vec<Arc<Agent>>) -> Result<()> {
    let server = agent::metrics::MetricsServer::bind(addr, agents).await?;
    log::info!(
        "metrics on http://{}/metrics",
        server.local_addr().unwrap_or(addr)
    );
    tokio::spawn(server.run());
    Ok(())
}

#[derive(Subcommand)]
enum AgentCommand {
    /// Show each agent's state: store session, lease, revision, map sizes, counters.
    Status(Target),
}

#[derive(Args)]
pub struct Target {
    /// Lab name.
    #[arg(long, default_value = DEFAULT_LAB)]
    lab: String,
    /// Talk to the host agent at this socket (a real machine's, see its configuration's
    /// `socket`) instead of a lab's agents.
    #[arg(long, value_name = "PATH", conflicts_with = "host")]
    socket: Option<std::path::PathBuf>,
    /// Only this host.
    #[arg(long)]
    host: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
pub enum EndpointCommand {
    /// Create an endpoint (a container namespace with a SIR address) on a host.
    Add {
        /// Endpoint name, unique in the lab.
        name: String,
        /// Host to create it on.
        #[arg(long)]
        host: String,
        /// Labels, `key=value` (repeatable).
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
        /// Tenant network to join (default: the lab's first).
        #[arg(long)]
        tenant: Option<String>,
        /// Lab name.
        #[arg(long, default_value = DEFAULT_LAB)]
        lab: String,
    },
    /// Remove an endpoint (and its mapping everywhere).
    Del {
        /// Endpoint name.
        name: String,
        /// Lab name.
        #[arg(long, default_value = DEFAULT_LAB)]
        lab: String,
    },
    /// List endpoints of every host.
    List(Target),
    /// Recreate an endpoint on another host with the same SIR address.
    Move {
        /// Endpoint name.
        name: String,
        /// Destination host.
        #[arg(long)]
        to: String,
        /// Lab name.
        #[arg(long, default_value = DEFAULT_LAB)]
        lab: String,
    },
}

fn hosts_of<'a>(plan: &'a Plan, only: Option<&str>) -> Result<Vec<&'a lab::plan::HostPlan>> {
    match only {
        None => Ok(plan.hosts.iter().collect()),
        Some(h) => plan
            .hosts
            .iter()
            .find(|x| x.name == h)
            .map(|x| vec![x])
            .ok_or_else(|| {
                let names: Vec<_> = plan.hosts.iter().map(|x| x.name.as_str()).collect();
                anyhow!(
                    "unknown host '{h}' in lab '{}' (hosts: {})",
                    plan.name,
                    names.join(", ")
                )
            }),
    }
}

impl AgentArgs {
    /// Whether this runs a host agent from a configuration file.
    pub fn has_config(&self) -> bool {
        self.command.is_none() && self.config.is_some()
    }
}

/// Runs the host agent of the machine (or namespace) this process is in, from its configuration
/// file, until killed.
fn run_host(path: &std::path::Path, insecure_store: bool) -> Result<ExitCode> {
    let file = path.display().to_string();
    let text = read_bounded(path, agent::host_config::MAX_CONFIG_BYTES)
        .with_context(|| format!("reading the agent configuration {file}"))?;
    let host_netns =
        lab::netns::current_path().context("finding this process's network namespace")?;
    let cfg = agent::host_config::parse_with(&file, &text, &host_netns, insecure_store)?;
    crate::init_logging(&cfg.log_level);
    let served = cfg.agent.host_netns.clone();
    if !lab::netns::exists(&served) {
        bail!("{file}: netns: namespace '{served}' does not exist");
    }
    if lab::link::ifindex_in(&served, cfg.uplink()).is_err() {
        let names = lab::link::names_in(&served).unwrap_or_default();
        bail!(
            "{file}: uplink: interface '{}' does not exist on this host (it has: {})",
            cfg.uplink(),
            names.join(", ")
        );
    }
    if let Some(evpn) = cfg.evpn() {
        // EVPN mode: no eBPF, no mapping store; the speaker carries everything.
        let host = evpn.host.clone();
        return agent_runtime()?.block_on(async move {
            let h = agent::evpn_host::EvpnHost::start(evpn)
                .await
                .with_context(|| format!("{file}: starting the EVPN agent of host '{host}'"))?;
            log::info!(
                "host {host}: EVPN agent serving {}",
                h.config().socket.display()
            );
            h.serve().await.map_err(|e| anyhow!(e))?;
            Ok(ExitCode::SUCCESS)
        });
    }
    let store_cfg = match &cfg.store {
        agent::host_config::StoreSpec::Embedded { data_dir } => StoreConfig::Embedded(
            EmbeddedStore::open(data_dir)
                .with_context(|| format!("opening the embedded store in {}", data_dir.display()))?,
        ),
        agent::host_config::StoreSpec::Etcd { endpoints, tls, .. } => {
            if tls.is_none() {
                log::warn!(
                    "{file}: etcd without TLS and auth (insecure): anyone who reaches {} can rewrite every mapping",
                    endpoints.join(",")
                );
            }
            StoreConfig::Etcd {
                endpoints: endpoints.clone(),
                connect_timeout: Duration::from_secs(3),
                tls: tls.clone(),
            }
        }
    };
    let host = cfg.agent.host.clone();
    let agent = Agent::new(cfg.agent, store_cfg, None)
        .with_context(|| format!("starting the agent of host '{host}'"))?;
    if let agent::host_config::StoreSpec::Etcd {
        endpoints,
        policy_tls: Some(t),
        ..
    } = &cfg.store
    {
        agent.set_policy_writer(StoreConfig::Etcd {
            endpoints: endpoints.clone(),
            connect_timeout: Duration::from_secs(3),
            tls: Some(t.clone()),
        })?;
    }
    log::info!(
        "host {host}: agent serving {} on {}",
        agent.config().uplink,
        agent.config().socket.display()
    );
    let metrics = cfg.metrics;
    let bgp = cfg.bgp;
    let runtime = agent_runtime()?;
    runtime.block_on(async move {
        if let Some(addr) = metrics {
            start_metrics(addr, vec![Arc::clone(&agent)])
                .await
                .with_context(|| file.clone())?;
        }
        if let Some(speaker) = bgp {
            let c = agent.config();
            let routing = agent::routing::Routing::start(
                &c.host,
                &c.host_netns,
                speaker,
                c.locator,
                c.underlay,
            )
            .await
            .with_context(|| format!("{file}: bgp"))?;
            log::info!("host {host}: BGP speaker announcing {}", c.locator);
            agent.set_routing(routing)?;
        }
        tokio::spawn(Arc::clone(&agent).run(None));
        agent::serve(agent).await.map_err(|e| anyhow!(e))?;
        Ok(ExitCode::SUCCESS)
    })
}

/// The agents' async runtime: two worker threads (blocking work has a pool of its own).
fn agent_runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Reads a file of at most `max` bytes (a bigger one is an error, not read into memory).
fn read_bounded(path: &std::path::Path, max: usize) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut buf = Vec::new();
    std::fs::File::open(path)?
        .take(max as u64 + 1)
        .read_to_end(&mut buf)?;
    if buf.len() > max {
        bail!("{} is larger than {max} bytes", path.display());
    }
    Ok(buf)
}

/// Runs agents in this process until killed.
pub fn run(args: &AgentArgs) -> Result<ExitCode> {
    if let Some(AgentCommand::Status(t)) = &args.command {
        return status(t);
    }
    if let Some(path) = &args.config {
        return run_host(path, args.insecure_store);
    }
    let plan = lab::plan_of(&args.lab)?;
    let hosts = hosts_of(&plan, args.host.as_deref())?;
    // However it was started, `lab down` stops it.
    agents::register_agent(&args.lab)?;
    let store_cfg = match args.store {
        StoreKind::Embedded => {
            // On disk in the lab's directory: a restarted agent finds the mappings, identities
            // and policies it had, before it touches the maps.
            let dir = agents::run_dir(&args.lab).join(match &args.host {
                None => "store".to_string(),
                Some(h) => format!("store-{h}"),
            });
            let store = EmbeddedStore::open(&dir)
                .with_context(|| format!("opening the embedded store in {}", dir.display()))?;
            StoreConfig::Embedded(store)
        }
        StoreKind::Etcd => {
            if args.etcd_endpoints.is_empty() {
                bail!("--store etcd needs --etcd-endpoints URL[,URL…]");
            }
            StoreConfig::Etcd {
                endpoints: args.etcd_endpoints.clone(),
                connect_timeout: Duration::from_secs(3),
                tls: None,
            }
        }
    };
    // A lab's etcd has a certificate per host (lab up made them): each host's agent uses its own.
    let lab_etcd = match &store_cfg {
        StoreConfig::Etcd { .. } => lab::state::LabState::load(&args.lab)?.and_then(|s| s.etcd),
        StoreConfig::Embedded(_) => None,
    };
    let ttl = Duration::from_secs(args.lease_ttl);
    let mut list = Vec::new();
    for host in &hosts {
        let cfg = agents::agent_config(&plan, host, ttl);
        let mut store_cfg = store_cfg.clone();
        if let StoreConfig::Etcd { tls, endpoints, .. } = &mut store_cfg {
            *tls = lab_etcd.as_ref().and_then(|e| e.client_tls(&host.name));
            if tls.is_none() && !args.insecure_store {
                bail!(
                    "--store etcd: no TLS credentials for host '{}' (lab '{}' has no etcd \
                     certificates); pass --insecure-store to use {} without TLS and auth",
                    host.name,
                    args.lab,
                    endpoints.join(",")
                );
            }
        }
        let policy_writer = match &store_cfg {
            // The lab's policy administrator is its first host's agent.
            StoreConfig::Etcd { endpoints, .. }
                if plan.hosts.first().map(|h| &h.name) == Some(&host.name) =>
            {
                lab_etcd
                    .as_ref()
                    .and_then(|e| e.client_tls(store::pki::POLICY_ADMIN_USER))
                    .map(|t| StoreConfig::Etcd {
                        endpoints: endpoints.clone(),
                        connect_timeout: Duration::from_secs(3),
                        tls: Some(t),
                    })
            }
            _ => None,
        };
        let agent = Agent::new(cfg, store_cfg, None)
            .with_context(|| format!("starting the agent of host '{}'", host.name))?;
        if let Some(w) = policy_writer {
            agent.set_policy_writer(w)?;
        }
        list.push(agent);
    }
    let metrics = args.metrics;
    let runtime = agent_runtime()?;
    let plan = &plan;
    runtime.block_on(async move {
        if let Some(addr) = metrics {
            start_metrics(addr, list.clone()).await?;
        }
        // Each host's speaker has its sockets and routes in that host's namespace.
        for (a, host) in list.iter().zip(&hosts) {
            if let Some(cfg) = lab::routing::speaker_config(plan, host) {
                let routing = agent::routing::Routing::start(
                    &host.name,
                    &host.netns,
                    cfg,
                    host.locator,
                    host.uplink_addr,
                )
                .await
                .with_context(|| format!("starting the BGP speaker of host '{}'", host.name))?;
                log::info!(
                    "host {}: BGP speaker ({} routing) announcing {}",
                    host.name,
                    plan.routing,
                    host.locator
                );
                a.set_routing(routing)?;
            }
        }
        // Every agent publishes before any sweeps: a restarted process with a fresh embedded
        // store must not remove its neighbours' mappings in the meantime.
        let barrier = Arc::new(tokio::sync::Barrier::new(list.len()));
        let mut servers = tokio::task::JoinSet::new();
        for a in &list {
            tokio::spawn(Arc::clone(a).run(Some(Arc::clone(&barrier))));
            servers.spawn(agent::serve(Arc::clone(a)));
        }
        match servers.join_next().await {
            Some(Ok(Err(e))) => Err(anyhow!(e)),
            Some(Err(e)) => Err(anyhow!("api server task failed: {e}")),
            _ => Ok(ExitCode::SUCCESS),
        }
    })
}

/// Sends a request to each agent a [`Target`] names: the one at `--socket`, or the lab's
/// (all hosts, or `--host`). Returns each host's name and reply.
fn call_each(t: &Target, req: &Request) -> Result<Vec<(String, serde_json::Value)>> {
    if let Some(socket) = &t.socket {
        let client = agent::api::Client::new(socket).with_timeout(agents::CALL_TIMEOUT);
        let status = client.status()?;
        let v = match req {
            Request::Status => serde_json::to_value(&status)?,
            _ => client.request(req)?,
        };
        return Ok(vec![(status.host, v)]);
    }
    let plan = lab::plan_of(&t.lab)?;
    let mut out = Vec::new();
    for host in hosts_of(&plan, t.host.as_deref())? {
        out.push((
            host.name.clone(),
            agents::call(&plan.name, &host.name, req)?,
        ));
    }
    Ok(out)
}

fn status(t: &Target) -> Result<ExitCode> {
    let mut all = Vec::new();
    for (_, v) in call_each(t, &Request::Status)? {
        all.push(serde_json::from_value::<AgentStatus>(v)?);
    }
    if t.json {
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(ExitCode::SUCCESS);
    }
    for s in &all {
        println!(
            "{:<10} locator {:<22} store {} ({}) lease {} revision {} mappings {} endpoints {} maps {} out / {} in, resyncs {}",
            s.host,
            s.locator,
            s.store,
            if s.store_connected {
                "connected".to_string()
            } else {
                format!("DOWN: {}", s.store_error.clone().unwrap_or_default())
            },
            s.lease.map(|l| l.to_string()).unwrap_or_else(|| "-".into()),
            s.revision,
            s.mappings,
            s.endpoints,
            s.out_entries,
            s.in_entries,
            s.resyncs
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Subcommand)]
pub enum BgpCommand {
    /// Each speaker's sessions: state, uptime, prefixes received and sent, last error.
    Status(Target),
    /// The best routes each host learned, where from, and the kernel route installed.
    Routes(Target),
}

/// `ilanet bgp …`.
pub fn bgp(command: &BgpCommand) -> Result<ExitCode> {
    match command {
        BgpCommand::Status(t) => {
            let mut all = Vec::new();
            for (_, v) in call_each(t, &Request::BgpStatus)? {
                all.push(serde_json::from_value::<agent::routing::BgpStatus>(v)?);
            }
            if t.json {
                println!("{}", serde_json::to_string_pretty(&all)?);
                return Ok(ExitCode::SUCCESS);
            }
            for s in &all {
                println!(
                    "{}: AS {} router id {} listening on {}, {} kernel routes",
                    s.host,
                    s.speaker.local_as,
                    s.speaker.router_id,
                    s.speaker
                        .listen
                        .map(|l| l.to_string())
                        .unwrap_or_else(|| "-".into()),
                    s.kernel_routes
                );
                for p in &s.speaker.peers {
                    println!("  {}", serde_json::to_string(p)?);
                }
            }
        }
        BgpCommand::Routes(t) => {
            let mut all = Vec::new();
            for (host, v) in call_each(t, &Request::BgpRoutes)? {
                let rows: Vec<agent::routing::RouteRow> = serde_json::from_value(v)?;
                all.push((host, rows));
            }
            if t.json {
                let map: BTreeMap<_, _> = all.into_iter().collect();
                println!("{}", serde_json::to_string_pretty(&map)?);
                return Ok(ExitCode::SUCCESS);
            }
            for (host, rows) in &all {
                for r in rows {
                    println!(
                        "{host:<10} {:<24} next hop {:<24} from {:<24} as-path {:?} kernel {}",
                        r.prefix,
                        r.next_hop,
                        r.peer,
                        r.as_path,
                        r.installed_via
                            .map(|v| format!("via {v}"))
                            .unwrap_or_else(|| "not installed".into())
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_labels(labels: &[String]) -> Result<BTreeMap<String, String>> {
    labels
        .iter()
        .map(|l| {
            l.split_once('=')
                .filter(|(k, _)| !k.is_empty())
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| anyhow!("--label '{l}' is not KEY=VALUE"))
        })
        .collect()
}

fn endpoints_of(plan: &Plan, host: &str) -> Result<Vec<LocalEndpoint>> {
    let v = agents::call(&plan.name, host, &Request::EndpointList)?;
    Ok(serde_json::from_value(v)?)
}

/// The host currently running endpoint `name`.
fn find_endpoint(plan: &Plan, name: &str) -> Result<(String, LocalEndpoint)> {
    for host in &plan.hosts {
        if let Some(ep) = endpoints_of(plan, &host.name)?
            .into_iter()
            .find(|e| e.name == name)
        {
            return Ok((host.name.clone(), ep));
        }
    }
    bail!("no endpoint '{name}' in lab '{}'", plan.name)
}

/// `ilanet endpoint …`.
pub fn endpoint(cmd: &EndpointCommand) -> Result<ExitCode> {
    match cmd {
        EndpointCommand::Add {
            name,
            host,
            labels,
            tenant,
            lab,
        } => {
            let plan = lab::plan_of(lab)?;
            hosts_of(&plan, Some(host))?;
            // Endpoint namespaces are `<lab>-<name>`, like the lab's own: name the clash here
            // rather than let the agent find the namespace taken.
            if let Some(ns) = plan
                .lab_netns()
                .into_iter()
                .find(|ns| *ns == format!("{lab}-{name}"))
            {
                bail!(
                    "endpoint name '{name}' is taken by lab '{lab}' itself (its namespace {ns} is a host or the router); choose another name"
                );
            }
            let labels = parse_labels(labels)?;
            let v = agents::call(
                lab,
                host,
                &Request::EndpointAdd {
                    name: name.clone(),
                    tenant: tenant.clone(),
                    identifier: None,
                    replace: false,
                    labels,
                },
            )?;
            let ep: LocalEndpoint = serde_json::from_value(v)?;
            println!(
                "endpoint {} on {host}: {} (namespace {})",
                ep.name, ep.sir_addr, ep.netns
            );
        }
        EndpointCommand::Del { name, lab } => {
            let plan = lab::plan_of(lab)?;
            let (host, _) = find_endpoint(&plan, name)?;
            agents::call(
                lab,
                &host,
                &Request::EndpointDel {
                    name: name.clone(),
                    keep_mapping: false,
                },
            )?;
            println!("endpoint {name} removed from {host}");
        }
        EndpointCommand::List(t) => {
            let mut rows = Vec::new();
            for (host, v) in call_each(t, &Request::EndpointList)? {
                for ep in serde_json::from_value::<Vec<LocalEndpoint>>(v)? {
                    rows.push((host.clone(), ep));
                }
            }
            if t.json {
                let v: Vec<_> = rows
                    .iter()
                    .map(|(h, e)| serde_json::json!({"host": h, "endpoint": e}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!(
                    "{:<10} {:<14} {:<32} {:<20} labels",
                    "host", "endpoint", "SIR address", "namespace"
                );
                for (h, e) in rows {
                    let labels: Vec<_> = e.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    println!(
                        "{:<10} {:<14} {:<32} {:<20} {}",
                        h,
                        e.name,
                        e.sir_addr.to_string(),
                        e.netns,
                        labels.join(",")
                    );
                }
            }
        }
        EndpointCommand::Move { name, to, lab } => {
            let plan = lab::plan_of(lab)?;
            hosts_of(&plan, Some(to))?;
            let (from, ep) = find_endpoint(&plan, name)?;
            if &from == to {
                bail!("endpoint '{name}' already runs on '{to}'");
            }
            move_endpoint(lab, &from, to, &ep)?;
            println!(
                "endpoint {name} moved {from} -> {to}, address {} unchanged",
                ep.sir_addr
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Moves an endpoint: the old host releases it (keeping the mapping), the new host recreates it
/// with the same identifier and overwrites the mapping. If the new host fails, the endpoint is
/// recreated where it was.
fn move_endpoint(lab: &str, from: &str, to: &str, ep: &LocalEndpoint) -> Result<()> {
    agents::call(
        lab,
        from,
        &Request::EndpointDel {
            name: ep.name.clone(),
            keep_mapping: true,
        },
    )?;
    let add = |host: &str| {
        agents::call(
            lab,
            host,
            &Request::EndpointAdd {
                name: ep.name.clone(),
                tenant: None,
                identifier: Some(ep.identifier),
                replace: true,
                labels: ep.labels.clone(),
            },
        )
    };
    if let Err(e) = add(to) {
        add(from).with_context(|| {
            format!("moving to '{to}' failed ({e}) and restoring on '{from}' failed too")
        })?;
        return Err(anyhow!(e).context(format!(
            "moving endpoint '{}' to '{to}'; it stays on '{from}'",
            ep.name
        )));
    }
    Ok(())
}

/// `ilanet mappings`.
pub fn mappings(t: &Target) -> Result<ExitCode> {
    let (host, v) = if t.socket.is_some() {
        call_each(t, &Request::Mappings)?
            .into_iter()
            .next()
            .ok_or_else(|| anyhow!("no reply"))?
    } else {
        let plan = lab::plan_of(&t.lab)?;
        let host = match &t.host {
            Some(h) => h.clone(),
            None => plan
                .hosts
                .first()
                .map(|h| h.name.clone())
                .ok_or_else(|| anyhow!("lab '{}' has no hosts", plan.name))?,
        };
        hosts_of(&plan, Some(&host))?;
        let v = agents::call(&plan.name, &host, &Request::Mappings)?;
        (host, v)
    };
    let rows: Vec<MappingRow> = serde_json::from_value(v)?;
    if t.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("mappings as host '{host}' sees them:");
    println!(
        "{:<14} {:<10} {:<32} {:<34} {:<13} installed",
        "endpoint", "host", "SIR address", "ILA address", "mode"
    );
    for r in rows {
        println!(
            "{:<14} {:<10} {:<32} {:<34} {:<13} {}",
            r.endpoint,
            r.host,
            r.sir_addr.to_string(),
            r.ila_addr
                .map(|a| a.to_string())
                .unwrap_or_else(|| "-".into()),
            r.mode,
            if r.installed { "yes" } else { "NO" }
        );
    }
    Ok(ExitCode::SUCCESS)
}
