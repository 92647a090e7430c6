//! Endpoint lifecycle requests (the API's and the CNI plugin's): each checked by the core,
//! plumbed through [`crate::io::Plumbing`], published in the store, and undone on failure.

use std::collections::BTreeMap;
use std::net::Ipv6Addr;
use std::sync::Arc;
use std::time::Instant;

use ila::Identifier;
use store::{Lease, MappingRecord, Store};

use crate::api::{CniAttachment, CniAttachmentId, CniGcReply};
use crate::io::CreateEndpoint;
use crate::reconcile::LocalEndpoint;
use crate::{blocking, endpoint, lock, metrics, Agent, AgentError, PendingEndpoint};

impl Agent {
    /// Creates an endpoint on this host and publishes its mapping. With `identifier`, that
    /// identifier is used (a planned address, or a move when `replace` is set: the mapping is
    /// overwritten instead of created). Nothing is left behind on failure.
    pub async fn add_endpoint(
        self: &Arc<Self>,
        name: &str,
        tenant: Option<&str>,
        identifier: Option<Identifier>,
        replace: bool,
        labels: BTreeMap<String, String>,
    ) -> Result<LocalEndpoint, AgentError> {
        let started = Instant::now();
        let ep = self
            .add_endpoint_in(
                name,
                &endpoint::Sandbox::Own,
                tenant,
                identifier,
                replace,
                labels,
            )
            .await?;
        self.telemetry
            .observe_endpoint_created(metrics::Via::Api, started.elapsed());
        Ok(ep)
    }

    /// [`Agent::add_endpoint`] in a namespace of the agent's own or a runtime's.
    ///
    /// The plumbing (veth, addresses, routes, the program's attachment: most of the time, much
    /// of it the kernel's) runs while the identity is looked up and the mapping is published;
    /// if either side fails, the other is undone.
    pub(crate) async fn add_endpoint_in(
        self: &Arc<Self>,
        name: &str,
        sandbox: &endpoint::Sandbox,
        tenant: Option<&str>,
        identifier: Option<Identifier>,
        replace: bool,
        labels: BTreeMap<String, String>,
    ) -> Result<LocalEndpoint, AgentError> {
        let t0 = Instant::now();
        let plan = lock(&self.core).plan_add(name, tenant, identifier, &labels)?;
        let _name = self.names.lock(name).await;
        let (mut store, mut lease) = self.wait_session().await?;
        lock(&self.core).check_name_free(name, replace)?;
        let mut identity = lock(&self.core).identity_of(&plan.identity_labels);
        let mut attempts = 0;
        loop {
            attempts += 1;
            let (id, sir_addr) =
                lock(&self.core).choose_address(&plan.tenant, identifier, replace)?;
            // Recorded before anything is made, so no crash can leave an unrecorded namespace.
            self.set_creating(name, Some(sandbox))?;
            let t_plumb = Instant::now();
            let req = CreateEndpoint {
                name: name.to_string(),
                sandbox: sandbox.clone(),
                identifier: id,
                sir_addr,
                labels: labels.clone(),
                identity: 0,
            };
            let plumbing = Arc::clone(&self.plumbing);
            let plumbed = tokio::task::spawn_blocking(move || {
                let r = plumbing.create(&req);
                (r, t_plumb.elapsed())
            });
            // Meanwhile: the identity (known labels need no store round trip; identities are
            // never deleted) and the mapping.
            let ident = match identity {
                Some(i) => Ok(i),
                None => self
                    .allocate_identity(&mut store, &mut lease, &plan.identity_labels)
                    .await
                    .inspect(|i| identity = Some(*i)),
            };
            let t_identity = t0.elapsed();
            let published = match ident {
                Ok(i) => {
                    let rec = {
                        let mut core = lock(&self.core);
                        // Known before the endpoint is installed, so its first packet meets a
                        // compiled policy.
                        core.learn_identity(i, &plan.identity_labels)
                            .and_then(|out| self.execute(out).map(|_| ()))
                            .map(|()| {
                                core.record_for(name, id, sir_addr, i, Some(&plan.identity_labels))
                            })
                    };
                    match rec {
                        Ok(rec) => self
                            .publish_mapping(&rec, replace, name, &mut store, &mut lease)
                            .await
                            .map_err(AgentError::from),
                        Err(e) => Err(e),
                    }
                }
                Err(e) => Err(e),
            };
            let t_publish = t0.elapsed();
            let (created, plumb_time) = plumbed
                .await
                .map_err(|e| AgentError::Internal(format!("endpoint task failed: {e}")))?;
            match (created, published) {
                (Ok(mut ep), Ok(())) => {
                    ep.identity = identity.unwrap_or_default();
                    let t_save = Instant::now();
                    {
                        let mut core = lock(&self.core);
                        let out = core.endpoint_added(ep.clone());
                        self.execute(out)?;
                    }
                    self.save_state()?;
                    log::debug!(
                        "host {}: endpoint {name} added in {:?}: identity by {t_identity:?}, \
                         published by {t_publish:?}, plumbing {plumb_time:?}, install and record {:?}",
                        self.cfg.host,
                        t0.elapsed(),
                        t_save.elapsed()
                    );
                    return Ok(ep);
                }
                (Err(e), published) => {
                    if published.is_ok() {
                        self.unpublish(sir_addr, replace, &store).await;
                    }
                    if identifier.is_none() {
                        lock(&self.core).release_identifier(id);
                    }
                    self.set_creating(name, None)?;
                    return Err(e);
                }
                (Ok(ep), Err(e)) => {
                    let plumbing = Arc::clone(&self.plumbing);
                    let ep2 = ep.clone();
                    match blocking(move || plumbing.destroy(&ep2)).await {
                        Ok(()) => self.set_creating(name, None)?,
                        // Stays recorded: the next start (or `lab down`) removes it.
                        Err(c) => {
                            log::error!(
                                "host {}: cleaning up endpoint '{name}': {c}",
                                self.cfg.host
                            )
                        }
                    }
                    match e {
                        // Taken by another host meanwhile: that identifier stays allocated
                        // here (so it is not chosen again) and the next one is tried.
                        AgentError::Store(store::StoreError::AddressInUse { .. })
                            if identifier.is_none() && attempts < 32 =>
                        {
                            continue
                        }
                        e => {
                            if identifier.is_none() {
                                lock(&self.core).release_identifier(id);
                            }
                            return Err(e);
                        }
                    }
                }
            }
        }
    }

