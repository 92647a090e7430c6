//! Tenant networks: a VNID and the SIR prefix its containers use.

use std::net::Ipv6Addr;

use serde::{Deserialize, Serialize};

use crate::{Identifier, IdentifierType, IlaError, SirPrefix, Vnid};

/// A tenant's virtual network. Its containers' identifiers carry the VNID (ILA identifier type
/// "VNID for IPv6 unicast"), so a receiving host learns the tenant from the packet alone.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TenantNetwork {
    /// Tenant name (`a-z 0-9 -`).
    pub name: String,
    /// The network's 28-bit VNID.
    pub vnid: Vnid,
    /// The SIR prefix its containers use.
    pub sir: SirPrefix,
}

impl TenantNetwork {
    /// Checks the name and returns the network.
    pub fn new(name: &str, vnid: Vnid, sir: SirPrefix) -> Result<Self, IlaError> {
        let ok = !name.is_empty()
            && name.len() <= 32
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !ok {
            return Err(IlaError::InvalidTenant {
                name: name.to_string(),
                reason: "use 1 to 32 characters of a-z, 0-9 and '-'".into(),
            });
        }
        Ok(Self {
            name: name.to_string(),
            vnid,
            sir,
        })
    }

    /// Whether an identifier belongs to this network (VNID type and this VNID).
    pub fn owns(&self, id: Identifier) -> bool {
        id.id_type() == IdentifierType::VnidIpv6 && id.vnid() == Some(self.vnid)
    }

    /// The SIR address of an identifier in this network.
    pub fn address(&self, id: Identifier) -> Ipv6Addr {
        self.sir.with_identifier(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_names_and_ownership() {
        let sir = SirPrefix::from_addr("fd00:1::".parse().expect("addr"));
        let v1 = Vnid::new(1).expect("vnid");
        let v2 = Vnid::new(2).expect("vnid");
        let t = TenantNetwork::new("research", v1, sir).expect("tenant");
        assert!(t.owns(Identifier::new_vnid(IdentifierType::VnidIpv6, v1, 5)));
        assert!(!t.owns(Identifier::new_vnid(IdentifierType::VnidIpv6, v2, 5)));
        assert!(!t.owns(Identifier::new_luid(5).expect("luid")));
        let err = TenantNetwork::new("Bad Name", v1, sir).expect_err("bad");
        assert!(err.to_string().contains("Bad Name"), "{err}");
    }
}
