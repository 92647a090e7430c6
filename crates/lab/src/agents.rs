//! The lab's agents: one process running every host's agent on the embedded store, or (with
//! etcd) a 3-member etcd cluster on loopback and one agent process per host. They outlive
//! `ilanet lab up` and are stopped by `lab down`.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agent::api::{self, AgentStatus, Request};
use agent::AgentConfig;
use serde::{Deserialize, Serialize};

use crate::plan::{HostPlan, Plan, UPLINK_IFNAME};
use crate::state::{self, LabState};
use crate::LabError;

/// Which mapping store the lab's agents use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StoreKind {
    /// One agent process for all hosts, sharing an in-process store.
    #[default]
    Embedded,
    /// A real 3-member etcd cluster on loopback, one agent process per host.
    Etcd,
}

impl std::fmt::Display for StoreKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StoreKind::Embedded => "embedded",
            StoreKind::Etcd => "etcd",
        })
    }
}

impl std::str::FromStr for StoreKind {
    type Err = LabError;
    fn from_str(s: &str) -> Result<Self, LabError> {
        match s {
            "embedded" => Ok(StoreKind::Embedded),
            "etcd" => Ok(StoreKind::Etcd),
            other => Err(LabError::Invalid(format!(
                "unknown store '{other}': expected embedded or etcd"
            ))),
        }
    }
}

/// How long `lab up` waits for the agents to be connected to the store.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Time allowed for one API call.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Directory of a lab's runtime files (sockets, agent state, logs, etcd data).
pub fn run_dir(lab: &str) -> PathBuf {
    state::state_dir().join(lab)
}

/// Removes a lab's runtime directory; with `keep_logs` its `*.log` files stay (a failed
/// `lab up` points the user at them).
pub fn remove_run_dir(dir: &Path, keep_logs: bool) -> std::io::Result<()> {
    if !keep_logs {
        return match fs::remove_dir_all(dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        };
    }
    let entries = match fs::read_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        other => other?,
    };
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        if path.extension().is_some_and(|x| x == "log") {
            continue;
        }
        if entry.file_type()?.is_dir() {
            fs::remove_dir_all(&path)?;
        } else {
            fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// The last lines of a lab's agent logs, for an error message.
fn log_tails(lab: &str) -> String {
    let Ok(entries) = fs::read_dir(run_dir(lab)) else {
        return String::new();
    };
    let mut out = String::new();
    let mut logs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|x| x == "log")
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("agent"))
        })
        .collect();
    logs.sort();
    for log in logs {
        let text = fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = &lines[lines.len().saturating_sub(5)..];
        if !tail.is_empty() {
            out.push_str(&format!(
                "\n--- {} (last lines) ---\n{}",
                log.display(),
                tail.join("\n")
            ));
        }
    }
    out
}

/// The API socket of a host's agent.
pub fn socket_path(lab: &str, host: &str) -> PathBuf {
    run_dir(lab).join(format!("{host}.sock"))
}

/// The configuration of a lab host's agent.
pub fn agent_config(plan: &Plan, host: &HostPlan, lease_ttl: Duration) -> AgentConfig {
    let dir = run_dir(&plan.name);
    AgentConfig {
        host: host.name.clone(),
        host_netns: host.netns.clone(),
        uplink: UPLINK_IFNAME.to_string(),
        locator: host.locator,
        underlay: host.uplink_addr,
        tenants: plan.tenants.clone(),
        csum_mode: plan.csum_mode,
        pin_dir: state::host_pin_dir(&plan.name, &host.name),
        state_file: dir.join(&host.name).join("endpoints.json"),
        socket: socket_path(&plan.name, &host.name),
        netns_prefix: plan.name.clone(),
        lease_ttl,
    }
}

/// Sends one request to a host's agent.
pub fn call(lab: &str, host: &str, req: &Request) -> Result<serde_json::Value, LabError> {
    api::call(&socket_path(lab, host), req, CALL_TIMEOUT)
        .map_err(|e| LabError::Agent(format!("host '{host}': {e}")))
}

