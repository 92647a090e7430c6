//! The thin kernel layer that hosts and endpoints are built with: named network namespaces
//! (compatible with `ip netns`), and links, addresses and routes through rtnetlink inside them.
//! Used by the lab and by the agent; everything here needs root.

pub mod evpn;
pub mod link;
pub mod netns;
pub mod route;

use std::path::PathBuf;

/// What can go wrong touching namespaces, links and routes.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The request itself is wrong.
    #[error("{0}")]
    Invalid(String),
    /// A namespace with this name exists already (and is not ours to adopt).
    #[error("network namespace '{0}' already exists")]
    NetnsExists(String),
    /// A link is missing.
    #[error("no interface '{link}' in namespace '{netns}'")]
    NoSuchLink {
        /// Interface name.
        link: String,
        /// Namespace.
        netns: String,
    },
    /// A path is not usable.
    #[error("bad path {0}")]
    BadPath(PathBuf),
    /// A system call failed.
    #[error("{what}: {source}")]
    Os {
        /// What was being done.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A netlink request failed.
    #[error("{what}: {source}")]
    Netlink {
        /// What was being done.
        what: String,
        /// The netlink error.
        source: Box<rtnetlink::Error>,
    },
}
