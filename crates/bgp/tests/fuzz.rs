//! Decoder and state machine under random and mutated input (zero panics), and the regression
//! corpus in `tests/corpus/` (hex files: one message per line, `#` comments).

mod common;

use bgp::codec;
use bgp::fsm::{Input, Session, State};
use common::*;
use proptest::prelude::*;
use std::path::Path;

/// Valid messages to mutate: the corpus plus what our own encoder produces.
fn seeds() -> Vec<Vec<u8>> {
    let mut v = corpus().into_iter().map(|(_, m)| m).collect::<Vec<_>>();
    let mut attrs = ORIGIN_IGP.to_vec();
    attrs.extend(as_path(&[A_AS]));
    attrs.extend([0x80, 4, 4, 0, 0, 0, 7]);
    attrs.extend(mp_reach(NH, P1));
    v.push(update(&attrs));
    v.push(update(&mp_unreach(P2)));
    v.push(codec::encode_keepalive());
    v
}

fn corpus() -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut out = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "hex"))
        .collect();
    files.sort();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bytes = (0..line.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(line.get(i..i + 2).unwrap_or("zz"), 16))
                .collect::<Result<Vec<u8>, _>>()
                .unwrap_or_else(|_| panic!("{}:{}: not hex", f.display(), n + 1));
            out.push((format!("{}:{}", f.display(), n + 1), bytes));
        }
    }
    out
}

/// An Established session (B side of a pair) to throw bytes at.
fn established() -> Session {
    // Both families, so EVPN UPDATEs reach the RIB code too.
    let both = vec![bgp::Family::Ipv6Unicast, bgp::Family::L2vpnEvpn];
    let (mut a, mut b) = (cfg(A_AS, 1, B_AS, "fd00::2"), cfg(B_AS, 2, A_AS, "fd00::1"));
    a.families = both.clone();
    b.families = both;
    let mut pr = Pair::new(a, b);
    pr.establish();
    assert!(pr.both_established());
    pr.b
}

/// A session in OpenSent, waiting for an OPEN.
fn open_sent() -> Session {
    let mut c = cfg(B_AS, 2, A_AS, "fd00::1");
    c.passive = true;
    let mut s = Session::new(c);
    let now = std::time::Instant::now();
    s.handle(Input::Start, now);
    s.handle(Input::TcpConnected, now);
    s
}

fn feed_all(bytes: &[u8]) {
    let _ = codec::frame_len(bytes);
    let _ = codec::decode(bytes);
    let now = std::time::Instant::now();
    for mut s in [established(), open_sent()] {
        let _ = s.handle(Input::Bytes(bytes), now);
        let _ = s.handle_timeout(now + std::time::Duration::from_secs(1000));
        let _ = s.status(now);
    }
}

#[test]
fn corpus_decodes_without_panic_and_valid_entries_decode() {
    let c = corpus();
    assert!(c.len() >= 10, "corpus has {} messages", c.len());
    for (name, m) in &c {
        feed_all(m);
        // Entries named *valid* must decode cleanly (captured from real daemons).
        if name.contains("valid") {
            codec::decode(m).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
}

#[test]
fn captured_daemon_messages_establish_against_us() {
    // Every captured OPEN is acceptable to a session expecting that peer's AS.
    for (name, m) in corpus() {
        if let Ok(d) = codec::decode(&m) {
            if let Some(bgp::Message::Open(o)) = d.message {
                let mut c = cfg(B_AS, 2, o.asn, "fd00::1");
                c.passive = true;
                let mut s = Session::new(c);
                let now = std::time::Instant::now();
                s.handle(Input::Start, now);
                s.handle(Input::TcpConnected, now);
                s.handle(Input::Bytes(&m), now);
                assert_eq!(s.state(), State::OpenConfirm, "{name}");
            }
        }
    }
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Truncate(usize),
    Insert(usize, u8),
    SetLen(u16),
}

fn mutate(mut m: Vec<u8>, muts: &[Mutation]) -> Vec<u8> {
    for mu in muts {
        match *mu {
            Mutation::Flip(i, x) if !m.is_empty() => {
                let i = i % m.len();
                m[i] ^= x;
            }
            Mutation::Truncate(i) => m.truncate(i % (m.len() + 1)),
            Mutation::Insert(i, x) => m.insert(i % (m.len() + 1), x),
            Mutation::SetLen(l) if m.len() >= 18 => m[16..18].copy_from_slice(&l.to_be_bytes()),
            _ => {}
        }
    }
    m
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1u8..=255).prop_map(|(i, x)| Mutation::Flip(i, x)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), any::<u8>()).prop_map(|(i, x)| Mutation::Insert(i, x)),
        any::<u16>().prop_map(Mutation::SetLen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        feed_all(&bytes);
        // Also behind a valid marker, so the bodies get parsed.
        let mut framed = vec![0xff; 16];
        framed.extend_from_slice(&((19 + bytes.len()) as u16).to_be_bytes());
        framed.extend_from_slice(&bytes);
        feed_all(&framed);
    }

    #[test]
    fn mutated_valid_messages_never_panic(
        seed in any::<proptest::sample::Index>(),
        muts in proptest::collection::vec(mutation(), 1..6),
    ) {
        let s = seeds();
        let m = mutate(s[seed.index(s.len())].clone(), &muts);
        feed_all(&m);
    }

    #[test]
    fn encode_decode_roundtrip(
        nets in proptest::collection::vec((any::<u128>(), 0u8..=128), 1..50),
        asns in proptest::collection::vec(any::<u32>(), 0..20),
        med in proptest::option::of(any::<u32>()),
    ) {
        use bgp::message::{AsSegment, Origin, PathAttributes, Reach};
        let prefixes: Vec<ipnet::Ipv6Net> = nets
            .into_iter()
            .map(|(a, l)| ipnet::Ipv6Net::new(((a >> 8) | (0x20u128 << 120)).into(), l).unwrap().trunc())
            .collect();
        let attrs = PathAttributes {
            origin: Origin::Egp,
            as_path: if asns.is_empty() { vec![] } else { vec![AsSegment::Sequence(asns)] },
            med,
            local_pref: Some(7),
        };
        let reach = Reach { next_hop: "fd00::9".parse().unwrap(), next_hop_local: None, prefixes: prefixes.clone() };
        let mut got = Vec::new();
        for m in codec::encode_announce(&reach, &attrs).unwrap() {
            prop_assert!(m.len() <= codec::MAX_MESSAGE_LEN);
            let d = codec::decode(&m).unwrap();
            match d.message {
                Some(bgp::Message::Update(u)) => {
                    let (r, a) = u.reach.unwrap_or_else(|| panic!("{:?} {:?}", d.report, u.withdrawn));
                    prop_assert_eq!(&a, &attrs);
                    got.extend(r.prefixes);
                }
                other => prop_assert!(false, "{:?}", other),
            }
        }
        prop_assert_eq!(got, prefixes);
    }
}
