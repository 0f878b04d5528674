//! `gbuild resume [--machine M]`: wake a loop idling after a failure or waiting for its next pass.

use super::{Ctx, MachineOpts};

#[derive(clap::Args, Debug)]
pub struct ResumeOpts {
    #[command(flatten)]
    pub m: MachineOpts,
}

pub fn run(ctx: &Ctx, o: ResumeOpts) -> anyhow::Result<i32> {
    let store = ctx.store()?;
    let m = gbuild::builder::Machine::open(&store, &o.m.machine)?;
    gbuild::builder::pass::resume(&m)?;
    ctx.note(&format!("resume: asked the loop of {} to go on", m.name));
    Ok(0)
}
