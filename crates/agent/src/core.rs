//! The agent's decisions, without I/O (quinn-proto's way): the core takes store snapshots,
//! store events, the steps of API requests and answers with the map writes, publications and
//! warnings they call for. The shell (`crate::Agent`) talks to the store, runs the plumbing
//! and executes the core's operations through [`crate::io::Maps`].
//!
//! Full resyncs and incremental events end in the same [`MapOps`]: a resync diffs everything
//! against the maps as read, an event diffs the keys it touches against what the core last
//! wrote ([`Installed`]). Both write policy first, in [`PolicyOps::ordered`]'s one order.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv6Addr;

use ila::{ChecksumMode, Identifier, IdentifierAllocator, Locator, SirPrefix, TenantNetwork};
use policy::{CompiledPolicy, LabelSet};
use serde::{Deserialize, Serialize};
use store::{HostRecord, MappingRecord, PolicyRecord, Snapshot, StoreEvent};

use crate::api::{CniAttachment, ExplainReply, MappingRow, PolicyRow};
use crate::claims::Claims;
use crate::policy_sync::{self, PolicyOps, PolicyView};
use crate::reconcile::{self, Current, Desired, LocalEndpoint, Ops};
use crate::AgentError;

/// What the core knows of its host: the configuration's pure part.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostSpec {
    /// Host name, unique in the network.
    pub host: String,
    /// The host's locator.
    pub locator: Locator,
    /// The host's underlay address.
    pub underlay: Ipv6Addr,
    /// Checksum mode of the mappings this host publishes.
    #[serde(default)]
    pub csum_mode: ChecksumMode,
    /// Tenant networks endpoints can join; the first is the default.
    pub tenants: Vec<TenantNetwork>,
}

/// An endpoint whose plumbing has started and not finished. Recorded in the state file before
/// anything is made: after a crash mid-way the restarted agent (or `lab down`) finds and
/// removes what was made.
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

/// Writes and removals for every map the agent owns, applied policy first (an endpoint entry
/// must find its identity's rules before its traffic is let through), then the mappings.
#[derive(Debug, Default, PartialEq)]
pub struct MapOps {
    /// Policy maps, in [`PolicyOps::ordered`].
    pub policy: PolicyOps,
    /// Mapping maps (out, in, ipcache, endpoints).
    pub mappings: Ops,
}

impl MapOps {
    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        self.policy.is_empty() && self.mappings.is_empty()
    }

    /// One line per operation, in the order they are applied (for logs and conformance tests).
    pub fn describe(&self) -> Vec<String> {
        use policy_sync::PolicyWrite as W;
        let mut lines: Vec<String> = self
            .policy
            .ordered()
            .into_iter()
            .map(|w| match w {
                W::Rule(k, v) => format!("policy put {k:?} = {v:?}"),
                W::Cidr(k, v) => format!("policy-cidr put {k:?} = {v:?}"),
                W::Endpoint(k, v) => format!("policy-ep put {k} = {v:?}"),
                W::RemoveRule(k) => format!("policy del {k:?}"),
                W::RemoveCidr(k) => format!("policy-cidr del {k:?}"),
                W::RemoveEndpoint(k) => format!("policy-ep del {k}"),
            })
            .collect();
        let m = &self.mappings;
        for (k, v) in &m.ipcache_put {
            lines.push(format!(
                "ipcache put {k} identity={} vnid={}",
                v.identity, v.vnid
            ));
        }
        for (k, v) in &m.ep_put {
            lines.push(format!(
                "endpoint put {k} identity={} vnid={} ifindex={}",
                v.identity, v.vnid, v.ifindex
            ));
        }
        for (k, v) in &m.out_put {
            lines.push(format!(
                "out put {k} -> {} mode={} local={}",
                v.ila, v.csum_mode, v.local
            ));
        }
        for (k, v) in &m.in_put {
            lines.push(format!(
                "in put {k} -> {} ifindex={} mode={}",
                v.sir, v.ifindex, v.csum_mode
            ));
        }
        lines.extend(m.out_del.iter().map(|k| format!("out del {k}")));
        lines.extend(m.in_del.iter().map(|k| format!("in del {k}")));
        lines.extend(m.ep_del.iter().map(|k| format!("endpoint del {k}")));
        lines.extend(m.ipcache_del.iter().map(|k| format!("ipcache del {k}")));
        lines
    }
}

