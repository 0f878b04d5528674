//! The publish gate: the last step of every pass that would publish. Before hosts see a new
//! publication, the host's own upgrade runs against it in a throwaway root: the host's
//! /etc/portage, world and installed-package database (from its bundle, format 2), the builder's
//! ebuild trees at the host's repository locations, and the staged publication as the only
//! binary packages. The pass publishes only when that upgrade takes every package it would
//! merge from this builder's binpkgs and nothing conflicts, blocks, is masked or is left out;
//! otherwise the previous publication stays and the state says `held`, naming each package and
//! emerge's own reason (docs/gate.md).
//!
//! The root is the container's `/` (ROOT and PORTAGE_CONFIGROOT stay `/`, as on the host: with
//! another ROOT, Portage resolves build-time dependencies against `/`): the builder's image and
//! its upper dir as read-only layers, and a fresh upper dir in which `/etc/portage`,
//! `/var/lib/portage`, `/var/db/pkg` and `/var/cache/edb` are opaque directories holding the
//! host's. The emerge is `--pretend --usepkg -uDN @world` with the resolution options of the
//! host's EMERGE_DEFAULT_OPTS: binaries where a usable one exists, and an `[ebuild ...]` line
//! for every package the host would have to compile. (A binary-only `--usepkgonly` run keeps an
//! outdated installed package or skips a world atom without a word when no binary fits, and
//! exits 0; the plan with source fallback names those packages instead.) Every world atom must
//! end up installed or merged as well.

use std::collections::BTreeMap;
use std::path::Path;

use super::publish::Staged;
use super::session::{PassResult, Session};
use super::state::{now, LastPass, LoopState, PassOutcome, State};
pub use super::state::{Gate, GateProblem, GateResult};
use super::{BuildEnv, Machine, MachineLock, Result};
use crate::beneath::Beneath;
use crate::fsutil::IoContext;
use crate::host::installed::Installed;
use crate::host::Bundle;

/// Where the staged publication is PKGDIR inside the gate's root.
const GATE_PKGDIR: &str = "var/cache/gbuild-gate/binpkgs";
/// Largest part of the gate's output that is parsed (a pretend run of a large world prints a few
/// hundred KB).
const MAX_OUTPUT: u64 = 32 << 20;
/// At most this many problems are kept (the rest are counted).
const MAX_PROBLEMS: usize = 500;

impl Gate {
    fn skipped(reason: String) -> Gate {
        Gate {
            result: GateResult::Skipped,
            checked: now(),
            reason: Some(reason),
            ..Gate::default()
        }
    }

    /// One line for people: what the gate decided and what it means for hosts.
    pub fn headline(&self) -> String {
        match self.result {
            GateResult::Passed => format!(
                "passed: the host's upgrade takes all {} package(s) it would merge from binpkgs",
                self.merges.len()
            ),
            GateResult::Held => {
                "held: the host's upgrade would not take this pass; the previous publication stays"
                    .to_string()
            }
            GateResult::PublishedAnyway => {
                "would hold; published anyway (publish_held in gbuild.toml)".to_string()
            }
            GateResult::Skipped => {
                format!("skipped: {}", self.reason.as_deref().unwrap_or("not run"))
            }
            GateResult::Unknown => "unknown".to_string(),
        }
    }
}

/// Options of the host's EMERGE_DEFAULT_OPTS that do not change what its upgrade resolves to
/// (interaction, output, fetching, building, parallelism), left out of the gate's emerge.
/// Values are given as `--opt=value` or, for those marked, as the next word.
const NOT_RESOLUTION: &[(&str, bool)] = &[
    ("--ask", false),
    ("--ask-enter-invalid", false),
    ("--alert", false),
    ("--autounmask-continue", false),
    ("--autounmask-write", false),
    ("--beep", false),
    ("--buildpkg", false),
    ("--buildpkg-exclude", true),
    ("--buildpkgonly", false),
    ("--color", false),
    ("--columns", false),
    ("--fetchonly", false),
    ("--fetch-all-uri", false),
    ("--getbinpkg", false),
    ("--getbinpkgonly", false),
    ("--keep-going", false),
    ("--nospinner", false),
    ("--pretend", false),
    ("--quiet", false),
    ("--quiet-build", false),
    ("--quiet-fail", false),
    ("--quiet-repo-display", false),
    ("--quiet-unmerge-warn", false),
    ("--tree", false),
    ("--unordered-display", false),
    ("--usepkg", false),
    ("--usepkgonly", false),
    ("--verbose", false),
    ("--verbose-conflicts", false),
    ("--verbose-slot-rebuilds", false),
    ("--jobs", false),
    ("--load-average", false),
];

