//! The builder: a machine's container (stage3 layer + config layer + bootstrap layer + a writable
//! upper dir) in which the real `emerge` builds the machine's world set into its PKGDIR.
//!
//! Files per machine follow the store contract (docs/design.md): `machines/<M>/config/` (the
//! configuration applied to the builder), `binpkgs/` (PKGDIR, outlives builders), `container/`
//! (upper, work), `logs/`, `state.json` (the loop's state, read by `status` and `serve`),
//! `machine.json` (what the builder was made from), `lock`.
//!
//! One writer per machine: everything that changes a machine takes a `&MachineLock`, which only
//! `MachineLock::acquire` makes (holding `machines/<M>/lock` until dropped), so code that would
//! change a machine without its lock does not compile. `Machine::open` only finds an existing
//! machine; reading never creates one. Three files reach a running loop without its lock, each
//! written whole by a rename: the `resume` marker (`pass::resume`), `requests.json` (under the
//! configuration lock, `host::requests`) and a distcc helper's own log and scratch directory
//! (`helper`, which only reads the machine).

pub mod bootstrap;
pub mod buildside;
pub mod chain;
pub mod check;
pub mod cleanup;
pub mod distcc;
pub mod drift;
pub mod emerge;
pub mod gate;
pub mod generations;
pub mod helper;
pub mod pass;
pub mod publish;
pub mod rebase;
pub mod release;
pub mod session;
pub mod state;
pub mod steps;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::fsutil::IoContext;
use crate::idmap::IdMapping;
use crate::layer;
use crate::runtime::{Bind, ContainerSpec, Rootfs, Runtime};
use crate::store::Store;

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/embedded.rs"));
}

/// The bootstrap recipe shipped in `stage3/bootstrap.recipe`.
pub fn builtin_recipe() -> &'static str {
    embedded::BOOTSTRAP_RECIPE
}

