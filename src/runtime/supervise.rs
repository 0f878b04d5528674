//! Supervision of a started container from one loop on a signalfd: it reaps the container's
//! init, forwards signals to it, relays captured output, and proxies the terminal when there
//! is one. No thread exists while libcontainer clones, so none is used here either.

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::tty::{copy_winsize, RawMode};
use super::{RuntimeError, Sink};

/// The signals gbuild blocks while a container runs and handles in the loop.
pub const SUPERVISED: [Signal; 8] = [
    Signal::SIGCHLD,
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
];

/// The set of `SUPERVISED`.
pub fn supervised_set() -> SigSet {
    let mut mask = SigSet::empty();
    for s in SUPERVISED {
        mask.add(s);
    }
    mask
}

/// Time a command has to end after a forwarded SIGTERM, SIGINT or SIGHUP before the container
/// is killed (a second such signal kills it at once), as `docker stop` does.
const KILL_GRACE: Duration = Duration::from_secs(10);

/// Run until the container's init `pid` exits; its exit status (128+n for signal n).
pub fn supervise(
    pid: Pid,
    mask: &SigSet,
    master: Option<OwnedFd>,
    mut output: Option<(OwnedFd, Sink<'_>)>,
) -> Result<i32, RuntimeError> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let sfd = SignalFd::with_flags(mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
    let stdin = std::io::stdin();
    let _raw = match &master {
        Some(m) => {
            copy_winsize(m.as_fd());
            Some(RawMode::enter(stdin.as_fd())?)
        }
        None => None,
    };
    let mut kill_at: Option<Instant> = None;
    let mut stdin_open = master.is_some();
    let mut buf = [0u8; 8192];
    loop {
        if let Some(code) = try_reap(pid)? {
            if let Some(m) = &master {
                drain(m.as_fd(), &mut buf, &mut |b| {
                    let mut out = std::io::stdout().lock();
                    // A closed stdout (`| head`) must not stop the container or its supervision.
                    let _ = out.write_all(b);
                    let _ = out.flush();
                });
            }
            if let Some((rx, f)) = output.as_mut() {
                drain(rx.as_fd(), &mut buf, *f);
            }
            return Ok(code);
        }
        let timeout = match kill_at {
            Some(t) => {
                let left = t.saturating_duration_since(Instant::now());
                PollTimeout::try_from(left.as_millis() as u64 + 1).unwrap_or(PollTimeout::MAX)
            }
            None => PollTimeout::NONE,
        };
        let sfd_fd = sfd.as_fd();
        let mut fds = vec![PollFd::new(sfd_fd, PollFlags::POLLIN)];
        let out_idx = output.as_ref().map(|(rx, _)| {
            fds.push(PollFd::new(rx.as_fd(), PollFlags::POLLIN));
            fds.len() - 1
        });
        let base = fds.len();
        if let Some(m) = &master {
            fds.push(PollFd::new(m.as_fd(), PollFlags::POLLIN));
            if stdin_open {
                fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLIN));
            }
        }
        match poll(&mut fds, timeout) {
            Ok(_) => {}
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
        let revents: Vec<PollFlags> = fds
            .iter()
            .map(|f| f.revents().unwrap_or(PollFlags::empty()))
            .collect();
        drop(fds);
        if let Some(t) = kill_at {
            if Instant::now() >= t {
                // ESRCH: it exited meanwhile, which the loop reaps.
                let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
                kill_at = None;
            }
        }
        if let (Some(i), Some((rx, f))) = (out_idx, output.as_mut()) {
            if revents[i].intersects(PollFlags::POLLIN | PollFlags::POLLHUP) {
                match nix::unistd::read(rx.as_raw_fd(), &mut buf) {
                    Ok(0) | Err(_) => {
                        // Everyone closed it; keep reaping without it.
                        output = None;
                    }
                    Ok(n) => f(&buf[..n]),
                }
            }
        }
        if revents[0].contains(PollFlags::POLLIN) {
            while let Ok(Some(info)) = sfd.read_signal() {
                let Ok(sig) = Signal::try_from(info.ssi_signo as i32) else {
                    continue;
                };
                match sig {
                    Signal::SIGCHLD => {}
                    Signal::SIGWINCH => {
                        if let Some(m) = &master {
                            copy_winsize(m.as_fd());
                        }
                    }
                    Signal::SIGTERM | Signal::SIGINT | Signal::SIGHUP if kill_at.is_some() => {
                        // ESRCH: it exited meanwhile, which the loop reaps.
                        let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
                    }
                    other => {
                        // To the container's init, which passes it to the command.
                        let _ = nix::sys::signal::kill(pid, other);
                        if matches!(other, Signal::SIGTERM | Signal::SIGINT | Signal::SIGHUP) {
                            kill_at = Some(Instant::now() + KILL_GRACE);
                        }
                    }
                }
            }
        }
        if let Some(m) = &master {
            if revents
                .get(base)
                .is_some_and(|r| r.intersects(PollFlags::POLLIN | PollFlags::POLLHUP))
            {
                match nix::unistd::read(m.as_raw_fd(), &mut buf) {
                    Ok(0) | Err(_) => {
                        // The terminal closed: the process is exiting; wait for it.
                        let status = waitpid(pid, None)?;
                        return Ok(code_of(status).unwrap_or(1));
                    }
                    Ok(n) => {
                        let mut out = std::io::stdout().lock();
                        // A closed stdout (`| head`) must not stop the container.
                        let _ = out.write_all(&buf[..n]);
                        let _ = out.flush();
                    }
                }
            }
            if stdin_open
                && revents
                    .get(base + 1)
                    .is_some_and(|r| r.intersects(PollFlags::POLLIN | PollFlags::POLLHUP))
            {
                match nix::unistd::read(stdin.as_raw_fd(), &mut buf) {
                    Ok(0) | Err(_) => stdin_open = false,
                    Ok(n) => {
                        // Input the command no longer reads (its terminal closed) is dropped.
                        let _ = nix::unistd::write(m, &buf[..n]);
                    }
                }
            }
        }
    }
}

/// The shell convention for a wait status: its code, or 128+signal.
pub fn code_of(status: WaitStatus) -> Option<i32> {
    match status {
        WaitStatus::Exited(_, c) => Some(c),
        WaitStatus::Signaled(_, s, _) => Some(128 + s as i32),
        _ => None,
    }
}

fn try_reap(pid: Pid) -> Result<Option<i32>, RuntimeError> {
    match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
        Ok(s) => Ok(code_of(s)),
        Err(e) => Err(e.into()),
    }
}

/// Read what is left in `fd` without waiting (a daemon may keep the write end open).
fn drain(fd: BorrowedFd<'_>, buf: &mut [u8], sink: &mut dyn FnMut(&[u8])) {
    // Fails only for a closed descriptor, whose read below then ends the drain.
    let _ = nix::fcntl::fcntl(
        fd.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    );
    while let Ok(n) = nix::unistd::read(fd.as_raw_fd(), buf) {
        if n == 0 {
            break;
        }
        sink(&buf[..n]);
    }
}
