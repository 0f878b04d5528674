//! `gbuild unshare -- CMD...`: run a host command as root of a user namespace with the same id
//! mapping as the containers, to inspect or remove files owned by subordinate ids.

use gbuild::idmap::{IdMapping, IdPolicy};

use super::Ctx;

#[derive(clap::Args, Debug)]
pub struct UnshareOpts {
    /// Id mapping: auto (subordinate ranges when present), full, or single
    #[arg(long, value_enum, default_value_t = IdPolicy::Auto)]
    pub idmap: IdPolicy,
    /// Command and arguments (default: $SHELL)
    #[arg(last = true)]
    pub command: Vec<String>,
}

pub fn run(ctx: &Ctx, o: UnshareOpts) -> anyhow::Result<i32> {
    let map = IdMapping::for_current_user(o.idmap, &mut |w| ctx.note(w))?;
    let mut argv = o.command;
    if argv.is_empty() {
        argv.push(std::env::var("SHELL").unwrap_or_else(|_| "/bin/sh".into()));
    }
    let mut cmd = gbuild::userns::self_command(["__run"]);
    cmd.args(&argv);
    let status = gbuild::userns::run(cmd, &map)?;
    Ok(gbuild::runtime::exit_code(status))
}

/// Replace this process with `argv` (the inside half of `unshare` and of other helpers).
pub fn exec_argv(argv: &[std::ffi::OsString]) -> anyhow::Result<i32> {
    use std::os::unix::process::CommandExt;
    let err = std::process::Command::new(&argv[0]).args(&argv[1..]).exec();
    Err(anyhow::anyhow!("{}: {err}", argv[0].to_string_lossy()))
}
