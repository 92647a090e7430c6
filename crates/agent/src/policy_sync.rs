//! Policies and identities as the agent sees them: decoded from the store, compiled with
//! `crates/policy` into the entries the eBPF programs look up, and diffed against what the maps
//! hold (mark and sweep, like the mappings).

use std::collections::BTreeMap;

use ila::Vnid;
use policy::abi::{CidrKey, EndpointPolicy, PolicyKey, PolicyValue};
pub use policy::sync::{diff_compiled, PolicyOps, PolicyWrite};
use policy::{CompileLimits, CompiledPolicy, Identity, LabelSet, Policy, PolicyFileError};
use serde::{Deserialize, Serialize};
use store::{IdentityRecord, LabelsDigest, PolicyRecord};

/// How a policy is kept in the store: the whole file it came from (so every agent parses exactly
/// what the user wrote, with the same checks), and which policy of that file it is.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PolicyDocument {
    /// File name as given to `policy apply` (decides JSON or YAML, names bare spec lists).
    pub file: String,
    /// The file's text.
    pub source: String,
    /// Tenant of policies without `metadata.namespace`.
    pub default_tenant: u32,
}

/// Most bytes the records of one policy file may hold together in the store.
pub const MAX_STORED_PER_FILE: usize = 64 * 1024 * 1024;

/// Parses a policy file completely and returns one store record per policy in it. Nothing is
/// returned unless the whole file is valid.
pub fn records_for_file(
    file: &str,
    bytes: &[u8],
    default_tenant: Vnid,
) -> Result<Vec<PolicyRecord>, PolicyFileError> {
    let policies = policy::parse_policy_file(file, bytes, default_tenant)?;
    let doc = PolicyDocument {
        file: file.to_string(),
        source: String::from_utf8_lossy(bytes).into_owned(),
        default_tenant: default_tenant.get(),
    };
    let document = serde_json::to_string(&doc).unwrap_or_default();
    // Each policy's record carries the whole file: bound what one file puts in the store.
    let stored = document.len().saturating_mul(policies.len());
    if stored > MAX_STORED_PER_FILE {
        return Err(PolicyFileError {
            file: file.to_string(),
            document: None,
            path: String::new(),
            message: format!(
                "{} policies of a {}-byte file would store {stored} bytes (each policy's record \
                 holds the whole file; limit {MAX_STORED_PER_FILE}): split the file",
                policies.len(),
                bytes.len()
            ),
        });
    }
    Ok(policies
        .into_iter()
        .map(|p| PolicyRecord {
            name: p.name,
            document: document.clone(),
        })
        .collect())
}

/// Decodes the policy a store record names.
pub fn decode(rec: &PolicyRecord) -> Result<Policy, String> {
    let doc: PolicyDocument = serde_json::from_str(&rec.document)
        .map_err(|e| format!("policy '{}': unreadable document: {e}", rec.name))?;
    let tenant =
        Vnid::new(doc.default_tenant).map_err(|e| format!("policy '{}': {e}", rec.name))?;
    let all = policy::parse_policy_file(&doc.file, doc.source.as_bytes(), tenant)
        .map_err(|e| format!("policy '{}': {e}", rec.name))?;
    all.into_iter()
        .find(|p| p.name == rec.name)
        .ok_or_else(|| format!("policy '{}' is not in its document {}", rec.name, doc.file))
}

/// The identity label set of an endpoint: its labels plus its tenant.
pub fn identity_labels(
    labels: &BTreeMap<String, String>,
    tenant: Vnid,
) -> Result<LabelSet, policy::LabelError> {
    Ok(LabelSet::from_pairs(labels.iter())?.with_tenant(tenant))
}

/// Policies and identities known to this agent, and their compilation.
///
/// Identities come from the store, except those of this host's own endpoints ("pinned"): their
/// labels are what the endpoints were made with, and a store record that says otherwise is
/// refused. Another host's mapping is installed only if its identity's labels here have the
/// digest that host wrote ([`PolicyView::digest`]), so a host that rewrites an identity record
/// can make endpoints unreachable, but cannot relabel them.
#[derive(Debug, Default, Clone)]
pub struct PolicyView {
    policies: BTreeMap<String, Policy>,
    identities: BTreeMap<u32, KnownIdentity>,
    /// The same, by label set: every endpoint creation looks its labels up here.
    by_labels: std::collections::HashMap<LabelSet, u32>,
    compiled: CompiledPolicy,
}

