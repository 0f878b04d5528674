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
/// The world update of a pass with the requested atoms (`host::requests::active`): `--oneshot`
/// and the atoms appended, so they are built and kept without entering the builder's world file
/// (which must stay the host's).
pub fn world_update_with(requested: &[String]) -> Vec<String> {
    let mut args = world_update_args();
    if !requested.is_empty() {
        args.insert(1, "--oneshot".into());
        args.extend(requested.iter().cloned());
    }
    args
}

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
        "--binpkg-changed-deps=y",
        "--verbose",
        "--color=n",
        "@world",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// The world update's plan, without doing it: what bootstrapping resolves (and breaks cycles
/// in) before it builds, with the same binpkg rules as the update itself, so the plan sees the
/// binpkgs that will be reused.
pub fn pretend_update_args() -> Vec<String> {
    let mut v = world_update_args();
    v.insert(1, "--pretend".into());
    v
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
/// `- media-libs/freetype-2.13.2 (Change USE: -harfbuzz)`.
pub fn cycle_hints(output: &str) -> Vec<CycleHint> {
    let mut hints: Vec<CycleHint> = Vec::new();
    for line in output.lines() {
        if let Some(h) = cycle_hint(line) {
            if !hints.iter().any(|x| x.cpv == h.cpv) {
                hints.push(h);
            }
        }
    }
    hints
}

/// One line of emerge's cycle report as a hint, if it is one.
fn cycle_hint(line: &str) -> Option<CycleHint> {
    let rest = line.trim().strip_prefix("- ")?;
    let (cpv, change) = rest.split_once(" (Change USE: ")?;
    let flags: Vec<String> = change
        .trim_end_matches(')')
        .split_whitespace()
        .map(str::to_string)
        .collect();
    (!flags.is_empty()).then(|| CycleHint {
        cpv: cpv.trim().to_string(),
        flags,
    })
}

/// A line longer than this is cut before parsing (emerge prints none; a build may).
const MAX_LINE: usize = 64 * 1024;
/// At most this many planned `[ebuild ...]` lines are kept from one run.
const MAX_PLANNED: usize = 10_000;

/// What one container run's output said, beyond the packages (reset by `start_run`).
#[derive(Debug, Default, Clone)]
pub struct RunFacts {
    /// `(Change USE: ...)` hints of a cycle report.
    pub hints: Vec<CycleHint>,
    /// emerge reported circular dependencies.
    pub circular: bool,
    /// emerge reported a slot conflict.
    pub slot_conflict: bool,
    /// `[ebuild ...]` and `[binary ...]` lines of a pretend run (at most `MAX_PLANNED`).
    pub planned: Vec<String>,
}

/// Follows emerge's output line by line as it streams by; keeps what it found, never the output.
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
    /// Cleanup steps announced with `gbuild: step NAME` lines, with what each did.
    pub steps: Vec<super::state::CleanupStep>,
    /// What the current container run said.
    pub facts: RunFacts,
    partial: Vec<u8>,
}

impl Progress {
    /// A new container run begins: forget its predecessor's facts and any partial line.
    pub fn start_run(&mut self) {
        self.facts = RunFacts::default();
        self.partial.clear();
    }

    /// Feed raw output bytes; returns true when the current package or phase changed.
    pub fn feed(&mut self, bytes: &[u8]) -> bool {
        let mut changed = false;
        let mut rest = bytes;
        while let Some(i) = rest.iter().position(|b| *b == b'\n') {
            let (head, tail) = rest.split_at(i);
            rest = &tail[1..];
            changed |= if self.partial.is_empty() {
                self.line_bytes(head)
            } else {
                self.push_partial(head);
                let line = std::mem::take(&mut self.partial);
                self.line_bytes(&line)
            };
        }
        self.push_partial(rest);
        changed
    }

    fn push_partial(&mut self, b: &[u8]) {
        let room = MAX_LINE.saturating_sub(self.partial.len());
        self.partial.extend_from_slice(&b[..b.len().min(room)]);
    }

    fn line_bytes(&mut self, b: &[u8]) -> bool {
        let b = &b[..b.len().min(MAX_LINE)];
        let line = String::from_utf8_lossy(b);
        self.line(line.trim_end())
    }

    fn step_item(&mut self, item: String) {
        if let Some(st) = self.steps.last_mut() {
            st.items.push(item);
        }
    }

