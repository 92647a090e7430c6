//! Running iproute2 and iptables inside a lab namespace. The modes use them for what the lab's
//! netlink layer does not cover (bridges, VXLAN, FDB, neighbours, MTU, packet filters): one
//! batched invocation per namespace keeps a lab build to a handful of process starts.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::LabError;

/// The Debian package that ships a program the lab, the benchmarks or the tests start.
pub fn package_of(program: &str) -> &'static str {
    match program {
        "ip" | "bridge" | "tc" => "iproute2",
        "iptables" | "ip6tables" | "iptables-restore" | "ip6tables-restore" => "iptables",
        "iperf3" => "iperf3",
        "etcd" => "etcd-server",
        "etcdctl" => "etcd-client",
        "nsenter" => "util-linux",
        "podman" => "podman",
        "runc" => "runc",
        "bpftool" => "bpftool",
        "ping" => "iputils-ping",
        _ => "the package that provides it",
    }
}

/// Fails with the Debian package to install unless `program` is on the PATH.
pub fn require(program: &str) -> Result<(), LabError> {
    let found = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|d| {
            let p = d.join(program);
            std::fs::metadata(&p).is_ok_and(|m| {
                use std::os::unix::fs::PermissionsExt;
                m.is_file() && m.permissions().mode() & 0o111 != 0
            })
        })
    });
    if found {
        Ok(())
    } else {
        Err(LabError::Invalid(format!(
            "`{program}` is not installed: install the Debian package {} (`make setup` installs every package ilanet needs)",
            package_of(program)
        )))
    }
}

/// Runs `program args…` with `input` on stdin; fails with the command and its stderr.
pub(crate) fn run(program: &str, args: &[&str], input: &str) -> Result<(), LabError> {
    let shown = format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                return require(program).err().unwrap_or(LabError::Os {
                    what: format!("starting `{shown}`"),
                    source,
                });
            }
            LabError::Os {
                what: format!("starting `{shown}`"),
                source,
            }
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .map_err(|source| LabError::Os {
                what: format!("writing the input of `{shown}`"),
                source,
            })?;
    }
    let out = child.wait_with_output().map_err(|source| LabError::Os {
        what: format!("waiting for `{shown}`"),
        source,
    })?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The first lines of a batch's stderr name the failing line; the rest is noise.
    let excerpt: String = stderr.lines().take(5).collect::<Vec<_>>().join("; ");
    Err(LabError::Invalid(format!(
        "`{shown}` failed ({}): {excerpt}",
        out.status
    )))
}

/// Runs `ip -n <ns> -batch -` over `lines` (each an `ip` command without the leading `ip`).
pub(crate) fn ip_batch(ns: &str, lines: &[String]) -> Result<(), LabError> {
    if lines.is_empty() {
        return Ok(());
    }
    run("ip", &["-n", ns, "-batch", "-"], &(lines.join("\n") + "\n"))
}

/// Runs `bridge -n <ns> -batch -` over `lines`.
pub(crate) fn bridge_batch(ns: &str, lines: &[String]) -> Result<(), LabError> {
    if lines.is_empty() {
        return Ok(());
    }
    run(
        "bridge",
        &["-n", ns, "-batch", "-"],
        &(lines.join("\n") + "\n"),
    )
}

/// Formats a MAC address the way iproute2 reads it.
pub(crate) fn mac(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Names of the veth links in namespace `ns` (whatever created them: the lab or an agent).
pub(crate) fn veth_names(ns: &str) -> Result<Vec<String>, LabError> {
    let out = Command::new("ip")
        .args(["-n", ns, "-o", "link", "show", "type", "veth"])
        .output()
        .map_err(|source| LabError::Os {
            what: format!("listing the veths of '{ns}'"),
            source,
        })?;
    if !out.status.success() {
        return Err(LabError::Invalid(format!(
            "listing the veths of '{ns}': {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    // Lines look like `5: lxc1@if4: <BROADCAST,…> mtu 1500 …`.
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_program_names_its_package() {
        let e = require("surely-not-a-program-ilanet").expect_err("missing");
        assert!(e.to_string().contains("is not installed"), "{e}");
        assert_eq!(package_of("etcd"), "etcd-server");
        assert_eq!(package_of("iperf3"), "iperf3");
        assert!(require("sh").is_ok());
        let e = run("surely-not-a-program-ilanet", &[], "").expect_err("missing");
        assert!(e.to_string().contains("make setup"), "{e}");
    }
}
