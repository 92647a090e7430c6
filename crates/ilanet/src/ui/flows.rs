//! Flow records and the translation steps of a flow's latest packet, assembled from the data
//! path's ring-buffer events of every host (pure: events in, records out).
//!
//! Per packet, the hosts report: the sender's from-container verdict (new flows and drops), its
//! SIR → ILA rewrite, then the receiver's ILA → SIR rewrite and its ingress verdict (new flows
//! and drops). A packet rewritten on the wire side and not dropped there was delivered.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv6Addr;

use dataplane::{FlowEvent, FlowVerdict, ProgramKind, VerdictReason};
use serde::Serialize;

use super::view::Snapshot;

/// Most flows kept; the least recently active goes first.
pub const MAX_FLOWS: usize = 256;
/// Most verdict buckets (and rule samples) kept; past it, rule verdicts count without their rule.
pub const MAX_VERDICT_BUCKETS: usize = 4096;

/// One step of a packet's way.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Step {
    /// `sent`, `policy`, `from-container`, `route`, `from-wire`, `delivered` or `dropped`.
    pub kind: &'static str,
    /// Host it happened on.
    pub host: String,
    /// Source address (a SIR address throughout: ILA rewrites only the destination).
    pub src: Ipv6Addr,
    /// Destination as the step received it.
    pub dst: Ipv6Addr,
    /// Destination after the step (rewrites only).
    pub dst_after: Option<Ipv6Addr>,
    /// Checksum mode of the rewrite.
    pub csum_mode: Option<String>,
    /// One sentence for the visitor.
    pub note: String,
}

/// Identifies a flow: source and destination SIR addresses and protocol (translation events
/// carry no ports).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct FlowKey {
    /// Source SIR address.
    pub src: Ipv6Addr,
    /// Destination SIR address.
    pub dst: Ipv6Addr,
    /// L4 protocol number.
    pub proto: u8,
}

/// One flow, as the flow table shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Flow {
    /// Addresses and protocol.
    #[serde(flatten)]
    pub key: FlowKey,
    /// Protocol name.
    pub proto_name: String,
    /// Source container, if known.
    pub src_name: Option<String>,
    /// Destination container, if known.
    pub dst_name: Option<String>,
    /// Packets rewritten SIR → ILA at the sender.
    pub sent: u64,
    /// Packets rewritten ILA → SIR at the receiver.
    pub received: u64,
    /// Packets dropped.
    pub dropped: u64,
    /// Last verdict (`allow`/`drop`) and its reason.
    pub verdict: Option<String>,
    /// Monotonic sequence of its last event (newest flows first in the table).
    pub last_seq: u64,
    /// Steps of its latest packet.
    pub steps: Vec<Step>,
}

/// Where the latest packet of a flow is.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Stage {
    /// Nothing yet or done: the next sender-side event starts a new packet.
    Idle,
    /// The sender's policy allowed it; its rewrite follows.
    Allowed,
    /// Rewritten at the sender, on the underlay.
    OnWire,
    /// Rewritten at the receiver.
    Received,
}

struct Track {
    flow: Flow,
    stage: Stage,
    /// The rule behind the last verdict (host, rule id), named when the agent has said.
    verdict_rule: Option<(String, u32)>,
}

/// Verdict counts per deciding rule or reason, as the policy panel shows them.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct VerdictCount {
    /// `allow` or `drop`.
    pub verdict: String,
    /// Reason (`rule`, `default-deny`, `tenant-isolation`, …).
    pub reason: String,
    /// Rule id when a rule decided.
    pub rule_id: Option<u32>,
    /// The rule as the agent explains it (`policy NAME (tenant T) specs[0].ingress[0]`).
    pub rule: Option<String>,
    /// Policy name of that rule.
    pub policy: Option<String>,
    /// Direction of the policy.
    pub direction: Option<String>,
    /// Events.
    pub count: u64,
}

/// All flows seen since the dashboard started (bounded).
#[derive(Default)]
pub struct FlowTable {
    flows: HashMap<FlowKey, Track>,
    verdicts: BTreeMap<VerdictBucket, u64>,
    /// A packet that a rule decided, per (host, rule id): what to ask the agent about.
    samples: BTreeMap<(String, u32), RuleSample>,
    /// What the agents said those rules are.
    rule_names: BTreeMap<(String, u32), String>,
    seq: u64,
}

