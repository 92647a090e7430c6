//! Pure identity-based policy for ilanet: labels and identities, tenant isolation,
//! CiliumNetworkPolicy-shaped policy files (JSON and YAML), a reference evaluator of the
//! semantics, and compilation into the fixed-layout map entries the eBPF programs look up in
//! O(1) per packet.
//!
//! No I/O, no kernel, no unsafe: everything here is tested without root.
//!
//! # Semantics in one page
//!
//! * Every endpoint belongs to one tenant (a 28-bit [`Vnid`](ila::Vnid)) and carries user labels.
//!   Its *identity labels* are the user labels plus the reserved label
//!   [`TENANT_LABEL`]`=<vnid>`; the sorted identity label set maps to a numeric [`Identity`].
//! * A policy belongs to one tenant. Its `endpointSelector` only selects endpoints of that tenant.
//!   A peer selector (`fromEndpoints`/`toEndpoints`) only matches endpoints of the policy's tenant
//!   **unless the selector itself names [`TENANT_LABEL`]** (in `matchLabels` or
//!   `matchExpressions`): that is how a policy explicitly names another tenant.
//! * Per endpoint and direction: deny rules beat allow rules; if no rule matches, the endpoint is
//!   *enforced* (default deny) in that direction once a selecting policy has a rule for that
//!   direction (unless the policy sets `enableDefaultDeny` false for it); an endpoint that is not
//!   enforced allows everything except endpoints of other tenants (tenant isolation).
//! * A packet from endpoint A to endpoint B passes only if A's egress and B's ingress both allow.
//!   Cross-tenant traffic therefore needs an explicit allow on both sides.
//! * Peers that are not endpoints: the host (identity [`Identity::HOST`], entity `host`) and
//!   external addresses (identity [`Identity::WORLD`]; entities `world`, CIDR rules). CIDR rules
//!   only ever match external addresses, never endpoints or the host.
//! * Among the matching rules, the reported rule is the lowest [`RuleId`] among deny rules, else
//!   the lowest among allow rules. Rule ids number the rules of the policy list in order.

#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod abi;
mod compile;
mod error;
mod eval;
mod file;
mod identity;
mod labels;
mod limits;
mod model;
mod selector;
pub mod sync;

pub use compile::{compile, CompileLimits, CompiledPolicy, LookupPeer};
pub use error::{CompileError, IdentityError, LabelError, PolicyFileError};
pub use eval::{Decision, Endpoint, EndpointId, Evaluator, Explanation, FlowPeer, Reason, Verdict};
pub use file::{parse_policy_file, FileFormat, MAX_PORT_RANGE};
pub use identity::{Identity, IdentityAllocator, IdentityTable};
pub use labels::{LabelSet, RESERVED_PREFIX, TENANT_LABEL};
pub use limits::{
    MAX_CIDRS_PER_RULE, MAX_DEPTH, MAX_FILE_BYTES, MAX_LABELS_PER_SELECTOR, MAX_NODES,
    MAX_POLICIES_PER_FILE, MAX_PORTS_PER_RULE, MAX_RULES_PER_POLICY, MAX_SELECTORS_PER_RULE,
    MAX_SPECS_PER_POLICY, MAX_VALUES_PER_EXPRESSION,
};
pub use model::{
    Cidr, CidrRule, Direction, Entity, Peers, Policy, PolicySpec, PortKey, PortRule, Protocol,
    Rule, RuleId, RuleRef, Section,
};
pub use selector::{Operator, Requirement, Selector};
