//! The build loop's files as `status`, `serve` and people read them, one schema each, written and
//! read by the same types: `machines/<M>/state.json` (the loop's state, written atomically at
//! every change of state, package or phase) and each generation's `info.json` (what a
//! publication holds; `published/info.json` is the served one's). Readers are lenient (`#[serde(default)]`, unknown fields and words
//! ignored), so a server keeps showing what it can of files written by another version.

use serde::{Deserialize, Serialize};

use super::{Machine, MachineLock};

/// One step of a pass's cleanup half (`preserved-rebuild`, `depclean`, `language-rebuild`,
/// `prune`) and what it did: packages rebuilt or removed, binpkgs pruned.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct CleanupStep {
    pub name: String,
    pub items: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Current {
    pub package: String,
    pub phase: String,
    pub index: usize,
    pub total: usize,
}

/// Declares a word-valued enum of an on-disk file: lowercase (kebab-case) words, an unknown word
/// read as `Unknown`, shown as the word.
macro_rules! word_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $v:ident => $w:literal,)* }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vm])* #[serde(rename = $w)] $v,)*
            /// A word this version does not know (a file of another version).
            #[default]
            #[serde(other, rename = "unknown")]
            Unknown,
        }
        impl $name {
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$v => $w,)*
                    $name::Unknown => "unknown",
                }
            }
        }
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

word_enum! {
    /// What the loop of a machine is doing (`state.json` `state`).
    LoopState {
        Idle => "idle",
        Building => "building",
        /// The last pass failed; the loop idles until `resume` or a configuration change.
        Failed => "failed",
        /// Between passes: the interval or `resume`.
        Waiting => "waiting",
        /// Shown when the recorded loop's process is gone (never written by a loop).
        Stopped => "stopped",
        /// The last pass built, but the publish gate kept the previous publication; the loop
        /// waits for the interval, `resume` or a configuration change.
        Held => "held",
    }
}

word_enum! {
    /// How a pass ended (`state.json` `last_pass.result`).
    PassOutcome {
        Success => "success",
        Failed => "failed",
        Running => "running",
        /// Built, but the publish gate kept the previous publication.
        Held => "held",
    }
}

word_enum! {
    /// What the publish gate decided (`state.json` `gate.result`, `super::gate`).
    GateResult {
        /// The host's upgrade takes everything from this builder's binpkgs: published.
        Passed => "passed",
        /// It would not: the previous publication stays.
        Held => "held",
        /// It would not, and gbuild.toml's `publish_held` published it all the same.
        PublishedAnyway => "published-anyway",
        /// Not run (no host installed-package database); published as before.
        Skipped => "skipped",
    }
}

/// A package the host's upgrade would compile or could not install, with emerge's reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct GateProblem {
    /// A CPV, an atom, or `emerge` when emerge failed without naming a package.
    pub package: String,
    pub reason: String,
}

/// What the publish gate found (`state.json` `gate`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Gate {
    pub result: GateResult,
    /// When it ran (unix seconds).
    pub checked: u64,
    /// Why it did not run (`skipped`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The upgrade as run, e.g. `emerge --pretend --usepkg --update --deep --newuse ... @world`.
    pub command: String,
    /// The merges the host would do from binpkgs (`[binary ...]` lines).
    pub merges: Vec<String>,
    pub problems: Vec<GateProblem>,
    /// Relative to the machine directory.
    pub log: String,
}

word_enum! {
    /// How a step of a pass or the first build ended (`state.json` `last_pass.steps[].result`).
    StepResult {
        /// Started and not ended: the step a pass is in, or the one a killed pass was in.
        Running => "running",
        Done => "done",
        /// Done before with the same inputs, or nothing to do.
        Skipped => "skipped",
        Failed => "failed",
    }
}

/// One step of a pass (`builder::pass::Step`) or of the first build (`builder::bootstrap::Step`)
/// as it ran (`builder::steps`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct StepRecord {
    pub name: String,
    pub result: StepResult,
    /// The hash of the list's inputs (a pass: image, snapshot, configuration, requests; the
    /// first build: stage3, configuration, snapshot, recipe).
    pub key: String,
    /// When it started (unix seconds).
    pub started: u64,
    /// How long it ran, in milliseconds (0 while it runs, and when skipped).
    pub duration_ms: u64,
}

