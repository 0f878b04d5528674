//! Capturing a host's configuration from a root directory (`/` on the host, a stand-in root in
//! tests, the builder's rootfs for the build loop): /etc/portage in full (symlinks followed, except
//! `make.profile` which is recorded), world and world_sets, the repositories from repos.conf with
//! their tree identities, the profile, make.conf's variables, and, when the root is the running
//! system, Portage's effective variables (`emerge --info`, else `portageq envvar`), the kernel
//! release and `-march=native` as gcc resolves it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::bundle::{
    profile_of, sha256_hex, Bundle, Cpu, EntryKind, FileEntry, Manifest, Repo, Skipped, VarSource,
    FORMAT_VERSION, PROFILE_LINK,
};
use super::installed::INSTALLED_NAME;
use super::makeconf::is_config_name;
use super::HostError;

/// What `export_root` does besides reading files.
#[derive(Debug, Clone, Default)]
pub struct ExportOptions {
    /// Kernel release to record instead of detecting it.
    pub kernel: Option<String>,
    /// Host name to record instead of detecting it.
    pub hostname: Option<String>,
    /// Creation time to record [default: `SOURCE_DATE_EPOCH`, else now].
    pub created: Option<u64>,
    /// Ask Portage for effective values (`emerge --info`) when the root is `/`.
    pub effective: bool,
    /// The output of `emerge --info` taken elsewhere (inside a builder), parsed for the
    /// effective values instead of running emerge.
    pub emerge_info: Option<String>,
    /// Resolve `-march=native` with gcc when gcc exists.
    pub cpu: bool,
    /// Detect the kernel release (`<root>/proc/sys/kernel/osrelease`, else `uname -r`).
    pub detect_kernel: bool,
    /// Most bytes the trees of local overlays (no sync source) may take in the bundle
    /// [0: `DEFAULT_OVERLAY_LIMIT`].
    pub overlay_limit: u64,
    /// Capture the installed-package database (`var/db/pkg` metadata, `super::installed`).
    pub installed: bool,
}

/// Default bound of the local overlay trees a bundle captures (64 MiB).
pub const DEFAULT_OVERLAY_LIMIT: u64 = 64 << 20;

impl ExportOptions {
    /// Everything a host export does: effective variables, CPU flags, kernel.
    pub fn host() -> ExportOptions {
        ExportOptions {
            effective: true,
            cpu: true,
            detect_kernel: true,
            installed: true,
            ..ExportOptions::default()
        }
    }

    /// The builder's side of a comparison with its machine: effective variables when run inside
    /// the builder (root `/`), but no kernel and no CPU flags (the builder's own are not the
    /// host's; `diff` then lists those as ignored instead of comparing them).
    pub fn builder() -> ExportOptions {
        ExportOptions {
            effective: true,
            ..ExportOptions::default()
        }
    }

    /// Only the files (for a configuration directory that is not a running system).
    pub fn config_dir() -> ExportOptions {
        ExportOptions::default()
    }
}

/// Files of a capture in progress.
#[derive(Default)]
struct Capture {
    files: Vec<FileEntry>,
    data: BTreeMap<String, Vec<u8>>,
    skipped: Vec<Skipped>,
}

impl Capture {
    fn skip(&mut self, rel: &str, reason: impl Into<String>) {
        self.skipped.push(Skipped {
            path: rel.to_string(),
            reason: reason.into(),
        });
    }
}

fn mtime_of(m: &std::fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    m.mtime().max(0) as u64
}

fn mode_of(m: &std::fs::Metadata) -> u32 {
    use std::os::unix::fs::MetadataExt;
    m.mode() & 0o7777
}

/// Paths under /etc/portage that never matter for what a binpkg contains.
const NOT_CAPTURED: &[(&str, &str)] = &[(
    "etc/portage/gnupg",
    "portage's keyring for verifying signatures, not configuration",
)];

