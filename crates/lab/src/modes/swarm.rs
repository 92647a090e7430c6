//! `swarm` mode.

use crate::plan::Plan;
use crate::LabError;
use hostnet::link::Netlink;

/// Builds the hosts and containers of a `swarm` lab (the router is already configured).
pub(crate) fn build(_nl: &Netlink, _plan: &Plan) -> Result<(), LabError> {
    Err(LabError::Invalid(
        "lab mode 'swarm' is not available yet".into(),
    ))
}
