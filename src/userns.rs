//! Running gbuild's own store operations (unpacking a layer, packing an upper dir, removing a
//! tree) inside a user namespace with the same id mapping as the containers, like `podman
//! unshare`. Files owned by subordinate ids are only readable, writable and removable from there.
//!
//! Mechanism: the gbuild binary re-executes itself with `GBUILD_USERNS=1`; at the very start of
//! `main` (still single-threaded) the child unshares its user namespace and stops itself; the
//! parent, having seen it stop, writes the maps with newuidmap/newgidmap and continues it; the
//! child becomes root of the namespace and runs the requested command. As root no namespace is
//! needed and the command runs directly.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::idmap::{IdMapping, IdRange};

const ENV_MARK: &str = "GBUILD_USERNS";

#[derive(Debug, thiserror::Error)]
pub enum UsernsError {
    #[error("start {exe}: {source}")]
    Spawn {
        exe: PathBuf,
        source: std::io::Error,
    },
    #[error("user namespace helper exited before it was mapped ({0})")]
    EarlyExit(String),
    #[error("{tool} {args} failed: {stderr}")]
    Map {
        tool: &'static str,
        args: String,
        stderr: String,
    },
    #[error("unshare(CLONE_NEWUSER): {0} (are unprivileged user namespaces disabled? check sysctl kernel.unprivileged_userns_clone / user.max_user_namespaces)")]
    Unshare(nix::Error),
    #[error("waitpid: {0}")]
    Wait(nix::Error),
}

/// The gbuild executable to re-execute (overridable for tests with `GBUILD_SELF_EXE`).
pub fn self_exe() -> PathBuf {
    std::env::var_os("GBUILD_SELF_EXE")
        .map(PathBuf::from)
        .or_else(|| std::env::current_exe().ok())
        .unwrap_or_else(|| PathBuf::from("/proc/self/exe"))
}

/// A `Command` running `gbuild ARGS...`, to be started with [`spawn`].
pub fn self_command<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    let mut cmd = Command::new(self_exe());
    cmd.args(args.into_iter().map(Into::into));
    cmd
}

/// Called first thing in `main`: when this process is a user-namespace helper, enter the
/// namespace and wait to be mapped. Must run before any thread is started.
pub fn enter_if_requested() -> Result<(), UsernsError> {
    if std::env::var_os(ENV_MARK).is_none() {
        return Ok(());
    }
    std::env::remove_var(ENV_MARK);
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER).map_err(UsernsError::Unshare)?;
    // The parent sees us stopped, writes our maps, then continues us.
    kill(Pid::this(), Signal::SIGSTOP).map_err(UsernsError::Unshare)?;
    let root = nix::unistd::Uid::from_raw(0);
    let rootg = nix::unistd::Gid::from_raw(0);
    nix::unistd::setresgid(rootg, rootg, rootg).map_err(UsernsError::Unshare)?;
    nix::unistd::setresuid(root, root, root).map_err(UsernsError::Unshare)?;
    // Denied where the mapping wrote "deny" to setgroups (a rootless namespace): then the
    // supplementary groups are already just the mapped ones.
    let _ = nix::unistd::setgroups(&[]);
    Ok(())
}

/// Start `cmd` (a gbuild command from [`self_command`]) inside a new user namespace with `map`.
pub fn spawn(mut cmd: Command, map: &IdMapping) -> Result<Child, UsernsError> {
    if nix::unistd::geteuid().is_root() {
        return cmd.spawn().map_err(|source| UsernsError::Spawn {
            exe: self_exe(),
            source,
        });
    }
    cmd.env(ENV_MARK, "1");
    let mut child = cmd.spawn().map_err(|source| UsernsError::Spawn {
        exe: self_exe(),
        source,
    })?;
    let pid = Pid::from_raw(child.id() as i32);
    match waitpid(pid, Some(WaitPidFlag::WUNTRACED)) {
        Ok(WaitStatus::Stopped(_, _)) => {}
        Ok(other) => {
            // Reaped already: std's Child must not wait again.
            std::mem::forget(child);
            return Err(UsernsError::EarlyExit(format!("{other:?}")));
        }
        Err(e) => {
            // The wait's own error is the one to report; the child may be gone already.
            let _ = child.kill();
            return Err(UsernsError::Wait(e));
        }
    }
    if let Err(e) = write_maps(pid.as_raw() as u32, map) {
        // The mapping's error is the one to report; the child never ran gbuild's work.
        let _ = kill(pid, Signal::SIGKILL);
        let _ = child.wait();
        return Err(e);
    }
    // A child that died meanwhile is reported by the caller's wait.
    let _ = kill(pid, Signal::SIGCONT);
    Ok(child)
}

