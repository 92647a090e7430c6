//! One conformance suite, run against the embedded backend, a single-node etcd and a 3-node etcd
//! cluster (real `/usr/bin/etcd` processes from Debian's `etcd-server`), plus etcd-only checks:
//! unreachable store, killed member, detached start/stop.

use std::collections::BTreeSet;
use std::net::Ipv6Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ila::{ChecksumMode, Identifier, Locator, SirPrefix};
use store::etcd_cluster::{stop_detached, EtcdCluster, EtcdClusterInfo, EtcdClusterOptions};
use store::{
    identity_first_candidate, identity_key, identity_labels_key, policy_key, EmbeddedStore,
    EtcdStore, HostRecord, IdentityRecord, MappingRecord, PolicyRecord, Store, StoreConfig,
    StoreError, StoreEvent, Watch, WatchEvent, HOSTS_PREFIX, IDENTITY_LIMIT, IDENTITY_PROBES,
    KEY_PREFIX, LEGACY_MAPPINGS_PREFIX, MIN_ALLOCATED_IDENTITY,
};

// ---------------------------------------------------------------------------------------------
// Fixtures

/// A unique directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let p = std::env::temp_dir().join(format!(
            "ilanet-store-{tag}-{}-{nanos}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const SIR: SirPrefix = SirPrefix(0x2001_0db8_00ff_0000);
const LOC_A: Locator = Locator(0x2001_0db8_0001_0001);
const LOC_B: Locator = Locator(0x2001_0db8_0001_0002);
const TTL: Duration = Duration::from_secs(10);
const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

fn mapping(endpoint: &str, host: &str, n: u64, locator: Locator) -> MappingRecord {
    MappingRecord {
        endpoint: endpoint.into(),
        host: host.into(),
        sir: SIR,
        identifier: Identifier(0x3000_0001_0000_0000 | n),
        locator,
        mode: ChecksumMode::NeutralMap,
        identity: 0x1000 + n as u32,
        labels_sha256: None,
    }
}

fn host(name: &str, locator: Locator) -> HostRecord {
    HostRecord {
        name: name.into(),
        locator,
        underlay: locator.with_identifier(Identifier(1)),
    }
}

fn by_endpoint(mut v: Vec<MappingRecord>) -> Vec<MappingRecord> {
    v.sort_by(|a, b| a.endpoint.cmp(&b.endpoint));
    v
}

/// One backend under test.
struct Harness {
    name: &'static str,
    /// Dropped before `_dir` (field order): processes die before their directory goes.
    cluster: Option<EtcdCluster>,
    _dir: TempDir,
}

impl Harness {
    fn embedded() -> Harness {
        Harness {
            name: "embedded",
            cluster: None,
            _dir: TempDir::new("embedded"),
        }
    }

    /// The embedded store on disk: every `fresh` store opens its own new data directory.
    fn embedded_on_disk() -> Harness {
        Harness {
            name: "embedded-on-disk",
            cluster: None,
            _dir: TempDir::new("embedded-disk"),
        }
    }

    fn etcd(name: &'static str, members: usize) -> Harness {
        let dir = TempDir::new(name);
        let t = Instant::now();
        let cluster = EtcdCluster::start(members, dir.path()).expect("etcd cluster starts");
        eprintln!(
            "[{name}] {members}-member etcd healthy in {:?}",
            t.elapsed()
        );
        Harness {
            name,
            cluster: Some(cluster),
            _dir: dir,
        }
    }

    fn endpoints(&self) -> Vec<String> {
        self.cluster.as_ref().unwrap().client_endpoints()
    }

    async fn raw_client(&self) -> etcd_client::Client {
        etcd_client::Client::connect(self.endpoints(), None)
            .await
            .unwrap()
    }

    /// An empty store: a new embedded store, or the etcd cluster with `/ilanet/` wiped.
    async fn fresh(&self) -> Store {
        match &self.cluster {
            None if self.name == "embedded-on-disk" => {
                static N: AtomicUsize = AtomicUsize::new(0);
                let dir = self
                    ._dir
                    .path()
                    .join(format!("store-{}", N.fetch_add(1, Ordering::Relaxed)));
                let store = EmbeddedStore::open(&dir).expect("opens a new data directory");
                Store::connect(&StoreConfig::Embedded(store)).await.unwrap()
            }
            None => Store::connect(&StoreConfig::Embedded(EmbeddedStore::new()))
                .await
                .unwrap(),
            Some(_) => {
                let mut raw = self.raw_client().await;
                raw.delete(
                    KEY_PREFIX,
                    Some(etcd_client::DeleteOptions::new().with_prefix()),
                )
                .await
                .unwrap();
                Store::connect(&StoreConfig::Etcd {
                    endpoints: self.endpoints(),
                    connect_timeout: Duration::from_secs(2),
                    tls: None,
                })
                .await
                .unwrap()
            }
        }
    }

    /// Writes raw bytes around the API (etcd: with a separate etcd-client connection).
    async fn put_raw(&self, store: &Store, key: &str, value: &[u8]) {
        match store {
            Store::Embedded(e) => {
                e.put_raw(key, value).unwrap();
            }
            Store::Etcd(_) => {
                self.raw_client().await.put(key, value, None).await.unwrap();
            }
        }
    }

    /// Writes many raw keys (etcd: over one connection).
    async fn put_raw_many(&self, store: &Store, kvs: &[(String, Vec<u8>)]) {
        match store {
            Store::Embedded(e) => {
                for (k, v) in kvs {
                    e.put_raw(k, v).unwrap();
                }
            }
            Store::Etcd(_) => {
                let mut raw = self.raw_client().await;
                for (k, v) in kvs {
                    raw.put(k.as_str(), v.as_slice(), None).await.unwrap();
                }
            }
        }
    }

    /// A second, independent client of the same store (etcd: another connection).
    async fn second_client(&self, store: &Store) -> Store {
        match store {
            Store::Embedded(_) => store.clone(),
            Store::Etcd(_) => Store::connect(&StoreConfig::Etcd {
                tls: None,
                endpoints: self.endpoints(),
                connect_timeout: Duration::from_secs(2),
            })
            .await
            .unwrap(),
        }
    }

