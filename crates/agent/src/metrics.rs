//! Prometheus metrics of one or more agents, served over HTTP (`GET /metrics`, OpenMetrics text).
//!
//! Nothing here polls: the data-path counters, map fill, store session and endpoint counts are
//! read when Prometheus scrapes (a [`Collector`]); the latency histograms and CNI call counts
//! are updated where the work happens, with one atomic or one short lock each, never on the
//! packet path.
//!
//! Every series carries a `host` label, so that one endpoint can serve every host of a lab
//! agent process. The series:
//!
//! | name | type | labels | what |
//! |---|---|---|---|
//! | `ilanet_datapath_packets_total` | counter | host, event | data-path counters that are not drops (`out_translated`, `ct_hit`, …) |
//! | `ilanet_datapath_drops_total` | counter | host, reason | packets dropped, by reason (`policy`, `tenant`, `spoofed`, …) |
//! | `ilanet_map_entries` | gauge | host, map | entries of `ILA_OUT`, `ILA_IN`, `ILA_ENDPOINTS`, `ILA_IPCACHE`, `POLICY`, `POLICY_EP`, `POLICY_CIDR` |
//! | `ilanet_map_capacity_entries` | gauge | host, map | their `max_entries` |
//! | `ilanet_store_connected` | gauge | host | 1 while the store session is up |
//! | `ilanet_store_lease_info` | info | host, lease | the session's lease id |
//! | `ilanet_store_lease_ttl_seconds` | gauge | host | its granted time to live |
//! | `ilanet_store_revision` | gauge | host | store revision the maps reflect |
//! | `ilanet_store_resyncs_total` | counter | host | full resyncs (list + mark and sweep) |
//! | `ilanet_endpoints` | gauge | host | endpoints of this host |
//! | `ilanet_mappings` | gauge | host | mappings in the agent's view of the store |
//! | `ilanet_resync_duration_seconds` | histogram | host | duration of a full resync |
//! | `ilanet_endpoint_create_duration_seconds` | histogram | host, via | endpoint creation as its caller sees it (`api`: `endpoint add`; `cni`: CNI ADD), successes only |
//! | `ilanet_cni_requests_total` | counter | host, verb, result | CNI calls (`add`, `del`, `check`, `gc`), `ok` or `error` |

use std::convert::Infallible;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::Agent;

/// Content type of the answer: OpenMetrics text, what Prometheus asks for first.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Port used when an address is given as a bare port or not at all.
pub const DEFAULT_PORT: u16 = 9477;
/// Connections served at once; more are closed on accept (Prometheus needs one).
pub const MAX_CONNECTIONS: usize = 16;
/// A request's headers must arrive within this long (also bounds an idle keep-alive wait).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection is closed (gracefully, after the request in flight) after this long.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(120);
/// How long a request in flight may take once its connection is being closed.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Pause after a failed accept (e.g. out of descriptors) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What can go wrong serving metrics.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The listening address could not be bound.
    #[error("metrics: cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// A listening address that does not parse.
    #[error("metrics: '{0}' is not an address: expected HOST:PORT (e.g. 127.0.0.1:9477, [::1]:9477) or a port")]
    Address(String),
}

/// Parses a listening address: `HOST:PORT` (any address is allowed; `0.0.0.0` or a routable
/// address exposes the metrics to the network), or a bare port, which means loopback
/// (`127.0.0.1:PORT`).
pub fn parse_listen(s: &str) -> Result<SocketAddr, MetricsError> {
    let s = s.trim();
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    s.parse::<SocketAddr>()
        .map_err(|_| MetricsError::Address(s.to_string()))
}

/// The way an endpoint was created (label `via`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// The agent's API (`ilanet endpoint add`, a move).
    Api,
    /// CNI ADD from a container runtime.
    Cni,
}

/// A CNI verb the agent serves (label `verb`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CniVerb {
    /// ADD.
    Add,
    /// DEL.
    Del,
    /// CHECK.
    Check,
    /// GC.
    Gc,
}

const VERBS: [(CniVerb, &str); 4] = [
    (CniVerb::Add, "add"),
    (CniVerb::Del, "del"),
    (CniVerb::Check, "check"),
    (CniVerb::Gc, "gc"),
];