/// (verdict, reason, host and rule id when a rule decided, direction).
type VerdictBucket = (String, String, Option<(String, u32)>, Option<String>);

/// A packet decided by a rule, as `ilanet policy explain` takes it.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleSample {
    /// Source address.
    pub src: Ipv6Addr,
    /// Destination address.
    pub dst: Ipv6Addr,
    /// Destination port.
    pub dport: u16,
    /// Protocol name.
    pub proto: String,
}

/// Policy name in an explained rule (`policy NAME (tenant …) …`).
fn policy_of(rule: &str) -> Option<String> {
    rule.strip_prefix("policy ")?
        .split_whitespace()
        .next()
        .map(str::to_string)
}

/// Protocol name of a number.
pub fn proto_name(p: u8) -> String {
    match p {
        6 => "tcp".into(),
        17 => "udp".into(),
        58 => "icmpv6".into(),
        n => n.to_string(),
    }
}

fn reason_text(r: VerdictReason, rule: Option<u32>) -> String {
    match r {
        VerdictReason::Rule => match rule {
            Some(id) => format!("policy rule {id}"),
            None => "a policy rule".into(),
        },
        VerdictReason::DefaultAllow => "no policy selects it (default allow)".into(),
        VerdictReason::DefaultDeny => "no rule allows it (default deny)".into(),
        VerdictReason::TenantIsolation => "the peer is in another tenant".into(),
        VerdictReason::NoPolicy => "endpoint has no policy entry (fail closed)".into(),
        VerdictReason::Spoofed => "source address is not the container's own (spoofing)".into(),
        VerdictReason::NoEndpoint => "no such local endpoint".into(),
        VerdictReason::Malformed => "malformed packet".into(),
        VerdictReason::Checksum => "checksum fix failed".into(),
        VerdictReason::Rewrite => "address rewrite failed".into(),
        VerdictReason::Unclassified => "packet could not be classified (fail closed)".into(),
        VerdictReason::Fragment => "non-first fragment (fail closed)".into(),
    }
}

fn kebab<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

impl FlowTable {
    fn track(&mut self, key: FlowKey, snap: &Snapshot) -> &mut Track {
        self.seq += 1;
        let seq = self.seq;
        if !self.flows.contains_key(&key) && self.flows.len() >= MAX_FLOWS {
            if let Some(oldest) = self
                .flows
                .iter()
                .min_by_key(|(_, t)| t.flow.last_seq)
                .map(|(k, _)| *k)
            {
                self.flows.remove(&oldest);
            }
        }
        let t = self.flows.entry(key).or_insert_with(|| Track {
            flow: Flow {
                key,
                proto_name: proto_name(key.proto),
                src_name: snap.name_of(key.src).map(str::to_string),
                dst_name: snap.name_of(key.dst).map(str::to_string),
                sent: 0,
                received: 0,
                dropped: 0,
                verdict: None,
                last_seq: seq,
                steps: Vec::new(),
            },
            stage: Stage::Idle,
            verdict_rule: None,
        });
        t.flow.last_seq = seq;
        t
    }

    /// Takes the events drained from every host in one round. Hosts are drained one after
    /// another, so a packet's receiver may be read before its sender: the sending side's
    /// events (from-container) go first, then the wire side's, each in ring order.
    pub fn add_round(&mut self, events: &[(String, FlowEvent)], snap: &Snapshot) {
        let sender_side = |ev: &FlowEvent| match ev {
            FlowEvent::Translation(t) => t.direction == ProgramKind::FromContainer,
            FlowEvent::Verdict(v) => v.program == ProgramKind::FromContainer,
        };
        for (host, ev) in events.iter().filter(|(_, e)| sender_side(e)) {
            self.add(host, ev, snap);
        }
        for (host, ev) in events.iter().filter(|(_, e)| !sender_side(e)) {
            self.add(host, ev, snap);
        }
    }

