//! Drift between a machine's imported host configuration and its builder, checked before every
//! pass: the builder's /etc/portage, world set and `emerge --info` are taken from inside the
//! container and compared with the host bundle by the same engine as `gbuild diff`.

use super::session::Session;
use super::{BuildEnv, Machine, Result};
use crate::fsutil::IoContext;
use crate::host::{Bundle, Diff, ExportOptions};

/// The builder's side as a bundle (what `host export` would capture inside it).
pub fn builder_bundle(env: &BuildEnv, m: &Machine, s: &mut Session) -> Result<Bundle> {
    let tmp = m.files().temp("drift");
    let r = capture(env, m, s, &tmp);
    if tmp.exists() {
        crate::fsutil::remove_tree(&tmp)?;
    }
    r
}

fn capture(env: &BuildEnv, m: &Machine, s: &mut Session, tmp: &std::path::Path) -> Result<Bundle> {
    let out = tmp.join("out");
    std::fs::create_dir_all(&out).at("create directory", &out)?;
    s.extra_binds.push(crate::runtime::Bind {
        src: out.clone(),
        dst: "/run/gbuild-out".into(),
        readonly: false,
    });
    let script = "cd / && tar -cf /run/gbuild-out/cfg.tar etc/portage \
                  $(ls -d var/lib/portage/world var/lib/portage/world_sets 2>/dev/null) \
                  && emerge --info > /run/gbuild-out/info.txt 2>/dev/null";
    s.build_layer = false;
    let r = s.run(vec!["/bin/sh".into(), "-c".into(), script.into()]);
    s.build_layer = true;
    s.extra_binds.pop();
    let code = r?;
    if code != 0 {
        return Err(super::BuilderError::CaptureFailed {
            machine: m.name.clone(),
            code,
            log: s.log_path(),
        });
    }
    let root = tmp.join("root");
    std::fs::create_dir_all(&root).at("create directory", &root)?;
    let tar = out.join("cfg.tar");
    let f = std::fs::File::open(&tar).at("open", &tar)?;
    let mut a = tar::Archive::new(f);
    a.set_preserve_ownerships(false);
    a.unpack(&root).at("unpack", &tar)?;
    let info = std::fs::read_to_string(out.join("info.txt")).unwrap_or_default();
    export_with_tree(env, m, s.snapshot(), &root, info)
}

fn export_with_tree(
    env: &BuildEnv,
    m: &Machine,
    snapshot: &str,
    root: &std::path::Path,
    info: String,
) -> Result<Bundle> {
    // The ebuild tree the builder uses, where its repos.conf says it is.
    let loc = super::repo_location(m);
    let link = root.join(loc.trim_start_matches('/'));
    if let Some(parent) = link.parent() {
        std::fs::create_dir_all(parent).at("create directory", parent)?;
    }
    crate::fsutil::remove_file_if_exists(&link)?;
    std::os::unix::fs::symlink(env.store.repo(snapshot), &link).at("symlink", &link)?;
    // The overlays, from where the builder binds them.
    if let Some(host) = m.host_bundle() {
        for r in host.manifest.repos.iter().filter(|r| !r.main) {
            let src = super::overlay_source(&env.store, m, r)?;
            let link = root.join(r.location.trim_start_matches('/'));
            if let Some(parent) = link.parent() {
                std::fs::create_dir_all(parent).at("create directory", parent)?;
            }
            // Whatever the captured configuration has there (a file or an empty directory)
            // makes way; anything else makes the symlink below fail naming the path.
            let _ = std::fs::remove_file(&link);
            let _ = std::fs::remove_dir(&link);
            std::os::unix::fs::symlink(&src, &link).at("symlink", &link)?;
        }
    }
    let opts = ExportOptions {
        emerge_info: (!info.trim().is_empty()).then_some(info),
        ..ExportOptions::config_dir()
    };
    crate::host::export_root(root, &opts).map_err(|source| super::BuilderError::Capture {
        machine: m.name.clone(),
        source,
    })
}

/// For a machine with an imported host bundle: the differences between host and builder.
/// `None` for machines without one (the built-in `default`).
pub fn check(env: &BuildEnv, m: &Machine, s: &mut Session) -> Result<Option<Diff>> {
    let Some(host) = m.host_bundle() else {
        return Ok(None);
    };
    // The capture runs without the builder's own package.env entry (`buildside`): what it
    // compares is the host's configuration as the builder has it.
    let builder = builder_bundle(env, m, s)?;
    Ok(Some(crate::host::diff(&host, &builder)))
}
