//! The BGP session state machine (RFC 4271 §8), sans-I/O.
//!
//! A [`Session`] is fed [`Input`]s with the current time and answers with [`Output`]s; it owns
//! no socket and reads no clock. Timers are deadlines: the driver sleeps until
//! [`Session::poll_timeout`] and then calls [`Session::handle_timeout`]. One `Session` serves one
//! configured peer for its whole life (across reconnects), so it also holds that peer's
//! Adj-RIB-In (with graceful-restart stale state) and the routes we announce to it.

use crate::codec::{self, DecodeError, MAX_MESSAGE_LEN};
use crate::evpn::{EvpnNlri, EvpnRoute};
use crate::message::{
    AsSegment, Capabilities, Family, GracefulRestart, Message, Notification, Open, Origin,
    PathAttributes, Reach, Update,
};
use crate::rib::{AdjRibIn, Insert, RibKey, Route};
use ipnet::Ipv6Net;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

/// Hold time used in OpenSent before the peer's OPEN arrives (RFC 4271 §8.2.2 suggests 4 min).
const OPEN_SENT_HOLD: Duration = Duration::from_secs(240);

/// Static configuration of one session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionConfig {
    /// Our AS.
    pub local_as: u32,
    /// Our BGP identifier.
    pub router_id: Ipv4Addr,
    /// The peer's expected AS (equal to `local_as` for iBGP).
    pub remote_as: u32,
    /// The peer's address (identifies it in the RIB and the logs).
    pub remote_address: IpAddr,
    /// Only accept connections, never initiate.
    pub passive: bool,
    /// Hold time we propose: 0 (no keepalives) or ≥ 3 seconds.
    pub hold_time: u16,
    /// ConnectRetry time; also the delay before an automatic restart after an error.
    pub connect_retry: Duration,
    /// Our graceful-restart time; `None` disables the capability.
    pub graceful_restart_time: Option<u16>,
    /// How long a restarted peer's stale routes are kept waiting for its End-of-RIB.
    pub stale_path_time: Duration,
    /// Most routes (IPv6 prefixes and EVPN routes together) accepted from this peer before
    /// Cease/Maximum Number of Prefixes Reached.
    pub max_prefixes: usize,
    /// Families we offer (multiprotocol capability); routes are exchanged only for those the
    /// peer offers too.
    pub families: Vec<Family>,
    /// The peer is a transparent route server (RFC 7947): it does not put its AS first in
    /// the AS_PATH, so the eBGP first-AS check (RFC 4271 §6.3, a MAY) is skipped.
    pub route_server: bool,
}

impl SessionConfig {
    /// A configuration with the usual defaults (hold 90 s, connect retry 5 s, GR 120 s, stale
    /// path 360 s, 10 000 prefixes).
    pub fn new(local_as: u32, router_id: Ipv4Addr, remote_as: u32, remote_address: IpAddr) -> Self {
        SessionConfig {
            local_as,
            router_id,
            remote_as,
            remote_address,
            passive: false,
            hold_time: 90,
            connect_retry: Duration::from_secs(5),
            graceful_restart_time: Some(120),
            stale_path_time: Duration::from_secs(360),
            max_prefixes: 10_000,
            families: vec![Family::Ipv6Unicast],
            route_server: false,
        }
    }

    /// iBGP (same AS) or eBGP.
    pub fn is_ibgp(&self) -> bool {
        self.local_as == self.remote_as
    }
}

/// Session states (RFC 4271 §8.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum State {
    /// Not started, or stopped after an error.
    Idle,
    /// Waiting for an outgoing TCP connection.
    Connect,
    /// Waiting for an incoming TCP connection (or the ConnectRetry timer).
    Active,
    /// OPEN sent, waiting for the peer's.
    OpenSent,
    /// OPENs exchanged, waiting for KEEPALIVE.
    OpenConfirm,
    /// Up: routes are exchanged.
    Established,
}

/// An event for the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input<'a> {
    /// ManualStart.
    Start,
    /// ManualStop (sends Cease/Administrative Shutdown when connected).
    Stop,
    /// The TCP connection (outgoing or accepted) is up.
    TcpConnected,
    /// The outgoing connection attempt failed.
    TcpFailed,
    /// The peer closed the connection, or it broke.
    TcpClosed,
    /// Bytes read from the connection.
    Bytes(&'a [u8]),
    /// Announce our route for `prefix` with `next_hop` (replaces an earlier one).
    Announce {
        /// Prefix.
        prefix: Ipv6Net,
        /// Next hop.
        next_hop: Ipv6Addr,
    },
    /// Withdraw our route for the prefix.
    Withdraw(Ipv6Net),
    /// Announce our EVPN route (replaces one with the same route key).
    AnnounceEvpn(EvpnRoute),
    /// Withdraw our EVPN route with this route key.
    WithdrawEvpn(EvpnNlri),
    /// Ask the peer to resend its routes (ROUTE-REFRESH, if it supports it).
    RequestRefresh,
}

