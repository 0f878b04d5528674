//! Where gbuild keeps everything: one directory (the store) whose layout is a contract
//! (docs/design.md). This module resolves it and names every part of it, down to the files of a
//! machine (`MachineDir`) and of a publication (`PublishedDir`); nothing else builds store paths
//! or spells the store's file names. Temporary names come from one scheme
//! (`fsutil::temp_name`, `.tmp-<purpose>-<pid>-<n>`), which `leftovers` finds for `gc`.

use std::path::{Path, PathBuf};

use crate::fsutil::IoContext;

/// The store directory and its well-known parts.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no store directory: set --store, GBUILD_STORE, XDG_DATA_HOME or HOME")]
    NoHome,
    #[error(transparent)]
    Fs(#[from] crate::fsutil::FsError),
}

impl Store {
    /// Resolve the store: an explicit directory (from `--store` or `GBUILD_STORE`), else
    /// `$XDG_DATA_HOME/gbuild`, else `~/.local/share/gbuild`.
    pub fn resolve(explicit: Option<&Path>) -> Result<Store, StoreError> {
        if let Some(p) = explicit {
            return Ok(Store::at(p));
        }
        if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
            return Ok(Store::at(Path::new(&x).join("gbuild")));
        }
        match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
            Some(h) => Ok(Store::at(Path::new(&h).join(".local/share/gbuild"))),
            None => Err(StoreError::NoHome),
        }
    }

    pub fn at(root: impl Into<PathBuf>) -> Store {
        let root = root.into();
        let root = if root.is_relative() {
            std::env::current_dir()
                .map(|d| d.join(&root))
                .unwrap_or(root)
        } else {
            root
        };
        Store { root }
    }

    /// Create the store's directories (idempotent).
    pub fn init(&self) -> Result<(), StoreError> {
        for d in [
            self.root.clone(),
            self.downloads(),
            self.layers(),
            self.images(),
            self.repos(),
            self.machines(),
            self.distfiles(),
            self.exports(),
            self.tmp(),
        ] {
            std::fs::create_dir_all(&d).at("create directory", &d)?;
        }
        Ok(())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn config_file(&self) -> PathBuf {
        self.root.join("gbuild.toml")
    }
    /// Verified artifacts; in-flight files end in `.partial` and are never used.
    pub fn downloads(&self) -> PathBuf {
        self.root.join("downloads")
    }
    /// Unpacked layers, `layers/<sha256>/`, read-only once sealed; `<sha256>.json` beside each.
    pub fn layers(&self) -> PathBuf {
        self.root.join("layers")
    }
    pub fn images(&self) -> PathBuf {
        self.root.join("images")
    }
    /// Ebuild trees, plain directories (never on overlay), one per snapshot.
    pub fn repos(&self) -> PathBuf {
        self.root.join("repos")
    }
    /// Git-synced overlays checked out at a commit: `overlays/<name>/<commit>/`.
    pub fn overlay_checkout(&self, name: &str, commit: &str) -> PathBuf {
        self.root.join("overlays").join(name).join(commit)
    }
    pub fn machines(&self) -> PathBuf {
        self.root.join("machines")
    }
    /// The directory of machine `name` (which must be a [`valid_name`]).
    pub fn machine(&self, name: &str) -> MachineDir {
        MachineDir {
            dir: self.machines().join(name),
        }
    }
    /// `machines/.<M>.import.lock`: serialises the imports of one machine. Beside the machine's
    /// directory (never in it: machine names do not start with a dot) so that a failed first
    /// import can remove that directory.
    pub fn import_lock(&self, name: &str) -> PathBuf {
        self.machines().join(format!(".{name}.import.lock"))
    }
    /// A sealed layer's tree, `layers/<id>/`.
    pub fn layer(&self, id: &str) -> PathBuf {
        self.layers().join(id)
    }
    /// A sealed layer's metadata, `layers/<id>.json`.
    pub fn layer_meta(&self, id: &str) -> PathBuf {
        self.layers().join(format!("{id}.json"))
    }
    /// The store lock (`gc` exclusive, work directories shared).
    pub fn store_lock(&self) -> PathBuf {
        self.layers().join(".lock")
    }
    /// `images/<name>.json` (names may contain one `/`: `M/config`).
    pub fn image_file(&self, name: &str) -> PathBuf {
        self.images().join(format!("{name}.json"))
    }
    /// An unpacked ebuild tree, `repos/<snapshot>/`.
    pub fn repo(&self, snapshot: &str) -> PathBuf {
        self.repos().join(snapshot)
    }
    /// A verified download or its signature, `downloads/<file>`.
    pub fn download(&self, file: &str) -> PathBuf {
        self.downloads().join(file)
    }
    /// The verified-artifact manifest of the newest stage3 of `arch`/`variant`.
    pub fn stage3_manifest(&self, arch: &str, variant: &str) -> PathBuf {
        self.downloads()
            .join(format!("stage3-{arch}-{variant}.json"))
    }
    /// The verified-artifact manifest of the snapshot of `date` (`YYYYMMDD`).
    pub fn snapshot_manifest(&self, date: &str) -> PathBuf {
        self.downloads().join(format!("snapshot-{date}.json"))
    }
    /// A download in flight, `downloads/<name>.partial`: kept to resume, never used.
    pub fn partial_download(&self, name: &str) -> PathBuf {
        self.downloads().join(format!("{name}.partial"))
    }
    /// Serialises fetches into `downloads/`.
    pub fn fetch_lock(&self) -> PathBuf {
        self.downloads().join(".fetch.lock")
    }
    /// The compressed blobs of exported layers, kept for the next snapshot of the same layers:
    /// `blobs/sha256/<digest>` (read-only) and, per layer and encoding, the record
    /// `blobs/<layer id>.<encoding>.json` that names its blob.
    pub fn blob_cache(&self) -> PathBuf {
        self.root.join("blobs")
    }
    /// The cached blobs themselves, `blobs/sha256/`.
    pub fn cached_blobs(&self) -> PathBuf {
        self.blob_cache().join("sha256")
    }
    /// A cached blob by its digest, `blobs/sha256/<digest>`.
    pub fn cached_blob(&self, digest: &str) -> PathBuf {
        self.cached_blobs().join(digest)
    }
    /// The record of layer `id`'s blob in `encoding`, `blobs/<id>.<encoding>.json`.
    pub fn cached_blob_record(&self, id: &str, encoding: &str) -> PathBuf {
        self.blob_cache().join(format!("{id}.{encoding}.json"))
    }
    /// An exported snapshot (OCI layout), `exports/<name>/`.
    pub fn export(&self, name: &str) -> PathBuf {
        self.exports().join(name)
    }
    pub fn distfiles(&self) -> PathBuf {
        self.root.join("distfiles")
    }
    pub fn exports(&self) -> PathBuf {
        self.root.join("exports")
    }
    /// The binpkg signing keys (mode 0700; the secret key 0600): never bound into a container,
    /// never in a layer, an export or a served directory.
    pub fn keys(&self) -> PathBuf {
        self.root.join("keys")
    }
    /// Scratch space on the store's filesystem (so renames into place are atomic); anything in it
    /// may be deleted when no gbuild process runs.
    pub fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Every temporary entry of the store's scheme whose process is gone: in the store's own
    /// directories, in each machine's directory and its PKGDIR, and in each export directory.
    /// Entries in a machine's directory are left alone while its lock is held.
    pub fn leftovers(&self) -> Result<Vec<PathBuf>, crate::fsutil::FsError> {
        let mut dirs = vec![
            self.root.clone(),
            self.downloads(),
            self.layers(),
            self.images(),
            self.repos(),
            self.machines(),
            self.exports(),
            self.keys(),
            self.tmp(),
            self.blob_cache(),
            self.cached_blobs(),
        ];
        dirs.extend(subdirs(&self.exports())?);
        dirs.extend(subdirs(&self.images())?);
        let mut out = Vec::new();
        for m in subdirs(&self.machines())? {
            let md = MachineDir { dir: m };
            if crate::lock::Lock::holder(&md.lock()).is_some() {
                continue;
            }
            out.extend(crate::fsutil::stale_temps(&md.dir, None)?);
            out.extend(crate::fsutil::stale_temps(&md.published().dir, None)?);
            out.extend(crate::fsutil::stale_temps(&md.generations(), None)?);
            out.extend(crate::fsutil::stale_temps(&md.binpkgs(), None)?);
            for cat in subdirs(&md.binpkgs())? {
                out.extend(crate::fsutil::stale_temps(&cat, None)?);
            }
        }
        for d in dirs {
            out.extend(crate::fsutil::stale_temps(&d, None)?);
        }
        out.sort();
        out.dedup();
        Ok(out)
    }
}

