//! L2VPN EVPN without root: messages captured from gobgpd decoded field by field, encode →
//! decode round trips, RFC 7606 handling of malformed EVPN NLRI, and two sessions back to back
//! negotiating families, exchanging EVPN routes, bounding them and keeping them across a
//! graceful restart.

mod common;

use bgp::codec;
use bgp::evpn::{parse_mac, EvpnNlri, EvpnRoute, RouteDistinguisher, RouteTarget};
use bgp::fsm::{Input, Output, Session};
use bgp::message::{Family, Message, Origin, PathAttributes, Update};
use common::*;
use proptest::prelude::*;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

/// The UPDATEs gobgpd 3.10 sent (route server passing an injected `macadv 02:00:00:00:00:01
/// 192.0.2.1 etag 0 label 100 rd 10.255.0.5:100 rt 65001:100 encap vxlan` and `multicast
/// <vtep> … encap vxlan pmsi ingress-repl 100 <vtep>`), from `BGP_CAPTURE=1` of the
/// gobgp_evpn_route_server interop test.
fn captured() -> Vec<Vec<u8>> {
    captured_from("gobgp-evpn")
}

/// The UPDATEs of `tests/corpus/capture-<name>-valid.hex`.
fn captured_from(name: &str) -> Vec<Vec<u8>> {
    let f = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("tests/corpus/capture-{name}-valid.hex"));
    std::fs::read_to_string(f)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            (0..l.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&l[i..i + 2], 16).unwrap())
                .collect()
        })
        .filter(|m: &Vec<u8>| m[18] == 2)
        .collect()
}

fn decode_update(m: &[u8]) -> (Update, codec::UpdateReport) {
    let d = codec::decode(m).unwrap_or_else(|e| panic!("{e}"));
    match d.message {
        Some(Message::Update(u)) => (u, d.report),
        other => panic!("not an UPDATE: {other:?}"),
    }
}

const VTEP: &str = "fd42:61a6:5::4";
const RD: &str = "10.255.0.5:100";

#[test]
fn gobgp_mac_ip_route_decodes() {
    let (u, report) = decode_update(&captured()[0]);
    assert_eq!(report, codec::UpdateReport::default());
    let (routes, attrs) = u.evpn_reach.expect("EVPN reach");
    assert_eq!(attrs.origin, Origin::Incomplete);
    assert_eq!(
        attrs.first_as(),
        Some(65004),
        "the injector's AS, passed unchanged"
    );
    assert_eq!(
        routes,
        vec![EvpnRoute {
            nlri: EvpnNlri::MacIp {
                rd: RD.parse().unwrap(),
                ethernet_tag: 0,
                mac: parse_mac("02:00:00:00:00:01").unwrap(),
                ip: Some("192.0.2.1".parse().unwrap()),
                vni: 100,
            },
            next_hop: VTEP.parse().unwrap(),
            route_targets: vec![RouteTarget {
                asn: 65001,
                value: 100
            }],
            encapsulation_vxlan: true,
            mac_mobility: None,
            pmsi_vni: None,
        }]
    );
}

#[test]
fn gobgp_inclusive_multicast_route_decodes() {
    let (u, _) = decode_update(&captured()[1]);
    let (routes, _) = u.evpn_reach.expect("EVPN reach");
    assert_eq!(
        routes,
        vec![EvpnRoute {
            nlri: EvpnNlri::Inclusive {
                rd: RD.parse().unwrap(),
                ethernet_tag: 0,
                originator: VTEP.parse().unwrap(),
            },
            next_hop: VTEP.parse().unwrap(),
            route_targets: vec![RouteTarget {
                asn: 65001,
                value: 100
            }],
            encapsulation_vxlan: true,
            mac_mobility: None,
            pmsi_vni: Some(100),
        }]
    );
}

