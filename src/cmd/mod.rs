//! One module per verb, each with an options struct (clap `Args`) and a `run` returning the exit
//! status. Verbs only translate options into library calls; mechanisms live in the library.

pub mod bootstrap;
pub mod build;
pub mod builder;
pub mod check;
pub mod completions;
pub mod diff;
pub mod exec;
pub mod fetch;
pub mod gc;
pub mod helper;
pub mod host;
pub mod image;
pub mod key;
pub mod layer;
pub mod logs;
pub mod machine;
pub mod publish;
pub mod rebase;
pub mod request;
pub mod restore;
pub mod resume;
pub mod run;
pub mod serve;
pub mod setup_host;
pub mod shell;
pub mod snapshot;
pub mod status;
pub mod unshare;
pub mod update;

use std::path::PathBuf;

use anyhow::Context;
use gbuild::config::Config;
use gbuild::store::Store;

/// What every verb gets: the resolved store and options. The store and the configuration are
/// resolved lazily, so verbs that need neither (exec, setup-host) work without a home directory.
pub struct Ctx {
    pub store_opt: Option<PathBuf>,
    pub config_opt: Option<PathBuf>,
    pub verbose: bool,
    pub quiet: bool,
}

impl Ctx {
    /// The store, created if missing.
    pub fn store(&self) -> anyhow::Result<Store> {
        let s = Store::resolve(self.store_opt.as_deref())?;
        s.init()
            .with_context(|| format!("initialise store {}", s.root().display()))?;
        Ok(s)
    }

    /// `--config FILE` (must exist), else `<store>/gbuild.toml` (optional), else defaults.
    pub fn config(&self, store: &Store) -> anyhow::Result<Config> {
        Ok(match &self.config_opt {
            Some(p) => Config::load(p, true)?,
            None => Config::load(&store.config_file(), false)?,
        })
    }

    /// A notice on stderr unless quiet.
    pub fn note(&self, msg: &str) {
        if !self.quiet {
            eprintln!("{msg}");
        }
    }
}

/// An error chain as one line: `outer: inner: root cause`, without repeats.
pub fn one_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
    }
    // Causes quote what failed, which may be bytes from a bundle, an archive or a mirror.
    gbuild::term::printable(&parts.join(": ").replace('\n', " ")).into_owned()
}

/// `--machine` (and the distfiles mirror) shared by the builder verbs.
#[derive(clap::Args, Debug, Clone)]
pub struct MachineOpts {
    /// The machine (host configuration) to work on
    #[arg(long, default_value = "default")]
    pub machine: String,
    /// Gentoo mirror for the stage3, snapshots and distfiles [default: from gbuild.toml]
    #[arg(long, value_name = "URL")]
    pub mirror: Option<String>,
}

/// The builder environment for a verb that changes a machine: store, settings, id mapping,
/// runtime, and the machine with its lock held (refused at once when another gbuild has it).
pub fn build_env(
    ctx: &Ctx,
    o: &MachineOpts,
) -> anyhow::Result<(gbuild::builder::BuildEnv, gbuild::builder::MachineLock)> {
    let store = ctx.store()?;
    // The machine's lock first: a second writer is refused before it does anything.
    let m = gbuild::builder::MachineLock::acquire(&store, &o.machine)?;
    // An explicit --mirror is remembered for the machine's later passes.
    let mut meta = m.meta()?;
    if o.mirror.is_some() && o.mirror != meta.mirror {
        meta.mirror = o.mirror.clone();
        m.save_meta(&meta)?;
    }
    let env = env_for(ctx, store, &meta, o.mirror.as_deref())?;
    Ok((env, m))
}

/// The builder environment without taking a machine's lock (`rebase` stages a builder beside
/// the machine's and takes the lock only to swap it in): distfiles come from `mirror`, else the
/// machine's, else gbuild.toml's.
pub fn env_for(
    ctx: &Ctx,
    store: Store,
    meta: &gbuild::builder::MachineMeta,
    mirror: Option<&str>,
) -> anyhow::Result<gbuild::builder::BuildEnv> {
    let config = ctx.config(&store)?;
    let map =
        gbuild::idmap::IdMapping::for_current_user(gbuild::idmap::IdPolicy::Auto, &mut |w| {
            ctx.note(w)
        })?;
    let mirror = mirror
        .map(str::to_string)
        .or(meta.mirror.clone())
        .unwrap_or_else(|| config.mirror.clone());
    let mirror = (mirror.trim_end_matches('/') != gbuild::config::DEFAULT_MIRROR).then_some(mirror);
    Ok(gbuild::builder::BuildEnv {
        store,
        config,
        map,
        runtime: gbuild::runtime::Runtime::new(gbuild::runtime::default_state_root()),
        mirror,
        echo: ctx.verbose,
    })
}
