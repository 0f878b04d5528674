//! `gbuild check [--machine M]`: the bootstrap image is sane (`builder::check`); prints one
//! problem a line and exits 1 when it is not.

use super::{build_env, Ctx, MachineOpts};

#[derive(clap::Args, Debug)]
pub struct CheckOpts {
    #[command(flatten)]
    pub m: MachineOpts,
}

pub fn run(ctx: &Ctx, o: CheckOpts) -> anyhow::Result<i32> {
    let (env, m) = build_env(ctx, &o.m)?;
    let problems = gbuild::builder::check::check_machine(&env, &m)?;
    if problems.is_empty() {
        ctx.note(&format!("check: {} is sane", m.name));
        return Ok(0);
    }
    for p in &problems {
        println!("{p}");
    }
    Ok(1)
}
