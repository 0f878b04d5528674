//! `gbuild layer ...`: make and inspect sealed layers by hand (unpack a stage3, commit an overlay
//! upper dir, unpack an ebuild-tree snapshot, remove subordinate-owned trees), and the hidden
//! helper verb that runs layer work inside the user namespace.

use std::path::PathBuf;

use gbuild::idmap::{IdMapping, IdPolicy};
use gbuild::layer::{self, image, ns::Helper};

use super::Ctx;

#[derive(clap::Args, Debug)]
pub struct LayerOpts {
    #[command(subcommand)]
    pub command: LayerCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum LayerCommand {
    /// Unpack a root filesystem tarball (stage3: xz, gz, bz2, zst or plain) into a new sealed
    /// layer; prints the layer id
    Unpack {
        tarball: PathBuf,
        /// Also make it the single-layer image NAME (GROUP/NAME allowed)
        #[arg(long, value_name = "NAME")]
        image: Option<String>,
    },
    /// Commit an overlay upper dir (of a stopped container on image NAME) into a new layer on
    /// top of the image; the upper dir is emptied. Prints the new layer id
    Commit {
        #[arg(long, value_name = "NAME")]
        image: String,
        #[arg(long, value_name = "DIR")]
        upper: PathBuf,
        /// Save the result under this name instead of replacing --image
        #[arg(long, value_name = "NAME")]
        new_image: Option<String>,
    },
    /// List sealed layers
    List {
        #[arg(long)]
        json: bool,
    },
    /// Unpack an ebuild-tree snapshot into repos/<name>/ (top directory stripped); prints the path
    UnpackRepo {
        tarball: PathBuf,
        /// Snapshot name [default: tarball name without .tar.*]
        #[arg(long)]
        name: Option<String>,
    },
    /// Remove directory trees holding files owned by subordinate ids (upper and work dirs)
    RmTree {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
}

/// The store and a helper running layer work in the containers' user namespace.
pub fn helper(ctx: &Ctx) -> anyhow::Result<(gbuild::store::Store, Helper)> {
    let store = ctx.store()?;
    let map = IdMapping::for_current_user(IdPolicy::Auto, &mut |w| ctx.note(w))?;
    Ok((store.clone(), Helper::new(store, map)))
}

pub fn run(ctx: &Ctx, o: LayerOpts) -> anyhow::Result<i32> {
    match o.command {
        LayerCommand::Unpack { tarball, image } => {
            let (store, h) = helper(ctx)?;
            let (info, _) = image::from_rootfs(&store, &h, &tarball, image.as_deref())?;
            println!("{}", info.id);
        }
        LayerCommand::Commit {
            image,
            upper,
            new_image,
        } => {
            let (store, h) = helper(ctx)?;
            let (info, img) =
                image::commit(&store, &h, &image, &upper, new_image.as_deref(), None)?;
            match info {
                Some(i) => println!("{}", i.id),
                None => ctx.note(&format!(
                    "{}: upper dir is empty, image {} unchanged",
                    upper.display(),
                    img.name
                )),
            }
        }
        LayerCommand::List { json } => {
            let store = ctx.store()?;
            let layers = layer::list_layers(&store)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&layers)?);
            } else {
                for l in layers {
                    println!("{}  {:>12}  {:>8}  {}", l.id, l.size, l.entries, l.source);
                }
            }
        }
        LayerCommand::UnpackRepo { tarball, name } => {
            let store = ctx.store()?;
            let name = name.unwrap_or_else(|| layer::unpack::repo_name_of(&tarball));
            let dest = layer::unpack::unpack_repo(&store, &tarball, &name)?;
            println!("{}", dest.display());
        }
        LayerCommand::RmTree { paths } => {
            let (_, h) = helper(ctx)?;
            h.remove_trees(&paths)?;
        }
    }
    Ok(0)
}

/// The hidden `__layer-helper REQUEST` verb (inside the user namespace).
pub fn serve(request: &str) -> i32 {
    layer::inside::serve(request)
}
