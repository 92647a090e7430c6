//! The `ilanet` binary as a user runs it (needs root: namespaces and eBPF).

use std::process::{Command, Output};
use std::time::Duration;

mod common;
use common::text;

const BIN: &str = env!("CARGO_BIN_EXE_ilanet");

fn ilanet(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("run ilanet")
}

fn lab_name(tag: &str) -> String {
    format!("c{}-{tag}", std::process::id())
}

struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = ilanet(&["lab", "down", "--name", &self.0]);
    }
}

#[test]
#[ignore = "needs root: network namespaces, eBPF"]
fn lab_outlives_the_process_that_built_it() {
    let name = lab_name("cli");
    let _cleanup = Cleanup(name.clone());
    let up = ilanet(&[
        "lab",
        "up",
        "--name",
        &name,
        "--sites",
        "2",
        "--containers",
        "1",
    ]);
    assert!(up.status.success(), "{}", text(&up));

    // The process that attached the programs has exited: pinned links keep them working.
    let plan = lab::plan_of(&name).expect("plan");
    let (a, b) = (&plan.hosts[0].containers[0], &plan.hosts[1].containers[0]);
    lab::probe::ping(&a.netns, b.sir_addr, Duration::from_secs(3)).expect("ping after exit");
    lab::probe::tcp_transfer(
        &a.netns,
        &b.netns,
        b.sir_addr,
        5201,
        100_000,
        Duration::from_secs(3),
    )
    .expect("tcp after exit");

    let status = ilanet(&["lab", "status", "--name", &name, "--json"]);
    assert!(status.status.success(), "{}", text(&status));
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).expect("json");
    let hosts = v["hosts"].as_array().expect("hosts");
    assert_eq!(hosts.len(), 2);
    assert_eq!(
        hosts[0]["containers"][0]["sir_addr"],
        a.sir_addr.to_string()
    );
    assert!(
        hosts[0]["counters"]["out_translated"]
            .as_u64()
            .expect("counter")
            > 0
    );

    let again = ilanet(&["lab", "up", "--name", &name]);
    assert!(!again.status.success());
    assert!(text(&again).contains("already up"), "{}", text(&again));

    let down = ilanet(&["lab", "down", "--name", &name]);
    assert!(down.status.success(), "{}", text(&down));
    assert!(text(&down).contains("removed"), "{}", text(&down));
    let down2 = ilanet(&["lab", "down", "--name", &name]);
    assert!(down2.status.success(), "{}", text(&down2));
    assert!(text(&down2).contains("not up"), "{}", text(&down2));
    assert!(!lab::netns::exists(&a.netns));
}

