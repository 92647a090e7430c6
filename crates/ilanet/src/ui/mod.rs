//! `ilanet ui`: the SC17 dashboard — a map of the sites and their containers, a terminal in any
//! container, the live translation steps of the visitor's flows, the flow, mapping and policy
//! tables and per-host counters. Served on loopback behind a random token: a terminal is a root
//! shell.
//!
//! Other commands start it with [`serve`] (e.g. `ilanet marketplace --ui`).

mod auth;
mod flows;
mod pty;
mod server;
mod view;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use dataplane::HostMaps;
use tokio::sync::{watch, Semaphore};

use self::flows::FlowTable;
use self::server::{App, LiveJson};
use self::view::HostRef;

/// What the dashboard shows.
pub enum UiSource {
    /// A lab by name: every host's agent and pinned maps.
    Lab(String),
    /// One host agent's API socket (a real host); with its configuration file, the host's
    /// place on the map and where its maps are pinned (flow events).
    Socket {
        /// The agent's API socket.
        socket: PathBuf,
        /// The agent's configuration, if given.
        config: Option<Box<agent::host_config::HostConfig>>,
    },
}

/// How the dashboard is served.
#[derive(Debug, Clone)]
pub struct UiOptions {
    /// Address to listen on (loopback by default; port 0 picks a free one).
    pub listen: SocketAddr,
    /// No terminals: the server refuses them and the page hides them.
    pub read_only: bool,
    /// A terminal with no input for this long is closed.
    pub idle_timeout: Duration,
    /// Terminal session log (appended); `None`: `<lab state dir>/ui-sessions.log`.
    pub session_log: Option<PathBuf>,
    /// Heading of the page (default: what is shown, e.g. "lab demo").
    pub title: Option<String>,
}

impl Default for UiOptions {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            read_only: false,
            idle_timeout: Duration::from_secs(600),
            session_log: None,
            title: None,
        }
    }
}

/// A running dashboard; [`UiHandle::shutdown`] (or drop) stops it.
pub struct UiHandle {
    addr: SocketAddr,
    url: String,
    stop_server: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<std::thread::JoinHandle<Result<()>>>,
    stop_collector: Arc<AtomicBool>,
    collector: Option<std::thread::JoinHandle<()>>,
}

impl UiHandle {
    /// The URL to open, with the token: `http://127.0.0.1:PORT/?token=…`.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// The address served.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Blocks until Ctrl-C / SIGTERM (or the server fails), then shuts down.
    pub fn wait(mut self) -> Result<()> {
        crate::stop::install();
        while !crate::stop::requested() {
            if self.server.as_ref().is_some_and(|s| s.is_finished()) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.stop()
    }

    /// Stops the server (open terminals are closed) and the event collector (tracing off).
    #[allow(dead_code)] // for callers such as `ilanet marketplace --ui`
    pub fn shutdown(mut self) -> Result<()> {
        self.stop()
    }

    fn stop(&mut self) -> Result<()> {
        if let Some(tx) = self.stop_server.take() {
            let _ = tx.send(());
        }
        self.stop_collector.store(true, Ordering::SeqCst);
        if let Some(c) = self.collector.take() {
            let _ = c.join();
        }
        match self.server.take() {
            Some(s) => s
                .join()
                .map_err(|_| anyhow::anyhow!("the dashboard server panicked"))?,
            None => Ok(()),
        }
    }
}

impl Drop for UiHandle {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("error: stopping the dashboard: {e:#}");
        }
    }
}

