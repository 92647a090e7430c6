//! The two programs that run inside the marketplace's containers (hidden subcommands of the
//! binary, started in a container's network namespace): `marketplace-search` runs a query over
//! its site's data file and sends the hits to the correlate service; `marketplace-correlate`
//! listens on tcp/5201, receives every site's results, merges them and prints the answer.
//!
//! Wire format, one connection per result set: a header line
//! `MARKET/1 <results|raw> <site> <count>`, then `count` lines (`id,category,year,score` for
//! results; whole data lines for raw), then the sender shuts its side down; the correlate
//! answers `ACK <count>` or `REFUSED <why>`.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::{Deserialize, Serialize};

use super::data::{self, Hit, Query, MAX_LINE, MAX_RECORDS};

/// Protocol tag of the header line.
const MAGIC: &str = "MARKET/1";
/// Most connections the correlate serves beyond the result sets it expects (strays, attacks).
const SPARE_CONNECTIONS: usize = 8;
/// Most result sets a correlate waits for.
pub const MAX_EXPECT: usize = 16;
/// How long either side waits for the other's next line once connected.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Exit code of a program that ran but did not get its data through (or not all of it in).
pub const EXIT_UNDELIVERED: u8 = 2;

/// `ilanet marketplace-search`: the search function shipped to a data site.
#[derive(Args, Debug)]
pub struct SearchArgs {
    /// The site's data file (CSV, written by `ilanet marketplace`).
    #[arg(long)]
    data: std::path::PathBuf,
    /// The query (e.g. "category=genome and score>=40").
    #[arg(long, default_value = data::DEFAULT_QUERY)]
    query: String,
    /// Where to send the results: the correlate service, `[SIR address]:5201`.
    #[arg(long)]
    to: SocketAddr,
    /// Name of this site, sent with the results.
    #[arg(long)]
    site: String,
    /// Send the whole raw data set instead of the query's results (what a malicious search
    /// function would do; the network must drop it).
    #[arg(long)]
    raw: bool,
    /// Connect timeout in milliseconds.
    #[arg(long, default_value_t = 3000)]
    connect_timeout_ms: u64,
}

/// What a search program did (one JSON line on stdout).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SearchReport {
    /// Site name.
    pub site: String,
    /// Records in the data file.
    pub scanned: usize,
    /// Records matching the query.
    pub matched: usize,
    /// `results` or `raw`.
    pub kind: String,
    /// Lines sent.
    pub sent: usize,
    /// Whether the correlate acknowledged every line.
    pub delivered: bool,
    /// `timed-out` (nothing answered: dropped), `refused` (a reset came back), `rejected`
    /// (the peer refused the data) or `error`.
    pub failure: Option<String>,
    /// The failure in words.
    pub error: Option<String>,
    /// Wall time, milliseconds.
    pub elapsed_ms: u64,
}

fn check_site(site: &str) -> Result<()> {
    let ok = !site.is_empty()
        && site.len() <= 32
        && site
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !ok {
        bail!("site name '{site}' is not valid: 1 to 32 of a-z, 0-9, '-'");
    }
    Ok(())
}