#[derive(Debug, thiserror::Error)]
pub enum BuilderError {
    #[error("invalid machine name {0:?}: use letters, digits, '-', '_', '.'")]
    BadName(String),
    #[error("machine {0} has no configuration: import a host bundle with `gbuild machine import BUNDLE --name {0}`")]
    NoConfig(String),
    #[error("no machine {0} in the store (`gbuild machine list` shows the machines)")]
    NoMachine(String),
    #[error("no verified stage3 in the store: run `gbuild fetch` first")]
    NoStage3,
    #[error("no verified ebuild-tree snapshot in the store: run `gbuild fetch` first")]
    NoSnapshot,
    #[error("machine {0} is not bootstrapped: run `gbuild bootstrap --machine {0}`")]
    NotBootstrapped(String),
    #[error(
        "machine {0} has no recorded ebuild-tree snapshot: run `gbuild bootstrap --machine {0}`"
    )]
    NoRecordedSnapshot(String),
    #[error("machine {0} has no builder: run `gbuild builder --machine {0}`")]
    NoBuilder(String),
    #[error("{what} failed in the builder of {machine} (exit {code}); log: {log}")]
    Emerge {
        what: String,
        machine: String,
        code: i32,
        log: PathBuf,
    },
    #[error("dependency cycle in {machine} that emerge offers no USE change for; log: {log}")]
    Cycle { machine: String, log: PathBuf },
    #[error(transparent)]
    Fs(#[from] crate::fsutil::FsError),
    #[error(transparent)]
    Json(#[from] crate::fsutil::JsonFileError),
    #[error(transparent)]
    Layer(#[from] layer::LayerError),
    #[error(transparent)]
    Runtime(#[from] crate::runtime::RuntimeError),
    #[error(transparent)]
    Lock(#[from] crate::lock::LockError),
    #[error("machine {machine} is locked by {holder}: one gbuild at a time changes a machine")]
    Busy {
        machine: String,
        holder: crate::lock::Holder,
    },
    #[error("gbuild.toml: machines.{machine}.distcc_hosts: {value:?}: {why}")]
    BadDistccHost {
        machine: String,
        value: String,
        why: String,
    },
    #[error("check of {machine} failed after bootstrap: {}", chain::problems_line(.problems))]
    CheckFailed {
        machine: String,
        problems: Vec<String>,
    },
    #[error("rebase of {machine}: {why}")]
    RebaseFetch { machine: String, why: String },
    #[error("exchange {} with {}: {source} (the store's filesystem must support RENAME_EXCHANGE)", .a.display(), .b.display())]
    Exchange {
        a: PathBuf,
        b: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not the staged directory of rebase {id}", .dir.display())]
    NotStaged { dir: PathBuf, id: String },
    #[error("no staged builder for {0}")]
    NoStagedBuilder(String),
    #[error("capturing the builder's configuration of {machine} failed (exit {code}); log: {}", .log.display())]
    CaptureFailed {
        machine: String,
        code: i32,
        log: PathBuf,
    },
    #[error("capture the builder of {machine}: {source}")]
    Capture {
        machine: String,
        source: crate::host::HostError,
    },
    #[error("applying the configuration of {machine} to its builder failed (exit {code})")]
    ApplyConfig { machine: String, code: i32 },
    #[error(transparent)]
    Sign(#[from] crate::sign::SignError),
    #[error("sign {file}: {source}")]
    SignRelease {
        file: &'static str,
        source: pgp::errors::Error,
    },
    #[error("machine {machine}: {source}")]
    Profile {
        machine: String,
        source: crate::stage3::UnknownProfile,
    },
    #[error("machine {machine}: overlay {overlay} at {location}: {why}")]
    BadOverlay {
        machine: String,
        overlay: String,
        location: String,
        why: String,
    },
    #[error("machine {machine}: {source}")]
    OverlayCheckout {
        machine: String,
        source: crate::fetch::git::GitError,
    },
    #[error("the host of {machine} uses the ebuild tree of {tree} (Gentoo's snapshot {date}), not verified in the store: run `gbuild run --machine {machine}` or `gbuild fetch --snapshot-date {date}`")]
    HostSnapshotMissing {
        machine: String,
        tree: String,
        date: String,
    },
    #[error("refusing to listen on {ip}: that is every network of this box; give the one address the allowed builders reach it at")]
    ListenEverywhere { ip: std::net::IpAddr },
    #[error("refusing to listen on {ip}: it is outside --allow {allow}")]
    ListenOutsideAllow { ip: std::net::IpAddr, allow: String },
    #[error("{}: not a binpkg path of {}", .rel, .pkgdir.display())]
    NotABinpkgPath { rel: String, pkgdir: PathBuf },
    #[error("machine {machine}: no generation {id} (`gbuild publish --machine {machine} list`)")]
    NoGeneration { machine: String, id: u64 },
    #[error("invalid tag {0:?}: use letters, digits, '-', '_', '.'")]
    BadTag(String),
    #[error("gbuild helper needs a subordinate id range (distccd runs compiles as an unprivileged user of the image): run `gbuild setup-host --user <you>` as root once")]
    HelperNeedsIdRange,
    #[error("image {image} of machine {machine} has no distccd: set distcc_hosts for it in gbuild.toml, run a pass (or bootstrap), then `gbuild snapshot --machine {machine}`")]
    NoDistccd { image: String, machine: String },
    #[error(
        "image {image} has no user distcc, distccd or nobody in /etc/passwd to run distccd as"
    )]
    NoDistccUser { image: String },
}

pub type Result<T, E = BuilderError> = std::result::Result<T, E>;

/// What a machine's builder was made from (`machine.json`), written and read by this one type.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct MachineMeta {
    /// Image the builder runs on (`<M>/bootstrap`).
    pub image: Option<String>,
    /// Snapshot date of the ebuild tree the builder uses (`repos/<date>`).
    pub snapshot: Option<String>,
    /// Hash of the configuration last applied to the builder.
    pub config_hash: Option<String>,
    /// The stage3 tarball the image starts from.
    pub stage3: Option<String>,
    /// Whether the container (upper dir) exists.
    pub builder: bool,
    /// Distfiles mirror given when the machine was last built (GENTOO_MIRRORS for emerge).
    #[serde(default)]
    pub mirror: Option<String>,
    /// Key bundle and extra trusted fingerprints the loop's snapshot fetches use.
    #[serde(default)]
    pub keyring: Option<PathBuf>,
    #[serde(default)]
    pub trust: Vec<String>,
}

/// A machine of the store.
#[derive(Debug, Clone)]
pub struct Machine {
    pub name: String,
    pub store: Store,
}

/// Where PKGDIR is bound in every builder container.
pub const PKGDIR: &str = "/var/cache/binpkgs";

/// The machine that is the stage3's own configuration and world when nothing else configures it.
pub const STAGE3_MACHINE: &str = "default";

/// Marks a `config/` directory whose files are laid over the stage3's own configuration (a
/// built-in overlay, an overlay directory given to `machine import --overlay`, or nothing).
pub const OVERLAY_MARKER: &str = crate::host::machine::OVERLAY_MARKER;

/// Whether the configuration replaces the stage3's /etc/portage (an imported host bundle) or is
/// laid over it (a built-in overlay, an overlay directory, or nothing: the stage3's own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigMode {
    Replace,
    Overlay,
}

impl MachineMeta {
    /// The snapshot the builder uses; a machine without one is an error naming it (never the
    /// whole `repos/` directory as its ebuild tree).
    pub fn recorded_snapshot(&self, machine: &str) -> Result<&str> {
        self.snapshot
            .as_deref()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| BuilderError::NoRecordedSnapshot(machine.to_string()))
    }
}

impl Machine {
    /// An existing machine of the store; never creates one.
    pub fn open(store: &Store, name: &str) -> Result<Machine> {
        let m = Machine::named(store, name)?;
        if !m.dir().is_dir() {
            return Err(BuilderError::NoMachine(name.to_string()));
        }
        Ok(m)
    }

    fn named(store: &Store, name: &str) -> Result<Machine> {
        if !crate::store::valid_name(name) {
            return Err(BuilderError::BadName(name.to_string()));
        }
        Ok(Machine {
            name: name.to_string(),
            store: store.clone(),
        })
    }

    /// Whether a configuration exists for the machine: imported, a built-in overlay, or the
    /// stage3's own (the `default` machine always has one).
    fn has_config(&self) -> bool {
        let dir = self.config_dir();
        let prefix = format!("{}/", self.name);
        self.name == STAGE3_MACHINE
            || dir.join("etc/portage").is_dir()
            || dir.join("var").is_dir()
            || embedded::OVERLAY_FILES
                .iter()
                .any(|(p, _, _)| p.starts_with(&prefix))
    }

    /// The machine's files in the store.
    pub fn files(&self) -> crate::store::MachineDir {
        self.store.machine(&self.name)
    }
    pub fn dir(&self) -> PathBuf {
        self.files().path().to_path_buf()
    }

    /// How the materialised configuration is applied (`None` before `ensure_config` made it).
    pub fn config_mode(&self) -> Option<ConfigMode> {
        let dir = self.config_dir();
        if dir.join(OVERLAY_MARKER).exists() {
            Some(ConfigMode::Overlay)
        } else if dir.join("etc/portage").is_dir() || dir.join("var").is_dir() {
            Some(ConfigMode::Replace)
        } else {
            None
        }
    }
    pub fn config_dir(&self) -> PathBuf {
        self.files().config()
    }
    pub fn binpkgs(&self) -> PathBuf {
        self.files().binpkgs()
    }
    pub fn container(&self) -> PathBuf {
        self.files().container()
    }
    pub fn upper(&self) -> PathBuf {
        self.files().upper()
    }
    pub fn work(&self) -> PathBuf {
        self.files().work()
    }
    pub fn logs(&self) -> PathBuf {
        self.files().logs()
    }
    pub fn lock_path(&self) -> PathBuf {
        self.files().lock()
    }
    pub fn resume_path(&self) -> PathBuf {
        self.files().resume()
    }
    pub fn published(&self) -> crate::store::PublishedDir {
        self.files().published()
    }
    pub fn image_name(&self, stage: &str) -> String {
        format!("{}/{stage}", self.name)
    }

    /// The builder's metadata; none yet is the default, an unreadable file an error naming it.
    pub fn meta(&self) -> Result<MachineMeta> {
        Ok(crate::fsutil::read_json(&self.files().meta_file())?.unwrap_or_default())
    }

    /// The imported host bundle of this machine (none for a built-in overlay machine).
    pub fn host_bundle(&self) -> Option<crate::host::Bundle> {
        crate::host::bundle::imported(&self.config_dir())
    }

    /// A hash of the configuration files (what `update` and the loop compare).
    pub fn config_hash(&self) -> Result<String> {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        let mut files = Vec::new();
        collect_files(&self.config_dir(), &self.config_dir(), &mut files)?;
        files.sort();
        for rel in files {
            let p = self.config_dir().join(&rel);
            h.update(rel.as_bytes());
            h.update([0]);
            match std::fs::read_link(&p) {
                Ok(t) => h.update(t.to_string_lossy().as_bytes()),
                Err(_) => h.update(std::fs::read(&p).at("read", &p)?),
            }
            h.update([0]);
        }
        Ok(hex::encode(h.finalize()))
    }
}

/// A machine whose lock this process holds, for its whole life: the only way to the functions
/// that change a machine. Dereferences to the machine.
pub struct MachineLock {
    machine: Machine,
    _lock: crate::lock::Lock,
}

impl std::fmt::Debug for MachineLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MachineLock({})", self.machine.name)
    }
}

