//! `gbuild diff [--machine M] BUNDLE`: every difference that can change a binpkg between the
//! machine's imported configuration (left) and BUNDLE (right), one line each with both values,
//! then the ignored build-side differences under `ignored:`. Exit 1 when any difference, 0 when
//! none, 2 when the comparison itself failed (like diff(1)).

use std::path::PathBuf;

use anyhow::Context;
use gbuild::host::{self, machine, Bundle};
use gbuild::term::printable;

use super::Ctx;

#[derive(clap::Args, Debug)]
pub struct DiffOpts {
    /// Machine whose configuration is compared
    #[arg(long, value_name = "M", default_value = "default")]
    pub machine: String,
    /// Host bundle (a tar from `gbuild host export`, or an unpacked bundle directory)
    #[arg(value_name = "BUNDLE")]
    pub bundle: PathBuf,
    /// JSON instead of lines
    #[arg(long)]
    pub json: bool,
}

pub fn run(ctx: &Ctx, o: DiffOpts) -> anyhow::Result<i32> {
    match compare(ctx, &o) {
        Ok(d) => {
            if o.json {
                println!("{}", serde_json::to_string_pretty(&d)?);
            } else {
                print!("{}", printable(&d.to_string()));
            }
            Ok(if d.is_empty() { 0 } else { 1 })
        }
        Err(e) => {
            eprintln!("gbuild: {}", super::one_line(&e));
            Ok(2)
        }
    }
}

fn compare(ctx: &Ctx, o: &DiffOpts) -> anyhow::Result<host::Diff> {
    let store = ctx.store()?;
    let mine = machine::config_bundle(&store, &o.machine)?;
    let other = Bundle::load(&o.bundle).with_context(|| format!("load {}", o.bundle.display()))?;
    Ok(host::diff(&mine, &other))
}