/// A record of ours the store must hold again (or let go).
#[derive(Debug, Clone, PartialEq)]
pub enum Publication {
    /// Our host record.
    Host(HostRecord),
    /// The mapping of one of our endpoints.
    Mapping(MappingRecord),
    /// Our mapping of an address that moved away (we have no endpoint there and another host
    /// now claims it): delete it from under our prefix, so the new host's is in force.
    Withdraw(Ipv6Addr),
}

/// What one input calls for.
#[derive(Debug, Default)]
pub struct Output {
    /// Map writes and removals.
    pub ops: MapOps,
    /// Records of ours that the store lost (deleted behind our back): write them again.
    pub publish: Vec<Publication>,
    /// Inputs that were wrong and skipped (never fatal): for the log.
    pub warnings: Vec<String>,
}

impl Output {
    fn warn(&mut self, w: impl Into<String>) {
        self.warnings.push(w.into());
    }
}

/// The map content the core last wrote (after a resync: the maps as read, made equal to the
/// desired content).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Installed {
    /// Mapping maps.
    pub mappings: Desired,
    /// In-map key of each SIR address with an in-entry.
    in_by_sir: HashMap<Ipv6Addr, Ipv6Addr>,
    /// Policy maps.
    pub policy: CompiledPolicy,
}

/// What an endpoint creation will use, decided before anything is made.
#[derive(Debug, Clone)]
pub struct AddPlan {
    /// Tenant network.
    pub tenant: TenantNetwork,
    /// The identity label set of its labels (and tenant).
    pub identity_labels: LabelSet,
}

/// Fill of the three policy maps (counted from what was written: walking them at every
/// scrape would visit up to a million entries).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PolicyFill {
    /// `POLICY_EP` entries.
    pub endpoints: usize,
    /// `POLICY` entries.
    pub rules: usize,
    /// `POLICY_CIDR` entries.
    pub cidr: usize,
}

/// The agent's state and decisions.
#[derive(Debug)]
pub struct Core {
    spec: HostSpec,
    endpoints: BTreeMap<String, LocalEndpoint>,
    /// Endpoints being plumbed right now (recorded in the state file first).
    creating: BTreeMap<String, PendingEndpoint>,
    /// The store's mappings in force, by SIR address (see [`crate::claims`]).
    view: BTreeMap<Ipv6Addr, MappingRecord>,
    /// Addresses of the view whose mapping is not installed: its identity's labels do not
    /// match what its host vouched for ([`Core::vouch`]). Still in the view, so that their
    /// names and addresses stay taken.
    unvouched: std::collections::BTreeSet<Ipv6Addr>,
    /// Every host's mappings as stored, and the host records they are checked against.
    claims: Claims,
    /// Policies and identities, and their compilation.
    policy: PolicyView,
    /// Policy records as stored (to roll back a failed apply).
    policy_records: BTreeMap<String, PolicyRecord>,
    /// One allocator per tenant network, by tenant name.
    allocators: HashMap<String, IdentifierAllocator>,
    /// Our own mappings being deleted on purpose (not to be reasserted meanwhile).
    withdrawing: BTreeSet<Ipv6Addr>,
    /// Our host record is missing from the store (to be written again).
    host_lost: bool,
    revision: i64,
    resyncs: u64,
    installed: Installed,
}

impl Core {
    /// A core for `spec` with the endpoints recorded before a restart (already revalidated).
    /// `policy_fill` is what the policy maps hold at start (a previous run's policy stays in
    /// force until the first resync).
    pub fn new(spec: HostSpec, endpoints: Vec<LocalEndpoint>) -> Result<Self, AgentError> {
        if spec.tenants.is_empty() {
            return Err(AgentError::Invalid(format!(
                "host '{}' has no tenant network configured",
                spec.host
            )));
        }
        let endpoints: BTreeMap<String, LocalEndpoint> =
            endpoints.into_iter().map(|e| (e.name.clone(), e)).collect();
        // Start each host's allocation somewhere else so that hosts rarely collide; a
        // collision is still caught by the store's atomic create.
        let seed = crate::endpoint::macs(&spec.host).0;
        let start = (u32::from_be_bytes([seed[2], seed[3], seed[4], seed[5]]) & 0xffff) << 16 | 1;
        let mut allocators = HashMap::new();
        for t in &spec.tenants {
            let mut a = IdentifierAllocator::for_vnid_range(t.vnid, start, u32::MAX)?;
            for ep in endpoints.values().filter(|e| t.owns(e.identifier)) {
                let _ = a.reserve(ep.identifier);
            }
            allocators.insert(t.name.clone(), a);
        }
        Ok(Self {
            spec,
            endpoints,
            creating: BTreeMap::new(),
            view: BTreeMap::new(),
            unvouched: Default::default(),
            claims: Claims::default(),
            policy: PolicyView::default(),
            policy_records: BTreeMap::new(),
            allocators,
            withdrawing: BTreeSet::new(),
            host_lost: false,
            revision: 0,
            resyncs: 0,
            installed: Installed::default(),
        })
    }

