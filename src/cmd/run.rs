//! `gbuild run [--rootless] [--machine M] [--mirror URL] [--once]`: the whole chain, fetch ->
//! bootstrap -> check -> builder -> build loop, each step skipped when already done and valid.

use std::path::PathBuf;

use gbuild::builder::chain;

use super::{build_env, Ctx, MachineOpts};

#[derive(clap::Args, Debug)]
pub struct RunOpts {
    #[command(flatten)]
    pub m: MachineOpts,
    /// Run as the invoking user in user namespaces (the default when not root)
    #[arg(long)]
    pub rootless: bool,
    /// One build pass, then exit with its status (0 published, 1 failed, 3 held by the publish gate)
    #[arg(long)]
    pub once: bool,
    /// Wait between successful passes [default: from gbuild.toml, 24h]
    #[arg(long, value_name = "DURATION")]
    pub interval: Option<String>,
    /// Use only artifacts already verified in the store (no download)
    #[arg(long)]
    pub offline: bool,
    /// OpenPGP key bundle to trust instead of the shipped Gentoo keys
    #[arg(long, value_name = "FILE")]
    pub keyring: Option<PathBuf>,
    /// Also trust this primary key fingerprint (repeatable)
    #[arg(long = "trust", value_name = "FINGERPRINT")]
    pub trust: Vec<String>,
    /// Use the ebuild-tree snapshot of this date instead of the newest
    #[arg(long, value_name = "YYYYMMDD")]
    pub snapshot_date: Option<String>,
    /// Also serve the binhost (a `gbuild serve` process beside the loop) on this address
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = "127.0.0.1:8788")]
    pub serve: Option<String>,
}

/// A `gbuild serve` child process that dies with us.
struct ServeChild(std::process::Child);

impl Drop for ServeChild {
    fn drop(&mut self) {
        // A serve that exited already is what we want.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_serve(ctx: &Ctx, addr: &str) -> anyhow::Result<ServeChild> {
    let mut cmd = gbuild::userns::self_command(["serve", "--listen", addr]);
    if let Some(s) = &ctx.store_opt {
        cmd.arg("--store").arg(s);
    }
    gbuild::sys::kill_child_with_parent(&mut cmd, nix::sys::signal::Signal::SIGTERM);
    let child = cmd
        .spawn()
        .map_err(|e| anyhow::anyhow!("start gbuild serve on {addr}: {e}"))?;
    Ok(ServeChild(child))
}

pub fn run(ctx: &Ctx, o: RunOpts) -> anyhow::Result<i32> {
    if nix::unistd::geteuid().is_root() && o.rootless {
        anyhow::bail!(
            "--rootless: run gbuild as the unprivileged user who owns the store (root was asked for rootless)"
        );
    }
    let (env, m) = build_env(ctx, &o.m)?;
    let tree = chain::tree_to_fetch(&m, o.snapshot_date.as_deref())?;
    super::fetch::run(
        ctx,
        super::fetch::FetchOpts {
            mirror: o.m.mirror.clone(),
            arch: None,
            // The stage3 family the machine's profile needs (or gbuild.toml's variant).
            variant: Some(gbuild::builder::stage3_variant(&env.config, &m)?),
            keyring: o.keyring.clone(),
            trust: o.trust.clone(),
            snapshot_date: o.snapshot_date.clone(),
            tree,
            offline: o.offline,
        },
    )?;
    // The loop re-syncs snapshots later with the same trust.
    chain::remember_trust(&m, o.keyring.as_deref(), &o.trust)?;
    let _serve = match &o.serve {
        Some(addr) => Some(start_serve(ctx, addr)?),
        None => None,
    };
    if let chain::Prepared::Exit(code) = chain::prepare(&env, &m, o.once)? {
        return Ok(code);
    }
    let interval = o
        .interval
        .clone()
        .unwrap_or_else(|| env.config.interval.clone());
    let interval = gbuild::config::parse_duration(&interval).map_err(anyhow::Error::msg)?;
    Ok(gbuild::builder::pass::run_loop(
        &env,
        &m,
        &gbuild::builder::pass::LoopOptions {
            once: o.once,
            interval,
        },
    )?)
}
