//! `gbuild exec`: run a command in a rootless container, on a directory or an overlay of layers.
//! The low-level door to the runtime, for debugging and tests; the builder verbs use the same
//! `runtime::Runtime`.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context;
use gbuild::idmap::{IdMapping, IdPolicy};
use gbuild::runtime::{Bind, ContainerSpec, Rootfs, Runtime};

use super::Ctx;

#[derive(clap::Args, Debug)]
pub struct ExecOpts {
    /// Root directory; with --layer or --upper it becomes the lowest overlay layer
    #[arg(long, value_name = "DIR")]
    pub rootfs: Option<PathBuf>,
    /// A read-only layer stacked above the previous ones (repeatable, lowest first)
    #[arg(long = "layer", value_name = "DIR")]
    pub layers: Vec<PathBuf>,
    /// Writable overlay upper dir (kept); default: a temporary one removed at exit
    #[arg(long, value_name = "DIR")]
    pub upper: Option<PathBuf>,
    /// Overlay work dir, on the same filesystem as --upper [default: UPPER.work beside it]
    #[arg(long, value_name = "DIR")]
    pub work: Option<PathBuf>,
    /// Bind mount SRC:DST[:ro] (repeatable)
    #[arg(long = "bind", value_name = "SRC:DST[:ro]")]
    pub binds: Vec<Bind>,
    /// Extra environment KEY=VALUE (repeatable)
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Working directory inside
    #[arg(long, default_value = "/")]
    pub cwd: String,
    /// Allocate a terminal [default: when stdin is a terminal]
    #[arg(long, short = 't', overrides_with = "no_tty")]
    pub tty: bool,
    /// Never allocate a terminal
    #[arg(long = "no-tty", short = 'T')]
    pub no_tty: bool,
    /// Id mapping: auto (subordinate ranges when present), full, or single
    #[arg(long, value_enum, default_value_t = IdPolicy::Auto)]
    pub idmap: IdPolicy,
    /// Command and arguments
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

pub fn run(ctx: &Ctx, o: ExecOpts) -> anyhow::Result<i32> {
    let map = IdMapping::for_current_user(o.idmap, &mut |w| ctx.note(w))?;
    let mut temp_upper = None;
    let rootfs = if o.layers.is_empty() && o.upper.is_none() {
        let dir = o
            .rootfs
            .clone()
            .context("give --rootfs DIR or at least one --layer DIR")?;
        Rootfs::Dir(dir)
    } else {
        let mut layers: Vec<PathBuf> = o.rootfs.iter().cloned().collect();
        layers.extend(o.layers.iter().cloned());
        anyhow::ensure!(!layers.is_empty(), "an overlay needs --rootfs or --layer");
        let (upper, work) = match &o.upper {
            Some(u) => {
                let work = o.work.clone().unwrap_or_else(|| {
                    let mut w = u.as_os_str().to_owned();
                    w.push(".work");
                    PathBuf::from(w)
                });
                (u.clone(), work)
            }
            None => {
                let base = gbuild::runtime::default_scratch_root();
                std::fs::create_dir_all(&base)
                    .with_context(|| format!("create {}", base.display()))?;
                let t = tempfile::Builder::new()
                    .prefix("upper-")
                    .tempdir_in(&base)
                    .with_context(|| format!("create a temporary dir in {}", base.display()))?
                    .keep();
                temp_upper = Some(t.clone());
                (t.join("upper"), t.join("work"))
            }
        };
        Rootfs::Overlay {
            layers,
            upper,
            work,
        }
    };
    let mut spec = ContainerSpec::new(rootfs, o.command, map.clone());
    spec.binds = o.binds;
    spec.env.extend(o.env);
    spec.cwd = o.cwd;
    spec.tty = !o.no_tty && (o.tty || std::io::stdin().is_terminal());
    let rt = Runtime::new(gbuild::runtime::default_state_root());
    let result = rt.run(&spec);
    if let Some(t) = temp_upper {
        gbuild::userns::remove_tree(&t, &map)
            .with_context(|| format!("remove temporary upper dir {}", t.display()))?;
    }
    Ok(result?)
}

/// Hidden `gbuild __watchdog PARENT_PID STATE_ROOT ID BUNDLE` (see `runtime::watchdog_main`).
#[derive(clap::Args, Debug)]
pub struct WatchdogOpts {
    pub parent: i32,
    pub state_root: PathBuf,
    pub id: String,
    pub bundle: PathBuf,
}

pub fn watchdog(o: WatchdogOpts) -> anyhow::Result<i32> {
    Ok(gbuild::runtime::watchdog_main(
        o.parent,
        &o.state_root,
        &o.id,
        &o.bundle,
    ))
}