    /// Takes one event reported by `host`.
    pub fn add(&mut self, host: &str, ev: &FlowEvent, snap: &Snapshot) {
        match ev {
            FlowEvent::Translation(t) => {
                let from_container = t.direction == ProgramKind::FromContainer;
                let key = FlowKey {
                    src: t.src,
                    dst: if from_container {
                        t.dst_before
                    } else {
                        t.dst_after
                    },
                    proto: t.l4_proto,
                };
                let mode = t.csum_mode.to_string();
                let tr = self.track(key, snap);
                let names = |a: Ipv6Addr| {
                    snap.name_of(a)
                        .map(|n| format!(" ({n})"))
                        .unwrap_or_default()
                };
                if from_container {
                    tr.flow.sent += 1;
                    if tr.stage != Stage::Allowed {
                        tr.flow.steps = vec![sent_step(host, key, snap)];
                    }
                    tr.flow.steps.push(Step {
                        kind: "from-container",
                        host: host.to_string(),
                        src: t.src,
                        dst: t.dst_before,
                        dst_after: Some(t.dst_after),
                        csum_mode: Some(mode.clone()),
                        note: format!(
                            "from-container rewrites the destination SIR → ILA: {} → {} (checksum mode {mode})",
                            t.dst_before, t.dst_after
                        ),
                    });
                    tr.flow
                        .steps
                        .push(route_step(host, t.src, t.dst_after, snap));
                    tr.stage = Stage::OnWire;
                } else {
                    tr.flow.received += 1;
                    match tr.stage {
                        Stage::OnWire => {}
                        // The next packet of a busy flow: same rewrite, shown once; keep the
                        // sender's side and replace the receiver's.
                        Stage::Received => {
                            while tr.flow.steps.last().is_some_and(|s| {
                                s.kind == "from-wire" || (s.kind == "policy" && s.host == host)
                            }) {
                                tr.flow.steps.pop();
                            }
                        }
                        // The sender's events were not seen (a host not watched, or tracing
                        // started mid-flow): show the receiver's side alone.
                        Stage::Idle | Stage::Allowed => tr.flow.steps.clear(),
                    }
                    tr.flow.steps.push(Step {
                        kind: "from-wire",
                        host: host.to_string(),
                        src: t.src,
                        dst: t.dst_before,
                        dst_after: Some(t.dst_after),
                        csum_mode: Some(mode.clone()),
                        note: format!(
                            "from-wire rewrites the destination ILA → SIR: {} → {}{} (checksum mode {mode})",
                            t.dst_before,
                            t.dst_after,
                            names(t.dst_after)
                        ),
                    });
                    tr.stage = Stage::Received;
                }
            }
            FlowEvent::Verdict(v) => {
                let verdict = kebab(&v.verdict);
                let reason = kebab(&v.reason);
                let direction = v.direction.map(|d| kebab(&d));
                let mut rule = v.rule_id.map(|id| (host.to_string(), id));
                if self.samples.len() >= MAX_VERDICT_BUCKETS
                    && rule.as_ref().is_some_and(|r| !self.samples.contains_key(r))
                {
                    rule = None;
                }
                if let Some(r) = &rule {
                    self.samples.entry(r.clone()).or_insert_with(|| RuleSample {
                        src: v.src,
                        dst: v.dst,
                        dport: v.dport,
                        proto: proto_name(v.proto),
                    });
                }
                let bucket = (verdict.clone(), reason.clone(), rule, direction.clone());
                if self.verdicts.len() < MAX_VERDICT_BUCKETS || self.verdicts.contains_key(&bucket)
                {
                    *self.verdicts.entry(bucket).or_insert(0) += 1;
                }
                let key = FlowKey {
                    src: v.src,
                    dst: v.dst,
                    proto: v.proto,
                };
                let tr = self.track(key, snap);
                let why = reason_text(v.reason, v.rule_id);
                tr.flow.verdict = Some(format!("{verdict}: {why}"));
                tr.verdict_rule = v.rule_id.map(|id| (host.to_string(), id));
                let sender_side = v.program == ProgramKind::FromContainer;
                if sender_side && tr.stage != Stage::Allowed {
                    tr.flow.steps = vec![sent_step(host, key, snap)];
                }
                if !sender_side && tr.stage != Stage::Received && tr.stage != Stage::OnWire {
                    tr.flow.steps.clear();
                }
                let dropped = v.verdict == FlowVerdict::Drop;
                tr.flow.steps.push(Step {
                    kind: if dropped { "dropped" } else { "policy" },
                    host: host.to_string(),
                    src: v.src,
                    dst: v.dst,
                    dst_after: None,
                    csum_mode: None,
                    note: format!(
                        "{} {}: {why} (identity {} → {}, VNID {} → {})",
                        v.program.as_str(),
                        if dropped { "dropped it" } else { "allowed it" },
                        v.src_identity,
                        v.dst_identity,
                        v.src_vnid,
                        v.dst_vnid
                    ),
                });
                if dropped {
                    tr.flow.dropped += 1;
                    tr.stage = Stage::Idle;
                } else if sender_side {
                    tr.stage = Stage::Allowed;
                }
            }
        }
    }

