//! The EVPN kernel layer against the real kernel, read back with iproute2 (an independent
//! reader): segment devices and their port flags, FDB, flood list and neighbour entries,
//! replace and delete idempotent.

use std::net::{IpAddr, Ipv6Addr};
use std::process::Command;

use hostnet::evpn::{bridge_ifname, vxlan_ifname, Segment};
use hostnet::link::Netlink;
use hostnet::netns;

struct Ns(String);
impl Drop for Ns {
    fn drop(&mut self) {
        let _ = netns::delete(&self.0);
    }
}

fn json(ns: &str, args: &[&str]) -> serde_json::Value {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).args(args);
    let out = cmd.output().expect("run iproute2");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

#[test]
#[ignore = "needs root: creates a network namespace with VXLAN and bridge devices"]
fn segment_fdb_flood_and_neighbours_round_trip() {
    let name = format!("hnevpn{}", std::process::id());
    netns::create(&name).expect("netns");
    let _ns = Ns(name.clone());
    let peer = format!("{name}p");
    netns::create(&peer).expect("netns");
    let _peer = Ns(peer.clone());
    let nl = Netlink::new().expect("netlink");
    nl.add_veth(
        &name,
        "uplink",
        [2, 0, 0, 0, 0, 1],
        &peer,
        "uplink",
        [2, 0, 0, 0, 0, 2],
    )
    .expect("veth");
    let local: Ipv6Addr = "2001:db8:ffff:1::2".parse().unwrap();
    nl.add_addr(&name, "uplink", local, 64).expect("addr");
    let seg = Segment {
        vni: 42,
        local,
        mtu: 1430,
        bridge_mac: [2, 0xee, 0, 0, 0, 42],
    };
    nl.ensure_segment(&name, &seg, "uplink").expect("segment");
    // Twice: idempotent.
    nl.ensure_segment(&name, &seg, "uplink")
        .expect("segment again");

    let links = json(
        &name,
        &["ip", "-d", "-j", "link", "show", &vxlan_ifname(42)],
    );
    let info = &links[0]["linkinfo"];
    assert_eq!(info["info_data"]["id"], 42);
    assert_eq!(info["info_data"]["port"], 4789);
    assert_eq!(info["info_data"]["learning"], false);
    assert_eq!(info["info_data"]["local6"], local.to_string());
    assert_eq!(info["info_slave_kind"], "bridge");
    assert_eq!(info["info_slave_data"]["learning"], false);
    assert_eq!(info["info_slave_data"]["neigh_suppress"], true);
    assert_eq!(links[0]["master"], bridge_ifname(42));

    let mac = [2, 0x1a, 0, 2, 1, 1];
    let vtep: IpAddr = "2001:db8:ffff:2::2".parse().unwrap();
    let vtep2: IpAddr = "2001:db8:ffff:3::2".parse().unwrap();
    nl.fdb_replace(&name, 42, mac, vtep).expect("fdb");
    nl.fdb_replace(&name, 42, mac, vtep2).expect("fdb moved");
    nl.flood_add(&name, 42, vtep).expect("flood");
    nl.flood_add(&name, 42, vtep2).expect("flood 2");
    nl.flood_add(&name, 42, vtep2).expect("flood 2 again");
    let ip: IpAddr = "fd00:dead:beef::2".parse().unwrap();
    nl.neigh_replace(&name, 42, ip, mac).expect("neigh");
    nl.neigh_replace(&name, 42, ip, mac).expect("neigh again");

    let fdb = json(
        &name,
        &["bridge", "-j", "fdb", "show", "dev", &vxlan_ifname(42)],
    );
    let rows = fdb.as_array().expect("array");
    let has = |mac: &str, dst: Option<&str>, flag: &str| {
        rows.iter().any(|r| {
            r["mac"] == mac
                && dst.is_none_or(|d| r["dst"] == d)
                && r["flags"]
                    .as_array()
                    .is_some_and(|f| f.iter().any(|x| x == flag))
        })
    };
    assert!(
        has("02:1a:00:02:01:01", Some("2001:db8:ffff:3::2"), "self"),
        "{fdb}"
    );
    assert!(
        !has("02:1a:00:02:01:01", Some("2001:db8:ffff:2::2"), "self"),
        "moved: {fdb}"
    );
    assert!(
        rows.iter()
            .any(|r| r["mac"] == "02:1a:00:02:01:01" && r["master"] == bridge_ifname(42)),
        "{fdb}"
    );
    assert!(
        has("00:00:00:00:00:00", Some("2001:db8:ffff:2::2"), "self"),
        "{fdb}"
    );
    assert!(
        has("00:00:00:00:00:00", Some("2001:db8:ffff:3::2"), "self"),
        "{fdb}"
    );
    let ours = nl.fdb_entries(&name, 42).expect("read fdb");
    assert_eq!(
        ours.iter().filter(|e| e.mac == [0; 6]).count(),
        2,
        "{ours:?}"
    );
    let neigh = json(
        &name,
        &["ip", "-j", "-6", "neigh", "show", "dev", &bridge_ifname(42)],
    );
    assert!(
        neigh
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["dst"] == ip.to_string()
                && n["lladdr"] == "02:1a:00:02:01:01"
                && n["state"]
                    .as_array()
                    .is_some_and(|s| s.iter().any(|x| x == "PERMANENT"))),
        "{neigh}"
    );
    assert_eq!(nl.neigh_entries(&name, 42).unwrap(), vec![(ip, mac)]);

    nl.fdb_delete(&name, 42, mac).expect("fdb del");
    nl.fdb_delete(&name, 42, mac).expect("fdb del again");
    nl.flood_delete(&name, 42, vtep).expect("flood del");
    nl.flood_delete(&name, 42, vtep).expect("flood del again");
    nl.neigh_delete(&name, 42, ip).expect("neigh del");
    nl.neigh_delete(&name, 42, ip).expect("neigh del again");
    let left = nl.fdb_entries(&name, 42).unwrap();
    assert!(left.iter().all(|e| e.mac != mac), "{left:?}");
    assert_eq!(
        left.iter()
            .filter(|e| e.mac == [0; 6] && e.is_self)
            .map(|e| e.dst)
            .collect::<Vec<_>>(),
        vec![Some(vtep2)]
    );
    assert!(nl.neigh_entries(&name, 42).unwrap().is_empty());
    nl.remove_segment(&name, 42).expect("remove");
    nl.remove_segment(&name, 42).expect("remove again");
}