/// Runs the search program: exit 0 when the correlate acknowledged the results,
/// [`EXIT_UNDELIVERED`] when they did not get through (the report says why).
pub fn search_main(args: &SearchArgs) -> Result<ExitCode> {
    let start = Instant::now();
    check_site(&args.site)?;
    if !(1..=60_000).contains(&args.connect_timeout_ms) {
        bail!(
            "--connect-timeout-ms must be 1 to 60000, got {}",
            args.connect_timeout_ms
        );
    }
    let query: Query = args
        .query
        .parse()
        .with_context(|| format!("--query '{}'", args.query))?;
    let max_bytes = (2 * MAX_RECORDS as u64 + 1) * (MAX_LINE as u64 + 1);
    let meta = std::fs::metadata(&args.data)
        .with_context(|| format!("reading {}", args.data.display()))?;
    if meta.len() > max_bytes {
        bail!(
            "{} is {} bytes; at most {max_bytes} are allowed",
            args.data.display(),
            meta.len()
        );
    }
    let text = std::fs::read_to_string(&args.data)
        .with_context(|| format!("reading {}", args.data.display()))?;
    let records = data::parse_csv(&text).with_context(|| format!("{}", args.data.display()))?;
    let hits = data::search(&records, &query);
    let (kind, lines): (&str, Vec<String>) = if args.raw {
        ("raw", text.lines().skip(1).map(str::to_string).collect())
    } else {
        ("results", hits.iter().map(Hit::to_line).collect())
    };
    let mut report = SearchReport {
        site: args.site.clone(),
        scanned: records.len(),
        matched: hits.len(),
        kind: kind.to_string(),
        sent: 0,
        delivered: false,
        failure: None,
        error: None,
        elapsed_ms: 0,
    };
    match send(
        args.to,
        Duration::from_millis(args.connect_timeout_ms),
        kind,
        &args.site,
        &lines,
    ) {
        Ok(acked) => {
            report.sent = lines.len();
            report.delivered = acked == lines.len();
            if !report.delivered {
                report.failure = Some("rejected".into());
                report.error = Some(format!("acknowledged {acked} of {}", lines.len()));
            }
        }
        Err((failure, e)) => {
            report.failure = Some(failure.into());
            report.error = Some(e);
        }
    }
    report.elapsed_ms = start.elapsed().as_millis() as u64;
    println!("{}", serde_json::to_string(&report)?);
    Ok(if report.delivered {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_UNDELIVERED)
    })
}

/// Sends one result set; the number of lines acknowledged, or the failure's class and text.
fn send(
    to: SocketAddr,
    connect_timeout: Duration,
    kind: &str,
    site: &str,
    lines: &[String],
) -> Result<usize, (&'static str, String)> {
    let mut conn = TcpStream::connect_timeout(&to, connect_timeout).map_err(|e| {
        let class = match e.kind() {
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => "timed-out",
            io::ErrorKind::ConnectionRefused => "refused",
            _ => "error",
        };
        (class, format!("connecting to {to}: {e}"))
    })?;
    let io = |e: io::Error| ("error", format!("talking to {to}: {e}"));
    conn.set_read_timeout(Some(IO_TIMEOUT)).map_err(io)?;
    conn.set_write_timeout(Some(IO_TIMEOUT)).map_err(io)?;
    {
        let mut w = io::BufWriter::new(&conn);
        writeln!(w, "{MAGIC} {kind} {site} {}", lines.len()).map_err(io)?;
        for l in lines {
            w.write_all(l.as_bytes()).map_err(io)?;
            w.write_all(b"\n").map_err(io)?;
        }
        w.flush().map_err(io)?;
    }
    conn.shutdown(std::net::Shutdown::Write).map_err(io)?;
    let mut reply = String::new();
    BufReader::new(&mut conn)
        .take(MAX_LINE as u64)
        .read_line(&mut reply)
        .map_err(io)?;
    let reply = reply.trim();
    match reply.strip_prefix("ACK ") {
        Some(n) => n
            .parse()
            .map_err(|_| ("error", format!("unreadable reply '{reply}' from {to}"))),
        None => Err(("rejected", format!("{to} answered '{reply}'"))),
    }
}

/// `ilanet marketplace-correlate`: the correlate service.
#[derive(Args, Debug)]
pub struct CorrelateArgs {
    /// Address to listen on: `[SIR address]:5201`.
    #[arg(long)]
    listen: SocketAddr,
    /// Result sets to wait for (one per data site).
    #[arg(long, default_value_t = data::DATA_SITES)]
    expect: usize,
    /// Give up after this many milliseconds.
    #[arg(long, default_value_t = 60_000)]
    timeout_ms: u64,
}

/// One connection the correlate served.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Connection {
    /// Peer address.
    pub peer: String,
    /// Site the peer named (empty if it named none).
    pub site: String,
    /// `results`, `raw` or what else it sent.
    pub kind: String,
    /// Result lines accepted.
    pub records: usize,
    /// Whether the result set was taken into the answer.
    pub accepted: bool,
    /// Why not.
    pub error: Option<String>,
}

