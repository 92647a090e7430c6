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
pub mod core;
pub mod endpoint;
pub mod host_config;
pub mod io;
pub mod metrics;
pub mod policy_sync;
pub mod reconcile;
pub mod routing;
mod server;

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv6Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use dataplane::HostDataplane;
use ila::{ChecksumMode, Identifier, Locator, TenantNetwork};
use serde::{Deserialize, Serialize};
use store::{Lease, MappingRecord, Snapshot, Store, StoreConfig, StoreEvent};

use crate::api::{
    AgentStatus, CniAttachment, CniAttachmentId, CniGcReply, ExplainReply, MappingRow, PolicyRow,
};
use crate::core::{Core, HostSpec, Output, Publication};
use crate::io::{CreateEndpoint, KernelMaps, KernelPlumbing, MappingMap, Maps, Plumbing};
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

/// A blocking task whose result is not an `AgentError` result (joined with
/// [`BlockingTask::join_blocking`]).
struct BlockingTask<T>(Option<tokio::task::JoinHandle<T>>);

impl<T> BlockingTask<T> {
    async fn join_blocking(&mut self) -> Result<T, AgentError> {
        match self.0.take() {
            Some(h) => h
                .await
                .map_err(|e| AgentError::Internal(format!("agent task failed: {e}"))),
            None => Err(AgentError::Internal("task joined twice".into())),
        }
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

    /// Writes our own records back where the store lost them: a mapping of one of our
    /// endpoints (or our host record) deleted behind our back, by hand or by a tool, would
    /// otherwise leave the endpoint unreachable until the agent restarts.
    async fn publish(
        &self,
        store: &Store,
        lease: &Lease,
        publications: Vec<Publication>,
    ) -> Result<(), AgentError> {
        for p in publications {
            match p {
                Publication::Host(h) => {
                    store.put_host(&h, lease).await?;
                    log::warn!(
                        "host {}: host record was missing from the store; written again",
                        self.cfg.host
                    );
                }
                Publication::Mapping(rec) => {
                    store.put_mapping(&rec, lease).await?;
                    log::warn!(
                        "host {}: mapping of {} was deleted from the store behind our back; written again",
                        self.cfg.host,
                        rec.sir_address()
                    );
                }
            }
        }
        Ok(())
    }

    /// Runs the store session forever: connect, publish, resync, watch; on any failure back off
    /// and start again. `ready` is signalled once after the first publication (so agents sharing
    /// one process publish before any of them sweeps).
    pub async fn run(self: Arc<Self>, mut ready: Option<Arc<tokio::sync::Barrier>>) {
        tokio::spawn(Arc::clone(&self).expire_conntrack_forever());
        let mut backoff = BACKOFF_MIN;
        loop {
            let started = Instant::now();
            let result = self.session(&mut ready).await;
            let reason = match result {
                Ok(()) => "session ended".to_string(),
                Err(e) => e.to_string(),
            };
            log::warn!(
                "host {}: store session ended ({reason}); data path kept as it is; retrying in {backoff:?}",
                self.cfg.host
            );
            *lock(&self.conn) = Connection {
                session: None,
                error: Some(reason),
            };
            if started.elapsed() > Duration::from_secs(10) {
                backoff = BACKOFF_MIN;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Removes idle conntrack entries now and then. The LRU map evicts under pressure anyway;
    /// this bounds how long an idle flow keeps passing without a policy check.
    async fn expire_conntrack_forever(self: Arc<Self>) {
        loop {
            tokio::time::sleep(CT_SWEEP_EVERY).await;
            let removed = lock(&self.maps).expire_conntrack(CT_IDLE);
            match removed {
                Ok(0) => {}
                Ok(n) => log::debug!("host {}: {n} idle conntrack entries expired", self.cfg.host),
                Err(e) => log::warn!("host {}: conntrack expiry: {e}", self.cfg.host),
            }
        }
    }

    async fn session(
        self: &Arc<Self>,
        ready: &mut Option<Arc<tokio::sync::Barrier>>,
    ) -> Result<(), AgentError> {
        let store = Store::connect(&self.store_cfg).await?;
        let lease = store.grant_lease(self.cfg.lease_ttl).await?;
        let (host, records) = {
            let core = lock(&self.core);
            let records: Vec<_> = core.endpoints().map(|ep| core.record_of(ep)).collect();
            (core.host_record(), records)
        };
        store.put_host(&host, &lease).await?;
        for rec in &records {
            store.put_mapping(rec, &lease).await?;
        }
        *lock(&self.conn) = Connection {
            session: Some((store.clone(), lease)),
            error: None,
        };
        log::info!(
            "host {}: connected to {}, lease {}, {} endpoints published",
            self.cfg.host,
            store.describe(),
            lease.id,
            records.len()
        );
        if let Some(barrier) = ready.take() {
            barrier.wait().await;
        }
        // Its own task: no parsing, compiling or map writing below can delay a keep-alive.
        let mut keepalive = {
            let store = store.clone();
            AbortOnDrop(tokio::spawn(async move {
                loop {
                    tokio::time::sleep(lease.ttl / 3).await;
                    if let Err(e) = store.keep_alive(&lease).await {
                        return Err::<(), _>(AgentError::from(e));
                    }
                }
            }))
        };
        let sync = async {
            loop {
                let snap = store.snapshot().await?;
                let from = snap.revision + 1;
                // Decoding and compiling policies is CPU work: off the async threads.
                let me = Arc::clone(self);
                let publications = blocking(move || me.full_resync(snap)).await?;
                self.publish(&store, &lease, publications).await?;
                let mut watch = store.watch(from).await?;
                while let Some(item) = watch.next().await {
                    match item {
                        Ok(ev) => {
                            if ev.event == StoreEvent::Resync {
                                break;
                            }
                            let heavy = matches!(
                                ev.event,
                                StoreEvent::PutPolicy(_)
                                    | StoreEvent::DeletePolicy(_)
                                    | StoreEvent::PutIdentity(_)
                            );
                            let publications = if heavy {
                                let me = Arc::clone(self);
                                blocking(move || me.on_event(ev.revision, ev.event)).await?
                            } else {
                                self.on_event(ev.revision, ev.event)?
                            };
                            self.publish(&store, &lease, publications).await?;
                        }
                        Err(e) if !e.ends_watch() => {
                            log::error!("host {}: {e}; skipped", self.cfg.host)
                        }
                        Err(e) => return Err(AgentError::from(e)),
                    }
                }
            }
        };
        let reset = async {
            self.session_reset.notified().await;
            Err(AgentError::Store(store::StoreError::LeaseExpired(lease.id)))
        };
        let result: Result<(), AgentError> = tokio::select! {
            r = keepalive.join() => r,
            r = sync => r,
            r = reset => r,
        };
        result
    }

    /// Makes the maps equal to a snapshot (mark and sweep against the maps as read).
    fn full_resync(&self, snap: Snapshot) -> Result<Vec<Publication>, AgentError> {
        let started = Instant::now();
        let revision = snap.revision;
        let mut core = lock(&self.core);
        let current = lock(&self.maps).current()?;
        let out = core.resync(snap, &current);
        let (written, swept) = (
            out.ops.mappings.out_put.len() + out.ops.mappings.in_put.len(),
            out.ops.mappings.out_del.len() + out.ops.mappings.in_del.len(),
        );
        let publications = self.execute(out)?;
        log::info!(
            "host {}: resynced at revision {revision}: {} mappings ({written} written, {swept} swept)",
            self.cfg.host,
            core.view().len(),
        );
        drop(core);
        self.telemetry.observe_resync(started.elapsed());
        Ok(publications)
    }

    /// Applies one watched change.
    fn on_event(&self, revision: i64, event: StoreEvent) -> Result<Vec<Publication>, AgentError> {
        let mut core = lock(&self.core);
        let out = core.event(revision, event);
        self.execute(out)
    }

    /// Stores the policies of one file; if any write fails, the ones written are rolled back.
    pub async fn apply_policies(
        &self,
        records: Vec<store::PolicyRecord>,
    ) -> Result<Vec<String>, AgentError> {
        if records.is_empty() {
            return Err(AgentError::Invalid("no policies to apply".into()));
        }
        // Check they decode and compile together with what is in force before storing any
        // (CPU work: off the async threads).
        let mut trial = lock(&self.core).policy_trial();
        let records = blocking(move || {
            for r in &records {
                trial.put_policy(r).map_err(AgentError::Invalid)?;
            }
            trial
                .recompile()
                .map_err(|e| AgentError::Invalid(format!("policies do not compile: {e}")))?;
            Ok(records)
        })
        .await?;
        let (store, _) = self.wait_session().await?;
        let previous: Vec<Option<store::PolicyRecord>> = {
            let core = lock(&self.core);
            records
                .iter()
                .map(|r| core.policy_record(&r.name).cloned())
                .collect()
        };
        for (i, r) in records.iter().enumerate() {
            if let Err(e) = store.put_policy(r).await {
                for (done, prev) in records[..i].iter().zip(&previous) {
                    let undo = match prev {
                        Some(p) => store.put_policy(p).await.map(|_| ()),
                        None => store.delete_policy(&done.name).await.map(|_| ()),
                    };
                    if let Err(u) = undo {
                        log::error!("rolling back policy '{}': {u}", done.name);
                    }
                }
                return Err(e.into());
            }
        }
        Ok(records.into_iter().map(|r| r.name).collect())
    }

    /// Removes a policy from the store.
    pub async fn delete_policy(&self, name: &str) -> Result<(), AgentError> {
        let (store, _) = self.wait_session().await?;
        store.delete_policy(name).await?;
        Ok(())
    }

    /// The policies in force.
    pub fn policy_list(&self) -> Vec<PolicyRow> {
        lock(&self.core).policy_list()
    }

    /// The verdict for a packet from `from` to `to` and the rule that gave it.
    pub fn explain(
        &self,
        from: &str,
        to: &str,
        port: u16,
        proto: &str,
    ) -> Result<ExplainReply, AgentError> {
        lock(&self.core).explain(from, to, port, proto)
    }

    /// The store session, waiting briefly if it is being re-established (a store member died,
    /// a lease was renewed): a change is refused only when the store stays away.
    async fn wait_session(&self) -> Result<(Store, Lease), AgentError> {
        let deadline = Instant::now() + SESSION_WAIT;
        loop {
            match self.session_handle() {
                Ok(s) => return Ok(s),
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// After a change failed on the store: ends the session (a new one reconnects, which drops
    /// a connection to a dead member, and renews an expired lease) unless the session loop
    /// already replaced it, so that the retry waits for a fresh one.
    fn reset_session(&self, failed: &store::StoreError, lease_id: i64) {
        let mut conn = lock(&self.conn);
        if conn.session.as_ref().is_some_and(|(_, l)| l.id == lease_id) {
            *conn = Connection {
                session: None,
                error: Some(format!("{failed}; reconnecting")),
            };
            self.session_reset.notify_one();
        }
    }

    fn session_handle(&self) -> Result<(Store, Lease), AgentError> {
        let conn = lock(&self.conn);
        match &conn.session {
            Some((s, l)) => Ok((s.clone(), *l)),
            None => Err(AgentError::NoStore(
                conn.error.clone().unwrap_or_else(|| "no session".into()),
            )),
        }
    }

    /// Creates an endpoint on this host and publishes its mapping. With `identifier`, that
    /// identifier is used (a planned address, or a move when `replace` is set: the mapping is
    /// overwritten instead of created). Nothing is left behind on failure.
    pub async fn add_endpoint(
        self: &Arc<Self>,
        name: &str,
        tenant: Option<&str>,
        identifier: Option<Identifier>,
        replace: bool,
        labels: BTreeMap<String, String>,
    ) -> Result<LocalEndpoint, AgentError> {
        let started = Instant::now();
        let ep = self
            .add_endpoint_in(
                name,
                &endpoint::Sandbox::Own,
                tenant,
                identifier,
                replace,
                labels,
            )
            .await?;
        self.telemetry
            .observe_endpoint_created(metrics::Via::Api, started.elapsed());
        Ok(ep)
    }

    /// [`Agent::add_endpoint`] in a namespace of the agent's own or a runtime's.
    ///
    /// The plumbing (veth, addresses, routes, the program's attachment: most of the time, much
    /// of it the kernel's) runs while the identity is looked up and the mapping is published;
    /// if either side fails, the other is undone.
    async fn add_endpoint_in(
        self: &Arc<Self>,
        name: &str,
        sandbox: &endpoint::Sandbox,
        tenant: Option<&str>,
        identifier: Option<Identifier>,
        replace: bool,
        labels: BTreeMap<String, String>,
    ) -> Result<LocalEndpoint, AgentError> {
        let t0 = Instant::now();
        let plan = lock(&self.core).plan_add(name, tenant, identifier, &labels)?;
        let _name = self.names.lock(name).await;
        let (mut store, mut lease) = self.wait_session().await?;
        lock(&self.core).check_name_free(name, replace)?;
        let mut identity = lock(&self.core).identity_of(&plan.identity_labels);
        let mut attempts = 0;
        loop {
            attempts += 1;
            let (id, sir_addr) =
                lock(&self.core).choose_address(&plan.tenant, identifier, replace)?;
            // Recorded before anything is made, so no crash can leave an unrecorded namespace.
            self.set_creating(name, Some(sandbox))?;
            let t_plumb = Instant::now();
            let req = CreateEndpoint {
                name: name.to_string(),
                sandbox: sandbox.clone(),
                identifier: id,
                sir_addr,
                labels: labels.clone(),
                identity: 0,
            };
            let plumbing = Arc::clone(&self.plumbing);
            let mut plumbed = BlockingTask(Some(tokio::task::spawn_blocking(move || {
                let r = plumbing.create(&req);
                (r, t_plumb.elapsed())
            })));
            // Meanwhile: the identity (known labels need no store round trip; identities are
            // never deleted) and the mapping.
            let ident = match identity {
                Some(i) => Ok(i),
                None => {
                    match self
                        .allocate_identity(&mut store, &mut lease, &plan.identity_labels)
                        .await
                    {
                        Ok(i) => {
                            identity = Some(i);
                            Ok(i)
                        }
                        Err(e) => Err(e),
                    }
                }
            };
            let t_identity = t0.elapsed();
            let published = match ident {
                Ok(i) => {
                    let rec = {
                        let mut core = lock(&self.core);
                        // Known before the endpoint is installed, so its first packet meets a
                        // compiled policy.
                        let out = core.learn_identity(i, &plan.identity_labels);
                        self.execute(out)?;
                        core.record_for(name, id, sir_addr, i)
                    };
                    self.publish_mapping(&rec, replace, name, &mut store, &mut lease)
                        .await
                        .map_err(AgentError::from)
                }
                Err(e) => Err(e),
            };
            let t_publish = t0.elapsed();
            let (created, plumb_time) = plumbed.join_blocking().await?;
            match (created, published) {
                (Ok(mut ep), Ok(())) => {
                    ep.identity = identity.unwrap_or_default();
                    let t_save = Instant::now();
                    {
                        let mut core = lock(&self.core);
                        let out = core.endpoint_added(ep.clone());
                        self.execute(out)?;
                    }
                    self.save_state()?;
                    log::debug!(
                        "host {}: endpoint {name} added in {:?}: identity by {t_identity:?}, \
                         published by {t_publish:?}, plumbing {plumb_time:?}, install and record {:?}",
                        self.cfg.host,
                        t0.elapsed(),
                        t_save.elapsed()
                    );
                    return Ok(ep);
                }
                (Err(e), published) => {
                    if published.is_ok() {
                        self.unpublish(sir_addr, replace, &store).await;
                    }
                    if identifier.is_none() {
                        lock(&self.core).release_identifier(id);
                    }
                    self.set_creating(name, None)?;
                    return Err(e);
                }
                (Ok(ep), Err(e)) => {
                    let plumbing = Arc::clone(&self.plumbing);
                    let ep2 = ep.clone();
                    match blocking(move || plumbing.destroy(&ep2)).await {
                        Ok(()) => self.set_creating(name, None)?,
                        // Stays recorded: the next start (or `lab down`) removes it.
                        Err(c) => {
                            log::error!(
                                "host {}: cleaning up endpoint '{name}': {c}",
                                self.cfg.host
                            )
                        }
                    }
                    match e {
                        // Taken by another host meanwhile: that identifier stays allocated
                        // here (so it is not chosen again) and the next one is tried.
                        AgentError::Store(store::StoreError::AddressInUse { .. })
                            if identifier.is_none() && attempts < 32 =>
                        {
                            continue
                        }
                        e => {
                            if identifier.is_none() {
                                lock(&self.core).release_identifier(id);
                            }
                            return Err(e);
                        }
                    }
                }
            }
        }
    }

    /// Allocates the identity of a label set in the store. Idempotent: one retry covers a
    /// request lost with a dying store member.
    async fn allocate_identity(
        &self,
        store: &mut Store,
        lease: &mut Lease,
        labels: &policy::LabelSet,
    ) -> Result<u32, AgentError> {
        let text = labels.to_string();
        match store.allocate_identity(&text).await {
            Err(e @ store::StoreError::Unavailable { .. }) => {
                self.reset_session(&e, lease.id);
                (*store, *lease) = self.wait_session().await?;
                Ok(store.allocate_identity(&text).await?)
            }
            other => Ok(other?),
        }
    }

    /// Writes a new endpoint's mapping (created, or overwritten for a move). A write lost with
    /// a dying store member, or whose lease went with it, is tried once more on the session
    /// the session loop re-establishes; if the first attempt did land, the create then finds
    /// this very endpoint's record, which is success.
    async fn publish_mapping(
        &self,
        rec: &MappingRecord,
        replace: bool,
        name: &str,
        store: &mut Store,
        lease: &mut Lease,
    ) -> Result<(), store::StoreError> {
        let write = |store: Store, lease: Lease| {
            let rec = rec.clone();
            async move {
                if replace {
                    store.put_mapping(&rec, &lease).await.map(|_| ())
                } else {
                    store.create_mapping(&rec, &lease).await.map(|_| ())
                }
            }
        };
        match write(store.clone(), *lease).await {
            Err(
                e @ (store::StoreError::Unavailable { .. } | store::StoreError::LeaseExpired(_)),
            ) => {
                self.reset_session(&e, lease.id);
                let (s, l) = self.wait_session().await.map_err(|_| e)?;
                (*store, *lease) = (s, l);
                match write(store.clone(), *lease).await {
                    Err(store::StoreError::AddressInUse { owner_endpoint, .. })
                        if owner_endpoint == name =>
                    {
                        Ok(())
                    }
                    other => other,
                }
            }
            other => other,
        }
    }

    /// Takes back a mapping published for an endpoint whose plumbing then failed (a replaced
    /// mapping of a move is left: its old host still serves it until the move is retried).
    async fn unpublish(&self, sir: Ipv6Addr, replace: bool, store: &Store) {
        if replace {
            return;
        }
        if let Err(e) = store.delete_mapping(sir).await {
            log::error!(
                "host {}: taking back the mapping of {sir}: {e} (its lease ends it)",
                self.cfg.host
            );
        }
    }

    /// Records (or forgets) an endpoint under construction in the state file.
    fn set_creating(
        &self,
        name: &str,
        creating: Option<&endpoint::Sandbox>,
    ) -> Result<(), AgentError> {
        {
            let mut core = lock(&self.core);
            match creating {
                Some(sandbox) => {
                    let (netns, owns_netns) = match sandbox {
                        endpoint::Sandbox::Own => (endpoint::netns_name(&self.cfg, name), true),
                        endpoint::Sandbox::Runtime { netns, .. } => (netns.clone(), false),
                    };
                    core.begin_create(PendingEndpoint {
                        name: name.to_string(),
                        netns,
                        host_ifname: endpoint::host_ifname(name),
                        owns_netns,
                    });
                }
                None => core.abandon_create(name),
            }
        }
        self.save_state()
    }

    /// Removes an endpoint of this host; with `keep_mapping` its mapping stays in the store (the
    /// endpoint is moving and the new host overwrites it).
    pub async fn del_endpoint(
        self: &Arc<Self>,
        name: &str,
        keep_mapping: bool,
    ) -> Result<(), AgentError> {
        let _name = self.names.lock(name).await;
        let ep = lock(&self.core).endpoint(name)?.clone();
        if !keep_mapping {
            let (store, _) = self.wait_session().await?;
            let ours = lock(&self.core).begin_withdraw(ep.sir_addr);
            if ours {
                if let Err(e) = store.delete_mapping(ep.sir_addr).await {
                    lock(&self.core).abort_withdraw(ep.sir_addr);
                    return Err(e.into());
                }
            }
        }
        if ep.container_id.is_none() {
            // Our own namespace: gone when the request returns (`ilanet endpoint del`).
            let plumbing = Arc::clone(&self.plumbing);
            let ep2 = ep.clone();
            blocking(move || plumbing.destroy(&ep2)).await?;
            {
                let mut core = lock(&self.core);
                let out = core.endpoint_removed(name, keep_mapping);
                self.execute(out)?;
            }
            return self.save_state();
        }
        // A runtime's container (CNI DEL): its mapping and entries go now; the veth — whose
        // deletion is the kernel's slowest step, and which goes anyway with the namespace the
        // runtime removes next — goes in the background, recorded as unfinished until then (a
        // restart finishes it). The name stays locked meanwhile: a new ADD of the same
        // container waits for it.
        {
            let mut core = lock(&self.core);
            let out = core.endpoint_removed(name, keep_mapping);
            self.execute(out)?;
            core.begin_create(PendingEndpoint {
                name: ep.name.clone(),
                netns: ep.netns.clone(),
                host_ifname: ep.host_ifname.clone(),
                owns_netns: false,
            });
        }
        self.save_state()?;
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let held = _name;
            let plumbing = Arc::clone(&me.plumbing);
            let ep2 = ep.clone();
            match blocking(move || plumbing.destroy(&ep2)).await {
                Ok(()) => {
                    lock(&me.core).abandon_create(&ep.name);
                    if let Err(e) = me.save_state() {
                        log::error!("host {}: {e}", me.cfg.host);
                    }
                }
                Err(e) => log::error!(
                    "host {}: removing the veth of endpoint '{}': {e} (the next start retries)",
                    me.cfg.host,
                    ep.name
                ),
            }
            drop(held);
        });
        Ok(())
    }

    /// Attaches a container a runtime created (CNI ADD). The endpoint is named after the
    /// container and interface, so a repeated ADD finds the attachment instead of making a
    /// second one.
    pub async fn cni_add(
        self: &Arc<Self>,
        container_id: &str,
        netns: &str,
        ifname: &str,
        tenant: Option<&str>,
        labels: BTreeMap<String, String>,
    ) -> Result<CniAttachment, AgentError> {
        let started = Instant::now();
        endpoint::validate_cni(container_id, ifname, Some(netns))?;
        let name = endpoint::cni_endpoint_name(container_id, ifname);
        if let Some(ep) = lock(&self.core).cni_endpoint(container_id, ifname) {
            return Err(AgentError::Conflict(format!(
                "container {container_id} already has interface {ifname} attached (endpoint '{}', {}); delete it first",
                ep.name, ep.sir_addr
            )));
        }
        let sandbox = endpoint::Sandbox::Runtime {
            netns: netns.to_string(),
            ifname: ifname.to_string(),
            container_id: container_id.to_string(),
        };
        let ep = self
            .add_endpoint_in(&name, &sandbox, tenant, None, false, labels)
            .await?;
        self.telemetry
            .observe_endpoint_created(metrics::Via::Cni, started.elapsed());
        Ok(lock(&self.core).attachment_of(&ep))
    }

    /// Detaches a container (CNI DEL): idempotent, and fine when its namespace is gone.
    pub async fn cni_del(
        self: &Arc<Self>,
        container_id: &str,
        ifname: &str,
    ) -> Result<(), AgentError> {
        endpoint::validate_cni(container_id, ifname, None)?;
        let found = lock(&self.core)
            .cni_endpoint(container_id, ifname)
            .map(|e| e.name.clone());
        match found {
            Some(name) => self.del_endpoint(&name, false).await,
            None => Ok(()),
        }
    }

    /// Verifies an attachment (CNI CHECK): namespace, interface, address, default route, host
    /// veth, and this host's mapping in the store's view and the maps.
    pub async fn cni_check(
        self: &Arc<Self>,
        container_id: &str,
        ifname: &str,
        netns: &str,
    ) -> Result<CniAttachment, AgentError> {
        endpoint::validate_cni(container_id, ifname, Some(netns))?;
        let ep = lock(&self.core)
            .cni_endpoint(container_id, ifname)
            .cloned()
            .ok_or_else(|| {
                AgentError::NotFound(format!(
                    "container {container_id} has no interface {ifname} attached on host '{}'",
                    self.cfg.host
                ))
            })?;
        if ep.netns != netns {
            return Err(AgentError::Invalid(format!(
                "container {container_id} is attached in namespace {}, not {netns}",
                ep.netns
            )));
        }
        // Netlink queries block (and run a runtime of their own): off the async threads.
        let (plumbing, ep2) = (Arc::clone(&self.plumbing), ep.clone());
        blocking(move || plumbing.check(&ep2)).await?;
        let core = lock(&self.core);
        match core.view().get(&ep.sir_addr) {
            Some(r) if r.host == self.cfg.host && r.endpoint == ep.name => {}
            Some(r) => {
                return Err(AgentError::Invalid(format!(
                    "the store maps {} to endpoint '{}' on host '{}', not to this attachment",
                    ep.sir_addr, r.endpoint, r.host
                )))
            }
            None => {
                return Err(AgentError::Invalid(format!(
                    "the store holds no mapping of {} (yet)",
                    ep.sir_addr
                )))
            }
        }
        let installed = lock(&self.maps).get_out(ep.sir_addr)?.is_some();
        if !installed {
            return Err(AgentError::Invalid(format!(
                "the out-map of host '{}' lacks {}",
                self.cfg.host, ep.sir_addr
            )));
        }
        Ok(core.attachment_of(&ep))
    }

    /// Removes every CNI attachment not in `valid` (CNI GC); endpoints the agent made itself
    /// are never touched.
    pub async fn cni_gc(
        self: &Arc<Self>,
        valid: &[CniAttachmentId],
    ) -> Result<CniGcReply, AgentError> {
        let keep: std::collections::BTreeSet<(&str, &str)> = valid
            .iter()
            .map(|a| (a.container_id.as_str(), a.ifname.as_str()))
            .collect();
        let stale: Vec<LocalEndpoint> = lock(&self.core)
            .endpoints()
            .filter(|ep| {
                ep.container_id
                    .as_deref()
                    .is_some_and(|c| !keep.contains(&(c, ep.ifname.as_str())))
            })
            .cloned()
            .collect();
        let mut removed = Vec::new();
        for ep in stale {
            self.del_endpoint(&ep.name, false).await?;
            removed.push(CniAttachmentId {
                container_id: ep.container_id.unwrap_or_default(),
                ifname: ep.ifname,
            });
        }
        Ok(CniGcReply { removed })
    }

    /// This host's endpoints.
    pub fn endpoints(&self) -> Vec<LocalEndpoint> {
        lock(&self.core).endpoints().cloned().collect()
    }

    /// Every mapping in the view, and whether the out-map holds it.
    pub fn mappings(&self) -> Result<Vec<MappingRow>, AgentError> {
        let core = lock(&self.core);
        let out: HashMap<Ipv6Addr, dataplane::OutEntry> =
            lock(&self.maps).out_entries()?.into_iter().collect();
        Ok(core.mapping_rows(&out))
    }

    /// Hands the agent its BGP speaker (once), so that the API can report it.
    pub fn set_routing(&self, routing: Arc<routing::Routing>) -> Result<(), AgentError> {
        self.routing
            .set(routing)
            .map_err(|_| AgentError::Conflict("the BGP speaker is set already".into()))
    }

    /// The BGP speaker.
    pub fn routing(&self) -> Result<&Arc<routing::Routing>, AgentError> {
        self.routing.get().ok_or_else(|| {
            AgentError::NotFound(format!(
                "host '{}' runs no BGP speaker (its configuration has no `bgp` section)",
                self.cfg.host
            ))
        })
    }

    /// Latencies and call counts recorded for the metrics endpoint.
    pub fn telemetry(&self) -> &metrics::Telemetry {
        &self.telemetry
    }

    /// The agent's state as a metrics scrape reports it: a short look under the state lock,
    /// then the counters and the fill of the mapping maps (walked: they hold one entry per
    /// mapping or endpoint), under the maps lock.
    pub fn sample(&self) -> metrics::Sample {
        let (revision, resyncs, endpoints, mappings, pf) = {
            let core = lock(&self.core);
            (
                core.revision(),
                core.resyncs(),
                core.endpoints().count(),
                core.view().len(),
                core.policy_fill(),
            )
        };
        let (connected, lease) = {
            let conn = lock(&self.conn);
            (
                conn.session.is_some(),
                conn.session.as_ref().map(|(_, l)| (l.id, l.ttl)),
            )
        };
        let mut maps = lock(&self.maps);
        let mut fill = |name, map: Option<MappingMap>, known: usize, capacity| {
            let entries = match map {
                Some(m) => maps
                    .fill(m)
                    .map_err(|e| log::debug!("host {}: metrics: {e}", self.cfg.host))
                    .ok(),
                None => Some(known),
            };
            metrics::MapFill {
                map: name,
                entries,
                capacity,
            }
        };
        let maps_fill = vec![
            fill(
                "ILA_OUT",
                Some(MappingMap::Out),
                0,
                dataplane::OUT_MAX_ENTRIES,
            ),
            fill("ILA_IN", Some(MappingMap::In), 0, dataplane::IN_MAX_ENTRIES),
            fill(
                "ILA_ENDPOINTS",
                Some(MappingMap::Endpoints),
                0,
                dataplane::ENDPOINTS_MAX_ENTRIES,
            ),
            fill(
                "ILA_IPCACHE",
                Some(MappingMap::Ipcache),
                0,
                dataplane::IPCACHE_MAX_ENTRIES,
            ),
            fill(
                "POLICY_EP",
                None,
                pf.endpoints,
                dataplane::POLICY_EP_MAX_ENTRIES,
            ),
            fill("POLICY", None, pf.rules, dataplane::POLICY_MAX_ENTRIES),
            fill(
                "POLICY_CIDR",
                None,
                pf.cidr,
                dataplane::POLICY_CIDR_MAX_ENTRIES,
            ),
        ];
        let counters = maps.counters().ok();
        drop(maps);
        metrics::Sample {
            host: self.cfg.host.clone(),
            connected,
            lease,
            revision,
            resyncs,
            endpoints,
            mappings,
            counters,
            maps: maps_fill,
        }
    }

    /// The agent's state.
    pub fn status(&self) -> AgentStatus {
        let (revision, mappings, endpoints, resyncs) = {
            let core = lock(&self.core);
            (
                core.revision(),
                core.view().len(),
                core.endpoints().count(),
                core.resyncs(),
            )
        };
        let (store, store_connected, store_error, lease) = {
            let conn = lock(&self.conn);
            (
                conn.session
                    .as_ref()
                    .map(|(s, _)| s.describe())
                    .unwrap_or_else(|| describe_cfg(&self.store_cfg)),
                conn.session.is_some(),
                conn.error.clone(),
                conn.session.as_ref().map(|(_, l)| l.id),
            )
        };
        let mut maps = lock(&self.maps);
        AgentStatus {
            host: self.cfg.host.clone(),
            locator: self.cfg.locator.to_string(),
            store,
            store_connected,
            store_error,
            lease,
            revision,
            mappings,
            endpoints,
            out_entries: maps.fill(MappingMap::Out).unwrap_or(0),
            in_entries: maps.fill(MappingMap::In).unwrap_or(0),
            resyncs,
            counters: maps.counters().ok(),
            tenants: self.cfg.tenants.clone(),
        }
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
