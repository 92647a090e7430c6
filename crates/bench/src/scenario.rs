//! The cases a campaign can measure. New ones are one entry here and one arm in
//! [`Setup::apply`] (or, for a rule series, in the runner's per-run switch).

use lab::plan::Mode;
use lab::SwarmRules;

use crate::ebpf::{Endpoints, PolicyCheck};
use crate::BenchError;

/// What is configured on a lab before it is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setup {
    /// Nothing beyond the mode itself.
    Plain,
    /// iptables in the swarm hosts' FORWARD chains.
    Iptables(SwarmRules),
    /// The paper's Listing 10 as eBPF policy, applied through the agents and checked to be
    /// enforced (ILA mode).
    EbpfPolicy,
}

impl Setup {
    /// `Err(reason)` if this setup cannot be built (every setup can today; kept so a future
    /// case can be listed before it works).
    pub fn availability(&self) -> Result<(), String> {
        Ok(())
    }

    /// Configures a running lab before its iperf3 server starts. `endpoints` are the benchmark
    /// endpoints of an ILA lab. Returns what the policy check found, for policy setups.
    pub fn apply(
        &self,
        lab_name: &str,
        endpoints: Option<&Endpoints>,
    ) -> Result<Option<PolicyCheck>, BenchError> {
        match self {
            Setup::Plain => Ok(None),
            Setup::Iptables(rules) => {
                lab::set_swarm_rules(lab_name, *rules)?;
                Ok(None)
            }
            Setup::EbpfPolicy => {
                let ep = endpoints.ok_or_else(|| {
                    BenchError::Invalid(format!(
                        "lab '{lab_name}': the eBPF policy needs an ILA lab with benchmark endpoints"
                    ))
                })?;
                Ok(Some(ep.install_listing10()?))
            }
        }
    }
}

/// One scenario of the paper campaign.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Name on the command line and in the report.
    pub name: &'static str,
    /// Short tag for lab names.
    pub tag: &'static str,
    /// What it is.
    pub description: &'static str,
    /// Lab mode.
    pub mode: Mode,
    /// Extra configuration.
    pub setup: Setup,
}

/// The paper's Fig. 14 scenarios plus the physical limit, in report order.
pub fn paper_scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "native",
            tag: "nat",
            description: "plain routed IPv6, no overlay (physical limit)",
            mode: Mode::Native,
            setup: Setup::Plain,
        },
        Scenario {
            name: "ila",
            tag: "ila",
            description: "ILA translation in eBPF, no policy",
            mode: Mode::Ila,
            setup: Setup::Plain,
        },
        Scenario {
            name: "ila+policy",
            tag: "ilp",
            description: "ILA with the paper's Listing 10 policy in eBPF (cilium_tcp5201)",
            mode: Mode::Ila,
            setup: Setup::EbpfPolicy,
        },
        Scenario {
            name: "swarm",
            tag: "swm",
            description: "VXLAN overlay, bridge, no filter (ipt_no_rules)",
            mode: Mode::Swarm,
            setup: Setup::Plain,
        },
        Scenario {
            name: "swarm+iptables",
            tag: "swi",
            description: "VXLAN overlay with the paper's Listing 9 iptables (ipt_tcp5201)",
            mode: Mode::Swarm,
            setup: Setup::Iptables(SwarmRules::Listing9 { extra: 0 }),
        },
        Scenario {
            name: "evpn",
            tag: "evp",
            description: "VXLAN per tenant, MP-BGP EVPN via gobgpd, ND suppression (no policy: \
                          EVPN mode has no eBPF)",
            mode: Mode::Evpn,
            setup: Setup::Plain,
        },
    ]
}

/// A series of the rule-count curve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleSeries {
    /// iptables (x_tables): Listing 9 with N non-matching rules before the accepts.
    Iptables,
    /// eBPF policy: Listing 10 plus N rules that never match the measured flow, each its own
    /// `POLICY` map entry.
    Ebpf,
}

impl RuleSeries {
    /// Every series, in report order.
    pub const ALL: [RuleSeries; 2] = [RuleSeries::Iptables, RuleSeries::Ebpf];

    /// Name in the report.
    pub fn name(self) -> &'static str {
        match self {
            RuleSeries::Iptables => "iptables",
            RuleSeries::Ebpf => "ebpf",
        }
    }

    /// Lab mode the series runs on.
    pub fn mode(self) -> Mode {
        match self {
            RuleSeries::Iptables => Mode::Swarm,
            RuleSeries::Ebpf => Mode::Ila,
        }
    }

    /// `Err(reason)` if the series cannot be measured (both can today).
    pub fn availability(self) -> Result<(), String> {
        Ok(())
    }

    /// Total rules the filter holds with `extra` non-matching ones (Listing 9's two, or
    /// Listing 10's one, plus the extra).
    pub fn total_rules(self, extra: usize) -> usize {
        match self {
            RuleSeries::Iptables => SwarmRules::Listing9 { extra }.rule_count(),
            RuleSeries::Ebpf => extra + 1,
        }
    }

    /// What the extra rules are, for the report.
    pub fn describe(self, extra: usize) -> String {
        match self {
            RuleSeries::Iptables => {
                format!("iptables: Listing 9 with {extra} non-matching rules before the accepts")
            }
            RuleSeries::Ebpf => format!(
                "eBPF: Listing 10 plus {extra} rules allowing app=service1 on ports the flow never uses"
            ),
        }
    }
}

/// Rule counts of the curve (non-matching rules before the accepts).
pub const RULE_COUNTS: [usize; 6] = [0, 1, 100, 1_000, 10_000, 100_000];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenario_names_are_unique_and_all_available() {
        let s = paper_scenarios();
        let mut names: Vec<_> = s.iter().map(|x| x.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), s.len());
        assert!(s.iter().all(|x| x.setup.availability().is_ok()));
        let policy = s
            .iter()
            .find(|x| x.name == "ila+policy")
            .expect("ila+policy");
        assert_eq!((policy.mode, policy.setup), (Mode::Ila, Setup::EbpfPolicy));
        assert!(RuleSeries::ALL.iter().all(|r| r.availability().is_ok()));
        assert_eq!(RuleSeries::Iptables.total_rules(100), 102);
        assert_eq!(RuleSeries::Ebpf.total_rules(100), 101);
    }
}
