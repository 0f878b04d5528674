//! Which ids the containers get: the caller's uid becomes root inside, and its subordinate range
//! from /etc/subuid and /etc/subgid becomes 1..N (written by newuidmap/newgidmap). Everything is
//! checked up front, because the kernel and libcontainer only report `EINVAL` when it is wrong.

use std::path::{Path, PathBuf};

/// One contiguous mapping line: `inside outside count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IdRange {
    pub inside: u32,
    pub outside: u32,
    pub count: u32,
}

/// The uid and gid maps of a user namespace.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IdMapping {
    pub uid: Vec<IdRange>,
    pub gid: Vec<IdRange>,
}

/// How the caller wants ids mapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum IdPolicy {
    /// The full subordinate mapping when the user has ranges, else a single id with a warning.
    #[default]
    Auto,
    /// The full subordinate mapping or an error saying how to get it.
    Full,
    /// Only the caller's own ids (chown to other ids fails inside).
    Single,
}

#[derive(Debug, thiserror::Error)]
pub enum IdMapError {
    #[error("no subordinate {kind} range for user {user} in {file}: run `gbuild setup-host --user {user}` as root (or `usermod --add-sub{kind}s 100000-165535 {user}`)")]
    NoRange {
        kind: &'static str,
        user: String,
        file: PathBuf,
    },
    #[error("{tool} not found in PATH: install it (Debian/Ubuntu: `apt install uidmap`, Gentoo: sys-apps/shadow) to use subordinate id ranges")]
    NoTool { tool: &'static str },
    #[error("{tool} is not setuid root or lacks the setuid capability ({path}): reinstall the uidmap package")]
    ToolNotPrivileged { tool: &'static str, path: PathBuf },
    #[error("read {file}: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot find the name of uid {0} in the user database")]
    NoUser(u32),
}

pub const SUBUID: &str = "/etc/subuid";
pub const SUBGID: &str = "/etc/subgid";

impl IdMapping {
    /// Map only `uid`/`gid` to 0.
    pub fn single(uid: u32, gid: u32) -> IdMapping {
        IdMapping {
            uid: vec![IdRange {
                inside: 0,
                outside: uid,
                count: 1,
            }],
            gid: vec![IdRange {
                inside: 0,
                outside: gid,
                count: 1,
            }],
        }
    }

    /// Whether the map has ids beyond the caller's own (needs newuidmap/newgidmap).
    pub fn is_full(&self) -> bool {
        self.uid.len() > 1 || self.gid.len() > 1
    }

    /// Host uid of `inside`, if mapped.
    pub fn host_uid(&self, inside: u32) -> Option<u32> {
        map_one(&self.uid, inside)
    }
    pub fn host_gid(&self, inside: u32) -> Option<u32> {
        map_one(&self.gid, inside)
    }

    /// The mapping for the calling user under `policy`. `warn` receives the fallback notice.
    pub fn for_current_user(
        policy: IdPolicy,
        warn: &mut dyn FnMut(&str),
    ) -> Result<IdMapping, IdMapError> {
        let uid = nix::unistd::getuid().as_raw();
        let gid = nix::unistd::getgid().as_raw();
        if policy == IdPolicy::Single {
            return Ok(IdMapping::single(uid, gid));
        }
        let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten()
            .map(|u| u.name)
            .ok_or(IdMapError::NoUser(uid))?;
        Self::for_user(
            policy,
            &user,
            uid,
            gid,
            Path::new(SUBUID),
            Path::new(SUBGID),
            warn,
        )
    }

    /// As `for_current_user`, with every input explicit (testable).
    pub fn for_user(
        policy: IdPolicy,
        user: &str,
        uid: u32,
        gid: u32,
        subuid: &Path,
        subgid: &Path,
        warn: &mut dyn FnMut(&str),
    ) -> Result<IdMapping, IdMapError> {
        let uranges = read_ranges(subuid, user, uid)?;
        let granges = read_ranges(subgid, user, uid)?;
        if uranges.is_empty() || granges.is_empty() {
            let kind = if uranges.is_empty() { "uid" } else { "gid" };
            let file = if uranges.is_empty() { subuid } else { subgid };
            let err = IdMapError::NoRange {
                kind,
                user: user.to_string(),
                file: file.to_path_buf(),
            };
            if policy == IdPolicy::Full {
                return Err(err);
            }
            warn(&format!(
                "warning: {err}; using a single-id mapping, so files cannot be owned by other users inside"
            ));
            return Ok(IdMapping::single(uid, gid));
        }
        check_tool("newuidmap")?;
        check_tool("newgidmap")?;
        let mut m = IdMapping::single(uid, gid);
        push_ranges(&mut m.uid, &uranges);
        push_ranges(&mut m.gid, &granges);
        Ok(m)
    }
}

fn map_one(ranges: &[IdRange], inside: u32) -> Option<u32> {
    ranges
        .iter()
        .find(|r| inside >= r.inside && inside - r.inside < r.count)
        .map(|r| r.outside + (inside - r.inside))
}

fn push_ranges(out: &mut Vec<IdRange>, ranges: &[(u32, u32)]) {
    let mut next = 1u32;
    for &(start, count) in ranges {
        out.push(IdRange {
            inside: next,
            outside: start,
            count,
        });
        next = next.saturating_add(count);
    }
}

/// The `(start, count)` ranges of `user` (by name or by uid) in a subordinate id file.
pub fn read_ranges(file: &Path, user: &str, uid: u32) -> Result<Vec<(u32, u32)>, IdMapError> {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(IdMapError::Read {
                file: file.to_path_buf(),
                source,
            })
        }
    };
    Ok(parse_ranges(&text, user, uid))
}

