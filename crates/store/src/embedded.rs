//! The in-process backend: a revisioned key-value store with etcd's semantics, in memory or
//! persisted to a data directory (see [`crate::persist`] for the files).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::net::Ipv6Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use tokio::sync::broadcast;

use crate::persist::{DataDir, Op, SnapshotState};
use crate::records::{
    self, check_value_size, decode_delete, decode_put, encode_host, encode_identity,
    encode_identity_index, encode_mapping, encode_policy, host_key, identity_key,
    identity_labels_key, mapping_key, next_identity_candidate, policy_key,
};
use crate::{
    HostRecord, IdentityRecord, Lease, MappingRecord, PolicyRecord, Snapshot, StoreError,
    StoreEvent, WatchEvent, HOSTS_PREFIX, IDENTITY_PROBES, KEY_PREFIX,
};

/// Default number of change events kept for watches from past revisions.
pub const DEFAULT_HISTORY: usize = 100_000;
/// Default bound on the bytes (keys + values + a fixed overhead per event) of the change events
/// kept for watches from past revisions: 64 MiB. Whichever of this and [`DEFAULT_HISTORY`] is
/// reached first drops the oldest revisions (watches from them get [`StoreEvent::Resync`]).
pub const DEFAULT_HISTORY_BYTES: usize = 64 * 1024 * 1024;
/// Default size the write-ahead log may reach before it is folded into the snapshot: 64 MiB
/// (or the snapshot's own size, if larger, so that rewriting the snapshot stays proportionate).
pub const DEFAULT_LOG_COMPACT_BYTES: u64 = 64 * 1024 * 1024;
/// Bytes counted per history event on top of its key and value.
const EVENT_OVERHEAD: usize = 64;
/// Live events buffered per watcher before it is told to resync.
const WATCH_BUFFER: usize = 16_384;
/// How often the reaper thread looks for expired leases.
const REAP_INTERVAL: Duration = Duration::from_millis(50);

/// Limits of an [`EmbeddedStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmbeddedOptions {
    /// Change events kept for watches from past revisions (at least 1).
    pub history_events: usize,
    /// Bytes of change events kept for watches from past revisions.
    pub history_bytes: usize,
    /// Persistent stores: the log size above which it is folded into the snapshot.
    pub log_compact_bytes: u64,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions {
            history_events: DEFAULT_HISTORY,
            history_bytes: DEFAULT_HISTORY_BYTES,
            log_compact_bytes: DEFAULT_LOG_COMPACT_BYTES,
        }
    }
}

/// Counters of an [`EmbeddedStore`] ([`EmbeddedStore::stats`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddedStats {
    /// The current revision.
    pub revision: i64,
    /// Watches from revisions below this one get [`StoreEvent::Resync`].
    pub compact_revision: i64,
    /// Keys stored.
    pub keys: usize,
    /// Live leases.
    pub leases: usize,
    /// Change events retained for watches from past revisions.
    pub history_events: usize,
    /// Bytes those events account for (at most [`EmbeddedOptions::history_bytes`]).
    pub history_bytes: usize,
    /// The data directory (`None`: in memory only).
    pub data_dir: Option<PathBuf>,
    /// Size of the write-ahead log file (0 in memory).
    pub log_bytes: u64,
    /// Size of the snapshot file (0: none yet, or in memory).
    pub snapshot_bytes: u64,
}

/// The in-process store. Clones share the data; `Send + Sync`.
///
/// [`EmbeddedStore::new`] keeps everything in memory (tests, benches). [`EmbeddedStore::open`]
/// persists to a data directory: every committed change is appended to a checksummed
/// write-ahead log and fsync'd before the call returns, the log is folded into an atomically
/// replaced snapshot when it grows, and reopening the directory restores the keys, leases,
/// revision and compaction point. The directory is locked (`flock`) while a store has it open;
/// the lock goes with the last clone (or the process).
#[derive(Clone)]
pub struct EmbeddedStore {
    shared: Arc<Shared>,
}

