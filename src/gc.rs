//! Store retention (`gbuild gc`, and the build loop after every pass): remove what nothing
//! references, so a store that runs for months stays bounded. What is kept (docs/gc.md):
//!
//! - per machine: the image its builder runs on (and its `config`/`bootstrap` images), the stage3
//!   it was made from, the tree snapshot it builds on, a builder `rebase` staged for its swap
//!   (image, stage3, tree), and its kept generations (the newest
//!   `keep`, the one served, the tagged ones) with the binpkgs and the snapshot tarballs they
//!   list;
//! - the newest verified snapshot (what the next `update` moves to) and the newest tree under
//!   `repos/` (the next snapshot's unpack shares its unchanged files by hardlinks);
//! - the newest verified stage3 of every family a machine uses (what a new bootstrap starts from);
//! - images outside `stage3/` and the machines' groups (made with `gbuild layer`), `exports/`,
//!   `distfiles/`, keys, configurations.
//!
//! Everything else goes: unused layers, images, trees, downloads (older stage3s and snapshots,
//! `.partial` files), generations beyond `keep`, and the work directories crashed commands
//! left.
//!
//! Never what a running command uses: the collection holds the store lock exclusively (layer,
//! tree, export and import work holds it shared), removes generations under the machine's
//! publication lock, takes each machine's lock and its rebase lock to judge its images and
//! leftovers (a machine whose lock another command holds, or for which a rebase is staging a
//! builder, keeps them), and the fetch lock to judge downloads (skipped while a fetch runs). Sizes count what
//! removing frees: a file hardlinked from something kept costs nothing.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use crate::builder::{generations, BuildEnv, BuilderError, Machine, MachineLock, RebaseLock};
use crate::config::Config;
use crate::layer::ns::Helper;
use crate::layer::{self, LayerError, StoreLock};
use crate::progress::human_bytes;
use crate::store::Store;

#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error(transparent)]
    Layer(#[from] LayerError),
    #[error(transparent)]
    Builder(#[from] BuilderError),
    #[error(transparent)]
    Fs(#[from] crate::fsutil::FsError),
}

/// One thing a collection removes (or would).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// `layer`, `image`, `tree`, `download`, `generation` or `leftover`.
    pub kind: &'static str,
    pub path: PathBuf,
    /// Bytes on disk its removal frees.
    pub bytes: u64,
}

/// What a collection did (or would do).
#[derive(Debug, Default)]
pub struct Report {
    pub items: Vec<Item>,
    /// What was left alone because a command uses it, one line each.
    pub skipped: Vec<String>,
    pub dry_run: bool,
}

impl Report {
    pub fn bytes(&self) -> u64 {
        self.items.iter().map(|i| i.bytes).sum()
    }
}

/// How to collect.
pub struct Options<'a> {
    /// Only list what would be removed.
    pub dry_run: bool,
    /// The machine whose lock the caller holds (the build loop's own).
    pub own: Option<&'a MachineLock>,
}

/// A machine as the collection sees it: whether its lock is ours (its images and leftovers may
/// go) or another command's.
struct Seen {
    machine: Machine,
    ours: bool,
}

/// The locks a collection holds until it ends.
#[derive(Default)]
struct Held {
    _machines: Vec<MachineLock>,
    _rebases: Vec<RebaseLock>,
}

/// Every machine of the store, and the locks taken. A machine is ours when we hold its lock
/// and no `rebase` is staging a builder for it (a rebase holds only its own lock while it
/// makes the new builder's images).
fn machines(
    store: &Store,
    own: Option<&MachineLock>,
    skipped: &mut Vec<String>,
) -> Result<(Vec<Seen>, Held), GcError> {
    let mut out = Vec::new();
    let mut held = Held::default();
    for (name, path) in layer::gc::entries(&store.machines())? {
        if !path.is_dir() || !crate::store::valid_name(&name) {
            continue;
        }
        let machine = Machine::open(store, &name)?;
        let mut ours = if own.is_some_and(|o| o.name == name) {
            true
        } else {
            match MachineLock::acquire(store, &name) {
                Ok(l) => {
                    held._machines.push(l);
                    true
                }
                Err(BuilderError::Busy { holder, .. }) => {
                    skipped.push(format!(
                        "machine {name}: in use by {holder}; its images and leftovers are kept"
                    ));
                    false
                }
                Err(e) => return Err(e.into()),
            }
        };
        if ours {
            match RebaseLock::acquire(store, &name) {
                Ok(l) => held._rebases.push(l),
                Err(BuilderError::Busy { holder, .. }) => {
                    skipped.push(format!(
                        "machine {name}: a rebase by {holder} is staging a builder; its images and leftovers are kept"
                    ));
                    ours = false;
                }
                Err(e) => return Err(e.into()),
            }
        }
        out.push(Seen { machine, ours });
    }
    Ok((out, held))
}

