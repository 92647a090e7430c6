//! `ilanet-cni`: the CNI plugin (spec 1.0.0 and 1.1.0, also 0.4.0) that attaches containers
//! created by a runtime (podman, containerd) to ilanet by asking the host's agent over its unix
//! socket. The runtime creates the network namespace; the agent makes the veth, the SIR
//! address, the routes, the identity from the labels and the mapping; the plugin prints the CNI
//! result.
//!
//! Everything here is pure logic over an injected [`Host`] (environment, stdin, agent calls),
//! so it is tested without root; `src/main.rs` is the thin I/O shell.
//!
//! Commands: ADD, DEL, CHECK, VERSION, STATUS (1.1.0), GC (1.1.0). Error codes (see
//! [`error::code`]):
//!
//! | situation | code |
//! |---|---|
//! | `cniVersion` not supported, or too old for STATUS/GC | 1 |
//! | unknown key in the configuration (`lables`, `ipam`, …) | 2 |
//! | missing or invalid `CNI_*` variable, bad `ILANET_LABELS`, `CNI_NETNS` is our own | 4 |
//! | stdin unreadable or larger than 1 MiB | 5 |
//! | stdin not UTF-8 / not JSON | 6 |
//! | a field with a wrong type or value, a missing required field | 7 |
//! | ADD/CHECK: the agent took the request but did not answer in time; DEL/GC: agent down | 11 |
//! | ADD/CHECK: nobody listens on the socket; STATUS: agent down or its store session down | 50 |
//! | the agent refused (its reason in `details`) | 100 |
//! | CHECK: the attachment differs from `prevResult` | 101 |
//! | the agent's reply is not what the request returns, or names another interface | 102 |

pub mod config;
pub mod env;
pub mod error;
pub mod labels;
pub mod result;

use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

use agent::api::{ClientError, CniAttachment, CniAttachmentId, CniGcReply, Request};
use serde::Deserialize;
use serde_json::Value;

use crate::config::NetConf;
use crate::env::{Command, Env, LATEST_VERSION};
use crate::error::{code, CniError};

/// What reading stdin gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stdin {
    /// The bytes (at most [`config::MAX_STDIN`] + 1: the reader stops there).
    Data(Vec<u8>),
    /// Reading failed.
    Failed(String),
}

/// The plugin's view of the world: its environment, its stdin and the agent.
pub trait Host {
    /// Looks an environment variable up.
    fn env(&self, name: &str) -> Option<OsString>;
    /// Reads stdin (bounded: at most [`config::MAX_STDIN`] + 1 bytes).
    fn read_stdin(&mut self) -> Stdin;
    /// Sends one request to the agent at `socket`.
    fn call(
        &mut self,
        socket: &Path,
        req: &Request,
        timeout: Duration,
    ) -> Result<Value, ClientError>;
    /// Whether `netns` is the plugin's own network namespace (`Err` when it cannot be opened).
    fn is_own_netns(&self, netns: &str) -> Result<bool, String>;
}

/// What to print and how to exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// JSON for stdout (a result or an error object), or empty.
    pub stdout: String,
    /// Lines for stderr (logs for humans).
    pub stderr: Vec<String>,
    /// 0 on success, 1 on failure.
    pub exit_code: i32,
}

/// Usage text for a human who runs the binary without `CNI_COMMAND`.
pub const USAGE: &str = "ilanet-cni: the ilanet CNI plugin, run by container runtimes \
(CNI_COMMAND=ADD|DEL|CHECK|VERSION|STATUS|GC, network configuration on stdin). \
Supported CNI versions: 0.4.0, 1.0.0, 1.1.0.";