/// Subdirectories (not symlinks) of `dir`, none when it does not exist; temporary entries left out.
fn subdirs(dir: &Path) -> Result<Vec<PathBuf>, crate::fsutil::FsError> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(crate::fsutil::FsError::new("read directory", dir, e)),
    };
    let mut out = Vec::new();
    for e in rd {
        let e = e.at("read directory", dir)?;
        let tmp = crate::fsutil::parse_temp_name(&e.file_name().to_string_lossy()).is_some();
        if !tmp && e.file_type().at("stat", &e.path())?.is_dir() {
            out.push(e.path());
        }
    }
    out.sort();
    Ok(out)
}

/// In `keys/`: the secret signing key (mode 0600).
pub const SECRET_KEY: &str = "secret.asc";
/// In `keys/`: the public keys hosts may trust (served as `/<M>/key.asc`).
pub const PUBLIC_KEYS: &str = "public.asc";
/// The name of a lock file in a directory that has one (`keys/`, `machines/<M>/`).
pub const LOCK: &str = "lock";

/// The index file of a binpkg directory (PKGDIR's, and the published one): Portage's name.
pub const PACKAGES: &str = "Packages";

/// `machines/<M>/`: everything of one machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineDir {
    dir: PathBuf,
}

impl MachineDir {
    pub fn path(&self) -> &Path {
        &self.dir
    }
    /// The machine's configuration (`config/`: an imported bundle or an overlay directory).
    pub fn config(&self) -> PathBuf {
        self.dir.join("config")
    }
    /// The configuration before the last import.
    pub fn config_prev(&self) -> PathBuf {
        self.dir.join("config.prev")
    }
    /// PKGDIR.
    pub fn binpkgs(&self) -> PathBuf {
        self.dir.join("binpkgs")
    }
    /// PKGDIR's own index, `binpkgs/Packages` (Portage's).
    pub fn binpkgs_index(&self) -> PathBuf {
        self.binpkgs().join(PACKAGES)
    }
    /// The builder's writable layer and overlay work directory.
    pub fn container(&self) -> PathBuf {
        self.dir.join("container")
    }
    pub fn upper(&self) -> PathBuf {
        self.container().join("upper")
    }
    pub fn work(&self) -> PathBuf {
        self.container().join("work")
    }
    pub fn logs(&self) -> PathBuf {
        self.dir.join("logs")
    }
    /// The log of a distcc helper (`gbuild helper`) of the machine's image, by its listen
    /// address: `logs/helper/<tag>.log`, beside the run logs (`gbuild logs` shows those only).
    pub fn helper_log(&self, tag: &str) -> PathBuf {
        self.logs().join("helper").join(format!("{tag}.log"))
    }
    /// The log of one container run, `logs/<what>-<unix time>.log` (`what`: pass, bootstrap, ...).
    pub fn log(&self, what: &str, at: u64) -> PathBuf {
        self.logs().join(format!("{what}-{at}.log"))
    }
    /// The machine's build lock (flock; names its holder).
    pub fn lock(&self) -> PathBuf {
        self.dir.join(LOCK)
    }
    /// Touched by `gbuild resume`; the idle loop polls it.
    pub fn resume(&self) -> PathBuf {
        self.dir.join("resume")
    }
    /// The machine's publications, `generations/<N>/` (`builder::generations`).
    pub fn generations(&self) -> PathBuf {
        self.dir.join("generations")
    }
    /// Publication number `id`: laid out like `published` (which is a symlink to one of them),
    /// plus its own hardlinks of the binpkgs it lists.
    pub fn generation(&self, id: u64) -> PublishedDir {
        PublishedDir {
            dir: self.generations().join(id.to_string()),
        }
    }
    /// Names of generations hosts follow at `/<M>@<tag>/` (`{"stable": 3}`).
    pub fn tags_file(&self) -> PathBuf {
        self.dir.join("tags.json")
    }
    /// Held while the machine's generations change (publication, rollback, tags, pruning).
    pub fn publish_lock(&self) -> PathBuf {
        self.dir.join("publish.lock")
    }
    /// What hosts see: a symlink to the generation served (a directory, from older versions).
    pub fn published(&self) -> PublishedDir {
        PublishedDir {
            dir: self.dir.join("published"),
        }
    }
    /// The loop's state (`builder::state::State`).
    pub fn state_file(&self) -> PathBuf {
        self.dir.join("state.json")
    }
    /// The builder's metadata (`builder::MachineMeta`).
    pub fn meta_file(&self) -> PathBuf {
        self.dir.join("machine.json")
    }
    /// What the last import was (`host::machine::ImportRecord`).
    pub fn import_record(&self) -> PathBuf {
        self.dir.join("import.json")
    }
    /// Tells the builder to run `update`; holds the reasons.
    pub fn needs_update(&self) -> PathBuf {
        self.dir.join("needs-update")
    }
    /// Packages requested on demand (`host::requests::Requests`).
    pub fn requests(&self) -> PathBuf {
        self.dir.join("requests.json")
    }
    /// The hosts' kernel version when no bundle records it.
    pub fn kernel(&self) -> PathBuf {
        self.dir.join("kernel")
    }
    /// Signatures already made, by binpkg size and mtime.
    pub fn sign_cache(&self) -> PathBuf {
        self.dir.join("sign-cache.json")
    }
    /// ABI notes already read, by binpkg size and mtime.
    pub fn abi_cache(&self) -> PathBuf {
        self.dir.join("abi-cache.json")
    }
    /// Build-side settings bound into containers (`builder::buildside`).
    pub fn build_side(&self) -> PathBuf {
        self.dir.join("build-side")
    }
    /// The builder `rebase` stages beside the machine's (`builder::rebase`): `rebase/` with its
    /// own PKGDIR, container and scratch directories.
    pub fn rebase(&self) -> PathBuf {
        self.dir.join("rebase")
    }
    /// The staged builder's PKGDIR (hard links to the machine's files, plus its own builds).
    pub fn rebase_binpkgs(&self) -> PathBuf {
        self.rebase().join("binpkgs")
    }
    /// The staged builder's container (upper, work), empty until it is swapped in.
    pub fn rebase_container(&self) -> PathBuf {
        self.rebase().join("container")
    }
    /// The staged builder, checked and ready to swap in (`builder::rebase::Staged`).
    pub fn rebase_staged(&self) -> PathBuf {
        self.rebase().join("staged.json")
    }
    /// The last swap: the staged builder as swapped in, with what its publication did.
    pub fn rebase_swapped(&self) -> PathBuf {
        self.rebase().join("swapped.json")
    }
    /// One rebase per machine at a time (flock; names its holder). Not the build lock.
    pub fn rebase_lock(&self) -> PathBuf {
        self.dir.join("rebase.lock")
    }
    /// The machine's ccache (gbuild.toml's `ccache`): outlives builders, like PKGDIR.
    pub fn ccache(&self) -> PathBuf {
        self.dir.join("ccache")
    }
    /// A fresh temporary path in the machine's directory (the scheme `gc` knows).
    pub fn temp(&self, purpose: &str) -> PathBuf {
        crate::fsutil::temp_path(&self.dir, purpose)
    }
    /// Temporary entries of `purpose` that crashed runs left in the machine's directory.
    pub fn stale_temps(&self, purpose: &str) -> Result<Vec<PathBuf>, crate::fsutil::FsError> {
        crate::fsutil::stale_temps(&self.dir, Some(purpose))
    }
}

