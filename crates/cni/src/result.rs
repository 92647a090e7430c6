//! The ADD result (`interfaces`, `ips`, `routes`, `dns`), the VERSION result, and CHECK's
//! comparison of an attachment with `prevResult`.
//!
//! What the agent configures (hostnet `plumb_endpoint`): a veth pair, the container side with
//! the SIR address as a /128 and a default route via the link-local gateway (`fe80::1`) that
//! the host side carries. The result says exactly that.

use agent::api::CniAttachment;
use serde_json::{json, Map, Value};

use crate::env::SUPPORTED_VERSIONS;
use crate::error::{code, CniError};

/// The VERSION result: `cniVersion` echoes the input's (when it is a version string),
/// `supportedVersions` lists [`SUPPORTED_VERSIONS`].
pub fn version_result(input_version: Option<&str>) -> Value {
    json!({
        "cniVersion": input_version.unwrap_or(crate::env::LATEST_VERSION),
        "supportedVersions": SUPPORTED_VERSIONS,
    })
}

fn ip_entry(cni_version: &str, att: &CniAttachment, interface: usize) -> Value {
    let mut ip = json!({
        "address": format!("{}/128", att.address),
        "gateway": att.gateway.to_string(),
        "interface": interface,
    });
    if cni_version == "0.4.0" {
        // 0.3.x/0.4.0 results carry the IP family; 1.0.0 removed it.
        ip["version"] = json!("6");
    }
    ip
}

