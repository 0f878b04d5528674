//! `gbuild builder [--machine M]`: a fresh builder container (empty upper dir) on the machine's
//! bootstrap image.

use super::{build_env, Ctx, MachineOpts};

#[derive(clap::Args, Debug)]
pub struct BuilderOpts {
    #[command(flatten)]
    pub m: MachineOpts,
}

pub fn run(ctx: &Ctx, o: BuilderOpts) -> anyhow::Result<i32> {
    let (env, m) = build_env(ctx, &o.m)?;
    gbuild::builder::chain::create_builder(&env, &m)?;
    ctx.note(&format!("builder: container of {} created", m.name));
    Ok(0)
}
