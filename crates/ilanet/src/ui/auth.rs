//! Access control of the dashboard (pure): the secret token, its cookie, and which origins and
//! hosts may talk to the server. A terminal is a root shell, so everything is refused unless
//! the visitor holds the token.

use std::net::SocketAddr;

/// Name of the session cookie.
pub const COOKIE: &str = "ilanet_ui";

/// The 128-bit secret printed in the URL.
#[derive(Clone)]
pub struct Token(String);

impl Token {
    /// A fresh random token (32 hex digits from the OS's random source).
    pub fn random() -> anyhow::Result<Self> {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes)
            .map_err(|e| anyhow::anyhow!("reading the OS random source: {e}"))?;
        Ok(Self(bytes.iter().map(|b| format!("{b:02x}")).collect()))
    }

    /// A token with a known value (tests).
    #[cfg(test)]
    pub fn from_str_for_test(s: &str) -> Self {
        Self(s.to_string())
    }

    /// The token's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Compares in constant time (no early exit on the first differing byte).
    pub fn matches(&self, candidate: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), candidate.as_bytes());
        if a.len() != b.len() {
            return false;
        }
        a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }

    /// The `Set-Cookie` value that carries the session.
    pub fn set_cookie(&self) -> String {
        format!("{COOKIE}={}; HttpOnly; SameSite=Strict; Path=/", self.0)
    }

    /// Whether a `Cookie` header carries the session.
    pub fn in_cookie_header(&self, header: &str) -> bool {
        header
            .split(';')
            .filter_map(|kv| kv.trim().split_once('='))
            .any(|(k, v)| k == COOKIE && self.matches(v))
    }

    /// Whether a query string carries `token=<the token>`.
    pub fn in_query(&self, query: &str) -> bool {
        query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .any(|(k, v)| k == "token" && self.matches(v))
    }
}

/// The origins (`scheme://host:port`) the server answers as: its bound address, and `localhost`
/// when bound to loopback. Checked against `Host` (DNS rebinding) and WebSocket `Origin`
/// (cross-site WebSocket hijacking).
#[derive(Debug, Clone)]
pub struct Origins {
    hosts: Vec<String>,
    /// Bound to 0.0.0.0 / [::]: the host part cannot be known; any Host is served, and an
    /// Origin must then equal `http://<Host>`.
    any_host: bool,
}

impl Origins {
    /// The origins of a server bound to `addr`.
    pub fn for_addr(addr: SocketAddr) -> Self {
        let mut hosts = vec![addr.to_string()];
        if addr.ip().is_loopback() {
            hosts.push(format!("localhost:{}", addr.port()));
        }
        Self {
            hosts,
            any_host: addr.ip().is_unspecified(),
        }
    }

    /// Whether a request's `Host` header names this server.
    pub fn host_ok(&self, host: Option<&str>) -> bool {
        match host {
            Some(h) => self.any_host || self.hosts.iter().any(|x| x.eq_ignore_ascii_case(h)),
            None => false,
        }
    }

    /// Whether a WebSocket upgrade's `Origin` equals the origin the page was served from.
    pub fn origin_ok(&self, origin: Option<&str>, host: Option<&str>) -> bool {
        let (Some(origin), Some(host)) = (origin, host) else {
            return false;
        };
        if !self.host_ok(Some(host)) {
            return false;
        }
        origin.eq_ignore_ascii_case(&format!("http://{host}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_tokens_are_128_bit_and_differ() {
        let a = Token::random().unwrap();
        let b = Token::random().unwrap();
        assert_eq!(a.as_str().len(), 32);
        assert!(a.as_str().chars().all(|c| c.is_ascii_hexdigit()));
        assert!(!a.matches(b.as_str()));
    }

    #[test]
    fn token_in_cookie_and_query() {
        let t = Token::from_str_for_test("00112233445566778899aabbccddeeff");
        assert!(t.in_cookie_header("a=b; ilanet_ui=00112233445566778899aabbccddeeff"));
        assert!(!t.in_cookie_header("ilanet_ui=00112233445566778899aabbccddeefe"));
        assert!(!t.in_cookie_header("other=00112233445566778899aabbccddeeff"));
        assert!(t.in_query("x=1&token=00112233445566778899aabbccddeeff"));
        assert!(!t.in_query("token="));
        assert!(!t.matches("00112233"));
        assert!(t.set_cookie().contains("HttpOnly") && t.set_cookie().contains("SameSite=Strict"));
    }

    #[test]
    fn origins_of_a_loopback_server() {
        let o = Origins::for_addr("127.0.0.1:4000".parse().unwrap());
        assert!(o.host_ok(Some("127.0.0.1:4000")));
        assert!(o.host_ok(Some("localhost:4000")));
        assert!(!o.host_ok(Some("evil.example:4000")), "DNS rebinding");
        assert!(!o.host_ok(None));
        assert!(o.origin_ok(Some("http://127.0.0.1:4000"), Some("127.0.0.1:4000")));
        assert!(!o.origin_ok(Some("http://evil.example"), Some("127.0.0.1:4000")));
        assert!(!o.origin_ok(None, Some("127.0.0.1:4000")));
        assert!(!o.origin_ok(Some("http://localhost:4000"), Some("127.0.0.1:4000")));
    }
}