    async fn delete_raw(&self, store: &Store, key: &str) {
        match store {
            Store::Embedded(e) => {
                e.delete_raw(key).unwrap();
            }
            Store::Etcd(_) => {
                self.raw_client().await.delete(key, None).await.unwrap();
            }
        }
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

macro_rules! run_checks {
    ($h:expr, $($check:ident),+ $(,)?) => {{
        let total = Instant::now();
        $(
            let t = Instant::now();
            eprintln!("[{}] {} ...", $h.name, stringify!($check));
            $check(&$h).await;
            eprintln!("[{}] {} ok ({:?})", $h.name, stringify!($check), t.elapsed());
        )+
        eprintln!("[{}] all checks ok ({:?})", $h.name, total.elapsed());
    }};
}

async fn conformance(h: &Harness) {
    run_checks!(
        h,
        create_duplicate_is_address_in_use,
        put_delete_snapshot_and_mobility,
        watch_from_snapshot_sees_changes_in_order,
        lease_expiry_deletes_and_keep_alive_keeps,
        malformed_records_are_skipped_and_reported,
        compacted_history_yields_resync,
        invalid_arguments_are_rejected,
        identities_are_idempotent_distinct_and_watched,
        concurrent_identity_allocations_agree,
        identity_collisions_probe_the_next_candidate,
        policies_put_list_delete_watch,
        malformed_identities_and_policies_are_skipped,
    );
}

// ---------------------------------------------------------------------------------------------
// The checks

async fn create_duplicate_is_address_in_use(h: &Harness) {
    let s = h.fresh().await;
    let lease = s.grant_lease(TTL).await.unwrap();
    let a = mapping("web-1", "site-a", 1, LOC_A);
    let r1 = s.create_mapping(&a, &lease).await.unwrap();
    assert!(r1 > 0);

    let dup = MappingRecord {
        endpoint: "web-2".into(),
        host: "site-b".into(),
        locator: LOC_B,
        ..a.clone()
    };
    match s.create_mapping(&dup, &lease).await {
        Err(StoreError::AddressInUse {
            address,
            owner_endpoint,
        }) => {
            assert_eq!(address, a.sir_address());
            assert_eq!(owner_endpoint, "web-1");
        }
        other => panic!("expected AddressInUse, got {other:?}"),
    }
    let other = mapping("web-3", "site-a", 3, LOC_A);
    let r2 = s.create_mapping(&other, &lease).await.unwrap();
    assert!(r2 > r1);

    let snap = s.snapshot().await.unwrap();
    assert_eq!(by_endpoint(snap.mappings), vec![a.clone(), other]);
    assert!(snap.revision >= r2);
    assert!(snap.skipped.is_empty());

    // After deletion the address is free again.
    s.delete_mapping("site-a", a.sir_address()).await.unwrap();
    s.create_mapping(&dup, &lease).await.unwrap();
    s.revoke(&lease).await.unwrap();
}

async fn put_delete_snapshot_and_mobility(h: &Harness) {
    let s = h.fresh().await;
    let la = s.grant_lease(TTL).await.unwrap();
    let lb = s.grant_lease(TTL).await.unwrap();
    let ha = host("site-a", LOC_A);
    let hb = host("site-b", LOC_B);
    let r0 = s.put_host(&ha, &la).await.unwrap();
    let r1 = s.put_host(&hb, &lb).await.unwrap();
    let m1 = mapping("db-1", "site-a", 1, LOC_A);
    let m2 = mapping("db-2", "site-a", 2, LOC_A);
    let r2 = s.create_mapping(&m1, &la).await.unwrap();
    let r3 = s.create_mapping(&m2, &la).await.unwrap();
    assert!(r0 < r1 && r1 < r2 && r2 < r3, "{r0} {r1} {r2} {r3}");

    let snap = s.snapshot().await.unwrap();
    assert_eq!(snap.revision, r3);
    assert_eq!(by_endpoint(snap.mappings), vec![m1.clone(), m2.clone()]);
    let mut hosts = snap.hosts.clone();
    hosts.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(hosts, vec![ha.clone(), hb.clone()]);

    // Mobility: db-1 moves to site-b (same SIR address, new locator, site-b's lease).
    let moved = MappingRecord {
        host: "site-b".into(),
        locator: LOC_B,
        ..m1.clone()
    };
    let r4 = s.put_mapping(&moved, &lb).await.unwrap();
    assert!(r4 > r3);
    assert_eq!(moved.mapping().locator, LOC_B);
    assert_eq!(moved.mapping().sir_address(), m1.sir_address());

    let r5 = s.delete_mapping("site-a", m2.sir_address()).await.unwrap();
    assert!(r5 > r4);
    // Deleting what does not exist is not an error and does not advance the revision.
    let r6 = s.delete_mapping("site-a", m2.sir_address()).await.unwrap();
    assert_eq!(r6, r5);

    // site-a dies: its host record goes, the mapping that moved to site-b stays.
    s.revoke(&la).await.unwrap();
    s.revoke(&la).await.unwrap(); // idempotent
    let snap = s.snapshot().await.unwrap();
    assert!(snap.revision > r5);
    assert_eq!(snap.mappings, vec![moved]);
    assert_eq!(snap.hosts, vec![hb]);
    s.revoke(&lb).await.unwrap();
    let snap = s.snapshot().await.unwrap();
    assert!(snap.mappings.is_empty() && snap.hosts.is_empty());
}

async fn watch_from_snapshot_sees_changes_in_order(h: &Harness) {
    let s = h.fresh().await;
    let la = s.grant_lease(TTL).await.unwrap();
    let lb = s.grant_lease(TTL).await.unwrap();
    let snap = s.snapshot().await.unwrap();
    let mut w = s.watch(snap.revision + 1).await.unwrap();

    let ha = host("site-a", LOC_A);
    let m1 = mapping("a-1", "site-a", 1, LOC_A);
    let m2 = mapping("a-2", "site-a", 2, LOC_A);
    let moved = MappingRecord {
        host: "site-b".into(),
        locator: LOC_B,
        ..m1.clone()
    };
    let r1 = s.put_host(&ha, &la).await.unwrap();
    let r2 = s.create_mapping(&m1, &la).await.unwrap();
    let r3 = s.create_mapping(&m2, &la).await.unwrap();
    let r4 = s.put_mapping(&moved, &lb).await.unwrap();
    let r5 = s.delete_mapping("site-a", m2.sir_address()).await.unwrap();
    // Deletes the host record and site-a's own mapping of the address that moved (per-host
    // keys: site-b's mapping of it is another key, and stays).
    s.revoke(&la).await.unwrap();
    let expected = vec![
        (r1, StoreEvent::PutHost(ha.clone())),
        (r2, StoreEvent::PutMapping(m1.clone())),
        (r3, StoreEvent::PutMapping(m2.clone())),
        (r4, StoreEvent::PutMapping(moved.clone())),
        (
            r5,
            StoreEvent::DeleteMapping {
                host: "site-a".into(),
                sir: m2.sir_address(),
            },
        ),
    ];
    let mut got = Vec::new();
    for _ in 0..expected.len() {
        let ev = next_event(&mut w).await;
        got.push((ev.revision, ev.event));
    }
    assert_eq!(got, expected);
    let (x, y) = (next_event(&mut w).await, next_event(&mut w).await);
    assert_eq!(x.revision, y.revision, "one revocation, one revision");
    assert!(x.revision > r5);
    let got: BTreeSet<String> = [x.event, y.event]
        .iter()
        .map(|e| format!("{e:?}"))
        .collect();
    let want: BTreeSet<String> = [
        StoreEvent::DeleteHost("site-a".into()),
        StoreEvent::DeleteMapping {
            host: "site-a".into(),
            sir: m1.sir_address(),
        },
    ]
    .iter()
    .map(|e| format!("{e:?}"))
    .collect();
    assert_eq!(got, want);

    // History: a watch from an older revision replays the same changes.
    let mut replay = s.watch(r2).await.unwrap();
    for (rev, event) in expected.into_iter().skip(1) {
        let ev = next_event(&mut replay).await;
        assert_eq!((ev.revision, ev.event), (rev, event));
    }

    // From now on (revision 0): only later changes.
    let mut now = s.watch(0).await.unwrap();
    let m3 = mapping("a-3", "site-b", 3, LOC_B);
    let r7 = s.create_mapping(&m3, &lb).await.unwrap();
    let ev = next_event(&mut now).await;
    assert_eq!(
        ev,
        WatchEvent {
            revision: r7,
            event: StoreEvent::PutMapping(m3)
        }
    );
    s.revoke(&lb).await.unwrap();
}

async fn lease_expiry_deletes_and_keep_alive_keeps(h: &Harness) {
    let s = h.fresh().await;
    let ttl = Duration::from_secs(2);
    let dying = s.grant_lease(ttl).await.unwrap();
    let kept = s.grant_lease(ttl).await.unwrap();
    assert_eq!(dying.ttl, ttl);
    let ha = host("site-a", LOC_A);
    let m1 = mapping("dies-1", "site-a", 1, LOC_A);
    let m2 = mapping("lives-2", "site-b", 2, LOC_B);
    s.put_host(&ha, &dying).await.unwrap();
    s.create_mapping(&m1, &dying).await.unwrap();
    s.create_mapping(&m2, &kept).await.unwrap();
    let granted = Instant::now();
    let snap = s.snapshot().await.unwrap();
    let mut w = s.watch(snap.revision + 1).await.unwrap();

    // The agent's keep-alive loop: every ttl/3.
    let stop = Arc::new(AtomicBool::new(false));
    let keeper = {
        let (s, stop) = (s.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                s.keep_alive(&kept)
                    .await
                    .expect("keep_alive of a live lease");
                tokio::time::sleep(kept.ttl / 3).await;
            }
        })
    };