    /// The flows, newest first, each with its latest packet's steps (a packet rewritten by
    /// from-wire and not dropped is shown delivered).
    pub fn flows(&self, snap: &Snapshot) -> Vec<Flow> {
        let mut v: Vec<Flow> = self
            .flows
            .values()
            .map(|t| {
                let mut f = t.flow.clone();
                if let Some(name) = t.verdict_rule.as_ref().and_then(|r| self.rule_names.get(r)) {
                    let verdict = f
                        .verdict
                        .as_deref()
                        .and_then(|v| v.split(':').next())
                        .unwrap_or("allow");
                    f.verdict = Some(format!("{verdict}: {name}"));
                }
                if t.stage == Stage::Received {
                    if let Some(last) = f.steps.iter().rev().find(|s| s.kind == "from-wire") {
                        let host = last.host.clone();
                        let dst = last.dst_after.unwrap_or(f.key.dst);
                        let who = snap
                            .name_of(dst)
                            .map_or_else(|| dst.to_string(), str::to_string);
                        f.steps.push(Step {
                            kind: "delivered",
                            host,
                            src: f.key.src,
                            dst,
                            dst_after: None,
                            csum_mode: None,
                            note: format!("delivered to {who} with its own SIR address {dst}"),
                        });
                    }
                }
                f
            })
            .collect();
        v.sort_by_key(|f| std::cmp::Reverse(f.last_seq));
        v
    }

    /// Verdict counts by rule/reason, with the rule's policy once the agent named it.
    pub fn verdicts(&self) -> Vec<VerdictCount> {
        self.verdicts
            .iter()
            .map(|((verdict, reason, rule, direction), count)| {
                let name = rule.as_ref().and_then(|r| self.rule_names.get(r)).cloned();
                VerdictCount {
                    verdict: verdict.clone(),
                    reason: reason.clone(),
                    rule_id: rule.as_ref().map(|(_, id)| *id),
                    policy: name.as_deref().and_then(policy_of),
                    rule: name,
                    direction: direction.clone(),
                    count: *count,
                }
            })
            .collect()
    }

    /// Rules seen in verdicts that have no name yet: (host, rule id) and a packet it decided.
    pub fn unnamed_rules(&self) -> Vec<((String, u32), RuleSample)> {
        self.samples
            .iter()
            .filter(|(k, _)| !self.rule_names.contains_key(*k))
            .map(|(k, s)| (k.clone(), s.clone()))
            .collect()
    }

    /// Records what the agent of `key.0` says rule `key.1` is.
    pub fn name_rule(&mut self, key: (String, u32), name: String) {
        self.rule_names.insert(key, name);
    }
}

fn sent_step(host: &str, key: FlowKey, snap: &Snapshot) -> Step {
    let name = |a: Ipv6Addr| {
        snap.name_of(a)
            .map_or_else(|| a.to_string(), str::to_string)
    };
    Step {
        kind: "sent",
        host: host.to_string(),
        src: key.src,
        dst: key.dst,
        dst_after: None,
        csum_mode: None,
        note: format!(
            "{} sends {} to {}: SIR {} → SIR {}",
            name(key.src),
            proto_name(key.proto),
            name(key.dst),
            key.src,
            key.dst
        ),
    }
}

