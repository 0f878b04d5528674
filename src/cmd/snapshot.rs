//! `gbuild snapshot --image NAME [-o DIR]`: export an image as an OCI image layout (one
//! compressed blob per layer, config, manifest), byte-identical for the same content.

use std::path::PathBuf;

use gbuild::layer::oci::{self, Compression};

use super::Ctx;

#[derive(clap::Args, Debug)]
pub struct SnapshotOpts {
    /// Image to export
    #[arg(long, value_name = "NAME")]
    pub image: String,
    /// Output directory (must not exist or be empty) [default: <store>/exports/<image>]
    #[arg(short, long, value_name = "DIR")]
    pub output: Option<PathBuf>,
    /// Layer blob compression
    #[arg(long, value_enum, default_value_t = Compression::Zstd)]
    pub compression: Compression,
}

pub fn run(ctx: &Ctx, o: SnapshotOpts) -> anyhow::Result<i32> {
    let (store, h) = super::layer::helper(ctx)?;
    let out = o
        .output
        .unwrap_or_else(|| oci::default_export_dir(&store, &o.image));
    let r = oci::export(&store, &h, &o.image, &out, o.compression)?;
    ctx.note(&format!(
        "snapshot of {} in {} ({} layer(s))",
        o.image,
        r.dir.display(),
        r.blobs.len()
    ));
    println!("{}", r.manifest_digest);
    Ok(0)
}
