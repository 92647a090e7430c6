//! The ilanet mapping store: one API ([`Store`]), two backends.
//!
//! * [`EmbeddedStore`] — in-process, no external service. The demo and the lab run every site's
//!   agent in one process and share one `EmbeddedStore` (it is `Clone + Send + Sync`; clones share
//!   the data). It has etcd's semantics: one global revision counter, leases with a TTL that
//!   expire unless kept alive (a background thread reaps them, and every call checks first), and
//!   watches from a revision with a history bounded by events and by bytes
//!   ([`DEFAULT_HISTORY`], [`DEFAULT_HISTORY_BYTES`]; older revisions yield
//!   [`StoreEvent::Resync`]). [`EmbeddedStore::open`]`(dir)` persists it to a data directory,
//!   so that a restarted agent finds its state before it touches the maps:
//!   * `dir/LOCK` — `flock`ed while open (a second open fails with [`StoreError::DataDir`]);
//!   * `dir/wal` — every committed change, one CRC-32-checked record each, fsync'd before the
//!     call returns; a torn last record (crash mid-write) is dropped on load, damage before the
//!     end is an error naming the file and the offset;
//!   * `dir/snapshot` — the whole state, replaced atomically (temp file, fsync, rename, fsync of
//!     the directory) when the log outgrows [`DEFAULT_LOG_COMPACT_BYTES`] (or the snapshot).
//!
//!   Reopening restores keys, leases, the revision and the compaction point; each lease gets its
//!   full TTL again from the load (as etcd after a restart). [`EmbeddedStore::new`] is the
//!   in-memory store (tests, benches).
//! * [`EtcdStore`] — a real etcd v3 cluster through the `etcd-client` crate. Every request is
//!   bounded ([`DEFAULT_REQUEST_TIMEOUT`], see [`EtcdStore::with_request_timeout`]); a request
//!   that could not reach a member (connection refused: a dead member among live ones) is
//!   retried on another member within that bound — it was never sent, so even `create_mapping`
//!   is safe to retry. Other failures are returned as [`StoreError::Unavailable`] naming the
//!   endpoints; the caller decides whether to retry.
//!
//! [`etcd_cluster`] starts real `etcd` processes (Debian `etcd-server`) for tests and for
//! `ilanet lab up --store etcd`.
//!
//! **Value size**: one limit for both backends, [`MAX_VALUE_BYTES`] (16 MiB) per encoded
//! record, checked before the write ([`StoreError::TooLarge`], naming the key and the limit).
//! etcd refuses requests above its `--max-request-bytes` (default 1.5 MiB): **an etcd of your own
//! needs `--max-request-bytes` of at least [`ETCD_MAX_REQUEST_BYTES`]** (17 MiB) for large
//! policies ([`etcd_cluster`] starts its members so). The client accepts responses up to 2 GiB.
//!
//! Build and test needs: `protobuf-compiler` (for `etcd-client`), `etcd-server` (tests and
//! `etcd_cluster`), `etcd-client` (`etcdctl`, for humans).
//!
//! # Key layout (both backends)
//!
//! Everything lives under `/ilanet/v1/`; values are JSON.
//!
//! | key | value | lease |
//! |---|---|---|
//! | `/ilanet/v1/hosts/<host-name>/host` | [`HostRecord`] | the owning agent's lease |
//! | `/ilanet/v1/hosts/<host-name>/mappings/<sir-address>` | [`MappingRecord`] | the owning agent's lease |
//! | `/ilanet/v1/identities/<id>` | [`IdentityRecord`] | none (global) |
//! | `/ilanet/v1/identity-labels/<escaped labels>` | the id, a JSON number | none (global) |
//! | `/ilanet/v1/policies/<name>` | [`PolicyRecord`] | none (global) |
//!
//! Everything one host writes is under its own prefix `/ilanet/v1/hosts/<host-name>/`
//! ([`host_prefix`]), so that etcd's key-range permissions can give each host write access to
//! its own records only (see *Security* below). `<sir-address>` is the canonical (RFC 5952, as
//! `Ipv6Addr`'s `Display` prints it) text form of the SIR address, e.g.
//! `/ilanet/v1/hosts/site-a/mappings/2001:db8:ff::3000:1:0:2`. A record whose key does not
//! match its body (another address, **another host name than the prefix's**, a non-canonical
//! address) is treated as malformed, so a mapping found under host B's prefix is always B's.
//! Example values:
//!
//! ```json
//! {"endpoint":"web-1","host":"site-a","sir":"2001:db8:ff::/64","identifier":"3000:1:0:2",
//!  "locator":"2001:db8:1:1::/64","mode":"neutral-map","identity":4242}
//! {"name":"site-a","locator":"2001:db8:1:1::/64","underlay":"fd00::a"}
//! {"id":4242,"labels":"app=web,io.ilanet.tenant=1"}
//! {"name":"allow-web","document":"{\"ingress\":[]}"}
//! ```
//!
//! **Migration from the layout before per-host prefixes** (`/ilanet/v1/mappings/<sir>` and
//! `/ilanet/v1/hosts/<host-name>`): records at the old keys are skipped with a warning naming
//! the key ([`Snapshot::skipped`]), never used. They hold no state of their own: every agent
//! publishes its host record and mappings again under its prefix when it (re)connects, and the
//! old keys go with the old leases (an etcd of your own: `etcdctl del --prefix
//! /ilanet/v1/mappings/` once every agent runs the new release). Identities and policies keep
//! their keys.
//!
//! **The same address from two hosts.** Each host writes only its own keys, so two hosts can
//! hold a mapping of the same SIR address (a move in progress, a race, or a host claiming an
//! address that is not its own). [`Store::create_mapping`] refuses an address that any host
//! holds ([`StoreError::AddressInUse`]; not atomic across hosts on etcd), and an agent that
//! sees two hosts claim one address installs neither (it names both keys in its log) until one
//! lets go: no host can take over another host's live address.
//!
//! A mapping's `identity` is the endpoint's security identity (0 = unknown; records written
//! before identities existed decode with 0).
//!
//! **Identities** ([`Store::allocate_identity`]) are numbers from [`MIN_ALLOCATED_IDENTITY`]
//! (256) up to, not including, [`IDENTITY_LIMIT`] (2^24), each standing for one label set, the
//! same on every host. `<id>` is the decimal number (canonical: no leading zeros). The
//! index key `identity-labels/…` maps a label set back to its id; `<escaped labels>` is the label
//! string with every byte outside `[A-Za-z0-9._=,:-]` written `%XX` ([`identity_labels_key`]),
//! e.g. `/ilanet/v1/identity-labels/app=web,io.ilanet.tenant=1` → `4242`. Both keys are created
//! in one transaction guarded by `create_revision == 0` on both, so the index is authoritative.
//! Identities have no lease and are **never deleted: garbage collection of unused identities is
//! out of scope** (a deletion made by hand is not reported to watches). Watches report the
//! identity record ([`StoreEvent::PutIdentity`]), not the index key.
//!
//! **Policies** are stored verbatim (`document` is JSON text; the store only checks that it is
//! valid JSON). `<name>` is 1 to 253 characters of `[a-z0-9.-]`. No lease: a policy stays until
//! [`Store::delete_policy`].
//!
//! Other keys under `/ilanet/v1/` are ignored (reserved for later record kinds). Each agent holds
//! one lease; when the agent (host) dies, the lease expires and etcd deletes its mappings and its
//! host record, which watchers see as delete events.
//!
//! # Security (etcd)
//!
//! The default with etcd is TLS with client certificates and etcd auth ([`etcd_cluster`]
//! starts such clusters, [`pki`] makes the certificates, [`access`] defines the roles): the
//! certificate's CN is the etcd user; host `H` may write `/ilanet/v1/hosts/H/` and the shared
//! identity prefixes, and read all of `/ilanet/v1/`; policies are written only by the policy
//! administrator ([`pki::POLICY_ADMIN_USER`]). Threat model, briefly:
//!
//! * **Anyone without a certificate of the cluster's CA** (another local user, a process on the
//!   network) cannot connect at all: no reads, no writes.
//! * **A compromised host** cannot write, delete or revoke the lease of another host's host
//!   record or mappings (etcd refuses with `permission denied`), so it cannot redirect traffic
//!   meant for another host's endpoints. A mapping it writes under its own prefix must name it
//!   as the host (else every agent skips it by key); agents also skip a mapping whose locator
//!   is not the one its host's record announces, and install no address two hosts claim.
//!   It cannot write policies (read-only for hosts). It can write identities (allocation is
//!   every host's job, and etcd roles cannot enforce create-only), but that cannot relabel
//!   another host's endpoints: each mapping carries the SHA-256 of its endpoint's identity
//!   labels as its own host gave them ([`MappingRecord::labels_sha256`]), agents install
//!   another host's mapping only if the identity record's labels have that digest, an agent
//!   refuses an identity record that contradicts its own endpoints' labels, and
//!   [`Store::allocate_identity`] refuses an index entry whose identity record holds other
//!   labels (an error naming the key). What it can still do, and what limits it: claim free
//!   addresses for itself (it runs containers; that is its job); make an address it also
//!   claims unusable, or make other hosts' endpoints unreachable by rewriting their identity
//!   records (denials of service, fail closed, logged by key at every agent); compact the
//!   history (etcd 3.4 lets any user compact; watchers then list again).
//! * **`root`** (the lab's administrator certificate) may do everything.
//!
//! Without TLS and auth (`--insecure-store`), anyone who reaches etcd may write anything.
//!
//! # Malformed records
//!
//! Malformed records are never fatal. [`Store::snapshot`] skips them and names them in
//! [`Snapshot::skipped`]. A [`Watch`] yields `Some(Err(StoreError::Malformed { key, .. }))` for
//! such an event **and continues**: [`StoreError::ends_watch`] is `false` for `Malformed`, `true`
//! for everything else (after which `next` returns `None`).
//!
//! # Watch semantics
//!
//! [`Store::watch`]`(r)` yields every change with revision `>= r`, in revision order (`r <= 0`:
//! from now on). Several events may share one revision (a lease expiry deletes all the lease's
//! keys in one revision). If the history no longer holds revision `r` (compacted), the first item
//! is a [`StoreEvent::Resync`] and the stream ends: list again ([`Store::snapshot`]) and watch from
//! `snapshot.revision + 1`.

