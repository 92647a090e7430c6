//! Lab containers made by a real runtime: podman 4.3 with runc and its CNI backend, calling the
//! `ilanet-cni` plugin, which asks the host's agent to plumb the container.
//!
//! Everything podman keeps lives in one directory per lab ([`dir`]): its storage (`--root`),
//! run state (`--runroot`, `--tmpdir`), a `containers.conf`, the CNI configuration of each host,
//! a copy of the plugin and a busybox-static root filesystem (`--rootfs`, so that no image
//! registry is needed). Nothing on the machine is changed for good, and `lab down` (also after
//! a crash) finds it all from the lab's name. The same helpers set up podman for the
//! two-machine podman test.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use agent::api::Request;
use agent::reconcile::LocalEndpoint;

use crate::plan::{ContainerPlan, HostPlan, Plan};
use crate::state::LabState;
use crate::{agents, LabError};

/// The plugin's file name; also the `type` of the network configurations.
pub const PLUGIN: &str = "ilanet-cni";

/// Busybox applets linked in the root filesystem (what the lab and the tests run inside).
const APPLETS: [&str; 6] = ["sh", "sleep", "ping", "ip", "nc", "cat"];

/// podman's directory of a lab.
pub fn dir(lab: &str) -> PathBuf {
    agents::run_dir(lab).join("podman")
}

fn io_err(what: String) -> impl FnOnce(std::io::Error) -> LabError {
    move |source| LabError::Os { what, source }
}

/// The CNI network of a tenant (one network per tenant; its configuration names the tenant).
pub fn network_name(tenant: &str) -> String {
    format!("ilanet-{tenant}")
}

/// One podman set up in a directory: what [`Podman::command`] runs against.
#[derive(Debug, Clone)]
pub struct Podman {
    /// The directory holding everything (see the module documentation).
    pub dir: PathBuf,
}

impl Podman {
    /// Prepares `dir`: the plugin copied from `plugin`, `containers.conf` (CNI backend, runc,
    /// cgroupfs, no events, no pids limit: a cgroup tree whose root delegates no controllers,
    /// as on a fresh minimal root, has no `pids.max` to write) and the root filesystem.
    pub fn prepare(dir: &Path, plugin: &Path) -> Result<Self, LabError> {
        for program in ["podman", "runc", "nsenter"] {
            crate::require(program)?;
        }
        if !plugin.is_file() {
            return Err(LabError::Invalid(format!(
                "the CNI plugin {} is missing: build it (`make build`, or `cargo build -p cni`) so that it lies beside ilanet",
                plugin.display()
            )));
        }
        let plugins = dir.join("plugins");
        fs::create_dir_all(&plugins).map_err(io_err(format!("creating {}", plugins.display())))?;
        let copy = plugins.join(PLUGIN);
        fs::copy(plugin, &copy).map_err(io_err(format!(
            "copying {} to {}",
            plugin.display(),
            copy.display()
        )))?;
        let conf = dir.join("containers.conf");
        let text = format!(
            "[network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{}\"]\n\
             [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"none\"\n\
             [containers]\npids_limit = 0\n",
            plugins.display()
        );
        fs::write(&conf, text).map_err(io_err(format!("writing {}", conf.display())))?;
        make_rootfs(&dir.join("rootfs"))?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    /// The root filesystem containers run from (`--rootfs`).
    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }

    /// Writes host `host`'s CNI configuration of network `network`: the plugin, the agent's
    /// socket and (if given) the tenant.
    pub fn write_network(
        &self,
        host: &str,
        network: &str,
        socket: &Path,
        tenant: Option<&str>,
    ) -> Result<(), LabError> {
        let conf_dir = self.cni_dir(host);
        fs::create_dir_all(&conf_dir)
            .map_err(io_err(format!("creating {}", conf_dir.display())))?;
        let mut plugin = serde_json::json!({"type": PLUGIN, "socket": socket});
        if let Some(t) = tenant {
            plugin["tenant"] = t.into();
        }
        let list = serde_json::json!({"cniVersion": "1.0.0", "name": network, "plugins": [plugin]});
        let path = conf_dir.join(format!("{network}.conflist"));
        fs::write(&path, list.to_string()).map_err(io_err(format!("writing {}", path.display())))
    }

    fn cni_dir(&self, host: &str) -> PathBuf {
        self.dir.join(format!("cni-{host}"))
    }

    /// A podman command for host `host` whose namespace is `host_netns` (a path): podman runs
    /// inside it (`nsenter --net`, which, unlike `ip netns exec`, keeps the mount namespace and
    /// /sys as they are), with this host's storage, run state and CNI configuration.
    /// `CNI_ARGS` is cleared (set it on the command to pass labels).
    pub fn command(&self, host: &str, host_netns: &Path) -> Command {
        let d = &self.dir;
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", host_netns.display()))
            .arg("podman")
            .args(["--network-backend", "cni"])
            .arg("--network-config-dir")
            .arg(self.cni_dir(host))
            .arg("--root")
            .arg(d.join(format!("root-{host}")))
            .arg("--runroot")
            .arg(d.join(format!("runroot-{host}")))
            .arg("--tmpdir")
            .arg(d.join(format!("tmp-{host}")))
            .args(["--runtime", "runc", "--cgroup-manager", "cgroupfs"])
            .args(["--events-backend", "none"])
            .env("CONTAINERS_CONF", d.join("containers.conf"))
            .env_remove("CNI_ARGS");
        cmd
    }

