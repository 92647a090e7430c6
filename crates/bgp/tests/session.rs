//! Pure tests of the session state machine: transitions, timers on an injected clock,
//! capability negotiation, graceful restart, RFC 7606 cases built by hand as bytes, limits,
//! collision detection.

mod common;

use bgp::codec;
use bgp::fsm::{resolve_collision, Collision, Input, Output, SessionError, State};
use bgp::message::Message;
use common::*;
use ipnet::Ipv6Net;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

fn p(s: &str) -> Ipv6Net {
    s.parse().unwrap()
}
fn ip(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

fn ebgp_pair() -> Pair {
    let a = cfg(A_AS, 1, B_AS, "fd00::2");
    let mut b = cfg(B_AS, 2, A_AS, "fd00::1");
    b.passive = true;
    Pair::new(a, b)
}

/// A announces `prefix` with next hop fd00::1.
fn announce_a(pr: &mut Pair, prefix: &str) {
    pr.a_in(Input::Announce {
        prefix: p(prefix),
        next_hop: ip("fd00::1"),
    });
}

fn learned(events: &[Output]) -> Vec<Ipv6Net> {
    events
        .iter()
        .filter_map(|o| match o {
            Output::Learned(r) => Some(r.prefix),
            _ => None,
        })
        .collect()
}
fn withdrawn(events: &[Output]) -> Vec<Ipv6Net> {
    events
        .iter()
        .filter_map(|o| match o {
            Output::Withdrawn(p) => Some(*p),
            _ => None,
        })
        .collect()
}

#[test]
fn passive_waits_active_connects_and_both_establish() {
    let mut pr = ebgp_pair();
    let oa = pr.a.handle(Input::Start, pr.now);
    assert!(oa.contains(&Output::Connect));
    assert_eq!(pr.a.state(), State::Connect);
    let ob = pr.b.handle(Input::Start, pr.now);
    assert!(!ob.contains(&Output::Connect), "passive never connects");
    assert_eq!(pr.b.state(), State::Active);
    let oa = pr.a.handle(Input::TcpConnected, pr.now);
    assert_eq!(pr.a.state(), State::OpenSent);
    let ob = pr.b.handle(Input::TcpConnected, pr.now);
    pr.route(oa, ob);
    assert!(pr.both_established());
    let s = pr.a.status(pr.now);
    assert_eq!(s.remote_router_id, Some(Ipv4Addr::new(10, 0, 0, 2)));
    assert_eq!(s.hold_time, Some(90));
    // Both sent End-of-RIB after their (empty) initial updates.
    assert!(pr.a_events.iter().any(|o| matches!(o, Output::EndOfRib(_))));
    assert!(pr.b_events.iter().any(|o| matches!(o, Output::EndOfRib(_))));
}

#[test]
fn connect_failure_and_retry_timer() {
    let mut pr = ebgp_pair();
    pr.a_in(Input::Start);
    pr.a_in(Input::TcpFailed);
    assert_eq!(pr.a.state(), State::Active);
    assert!(pr.a.poll_timeout().is_some());
    let before = pr.a_events.len();
    pr.advance(Duration::from_millis(500));
    assert_eq!(pr.a.state(), State::Active, "retry not due yet");
    pr.advance(Duration::from_millis(600));
    assert_eq!(pr.a.state(), State::Connect);
    assert!(pr.a_events[before..].contains(&Output::Connect));
}

#[test]
fn routes_announced_learned_and_withdrawn_with_ebgp_attributes() {
    let mut pr = ebgp_pair();
    announce_a(&mut pr, "2001:db8:1::/64");
    pr.establish();
    assert!(pr.both_established());
    assert_eq!(learned(&pr.b_events), vec![p("2001:db8:1::/64")]);
    let route =
        pr.b.adj_rib_in()
            .get(&p("2001:db8:1::/64"))
            .unwrap()
            .0
            .clone();
    assert_eq!(route.next_hop, ip("fd00::1"));
    assert_eq!(route.attrs.first_as(), Some(A_AS), "eBGP prepends our AS");
    assert_eq!(route.attrs.local_pref, None, "no LOCAL_PREF on eBGP");
    // An announcement while established goes out at once; so does a withdrawal.
    announce_a(&mut pr, "2001:db8:2::/64");
    assert_eq!(pr.b.adj_rib_in().len(), 2);
    pr.a_in(Input::Withdraw(p("2001:db8:1::/64")));
    assert_eq!(withdrawn(&pr.b_events), vec![p("2001:db8:1::/64")]);
    assert_eq!(pr.a.status(pr.now).prefixes_sent, 1);
}

#[test]
fn ibgp_sends_local_pref_and_empty_path() {
    let a = cfg(A_AS, 1, A_AS, "fd00::2");
    let b = cfg(A_AS, 2, A_AS, "fd00::1");
    let mut pr = Pair::new(a, b);
    announce_a(&mut pr, "2001:db8:1::/64");
    pr.establish();
    assert!(
        pr.both_established(),
        "two active iBGP sessions (one connection each) come up"
    );
    let (r, _) = pr.b.adj_rib_in().get(&p("2001:db8:1::/64")).unwrap();
    assert_eq!(r.attrs.local_pref, Some(100));
    assert_eq!(r.attrs.as_path_len(), 0);
}

#[test]
fn hold_time_is_the_minimum_and_keepalives_follow_it() {
    let mut a = cfg(A_AS, 1, B_AS, "fd00::2");
    a.hold_time = 30;
    let mut b = cfg(B_AS, 2, A_AS, "fd00::1");
    b.hold_time = 9;
    let mut pr = Pair::new(a, b);
    pr.establish();
    assert_eq!(pr.a.status(pr.now).hold_time, Some(9));
    assert_eq!(pr.b.status(pr.now).hold_time, Some(9));
    // Keepalive every 3 s keeps both up well past the hold time.
    for _ in 0..10 {
        pr.advance(Duration::from_secs(3));
    }
    assert!(pr.both_established());
}

#[test]
fn hold_time_zero_means_no_timers() {
    let mut a = cfg(A_AS, 1, B_AS, "fd00::2");
    a.hold_time = 0;
    let b = cfg(B_AS, 2, A_AS, "fd00::1");
    let mut pr = Pair::new(a, b);
    pr.establish();
    assert!(pr.both_established());
    assert_eq!(pr.a.poll_timeout(), None);
    pr.advance(Duration::from_secs(3600));
    assert!(pr.both_established());
}

#[test]
fn hold_timer_expiry_sends_notification_and_flushes() {
    let mut pr = ebgp_pair();
    announce_a(&mut pr, "2001:db8:1::/64");
    pr.establish();
    // A goes silent (frozen): only B's timers run.
    pr.now += Duration::from_secs(91);
    let ob = pr.b.handle_timeout(pr.now);
    assert!(ob
        .iter()
        .any(|o| matches!(o, Output::Send(m) if m[18] == 3 && m[19] == 4)));
    assert!(ob.contains(&Output::Close));
    assert!(
        ob.contains(&Output::Withdrawn(p("2001:db8:1::/64"))),
        "a NOTIFICATION ends GR"
    );
    assert!(ob.iter().any(|o| matches!(
        o,
        Output::Error(SessionError::NotificationSent { notification, .. }) if notification.code == 4
    )));
    assert_eq!(pr.b.state(), State::Active, "passive peer listens again");
}

#[test]
fn graceful_restart_keeps_stale_routes_until_end_of_rib() {
    let mut pr = ebgp_pair();
    for pfx in ["2001:db8:1::/64", "2001:db8:2::/64"] {
        pr.a_in(Input::Announce {
            prefix: p(pfx),
            next_hop: ip("fd00::1"),
        });
    }
    pr.establish();
    assert!(pr.b.status(pr.now).graceful_restart);
    // A restarts: its TCP connection just closes (no NOTIFICATION).
    pr.b_events.clear();
    pr.b_in(Input::TcpClosed);
    assert!(
        withdrawn(&pr.b_events).is_empty(),
        "kept: {:?}",
        pr.b_events
    );
    assert_eq!(pr.b.status(pr.now).prefixes_stale, 2);
    // A comes back with only one of the two routes; End-of-RIB sweeps the other.
    let mut a2 = bgp::fsm::Session::new(pr.a.config().clone());
    let mut oa = a2.handle(
        Input::Announce {
            prefix: p("2001:db8:1::/64"),
            next_hop: ip("fd00::1"),
        },
        pr.now,
    );
    pr.a = a2;
    oa.extend(pr.a.handle(Input::Start, pr.now));
    pr.route(oa, vec![]);
    pr.establish();
    assert!(pr.both_established());
    assert_eq!(withdrawn(&pr.b_events), vec![p("2001:db8:2::/64")]);
    assert_eq!(pr.b.status(pr.now).prefixes_stale, 0);
    assert_eq!(pr.b.adj_rib_in().len(), 1);
}

#[test]
fn graceful_restart_timer_expiry_flushes_stale_routes() {
    let mut a = cfg(A_AS, 1, B_AS, "fd00::2");
    a.graceful_restart_time = Some(30);
    let mut b = cfg(B_AS, 2, A_AS, "fd00::1");
    b.passive = true;
    let mut pr = Pair::new(a, b);
    announce_a(&mut pr, "2001:db8:1::/64");
    pr.establish();
    pr.b_in(Input::TcpClosed);
    pr.now += Duration::from_secs(29);
    let ob = pr.b.handle_timeout(pr.now);
    pr.route(vec![], ob);
    assert_eq!(pr.b.adj_rib_in().stale_count(), 1);
    pr.now += Duration::from_secs(2);
    let ob = pr.b.handle_timeout(pr.now);
    assert!(ob.contains(&Output::Withdrawn(p("2001:db8:1::/64"))));
    assert!(pr.b.adj_rib_in().is_empty());
}

#[test]
fn without_graceful_restart_routes_go_at_once() {
    let mut a = cfg(A_AS, 1, B_AS, "fd00::2");
    a.graceful_restart_time = None;
    let mut b = cfg(B_AS, 2, A_AS, "fd00::1");
    b.passive = true;
    let mut pr = Pair::new(a, b);
    announce_a(&mut pr, "2001:db8:1::/64");
    pr.establish();
    assert!(!pr.b.status(pr.now).graceful_restart);
    pr.b_in(Input::TcpClosed);
    assert_eq!(withdrawn(&pr.b_events), vec![p("2001:db8:1::/64")]);
}

#[test]
fn route_refresh_resends_routes() {
    let mut pr = ebgp_pair();
    announce_a(&mut pr, "2001:db8:1::/64");
    pr.establish();
    let before = pr.a_sent.len();
    pr.b_in(Input::RequestRefresh);
    let resent: Vec<_> = pr.a_sent[before..]
        .iter()
        .filter_map(|m| match codec::decode(m).ok()?.message? {
            Message::Update(u) => u.reach.map(|(r, _)| r.prefixes),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(resent, vec![p("2001:db8:1::/64")]);
}

#[test]
fn max_prefix_limit_tears_down_with_cease() {
    let a = cfg(A_AS, 1, B_AS, "fd00::2");
    let mut b = cfg(B_AS, 2, A_AS, "fd00::1");
    b.max_prefixes = 2;
    let mut pr = Pair::new(a, b);
    for i in 1..=3u16 {
        pr.a_in(Input::Announce {
            prefix: Ipv6Net::new(Ipv6Addr::new(0x2001, 0xdb8, i, 0, 0, 0, 0, 0), 64).unwrap(),
            next_hop: ip("fd00::1"),
        });
    }
    pr.establish();
    let (code, sub, data) = notification_of(&pr.b_sent).expect("B sent a NOTIFICATION");
    assert_eq!((code, sub), (6, 1));
    assert_eq!(
        data,
        vec![0, 2, 1, 0, 0, 0, 2],
        "AFI, SAFI, limit (RFC 4486)"
    );
    assert_ne!(pr.b.state(), State::Established);
    assert!(pr.b.adj_rib_in().is_empty());
}

fn established_b() -> Pair {
    let mut pr = ebgp_pair();
    pr.establish();
    assert!(pr.both_established());
    pr.b_events.clear();
    pr.b_sent.clear();
    pr
}

#[test]
fn rfc7606_malformed_optional_attribute_is_discarded() {
    let mut pr = established_b();
    // AGGREGATOR with 3 bytes (4-octet form needs 8): attribute discard.
    let mut attrs = ORIGIN_IGP.to_vec();
    attrs.extend(as_path(&[A_AS]));
    attrs.extend([0xc0, 7, 3, 1, 2, 3]);
    attrs.extend(mp_reach(NH, P1));
    pr.b_in(Input::Bytes(&update(&attrs)));
    assert_eq!(pr.b.state(), State::Established);
    assert_eq!(learned(&pr.b_events), vec![p("2001:db8:1::/64")]);
    assert!(pr
        .b_events
        .iter()
        .any(|o| matches!(o, Output::Warning(w) if w.contains("attribute 7 discarded"))));
}

#[test]
fn rfc7606_malformed_med_is_treat_as_withdraw() {
    let mut pr = established_b();
    let mut good = ORIGIN_IGP.to_vec();
    good.extend(as_path(&[A_AS]));
    good.extend(mp_reach(NH, P1));
    pr.b_in(Input::Bytes(&update(&good)));
    assert_eq!(learned(&pr.b_events), vec![p("2001:db8:1::/64")]);
    // Same prefix again with a 3-byte MED: the earlier route is withdrawn, session stays.
    let mut bad = ORIGIN_IGP.to_vec();
    bad.extend(as_path(&[A_AS]));
    bad.extend([0x80, 4, 3, 0, 0, 1]);
    bad.extend(mp_reach(NH, P1));
    pr.b_in(Input::Bytes(&update(&bad)));
    assert_eq!(pr.b.state(), State::Established);
    assert_eq!(withdrawn(&pr.b_events), vec![p("2001:db8:1::/64")]);
    assert!(pr.b_sent.iter().all(|m| m[18] != 3), "no NOTIFICATION");
}

#[test]
fn rfc7606_bad_next_hop_and_bad_as_path_are_treat_as_withdraw() {
    let mut pr = established_b();
    // Next hop :: (not unicast).
    let mut attrs = ORIGIN_IGP.to_vec();
    attrs.extend(as_path(&[A_AS]));
    attrs.extend(mp_reach([0; 16], P1));
    pr.b_in(Input::Bytes(&update(&attrs)));
    // Legacy NEXT_HOP with a wrong length.
    let mut attrs = ORIGIN_IGP.to_vec();
    attrs.extend(as_path(&[A_AS]));
    attrs.extend([0x40, 3, 3, 1, 2, 3]);
    attrs.extend(mp_reach(NH, P2));
    pr.b_in(Input::Bytes(&update(&attrs)));
    // eBGP path not starting with the peer's AS.
    let mut attrs = ORIGIN_IGP.to_vec();
    attrs.extend(as_path(&[64999]));
    attrs.extend(mp_reach(NH, P2));
    pr.b_in(Input::Bytes(&update(&attrs)));
    // Missing ORIGIN.
    let mut attrs = as_path(&[A_AS]);
    attrs.extend(mp_reach(NH, P2));
    pr.b_in(Input::Bytes(&update(&attrs)));
    assert_eq!(pr.b.state(), State::Established);
    assert!(learned(&pr.b_events).is_empty(), "{:?}", pr.b_events);
    let warnings = pr
        .b_events
        .iter()
        .filter(|o| matches!(o, Output::Warning(w) if w.contains("treated as withdraw")))
        .count();
    assert_eq!(warnings, 4);
}

#[test]
fn rfc7606_withdraw_and_end_of_rib_by_hand() {
    let mut pr = established_b();
    let mut attrs = ORIGIN_IGP.to_vec();
    attrs.extend(as_path(&[A_AS]));
    attrs.extend(mp_reach(NH, P1));
    pr.b_in(Input::Bytes(&update(&attrs)));
    pr.b_in(Input::Bytes(&update(&mp_unreach(P1))));
    assert_eq!(withdrawn(&pr.b_events), vec![p("2001:db8:1::/64")]);
    pr.b_in(Input::Bytes(&update(&[0x80, 15, 3, 0, 2, 1])));
    assert!(pr.b_events.iter().any(|o| matches!(o, Output::EndOfRib(_))));
}

fn reset_with(bytes: &[u8]) -> (u8, u8, Vec<u8>) {
    let mut pr = established_b();
    pr.b_in(Input::Bytes(bytes));
    assert_ne!(pr.b.state(), State::Established);
    notification_of(&pr.b_sent).expect("a NOTIFICATION")
}

#[test]
fn header_errors_give_the_right_notification() {
    let mut bad_marker = codec::encode_keepalive();
    bad_marker[3] = 0;
    assert_eq!(reset_with(&bad_marker), (1, 1, vec![]));
    let mut bad_len = codec::encode_keepalive();
    bad_len[17] = 18;
    assert_eq!(reset_with(&bad_len), (1, 2, vec![0, 18]));
    let mut long_keepalive = msg(4, &[0]);
    long_keepalive.truncate(20);
    assert_eq!(reset_with(&long_keepalive), (1, 2, vec![0, 20]));
    let mut too_long = vec![0xff; 16];
    too_long.extend_from_slice(&[0x10, 0x01, 2]);
    assert_eq!(reset_with(&too_long), (1, 2, vec![0x10, 0x01]));
    assert_eq!(reset_with(&msg(9, &[])), (1, 3, vec![9]));
    // Attribute length overrunning the list: Malformed Attribute List.
    let mut attrs = ORIGIN_IGP.to_vec();
    attrs.extend([0x40, 2, 200, 2]);
    assert_eq!(reset_with(&update(&attrs)).0, 3);
    // Malformed MP_REACH (next-hop length 5): session reset (RFC 7606 §7.11).
    let mut attrs = ORIGIN_IGP.to_vec();
    attrs.extend(as_path(&[A_AS]));
    attrs.extend([0x80, 14, 9, 0, 2, 1, 5, 1, 2, 3, 4, 5]);
    assert_eq!(reset_with(&update(&attrs)).0, 3);
}

fn open_body(version: u8, asn: u16, hold: u16, id: [u8; 4], with_as4: Option<u32>) -> Vec<u8> {
    let mut caps = vec![1, 4, 0, 2, 0, 1];
    if let Some(a) = with_as4 {
        caps.extend([65, 4]);
        caps.extend(a.to_be_bytes());
    }
    let mut v = vec![version];
    v.extend(asn.to_be_bytes());
    v.extend(hold.to_be_bytes());
    v.extend(id);
    v.push(caps.len() as u8 + 2);
    v.extend([2, caps.len() as u8]);
    v.extend(caps);
    v
}

fn open_reply(body: &[u8]) -> (State, Option<(u8, u8, Vec<u8>)>) {
    let mut b = cfg(B_AS, 2, A_AS, "fd00::1");
    b.passive = true;
    let mut s = bgp::fsm::Session::new(b);
    let now = std::time::Instant::now();
    s.handle(Input::Start, now);
    s.handle(Input::TcpConnected, now);
    let out = s.handle(Input::Bytes(&msg(1, body)), now);
    let sent: Vec<Vec<u8>> = out
        .into_iter()
        .filter_map(|o| match o {
            Output::Send(b) => Some(b),
            _ => None,
        })
        .collect();
    (s.state(), notification_of(&sent))
}

#[test]
fn open_errors() {
    let id = [10, 0, 0, 1];
    let ok = open_reply(&open_body(4, A_AS as u16, 90, id, Some(A_AS)));
    assert_eq!(ok, (State::OpenConfirm, None));
    assert_eq!(
        open_reply(&open_body(3, A_AS as u16, 90, id, Some(A_AS))).1,
        Some((2, 1, vec![0, 4]))
    );
    assert_eq!(
        open_reply(&open_body(4, 64999, 90, id, Some(64999)))
            .1
            .map(|n| (n.0, n.1)),
        Some((2, 2))
    );
    assert_eq!(
        open_reply(&open_body(4, A_AS as u16, 1, id, Some(A_AS)))
            .1
            .map(|n| (n.0, n.1)),
        Some((2, 6))
    );
    assert_eq!(
        open_reply(&open_body(4, A_AS as u16, 90, [0, 0, 0, 0], Some(A_AS)))
            .1
            .map(|n| (n.0, n.1)),
        Some((2, 3))
    );
    assert_eq!(
        open_reply(&open_body(4, A_AS as u16, 90, [10, 0, 0, 2], Some(A_AS)))
            .1
            .map(|n| (n.0, n.1)),
        Some((2, 3)),
        "our own id"
    );
    assert_eq!(
        open_reply(&open_body(4, A_AS as u16, 90, id, None))
            .1
            .map(|n| (n.0, n.1)),
        Some((2, 7))
    );
}

#[test]
fn unexpected_messages_are_fsm_errors() {
    let (_, n) = open_reply(&[]);
    assert!(n.is_some());
    let mut b = cfg(B_AS, 2, A_AS, "fd00::1");
    b.passive = true;
    let mut s = bgp::fsm::Session::new(b);
    let now = std::time::Instant::now();
    s.handle(Input::Start, now);
    s.handle(Input::TcpConnected, now);
    let out = s.handle(Input::Bytes(&codec::encode_keepalive()), now);
    let sent: Vec<_> = out
        .into_iter()
        .filter_map(|o| match o {
            Output::Send(b) => Some(b),
            _ => None,
        })
        .collect();
    assert_eq!(notification_of(&sent).map(|n| (n.0, n.1)), Some((5, 1)));
}

#[test]
fn bytes_split_anywhere_give_the_same_result() {
    let mut pr = established_b();
    let mut attrs = ORIGIN_IGP.to_vec();
    attrs.extend(as_path(&[A_AS]));
    attrs.extend(mp_reach(NH, P1));
    let mut stream = update(&attrs);
    stream.extend(codec::encode_keepalive());
    stream.extend(update(&mp_unreach(P1)));
    for b in stream.chunks(1) {
        pr.b_in(Input::Bytes(b));
    }
    assert_eq!(pr.b.state(), State::Established);
    assert_eq!(learned(&pr.b_events), vec![p("2001:db8:1::/64")]);
    assert_eq!(withdrawn(&pr.b_events), vec![p("2001:db8:1::/64")]);
}

#[test]
fn stop_sends_cease_and_stays_idle() {
    let mut pr = ebgp_pair();
    pr.establish();
    pr.a_in(Input::Stop);
    assert_eq!(pr.a.state(), State::Idle);
    assert_eq!(
        notification_of(&pr.a_sent).map(|n| (n.0, n.1)),
        Some((6, 2))
    );
    pr.advance(Duration::from_secs(60));
    assert_eq!(
        pr.a.state(),
        State::Idle,
        "no automatic restart after a manual stop"
    );
}

#[test]
fn collision_keeps_the_higher_identifiers_connection() {
    let low = Ipv4Addr::new(10, 0, 0, 1);
    let high = Ipv4Addr::new(10, 0, 0, 2);
    assert_eq!(resolve_collision(low, high), Collision::KeepIncoming);
    assert_eq!(resolve_collision(high, low), Collision::KeepOutgoing);
    // The loser's connection is closed with Cease/Connection Collision Resolution.
    let mut pr = ebgp_pair();
    pr.a_in(Input::Start);
    pr.a_in(Input::TcpConnected);
    let out = pr.a.close_for_collision(pr.now);
    let sent: Vec<_> = out
        .iter()
        .filter_map(|o| match o {
            Output::Send(b) => Some(b.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(notification_of(&sent).map(|n| (n.0, n.1)), Some((6, 7)));
    assert!(out.contains(&Output::Close));
    // The winner's connection state moves into the session that keeps the RIBs.
    let mut winner = bgp::fsm::Session::new(pr.a.config().clone());
    winner.handle(Input::Start, pr.now);
    winner.handle(Input::TcpConnected, pr.now);
    let out = pr.a.adopt_connection(winner, pr.now);
    assert_eq!(pr.a.state(), State::OpenSent);
    assert!(out.iter().any(|o| matches!(
        o,
        Output::StateChanged {
            to: State::OpenSent,
            ..
        }
    )));
}
