//! Test support: a small Ethernet/IPv6 packet builder, an independent L4 checksum checker, ILA
//! mappings computed with the `ila` crate, and guards that clean up pins and interfaces.
#![allow(dead_code)]

use std::net::Ipv6Addr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use ila::{ChecksumMode, Identifier, IdentifierType, Locator, Mapping, SirPrefix, Vnid};

pub const ETH_LEN: usize = 14;
pub const IP6_LEN: usize = 40;
pub const DADDR_OFF: usize = ETH_LEN + 24;
pub const SADDR_OFF: usize = ETH_LEN + 8;

pub const NH_HOPOPTS: u8 = 0;
pub const NH_TCP: u8 = 6;
pub const NH_UDP: u8 = 17;
pub const NH_FRAG: u8 = 44;
pub const NH_ICMPV6: u8 = 58;
pub const NH_DSTOPTS: u8 = 60;
pub const NH_AH: u8 = 51;

pub const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0xa];
pub const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0xb];

/// One's-complement sum of big-endian 16-bit words (odd tail padded with zero), folded.
pub fn ocsum(data: &[u8], mut acc: u32) -> u16 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u32::from(*last) << 8;
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// Sum of the IPv6 pseudo-header.
pub fn pseudo_sum(src: Ipv6Addr, dst: Ipv6Addr, len: u32, nh: u8) -> u32 {
    let mut b = Vec::with_capacity(40);
    b.extend_from_slice(&src.octets());
    b.extend_from_slice(&dst.octets());
    b.extend_from_slice(&len.to_be_bytes());
    b.extend_from_slice(&[0, 0, 0, nh]);
    u32::from(ocsum(&b, 0))
}

/// The checksum field value for `l4` (with its checksum field zeroed) between src and dst.
pub fn l4_checksum(src: Ipv6Addr, dst: Ipv6Addr, nh: u8, l4: &[u8]) -> u16 {
    let s = ocsum(l4, pseudo_sum(src, dst, l4.len() as u32, nh));
    let c = !s;
    // UDP transmits a computed 0 as 0xffff (0 means "no checksum").
    if nh == NH_UDP && c == 0 {
        0xffff
    } else {
        c
    }
}

/// Whether `l4` (checksum field included) verifies between src and dst.
pub fn l4_valid(src: Ipv6Addr, dst: Ipv6Addr, nh: u8, l4: &[u8]) -> bool {
    ocsum(l4, pseudo_sum(src, dst, l4.len() as u32, nh)) == 0xffff
}

pub fn csum_field_off(nh: u8) -> usize {
    match nh {
        NH_TCP => 16,
        NH_UDP => 6,
        NH_ICMPV6 => 2,
        _ => panic!("no checksum for next header {nh}"),
    }
}