fn walk(root: &Path, rel: &str, cap: &mut Capture, depth: usize) {
    if let Some((_, why)) = NOT_CAPTURED.iter().find(|(p, _)| *p == rel) {
        cap.skip(rel, *why);
        return;
    }
    let abs = root.join(rel);
    let lmeta = match std::fs::symlink_metadata(&abs) {
        Ok(m) => m,
        Err(e) => return cap.skip(rel, e.to_string()),
    };
    let meta = if lmeta.file_type().is_symlink() {
        if rel == PROFILE_LINK {
            match std::fs::read_link(&abs) {
                Ok(t) => cap.files.push(FileEntry {
                    path: rel.to_string(),
                    kind: EntryKind::Symlink,
                    mode: 0o777,
                    mtime: mtime_of(&lmeta),
                    size: None,
                    sha256: None,
                    target: Some(t.to_string_lossy().into_owned()),
                }),
                Err(e) => cap.skip(rel, e.to_string()),
            }
            return;
        }
        if depth > 32 {
            return cap.skip(rel, "too many levels of symlinks");
        }
        // Inside the root, an absolute target means the root's path, not this system's.
        let target = match std::fs::read_link(&abs) {
            Ok(t) => t,
            Err(e) => return cap.skip(rel, e.to_string()),
        };
        let resolved = if target.is_absolute() {
            root.join(target.strip_prefix("/").unwrap_or(&target))
        } else {
            abs.parent().unwrap_or(root).join(&target)
        };
        match std::fs::metadata(&resolved) {
            Ok(m) => m,
            Err(e) => {
                return cap.skip(rel, format!("symlink to {}: {e}", target.to_string_lossy()))
            }
        }
    } else {
        lmeta
    };
    if meta.is_dir() {
        cap.files.push(FileEntry {
            path: rel.to_string(),
            kind: EntryKind::Dir,
            mode: mode_of(&meta),
            mtime: mtime_of(&meta),
            size: None,
            sha256: None,
            target: None,
        });
        let mut names: Vec<String> = match std::fs::read_dir(&abs) {
            Ok(rd) => rd
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect(),
            Err(e) => return cap.skip(rel, e.to_string()),
        };
        names.sort();
        for n in names {
            walk(root, &format!("{rel}/{n}"), cap, depth + 1);
        }
    } else if meta.is_file() {
        match std::fs::read(&abs) {
            Ok(d) => {
                cap.files.push(FileEntry {
                    path: rel.to_string(),
                    kind: EntryKind::File,
                    mode: mode_of(&meta),
                    mtime: mtime_of(&meta),
                    size: Some(d.len() as u64),
                    sha256: Some(sha256_hex(&d)),
                    target: None,
                });
                cap.data.insert(rel.to_string(), d);
            }
            Err(e) => cap.skip(rel, e.to_string()),
        }
    } else {
        cap.skip(rel, "not a regular file, directory or symlink");
    }
}

