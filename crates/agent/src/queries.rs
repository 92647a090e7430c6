//! What the agent reports (status, metrics samples, mappings, policies, BGP) and the policy
//! requests, which go to the store.

use std::collections::HashMap;
use std::net::Ipv6Addr;
use std::sync::Arc;

use crate::api::{AgentStatus, ExplainReply, MappingRow, PolicyRow};
use crate::io::MappingMap;
use crate::reconcile::LocalEndpoint;
use crate::{blocking, describe_cfg, lock, metrics, routing, Agent, AgentError};
use store::StoreConfig;

impl Agent {
    /// Stores the policies of one file; if any write fails, the ones written are rolled back.
    pub async fn apply_policies(
        &self,
        records: Vec<store::PolicyRecord>,
    ) -> Result<Vec<String>, AgentError> {
        if records.is_empty() {
            return Err(AgentError::Invalid("no policies to apply".into()));
        }
        // Check they decode and compile together with what is in force before storing any
        // (CPU work: off the async threads).
        let mut trial = lock(&self.core).policy_trial();
        let records = blocking(move || {
            for r in &records {
                trial.put_policy(r).map_err(AgentError::Invalid)?;
            }
            trial
                .recompile()
                .map_err(|e| AgentError::Invalid(format!("policies do not compile: {e}")))?;
            Ok(records)
        })
        .await?;
        let store = self.policy_store().await?;
        let previous: Vec<Option<store::PolicyRecord>> = {
            let core = lock(&self.core);
            records
                .iter()
                .map(|r| core.policy_record(&r.name).cloned())
                .collect()
        };
        for (i, r) in records.iter().enumerate() {
            if let Err(e) = store.put_policy(r).await {
                for (done, prev) in records[..i].iter().zip(&previous) {
                    let undo = match prev {
                        Some(p) => store.put_policy(p).await.map(|_| ()),
                        None => store.delete_policy(&done.name).await.map(|_| ()),
                    };
                    if let Err(u) = undo {
                        log::error!("rolling back policy '{}': {u}", done.name);
                    }
                }
                return Err(e.into());
            }
        }
        Ok(records.into_iter().map(|r| r.name).collect())
    }

    /// Removes a policy from the store.
    pub async fn delete_policy(&self, name: &str) -> Result<(), AgentError> {
        let store = self.policy_store().await?;
        store.delete_policy(name).await?;
        Ok(())
    }

    /// Lets this agent write policies as the policy administrator (`cfg`: the same etcd,
    /// with that user's certificate). Once; a second call is refused.
    pub fn set_policy_writer(&self, cfg: StoreConfig) -> Result<(), AgentError> {
        self.policy_writer
            .set(cfg)
            .map_err(|_| AgentError::Internal("the policy writer is set already".into()))
    }

    /// The store that policy writes go to: the policy administrator's connection if this
    /// agent has one; else its own session, unless its credentials are a host's (etcd with
    /// TLS), which may only read policies.
    async fn policy_store(&self) -> Result<store::Store, AgentError> {
        if let Some(cfg) = self.policy_writer.get() {
            return store::Store::connect(cfg).await.map_err(|e| match e {
                e @ store::StoreError::Unavailable { .. } => {
                    AgentError::NoStore(format!("connecting as the policy administrator: {e}"))
                }
                e => AgentError::Store(e),
            });
        }
        if matches!(&self.store_cfg, StoreConfig::Etcd { tls: Some(_), .. }) {
            return Err(AgentError::Forbidden(format!(
                "host '{}' may only read policies: writing them takes the policy \
                 administrator's store credentials (user {}; store.policy_cert and \
                 store.policy_key in the host configuration); apply through a host that has \
                 them",
                self.cfg.host,
                store::pki::POLICY_ADMIN_USER
            )));
        }
        Ok(self.wait_session().await?.0)
    }

    /// The policies in force.
    pub fn policy_list(&self) -> Vec<PolicyRow> {
        lock(&self.core).policy_list()
    }

    /// The verdict for a packet from `from` to `to` and the rule that gave it.
    pub fn explain(
        &self,
        from: &str,
        to: &str,
        port: u16,
        proto: &str,
    ) -> Result<ExplainReply, AgentError> {
        lock(&self.core).explain(from, to, port, proto)
    }

    /// This host's endpoints.
    pub fn endpoints(&self) -> Vec<LocalEndpoint> {
        lock(&self.core).endpoints().cloned().collect()
    }

    /// Every mapping in the view, and whether the out-map holds it.
    pub fn mappings(&self) -> Result<Vec<MappingRow>, AgentError> {
        let core = lock(&self.core);
        let out: HashMap<Ipv6Addr, dataplane::OutEntry> =
            lock(&self.maps).out_entries()?.into_iter().collect();
        Ok(core.mapping_rows(&out))
    }

