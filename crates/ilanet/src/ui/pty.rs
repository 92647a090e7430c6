//! A shell on a pseudo-terminal inside a container's namespaces: `nsenter` into the network
//! namespace (and, for a runtime's container such as podman's, its mount, UTS, IPC and PID
//! namespaces too).

use std::ffi::OsString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context, Result};

/// A running shell and the master side of its terminal (the caller kills and reaps the child).
pub struct Pty {
    /// Master side (non-blocking).
    pub master: OwnedFd,
    /// The `nsenter` process (session leader of the terminal).
    pub child: Child,
}

/// How to enter a container.
pub struct Target {
    /// Network namespace: a name under /run/netns or a path.
    pub netns: String,
    /// The runtime's container id (podman), for its other namespaces.
    pub container_id: Option<String>,
    /// Prompt label.
    pub name: String,
}

fn netns_path(ns: &str) -> Result<std::path::PathBuf> {
    if ns.starts_with('/') {
        return Ok(ns.into());
    }
    if ns.is_empty() || ns.contains('/') || ns.starts_with('.') {
        bail!("'{ns}' is not a namespace name");
    }
    Ok(lab::netns::path(ns))
}

/// A process of the container whose network namespace is `netns`: the first started process
/// in that namespace with a mount namespace of its own (the runtime's init of the container).
/// Found through /proc, so it works whatever runtime (and whatever podman storage root) made
/// it. By start time, not by pid: pids wrap (pid_max is 32768 here), and a later process in the
/// namespace with its own mount namespace (`ip netns exec` makes one) may get a lower pid.
fn container_pid(netns: &Path) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    let want = std::fs::metadata(netns).ok()?;
    let own_mnt = std::fs::metadata("/proc/self/ns/mnt").ok()?;
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let same_net = std::fs::metadata(format!("/proc/{pid}/ns/net"))
                .is_ok_and(|m| m.dev() == want.dev() && m.ino() == want.ino());
            let other_mnt = std::fs::metadata(format!("/proc/{pid}/ns/mnt"))
                .is_ok_and(|m| m.dev() != own_mnt.dev() || m.ino() != own_mnt.ino());
            same_net && other_mnt
        })
        .filter_map(|pid| Some((start_time(pid)?, pid)))
        .min()
        .map(|(_, pid)| pid)
}

/// When process `pid` started, in clock ticks since boot (`/proc/PID/stat` field 22).
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from its last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Starts a shell for `target` on a new terminal of `cols`×`rows`.
pub fn spawn(target: &Target, cols: u16, rows: u16) -> Result<Pty> {
    let mut master: RawFd = -1;
    let mut slave: RawFd = -1;
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: out pointers are valid; name and termios may be NULL; winsize is initialised.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &ws,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("openpty");
    }
    // SAFETY: openpty returned two fresh descriptors that we now own.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    // SAFETY: fcntl on an owned descriptor.
    unsafe {
        let fl = libc::fcntl(master.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(master.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
        libc::fcntl(master.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC);
    }

    let mut cmd = Command::new("nsenter");
    let netns = netns_path(&target.netns)?;
    // A runtime's container has its own file system, hostname and pids: enter those too. The
    // lab's own endpoints are network namespaces only (they share the host's file system).
    let pid = target
        .container_id
        .as_ref()
        .and_then(|_| container_pid(&netns));
    match pid {
        Some(pid) => {
            cmd.args([
                "--target",
                &pid.to_string(),
                "--mount",
                "--uts",
                "--ipc",
                "--net",
                "--pid",
            ]);
        }
        None => {
            let mut arg = OsString::from("--net=");
            arg.push(&netns);
            cmd.arg(arg);
        }
    }
    // bash when the container has it (the lab's containers share the host's file system),
    // else the container's sh.
    cmd.args([
        "--",
        "/bin/sh",
        "-c",
        "if command -v bash >/dev/null 2>&1; then exec bash --norc --noprofile -i; else exec sh -i; fi",
    ]);
    cmd.current_dir("/")
        .env_clear()
        .env("TERM", "xterm-256color")
        .env("LANG", "C.UTF-8")
        .env("HOME", "/root")
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("PS1", format!("[{}] \\w # ", target.name));
    let io = |fd: &OwnedFd| -> Result<Stdio> { Ok(Stdio::from(fd.try_clone()?)) };
    cmd.stdin(io(&slave)?)
        .stdout(io(&slave)?)
        .stderr(io(&slave)?);
    // SAFETY: only async-signal-safe calls (setsid, ioctl) between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().context("starting nsenter (util-linux)")?;
    drop(slave);
    Ok(Pty { master, child })
}

/// Tells the terminal its new size (the shell gets SIGWINCH).
pub fn resize(master: &OwnedFd, cols: u16, rows: u16) -> Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: valid descriptor and a valid winsize pointer.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) } != 0 {
        return Err(std::io::Error::last_os_error()).context("TIOCSWINSZ");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::start_time;

    #[test]
    fn start_times_order_processes_by_when_they_started() {
        let init = start_time(1).expect("pid 1 has a start time");
        let me = start_time(std::process::id()).expect("this process has one");
        let child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .expect("sleep");
        let later = start_time(child.id());
        let mut child = child;
        let _ = child.kill();
        let _ = child.wait();
        let later = later.expect("the child has one");
        assert!(init <= me && me <= later, "{init} {me} {later}");
        assert_eq!(start_time(u32::MAX), None);
    }
}
