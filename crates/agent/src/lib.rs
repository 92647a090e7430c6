//! The ilanet agent, one per host. It owns the host's locator, creates and deletes endpoints,
//! publishes their mappings to the store under its lease, watches every mapping and keeps the
//! host's eBPF maps equal to the store's view (list, then watch from that revision; every full
//! resync is a mark and sweep), and serves a local API on a unix socket.
//!
//! It is split the way quinn-proto is: [`core::Core`] decides (pure: store snapshots, events and
//! request steps in, map operations and publications out) and this module's [`Agent`] is the
//! shell that talks to the store, runs plumbing and executes the core's operations through the
//! two narrow traits of [`io`] (maps, plumbing), with kernel and in-memory implementations.
//!
//! When the store is unreachable the agent retries with backoff and leaves the data path at its
//! last known state; when it comes back the agent republishes its endpoints and resyncs.

pub mod api;
pub mod claims;
pub mod core;
pub mod endpoint;
pub mod evpn;
pub mod evpn_host;
pub mod host_config;
pub mod io;
mod lifecycle;
pub mod metrics;
pub mod policy_sync;
mod queries;
pub mod reconcile;
pub mod routing;
mod server;
mod session;

use std::collections::HashMap;
use std::net::Ipv6Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use dataplane::HostDataplane;
use ila::{ChecksumMode, Locator, TenantNetwork};
use serde::{Deserialize, Serialize};
use store::{Lease, Store, StoreConfig};

use crate::core::{Core, HostSpec, Output, Publication};
use crate::io::{KernelMaps, KernelPlumbing, Maps, Plumbing};
use crate::reconcile::LocalEndpoint;

pub use crate::core::PendingEndpoint;
pub use server::serve;

/// Default lease time to live: a dead host's mappings disappear this long after it dies.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);
/// Longest lease time to live accepted (an hour: a dead host's mappings must not linger longer).
pub const MAX_LEASE_TTL: Duration = Duration::from_secs(3600);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A flow idle this long loses its conntrack entry (its next packet is policed as new).
const CT_IDLE: Duration = Duration::from_secs(3600);
/// How long a change waits for a store session that is being re-established.
const SESSION_WAIT: Duration = Duration::from_secs(5);
/// How often idle conntrack entries are looked for.
const CT_SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Everything an agent needs to know about its host.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentConfig {
    /// Host name, unique in the network.
    pub host: String,
    /// The host's network namespace (named, as under /run/netns).
    pub host_netns: String,
    /// The host's uplink (from-wire is attached to it).
    pub uplink: String,
    /// The host's locator.
    pub locator: Locator,
    /// The host's underlay address.
    pub underlay: Ipv6Addr,
    /// Tenant networks endpoints can join; the first is the default.
    pub tenants: Vec<TenantNetwork>,
    /// Checksum mode of the mappings this agent publishes.
    pub csum_mode: ChecksumMode,
    /// Where the host's maps and links are pinned.
    pub pin_dir: PathBuf,
    /// File recording this host's endpoints (survives agent restarts).
    pub state_file: PathBuf,
    /// Unix socket of the local API.
    pub socket: PathBuf,
    /// Prefix of endpoint namespace names (`<prefix>-<endpoint>`).
    pub netns_prefix: String,
    /// Lease time to live.
    pub lease_ttl: Duration,
}

impl AgentConfig {
    /// The part of the configuration the core decides with.
    pub fn spec(&self) -> HostSpec {
        HostSpec {
            host: self.host.clone(),
            locator: self.locator,
            underlay: self.underlay,
            csum_mode: self.csum_mode,
            tenants: self.tenants.clone(),
        }
    }
}

/// What kind of failure an [`AgentError`] is: what a client can act on (the API carries it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request is wrong (a bad name, field or value); nothing was changed.
    BadRequest,
    /// What the request names does not exist.
    NotFound,
    /// The name or address is taken.
    Conflict,
    /// The store is not reachable; nothing was changed. Try again later.
    NoStore,
    /// The agent is overloaded; try again.
    Busy,
    /// This host's credentials do not allow it (e.g. writing policies without the policy
    /// administrator's certificate); nothing was changed.
    Forbidden,
    /// Anything else: the host (netlink, eBPF, files) or the store failed.
    Internal,
}