/// What one agent measures as it works; read at scrape time.
pub struct Telemetry {
    resync: Histogram,
    create_api: Histogram,
    create_cni: Histogram,
    /// `[verb][ok, error]`.
    cni: [[AtomicU64; 2]; 4],
}

impl fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Telemetry").finish_non_exhaustive()
    }
}

impl Default for Telemetry {
    fn default() -> Self {
        Self {
            // 1 ms to about 33 s.
            resync: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            // 5 ms to about 20 s (namespace plumbing, identity allocation, a store write).
            create_api: Histogram::new(exponential_buckets(0.005, 2.0, 13)),
            create_cni: Histogram::new(exponential_buckets(0.005, 2.0, 13)),
            cni: Default::default(),
        }
    }
}

impl Telemetry {
    /// Records the duration of a full resync.
    pub fn observe_resync(&self, d: Duration) {
        self.resync.observe(d.as_secs_f64());
    }

    /// Records how long an endpoint creation took.
    pub fn observe_endpoint_created(&self, via: Via, d: Duration) {
        match via {
            Via::Api => self.create_api.observe(d.as_secs_f64()),
            Via::Cni => self.create_cni.observe(d.as_secs_f64()),
        }
    }

    /// Counts one CNI call and its outcome.
    pub fn count_cni(&self, verb: CniVerb, ok: bool) {
        let v = VERBS.iter().position(|(x, _)| *x == verb).unwrap_or(0);
        self.cni[v][usize::from(!ok)].fetch_add(1, Ordering::Relaxed);
    }

    /// CNI calls counted so far for `verb` (ok, error).
    pub fn cni_count(&self, verb: CniVerb) -> (u64, u64) {
        let v = VERBS.iter().position(|(x, _)| *x == verb).unwrap_or(0);
        (
            self.cni[v][0].load(Ordering::Relaxed),
            self.cni[v][1].load(Ordering::Relaxed),
        )
    }
}

/// One map's fill as a scrape sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapFill {
    /// The map's name in the object (`ILA_OUT`, …).
    pub map: &'static str,
    /// Entries now (`None`: the map could not be read).
    pub entries: Option<usize>,
    /// Its `max_entries`.
    pub capacity: usize,
}

/// One agent's state at scrape time.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Host name (label `host`).
    pub host: String,
    /// Whether the store session is up.
    pub connected: bool,
    /// The session's lease: id and granted time to live.
    pub lease: Option<(i64, Duration)>,
    /// Store revision the maps reflect.
    pub revision: i64,
    /// Full resyncs so far.
    pub resyncs: u64,
    /// Endpoints of this host.
    pub endpoints: usize,
    /// Mappings in the view.
    pub mappings: usize,
    /// Data-path counters (`None`: unreadable).
    pub counters: Option<dataplane::Counters>,
    /// Map fill.
    pub maps: Vec<MapFill>,
}

/// Encodes every agent's series, one family at a time (a family appears once, with one series
/// per host).
struct AgentsCollector {
    agents: Vec<Arc<Agent>>,
}

impl fmt::Debug for AgentsCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentsCollector")
            .field("agents", &self.agents.len())
            .finish()
    }
}

/// Writes one family: its descriptor, then a series for each `(labels, value)`.
fn family<L, M>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (L, M)>,
) -> fmt::Result
where
    L: prometheus_client::encoding::EncodeLabelSet,
    M: EncodeMetric,
{
    let mut series = series.into_iter().peekable();
    let Some((_, first)) = series.peek() else {
        return Ok(());
    };
    let mut m = enc.encode_descriptor(name, help, None, first.metric_type())?;
    for (labels, metric) in series {
        metric.encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A histogram series borrowed for encoding.
struct HistRef<'a>(&'a Histogram);

impl fmt::Debug for HistRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HistRef")
    }
}

impl EncodeMetric for HistRef<'_> {
    fn encode(&self, encoder: prometheus_client::encoding::MetricEncoder) -> fmt::Result {
        self.0.encode(encoder)
    }
    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

fn gauge_of(v: usize) -> ConstGauge<i64> {
    ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX))
}

impl Collector for AgentsCollector {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> fmt::Result {
        let items: Vec<(Sample, &Telemetry)> = self
            .agents
            .iter()
            .map(|a| (a.sample(), &a.telemetry))
            .collect();
        encode_all(&mut enc, &items)
    }
}