impl fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.shared.lock();
        f.debug_struct("EmbeddedStore")
            .field("revision", &st.revision)
            .field("keys", &st.kv.len())
            .field("leases", &st.leases.len())
            .field(
                "data_dir",
                &st.disk.as_ref().map(|d| d.path().to_path_buf()),
            )
            .finish()
    }
}

struct Shared {
    state: Mutex<State>,
    events: broadcast::Sender<Arc<RawEvent>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-updated in a way that
        // matters more than losing the whole store would.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct Entry {
    value: Arc<[u8]>,
    lease: i64,
}

struct LeaseEntry {
    ttl: Duration,
    deadline: Instant,
    keys: BTreeSet<String>,
}

#[derive(Debug)]
struct RawEvent {
    revision: i64,
    key: String,
    /// `None`: delete. Shared with the stored entry: history costs no copy of the value.
    value: Option<Arc<[u8]>>,
}

impl RawEvent {
    fn bytes(&self) -> usize {
        self.key.len() + self.value.as_ref().map_or(0, |v| v.len()) + EVENT_OVERHEAD
    }
}

struct State {
    revision: i64,
    compact_revision: i64,
    kv: BTreeMap<String, Entry>,
    leases: HashMap<i64, LeaseEntry>,
    next_lease: i64,
    history: VecDeque<Arc<RawEvent>>,
    history_bytes: usize,
    opts: EmbeddedOptions,
    reaper_running: bool,
    /// `Some`: persistent.
    disk: Option<DataDir>,
    /// Do not try another snapshot before the log reaches this size (after a failed one).
    next_snapshot_try: u64,
    /// `Some`: leases expire by this clock instead of the system's.
    clock: Option<ManualClock>,
}

