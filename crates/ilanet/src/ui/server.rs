//! The HTTP side: token check, embedded assets, the live state feed and terminals over
//! WebSockets.

use std::io::Write as _;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Body;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Deserialize;
use tokio::io::unix::AsyncFd;
use tokio::sync::{watch, Semaphore};

use super::auth::{Origins, Token};
use super::pty;

mod assets {
    include!(concat!(env!("OUT_DIR"), "/ui_assets.rs"));
}

/// Most terminals open at once (each is a root shell and a process tree).
pub const MAX_TERMINALS: usize = 8;
/// Most WebSockets (live feeds + terminals) open at once.
pub const MAX_SOCKETS: usize = 32;
/// Largest WebSocket message accepted (keystrokes and pastes; a paste larger is refused).
pub const MAX_WS_MESSAGE: usize = 64 * 1024;
/// Largest request body (the API takes none; anything larger is refused).
pub const MAX_BODY: usize = 16 * 1024;

/// Shared by every request.
pub struct App {
    /// The secret.
    pub token: Token,
    /// Who we answer as.
    pub origins: Origins,
    /// Terminals off.
    pub read_only: bool,
    /// Idle terminals close after this.
    pub idle_timeout: Duration,
    /// The latest state as JSON (snapshot, flows, verdicts), replaced by the collector.
    pub live: watch::Receiver<Arc<LiveJson>>,
    /// Terminal permits.
    pub terminals: Arc<Semaphore>,
    /// WebSocket permits.
    pub sockets: Arc<Semaphore>,
    /// Terminal session log (append).
    pub session_log: Mutex<Option<std::fs::File>>,
    /// Next terminal session number.
    pub next_session: AtomicU64,
}

/// The state feed's current value.
pub struct LiveJson {
    /// `{"snapshot": …, "flows": […], "verdicts": […]}`.
    pub json: String,
    /// Containers that terminals may open: name → how to enter it.
    pub targets: Vec<(String, String, Option<String>)>,
}

/// The router with every route and the token check in front.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/api/state", get(state))
        .route("/api/live", get(live_ws))
        .route("/api/term/{container}", get(term_ws))
        .route("/{*path}", get(asset))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn_with_state(app.clone(), guard))
        .with_state(app)
}

fn plain(status: StatusCode, text: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{text}\n"),
    )
        .into_response()
}

fn header_str(h: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// Every request: the `Host` must name this server, then the token (in the query on `/`, once,
/// turned into the cookie) or the cookie must be there.
async fn guard(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let headers = req.headers();
    if !app.origins.host_ok(header_str(headers, header::HOST)) {
        return plain(StatusCode::FORBIDDEN, "403: unknown Host");
    }
    if req.uri().path() == "/" && req.uri().query().is_some_and(|q| app.token.in_query(q)) {
        // The token leaves the URL (and the history) for a cookie scripts cannot read.
        let mut resp = Response::new(Body::empty());
        *resp.status_mut() = StatusCode::SEE_OTHER;
        resp.headers_mut()
            .insert(header::LOCATION, HeaderValue::from_static("/"));
        if let Ok(v) = HeaderValue::from_str(&app.token.set_cookie()) {
            resp.headers_mut().insert(header::SET_COOKIE, v);
        }
        return resp;
    }
    let cookie_ok = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|c| app.token.in_cookie_header(c));
    if !cookie_ok {
        return plain(
            StatusCode::UNAUTHORIZED,
            "401: open the URL with ?token=… that `ilanet ui` printed",
        );
    }
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; connect-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn serve_asset(path: &str) -> Response {
    match assets::ASSETS.iter().find(|(p, _, _)| *p == path) {
        Some((_, bytes, ctype)) => ([(header::CONTENT_TYPE, *ctype)], *bytes).into_response(),
        None => plain(StatusCode::NOT_FOUND, "404: no such file"),
    }
}

async fn index() -> Response {
    serve_asset("/index.html")
}

async fn asset(Path(path): Path<String>) -> Response {
    serve_asset(&format!("/{path}"))
}

async fn state(State(app): State<Arc<App>>) -> Response {
    let json = app.live.borrow().json.clone();
    ([(header::CONTENT_TYPE, "application/json")], json).into_response()
}

/// A WebSocket upgrade must come from a page this server served (cross-site WebSocket
/// hijacking: browsers send cookies with cross-origin upgrades).
fn origin_ok(app: &App, headers: &HeaderMap) -> bool {
    app.origins.origin_ok(
        header_str(headers, header::ORIGIN),
        header_str(headers, header::HOST),
    )
}

async fn live_ws(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if !origin_ok(&app, &headers) {
        return plain(StatusCode::FORBIDDEN, "403: WebSocket from another origin");
    }
    let Ok(permit) = app.sockets.clone().try_acquire_owned() else {
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "503: too many open WebSockets",
        );
    };
    let mut rx = app.live.clone();
    ws.max_message_size(MAX_WS_MESSAGE)
        .on_upgrade(move |mut socket| async move {
            let _permit = permit;
            loop {
                let json = rx.borrow_and_update().json.clone();
                if socket.send(Message::Text(json.into())).await.is_err() {
                    break;
                }
                tokio::select! {
                    changed = rx.changed() => if changed.is_err() { break },
                    msg = socket.recv() => match msg {
                        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                        Some(Ok(_)) => {}
                    },
                }
            }
        })
}

