//! The tokio layer over loopback (no root): ilanet against ilanet, and crafted bytes from a raw
//! TCP socket (malformed input, header errors, unconfigured peers).

mod common;

use bgp::message::{Capabilities, Family, Open};
use bgp::{codec, BestChange, PeerConfig, Speaker, SpeakerConfig, State};
use common::*;
use ipnet::Ipv6Net;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc::Receiver;

fn free_port(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn speaker_cfg(me: &str, port: u16, asn: u32, id: u8, peers: Vec<PeerConfig>) -> SpeakerConfig {
    SpeakerConfig {
        local_as: asn,
        router_id: Ipv4Addr::new(10, 0, 0, id),
        listen: Some(SocketAddr::new(me.parse().unwrap(), port)),
        local_address: None,
        peers,
        graceful_restart_time: Some(30),
        connect_retry_secs: 1,
        families: vec![bgp::Family::Ipv6Unicast],
    }
}

fn peer(addr: &str, port: u16, asn: u32, passive: bool) -> PeerConfig {
    PeerConfig {
        address: addr.parse().unwrap(),
        remote_as: asn,
        passive,
        hold_time: 9,
        port,
        max_prefixes: 100,
        route_server: false,
    }
}

async fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn next_change(rx: &mut Receiver<BestChange>, secs: u64) -> Option<BestChange> {
    tokio::time::timeout(Duration::from_secs(secs), rx.recv())
        .await
        .ok()
        .flatten()
}

fn net(s: &str) -> Ipv6Net {
    s.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ilanet_against_ilanet_exchange_withdraw_refresh_and_graceful_restart() {
    let (pa, pb) = (free_port("127.0.0.1"), free_port("127.0.0.2"));
    // iBGP, both sides active: their connections collide and one survives (RFC 4271 §6.8).
    let cfg_a = speaker_cfg(
        "127.0.0.1",
        pa,
        65000,
        1,
        vec![peer("127.0.0.2", pb, 65000, false)],
    );
    let cfg_b = speaker_cfg(
        "127.0.0.2",
        pb,
        65000,
        2,
        vec![peer("127.0.0.1", pa, 65000, false)],
    );
    let (a, mut a_rx) = Speaker::start(cfg_a.clone()).await.unwrap();
    let (b, mut b_rx) = Speaker::start(cfg_b).await.unwrap();
    let t0 = Instant::now();
    wait_for("A and B established", 15, || {
        a.status().peers[0].state == State::Established
            && b.status().peers[0].state == State::Established
    })
    .await;
    println!("established after {:?}", t0.elapsed());

    a.announce(net("2001:db8:a::/64"), "fd00::a".parse().unwrap())
        .await;
    b.announce(net("2001:db8:b::/64"), "fd00::b".parse().unwrap())
        .await;
    match next_change(&mut b_rx, 5).await {
        Some(BestChange::Changed(r)) => {
            assert_eq!(r.prefix, net("2001:db8:a::/64"));
            assert_eq!(r.next_hop, "fd00::a".parse::<std::net::Ipv6Addr>().unwrap());
            assert_eq!(r.attrs.local_pref, Some(100));
        }
        other => panic!("B: {other:?}"),
    }
    assert!(
        matches!(next_change(&mut a_rx, 5).await, Some(BestChange::Changed(r)) if r.prefix == net("2001:db8:b::/64"))
    );
    // The status is refreshed by the peer task after it hands the change on: wait for it.
    wait_for("A's status to count one prefix each way", 5, || {
        let st = serde_json::to_value(a.status()).unwrap();
        st["peers"][0]["prefixes_received"] == 1 && st["peers"][0]["prefixes_sent"] == 1
    })
    .await;

    a.withdraw(net("2001:db8:a::/64")).await;
    assert_eq!(
        next_change(&mut b_rx, 5).await,
        Some(BestChange::Removed {
            prefix: net("2001:db8:a::/64")
        })
    );

    // Route refresh: B resends, A counts the UPDATEs.
    let before = a.status().peers[0].updates_received;
    a.refresh(None).await;
    wait_for("B sees the refresh", 5, || {
        b.status().peers[0].refreshes_received == 1
    })
    .await;
    wait_for("A gets B's routes again", 5, || {
        a.status().peers[0].updates_received > before
    })
    .await;

    // Graceful restart of A: dropped without NOTIFICATION; B keeps A's route stale.
    a.announce(net("2001:db8:a::/64"), "fd00::a".parse().unwrap())
        .await;
    assert!(matches!(
        next_change(&mut b_rx, 5).await,
        Some(BestChange::Changed(_))
    ));
    drop(a);
    drop(a_rx);
    wait_for("B notices", 5, || {
        b.status().peers[0].state != State::Established
    })
    .await;
    assert_eq!(b.status().peers[0].prefixes_stale, 1);
    assert!(
        next_change(&mut b_rx, 1).await.is_none(),
        "stale route kept"
    );
    // A' comes back without the route: its End-of-RIB clears the stale one.
    let (a2, _a2_rx) = Speaker::start(cfg_a).await.unwrap();
    let t1 = Instant::now();
    assert_eq!(
        next_change(&mut b_rx, 15).await,
        Some(BestChange::Removed {
            prefix: net("2001:db8:a::/64")
        })
    );
    println!("stale route cleared {:?} after restart", t1.elapsed());
    wait_for("A' established", 5, || {
        a2.status().peers[0].state == State::Established
    })
    .await;
    b.shutdown().await;
}

/// Opens a connection to `to` from `from` and completes the OPEN exchange as AS `asn`.
async fn raw_session(from: &str, to: SocketAddr, asn: u32) -> TcpStream {
    let s = raw_connect(from, to).await;
    let mut s = s;
    let open = Open {
        asn,
        hold_time: 30,
        router_id: Ipv4Addr::new(10, 9, 9, 9),
        capabilities: Capabilities {
            families: vec![Family::Ipv6Unicast],
            four_octet_as: Some(asn),
            route_refresh: true,
            graceful_restart: None,
        },
    };
    s.write_all(&codec::encode_open(&open).unwrap())
        .await
        .unwrap();
    s.write_all(&codec::encode_keepalive()).await.unwrap();
    // Their OPEN, KEEPALIVE and End-of-RIB.
    let mut seen = Vec::new();
    while !seen.iter().any(|m: &Vec<u8>| m[18] == 2) {
        seen.push(read_msg(&mut s).await.expect("message during the exchange"));
    }
    s
}

async fn raw_connect(from: &str, to: SocketAddr) -> TcpStream {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::new(from.parse().unwrap(), 0))
        .unwrap();
    sock.connect(to).await.unwrap()
}

async fn read_msg(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut hdr = [0u8; 19];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut hdr))
        .await
        .ok()?
        .ok()?;
    let len = u16::from_be_bytes([hdr[16], hdr[17]]) as usize;
    let mut body = vec![0u8; len.saturating_sub(19)];
    s.read_exact(&mut body).await.ok()?;
    let mut m = hdr.to_vec();
    m.extend(body);
    Some(m)
}

