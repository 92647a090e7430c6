//! The store session: connect, publish, resync, watch, retry with backoff; the core's
//! operations executed as store inputs arrive.

use std::sync::Arc;
use std::time::{Duration, Instant};

use store::{Lease, Snapshot, Store, StoreEvent};

use crate::core::Publication;
use crate::{
    blocking, lock, AbortOnDrop, Agent, AgentError, Connection, BACKOFF_MAX, BACKOFF_MIN, CT_IDLE,
    CT_SWEEP_EVERY, SESSION_WAIT,
};

impl Agent {
    /// Writes our own records back where the store lost them: a mapping of one of our
    /// endpoints (or our host record) deleted behind our back, by hand or by a tool, would
    /// otherwise leave the endpoint unreachable until the agent restarts.
    pub(crate) async fn publish(
        &self,
        store: &Store,
        lease: &Lease,
        publications: Vec<Publication>,
    ) -> Result<(), AgentError> {
        for p in publications {
            match p {
                Publication::Host(h) => {
                    store.put_host(&h, lease).await?;
                    log::warn!(
                        "host {}: host record was missing from the store; written again",
                        self.cfg.host
                    );
                }
                Publication::Mapping(rec) => {
                    store.put_mapping(&rec, lease).await?;
                    log::warn!(
                        "host {}: mapping of {} was deleted from the store behind our back; written again",
                        self.cfg.host,
                        rec.sir_address()
                    );
                }
                Publication::Withdraw(sir) => {
                    store.delete_mapping(&self.cfg.host, sir).await?;
                    log::info!(
                        "host {}: {sir} moved to another host; our mapping of it withdrawn",
                        self.cfg.host
                    );
                }
            }
        }
        Ok(())
    }

