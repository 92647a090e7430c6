//! The CNI environment: `CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME`,
//! `CNI_ARGS`, `CNI_PATH`, validated per command as the spec and libcni's `skel` do.

use std::ffi::OsString;

use crate::error::{code, CniError};

/// Protocol versions this plugin speaks, oldest first (what VERSION reports).
pub const SUPPORTED_VERSIONS: [&str; 3] = ["0.4.0", "1.0.0", "1.1.0"];

/// The newest supported version (used for errors when the input names none we know).
pub const LATEST_VERSION: &str = "1.1.0";

/// Longest accepted container id (runtimes use 64 hex digits).
pub const MAX_CONTAINER_ID: usize = 1024;

/// Longest accepted `CNI_NETNS` or `CNI_ARGS`.
pub const MAX_ENV_VALUE: usize = 64 * 1024;

/// A CNI command (`CNI_COMMAND`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Attach a container.
    Add,
    /// Detach a container (best effort, idempotent).
    Del,
    /// Verify an attachment against `prevResult`.
    Check,
    /// Report supported versions.
    Version,
    /// Report whether ADD can be serviced (1.1.0).
    Status,
    /// Remove attachments not listed in `cni.dev/valid-attachments` (1.1.0).
    Gc,
}

impl Command {
    /// Parses the value of `CNI_COMMAND`.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "ADD" => Self::Add,
            "DEL" => Self::Del,
            "CHECK" => Self::Check,
            "VERSION" => Self::Version,
            "STATUS" => Self::Status,
            "GC" => Self::Gc,
            _ => return None,
        })
    }

    /// The command's name as in `CNI_COMMAND`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Add => "ADD",
            Self::Del => "DEL",
            Self::Check => "CHECK",
            Self::Version => "VERSION",
            Self::Status => "STATUS",
            Self::Gc => "GC",
        }
    }

    /// The oldest protocol version that has this command.
    pub fn min_version(self) -> &'static str {
        match self {
            Self::Add | Self::Del | Self::Check | Self::Version => "0.4.0",
            Self::Status | Self::Gc => "1.1.0",
        }
    }
}

/// The validated parameters of one invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Env {
    /// The command.
    pub command: Command,
    /// `CNI_CONTAINERID` (required for ADD, DEL, CHECK).
    pub container_id: Option<String>,
    /// `CNI_NETNS` (required for ADD and CHECK, optional for DEL).
    pub netns: Option<String>,
    /// `CNI_IFNAME` (required for ADD, DEL, CHECK).
    pub ifname: Option<String>,
    /// `CNI_ARGS`, split into `KEY=VALUE` pairs (order kept).
    pub args: Vec<(String, String)>,
    /// `CNI_PATH` (unused: ilanet delegates to no other plugin).
    pub path: Option<String>,
}

impl Env {
    /// The container id; only call for commands that require it.
    pub fn container_id(&self) -> &str {
        self.container_id.as_deref().unwrap_or_default()
    }

    /// The interface name; only call for commands that require it.
    pub fn ifname(&self) -> &str {
        self.ifname.as_deref().unwrap_or_default()
    }

    /// The namespace path, empty when not given.
    pub fn netns(&self) -> &str {
        self.netns.as_deref().unwrap_or_default()
    }

