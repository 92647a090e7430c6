//! The agent's local API: one JSON object per line over a unix socket (mode 0600), one response
//! line per request. Small on purpose: the CLI, the CNI plugin and the dashboard all speak it.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::Ipv6Addr;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::reconcile::LocalEndpoint;
use crate::ErrorKind;

/// A request to the agent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// The agent's state.
    Status,
    /// Create an endpoint on this host.
    EndpointAdd {
        /// Name, unique in the network.
        name: String,
        /// Tenant network (default: the host's first).
        #[serde(default)]
        tenant: Option<String>,
        /// Use this identifier instead of allocating one (a move, or a planned address).
        #[serde(default)]
        identifier: Option<ila::Identifier>,
        /// Overwrite an existing mapping of that address (a move from another host).
        #[serde(default)]
        replace: bool,
        /// Labels.
        #[serde(default)]
        labels: BTreeMap<String, String>,
    },
    /// Remove an endpoint of this host.
    EndpointDel {
        /// Name.
        name: String,
        /// Leave the mapping in the store (the endpoint is moving; the new host overwrites it).
        #[serde(default)]
        keep_mapping: bool,
    },
    /// This host's endpoints.
    EndpointList,
    /// Every mapping the agent knows, with what its maps hold.
    Mappings,
    /// Store policies (all of one file: on failure none of them stays applied).
    PolicyApply {
        /// One record per policy (see `policy_sync::records_for_file`).
        records: Vec<store::PolicyRecord>,
    },
    /// Remove a policy.
    PolicyDelete {
        /// Policy name.
        name: String,
    },
    /// Policies in force.
    PolicyList,
    /// Attach a container that a runtime created (the CNI plugin's ADD): veth, SIR address,
    /// routes, identity from the labels, programs, mapping. Nothing stays if it fails.
    CniAdd {
        /// The runtime's container id (`CNI_CONTAINERID`).
        container_id: String,
        /// Path of the container's network namespace (`CNI_NETNS`).
        netns: String,
        /// Interface to create inside it (`CNI_IFNAME`).
        ifname: String,
        /// Tenant network (default: the host's first).
        #[serde(default)]
        tenant: Option<String>,
        /// Labels (they decide the policy identity).
        #[serde(default)]
        labels: BTreeMap<String, String>,
    },
    /// Detach a container (the CNI plugin's DEL). Idempotent; works when the container's
    /// namespace is already gone.
    CniDel {
        /// The runtime's container id.
        container_id: String,
        /// Interface name inside the container.
        ifname: String,
    },
    /// Verify an attachment (the CNI plugin's CHECK): interface, address, routes and mapping.
    CniCheck {
        /// The runtime's container id.
        container_id: String,
        /// Interface name inside the container.
        ifname: String,
        /// Path of the container's network namespace.
        netns: String,
    },
    /// Remove every CNI attachment of this host that is not listed (the CNI plugin's GC).
    CniGc {
        /// The attachments to keep (`cni.dev/valid-attachments`).
        valid: Vec<CniAttachmentId>,
    },
    /// The BGP speaker's state: sessions, prefixes, kernel routes.
    BgpStatus,
    /// The best BGP routes and the kernel route installed for each.
    BgpRoutes,
    /// The verdict for a packet and the rule that gave it.
    PolicyExplain {
        /// Source: endpoint name or IPv6 address.
        from: String,
        /// Destination: endpoint name or IPv6 address.
        to: String,
        /// Destination port.
        port: u16,
        /// `tcp`, `udp`, `icmpv6` or a protocol number.
        proto: String,
    },
    /// EVPN mode: create an endpoint with the address its tenant gave it (tenants may reuse
    /// addresses; the VNI keeps them apart), bridged into the tenant's segment and announced as
    /// a Type-2 route.
    EvpnEndpointAdd {
        /// Name, unique on this host.
        name: String,
        /// Tenant network (default: the host's first).
        #[serde(default)]
        tenant: Option<String>,
        /// The endpoint's address (inside its tenant's prefix).
        addr: std::net::Ipv6Addr,
        /// MAC of its interface (`02:…`; default: derived from host, tenant and address).
        #[serde(default)]
        mac: Option<String>,
    },
    /// EVPN mode: endpoints, announced and learned routes and the installed FDB, flood-list and
    /// neighbour entries.
    EvpnState,
}

