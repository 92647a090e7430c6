//! Serves [`crate::api`] on the agent's unix socket.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::api::{Request, Response};
use crate::{Agent, AgentError, ErrorKind};

/// Longest request line accepted: most requests are a few hundred bytes, but a policy file
/// with 100,000 rules (the rule-count benchmark) is several megabytes.
pub const MAX_LINE: usize = 64 * 1024 * 1024;
/// Bytes of unfinished requests buffered over all connections at once. Beyond it a request is
/// refused ("busy") instead of growing the agent without bound.
pub const MAX_BUFFERED: usize = 2 * MAX_LINE;
/// Connections served at once; more are answered "busy" and closed, so a flood of idle
/// connections can neither exhaust the agent's file descriptors nor starve its other work.
pub const MAX_CONNECTIONS: usize = 256;
/// A connection that sends nothing for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// A request must arrive whole within this long once its first byte has.
pub const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause after a failed accept (e.g. out of descriptors) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Buffer accounting granularity: one permit per KiB.
const PERMIT_BYTES: usize = 1024;

/// Binds the agent's socket (mode 0600: the API creates namespaces) and serves it forever.
pub async fn serve(agent: Arc<Agent>) -> Result<(), AgentError> {
    let path = agent.config().socket.clone();
    let io = |what: String| move |source| AgentError::Io { what, source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    }
    // A socket file left by a previous run would make bind fail.
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).map_err(io(format!("binding {}", path.display())))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .map_err(io(format!("restricting {}", path.display())))?;
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let buffered = Arc::new(Semaphore::new(MAX_BUFFERED / PERMIT_BYTES));
    loop {
        let mut conn = match listener.accept().await {
            Ok((conn, _)) => conn,
            Err(e) => {
                // Out of descriptors or memory: the connections that hold them end, or time
                // out; the agent and its data path go on.
                log::warn!(
                    "host {}: accepting on {}: {e}",
                    agent.config().host,
                    path.display()
                );
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&connections).try_acquire_owned() else {
            tokio::spawn(async move {
                let _ = reply(
                    &mut conn,
                    &Response::error(
                        ErrorKind::Busy,
                        format!(
                            "agent busy: {MAX_CONNECTIONS} API connections are open; try again"
                        ),
                    ),
                )
                .await;
            });
            continue;
        };
        let agent = Arc::clone(&agent);
        let buffered = Arc::clone(&buffered);
        tokio::spawn(async move {
            if let Err(e) = handle(agent, conn, buffered).await {
                log::debug!("api connection: {e}");
            }
            drop(slot);
        });
    }
}

/// Why a request line could not be read.
enum LineError {
    /// The peer closed or broke the connection, or went idle.
    Closed,
    /// Too long, too slow, or over the shared buffer budget: answered, then closed.
    Refused(ErrorKind, String),
}

/// Reads one request line, holding buffer permits for its bytes (released with the line).
async fn read_line(
    conn: &mut UnixStream,
    pending: &mut Vec<u8>,
    budget: &Arc<Semaphore>,
) -> Result<(Vec<u8>, Vec<OwnedSemaphorePermit>), LineError> {
    let mut permits = Vec::new();
    let mut line = std::mem::take(pending);
    let mut scanned = 0;
    let mut started: Option<tokio::time::Instant> = None;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        if let Some(i) = line[scanned..].iter().position(|b| *b == b'\n') {
            let end = scanned + i;
            *pending = line.split_off(end + 1);
            line.truncate(end);
            return Ok((line, permits));
        }
        scanned = line.len();
        if line.len() > MAX_LINE {
            return Err(LineError::Refused(
                ErrorKind::BadRequest,
                format!("request longer than {MAX_LINE} bytes"),
            ));
        }
        let wait = match started {
            None if line.is_empty() => IDLE_TIMEOUT,
            None => {
                started = Some(tokio::time::Instant::now());
                READ_TIMEOUT
            }
            Some(t) => READ_TIMEOUT.saturating_sub(t.elapsed()),
        };
        let n = match tokio::time::timeout(wait, conn.read(&mut chunk)).await {
            Err(_) if line.is_empty() => return Err(LineError::Closed),
            Err(_) => {
                return Err(LineError::Refused(
                    ErrorKind::BadRequest,
                    format!("request not complete after {READ_TIMEOUT:?}"),
                ))
            }
            Ok(Err(_)) | Ok(Ok(0)) => return Err(LineError::Closed),
            Ok(Ok(n)) => n,
        };
        if started.is_none() {
            started = Some(tokio::time::Instant::now());
        }
        let want = n.div_ceil(PERMIT_BYTES) as u32;
        match Arc::clone(budget).try_acquire_many_owned(want) {
            Ok(p) => permits.push(p),
            Err(_) => {
                return Err(LineError::Refused(
                    ErrorKind::Busy,
                    format!(
                    "agent busy: unfinished requests already hold {MAX_BUFFERED} bytes; try again"
                ),
                ))
            }
        }
        line.extend_from_slice(&chunk[..n]);
    }
}

