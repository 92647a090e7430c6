//! Serves [`crate::api`] on the agent's unix socket.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::api::{Request, Response};
use crate::{Agent, AgentError};

/// Longest request line accepted: most requests are a few hundred bytes, but a policy file
/// with 100,000 rules (the rule-count benchmark) is several megabytes.
const MAX_LINE: usize = 64 * 1024 * 1024;

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
    loop {
        let (conn, _) = listener
            .accept()
            .await
            .map_err(io(format!("accepting on {}", path.display())))?;
        let agent = Arc::clone(&agent);
        tokio::spawn(async move {
            if let Err(e) = handle(agent, conn).await {
                log::debug!("api connection: {e}");
            }
        });
    }
}

async fn handle(agent: Arc<Agent>, conn: UnixStream) -> std::io::Result<()> {
    let (read, mut write) = conn.into_split();
    let mut lines = BufReader::new(read);
    let mut line = String::new();
    loop {
        line.clear();
        let n = (&mut lines)
            .take(MAX_LINE as u64 + 1)
            .read_line(&mut line)
            .await?;
        if n == 0 {
            return Ok(());
        }
        let response = if n > MAX_LINE {
            Response::Error(format!("request longer than {MAX_LINE} bytes"))
        } else {
            match serde_json::from_str::<Request>(line.trim_end()) {
                Ok(req) => dispatch(&agent, req).await,
                Err(e) => Response::Error(format!("bad request: {e}")),
            }
        };
        let mut out = serde_json::to_vec(&response).unwrap_or_else(|e| {
            format!("{{\"error\":\"cannot encode the response: {e}\"}}").into_bytes()
        });
        out.push(b'\n');
        write.write_all(&out).await?;
        if n > MAX_LINE {
            return Ok(());
        }
    }
}

fn ok<T: serde::Serialize>(v: T) -> Response {
    match serde_json::to_value(v) {
        Ok(v) => Response::Ok(v),
        Err(e) => Response::Error(format!("cannot encode the response: {e}")),
    }
}

async fn dispatch(agent: &Arc<Agent>, req: Request) -> Response {
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
        Request::PolicyExplain {
            from,
            to,
            port,
            proto,
        } => agent.explain(&from, &to, port, &proto).map(ok),
        Request::EndpointDel { name, keep_mapping } => agent
            .del_endpoint(&name, keep_mapping)
            .await
            .map(|()| ok(())),
    };
    result.unwrap_or_else(|e| Response::Error(e.to_string()))
}
