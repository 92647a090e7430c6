//! Key layout and record encoding shared by both backends.

use std::net::Ipv6Addr;

use crate::{
    HostRecord, IdentityRecord, MappingRecord, PolicyRecord, SkippedRecord, Snapshot, StoreError,
    StoreEvent,
};

/// Prefix of every ilanet key (the watch range).
pub const KEY_PREFIX: &str = "/ilanet/v1/";
/// Prefix of the per-host key ranges: `/ilanet/v1/hosts/<host-name>/` holds everything one host
/// writes (its host record, its mappings): see [`host_prefix`].
pub const HOSTS_PREFIX: &str = "/ilanet/v1/hosts/";
/// Where mappings lived before per-host prefixes (`/ilanet/v1/mappings/<sir-address>`, any
/// host could overwrite any mapping). Records still found there are skipped with a warning
/// naming the key; their owners publish them again under their own prefix.
pub const LEGACY_MAPPINGS_PREFIX: &str = "/ilanet/v1/mappings/";
/// The name of the host record under a host's prefix: `/ilanet/v1/hosts/<host-name>/host`.
const HOST_RECORD: &str = "host";
/// The mappings under a host's prefix: `/ilanet/v1/hosts/<host-name>/mappings/<sir-address>`.
const HOST_MAPPINGS: &str = "mappings/";

/// Prefix of identity keys: `/ilanet/v1/identities/<id>` (decimal) → [`IdentityRecord`].
pub const IDENTITIES_PREFIX: &str = "/ilanet/v1/identities/";
/// Prefix of the identity index: `/ilanet/v1/identity-labels/<escaped labels>` → the id (a JSON
/// number). See [`identity_labels_key`].
pub const IDENTITY_LABELS_PREFIX: &str = "/ilanet/v1/identity-labels/";
/// Prefix of policy keys: `/ilanet/v1/policies/<name>` → [`PolicyRecord`].
pub const POLICIES_PREFIX: &str = "/ilanet/v1/policies/";

/// The smallest identity the store allocates (below: reserved, well-known identities).
pub const MIN_ALLOCATED_IDENTITY: u32 = 256;
/// One past the largest identity the store allocates (identities fit in 24 bits).
pub const IDENTITY_LIMIT: u32 = 1 << 24;
/// How many candidates [`crate::Store::allocate_identity`] tries before giving up.
pub const IDENTITY_PROBES: u32 = 64;
/// The longest label-set string an identity may have (bytes).
pub const MAX_LABELS_LEN: usize = 16 * 1024;
/// The longest policy name.
pub const MAX_POLICY_NAME_LEN: usize = 253;
/// The largest value (encoded record, bytes) either backend stores: 16 MiB. Checked before
/// every write, on the embedded store and on etcd alike ([`StoreError::TooLarge`]). A
/// generated 100,000-rule policy (11.3 MB of JSON) is a 13.3 MB [`PolicyRecord`] (its
/// document's quotes are escaped once more), so it fits.
///
/// etcd refuses requests above its `--max-request-bytes` (default 1.5 MiB): an etcd cluster
/// serving ilanet needs `--max-request-bytes` of at least [`ETCD_MAX_REQUEST_BYTES`]
/// ([`crate::etcd_cluster`] starts its members so).
pub const MAX_VALUE_BYTES: usize = 16 * 1024 * 1024;
/// The `--max-request-bytes` an etcd serving ilanet needs: [`MAX_VALUE_BYTES`] plus 1 MiB for
/// the key, the lease and the request's framing.
pub const ETCD_MAX_REQUEST_BYTES: usize = MAX_VALUE_BYTES + 1024 * 1024;

/// Refuses a value above [`MAX_VALUE_BYTES`], naming the key and the limit.
pub(crate) fn check_value_size(key: &str, value: &[u8]) -> Result<(), StoreError> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(StoreError::TooLarge {
            key: key.to_string(),
            size: value.len(),
            limit: MAX_VALUE_BYTES,
        });
    }
    Ok(())
}

/// The key range one host writes (and, with etcd auth, the only one it may write besides the
/// shared identity keys): `/ilanet/v1/hosts/<host-name>/`.
pub fn host_prefix(host: &str) -> String {
    format!("{HOSTS_PREFIX}{host}/")
}

/// The key of the mapping of a SIR address published by `host`:
/// `/ilanet/v1/hosts/<host>/mappings/<sir-address>`.
pub fn mapping_key(host: &str, sir_address: Ipv6Addr) -> String {
    format!("{HOSTS_PREFIX}{host}/{HOST_MAPPINGS}{sir_address}")
}

/// The key of a host record: `/ilanet/v1/hosts/<host-name>/host`.
pub fn host_key(name: &str) -> String {
    format!("{HOSTS_PREFIX}{name}/{HOST_RECORD}")
}

