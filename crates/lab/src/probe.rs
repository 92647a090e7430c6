//! Reachability probes run from inside container namespaces: ICMPv6 echo and a TCP transfer
//! whose content is verified byte for byte on the way back.

use std::io::{self, Read, Write};
use std::mem::MaybeUninit;
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use serde::Serialize;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::LabError;
use hostnet::netns::NetnsGuard;

const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;

fn io_err(what: String) -> impl FnOnce(io::Error) -> LabError {
    move |source| LabError::Os { what, source }
}

/// Sends one ICMPv6 echo request from namespace `ns` to `dst` and waits for the matching reply.
/// Returns the round-trip time.
pub fn ping(ns: &str, dst: Ipv6Addr, timeout: Duration) -> Result<Duration, LabError> {
    let socket = {
        let _guard = NetnsGuard::enter(ns)?;
        Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))
            .map_err(io_err(format!("opening an ICMPv6 socket in '{ns}'")))?
    };
    // Identifier and payload unique to this probe so a stray reply cannot be mistaken for ours.
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let ident = (std::process::id() as u16)
        ^ dst.segments()[6]
        ^ NEXT.fetch_add(0x101, std::sync::atomic::Ordering::Relaxed);
    let seq: u16 = 1;
    let payload = dst.octets();
    let mut request = vec![ICMPV6_ECHO_REQUEST, 0, 0, 0];
    request.extend_from_slice(&ident.to_be_bytes());
    request.extend_from_slice(&seq.to_be_bytes());
    request.extend_from_slice(&payload);
    // The kernel fills in the ICMPv6 checksum on raw ICMPv6 sockets.
    let to = SockAddr::from(SocketAddrV6::new(dst, 0, 0, 0));
    let start = Instant::now();
    socket
        .send_to(&request, &to)
        .map_err(io_err(format!("sending echo request from '{ns}' to {dst}")))?;
    let mut buf = [MaybeUninit::<u8>::uninit(); 1500];
    loop {
        let left = timeout.saturating_sub(start.elapsed());
        if left.is_zero() {
            return Err(LabError::Unreachable(format!(
                "no ICMPv6 echo reply from {dst} to '{ns}' within {timeout:?}"
            )));
        }
        socket
            .set_read_timeout(Some(left))
            .map_err(io_err("setting a socket timeout".into()))?;
        let (n, from) = match socket.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => return Err(io_err(format!("receiving in '{ns}'"))(e)),
        };
        // SAFETY: recv_from initialised the first n bytes.
        let got: Vec<u8> = buf[..n]
            .iter()
            .map(|b| unsafe { b.assume_init() })
            .collect();
        let from_ok = from.as_socket_ipv6().map(|a| *a.ip()) == Some(dst);
        if from_ok
            && got.len() >= 8 + payload.len()
            && got[0] == ICMPV6_ECHO_REPLY
            && got[4..6] == ident.to_be_bytes()
            && got[6..8] == seq.to_be_bytes()
            && got[8..8 + payload.len()] == payload
        {
            return Ok(start.elapsed());
        }
    }
}

/// Outcome of a verified TCP transfer.
#[derive(Debug, Clone, Serialize)]
pub struct Transfer {
    /// Bytes sent and received back intact.
    pub bytes: usize,
    /// Wall time of the exchange.
    pub elapsed: Duration,
}

