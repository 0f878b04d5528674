//! `gbuild host export`: run on a Gentoo host, capture its configuration bundle
//! (docs/design.md): /etc/portage, world, profile, tree snapshot identities, kernel, CPU flags and the
//! variables Portage uses. `gbuild host trust`: as root on the host, make Portage trust the
//! builder's binpkg signing key.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use gbuild::host::{self, ExportOptions, VarSource};

use super::Ctx;

#[derive(clap::Args, Debug)]
pub struct HostOpts {
    #[command(subcommand)]
    pub command: HostCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum HostCommand {
    /// Capture this host's configuration into a bundle (a tar) for `machine import`
    Export(ExportOpts),
    /// As root: import the builder's signing key into Portage's keyring, trusted, after
    /// checking its fingerprint
    Trust(TrustOpts),
    /// As root: check this host is what the builder built for, bring the tree to the served
    /// snapshot, refuse if anything would compile or be skipped, then install from the binhost.
    /// Exit 0 done, 1 failed, 3 configuration drift, 4 the check refused
    Upgrade(UpgradeOpts),
}

#[derive(clap::Args, Debug)]
pub struct UpgradeOpts {
    /// The machine's binhost URL, as in its binrepos.conf (http://builder:8788/<machine>)
    #[arg(long, value_name = "URL")]
    pub binhost: String,
    /// Stop after the check (the tree and the binhost configuration are brought up to date, as
    /// `emerge --sync` would, nothing is installed)
    #[arg(long)]
    pub pretend: bool,
    /// Go on even when the configuration differs from the one the builder built for
    #[arg(long)]
    pub force: bool,
    /// Root of the system to upgrade
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct TrustOpts {
    /// The machine's binhost URL, as in its binrepos.conf (http://builder:8788/<machine>)
    #[arg(long, value_name = "URL")]
    pub binhost: String,
    /// The key's fingerprint as `gbuild key --show` prints it on the builder
    #[arg(long, value_name = "FPR")]
    pub fingerprint: String,
    /// Root of the system whose /etc/portage/gnupg to use
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct ExportOpts {
    /// Root of the system to capture
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,
    /// Output bundle, `-` for standard output [default: gbuild-bundle-<host>.tar]
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Kernel release to record instead of `uname -r`
    #[arg(long, value_name = "VERSION")]
    pub kernel: Option<String>,
    /// Host name to record instead of the system's
    #[arg(long, value_name = "NAME")]
    pub hostname: Option<String>,
    /// Record make.conf's values even where `emerge --info` is available
    #[arg(long)]
    pub no_emerge: bool,
    /// Do not ask gcc what -march=native resolves to
    #[arg(long)]
    pub no_cpu: bool,
    /// Most MiB the trees of local overlays (no sync source) may take in the bundle
    #[arg(long, value_name = "MIB", default_value_t = 64)]
    pub max_overlay_size: u64,
}

pub fn run(ctx: &Ctx, o: HostOpts) -> anyhow::Result<i32> {
    match o.command {
        HostCommand::Export(e) => export(ctx, e),
        HostCommand::Trust(t) => trust(ctx, t),
        HostCommand::Upgrade(u) => upgrade(ctx, u),
    }
}

fn upgrade(ctx: &Ctx, o: UpgradeOpts) -> anyhow::Result<i32> {
    use host::upgrade::Outcome;
    let opts = host::upgrade::UpgradeOptions {
        root: o.root,
        binhost: o.binhost,
        pretend: o.pretend,
        force: o.force,
    };
    // Emerge's own output of the upgrade goes to stdout as it comes, as emerge prints it.
    let outcome = host::upgrade::upgrade(&opts, &mut |l| ctx.note(l), &mut |l| println!("{l}"))?;
    match &outcome {
        Outcome::Installed(p) if p.is_empty() => println!("up to date: nothing to install"),
        Outcome::Installed(p) => {
            println!("installed {} package(s) from the binhost:", p.len());
            for x in p {
                println!("  {x}");
            }
        }
        Outcome::Checked(p) => println!(
            "check passed: {} package(s) would be installed from binaries, nothing compiled",
            p.len()
        ),
        Outcome::Drift(lines) => {
            eprintln!("gbuild: refused: this host is not the configuration the binpkgs were built for (export and import it again, or --force):");
            for l in lines {
                eprintln!("  {l}");
            }
        }
        Outcome::Refused(lines) => {
            eprintln!("gbuild: refused before installing anything: the binhost cannot upgrade this host from binaries alone:");
            for l in lines {
                eprintln!("  {l}");
            }
        }
        Outcome::Failed { code, installed } => eprintln!(
            "gbuild: emerge failed (exit {code}) after installing {} package(s)",
            installed.len()
        ),
    }
    Ok(outcome.code())
}

fn trust(ctx: &Ctx, o: TrustOpts) -> anyhow::Result<i32> {
    let opts = host::trust::TrustOptions {
        root: o.root,
        binhost: o.binhost,
        fingerprint: o.fingerprint,
    };
    let home = host::trust::keyring_dir(&opts.root);
    match host::trust::trust(&opts)? {
        host::trust::Trusted::Already => ctx.note(&format!(
            "{} already trusts {}: nothing changed",
            home.display(),
            opts.fingerprint
        )),
        host::trust::Trusted::Added { created, how } => {
            if created {
                ctx.note(&format!("created {}", home.display()));
            }
            ctx.note(&format!(
                "{} now trusts {} ({how})",
                home.display(),
                opts.fingerprint
            ));
        }
    }
    Ok(0)
}

fn export(ctx: &Ctx, o: ExportOpts) -> anyhow::Result<i32> {
    let opts = ExportOptions {
        kernel: o.kernel,
        hostname: o.hostname,
        effective: !o.no_emerge,
        cpu: !o.no_cpu,
        overlay_limit: o.max_overlay_size.max(1) << 20,
        ..ExportOptions::host()
    };
    let bundle = host::export_root(&o.root, &opts)
        .with_context(|| format!("capture {}", o.root.display()))?;
    let m = &bundle.manifest;
    if !m.files.iter().any(|f| f.path.starts_with("etc/portage/")) {
        anyhow::bail!(
            "{}: no readable etc/portage (not a Gentoo root?)",
            o.root.display()
        );
    }
    for s in &m.skipped {
        ctx.note(&format!("gbuild: not captured: {}: {}", s.path, s.reason));
    }
    if m.variables_source == VarSource::MakeConf {
        ctx.note("variables: from make.conf (not Portage's effective values)");
    }
    if let Some(c) = &m.cpu {
        ctx.note(&format!(
            "-march=native resolves to: {} ({})",
            c.flags.join(" "),
            c.source
        ));
    }
    let out = o
        .output
        .unwrap_or_else(|| PathBuf::from(format!("gbuild-bundle-{}.tar", m.host)));
    if out.as_os_str() == "-" {
        let stdout = std::io::stdout().lock();
        let mut w = bundle.write_tar(std::io::BufWriter::new(stdout))?;
        w.flush()?;
    } else {
        bundle
            .write_tar_file(&out)
            .with_context(|| format!("write {}", out.display()))?;
        println!("{}", out.display());
    }
    let snapshot = bundle.snapshot_date().unwrap_or_else(|| "unknown".into());
    ctx.note(&format!(
        "host {}: {} entries, profile {}, kernel {}, snapshot {}",
        m.host,
        m.files.len(),
        m.profile
            .as_ref()
            .and_then(|p| p.path.clone())
            .unwrap_or_else(|| "unknown".into()),
        m.kernel.as_deref().unwrap_or("unknown"),
        snapshot
    ));
    Ok(0)
}
