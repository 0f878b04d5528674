//! Every difference between two bundles that can change what a binpkg contains, one line each
//! with both values (`subject: left -> right`, left from the first bundle, right from the second;
//! `(none)` where one side has nothing). Values that legitimately differ on a builder (build-side
//! FEATURES, MAKEOPTS, DISTDIR, binhost settings, ...) are listed separately as ignored, never
//! hidden. A difference of the main tree snapshot always comes first.
//!
//! Granularity: the tree snapshot and overlays by identity; the profile by repository and path;
//! variables by their expanded value (Portage's effective values when both bundles have them,
//! else make.conf's), incremental ones (USE, FEATURES, ACCEPT_KEYWORDS, USE_EXPAND, ...) as token
//! sets; `package.*` as sets of normalized atom lines keyed by atom; world entries; other files
//! under /etc/portage line by line; kernel release; `-march=native` when CFLAGS use it. A kernel
//! or CPU recorded on one side only is listed as ignored (a builder-side export records neither:
//! `ExportOptions::builder`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Serialize;

use super::bundle::{Bundle, EntryKind, Repo, VarSource, PROFILE_LINK};
use super::makeconf::is_config_name;

/// What a difference is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Snapshot,
    Overlay,
    Profile,
    Kernel,
    Cpu,
    Variable,
    PackageConfig,
    File,
    World,
}

/// One difference: `subject: left -> right`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Difference {
    pub kind: Kind,
    pub subject: String,
    pub left: String,
    pub right: String,
}

/// A difference that does not change binpkgs (a build-side setting), with the reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ignored {
    pub subject: String,
    pub left: String,
    pub right: String,
    pub reason: String,
}

/// The outcome of `diff`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Diff {
    pub differences: Vec<Difference>,
    pub ignored: Vec<Ignored>,
    /// Installed-set differences (`super::installed::differences`) when both bundles carry an
    /// installed-package database: information, never drift.
    pub installed: Vec<String>,
}

impl Diff {
    /// Whether no difference matters (ignored ones do not count).
    pub fn is_empty(&self) -> bool {
        self.differences.is_empty()
    }

    fn add(&mut self, kind: Kind, subject: impl Into<String>, left: String, right: String) {
        self.differences.push(Difference {
            kind,
            subject: subject.into(),
            left,
            right,
        });
    }

    fn ignore(&mut self, subject: impl Into<String>, left: String, right: String, reason: &str) {
        self.ignored.push(Ignored {
            subject: subject.into(),
            left,
            right,
            reason: reason.to_string(),
        });
    }
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} -> {}", self.subject, self.left, self.right)
    }
}

impl fmt::Display for Ignored {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} -> {} ({})",
            self.subject, self.left, self.right, self.reason
        )
    }
}

/// The differences one per line, then `ignored:` and the ignored ones indented, one per line.
impl fmt::Display for Diff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.differences {
            writeln!(f, "{d}")?;
        }
        if !self.ignored.is_empty() {
            writeln!(f, "ignored:")?;
            for i in &self.ignored {
                writeln!(f, "  {i}")?;
            }
        }
        if !self.installed.is_empty() {
            writeln!(f, "installed packages (information, not a difference):")?;
            for i in &self.installed {
                writeln!(f, "  {i}")?;
            }
        }
        Ok(())
    }
}

const NONE: &str = "(none)";

fn q(s: &str) -> String {
    format!("{s:?}")
}

