//! The request configuration on stdin: the network configuration's fields, ilanet's own fields
//! and what the runtime inserts (`prevResult`, `runtimeConfig`, `args`,
//! `cni.dev/valid-attachments`).
//!
//! Syntax errors are code 6 (decoding); wrong types, bad values and missing fields are code 7
//! and name the field as a JSON path; keys ilanet does not know are code 2 with key and value
//! (a typo such as `lables` must not pass silently).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::env::{Command, SUPPORTED_VERSIONS};
use crate::error::{code, short_json, CniError};

/// Largest accepted stdin (network configuration plus `prevResult`).
pub const MAX_STDIN: usize = 1024 * 1024;

/// The agent socket when the configuration names none.
pub const DEFAULT_SOCKET: &str = "/run/ilanet/agent.sock";

/// Default time to wait for the agent's answer.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest accepted `timeoutMs` (10 minutes).
pub const MAX_TIMEOUT_MS: u64 = 600_000;

/// The label key the container name (`CNI_ARGS` `K8S_POD_NAME`) is given by default.
pub const DEFAULT_NAME_LABEL: &str = "name";

/// Most entries in `cni.dev/valid-attachments`.
pub const MAX_VALID_ATTACHMENTS: usize = 100_000;

/// Keys a runtime may put in the request configuration besides ilanet's own: the spec's
/// protocol keys and well-known keys that ilanet accepts and ignores.
const PROTOCOL_KEYS: &[&str] = &[
    "cniVersion",
    "cniVersions",
    "name",
    "type",
    // Should not be set, but libcni 1.1 (podman 4.3) passes the plugin's capabilities through.
    "capabilities",
    "runtimeConfig",
    "args",
    "prevResult",
    "dns",
    "disableCheck",
    "disableGC",
    "cni.dev/valid-attachments",
];

/// ilanet's own keys.
const ILANET_KEYS: &[&str] = &["socket", "tenant", "labels", "timeoutMs", "nameLabel"];

/// Well-known keys whose meaning ilanet does not implement: refused with code 2 rather than
/// ignored, since the administrator expects them to take effect.
const UNSUPPORTED_KEYS: &[(&str, &str)] = &[
    (
        "ipam",
        "ilanet allocates SIR addresses itself; remove the ipam section",
    ),
    ("ipMasq", "ilanet does not masquerade"),
];

/// Raw shape of the configuration (after the key check), for serde.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    cni_version: Option<String>,
    name: Option<String>,
    #[serde(rename = "type")]
    plugin_type: Option<String>,
    socket: Option<PathBuf>,
    tenant: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    timeout_ms: Option<u64>,
    name_label: Option<String>,
    prev_result: Option<serde_json::Map<String, Value>>,
    args: Option<RawArgs>,
    #[serde(rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<Vec<RawAttachment>>,
}

/// `args` as in CONVENTIONS.md: `{"cni": {"labels": [{"key","value"}]}}`; other members are
/// other plugins' business.
#[derive(Debug, Deserialize)]
struct RawArgs {
    cni: Option<RawArgsCni>,
}

#[derive(Debug, Deserialize)]
struct RawArgsCni {
    labels: Option<Vec<RawKv>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKv {
    key: String,
    value: String,
}

#[derive(Debug, Deserialize)]
struct RawAttachment {
    #[serde(rename = "containerID")]
    container_id: String,
    ifname: String,
}

/// One entry of `cni.dev/valid-attachments`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Attachment {
    /// `CNI_CONTAINERID` of its ADD.
    pub container_id: String,
    /// `CNI_IFNAME` of its ADD.
    pub ifname: String,
}

/// A validated request configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    /// The protocol version in use (one of [`SUPPORTED_VERSIONS`]).
    pub cni_version: String,
    /// Network name.
    pub name: String,
    /// Plugin type (the binary's name, `ilanet-cni` in the examples).
    pub plugin_type: String,
    /// The agent's unix socket.
    pub socket: PathBuf,
    /// Tenant network (the agent's default when absent).
    pub tenant: Option<String>,
    /// The network's labels (lowest priority of the explicit label sources).
    pub labels: BTreeMap<String, String>,
    /// Labels from `args.cni.labels`, in order.
    pub args_labels: Vec<(String, String)>,
    /// Time to wait for the agent.
    pub timeout: Duration,
    /// Label key for the container name from `K8S_POD_NAME`; `None` to not derive it.
    pub name_label: Option<String>,
    /// The previous result (ADD in a chain, DEL, CHECK).
    pub prev_result: Option<serde_json::Map<String, Value>>,
    /// `cni.dev/valid-attachments` (GC).
    pub valid_attachments: Option<Vec<Attachment>>,
}

