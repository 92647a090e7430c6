//! Per-host store credentials end to end: `lab up --store etcd` makes TLS, certificates and
//! per-host etcd roles by default; `--insecure-store` runs without. Real etcd, real namespaces,
//! real eBPF (needs root).

use std::net::Ipv6Addr;
use std::process::{Command, Output};
use std::time::Duration;

use agent::api::{AgentStatus, Request};
use dataplane::HostMaps;
use lab::agents::{self, StoreKind};
use lab::plan::Plan;
use lab::state::{self, LabState};
use lab::{probe, LabSpec};

mod common;
use common::{text, wait_for};

const BIN: &str = env!("CARGO_BIN_EXE_ilanet");
const T: Duration = Duration::from_secs(3);

struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = lab::down(&self.0);
    }
}

fn up(tag: &str, insecure: bool) -> (Cleanup, Plan) {
    up_hosts(tag, insecure, 2)
}

fn up_hosts(tag: &str, insecure: bool, hosts: usize) -> (Cleanup, Plan) {
    let name = format!("s{}-{tag}", std::process::id());
    let cleanup = Cleanup(name.clone());
    let mut spec = LabSpec::generic(&name, hosts, 1);
    spec.agent_binary = Some(BIN.into());
    spec.store = StoreKind::Etcd;
    spec.insecure_store = insecure;
    spec.lease_ttl = Duration::from_secs(5);
    let plan = lab::up(&spec).expect("lab up");
    (cleanup, plan)
}

fn etcd(lab: &str) -> store::etcd_cluster::EtcdClusterInfo {
    LabState::load(lab)
        .expect("load")
        .expect("record")
        .etcd
        .expect("etcd")
}

/// `etcdctl` with the given connection options; the finished command.
fn etcdctl(conn: &[String], args: &[&str]) -> Output {
    Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(conn)
        .args(["--command-timeout", "3s", "--dial-timeout", "2s"])
        .args(args)
        .output()
        .expect("etcdctl")
}

/// Connection options as the etcd user `cn` (with that user's certificate).
fn as_user(lab: &str, cn: &str) -> Vec<String> {
    let e = etcd(lab);
    let t = e.client_tls(cn).expect("the lab's etcd has certificates");
    vec![
        "--endpoints".into(),
        e.client_endpoints().join(","),
        "--cacert".into(),
        t.ca.display().to_string(),
        "--cert".into(),
        t.cert.display().to_string(),
        "--key".into(),
        t.key.display().to_string(),
    ]
}

fn out_map(lab: &str, host: &str) -> Vec<Ipv6Addr> {
    HostMaps::open_pinned(&state::host_pin_dir(lab, host))
        .expect("maps")
        .out_entries()
        .expect("entries")
        .into_iter()
        .map(|(k, _)| k)
        .collect()
}

fn status(lab: &str, host: &str) -> AgentStatus {
    serde_json::from_value(agents::call(lab, host, &Request::Status).expect("status"))
        .expect("json")
}

