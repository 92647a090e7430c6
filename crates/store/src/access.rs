//! Who may write what in etcd: the roles of a secure ilanet cluster.
//!
//! With `--client-cert-auth`, etcd takes the client certificate's common name as the user. Each
//! host `H` is the user `H` with the role `ilanet-host-H`:
//!
//! | range | permission | why |
//! |---|---|---|
//! | `/ilanet/v1/` (prefix) | read | every host lists and watches everything |
//! | `/ilanet/v1/hosts/H/` (prefix) | read + write | its host record and its mappings |
//! | `/ilanet/v1/identities/`, `/ilanet/v1/identity-labels/` (prefixes) | read + write | identity allocation (create-only transactions) |
//!
//! Policies (`/ilanet/v1/policies/`) are read-only for hosts: only the policy administrator
//! [`crate::pki::POLICY_ADMIN_USER`] (role [`POLICY_ADMIN_ROLE`]: read `/ilanet/v1/`, read +
//! write `/ilanet/v1/policies/`) writes them; an agent given that user's certificate
//! (`store.policy_cert`, `store.policy_key`) serves `ilanet policy apply`. A host could still
//! rewrite an identity record; agents do not trust one that disagrees with what the
//! endpoint's own host wrote in its mapping (see the crate docs, "Security").
//!
//! `root` (role `root`) may do everything (compaction, user management, repairs by hand).
//! Leases need no key permission to be granted or kept alive; revoking one needs write
//! permission on every key attached to it, which a host has for its own keys only.

use etcd_client::Permission;

use crate::records::{
    host_prefix, IDENTITIES_PREFIX, IDENTITY_LABELS_PREFIX, KEY_PREFIX, POLICIES_PREFIX,
};
use crate::{Store, StoreError};

/// The etcd role of a host.
pub fn host_role(host: &str) -> String {
    format!("ilanet-host-{host}")
}

/// The etcd role of the policy administrator.
pub const POLICY_ADMIN_ROLE: &str = "ilanet-policy-admin";

/// A role's permissions: (read-write?, key prefix).
pub type Permissions = Vec<(bool, String)>;

/// The permissions of a host's role.
pub fn host_permissions(host: &str) -> Permissions {
    vec![
        (false, KEY_PREFIX.to_string()),
        (true, host_prefix(host)),
        (true, IDENTITIES_PREFIX.to_string()),
        (true, IDENTITY_LABELS_PREFIX.to_string()),
    ]
}

/// The permissions of the policy administrator's role.
pub fn policy_admin_permissions() -> Permissions {
    vec![
        (false, KEY_PREFIX.to_string()),
        (true, POLICIES_PREFIX.to_string()),
    ]
}

fn backend(what: &str) -> impl FnOnce(etcd_client::Error) -> StoreError + '_ {
    move |e| StoreError::Backend(format!("{what}: {e}"))
}

/// A password nobody knows: users authenticate by certificate (etcd wants a password or the
/// no-password option, which etcd 3.4 does not have).
fn random_password() -> Result<String, StoreError> {
    let mut buf = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut buf))
        .map_err(|e| StoreError::Backend(format!("reading /dev/urandom: {e}")))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Creates `root`, the policy administrator and one user and role per host, then enables auth. Run once, as a client
/// whose certificate CN is `root`, on a cluster without auth yet (on an etcd store only).
pub async fn enable_auth(store: &Store, hosts: &[String]) -> Result<(), StoreError> {
    let Store::Etcd(etcd) = store else {
        return Err(StoreError::InvalidArgument(
            "auth is an etcd feature; the embedded store is in-process".into(),
        ));
    };
    let mut c = etcd.client();
    c.user_add(crate::pki::ROOT_USER, random_password()?, None)
        .await
        .map_err(backend("adding user root"))?;
    c.role_add("root")
        .await
        .map_err(backend("adding role root"))?;
    c.user_grant_role(crate::pki::ROOT_USER, "root")
        .await
        .map_err(backend("granting root"))?;
    // (user, role, permissions)
    let mut users: Vec<(String, String, Permissions)> = vec![(
        crate::pki::POLICY_ADMIN_USER.to_string(),
        POLICY_ADMIN_ROLE.to_string(),
        policy_admin_permissions(),
    )];
    for host in hosts {
        crate::records::check_host_name(host)?;
        if host == crate::pki::ROOT_USER || host == crate::pki::POLICY_ADMIN_USER {
            return Err(StoreError::InvalidArgument(format!(
                "host name {host:?} is an administrator's user name"
            )));
        }
        users.push((host.clone(), host_role(host), host_permissions(host)));
    }
    for (user, role, permissions) in users {
        c.role_add(role.as_str())
            .await
            .map_err(backend(&format!("adding role {role}")))?;
        for (write, prefix) in permissions {
            let perm = if write {
                Permission::read_write(prefix.as_str())
            } else {
                Permission::read(prefix.as_str())
            }
            .with_prefix();
            c.role_grant_permission(role.as_str(), perm)
                .await
                .map_err(backend(&format!("granting {prefix} to {role}")))?;
        }
        c.user_add(user.as_str(), random_password()?, None)
            .await
            .map_err(backend(&format!("adding user {user}")))?;
        c.user_grant_role(user.as_str(), role.as_str())
            .await
            .map_err(backend(&format!("granting {role} to {user}")))?;
    }
    c.auth_enable().await.map_err(backend("enabling auth"))?;
    Ok(())
}
