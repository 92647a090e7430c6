//! The etcd v3 backend.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::net::Ipv6Addr;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Client, CompactionOptions, Compare, CompareOp, ConnectOptions, EventType, GetOptions,
    PutOptions, Txn, TxnOp, TxnOpResponse, WatchOptions, WatchStream,
};

use crate::records::{
    self, decode_delete, decode_put, encode_host, encode_mapping, host_key, mapping_key,
};
use crate::{
    HostRecord, Lease, MappingRecord, Snapshot, StoreError, StoreEvent, WatchEvent, KEY_PREFIX,
};

/// Default bound on one request (also used by [`crate::Store::connect`]).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection to an etcd cluster (cheap to clone).
#[derive(Clone)]
pub struct EtcdStore {
    // `Client` is large (kilobytes): keep the store a cheap, small handle.
    client: Arc<Client>,
    endpoints: Arc<[String]>,
    request_timeout: Duration,
}

impl fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.endpoints)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

// tonic::Code values (the type is not re-exported by etcd-client).
const CODE_DEADLINE_EXCEEDED: i32 = 4;
const CODE_UNAVAILABLE: i32 = 14;
const CODE_CANCELLED: i32 = 1;

impl EtcdStore {
    /// Connects and checks that some member answers a read within `connect_timeout` (one
    /// attempt). Requests are then bounded by [`DEFAULT_REQUEST_TIMEOUT`].
    pub async fn connect(
        endpoints: &[String],
        connect_timeout: Duration,
    ) -> Result<EtcdStore, StoreError> {
        let joined = endpoints.join(",");
        let unavailable = |reason: String| StoreError::Unavailable {
            endpoints: joined.clone(),
            reason,
        };
        if endpoints.is_empty() {
            return Err(unavailable("no endpoints configured".into()));
        }
        let opts = ConnectOptions::new()
            .with_connect_timeout(connect_timeout)
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
            .with_keep_alive_while_idle(true);
        let client =
            match tokio::time::timeout(connect_timeout, Client::connect(endpoints, Some(opts)))
                .await
            {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => return Err(unavailable(e.to_string())),
                Err(_) => {
                    return Err(unavailable(format!(
                        "could not connect within {connect_timeout:?}"
                    )))
                }
            };
        let store = EtcdStore {
            client: Arc::new(client),
            endpoints: endpoints.into(),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        };
        // The client connects lazily: prove that a member answers.
        let mut c = (*store.client).clone();
        match tokio::time::timeout(
            connect_timeout,
            c.get(
                KEY_PREFIX,
                Some(GetOptions::new().with_prefix().with_count_only()),
            ),
        )
        .await
        {
            Ok(Ok(_)) => Ok(store),
            Ok(Err(e)) => Err(unavailable(e.to_string())),
            Err(_) => Err(unavailable(format!(
                "no member answered within {connect_timeout:?}"
            ))),
        }
    }

    /// Bounds every later request (default [`DEFAULT_REQUEST_TIMEOUT`]).
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// The client URLs.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// The underlying client (e.g. for tools and tests that need raw access).
    pub fn client(&self) -> Client {
        (*self.client).clone()
    }

    fn unavailable(&self, reason: String) -> StoreError {
        StoreError::Unavailable {
            endpoints: self.endpoints.join(","),
            reason,
        }
    }

    fn map_err(&self, e: etcd_client::Error) -> StoreError {
        use etcd_client::Error as E;
        match e {
            E::GRpcStatus(s) => {
                let code = s.code() as i32;
                if code == CODE_UNAVAILABLE
                    || code == CODE_DEADLINE_EXCEEDED
                    || code == CODE_CANCELLED
                    || s.message().contains("no leader")
                    || s.message().contains("timed out")
                {
                    self.unavailable(format!("{:?}: {}", s.code(), s.message()))
                } else {
                    StoreError::Backend(format!("{:?}: {}", s.code(), s.message()))
                }
            }
            E::TransportError(t) => self.unavailable(t.to_string()),
            E::IoError(io) => self.unavailable(io.to_string()),
            other => StoreError::Backend(other.to_string()),
        }
    }

