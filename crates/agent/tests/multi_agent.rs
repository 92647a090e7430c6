//! Several whole agents (shell and core) in one process, without root: in-memory maps and
//! plumbing, one embedded store whose leases expire by an injected clock. What the tests
//! assert is what each host's maps hold, as the data path would read them.

use std::collections::BTreeMap;
use std::net::Ipv6Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use agent::io::{MemoryPlumbing, SharedMemoryMaps};
use agent::{Agent, AgentConfig};
use ila::{ChecksumMode, Locator, SirPrefix, TenantNetwork, Vnid};
use store::{EmbeddedStore, ManualClock, StoreConfig};

/// Removes the test's directory however the test ends.
struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> Self {
        let p = std::env::temp_dir().join(format!("ilanet-multi-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One emulated host: its agent task, maps and plumbing (which outlive an agent restart).
struct Host {
    agent: Arc<Agent>,
    task: tokio::task::JoinHandle<()>,
    maps: SharedMemoryMaps,
    plumbing: Arc<MemoryPlumbing>,
    cfg: AgentConfig,
}

impl Drop for Host {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn tenant() -> TenantNetwork {
    TenantNetwork::new(
        "blue",
        Vnid::new(1).expect("vnid"),
        SirPrefix::from_addr("fd00:dead:beef::".parse().expect("addr")),
    )
    .expect("tenant")
}

fn locator(i: u16) -> Locator {
    Locator::from_addr(Ipv6Addr::new(0x2001, 0xdb8, 1, i, 0, 0, 0, 0))
}

fn config(dir: &TempDir, i: u16, ttl: Duration) -> AgentConfig {
    let host = format!("h{i}");
    AgentConfig {
        host: host.clone(),
        host_netns: format!("mem-{host}"),
        uplink: "eth0".into(),
        locator: locator(i),
        underlay: Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, i),
        tenants: vec![tenant()],
        csum_mode: ChecksumMode::NeutralMap,
        pin_dir: dir.0.join(&host).join("pins"),
        state_file: dir.0.join(&host).join("endpoints.json"),
        socket: dir.0.join(&host).join("agent.sock"),
        netns_prefix: format!("mem-{host}"),
        lease_ttl: ttl,
    }
}

fn start(
    store: &EmbeddedStore,
    cfg: AgentConfig,
    maps: SharedMemoryMaps,
    plumbing: Arc<MemoryPlumbing>,
) -> Host {
    let agent = Agent::with_io(
        cfg.clone(),
        StoreConfig::Embedded(store.clone()),
        Box::new(maps.clone()),
        Arc::clone(&plumbing) as Arc<dyn agent::io::Plumbing>,
        None,
    )
    .expect("agent");
    let task = tokio::spawn(Arc::clone(&agent).run(None));
    Host {
        agent,
        task,
        maps,
        plumbing,
        cfg,
    }
}

fn new_host(store: &EmbeddedStore, dir: &TempDir, i: u16, ttl: Duration) -> Host {
    start(
        store,
        config(dir, i, ttl),
        SharedMemoryMaps::default(),
        Arc::new(MemoryPlumbing::default()),
    )
}

/// Waits (up to 10 s) until `cond` holds for the host's maps.
async fn until(host: &Host, what: &str, cond: impl Fn(&agent::io::MemoryMaps) -> bool) {
    for _ in 0..1000 {
        if cond(&host.maps.snapshot()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "{}: {what} did not happen; maps: {:?}",
        host.cfg.host,
        host.maps.snapshot()
    );
}

/// The locator an out-entry sends `sir` to, if there is one.
fn locator_of(maps: &agent::io::MemoryMaps, sir: Ipv6Addr) -> Option<Locator> {
    maps.out.get(&sir).map(|e| Locator::from_addr(e.ila))
}

async fn add(host: &Host, name: &str) -> agent::reconcile::LocalEndpoint {
    host.agent
        .add_endpoint(name, None, None, false, BTreeMap::new())
        .await
        .expect("add endpoint")
}

const LONG: Duration = Duration::from_secs(3600);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mapping_reaches_every_host_and_follows_its_endpoint_when_it_moves() {
    let dir = TempDir::new("move");
    let store = EmbeddedStore::new();
    let hosts: Vec<Host> = (1..=3).map(|i| new_host(&store, &dir, i, LONG)).collect();
    let ep = add(&hosts[0], "search").await;
    for h in &hosts {
        until(h, "search's out-entry via h1", |m| {
            locator_of(m, ep.sir_addr) == Some(locator(1))
        })
        .await;
    }
    assert_eq!(
        hosts[0].maps.snapshot().inbound.len(),
        1,
        "h1 has the in-entry"
    );
    assert!(hosts[1].maps.snapshot().inbound.is_empty());

    // The move, as `ilanet endpoint move` makes it: off h1 keeping the mapping, onto h2 with
    // the same identifier, overwriting the record.
    hosts[0]
        .agent
        .del_endpoint("search", true)
        .await
        .expect("del");
    let moved = hosts[1]
        .agent
        .add_endpoint("search", None, Some(ep.identifier), true, BTreeMap::new())
        .await
        .expect("add on h2");
    assert_eq!(moved.sir_addr, ep.sir_addr, "the address survives the move");
    for h in &hosts {
        until(h, "search's out-entry via h2", |m| {
            locator_of(m, ep.sir_addr) == Some(locator(2))
        })
        .await;
    }
    until(&hosts[0], "h1 without the in-entry", |m| {
        m.inbound.is_empty()
    })
    .await;
    assert_eq!(hosts[1].maps.snapshot().inbound.len(), 1, "h2 has it now");
    assert!(hosts[0].plumbing.veths().is_empty(), "h1's veth is gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_hosts_mappings_go_when_its_lease_expires_and_not_before() {
    let dir = TempDir::new("lease");
    let clock = ManualClock::new();
    let store = EmbeddedStore::with_clock(clock.clone());
    let dying = new_host(&store, &dir, 1, Duration::from_secs(10));
    let watcher = new_host(&store, &dir, 2, LONG);
    let ep = add(&dying, "ephemeral").await;
    until(&watcher, "the mapping", |m| {
        m.out.contains_key(&ep.sir_addr)
    })
    .await;

    // The agent dies: no more keep-alives. Its mapping stays until the lease runs out.
    dying.task.abort();
    clock.advance(Duration::from_secs(9));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        watcher.maps.snapshot().out.contains_key(&ep.sir_addr),
        "gone before the lease expired"
    );
    clock.advance(Duration::from_secs(2));
    until(&watcher, "the mapping gone", |m| {
        !m.out.contains_key(&ep.sir_addr) && !m.ipcache.contains_key(&ep.sir_addr)
    })
    .await;
    let hosts = store::Store::Embedded(store.clone())
        .snapshot()
        .await
        .expect("snapshot")
        .hosts;
    assert_eq!(
        hosts.iter().map(|h| h.name.as_str()).collect::<Vec<_>>(),
        vec!["h2"],
        "the dead host's record went with its lease"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_keeps_its_endpoints_and_entries_and_republishes_them() {
    let dir = TempDir::new("restart");
    let store = EmbeddedStore::new();
    let h1 = new_host(&store, &dir, 1, LONG);
    let h2 = new_host(&store, &dir, 2, LONG);
    let ep = add(&h1, "stays").await;
    until(&h2, "the mapping", |m| m.out.contains_key(&ep.sir_addr)).await;
    let before = h1.maps.snapshot();

    // Restart: same state file, same (surviving) maps and plumbing, a new lease.
    let (cfg, maps, plumbing) = (h1.cfg.clone(), h1.maps.clone(), Arc::clone(&h1.plumbing));
    drop(h1);
    let h1 = start(&store, cfg, maps, plumbing);
    let names: Vec<_> = h1.agent.endpoints().into_iter().map(|e| e.name).collect();
    assert_eq!(names, vec!["stays"]);
    for _ in 0..500 {
        if h1.agent.status().store_connected && h1.agent.status().resyncs > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        h1.maps.snapshot(),
        before,
        "the restart rewrote nothing (traffic was never interrupted)"
    );
    let snap = store::Store::Embedded(store.clone())
        .snapshot()
        .await
        .expect("snapshot");
    assert!(snap.mappings.iter().any(|r| r.sir_address() == ep.sir_addr));
    assert!(h2.maps.snapshot().out.contains_key(&ep.sir_addr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_deleted_behind_the_agents_back_are_written_again() {
    let dir = TempDir::new("behind");
    let store = EmbeddedStore::new();
    let h1 = new_host(&store, &dir, 1, LONG);
    let h2 = new_host(&store, &dir, 2, LONG);
    let ep = add(&h1, "owned").await;
    until(&h2, "the mapping", |m| m.out.contains_key(&ep.sir_addr)).await;
    store
        .delete_raw(&store::mapping_key("h1", ep.sir_addr))
        .expect("delete");
    store.delete_raw(&store::host_key("h1")).expect("delete");
    for _ in 0..500 {
        let snap = store::Store::Embedded(store.clone())
            .snapshot()
            .await
            .expect("snapshot");
        let mapping = snap.mappings.iter().any(|r| r.sir_address() == ep.sir_addr);
        let host = snap.hosts.iter().any(|h| h.name == "h1");
        if mapping && host {
            until(&h2, "the mapping back", |m| {
                m.out.contains_key(&ep.sir_addr)
            })
            .await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("h1 did not write its records back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_plumbing_leaves_nothing_and_a_duplicate_is_refused() {
    let dir = TempDir::new("fail");
    let store = EmbeddedStore::new();
    let h1 = new_host(&store, &dir, 1, LONG);
    h1.plumbing
        .fail_create
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let err = h1
        .agent
        .add_endpoint("x", None, None, false, BTreeMap::new())
        .await
        .expect_err("plumbing fails");
    assert_eq!(err.kind(), agent::ErrorKind::Internal, "{err}");
    h1.plumbing
        .fail_create
        .store(false, std::sync::atomic::Ordering::SeqCst);
    assert!(h1.agent.endpoints().is_empty());
    assert!(h1.plumbing.veths().is_empty());
    let snap = store::Store::Embedded(store.clone())
        .snapshot()
        .await
        .expect("snapshot");
    assert!(snap.mappings.is_empty(), "nothing was published");
    let state = std::fs::read_to_string(&h1.cfg.state_file).expect("state");
    assert!(!state.contains("\"x\""), "nothing recorded: {state}");
    add(&h1, "x").await;
    let err = h1
        .agent
        .add_endpoint("x", None, None, false, BTreeMap::new())
        .await
        .expect_err("duplicate");
    assert_eq!(err.kind(), agent::ErrorKind::Conflict, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_created_at_once_get_distinct_addresses_and_all_arrive() {
    let dir = TempDir::new("parallel");
    let store = EmbeddedStore::new();
    let h1 = Arc::new(new_host(&store, &dir, 1, LONG));
    let h2 = new_host(&store, &dir, 2, LONG);
    let mut tasks = Vec::new();
    for i in 0..16 {
        let h1 = Arc::clone(&h1);
        tasks.push(tokio::spawn(async move {
            // The same name twice: one of each pair must be refused, never both made.
            let name = format!("p{}", i / 2);
            h1.agent
                .add_endpoint(&name, None, None, false, BTreeMap::new())
                .await
        }));
    }
    let mut made = Vec::new();
    let mut refused = 0;
    for t in tasks {
        match t.await.expect("task") {
            Ok(ep) => made.push(ep),
            Err(e) => {
                assert_eq!(e.kind(), agent::ErrorKind::Conflict, "{e}");
                refused += 1;
            }
        }
    }
    assert_eq!((made.len(), refused), (8, 8));
    let addrs: std::collections::BTreeSet<_> = made.iter().map(|e| e.sir_addr).collect();
    assert_eq!(addrs.len(), 8, "distinct addresses");
    until(&h2, "all eight mappings", |m| {
        addrs.iter().all(|a| m.out.contains_key(a))
    })
    .await;
    assert_eq!(h1.plumbing.veths().len(), 8);
    let recorded = std::fs::read_to_string(&h1.cfg.state_file).expect("state");
    let state: serde_json::Value = serde_json::from_str(&recorded).expect("json");
    assert_eq!(state["endpoints"].as_array().map(|a| a.len()), Some(8));
    assert_eq!(state["creating"].as_array().map(|a| a.len()), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cni_del_returns_before_the_veth_goes_and_a_new_add_waits_for_it() {
    let dir = TempDir::new("cnidel");
    let store = EmbeddedStore::new();
    let h1 = new_host(&store, &dir, 1, LONG);
    let h2 = new_host(&store, &dir, 2, LONG);
    h1.plumbing.add_runtime_netns("/run/netns/cni-1");
    let a = h1
        .agent
        .cni_add("c0ffee", "/run/netns/cni-1", "eth0", None, BTreeMap::new())
        .await
        .expect("add");
    until(&h2, "the mapping", |m| m.out.contains_key(&a.address)).await;
    h1.agent.cni_del("c0ffee", "eth0").await.expect("del");
    // The mapping and this host's entries are gone when DEL returns.
    assert!(!h1.maps.snapshot().out.contains_key(&a.address));
    assert!(h1.maps.snapshot().inbound.is_empty());
    assert!(h1.agent.endpoints().is_empty());
    // DEL is idempotent, and an ADD of the same container succeeds once the veth is gone.
    h1.agent.cni_del("c0ffee", "eth0").await.expect("del again");
    let b = h1
        .agent
        .cni_add("c0ffee", "/run/netns/cni-1", "eth0", None, BTreeMap::new())
        .await
        .expect("add again");
    assert_eq!(h1.plumbing.veths().len(), 1, "one veth: the new one");
    until(&h2, "the new mapping", |m| m.out.contains_key(&b.address)).await;
    until(&h2, "the old mapping gone", |m| {
        a.address == b.address || !m.out.contains_key(&a.address)
    })
    .await;
    h1.agent.cni_del("c0ffee", "eth0").await.expect("del");
    for _ in 0..500 {
        let state = std::fs::read_to_string(&h1.cfg.state_file).expect("state");
        let v: serde_json::Value = serde_json::from_str(&state).expect("json");
        if h1.plumbing.veths().is_empty() && v["creating"].as_array().is_some_and(|a| a.is_empty())
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the background removal did not finish");
}