    /// The host this core decides for.
    pub fn spec(&self) -> &HostSpec {
        &self.spec
    }

    // ---- store inputs ----

    /// Makes everything equal to a snapshot (mark and sweep against `current`, the maps as
    /// read).
    pub fn resync(&mut self, snap: Snapshot, current: &Current) -> Output {
        let mut out = Output::default();
        for s in &snap.skipped {
            out.warn(format!("skipping store record {}: {}", s.key, s.error));
        }
        self.host_lost = !snap.hosts.iter().any(|h| h.name == self.spec.host);
        // Identities first: a mapping is installed only if its identity's labels match what
        // its host vouched for.
        let pinned = self.pinned_identities();
        for e in self.policy.reset(&snap.policies, &snap.identities, &pinned) {
            out.warn(e);
        }
        self.claims.reset(&snap.mappings, &snap.hosts);
        self.view.clear();
        self.unvouched.clear();
        for sir in self.claims.addresses() {
            let f = self
                .claims
                .in_force(sir, &self.spec.host, self.spec.locator);
            out.warnings.extend(f.warnings);
            if let Some(rec) = f.mapping {
                if let Err(w) = self.vouch(&rec) {
                    out.warn(w);
                    self.unvouched.insert(sir);
                }
                self.view.insert(sir, rec);
            }
        }
        self.policy_records = snap
            .policies
            .into_iter()
            .map(|r| (r.name.clone(), r))
            .collect();
        if let Err(e) = self.policy.recompile() {
            out.warn(format!("policies not compiled, previous ones stay: {e}"));
        }
        let (desired, unusable) =
            reconcile::desired(&self.spec.host, self.installable(), &self.endpoints);
        for u in unusable {
            out.warn(format!("mapping of {} unusable: {}", u.sir_addr, u.reason));
        }
        out.ops.policy = self
            .policy
            .ops(&current.policy_eps, &current.policy, &current.cidr);
        out.ops.mappings = reconcile::diff(&desired, current);
        self.installed = Installed {
            in_by_sir: desired.inbound.iter().map(|(k, v)| (v.sir, *k)).collect(),
            mappings: desired,
            policy: self.policy.compiled().clone(),
        };
        self.revision = snap.revision;
        self.resyncs += 1;
        out.publish = self.missing();
        out
    }

    /// Applies one watched change.
    pub fn event(&mut self, revision: i64, event: StoreEvent) -> Output {
        let mut out = Output::default();
        self.revision = revision;
        let mut lost = false;
        match event {
            StoreEvent::PutMapping(rec) => {
                let sir = rec.sir_address();
                self.claims.put(rec);
                self.settle(sir, &mut out);
            }
            StoreEvent::DeleteMapping { host, sir } => {
                self.claims.delete(&host, sir);
                self.settle(sir, &mut out);
                lost = true;
            }
            StoreEvent::PutIdentity(rec) => {
                let pinned = self.endpoints.values().any(|e| e.identity == rec.id);
                if let Err(e) = self.policy.put_identity(&rec, pinned) {
                    out.warn(e);
                }
                // Mappings with this identity are vouched for again (they may have waited
                // for it, or its labels changed).
                for sir in self.claims.addresses_with_identity(rec.id) {
                    self.settle(sir, &mut out);
                }
                self.recompile(&mut out);
            }
            StoreEvent::PutPolicy(rec) => match self.policy.put_policy(&rec) {
                Ok(()) => {
                    self.policy_records.insert(rec.name.clone(), rec);
                    self.recompile(&mut out);
                }
                Err(e) => out.warn(format!("skipping {e}")),
            },
            StoreEvent::DeletePolicy(name) => {
                self.policy.delete_policy(&name);
                self.policy_records.remove(&name);
                self.recompile(&mut out);
            }
            StoreEvent::DeleteHost(name) => {
                if name == self.spec.host {
                    self.host_lost = true;
                    lost = true;
                }
                for sir in self.claims.delete_host(&name) {
                    self.settle(sir, &mut out);
                }
            }
            StoreEvent::PutHost(h) => {
                if h.name == self.spec.host {
                    self.host_lost = false;
                }
                for sir in self.claims.put_host(&h) {
                    self.settle(sir, &mut out);
                }
            }
            StoreEvent::Resync => {}
        }
        if lost {
            out.publish = self.missing();
        }
        out
    }