/// Why a session went down or what it had to report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum SessionError {
    /// We sent a NOTIFICATION.
    #[error("sent {notification}: {reason}")]
    NotificationSent {
        /// The notification.
        notification: Notification,
        /// What we found wrong.
        reason: String,
    },
    /// The peer sent a NOTIFICATION.
    #[error("received {0}")]
    NotificationReceived(Notification),
    /// The TCP connection was lost.
    #[error("connection lost in state {0:?}")]
    ConnectionLost(State),
    /// The outgoing connection could not be made.
    #[error("connect failed")]
    ConnectFailed,
    /// Our own message could not be encoded (a bug or a bad local route).
    #[error("{0}")]
    Encode(String),
}

/// What the session asks its driver to do, or reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Write these bytes to the connection.
    Send(Vec<u8>),
    /// Open an outgoing TCP connection to the peer.
    Connect,
    /// Close the connection (idempotent).
    Close,
    /// The state changed.
    StateChanged {
        /// Old state.
        from: State,
        /// New state.
        to: State,
    },
    /// A route was learned from the peer, or changed.
    Learned(Route),
    /// The peer's route for this prefix is gone (withdrawn, flushed, or stale and swept).
    Withdrawn(Ipv6Net),
    /// An EVPN route was learned from the peer, or changed, with the UPDATE's attributes.
    LearnedEvpn(EvpnRoute, PathAttributes),
    /// The peer's EVPN route is gone (the NLRI as it was announced).
    WithdrawnEvpn(EvpnNlri),
    /// The peer's End-of-RIB arrived.
    EndOfRib(Family),
    /// The session failed (it is Idle or Active afterwards).
    Error(SessionError),
    /// Something was wrong but handled without reset (RFC 7606 treat-as-withdraw, attribute
    /// discard, AS loop...).
    Warning(String),
}

/// What was negotiated on the current connection.
#[derive(Debug, Clone, Default)]
struct Conn {
    /// Partial message bytes (bounded: less than one message once handled).
    buf: Vec<u8>,
    hold_at: Option<Instant>,
    keepalive_at: Option<Instant>,
    hold: u16,
    peer: Option<Open>,
    /// Negotiated families whose forwarding the peer preserves across its restart (GR
    /// capability with the F bit).
    peer_gr: Vec<Family>,
    peer_restart_time: u16,
    /// Families both sides offered.
    families: Vec<Family>,
    peer_route_refresh: bool,
    established_at: Option<Instant>,
}

/// Per-peer status, serde-friendly for `ilanet bgp status --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionStatus {
    /// Peer address.
    pub peer: IpAddr,
    /// Peer AS.
    pub remote_as: u32,
    /// State.
    pub state: State,
    /// Seconds in Established, if established.
    pub uptime_secs: Option<u64>,
    /// The peer's BGP identifier, once its OPEN was seen.
    pub remote_router_id: Option<Ipv4Addr>,
    /// Negotiated hold time.
    pub hold_time: Option<u16>,
    /// Graceful restart negotiated (the peer preserves forwarding).
    pub graceful_restart: bool,
    /// Routes in the Adj-RIB-In (stale included).
    pub prefixes_received: usize,
    /// Of those, stale after the peer's restart.
    pub prefixes_stale: usize,
    /// Our routes announced to the peer (when established).
    pub prefixes_sent: usize,
    /// Families negotiated on the current connection.
    #[serde(default)]
    pub families: Vec<Family>,
    /// EVPN routes in the Adj-RIB-In (stale included).
    #[serde(default)]
    pub evpn_received: usize,
    /// Of those, stale after the peer's restart.
    #[serde(default)]
    pub evpn_stale: usize,
    /// Our EVPN routes announced to the peer (when established).
    #[serde(default)]
    pub evpn_sent: usize,
    /// UPDATE messages received (all sessions).
    pub updates_received: u64,
    /// ROUTE-REFRESH requests received (all sessions).
    pub refreshes_received: u64,
    /// The last error, if any.
    pub last_error: Option<String>,
}

/// One BGP session. See the module docs.
#[derive(Debug, Clone)]
pub struct Session {
    cfg: SessionConfig,
    state: State,
    /// Started by the operator (automatic restart after errors while true).
    started: bool,
    conn: Conn,
    rib_in: AdjRibIn,
    /// Our routes: prefix → next hop.
    rib_out: BTreeMap<Ipv6Net, Ipv6Addr>,
    /// Our EVPN routes by route key.
    rib_out_evpn: BTreeMap<EvpnNlri, EvpnRoute>,
    /// ConnectRetry timer (also the automatic-restart delay in Idle).
    retry_at: Option<Instant>,
    /// Deadline for the peer's stale routes (restart time, then stale-path time).
    stale_until: Option<Instant>,
    last_error: Option<String>,
    updates_received: u64,
    refreshes_received: u64,
}