word_enum! {
    /// Which kind of pass (`state.json` `last_pass.kind`).
    PassKind {
        /// The first build of the world set.
        Bootstrap => "bootstrap",
        Pass => "pass",
        /// The swap to a builder `rebase` staged on a newer stage3.
        Rebase => "rebase",
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct LastPass {
    pub started: u64,
    pub finished: Option<u64>,
    pub result: PassOutcome,
    pub built: Vec<String>,
    pub reused: usize,
    pub failed_package: Option<String>,
    /// Relative to the machine directory.
    pub log: String,
    pub kind: PassKind,
    /// The cleanup steps that ran, in order.
    pub cleanup: Vec<CleanupStep>,
    /// The steps of the pass or first build, in order, as they start (empty for a rebase).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<StepRecord>,
    /// The upper dir a failed first build left for its process's next attempt (a temporary
    /// name in the machine directory).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub work_dir: Option<String>,
    /// The generation it published (`super::generations`), None when it published nothing
    /// new (failed, held, or the same content as the newest generation).
    pub generation: Option<u64>,
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

/// One finished pass as the pass history keeps it (the status page's chart of durations).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct PassRecord {
    pub started: u64,
    pub finished: u64,
    pub result: PassOutcome,
    pub kind: PassKind,
    pub built: usize,
    pub reused: usize,
    /// The generation it published, if any.
    pub generation: Option<u64>,
}

/// Passes kept in `State::history`.
pub const HISTORY: usize = 30;

/// A binpkg whose files need a newer kernel than the hosts have.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct AbiWarning {
    pub cpv: String,
    pub file: String,
    pub requires: String,
    pub kernel: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Counts {
    pub binpkgs: usize,
    pub bytes: u64,
}

/// `machines/<M>/state.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct State {
    pub machine: String,
    pub state: LoopState,
    pub pid: Option<u32>,
    pub updated: u64,
    pub current: Option<Current>,
    pub last_pass: Option<LastPass>,
    pub snapshot: Option<String>,
    pub drift: Vec<String>,
    pub abi_warnings: Vec<AbiWarning>,
    pub counts: Counts,
    /// The publish gate of the last pass that would publish (`super::gate`).
    pub gate: Option<Gate>,
    /// The last passes, oldest first (at most `HISTORY`).
    pub history: Vec<PassRecord>,
}

/// A generation's `info.json` (`machines/<M>/generations/<N>/info.json`, served through
/// `machines/<M>/published`): what one publication holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct PublishedInfo {
    pub machine: String,
    /// Unix time of the publication.
    pub published_at: u64,
    pub snapshot: Option<SnapshotRef>,
    /// The hosts' kernel the ABI hold-back used, when known.
    pub kernel: Option<String>,
    /// Binpkgs in the published index, and their bytes.
    pub packages: usize,
    pub bytes: u64,
    /// Binpkgs left out because they need a newer kernel.
    pub held_back: Vec<AbiWarning>,
    /// The fingerprint of the key the binpkgs are signed with.
    pub signing_key: Option<String>,
    /// The fingerprints `key.asc` lists.
    pub listed_keys: Vec<String>,
    /// PKGDIR's index as this publication found it: (size, mtime in ns as a decimal string).
    pub index: Option<(u64, String)>,
    /// Its number among the machine's generations (`generations`).
    pub generation: u64,
    /// What makes it the same publication as another for hosts (`publish::stage`): a pass
    /// whose publication has the same digest as the newest generation makes no new one.
    pub content: Option<String>,
    /// The pass it came from.
    pub pass: Option<PassSummary>,
    /// What the publish gate decided on it (`passed`, `published-anyway`, `skipped`).
    pub gate: Option<GateResult>,
}

/// The pass a publication came from.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct PassSummary {
    pub started: u64,
    pub finished: u64,
    pub kind: PassKind,
    pub built: usize,
    pub reused: usize,
}

/// The ebuild-tree snapshot the published binpkgs were built on.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
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

impl PublishedInfo {
    /// What machine `m` publishes now: none before its first publication, an error naming the
    /// file when it cannot be read.
    pub fn read(m: &Machine) -> super::Result<Option<PublishedInfo>> {
        Ok(crate::fsutil::read_json(&m.published().info())?)
    }

    /// The `info.json` of the publication in directory `dir` (a generation).
    pub fn read_in(dir: &crate::store::PublishedDir) -> super::Result<Option<PublishedInfo>> {
        Ok(crate::fsutil::read_json(&dir.info())?)
    }
}

/// The builder's clock (re-exported for the pass, the bootstrap and the session).
pub use crate::time::now;

impl State {
    /// Add the finished `last_pass` to the history (bounded).
    pub fn record_pass(&mut self) {
        let Some(lp) = &self.last_pass else { return };
        let generation = lp.generation;
        self.history.push(PassRecord {
            started: lp.started,
            finished: lp.finished.unwrap_or_else(now),
            result: lp.result,
            kind: lp.kind,
            built: lp.built.len(),
            reused: lp.reused,
            generation,
        });
        let extra = self.history.len().saturating_sub(HISTORY);
        self.history.drain(..extra);
    }