    let a = next_event(&mut w).await;
    let b = next_event(&mut w).await;
    let elapsed = granted.elapsed();
    assert!(
        elapsed >= ttl - Duration::from_millis(300),
        "expired early: {elapsed:?}"
    );
    assert_eq!(a.revision, b.revision, "one lease expiry = one revision");
    let got: BTreeSet<String> = [a.event, b.event]
        .iter()
        .map(|e| format!("{e:?}"))
        .collect();
    let want: BTreeSet<String> = [
        StoreEvent::DeleteHost("site-a".into()),
        StoreEvent::DeleteMapping {
            host: "site-a".into(),
            sir: m1.sir_address(),
        },
    ]
    .iter()
    .map(|e| format!("{e:?}"))
    .collect();
    assert_eq!(got, want);

    // The kept lease survived past the TTL it was granted at the same time.
    let snap = s.snapshot().await.unwrap();
    assert_eq!(snap.mappings, vec![m2.clone()]);
    assert!(snap.hosts.is_empty());

    // The expired lease is gone for good.
    assert_eq!(
        s.keep_alive(&dying).await,
        Err(StoreError::LeaseExpired(dying.id))
    );
    assert_eq!(
        s.put_mapping(&m1, &dying).await,
        Err(StoreError::LeaseExpired(dying.id))
    );
    assert_eq!(
        s.create_mapping(&mapping("x", "site-a", 9, LOC_A), &dying)
            .await,
        Err(StoreError::LeaseExpired(dying.id))
    );
    assert_eq!(
        s.put_host(&ha, &dying).await,
        Err(StoreError::LeaseExpired(dying.id))
    );
    s.revoke(&dying).await.unwrap();

    stop.store(true, Ordering::Relaxed);
    keeper.await.unwrap();
    s.revoke(&kept).await.unwrap();
    let ev = next_event(&mut w).await;
    assert_eq!(
        ev.event,
        StoreEvent::DeleteMapping {
            host: "site-b".into(),
            sir: m2.sir_address()
        }
    );
}

