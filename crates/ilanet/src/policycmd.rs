//! `ilanet policy apply|delete|list|explain` and `ilanet trace`.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use agent::api::{ExplainReply, PolicyRow, Request};
use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use dataplane::{FlowEvent, HostMaps};
use lab::agents;
use lab::plan::Plan;

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
enum Agents {
    Socket(std::path::PathBuf),
    Lab(Plan),
}

impl Agents {
    fn of(lab: &str, socket: &Option<std::path::PathBuf>) -> Result<Self> {
        Ok(match socket {
            Some(s) => Agents::Socket(s.clone()),
            None => Agents::Lab(lab::plan_of(lab)?),
        })
    }

    fn call(&self, req: &Request) -> Result<serde_json::Value> {
        match self {
            Agents::Socket(s) => Ok(agent::api::call(s, req, agents::CALL_TIMEOUT)?),
            Agents::Lab(plan) => call_any(plan, req),
        }
    }

    fn tenants(&self) -> Result<Vec<ila::TenantNetwork>> {
        match self {
            Agents::Lab(plan) => Ok(plan.tenants.clone()),
            Agents::Socket(_) => {
                let s: agent::api::AgentStatus =
                    serde_json::from_value(self.call(&Request::Status)?)?;
                Ok(s.tenants)
            }
        }
    }
}

/// Any host's agent will do for store-wide requests: the first one that answers.
fn call_any(plan: &Plan, req: &Request) -> Result<serde_json::Value> {
    let mut last = None;
    for h in &plan.hosts {
        match agents::call(&plan.name, &h.name, req) {
            Ok(v) => return Ok(v),
            Err(lab::LabError::Agent(e)) if e.contains("agent at") => last = Some(e),
            Err(e) => return Err(e.into()),
        }
    }
    Err(anyhow!(
        "no agent of lab '{}' answers ({})",
        plan.name,
        last.unwrap_or_default()
    ))
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
            let v = agents.call(&Request::PolicyApply { records })?;
            let names: Vec<String> = serde_json::from_value(v)?;
            println!(
                "applied {} polic{}: {}",
                names.len(),
                if names.len() == 1 { "y" } else { "ies" },
                names.join(", ")
            );
        }
        PolicyCommand::Delete { name, lab, socket } => {
            Agents::of(lab, socket)?.call(&Request::PolicyDelete { name: name.clone() })?;
            println!("policy {name} deleted");
        }
        PolicyCommand::List { lab, json, socket } => {
            let rows: Vec<PolicyRow> =
                serde_json::from_value(Agents::of(lab, socket)?.call(&Request::PolicyList)?)?;
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
            let plan = lab::plan_of(lab)?;
            let v = call_any(
                &plan,
                &Request::PolicyExplain {
                    from: from.clone(),
                    to: to.clone(),
                    port: *port,
                    proto: proto.clone(),
                },
            )?;
            let e: ExplainReply = serde_json::from_value(v)?;
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
