//! `gbuild setup-host --user NAME`: one-time preparation by root (subordinate ids); says what it
//! changed, and that nothing changed on a second run.

use super::Ctx;

#[derive(clap::Args, Debug)]
pub struct SetupHostOpts {
    /// The unprivileged user who will run gbuild
    #[arg(long)]
    pub user: String,
}

pub fn run(ctx: &Ctx, o: SetupHostOpts) -> anyhow::Result<i32> {
    let done = gbuild::setup_host::setup_host(&o.user)?;
    if done.is_empty() {
        ctx.note(&format!("setup-host: nothing to change for {}", o.user));
    }
    for line in done {
        println!("{line}");
    }
    Ok(0)
}