#![deny(missing_docs)]

pub mod access;
mod embedded;
mod etcd;
pub mod etcd_cluster;
mod persist;
pub mod pki;
mod records;

use std::net::Ipv6Addr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use embedded::{
    EmbeddedOptions, EmbeddedStats, EmbeddedStore, ManualClock, DEFAULT_HISTORY,
    DEFAULT_HISTORY_BYTES, DEFAULT_LOG_COMPACT_BYTES,
};
pub use etcd::{EtcdStore, DEFAULT_REQUEST_TIMEOUT};
pub use records::{
    decode_record, host_key, host_prefix, identity_first_candidate, identity_key,
    identity_labels_key, mapping_key, policy_key, ETCD_MAX_REQUEST_BYTES, HOSTS_PREFIX,
    IDENTITIES_PREFIX, IDENTITY_LABELS_PREFIX, IDENTITY_LIMIT, IDENTITY_PROBES, KEY_PREFIX,
    LEGACY_MAPPINGS_PREFIX, MAX_KEY_BYTES, MAX_LABELS_LEN, MAX_POLICY_NAME_LEN, MAX_VALUE_BYTES,
    MIN_ALLOCATED_IDENTITY, POLICIES_PREFIX,
};

/// Where a container's SIR address is reachable: published by the agent of the host that runs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MappingRecord {
    /// The endpoint (container attachment) name.
    pub endpoint: String,
    /// The host that runs the endpoint.
    pub host: String,
    /// The tenant network's SIR prefix.
    pub sir: ila::SirPrefix,
    /// The endpoint's identifier (low 64 bits of its SIR address).
    pub identifier: ila::Identifier,
    /// The locator of the host that runs the endpoint.
    pub locator: ila::Locator,
    /// The checksum mode of this mapping.
    #[serde(default)]
    pub mode: ila::ChecksumMode,
    /// The endpoint's numeric security identity ([`Store::allocate_identity`]); 0 = unknown
    /// (also what records written before identities existed decode to).
    #[serde(default)]
    pub identity: u32,
    /// SHA-256 of the canonical identity label string the endpoint's host gave the endpoint
    /// ([`LabelsDigest::of`]): other hosts install the mapping only if the identity record of
    /// `identity` has these labels, so rewriting an identity record (which every host may
    /// write) cannot relabel another host's endpoints. Absent for identity 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels_sha256: Option<LabelsDigest>,
}