/// The stage3 file stem an image is named for (`stage3/<stem>`).
fn stem(file: &str) -> &str {
    [".tar.xz", ".tar.zst", ".tar.gz", ".tar.bz2"]
        .iter()
        .find_map(|s| file.strip_suffix(s))
        .unwrap_or(file)
}

/// Collect: plan under the locks, then remove (unless `dry_run`).
pub fn collect(
    store: &Store,
    config: &Config,
    helper: &Helper,
    opts: &Options,
) -> Result<Report, GcError> {
    let _store_lock = StoreLock::exclusive(store)?;
    let mut report = Report {
        dry_run: opts.dry_run,
        ..Report::default()
    };
    // Leftovers first: `Store::leftovers` leaves out machines whose lock is held, which the
    // machines' locks taken below would be.
    let leftovers = layer::gc::leftovers(store)?;
    let (seen, _held) = machines(store, opts.own, &mut report.skipped)?;
    let mut plan: Vec<(&'static str, PathBuf)> = Vec::new();

    // Generations, and the snapshots and stage3s still needed.
    let mut trees_keep: BTreeSet<String> = BTreeSet::new();
    let mut snapshots_keep: BTreeSet<String> = BTreeSet::new();
    let mut stage3_files: BTreeSet<String> = BTreeSet::new();
    let mut families: BTreeSet<(String, String)> = BTreeSet::new();
    let mut families_known = true;
    let mut staged_images: BTreeSet<String> = BTreeSet::new();
    for s in &seen {
        let m = &s.machine;
        let meta = m.meta()?;
        trees_keep.extend(meta.snapshot.clone());
        stage3_files.extend(meta.stage3.clone());
        // A builder `rebase` staged and checked, waiting for its swap: its image, stage3 and
        // tree are the machine's next.
        if let Some(st) = crate::builder::rebase::staged(m)? {
            staged_images.insert(st.image.clone());
            stage3_files.insert(st.stage3.clone());
            trees_keep.insert(st.snapshot.clone());
        }
        match crate::builder::stage3_variant(config, m) {
            Ok(v) => {
                families.insert((config.arch.clone(), v));
            }
            Err(_) => families_known = false,
        }
        let prunable: BTreeSet<u64> = generations::prunable(m, config.keep)?.into_iter().collect();
        for g in generations::list(m)? {
            if prunable.contains(&g.id) {
                plan.push(("generation", g.dir.path().to_path_buf()));
            } else {
                snapshots_keep.extend(g.info.snapshot.and_then(|s| s.date));
            }
        }
        // What an older gbuild's `published/` directory names.
        if generations::current(m).is_none() {
            if let Some(d) = crate::builder::publish::latest_info(m)?
                .and_then(|i| i.snapshot)
                .and_then(|s| s.date)
            {
                snapshots_keep.insert(d);
            }
        }
    }
    if let Some(a) = crate::fetch::latest_verified_snapshot(store) {
        trees_keep.insert(a.manifest.date.clone());
    }
    snapshots_keep.extend(trees_keep.iter().cloned());

    // Trees: the ones machines build on, the newest verified, the newest present.
    let trees: Vec<(String, PathBuf)> = layer::gc::entries(&store.repos())?
        .into_iter()
        .filter(|(n, p)| !n.starts_with('.') && p.is_dir())
        .collect();
    if let Some((newest, _)) = trees.iter().max_by(|a, b| a.0.cmp(&b.0)) {
        trees_keep.insert(newest.clone());
    }
    for (name, path) in &trees {
        if !trees_keep.contains(name) {
            plan.push(("tree", path.clone()));
        }
    }

    // Downloads, unless a fetch is running.
    let fetch_lock = crate::fetch::lock(store);
    match &fetch_lock {
        Ok(_) => {
            let keep_all_stage3 = seen.is_empty() || !families_known;
            plan.extend(
                downloads(
                    store,
                    &snapshots_keep,
                    &stage3_files,
                    &families,
                    keep_all_stage3,
                )?
                .into_iter()
                .map(|p| ("download", p)),
            );
        }
        Err(e) => report
            .skipped
            .push(format!("downloads: {e}; they are kept")),
    }

    // Images: stage3 images no machine was made from, a machine's images other than the one
    // its builder runs on. While any machine is busy its command may be making a new stage3
    // image: all stay.
    let any_busy = seen.iter().any(|s| !s.ours);
    let by_name: BTreeMap<&str, &Seen> =
        seen.iter().map(|s| (s.machine.name.as_str(), s)).collect();
    let stems: BTreeSet<&str> = stage3_files.iter().map(|f| stem(f)).collect();
    let mut dropped = BTreeSet::new();
    for img in layer::image::list(store)? {
        let Some((group, rest)) = img.name.split_once('/') else {
            continue;
        };
        let drop = if group == "stage3" {
            !any_busy && !stems.contains(rest)
        } else if let Some(s) = by_name.get(group) {
            let meta = s.machine.meta()?;
            s.ours
                && meta.image.as_deref() != Some(img.name.as_str())
                && !staged_images.contains(&img.name)
                && rest != "config"
                && rest != "bootstrap"
        } else {
            false
        };
        if drop {
            plan.push(("image", layer::image::image_path(store, &img.name)?));
            dropped.insert(img.name.clone());
        }
    }
    let refs = layer::gc::referenced(store, &dropped)?;
    let layer_ids = layer::gc::unreferenced(store, &refs)?;
    for id in &layer_ids {
        plan.push(("layer", layer::layer_dir(store, id)));
    }
    for p in leftovers {
        plan.push(("leftover", p));
    }

    let mut listed = BTreeSet::new();
    plan.retain(|(_, p)| listed.insert(p.clone()));
    let sizes = freed(&plan.iter().map(|(_, p)| p.clone()).collect::<Vec<_>>());
    report.items = plan
        .iter()
        .zip(sizes)
        .map(|((kind, path), bytes)| Item {
            kind,
            path: path.clone(),
            bytes,
        })
        .collect();
    if opts.dry_run {
        return Ok(report);
    }

    // Remove: generations (under each machine's publication lock, judged again there: a
    // publication or a rollback may have happened since), downloads, images, then layers and
    // the other trees.
    let mut publish_locks: BTreeMap<String, generations::PublishLock> = BTreeMap::new();
    let mut trees_rm = Vec::new();
    for (kind, path) in &plan {
        match *kind {
            "generation" => {
                let Some(s) = seen.iter().find(|s| path.starts_with(s.machine.dir())) else {
                    continue;
                };
                let name = s.machine.name.clone();
                if !publish_locks.contains_key(&name) {
                    let l = generations::PublishLock::acquire(&s.machine)?;
                    publish_locks.insert(name.clone(), l);
                }
                let still = generations::prunable(&s.machine, config.keep)?
                    .iter()
                    .any(|id| s.machine.files().generation(*id).path() == path.as_path());
                if still {
                    generations::remove(path)?;
                }
            }
            "download" | "image" => {
                std::fs::remove_file(path)
                    .or_else(|e| {
                        if e.kind() == std::io::ErrorKind::NotFound {
                            Ok(())
                        } else {
                            Err(e)
                        }
                    })
                    .map_err(|e| crate::fsutil::FsError::new("remove", path, e))?;
            }
            "tree" => layer::remove_tree(path)?,
            "leftover" => trees_rm.push(path.clone()),
            _ => {}
        }
    }
    layer::gc::remove(store, helper, &layer_ids, &trees_rm)?;
    Ok(report)
}

/// Files of `downloads/` nothing needs: manifests (and their files) of snapshots not in
/// `snapshots`, stage3s of families no machine uses and not in `stage3_files`, and files no
/// kept manifest names (older stage3s, `.partial`, temporary files).
fn downloads(
    store: &Store,
    snapshots: &BTreeSet<String>,
    stage3_files: &BTreeSet<String>,
    families: &BTreeSet<(String, String)>,
    keep_all_stage3: bool,
) -> Result<Vec<PathBuf>, GcError> {
    let dl = store.downloads();
    let mut keep: BTreeSet<String> = BTreeSet::new();
    keep.extend(
        store
            .fetch_lock()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned()),
    );
    for f in stage3_files {
        keep.insert(f.clone());
        keep.insert(format!("{f}.asc"));
        keep.insert(format!("{f}.DIGESTS"));
    }
    let entries = layer::gc::entries(&dl)?;
    for (name, path) in &entries {
        if !name.ends_with(".json") || name.starts_with('.') {
            continue;
        }
        let Some(m) = std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice::<crate::fetch::Manifest>(&b).ok())
        else {
            continue;
        };
        let wanted = match m.kind.as_str() {
            "snapshot" => snapshots.contains(&m.date),
            "stage3" => {
                keep_all_stage3
                    || stage3_files.contains(&m.file)
                    || families.contains(&(
                        m.arch.clone().unwrap_or_default(),
                        m.variant.clone().unwrap_or_default(),
                    ))
            }
            _ => true,
        };
        if wanted {
            keep.insert(name.clone());
            keep.insert(m.file.clone());
            keep.insert(m.signature.clone());
            keep.extend(m.digests.clone());
        }
    }
    // Temporary names are leftovers (removed once their process is gone), not downloads.
    Ok(entries
        .into_iter()
        .filter(|(n, _)| !keep.contains(n) && crate::fsutil::parse_temp_name(n).is_none())
        .map(|(_, p)| p)
        .collect())
}