/// Runs one invocation.
pub fn run(host: &mut dyn Host) -> Outcome {
    let mut stderr = Vec::new();
    let env = match env::parse_env(&|k| host.env(k)) {
        Ok(e) => e,
        Err(e) => {
            // Not run by a runtime: say what this is rather than wait for stdin.
            let version = if host.env("CNI_COMMAND").is_some_and(|c| !c.is_empty()) {
                match host.read_stdin() {
                    Stdin::Data(d) => config::peek_version(&d),
                    Stdin::Failed(_) => None,
                }
            } else {
                stderr.push(USAGE.to_string());
                None
            };
            return fail(&e, version.as_deref(), "", stderr);
        }
    };
    let stdin = match host.read_stdin() {
        Stdin::Data(d) => d,
        Stdin::Failed(why) => {
            let e = CniError::new(
                code::IO_FAILURE,
                "cannot read the network configuration from stdin",
                why,
            );
            return fail(&e, None, env.command.as_str(), stderr);
        }
    };
    if env.command == Command::Version {
        let out = result::version_result(version_of_input(&stdin).as_deref());
        return Outcome {
            stdout: out.to_string(),
            stderr,
            exit_code: 0,
        };
    }
    let version = config::peek_version(&stdin);
    let conf = match config::parse(&stdin, env.command) {
        Ok(c) => c,
        Err(e) => return fail(&e, version.as_deref(), env.command.as_str(), stderr),
    };
    match dispatch(host, &env, &conf, &mut stderr) {
        Ok(stdout) => Outcome {
            stdout,
            stderr,
            exit_code: 0,
        },
        Err(e) => fail(&e, Some(&conf.cni_version), env.command.as_str(), stderr),
    }
}

/// The `cniVersion` string of a VERSION request, if it looks like a version.
fn version_of_input(stdin: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct V {
        #[serde(rename = "cniVersion")]
        v: String,
    }
    let v: V = serde_json::from_slice(stdin).ok()?;
    let ok = !v.v.is_empty()
        && v.v.len() <= 32
        && v.v
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'+'));
    ok.then_some(v.v)
}

fn fail(e: &CniError, version: Option<&str>, what: &str, mut stderr: Vec<String>) -> Outcome {
    let prefix = if what.is_empty() {
        String::new()
    } else {
        format!("{what}: ")
    };
    stderr.push(format!("{prefix}{e}"));
    Outcome {
        stdout: e.to_json(version.unwrap_or(LATEST_VERSION)).to_string(),
        stderr,
        exit_code: 1,
    }
}

/// Whether an `Unreachable` error happened after the request was sent (the agent may have
/// acted on it). Classified by `agent::api::call`'s wording of read and decode failures.
fn request_was_sent(reason: &str) -> bool {
    reason.starts_with("no reply") || reason.starts_with("unreadable reply")
}

/// Maps an agent client error to a CNI error for `command`.
pub fn agent_error(command: Command, e: ClientError) -> CniError {
    match e {
        ClientError::Refused { message: why, .. } => CniError::new(
            code::AGENT_REFUSED,
            format!("the ilanet agent refused {}", command.as_str()),
            why,
        ),
        ClientError::Unreachable { socket, reason } => {
            let sent = request_was_sent(&reason);
            let details = format!("agent at {socket}: {reason}");
            match command {
                Command::Status => CniError::new(
                    code::PLUGIN_NOT_AVAILABLE,
                    "the ilanet agent is not available",
                    details,
                ),
                Command::Add | Command::Check if !sent => CniError::new(
                    code::PLUGIN_NOT_AVAILABLE,
                    "the ilanet agent is not running (cannot connect to its socket)",
                    details,
                ),
                Command::Add | Command::Check => CniError::new(
                    code::TRY_AGAIN_LATER,
                    "the ilanet agent did not answer in time; try again later",
                    details,
                ),
                // DEL and GC: the agent holds the state, so nothing can be removed without it.
                // An error lets the runtime retry (kubelet does; podman logs it and the agent
                // reaps the attachment once its namespace is gone).
                Command::Del | Command::Gc | Command::Version => CniError::new(
                    code::TRY_AGAIN_LATER,
                    format!(
                        "the ilanet agent is not reachable, {} must be retried",
                        command.as_str()
                    ),
                    details,
                ),
            }
        }
    }
}

fn decode<T: serde::de::DeserializeOwned>(v: Value, what: &str) -> Result<T, CniError> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        CniError::new(
            code::BAD_AGENT_REPLY,
            format!("unexpected reply from the ilanet agent to {what}"),
            e.to_string(),
        )
    })
}

