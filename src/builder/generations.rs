//! Published generations: every publication of a machine is a numbered, sealed directory
//! `machines/<M>/generations/<N>/` holding the `Packages` index hosts got, its `info.json` (time,
//! snapshot, counts, the pass that made it) and `binpkgs/`, a hardlink of every binpkg the index
//! lists (never a copy: a binpkg costs its disk once however many generations list it, and
//! stays while one does, whatever Portage prunes from PKGDIR meanwhile).
//!
//! What hosts are served is `machines/<M>/published`, a symlink to one generation, replaced by
//! a rename (so a reader sees the old or the new generation, never a mix); `publish rollback`
//! points it at an older one. `tags.json` names generations (`publish tag`) that hosts follow at
//! `/<M>@<tag>/`. The newest `keep` generations (gbuild.toml), the one served and the tagged ones
//! stay; the others are removed at each publication and by `gc`.
//!
//! Changing any of this takes the machine's publication lock (`machines/<M>/publish.lock`,
//! `PublishLock`): the loop holds it while it publishes, `publish rollback|tag` and `gc` while
//! they change generations, each only for that moment, so a host can be stepped back while the
//! loop runs (the loop holds the machine's own lock for its whole life). Reading takes no lock.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::state::PublishedInfo;
use super::{BuilderError, Machine, Result};
use crate::fsutil::IoContext;
use crate::store::PublishedDir;

/// Temporary-name purposes: a generation being written or removed, `published` being replaced.
const TMP_GENERATION: &str = "generation";
const TMP_PUBLISHED: &str = "published";

/// The publication lock of a machine, held while its generations change. Dereferences to the
/// machine.
pub struct PublishLock {
    machine: Machine,
    _lock: crate::lock::Lock,
}

impl std::ops::Deref for PublishLock {
    type Target = Machine;
    fn deref(&self) -> &Machine {
        &self.machine
    }
}

impl PublishLock {
    /// Wait for the lock (publications are short).
    pub fn acquire(m: &Machine) -> Result<PublishLock> {
        Ok(PublishLock {
            machine: m.clone(),
            _lock: crate::lock::Lock::acquire(&m.files().publish_lock())?,
        })
    }
}

/// One generation on disk.
#[derive(Debug, Clone)]
pub struct Generation {
    pub id: u64,
    pub dir: PublishedDir,
    pub info: PublishedInfo,
}

fn parse_id(name: &str) -> Option<u64> {
    (!name.is_empty() && name.len() < 20 && name.bytes().all(|b| b.is_ascii_digit()))
        .then(|| name.parse().ok())
        .flatten()
        .filter(|n| *n > 0)
}

/// The generations directory's name in the machine's directory (what `published` links into,
/// relative, so the store can move).
fn dir_name(m: &Machine) -> std::ffi::OsString {
    m.files()
        .generations()
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default()
}

/// The ids of the complete generations, oldest first.
pub fn ids(m: &Machine) -> Result<Vec<u64>> {
    let dir = m.files().generations();
    let rd = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(crate::fsutil::FsError::new("read directory", &dir, e).into()),
    };
    let mut out = Vec::new();
    for e in rd {
        let e = e.at("read directory", &dir)?;
        if let Some(id) = parse_id(&e.file_name().to_string_lossy()) {
            out.push(id);
        }
    }
    out.sort();
    Ok(out)
}

/// Every complete generation, oldest first, with its `info.json` (an error names a generation
/// whose `info.json` cannot be read).
pub fn list(m: &Machine) -> Result<Vec<Generation>> {
    ids(m)?
        .into_iter()
        .map(|id| {
            let dir = m.files().generation(id);
            let info = PublishedInfo::read_in(&dir)?.unwrap_or_default();
            Ok(Generation { id, dir, info })
        })
        .collect()
}

/// The generation served now (what `published` points at).
pub fn current(m: &Machine) -> Option<u64> {
    let target = std::fs::read_link(m.published().path()).ok()?;
    let mut parts = target.iter();
    (parts.next()? == dir_name(m).as_os_str())
        .then(|| parts.next())
        .flatten()
        .and_then(|n| parse_id(&n.to_string_lossy()))
        .filter(|_| parts.next().is_none())
}

