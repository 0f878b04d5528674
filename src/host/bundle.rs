//! The bundle: an uncompressed tar whose first member is the manifest `gbuild-bundle.json`,
//! followed by `etc/portage/...` and `var/lib/portage/{world,world_sets}` in path order, with
//! numeric owners 0, no user or group names and the files' own mtimes (so the same host state
//! gives the same bytes apart from the manifest's creation time; `SOURCE_DATE_EPOCH` fixes that).
//!
//! Loading validates everything before anything is used: only the allowed paths, no `..`, no
//! absolute names, no links except the `etc/portage/make.profile` symlink (recorded, never
//! followed), no duplicates, and every file's size and sha256 equal to the manifest's. An unpacked
//! bundle (a machine's `config/`) is the same tree with the manifest at its top.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::installed::{Installed, INSTALLED_NAME, MAX_INSTALLED_SIZE};
use super::makeconf::{self, MakeConfError, Vars};
use super::HostError;
use crate::beneath::{set_mode_mtime, Beneath};
use crate::fetch::TreeIdentity;
use crate::fsutil::{FsError, IoContext};

/// Name of the manifest, at the top of the bundle and of an unpacked config directory.
pub const MANIFEST_NAME: &str = "gbuild-bundle.json";

/// The host bundle imported into the configuration directory `config` (`machines/<M>/config`),
/// if the configuration is one (an overlay configuration has no manifest) and it loads.
pub fn imported(config: &Path) -> Option<Bundle> {
    if !config.join(MANIFEST_NAME).is_file() {
        return None;
    }
    Bundle::load(config).ok()
}
/// Version of the manifest format; a newer one is refused. Format 2 adds the host's
/// installed-package database (`installed.json`, see `super::installed`); format 1 bundles load
/// without it.
pub const FORMAT_VERSION: u32 = 2;
/// Largest regular file a bundle may carry: /etc/portage holds small text files, the largest
/// real ones being patches under `etc/portage/patches` (a few MB).
pub const MAX_FILE_SIZE: u64 = 64 << 20;
/// Largest total of a bundle's file contents (they are held in memory while the bundle is used).
pub const MAX_TOTAL_SIZE: u64 = 512 << 20;
/// Largest manifest (a few hundred bytes per entry: room for about a million entries).
pub const MAX_MANIFEST_SIZE: u64 = 256 << 20;
/// The only symlink a bundle may hold.
pub const PROFILE_LINK: &str = "etc/portage/make.profile";

/// What a bundle entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
}

/// One captured path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Relative path, e.g. `etc/portage/package.use/x`.
    pub path: String,
    pub kind: EntryKind,
    /// Permission bits (`0o7777` mask).
    pub mode: u32,
    /// Modification time (unix seconds).
    pub mtime: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Symlink target, as stored in the link (not resolved).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// The profile the host's `make.profile` symlink points at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    /// The symlink's target as found, e.g. `../../var/db/repos/gentoo/profiles/default/linux/amd64/23.0`.
    pub link: String,
    /// Repository holding it (by location), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo: Option<String>,
    /// Path relative to the repository's `profiles/`, e.g. `default/linux/amd64/23.0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// A repository the host uses (the main tree or an overlay).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Repo {
    pub name: String,
    /// Location on the host, e.g. `/var/db/repos/gentoo`.
    pub location: String,
    /// Whether it is the main repository (`main-repo`, default `gentoo`).
    pub main: bool,
    /// `metadata/timestamp.*` of the tree (empty for most overlays).
    pub identity: TreeIdentity,
    /// repos.conf's `sync-type` and `sync-uri` (overlays).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_uri: Option<String>,
    /// HEAD commit of a git-synced overlay: the builder checks out exactly that.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_commit: Option<String>,
    /// For an overlay without a sync source, whose tree the bundle carries under
    /// `repos/<name>/`: the sha256 of that tree (`captured_tree_hash`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub captured: Option<String>,
}

/// Where a captured overlay's files are in a bundle.
pub fn captured_prefix(repo: &str) -> String {
    format!("{CAPTURED_DIR}/{repo}")
}

/// The top directory of captured overlay trees in a bundle.
pub const CAPTURED_DIR: &str = "repos";

