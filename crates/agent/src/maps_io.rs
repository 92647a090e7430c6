//! Writes reconciliation results into a host's maps: the one place the agent calls the map API.

use dataplane::{DataplaneError, HostMaps};

use crate::policy_sync::{PolicyOps, PolicyView, PolicyWrite};
use crate::reconcile::{Current, Ops};

/// Reads everything the mapping reconciliation compares against.
pub fn current(maps: &HostMaps) -> Result<Current, DataplaneError> {
    Ok(Current {
        out: maps.out_entries()?,
        inbound: maps.in_entries()?,
        ipcache: maps.ipcache()?,
        endpoints: maps.endpoints()?,
    })
}

/// Applies mapping operations. Writes go before removals so that a moved entry never leaves a
/// gap.
pub fn apply(maps: &mut HostMaps, ops: &Ops) -> Result<(), DataplaneError> {
    for (k, v) in &ops.ipcache_put {
        maps.insert_ipcache(*k, v)?;
    }
    for (k, v) in &ops.ep_put {
        maps.insert_endpoint(*k, v)?;
    }
    for (k, v) in &ops.out_put {
        maps.insert_out(*k, v)?;
    }
    for (k, v) in &ops.in_put {
        maps.insert_in(*k, v)?;
    }
    for k in &ops.out_del {
        maps.remove_out(*k)?;
    }
    for k in &ops.in_del {
        maps.remove_in(*k)?;
    }
    for k in &ops.ep_del {
        maps.remove_endpoint(*k)?;
    }
    for k in &ops.ipcache_del {
        maps.remove_ipcache(*k)?;
    }
    Ok(())
}

/// Makes the policy maps equal to the view's compilation (mark and sweep against the maps), in
/// the one safe order of [`PolicyOps::ordered`].
pub fn sync_policy(maps: &mut HostMaps, view: &PolicyView) -> Result<PolicyOps, DataplaneError> {
    let ops = view.ops(
        &maps.policy_eps()?,
        &maps.policy_entries()?,
        &maps.cidr_entries()?,
    );
    for w in ops.ordered() {
        match w {
            PolicyWrite::Rule(k, v) => maps.insert_policy(&k, &v)?,
            PolicyWrite::Cidr(k, v) => maps.insert_cidr(&k, &v)?,
            PolicyWrite::Endpoint(k, v) => maps.insert_policy_ep(k, &v)?,
            PolicyWrite::RemoveRule(k) => maps.remove_policy(&k)?,
            PolicyWrite::RemoveCidr(k) => maps.remove_cidr(&k)?,
            PolicyWrite::RemoveEndpoint(k) => maps.remove_policy_ep(k)?,
        }
    }
    Ok(ops)
}