    pub fn path(m: &Machine) -> std::path::PathBuf {
        m.files().state_file()
    }

    fn idle(m: &Machine) -> State {
        State {
            machine: m.name.clone(),
            state: LoopState::Idle,
            ..State::default()
        }
    }

    /// The saved state, or an idle one. The loop, which calls this, only carries the state on
    /// (it decides nothing from it) and writes a fresh one at once: an unreadable file is
    /// reported, naming it, and replaced.
    pub fn load(m: &Machine) -> State {
        Self::read(m).unwrap_or_else(|e| {
            tracing::warn!("{e}; starting from a fresh state");
            Self::idle(m)
        })
    }

    /// The saved state, an idle one when there is none yet, or the error naming the file when it
    /// exists but cannot be read or parsed (what `status` reports).
    pub fn read(m: &Machine) -> super::Result<State> {
        Ok(crate::fsutil::read_json(&Self::path(m))?.unwrap_or_else(|| Self::idle(m)))
    }

    /// Whether the loop that wrote this state still runs (None when no loop recorded its pid):
    /// the one liveness check of `status` and the status page.
    pub fn loop_alive(&self) -> Option<bool> {
        self.pid
            .filter(|p| *p > 0)
            .map(crate::fsutil::process_alive)
    }

    /// The loop's state as it is now: a loop that died while building or waiting left that
    /// state behind, and is `stopped`.
    pub fn live_state(&self) -> LoopState {
        match self.state {
            LoopState::Building | LoopState::Waiting if self.loop_alive() == Some(false) => {
                LoopState::Stopped
            }
            s => s,
        }
    }

    pub fn save(&mut self, m: &MachineLock) -> super::Result<()> {
        self.machine = m.name.clone();
        self.updated = now();
        crate::fsutil::write_json(&Self::path(m), self)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    #[test]
    fn a_dead_loop_is_stopped_and_a_live_one_keeps_its_state() {
        let mut st = State {
            state: LoopState::Building,
            ..State::default()
        };
        assert_eq!(st.loop_alive(), None);
        assert_eq!(st.live_state(), LoopState::Building);
        st.pid = Some(std::process::id());
        assert_eq!(st.loop_alive(), Some(true));
        assert_eq!(st.live_state(), LoopState::Building);
        // Above any pid_max the kernel allows (2^22).
        st.pid = Some(1 << 23);
        assert_eq!(st.loop_alive(), Some(false));
        assert_eq!(st.live_state(), LoopState::Stopped);
        st.state = LoopState::Failed;
        assert_eq!(st.live_state(), LoopState::Failed);
    }

    fn machine() -> (tempfile::TempDir, MachineLock) {
        let d = tempfile::tempdir().unwrap();
        let store = Store::at(d.path());
        let m = MachineLock::create(&store, "laptop").unwrap();
        (d, m)
    }

    fn warning() -> AbiWarning {
        AbiWarning {
            cpv: "sys-libs/glibc-2.41".into(),
            file: "/usr/lib64/libc.so.6".into(),
            requires: "6.9.0".into(),
            kernel: "6.1.0".into(),
        }
    }

    #[test]
    fn state_json_round_trips_writer_to_reader() {
        let (_d, m) = machine();
        let mut st = State {
            state: LoopState::Failed,
            pid: Some(4242),
            current: Some(Current {
                package: "dev-lang/perl-5.40.0".into(),
                phase: "compile".into(),
                index: 3,
                total: 9,
            }),
            last_pass: Some(LastPass {
                started: 1_767_225_600,
                finished: Some(1_767_225_690),
                result: PassOutcome::Failed,
                built: vec!["sys-libs/mtdev-1.1.7".into()],
                reused: 40,
                failed_package: Some("dev-lang/perl-5.40.0".into()),
                log: "logs/bootstrap-1767225600.log".into(),
                kind: PassKind::Bootstrap,
                cleanup: vec![CleanupStep {
                    name: "depclean".into(),
                    items: vec!["app-misc/gone-1".into()],
                }],
                steps: vec![
                    StepRecord {
                        name: "config".into(),
                        result: StepResult::Done,
                        key: "0123456789abcdef".into(),
                        started: 1_767_225_601,
                        duration_ms: 1_200,
                    },
                    StepRecord {
                        name: "world".into(),
                        result: StepResult::Running,
                        key: "0123456789abcdef".into(),
                        started: 1_767_225_603,
                        duration_ms: 0,
                    },
                ],
                work_dir: Some(".tmp-bootstrap-4242-0".into()),
                generation: None,
            }),
            snapshot: Some("20260101".into()),
            drift: vec!["make.conf: CFLAGS differ".into()],
            abi_warnings: vec![warning()],
            counts: Counts {
                binpkgs: 5,
                bytes: 321_000,
            },
            ..State::default()
        };
        st.save(&m).unwrap();
        assert_eq!(State::read(&m).unwrap(), st);
        // The words on disk are the contract's.
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(m.files().state_file()).unwrap()).unwrap();
        assert_eq!(v["machine"], "laptop");
        assert_eq!(v["state"], "failed");
        assert_eq!(v["last_pass"]["result"], "failed");
        assert_eq!(v["last_pass"]["kind"], "bootstrap");
        assert_eq!(v["last_pass"]["steps"][0]["result"], "done");
        assert_eq!(v["last_pass"]["steps"][0]["duration_ms"], 1_200);
        assert_eq!(v["last_pass"]["steps"][1]["result"], "running");
    }