impl std::ops::Deref for MachineLock {
    type Target = Machine;
    fn deref(&self) -> &Machine {
        &self.machine
    }
}

impl MachineLock {
    /// Lock machine `name`, creating its directories when it has a configuration (imported or
    /// built in) but no directory yet. Refuses at once, naming the holder's pid and command, when
    /// another process has the lock.
    pub fn acquire(store: &Store, name: &str) -> Result<MachineLock> {
        let machine = Machine::named(store, name)?;
        if !machine.dir().is_dir() && !machine.has_config() {
            return Err(BuilderError::NoConfig(name.to_string()));
        }
        Self::lock(machine)
    }

    /// Lock machine `name`, creating it even without a configuration (a builder restored from
    /// an exported image, whose configuration is imported afterwards).
    pub fn create(store: &Store, name: &str) -> Result<MachineLock> {
        Self::lock(Machine::named(store, name)?)
    }

    fn lock(machine: Machine) -> Result<MachineLock> {
        let name = machine.name.clone();
        let lock = crate::lock::Lock::try_acquire(&machine.lock_path()).map_err(|e| match e {
            crate::lock::LockError::Busy { holder, .. } => BuilderError::Busy {
                machine: name.to_string(),
                holder,
            },
            e => e.into(),
        })?;
        for d in [machine.dir(), machine.binpkgs(), machine.logs()] {
            std::fs::create_dir_all(&d).at("create directory", &d)?;
        }
        Ok(MachineLock {
            machine,
            _lock: lock,
        })
    }