/// Checks one label with the policy crate's rules (what the agent will accept).
pub fn check_label(key: &str, value: &str) -> Result<(), String> {
    policy::LabelSet::from_pairs([(key, value)])
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Checks a network name: `[A-Za-z0-9][A-Za-z0-9_.-]*`.
fn check_network_name(name: &str) -> Result<(), &'static str> {
    let b = name.as_bytes();
    if b.is_empty() {
        return Err("empty");
    }
    if !b[0].is_ascii_alphanumeric()
        || !b
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
    {
        return Err("must start with a letter or digit, then letters, digits, '_', '.' or '-'");
    }
    Ok(())
}

/// The `cniVersion` on stdin if it is one this plugin speaks (for the version of an error
/// object written before the configuration is fully validated).
pub fn peek_version(stdin: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct V {
        #[serde(rename = "cniVersion")]
        v: String,
    }
    let v: V = serde_json::from_slice(stdin).ok()?;
    SUPPORTED_VERSIONS.contains(&v.v.as_str()).then_some(v.v)
}

/// Parses and validates the configuration for `command` (not used for VERSION).
pub fn parse(stdin: &[u8], command: Command) -> Result<NetConf, CniError> {
    if stdin.len() > MAX_STDIN {
        return Err(CniError::new(
            code::IO_FAILURE,
            format!("network configuration on stdin is larger than {MAX_STDIN} bytes"),
            "",
        ));
    }
    let text = std::str::from_utf8(stdin).map_err(|e| {
        CniError::new(
            code::DECODING_FAILURE,
            "network configuration on stdin is not UTF-8",
            e.to_string(),
        )
    })?;
    if text.trim().is_empty() {
        return Err(CniError::new(
            code::DECODING_FAILURE,
            "no network configuration on stdin",
            "",
        ));
    }
    let value: Value = serde_json::from_str(text).map_err(|e| {
        CniError::new(
            code::DECODING_FAILURE,
            "network configuration on stdin is not JSON",
            e.to_string(),
        )
    })?;
    let Value::Object(map) = &value else {
        return Err(CniError::config("(top level)", "must be a JSON object"));
    };
    for (k, v) in map {
        if let Some((_, why)) = UNSUPPORTED_KEYS.iter().find(|(u, _)| u == k) {
            return Err(CniError::new(
                code::UNSUPPORTED_FIELD,
                format!("unsupported field {k} = {}", short_json(v)),
                *why,
            ));
        }
        if !PROTOCOL_KEYS.contains(&k.as_str())
            && !ILANET_KEYS.contains(&k.as_str())
            && !k.starts_with("cni.dev/")
        {
            return Err(CniError::new(
                code::UNSUPPORTED_FIELD,
                format!(
                    "unsupported field {} = {}",
                    crate::error::truncate(k, 80),
                    short_json(v)
                ),
                format!("ilanet's fields are {}", ILANET_KEYS.join(", ")),
            ));
        }
    }
    let raw: Raw = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        CniError::config(&path, e.into_inner())
    })?;

    let cni_version = raw
        .cni_version
        .ok_or_else(|| CniError::config("cniVersion", "missing"))?;
    if !SUPPORTED_VERSIONS.contains(&cni_version.as_str()) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!(
                "incompatible CNI version {:?}",
                crate::error::truncate(&cni_version, 40)
            ),
            format!("ilanet-cni supports {}", SUPPORTED_VERSIONS.join(", ")),
        ));
    }
    if version_lt(&cni_version, command.min_version()) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!(
                "{} needs CNI version {} or later, the configuration says {cni_version}",
                command.as_str(),
                command.min_version()
            ),
            "",
        ));
    }
    let name = raw
        .name
        .ok_or_else(|| CniError::config("name", "missing"))?;
    check_network_name(&name).map_err(|e| CniError::config("name", e))?;
    let plugin_type = raw
        .plugin_type
        .ok_or_else(|| CniError::config("type", "missing"))?;
    if plugin_type.is_empty() || plugin_type.contains('/') {
        return Err(CniError::config(
            "type",
            "must be the plugin's file name (not empty, no '/')",
        ));
    }
    let socket = raw.socket.unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
    if !socket.is_absolute() {
        return Err(CniError::config("socket", "must be an absolute path"));
    }
    if let Some(t) = &raw.tenant {
        if t.is_empty() || t.len() > 253 || t.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(CniError::config(
                "tenant",
                "must be a tenant name (1-253 characters, no whitespace)",
            ));
        }
    }
    let labels = raw.labels.unwrap_or_default();
    for (k, v) in &labels {
        check_label(k, v).map_err(|e| CniError::config(&format!("labels.{k}"), e))?;
    }
    let mut args_labels = Vec::new();
    if let Some(list) = raw.args.and_then(|a| a.cni).and_then(|c| c.labels) {
        for (i, kv) in list.into_iter().enumerate() {
            check_label(&kv.key, &kv.value)
                .map_err(|e| CniError::config(&format!("args.cni.labels[{i}]"), e))?;
            args_labels.push((kv.key, kv.value));
        }
    }
    let timeout = match raw.timeout_ms {
        None => DEFAULT_TIMEOUT,
        Some(ms) if (1..=MAX_TIMEOUT_MS).contains(&ms) => Duration::from_millis(ms),
        Some(_) => {
            return Err(CniError::config(
                "timeoutMs",
                format!("must be 1 to {MAX_TIMEOUT_MS}"),
            ))
        }
    };
    let name_label = match raw.name_label {
        None => Some(DEFAULT_NAME_LABEL.to_string()),
        Some(k) if k.is_empty() => None,
        Some(k) => {
            check_label(&k, "x").map_err(|e| CniError::config("nameLabel", e))?;
            Some(k)
        }
    };
    let valid_attachments = match raw.valid_attachments {
        None => None,
        Some(list) if list.len() > MAX_VALID_ATTACHMENTS => {
            return Err(CniError::config(
                "cni.dev/valid-attachments",
                format!("more than {MAX_VALID_ATTACHMENTS} entries"),
            ))
        }
        Some(list) => {
            let mut out = Vec::with_capacity(list.len());
            for (i, a) in list.into_iter().enumerate() {
                let field = format!("cni.dev/valid-attachments[{i}]");
                crate::env::validate_container_id(&a.container_id)
                    .map_err(|e| CniError::config(&format!("{field}.containerID"), e))?;
                crate::env::validate_ifname(&a.ifname)
                    .map_err(|e| CniError::config(&format!("{field}.ifname"), e))?;
                out.push(Attachment {
                    container_id: a.container_id,
                    ifname: a.ifname,
                });
            }
            Some(out)
        }
    };
    if command == Command::Gc && valid_attachments.is_none() {
        // Treating a missing list as empty would remove every attachment.
        return Err(CniError::config(
            "cni.dev/valid-attachments",
            "missing (GC needs the list of attachments to keep)",
        ));
    }
    Ok(NetConf {
        cni_version,
        name,
        plugin_type,
        socket,
        tenant: raw.tenant,
        labels,
        args_labels,
        timeout,
        name_label,
        prev_result: raw.prev_result,
        valid_attachments,
    })
}

