//! Error types of this crate. Every message names the offending value.

use std::fmt;

/// A label, label key or label set that is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LabelError {
    /// A label key does not follow the `[prefix/]name` syntax.
    #[error("invalid label key `{key}`: {reason}")]
    InvalidKey {
        /// The key as given.
        key: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A label value does not follow the value syntax.
    #[error("invalid value `{value}` for label `{key}`: {reason}")]
    InvalidValue {
        /// The key the value belongs to.
        key: String,
        /// The value as given.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A `key=value` item has no `=`.
    #[error("invalid label `{0}`: expected key=value")]
    MissingEquals(String),
    /// The same key appears twice in one label set.
    #[error("label key `{0}` given twice")]
    DuplicateKey(String),
    /// A user label uses the reserved `ilanet.io/` prefix.
    #[error("label key `{0}` is reserved (the `ilanet.io/` prefix is set by ilanet)")]
    Reserved(String),
    /// A value of the tenant label is not a VNID.
    #[error("tenant label value `{0}` is not a VNID (decimal, below 2^28)")]
    BadTenant(String),
}

/// Identity allocation failures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// All user identities are in use.
    #[error("no free identity left (user identities are {first}..={last})")]
    Exhausted {
        /// First user identity.
        first: u32,
        /// Last user identity.
        last: u32,
    },
    /// An identity number below 256 (reserved) or 0 was given for a label set.
    #[error("identity {0} is reserved (user identities start at 256)")]
    Reserved(u32),
    /// The identity is already bound to another label set.
    #[error("identity {id} is already bound to `{existing}`, cannot bind it to `{requested}`")]
    Conflict {
        /// The identity number.
        id: u32,
        /// The label set it is bound to.
        existing: String,
        /// The label set that was asked for.
        requested: String,
    },
    /// The label set is already bound to another identity.
    #[error("labels `{labels}` already have identity {existing}, cannot bind them to {requested}")]
    Rebind {
        /// The label set.
        labels: String,
        /// Its identity.
        existing: u32,
        /// The identity that was asked for.
        requested: u32,
    },
}

/// A policy file that cannot be applied. Nothing of the file is applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct PolicyFileError {
    /// The file name as given by the caller.
    pub file: String,
    /// Index of the YAML document (0-based) when the file holds several, else `None`.
    pub document: Option<usize>,
    /// Path of the offending field inside the document, e.g.
    /// `spec.ingress[0].toPorts[0].ports[1].port`; empty for the whole document.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for PolicyFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(d) = self.document {
            write!(f, ": document {}", d + 1)?;
        }
        if !self.path.is_empty() {
            write!(f, ": {}", self.path)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Compilation failures: the policy set would not fit the maps.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CompileError {
    /// The policy hash map would need more entries than allowed.
    #[error(
        "policy needs more than {limit} identity map entries (at endpoint identity {identity})"
    )]
    TooManyEntries {
        /// The limit that was exceeded.
        limit: usize,
        /// Endpoint identity being compiled when the limit was hit.
        identity: u32,
    },
    /// The CIDR (LPM) map would need more entries than allowed.
    #[error("policy needs more than {limit} CIDR map entries (at endpoint identity {identity})")]
    TooManyCidrEntries {
        /// The limit that was exceeded.
        limit: usize,
        /// Endpoint identity being compiled when the limit was hit.
        identity: u32,
    },
    /// Two identities in the input have the same number.
    #[error("identity {0} is listed twice")]
    DuplicateIdentity(u32),
    /// An endpoint identity is a reserved one (host, world or the wildcard).
    #[error("identity {0} is reserved and cannot be an endpoint identity")]
    ReservedIdentity(u32),
    /// The identity labels carry no valid tenant label.
    #[error("identity {0} has no tenant label")]
    NoTenant(u32),
    /// More rules than a rule id can number.
    #[error("too many rules ({0})")]
    TooManyRules(usize),
}
