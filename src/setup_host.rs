//! One-time host preparation by root (`gbuild setup-host --user NAME`), the equivalent of what
//! rootless container stacks ask of an administrator: subordinate id ranges for the user. No
//! cgroup is delegated: containers get none (see the runtime's `cgroup` module). Idempotent: a
//! second run changes nothing and says so.

use std::path::{Path, PathBuf};

use crate::idmap::{parse_ranges, SUBGID, SUBUID};

/// Size of the subordinate range given to a user (what useradd gives by default).
pub const RANGE: u32 = 65536;
const FIRST_ID: u64 = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("setup-host must run as root (it edits {SUBUID} and {SUBGID})")]
    NotRoot,
    #[error("no user {0}")]
    NoUser(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}: no free subordinate range below 2^32")]
    Full(PathBuf),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SetupError + '_ {
    move |source| SetupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What `setup_host` did, one line per change.
pub fn setup_host(user: &str) -> Result<Vec<String>, SetupError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(SetupError::NotRoot);
    }
    let u = nix::unistd::User::from_name(user)
        .ok()
        .flatten()
        .ok_or_else(|| SetupError::NoUser(user.to_string()))?;
    let mut done = Vec::new();
    for file in [SUBUID, SUBGID] {
        if let Some(line) = ensure_range(Path::new(file), user, u.uid.as_raw())? {
            done.push(format!("added {line} to {file}"));
        }
    }
    Ok(done)
}

/// Give `user` a subordinate range in `file` unless it has one; returns the line added.
fn ensure_range(file: &Path, user: &str, uid: u32) -> Result<Option<String>, SetupError> {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io(file)(e)),
    };
    if !parse_ranges(&text, user, uid).is_empty() {
        return Ok(None);
    }
    // First free range above every existing one.
    let mut next = FIRST_ID;
    for line in text.lines() {
        let mut it = line.split(':');
        let (_, s, c) = (it.next(), it.next(), it.next());
        if let (Some(Ok(s)), Some(Ok(c))) = (s.map(str::parse::<u64>), c.map(str::parse::<u64>)) {
            next = next.max(s + c);
        }
    }
    if next + RANGE as u64 > u32::MAX as u64 {
        return Err(SetupError::Full(file.to_path_buf()));
    }
    let line = format!("{user}:{next}:{RANGE}");
    let mut new = text.clone();
    if !new.is_empty() && !new.ends_with('\n') {
        new.push('\n');
    }
    new.push_str(&line);
    new.push('\n');
    crate::fsutil::atomic_write(file, new.as_bytes()).map_err(|e| SetupError::Io {
        path: file.to_path_buf(),
        source: e.source,
    })?;
    if let Err(e) =
        std::fs::set_permissions(file, std::os::unix::fs::PermissionsExt::from_mode(0o644))
    {
        tracing::warn!("{}: chmod 644: {e}", file.display());
    }
    Ok(Some(line))
}