/// The correlate's output: the connections and the merged answer (last JSON line on stdout).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CorrelateReport {
    /// Listening address.
    pub listen: String,
    /// Every connection, in the order they finished.
    pub connections: Vec<Connection>,
    /// Whether every expected result set arrived.
    pub complete: bool,
    /// The merge.
    pub merged: data::Merged,
}

/// First line the correlate prints once it listens.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Listening {
    /// The address it listens on.
    pub listening: String,
}

/// Reads one line of at most [`MAX_LINE`] bytes; `None` at end of stream.
fn read_line(r: &mut impl BufRead) -> io::Result<Option<String>> {
    let mut buf = Vec::new();
    let n = r.take(MAX_LINE as u64 + 1).read_until(b'\n', &mut buf)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
    } else if buf.len() > MAX_LINE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a line longer than {MAX_LINE} bytes"),
        ));
    }
    String::from_utf8(buf)
        .map(Some)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "a line that is not UTF-8"))
}

/// Parsed header line.
#[derive(Debug, PartialEq, Eq)]
struct Header {
    kind: String,
    site: String,
    count: usize,
}

fn parse_header(line: &str) -> Result<Header, String> {
    let f: Vec<&str> = line.split(' ').collect();
    let [magic, kind, site, count] = f[..] else {
        return Err(format!(
            "header '{line}' is not '{MAGIC} <kind> <site> <count>'"
        ));
    };
    if magic != MAGIC {
        return Err(format!("header '{line}' does not start with {MAGIC}"));
    }
    check_site(site).map_err(|e| e.to_string())?;
    let count: usize = count
        .parse()
        .map_err(|_| format!("count '{count}' is not a number"))?;
    if count > MAX_RECORDS {
        return Err(format!(
            "{count} results; at most {MAX_RECORDS} are accepted"
        ));
    }
    Ok(Header {
        kind: kind.to_string(),
        site: site.to_string(),
        count,
    })
}

/// Serves one connection: reads a result set; the connection's record and its hits.
fn serve(conn: TcpStream, peer: SocketAddr) -> (Connection, Vec<Hit>) {
    let mut c = Connection {
        peer: peer.ip().to_string(),
        site: String::new(),
        kind: String::new(),
        records: 0,
        accepted: false,
        error: None,
    };
    let _ = conn.set_read_timeout(Some(IO_TIMEOUT));
    let _ = conn.set_write_timeout(Some(IO_TIMEOUT));
    let mut reader = BufReader::new(&conn);
    let result = (|| -> Result<Vec<Hit>, String> {
        let line = read_line(&mut reader)
            .map_err(|e| e.to_string())?
            .ok_or("closed before its header")?;
        let h = parse_header(&line)?;
        c.site = h.site.clone();
        c.kind = h.kind.clone();
        if h.kind != "results" {
            // Only query results are taken; raw data is never read, let alone kept.
            return Err(format!("'{}' data is not accepted, only results", h.kind));
        }
        let mut hits = Vec::with_capacity(h.count);
        for i in 0..h.count {
            let line = read_line(&mut reader)
                .map_err(|e| format!("result {}: {e}", i + 1))?
                .ok_or_else(|| format!("closed after {i} of {} results", h.count))?;
            hits.push(Hit::parse_line(&line).map_err(|e| format!("result {}: {e}", i + 1))?);
        }
        if read_line(&mut reader).map_err(|e| e.to_string())?.is_some() {
            return Err(format!("more than the {} results announced", h.count));
        }
        Ok(hits)
    })();
    let mut w = &conn;
    match result {
        Ok(hits) => {
            c.records = hits.len();
            c.accepted = true;
            let _ = writeln!(w, "ACK {}", hits.len());
            (c, hits)
        }
        Err(e) => {
            let _ = writeln!(w, "REFUSED {e}");
            c.error = Some(e);
            (c, Vec::new())
        }
    }
}

