//! `gbuild logs [--machine M] [-f]`: the newest log of the machine (a pass, bootstrap or check),
//! followed with `-f`.

use std::io::{Read, Seek, Write};

use super::{Ctx, MachineOpts};

#[derive(clap::Args, Debug)]
pub struct LogsOpts {
    #[command(flatten)]
    pub m: MachineOpts,
    /// Follow: keep printing what is appended, and switch to newer logs
    #[arg(short, long)]
    pub follow: bool,
}

fn newest(dir: &std::path::Path) -> Option<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    v.sort();
    v.pop().map(|(_, p)| p)
}

pub fn run(ctx: &Ctx, o: LogsOpts) -> anyhow::Result<i32> {
    let store = ctx.store()?;
    let m = gbuild::builder::Machine::open(&store, &o.m.machine)?;
    let mut current = newest(&m.logs())
        .ok_or_else(|| anyhow::anyhow!("no logs yet in {}", m.logs().display()))?;
    let mut f = std::fs::File::open(&current)?;
    let mut buf = Vec::new();
    let mut out = std::io::stdout();
    loop {
        buf.clear();
        f.read_to_end(&mut buf)?;
        out.write_all(&buf)?;
        out.flush()?;
        if !o.follow {
            return Ok(0);
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
        if let Some(n) = newest(&m.logs()) {
            if n != current {
                current = n;
                f = std::fs::File::open(&current)?;
                f.rewind()?;
            }
        }
    }
}
