//! Images: named, ordered stacks of sealed layers, `images/<name>.json`. A name is `NAME` or
//! `GROUP/NAME` (for instance `default/bootstrap`, one image per machine and stage); the slash
//! becomes a subdirectory, so `default/bootstrap` is stored as `images/default/bootstrap.json`.
//! Layers are listed bottom first (OCI order); overlayfs wants them top first (`lowerdirs`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::ns::Helper;
use super::{layer_dir, layer_info, LayerError, LayerInfo, Result, StoreLock};
use crate::fsutil::IoContext;
use crate::store::{valid_name, Store};

/// `images/<name>.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    pub name: String,
    /// Layer ids, bottom first.
    pub layers: Vec<String>,
    /// How the image was made, e.g. `layer unpack stage3-amd64-openrc-20240101.tar.xz`.
    pub made_by: String,
    /// OCI architecture of the content (`amd64`, `arm64`, ...).
    pub architecture: String,
    /// Seconds since the epoch.
    pub created: u64,
}

/// Whether `name` is a valid image name (`NAME` or `GROUP/NAME`).
pub fn valid_image_name(name: &str) -> bool {
    let mut parts = name.split('/');
    let ok = parts.next().is_some_and(valid_name);
    match parts.next() {
        None => ok,
        Some(p) => ok && valid_name(p) && parts.next().is_none(),
    }
}

/// The OCI architecture name of this machine.
pub fn host_architecture() -> String {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "riscv64" => "riscv64",
        "s390x" => "s390x",
        "loongarch64" => "loong64",
        other => other,
    }
    .to_string()
}

pub fn image_path(store: &Store, name: &str) -> Result<PathBuf> {
    if !valid_image_name(name) {
        return Err(LayerError::BadImageName(name.to_string()));
    }
    Ok(store.image_file(name))
}

pub fn load(store: &Store, name: &str) -> Result<Image> {
    let p = image_path(store, name)?;
    if !p.is_file() {
        return Err(LayerError::NoImage(name.to_string()));
    }
    super::read_json(&p)
}

/// Write an image after checking that every layer exists.
pub fn save(store: &Store, image: &Image) -> Result<()> {
    let p = image_path(store, &image.name)?;
    for id in &image.layers {
        layer_info(store, id)?;
    }
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).at("create directory", parent)?;
    }
    super::write_json(&p, image)
}

/// Every image, sorted by name.
pub fn list(store: &Store) -> Result<Vec<Image>> {
    let mut out = Vec::new();
    collect(&store.images(), "", &mut out)?;
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn collect(dir: &Path, prefix: &str, out: &mut Vec<Image>) -> Result<()> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(crate::fsutil::FsError::new("read directory", dir, e).into()),
    };
    for ent in rd {
        let ent = ent.at("read directory", dir)?;
        let name = ent.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let path = ent.path();
        if path.is_dir() && prefix.is_empty() {
            collect(&path, &format!("{name}/"), out)?;
        } else if let Some(stem) = name.strip_suffix(".json") {
            if valid_name(stem) {
                out.push(super::read_json(&path)?);
            }
        }
    }
    Ok(())
}

/// Overlay lower directories of an image, top layer first (the `lowerdir=` order).
pub fn lowerdirs(store: &Store, image: &Image) -> Vec<PathBuf> {
    image
        .layers
        .iter()
        .rev()
        .map(|id| layer_dir(store, id))
        .collect()
}

/// Unpack a root filesystem tarball into a layer and, with `image`, make it the single-layer
/// image of that name. The high-level entry point for bootstrapping.
pub fn from_rootfs(
    store: &Store,
    helper: &Helper,
    tarball: &Path,
    image: Option<&str>,
) -> Result<(LayerInfo, Option<Image>)> {
    if let Some(n) = image {
        image_path(store, n)?;
    }
    let _lock = StoreLock::shared(store)?;
    let fname = tarball
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let made_by = format!("layer unpack {fname}");
    let info = helper.unpack_rootfs(tarball, &made_by)?;
    let img = match image {
        Some(n) => {
            let img = Image {
                name: n.to_string(),
                layers: vec![info.id.clone()],
                made_by,
                architecture: host_architecture(),
                created: super::now_secs(),
            };
            save(store, &img)?;
            Some(img)
        }
        None => None,
    };
    Ok((info, img))
}

/// Commit the overlay upper dir `upper` (of a stopped container based on image `base`) into a new
/// layer on top of `base`'s layers, saved as image `new_name` (default: `base`, replaced), and
/// empty `upper`. An empty upper dir adds no layer. With `blob` (a snapshot to follow), the new
/// layer's blob in that compression is written to the blob cache in the same pass.
pub fn commit(
    store: &Store,
    helper: &Helper,
    base: &str,
    upper: &Path,
    new_name: Option<&str>,
    blob: Option<super::blob::Compression>,
) -> Result<(Option<LayerInfo>, Image)> {
    let target = new_name.unwrap_or(base);
    image_path(store, target)?;
    let _lock = StoreLock::shared(store)?;
    let base_img = load(store, base)?;
    let made_by = format!("layer commit of {base} (upper {})", upper.display());
    let info = helper.commit(
        upper,
        base_img.layers.last().map(String::as_str),
        &made_by,
        blob,
    )?;
    let mut layers = base_img.layers.clone();
    if let Some(i) = &info {
        layers.push(i.id.clone());
    }
    let img = Image {
        name: target.to_string(),
        layers,
        made_by,
        architecture: base_img.architecture.clone(),
        created: super::now_secs(),
    };
    save(store, &img)?;
    Ok((info, img))
}

/// Remove image `name` (its layers stay until `gbuild gc`).
pub fn remove(store: &Store, name: &str) -> Result<()> {
    let p = image_path(store, name)?;
    if !p.is_file() {
        return Err(LayerError::NoImage(name.to_string()));
    }
    std::fs::remove_file(&p).at("remove", &p)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_image_name("default/bootstrap"));
        assert!(valid_image_name("base"));
        assert!(!valid_image_name("a/b/c"));
        assert!(!valid_image_name("../x"));
        assert!(!valid_image_name("a/"));
        assert!(!valid_image_name("/a"));
    }
}
