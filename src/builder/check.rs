//! `check`: whether an image is sane before a builder runs on it: its world set resolves with
//! nothing left to do and no slot conflict, and (for an imported host configuration) it does not
//! differ from the host. Run in a throwaway container of the session given, so the same check
//! serves `gbuild check` on the machine's image and `rebase` on a staged one.

use super::session::Session;
use super::{BuildEnv, Machine, Result};

/// What `check` found wrong, one line each (empty: sane).
#[derive(Debug, Default, Clone)]
pub struct Problems {
    /// Differences from the host configuration (`drift: ...` lines); the first kind, a host on
    /// another snapshot, is listed in `snapshot_drift` instead.
    pub lines: Vec<String>,
    /// The host's tree is another snapshot than the image's (the builder leads; not blocking for
    /// a pass).
    pub snapshot_drift: Vec<String>,
}

impl Problems {
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty() && self.snapshot_drift.is_empty()
    }
}

/// Check the image of session `s` (whose upper dir is a throwaway one).
pub fn check(env: &BuildEnv, m: &Machine, s: &mut Session) -> Result<Problems> {
    let code = s.run(super::emerge::pretend_world_args())?;
    let facts = s.progress.facts.clone();
    // The same comparison as every build pass: the image against the host configuration.
    let drift = super::drift::check(env, m, s)?;
    let mut p = Problems::default();
    if let Some(d) = drift {
        for x in &d.differences {
            let line = format!("drift: {x}");
            if x.kind == crate::host::Kind::Snapshot {
                p.snapshot_drift.push(line);
            } else {
                p.lines.push(line);
            }
        }
    }
    if code != 0 {
        p.lines.push(format!(
            "emerge --pretend @world fails (exit {code}); log: {}",
            s.log_path().display()
        ));
    }
    if facts.slot_conflict {
        p.lines.push("slot conflict in the world set".to_string());
    }
    for l in &facts.planned {
        p.lines.push(format!("not up to date: {l}"));
    }
    Ok(p)
}

/// Check machine `m`'s own bootstrap image (`gbuild check`, and `run` after a first build) in a
/// throwaway container whose upper dir has a temporary name, removed afterwards; the problems
/// one line each, a host on another snapshot first.
pub fn check_machine(env: &BuildEnv, m: &super::MachineLock) -> Result<Vec<String>> {
    let meta = m.meta()?;
    let image = meta
        .image
        .clone()
        .ok_or_else(|| super::BuilderError::NotBootstrapped(m.name.clone()))?;
    let snapshot = meta.recorded_snapshot(&m.name)?.to_string();
    let helper = env.helper();
    helper.remove_trees(&m.files().stale_temps("check")?)?;
    let tmp = m.files().temp("check");
    let mut s = Session::new(
        env,
        m,
        &image,
        &tmp.join("upper"),
        &tmp.join("work"),
        &snapshot,
        "check",
    )?;
    let p = check(env, m, &mut s)?;
    helper.remove_trees(std::slice::from_ref(&tmp))?;
    Ok(p.snapshot_drift.into_iter().chain(p.lines).collect())
}
