//! Tests of [`run`] over a fake host: every command, the error mapping, and "never panics".

use std::collections::HashMap;

use proptest::prelude::*;
use serde_json::json;

use super::*;

struct Fake {
    env: HashMap<String, OsString>,
    stdin: Vec<u8>,
    reply: Option<Result<Value, ClientError>>,
    sent: Vec<Request>,
    own_netns: bool,
}

impl Fake {
    fn new(cmd: &str, stdin: &str) -> Self {
        let mut env = HashMap::new();
        for (k, v) in [
            ("CNI_COMMAND", cmd),
            ("CNI_CONTAINERID", "9418753044cb"),
            ("CNI_NETNS", "/run/netns/blue"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/opt/cni/bin"),
            ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=search-1"),
        ] {
            env.insert(k.to_string(), OsString::from(v));
        }
        Self {
            env,
            stdin: stdin.as_bytes().to_vec(),
            reply: None,
            sent: Vec::new(),
            own_netns: false,
        }
    }

    fn reply(mut self, r: Result<Value, ClientError>) -> Self {
        self.reply = Some(r);
        self
    }
}

impl Host for Fake {
    fn env(&self, name: &str) -> Option<OsString> {
        self.env.get(name).cloned()
    }
    fn read_stdin(&mut self) -> Stdin {
        Stdin::Data(self.stdin.clone())
    }
    fn call(&mut self, _: &Path, req: &Request, _: Duration) -> Result<Value, ClientError> {
        self.sent.push(req.clone());
        match self.reply.take() {
            Some(r) => r,
            None => Err(down()),
        }
    }
    fn is_own_netns(&self, _: &str) -> Result<bool, String> {
        Ok(self.own_netns)
    }
}

fn down() -> ClientError {
    ClientError::Unreachable {
        socket: "/run/ilanet/agent.sock".into(),
        reason: "No such file or directory (os error 2)".into(),
    }
}

const CONF: &str = r#"{"cniVersion":"1.1.0","name":"ilanet","type":"ilanet-cni","tenant":"blue","labels":{"site":"a"}}"#;

fn attachment() -> Value {
    json!({
        "endpoint": "cni-9418753044cb", "ifname": "eth0", "mac": "02:00:00:00:00:02",
        "host_ifname": "lxc1a2b3c", "host_mac": "02:00:00:00:00:01", "netns": "/run/netns/blue",
        "address": "fd00:dead:beef::5", "gateway": "fe80::1", "tenant": "blue",
        "sir_prefix": "fd00:dead:beef::/64", "identity": 300
    })
}

fn out_json(o: &Outcome) -> Value {
    serde_json::from_str(&o.stdout).expect("stdout is JSON")
}

#[test]
fn add_sends_labels_and_prints_the_result() {
    let mut f = Fake::new("ADD", CONF).reply(Ok(attachment()));
    f.env.insert(
        "CNI_ARGS".into(),
        "IgnoreUnknown=1;K8S_POD_NAME=search-1;ILANET_LABELS=app=web".into(),
    );
    let o = run(&mut f);
    assert_eq!(o.exit_code, 0, "{o:?}");
    let r = out_json(&o);
    assert_eq!(r["cniVersion"], json!("1.1.0"));
    assert_eq!(r["ips"][0]["address"], json!("fd00:dead:beef::5/128"));
    assert_eq!(r["interfaces"][1]["sandbox"], json!("/run/netns/blue"));
    let Request::CniAdd {
        container_id,
        netns,
        ifname,
        tenant,
        labels,
    } = &f.sent[0]
    else {
        panic!("sent {:?}", f.sent);
    };
    assert_eq!(
        (container_id.as_str(), netns.as_str(), ifname.as_str()),
        ("9418753044cb", "/run/netns/blue", "eth0")
    );
    assert_eq!(tenant.as_deref(), Some("blue"));
    let want: BTreeMap<String, String> = [("app", "web"), ("name", "search-1"), ("site", "a")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(labels, &want);
}

use std::collections::BTreeMap;

#[test]
fn add_error_mapping() {
    // Nobody listening: plugin not available.
    let o = run(&mut Fake::new("ADD", CONF));
    assert_eq!(o.exit_code, 1);
    assert_eq!(out_json(&o)["code"], json!(50));
    assert_eq!(out_json(&o)["cniVersion"], json!("1.1.0"));
    // Sent but no answer: try again later.
    let o = run(
        &mut Fake::new("ADD", CONF).reply(Err(ClientError::Unreachable {
            socket: "s".into(),
            reason: "no reply: Resource temporarily unavailable".into(),
        })),
    );
    assert_eq!(out_json(&o)["code"], json!(11));
    // Refused: the agent's reason in details.
    let o = run(&mut Fake::new("ADD", CONF).reply(Err(ClientError::Refused {
        kind: agent::ErrorKind::BadRequest,
        message: "unknown tenant blue".into(),
    })));
    let e = out_json(&o);
    assert_eq!(e["code"], json!(100));
    assert_eq!(e["details"], json!("unknown tenant blue"));
    // Wrong reply shape.
    let o = run(&mut Fake::new("ADD", CONF).reply(Ok(json!({"endpoint": 1}))));
    assert_eq!(out_json(&o)["code"], json!(102));
    // The agent used another interface name.
    let mut att = attachment();
    att["ifname"] = json!("eth9");
    let o = run(&mut Fake::new("ADD", CONF).reply(Ok(att)));
    assert_eq!(out_json(&o)["code"], json!(102));
    assert!(o.stdout.contains("eth9"), "{}", o.stdout);
    // Own namespace.
    let mut f = Fake::new("ADD", CONF);
    f.own_netns = true;
    let e = out_json(&run(&mut f));
    assert_eq!(e["code"], json!(4));
    assert!(e["msg"].as_str().unwrap_or_default().contains("CNI_NETNS"));
    assert!(f.sent.is_empty());
}

#[test]
fn del_is_quiet_on_success_and_retryable_when_the_agent_is_down() {
    let mut f = Fake::new("DEL", CONF).reply(Ok(Value::Null));
    f.env.remove("CNI_NETNS");
    let o = run(&mut f);
    assert_eq!((o.exit_code, o.stdout.as_str()), (0, ""));
    assert!(matches!(f.sent[0], Request::CniDel { .. }));
    let o = run(&mut Fake::new("DEL", CONF));
    assert_eq!(out_json(&o)["code"], json!(11));
}

#[test]
fn check_compares_with_prev_result() {
    let add = run(&mut Fake::new("ADD", CONF).reply(Ok(attachment())));
    let mut conf: Value = serde_json::from_str(CONF).expect("conf");
    conf["prevResult"] = out_json(&add);
    let conf = conf.to_string();
    let o = run(&mut Fake::new("CHECK", &conf).reply(Ok(attachment())));
    assert_eq!((o.exit_code, o.stdout.as_str()), (0, ""), "{o:?}");
    let mut moved = attachment();
    moved["address"] = json!("fd00:dead:beef::9");
    let o = run(&mut Fake::new("CHECK", &conf).reply(Ok(moved)));
    assert_eq!(out_json(&o)["code"], json!(101));
    let o = run(&mut Fake::new("CHECK", CONF).reply(Ok(attachment())));
    let e = out_json(&o);
    assert_eq!(e["code"], json!(7));
    assert!(e["msg"].as_str().unwrap_or_default().contains("prevResult"));
}

#[test]
fn status_maps_agent_and_store_state() {
    let o = run(&mut Fake::new("STATUS", CONF));
    assert_eq!(out_json(&o)["code"], json!(50));
    let o = run(&mut Fake::new("STATUS", CONF).reply(Ok(json!({
        "host": "site1", "store_connected": false, "store_error": "etcd: connection refused",
        "locator": "2001:db8:1::/64"
    }))));
    let e = out_json(&o);
    assert_eq!(e["code"], json!(50));
    assert_eq!(e["details"], json!("etcd: connection refused"));
    let o = run(&mut Fake::new("STATUS", CONF).reply(Ok(json!({
        "host": "site1", "store_connected": true
    }))));
    assert_eq!((o.exit_code, o.stdout.as_str()), (0, ""));
    // STATUS is a 1.1.0 command.
    let old = CONF.replace("1.1.0", "1.0.0");
    let o = run(&mut Fake::new("STATUS", &old));
    assert_eq!(out_json(&o)["code"], json!(1));
}

#[test]
fn gc_passes_the_valid_attachments() {
    let conf = r#"{"cniVersion":"1.1.0","name":"ilanet","type":"ilanet-cni",
        "cni.dev/valid-attachments":[{"containerID":"a1","ifname":"eth0"}]}"#;
    let mut f = Fake::new("GC", conf).reply(Ok(json!({"removed": [
        {"containerID": "zz", "ifname": "eth0"}
    ]})));
    let o = run(&mut f);
    assert_eq!((o.exit_code, o.stdout.as_str()), (0, ""), "{o:?}");
    assert!(o.stderr.iter().any(|l| l.contains("zz")));
    assert_eq!(
        f.sent,
        vec![Request::CniGc {
            valid: vec![CniAttachmentId {
                container_id: "a1".into(),
                ifname: "eth0".into()
            }]
        }]
    );
    let o = run(&mut Fake::new("GC", conf));
    assert_eq!(out_json(&o)["code"], json!(11));
}

#[test]
fn version_echoes_the_input_version() {
    let o = run(&mut Fake::new("VERSION", r#"{"cniVersion":"1.0.0"}"#));
    assert_eq!(
        out_json(&o),
        json!({"cniVersion":"1.0.0","supportedVersions":["0.4.0","1.0.0","1.1.0"]})
    );
    let o = run(&mut Fake::new("VERSION", ""));
    assert_eq!(out_json(&o)["cniVersion"], json!("1.1.0"));
}

#[test]
fn missing_command_prints_usage_and_error_4() {
    let mut f = Fake::new("ADD", CONF);
    f.env.remove("CNI_COMMAND");
    let o = run(&mut f);
    assert_eq!(out_json(&o)["code"], json!(4));
    assert!(o.stderr[0].contains("ilanet CNI plugin"));
}

#[test]
fn old_0_4_0_results_carry_the_ip_version() {
    let conf = CONF.replace("1.1.0", "0.4.0");
    let o = run(&mut Fake::new("ADD", &conf).reply(Ok(attachment())));
    let r = out_json(&o);
    assert_eq!(r["cniVersion"], json!("0.4.0"));
    assert_eq!(r["ips"][0]["version"], json!("6"));
}

fn env_value() -> impl Strategy<Value = Option<Vec<u8>>> {
    prop_oneof![
        Just(None),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(Some),
        "[A-Z]{0,8}".prop_map(|s| Some(s.into_bytes())),
        "(ADD|DEL|CHECK|VERSION|STATUS|GC)".prop_map(|s| Some(s.into_bytes())),
        "[ -~]{0,40}".prop_map(|s| Some(s.into_bytes())),
    ]
}

fn stdin_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..200),
        "[ -~]{0,200}".prop_map(String::into_bytes),
        // Near-valid configurations with mutated values.
        (
            "(0\\.4\\.0|1\\.0\\.0|1\\.1\\.0|[0-9.]{0,6})",
            "[ -~]{0,12}",
            prop_oneof![
                Just("{}".to_string()),
                Just("[]".to_string()),
                Just("null".to_string()),
                Just("{\"interfaces\":[{\"name\":\"eth0\",\"sandbox\":\"/x\"}],\"ips\":[1]}".to_string()),
                "-?[0-9]{1,20}",
                "\"[ -~]{0,10}\"",
            ]
        )
            .prop_map(|(v, s, any)| {
                json!({
                    "cniVersion": v, "name": s, "type": "ilanet-cni",
                    "labels": {s.clone(): s},
                })
                .to_string()
                .replacen('}', &format!(",\"prevResult\":{any},\"timeoutMs\":{any},\"cni.dev/valid-attachments\":{any}}}"), 1)
                .into_bytes()
            }),
    ]
}