/// A clock that moves only when told: lease expiry in tests without waiting for it. Clones
/// share the time.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<Mutex<Instant>>);

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl ManualClock {
    /// A clock standing at the system's time now.
    pub fn new() -> Self {
        ManualClock(Arc::new(Mutex::new(Instant::now())))
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        let mut t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *t += by;
    }

    /// The clock's time.
    pub fn now(&self) -> Instant {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Default for EmbeddedStore {
    fn default() -> Self {
        Self::new()
    }
}

impl EmbeddedStore {
    /// An empty in-memory store keeping [`DEFAULT_HISTORY`] events (at most
    /// [`DEFAULT_HISTORY_BYTES`]) of history. Nothing survives the process: for tests and
    /// benches; agents use [`EmbeddedStore::open`].
    pub fn new() -> Self {
        Self::with_options(&EmbeddedOptions::default())
    }

    /// An empty in-memory store keeping `events` change events for watches from past
    /// revisions (and at most [`DEFAULT_HISTORY_BYTES`] of them).
    pub fn with_history(events: usize) -> Self {
        Self::with_options(&EmbeddedOptions {
            history_events: events,
            ..EmbeddedOptions::default()
        })
    }

    /// An empty in-memory store with these limits.
    pub fn with_options(opts: &EmbeddedOptions) -> Self {
        Self::from_state(State::empty(opts))
    }

    /// An empty in-memory store whose leases expire by `clock` (they never expire unless it is
    /// advanced; keep-alives extend them from its time).
    pub fn with_clock(clock: ManualClock) -> Self {
        let mut st = State::empty(&EmbeddedOptions::default());
        st.clock = Some(clock);
        Self::from_state(st)
    }

    /// Opens (creating it if needed) a persistent store in `dir` with the default limits: see
    /// [`EmbeddedStore::open_with`].
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(dir, &EmbeddedOptions::default())
    }

    /// Opens (creating it if needed) a persistent store in `dir`: locks the directory (another
    /// store holding it, in this process or another: [`StoreError::DataDir`] "already in use"),
    /// loads the snapshot and replays the log. A torn last record (a crash during a write) is
    /// dropped with a warning; corruption before the end is a [`StoreError::DataDir`] naming
    /// the file and the offset. Leases come back with their full TTL counted from now (as etcd
    /// does after a restart): a restarted owner that re-publishes under a new lease keeps its
    /// keys, one that never comes back loses them one TTL later. History before the snapshot
    /// is not kept across a reopen: watches from older revisions get [`StoreEvent::Resync`].
    pub fn open_with(dir: impl AsRef<Path>, opts: &EmbeddedOptions) -> Result<Self, StoreError> {
        let dir = dir.as_ref();
        let (disk, loaded) = DataDir::open(dir)?;
        let mut st = State::empty(opts);
        let now = Instant::now();
        if let Some(snap) = loaded.snapshot {
            st.revision = snap.revision;
            // The history up to the snapshot is gone: watches resume after it.
            st.compact_revision = snap.compact_revision.max(snap.revision + 1);
            st.next_lease = st.next_lease.max(snap.next_lease);
            for (id, ttl) in snap.leases {
                st.leases.insert(
                    id,
                    LeaseEntry {
                        ttl,
                        deadline: now + ttl,
                        keys: BTreeSet::new(),
                    },
                );
            }
            for (key, value, lease) in snap.kv {
                if lease != 0 {
                    match st.leases.get_mut(&lease) {
                        Some(l) => {
                            l.keys.insert(key.clone());
                        }
                        None => {
                            log::warn!(
                                "embedded store {}: dropping {key}: its lease {lease} is gone",
                                dir.display()
                            );
                            continue;
                        }
                    }
                }
                st.kv.insert(key, Entry { value, lease });
            }
        }
        let replayed = loaded.records.len();
        for rec in loaded.records {
            st.apply(None, rec.revision, rec.ops);
        }
        st.disk = Some(disk);
        log::info!(
            "embedded store {}: loaded revision {}, {} keys, {} leases ({replayed} log records)",
            dir.display(),
            st.revision,
            st.kv.len(),
            st.leases.len()
        );
        let store = Self::from_state(st);
        {
            let mut st = store.shared.lock();
            if !st.leases.is_empty() {
                store.ensure_reaper(&mut st);
            }
        }
        Ok(store)
    }

    fn from_state(st: State) -> Self {
        let (tx, _) = broadcast::channel(WATCH_BUFFER);
        EmbeddedStore {
            shared: Arc::new(Shared {
                state: Mutex::new(st),
                events: tx,
            }),
        }
    }

    /// The current revision.
    pub fn revision(&self) -> i64 {
        self.shared.lock().revision
    }

    /// The data directory of a persistent store (`None`: in memory).
    pub fn data_dir(&self) -> Option<PathBuf> {
        self.shared
            .lock()
            .disk
            .as_ref()
            .map(|d| d.path().to_path_buf())
    }

    /// Counters: keys, leases, retained history (events and bytes), file sizes.
    pub fn stats(&self) -> EmbeddedStats {
        let st = self.locked();
        EmbeddedStats {
            revision: st.revision,
            compact_revision: st.compact_revision,
            keys: st.kv.len(),
            leases: st.leases.len(),
            history_events: st.history.len(),
            history_bytes: st.history_bytes,
            data_dir: st.disk.as_ref().map(|d| d.path().to_path_buf()),
            log_bytes: st.disk.as_ref().map_or(0, |d| d.wal_len()),
            snapshot_bytes: st.disk.as_ref().map_or(0, |d| d.snapshot_len()),
        }
    }

    /// Writes raw bytes under any key, without a lease (tests and tools: e.g. to plant a
    /// malformed record). Returns the revision. Values above [`crate::MAX_VALUE_BYTES`] are
    /// refused; a persistent store may fail to write ([`StoreError::DataDir`]).
    pub fn put_raw(&self, key: &str, value: &[u8]) -> Result<i64, StoreError> {
        check_value_size(key, value)?;
        let mut st = self.locked();
        st.put(&self.shared, key, value.to_vec(), 0)
    }

    /// Deletes any key (tests and tools). Returns the revision (the current one if the key did
    /// not exist).
    pub fn delete_raw(&self, key: &str) -> Result<i64, StoreError> {
        let mut st = self.locked();
        st.delete(&self.shared, &[key.to_string()])
    }

    /// Locks the state after expiring due leases.
    fn locked(&self) -> MutexGuard<'_, State> {
        let mut st = self.shared.lock();
        let now = st.now();
        st.expire_due(&self.shared, now);
        st
    }

    fn ensure_reaper(&self, st: &mut State) {
        if st.reaper_running {
            return;
        }
        st.reaper_running = true;
        let weak: Weak<Shared> = Arc::downgrade(&self.shared);
        let spawned = std::thread::Builder::new()
            .name("store-lease-reaper".into())
            .spawn(move || loop {
                std::thread::sleep(REAP_INTERVAL);
                let Some(shared) = weak.upgrade() else { break };
                let mut st = shared.lock();
                let now = st.now();
                st.expire_due(&shared, now);
                if st.leases.is_empty() {
                    st.reaper_running = false;
                    break;
                }
            });
        if let Err(e) = spawned {
            log::error!("embedded store: cannot start the lease reaper thread: {e}");
            st.reaper_running = false;
        }
    }

    pub(crate) async fn grant_lease(&self, ttl: Duration) -> Result<Lease, StoreError> {
        if ttl.is_zero() {
            return Err(StoreError::InvalidArgument("lease TTL must be > 0".into()));
        }
        let mut st = self.locked();
        let id = st.next_lease;
        let revision = st.revision;
        st.commit(&self.shared, revision, vec![Op::Grant { id, ttl }])?;
        self.ensure_reaper(&mut st);
        Ok(Lease { id, ttl })
    }

    pub(crate) async fn keep_alive(&self, lease: &Lease) -> Result<(), StoreError> {
        let mut st = self.locked();
        let now = st.now();
        match st.leases.get_mut(&lease.id) {
            Some(l) => {
                l.deadline = now + l.ttl;
                Ok(())
            }
            None => Err(StoreError::LeaseExpired(lease.id)),
        }
    }

    pub(crate) async fn revoke(&self, lease: &Lease) -> Result<(), StoreError> {
        let mut st = self.locked();
        st.revoke(&self.shared, lease.id)
    }

    pub(crate) async fn put_host(
        &self,
        host: &HostRecord,
        lease: &Lease,
    ) -> Result<i64, StoreError> {
        let value = encode_host(host)?;
        let key = host_key(&host.name);
        check_value_size(&key, &value)?;
        let mut st = self.locked();
        st.check_lease(lease.id)?;
        st.put(&self.shared, &key, value, lease.id)
    }

    pub(crate) async fn create_mapping(
        &self,
        rec: &MappingRecord,
        lease: &Lease,
    ) -> Result<i64, StoreError> {
        let address = rec.sir_address();
        let key = mapping_key(&rec.host, address);
        let value = encode_mapping(rec)?;
        check_value_size(&key, &value)?;
        let mut st = self.locked();
        // Any host's mapping of the address: one lock, so this is exact here.
        let existing = st
            .kv
            .range(HOSTS_PREFIX.to_string()..)
            .take_while(|(k, _)| k.starts_with(HOSTS_PREFIX))
            .find(|(k, _)| records::mapping_key_sir(k) == Some(address));
        if let Some((_, existing)) = existing {
            return Err(StoreError::AddressInUse {
                address,
                owner_endpoint: records::owner_endpoint(&existing.value),
            });
        }
        st.check_lease(lease.id)?;
        st.put(&self.shared, &key, value, lease.id)
    }

    pub(crate) async fn put_mapping(
        &self,
        rec: &MappingRecord,
        lease: &Lease,
    ) -> Result<i64, StoreError> {
        let key = mapping_key(&rec.host, rec.sir_address());
        let value = encode_mapping(rec)?;
        check_value_size(&key, &value)?;
        let mut st = self.locked();
        st.check_lease(lease.id)?;
        st.put(&self.shared, &key, value, lease.id)
    }

    pub(crate) async fn delete_mapping(
        &self,
        host: &str,
        sir_address: Ipv6Addr,
    ) -> Result<i64, StoreError> {
        let mut st = self.locked();
        st.delete(&self.shared, &[mapping_key(host, sir_address)])
    }

    pub(crate) async fn allocate_identity(
        &self,
        labels: &str,
        first: u32,
    ) -> Result<u32, StoreError> {
        let index_key = identity_labels_key(labels);
        // One lock: no race to lose. The same decisions as the etcd backend's transaction.
        let mut st = self.locked();
        if let Some(e) = st.kv.get(&index_key) {
            let id = records::decode_identity_index(&index_key, &e.value)?;
            let record = st.kv.get(&identity_key(id)).map(|r| &r.value[..]);
            return records::check_index_target(&index_key, labels, id, record);
        }
        let mut id = first;
        for _ in 0..IDENTITY_PROBES {
            let key = identity_key(id);
            match st.kv.get(&key) {
                None => {
                    let rec = IdentityRecord {
                        id,
                        labels: labels.to_string(),
                    };
                    let value = encode_identity(&rec)?;
                    check_value_size(&key, &value)?;
                    let writes = vec![(key, value), (index_key, encode_identity_index(id))];
                    st.put_all(&self.shared, writes, 0)?;
                    return Ok(id);
                }
                Some(e) if records::identity_labels_of(id, &e.value).as_deref() == Ok(labels) => {
                    // The record exists without its index (written by hand, or half-deleted):
                    // adopt it.
                    st.put_all(
                        &self.shared,
                        vec![(index_key, encode_identity_index(id))],
                        0,
                    )?;
                    return Ok(id);
                }
                Some(_) => id = next_identity_candidate(id),
            }
        }
        Err(StoreError::IdentitiesExhausted {
            labels: labels.to_string(),
            first,
            probes: IDENTITY_PROBES,
        })
    }

    pub(crate) async fn put_policy(&self, policy: &PolicyRecord) -> Result<i64, StoreError> {
        let value = encode_policy(policy)?;
        let key = policy_key(&policy.name);
        check_value_size(&key, &value)?;
        let mut st = self.locked();
        st.put(&self.shared, &key, value, 0)
    }

    pub(crate) async fn delete_policy(&self, name: &str) -> Result<i64, StoreError> {
        let key = policy_key(name);
        let mut st = self.locked();
        if !st.kv.contains_key(&key) {
            return Err(StoreError::NotFound {
                kind: "policy".into(),
                name: name.to_string(),
            });
        }
        st.delete(&self.shared, &[key])
    }

    pub(crate) async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let st = self.locked();
        let mut snap = Snapshot {
            revision: st.revision,
            ..Snapshot::default()
        };
        for (k, e) in st.kv.range(KEY_PREFIX.to_string()..) {
            if !k.starts_with(KEY_PREFIX) {
                break;
            }
            records::add_to_snapshot(&mut snap, k.as_bytes(), &e.value);
        }
        records::finish_snapshot(&mut snap);
        Ok(snap)
    }

    pub(crate) async fn compact(&self, revision: i64) -> Result<(), StoreError> {
        let mut st = self.locked();
        if revision > st.revision {
            return Err(StoreError::Revision {
                revision,
                reason: format!(
                    "required revision is a future revision (current {})",
                    st.revision
                ),
            });
        }
        if revision <= st.compact_revision {
            return Err(StoreError::Revision {
                revision,
                reason: format!(
                    "required revision has been compacted (up to {})",
                    st.compact_revision
                ),
            });
        }
        let current = st.revision;
        st.commit(&self.shared, current, vec![Op::Compact { revision }])
    }

    pub(crate) fn watch(&self, from_revision: i64) -> Result<EmbeddedWatch, StoreError> {
        let st = self.locked();
        let from = if from_revision <= 0 {
            st.revision + 1
        } else {
            from_revision
        };
        let mut backlog = VecDeque::new();
        if from < st.compact_revision {
            backlog.push_back(Ok(WatchEvent {
                revision: st.compact_revision,
                event: StoreEvent::Resync,
            }));
            return Ok(EmbeddedWatch {
                backlog,
                rx: None,
                from,
                last: st.revision,
            });
        }
        for ev in st.history.iter().filter(|e| e.revision >= from) {
            if let Some(item) = decode_event(ev) {
                backlog.push_back(item);
            }
        }
        // Subscribed under the lock: every later change reaches the receiver, none twice.
        let rx = self.shared.events.subscribe();
        Ok(EmbeddedWatch {
            backlog,
            rx: Some(rx),
            from: from.max(st.revision + 1),
            last: st.revision,
        })
    }
}

