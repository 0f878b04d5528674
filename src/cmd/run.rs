//! `gbuild run [--rootless] [--machine M] [--mirror URL] [--once]`: the whole chain, fetch ->
//! bootstrap -> check -> builder -> build loop, each step skipped when already done and valid.

use std::path::PathBuf;

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
    // A machine made from a host bundle starts on the host's own ebuild tree, found on the
    // mirror by its timestamp.
    let tree = match (&o.snapshot_date, m.meta()?.image.is_none()) {
        (None, true) => m
            .host_bundle()
            .and_then(|b| gbuild::builder::host_tree(&b).cloned()),
        _ => None,
    };
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
    let mut meta = m.meta()?;
    if o.keyring.is_some() || !o.trust.is_empty() {
        meta.keyring = o.keyring.clone().map(|k| k.canonicalize().unwrap_or(k));
        meta.trust = o.trust.clone();
        m.save_meta(&meta)?;
    }
    let _serve = match &o.serve {
        Some(addr) => Some(start_serve(ctx, addr)?),
        None => None,
    };
    let meta = m.meta()?;
    let have_image = meta
        .image
        .as_deref()
        .is_some_and(|i| gbuild::layer::image::load(&env.store, i).is_ok());
    if !have_image {
        ctx.note(&format!("run: bootstrapping {}", m.name));
        // The first build is a pass: it idles after a failure like any other (`--once` exits).
        let recipe = gbuild::builder::builtin_recipe();
        if let Some(code) = gbuild::builder::pass::first_build(&env, &m, recipe, o.once)? {
            return Ok(code);
        }
        let problems = super::check::check(&env, &m)?;
        if !problems.is_empty() {
            for p in &problems {
                eprintln!("check: {p}");
            }
            anyhow::bail!("check of {} failed after bootstrap", m.name);
        }
    } else {
        ctx.note(&format!("run: {} is bootstrapped", m.name));
    }
    if !m.meta()?.builder {
        super::builder::create(&env, &m)?;
        ctx.note(&format!("run: builder of {} created", m.name));
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