/// The SIR address of a mapping key of any host (`None`: not a well-formed mapping key).
pub(crate) fn mapping_key_sir(key: &str) -> Option<Ipv6Addr> {
    let rest = key.strip_prefix(HOSTS_PREFIX)?;
    let (_, rest) = rest.split_once('/')?;
    rest.strip_prefix(HOST_MAPPINGS)?.parse().ok()
}

/// The key of an identity record.
pub fn identity_key(id: u32) -> String {
    format!("{IDENTITIES_PREFIX}{id}")
}

/// The index key of a label set: the labels with every byte outside `[A-Za-z0-9._=,:-]`
/// written as `%XX` (upper-case hex), so the key is injective, readable and free of `/`.
/// E.g. `app=web,io.ilanet.tenant=1` → `/ilanet/v1/identity-labels/app=web,io.ilanet.tenant=1`.
pub fn identity_labels_key(labels: &str) -> String {
    let mut key = String::with_capacity(IDENTITY_LABELS_PREFIX.len() + labels.len());
    key.push_str(IDENTITY_LABELS_PREFIX);
    for b in labels.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'=' | b',' | b':' | b'-') {
            key.push(b as char);
        } else {
            key.push_str(&format!("%{b:02X}"));
        }
    }
    key
}

/// The key of a policy.
pub fn policy_key(name: &str) -> String {
    format!("{POLICIES_PREFIX}{name}")
}

/// The first identity candidate of a label set: a stable hash (FNV-1a, 64 bit) of the labels
/// mapped into `[MIN_ALLOCATED_IDENTITY, IDENTITY_LIMIT)`. The same on every host and release.
pub fn identity_first_candidate(labels: &str) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in labels.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let range = u64::from(IDENTITY_LIMIT - MIN_ALLOCATED_IDENTITY);
    MIN_ALLOCATED_IDENTITY + (h % range) as u32
}

/// The candidate after `id` (wrapping within the allocated range).
pub(crate) fn next_identity_candidate(id: u32) -> u32 {
    if id + 1 >= IDENTITY_LIMIT {
        MIN_ALLOCATED_IDENTITY
    } else {
        id + 1
    }
}

pub(crate) fn check_identity_id(id: u32) -> Result<(), StoreError> {
    if !(MIN_ALLOCATED_IDENTITY..IDENTITY_LIMIT).contains(&id) {
        return Err(StoreError::InvalidArgument(format!(
            "identity {id} is outside [{MIN_ALLOCATED_IDENTITY}, {IDENTITY_LIMIT})"
        )));
    }
    Ok(())
}

pub(crate) fn check_labels(labels: &str) -> Result<(), StoreError> {
    if labels.is_empty() || labels.contains('\n') || labels.len() > MAX_LABELS_LEN {
        return Err(StoreError::InvalidArgument(format!(
            "label set {labels:?} must be non-empty, at most {MAX_LABELS_LEN} bytes, without newline"
        )));
    }
    Ok(())
}

pub(crate) fn check_policy_name(name: &str) -> Result<(), StoreError> {
    if name.is_empty()
        || name.len() > MAX_POLICY_NAME_LEN
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
    {
        return Err(StoreError::InvalidArgument(format!(
            "policy name {name:?} must be 1..={MAX_POLICY_NAME_LEN} characters of [a-z0-9.-]"
        )));
    }
    Ok(())
}

fn check_policy(rec: &PolicyRecord) -> Result<(), StoreError> {
    check_policy_name(&rec.name)?;
    serde_json::from_str::<serde::de::IgnoredAny>(&rec.document).map_err(|e| {
        StoreError::InvalidArgument(format!(
            "policy {:?}: document is not valid JSON: {e}",
            rec.name
        ))
    })?;
    Ok(())
}

pub(crate) fn encode_identity(rec: &IdentityRecord) -> Result<Vec<u8>, StoreError> {
    check_identity_id(rec.id)?;
    check_labels(&rec.labels)?;
    Ok(serde_json::to_vec(rec).expect("IdentityRecord serializes"))
}

/// The value of an identity index key.
pub(crate) fn encode_identity_index(id: u32) -> Vec<u8> {
    id.to_string().into_bytes()
}

pub(crate) fn encode_policy(rec: &PolicyRecord) -> Result<Vec<u8>, StoreError> {
    check_policy(rec)?;
    Ok(serde_json::to_vec(rec).expect("PolicyRecord serializes"))
}

pub(crate) fn check_host_name(name: &str) -> Result<(), StoreError> {
    if name.is_empty() || name.contains('/') || name.chars().any(char::is_control) {
        return Err(StoreError::InvalidArgument(format!(
            "host name {name:?} must be non-empty, without '/' or control characters"
        )));
    }
    Ok(())
}