    /// Hands the agent its BGP speaker (once), so that the API can report it.
    pub fn set_routing(&self, routing: Arc<routing::Routing>) -> Result<(), AgentError> {
        self.routing
            .set(routing)
            .map_err(|_| AgentError::Conflict("the BGP speaker is set already".into()))
    }

    /// The BGP speaker.
    pub fn routing(&self) -> Result<&Arc<routing::Routing>, AgentError> {
        self.routing.get().ok_or_else(|| {
            AgentError::NotFound(format!(
                "host '{}' runs no BGP speaker (its configuration has no `bgp` section)",
                self.cfg.host
            ))
        })
    }

    /// Latencies and call counts recorded for the metrics endpoint.
    pub fn telemetry(&self) -> &metrics::Telemetry {
        &self.telemetry
    }

    /// The agent's state as a metrics scrape reports it: a short look under the state lock,
    /// then the counters and the fill of the mapping maps (walked: they hold one entry per
    /// mapping or endpoint), under the maps lock.
    pub fn sample(&self) -> metrics::Sample {
        let (revision, resyncs, endpoints, mappings, pf) = {
            let core = lock(&self.core);
            (
                core.revision(),
                core.resyncs(),
                core.endpoints().count(),
                core.view().len(),
                core.policy_fill(),
            )
        };
        let (connected, lease) = {
            let conn = lock(&self.conn);
            (
                conn.session.is_some(),
                conn.session.as_ref().map(|(_, l)| (l.id, l.ttl)),
            )
        };
        let mut maps = lock(&self.maps);
        let mut fill = |name, map: Option<MappingMap>, known: usize, capacity| {
            let entries = match map {
                Some(m) => maps
                    .fill(m)
                    .map_err(|e| log::debug!("host {}: metrics: {e}", self.cfg.host))
                    .ok(),
                None => Some(known),
            };
            metrics::MapFill {
                map: name,
                entries,
                capacity,
            }
        };
        let maps_fill = vec![
            fill(
                "ILA_OUT",
                Some(MappingMap::Out),
                0,
                dataplane::OUT_MAX_ENTRIES,
            ),
            fill("ILA_IN", Some(MappingMap::In), 0, dataplane::IN_MAX_ENTRIES),
            fill(
                "ILA_ENDPOINTS",
                Some(MappingMap::Endpoints),
                0,
                dataplane::ENDPOINTS_MAX_ENTRIES,
            ),
            fill(
                "ILA_IPCACHE",
                Some(MappingMap::Ipcache),
                0,
                dataplane::IPCACHE_MAX_ENTRIES,
            ),
            fill(
                "POLICY_EP",
                None,
                pf.endpoints,
                dataplane::POLICY_EP_MAX_ENTRIES,
            ),
            fill("POLICY", None, pf.rules, dataplane::POLICY_MAX_ENTRIES),
            fill(
                "POLICY_CIDR",
                None,
                pf.cidr,
                dataplane::POLICY_CIDR_MAX_ENTRIES,
            ),
        ];
        let counters = maps.counters().ok();
        drop(maps);
        metrics::Sample {
            host: self.cfg.host.clone(),
            connected,
            lease,
            revision,
            resyncs,
            endpoints,
            mappings,
            counters,
            maps: maps_fill,
        }
    }

    /// The agent's state.
    pub fn status(&self) -> AgentStatus {
        let (revision, mappings, endpoints, resyncs) = {
            let core = lock(&self.core);
            (
                core.revision(),
                core.view().len(),
                core.endpoints().count(),
                core.resyncs(),
            )
        };
        let (store, store_connected, store_error, lease) = {
            let conn = lock(&self.conn);
            (
                conn.session
                    .as_ref()
                    .map(|(s, _)| s.describe())
                    .unwrap_or_else(|| describe_cfg(&self.store_cfg)),
                conn.session.is_some(),
                conn.error.clone(),
                conn.session.as_ref().map(|(_, l)| l.id),
            )
        };
        let mut maps = lock(&self.maps);
        AgentStatus {
            host: self.cfg.host.clone(),
            locator: self.cfg.locator.to_string(),
            store,
            store_connected,
            store_error,
            lease,
            revision,
            mappings,
            endpoints,
            out_entries: maps.fill(MappingMap::Out).unwrap_or(0),
            in_entries: maps.fill(MappingMap::In).unwrap_or(0),
            resyncs,
            counters: maps.counters().ok(),
            tenants: self.cfg.tenants.clone(),
        }
    }
}