    #[test]
    fn readers_are_lenient_about_missing_fields_and_unknown_words() {
        let (_d, m) = machine();
        std::fs::write(
            m.files().state_file(),
            br#"{"state": "paused", "pid": null, "last_pass": {"result": "success",
                "future_field": 1, "steps": [{"name": "seal", "result": "done", "key": "k"}]},
                "also_new": true}"#,
        )
        .unwrap();
        let st = State::read(&m).unwrap();
        assert_eq!(st.state, LoopState::Unknown);
        let lp = st.last_pass.unwrap();
        assert_eq!(lp.result, PassOutcome::Success);
        assert_eq!(lp.kind, PassKind::Unknown);
        assert!(lp.cleanup.is_empty());
        // A step recorded by a version without durations.
        assert_eq!(lp.steps[0].result, StepResult::Done);
        assert_eq!((lp.steps[0].started, lp.steps[0].duration_ms), (0, 0));
    }

    #[test]
    fn a_corrupt_state_is_an_error_naming_the_file() {
        let (_d, m) = machine();
        std::fs::write(m.files().state_file(), b"{\"state\": ").unwrap();
        let e = State::read(&m).unwrap_err().to_string();
        assert!(
            e.contains(&m.files().state_file().display().to_string()),
            "{e}"
        );
        // The loop starts from a fresh state instead (and rewrites the file).
        assert_eq!(State::load(&m).state, LoopState::Idle);
    }

    #[test]
    fn published_info_round_trips_writer_to_reader() {
        let (_d, m) = machine();
        assert_eq!(PublishedInfo::read(&m).unwrap(), None);
        let info = PublishedInfo {
            machine: "laptop".into(),
            published_at: 1_767_225_700,
            snapshot: Some(SnapshotRef {
                date: Some("20260101".into()),
                tarball: Some("downloads/gentoo-20260101.tar.xz".into()),
                timestamp_chk: Some("Thu, 01 Jan 2026 00:45:00 +0000".into()),
                timestamp_commit: None,
            }),
            kernel: Some("6.1.0".into()),
            packages: 3,
            bytes: 305_010,
            held_back: vec![warning()],
            signing_key: Some("0123ABCD".into()),
            listed_keys: vec!["0123ABCD".into()],
            index: Some((1234, "1767225699000000000".into())),
            generation: 4,
            content: Some("ab12".into()),
            gate: Some(GateResult::Passed),
            pass: Some(PassSummary {
                started: 1_767_225_000,
                finished: 1_767_225_690,
                kind: PassKind::Pass,
                built: 2,
                reused: 1,
            }),
        };
        crate::fsutil::write_json(&m.published().info(), &info).unwrap();
        assert_eq!(PublishedInfo::read(&m).unwrap(), Some(info));
        std::fs::write(m.published().info(), b"[").unwrap();
        let e = PublishedInfo::read(&m).unwrap_err().to_string();
        assert!(e.contains("info.json"), "{e}");
    }

    #[test]
    fn machine_json_round_trips_and_a_corrupt_one_is_named() {
        let (_d, m) = machine();
        assert_eq!(m.meta().unwrap(), super::super::MachineMeta::default());
        let meta = super::super::MachineMeta {
            image: Some("laptop/bootstrap".into()),
            snapshot: Some("20260101".into()),
            builder: true,
            ..Default::default()
        };
        m.save_meta(&meta).unwrap();
        assert_eq!(m.meta().unwrap(), meta);
        assert_eq!(meta.recorded_snapshot("laptop").unwrap(), "20260101");
        let none = super::super::MachineMeta::default();
        let e = none.recorded_snapshot("laptop").unwrap_err().to_string();
        assert!(e.contains("laptop"), "{e}");
        std::fs::write(m.files().meta_file(), b"{oops").unwrap();
        let e = m.meta().unwrap_err().to_string();
        assert!(e.contains("machine.json"), "{e}");
    }
}