/// Identity of a captured tree: sha256 over each file's path and content hash, in path order.
pub fn captured_tree_hash<'a>(files: impl Iterator<Item = (&'a str, &'a [u8])>) -> String {
    let mut h = Sha256::new();
    for (p, d) in files {
        h.update(p.as_bytes());
        h.update([0]);
        h.update(sha256_hex(d).as_bytes());
        h.update([b'\n']);
    }
    hex::encode(h.finalize())
}

/// Where the captured variables come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VarSource {
    /// `emerge --info` / `portageq envvar`: profile, make.conf and environment combined.
    #[serde(rename = "effective")]
    Effective,
    /// Parsed from make.conf (+ make.conf.d) only.
    #[serde(rename = "make.conf")]
    MakeConf,
}

impl std::fmt::Display for VarSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            VarSource::Effective => "effective",
            VarSource::MakeConf => "make.conf",
        })
    }
}

/// `-march=native` as gcc resolves it on the machine that exported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cpu {
    /// The resolved `-march=` value, e.g. `skylake`.
    pub march: Option<String>,
    /// Every target option gcc passes for `-march=native`, e.g. `-march=skylake`, `-mavx2`, ...
    pub flags: Vec<String>,
    /// The command it came from.
    pub source: String,
}

/// A path not captured, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    pub path: String,
    pub reason: String,
}

/// The manifest (`gbuild-bundle.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    /// Host name of the exporting machine.
    pub host: String,
    /// Creation time (unix seconds).
    pub created: u64,
    /// `uname -r` style kernel release, when known.
    pub kernel: Option<String>,
    /// Where the kernel release came from (`--kernel`, `uname`, a file).
    pub kernel_source: String,
    pub profile: Option<Profile>,
    pub repos: Vec<Repo>,
    /// Whether `variables` are Portage's effective values or make.conf's.
    pub variables_source: VarSource,
    pub variables: BTreeMap<String, String>,
    /// make.conf (+ make.conf.d) as parsed, whatever `variables_source` is.
    pub make_conf: BTreeMap<String, String>,
    pub cpu: Option<Cpu>,
    pub files: Vec<FileEntry>,
    #[serde(default)]
    pub skipped: Vec<Skipped>,
}

/// A loaded, validated bundle: its manifest and the content of its regular files.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub manifest: Manifest,
    data: BTreeMap<String, Vec<u8>>,
    /// The host's installed packages (`installed.json`), checked when the bundle was loaded.
    installed: Option<Installed>,
}

/// Lowercase hex sha256.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Why a relative path may not be in a bundle, or None when it may.
fn path_problem(path: &str) -> Option<&'static str> {
    if path.is_empty() {
        return Some("empty path");
    }
    if path.starts_with('/') {
        return Some("absolute path");
    }
    if path.contains('\0') {
        return Some("nul byte in path");
    }
    for c in path.split('/') {
        match c {
            ".." => return Some("path escapes the bundle (..)"),
            "." | "" => return Some("path is not normalized"),
            _ => {}
        }
    }
    let allowed = matches!(path, "etc" | "var" | "var/lib" | "var/lib/portage")
        || path == "etc/portage"
        || path.starts_with("etc/portage/")
        || path == "var/lib/portage/world"
        || path == "var/lib/portage/world_sets"
        || path == CAPTURED_DIR
        || path.starts_with("repos/")
        || path == INSTALLED_NAME;
    if !allowed {
        return Some("path not allowed in a bundle (only etc/portage/**, var/lib/portage/world, var/lib/portage/world_sets, repos/**, installed.json)");
    }
    None
}

impl Bundle {
    /// A bundle from a manifest and its files' contents (the exporter's constructor). The
    /// manifest's file entries must describe `data` (not checked here).
    pub fn from_parts(manifest: Manifest, data: BTreeMap<String, Vec<u8>>) -> Bundle {
        let installed = data
            .get(INSTALLED_NAME)
            .and_then(|d| Installed::parse(d).ok());
        Bundle {
            manifest,
            data,
            installed,
        }
    }