/// Short options that stand for one of those (`-a`, `-v`, `-q`, `-g`, ...).
const NOT_RESOLUTION_SHORT: &[char] = &[
    'a', 'b', 'B', 'f', 'F', 'g', 'G', 'k', 'K', 'p', 'q', 't', 'v',
];

/// The resolution options of the host's EMERGE_DEFAULT_OPTS (`--with-bdeps=y`, `--changed-deps`,
/// `--exclude X`, `--binpkg-respect-use=n`, ...): everything but `NOT_RESOLUTION`. Short option
/// clusters are split (`-avuDN` -> `-u -D -N`); `--jobs` and `--load-average` take the next word
/// when it is a number.
pub fn host_options(opts: &str) -> Vec<String> {
    let words: Vec<&str> = opts.split_whitespace().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let w = words[i];
        i += 1;
        if let Some(long) = w.strip_prefix("--") {
            let name = format!("--{}", long.split('=').next().unwrap_or(""));
            match NOT_RESOLUTION.iter().find(|(n, _)| *n == name) {
                Some((n, takes)) => {
                    let numeric = matches!(*n, "--jobs" | "--load-average");
                    let next = words.get(i).copied().unwrap_or("");
                    if !w.contains('=')
                        && ((*takes && !next.starts_with('-'))
                            || (numeric && !next.is_empty() && next.parse::<f64>().is_ok()))
                    {
                        i += 1;
                    }
                }
                None => out.push(w.to_string()),
            }
        } else if let Some(short) = w.strip_prefix('-').filter(|s| !s.is_empty()) {
            let mut chars = short.chars().peekable();
            while let Some(c) = chars.next() {
                if c == 'j' || c == 'l' {
                    // -j[N] / -l[N]: the rest of the word, or the next word, is the number.
                    let rest: String = chars.by_ref().collect();
                    if rest.is_empty() && words.get(i).is_some_and(|n| n.parse::<f64>().is_ok()) {
                        i += 1;
                    }
                    break;
                }
                if !NOT_RESOLUTION_SHORT.contains(&c) {
                    out.push(format!("-{c}"));
                }
            }
        } else {
            // A value of an option kept above (`--exclude X`).
            out.push(w.to_string());
        }
    }
    out
}

