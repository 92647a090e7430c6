//! Data-driven conformance tests of the agent core (holo's way), without root, in
//! milliseconds. Each directory under `tests/conformance/` is a case: `case.yaml` holds the host
//! and a list of recorded inputs (store snapshots and events as the store delivers them, and
//! endpoint requests as the API receives them), `expected.txt` the operations the core must
//! answer each input with, in the order they are written.
//!
//! Besides the recorded answers, every step is checked against an independent path: the maps the
//! incremental answers built must equal what a fresh core writes into empty maps from a full
//! resync of the same store content (the two ways the agent reaches its maps must agree).
//!
//! `BLESS=1 cargo test -p agent --test conformance` rewrites `expected.txt` (review the diff).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv6Addr;
use std::path::{Path, PathBuf};

use agent::core::{Core, HostSpec, Output, PendingEndpoint, Publication};
use agent::endpoint::Sandbox;
use agent::io::{CreateEndpoint, Maps, MemoryPlumbing, Plumbing, SharedMemoryMaps};
use agent::policy_sync::records_for_file;
use agent::reconcile::{Current, LocalEndpoint};
use serde::Deserialize;
use store::{HostRecord, IdentityRecord, MappingRecord, PolicyRecord, Snapshot, StoreEvent};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    host: HostSpec,
    steps: Vec<Step>,
}

