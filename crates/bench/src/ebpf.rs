//! The eBPF policy cases: ILA labs whose two benchmark endpoints carry `app=service1`, the
//! paper's Listing 10 applied through the agents (exactly as `ilanet policy apply` does), a check
//! that it is really enforced, and policies of N extra rules that never match the measured
//! traffic but each produce their own `POLICY` map entry.

use std::collections::{BTreeMap, HashMap};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use agent::api::Request;
use agent::reconcile::LocalEndpoint;
use lab::plan::Plan;
use lab::probe::{self, EchoServers};
use store::PolicyRecord;

use crate::BenchError;

/// Label key and value of both benchmark endpoints (what Listing 10 selects).
pub const APP_LABEL: (&str, &str) = ("app", "service1");

/// File name Listing 10 is applied under (decides the format and names the bare spec list, so
/// the policy is called `listing10`).
pub const LISTING10_FILE: &str = "listing10.yaml";

/// The paper's Listing 10 as a user writes it: endpoints labelled `app=service1` accept
/// `app=service1` on tcp/5201 and nothing else.
pub const LISTING10: &str = "\
- endpointSelector:
    matchLabels:
      app: service1
  ingress:
  - fromEndpoints:
    - matchLabels:
        app: service1
    toPorts:
    - ports:
      - port: \"5201\"
        protocol: tcp
";

/// The port Listing 10 opens (the iperf3 server must listen here).
pub const LISTING10_PORT: u16 = 5201;

/// A TCP port Listing 10 does not open, for the check that it is enforced.
const PROBE_PORT: u16 = 5202;
/// How long a probe that should pass may take (the lab's RTT is well under 1 ms).
const PROBE_OK: Duration = Duration::from_secs(3);
/// How long a probe waits before it counts as dropped.
const PROBE_BLOCKED: Duration = Duration::from_millis(500);
/// How long every agent gets to compile a policy into its maps (100 k rules take seconds on a
/// busy machine; this only bounds a hang).
const POLICY_TIMEOUT: Duration = Duration::from_secs(300);

/// Name of the benchmark endpoint that runs the iperf3 client (first host).
pub const CLIENT_NAME: &str = "bench-client";
/// Name of the benchmark endpoint that runs the iperf3 server (second host).
pub const SERVER_NAME: &str = "bench-server";

fn policy_err(msg: String) -> BenchError {
    BenchError::Policy(msg)
}

/// The two benchmark endpoints of an ILA lab, created through the agents with `app=service1`.
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// Lab name.
    pub lab: String,
    /// Host names, in site order.
    pub hosts: Vec<String>,
    /// Tenant the endpoints joined (the host's first), which policies default to.
    pub tenant: ila::Vnid,
    /// iperf3 client side (first host).
    pub client: LocalEndpoint,
    /// iperf3 server side (second host).
    pub server: LocalEndpoint,
}

impl Endpoints {
    /// Creates the client endpoint on the first host and the server endpoint on the second of
    /// an ILA lab built without planned containers. Both get the same labels, so they share
    /// one security identity (every extra rule then compiles to exactly one entry).
    pub fn create(plan: &Plan) -> Result<Self, BenchError> {
        Self::create_pair(plan, 0)
    }

