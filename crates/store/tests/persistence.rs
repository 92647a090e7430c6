//! The embedded store on disk (data directory: reopen, torn tails, corruption, lock, leases,
//! log compaction), the byte bound of the watch history, and the one value-size limit of both
//! backends (embedded, and a real `/usr/bin/etcd`).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ila::{ChecksumMode, Identifier, Locator, SirPrefix};
use store::etcd_cluster::EtcdCluster;
use store::{
    EmbeddedOptions, EmbeddedStore, HostRecord, MappingRecord, PolicyRecord, Snapshot, Store,
    StoreConfig, StoreError, StoreEvent, Watch, WatchEvent, DEFAULT_HISTORY_BYTES, MAX_VALUE_BYTES,
};

// ---------------------------------------------------------------------------------------------
// Fixtures

/// A unique directory under the system temp dir, removed on drop (also when a test panics).
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let p = std::env::temp_dir().join(format!(
            "ilanet-store-persist-{tag}-{}-{nanos}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

const SIR: SirPrefix = SirPrefix(0x2001_0db8_00ff_0000);
const LOC_A: Locator = Locator(0x2001_0db8_0001_0001);
const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

fn mapping(endpoint: &str, n: u64) -> MappingRecord {
    MappingRecord {
        endpoint: endpoint.into(),
        host: "site-a".into(),
        sir: SIR,
        identifier: Identifier(0x3000_0001_0000_0000 | n),
        locator: LOC_A,
        mode: ChecksumMode::NeutralMap,
        identity: 0x1000 + n as u32,
        labels_sha256: None,
    }
}

fn host(name: &str) -> HostRecord {
    HostRecord {
        name: name.into(),
        locator: LOC_A,
        underlay: LOC_A.with_identifier(Identifier(1)),
    }
}

fn policy(name: &str, document: &str) -> PolicyRecord {
    PolicyRecord {
        name: name.into(),
        document: document.into(),
    }
}

/// A JSON document of about `bytes` bytes.
fn big_document(bytes: usize) -> String {
    let mut s = String::with_capacity(bytes + 32);
    s.push_str("{\"pad\":\"");
    s.push_str(&"x".repeat(bytes.saturating_sub(10)));
    s.push_str("\"}");
    s
}

/// The same document as the eBPF bench's `extra_rules_policy(n)` (crates/bench/src/ebpf.rs):
/// `n` ingress rules, each on its own port.
fn extra_rules_policy(n: usize) -> String {
    let tcp = (1..=32767u16)
        .chain(61000..=65535)
        .filter(|p| *p != 5201)
        .map(|p| ("TCP", p));
    let ports = tcp
        .chain((1..=65535u16).map(|p| ("UDP", p)))
        .chain((1..=65535u16).map(|p| ("SCTP", p)));
    let mut s = String::with_capacity(120 * n + 256);
    s.push_str(&format!(
        "{{\"apiVersion\":\"cilium.io/v2\",\"kind\":\"CiliumNetworkPolicy\",\"metadata\":{{\"name\":\"bench-extra-{n}\"}},\
         \"spec\":{{\"endpointSelector\":{{\"matchLabels\":{{\"app\":\"service1\"}}}},\"ingress\":["
    ));
    for (i, (proto, port)) in ports.take(n).enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!(
            "{{\"fromEndpoints\":[{{\"matchLabels\":{{\"app\":\"service1\"}}}}],\
             \"toPorts\":[{{\"ports\":[{{\"port\":\"{port}\",\"protocol\":\"{proto}\"}}]}}]}}"
        ));
    }
    s.push_str("]}}\n");
    s
}

fn open(dir: &Path) -> Store {
    Store::Embedded(EmbeddedStore::open(dir).expect("the data directory opens"))
}

fn open_with(dir: &Path, opts: &EmbeddedOptions) -> Store {
    Store::Embedded(EmbeddedStore::open_with(dir, opts).expect("the data directory opens"))
}