/// A policy file as `ilanet policy apply` reads it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    file: String,
    source: String,
    #[serde(default = "one")]
    default_tenant: u32,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SnapshotIn {
    revision: i64,
    #[serde(default)]
    mappings: Vec<MappingRecord>,
    #[serde(default)]
    hosts: Vec<HostRecord>,
    #[serde(default)]
    identities: Vec<IdentityRecord>,
    #[serde(default)]
    policies: Vec<PolicyFile>,
    /// Keys of records the store could not decode.
    #[serde(default)]
    skipped: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AddIn {
    name: String,
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    identifier: Option<ila::Identifier>,
    #[serde(default)]
    replace: bool,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    /// The identity the store allocates for the labels.
    identity: u32,
    /// The plumbing fails.
    #[serde(default)]
    plumbing_fails: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DelIn {
    name: String,
    #[serde(default)]
    keep_mapping: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExplainIn {
    from: String,
    to: String,
    port: u16,
    proto: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum Step {
    Resync(SnapshotIn),
    PutMapping {
        revision: i64,
        record: MappingRecord,
    },
    DeleteMapping {
        revision: i64,
        sir: Ipv6Addr,
        /// Whose mapping (the prefix it is under); default: the one host holding `sir`.
        #[serde(default)]
        host: Option<String>,
    },
    PutHost {
        revision: i64,
        record: HostRecord,
    },
    DeleteHost {
        revision: i64,
        name: String,
    },
    PutIdentity {
        revision: i64,
        record: IdentityRecord,
    },
    PutPolicy {
        revision: i64,
        policy: PolicyFile,
    },
    DeletePolicy {
        revision: i64,
        name: String,
    },
    AddEndpoint(AddIn),
    DelEndpoint(DelIn),
    Explain(ExplainIn),
}

/// The store's content as the case's inputs leave it (for the independent full-resync check).
#[derive(Default)]
struct StoreModel {
    revision: i64,
    /// By (host, address): every host writes its own keys.
    mappings: BTreeMap<(String, Ipv6Addr), MappingRecord>,
    hosts: BTreeMap<String, HostRecord>,
    identities: BTreeMap<u32, IdentityRecord>,
    policies: BTreeMap<String, PolicyRecord>,
}

impl StoreModel {
    fn snapshot(&self) -> Snapshot {
        Snapshot {
            revision: self.revision,
            mappings: self.mappings.values().cloned().collect(),
            hosts: self.hosts.values().cloned().collect(),
            identities: self.identities.values().cloned().collect(),
            policies: self.policies.values().cloned().collect(),
            skipped: Vec::new(),
        }
    }
}

fn policy_records(p: &PolicyFile) -> Vec<PolicyRecord> {
    let tenant = ila::Vnid::new(p.default_tenant).expect("case: default_tenant");
    records_for_file(&p.file, p.source.as_bytes(), tenant).unwrap_or_else(|e| {
        // A file the CLI refuses never reaches the store; a case may still record one
        // written there by hand: its raw document, which every agent must skip.
        eprintln!("(policy file {} is invalid: {e})", p.file);
        let name = p.file.trim_end_matches(".yaml").trim_end_matches(".json");
        vec![PolicyRecord {
            name: name.to_string(),
            document: serde_json::json!({
                "file": p.file,
                "source": p.source,
                "default_tenant": p.default_tenant,
            })
            .to_string(),
        }]
    })
}

fn render(out: &Output, text: &mut String) {
    for line in out.ops.describe() {
        let _ = writeln!(text, "{line}");
    }
    for p in &out.publish {
        let _ = match p {
            Publication::Host(h) => writeln!(text, "publish host {} {}", h.name, h.locator),
            Publication::Withdraw(sir) => writeln!(text, "withdraw mapping {sir}"),
            Publication::Mapping(r) => {
                writeln!(text, "publish mapping {} {}", r.sir_address(), r.endpoint)
            }
        };
    }
    for w in &out.warnings {
        let _ = writeln!(text, "warn: {w}");
    }
}

/// Gives every mapping of the case that carries an identity but no `labels_sha256` key the
/// digest of that identity's labels (from the case's identity records and endpoint additions),
/// as an honest host writes it; a case that writes `labels_sha256` itself (also `null`) tests
/// anything else.
fn vouch_as_honest_hosts_do(case: &Case, mut yaml: serde_json::Value) -> serde_json::Value {
    let mut labels: BTreeMap<u32, String> = BTreeMap::new();
    for step in &case.steps {
        match step {
            Step::Resync(snap) => {
                for r in &snap.identities {
                    labels.entry(r.id).or_insert_with(|| r.labels.clone());
                }
            }
            Step::PutIdentity { record, .. } => {
                labels
                    .entry(record.id)
                    .or_insert_with(|| record.labels.clone());
            }
            Step::AddEndpoint(a) => {
                // (A case may add to an unknown tenant, or with bad labels, to test refusals.)
                let tenant = case
                    .host
                    .tenants
                    .iter()
                    .find(|t| a.tenant.as_deref().is_none_or(|n| n == t.name));
                if let Some(Ok(l)) =
                    tenant.map(|t| agent::policy_sync::identity_labels(&a.labels, t.vnid))
                {
                    labels.entry(a.identity).or_insert_with(|| l.to_string());
                }
            }
            _ => {}
        }
    }
    let vouch = |rec: &mut serde_json::Value| {
        let Some(obj) = rec.as_object_mut() else {
            return;
        };
        let id = obj.get("identity").and_then(serde_json::Value::as_u64);
        if obj.contains_key("labels_sha256") {
            return;
        }
        if let Some(l) = id.and_then(|id| labels.get(&u32::try_from(id).ok()?)) {
            let digest = store::LabelsDigest::of(l).to_string();
            obj.insert("labels_sha256".into(), digest.into());
        }
    };
    let steps = yaml
        .get_mut("steps")
        .and_then(serde_json::Value::as_array_mut);
    for step in steps.into_iter().flatten() {
        if let Some(maps) = step
            .pointer_mut("/resync/mappings")
            .and_then(serde_json::Value::as_array_mut)
        {
            maps.iter_mut().for_each(vouch);
        }
        if let Some(rec) = step.pointer_mut("/put_mapping/record") {
            vouch(rec);
        }
    }
    yaml
}

/// Runs one case; returns the rendered answers.
fn run_case(dir: &Path) -> String {
    // Through JSON values: YAML's own enum form needs tags; a case reads better as maps.
    let yaml: serde_json::Value =
        serde_norway::from_str(&std::fs::read_to_string(dir.join("case.yaml")).expect("case.yaml"))
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let case: Case =
        serde_json::from_value(yaml.clone()).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let yaml = vouch_as_honest_hosts_do(&case, yaml);
    let case: Case =
        serde_json::from_value(yaml).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut core = Core::new(case.host.clone(), Vec::new()).expect("core");
    let mut maps = SharedMemoryMaps::default();
    let plumbing = MemoryPlumbing::default();
    let mut model = StoreModel::default();
    let mut text = String::new();
    for (i, step) in case.steps.into_iter().enumerate() {
        let n = i + 1;
        let out = match step {
            Step::Resync(s) => {
                let _ = writeln!(text, "--- {n} resync revision {}", s.revision);
                model = StoreModel {
                    revision: s.revision,
                    mappings: s
                        .mappings
                        .iter()
                        .map(|r| ((r.host.clone(), r.sir_address()), r.clone()))
                        .collect(),
                    hosts: s
                        .hosts
                        .iter()
                        .map(|h| (h.name.clone(), h.clone()))
                        .collect(),
                    identities: s.identities.iter().map(|r| (r.id, r.clone())).collect(),
                    policies: s
                        .policies
                        .iter()
                        .flat_map(policy_records)
                        .map(|r| (r.name.clone(), r))
                        .collect(),
                };
                let mut snap = model.snapshot();
                snap.skipped = s
                    .skipped
                    .iter()
                    .map(|k| store::SkippedRecord {
                        key: k.clone(),
                        error: "undecodable".into(),
                    })
                    .collect();
                let current = maps.current().expect("read");
                Some(core.resync(snap, &current))
            }
            Step::PutMapping { revision, record } => {
                let _ = writeln!(text, "--- {n} put mapping {}", record.sir_address());
                model.revision = revision;
                model
                    .mappings
                    .insert((record.host.clone(), record.sir_address()), record.clone());
                Some(core.event(revision, StoreEvent::PutMapping(record)))
            }
            Step::DeleteMapping {
                revision,
                sir,
                host,
            } => {
                let _ = writeln!(text, "--- {n} delete mapping {sir}");
                model.revision = revision;
                let host = host.unwrap_or_else(|| {
                    let holders: Vec<&String> = model
                        .mappings
                        .keys()
                        .filter(|(_, a)| *a == sir)
                        .map(|(h, _)| h)
                        .collect();
                    match holders.as_slice() {
                        [one] => (*one).clone(),
                        // A delete of what no one holds: whose it was does not matter.
                        [] => core.spec().host.clone(),
                        _ => panic!("case: delete of {sir} needs `host` ({holders:?} hold it)"),
                    }
                });
                model.mappings.remove(&(host.clone(), sir));
                Some(core.event(revision, StoreEvent::DeleteMapping { host, sir }))
            }
            Step::PutHost { revision, record } => {
                let _ = writeln!(text, "--- {n} put host {}", record.name);
                model.revision = revision;
                model.hosts.insert(record.name.clone(), record.clone());
                Some(core.event(revision, StoreEvent::PutHost(record)))
            }
            Step::DeleteHost { revision, name } => {
                let _ = writeln!(text, "--- {n} delete host {name}");
                model.revision = revision;
                model.hosts.remove(&name);
                Some(core.event(revision, StoreEvent::DeleteHost(name)))
            }
            Step::PutIdentity { revision, record } => {
                let _ = writeln!(text, "--- {n} put identity {}", record.id);
                model.revision = revision;
                model.identities.insert(record.id, record.clone());
                Some(core.event(revision, StoreEvent::PutIdentity(record)))
            }
            Step::PutPolicy { revision, policy } => {
                let _ = writeln!(text, "--- {n} put policy file {}", policy.file);
                model.revision = revision;
                // One store event per policy of the file, as the store delivers them.
                for rec in policy_records(&policy) {
                    model.policies.insert(rec.name.clone(), rec.clone());
                    let out = core.event(revision, StoreEvent::PutPolicy(rec));
                    render(&out, &mut text);
                    maps.apply(&out.ops).expect("apply");
                }
                None
            }
            Step::DeletePolicy { revision, name } => {
                let _ = writeln!(text, "--- {n} delete policy {name}");
                model.revision = revision;
                model.policies.remove(&name);
                Some(core.event(revision, StoreEvent::DeletePolicy(name)))
            }
            Step::AddEndpoint(a) => {
                let _ = writeln!(text, "--- {n} add endpoint {}", a.name);
                match add_endpoint(&mut core, &plumbing, &mut maps, &mut model, a, &mut text) {
                    Ok(()) => {}
                    Err(e) => {
                        let _ = writeln!(text, "error ({:?}): {e}", e.kind());
                    }
                }
                None
            }
            Step::DelEndpoint(d) => {
                let _ = writeln!(text, "--- {n} del endpoint {}", d.name);
                match del_endpoint(&mut core, &plumbing, &mut model, &d) {
                    Ok(out) => Some(out),
                    Err(e) => {
                        let _ = writeln!(text, "error ({:?}): {e}", e.kind());
                        None
                    }
                }
            }
            Step::Explain(x) => {
                let _ = writeln!(
                    text,
                    "--- {n} explain {} -> {} {}/{}",
                    x.from, x.to, x.port, x.proto
                );
                match core.explain(&x.from, &x.to, x.port, &x.proto) {
                    Ok(r) => {
                        let _ = writeln!(text, "{} by {:?}: {}", r.verdict, r.rule, r.reason);
                    }
                    Err(e) => {
                        let _ = writeln!(text, "error ({:?}): {e}", e.kind());
                    }
                }
                None
            }
        };
        if let Some(out) = out {
            render(&out, &mut text);
            maps.apply(&out.ops).expect("apply");
        }
        check_against_full_resync(dir, n, &core, &maps, &model);
    }
    text
}

/// The shell's endpoint-creation steps, on the core and in-memory plumbing.
fn add_endpoint(
    core: &mut Core,
    plumbing: &MemoryPlumbing,
    maps: &mut SharedMemoryMaps,
    model: &mut StoreModel,
    a: AddIn,
    text: &mut String,
) -> Result<(), agent::AgentError> {
    let plan = core.plan_add(&a.name, a.tenant.as_deref(), a.identifier, &a.labels)?;
    let learned = core.learn_identity(a.identity, &plan.identity_labels)?;
    model.identities.insert(
        a.identity,
        IdentityRecord {
            id: a.identity,
            labels: plan.identity_labels.to_string(),
        },
    );
    render(&learned, text);
    maps.apply(&learned.ops).expect("apply");
    core.check_name_free(&a.name, a.replace)?;
    let (id, sir_addr) = core.choose_address(&plan.tenant, a.identifier, a.replace)?;
    core.begin_create(PendingEndpoint {
        name: a.name.clone(),
        netns: format!("mem-{}", a.name),
        host_ifname: agent::endpoint::host_ifname(&a.name),
        owns_netns: true,
    });
    plumbing
        .fail_create
        .store(a.plumbing_fails, std::sync::atomic::Ordering::SeqCst);
    let ep: LocalEndpoint = match plumbing.create(&CreateEndpoint {
        name: a.name.clone(),
        sandbox: Sandbox::Own,
        identifier: id,
        sir_addr,
        labels: a.labels.clone(),
        identity: a.identity,
    }) {
        Ok(ep) => ep,
        Err(e) => {
            core.release_identifier(id);
            core.abandon_create(&a.name);
            return Err(e);
        }
    };
    let rec = core.record_of(&ep);
    model
        .mappings
        .insert((rec.host.clone(), rec.sir_address()), rec);
    let _ = writeln!(text, "created {} {} identifier {id}", ep.name, ep.sir_addr);
    let out = core.endpoint_added(ep);
    render(&out, text);
    maps.apply(&out.ops).expect("apply");
    Ok(())
}

fn del_endpoint(
    core: &mut Core,
    plumbing: &MemoryPlumbing,
    model: &mut StoreModel,
    d: &DelIn,
) -> Result<Output, agent::AgentError> {
    let ep = core.endpoint(&d.name)?.clone();
    if !d.keep_mapping && core.begin_withdraw(ep.sir_addr) {
        model
            .mappings
            .remove(&(core.spec().host.clone(), ep.sir_addr));
    }
    plumbing.destroy(&ep)?;
    Ok(core.endpoint_removed(&d.name, d.keep_mapping))
}

/// Both paths to the maps agree: what the incremental answers built equals what a fresh core
/// writes into empty maps from a full resync of the same store content (with the same local
/// endpoints).
fn check_against_full_resync(
    dir: &Path,
    step: usize,
    core: &Core,
    maps: &SharedMemoryMaps,
    model: &StoreModel,
) {
    let mut fresh =
        Core::new(core.spec().clone(), core.endpoints().cloned().collect()).expect("core");
    let out = fresh.resync(model.snapshot(), &Current::default());
    let mut expect = SharedMemoryMaps::default();
    expect.apply(&out.ops).expect("apply");
    let got = maps.snapshot();
    let want = expect.snapshot();
    let mut diff = Vec::new();
    macro_rules! compare {
        ($($field:ident),*) => {$(
            if got.$field != want.$field {
                diff.push(format!(
                    "{}: incremental {:?}\n  full resync {:?}",
                    stringify!($field), got.$field, want.$field
                ));
            }
        )*};
    }
    compare!(out, inbound, ipcache, endpoints, policy_eps, policy, cidr);
    assert!(
        diff.is_empty(),
        "{} step {step}: the incremental path left maps that differ from a full resync:\n{}",
        dir.display(),
        diff.join("\n")
    );
}

fn cases() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conformance");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .expect("tests/conformance")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.join("case.yaml").is_file())
        .collect();
    dirs.sort();
    dirs
}

#[test]
fn every_case_answers_as_recorded() {
    let bless = std::env::var_os("BLESS").is_some();
    let all = cases();
    assert!(bless || all.len() >= 6, "cases missing: {all:?}");
    let mut failed = Vec::new();
    for dir in all {
        let got = run_case(&dir);
        let path = dir.join("expected.txt");
        if bless {
            std::fs::write(&path, &got).expect("write expected.txt");
            continue;
        }
        let want = std::fs::read_to_string(&path).unwrap_or_default();
        if got != want {
            eprintln!(
                "=== {} differs (BLESS=1 to rewrite, then review the diff)\n--- expected\n{want}\n--- got\n{got}",
                dir.display()
            );
            failed.push(dir.display().to_string());
        }
    }
    assert!(failed.is_empty(), "cases that differ: {failed:?}");
}