fn route_step(host: &str, src: Ipv6Addr, ila: Ipv6Addr, snap: &Snapshot) -> Step {
    let to_site = snap.site_of_locator(ila);
    let locator = to_site
        .and_then(|s| s.locator.clone())
        .unwrap_or_else(|| format!("{}/64", Ipv6Addr::from((u128::from(ila) >> 64) << 64)));
    let route = snap.sites.iter().find(|s| s.name == host).and_then(|s| {
        s.routes.iter().find(|r| {
            r.prefix
                .split('/')
                .next()
                .and_then(|a| a.parse::<Ipv6Addr>().ok())
                .is_some_and(|a| u128::from(a) >> 64 == u128::from(ila) >> 64)
        })
    });
    let via = match route {
        Some(r) => format!(
            "BGP route {} next hop {}{}",
            r.prefix,
            r.next_hop,
            r.installed_via
                .map(|g| format!(", kernel route via {g}"))
                .unwrap_or_default()
        ),
        None => "the underlay's route to that locator".into(),
    };
    Step {
        kind: "route",
        host: host.to_string(),
        src,
        dst: ila,
        dst_after: None,
        csum_mode: None,
        note: format!(
            "routed on the underlay to locator {locator}{} by {via}",
            to_site
                .map(|s| format!(" (host {})", s.name))
                .unwrap_or_default()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ui::view::{ContainerView, SiteView};
    use dataplane::{TranslationEvent, VerdictEvent};
    use ila::ChecksumMode;

    fn a(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    fn site(name: &str, locator: &str, container: &str, sir: &str) -> SiteView {
        SiteView {
            name: name.into(),
            display: name.into(),
            location: None,
            locator: Some(locator.into()),
            agent_up: true,
            counters: vec![],
            routes: vec![],
            containers: vec![ContainerView {
                name: container.into(),
                endpoint: container.into(),
                site: name.into(),
                netns: container.into(),
                container_id: None,
                sir_addr: a(sir),
                ila_addr: None,
                tenant: None,
                vnid: None,
                identity: 300,
                labels: Default::default(),
            }],
        }
    }

    fn snap() -> Snapshot {
        Snapshot {
            sites: vec![
                site("a", "2001:db8:1::/64", "a-1", "fd00::1"),
                site("b", "2001:db8:2::/64", "b-1", "fd00::2"),
            ],
            ..Snapshot::default()
        }
    }

    fn tr(dir: ProgramKind, dst_before: &str, dst_after: &str) -> FlowEvent {
        FlowEvent::Translation(TranslationEvent {
            direction: dir,
            csum_mode: ChecksumMode::NeutralMap,
            l4_proto: 58,
            ifindex: 1,
            src: a("fd00::1"),
            dst_before: a(dst_before),
            dst_after: a(dst_after),
        })
    }

    fn verdict(program: ProgramKind, v: FlowVerdict, reason: VerdictReason) -> FlowEvent {
        FlowEvent::Verdict(VerdictEvent {
            program,
            verdict: v,
            reason,
            direction: None,
            proto: 58,
            sport: 1,
            dport: 0,
            ifindex: 1,
            src: a("fd00::1"),
            dst: a("fd00::2"),
            src_identity: 300,
            dst_identity: 301,
            src_vnid: 1,
            dst_vnid: 2,
            rule_id: None,
        })
    }

    #[test]
    fn a_delivered_packet_has_every_step_in_order() {
        let s = snap();
        let mut t = FlowTable::default();
        t.add(
            "a",
            &tr(ProgramKind::FromContainer, "fd00::2", "2001:db8:2::2"),
            &s,
        );
        t.add(
            "b",
            &tr(ProgramKind::FromWire, "2001:db8:2::2", "fd00::2"),
            &s,
        );
        let flows = t.flows(&s);
        assert_eq!(flows.len(), 1);
        let f = &flows[0];
        assert_eq!(
            (f.src_name.as_deref(), f.dst_name.as_deref()),
            (Some("a-1"), Some("b-1"))
        );
        let kinds: Vec<_> = f.steps.iter().map(|s| s.kind).collect();
        assert_eq!(
            kinds,
            ["sent", "from-container", "route", "from-wire", "delivered"]
        );
        assert_eq!(f.steps[1].dst_after, Some(a("2001:db8:2::2")));
        assert!(f.steps[2].note.contains("host b"), "{}", f.steps[2].note);
        assert_eq!(f.steps[3].host, "b");
        assert_eq!((f.sent, f.received, f.dropped), (1, 1, 0));
    }

    #[test]
    fn a_round_read_receiver_first_and_a_busy_flow_still_show_one_whole_packet() {
        let s = snap();
        let mut t = FlowTable::default();
        let out = tr(ProgramKind::FromContainer, "fd00::2", "2001:db8:2::2");
        let inb = tr(ProgramKind::FromWire, "2001:db8:2::2", "fd00::2");
        // Host b drained before host a, three packets each.
        let mut round: Vec<(String, FlowEvent)> = vec![("b".into(), inb); 3];
        round.extend(vec![("a".into(), out); 3]);
        t.add_round(&round, &s);
        let f = &t.flows(&s)[0];
        let kinds: Vec<_> = f.steps.iter().map(|s| s.kind).collect();
        assert_eq!(
            kinds,
            ["sent", "from-container", "route", "from-wire", "delivered"]
        );
        assert_eq!((f.sent, f.received), (3, 3));
    }

    #[test]
    fn a_drop_at_the_receiver_is_not_delivered() {
        let s = snap();
        let mut t = FlowTable::default();
        t.add(
            "a",
            &tr(ProgramKind::FromContainer, "fd00::2", "2001:db8:2::2"),
            &s,
        );
        t.add(
            "b",
            &tr(ProgramKind::FromWire, "2001:db8:2::2", "fd00::2"),
            &s,
        );
        t.add(
            "b",
            &verdict(
                ProgramKind::FromWire,
                FlowVerdict::Drop,
                VerdictReason::TenantIsolation,
            ),
            &s,
        );
        let f = &t.flows(&s)[0];
        let kinds: Vec<_> = f.steps.iter().map(|s| s.kind).collect();
        assert_eq!(
            kinds,
            ["sent", "from-container", "route", "from-wire", "dropped"]
        );
        assert!(f.steps[4].note.contains("another tenant"));
        assert_eq!(t.verdicts()[0].reason, "tenant-isolation");
        assert_eq!(t.verdicts()[0].count, 1);
    }

    #[test]
    fn an_allowed_new_flow_keeps_its_policy_step_and_drops_at_the_sender_stop_there() {
        let s = snap();
        let mut t = FlowTable::default();
        t.add(
            "a",
            &verdict(
                ProgramKind::FromContainer,
                FlowVerdict::Allow,
                VerdictReason::DefaultAllow,
            ),
            &s,
        );
        t.add(
            "a",
            &tr(ProgramKind::FromContainer, "fd00::2", "2001:db8:2::2"),
            &s,
        );
        let kinds: Vec<_> = t.flows(&s)[0].steps.iter().map(|s| s.kind).collect();
        assert_eq!(kinds, ["sent", "policy", "from-container", "route"]);
        t.add(
            "a",
            &verdict(
                ProgramKind::FromContainer,
                FlowVerdict::Drop,
                VerdictReason::DefaultDeny,
            ),
            &s,
        );
        let kinds: Vec<_> = t.flows(&s)[0].steps.iter().map(|s| s.kind).collect();
        assert_eq!(kinds, ["sent", "dropped"]);
    }

    #[test]
    fn rules_are_named_once_and_counted_per_policy() {
        let s = snap();
        let mut t = FlowTable::default();
        let mut ev = verdict(
            ProgramKind::FromWire,
            FlowVerdict::Allow,
            VerdictReason::Rule,
        );
        if let FlowEvent::Verdict(v) = &mut ev {
            v.rule_id = Some(7);
            v.dport = 5201;
            v.proto = 6;
        }
        t.add("b", &ev, &s);
        t.add("b", &ev, &s);
        let unnamed = t.unnamed_rules();
        assert_eq!(unnamed.len(), 1);
        assert_eq!(unnamed[0].0, ("b".to_string(), 7));
        assert_eq!(
            (unnamed[0].1.dport, unnamed[0].1.proto.as_str()),
            (5201, "tcp")
        );
        t.name_rule(
            ("b".into(), 7),
            "policy correlate-ingress (tenant 1) specs[0].ingress[0]".into(),
        );
        assert!(t.unnamed_rules().is_empty());
        let v = &t.verdicts()[0];
        assert_eq!(v.count, 2);
        assert_eq!(v.policy.as_deref(), Some("correlate-ingress"));
        assert_eq!(v.rule_id, Some(7));
    }

    #[test]
    fn the_table_is_bounded() {
        let s = snap();
        let mut t = FlowTable::default();
        for i in 0..(MAX_FLOWS as u128 + 10) {
            let dst = Ipv6Addr::from(0xfd00_u128 << 112 | (i + 1));
            let ev = FlowEvent::Translation(TranslationEvent {
                direction: ProgramKind::FromContainer,
                csum_mode: ChecksumMode::NeutralMap,
                l4_proto: 58,
                ifindex: 1,
                src: a("fd00::1"),
                dst_before: dst,
                dst_after: dst,
            });
            t.add("a", &ev, &s);
        }
        assert_eq!(t.flows(&s).len(), MAX_FLOWS);
    }
}
