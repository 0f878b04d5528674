//! `gbuild shell [--machine M] [-- CMD...]`: an interactive shell in the builder, or CMD with its
//! exit status.

use std::io::IsTerminal;

use gbuild::builder::BuilderError;

use super::{build_env, Ctx, MachineOpts};

#[derive(clap::Args, Debug)]
pub struct ShellOpts {
    #[command(flatten)]
    pub m: MachineOpts,
    /// Command and arguments [default: an interactive login shell]
    #[arg(last = true)]
    pub command: Vec<String>,
}

pub fn run(ctx: &Ctx, o: ShellOpts) -> anyhow::Result<i32> {
    let (env, m) = build_env(ctx, &o.m)?;
    let meta = m.meta()?;
    if !meta.builder {
        return Err(BuilderError::NoBuilder(m.name.clone()).into());
    }
    let image = meta.image.clone().unwrap_or_default();
    let argv = if o.command.is_empty() {
        vec!["/bin/bash".to_string(), "-l".to_string()]
    } else {
        o.command
    };
    let mut spec = env.spec(
        &m,
        &image,
        &m.upper(),
        &m.work(),
        meta.recorded_snapshot(&m.name)?,
        argv,
    )?;
    spec.tty = std::io::stdin().is_terminal();
    if let Ok(t) = std::env::var("TERM") {
        spec.env.retain(|e| !e.starts_with("TERM="));
        spec.env.push(format!("TERM={t}"));
    }
    Ok(env.runtime.run(&spec)?)
}
