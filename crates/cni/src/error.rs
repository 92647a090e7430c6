//! The CNI error object (`{"cniVersion","code","msg","details"}`) and the codes ilanet-cni uses.

use serde_json::{json, Value};

/// Well-known error codes of the CNI specification (0–99 are reserved), plus ilanet's own
/// (100 and up).
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Unsupported field in the network configuration (the message names key and value).
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// Container unknown or does not exist.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Invalid necessary environment variables (the message names them).
    pub const INVALID_ENV: u32 = 4;
    /// I/O failure (reading the configuration from stdin).
    pub const IO_FAILURE: u32 = 5;
    /// Failed to decode content (stdin is not JSON).
    pub const DECODING_FAILURE: u32 = 6;
    /// Invalid network configuration (the message names the field).
    pub const INVALID_CONFIG: u32 = 7;
    /// Try again later: a transient condition (the agent did not answer in time, or is down
    /// while a DEL or GC must be done).
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// The plugin is not available (cannot service ADD): the agent is not running, or its
    /// store session is down.
    pub const PLUGIN_NOT_AVAILABLE: u32 = 50;
    /// Not available, and existing containers may have limited connectivity.
    pub const LIMITED_CONNECTIVITY: u32 = 51;
    /// ilanet: the agent refused the request (its reason is in `details`).
    pub const AGENT_REFUSED: u32 = 100;
    /// ilanet: CHECK found the attachment different from `prevResult`.
    pub const CHECK_MISMATCH: u32 = 101;
    /// ilanet: the agent's reply was not what the request returns.
    pub const BAD_AGENT_REPLY: u32 = 102;
}

/// A CNI error: what the plugin prints on stdout (with the version in use) before exiting 1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("CNI error {code}: {msg}{}", if details.is_empty() { String::new() } else { format!(" ({details})") })]
pub struct CniError {
    /// Numeric code (see [`code`]).
    pub code: u32,
    /// A short message; for configuration and environment errors it names the field.
    pub msg: String,
    /// A longer explanation (may be empty).
    pub details: String,
}

impl CniError {
    /// An error with a code, a message and details.
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// Invalid network configuration: `field` names the offending key (a JSON path).
    pub fn config(field: &str, why: impl std::fmt::Display) -> Self {
        Self::new(
            code::INVALID_CONFIG,
            format!("invalid network configuration: {field}: {why}"),
            "",
        )
    }

    /// Invalid environment: `var` names the variable.
    pub fn env(var: &str, why: impl std::fmt::Display) -> Self {
        Self::new(code::INVALID_ENV, format!("{var}: {why}"), "")
    }

    /// The error object of the spec, in protocol version `cni_version`.
    pub fn to_json(&self, cni_version: &str) -> Value {
        let mut v = json!({
            "cniVersion": cni_version,
            "code": self.code,
            "msg": self.msg,
        });
        if !self.details.is_empty() {
            v["details"] = Value::String(self.details.clone());
        }
        v
    }
}

/// Shortens a JSON value for an error message (the spec wants key and value of an unsupported
/// field; a huge value must not produce a huge message).
pub(crate) fn short_json(v: &Value) -> String {
    let s = v.to_string();
    truncate(&s, 80)
}

/// At most `max` characters of `s`, with an ellipsis when cut.
pub(crate) fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_object_has_the_spec_fields() {
        let e = CniError::new(7, "Invalid Configuration", "Network too small");
        assert_eq!(
            e.to_json("1.1.0"),
            json!({"cniVersion":"1.1.0","code":7,"msg":"Invalid Configuration","details":"Network too small"})
        );
        let e = CniError::new(50, "down", "");
        assert_eq!(
            e.to_json("1.0.0"),
            json!({"cniVersion":"1.0.0","code":50,"msg":"down"})
        );
    }

    #[test]
    fn truncation_is_char_safe() {
        assert_eq!(truncate("ééé", 2), "éé…");
        assert_eq!(truncate("ab", 2), "ab");
    }
}
