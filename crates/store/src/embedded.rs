//! The in-process backend: a revisioned key-value store with etcd's semantics.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::net::Ipv6Addr;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use tokio::sync::broadcast;

use crate::records::{
    self, decode_delete, decode_put, encode_host, encode_identity, encode_identity_index,
    encode_mapping, encode_policy, host_key, identity_key, identity_labels_key, mapping_key,
    next_identity_candidate, policy_key,
};
use crate::{
    HostRecord, IdentityRecord, Lease, MappingRecord, PolicyRecord, Snapshot, StoreError,
    StoreEvent, WatchEvent, IDENTITY_PROBES, KEY_PREFIX,
};

/// Default number of change events kept for watches from past revisions.
pub const DEFAULT_HISTORY: usize = 100_000;
/// Live events buffered per watcher before it is told to resync.
const WATCH_BUFFER: usize = 16_384;
/// How often the reaper thread looks for expired leases.
const REAP_INTERVAL: Duration = Duration::from_millis(50);

/// The in-process store. Clones share the data; `Send + Sync`.
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
    value: Vec<u8>,
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
    /// `None`: delete.
    value: Option<Vec<u8>>,
}

struct State {
    revision: i64,
    compact_revision: i64,
    kv: BTreeMap<String, Entry>,
    leases: HashMap<i64, LeaseEntry>,
    next_lease: i64,
    history: VecDeque<Arc<RawEvent>>,
    history_limit: usize,
    reaper_running: bool,
}

impl Default for EmbeddedStore {
    fn default() -> Self {
        Self::new()
    }
}

impl EmbeddedStore {
    /// An empty store keeping [`DEFAULT_HISTORY`] events of history.
    pub fn new() -> Self {
        Self::with_history(DEFAULT_HISTORY)
    }