    /// Records of ours the store lacks: our host record, and mappings of our endpoints that are
    /// neither under our prefix nor being withdrawn on purpose. Each is reported once; a failed
    /// write ends the store session, and the next resync finds it missing again.
    fn missing(&mut self) -> Vec<Publication> {
        let mut p = Vec::new();
        if self.host_lost {
            self.host_lost = false;
            p.push(Publication::Host(self.host_record()));
        }
        p.extend(
            self.endpoints
                .values()
                .filter(|ep| {
                    !self.claims.holds(&self.spec.host, ep.sir_addr)
                        && !self.withdrawing.contains(&ep.sir_addr)
                })
                .map(|ep| Publication::Mapping(self.record_of(ep))),
        );
        p
    }

    /// Puts the mapping in force for `sir` into the view (warning about claims ignored), then
    /// reconciles its entries.
    fn settle(&mut self, sir: Ipv6Addr, out: &mut Output) {
        let me = &self.spec.host;
        let moved_away = self.claims.get(me, sir).is_some_and(|ours| {
            // Not while the endpoint is here, or still being made (our own write comes back
            // through the watch before the plumbing is done).
            !self.creating.contains_key(&ours.endpoint)
                && !self.endpoints.values().any(|e| e.sir_addr == sir)
        });
        if moved_away && self.claims.claimed_by_another(me, sir) {
            // The endpoint left with its mapping kept (a move) and the new host has published
            // its own: ours goes (until then both are claims, and neither is installed).
            out.publish.push(Publication::Withdraw(sir));
        }
        let f = self
            .claims
            .in_force(sir, &self.spec.host, self.spec.locator);
        out.warnings.extend(f.warnings);
        self.unvouched.remove(&sir);
        match f.mapping {
            Some(rec) => {
                if let Err(w) = self.vouch(&rec) {
                    out.warn(w);
                    self.unvouched.insert(sir);
                }
                self.view.insert(sir, rec)
            }
            None => self.view.remove(&sir),
        };
        self.reconcile_key(sir, out);
    }

    /// The mappings of the view that may be installed.
    fn installable(&self) -> impl Iterator<Item = &MappingRecord> {
        self.view
            .iter()
            .filter(|(sir, _)| !self.unvouched.contains(*sir))
            .map(|(_, rec)| rec)
    }

    /// Whether another host's mapping may be installed as far as its identity goes: the
    /// identity's labels, as this host knows them, must have the digest the mapping's host
    /// wrote. Else a host that rewrote an identity record could change what policy another
    /// host's endpoints get; not installing the mapping fails closed.
    fn vouch(&self, rec: &MappingRecord) -> Result<(), String> {
        if rec.identity == 0 || rec.host == self.spec.host {
            return Ok(());
        }
        let key = store::mapping_key(&rec.host, rec.sir_address());
        let id = rec.identity;
        match (self.policy.digest(id), rec.labels_sha256) {
            (Some(known), Some(vouched)) if known == vouched => Ok(()),
            (None, _) => Err(format!(
                "not installing store record {key} yet: its identity {id} has no identity \
                 record ({})",
                store::identity_key(id)
            )),
            (Some(_), None) => Err(format!(
                "ignoring store record {key}: identity {id} without the digest of its labels \
                 (labels_sha256)"
            )),
            (Some(_), Some(_)) => Err(format!(
                "ignoring store record {key}: host '{}' gave its endpoint other labels than \
                 identity {id} has here ('{}'); was {} rewritten?",
                rec.host,
                self.policy
                    .labels(id)
                    .map(ToString::to_string)
                    .unwrap_or_default(),
                store::identity_key(id)
            )),
        }
    }