/// Capture the configuration under `root` (see the module documentation).
pub fn export_root(root: &Path, opts: &ExportOptions) -> Result<Bundle, HostError> {
    let is_live = is_system_root(root);
    let mut cap = Capture::default();
    if root.join("etc/portage").exists() || root.join("etc/portage").is_symlink() {
        walk(root, "etc/portage", &mut cap, 0);
    } else {
        cap.skip("etc/portage", "not found");
    }
    for w in ["var/lib/portage/world", "var/lib/portage/world_sets"] {
        let abs = root.join(w);
        if abs.exists() {
            walk(root, w, &mut cap, 0);
        }
    }
    if opts.installed {
        let mut skipped = Vec::new();
        match super::installed::capture(root, &mut skipped) {
            Some(doc) => {
                let d = doc.to_json();
                cap.files.push(FileEntry {
                    path: INSTALLED_NAME.to_string(),
                    kind: EntryKind::File,
                    mode: 0o644,
                    mtime: std::fs::metadata(root.join("var/db/pkg"))
                        .map(|m| mtime_of(&m))
                        .unwrap_or(0),
                    size: Some(d.len() as u64),
                    sha256: Some(sha256_hex(&d)),
                    target: None,
                });
                cap.data.insert(INSTALLED_NAME.to_string(), d);
            }
            None => cap.skip(
                "var/db/pkg",
                "not found: without the installed-package database the builder cannot check its publications against this host",
            ),
        }
        for (p, r) in skipped {
            cap.skip(&p, r);
        }
    }
    cap.files.sort_by(|a, b| a.path.cmp(&b.path));

    let created = opts.created.unwrap_or_else(|| {
        std::env::var("SOURCE_DATE_EPOCH")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(crate::time::now)
    });
    let mut manifest = Manifest {
        format: FORMAT_VERSION,
        host: opts
            .hostname
            .clone()
            .unwrap_or_else(|| detect_hostname(root, is_live)),
        created,
        kernel: None,
        kernel_source: "none".to_string(),
        profile: None,
        repos: Vec::new(),
        variables_source: VarSource::MakeConf,
        variables: BTreeMap::new(),
        make_conf: BTreeMap::new(),
        cpu: None,
        files: cap.files,
        skipped: cap.skipped,
    };
    let mut data = cap.data.clone();
    let mut bundle = Bundle::from_parts(manifest.clone(), cap.data);
    let make_conf = bundle.make_conf_vars()?;

    manifest.repos = repos(root, &bundle, &make_conf, &mut manifest.skipped);
    let limit = if opts.overlay_limit == 0 {
        DEFAULT_OVERLAY_LIMIT
    } else {
        opts.overlay_limit
    };
    capture_overlays(root, &mut manifest, &mut data, limit)?;
    bundle = Bundle::from_parts(manifest.clone(), data);
    manifest.profile = bundle
        .entry(PROFILE_LINK)
        .and_then(|e| e.target.clone())
        .map(|t| profile_of(&t, &manifest.repos));

    manifest.variables = make_conf.clone();
    if let Some(info) = &opts.emerge_info {
        manifest.variables = parse_info(info);
        manifest.variables_source = VarSource::Effective;
    } else if opts.effective && is_live {
        match effective_vars() {
            Ok(v) => {
                manifest.variables = v;
                manifest.variables_source = VarSource::Effective;
            }
            Err(why) => manifest.skipped.push(Skipped {
                path: "effective variables".to_string(),
                reason: format!("{why}; recorded make.conf's values"),
            }),
        }
    }
    manifest.make_conf = make_conf;

    if let Some(k) = &opts.kernel {
        manifest.kernel = Some(k.clone());
        manifest.kernel_source = "--kernel".to_string();
    } else if opts.detect_kernel {
        let f = root.join("proc/sys/kernel/osrelease");
        let from_file = if is_live {
            None
        } else {
            std::fs::read_to_string(&f)
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        };
        if let Some(k) = from_file {
            manifest.kernel = Some(k);
            manifest.kernel_source = "<root>/proc/sys/kernel/osrelease".to_string();
        } else if let Some(k) = uname_r() {
            manifest.kernel = Some(k);
            manifest.kernel_source = "uname -r".to_string();
        }
    }
    if opts.cpu {
        manifest.cpu = march_native();
    }
    bundle.manifest = manifest;
    Ok(bundle)
}