pub(crate) fn encode_mapping(rec: &MappingRecord) -> Result<Vec<u8>, StoreError> {
    check_host_name(&rec.host)?;
    Ok(serde_json::to_vec(rec).expect("MappingRecord serializes"))
}

pub(crate) fn encode_host(rec: &HostRecord) -> Result<Vec<u8>, StoreError> {
    check_host_name(&rec.name)?;
    Ok(serde_json::to_vec(rec).expect("HostRecord serializes"))
}

fn malformed(key: &str, reason: impl Into<String>) -> StoreError {
    StoreError::Malformed {
        key: key.to_string(),
        reason: reason.into(),
    }
}

/// Turns raw key bytes into a string (lossy for display if not UTF-8).
pub(crate) fn key_str(key: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(key).map_err(|_| String::from_utf8_lossy(key).into_owned())
}

fn parse_mapping_key(key: &str, rest: &str) -> Result<Ipv6Addr, StoreError> {
    let addr: Ipv6Addr = rest
        .parse()
        .map_err(|_| malformed(key, format!("{rest:?} is not an IPv6 address")))?;
    if addr.to_string() != rest {
        return Err(malformed(
            key,
            format!("address {rest:?} is not in canonical form ({addr})"),
        ));
    }
    Ok(addr)
}

/// What a key under [`HOSTS_PREFIX`] names.
enum HostKey<'a> {
    /// `<host>/host`.
    Record(&'a str),
    /// `<host>/mappings/<sir>`.
    Mapping(&'a str, Ipv6Addr),
    /// Another key under a host's prefix (reserved for later record kinds: ignored).
    Other,
}

fn parse_host_key<'a>(key: &str, rest: &'a str) -> Result<HostKey<'a>, StoreError> {
    let Some((host, what)) = rest.split_once('/') else {
        return Err(malformed(
            key,
            format!(
                "a host record in the layout before per-host prefixes (now \
                 {HOSTS_PREFIX}<host>/{HOST_RECORD}): ignored; its owner writes it again"
            ),
        ));
    };
    check_host_name(host).map_err(|e| malformed(key, e.to_string()))?;
    if what == HOST_RECORD {
        Ok(HostKey::Record(host))
    } else if let Some(sir) = what.strip_prefix(HOST_MAPPINGS) {
        Ok(HostKey::Mapping(host, parse_mapping_key(key, sir)?))
    } else {
        Ok(HostKey::Other)
    }
}

fn legacy_mapping(key: &str) -> StoreError {
    malformed(
        key,
        format!(
            "a mapping in the layout before per-host prefixes (now \
             {HOSTS_PREFIX}<host>/{HOST_MAPPINGS}<sir-address>): ignored; its owner writes it \
             again"
        ),
    )
}

pub(crate) fn decode_mapping(
    key: &str,
    host: &str,
    addr: Ipv6Addr,
    value: &[u8],
) -> Result<MappingRecord, StoreError> {
    let rec: MappingRecord = serde_json::from_slice(value)
        .map_err(|e| malformed(key, format!("not a mapping record: {e}")))?;
    if rec.host != host {
        // Only host `host` (or an administrator) can write here: a record naming another
        // host is a forgery or a mistake, never a mapping of that other host.
        return Err(malformed(
            key,
            format!(
                "record claims host {:?} but is stored under the prefix of host {host:?}",
                rec.host
            ),
        ));
    }
    if rec.sir_address() != addr {
        return Err(malformed(
            key,
            format!(
                "record is for {} but stored under {addr}",
                rec.sir_address()
            ),
        ));
    }
    Ok(rec)
}

fn decode_host(key: &str, name: &str, value: &[u8]) -> Result<HostRecord, StoreError> {
    let rec: HostRecord = serde_json::from_slice(value)
        .map_err(|e| malformed(key, format!("not a host record: {e}")))?;
    if rec.name != name {
        return Err(malformed(
            key,
            format!(
                "record is for host {:?} but stored under {name:?}",
                rec.name
            ),
        ));
    }
    Ok(rec)
}

fn parse_identity_key(key: &str, rest: &str) -> Result<u32, StoreError> {
    let id: u32 = rest
        .parse()
        .map_err(|_| malformed(key, format!("{rest:?} is not an identity number")))?;
    if id.to_string() != rest {
        return Err(malformed(
            key,
            format!("identity {rest:?} is not in canonical form ({id})"),
        ));
    }
    check_identity_id(id).map_err(|e| malformed(key, e.to_string()))?;
    Ok(id)
}

fn decode_identity(key: &str, id: u32, value: &[u8]) -> Result<IdentityRecord, StoreError> {
    let rec: IdentityRecord = serde_json::from_slice(value)
        .map_err(|e| malformed(key, format!("not an identity record: {e}")))?;
    if rec.id != id {
        return Err(malformed(
            key,
            format!("record is for identity {} but stored under {id}", rec.id),
        ));
    }
    check_labels(&rec.labels).map_err(|e| malformed(key, e.to_string()))?;
    Ok(rec)
}