    /// Allocates the identity of a label set in the store. Idempotent: one retry covers a
    /// request lost with a dying store member.
    pub(crate) async fn allocate_identity(
        &self,
        store: &mut Store,
        lease: &mut Lease,
        labels: &policy::LabelSet,
    ) -> Result<u32, AgentError> {
        let text = labels.to_string();
        match store.allocate_identity(&text).await {
            Err(e @ store::StoreError::Unavailable { .. }) => {
                self.reset_session(&e, lease.id);
                (*store, *lease) = self.wait_session().await?;
                Ok(store.allocate_identity(&text).await?)
            }
            other => Ok(other?),
        }
    }

    /// Writes a new endpoint's mapping (created, or overwritten for a move). A write lost with
    /// a dying store member, or whose lease went with it, is tried once more on the session
    /// the session loop re-establishes; if the first attempt did land, the create then finds
    /// this very endpoint's record, which is success.
    pub(crate) async fn publish_mapping(
        &self,
        rec: &MappingRecord,
        replace: bool,
        name: &str,
        store: &mut Store,
        lease: &mut Lease,
    ) -> Result<(), store::StoreError> {
        let write = |store: Store, lease: Lease| {
            let rec = rec.clone();
            async move {
                if replace {
                    store.put_mapping(&rec, &lease).await.map(|_| ())
                } else {
                    store.create_mapping(&rec, &lease).await.map(|_| ())
                }
            }
        };
        match write(store.clone(), *lease).await {
            Err(
                e @ (store::StoreError::Unavailable { .. } | store::StoreError::LeaseExpired(_)),
            ) => {
                self.reset_session(&e, lease.id);
                let (s, l) = self.wait_session().await.map_err(|_| e)?;
                (*store, *lease) = (s, l);
                match write(store.clone(), *lease).await {
                    Err(store::StoreError::AddressInUse { owner_endpoint, .. })
                        if owner_endpoint == name =>
                    {
                        Ok(())
                    }
                    other => other,
                }
            }
            other => other,
        }
    }

