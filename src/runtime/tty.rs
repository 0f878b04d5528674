//! The container's terminal: libcontainer's init allocates a pty inside and sends its master
//! over a console socket (SCM_RIGHTS); gbuild puts its own terminal in raw mode and proxies
//! bytes and window sizes between the two.

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use super::{io_err, RuntimeError};

/// The listening console socket of one run.
pub struct ConsoleSocket {
    pub path: PathBuf,
    listener: UnixListener,
}

impl ConsoleSocket {
    /// Listen at `path`; stdin must be a terminal (its size and mode are what the container's
    /// terminal gets).
    pub fn bind(path: &Path) -> Result<ConsoleSocket, RuntimeError> {
        if !nix::unistd::isatty(std::io::stdin().as_raw_fd()).unwrap_or(false) {
            return Err(RuntimeError::NotATty);
        }
        let listener = UnixListener::bind(path).map_err(io_err("bind console socket", path))?;
        Ok(ConsoleSocket {
            path: path.to_path_buf(),
            listener,
        })
    }

    /// Receive the pty master the container's init sends.
    pub fn receive_master(&self) -> Result<OwnedFd, RuntimeError> {
        use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
        let (stream, _) = self
            .listener
            .accept()
            .map_err(io_err("accept console socket", &self.path))?;
        let mut data = [0u8; 4096];
        let mut iov = [std::io::IoSliceMut::new(&mut data)];
        let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let msg = recvmsg::<()>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::empty(),
        )?;
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(fds) = c {
                if let Some(&fd) = fds.first() {
                    // The kernel gave us a new descriptor that nothing else owns.
                    return Ok(crate::sys::own_fd(fd));
                }
            }
        }
        Err(RuntimeError::Container {
            id: String::new(),
            message: "no terminal received on the console socket".into(),
        })
    }
}

/// Give the container's terminal the size of ours.
pub fn copy_winsize(master: BorrowedFd<'_>) {
    if let Ok(ws) = crate::sys::get_winsize(std::io::stdin().as_raw_fd()) {
        // A terminal of the wrong size is cosmetic.
        let _ = crate::sys::set_winsize(master.as_raw_fd(), &ws);
    }
}

/// The host terminal in raw mode for the lifetime of the value.
pub struct RawMode {
    fd: std::os::fd::RawFd,
    saved: nix::sys::termios::Termios,
}

impl RawMode {
    pub fn enter(fd: BorrowedFd<'_>) -> Result<RawMode, RuntimeError> {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let saved = tcgetattr(fd)?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(fd, SetArg::TCSANOW, &raw)?;
        Ok(RawMode {
            fd: fd.as_raw_fd(),
            saved,
        })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        use nix::sys::termios::{tcsetattr, SetArg};
        let fd = crate::sys::borrow_fd(self.fd);
        // Our terminal gone (hung up): nothing left to restore.
        let _ = tcsetattr(fd, SetArg::TCSANOW, &self.saved);
    }
}
