//! `gbuild gc`: remove layers that no image and no snapshot under `exports/` references, and the
//! work directories that crashed or killed operations left behind. It holds the store lock
//! (`layers/.lock`) exclusively, and every operation that makes such a work directory (layer
//! unpacks and commits, ebuild-tree unpacks, snapshot exports, restores, machine imports) holds it
//! shared for as long as its work directory exists, so gc waits for live work and every leftover
//! it sees is stale. Everything else a crash leaves has a temporary name of the store's one
//! scheme (`.tmp-<purpose>-<pid>-<n>`, anywhere in the store's directories, in machine
//! directories and PKGDIRs too): it goes once its process is gone (and, in a machine's directory,
//! while nobody holds the machine's lock).
//! Layer content (files owned by subordinate ids) is removed inside the user namespace; the blob
//! cache of snapshots loses the blobs of removed layers.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::ns::Helper;
use super::{is_layer_id, Result, StoreLock};
use crate::fsutil::IoContext;
use crate::store::Store;

/// What a collection removed.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct GcReport {
    pub layers_removed: Vec<String>,
    pub temp_removed: Vec<PathBuf>,
}

/// Layer ids that images and exports reference.
pub fn referenced(store: &Store) -> Result<BTreeSet<String>> {
    let mut refs: BTreeSet<String> = BTreeSet::new();
    for img in super::image::list(store)? {
        refs.extend(img.layers);
    }
    let mut layouts = Vec::new();
    find_layouts(&store.exports(), 0, &mut layouts);
    for l in layouts {
        refs.extend(super::oci::layout_diff_ids(&l));
    }
    Ok(refs)
}

fn find_layouts(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
    if dir.join("index.json").is_file() {
        out.push(dir.to_path_buf());
        return;
    }
    if depth > 2 {
        return;
    }
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                find_layouts(&e.path(), depth + 1, out);
            }
        }
    }
}

fn entries(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(crate::fsutil::FsError::new("read directory", dir, e).into()),
    };
    for e in rd {
        let e = e.at("read directory", dir)?;
        out.push((e.file_name().to_string_lossy().into_owned(), e.path()));
    }
    out.sort();
    Ok(out)
}

/// Remove unreferenced layers and stale work directories.
pub fn gc(store: &Store, helper: &Helper) -> Result<GcReport> {
    let _lock = StoreLock::exclusive(store)?;
    let refs = referenced(store)?;
    let mut report = GcReport::default();
    let mut trees: Vec<PathBuf> = Vec::new();
    let mut ids: BTreeSet<String> = BTreeSet::new();
    for (name, _) in entries(&store.layers())? {
        let id = name.strip_suffix(".json").unwrap_or(&name);
        if is_layer_id(id) && !refs.contains(id) {
            ids.insert(id.to_string());
        }
    }
    for path in store.leftovers()? {
        trees.push(path.clone());
        report.temp_removed.push(path);
    }
    // Metadata first: a layer without metadata is never listed nor used.
    for id in &ids {
        let meta = super::layer_meta_path(store, id);
        if meta.exists() {
            std::fs::remove_file(&meta).at("remove", &meta)?;
        }
        let dir = super::layer_dir(store, id);
        if dir.exists() {
            trees.push(dir);
        }
    }
    helper.remove_trees(&trees)?;
    super::oci::prune_blob_cache(store, &ids)?;
    report.layers_removed = ids.into_iter().collect();
    Ok(report)
}