    /// The value of a `CNI_ARGS` key (the last one if given twice).
    pub fn arg(&self, key: &str) -> Option<&str> {
        self.args
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one variable: absent and empty are the same (as in libcni); not UTF-8 is an error.
fn var(get: &dyn Fn(&str) -> Option<OsString>, name: &str) -> Result<Option<String>, CniError> {
    match get(name) {
        None => Ok(None),
        Some(v) if v.is_empty() => Ok(None),
        Some(v) => match v.into_string() {
            Ok(s) if s.len() > MAX_ENV_VALUE => Err(CniError::env(
                name,
                format!("longer than {MAX_ENV_VALUE} bytes"),
            )),
            Ok(s) => Ok(Some(s)),
            Err(_) => Err(CniError::env(name, "not valid UTF-8")),
        },
    }
}

/// Checks a container id: `[A-Za-z0-9][A-Za-z0-9_.-]*` (the spec's rule).
pub fn validate_container_id(id: &str) -> Result<(), String> {
    let b = id.as_bytes();
    if b.is_empty() {
        return Err("empty".into());
    }
    if b.len() > MAX_CONTAINER_ID {
        return Err(format!("longer than {MAX_CONTAINER_ID} characters"));
    }
    if !b[0].is_ascii_alphanumeric() {
        return Err("must start with a letter or digit".into());
    }
    if !b
        .iter()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
    {
        return Err("only letters, digits, '_', '.' and '-' are allowed".into());
    }
    Ok(())
}

/// Checks an interface name as Linux (and libcni) do: 1–15 bytes, not `.` or `..`, no `/`,
/// `:` or whitespace.
pub fn validate_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty".into());
    }
    if name.len() > 15 {
        return Err("longer than 15 bytes".into());
    }
    if name == "." || name == ".." {
        return Err("must not be . or ..".into());
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        return Err("must not contain '/', ':' or whitespace".into());
    }
    Ok(())
}

