//! The watchdog: a separate process that removes a container whose gbuild died
//! without doing it (SIGKILL, crash, OOM) before the container's own tie to gbuild
//! (PR_SET_PDEATHSIG) took effect, and removes its state, bundle and cgroup afterwards.

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{ForkResult, Pid};

use super::{destroy, io_err, RuntimeError};

/// A separate process that removes the container if this process dies without doing it
/// (SIGKILL, crash): it waits for end-of-file on its stdin. It is a fork of gbuild when gbuild
/// runs a single thread (no exec: a start costs a fork, not the loading of gbuild's binary
/// beside the container's), else gbuild run again as `gbuild __watchdog`.
pub struct Watchdog {
    proc: Proc,
    stdin: Option<std::fs::File>,
}

/// The watchdog process, to reap once it has exited.
pub enum Proc {
    Forked(Pid),
    Spawned(Child),
}

impl Proc {
    /// Whether it has exited (and was reaped); an error counts as gone.
    pub fn try_reap(&mut self) -> bool {
        match self {
            Proc::Forked(pid) => !matches!(
                waitpid(*pid, Some(WaitPidFlag::WNOHANG)),
                Ok(WaitStatus::StillAlive)
            ),
            Proc::Spawned(c) => matches!(c.try_wait(), Ok(Some(_)) | Err(_)),
        }
    }
}

impl Watchdog {
    pub fn spawn(state_root: &Path, id: &str, bundle: &Path) -> Result<Watchdog, RuntimeError> {
        let parent = std::process::id() as i32;
        let (rx, tx) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let devnull =
            std::fs::File::open("/dev/null").map_err(io_err("open", Path::new("/dev/null")))?;
        match crate::sys::fork_single_threaded() {
            Ok(ForkResult::Child) => {
                drop(tx);
                std::process::exit(forked_main(rx, devnull, parent, state_root, id, bundle))
            }
            Ok(ForkResult::Parent { child }) => Ok(Watchdog {
                proc: Proc::Forked(child),
                stdin: Some(std::fs::File::from(tx)),
            }),
            Err(_) => {
                drop((rx, tx));
                spawn_exec(parent, state_root, id, bundle)
            }
        }
    }

    pub fn tell(&mut self, line: &str) {
        if let Some(stdin) = self.stdin.as_mut() {
            // A watchdog that is gone has nothing left to watch; its exit is reaped later.
            let _ = stdin.write_all(line.as_bytes());
        }
    }

    /// Tell it the run ended cleanly and let it go without waiting for it to exit (it may still
    /// be starting up): the caller reaps it later.
    pub fn release(mut self) -> Proc {
        self.tell("done\n");
        drop(self.stdin.take());
        self.proc
    }
}

/// gbuild run again as the watchdog (when it cannot fork).
fn spawn_exec(
    parent: i32,
    state_root: &Path,
    id: &str,
    bundle: &Path,
) -> Result<Watchdog, RuntimeError> {
    let exe = crate::userns::self_exe();
    let mut cmd = std::process::Command::new(&exe);
    cmd.arg("__watchdog")
        .arg(parent.to_string())
        .arg(state_root)
        .arg(id)
        .arg(bundle)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .process_group(0); // terminal signals (Ctrl-C) must not reach it
    let mut child = cmd.spawn().map_err(io_err("start watchdog", &exe))?;
    let stdin = child
        .stdin
        .take()
        .map(|s| std::fs::File::from(OwnedFd::from(s)));
    Ok(Watchdog {
        proc: Proc::Spawned(child),
        stdin,
    })
}

/// The forked watchdog: the pipe as stdin, /dev/null as stdout, stderr kept, nothing else of
/// gbuild's descriptors (a machine's lock among them), its own process group (terminal signals
/// such as Ctrl-C must not reach it), default signal actions and an empty mask.
fn forked_main(
    rx: OwnedFd,
    devnull: std::fs::File,
    parent: i32,
    state_root: &Path,
    id: &str,
    bundle: &Path,
) -> i32 {
    if nix::unistd::dup2(rx.as_raw_fd(), 0).is_err()
        || nix::unistd::dup2(devnull.as_raw_fd(), 1).is_err()
    {
        return 1;
    }
    drop((rx, devnull));
    crate::sys::close_fds_from(3);
    // Best effort in the forked watchdog: its own process group keeps terminal signals off
    // it, its mask and name only tidy it; it watches the same either way.
    let _ = nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0));
    crate::sys::reset_signal_dispositions();
    // (Best effort, as above.)
    let _ = nix::sys::signal::SigSet::empty().thread_set_mask();
    let _ = nix::sys::prctl::set_name(c"gbuild-watchdog");
    watchdog_main(parent, state_root, id, bundle)
}

/// The watchdog's side: wait until gbuild says `done` or exits (seen through a pidfd, since a
/// container process that has not exec'd yet still holds our pipe); in the second case kill the
/// container and remove its state. Runs as `gbuild __watchdog PARENT_PID STATE_ROOT ID BUNDLE`.
pub fn watchdog_main(parent: i32, state_root: &Path, id: &str, bundle: &Path) -> i32 {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let parent_fd = crate::sys::pidfd_open(parent).ok();
    let stdin = std::io::stdin();
    let mut input = Vec::new();
    let mut buf = [0u8; 256];
    let mut stdin_open = true;
    let said_done = |input: &[u8]| String::from_utf8_lossy(input).lines().any(|l| l == "done");
    loop {
        if said_done(&input) {
            return 0;
        }
        let mut fds = Vec::new();
        if stdin_open {
            fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLIN));
        }
        if let Some(p) = &parent_fd {
            fds.push(PollFd::new(p.as_fd(), PollFlags::POLLIN));
        }
        if fds.is_empty() {
            break;
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::Error::EINTR) => continue,
            Err(_) => break,
        }
        let ev: Vec<PollFlags> = fds
            .iter()
            .map(|f| f.revents().unwrap_or(PollFlags::empty()))
            .collect();
        drop(fds);
        let parent_ev = if stdin_open { ev.get(1) } else { ev.first() };
        if stdin_open && ev[0].intersects(PollFlags::POLLIN | PollFlags::POLLHUP) {
            match stdin.lock().read(&mut buf) {
                Ok(0) | Err(_) => stdin_open = false,
                Ok(n) => input.extend_from_slice(&buf[..n]),
            }
        }
        if parent_ev.is_some_and(|e| !e.is_empty()) {
            break; // gbuild is gone
        }
    }
    if said_done(&input) {
        return 0;
    }
    let pid = String::from_utf8_lossy(&input)
        .lines()
        .find_map(|l| l.strip_prefix("pid ").map(str::to_owned))
        .and_then(|p| p.trim().parse::<i32>().ok());
    if let Some(pid) = pid {
        // ESRCH: the container's init is gone already, which is the goal.
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
    } else {
        // Died while creating: the state appears when creation completes.
        let t = Instant::now();
        while !state_root.join(id).join("state.json").exists()
            && t.elapsed() < Duration::from_secs(2)
        {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    destroy(state_root, id);
    crate::fsutil::remove_tree_or_warn(bundle);
    0
}