/// An identity's label set and the digest mappings vouch for it with.
#[derive(Debug, Clone, PartialEq, Eq)]
struct KnownIdentity {
    labels: LabelSet,
    digest: LabelsDigest,
}

impl PolicyView {
    /// Replaces the policies and identities with a snapshot's (a full resync). `pinned`: the
    /// identities of this host's endpoints and their labels. Undecodable or contradicting
    /// records are returned as errors and skipped.
    pub fn reset(
        &mut self,
        policies: &[PolicyRecord],
        identities: &[IdentityRecord],
        pinned: &[(u32, LabelSet)],
    ) -> Vec<String> {
        let mut errors = Vec::new();
        self.policies.clear();
        for rec in policies {
            match decode(rec) {
                Ok(p) => {
                    self.policies.insert(p.name.clone(), p);
                }
                Err(e) => errors.push(e),
            }
        }
        self.identities.clear();
        self.by_labels.clear();
        for (id, labels) in pinned {
            self.insert_identity(*id, labels.clone());
        }
        for rec in identities {
            let pin = pinned.iter().any(|(id, _)| *id == rec.id);
            if let Err(e) = self.put_identity(rec, pin) {
                errors.push(e);
            }
        }
        errors
    }

    /// Adds or replaces an identity from the store. `pinned`: an endpoint of this host has it
    /// (then the record must agree with the labels known here). A malformed record makes the
    /// identity unknown, as a full resync skips it.
    pub fn put_identity(&mut self, rec: &IdentityRecord, pinned: bool) -> Result<(), String> {
        let key = store::identity_key(rec.id);
        let parsed = LabelSet::parse_identity(&rec.labels);
        if let Some(known) = self.identities.get(&rec.id).filter(|_| pinned) {
            return match parsed {
                Ok(l) if l == known.labels => Ok(()),
                _ => Err(format!(
                    "refusing store record {key}: it gives identity {} the labels '{}', but \
                     endpoints of this host have it as '{}' (was the record rewritten?)",
                    rec.id, rec.labels, known.labels
                )),
            };
        }
        match parsed {
            Ok(labels) => {
                self.insert_identity(rec.id, labels);
                Ok(())
            }
            Err(e) => {
                if let Some(old) = self.identities.remove(&rec.id) {
                    self.unindex(rec.id, &old.labels);
                }
                Err(format!(
                    "skipping store record {key}: labels '{}': {e}",
                    rec.labels
                ))
            }
        }
    }

    /// Binds `id` to the labels of an endpoint this host is making (the store allocated it).
    pub fn pin_identity(&mut self, id: u32, labels: LabelSet) {
        self.insert_identity(id, labels);
    }

    fn insert_identity(&mut self, id: u32, labels: LabelSet) {
        let digest = LabelsDigest::of(&labels.to_string());
        self.by_labels.insert(labels.clone(), id);
        if let Some(old) = self.identities.insert(id, KnownIdentity { labels, digest }) {
            self.unindex(id, &old.labels);
        }
    }

    /// Drops `id`'s entry in the label index if it still points at it.
    fn unindex(&mut self, id: u32, labels: &LabelSet) {
        if self.by_labels.get(labels) == Some(&id)
            && self.identities.get(&id).map(|k| &k.labels) != Some(labels)
        {
            self.by_labels.remove(labels);
        }
    }

    /// The identity of a label set, if known.
    pub fn identity_of(&self, labels: &LabelSet) -> Option<u32> {
        self.by_labels.get(labels).copied()
    }

    /// The digest of an identity's labels, which a mapping carrying it must vouch with.
    pub fn digest(&self, id: u32) -> Option<LabelsDigest> {
        self.identities.get(&id).map(|k| k.digest)
    }

    /// Adds or replaces one policy.
    pub fn put_policy(&mut self, rec: &PolicyRecord) -> Result<(), String> {
        let p = decode(rec)?;
        self.policies.insert(p.name.clone(), p);
        Ok(())
    }