    /// The identities of this host's endpoints and the labels they were created with.
    fn pinned_identities(&self) -> Vec<(u32, LabelSet)> {
        self.endpoints
            .values()
            .filter(|ep| ep.identity != 0)
            .filter_map(|ep| Some((ep.identity, self.identity_labels_of(ep)?)))
            .collect()
    }

    /// An endpoint's identity label set: its labels and its tenant.
    fn identity_labels_of(&self, ep: &LocalEndpoint) -> Option<LabelSet> {
        let tenant = self.tenant_of(ep.identifier)?;
        policy_sync::identity_labels(&ep.labels, tenant.vnid).ok()
    }

    /// The operations that bring the entries of one SIR address to what the view says, against
    /// what was last written.
    fn reconcile_key(&mut self, sir: Ipv6Addr, out: &mut Output) {
        let rec = self
            .view
            .get(&sir)
            .filter(|_| !self.unvouched.contains(&sir));
        let (want, bad) = reconcile::desired(&self.spec.host, rec, &self.endpoints);
        for u in bad {
            out.warn(format!("mapping of {} unusable: {}", u.sir_addr, u.reason));
        }
        let ops = &mut out.ops.mappings;
        let have = &mut self.installed.mappings;
        one_key(
            &want.ipcache,
            &mut have.ipcache,
            sir,
            &mut ops.ipcache_put,
            &mut ops.ipcache_del,
        );
        one_key(
            &want.endpoints,
            &mut have.endpoints,
            sir,
            &mut ops.ep_put,
            &mut ops.ep_del,
        );
        one_key(
            &want.out,
            &mut have.out,
            sir,
            &mut ops.out_put,
            &mut ops.out_del,
        );
        let new_in = want.inbound.into_iter().next();
        let old_key = self.installed.in_by_sir.remove(&sir);
        if let Some((k, v)) = new_in {
            if have.inbound.get(&k) != Some(&v) {
                ops.in_put.push((k, v));
                have.inbound.insert(k, v);
            }
            self.installed.in_by_sir.insert(sir, k);
        }
        if let Some(old) = old_key {
            if new_in.map(|(k, _)| k) != Some(old) && have.inbound.remove(&old).is_some() {
                ops.in_del.push(old);
            }
        }
    }

    /// Recompiles the policies and diffs against what was last written (the previous
    /// compilation stays in force if this one fails).
    fn recompile(&mut self, out: &mut Output) {
        if let Err(e) = self.policy.recompile() {
            out.warn(format!("policies not compiled, previous ones stay: {e}"));
            return;
        }
        let new = self.policy.compiled();
        let old = &self.installed.policy;
        out.ops.policy = policy_sync::diff_compiled(new, old);
        self.installed.policy = new.clone();
    }

    // ---- endpoint requests ----

    /// Checks an endpoint request before anything is done: name, tenant, labels.
    pub fn plan_add(
        &self,
        name: &str,
        tenant: Option<&str>,
        identifier: Option<Identifier>,
        labels: &BTreeMap<String, String>,
    ) -> Result<AddPlan, AgentError> {
        crate::endpoint::validate_name(name)?;
        // With an identifier and no tenant named, the identifier's VNID says which network.
        let tenant = match (tenant, identifier) {
            (None, Some(id)) => self.tenant_of(id).cloned().ok_or_else(|| {
                AgentError::Invalid(format!(
                    "identifier {id} belongs to no tenant network of host '{}'",
                    self.spec.host
                ))
            })?,
            (t, _) => self.tenant_named(t)?.clone(),
        };
        for (k, v) in labels {
            if k.is_empty() || k.contains(['=', '\n']) || v.contains('\n') {
                return Err(AgentError::Invalid(format!("label '{k}={v}' is not valid")));
            }
        }
        let identity_labels = policy_sync::identity_labels(labels, tenant.vnid)
            .map_err(|e| AgentError::Invalid(format!("labels of endpoint '{name}': {e}")))?;
        Ok(AddPlan {
            tenant,
            identity_labels,
        })
    }

