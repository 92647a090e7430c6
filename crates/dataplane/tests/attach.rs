//! Loader, pinning and TCX attach on the real kernel (root). Each test uses its own veth pair and
//! pin directory, removed by Drop guards even when an assertion fails.

mod support;

use std::path::Path;
use std::process::Command;

use dataplane::{HostDataplane, HostMaps, OutEntry, ProgramKind};
use ila::ChecksumMode;
use support::*;

const CHILD_ENV: &str = "ILANET_TEST_ATTACH_CHILD";

/// Not a test on its own: the body of the child process used by `pinned_link_survives_exit`.
#[test]
#[ignore = "run by pinned_link_survives_exit in a child process"]
fn child_attach() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (pin_dir, ifname) = spec.split_once('|').expect("pin_dir|ifname");
    let mut dp = HostDataplane::load(Path::new(pin_dir)).expect("load");
    dp.attach(ProgramKind::FromContainer, ifname)
        .expect("attach");
    let s = Scenario::new(ChecksumMode::NeutralMap);
    dp.maps()
        .insert_out(
            s.sir(),
            &OutEntry {
                ila: s.ila(),
                csum_mode: s.mode(),
                local: false,
            },
        )
        .expect("insert");
    // Everything is dropped as the process exits.
}

#[test]
#[ignore = "needs root: eBPF programs, bpffs pins, network namespaces"]
fn pinned_link_survives_exit() {
    let pins = PinDir::new("survive");
    let veth = Veth::new();
    let status = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "child_attach",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, format!("{}|{}", pins.0.display(), veth.a))
        .status()
        .expect("spawn child");
    assert!(status.success(), "child failed");

    // The loader is gone: the link must still be there, pinned, on the right interface.
    let link = pins.0.join("links").join(&veth.a);
    let (_, prog) = pinned_link_info(&link).expect("pinned link readable by bpftool");
    assert_eq!(tcx_progs(&veth.a), vec![prog]);

    // ... and the program still runs: a packet entering veth.a from the "container" side is
    // translated (counter moves) by the orphaned program, using the pinned maps.
    let maps = HostMaps::open_pinned(&pins.0).expect("open pins");
    assert_eq!(maps.out_entries().expect("entries").len(), 1);
    let before = maps.counters().expect("counters");
    let s = Scenario::new(ChecksumMode::NeutralMap);
    inject(&veth.b, &l4_packet(s.src, s.sir(), NH_UDP, 1, 2, b"hello"));
    let mut after = maps.counters().expect("counters");
    for _ in 0..50 {
        if after.out_translated > before.out_translated {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        after = maps.counters().expect("counters");
    }
    assert_eq!(after.out_translated, before.out_translated + 1, "{after:?}");

    // Removing the pins detaches the program.
    dataplane::remove_pins(&pins.0).expect("remove pins");
    assert_eq!(programs_after_release(&veth.a), Vec::<u64>::new());
    dataplane::remove_pins(&pins.0).expect("remove pins is idempotent");
}

#[test]
#[ignore = "needs root: eBPF programs, bpffs pins, network namespaces"]
fn reload_reuses_maps_and_replaces_link() {
    let pins = PinDir::new("reload");
    let veth = Veth::new();
    let s = Scenario::new(ChecksumMode::AdjTransport);
    let link = pins.0.join("links").join(&veth.a);

    let (link_id, prog1) = {
        let mut dp = HostDataplane::load(&pins.0).expect("load 1");
        dp.attach(ProgramKind::FromWire, &veth.a).expect("attach 1");
        dp.maps()
            .insert_out(
                s.sir(),
                &OutEntry {
                    ila: s.ila(),
                    csum_mode: s.mode(),
                    local: false,
                },
            )
            .expect("insert");
        let (id, prog) = pinned_link_info(&link).expect("link 1");
        assert_eq!(tcx_progs(&veth.a), vec![prog]);
        // Attaching again from the same process keeps one link.
        dp.attach(ProgramKind::FromWire, &veth.a)
            .expect("attach 1 again");
        assert_eq!(pinned_link_info(&link).expect("link 1 again"), (id, prog));
        assert_eq!(tcx_progs(&veth.a), vec![prog]);
        (id, prog)
    };

    // "Agent restart": a new load finds the pinned maps (entry still there) and swaps the
    // program inside the existing link instead of adding a second one.
    let mut dp = HostDataplane::load(&pins.0).expect("load 2");
    let entries = dp.maps().out_entries().expect("entries");
    assert_eq!(
        entries,
        vec![(
            s.sir(),
            OutEntry {
                ila: s.ila(),
                csum_mode: s.mode(),
                local: false
            }
        )]
    );
    dp.attach(ProgramKind::FromWire, &veth.a).expect("attach 2");
    let (id2, prog2) = pinned_link_info(&link).expect("link 2");
    assert_eq!(id2, link_id, "link updated in place");
    assert_ne!(prog2, prog1, "new program in the link");
    assert_eq!(tcx_progs(&veth.a), vec![prog2]);
}