/// Encodes the families of these agents' samples and telemetry.
fn encode_all(enc: &mut DescriptorEncoder<'_>, items: &[(Sample, &Telemetry)]) -> fmt::Result {
    let samples: Vec<&Sample> = items.iter().map(|(s, _)| s).collect();
    let host = |s: &Sample| [("host", s.host.clone())];

    let mut packets = Vec::new();
    let mut drops = Vec::new();
    for s in samples.iter().copied() {
        let Some(c) = &s.counters else { continue };
        for (name, v) in c.pairs() {
            match name.strip_prefix("drop_") {
                Some(reason) => drops.push((
                    [("host", s.host.as_str()), ("reason", reason)],
                    ConstCounter::new(v),
                )),
                None => packets.push((
                    [("host", s.host.as_str()), ("event", name)],
                    ConstCounter::new(v),
                )),
            }
        }
    }
    family(
        enc,
        "ilanet_datapath_packets",
        "Data-path packet counters other than drops, summed over CPUs",
        packets,
    )?;
    family(
        enc,
        "ilanet_datapath_drops",
        "Packets the data path dropped, by reason",
        drops,
    )?;

    let fills = || {
        samples.iter().copied().flat_map(|s| {
            s.maps
                .iter()
                .map(move |m| (s.host.as_str(), m.map, m.entries, m.capacity))
        })
    };
    family(
        enc,
        "ilanet_map_entries",
        "Entries of an eBPF map",
        fills().filter_map(|(h, map, n, _)| n.map(|n| ([("host", h), ("map", map)], gauge_of(n)))),
    )?;
    family(
        enc,
        "ilanet_map_capacity_entries",
        "Capacity (max_entries) of an eBPF map",
        fills().map(|(h, map, _, cap)| ([("host", h), ("map", map)], gauge_of(cap))),
    )?;

    family(
        enc,
        "ilanet_store_connected",
        "1 while the agent's store session is up",
        samples
            .iter()
            .copied()
            .map(|s| (host(s), ConstGauge::new(i64::from(s.connected)))),
    )?;
    // An info series carries its labels itself (as a family it would encode them twice).
    let leases: Vec<[(&str, String); 2]> = samples
        .iter()
        .filter_map(|s| {
            s.lease
                .map(|(id, _)| [("host", s.host.clone()), ("lease", id.to_string())])
        })
        .collect();
    if !leases.is_empty() {
        let mut m = enc.encode_descriptor(
            "ilanet_store_lease",
            "The lease the agent's records are attached to",
            None,
            MetricType::Info,
        )?;
        for l in &leases {
            m.encode_info(l)?;
        }
    }
    family(
        enc,
        "ilanet_store_lease_ttl_seconds",
        "Granted time to live of the agent's lease",
        samples.iter().copied().filter_map(|s| {
            s.lease.map(|(_, ttl)| {
                (
                    host(s),
                    ConstGauge::new(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX)),
                )
            })
        }),
    )?;
    family(
        enc,
        "ilanet_store_revision",
        "Store revision the agent's maps reflect",
        samples
            .iter()
            .copied()
            .map(|s| (host(s), ConstGauge::new(s.revision))),
    )?;
    family(
        enc,
        "ilanet_store_resyncs",
        "Full resyncs with the store (list, then mark and sweep)",
        samples
            .iter()
            .copied()
            .map(|s| (host(s), ConstCounter::new(s.resyncs))),
    )?;
    family(
        enc,
        "ilanet_endpoints",
        "Endpoints of this host",
        samples
            .iter()
            .copied()
            .map(|s| (host(s), gauge_of(s.endpoints))),
    )?;
    family(
        enc,
        "ilanet_mappings",
        "Mappings in the agent's view of the store",
        samples
            .iter()
            .copied()
            .map(|s| (host(s), gauge_of(s.mappings))),
    )?;

    family(
        enc,
        "ilanet_resync_duration_seconds",
        "Duration of a full resync with the store",
        items
            .iter()
            .map(|(s, t)| ([("host", s.host.as_str())], HistRef(&t.resync))),
    )?;
    family(
        enc,
        "ilanet_endpoint_create_duration_seconds",
        "Endpoint creation as its caller sees it (api: endpoint add; cni: CNI ADD), successes only",
        items.iter().flat_map(|(s, t)| {
            let h = s.host.as_str();
            [
                ([("host", h), ("via", "api")], HistRef(&t.create_api)),
                ([("host", h), ("via", "cni")], HistRef(&t.create_cni)),
            ]
        }),
    )?;
    family(
        enc,
        "ilanet_cni_requests",
        "CNI calls served, by verb and result",
        items.iter().flat_map(|(s, t)| {
            let h = s.host.as_str();
            VERBS.iter().flat_map(move |(verb, vname)| {
                let (ok, err) = t.cni_count(*verb);
                [
                    (
                        [("host", h), ("verb", *vname), ("result", "ok")],
                        ConstCounter::new(ok),
                    ),
                    (
                        [("host", h), ("verb", *vname), ("result", "error")],
                        ConstCounter::new(err),
                    ),
                ]
            })
        }),
    )?;
    Ok(())
}

