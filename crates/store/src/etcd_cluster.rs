//! Real `etcd` processes on 127.0.0.1 (Debian package `etcd-server`, etcd 3.4): for tests and for
//! `ilanet lab up --store etcd`.
//!
//! Each member gets its own data directory `<data_dir>/<name>/` and log file
//! `<data_dir>/<name>.log`, free loopback ports (found by binding port 0), and a static
//! `--initial-cluster`. Elections are tuned for loopback (`--heartbeat-interval 50
//! --election-timeout 500`), which also lowers etcd's minimum lease TTL to 1 s. Members accept
//! requests up to [`crate::ETCD_MAX_REQUEST_BYTES`] (`--max-request-bytes`), enough for values
//! of [`crate::MAX_VALUE_BYTES`]. A missing binary is [`ClusterError::MissingBinary`], which
//! names the Debian package (`etcd-server`).
//!
//! * [`EtcdCluster::start`] — owned processes: killed when the [`EtcdCluster`] is dropped (also
//!   when a test panics). [`EtcdCluster::stop`] stops them gracefully.
//! * [`EtcdCluster::start_detached`] — processes that outlive the caller (own process group,
//!   output to the log files); their pids and directories are returned in a serializable
//!   [`EtcdClusterInfo`], which [`stop_detached`] uses later (e.g. `lab down`).
//!
//! Neither removes `data_dir`: the caller owns it.
//!
//! **Secure clusters** ([`EtcdClusterOptions::secure_hosts`], [`EtcdCluster::start_secure`]):
//! a fresh CA and certificates in `<data_dir>/pki/` ([`crate::pki`]); members serve clients on
//! `https://` with `--client-cert-auth` and talk to each other over peer TLS with
//! `--peer-client-cert-auth`; once healthy, etcd auth is enabled with a `root` user and one user
//! per host with the role [`crate::access::host_role`] grants ([`crate::access::enable_auth`]).
//! Health is probed on a plain-HTTP `--listen-metrics-urls` listener on loopback (it serves
//! `/health` and `/metrics` only, no keys).

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The etcd binary of the Debian package.
pub const DEFAULT_ETCD_BIN: &str = "/usr/bin/etcd";
/// How long [`EtcdCluster::start`] waits for every member to report healthy.
pub const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
const LOG_TAIL_BYTES: u64 = 3000;

/// Errors of the cluster helper.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A file-system or process operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A member exited during start-up.
    #[error("etcd member {member} exited ({status}); log {log}:\n{tail}")]
    Exited {
        /// Member name.
        member: String,
        /// Exit status.
        status: String,
        /// Its log file.
        log: PathBuf,
        /// The end of its log.
        tail: String,
    },
    /// A member did not become healthy in time.
    #[error("etcd member {member} not healthy after {waited:?}; log {log}:\n{tail}")]
    Unhealthy {
        /// Member name.
        member: String,
        /// How long we waited.
        waited: Duration,
        /// Its log file.
        log: PathBuf,
        /// The end of its log.
        tail: String,
    },
    /// No member with this index, or it is in the wrong state.
    #[error("etcd member {0}: {1}")]
    Member(usize, String),
    /// Bad arguments.
    #[error("{0}")]
    Invalid(String),
    /// The etcd binary does not exist.
    #[error(
        "etcd binary {} not found: install the Debian package etcd-server \
         (apt-get install etcd-server), or point EtcdClusterOptions::etcd_bin at an etcd 3.4+",
        path.display()
    )]
    MissingBinary {
        /// The path tried.
        path: PathBuf,
    },
}

/// Result of the cluster helper.
pub type Result<T> = std::result::Result<T, ClusterError>;

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> ClusterError {
    let context = context.into();
    move |source| ClusterError::Io { context, source }
}

/// Options of [`EtcdCluster::start_with`].
#[derive(Debug, Clone)]
pub struct EtcdClusterOptions {
    /// Number of members (1, 3, 5, …).
    pub members: usize,
    /// Parent directory of the members' data directories and logs (created if missing).
    pub data_dir: PathBuf,
    /// The etcd binary.
    pub etcd_bin: PathBuf,
    /// How long to wait for the members to become healthy.
    pub startup_timeout: Duration,
    /// Whether the processes outlive the caller (own process group; not killed on drop).
    pub detached: bool,
    /// `Some(hosts)`: TLS with client certificates and etcd auth, a user (and certificate) per
    /// host plus `root`. `None`: plain HTTP without auth (`--insecure-store`).
    pub secure_hosts: Option<Vec<String>>,
}

