//! Lab modes other than ILA, for side-by-side comparisons (DESIGN §4).

pub(crate) mod native;
pub(crate) mod swarm;
