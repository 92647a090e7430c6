//! Key layout and record encoding shared by both backends.

use std::net::Ipv6Addr;

use crate::{HostRecord, MappingRecord, SkippedRecord, Snapshot, StoreError, StoreEvent};

/// Prefix of every ilanet key (the watch range).
pub const KEY_PREFIX: &str = "/ilanet/v1/";
/// Prefix of mapping keys: `/ilanet/v1/mappings/<sir-address>`.
pub const MAPPINGS_PREFIX: &str = "/ilanet/v1/mappings/";
/// Prefix of host keys: `/ilanet/v1/hosts/<host-name>`.
pub const HOSTS_PREFIX: &str = "/ilanet/v1/hosts/";

/// The key of the mapping of a SIR address.
pub fn mapping_key(sir_address: Ipv6Addr) -> String {
    format!("{MAPPINGS_PREFIX}{sir_address}")
}

/// The key of a host record.
pub fn host_key(name: &str) -> String {
    format!("{HOSTS_PREFIX}{name}")
}

pub(crate) fn check_host_name(name: &str) -> Result<(), StoreError> {
    if name.is_empty() || name.contains('/') || name.chars().any(char::is_control) {
        return Err(StoreError::InvalidArgument(format!(
            "host name {name:?} must be non-empty, without '/' or control characters"
        )));
    }
    Ok(())
}

pub(crate) fn encode_mapping(rec: &MappingRecord) -> Vec<u8> {
    serde_json::to_vec(rec).expect("MappingRecord serializes")
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

fn parse_host_key(key: &str, rest: &str) -> Result<String, StoreError> {
    check_host_name(rest).map_err(|e| malformed(key, e.to_string()))?;
    Ok(rest.to_string())
}

pub(crate) fn decode_mapping(
    key: &str,
    addr: Ipv6Addr,
    value: &[u8],
) -> Result<MappingRecord, StoreError> {
    let rec: MappingRecord = serde_json::from_slice(value)
        .map_err(|e| malformed(key, format!("not a mapping record: {e}")))?;
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

/// Decodes a put. `Ok(None)`: a key outside our record kinds (ignored).
pub(crate) fn decode_put(key: &[u8], value: &[u8]) -> Result<Option<StoreEvent>, StoreError> {
    let key = key_str(key).map_err(|k| malformed(&k, "key is not UTF-8"))?;
    if let Some(rest) = key.strip_prefix(MAPPINGS_PREFIX) {
        let addr = parse_mapping_key(key, rest)?;
        decode_mapping(key, addr, value).map(|r| Some(StoreEvent::PutMapping(r)))
    } else if let Some(rest) = key.strip_prefix(HOSTS_PREFIX) {
        let name = parse_host_key(key, rest)?;
        decode_host(key, &name, value).map(|r| Some(StoreEvent::PutHost(r)))
    } else {
        Ok(None)
    }
}

/// Decodes a delete. `Ok(None)`: a key outside our record kinds (ignored).
pub(crate) fn decode_delete(key: &[u8]) -> Result<Option<StoreEvent>, StoreError> {
    let key = key_str(key).map_err(|k| malformed(&k, "key is not UTF-8"))?;
    if let Some(rest) = key.strip_prefix(MAPPINGS_PREFIX) {
        parse_mapping_key(key, rest).map(|a| Some(StoreEvent::DeleteMapping(a)))
    } else if let Some(rest) = key.strip_prefix(HOSTS_PREFIX) {
        parse_host_key(key, rest).map(|n| Some(StoreEvent::DeleteHost(n)))
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

/// Adds one listed key/value to a snapshot.
pub(crate) fn add_to_snapshot(snap: &mut Snapshot, key: &[u8], value: &[u8]) {
    match decode_put(key, value) {
        Ok(Some(StoreEvent::PutMapping(m))) => snap.mappings.push(m),
        Ok(Some(StoreEvent::PutHost(h))) => snap.hosts.push(h),
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
        }
    }

    #[test]
    fn layout_and_json_are_documented_form() {
        let r = rec();
        assert_eq!(
            mapping_key(r.sir_address()),
            "/ilanet/v1/mappings/2001:db8:ff:0:3000:1:0:2"
        );
        assert_eq!(host_key("site-a"), "/ilanet/v1/hosts/site-a");
        let json = String::from_utf8(encode_mapping(&r)).unwrap();
        assert_eq!(
            json,
            r#"{"endpoint":"web-1","host":"site-a","sir":"2001:db8:ff::/64","identifier":"3000:1:0:2","locator":"2001:db8:1:1::/64","mode":"neutral-map"}"#
        );
        let key = mapping_key(r.sir_address());
        assert_eq!(
            decode_put(key.as_bytes(), json.as_bytes()).unwrap(),
            Some(StoreEvent::PutMapping(r.clone()))
        );
        assert_eq!(
            decode_delete(key.as_bytes()).unwrap(),
            Some(StoreEvent::DeleteMapping(r.sir_address()))
        );
        // `mode` may be left out (default neutral-map); unknown fields are tolerated.
        let short = r#"{"endpoint":"web-1","host":"site-a","sir":"2001:db8:ff::/64","identifier":"3000:1:0:2","locator":"2001:db8:1:1::/64","extra":1}"#;
        assert!(decode_put(key.as_bytes(), short.as_bytes()).is_ok());
    }

    #[test]
    fn malformed_and_foreign_keys() {
        let v = encode_mapping(&rec());
        for key in [
            "/ilanet/v1/mappings/nope",
            "/ilanet/v1/mappings/2001:0db8:ff:0:3000:1:0:2",
            "/ilanet/v1/mappings/2001:db8::1",
            "/ilanet/v1/hosts/",
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
            decode_put(b"/ilanet/v1/mappings/\xff", &v),
            Err(StoreError::Malformed { .. })
        ));
        assert_eq!(decode_put(b"/ilanet/v1/policies/x", b"?").unwrap(), None);
        assert_eq!(decode_delete(b"/ilanet/v1/policies/x").unwrap(), None);
        assert_eq!(owner_endpoint(b"garbage"), "<malformed record>");
    }
}