#[test]
#[ignore = "needs root: network namespaces, eBPF, etcd"]
fn a_secure_etcd_lab_refuses_foreign_writes_and_ignores_forged_records() {
    let (c, plan) = up("tls", false);
    let name = c.0.clone();
    let (a, b) = (&plan.hosts[0].containers[0], &plan.hosts[1].containers[0]);
    probe::ping(&a.netns, b.sir_addr, T).expect("ping a->b over TLS-distributed mappings");
    let e = etcd(&name);
    assert!(e
        .client_endpoints()
        .iter()
        .all(|u| u.starts_with("https://")));
    for h in &plan.hosts {
        assert!(status(&name, &h.name).store_connected, "{}", h.name);
    }

    // No certificate: refused (plain HTTP, or TLS without a client certificate).
    let plain = vec![
        "--endpoints".to_string(),
        e.client_endpoints()
            .join(",")
            .replace("https://", "http://"),
    ];
    let o = etcdctl(&plain, &["get", "--prefix", "/ilanet/"]);
    assert!(!o.status.success(), "plain HTTP read: {}", text(&o));
    let ca_only = vec![
        "--endpoints".to_string(),
        e.client_endpoints().join(","),
        "--cacert".into(),
        e.client_tls("root").expect("tls").ca.display().to_string(),
    ];
    let o = etcdctl(&ca_only, &["get", "--prefix", "/ilanet/"]);
    assert!(
        !o.status.success(),
        "TLS without a certificate: {}",
        text(&o)
    );

    // site1's credentials cannot rewrite site2's mapping (etcd refuses the request).
    let b_key = store::mapping_key("site2", b.sir_addr);
    let site1 = as_user(&name, "site1");
    let hijack = format!(
        r#"{{"endpoint":"{}","host":"site2","sir":"fd00:dead:beef::/64","identifier":"{}","locator":"{}","mode":"neutral-map","identity":0}}"#,
        b.name,
        ila::Identifier::from_addr(b.sir_addr),
        plan.hosts[0].locator
    );
    let o = etcdctl(&site1, &["put", &b_key, &hijack]);
    assert!(!o.status.success(), "site1 rewrote site2's mapping");
    assert!(text(&o).contains("permission denied"), "{}", text(&o));
    let o = etcdctl(&site1, &["del", &b_key]);
    assert!(text(&o).contains("permission denied"), "{}", text(&o));
    // It may read everything, and write under its own prefix.
    let o = etcdctl(&site1, &["get", "--prefix", "/ilanet/v1/", "--keys-only"]);
    assert!(
        o.status.success() && text(&o).contains(&b_key),
        "{}",
        text(&o)
    );

    // A record written by hand (with root's credentials) under site2's prefix that claims a
    // locator that is not site2's: every agent ignores it and names its key.
    let forged_addr: Ipv6Addr = "fd00:dead:beef:0:6000:1:bad:1".parse().expect("addr");
    let forged_key = store::mapping_key("site2", forged_addr);
    let forged = format!(
        r#"{{"endpoint":"forged","host":"site2","sir":"fd00:dead:beef::/64","identifier":"{}","locator":"2001:db8:dead::/64","mode":"neutral-map","identity":0}}"#,
        ila::Identifier::from_addr(forged_addr)
    );
    let root = as_user(&name, "root");
    let o = etcdctl(&root, &["put", &forged_key, &forged]);
    assert!(o.status.success(), "root writes: {}", text(&o));
    let log = agents::run_dir(&name).join("agent-site1.log");
    wait_for(
        "site1 to name the forged key",
        Duration::from_secs(10),
        || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .lines()
                .any(|l| l.contains(&forged_key) && l.contains("2001:db8:dead::/64"))
        },
    );
    assert!(
        !out_map(&name, "site1").contains(&forged_addr),
        "never applied"
    );
    // A malformed one (another host named than the prefix's) is skipped by key as well.
    let wrong_host = forged.replace(r#""host":"site2""#, r#""host":"site1""#);
    let o = etcdctl(&root, &["put", &forged_key, &wrong_host]);
    assert!(o.status.success(), "{}", text(&o));
    wait_for(
        "site1 to name the malformed key",
        Duration::from_secs(10),
        || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .lines()
                .any(|l| l.contains(&forged_key) && l.contains("claims host"))
        },
    );
    assert!(!out_map(&name, "site1").contains(&forged_addr));
    // Everything else still works.
    probe::ping(&b.netns, a.sir_addr, T).expect("ping b->a");
    assert!(out_map(&name, "site1").contains(&b.sir_addr));
}

#[test]
#[ignore = "needs root: network namespaces, eBPF, etcd"]
fn an_insecure_etcd_lab_is_explicit_and_still_works() {
    let (c, plan) = up("plain", true);
    let name = c.0.clone();
    let (a, b) = (&plan.hosts[0].containers[0], &plan.hosts[1].containers[0]);
    probe::ping(&a.netns, b.sir_addr, T).expect("ping a->b");
    let e = etcd(&name);
    assert!(e.pki.is_none());
    assert!(e
        .client_endpoints()
        .iter()
        .all(|u| u.starts_with("http://")));
    // Anyone may read (and write): what --insecure-store means.
    let conn = agents::etcdctl_args(&name).expect("args");
    let o = etcdctl(
        &conn,
        &["get", "--prefix", "/ilanet/v1/hosts/", "--keys-only"],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("/ilanet/v1/hosts/site2/host"),
        "{}",
        text(&o)
    );
    let cfg = std::fs::read_to_string(agents::run_dir(&name).join("site1.yaml")).expect("yaml");
    assert!(cfg.contains("insecure: true"), "{cfg}");

    // A host agent configuration without credentials is refused unless insecure is explicit.
    let without = cfg.replace("  insecure: true\n", "");
    let path = agents::run_dir(&name).join("refused.yaml");
    std::fs::write(&path, without).expect("write");
    let o = Command::new(BIN)
        .args(["agent", "--config", &path.display().to_string()])
        .output()
        .expect("agent");
    assert!(!o.status.success());
    let err = text(&o);
    assert!(
        err.contains("store.ca") && err.contains("missing: ca, cert, key"),
        "{err}"
    );
    assert!(err.contains("--insecure-store"), "{err}");
}