    fn line(&mut self, line: &str) -> bool {
        self.facts_of(line);
        if let Some(name) = line.strip_prefix("gbuild: step ") {
            self.steps.push(super::state::CleanupStep {
                name: name.trim().to_string(),
                items: Vec::new(),
            });
            self.phase = name.trim().to_string();
            return true;
        } else if let Some(rest) = line.strip_prefix("gbuild: pruned ") {
            self.step_item(rest.trim().to_string());
        } else if let Some(rest) = line.strip_prefix(">>> Unmerging (") {
            if let Some((_, cpv)) = parse_pos(rest) {
                self.step_item(cpv.trim_end_matches('.').to_string());
            }
        } else if let Some(rest) = line.strip_prefix(">>> Emerging binary (") {
            if let Some((pos, cpv)) = parse_pos(rest) {
                self.current = Some((cpv.clone(), pos.0, pos.1));
                self.phase = "binary".into();
                self.step_item(cpv.clone());
                self.binary.push(cpv);
                return true;
            }
        } else if let Some(rest) = line.strip_prefix(">>> Emerging (") {
            if let Some((pos, cpv)) = parse_pos(rest) {
                self.current = Some((cpv.clone(), pos.0, pos.1));
                self.phase = "build".into();
                self.step_item(cpv.clone());
                self.built.push(cpv);
                return true;
            }
        } else if let Some(rest) = line.strip_prefix(">>> Installing (") {
            if parse_pos(rest).is_some() {
                self.phase = "install".into();
                return true;
            }
        } else if line.starts_with(">>> Unpacking source") {
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

    /// Cycle hints, conflicts and planned merges of a pretend run.
    fn facts_of(&mut self, line: &str) {
        let f = &mut self.facts;
        if let Some(h) = cycle_hint(line) {
            if !f.hints.iter().any(|x| x.cpv == h.cpv) {
                f.hints.push(h);
            }
        }
        if line.contains("circular dependencies") {
            f.circular = true;
        }
        if line.contains("slot conflict") {
            f.slot_conflict = true;
        }
        if (line.starts_with("[ebuild") || line.starts_with("[binary"))
            && f.planned.len() < MAX_PLANNED
        {
            f.planned.push(line.trim().to_string());
        }
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
    #[test]
    fn requests_join_the_world_update_once() {
        assert_eq!(world_update_with(&[]), world_update_args());
        let req = vec![
            ">=app-editors/vim-9.0:0".to_string(),
            "dev-libs/openssl".into(),
        ];
        let args = world_update_with(&req);
        assert_eq!(args[..2], ["emerge".to_string(), "--oneshot".into()]);
        assert!(args.contains(&"@world".to_string()));
        assert_eq!(args[args.len() - 2..], req[..]);
    }

    use super::*;

    #[test]
    fn hints_from_real_output() {
        let out = "\n * Error: circular dependencies:\n\nIt might be possible to break this cycle\nby applying the following change:\n- media-libs/freetype-2.13.2 (Change USE: -harfbuzz)\n\nNote that this change can be reverted, once the package has been installed.\n";
        assert_eq!(
            cycle_hints(out),
            vec![CycleHint {
                cpv: "media-libs/freetype-2.13.2".into(),
                flags: vec!["-harfbuzz".into()]
            }]
        );
    }

    #[test]
    fn progress_lines() {
        let mut p = Progress::default();
        p.feed(b">>> Emerging (1 of 3) dev-libs/libxml2-2.12.7::gentoo\n>>> Emerging binary (2 of 3) app-misc/jq-1.7.1::gentoo\n");
        p.feed(b">>> Emerging (3 of 3) app-misc/screen-4.9.1::gentoo\n * ERROR: app-misc/screen-4.9.1::gentoo failed (compile phase):\n");
        p.feed(b">>> Failed to emerge app-misc/screen-4.9.1, Log file:\n");
        assert_eq!(
            p.built,
            vec!["dev-libs/libxml2-2.12.7", "app-misc/screen-4.9.1"]
        );
        assert_eq!(p.binary, vec!["app-misc/jq-1.7.1"]);
        assert_eq!(p.failed.as_deref(), Some("app-misc/screen-4.9.1"));
        assert_eq!(p.current.as_ref().unwrap().1, 3);
    }

    #[test]
    fn lines_split_across_reads_and_steps() {
        let mut p = Progress::default();
        for chunk in [
            &b"- media-libs/freetype-2.13.2 (Change"[..],
            b" USE: -harfbuzz)\n",
            b"gbuild: st",
        ] {
            p.feed(chunk);
        }
        p.feed(b"ep depclean\n>>> Unmerging (1 of 1) app-misc/screen-4.9.1...\n");
        p.feed(b"gbuild: step prune\ngbuild: pruned app-misc/x/x-1-1.gpkg.tar (superseded)\n");
        assert_eq!(p.facts.hints[0].flags, vec!["-harfbuzz"]);
        assert_eq!(p.steps.len(), 2);
        assert_eq!(p.steps[0].name, "depclean");
        assert_eq!(p.steps[0].items, vec!["app-misc/screen-4.9.1"]);
        assert_eq!(p.steps[1].items.len(), 1);
        p.start_run();
        assert!(p.facts.hints.is_empty());
    }

    #[test]
    fn a_huge_line_is_cut_not_kept() {
        let mut p = Progress::default();
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..8 {
            p.feed(&chunk);
        }
        assert!(p.partial.len() <= MAX_LINE);
        p.feed(b"\n>>> Emerging (1 of 1) a/b-1::gentoo\n");
        assert_eq!(p.built, vec!["a/b-1"]);
    }
}