    /// Learns the identity the store allocated for a label set, so that an endpoint's first
    /// packet meets a compiled policy.
    /// Refused if this host knows `id` as other labels (an identity record or index rewritten
    /// in the store: the endpoint would get another label set's policy).
    pub fn learn_identity(&mut self, id: u32, labels: &LabelSet) -> Result<Output, AgentError> {
        let mut out = Output::default();
        match self.policy.labels(id) {
            Some(known) if known == labels => {}
            Some(known) => {
                return Err(AgentError::Conflict(format!(
                    "the store gave labels '{labels}' identity {id}, which is '{known}' here \
                     ({} or {} was rewritten)",
                    store::identity_labels_key(&labels.to_string()),
                    store::identity_key(id)
                )))
            }
            None => {
                self.policy.pin_identity(id, labels.clone());
                self.recompile(&mut out);
            }
        }
        Ok(out)
    }

    /// The identity the store gave this label set, if this host knows it already (identities
    /// are never deleted: a known one needs no store round trip).
    pub fn identity_of(&self, labels: &LabelSet) -> Option<u32> {
        self.policy.identity_of(labels)
    }

    /// The mapping record an endpoint of this host will have.
    /// `identity_labels`: the endpoint's identity label set, vouched for by its digest.
    pub fn record_for(
        &self,
        name: &str,
        identifier: Identifier,
        sir_addr: Ipv6Addr,
        identity: u32,
        identity_labels: Option<&LabelSet>,
    ) -> MappingRecord {
        MappingRecord {
            endpoint: name.to_string(),
            host: self.spec.host.clone(),
            sir: SirPrefix::from_addr(sir_addr),
            identifier,
            locator: self.spec.locator,
            mode: self.spec.csum_mode,
            identity,
            labels_sha256: identity_labels
                .filter(|_| identity != 0)
                .map(|l| store::LabelsDigest::of(&l.to_string())),
        }
    }

    /// Refuses a name this host or (unless replacing) another host already uses.
    pub fn check_name_free(&self, name: &str, replace: bool) -> Result<(), AgentError> {
        if self.endpoints.contains_key(name) || self.creating.contains_key(name) {
            return Err(AgentError::Conflict(format!(
                "endpoint '{name}' already exists on host '{}'",
                self.spec.host
            )));
        }
        if !replace {
            if let Some(r) = self.view.values().find(|r| r.endpoint == name) {
                return Err(AgentError::Conflict(format!(
                    "endpoint name '{name}' is in use on host '{}'",
                    r.host
                )));
            }
        }
        Ok(())
    }

    /// The identifier and address a new endpoint gets: the one asked for, or the next free one
    /// of the tenant (free in the view; the store's atomic create has the last word).
    pub fn choose_address(
        &mut self,
        tenant: &TenantNetwork,
        identifier: Option<Identifier>,
        replace: bool,
    ) -> Result<(Identifier, Ipv6Addr), AgentError> {
        let id = match identifier {
            Some(id) => {
                check_identifier(tenant, id)?;
                let addr = tenant.address(id);
                if !replace {
                    if let Some(r) = self.view.get(&addr) {
                        return Err(AgentError::Conflict(format!(
                            "address {addr} is in use by endpoint '{}' on host '{}'",
                            r.endpoint, r.host
                        )));
                    }
                }
                id
            }
            None => loop {
                let alloc = self.allocators.get_mut(&tenant.name).ok_or_else(|| {
                    AgentError::Invalid(format!("unknown tenant '{}'", tenant.name))
                })?;
                let id = alloc.allocate()?;
                if !self.view.contains_key(&tenant.address(id)) {
                    break id;
                }
            },
        };
        Ok((id, tenant.address(id)))
    }

    /// Gives an allocated identifier back (its creation failed).
    pub fn release_identifier(&mut self, id: Identifier) {
        if let Some(t) = self.tenant_of(id).map(|t| t.name.clone()) {
            if let Some(a) = self.allocators.get_mut(&t) {
                a.release(id);
            }
        }
    }

    /// Records an endpoint under construction (the shell saves the state file next).
    pub fn begin_create(&mut self, pending: PendingEndpoint) {
        self.creating.insert(pending.name.clone(), pending);
    }

