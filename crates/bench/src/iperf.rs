//! iperf3 inside lab namespaces: a server in the destination container, a client in the source
//! container (`ip netns exec`), and the client's JSON report parsed into what the bench needs.

use std::io::Read;
use std::net::Ipv6Addr;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::BenchError;

/// How long a server gets to start listening.
const SERVER_START: Duration = Duration::from_secs(5);
/// Slack on top of the test duration before a client run counts as hung.
const CLIENT_SLACK: Duration = Duration::from_secs(20);

fn os(what: String) -> impl FnOnce(std::io::Error) -> BenchError {
    move |source| BenchError::Os { what, source }
}

/// An `iperf3 -s` in a namespace; killed when dropped.
pub struct IperfServer {
    child: Child,
    netns: String,
}

impl IperfServer {
    /// Starts `iperf3 -s -p port` in namespace `netns` and waits until it listens.
    pub fn start(netns: &str, port: u16) -> Result<Self, BenchError> {
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                netns,
                "iperf3",
                "-s",
                "-p",
                &port.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Own process group: Ctrl-C reaches the bench, which stops its children itself.
            .process_group(0)
            .spawn()
            .map_err(os(format!(
                "starting iperf3 -s in '{netns}' (is iperf3 installed?)"
            )))?;
        let mut server = Self {
            child,
            netns: netns.to_string(),
        };
        let start = Instant::now();
        loop {
            if listening(netns, port)? {
                return Ok(server);
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(BenchError::Iperf(format!(
                    "iperf3 server in '{netns}' exited at start ({status}); port {port} in use?"
                )));
            }
            if start.elapsed() > SERVER_START {
                return Err(BenchError::Iperf(format!(
                    "iperf3 server in '{netns}' is not listening on port {port} after {SERVER_START:?}"
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for IperfServer {
    fn drop(&mut self) {
        if let Err(e) = self.child.kill() {
            log::warn!("stopping the iperf3 server in '{}': {e}", self.netns);
        }
        let _ = self.child.wait();
    }
}

/// Whether something listens on TCP `port` (IPv6) in namespace `netns`.
fn listening(netns: &str, port: u16) -> Result<bool, BenchError> {
    let table = lab::netns::run_in(netns, || {
        // /proc/thread-self/net shows the namespace of this thread, which run_in switched.
        std::fs::read_to_string("/proc/thread-self/net/tcp6").map_err(|source| lab::LabError::Os {
            what: format!("reading /proc/net/tcp6 in '{netns}'"),
            source,
        })
    })?;
    let want = format!(":{port:04X}");
    Ok(table.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 3 && f[1].ends_with(&want) && f[3] == "0A"
    }))
}

/// One client run.
#[derive(Debug, Clone)]
pub struct ClientSpec {
    /// Namespace of the sending container.
    pub netns: String,
    /// Address of the receiving container.
    pub addr: Ipv6Addr,
    /// Server port.
    pub port: u16,
    /// Test length in seconds (`-t`).
    pub duration: u32,
    /// Parallel streams (`-P`).
    pub streams: u32,
}

/// Runs `iperf3 -c … -J -t D -i 1 -P N` and returns its JSON text. Returns
/// [`BenchError::Interrupted`] (after killing the client) as soon as `stop` is set.
pub fn run_client(spec: &ClientSpec, stop: &AtomicBool) -> Result<String, BenchError> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", &spec.netns, "iperf3", "-c"])
        .arg(spec.addr.to_string())
        .args(["-p", &spec.port.to_string(), "-J", "-i", "1"])
        .args(["-t", &spec.duration.to_string()])
        .args(["-P", &spec.streams.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(os(format!("starting iperf3 -c in '{}'", spec.netns)))?;
    // Drain stdout on a thread: a long run's JSON is larger than a pipe buffer.
    let mut stdout = child
        .stdout
        .take()
        .ok_or_else(|| BenchError::Iperf("iperf3 stdout not captured".into()))?;
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        stdout.read_to_string(&mut s).map(|_| s)
    });
    let deadline = Instant::now() + Duration::from_secs(spec.duration.into()) + CLIENT_SLACK;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(os("waiting for iperf3".into()))? {
            break status;
        }
        if stop.load(Ordering::SeqCst) || Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let _ = reader.join();
            if stop.load(Ordering::SeqCst) {
                return Err(BenchError::Interrupted);
            }
            return Err(BenchError::Iperf(format!(
                "iperf3 client in '{}' did not finish within {}s",
                spec.netns,
                spec.duration as u64 + CLIENT_SLACK.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let text = reader
        .join()
        .map_err(|_| BenchError::Iperf("iperf3 output reader panicked".into()))?
        .map_err(os("reading iperf3 output".into()))?;
    if !status.success() {
        let mut stderr = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut stderr);
        }
        let reason = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string))
            .unwrap_or_else(|| stderr.trim().to_string());
        return Err(BenchError::Iperf(format!(
            "iperf3 client in '{}' to [{}]:{} failed ({status}): {reason}",
            spec.netns, spec.addr, spec.port
        )));
    }
    Ok(text)
}

/// One 1-second interval of a run (summed over streams).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    /// Seconds since the start of the test.
    pub start: f64,
    /// Length in seconds.
    pub seconds: f64,
    /// Sender throughput in the interval.
    pub bits_per_second: f64,
    /// TCP retransmits in the interval (sender side).
    pub retransmits: u64,
}

/// What the bench takes from one iperf3 client report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IperfReport {
    /// Per-interval figures.
    pub intervals: Vec<Interval>,
    /// Whole-run sender throughput.
    pub sent_bps: f64,
    /// Whole-run receiver throughput.
    pub received_bps: f64,
    /// Whole-run retransmits.
    pub retransmits: u64,
    /// CPU of the sending iperf3 process, % of one core (user + system).
    pub cpu_host: f64,
    /// CPU of the receiving iperf3 process, % of one core.
    pub cpu_remote: f64,
}

/// Intervals shorter than this are iperf3's end-of-test slivers, not samples.
const MIN_INTERVAL_S: f64 = 0.5;

fn num(v: &Value, path: &[&str]) -> Option<f64> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_f64()
}

