//! `gbuild gc`: remove layers no image or snapshot references, and leftovers of crashed runs.

use gbuild::layer::gc;

use super::Ctx;

#[derive(clap::Args, Debug)]
pub struct GcOpts {}

pub fn run(ctx: &Ctx, _o: GcOpts) -> anyhow::Result<i32> {
    let (store, h) = super::layer::helper(ctx)?;
    let r = gc::gc(&store, &h)?;
    ctx.note(&format!(
        "removed {} layer(s) and {} leftover work dir(s)",
        r.layers_removed.len(),
        r.temp_removed.len()
    ));
    for id in &r.layers_removed {
        println!("{id}");
    }
    Ok(0)
}
