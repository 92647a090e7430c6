//! The cases a campaign can measure. New ones (e.g. the eBPF policy once the policy engine
//! exists) are one entry here and one arm in [`Setup::apply`].

use lab::plan::Mode;
use lab::SwarmRules;

use crate::BenchError;

/// What is configured on a lab before it is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setup {
    /// Nothing beyond the mode itself.
    Plain,
    /// iptables in the swarm hosts' FORWARD chains.
    Iptables(SwarmRules),
    /// The paper's Listing 10 as eBPF policy (needs the policy engine).
    EbpfPolicy,
}

impl Setup {
    /// `Err(reason)` if this setup cannot be built yet.
    pub fn availability(&self) -> Result<(), String> {
        match self {
            Setup::Plain | Setup::Iptables(_) => Ok(()),
            Setup::EbpfPolicy => Err(
                "not available yet: the eBPF policy engine (Listing 10 as label-based policy) does not exist yet"
                    .into(),
            ),
        }
    }

    /// Configures a running lab.
    pub fn apply(&self, lab_name: &str) -> Result<(), BenchError> {
        match self {
            Setup::Plain => Ok(()),
            Setup::Iptables(rules) => Ok(lab::set_swarm_rules(lab_name, *rules)?),
            Setup::EbpfPolicy => Err(BenchError::Invalid(
                self.availability().err().unwrap_or_default(),
            )),
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
    ]
}

/// A series of the rule-count curve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleSeries {
    /// iptables (x_tables): Listing 9 with N non-matching rules before the accepts.
    Iptables,
    /// eBPF policy with N rules (needs the policy engine).
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

    /// `Err(reason)` if the series cannot be measured yet.
    pub fn availability(self) -> Result<(), String> {
        match self {
            RuleSeries::Iptables => Ok(()),
            RuleSeries::Ebpf => Err(
                "not available yet: comes with the eBPF policy engine (O(1) lookups, expected flat)"
                    .into(),
            ),
        }
    }

    /// Total rules the filter holds with `extra` non-matching ones.
    pub fn total_rules(self, extra: usize) -> usize {
        match self {
            RuleSeries::Iptables => SwarmRules::Listing9 { extra }.rule_count(),
            RuleSeries::Ebpf => extra + 1,
        }
    }

    /// Installs the filter with `extra` non-matching rules on a running lab.
    pub fn apply(self, lab_name: &str, extra: usize) -> Result<(), BenchError> {
        match self {
            RuleSeries::Iptables => Ok(lab::set_swarm_rules(
                lab_name,
                SwarmRules::Listing9 { extra },
            )?),
            RuleSeries::Ebpf => Err(BenchError::Invalid(
                self.availability().err().unwrap_or_default(),
            )),
        }
    }
}

/// Rule counts of the curve (non-matching rules before the accepts).
pub const RULE_COUNTS: [usize; 6] = [0, 1, 100, 1_000, 10_000, 100_000];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenario_names_are_unique_and_policy_is_pending() {
        let s = paper_scenarios();
        let mut names: Vec<_> = s.iter().map(|x| x.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), s.len());
        let pending: Vec<_> = s
            .iter()
            .filter(|x| x.setup.availability().is_err())
            .map(|x| x.name)
            .collect();
        assert_eq!(pending, ["ila+policy"]);
        assert!(RuleSeries::Ebpf.availability().is_err());
        assert_eq!(RuleSeries::Iptables.total_rules(100), 102);
    }
}
