//! The container's pid 1: a minimal init in gbuild itself, as `podman --init` (catatonit),
//! tini and bubblewrap provide. The kernel gives pid 1 of a namespace two duties a build
//! command does not fulfil: orphans are re-parented to it (a long emerge leaves zombies unless
//! it reaps them), and it ignores every signal it has no handler for (a SIGTERM would not end
//! a `sleep`). So the command runs as pid 2, and pid 1 reaps every child, passes every signal
//! it receives to the command, and exits with the command's status (128+n for signal n); when
//! it exits the kernel kills whatever is left in the namespace.
//!
//! It is libcontainer's own init process that becomes this init, through our `Executor`:
//! instead of exec'ing the command, it forks; the child execs the command, the parent stays.
//! No binary is mounted into the rootfs and nothing is exec'd twice (see ARCHITECTURE.md).

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{ForkResult, Pid};

use libcontainer::oci_spec::runtime::Spec;
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};

use super::supervise::code_of;

/// libcontainer's executor for our containers: checks like the default one, then runs the
/// init.
#[derive(Clone)]
pub struct InitExecutor;

impl Executor for InitExecutor {
    /// Runs in the container's init process before it waits for the start signal: from here
    /// on it dies with the gbuild thread that created it.
    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        // Cannot fail for a valid signal; the watchdog covers a gbuild that died regardless.
        let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
        libcontainer::workload::default::get_executor().validate(spec)
    }

    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        // This process never execs, so what it inherited from gbuild (marked close-on-exec by
        // libcontainer) would stay open for the container's life: a machine's lock among them,
        // held past gbuild's death until the init is gone. Keep only stdin, stdout, stderr.
        crate::sys::close_fds_from(3);
        // Every signal is taken from a signalfd from now on (blocked signals are delivered to
        // a namespace's init even without a handler); the command unblocks them.
        let _ = SigSet::all().thread_block();
        let sfd = SignalFd::with_flags(&SigSet::all(), SfdFlags::SFD_CLOEXEC)
            .map_err(|e| ExecutorError::Other(format!("signalfd: {e}")))?;
        // This process is a copy of gbuild's memory: keep it unreadable from the container
        // (libcontainer already made it so; say it here, where it matters).
        // Neither can fail for these arguments; both are set already (libcontainer, validate).
        let _ = nix::sys::prctl::set_dumpable(false);
        let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
        match crate::sys::fork_single_threaded() {
            Err(e) => Err(ExecutorError::Other(format!("fork: {e}"))),
            Ok(ForkResult::Child) => {
                drop(sfd);
                exec_command(spec)
            }
            Ok(ForkResult::Parent { child }) => {
                // Only the name `ps` shows.
                let _ = nix::sys::prctl::set_name(c"gbuild-init");
                std::process::exit(init_loop(child, &sfd))
            }
        }
    }
}

/// In the child (pid 2): its own process group, in the terminal's foreground when there is
/// one (so Ctrl-C inside reaches the command once, not through the init as well), default
/// signal actions, an empty mask, then the command.
fn exec_command(spec: &Spec) -> Result<(), ExecutorError> {
    // Already a group leader is fine: the command has a group of its own either way.
    let _ = nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0));
    let terminal = spec
        .process()
        .as_ref()
        .and_then(|p| p.terminal())
        .unwrap_or(false);
    if terminal {
        // SIGTTOU is still blocked, so a background group may take the foreground.
        let _ = nix::unistd::tcsetpgrp(std::io::stdin(), nix::unistd::getpgrp());
    }
    crate::sys::reset_signal_dispositions();
    // Cannot fail for SIG_SETMASK with a valid set.
    let _ = SigSet::empty().thread_set_mask();
    let r = libcontainer::workload::default::get_executor().exec(spec);
    // Only reached when exec failed; the init passes the status on.
    if let Err(e) = r {
        let argv0 = spec
            .process()
            .as_ref()
            .and_then(|p| p.args().as_ref())
            .and_then(|a| a.first().cloned())
            .unwrap_or_default();
        tracing::error!("cannot execute {argv0}: {e}");
    }
    std::process::exit(127)
}

/// Pid 1's loop: reap every child; pass every signal but SIGCHLD to the command; return the
/// command's status once it is gone.
fn init_loop(command: Pid, sfd: &SignalFd) -> i32 {
    loop {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => break,
                Ok(status) => {
                    if status.pid() == Some(command) {
                        if let Some(code) = code_of(status) {
                            return code;
                        }
                    }
                }
                Err(nix::Error::EINTR) => continue,
                // No child at all: the command is gone without us seeing it.
                Err(_) => return 1,
            }
        }
        match sfd.read_signal() {
            Ok(Some(info)) => {
                let sig = info.ssi_signo as i32;
                if sig != libc::SIGCHLD {
                    if let Ok(s) = Signal::try_from(sig) {
                        // ESRCH: the command exited; its status comes with the next SIGCHLD.
                        let _ = nix::sys::signal::kill(command, s);
                    }
                }
            }
            Ok(None) | Err(nix::Error::EINTR) => {}
            Err(_) => return 1,
        }
    }
}
