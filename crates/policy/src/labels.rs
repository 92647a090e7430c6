//! Labels (`key=value`) and canonical sorted label sets.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use ila::Vnid;

use crate::error::LabelError;

/// Prefix of label keys that ilanet sets itself; users may not set them.
pub const RESERVED_PREFIX: &str = "ilanet.io/";

/// The reserved label carrying an endpoint's tenant (VNID in decimal). It is part of every
/// endpoint's identity labels, and naming it in a peer selector is how a policy names another
/// tenant.
pub const TENANT_LABEL: &str = "ilanet.io/tenant";

const MAX_NAME: usize = 63;
const MAX_PREFIX: usize = 253;

fn is_name(s: &str) -> Result<(), &'static str> {
    if s.is_empty() {
        return Err("name part is empty");
    }
    if s.len() > MAX_NAME {
        return Err("name part is longer than 63 characters");
    }
    let b = s.as_bytes();
    if !b[0].is_ascii_alphanumeric() || !b[b.len() - 1].is_ascii_alphanumeric() {
        return Err("must start and end with a letter or digit");
    }
    if !b
        .iter()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
    {
        return Err("only letters, digits, '-', '_' and '.' are allowed");
    }
    Ok(())
}

fn is_dns_subdomain(s: &str) -> Result<(), &'static str> {
    if s.is_empty() || s.len() > MAX_PREFIX {
        return Err("prefix must be 1 to 253 characters");
    }
    for part in s.split('.') {
        let b = part.as_bytes();
        if b.is_empty()
            || !b[0].is_ascii_alphanumeric()
            || !b[b.len() - 1].is_ascii_alphanumeric()
            || !b
                .iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        {
            return Err("prefix must be a lowercase DNS name");
        }
    }
    Ok(())
}

/// Checks a label key: `[prefix/]name`, Kubernetes syntax (prefix a lowercase DNS name of at
/// most 253 characters, name 1–63 characters of letters, digits, `-`, `_`, `.`, starting and
/// ending alphanumeric).
pub(crate) fn validate_key(key: &str) -> Result<(), LabelError> {
    let bad = |reason| LabelError::InvalidKey {
        key: key.to_string(),
        reason,
    };
    match key.split_once('/') {
        Some((prefix, name)) => {
            is_dns_subdomain(prefix).map_err(bad)?;
            is_name(name).map_err(bad)
        }
        None => is_name(key).map_err(bad),
    }
}

/// Checks a label value: empty, or 1–63 characters of letters, digits, `-`, `_`, `.`, starting
/// and ending alphanumeric. Values of [`TENANT_LABEL`] must be a VNID in canonical decimal.
pub(crate) fn validate_value(key: &str, value: &str) -> Result<(), LabelError> {
    if !value.is_empty() {
        is_name(value).map_err(|reason| LabelError::InvalidValue {
            key: key.to_string(),
            value: value.to_string(),
            reason,
        })?;
    }
    if key == TENANT_LABEL {
        parse_tenant(value)?;
    }
    Ok(())
}

/// Parses a tenant label value (canonical decimal VNID).
pub(crate) fn parse_tenant(value: &str) -> Result<Vnid, LabelError> {
    let bad = || LabelError::BadTenant(value.to_string());
    if value.is_empty() || (value.len() > 1 && value.starts_with('0')) {
        return Err(bad());
    }
    if !value.bytes().all(|c| c.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u32 = value.parse().map_err(|_| bad())?;
    Vnid::new(n).map_err(|_| bad())
}

/// A sorted set of labels with unique keys: the canonical input of identity allocation.
///
/// The canonical string form is `key=value` items sorted by key and joined with `,`; it is what
/// [`Display`](fmt::Display) prints and what [`FromStr`] (and [`LabelSet::parse`]) reads back.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LabelSet {
    labels: BTreeMap<String, String>,
}

impl LabelSet {
    /// The empty label set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses `k=v,k2=v2` (whitespace around items is ignored; an empty string is the empty
    /// set). Keys and values are validated; reserved keys are refused (see
    /// [`LabelSet::parse_identity`] for sets that contain the tenant label).
    pub fn parse(s: &str) -> Result<Self, LabelError> {
        let set = Self::parse_any(s)?;
        set.check_user()?;
        Ok(set)
    }

    /// Parses the canonical form of an identity label set, which may contain [`TENANT_LABEL`]
    /// (but no other reserved key).
    pub fn parse_identity(s: &str) -> Result<Self, LabelError> {
        let set = Self::parse_any(s)?;
        for k in set.labels.keys() {
            if k.starts_with(RESERVED_PREFIX) && k != TENANT_LABEL {
                return Err(LabelError::Reserved(k.clone()));
            }
        }
        Ok(set)
    }

