//! `gbuild restore DIR [--image NAME]`: rebuild an image and its layers from an OCI image layout,
//! offline, checking every digest; nothing is half-restored.

use std::path::PathBuf;

use gbuild::layer::oci;

use super::Ctx;

#[derive(clap::Args, Debug)]
pub struct RestoreOpts {
    /// OCI image layout directory (written by `gbuild snapshot`)
    pub dir: PathBuf,
    /// Image to restore (the manifest's ref name) and name to give it [default: the ref name]
    #[arg(long, value_name = "NAME")]
    pub image: Option<String>,
}

pub fn run(ctx: &Ctx, o: RestoreOpts) -> anyhow::Result<i32> {
    let (store, h) = super::layer::helper(ctx)?;
    let img = oci::import(&store, &h, &o.dir, o.image.as_deref())?;
    ctx.note(&format!(
        "restored image {} ({} layer(s))",
        img.name,
        img.layers.len()
    ));
    println!("{}", img.name);
    Ok(0)
}
