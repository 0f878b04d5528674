//! `gbuild machine import BUNDLE --name M` and `gbuild machine list`: register host
//! configurations as machines (docs/design.md, store contract `machines/M/config/`).

use std::path::PathBuf;

use anyhow::Context;
use gbuild::host::machine;
use gbuild::term::printable;

use super::Ctx;

#[derive(clap::Args, Debug)]
pub struct MachineOpts {
    #[command(subcommand)]
    pub command: MachineCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum MachineCommand {
    /// Make a host bundle the configuration of machine NAME (created if new)
    Import(ImportOpts),
    /// List machines: host, import time, kernel, snapshot, pending update
    List(ListOpts),
}

#[derive(clap::Args, Debug)]
pub struct ImportOpts {
    /// Bundle from `gbuild host export` (replaces the stage3's configuration); `-` reads it
    /// from standard input
    #[arg(
        value_name = "BUNDLE",
        required_unless_present = "overlay",
        conflicts_with = "overlay"
    )]
    pub bundle: Option<PathBuf>,
    /// A directory of your own (etc/portage/**, var/lib/portage/world) laid over the stage3's
    /// own configuration and world instead
    #[arg(long, value_name = "DIR")]
    pub overlay: Option<PathBuf>,
    /// Machine name
    #[arg(long, value_name = "M")]
    pub name: String,
}

#[derive(clap::Args, Debug)]
pub struct ListOpts {
    /// JSON instead of a table
    #[arg(long)]
    pub json: bool,
}

pub fn run(ctx: &Ctx, o: MachineOpts) -> anyhow::Result<i32> {
    match o.command {
        MachineCommand::Import(i) => import(ctx, i),
        MachineCommand::List(l) => list(ctx, l),
    }
}

fn import(ctx: &Ctx, o: ImportOpts) -> anyhow::Result<i32> {
    let store = ctx.store()?;
    let r = match (&o.bundle, &o.overlay) {
        (_, Some(dir)) => machine::import_overlay(&store, &o.name, dir)
            .with_context(|| format!("import overlay {}", dir.display()))?,
        (Some(b), None) if b.as_os_str() == "-" => {
            machine::import_reader(&store, &o.name, std::io::stdin().lock())
                .context("import the bundle on standard input")?
        }
        (Some(b), None) => machine::import(&store, &o.name, b)
            .with_context(|| format!("import {}", b.display()))?,
        (None, None) => anyhow::bail!("machine import: give a BUNDLE or --overlay DIR"),
    };
    if let Some(h) = &r.previous_host {
        eprintln!(
            "gbuild: warning: machine {} was configured from host {}, now from another host",
            r.machine,
            printable(h)
        );
    }
    match &r.changes {
        None => println!("machine {}: imported", r.machine),
        Some(d) if d.is_empty() => println!("machine {}: no changes", r.machine),
        Some(d) => {
            println!("machine {}: changed:", r.machine);
            print!("{}", printable(&d.to_string()));
        }
    }
    for a in &r.satisfied {
        println!(
            "machine {}: {a} is in the host's world now; no longer a request",
            r.machine
        );
    }
    if let Some(n) = &r.gate_notice {
        ctx.note(&format!("gbuild: notice: machine {}: {n}", r.machine));
    }
    if r.needs_update {
        ctx.note(&format!("machine {}: builder marked for update", r.machine));
    }
    // Importing does not take the machine's lock: a running loop applies the new
    // configuration at its next pass (and a loop idling after a failure wakes up for it).
    let lock = store.machine(&r.machine).lock();
    if let Some(h) = gbuild::lock::Lock::holder(&lock) {
        println!(
            "machine {}: in use by {h}; the new configuration applies at its next pass",
            r.machine
        );
    }
    Ok(0)
}

fn date(t: Option<u64>) -> String {
    t.map(|t| {
        let (y, m, d) = gbuild::time::civil_from_days((t / 86400) as i64);
        let s = t % 86400;
        format!("{y:04}-{m:02}-{d:02} {:02}:{:02}", s / 3600, s / 60 % 60)
    })
    .unwrap_or_else(|| "-".into())
}

fn list(ctx: &Ctx, o: ListOpts) -> anyhow::Result<i32> {
    let store = ctx.store()?;
    let machines = machine::list(&store)?;
    if o.json {
        println!("{}", serde_json::to_string_pretty(&machines)?);
        return Ok(0);
    }
    let rows: Vec<[String; 6]> = machines
        .iter()
        .map(|m| {
            [
                m.name.clone(),
                m.host
                    .as_deref()
                    .map_or("-".into(), |h| printable(h).into_owned()),
                date(m.imported),
                m.kernel
                    .as_deref()
                    .map_or("-".into(), |k| printable(k).into_owned()),
                m.snapshot.clone().unwrap_or_else(|| "-".into()),
                if m.update_pending.is_some() {
                    "pending".into()
                } else {
                    "-".into()
                },
            ]
        })
        .collect();
    let head = ["NAME", "HOST", "IMPORTED", "KERNEL", "SNAPSHOT", "UPDATE"].map(String::from);
    let mut w = [0usize; 6];
    for r in std::iter::once(&head).chain(&rows) {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    for r in std::iter::once(&head).chain(&rows) {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = w[i]))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
    Ok(0)
}