/// What can go wrong in the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A bad request; nothing was changed.
    #[error("{0}")]
    Invalid(String),
    /// What the request names does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A name or address is taken.
    #[error("{0}")]
    Conflict(String),
    /// The store is needed and not reachable; nothing was changed.
    #[error("mapping store not reachable ({0}); nothing was changed")]
    NoStore(String),
    /// This host may not do that with its credentials; nothing was changed.
    #[error("{0}")]
    Forbidden(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// Namespaces or links.
    #[error(transparent)]
    Net(#[from] hostnet::NetError),
    /// The eBPF data path.
    #[error(transparent)]
    Dataplane(#[from] dataplane::DataplaneError),
    /// Address arithmetic.
    #[error(transparent)]
    Ila(#[from] ila::IlaError),
    /// Files.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// A failure inside the agent (a task that died, an injected fault).
    #[error("{0}")]
    Internal(String),
}

impl AgentError {
    /// The kind a client can act on.
    pub fn kind(&self) -> ErrorKind {
        match self {
            AgentError::Invalid(_) | AgentError::Ila(_) => ErrorKind::BadRequest,
            AgentError::NotFound(_) => ErrorKind::NotFound,
            AgentError::Conflict(_) => ErrorKind::Conflict,
            AgentError::NoStore(_) => ErrorKind::NoStore,
            AgentError::Forbidden(_) => ErrorKind::Forbidden,
            AgentError::Store(e) => match e {
                store::StoreError::AddressInUse { .. } => ErrorKind::Conflict,
                store::StoreError::Unavailable { .. } | store::StoreError::LeaseExpired(_) => {
                    ErrorKind::NoStore
                }
                store::StoreError::InvalidArgument(_) => ErrorKind::BadRequest,
                _ => ErrorKind::Internal,
            },
            AgentError::Net(_)
            | AgentError::Dataplane(_)
            | AgentError::Io { .. }
            | AgentError::Internal(_) => ErrorKind::Internal,
        }
    }
}

/// Notified each time a mapping is written into this host's out-map (for convergence
/// measurements): host, SIR address, when.
pub type InstallObserver = tokio::sync::mpsc::UnboundedSender<(String, Ipv6Addr, Instant)>;

/// The store session, when there is one.
#[derive(Default)]
struct Connection {
    session: Option<(Store, Lease)>,
    /// Why there is none.
    error: Option<String>,
}

/// One host's agent: the shell around [`Core`].
pub struct Agent {
    cfg: AgentConfig,
    store_cfg: StoreConfig,
    core: Mutex<Core>,
    conn: Mutex<Connection>,
    /// Locked after `core` when both are held: operations are written in the order the core
    /// produced them.
    maps: Mutex<Box<dyn Maps>>,
    plumbing: Arc<dyn Plumbing>,
    /// Serialises changes of one endpoint name (they span blocking plumbing and store calls);
    /// changes of different names run in parallel.
    names: Arc<NameLocks>,
    /// Serialises state-file writes (each writes the state as it is when it starts).
    state_write: Mutex<()>,
    /// Ends the current store session (its lease was found expired outside the session loop).
    session_reset: tokio::sync::Notify,
    observer: Option<InstallObserver>,
    /// Where policy writes go when this host's own store credentials may not write policies:
    /// the store as the policy administrator ([`Agent::set_policy_writer`]).
    policy_writer: std::sync::OnceLock<StoreConfig>,
    /// Latencies and call counts for the metrics endpoint.
    telemetry: metrics::Telemetry,
    /// The BGP speaker announcing this host's locator, when configured.
    routing: std::sync::OnceLock<Arc<routing::Routing>>,
}

#[derive(Default, Serialize, Deserialize)]
struct StateFile {
    endpoints: Vec<LocalEndpoint>,
    /// Endpoints being created, recorded before their namespace exists: after a crash mid-way
    /// the restarted agent (or `lab down`) finds and removes what was made.
    #[serde(default)]
    creating: Vec<PendingEndpoint>,
}

/// Runs CPU-bound or blocking work on the blocking pool so that the async threads (API, lease
/// keep-alives, watches) keep running.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, AgentError> + Send + 'static,
) -> Result<T, AgentError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| AgentError::Internal(format!("agent task failed: {e}")))?
}