async fn malformed_records_are_skipped_and_reported(h: &Harness) {
    let s = h.fresh().await;
    let lease = s.grant_lease(TTL).await.unwrap();
    let m1 = mapping("ok-1", "site-a", 1, LOC_A);
    s.create_mapping(&m1, &lease).await.unwrap();
    let mappings_of_a = format!("{}mappings/", store::host_prefix("site-a"));
    let garbage = format!("{mappings_of_a}garbage");
    let wrong_key = format!("{mappings_of_a}2001:db8:ff::dead");
    let not_canonical = format!("{mappings_of_a}2001:0db8:00ff:0::1");
    let bad_host = store::host_key("broken");
    // site-a's record under site-b's prefix: a forgery (only site-b may write there).
    let forged = store::mapping_key("site-b", m1.sir_address());
    // The layout before per-host prefixes.
    let legacy = format!("{LEGACY_MAPPINGS_PREFIX}{}", m1.sir_address());
    let legacy_host = format!("{HOSTS_PREFIX}site-a");
    h.put_raw(&s, &garbage, b"\x00not json").await;
    h.put_raw(&s, &wrong_key, &serde_json::to_vec(&m1).unwrap())
        .await;
    h.put_raw(&s, &not_canonical, b"{}").await;
    h.put_raw(&s, &bad_host, br#"{"name":"broken"}"#).await;
    h.put_raw(&s, &forged, &serde_json::to_vec(&m1).unwrap())
        .await;
    h.put_raw(&s, &legacy, &serde_json::to_vec(&m1).unwrap())
        .await;
    h.put_raw(
        &s,
        &legacy_host,
        &serde_json::to_vec(&host("site-a", LOC_A)).unwrap(),
    )
    .await;
    h.put_raw(&s, &format!("{KEY_PREFIX}future-kind/x"), b"whatever")
        .await; // ignored

    let snap = s.snapshot().await.unwrap();
    assert_eq!(snap.mappings, vec![m1.clone()]);
    assert!(snap.hosts.is_empty());
    let skipped: BTreeSet<&str> = snap.skipped.iter().map(|r| r.key.as_str()).collect();
    let want: BTreeSet<&str> = [
        &garbage,
        &wrong_key,
        &not_canonical,
        &bad_host,
        &forged,
        &legacy,
        &legacy_host,
    ]
    .into_iter()
    .map(String::as_str)
    .collect();
    assert_eq!(skipped, want, "{:?}", snap.skipped);
    assert!(snap.skipped.iter().all(|r| !r.error.is_empty()));

    // Overwrite m1 so that the watch below starts with a known event.
    let r0 = s.put_mapping(&m1, &lease).await.unwrap();
    assert!(r0 > snap.revision);

    // Watch: malformed items are errors that do not end the stream.
    let mut w = s.watch(snap.revision + 1).await.unwrap();
    assert_eq!(
        next_event(&mut w).await.event,
        StoreEvent::PutMapping(m1.clone())
    );
    let bad2 = format!("{mappings_of_a}2001:db8:ff::bad");
    h.put_raw(&s, &bad2, b"[1,2,3]").await;
    h.delete_raw(&s, &garbage).await;
    h.put_raw(&s, &format!("{KEY_PREFIX}future-kind/y"), b"ignored")
        .await;
    let m2 = mapping("ok-2", "site-a", 2, LOC_A);
    let r = s.create_mapping(&m2, &lease).await.unwrap();
    for key in [&bad2, &garbage] {
        match next_item(&mut w).await {
            Err(e @ StoreError::Malformed { .. }) => {
                assert!(!e.ends_watch());
                let StoreError::Malformed { key: k, reason } = e else {
                    unreachable!()
                };
                assert_eq!(&k, key);
                assert!(!reason.is_empty());
            }
            other => panic!("expected Malformed for {key}, got {other:?}"),
        }
    }
    assert_eq!(
        next_event(&mut w).await,
        WatchEvent {
            revision: r,
            event: StoreEvent::PutMapping(m2)
        }
    );

    // A malformed record occupying an address still makes create fail, naming no owner.
    let addr: Ipv6Addr = "2001:db8:ff::bad".parse().unwrap();
    let at_bad = MappingRecord {
        identifier: Identifier::from_addr(addr),
        ..m1.clone()
    };
    match s.create_mapping(&at_bad, &lease).await {
        Err(StoreError::AddressInUse {
            address,
            owner_endpoint,
        }) => {
            assert_eq!(address, addr);
            assert_eq!(owner_endpoint, "<malformed record>");
        }
        other => panic!("expected AddressInUse, got {other:?}"),
    }
    s.revoke(&lease).await.unwrap();
}

async fn compacted_history_yields_resync(h: &Harness) {
    let s = h.fresh().await;
    let lease = s.grant_lease(TTL).await.unwrap();
    let r1 = s
        .create_mapping(&mapping("c-1", "h", 1, LOC_A), &lease)
        .await
        .unwrap();
    s.create_mapping(&mapping("c-2", "h", 2, LOC_A), &lease)
        .await
        .unwrap();
    let r3 = s
        .delete_mapping("h", mapping("c-1", "h", 1, LOC_A).sir_address())
        .await
        .unwrap();
    s.compact(r3).await.unwrap();
    assert!(matches!(
        s.compact(r3).await,
        Err(StoreError::Revision { .. })
    ));
    assert!(matches!(
        s.compact(r3 + 1000).await,
        Err(StoreError::Revision { .. })
    ));

    let mut w = s.watch(r1).await.unwrap();
    let ev = next_event(&mut w).await;
    assert_eq!(ev.event, StoreEvent::Resync);
    assert_eq!(ev.revision, r3);
    let end = tokio::time::timeout(EVENT_TIMEOUT, w.next()).await.unwrap();
    assert!(end.is_none(), "the stream ends after Resync: {end:?}");

    // Re-list and re-watch works.
    let snap = s.snapshot().await.unwrap();
    let mut w = s.watch(snap.revision + 1).await.unwrap();
    let m3 = mapping("c-3", "h", 3, LOC_A);
    s.create_mapping(&m3, &lease).await.unwrap();
    assert_eq!(next_event(&mut w).await.event, StoreEvent::PutMapping(m3));
    s.revoke(&lease).await.unwrap();
}

async fn invalid_arguments_are_rejected(h: &Harness) {
    let s = h.fresh().await;
    let lease = s.grant_lease(TTL).await.unwrap();
    for name in ["", "a/b"] {
        assert!(matches!(
            s.put_host(&host(name, LOC_A), &lease).await,
            Err(StoreError::InvalidArgument(_))
        ));
    }
    assert!(matches!(
        s.grant_lease(Duration::ZERO).await,
        Err(StoreError::InvalidArgument(_))
    ));
    let never = store::Lease {
        id: 0x7777_0000_1234,
        ttl: TTL,
    };
    assert_eq!(
        s.keep_alive(&never).await,
        Err(StoreError::LeaseExpired(never.id))
    );
    assert_eq!(
        s.put_mapping(&mapping("n", "h", 1, LOC_A), &never).await,
        Err(StoreError::LeaseExpired(never.id))
    );
    s.revoke(&lease).await.unwrap();
}

fn policy(name: &str, document: &str) -> PolicyRecord {
    PolicyRecord {
        name: name.into(),
        document: document.into(),
    }
}

async fn identities_are_idempotent_distinct_and_watched(h: &Harness) {
    let s = h.fresh().await;
    let snap = s.snapshot().await.unwrap();
    assert!(snap.identities.is_empty());
    let mut w = s.watch(snap.revision + 1).await.unwrap();

    let web = "app=web,io.ilanet.tenant=1";
    let db = "app=db,io.ilanet.tenant=1";
    let a = s.allocate_identity(web).await.unwrap();
    // An empty store: the hash's first candidate is free.
    assert_eq!(a, identity_first_candidate(web));
    assert!((MIN_ALLOCATED_IDENTITY..IDENTITY_LIMIT).contains(&a));
    let after_first = s.snapshot().await.unwrap().revision;
    assert_eq!(s.allocate_identity(web).await.unwrap(), a);
    assert_eq!(
        s.snapshot().await.unwrap().revision,
        after_first,
        "allocating an existing identity writes nothing"
    );
    let b = s.allocate_identity(db).await.unwrap();
    assert_ne!(a, b);
    assert_eq!(s.allocate_identity(db).await.unwrap(), b);
    assert_eq!(s.allocate_identity(web).await.unwrap(), a);

    let rec_a = IdentityRecord {
        id: a,
        labels: web.into(),
    };
    let rec_b = IdentityRecord {
        id: b,
        labels: db.into(),
    };
    let ev = next_event(&mut w).await;
    assert_eq!(ev.event, StoreEvent::PutIdentity(rec_a.clone()));
    assert_eq!(ev.revision, after_first);
    // The index key of the same transaction is not reported: next is b.
    assert_eq!(
        next_event(&mut w).await.event,
        StoreEvent::PutIdentity(rec_b.clone())
    );

    let snap = s.snapshot().await.unwrap();
    let mut want = vec![rec_a, rec_b];
    want.sort_by_key(|r| r.id);
    assert_eq!(snap.identities, want);
    assert!(snap.skipped.is_empty(), "{:?}", snap.skipped);

    // Identities have no lease: revoking every lease leaves them.
    let lease = s.grant_lease(TTL).await.unwrap();
    s.revoke(&lease).await.unwrap();
    assert_eq!(s.snapshot().await.unwrap().identities, want);

    for bad in ["", "a\nb"] {
        assert!(
            matches!(
                s.allocate_identity(bad).await,
                Err(StoreError::InvalidArgument(_))
            ),
            "{bad:?}"
        );
    }
    for first in [0, MIN_ALLOCATED_IDENTITY - 1, IDENTITY_LIMIT] {
        assert!(matches!(
            s.allocate_identity_from("x=1", first).await,
            Err(StoreError::InvalidArgument(_))
        ));
    }
}

async fn concurrent_identity_allocations_agree(h: &Harness) {
    let s1 = h.fresh().await;
    let s2 = h.second_client(&s1).await;
    let labels: Vec<String> = (0..12).map(|i| format!("app=race-{i},tier=x")).collect();

    // Two "hosts" allocate the same label sets at the same time (opposite orders, so that
    // some allocations really race).
    let spawn_all = |s: Store, labels: Vec<String>, reverse: bool| {
        tokio::spawn(async move {
            let mut order: Vec<usize> = (0..labels.len()).collect();
            if reverse {
                order.reverse();
            }
            let mut ids = vec![0; labels.len()];
            for i in order {
                ids[i] = s.allocate_identity(&labels[i]).await.unwrap();
            }
            ids
        })
    };
    let t1 = spawn_all(s1.clone(), labels.clone(), false);
    let t2 = spawn_all(s2.clone(), labels.clone(), true);
    let (ids1, ids2) = (t1.await.unwrap(), t2.await.unwrap());
    assert_eq!(ids1, ids2, "both hosts see the same identities");
    assert_eq!(
        ids1.iter().collect::<BTreeSet<_>>().len(),
        labels.len(),
        "distinct label sets get distinct ids"
    );

    // Head-on races: both clients, same labels, same instant.
    for i in 0..6 {
        let l = format!("app=head-on-{i}");
        let (x, y) = tokio::join!(
            tokio::spawn({
                let (s, l) = (s1.clone(), l.clone());
                async move { s.allocate_identity(&l).await.unwrap() }
            }),
            tokio::spawn({
                let (s, l) = (s2.clone(), l.clone());
                async move { s.allocate_identity(&l).await.unwrap() }
            }),
        );
        assert_eq!(x.unwrap(), y.unwrap(), "{l}");
    }

    // Different label sets racing for the same candidate never share it.
    let first = 0x0040_0000;
    for round in 0..4u32 {
        let c = first + round * 10;
        let (x, y) = tokio::join!(
            tokio::spawn({
                let s = s1.clone();
                async move { s.allocate_identity_from(&format!("a={round}"), c).await }
            }),
            tokio::spawn({
                let s = s2.clone();
                async move { s.allocate_identity_from(&format!("b={round}"), c).await }
            }),
        );
        let (x, y) = (x.unwrap().unwrap(), y.unwrap().unwrap());
        let got: BTreeSet<u32> = [x, y].into();
        assert_eq!(got, [c, c + 1].into(), "round {round}");
    }

    // The store agrees: one record per label set, ids unique, each matching what was returned.
    let snap = s1.snapshot().await.unwrap();
    assert!(snap.skipped.is_empty(), "{:?}", snap.skipped);
    assert_eq!(snap.identities.len(), labels.len() + 6 + 8);
    let unique_labels: BTreeSet<&str> = snap.identities.iter().map(|r| r.labels.as_str()).collect();
    assert_eq!(unique_labels.len(), snap.identities.len());
    for (l, id) in labels.iter().zip(&ids1) {
        assert!(snap.identities.contains(&IdentityRecord {
            id: *id,
            labels: l.clone(),
        }));
    }
}

async fn identity_collisions_probe_the_next_candidate(h: &Harness) {
    let s = h.fresh().await;
    // Forced collisions through the test hook.
    let x = 0x0012_3400;
    assert_eq!(s.allocate_identity_from("app=a", x).await.unwrap(), x);
    assert_eq!(s.allocate_identity_from("app=b", x).await.unwrap(), x + 1);
    assert_eq!(s.allocate_identity_from("app=c", x).await.unwrap(), x + 2);
    // An allocated label set keeps its id whatever the first candidate.
    assert_eq!(
        s.allocate_identity_from("app=b", x + 7).await.unwrap(),
        x + 1
    );
    assert_eq!(s.allocate_identity("app=b").await.unwrap(), x + 1);
    // The probe wraps around the top of the range.
    let top = IDENTITY_LIMIT - 1;
    assert_eq!(s.allocate_identity_from("wrap=1", top).await.unwrap(), top);
    assert_eq!(
        s.allocate_identity_from("wrap=2", top).await.unwrap(),
        MIN_ALLOCATED_IDENTITY
    );

    // A real hash collision: another label set already holds this one's first candidate.
    let labels = "app=hashed";
    let first = identity_first_candidate(labels);
    let squatter = IdentityRecord {
        id: first,
        labels: "app=squatter".into(),
    };
    h.put_raw(
        &s,
        &identity_key(first),
        &serde_json::to_vec(&squatter).unwrap(),
    )
    .await;
    let got = s.allocate_identity(labels).await.unwrap();
    assert_eq!(got, first + 1);
    assert_eq!(s.allocate_identity(labels).await.unwrap(), got);

    // A malformed record occupies its id too.
    let y = 0x0055_0000;
    h.put_raw(&s, &identity_key(y), b"garbage").await;
    assert_eq!(s.allocate_identity_from("app=m", y).await.unwrap(), y + 1);

    // A record without its index (written by hand) is adopted, not duplicated.
    let z = 0x0066_0000;
    let orphan = IdentityRecord {
        id: z,
        labels: "app=orphan".into(),
    };
    h.put_raw(&s, &identity_key(z), &serde_json::to_vec(&orphan).unwrap())
        .await;
    assert_eq!(s.allocate_identity_from("app=orphan", z).await.unwrap(), z);
    assert_eq!(s.allocate_identity("app=orphan").await.unwrap(), z);

    // Every candidate taken: a bounded search, then an error naming the labels.
    let e = 0x0077_0000;
    let taken: Vec<(String, Vec<u8>)> = (0..IDENTITY_PROBES)
        .map(|i| {
            let rec = IdentityRecord {
                id: e + i,
                labels: format!("taken={i}"),
            };
            (identity_key(rec.id), serde_json::to_vec(&rec).unwrap())
        })
        .collect();
    h.put_raw_many(&s, &taken).await;
    match s.allocate_identity_from("app=late", e).await {
        Err(err @ StoreError::IdentitiesExhausted { .. }) => {
            assert!(err.to_string().contains("app=late"), "{err}");
            let StoreError::IdentitiesExhausted { first, probes, .. } = err else {
                unreachable!()
            };
            assert_eq!((first, probes), (e, IDENTITY_PROBES));
        }
        other => panic!("expected IdentitiesExhausted, got {other:?}"),
    }
    // Nothing half-written.
    let snap = s.snapshot().await.unwrap();
    assert!(!snap.identities.iter().any(|r| r.labels == "app=late"));
    assert_eq!(
        s.allocate_identity_from("app=late", e + IDENTITY_PROBES - 1)
            .await
            .unwrap(),
        e + IDENTITY_PROBES
    );
}

async fn policies_put_list_delete_watch(h: &Harness) {
    let s = h.fresh().await;
    let snap = s.snapshot().await.unwrap();
    assert!(snap.policies.is_empty());
    let mut w = s.watch(snap.revision + 1).await.unwrap();

    let p1 = policy(
        "web.allow-db",
        r#"{"ingress":[{"fromEndpoints":["app=db"]}]}"#,
    );
    let p2 = policy("deny-all", "{}");
    let p1b = policy("web.allow-db", "{\n  \"ingress\": []\n}");
    let r1 = s.put_policy(&p1).await.unwrap();
    let r2 = s.put_policy(&p2).await.unwrap();
    let r3 = s.put_policy(&p1b).await.unwrap();
    assert!(r1 < r2 && r2 < r3);
    let snap = s.snapshot().await.unwrap();
    assert_eq!(
        snap.policies,
        vec![p2.clone(), p1b.clone()],
        "ordered by name"
    );
    let r4 = s.delete_policy("deny-all").await.unwrap();
    assert!(r4 > r3);
    for name in ["deny-all", "never-existed"] {
        match s.delete_policy(name).await {
            Err(err @ StoreError::NotFound { .. }) => {
                assert!(err.to_string().contains(name), "{err}");
                assert_eq!(
                    err,
                    StoreError::NotFound {
                        kind: "policy".into(),
                        name: name.into()
                    }
                );
            }
            other => panic!("expected NotFound for {name}, got {other:?}"),
        }
    }
    let expected = vec![
        (r1, StoreEvent::PutPolicy(p1.clone())),
        (r2, StoreEvent::PutPolicy(p2.clone())),
        (r3, StoreEvent::PutPolicy(p1b.clone())),
        (r4, StoreEvent::DeletePolicy("deny-all".into())),
    ];
    let mut got = Vec::new();
    for _ in 0..expected.len() {
        let ev = next_event(&mut w).await;
        got.push((ev.revision, ev.event));
    }
    assert_eq!(got, expected);

    // No lease: policies outlive every agent.
    let lease = s.grant_lease(TTL).await.unwrap();
    s.revoke(&lease).await.unwrap();
    assert_eq!(s.snapshot().await.unwrap().policies, vec![p1b.clone()]);

    // Invalid names and documents.
    for name in ["", "Web", "a/b", "a_b", "a b"] {
        assert!(
            matches!(
                s.put_policy(&policy(name, "{}")).await,
                Err(StoreError::InvalidArgument(_))
            ),
            "{name:?}"
        );
        assert!(matches!(
            s.delete_policy(name).await,
            Err(StoreError::InvalidArgument(_))
        ));
    }
    assert!(matches!(
        s.put_policy(&policy(&"a".repeat(254), "{}")).await,
        Err(StoreError::InvalidArgument(_))
    ));
    s.put_policy(&policy(&"a".repeat(253), "[]")).await.unwrap();
    for doc in ["", "{", "not json", "{} {}"] {
        assert!(
            matches!(
                s.put_policy(&policy("bad-doc", doc)).await,
                Err(StoreError::InvalidArgument(_))
            ),
            "{doc:?}"
        );
    }
    s.delete_policy(&"a".repeat(253)).await.unwrap();
    s.delete_policy("web.allow-db").await.unwrap();
    assert!(s.snapshot().await.unwrap().policies.is_empty());
}

async fn malformed_identities_and_policies_are_skipped(h: &Harness) {
    let s = h.fresh().await;
    let good_id = s.allocate_identity("app=good").await.unwrap();
    let good_policy = policy("good", "{}");
    s.put_policy(&good_policy).await.unwrap();
    // A mapping written before identities existed: decodes with identity 0.
    let legacy = mapping("legacy", "site-a", 7, LOC_A);
    let mut legacy_json: serde_json::Value = serde_json::to_value(&legacy).unwrap();
    legacy_json.as_object_mut().unwrap().remove("identity");
    h.put_raw(
        &s,
        &store::mapping_key("site-a", legacy.sir_address()),
        legacy_json.to_string().as_bytes(),
    )
    .await;

    let bad: Vec<(String, Vec<u8>)> = vec![
        (format!("{KEY_PREFIX}identities/garbage"), b"{}".to_vec()),
        (
            identity_key(5000),
            br#"{"id":5001,"labels":"app=x"}"#.to_vec(),
        ),
        (identity_key(5002), b"not json".to_vec()),
        (identity_key(5003), br#"{"id":5003,"labels":""}"#.to_vec()),
        (identity_key(7), br#"{"id":7,"labels":"reserved"}"#.to_vec()),
        (identity_labels_key("app=y"), b"\"x\"".to_vec()),
        (format!("{KEY_PREFIX}identity-labels/a b"), b"5000".to_vec()),
        (policy_key("broken"), b"[1,2]".to_vec()),
        (
            policy_key("bad-doc"),
            br#"{"name":"bad-doc","document":"{"}"#.to_vec(),
        ),
        (
            policy_key("renamed"),
            br#"{"name":"other","document":"{}"}"#.to_vec(),
        ),
        (format!("{KEY_PREFIX}policies/Upper"), b"{}".to_vec()),
    ];
    h.put_raw_many(&s, &bad).await;

    let snap = s.snapshot().await.unwrap();
    assert_eq!(
        snap.identities,
        vec![IdentityRecord {
            id: good_id,
            labels: "app=good".into()
        }]
    );
    assert_eq!(snap.policies, vec![good_policy.clone()]);
    let with_identity_zero = MappingRecord {
        identity: 0,
        ..legacy
    };
    assert_eq!(snap.mappings, vec![with_identity_zero]);
    let skipped: BTreeSet<&str> = snap.skipped.iter().map(|r| r.key.as_str()).collect();
    let want: BTreeSet<&str> = bad.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(skipped, want, "{:?}", snap.skipped);

    // Watch: malformed items are errors that do not end the stream.
    let mut w = s.watch(snap.revision + 1).await.unwrap();
    h.put_raw(&s, &identity_key(6000), b"nope").await;
    h.put_raw(&s, &policy_key("broken-2"), b"nope").await;
    h.delete_raw(&s, &policy_key("broken")).await; // a delete is reported by name
    let p = policy("after", "true");
    let r = s.put_policy(&p).await.unwrap();
    for key in [identity_key(6000), policy_key("broken-2")] {
        match next_item(&mut w).await {
            Err(StoreError::Malformed { key: k, .. }) => assert_eq!(k, key),
            other => panic!("expected Malformed for {key}, got {other:?}"),
        }
    }
    assert_eq!(
        next_event(&mut w).await.event,
        StoreEvent::DeletePolicy("broken".into())
    );
    assert_eq!(
        next_event(&mut w).await,
        WatchEvent {
            revision: r,
            event: StoreEvent::PutPolicy(p)
        }
    );
    // A malformed index entry is an error for its label set only.
    assert!(matches!(
        s.allocate_identity("app=y").await,
        Err(StoreError::Malformed { .. })
    ));
    assert_eq!(s.allocate_identity("app=good").await.unwrap(), good_id);
}

// ---------------------------------------------------------------------------------------------
// The tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_embedded() {
    let h = Harness::embedded();
    conformance(&h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_embedded_on_disk() {
    let h = Harness::embedded_on_disk();
    conformance(&h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_etcd_single_node() {
    let mut h = Harness::etcd("etcd-1", 1);
    conformance(&h).await;

    // The store goes away: requests fail fast with Unavailable naming the endpoint.
    let s = match h.fresh().await {
        Store::Etcd(e) => Store::Etcd(e.with_request_timeout(Duration::from_secs(1))),
        other => other,
    };
    h.cluster.as_mut().unwrap().kill_member(0).unwrap();
    let t = Instant::now();
    match s.snapshot().await {
        Err(StoreError::Unavailable { endpoints, reason }) => {
            assert_eq!(endpoints, h.endpoints()[0], "{reason}");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_etcd_three_nodes_and_failover() {
    let mut h = Harness::etcd("etcd-3", 3);
    conformance(&h).await;
    let t = Instant::now();
    failover(&mut h).await;
    eprintln!("[{}] failover ok ({:?})", h.name, t.elapsed());
}

/// Retries an operation while the cluster elects a new leader.
async fn retry<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e @ StoreError::Unavailable { .. }) if Instant::now() < deadline => {
                eprintln!("  {what}: retrying after {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{what}: {e}"),
        }
    }
}

async fn failover(h: &mut Harness) {
    let s = h.fresh().await;
    let lease = s.grant_lease(TTL).await.unwrap();
    let m1 = mapping("f-1", "site-a", 1, LOC_A);
    s.create_mapping(&m1, &lease).await.unwrap();

    // Kill the leader: the hardest member to lose.
    let mut leader = None;
    for (i, ep) in h.endpoints().iter().enumerate() {
        let mut c = etcd_client::Client::connect([ep], None).await.unwrap();
        let st = c.status().await.unwrap();
        if st.leader() == st.header().unwrap().member_id() {
            leader = Some(i);
        }
    }
    let leader = leader.expect("a leader");
    h.cluster.as_mut().unwrap().kill_member(leader).unwrap();
    eprintln!("  killed leader m{leader}");

    let m2 = mapping("f-2", "site-b", 2, LOC_B);
    retry("keep_alive", || s.keep_alive(&lease)).await;
    retry("create", || async {
        match s.create_mapping(&m2, &lease).await {
            // A retried create whose first attempt went through.
            Err(StoreError::AddressInUse { owner_endpoint, .. }) if owner_endpoint == "f-2" => {
                Ok(0)
            }
            other => other,
        }
    })
    .await;
    let snap = retry("snapshot", || s.snapshot()).await;
    assert_eq!(by_endpoint(snap.mappings), vec![m1.clone(), m2.clone()]);

    // The killed member comes back and catches up.
    h.cluster.as_mut().unwrap().restart_member(leader).unwrap();
    let only = Store::connect(&StoreConfig::Etcd {
        tls: None,
        endpoints: vec![h.endpoints()[leader].clone()],
        connect_timeout: Duration::from_secs(2),
    })
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let snap = only.snapshot().await.unwrap();
        if by_endpoint(snap.mappings.clone()) == vec![m1.clone(), m2.clone()] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "restarted member did not converge: {snap:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // And serves writes that the others see.
    let m3 = mapping("f-3", "site-b", 3, LOC_B);
    only.create_mapping(&m3, &lease).await.unwrap();
    let snap = s.snapshot().await.unwrap();
    assert!(snap.mappings.contains(&m3));
    s.revoke(&lease).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_unreachable_is_unavailable_fast() {
    // Two loopback ports where nothing listens.
    let dead: Vec<String> = (0..2)
        .map(|_| {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://127.0.0.1:{}", l.local_addr().unwrap().port())
        })
        .collect();
    let t = Instant::now();
    let err = Store::connect(&StoreConfig::Etcd {
        tls: None,
        endpoints: dead.clone(),
        connect_timeout: Duration::from_millis(500),
    })
    .await
    .unwrap_err();
    let elapsed = t.elapsed();
    match &err {
        StoreError::Unavailable { endpoints, .. } => assert_eq!(endpoints, &dead.join(",")),
        other => panic!("expected Unavailable, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains(&dead[0]) && msg.contains(&dead[1]), "{msg}");
    assert!(elapsed < Duration::from_secs(2), "took {elapsed:?}");
    eprintln!("unreachable store reported in {elapsed:?}: {msg}");

    let err = EtcdStore::connect(&[], Duration::from_millis(100))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Unavailable { .. }));
}

#[test]
fn etcd_detached_cluster_outlives_its_handle_and_stops() {
    let dir = TempDir::new("detached");
    let info = EtcdCluster::start_detached(1, dir.path(), None).expect("detached cluster starts");
    let json = serde_json::to_string(&info).unwrap();
    let info: EtcdClusterInfo = serde_json::from_str(&json).unwrap();
    let pid = info.members[0].pid.expect("a pid");
    // Make sure we never leave it running, whatever happens below.
    struct Guard<'a>(&'a EtcdClusterInfo);
    impl Drop for Guard<'_> {
        fn drop(&mut self) {
            let _ = stop_detached(self.0);
        }
    }
    let _guard = Guard(&info);

    assert!(Path::new(&format!("/proc/{pid}")).exists());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cfg = StoreConfig::Etcd {
        tls: None,
        endpoints: info.client_endpoints(),
        connect_timeout: Duration::from_secs(2),
    };
    rt.block_on(async {
        let s = Store::connect(&cfg).await.unwrap();
        let lease = s.grant_lease(TTL).await.unwrap();
        s.put_host(&host("site-a", LOC_A), &lease).await.unwrap();
    });
    stop_detached(&info).unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(
        stat.is_empty() || stat.contains(") Z"),
        "etcd {pid} still running: {stat}"
    );
    let cfg = StoreConfig::Etcd {
        tls: None,
        endpoints: info.client_endpoints(),
        connect_timeout: Duration::from_millis(300),
    };
    assert!(matches!(
        rt.block_on(Store::connect(&cfg)),
        Err(StoreError::Unavailable { .. })
    ));
}

#[test]
fn etcd_start_failure_names_the_member_and_its_log() {
    let dir = TempDir::new("bad");
    let mut opts = EtcdClusterOptions::new(1, dir.path());
    opts.etcd_bin = PathBuf::from("/bin/false");
    let err = EtcdCluster::start_with(&opts).unwrap_err().to_string();
    assert!(err.contains("m0") && err.contains("m0.log"), "{err}");

    let mut opts = EtcdClusterOptions::new(1, dir.path());
    opts.etcd_bin = PathBuf::from("/nonexistent/etcd");
    let err = EtcdCluster::start_with(&opts).unwrap_err().to_string();
    assert!(err.contains("/nonexistent/etcd"), "{err}");
    assert!(
        err.contains("etcd-server"),
        "names the Debian package: {err}"
    );
}