/// SHA-256 of an identity's canonical label string; written as 64 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LabelsDigest(pub [u8; 32]);

impl LabelsDigest {
    /// The digest of `labels` (the canonical string of [`IdentityRecord::labels`]).
    pub fn of(labels: &str) -> Self {
        let d = ring::digest::digest(&ring::digest::SHA256, labels.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        LabelsDigest(out)
    }
}

impl std::fmt::Display for LabelsDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl std::str::FromStr for LabelsDigest {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let hex = s.as_bytes();
        let digit = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        if hex.len() != 64 {
            return Err(format!(
                "a labels digest is 64 lowercase hex digits, not {} characters",
                s.len()
            ));
        }
        let mut out = [0u8; 32];
        for (i, pair) in hex.chunks_exact(2).enumerate() {
            match (digit(pair[0]), digit(pair[1])) {
                (Some(h), Some(l)) => out[i] = h << 4 | l,
                _ => return Err(format!("labels digest {s:?}: not lowercase hex")),
            }
        }
        Ok(LabelsDigest(out))
    }
}

impl Serialize for LabelsDigest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for LabelsDigest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl MappingRecord {
    /// The SIR address (SIR prefix + identifier): the key of this record.
    pub fn sir_address(&self) -> Ipv6Addr {
        self.sir.with_identifier(self.identifier)
    }

