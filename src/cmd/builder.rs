//! `gbuild builder [--machine M]`: a fresh builder container (empty upper dir) on the machine's
//! bootstrap image.

use gbuild::builder::BuilderError;

use super::{build_env, Ctx, MachineOpts};

#[derive(clap::Args, Debug)]
pub struct BuilderOpts {
    #[command(flatten)]
    pub m: MachineOpts,
}

pub fn run(ctx: &Ctx, o: BuilderOpts) -> anyhow::Result<i32> {
    let (env, m) = build_env(ctx, &o.m)?;
    create(&env, &m)?;
    ctx.note(&format!("builder: container of {} created", m.name));
    Ok(0)
}

pub fn create(
    env: &gbuild::builder::BuildEnv,
    m: &gbuild::builder::MachineLock,
) -> anyhow::Result<()> {
    let mut meta = m.meta()?;
    if meta.image.is_none() {
        return Err(BuilderError::NotBootstrapped(m.name.clone()).into());
    }
    env.helper().remove_trees(&[m.container()])?;
    std::fs::create_dir_all(m.upper())?;
    std::fs::create_dir_all(m.work())?;
    meta.builder = true;
    m.save_meta(&meta)?;
    Ok(())
}