/// Whether `root` is this system's `/`.
fn is_system_root(root: &Path) -> bool {
    match (std::fs::canonicalize(root), std::fs::canonicalize("/")) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

fn detect_hostname(root: &Path, is_live: bool) -> String {
    let first_line = |p: PathBuf| -> Option<String> {
        let s = std::fs::read_to_string(p).ok()?;
        let l = s.lines().next()?.trim().to_string();
        (!l.is_empty()).then_some(l)
    };
    if !is_live {
        if let Some(h) = first_line(root.join("etc/hostname")) {
            return h;
        }
        // OpenRC: /etc/conf.d/hostname holds hostname="name".
        if let Ok(s) = std::fs::read_to_string(root.join("etc/conf.d/hostname")) {
            if let Ok(v) = super::makeconf::parse(&s, "etc/conf.d/hostname") {
                if let Some(h) = v.get("hostname").filter(|h| !h.is_empty()) {
                    return h.clone();
                }
            }
        }
    }
    first_line(PathBuf::from("/proc/sys/kernel/hostname")).unwrap_or_else(|| "unknown".into())
}

fn uname_r() -> Option<String> {
    if let Ok(s) = std::fs::read_to_string("/proc/sys/kernel/osrelease") {
        let s = s.trim();
        if !s.is_empty() {
            return Some(s.to_string());
        }
    }
    let o = Command::new("uname").arg("-r").output().ok()?;
    let s = String::from_utf8_lossy(&o.stdout).trim().to_string();
    (o.status.success() && !s.is_empty()).then_some(s)
}

/// The entries of repos.conf (a file or a directory of files), in file order: each `[section]`
/// as (section, None) where it starts, and each `key = value` as (section, Some((key, value))).
pub(crate) fn repos_conf_entries(bundle: &Bundle) -> Vec<(String, Option<(String, String)>)> {
    let mut out = Vec::new();
    for (path, data) in bundle.files_under("etc/portage/repos.conf") {
        if !path.rsplit('/').next().is_some_and(is_config_name) {
            continue;
        }
        let mut section = String::new();
        for line in String::from_utf8_lossy(data).lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = s.trim().to_string();
                out.push((section.clone(), None));
            } else if let Some((k, v)) = line.split_once('=') {
                out.push((
                    section.clone(),
                    Some((k.trim().to_string(), v.trim().to_string())),
                ));
            }
        }
    }
    out
}

/// Parse repos.conf (INI: `[name]` sections with `location = ...`, `[DEFAULT] main-repo`).
/// Returns (main repo name, name -> location) in file order.
pub(crate) fn parse_repos_conf(bundle: &Bundle) -> (String, Vec<(String, Option<String>)>) {
    let mut main = "gentoo".to_string();
    let mut repos: Vec<(String, Option<String>)> = Vec::new();
    for (section, kv) in repos_conf_entries(bundle) {
        match kv {
            None => {
                if section != "DEFAULT" && !repos.iter().any(|(n, _)| *n == section) {
                    repos.push((section, None));
                }
            }
            Some((k, v)) => {
                if section == "DEFAULT" && k == "main-repo" {
                    main = v;
                } else if k == "location" {
                    if let Some(r) = repos.iter_mut().find(|(n, _)| *n == section) {
                        r.1 = Some(v);
                    }
                }
            }
        }
    }
    (main, repos)
}

fn repos(
    root: &Path,
    bundle: &Bundle,
    make_conf: &BTreeMap<String, String>,
    skipped: &mut Vec<Skipped>,
) -> Vec<Repo> {
    let (main, mut list) = parse_repos_conf(bundle);
    if !list.iter().any(|(n, l)| *n == main && l.is_some()) {
        // Portage's built-in default, or the legacy PORTDIR.
        let loc = make_conf
            .get("PORTDIR")
            .filter(|p| !p.is_empty())
            .cloned()
            .unwrap_or_else(|| {
                if !root.join("var/db/repos/gentoo").exists()
                    && root.join("usr/portage/metadata").exists()
                {
                    "/usr/portage".to_string()
                } else {
                    "/var/db/repos/gentoo".to_string()
                }
            });
        list.retain(|(n, _)| *n != main);
        list.insert(0, (main.clone(), Some(loc)));
    }
    let mut out = Vec::new();
    for (name, loc) in list {
        let Some(loc) = loc else {
            skipped.push(Skipped {
                path: format!("repository {name}"),
                reason: "no location in repos.conf".to_string(),
            });
            continue;
        };
        let tree = root.join(loc.trim_start_matches('/'));
        let identity = match crate::fetch::read_tree_identity(&tree) {
            Ok(id) => id,
            Err(e) => {
                skipped.push(Skipped {
                    path: format!("repository {name}"),
                    reason: e.to_string(),
                });
                Default::default()
            }
        };
        let key = |k: &str| {
            repos_conf_entries(bundle)
                .into_iter()
                .filter(|(sec, _)| *sec == name)
                .filter_map(|(_, kv)| kv)
                .filter(|(kk, _)| kk == k)
                .map(|(_, v)| v)
                .next_back()
                .filter(|v| !v.is_empty())
        };
        let (sync_type, sync_uri) = (key("sync-type"), key("sync-uri"));
        let git_commit = if sync_type.as_deref() == Some("git") && name != main {
            match git_head(&tree) {
                Ok(c) => Some(c),
                Err(e) => {
                    skipped.push(Skipped {
                        path: format!("repository {name}"),
                        reason: format!("git HEAD of {}: {e}", tree.display()),
                    });
                    None
                }
            }
        } else {
            None
        };
        out.push(Repo {
            main: name == main,
            name,
            location: loc,
            identity,
            sync_type,
            sync_uri,
            git_commit,
            captured: None,
        });
    }
    out.sort_by(|a, b| b.main.cmp(&a.main).then(a.name.cmp(&b.name)));
    out
}

