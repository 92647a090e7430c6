//! `ilanet-cni`: the I/O shell around [`cni::run`]: real environment, bounded stdin, the
//! agent's unix socket; prints the result or the error object on stdout, logs on stderr, and
//! exits 0 or 1.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use agent::api::{ClientError, Request};
use cni::{config::MAX_STDIN, Host, Stdin};
use serde_json::Value;

struct Real;

impl Host for Real {
    fn env(&self, name: &str) -> Option<OsString> {
        std::env::var_os(name)
    }

    fn read_stdin(&mut self) -> Stdin {
        let mut buf = Vec::new();
        // One byte more than allowed, so that an oversized input is seen as such.
        match std::io::stdin()
            .lock()
            .take(MAX_STDIN as u64 + 1)
            .read_to_end(&mut buf)
        {
            Ok(_) => Stdin::Data(buf),
            Err(e) => Stdin::Failed(e.to_string()),
        }
    }

    fn call(
        &mut self,
        socket: &Path,
        req: &Request,
        timeout: Duration,
    ) -> Result<Value, ClientError> {
        agent::api::call(socket, req, timeout)
    }

    fn is_own_netns(&self, netns: &str) -> Result<bool, String> {
        let theirs = std::fs::metadata(netns).map_err(|e| format!("cannot open {netns}: {e}"))?;
        let ours = std::fs::metadata("/proc/self/ns/net")
            .map_err(|e| format!("cannot open /proc/self/ns/net: {e}"))?;
        Ok(theirs.dev() == ours.dev() && theirs.ino() == ours.ino())
    }
}

fn main() {
    let outcome = cni::run(&mut Real);
    {
        let mut err = std::io::stderr().lock();
        for line in &outcome.stderr {
            let _ = writeln!(err, "ilanet-cni: {line}");
        }
    }
    if !outcome.stdout.is_empty() {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", outcome.stdout);
        let _ = out.flush();
    }
    std::process::exit(outcome.exit_code);
}