    pub fn machine(&self) -> &Machine {
        &self.machine
    }

    pub fn save_meta(&self, meta: &MachineMeta) -> Result<()> {
        crate::fsutil::write_json(&self.files().meta_file(), meta)?;
        Ok(())
    }

    /// Make sure `config/` holds the machine's configuration: an imported bundle or overlay
    /// directory stays as it is; a machine named like a built-in overlay gets that overlay's
    /// files; the `default` machine without one is the stage3's own configuration, exactly
    /// (an empty overlay).
    pub fn ensure_config(&self) -> Result<ConfigMode> {
        let dir = self.config_dir();
        if let Some(mode) = self.config_mode() {
            // Materialised once; edits made there by the user are the machine's configuration.
            return Ok(mode);
        }
        let prefix = format!("{}/", self.name);
        let files: Vec<_> = embedded::OVERLAY_FILES
            .iter()
            .filter(|(p, _, _)| p.starts_with(&prefix))
            .collect();
        if files.is_empty() && self.name != STAGE3_MACHINE {
            return Err(BuilderError::NoConfig(self.name.clone()));
        }
        let tmp = crate::fsutil::temp_sibling(&dir);
        std::fs::create_dir_all(&tmp).at("create directory", &tmp)?;
        for (p, content, link) in files {
            let dest = tmp.join(&p[prefix.len()..]);
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent).at("create directory", parent)?;
            }
            if *link {
                std::os::unix::fs::symlink(String::from_utf8_lossy(content).as_ref(), &dest)
                    .at("symlink", &dest)?;
            } else {
                std::fs::write(&dest, content).at("write", &dest)?;
            }
        }
        std::fs::write(tmp.join(OVERLAY_MARKER), b"").at("write", &tmp)?;
        if dir.exists() {
            crate::fsutil::remove_tree(&dir)?;
        }
        crate::fsutil::rename_dir_into_place(&tmp, &dir)?;
        Ok(ConfigMode::Overlay)
    }
}