/// Whether the builder gets overlay `r` from the bundle itself: an overlay that is not
/// git-synced from a source the builder can fetch by commit.
pub fn is_captured(r: &Repo) -> bool {
    let git_synced = r.sync_type.as_deref() == Some("git") && r.sync_uri.is_some();
    !r.main && !git_synced
}

/// Put the trees of local overlays into the bundle under `repos/<name>/` (`.git` left out), at
/// most `limit` bytes in all; record each tree's hash in its `Repo`.
fn capture_overlays(
    root: &Path,
    manifest: &mut Manifest,
    data: &mut BTreeMap<String, Vec<u8>>,
    limit: u64,
) -> Result<(), HostError> {
    let mut total = 0u64;
    let mut any = false;
    for r in manifest.repos.iter_mut().filter(|r| is_captured(r)) {
        let tree = root.join(r.location.trim_start_matches('/'));
        if !tree.is_dir() {
            manifest.skipped.push(Skipped {
                path: format!("repository {}", r.name),
                reason: format!(
                    "{} is not a directory; its tree is not captured",
                    r.location
                ),
            });
            continue;
        }
        let prefix = super::bundle::captured_prefix(&r.name);
        let mut cap = Capture::default();
        capture_tree(&tree, &prefix, &mut cap, &mut total, limit, &r.name)?;
        for s in cap.skipped {
            manifest.skipped.push(s);
        }
        if !any {
            manifest
                .files
                .push(dir_entry(super::bundle::CAPTURED_DIR, &tree));
            any = true;
        }
        r.captured = Some(super::bundle::captured_tree_hash(
            cap.data.iter().map(|(p, d)| (p.as_str(), d.as_slice())),
        ));
        manifest.files.extend(cap.files);
        data.extend(cap.data);
    }
    manifest.files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(())
}

fn dir_entry(rel: &str, abs: &Path) -> FileEntry {
    let meta = std::fs::metadata(abs).ok();
    FileEntry {
        path: rel.to_string(),
        kind: EntryKind::Dir,
        mode: meta.as_ref().map(mode_of).unwrap_or(0o755),
        mtime: meta.as_ref().map(mtime_of).unwrap_or(0),
        size: None,
        sha256: None,
        target: None,
    }
}