    /// Removes one policy.
    pub fn delete_policy(&mut self, name: &str) {
        self.policies.remove(name);
    }

    /// Recompiles; on error the previous compilation stays in force.
    pub fn recompile(&mut self) -> Result<(), policy::CompileError> {
        let policies: Vec<Policy> = self.policies.values().cloned().collect();
        let ids: Vec<(Identity, LabelSet)> = self
            .identities
            .iter()
            .map(|(id, k)| (Identity(*id), k.labels.clone()))
            .collect();
        self.compiled = policy::compile(&policies, &ids, &CompileLimits::default())?;
        Ok(())
    }

    /// The current compilation.
    pub fn compiled(&self) -> &CompiledPolicy {
        &self.compiled
    }

    /// The policies, by name.
    pub fn policies(&self) -> &BTreeMap<String, Policy> {
        &self.policies
    }

    /// Labels of an identity.
    pub fn labels(&self, id: u32) -> Option<&LabelSet> {
        self.identities.get(&id).map(|k| &k.labels)
    }

    /// What to write and remove so the maps hold exactly the compilation.
    pub fn ops(
        &self,
        cur_ep: &[(u32, EndpointPolicy)],
        cur: &[(PolicyKey, PolicyValue)],
        cur_cidr: &[(CidrKey, PolicyValue)],
    ) -> PolicyOps {
        policy::sync::against_current(&self.compiled, cur_ep, cur, cur_cidr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTING10: &str = r#"[{
        "endpointSelector": {"matchLabels": {"app": "service1"}},
        "ingress": [{
            "fromEndpoints": [{"matchLabels": {"app": "service1"}}],
            "toPorts": [{"ports": [{"port": "5201", "protocol": "tcp"}]}]
        }]
    }]"#;

    fn vnid(n: u32) -> Vnid {
        Vnid::new(n).expect("vnid")
    }

    #[test]
    fn records_round_trip_through_the_store_document() {
        let recs =
            records_for_file("listing10.json", LISTING10.as_bytes(), vnid(1)).expect("parse");
        assert_eq!(recs.len(), 1);
        let p = decode(&recs[0]).expect("decode");
        assert_eq!(p.name, recs[0].name);
        assert_eq!(p.tenant, vnid(1));
    }

    #[test]
    fn a_file_of_many_large_policies_is_refused_before_it_is_stored() {
        // 40 policies (YAML documents) in a file padded to 2 MiB: 80 MiB of records.
        let docs: Vec<String> = (0..40)
            .map(|i| {
                format!(
                    "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: p{i}\nspec:\n  endpointSelector:\n    matchLabels:\n      app: a\n"
                )
            })
            .collect();
        let small = docs.join("---\n");
        let big = format!("{small}# {}\n", "x".repeat(2 * 1024 * 1024));
        let err = records_for_file("many.yaml", big.as_bytes(), vnid(1)).expect_err("too much");
        assert!(err.to_string().contains("split the file"), "{err}");
        let recs = records_for_file("many.yaml", small.as_bytes(), vnid(1)).expect("small");
        assert_eq!(recs.len(), 40);
    }

    #[test]
    fn a_bad_file_yields_no_records_and_names_the_field() {
        let bad = LISTING10.replace("5201", "70000");
        let err = records_for_file("bad.json", bad.as_bytes(), vnid(1)).expect_err("bad port");
        let msg = err.to_string();
        assert!(msg.contains("bad.json") && msg.contains("port"), "{msg}");
    }

    fn view_of(policies: &[PolicyRecord], ids: &[IdentityRecord]) -> PolicyView {
        let mut v = PolicyView::default();
        let errs = v.reset(policies, ids, &[]);
        assert!(errs.is_empty(), "{errs:?}");
        v.recompile().expect("compile");
        v
    }