/// Variables whose value is the builder's business (where and how it builds, fetches, stores).
const BUILD_SIDE_VARS: &[&str] = &[
    "MAKEOPTS",
    "NINJAOPTS",
    "MAKEFLAGS",
    "EMERGE_DEFAULT_OPTS",
    "DISTDIR",
    "PKGDIR",
    "PORTDIR",
    "PORTDIR_OVERLAY",
    "PORTAGE_TMPDIR",
    "PORTAGE_LOGDIR",
    "PORT_LOGDIR",
    "GENTOO_MIRRORS",
    "PORTAGE_BINHOST",
    "PORTAGE_BINHOST_HEADER",
    "PORTAGE_NICENESS",
    "PORTAGE_IONICE_COMMAND",
    "PORTAGE_SCHEDULING_POLICY",
    "PORTAGE_RSYNC_OPTS",
    "PORTAGE_RSYNC_EXTRA_OPTS",
    "PORTAGE_RSYNC_RETRIES",
    "PORTAGE_GPG_DIR",
    "PORTAGE_GPG_KEY",
    "PORTAGE_GPG_SIGNING_COMMAND",
    "PORTAGE_ELOG_CLASSES",
    "PORTAGE_ELOG_SYSTEM",
    "PORTAGE_ELOG_MAILURI",
    "PORTAGE_ELOG_MAILFROM",
    "PORTAGE_ELOG_COMMAND",
    "PORTAGE_WORKDIR_MODE",
    "PORTAGE_COMPRESS_EXCLUDE_SUFFIXES",
    "BINPKG_FORMAT",
    "BINPKG_COMPRESS",
    "BINPKG_COMPRESS_FLAGS",
    "BINPKG_GPG_SIGNING_KEY",
    "BINPKG_GPG_SIGNING_GPG_HOME",
    "BINPKG_GPG_VERIFY_GPG_HOME",
    "SYNC",
    "CLEAN_DELAY",
    "EMERGE_WARNING_DELAY",
    "NOCOLOR",
    "CCACHE_DIR",
    "CCACHE_SIZE",
    "DISTCC_DIR",
    "LC_MESSAGES",
    "LANG",
    "LC_ALL",
    "SHELL",
    "PORTAGE_CONFIGROOT",
    "CONFIG_PROTECT",
    "CONFIG_PROTECT_MASK",
];

/// FEATURES that change how or where the builder builds, not what it builds.
fn build_side_feature(f: &str) -> bool {
    const LIST: &[&str] = &[
        "userpriv",
        "usersandbox",
        "userfetch",
        "usersync",
        "sandbox",
        "network-sandbox",
        "network-sandbox-proxy",
        "ipc-sandbox",
        "pid-sandbox",
        "mount-sandbox",
        "buildpkg",
        "buildsyspkg",
        "getbinpkg",
        "parallel-fetch",
        "parallel-install",
        "candy",
        "clean-logs",
        "split-log",
        "split-elog",
        "fail-clean",
        "keeptemp",
        "keepwork",
        "noclean",
        "distlocks",
        "metadata-transfer",
        "news",
        "cgroup",
        "ccache",
        "distcc",
        "unknown-features-warn",
        "unknown-features-filter",
        "assume-digests",
        "ebuild-locks",
        "merge-sync",
        "merge-wait",
        "preserve-libs",
        "protect-owned",
        "unmerge-orphans",
        "unmerge-logs",
        "config-protect-if-modified",
        "skiprocheck",
        "strict",
        "stricter",
        "sign",
        "webrsync-gpg",
        "pkgdir-index-trusted",
        "collision-protect",
        "downgrade-backup",
        "unmerge-backup",
    ];
    let f = f.strip_prefix('-').unwrap_or(f);
    LIST.contains(&f) || f.starts_with("binpkg-") || f.starts_with("gpg-")
}

fn build_side_var(k: &str) -> bool {
    BUILD_SIDE_VARS.contains(&k)
        || k.starts_with("FETCHCOMMAND")
        || k.starts_with("RESUMECOMMAND")
        || k.starts_with("DISTCC_")
}

/// Variables whose value is a set of tokens (Portage's incremental variables and USE_EXPAND).
fn token_set_var(k: &str) -> bool {
    matches!(
        k,
        "USE"
            | "FEATURES"
            | "ACCEPT_KEYWORDS"
            | "ACCEPT_LICENSE"
            | "ACCEPT_PROPERTIES"
            | "ACCEPT_RESTRICT"
            | "CONFIG_PROTECT"
            | "CONFIG_PROTECT_MASK"
            | "L10N"
            | "LINGUAS"
            | "VIDEO_CARDS"
            | "INPUT_DEVICES"
            | "GRUB_PLATFORMS"
            | "ABI_X86"
            | "USE_EXPAND"
            | "USE_EXPAND_HIDDEN"
            | "IUSE_IMPLICIT"
            | "INSTALL_MASK"
            | "PKG_INSTALL_MASK"
    ) || k.starts_with("CPU_FLAGS_")
        || k.ends_with("_TARGETS")
        || k.ends_with("_TARGET")
}

