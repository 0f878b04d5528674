//! One lock per machine (and one for store-wide maintenance): an exclusive `flock` on a file, so a
//! crashed holder never leaves a stale lock behind. The holder writes its pid and command line
//! into the file to make the refusal message useful; `holder` tells who has a lock without
//! touching it (from /proc/locks), so asking never makes someone else's attempt fail.
//! `RwLock` is the same `flock` shared or exclusive (the store's layer lock: creators share it,
//! `gc` takes it alone); this module is the only place that calls `flock`.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{path} is locked by {holder}: another gbuild is working on it")]
    Busy { path: PathBuf, holder: Holder },
    #[error("lock {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Who holds a lock, as its lock file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub pid: Option<u32>,
    /// The holder's command line (`gbuild run --once`), when it wrote one.
    pub command: String,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.pid {
            Some(p) => write!(f, "pid {p}")?,
            None => write!(f, "pid ?")?,
        }
        if !self.command.is_empty() {
            write!(f, " ({})", self.command)?;
        }
        Ok(())
    }
}

impl Holder {
    /// Parse a lock file: the pid on the first line, the command on the second.
    fn parse(text: &str) -> Holder {
        let mut lines = text.lines();
        Holder {
            pid: lines.next().and_then(|l| l.trim().parse().ok()),
            command: lines.next().unwrap_or("").trim().to_string(),
        }
    }
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

/// This process's command line as a user would type it: `gbuild run --once`.
fn own_command() -> String {
    let raw = std::fs::read("/proc/self/cmdline").unwrap_or_default();
    let mut args: Vec<String> = raw
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    if let Some(a0) = args.first_mut() {
        if let Some(base) = Path::new(a0.as_str()).file_name() {
            *a0 = base.to_string_lossy().into_owned();
        }
    }
    args.join(" ").replace('\n', " ")
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
        let io = io_at(path);
        let file = open_lock_file(path)?;
        let arg = if wait {
            FlockArg::LockExclusive
        } else {
            FlockArg::LockExclusiveNonblock
        };
        let mut flock = match Flock::lock(file, arg) {
            Ok(l) => l,
            Err((mut file, _)) => {
                let mut text = String::new();
                // The holder's name is only informative: an unreadable one is shown empty.
                let _ = file.read_to_string(&mut text);
                return Err(LockError::Busy {
                    path: path.to_path_buf(),
                    holder: Holder::parse(&text),
                });
            }
        };
        flock.set_len(0).map_err(io)?;
        flock.rewind().map_err(io)?;
        write!(flock, "{}\n{}\n", std::process::id(), own_command()).map_err(io)?;
        Ok(Lock {
            _flock: flock,
            path: path.to_path_buf(),
        })
    }

    /// Who holds the lock at `path` now, if anyone; reads /proc/locks and the file only.
    pub fn holder(path: &Path) -> Option<Holder> {
        use std::os::unix::fs::MetadataExt;
        let md = std::fs::metadata(path).ok()?;
        let dev = md.dev();
        let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
        let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
        let key = format!("{major:02x}:{minor:02x}:{}", md.ino());
        let locks = std::fs::read_to_string("/proc/locks").ok()?;
        let held = locks.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF" (blocked waiters have "->").
            f.len() >= 6 && f[1] == "FLOCK" && f[3] == "WRITE" && f[5] == key
        });
        held.then(|| Holder::parse(&std::fs::read_to_string(path).unwrap_or_default()))
    }
}

/// An I/O error of the lock file at `path`.
fn io_at(path: &Path) -> impl Fn(std::io::Error) -> LockError + Copy + '_ {
    move |source| LockError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The lock file at `path`, created (with its directory) when missing, never truncated: the
/// holder's name in it is read by whoever finds the lock taken.
fn open_lock_file(path: &Path) -> Result<File, LockError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io_at(path))?;
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io_at(path))
}

/// A readers-writer lock on a file: `flock` shared by many holders or exclusive to one, waiting
/// for the others either way. No holder is written (shared holders are many).
#[derive(Debug)]
pub struct RwLock {
    _flock: Flock<File>,
}

impl RwLock {
    /// Take the lock shared (waits while someone holds it exclusively).
    pub fn shared(path: &Path) -> Result<RwLock, LockError> {
        Self::take(path, FlockArg::LockShared)
    }

    /// Take the lock exclusively (waits until no one else holds it).
    pub fn exclusive(path: &Path) -> Result<RwLock, LockError> {
        Self::take(path, FlockArg::LockExclusive)
    }

    fn take(path: &Path, arg: FlockArg) -> Result<RwLock, LockError> {
        let file = open_lock_file(path)?;
        let flock =
            Flock::lock(file, arg).map_err(|(_, e)| io_at(path)(std::io::Error::from(e)))?;
        Ok(RwLock { _flock: flock })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_is_refused_until_release() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lock");
        assert_eq!(Lock::holder(&p), None);
        let l = Lock::try_acquire(&p).unwrap();
        let e = Lock::try_acquire(&p).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("pid {} (", std::process::id())),
            "{msg}"
        );
        let h = Lock::holder(&p).expect("held");
        assert_eq!(h.pid, Some(std::process::id()));
        assert!(!h.command.is_empty());
        drop(l);
        assert_eq!(Lock::holder(&p), None);
        Lock::try_acquire(&p).unwrap();
    }

    #[test]
    fn shared_holders_coexist_and_exclusive_waits_for_them() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("sub/.lock");
        let a = RwLock::shared(&path).unwrap();
        let b = RwLock::shared(&path).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let p = path.clone();
        let t = std::thread::spawn(move || {
            let l = RwLock::exclusive(&p).unwrap();
            tx.send(()).unwrap();
            drop(l);
        });
        assert!(
            rx.recv_timeout(std::time::Duration::from_millis(300))
                .is_err(),
            "exclusive taken while shared holders exist"
        );
        drop(a);
        drop(b);
        rx.recv().unwrap();
        t.join().unwrap();
    }
}
