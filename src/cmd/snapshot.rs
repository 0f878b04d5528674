//! `gbuild snapshot --machine M [-o DIR]` (our `docker commit`): the builder's upper dir becomes a
//! new sealed layer of a new image the builder then runs on, and that image is exported as an OCI
//! image layout. `gbuild snapshot --image NAME [-o DIR]` exports an existing image. Same content
//! gives byte-identical blobs.

use std::path::PathBuf;

use gbuild::layer::oci::{self, Compression};

use super::Ctx;

#[derive(clap::Args, Debug)]
pub struct SnapshotOpts {
    /// Image to export
    #[arg(
        long,
        value_name = "NAME",
        required_unless_present = "machine",
        conflicts_with = "machine"
    )]
    pub image: Option<String>,
    /// Commit this machine's builder into a new image and export that
    #[arg(long, value_name = "M")]
    pub machine: Option<String>,
    /// Output directory (must not exist or be empty) [default: <store>/exports/<image>]
    #[arg(short, long, value_name = "DIR")]
    pub output: Option<PathBuf>,
    /// Layer blob compression
    #[arg(long, value_enum, default_value_t = Compression::Zstd)]
    pub compression: Compression,
}

pub fn run(ctx: &Ctx, o: SnapshotOpts) -> anyhow::Result<i32> {
    let (store, h) = super::layer::helper(ctx)?;
    let image = match (&o.image, &o.machine) {
        (Some(i), _) => i.clone(),
        (None, Some(m)) => commit_builder(&store, &h, m, o.compression)?,
        (None, None) => unreachable!("clap requires one"),
    };
    let out = o
        .output
        .unwrap_or_else(|| oci::default_export_dir(&store, &image));
    let r = oci::export(&store, &h, &image, &out, o.compression)?;
    ctx.note(&format!(
        "snapshot of {} in {} ({} layer(s))",
        image,
        r.dir.display(),
        r.blobs.len()
    ));
    println!("{}", r.manifest_digest);
    Ok(0)
}

/// Commit the builder of machine `name` (its loop must not run) into image `<name>/snap-<unix>`,
/// which the builder then runs on with an empty upper dir. The commit writes the new layer's
/// blob as it goes, so the export that follows packs nothing.
fn commit_builder(
    store: &gbuild::store::Store,
    h: &gbuild::layer::ns::Helper,
    name: &str,
    compression: Compression,
) -> anyhow::Result<String> {
    let m = gbuild::builder::Machine::open(store, name)?;
    let m = gbuild::builder::MachineLock::acquire(store, &m.name)?;
    let mut meta = m.meta()?;
    let base = meta
        .image
        .clone()
        .ok_or_else(|| gbuild::builder::BuilderError::NotBootstrapped(name.to_string()))?;
    if !meta.builder {
        return Err(gbuild::builder::BuilderError::NoBuilder(name.to_string()).into());
    }
    let new = format!("{name}/snap-{}", gbuild::builder::state::now());
    gbuild::layer::image::commit(store, h, &base, &m.upper(), Some(&new), Some(compression))?;
    meta.image = Some(new.clone());
    m.save_meta(&meta)?;
    Ok(new)
}