impl EtcdClusterOptions {
    /// Defaults: `/usr/bin/etcd`, 20 s start-up timeout, owned processes.
    pub fn new(members: usize, data_dir: &Path) -> Self {
        EtcdClusterOptions {
            members,
            data_dir: data_dir.to_path_buf(),
            etcd_bin: PathBuf::from(DEFAULT_ETCD_BIN),
            startup_timeout: DEFAULT_STARTUP_TIMEOUT,
            detached: false,
            secure_hosts: None,
        }
    }
}

/// One member, as recorded for later (serializable).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EtcdMemberInfo {
    /// Member name (`m0`, `m1`, …).
    pub name: String,
    /// Process id of the running member, if any.
    pub pid: Option<u32>,
    /// The member's data directory.
    pub data_dir: PathBuf,
    /// The member's log file.
    pub log: PathBuf,
    /// Client URL (`http://127.0.0.1:<port>`, `https://` when secure).
    pub client_url: String,
    /// Peer URL.
    pub peer_url: String,
    /// Plain-HTTP listener for `/health` and `/metrics` (no keys), if any.
    #[serde(default)]
    pub metrics_url: Option<String>,
}

/// A cluster as recorded for later (serializable; see [`stop_detached`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EtcdClusterInfo {
    /// Parent directory of the members' data.
    pub data_dir: PathBuf,
    /// The etcd binary.
    pub etcd_bin: PathBuf,
    /// `--initial-cluster` value.
    pub initial_cluster: String,
    /// `--initial-cluster-token` value.
    pub token: String,
    /// The members.
    pub members: Vec<EtcdMemberInfo>,
    /// The PKI directory of a secure cluster (`None`: plain HTTP, no auth).
    #[serde(default)]
    pub pki: Option<PathBuf>,
}

impl EtcdClusterInfo {
    /// The client URLs of all members.
    pub fn client_endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    /// The certificate files of the etcd user `cn` (`root` or a host name) of a secure cluster.
    pub fn client_tls(&self, cn: &str) -> Option<crate::pki::ClientTls> {
        self.pki
            .as_ref()
            .map(|dir| crate::pki::Pki::open(dir).client(cn))
    }

    /// How to reach this cluster as the etcd user `cn` (`root` or a host name; ignored for a
    /// cluster without TLS).
    pub fn store_config(&self, cn: &str, connect_timeout: Duration) -> crate::StoreConfig {
        crate::StoreConfig::Etcd {
            endpoints: self.client_endpoints(),
            connect_timeout,
            tls: self.client_tls(cn),
        }
    }
}

/// A running etcd cluster. Dropping it kills the processes (unless detached).
#[derive(Debug)]
pub struct EtcdCluster {
    info: EtcdClusterInfo,
    children: Vec<Option<Child>>,
    detached: bool,
}

impl EtcdCluster {
    /// Starts `members` members under `data_dir` and waits until all are healthy.
    pub fn start(members: usize, data_dir: &Path) -> Result<EtcdCluster> {
        Self::start_with(&EtcdClusterOptions::new(members, data_dir))
    }

    /// Starts a secure cluster (TLS, client certificates, auth; see the module docs) with a
    /// user for each of `hosts`.
    pub fn start_secure(members: usize, data_dir: &Path, hosts: &[String]) -> Result<EtcdCluster> {
        let mut opts = EtcdClusterOptions::new(members, data_dir);
        opts.secure_hosts = Some(hosts.to_vec());
        Self::start_with(&opts)
    }

    /// Starts a cluster that outlives the caller and returns its record (for [`stop_detached`]).
    /// `secure_hosts`: as [`EtcdClusterOptions::secure_hosts`].
    pub fn start_detached(
        members: usize,
        data_dir: &Path,
        secure_hosts: Option<Vec<String>>,
    ) -> Result<EtcdClusterInfo> {
        let mut opts = EtcdClusterOptions::new(members, data_dir);
        opts.detached = true;
        opts.secure_hosts = secure_hosts;
        Ok(Self::start_with(&opts)?.detach())
    }