/// Splits `CNI_ARGS` (`K=V;K2=V2`): each item is split at its first `=` (values may contain
/// `=`, as podman's `ILANET_LABELS=app=web` does); empty items are skipped.
pub fn parse_cni_args(s: &str) -> Result<Vec<(String, String)>, CniError> {
    let mut out = Vec::new();
    for item in s.split(';').filter(|i| !i.is_empty()) {
        let (k, v) = item.split_once('=').ok_or_else(|| {
            CniError::env(
                "CNI_ARGS",
                format!(
                    "item {:?} is not KEY=VALUE",
                    crate::error::truncate(item, 80)
                ),
            )
        })?;
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

/// Reads and validates the environment for the command it names. `get` looks a variable up
/// (`std::env::var_os` in the binary, a map in tests).
pub fn parse_env(get: &dyn Fn(&str) -> Option<OsString>) -> Result<Env, CniError> {
    let command = match var(get, "CNI_COMMAND")? {
        None => return Err(CniError::env("CNI_COMMAND", "missing")),
        Some(c) => Command::parse(&c).ok_or_else(|| {
            CniError::env(
                "CNI_COMMAND",
                format!(
                    "unknown command {:?} (ADD, DEL, CHECK, VERSION, STATUS or GC)",
                    crate::error::truncate(&c, 40)
                ),
            )
        })?,
    };
    let attachment = matches!(command, Command::Add | Command::Del | Command::Check);
    let needs_netns = matches!(command, Command::Add | Command::Check);

    let mut missing = Vec::new();
    let container_id = if attachment {
        let v = var(get, "CNI_CONTAINERID")?;
        if v.is_none() {
            missing.push("CNI_CONTAINERID");
        }
        v
    } else {
        None
    };
    let netns = if attachment {
        let v = var(get, "CNI_NETNS")?;
        if v.is_none() && needs_netns {
            missing.push("CNI_NETNS");
        }
        v
    } else {
        None
    };
    let ifname = if attachment {
        let v = var(get, "CNI_IFNAME")?;
        if v.is_none() {
            missing.push("CNI_IFNAME");
        }
        v
    } else {
        None
    };
    if !missing.is_empty() {
        return Err(CniError::new(
            code::INVALID_ENV,
            format!(
                "required environment variables missing for {}: {}",
                command.as_str(),
                missing.join(", ")
            ),
            "",
        ));
    }
    if let Some(id) = &container_id {
        validate_container_id(id).map_err(|e| CniError::env("CNI_CONTAINERID", e))?;
    }
    if let Some(name) = &ifname {
        validate_ifname(name).map_err(|e| CniError::env("CNI_IFNAME", e))?;
    }
    if let Some(ns) = &netns {
        if needs_netns && !ns.starts_with('/') {
            return Err(CniError::env(
                "CNI_NETNS",
                "must be the absolute path of a network namespace",
            ));
        }
    }
    let args = if attachment {
        match var(get, "CNI_ARGS")? {
            Some(a) => parse_cni_args(&a)?,
            None => Vec::new(),
        }
    } else {
        Vec::new()
    };
    let path = var(get, "CNI_PATH")?;
    Ok(Env {
        command,
        container_id,
        netns,
        ifname,
        args,
        path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Result<Env, CniError> {
        let m: HashMap<String, OsString> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        parse_env(&|k| m.get(k).cloned())
    }

    #[test]
    fn add_needs_id_netns_ifname_and_names_the_missing_ones() {
        let e = env(&[("CNI_COMMAND", "ADD")]).expect_err("missing");
        assert_eq!(e.code, code::INVALID_ENV);
        for v in ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"] {
            assert!(e.msg.contains(v), "{e}");
        }
        let ok = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc123"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
            (
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAME=search-1;ILANET_LABELS=app=web,tier=db",
            ),
        ])
        .expect("valid");
        assert_eq!(ok.arg("K8S_POD_NAME"), Some("search-1"));
        assert_eq!(ok.arg("ILANET_LABELS"), Some("app=web,tier=db"));
    }

    #[test]
    fn del_does_not_need_netns_and_version_needs_nothing() {
        let e = env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth0"),
        ])
        .expect("valid");
        assert_eq!(e.netns, None);
        // podman sends dummies with VERSION; they are not looked at.
        let v = env(&[
            ("CNI_COMMAND", "VERSION"),
            ("CNI_IFNAME", "dummy"),
            ("CNI_NETNS", "dummy"),
        ])
        .expect("valid");
        assert_eq!(v.command, Command::Version);
        assert!(env(&[("CNI_COMMAND", "GC")]).is_ok());
        assert!(env(&[("CNI_COMMAND", "STATUS")]).is_ok());
    }

    #[test]
    fn bad_values_name_the_variable() {
        let base = [("CNI_COMMAND", "ADD"), ("CNI_NETNS", "/run/netns/x")];
        let mut bad = base.to_vec();
        bad.extend([("CNI_CONTAINERID", "-x"), ("CNI_IFNAME", "eth0")]);
        assert!(env(&bad).expect_err("id").msg.contains("CNI_CONTAINERID"));
        let mut bad = base.to_vec();
        bad.extend([("CNI_CONTAINERID", "x"), ("CNI_IFNAME", "a/b")]);
        assert!(env(&bad).expect_err("if").msg.contains("CNI_IFNAME"));
        let mut bad = base.to_vec();
        bad.extend([
            ("CNI_CONTAINERID", "x"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "novalue"),
        ]);
        assert!(env(&bad).expect_err("args").msg.contains("CNI_ARGS"));
        let e = env(&[("CNI_COMMAND", "FROB")]).expect_err("cmd");
        assert!(e.msg.contains("CNI_COMMAND"), "{e}");
        let e = env(&[
            ("CNI_COMMAND", "CHECK"),
            ("CNI_CONTAINERID", "x"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", "relative"),
        ])
        .expect_err("netns");
        assert!(e.msg.contains("CNI_NETNS"), "{e}");
    }

    #[test]
    fn non_utf8_is_refused_by_name() {
        use std::os::unix::ffi::OsStringExt;
        let e = parse_env(&|k| match k {
            "CNI_COMMAND" => Some(OsString::from_vec(vec![0xff, 0xfe])),
            _ => None,
        })
        .expect_err("non-utf8");
        assert!(e.msg.contains("CNI_COMMAND"), "{e}");
    }

    #[test]
    fn interface_names_follow_linux_rules() {
        assert!(validate_ifname("eth0").is_ok());
        assert!(validate_ifname("0123456789abcde").is_ok());
        assert!(validate_ifname("0123456789abcdef").is_err());
        assert!(validate_ifname("..").is_err());
        assert!(validate_ifname("a b").is_err());
        assert!(validate_ifname("a:b").is_err());
    }
}