fn embedded(s: &Store) -> &EmbeddedStore {
    match s {
        Store::Embedded(e) => e,
        Store::Etcd(_) => panic!("not embedded"),
    }
}

async fn next_item(w: &mut Watch) -> Result<WatchEvent, StoreError> {
    tokio::time::timeout(EVENT_TIMEOUT, w.next())
        .await
        .expect("watch event within the timeout")
        .expect("watch stream still open")
}

async fn next_event(w: &mut Watch) -> WatchEvent {
    next_item(w).await.expect("a watch event, not an error")
}

/// Waits until `f` holds on a snapshot (polling), or panics after `timeout`.
async fn wait_snapshot(s: &Store, timeout: Duration, what: &str, f: impl Fn(&Snapshot) -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        let snap = s.snapshot().await.unwrap();
        if f(&snap) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {timeout:?}: {snap:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn wal(dir: &Path) -> PathBuf {
    dir.join("wal")
}

fn data_dir_error(e: StoreError) -> (PathBuf, String) {
    match e {
        StoreError::DataDir { path, reason } => (path, reason),
        other => panic!("expected StoreError::DataDir, got {other:?}"),
    }
}

/// Everything but lease-bound records (their leases are new after a reopen anyway).
fn content(snap: &Snapshot) -> (i64, usize, usize, usize, usize, usize) {
    (
        snap.revision,
        snap.mappings.len(),
        snap.hosts.len(),
        snap.identities.len(),
        snap.policies.len(),
        snap.skipped.len(),
    )
}

// ---------------------------------------------------------------------------------------------
// Persistence

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_restores_everything_at_the_same_revision() {
    let dir = TempDir::new("reopen");
    let before;
    let first_revision;
    {
        let s = open(dir.path());
        first_revision = embedded(&s).revision() + 1;
        let lease = s.grant_lease(Duration::from_secs(30)).await.unwrap();
        s.put_host(&host("site-a"), &lease).await.unwrap();
        s.create_mapping(&mapping("web-1", 1), &lease)
            .await
            .unwrap();
        s.create_mapping(&mapping("web-2", 2), &lease)
            .await
            .unwrap();
        s.delete_mapping("site-a", mapping("web-2", 2).sir_address())
            .await
            .unwrap();
        let web = s.allocate_identity("app=web").await.unwrap();
        let db = s.allocate_identity("app=db").await.unwrap();
        assert_ne!(web, db);
        s.put_policy(&policy("allow-web", r#"{"ingress":[]}"#))
            .await
            .unwrap();
        s.put_policy(&policy("gone", "{}")).await.unwrap();
        s.delete_policy("gone").await.unwrap();
        embedded(&s)
            .put_raw("/ilanet/v1/hosts/broken", b"\x00not json")
            .unwrap();
        before = s.snapshot().await.unwrap();
        assert_eq!(content(&before), (before.revision, 1, 1, 2, 1, 1));
        // Dropped here: the directory is closed.
    }
    assert!(wal(dir.path()).exists(), "the log is in the data directory");

    let s = open(dir.path());
    let after = s.snapshot().await.unwrap();
    assert_eq!(after, before, "the same content at the same revision");
    assert_eq!(embedded(&s).revision(), before.revision);
    // The same identities come back for the same labels (no new allocation, no new revision).
    assert_eq!(
        s.allocate_identity("app=web").await.unwrap(),
        before
            .identities
            .iter()
            .find(|i| i.labels == "app=web")
            .unwrap()
            .id
    );
    assert_eq!(embedded(&s).revision(), before.revision);

    // Watching from after the reopened revision sees new changes.
    let mut w = s.watch(after.revision + 1).await.unwrap();
    let p = policy("allow-db", r#"{"ingress":[{"from":"web"}]}"#);
    let r = s.put_policy(&p).await.unwrap();
    assert_eq!(
        r,
        after.revision + 1,
        "revisions continue from the restored one"
    );
    let ev = next_event(&mut w).await;
    assert_eq!((ev.revision, ev.event), (r, StoreEvent::PutPolicy(p)));

    // The log (not yet folded into a snapshot) also gives the history back: a watch from the
    // first revision replays every change.
    let mut w = s.watch(first_revision).await.unwrap();
    let ev = next_event(&mut w).await;
    assert_eq!(ev.revision, first_revision);
    assert!(matches!(ev.event, StoreEvent::PutHost(_)), "{ev:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_is_folded_into_a_snapshot_and_disk_stays_bounded() {
    let dir = TempDir::new("compaction");
    let opts = EmbeddedOptions {
        log_compact_bytes: 16 * 1024,
        ..EmbeddedOptions::default()
    };
    let doc = big_document(1000);
    let before;
    let old_revision;
    {
        let s = open_with(dir.path(), &opts);
        old_revision = embedded(&s).revision() + 1;
        for round in 0..20 {
            for i in 0..10 {
                s.put_policy(&policy(&format!("p-{i}"), &doc))
                    .await
                    .unwrap();
            }
            let st = embedded(&s).stats();
            // At most the bound (or the snapshot's size) plus the record that crossed it.
            let bound = opts.log_compact_bytes.max(st.snapshot_bytes) + 2048;
            assert!(st.log_bytes <= bound, "round {round}: {st:?}");
        }
        let st = embedded(&s).stats();
        assert!(st.snapshot_bytes > 0, "a snapshot was written: {st:?}");
        assert!(dir.path().join("snapshot").exists());
        before = s.snapshot().await.unwrap();
        assert_eq!(before.policies.len(), 10);
    }
    let s = open_with(dir.path(), &opts);
    assert_eq!(s.snapshot().await.unwrap(), before);
    // The history folded into the snapshot is gone: a watch from before it resyncs.
    let mut w = s.watch(old_revision).await.unwrap();
    assert_eq!(next_event(&mut w).await.event, StoreEvent::Resync);
    // From the restored revision on, watches work.
    let mut w = s.watch(before.revision + 1).await.unwrap();
    s.delete_policy("p-3").await.unwrap();
    assert_eq!(
        next_event(&mut w).await.event,
        StoreEvent::DeletePolicy("p-3".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_log_tail_loads_the_committed_prefix() {
    let dir = TempDir::new("torn");
    let (r1, r2);
    {
        let s = open(dir.path());
        r1 = s.put_policy(&policy("one", "{}")).await.unwrap();
        r2 = s.put_policy(&policy("two", "{}")).await.unwrap();
        s.put_policy(&policy("three", r#"{"x":1}"#)).await.unwrap();
    }
    // A crash in the middle of the last append: cut into it.
    let len = fs::metadata(wal(dir.path())).unwrap().len();
    let f = fs::OpenOptions::new()
        .write(true)
        .open(wal(dir.path()))
        .unwrap();
    f.set_len(len - 5).unwrap();
    drop(f);
    {
        let s = open(dir.path());
        let snap = s.snapshot().await.unwrap();
        assert_eq!(snap.revision, r2, "the committed prefix: {snap:?}");
        let names: Vec<&str> = snap.policies.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["one", "two"]);
        assert!(r1 < r2);
        // Writing goes on after the dropped tail (which was cut off, not left in between).
        s.put_policy(&policy("four", "{}")).await.unwrap();
    }
    // Zeros after the last record (what some file systems show after a crash) are a torn
    // tail too.
    {
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(wal(dir.path()))
            .unwrap();
        std::io::Write::write_all(&mut f, &[0u8; 100]).unwrap();
    }
    let s = open(dir.path());
    let snap = s.snapshot().await.unwrap();
    let names: Vec<&str> = snap.policies.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["four", "one", "two"]);
    assert_eq!(snap.revision, r2 + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_record_in_the_middle_is_a_clear_error() {
    let dir = TempDir::new("corrupt");
    {
        let s = open(dir.path());
        for name in ["one", "two", "three"] {
            s.put_policy(&policy(name, r#"{"ingress":[]}"#))
                .await
                .unwrap();
        }
    }
    // Flip one byte inside the first record (the header is 8 bytes, a frame's is 12).
    let mut bytes = fs::read(wal(dir.path())).unwrap();
    bytes[8 + 12 + 20] ^= 0x55;
    fs::write(wal(dir.path()), &bytes).unwrap();
    let (path, reason) = data_dir_error(EmbeddedStore::open(dir.path()).unwrap_err());
    assert_eq!(path, wal(dir.path()), "names the file");
    assert!(reason.contains("offset 8"), "names the offset: {reason}");
    assert!(reason.contains("corrupt"), "{reason}");
    let msg = EmbeddedStore::open(dir.path()).unwrap_err().to_string();
    assert!(
        msg.contains(&wal(dir.path()).display().to_string()),
        "{msg}"
    );

    // A damaged snapshot is an error too (it is only ever replaced whole).
    let dir = TempDir::new("corrupt-snapshot");
    let opts = EmbeddedOptions {
        log_compact_bytes: 1,
        ..EmbeddedOptions::default()
    };
    {
        let s = open_with(dir.path(), &opts);
        s.put_policy(&policy("one", "{}")).await.unwrap();
    }
    let snap = dir.path().join("snapshot");
    let mut bytes = fs::read(&snap).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    fs::write(&snap, &bytes).unwrap();
    let (path, reason) = data_dir_error(EmbeddedStore::open(dir.path()).unwrap_err());
    assert_eq!(path, snap);
    assert!(reason.contains("corrupt snapshot at offset 8"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_opens_once() {
    let dir = TempDir::new("lock");
    let first = EmbeddedStore::open(dir.path()).unwrap();
    let clone = first.clone();
    let (path, reason) = data_dir_error(EmbeddedStore::open(dir.path()).unwrap_err());
    assert_eq!(path, dir.path());
    assert!(reason.contains("already in use"), "{reason}");
    assert!(
        reason.contains(&std::process::id().to_string()),
        "names the holder's pid: {reason}"
    );
    drop(first);
    // A clone still holds it.
    assert!(EmbeddedStore::open(dir.path()).is_err());
    drop(clone);
    EmbeddedStore::open(dir.path()).expect("free again once the last clone is gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_come_back_with_a_fresh_ttl_then_expire() {
    let dir = TempDir::new("lease");
    let ttl = Duration::from_secs(1);
    let (kept, dropped) = (mapping("kept", 1), mapping("dropped", 2));
    let old_lease;
    {
        let s = open(dir.path());
        old_lease = s.grant_lease(ttl).await.unwrap();
        s.put_host(&host("site-a"), &old_lease).await.unwrap();
        s.create_mapping(&kept, &old_lease).await.unwrap();
        s.create_mapping(&dropped, &old_lease).await.unwrap();
    }
    // Down for longer than the TTL: etcd would count the TTL again from its restart.
    std::thread::sleep(ttl + Duration::from_millis(300));
    let t0 = Instant::now();
    let s = open(dir.path());
    let snap = s.snapshot().await.unwrap();
    assert_eq!(
        (snap.mappings.len(), snap.hosts.len()),
        (2, 1),
        "leased keys are back: {snap:?}"
    );
    let mut w = s.watch(snap.revision + 1).await.unwrap();

    // The restarted owner re-publishes one mapping and its host under a new lease.
    let new_lease = s.grant_lease(Duration::from_secs(30)).await.unwrap();
    assert_ne!(new_lease.id, old_lease.id, "lease ids are not reused");
    s.put_mapping(&kept, &new_lease).await.unwrap();
    s.put_host(&host("site-a"), &new_lease).await.unwrap();
    assert_eq!(
        next_event(&mut w).await.event,
        StoreEvent::PutMapping(kept.clone())
    );
    assert_eq!(
        next_event(&mut w).await.event,
        StoreEvent::PutHost(host("site-a"))
    );

    // One TTL after the load, the old lease expires with what only it still held.
    let ev = next_event(&mut w).await;
    let waited = t0.elapsed();
    assert_eq!(
        ev.event,
        StoreEvent::DeleteMapping {
            host: dropped.host.clone(),
            sir: dropped.sir_address()
        }
    );
    assert!(
        waited >= ttl - Duration::from_millis(100),
        "the TTL counts from the load: expired after {waited:?}"
    );
    let snap = s.snapshot().await.unwrap();
    assert_eq!(snap.mappings, vec![kept.clone()]);
    assert_eq!(snap.hosts, vec![host("site-a")]);
    assert_eq!(
        s.keep_alive(&old_lease).await,
        Err(StoreError::LeaseExpired(old_lease.id))
    );
    s.keep_alive(&new_lease).await.unwrap();
    drop(w);
    drop(s);

    // The expiry itself was persisted; the new lease came back and holds its keys.
    let s = open(dir.path());
    let snap = s.snapshot().await.unwrap();
    assert_eq!(snap.mappings, vec![kept.clone()]);
    s.keep_alive(&new_lease)
        .await
        .expect("the new lease was restored");
    s.keep_alive(&old_lease).await.unwrap_err();
    // An owner that never comes back: revoking (or expiry) removes its keys, for good.
    s.revoke(&new_lease).await.unwrap();
    drop(s);
    let s = open(dir.path());
    wait_snapshot(&s, EVENT_TIMEOUT, "no mappings left", |snap| {
        snap.mappings.is_empty() && snap.hosts.is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreopened_owner_loses_its_keys_one_ttl_after_the_load() {
    let dir = TempDir::new("lease-gone");
    let ttl = Duration::from_millis(800);
    {
        let s = open(dir.path());
        let lease = s.grant_lease(ttl).await.unwrap();
        s.create_mapping(&mapping("m", 1), &lease).await.unwrap();
    }
    let s = open(dir.path());
    assert_eq!(s.snapshot().await.unwrap().mappings.len(), 1);
    wait_snapshot(&s, Duration::from_secs(5), "the lease expires", |snap| {
        snap.mappings.is_empty()
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// History bound

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_is_bounded_by_bytes() {
    // The issue's case: 30 applies of a 5 MB policy.
    let s = Store::Embedded(EmbeddedStore::new());
    let first = embedded(&s).revision() + 1;
    let doc = big_document(5_000_000);
    for i in 0..30 {
        let mut d = doc.clone();
        d.replace_range(8..16, &format!("{i:08}"));
        s.put_policy(&policy("big", &d)).await.unwrap();
        let st = embedded(&s).stats();
        assert!(
            st.history_bytes <= DEFAULT_HISTORY_BYTES,
            "after {i}: {} bytes retained",
            st.history_bytes
        );
    }
    let st = embedded(&s).stats();
    assert!(st.history_events < 30, "{st:?}");
    assert!(
        st.history_bytes >= 5_000_000,
        "recent history is kept: {st:?}"
    );
    assert!(st.compact_revision > first);
    // A watcher from the dropped history is told to resync.
    let mut w = s.watch(first).await.unwrap();
    let ev = next_event(&mut w).await;
    assert_eq!(ev.event, StoreEvent::Resync);
    assert_eq!(ev.revision, st.compact_revision);
    // One from the retained part still gets the events.
    let mut w = s.watch(st.compact_revision).await.unwrap();
    assert!(matches!(
        next_event(&mut w).await.event,
        StoreEvent::PutPolicy(_)
    ));

    // A small explicit bound.
    let s = Store::Embedded(EmbeddedStore::with_options(&EmbeddedOptions {
        history_bytes: 64 * 1024,
        ..EmbeddedOptions::default()
    }));
    let first = embedded(&s).revision() + 1;
    let doc = big_document(10_000);
    for i in 0..50 {
        s.put_policy(&policy(&format!("p{i}"), &doc)).await.unwrap();
        assert!(embedded(&s).stats().history_bytes <= 64 * 1024);
    }
    let mut w = s.watch(first).await.unwrap();
    assert_eq!(next_event(&mut w).await.event, StoreEvent::Resync);
}

// ---------------------------------------------------------------------------------------------
// Value limit

/// Checks the value limit on one backend: over the limit is refused before the write (naming
/// the key and the limit), a 12 MB value and the 100,000-rule bench policy are stored, listed
/// and watched.
async fn value_limit(s: &Store) {
    let over = policy("too-big", &big_document(MAX_VALUE_BYTES + 1));
    let before = s.snapshot().await.unwrap().revision;
    match s.put_policy(&over).await {
        Err(e @ StoreError::TooLarge { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("/ilanet/v1/policies/too-big"), "{msg}");
            assert!(msg.contains(&MAX_VALUE_BYTES.to_string()), "{msg}");
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert_eq!(
        s.snapshot().await.unwrap().revision,
        before,
        "nothing written"
    );

    let mut w = s.watch(0).await.unwrap();
    let big = policy("twelve-mb", &big_document(12_000_000));
    s.put_policy(&big).await.expect("a 12 MB policy is stored");
    let ev = next_event(&mut w).await;
    assert_eq!(ev.event, StoreEvent::PutPolicy(big.clone()));

    let bench = policy("bench-extra-100000", &extra_rules_policy(100_000));
    let encoded = serde_json::to_vec(&bench).unwrap().len();
    assert!(
        encoded < MAX_VALUE_BYTES,
        "the 100,000-rule policy is {encoded} bytes as a record"
    );
    s.put_policy(&bench)
        .await
        .expect("the 100,000-rule policy is stored");
    assert_eq!(
        next_event(&mut w).await.event,
        StoreEvent::PutPolicy(bench.clone())
    );
    let snap = s.snapshot().await.unwrap();
    assert!(snap.policies.contains(&big));
    assert!(snap.policies.contains(&bench));
    s.delete_policy("twelve-mb").await.unwrap();
    s.delete_policy("bench-extra-100000").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn value_limit_embedded() {
    value_limit(&Store::Embedded(EmbeddedStore::new())).await;

    let dir = TempDir::new("limit");
    let s = open(dir.path());
    value_limit(&s).await;
    // The raw path has the same limit.
    let err = embedded(&s)
        .put_raw("/ilanet/v1/x", &vec![b'x'; MAX_VALUE_BYTES + 1])
        .unwrap_err();
    assert!(matches!(err, StoreError::TooLarge { .. }), "{err:?}");
    // A large value survives a reopen.
    let big = policy("big", &big_document(12_000_000));
    s.put_policy(&big).await.unwrap();
    drop(s);
    let s = open(dir.path());
    assert_eq!(s.snapshot().await.unwrap().policies, vec![big]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn value_limit_etcd() {
    let dir = TempDir::new("limit-etcd");
    // Dropped before `dir` (declared after it): the process dies before its directory goes.
    let cluster = EtcdCluster::start(1, dir.path()).expect("etcd starts");
    let s = Store::connect(&StoreConfig::Etcd {
        tls: None,
        endpoints: cluster.client_endpoints(),
        connect_timeout: Duration::from_secs(3),
    })
    .await
    .unwrap();
    let s = match s {
        Store::Etcd(e) => Store::Etcd(e.with_request_timeout(Duration::from_secs(30))),
        other => other,
    };
    value_limit(&s).await;
}
