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
    let ident = (std::process::id() as u16) ^ (dst.segments()[7]);
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