    /// The ILA mapping for the data path.
    pub fn mapping(&self) -> ila::Mapping {
        ila::Mapping::new(self.sir, self.identifier, self.locator, self.mode)
    }
}

/// A host (site) of the network: its name, locator and underlay address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    /// Host name, unique in the network (no `/`).
    pub name: String,
    /// The host's locator; it owns `locator::/64`.
    pub locator: ila::Locator,
    /// The host's underlay address.
    pub underlay: Ipv6Addr,
}

/// A security identity: a number standing for one label set, the same on every host.
/// Allocated with [`Store::allocate_identity`]; never deleted (no lease, no GC yet).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct IdentityRecord {
    /// The identity, in `[MIN_ALLOCATED_IDENTITY, IDENTITY_LIMIT)`.
    pub id: u32,
    /// The canonical (sorted) label-set string, e.g. `app=web,io.ilanet.tenant=1`. Opaque to
    /// the store: non-empty, no newline, at most [`MAX_LABELS_LEN`] bytes.
    pub labels: String,
}

/// A network policy, stored as given. The store checks only that `document` is valid JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRecord {
    /// The policy name: 1 to [`MAX_POLICY_NAME_LEN`] characters of `[a-z0-9.-]`.
    pub name: String,
    /// The policy as JSON text (kept verbatim).
    pub document: String,
}

/// A lease: records attached to it are deleted when it expires or is revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// Lease id (as etcd prints it in decimal; `etcdctl` shows hex).
    pub id: i64,
    /// Granted time to live (etcd: whole seconds, at least the server's minimum).
    pub ttl: Duration,
}