/// Runs the correlate service until `--expect` result sets are in (exit 0) or the timeout
/// passes ([`EXIT_UNDELIVERED`], with what it got).
pub fn correlate_main(args: &CorrelateArgs) -> Result<ExitCode> {
    if !(1..=MAX_EXPECT).contains(&args.expect) {
        bail!("--expect must be 1 to {MAX_EXPECT}, got {}", args.expect);
    }
    if !(1..=600_000).contains(&args.timeout_ms) {
        bail!("--timeout-ms must be 1 to 600000, got {}", args.timeout_ms);
    }
    let listener =
        TcpListener::bind(args.listen).with_context(|| format!("listening on {}", args.listen))?;
    listener.set_nonblocking(true)?;
    println!(
        "{}",
        serde_json::to_string(&Listening {
            listening: args.listen.to_string()
        })?
    );
    io::stdout().flush()?;
    let deadline = Instant::now() + Duration::from_millis(args.timeout_ms);
    let (tx, rx) = mpsc::channel();
    let mut started = 0usize;
    let mut connections = Vec::new();
    let mut sets: Vec<(String, Vec<Hit>)> = Vec::new();
    while sets.len() < args.expect && Instant::now() < deadline {
        match listener.accept() {
            Ok((conn, peer)) => {
                if started >= args.expect + SPARE_CONNECTIONS {
                    // Bounded: a flood of connections gets closed, not a thread each.
                    drop(conn);
                    continue;
                }
                started += 1;
                let _ = conn.set_nonblocking(false);
                let tx = tx.clone();
                std::thread::spawn(move || {
                    let _ = tx.send(serve(conn, peer));
                });
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e).context("accepting a connection"),
        }
        while let Ok((c, hits)) = rx.try_recv() {
            if c.accepted {
                sets.push((c.site.clone(), hits));
            }
            connections.push(c);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    // Deterministic merge order: by site name.
    sets.sort_by(|a, b| a.0.cmp(&b.0));
    let merged = data::merge(sets.iter().map(|(_, h)| h.as_slice()));
    let complete = sets.len() >= args.expect;
    let report = CorrelateReport {
        listen: args.listen.to_string(),
        connections,
        complete,
        merged,
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(if complete {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_UNDELIVERED)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_parse_and_bad_ones_are_named() {
        assert_eq!(
            parse_header("MARKET/1 results nola 12"),
            Ok(Header {
                kind: "results".into(),
                site: "nola".into(),
                count: 12
            })
        );
        for (bad, why) in [
            ("MARKET/2 results nola 1", "does not start"),
            ("MARKET/1 results nola", "is not"),
            ("MARKET/1 results NOLA 1", "site name"),
            ("MARKET/1 results nola x", "not a number"),
            ("MARKET/1 results nola 100000000", "at most"),
        ] {
            let e = parse_header(bad).expect_err(bad);
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn lines_are_bounded() {
        let long = format!("{}\n", "x".repeat(MAX_LINE + 10));
        let mut r = io::Cursor::new(long.into_bytes());
        assert!(read_line(&mut r).is_err());
        let mut r = io::Cursor::new(b"a\nb".to_vec());
        assert_eq!(read_line(&mut r).expect("a").as_deref(), Some("a"));
        assert_eq!(read_line(&mut r).expect("b").as_deref(), Some("b"));
        assert_eq!(read_line(&mut r).expect("eof"), None);
    }

    #[test]
    fn a_result_set_goes_through_on_loopback_and_raw_data_is_refused() {
        let listener = TcpListener::bind("[::1]:0").expect("bind");
        let at = listener.local_addr().expect("addr");
        let server = std::thread::spawn(move || {
            let mut out = Vec::new();
            for _ in 0..2 {
                let (c, peer) = listener.accept().expect("accept");
                out.push(serve(c, peer));
            }
            out
        });
        let lines = vec!["r000001,genome,2001,50".to_string()];
        assert_eq!(
            send(at, Duration::from_secs(2), "results", "nola", &lines),
            Ok(1)
        );
        let raw = vec!["r000001,genome,2001,50,subject-1".to_string()];
        let err = send(at, Duration::from_secs(2), "raw", "nola", &raw).expect_err("raw");
        assert_eq!(err.0, "rejected", "{err:?}");
        let served = server.join().expect("server");
        assert!(served[0].0.accepted && served[0].1.len() == 1);
        assert!(!served[1].0.accepted && served[1].1.is_empty());
    }
}