#[test]
#[ignore = "needs root: network namespaces, eBPF"]
fn demo_checks_every_cross_site_pair() {
    let name = lab_name("demo");
    let _cleanup = Cleanup(name.clone());
    let out = ilanet(&["demo", "--name", &name, "--bytes", "65536"]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    for site in ["New Orleans", "Austin", "Salt Lake City", "Denver"] {
        assert!(t.contains(site), "{site} missing: {t}");
    }
    assert!(
        t.contains("All 48 cross-site pairs behaved as expected: 24 same-tenant pairs passed"),
        "{t}"
    );
    assert!(t.contains("24 cross-tenant pairs were dropped"), "{t}");
    assert!(
        t.contains("(search → correlate)") && t.contains("(port not allowed)"),
        "{t}"
    );
    assert!(!t.contains("UNEXPECTED") && !t.contains("LEAK"), "{t}");
    assert!(t.contains("from-container SIR→ILA"), "{t}");
    assert!(t.contains("from-wire      ILA→SIR"), "{t}");
    // Without --keep the demo removes its lab.
    assert!(!lab::netns::exists(&format!("{name}-nola")), "{t}");
}

#[test]
#[ignore = "needs root: lab status answers only root"]
fn bad_input_is_refused_with_the_reason() {
    let name = lab_name("bad");
    let _cleanup = Cleanup(name.clone());
    let o = ilanet(&["lab", "up", "--name", &name, "--sites", "0"]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("--sites must be between 1"),
        "{}",
        text(&o)
    );
    let o = ilanet(&["lab", "up", "--name", &name, "--csum-mode", "fast"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("neutral-map"), "{}", text(&o));
    let o = ilanet(&["lab", "up", "--name", "UPPER"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("lab name 'UPPER'"), "{}", text(&o));
    // None of these left anything behind.
    assert!(lab::state::LabState::load(&name).expect("load").is_none());
    let o = ilanet(&["lab", "status", "--name", &name]);
    assert!(!o.status.success());
    assert!(text(&o).contains("not up"), "{}", text(&o));
}

#[test]
#[ignore = "needs root: setpriv, to run the CLI as an unprivileged user"]
fn non_root_is_a_clear_error() {
    let o = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            BIN,
            "lab",
            "up",
            "--name",
            "nonroot",
        ])
        .output()
        .expect("setpriv");
    assert!(!o.status.success());
    assert!(text(&o).contains("needs root"), "{}", text(&o));
}

/// Removes a directory tree on bpffs when dropped (the sentinels below).
struct RemoveDir(std::path::PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
#[ignore = "needs root: sentinel directories on bpffs"]
fn lab_commands_refuse_names_that_are_not_lab_names() {
    // Sentinels beside (ilanet/<other lab>) and above (/sys/fs/bpf/<other app>) the lab pins:
    // an empty name once removed all of /sys/fs/bpf/ilanet, `..` everything under /sys/fs/bpf.
    let other_lab = std::path::PathBuf::from(format!("/sys/fs/bpf/ilanet/{}", lab_name("keep")));
    let other_app = std::path::PathBuf::from(format!("/sys/fs/bpf/{}-app", lab_name("keep")));
    let _g1 = RemoveDir(other_lab.clone());
    let _g2 = RemoveDir(other_app.clone());
    std::fs::create_dir_all(other_lab.join("site1")).expect("sentinel");
    std::fs::create_dir_all(&other_app).expect("sentinel");
    for bad in ["", ".", "..", "../..", "a/b", "x/../.."] {
        for cmd in [
            &["lab", "down", "--name", bad][..],
            &["lab", "status", "--name", bad],
            &["endpoint", "list", "--lab", bad],
            &["policy", "list", "--lab", bad],
        ] {
            let out = ilanet(cmd);
            assert!(!out.status.success(), "{cmd:?} succeeded: {}", text(&out));
            assert!(
                text(&out).contains("lab name"),
                "{cmd:?} does not name the problem: {}",
                text(&out)
            );
        }
    }
    assert!(
        other_lab.join("site1").is_dir(),
        "another lab's pins were removed"
    );
    assert!(other_app.is_dir(), "pins outside ilanet were removed");
}

#[test]
fn out_of_range_lease_ttls_are_refused_before_anything_starts() {
    let name = lab_name("ttl");
    let _cleanup = Cleanup(name.clone());
    for ttl in [
        "0",
        "3601",
        "18446744073709551615",
        "99999999999999999999999",
    ] {
        for cmd in [
            &[
                "lab",
                "up",
                "--name",
                &name,
                "--sites",
                "1",
                "--lease-ttl",
                ttl,
            ][..],
            &["agent", "--lab", &name, "--lease-ttl", ttl],
        ] {
            let out = ilanet(cmd);
            let msg = text(&out);
            assert_eq!(out.status.code(), Some(2), "{cmd:?}: {msg}");
            assert!(
                msg.contains("--lease-ttl"),
                "{cmd:?} does not name the flag: {msg}"
            );
            assert!(!msg.contains("panicked"), "{cmd:?}: {msg}");
        }
    }
    assert!(lab::state::LabState::load(&name).expect("load").is_none());
}