/// A change seen by a [`Watch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreEvent {
    /// A mapping was created or overwritten.
    PutMapping(MappingRecord),
    /// The mapping of this SIR address that `host` published was deleted (explicitly or by
    /// lease expiry). Another host's mapping of the same address, if any, stays.
    DeleteMapping {
        /// The host whose record it was (the prefix it was stored under).
        host: String,
        /// The SIR address.
        sir: Ipv6Addr,
    },
    /// A host record was created or overwritten.
    PutHost(HostRecord),
    /// The host record of this name was deleted.
    DeleteHost(String),
    /// An identity was allocated. (Identities are never deleted by ilanet; a manual deletion is
    /// not reported.)
    PutIdentity(IdentityRecord),
    /// A policy was created or overwritten.
    PutPolicy(PolicyRecord),
    /// The policy of this name was deleted.
    DeletePolicy(String),
    /// The watch cannot continue from where it is (history compacted, or it fell behind): list
    /// again and watch from the new snapshot's revision + 1. The stream ends after this event.
    Resync,
}

/// One [`StoreEvent`] with the store revision at which it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    /// Store revision of the change (for `Resync`: the compaction revision, or the revision the
    /// watch had reached).
    pub revision: i64,
    /// The change.
    pub event: StoreEvent,
}

/// The whole store content at one revision.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snapshot {
    /// The revision of this snapshot: watch from `revision + 1` to see every later change.
    pub revision: i64,
    /// All well-formed mappings, ordered by key.
    pub mappings: Vec<MappingRecord>,
    /// All well-formed host records, ordered by key.
    pub hosts: Vec<HostRecord>,
    /// All well-formed identities, ordered by number.
    pub identities: Vec<IdentityRecord>,
    /// All well-formed policies, ordered by name.
    pub policies: Vec<PolicyRecord>,
    /// Records that could not be decoded (never fatal).
    pub skipped: Vec<SkippedRecord>,
}

/// A record that a snapshot skipped because it is malformed or foreign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedRecord {
    /// The record's key.
    pub key: String,
    /// Why it was skipped.
    pub error: String,
}

/// Errors of the mapping store.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The store did not answer (connection refused, timeout, no leader, stream broken).
    #[error("mapping store unavailable at {endpoints}: {reason}")]
    Unavailable {
        /// The endpoints tried, comma-separated.
        endpoints: String,
        /// What went wrong.
        reason: String,
    },
    /// The lease has expired, was revoked, or never existed.
    #[error("lease {0} has expired or does not exist")]
    LeaseExpired(i64),
    /// `create_mapping` found an existing mapping for that SIR address.
    #[error("address {address} is already in use by endpoint {owner_endpoint}")]
    AddressInUse {
        /// The SIR address.
        address: Ipv6Addr,
        /// The endpoint of the existing mapping (`<malformed record>` if it cannot be decoded).
        owner_endpoint: String,
    },
    /// A record under the ilanet prefix cannot be decoded. In a watch this item does not end the
    /// stream.
    #[error("malformed record at {key}: {reason}")]
    Malformed {
        /// The record's key.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The caller passed something the store cannot hold (e.g. a host name with `/`).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The record to delete does not exist.
    #[error("{kind} {name:?} not found")]
    NotFound {
        /// The record kind (`policy`).
        kind: String,
        /// Its name.
        name: String,
    },
    /// [`Store::allocate_identity`] found every candidate taken by other label sets.
    #[error("no free identity for labels {labels:?}: {probes} candidates from {first} are taken")]
    IdentitiesExhausted {
        /// The label set.
        labels: String,
        /// The first candidate tried.
        first: u32,
        /// How many candidates were tried.
        probes: u32,
    },
    /// Compaction: the revision is already compacted or in the future.
    #[error("revision {revision} cannot be used: {reason}")]
    Revision {
        /// The revision asked for.
        revision: i64,
        /// Why not.
        reason: String,
    },
    /// A value is larger than [`MAX_VALUE_BYTES`] (refused before the write, by both
    /// backends).
    #[error(
        "value of {key} is {size} bytes, over the store's limit of {limit} bytes \
         (store::MAX_VALUE_BYTES)"
    )]
    TooLarge {
        /// The key that was to be written.
        key: String,
        /// The encoded value's size.
        size: usize,
        /// The limit ([`MAX_VALUE_BYTES`]).
        limit: usize,
    },
    /// The embedded store's data directory cannot be used: locked by another process,
    /// unreadable, corrupt (the reason names the file and the offset), or a write failed.
    #[error("embedded store data directory {}: {reason}", path.display())]
    DataDir {
        /// The directory, or the file in it, concerned.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Any other error of the backend.
    #[error("mapping store error: {0}")]
    Backend(String),
}