/// An L4 segment with a correct checksum.
pub fn l4_segment(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    nh: u8,
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut l4 = match nh {
        NH_TCP => {
            let mut h = vec![0u8; 20];
            h[0..2].copy_from_slice(&sport.to_be_bytes());
            h[2..4].copy_from_slice(&dport.to_be_bytes());
            h[4..8].copy_from_slice(&0x1234_5678u32.to_be_bytes());
            h[12] = 5 << 4; // data offset
            h[13] = 0x18; // PSH|ACK
            h[14..16].copy_from_slice(&64240u16.to_be_bytes());
            h
        }
        NH_UDP => {
            let mut h = vec![0u8; 8];
            h[0..2].copy_from_slice(&sport.to_be_bytes());
            h[2..4].copy_from_slice(&dport.to_be_bytes());
            h[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
            h
        }
        NH_ICMPV6 => {
            // Echo request: type 128, code 0, id, seq.
            let mut h = vec![128u8, 0, 0, 0, 0, 0, 0, 0];
            h[4..6].copy_from_slice(&sport.to_be_bytes());
            h[6..8].copy_from_slice(&dport.to_be_bytes());
            h
        }
        _ => panic!("unsupported next header {nh}"),
    };
    l4.extend_from_slice(payload);
    let c = l4_checksum(src, dst, nh, &l4);
    let off = csum_field_off(nh);
    l4[off..off + 2].copy_from_slice(&c.to_be_bytes());
    l4
}

/// Ethernet + IPv6 header + `rest` (extension headers and/or L4), `first_nh` in the IPv6 header.
pub fn frame(src: Ipv6Addr, dst: Ipv6Addr, first_nh: u8, rest: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(ETH_LEN + IP6_LEN + rest.len());
    f.extend_from_slice(&MAC_A);
    f.extend_from_slice(&MAC_B);
    f.extend_from_slice(&0x86ddu16.to_be_bytes());
    f.extend_from_slice(&[0x60, 0x01, 0x23, 0x45]); // version 6, some traffic class and flow label
    f.extend_from_slice(&(rest.len() as u16).to_be_bytes());
    f.push(first_nh);
    f.push(64);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(rest);
    f
}

/// A TCP/UDP/ICMPv6 packet with a valid checksum.
pub fn l4_packet(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    nh: u8,
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    frame(
        src,
        dst,
        nh,
        &l4_segment(src, dst, nh, sport, dport, payload),
    )
}

/// A UDP packet sent without checksum (checksum field 0).
pub fn udp_zero_csum(src: Ipv6Addr, dst: Ipv6Addr, payload: &[u8]) -> Vec<u8> {
    let mut l4 = l4_segment(src, dst, NH_UDP, 4000, 5000, payload);
    l4[6] = 0;
    l4[7] = 0;
    frame(src, dst, NH_UDP, &l4)
}

/// A generic 8-byte-multiple option header (hop-by-hop / destination options) with PadN.
pub fn opts_header(next: u8, len8: u8) -> Vec<u8> {
    let total = (usize::from(len8) + 1) * 8;
    let mut h = vec![0u8; total];
    h[0] = next;
    h[1] = len8;
    h[2] = 1; // PadN
    h[3] = (total - 4) as u8;
    h
}

/// An IPsec Authentication Header (RFC 4302) with a 12-byte ICV: 24 bytes, length field 4
/// (in 4-octet units, minus 2).
pub fn ah_header(next: u8) -> Vec<u8> {
    let mut h = vec![0u8; 24];
    h[0] = next;
    h[1] = 4;
    h[4..8].copy_from_slice(&0x0000_1001u32.to_be_bytes()); // SPI
    h[8..12].copy_from_slice(&7u32.to_be_bytes()); // sequence number
    h
}

/// Hop-by-hop (8 bytes) + destination options (16 bytes) + TCP with a valid checksum.
pub fn tcp_with_ext(src: Ipv6Addr, dst: Ipv6Addr, payload: &[u8]) -> Vec<u8> {
    let mut rest = opts_header(NH_DSTOPTS, 0);
    rest.extend_from_slice(&opts_header(NH_TCP, 1));
    rest.extend_from_slice(&l4_segment(src, dst, NH_TCP, 1234, 80, payload));
    frame(src, dst, NH_HOPOPTS, &rest)
}

/// A fragment header: `offset8` in 8-octet units, M flag `more`.
pub fn frag_header(next: u8, offset8: u16, more: bool, id: u32) -> Vec<u8> {
    let mut h = vec![next, 0];
    h.extend_from_slice(&((offset8 << 3) | u16::from(more)).to_be_bytes());
    h.extend_from_slice(&id.to_be_bytes());
    h
}

/// A UDP datagram with a valid checksum split into two fragments: (first, non-first).
/// `first_len` bytes of the L4 datagram (a multiple of 8) go into the first fragment.
pub fn udp_fragments(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    payload: &[u8],
    first_len: usize,
) -> (Vec<u8>, Vec<u8>) {
    assert_eq!(first_len % 8, 0);
    let l4 = l4_segment(src, dst, NH_UDP, 7000, 7001, payload);
    let (a, b) = l4.split_at(first_len);
    let mut r1 = frag_header(NH_UDP, 0, true, 0xdead_beef);
    r1.extend_from_slice(a);
    let mut r2 = frag_header(NH_UDP, (first_len / 8) as u16, false, 0xdead_beef);
    r2.extend_from_slice(b);
    (frame(src, dst, NH_FRAG, &r1), frame(src, dst, NH_FRAG, &r2))
}

/// A minimal IPv4/UDP frame.
pub fn ipv4_frame() -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&MAC_A);
    f.extend_from_slice(&MAC_B);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let mut ip = vec![
        0x45, 0, 0, 28, 0, 1, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
    ];
    let c = !ocsum(&ip, 0);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&[0x13, 0x88, 0x13, 0x89, 0, 8, 0, 0]);
    f
}

