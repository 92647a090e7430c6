//! The ilanet agent, one per host. It owns the host's locator, creates and deletes endpoints,
//! publishes their mappings to the store under its lease, watches every mapping and keeps the
//! host's eBPF maps equal to the store's view (list, then watch from that revision; every full
//! resync is a mark and sweep), and serves a local API on a unix socket.
//!
//! When the store is unreachable the agent retries with backoff and leaves the data path at its
//! last known state; when it comes back the agent republishes its endpoints and resyncs.

pub mod api;
pub mod endpoint;
pub mod host_config;
pub mod maps_io;
pub mod metrics;
pub mod policy_sync;
pub mod reconcile;
mod server;

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv6Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use dataplane::{HostDataplane, ProgramKind};
use ila::SirPrefix;
use ila::{ChecksumMode, Identifier, IdentifierAllocator, Locator, TenantNetwork};
use serde::{Deserialize, Serialize};
use store::{HostRecord, Lease, MappingRecord, Snapshot, Store, StoreConfig, StoreEvent};

use crate::api::{
    AgentStatus, CniAttachment, CniAttachmentId, CniGcReply, ExplainReply, MappingRow, PolicyRow,
};
use crate::policy_sync::PolicyView;
use crate::reconcile::LocalEndpoint;

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

/// What can go wrong in the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A bad request; nothing was changed.
    #[error("{0}")]
    Invalid(String),
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
}

/// Notified each time a mapping is written into this host's out-map (for convergence
/// measurements): host, SIR address, when.
pub type InstallObserver = tokio::sync::mpsc::UnboundedSender<(String, Ipv6Addr, Instant)>;

struct Session {
    store: Store,
    lease: Lease,
}

struct Inner {
    endpoints: BTreeMap<String, LocalEndpoint>,
    view: BTreeMap<Ipv6Addr, MappingRecord>,
    /// In-entries this agent installed, by SIR address (to remove them when a mapping moves).
    in_by_sir: HashMap<Ipv6Addr, Ipv6Addr>,
    session: Option<Session>,
    store_error: Option<String>,
    revision: i64,
    resyncs: u64,
    /// Policies and identities, and their compilation.
    policy: PolicyView,
    /// Policy records as stored (to roll back a failed apply).
    policy_records: BTreeMap<String, store::PolicyRecord>,
    /// One allocator per tenant network, by tenant name.
    allocators: HashMap<String, IdentifierAllocator>,
    /// Endpoints being plumbed right now (recorded in the state file first).
    creating: BTreeMap<String, PendingEndpoint>,
    /// Our own mappings being deleted on purpose (not to be reasserted meanwhile).
    withdrawing: std::collections::BTreeSet<Ipv6Addr>,
    /// Our host record was deleted from the store (to be written again).
    host_lost: bool,
    /// Entries of POLICY_EP, POLICY and POLICY_CIDR as last written (the maps equal the
    /// compilation after each successful sync; counting them at every scrape would walk up to
    /// a million entries).
    policy_fill: PolicyFill,
}

/// Entries of the three policy maps.
#[derive(Debug, Clone, Copy, Default)]
struct PolicyFill {
    endpoints: usize,
    rules: usize,
    cidr: usize,
}

impl PolicyFill {
    fn of(view: &PolicyView) -> Self {
        let c = view.compiled();
        Self {
            endpoints: c.endpoints.len(),
            rules: c.entries.len(),
            cidr: c.cidr_entries.len(),
        }
    }
}

/// One host's agent.
pub struct Agent {
    cfg: AgentConfig,
    store_cfg: StoreConfig,
    inner: Mutex<Inner>,
    dp: Mutex<HostDataplane>,
    /// Serialises endpoint changes (they span blocking plumbing and store calls).
    ops: tokio::sync::Mutex<()>,
    /// Ends the current store session (its lease was found expired outside the session loop).
    session_reset: tokio::sync::Notify,
    observer: Option<InstallObserver>,
    /// Latencies and call counts for the metrics endpoint.
    telemetry: metrics::Telemetry,
}

#[derive(Default, Serialize, Deserialize)]
struct StateFile {
    endpoints: Vec<LocalEndpoint>,
    /// Endpoints being created, recorded before their namespace exists: after a crash mid-way
    /// the restarted agent (or `lab down`) finds and removes what was made.
    #[serde(default)]
    creating: Vec<PendingEndpoint>,
}

/// An endpoint whose plumbing has started and not finished (see [`StateFile`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingEndpoint {
    /// Endpoint name.
    pub name: String,
    /// The namespace it is being given.
    pub netns: String,
    /// Its host-side veth.
    pub host_ifname: String,
    /// Whether the agent made the namespace (else a runtime did, and it is never removed).
    #[serde(default = "yes")]
    pub owns_netns: bool,
}

fn yes() -> bool {
    true
}

/// Runs CPU-bound or blocking work on the blocking pool so that the async threads (API, lease
/// keep-alives, watches) keep running.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, AgentError> + Send + 'static,
) -> Result<T, AgentError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| AgentError::Invalid(format!("agent task failed: {e}")))?
}

/// A spawned task that is aborted when its owner goes (the session that started it ended).
struct AbortOnDrop<T>(tokio::task::JoinHandle<Result<T, AgentError>>);

