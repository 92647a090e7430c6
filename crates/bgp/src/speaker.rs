//! The tokio layer: a [`Speaker`] owns N peers, their connections and timers, and the Loc-RIB.
//!
//! One task per peer drives that peer's [`Session`]; a listener task hands accepted
//! connections to the peer whose address they come from (others are closed at once). Writes
//! go through a bounded per-connection queue so a peer that stops reading cannot stall the
//! timers; reads are at most [`READ_CHUNK`] bytes at a time.

use crate::codec;
use crate::evpn::{BestEvpnRoute, EvpnChange, EvpnNlri, EvpnRoute};
use crate::fsm::{
    resolve_collision, Collision, Input, Output, Session, SessionConfig, SessionStatus, State,
};
use crate::message::{Family, Notification};
use crate::rib::{BestChange, BestRoute, LocRib, PeerKey};
use ipnet::Ipv6Net;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Bytes read from a socket at a time (one maximal BGP message).
pub const READ_CHUNK: usize = codec::MAX_MESSAGE_LEN;
/// Messages queued for one connection before it is considered stuck and closed.
const WRITE_QUEUE: usize = 1024;
/// Commands queued per peer task.
const CMD_QUEUE: usize = 256;
/// Best-route changes queued for the consumer (the peer tasks wait when it is full).
pub const CHANGES_QUEUE: usize = 8192;

fn default_port() -> u16 {
    179
}
fn default_hold() -> u16 {
    90
}
fn default_connect_retry() -> u64 {
    5
}
fn default_max_prefixes() -> usize {
    10_000
}
fn default_families() -> Vec<Family> {
    vec![Family::Ipv6Unicast]
}

/// One configured neighbour.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerConfig {
    /// The neighbour's address; incoming connections are matched on it.
    pub address: IpAddr,
    /// The neighbour's AS (our own AS for iBGP).
    pub remote_as: u32,
    /// Only accept its connections, never connect.
    #[serde(default)]
    pub passive: bool,
    /// Hold time we propose (0 or ≥ 3).
    #[serde(default = "default_hold")]
    pub hold_time: u16,
    /// The neighbour's TCP port.
    #[serde(default = "default_port")]
    pub port: u16,
    /// Most routes (IPv6 prefixes and EVPN routes together) accepted from it
    /// (Cease/Maximum Number of Prefixes Reached beyond).
    #[serde(default = "default_max_prefixes")]
    pub max_prefixes: usize,
    /// The neighbour is a transparent route server (RFC 7947, e.g. gobgpd with
    /// route-server-client): its routes start with the originator's AS, not its own, so the
    /// eBGP first-AS check is skipped for it.
    #[serde(default)]
    pub route_server: bool,
}

/// The speaker's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpeakerConfig {
    /// Our AS.
    pub local_as: u32,
    /// Our BGP identifier.
    pub router_id: Ipv4Addr,
    /// Where to accept connections (e.g. `[::]:179`); `None`: active peers only.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// Source address of outgoing connections; defaults to the listen address's IP when that
    /// is not the unspecified address.
    #[serde(default)]
    pub local_address: Option<IpAddr>,
    /// Neighbours.
    pub peers: Vec<PeerConfig>,
    /// Graceful-restart time we advertise (RFC 4724); `None` disables it.
    #[serde(default)]
    pub graceful_restart_time: Option<u16>,
    /// ConnectRetry / automatic-restart delay in seconds.
    #[serde(default = "default_connect_retry")]
    pub connect_retry_secs: u64,
    /// Address families offered to every peer (default: IPv6 unicast); routes of a family are
    /// exchanged with a peer only when it offers the family too.
    #[serde(default = "default_families")]
    pub families: Vec<Family>,
}

/// Makes the speaker's TCP sockets (`true`: IPv6). The default makes them in the calling
/// thread's network namespace; one process serving several emulated hosts passes a factory that
/// makes them inside a host's namespace (a socket stays in the namespace it was created in).
pub type SocketFactory = Arc<dyn Fn(bool) -> std::io::Result<TcpSocket> + Send + Sync>;

fn default_factory() -> SocketFactory {
    Arc::new(|v6| {
        if v6 {
            TcpSocket::new_v6()
        } else {
            TcpSocket::new_v4()
        }
    })
}