/// Files and directories of `dir` as entries below `rel` (symlinks and special files are
/// listed as skipped; a bundle holds no links there).
fn capture_tree(
    dir: &Path,
    rel: &str,
    cap: &mut Capture,
    total: &mut u64,
    limit: u64,
    repo: &str,
) -> Result<(), HostError> {
    cap.files.push(dir_entry(rel, dir));
    let mut names: Vec<std::ffi::OsString> = std::fs::read_dir(dir)
        .map_err(|e| HostError::Capture {
            path: dir.to_path_buf(),
            reason: e.to_string(),
        })?
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    names.sort();
    for n in names {
        let name = n.to_string_lossy().into_owned();
        if name == ".git" {
            continue;
        }
        let abs = dir.join(&n);
        let r = format!("{rel}/{name}");
        let meta = match std::fs::symlink_metadata(&abs) {
            Ok(m) => m,
            Err(e) => {
                cap.skip(&r, e.to_string());
                continue;
            }
        };
        if meta.is_dir() {
            capture_tree(&abs, &r, cap, total, limit, repo)?;
        } else if meta.is_file() {
            *total += meta.len();
            if *total > limit {
                return Err(HostError::Capture {
                    path: abs,
                    reason: format!(
                        "local overlays take more than the {} MiB a bundle captures (repository {repo}): raise the limit with `host export --max-overlay-size MIB`, or give the overlay a git sync-uri in repos.conf so that the builder fetches it by commit",
                        limit >> 20
                    ),
                });
            }
            let d = std::fs::read(&abs).map_err(|e| HostError::Capture {
                path: abs.clone(),
                reason: e.to_string(),
            })?;
            cap.files.push(FileEntry {
                path: r.clone(),
                kind: EntryKind::File,
                mode: mode_of(&meta),
                mtime: mtime_of(&meta),
                size: Some(d.len() as u64),
                sha256: Some(sha256_hex(&d)),
                target: None,
            });
            cap.data.insert(r, d);
        } else {
            cap.skip(&r, "symlink or special file in an overlay: not captured");
        }
    }
    Ok(())
}

/// The commit HEAD names in the git checkout at `tree` (read from `.git` directly: a detached
/// HEAD, a loose ref or `packed-refs`).
pub fn git_head(tree: &Path) -> Result<String, String> {
    let git = tree.join(".git");
    let head = std::fs::read_to_string(git.join("HEAD")).map_err(|e| e.to_string())?;
    let head = head.trim();
    let is_commit = |s: &str| s.len() >= 40 && s.chars().all(|c| c.is_ascii_hexdigit());
    let Some(r) = head.strip_prefix("ref: ") else {
        return if is_commit(head) {
            Ok(head.to_string())
        } else {
            Err(format!("unreadable HEAD {head:?}"))
        };
    };
    if let Ok(c) = std::fs::read_to_string(git.join(r)) {
        if is_commit(c.trim()) {
            return Ok(c.trim().to_string());
        }
    }
    let packed = std::fs::read_to_string(git.join("packed-refs")).unwrap_or_default();
    packed
        .lines()
        .filter_map(|l| l.split_once(' '))
        .find(|(_, name)| *name == r)
        .map(|(c, _)| c.to_string())
        .filter(|c| is_commit(c))
        .ok_or_else(|| format!("{r} not found"))
}

/// Variables asked of `portageq envvar` when `emerge --info` is unavailable.
const PORTAGEQ_VARS: &[&str] = &[
    "USE",
    "CFLAGS",
    "CXXFLAGS",
    "LDFLAGS",
    "FCFLAGS",
    "FFLAGS",
    "RUSTFLAGS",
    "CHOST",
    "CBUILD",
    "FEATURES",
    "ACCEPT_KEYWORDS",
    "ACCEPT_LICENSE",
    "ACCEPT_PROPERTIES",
    "ACCEPT_RESTRICT",
    "CPU_FLAGS_X86",
    "CPU_FLAGS_ARM",
    "CPU_FLAGS_PPC",
    "L10N",
    "LINGUAS",
    "VIDEO_CARDS",
    "INPUT_DEVICES",
    "PYTHON_TARGETS",
    "PYTHON_SINGLE_TARGET",
    "RUBY_TARGETS",
    "LUA_TARGETS",
    "LUA_SINGLE_TARGET",
    "LLVM_TARGETS",
    "ADA_TARGET",
    "PHP_TARGETS",
    "POSTGRES_TARGETS",
    "ABI_X86",
    "GRUB_PLATFORMS",
    "MAKEOPTS",
    "EMERGE_DEFAULT_OPTS",
    "BINPKG_FORMAT",
    "BINPKG_COMPRESS",
];

