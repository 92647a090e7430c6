//! `ilanet policy apply|delete|list|explain` and `ilanet trace`.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use agent::api::{Client, ClientError, ExplainReply, PolicyRow};
use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use dataplane::{FlowEvent, HostMaps};
use lab::agents;

use crate::labcmd::DEFAULT_LAB;

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Apply a CiliumNetworkPolicy-shaped file (JSON or YAML): all of it, or nothing.
    Apply {
        /// The policy file.
        file: std::path::PathBuf,
        /// Tenant of policies that do not set `metadata.namespace` (default: the lab's first).
        #[arg(long)]
        tenant: Option<String>,
        /// Lab name.
        #[arg(long, default_value = DEFAULT_LAB)]
        lab: String,
        /// Talk to the host agent at this socket instead of a lab's agents.
        #[arg(long, value_name = "PATH")]
        socket: Option<std::path::PathBuf>,
    },
    /// Remove a policy.
    Delete {
        /// Policy name.
        name: String,
        /// Lab name.
        #[arg(long, default_value = DEFAULT_LAB)]
        lab: String,
        /// Talk to the host agent at this socket instead of a lab's agents.
        #[arg(long, value_name = "PATH")]
        socket: Option<std::path::PathBuf>,
    },
    /// List the policies in force.
    List {
        /// Lab name.
        #[arg(long, default_value = DEFAULT_LAB)]
        lab: String,
        /// Talk to the host agent at this socket instead of a lab's agents.
        #[arg(long, value_name = "PATH")]
        socket: Option<std::path::PathBuf>,

        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The verdict for a packet and the rule that gave it.
    Explain {
        /// Source endpoint (name or SIR address).
        #[arg(long)]
        from: String,
        /// Destination endpoint (name or address).
        #[arg(long)]
        to: String,
        /// Destination port.
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// tcp, udp, sctp, icmpv6 or a protocol number.
        #[arg(long, default_value = "tcp")]
        proto: String,
        /// Lab name.
        #[arg(long, default_value = DEFAULT_LAB)]
        lab: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Where store-wide requests go: the host agent at a socket, or any agent of a lab.
struct Agents {
    /// Tried in order: the first that answers serves the request.
    clients: Vec<Client>,
    /// The lab's tenants (a host agent reports its own).
    tenants: Option<Vec<ila::TenantNetwork>>,
    /// What the agents are, for messages.
    what: String,
}

impl Agents {
    fn of(lab: &str, socket: &Option<std::path::PathBuf>) -> Result<Self> {
        Ok(match socket {
            Some(s) => Agents {
                clients: vec![Client::new(s).with_timeout(agents::CALL_TIMEOUT)],
                tenants: None,
                what: format!("the agent at {}", s.display()),
            },
            None => {
                let plan = lab::plan_of(lab)?;
                Agents {
                    clients: plan
                        .hosts
                        .iter()
                        .map(|h| {
                            Client::new(agents::socket_path(&plan.name, &h.name))
                                .with_timeout(agents::CALL_TIMEOUT)
                        })
                        .collect(),
                    tenants: Some(plan.tenants.clone()),
                    what: format!("lab '{}'", plan.name),
                }
            }
        })
    }

    /// Runs `f` on the first agent that answers; an agent's refusal is the answer (with its
    /// kind: a bad request, a missing store …).
    fn first<T>(&self, f: impl Fn(&Client) -> Result<T, ClientError>) -> Result<T> {
        let mut last = None;
        for c in &self.clients {
            match f(c) {
                Ok(v) => return Ok(v),
                Err(e @ ClientError::Unreachable { .. }) => last = Some(e),
                Err(ClientError::Refused { kind, message }) => {
                    return Err(anyhow!("{message}")).context(match kind {
                        agent::ErrorKind::NoStore => {
                            "refused: the mapping store is not reachable; try again when it is"
                        }
                        agent::ErrorKind::BadRequest => "refused: the request is not valid",
                        agent::ErrorKind::NotFound => "refused: not found",
                        agent::ErrorKind::Conflict => "refused: already taken",
                        agent::ErrorKind::Busy => "refused: the agent is busy; try again",
                        agent::ErrorKind::Forbidden => {
                            "refused: not allowed with this host's credentials"
                        }
                        agent::ErrorKind::Internal => "the agent failed",
                    })
                }
            }
        }
        Err(anyhow!(
            "no agent of {} answers ({})",
            self.what,
            last.map(|e| e.to_string()).unwrap_or_default()
        ))
    }

    fn tenants(&self) -> Result<Vec<ila::TenantNetwork>> {
        match &self.tenants {
            Some(t) => Ok(t.clone()),
            None => Ok(self.first(|c| c.status())?.tenants),
        }
    }
}

pub fn run(cmd: &PolicyCommand) -> Result<ExitCode> {
    match cmd {
        PolicyCommand::Apply {
            file,
            tenant,
            lab,
            socket,
        } => {
            let agents = Agents::of(lab, socket)?;
            let tenants = agents.tenants()?;
            let t = match tenant {
                None => tenants.first(),
                Some(n) => tenants.iter().find(|t| &t.name == n),
            }
            .ok_or_else(|| anyhow!("unknown tenant {tenant:?}"))?;
            let bytes =
                std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
            let name = file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| file.display().to_string());
            // Parsed and checked here first: a bad file is refused before anything is sent.
            let records = agent::policy_sync::records_for_file(&name, &bytes, t.vnid)?;
            let names = agents.first(|c| c.policy_apply(records.clone()))?;
            println!(
                "applied {} polic{}: {}",
                names.len(),
                if names.len() == 1 { "y" } else { "ies" },
                names.join(", ")
            );
        }
        PolicyCommand::Delete { name, lab, socket } => {
            Agents::of(lab, socket)?.first(|c| c.policy_delete(name))?;
            println!("policy {name} deleted");
        }
        PolicyCommand::List { lab, json, socket } => {
            let rows: Vec<PolicyRow> = Agents::of(lab, socket)?.first(|c| c.policy_list())?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!("{:<32} {:>8} {:>6}", "policy", "tenant", "specs");
                for r in rows {
                    println!("{:<32} {:>8} {:>6}", r.name, r.tenant, r.specs);
                }
            }
        }
        PolicyCommand::Explain {
            from,
            to,
            port,
            proto,
            lab,
            json,
        } => {
            let e: ExplainReply =
                Agents::of(lab, &None)?.first(|c| c.explain(from, to, *port, proto))?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&e)?);
            } else {
                println!("from {}\nto   {} port {port}/{proto}", e.from, e.to);
                println!("verdict: {}", e.verdict.to_uppercase());
                if let Some(r) = &e.rule {
                    println!("rule:    {r}");
                }
                println!("reason:  {}", e.reason);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct TraceArgs {
    /// Lab name.
    #[arg(long, default_value = DEFAULT_LAB)]
    lab: String,
    /// Only this host.
    #[arg(long)]
    host: Option<String>,
    /// Stop after this many events.
    #[arg(long)]
    count: Option<usize>,
    /// Stop after this many seconds.
    #[arg(long)]
    duration: Option<f64>,
    /// Only drops.
    #[arg(long)]
    drops: bool,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
}

fn proto_name(p: u8) -> String {
    match p {
        6 => "tcp".into(),
        17 => "udp".into(),
        58 => "icmpv6".into(),
        132 => "sctp".into(),
        n => n.to_string(),
    }
}

/// `ilanet trace`: live flow events of the lab's hosts (translations, verdicts, drops).
pub fn trace(args: &TraceArgs) -> Result<ExitCode> {
    let plan = lab::plan_of(&args.lab)?;
    let hosts: Vec<_> = plan
        .hosts
        .iter()
        .filter(|h| args.host.as_deref().is_none_or(|n| n == h.name))
        .collect();
    if hosts.is_empty() {
        bail!("unknown host {:?} in lab '{}'", args.host, args.lab);
    }
    let mut maps = Vec::new();
    for h in &hosts {
        let m = HostMaps::open_pinned(&lab::state::host_pin_dir(&plan.name, &h.name))
            .with_context(|| format!("opening the maps of host '{}'", h.name))?;
        maps.push((h.name.clone(), m));
    }
    crate::stop::install();
    for (_, m) in &mut maps {
        m.drain_flow_events()?;
        m.set_trace(true)?;
    }
    let start = Instant::now();
    let mut seen = 0usize;
    let result = (|| -> Result<()> {
        while !crate::stop::requested() {
            if args
                .duration
                .is_some_and(|d| start.elapsed().as_secs_f64() >= d)
            {
                break;
            }
            for (host, m) in &mut maps {
                for ev in m.drain_flow_events()? {
                    if args.drops
                        && !matches!(ev, FlowEvent::Verdict(v) if v.verdict == dataplane::FlowVerdict::Drop)
                    {
                        continue;
                    }
                    print_event(host, &ev, args.json)?;
                    seen += 1;
                    if args.count.is_some_and(|c| seen >= c) {
                        return Ok(());
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    })();
    for (_, m) in &mut maps {
        m.set_trace(false)?;
    }
    result?;
    Ok(ExitCode::SUCCESS)
}

fn print_event(host: &str, ev: &FlowEvent, json: bool) -> Result<()> {
    if json {
        let mut v = serde_json::to_value(ev)?;
        v["host"] = serde_json::Value::String(host.to_string());
        println!("{v}");
        return Ok(());
    }
    match ev {
        FlowEvent::Translation(t) => println!(
            "{host:<8} {:<14} {} -> {}  dst {} => {} ({})",
            t.direction.as_str(),
            t.src,
            t.dst_before,
            t.dst_before,
            t.dst_after,
            t.csum_mode
        ),
        FlowEvent::Verdict(v) => println!(
            "{host:<8} {:<14} {:?} {:?}{} {} [{}:{}] -> {} [{}:{}] {} {}->{}{}",
            v.program.as_str(),
            v.verdict,
            v.reason,
            v.direction.map(|d| format!(" ({d:?})")).unwrap_or_default(),
            v.src,
            v.src_identity,
            v.src_vnid,
            v.dst,
            v.dst_identity,
            v.dst_vnid,
            proto_name(v.proto),
            v.sport,
            v.dport,
            v.rule_id.map(|r| format!(" rule {r}")).unwrap_or_default()
        ),
    }
    Ok(())
}