/// Run `cmd` in a user namespace with `map` and wait for it.
pub fn run(cmd: Command, map: &IdMapping) -> Result<ExitStatus, UsernsError> {
    let mut child = spawn(cmd, map)?;
    child
        .wait()
        .map_err(|e| UsernsError::Wait(nix::Error::from_raw(e.raw_os_error().unwrap_or(0))))
}

/// Write the uid and gid maps of process `pid`.
pub fn write_maps(pid: u32, map: &IdMapping) -> Result<(), UsernsError> {
    if map.is_full() {
        // The two maps are independent files: both tools run at once (each is an exec of a
        // setuid program, a fixed cost of every namespace gbuild enters).
        let uid = map_tool("newuidmap", pid, &map.uid)?;
        let gid = map_tool("newgidmap", pid, &map.gid);
        let uid = uid.wait();
        gid?.wait()?;
        uid?;
    } else {
        // A single mapping of our own ids needs no helper; setgroups must be denied first.
        let w = |file: &str, text: String| {
            std::fs::write(format!("/proc/{pid}/{file}"), text).map_err(|e| UsernsError::Map {
                tool: "write",
                args: format!("/proc/{pid}/{file}"),
                stderr: e.to_string(),
            })
        };
        w("setgroups", "deny".into())?;
        w("uid_map", lines(&map.uid))?;
        w("gid_map", lines(&map.gid))?;
    }
    Ok(())
}

fn lines(ranges: &[IdRange]) -> String {
    ranges
        .iter()
        .map(|r| format!("{} {} {}\n", r.inside, r.outside, r.count))
        .collect()
}

/// A map tool started by [`map_tool`]; `wait` reports its failure.
struct MapTool {
    tool: &'static str,
    args: Vec<String>,
    child: std::process::Child,
}

impl MapTool {
    fn wait(self) -> Result<(), UsernsError> {
        let out = self
            .child
            .wait_with_output()
            .map_err(|e| UsernsError::Map {
                tool: self.tool,
                args: self.args.join(" "),
                stderr: e.to_string(),
            })?;
        if !out.status.success() {
            return Err(UsernsError::Map {
                tool: self.tool,
                args: self.args.join(" "),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(())
    }
}

/// Start `tool` (newuidmap or newgidmap) writing `ranges` as the map of `pid`.
fn map_tool(tool: &'static str, pid: u32, ranges: &[IdRange]) -> Result<MapTool, UsernsError> {
    let mut args = vec![pid.to_string()];
    for r in ranges {
        args.extend([
            r.inside.to_string(),
            r.outside.to_string(),
            r.count.to_string(),
        ]);
    }
    let child = Command::new(tool)
        .args(&args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| UsernsError::Map {
            tool,
            args: args.join(" "),
            stderr: e.to_string(),
        })?;
    Ok(MapTool { tool, args, child })
}

/// Remove `path` and everything below it, including files owned by subordinate ids and
/// overlay's mode-000 work dirs, from inside a user namespace with `map`.
pub fn remove_tree(path: &std::path::Path, map: &IdMapping) -> Result<(), UsernsError> {
    if !path.exists() && path.symlink_metadata().is_err() {
        return Ok(());
    }
    let mut cmd = self_command(["__run", "rm", "-rf", "--"]);
    cmd.arg(path);
    let status = run(cmd, map)?;
    if !status.success() {
        return Err(UsernsError::Map {
            tool: "rm",
            args: path.display().to_string(),
            stderr: format!("exited with {status}"),
        });
    }
    Ok(())
}
