//! One ILA mapping: where an identifier of a SIR prefix currently lives.

use std::fmt;
use std::net::Ipv6Addr;

use serde::{Deserialize, Serialize};

use crate::{sir_to_ila, ChecksumMode, Identifier, IlaError, Locator, SirPrefix};

/// Identifier (within a SIR prefix) → locator of the host that runs the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Mapping {
    /// The tenant network's virtual prefix.
    pub sir: SirPrefix,
    /// The container's identifier (C bit clear: the SIR form).
    pub identifier: Identifier,
    /// The host currently holding the container.
    pub locator: Locator,
    /// How translations for this mapping keep checksums valid.
    #[serde(default)]
    pub mode: ChecksumMode,
}

impl Mapping {
    /// A mapping from its parts.
    pub fn new(
        sir: SirPrefix,
        identifier: Identifier,
        locator: Locator,
        mode: ChecksumMode,
    ) -> Self {
        Self {
            sir,
            identifier,
            locator,
            mode,
        }
    }

    /// The address the container has and peers talk to.
    pub fn sir_address(&self) -> Ipv6Addr {
        self.sir.with_identifier(self.identifier)
    }

    /// The destination address on the wire (after SIR→ILA translation in this mapping's mode).
    pub fn ila_address(&self) -> Result<Ipv6Addr, IlaError> {
        sir_to_ila(self.sir_address(), self.locator, self.mode)
    }
}

impl fmt::Display for Mapping {
    /// `SIR-address -> locator (mode)`, e.g. `2001:db8:ff::3000:1:0:2 -> 2001:db8:1:1::/64 (neutral-map)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} -> {} ({})",
            self.sir_address(),
            self.locator,
            self.mode
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_display_and_serde() {
        let m = Mapping::new(
            "2001:db8:ffff::/64".parse().unwrap(),
            "6000:1:0:2".parse().unwrap(),
            "2001:db8:1:1::/64".parse().unwrap(),
            ChecksumMode::NeutralMap,
        );
        assert_eq!(m.sir_address().to_string(), "2001:db8:ffff:0:6000:1:0:2");
        assert_eq!(
            m.ila_address().unwrap().to_string(),
            "2001:db8:1:1:7000:1:0:efff"
        );
        assert_eq!(
            m.to_string(),
            "2001:db8:ffff:0:6000:1:0:2 -> 2001:db8:1:1::/64 (neutral-map)"
        );
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(
            json,
            r#"{"sir":"2001:db8:ffff::/64","identifier":"6000:1:0:2","locator":"2001:db8:1:1::/64","mode":"neutral-map"}"#
        );
        assert_eq!(serde_json::from_str::<Mapping>(&json).unwrap(), m);
        // The mode defaults to neutral-map when absent.
        let no_mode = r#"{"sir":"2001:db8:ffff::/64","identifier":"6000:1:0:2","locator":"2001:db8:1:1::/64"}"#;
        assert_eq!(serde_json::from_str::<Mapping>(no_mode).unwrap(), m);

        let plain = Mapping {
            mode: ChecksumMode::NoAction,
            ..m
        };
        assert_eq!(
            plain.ila_address().unwrap().to_string(),
            "2001:db8:1:1:6000:1:0:2"
        );
    }
}