/// The identity named by an index value (`Err`: the reason it is malformed).
fn parse_identity_index(value: &[u8]) -> Result<u32, String> {
    let id: u32 =
        serde_json::from_slice(value).map_err(|e| format!("not an identity number: {e}"))?;
    check_identity_id(id).map_err(|e| e.to_string())?;
    Ok(id)
}

/// Checks an identity index key (canonical escaping of a valid label set).
fn parse_identity_labels_key(key: &str, rest: &str) -> Result<String, StoreError> {
    let mut bytes = Vec::with_capacity(rest.len());
    let mut it = rest.bytes();
    while let Some(b) = it.next() {
        if b == b'%' {
            let hex: Vec<u8> = it.by_ref().take(2).collect();
            let v = std::str::from_utf8(&hex)
                .ok()
                .filter(|h| h.len() == 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| malformed(key, "bad %-escape in the label key"))?;
            bytes.push(v);
        } else {
            bytes.push(b);
        }
    }
    let labels = String::from_utf8(bytes).map_err(|_| malformed(key, "labels are not UTF-8"))?;
    if identity_labels_key(&labels) != key {
        return Err(malformed(key, "label key is not in canonical escaped form"));
    }
    check_labels(&labels).map_err(|e| malformed(key, e.to_string()))?;
    Ok(labels)
}

/// Decodes the value of the index key `key` (the id it names).
pub(crate) fn decode_identity_index(key: &str, value: &[u8]) -> Result<u32, StoreError> {
    parse_identity_index(value).map_err(|r| malformed(key, r))
}

/// The allocator's check of an index entry: `identity-labels/<labels>` names `id`, whose record
/// (`record`, the value at `identity_key(id)` if it exists) must hold the same labels — else a
/// host rewrote one of the two keys, and handing out `id` would give these labels another
/// label set's policy.
pub(crate) fn check_index_target(
    index_key: &str,
    labels: &str,
    id: u32,
    record: Option<&[u8]>,
) -> Result<u32, StoreError> {
    let key = identity_key(id);
    match record.map(|v| decode_identity(&key, id, v)) {
        Some(Ok(r)) if r.labels == labels => Ok(id),
        Some(Ok(r)) => Err(malformed(
            index_key,
            format!(
                "names identity {id}, but {key} has the labels {:?}: refusing to hand it out",
                r.labels
            ),
        )),
        Some(Err(e)) => Err(malformed(
            index_key,
            format!("names identity {id}, whose record is malformed ({e})"),
        )),
        None => Err(malformed(
            index_key,
            format!("names identity {id}, which has no record ({key})"),
        )),
    }
}

/// Decodes the value of an identity key for the allocator: `Ok(labels)` of a well-formed
/// record, `Err(())` if it is malformed (the id is occupied all the same).
pub(crate) fn identity_labels_of(id: u32, value: &[u8]) -> Result<String, ()> {
    decode_identity(&identity_key(id), id, value)
        .map(|r| r.labels)
        .map_err(|_| ())
}

fn parse_policy_key(key: &str, rest: &str) -> Result<String, StoreError> {
    check_policy_name(rest).map_err(|e| malformed(key, e.to_string()))?;
    Ok(rest.to_string())
}

fn decode_policy(key: &str, name: &str, value: &[u8]) -> Result<PolicyRecord, StoreError> {
    let rec: PolicyRecord = serde_json::from_slice(value)
        .map_err(|e| malformed(key, format!("not a policy record: {e}")))?;
    if rec.name != name {
        return Err(malformed(
            key,
            format!(
                "record is for policy {:?} but stored under {name:?}",
                rec.name
            ),
        ));
    }
    check_policy(&rec).map_err(|e| malformed(key, e.to_string()))?;
    Ok(rec)
}

/// Longest key decoded, bytes: the longest key ilanet writes is an identity index key of
/// [`MAX_LABELS_LEN`] labels, each byte escaped to 3.
pub const MAX_KEY_BYTES: usize = IDENTITY_LABELS_PREFIX.len() + 3 * MAX_LABELS_LEN;

/// Decodes a record as the agents see it in a listing or a watch: a put (`value` given) or a
/// delete. `Ok(None)`: a key outside ilanet's record kinds (ignored). Errors name the key.
pub fn decode_record(key: &[u8], value: Option<&[u8]>) -> Result<Option<StoreEvent>, StoreError> {
    match value {
        Some(v) => decode_put(key, v),
        None => decode_delete(key),
    }
}

