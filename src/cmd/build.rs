//! `gbuild build [--machine M] [--once] [--interval D]`: the build loop.

use gbuild::builder::pass::{run_loop, LoopOptions};

use super::{build_env, Ctx, MachineOpts};

#[derive(clap::Args, Debug)]
pub struct BuildOpts {
    #[command(flatten)]
    pub m: MachineOpts,
    /// One pass, exit with its status (0 published, 1 failed, 3 held by the publish gate)
    #[arg(long)]
    pub once: bool,
    /// Wait between successful passes (e.g. 30m, 24h) [default: from gbuild.toml, 24h]
    #[arg(long, value_name = "DURATION")]
    pub interval: Option<String>,
}

pub fn run(ctx: &Ctx, o: BuildOpts) -> anyhow::Result<i32> {
    let (env, m) = build_env(ctx, &o.m)?;
    let interval = o
        .interval
        .clone()
        .unwrap_or_else(|| env.config.interval.clone());
    let interval = gbuild::config::parse_duration(&interval).map_err(anyhow::Error::msg)?;
    Ok(run_loop(
        &env,
        &m,
        &LoopOptions {
            once: o.once,
            interval,
        },
    )?)
}