impl State {
    fn empty(opts: &EmbeddedOptions) -> State {
        State {
            revision: 1,
            // etcd's convention: watches from revisions below this get `Resync`.
            compact_revision: 0,
            kv: BTreeMap::new(),
            leases: HashMap::new(),
            next_lease: 0x694c_414e_0000_0001, // "iLAN…": distinct from small numbers
            history: VecDeque::new(),
            history_bytes: 0,
            opts: EmbeddedOptions {
                history_events: opts.history_events.max(1),
                ..*opts
            },
            reaper_running: false,
            disk: None,
            next_snapshot_try: 0,
            clock: None,
        }
    }

    fn now(&self) -> Instant {
        self.clock
            .as_ref()
            .map_or_else(Instant::now, ManualClock::now)
    }

    fn check_lease(&self, id: i64) -> Result<(), StoreError> {
        if id != 0 && !self.leases.contains_key(&id) {
            return Err(StoreError::LeaseExpired(id));
        }
        Ok(())
    }

    /// Commits one change: appends it to the log (persistent stores; fsync'd), then applies it
    /// and tells the watchers. On a log error nothing changes.
    fn commit(&mut self, shared: &Shared, revision: i64, ops: Vec<Op>) -> Result<(), StoreError> {
        if let Some(disk) = self.disk.as_mut() {
            disk.append(revision, &ops)?;
        }
        self.apply(Some(shared), revision, ops);
        self.maybe_snapshot();
        Ok(())
    }