fn os(v: Vec<u8>) -> OsString {
    use std::os::unix::ffi::OsStringExt;
    OsString::from_vec(v)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn never_panics_and_always_prints_json_on_failure(
        cmd in env_value(), id in env_value(), netns in env_value(),
        ifname in env_value(), args in env_value(), stdin in stdin_value(),
        reply in 0u8..5,
    ) {
        let mut env = HashMap::new();
        for (k, v) in [("CNI_COMMAND", cmd), ("CNI_CONTAINERID", id), ("CNI_NETNS", netns),
                       ("CNI_IFNAME", ifname), ("CNI_ARGS", args)] {
            if let Some(v) = v {
                env.insert(k.to_string(), os(v));
            }
        }
        let reply = match reply {
            0 => None,
            1 => Some(Ok(Value::Null)),
            2 => Some(Ok(attachment())),
            3 => Some(Err(ClientError::Refused {
                kind: agent::ErrorKind::Internal,
                message: "no".into(),
            })),
            _ => Some(Ok(json!({"host":"h","store_connected":true,"removed":[]}))),
        };
        let mut f = Fake { env, stdin, reply, sent: Vec::new(), own_netns: false };
        let o = run(&mut f);
        prop_assert!(o.exit_code == 0 || o.exit_code == 1);
        if o.exit_code == 1 {
            let v: Value = serde_json::from_str(&o.stdout).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(v["code"].is_u64());
            prop_assert!(v["msg"].is_string());
            prop_assert!(v["cniVersion"].is_string());
        } else if !o.stdout.is_empty() {
            let v: Result<Value, _> = serde_json::from_str(&o.stdout);
            prop_assert!(v.is_ok());
        }
    }
}
