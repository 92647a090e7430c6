//! What a lab created, recorded on disk before each step, so `lab down` removes everything even
//! after a crash and never touches what the lab did not create.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::plan::Plan;
use crate::LabError;

/// Directory of lab records (tmpfs: namespaces and records vanish together at reboot).
pub fn state_dir() -> PathBuf {
    std::env::var_os("ILANET_STATE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/ilanet/labs"))
}

/// Root of a lab's pinned eBPF objects.
pub fn pin_root(lab: &str) -> PathBuf {
    Path::new("/sys/fs/bpf/ilanet").join(lab)
}

/// Pin directory of one host's maps and links.
pub fn host_pin_dir(lab: &str, host: &str) -> PathBuf {
    pin_root(lab).join(host)
}

/// Lifecycle of a lab record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// `lab up` is (or was, if it crashed) building.
    Creating,
    /// Fully built.
    Up,
}

/// The on-disk record of a lab.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabState {
    /// Where the lab is in its lifecycle.
    pub phase: Phase,
    /// The resolved topology.
    pub plan: Plan,
    /// Namespaces this lab created (and only those), in creation order.
    pub created_netns: Vec<String>,
    /// Pid of the process that built the lab.
    pub pid: u32,
    /// Agent processes started for the lab.
    #[serde(default)]
    pub agents: Vec<u32>,
    /// The lab's etcd cluster, if it has one.
    #[serde(default)]
    pub etcd: Option<store::etcd_cluster::EtcdClusterInfo>,
    /// Routing daemon processes (BIRD, FRR, gobgpd) started on the router.
    #[serde(default)]
    pub daemons: Vec<u32>,
}

fn record_path(lab: &str) -> PathBuf {
    state_dir().join(format!("{lab}.json"))
}

fn os_err(what: String) -> impl FnOnce(io::Error) -> LabError {
    move |source| LabError::Os { what, source }
}

impl LabState {
    /// Claims the lab name: creates the record atomically, failing if the lab exists.
    pub fn claim(plan: &Plan) -> Result<Self, LabError> {
        let dir = state_dir();
        fs::create_dir_all(&dir).map_err(os_err(format!("creating {}", dir.display())))?;
        let path = record_path(&plan.name);
        let state = Self {
            phase: Phase::Creating,
            plan: plan.clone(),
            created_netns: Vec::new(),
            pid: std::process::id(),
            agents: Vec::new(),
            etcd: None,
            daemons: Vec::new(),
        };
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| {
                if e.kind() == io::ErrorKind::AlreadyExists {
                    LabError::AlreadyUp {
                        lab: plan.name.clone(),
                        record: path.clone(),
                    }
                } else {
                    os_err(format!("creating {}", path.display()))(e)
                }
            })?;
        let json = serde_json::to_vec_pretty(&state).map_err(|e| LabError::Record {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        file.write_all(&json)
            .and_then(|_| file.sync_all())
            .map_err(os_err(format!("writing {}", path.display())))?;
        Ok(state)
    }

    /// Reads a lab's record; `None` if the lab is not up.
    /// The name is validated first (as `lab up` does), and the record must name the same lab:
    /// every path `lab down` removes is derived from it.
    pub fn load(lab: &str) -> Result<Option<Self>, LabError> {
        crate::plan::validate_lab_name(lab)?;
        let path = record_path(lab);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(os_err(format!("reading {}", path.display()))(e)),
        };
        let state: Self = serde_json::from_slice(&bytes).map_err(|e| LabError::Record {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if state.plan.name != lab {
            return Err(LabError::Record {
                path,
                reason: format!(
                    "it records lab '{}', not '{lab}'; refusing to act on it",
                    state.plan.name
                ),
            });
        }
        Ok(Some(state))
    }

    /// Writes the record (atomically: temp file + rename).
    pub fn save(&self) -> Result<(), LabError> {
        let path = record_path(&self.plan.name);
        let tmp = path.with_extension("json.tmp");
        let json = serde_json::to_vec_pretty(self).map_err(|e| LabError::Record {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let mut file =
            fs::File::create(&tmp).map_err(os_err(format!("creating {}", tmp.display())))?;
        file.write_all(&json)
            .and_then(|_| file.sync_all())
            .map_err(os_err(format!("writing {}", tmp.display())))?;
        fs::rename(&tmp, &path).map_err(os_err(format!(
            "renaming {} to {}",
            tmp.display(),
            path.display()
        )))
    }

    /// Removes the record.
    pub fn remove(lab: &str) -> Result<(), LabError> {
        crate::plan::validate_lab_name(lab)?;
        match fs::remove_file(record_path(lab)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(os_err(format!("removing {}", record_path(lab).display()))(
                e,
            )),
        }
    }

    /// Names of all labs with a record.
    pub fn list() -> Result<Vec<String>, LabError> {
        let dir = state_dir();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(os_err(format!("reading {}", dir.display()))(e)),
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_suffix(".json"))
                    .map(str::to_string)
            })
            .collect();
        names.sort();
        Ok(names)
    }
}

/// Where a lab site stands on the dashboard's map. The paper's SC17 sites are at their cities;
/// other sites (`site1`, `site2`, …) get places of research networks in turn, the `index`-th
/// (0-based) of the lab's hosts, so every site has a distinct point.
pub fn site_location(host: &str, display: &str, index: usize) -> agent::host_config::Location {
    const SC17: [(&str, f64, f64); 4] = [
        ("nola", 29.951, -90.072),
        ("austin", 30.267, -97.743),
        ("slc", 40.761, -111.891),
        ("denver", 39.739, -104.990),
    ];
    const OTHERS: [(&str, f64, f64); 8] = [
        ("Amsterdam", 52.370, 4.895),
        ("Geneva", 46.204, 6.143),
        ("Chicago", 41.878, -87.630),
        ("Hamburg", 53.551, 9.994),
        ("Barcelona", 41.386, 2.170),
        ("Bologna", 44.494, 11.343),
        ("Lisbon", 38.722, -9.139),
        ("Prague", 50.075, 14.438),
    ];
    if let Some((_, lat, lon)) = SC17.iter().find(|(n, _, _)| *n == host) {
        return agent::host_config::Location {
            lat: *lat,
            lon: *lon,
            name: display.to_string(),
        };
    }
    let (place, lat, lon) = OTHERS[index % OTHERS.len()];
    // Past the list, later rounds sit slightly south-east of the first so points stay apart.
    let round = (index / OTHERS.len()) as f64;
    agent::host_config::Location {
        lat: lat - round * 1.5,
        lon: lon + round * 1.5,
        name: if display.is_empty() {
            place.to_string()
        } else {
            format!("{display} ({place})")
        },
    }
}

#[cfg(test)]
mod location_tests {
    use super::site_location;

    #[test]
    fn sc17_sites_are_at_their_cities_and_others_are_distinct() {
        let d = site_location("denver", "Denver", 3);
        assert_eq!(
            (d.lat, d.lon, d.name.as_str()),
            (39.739, -104.990, "Denver")
        );
        let pts: Vec<(f64, f64)> = (0..20)
            .map(|i| {
                let l = site_location(&format!("site{i}"), "", i);
                (l.lat, l.lon)
            })
            .collect();
        for (i, a) in pts.iter().enumerate() {
            for b in &pts[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }
}
