//! The watchdog: a separate gbuild process that removes a container whose gbuild died
//! without doing it (SIGKILL, crash, OOM) before the container's own tie to gbuild
//! (PR_SET_PDEATHSIG) took effect, and removes its state, bundle and cgroup afterwards.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::{destroy, io_err, RuntimeError};

/// A separate gbuild process that removes the container if this process dies without doing it
/// (SIGKILL, crash): it waits for end-of-file on its stdin.
pub struct Watchdog {
    child: Child,
}

impl Watchdog {
    pub fn spawn(state_root: &Path, id: &str, bundle: &Path) -> Result<Watchdog, RuntimeError> {
        let exe = crate::userns::self_exe();
        let mut cmd = std::process::Command::new(&exe);
        cmd.arg("__watchdog")
            .arg(std::process::id().to_string())
            .arg(state_root)
            .arg(id)
            .arg(bundle)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .process_group(0); // terminal signals (Ctrl-C) must not reach it
        let child = cmd.spawn().map_err(io_err("start watchdog", &exe))?;
        Ok(Watchdog { child })
    }

    pub fn tell(&mut self, line: &str) {
        if let Some(stdin) = self.child.stdin.as_mut() {
            // A watchdog that is gone has nothing left to watch; its exit is reaped later.
            let _ = stdin.write_all(line.as_bytes());
        }
    }

    /// Tell it the run ended cleanly and let it go without waiting for it to exit (it may still
    /// be starting up): the caller reaps it later.
    pub fn release(mut self) -> Child {
        self.tell("done\n");
        drop(self.child.stdin.take());
        self.child
    }
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
