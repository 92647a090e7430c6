//! The etcd v3 backend.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::net::Ipv6Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{
    Certificate, Client, CompactionOptions, Compare, CompareOp, ConnectOptions, EventType,
    GetOptions, Identity, PutOptions, TlsOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
    WatchStream,
};

use crate::records::{
    self, check_value_size, decode_delete, decode_put, encode_host, encode_identity,
    encode_identity_index, encode_mapping, encode_policy, host_key, identity_key,
    identity_labels_key, mapping_key, next_identity_candidate, policy_key,
};
use crate::{
    HostRecord, IdentityRecord, Lease, MappingRecord, PolicyRecord, Snapshot, StoreError,
    StoreEvent, WatchEvent, HOSTS_PREFIX, IDENTITY_PROBES, KEY_PREFIX,
};

/// Default bound on one request (also used by [`crate::Store::connect`]).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
const RETRY_BACKOFF: Duration = Duration::from_millis(20);
/// The largest response the client decodes: etcd's own bound on what it sends (`MaxInt32`). A
/// snapshot holds every value (each up to [`crate::MAX_VALUE_BYTES`]); tonic's default of 4 MiB
/// would refuse one large policy.
const MAX_RESPONSE_BYTES: usize = i32::MAX as usize;

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
        Self::connect_tls(endpoints, connect_timeout, None).await
    }

    /// [`EtcdStore::connect`] with a client certificate (etcd's `--client-cert-auth`: the
    /// certificate's CN is the etcd user). Unreadable files are [`StoreError::InvalidArgument`]
    /// naming the file.
    pub async fn connect_tls(
        endpoints: &[String],
        connect_timeout: Duration,
        tls: Option<&crate::pki::ClientTls>,
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
            // HTTP/2 pings detect dead connections under long watches. etcd's server rejects
            // pings more frequent than --grpc-keepalive-min-time (5 s) with GOAWAY, and pings
            // without open streams: hence 10 s, and not while idle.
            .with_keep_alive(KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT);
        let opts = match tls {
            None => opts,
            Some(t) => opts.with_tls(tls_options(t)?),
        };
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
        match store
            .call_within(connect_timeout, None, |mut c| async move {
                c.get(
                    KEY_PREFIX,
                    Some(GetOptions::new().with_prefix().with_count_only()),
                )
                .await
            })
            .await
        {
            Ok(_) => Ok(store),
            Err(StoreError::Unavailable { reason, .. }) => Err(unavailable(reason)),
            Err(e) => Err(unavailable(e.to_string())),
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
                    || s.message().contains("leader changed")
                    || s.message().contains("timed out")
                    // A connection to a member that died mid-request surfaces as "Unknown".
                    || s.message().contains("transport error")
                    || s.message().contains("h2 protocol error")
                    || s.message().contains("connection reset")
                {
                    self.unavailable(format!("{:?}: {}", s.code(), s.message()))
                } else if s.message().contains("request is too large")
                    || s.message().contains("larger than max")
                {
                    // An etcd started without a large enough --max-request-bytes.
                    StoreError::Backend(format!(
                        "{:?}: {} (etcd needs --max-request-bytes of at least {} for \
                         ilanet's value limit of {} bytes)",
                        s.code(),
                        s.message(),
                        crate::ETCD_MAX_REQUEST_BYTES,
                        crate::MAX_VALUE_BYTES
                    ))
                } else if s.message().contains("permission denied") {
                    StoreError::Backend(format!(
                        "{:?}: {} (with client certificates, the certificate's CN is the etcd \
                         user; a host's role may write only /ilanet/v1/hosts/<its name>/ and \
                         the shared identity keys; policies only the policy administrator, \
                         user ilanet-policy-admin)",
                        s.code(),
                        s.message()
                    ))
                } else {
                    StoreError::Backend(format!("{:?}: {}", s.code(), s.message()))
                }
            }
            E::TransportError(t) => self.unavailable(t.to_string()),
            E::IoError(io) => self.unavailable(io.to_string()),
            other => StoreError::Backend(other.to_string()),
        }
    }

    /// Runs one request, bounded by the request timeout; see [`Self::call_within`].
    async fn call<T, F, Fut>(&self, lease: Option<i64>, f: F) -> Result<T, StoreError>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        self.call_within(self.request_timeout, lease, f).await
    }

    /// Runs one request within `timeout`. The client balances over all endpoints but does not
    /// fail over: a request routed to a dead member fails with a connect error. Such a request
    /// was never sent, so it is retried (another member is picked) until the timeout. `lease`
    /// turns "lease not found" into [`StoreError::LeaseExpired`].
    async fn call_within<T, F, Fut>(
        &self,
        timeout: Duration,
        lease: Option<i64>,
        mut f: F,
    ) -> Result<T, StoreError>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = Instant::now() + timeout;
        let mut attempt: u32 = 0;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(remaining, f((*self.client).clone())).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) => {
                    if let Some(id) = lease {
                        if is_lease_not_found(&e) {
                            return Err(StoreError::LeaseExpired(id));
                        }
                    }
                    attempt += 1;
                    let backoff = RETRY_BACKOFF * attempt.min(10);
                    if not_sent(&e) && Instant::now() + backoff < deadline {
                        log::debug!("etcd: request not sent ({e}), retrying");
                        tokio::time::sleep(backoff).await;
                        continue;
                    }
                    return Err(self.map_err(e));
                }
                Err(_) => {
                    return Err(self.unavailable(format!("no answer within {timeout:?}")));
                }
            }
        }
    }

    pub(crate) async fn grant_lease(&self, ttl: Duration) -> Result<Lease, StoreError> {
        if ttl.is_zero() {
            return Err(StoreError::InvalidArgument("lease TTL must be > 0".into()));
        }
        let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
        let resp = self
            .call(None, |mut c| async move {
                c.lease_grant(secs as i64, None).await
            })
            .await?;
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
        let id = lease.id;
        // etcd-client sends one keep-alive and waits for its answer (ttl <= 0: not found);
        // dropping the keeper and stream ends that gRPC stream.
        self.call(
            Some(id),
            |mut c| async move { c.lease_keep_alive(id).await },
        )
        .await
        .map(|_| ())
    }

    pub(crate) async fn revoke(&self, lease: &Lease) -> Result<(), StoreError> {
        let id = lease.id;
        match self
            .call(Some(id), |mut c| async move { c.lease_revoke(id).await })
            .await
        {
            Ok(_) | Err(StoreError::LeaseExpired(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn put(&self, key: String, value: Vec<u8>, lease: &Lease) -> Result<i64, StoreError> {
        check_value_size(&key, &value)?;
        let id = lease.id;
        let resp = self
            .call(Some(id), |mut c| {
                let (key, value) = (key.clone(), value.clone());
                async move {
                    c.put(key, value, Some(PutOptions::new().with_lease(id)))
                        .await
                }
            })
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
        let value = encode_mapping(rec)?;
        self.put(mapping_key(&rec.host, rec.sir_address()), value, lease)
            .await
    }

    pub(crate) async fn create_mapping(
        &self,
        rec: &MappingRecord,
        lease: &Lease,
    ) -> Result<i64, StoreError> {
        let address = rec.sir_address();
        let key = mapping_key(&rec.host, address);
        let value = encode_mapping(rec)?;
        check_value_size(&key, &value)?;
        // Another host's mapping of the address (keys only). Not atomic with the create below:
        // two hosts creating the same address at once both succeed, and every agent then
        // installs neither (an ambiguous address) until one lets go.
        let others = self
            .call(None, |mut c| async move {
                c.get(
                    HOSTS_PREFIX,
                    Some(GetOptions::new().with_prefix().with_keys_only()),
                )
                .await
            })
            .await?;
        if let Some(kv) = others.kvs().iter().find(|kv| {
            records::key_str(kv.key())
                .ok()
                .and_then(records::mapping_key_sir)
                == Some(address)
        }) {
            let other_key = kv.key().to_vec();
            let owner = self
                .call(None, |mut c| {
                    let k = other_key.clone();
                    async move { c.get(k, None).await }
                })
                .await?;
            return Err(StoreError::AddressInUse {
                address,
                owner_endpoint: owner
                    .kvs()
                    .first()
                    .map(|kv| records::owner_endpoint(kv.value()))
                    .unwrap_or_else(|| "<deleted meanwhile>".to_string()),
            });
        }
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.clone(),
                value,
                Some(PutOptions::new().with_lease(lease.id)),
            )])
            .or_else([TxnOp::get(key.clone(), None)]);
        let resp = self
            .call(Some(lease.id), |mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await?;
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

    pub(crate) async fn delete_mapping(
        &self,
        host: &str,
        sir_address: Ipv6Addr,
    ) -> Result<i64, StoreError> {
        let key = mapping_key(host, sir_address);
        let resp = self
            .call(None, |mut c| {
                let key = key.clone();
                async move { c.delete(key, None).await }
            })
            .await?;
        Ok(resp.header().map(|h| h.revision()).unwrap_or_default())
    }

    async fn txn(&self, txn: Txn) -> Result<etcd_client::TxnResponse, StoreError> {
        self.call(None, |mut c| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        })
        .await
    }

    pub(crate) async fn allocate_identity(
        &self,
        labels: &str,
        first: u32,
    ) -> Result<u32, StoreError> {
        let index_key = identity_labels_key(labels);
        let mut id = first;
        let mut probes: u32 = 1;
        // Each round either settles or moves on, except when another writer changes the
        // candidate between two of our transactions: bound those too.
        for _ in 0..2 * IDENTITY_PROBES + 8 {
            let key = identity_key(id);
            let rec = IdentityRecord {
                id,
                labels: labels.to_string(),
            };
            let value = encode_identity(&rec)?;
            check_value_size(&key, &value)?;
            // Create both keys only if neither exists; else read both, in the same revision.
            let txn = Txn::new()
                .when([
                    Compare::create_revision(index_key.clone(), CompareOp::Equal, 0),
                    Compare::create_revision(key.clone(), CompareOp::Equal, 0),
                ])
                .and_then([
                    TxnOp::put(key.clone(), value, None),
                    TxnOp::put(index_key.clone(), encode_identity_index(id), None),
                ])
                .or_else([
                    TxnOp::get(index_key.clone(), None),
                    TxnOp::get(key.clone(), None),
                ]);
            let resp = self.txn(txn).await?;
            if resp.succeeded() {
                return Ok(id);
            }
            let mut gets = resp.op_responses().into_iter().map(|r| match r {
                TxnOpResponse::Get(g) => g
                    .kvs()
                    .first()
                    .map(|kv| (kv.value().to_vec(), kv.mod_revision())),
                _ => None,
            });
            let (index, record) = (gets.next().flatten(), gets.next().flatten());
            if let Some((value, _)) = index {
                // Allocated before (or by the racer that won): the index is authoritative, once
                // the record it names agrees.
                let found = records::decode_identity_index(&index_key, &value)?;
                if found == id {
                    let value = record.map(|(v, _)| v);
                    return records::check_index_target(&index_key, labels, id, value.as_deref());
                }
                let target = identity_key(found);
                let resp = self
                    .call(None, |mut c| {
                        let k = target.clone();
                        async move { c.get(k, None).await }
                    })
                    .await?;
                let value = resp.kvs().first().map(|kv| kv.value().to_vec());
                return records::check_index_target(&index_key, labels, found, value.as_deref());
            }
            match record {
                Some((value, mod_revision))
                    if records::identity_labels_of(id, &value).as_deref() == Ok(labels) =>
                {
                    // The record exists without its index (written by hand, or half-deleted):
                    // adopt it, unless it changes meanwhile (then look again).
                    let txn = Txn::new()
                        .when([
                            Compare::create_revision(index_key.clone(), CompareOp::Equal, 0),
                            Compare::mod_revision(key.clone(), CompareOp::Equal, mod_revision),
                        ])
                        .and_then([TxnOp::put(
                            index_key.clone(),
                            encode_identity_index(id),
                            None,
                        )]);
                    if self.txn(txn).await?.succeeded() {
                        return Ok(id);
                    }
                }
                Some(_) => {
                    // Taken by another label set (or a malformed record): next candidate.
                    if probes >= IDENTITY_PROBES {
                        return Err(StoreError::IdentitiesExhausted {
                            labels: labels.to_string(),
                            first,
                            probes,
                        });
                    }
                    probes += 1;
                    id = next_identity_candidate(id);
                }
                // Deleted since the compare of the same transaction cannot happen; look again.
                None => {}
            }
        }
        Err(StoreError::Backend(format!(
            "identity allocation for labels {labels:?} did not settle (concurrent changes)"
        )))
    }

    pub(crate) async fn put_policy(&self, policy: &PolicyRecord) -> Result<i64, StoreError> {
        let key = policy_key(&policy.name);
        let value = encode_policy(policy)?;
        check_value_size(&key, &value)?;
        let resp = self
            .call(None, |mut c| {
                let (key, value) = (key.clone(), value.clone());
                async move { c.put(key, value, None).await }
            })
            .await?;
        Ok(resp.header().map(|h| h.revision()).unwrap_or_default())
    }

    pub(crate) async fn delete_policy(&self, name: &str) -> Result<i64, StoreError> {
        let key = policy_key(name);
        let resp = self
            .call(None, |mut c| {
                let key = key.clone();
                async move { c.delete(key, None).await }
            })
            .await?;
        if resp.deleted() == 0 {
            return Err(StoreError::NotFound {
                kind: "policy".into(),
                name: name.to_string(),
            });
        }
        Ok(resp.header().map(|h| h.revision()).unwrap_or_default())
    }

    pub(crate) async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let resp = self
            .call(None, |c| async move {
                c.kv_client()
                    .max_decoding_message_size(MAX_RESPONSE_BYTES)
                    .get(KEY_PREFIX, Some(GetOptions::new().with_prefix()))
                    .await
            })
            .await?;
        let mut snap = Snapshot {
            revision: resp.header().map(|h| h.revision()).unwrap_or_default(),
            ..Snapshot::default()
        };
        for kv in resp.kvs() {
            records::add_to_snapshot(&mut snap, kv.key(), kv.value());
        }
        records::finish_snapshot(&mut snap);
        Ok(snap)
    }

    pub(crate) async fn compact(&self, revision: i64) -> Result<(), StoreError> {
        match self
            .call(None, |mut c| async move {
                c.compact(revision, Some(CompactionOptions::new().with_physical()))
                    .await
            })
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
        let stream = self
            .call(None, |c| {
                let opts = opts.clone();
                async move {
                    c.watch_client()
                        .max_decoding_message_size(MAX_RESPONSE_BYTES)
                        .watch(KEY_PREFIX, Some(opts))
                        .await
                }
            })
            .await?;
        Ok(EtcdWatch {
            store: self.clone(),
            stream,
            pending: VecDeque::new(),
            done: false,
        })
    }
}

/// The client TLS configuration of certificate files.
fn tls_options(t: &crate::pki::ClientTls) -> Result<TlsOptions, StoreError> {
    let read = |path: &std::path::Path, what: &str| {
        std::fs::read(path).map_err(|e| {
            StoreError::InvalidArgument(format!("etcd {what} {}: {e}", path.display()))
        })
    };
    let ca = read(&t.ca, "CA certificate")?;
    let cert = read(&t.cert, "client certificate")?;
    let key = read(&t.key, "client key")?;
    Ok(TlsOptions::new()
        .ca_certificate(Certificate::from_pem(ca))
        .identity(Identity::from_pem(cert, key)))
}

/// Errors that mean the request never reached a member (safe to retry on another one).
fn not_sent(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            s.code() as i32 == CODE_UNAVAILABLE
                && (s.message().contains("tcp connect error")
                    || s.message().contains("onnection refused")
                    || s.message().contains("error trying to connect"))
        }
        etcd_client::Error::TransportError(_) => true,
        _ => false,
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