/// The gate's emerge command line for a host whose EMERGE_DEFAULT_OPTS is `opts`.
pub fn command(opts: &str) -> Vec<String> {
    let mut argv: Vec<String> = [
        "emerge",
        "--pretend",
        "--verbose",
        "--color=n",
        "--nospinner",
        "--ignore-default-opts",
        "--usepkg",
        "--update",
        "--deep",
        "--newuse",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    argv.extend(host_options(opts));
    argv.push("@world".to_string());
    argv
}

/// Publish what the builder's PKGDIR holds now, through the publish gate: stage the next
/// generation, run the host's own upgrade against it (`run`), then seal and serve it, or, when
/// the gate holds it (and gbuild.toml's `publish_held` is off), drop it, keep what hosts see and
/// mark `state` (and its last pass) `held`. When the newest generation already is this
/// publication there is nothing to gate or publish. Every publication goes this way. `log` is
/// the log the gate appends to; `state` is updated (its last pass gets the new generation) but
/// not saved.
pub fn publish(
    env: &BuildEnv,
    m: &MachineLock,
    image: &str,
    snapshot: &str,
    log: &Path,
    state: &mut State,
) -> Result<PassResult> {
    use super::publish::Staging;
    let pass = state.last_pass.clone();
    let staged = match super::publish::stage(env, m, snapshot)? {
        Staging::New(s) => *s,
        Staging::Unchanged(_, counts, held) => {
            let p = super::publish::unchanged(env, m, counts, held)?;
            state.counts = p.counts;
            state.abi_warnings = p.held;
            return Ok(PassResult::Success);
        }
    };
    let mut gate = match run(env, m, image, snapshot, &staged, log) {
        Ok(g) => g,
        Err(e) => {
            super::publish::discard(staged);
            return Err(e);
        }
    };
    let held = gate.result == GateResult::Held;
    let mut result = PassResult::Success;
    if held && env.config.publish_held {
        gate.result = GateResult::PublishedAnyway;
    }
    if held && !env.config.publish_held {
        // A held publication makes no generation: what hosts see stays.
        super::publish::discard(staged);
        let lp = state.last_pass.get_or_insert_with(LastPass::default);
        lp.result = PassOutcome::Held;
        state.state = LoopState::Held;
        result = PassResult::Held;
    } else {
        let p = super::publish::commit(env, m, staged, pass.as_ref(), Some(gate.result))?;
        state.counts = p.counts;
        state.abi_warnings = p.held;
        if let Some(lp) = state.last_pass.as_mut() {
            lp.generation = p.generation;
        }
    }
    report_gate(m, &gate);
    state.gate = Some(gate);
    Ok(result)
}

/// The gate's outcome as notices: one line, then one per problem (warnings unless it passed).
fn report_gate(m: &Machine, g: &Gate) {
    let what = g.headline();
    if g.result == GateResult::Passed {
        tracing::info!("publish gate of {}: {what}", m.name);
        return;
    }
    tracing::warn!("publish gate of {}: {what}", m.name);
    for p in &g.problems {
        tracing::warn!(
            "gate: {}: {}",
            crate::term::printable(&p.package),
            crate::term::printable(&p.reason)
        );
    }
}

/// Run the gate for `staged` on machine `m`, appending to the pass's log `log` (the caller
/// decides what a held result means).
pub fn run(
    env: &BuildEnv,
    m: &MachineLock,
    image: &str,
    snapshot: &str,
    staged: &Staged,
    log: &Path,
) -> Result<Gate> {
    let Some(host) = m.host_bundle() else {
        return Ok(Gate::skipped(
            "the machine's configuration is not a host bundle".into(),
        ));
    };
    let Some(installed) = host.installed() else {
        return Ok(Gate::skipped(
            crate::host::machine::gate_notice(&host).unwrap_or_default(),
        ));
    };
    // Leftovers of a gate that crashed (the machine's lock is held: they are stale).
    let helper = env.helper();
    helper.remove_trees(&m.files().stale_temps("gate")?)?;
    let dir = m.files().temp("gate");
    let upper = dir.join("upper");
    host_root(m, &host, installed, staged, &upper)?;
    let mut s = Session::with_log(
        env,
        m,
        image,
        &upper,
        &dir.join("work"),
        snapshot,
        log.to_path_buf(),
    )?;
    s.build_layer = false;
    s.lowers = vec![m.upper()];
    s.extra_env = vec![format!("PKGDIR=/{GATE_PKGDIR}")];
    let opts = host
        .manifest
        .variables
        .get("EMERGE_DEFAULT_OPTS")
        .or_else(|| host.manifest.make_conf.get("EMERGE_DEFAULT_OPTS"))
        .cloned()
        .unwrap_or_default();
    let argv = command(&opts);
    let log_path = s.log_path();
    let start = std::fs::metadata(&log_path).map(|md| md.len()).unwrap_or(0);
    let r = s.run(argv.clone());
    let removed = helper.remove_trees(std::slice::from_ref(&dir));
    let code = r?;
    removed?;
    let output = read_from(&log_path, start)?;
    let world = host
        .file("var/lib/portage/world")
        .map(|d| String::from_utf8_lossy(d).into_owned())
        .unwrap_or_default();
    let (merges, problems) = judge(&output, code, &world, installed, staged);
    Ok(Gate {
        result: if problems.is_empty() {
            GateResult::Passed
        } else {
            GateResult::Held
        },
        checked: now(),
        reason: None,
        command: argv.join(" "),
        merges,
        problems,
        log: log_path
            .strip_prefix(m.dir())
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
    })
}

/// What the log got from `start` on (at most `MAX_OUTPUT` bytes), as text.
fn read_from(path: &Path, start: u64) -> Result<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).at("open", path)?;
    f.seek(SeekFrom::Start(start)).at("read", path)?;
    let mut buf = Vec::new();
    f.take(MAX_OUTPUT).read_to_end(&mut buf).at("read", path)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// Lay out the gate's upper dir: the host's configuration, world and installed packages as