    /// `podman run -d` of a container sleeping in the root filesystem, on `network`, with
    /// `labels` for policy (`CNI_ARGS` `ILANET_LABELS`, as the plugin documents). Returns the
    /// command's output (the container id on stdout).
    pub fn run(
        &self,
        host: &str,
        host_netns: &Path,
        name: &str,
        network: &str,
        labels: &[(String, String)],
    ) -> Result<Output, LabError> {
        let rootfs = self.rootfs();
        let list: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut cmd = self.command(host, host_netns);
        cmd.args(["run", "-d", "--name", name, "--network", network])
            .args([
                "--ulimit",
                "nofile=1024:1024",
                "--ulimit",
                "nproc=4096:4096",
            ])
            .arg("--rootfs")
            .arg(&rootfs)
            .args(["/bin/busybox", "sleep", "2147483647"])
            .env("CNI_ARGS", format!("ILANET_LABELS={}", list.join(",")));
        cmd.output()
            .map_err(io_err(format!("starting podman for container {name}")))
    }

    /// `podman rm -f -a`: removes every container of the host (podman calls CNI DEL).
    pub fn remove_all(&self, host: &str, host_netns: &Path) -> Result<(), LabError> {
        let out = self
            .command(host, host_netns)
            .args(["rm", "-f", "-a", "-t", "0"])
            .output()
            .map_err(io_err(format!("starting podman rm on host '{host}'")))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(LabError::Invalid(format!(
                "podman rm -f -a on host '{host}' failed: {}",
                output_text(&out)
            )))
        }
    }
}

/// stdout and stderr of a command, trimmed, for an error message.
pub fn output_text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
    .trim()
    .to_string()
}

/// A busybox root: enough for `sleep`, `ping` and a shell inside a container.
fn make_rootfs(dir: &Path) -> Result<(), LabError> {
    let bin = dir.join("bin");
    for d in ["bin", "proc", "sys", "dev", "etc", "tmp"] {
        let p = dir.join(d);
        fs::create_dir_all(&p).map_err(io_err(format!("creating {}", p.display())))?;
    }
    let busybox = bin.join("busybox");
    fs::copy("/bin/busybox", &busybox).map_err(|source| LabError::Os {
        what: format!(
            "copying /bin/busybox to {} (install the Debian package busybox-static)",
            busybox.display()
        ),
        source,
    })?;
    for applet in APPLETS {
        let link = bin.join(applet);
        if fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink("busybox", &link)
                .map_err(io_err(format!("linking {}", link.display())))?;
        }
    }
    Ok(())
}