/// The ADD result for an attachment. With a `prevResult` (ilanet after another plugin in a
/// chain) its interfaces, IPs, routes and DNS are kept and ilanet's are appended (indices of
/// ilanet's IPs shifted accordingly).
pub fn add_result(
    cni_version: &str,
    att: &CniAttachment,
    prev: Option<&Map<String, Value>>,
) -> Value {
    let list = |key: &str| -> Vec<Value> {
        prev.and_then(|p| p.get(key))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let mut interfaces = list("interfaces");
    let mut ips = list("ips");
    let mut routes = list("routes");
    let base = interfaces.len();
    interfaces.push(json!({"name": att.host_ifname, "mac": att.host_mac}));
    interfaces.push(json!({"name": att.ifname, "mac": att.mac, "sandbox": att.netns}));
    ips.push(ip_entry(cni_version, att, base + 1));
    routes.push(json!({"dst": "::/0", "gw": att.gateway.to_string()}));
    let dns = prev
        .and_then(|p| p.get("dns"))
        .filter(|d| d.is_object())
        .cloned()
        .unwrap_or_else(|| json!({}));
    json!({
        "cniVersion": cni_version,
        "interfaces": interfaces,
        "ips": ips,
        "routes": routes,
        "dns": dns,
    })
}

/// CHECK: the attachment the agent verified must be the one `prevResult` recorded: the
/// container interface (name, sandbox, MAC when recorded), the host interface, and the SIR
/// address on the container interface.
pub fn check_against(prev: &Map<String, Value>, att: &CniAttachment) -> Result<(), CniError> {
    let mismatch = |what: String| CniError::new(code::CHECK_MISMATCH, what, "");
    let interfaces = prev
        .get("interfaces")
        .and_then(Value::as_array)
        .ok_or_else(|| CniError::config("prevResult.interfaces", "missing or not a list"))?;
    let str_of = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    let idx = interfaces
        .iter()
        .position(|i| {
            str_of(i, "name").as_deref() == Some(att.ifname.as_str())
                && str_of(i, "sandbox").is_some_and(|s| !s.is_empty())
        })
        .ok_or_else(|| {
            mismatch(format!(
                "prevResult has no interface {} inside the container",
                att.ifname
            ))
        })?;
    let ifc = &interfaces[idx];
    if str_of(ifc, "sandbox").as_deref() != Some(att.netns.as_str()) {
        return Err(mismatch(format!(
            "interface {} is in {}, prevResult says {}",
            att.ifname,
            att.netns,
            str_of(ifc, "sandbox").unwrap_or_default()
        )));
    }
    if let Some(mac) = str_of(ifc, "mac") {
        if !mac.eq_ignore_ascii_case(&att.mac) {
            return Err(mismatch(format!(
                "interface {} has MAC {}, prevResult says {mac}",
                att.ifname, att.mac
            )));
        }
    }
    let host_recorded = interfaces.iter().any(|i| {
        str_of(i, "name").as_deref() == Some(att.host_ifname.as_str())
            && str_of(i, "sandbox").unwrap_or_default().is_empty()
    });
    if !host_recorded {
        return Err(mismatch(format!(
            "the host interface is {}, prevResult does not list it",
            att.host_ifname
        )));
    }
    let want = format!("{}/128", att.address);
    let ips = prev.get("ips").and_then(Value::as_array);
    let found = ips.is_some_and(|ips| {
        ips.iter().any(|ip| {
            str_of(ip, "address").as_deref() == Some(want.as_str())
                && ip.get("interface").and_then(Value::as_u64) == Some(idx as u64)
        })
    });
    if !found {
        return Err(mismatch(format!(
            "the container has {want} on {}, prevResult does not record it",
            att.ifname
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn att() -> CniAttachment {
        CniAttachment {
            endpoint: "cni-9418753044cb".into(),
            ifname: "eth0".into(),
            mac: "02:00:00:00:00:02".into(),
            host_ifname: "lxc1a2b3c".into(),
            host_mac: "02:00:00:00:00:01".into(),
            netns: "/run/netns/blue".into(),
            address: "fd00:dead:beef::5".parse().expect("addr"),
            gateway: "fe80::1".parse().expect("gw"),
            tenant: "default".into(),
            sir_prefix: "fd00:dead:beef::/64".into(),
            identity: 256,
        }
    }

    #[test]
    fn add_result_has_the_spec_shape() {
        let r = add_result("1.1.0", &att(), None);
        assert_eq!(
            r,
            json!({
                "cniVersion": "1.1.0",
                "interfaces": [
                    {"name": "lxc1a2b3c", "mac": "02:00:00:00:00:01"},
                    {"name": "eth0", "mac": "02:00:00:00:00:02", "sandbox": "/run/netns/blue"}
                ],
                "ips": [{"address": "fd00:dead:beef::5/128", "gateway": "fe80::1", "interface": 1}],
                "routes": [{"dst": "::/0", "gw": "fe80::1"}],
                "dns": {}
            })
        );
        let r = add_result("0.4.0", &att(), None);
        assert_eq!(r["ips"][0]["version"], json!("6"));
    }

    #[test]
    fn prev_result_is_kept_and_indices_shift() {
        // The spec's bridge example as a previous result.
        let prev = json!({
            "ips": [{"address": "10.1.0.5/16", "gateway": "10.1.0.1", "interface": 2}],
            "routes": [{"dst": "0.0.0.0/0"}],
            "interfaces": [
                {"name": "cni0", "mac": "00:11:22:33:44:55"},
                {"name": "veth3243", "mac": "55:44:33:22:11:11"},
                {"name": "eth0", "mac": "99:88:77:66:55:44", "sandbox": "/var/run/netns/blue"}
            ],
            "dns": {"nameservers": ["10.1.0.1"]}
        });
        let mut a = att();
        a.ifname = "eth1".into();
        let r = add_result("1.0.0", &a, prev.as_object());
        assert_eq!(r["interfaces"].as_array().map(Vec::len), Some(5));
        assert_eq!(r["ips"][0]["interface"], json!(2));
        assert_eq!(r["ips"][1]["interface"], json!(4));
        assert_eq!(r["interfaces"][4]["name"], json!("eth1"));
        assert_eq!(r["routes"].as_array().map(Vec::len), Some(2));
        assert_eq!(r["dns"]["nameservers"][0], json!("10.1.0.1"));
    }

    #[test]
    fn check_accepts_its_own_result_and_names_differences() {
        let a = att();
        let r = add_result("1.0.0", &a, None);
        let prev = r.as_object().expect("object");
        check_against(prev, &a).expect("own result");

        let mut moved = a.clone();
        moved.address = "fd00:dead:beef::6".parse().expect("addr");
        let e = check_against(prev, &moved).expect_err("address");
        assert_eq!(e.code, code::CHECK_MISMATCH);
        assert!(e.msg.contains("fd00:dead:beef::6/128"), "{e}");

        let mut other = a.clone();
        other.host_ifname = "lxcother".into();
        assert!(check_against(prev, &other)
            .expect_err("host")
            .msg
            .contains("lxcother"));

        let mut mac = a.clone();
        mac.mac = "02:00:00:00:00:99".into();
        assert!(check_against(prev, &mac)
            .expect_err("mac")
            .msg
            .contains("MAC"));

        let e = check_against(&Map::new(), &a).expect_err("empty");
        assert_eq!(e.code, code::INVALID_CONFIG);
    }

    #[test]
    fn version_result_matches_the_spec_example_shape() {
        assert_eq!(
            version_result(Some("1.0.0")),
            json!({"cniVersion": "1.0.0", "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]})
        );
        assert_eq!(version_result(None)["cniVersion"], json!("1.1.0"));
    }
}
