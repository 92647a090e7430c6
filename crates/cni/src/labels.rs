//! The container's labels, from every source a runtime can reach the plugin by.
//!
//! Podman 4.3 (containers/common 0.50, CNI backend) does not pass a container's `--label`s to
//! CNI plugins. What it passes is `CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAME=<container name>`
//! followed by the `CNI_ARGS` of podman's own environment, and `runtimeConfig` only for the
//! capabilities `aliases`, `portMappings` and `ips`. So, from lowest to highest priority (a
//! later source overrides a key set by an earlier one):
//!
//! 1. the container name from `CNI_ARGS` `K8S_POD_NAME`, under the key `nameLabel` (default
//!    `name`; skipped with a note on stderr when the name is not a valid label value);
//! 2. the network configuration's `labels` (one network per role or per tenant);
//! 3. `args.cni.labels` (`[{"key","value"}]`, the CNI conventions' way for runtimes that
//!    support it);
//! 4. `CNI_ARGS` `ILANET_LABELS=k=v,k2=v2`: with podman, `CNI_ARGS='ILANET_LABELS=app=web'
//!    podman run --network ilanet …`.
//!
//! Explicit labels (2–4) that are not valid are errors naming their source; reserved keys
//! (`ilanet.io/…`) are refused, so a container cannot claim another tenant.

use std::collections::BTreeMap;

use crate::config::{check_label, NetConf};
use crate::env::Env;
use crate::error::{truncate, CniError};

/// The `CNI_ARGS` key carrying per-container labels.
pub const ARGS_LABELS: &str = "ILANET_LABELS";

/// The `CNI_ARGS` key carrying the container (pod) name.
pub const ARGS_POD_NAME: &str = "K8S_POD_NAME";

/// Parses `k=v,k2=v2` (items trimmed, empty items skipped), validating every label.
pub fn parse_label_list(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (k, v) = item
            .split_once('=')
            .ok_or_else(|| format!("{:?} is not key=value", truncate(item, 80)))?;
        let (k, v) = (k.trim(), v.trim());
        check_label(k, v)?;
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

/// The labels of this attachment, plus notes for stderr about what was skipped.
pub fn collect(
    conf: &NetConf,
    env: &Env,
) -> Result<(BTreeMap<String, String>, Vec<String>), CniError> {
    let mut labels = BTreeMap::new();
    let mut notes = Vec::new();
    if let (Some(key), Some(name)) = (&conf.name_label, env.arg(ARGS_POD_NAME)) {
        match check_label(key, name) {
            Ok(()) => {
                labels.insert(key.clone(), name.to_string());
            }
            Err(e) => notes.push(format!(
                "not labelling the container with its name ({ARGS_POD_NAME}): {e}"
            )),
        }
    }
    labels.extend(conf.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
    labels.extend(conf.args_labels.iter().cloned());
    if let Some(list) = env.arg(ARGS_LABELS) {
        let parsed = parse_label_list(list)
            .map_err(|e| CniError::env("CNI_ARGS", format!("{ARGS_LABELS}: {e}")))?;
        labels.extend(parsed);
    }
    Ok((labels, notes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::Command;

    fn conf(extra: &str) -> NetConf {
        let s = format!(r#"{{"cniVersion":"1.0.0","name":"n","type":"ilanet-cni"{extra}}}"#);
        crate::config::parse(s.as_bytes(), Command::Add).expect("conf")
    }

    fn env(args: &str) -> Env {
        Env {
            command: Command::Add,
            container_id: Some("c1".into()),
            netns: Some("/run/netns/x".into()),
            ifname: Some("eth0".into()),
            args: crate::env::parse_cni_args(args).expect("args"),
            path: None,
        }
    }

    #[test]
    fn sources_in_priority_order() {
        let c = conf(
            r#","labels":{"app":"net","site":"a","name":"static"},
               "args":{"cni":{"labels":[{"key":"tier","value":"conv"}]}}"#,
        );
        let e = env("IgnoreUnknown=1;K8S_POD_NAME=search-1;ILANET_LABELS=app=web, tier=db");
        let (l, notes) = collect(&c, &e).expect("labels");
        let want: BTreeMap<String, String> = [
            ("app", "web"),
            ("name", "static"),
            ("site", "a"),
            ("tier", "db"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(l, want);
        assert!(notes.is_empty());
    }

    #[test]
    fn podman_container_name_becomes_a_label() {
        let (l, _) = collect(&conf(""), &env("IgnoreUnknown=1;K8S_POD_NAME=search-1")).expect("l");
        assert_eq!(l.get("name").map(String::as_str), Some("search-1"));
        let (l, _) = collect(
            &conf(r#","nameLabel":"podman.io/name""#),
            &env("K8S_POD_NAME=x"),
        )
        .expect("l");
        assert_eq!(l.get("podman.io/name").map(String::as_str), Some("x"));
        let (l, _) = collect(&conf(r#","nameLabel":"""#), &env("K8S_POD_NAME=x")).expect("l");
        assert!(l.is_empty());
    }

    #[test]
    fn invalid_name_is_skipped_but_invalid_explicit_labels_fail() {
        let long = "a".repeat(64);
        let (l, notes) = collect(&conf(""), &env(&format!("K8S_POD_NAME={long}"))).expect("l");
        assert!(l.is_empty());
        assert_eq!(notes.len(), 1);
        for bad in [
            "ILANET_LABELS=app",
            "ILANET_LABELS=ilanet.io/tenant=5",
            "ILANET_LABELS=a=b c",
        ] {
            let e = collect(&conf(""), &env(bad)).expect_err(bad);
            assert_eq!(e.code, crate::error::code::INVALID_ENV);
            assert!(
                e.msg.contains("CNI_ARGS") && e.msg.contains("ILANET_LABELS"),
                "{e}"
            );
        }
    }
}
