//! `machines/<M>/state.json`: the build loop's state as `status`, `serve` and people read it.
//! Written atomically at every change of state, package or phase.

use serde::{Deserialize, Serialize};

use super::{Machine, MachineLock};

/// One step of a pass's cleanup half (`preserved-rebuild`, `depclean`, `language-rebuild`,
/// `prune`) and what it did: packages rebuilt or removed, binpkgs pruned.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CleanupStep {
    pub name: String,
    pub items: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Current {
    pub package: String,
    pub phase: String,
    pub index: usize,
    pub total: usize,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LastPass {
    pub started: u64,
    pub finished: Option<u64>,
    /// `success`, `failed` or `running`.
    pub result: String,
    pub built: Vec<String>,
    pub reused: usize,
    pub failed_package: Option<String>,
    /// Relative to the machine directory.
    pub log: String,
    /// `bootstrap` for the first build of the world set, else `pass`.
    #[serde(default)]
    pub kind: String,
    /// The cleanup steps that ran, in order.
    #[serde(default)]
    pub cleanup: Vec<CleanupStep>,
}

impl LastPass {
    /// `preserved-rebuild 1, depclean 2, language-rebuild 0, prune 3`.
    pub fn cleanup_summary(&self) -> String {
        self.cleanup
            .iter()
            .map(|s| format!("{} {}", s.name, s.items.len()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct AbiWarning {
    pub cpv: String,
    pub file: String,
    pub requires: String,
    pub kernel: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Counts {
    pub binpkgs: usize,
    pub bytes: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct State {
    pub machine: String,
    /// `idle`, `building`, `failed`, `waiting` or `stopped`.
    pub state: String,
    pub pid: Option<u32>,
    pub updated: u64,
    pub current: Option<Current>,
    pub last_pass: Option<LastPass>,
    pub snapshot: Option<String>,
    #[serde(default)]
    pub drift: Vec<String>,
    #[serde(default)]
    pub abi_warnings: Vec<AbiWarning>,
    #[serde(default)]
    pub counts: Counts,
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl State {
    pub fn path(m: &Machine) -> std::path::PathBuf {
        m.dir().join("state.json")
    }

    fn idle(m: &Machine) -> State {
        State {
            machine: m.name.clone(),
            state: "idle".into(),
            ..State::default()
        }
    }

    /// The saved state, or an idle one (also when it cannot be read: the loop, which calls this,
    /// then writes a fresh one).
    pub fn load(m: &Machine) -> State {
        Self::read(m).unwrap_or_else(|_| Self::idle(m))
    }

    /// The saved state, an idle one when there is none yet, or the error naming the file when it
    /// exists but cannot be read or parsed (what `status` reports).
    pub fn read(m: &Machine) -> super::Result<State> {
        let path = Self::path(m);
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| {
                super::BuilderError::Other(format!("{}: invalid state: {e}", path.display()))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::idle(m)),
            Err(e) => Err(crate::fsutil::FsError::new("read", &path, e).into()),
        }
    }

    pub fn save(&mut self, m: &MachineLock) -> super::Result<()> {
        self.machine = m.name.clone();
        self.updated = now();
        crate::fsutil::atomic_write(
            &Self::path(m),
            &serde_json::to_vec_pretty(self).expect("json"),
        )?;
        Ok(())
    }
}
