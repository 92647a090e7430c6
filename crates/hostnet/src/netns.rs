//! Named network namespaces, compatible with `ip netns` (a bind mount under /run/netns), and a
//! guard that moves the calling thread into one and back.

use std::ffi::CStr;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use crate::NetError;

/// Where `ip netns` keeps its namespaces; using the same place lets users `ip netns exec` into
/// the lab.
pub const NETNS_DIR: &str = "/run/netns";

/// Path of a namespace: a name is looked up under [`NETNS_DIR`]; an absolute path (a runtime's
/// `CNI_NETNS`, `/proc/<pid>/ns/net`) is taken as it is.
pub fn path(name: &str) -> PathBuf {
    if name.starts_with('/') {
        PathBuf::from(name)
    } else {
        Path::new(NETNS_DIR).join(name)
    }
}

/// A path to the network namespace this process started in, valid while it runs: that of a
/// thread kept parked in it for the purpose (the process's other threads move in and out of
/// namespaces, so `/proc/self/ns/net` could name a container's).
pub fn current_path() -> Result<String, NetError> {
    static PARKED: std::sync::OnceLock<Result<String, String>> = std::sync::OnceLock::new();
    PARKED
        .get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::Builder::new()
                .name("netns-anchor".into())
                .spawn(move || {
                    // SAFETY: gettid has no preconditions.
                    let tid = unsafe { libc::gettid() };
                    let _ = tx.send(tid);
                    loop {
                        std::thread::park();
                    }
                })
                .map_err(|e| format!("starting the namespace anchor thread: {e}"))?;
            let tid = rx
                .recv()
                .map_err(|e| format!("starting the namespace anchor thread: {e}"))?;
            Ok(format!("/proc/{}/task/{tid}/ns/net", std::process::id()))
        })
        .clone()
        .map_err(NetError::Invalid)
}

/// Whether a namespace with this name exists.
pub fn exists(name: &str) -> bool {
    path(name).exists()
}

fn errno(what: String) -> NetError {
    NetError::Os {
        what,
        source: io::Error::last_os_error(),
    }
}

fn cstr(p: &Path) -> Result<std::ffi::CString, NetError> {
    std::ffi::CString::new(p.as_os_str().as_encoded_bytes())
        .map_err(|_| NetError::Invalid(format!("path {} contains a NUL byte", p.display())))
}

/// mount(2) with no filesystem type or data; `what` names the step in the error.
fn mount(src: &CStr, target: &CStr, flags: libc::c_ulong, what: &str) -> Result<(), NetError> {
    // SAFETY: valid NUL-terminated strings; mount(2) does not keep the pointers.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            c"none".as_ptr(),
            flags,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(errno(what.to_string()))
    }
}

/// Makes /run/netns a shared mount point, as `ip netns` does, so mounts under it propagate.
fn prepare_dir() -> Result<(), NetError> {
    fs::create_dir_all(NETNS_DIR).map_err(|source| NetError::Os {
        what: format!("creating {NETNS_DIR}"),
        source,
    })?;
    let dir = cstr(Path::new(NETNS_DIR))?;
    let shared = libc::MS_SHARED | libc::MS_REC;
    if mount(c"none", &dir, shared, "").is_ok() {
        return Ok(());
    }
    // Not a mount point yet: bind it onto itself, then make it shared.
    mount(
        &dir,
        &dir,
        libc::MS_BIND | libc::MS_REC,
        &format!("bind-mounting {NETNS_DIR} onto itself"),
    )?;
    mount(
        c"none",
        &dir,
        shared,
        &format!("making {NETNS_DIR} a shared mount"),
    )
}

