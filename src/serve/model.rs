//! The files the build loop writes for the server to read (`state.json`, `published/info.json`),
//! as in the store contract. Every field is optional and unknown fields are ignored: a server
//! must keep showing what it can while the loop's format grows, so these are read leniently and
//! the raw JSON is passed through to `/api/status` untouched.

use serde::{Deserialize, Serialize};

/// `machines/M/state.json`: the loop's state, written atomically by the builder.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct LoopState {
    pub machine: Option<String>,
    pub state: Option<String>,
    pub pid: Option<i64>,
    pub updated: Option<i64>,
    pub current: Option<Current>,
    pub last_pass: Option<LastPass>,
    pub snapshot: Option<String>,
    pub drift: Vec<String>,
    pub abi_warnings: Vec<AbiWarning>,
    pub counts: Option<Counts>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct Current {
    pub package: Option<String>,
    pub phase: Option<String>,
    pub index: Option<u64>,
    pub total: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct LastPass {
    pub started: Option<i64>,
    pub finished: Option<i64>,
    pub result: Option<String>,
    pub built: Vec<String>,
    pub reused: Option<u64>,
    pub failed_package: Option<String>,
    /// Relative to the machine directory, e.g. `logs/pass-1767225600.log`.
    pub log: Option<String>,
    /// `bootstrap` (the first build of the world set) or `pass`.
    pub kind: Option<String>,
    /// The cleanup steps of the pass, in order.
    pub cleanup: Vec<CleanupStep>,
}

/// One cleanup step of a pass (`preserved-rebuild`, `depclean`, `language-rebuild`, `prune`)
/// with what it rebuilt, removed or pruned.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct CleanupStep {
    pub name: String,
    pub items: Vec<String>,
}

/// A binpkg whose files need a newer glibc or kernel than the host has.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct AbiWarning {
    pub cpv: Option<String>,
    pub file: Option<String>,
    pub requires: Option<String>,
    pub kernel: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct Counts {
    pub binpkgs: Option<u64>,
    pub bytes: Option<u64>,
}

/// `machines/M/published/info.json`: what the last completed pass published.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct PublishedInfo {
    pub machine: Option<String>,
    pub published_at: Option<i64>,
    pub snapshot: Option<SnapshotRef>,
    pub packages: Option<u64>,
    pub bytes: Option<u64>,
    pub held_back: Vec<AbiWarning>,
}

/// The ebuild-tree snapshot the published binpkgs were built on.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct SnapshotRef {
    /// `YYYYMMDD`.
    pub date: Option<String>,
    /// Relative to the store root, e.g. `downloads/gentoo-20260101.tar.xz`.
    pub tarball: Option<String>,
    pub timestamp_chk: Option<String>,
    pub timestamp_commit: Option<String>,
}

impl SnapshotRef {
    /// The date if it is exactly eight digits (it becomes part of URLs and file names).
    pub fn valid_date(&self) -> Option<&str> {
        self.date
            .as_deref()
            .filter(|d| d.len() == 8 && d.bytes().all(|b| b.is_ascii_digit()))
    }
}