/// Portage's effective values: `emerge --info`, else `portageq envvar -v`.
fn effective_vars() -> Result<BTreeMap<String, String>, String> {
    let run = |cmd: &mut Command| -> Option<String> {
        let o = cmd
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
    };
    if let Some(out) = run(Command::new("emerge").args(["--info", "--ignore-default-opts"])) {
        let v = parse_info(&out);
        if v.contains_key("CHOST") || v.contains_key("USE") {
            return Ok(v);
        }
    }
    if let Some(out) = run(Command::new("portageq")
        .args(["envvar", "-v"])
        .args(PORTAGEQ_VARS))
    {
        let v = parse_info(&out);
        if !v.is_empty() {
            return Ok(v);
        }
    }
    Err("neither emerge --info nor portageq envvar answered".to_string())
}

/// Every `KEY="value"` pair at the start of a line of `emerge --info` output, including the
/// USE_EXPAND pairs that follow `USE="..."` on the same line.
pub(crate) fn parse_info(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let mut rest = line;
        while let Some(eq) = rest.find("=\"") {
            let key = &rest[..eq];
            if key.is_empty()
                || !key
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
            {
                break;
            }
            let after = &rest[eq + 2..];
            let Some(end) = after.find('"') else { break };
            out.insert(key.to_string(), after[..end].to_string());
            rest = after[end + 1..].trim_start();
        }
    }
    out
}

/// `-march=native` resolved by gcc: the target options of the cc1 line of `gcc -###`.
fn march_native() -> Option<Cpu> {
    let o = Command::new("gcc")
        .args([
            "-###",
            "-march=native",
            "-x",
            "c",
            "-c",
            "-",
            "-o",
            "/dev/null",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&o.stderr);
    let flags = parse_cc1_flags(&text);
    if !flags.is_empty() {
        let march = flags
            .iter()
            .find_map(|f| f.strip_prefix("-march="))
            .map(str::to_string);
        return Some(Cpu {
            march,
            flags,
            source: "gcc -### -march=native".to_string(),
        });
    }
    let o = Command::new("gcc")
        .args(["-march=native", "-Q", "--help=target"])
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&o.stdout);
    let march = text.lines().find_map(|l| {
        let l = l.trim();
        let v = l.strip_prefix("-march=")?.trim();
        (!v.is_empty()).then(|| v.to_string())
    })?;
    Some(Cpu {
        flags: vec![format!("-march={march}")],
        march: Some(march),
        source: "gcc -march=native -Q --help=target".to_string(),
    })
}