/// Starts the dashboard on `source`; returns once it listens.
pub fn serve(source: UiSource, opts: UiOptions) -> Result<UiHandle> {
    let (title, hosts) = view::hosts_of(&source)?;
    let title = opts.title.clone().unwrap_or(title);
    let token = auth::Token::random()?;
    let log_path = opts
        .session_log
        .clone()
        .unwrap_or_else(|| lab::state::state_dir().join("ui-sessions.log"));
    if let Some(dir) = log_path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening the session log {}", log_path.display()))?;

    // Bound here, before anything starts: a taken port fails `serve` itself.
    let listener = std::net::TcpListener::bind(opts.listen)
        .with_context(|| format!("listening on {}", opts.listen))?;
    listener.set_nonblocking(true)?;
    let first = view::collect(&title, &hosts, opts.read_only);
    let (tx, rx) = watch::channel(Arc::new(live_json(&first, &FlowTable::default())));
    let stop_collector = Arc::new(AtomicBool::new(false));
    let collector = {
        let stop = stop_collector.clone();
        let hosts = hosts.clone();
        let title = title.clone();
        let read_only = opts.read_only;
        std::thread::Builder::new()
            .name("ui-collector".into())
            .spawn(move || collect_loop(&title, &hosts, read_only, &tx, &stop))
            .context("starting the collector thread")?
    };

    let addr = listener.local_addr()?;
    let app = Arc::new(App {
        origins: auth::Origins::for_addr(addr),
        token: token.clone(),
        read_only: opts.read_only,
        idle_timeout: opts.idle_timeout,
        live: rx,
        terminals: Arc::new(Semaphore::new(server::MAX_TERMINALS)),
        sockets: Arc::new(Semaphore::new(server::MAX_SOCKETS)),
        session_log: Mutex::new(Some(log_file)),
        next_session: AtomicU64::new(1),
    });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let router = server::router(app);
    // The runtime lives on the server's own thread: `serve` may be called from inside another
    // runtime (a command's async code) without blocking it.
    let server = std::thread::Builder::new()
        .name("ui-server".into())
        .spawn(move || -> Result<()> {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                axum::serve(
                    listener,
                    router.into_make_service_with_connect_info::<SocketAddr>(),
                )
                .with_graceful_shutdown(async move {
                    let _ = stop_rx.await;
                })
                .await
            })?;
            // Open WebSockets (terminals) end with the runtime; their guards kill the shells.
            runtime.shutdown_timeout(Duration::from_secs(2));
            Ok(())
        })
        .context("starting the server thread")?;
    let host = if addr.ip().is_unspecified() {
        format!("127.0.0.1:{}", addr.port())
    } else {
        addr.to_string()
    };
    Ok(UiHandle {
        addr,
        url: format!("http://{host}/?token={}", token.as_str()),
        stop_server: Some(stop_tx),
        server: Some(server),
        stop_collector,
        collector: Some(collector),
    })
}

fn live_json(snap: &view::Snapshot, flows: &FlowTable) -> LiveJson {
    let json = serde_json::json!({
        "snapshot": snap,
        "flows": flows.flows(snap),
        "verdicts": flows.verdicts(),
    })
    .to_string();
    let targets = snap
        .sites
        .iter()
        .flat_map(|s| s.containers.iter())
        .map(|c| (c.name.clone(), c.netns.clone(), c.container_id.clone()))
        .collect();
    LiveJson { json, targets }
}

/// How often events are drained and the feed updated.
const TICK: Duration = Duration::from_millis(200);
/// How often the agents are asked again.
const REFRESH: Duration = Duration::from_secs(1);

/// Drains every host's flow events and re-reads the agents, publishing the result, until told
/// to stop; tracing is on meanwhile and turned off at the end.
fn collect_loop(
    title: &str,
    hosts: &[HostRef],
    read_only: bool,
    tx: &watch::Sender<Arc<LiveJson>>,
    stop: &AtomicBool,
) {
    let mut maps: Vec<(String, Option<HostMaps>)> =
        hosts.iter().map(|h| (h.name.clone(), None)).collect();
    let mut table = FlowTable::default();
    let mut snap = view::collect(title, hosts, read_only);
    let mut last_refresh = Instant::now();
    let mut warned = vec![false; hosts.len()];
    while !stop.load(Ordering::SeqCst) {
        let mut round = Vec::new();
        for (i, (host, slot)) in maps.iter_mut().enumerate() {
            if slot.is_none() {
                if let Some(dir) = &hosts[i].pin_dir {
                    match HostMaps::open_pinned(dir).and_then(|mut m| {
                        m.drain_flow_events()?;
                        m.set_trace(true)?;
                        Ok(m)
                    }) {
                        Ok(m) => *slot = Some(m),
                        Err(e) if !warned[i] => {
                            warned[i] = true;
                            log::warn!("host {host}: no flow events ({}): {e}", dir.display());
                        }
                        Err(_) => {}
                    }
                }
            }
            if let Some(m) = slot {
                match m.drain_flow_events() {
                    Ok(evs) => round.extend(evs.into_iter().map(|e| (host.clone(), e))),
                    Err(e) => {
                        log::warn!("host {host}: reading flow events: {e}");
                        *slot = None;
                    }
                }
            }
        }
        table.add_round(&round, &snap);
        if last_refresh.elapsed() >= REFRESH {
            snap = view::collect(title, hosts, read_only);
            last_refresh = Instant::now();
            name_rules(hosts, &mut table);
        }
        // Only a change is pushed: pages redraw (and keep keyboard focus) when something moved.
        let next = live_json(&snap, &table);
        tx.send_if_modified(|cur| {
            if cur.json == next.json {
                return false;
            }
            *cur = Arc::new(next);
            true
        });
        std::thread::sleep(TICK);
    }
    for (host, m) in maps.iter_mut() {
        if let Some(m) = m {
            if let Err(e) = m.set_trace(false) {
                log::warn!("host {host}: turning tracing off: {e}");
            }
        }
    }
}