/// The part of the agent's `Status` reply that STATUS needs.
#[derive(Debug, Deserialize)]
struct StatusView {
    host: String,
    store_connected: bool,
    #[serde(default)]
    store_error: Option<String>,
}

fn dispatch(
    host: &mut dyn Host,
    env: &Env,
    conf: &NetConf,
    stderr: &mut Vec<String>,
) -> Result<String, CniError> {
    let cmd = env.command;
    let call = |host: &mut dyn Host, req: Request| {
        host.call(&conf.socket, &req, conf.timeout)
            .map_err(|e| agent_error(cmd, e))
    };
    match cmd {
        Command::Add => {
            match host.is_own_netns(env.netns()) {
                Ok(false) => {}
                Ok(true) => {
                    return Err(CniError::env(
                        "CNI_NETNS",
                        "is the plugin's own network namespace",
                    ))
                }
                Err(e) => return Err(CniError::env("CNI_NETNS", e)),
            }
            let (labels, notes) = labels::collect(conf, env)?;
            stderr.extend(notes);
            let reply = call(
                host,
                Request::CniAdd {
                    container_id: env.container_id().to_string(),
                    netns: env.netns().to_string(),
                    ifname: env.ifname().to_string(),
                    tenant: conf.tenant.clone(),
                    labels,
                },
            )?;
            let att: CniAttachment = decode(reply, "cni_add")?;
            check_same_interface(env, &att)?;
            Ok(result::add_result(&conf.cni_version, &att, conf.prev_result.as_ref()).to_string())
        }
        Command::Del => {
            call(
                host,
                Request::CniDel {
                    container_id: env.container_id().to_string(),
                    ifname: env.ifname().to_string(),
                },
            )?;
            Ok(String::new())
        }
        Command::Check => {
            let prev = conf
                .prev_result
                .as_ref()
                .ok_or_else(|| CniError::config("prevResult", "missing (CHECK needs it)"))?;
            let reply = call(
                host,
                Request::CniCheck {
                    container_id: env.container_id().to_string(),
                    ifname: env.ifname().to_string(),
                    netns: env.netns().to_string(),
                },
            )?;
            let att: CniAttachment = decode(reply, "cni_check")?;
            check_same_interface(env, &att)?;
            result::check_against(prev, &att)?;
            Ok(String::new())
        }
        Command::Status => {
            let reply = call(host, Request::Status)?;
            let st: StatusView = decode(reply, "status")?;
            if !st.store_connected {
                return Err(CniError::new(
                    code::PLUGIN_NOT_AVAILABLE,
                    format!(
                        "the ilanet agent on {} has no store session and cannot publish new containers",
                        st.host
                    ),
                    st.store_error.unwrap_or_default(),
                ));
            }
            Ok(String::new())
        }
        Command::Gc => {
            let valid = conf
                .valid_attachments
                .iter()
                .flatten()
                .map(|a| CniAttachmentId {
                    container_id: a.container_id.clone(),
                    ifname: a.ifname.clone(),
                })
                .collect();
            let reply = call(host, Request::CniGc { valid })?;
            let gc: CniGcReply = decode(reply, "cni_gc")?;
            for r in &gc.removed {
                stderr.push(format!(
                    "GC: removed stale attachment {} {}",
                    r.container_id, r.ifname
                ));
            }
            Ok(String::new())
        }
        Command::Version => Ok(result::version_result(Some(&conf.cni_version)).to_string()),
    }
}

/// The agent must have used the runtime's interface name and namespace.
fn check_same_interface(env: &Env, att: &CniAttachment) -> Result<(), CniError> {
    if att.ifname != env.ifname() {
        return Err(CniError::new(
            code::BAD_AGENT_REPLY,
            format!(
                "the agent attached interface {:?}, not CNI_IFNAME {:?}",
                att.ifname,
                env.ifname()
            ),
            "",
        ));
    }
    if att.netns != env.netns() {
        return Err(CniError::new(
            code::BAD_AGENT_REPLY,
            format!(
                "the agent attached namespace {:?}, not CNI_NETNS {:?}",
                att.netns,
                env.netns()
            ),
            "",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