pub fn dst_of(frame: &[u8]) -> Ipv6Addr {
    let mut a = [0u8; 16];
    a.copy_from_slice(&frame[DADDR_OFF..DADDR_OFF + 16]);
    Ipv6Addr::from(a)
}

pub fn src_of(frame: &[u8]) -> Ipv6Addr {
    let mut a = [0u8; 16];
    a.copy_from_slice(&frame[SADDR_OFF..SADDR_OFF + 16]);
    Ipv6Addr::from(a)
}

/// Walks the extension headers of `frame`: (final next header, offset of the L4 header,
/// fragment offset in bytes if a fragment header was seen).
pub fn l4_of(frame: &[u8]) -> (u8, usize, Option<usize>) {
    let mut nh = frame[ETH_LEN + 6];
    let mut off = ETH_LEN + IP6_LEN;
    let mut frag = None;
    loop {
        match nh {
            NH_HOPOPTS | 43 | NH_DSTOPTS => {
                let len = (usize::from(frame[off + 1]) + 1) * 8;
                nh = frame[off];
                off += len;
            }
            NH_AH => {
                let len = (usize::from(frame[off + 1]) + 2) * 4;
                nh = frame[off];
                off += len;
            }
            NH_FRAG => {
                frag = Some(usize::from(
                    u16::from_be_bytes([frame[off + 2], frame[off + 3]]) & 0xfff8,
                ));
                nh = frame[off];
                off += 8;
            }
            _ => return (nh, off, frag),
        }
    }
}

/// Whether the L4 checksum of an unfragmented frame verifies against its current addresses.
pub fn frame_l4_valid(frame: &[u8]) -> bool {
    let (nh, off, frag) = l4_of(frame);
    assert!(frag.is_none(), "use the fragment helpers for fragments");
    l4_valid(src_of(frame), dst_of(frame), nh, &frame[off..])
}

/// The L4 checksum field of an unfragmented frame or first fragment.
pub fn csum_field(frame: &[u8]) -> u16 {
    let (nh, off, _) = l4_of(frame);
    let o = off + csum_field_off(nh);
    u16::from_be_bytes([frame[o], frame[o + 1]])
}

/// Whether the datagram reassembled from a first and a non-first fragment verifies.
pub fn fragments_valid(first: &[u8], second: &[u8], dst: Ipv6Addr) -> bool {
    let (nh, off1, _) = l4_of(first);
    let (_, off2, _) = l4_of(second);
    let mut l4 = first[off1..].to_vec();
    l4.extend_from_slice(&second[off2..]);
    l4_valid(src_of(first), dst, nh, &l4)
}

/// A two-host ILA scenario computed with the `ila` crate: a sender container (SIR `src`) talks
/// to a receiver container (SIR `dst`) on the host with locator `locator`.
#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    pub src: Ipv6Addr,
    pub mapping: Mapping,
}

impl Scenario {
    pub fn new(mode: ChecksumMode) -> Self {
        Self::with(
            mode,
            0x2001_0db8_00ff_0000,
            0x2001_0db8_0001_0002,
            0x0a00_0002,
            42,
        )
    }

    pub fn with(mode: ChecksumMode, sir: u64, loc: u64, virt: u32, vnid: u32) -> Self {
        let vnid = Vnid::new(vnid).expect("valid vnid");
        let sir = SirPrefix(sir);
        let id = Identifier::new_vnid(IdentifierType::VnidIpv6, vnid, virt);
        let src_id = Identifier::new_vnid(IdentifierType::VnidIpv6, vnid, virt ^ 0x0100_0001);
        Self {
            src: sir.with_identifier(src_id),
            mapping: Mapping::new(sir, id, Locator(loc), mode),
        }
    }

    pub fn sir(&self) -> Ipv6Addr {
        self.mapping.sir_address()
    }

    pub fn ila(&self) -> Ipv6Addr {
        self.mapping.ila_address().expect("mapping translates")
    }

    pub fn mode(&self) -> ChecksumMode {
        self.mapping.mode
    }