fn collect_files(base: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
    for e in std::fs::read_dir(dir).at("read directory", dir)? {
        let e = e.at("read directory", dir)?;
        let p = e.path();
        let ft = e.file_type().at("stat", &p)?;
        if ft.is_dir() {
            collect_files(base, &p, out)?;
        } else {
            out.push(p.strip_prefix(base).unwrap().to_string_lossy().into_owned());
        }
    }
    Ok(())
}

/// The lock of a machine's staged builder (`machines/<M>/rebase.lock`): one rebase per machine
/// at a time; the machine's own lock is not held while staging.
pub struct RebaseLock {
    machine: Machine,
    _lock: crate::lock::Lock,
}

impl std::fmt::Debug for RebaseLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RebaseLock({})", self.machine.name)
    }
}

impl RebaseLock {
    /// Lock the staged builder of existing machine `name`, or refuse at once naming the holder.
    pub fn acquire(store: &Store, name: &str) -> Result<RebaseLock> {
        let machine = Machine::open(store, name)?;
        let path = machine.files().rebase_lock();
        let lock = crate::lock::Lock::try_acquire(&path).map_err(|e| match e {
            crate::lock::LockError::Busy { holder, .. } => BuilderError::Busy {
                machine: format!("{name} (its rebase)"),
                holder,
            },
            e => e.into(),
        })?;
        Ok(RebaseLock {
            machine,
            _lock: lock,
        })
    }

    pub fn machine(&self) -> &Machine {
        &self.machine
    }
}

/// Everything a builder operation needs: the store, settings, the id mapping, the runtime.
pub struct BuildEnv {
    pub store: Store,
    pub config: Config,
    pub map: IdMapping,
    pub runtime: Runtime,
    /// Mirror for distfiles (GENTOO_MIRRORS) when it is not Gentoo's default.
    pub mirror: Option<String>,
    /// Echo emerge's output on stderr.
    pub echo: bool,
}

impl BuildEnv {
    pub fn helper(&self) -> layer::ns::Helper {
        layer::ns::Helper::new(self.store.clone(), self.map.clone())
    }

    /// The container spec of `machine` on `image` with writable `upper`: the ebuild tree of
    /// `snapshot` read-only, PKGDIR and DISTDIR read-write.
    pub fn spec(
        &self,
        machine: &Machine,
        image: &str,
        upper: &Path,
        work: &Path,
        snapshot: &str,
        argv: Vec<String>,
    ) -> Result<ContainerSpec> {
        self.spec_with(machine, image, upper, work, snapshot, argv, true, None)
    }

