//! `gbuild update [--machine M]`: switch the builder to the newest verified snapshot and the
//! machine's current configuration.

use super::{build_env, Ctx, MachineOpts};

#[derive(clap::Args, Debug)]
pub struct UpdateOpts {
    #[command(flatten)]
    pub m: MachineOpts,
}

pub fn run(ctx: &Ctx, o: UpdateOpts) -> anyhow::Result<i32> {
    let (env, m) = build_env(ctx, &o.m)?;
    match gbuild::builder::pass::update(&env, &m)? {
        Some(d) => ctx.note(&format!("update: {} now uses snapshot {d}", m.name)),
        None => ctx.note(&format!("update: {} is on the newest snapshot", m.name)),
    }
    Ok(0)
}