    fn parse_any(s: &str) -> Result<Self, LabelError> {
        let mut set = Self::new();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (k, v) = item
                .split_once('=')
                .ok_or_else(|| LabelError::MissingEquals(item.to_string()))?;
            let (k, v) = (k.trim(), v.trim());
            validate_key(k)?;
            validate_value(k, v)?;
            if set.labels.insert(k.to_string(), v.to_string()).is_some() {
                return Err(LabelError::DuplicateKey(k.to_string()));
            }
        }
        Ok(set)
    }

    /// Builds a user label set from pairs (validated; reserved keys refused; duplicate keys
    /// refused).
    pub fn from_pairs<K: AsRef<str>, V: AsRef<str>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Self, LabelError> {
        let mut set = Self::new();
        for (k, v) in pairs {
            let (k, v) = (k.as_ref(), v.as_ref());
            validate_key(k)?;
            validate_value(k, v)?;
            if set.labels.insert(k.to_string(), v.to_string()).is_some() {
                return Err(LabelError::DuplicateKey(k.to_string()));
            }
        }
        set.check_user()?;
        Ok(set)
    }

    fn check_user(&self) -> Result<(), LabelError> {
        match self.labels.keys().find(|k| k.starts_with(RESERVED_PREFIX)) {
            Some(k) => Err(LabelError::Reserved(k.clone())),
            None => Ok(()),
        }
    }

    /// The identity label set of an endpoint of `tenant` with these user labels: these labels
    /// plus `TENANT_LABEL=<vnid>` (replacing any tenant label already present).
    pub fn with_tenant(&self, tenant: Vnid) -> LabelSet {
        let mut out = self.clone();
        out.labels
            .insert(TENANT_LABEL.to_string(), tenant.get().to_string());
        out
    }

    /// The tenant named by the [`TENANT_LABEL`] of this set, if any.
    pub fn tenant(&self) -> Option<Vnid> {
        self.labels
            .get(TENANT_LABEL)
            .and_then(|v| parse_tenant(v).ok())
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.labels.get(key).map(String::as_str)
    }

    /// Whether `key` is present.
    pub fn contains_key(&self, key: &str) -> bool {
        self.labels.contains_key(key)
    }

    /// Labels in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.labels.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Number of labels.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

impl fmt::Display for LabelSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (k, v)) in self.labels.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{k}={v}")?;
        }
        Ok(())
    }
}

impl FromStr for LabelSet {
    type Err = LabelError;
    /// Same as [`LabelSet::parse_identity`], so that the canonical form of any label set this
    /// crate produces reads back.
    fn from_str(s: &str) -> Result<Self, LabelError> {
        Self::parse_identity(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_sorted_roundtrip() {
        let s = LabelSet::parse(" tier=db , app=web,example.com/x=").unwrap();
        assert_eq!(s.to_string(), "app=web,example.com/x=,tier=db");
        assert_eq!(s.to_string().parse::<LabelSet>().unwrap(), s);
        let t = s.with_tenant(Vnid::new(7).unwrap());
        assert_eq!(
            t.to_string(),
            "app=web,example.com/x=,ilanet.io/tenant=7,tier=db"
        );
        assert_eq!(t.tenant(), Some(Vnid::new(7).unwrap()));
        assert_eq!(t.to_string().parse::<LabelSet>().unwrap(), t);
    }

    #[test]
    fn invalid_labels() {
        assert!(matches!(
            LabelSet::parse("app"),
            Err(LabelError::MissingEquals(_))
        ));
        assert!(matches!(
            LabelSet::parse("a=b,a=c"),
            Err(LabelError::DuplicateKey(_))
        ));
        assert!(matches!(
            LabelSet::parse("-a=b"),
            Err(LabelError::InvalidKey { .. })
        ));
        assert!(matches!(
            LabelSet::parse("Ex.com/a=b"),
            Err(LabelError::InvalidKey { .. })
        ));
        assert!(matches!(
            LabelSet::parse("a=b c"),
            Err(LabelError::InvalidValue { .. })
        ));
        assert!(matches!(
            LabelSet::parse("a=b;c"),
            Err(LabelError::InvalidValue { .. })
        ));
        assert!(matches!(
            LabelSet::parse(&format!("a={}", "x".repeat(64))),
            Err(LabelError::InvalidValue { .. })
        ));
        assert!(matches!(
            LabelSet::parse("ilanet.io/tenant=3"),
            Err(LabelError::Reserved(_))
        ));
        assert!(matches!(
            LabelSet::parse_identity("ilanet.io/tenant=03"),
            Err(LabelError::BadTenant(_))
        ));
        assert!(matches!(
            LabelSet::parse_identity("ilanet.io/tenant=268435456"),
            Err(LabelError::BadTenant(_))
        ));
        assert!(matches!(
            LabelSet::parse_identity("ilanet.io/other=1"),
            Err(LabelError::Reserved(_))
        ));
        assert!(LabelSet::parse("").unwrap().is_empty());
    }
}