/// Bytes each of `paths` frees when all of them are removed: every inode under it whose links
/// all lie within `paths` counts once (at its first path); one linked from elsewhere counts
/// nothing. Unreadable parts count nothing.
pub fn freed(paths: &[PathBuf]) -> Vec<u64> {
    // (dev, ino) -> (links, links seen, bytes, index of first path)
    let mut inodes: HashMap<(u64, u64), (u64, u64, u64, usize)> = HashMap::new();
    let mut dirs = vec![0u64; paths.len()];
    for (i, p) in paths.iter().enumerate() {
        let mut stack = vec![p.clone()];
        while let Some(q) = stack.pop() {
            let Ok(md) = std::fs::symlink_metadata(&q) else {
                continue;
            };
            let bytes = md.blocks() * 512;
            if md.is_dir() {
                dirs[i] += bytes;
                if let Ok(rd) = std::fs::read_dir(&q) {
                    stack.extend(rd.flatten().map(|e| e.path()));
                }
                continue;
            }
            let e = inodes
                .entry((md.dev(), md.ino()))
                .or_insert((md.nlink(), 0, bytes, i));
            e.1 += 1;
        }
    }
    let mut out = dirs;
    for (links, seen, bytes, i) in inodes.into_values() {
        if seen >= links {
            out[i] += bytes;
        }
    }
    out
}