    /// Forgets an endpoint under construction (it failed and was cleaned up).
    pub fn abandon_create(&mut self, name: &str) {
        self.creating.remove(name);
    }

    /// An endpoint was plumbed and its mapping published: it becomes ours and its entries are
    /// written right away (rather than waiting for our own watch event).
    pub fn endpoint_added(&mut self, ep: LocalEndpoint) -> Output {
        let mut out = Output::default();
        let rec = self.record_of(&ep);
        let sir = ep.sir_addr;
        if let Some(t) = self.tenant_of(ep.identifier).map(|t| t.name.clone()) {
            if let Some(a) = self.allocators.get_mut(&t) {
                let _ = a.reserve(ep.identifier);
            }
        }
        self.creating.remove(&ep.name);
        self.endpoints.insert(ep.name.clone(), ep);
        self.claims.put(rec);
        self.settle(sir, &mut out);
        out
    }

    /// The endpoint a delete request names.
    pub fn endpoint(&self, name: &str) -> Result<&LocalEndpoint, AgentError> {
        self.endpoints.get(name).ok_or_else(|| {
            AgentError::NotFound(format!("no endpoint '{name}' on host '{}'", self.spec.host))
        })
    }

    /// Starts withdrawing an endpoint's mapping from under our prefix (another host's mapping
    /// of the address, a move, is another key and stays). Always ours to delete.
    pub fn begin_withdraw(&mut self, sir: Ipv6Addr) -> bool {
        self.withdrawing.insert(sir);
        true
    }

    /// The store refused the withdrawal: the mapping stays ours.
    pub fn abort_withdraw(&mut self, sir: Ipv6Addr) {
        self.withdrawing.remove(&sir);
    }

    /// An endpoint's plumbing is gone; with `keep_mapping` its mapping stays in the view (the
    /// endpoint is moving and the new host overwrites it).
    pub fn endpoint_removed(&mut self, name: &str, keep_mapping: bool) -> Output {
        let mut out = Output::default();
        let Some(ep) = self.endpoints.remove(name) else {
            return out;
        };
        self.withdrawing.remove(&ep.sir_addr);
        self.release_identifier(ep.identifier);
        if !keep_mapping {
            self.claims.delete(&self.spec.host, ep.sir_addr);
        }
        self.settle(ep.sir_addr, &mut out);
        out
    }

    /// A copy of the policies in force (to try a change on before storing it).
    pub fn policy_trial(&self) -> PolicyView {
        self.policy.clone()
    }

    /// The stored record of a policy, if any.
    pub fn policy_record(&self, name: &str) -> Option<&PolicyRecord> {
        self.policy_records.get(name)
    }

    // ---- queries ----

    /// This host's endpoints.
    pub fn endpoints(&self) -> impl Iterator<Item = &LocalEndpoint> {
        self.endpoints.values()
    }

    /// Endpoints under construction.
    pub fn creating(&self) -> impl Iterator<Item = &PendingEndpoint> {
        self.creating.values()
    }

    /// The store's mappings as this host knows them.
    pub fn view(&self) -> &BTreeMap<Ipv6Addr, MappingRecord> {
        &self.view
    }

    /// What the core last wrote into the maps.
    pub fn installed(&self) -> &Installed {
        &self.installed
    }

    /// Store revision the view reflects.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// Full resyncs done.
    pub fn resyncs(&self) -> u64 {
        self.resyncs
    }

    /// Entries of the policy maps as last written.
    pub fn policy_fill(&self) -> PolicyFill {
        let p = &self.installed.policy;
        PolicyFill {
            endpoints: p.endpoints.len(),
            rules: p.entries.len(),
            cidr: p.cidr_entries.len(),
        }
    }

    /// Our host record.
    pub fn host_record(&self) -> HostRecord {
        HostRecord {
            name: self.spec.host.clone(),
            locator: self.spec.locator,
            underlay: self.spec.underlay,
        }
    }

    /// The mapping record of one of our endpoints.
    pub fn record_of(&self, ep: &LocalEndpoint) -> MappingRecord {
        let labels = self.identity_labels_of(ep);
        self.record_for(
            &ep.name,
            ep.identifier,
            ep.sir_addr,
            ep.identity,
            labels.as_ref(),
        )
    }

