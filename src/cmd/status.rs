//! `gbuild status [--machine M] [--json]`: the loop's state, current package, last pass, and
//! the state of each distcc helper the machine's gbuild.toml names (probed now).

use gbuild::builder::state::{now, PassKind, State};

use super::{Ctx, MachineOpts};

#[derive(clap::Args, Debug)]
pub struct StatusOpts {
    #[command(flatten)]
    pub m: MachineOpts,
    /// Machine-readable output (the content of state.json)
    #[arg(long)]
    pub json: bool,
}

pub fn run(ctx: &Ctx, o: StatusOpts) -> anyhow::Result<i32> {
    let store = ctx.store()?;
    let m = gbuild::builder::Machine::open(&store, &o.m.machine)?;
    let mut st = State::read(&m)?;
    // A loop that died leaves "building": say so instead of pretending.
    st.state = st.live_state();
    let config = ctx.config(&store)?;
    let helpers = helpers(&config, &m)?;
    if o.json {
        let mut v = serde_json::to_value(&st)?;
        if !helpers.is_empty() {
            v["helpers"] = serde_json::Value::Array(
                helpers
                    .iter()
                    .map(|h| {
                        serde_json::json!({
                            "host": h.spec.to_string(),
                            "state": if h.state.is_ok() { "up" } else { "down" },
                            "error": h.state.as_ref().err(),
                        })
                    })
                    .collect(),
            );
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(0);
    }
    let meta = m.meta()?;
    println!("machine:  {}", m.name);
    println!("state:    {}", st.state);
    if let Some(step) = gbuild::builder::steps::running(&st) {
        println!(
            "step:     {} (for {} s)",
            step.name,
            now().saturating_sub(step.started)
        );
    }
    if let Some(c) = &st.current {
        println!(
            "current:  {} ({}, {} of {})",
            c.package, c.phase, c.index, c.total
        );
    }
    println!(
        "snapshot: {} (hosts must use this ebuild tree)",
        meta.snapshot.as_deref().unwrap_or("none")
    );
    if let Some(lp) = &st.last_pass {
        println!(
            "last pass: {}{} (built {}, from binpkgs {}){}",
            match lp.kind {
                PassKind::Bootstrap => "first build ",
                PassKind::Rebase => "rebase onto a new stage3 ",
                _ => "",
            },
            lp.result,
            lp.built.len(),
            lp.reused,
            lp.failed_package
                .as_ref()
                .map(|p| format!(", failed in {p}"))
                .unwrap_or_default()
        );
        if !lp.steps.is_empty() {
            println!(
                "steps:    {}",
                lp.steps
                    .iter()
                    .map(|s| format!("{} {}", s.name, s.result))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        if !lp.cleanup.is_empty() {
            println!("cleanup:  {}", lp.cleanup_summary());
            for step in lp.cleanup.iter().filter(|s| !s.items.is_empty()) {
                println!("  {}: {}", step.name, step.items.join(", "));
            }
        }
        println!("log:      {}", m.dir().join(&lp.log).display());
    }
    println!(
        "binpkgs:  {} published, {} bytes",
        st.counts.binpkgs, st.counts.bytes
    );
    for h in &helpers {
        match &h.state {
            Ok(()) => println!("helper:   {} up", h.spec),
            Err(e) => println!("helper:   {} down ({e})", h.spec),
        }
    }
    if let Some(g) = &st.gate {
        let what = g.headline();
        println!("gate:     {}", gbuild::term::printable(&what));
        for p in &g.problems {
            println!(
                "  {}: {}",
                gbuild::term::printable(&p.package),
                gbuild::term::printable(&p.reason)
            );
        }
    }
    {
        use gbuild::builder::generations;
        let all = generations::ids(&m)?;
        if let Some(cur) = generations::current(&m) {
            let newest = all.last().copied().unwrap_or(cur);
            println!(
                "served:   generation {cur}{} ({} kept; gbuild publish list)",
                if cur == newest {
                    String::new()
                } else {
                    format!(", rolled back from {newest}")
                },
                all.len()
            );
        }
    }
    for d in &st.drift {
        println!("drift:    {}", gbuild::term::printable(d));
    }
    for w in &st.abi_warnings {
        println!(
            "kernel:   {} {} needs Linux {} (host runs {}): held back",
            w.cpv, w.file, w.requires, w.kernel
        );
    }
    Ok(0)
}

/// The machine's distcc helpers, probed.
fn helpers(
    config: &gbuild::config::Config,
    m: &gbuild::builder::Machine,
) -> anyhow::Result<Vec<gbuild::builder::distcc::Helper>> {
    let specs = gbuild::builder::distcc::parse_hosts(config, &m.name)?;
    Ok(gbuild::builder::distcc::probe(&specs))
}
