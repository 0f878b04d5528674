//! `gbuild check [--machine M]`: the bootstrap image is sane: its world set resolves with nothing
//! left to do and no slot conflict, and (for an imported host configuration) it does not differ
//! from the host, checked in a throwaway container.

use gbuild::builder::session::Session;
use gbuild::builder::BuilderError;

use super::{build_env, Ctx, MachineOpts};

#[derive(clap::Args, Debug)]
pub struct CheckOpts {
    #[command(flatten)]
    pub m: MachineOpts,
}

pub fn run(ctx: &Ctx, o: CheckOpts) -> anyhow::Result<i32> {
    let (env, m) = build_env(ctx, &o.m)?;
    let problems = check(&env, &m)?;
    if problems.is_empty() {
        ctx.note(&format!("check: {} is sane", m.name));
        return Ok(0);
    }
    for p in &problems {
        println!("{p}");
    }
    Ok(1)
}

/// Problems found, one line each.
pub fn check(
    env: &gbuild::builder::BuildEnv,
    m: &gbuild::builder::MachineLock,
) -> anyhow::Result<Vec<String>> {
    let meta = m.meta()?;
    let image = meta
        .image
        .clone()
        .ok_or_else(|| BuilderError::NotBootstrapped(m.name.clone()))?;
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
    let p = gbuild::builder::check::check(env, m, &mut s)?;
    helper.remove_trees(std::slice::from_ref(&tmp))?;
    Ok(p.snapshot_drift.into_iter().chain(p.lines).collect())
}