/// The newest generation's id.
pub fn newest(m: &Machine) -> Result<Option<u64>> {
    Ok(ids(m)?.last().copied())
}

/// Tag names to generation ids.
pub fn tags(m: &Machine) -> Result<BTreeMap<String, u64>> {
    Ok(crate::fsutil::read_json(&m.files().tags_file())?.unwrap_or_default())
}

/// A tag name: like a machine name (it becomes part of URLs and section names).
pub fn valid_tag(name: &str) -> bool {
    crate::store::valid_name(name)
}

/// The generation a tag names, when it exists.
pub fn tagged(m: &Machine, tag: &str) -> Result<Option<PublishedDir>> {
    let Some(id) = tags(m)?.get(tag).copied() else {
        return Ok(None);
    };
    let d = m.files().generation(id);
    Ok(d.path().is_dir().then_some(d))
}

/// Write the next generation under a temporary name in `generations/`: `packages` (the index,
/// whose mtime becomes `timestamp`), a hardlink of each of `files` (paths relative to PKGDIR),
/// and whatever `extra` writes into the directory (the signed record). `seal` makes it a
/// generation, `discard` drops it; a crash leaves a leftover `gc` removes.
pub fn stage(
    m: &Machine,
    packages: &[u8],
    timestamp: u64,
    files: &[String],
    extra: impl FnOnce(&Path) -> Result<()>,
) -> Result<PathBuf> {
    let base = m.files().generations();
    std::fs::create_dir_all(&base).at("create directory", &base)?;
    let tmp = crate::fsutil::temp_path(&base, TMP_GENERATION);
    std::fs::create_dir(&tmp).at("create directory", &tmp)?;
    let staged = PublishedDir::at(tmp.clone());
    let r = (|| -> Result<()> {
        let pkgdir = m.binpkgs();
        let links = staged.binpkgs();
        std::fs::create_dir(&links).at("create directory", &links)?;
        for rel in files {
            let src = crate::sign::gpkg::in_pkgdir(&pkgdir, rel).ok_or_else(|| {
                BuilderError::NotABinpkgPath {
                    rel: rel.to_string(),
                    pkgdir: pkgdir.clone(),
                }
            })?;
            let dest = links.join(rel);
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent).at("create directory", parent)?;
            }
            std::fs::hard_link(&src, &dest).at("hardlink (generations never copy)", &src)?;
        }
        let pk = staged.packages();
        std::fs::write(&pk, packages).at("write", &pk)?;
        filetime::set_file_mtime(&pk, filetime::FileTime::from_unix_time(timestamp as i64, 0))
            .at("set mtime", &pk)?;
        extra(&tmp)?;
        Ok(())
    })();
    match r {
        Ok(()) => Ok(tmp),
        Err(e) => {
            discard(&tmp);
            Err(e)
        }
    }
}

/// Make the staged directory `tmp` the newest generation: `info` gets its number and is
/// written as its `info.json`, the whole is synced, then renamed into place. Returns its id.
pub fn seal(m: &PublishLock, tmp: &Path, info: &mut PublishedInfo) -> Result<u64> {
    let id = newest(m)?.map_or(1, |n| n + 1);
    info.generation = id;
    let ij = PublishedDir::at(tmp.to_path_buf()).info();
    std::fs::write(&ij, serde_json::to_vec_pretty(info).expect("json")).at("write", &ij)?;
    crate::layer::sync_tree(tmp)?;
    crate::fsutil::rename_dir_into_place(tmp, m.files().generation(id).path())?;
    Ok(id)
}

/// Drop a staged generation. Best effort: a directory left behind has a temporary name `gc`
/// removes.
pub fn discard(tmp: &Path) {
    crate::fsutil::remove_tree_or_warn(tmp);
}

/// The mtime of the index served now (None when nothing is).
fn served_mtime(m: &Machine) -> Option<i64> {
    let md = std::fs::metadata(m.published().packages()).ok()?;
    Some(filetime::FileTime::from_last_modification_time(&md).unix_seconds())
}

