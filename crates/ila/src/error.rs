//! The one error type of this crate.

use crate::Identifier;

/// Everything that can go wrong in ILA address handling.
///
/// Each variant names the offending value so that a message is actionable on its own.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IlaError {
    /// A locator or SIR prefix string could not be parsed.
    #[error("invalid /64 prefix `{input}`: {reason}")]
    InvalidPrefix {
        /// The text as given.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An identifier string could not be parsed.
    #[error("invalid identifier `{input}`: {reason}")]
    InvalidIdentifier {
        /// The text as given.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A checksum mode name is not one of the known ones.
    #[error(
        "invalid checksum mode `{input}`: expected one of neutral-map, adj-transport, no-action"
    )]
    InvalidChecksumMode {
        /// The text as given.
        input: String,
    },
    /// A numeric checksum mode (eBPF ABI value) is not 0, 1 or 2.
    #[error("invalid checksum mode value {0}: expected 0 (neutral-map), 1 (adj-transport) or 2 (no-action)")]
    InvalidChecksumModeValue(u8),
    /// A VNID does not fit in 28 bits.
    #[error("VNID {0} out of range: must be below 2^28 (268435456)")]
    VnidOutOfRange(u32),
    /// A locally unique identifier value does not fit in 60 bits.
    #[error("locally unique identifier value {0:#x} out of range: must fit in 60 bits")]
    LuidOutOfRange(u64),
    /// SIR→ILA in neutral-map mode was asked for an identifier whose C bit is already set.
    #[error("identifier {0} already has the C (checksum-neutral) bit set; cannot map it checksum-neutrally again")]
    CBitAlreadySet(Identifier),
    /// ILA→SIR in neutral-map mode was asked for an identifier whose C bit is clear.
    #[error("identifier {0} does not have the C (checksum-neutral) bit set; it was not mapped checksum-neutrally")]
    CBitNotSet(Identifier),
    /// The identifier's low 16 bits are zero, which does not survive a checksum-neutral round trip.
    #[error("identifier {0} has low 16 bits 0x0000, which does not round-trip through checksum-neutral mapping")]
    ZeroLow16(Identifier),
    /// The identifier is already allocated or reserved.
    #[error("address in use: identifier {0} is already allocated")]
    AddressInUse(Identifier),
    /// The identifier does not belong to the allocator it was given to.
    #[error("identifier {identifier} does not belong to this allocator: {reason}")]
    ForeignIdentifier {
        /// The identifier in question.
        identifier: Identifier,
        /// Why it does not belong.
        reason: String,
    },
    /// The allocator has no free identifier left.
    #[error("identifier space exhausted: {0}")]
    Exhausted(String),
    /// An allocator range is empty or reversed or does not fit the identifier field.
    #[error("invalid allocator range {first:#x}..={last:#x}: {reason}")]
    InvalidRange {
        /// First value of the range.
        first: u64,
        /// Last value of the range.
        last: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// A tenant network definition is not valid.
    #[error("tenant '{name}' is not valid: {reason}")]
    InvalidTenant {
        /// The tenant name given.
        name: String,
        /// What is wrong.
        reason: String,
    },
}