/// Pseudo-random but reproducible content, so a corrupted or reordered byte is detected.
fn content(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            // xorshift64
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Runs an echo server in namespace `server_ns` on `[addr]:port`, connects from `client_ns`,
/// sends `len` bytes and checks that exactly the same bytes come back.
pub fn tcp_transfer(
    client_ns: &str,
    server_ns: &str,
    addr: Ipv6Addr,
    port: u16,
    len: usize,
    timeout: Duration,
) -> Result<Transfer, LabError> {
    let listener = {
        let _guard = NetnsGuard::enter(server_ns)?;
        TcpListener::bind(SocketAddrV6::new(addr, port, 0, 0)).map_err(io_err(format!(
            "listening on [{addr}]:{port} in '{server_ns}'"
        )))?
    };
    listener
        .set_nonblocking(false)
        .map_err(io_err("configuring the listener".into()))?;
    let server = std::thread::spawn(move || -> io::Result<()> {
        let (mut conn, _) = listener.accept()?;
        conn.set_read_timeout(Some(timeout))?;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = conn.read(&mut buf)?;
            if n == 0 {
                return conn.shutdown(std::net::Shutdown::Write);
            }
            conn.write_all(&buf[..n])?;
        }
    });
    let data = content(len, u64::from(port) << 32 | len as u64);
    let start = Instant::now();
    let stream = {
        let _guard = NetnsGuard::enter(client_ns)?;
        TcpStream::connect_timeout(
            &SocketAddr::V6(SocketAddrV6::new(addr, port, 0, 0)),
            timeout,
        )
    };
    let stream = match stream {
        Ok(s) => s,
        Err(e) => {
            // Unblock the server thread: connect to it locally from its own namespace.
            let _ = NetnsGuard::enter(server_ns)
                .map(|_g| TcpStream::connect(SocketAddrV6::new(addr, port, 0, 0)).map(drop));
            let _ = server.join();
            return Err(LabError::Unreachable(format!(
                "TCP connect from '{client_ns}' to [{addr}]:{port} failed: {e}"
            )));
        }
    };
    stream
        .set_read_timeout(Some(timeout))
        .map_err(io_err("setting a socket timeout".into()))?;
    let mut writer = stream
        .try_clone()
        .map_err(io_err("cloning the client socket".into()))?;
    let to_send = data.clone();
    // Write on a thread so a full receive buffer cannot deadlock the echo.
    let sender = std::thread::spawn(move || -> io::Result<()> {
        writer.write_all(&to_send)?;
        writer.shutdown(std::net::Shutdown::Write)
    });
    let mut echoed = Vec::with_capacity(len);
    let mut reader = stream;
    let read = reader.read_to_end(&mut echoed);
    let sent = sender
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("sender panicked")));
    let served = server
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("server panicked")));
    let failure = |what: &str, e: io::Error| {
        LabError::Unreachable(format!(
            "TCP transfer '{client_ns}' -> [{addr}]:{port}: {what}: {e}"
        ))
    };
    read.map_err(|e| failure("reading the echo", e))?;
    sent.map_err(|e| failure("sending", e))?;
    served.map_err(|e| failure("echo server", e))?;
    if echoed != data {
        let first_bad = echoed
            .iter()
            .zip(&data)
            .position(|(a, b)| a != b)
            .unwrap_or(echoed.len().min(data.len()));
        return Err(LabError::Unreachable(format!(
            "TCP transfer '{client_ns}' -> [{addr}]:{port}: {} of {len} bytes came back, first difference at byte {first_bad}",
            echoed.len()
        )));
    }
    Ok(Transfer {
        bytes: len,
        elapsed: start.elapsed(),
    })
}

