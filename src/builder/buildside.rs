//! Host-only settings, neutralised on the build side, and the builder's own build options. A
//! real host's /etc/portage carries settings that only make sense on that host (`--ask` in
//! EMERGE_DEFAULT_OPTS, FEATURES that sign or fetch binaries, a PORTAGE_TMPDIR that exists only
//! there, its own MAKEOPTS). The machine's configuration keeps them exactly as the host has them
//! (the drift check compares them); every emerge the builder runs gets, beside that
//! configuration:
//!
//! - in its process environment, only what must win over everything, per-package files
//!   included: FEATURES that the builder cannot or must not use, `BINPKG_FORMAT=gpkg`, and
//!   EMERGE_DEFAULT_OPTS with the builder's own scheduling only (gbuild.toml's `emerge_jobs`
//!   and `load_average`, else empty: the builder's arguments are complete, and the host's
//!   `--jobs`/`--load-average` are for its hardware);
//! - the builder's own values that per-package env files must still override (MAKEOPTS,
//!   gbuild.toml's or `-j<jobs>`; the host's `-march=native` as gcc resolved it there;
//!   ccache's settings), and the FEATURES again (Portage's helper processes, such as the one
//!   that packs and signs a binpkg, re-read make.conf with the resolved FEATURES only), in a
//!   `*/*` package.env entry. Portage applies `*/*` entries on top of make.conf and below every
//!   per-package entry (its config lookup order is env > package.env > `*/*` package.env >
//!   make.conf > profile), so a host's `app-misc/x j1.conf` with `MAKEOPTS=-j1` still wins, as
//!   it does on the host;
//! - every directory a PORTAGE_TMPDIR (make.conf or an env/ file) names, as an empty build-side
//!   directory bound there; with gbuild.toml's `tmpfs`, a tmpfs of that size on make.conf's
//!   `PORTAGE_TMPDIR/portage` (where Portage makes its build directories; a per-package
//!   PORTAGE_TMPDIR such as a host's `notmpfs.conf` still builds on disk);
//! - with gbuild.toml's `ccache`, the machine's cache in the store (`machines/M/ccache`, which
//!   outlives builders like PKGDIR) bound at `/var/cache/ccache`, and `ccache` in the entry's
//!   FEATURES (a host's per-package `FEATURES=-ccache` still wins).
//!
//! The entry and the builder's env file are read-only bind mounts, made for each container and
//! never written into the machine's configuration; the drift check's capture runs without them
//! and without the build options.
//!
//! distcc helpers (`distcc`) are build side too: when a pass has helpers that are up, the
//! entry adds `distcc` to FEATURES, sets DISTCC_HOSTS and scales MAKEOPTS to them (a host's own
//! per-package `FEATURES=-distcc` still wins); otherwise `-distcc` goes into emerge's
//! environment as well, so that a host's own distcc settings never send the builder's compiles
//! to the host's network. Portage keeps DISTCC_* out of the environment it saves in a binpkg.

use std::path::{Path, PathBuf};

use super::distcc::Plan;
use super::{BuildEnv, Machine, Result};
use crate::config::BuildOptions;
use crate::fsutil::IoContext;
use crate::host::Bundle;
use crate::runtime::{Bind, Tmpfs};

/// Where the builder's own env file is seen inside the container.
pub const CONTAINER_DIR: &str = "/run/gbuild-builder";
/// The package.env entry's file name when the host's package.env is a directory (sorted last,
/// so the builder's `*/*` values come after the host's own `*/*` entries).
pub const ENTRY_NAME: &str = "zz-gbuild-builder";
/// Where the machine's ccache is seen inside the container.
pub const CCACHE_DIR: &str = "/var/cache/ccache";
/// The package that gives the builder ccache (in no world set: depclean keeps it).
pub const CCACHE_ATOM: &str = "dev-util/ccache";
/// Installs ccache in a builder that lacks it (as `distcc::ENSURE_DISTCC` does distcc).
pub const ENSURE_CCACHE: &str = "command -v ccache >/dev/null || \
     emerge --oneshot --noreplace --buildpkg=n --usepkg=n --color=n dev-util/ccache";

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
    pub tmpfs: Vec<Tmpfs>,
}

