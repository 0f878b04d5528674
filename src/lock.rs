//! One lock per machine (and one for store-wide maintenance): an exclusive `flock` on a file, so a
//! crashed holder never leaves a stale lock behind. The holder's pid is written into the file to
//! make the refusal message useful.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{path} is locked by pid {holder}: another gbuild is working on it")]
    Busy { path: PathBuf, holder: String },
    #[error("lock {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Held lock; released on drop (or when the process dies).
pub struct Lock {
    _flock: Flock<File>,
    path: PathBuf,
}

impl std::fmt::Debug for Lock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Lock({})", self.path.display())
    }
}

impl Lock {
    /// Take the lock without waiting; `Busy` names the holder when someone has it.
    pub fn try_acquire(path: &Path) -> Result<Lock, LockError> {
        Self::take(path, false)
    }

    /// Take the lock, waiting for the holder to release it (for short operations that must not
    /// run at once but need not fail, e.g. two imports of one machine).
    pub fn acquire(path: &Path) -> Result<Lock, LockError> {
        Self::take(path, true)
    }

    fn take(path: &Path, wait: bool) -> Result<Lock, LockError> {
        let io = |source| LockError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io)?;
        let _ = file.as_fd();
        let arg = if wait {
            FlockArg::LockExclusive
        } else {
            FlockArg::LockExclusiveNonblock
        };
        let mut flock = match Flock::lock(file, arg) {
            Ok(l) => l,
            Err((mut file, _)) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(LockError::Busy {
                    path: path.to_path_buf(),
                    holder: if holder.is_empty() {
                        "?".into()
                    } else {
                        holder.into()
                    },
                });
            }
        };
        flock.set_len(0).map_err(io)?;
        flock.rewind().map_err(io)?;
        write!(flock, "{}", std::process::id()).map_err(io)?;
        Ok(Lock {
            _flock: flock,
            path: path.to_path_buf(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_is_refused_until_release() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lock");
        let l = Lock::try_acquire(&p).unwrap();
        let e = Lock::try_acquire(&p).unwrap_err();
        assert!(
            e.to_string().contains(&std::process::id().to_string()),
            "{e}"
        );
        drop(l);
        Lock::try_acquire(&p).unwrap();
    }
}