/// Asks the agents what the rules seen in verdicts are (`policy explain` on a packet each
/// decided), so that the policy panel counts verdicts per policy. Once per rule: a failure is
/// recorded as the bare rule id.
fn name_rules(hosts: &[HostRef], table: &mut FlowTable) {
    for ((host, id), sample) in table.unnamed_rules() {
        let name = hosts
            .iter()
            .find(|h| h.name == host)
            .and_then(|h| {
                agent::api::Client::new(h.socket.clone())
                    .with_timeout(Duration::from_secs(2))
                    .explain(
                        &sample.src.to_string(),
                        &sample.dst.to_string(),
                        sample.dport,
                        &sample.proto,
                    )
                    .ok()
            })
            .and_then(|r| r.rule)
            .unwrap_or_else(|| format!("rule {id}"));
        table.name_rule((host, id), name);
    }
}

/// `ilanet ui` arguments.
#[derive(Args)]
pub struct UiArgs {
    /// Lab to show (default: the only lab that is up).
    #[arg(long, conflicts_with = "socket")]
    lab: Option<String>,
    /// A host agent's API socket instead of a lab.
    #[arg(long)]
    socket: Option<PathBuf>,
    /// With --socket: the agent's configuration file (its `location` and pin directory).
    #[arg(long, requires = "socket")]
    config: Option<PathBuf>,
    /// Address to listen on (loopback by default; port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// No terminals (the server refuses them, the page hides them).
    #[arg(long)]
    read_only: bool,
    /// Close a terminal after this long without input (e.g. 600s, 10m).
    #[arg(long, default_value = "600s", value_parser = parse_duration)]
    idle_timeout: Duration,
    /// Terminal session log, appended (default: /run/ilanet/labs/ui-sessions.log).
    #[arg(long)]
    session_log: Option<PathBuf>,
}

/// `600`, `600s`, `10m`, `1h`: whole seconds, minutes or hours (1 s to 24 h).
fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}': expected a number of seconds, e.g. 600s or 10m"))?;
    let secs = match unit {
        "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        _ => return Err(format!("'{s}': unit must be s, m or h")),
    };
    if !(1..=86_400).contains(&secs) {
        return Err(format!("'{s}': expected 1 s to 24 h"));
    }
    Ok(Duration::from_secs(secs))
}

/// `ilanet ui`.
pub fn run(args: &UiArgs) -> Result<ExitCode> {
    let source = match (&args.lab, &args.socket) {
        (Some(l), _) => UiSource::Lab(l.clone()),
        (None, Some(s)) => {
            let config = match &args.config {
                Some(p) => {
                    let text =
                        std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
                    Some(Box::new(agent::host_config::parse(
                        &p.display().to_string(),
                        &text,
                        "/proc/self/ns/net",
                    )?))
                }
                None => None,
            };
            UiSource::Socket {
                socket: s.clone(),
                config,
            }
        }
        (None, None) => {
            let labs = lab::state::LabState::list()?;
            match labs.as_slice() {
                [one] => UiSource::Lab(one.clone()),
                [] => bail!("no lab is up: start one (`ilanet demo --keep`, `ilanet lab up`) or give --socket"),
                many => bail!("several labs are up ({}): choose one with --lab", many.join(", ")),
            }
        }
    };
    let handle = serve(
        source,
        UiOptions {
            listen: args.listen,
            read_only: args.read_only,
            idle_timeout: args.idle_timeout,
            session_log: args.session_log.clone(),
            title: None,
        },
    )?;
    if !handle.addr().ip().is_loopback() {
        eprintln!(
            "warning: the dashboard listens on {}, beyond this machine; anyone with the token gets root shells in the containers (use --read-only, or keep the default 127.0.0.1)",
            handle.addr()
        );
    }
    println!("ilanet dashboard: {}", handle.url());
    println!("(open it in a browser on this machine; Ctrl-C stops it)");
    handle.wait()?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("600s"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5d").unwrap_err().contains("unit"));
        assert!(parse_duration("abc").is_err());
        assert!(parse_duration("25h").is_err());
    }
}