/// Unmounts every mount at or below `dir`, deepest first (podman's storage mounts its overlay
/// directory onto itself, and each running container's root below it), so that `dir` can be
/// removed. Mounts elsewhere are not touched.
pub fn unmount_below(dir: &Path) {
    let mut mounts = mounts_below(dir);
    mounts.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
    mounts.dedup();
    for m in mounts {
        if let Ok(c) = std::ffi::CString::new(m.as_os_str().as_encoded_bytes()) {
            // SAFETY: a valid NUL-terminated path; umount2 does not keep it.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// Mount points below `dir` (what [`unmount_below`] would remove).
pub fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(unescape_mount_path))
        .filter(|m| m.starts_with(dir))
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as octal (`\040`).
fn unescape_mount_path(s: &str) -> PathBuf {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .map(|d| d.iter().fold(0u32, |v, c| v * 8 + u32::from(c - b'0')))
            .and_then(|v| u8::try_from(v).ok());
        match octal {
            Some(v) => {
                out.push(v);
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    PathBuf::from(<std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(out))
}

/// Pids of processes (other than this one) that belong to podman in `dir`: podman and conmon
/// name the storage paths in their arguments; a container's processes have their root there.
pub fn processes_using(dir: &Path) -> Vec<u32> {
    let under = |a: &[u8]| Path::new(std::ffi::OsStr::from_bytes(a)).starts_with(dir);
    let me = std::process::id();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            let args = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            args.split(|b| *b == 0).any(under)
                || fs::read_link(format!("/proc/{pid}/root")).is_ok_and(|r| r.starts_with(dir))
        })
        .collect()
}

/// The plugin that `lab up --runtime podman` installs: `ilanet-cni` beside the agent binary.
pub fn plugin_beside(binary: &Path) -> PathBuf {
    binary.with_file_name(PLUGIN)
}

/// Host namespace path of a lab host.
fn host_netns_path(host: &HostPlan) -> PathBuf {
    hostnet::netns::path(&host.netns)
}

/// Creates the planned containers through podman on every host, then records in the plan what
/// the runtime and the agent made of each (its container id, namespace path, identifier and SIR
/// address), so that probes, `lab status` and `lab exec` find them.
pub(crate) fn create_containers(state: &mut LabState, plugin: &Path) -> Result<(), LabError> {
    let lab = state.plan.name.clone();
    let podman = Podman::prepare(&dir(&lab), plugin)?;
    for host in &state.plan.hosts {
        for t in &state.plan.tenants {
            podman.write_network(
                &host.name,
                &network_name(&t.name),
                &agents::socket_path(&lab, &host.name),
                Some(&t.name),
            )?;
        }
    }
    for h in 0..state.plan.hosts.len() {
        for c in 0..state.plan.hosts[h].containers.len() {
            let host = state.plan.hosts[h].clone();
            let planned = &host.containers[c];
            let ep = run_one(&podman, &lab, &host, planned)?;
            let rec = &mut state.plan.hosts[h].containers[c];
            rec.netns = ep.netns.clone();
            rec.identifier = ep.identifier;
            rec.sir_addr = ep.sir_addr;
            rec.host_ifname = ep.host_ifname.clone();
            rec.mac = ep.mac;
            rec.host_mac = ep.host_mac;
            rec.container_id = ep.container_id.clone();
            state.save()?;
        }
    }
    Ok(())
}

fn run_one(
    podman: &Podman,
    lab: &str,
    host: &HostPlan,
    c: &ContainerPlan,
) -> Result<LocalEndpoint, LabError> {
    let labels: Vec<(String, String)> = c
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let out = podman.run(
        &host.name,
        &host_netns_path(host),
        &c.name,
        &network_name(&c.tenant),
        &labels,
    )?;
    if !out.status.success() {
        return Err(LabError::Invalid(format!(
            "podman run of container {} on host '{}' failed: {}",
            c.name,
            host.name,
            output_text(&out)
        )));
    }
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let eps: Vec<LocalEndpoint> =
        serde_json::from_value(agents::call(lab, &host.name, &Request::EndpointList)?)
            .map_err(|e| LabError::Agent(format!("host '{}': endpoint list: {e}", host.name)))?;
    eps.into_iter()
        .find(|e| e.container_id.as_deref() == Some(id.as_str()))
        .ok_or_else(|| {
            LabError::Agent(format!(
                "host '{}': podman started container {} ({id}) but the agent has no attachment for it",
                host.name, c.name
            ))
        })
}

/// Removes a lab's podman containers (CNI DEL reaches the agents while they still run), then
/// kills what is left of podman and conmon, unmounts podman's storage and removes the
/// directory. Each step runs whatever the previous ones gave (a crashed `lab up` leaves any
/// subset behind); the first error is returned.
pub(crate) fn teardown(plan: &Plan) -> Result<(), LabError> {
    let d = dir(&plan.name);
    if !d.exists() {
        return Ok(());
    }
    let podman = Podman { dir: d.clone() };
    let mut first_error = None;
    // A `podman run` a killed `lab up` left running finishes first (bounded), so that the
    // removal below sees its container; one still running then is killed.
    let running_podman = || {
        processes_using(&d)
            .into_iter()
            .filter(|pid| {
                fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "podman")
            })
            .collect::<Vec<_>>()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !running_podman().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    for pid in running_podman() {
        // SAFETY: kill(2) on a podman process working in this lab's podman directory.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    }
    for host in &plan.hosts {
        if !d.join(format!("root-{}", host.name)).exists() {
            continue;
        }
        // Without the host's namespace (a crash before it was made) podman still removes the
        // containers; the plugin reaches the agent by its socket path.
        let mut ns = host_netns_path(host);
        if !ns.exists() {
            ns = PathBuf::from(hostnet::netns::current_path()?);
        }
        if let Err(e) = podman.remove_all(&host.name, &ns) {
            log::error!("{e}");
            first_error.get_or_insert(e);
        }
    }
    // A podman killed mid-way leaves conmon (and the container it watches) running.
    for pid in processes_using(&d) {
        // SAFETY: kill(2) on a process whose command line names this lab's podman directory.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !processes_using(&d).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    unmount_below(&d);
    if let Err(source) = fs::remove_dir_all(&d) {
        if source.kind() != std::io::ErrorKind::NotFound {
            first_error.get_or_insert(LabError::Os {
                what: format!("removing {}", d.display()),
                source,
            });
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_paths_are_unescaped() {
        assert_eq!(
            unescape_mount_path(r"/run/a\040b/c"),
            PathBuf::from("/run/a b/c")
        );
        assert_eq!(unescape_mount_path(r"/x\\"), PathBuf::from(r"/x\\"));
    }

    #[test]
    fn networks_are_named_by_tenant() {
        assert_eq!(network_name("t1"), "ilanet-t1");
    }
}