/// The registry of these agents' metrics.
pub fn registry(agents: Vec<Arc<Agent>>) -> Registry {
    let mut r = Registry::default();
    r.register_collector(Box::new(AgentsCollector { agents }));
    r
}

/// The OpenMetrics text of these agents' metrics (blocking: it reads the maps).
pub fn render(registry: &Registry) -> Result<String, fmt::Error> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
}

/// A bound metrics endpoint; [`MetricsServer::run`] serves it.
pub struct MetricsServer {
    listener: TcpListener,
    registry: Arc<Registry>,
}

impl fmt::Debug for MetricsServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetricsServer")
            .field("addr", &self.listener.local_addr().ok())
            .finish_non_exhaustive()
    }
}

impl MetricsServer {
    /// Binds `addr` (in the network namespace the process runs in) for these agents.
    pub async fn bind(addr: SocketAddr, agents: Vec<Arc<Agent>>) -> Result<Self, MetricsError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| MetricsError::Bind { addr, source })?;
        Ok(Self {
            listener,
            registry: Arc::new(registry(agents)),
        })
    }

    /// The address actually bound (its port, when port 0 was asked for).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serves `GET /metrics` forever.
    pub async fn run(self) {
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            let stream = match self.listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    log::warn!("metrics: accept: {e}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            // Over the limit: closed at once (Prometheus retries at its next scrape).
            let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                drop(stream);
                continue;
            };
            let registry = Arc::clone(&self.registry);
            tokio::spawn(async move {
                serve_connection(stream, registry).await;
                drop(slot);
            });
        }
    }
}