/// The host's effective value of `k` (Portage's, else make.conf's).
fn host_var<'a>(b: &'a Bundle, k: &str) -> Option<&'a str> {
    b.manifest
        .variables
        .get(k)
        .or_else(|| b.manifest.make_conf.get(k))
        .map(String::as_str)
}

/// Whether `d` is a PORTAGE_TMPDIR the builder takes (absolute, no `..`).
fn usable_tmpdir(d: &str) -> bool {
    d.starts_with('/') && !d.split('/').any(|c| c == "..")
}

/// make.conf's PORTAGE_TMPDIR (Portage's default `/var/tmp`), below which Portage makes its
/// build directories (`portage/`).
pub fn main_tmpdir(host: Option<&Bundle>) -> String {
    host.and_then(|b| host_var(b, "PORTAGE_TMPDIR"))
        .filter(|d| usable_tmpdir(d) && !d.trim_end_matches('/').is_empty())
        .map(|d| d.trim_end_matches('/').to_string())
        .unwrap_or_else(|| "/var/tmp".to_string())
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
        usable_tmpdir(d) && !matches!(d.trim_end_matches('/'), "" | "/tmp" | "/var/tmp")
    });
    out.sort();
    out.dedup();
    out
}

/// The builder's own env file: MAKEOPTS, the resolved `-march=native` flags, ccache's settings
/// and the pass's distcc settings.
fn builder_conf(
    local_jobs: usize,
    opts: &BuildOptions,
    host: Option<&Bundle>,
    distcc: Option<&Plan>,
) -> String {
    let distcc = distcc.filter(|p| p.enabled());
    let makeopts = match (opts.makeopts(), distcc) {
        (Some(m), _) => m.to_string(),
        (None, Some(p)) => format!("-j{}", p.jobs()),
        (None, None) => format!("-j{local_jobs}"),
    };
    let mut s = String::from(
        "# The builder's own values, written by gbuild for each container (not the host's\n\
         # configuration). Applied as a */* package.env entry: above make.conf, below every\n\
         # per-package entry of the host.\n",
    );
    s.push_str(&format!("MAKEOPTS=\"{makeopts}\"\n"));
    // Also here, not only in emerge's environment: Portage's helpers (the one that packs and
    // signs a binpkg) read make.conf again with only the resolved FEATURES in their
    // environment, where a negation no longer is.
    let mut f = features(distcc.is_some());
    if distcc.is_some_and(|p| p.no_proxy) {
        // Inside Portage's network sandbox only its SOCKS5 proxy leads out, and this distcc
        // cannot use it.
        f.push_str(" -network-sandbox");
    }
    if let Some(bytes) = opts.ccache_bytes() {
        f.push_str(" ccache");
        s.push_str(&format!("CCACHE_DIR=\"{CCACHE_DIR}\"\n"));
        s.push_str(&format!("CCACHE_MAXSIZE=\"{}Ki\"\n", bytes.div_ceil(1024)));
        // The compiler's version and configuration, not its file's mtime: a rebuilt builder or
        // a new stage3 with the same gcc still hits the cache.
        s.push_str("CCACHE_COMPILERCHECK=\"%compiler% -v\"\n");
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
    // builder's emerge arguments are complete. It builds one package at a time, parallel inside
    // each package through MAKEOPTS, unless gbuild.toml asks for `--jobs` (then emerge writes
    // each package's build output to the package's build log only; the loop's log keeps
    // emerge's own lines and each failure's messages).
    let opts = if with_layer {
        env.config.build_options(&m.name)
    } else {
        BuildOptions::default()
    };
    out.env.push(format!(
        "EMERGE_DEFAULT_OPTS={}",
        opts.emerge_opts().join(" ")
    ));

    let dir = m.files().build_side();
    std::fs::create_dir_all(&dir).at("create directory", &dir)?;
    let main = main_tmpdir(host);
    let tmpfs = opts.tmpfs().map(|size| Tmpfs {
        dst: Path::new(&main).join("portage"),
        size: size.to_string(),
    });
    if let Some(b) = host {
        for (i, t) in tmpdirs(b).into_iter().enumerate() {
            let src = dir.join(format!("tmpdir-{i}"));
            std::fs::create_dir_all(&src).at("create directory", &src)?;
            if tmpfs.is_some() && t.trim_end_matches('/') == main {
                // The tmpfs's mount point, inside this bound directory.
                let p = src.join("portage");
                std::fs::create_dir_all(&p).at("create directory", &p)?;
            }
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
    out.tmpfs.extend(tmpfs);
    if opts.ccache_bytes().is_some() {
        let src = m.files().ccache();
        std::fs::create_dir_all(&src).at("create directory", &src)?;
        out.binds.push(Bind {
            src,
            dst: CCACHE_DIR.into(),
            readonly: false,
        });
    }
    let conf_dir = dir.join("env");
    std::fs::create_dir_all(&conf_dir).at("create directory", &conf_dir)?;
    write_if_changed(
        &conf_dir.join("builder.conf"),
        builder_conf(super::distcc::local_jobs(env), &opts, host, distcc).as_bytes(),
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

/// The build-side packages depclean must keep in machine `m`'s builder (in no world set): ccache
/// when it is on, distcc while the pass has helpers.
pub fn kept_atoms(env: &BuildEnv, m: &Machine, distcc: bool) -> Vec<&'static str> {
    let mut v = Vec::new();
    if env.config.build_options(&m.name).ccache_bytes().is_some() {
        v.push(CCACHE_ATOM);
    }
    if distcc {
        v.push(super::distcc::DISTCC_ATOM);
    }
    v
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
    fn build_options_in_the_entry() {
        let plain = builder_conf(6, &BuildOptions::default(), None, None);
        assert!(plain.contains("MAKEOPTS=\"-j6\"\n"), "{plain}");
        assert!(!plain.contains("ccache"), "{plain}");
        let opts = BuildOptions {
            makeopts: Some("-j12 -l10".into()),
            ccache: Some("3G".into()),
            ..BuildOptions::default()
        };
        let conf = builder_conf(6, &opts, None, None);
        assert!(conf.contains("MAKEOPTS=\"-j12 -l10\"\n"), "{conf}");
        assert!(
            conf.contains(&format!("CCACHE_DIR=\"{CCACHE_DIR}\"\n")),
            "{conf}"
        );
        assert!(conf.contains("CCACHE_MAXSIZE=\"3145728Ki\"\n"), "{conf}");
        let features = conf.lines().find(|l| l.starts_with("FEATURES=")).unwrap();
        assert!(features.split(['"', ' ']).any(|f| f == "ccache"), "{conf}");
    }

    #[test]
    fn the_tmpfs_goes_where_make_conf_builds() {
        let t = tempfile::tempdir().unwrap();
        let mk = t.path().join("etc/portage/make.conf");
        std::fs::create_dir_all(mk.parent().unwrap()).unwrap();
        std::fs::write(&mk, "PORTAGE_TMPDIR=\"/srv/build/\"\n").unwrap();
        let b =
            crate::host::export_root(t.path(), &crate::host::ExportOptions::config_dir()).unwrap();
        assert_eq!(main_tmpdir(Some(&b)), "/srv/build");
        assert_eq!(main_tmpdir(None), "/var/tmp");
        std::fs::write(&mk, "PORTAGE_TMPDIR=\"../x\"\n").unwrap();
        let b =
            crate::host::export_root(t.path(), &crate::host::ExportOptions::config_dir()).unwrap();
        assert_eq!(main_tmpdir(Some(&b)), "/var/tmp");
    }

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