/// Most labels in one request (`endpoint_add`, `cni_add`): as many as a selector may name.
pub const MAX_REQUEST_LABELS: usize = policy::MAX_LABELS_PER_SELECTOR;
/// Longest string field of a request (names, ids, paths, label keys and values), bytes.
/// Policy documents are bounded by the line and by the policy parser instead.
pub const MAX_REQUEST_FIELD: usize = 4096;
/// Most policy records in one `policy_apply` (one file's policies).
pub const MAX_REQUEST_POLICIES: usize = policy::MAX_POLICIES_PER_FILE;
/// Most attachments in one `cni_gc` (what the CNI plugin forwards at most).
pub const MAX_REQUEST_ATTACHMENTS: usize = 100_000;

/// Decodes one request line (without its newline) and checks its bounds: every string field
/// at most [`MAX_REQUEST_FIELD`] bytes, at most [`MAX_REQUEST_LABELS`] labels,
/// [`MAX_REQUEST_POLICIES`] policy records and [`MAX_REQUEST_ATTACHMENTS`] attachments. The
/// error names the field and the limit. (Nesting is bounded by serde_json's recursion limit,
/// the line by the server's `MAX_LINE`.)
pub fn decode_request(line: &[u8]) -> Result<Request, String> {
    let req: Request = serde_json::from_slice(line).map_err(|e| e.to_string())?;
    check_bounds(&req)?;
    Ok(req)
}

fn check_field(field: &str, value: &str) -> Result<(), String> {
    if value.len() > MAX_REQUEST_FIELD {
        return Err(format!(
            "{field}: {} bytes; at most {MAX_REQUEST_FIELD} are allowed (limit MAX_REQUEST_FIELD)",
            value.len()
        ));
    }
    Ok(())
}

fn check_labels(labels: &BTreeMap<String, String>) -> Result<(), String> {
    if labels.len() > MAX_REQUEST_LABELS {
        return Err(format!(
            "labels: {} labels; at most {MAX_REQUEST_LABELS} are allowed (limit MAX_REQUEST_LABELS)",
            labels.len()
        ));
    }
    for (k, v) in labels {
        check_field("labels (key)", k)?;
        check_field(
            &format!("labels.{}", k.chars().take(64).collect::<String>()),
            v,
        )?;
    }
    Ok(())
}