    /// The SIR address recovered from the ILA address by the `ila` crate (must equal `sir()`).
    pub fn back(&self) -> Ipv6Addr {
        ila::ila_to_sir(self.ila(), self.mapping.sir, self.mode()).expect("ila translates back")
    }
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A unique name for this process and call: `<prefix><pid>-<n>` (short enough for interfaces
/// when `prefix` is).
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}-{}",
        std::process::id() % 100_000,
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// A per-run pin directory under /sys/fs/bpf, removed on drop.
pub struct PinDir(pub PathBuf);

impl PinDir {
    pub fn new(tag: &str) -> Self {
        dataplane::ensure_bpffs().expect("bpffs");
        let p = PathBuf::from(format!(
            "/sys/fs/bpf/ilanet-test-{}-{}-{}",
            std::process::id(),
            tag,
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = dataplane::remove_pins(&p);
        Self(p)
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if let Err(e) = dataplane::remove_pins(&self.0) {
            eprintln!("cleanup of {} failed: {e}", self.0.display());
        }
    }
}

/// Runs a command, panicking with its output on failure.
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("spawn");
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A veth pair (in the test's own namespace), deleted on drop.
pub struct Veth {
    pub a: String,
    pub b: String,
}

impl Veth {
    pub fn new() -> Self {
        let a = unique("ilt");
        let b = format!("{a}p");
        sh(&["ip", "link", "add", &a, "type", "veth", "peer", "name", &b]);
        let v = Self { a, b };
        sh(&["ip", "link", "set", &v.a, "up"]);
        sh(&["ip", "link", "set", &v.b, "up"]);
        v
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.a]).output();
    }
}

/// Sends one raw Ethernet frame out of `ifname` (it arrives on the veth peer's ingress).
pub fn inject(ifname: &str, frame: &[u8]) {
    let c = std::ffi::CString::new(ifname).expect("ifname");
    // SAFETY: plain libc calls with valid arguments; the fd is closed below.
    unsafe {
        let ifindex = libc::if_nametoindex(c.as_ptr());
        assert!(ifindex != 0, "no interface {ifname}");
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = ifindex as i32;
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&frame[..6]);
        let n = libc::sendto(
            fd,
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        );
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        assert_eq!(n, frame.len() as isize, "sendto {ifname}: {err}");
    }
}

/// `bpftool -j link show pinned <path>` → (link id, prog id). (Debian's bpftool 7.1 does not
/// decode TCX links further.)
pub fn pinned_link_info(path: &std::path::Path) -> Option<(u64, u64)> {
    let out = Command::new("bpftool")
        .args(["-j", "link", "show", "pinned"])
        .arg(path)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8_lossy(&out.stdout);
    let num = |key: &str| -> Option<u64> {
        let i = s.find(&format!("\"{key}\":"))? + key.len() + 3;
        let digits: String = s[i..].chars().take_while(|c| c.is_ascii_digit()).collect();
        digits.parse().ok()
    };
    Some((num("id")?, num("prog_id")?))
}

/// Ids of the programs attached to TCX ingress of `ifname` (asked from the kernel).
pub fn tcx_progs(ifname: &str) -> Vec<u64> {
    let (_, progs) =
        aya::programs::SchedClassifier::query_tcx(ifname, aya::programs::TcAttachType::Ingress)
            .expect("query tcx");
    progs.iter().map(|p| u64::from(p.id())).collect()
}

/// A TCP SYN (no payload) with a valid checksum between `src` and `dst`.
pub fn syn_segment(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16) -> Vec<u8> {
    let mut l4 = l4_segment(src, dst, NH_TCP, sport, dport, b"");
    l4[13] = 0x02; // SYN only
    l4[16..18].fill(0);
    let c = l4_checksum(src, dst, NH_TCP, &l4);
    l4[16..18].copy_from_slice(&c.to_be_bytes());
    l4
}

/// `l4` (next header `l4_nh`) behind a chain of extension headers of the given types:
/// hop-by-hop and destination options of 8 bytes (PadN), atomic fragment headers (offset 0,
/// M = 0), 24-byte Authentication Headers.
pub fn with_chain(src: Ipv6Addr, dst: Ipv6Addr, chain: &[u8], l4_nh: u8, l4: &[u8]) -> Vec<u8> {
    let mut rest = Vec::new();
    for (i, &t) in chain.iter().enumerate() {
        let next = chain.get(i + 1).copied().unwrap_or(l4_nh);
        rest.extend_from_slice(&match t {
            NH_HOPOPTS | NH_DSTOPTS => opts_header(next, 0),
            NH_FRAG => frag_header(next, 0, false, 0x5eed_0000 | i as u32),
            NH_AH => ah_header(next),
            _ => panic!("no builder for extension header {t}"),
        });
    }
    rest.extend_from_slice(l4);
    frame(src, dst, chain.first().copied().unwrap_or(l4_nh), &rest)
}