    /// Replays `ops` in [`PolicyOps::ordered`] order on maps holding `before`'s compilation and
    /// checks, after every single write, that each enforcing endpoint entry has all the rules
    /// that both `before` and `after` agree on, and that no rule of the target is missing once
    /// its endpoint enforces with the target's flags.
    fn assert_never_denies_more(before: &PolicyView, after: &PolicyView) {
        let b = before.compiled();
        let a = after.compiled();
        let mut eps: BTreeMap<u32, EndpointPolicy> = b.endpoints.clone();
        let mut rules: BTreeMap<PolicyKey, PolicyValue> = b.entries.clone();
        let cur_ep: Vec<_> = eps.iter().map(|(k, v)| (*k, *v)).collect();
        let cur: Vec<_> = rules.iter().map(|(k, v)| (*k, *v)).collect();
        let ops = after.ops(&cur_ep, &cur, &[]);
        assert!(!ops.is_empty(), "the test needs a change");
        for (step, w) in ops.ordered().into_iter().enumerate() {
            match w {
                PolicyWrite::Rule(k, v) => {
                    rules.insert(k, v);
                }
                PolicyWrite::Endpoint(k, v) => {
                    eps.insert(k, v);
                }
                PolicyWrite::RemoveRule(k) => {
                    rules.remove(&k);
                }
                PolicyWrite::RemoveEndpoint(k) => {
                    eps.remove(&k);
                }
                PolicyWrite::Cidr(..) | PolicyWrite::RemoveCidr(_) => {}
            }
            // An endpoint entry equal to the target's must find every target rule of that
            // endpoint in place; one equal to the old must find every old rule.
            for (id, ep) in &eps {
                for (compiled, name) in [(a, "new"), (b, "old")] {
                    if compiled.endpoints.get(id) != Some(ep) {
                        continue;
                    }
                    for k in compiled.entries.keys().filter(|k| k.ep_identity == *id) {
                        assert!(
                            rules.contains_key(k),
                            "step {step} ({w:?}): endpoint {id} enforces as in the {name} policy \
                             but its rule {k:?} is not in the map"
                        );
                    }
                }
            }
        }
        assert_eq!(eps, a.endpoints);
        assert_eq!(rules, a.entries);
    }

    #[test]
    fn applying_or_deleting_a_policy_never_denies_what_both_allow() {
        let recs = records_for_file("l10.json", LISTING10.as_bytes(), vnid(1)).expect("parse");
        let svc = identity_labels(
            &[("app".to_string(), "service1".to_string())].into(),
            vnid(1),
        )
        .expect("labels");
        let ids = [IdentityRecord {
            id: 300,
            labels: svc.to_string(),
        }];
        let none = view_of(&[], &ids);
        let listing10 = view_of(&recs, &ids);
        assert_never_denies_more(&none, &listing10);
        assert_never_denies_more(&listing10, &none);
    }

    #[test]
    fn compilation_is_diffed_against_the_maps() {
        let recs = records_for_file("l10.json", LISTING10.as_bytes(), vnid(1)).expect("parse");
        let mut v = PolicyView::default();
        let svc = identity_labels(
            &[("app".to_string(), "service1".to_string())].into(),
            vnid(1),
        )
        .expect("labels");
        let other = identity_labels(&[("app".to_string(), "other".to_string())].into(), vnid(1))
            .expect("labels");
        let errs = v.reset(
            &recs,
            &[
                IdentityRecord {
                    id: 300,
                    labels: svc.to_string(),
                },
                IdentityRecord {
                    id: 301,
                    labels: other.to_string(),
                },
            ],
            &[],
        );
        assert!(errs.is_empty(), "{errs:?}");
        v.recompile().expect("compile");
        let ops = v.ops(&[], &[], &[]);
        assert_eq!(ops.ep_put.len(), 2, "every identity gets an endpoint entry");
        assert!(!ops.put.is_empty());
        // Once written, nothing more to do; a stale entry is swept.
        let cur_ep: Vec<_> = ops.ep_put.clone();
        let mut cur: Vec<_> = ops.put.clone();
        let stale = PolicyKey::new(999, 0, 0, 6, 80);
        cur.push((stale, PolicyValue::default()));
        let again = v.ops(&cur_ep, &cur, &[]);
        assert_eq!(again.del, vec![stale]);
        assert!(again.put.is_empty() && again.ep_put.is_empty());
        // Removing the policy leaves identities unenforced and the rules swept.
        v.delete_policy(&recs[0].name);
        v.recompile().expect("compile");
        let after = v.ops(&cur_ep, &ops.put, &[]);
        assert_eq!(after.del.len(), ops.put.len());
    }
}
