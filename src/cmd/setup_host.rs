//! `gbuild setup-host --user NAME`: one-time preparation by root.

use super::Ctx;

#[derive(clap::Args, Debug)]
pub struct SetupHostOpts {
    /// The unprivileged user who will run gbuild
    #[arg(long)]
    pub user: String,
}

pub fn run(_ctx: &Ctx, _o: SetupHostOpts) -> anyhow::Result<i32> {
    anyhow::bail!("not yet")
}