fn io_err(what: String) -> impl FnOnce(std::io::Error) -> LabError {
    move |source| LabError::Os { what, source }
}

/// A log file opened for appending, twice: for a child's stdout and stderr.
pub(crate) fn log_files(log: &Path) -> Result<(std::fs::File, std::fs::File), LabError> {
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(io_err(format!("opening {}", log.display())))?;
    let err = out
        .try_clone()
        .map_err(io_err(format!("opening {}", log.display())))?;
    Ok((out, err))
}

/// Spawns a detached process (own session: it survives the terminal and `lab up`).
pub(crate) fn spawn_detached(binary: &Path, args: &[String], log: &Path) -> Result<u32, LabError> {
    let (out, err) = log_files(log)?;
    let mut cmd = Command::new(binary);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        );
    // SAFETY: setsid is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(io_err(format!("starting {}", binary.display())))?;
    Ok(child.id())
}

fn cluster_urls(endpoints: &str) -> Vec<String> {
    endpoints.split(',').map(str::to_string).collect()
}

/// A host agent configuration file (see deploy/agent.yaml) for a lab host on etcd; `tls`: the
/// host's certificate files (`None`: an insecure etcd); `policy_tls`: the policy
/// administrator's, for the host that writes policies.
fn host_config_yaml(
    cfg: &AgentConfig,
    etcd: &[String],
    tls: Option<&store::pki::ClientTls>,
    policy_tls: Option<&store::pki::ClientTls>,
) -> String {
    use std::fmt::Write;
    let mut y = String::new();
    let _ = writeln!(y, "# generated by ilanet lab up for host {}", cfg.host);
    let _ = writeln!(y, "host: {}", cfg.host);
    let _ = writeln!(y, "netns: {}", cfg.host_netns);
    let _ = writeln!(y, "uplink: {}", cfg.uplink);
    let _ = writeln!(y, "locator: \"{}\"", cfg.locator);
    let _ = writeln!(y, "underlay: \"{}\"", cfg.underlay);
    let _ = writeln!(y, "tenants:");
    for t in &cfg.tenants {
        let _ = writeln!(
            y,
            "  - {{name: {}, vnid: {}, sir_prefix: \"{}\"}}",
            t.name,
            t.vnid.get(),
            t.sir
        );
    }
    let _ = writeln!(y, "store:\n  kind: etcd\n  endpoints:");
    for e in etcd {
        let _ = writeln!(y, "    - \"{e}\"");
    }
    match tls {
        Some(t) => {
            let _ = writeln!(y, "  ca: {}", t.ca.display());
            let _ = writeln!(y, "  cert: {}", t.cert.display());
            let _ = writeln!(y, "  key: {}", t.key.display());
            if let Some(p) = policy_tls {
                let _ = writeln!(y, "  policy_cert: {}", p.cert.display());
                let _ = writeln!(y, "  policy_key: {}", p.key.display());
            }
        }
        None => {
            let _ = writeln!(y, "  insecure: true");
        }
    }
    let _ = writeln!(y, "  lease_ttl: {}", cfg.lease_ttl.as_secs());
    let _ = writeln!(y, "socket: {}", cfg.socket.display());
    let state_dir = cfg.state_file.parent().unwrap_or(&cfg.state_file);
    let _ = writeln!(y, "state_dir: {}", state_dir.display());
    let _ = writeln!(y, "pin_dir: {}", cfg.pin_dir.display());
    let _ = writeln!(y, "csum_mode: {}", cfg.csum_mode);
    let _ = writeln!(y, "endpoint_netns_prefix: {}", cfg.netns_prefix);
    let _ = writeln!(y, "log_level: info");
    y
}

