//! The chain `gbuild run` drives once the stage3 and the snapshot are in the store: the first
//! build of the world set when the machine has no image, the check of that image, the builder
//! container, then the build loop. Each step is skipped when what it makes exists and is valid,
//! so `run` after any interruption continues where it stopped.

use std::path::Path;

use super::{BuildEnv, BuilderError, MachineLock, Result};

/// How far `prepare` got.
#[derive(Debug, PartialEq, Eq)]
pub enum Prepared {
    /// The machine has an image and a builder: the loop can start.
    Ready,
    /// The first build failed under `--once`: exit with this status.
    Exit(i32),
}

/// The ebuild tree to fetch for machine `m` when no snapshot date is asked for: a machine made
/// from a host bundle, not yet bootstrapped, starts on the host's own tree (found on the mirror
/// by its timestamp).
pub fn tree_to_fetch(
    m: &super::Machine,
    snapshot_date: Option<&str>,
) -> Result<Option<crate::fetch::TreeIdentity>> {
    if snapshot_date.is_some() || m.meta()?.image.is_some() {
        return Ok(None);
    }
    Ok(m.host_bundle().and_then(|b| super::host_tree(&b).cloned()))
}

/// Remember the trust the loop's later snapshot fetches use, when `run` was given any.
pub fn remember_trust(m: &MachineLock, keyring: Option<&Path>, trust: &[String]) -> Result<()> {
    if keyring.is_none() && trust.is_empty() {
        return Ok(());
    }
    let mut meta = m.meta()?;
    meta.keyring = keyring.map(|k| k.canonicalize().unwrap_or_else(|_| k.to_path_buf()));
    meta.trust = trust.to_vec();
    m.save_meta(&meta)
}

/// Bootstrap (a pass that idles after a failure unless `once`) and check machine `m` when its
/// image is missing, then create its builder when it has none.
pub fn prepare(env: &BuildEnv, m: &MachineLock, once: bool) -> Result<Prepared> {
    let have_image = m
        .meta()?
        .image
        .as_deref()
        .is_some_and(|i| crate::layer::image::load(&env.store, i).is_ok());
    if !have_image {
        crate::progress::note(&format!("run: bootstrapping {}", m.name));
        if let Some(code) = super::pass::first_build(env, m, super::builtin_recipe(), once)? {
            return Ok(Prepared::Exit(code));
        }
        let problems = super::check::check_machine(env, m)?;
        if !problems.is_empty() {
            return Err(BuilderError::CheckFailed {
                machine: m.name.clone(),
                problems,
            });
        }
    } else {
        crate::progress::note(&format!("run: {} is bootstrapped", m.name));
    }
    if !m.meta()?.builder {
        create_builder(env, m)?;
        crate::progress::note(&format!("run: builder of {} created", m.name));
    }
    Ok(Prepared::Ready)
}

/// A fresh builder container of machine `m` (an empty upper dir) on its bootstrap image.
pub fn create_builder(env: &BuildEnv, m: &MachineLock) -> Result<()> {
    use crate::fsutil::IoContext;
    let mut meta = m.meta()?;
    if meta.image.is_none() {
        return Err(BuilderError::NotBootstrapped(m.name.clone()));
    }
    env.helper().remove_trees(&[m.container()])?;
    for d in [m.upper(), m.work()] {
        std::fs::create_dir_all(&d).at("create directory", &d)?;
    }
    meta.builder = true;
    m.save_meta(&meta)
}

/// The problems of a failed check as one line.
pub fn problems_line(problems: &[String]) -> String {
    problems.join("; ")
}
