//! `gbuild image ...`: list, inspect and remove images (named stacks of layers).

use gbuild::layer::image;

use super::Ctx;

#[derive(clap::Args, Debug)]
pub struct ImageOpts {
    #[command(subcommand)]
    pub command: ImageCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum ImageCommand {
    /// List images
    List {
        #[arg(long)]
        json: bool,
    },
    /// Print an image's overlay lower dirs, top layer first, joined with ':' (for lowerdir=)
    Lowerdir { name: String },
    /// Remove an image (its layers stay until `gbuild gc`)
    Rm { name: String },
}

pub fn run(ctx: &Ctx, o: ImageOpts) -> anyhow::Result<i32> {
    let store = ctx.store()?;
    match o.command {
        ImageCommand::List { json } => {
            let imgs = image::list(&store)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&imgs)?);
            } else {
                for i in imgs {
                    println!("{}  {} layer(s)  {}", i.name, i.layers.len(), i.made_by);
                }
            }
        }
        ImageCommand::Lowerdir { name } => {
            let img = image::load(&store, &name)?;
            let dirs: Vec<String> = image::lowerdirs(&store, &img)
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            println!("{}", dirs.join(":"));
        }
        ImageCommand::Rm { name } => image::remove(&store, &name)?,
    }
    Ok(0)
}