    /// Applies a committed change (live, or replayed from the log with `shared == None`).
    fn apply(&mut self, shared: Option<&Shared>, revision: i64, ops: Vec<Op>) {
        self.revision = revision;
        for op in ops {
            match op {
                Op::Put { key, value, lease } => {
                    let old = self.kv.insert(
                        key.clone(),
                        Entry {
                            value: value.clone(),
                            lease,
                        },
                    );
                    if let Some(old) = old {
                        if old.lease != lease {
                            self.detach_from_lease(&key, old.lease);
                        }
                    }
                    if lease != 0 {
                        if let Some(l) = self.leases.get_mut(&lease) {
                            l.keys.insert(key.clone());
                        }
                    }
                    self.record(
                        shared,
                        RawEvent {
                            revision,
                            key,
                            value: Some(value),
                        },
                    );
                }
                Op::Delete { key } => {
                    if let Some(old) = self.kv.remove(&key) {
                        self.detach_from_lease(&key, old.lease);
                        self.record(
                            shared,
                            RawEvent {
                                revision,
                                key,
                                value: None,
                            },
                        );
                    }
                }
                Op::Grant { id, ttl } => {
                    let deadline = self.now() + ttl;
                    self.leases.insert(
                        id,
                        LeaseEntry {
                            ttl,
                            deadline,
                            keys: BTreeSet::new(),
                        },
                    );
                    self.next_lease = self.next_lease.max(id.saturating_add(1));
                }
                Op::Revoke { id } => {
                    self.leases.remove(&id);
                }
                Op::Compact { revision } => self.compact_to(revision),
            }
        }
    }