fn check_bounds(req: &Request) -> Result<(), String> {
    match req {
        Request::Status
        | Request::EndpointList
        | Request::Mappings
        | Request::PolicyList
        | Request::BgpStatus
        | Request::BgpRoutes
        | Request::EvpnState => Ok(()),
        Request::EvpnEndpointAdd {
            name, tenant, mac, ..
        } => {
            check_field("name", name)?;
            check_field("tenant", tenant.as_deref().unwrap_or_default())?;
            check_field("mac", mac.as_deref().unwrap_or_default())
        }
        Request::EndpointAdd {
            name,
            tenant,
            labels,
            ..
        } => {
            check_field("name", name)?;
            check_field("tenant", tenant.as_deref().unwrap_or_default())?;
            check_labels(labels)
        }
        Request::EndpointDel { name, .. } | Request::PolicyDelete { name } => {
            check_field("name", name)
        }
        Request::PolicyApply { records } => {
            if records.len() > MAX_REQUEST_POLICIES {
                return Err(format!(
                    "records: {} policies; at most {MAX_REQUEST_POLICIES} are allowed (limit MAX_REQUEST_POLICIES)",
                    records.len()
                ));
            }
            for (i, r) in records.iter().enumerate() {
                check_field(&format!("records[{i}].name"), &r.name)?;
            }
            Ok(())
        }
        Request::CniAdd {
            container_id,
            netns,
            ifname,
            tenant,
            labels,
        } => {
            check_field("container_id", container_id)?;
            check_field("netns", netns)?;
            check_field("ifname", ifname)?;
            check_field("tenant", tenant.as_deref().unwrap_or_default())?;
            check_labels(labels)
        }
        Request::CniDel {
            container_id,
            ifname,
        } => {
            check_field("container_id", container_id)?;
            check_field("ifname", ifname)
        }
        Request::CniCheck {
            container_id,
            ifname,
            netns,
        } => {
            check_field("container_id", container_id)?;
            check_field("ifname", ifname)?;
            check_field("netns", netns)
        }
        Request::CniGc { valid } => {
            if valid.len() > MAX_REQUEST_ATTACHMENTS {
                return Err(format!(
                    "valid: {} attachments; at most {MAX_REQUEST_ATTACHMENTS} are allowed (limit MAX_REQUEST_ATTACHMENTS)",
                    valid.len()
                ));
            }
            for (i, a) in valid.iter().enumerate() {
                check_field(&format!("valid[{i}].containerID"), &a.container_id)?;
                check_field(&format!("valid[{i}].ifname"), &a.ifname)?;
            }
            Ok(())
        }
        Request::PolicyExplain {
            from, to, proto, ..
        } => {
            check_field("from", from)?;
            check_field("to", to)?;
            check_field("proto", proto)
        }
    }
}

/// Names one CNI attachment: a container's interface.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(deny_unknown_fields)]
pub struct CniAttachmentId {
    /// The runtime's container id.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// Interface name inside the container.
    pub ifname: String,
}

/// Reply of [`Request::CniAdd`] and [`Request::CniCheck`]: what a CNI result reports.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CniAttachment {
    /// The endpoint the agent made for it (its name in the network).
    pub endpoint: String,
    /// The container's interface and its MAC.
    pub ifname: String,
    /// MAC of the container's interface.
    pub mac: String,
    /// The host-side veth and its MAC.
    pub host_ifname: String,
    /// MAC of the host-side veth.
    pub host_mac: String,
    /// The container's network namespace path.
    pub netns: String,
    /// The container's SIR address (configured as a /128).
    pub address: Ipv6Addr,
    /// The gateway of its default route (link-local on the host-side veth).
    pub gateway: Ipv6Addr,
    /// Tenant network name.
    pub tenant: String,
    /// The tenant's SIR prefix (reachable through the gateway).
    pub sir_prefix: String,
    /// Policy identity of its labels.
    pub identity: u32,
}

/// Reply of [`Request::CniGc`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CniGcReply {
    /// Attachments removed.
    pub removed: Vec<CniAttachmentId>,
}

/// One row of [`Request::PolicyList`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PolicyRow {
    /// Policy name.
    pub name: String,
    /// Tenant VNID.
    pub tenant: u32,
    /// Number of specs.
    pub specs: usize,
}

/// Reply of [`Request::PolicyExplain`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExplainReply {
    /// `allow` or `deny`.
    pub verdict: String,
    /// The deciding rule, if a rule decided.
    pub rule: Option<String>,
    /// Why, in one sentence.
    pub reason: String,
    /// Source and destination as resolved (identity, tenant or address).
    pub from: String,
    /// See `from`.
    pub to: String,
}

/// A response line: either `{"ok": <data>}` or `{"error": {"kind": ..., "message": ...}}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    /// Success.
    Ok(serde_json::Value),
    /// Failure, with its kind and a message that names what is wrong.
    Error(ApiError),
}

impl Response {
    /// A failure of this kind.
    pub fn error(kind: ErrorKind, message: impl Into<String>) -> Self {
        Response::Error(ApiError {
            kind,
            message: message.into(),
        })
    }
}

/// An error as the API carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "ErrorWire")]
pub struct ApiError {
    /// What a client can act on.
    pub kind: ErrorKind,
    /// What is wrong, naming the field or thing.
    pub message: String,
}

