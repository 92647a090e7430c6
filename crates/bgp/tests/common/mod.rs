//! Shared helpers of the pure tests: two sessions wired back to back, and hand-made messages.
#![allow(dead_code)]

use bgp::fsm::{Input, Output, Session, SessionConfig, State};
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

pub const A_AS: u32 = 65001;
pub const B_AS: u32 = 65002;

pub fn cfg(local_as: u32, id: u8, remote_as: u32, peer: &str) -> SessionConfig {
    let mut c = SessionConfig::new(
        local_as,
        Ipv4Addr::new(10, 0, 0, id),
        remote_as,
        peer.parse::<IpAddr>().unwrap(),
    );
    c.connect_retry = Duration::from_secs(1);
    c
}

/// Two sessions back to back with an injected clock.
pub struct Pair {
    pub a: Session,
    pub b: Session,
    pub now: Instant,
    /// Non-Send outputs seen, per side.
    pub a_events: Vec<Output>,
    pub b_events: Vec<Output>,
    pub a_sent: Vec<Vec<u8>>,
    pub b_sent: Vec<Vec<u8>>,
}

impl Pair {
    pub fn new(a: SessionConfig, b: SessionConfig) -> Pair {
        Pair {
            a: Session::new(a),
            b: Session::new(b),
            now: Instant::now(),
            a_events: vec![],
            b_events: vec![],
            a_sent: vec![],
            b_sent: vec![],
        }
    }

    /// Starts both and connects them; returns after the exchange settles.
    pub fn establish(&mut self) {
        let now = self.now;
        let oa = self.a.handle(Input::Start, now);
        let ob = self.b.handle(Input::Start, now);
        self.route(oa, ob);
        let oa = self.a.handle(Input::TcpConnected, now);
        let ob = self.b.handle(Input::TcpConnected, now);
        self.route(oa, ob);
    }

    /// Delivers outputs, moving bytes to the other side until nothing is left.
    pub fn route(&mut self, mut oa: Vec<Output>, mut ob: Vec<Output>) {
        for _ in 0..100 {
            if oa.is_empty() && ob.is_empty() {
                return;
            }
            let mut to_b = Vec::new();
            let mut to_a = Vec::new();
            for o in oa.drain(..) {
                match o {
                    Output::Send(bytes) => {
                        self.a_sent.push(bytes.clone());
                        to_b.push(bytes)
                    }
                    other => self.a_events.push(other),
                }
            }
            for o in ob.drain(..) {
                match o {
                    Output::Send(bytes) => {
                        self.b_sent.push(bytes.clone());
                        to_a.push(bytes)
                    }
                    other => self.b_events.push(other),
                }
            }
            for bytes in to_b {
                ob.extend(self.b.handle(Input::Bytes(&bytes), self.now));
            }
            for bytes in to_a {
                oa.extend(self.a.handle(Input::Bytes(&bytes), self.now));
            }
        }
        panic!("sessions did not settle");
    }

    pub fn a_in(&mut self, i: Input<'_>) {
        let o = self.a.handle(i, self.now);
        self.route(o, vec![]);
    }

    pub fn b_in(&mut self, i: Input<'_>) {
        let o = self.b.handle(i, self.now);
        self.route(vec![], o);
    }

    /// Advances the clock and fires both sessions' timers.
    pub fn advance(&mut self, d: Duration) {
        self.now += d;
        let oa = self.a.handle_timeout(self.now);
        let ob = self.b.handle_timeout(self.now);
        self.route(oa, ob);
    }

    pub fn both_established(&self) -> bool {
        self.a.state() == State::Established && self.b.state() == State::Established
    }
}

/// A BGP message from type and body.
pub fn msg(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![0xff; 16];
    v.extend_from_slice(&((19 + body.len()) as u16).to_be_bytes());
    v.push(kind);
    v.extend_from_slice(body);
    v
}

/// An UPDATE with no IPv4 fields and these path attributes.
pub fn update(attrs: &[u8]) -> Vec<u8> {
    let mut body = vec![0, 0];
    body.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    body.extend_from_slice(attrs);
    msg(2, &body)
}

pub const ORIGIN_IGP: [u8; 4] = [0x40, 1, 1, 0];

pub fn as_path(asns: &[u32]) -> Vec<u8> {
    let mut v = vec![0x40, 2, (2 + 4 * asns.len()) as u8, 2, asns.len() as u8];
    for a in asns {
        v.extend_from_slice(&a.to_be_bytes());
    }
    v
}

/// MP_REACH_NLRI for IPv6 unicast with a /64 (8 prefix bytes).
pub fn mp_reach(next_hop: [u8; 16], prefix: [u8; 8]) -> Vec<u8> {
    let mut val = vec![0, 2, 1, 16];
    val.extend_from_slice(&next_hop);
    val.push(0);
    val.push(64);
    val.extend_from_slice(&prefix);
    let mut v = vec![0x90, 14];
    v.extend_from_slice(&(val.len() as u16).to_be_bytes());
    v.extend_from_slice(&val);
    v
}

pub fn mp_unreach(prefix: [u8; 8]) -> Vec<u8> {
    let mut val = vec![0, 2, 1, 64];
    val.extend_from_slice(&prefix);
    let mut v = vec![0x90, 15];
    v.extend_from_slice(&(val.len() as u16).to_be_bytes());
    v.extend_from_slice(&val);
    v
}

pub const NH: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
pub const P1: [u8; 8] = [0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0];
pub const P2: [u8; 8] = [0x20, 0x01, 0x0d, 0xb8, 0, 2, 0, 0];

/// (code, subcode) of a NOTIFICATION among the sent messages, if any.
pub fn notification_of(sent: &[Vec<u8>]) -> Option<(u8, u8, Vec<u8>)> {
    sent.iter()
        .find(|m| m.len() >= 21 && m[18] == 3)
        .map(|m| (m[19], m[20], m[21..].to_vec()))
}

/// Runs a command (the daemons' CLIs, iproute2) and returns its output; panics if it cannot start.
pub fn sh(args: &[&str]) -> std::process::Output {
    std::process::Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

/// [`sh`], and the command must succeed.
pub fn must(args: &[&str]) {
    let o = sh(args);
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// [`must`] inside network namespace `ns`.
pub fn ns_exec_must(ns: &str, args: &[&str]) {
    let mut v = vec!["ip", "netns", "exec", ns];
    v.extend_from_slice(args);
    must(&v);
}

/// Makes namespace `ns` joined to this one by a veth pair: `veth` here with address `ours`,
/// `{veth}p` in `ns` with `theirs` (both CIDR, `addr_flags` appended, e.g. `nodad`); both ends
/// and `ns`'s loopback up.
pub fn netns_with_veth(ns: &str, veth: &str, ours: &str, theirs: &str, addr_flags: &[&str]) {
    let peer = format!("{veth}p");
    must(&["ip", "netns", "add", ns]);
    must(&[
        "ip", "link", "add", veth, "type", "veth", "peer", "name", &peer,
    ]);
    must(&["ip", "link", "set", &peer, "netns", ns]);
    let mut add = vec!["ip", "addr", "add", ours, "dev", veth];
    add.extend_from_slice(addr_flags);
    must(&add);
    must(&["ip", "link", "set", veth, "up"]);
    let mut add = vec!["ip", "addr", "add", theirs, "dev", &peer];
    add.extend_from_slice(addr_flags);
    ns_exec_must(ns, &add);
    ns_exec_must(ns, &["ip", "link", "set", &peer, "up"]);
    ns_exec_must(ns, &["ip", "link", "set", "lo", "up"]);
}
