//! `gbuild request [--machine M] ATOM... [--drop] [--wait]`: on the builder (over ssh from the
//! host), build packages the host wants before they are in its world. The atoms join the
//! machine's build set until the host's world has them (`--drop` withdraws them); the loop is
//! woken; `--wait` returns when every atom has a published binpkg (exit 0) or a pass after the
//! request failed (exit 1).

use std::time::Duration;

use gbuild::builder::state::{PassOutcome, State};
use gbuild::builder::Machine;
use gbuild::host::requests::{self, Atom};

use super::Ctx;

#[derive(clap::Args, Debug)]
pub struct RequestOpts {
    /// The machine whose build set gets the packages
    #[arg(long, default_value = "default")]
    pub machine: String,
    /// Package atoms: cat/pkg, =cat/pkg-1.0, >=cat/pkg-2:0, cat/pkg::repo
    #[arg(value_name = "ATOM", required = true)]
    pub atoms: Vec<String>,
    /// Withdraw the atoms instead
    #[arg(long, conflicts_with = "wait")]
    pub drop: bool,
    /// Return when the packages are published (0) or a pass building them failed (1)
    #[arg(long)]
    pub wait: bool,
}

pub fn run(ctx: &Ctx, o: RequestOpts) -> anyhow::Result<i32> {
    let store = ctx.store()?;
    let m = Machine::open(&store, &o.machine)?;
    let since = gbuild::builder::state::now();
    let ch = requests::change(&store, &m.name, &o.atoms, o.drop)?;
    for a in &ch.satisfied {
        ctx.note(&format!(
            "request: {a} is in the host's world now; no longer a request"
        ));
    }
    for a in &ch.added {
        println!("requested {a} for {}", m.name);
    }
    for a in &ch.dropped {
        println!("dropped {a} from the requests of {}", m.name);
    }
    for a in &ch.unknown {
        ctx.note(&format!("request: {a} was not requested for {}", m.name));
    }
    if o.drop {
        return Ok(0);
    }
    let loop_holder = gbuild::lock::Lock::holder(&m.lock_path());
    if !ch.added.is_empty() {
        gbuild::builder::pass::resume(&m)?;
        match &loop_holder {
            Some(h) => ctx.note(&format!("request: woke the loop of {} ({h})", m.name)),
            None => ctx.note(&format!(
                "request: no loop runs for {}: its next pass builds them (`gbuild run --machine {}`)",
                m.name, m.name
            )),
        }
    }
    if !o.wait {
        return Ok(0);
    }
    let atoms: Vec<Atom> = o
        .atoms
        .iter()
        .map(|a| Atom::parse(a).map_err(anyhow::Error::from))
        .collect::<anyhow::Result<_>>()?;
    wait(ctx, &m, &atoms, since)
}

/// Poll the published index and the loop's state until every atom is published or a pass that
/// started after the request failed.
fn wait(ctx: &Ctx, m: &Machine, atoms: &[Atom], since: u64) -> anyhow::Result<i32> {
    let index = m.published().packages();
    let mut said = String::new();
    loop {
        let text = std::fs::read_to_string(&index).unwrap_or_default();
        let found: Vec<Vec<String>> = atoms
            .iter()
            .map(|a| requests::published_matches(&text, a))
            .collect();
        if found.iter().all(|f| !f.is_empty()) {
            for (a, f) in atoms.iter().zip(&found) {
                println!("published {a}: {}", f.join(" "));
            }
            return Ok(0);
        }
        let st = State::load(m);
        if let Some(lp) = &st.last_pass {
            // Any outcome but success (a word of a newer version, too) publishes nothing.
            if lp.started >= since && lp.finished.is_some() && lp.result != PassOutcome::Success {
                let missing: Vec<String> = atoms
                    .iter()
                    .zip(&found)
                    .filter(|(_, f)| f.is_empty())
                    .map(|(a, _)| a.to_string())
                    .collect();
                eprintln!(
                    "gbuild: the pass of {} after the request {}{}; not published: {}; log: {}",
                    m.name,
                    lp.result,
                    lp.failed_package
                        .as_deref()
                        .map(|p| format!(" in {p}"))
                        .unwrap_or_default(),
                    missing.join(" "),
                    m.dir().join(&lp.log).display()
                );
                return Ok(1);
            }
        }
        let now_says = format!(
            "{}{}",
            st.state,
            st.current
                .as_ref()
                .map(|c| format!(" ({} of {}: {})", c.index, c.total, c.package))
                .unwrap_or_default()
        );
        if now_says != said {
            ctx.note(&format!("request: {}: {now_says}", m.name));
            said = now_says;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}