    /// Takes back a mapping published for an endpoint whose plumbing then failed. It is under
    /// our prefix only: the old host's mapping of a move is another key, and stays.
    pub(crate) async fn unpublish(&self, sir: Ipv6Addr, _replace: bool, store: &Store) {
        if let Err(e) = store.delete_mapping(&self.cfg.host, sir).await {
            log::error!(
                "host {}: taking back the mapping of {sir}: {e} (its lease ends it)",
                self.cfg.host
            );
        }
    }

    /// Records (or forgets) an endpoint under construction in the state file.
    pub(crate) fn set_creating(
        &self,
        name: &str,
        creating: Option<&endpoint::Sandbox>,
    ) -> Result<(), AgentError> {
        {
            let mut core = lock(&self.core);
            match creating {
                Some(sandbox) => {
                    let (netns, owns_netns) = match sandbox {
                        endpoint::Sandbox::Own => (endpoint::netns_name(&self.cfg, name), true),
                        endpoint::Sandbox::Runtime { netns, .. } => (netns.clone(), false),
                    };
                    core.begin_create(PendingEndpoint {
                        name: name.to_string(),
                        netns,
                        host_ifname: endpoint::host_ifname(name),
                        owns_netns,
                    });
                }
                None => core.abandon_create(name),
            }
        }
        self.save_state()
    }

