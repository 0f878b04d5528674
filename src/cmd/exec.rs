//! `gbuild exec`: run a command in a rootless container.

use super::Ctx;

#[derive(clap::Args, Debug)]
pub struct ExecOpts {
    #[arg(last = true)]
    pub command: Vec<String>,
}

#[derive(clap::Args, Debug)]
pub struct WatchdogOpts {}

pub fn run(_ctx: &Ctx, _o: ExecOpts) -> anyhow::Result<i32> {
    anyhow::bail!("not yet")
}

pub fn watchdog(_o: WatchdogOpts) -> anyhow::Result<i32> {
    Ok(0)
}