impl<T> AbortOnDrop<T> {
    async fn join(&mut self) -> Result<T, AgentError> {
        (&mut self.0)
            .await
            .map_err(|e| AgentError::Invalid(format!("agent task failed: {e}")))?
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
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
        endpoint::validate_name(&cfg.host)
            .map_err(|_| AgentError::Invalid(format!("host name '{}' is not valid", cfg.host)))?;
        if cfg.lease_ttl.is_zero() || cfg.lease_ttl > MAX_LEASE_TTL {
            return Err(AgentError::Invalid(format!(
                "lease_ttl {:?} is out of range: 1 s to {} s",
                cfg.lease_ttl,
                MAX_LEASE_TTL.as_secs()
            )));
        }
        dataplane::ensure_bpffs()?;
        let mut dp = HostDataplane::load(&cfg.pin_dir)?;
        // Anti-spoofing, conntrack, tenant isolation and policy are on wherever an agent runs.
        dp.maps().set_enforce(true)?;
        hostnet::netns::run_in(&cfg.host_netns, || {
            dp.attach(ProgramKind::FromWire, &cfg.uplink)
                .map_err(AgentError::from)
        })?;
        let state = read_state_file(&cfg)?;
        for p in &state.creating {
            endpoint::remove_unfinished(&cfg, p);
        }
        let mut endpoints = BTreeMap::new();
        for mut ep in state.endpoints {
            if endpoint::revalidate(&cfg, &mut ep) {
                // Re-attach: the program may be a newer build; the pinned link is updated in place.
                hostnet::netns::run_in(&cfg.host_netns, || {
                    dp.attach(ProgramKind::FromContainer, &ep.host_ifname)
                        .map_err(AgentError::from)
                })?;
                endpoints.insert(ep.name.clone(), ep);
            } else {
                log::warn!(
                    "host {}: endpoint '{}' recorded before the restart is gone; forgetting it",
                    cfg.host,
                    ep.name
                );
                endpoint::forget(&cfg, &ep);
            }
        }
        if cfg.tenants.is_empty() {
            return Err(AgentError::Invalid(format!(
                "host '{}' has no tenant network configured",
                cfg.host
            )));
        }
        // Start each host's allocation somewhere else so that hosts rarely collide; a
        // collision is still caught by the store's atomic create.
        let seed = endpoint::macs(&cfg.host).0;
        let start = (u32::from_be_bytes([seed[2], seed[3], seed[4], seed[5]]) & 0xffff) << 16 | 1;
        let mut allocators = HashMap::new();
        for t in &cfg.tenants {
            let mut a = IdentifierAllocator::for_vnid_range(t.vnid, start, u32::MAX)?;
            for ep in endpoints
                .values()
                .filter(|e: &&LocalEndpoint| t.owns(e.identifier))
            {
                let _ = a.reserve(ep.identifier);
            }
            allocators.insert(t.name.clone(), a);
        }
        // Counted once here (the pins may hold a previous run's policy); kept up to date by
        // every policy sync after this.
        let policy_fill = {
            let maps = dp.maps();
            PolicyFill {
                endpoints: maps.policy_eps().map(|v| v.len()).unwrap_or(0),
                rules: maps.policy_entries().map(|v| v.len()).unwrap_or(0),
                cidr: maps.cidr_entries().map(|v| v.len()).unwrap_or(0),
            }
        };
        let agent = Arc::new(Self {
            inner: Mutex::new(Inner {
                endpoints,
                view: BTreeMap::new(),
                in_by_sir: HashMap::new(),
                session: None,
                store_error: Some(format!("connecting to {}", describe_cfg(&store_cfg))),
                revision: 0,
                resyncs: 0,
                policy: PolicyView::default(),
                policy_records: BTreeMap::new(),
                allocators,
                creating: BTreeMap::new(),
                withdrawing: Default::default(),
                host_lost: false,
                policy_fill,
            }),
            dp: Mutex::new(dp),
            cfg,
            store_cfg,
            ops: tokio::sync::Mutex::new(()),
            session_reset: tokio::sync::Notify::new(),
            observer,
            telemetry: metrics::Telemetry::default(),
        });
        agent.save_state()?;
        Ok(agent)
    }

    /// The agent's configuration.
    pub fn config(&self) -> &AgentConfig {
        &self.cfg
    }