    /// Check `installed.json` (when there is one) and make the bundle.
    fn checked(
        manifest: Manifest,
        data: BTreeMap<String, Vec<u8>>,
        label: &Path,
    ) -> Result<Bundle, HostError> {
        let installed = match data.get(INSTALLED_NAME) {
            Some(d) => {
                Some(Installed::parse(d).map_err(|e| HostError::entry(label, INSTALLED_NAME, e))?)
            }
            None => None,
        };
        Ok(Bundle {
            manifest,
            data,
            installed,
        })
    }

    /// The host's installed-package database (format 2 bundles of a root with `var/db/pkg`).
    pub fn installed(&self) -> Option<&Installed> {
        self.installed.as_ref()
    }

    /// Load a bundle tar file, or an unpacked bundle directory (a machine's `config/`). A
    /// directory without a manifest (e.g. the `default` machine's config) is captured as a
    /// root with `export_root` instead.
    pub fn load(path: &Path) -> Result<Bundle, HostError> {
        let meta = std::fs::metadata(path).at("read", path)?;
        if meta.is_dir() {
            if path.join(MANIFEST_NAME).exists() {
                Self::from_dir(path)
            } else {
                super::export_root(path, &super::ExportOptions::config_dir())
            }
        } else {
            let f = std::fs::File::open(path).at("open", path)?;
            Self::from_tar(std::io::BufReader::new(f), path)
        }
    }

    /// Read and validate a bundle tar; `label` names it in errors. The manifest comes first and
    /// every later entry is checked against it from its header alone (listed, same type, same
    /// size, within the caps) before a byte of its content is read; contents are hashed as they
    /// are read. An unlisted or oversized entry is refused without reading it.
    pub fn from_tar(r: impl Read, label: &Path) -> Result<Bundle, HostError> {
        let mut ar = tar::Archive::new(r);
        let mut manifest: Option<Manifest> = None;
        let mut index: BTreeMap<String, usize> = BTreeMap::new();
        let mut seen: Vec<bool> = Vec::new();
        let mut data = BTreeMap::new();
        let tar_err = |e: std::io::Error| HostError::bundle(label, format!("read tar: {e}"));
        for entry in ar.entries().map_err(tar_err)? {
            let mut entry = entry.map_err(tar_err)?;
            let raw = entry.path_bytes().into_owned();
            let name = String::from_utf8(raw).map_err(|e| {
                HostError::entry(
                    label,
                    &String::from_utf8_lossy(e.as_bytes()),
                    "name is not utf-8",
                )
            })?;
            let kind = entry.header().entry_type();
            let path = name.strip_suffix('/').unwrap_or(&name);
            let path = path.strip_prefix("./").unwrap_or(path).to_string();
            let size = entry.size();
            let Some(m) = &manifest else {
                if path != MANIFEST_NAME || !kind.is_file() {
                    return Err(HostError::entry(
                        label,
                        &name,
                        format!("the first entry must be the manifest {MANIFEST_NAME}"),
                    ));
                }
                if size > MAX_MANIFEST_SIZE {
                    return Err(HostError::entry(
                        label,
                        &name,
                        format!(
                            "manifest of {size} bytes, more than the {MAX_MANIFEST_SIZE} allowed"
                        ),
                    ));
                }
                let mut buf = Vec::with_capacity(size as usize);
                entry.read_to_end(&mut buf).map_err(tar_err)?;
                let m: Manifest = serde_json::from_slice(&buf).map_err(|e| {
                    HostError::entry(label, &name, format!("invalid manifest: {e}"))
                })?;
                check_manifest(&m, label)?;
                for (i, f) in m.files.iter().enumerate() {
                    index.insert(f.path.clone(), i);
                }
                seen = vec![false; m.files.len()];
                manifest = Some(m);
                continue;
            };
            if path == MANIFEST_NAME {
                return Err(HostError::entry(
                    label,
                    &name,
                    "manifest is not a single file",
                ));
            }
            if !(kind.is_file() || kind.is_dir() || kind.is_symlink()) {
                return Err(HostError::entry(
                    label,
                    &name,
                    format!("entry type {kind:?} not allowed (only files, directories and the make.profile symlink)"),
                ));
            }
            if let Some(p) = path_problem(&path) {
                return Err(HostError::entry(label, &name, p));
            }
            let Some(&i) = index.get(&path) else {
                return Err(HostError::entry(label, &name, "not listed in the manifest"));
            };
            if std::mem::replace(&mut seen[i], true) {
                return Err(HostError::entry(label, &name, "duplicate entry"));
            }
            let f = &m.files[i];
            match f.kind {
                EntryKind::File if kind.is_file() => {
                    if f.size != Some(size) {
                        return Err(HostError::entry(
                            label,
                            &f.path,
                            format!(
                                "size {size} in the tar header differs from the manifest's {}",
                                f.size.unwrap_or(0)
                            ),
                        ));
                    }
                    data.insert(path, read_checked(&mut entry, f, label)?);
                }
                EntryKind::Dir if kind.is_dir() => {}
                EntryKind::Symlink if kind.is_symlink() => {
                    let t = entry
                        .link_name_bytes()
                        .map(|b| String::from_utf8_lossy(&b).into_owned())
                        .unwrap_or_default();
                    if f.target.as_deref() != Some(t.as_str()) {
                        return Err(HostError::entry(
                            label,
                            &f.path,
                            format!(
                                "symlink target {t:?} differs from the manifest's {:?}",
                                f.target.as_deref().unwrap_or("")
                            ),
                        ));
                    }
                }
                _ => {
                    return Err(HostError::entry(
                        label,
                        &name,
                        "of another type than the manifest says",
                    ))
                }
            }
        }
        let manifest =
            manifest.ok_or_else(|| HostError::bundle(label, format!("no {MANIFEST_NAME}")))?;
        if let Some(i) = seen.iter().position(|s| !s) {
            return Err(HostError::entry(
                label,
                &manifest.files[i].path,
                "listed in the manifest but missing",
            ));
        }
        Self::checked(manifest, data, label)
    }