/// An error on the wire: typed, or a bare message (from an agent older than error kinds).
#[derive(Deserialize)]
#[serde(untagged)]
enum ErrorWire {
    Typed { kind: ErrorKind, message: String },
    Message(String),
}

impl From<ErrorWire> for ApiError {
    fn from(w: ErrorWire) -> Self {
        match w {
            ErrorWire::Typed { kind, message } => ApiError { kind, message },
            ErrorWire::Message(message) => ApiError {
                kind: ErrorKind::Internal,
                message,
            },
        }
    }
}

/// One row of [`Request::Mappings`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MappingRow {
    /// Endpoint name.
    pub endpoint: String,
    /// Host that runs it.
    pub host: String,
    /// SIR address.
    pub sir_addr: Ipv6Addr,
    /// Locator of its host.
    pub locator: String,
    /// ILA address on the wire.
    pub ila_addr: Option<Ipv6Addr>,
    /// Checksum mode.
    pub mode: String,
    /// Whether this host's out-map holds exactly this mapping.
    pub installed: bool,
}

/// Reply of [`Request::Status`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentStatus {
    /// Host name.
    pub host: String,
    /// Locator prefix.
    pub locator: String,
    /// Store backend and address.
    pub store: String,
    /// Whether the store session is up.
    pub store_connected: bool,
    /// Last error talking to the store, if the session is down.
    pub store_error: Option<String>,
    /// Current lease id.
    pub lease: Option<i64>,
    /// Store revision the maps reflect.
    pub revision: i64,
    /// Mappings in the agent's view of the store.
    pub mappings: usize,
    /// Local endpoints.
    pub endpoints: usize,
    /// Entries in the out-map.
    pub out_entries: usize,
    /// Entries in the in-map.
    pub in_entries: usize,
    /// Full resyncs done (mark and sweep).
    pub resyncs: u64,
    /// Data path counters.
    pub counters: Option<dataplane::Counters>,
    /// Tenant networks this host serves (the first is the default).
    #[serde(default)]
    pub tenants: Vec<ila::TenantNetwork>,
}

/// A client error: the agent is unreachable or answered with an error.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Cannot talk to the agent.
    #[error("agent at {socket}: {reason}")]
    Unreachable {
        /// Socket path.
        socket: String,
        /// Why.
        reason: String,
    },
    /// The agent refused the request.
    #[error("{message}")]
    Refused {
        /// What kind of failure.
        kind: ErrorKind,
        /// The agent's message.
        message: String,
    },
}

/// Sends one request and waits for its response (blocking; used by the CLI).
pub fn call(
    socket: &Path,
    req: &Request,
    timeout: Duration,
) -> Result<serde_json::Value, ClientError> {
    let unreachable = |reason: String| ClientError::Unreachable {
        socket: socket.display().to_string(),
        reason,
    };
    let mut stream = UnixStream::connect(socket).map_err(|e| unreachable(e.to_string()))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| unreachable(e.to_string()))?;
    let mut line = serde_json::to_vec(req).map_err(|e| unreachable(e.to_string()))?;
    line.push(b'\n');
    stream
        .write_all(&line)
        .map_err(|e| unreachable(e.to_string()))?;
    let mut reply = String::new();
    BufReader::new(&stream)
        .read_line(&mut reply)
        .map_err(|e| unreachable(format!("no reply: {e}")))?;
    match serde_json::from_str::<Response>(&reply) {
        Ok(Response::Ok(v)) => Ok(v),
        Ok(Response::Error(e)) => Err(ClientError::Refused {
            kind: e.kind,
            message: e.message,
        }),
        Err(e) => Err(unreachable(format!("unreadable reply {reply:?}: {e}"))),
    }
}

/// Typed view of [`Request::EndpointList`] replies.
pub type EndpointList = Vec<LocalEndpoint>;