#[test]
fn our_encoding_of_gobgps_routes_matches_its_bytes() {
    // Re-encoding gobgpd's route gives its MP_REACH (next hop and NLRI) byte for byte.
    for m in captured() {
        let (u, _) = decode_update(&m);
        let (routes, attrs) = u.evpn_reach.unwrap();
        let ours = codec::encode_evpn_announce(&routes[0], &attrs).unwrap();
        // MP_REACH is the last attribute in both; compare from its AFI on (we always set
        // the extended-length flag, gobgpd only when needed).
        let mp = |b: &[u8]| {
            let at = b
                .windows(3)
                .rposition(|w| w == [0, 25, 70])
                .unwrap_or_else(|| panic!("no MP_REACH in {b:02x?}"));
            b[at..].to_vec()
        };
        assert_eq!(mp(&ours), mp(&m), "MP_REACH (next hop and NLRI)");
        let (u2, _) = decode_update(&ours);
        assert_eq!(u2.evpn_reach.unwrap().0, routes);
    }
}

/// A captured UPDATE with one byte changed.
fn patched(which: usize, at: usize, from: u8, to: u8) -> Vec<u8> {
    let mut m = captured()[which].clone();
    assert_eq!(m[at], from, "corpus layout changed");
    m[at] = to;
    m
}

#[test]
fn malformed_mac_length_is_treat_as_withdraw() {
    // Byte 103: MAC address length 48 → 47.
    let (u, report) = decode_update(&patched(0, 103, 0x30, 0x2f));
    assert!(u.evpn_reach.is_none());
    let why = report.treat_as_withdraw.expect("treat-as-withdraw");
    assert!(why.contains("route type 2"), "{why}");
}

#[test]
fn malformed_ip_length_is_treat_as_withdraw() {
    // Byte 110: IP address length 32 → 33.
    let (u, report) = decode_update(&patched(0, 110, 0x20, 0x21));
    assert!(u.evpn_reach.is_none());
    assert!(report.treat_as_withdraw.is_some());
}

#[test]
fn evpn_nlri_overrunning_the_attribute_resets_the_session() {
    // Byte 80: route length 37 → 38, past the end of MP_REACH (RFC 7606 §5.3).
    let e = codec::decode(&patched(0, 80, 0x25, 0x26)).unwrap_err();
    assert_eq!((e.notification.code, e.notification.subcode), (3, 9));
    assert!(e.reason.contains("overruns"), "{}", e.reason);
}

#[test]
fn other_route_types_are_ignored_not_errors() {
    // Byte 79: route type 2 → 5 (IP prefix), 1 (A-D) and 4 (ES): skipped (RFC 7606 §5.4).
    for t in [1, 4, 5, 9] {
        let (u, report) = decode_update(&patched(0, 79, 2, t));
        assert!(u.evpn_reach.is_none(), "type {t}");
        assert_eq!(report, codec::UpdateReport::default(), "type {t}");
    }
}

#[test]
fn loopback_next_hop_is_treat_as_withdraw_and_withdraws_the_route() {
    let mut m = captured()[0].clone();
    m[62..78].copy_from_slice(&Ipv6Addr::LOCALHOST.octets());
    let (u, report) = decode_update(&m);
    assert!(u.evpn_reach.is_none());
    assert!(report.treat_as_withdraw.unwrap().contains("next hop"));
    assert_eq!(
        u.evpn_withdrawn.len(),
        1,
        "the well-formed route is withdrawn"
    );
}

#[test]
fn pmsi_of_another_tunnel_type_gives_no_vni() {
    // Byte 59: PMSI tunnel type 6 (ingress replication) → 3 (PIM-SSM).
    let (u, _) = decode_update(&patched(1, 59, 6, 3));
    assert_eq!(u.evpn_reach.unwrap().0[0].pmsi_vni, None);
}

#[test]
fn evpn_end_of_rib_and_withdraw_round_trip() {
    let (u, _) = decode_update(&codec::encode_end_of_rib(Family::L2vpnEvpn).unwrap());
    assert_eq!(u.end_of_rib, Some(Family::L2vpnEvpn));
    let n: Vec<EvpnNlri> = (0..130u32)
        .map(|i| EvpnNlri::MacIp {
            rd: RouteDistinguisher::type1(Ipv4Addr::new(10, 0, 0, 1), 7),
            ethernet_tag: 0,
            mac: [2, 0, 0, 0, (i >> 8) as u8, i as u8],
            ip: Some(IpAddr::V6(Ipv6Addr::new(
                0xfd00, 0, 0, 0, 0, 0, 0, i as u16,
            ))),
            vni: 7,
        })
        .collect();
    let mut got = Vec::new();
    for m in codec::encode_evpn_withdraw(&n).unwrap() {
        assert!(m.len() <= codec::MAX_MESSAGE_LEN);
        got.extend(decode_update(&m).0.evpn_withdrawn);
    }
    assert_eq!(got, n);
}