    /// Folds the log into a new snapshot when it has grown past its bound.
    fn maybe_snapshot(&mut self) {
        let Some(disk) = self.disk.as_ref() else {
            return;
        };
        let wal = disk.wal_len();
        if wal <= self.opts.log_compact_bytes.max(disk.snapshot_len())
            || wal < self.next_snapshot_try
        {
            return;
        }
        let state = SnapshotState {
            lsn: disk.last_lsn(),
            revision: self.revision,
            compact_revision: self.compact_revision,
            next_lease: self.next_lease,
            leases: self.leases.iter().map(|(id, l)| (*id, l.ttl)).collect(),
            kv: self
                .kv
                .iter()
                .map(|(k, e)| (k.clone(), e.value.clone(), e.lease))
                .collect(),
        };
        let compact_bytes = self.opts.log_compact_bytes;
        if let Some(disk) = self.disk.as_mut() {
            match disk.write_snapshot(&state) {
                Ok(()) => self.next_snapshot_try = 0,
                Err(e) => {
                    // The changes are safe in the log; try again after it grows some more.
                    log::error!("embedded store: cannot fold the log into a snapshot: {e}");
                    self.next_snapshot_try = wal.saturating_add(compact_bytes.max(1));
                }
            }
        }
    }

    fn record(&mut self, shared: Option<&Shared>, ev: RawEvent) {
        let ev = Arc::new(ev);
        self.history_bytes += ev.bytes();
        self.history.push_back(ev.clone());
        while self.history.len() > self.opts.history_events
            || self.history_bytes > self.opts.history_bytes
        {
            let Some(oldest) = self.history.front().map(|e| e.revision) else {
                break;
            };
            self.compact_to(oldest + 1);
        }
        if let Some(shared) = shared {
            // No receivers is fine.
            let _ = shared.events.send(ev);
        }
    }