    /// As `spec`; `build_layer: false` leaves out the builder's own package.env entry (the drift
    /// check's capture of the host's configuration as the builder has it); `distcc`: the
    /// helpers of a pass.
    #[allow(clippy::too_many_arguments)]
    pub fn spec_with(
        &self,
        machine: &Machine,
        image: &str,
        upper: &Path,
        work: &Path,
        snapshot: &str,
        argv: Vec<String>,
        build_layer: bool,
        distcc: Option<&distcc::Plan>,
    ) -> Result<ContainerSpec> {
        // Never `repos/` itself as the ebuild tree.
        if snapshot.is_empty() {
            return Err(BuilderError::NoRecordedSnapshot(machine.name.clone()));
        }
        let img = layer::image::load(&self.store, image)?;
        let mut layers = layer::image::lowerdirs(&self.store, &img);
        layers.reverse(); // the runtime takes them lowest first
        let mut spec = ContainerSpec::new(
            Rootfs::Overlay {
                layers,
                upper: upper.to_path_buf(),
                work: work.to_path_buf(),
            },
            argv,
            self.map.clone(),
        );
        spec.hostname = format!("gbuild-{}", machine.name);
        // The host bundle is read (and validated) once per container.
        let host = machine.host_bundle();
        std::fs::create_dir_all(self.store.distfiles())
            .at("create directory", &self.store.distfiles())?;
        spec.binds = vec![
            Bind {
                src: self.store.repo(snapshot),
                dst: repo_location_of(host.as_ref()).into(),
                readonly: true,
            },
            Bind {
                src: machine.binpkgs(),
                dst: PKGDIR.into(),
                readonly: false,
            },
            Bind {
                src: self.store.distfiles(),
                dst: "/var/cache/distfiles".into(),
                readonly: false,
            },
        ];
        // Every overlay of the host's repos.conf, read-only at the host's location, like the
        // main tree (never on overlayfs).
        if let Some(b) = &host {
            for r in b.manifest.repos.iter().filter(|r| !r.main) {
                spec.binds.push(Bind {
                    src: overlay_source(&self.store, machine, r)?,
                    dst: r.location.clone().into(),
                    readonly: true,
                });
            }
        }
        spec.env = emerge::environment(self);
        let side = buildside::prepare(self, machine, host.as_ref(), build_layer, distcc)?;
        spec.env.extend(side.env);
        spec.binds.extend(side.binds);
        spec.tmpfs.extend(side.tmpfs);
        Ok(spec)
    }
}

/// The stage3 variant machine `m` starts from: gbuild.toml's `variant` when set, else the one
/// its host's profile needs (`crate::stage3`), else `openrc`. A profile of an overlay the bundle
/// carries counts as the main-tree profile its `parent` file names (`gentoo:default/linux/...`).
pub fn stage3_variant(config: &Config, m: &Machine) -> Result<String> {
    let host = m.host_bundle();
    let profile = host
        .as_ref()
        .and_then(|b| b.manifest.profile.clone())
        .map(|p| match (&host, &p.repo, &p.path) {
            (Some(b), Some(repo), Some(path)) => {
                main_profile_of(b, repo, path, 0).unwrap_or_else(|| path.clone())
            }
            _ => p.path.clone().unwrap_or(p.link.clone()),
        });
    config
        .variant_for(profile.as_deref())
        .map_err(|source| BuilderError::Profile {
            machine: m.name.clone(),
            source,
        })
}

