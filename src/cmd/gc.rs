//! `gbuild gc [--dry-run]`: remove what nothing references (layers, images, trees, downloads,
//! generations beyond `keep`, leftovers of crashed commands), or list it with sizes.

use gbuild::gc;
use gbuild::progress::human_bytes;

use super::Ctx;

#[derive(clap::Args, Debug)]
pub struct GcOpts {
    /// List what would be removed and how much it frees, remove nothing
    #[arg(long, short = 'n')]
    pub dry_run: bool,
}

pub fn run(ctx: &Ctx, o: GcOpts) -> anyhow::Result<i32> {
    let (store, h) = super::layer::helper(ctx)?;
    let config = ctx.config(&store)?;
    let opts = gc::Options {
        dry_run: o.dry_run,
        own: None,
    };
    let r = gc::collect(&store, &config, &h, &opts)?;
    for s in &r.skipped {
        ctx.note(s);
    }
    for i in &r.items {
        let rel = i.path.strip_prefix(store.root()).unwrap_or(&i.path);
        println!(
            "{:<10} {:>10}  {}",
            i.kind,
            human_bytes(i.bytes),
            rel.display()
        );
    }
    let verb = if o.dry_run { "would remove" } else { "removed" };
    if r.items.is_empty() {
        ctx.note("nothing to remove");
    } else {
        ctx.note(&format!(
            "{verb} {} item(s), {} freed",
            r.items.len(),
            human_bytes(r.bytes())
        ));
    }
    Ok(0)
}