/// A spawned task that is aborted when its owner goes (the session that started it ended).
struct AbortOnDrop<T>(tokio::task::JoinHandle<Result<T, AgentError>>);

impl<T> AbortOnDrop<T> {
    async fn join(&mut self) -> Result<T, AgentError> {
        (&mut self.0)
            .await
            .map_err(|e| AgentError::Internal(format!("agent task failed: {e}")))?
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One async lock per endpoint name, made on demand and dropped with its last user.
#[derive(Default)]
struct NameLocks(Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

/// Holds one name's lock (movable into a task that finishes the change in the background).
struct NameGuard {
    locks: Arc<NameLocks>,
    name: String,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl NameLocks {
    async fn lock(self: &Arc<Self>, name: &str) -> NameGuard {
        let m = Arc::clone(lock(&self.0).entry(name.to_string()).or_default());
        let guard = m.lock_owned().await;
        NameGuard {
            locks: Arc::clone(self),
            name: name.to_string(),
            guard: Some(guard),
        }
    }
}

impl Drop for NameGuard {
    fn drop(&mut self) {
        self.guard = None;
        let mut map = lock(&self.locks.0);
        // Only the map holds it: nobody waits for this name.
        if map
            .get(&self.name)
            .is_some_and(|m| Arc::strong_count(m) == 1)
        {
            map.remove(&self.name);
        }
    }
}

pub(crate) fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves consistent-enough data (maps are reconciled anyway).
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Agent {
    /// Loads the host's data path (reusing pinned maps: traffic keeps flowing across restarts),
    /// attaches from-wire to the uplink and recovers the endpoints recorded before a restart.
    /// Blocking; call before entering the async runtime or from a blocking task.
    pub fn new(
        cfg: AgentConfig,
        store_cfg: StoreConfig,
        observer: Option<InstallObserver>,
    ) -> Result<Arc<Self>, AgentError> {
        dataplane::ensure_bpffs()?;
        let mut dp = HostDataplane::load(&cfg.pin_dir)?;
        // Anti-spoofing, conntrack, tenant isolation and policy are on wherever an agent runs.
        dp.maps().set_enforce(true)?;
        let dp = Arc::new(Mutex::new(dp));
        let plumbing = Arc::new(KernelPlumbing {
            cfg: cfg.clone(),
            dp: Arc::clone(&dp),
        });
        Self::with_io(cfg, store_cfg, Box::new(KernelMaps(dp)), plumbing, observer)
    }

    /// An agent on the given maps and plumbing (the kernel's, or in-memory ones for an agent
    /// without root). Recovers the endpoints the state file records.
    pub fn with_io(
        cfg: AgentConfig,
        store_cfg: StoreConfig,
        maps: Box<dyn Maps>,
        plumbing: Arc<dyn Plumbing>,
        observer: Option<InstallObserver>,
    ) -> Result<Arc<Self>, AgentError> {
        endpoint::validate_name(&cfg.host)
            .map_err(|_| AgentError::Invalid(format!("host name '{}' is not valid", cfg.host)))?;
        if cfg.lease_ttl.is_zero() || cfg.lease_ttl > MAX_LEASE_TTL {
            return Err(AgentError::Invalid(format!(
                "lease_ttl {:?} is out of range: 1 s to {} s",
                cfg.lease_ttl,
                MAX_LEASE_TTL.as_secs()
            )));
        }
        if cfg.tenants.is_empty() {
            return Err(AgentError::Invalid(format!(
                "host '{}' has no tenant network configured",
                cfg.host
            )));
        }
        plumbing.attach_uplink()?;
        let state = read_state_file(&cfg)?;
        for p in &state.creating {
            plumbing.remove_unfinished(p);
        }
        let mut endpoints = Vec::new();
        for mut ep in state.endpoints {
            if plumbing.revalidate(&mut ep)? {
                endpoints.push(ep);
            } else {
                log::warn!(
                    "host {}: endpoint '{}' recorded before the restart is gone; forgetting it",
                    cfg.host,
                    ep.name
                );
                plumbing.forget(&ep);
            }
        }
        let core = Core::new(cfg.spec(), endpoints)?;
        let agent = Arc::new(Self {
            core: Mutex::new(core),
            conn: Mutex::new(Connection {
                session: None,
                error: Some(format!("connecting to {}", describe_cfg(&store_cfg))),
            }),
            maps: Mutex::new(maps),
            plumbing,
            cfg,
            store_cfg,
            names: Arc::default(),
            state_write: Mutex::new(()),
            session_reset: tokio::sync::Notify::new(),
            observer,
            policy_writer: std::sync::OnceLock::new(),
            telemetry: metrics::Telemetry::default(),
            routing: std::sync::OnceLock::new(),
        });
        agent.save_state()?;
        Ok(agent)
    }

    /// The agent's configuration.
    pub fn config(&self) -> &AgentConfig {
        &self.cfg
    }

    fn save_state(&self) -> Result<(), AgentError> {
        let _writing = lock(&self.state_write);
        let state = {
            let core = lock(&self.core);
            StateFile {
                endpoints: core.endpoints().cloned().collect(),
                creating: core.creating().cloned().collect(),
            }
        };
        let path = &self.cfg.state_file;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| AgentError::Io {
                what: format!("creating {}", dir.display()),
                source,
            })?;
        }
        let tmp = path.with_extension("tmp");
        let json = serde_json::to_vec_pretty(&state).map_err(|e| AgentError::Io {
            what: format!("encoding {}", path.display()),
            source: std::io::Error::other(e),
        })?;
        // Written whole and renamed: a crash leaves the old record or the new one, never half.
        std::fs::File::create(&tmp)
            .and_then(|mut f| {
                use std::io::Write;
                f.write_all(&json)?;
                f.sync_all()
            })
            .and_then(|_| std::fs::rename(&tmp, path))
            .map_err(|source| AgentError::Io {
                what: format!("writing {}", path.display()),
                source,
            })
    }

    /// Executes what the core decided: logs its warnings and writes its map operations (under
    /// the core's lock, so that operations reach the maps in the order they were decided).
    /// Returns the publications, which need the store.
    fn execute(&self, out: Output) -> Result<Vec<Publication>, AgentError> {
        for w in &out.warnings {
            log::error!("host {}: {w}", self.cfg.host);
        }
        if !out.ops.is_empty() {
            lock(&self.maps).apply(&out.ops)?;
            log::debug!(
                "host {}: {} policy and {} mapping map changes",
                self.cfg.host,
                out.ops.policy.len(),
                out.ops.mappings.len()
            );
            if let Some(obs) = &self.observer {
                let now = Instant::now();
                for (k, _) in &out.ops.mappings.out_put {
                    let _ = obs.send((self.cfg.host.clone(), *k, now));
                }
            }
        }
        Ok(out.publish)
    }
}

fn describe_cfg(cfg: &StoreConfig) -> String {
    match cfg {
        StoreConfig::Embedded(_) => "embedded".into(),
        StoreConfig::Etcd { endpoints, .. } => format!("etcd {}", endpoints.join(",")),
    }
}

/// The endpoints an agent with this configuration has recorded (survives the agent; read by
/// `lab down` to find the namespaces it created).
pub fn read_state(cfg: &AgentConfig) -> Result<Vec<LocalEndpoint>, AgentError> {
    read_state_file(cfg).map(|s| s.endpoints)
}

/// Every namespace the agent's record names: its endpoints' and those being created when the
/// agent stopped (for `lab down`, which removes them all).
pub fn recorded_netns(cfg: &AgentConfig) -> Result<Vec<String>, AgentError> {
    let s = read_state_file(cfg)?;
    Ok(s.endpoints
        .into_iter()
        .map(|e| e.netns)
        .chain(s.creating.into_iter().map(|p| p.netns))
        .collect())
}

fn read_state_file(cfg: &AgentConfig) -> Result<StateFile, AgentError> {
    match std::fs::read(&cfg.state_file) {
        Ok(bytes) => serde_json::from_slice::<StateFile>(&bytes).map_err(|e| {
            AgentError::Invalid(format!(
                "agent state {} is unreadable: {e}",
                cfg.state_file.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(StateFile::default()),
        Err(source) => Err(AgentError::Io {
            what: format!("reading {}", cfg.state_file.display()),
            source,
        }),
    }
}