    /// Runs one request with the request timeout; `lease` maps "lease not found" errors.
    async fn timed<T>(
        &self,
        lease: Option<i64>,
        fut: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.request_timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                if let Some(id) = lease {
                    if is_lease_not_found(&e) {
                        return Err(StoreError::LeaseExpired(id));
                    }
                }
                Err(self.map_err(e))
            }
            Err(_) => Err(self.unavailable(format!("no answer within {:?}", self.request_timeout))),
        }
    }

    pub(crate) async fn grant_lease(&self, ttl: Duration) -> Result<Lease, StoreError> {
        if ttl.is_zero() {
            return Err(StoreError::InvalidArgument("lease TTL must be > 0".into()));
        }
        let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
        let mut c = (*self.client).clone();
        let resp = self.timed(None, c.lease_grant(secs as i64, None)).await?;
        if !resp.error().is_empty() {
            return Err(StoreError::Backend(format!(
                "lease grant: {}",
                resp.error()
            )));
        }
        Ok(Lease {
            id: resp.id(),
            ttl: Duration::from_secs(resp.ttl().max(1) as u64),
        })
    }

    pub(crate) async fn keep_alive(&self, lease: &Lease) -> Result<(), StoreError> {
        let mut c = (*self.client).clone();
        // etcd-client sends one keep-alive and waits for its answer (ttl <= 0: not found).
        self.timed(Some(lease.id), c.lease_keep_alive(lease.id))
            .await
            .map(|_| ())
    }

    pub(crate) async fn revoke(&self, lease: &Lease) -> Result<(), StoreError> {
        let mut c = (*self.client).clone();
        match self.timed(Some(lease.id), c.lease_revoke(lease.id)).await {
            Ok(_) | Err(StoreError::LeaseExpired(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn put(&self, key: String, value: Vec<u8>, lease: &Lease) -> Result<i64, StoreError> {
        let mut c = (*self.client).clone();
        let resp = self
            .timed(
                Some(lease.id),
                c.put(key, value, Some(PutOptions::new().with_lease(lease.id))),
            )
            .await?;
        Ok(resp.header().map(|h| h.revision()).unwrap_or_default())
    }

    pub(crate) async fn put_host(
        &self,
        host: &HostRecord,
        lease: &Lease,
    ) -> Result<i64, StoreError> {
        let value = encode_host(host)?;
        self.put(host_key(&host.name), value, lease).await
    }

    pub(crate) async fn put_mapping(
        &self,
        rec: &MappingRecord,
        lease: &Lease,
    ) -> Result<i64, StoreError> {
        self.put(mapping_key(rec.sir_address()), encode_mapping(rec), lease)
            .await
    }

    pub(crate) async fn create_mapping(
        &self,
        rec: &MappingRecord,
        lease: &Lease,
    ) -> Result<i64, StoreError> {
        let address = rec.sir_address();
        let key = mapping_key(address);
        let value = encode_mapping(rec);
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.clone(),
                value,
                Some(PutOptions::new().with_lease(lease.id)),
            )])
            .or_else([TxnOp::get(key.clone(), None)]);
        let mut c = (*self.client).clone();
        let resp = self.timed(Some(lease.id), c.txn(txn)).await?;
        if resp.succeeded() {
            return Ok(resp.header().map(|h| h.revision()).unwrap_or_default());
        }
        let owner_endpoint = resp
            .op_responses()
            .into_iter()
            .find_map(|r| match r {
                TxnOpResponse::Get(g) => g
                    .kvs()
                    .first()
                    .map(|kv| records::owner_endpoint(kv.value())),
                _ => None,
            })
            // Deleted between the compare and the get of the same transaction cannot happen;
            // keep a readable answer anyway.
            .unwrap_or_else(|| "<unknown>".to_string());
        Err(StoreError::AddressInUse {
            address,
            owner_endpoint,
        })
    }

    pub(crate) async fn delete_mapping(&self, sir_address: Ipv6Addr) -> Result<i64, StoreError> {
        let mut c = (*self.client).clone();
        let resp = self
            .timed(None, c.delete(mapping_key(sir_address), None))
            .await?;
        Ok(resp.header().map(|h| h.revision()).unwrap_or_default())
    }

    pub(crate) async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let mut c = (*self.client).clone();
        let resp = self
            .timed(
                None,
                c.get(KEY_PREFIX, Some(GetOptions::new().with_prefix())),
            )
            .await?;
        let mut snap = Snapshot {
            revision: resp.header().map(|h| h.revision()).unwrap_or_default(),
            ..Snapshot::default()
        };
        for kv in resp.kvs() {
            records::add_to_snapshot(&mut snap, kv.key(), kv.value());
        }
        Ok(snap)
    }

    pub(crate) async fn compact(&self, revision: i64) -> Result<(), StoreError> {
        let mut c = (*self.client).clone();
        match self
            .timed(
                None,
                c.compact(revision, Some(CompactionOptions::new().with_physical())),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(StoreError::Backend(reason)) if reason.contains("revision") => {
                Err(StoreError::Revision { revision, reason })
            }
            Err(e) => Err(e),
        }
    }

    pub(crate) async fn watch(&self, from_revision: i64) -> Result<EtcdWatch, StoreError> {
        let mut opts = WatchOptions::new().with_prefix();
        if from_revision > 0 {
            opts = opts.with_start_revision(from_revision);
        }
        let mut c = (*self.client).clone();
        let stream = self.timed(None, c.watch(KEY_PREFIX, Some(opts))).await?;
        Ok(EtcdWatch {
            store: self.clone(),
            stream,
            pending: VecDeque::new(),
            done: false,
        })
    }
}