fn arb_ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(IpAddr::from),
        any::<[u8; 16]>().prop_map(IpAddr::from),
    ]
}

fn arb_rd() -> impl Strategy<Value = RouteDistinguisher> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>())
            .prop_map(|(ip, n)| RouteDistinguisher::type1(Ipv4Addr::from(ip), n)),
        (any::<u16>(), any::<u32>()).prop_map(|(a, n)| RouteDistinguisher::type0(a, n)),
    ]
}

fn arb_route() -> impl Strategy<Value = EvpnRoute> {
    let mac_ip = (
        arb_rd(),
        any::<u32>(),
        any::<[u8; 6]>(),
        proptest::option::of(arb_ip()),
        0u32..=0xff_ffff,
    )
        .prop_map(|(rd, ethernet_tag, mac, ip, vni)| EvpnNlri::MacIp {
            rd,
            ethernet_tag,
            mac,
            ip,
            vni,
        });
    let inclusive =
        (arb_rd(), any::<u32>(), arb_ip()).prop_map(|(rd, ethernet_tag, originator)| {
            EvpnNlri::Inclusive {
                rd,
                ethernet_tag,
                originator,
            }
        });
    (
        prop_oneof![mac_ip, inclusive],
        arb_ip().prop_filter("unicast", |ip| {
            !(ip.is_unspecified() || ip.is_multicast() || ip.is_loopback())
                && *ip != IpAddr::V4(Ipv4Addr::BROADCAST)
        }),
        proptest::collection::vec((any::<u16>(), any::<u32>()), 0..4),
        any::<bool>(),
        proptest::option::of(any::<u32>()),
        proptest::option::of(0u32..=0xff_ffff),
    )
        .prop_map(|(nlri, next_hop, rts, vxlan, seq, pmsi)| {
            let mac = matches!(nlri, EvpnNlri::MacIp { .. });
            EvpnRoute {
                nlri,
                next_hop,
                route_targets: rts
                    .into_iter()
                    .map(|(a, v)| RouteTarget {
                        asn: u32::from(a),
                        value: v,
                    })
                    .collect(),
                encapsulation_vxlan: vxlan,
                // Each attribute applies to its own route type only.
                mac_mobility: seq.filter(|_| mac),
                pmsi_vni: pmsi.filter(|_| !mac),
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn rd_text_round_trips(b in any::<[u8; 8]>(), t in 0u8..4) {
        let mut b = b;
        b[0] = 0;
        b[1] = t;
        let rd = RouteDistinguisher(b);
        prop_assert_eq!(rd.to_string().parse::<RouteDistinguisher>(), Ok(rd));
    }

    #[test]
    fn evpn_encode_decode_roundtrip(route in arb_route(), asns in proptest::collection::vec(any::<u32>(), 0..5)) {
        let attrs = PathAttributes {
            origin: Origin::Igp,
            as_path: if asns.is_empty() { vec![] } else { vec![bgp::message::AsSegment::Sequence(asns)] },
            med: None,
            local_pref: Some(100),
        };
        let m = codec::encode_evpn_announce(&route, &attrs).unwrap();
        let (u, report) = decode_update(&m);
        prop_assert_eq!(report, codec::UpdateReport::default());
        let (routes, got_attrs) = u.evpn_reach.unwrap();
        prop_assert_eq!(got_attrs, attrs);
        prop_assert_eq!(routes, vec![route.clone()]);
        let w = codec::encode_evpn_withdraw(&[route.nlri]).unwrap();
        prop_assert_eq!(decode_update(&w[0]).0.evpn_withdrawn, vec![route.nlri]);
    }
}

// ---- sessions ----

fn evpn_cfg(
    local: u32,
    id: u8,
    remote: u32,
    peer: &str,
    families: &[Family],
) -> bgp::SessionConfig {
    let mut c = cfg(local, id, remote, peer);
    c.families = families.to_vec();
    c
}

const BOTH: [Family; 2] = [Family::Ipv6Unicast, Family::L2vpnEvpn];

fn mac_route(n: u8, seq: Option<u32>) -> EvpnRoute {
    EvpnRoute {
        nlri: EvpnNlri::MacIp {
            rd: RouteDistinguisher::type1(Ipv4Addr::new(10, 0, 0, 1), 100),
            ethernet_tag: 0,
            mac: [2, 0, 0, 0, 0, n],
            ip: None,
            vni: 100,
        },
        next_hop: "fd00::1".parse().unwrap(),
        route_targets: vec![RouteTarget::for_vni(A_AS, 100)],
        encapsulation_vxlan: true,
        mac_mobility: seq,
        pmsi_vni: None,
    }
}

fn learned_evpn(ev: &[Output]) -> Vec<EvpnRoute> {
    ev.iter()
        .filter_map(|o| match o {
            Output::LearnedEvpn(r, _) => Some(r.clone()),
            _ => None,
        })
        .collect()
}

fn withdrawn_evpn(ev: &[Output]) -> Vec<EvpnNlri> {
    ev.iter()
        .filter_map(|o| match o {
            Output::WithdrawnEvpn(n) => Some(*n),
            _ => None,
        })
        .collect()
}

#[test]
fn evpn_routes_flow_when_both_negotiate_it() {
    let mut pr = Pair::new(
        evpn_cfg(A_AS, 1, B_AS, "fd00::2", &BOTH),
        evpn_cfg(B_AS, 2, A_AS, "fd00::1", &[Family::L2vpnEvpn]),
    );
    pr.a_in(Input::AnnounceEvpn(mac_route(1, Some(2))));
    pr.a_in(Input::Announce {
        prefix: "2001:db8:1::/64".parse().unwrap(),
        next_hop: "fd00::1".parse().unwrap(),
    });
    pr.establish();
    assert!(pr.both_established());
    assert_eq!(pr.a.status(pr.now).families, vec![Family::L2vpnEvpn]);
    assert_eq!(learned_evpn(&pr.b_events), vec![mac_route(1, Some(2))]);
    assert_eq!(
        pr.b.adj_rib_in().len_of(Family::Ipv6Unicast),
        0,
        "IPv6 not negotiated: not sent"
    );
    assert_eq!(pr.a.status(pr.now).evpn_sent, 1);
    assert_eq!(pr.a.status(pr.now).prefixes_sent, 0);
    // Same route key with another VNI replaces; the withdrawal matches whatever VNI it names.
    let mut r2 = mac_route(1, Some(3));
    if let EvpnNlri::MacIp { vni, .. } = &mut r2.nlri {
        *vni = 200;
    }
    pr.a_in(Input::AnnounceEvpn(r2.clone()));
    assert_eq!(pr.b.adj_rib_in().len(), 1);
    assert_eq!(pr.b.adj_rib_in().get_evpn(&r2.nlri).unwrap().0, &r2);
    pr.a_in(Input::WithdrawEvpn(mac_route(1, None).nlri));
    assert_eq!(withdrawn_evpn(&pr.b_events), vec![r2.nlri]);
    assert_eq!(pr.b.adj_rib_in().len(), 0);
}

#[test]
fn evpn_not_sent_to_an_ipv6_only_peer() {
    let mut pr = Pair::new(
        evpn_cfg(A_AS, 1, B_AS, "fd00::2", &BOTH),
        evpn_cfg(B_AS, 2, A_AS, "fd00::1", &[Family::Ipv6Unicast]),
    );
    pr.a_in(Input::AnnounceEvpn(mac_route(1, None)));
    pr.establish();
    assert!(pr.both_established());
    assert!(learned_evpn(&pr.b_events).is_empty());
    assert_eq!(pr.a.status(pr.now).evpn_sent, 0);
    // Even if A's encoder were wrong, B ignores EVPN it did not negotiate (RFC 4760 §7).
    let m = codec::encode_evpn_announce(
        &mac_route(2, None),
        &PathAttributes {
            origin: Origin::Igp,
            as_path: vec![bgp::message::AsSegment::Sequence(vec![A_AS])],
            med: None,
            local_pref: None,
        },
    )
    .unwrap();
    let now = pr.now;
    let out = pr.b.handle(Input::Bytes(&m), now);
    assert!(learned_evpn(&out).is_empty());
    assert!(pr.both_established());
}

#[test]
fn max_prefixes_counts_evpn_routes() {
    let a = evpn_cfg(A_AS, 1, B_AS, "fd00::2", &BOTH);
    let mut b = evpn_cfg(B_AS, 2, A_AS, "fd00::1", &BOTH);
    b.max_prefixes = 2;
    let mut pr = Pair::new(a, b);
    pr.establish();
    pr.a_in(Input::Announce {
        prefix: "2001:db8:1::/64".parse().unwrap(),
        next_hop: "fd00::1".parse().unwrap(),
    });
    pr.a_in(Input::AnnounceEvpn(mac_route(1, None)));
    assert!(pr.both_established(), "2 routes: at the limit");
    pr.a_in(Input::AnnounceEvpn(mac_route(2, None)));
    let (code, sub, data) = notification_of(&pr.b_sent).expect("Cease");
    assert_eq!((code, sub), (6, 1));
    assert_eq!(
        &data[..3],
        &[0, 25, 70],
        "AFI/SAFI of the route over the limit"
    );
}

#[test]
fn graceful_restart_keeps_evpn_routes_stale_until_evpn_end_of_rib() {
    let mut b = evpn_cfg(B_AS, 2, A_AS, "fd00::1", &BOTH);
    b.passive = true;
    let mut pr = Pair::new(evpn_cfg(A_AS, 1, B_AS, "fd00::2", &BOTH), b);
    pr.a_in(Input::AnnounceEvpn(mac_route(1, None)));
    pr.a_in(Input::AnnounceEvpn(mac_route(2, None)));
    pr.establish();
    assert_eq!(pr.b.status(pr.now).evpn_received, 2);
    pr.b_events.clear();
    pr.b_in(Input::TcpClosed);
    assert!(withdrawn_evpn(&pr.b_events).is_empty(), "{:?}", pr.b_events);
    assert_eq!(pr.b.status(pr.now).evpn_stale, 2);
    // A comes back with one of the two; its EVPN End-of-RIB sweeps the other.
    let mut a2 = Session::new(pr.a.config().clone());
    let mut oa = a2.handle(Input::AnnounceEvpn(mac_route(1, None)), pr.now);
    pr.a = a2;
    oa.extend(pr.a.handle(Input::Start, pr.now));
    pr.route(oa, vec![]);
    pr.establish();
    assert!(pr.both_established());
    assert_eq!(withdrawn_evpn(&pr.b_events), vec![mac_route(2, None).nlri]);
    assert_eq!(pr.b.status(pr.now).evpn_stale, 0);
    assert_eq!(pr.b.status(pr.now).evpn_received, 1);
}

/// FRR 8.4 with `advertise-all-vni` (VNI 100 on a kernel VXLAN device, one bridge port with
/// MAC 02:00:00:00:aa:01), captured by the frr_evpn_exchange interop test.
#[test]
fn frr_routes_decode() {
    let mut macs = Vec::new();
    let mut inclusive = Vec::new();
    let mut eor = false;
    for m in captured_from("frr-evpn") {
        let (u, report) = decode_update(&m);
        assert_eq!(report, codec::UpdateReport::default());
        eor |= u.end_of_rib == Some(Family::L2vpnEvpn);
        if let Some((routes, attrs)) = u.evpn_reach {
            assert_eq!(attrs.first_as(), Some(65002));
            for r in routes {
                assert_eq!(
                    r.route_targets,
                    vec![RouteTarget::for_vni(65002, 100)],
                    "{r:?}"
                );
                assert!(r.encapsulation_vxlan, "{r:?}");
                assert!(r.next_hop.is_ipv4(), "{r:?}");
                assert_eq!(r.nlri.rd().rd_type(), 1, "router-id:n auto RD");
                match r.nlri {
                    EvpnNlri::MacIp { mac, vni, ip, .. } => {
                        assert_eq!((vni, ip), (100, None), "{r:?}");
                        macs.push(mac);
                    }
                    EvpnNlri::Inclusive { originator, .. } => {
                        assert_eq!(originator, r.next_hop);
                        assert_eq!(r.pmsi_vni, Some(100));
                        inclusive.push(r);
                    }
                }
            }
        }
    }
    assert!(
        macs.contains(&parse_mac("02:00:00:00:aa:01").unwrap()),
        "{macs:02x?}"
    );
    assert_eq!(inclusive.len(), 1);
    assert!(eor, "EVPN End-of-RIB");
}