    /// Like [`Endpoints::create`] for pair `index` of several measured at once: pair 0 is
    /// `bench-client`/`bench-server`, pair `i` adds `-{i + 1}` to both names. Every pair gets
    /// the same labels, so one policy (Listing 10) covers them all.
    pub fn create_pair(plan: &Plan, index: usize) -> Result<Self, BenchError> {
        if plan.hosts.len() < 2 {
            return Err(BenchError::Invalid(format!(
                "lab '{}' has {} host(s); the benchmark needs 2",
                plan.name,
                plan.hosts.len()
            )));
        }
        let tenant = plan
            .tenants
            .first()
            .map(|t| t.vnid)
            .ok_or_else(|| BenchError::Invalid(format!("lab '{}' has no tenant", plan.name)))?;
        let add = |host: &str, name: &str| -> Result<LocalEndpoint, BenchError> {
            let v = lab::agents::call(
                &plan.name,
                host,
                &Request::EndpointAdd {
                    name: name.into(),
                    tenant: None,
                    identifier: None,
                    replace: false,
                    labels: [(APP_LABEL.0.to_string(), APP_LABEL.1.to_string())].into(),
                },
            )?;
            serde_json::from_value(v).map_err(|e| {
                BenchError::Invalid(format!(
                    "agent of '{host}' answered endpoint_add '{name}' with an unreadable endpoint: {e}"
                ))
            })
        };
        let suffix = match index {
            0 => String::new(),
            i => format!("-{}", i + 1),
        };
        let client = add(&plan.hosts[0].name, &format!("{CLIENT_NAME}{suffix}"))?;
        let server = add(&plan.hosts[1].name, &format!("{SERVER_NAME}{suffix}"))?;
        let ep = Self {
            lab: plan.name.clone(),
            hosts: plan.hosts.iter().map(|h| h.name.clone()).collect(),
            tenant,
            client,
            server,
        };
        // The mapping of each endpoint reaches the other host through the store; wait until the
        // path works both ways so the first measured run does not include convergence.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let there = probe::ping(&ep.client.netns, ep.server.sir_addr, PROBE_BLOCKED);
            let back = probe::ping(&ep.server.netns, ep.client.sir_addr, PROBE_BLOCKED);
            match (there, back) {
                (Ok(_), Ok(_)) => break,
                (Err(e), _) | (_, Err(e)) if Instant::now() > deadline => {
                    return Err(BenchError::Invalid(format!(
                        "benchmark endpoints of lab '{}' do not reach each other after 10 s: {e}",
                        plan.name
                    )))
                }
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        Ok(ep)
    }

    /// Sets the MTU of both endpoints' `eth0` (`lab::set_mtu` only knows planned containers;
    /// it already did the host-side veths, which it finds by what exists).
    pub fn set_mtu(&self, mtu: u32) -> Result<(), BenchError> {
        for ns in [&self.client.netns, &self.server.netns] {
            let out = Command::new("ip")
                .args(["-n", ns, "link", "set", lab::link::ENDPOINT_IFNAME, "mtu"])
                .arg(mtu.to_string())
                .output()
                .map_err(|source| BenchError::Os {
                    what: format!("running ip -n {ns} link set … mtu {mtu}"),
                    source,
                })?;
            if !out.status.success() {
                return Err(BenchError::Invalid(format!(
                    "setting MTU {mtu} in '{ns}': {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
        }
        Ok(())
    }

    /// Waits until every host lists all of `names` (`present`) or none of them.
    fn wait_listed(&self, names: &[String], present: bool) -> Result<(), BenchError> {
        let hosts: Vec<&str> = self.hosts.iter().map(String::as_str).collect();
        lab::agents::wait_policies(&self.lab, &hosts, names, present, POLICY_TIMEOUT)
            .map_err(|e| policy_err(e.to_string()))
    }

    /// Stores `records` through the first host's agent and waits until every agent has them
    /// in its maps. Returns the policy names and the seconds that took.
    pub fn apply(&self, records: Vec<PolicyRecord>) -> Result<(Vec<String>, f64), BenchError> {
        let names: Vec<String> = records.iter().map(|r| r.name.clone()).collect();
        let start = Instant::now();
        lab::agents::call(&self.lab, &self.hosts[0], &Request::PolicyApply { records })
            .map_err(|e| policy_err(format!("applying {names:?} to lab '{}': {e}", self.lab)))?;
        self.wait_listed(&names, true)?;
        Ok((names, start.elapsed().as_secs_f64()))
    }

    /// Removes policies and waits until no agent has them any more.
    pub fn delete(&self, names: &[String]) -> Result<(), BenchError> {
        for name in names {
            lab::agents::call(
                &self.lab,
                &self.hosts[0],
                &Request::PolicyDelete { name: name.clone() },
            )
            .map_err(|e| {
                policy_err(format!(
                    "deleting policy '{name}' from lab '{}': {e}",
                    self.lab
                ))
            })?;
        }
        self.wait_listed(names, false)
    }

    /// Entries of the `POLICY` map of every host (site order), read from the pinned maps.
    pub fn policy_entries(&self) -> Result<Vec<usize>, BenchError> {
        self.hosts
            .iter()
            .map(|h| {
                let dir = lab::state::host_pin_dir(&self.lab, h);
                let maps = dataplane::HostMaps::open_pinned(&dir).map_err(|e| {
                    policy_err(format!(
                        "opening the pinned maps of '{h}' ({}): {e}",
                        dir.display()
                    ))
                })?;
                let entries = maps
                    .policy_entries()
                    .map_err(|e| policy_err(format!("reading the POLICY map of '{h}': {e}")))?;
                Ok(entries.len())
            })
            .collect()
    }

    /// Forgets established flows on every host, so a probe after a policy change is judged by
    /// the policy and not by an earlier verdict.
    fn flush_conntrack(&self) -> Result<(), BenchError> {
        for h in &self.hosts {
            let dir = lab::state::host_pin_dir(&self.lab, h);
            dataplane::HostMaps::open_pinned(&dir)
                .and_then(|mut m| m.flush_conntrack())
                .map_err(|e| policy_err(format!("flushing the conntrack of '{h}': {e}")))?;
        }
        Ok(())
    }

    /// Whether a TCP connection from the client to the server's `port` is accepted (a plain
    /// connect: the check runs before iperf3 listens, against an echo server).
    fn tcp_passes(&self, port: u16, timeout: Duration) -> bool {
        probe::tcp_echo(&self.client.netns, self.server.sir_addr, port, timeout).is_ok()
    }

    /// Applies Listing 10 and proves it is enforced: before it, tcp/5202 and udp/5201 pass
    /// (so the probes work); with it, tcp/5201 still passes and both others are dropped. Must
    /// run before the iperf3 server takes port 5201.
    pub fn install_listing10(&self) -> Result<PolicyCheck, BenchError> {
        let addr = self.server.sir_addr;
        let ns = &self.server.netns;
        let _open = EchoServers::start(ns, addr, LISTING10_PORT, LISTING10_PORT)?;
        let _closed = EchoServers::start(ns, addr, PROBE_PORT, PROBE_PORT)?;
        let udp_passes = |t| probe::udp_echo(&self.client.netns, addr, LISTING10_PORT, t).is_ok();
        let before = [
            ("tcp/5201", self.tcp_passes(LISTING10_PORT, PROBE_OK)),
            ("tcp/5202", self.tcp_passes(PROBE_PORT, PROBE_OK)),
            ("udp/5201", udp_passes(PROBE_OK)),
        ];
        if let Some((what, _)) = before.iter().find(|(_, ok)| !ok) {
            return Err(policy_err(format!(
                "lab '{}': {what} from {CLIENT_NAME} to {SERVER_NAME} fails before any policy; \
                 the enforcement check would prove nothing",
                self.lab
            )));
        }
        let parse_start = Instant::now();
        let records =
            agent::policy_sync::records_for_file(LISTING10_FILE, LISTING10.as_bytes(), self.tenant)
                .map_err(|e| policy_err(format!("Listing 10 does not parse: {e}")))?;
        let parse_secs = parse_start.elapsed().as_secs_f64();
        let (names, apply_secs) = self.apply(records)?;
        self.flush_conntrack()?;
        let after = [
            ("tcp/5201", true, self.tcp_passes(LISTING10_PORT, PROBE_OK)),
            (
                "tcp/5202",
                false,
                self.tcp_passes(PROBE_PORT, PROBE_BLOCKED),
            ),
            ("udp/5201", false, udp_passes(PROBE_BLOCKED)),
        ];
        let wrong: Vec<String> = after
            .iter()
            .filter(|(_, want, got)| want != got)
            .map(|(what, want, _)| {
                format!("{what} {}", if *want { "is dropped" } else { "passes" })
            })
            .collect();
        if !wrong.is_empty() {
            return Err(policy_err(format!(
                "lab '{}': Listing 10 ({names:?}) is not in force: {} (expected tcp/5201 to pass \
                 and everything else from {CLIENT_NAME} to {SERVER_NAME} to be dropped)",
                self.lab,
                wrong.join(", ")
            )));
        }
        Ok(PolicyCheck {
            names,
            entries: self.policy_entries()?,
            apply_secs,
            parse_secs,
            file_bytes: LISTING10.len(),
            verified: after
                .iter()
                .map(|(what, want, _)| {
                    format!("{what} {}", if *want { "passes" } else { "dropped" })
                })
                .collect(),
        })
    }
}

impl Endpoints {
    /// Applies a policy like Listing 10 that opens `port` for TCP and UDP (what `bench
    /// latency` sends) and proves it is enforced: both pass, TCP to `port + 1` is dropped.
    /// Must run before anything else listens on `port` or `port + 1` in the server.
    pub fn install_open_port(&self, port: u16) -> Result<Vec<String>, BenchError> {
        let addr = self.server.sir_addr;
        let closed = port.checked_add(1).ok_or_else(|| {
            BenchError::Invalid(format!("port {port}: the closed probe port would overflow"))
        })?;
        let _open = EchoServers::start(&self.server.netns, addr, port, port)?;
        let _closed = EchoServers::start(&self.server.netns, addr, closed, closed)?;
        let file = format!("open-{port}.yaml");
        let text = format!(
            "- endpointSelector:\n    matchLabels:\n      app: service1\n  ingress:\n  \
             - fromEndpoints:\n    - matchLabels:\n        app: service1\n    toPorts:\n    \
             - ports:\n      - port: \"{port}\"\n        protocol: tcp\n      \
             - port: \"{port}\"\n        protocol: udp\n"
        );
        let records = agent::policy_sync::records_for_file(&file, text.as_bytes(), self.tenant)
            .map_err(|e| {
                policy_err(format!(
                    "the policy opening port {port} does not parse: {e}"
                ))
            })?;
        let (names, _) = self.apply(records)?;
        self.flush_conntrack()?;
        let udp = probe::udp_echo(&self.client.netns, addr, port, PROBE_OK).is_ok();
        let checks = [
            (format!("tcp/{port}"), true, self.tcp_passes(port, PROBE_OK)),
            (format!("udp/{port}"), true, udp),
            (
                format!("tcp/{closed}"),
                false,
                self.tcp_passes(closed, PROBE_BLOCKED),
            ),
        ];
        let wrong: Vec<String> = checks
            .iter()
            .filter(|(_, want, got)| want != got)
            .map(|(what, want, _)| {
                format!("{what} {}", if *want { "is dropped" } else { "passes" })
            })
            .collect();
        if !wrong.is_empty() {
            return Err(policy_err(format!(
                "lab '{}': the policy {names:?} is not in force as written: {}",
                self.lab,
                wrong.join(", ")
            )));
        }
        Ok(names)
    }
}

/// What [`Endpoints::install_listing10`] found.
#[derive(Debug, Clone)]
pub struct PolicyCheck {
    /// Policy names applied.
    pub names: Vec<String>,
    /// `POLICY` map entries per host.
    pub entries: Vec<usize>,
    /// Seconds until every agent had it in its maps.
    pub apply_secs: f64,
    /// Seconds to parse the file.
    pub parse_secs: f64,
    /// Size of the file.
    pub file_bytes: usize,
    /// The probes and their outcome.
    pub verified: Vec<String>,
}

/// `(protocol, port)` pairs the extra rules allow, none of which the measured traffic uses:
/// TCP ports outside Linux's ephemeral range (32768–60999, where the iperf3 client's own ports
/// are) other than 5201, then every UDP port, then every SCTP port.
fn extra_ports() -> impl Iterator<Item = (&'static str, u16)> {
    let tcp = (1..=32767u16)
        .chain(61000..=65535)
        .filter(|p| *p != LISTING10_PORT)
        .map(|p| ("TCP", p));
    tcp.chain((1..=65535u16).map(|p| ("UDP", p)))
        .chain((1..=65535u16).map(|p| ("SCTP", p)))
}

/// Most extra rules [`extra_rules_policy`] can make (one distinct port key each).
pub fn max_extra_rules() -> usize {
    extra_ports().count()
}

/// Name of the policy holding `n` extra rules.
pub fn extra_policy_name(n: usize) -> String {
    format!("bench-extra-{n}")
}

/// A CiliumNetworkPolicy (JSON) selecting `app=service1` with `n` ingress rules, each allowing
/// `app=service1` on its own port that the measured flow never uses: every rule compiles to
/// its own `POLICY` entry, and none decides the measured packets.
pub fn extra_rules_policy(n: usize) -> Result<String, BenchError> {
    let max = max_extra_rules();
    if n > max {
        return Err(BenchError::Invalid(format!(
            "{n} extra eBPF rules requested; at most {max} distinct non-matching port rules exist"
        )));
    }
    // Written by hand rather than through serde_json::Value: 100 k rules as a Value tree would
    // take hundreds of MB.
    let mut s = String::with_capacity(120 * n + 256);
    s.push_str(&format!(
        "{{\"apiVersion\":\"cilium.io/v2\",\"kind\":\"CiliumNetworkPolicy\",\"metadata\":{{\"name\":\"{}\"}},\
         \"spec\":{{\"endpointSelector\":{{\"matchLabels\":{{\"app\":\"service1\"}}}},\"ingress\":[",
        extra_policy_name(n)
    ));
    for (i, (proto, port)) in extra_ports().take(n).enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!(
            "{{\"fromEndpoints\":[{{\"matchLabels\":{{\"app\":\"service1\"}}}}],\
             \"toPorts\":[{{\"ports\":[{{\"port\":\"{port}\",\"protocol\":\"{proto}\"}}]}}]}}"
        ));
    }
    s.push_str("]}}\n");
    Ok(s)
}

/// The outcome of switching the extra rules before one run.
#[derive(Debug, Clone, Default)]
pub struct PolicyChange {
    /// Policies in force: Listing 10 and the extra-rule policy, if any.
    pub names: Vec<String>,
    /// `POLICY` map entries per host with the new rules in force.
    pub entries: Vec<usize>,
    /// Seconds from the apply request until every agent had it in its maps (`None`: nothing
    /// was applied, e.g. 0 extra rules).
    pub apply_secs: Option<f64>,
    /// Seconds the bench took to build and parse the file (first use only).
    pub parse_secs: Option<f64>,
    /// Size of the policy file.
    pub file_bytes: usize,
}

/// Swaps the policy of N extra rules on an ILA lab with Listing 10 in force, as the rule-count
/// series needs before each run.
pub struct RuleSwitcher {
    endpoints: Endpoints,
    /// Listing 10's policy names (always in force).
    base: Vec<String>,
    state: Mutex<SwitchState>,
}

#[derive(Default)]
struct SwitchState {
    /// Parsed records per rule count (parsing 100 k rules takes a moment; do it once).
    records: HashMap<usize, (Vec<PolicyRecord>, usize)>,
    /// The extra policy in force: its rule count and names.
    current: Option<(usize, Vec<String>)>,
    /// Entries per host seen per rule count (map reads of 100 k entries are not free).
    entries: BTreeMap<usize, Vec<usize>>,
}

impl RuleSwitcher {
    /// Takes over an ILA lab's endpoints (Listing 10 must already be in force).
    pub fn new(endpoints: Endpoints, base: Vec<String>) -> Self {
        Self {
            endpoints,
            base,
            state: Mutex::new(SwitchState::default()),
        }
    }

    /// Puts `n` extra rules in force (removing the previous set first, so the maps never hold
    /// both) and reports what that took.
    pub fn set(&self, n: usize) -> Result<PolicyChange, BenchError> {
        let mut st = self
            .state
            .lock()
            .map_err(|_| BenchError::Invalid("rule switcher state poisoned".into()))?;
        let mut change = PolicyChange::default();
        if st.current.as_ref().map(|(c, _)| *c) != Some(n) {
            if let Some((_, names)) = st.current.take() {
                self.endpoints.delete(&names)?;
            }
            if n > 0 {
                let (recs, bytes) = match st.records.entry(n) {
                    std::collections::hash_map::Entry::Occupied(e) => e.get().clone(),
                    std::collections::hash_map::Entry::Vacant(e) => {
                        let start = Instant::now();
                        let text = extra_rules_policy(n)?;
                        let file = format!("{}.json", extra_policy_name(n));
                        let recs = agent::policy_sync::records_for_file(
                            &file,
                            text.as_bytes(),
                            self.endpoints.tenant,
                        )
                        .map_err(|e| {
                            policy_err(format!("the {n}-rule policy does not parse: {e}"))
                        })?;
                        change.parse_secs = Some(start.elapsed().as_secs_f64());
                        e.insert((recs, text.len())).clone()
                    }
                };
                change.file_bytes = bytes;
                let (names, secs) = self.endpoints.apply(recs)?;
                change.apply_secs = Some(secs);
                st.current = Some((n, names));
            } else {
                st.current = Some((0, Vec::new()));
            }
        }
        change.names = self.base.clone();
        if let Some((_, names)) = &st.current {
            change.names.extend(names.iter().cloned());
        }
        if let Some(e) = st.entries.get(&n) {
            change.entries = e.clone();
        } else {
            let e = self.endpoints.policy_entries()?;
            st.entries.insert(n, e.clone());
            change.entries = e;
        }
        Ok(change)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_rules_parse_and_never_touch_the_measured_port() {
        let vnid = ila::Vnid::new(1).expect("vnid");
        let text = extra_rules_policy(300).expect("policy");
        let recs =
            agent::policy_sync::records_for_file("x.json", text.as_bytes(), vnid).expect("parses");
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0].name, "bench-extra-300");
        assert!(!text.contains("\"5201\""));
        let ports: Vec<_> = extra_ports().collect();
        let mut dedup = ports.clone();
        dedup.sort();
        dedup.dedup();
        assert_eq!(dedup.len(), ports.len(), "every rule has its own port key");
        assert!(max_extra_rules() >= 100_000);
        assert!(!ports
            .iter()
            .any(|(p, n)| *p == "TCP" && (*n == 5201 || (32768..=60999).contains(n))));
        assert!(extra_rules_policy(max_extra_rules() + 1).is_err());
        agent::policy_sync::records_for_file(LISTING10_FILE, LISTING10.as_bytes(), vnid)
            .expect("Listing 10 parses");
    }
}
