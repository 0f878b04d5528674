//! `gbuild bootstrap [--machine M]`: stage3 layer + config layer + the world set built, sealed as
//! image `M/bootstrap`.

use super::{build_env, Ctx, MachineOpts};

#[derive(clap::Args, Debug)]
pub struct BootstrapOpts {
    #[command(flatten)]
    pub m: MachineOpts,
    /// A bootstrap recipe file (one line of emerge arguments per step) instead of the built-in
    #[arg(long, value_name = "FILE")]
    pub recipe: Option<std::path::PathBuf>,
}

pub fn run(ctx: &Ctx, o: BootstrapOpts) -> anyhow::Result<i32> {
    let (env, m) = build_env(ctx, &o.m)?;
    let recipe = match &o.recipe {
        Some(p) => {
            std::fs::read_to_string(p).map_err(|e| anyhow::anyhow!("read {}: {e}", p.display()))?
        }
        None => gbuild::builder::builtin_recipe().to_string(),
    };
    match gbuild::builder::bootstrap::bootstrap(&env, &m, &recipe)? {
        gbuild::builder::session::PassResult::Success
        | gbuild::builder::session::PassResult::Held => {
            ctx.note(&format!(
                "bootstrap: image {} sealed",
                m.meta()?.image.unwrap_or_default()
            ));
            Ok(0)
        }
        gbuild::builder::session::PassResult::Failed { package, log } => {
            eprintln!(
                "gbuild: bootstrap of {} failed{}; log: {}",
                m.name,
                package.map(|p| format!(" in {p}")).unwrap_or_default(),
                log.display()
            );
            Ok(1)
        }
    }
}