async fn serve_connection(stream: tokio::net::TcpStream, registry: Arc<Registry>) {
    let service = hyper::service::service_fn(move |req| {
        let registry = Arc::clone(&registry);
        async move { Ok::<_, Infallible>(answer(req, registry).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(16 * 1024)
        .serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    let done = tokio::select! {
        r = conn.as_mut() => Some(r),
        _ = tokio::time::sleep(CONNECTION_LIFETIME) => None,
    };
    let result = match done {
        Some(r) => r,
        None => {
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(SHUTDOWN_GRACE, conn).await {
                Ok(r) => r,
                Err(_) => return,
            }
        }
    };
    if let Err(e) = result {
        log::debug!("metrics connection: {e}");
    }
}

fn plain(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

async fn answer<B>(req: Request<B>, registry: Arc<Registry>) -> Response<Full<Bytes>> {
    if req.uri().path() != "/metrics" {
        return plain(
            StatusCode::NOT_FOUND,
            "not found: the metrics are at /metrics\n",
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
        r.headers_mut().insert(
            hyper::header::ALLOW,
            hyper::header::HeaderValue::from_static("GET, HEAD"),
        );
        return r;
    }
    // Reading the maps is syscalls and std locks: off the async threads.
    let text = tokio::task::spawn_blocking(move || render(&registry)).await;
    match text {
        Ok(Ok(text)) => {
            let mut r = Response::new(Full::new(Bytes::from(text)));
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static(CONTENT_TYPE),
            );
            r
        }
        Ok(Err(_)) | Err(_) => plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the metrics could not be encoded\n",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses() {
        assert_eq!(
            parse_listen("9477").expect("port"),
            "127.0.0.1:9477".parse::<SocketAddr>().expect("addr")
        );
        assert_eq!(
            parse_listen("[::1]:9000").expect("v6"),
            "[::1]:9000".parse::<SocketAddr>().expect("addr")
        );
        assert!(parse_listen("0.0.0.0:9477").is_ok());
        for bad in ["", "localhost:9477", "127.0.0.1", "99999", "1.2.3.4:x"] {
            assert!(parse_listen(bad).is_err(), "{bad}");
        }
    }

    #[derive(Debug)]
    struct Fixed(Vec<(Sample, Telemetry)>);

    impl Collector for Fixed {
        fn encode(&self, mut enc: DescriptorEncoder<'_>) -> fmt::Result {
            let items: Vec<(Sample, &Telemetry)> =
                self.0.iter().map(|(s, t)| (s.clone(), t)).collect();
            encode_all(&mut enc, &items)
        }
    }

    fn sample(host: &str, connected: bool) -> Sample {
        Sample {
            host: host.into(),
            connected,
            lease: connected.then_some((7587862744095389956, Duration::from_secs(10))),
            revision: 42,
            resyncs: 3,
            endpoints: 2,
            mappings: 5,
            counters: Some(dataplane::Counters {
                out_translated: 11,
                drop_policy: 4,
                ..Default::default()
            }),
            maps: vec![
                MapFill {
                    map: "ILA_OUT",
                    entries: Some(5),
                    capacity: 131072,
                },
                MapFill {
                    map: "ILA_IN",
                    entries: None,
                    capacity: 65536,
                },
            ],
        }
    }

    #[test]
    fn every_family_appears_once_with_a_series_per_host() {
        let t = Telemetry::default();
        t.observe_resync(Duration::from_millis(3));
        t.observe_endpoint_created(Via::Cni, Duration::from_millis(40));
        t.count_cni(CniVerb::Add, true);
        let mut r = Registry::default();
        r.register_collector(Box::new(Fixed(vec![
            (sample("site1", true), t),
            (sample("site2", false), Telemetry::default()),
        ])));
        let text = render(&r).expect("encode");
        assert!(text.ends_with("# EOF\n"), "{text}");
        let types: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE ")).collect();
        let mut unique = types.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(types.len(), unique.len(), "a family appears twice:\n{text}");
        for want in [
            "ilanet_datapath_packets_total{host=\"site1\",event=\"out_translated\"} 11",
            "ilanet_datapath_drops_total{host=\"site2\",reason=\"policy\"} 4",
            "ilanet_map_entries{host=\"site1\",map=\"ILA_OUT\"} 5",
            "ilanet_map_capacity_entries{host=\"site1\",map=\"ILA_IN\"} 65536",
            "ilanet_store_connected{host=\"site1\"} 1",
            "ilanet_store_connected{host=\"site2\"} 0",
            "ilanet_store_lease_info{host=\"site1\",lease=\"7587862744095389956\"} 1",
            "ilanet_store_lease_ttl_seconds{host=\"site1\"} 10",
            "ilanet_store_revision{host=\"site1\"} 42",
            "ilanet_store_resyncs_total{host=\"site1\"} 3",
            "ilanet_endpoints{host=\"site1\"} 2",
            "ilanet_mappings{host=\"site2\"} 5",
            "ilanet_resync_duration_seconds_count{host=\"site1\"} 1",
            "ilanet_resync_duration_seconds_count{host=\"site2\"} 0",
            "ilanet_endpoint_create_duration_seconds_count{host=\"site1\",via=\"cni\"} 1",
            "ilanet_cni_requests_total{host=\"site1\",verb=\"add\",result=\"ok\"} 1",
            "ilanet_cni_requests_total{host=\"site2\",verb=\"gc\",result=\"error\"} 0",
        ] {
            assert!(text.lines().any(|l| l == want), "missing {want}:\n{text}");
        }
        // An unreadable map has no entries series (rather than a false 0).
        assert!(!text.contains("ilanet_map_entries{host=\"site1\",map=\"ILA_IN\"}"));
        // The lease of a disconnected agent is not reported.
        assert!(!text.contains("ilanet_store_lease_info{host=\"site2\""));
    }

    #[test]
    fn cni_counts_by_verb_and_result() {
        let t = Telemetry::default();
        t.count_cni(CniVerb::Add, true);
        t.count_cni(CniVerb::Add, false);
        t.count_cni(CniVerb::Add, true);
        t.count_cni(CniVerb::Gc, false);
        assert_eq!(t.cni_count(CniVerb::Add), (2, 1));
        assert_eq!(t.cni_count(CniVerb::Gc), (0, 1));
        assert_eq!(t.cni_count(CniVerb::Del), (0, 0));
    }
}
