//! Host-only settings, neutralised on the build side. A real host's /etc/portage carries settings
//! that only make sense on that host (`--ask` in EMERGE_DEFAULT_OPTS, FEATURES that sign or fetch
//! binaries, a PORTAGE_TMPDIR that exists only there, its own MAKEOPTS). The machine's
//! configuration keeps them exactly as the host has them (the drift check compares them); every
//! emerge the builder runs gets, beside that configuration:
//!
//! - in its process environment, only what must win over everything, per-package files
//!   included: FEATURES that the builder cannot or must not use, `BINPKG_FORMAT=gpkg`, and an
//!   empty EMERGE_DEFAULT_OPTS (the builder's arguments are complete; its own scheduling
//!   replaces the host's `--jobs`/`--load-average`);
//! - the builder's own values that per-package env files must still override (MAKEOPTS, the
//!   host's `-march=native` as gcc resolved it there), and the FEATURES again (Portage's
//!   helper processes, such as the one that packs and signs a binpkg, re-read make.conf with
//!   the resolved FEATURES only), in a `*/*` package.env entry. Portage
//!   applies `*/*` entries on top of make.conf and below every per-package entry (its config
//!   lookup order is env > package.env > `*/*` package.env > make.conf > profile), so a host's
//!   `app-misc/x j1.conf` with `MAKEOPTS=-j1` still wins, as it does on the host;
//! - every directory a PORTAGE_TMPDIR (make.conf or an env/ file) names, as an empty build-side
//!   directory bound there.
//!
//! The entry and the builder's env file are read-only bind mounts, made for each container and
//! never written into the machine's configuration; the drift check's capture runs without them.
//!
//! distcc helpers (`distcc`) are build side too: when a pass has helpers that are up, the
//! entry adds `distcc` to FEATURES, sets DISTCC_HOSTS and scales MAKEOPTS to them (a host's own
//! per-package `FEATURES=-distcc` still wins); otherwise `-distcc` goes into emerge's
//! environment as well, so that a host's own distcc settings never send the builder's compiles
//! to the host's network. Portage keeps DISTCC_* out of the environment it saves in a binpkg.

use std::path::{Path, PathBuf};

use super::distcc::Plan;
use super::{BuildEnv, Machine, Result};
use crate::fsutil::IoContext;
use crate::host::Bundle;
use crate::runtime::Bind;

/// Where the builder's own env file is seen inside the container.
pub const CONTAINER_DIR: &str = "/run/gbuild-builder";
/// The package.env entry's file name when the host's package.env is a directory (sorted last,
/// so the builder's `*/*` values come after the host's own `*/*` entries).
pub const ENTRY_NAME: &str = "zz-gbuild-builder";

/// FEATURES the builder turns off whatever the host says: setgroups() is denied in the rootless
/// namespace (userpriv, usersandbox, userfetch); the builder compiles and never pulls binaries
/// from a binhost (getbinpkg); it signs nothing with a host's key (binpkg-signing,
/// gpg-keepalive); and it reuses its own PKGDIR, whose gpkgs gbuild signs after a pass with a key
/// the builder has no keyring for, while Portage verifies any signed local gpkg before using it
/// (binpkg-request-signature off, binpkg-ignore-signature on).
pub const NEUTRAL_FEATURES: &str = "-userpriv -usersandbox -userfetch -getbinpkg -binpkg-signing -binpkg-request-signature binpkg-ignore-signature -gpg-keepalive";

/// What one container gets beside the machine's configuration.
#[derive(Debug, Default)]
pub struct BuildSide {
    pub env: Vec<String>,
    pub binds: Vec<Bind>,
}

/// The host's effective value of `k` (Portage's, else make.conf's).
fn host_var<'a>(b: &'a Bundle, k: &str) -> Option<&'a str> {
    b.manifest
        .variables
        .get(k)
        .or_else(|| b.manifest.make_conf.get(k))
        .map(String::as_str)
}

