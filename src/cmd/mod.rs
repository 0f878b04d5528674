//! One module per verb, each with an options struct (clap `Args`) and a `run` returning the exit
//! status. Verbs only translate options into library calls; mechanisms live in the library.

pub mod exec;
pub mod fetch;
pub mod serve;
pub mod setup_host;
pub mod unshare;

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
    pub fn new(cli: &crate::cli::Cli) -> Ctx {
        Ctx {
            store_opt: cli.store.clone(),
            config_opt: cli.config.clone(),
            verbose: cli.verbose,
            quiet: cli.quiet,
        }
    }

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
    parts.join(": ").replace('\n', " ")
}
