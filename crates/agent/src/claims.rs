//! Which mapping of an address is in force, when every host writes its own keys (pure).
//!
//! The store keeps each host's mappings under that host's prefix, so an address may be claimed
//! by several hosts at once: a move in progress, a race, or a host claiming what is not its
//! own. A claim is **valid** when its locator is the one its host's record announces (for this
//! host: the configured locator); the store already refuses records that name another host
//! than the prefix they are under. The mapping in force is the one valid claim; with none, or
//! with two valid claims from different hosts, no mapping is installed for the address and the
//! keys concerned are named in a warning. So no host can take over another host's live
//! address, and a record written by hand with a wrong locator is never applied.

use std::collections::BTreeMap;
use std::net::Ipv6Addr;

use ila::Locator;
use store::{HostRecord, MappingRecord};

/// Every host's mapping of each address, and the host records to check them against.
#[derive(Debug, Default, Clone)]
pub struct Claims {
    by_sir: BTreeMap<Ipv6Addr, BTreeMap<String, MappingRecord>>,
    hosts: BTreeMap<String, Locator>,
}

/// The mapping in force for one address, and what was wrong with the others.
#[derive(Debug, Default, PartialEq)]
pub struct InForce {
    /// The mapping to install, if exactly one valid claim exists.
    pub mapping: Option<MappingRecord>,
    /// Claims ignored, each naming its store key.
    pub warnings: Vec<String>,
}