    fn save_state(&self) -> Result<(), AgentError> {
        let state = {
            let inner = lock(&self.inner);
            StateFile {
                endpoints: inner.endpoints.values().cloned().collect(),
                creating: inner.creating.values().cloned().collect(),
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

    /// The tenant network an endpoint belongs to (by its identifier's VNID).
    fn tenant_of(&self, id: Identifier) -> Option<&TenantNetwork> {
        self.cfg.tenants.iter().find(|t| t.owns(id))
    }

    fn tenant_named(&self, name: Option<&str>) -> Result<&TenantNetwork, AgentError> {
        match name {
            None => self
                .cfg
                .tenants
                .first()
                .ok_or_else(|| AgentError::Invalid("no tenant network configured".into())),
            Some(n) => self
                .cfg
                .tenants
                .iter()
                .find(|t| t.name == n)
                .ok_or_else(|| {
                    let names: Vec<_> = self.cfg.tenants.iter().map(|t| t.name.as_str()).collect();
                    AgentError::Invalid(format!(
                        "unknown tenant '{n}' (tenants: {})",
                        names.join(", ")
                    ))
                }),
        }
    }

    fn host_record(&self) -> HostRecord {
        HostRecord {
            name: self.cfg.host.clone(),
            locator: self.cfg.locator,
            underlay: self.cfg.underlay,
        }
    }

    fn record_of(&self, ep: &LocalEndpoint) -> MappingRecord {
        MappingRecord {
            endpoint: ep.name.clone(),
            host: self.cfg.host.clone(),
            sir: SirPrefix::from_addr(ep.sir_addr),
            identifier: ep.identifier,
            locator: self.cfg.locator,
            mode: self.cfg.csum_mode,
            identity: ep.identity,
        }
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
            lock(&self.inner).session = None;
            let reason = match result {
                Ok(()) => "session ended".to_string(),
                Err(e) => e.to_string(),
            };
            log::warn!(
                "host {}: store session ended ({reason}); data path kept as it is; retrying in {backoff:?}",
                self.cfg.host
            );
            lock(&self.inner).store_error = Some(reason);
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
            let removed = lock(&self.dp).maps().expire_conntrack(CT_IDLE);
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
        store.put_host(&self.host_record(), &lease).await?;
        let records: Vec<MappingRecord> = lock(&self.inner)
            .endpoints
            .values()
            .map(|ep| self.record_of(ep))
            .collect();
        for rec in &records {
            store.put_mapping(rec, &lease).await?;
        }
        {
            let mut inner = lock(&self.inner);
            inner.session = Some(Session {
                store: store.clone(),
                lease,
            });
            inner.store_error = None;
        }
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
                blocking(move || me.full_resync(snap)).await?;
                self.reassert(&store, &lease).await?;
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
                            let lost = matches!(
                                &ev.event,
                                StoreEvent::DeleteMapping(_) | StoreEvent::DeleteHost(_)
                            );
                            if heavy {
                                let me = Arc::clone(self);
                                blocking(move || me.apply(ev.revision, ev.event)).await?;
                            } else {
                                self.apply(ev.revision, ev.event)?;
                            }
                            if lost {
                                self.reassert(&store, &lease).await?;
                            }
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

    /// Writes our own records back where the store lost them: a mapping of one of our endpoints
    /// (or our host record) deleted behind our back, by hand or by a tool, would otherwise leave
    /// the endpoint unreachable until the agent restarts. Mappings another host now holds (a
    /// move) and those we are deleting ourselves are left alone.
    async fn reassert(&self, store: &Store, lease: &Lease) -> Result<(), AgentError> {
        let (missing, host_missing): (Vec<MappingRecord>, bool) = {
            let inner = lock(&self.inner);
            let missing = inner
                .endpoints
                .values()
                .filter(|ep| {
                    !inner.view.contains_key(&ep.sir_addr)
                        && !inner.withdrawing.contains(&ep.sir_addr)
                })
                .map(|ep| self.record_of(ep))
                .collect();
            (missing, inner.host_lost)
        };
        if host_missing {
            store.put_host(&self.host_record(), lease).await?;
            lock(&self.inner).host_lost = false;
            log::warn!(
                "host {}: host record was deleted from the store; written again",
                self.cfg.host
            );
        }
        for rec in &missing {
            store.put_mapping(rec, lease).await?;
            log::warn!(
                "host {}: mapping of {} was deleted from the store behind our back; written again",
                self.cfg.host,
                rec.sir_address()
            );
        }
        Ok(())
    }

    /// Makes the maps equal to a snapshot (mark and sweep).
    fn full_resync(&self, snap: Snapshot) -> Result<(), AgentError> {
        let started = Instant::now();
        for s in &snap.skipped {
            log::error!(
                "host {}: skipping store record {}: {}",
                self.cfg.host,
                s.key,
                s.error
            );
        }
        let mut inner = lock(&self.inner);
        inner.host_lost = !snap.hosts.iter().any(|h| h.name == self.cfg.host);
        inner.view = snap
            .mappings
            .into_iter()
            .map(|r| (r.sir_address(), r))
            .collect();
        for e in inner.policy.reset(&snap.policies, &snap.identities) {
            log::error!("host {}: {e}", self.cfg.host);
        }
        inner.policy_records = snap
            .policies
            .into_iter()
            .map(|r| (r.name.clone(), r))
            .collect();
        if let Err(e) = inner.policy.recompile() {
            log::error!(
                "host {}: policies not compiled, previous ones stay: {e}",
                self.cfg.host
            );
        }
        let (desired, unusable) =
            reconcile::desired(&self.cfg.host, inner.view.values(), &inner.endpoints);
        for u in unusable {
            log::error!(
                "host {}: mapping of {} unusable: {}",
                self.cfg.host,
                u.sir_addr,
                u.reason
            );
        }
        let mut dp = lock(&self.dp);
        let maps = dp.maps();
        // Policy first: endpoint entries must know their identity before traffic is allowed.
        let pops = maps_io::sync_policy(maps, &inner.policy)?;
        inner.policy_fill = PolicyFill::of(&inner.policy);
        let ops = reconcile::diff(&desired, &maps_io::current(maps)?);
        maps_io::apply(maps, &ops)?;
        drop(dp);
        if let Some(obs) = &self.observer {
            let now = Instant::now();
            for (k, _) in &ops.out_put {
                let _ = obs.send((self.cfg.host.clone(), *k, now));
            }
        }
        log::debug!("host {}: {} policy map changes", self.cfg.host, pops.len());
        inner.in_by_sir = desired
            .inbound
            .iter()
            .map(|(ila, e)| (e.sir, *ila))
            .collect();
        inner.revision = snap.revision;
        inner.resyncs += 1;
        log::info!(
            "host {}: resynced at revision {}: {} mappings ({} written, {} swept)",
            self.cfg.host,
            snap.revision,
            inner.view.len(),
            ops.out_put.len() + ops.in_put.len(),
            ops.out_del.len() + ops.in_del.len()
        );
        drop(inner);
        self.telemetry.observe_resync(started.elapsed());
        Ok(())
    }

    /// Applies one watched change to the view and the maps.
    fn apply(&self, revision: i64, event: StoreEvent) -> Result<(), AgentError> {
        let mut inner = lock(&self.inner);
        inner.revision = revision;
        match event {
            StoreEvent::PutMapping(rec) => {
                let sir = rec.sir_address();
                self.install(&mut inner, &rec)?;
                inner.view.insert(sir, rec);
            }
            StoreEvent::DeleteMapping(sir) => {
                inner.view.remove(&sir);
                let mut dp = lock(&self.dp);
                let maps = dp.maps();
                maps.remove_out(sir)?;
                if let Some(ila) = inner.in_by_sir.remove(&sir) {
                    maps.remove_in(ila)?;
                }
                maps.remove_endpoint(sir)?;
                maps.remove_ipcache(sir)?;
            }
            StoreEvent::PutIdentity(rec) => {
                if let Err(e) = inner.policy.put_identity(&rec) {
                    log::error!("host {}: {e}", self.cfg.host);
                } else {
                    self.recompile(&mut inner)?;
                }
            }
            StoreEvent::PutPolicy(rec) => match inner.policy.put_policy(&rec) {
                Ok(()) => {
                    inner.policy_records.insert(rec.name.clone(), rec);
                    self.recompile(&mut inner)?;
                }
                Err(e) => log::error!("host {}: skipping {e}", self.cfg.host),
            },
            StoreEvent::DeletePolicy(name) => {
                inner.policy.delete_policy(&name);
                inner.policy_records.remove(&name);
                self.recompile(&mut inner)?;
            }
            StoreEvent::DeleteHost(name) => {
                if name == self.cfg.host {
                    inner.host_lost = true;
                }
            }
            StoreEvent::PutHost(_) | StoreEvent::Resync => {}
        }
        Ok(())
    }

    /// Writes the entries of one mapping (and removes a stale in-entry of the same address).
    fn install(&self, inner: &mut Inner, rec: &MappingRecord) -> Result<(), AgentError> {
        let sir = rec.sir_address();
        let out = match reconcile::out_entry(&self.cfg.host, rec) {
            Ok(e) => e,
            Err(u) => {
                log::error!(
                    "host {}: mapping of {sir} unusable: {}",
                    self.cfg.host,
                    u.reason
                );
                return Ok(());
            }
        };
        let inbound =
            reconcile::in_entry(&self.cfg.host, rec, &inner.endpoints).unwrap_or_else(|u| {
                log::error!("host {}: {}", self.cfg.host, u.reason);
                None
            });
        let mut dp = lock(&self.dp);
        let maps = dp.maps();
        maps.insert_ipcache(sir, &reconcile::ipcache_entry(rec))?;
        if let Some(ep) = inner
            .endpoints
            .get(&rec.endpoint)
            .filter(|ep| rec.host == self.cfg.host && ep.sir_addr == sir)
        {
            maps.insert_endpoint(sir, &reconcile::endpoint_entry(ep))?;
        }
        maps.insert_out(sir, &out)?;
        if let Some(old) = inner.in_by_sir.remove(&sir) {
            if inbound.map(|(k, _)| k) != Some(old) {
                maps.remove_in(old)?;
            }
        }
        if let Some((k, v)) = inbound {
            maps.insert_in(k, &v)?;
            inner.in_by_sir.insert(sir, k);
        }
        drop(dp);
        if let Some(obs) = &self.observer {
            let _ = obs.send((self.cfg.host.clone(), sir, Instant::now()));
        }
        Ok(())
    }

    /// Recompiles the policies and writes the result into the maps (the previous compilation
    /// stays in force if this one fails).
    fn recompile(&self, inner: &mut Inner) -> Result<(), AgentError> {
        if let Err(e) = inner.policy.recompile() {
            log::error!(
                "host {}: policies not compiled, previous ones stay: {e}",
                self.cfg.host
            );
            return Ok(());
        }
        let mut dp = lock(&self.dp);
        let ops = maps_io::sync_policy(dp.maps(), &inner.policy)?;
        inner.policy_fill = PolicyFill::of(&inner.policy);
        log::debug!("host {}: {} policy map changes", self.cfg.host, ops.len());
        Ok(())
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
        let mut trial = lock(&self.inner).policy.clone();
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
            let inner = lock(&self.inner);
            records
                .iter()
                .map(|r| inner.policy_records.get(&r.name).cloned())
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
        lock(&self.inner)
            .policy
            .policies()
            .values()
            .map(|p| PolicyRow {
                name: p.name.clone(),
                tenant: p.tenant.get(),
                specs: p.specs.len(),
            })
            .collect()
    }

    /// Resolves an endpoint name or address to what the policy engine sees.
    fn lookup_peer(
        &self,
        inner: &Inner,
        what: &str,
    ) -> Result<(policy::LookupPeer, String), AgentError> {
        let rec = inner
            .view
            .values()
            .find(|r| r.endpoint == what)
            .or_else(|| {
                what.parse::<Ipv6Addr>()
                    .ok()
                    .and_then(|a| inner.view.get(&a))
            });
        if let Some(r) = rec {
            let tenant = r.identifier.vnid();
            return Ok((
                policy::LookupPeer::Identity {
                    identity: policy::Identity(r.identity),
                    tenant,
                },
                format!(
                    "{} ({}, identity {}, tenant {})",
                    r.endpoint,
                    r.sir_address(),
                    r.identity,
                    tenant.map(|t| t.to_string()).unwrap_or_else(|| "-".into())
                ),
            ));
        }
        match what.parse::<Ipv6Addr>() {
            Ok(a) => Ok((
                policy::LookupPeer::Address(a),
                format!("{a} (outside the network)"),
            )),
            Err(_) => Err(AgentError::Invalid(format!(
                "'{what}' is neither an endpoint of the network nor an IPv6 address"
            ))),
        }
    }

    /// The verdict for a packet from `from` to `to` and the rule that gave it.
    pub fn explain(
        &self,
        from: &str,
        to: &str,
        port: u16,
        proto: &str,
    ) -> Result<ExplainReply, AgentError> {
        let proto_num = match proto.to_ascii_lowercase().as_str() {
            "tcp" => 6,
            "udp" => 17,
            "sctp" => 132,
            "icmpv6" | "icmp6" | "ipv6-icmp" => 58,
            other => other.parse::<u8>().map_err(|_| {
                AgentError::Invalid(format!(
                    "--proto '{proto}' is not tcp, udp, sctp, icmpv6 or a protocol number"
                ))
            })?,
        };
        let inner = lock(&self.inner);
        let (f, fdesc) = self.lookup_peer(&inner, from)?;
        let (t, tdesc) = self.lookup_peer(&inner, to)?;
        let e = inner.policy.compiled().explain(f, t, port, proto_num);
        Ok(ExplainReply {
            verdict: format!("{:?}", e.verdict).to_lowercase(),
            rule: e.rule.map(|r| r.to_string()),
            reason: e.reason,
            from: fdesc,
            to: tdesc,
        })
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
        let mut inner = lock(&self.inner);
        if inner
            .session
            .as_ref()
            .is_some_and(|s| s.lease.id == lease_id)
        {
            inner.session = None;
            inner.store_error = Some(format!("{failed}; reconnecting"));
            self.session_reset.notify_one();
        }
    }

    fn session_handle(&self) -> Result<(Store, Lease), AgentError> {
        let inner = lock(&self.inner);
        match &inner.session {
            Some(s) => Ok((s.store.clone(), s.lease)),
            None => Err(AgentError::NoStore(
                inner
                    .store_error
                    .clone()
                    .unwrap_or_else(|| "no session".into()),
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
    async fn add_endpoint_in(
        self: &Arc<Self>,
        name: &str,
        sandbox: &endpoint::Sandbox,
        tenant: Option<&str>,
        identifier: Option<Identifier>,
        replace: bool,
        labels: BTreeMap<String, String>,
    ) -> Result<LocalEndpoint, AgentError> {
        endpoint::validate_name(name)?;
        // With an identifier and no tenant named, the identifier's VNID says which network.
        let tenant = match (tenant, identifier) {
            (None, Some(id)) => self.tenant_of(id).cloned().ok_or_else(|| {
                AgentError::Invalid(format!(
                    "identifier {id} belongs to no tenant network of host '{}'",
                    self.cfg.host
                ))
            })?,
            (t, _) => self.tenant_named(t)?.clone(),
        };
        for (k, v) in &labels {
            if k.is_empty() || k.contains(['=', '\n']) || v.contains('\n') {
                return Err(AgentError::Invalid(format!("label '{k}={v}' is not valid")));
            }
        }
        let _ops = self.ops.lock().await;
        let (mut store, mut lease) = self.wait_session().await?;
        let id_labels = policy_sync::identity_labels(&labels, tenant.vnid)
            .map_err(|e| AgentError::Invalid(format!("labels of endpoint '{name}': {e}")))?;
        // Allocation is idempotent: one retry covers a request lost with a dying store member.
        let identity = match store.allocate_identity(&id_labels.to_string()).await {
            Err(e @ store::StoreError::Unavailable { .. }) => {
                self.reset_session(&e, lease.id);
                (store, lease) = self.wait_session().await?;
                store.allocate_identity(&id_labels.to_string()).await?
            }
            other => other?,
        };
        {
            // Known before the endpoint exists, so its first packet meets a compiled policy.
            let mut inner = lock(&self.inner);
            let known = inner.policy.labels(identity).is_some();
            if !known {
                let rec = store::IdentityRecord {
                    id: identity,
                    labels: id_labels.to_string(),
                };
                if inner.policy.put_identity(&rec).is_ok() {
                    self.recompile(&mut inner)?;
                }
            }
        }
        {
            let inner = lock(&self.inner);
            if inner.endpoints.contains_key(name) {
                return Err(AgentError::Invalid(format!(
                    "endpoint '{name}' already exists on host '{}'",
                    self.cfg.host
                )));
            }
            if !replace {
                if let Some(r) = inner.view.values().find(|r| r.endpoint == name) {
                    return Err(AgentError::Invalid(format!(
                        "endpoint name '{name}' is in use on host '{}'",
                        r.host
                    )));
                }
            }
        }
        let mut attempts = 0;
        loop {
            attempts += 1;
            let id = match identifier {
                Some(id) => {
                    check_identifier(&tenant, id)?;
                    id
                }
                None => self.next_identifier(&tenant)?,
            };
            let sir_addr = tenant.address(id);
            if !replace {
                if let Some(r) = lock(&self.inner).view.get(&sir_addr) {
                    if identifier.is_some() {
                        return Err(AgentError::Invalid(format!(
                            "address {sir_addr} is in use by endpoint '{}' on host '{}'",
                            r.endpoint, r.host
                        )));
                    }
                    continue;
                }
            }
            let me = Arc::clone(self);
            let ep_name = name.to_string();
            let ep_labels = labels.clone();
            let ep_sandbox = sandbox.clone();
            // Recorded before anything is made, so no crash can leave an unrecorded namespace.
            self.set_creating(name, Some(sandbox))?;
            let created = tokio::task::spawn_blocking(move || {
                endpoint::create(
                    &me.cfg,
                    &me.dp,
                    &ep_name,
                    &ep_sandbox,
                    id,
                    sir_addr,
                    ep_labels,
                    identity,
                )
            })
            .await
            .map_err(|e| AgentError::Invalid(format!("endpoint task failed: {e}")))
            .and_then(|r| r);
            let ep = match created {
                Ok(ep) => ep,
                Err(e) => {
                    self.set_creating(name, None)?;
                    return Err(e);
                }
            };
            let rec = self.record_of(&ep);
            let publish = |store: Store, lease: Lease| {
                let rec = rec.clone();
                async move {
                    if replace {
                        store.put_mapping(&rec, &lease).await
                    } else {
                        store.create_mapping(&rec, &lease).await
                    }
                }
            };
            let published = match publish(store.clone(), lease).await {
                // Lost with a dying store member, or the lease went with it: try once more on
                // the session the session loop re-establishes. If the first attempt did land,
                // the create now finds this very endpoint's record, which is success.
                Err(
                    e
                    @ (store::StoreError::Unavailable { .. } | store::StoreError::LeaseExpired(_)),
                ) => {
                    self.reset_session(&e, lease.id);
                    let (store, lease) = self.wait_session().await?;
                    match publish(store, lease).await {
                        Err(store::StoreError::AddressInUse { owner_endpoint, .. })
                            if owner_endpoint == name =>
                        {
                            Ok(0)
                        }
                        other => other,
                    }
                }
                other => other,
            };
            match published {
                Ok(_) => {
                    {
                        let mut inner = lock(&self.inner);
                        inner.endpoints.insert(ep.name.clone(), ep.clone());
                        if let Some(a) = inner.allocators.get_mut(&tenant.name) {
                            let _ = a.reserve(id);
                        }
                        // Install right away rather than waiting for our own watch event.
                        inner.creating.remove(name);
                        self.install(&mut inner, &rec)?;
                        inner.view.insert(sir_addr, rec);
                    }
                    self.save_state()?;
                    return Ok(ep);
                }
                Err(e) => {
                    let me = Arc::clone(self);
                    let ep2 = ep.clone();
                    let cleanup =
                        tokio::task::spawn_blocking(move || endpoint::destroy(&me.cfg, &ep2)).await;
                    match cleanup {
                        Ok(Ok(())) => self.set_creating(name, None)?,
                        // Stays recorded: the next start (or `lab down`) removes it.
                        Ok(Err(c)) => {
                            log::error!(
                                "host {}: cleaning up endpoint '{name}': {c}",
                                self.cfg.host
                            )
                        }
                        Err(c) => log::error!(
                            "host {}: cleaning up endpoint '{name}': {c}",
                            self.cfg.host
                        ),
                    }
                    match e {
                        store::StoreError::AddressInUse { .. }
                            if identifier.is_none() && attempts < 32 =>
                        {
                            continue
                        }
                        e => return Err(e.into()),
                    }
                }
            }
        }
    }

    /// Records (or forgets) an endpoint under construction in the state file.
    fn set_creating(
        &self,
        name: &str,
        creating: Option<&endpoint::Sandbox>,
    ) -> Result<(), AgentError> {
        {
            let mut inner = lock(&self.inner);
            match creating {
                Some(sandbox) => {
                    let (netns, owns_netns) = match sandbox {
                        endpoint::Sandbox::Own => (endpoint::netns_name(&self.cfg, name), true),
                        endpoint::Sandbox::Runtime { netns, .. } => (netns.clone(), false),
                    };
                    let p = PendingEndpoint {
                        name: name.to_string(),
                        netns,
                        host_ifname: endpoint::host_ifname(name),
                        owns_netns,
                    };
                    inner.creating.insert(name.to_string(), p);
                }
                None => {
                    inner.creating.remove(name);
                }
            }
        }
        self.save_state()
    }

    fn next_identifier(&self, tenant: &TenantNetwork) -> Result<Identifier, AgentError> {
        let mut inner = lock(&self.inner);
        loop {
            let alloc = inner
                .allocators
                .get_mut(&tenant.name)
                .ok_or_else(|| AgentError::Invalid(format!("unknown tenant '{}'", tenant.name)))?;
            let id = alloc.allocate()?;
            if !inner.view.contains_key(&tenant.address(id)) {
                return Ok(id);
            }
        }
    }

    /// Removes an endpoint of this host; with `keep_mapping` its mapping stays in the store (the
    /// endpoint is moving and the new host overwrites it).
    pub async fn del_endpoint(
        self: &Arc<Self>,
        name: &str,
        keep_mapping: bool,
    ) -> Result<(), AgentError> {
        let _ops = self.ops.lock().await;
        let ep = lock(&self.inner)
            .endpoints
            .get(name)
            .cloned()
            .ok_or_else(|| {
                AgentError::Invalid(format!("no endpoint '{name}' on host '{}'", self.cfg.host))
            })?;
        if !keep_mapping {
            let (store, _) = self.wait_session().await?;
            let ours = lock(&self.inner)
                .view
                .get(&ep.sir_addr)
                .is_none_or(|r| r.host == self.cfg.host);
            if ours {
                lock(&self.inner).withdrawing.insert(ep.sir_addr);
                if let Err(e) = store.delete_mapping(ep.sir_addr).await {
                    lock(&self.inner).withdrawing.remove(&ep.sir_addr);
                    return Err(e.into());
                }
            }
        }
        let me = Arc::clone(self);
        let ep2 = ep.clone();
        tokio::task::spawn_blocking(move || endpoint::destroy(&me.cfg, &ep2))
            .await
            .map_err(|e| AgentError::Invalid(format!("endpoint task failed: {e}")))??;
        {
            let mut inner = lock(&self.inner);
            inner.endpoints.remove(name);
            inner.withdrawing.remove(&ep.sir_addr);
            if let Some(t) = self.tenant_of(ep.identifier) {
                if let Some(a) = inner.allocators.get_mut(&t.name) {
                    a.release(ep.identifier);
                }
            }
            let mut dp = lock(&self.dp);
            if let Some(ila) = inner.in_by_sir.remove(&ep.sir_addr) {
                dp.maps().remove_in(ila)?;
            }
            if !keep_mapping {
                inner.view.remove(&ep.sir_addr);
                dp.maps().remove_out(ep.sir_addr)?;
            }
        }
        self.save_state()
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
        if let Some(ep) = self.cni_endpoint(container_id, ifname) {
            return Err(AgentError::Invalid(format!(
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
        Ok(self.attachment_of(&ep))
    }

    /// Detaches a container (CNI DEL): idempotent, and fine when its namespace is gone.
    pub async fn cni_del(
        self: &Arc<Self>,
        container_id: &str,
        ifname: &str,
    ) -> Result<(), AgentError> {
        endpoint::validate_cni(container_id, ifname, None)?;
        match self.cni_endpoint(container_id, ifname) {
            Some(ep) => self.del_endpoint(&ep.name, false).await,
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
        let ep = self.cni_endpoint(container_id, ifname).ok_or_else(|| {
            AgentError::Invalid(format!(
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
        let (me, ep2) = (Arc::clone(self), ep.clone());
        blocking(move || endpoint::check(&me.cfg, &ep2)).await?;
        let inner = lock(&self.inner);
        match inner.view.get(&ep.sir_addr) {
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
        drop(inner);
        let installed = lock(&self.dp).maps().get_out(ep.sir_addr)?.is_some();
        if !installed {
            return Err(AgentError::Invalid(format!(
                "the out-map of host '{}' lacks {}",
                self.cfg.host, ep.sir_addr
            )));
        }
        Ok(self.attachment_of(&ep))
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
        let stale: Vec<LocalEndpoint> = lock(&self.inner)
            .endpoints
            .values()
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

    fn cni_endpoint(&self, container_id: &str, ifname: &str) -> Option<LocalEndpoint> {
        lock(&self.inner)
            .endpoints
            .values()
            .find(|e| e.container_id.as_deref() == Some(container_id) && e.ifname == ifname)
            .cloned()
    }

    fn attachment_of(&self, ep: &LocalEndpoint) -> CniAttachment {
        let tenant = self.tenant_of(ep.identifier);
        CniAttachment {
            endpoint: ep.name.clone(),
            ifname: ep.ifname.clone(),
            mac: endpoint::mac_string(ep.mac),
            host_ifname: ep.host_ifname.clone(),
            host_mac: endpoint::mac_string(ep.host_mac),
            netns: ep.netns.clone(),
            address: ep.sir_addr,
            gateway: hostnet::link::ENDPOINT_GATEWAY,
            tenant: tenant.map(|t| t.name.clone()).unwrap_or_default(),
            sir_prefix: tenant.map(|t| t.sir.to_string()).unwrap_or_default(),
            identity: ep.identity,
        }
    }

    /// This host's endpoints.
    pub fn endpoints(&self) -> Vec<LocalEndpoint> {
        lock(&self.inner).endpoints.values().cloned().collect()
    }

    /// Every mapping in the view, and whether the out-map holds it.
    pub fn mappings(&self) -> Result<Vec<MappingRow>, AgentError> {
        let inner = lock(&self.inner);
        let installed: HashMap<Ipv6Addr, dataplane::OutEntry> =
            lock(&self.dp).maps().out_entries()?.into_iter().collect();
        Ok(inner
            .view
            .values()
            .map(|r| {
                let expected = reconcile::out_entry(&self.cfg.host, r).ok();
                MappingRow {
                    endpoint: r.endpoint.clone(),
                    host: r.host.clone(),
                    sir_addr: r.sir_address(),
                    locator: r.locator.to_string(),
                    ila_addr: expected.map(|e| e.ila),
                    mode: r.mode.to_string(),
                    installed: expected.is_some()
                        && installed.get(&r.sir_address()) == expected.as_ref(),
                }
            })
            .collect())
    }

    /// Latencies and call counts recorded for the metrics endpoint.
    pub fn telemetry(&self) -> &metrics::Telemetry {
        &self.telemetry
    }

    /// The agent's state as a metrics scrape reports it: a short look under the state lock,
    /// then the counters and the fill of the mapping maps (walked: they hold one entry per
    /// mapping or endpoint), under the maps lock.
    pub fn sample(&self) -> metrics::Sample {
        let (connected, lease, revision, resyncs, endpoints, mappings, pf) = {
            let inner = lock(&self.inner);
            (
                inner.session.is_some(),
                inner.session.as_ref().map(|s| (s.lease.id, s.lease.ttl)),
                inner.revision,
                inner.resyncs,
                inner.endpoints.len(),
                inner.view.len(),
                inner.policy_fill,
            )
        };
        let mut dp = lock(&self.dp);
        let maps = dp.maps();
        let fill = |map, entries: Result<usize, dataplane::DataplaneError>, capacity| {
            let entries = entries
                .map_err(|e| log::debug!("host {}: metrics: {e}", self.cfg.host))
                .ok();
            metrics::MapFill {
                map,
                entries,
                capacity,
            }
        };
        let maps_fill = vec![
            fill(
                "ILA_OUT",
                maps.out_entries().map(|v| v.len()),
                dataplane::OUT_MAX_ENTRIES,
            ),
            fill(
                "ILA_IN",
                maps.in_entries().map(|v| v.len()),
                dataplane::IN_MAX_ENTRIES,
            ),
            fill(
                "ILA_ENDPOINTS",
                maps.endpoints().map(|v| v.len()),
                dataplane::ENDPOINTS_MAX_ENTRIES,
            ),
            fill(
                "ILA_IPCACHE",
                maps.ipcache().map(|v| v.len()),
                dataplane::IPCACHE_MAX_ENTRIES,
            ),
            fill(
                "POLICY_EP",
                Ok(pf.endpoints),
                dataplane::POLICY_EP_MAX_ENTRIES,
            ),
            fill("POLICY", Ok(pf.rules), dataplane::POLICY_MAX_ENTRIES),
            fill(
                "POLICY_CIDR",
                Ok(pf.cidr),
                dataplane::POLICY_CIDR_MAX_ENTRIES,
            ),
        ];
        let counters = maps.counters().ok();
        drop(dp);
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
        let inner = lock(&self.inner);
        let mut dp = lock(&self.dp);
        let maps = dp.maps();
        AgentStatus {
            host: self.cfg.host.clone(),
            locator: self.cfg.locator.to_string(),
            store: inner
                .session
                .as_ref()
                .map(|s| s.store.describe())
                .unwrap_or_else(|| describe_cfg(&self.store_cfg)),
            store_connected: inner.session.is_some(),
            store_error: inner.store_error.clone(),
            lease: inner.session.as_ref().map(|s| s.lease.id),
            revision: inner.revision,
            mappings: inner.view.len(),
            endpoints: inner.endpoints.len(),
            out_entries: maps.out_entries().map(|e| e.len()).unwrap_or(0),
            in_entries: maps.in_entries().map(|e| e.len()).unwrap_or(0),
            resyncs: inner.resyncs,
            counters: maps.counters().ok(),
            tenants: self.cfg.tenants.clone(),
        }
    }
}

fn check_identifier(tenant: &TenantNetwork, id: Identifier) -> Result<(), AgentError> {
    if id.c_bit() || id.low16() == 0 {
        return Err(AgentError::Invalid(format!(
            "identifier {id} cannot be used: the C bit must be clear and the low 16 bits non-zero"
        )));
    }
    if !tenant.owns(id) {
        return Err(AgentError::Invalid(format!(
            "identifier {id} is not of tenant '{}' (VNID {})",
            tenant.name, tenant.vnid
        )));
    }
    Ok(())
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