    /// The tenant network an identifier belongs to (by its VNID).
    pub fn tenant_of(&self, id: Identifier) -> Option<&TenantNetwork> {
        self.spec.tenants.iter().find(|t| t.owns(id))
    }

    fn tenant_named(&self, name: Option<&str>) -> Result<&TenantNetwork, AgentError> {
        let tenants = &self.spec.tenants;
        match name {
            None => tenants
                .first()
                .ok_or_else(|| AgentError::Invalid("no tenant network configured".into())),
            Some(n) => tenants.iter().find(|t| t.name == n).ok_or_else(|| {
                let names: Vec<_> = tenants.iter().map(|t| t.name.as_str()).collect();
                AgentError::Invalid(format!(
                    "unknown tenant '{n}' (tenants: {})",
                    names.join(", ")
                ))
            }),
        }
    }

    /// The endpoint attached for a container's interface, if any.
    pub fn cni_endpoint(&self, container_id: &str, ifname: &str) -> Option<&LocalEndpoint> {
        self.endpoints
            .values()
            .find(|e| e.container_id.as_deref() == Some(container_id) && e.ifname == ifname)
    }

    /// What a CNI result reports of an endpoint.
    pub fn attachment_of(&self, ep: &LocalEndpoint) -> CniAttachment {
        let tenant = self.tenant_of(ep.identifier);
        CniAttachment {
            endpoint: ep.name.clone(),
            ifname: ep.ifname.clone(),
            mac: crate::endpoint::mac_string(ep.mac),
            host_ifname: ep.host_ifname.clone(),
            host_mac: crate::endpoint::mac_string(ep.host_mac),
            netns: ep.netns.clone(),
            address: ep.sir_addr,
            gateway: hostnet::link::ENDPOINT_GATEWAY,
            tenant: tenant.map(|t| t.name.clone()).unwrap_or_default(),
            sir_prefix: tenant.map(|t| t.sir.to_string()).unwrap_or_default(),
            identity: ep.identity,
        }
    }

    /// Every mapping in the view, and whether `out_map` (the out-map as read) holds it.
    pub fn mapping_rows(
        &self,
        out_map: &HashMap<Ipv6Addr, dataplane::OutEntry>,
    ) -> Vec<MappingRow> {
        self.view
            .values()
            .map(|r| {
                let expected = reconcile::out_entry(&self.spec.host, r).ok();
                MappingRow {
                    endpoint: r.endpoint.clone(),
                    host: r.host.clone(),
                    sir_addr: r.sir_address(),
                    locator: r.locator.to_string(),
                    ila_addr: expected.map(|e| e.ila),
                    mode: r.mode.to_string(),
                    installed: expected.is_some()
                        && out_map.get(&r.sir_address()) == expected.as_ref(),
                }
            })
            .collect()
    }

    /// The policies in force.
    pub fn policy_list(&self) -> Vec<PolicyRow> {
        self.policy
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
    fn lookup_peer(&self, what: &str) -> Result<(policy::LookupPeer, String), AgentError> {
        let rec = self.view.values().find(|r| r.endpoint == what).or_else(|| {
            what.parse::<Ipv6Addr>()
                .ok()
                .and_then(|a| self.view.get(&a))
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
            Err(_) => Err(AgentError::NotFound(format!(
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
        let (f, fdesc) = self.lookup_peer(from)?;
        let (t, tdesc) = self.lookup_peer(to)?;
        let e = self.policy.compiled().explain(f, t, port, proto_num);
        Ok(ExplainReply {
            verdict: format!("{:?}", e.verdict).to_lowercase(),
            rule: e.rule.map(|r| r.to_string()),
            reason: e.reason,
            from: fdesc,
            to: tdesc,
        })
    }
}

/// Diffs one key of one map between what is wanted and what was written, and records the
/// change as written.
fn one_key<V: PartialEq + Copy>(
    want: &HashMap<Ipv6Addr, V>,
    have: &mut HashMap<Ipv6Addr, V>,
    key: Ipv6Addr,
    put: &mut Vec<(Ipv6Addr, V)>,
    del: &mut Vec<Ipv6Addr>,
) {
    match want.get(&key) {
        Some(v) if have.get(&key) != Some(v) => {
            put.push((key, *v));
            have.insert(key, *v);
        }
        Some(_) => {}
        None => {
            if have.remove(&key).is_some() {
                del.push(key);
            }
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