/// A terminal's control message (keystrokes come as binary or as `{"t":"i","d":…}`).
#[derive(Deserialize)]
#[serde(tag = "t")]
enum Control {
    /// Input.
    #[serde(rename = "i")]
    Input {
        /// UTF-8 text.
        d: String,
    },
    /// New size.
    #[serde(rename = "r")]
    Resize {
        /// Columns.
        c: u16,
        /// Rows.
        r: u16,
    },
}

fn clamp_size(c: u16, r: u16) -> (u16, u16) {
    (c.clamp(2, 1000), r.clamp(1, 500))
}

async fn term_ws(
    State(app): State<Arc<App>>,
    Path(container): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if !origin_ok(&app, &headers) {
        return plain(StatusCode::FORBIDDEN, "403: WebSocket from another origin");
    }
    if app.read_only {
        return plain(
            StatusCode::FORBIDDEN,
            "403: terminals are off (ilanet ui --read-only)",
        );
    }
    let target = app
        .live
        .borrow()
        .targets
        .iter()
        .find(|(n, _, _)| *n == container)
        .map(|(n, ns, id)| pty::Target {
            name: n.clone(),
            netns: ns.clone(),
            container_id: id.clone(),
        });
    let Some(target) = target else {
        return plain(StatusCode::NOT_FOUND, "404: no such container");
    };
    let Ok(term_permit) = app.terminals.clone().try_acquire_owned() else {
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "503: too many open terminals",
        );
    };
    let Ok(sock_permit) = app.sockets.clone().try_acquire_owned() else {
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "503: too many open WebSockets",
        );
    };
    ws.max_message_size(MAX_WS_MESSAGE)
        .on_upgrade(move |socket| async move {
            let _permits = (term_permit, sock_permit);
            let id = app.next_session.fetch_add(1, Ordering::Relaxed);
            let started = Instant::now();
            log_session(
                &app,
                &format!(
                    "terminal {id} start peer={peer} container={} netns={}",
                    target.name, target.netns
                ),
            );
            let reason = match run_terminal(&app, socket, &target).await {
                Ok(r) => r,
                Err(e) => format!("error: {e:#}"),
            };
            log_session(
                &app,
                &format!(
                    "terminal {id} end peer={peer} container={} after {:.1}s: {reason}",
                    target.name,
                    started.elapsed().as_secs_f64()
                ),
            );
        })
}