fn log_has(lab: &str, host: &str, what: &[&str]) -> bool {
    let log = agents::run_dir(lab).join(format!("agent-{host}.log"));
    std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .any(|l| what.iter().all(|w| l.contains(w)))
}

#[test]
#[ignore = "needs root: network namespaces, eBPF, etcd"]
fn a_host_can_neither_write_policies_nor_relabel_another_hosts_endpoints() {
    let (c, plan) = up_hosts("relabel", false, 3);
    let name = c.0.clone();
    let (b, z) = (&plan.hosts[1].containers[0], &plan.hosts[2].containers[0]);
    probe::ping(&z.netns, b.sir_addr, T).expect("ping site3 -> site2");

    // Policies: only the lab's first host holds the policy administrator's certificate.
    let policy = r#"{"apiVersion":"cilium.io/v2","kind":"CiliumNetworkPolicy","metadata":{"name":"p1"},"spec":{"endpointSelector":{},"ingress":[{"fromEndpoints":[{}]}]}}"#;
    let records = agent::policy_sync::records_for_file(
        "p1.json",
        policy.as_bytes(),
        ila::Vnid::new(1).expect("vnid"),
    )
    .expect("policy");
    common::assert_policy_writes_refused(&name, "site2", &records);
    let o = etcdctl(
        &as_user(&name, "site2"),
        &["put", "/ilanet/v1/policies/p1", "{}"],
    );
    assert!(text(&o).contains("permission denied"), "{}", text(&o));
    agents::call(&name, "site1", &Request::PolicyApply { records }).expect("site1 applies");
    agents::call(&name, "site1", &Request::PolicyDelete { name: "p1".into() })
        .expect("site1 deletes");

    // site1 (compromised) rewrites the identity record of site2's endpoint, which etcd lets
    // every host write.
    let b_key = store::mapping_key("site2", b.sir_addr);
    let root = as_user(&name, "root");
    let o = etcdctl(&root, &["get", &b_key, "--print-value-only"]);
    let rec: store::MappingRecord = serde_json::from_str(text(&o).trim()).expect("b's record");
    assert!(rec.identity != 0 && rec.labels_sha256.is_some(), "{rec:?}");
    let id_key = store::identity_key(rec.identity);
    let o = etcdctl(&root, &["get", &id_key, "--print-value-only"]);
    let original = text(&o).trim().to_string();
    let forged = format!(
        r#"{{"id":{},"labels":"app=forged,ilanet.io/tenant=1"}}"#,
        rec.identity
    );
    let o = etcdctl(&as_user(&name, "site1"), &["put", &id_key, &forged]);
    assert!(
        o.status.success(),
        "a host may write identities: {}",
        text(&o)
    );

    // site3 no longer installs site2's endpoint (its labels do not match what site2 vouched
    // for): traffic to it fails closed, and the log names both keys. site2 refuses the
    // record for its own endpoint.
    wait_for(
        "site3 to drop site2's mapping",
        Duration::from_secs(10),
        || !out_map(&name, "site3").contains(&b.sir_addr),
    );
    assert!(log_has(&name, "site3", &[&b_key, &id_key]));
    assert!(probe::ping(&z.netns, b.sir_addr, Duration::from_secs(1)).is_err());
    wait_for(
        "site2 to refuse the record",
        Duration::from_secs(10),
        || log_has(&name, "site2", &["refusing store record", &id_key]),
    );
    assert!(
        out_map(&name, "site2").contains(&b.sir_addr),
        "site2 keeps its own"
    );

    // The administrator restores the record: site3 installs the mapping again.
    let o = etcdctl(&root, &["put", &id_key, &original]);
    assert!(o.status.success(), "{}", text(&o));
    wait_for(
        "site3 to reinstall site2's mapping",
        Duration::from_secs(10),
        || out_map(&name, "site3").contains(&b.sir_addr),
    );
    probe::ping(&z.netns, b.sir_addr, T).expect("ping site3 -> site2 again");
}