    /// Read and validate an unpacked bundle directory (manifest at its top).
    pub fn from_dir(dir: &Path) -> Result<Bundle, HostError> {
        let mpath = dir.join(MANIFEST_NAME);
        let text = std::fs::read(&mpath).at("read", &mpath)?;
        let manifest: Manifest = serde_json::from_slice(&text)
            .map_err(|e| HostError::entry(dir, MANIFEST_NAME, format!("invalid manifest: {e}")))?;
        check_manifest(&manifest, dir)?;
        let mut data = BTreeMap::new();
        let root = Beneath::open(dir)?;
        for f in &manifest.files {
            let p = dir.join(&f.path);
            let meta = std::fs::symlink_metadata(&p).at("read", &p)?;
            match f.kind {
                EntryKind::File if meta.is_file() => {
                    if f.size != Some(meta.len()) {
                        return Err(HostError::entry(
                            dir,
                            &f.path,
                            format!("size {} differs from the manifest's", meta.len()),
                        ));
                    }
                    let mut d = Vec::new();
                    root.open_file(&f.path)?
                        .read_to_end(&mut d)
                        .at("read", &p)?;
                    check_file(f, &d, dir)?;
                    data.insert(f.path.clone(), d);
                }
                EntryKind::Dir if meta.is_dir() => {}
                EntryKind::Symlink if meta.file_type().is_symlink() => {
                    let t = std::fs::read_link(&p).at("read link", &p)?;
                    if Some(t.to_string_lossy().as_ref()) != f.target.as_deref() {
                        return Err(HostError::entry(
                            dir,
                            &f.path,
                            "symlink target differs from the manifest's",
                        ));
                    }
                }
                _ => {
                    return Err(HostError::entry(
                        dir,
                        &f.path,
                        "of another type than the manifest says",
                    ))
                }
            }
        }
        Self::checked(manifest, data, dir)
    }

    /// Content of a captured regular file.
    pub fn file(&self, path: &str) -> Option<&[u8]> {
        self.data.get(path).map(Vec::as_slice)
    }

    /// The same bundle with the regular file `path` set to `data` (its entry added or
    /// updated; directories above it must be listed already, as `var/lib/portage` is for a
    /// world file).
    pub fn with_file(mut self, path: &str, data: Vec<u8>) -> Bundle {
        let (size, sha) = (data.len() as u64, sha256_hex(&data));
        match self.manifest.files.iter_mut().find(|f| f.path == path) {
            Some(f) => {
                f.size = Some(size);
                f.sha256 = Some(sha);
            }
            None => {
                self.manifest.files.push(FileEntry {
                    path: path.to_string(),
                    kind: EntryKind::File,
                    mode: 0o644,
                    mtime: 0,
                    size: Some(size),
                    sha256: Some(sha),
                    target: None,
                });
                self.manifest.files.sort_by(|a, b| a.path.cmp(&b.path));
            }
        }
        self.data.insert(path.to_string(), data);
        self
    }

