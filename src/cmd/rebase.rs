//! `gbuild rebase [--machine M]`: a new builder on the newest stage3 of the machine's family,
//! bootstrapped beside the running one with every still-valid binpkg reused, checked, then
//! swapped in; prints what emerge reused and what it compiled. A failure leaves the machine as
//! it was (exit 1, naming the package or the problem and the log). The swap publishes through
//! the publish gate like a pass: exit 3 when the gate held the publication.

use std::path::PathBuf;

use gbuild::builder::rebase::{self, RebaseLock, Swap};

use super::{Ctx, MachineOpts};

#[derive(clap::Args, Debug)]
pub struct RebaseOpts {
    #[command(flatten)]
    pub m: MachineOpts,
    /// Use the newest stage3 already verified in the store (no download)
    #[arg(long)]
    pub offline: bool,
    /// OpenPGP key bundle to trust instead of the shipped Gentoo keys [default: the machine's]
    #[arg(long, value_name = "FILE")]
    pub keyring: Option<PathBuf>,
    /// Also trust this primary key fingerprint (repeatable)
    #[arg(long = "trust", value_name = "FINGERPRINT")]
    pub trust: Vec<String>,
    /// A bootstrap recipe file instead of the built-in one
    #[arg(long, value_name = "FILE")]
    pub recipe: Option<PathBuf>,
}

pub fn run(ctx: &Ctx, o: RebaseOpts) -> anyhow::Result<i32> {
    let store = ctx.store()?;
    // The staged builder's lock only: a build loop on the machine goes on meanwhile.
    let lock = RebaseLock::acquire(&store, &o.m.machine)?;
    let meta = lock.machine().meta()?;
    let env = super::env_for(ctx, store, &meta, o.m.mirror.as_deref())?;
    let recipe = match &o.recipe {
        Some(p) => {
            std::fs::read_to_string(p).map_err(|e| anyhow::anyhow!("read {}: {e}", p.display()))?
        }
        None => gbuild::builder::builtin_recipe().to_string(),
    };
    let opts = rebase::Options {
        mirror: o.m.mirror.clone(),
        keyring: o.keyring.clone(),
        trust: o.trust.clone(),
        offline: o.offline,
        recipe,
    };
    let name = lock.machine().name.clone();
    let staged = match rebase::prepare(&env, &lock, &opts)? {
        Ok(s) => s,
        Err(f) => {
            eprintln!(
                "gbuild: rebase of {name} failed{}: {}; log: {}",
                f.package
                    .as_deref()
                    .map(|p| format!(" in {p}"))
                    .unwrap_or_default(),
                gbuild::term::printable(&f.why),
                f.log.display()
            );
            eprintln!(
                "gbuild: {name} keeps its builder (before the failure emerge reused {} binpkg(s) and compiled {})",
                f.reused.len(),
                f.compiled.len()
            );
            return Ok(1);
        }
    };
    println!(
        "rebase of {name}: reused {} binpkg(s), compiled {}",
        staged.reused.len(),
        staged.compiled.len()
    );
    for p in &staged.compiled {
        println!("compiled: {p}");
    }
    for p in &staged.reused {
        println!("reused: {p}");
    }
    for st in staged.cleanup.iter().filter(|s| !s.items.is_empty()) {
        println!("{}: {}", st.name, st.items.join(" "));
    }
    let s = match rebase::swap(&env, &lock)? {
        Swap::Done(s) => {
            ctx.note(&format!(
                "rebase: {name} now builds on image {} ({}); the previous image {} stays until `gbuild gc`",
                s.image,
                s.stage3,
                s.previous_image.as_deref().unwrap_or("-")
            ));
            s
        }
        Swap::ByLoop(s) => {
            ctx.note(&format!(
                "rebase: the build loop of {name} swapped to image {} ({})",
                s.image, s.stage3
            ));
            s
        }
    };
    if s.held {
        // Like a pass: built, but hosts keep the previous publication (`gbuild status`).
        eprintln!(
            "gbuild: the publish gate held the new builder's publication of {name}; hosts keep the previous one (gbuild status --machine {name})"
        );
        return Ok(gbuild::builder::pass::HELD_EXIT);
    }
    Ok(0)
}