/// Errors starting the speaker.
#[derive(Debug, thiserror::Error)]
pub enum SpeakerError {
    /// The configuration is unusable.
    #[error("BGP configuration: {0}")]
    Config(String),
    /// The listen socket could not be bound.
    #[error("BGP listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

/// Status of the whole speaker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpeakerStatus {
    /// Our AS.
    pub local_as: u32,
    /// Our BGP identifier.
    pub router_id: Ipv4Addr,
    /// The bound listen address, if listening.
    pub listen: Option<SocketAddr>,
    /// Our announced routes (prefix, next hop).
    pub announced: Vec<(Ipv6Net, Ipv6Addr)>,
    /// Families offered.
    #[serde(default)]
    pub families: Vec<Family>,
    /// Number of our announced EVPN routes.
    #[serde(default)]
    pub announced_evpn: usize,
    /// Number of best EVPN routes in the Loc-RIB.
    #[serde(default)]
    pub evpn_routes: usize,
    /// Per-peer status.
    pub peers: Vec<SessionStatus>,
}

enum Cmd {
    Announce(Ipv6Net, Ipv6Addr),
    Withdraw(Ipv6Net),
    AnnounceEvpn(EvpnRoute),
    WithdrawEvpn(EvpnNlri),
    Refresh,
    Stop,
    Incoming(TcpStream),
}

struct Shared {
    loc_rib: LocRib,
    announced: BTreeMap<Ipv6Net, Ipv6Addr>,
    /// Our EVPN routes by route key.
    announced_evpn: BTreeMap<EvpnNlri, EvpnRoute>,
    /// Someone took the EVPN change stream: only then do peers wait for room in its queue
    /// (before, changes beyond [`CHANGES_QUEUE`] are dropped, so a speaker whose stream
    /// nobody takes never stalls).
    evpn_listening: bool,
    status: Vec<(SessionStatus, Instant)>,
}

fn lock(s: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    // A panicking peer task must not take the others down with a poisoned lock.
    s.lock().unwrap_or_else(|p| p.into_inner())
}

/// A running BGP speaker. Dropping it aborts every task and closes the connections without a
/// NOTIFICATION (as a crash would: graceful-restart peers keep our routes); [`Speaker::shutdown`]
/// sends Cease/Administrative Shutdown first.
pub struct Speaker {
    cfg: SpeakerConfig,
    listen: Option<SocketAddr>,
    shared: Arc<Mutex<Shared>>,
    peers: Vec<(IpAddr, mpsc::Sender<Cmd>)>,
    tasks: Vec<JoinHandle<()>>,
    evpn_rx: Option<mpsc::Receiver<EvpnChange>>,
}

impl Drop for Speaker {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

impl Speaker {
    /// Starts the speaker in the current tokio runtime. Returns it and the stream of
    /// best-route changes (read it: peer tasks wait when [`CHANGES_QUEUE`] changes are unread).
    pub async fn start(
        cfg: SpeakerConfig,
    ) -> Result<(Speaker, mpsc::Receiver<BestChange>), SpeakerError> {
        Self::start_with(cfg, default_factory()).await
    }