    /// A captured path's entry.
    pub fn entry(&self, path: &str) -> Option<&FileEntry> {
        self.manifest.files.iter().find(|f| f.path == path)
    }

    /// Regular files whose path is `prefix` itself or lies under `prefix/`, in path order.
    pub fn files_under<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a str, &'a [u8])> {
        self.data
            .iter()
            .filter(move |(p, _)| {
                p.as_str() == prefix
                    || (p.starts_with(prefix) && p.as_bytes().get(prefix.len()) == Some(&b'/'))
            })
            .map(|(p, d)| (p.as_str(), d.as_slice()))
    }

    /// The main repository (the one marked main, else one named `gentoo`).
    pub fn main_repo(&self) -> Option<&Repo> {
        let r = &self.manifest.repos;
        r.iter()
            .find(|r| r.main)
            .or_else(|| r.iter().find(|r| r.name == "gentoo"))
    }

    /// The file date `YYYYMMDD` of the Gentoo snapshot holding the main tree, by Gentoo's
    /// convention (the day before its timestamp), when known. For showing; the snapshot itself
    /// is found by the tree's timestamp (`fetch::fetch_snapshot_of_tree`).
    pub fn snapshot_date(&self) -> Option<String> {
        self.main_repo()?.identity.snapshot_name_date()
    }

    /// make.conf (file or directory) then make.conf.d/, parsed from the captured files.
    pub fn make_conf_vars(&self) -> Result<Vars, MakeConfError> {
        let mut vars = Vars::new();
        for base in ["etc/portage/make.conf", "etc/portage/make.conf.d"] {
            let files: Vec<(&str, &[u8])> = self
                .files_under(base)
                .filter(|(p, _)| p.rsplit('/').next().is_some_and(makeconf::is_config_name))
                .collect();
            for (p, d) in files {
                let text = String::from_utf8_lossy(d);
                makeconf::parse_into(&text, p, &mut vars, &mut |src| {
                    let rel = match src.strip_prefix('/') {
                        Some(abs) => abs.to_string(),
                        None => format!("etc/portage/{src}"),
                    };
                    self.file(&rel)
                        .map(|d| (rel.clone(), String::from_utf8_lossy(d).into_owned()))
                })?;
            }
        }
        Ok(vars)
    }

    /// Write the bundle as a tar: manifest first, then every entry in path order.
    pub fn write_tar<W: Write>(&self, w: W) -> std::io::Result<W> {
        let mut b = tar::Builder::new(w);
        b.mode(tar::HeaderMode::Deterministic);
        let json = self.manifest_json();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_mtime(self.manifest.created);
        h.set_uid(0);
        h.set_gid(0);
        h.set_size(json.len() as u64);
        b.append_data(&mut h, MANIFEST_NAME, json.as_slice())?;
        let mut files: Vec<&FileEntry> = self.manifest.files.iter().collect();
        files.sort_by(|a, b| a.path.cmp(&b.path));
        for f in files {
            let mut h = tar::Header::new_gnu();
            h.set_mode(f.mode & 0o7777);
            h.set_mtime(f.mtime);
            h.set_uid(0);
            h.set_gid(0);
            match f.kind {
                EntryKind::File => {
                    let d = self.data.get(&f.path).map(Vec::as_slice).unwrap_or(&[]);
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(d.len() as u64);
                    b.append_data(&mut h, &f.path, d)?;
                }
                EntryKind::Dir => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_size(0);
                    b.append_data(&mut h, format!("{}/", f.path), std::io::empty())?;
                }
                EntryKind::Symlink => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_size(0);
                    b.append_link(&mut h, &f.path, f.target.as_deref().unwrap_or(""))?;
                }
            }
        }
        b.into_inner()
    }

    /// The manifest as written into the bundle (pretty JSON, trailing newline).
    pub fn manifest_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(&self.manifest).expect("manifest serializes");
        v.push(b'\n');
        v
    }

    /// Write the bundle tar to `path` atomically.
    pub fn write_tar_file(&self, path: &Path) -> Result<(), FsError> {
        let mut f = crate::fsutil::AtomicFile::create(path)?;
        let tmp = f.tmp_path().to_path_buf();
        {
            let w = std::io::BufWriter::new(f.file());
            let mut w = self.write_tar(w).at("write", &tmp)?;
            w.flush().at("write", &tmp)?;
        }
        f.commit()
    }

    /// Unpack into `dir`, which must not exist (the caller renames it into place): every entry
    /// with its mode (made owner-writable, never group- or other-writable, no set-id bits) and
    /// mtime, the make.profile symlink as a symlink, and
    /// the manifest at the top. Every path is created beneath `dir` without following a link
    /// (see `crate::beneath`), so no entry can land outside it whatever the manifest says.
    pub fn unpack(&self, dir: &Path) -> Result<(), FsError> {
        std::fs::create_dir(dir).at("create directory", dir)?;
        let root = Beneath::open(dir)?;
        let mut files: Vec<&FileEntry> = self.manifest.files.iter().collect();
        files.sort_by(|a, b| a.path.cmp(&b.path));
        for f in &files {
            if let Some((parent, _)) = f.path.rsplit_once('/') {
                root.create_dir_all(parent, 0o755)?;
            }
            match f.kind {
                EntryKind::Dir => root.create_dir(&f.path, 0o700)?,
                EntryKind::File => {
                    let p = root.path(&f.path);
                    let d = self.data.get(&f.path).map(Vec::as_slice).unwrap_or(&[]);
                    let mut out = root.create_file(&f.path, 0o600)?;
                    out.write_all(d).at("write", &p)?;
                    set_mode_mtime(&out, &p, store_mode(f.mode, 0o600), f.mtime)?;
                }
                EntryKind::Symlink => {
                    root.symlink(&f.path, f.target.as_deref().unwrap_or(""))?;
                }
            }
        }
        for f in files.iter().rev().filter(|f| f.kind == EntryKind::Dir) {
            let d = root.open_dir(&f.path)?;
            set_mode_mtime(&d, &root.path(&f.path), store_mode(f.mode, 0o700), f.mtime)?;
        }
        let m = MANIFEST_NAME;
        let mut out = root.create_file(m, 0o644)?;
        out.write_all(&self.manifest_json())
            .at("write", &root.path(m))?;
        drop(out);
        // One flush of the whole tree instead of an fsync per file (a 100,000-file bundle took
        // minutes): durable before the caller renames it into place.
        root.sync_filesystem()
    }
}

