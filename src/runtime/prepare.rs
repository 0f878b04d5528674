//! The two steps around the planner that touch the filesystem: `resolve` checks and
//! canonicalizes the paths of a description before anything is created (it only reads), and
//! `prepare` creates what a plan needs (the bundle, overlay directories, layer links, the spec
//! file). `prepare` runs only once the run's cleanup guard exists, so a failed start leaves
//! nothing behind.

use std::path::Path;

use super::plan::{spec_json, Plan, Resolved};
use super::{io_err, ContainerSpec, Rootfs, RuntimeError};

/// Check that the rootfs and every bind source exist; make their paths canonical.
pub fn resolve(spec: &ContainerSpec) -> Result<Resolved, RuntimeError> {
    let mut spec = spec.clone();
    let rootfs_has_resolv_conf = match &mut spec.rootfs {
        Rootfs::Dir(d) => {
            if !d.is_dir() {
                return Err(RuntimeError::NoRootfs(d.clone()));
            }
            *d = d.canonicalize().map_err(io_err("resolve rootfs", d))?;
            d.join("etc/resolv.conf").exists()
        }
        Rootfs::Overlay { layers, .. } => {
            if let Some(l) = layers.iter().find(|l| !l.is_dir()) {
                return Err(RuntimeError::NoRootfs(l.clone()));
            }
            true
        }
    };
    for b in &mut spec.binds {
        if !b.src.exists() {
            return Err(RuntimeError::NoBindSource(b.src.clone()));
        }
        b.src = b.src.canonicalize().map_err(io_err("resolve", &b.src))?;
    }
    Ok(Resolved {
        spec,
        rootfs_has_resolv_conf,
    })
}

/// Create the plan's directories and links and write the spec into `bundle/config.json`
/// (libcontainer 0.7 reads the spec only from there). No fsync: the bundle lives as long as
/// the run.
pub fn prepare(plan: &Plan, bundle: &Path) -> Result<(), RuntimeError> {
    std::fs::create_dir_all(bundle).map_err(io_err("create", bundle))?;
    for d in &plan.dirs {
        std::fs::create_dir_all(d).map_err(io_err("create", d))?;
    }
    for (target, link) in &plan.links {
        std::os::unix::fs::symlink(target, link).map_err(io_err("symlink", link))?;
    }
    let cfg = bundle.join("config.json");
    let text = serde_json::to_vec(&spec_json(&plan.spec)).expect("json");
    std::fs::write(&cfg, text).map_err(io_err("write", &cfg))
}