/// The marker file a staged directory of rebase attempt `id` carries (in its PKGDIR and its
/// container), so an interrupted swap knows which side each directory is on.
pub fn rebase_marker(id: &str) -> String {
    format!(".gbuild-rebase-{id}")
}

/// `machines/<M>/published/`: the index and its description, replaced as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedDir {
    dir: PathBuf,
}

impl PublishedDir {
    pub fn path(&self) -> &Path {
        &self.dir
    }
    /// The published index (`Packages`, Portage's format).
    pub fn packages(&self) -> PathBuf {
        self.dir.join(PACKAGES)
    }
    /// What was published (`builder::publish::PublishedInfo`).
    pub fn info(&self) -> PathBuf {
        self.dir.join(Self::INFO)
    }
    /// A generation's hardlinks of the binpkgs its index lists, at the index's paths.
    pub fn binpkgs(&self) -> PathBuf {
        self.dir.join("binpkgs")
    }
    /// The same directory layout at `dir` (a generation found by other means).
    pub fn at(dir: PathBuf) -> PublishedDir {
        PublishedDir { dir }
    }
    /// The same names inside a directory being prepared for `rename` over this one.
    pub fn packages_in(tmp: &Path) -> PathBuf {
        tmp.join(PACKAGES)
    }
    pub fn info_in(tmp: &Path) -> PathBuf {
        tmp.join(Self::INFO)
    }
    /// The signed record of the publication (`builder::release`), served as `/<M>/release.asc`.
    pub fn release(&self) -> PathBuf {
        self.dir.join(Self::RELEASE)
    }
    /// The configuration the published binpkgs were built for, served as `/<M>/bundle.tar`.
    pub fn bundle(&self) -> PathBuf {
        self.dir.join(Self::BUNDLE)
    }
    pub fn release_in(tmp: &Path) -> PathBuf {
        tmp.join(Self::RELEASE)
    }
    pub fn bundle_in(tmp: &Path) -> PathBuf {
        tmp.join(Self::BUNDLE)
    }
    const INFO: &'static str = "info.json";
    /// File names inside `published/`, also the names under `/<M>/` on the binhost.
    pub const RELEASE: &'static str = "release.asc";
    pub const BUNDLE: &'static str = "bundle.tar";
}

/// Validate a machine or image name: it becomes a directory name.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['.', '-'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_name("laptop-1"));
        assert!(!valid_name("../x"));
        assert!(!valid_name(".hidden"));
        assert!(!valid_name(""));
        assert!(!valid_name("a/b"));
    }

    #[test]
    fn explicit_store_wins() {
        let s = Store::resolve(Some(Path::new("/srv/gb"))).unwrap();
        assert_eq!(s.layers(), Path::new("/srv/gb/layers"));
    }
}