/// The mode a store copy of a bundle entry gets: the bundle's permission bits without group and
/// other write (nor set-id or sticky bits), plus `owner` (what gbuild needs to manage the tree).
fn store_mode(mode: u32, owner: u32) -> u32 {
    (mode & 0o755) | owner
}

fn check_manifest(m: &Manifest, label: &Path) -> Result<(), HostError> {
    if m.format > FORMAT_VERSION {
        return Err(HostError::bundle(
            label,
            format!(
                "manifest format {} is newer than this gbuild understands ({FORMAT_VERSION})",
                m.format
            ),
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    for f in &m.files {
        if let Some(p) = path_problem(&f.path) {
            return Err(HostError::entry(label, &f.path, p));
        }
        if !seen.insert(f.path.as_str()) {
            return Err(HostError::entry(
                label,
                &f.path,
                "listed twice in the manifest",
            ));
        }
        if f.kind == EntryKind::Symlink && f.path != PROFILE_LINK {
            return Err(HostError::entry(
                label,
                &f.path,
                "symlink not allowed (only etc/portage/make.profile)",
            ));
        }
        if f.path == INSTALLED_NAME {
            if f.kind != EntryKind::File {
                return Err(HostError::entry(label, &f.path, "must be a regular file"));
            }
            let size = f.size.unwrap_or(0);
            if size > MAX_INSTALLED_SIZE {
                return Err(HostError::entry(
                    label,
                    &f.path,
                    format!("{size} bytes, more than the {MAX_INSTALLED_SIZE} the installed-package database may have"),
                ));
            }
        }
        if f.kind == EntryKind::File && (f.sha256.is_none() || f.size.is_none()) {
            return Err(HostError::entry(
                label,
                &f.path,
                "manifest entry has no sha256 or size",
            ));
        }
    }
    let mut total = 0u64;
    for f in m.files.iter().filter(|f| f.kind == EntryKind::File) {
        let size = f.size.unwrap_or(0);
        if size > MAX_FILE_SIZE {
            return Err(HostError::entry(
                label,
                &f.path,
                format!("{size} bytes, more than the {MAX_FILE_SIZE} a bundle file may have"),
            ));
        }
        total = total.saturating_add(size);
    }
    if total > MAX_TOTAL_SIZE {
        return Err(HostError::bundle(
            label,
            format!(
                "files of {total} bytes in all, more than the {MAX_TOTAL_SIZE} a bundle may have"
            ),
        ));
    }
    // Only directories may have entries below them: nothing is unpacked through the profile
    // symlink, and a tree with a file `x` and an entry `x/y` cannot be unpacked at all.
    let kinds: BTreeMap<&str, EntryKind> =
        m.files.iter().map(|f| (f.path.as_str(), f.kind)).collect();
    for f in &m.files {
        let mut end = 0;
        while let Some(i) = f.path[end..].find('/') {
            let above = &f.path[..end + i];
            match kinds.get(above) {
                Some(EntryKind::Symlink) => {
                    return Err(HostError::entry(
                        label,
                        &f.path,
                        format!("lies below the symlink {above}"),
                    ))
                }
                Some(EntryKind::File) => {
                    return Err(HostError::entry(
                        label,
                        &f.path,
                        format!("lies below {above}, which is a file"),
                    ))
                }
                _ => {}
            }
            end += i + 1;
        }
    }
    check_profile(m, label)
}

/// The make.profile link must name a profile inside one of the recorded repositories (where the
/// builder mounts them), and the manifest's profile must be what the link says: a link to
/// `/etc` or anywhere else is refused, and `diff` can trust `manifest.profile`.
fn check_profile(m: &Manifest, label: &Path) -> Result<(), HostError> {
    let link = m
        .files
        .iter()
        .find(|f| f.path == PROFILE_LINK && f.kind == EntryKind::Symlink);
    let Some(link) = link else {
        if m.profile.is_some() {
            return Err(HostError::entry(
                label,
                PROFILE_LINK,
                "the manifest records a profile but the bundle has no make.profile symlink",
            ));
        }
        return Ok(());
    };
    let target = link.target.as_deref().unwrap_or("");
    let bad = |why: String| Err(HostError::entry(label, PROFILE_LINK, why));
    for r in &m.repos {
        let loc = r.location.trim_end_matches('/');
        let normal = loc.starts_with('/')
            && loc.len() > 1
            && loc[1..].split('/').all(|c| !matches!(c, "" | "." | ".."));
        if !normal {
            return Err(HostError::bundle(
                label,
                format!(
                    "repository {:?} has location {:?}, not an absolute normalized path",
                    r.name, r.location
                ),
            ));
        }
    }
    let found = profile_of(target, &m.repos);
    if found.repo.is_none() || found.path.as_deref().is_none_or(str::is_empty) {
        let locs: Vec<String> = m
            .repos
            .iter()
            .map(|r| format!("{}/profiles", r.location.trim_end_matches('/')))
            .collect();
        return bad(format!(
            "symlink target {target:?} is not a profile below {} (set the profile with eselect profile and export again)",
            if locs.is_empty() { "any recorded repository".to_string() } else { locs.join(" or ") }
        ));
    }
    if m.profile.as_ref() != Some(&found) {
        return bad(format!(
            "the manifest's profile {:?} differs from the symlink's {:?}",
            m.profile
                .as_ref()
                .map(|p| (p.repo.as_deref(), p.path.as_deref(), p.link.as_str())),
            (
                found.repo.as_deref(),
                found.path.as_deref(),
                found.link.as_str()
            )
        ));
    }
    Ok(())
}

fn check_file(f: &FileEntry, d: &[u8], label: &Path) -> Result<(), HostError> {
    check_digest(f, d.len() as u64, &sha256_hex(d), label)
}

/// Read a file's content from `r`, hashing as it comes, and check it against `f`.
fn read_checked(r: &mut impl Read, f: &FileEntry, label: &Path) -> Result<Vec<u8>, HostError> {
    let mut d = Vec::with_capacity(f.size.unwrap_or(0).min(MAX_FILE_SIZE) as usize);
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(HostError::entry(label, &f.path, format!("read: {e}"))),
        };
        h.update(&buf[..n]);
        d.extend_from_slice(&buf[..n]);
    }
    check_digest(f, d.len() as u64, &hex::encode(h.finalize()), label)?;
    Ok(d)
}

fn check_digest(f: &FileEntry, len: u64, h: &str, label: &Path) -> Result<(), HostError> {
    if f.size != Some(len) {
        return Err(HostError::entry(
            label,
            &f.path,
            format!(
                "size {len} differs from the manifest's {}",
                f.size.unwrap_or(0)
            ),
        ));
    }
    if f.sha256.as_deref() != Some(h) {
        return Err(HostError::entry(
            label,
            &f.path,
            format!(
                "sha256 {h} differs from the manifest's {}",
                f.sha256.as_deref().unwrap_or("")
            ),
        ));
    }
    Ok(())
}

/// Lexically normalize an absolute path (no filesystem access).
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    out
}