/// Creates a named namespace. Fails if the name exists (the lab never adopts a namespace it did
/// not create).
pub fn create(name: &str) -> Result<(), NetError> {
    prepare_dir()?;
    let target = path(name);
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&target)
        .map_err(|source| {
            if source.kind() == io::ErrorKind::AlreadyExists {
                NetError::NetnsExists(name.to_string())
            } else {
                NetError::Os {
                    what: format!("creating {}", target.display()),
                    source,
                }
            }
        })?;
    let target_c = cstr(&target)?;
    // unshare() affects only the calling thread, so do it on a throwaway thread.
    let result = std::thread::scope(|s| {
        s.spawn(|| -> Result<(), NetError> {
            // SAFETY: plain syscalls on this thread; no memory is shared.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(errno(format!(
                    "unshare(CLONE_NEWNET) for namespace '{name}'"
                )));
            }
            mount(
                c"/proc/thread-self/ns/net",
                &target_c,
                libc::MS_BIND,
                &format!("bind-mounting namespace '{name}'"),
            )
        })
        .join()
        .unwrap_or_else(|_| Err(NetError::Invalid("namespace thread panicked".into())))
    });
    if result.is_err() {
        let _ = fs::remove_file(&target);
    }
    result
}

/// Deletes a named namespace (unmount + unlink). A missing namespace is not an error.
pub fn delete(name: &str) -> Result<(), NetError> {
    let target = path(name);
    if !target.exists() {
        return Ok(());
    }
    let target_c = cstr(&target)?;
    // SAFETY: valid NUL-terminated path.
    let rc = unsafe { libc::umount2(target_c.as_ptr(), libc::MNT_DETACH) };
    if rc != 0 {
        let err = io::Error::last_os_error();
        // EINVAL: not a mount point (a half-created namespace); still remove the file.
        if err.raw_os_error() != Some(libc::EINVAL) {
            return Err(NetError::Os {
                what: format!("unmounting namespace '{name}'"),
                source: err,
            });
        }
    }
    fs::remove_file(&target).map_err(|source| NetError::Os {
        what: format!("removing {}", target.display()),
        source,
    })
}

/// While alive, the calling thread is inside a namespace; dropping it moves the thread back.
pub struct NetnsGuard {
    original: OwnedFd,
}

impl NetnsGuard {
    /// Moves the calling thread into the named namespace.
    pub fn enter(name: &str) -> Result<Self, NetError> {
        let original = File::open("/proc/thread-self/ns/net").map_err(|source| NetError::Os {
            what: "opening this thread's network namespace".into(),
            source,
        })?;
        let target = File::open(path(name)).map_err(|source| NetError::Os {
            what: format!("opening namespace '{name}'"),
            source,
        })?;
        // SAFETY: target is an open namespace file descriptor.
        if unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(errno(format!("entering namespace '{name}'")));
        }
        Ok(Self {
            original: original.into(),
        })
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        // SAFETY: original is an open namespace file descriptor.
        let rc = unsafe { libc::setns(self.original.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 {
            // A thread left in a foreign namespace would make later work silently wrong.
            panic!(
                "cannot return to the original network namespace: {}",
                io::Error::last_os_error()
            );
        }
    }
}

/// Runs `f` with the calling thread inside the named namespace.
pub fn run_in<T, E: From<NetError>>(name: &str, f: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
    let _guard = NetnsGuard::enter(name)?;
    f()
}

/// Opens a namespace file (to hand its descriptor to netlink, e.g. to move a link into it).
pub fn open(name: &str) -> Result<File, NetError> {
    File::open(path(name)).map_err(|source| NetError::Os {
        what: format!("opening namespace '{name}'"),
        source,
    })
}

/// Spawns `cmd` with its network namespace set to `name` (setns between fork and exec; the
/// namespace file is close-on-exec, so the program does not inherit it). Other `pre_exec`
/// steps the caller added still run.
pub fn spawn_in(
    name: &str,
    cmd: &mut std::process::Command,
) -> Result<std::process::Child, NetError> {
    use std::os::unix::process::CommandExt;
    let ns = open(name)?;
    let fd = ns.as_raw_fd();
    // SAFETY: setns(2) is async-signal-safe; `ns` keeps the descriptor open until spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|source| NetError::Os {
        what: format!(
            "starting {} in '{name}'",
            cmd.get_program().to_string_lossy()
        ),
        source,
    })?;
    drop(ns);
    Ok(child)
}

/// Writes a sysctl of the calling thread's namespace (`key` like `net/ipv6/conf/all/forwarding`).
pub fn sysctl(key: &str, value: &str) -> Result<(), NetError> {
    let p = Path::new("/proc/sys").join(key);
    fs::write(&p, value).map_err(|source| NetError::Os {
        what: format!("writing {value} to {}", p.display()),
        source,
    })
}
