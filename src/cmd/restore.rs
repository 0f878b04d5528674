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
    /// Make the restored image this machine's builder image (a fresh builder on it)
    #[arg(long, value_name = "M")]
    pub machine: Option<String>,
}

pub fn run(ctx: &Ctx, o: RestoreOpts) -> anyhow::Result<i32> {
    let (store, h) = super::layer::helper(ctx)?;
    let img = oci::import(&store, &h, &o.dir, o.image.as_deref())?;
    ctx.note(&format!(
        "restored image {} ({} layer(s))",
        img.name,
        img.layers.len()
    ));
    if let Some(name) = &o.machine {
        let m = gbuild::builder::MachineLock::create(&store, name)?;
        h.remove_trees(&[m.container()])?;
        std::fs::create_dir_all(m.upper())?;
        std::fs::create_dir_all(m.work())?;
        let mut meta = m.meta()?;
        meta.image = Some(img.name.clone());
        meta.builder = true;
        m.save_meta(&meta)?;
        ctx.note(&format!("builder of {name} re-created on {}", img.name));
    }
    println!("{}", img.name);
    Ok(0)
}