/// The main-tree profile that profile `path` of repository `repo` stands on: itself for the main
/// tree, else the first `<main>:<path>` line of its `parent` file (followed through the bundle's
/// captured overlays, a few levels deep).
fn main_profile_of(
    b: &crate::host::Bundle,
    repo: &str,
    path: &str,
    depth: usize,
) -> Option<String> {
    let main = b.main_repo().map(|r| r.name.clone())?;
    if repo == main {
        return Some(path.to_string());
    }
    if depth > 8 {
        return None;
    }
    let parent = format!(
        "{}/profiles/{path}/parent",
        crate::host::bundle::captured_prefix(repo)
    );
    let text = String::from_utf8_lossy(b.file(&parent)?).into_owned();
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .find_map(|l| {
            let (r, p) = l.split_once(':')?;
            main_profile_of(b, r, p, depth + 1)
        })
}

/// Newest verified snapshot, unpacked under `repos/` (date, path of its tarball).
pub fn newest_snapshot(store: &Store) -> Result<(String, PathBuf)> {
    let a = crate::fetch::latest_verified_snapshot(store).ok_or(BuilderError::NoSnapshot)?;
    let date = a.manifest.date.clone();
    layer::unpack::unpack_repo(store, &a.path, &date)?;
    Ok((date, a.path))
}

/// Where overlay `r` of machine `m`'s host comes from: the tree its bundle carries (unpacked
/// in `config/repos/<name>/`), or the store's checkout of the commit the host is at (cloned from
/// its `sync-uri` the first time).
pub fn overlay_source(store: &Store, m: &Machine, r: &crate::host::Repo) -> Result<PathBuf> {
    let bad = |why: &str| BuilderError::BadOverlay {
        machine: m.name.clone(),
        overlay: r.name.clone(),
        location: r.location.clone(),
        why: why.to_string(),
    };
    if !r.location.starts_with('/') || r.location.split('/').any(|c| c == "..") || r.location == "/"
    {
        return Err(bad("location must be an absolute path"));
    }
    if r.captured.is_some() {
        let dir = m
            .config_dir()
            .join(crate::host::bundle::captured_prefix(&r.name));
        if !dir.is_dir() {
            return Err(bad(&format!(
                "{} is missing; import the bundle again",
                dir.display()
            )));
        }
        return Ok(dir);
    }
    match (&r.git_commit, &r.sync_uri) {
        (Some(c), Some(uri)) => crate::fetch::git::checkout(store, &r.name, uri, c).map_err(
            |source| BuilderError::OverlayCheckout {
                machine: m.name.clone(),
                source,
            },
        ),
        _ => Err(bad(
            "the bundle carries neither its tree nor its git commit; run `gbuild host export` again on the host",
        )),
    }
}

/// Where the machine's configuration puts the main ebuild tree (its repos.conf), default
/// `/var/db/repos/gentoo`; the snapshot is bind-mounted there.
pub fn repo_location(m: &Machine) -> String {
    repo_location_of(m.host_bundle().as_ref())
}

/// As `repo_location`, from the machine's host bundle (if any).
pub fn repo_location_of(host: Option<&crate::host::Bundle>) -> String {
    host.and_then(|b| b.main_repo().map(|r| r.location.clone()))
        .filter(|l| l.starts_with('/') && !l.contains(".."))
        .unwrap_or_else(|| "/var/db/repos/gentoo".to_string())
}

/// The snapshot date the machine must use: the verified snapshot holding its host's tree
/// (matched by timestamp) when the imported bundle has one, else the newest verified one.
/// Unpacked under `repos/`.
pub fn pinned_snapshot(env: &BuildEnv, m: &Machine) -> Result<String> {
    if let Some(b) = m.host_bundle() {
        if let Some(tree) = host_tree(&b) {
            let a = crate::fetch::verified_snapshot_of_tree(&env.store, tree).ok_or_else(|| {
                BuilderError::HostSnapshotMissing {
                    machine: m.name.clone(),
                    tree: tree.describe(),
                    date: tree.snapshot_name_date().unwrap_or_default(),
                }
            })?;
            let date = a.manifest.date.clone();
            layer::unpack::unpack_repo(&env.store, &a.path, &date)?;
            return Ok(date);
        }
    }
    Ok(newest_snapshot(&env.store)?.0)
}