/// Refuses keys and values beyond what ilanet writes ([`MAX_KEY_BYTES`], [`MAX_VALUE_BYTES`])
/// before parsing them: a record written by hand (etcd's own limit is configurable) must not
/// cost the agents more than their own records do.
fn check_decode_size(key: &[u8], value: &[u8]) -> Result<(), StoreError> {
    if key.len() > MAX_KEY_BYTES {
        let shown: String = String::from_utf8_lossy(&key[..256]).into_owned();
        return Err(malformed(
            &format!("{shown}..."),
            format!(
                "key of {} bytes; at most {MAX_KEY_BYTES} are allowed (limit MAX_KEY_BYTES)",
                key.len()
            ),
        ));
    }
    if value.len() > MAX_VALUE_BYTES {
        return Err(malformed(
            &String::from_utf8_lossy(key),
            format!(
                "value of {} bytes; at most {MAX_VALUE_BYTES} are allowed (limit MAX_VALUE_BYTES)",
                value.len()
            ),
        ));
    }
    Ok(())
}

/// Decodes a put. `Ok(None)`: a key outside our record kinds (ignored).
pub(crate) fn decode_put(key: &[u8], value: &[u8]) -> Result<Option<StoreEvent>, StoreError> {
    check_decode_size(key, value)?;
    let key = key_str(key).map_err(|k| malformed(&k, "key is not UTF-8"))?;
    if key.starts_with(LEGACY_MAPPINGS_PREFIX) {
        Err(legacy_mapping(key))
    } else if let Some(rest) = key.strip_prefix(HOSTS_PREFIX) {
        match parse_host_key(key, rest)? {
            HostKey::Record(name) => {
                decode_host(key, name, value).map(|r| Some(StoreEvent::PutHost(r)))
            }
            HostKey::Mapping(host, addr) => {
                decode_mapping(key, host, addr, value).map(|r| Some(StoreEvent::PutMapping(r)))
            }
            HostKey::Other => Ok(None),
        }
    } else if let Some(rest) = key.strip_prefix(IDENTITIES_PREFIX) {
        let id = parse_identity_key(key, rest)?;
        decode_identity(key, id, value).map(|r| Some(StoreEvent::PutIdentity(r)))
    } else if let Some(rest) = key.strip_prefix(IDENTITY_LABELS_PREFIX) {
        // The index is checked but not reported: its identity record is.
        parse_identity_labels_key(key, rest)?;
        decode_identity_index(key, value).map(|_| None)
    } else if let Some(rest) = key.strip_prefix(POLICIES_PREFIX) {
        let name = parse_policy_key(key, rest)?;
        decode_policy(key, &name, value).map(|r| Some(StoreEvent::PutPolicy(r)))
    } else {
        Ok(None)
    }
}

/// Decodes a delete. `Ok(None)`: a key outside our record kinds (ignored).
pub(crate) fn decode_delete(key: &[u8]) -> Result<Option<StoreEvent>, StoreError> {
    check_decode_size(key, b"")?;
    let key = key_str(key).map_err(|k| malformed(&k, "key is not UTF-8"))?;
    if key.starts_with(LEGACY_MAPPINGS_PREFIX) {
        // A legacy record going away (its lease expired): nothing was taken from it.
        Ok(None)
    } else if let Some(rest) = key.strip_prefix(HOSTS_PREFIX) {
        match parse_host_key(key, rest) {
            Ok(HostKey::Record(name)) => Ok(Some(StoreEvent::DeleteHost(name.to_string()))),
            Ok(HostKey::Mapping(host, sir)) => Ok(Some(StoreEvent::DeleteMapping {
                host: host.to_string(),
                sir,
            })),
            Ok(HostKey::Other) => Ok(None),
            // A legacy host record going away.
            Err(_) if !rest.contains('/') => Ok(None),
            Err(e) => Err(e),
        }
    } else if let Some(rest) = key.strip_prefix(IDENTITIES_PREFIX) {
        // Identities are never deleted by ilanet (no GC yet): a deletion is not reported.
        parse_identity_key(key, rest).map(|_| None)
    } else if let Some(rest) = key.strip_prefix(IDENTITY_LABELS_PREFIX) {
        parse_identity_labels_key(key, rest).map(|_| None)
    } else if let Some(rest) = key.strip_prefix(POLICIES_PREFIX) {
        parse_policy_key(key, rest).map(|n| Some(StoreEvent::DeletePolicy(n)))
    } else {
        Ok(None)
    }
}

/// The endpoint named by an existing mapping value (for `AddressInUse`).
pub(crate) fn owner_endpoint(value: &[u8]) -> String {
    serde_json::from_slice::<MappingRecord>(value)
        .map(|r| r.endpoint)
        .unwrap_or_else(|_| "<malformed record>".to_string())
}

