//! Pure ILA (Identifier-Locator Addressing) arithmetic for ilanet: locators, SIR prefixes,
//! identifier formats and VNIDs, checksum-neutral SIR⇄ILA translation, mappings and identifier
//! allocation. No I/O, no unsafe: everything here is tested without root.

#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod addr;
mod alloc;
mod csum;
mod error;
mod mapping;
mod tenant;

pub use addr::{Identifier, IdentifierType, Locator, SirPrefix, Vnid};
pub use alloc::IdentifierAllocator;
pub use csum::{
    ila_to_sir, neutral_adjustment, ones_complement_add, ones_complement_sum16, sir_to_ila,
    ChecksumMode,
};
pub use error::IlaError;
pub use mapping::Mapping;
pub use tenant::TenantNetwork;