/// `a < b` for two of the supported versions (`x.y.z`, numeric).
fn version_lt(a: &str, b: &str) -> bool {
    let parse = |s: &str| -> Vec<u32> { s.split('.').map(|p| p.parse().unwrap_or(0)).collect() };
    parse(a) < parse(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(s: &str) -> Result<NetConf, CniError> {
        parse(s.as_bytes(), Command::Add)
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = add(r#"{"cniVersion":"1.0.0","name":"ilanet","type":"ilanet-cni"}"#).expect("ok");
        assert_eq!(c.socket, PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(c.timeout, DEFAULT_TIMEOUT);
        assert_eq!(c.name_label.as_deref(), Some("name"));
        assert!(c.labels.is_empty() && c.tenant.is_none());
    }

    #[test]
    fn podman_4_3_request_is_accepted() {
        // What podman 4.3.1 (containers/common 0.50, libcni 1.1) really sent on ADD.
        let s = r#"{"capabilities":{"aliases":true,"portMappings":true},"cniVersion":"1.0.0",
            "labels":{"site":"a"},"name":"ilx","runtimeConfig":{"aliases":{"ilx":["myalias","9418753044cb"]}},
            "socket":"/run/ilanet/agent.sock","type":"ilanet-cni"}"#;
        let c = add(s).expect("ok");
        assert_eq!(c.labels.get("site").map(String::as_str), Some("a"));
    }

    #[test]
    fn errors_name_the_field() {
        let cases: &[(&str, u32, &str)] = &[
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"t","labels":{"app":5}}"#,
                7,
                "labels.app",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"t","labels":{"-x":"y"}}"#,
                7,
                "labels.-x",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"t","labels":{"ilanet.io/tenant":"1"}}"#,
                7,
                "labels.ilanet.io/tenant",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"t","timeoutMs":0}"#,
                7,
                "timeoutMs",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"t","timeoutMs":"5"}"#,
                7,
                "timeoutMs",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"t","socket":"rel"}"#,
                7,
                "socket",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"t","lables":{}}"#,
                2,
                "lables",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"t","ipam":{"type":"host-local"}}"#,
                2,
                "ipam",
            ),
            (r#"{"cniVersion":"1.0.0","type":"t"}"#, 7, "name"),
            (
                r#"{"cniVersion":"1.0.0","name":"-n","type":"t"}"#,
                7,
                "name",
            ),
            (r#"{"cniVersion":"1.0.0","name":"n"}"#, 7, "type"),
            (r#"{"name":"n","type":"t"}"#, 7, "cniVersion"),
            (
                r#"{"cniVersion":"9.9.9","name":"n","type":"t"}"#,
                1,
                "9.9.9",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"t","prevResult":[]}"#,
                7,
                "prevResult",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"t","nameLabel":"a b"}"#,
                7,
                "nameLabel",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"t","args":{"cni":{"labels":[{"key":"a"}]}}}"#,
                7,
                "args.cni.labels[0]",
            ),
            (r#"[1]"#, 7, "top level"),
            (r#"{"cniVersion":"#, 6, "not JSON"),
            ("", 6, "no network configuration"),
        ];
        for (input, c, needle) in cases {
            let e = add(input).expect_err(input);
            assert_eq!(e.code, *c, "{input}: {e}");
            assert!(e.msg.contains(needle), "{input}: {e}");
        }
    }

    #[test]
    fn status_and_gc_need_1_1_and_gc_needs_the_list() {
        let s = br#"{"cniVersion":"1.0.0","name":"n","type":"t"}"#;
        assert_eq!(parse(s, Command::Status).expect_err("1.0").code, 1);
        let s = br#"{"cniVersion":"1.1.0","name":"n","type":"t"}"#;
        assert!(parse(s, Command::Status).is_ok());
        let e = parse(s, Command::Gc).expect_err("no list");
        assert!(e.msg.contains("cni.dev/valid-attachments"), "{e}");
        let s = br#"{"cniVersion":"1.1.0","name":"n","type":"t",
            "cni.dev/valid-attachments":[{"containerID":"abc","ifname":"eth0"}]}"#;
        let c = parse(s, Command::Gc).expect("gc");
        assert_eq!(
            c.valid_attachments,
            Some(vec![Attachment {
                container_id: "abc".into(),
                ifname: "eth0".into()
            }])
        );
        let s = br#"{"cniVersion":"1.1.0","name":"n","type":"t",
            "cni.dev/valid-attachments":[{"containerID":"abc","ifname":"a/b"}]}"#;
        let e = parse(s, Command::Gc).expect_err("bad ifname");
        assert!(e.msg.contains("cni.dev/valid-attachments[0].ifname"), "{e}");
    }

    #[test]
    fn oversized_stdin_is_an_io_error() {
        let big = vec![b' '; MAX_STDIN + 1];
        assert_eq!(add_bytes(&big).code, code::IO_FAILURE);
    }

    fn add_bytes(b: &[u8]) -> CniError {
        parse(b, Command::Add).expect_err("error")
    }

    #[test]
    fn peek_version_only_returns_supported_versions() {
        assert_eq!(
            peek_version(br#"{"cniVersion":"0.4.0"}"#).as_deref(),
            Some("0.4.0")
        );
        assert_eq!(peek_version(br#"{"cniVersion":"0.1.0"}"#), None);
        assert_eq!(peek_version(b"junk"), None);
    }
}
