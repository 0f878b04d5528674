//! The only module with `unsafe`: the few system calls std and nix do not wrap safely. Each
//! function states the invariant that makes it sound. Everything else in gbuild is safe Rust.

use std::os::fd::RawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// Make `cmd`'s child receive `sig` when the thread that spawned it exits (PR_SET_PDEATHSIG).
pub fn kill_child_with_parent(cmd: &mut Command, sig: nix::sys::signal::Signal) {
    let parent = std::process::id() as i32;
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe system calls
    // (prctl, getppid, kill) without allocating.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                // The parent died before prctl took effect.
                libc::kill(libc::getpid(), sig as libc::c_int);
            }
            Ok(())
        });
    }
}

/// Open a pidfd for `pid` (Linux 5.3+): a handle that cannot be confused with a reused pid.
pub fn pidfd_open(pid: i32) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open takes plain integers; on success it returns a new fd that we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor owned by nobody else.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Start writing `len` bytes of `f` from `offset` to disk without waiting for them
/// (`sync_file_range` with `SYNC_FILE_RANGE_WRITE`): a head start for a later fsync, which is
/// what makes the data durable and reports any error.
pub fn start_writeback(f: &std::fs::File, offset: u64, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: sync_file_range takes a descriptor `f` keeps open and plain integers; it touches
    // no memory of ours.
    let r = unsafe {
        libc::sync_file_range(
            f.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Set the terminal window size of `fd`.
pub fn set_winsize(fd: RawFd, ws: &nix::pty::Winsize) -> std::io::Result<()> {
    // SAFETY: TIOCSWINSZ reads a winsize struct that outlives the call.
    let r = unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, ws as *const nix::pty::Winsize) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Get the terminal window size of `fd`.
pub fn get_winsize(fd: RawFd) -> std::io::Result<nix::pty::Winsize> {
    let mut ws = nix::pty::Winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes a winsize struct into memory we own.
    let r = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws as *mut nix::pty::Winsize) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(ws)
}

/// Take ownership of a descriptor the kernel just handed over (SCM_RIGHTS, or the result of an
/// `open`-like call that nix returns as a raw fd).
pub fn own_fd(fd: RawFd) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: callers pass a descriptor just returned by the kernel that nothing else owns.
    unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }
}

/// Borrow a descriptor that stays open for the whole process (0, 1, 2).
pub fn borrow_fd(fd: RawFd) -> std::os::fd::BorrowedFd<'static> {
    // SAFETY: callers pass a standard descriptor that is never closed by gbuild.
    unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }
}

/// Fork the calling process. Refused unless it has exactly one thread: in a child of a
/// multi-threaded process only async-signal-safe calls are allowed, and the runtime's init
/// (the only caller) goes on to run ordinary Rust code on both sides.
pub fn fork_single_threaded() -> std::io::Result<nix::unistd::ForkResult> {
    let threads = std::fs::read_dir("/proc/self/task")?.count();
    if threads != 1 {
        return Err(std::io::Error::other(format!(
            "fork refused: the process has {threads} threads"
        )));
    }
    // SAFETY: the process has a single thread (checked above, and it cannot gain one
    // concurrently: only this thread could start it), so the child may run any code.
    unsafe { nix::unistd::fork() }.map_err(std::io::Error::from)
}

/// Give every signal its default action (those ignored survive exec otherwise: Rust ignores
/// SIGPIPE in its own processes, and a command started from one would inherit that).
pub fn reset_signal_dispositions() {
    for sig in 1..=libc::SIGRTMAX() {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: installing SIG_DFL involves no handler code and no memory of ours; errors
        // (signals the C library reserves) are harmless and ignored.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
        }
    }
}

/// Close every descriptor from `first` up (close_range, Linux 5.9+; else one by one up to the
/// soft RLIMIT_NOFILE). For a process that will not exec: it must not keep what it inherited.
pub fn close_fds_from(first: i32) {
    // SAFETY: close_range takes plain integers and only closes descriptors; the caller owns
    // the process's descriptor table (it runs no other thread and drops none of them later).
    let r = unsafe { libc::syscall(libc::SYS_close_range, first as u32, u32::MAX, 0u32) };
    if r == 0 {
        return;
    }
    let max = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(soft, _)| soft.min(1 << 20) as i32)
        .unwrap_or(1024);
    for fd in first..max {
        // SAFETY: as above; EBADF for descriptors that are not open is ignored.
        unsafe {
            libc::close(fd);
        }
    }
}
