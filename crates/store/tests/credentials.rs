//! Per-host store credentials on a real etcd (Debian `etcd-server`) with TLS, client
//! certificates and auth: what one host's certificate may and may not do.

use std::net::Ipv6Addr;
use std::time::Duration;

use ila::{ChecksumMode, Identifier, Locator, SirPrefix};
use store::etcd_cluster::EtcdCluster;
use store::{HostRecord, MappingRecord, Store, StoreConfig, StoreError, StoreEvent};

const T: Duration = Duration::from_secs(5);
const LOC_A: u64 = 0x2001_0db8_0001_0001;
const LOC_B: u64 = 0x2001_0db8_0001_0002;

fn mapping(endpoint: &str, host: &str, n: u64, locator: u64) -> MappingRecord {
    MappingRecord {
        endpoint: endpoint.into(),
        host: host.into(),
        sir: SirPrefix(0x2001_0db8_00ff_0000),
        identifier: Identifier(0x3000_0001_0000_0000 | n),
        locator: Locator(locator),
        mode: ChecksumMode::NeutralMap,
        identity: 0,
        labels_sha256: None,
    }
}

fn host(name: &str, locator: u64) -> HostRecord {
    HostRecord {
        name: name.into(),
        locator: Locator(locator),
        underlay: Ipv6Addr::LOCALHOST,
    }
}

struct Lab {
    cluster: EtcdCluster,
    _dir: tempdir::TempDir,
}