    /// Drops the history before `revision` (etcd: "compacts all revisions prior to"); watches
    /// from `revision` on stay possible.
    fn compact_to(&mut self, revision: i64) {
        while let Some(ev) = self.history.front() {
            if ev.revision >= revision {
                break;
            }
            self.history_bytes = self.history_bytes.saturating_sub(ev.bytes());
            self.history.pop_front();
        }
        self.compact_revision = self.compact_revision.max(revision);
    }

    fn detach_from_lease(&mut self, key: &str, lease: i64) {
        if lease != 0 {
            if let Some(l) = self.leases.get_mut(&lease) {
                l.keys.remove(key);
            }
        }
    }

    fn put(
        &mut self,
        shared: &Shared,
        key: &str,
        value: Vec<u8>,
        lease: i64,
    ) -> Result<i64, StoreError> {
        self.put_all(shared, vec![(key.to_string(), value)], lease)
    }

    /// Writes these keys in one revision (an etcd transaction); returns it.
    fn put_all(
        &mut self,
        shared: &Shared,
        writes: Vec<(String, Vec<u8>)>,
        lease: i64,
    ) -> Result<i64, StoreError> {
        let rev = self.revision + 1;
        let ops = writes
            .into_iter()
            .map(|(key, value)| Op::Put {
                key,
                value: value.into(),
                lease,
            })
            .collect();
        self.commit(shared, rev, ops)?;
        Ok(rev)
    }

    /// The deletions of these keys (those that exist) and the revision they happen at.
    fn deletions(&self, keys: &[String]) -> (i64, Vec<Op>) {
        let ops: Vec<Op> = keys
            .iter()
            .filter(|k| self.kv.contains_key(*k))
            .map(|k| Op::Delete { key: k.clone() })
            .collect();
        let rev = if ops.is_empty() {
            self.revision
        } else {
            self.revision + 1
        };
        (rev, ops)
    }

    /// Deletes these keys in one revision; returns it (the current one if nothing existed).
    fn delete(&mut self, shared: &Shared, keys: &[String]) -> Result<i64, StoreError> {
        let (rev, ops) = self.deletions(keys);
        if !ops.is_empty() {
            self.commit(shared, rev, ops)?;
        }
        Ok(rev)
    }

    /// Ends a lease and deletes its keys, in one revision (none if it had no keys).
    fn revoke_ops(&self, id: i64) -> Option<(i64, Vec<Op>)> {
        let l = self.leases.get(&id)?;
        let keys: Vec<String> = l.keys.iter().cloned().collect();
        let (rev, mut ops) = self.deletions(&keys);
        ops.push(Op::Revoke { id });
        Some((rev, ops))
    }