/// opaque directories, and the staged publication as PKGDIR (its index and exactly the binpkgs
/// it names: a held-back binpkg is not there).
fn host_root(
    m: &MachineLock,
    host: &Bundle,
    installed: &Installed,
    staged: &Staged,
    upper: &Path,
) -> Result<()> {
    std::fs::create_dir_all(upper).at("create directory", upper)?;
    let opaque = |rel: &str| -> Result<()> {
        let p = upper.join(rel);
        std::fs::create_dir_all(&p).at("create directory", &p)?;
        xattr::set(&p, "user.overlay.opaque", b"y").at("mark opaque", &p)?;
        Ok(())
    };
    let config = m.config_dir();
    opaque("etc/portage")?;
    super::bootstrap::copy_tree(&config.join("etc/portage"), &upper.join("etc/portage"))?;
    opaque("var/lib/portage")?;
    for f in ["world", "world_sets"] {
        if let Some(d) = host.file(&format!("var/lib/portage/{f}")) {
            let p = upper.join("var/lib/portage").join(f);
            std::fs::write(&p, d).at("write", &p)?;
        }
    }
    opaque("var/db/pkg")?;
    installed.write_vdb(upper)?;
    opaque("var/cache/edb")?;
    opaque(GATE_PKGDIR)?;
    // Portage reads only regular files of PKGDIR (a symlink is skipped), so each binpkg is a
    // hard link (same file, same size and mtime as its index entry), else a copy.
    let pkgdir = upper.join(GATE_PKGDIR);
    let b = Beneath::open(&pkgdir)?;
    let mut copied = 0usize;
    for rel in &staged.paths {
        let Some(src) = crate::sign::gpkg::in_pkgdir(&m.binpkgs(), rel) else {
            continue;
        };
        if let Some((parent, _)) = rel.rsplit_once('/') {
            b.create_dir_all(parent, 0o755)?;
        }
        let dst = pkgdir.join(rel);
        if std::fs::hard_link(&src, &dst).is_err() {
            std::fs::copy(&src, &dst).at("copy", &src)?;
            let md = std::fs::metadata(&src).at("stat", &src)?;
            filetime::set_file_mtime(&dst, filetime::FileTime::from_last_modification_time(&md))
                .at("set mtime", &dst)?;
            copied += 1;
        }
    }
    if copied > 0 {
        tracing::warn!(
            "publish gate: {copied} binpkg(s) copied, not linked (another owner or filesystem)"
        );
    }
    let p = upper.join(GATE_PKGDIR).join(crate::store::PACKAGES);
    std::fs::write(&p, &staged.index).at("write", &p)?;
    Ok(())
}

/// `[binary   U  ] cat/pkg-1::repo [old]` -> (`binary`, `cat/pkg-1`).
fn plan_line(line: &str) -> Option<(&str, &str)> {
    let l = line.trim_start();
    let rest = l.strip_prefix('[')?;
    let (kind, rest) = rest.split_once(' ')?;
    if !matches!(
        kind,
        "ebuild" | "binary" | "blocks" | "uninstall" | "nomerge"
    ) {
        return None;
    }
    let (_, rest) = rest.split_once(']')?;
    let word = rest.split_whitespace().next()?;
    let cpv = word.split("::").next().unwrap_or(word);
    let cpv = cpv.split(':').next().unwrap_or(cpv);
    Some((kind, without_build_id(cpv)))
}

/// `cat/pkg-1.0-3` (a binpkg-multi-instance build id after the version, as emerge shows binary
/// packages) -> `cat/pkg-1.0`; a CPV without one is returned as it is (`cat/pkg-1` has none).
fn without_build_id(cpv: &str) -> &str {
    if let Some((head, id)) = cpv.rsplit_once('-') {
        let pf = head.rsplit('/').next().unwrap_or(head);
        if !id.is_empty()
            && id.bytes().all(|b| b.is_ascii_digit())
            && crate::host::installed::pn_of(pf).len() < pf.len()
        {
            return head;
        }
    }
    cpv
}