    /// Runs the store session forever: connect, publish, resync, watch; on any failure back off
    /// and start again. `ready` is signalled once after the first publication (so agents sharing
    /// one process publish before any of them sweeps).
    pub async fn run(self: Arc<Self>, mut ready: Option<Arc<tokio::sync::Barrier>>) {
        tokio::spawn(Arc::clone(&self).expire_conntrack_forever());
        let mut backoff = BACKOFF_MIN;
        loop {
            let started = Instant::now();
            let result = self.session(&mut ready).await;
            let reason = match result {
                Ok(()) => "session ended".to_string(),
                Err(e) => e.to_string(),
            };
            log::warn!(
                "host {}: store session ended ({reason}); data path kept as it is; retrying in {backoff:?}",
                self.cfg.host
            );
            *lock(&self.conn) = Connection {
                session: None,
                error: Some(reason),
            };
            if started.elapsed() > Duration::from_secs(10) {
                backoff = BACKOFF_MIN;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Removes idle conntrack entries now and then. The LRU map evicts under pressure anyway;
    /// this bounds how long an idle flow keeps passing without a policy check.
    pub(crate) async fn expire_conntrack_forever(self: Arc<Self>) {
        loop {
            tokio::time::sleep(CT_SWEEP_EVERY).await;
            let removed = lock(&self.maps).expire_conntrack(CT_IDLE);
            match removed {
                Ok(0) => {}
                Ok(n) => log::debug!("host {}: {n} idle conntrack entries expired", self.cfg.host),
                Err(e) => log::warn!("host {}: conntrack expiry: {e}", self.cfg.host),
            }
        }
    }

    pub(crate) async fn session(
        self: &Arc<Self>,
        ready: &mut Option<Arc<tokio::sync::Barrier>>,
    ) -> Result<(), AgentError> {
        let store = Store::connect(&self.store_cfg).await?;
        let lease = store.grant_lease(self.cfg.lease_ttl).await?;
        let (host, records) = {
            let core = lock(&self.core);
            let records: Vec<_> = core.endpoints().map(|ep| core.record_of(ep)).collect();
            (core.host_record(), records)
        };
        store.put_host(&host, &lease).await?;
        for rec in &records {
            store.put_mapping(rec, &lease).await?;
        }
        *lock(&self.conn) = Connection {
            session: Some((store.clone(), lease)),
            error: None,
        };
        log::info!(
            "host {}: connected to {}, lease {}, {} endpoints published",
            self.cfg.host,
            store.describe(),
            lease.id,
            records.len()
        );
        if let Some(barrier) = ready.take() {
            barrier.wait().await;
        }
        // Its own task: no parsing, compiling or map writing below can delay a keep-alive.
        let mut keepalive = {
            let store = store.clone();
            AbortOnDrop(tokio::spawn(async move {
                loop {
                    tokio::time::sleep(lease.ttl / 3).await;
                    if let Err(e) = store.keep_alive(&lease).await {
                        return Err::<(), _>(AgentError::from(e));
                    }
                }
            }))
        };
        let sync = async {
            loop {
                let snap = store.snapshot().await?;
                let from = snap.revision + 1;
                // Decoding and compiling policies is CPU work: off the async threads.
                let me = Arc::clone(self);
                let publications = blocking(move || me.full_resync(snap)).await?;
                self.publish(&store, &lease, publications).await?;
                let mut watch = store.watch(from).await?;
                while let Some(item) = watch.next().await {
                    match item {
                        Ok(ev) => {
                            if ev.event == StoreEvent::Resync {
                                break;
                            }
                            let heavy = matches!(
                                ev.event,
                                StoreEvent::PutPolicy(_)
                                    | StoreEvent::DeletePolicy(_)
                                    | StoreEvent::PutIdentity(_)
                            );
                            let publications = if heavy {
                                let me = Arc::clone(self);
                                blocking(move || me.on_event(ev.revision, ev.event)).await?
                            } else {
                                self.on_event(ev.revision, ev.event)?
                            };
                            self.publish(&store, &lease, publications).await?;
                        }
                        Err(e) if !e.ends_watch() => {
                            log::error!("host {}: {e}; skipped", self.cfg.host)
                        }
                        Err(e) => return Err(AgentError::from(e)),
                    }
                }
            }
        };
        let reset = async {
            self.session_reset.notified().await;
            Err(AgentError::Store(store::StoreError::LeaseExpired(lease.id)))
        };
        let result: Result<(), AgentError> = tokio::select! {
            r = keepalive.join() => r,
            r = sync => r,
            r = reset => r,
        };
        result
    }

    /// Makes the maps equal to a snapshot (mark and sweep against the maps as read).
    pub(crate) fn full_resync(&self, snap: Snapshot) -> Result<Vec<Publication>, AgentError> {
        let started = Instant::now();
        let revision = snap.revision;
        let mut core = lock(&self.core);
        let current = lock(&self.maps).current()?;
        let out = core.resync(snap, &current);
        let (written, swept) = (
            out.ops.mappings.out_put.len() + out.ops.mappings.in_put.len(),
            out.ops.mappings.out_del.len() + out.ops.mappings.in_del.len(),
        );
        let publications = self.execute(out)?;
        log::info!(
            "host {}: resynced at revision {revision}: {} mappings ({written} written, {swept} swept)",
            self.cfg.host,
            core.view().len(),
        );
        drop(core);
        self.telemetry.observe_resync(started.elapsed());
        Ok(publications)
    }

    /// Applies one watched change.
    pub(crate) fn on_event(
        &self,
        revision: i64,
        event: StoreEvent,
    ) -> Result<Vec<Publication>, AgentError> {
        let mut core = lock(&self.core);
        let out = core.event(revision, event);
        self.execute(out)
    }

    /// The store session, waiting briefly if it is being re-established (a store member died,
    /// a lease was renewed): a change is refused only when the store stays away.
    pub(crate) async fn wait_session(&self) -> Result<(Store, Lease), AgentError> {
        let deadline = Instant::now() + SESSION_WAIT;
        loop {
            match self.session_handle() {
                Ok(s) => return Ok(s),
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// After a change failed on the store: ends the session (a new one reconnects, which drops
    /// a connection to a dead member, and renews an expired lease) unless the session loop
    /// already replaced it, so that the retry waits for a fresh one.
    pub(crate) fn reset_session(&self, failed: &store::StoreError, lease_id: i64) {
        let mut conn = lock(&self.conn);
        if conn.session.as_ref().is_some_and(|(_, l)| l.id == lease_id) {
            *conn = Connection {
                session: None,
                error: Some(format!("{failed}; reconnecting")),
            };
            self.session_reset.notify_one();
        }
    }

    pub(crate) fn session_handle(&self) -> Result<(Store, Lease), AgentError> {
        let conn = lock(&self.conn);
        match &conn.session {
            Some((s, l)) => Ok((s.clone(), *l)),
            None => Err(AgentError::NoStore(
                conn.error.clone().unwrap_or_else(|| "no session".into()),
            )),
        }
    }
}