    fn revoke(&mut self, shared: &Shared, id: i64) -> Result<(), StoreError> {
        if let Some((rev, ops)) = self.revoke_ops(id) {
            self.commit(shared, rev, ops)?;
        }
        Ok(())
    }

    fn expire_due(&mut self, shared: &Shared, now: Instant) {
        let mut due: Vec<(Instant, i64)> = self
            .leases
            .iter()
            .filter(|(_, l)| l.deadline <= now)
            .map(|(id, l)| (l.deadline, *id))
            .collect();
        due.sort();
        for (_, id) in due {
            log::debug!("embedded store: lease {id} expired");
            let Some((rev, ops)) = self.revoke_ops(id) else {
                continue;
            };
            if let Err(e) = self.commit(shared, rev, ops.clone()) {
                // Expire it anyway: after a reload the lease comes back and expires again one
                // TTL later, the same outcome.
                log::error!("embedded store: lease {id} expired but could not be logged: {e}");
                self.apply(Some(shared), rev, ops);
            }
        }
    }
}

fn decode_event(ev: &RawEvent) -> Option<Result<WatchEvent, StoreError>> {
    let decoded = match &ev.value {
        Some(v) => decode_put(ev.key.as_bytes(), v),
        None => decode_delete(ev.key.as_bytes()),
    };
    match decoded {
        Ok(Some(event)) => Some(Ok(WatchEvent {
            revision: ev.revision,
            event,
        })),
        Ok(None) => None,
        Err(e) => Some(Err(e)),
    }
}

/// A watch on an [`EmbeddedStore`].
#[derive(Debug)]
pub(crate) struct EmbeddedWatch {
    backlog: VecDeque<Result<WatchEvent, StoreError>>,
    rx: Option<broadcast::Receiver<Arc<RawEvent>>>,
    /// Live events below this revision were already in the backlog.
    from: i64,
    /// The last revision seen.
    last: i64,
}

impl EmbeddedWatch {
    pub(crate) async fn next(&mut self) -> Option<Result<WatchEvent, StoreError>> {
        loop {
            if let Some(item) = self.backlog.pop_front() {
                return Some(item);
            }
            let rx = self.rx.as_mut()?;
            match rx.recv().await {
                Ok(ev) => {
                    if ev.revision < self.from {
                        continue;
                    }
                    self.last = ev.revision;
                    if let Some(item) = decode_event(&ev) {
                        return Some(item);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    log::warn!("embedded store: a watcher fell {n} events behind; resync");
                    self.rx = None;
                    return Some(Ok(WatchEvent {
                        revision: self.last,
                        event: StoreEvent::Resync,
                    }));
                }
                Err(broadcast::error::RecvError::Closed) => {
                    self.rx = None;
                    return None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bounded_history_and_lagging_watchers_resync() {
        let s = EmbeddedStore::with_history(3);
        let first = s.revision() + 1;
        for i in 0..5 {
            s.put_raw(&format!("{KEY_PREFIX}x/{i}"), b"v").unwrap();
        }
        let mut w = s.watch(first).unwrap();
        let ev = w.next().await.unwrap().unwrap();
        assert_eq!(ev.event, StoreEvent::Resync);
        assert!(w.next().await.is_none());

        // A watcher that does not read falls behind the live buffer: Resync, then the end.
        let mut w = s.watch(0).unwrap();
        for i in 0..WATCH_BUFFER + 10 {
            s.put_raw(&format!("{KEY_PREFIX}hosts/h{i}"), b"garbage")
                .unwrap();
        }
        let mut saw_resync = false;
        while let Some(item) = w.next().await {
            if let Ok(WatchEvent {
                event: StoreEvent::Resync,
                ..
            }) = item
            {
                saw_resync = true;
            }
        }
        assert!(saw_resync);
    }

    #[test]
    fn store_is_shareable() {
        fn assert_send_sync_clone<T: Send + Sync + Clone + 'static>() {}
        assert_send_sync_clone::<EmbeddedStore>();
        assert_send_sync_clone::<crate::Store>();
    }
}
