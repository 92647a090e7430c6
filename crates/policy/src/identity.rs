//! Numeric identities and their allocation from label sets.

use std::collections::BTreeMap;
use std::fmt;

use crate::error::IdentityError;
use crate::labels::LabelSet;

/// A numeric security identity: the same label set has the same identity on every host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Identity(pub u32);

impl Identity {
    /// Wildcard in the compiled maps ("any peer identity"); never an identity of a peer.
    pub const ANY: Identity = Identity(0);
    /// The host itself (its own stack, e.g. health checks), as in Cilium.
    pub const HOST: Identity = Identity(1);
    /// Anything outside the network (an address that is neither an endpoint nor the host).
    pub const WORLD: Identity = Identity(2);
    /// First identity handed out for endpoint label sets.
    pub const FIRST_USER: u32 = 256;
    /// Last identity handed out for endpoint label sets.
    pub const LAST_USER: u32 = u32::MAX;

    /// Whether this is a reserved identity (below [`Identity::FIRST_USER`]).
    pub fn is_reserved(self) -> bool {
        self.0 < Self::FIRST_USER
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Identity::ANY => f.write_str("any"),
            Identity::HOST => f.write_str("1 (host)"),
            Identity::WORLD => f.write_str("2 (world)"),
            Identity(n) => write!(f, "{n}"),
        }
    }
}

/// Where identities come from. The agent implements this on top of the mapping store so that
/// every host agrees; [`IdentityTable`] is the deterministic in-memory implementation (and the
/// local cache the store fills through [`IdentityTable::bind`]).
pub trait IdentityAllocator {
    /// The identity of `labels`, if one was allocated.
    fn lookup(&self, labels: &LabelSet) -> Option<Identity>;
    /// The identity of `labels`, allocating a new one if needed.
    fn allocate(&mut self, labels: &LabelSet) -> Result<Identity, IdentityError>;
    /// Forgets `labels` (the last endpoint with them is gone); returns the identity it had.
    fn release(&mut self, labels: &LabelSet) -> Option<Identity>;
}

/// A deterministic identity table: allocation hands out the lowest free user identity.
///
/// Two tables fed the same sequence of calls hold the same bindings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdentityTable {
    by_labels: BTreeMap<LabelSet, Identity>,
    by_id: BTreeMap<Identity, LabelSet>,
}

impl IdentityTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a binding decided elsewhere (e.g. read from the store). Binding the same pair
    /// twice is fine; binding a label set or an identity to something else is an error.
    pub fn bind(&mut self, labels: LabelSet, id: Identity) -> Result<(), IdentityError> {
        if id.is_reserved() {
            return Err(IdentityError::Reserved(id.0));
        }
        if let Some(existing) = self.by_id.get(&id) {
            if *existing == labels {
                return Ok(());
            }
            return Err(IdentityError::Conflict {
                id: id.0,
                existing: existing.to_string(),
                requested: labels.to_string(),
            });
        }
        if let Some(existing) = self.by_labels.get(&labels) {
            return Err(IdentityError::Rebind {
                labels: labels.to_string(),
                existing: existing.0,
                requested: id.0,
            });
        }
        self.by_id.insert(id, labels.clone());
        self.by_labels.insert(labels, id);
        Ok(())
    }

    /// The labels bound to `id`.
    pub fn labels(&self, id: Identity) -> Option<&LabelSet> {
        self.by_id.get(&id)
    }

    /// All bindings in identity order.
    pub fn iter(&self) -> impl Iterator<Item = (Identity, &LabelSet)> {
        self.by_id.iter().map(|(i, l)| (*i, l))
    }

    /// Number of bindings.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    fn lowest_free(&self) -> Option<Identity> {
        let mut want = Identity::FIRST_USER;
        for id in self.by_id.keys() {
            if id.0 > want {
                break;
            }
            if id.0 == want {
                want = want.checked_add(1)?;
            }
        }
        Some(Identity(want))
    }
}

impl IdentityAllocator for IdentityTable {
    fn lookup(&self, labels: &LabelSet) -> Option<Identity> {
        self.by_labels.get(labels).copied()
    }

    fn allocate(&mut self, labels: &LabelSet) -> Result<Identity, IdentityError> {
        if let Some(id) = self.lookup(labels) {
            return Ok(id);
        }
        let id = self.lowest_free().ok_or(IdentityError::Exhausted {
            first: Identity::FIRST_USER,
            last: Identity::LAST_USER,
        })?;
        self.bind(labels.clone(), id)?;
        Ok(id)
    }

    fn release(&mut self, labels: &LabelSet) -> Option<Identity> {
        let id = self.by_labels.remove(labels)?;
        self.by_id.remove(&id);
        Some(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_lowest_free() {
        let a = LabelSet::parse("app=a").unwrap();
        let b = LabelSet::parse("app=b").unwrap();
        let c = LabelSet::parse("app=c").unwrap();
        let mut t = IdentityTable::new();
        assert_eq!(t.allocate(&a).unwrap(), Identity(256));
        assert_eq!(t.allocate(&b).unwrap(), Identity(257));
        assert_eq!(t.allocate(&a).unwrap(), Identity(256));
        assert_eq!(t.release(&a), Some(Identity(256)));
        assert_eq!(t.allocate(&c).unwrap(), Identity(256));
        assert!(matches!(
            t.bind(a.clone(), Identity(257)),
            Err(IdentityError::Conflict { .. })
        ));
        assert!(matches!(
            t.bind(c.clone(), Identity(300)),
            Err(IdentityError::Rebind { .. })
        ));
        assert!(matches!(
            t.bind(a.clone(), Identity(2)),
            Err(IdentityError::Reserved(2))
        ));
        t.bind(a.clone(), Identity(258)).unwrap();
        t.bind(a.clone(), Identity(258)).unwrap();
        assert_eq!(t.lookup(&a), Some(Identity(258)));
        assert_eq!(t.labels(Identity(258)), Some(&a));
    }
}