async fn reply(conn: &mut UnixStream, response: &Response) -> std::io::Result<()> {
    let mut out = serde_json::to_vec(response).unwrap_or_else(|e| {
        let message = format!("cannot encode the response: {e}");
        serde_json::json!({"error": {"kind": "internal", "message": message}})
            .to_string()
            .into_bytes()
    });
    out.push(b'\n');
    conn.write_all(&out).await
}

async fn handle(
    agent: Arc<Agent>,
    mut conn: UnixStream,
    budget: Arc<Semaphore>,
) -> std::io::Result<()> {
    let mut pending = Vec::new();
    loop {
        let (line, permits) = match read_line(&mut conn, &mut pending, &budget).await {
            Ok(l) => l,
            Err(LineError::Closed) => return Ok(()),
            Err(LineError::Refused(kind, msg)) => {
                return reply(&mut conn, &Response::error(kind, msg)).await;
            }
        };
        let parsed = crate::api::decode_request(line.trim_ascii_end());
        drop(line);
        drop(permits);
        let response = match parsed {
            Ok(req) => dispatch(&agent, req).await,
            Err(e) => Response::error(ErrorKind::BadRequest, format!("bad request: {e}")),
        };
        reply(&mut conn, &response).await?;
    }
}

fn ok<T: serde::Serialize>(v: T) -> Response {
    match serde_json::to_value(v) {
        Ok(v) => Response::Ok(v),
        Err(e) => Response::error(
            ErrorKind::Internal,
            format!("cannot encode the response: {e}"),
        ),
    }
}

async fn dispatch(agent: &Arc<Agent>, req: Request) -> Response {
    use crate::metrics::CniVerb;
    let cni = match &req {
        Request::CniAdd { .. } => Some(CniVerb::Add),
        Request::CniDel { .. } => Some(CniVerb::Del),
        Request::CniCheck { .. } => Some(CniVerb::Check),
        Request::CniGc { .. } => Some(CniVerb::Gc),
        _ => None,
    };
    let result = match req {
        Request::Status => Ok(ok(agent.status())),
        Request::EndpointList => Ok(ok(agent.endpoints())),
        Request::Mappings => agent.mappings().map(ok),
        Request::EndpointAdd {
            name,
            tenant,
            identifier,
            replace,
            labels,
        } => agent
            .add_endpoint(&name, tenant.as_deref(), identifier, replace, labels)
            .await
            .map(ok),
        Request::PolicyApply { records } => agent.apply_policies(records).await.map(ok),
        Request::PolicyDelete { name } => agent.delete_policy(&name).await.map(|()| ok(())),
        Request::PolicyList => Ok(ok(agent.policy_list())),
        Request::BgpStatus => agent.routing().map(|r| ok(r.status())),
        Request::BgpRoutes => agent.routing().map(|r| ok(r.routes())),
        Request::PolicyExplain {
            from,
            to,
            port,
            proto,
        } => agent.explain(&from, &to, port, &proto).map(ok),
        Request::CniAdd {
            container_id,
            netns,
            ifname,
            tenant,
            labels,
        } => agent
            .cni_add(&container_id, &netns, &ifname, tenant.as_deref(), labels)
            .await
            .map(ok),
        Request::CniDel {
            container_id,
            ifname,
        } => agent.cni_del(&container_id, &ifname).await.map(|()| ok(())),
        Request::CniCheck {
            container_id,
            ifname,
            netns,
        } => agent
            .cni_check(&container_id, &ifname, &netns)
            .await
            .map(ok),
        Request::CniGc { valid } => agent.cni_gc(&valid).await.map(ok),
        Request::EndpointDel { name, keep_mapping } => agent
            .del_endpoint(&name, keep_mapping)
            .await
            .map(|()| ok(())),
        Request::EvpnEndpointAdd { .. } | Request::EvpnState => Err(AgentError::Invalid(format!(
            "host '{}' runs in ila mode; EVPN requests need an agent in evpn mode",
            agent.config().host
        ))),
    };
    if let Some(verb) = cni {
        let ok = matches!(result, Ok(Response::Ok(_)));
        agent.telemetry().count_cni(verb, ok);
    }
    result.unwrap_or_else(|e| Response::error(e.kind(), e.to_string()))
}