/// Starts the lab's store (etcd) and agents, records them, and waits until every agent is
/// connected to the store. With etcd and not `insecure_store`: TLS, a certificate and an etcd
/// user per host (see `store::etcd_cluster`).
pub(crate) fn start(
    state: &mut LabState,
    binary: &Path,
    lease_ttl: Duration,
    insecure_store: bool,
) -> Result<(), LabError> {
    let plan = state.plan.clone();
    let dir = run_dir(&plan.name);
    fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
    let ttl = lease_ttl.as_secs().max(1).to_string();
    let mut base = vec![
        "agent".to_string(),
        "--lab".into(),
        plan.name.clone(),
        "--lease-ttl".into(),
        ttl,
    ];
    match plan.store {
        StoreKind::Embedded => {
            base.extend(["--store".into(), "embedded".into()]);
            let pid = spawn_detached(binary, &base, &dir.join("agent.log"))?;
            state.agents.push(pid);
            state.save()?;
        }
        StoreKind::Etcd => {
            let secure_hosts =
                (!insecure_store).then(|| plan.hosts.iter().map(|h| h.name.clone()).collect());
            let cluster = store::etcd_cluster::EtcdCluster::start_detached(
                3,
                &dir.join("etcd"),
                secure_hosts,
            )
            .map_err(|e| LabError::Store(format!("starting the etcd cluster: {e}")))?;
            let endpoints = cluster.client_endpoints().join(",");
            state.etcd = Some(cluster.clone());
            state.save()?;
            for host in &plan.hosts {
                let log = dir.join(format!("agent-{}.log", host.name));
                if plan.routing.is_bgp() {
                    // A host agent's configuration takes `bgp` only without `netns` (see the
                    // report of the BGP lab work); until it takes both, the lab's own agent
                    // serves the one host, speaker and all, on the same etcd.
                    // It finds the host's certificate in the lab's record.
                    let mut args = base.clone();
                    args.extend([
                        "--host".into(),
                        host.name.clone(),
                        "--store".into(),
                        "etcd".into(),
                        "--etcd-endpoints".into(),
                        endpoints.clone(),
                    ]);
                    if insecure_store {
                        args.push("--insecure-store".into());
                    }
                    let pid = spawn_detached(binary, &args, &log)?;
                    state.agents.push(pid);
                    state.save()?;
                    continue;
                }
                // Each host's agent is a host agent, started from a generated configuration
                // exactly as on a real machine (`netns` names the emulated host).
                let cfg = agent_config(&plan, host, lease_ttl);
                let path = dir.join(format!("{}.yaml", host.name));
                let tls = cluster.client_tls(&host.name);
                // The lab's first host is its policy administrator (`ilanet policy apply`
                // reaches it first); the others may only read policies.
                let policy_tls = (Some(&host.name) == plan.hosts.first().map(|h| &h.name))
                    .then(|| cluster.client_tls(store::pki::POLICY_ADMIN_USER))
                    .flatten();
                let yaml = host_config_yaml(
                    &cfg,
                    &cluster_urls(&endpoints),
                    tls.as_ref(),
                    policy_tls.as_ref(),
                );
                fs::write(&path, yaml).map_err(io_err(format!("writing {}", path.display())))?;
                let args = vec![
                    "agent".to_string(),
                    "--config".into(),
                    path.display().to_string(),
                ];
                let pid = spawn_detached(binary, &args, &log)?;
                state.agents.push(pid);
                state.save()?;
            }
        }
    }
    wait_ready(&plan)
}

/// The `etcdctl` (v3) options that reach a lab's etcd as its administrator (`root`'s
/// certificate when the lab's etcd has TLS): `--endpoints …` and, if secure, `--cacert`,
/// `--cert`, `--key`.
pub fn etcdctl_args(lab: &str) -> Result<Vec<String>, LabError> {
    let state =
        LabState::load(lab)?.ok_or_else(|| LabError::Invalid(format!("lab '{lab}' is not up")))?;
    let etcd = state
        .etcd
        .ok_or_else(|| LabError::Invalid(format!("lab '{lab}' has no etcd (--store etcd)")))?;
    let mut args = vec!["--endpoints".to_string(), etcd.client_endpoints().join(",")];
    if let Some(t) = etcd.client_tls(store::pki::ROOT_USER) {
        for (flag, path) in [("--cacert", &t.ca), ("--cert", &t.cert), ("--key", &t.key)] {
            args.push(flag.to_string());
            args.push(path.display().to_string());
        }
    }
    Ok(args)
}