impl Claims {
    /// Starts over from a snapshot's mappings and host records.
    pub fn reset<'a>(
        &mut self,
        mappings: impl IntoIterator<Item = &'a MappingRecord>,
        hosts: impl IntoIterator<Item = &'a HostRecord>,
    ) {
        self.by_sir.clear();
        self.hosts = hosts
            .into_iter()
            .map(|h| (h.name.clone(), h.locator))
            .collect();
        for m in mappings {
            self.put(m.clone());
        }
    }

    /// A host's mapping was written.
    pub fn put(&mut self, rec: MappingRecord) {
        self.by_sir
            .entry(rec.sir_address())
            .or_default()
            .insert(rec.host.clone(), rec);
    }

    /// A host's mapping was deleted.
    pub fn delete(&mut self, host: &str, sir: Ipv6Addr) {
        if let Some(m) = self.by_sir.get_mut(&sir) {
            m.remove(host);
            if m.is_empty() {
                self.by_sir.remove(&sir);
            }
        }
    }

    /// `host`'s mapping of `sir`, if it has one in the store.
    pub fn get(&self, host: &str, sir: Ipv6Addr) -> Option<&MappingRecord> {
        self.by_sir.get(&sir).and_then(|m| m.get(host))
    }

    /// Whether `host` has a mapping of `sir` in the store.
    pub fn holds(&self, host: &str, sir: Ipv6Addr) -> bool {
        self.by_sir.get(&sir).is_some_and(|m| m.contains_key(host))
    }

    /// Whether a host other than `host` has a mapping of `sir` in the store.
    pub fn claimed_by_another(&self, host: &str, sir: Ipv6Addr) -> bool {
        self.by_sir
            .get(&sir)
            .is_some_and(|m| m.keys().any(|h| h != host))
    }

    /// The addresses `host` claims.
    pub fn of_host(&self, host: &str) -> Vec<Ipv6Addr> {
        self.by_sir
            .iter()
            .filter(|(_, m)| m.contains_key(host))
            .map(|(sir, _)| *sir)
            .collect()
    }

    /// Every claimed address.
    pub fn addresses(&self) -> Vec<Ipv6Addr> {
        self.by_sir.keys().copied().collect()
    }

    /// The addresses claimed with security identity `id` (by any host).
    pub fn addresses_with_identity(&self, id: u32) -> Vec<Ipv6Addr> {
        self.by_sir
            .iter()
            .filter(|(_, claims)| claims.values().any(|r| r.identity == id))
            .map(|(sir, _)| *sir)
            .collect()
    }

    /// A host record was written; returns the addresses whose claims it may change.
    pub fn put_host(&mut self, h: &HostRecord) -> Vec<Ipv6Addr> {
        self.hosts.insert(h.name.clone(), h.locator);
        self.of_host(&h.name)
    }

    /// A host record was deleted; returns the addresses whose claims it may change.
    pub fn delete_host(&mut self, name: &str) -> Vec<Ipv6Addr> {
        self.hosts.remove(name);
        self.of_host(name)
    }

    /// The mapping in force for `sir`, as seen by host `me` whose locator is `my_locator`.
    pub fn in_force(&self, sir: Ipv6Addr, me: &str, my_locator: Locator) -> InForce {
        let mut out = InForce::default();
        let Some(claims) = self.by_sir.get(&sir) else {
            return out;
        };
        let mut valid: Vec<&MappingRecord> = Vec::new();
        for (host, rec) in claims {
            let key = store::mapping_key(host, sir);
            let announced = if host == me {
                Some(my_locator)
            } else {
                self.hosts.get(host).copied()
            };
            match announced {
                Some(l) if l == rec.locator => valid.push(rec),
                Some(l) => out.warnings.push(format!(
                    "ignoring store record {key}: it claims locator {} but host '{host}' \
                     announces {l}",
                    rec.locator
                )),
                None => out.warnings.push(format!(
                    "ignoring store record {key}: host '{host}' has no host record to check \
                     its locator {} against",
                    rec.locator
                )),
            }
        }
        match valid.as_slice() {
            [] => {}
            [one] => out.mapping = Some((*one).clone()),
            many => out.warnings.push(format!(
                "address {sir} is claimed by {} hosts ({}): none installed until one lets go",
                many.len(),
                many.iter()
                    .map(|r| store::mapping_key(&r.host, sir))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ila::{ChecksumMode, Identifier, SirPrefix};

    const LA: Locator = Locator(0x2001_0db8_0001_0001);
    const LB: Locator = Locator(0x2001_0db8_0001_0002);

    fn rec(host: &str, locator: Locator) -> MappingRecord {
        MappingRecord {
            endpoint: "web".into(),
            host: host.into(),
            sir: SirPrefix(0x2001_0db8_00ff_0000),
            identifier: Identifier(0x3000_0001_0000_0002),
            locator,
            mode: ChecksumMode::NeutralMap,
            identity: 0,
            labels_sha256: None,
        }
    }

    fn host(name: &str, locator: Locator) -> HostRecord {
        HostRecord {
            name: name.into(),
            locator,
            underlay: Ipv6Addr::LOCALHOST,
        }
    }

    #[test]
    fn one_valid_claim_is_in_force_and_bad_ones_are_named() {
        let mut c = Claims::default();
        let b = rec("b", LB);
        let sir = b.sir_address();
        c.reset([&b], [&host("b", LB)]);
        assert_eq!(c.in_force(sir, "a", LA).mapping, Some(b.clone()));
        // Host b's record announcing another locator than its mapping: ignored, by key.
        c.put_host(&host("b", LA));
        let f = c.in_force(sir, "a", LA);
        assert_eq!(f.mapping, None);
        let key = format!("/ilanet/v1/hosts/b/mappings/{sir}");
        assert!(f.warnings[0].contains(&key), "{:?}", f.warnings);
        // No host record at all: cannot be checked, ignored.
        c.delete_host("b");
        assert!(c.in_force(sir, "a", LA).warnings[0].contains("no host record"));
        // Our own mapping is checked against our configured locator.
        let mine = rec("a", LA);
        c.reset([&mine], []);
        assert_eq!(c.in_force(sir, "a", LA).mapping, Some(mine));
        assert_eq!(c.in_force(sir, "a", LB).mapping, None);
    }

    #[test]
    fn two_hosts_claiming_an_address_install_neither_until_one_lets_go() {
        let mut c = Claims::default();
        let (a, b) = (rec("a", LA), rec("b", LB));
        let sir = a.sir_address();
        c.reset([&a, &b], [&host("a", LA), &host("b", LB)]);
        let f = c.in_force(sir, "c", LB);
        assert_eq!(f.mapping, None);
        assert!(
            f.warnings[0].contains("claimed by 2 hosts"),
            "{:?}",
            f.warnings
        );
        assert!(c.holds("a", sir) && c.holds("b", sir));
        c.delete("a", sir);
        assert_eq!(c.in_force(sir, "c", LB).mapping, Some(b));
        c.delete("b", sir);
        assert_eq!(c.in_force(sir, "c", LB), InForce::default());
        assert!(c.addresses().is_empty());
    }
}