/// Serve generation `id`: its index's mtime is moved past the one served so far (more than the
/// 5 s Portage's client adds to its cached TIMESTAMP), so a host that holds a newer index than
/// the one served now downloads it instead of getting `304 Not Modified`; then `published` is
/// replaced by a symlink to it in one rename. The index's bytes never change.
pub fn switch(m: &PublishLock, id: u64) -> Result<()> {
    let target = m.files().generation(id);
    let pk = target.packages();
    if !pk.is_file() {
        return Err(BuilderError::NoGeneration {
            machine: m.name.clone(),
            id,
        });
    }
    if current(m) == Some(id) {
        return Ok(());
    }
    let own =
        filetime::FileTime::from_last_modification_time(&std::fs::metadata(&pk).at("stat", &pk)?)
            .unix_seconds();
    if let Some(prev) = served_mtime(m) {
        if own <= prev + 5 {
            let t = (super::state::now() as i64).max(prev + 6);
            filetime::set_file_mtime(&pk, filetime::FileTime::from_unix_time(t, 0))
                .at("set mtime", &pk)?;
            std::fs::File::open(&pk)
                .and_then(|f| f.sync_all())
                .at("fsync", &pk)?;
        }
    }
    let link = m.files().temp(TMP_PUBLISHED);
    std::os::unix::fs::symlink(Path::new(&dir_name(m)).join(id.to_string()), &link)
        .at("symlink", &link)?;
    let published = m.published();
    let dest = published.path();
    // A `published/` directory of an older gbuild is moved aside first (a directory cannot
    // be renamed over).
    let legacy = std::fs::symlink_metadata(dest).is_ok_and(|md| md.is_dir());
    let aside = m.files().temp(TMP_PUBLISHED);
    if legacy {
        std::fs::rename(dest, &aside).at("rename", dest)?;
    }
    std::fs::rename(&link, dest).at("rename into place", dest)?;
    crate::fsutil::fsync_dir(m.files().path())?;
    if legacy {
        // Best effort: left behind, it has a temporary name `gc` removes.
        let _ = std::fs::remove_dir_all(&aside);
    }
    Ok(())
}

/// Name generation `id` `tag` (moving the tag if it named another).
pub fn set_tag(m: &PublishLock, tag: &str, id: u64) -> Result<()> {
    if !valid_tag(tag) {
        return Err(BuilderError::BadTag(tag.to_string()));
    }
    if !m.files().generation(id).packages().is_file() {
        return Err(BuilderError::NoGeneration {
            machine: m.name.clone(),
            id,
        });
    }
    let mut t = tags(m)?;
    t.insert(tag.to_string(), id);
    save_tags(m, &t)
}

/// Remove tag `tag`; false when there was none.
pub fn remove_tag(m: &PublishLock, tag: &str) -> Result<bool> {
    let mut t = tags(m)?;
    let had = t.remove(tag).is_some();
    if had {
        save_tags(m, &t)?;
    }
    Ok(had)
}

fn save_tags(m: &PublishLock, t: &BTreeMap<String, u64>) -> Result<()> {
    crate::fsutil::write_json(&m.files().tags_file(), t)?;
    Ok(())
}

/// The generations to keep: the newest `keep` (at least one), the one served, the tagged ones.
pub fn kept(m: &Machine, keep: usize) -> Result<BTreeSet<u64>> {
    let mut out: BTreeSet<u64> = ids(m)?.into_iter().rev().take(keep.max(1)).collect();
    out.extend(current(m));
    out.extend(tags(m)?.values().copied());
    Ok(out)
}

/// The generations beyond what `kept` keeps.
pub fn prunable(m: &Machine, keep: usize) -> Result<Vec<u64>> {
    let k = kept(m, keep)?;
    Ok(ids(m)?.into_iter().filter(|id| !k.contains(id)).collect())
}

/// Remove the generations `prunable` names; returns their ids. The binpkgs they alone listed
/// go with them (the last hardlink of a file removed).
pub fn prune(m: &PublishLock, keep: usize) -> Result<Vec<u64>> {
    let ids = prunable(m, keep)?;
    for id in &ids {
        remove(m.files().generation(*id).path())?;
    }
    Ok(ids)
}