/// An incremental token list reduced Portage's way: `-x` removes `x`, `-*` clears; a negation
/// of something not set is kept, so two make.conf files compare by what they say.
fn token_set(v: &str) -> BTreeSet<String> {
    let mut s = BTreeSet::new();
    for t in v.split_whitespace() {
        if t == "-*" {
            s.clear();
            s.insert(t.to_string());
        } else if let Some(pos) = t.strip_prefix('-') {
            s.remove(pos);
            s.insert(t.to_string());
        } else {
            s.remove(&format!("-{t}"));
            s.insert(t.to_string());
        }
    }
    s
}

fn join(s: &BTreeSet<String>) -> String {
    s.iter().cloned().collect::<Vec<_>>().join(" ")
}

fn collapse(v: &str) -> String {
    v.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Compare two bundles: `a` is the reference (the machine's imported host bundle), `b` the
/// other side (a newer host export, or the builder's own state). See the module documentation.
pub fn diff(a: &Bundle, b: &Bundle) -> Diff {
    let mut d = Diff::default();
    snapshots(a, b, &mut d);
    profile(a, b, &mut d);
    kernel_cpu(a, b, &mut d);
    variables(a, b, &mut d);
    files(a, b, &mut d);
    world(a, b, &mut d);
    if let (Some(x), Some(y)) = (a.installed(), b.installed()) {
        d.installed = super::installed::differences(x, y);
    }
    // The main tree snapshot is always reported first.
    d.differences.sort_by_key(|x| x.kind != Kind::Snapshot);
    d
}

fn describe_repo(r: Option<&Repo>) -> String {
    let Some(r) = r else { return NONE.into() };
    let id = &r.identity;
    if id.is_empty() {
        return "unknown (no metadata/timestamp.*)".into();
    }
    let mut s = match id.unix_time() {
        Some(t) => crate::time::utc(t),
        None => id.timestamp_chk.clone().unwrap_or_default(),
    };
    if let Some(c) = &id.commit {
        s.push_str(&format!(" (commit {})", &c[..c.len().min(12)]));
    }
    s
}

fn snapshots(a: &Bundle, b: &Bundle, d: &mut Diff) {
    let (ma, mb) = (a.main_repo(), b.main_repo());
    if ma.map(|r| &r.identity) != mb.map(|r| &r.identity) {
        let name = ma.or(mb).map(|r| r.name.as_str()).unwrap_or("gentoo");
        d.add(
            Kind::Snapshot,
            format!("tree snapshot ({name})"),
            describe_repo(ma),
            describe_repo(mb),
        );
    }
    if let (Some(x), Some(y)) = (ma, mb) {
        if x.location != y.location {
            d.ignore(
                format!("repository {} location", x.name),
                x.location.clone(),
                y.location.clone(),
                "where the tree lives does not change binpkgs",
            );
        }
    }
    let overlays = |bn: &Bundle| -> BTreeMap<String, Repo> {
        let main = bn.main_repo().map(|r| r.name.clone());
        bn.manifest
            .repos
            .iter()
            .filter(|r| Some(&r.name) != main.as_ref())
            .map(|r| (r.name.clone(), r.clone()))
            .collect()
    };
    let (oa, ob) = (overlays(a), overlays(b));
    for name in oa.keys().chain(ob.keys()).collect::<BTreeSet<_>>() {
        let (x, y) = (oa.get(name), ob.get(name));
        match (x, y) {
            (Some(x), Some(y)) => {
                if x.identity != y.identity {
                    d.add(
                        Kind::Overlay,
                        format!("overlay {name} snapshot"),
                        describe_repo(Some(x)),
                        describe_repo(Some(y)),
                    );
                }
                let short = |c: &Option<String>| {
                    c.as_deref()
                        .map(|c| c[..c.len().min(12)].to_string())
                        .unwrap_or_else(|| NONE.into())
                };
                if x.git_commit != y.git_commit {
                    d.add(
                        Kind::Overlay,
                        format!("overlay {name} commit"),
                        short(&x.git_commit),
                        short(&y.git_commit),
                    );
                }
                if x.captured != y.captured {
                    d.add(
                        Kind::Overlay,
                        format!("overlay {name} tree"),
                        short(&x.captured),
                        short(&y.captured),
                    );
                }
                if x.location != y.location {
                    d.ignore(
                        format!("overlay {name} location"),
                        x.location.clone(),
                        y.location.clone(),
                        "where the tree lives does not change binpkgs",
                    );
                }
            }
            _ => d.add(
                Kind::Overlay,
                format!("overlay {name}"),
                x.map(|r| r.location.clone()).unwrap_or(NONE.into()),
                y.map(|r| r.location.clone()).unwrap_or(NONE.into()),
            ),
        }
    }
}

fn profile(a: &Bundle, b: &Bundle, d: &mut Diff) {
    let (pa, pb) = (&a.manifest.profile, &b.manifest.profile);
    let show = |p: &Option<super::Profile>| match p {
        None => NONE.to_string(),
        Some(p) => match (&p.repo, &p.path) {
            (Some(r), Some(path)) if r != "gentoo" => format!("{r}:{path}"),
            (_, Some(path)) => path.clone(),
            _ => p.link.clone(),
        },
    };
    let (sa, sb) = (show(pa), show(pb));
    if sa != sb {
        d.add(Kind::Profile, "profile", sa, sb);
    } else if let (Some(x), Some(y)) = (pa, pb) {
        if x.link != y.link {
            d.ignore(
                "make.profile link",
                x.link.clone(),
                y.link.clone(),
                "same profile through another path",
            );
        }
    }
}

fn kernel_cpu(a: &Bundle, b: &Bundle, d: &mut Diff) {
    let (ka, kb) = (&a.manifest.kernel, &b.manifest.kernel);
    if ka != kb {
        let s = |k: &Option<String>| k.clone().unwrap_or_else(|| "unknown".into());
        if ka.is_some() && kb.is_some() {
            d.add(Kind::Kernel, "kernel", s(ka), s(kb));
        } else {
            // A builder's export records no kernel (ExportOptions::detect_kernel off): the
            // builder's own kernel is not the host's business.
            d.ignore("kernel", s(ka), s(kb), "not recorded on one side");
        }
    }
    if let (Some(ca), Some(cb)) = (&a.manifest.cpu, &b.manifest.cpu) {
        if ca.flags != cb.flags {
            let fa: BTreeSet<&String> = ca.flags.iter().collect();
            let fb: BTreeSet<&String> = cb.flags.iter().collect();
            let side = |c: &super::Cpu, only: Vec<&&String>| {
                let extra: Vec<&str> = only.iter().map(|s| s.as_str()).collect();
                format!(
                    "{} [{}]",
                    c.march.as_deref().unwrap_or("?"),
                    extra.join(" ")
                )
            };
            let left = side(ca, fa.difference(&fb).collect());
            let right = side(cb, fb.difference(&fa).collect());
            let native = |bn: &Bundle| {
                ["CFLAGS", "CXXFLAGS"].iter().any(|k| {
                    bn.manifest
                        .variables
                        .get(*k)
                        .or(bn.manifest.make_conf.get(*k))
                        .is_some_and(|v| v.split_whitespace().any(|t| t == "-march=native"))
                })
            };
            if native(a) || native(b) {
                d.add(Kind::Cpu, "-march=native", left, right);
            } else {
                d.ignore(
                    "-march=native",
                    left,
                    right,
                    "CFLAGS do not use -march=native",
                );
            }
        }
    }
}

fn variables(a: &Bundle, b: &Bundle, d: &mut Diff) {
    let both_effective = a.manifest.variables_source == VarSource::Effective
        && b.manifest.variables_source == VarSource::Effective;
    let (va, vb, label) = if both_effective {
        (
            a.manifest.variables.clone(),
            b.manifest.variables.clone(),
            "effective",
        )
    } else {
        if a.manifest.variables_source != b.manifest.variables_source {
            d.ignore(
                "variables",
                a.manifest.variables_source.to_string(),
                b.manifest.variables_source.to_string(),
                "compared make.conf values since one side has no effective values",
            );
        }
        let mc = |bn: &Bundle| {
            bn.make_conf_vars()
                .unwrap_or_else(|_| bn.manifest.make_conf.clone())
        };
        (mc(a), mc(b), "make.conf")
    };
    let keys: BTreeSet<&String> = va.keys().chain(vb.keys()).collect();
    for k in keys {
        let x = va.get(k).map(String::as_str).unwrap_or("");
        let y = vb.get(k).map(String::as_str).unwrap_or("");
        let show = |v: &str, present: bool| {
            if present {
                q(&collapse(v))
            } else {
                "(unset)".to_string()
            }
        };
        let (px, py) = (va.contains_key(k), vb.contains_key(k));
        let subject = format!("{label} {k}");
        if build_side_var(k) {
            if collapse(x) != collapse(y) {
                d.ignore(subject, show(x, px), show(y, py), "build-side setting");
            }
            continue;
        }
        if k == "FEATURES" {
            let (sa, sb) = (token_set(x), token_set(y));
            let split = |s: &BTreeSet<String>| -> (BTreeSet<String>, BTreeSet<String>) {
                s.iter().cloned().partition(|f| !build_side_feature(f))
            };
            let ((ra, ia), (rb, ib)) = (split(&sa), split(&sb));
            if ra != rb {
                d.add(
                    Kind::Variable,
                    subject.clone(),
                    q(&join(&ra)),
                    q(&join(&rb)),
                );
            }
            if ia != ib {
                d.ignore(
                    format!("{subject} (build-side)"),
                    q(&join(&ia)),
                    q(&join(&ib)),
                    "build-side features",
                );
            }
            continue;
        }
        let differs = if token_set_var(k) {
            token_set(x) != token_set(y)
        } else {
            collapse(x) != collapse(y)
        };
        if differs {
            d.add(Kind::Variable, subject, show(x, px), show(y, py));
        }
    }
}

/// The normalized lines of a `package.*` file: comments and blank lines dropped, whitespace
/// collapsed.
pub fn normalize_atom_lines(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .map(collapse)
        .filter(|l| !l.is_empty())
        .collect()
}

/// `package.X` (file or directory): atom -> (first file, values of its lines in order).
fn package_lines(bn: &Bundle, base: &str) -> BTreeMap<String, (String, Vec<String>)> {
    let mut out: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
    for (path, data) in bn.files_under(base) {
        if path != base && !path.rsplit('/').next().is_some_and(is_config_name) {
            continue;
        }
        for line in normalize_atom_lines(&String::from_utf8_lossy(data)) {
            let (atom, rest) = line.split_once(' ').unwrap_or((&line, ""));
            let e = out
                .entry(atom.to_string())
                .or_insert_with(|| (path.to_string(), Vec::new()));
            e.1.push(rest.to_string());
        }
    }
    out
}

fn is_package_config(path: &str) -> Option<String> {
    let rest = path.strip_prefix("etc/portage/")?;
    let top = rest.split('/').next()?;
    top.starts_with("package.")
        .then(|| format!("etc/portage/{top}"))
}

fn files(a: &Bundle, b: &Bundle, d: &mut Diff) {
    // package.* by atom lines.
    let bases: BTreeSet<String> = a
        .manifest
        .files
        .iter()
        .chain(b.manifest.files.iter())
        .filter_map(|f| is_package_config(&f.path))
        .collect();
    for base in &bases {
        let (la, lb) = (package_lines(a, base), package_lines(b, base));
        for atom in la.keys().chain(lb.keys()).collect::<BTreeSet<_>>() {
            let line = |v: &str| {
                if v.is_empty() {
                    atom.clone()
                } else {
                    format!("{atom} {v}")
                }
            };
            match (la.get(atom), lb.get(atom)) {
                (Some((fa, xa)), None) => {
                    for v in xa {
                        d.add(Kind::PackageConfig, fa.clone(), q(&line(v)), NONE.into());
                    }
                }
                (None, Some((fb, xb))) => {
                    for v in xb {
                        d.add(Kind::PackageConfig, fb.clone(), NONE.into(), q(&line(v)));
                    }
                }
                (Some((_, xa)), Some((fb, xb))) if xa != xb => {
                    let show =
                        |x: &Vec<String>| x.iter().map(|v| q(v)).collect::<Vec<_>>().join(" + ");
                    d.add(
                        Kind::PackageConfig,
                        format!("{fb}: {atom}"),
                        show(xa),
                        show(xb),
                    );
                }
                _ => {}
            }
        }
    }
    // repos.conf by key, binrepos.conf ignored.
    repos_conf(a, b, d);
    let text_of = |bn: &Bundle, base: &str| -> String {
        bn.files_under(base)
            .map(|(_, d)| String::from_utf8_lossy(d).into_owned())
            .collect::<Vec<_>>()
            .join("\n")
    };
    let (ba, bb) = (
        text_of(a, "etc/portage/binrepos.conf"),
        text_of(b, "etc/portage/binrepos.conf"),
    );
    if normalize_atom_lines(&ba) != normalize_atom_lines(&bb) {
        d.ignore(
            "etc/portage/binrepos.conf",
            summarize(&ba),
            summarize(&bb),
            "binary package sources are the builder's business",
        );
    }
    // Every other file, line by line.
    let skip = |p: &str| {
        is_package_config(p).is_some()
            || p == PROFILE_LINK
            || p == "etc/portage/make.conf"
            || p.starts_with("etc/portage/make.conf/")
            || p.starts_with("etc/portage/make.conf.d/")
            || p == "etc/portage/repos.conf"
            || p.starts_with("etc/portage/repos.conf/")
            || p == "etc/portage/binrepos.conf"
            || p.starts_with("etc/portage/binrepos.conf/")
            || !p.starts_with("etc/portage/")
    };
    let regular = |bn: &Bundle| -> BTreeMap<String, Vec<u8>> {
        bn.manifest
            .files
            .iter()
            .filter(|f| f.kind == EntryKind::File && !skip(&f.path))
            .filter_map(|f| Some((f.path.clone(), bn.file(&f.path)?.to_vec())))
            .collect()
    };
    let (fa, fb) = (regular(a), regular(b));
    for p in fa.keys().chain(fb.keys()).collect::<BTreeSet<_>>() {
        match (fa.get(p), fb.get(p)) {
            (Some(x), None) => d.add(Kind::File, p.clone(), describe_file(x), NONE.into()),
            (None, Some(y)) => d.add(Kind::File, p.clone(), NONE.into(), describe_file(y)),
            (Some(x), Some(y)) if x != y => file_lines(p, x, y, d),
            _ => {}
        }
    }
}

fn summarize(s: &str) -> String {
    let l = normalize_atom_lines(s);
    if l.is_empty() {
        NONE.into()
    } else {
        q(&l.join("; "))
    }
}

fn is_text(d: &[u8]) -> bool {
    !d.contains(&0) && std::str::from_utf8(d).is_ok()
}

fn describe_file(d: &[u8]) -> String {
    if is_text(d) && d.len() <= 200 {
        let l: Vec<&str> = std::str::from_utf8(d)
            .unwrap_or("")
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        if l.len() <= 3 {
            return format!("file {}", q(&l.join("; ")));
        }
    }
    format!(
        "file ({} bytes, sha256 {})",
        d.len(),
        &super::bundle::sha256_hex(d)[..16]
    )
}

/// A text file's changed lines (as multisets), pairing removed with added lines when their
/// numbers match; a binary file by size and hash.
fn file_lines(path: &str, x: &[u8], y: &[u8], d: &mut Diff) {
    if !(is_text(x) && is_text(y)) {
        d.add(Kind::File, path, describe_file(x), describe_file(y));
        return;
    }
    let lines = |b: &[u8]| -> Vec<String> {
        std::str::from_utf8(b)
            .unwrap_or("")
            .lines()
            .map(|l| l.trim_end().to_string())
            .filter(|l| !l.trim().is_empty())
            .collect()
    };
    let (la, lb) = (lines(x), lines(y));
    let minus = |p: &[String], m: &[String]| -> Vec<String> {
        let mut m = m.to_vec();
        p.iter()
            .filter(|l| {
                if let Some(i) = m.iter().position(|o| o == *l) {
                    m.remove(i);
                    false
                } else {
                    true
                }
            })
            .cloned()
            .collect()
    };
    let (removed, added) = (minus(&la, &lb), minus(&lb, &la));
    if removed.is_empty() && added.is_empty() {
        if la != lb {
            d.add(
                Kind::File,
                path,
                "lines in one order".into(),
                "another order".into(),
            );
        } else {
            d.add(
                Kind::File,
                path,
                "content".into(),
                "differs in whitespace only".into(),
            );
        }
        return;
    }
    if removed.len() == added.len() {
        for (r, a) in removed.iter().zip(&added) {
            d.add(Kind::File, path, q(r), q(a));
        }
    } else {
        for r in &removed {
            d.add(Kind::File, path, q(r), NONE.into());
        }
        for a in &added {
            d.add(Kind::File, path, NONE.into(), q(a));
        }
    }
}

fn repos_conf(a: &Bundle, b: &Bundle, d: &mut Diff) {
    let parse = |bn: &Bundle| -> BTreeMap<(String, String), String> {
        super::export::repos_conf_entries(bn)
            .into_iter()
            .filter_map(|(section, kv)| kv.map(|(k, v)| ((section, k), v)))
            .collect()
    };
    let (ra, rb) = (parse(a), parse(b));
    for key in ra.keys().chain(rb.keys()).collect::<BTreeSet<_>>() {
        let (x, y) = (ra.get(key), rb.get(key));
        if x == y {
            continue;
        }
        let subject = format!("etc/portage/repos.conf [{}] {}", key.0, key.1);
        let show = |v: Option<&String>| v.map(|v| q(v)).unwrap_or(NONE.into());
        let k = key.1.as_str();
        if k == "location" || k.starts_with("sync") || k.starts_with("auto-sync") {
            d.ignore(
                subject,
                show(x),
                show(y),
                "how and where the tree is synced",
            );
        } else {
            d.add(Kind::File, subject, show(x), show(y));
        }
    }
}

fn world(a: &Bundle, b: &Bundle, d: &mut Diff) {
    for p in ["var/lib/portage/world", "var/lib/portage/world_sets"] {
        let set = |bn: &Bundle| -> BTreeSet<String> {
            bn.file(p)
                .map(|d| normalize_atom_lines(&String::from_utf8_lossy(d)))
                .unwrap_or_default()
                .into_iter()
                .collect()
        };
        let (sa, sb) = (set(a), set(b));
        for x in sa.difference(&sb) {
            d.add(Kind::World, p, q(x), NONE.into());
        }
        for y in sb.difference(&sa) {
            d.add(Kind::World, p, NONE.into(), q(y));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::bundle::{sha256_hex, FileEntry, Manifest};

    fn bundle(kernel: Option<&str>, files: &[(&str, &str)], snapshot: Option<u64>) -> Bundle {
        let mut data = BTreeMap::new();
        let mut entries = Vec::new();
        for (p, c) in files {
            data.insert(p.to_string(), c.as_bytes().to_vec());
            entries.push(FileEntry {
                path: p.to_string(),
                kind: EntryKind::File,
                mode: 0o644,
                mtime: 0,
                size: Some(c.len() as u64),
                sha256: Some(sha256_hex(c.as_bytes())),
                target: None,
            });
        }
        let m = Manifest {
            format: 1,
            host: "h".into(),
            created: 0,
            kernel: kernel.map(str::to_string),
            kernel_source: "--kernel".into(),
            profile: None,
            repos: vec![Repo {
                name: "gentoo".into(),
                location: "/var/db/repos/gentoo".into(),
                main: true,
                identity: crate::fetch::TreeIdentity {
                    timestamp_x: snapshot,
                    ..Default::default()
                },
                ..Default::default()
            }],
            variables_source: VarSource::MakeConf,
            variables: BTreeMap::new(),
            make_conf: BTreeMap::new(),
            cpu: None,
            files: entries,
            skipped: Vec::new(),
        };
        Bundle::from_parts(m, data)
    }

    #[test]
    fn library_diff() {
        let a = bundle(
            Some("6.1.0"),
            &[
                ("etc/portage/make.conf", "USE=\"a b\"\nMAKEOPTS=-j2\n"),
                ("etc/portage/package.mask", ">=x/y-2\n"),
                ("etc/portage/env/e.conf", "CFLAGS=\"-O1\"\n"),
            ],
            Some(1_700_000_000),
        );
        assert!(diff(&a, &a).is_empty());
        assert!(diff(&a, &a).ignored.is_empty());
        let b = bundle(
            None,
            &[
                ("etc/portage/make.conf", "USE=\"b a c\"\nMAKEOPTS=-j8\n"),
                (
                    "etc/portage/package.mask/one",
                    ">=x/y-2\n# moved to a dir\n",
                ),
                ("etc/portage/env/e.conf", "CFLAGS=\"-O3\"\n"),
            ],
            Some(1_704_067_200),
        );
        let d = diff(&a, &b);
        let lines: Vec<String> = d.differences.iter().map(|x| x.to_string()).collect();
        assert_eq!(
            lines,
            [
                "tree snapshot (gentoo): 2023-11-14 22:13:20 UTC -> 2024-01-01 00:00:00 UTC",
                "make.conf USE: \"a b\" -> \"b a c\"",
                "etc/portage/env/e.conf: \"CFLAGS=\\\"-O1\\\"\" -> \"CFLAGS=\\\"-O3\\\"\"",
            ]
        );
        let ig: Vec<String> = d.ignored.iter().map(|x| x.to_string()).collect();
        assert!(
            ig.iter().any(|l| l.starts_with("kernel: 6.1.0 -> unknown")),
            "{ig:?}"
        );
        assert!(ig.iter().any(|l| l.contains("MAKEOPTS")), "{ig:?}");
        let text = d.to_string();
        assert!(text.contains("\nignored:\n  "), "{text}");
    }

    #[test]
    fn atom_lines_normalized() {
        assert_eq!(
            normalize_atom_lines(
                "# comment\n\n  app-misc/foo   -bar  baz # why\n\t=dev-libs/x-1.0\t~amd64\n"
            ),
            ["app-misc/foo -bar baz", "=dev-libs/x-1.0 ~amd64"]
        );
    }

    #[test]
    fn incremental_tokens() {
        assert_eq!(token_set("a b -a c"), token_set("c b -a"));
        assert_ne!(token_set("a b"), token_set("a"));
        assert_eq!(join(&token_set("a b -* c")), "-* c");
    }

    #[test]
    fn build_side() {
        assert!(build_side_feature("buildpkg"));
        assert!(build_side_feature("-userpriv"));
        assert!(build_side_feature("binpkg-multi-instance"));
        assert!(!build_side_feature("splitdebug"));
        assert!(build_side_var("MAKEOPTS"));
        assert!(build_side_var("FETCHCOMMAND_HTTPS"));
        assert!(!build_side_var("CFLAGS"));
    }
}