/// Target options (`-m...`, `--param=...`) of the cc1 command line in `gcc -###` output.
pub(crate) fn parse_cc1_flags(text: &str) -> Vec<String> {
    let Some(line) = text
        .lines()
        .find(|l| l.contains("/cc1\"") || l.contains("/cc1 ") || l.starts_with(" \"cc1\""))
    else {
        return Vec::new();
    };
    let toks: Vec<String> = line
        .split_whitespace()
        .map(|t| t.trim_matches('"').to_string())
        .collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        let t = &toks[i];
        if t.starts_with("-m") && t != "-mtune=generic" {
            out.push(t.clone());
        } else if t == "--param" && i + 1 < toks.len() {
            out.push(format!("--param={}", toks[i + 1]));
            i += 1;
        } else if t.starts_with("--param=") {
            out.push(t.clone());
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emerge_info_pairs() {
        let v = parse_info(
            "Portage 3.0.63 (python 3.12.3-final-0, default/linux/amd64/23.0, gcc-13)\n\
             ACCEPT_KEYWORDS=\"amd64\"\n\
             CFLAGS=\"-O2 -pipe\"\n\
             USE=\"acl amd64 ssl\" ABI_X86=\"64\" CPU_FLAGS_X86=\"mmx sse sse2\" L10N=\"en de\"\n\
             Unset:  ADDR2LINE, AR\n",
        );
        assert_eq!(v["ACCEPT_KEYWORDS"], "amd64");
        assert_eq!(v["USE"], "acl amd64 ssl");
        assert_eq!(v["CPU_FLAGS_X86"], "mmx sse sse2");
        assert_eq!(v["L10N"], "en de");
        assert!(!v.contains_key("Unset"));
    }

    #[test]
    fn cc1_line() {
        let f = parse_cc1_flags(
            "Target: x86_64-linux-gnu\n \"/usr/lib/gcc/x86_64-linux-gnu/12/cc1\" \"-quiet\" \"-\" \"-march=skylake\" \"-mmmx\" \"-mavx2\" \"--param=l1-cache-size=32\" \"-mtune=skylake\" \"-quiet\"\n",
        );
        assert_eq!(
            f,
            [
                "-march=skylake",
                "-mmmx",
                "-mavx2",
                "--param=l1-cache-size=32",
                "-mtune=skylake"
            ]
        );
    }

    #[test]
    fn profile_paths() {
        let repos = vec![Repo {
            name: "gentoo".into(),
            location: "/var/db/repos/gentoo".into(),
            main: true,
            ..Default::default()
        }];
        let p = profile_of(
            "../../var/db/repos/gentoo/profiles/default/linux/amd64/23.0",
            &repos,
        );
        assert_eq!(p.repo.as_deref(), Some("gentoo"));
        assert_eq!(p.path.as_deref(), Some("default/linux/amd64/23.0"));
        let p = profile_of("/usr/portage/profiles/default/linux/amd64/17.1", &repos);
        assert_eq!(p.repo, None);
        assert_eq!(p.path.as_deref(), Some("default/linux/amd64/17.1"));
    }

    fn overlay_root(extra: &[(&str, &str)]) -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let mut files = vec![
            (
                "etc/portage/repos.conf/local.conf",
                "[local]\nlocation = /var/db/repos/local\n",
            ),
            ("var/db/repos/local/profiles/repo_name", "local\n"),
            ("var/db/repos/local/.git/HEAD", "not captured\n"),
        ];
        files.extend_from_slice(extra);
        for (p, d) in files {
            let p = t.path().join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, d).unwrap();
        }
        t
    }

    #[test]
    fn local_overlays_are_captured_within_the_limit() {
        let big = "x".repeat(3000);
        let t = overlay_root(&[("var/db/repos/local/app-misc/a/a-1.ebuild", &big)]);
        let b = export_root(t.path(), &ExportOptions::config_dir()).unwrap();
        let r = b.manifest.repos.iter().find(|r| r.name == "local").unwrap();
        assert!(r.captured.is_some());
        assert_eq!(
            b.file("repos/local/app-misc/a/a-1.ebuild").map(<[u8]>::len),
            Some(3000)
        );
        assert!(b.file("repos/local/.git/HEAD").is_none());
        let opts = ExportOptions {
            overlay_limit: 2000,
            ..ExportOptions::config_dir()
        };
        let e = export_root(t.path(), &opts).unwrap_err().to_string();
        assert!(
            e.contains("repository local") && e.contains("--max-overlay-size"),
            "{e}"
        );
        assert!(e.contains("a-1.ebuild"), "{e}");
    }

    #[test]
    fn git_heads() {
        let t = tempfile::tempdir().unwrap();
        let g = t.path().join(".git");
        std::fs::create_dir_all(g.join("refs/heads")).unwrap();
        let c = "0123456789abcdef0123456789abcdef01234567";
        std::fs::write(g.join("HEAD"), "ref: refs/heads/master\n").unwrap();
        std::fs::write(
            g.join("packed-refs"),
            format!("# pack-refs\n{c} refs/heads/master\n"),
        )
        .unwrap();
        assert_eq!(git_head(t.path()).unwrap(), c);
        std::fs::write(g.join("refs/heads/master"), c.replace('0', "f")).unwrap();
        assert_eq!(git_head(t.path()).unwrap(), c.replace('0', "f"));
        std::fs::write(g.join("HEAD"), format!("{c}\n")).unwrap();
        assert_eq!(git_head(t.path()).unwrap(), c);
    }
}