fn log_session(app: &App, line: &str) {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let line = format!("{} ilanet-ui {line}", format_utc(secs));
    eprintln!("{line}");
    if let Ok(mut guard) = app.session_log.lock() {
        if let Some(f) = guard.as_mut() {
            if let Err(e) = writeln!(f, "{line}") {
                eprintln!("ilanet-ui: writing the session log: {e}");
            }
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` of a Unix time (civil-from-days, proleptic Gregorian).
pub fn format_utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

async fn write_all(fd: &AsyncFd<OwnedFd>, mut data: &[u8]) -> std::io::Result<()> {
    {
        while !data.is_empty() {
            let mut guard = fd.writable().await?;
            // SAFETY: writing from a valid buffer to an owned descriptor.
            match guard.try_io(|inner| {
                let n = unsafe {
                    libc::write(
                        inner.get_ref().as_raw_fd(),
                        data.as_ptr().cast(),
                        data.len(),
                    )
                };
                if n < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            }) {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }
}

/// Pumps one terminal until the shell exits, the page closes it or it idles out; the reason.
async fn run_terminal(
    app: &App,
    mut socket: WebSocket,
    target: &pty::Target,
) -> anyhow::Result<String> {
    let pty::Pty { master, child } = pty::spawn(target, 80, 24)?;
    // The child is killed (with its session) and reaped when this guard drops.
    let _shell = ShellGuard(Some(child));
    // SAFETY: the AsyncFd owns the descriptor (an OwnedFd) for as long as it is registered.
    let fd = unsafe { AsyncFd::register(master) }
        .map_err(|e| anyhow::anyhow!("registering the terminal with the runtime: {e}"))?;
    let mut buf = vec![0u8; 16 * 1024];
    let mut last_input = Instant::now();
    loop {
        let idle_left = app.idle_timeout.saturating_sub(last_input.elapsed());
        tokio::select! {
            readable = fd.readable() => {
                let mut guard = readable?;
                // SAFETY: reading into a valid buffer from an owned descriptor.
                let res = guard.try_io(|inner| {
                    let n = unsafe { libc::read(inner.get_ref().as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                    if n < 0 { Err(std::io::Error::last_os_error()) } else { Ok(n as usize) }
                });
                match res {
                    Ok(Ok(0)) => return Ok("shell exited".into()),
                    Ok(Ok(n)) => {
                        if socket.send(Message::Binary(buf[..n].to_vec().into())).await.is_err() {
                            return Ok("page closed".into());
                        }
                    }
                    // EIO: the shell side closed (the shell exited).
                    Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok("shell exited".into()),
                    Ok(Err(e)) => return Err(e.into()),
                    Err(_would_block) => {}
                }
            }
            msg = socket.recv() => {
                match msg {
                    None | Some(Ok(Message::Close(_))) => return Ok("page closed".into()),
                    Some(Err(e)) => return Ok(format!("WebSocket error: {e}")),
                    Some(Ok(Message::Binary(b))) => {
                        last_input = Instant::now();
                        write_all(&fd, &b).await?;
                    }
                    Some(Ok(Message::Text(t))) => {
                        match serde_json::from_str::<Control>(t.as_str()) {
                            Ok(Control::Input { d }) => {
                                last_input = Instant::now();
                                write_all(&fd, d.as_bytes()).await?;
                            }
                            Ok(Control::Resize { c, r }) => {
                                let (c, r) = clamp_size(c, r);
                                pty::resize(fd.get_ref(), c, r)?;
                            }
                            Err(e) => return Ok(format!("bad control message: {e}")),
                        }
                    }
                    Some(Ok(_)) => {}
                }
            }
            () = tokio::time::sleep(idle_left) => {
                let _ = socket.send(Message::Text(r#"{"closed":"idle timeout"}"#.into())).await;
                let _ = socket.send(Message::Close(None)).await;
                return Ok(format!("idle for {}s", app.idle_timeout.as_secs()));
            }
        }
    }
}

struct ShellGuard(Option<std::process::Child>);

impl Drop for ShellGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let pid = child.id() as i32;
            // SAFETY: signalling the session the shell leads (setsid: pgid = pid).
            unsafe {
                libc::kill(-pid, libc::SIGHUP);
                libc::kill(-pid, libc::SIGKILL);
            }
            // Reaped off the runtime: the kill is immediate, the wait may not be.
            std::thread::spawn(move || {
                let _ = child.wait();
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_format() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_utc(1_796_190_744), "2026-12-02T05:52:24Z");
        assert_eq!(format_utc(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn sizes_are_clamped() {
        assert_eq!(clamp_size(0, 0), (2, 1));
        assert_eq!(clamp_size(80, 24), (80, 24));
        assert_eq!(clamp_size(u16::MAX, u16::MAX), (1000, 500));
    }
}