/// The build loop's collection after a pass: the same rules as `gbuild gc`, a line when it
/// removed something, a warning when it failed (the loop goes on).
pub fn after_pass(env: &BuildEnv, m: &MachineLock) {
    let opts = Options {
        dry_run: false,
        own: Some(m),
    };
    match collect(&env.store, &env.config, &env.helper(), &opts) {
        Ok(r) if !r.items.is_empty() => tracing::info!(
            "gc: removed {} item(s), {} freed",
            r.items.len(),
            human_bytes(r.bytes())
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!("gc after the pass: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn shared_inodes_free_nothing() {
        let d = tempfile::tempdir().unwrap();
        let a = d.path().join("a");
        let b = d.path().join("b");
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        std::fs::write(a.join("only-a"), vec![1u8; 64 * 1024]).unwrap();
        std::fs::write(a.join("shared"), vec![2u8; 64 * 1024]).unwrap();
        std::fs::hard_link(a.join("shared"), b.join("shared")).unwrap();
        let blocks = |p: &Path| std::fs::metadata(p).unwrap().blocks() * 512;
        let dir_a = blocks(&a);
        // Removing a alone: the shared file stays reachable from b.
        assert_eq!(
            freed(std::slice::from_ref(&a)),
            vec![blocks(&a.join("only-a")) + dir_a]
        );
        // Removing both frees it once.
        let both = freed(&[a.clone(), b.clone()]);
        assert_eq!(
            both.iter().sum::<u64>(),
            dir_a + blocks(&b) + blocks(&a.join("only-a")) + blocks(&a.join("shared"))
        );
    }

    #[test]
    fn downloads_keep_what_is_named() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::at(d.path());
        store.init().unwrap();
        let dl = store.downloads();
        let manifest = |kind: &str, file: &str, date: &str, variant: Option<&str>| {
            serde_json::json!({
                "kind": kind, "file": file, "url": "u", "size": 1, "sha512": "", "blake2b": "",
                "signature": format!("{file}.sig"), "signer": {"primary": "", "key": ""},
                "verified_at": 0, "date": date, "arch": variant.map(|_| "amd64"),
                "variant": variant,
                "digests": variant.map(|_| format!("{file}.DIGESTS")),
            })
        };
        let put = |name: &str, v: Option<serde_json::Value>| {
            let body = v.map(|v| v.to_string()).unwrap_or_else(|| "x".into());
            std::fs::write(dl.join(name), body).unwrap();
        };
        for date in ["20260101", "20260201", "20260301"] {
            let f = format!("gentoo-{date}.tar.xz");
            put(
                &format!("snapshot-{date}.json"),
                Some(manifest("snapshot", &f, date, None)),
            );
            put(&f, None);
            put(&format!("{f}.sig"), None);
        }
        put(
            "stage3-amd64-openrc.json",
            Some(manifest("stage3", "s3-new.tar.xz", "2", Some("openrc"))),
        );
        put(
            "stage3-amd64-systemd.json",
            Some(manifest("stage3", "s3-sd.tar.xz", "2", Some("systemd"))),
        );
        for f in [
            "s3-new.tar.xz",
            "s3-new.tar.xz.sig",
            "s3-new.tar.xz.DIGESTS",
            "s3-old.tar.xz",
            "s3-old.tar.xz.asc",
            "s3-sd.tar.xz",
            "s3-sd.tar.xz.sig",
            "gentoo-20260401.tar.xz.partial",
            ".fetch.lock",
        ] {
            put(f, None);
        }
        let snaps: BTreeSet<String> = ["20260201".to_string(), "20260301".into()].into();
        let fams: BTreeSet<(String, String)> = [("amd64".to_string(), "openrc".to_string())].into();
        let mut gone: Vec<String> = downloads(&store, &snaps, &BTreeSet::new(), &fams, false)
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        gone.sort();
        assert_eq!(
            gone,
            [
                "gentoo-20260101.tar.xz",
                "gentoo-20260101.tar.xz.sig",
                "gentoo-20260401.tar.xz.partial",
                "s3-old.tar.xz",
                "s3-old.tar.xz.asc",
                "s3-sd.tar.xz",
                "s3-sd.tar.xz.sig",
                "snapshot-20260101.json",
                "stage3-amd64-systemd.json",
            ]
        );
        // A machine still made from the old stage3 keeps it.
        let used: BTreeSet<String> = ["s3-old.tar.xz".to_string()].into();
        let gone = downloads(&store, &snaps, &used, &fams, false).unwrap();
        assert!(!gone.iter().any(|p| p.ends_with("s3-old.tar.xz")));
        assert!(!gone.iter().any(|p| p.ends_with("s3-old.tar.xz.asc")));
    }
}