    /// [`Speaker::start`] with every listen and connect socket made by `sockets`.
    pub async fn start_with(
        cfg: SpeakerConfig,
        sockets: SocketFactory,
    ) -> Result<(Speaker, mpsc::Receiver<BestChange>), SpeakerError> {
        if cfg.router_id.is_unspecified() {
            return Err(SpeakerError::Config("router_id must not be 0.0.0.0".into()));
        }
        if cfg.families.is_empty() {
            return Err(SpeakerError::Config(
                "families must name at least one of ipv6-unicast, l2vpn-evpn".into(),
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for p in &cfg.peers {
            if !seen.insert(canonical(p.address)) {
                return Err(SpeakerError::Config(format!(
                    "peer {} listed twice",
                    p.address
                )));
            }
            if p.hold_time == 1 || p.hold_time == 2 {
                return Err(SpeakerError::Config(format!(
                    "peer {}: hold time must be 0 or at least 3, not {}",
                    p.address, p.hold_time
                )));
            }
        }
        let listener = match cfg.listen {
            Some(addr) => Some(
                bind_listener(&sockets, addr)
                    .map_err(|source| SpeakerError::Listen { addr, source })?,
            ),
            None => None,
        };
        let listen = listener.as_ref().and_then(|l| l.local_addr().ok());
        let local_address = cfg
            .local_address
            .or(cfg.listen.map(|l| l.ip()).filter(|ip| !ip.is_unspecified()));
        let shared = Arc::new(Mutex::new(Shared {
            loc_rib: LocRib::default(),
            announced: BTreeMap::new(),
            announced_evpn: BTreeMap::new(),
            evpn_listening: false,
            status: Vec::new(),
        }));
        let (changes_tx, changes_rx) = mpsc::channel(CHANGES_QUEUE);
        let (evpn_tx, evpn_rx) = mpsc::channel(CHANGES_QUEUE);
        let mut peers = Vec::new();
        let mut tasks = Vec::new();
        let now = Instant::now();
        for (idx, p) in cfg.peers.iter().enumerate() {
            let mut sc = SessionConfig::new(cfg.local_as, cfg.router_id, p.remote_as, p.address);
            sc.passive = p.passive;
            sc.hold_time = p.hold_time;
            sc.connect_retry = Duration::from_secs(cfg.connect_retry_secs.max(1));
            sc.graceful_restart_time = cfg.graceful_restart_time;
            sc.max_prefixes = p.max_prefixes;
            sc.families = cfg.families.clone();
            sc.route_server = p.route_server;
            let session = Session::new(sc);
            lock(&shared).status.push((session.status(now), now));
            let (tx, rx) = mpsc::channel(CMD_QUEUE);
            let task = PeerTask {
                idx,
                remote: SocketAddr::new(p.address, p.port),
                local_address,
                sockets: sockets.clone(),
                session,
                shared: shared.clone(),
                changes: changes_tx.clone(),
                evpn_changes: evpn_tx.clone(),
                conn: None,
                probe: None,
                connecting: None,
                key: None,
            };
            tasks.push(tokio::spawn(task.run(rx)));
            peers.push((canonical(p.address), tx));
        }
        if let Some(l) = listener {
            let routes: Vec<(IpAddr, mpsc::Sender<Cmd>)> = peers.clone();
            tasks.push(tokio::spawn(accept_loop(l, routes)));
        }
        Ok((
            Speaker {
                cfg,
                listen,
                shared,
                peers,
                tasks,
                evpn_rx: Some(evpn_rx),
            },
            changes_rx,
        ))
    }

    /// The bound listen address (useful with port 0).
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.listen
    }

    /// Announces `prefix` with `next_hop` to every peer (now and on every later session).
    pub async fn announce(&self, prefix: Ipv6Net, next_hop: Ipv6Addr) {
        let prefix = prefix.trunc();
        lock(&self.shared).announced.insert(prefix, next_hop);
        for (_, tx) in &self.peers {
            let _ = tx.send(Cmd::Announce(prefix, next_hop)).await;
        }
    }

    /// Withdraws our route for `prefix` from every peer.
    pub async fn withdraw(&self, prefix: Ipv6Net) {
        let prefix = prefix.trunc();
        lock(&self.shared).announced.remove(&prefix);
        for (_, tx) in &self.peers {
            let _ = tx.send(Cmd::Withdraw(prefix)).await;
        }
    }

    /// Announces an EVPN route to every peer that negotiated L2VPN EVPN (now and on every
    /// later session); replaces our route with the same route key ([`EvpnNlri::route_key`]).
    pub async fn announce_evpn(&self, route: EvpnRoute) {
        lock(&self.shared)
            .announced_evpn
            .insert(route.key(), route.clone());
        for (_, tx) in &self.peers {
            let _ = tx.send(Cmd::AnnounceEvpn(route.clone())).await;
        }
    }

    /// Withdraws our EVPN route with `nlri`'s route key from every peer.
    pub async fn withdraw_evpn(&self, nlri: EvpnNlri) {
        lock(&self.shared).announced_evpn.remove(&nlri.route_key());
        for (_, tx) in &self.peers {
            let _ = tx.send(Cmd::WithdrawEvpn(nlri)).await;
        }
    }

    /// The current best EVPN routes (one per NLRI).
    pub fn evpn_routes(&self) -> Vec<BestEvpnRoute> {
        lock(&self.shared).loc_rib.best_evpn().cloned().collect()
    }

    /// Our announced EVPN routes.
    pub fn announced_evpn(&self) -> Vec<EvpnRoute> {
        lock(&self.shared)
            .announced_evpn
            .values()
            .cloned()
            .collect()
    }

    /// The stream of best EVPN route changes; `Some` once. Until it is taken, changes queue
    /// up to [`CHANGES_QUEUE`] and later ones are dropped ([`Speaker::evpn_routes`] has the
    /// state); once taken, peer tasks wait when that many are unread. Take it right after
    /// start.
    pub fn evpn_changes(&mut self) -> Option<mpsc::Receiver<EvpnChange>> {
        let rx = self.evpn_rx.take()?;
        lock(&self.shared).evpn_listening = true;
        Some(rx)
    }

    /// Sends ROUTE-REFRESH to one peer (or all): they resend their routes.
    pub async fn refresh(&self, peer: Option<IpAddr>) {
        for (addr, tx) in &self.peers {
            if peer.is_none_or(|p| canonical(p) == *addr) {
                let _ = tx.send(Cmd::Refresh).await;
            }
        }
    }

    /// The current best routes.
    pub fn routes(&self) -> Vec<BestRoute> {
        lock(&self.shared).loc_rib.best().cloned().collect()
    }

    /// Status of the speaker and every peer.
    pub fn status(&self) -> SpeakerStatus {
        let now = Instant::now();
        let g = lock(&self.shared);
        SpeakerStatus {
            local_as: self.cfg.local_as,
            router_id: self.cfg.router_id,
            listen: self.listen,
            announced: g.announced.iter().map(|(p, n)| (*p, *n)).collect(),
            families: self.cfg.families.clone(),
            announced_evpn: g.announced_evpn.len(),
            evpn_routes: g.loc_rib.best_evpn().count(),
            peers: g
                .status
                .iter()
                .map(|(s, at)| {
                    let mut s = s.clone();
                    let since = now.saturating_duration_since(*at).as_secs();
                    s.uptime_secs = s.uptime_secs.map(|u| u + since);
                    s
                })
                .collect(),
        }
    }

    /// Stops every session with Cease/Administrative Shutdown, then ends the tasks; when it
    /// returns, the listen socket is closed (the address can be bound again).
    pub async fn shutdown(mut self) {
        for (_, tx) in &self.peers {
            let _ = tx.send(Cmd::Stop).await;
        }
        // Give the writers a moment to flush the NOTIFICATIONs before the tasks are aborted.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let tasks = std::mem::take(&mut self.tasks);
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
    }
}

fn bind_listener(sockets: &SocketFactory, addr: SocketAddr) -> std::io::Result<TcpListener> {
    let sock = sockets(addr.is_ipv6())?;
    sock.set_reuseaddr(true)?;
    sock.bind(addr)?;
    sock.listen(64)
}

async fn accept_loop(l: TcpListener, peers: Vec<(IpAddr, mpsc::Sender<Cmd>)>) {
    loop {
        let Ok((stream, from)) = l.accept().await else {
            // EMFILE and the like: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let ip = canonical(from.ip());
        match peers.iter().find(|(a, _)| *a == ip) {
            // A full queue means the peer task is flooded: refusing is the bound.
            Some((_, tx)) => {
                let _ = tx.try_send(Cmd::Incoming(stream));
            }
            None => {
                log::info!("bgp: refusing connection from unconfigured {from}");
                drop(stream);
            }
        }
    }
}

/// One TCP connection: the read half and the writer queue.
struct Conn {
    read: OwnedReadHalf,
    write: mpsc::Sender<Vec<u8>>,
    writer: JoinHandle<()>,
    outgoing: bool,
}

impl Conn {
    fn new(stream: TcpStream, outgoing: bool) -> Conn {
        let _ = stream.set_nodelay(true);
        let (read, write) = stream.into_split();
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        let writer = tokio::spawn(write_loop(write, rx));
        Conn {
            read,
            write: tx,
            writer,
            outgoing,
        }
    }

    /// Queues bytes; false when the queue is full or the writer has gone (connection dead).
    fn send(&self, b: Vec<u8>) -> bool {
        self.write.try_send(b).is_ok()
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // Let queued bytes (a final NOTIFICATION) go out; the writer ends when the queue closes.
        let _ = &self.writer;
    }
}

async fn write_loop(mut w: OwnedWriteHalf, mut rx: mpsc::Receiver<Vec<u8>>) {
    while let Some(b) = rx.recv().await {
        if w.write_all(&b).await.is_err() {
            return;
        }
    }
    let _ = w.shutdown().await;
}

type ConnectFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<TcpStream>> + Send>>;

struct PeerTask {
    idx: usize,
    remote: SocketAddr,
    local_address: Option<IpAddr>,
    sockets: SocketFactory,
    session: Session,
    shared: Arc<Mutex<Shared>>,
    changes: mpsc::Sender<BestChange>,
    evpn_changes: mpsc::Sender<EvpnChange>,
    conn: Option<Conn>,
    /// A second (incoming) connection while ours is in OpenSent/OpenConfirm (collision).
    probe: Option<(Session, Conn)>,
    connecting: Option<ConnectFuture>,
    /// Our Loc-RIB key for this peer, set from its OPEN.
    key: Option<PeerKey>,
}

enum Event {
    Cmd(Option<Cmd>),
    Read(std::io::Result<usize>),
    ProbeRead(std::io::Result<usize>),
    Connected(std::io::Result<TcpStream>),
    Timer,
}

async fn read_opt(c: &mut Option<Conn>, buf: &mut [u8]) -> std::io::Result<usize> {
    match c {
        Some(c) => c.read.read(buf).await,
        None => std::future::pending().await,
    }
}

impl PeerTask {
    async fn run(mut self, mut rx: mpsc::Receiver<Cmd>) {
        let now = Instant::now();
        let announced: Vec<_> = lock(&self.shared)
            .announced
            .iter()
            .map(|(p, n)| (*p, *n))
            .collect();
        for (prefix, next_hop) in announced {
            let o = self
                .session
                .handle(Input::Announce { prefix, next_hop }, now);
            self.apply(o).await;
        }
        let announced_evpn: Vec<EvpnRoute> = lock(&self.shared)
            .announced_evpn
            .values()
            .cloned()
            .collect();
        for r in announced_evpn {
            let o = self.session.handle(Input::AnnounceEvpn(r), now);
            self.apply(o).await;
        }
        let o = self.session.handle(Input::Start, now);
        self.apply(o).await;
        let mut buf = vec![0u8; READ_CHUNK];
        let mut pbuf = vec![0u8; READ_CHUNK];
        loop {
            let deadline = self
                .session
                .poll_timeout()
                .into_iter()
                .chain(self.probe.as_ref().and_then(|(s, _)| s.poll_timeout()))
                .min();
            let ev = {
                let mut probe_conn = self.probe.as_mut().map(|(_, c)| c);
                let timer = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d.into()).await,
                        None => std::future::pending().await,
                    }
                };
                let connecting = async {
                    match self.connecting.as_mut() {
                        Some(f) => f.await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    c = rx.recv() => Event::Cmd(c),
                    r = read_opt(&mut self.conn, &mut buf) => Event::Read(r),
                    r = async {
                        match probe_conn.as_mut() {
                            Some(c) => c.read.read(&mut pbuf).await,
                            None => std::future::pending().await,
                        }
                    } => Event::ProbeRead(r),
                    r = connecting => Event::Connected(r),
                    _ = timer => Event::Timer,
                }
            };
            let now = Instant::now();
            match ev {
                Event::Cmd(None) => return,
                Event::Cmd(Some(cmd)) => self.command(cmd, now).await,
                Event::Read(Ok(n)) if n > 0 => {
                    let o = self.session.handle(Input::Bytes(&buf[..n]), now);
                    self.apply(o).await;
                }
                Event::Read(_) => {
                    self.conn = None;
                    let o = self.session.handle(Input::TcpClosed, now);
                    self.apply(o).await;
                }
                Event::ProbeRead(r) => {
                    let input = match &r {
                        Ok(n) if *n > 0 => Input::Bytes(&pbuf[..*n]),
                        _ => Input::TcpClosed,
                    };
                    if let Some((s, _)) = self.probe.as_mut() {
                        let o = s.handle(input, now);
                        self.apply_probe(o);
                    }
                    self.check_collision(now).await;
                }
                Event::Connected(r) => {
                    self.connecting = None;
                    match r {
                        Ok(stream) => {
                            self.conn = Some(Conn::new(stream, true));
                            let o = self.session.handle(Input::TcpConnected, now);
                            self.apply(o).await;
                        }
                        Err(e) => {
                            log::debug!("bgp: connect to {} failed: {e}", self.remote);
                            let o = self.session.handle(Input::TcpFailed, now);
                            self.apply(o).await;
                        }
                    }
                }
                Event::Timer => {
                    let o = self.session.handle_timeout(now);
                    self.apply(o).await;
                    if let Some((s, _)) = self.probe.as_mut() {
                        let o = s.handle_timeout(now);
                        self.apply_probe(o);
                    }
                    self.check_collision(now).await;
                }
            }
            self.publish_status(Instant::now());
        }
    }

    async fn command(&mut self, cmd: Cmd, now: Instant) {
        let o = match cmd {
            Cmd::Announce(prefix, next_hop) => self
                .session
                .handle(Input::Announce { prefix, next_hop }, now),
            Cmd::Withdraw(p) => self.session.handle(Input::Withdraw(p), now),
            Cmd::AnnounceEvpn(r) => self.session.handle(Input::AnnounceEvpn(r), now),
            Cmd::WithdrawEvpn(n) => self.session.handle(Input::WithdrawEvpn(n), now),
            Cmd::Refresh => self.session.handle(Input::RequestRefresh, now),
            Cmd::Stop => {
                self.probe = None;
                self.session.handle(Input::Stop, now)
            }
            Cmd::Incoming(stream) => return self.incoming(stream, now).await,
        };
        self.apply(o).await;
    }

    async fn incoming(&mut self, stream: TcpStream, now: Instant) {
        match self.session.state() {
            State::Idle | State::Connect | State::Active if self.conn.is_none() => {
                self.connecting = None;
                self.conn = Some(Conn::new(stream, false));
                let o = self.session.handle(Input::TcpConnected, now);
                self.apply(o).await;
            }
            State::OpenSent | State::OpenConfirm if self.probe.is_none() => {
                let mut cfg = self.session.config().clone();
                cfg.passive = true;
                let mut s = Session::new(cfg);
                let conn = Conn::new(stream, false);
                let mut o = s.handle(Input::Start, now);
                o.extend(s.handle(Input::TcpConnected, now));
                self.probe = Some((s, conn));
                self.apply_probe(o);
            }
            _ => {
                // Established (RFC 4271 §6.8: the existing session wins) or already probing.
                let c = Conn::new(stream, false);
                c.send(codec::encode_notification(&Notification::new(6, 7)));
            }
        }
    }

    /// Only connection-level outputs matter for a probe: it has no routes yet.
    fn apply_probe(&mut self, outputs: Vec<Output>) {
        let mut drop_probe = false;
        if let Some((_, c)) = &self.probe {
            for o in outputs {
                match o {
                    Output::Send(b) => drop_probe |= !c.send(b),
                    Output::Close => drop_probe = true,
                    _ => {}
                }
            }
        }
        if drop_probe {
            self.probe = None;
        }
    }

    async fn check_collision(&mut self, now: Instant) {
        let Some((probe, _)) = &self.probe else {
            return;
        };
        if !matches!(probe.state(), State::OpenConfirm | State::Established) {
            return;
        }
        let main_state = self.session.state();
        let main_pending = matches!(main_state, State::OpenSent | State::OpenConfirm);
        let main_outgoing = self.conn.as_ref().is_some_and(|c| c.outgoing);
        let remote_id = probe.peer_open().map(|o| o.router_id);
        let keep_incoming = if !main_pending {
            // Ours is already up (keep it) or gone (the probe takes over).
            main_state != State::Established
        } else {
            main_outgoing
                && remote_id.is_some_and(|r| {
                    resolve_collision(self.session.config().router_id, r) == Collision::KeepIncoming
                })
        };
        let Some((mut probe, pconn)) = self.probe.take() else {
            return;
        };
        if keep_incoming {
            if main_pending {
                let o = self.session.close_for_collision(now);
                self.apply(o).await;
            }
            self.conn = Some(pconn);
            let o = self.session.adopt_connection(probe, now);
            self.apply(o).await;
        } else {
            for o in probe.close_for_collision(now) {
                if let Output::Send(b) = o {
                    pconn.send(b);
                }
            }
        }
    }

    async fn apply(&mut self, outputs: Vec<Output>) {
        let mut changes = Changes::default();
        for o in outputs {
            match o {
                Output::Send(b) => {
                    let ok = self.conn.as_ref().is_some_and(|c| c.send(b));
                    if !ok && self.conn.is_some() {
                        // Writer gone or queue full: the connection is dead or stuck.
                        self.conn = None;
                        let more = self.session.handle(Input::TcpClosed, Instant::now());
                        self.rib_changes(more, &mut changes);
                    }
                }
                Output::Connect => self.start_connect(),
                Output::Close => {
                    self.conn = None;
                    self.connecting = None;
                }
                Output::StateChanged { from, to } => {
                    log::info!("bgp: peer {} {from:?} → {to:?}", self.remote);
                    if to == State::OpenConfirm || to == State::Established {
                        self.key = self.session.peer_open().map(|o| PeerKey {
                            router_id: o.router_id,
                            address: self.remote.ip(),
                        });
                    }
                }
                Output::Error(e) => log::warn!("bgp: peer {}: {e}", self.remote),
                Output::Warning(w) => log::warn!("bgp: peer {}: {w}", self.remote),
                other => self.rib_changes(vec![other], &mut changes),
            }
        }
        for c in changes.ipv6 {
            if self.changes.send(c).await.is_err() {
                // Nobody listens any more; the routes stay queryable through routes().
            }
        }
        if !changes.evpn.is_empty() {
            let listening = lock(&self.shared).evpn_listening;
            for c in changes.evpn {
                if listening {
                    if self.evpn_changes.send(c).await.is_err() {
                        break;
                    }
                } else {
                    // Not taken (yet): queue what fits, never wait.
                    let _ = self.evpn_changes.try_send(c);
                }
            }
        }
    }

    /// Feeds Learned/Withdrawn outputs into the Loc-RIB; collects best-route changes.
    fn rib_changes(&mut self, outputs: Vec<Output>, changes: &mut Changes) {
        let key = self.key.unwrap_or(PeerKey {
            router_id: Ipv4Addr::UNSPECIFIED,
            address: self.remote.ip(),
        });
        let mut g = lock(&self.shared);
        for o in outputs {
            match o {
                Output::Learned(r) => {
                    // The peer's key can change across sessions (new router id): drop the old.
                    changes.ipv6.extend(g.loc_rib.update(key, r));
                }
                Output::Withdrawn(p) => {
                    changes.ipv6.extend(g.loc_rib.withdraw(&key, &p));
                }
                Output::LearnedEvpn(r, attrs) => {
                    changes.evpn.extend(g.loc_rib.update_evpn(key, r, attrs));
                }
                Output::WithdrawnEvpn(n) => {
                    changes.evpn.extend(g.loc_rib.withdraw_evpn(&key, &n));
                }
                _ => {}
            }
        }
    }

    fn start_connect(&mut self) {
        let remote = self.remote;
        let local = self.local_address;
        let made = (self.sockets)(remote.is_ipv6());
        self.connecting = Some(Box::pin(async move {
            let sock = made?;
            if let Some(ip) = local.filter(|ip| ip.is_ipv6() == remote.is_ipv6()) {
                sock.bind(SocketAddr::new(ip, 0))?;
            }
            sock.connect(remote).await
        }));
    }

    fn publish_status(&self, now: Instant) {
        let st = self.session.status(now);
        let mut g = lock(&self.shared);
        if let Some(slot) = g.status.get_mut(self.idx) {
            *slot = (st, now);
        }
    }
}

/// Best-route changes of one batch of session outputs.
#[derive(Default)]
struct Changes {
    ipv6: Vec<BestChange>,
    evpn: Vec<EvpnChange>,
}
