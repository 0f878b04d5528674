//! `gbuild fetch`: download and verify the stage3 and the ebuild-tree snapshot into the store
//! (docs/design.md), or with `--offline` only report what the store already holds.

use std::path::PathBuf;

use anyhow::Context;
use gbuild::fetch::{self, Fetcher, RetryPolicy, Source, Trust};

use super::Ctx;

#[derive(clap::Args, Debug)]
pub struct FetchOpts {
    /// Gentoo mirror base URL: http, https or file [default: from gbuild.toml, else
    /// https://distfiles.gentoo.org]
    #[arg(long, value_name = "URL")]
    pub mirror: Option<String>,
    /// Architecture [default: from gbuild.toml, else amd64]
    #[arg(long)]
    pub arch: Option<String>,
    /// Stage3 variant, e.g. openrc, systemd, desktop-openrc [default: from gbuild.toml, else
    /// openrc]
    #[arg(long)]
    pub variant: Option<String>,
    /// OpenPGP key bundle to use instead of the shipped one (e.g.
    /// /usr/share/openpgp-keys/gentoo-release.asc)
    #[arg(long, value_name = "FILE")]
    pub keyring: Option<PathBuf>,
    /// Also trust this primary key fingerprint (repeatable); the Gentoo keys are pinned
    #[arg(long = "trust", value_name = "FINGERPRINT")]
    pub trust: Vec<String>,
    /// Snapshot date YYYYMMDD [default: gentoo-latest]
    #[arg(long, value_name = "YYYYMMDD")]
    pub snapshot_date: Option<String>,
    /// No network: use only artifacts already verified in the store
    #[arg(long)]
    pub offline: bool,
    /// The snapshot holding this ebuild tree (a host's), found by its timestamp, instead of
    /// `snapshot_date` (for `run`)
    #[arg(skip)]
    pub tree: Option<fetch::TreeIdentity>,
}

pub fn run(ctx: &Ctx, o: FetchOpts) -> anyhow::Result<i32> {
    let store = ctx.store()?;
    let config = ctx.config(&store)?;
    let src = Source::new(
        o.mirror.as_deref().unwrap_or(&config.mirror),
        o.arch.as_deref().unwrap_or(&config.arch),
        o.variant
            .as_deref()
            .unwrap_or(if config.variant.is_empty() {
                gbuild::config::DEFAULT_VARIANT
            } else {
                &config.variant
            }),
        o.snapshot_date.as_deref(),
    )?;
    let _lock = fetch::lock(&store)?;
    let (stage3, snapshot) = if o.offline {
        (
            fetch::offline_stage3(&store, &src)?,
            match &o.tree {
                Some(t) => fetch::offline_snapshot_of_tree(&store, t)?,
                None => fetch::offline_snapshot(&store, &src)?,
            },
        )
    } else {
        let keyring = o.keyring.as_deref().or(config.keyring.as_deref());
        let mut extra = config.trusted_fingerprints.clone();
        extra.extend(o.trust.iter().cloned());
        let trust = Trust::new(keyring, &extra)?;
        let fetcher = Fetcher::new(RetryPolicy::from_env())?;
        let mut got = Vec::new();
        for what in ["stage3", "snapshot"] {
            let r = match (what, &o.tree) {
                ("stage3", _) => fetch::fetch_stage3(&store, &src, &trust, &fetcher),
                (_, Some(t)) => fetch::fetch_snapshot_of_tree(&store, &src, t, &trust, &fetcher),
                (_, None) => fetch::fetch_snapshot(&store, &src, &trust, &fetcher),
            }
            .with_context(|| format!("fetch {what}"))?;
            for w in &r.warnings {
                eprintln!("gbuild: {w}");
            }
            if ctx.verbose {
                let m = &r.artifact.manifest;
                eprintln!(
                    "{what}: {} signed by {} (primary {}), sha512 {}",
                    m.file, m.signer.key, m.signer.primary, m.sha512
                );
            }
            if !r.downloaded {
                ctx.note(&format!(
                    "{what}: {} already verified in the store",
                    r.artifact.manifest.file
                ));
            }
            got.push(r.artifact);
        }
        let snapshot = got.pop().expect("two artifacts");
        let stage3 = got.pop().expect("two artifacts");
        (stage3, snapshot)
    };
    println!("stage3: {}", stage3.path.display());
    println!("snapshot: {}", snapshot.path.display());
    Ok(0)
}