/// The profile a `make.profile` target names: the repository whose location holds it and the
/// path below that repository's `profiles/`.
pub(crate) fn profile_of(target: &str, repos: &[Repo]) -> Profile {
    let abs = normalize(&Path::new("/etc/portage").join(target));
    let abs_s = abs.to_string_lossy().into_owned();
    for r in repos {
        let prefix = format!("{}/profiles/", r.location.trim_end_matches('/'));
        if let Some(rest) = abs_s.strip_prefix(&prefix) {
            return Profile {
                link: target.to_string(),
                repo: Some(r.name.clone()),
                path: Some(rest.to_string()),
            };
        }
    }
    Profile {
        link: target.to_string(),
        repo: None,
        path: abs_s
            .rfind("/profiles/")
            .map(|i| abs_s[i + "/profiles/".len()..].to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(path_problem("etc/portage/make.conf"), None);
        assert_eq!(path_problem("var/lib/portage/world"), None);
        assert!(path_problem("../x").is_some());
        assert!(path_problem("/etc/portage/x").is_some());
        assert!(path_problem("etc/portage/../../x").is_some());
        assert!(path_problem("etc/shadow").is_some());
        assert!(path_problem("var/lib/portage/other").is_some());
    }

    /// Whatever the manifest says (validation bypassed here), unpack never follows a link.
    #[test]
    fn unpack_never_writes_through_a_link() {
        let t = tempfile::tempdir().unwrap();
        let outside = t.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        let evil = b"evil\n".to_vec();
        let entry = |path: &str, kind, target: Option<String>| FileEntry {
            path: path.into(),
            kind,
            mode: 0o644,
            mtime: 0,
            size: (kind == EntryKind::File).then_some(evil.len() as u64),
            sha256: (kind == EntryKind::File).then(|| sha256_hex(&evil)),
            target,
        };
        for target in [
            outside.display().to_string(),
            "../../../outside".to_string(),
        ] {
            let m = Manifest {
                format: 1,
                host: "h".into(),
                created: 0,
                kernel: None,
                kernel_source: "none".into(),
                profile: None,
                repos: Vec::new(),
                variables_source: VarSource::MakeConf,
                variables: BTreeMap::new(),
                make_conf: BTreeMap::new(),
                cpu: None,
                files: vec![
                    entry("etc/portage", EntryKind::Dir, None),
                    entry(PROFILE_LINK, EntryKind::Symlink, Some(target.clone())),
                    entry("etc/portage/make.profile/x", EntryKind::File, None),
                ],
                skipped: Vec::new(),
            };
            assert!(check_manifest(&m, Path::new("b")).is_err());
            let data = BTreeMap::from([("etc/portage/make.profile/x".to_string(), evil.clone())]);
            let b = Bundle::from_parts(m, data);
            let dir = t.path().join("config");
            let e = b.unpack(&dir).unwrap_err();
            assert!(e.path.starts_with(dir.join(PROFILE_LINK)), "{e}");
            assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0, "{target}");
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }
}
