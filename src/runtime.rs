//! The rootless container runtime: the only module that imports libcontainer.

use std::process::ExitStatus;

/// The shell convention for a finished process: its code, or 128+signal.
pub fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => c,
        (None, Some(s)) => 128 + s,
        _ => 1,
    }
}