/// Remove a generation directory: renamed to a temporary name first, so a crash half-way
/// leaves a leftover `gc` removes, never a generation with missing binpkgs.
pub fn remove(gdir: &Path) -> Result<()> {
    let parent = gdir.parent().unwrap_or(Path::new("."));
    let tmp = crate::fsutil::temp_path(parent, TMP_GENERATION);
    std::fs::rename(gdir, &tmp).at("rename", gdir)?;
    std::fs::remove_dir_all(&tmp).at("remove", &tmp)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_ids() {
        assert_eq!(parse_id("12"), Some(12));
        assert_eq!(parse_id("0"), None);
        assert_eq!(parse_id(".tmp-generation-3-1"), None);
        assert_eq!(parse_id("3a"), None);
    }

    fn machine() -> (tempfile::TempDir, PublishLock) {
        let d = tempfile::tempdir().unwrap();
        let store = crate::store::Store::at(d.path());
        std::fs::create_dir_all(store.machine("m").binpkgs()).unwrap();
        let m = PublishLock::acquire(&Machine::open(&store, "m").unwrap()).unwrap();
        (d, m)
    }

    fn generation(m: &PublishLock, body: &str, ts: u64, files: &[&str]) -> u64 {
        for f in files {
            let p = m.binpkgs().join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            if !p.exists() {
                std::fs::write(&p, f.as_bytes()).unwrap();
            }
        }
        let files: Vec<String> = files.iter().map(|s| s.to_string()).collect();
        let tmp = stage(m, body.as_bytes(), ts, &files, |_| Ok(())).unwrap();
        seal(m, &tmp, &mut PublishedInfo::default()).unwrap()
    }

    #[test]
    fn create_switch_tag_prune() {
        use std::os::unix::fs::MetadataExt;
        let (_d, m) = machine();
        let path = |id: u64| m.files().generation(id).path().to_path_buf();
        let a = generation(&m, "A\n", 1000, &["c/p/p-1-1.gpkg.tar"]);
        switch(&m, a).unwrap();
        assert_eq!(current(&m), Some(a));
        assert_eq!(std::fs::read(m.published().packages()).unwrap(), b"A\n");
        assert_eq!(list(&m).unwrap()[0].info.generation, a);
        // A hardlink of the PKGDIR file, not a copy.
        let ino = |p: PathBuf| std::fs::metadata(p).unwrap().ino();
        assert_eq!(
            ino(m.binpkgs().join("c/p/p-1-1.gpkg.tar")),
            ino(path(a).join("binpkgs/c/p/p-1-1.gpkg.tar"))
        );
        let b = generation(&m, "B\n", 2000, &["c/p/p-1-2.gpkg.tar"]);
        switch(&m, b).unwrap();
        // Portage prunes the old binpkg from PKGDIR: generation a still has it.
        std::fs::remove_file(m.binpkgs().join("c/p/p-1-1.gpkg.tar")).unwrap();
        assert!(path(a).join("binpkgs/c/p/p-1-1.gpkg.tar").is_file());
        // Rolling back serves a's bytes, with an mtime past b's.
        switch(&m, a).unwrap();
        assert_eq!(std::fs::read(m.published().packages()).unwrap(), b"A\n");
        let mt = |id| {
            filetime::FileTime::from_last_modification_time(
                &std::fs::metadata(path(id).join("Packages")).unwrap(),
            )
            .unix_seconds()
        };
        assert!(mt(a) > 2005, "{}", mt(a));
        set_tag(&m, "stable", a).unwrap();
        for i in 0..6 {
            let g = generation(&m, &format!("G{i}\n"), 3000 + i, &[]);
            switch(&m, g).unwrap();
        }
        let pruned = prune(&m, 2).unwrap();
        assert_eq!(pruned, vec![b, b + 1, b + 2, b + 3, b + 4]);
        assert!(path(a).is_dir(), "tagged");
        assert_eq!(
            tagged(&m, "stable")
                .unwrap()
                .map(|d| d.path().to_path_buf()),
            Some(path(a))
        );
        assert!(prune(&m, 2).unwrap().is_empty());
        assert!(remove_tag(&m, "stable").unwrap());
        assert_eq!(prune(&m, 2).unwrap(), vec![a]);
        assert!(set_tag(&m, "x", 99).is_err());
        // Nothing temporary is left.
        let names: Vec<String> = std::fs::read_dir(m.files().generations())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| parse_id(n).is_some()), "{names:?}");
    }
}