/// The identity of a host bundle's main tree, when it has a timestamp to find it by.
pub fn host_tree(b: &crate::host::Bundle) -> Option<&crate::fetch::TreeIdentity> {
    b.main_repo()
        .map(|r| &r.identity)
        .filter(|id| id.unix_time().is_some())
}

/// Compiler flags that must not mean the builder's CPU: a host whose CFLAGS (or CXXFLAGS,
/// FCFLAGS, FFLAGS) say `-march=native` gets the flags gcc resolved `-march=native` to on that
/// host (recorded by `host export`), given to emerge in the builder's own `*/*` package.env
/// entry, which overrides make.conf but not per-package env files (`buildside`). Empty when
/// nothing needs rewriting.
pub fn native_flags_of(b: &crate::host::Bundle) -> Vec<(String, String)> {
    let Some(cpu) = b.manifest.cpu.as_ref().filter(|c| !c.flags.is_empty()) else {
        return Vec::new();
    };
    let resolved = cpu.flags.join(" ");
    let mut out = Vec::new();
    for k in ["CFLAGS", "CXXFLAGS", "FCFLAGS", "FFLAGS"] {
        let v = b
            .manifest
            .variables
            .get(k)
            .or_else(|| b.manifest.make_conf.get(k));
        if let Some(v) = v {
            if v.split_whitespace().any(|t| t == "-march=native") {
                let new: Vec<&str> = v
                    .split_whitespace()
                    .flat_map(|t| {
                        if t == "-march=native" {
                            resolved.split_whitespace().collect::<Vec<_>>()
                        } else if t == "-mtune=native" {
                            Vec::new()
                        } else {
                            vec![t]
                        }
                    })
                    .collect();
                out.push((k.to_string(), new.join(" ")));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::bundle::{Cpu, Manifest, VarSource};

    #[test]
    fn open_finds_a_machine_and_never_creates_one() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::at(t.path());
        assert!(matches!(
            Machine::open(&store, "laptop"),
            Err(BuilderError::NoMachine(n)) if n == "laptop"
        ));
        assert!(!store.machine("laptop").path().exists());
        assert!(matches!(
            Machine::open(&store, "../x"),
            Err(BuilderError::BadName(_))
        ));
        let lock = MachineLock::create(&store, "laptop").unwrap();
        assert_eq!(Machine::open(&store, "laptop").unwrap().name, "laptop");
        // A second writer is refused while the first holds the lock.
        assert!(matches!(
            MachineLock::acquire(&store, "laptop"),
            Err(BuilderError::Busy { .. })
        ));
        drop(lock);
        MachineLock::acquire(&store, "laptop").unwrap();
    }

    #[test]
    fn native_is_replaced_by_the_hosts_resolution() {
        let mut vars = std::collections::BTreeMap::new();
        vars.insert(
            "CFLAGS".to_string(),
            "-O2 -march=native -mtune=native -pipe".to_string(),
        );
        vars.insert("LDFLAGS".to_string(), "-Wl,-O1".to_string());
        let manifest = Manifest {
            format: 1,
            host: "laptop".into(),
            created: 0,
            kernel: None,
            kernel_source: String::new(),
            profile: None,
            repos: Vec::new(),
            variables_source: VarSource::MakeConf,
            variables: vars.clone(),
            make_conf: vars,
            cpu: Some(Cpu {
                march: Some("skylake".into()),
                flags: vec!["-march=skylake".into(), "-mavx2".into()],
                source: "gcc".into(),
            }),
            files: Vec::new(),
            skipped: Vec::new(),
        };
        let b = crate::host::Bundle::from_parts(manifest, Default::default());
        assert_eq!(
            native_flags_of(&b),
            vec![(
                "CFLAGS".to_string(),
                "-O2 -march=skylake -mavx2 -pipe".to_string()
            )]
        );
    }
}