    /// Starts a cluster with these options. Retries (up to 3 times, with new ports) when a port
    /// picked as free was taken meanwhile.
    pub fn start_with(opts: &EtcdClusterOptions) -> Result<EtcdCluster> {
        if opts.members == 0 {
            return Err(ClusterError::Invalid(
                "an etcd cluster needs at least one member".into(),
            ));
        }
        fs::create_dir_all(&opts.data_dir)
            .map_err(io_err(format!("creating {}", opts.data_dir.display())))?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Self::try_start(opts, attempt) {
                Err(e) if attempt < 3 && e.to_string().contains("address already in use") => {
                    log::warn!("etcd cluster: port taken meanwhile, retrying: {e}");
                }
                other => return other,
            }
        }
    }

    fn try_start(opts: &EtcdClusterOptions, attempt: u32) -> Result<EtcdCluster> {
        let ports = free_ports(3 * opts.members).map_err(io_err("finding free ports"))?;
        let pki = match &opts.secure_hosts {
            None => None,
            Some(hosts) => {
                let dir = opts.data_dir.join("pki");
                let names: Vec<String> = (0..opts.members).map(|i| format!("m{i}")).collect();
                crate::pki::Pki::generate(&dir, &names, &[], hosts).map_err(|e| {
                    ClusterError::Invalid(format!("generating the cluster's certificates: {e}"))
                })?;
                Some(dir)
            }
        };
        let scheme = if pki.is_some() { "https" } else { "http" };
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let token = format!("ilanet-{}-{nanos}", std::process::id());
        let members: Vec<EtcdMemberInfo> = (0..opts.members)
            .map(|i| {
                let name = format!("m{i}");
                EtcdMemberInfo {
                    data_dir: opts.data_dir.join(&name),
                    log: opts.data_dir.join(format!("{name}.log")),
                    client_url: format!("{scheme}://127.0.0.1:{}", ports[3 * i]),
                    peer_url: format!("{scheme}://127.0.0.1:{}", ports[3 * i + 1]),
                    metrics_url: Some(format!("http://127.0.0.1:{}", ports[3 * i + 2])),
                    pid: None,
                    name,
                }
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = EtcdCluster {
            info: EtcdClusterInfo {
                data_dir: opts.data_dir.clone(),
                etcd_bin: opts.etcd_bin.clone(),
                initial_cluster,
                token,
                members,
                pki,
            },
            children: (0..opts.members).map(|_| None).collect(),
            detached: opts.detached,
        };
        for i in 0..opts.members {
            let m = &cluster.info.members[i];
            if attempt > 1 || m.data_dir.exists() {
                // A previous attempt (or run) left data for another cluster: start clean.
                let _ = fs::remove_dir_all(&m.data_dir);
            }
            cluster.spawn(i)?;
        }
        // On error, `cluster` is dropped here and kills what it started.
        cluster.wait_healthy(&(0..opts.members).collect::<Vec<_>>(), opts.startup_timeout)?;
        if let Some(hosts) = &opts.secure_hosts {
            cluster.enable_auth(hosts)?;
        }
        Ok(cluster)
    }

    fn spawn(&mut self, i: usize) -> Result<()> {
        let info = &self.info;
        let m = &info.members[i];
        fs::create_dir_all(&m.data_dir)
            .map_err(io_err(format!("creating {}", m.data_dir.display())))?;
        let mut log = File::options()
            .create(true)
            .append(true)
            .open(&m.log)
            .map_err(io_err(format!("opening {}", m.log.display())))?;
        let _ = writeln!(log, "--- ilanet: starting {} ---", m.name);
        let log_err = log
            .try_clone()
            .map_err(io_err(format!("opening {}", m.log.display())))?;
        let mut cmd = Command::new(&info.etcd_bin);
        cmd.arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&m.data_dir)
            .arg("--listen-client-urls")
            .arg(&m.client_url)
            .arg("--advertise-client-urls")
            .arg(&m.client_url)
            .arg("--listen-peer-urls")
            .arg(&m.peer_url)
            .arg("--initial-advertise-peer-urls")
            .arg(&m.peer_url)
            .arg("--initial-cluster")
            .arg(&info.initial_cluster)
            .arg("--initial-cluster-token")
            .arg(&info.token)
            .arg("--initial-cluster-state")
            .arg("new")
            .arg("--heartbeat-interval")
            .arg("50")
            .arg("--election-timeout")
            .arg("500")
            // Room for ilanet's largest value (etcd's default is 1.5 MiB).
            .arg("--max-request-bytes")
            .arg(crate::ETCD_MAX_REQUEST_BYTES.to_string())
            .arg("--logger")
            .arg("zap")
            .arg("--log-outputs")
            .arg("stderr");
        if let Some(url) = &m.metrics_url {
            cmd.arg("--listen-metrics-urls").arg(url);
        }
        if let Some(dir) = &info.pki {
            let pki = crate::pki::Pki::open(dir);
            let (cert, key) = pki.member(&m.name);
            cmd.arg("--client-cert-auth")
                .arg("--trusted-ca-file")
                .arg(pki.ca())
                .arg("--cert-file")
                .arg(&cert)
                .arg("--key-file")
                .arg(&key)
                .arg("--peer-client-cert-auth")
                .arg("--peer-trusted-ca-file")
                .arg(pki.ca())
                .arg("--peer-cert-file")
                .arg(&cert)
                .arg("--peer-key-file")
                .arg(&key);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err));
        // etcd reads ETCD_* variables as flags and refuses conflicts with the command line.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("ETCD_") {
                cmd.env_remove(&k);
            }
        }
        if let Some(arch) = unsupported_arch() {
            cmd.env("ETCD_UNSUPPORTED_ARCH", arch);
        }
        if self.detached {
            // Own process group: a Ctrl-C of the caller's terminal does not reach it.
            cmd.process_group(0);
        }
        let child = cmd.spawn().map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound {
                ClusterError::MissingBinary {
                    path: info.etcd_bin.clone(),
                }
            } else {
                ClusterError::Io {
                    context: format!("starting {} for member {}", info.etcd_bin.display(), m.name),
                    source,
                }
            }
        })?;
        self.info.members[i].pid = Some(child.id());
        self.children[i] = Some(child);
        Ok(())
    }

    /// Creates the users and roles and enables auth (as `root`, from a thread of its own: the
    /// caller may be inside an async runtime).
    fn enable_auth(&self, hosts: &[String]) -> Result<()> {
        let cfg = self
            .info
            .store_config(crate::pki::ROOT_USER, DEFAULT_STARTUP_TIMEOUT);
        let hosts = hosts.to_vec();
        let run = move || -> std::result::Result<(), crate::StoreError> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| crate::StoreError::Backend(format!("tokio runtime: {e}")))?;
            rt.block_on(async {
                let store = crate::Store::connect(&cfg).await?;
                crate::access::enable_auth(&store, &hosts).await
            })
        };
        std::thread::spawn(run)
            .join()
            .map_err(|_| ClusterError::Invalid("enabling etcd auth panicked".into()))?
            .map_err(|e| ClusterError::Invalid(format!("enabling etcd auth: {e}")))
    }

    fn wait_healthy(&mut self, members: &[usize], timeout: Duration) -> Result<()> {
        let start = Instant::now();
        let mut pending: Vec<usize> = members.to_vec();
        while !pending.is_empty() {
            let mut still = Vec::new();
            for &i in &pending {
                if let Some(child) = self.children[i].as_mut() {
                    if let Ok(Some(status)) = child.try_wait() {
                        self.children[i] = None;
                        self.info.members[i].pid = None;
                        let m = &self.info.members[i];
                        return Err(ClusterError::Exited {
                            member: m.name.clone(),
                            status: status.to_string(),
                            log: m.log.clone(),
                            tail: log_tail(&m.log),
                        });
                    }
                }
                let m = &self.info.members[i];
                if !member_healthy(m.metrics_url.as_deref().unwrap_or(&m.client_url)) {
                    still.push(i);
                }
            }
            pending = still;
            if pending.is_empty() {
                break;
            }
            if start.elapsed() > timeout {
                let m = &self.info.members[pending[0]];
                return Err(ClusterError::Unhealthy {
                    member: m.name.clone(),
                    waited: start.elapsed(),
                    log: m.log.clone(),
                    tail: log_tail(&m.log),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        log::debug!("etcd cluster healthy after {:?}", start.elapsed());
        Ok(())
    }

    /// The client URLs of all members (killed ones included).
    pub fn client_endpoints(&self) -> Vec<String> {
        self.info.client_endpoints()
    }

    /// The client URL of member `i`.
    pub fn member_endpoint(&self, i: usize) -> Option<String> {
        self.info.members.get(i).map(|m| m.client_url.clone())
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.info.members.len()
    }

    /// Whether the cluster has no members (never true for a started cluster).
    pub fn is_empty(&self) -> bool {
        self.info.members.is_empty()
    }

    /// The record of this cluster (pids of running members).
    pub fn info(&self) -> &EtcdClusterInfo {
        &self.info
    }

    /// Whether member `i` runs.
    pub fn is_running(&mut self, i: usize) -> bool {
        match self.children.get_mut(i) {
            Some(Some(c)) => matches!(c.try_wait(), Ok(None)),
            _ => false,
        }
    }

    /// Kills member `i` (SIGKILL: a crash) and reaps it.
    pub fn kill_member(&mut self, i: usize) -> Result<()> {
        let child = self
            .children
            .get_mut(i)
            .ok_or_else(|| ClusterError::Member(i, "no such member".into()))?
            .take()
            .ok_or_else(|| ClusterError::Member(i, "not running".into()));
        let mut child = child?;
        let _ = child.kill();
        let _ = child.wait();
        self.info.members[i].pid = None;
        Ok(())
    }

    /// Restarts a killed member on its data directory and waits until it is healthy.
    pub fn restart_member(&mut self, i: usize) -> Result<()> {
        if i >= self.len() {
            return Err(ClusterError::Member(i, "no such member".into()));
        }
        if self.is_running(i) {
            return Err(ClusterError::Member(i, "already running".into()));
        }
        self.children[i] = None;
        self.spawn(i)?;
        self.wait_healthy(&[i], DEFAULT_STARTUP_TIMEOUT)
    }

    /// Stops all members gracefully (SIGTERM, then SIGKILL after 5 s). Data stays on disk.
    pub fn stop(mut self) -> Result<()> {
        let pids: Vec<u32> = self.children.iter().flatten().map(|c| c.id()).collect();
        for pid in &pids {
            signal(*pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for slot in self.children.iter_mut() {
            if let Some(mut child) = slot.take() {
                loop {
                    match child.try_wait() {
                        Ok(Some(_)) | Err(_) => break,
                        Ok(None) if Instant::now() >= deadline => {
                            let _ = child.kill();
                            let _ = child.wait();
                            break;
                        }
                        Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            }
        }
        for m in &mut self.info.members {
            m.pid = None;
        }
        Ok(())
    }

    /// Lets the processes run on after this value is dropped; returns their record.
    pub fn detach(mut self) -> EtcdClusterInfo {
        self.detached = true;
        for c in &mut self.children {
            // Dropping a `Child` neither kills nor waits.
            c.take();
        }
        self.info.clone()
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        // Detached clusters own no children any more (see `detach`); a failed detached start
        // still kills what it started.
        for child in self.children.iter_mut().filter_map(Option::take) {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Stops a detached cluster: SIGTERM to each recorded pid that is still that member's etcd
/// (checked through `/proc/<pid>/cmdline`, so a reused pid is left alone), SIGKILL after 5 s.
/// Data stays on disk.
pub fn stop_detached(info: &EtcdClusterInfo) -> Result<()> {
    let pids: Vec<u32> = info
        .members
        .iter()
        .filter_map(|m| m.pid.filter(|pid| is_member_process(*pid, m)))
        .collect();
    for pid in &pids {
        signal(*pid, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    for pid in pids {
        while process_alive(pid) {
            if Instant::now() >= deadline {
                signal(pid, libc::SIGKILL);
                std::thread::sleep(Duration::from_millis(50));
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(())
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

fn is_member_process(pid: u32, m: &EtcdMemberInfo) -> bool {
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let dir = m.data_dir.as_os_str().as_encoded_bytes();
    args.first().is_some_and(|a0| a0.ends_with(b"etcd")) && args.contains(&dir)
}

/// Alive and not a zombie.
fn process_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

fn unsupported_arch() -> Option<&'static str> {
    match std::env::consts::ARCH {
        "x86_64" => None,
        "aarch64" => Some("arm64"),
        "powerpc64" => Some("ppc64le"),
        "s390x" => Some("s390x"),
        "x86" => Some("386"),
        "arm" => Some("arm"),
        other => Some(other),
    }
}

fn free_ports(n: usize) -> io::Result<Vec<u16>> {
    // Hold all listeners until every port is chosen so that they are distinct.
    let listeners = (0..n)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<io::Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect()
}

/// `GET /health` on a client URL (`http://127.0.0.1:port`): etcd answers `{"health":"true"}`
/// once the member has a leader and serves reads.
pub fn member_healthy(client_url: &str) -> bool {
    let Some(hostport) = client_url.strip_prefix("http://") else {
        return false;
    };
    let Ok(addr) = hostport.trim_end_matches('/').parse::<SocketAddr>() else {
        return false;
    };
    let attempt = || -> io::Result<String> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(200))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.set_write_timeout(Some(Duration::from_secs(1)))?;
        s.write_all(
            format!("GET /health HTTP/1.0\r\nHost: {hostport}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    };
    attempt().is_ok_and(|r| r.contains("\"health\":\"true\""))
}

/// The last few KB of a log file (for error messages).
pub fn log_tail(path: &Path) -> String {
    let read = || -> io::Result<String> {
        let mut f = File::open(path)?;
        let len = f.metadata()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL_BYTES)))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    read().unwrap_or_else(|e| format!("(cannot read {}: {e})", path.display()))
}