#[test]
#[ignore = "needs root: eBPF programs, bpffs pins, network namespaces"]
fn attach_after_interface_recreated() {
    let pins = PinDir::new("recreate");
    let veth = Veth::new();
    let name = veth.a.clone();
    let mut dp = HostDataplane::load(&pins.0).expect("load");
    dp.attach(ProgramKind::FromContainer, &name)
        .expect("attach");
    let peer = veth.b.clone();
    drop(veth);
    sh(&[
        "ip", "link", "add", &name, "type", "veth", "peer", "name", &peer,
    ]);
    let veth = Veth {
        a: name.clone(),
        b: peer,
    };
    dp.attach(ProgramKind::FromContainer, &name)
        .expect("re-attach after recreate");
    let (_, prog) = pinned_link_info(&pins.0.join("links").join(&name)).expect("link");
    assert_eq!(tcx_progs(&veth.a), vec![prog]);
}

#[test]
#[ignore = "needs root: eBPF programs, bpffs pins, network namespaces"]
fn unpinned_attach_detaches_on_drop() {
    let veth = Veth::new();
    {
        let mut dp = HostDataplane::load_unpinned().expect("load");
        dp.attach(ProgramKind::FromWire, &veth.a).expect("attach");
        assert_eq!(tcx_progs(&veth.a).len(), 1);
    }
    assert!(programs_after_release(&veth.a).is_empty());
}

/// The programs on `ifname` once a released link is gone: the kernel frees the last reference
/// of a link asynchronously, so give it up to a second.
fn programs_after_release(ifname: &str) -> Vec<u64> {
    for _ in 0..100 {
        let progs = tcx_progs(ifname);
        if progs.is_empty() {
            return progs;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    tcx_progs(ifname)
}

#[test]
#[ignore = "needs root: eBPF programs, bpffs pins, network namespaces"]
fn attach_rejects_bad_names() {
    let pins = PinDir::new("names");
    let mut dp = HostDataplane::load(&pins.0).expect("load");
    for bad in ["", "../x", "a/b", "waytoolonginterfacename", "."] {
        assert!(
            dp.attach(ProgramKind::FromWire, bad).is_err(),
            "{bad:?} accepted"
        );
    }
    assert!(dp.attach(ProgramKind::FromWire, "nonexistent0").is_err());
}

#[test]
#[ignore = "needs root: eBPF programs, bpffs pins, network namespaces"]
fn remove_pins_refuses_non_bpffs() {
    let dir = std::env::temp_dir().join(unique("ilanet-notbpffs-"));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let res = dataplane::remove_pins(&dir);
    let exists = dir.exists();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(res.is_err());
    assert!(exists);
}

#[test]
#[ignore = "needs root: eBPF programs, bpffs pins, network namespaces"]
fn load_rebuilds_prefix_filters() {
    use aya::maps::{Array, Map, MapData};
    let pins = PinDir::new("filters");
    let s = Scenario::new(ChecksumMode::NeutralMap);
    let pkt = l4_packet(s.src, s.sir(), NH_TCP, 1, 2, b"filtered");
    {
        let mut dp = HostDataplane::load(&pins.0).expect("load");
        dp.maps()
            .insert_out(
                s.sir(),
                &OutEntry {
                    ila: s.ila(),
                    csum_mode: s.mode(),
                    local: false,
                },
            )
            .expect("insert");
        assert_eq!(
            dst_of(
                &dp.test_run(ProgramKind::FromContainer, &pkt, 1)
                    .expect("run")
                    .packet
            ),
            s.ila()
        );
    }
    // Simulate pins written by a version without filters: the entry exists, its slot is clear.
    let data = MapData::from_pin(pins.0.join("ILA_OUT_FILTER")).expect("filter pin");
    let mut filter: Array<MapData, u32> = Map::from_map_data(data)
        .expect("map")
        .try_into()
        .expect("array");
    for i in 0..filter.len() {
        filter.set(i, 0, 0).expect("clear");
    }
    let dp = HostDataplane::load(&pins.0).expect("reload");
    let out = dp
        .test_run(ProgramKind::FromContainer, &pkt, 1)
        .expect("run");
    assert_eq!(
        dst_of(&out.packet),
        s.ila(),
        "reload must re-mark existing prefixes"
    );
}