fn is_lease_not_found(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(s) => s.message().contains("lease not found"),
        etcd_client::Error::LeaseKeepAliveError(m) => m.contains("not found"),
        _ => false,
    }
}

/// A watch on etcd: one prefix watch over `/ilanet/v1/`.
pub(crate) struct EtcdWatch {
    store: EtcdStore,
    stream: WatchStream,
    pending: VecDeque<Result<WatchEvent, StoreError>>,
    done: bool,
}

impl fmt::Debug for EtcdWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdWatch")
            .field("endpoints", &self.store.endpoints)
            .field("pending", &self.pending.len())
            .field("done", &self.done)
            .finish()
    }
}

impl EtcdWatch {
    pub(crate) async fn next(&mut self) -> Option<Result<WatchEvent, StoreError>> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                return Some(item);
            }
            if self.done {
                return None;
            }
            let resp = match self.stream.message().await {
                Ok(Some(resp)) => resp,
                Ok(None) => {
                    self.done = true;
                    return Some(Err(self.store.unavailable("watch stream closed".into())));
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(self.store.map_err(e)));
                }
            };
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                let decoded = match ev.event_type() {
                    EventType::Put => decode_put(kv.key(), kv.value()),
                    EventType::Delete => decode_delete(kv.key()),
                };
                match decoded {
                    Ok(Some(event)) => self.pending.push_back(Ok(WatchEvent {
                        revision: kv.mod_revision(),
                        event,
                    })),
                    Ok(None) => {}
                    Err(e) => self.pending.push_back(Err(e)),
                }
            }
            if resp.canceled() {
                self.done = true;
                if resp.compact_revision() > 0 {
                    self.pending.push_back(Ok(WatchEvent {
                        revision: resp.compact_revision(),
                        event: StoreEvent::Resync,
                    }));
                } else {
                    let reason = format!("watch canceled by the server: {}", resp.cancel_reason());
                    self.pending.push_back(Err(self.store.unavailable(reason)));
                }
            }
        }
    }
}