impl StoreError {
    /// Whether this error, yielded by [`Watch::next`], ends the stream (`true` for everything but
    /// [`StoreError::Malformed`]). After an ending error, list again and watch again.
    pub fn ends_watch(&self) -> bool {
        !matches!(self, StoreError::Malformed { .. })
    }
}

/// How to reach a store.
#[derive(Debug, Clone)]
pub enum StoreConfig {
    /// Use (share) this in-process store.
    Embedded(EmbeddedStore),
    /// Connect to an etcd cluster.
    Etcd {
        /// Client URLs, e.g. `http://127.0.0.1:2379`.
        endpoints: Vec<String>,
        /// Bound on connecting (and on the first request that checks the connection).
        connect_timeout: Duration,
        /// Client certificate, key and CA (`https://` endpoints); `None`: no TLS, no
        /// credentials (an etcd without auth: anyone who reaches it may write anything).
        tls: Option<pki::ClientTls>,
    },
}

/// A connected mapping store (cheap to clone; clones share the connection).
#[derive(Debug, Clone)]
pub enum Store {
    /// In-process backend.
    Embedded(EmbeddedStore),
    /// etcd backend.
    Etcd(EtcdStore),
}

macro_rules! dispatch {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            Store::Embedded($s) => $e,
            Store::Etcd($s) => $e,
        }
    };
}

impl Store {
    /// Connects (one attempt). For etcd, this also checks that a member answers within the
    /// connect timeout; errors name the endpoints.
    pub async fn connect(cfg: &StoreConfig) -> Result<Store, StoreError> {
        match cfg {
            StoreConfig::Embedded(s) => Ok(Store::Embedded(s.clone())),
            StoreConfig::Etcd {
                endpoints,
                connect_timeout,
                tls,
            } => Ok(Store::Etcd(
                EtcdStore::connect_tls(endpoints, *connect_timeout, tls.as_ref()).await?,
            )),
        }
    }

    /// A human-readable description of the backend (`embedded`, `etcd http://…`).
    pub fn describe(&self) -> String {
        match self {
            Store::Embedded(s) => match s.data_dir() {
                Some(dir) => format!("embedded {}", dir.display()),
                None => "embedded".to_string(),
            },
            Store::Etcd(s) => format!("etcd {}", s.endpoints().join(",")),
        }
    }

    /// Grants a lease with this TTL (etcd rounds up to whole seconds, at least its minimum).
    pub async fn grant_lease(&self, ttl: Duration) -> Result<Lease, StoreError> {
        dispatch!(self, s => s.grant_lease(ttl).await)
    }

    /// Refreshes the lease once (call it every `ttl / 3`). An expired or unknown lease gives
    /// [`StoreError::LeaseExpired`].
    pub async fn keep_alive(&self, lease: &Lease) -> Result<(), StoreError> {
        dispatch!(self, s => s.keep_alive(lease).await)
    }

    /// Revokes the lease: its records are deleted now. Revoking an expired lease is not an error.
    pub async fn revoke(&self, lease: &Lease) -> Result<(), StoreError> {
        dispatch!(self, s => s.revoke(lease).await)
    }

    /// Writes (overwrites) a host record attached to `lease`. Returns the revision.
    pub async fn put_host(&self, host: &HostRecord, lease: &Lease) -> Result<i64, StoreError> {
        dispatch!(self, s => s.put_host(host, lease).await)
    }

    /// Creates a mapping only if no mapping exists for that SIR address (atomic: etcd txn on
    /// `create_revision == 0`); else [`StoreError::AddressInUse`] with the existing owner (which
    /// may be the same endpoint, e.g. after an agent restart: then use [`Store::put_mapping`]).
    /// Returns the revision.
    pub async fn create_mapping(
        &self,
        rec: &MappingRecord,
        lease: &Lease,
    ) -> Result<i64, StoreError> {
        dispatch!(self, s => s.create_mapping(rec, lease).await)
    }

