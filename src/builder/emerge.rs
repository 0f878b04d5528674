//! How gbuild talks to the real `emerge`: the environment it runs in (build-side settings only,
//! never written into the machine's configuration) and what its output says (which package is
//! being built, which came from a binary, what failed, how to break a dependency cycle).

use super::BuildEnv;

/// The process environment of every emerge run, apart from what neutralises the host's
/// host-only settings (`super::buildside`).
pub fn environment(env: &BuildEnv) -> Vec<String> {
    let mut v = vec![
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
        "HOME=/root".to_string(),
        "LANG=C.UTF-8".to_string(),
        "TERM=dumb".to_string(),
        "NOCOLOR=true".to_string(),
        // Where gbuild binds PKGDIR and DISTDIR, whatever the host's make.conf says.
        "PKGDIR=/var/cache/binpkgs".to_string(),
        "DISTDIR=/var/cache/distfiles".to_string(),
    ];
    if !env.map.is_full() {
        // Only our own id exists inside: no portage user to switch to.
        v.push("PORTAGE_USERNAME=root".into());
        v.push("PORTAGE_GRPNAME=root".into());
    }
    if let Some(m) = &env.mirror {
        v.push(format!("GENTOO_MIRRORS={m}"));
    }
    v
}

/// The world update of one build pass.
pub fn world_update_args() -> Vec<String> {
    [
        "emerge",
        "--update",
        "--deep",
        "--newuse",
        "--with-bdeps=y",
        "--changed-deps",
        "--buildpkg",
        "--usepkg",
        "--binpkg-respect-use=y",
        "--verbose",
        "--color=n",
        "@world",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// What the world update would do, without doing it (cycle detection, `check`).
pub fn pretend_world_args() -> Vec<String> {
    [
        "emerge",
        "--pretend",
        "--update",
        "--deep",
        "--newuse",
        "--with-bdeps=y",
        "--color=n",
        "@world",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// A USE change emerge proposes to break a dependency cycle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CycleHint {
    pub cpv: String,
    pub flags: Vec<String>,
}

/// The `(Change USE: ...)` hints of emerge's cycle report, e.g.
/// `- media-libs/ftype-2.13 (Change USE: -shaping)`.
pub fn cycle_hints(output: &str) -> Vec<CycleHint> {
    let mut hints: Vec<CycleHint> = Vec::new();
    for line in output.lines() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix("- ") else {
            continue;
        };
        let Some((cpv, change)) = rest.split_once(" (Change USE: ") else {
            continue;
        };
        let flags: Vec<String> = change
            .trim_end_matches(')')
            .split_whitespace()
            .map(str::to_string)
            .collect();
        let cpv = cpv.trim().to_string();
        if !flags.is_empty() && !hints.iter().any(|h| h.cpv == cpv) {
            hints.push(CycleHint { cpv, flags });
        }
    }
    hints
}

/// Follows emerge's output line by line.
#[derive(Debug, Default, Clone)]
pub struct Progress {
    /// Package being merged now, with its position.
    pub current: Option<(String, usize, usize)>,
    pub phase: String,
    /// Packages compiled from source in this run.
    pub built: Vec<String>,
    /// Packages installed from a binary package.
    pub binary: Vec<String>,
    /// The package whose build failed.
    pub failed: Option<String>,
    partial: String,
}

impl Progress {
    /// Feed raw output bytes; returns true when the current package or phase changed.
    pub fn feed(&mut self, bytes: &[u8]) -> bool {
        self.partial.push_str(&String::from_utf8_lossy(bytes));
        let mut changed = false;
        while let Some(i) = self.partial.find('\n') {
            let line: String = self.partial.drain(..=i).collect();
            changed |= self.line(line.trim_end());
        }
        changed
    }

    fn line(&mut self, line: &str) -> bool {
        if let Some(rest) = line.strip_prefix(">>> Emerging binary (") {
            if let Some((pos, cpv)) = parse_pos(rest) {
                self.current = Some((cpv.clone(), pos.0, pos.1));
                self.phase = "binary".into();
                self.binary.push(cpv);
                return true;
            }
        } else if let Some(rest) = line.strip_prefix(">>> Emerging (") {
            if let Some((pos, cpv)) = parse_pos(rest) {
                self.current = Some((cpv.clone(), pos.0, pos.1));
                self.phase = "build".into();
                self.built.push(cpv);
                return true;
            }
        } else if let Some(rest) = line.strip_prefix(">>> Installing (") {
            if parse_pos(rest).is_some() {
                self.phase = "install".into();
                return true;
            }
        } else if let Some(rest) = line.strip_prefix(">>> Unpacking source") {
            let _ = rest;
            self.phase = "unpack".into();
            return true;
        } else if line.starts_with(">>> Compiling source") {
            self.phase = "compile".into();
            return true;
        } else if let Some(rest) = line
            .strip_prefix(">>> Failed to emerge ")
            .or_else(|| line.trim_start().strip_prefix("* ERROR: "))
            .or_else(|| line.strip_prefix("!!! ERROR: "))
        {
            let cpv = rest
                .split([',', ' '])
                .next()
                .unwrap_or(rest)
                .trim_end_matches(',');
            if cpv.contains('/') && self.failed.is_none() {
                self.failed = Some(strip_repo(cpv));
                return true;
            }
        }
        false
    }
}

/// `2 of 8) cat/pkg-1.0::gentoo ...` -> ((2, 8), "cat/pkg-1.0")
fn parse_pos(rest: &str) -> Option<((usize, usize), String)> {
    let (pos, tail) = rest.split_once(") ")?;
    let (a, b) = pos.split_once(" of ")?;
    let cpv = tail.split_whitespace().next()?;
    Some((
        (a.trim().parse().ok()?, b.trim().parse().ok()?),
        strip_repo(cpv),
    ))
}

fn strip_repo(cpv: &str) -> String {
    cpv.split("::").next().unwrap_or(cpv).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_from_real_output() {
        let out = "\n * Error: circular dependencies:\n\nIt might be possible to break this cycle\nby applying the following change:\n- media-libs/ftype-2.13 (Change USE: -shaping)\n\nNote that this change can be reverted, once the package has been installed.\n";
        assert_eq!(
            cycle_hints(out),
            vec![CycleHint {
                cpv: "media-libs/ftype-2.13".into(),
                flags: vec!["-shaping".into()]
            }]
        );
    }

    #[test]
    fn progress_lines() {
        let mut p = Progress::default();
        p.feed(b">>> Emerging (1 of 3) dev-libs/libgreet-1.0::gentoo\n>>> Emerging binary (2 of 3) app-misc/hello-1.0::gentoo\n");
        p.feed(b">>> Emerging (3 of 3) app-misc/failer-1.0::gentoo\n * ERROR: app-misc/failer-1.0::gentoo failed (compile phase):\n");
        p.feed(b">>> Failed to emerge app-misc/failer-1.0, Log file:\n");
        assert_eq!(
            p.built,
            vec!["dev-libs/libgreet-1.0", "app-misc/failer-1.0"]
        );
        assert_eq!(p.binary, vec!["app-misc/hello-1.0"]);
        assert_eq!(p.failed.as_deref(), Some("app-misc/failer-1.0"));
        assert_eq!(p.current.as_ref().unwrap().1, 3);
    }
}