/// Waits until every host's agent answers and is connected to the store.
pub fn wait_ready(plan: &Plan) -> Result<(), LabError> {
    let deadline = Instant::now() + READY_TIMEOUT;
    for host in &plan.hosts {
        loop {
            let last = match call(&plan.name, &host.name, &Request::Status) {
                Ok(v) => match serde_json::from_value::<AgentStatus>(v) {
                    Ok(s) if s.store_connected => break,
                    Ok(s) => s.store_error.unwrap_or_default(),
                    Err(e) => e.to_string(),
                },
                Err(e) => e.to_string(),
            };
            if Instant::now() > deadline {
                return Err(LabError::Agent(format!(
                    "the agent of host '{}' is not ready after {READY_TIMEOUT:?} ({last}); see the logs in {}{}",
                    host.name,
                    run_dir(&plan.name).display(),
                    log_tails(&plan.name)
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(())
}

/// Creates the planned containers through their hosts' agents, with their planned addresses.
pub(crate) fn create_planned_endpoints(plan: &Plan) -> Result<(), LabError> {
    for host in &plan.hosts {
        for c in &host.containers {
            call(
                &plan.name,
                &host.name,
                &Request::EndpointAdd {
                    name: c.name.clone(),
                    tenant: Some(c.tenant.clone()),
                    identifier: Some(c.identifier),
                    replace: false,
                    labels: c.labels.clone(),
                },
            )?;
        }
    }
    Ok(())
}

/// Waits until every host's maps hold the mapping of every planned container, so that the lab
/// is usable when `lab up` returns.
pub fn wait_converged(plan: &Plan) -> Result<(), LabError> {
    let want: Vec<std::net::Ipv6Addr> = plan
        .hosts
        .iter()
        .flat_map(|h| h.containers.iter().map(|c| c.sir_addr))
        .collect();
    let deadline = Instant::now() + READY_TIMEOUT;
    for host in &plan.hosts {
        loop {
            let rows: Vec<agent::api::MappingRow> =
                serde_json::from_value(call(&plan.name, &host.name, &Request::Mappings)?)
                    .map_err(|e| LabError::Agent(format!("host '{}': {e}", host.name)))?;
            let missing = want
                .iter()
                .filter(|a| !rows.iter().any(|r| r.sir_addr == **a && r.installed))
                .count();
            if missing == 0 {
                break;
            }
            if Instant::now() > deadline {
                return Err(LabError::Agent(format!(
                    "host '{}' still misses {missing} mappings after {READY_TIMEOUT:?}",
                    host.name
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(())
}

/// Waits until every listed host's agent has all of `names` compiled into its maps (`present`)
/// or none of them. An agent answers `policy_list` under the lock it holds while compiling a
/// change and writing the maps, so a listed policy is in the maps.
pub fn wait_policies(
    lab: &str,
    hosts: &[&str],
    names: &[String],
    present: bool,
    timeout: Duration,
) -> Result<(), LabError> {
    let start = Instant::now();
    loop {
        let mut lists = Vec::with_capacity(hosts.len());
        for host in hosts {
            let rows: Vec<agent::api::PolicyRow> =
                serde_json::from_value(call(lab, host, &Request::PolicyList)?)
                    .map_err(|e| LabError::Agent(format!("host '{host}': policy list: {e}")))?;
            lists.push(rows.into_iter().map(|r| r.name).collect::<Vec<_>>());
        }
        if lists
            .iter()
            .all(|l| names.iter().all(|n| l.contains(n) == present))
        {
            return Ok(());
        }
        if start.elapsed() > timeout {
            return Err(LabError::Agent(format!(
                "lab '{lab}': policies {names:?} still {} after {timeout:?} (agents list {lists:?}); see the agent logs in {}",
                if present { "missing" } else { "present" },
                run_dir(lab).display()
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Start time of a process (field 22 of /proc/<pid>/stat, in clock ticks since boot): with the
/// pid it names one process for good, whatever pids are reused later.
fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: split after its last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn registry_dir(lab: &str) -> PathBuf {
    run_dir(lab).join("agents")
}

/// Records the calling process as an agent of `lab`, so that `lab down` stops it even when it
/// was started by hand rather than by `lab up`.
pub fn register_agent(lab: &str) -> Result<(), LabError> {
    crate::plan::validate_lab_name(lab)?;
    let pid = std::process::id();
    let dir = registry_dir(lab);
    fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
    let started = start_time(pid).unwrap_or(0);
    let path = dir.join(pid.to_string());
    fs::write(&path, started.to_string()).map_err(io_err(format!("writing {}", path.display())))
}

/// Agents that registered themselves with [`register_agent`] and still run.
fn registered_agents(lab: &str) -> Vec<u32> {
    let Ok(entries) = fs::read_dir(registry_dir(lab)) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let recorded: u64 = fs::read_to_string(e.path()).ok()?.trim().parse().ok()?;
            (start_time(pid) == Some(recorded)).then_some(pid)
        })
        .collect()
}

/// Whether `pid` is still a process started by this lab (guards against pid reuse).
fn is_ours(pid: u32, lab: &str) -> bool {
    if registered_agents(lab).contains(&pid) {
        return true;
    }
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            let args: Vec<&[u8]> = c.split(|b| *b == 0).collect();
            // `agent --lab L …`, or `agent --config <run dir of L>/<host>.yaml`.
            let dir = run_dir(lab);
            let dir = dir.as_os_str().as_encoded_bytes();
            args.contains(&b"agent".as_slice())
                && (args.contains(&lab.as_bytes())
                    || args
                        .iter()
                        .any(|a| a.starts_with(dir) && a.get(dir.len()) == Some(&b'/')))
        })
        .unwrap_or(false)
}

/// Stops one recorded agent process (SIGTERM, then SIGKILL after 3 s).
pub fn stop_agent(pid: u32, lab: &str) {
    if !is_ours(pid, lab) {
        return;
    }
    // SAFETY: plain kill(2) on a pid we checked belongs to this lab.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(3);
    while is_ours(pid, lab) && Instant::now() < deadline {
        // Reap it if it is our child (a test that started the lab in-process).
        // SAFETY: non-blocking waitpid on a specific pid.
        unsafe { libc::waitpid(pid as libc::pid_t, std::ptr::null_mut(), libc::WNOHANG) };
        std::thread::sleep(Duration::from_millis(20));
    }
    if is_ours(pid, lab) {
        // SAFETY: as above.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    }
}

/// Stops the lab's agents and etcd, and lists the endpoint namespaces the agents created.
pub(crate) fn stop(state: &LabState) -> Result<Vec<String>, LabError> {
    let mut pids = state.agents.clone();
    pids.extend(registered_agents(&state.plan.name));
    pids.sort_unstable();
    pids.dedup();
    for pid in pids {
        stop_agent(pid, &state.plan.name);
    }
    if let Some(etcd) = &state.etcd {
        store::etcd_cluster::stop_detached(etcd)
            .map_err(|e| LabError::Store(format!("stopping the etcd cluster: {e}")))?;
    }
    // The agents' records name every endpoint namespace they created (including endpoints
    // added or moved after `lab up`).
    let mut namespaces = Vec::new();
    for host in &state.plan.hosts {
        let cfg = agent_config(&state.plan, host, agent::DEFAULT_LEASE_TTL);
        // An unreadable record leaves nothing to find; the lab's own namespaces still go.
        let mut recorded = agent::recorded_netns(&cfg).unwrap_or_default();
        recorded.extend(agent::evpn_host::recorded_netns(
            &crate::modes::evpn::state_file(&state.plan, host),
        ));
        let prefix = format!("{}-", state.plan.name);
        namespaces.extend(recorded.into_iter().filter(|ns| ns.starts_with(&prefix)));
    }
    Ok(namespaces)
}

fn cmdline(pid: u32) -> Option<Vec<String>> {
    let c = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        c.split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
    )
}

/// The agent process that serves only `host` (labs on etcd run one per host): its pid and
/// command line.
pub fn host_agent(lab: &str, host: &str) -> Result<(u32, Vec<String>), LabError> {
    let state =
        LabState::load(lab)?.ok_or_else(|| LabError::Invalid(format!("lab '{lab}' is not up")))?;
    let config = run_dir(lab)
        .join(format!("{host}.yaml"))
        .display()
        .to_string();
    let mut pids = state.agents.clone();
    pids.extend(registered_agents(lab));
    for pid in pids {
        let Some(args) = cmdline(pid) else { continue };
        let serves =
            args.windows(2).any(|w| w[0] == "--host" && w[1] == host) || args.contains(&config);
        if serves && is_ours(pid, lab) {
            return Ok((pid, args));
        }
    }
    Err(LabError::Invalid(format!(
        "lab '{lab}' has no agent process of its own for host '{host}' (one process serves \
         every host with the embedded store; use --store etcd)"
    )))
}

/// A signal for a host's agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentSignal {
    /// SIGKILL: a crash (waits until the process is gone).
    Kill,
    /// SIGSTOP: a frozen host (its sockets stay open, nothing is sent).
    Stop,
    /// SIGCONT.
    Cont,
}

/// Signals a host's own agent process and returns its command line, to start it again with
/// [`respawn_agent`] after a kill.
pub fn signal_host_agent(
    lab: &str,
    host: &str,
    signal: AgentSignal,
) -> Result<Vec<String>, LabError> {
    let (pid, args) = host_agent(lab, host)?;
    let signal = match signal {
        AgentSignal::Kill => libc::SIGKILL,
        AgentSignal::Stop => libc::SIGSTOP,
        AgentSignal::Cont => libc::SIGCONT,
    };
    // SAFETY: plain kill(2) on a pid checked to be this lab's agent.
    if unsafe { libc::kill(pid as libc::pid_t, signal) } != 0 {
        return Err(LabError::Os {
            what: format!("signalling the agent of host '{host}' (pid {pid})"),
            source: std::io::Error::last_os_error(),
        });
    }
    if signal == libc::SIGKILL {
        // Reap it if it is our child, and wait until it is gone.
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline && fs::metadata(format!("/proc/{pid}/cmdline")).is_ok() {
            // SAFETY: non-blocking waitpid on a specific pid.
            let r =
                unsafe { libc::waitpid(pid as libc::pid_t, std::ptr::null_mut(), libc::WNOHANG) };
            if r == pid as libc::pid_t || start_time(pid).is_none() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    Ok(args)
}

/// Starts an agent process again with the command line [`signal_host_agent`] returned,
/// recorded so that `lab down` stops it; its output goes to the host's log.
pub fn respawn_agent(lab: &str, host: &str, args: &[String]) -> Result<u32, LabError> {
    let mut state =
        LabState::load(lab)?.ok_or_else(|| LabError::Invalid(format!("lab '{lab}' is not up")))?;
    let (binary, rest) = args
        .split_first()
        .ok_or_else(|| LabError::Invalid("empty agent command line".into()))?;
    let log = run_dir(lab).join(format!("agent-{host}.log"));
    let pid = spawn_detached(Path::new(binary), rest, &log)?;
    state.agents.push(pid);
    state.save()?;
    Ok(pid)
}
