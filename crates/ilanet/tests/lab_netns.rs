//! Real namespaces, real eBPF: the lab end to end (needs root).

use std::time::Duration;

use ila::ChecksumMode;
use lab::plan::Plan;
use lab::state::{self, LabState};
use lab::{netns, probe, DownOutcome, LabError, LabSpec};

const TIMEOUT: Duration = Duration::from_secs(3);

/// A lab spec whose agents run from the `ilanet` binary under test.
fn spec(name: &str, sites: usize, containers: usize) -> LabSpec {
    let mut s = LabSpec::generic(name, sites, containers);
    s.agent_binary = Some(env!("CARGO_BIN_EXE_ilanet").into());
    s
}

/// Per-run unique lab name, so parallel runs never collide.
fn lab_name(tag: &str) -> String {
    format!("l{}-{tag}", std::process::id())
}

/// Removes the lab when the test ends, also when it fails.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = lab::down(&self.0);
    }
}

fn check_all_pairs(plan: &Plan, bytes: usize) {
    let all: Vec<_> = plan
        .hosts
        .iter()
        .flat_map(|h| h.containers.iter().map(move |c| (h, c)))
        .collect();
    let mut port = 31000;
    for (sh, s) in &all {
        for (dh, d) in &all {
            if s.name == d.name {
                continue;
            }
            port += 1;
            let what = format!("{} ({}) -> {} ({})", s.name, sh.name, d.name, dh.name);
            probe::ping(&s.netns, d.sir_addr, TIMEOUT)
                .unwrap_or_else(|e| panic!("ping {what}: {e}"));
            let t = probe::tcp_transfer(&s.netns, &d.netns, d.sir_addr, port, bytes, TIMEOUT)
                .unwrap_or_else(|e| panic!("tcp {what}: {e}"));
            assert_eq!(t.bytes, bytes);
        }
    }
}

fn run_mode(tag: &str, mode: ChecksumMode) {
    let name = lab_name(tag);
    let _cleanup = Cleanup(name.clone());
    let mut spec = spec(&name, 2, 2);
    spec.csum_mode = mode;
    let plan = lab::up(&spec).expect("lab up");
    check_all_pairs(&plan, 200_000);
    let status = lab::status(&name).expect("status");
    for h in &status.hosts {
        assert!(h.present);
        assert_eq!(
            h.out_mappings, 4,
            "every container is mapped on host {}",
            h.name
        );
        assert_eq!(h.in_mappings, 2, "local containers only on host {}", h.name);
        let c = h.counters.as_ref().expect("counters");
        // Each host sent to and received from the other host's containers.
        assert!(c.out_translated > 0, "{}: {c:?}", h.name);
        assert!(c.in_translated > 0, "{}: {c:?}", h.name);
        assert!(c.in_redirected > 0, "{}: {c:?}", h.name);
        assert!(
            c.out_local > 0,
            "same-host pairs pass untranslated on {}: {c:?}",
            h.name
        );
        assert_eq!(
            c.drop_csum + c.drop_malformed + c.drop_rewrite,
            0,
            "{}: {c:?}",
            h.name
        );
    }
}

#[test]
#[ignore = "needs root: network namespaces, eBPF"]
fn neutral_map_lab_reaches_every_pair() {
    run_mode("nm", ChecksumMode::NeutralMap);
}

#[test]
#[ignore = "needs root: network namespaces, eBPF"]
fn adj_transport_lab_reaches_every_pair() {
    run_mode("at", ChecksumMode::AdjTransport);
}

#[test]
#[ignore = "needs root: network namespaces, eBPF"]
fn no_action_lab_reaches_every_pair() {
    // The checksum is wrong on the wire only; the receiver's reverse translation restores it.
    run_mode("na", ChecksumMode::NoAction);
}

#[test]
#[ignore = "needs root: network namespaces, eBPF"]
fn second_up_is_refused_and_down_is_idempotent() {
    let name = lab_name("idem");
    let _cleanup = Cleanup(name.clone());
    let spec = spec(&name, 1, 1);
    let plan = lab::up(&spec).expect("lab up");
    let err = lab::up(&spec).expect_err("second up must fail");
    assert!(matches!(err, LabError::AlreadyUp { .. }), "{err}");
    assert!(err.to_string().contains("already up"), "{err}");
    // The failed second attempt must not have damaged the running lab.
    for ns in plan.netns_names() {
        assert!(netns::exists(&ns), "{ns} still there");
    }
    assert_eq!(lab::down(&name).expect("down"), DownOutcome::Removed);
    for ns in plan.netns_names() {
        assert!(!netns::exists(&ns), "{ns} removed");
    }
    assert!(!state::pin_root(&name).exists(), "pins removed");
    assert!(
        LabState::load(&name).expect("load").is_none(),
        "record removed"
    );
    assert_eq!(lab::down(&name).expect("down again"), DownOutcome::NotUp);
}

#[test]
#[ignore = "needs root: network namespaces, eBPF"]
fn foreign_namespace_is_never_touched() {
    let name = lab_name("clash");
    let _cleanup = Cleanup(name.clone());
    let plan = Plan::new(&spec(&name, 1, 1)).expect("plan");
    let foreign = plan.hosts[0].netns.clone();
    netns::create(&foreign).expect("create foreign netns");
    struct Foreign(String);
    impl Drop for Foreign {
        fn drop(&mut self) {
            let _ = netns::delete(&self.0);
        }
    }
    let _foreign = Foreign(foreign.clone());
    let err = lab::up(&spec(&name, 1, 1)).expect_err("clash");
    assert!(
        matches!(err, LabError::NetnsExists(ref n) if *n == foreign),
        "{err}"
    );
    assert!(netns::exists(&foreign), "the foreign namespace survives");
    assert!(
        LabState::load(&name).expect("load").is_none(),
        "no record left"
    );
    assert!(!netns::exists(&plan.router_netns), "nothing half-built");
    // down on a lab that never came up leaves the foreign namespace alone too.
    assert_eq!(lab::down(&name).expect("down"), DownOutcome::NotUp);
    assert!(netns::exists(&foreign));
}

#[test]
#[ignore = "needs root: network namespaces, eBPF"]
fn down_removes_a_half_built_lab_from_its_record() {
    // A crash during `lab up` leaves a record in the Creating phase with the namespaces made so
    // far; `down` must remove exactly those.
    let name = lab_name("crash");
    let _cleanup = Cleanup(name.clone());
    let plan = Plan::new(&spec(&name, 2, 1)).expect("plan");
    let mut st = LabState::claim(&plan).expect("claim");
    for ns in plan.netns_names().iter().take(3) {
        st.created_netns.push(ns.clone());
        st.save().expect("save");
        netns::create(ns).expect("create");
    }
    assert_eq!(lab::down(&name).expect("down"), DownOutcome::Removed);
    for ns in plan.netns_names() {
        assert!(!netns::exists(&ns), "{ns}");
    }
    assert!(LabState::load(&name).expect("load").is_none());
}