/// TCP and UDP echo servers on one address inside a namespace, serving until dropped.
pub struct EchoServers {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl EchoServers {
    /// Starts a TCP echo server on `[addr]:tcp_port` and a UDP one on `[addr]:udp_port`.
    pub fn start(ns: &str, addr: Ipv6Addr, tcp_port: u16, udp_port: u16) -> Result<Self, LabError> {
        use std::sync::atomic::{AtomicBool, Ordering};
        let (tcp, udp) = {
            let _guard = NetnsGuard::enter(ns)?;
            let tcp = TcpListener::bind(SocketAddrV6::new(addr, tcp_port, 0, 0)).map_err(
                io_err(format!("listening on [{addr}]:{tcp_port}/tcp in '{ns}'")),
            )?;
            let udp = std::net::UdpSocket::bind(SocketAddrV6::new(addr, udp_port, 0, 0))
                .map_err(io_err(format!("binding [{addr}]:{udp_port}/udp in '{ns}'")))?;
            (tcp, udp)
        };
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        // Short timeouts so the threads notice the stop flag.
        tcp.set_nonblocking(true)
            .map_err(io_err("configuring the TCP echo server".into()))?;
        udp.set_read_timeout(Some(Duration::from_millis(50)))
            .map_err(io_err("configuring the UDP echo server".into()))?;
        let s1 = std::sync::Arc::clone(&stop);
        let t1 = std::thread::spawn(move || {
            while !s1.load(Ordering::Relaxed) {
                match tcp.accept() {
                    Ok((mut c, _)) => {
                        let _ = c.set_nonblocking(false);
                        let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
                        std::thread::spawn(move || {
                            let mut buf = [0u8; 4096];
                            while let Ok(n) = c.read(&mut buf) {
                                if n == 0 || c.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        let s2 = std::sync::Arc::clone(&stop);
        let t2 = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !s2.load(Ordering::Relaxed) {
                if let Ok((n, from)) = udp.recv_from(&mut buf) {
                    let _ = udp.send_to(&buf[..n], from);
                }
            }
        });
        Ok(Self {
            stop,
            threads: vec![t1, t2],
        })
    }
}

impl Drop for EchoServers {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Connects from `ns` to `[addr]:port`, sends a few bytes and expects them echoed.
pub fn tcp_echo(ns: &str, addr: Ipv6Addr, port: u16, timeout: Duration) -> Result<(), LabError> {
    let fail = |what: &str, e: io::Error| {
        LabError::Unreachable(format!("tcp '{ns}' -> [{addr}]:{port}: {what}: {e}"))
    };
    let mut s = {
        let _guard = NetnsGuard::enter(ns)?;
        TcpStream::connect_timeout(
            &SocketAddr::V6(SocketAddrV6::new(addr, port, 0, 0)),
            timeout,
        )
        .map_err(|e| fail("connect", e))?
    };
    s.set_read_timeout(Some(timeout))
        .map_err(|e| fail("timeout", e))?;
    let msg = *b"ilanet-probe";
    s.write_all(&msg).map_err(|e| fail("send", e))?;
    let mut back = [0u8; 12];
    s.read_exact(&mut back).map_err(|e| fail("echo", e))?;
    if back != msg {
        return Err(LabError::Unreachable(format!(
            "tcp '{ns}' -> [{addr}]:{port}: corrupted echo"
        )));
    }
    Ok(())
}

/// Sends a UDP datagram from `ns` to `[addr]:port` and expects it echoed.
pub fn udp_echo(ns: &str, addr: Ipv6Addr, port: u16, timeout: Duration) -> Result<(), LabError> {
    let fail = |what: &str, e: io::Error| {
        LabError::Unreachable(format!("udp '{ns}' -> [{addr}]:{port}: {what}: {e}"))
    };
    let sock = {
        let _guard = NetnsGuard::enter(ns)?;
        std::net::UdpSocket::bind(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, 0, 0, 0))
            .map_err(|e| fail("bind", e))?
    };
    sock.set_read_timeout(Some(timeout))
        .map_err(|e| fail("timeout", e))?;
    let msg = content(32, u64::from(port));
    sock.send_to(&msg, SocketAddrV6::new(addr, port, 0, 0))
        .map_err(|e| fail("send", e))?;
    let mut buf = [0u8; 64];
    let deadline = Instant::now() + timeout;
    loop {
        match sock.recv_from(&mut buf) {
            Ok((n, from)) if from.ip() == std::net::IpAddr::V6(addr) && buf[..n] == msg[..] => {
                return Ok(())
            }
            Ok(_) if Instant::now() < deadline => continue,
            Ok(_) => {
                return Err(LabError::Unreachable(format!(
                    "udp '{ns}' -> [{addr}]:{port}: no echo"
                )))
            }
            Err(e) => return Err(fail("echo", e)),
        }
    }
}

/// A long-lived TCP connection from `client_ns` to `server_ns` that echoes 1 KiB chunks until
/// `stop` is set: the returned thread yields the bytes echoed and verified, or where it broke.
/// For checking that a connection survives an agent restart or a fault.
pub fn echo_stream(
    client_ns: &str,
    server_ns: &str,
    addr: Ipv6Addr,
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Result<std::thread::JoinHandle<Result<usize, String>>, LabError> {
    let at = SocketAddrV6::new(addr, port, 0, 0);
    let listener = {
        let _g = NetnsGuard::enter(server_ns)?;
        TcpListener::bind(at).map_err(io_err(format!(
            "listening on [{addr}]:{port} in {server_ns}"
        )))?
    };
    std::thread::spawn(move || -> io::Result<()> {
        let (mut c, _) = listener.accept()?;
        let mut buf = [0u8; 4096];
        loop {
            let n = c.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            c.write_all(&buf[..n])?;
        }
    });
    let mut s = {
        let _g = NetnsGuard::enter(client_ns)?;
        TcpStream::connect_timeout(&SocketAddr::V6(at), Duration::from_secs(3)).map_err(io_err(
            format!("connecting to [{addr}]:{port} from {client_ns}"),
        ))?
    };
    Ok(std::thread::spawn(move || {
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        let mut total = 0usize;
        let mut i = 0u8;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let chunk: Vec<u8> = (0..1024).map(|k| i.wrapping_add(k as u8)).collect();
            s.write_all(&chunk)
                .map_err(|e| format!("write after {total} bytes: {e}"))?;
            let mut back = vec![0u8; chunk.len()];
            s.read_exact(&mut back)
                .map_err(|e| format!("read after {total} bytes: {e}"))?;
            if back != chunk {
                return Err(format!("corrupted echo after {total} bytes"));
            }
            total += chunk.len();
            i = i.wrapping_add(1);
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(total)
    }))
}

#[cfg(test)]
mod tests {
    use super::content;

    #[test]
    fn content_depends_on_seed_and_is_not_constant() {
        let a = content(4096, 1);
        let b = content(4096, 2);
        assert_ne!(a, b);
        assert!(a.iter().any(|&x| x != a[0]));
        assert_eq!(a, content(4096, 1));
    }
}