/// Parses an `iperf3 -J` client report.
pub fn parse(json: &str) -> Result<IperfReport, BenchError> {
    let v: Value = serde_json::from_str(json)
        .map_err(|e| BenchError::Iperf(format!("iperf3 output is not JSON: {e}")))?;
    if let Some(err) = v.get("error").and_then(Value::as_str) {
        return Err(BenchError::Iperf(format!("iperf3 reported: {err}")));
    }
    let missing = |what: &str| BenchError::Iperf(format!("iperf3 JSON has no {what}"));
    let intervals = v
        .get("intervals")
        .and_then(Value::as_array)
        .ok_or_else(|| missing("intervals"))?
        .iter()
        .filter_map(|i| {
            let sum = i.get("sum")?;
            Some(Interval {
                start: num(sum, &["start"])?,
                seconds: num(sum, &["seconds"])?,
                bits_per_second: num(sum, &["bits_per_second"])?,
                retransmits: num(sum, &["retransmits"]).unwrap_or(0.0) as u64,
            })
        })
        .filter(|i| i.seconds >= MIN_INTERVAL_S)
        .collect::<Vec<_>>();
    if intervals.is_empty() {
        return Err(missing("complete intervals"));
    }
    let end = v.get("end").ok_or_else(|| missing("end section"))?;
    Ok(IperfReport {
        intervals,
        sent_bps: num(end, &["sum_sent", "bits_per_second"])
            .ok_or_else(|| missing("end.sum_sent"))?,
        received_bps: num(end, &["sum_received", "bits_per_second"])
            .ok_or_else(|| missing("end.sum_received"))?,
        retransmits: num(end, &["sum_sent", "retransmits"]).unwrap_or(0.0) as u64,
        cpu_host: num(end, &["cpu_utilization_percent", "host_total"]).unwrap_or(0.0),
        cpu_remote: num(end, &["cpu_utilization_percent", "remote_total"]).unwrap_or(0.0),
    })
}

/// `iperf3 --version`, first line.
pub fn version() -> String {
    Command::new("iperf3")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_else(|| "iperf3 (version unknown)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"{
      "start": {"version": "iperf 3.12"},
      "intervals": [
        {"streams": [], "sum": {"start": 0, "end": 1.0, "seconds": 1.0, "bytes": 1, "bits_per_second": 8.0e9, "retransmits": 3, "omitted": false}},
        {"streams": [], "sum": {"start": 1.0, "end": 2.0, "seconds": 1.0, "bytes": 1, "bits_per_second": 9.0e9, "retransmits": 0, "omitted": false}},
        {"streams": [], "sum": {"start": 2.0, "end": 2.0001, "seconds": 0.0001, "bytes": 1, "bits_per_second": 1.0e3, "retransmits": 0, "omitted": false}}
      ],
      "end": {
        "sum_sent": {"bits_per_second": 8.5e9, "retransmits": 3},
        "sum_received": {"bits_per_second": 8.4e9},
        "cpu_utilization_percent": {"host_total": 55.5, "remote_total": 40.25}
      }
    }"#;

    #[test]
    fn parses_intervals_totals_and_cpu() {
        let r = parse(SAMPLE).expect("parse");
        assert_eq!(r.intervals.len(), 2, "the end sliver is not a sample");
        assert_eq!(r.intervals[1].bits_per_second, 9.0e9);
        assert_eq!(r.intervals[0].retransmits, 3);
        assert_eq!(
            (r.sent_bps, r.received_bps, r.retransmits),
            (8.5e9, 8.4e9, 3)
        );
        assert_eq!((r.cpu_host, r.cpu_remote), (55.5, 40.25));
    }

    #[test]
    fn reports_iperf_errors_and_garbage() {
        let e = parse(r#"{"error": "unable to connect to server"}"#).unwrap_err();
        assert!(e.to_string().contains("unable to connect"), "{e}");
        assert!(parse("not json").is_err());
        assert!(parse(r#"{"intervals": [], "end": {}}"#).is_err());
    }
}
