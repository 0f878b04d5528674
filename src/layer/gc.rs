//! The layer half of `gbuild gc` (`crate::gc`): layers that no image and no snapshot under
//! `exports/` references, and the work directories that crashed or killed operations left
//! behind. The collection holds the store lock (`layers/.lock`) exclusively, and every operation
//! that makes such a work directory (layer unpacks and commits, ebuild-tree unpacks, snapshot
//! exports, restores, machine imports) holds it
//! shared for as long as its work directory exists, so gc waits for live work and every leftover
//! it sees is stale. Everything else a crash leaves has a temporary name of the store's one
//! scheme (`.tmp-<purpose>-<pid>-<n>`, anywhere in the store's directories, in machine
//! directories and PKGDIRs too): it goes once its process is gone (and, in a machine's directory,
//! while nobody holds the machine's lock).
//! Layer content (files owned by subordinate ids) is removed inside the user namespace; the blob
//! cache of snapshots loses the blobs of removed layers.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::ns::Helper;
use super::{is_layer_id, Result};
use crate::fsutil::IoContext;
use crate::store::Store;

/// Layer ids that images and exports reference, leaving out the images named in `dropped`
/// (images a collection is about to remove).
pub fn referenced(store: &Store, dropped: &BTreeSet<String>) -> Result<BTreeSet<String>> {
    let mut refs: BTreeSet<String> = BTreeSet::new();
    for img in super::image::list(store)? {
        if !dropped.contains(&img.name) {
            refs.extend(img.layers);
        }
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

/// The entries of `dir`, sorted (none when it does not exist).
pub fn entries(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
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

/// Layer ids in the store that `refs` does not name.
pub fn unreferenced(store: &Store, refs: &BTreeSet<String>) -> Result<BTreeSet<String>> {
    let mut ids = BTreeSet::new();
    for (name, _) in entries(&store.layers())? {
        let id = name.strip_suffix(".json").unwrap_or(&name);
        if is_layer_id(id) && !refs.contains(id) {
            ids.insert(id.to_string());
        }
    }
    Ok(ids)
}

/// What crashed or killed commands left: every entry of the store's temporary-name scheme whose
/// process is gone (`Store::leftovers`). Layer and tree work directories are found the same
/// way; their operations hold the store lock shared, which the collection holds exclusively.
pub fn leftovers(store: &Store) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for path in store.leftovers()? {
        out.push(path);
    }
    Ok(out)
}

/// Remove layers `ids` (metadata first: a layer without metadata is never listed nor used) and
/// the trees `trees`, inside the user namespace (their files may belong to subordinate ids).
/// The caller holds the store lock exclusively.
pub fn remove(
    store: &Store,
    helper: &Helper,
    ids: &BTreeSet<String>,
    trees: &[PathBuf],
) -> Result<()> {
    let mut trees = trees.to_vec();
    for id in ids {
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
    super::oci::prune_blob_cache(store, ids)
}
