//! One-time host preparation by root (`gbuild setup-host --user NAME`), the equivalent of what
//! rootless container stacks ask of an administrator: subordinate id ranges for the user, and on
//! cgroup v1/hybrid hosts a cgroup directory per controller delegated to the user (libcontainer's
//! v1 manager has no rootless mode). Idempotent: a second run changes nothing and says so.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::idmap::{parse_ranges, SUBGID, SUBUID};

/// Size of the subordinate range given to a user (what useradd gives by default).
pub const RANGE: u32 = 65536;
const FIRST_ID: u64 = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("setup-host must run as root (it edits {SUBUID} and /sys/fs/cgroup)")]
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

/// The user's name for `uid` (its number as text when unknown).
pub fn user_name(uid: u32) -> String {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| uid.to_string())
}

/// The cgroup path (relative to each controller's root) delegated to `user`.
pub fn delegated_cgroup(user: &str) -> String {
    format!("/gbuild/{user}")
}

/// Whether cgroups are v1 or hybrid (libcontainer then always uses its v1 manager).
pub fn cgroup_is_v1() -> bool {
    nix::sys::statfs::statfs("/sys/fs/cgroup")
        .map(|s| s.filesystem_type() != nix::sys::statfs::CGROUP2_SUPER_MAGIC)
        .unwrap_or(false)
}

/// Mounted v1 controllers: (name as libcontainer knows it, mount point).
pub fn v1_controller_mounts() -> Vec<(String, PathBuf)> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let known = [
        "cpu",
        "cpuacct",
        "cpuset",
        "devices",
        "hugetlb",
        "memory",
        "pids",
        "perf_event",
        "blkio",
        "net_prio",
        "net_cls",
        "freezer",
    ];
    let mut out = Vec::new();
    for line in text.lines() {
        // ... mount_point ... - fstype source super_options
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mut r = right.split_whitespace();
        if r.next() != Some("cgroup") {
            continue;
        }
        let opts = r.nth(1).unwrap_or("");
        let mnt = left.split_whitespace().nth(4).unwrap_or("");
        for o in opts.split(',') {
            if known.contains(&o) && !out.iter().any(|(c, _): &(String, PathBuf)| c == o) {
                out.push((o.to_string(), PathBuf::from(mnt)));
            }
        }
    }
    out
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
    if cgroup_is_v1() {
        let rel = delegated_cgroup(user);
        let mut seen = std::collections::HashSet::new();
        for (_, mnt) in v1_controller_mounts() {
            if !seen.insert(mnt.clone()) {
                continue;
            }
            let parent = mnt.join("gbuild");
            let dir = mnt.join(rel.trim_start_matches('/'));
            let mut changed = false;
            for d in [&parent, &dir] {
                if !d.exists() {
                    std::fs::create_dir(d).map_err(io(d))?;
                    changed = true;
                }
                // cpuset children start empty and refuse tasks: copy the parent's sets.
                for f in ["cpuset.cpus", "cpuset.mems"] {
                    let p = d.join(f);
                    if p.exists() {
                        let cur = std::fs::read_to_string(&p).map_err(io(&p))?;
                        if cur.trim().is_empty() {
                            let from = d.parent().unwrap().join(f);
                            let v = std::fs::read_to_string(&from).map_err(io(&from))?;
                            std::fs::write(&p, v.trim()).map_err(io(&p))?;
                            changed = true;
                        }
                    }
                }
            }
            let md = std::fs::metadata(&dir).map_err(io(&dir))?;
            if md.uid() != u.uid.as_raw() {
                changed = true;
            }
            // The user must own the directory and the files used to move tasks into it.
            chown_tree(&dir, u.uid.as_raw(), u.gid.as_raw())?;
            if changed {
                done.push(format!("delegated cgroup {} to {user}", dir.display()));
            }
        }
    }
    Ok(done)
}

fn chown_tree(dir: &Path, uid: u32, gid: u32) -> Result<(), SetupError> {
    let own = |p: &Path| -> Result<(), SetupError> {
        let md = std::fs::symlink_metadata(p).map_err(io(p))?;
        if md.uid() != uid || md.gid() != gid {
            std::os::unix::fs::lchown(p, Some(uid), Some(gid)).map_err(io(p))?;
        }
        Ok(())
    };
    own(dir)?;
    for f in [
        "cgroup.procs",
        "tasks",
        "cgroup.clone_children",
        "notify_on_release",
    ] {
        let p = dir.join(f);
        if p.exists() {
            own(&p)?;
        }
    }
    Ok(())
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