/// Every PORTAGE_TMPDIR the host's configuration names: make.conf's and those of env/ files.
pub fn tmpdirs(b: &Bundle) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    if let Some(v) = host_var(b, "PORTAGE_TMPDIR") {
        out.push(v.to_string());
    }
    for (p, d) in b.files_under("etc/portage/env") {
        if let Ok(vars) = crate::host::makeconf::parse(&String::from_utf8_lossy(d), p) {
            if let Some(v) = vars.get("PORTAGE_TMPDIR") {
                out.push(v.clone());
            }
        }
    }
    out.retain(|d| {
        d.starts_with('/')
            && !d.split('/').any(|c| c == "..")
            && !matches!(d.trim_end_matches('/'), "" | "/tmp" | "/var/tmp")
    });
    out.sort();
    out.dedup();
    out
}

/// The builder's own env file: MAKEOPTS, the resolved `-march=native` flags, and the pass's
/// distcc settings.
fn builder_conf(env: &BuildEnv, host: Option<&Bundle>, distcc: Option<&Plan>) -> String {
    let distcc = distcc.filter(|p| p.enabled());
    let jobs = match distcc {
        Some(p) => p.jobs(),
        None => super::distcc::local_jobs(env),
    };
    let mut s = String::from(
        "# The builder's own values, written by gbuild for each container (not the host's\n\
         # configuration). Applied as a */* package.env entry: above make.conf, below every\n\
         # per-package entry of the host.\n",
    );
    s.push_str(&format!("MAKEOPTS=\"-j{jobs}\"\n"));
    // Also here, not only in emerge's environment: Portage's helpers (the one that packs and
    // signs a binpkg) read make.conf again with only the resolved FEATURES in their
    // environment, where a negation no longer is.
    let mut f = features(distcc.is_some());
    if distcc.is_some_and(|p| p.no_proxy) {
        // Inside Portage's network sandbox only its SOCKS5 proxy leads out, and this distcc
        // cannot use it.
        f.push_str(" -network-sandbox");
    }
    s.push_str(&format!("FEATURES=\"{f}\"\n"));
    if let Some(p) = distcc {
        s.push_str(&format!("DISTCC_HOSTS=\"{}\"\n", p.distcc_hosts()));
    }
    if let Some(b) = host {
        for (k, v) in super::native_flags_of(b) {
            s.push_str(&format!(
                "{k}=\"{}\"\n",
                v.replace(['"', '\\', '$', '`'], "")
            ));
        }
    }
    s
}

/// The builder's FEATURES: the neutral ones, and distcc on or off.
fn features(distcc: bool) -> String {
    format!(
        "{NEUTRAL_FEATURES} {}",
        if distcc { "distcc" } else { "-distcc" }
    )
}

/// Whether the machine's /etc/portage/package.env is a regular file (else a directory or absent).
fn package_env_is_file(m: &Machine, host: Option<&Bundle>) -> bool {
    match host {
        Some(b) => b
            .entry("etc/portage/package.env")
            .is_some_and(|e| e.kind == crate::host::bundle::EntryKind::File),
        None => m.config_dir().join("etc/portage/package.env").is_file(),
    }
}