    /// An empty store keeping `events` change events for watches from past revisions.
    pub fn with_history(events: usize) -> Self {
        let (tx, _) = broadcast::channel(WATCH_BUFFER);
        EmbeddedStore {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    revision: 1,
                    // etcd's convention: watches from revisions below this get `Resync`.
                    compact_revision: 0,
                    kv: BTreeMap::new(),
                    leases: HashMap::new(),
                    next_lease: 0x694c_414e_0000_0001, // "iLAN…": distinct from small numbers
                    history: VecDeque::new(),
                    history_limit: events.max(1),
                    reaper_running: false,
                }),
                events: tx,
            }),
        }
    }

    /// The current revision.
    pub fn revision(&self) -> i64 {
        self.shared.lock().revision
    }

    /// Writes raw bytes under any key, without a lease (tests and tools: e.g. to plant a
    /// malformed record). Returns the revision.
    pub fn put_raw(&self, key: &str, value: &[u8]) -> i64 {
        let mut st = self.locked();
        st.put(&self.shared, key, value.to_vec(), 0)
    }

    /// Deletes any key (tests and tools). Returns the revision (the current one if the key did
    /// not exist).
    pub fn delete_raw(&self, key: &str) -> i64 {
        let mut st = self.locked();
        st.delete(&self.shared, &[key.to_string()])
    }

    /// Locks the state after expiring due leases.
    fn locked(&self) -> MutexGuard<'_, State> {
        let mut st = self.shared.lock();
        st.expire_due(&self.shared, Instant::now());
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
                st.expire_due(&shared, Instant::now());
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
        st.next_lease += 1;
        st.leases.insert(
            id,
            LeaseEntry {
                ttl,
                deadline: Instant::now() + ttl,
                keys: BTreeSet::new(),
            },
        );
        self.ensure_reaper(&mut st);
        Ok(Lease { id, ttl })
    }

    pub(crate) async fn keep_alive(&self, lease: &Lease) -> Result<(), StoreError> {
        let mut st = self.locked();
        match st.leases.get_mut(&lease.id) {
            Some(l) => {
                l.deadline = Instant::now() + l.ttl;
                Ok(())
            }
            None => Err(StoreError::LeaseExpired(lease.id)),
        }
    }

    pub(crate) async fn revoke(&self, lease: &Lease) -> Result<(), StoreError> {
        let mut st = self.locked();
        st.revoke(&self.shared, lease.id);
        Ok(())
    }

    pub(crate) async fn put_host(
        &self,
        host: &HostRecord,
        lease: &Lease,
    ) -> Result<i64, StoreError> {
        let value = encode_host(host)?;
        let mut st = self.locked();
        st.check_lease(lease.id)?;
        Ok(st.put(&self.shared, &host_key(&host.name), value, lease.id))
    }

    pub(crate) async fn create_mapping(
        &self,
        rec: &MappingRecord,
        lease: &Lease,
    ) -> Result<i64, StoreError> {
        let key = mapping_key(rec.sir_address());
        let mut st = self.locked();
        if let Some(existing) = st.kv.get(&key) {
            return Err(StoreError::AddressInUse {
                address: rec.sir_address(),
                owner_endpoint: records::owner_endpoint(&existing.value),
            });
        }
        st.check_lease(lease.id)?;
        Ok(st.put(&self.shared, &key, encode_mapping(rec), lease.id))
    }

    pub(crate) async fn put_mapping(
        &self,
        rec: &MappingRecord,
        lease: &Lease,
    ) -> Result<i64, StoreError> {
        let mut st = self.locked();
        st.check_lease(lease.id)?;
        Ok(st.put(
            &self.shared,
            &mapping_key(rec.sir_address()),
            encode_mapping(rec),
            lease.id,
        ))
    }

    pub(crate) async fn delete_mapping(&self, sir_address: Ipv6Addr) -> Result<i64, StoreError> {
        let mut st = self.locked();
        Ok(st.delete(&self.shared, &[mapping_key(sir_address)]))
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
            return records::decode_identity_index(&index_key, &e.value);
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
                    let writes = vec![
                        (key, encode_identity(&rec)?),
                        (index_key, encode_identity_index(id)),
                    ];
                    st.put_all(&self.shared, writes, 0);
                    return Ok(id);
                }
                Some(e) if records::identity_labels_of(id, &e.value).as_deref() == Ok(labels) => {
                    // The record exists without its index (written by hand, or half-deleted):
                    // adopt it.
                    st.put_all(
                        &self.shared,
                        vec![(index_key, encode_identity_index(id))],
                        0,
                    );
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
        let mut st = self.locked();
        Ok(st.put(&self.shared, &policy_key(&policy.name), value, 0))
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
        Ok(st.delete(&self.shared, &[key]))
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
        st.compact_to(revision);
        Ok(())
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
    fn check_lease(&self, id: i64) -> Result<(), StoreError> {
        if id != 0 && !self.leases.contains_key(&id) {
            return Err(StoreError::LeaseExpired(id));
        }
        Ok(())
    }

    fn record(&mut self, shared: &Shared, ev: RawEvent) {
        let ev = Arc::new(ev);
        self.history.push_back(ev.clone());
        if self.history.len() > self.history_limit {
            let oldest = self.history[0].revision;
            self.compact_to(oldest + 1);
        }
        // No receivers is fine.
        let _ = shared.events.send(ev);
    }

    /// Drops the history before `revision` (etcd: "compacts all revisions prior to"); watches
    /// from `revision` on stay possible.
    fn compact_to(&mut self, revision: i64) {
        while self.history.front().is_some_and(|e| e.revision < revision) {
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

    fn put(&mut self, shared: &Shared, key: &str, value: Vec<u8>, lease: i64) -> i64 {
        self.put_all(shared, vec![(key.to_string(), value)], lease)
    }

    /// Writes these keys in one revision (an etcd transaction); returns it.
    fn put_all(&mut self, shared: &Shared, writes: Vec<(String, Vec<u8>)>, lease: i64) -> i64 {
        self.revision += 1;
        let rev = self.revision;
        for (key, value) in writes {
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
                    revision: rev,
                    key,
                    value: Some(value),
                },
            );
        }
        rev
    }

    /// Deletes these keys in one revision; returns it (the current one if nothing existed).
    fn delete(&mut self, shared: &Shared, keys: &[String]) -> i64 {
        let present: Vec<&String> = keys.iter().filter(|k| self.kv.contains_key(*k)).collect();
        if present.is_empty() {
            return self.revision;
        }
        self.revision += 1;
        let rev = self.revision;
        for key in present {
            if let Some(old) = self.kv.remove(key) {
                self.detach_from_lease(key, old.lease);
            }
            self.record(
                shared,
                RawEvent {
                    revision: rev,
                    key: key.clone(),
                    value: None,
                },
            );
        }
        rev
    }

    fn revoke(&mut self, shared: &Shared, id: i64) {
        if let Some(l) = self.leases.remove(&id) {
            let keys: Vec<String> = l.keys.into_iter().collect();
            self.delete(shared, &keys);
        }
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
            self.revoke(shared, id);
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
            s.put_raw(&format!("{KEY_PREFIX}x/{i}"), b"v");
        }
        let mut w = s.watch(first).unwrap();
        let ev = w.next().await.unwrap().unwrap();
        assert_eq!(ev.event, StoreEvent::Resync);
        assert!(w.next().await.is_none());

        // A watcher that does not read falls behind the live buffer: Resync, then the end.
        let mut w = s.watch(0).unwrap();
        for i in 0..WATCH_BUFFER + 10 {
            s.put_raw(&format!("{KEY_PREFIX}hosts/h{i}"), b"garbage");
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