/// Puts the listed records in their documented order (identities by number, not by key text).
pub(crate) fn finish_snapshot(snap: &mut Snapshot) {
    snap.identities.sort_by_key(|i| i.id);
}

/// Adds one listed key/value to a snapshot.
pub(crate) fn add_to_snapshot(snap: &mut Snapshot, key: &[u8], value: &[u8]) {
    match decode_put(key, value) {
        Ok(Some(StoreEvent::PutMapping(m))) => snap.mappings.push(m),
        Ok(Some(StoreEvent::PutHost(h))) => snap.hosts.push(h),
        Ok(Some(StoreEvent::PutIdentity(i))) => snap.identities.push(i),
        Ok(Some(StoreEvent::PutPolicy(p))) => snap.policies.push(p),
        Ok(_) => {}
        Err(StoreError::Malformed { key, reason }) => {
            log::warn!("mapping store: skipping malformed record {key}: {reason}");
            snap.skipped.push(SkippedRecord { key, error: reason })
        }
        Err(e) => snap.skipped.push(SkippedRecord {
            key: String::from_utf8_lossy(key).into_owned(),
            error: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ila::{ChecksumMode, Identifier, Locator, SirPrefix};

    fn rec() -> MappingRecord {
        MappingRecord {
            endpoint: "web-1".into(),
            host: "site-a".into(),
            sir: SirPrefix(0x2001_0db8_00ff_0000),
            identifier: Identifier(0x3000_0001_0000_0002),
            locator: Locator(0x2001_0db8_0001_0001),
            mode: ChecksumMode::NeutralMap,
            identity: 4242,
            labels_sha256: None,
        }
    }

    #[test]
    fn layout_and_json_are_documented_form() {
        let r = rec();
        assert_eq!(
            mapping_key("site-a", r.sir_address()),
            "/ilanet/v1/hosts/site-a/mappings/2001:db8:ff:0:3000:1:0:2"
        );
        assert_eq!(host_key("site-a"), "/ilanet/v1/hosts/site-a/host");
        assert_eq!(host_prefix("site-a"), "/ilanet/v1/hosts/site-a/");
        let json = String::from_utf8(encode_mapping(&r).unwrap()).unwrap();
        assert_eq!(
            json,
            r#"{"endpoint":"web-1","host":"site-a","sir":"2001:db8:ff::/64","identifier":"3000:1:0:2","locator":"2001:db8:1:1::/64","mode":"neutral-map","identity":4242}"#
        );
        let key = mapping_key("site-a", r.sir_address());
        assert_eq!(
            decode_put(key.as_bytes(), json.as_bytes()).unwrap(),
            Some(StoreEvent::PutMapping(r.clone()))
        );
        assert_eq!(
            decode_delete(key.as_bytes()).unwrap(),
            Some(StoreEvent::DeleteMapping {
                host: "site-a".into(),
                sir: r.sir_address()
            })
        );
        assert_eq!(mapping_key_sir(&key), Some(r.sir_address()));
        assert_eq!(mapping_key_sir(&host_key("site-a")), None);
        // `mode` and `identity` may be left out (records written before they existed: default
        // neutral-map, identity 0 = unknown); unknown fields are tolerated.
        let short = r#"{"endpoint":"web-1","host":"site-a","sir":"2001:db8:ff::/64","identifier":"3000:1:0:2","locator":"2001:db8:1:1::/64","extra":1}"#;
        assert_eq!(
            decode_put(key.as_bytes(), short.as_bytes()).unwrap(),
            Some(StoreEvent::PutMapping(MappingRecord { identity: 0, ..r }))
        );
    }

    #[test]
    fn malformed_and_foreign_keys() {
        let v = encode_mapping(&rec()).unwrap();
        for key in [
            "/ilanet/v1/hosts/site-a/mappings/nope",
            "/ilanet/v1/hosts/site-a/mappings/2001:0db8:ff:0:3000:1:0:2",
            "/ilanet/v1/hosts/site-a/mappings/2001:db8::1",
            // Stored under another host's prefix than the one it names.
            "/ilanet/v1/hosts/site-b/mappings/2001:db8:ff:0:3000:1:0:2",
            "/ilanet/v1/hosts/",
            "/ilanet/v1/hosts//host",
            // The layout before per-host prefixes.
            "/ilanet/v1/mappings/2001:db8:ff:0:3000:1:0:2",
            "/ilanet/v1/hosts/site-a",
        ] {
            assert!(
                matches!(
                    decode_put(key.as_bytes(), &v),
                    Err(StoreError::Malformed { .. })
                ),
                "{key}"
            );
        }
        assert!(matches!(
            decode_put(b"/ilanet/v1/hosts/site-a/mappings/\xff", &v),
            Err(StoreError::Malformed { .. })
        ));
        match decode_put(
            b"/ilanet/v1/hosts/site-b/mappings/2001:db8:ff:0:3000:1:0:2",
            &v,
        ) {
            Err(StoreError::Malformed { reason, .. }) => assert!(
                reason.contains("claims host \"site-a\"") && reason.contains("\"site-b\""),
                "{reason}"
            ),
            other => panic!("{other:?}"),
        }
        // Legacy records going away, and reserved kinds under a host's prefix: ignored.
        assert_eq!(
            decode_delete(b"/ilanet/v1/mappings/2001:db8::1").unwrap(),
            None
        );
        assert_eq!(decode_delete(b"/ilanet/v1/hosts/site-a").unwrap(), None);
        assert_eq!(
            decode_put(b"/ilanet/v1/hosts/site-a/later/x", b"?").unwrap(),
            None
        );
        assert_eq!(decode_put(b"/ilanet/v1/future-kind/x", b"?").unwrap(), None);
        assert_eq!(decode_delete(b"/ilanet/v1/future-kind/x").unwrap(), None);
        assert_eq!(owner_endpoint(b"garbage"), "<malformed record>");
    }

    #[test]
    fn oversized_keys_and_values_are_refused_naming_the_limit() {
        let big = vec![b' '; MAX_VALUE_BYTES + 1];
        let key = mapping_key("site-a", rec().sir_address());
        match decode_put(key.as_bytes(), &big) {
            Err(StoreError::Malformed { key: k, reason }) => {
                assert_eq!(k, key);
                assert!(reason.contains("MAX_VALUE_BYTES"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        let long = format!("{HOSTS_PREFIX}{}", "h".repeat(MAX_KEY_BYTES));
        for r in [
            decode_put(long.as_bytes(), b"{}"),
            decode_delete(long.as_bytes()),
        ] {
            match r {
                Err(StoreError::Malformed { key, reason }) => {
                    assert!(key.starts_with(HOSTS_PREFIX), "{key}");
                    assert!(reason.contains("MAX_KEY_BYTES"), "{reason}");
                }
                other => panic!("{other:?}"),
            }
        }
        // The longest key ilanet writes still decodes.
        let labels = "%".repeat(MAX_LABELS_LEN);
        let ikey = identity_labels_key(&labels);
        assert!(ikey.len() <= MAX_KEY_BYTES);
        assert_eq!(decode_put(ikey.as_bytes(), b"4242").unwrap(), None);
    }

    #[test]
    fn identity_layout_and_validation() {
        let labels = "app=web,io.ilanet.tenant=1";
        assert_eq!(
            identity_labels_key(labels),
            "/ilanet/v1/identity-labels/app=web,io.ilanet.tenant=1"
        );
        assert_eq!(
            identity_labels_key("k8s:a/b=c d%"),
            "/ilanet/v1/identity-labels/k8s:a%2Fb=c%20d%25"
        );
        assert_eq!(
            identity_labels_key("é"),
            "/ilanet/v1/identity-labels/%C3%A9"
        );
        // Stable across hosts and releases: pinned values (FNV-1a 64, computed independently).
        assert_eq!(identity_first_candidate(labels), 10_094_946);
        assert_eq!(identity_first_candidate(""), 16_388_133);
        assert_eq!(
            next_identity_candidate(IDENTITY_LIMIT - 1),
            MIN_ALLOCATED_IDENTITY
        );
        assert_eq!(next_identity_candidate(300), 301);

        let rec = IdentityRecord {
            id: 4242,
            labels: labels.into(),
        };
        let v = encode_identity(&rec).unwrap();
        assert_eq!(
            std::str::from_utf8(&v).unwrap(),
            r#"{"id":4242,"labels":"app=web,io.ilanet.tenant=1"}"#
        );
        assert_eq!(
            decode_put(identity_key(4242).as_bytes(), &v).unwrap(),
            Some(StoreEvent::PutIdentity(rec.clone()))
        );
        assert_eq!(decode_delete(identity_key(4242).as_bytes()).unwrap(), None);
        let ikey = identity_labels_key(labels);
        assert_eq!(decode_put(ikey.as_bytes(), b"4242").unwrap(), None);
        assert_eq!(decode_delete(ikey.as_bytes()).unwrap(), None);
        for (key, value) in [
            ("/ilanet/v1/identities/4243", &v[..]),  // key/body mismatch
            ("/ilanet/v1/identities/04242", &v[..]), // not canonical
            ("/ilanet/v1/identities/12", br#"{"id":12,"labels":"a"}"#), // reserved range
            ("/ilanet/v1/identities/x", &v[..]),
            ("/ilanet/v1/identities/4242", br#"{"id":4242,"labels":""}"#),
            (
                "/ilanet/v1/identities/4242",
                br#"{"id":4242,"labels":"a\nb"}"#,
            ),
            ("/ilanet/v1/identity-labels/a", b"nope"),
            ("/ilanet/v1/identity-labels/a", b"3"),
            ("/ilanet/v1/identity-labels/a%2f", b"4242"), // lower-case escape: not canonical
            ("/ilanet/v1/identity-labels/a b", b"4242"),
            ("/ilanet/v1/identity-labels/%0A", b"4242"),
            ("/ilanet/v1/identity-labels/%G1", b"4242"),
            ("/ilanet/v1/identity-labels/", b"4242"),
        ] {
            assert!(
                matches!(
                    decode_put(key.as_bytes(), value),
                    Err(StoreError::Malformed { .. })
                ),
                "{key} {:?}",
                String::from_utf8_lossy(value)
            );
        }
        for bad in ["", "a\nb"] {
            assert!(matches!(
                check_labels(bad),
                Err(StoreError::InvalidArgument(_))
            ));
        }
        assert!(check_labels(&"x".repeat(MAX_LABELS_LEN + 1)).is_err());
        assert!(encode_identity(&IdentityRecord {
            id: 3,
            labels: "a".into()
        })
        .is_err());
    }

    #[test]
    fn policy_layout_and_validation() {
        let p = PolicyRecord {
            name: "allow-web.v1".into(),
            document: r#"{"ingress": [ {"from": "app=db"} ]}"#.into(),
        };
        assert_eq!(policy_key(&p.name), "/ilanet/v1/policies/allow-web.v1");
        let v = encode_policy(&p).unwrap();
        assert_eq!(
            decode_put(policy_key(&p.name).as_bytes(), &v).unwrap(),
            Some(StoreEvent::PutPolicy(p.clone()))
        );
        assert_eq!(
            decode_delete(policy_key(&p.name).as_bytes()).unwrap(),
            Some(StoreEvent::DeletePolicy(p.name.clone()))
        );
        for name in ["", "Upper", "a/b", "a_b", "a b", &"a".repeat(254)] {
            let bad = PolicyRecord {
                name: name.to_string(),
                ..p.clone()
            };
            assert!(
                matches!(encode_policy(&bad), Err(StoreError::InvalidArgument(_))),
                "{name:?}"
            );
        }
        assert!(check_policy_name(&"a".repeat(253)).is_ok());
        for doc in ["", "{", "{} x", "nope"] {
            let bad = PolicyRecord {
                document: doc.to_string(),
                ..p.clone()
            };
            assert!(
                matches!(encode_policy(&bad), Err(StoreError::InvalidArgument(_))),
                "{doc:?}"
            );
        }
        let bad_doc = br#"{"name":"allow-web.v1","document":"{"}"#;
        let other_name = br#"{"name":"other","document":"{}"}"#;
        for (key, value) in [
            ("/ilanet/v1/policies/allow-web.v1", &bad_doc[..]),
            ("/ilanet/v1/policies/allow-web.v1", &other_name[..]),
            ("/ilanet/v1/policies/Bad", &v[..]),
            ("/ilanet/v1/policies/allow-web.v1", b"garbage"),
        ] {
            assert!(
                matches!(
                    decode_put(key.as_bytes(), value),
                    Err(StoreError::Malformed { .. })
                ),
                "{key}"
            );
        }
        assert!(matches!(
            decode_delete(b"/ilanet/v1/policies/Bad"),
            Err(StoreError::Malformed { .. })
        ));
    }

    #[test]
    fn a_labels_digest_is_sha256_in_lowercase_hex_and_round_trips() {
        // FIPS 180-2's test vector: an independent check of the hash itself.
        let d = crate::LabelsDigest::of("abc");
        let hex = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(d.to_string(), hex);
        assert_eq!(hex.parse::<crate::LabelsDigest>(), Ok(d));
        for bad in [
            &hex[..62],
            &hex.to_uppercase(),
            &format!("{}zz", &hex[..62]),
            "",
        ] {
            assert!(bad.parse::<crate::LabelsDigest>().is_err(), "{bad:?}");
        }
        // In a mapping record: written when set, absent (and decoded as None) otherwise.
        let with = MappingRecord {
            identity: 4242,
            labels_sha256: Some(d),
            ..rec()
        };
        let json = String::from_utf8(encode_mapping(&with).expect("encode")).expect("utf8");
        assert!(
            json.contains(&format!("\"labels_sha256\":\"{hex}\"")),
            "{json}"
        );
        let back: MappingRecord = serde_json::from_str(&json).expect("decode");
        assert_eq!(back, with);
        let without = String::from_utf8(encode_mapping(&rec()).expect("encode")).expect("utf8");
        assert!(!without.contains("labels_sha256"), "{without}");
        let bad = json.replace(hex, "00");
        assert!(serde_json::from_str::<MappingRecord>(&bad).is_err());
    }
}