/// Write the build-side files of machine `m` under `machines/M/build-side/` and return what a
/// container gets. `with_layer: false` leaves out the package.env entry (the drift check's
/// capture, which must see the host's configuration only). `distcc`: the pass's helpers.
pub fn prepare(
    env: &BuildEnv,
    m: &Machine,
    host: Option<&Bundle>,
    with_layer: bool,
    distcc: Option<&Plan>,
) -> Result<BuildSide> {
    let mut out = BuildSide::default();
    let distcc = distcc.filter(|p| p.enabled() && with_layer);
    // With helpers, distcc comes from the package.env entry, where a host's per-package
    // `FEATURES=-distcc` can still turn it off; without, nothing turns it on.
    if distcc.is_some() {
        out.env.push(format!("FEATURES={NEUTRAL_FEATURES}"));
    } else {
        out.env.push(format!("FEATURES={}", features(false)));
    }
    out.env.push("BINPKG_FORMAT=gpkg".into());
    // The host's options are for a person at a terminal (`--ask`), for its binhosts
    // (`--getbinpkg`, `--usepkgonly`) or for its hardware (`--jobs`, `--load-average`); the
    // builder's emerge arguments are complete, and it builds one package at a time (with
    // `--jobs` emerge writes each package's output to its log only, which would hide progress
    // and failures from the loop), parallel inside each package through MAKEOPTS.
    out.env.push("EMERGE_DEFAULT_OPTS=".into());

    let dir = m.files().build_side();
    std::fs::create_dir_all(&dir).at("create directory", &dir)?;
    if let Some(b) = host {
        for (i, t) in tmpdirs(b).into_iter().enumerate() {
            let src = dir.join(format!("tmpdir-{i}"));
            std::fs::create_dir_all(&src).at("create directory", &src)?;
            out.binds.push(Bind {
                src,
                dst: PathBuf::from(t),
                readonly: false,
            });
        }
    }
    if !with_layer {
        return Ok(out);
    }
    let conf_dir = dir.join("env");
    std::fs::create_dir_all(&conf_dir).at("create directory", &conf_dir)?;
    write_if_changed(
        &conf_dir.join("builder.conf"),
        builder_conf(env, host, distcc).as_bytes(),
    )?;
    out.binds.push(Bind {
        src: conf_dir,
        dst: CONTAINER_DIR.into(),
        readonly: true,
    });
    let line = format!("*/* {CONTAINER_DIR}/builder.conf\n");
    if package_env_is_file(m, host) {
        // The host's own file, as it is, with the entry appended (a file cannot hold another).
        let mut text = match host {
            Some(b) => b
                .file("etc/portage/package.env")
                .unwrap_or_default()
                .to_vec(),
            None => {
                let p = m.config_dir().join("etc/portage/package.env");
                std::fs::read(&p).at("read", &p)?
            }
        };
        if !text.is_empty() && !text.ends_with(b"\n") {
            text.push(b'\n');
        }
        text.extend_from_slice(b"# gbuild: the builder's own values (build side)\n");
        text.extend_from_slice(line.as_bytes());
        let p = dir.join("package.env");
        write_if_changed(&p, &text)?;
        out.binds.push(Bind {
            src: p,
            dst: "/etc/portage/package.env".into(),
            readonly: true,
        });
    } else {
        let p = dir.join(ENTRY_NAME);
        write_if_changed(&p, line.as_bytes())?;
        out.binds.push(Bind {
            src: p,
            dst: Path::new("/etc/portage/package.env").join(ENTRY_NAME),
            readonly: true,
        });
    }
    Ok(out)
}

fn write_if_changed(p: &Path, data: &[u8]) -> Result<()> {
    if std::fs::read(p).ok().as_deref() != Some(data) {
        crate::fsutil::atomic_write(p, data)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_host_tmpdir_is_found() {
        let t = tempfile::tempdir().unwrap();
        for (p, d) in [
            ("etc/portage/make.conf", "PORTAGE_TMPDIR=\"/var/tmp\"\n"),
            ("etc/portage/package.env", "app-misc/a notmpfs.conf\n"),
            (
                "etc/portage/env/notmpfs.conf",
                "PORTAGE_TMPDIR=\"/var/tmp/notmpfs\"\n",
            ),
            ("etc/portage/env/big.conf", "PORTAGE_TMPDIR=/srv/build\n"),
            ("etc/portage/env/bad.conf", "PORTAGE_TMPDIR=/srv/../etc\n"),
        ] {
            let p = t.path().join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, d).unwrap();
        }
        let b =
            crate::host::export_root(t.path(), &crate::host::ExportOptions::config_dir()).unwrap();
        assert_eq!(tmpdirs(&b), vec!["/srv/build", "/var/tmp/notmpfs"]);
    }
}
