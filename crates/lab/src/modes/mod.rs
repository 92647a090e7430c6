//! Lab modes other than ILA, for side-by-side comparisons (DESIGN §4), and the knobs the
//! benchmarks turn on a running lab.

pub(crate) mod cmd;
pub mod evpn;
pub(crate) mod native;
pub(crate) mod swarm;
pub(crate) mod tune;
