//! Locator reachability over BGP: the host's speaker announces its locator /64 (next hop: its
//! underlay address) and installs the locators it learns into the host's routing table with
//! ilanet's own route protocol number, removing them on withdraw or when a session is lost
//! (after the graceful-restart window, which the speaker keeps stale routes for).
//!
//! Routes installed by a previous run are kept at start (traffic keeps flowing across an agent
//! restart) and removed after the graceful-restart time unless re-learned by then.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv6Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bgp::{BestChange, Speaker, SpeakerConfig, SpeakerStatus};
use hostnet::route::{RouteTable, ILANET_ROUTE_PROTOCOL};
use ila::Locator;
use ipnet::Ipv6Net;
use serde::{Deserialize, Serialize};

use crate::{lock, AgentError};

/// How long routes left by a previous run wait to be learned again when graceful restart is
/// off.
const STALE_KERNEL_ROUTES: Duration = Duration::from_secs(120);

/// One best route and what the kernel holds for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteRow {
    /// Destination (a locator /64).
    pub prefix: String,
    /// BGP next hop.
    pub next_hop: Ipv6Addr,
    /// Where it was learned (peer address).
    pub peer: String,
    /// AS path.
    pub as_path: Vec<u32>,
    /// Gateway of the kernel route installed for it, if installed.
    pub installed_via: Option<Ipv6Addr>,
}

/// Reply of `bgp status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BgpStatus {
    /// Host name.
    pub host: String,
    /// The speaker's state.
    pub speaker: SpeakerStatus,
    /// Locator routes installed in the kernel (`proto 200`).
    pub kernel_routes: usize,
}

/// The host's BGP speaker and the kernel routes it maintains.
pub struct Routing {
    host: String,
    speaker: Speaker,
    /// Kernel routes installed: prefix → gateway.
    installed: Arc<Mutex<BTreeMap<Ipv6Net, Ipv6Addr>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Routing {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn locator_net(l: Locator) -> Result<Ipv6Net, AgentError> {
    Ipv6Net::new(l.to_addr(), 64).map_err(|e| AgentError::Invalid(format!("locator {l}: {e}")))
}

impl Routing {
    /// Starts the speaker with its sockets inside namespace `netns` (the host's, a name or a
    /// path; one process may serve several emulated hosts), announces `locator` via
    /// `underlay`, and keeps the routing table of `netns` equal to the best routes learned.
    pub async fn start(
        host: &str,
        netns: &str,
        cfg: SpeakerConfig,
        locator: Locator,
        underlay: Ipv6Addr,
    ) -> Result<Arc<Self>, AgentError> {
        let own = locator_net(locator)?;
        let table = RouteTable::open(netns)?;
        let left: Vec<_> = table.list(ILANET_ROUTE_PROTOCOL).await?;
        let grace = cfg
            .graceful_restart_time
            .map(|s| Duration::from_secs(u64::from(s)))
            .unwrap_or(STALE_KERNEL_ROUTES);
        let (speaker, mut changes) = Speaker::start_with(cfg, sockets_in(netns))
            .await
            .map_err(|e| AgentError::Invalid(format!("host '{host}': {e}")))?;
        speaker.announce(own, underlay).await;
        let installed: Arc<Mutex<BTreeMap<Ipv6Net, Ipv6Addr>>> = Arc::default();
        let mut stale: BTreeSet<Ipv6Net> = left
            .iter()
            .filter_map(|r| Ipv6Net::new(r.dest, r.plen).ok())
            .collect();
        if !stale.is_empty() {
            log::info!(
                "host {host}: {} locator routes from before the restart kept for {grace:?} unless learned again",
                stale.len()
            );
        }
        let task = {
            let host = host.to_string();
            let installed = Arc::clone(&installed);
            tokio::spawn(async move {
                let sweep = tokio::time::sleep(grace);
                tokio::pin!(sweep);
                let mut swept = stale.is_empty();
                loop {
                    tokio::select! {
                        change = changes.recv() => {
                            let Some(change) = change else { break };
                            apply(&host, &table, &installed, own, change, &mut stale).await;
                        }
                        _ = &mut sweep, if !swept => {
                            swept = true;
                            for net in std::mem::take(&mut stale) {
                                log::info!("host {host}: {net} not learned again; removed");
                                if let Err(e) = table.delete(net.addr(), net.prefix_len(), ILANET_ROUTE_PROTOCOL).await {
                                    log::error!("host {host}: {e}");
                                }
                            }
                        }
                    }
                }
            })
        };
        Ok(Arc::new(Routing {
            host: host.to_string(),
            speaker,
            installed,
            task,
        }))
    }

    /// The speaker's state.
    pub fn status(&self) -> BgpStatus {
        BgpStatus {
            host: self.host.clone(),
            speaker: self.speaker.status(),
            kernel_routes: lock(&self.installed).len(),
        }
    }

    /// The best routes and what the kernel holds for each.
    pub fn routes(&self) -> Vec<RouteRow> {
        let installed = lock(&self.installed);
        self.speaker
            .routes()
            .into_iter()
            .map(|b| RouteRow {
                prefix: b.prefix.to_string(),
                next_hop: b.next_hop,
                peer: b.peer.to_string(),
                as_path: b
                    .attrs
                    .as_path
                    .iter()
                    .flat_map(|seg| match seg {
                        bgp::message::AsSegment::Sequence(v) | bgp::message::AsSegment::Set(v) => {
                            v.clone()
                        }
                    })
                    .collect(),
                installed_via: installed.get(&b.prefix).copied(),
            })
            .collect()
    }
}

/// A socket factory for the speaker that makes each socket inside namespace `netns` (the
/// thread switches in and back at once; the socket stays in the namespace it was made in).
pub(crate) fn sockets_in(netns: &str) -> bgp::SocketFactory {
    let netns = netns.to_string();
    Arc::new(move |v6| {
        hostnet::netns::run_in(&netns, || {
            let s = if v6 {
                tokio::net::TcpSocket::new_v6()
            } else {
                tokio::net::TcpSocket::new_v4()
            };
            s.map_err(|source| hostnet::NetError::Os {
                what: format!("making a BGP socket in namespace '{netns}'"),
                source,
            })
        })
        .map_err(std::io::Error::other)
    })
}

/// Turns one best-route change into a kernel route change.
async fn apply(
    host: &str,
    table: &RouteTable,
    installed: &Mutex<BTreeMap<Ipv6Net, Ipv6Addr>>,
    own: Ipv6Net,
    change: BestChange,
    stale: &mut BTreeSet<Ipv6Net>,
) {
    match change {
        BestChange::Changed(best) => {
            if best.prefix == own {
                return;
            }
            stale.remove(&best.prefix);
            let net = best.prefix;
            match table
                .replace(
                    net.addr(),
                    net.prefix_len(),
                    best.next_hop,
                    ILANET_ROUTE_PROTOCOL,
                )
                .await
            {
                Ok(via) => {
                    log::info!(
                        "host {host}: {net} via {via} (next hop {}, learned from {})",
                        best.next_hop,
                        best.peer
                    );
                    lock(installed).insert(net, via);
                }
                Err(e) => log::error!("host {host}: {e}"),
            }
        }
        BestChange::Removed { prefix } => {
            if prefix == own {
                return;
            }
            stale.remove(&prefix);
            lock(installed).remove(&prefix);
            match table
                .delete(prefix.addr(), prefix.prefix_len(), ILANET_ROUTE_PROTOCOL)
                .await
            {
                Ok(()) => log::info!("host {host}: {prefix} withdrawn"),
                Err(e) => log::error!("host {host}: {e}"),
            }
        }
    }
}