pub fn parse_ranges(text: &str, user: &str, uid: u32) -> Vec<(u32, u32)> {
    let uid_s = uid.to_string();
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                return None;
            }
            let mut it = line.split(':');
            let (who, start, count) = (it.next()?, it.next()?, it.next()?);
            if who != user && who != uid_s {
                return None;
            }
            let start: u32 = start.trim().parse().ok()?;
            let count: u32 = count.trim().parse().ok()?;
            (count > 0).then_some((start, count))
        })
        .collect()
}

/// Find `tool` in PATH and check that it can do its job (setuid root or file capability).
pub fn check_tool(tool: &'static str) -> Result<PathBuf, IdMapError> {
    let path = find_in_path(tool).ok_or(IdMapError::NoTool { tool })?;
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(&path).map_err(|source| IdMapError::Read {
        file: path.clone(),
        source,
    })?;
    let setuid_root = md.mode() & 0o4000 != 0 && md.uid() == 0;
    let has_fcap = xattr::get(&path, "security.capability")
        .ok()
        .flatten()
        .is_some();
    if !setuid_root && !has_fcap && !nix::unistd::geteuid().is_root() {
        return Err(IdMapError::ToolNotPrivileged { tool, path });
    }
    Ok(path)
}

pub fn find_in_path(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_by_name_and_uid() {
        let t = "alice:100000:65536\n# c\n1001:200000:1000\nbob:300000:65536\n";
        assert_eq!(parse_ranges(t, "alice", 1000), vec![(100000, 65536)]);
        assert_eq!(parse_ranges(t, "carol", 1001), vec![(200000, 1000)]);
        assert!(parse_ranges(t, "dave", 7).is_empty());
    }

    #[test]
    fn full_mapping_layout() {
        let mut m = IdMapping::single(1000, 1000);
        push_ranges(&mut m.uid, &[(100000, 65536)]);
        assert_eq!(m.host_uid(0), Some(1000));
        assert_eq!(m.host_uid(250), Some(100249));
        assert_eq!(m.host_uid(65536), Some(165535));
        assert_eq!(m.host_uid(65537), None);
    }

    #[test]
    fn missing_range_full_policy_errors_with_fix() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("subuid");
        std::fs::write(&f, "other:1:2\n").unwrap();
        let e = IdMapping::for_user(IdPolicy::Full, "alice", 1000, 1000, &f, &f, &mut |_| {})
            .unwrap_err()
            .to_string();
        assert!(e.contains("gbuild setup-host --user alice"), "{e}");
        let mut warned = String::new();
        let m = IdMapping::for_user(IdPolicy::Auto, "alice", 1000, 1000, &f, &f, &mut |w| {
            warned = w.to_string()
        })
        .unwrap();
        assert!(!m.is_full());
        assert!(warned.contains("single-id"));
    }
}