/// `cat/pkg-1.0-r1` or an atom `>=cat/pkg-1:0` -> `cat/pkg`.
fn cp_of(s: &str) -> String {
    let s = s.trim_start_matches(['>', '<', '=', '~', '!']);
    let s = s.split("::").next().unwrap_or(s);
    let s = s.split(':').next().unwrap_or(s);
    let s = s.split('[').next().unwrap_or(s);
    match s.split_once('/') {
        Some((cat, pf)) => format!("{cat}/{}", crate::host::installed::pn_of(pf)),
        None => s.to_string(),
    }
}

/// The merges and the problems in the gate's output (see the module documentation).
fn judge(
    out: &str,
    code: i32,
    world: &str,
    installed: &Installed,
    staged: &Staged,
) -> (Vec<String>, Vec<GateProblem>) {
    let lines: Vec<&str> = out.lines().collect();
    let mut merges = Vec::new();
    let mut problems: Vec<GateProblem> = Vec::new();
    fn push(problems: &mut Vec<GateProblem>, package: &str, reason: String) {
        if problems.len() < MAX_PROBLEMS
            && !problems
                .iter()
                .any(|p| p.package == package && p.reason == reason)
        {
            problems.push(GateProblem {
                package: package.to_string(),
                reason,
            });
        }
    }
    macro_rules! add {
        ($p:expr, $r:expr $(,)?) => {
            push(&mut problems, $p, $r)
        };
    }
    // Binaries emerge ignored, by CPV: why.
    let mut ignored: BTreeMap<String, String> = BTreeMap::new();
    let mut section = "";
    for l in &lines {
        let t = l.trim();
        if t.contains("binary packages have been ignored due to non matching USE") {
            section = "use";
            continue;
        }
        if t.contains("binary packages have been ignored due to changed dependencies") {
            section = "deps";
            continue;
        }
        if t.starts_with("NOTE:") || t.starts_with("!!!") {
            section = "";
        }
        match section {
            "use" => {
                if let Some(rest) = t.strip_prefix('=') {
                    let (cpv, flags) = rest.split_once(' ').unwrap_or((rest, ""));
                    ignored.insert(
                        cpv.to_string(),
                        format!("its binpkg was built with USE \"{}\", which the host's configuration does not give it", flags.trim()),
                    );
                }
            }
            "deps" => {
                if let Some(cpv) = t.split("::").next().filter(|c| c.contains('/')) {
                    ignored.insert(
                        cpv.to_string(),
                        "its binpkg was ignored because its dependencies changed in the tree"
                            .to_string(),
                    );
                }
            }
            _ => {}
        }
    }
    let published: std::collections::BTreeSet<String> = staged
        .index
        .lines()
        .filter_map(|l| l.strip_prefix("CPV: "))
        .map(str::to_string)
        .collect();
    let mut merged_cps = std::collections::BTreeSet::new();
    for l in &lines {
        let Some((kind, cpv)) = plan_line(l) else {
            continue;
        };
        match kind {
            "binary" => {
                merged_cps.insert(cp_of(cpv));
                merges.push(l.trim().to_string());
                if !published.contains(cpv) {
                    add!(
                        cpv,
                        "the host would take a binpkg this builder does not publish".into()
                    );
                }
            }
            "ebuild" => {
                merged_cps.insert(cp_of(cpv));
                let why = ignored
                    .get(cpv)
                    .cloned()
                    .unwrap_or_else(|| "no binpkg of this builder fits".to_string());
                add!(
                    cpv,
                    format!("the host would compile it: {why} (emerge: {})", l.trim()),
                );
            }
            "blocks" if l.contains("[blocks B") => {
                add!(cpv, format!("unresolved blocker (emerge: {})", l.trim()));
            }
            _ => {}
        }
    }
    // emerge's own reports of what it could not do.
    let mut i = 0;
    while i < lines.len() {
        let t = lines[i].trim();
        if t.starts_with("!!! Multiple package instances within a single package slot") {
            // `cat/pkg:slot` then `  (cpv:slot/sub::repo, ...) pulled in by` lines.
            let mut j = i + 1;
            let mut current: Option<String> = None;
            let mut pulled: Vec<String> = Vec::new();
            let flush = |problems: &mut Vec<GateProblem>,
                         current: &mut Option<String>,
                         pulled: &mut Vec<String>| {
                if let Some(c) = current.take() {
                    push(
                        problems,
                        &c,
                        format!("slot conflict between {}", pulled.join(" and ")),
                    );
                }
                pulled.clear();
            };
            while j < lines.len() {
                let l = lines[j];
                let lt = l.trim();
                if lt.starts_with("It may be possible") || lt.starts_with("!!!") && j > i + 1 {
                    break;
                }
                if !l.starts_with(' ') && lt.contains('/') && lt.contains(':') && !lt.contains(' ')
                {
                    flush(&mut problems, &mut current, &mut pulled);
                    current = Some(lt.to_string());
                } else if let Some(r) = lt.strip_prefix('(') {
                    if let Some(pkg) = r.split(',').next() {
                        pulled.push(pkg.to_string());
                    }
                }
                j += 1;
            }
            flush(&mut problems, &mut current, &mut pulled);
            i = j;
            continue;
        }
        if let Some(rest) = t.strip_prefix("!!! All ebuilds that could satisfy \"") {
            let atom = rest.split('"').next().unwrap_or(rest);
            let mut why = Vec::new();
            for l in lines.iter().skip(i + 1).take(20) {
                let lt = l.trim();
                if let Some(m) = lt.strip_prefix("- ").filter(|m| m.contains("masked by")) {
                    why.push(m.to_string());
                } else if !why.is_empty() && lt.is_empty() {
                    break;
                }
            }
            add!(
                atom,
                format!(
                    "masked ({})",
                    if why.is_empty() {
                        "emerge names no reason".into()
                    } else {
                        why.join("; ")
                    }
                ),
            );
        }
        for prefix in [
            "emerge: there are no ebuilds to satisfy \"",
            "emerge: there are no binary packages to satisfy \"",
            "emerge: there are no ebuilds built with USE flags to satisfy \"",
        ] {
            if let Some(rest) = t.strip_prefix(prefix) {
                let atom = rest.split('"').next().unwrap_or(rest);
                let by = lines
                    .iter()
                    .skip(i + 1)
                    .take(3)
                    .map(|l| l.trim())
                    .find(|l| l.starts_with("(dependency required by"))
                    .map(|l| format!(" {l}"))
                    .unwrap_or_default();
                add!(atom, format!("nothing satisfies it{by}"));
            }
        }
        if t.ends_with("masked or don't exist:") {
            if let Some(atoms) = lines.get(i + 1) {
                for a in atoms.split_whitespace() {
                    add!(
                        a,
                        "world atom masked or not in any repository: the host would skip it".into()
                    );
                }
            }
        }
        i += 1;
    }
    // Every world atom installed or merged.
    let installed_cps: std::collections::BTreeSet<String> = installed
        .packages
        .iter()
        .map(|p| format!("{}/{}", p.category, crate::host::installed::pn_of(&p.pf)))
        .collect();
    for atom in world
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let cp = cp_of(atom);
        if !installed_cps.contains(&cp) && !merged_cps.contains(&cp) {
            add!(
                atom,
                "world atom that the upgrade would leave uninstalled".into()
            );
        }
    }
    if code != 0 && problems.is_empty() {
        let last = lines
            .iter()
            .rev()
            .map(|l| l.trim())
            .find(|l| l.starts_with("!!!") || l.starts_with("emerge:"))
            .unwrap_or("no message");
        add!("emerge", format!("the upgrade fails (exit {code}): {last}"),);
    }
    (merges, problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_options_keep_only_resolution() {
        assert_eq!(
            host_options("--ask --verbose --getbinpkg --autounmask-write --jobs 2 --load-average 4 --keep-going"),
            Vec::<String>::new()
        );
        assert_eq!(
            host_options("-avuDN --with-bdeps=y --jobs=4 -j3 --exclude sys-devel/gcc --changed-deps -l 2.5 --quiet-build=y"),
            ["-u", "-D", "-N", "--with-bdeps=y", "--exclude", "sys-devel/gcc", "--changed-deps"]
        );
    }

    fn staged(cpvs: &[&str]) -> Staged {
        Staged {
            dir: "/nonexistent".into(),
            index: cpvs
                .iter()
                .map(|c| format!("CPV: {c}\nPATH: {c}-1.gpkg.tar\n\n"))
                .collect(),
            paths: Vec::new(),
            counts: Default::default(),
            held: Vec::new(),
            info: Default::default(),
        }
    }

    fn installed(cpvs: &[&str]) -> Installed {
        Installed {
            format: 1,
            packages: cpvs
                .iter()
                .map(|c| {
                    let (cat, pf) = c.split_once('/').unwrap();
                    crate::host::installed::Package {
                        category: cat.into(),
                        pf: pf.into(),
                        files: Default::default(),
                    }
                })
                .collect(),
        }
    }

    #[test]
    fn build_ids() {
        assert_eq!(
            without_build_id("dev-lang/perl-5.40.0-1"),
            "dev-lang/perl-5.40.0"
        );
        assert_eq!(
            without_build_id("app-misc/screen-4.9.1-r2-13"),
            "app-misc/screen-4.9.1-r2"
        );
        assert_eq!(without_build_id("app-misc/foo-1"), "app-misc/foo-1");
        assert_eq!(
            without_build_id("app-misc/foo-1.0-r1"),
            "app-misc/foo-1.0-r1"
        );
    }

    #[test]
    fn binaries_pass_and_compiles_hold() {
        let out = "\
[binary   U  ] dev-lang/perl-5.40.0-1:0/5.40::gentoo [5.38.2:0/5.38::gentoo] USE=\"\" 0 KiB
[binary  rR  ] dev-perl/XML-Parser-2.470.0-2::gentoo  0 KiB
";
        let st = staged(&["dev-lang/perl-5.40.0", "dev-perl/XML-Parser-2.470.0"]);
        let inst = installed(&["dev-lang/perl-5.38.2", "dev-perl/XML-Parser-2.470.0"]);
        let (merges, problems) = judge(out, 0, "dev-perl/XML-Parser\n", &inst, &st);
        assert_eq!(merges.len(), 2);
        assert!(problems.is_empty(), "{problems:?}");

        let out = "\
[ebuild   R   ] media-video/mpv-0.38.0::gentoo  USE=\"-vaapi*\" 0 KiB

!!! The following binary packages have been ignored due to non matching USE:

    =media-video/mpv-0.38.0 vaapi

NOTE: The --binpkg-respect-use=n option will prevent emerge
";
        let inst = installed(&["media-video/mpv-0.38.0"]);
        let (_, problems) = judge(out, 0, "media-video/mpv\n", &inst, &st);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].package, "media-video/mpv-0.38.0");
        assert!(problems[0].reason.contains("USE \"vaapi\""), "{problems:?}");
        assert!(problems[0].reason.contains("-vaapi*"), "{problems:?}");
    }

    #[test]
    fn skipped_world_atoms_and_conflicts_hold() {
        let out = "
!!! Problems have been detected with your world file
!!! Please run emaint --check world

!!! Ebuilds for the following packages are either all
!!! masked or don't exist:
app-misc/gone
";
        let (_, problems) = judge(
            out,
            0,
            "app-misc/gone\napp-misc/screen\n",
            &installed(&["app-misc/screen-4.9.1"]),
            &staged(&[]),
        );
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems.iter().all(|p| p.package == "app-misc/gone"));

        let out = "\
!!! Multiple package instances within a single package slot have been pulled
!!! into the dependency graph, resulting in a slot conflict:

dev-lang/perl:0

  (dev-lang/perl-5.40.0:0/5.40::gentoo, binary scheduled for merge) pulled in by
    dev-lang/perl

  (dev-lang/perl-5.38.2:0/5.38::gentoo, installed) pulled in by
    =dev-lang/perl-5.38* required by (app-misc/x-1:0/0::gentoo, installed)

It may be possible to solve this problem by using package.mask to
";
        let (_, problems) = judge(out, 1, "", &installed(&[]), &staged(&[]));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].package, "dev-lang/perl:0");
        assert!(
            problems[0]
                .reason
                .contains("dev-lang/perl-5.40.0:0/5.40::gentoo and dev-lang/perl-5.38.2"),
            "{problems:?}"
        );

        let (_, problems) = judge("!!! something odd\n", 1, "", &installed(&[]), &staged(&[]));
        assert_eq!(problems[0].package, "emerge");
        assert!(problems[0].reason.contains("something odd"));
    }
}