mod tempdir {
    //! A per-run directory removed on drop (no extra crate).
    pub struct TempDir(std::path::PathBuf);
    impl TempDir {
        pub fn new(tag: &str) -> TempDir {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default();
            let p = std::env::temp_dir()
                .join(format!("ilanet-cred-{tag}-{}-{nanos}", std::process::id()));
            std::fs::create_dir_all(&p).expect("temp dir");
            TempDir(p)
        }
        pub fn path(&self) -> &std::path::Path {
            &self.0
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn secure(tag: &str, members: usize) -> Lab {
    let dir = tempdir::TempDir::new(tag);
    let hosts = vec!["site-a".to_string(), "site-b".to_string()];
    let cluster = EtcdCluster::start_secure(members, dir.path(), &hosts).expect("secure etcd");
    Lab { cluster, _dir: dir }
}

impl Lab {
    async fn as_user(&self, cn: &str) -> Store {
        Store::connect(&self.cluster.info().store_config(cn, T))
            .await
            .unwrap_or_else(|e| panic!("connect as {cn}: {e}"))
    }
}

fn denied(r: Result<i64, StoreError>, what: &str) {
    match r {
        Err(StoreError::Backend(m)) if m.contains("permission denied") => {}
        other => panic!("{what}: expected permission denied, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hosts_certificate_writes_only_its_own_keys() {
    let lab = secure("own", 1);
    let (a, b) = (lab.as_user("site-a").await, lab.as_user("site-b").await);
    let (la, lb) = (
        a.grant_lease(Duration::from_secs(30))
            .await
            .expect("lease a"),
        b.grant_lease(Duration::from_secs(30))
            .await
            .expect("lease b"),
    );
    a.put_host(&host("site-a", LOC_A), &la)
        .await
        .expect("own host");
    b.put_host(&host("site-b", LOC_B), &lb)
        .await
        .expect("own host");
    let mb = mapping("web", "site-b", 2, LOC_B);
    b.create_mapping(&mb, &lb).await.expect("b's own mapping");

    // Host A's certificate cannot rewrite or delete B's mapping, nor B's host record.
    let hijack = MappingRecord {
        locator: Locator(LOC_A),
        ..mb.clone()
    };
    denied(a.put_mapping(&hijack, &la).await, "A rewrites B's mapping");
    denied(
        a.delete_mapping("site-b", mb.sir_address()).await,
        "A deletes B's mapping",
    );
    denied(
        a.put_host(&host("site-b", LOC_A), &la).await,
        "A rewrites B's host record",
    );
    // The raw etcd request is refused as well (no path around the store's API).
    let raw = a_raw_put(&a, &store::mapping_key("site-b", mb.sir_address())).await;
    assert!(
        raw.contains("permission denied"),
        "raw put under B's prefix: {raw}"
    );
    // Nor may A revoke B's lease (that would delete B's keys).
    let Store::Etcd(ea) = &a else { unreachable!() };
    let revoke = ea.client().lease_revoke(lb.id).await;
    assert!(
        revoke
            .as_ref()
            .is_err_and(|e| e.to_string().contains("permission denied")),
        "A revokes B's lease: {revoke:?}"
    );

    // B's mapping is what everyone reads.
    let snap = a.snapshot().await.expect("snapshot");
    assert_eq!(snap.mappings, vec![mb.clone()]);
    assert!(snap.skipped.is_empty(), "{:?}", snap.skipped);
    // What a host may do: its own mapping, and shared identities.
    a.create_mapping(&mapping("db", "site-a", 3, LOC_A), &la)
        .await
        .expect("a's own mapping");
    a.allocate_identity("app=db").await.expect("identity");
    // (etcd 3.4 lets any authenticated user compact the history: that forces watchers to
    // list again, it changes no record.)
}

async fn a_raw_put(s: &Store, key: &str) -> String {
    let Store::Etcd(e) = s else { unreachable!() };
    match e.client().put(key, "{}", None).await {
        Ok(_) => "accepted".into(),
        Err(e) => e.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_a_certificate_is_refused() {
    let lab = secure("nocert", 1);
    let endpoints = lab.cluster.client_endpoints();
    assert!(endpoints.iter().all(|e| e.starts_with("https://")));
    // No TLS at all: the member speaks only TLS.
    let plain: Vec<String> = endpoints
        .iter()
        .map(|e| e.replace("https://", "http://"))
        .collect();
    let r = Store::connect(&StoreConfig::Etcd {
        endpoints: plain,
        connect_timeout: Duration::from_secs(2),
        tls: None,
    })
    .await;
    assert!(
        matches!(r, Err(StoreError::Unavailable { .. })),
        "plain HTTP: {r:?}"
    );
    // TLS that trusts the CA but shows no client certificate: the handshake is refused.
    let r = Store::connect(&StoreConfig::Etcd {
        endpoints: endpoints.clone(),
        connect_timeout: Duration::from_secs(2),
        tls: None,
    })
    .await;
    assert!(r.is_err(), "https without a certificate: {r:?}");
    // A certificate of another CA is refused too.
    let other = tempdir::TempDir::new("other-ca");
    let foreign =
        store::pki::Pki::generate(other.path(), &[], &[], &["site-a".into()]).expect("other pki");
    let mut tls = foreign.client("site-a");
    tls.ca = lab.cluster.info().client_tls("site-a").expect("tls").ca;
    let r = Store::connect(&StoreConfig::Etcd {
        endpoints,
        connect_timeout: Duration::from_secs(2),
        tls: Some(tls),
    })
    .await;
    assert!(
        matches!(r, Err(StoreError::Unavailable { .. })),
        "foreign certificate: {r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_record_under_a_hosts_prefix_is_skipped_by_key() {
    let lab = secure("forged", 1);
    let (root, b) = (lab.as_user("root").await, lab.as_user("site-a").await);
    let lb = b.grant_lease(Duration::from_secs(30)).await.expect("lease");
    let mut watch = b.watch(0).await.expect("watch");
    // Root writes, under site-b's prefix, a mapping that claims to be site-a's.
    let forged = mapping("evil", "site-a", 7, LOC_A);
    let key = store::mapping_key("site-b", forged.sir_address());
    let Store::Etcd(r) = &root else {
        unreachable!()
    };
    r.client()
        .put(
            key.as_str(),
            serde_json::to_vec(&forged).expect("json"),
            None,
        )
        .await
        .expect("root writes");
    b.put_host(&host("site-a", LOC_A), &lb).await.expect("host");
    match tokio::time::timeout(T, watch.next()).await.expect("event") {
        Some(Err(StoreError::Malformed { key: k, reason })) => {
            assert_eq!(k, key);
            assert!(reason.contains("claims host"), "{reason}");
        }
        other => panic!("expected the forged record reported by key, got {other:?}"),
    }
    // The watch goes on.
    match tokio::time::timeout(T, watch.next()).await.expect("event") {
        Some(Ok(ev)) => assert!(matches!(ev.event, StoreEvent::PutHost(_)), "{ev:?}"),
        other => panic!("{other:?}"),
    }
    let snap = b.snapshot().await.expect("snapshot");
    assert!(snap.mappings.is_empty(), "{:?}", snap.mappings);
    assert_eq!(snap.skipped.len(), 1, "{:?}", snap.skipped);
    assert_eq!(snap.skipped[0].key, key);
}

/// Allocates, retrying while the 3-member cluster is briefly without a leader (a loaded
/// machine right after start): a retried allocation is idempotent.
async fn allocate(s: &Store, labels: &str) -> u32 {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        match s.allocate_identity(labels).await {
            Ok(id) => return id,
            Err(e @ StoreError::Unavailable { .. }) if std::time::Instant::now() < deadline => {
                eprintln!("allocating {labels}: retrying after {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("allocating {labels}: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identities_allocated_by_two_hosts_agree() {
    let mut lab = secure("ids", 3);
    let (a, b) = (lab.as_user("site-a").await, lab.as_user("site-b").await);
    let labels: Vec<String> = (0..20)
        .map(|i| format!("app=x{i},io.ilanet.tenant=1"))
        .collect();
    // Both hosts allocate every label set at the same time.
    let (ids_a, ids_b) = tokio::join!(
        async {
            let mut v = Vec::new();
            for l in &labels {
                v.push(allocate(&a, l).await);
            }
            v
        },
        async {
            let mut v = Vec::new();
            for l in labels.iter().rev() {
                v.push(allocate(&b, l).await);
            }
            v.reverse();
            v
        }
    );
    assert_eq!(
        ids_a, ids_b,
        "both hosts got the same id for each label set"
    );
    let mut unique = ids_a.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(
        unique.len(),
        labels.len(),
        "distinct label sets, distinct ids"
    );
    // Forced collisions (both start at the same candidate) from the two hosts at once: the
    // create-only transactions give each label set one id, different label sets different ids.
    let first = 9_000_000;
    let (x, y) = tokio::join!(
        a.allocate_identity_from("app=collide-a", first),
        b.allocate_identity_from("app=collide-b", first)
    );
    let (x, y) = (x.expect("a"), y.expect("b"));
    assert_ne!(x, y);
    assert!([first, first + 1].contains(&x) && [first, first + 1].contains(&y));
    assert_eq!(
        b.allocate_identity_from("app=collide-a", first)
            .await
            .expect("again"),
        x,
        "site-b finds site-a's allocation"
    );
    // The stored records say the same, read back by either host.
    let snap = b.snapshot().await.expect("snapshot");
    for (l, id) in labels.iter().zip(&ids_a) {
        assert!(
            snap.identities
                .iter()
                .any(|r| r.id == *id && &r.labels == l),
            "{id} {l}"
        );
        assert_eq!(*id, store::identity_first_candidate(l), "no collision here");
    }
    // A member restarted (peer and client TLS from its flags) catches up, and a host's
    // certificate reads the same from it alone.
    lab.cluster.kill_member(0).expect("kill");
    lab.cluster.restart_member(0).expect("restart with TLS");
    let only = Store::connect(&StoreConfig::Etcd {
        endpoints: vec![lab.cluster.member_endpoint(0).expect("member 0")],
        connect_timeout: T,
        tls: lab.cluster.info().client_tls("site-a"),
    })
    .await
    .expect("connect to the restarted member");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match only.snapshot().await {
            Ok(s) if s.identities.len() == snap.identities.len() => break,
            other => assert!(
                std::time::Instant::now() < deadline,
                "restarted member: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn policy(name: &str, document: &str) -> store::PolicyRecord {
    store::PolicyRecord {
        name: name.into(),
        document: document.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_policy_administrator_writes_policies() {
    let lab = secure("pol", 1);
    let a = lab.as_user("site-a").await;
    let admin = lab.as_user(store::pki::POLICY_ADMIN_USER).await;
    admin
        .put_policy(&policy("allow-web", r#"{"ingress":[]}"#))
        .await
        .expect("the administrator writes a policy");
    // A host reads it, and can neither rewrite nor delete it, nor add one.
    let snap = a.snapshot().await.expect("snapshot");
    assert_eq!(snap.policies.len(), 1, "{:?}", snap.policies);
    denied(
        a.put_policy(&policy("allow-web", r#"{"ingress":[{}]}"#))
            .await,
        "a host rewrites a policy",
    );
    denied(
        a.put_policy(&policy("allow-all", "{}")).await,
        "a host adds a policy",
    );
    match a.delete_policy("allow-web").await {
        Err(StoreError::Backend(m)) if m.contains("permission denied") => {}
        other => panic!("a host deletes a policy: expected permission denied, got {other:?}"),
    }
    // The administrator may touch nothing else: no mapping, no host record.
    let l = admin
        .grant_lease(Duration::from_secs(30))
        .await
        .expect("lease");
    denied(
        admin
            .put_mapping(&mapping("x", "site-a", 9, LOC_A), &l)
            .await,
        "the policy administrator writes a mapping",
    );
    let snap = a.snapshot().await.expect("snapshot");
    assert_eq!(snap.policies[0].document, r#"{"ingress":[]}"#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allocation_through_a_rewritten_identity_index_fails_naming_it() {
    let lab = secure("idx", 1);
    let (a, b) = (lab.as_user("site-a").await, lab.as_user("site-b").await);
    let web = a
        .allocate_identity("app=web,ilanet.io/tenant=1")
        .await
        .expect("web");
    // Host A (compromised) points db's index entry at web's identity, as etcd lets it.
    let index = store::identity_labels_key("app=db,ilanet.io/tenant=1");
    let Store::Etcd(ea) = &a else { unreachable!() };
    ea.client()
        .put(index.as_str(), web.to_string(), None)
        .await
        .expect("a host may write the shared identity index");
    // Host B's allocation for db does not hand out web's identity: an error names the key.
    match b.allocate_identity("app=db,ilanet.io/tenant=1").await {
        Err(StoreError::Malformed { key, reason }) => {
            assert_eq!(key, index);
            assert!(
                reason.contains(&format!("names identity {web}")) && reason.contains("app=web"),
                "{reason}"
            );
        }
        other => panic!("expected a malformed index, got {other:?}"),
    }
    // An index naming an identity without a record is refused as well.
    ea.client()
        .put(index.as_str(), "9999999", None)
        .await
        .expect("put");
    match b.allocate_identity("app=db,ilanet.io/tenant=1").await {
        Err(StoreError::Malformed { key, reason }) if key == index => {
            assert!(reason.contains("has no record"), "{reason}")
        }
        other => panic!("expected a malformed index, got {other:?}"),
    }
    // Untouched label sets still allocate as before.
    assert_eq!(
        b.allocate_identity("app=web,ilanet.io/tenant=1")
            .await
            .expect("web again"),
        web
    );
}