/// How long a client waits for a reply by default (a policy file of 100,000 rules compiles in
/// seconds; an endpoint with a store round trip in milliseconds).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// A typed client of one agent's API (blocking): what the CLI, the CNI plugin and the lab use.
#[derive(Debug, Clone)]
pub struct Client {
    socket: std::path::PathBuf,
    timeout: Duration,
}

impl Client {
    /// A client of the agent listening on `socket`.
    pub fn new(socket: impl Into<std::path::PathBuf>) -> Self {
        Client {
            socket: socket.into(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Waits this long for each reply.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The agent's socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sends a request and decodes its reply as `T`.
    pub fn request<T: serde::de::DeserializeOwned>(&self, req: &Request) -> Result<T, ClientError> {
        let v = call(&self.socket, req, self.timeout)?;
        serde_json::from_value(v).map_err(|e| ClientError::Unreachable {
            socket: self.socket.display().to_string(),
            reason: format!("unreadable reply: {e}"),
        })
    }

    /// The agent's state.
    pub fn status(&self) -> Result<AgentStatus, ClientError> {
        self.request(&Request::Status)
    }

    /// Creates an endpoint.
    pub fn endpoint_add(
        &self,
        name: &str,
        tenant: Option<&str>,
        identifier: Option<ila::Identifier>,
        replace: bool,
        labels: BTreeMap<String, String>,
    ) -> Result<LocalEndpoint, ClientError> {
        self.request(&Request::EndpointAdd {
            name: name.to_string(),
            tenant: tenant.map(str::to_string),
            identifier,
            replace,
            labels,
        })
    }

    /// Removes an endpoint (with `keep_mapping`: it is moving).
    pub fn endpoint_del(&self, name: &str, keep_mapping: bool) -> Result<(), ClientError> {
        self.request(&Request::EndpointDel {
            name: name.to_string(),
            keep_mapping,
        })
    }

    /// This host's endpoints.
    pub fn endpoints(&self) -> Result<EndpointList, ClientError> {
        self.request(&Request::EndpointList)
    }

    /// Every mapping the agent knows.
    pub fn mappings(&self) -> Result<Vec<MappingRow>, ClientError> {
        self.request(&Request::Mappings)
    }

    /// Stores the policies of one file (all or none); the names applied.
    pub fn policy_apply(
        &self,
        records: Vec<store::PolicyRecord>,
    ) -> Result<Vec<String>, ClientError> {
        self.request(&Request::PolicyApply { records })
    }

    /// Removes a policy.
    pub fn policy_delete(&self, name: &str) -> Result<(), ClientError> {
        self.request(&Request::PolicyDelete {
            name: name.to_string(),
        })
    }

    /// The policies in force.
    pub fn policy_list(&self) -> Result<Vec<PolicyRow>, ClientError> {
        self.request(&Request::PolicyList)
    }

    /// The verdict for a packet.
    pub fn explain(
        &self,
        from: &str,
        to: &str,
        port: u16,
        proto: &str,
    ) -> Result<ExplainReply, ClientError> {
        self.request(&Request::PolicyExplain {
            from: from.to_string(),
            to: to.to_string(),
            port,
            proto: proto.to_string(),
        })
    }

    /// Attaches a runtime's container (CNI ADD).
    pub fn cni_add(
        &self,
        container_id: &str,
        netns: &str,
        ifname: &str,
        tenant: Option<&str>,
        labels: BTreeMap<String, String>,
    ) -> Result<CniAttachment, ClientError> {
        self.request(&Request::CniAdd {
            container_id: container_id.to_string(),
            netns: netns.to_string(),
            ifname: ifname.to_string(),
            tenant: tenant.map(str::to_string),
            labels,
        })
    }

    /// Detaches a container (CNI DEL).
    pub fn cni_del(&self, container_id: &str, ifname: &str) -> Result<(), ClientError> {
        self.request(&Request::CniDel {
            container_id: container_id.to_string(),
            ifname: ifname.to_string(),
        })
    }

    /// Verifies an attachment (CNI CHECK).
    pub fn cni_check(
        &self,
        container_id: &str,
        ifname: &str,
        netns: &str,
    ) -> Result<CniAttachment, ClientError> {
        self.request(&Request::CniCheck {
            container_id: container_id.to_string(),
            ifname: ifname.to_string(),
            netns: netns.to_string(),
        })
    }

    /// The BGP speaker's state.
    pub fn bgp_status(&self) -> Result<crate::routing::BgpStatus, ClientError> {
        self.request(&Request::BgpStatus)
    }

    /// The best BGP routes.
    pub fn bgp_routes(&self) -> Result<Vec<crate::routing::RouteRow>, ClientError> {
        self.request(&Request::BgpRoutes)
    }

    /// Removes every attachment not listed (CNI GC).
    pub fn cni_gc(&self, valid: Vec<CniAttachmentId>) -> Result<CniGcReply, ClientError> {
        self.request(&Request::CniGc { valid })
    }
}

impl ClientError {
    /// The kind of a refusal, or [`ErrorKind::NoStore`]-like unavailability for an agent that
    /// cannot be reached (`None`).
    pub fn kind(&self) -> Option<ErrorKind> {
        match self {
            ClientError::Refused { kind, .. } => Some(*kind),
            ClientError::Unreachable { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_unknown_fields_are_refused() {
        let r = Request::EndpointAdd {
            name: "x".into(),
            tenant: None,
            identifier: None,
            replace: false,
            labels: BTreeMap::new(),
        };
        let s = serde_json::to_string(&r).expect("json");
        assert_eq!(serde_json::from_str::<Request>(&s).expect("parse"), r);
        let err =
            serde_json::from_str::<Request>(r#"{"op":"endpoint_del","name":"x","force":true}"#)
                .expect_err("unknown field");
        assert!(err.to_string().contains("force"), "{err}");
        let err = serde_json::from_str::<Request>(r#"{"op":"reboot"}"#).expect_err("unknown op");
        assert!(err.to_string().contains("reboot"), "{err}");
    }

    #[test]
    fn decode_bounds_name_field_and_limit() {
        let labels: BTreeMap<String, String> = (0..=MAX_REQUEST_LABELS)
            .map(|i| (format!("k{i}"), "v".to_string()))
            .collect();
        let line = serde_json::to_vec(&Request::CniAdd {
            container_id: "c".into(),
            netns: "/run/netns/x".into(),
            ifname: "eth0".into(),
            tenant: None,
            labels,
        })
        .expect("json");
        let e = decode_request(&line).expect_err("too many labels");
        assert!(
            e.contains("labels") && e.contains("MAX_REQUEST_LABELS"),
            "{e}"
        );
        let line = format!(
            r#"{{"op":"endpoint_del","name":"{}"}}"#,
            "x".repeat(MAX_REQUEST_FIELD + 1)
        );
        let e = decode_request(line.as_bytes()).expect_err("long name");
        assert!(e.contains("name") && e.contains("MAX_REQUEST_FIELD"), "{e}");
        assert_eq!(
            decode_request(br#"{"op":"status"}"#).expect("ok"),
            Request::Status
        );
    }

    #[test]
    fn errors_carry_their_kind_and_old_bare_messages_still_decode() {
        let r = Response::error(ErrorKind::NoStore, "store away");
        let s = serde_json::to_string(&r).expect("json");
        assert_eq!(s, r#"{"error":{"kind":"no_store","message":"store away"}}"#);
        match serde_json::from_str::<Response>(&s).expect("parse") {
            Response::Error(e) => assert_eq!(
                (e.kind, e.message.as_str()),
                (ErrorKind::NoStore, "store away")
            ),
            other => panic!("{other:?}"),
        }
        match serde_json::from_str::<Response>(r#"{"error":"old"}"#).expect("parse") {
            Response::Error(e) => {
                assert_eq!((e.kind, e.message.as_str()), (ErrorKind::Internal, "old"))
            }
            other => panic!("{other:?}"),
        }
    }
}