/// Which connection survives a collision (RFC 4271 §6.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Collision {
    /// Keep the connection we initiated; close the one the peer initiated.
    KeepOutgoing,
    /// Keep the connection the peer initiated; close ours.
    KeepIncoming,
}

/// Collision detection (RFC 4271 §6.8): the connection initiated by the speaker with the higher
/// BGP identifier survives. The driver calls this when a second connection to the same peer
/// reaches OpenConfirm (or OpenSent with the peer's OPEN) while the first is in OpenSent or
/// OpenConfirm; a session already Established always wins (the new connection is closed).
pub fn resolve_collision(local_id: Ipv4Addr, remote_id: Ipv4Addr) -> Collision {
    if u32::from(local_id) < u32::from(remote_id) {
        Collision::KeepIncoming
    } else {
        Collision::KeepOutgoing
    }
}

impl Session {
    /// A new session in Idle.
    pub fn new(cfg: SessionConfig) -> Self {
        Session {
            cfg,
            state: State::Idle,
            started: false,
            conn: Conn::default(),
            rib_in: AdjRibIn::default(),
            rib_out: BTreeMap::new(),
            rib_out_evpn: BTreeMap::new(),
            retry_at: None,
            stale_until: None,
            last_error: None,
            updates_received: 0,
            refreshes_received: 0,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &SessionConfig {
        &self.cfg
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// The peer's OPEN on the current connection.
    pub fn peer_open(&self) -> Option<&Open> {
        self.conn.peer.as_ref()
    }

    /// The peer's Adj-RIB-In.
    pub fn adj_rib_in(&self) -> &AdjRibIn {
        &self.rib_in
    }

    /// Status for display.
    pub fn status(&self, now: Instant) -> SessionStatus {
        let est = self.state == State::Established;
        SessionStatus {
            peer: self.cfg.remote_address,
            remote_as: self.cfg.remote_as,
            state: self.state,
            uptime_secs: self
                .conn
                .established_at
                .filter(|_| est)
                .map(|t| now.saturating_duration_since(t).as_secs()),
            remote_router_id: self.conn.peer.as_ref().map(|o| o.router_id),
            hold_time: self.conn.peer.as_ref().map(|_| self.conn.hold),
            graceful_restart: !self.conn.peer_gr.is_empty(),
            prefixes_received: self.rib_in.len_of(Family::Ipv6Unicast),
            prefixes_stale: self.rib_in.stale_of(Family::Ipv6Unicast),
            prefixes_sent: if est && self.negotiated(Family::Ipv6Unicast) {
                self.rib_out.len()
            } else {
                0
            },
            families: self.conn.families.clone(),
            evpn_received: self.rib_in.len_of(Family::L2vpnEvpn),
            evpn_stale: self.rib_in.stale_of(Family::L2vpnEvpn),
            evpn_sent: if est && self.negotiated(Family::L2vpnEvpn) {
                self.rib_out_evpn.len()
            } else {
                0
            },
            updates_received: self.updates_received,
            refreshes_received: self.refreshes_received,
            last_error: self.last_error.clone(),
        }
    }

    /// The earliest timer deadline, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.retry_at,
            self.stale_until,
            self.conn.hold_at,
            self.conn.keepalive_at,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Handles an input.
    pub fn handle(&mut self, input: Input<'_>, now: Instant) -> Vec<Output> {
        let mut out = Vec::new();
        match input {
            Input::Start => {
                if !self.started {
                    self.started = true;
                    if self.state == State::Idle {
                        self.begin(now, &mut out);
                    }
                }
            }
            Input::Stop => self.stop(now, &mut out),
            Input::TcpConnected => self.tcp_connected(now, &mut out),
            Input::TcpFailed => match self.state {
                State::Connect => {
                    self.record(SessionError::ConnectFailed, &mut out);
                    self.retry_at = Some(now + self.cfg.connect_retry);
                    self.goto(State::Active, &mut out);
                }
                State::OpenSent | State::OpenConfirm | State::Established => {
                    self.lost(now, &mut out)
                }
                _ => {}
            },
            Input::TcpClosed => {
                if matches!(
                    self.state,
                    State::OpenSent | State::OpenConfirm | State::Established
                ) {
                    self.lost(now, &mut out);
                }
            }
            Input::Bytes(b) => self.bytes(b, now, &mut out),
            Input::Announce { prefix, next_hop } => {
                let prefix = prefix.trunc();
                if self.rib_out.insert(prefix, next_hop) != Some(next_hop)
                    && self.sending(Family::Ipv6Unicast)
                {
                    self.send_announce(&[prefix], next_hop, &mut out);
                }
            }
            Input::Withdraw(prefix) => {
                let prefix = prefix.trunc();
                if self.rib_out.remove(&prefix).is_some() && self.sending(Family::Ipv6Unicast) {
                    match codec::encode_withdraw(&[prefix]) {
                        Ok(msgs) => out.extend(msgs.into_iter().map(Output::Send)),
                        Err(e) => self.record(SessionError::Encode(e.to_string()), &mut out),
                    }
                }
            }
            Input::AnnounceEvpn(route) => {
                let key = route.key();
                let old = self.rib_out_evpn.insert(key, route.clone());
                if old.as_ref() != Some(&route) && self.sending(Family::L2vpnEvpn) {
                    self.send_evpn(&[route], &mut out);
                }
            }
            Input::WithdrawEvpn(nlri) => {
                if let Some(old) = self.rib_out_evpn.remove(&nlri.route_key()) {
                    if self.sending(Family::L2vpnEvpn) {
                        match codec::encode_evpn_withdraw(&[old.nlri]) {
                            Ok(msgs) => out.extend(msgs.into_iter().map(Output::Send)),
                            Err(e) => self.record(SessionError::Encode(e.to_string()), &mut out),
                        }
                    }
                }
            }
            Input::RequestRefresh => {
                if self.state == State::Established && self.conn.peer_route_refresh {
                    for f in self.conn.families.clone() {
                        if let Ok(m) = codec::encode_route_refresh(f) {
                            out.push(Output::Send(m));
                        }
                    }
                }
            }
        }
        out
    }

    /// Handles expired timers.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<Output> {
        let mut out = Vec::new();
        let due = |t: Option<Instant>| t.is_some_and(|t| t <= now);
        if due(self.stale_until) {
            self.stale_until = None;
            let n = self.rib_in.stale_count();
            if n > 0 {
                out.push(Output::Warning(format!(
                    "graceful restart: {n} stale routes of {} timed out",
                    self.cfg.remote_address
                )));
            }
            let gone = self.rib_in.sweep_stale();
            emit_gone(gone, &mut out);
        }
        if due(self.conn.hold_at) {
            self.fail(
                Notification::new(4, 0),
                format!(
                    "no message from the peer within the hold time ({}s)",
                    self.conn.hold
                ),
                now,
                &mut out,
            );
        }
        if due(self.conn.keepalive_at) {
            out.push(Output::Send(codec::encode_keepalive()));
            self.conn.keepalive_at = Some(now + self.keepalive_interval());
        }
        if due(self.retry_at) {
            self.retry_at = None;
            match self.state {
                State::Idle if self.started => self.begin(now, &mut out),
                State::Connect => {
                    out.push(Output::Close);
                    out.push(Output::Connect);
                    self.retry_at = Some(now + self.cfg.connect_retry);
                }
                State::Active if !self.cfg.passive => {
                    self.goto(State::Connect, &mut out);
                    out.push(Output::Connect);
                    self.retry_at = Some(now + self.cfg.connect_retry);
                }
                _ => {}
            }
        }
        out
    }

    /// Closes this connection as the loser of a collision: Cease/Connection Collision
    /// Resolution, then Idle (the winning connection carries on in the other `Session`, which
    /// [`Session::adopt_connection`] moves in).
    pub fn close_for_collision(&mut self, now: Instant) -> Vec<Output> {
        let mut out = Vec::new();
        let n = Notification::new(6, 7);
        out.push(Output::Send(codec::encode_notification(&n)));
        out.push(Output::Close);
        self.conn = Conn::default();
        self.retry_at = None;
        let _ = now;
        self.goto(
            if self.cfg.passive {
                State::Active
            } else {
                State::Idle
            },
            &mut out,
        );
        out
    }

    /// Takes over the connection-level state of `other` (a session for the same peer that won
    /// a collision on a second connection), keeping this session's RIBs and stale state.
    pub fn adopt_connection(&mut self, other: Session, now: Instant) -> Vec<Output> {
        let mut out = Vec::new();
        self.conn = other.conn;
        self.retry_at = None;
        self.after_open_stale(now, &mut out);
        self.goto(other.state, &mut out);
        if other.state == State::Established {
            self.on_established(now, &mut out);
        }
        out
    }

    // ---- internals ----

    fn goto(&mut self, to: State, out: &mut Vec<Output>) {
        if self.state != to {
            out.push(Output::StateChanged {
                from: self.state,
                to,
            });
            self.state = to;
        }
    }

    fn record(&mut self, e: SessionError, out: &mut Vec<Output>) {
        self.last_error = Some(e.to_string());
        out.push(Output::Error(e));
    }

    fn negotiated(&self, f: Family) -> bool {
        self.conn.families.contains(&f)
    }

    fn sending(&self, f: Family) -> bool {
        self.state == State::Established && self.negotiated(f)
    }

    fn keepalive_interval(&self) -> Duration {
        Duration::from_secs(u64::from(self.conn.hold / 3).max(1))
    }

    fn begin(&mut self, now: Instant, out: &mut Vec<Output>) {
        self.retry_at = Some(now + self.cfg.connect_retry);
        if self.cfg.passive {
            self.retry_at = None;
            self.goto(State::Active, out);
        } else {
            self.goto(State::Connect, out);
            out.push(Output::Connect);
        }
    }

    fn stop(&mut self, now: Instant, out: &mut Vec<Output>) {
        self.started = false;
        if matches!(
            self.state,
            State::OpenSent | State::OpenConfirm | State::Established
        ) {
            out.push(Output::Send(codec::encode_notification(
                &Notification::new(6, 2),
            )));
        }
        if self.state != State::Idle {
            out.push(Output::Close);
        }
        self.conn = Conn::default();
        self.retry_at = None;
        self.stale_until = None;
        emit_gone(self.rib_in.clear(), out);
        let _ = now;
        self.goto(State::Idle, out);
    }

    fn tcp_connected(&mut self, now: Instant, out: &mut Vec<Output>) {
        if !matches!(self.state, State::Connect | State::Active) {
            // Already connected (the driver resolves collisions before feeding us) or stopped.
            out.push(Output::Close);
            return;
        }
        self.retry_at = None;
        self.conn = Conn::default();
        let open = Open {
            asn: self.cfg.local_as,
            hold_time: self.cfg.hold_time,
            router_id: self.cfg.router_id,
            capabilities: Capabilities {
                families: self.cfg.families.clone(),
                four_octet_as: Some(self.cfg.local_as),
                route_refresh: true,
                graceful_restart: self.cfg.graceful_restart_time.map(|t| GracefulRestart {
                    restarting: false,
                    restart_time: t,
                    // F bit: the agent's kernel routes and FDB entries outlive the speaker.
                    families: self.cfg.families.iter().map(|f| (*f, true)).collect(),
                }),
            },
        };
        match codec::encode_open(&open) {
            Ok(b) => out.push(Output::Send(b)),
            Err(e) => {
                self.record(SessionError::Encode(e.to_string()), out);
                out.push(Output::Close);
                self.goto(State::Idle, out);
                return;
            }
        }
        self.conn.hold_at = Some(now + OPEN_SENT_HOLD);
        self.goto(State::OpenSent, out);
    }

    /// A fatal error on the connection: NOTIFICATION, close, flush, Idle, automatic restart.
    fn fail(&mut self, n: Notification, reason: String, now: Instant, out: &mut Vec<Output>) {
        out.push(Output::Send(codec::encode_notification(&n)));
        out.push(Output::Close);
        self.record(
            SessionError::NotificationSent {
                notification: n,
                reason,
            },
            out,
        );
        // Having sent a NOTIFICATION, the peer flushes our routes and we flush its (RFC 4724
        // §4: stale retention only for a session that ended without one).
        self.flush_all(out);
        self.down(now, out);
    }

    fn flush_all(&mut self, out: &mut Vec<Output>) {
        self.stale_until = None;
        emit_gone(self.rib_in.clear(), out);
    }

    /// Connection gone: Idle with automatic restart, or Active for a passive session.
    fn down(&mut self, now: Instant, out: &mut Vec<Output>) {
        self.conn = Conn::default();
        if self.cfg.passive && self.started {
            self.retry_at = None;
            self.goto(State::Active, out);
        } else {
            self.retry_at = self.started.then(|| now + self.cfg.connect_retry);
            self.goto(State::Idle, out);
        }
    }

    fn lost(&mut self, now: Instant, out: &mut Vec<Output>) {
        self.record(SessionError::ConnectionLost(self.state), out);
        out.push(Output::Close);
        if self.state == State::Established
            && !self.conn.peer_gr.is_empty()
            && self.conn.peer_restart_time > 0
        {
            // RFC 4724 §4.2: keep the peer's routes, stale, for its restart time — only of the
            // families whose forwarding it preserves; the others go now.
            for f in [Family::Ipv6Unicast, Family::L2vpnEvpn] {
                if self.conn.peer_gr.contains(&f) {
                    self.rib_in.mark_stale(f);
                } else {
                    emit_gone(self.rib_in.clear_of(f), out);
                }
            }
            self.stale_until =
                Some(now + Duration::from_secs(u64::from(self.conn.peer_restart_time)));
            out.push(Output::Warning(format!(
                "graceful restart: keeping {} routes of {} stale for {}s",
                self.rib_in.len(),
                self.cfg.remote_address,
                self.conn.peer_restart_time
            )));
        } else if self.state == State::Established || self.rib_in.stale_count() == 0 {
            self.flush_all(out);
        }
        self.down(now, out);
    }

    fn bytes(&mut self, b: &[u8], now: Instant, out: &mut Vec<Output>) {
        if !matches!(
            self.state,
            State::OpenSent | State::OpenConfirm | State::Established
        ) {
            return;
        }
        // The buffer holds less than one message between calls (≤ 4095 bytes) plus the chunk
        // the driver read; frames are consumed through an offset and drained once.
        self.conn.buf.extend_from_slice(b);
        let buf = std::mem::take(&mut self.conn.buf);
        let mut at = 0;
        while self.connected() {
            let frame = match codec::frame_len(&buf[at..]) {
                Ok(Some(len)) => &buf[at..at + len],
                Ok(None) => break,
                Err(e) => return self.decode_failed(e, now, out),
            };
            at += frame.len();
            debug_assert!(frame.len() <= MAX_MESSAGE_LEN);
            match codec::decode(frame) {
                Ok(d) => {
                    for (code, why) in d.report.discarded {
                        out.push(Output::Warning(format!(
                            "attribute {code} discarded: {why}"
                        )));
                    }
                    if let Some(why) = d.report.treat_as_withdraw {
                        out.push(Output::Warning(format!(
                            "UPDATE treated as withdraw: {why}"
                        )));
                    }
                    if let Some(m) = d.message {
                        self.message(m, now, out);
                    }
                }
                Err(e) => return self.decode_failed(e, now, out),
            }
        }
        if self.connected() {
            self.conn.buf = buf[at..].to_vec();
        }
    }

    fn connected(&self) -> bool {
        matches!(
            self.state,
            State::OpenSent | State::OpenConfirm | State::Established
        )
    }

    fn decode_failed(&mut self, e: DecodeError, now: Instant, out: &mut Vec<Output>) {
        self.fail(e.notification, e.reason, now, out);
    }

    fn restart_hold(&mut self, now: Instant) {
        if self.conn.hold > 0 {
            self.conn.hold_at = Some(now + Duration::from_secs(u64::from(self.conn.hold)));
        }
    }

    fn message(&mut self, m: Message, now: Instant, out: &mut Vec<Output>) {
        if let Message::Notification(n) = m {
            self.record(SessionError::NotificationReceived(n), out);
            out.push(Output::Close);
            self.flush_all(out);
            self.down(now, out);
            return;
        }
        match (self.state, m) {
            (State::OpenSent, Message::Open(open)) => self.open(open, now, out),
            (State::OpenConfirm, Message::Keepalive) => {
                self.restart_hold(now);
                self.goto(State::Established, out);
                self.on_established(now, out);
            }
            (State::Established, Message::Keepalive) => self.restart_hold(now),
            (State::Established, Message::Update(u)) => {
                self.restart_hold(now);
                self.updates_received += 1;
                self.update(u, now, out);
            }
            (State::Established, Message::RouteRefresh(f)) => {
                self.restart_hold(now);
                self.refreshes_received += 1;
                if self.negotiated(f) {
                    self.send_family(f, out);
                }
            }
            (state, m) => {
                let sub = match state {
                    State::OpenSent => 1,
                    State::OpenConfirm => 2,
                    _ => 3,
                };
                let kind = match m {
                    Message::Open(_) => "OPEN",
                    Message::Update(_) => "UPDATE",
                    Message::Keepalive => "KEEPALIVE",
                    Message::RouteRefresh(_) => "ROUTE-REFRESH",
                    Message::Notification(_) => "NOTIFICATION",
                };
                self.fail(
                    Notification::new(5, sub),
                    format!("unexpected {kind} in {state:?}"),
                    now,
                    out,
                );
            }
        }
    }

    fn open(&mut self, open: Open, now: Instant, out: &mut Vec<Output>) {
        if open.asn != self.cfg.remote_as {
            let field = u16::try_from(open.asn).unwrap_or(23456).to_be_bytes();
            return self.fail(
                Notification::with_data(2, 2, field),
                format!(
                    "peer AS {} is not the configured {}",
                    open.asn, self.cfg.remote_as
                ),
                now,
                out,
            );
        }
        if open.capabilities.four_octet_as.is_none() {
            // Data: the capability we require (RFC 5492 §5): code 65, length 4, our AS.
            let mut data = vec![65, 4];
            data.extend_from_slice(&self.cfg.local_as.to_be_bytes());
            return self.fail(
                Notification::with_data(2, 7, data),
                "peer lacks the 4-octet AS capability (RFC 6793), which this speaker requires"
                    .into(),
                now,
                out,
            );
        }
        if open.router_id == self.cfg.router_id {
            return self.fail(
                Notification::new(2, 3),
                format!("peer BGP identifier {} equals ours", open.router_id),
                now,
                out,
            );
        }
        let hold = self.cfg.hold_time.min(open.hold_time);
        self.conn.hold = hold;
        self.conn.families = self
            .cfg
            .families
            .iter()
            .copied()
            .filter(|f| open.capabilities.families.contains(f))
            .collect();
        let gr = open.capabilities.graceful_restart.as_ref();
        self.conn.peer_gr = self
            .conn
            .families
            .iter()
            .copied()
            .filter(|f| gr.is_some_and(|g| g.families.contains(&(*f, true))))
            .collect();
        self.conn.peer_restart_time = gr.map(|g| g.restart_time).unwrap_or(0);
        self.conn.peer_route_refresh = open.capabilities.route_refresh;
        self.conn.peer = Some(open);
        self.after_open_stale(now, out);
        out.push(Output::Send(codec::encode_keepalive()));
        if hold > 0 {
            self.conn.hold_at = Some(now + Duration::from_secs(u64::from(hold)));
            self.conn.keepalive_at = Some(now + self.keepalive_interval());
        } else {
            self.conn.hold_at = None;
            self.conn.keepalive_at = None;
        }
        self.goto(State::OpenConfirm, out);
    }

    /// After the restarted peer's OPEN: keep its stale routes only if it still preserves
    /// forwarding (RFC 4724 §4.2), now until its End-of-RIB or the stale-path time.
    fn after_open_stale(&mut self, now: Instant, out: &mut Vec<Output>) {
        if self.rib_in.stale_count() == 0 {
            return;
        }
        for f in [Family::Ipv6Unicast, Family::L2vpnEvpn] {
            if !self.conn.peer_gr.contains(&f) {
                emit_gone(self.rib_in.sweep_stale_of(f), out);
            }
        }
        self.stale_until = (self.rib_in.stale_count() > 0).then(|| now + self.cfg.stale_path_time);
    }

    fn on_established(&mut self, now: Instant, out: &mut Vec<Output>) {
        self.conn.established_at = Some(now);
        self.last_error = None;
        self.send_all(out);
    }

    /// All our routes of every negotiated family, each followed by its End-of-RIB.
    fn send_all(&mut self, out: &mut Vec<Output>) {
        for f in self.conn.families.clone() {
            self.send_family(f, out);
        }
    }

    /// All our routes of one family, then End-of-RIB (RFC 4724 §2; harmless for peers
    /// without GR).
    fn send_family(&mut self, f: Family, out: &mut Vec<Output>) {
        if f == Family::L2vpnEvpn {
            let routes: Vec<EvpnRoute> = self.rib_out_evpn.values().cloned().collect();
            self.send_evpn(&routes, out);
            match codec::encode_end_of_rib(f) {
                Ok(m) => out.push(Output::Send(m)),
                Err(e) => self.record(SessionError::Encode(e.to_string()), out),
            }
            return;
        }
        let mut by_nh: BTreeMap<Ipv6Addr, Vec<Ipv6Net>> = BTreeMap::new();
        for (p, nh) in &self.rib_out {
            by_nh.entry(*nh).or_default().push(*p);
        }
        for (nh, ps) in by_nh {
            self.send_announce(&ps, nh, out);
        }
        match codec::encode_end_of_rib(Family::Ipv6Unicast) {
            Ok(m) => out.push(Output::Send(m)),
            Err(e) => self.record(SessionError::Encode(e.to_string()), out),
        }
    }

    /// The attributes of everything we originate.
    fn our_attrs(&self) -> PathAttributes {
        let ibgp = self.cfg.is_ibgp();
        PathAttributes {
            origin: Origin::Igp,
            // eBGP: prepend our AS (RFC 4271 §5.1.2); iBGP: we originate, so the path is empty.
            as_path: if ibgp {
                vec![]
            } else {
                vec![AsSegment::Sequence(vec![self.cfg.local_as])]
            },
            med: None,
            local_pref: ibgp.then_some(crate::rib::DEFAULT_LOCAL_PREF),
        }
    }

    fn send_evpn(&mut self, routes: &[EvpnRoute], out: &mut Vec<Output>) {
        let attrs = self.our_attrs();
        for r in routes {
            match codec::encode_evpn_announce(r, &attrs) {
                Ok(m) => out.push(Output::Send(m)),
                Err(e) => self.record(SessionError::Encode(e.to_string()), out),
            }
        }
    }

    fn send_announce(&mut self, prefixes: &[Ipv6Net], next_hop: Ipv6Addr, out: &mut Vec<Output>) {
        let attrs = self.our_attrs();
        let reach = Reach {
            next_hop,
            next_hop_local: None,
            prefixes: prefixes.to_vec(),
        };
        match codec::encode_announce(&reach, &attrs) {
            Ok(msgs) => out.extend(msgs.into_iter().map(Output::Send)),
            Err(e) => self.record(SessionError::Encode(e.to_string()), out),
        }
    }

    fn update(&mut self, u: Update, now: Instant, out: &mut Vec<Output>) {
        // Routes of families not negotiated are ignored (RFC 4760 §7).
        let ipv6 = self.negotiated(Family::Ipv6Unicast);
        let evpn = self.negotiated(Family::L2vpnEvpn);
        if ipv6 {
            for p in &u.withdrawn {
                if self.rib_in.remove(p) {
                    out.push(Output::Withdrawn(*p));
                }
            }
        }
        if evpn {
            for n in &u.evpn_withdrawn {
                if let Some(stored) = self.rib_in.remove_evpn(n) {
                    out.push(Output::WithdrawnEvpn(stored));
                }
            }
        }
        if let Some(f) = u.end_of_rib {
            if !self.negotiated(f) {
                return;
            }
            let swept = self.rib_in.sweep_stale_of(f);
            if !swept.is_empty() {
                out.push(Output::Warning(format!(
                    "End-of-RIB ({f:?}) from {}: {} stale routes removed",
                    self.cfg.remote_address,
                    swept.len()
                )));
            }
            if self.rib_in.stale_count() == 0 {
                self.stale_until = None;
            }
            emit_gone(swept, out);
            out.push(Output::EndOfRib(f));
            return;
        }
        if let Some((reach, attrs)) = u.reach.filter(|_| ipv6) {
            let Some(attrs) = self.accept_path(attrs, out) else {
                for p in reach.prefixes {
                    if self.rib_in.remove(&p) {
                        out.push(Output::Withdrawn(p));
                    }
                }
                return;
            };
            for p in reach.prefixes {
                let route = Route {
                    prefix: p,
                    next_hop: reach.next_hop,
                    attrs: attrs.clone(),
                };
                match self.rib_in.insert(route.clone(), self.cfg.max_prefixes) {
                    Insert::Changed => out.push(Output::Learned(route)),
                    Insert::Unchanged => {}
                    Insert::LimitExceeded => return self.too_many(Family::Ipv6Unicast, now, out),
                }
            }
        }
        if let Some((routes, attrs)) = u.evpn_reach.filter(|_| evpn) {
            let Some(attrs) = self.accept_path(attrs, out) else {
                for r in routes {
                    if let Some(stored) = self.rib_in.remove_evpn(&r.nlri) {
                        out.push(Output::WithdrawnEvpn(stored));
                    }
                }
                return;
            };
            for r in routes {
                match self
                    .rib_in
                    .insert_evpn(r.clone(), attrs.clone(), self.cfg.max_prefixes)
                {
                    Insert::Changed => out.push(Output::LearnedEvpn(r, attrs.clone())),
                    Insert::Unchanged => {}
                    Insert::LimitExceeded => return self.too_many(Family::L2vpnEvpn, now, out),
                }
            }
        }
    }

    /// AS-path checks of a received path; `None` (with a warning) when its routes are to be
    /// treated as withdrawn.
    fn accept_path(
        &mut self,
        mut attrs: PathAttributes,
        out: &mut Vec<Output>,
    ) -> Option<PathAttributes> {
        let ibgp = self.cfg.is_ibgp();
        let mut reject = None;
        if attrs.contains_as(self.cfg.local_as) {
            reject = Some("AS path contains our AS (loop)".to_string());
        } else if !ibgp && !self.cfg.route_server && attrs.first_as() != Some(self.cfg.remote_as) {
            // RFC 7606 §7.2 (from RFC 4271 §6.3): treat-as-withdraw.
            reject = Some(format!(
                "AS path does not start with the peer's AS {}",
                self.cfg.remote_as
            ));
        }
        if !ibgp {
            // LOCAL_PREF from an external peer is ignored (RFC 4271 §5.1.5).
            attrs.local_pref = None;
        }
        if let Some(why) = reject {
            out.push(Output::Warning(format!(
                "UPDATE treated as withdraw: {why}"
            )));
            return None;
        }
        Some(attrs)
    }

    fn too_many(&mut self, f: Family, now: Instant, out: &mut Vec<Output>) {
        // RFC 4486 §4: AFI, SAFI, upper bound.
        let (afi, safi) = f.afi_safi();
        let mut data = Vec::with_capacity(7);
        data.extend_from_slice(&afi.to_be_bytes());
        data.push(safi);
        data.extend_from_slice(&(self.cfg.max_prefixes as u32).to_be_bytes());
        self.fail(
            Notification::with_data(6, 1, data),
            format!(
                "peer sent more than {} routes (IPv6 and EVPN together)",
                self.cfg.max_prefixes
            ),
            now,
            out,
        );
    }
}

/// Turns RIB removals into Withdrawn / WithdrawnEvpn outputs.
fn emit_gone(gone: Vec<RibKey>, out: &mut Vec<Output>) {
    out.extend(gone.into_iter().map(|k| match k {
        RibKey::Ipv6(p) => Output::Withdrawn(p),
        RibKey::Evpn(n) => Output::WithdrawnEvpn(n),
    }));
}
