//! `gbuild publish [--machine M] list|rollback [GEN]|tag NAME [GEN]`: the published
//! generations hosts can be served; serve an older one again, name one for hosts that follow a
//! tag (`/<M>@<tag>/`).

use anyhow::{bail, Context};
use gbuild::builder::generations::{self, PublishLock};
use gbuild::builder::Machine;

use super::Ctx;

#[derive(clap::Args, Debug)]
pub struct PublishOpts {
    /// The machine whose publications to show or change
    #[arg(long, default_value = "default")]
    pub machine: String,
    #[command(subcommand)]
    pub action: Action,
}

#[derive(clap::Subcommand, Debug)]
pub enum Action {
    /// The generations kept, newest last: which one is served, tags
    List {
        /// Machine-readable output
        #[arg(long)]
        json: bool,
    },
    /// Serve generation GEN again (default: the one before the served one)
    Rollback { generation: Option<u64> },
    /// Name generation GEN (default: the served one) NAME; hosts follow it at /<M>@NAME/
    Tag {
        name: String,
        generation: Option<u64>,
        /// Remove the tag instead
        #[arg(long, conflicts_with = "generation")]
        delete: bool,
    },
}

pub fn run(ctx: &Ctx, o: PublishOpts) -> anyhow::Result<i32> {
    let store = ctx.store()?;
    let m = Machine::open(&store, &o.machine)?;
    match o.action {
        Action::List { json } => list(&m, json),
        Action::Rollback { generation } => {
            let lock = PublishLock::acquire(&m)?;
            let current = generations::current(&m);
            let id = match generation {
                Some(g) => g,
                None => {
                    let Some(cur) = current else {
                        bail!("machine {}: nothing published yet", m.name);
                    };
                    generations::ids(&m)?
                        .into_iter()
                        .rev()
                        .find(|id| *id < cur)
                        .with_context(|| {
                            format!(
                                "machine {}: generation {cur} is the oldest kept; nothing to roll back to",
                                m.name
                            )
                        })?
                }
            };
            generations::switch(&lock, id)?;
            println!("{id}");
            ctx.note(&format!(
                "machine {} serves generation {id}{} (hosts see it within the index TTL, {} s)",
                m.name,
                current
                    .map(|c| format!(" instead of {c}"))
                    .unwrap_or_default(),
                gbuild::builder::publish::INDEX_TTL_SECS,
            ));
            Ok(0)
        }
        Action::Tag {
            name,
            generation,
            delete,
        } => {
            let lock = PublishLock::acquire(&m)?;
            if delete {
                if !generations::remove_tag(&lock, &name)? {
                    bail!("machine {}: no tag {name:?}", m.name);
                }
                ctx.note(&format!("machine {}: tag {name} removed", m.name));
                return Ok(0);
            }
            let id = match generation.or_else(|| generations::current(&m)) {
                Some(id) => id,
                None => bail!("machine {}: nothing published yet", m.name),
            };
            generations::set_tag(&lock, &name, id)?;
            println!("{id}");
            ctx.note(&format!(
                "machine {}: {name} is generation {id}; hosts follow it at /{}@{name}/",
                m.name, m.name
            ));
            Ok(0)
        }
    }
}

fn list(m: &Machine, json: bool) -> anyhow::Result<i32> {
    let all = generations::list(m)?;
    let current = generations::current(m);
    let tags = generations::tags(m)?;
    let tags_of = |id: u64| -> Vec<String> {
        tags.iter()
            .filter(|(_, g)| **g == id)
            .map(|(t, _)| t.clone())
            .collect()
    };
    if json {
        let v: Vec<serde_json::Value> = all
            .iter()
            .map(|g| {
                serde_json::json!({
                    "generation": g.id,
                    "served": current == Some(g.id),
                    "tags": tags_of(g.id),
                    "info": g.info,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(0);
    }
    println!(
        "{:>4} {:<1} {:<20} {:<9} {:>8} {:>6} {:>6} {:>5}  tags",
        "gen", "", "published", "snapshot", "packages", "built", "reused", "held"
    );
    for g in &all {
        let i = &g.info;
        let (built, reused) = i.pass.as_ref().map_or(("-".into(), "-".into()), |p| {
            (p.built.to_string(), p.reused.to_string())
        });
        println!(
            "{:>4} {:<1} {:<20} {:<9} {:>8} {:>6} {:>6} {:>5}  {}",
            g.id,
            if current == Some(g.id) { "*" } else { "" },
            gbuild::time::utc_minutes(i.published_at as i64),
            i.snapshot
                .as_ref()
                .and_then(|s| s.date.as_deref())
                .unwrap_or("-"),
            i.packages,
            built,
            reused,
            i.held_back.len(),
            tags_of(g.id).join(",")
        );
    }
    Ok(0)
}