/// The NOTIFICATION the speaker answers with (skipping KEEPALIVEs).
async fn notification(s: &mut TcpStream) -> Option<(u8, u8, Vec<u8>)> {
    loop {
        let m = read_msg(s).await?;
        if m[18] == 3 {
            return Some((m[19], m[20], m[21..].to_vec()));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crafted_bytes_rfc7606_and_header_errors() {
    let port = free_port("127.0.0.1");
    let cfg = speaker_cfg(
        "127.0.0.1",
        port,
        B_AS,
        2,
        vec![peer("127.0.0.3", 179, A_AS, true)],
    );
    let (sp, _rx) = Speaker::start(cfg).await.unwrap();
    let to = SocketAddr::new("127.0.0.1".parse().unwrap(), port);
    let mut s = raw_session("127.0.0.3", to, A_AS).await;
    wait_for("established", 5, || {
        sp.status().peers[0].state == State::Established
    })
    .await;

    let good = |extra: &[u8], nh: [u8; 16], pfx: [u8; 8]| {
        let mut a = ORIGIN_IGP.to_vec();
        a.extend(as_path(&[A_AS]));
        a.extend(extra);
        a.extend(mp_reach(nh, pfx));
        update(&a)
    };
    let has = |sp: &Speaker, p: &str| sp.routes().iter().any(|r| r.prefix == net(p));
    // Malformed optional attribute (AGGREGATOR, 3 bytes): discarded, route accepted.
    s.write_all(&good(&[0xc0, 7, 3, 1, 2, 3], NH, P1))
        .await
        .unwrap();
    wait_for("P1 learned", 5, || has(&sp, "2001:db8:1::/64")).await;
    // Malformed MED for P1: treat-as-withdraw.
    s.write_all(&good(&[0x80, 4, 3, 0, 0, 1], NH, P1))
        .await
        .unwrap();
    wait_for("P1 withdrawn", 5, || !has(&sp, "2001:db8:1::/64")).await;
    // Bad next hop for P2 after a good one: withdrawn.
    s.write_all(&good(&[], NH, P2)).await.unwrap();
    wait_for("P2 learned", 5, || has(&sp, "2001:db8:2::/64")).await;
    let mut mcast = [0u8; 16];
    mcast[0] = 0xff;
    mcast[1] = 0x02;
    mcast[15] = 1;
    s.write_all(&good(&[], mcast, P2)).await.unwrap();
    wait_for("P2 withdrawn", 5, || !has(&sp, "2001:db8:2::/64")).await;
    assert_eq!(
        sp.status().peers[0].state,
        State::Established,
        "session survived RFC 7606 cases"
    );

    // Bad marker: Connection Not Synchronized.
    let mut bad = codec::encode_keepalive();
    bad[0] = 0;
    s.write_all(&bad).await.unwrap();
    assert_eq!(notification(&mut s).await.map(|n| (n.0, n.1)), Some((1, 1)));
    assert!(
        read_msg(&mut s).await.is_none(),
        "closed after the NOTIFICATION"
    );

    // Bad length (KEEPALIVE of 20 bytes): Bad Message Length with the length as data.
    let mut s = raw_session("127.0.0.3", to, A_AS).await;
    s.write_all(&msg(4, &[0])).await.unwrap();
    assert_eq!(notification(&mut s).await, Some((1, 2, vec![0, 20])));

    // Bad type.
    let mut s = raw_session("127.0.0.3", to, A_AS).await;
    s.write_all(&msg(42, &[])).await.unwrap();
    assert_eq!(notification(&mut s).await, Some((1, 3, vec![42])));

    // Unsupported version in the OPEN: data is the version we support.
    let mut s = raw_connect("127.0.0.3", to).await;
    let mut open = codec::encode_open(&Open {
        asn: A_AS,
        hold_time: 30,
        router_id: Ipv4Addr::new(10, 9, 9, 9),
        capabilities: Capabilities {
            four_octet_as: Some(A_AS),
            ..Capabilities::default()
        },
    })
    .unwrap();
    open[19] = 3;
    s.write_all(&open).await.unwrap();
    assert_eq!(notification(&mut s).await, Some((2, 1, vec![0, 4])));

    // An unconfigured source address is closed without a word.
    let mut s = raw_connect("127.0.0.9", to).await;
    assert!(read_msg(&mut s).await.is_none());
    let _: IpAddr = "127.0.0.9".parse().unwrap();
    wait_for("listening again", 5, || {
        sp.status().peers[0].state == State::Active
    })
    .await;
}

fn evpn_route(mac_last: u8, seq: Option<u32>) -> bgp::EvpnRoute {
    bgp::EvpnRoute {
        nlri: bgp::EvpnNlri::MacIp {
            rd: bgp::RouteDistinguisher::type1(Ipv4Addr::new(10, 0, 0, 1), 100),
            ethernet_tag: 0,
            mac: [2, 0, 0, 0, 0, mac_last],
            ip: Some("10.9.0.1".parse().unwrap()),
            vni: 100,
        },
        // A VTEP address (a loopback next hop is refused, RFC 7606 treat-as-withdraw).
        next_hop: "192.0.2.1".parse().unwrap(),
        route_targets: vec![bgp::RouteTarget::for_vni(65000, 100)],
        encapsulation_vxlan: true,
        mac_mobility: seq,
        pmsi_vni: None,
    }
}

async fn next_evpn(rx: &mut Receiver<bgp::EvpnChange>, secs: u64) -> Option<bgp::EvpnChange> {
    tokio::time::timeout(Duration::from_secs(secs), rx.recv())
        .await
        .ok()
        .flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evpn_between_two_speakers_resent_on_every_session() {
    let (pa, pb) = (free_port("127.0.0.1"), free_port("127.0.0.2"));
    let both = vec![Family::Ipv6Unicast, Family::L2vpnEvpn];
    let mut cfg_a = speaker_cfg(
        "127.0.0.1",
        pa,
        65000,
        1,
        vec![peer("127.0.0.2", pb, 65000, true)],
    );
    cfg_a.families = both.clone();
    let mut cfg_b = speaker_cfg(
        "127.0.0.2",
        pb,
        65000,
        2,
        vec![peer("127.0.0.1", pa, 65000, false)],
    );
    cfg_b.families = both;
    let (mut a, _a_v6) = Speaker::start(cfg_a).await.unwrap();
    assert!(a.evpn_changes().is_some());
    assert!(a.evpn_changes().is_none(), "the stream is taken once");
    // Announced before any session: sent when it comes up.
    a.announce_evpn(evpn_route(1, Some(4))).await;
    let (mut b, _b_v6) = Speaker::start(cfg_b.clone()).await.unwrap();
    let mut b_rx = b.evpn_changes().unwrap();
    match next_evpn(&mut b_rx, 15).await {
        Some(bgp::EvpnChange::Changed(r)) => {
            assert_eq!(r.route, evpn_route(1, Some(4)));
            assert_eq!(r.peer_router_id, Ipv4Addr::new(10, 0, 0, 1));
        }
        other => panic!("B: {other:?}"),
    }
    wait_for("status counts", 5, || {
        let (sa, sb) = (a.status(), b.status());
        sa.announced_evpn == 1
            && sa.peers[0].evpn_sent == 1
            && sb.evpn_routes == 1
            && sb.peers[0].evpn_received == 1
            && sb.peers[0].families == vec![Family::Ipv6Unicast, Family::L2vpnEvpn]
    })
    .await;
    // B restarts (Cease first, so A's stale handling does not apply); A re-sends on the new
    // session.
    b.shutdown().await;
    wait_for("A notices", 5, || {
        a.status().peers[0].state != State::Established
    })
    .await;
    // shutdown() returned: B's listen address is free again.
    let (mut b, _b_v6) = Speaker::start(cfg_b).await.unwrap();
    let mut b_rx = b.evpn_changes().unwrap();
    assert!(
        matches!(next_evpn(&mut b_rx, 15).await, Some(bgp::EvpnChange::Changed(r)) if r.route == evpn_route(1, Some(4)))
    );
    // Withdrawal with another label still matches the route key.
    let mut other_label = evpn_route(1, None).nlri;
    if let bgp::EvpnNlri::MacIp { vni, .. } = &mut other_label {
        *vni = 0;
    }
    a.withdraw_evpn(other_label).await;
    assert_eq!(
        next_evpn(&mut b_rx, 5).await,
        Some(bgp::EvpnChange::Removed {
            nlri: evpn_route(1, None).nlri
        })
    );
    assert!(b.evpn_routes().is_empty());
    assert!(a.announced_evpn().is_empty());
    b.shutdown().await;
    a.shutdown().await;
}