    /// Writes a mapping unconditionally (mobility: same SIR address, new host/locator, new
    /// lease). Returns the revision.
    pub async fn put_mapping(&self, rec: &MappingRecord, lease: &Lease) -> Result<i64, StoreError> {
        dispatch!(self, s => s.put_mapping(rec, lease).await)
    }

    /// Deletes `host`'s mapping of a SIR address. Returns the revision (the current one if
    /// there was nothing to delete).
    pub async fn delete_mapping(
        &self,
        host: &str,
        sir_address: Ipv6Addr,
    ) -> Result<i64, StoreError> {
        dispatch!(self, s => s.delete_mapping(host, sir_address).await)
    }

    /// The identity of a label set (the canonical sorted label string): the existing one, or a
    /// new one allocated atomically, so that hosts racing for the same labels get the same id
    /// and different label sets never share one. The first candidate is
    /// [`identity_first_candidate`]; a candidate taken by another label set (or by a malformed
    /// record) is skipped for the next one, at most [`IDENTITY_PROBES`] times
    /// ([`StoreError::IdentitiesExhausted`]). The record and its index are written in one etcd
    /// transaction guarded by `create_revision == 0` on both keys, without a lease.
    pub async fn allocate_identity(&self, labels: &str) -> Result<u32, StoreError> {
        self.allocate_identity_from(labels, identity_first_candidate(labels))
            .await
    }

    /// [`Store::allocate_identity`] starting at `first_candidate` instead of the hash (tests:
    /// forces collisions). Not for production use: ids then depend on the caller.
    #[doc(hidden)]
    pub async fn allocate_identity_from(
        &self,
        labels: &str,
        first_candidate: u32,
    ) -> Result<u32, StoreError> {
        records::check_labels(labels)?;
        records::check_identity_id(first_candidate)?;
        dispatch!(self, s => s.allocate_identity(labels, first_candidate).await)
    }

    /// Creates or overwrites a policy (no lease). Returns the revision.
    pub async fn put_policy(&self, policy: &PolicyRecord) -> Result<i64, StoreError> {
        dispatch!(self, s => s.put_policy(policy).await)
    }

    /// Deletes a policy. Returns the revision; [`StoreError::NotFound`] if there is none of
    /// that name.
    pub async fn delete_policy(&self, name: &str) -> Result<i64, StoreError> {
        records::check_policy_name(name)?;
        dispatch!(self, s => s.delete_policy(name).await)
    }

    /// Lists everything at one revision.
    pub async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        dispatch!(self, s => s.snapshot().await)
    }

    /// Watches every change with revision `>= from_revision` (`<= 0`: from now on).
    pub async fn watch(&self, from_revision: i64) -> Result<Watch, StoreError> {
        Ok(match self {
            Store::Embedded(s) => Watch(WatchInner::Embedded(s.watch(from_revision)?)),
            Store::Etcd(s) => Watch(WatchInner::Etcd(Box::new(s.watch(from_revision).await?))),
        })
    }

    /// Compacts the history up to `revision` (watches from older revisions get `Resync`).
    pub async fn compact(&self, revision: i64) -> Result<(), StoreError> {
        dispatch!(self, s => s.compact(revision).await)
    }
}

/// A stream of [`WatchEvent`]s; see the crate docs for the semantics.
#[derive(Debug)]
pub struct Watch(WatchInner);

#[derive(Debug)]
enum WatchInner {
    Embedded(embedded::EmbeddedWatch),
    Etcd(Box<etcd::EtcdWatch>),
}

impl Watch {
    /// The next event. `None`, or an error for which [`StoreError::ends_watch`] is true, means
    /// the stream has ended: list again and watch again. `Err(Malformed)` items do not end it.
    pub async fn next(&mut self) -> Option<Result<WatchEvent, StoreError>> {
        match &mut self.0 {
            WatchInner::Embedded(w) => w.next().await,
            WatchInner::Etcd(w) => w.next().await,
        }
    }
}