    /// Removes an endpoint of this host; with `keep_mapping` its mapping stays in the store (the
    /// endpoint is moving and the new host overwrites it).
    pub async fn del_endpoint(
        self: &Arc<Self>,
        name: &str,
        keep_mapping: bool,
    ) -> Result<(), AgentError> {
        let _name = self.names.lock(name).await;
        let ep = lock(&self.core).endpoint(name)?.clone();
        if !keep_mapping {
            let (store, _) = self.wait_session().await?;
            let ours = lock(&self.core).begin_withdraw(ep.sir_addr);
            if ours {
                if let Err(e) = store.delete_mapping(&self.cfg.host, ep.sir_addr).await {
                    lock(&self.core).abort_withdraw(ep.sir_addr);
                    return Err(e.into());
                }
            }
        }
        if ep.container_id.is_none() {
            // Our own namespace: gone when the request returns (`ilanet endpoint del`).
            let plumbing = Arc::clone(&self.plumbing);
            let ep2 = ep.clone();
            blocking(move || plumbing.destroy(&ep2)).await?;
            {
                let mut core = lock(&self.core);
                let out = core.endpoint_removed(name, keep_mapping);
                self.execute(out)?;
            }
            return self.save_state();
        }
        // A runtime's container (CNI DEL): its mapping and entries go now; the veth — whose
        // deletion is the kernel's slowest step, and which goes anyway with the namespace the
        // runtime removes next — goes in the background, recorded as unfinished until then (a
        // restart finishes it). The name stays locked meanwhile: a new ADD of the same
        // container waits for it.
        {
            let mut core = lock(&self.core);
            let out = core.endpoint_removed(name, keep_mapping);
            self.execute(out)?;
            core.begin_create(PendingEndpoint {
                name: ep.name.clone(),
                netns: ep.netns.clone(),
                host_ifname: ep.host_ifname.clone(),
                owns_netns: false,
            });
        }
        self.save_state()?;
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let held = _name;
            let plumbing = Arc::clone(&me.plumbing);
            let ep2 = ep.clone();
            match blocking(move || plumbing.destroy(&ep2)).await {
                Ok(()) => {
                    lock(&me.core).abandon_create(&ep.name);
                    if let Err(e) = me.save_state() {
                        log::error!("host {}: {e}", me.cfg.host);
                    }
                }
                Err(e) => log::error!(
                    "host {}: removing the veth of endpoint '{}': {e} (the next start retries)",
                    me.cfg.host,
                    ep.name
                ),
            }
            drop(held);
        });
        Ok(())
    }

    /// Attaches a container a runtime created (CNI ADD). The endpoint is named after the
    /// container and interface, so a repeated ADD finds the attachment instead of making a
    /// second one.
    pub async fn cni_add(
        self: &Arc<Self>,
        container_id: &str,
        netns: &str,
        ifname: &str,
        tenant: Option<&str>,
        labels: BTreeMap<String, String>,
    ) -> Result<CniAttachment, AgentError> {
        let started = Instant::now();
        endpoint::validate_cni(container_id, ifname, Some(netns))?;
        let name = endpoint::cni_endpoint_name(container_id, ifname);
        if let Some(ep) = lock(&self.core).cni_endpoint(container_id, ifname) {
            return Err(AgentError::Conflict(format!(
                "container {container_id} already has interface {ifname} attached (endpoint '{}', {}); delete it first",
                ep.name, ep.sir_addr
            )));
        }
        let sandbox = endpoint::Sandbox::Runtime {
            netns: netns.to_string(),
            ifname: ifname.to_string(),
            container_id: container_id.to_string(),
        };
        let ep = self
            .add_endpoint_in(&name, &sandbox, tenant, None, false, labels)
            .await?;
        self.telemetry
            .observe_endpoint_created(metrics::Via::Cni, started.elapsed());
        Ok(lock(&self.core).attachment_of(&ep))
    }

    /// Detaches a container (CNI DEL): idempotent, and fine when its namespace is gone.
    pub async fn cni_del(
        self: &Arc<Self>,
        container_id: &str,
        ifname: &str,
    ) -> Result<(), AgentError> {
        endpoint::validate_cni(container_id, ifname, None)?;
        let found = lock(&self.core)
            .cni_endpoint(container_id, ifname)
            .map(|e| e.name.clone());
        match found {
            Some(name) => self.del_endpoint(&name, false).await,
            None => Ok(()),
        }
    }

    /// Verifies an attachment (CNI CHECK): namespace, interface, address, default route, host
    /// veth, and this host's mapping in the store's view and the maps.
    pub async fn cni_check(
        self: &Arc<Self>,
        container_id: &str,
        ifname: &str,
        netns: &str,
    ) -> Result<CniAttachment, AgentError> {
        endpoint::validate_cni(container_id, ifname, Some(netns))?;
        let ep = lock(&self.core)
            .cni_endpoint(container_id, ifname)
            .cloned()
            .ok_or_else(|| {
                AgentError::NotFound(format!(
                    "container {container_id} has no interface {ifname} attached on host '{}'",
                    self.cfg.host
                ))
            })?;
        if ep.netns != netns {
            return Err(AgentError::Invalid(format!(
                "container {container_id} is attached in namespace {}, not {netns}",
                ep.netns
            )));
        }
        // Netlink queries block (and run a runtime of their own): off the async threads.
        let (plumbing, ep2) = (Arc::clone(&self.plumbing), ep.clone());
        blocking(move || plumbing.check(&ep2)).await?;
        let core = lock(&self.core);
        match core.view().get(&ep.sir_addr) {
            Some(r) if r.host == self.cfg.host && r.endpoint == ep.name => {}
            Some(r) => {
                return Err(AgentError::Invalid(format!(
                    "the store maps {} to endpoint '{}' on host '{}', not to this attachment",
                    ep.sir_addr, r.endpoint, r.host
                )))
            }
            None => {
                return Err(AgentError::Invalid(format!(
                    "the store holds no mapping of {} (yet)",
                    ep.sir_addr
                )))
            }
        }
        let installed = lock(&self.maps).get_out(ep.sir_addr)?.is_some();
        if !installed {
            return Err(AgentError::Invalid(format!(
                "the out-map of host '{}' lacks {}",
                self.cfg.host, ep.sir_addr
            )));
        }
        Ok(core.attachment_of(&ep))
    }

    /// Removes every CNI attachment not in `valid` (CNI GC); endpoints the agent made itself
    /// are never touched.
    pub async fn cni_gc(
        self: &Arc<Self>,
        valid: &[CniAttachmentId],
    ) -> Result<CniGcReply, AgentError> {
        let keep: std::collections::BTreeSet<(&str, &str)> = valid
            .iter()
            .map(|a| (a.container_id.as_str(), a.ifname.as_str()))
            .collect();
        let stale: Vec<LocalEndpoint> = lock(&self.core)
            .endpoints()
            .filter(|ep| {
                ep.container_id
                    .as_deref()
                    .is_some_and(|c| !keep.contains(&(c, ep.ifname.as_str())))
            })
            .cloned()
            .collect();
        let mut removed = Vec::new();
        for ep in stale {
            self.del_endpoint(&ep.name, false).await?;
            removed.push(CniAttachmentId {
                container_id: ep.container_id.unwrap_or_default(),
                ifname: ep.ifname,
            });
        }
        Ok(CniGcReply { removed })
    }
}
