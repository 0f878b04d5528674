//! Machines from host bundles (store contract: `machines/M/config/`): importing a bundle as a
//! machine's configuration, atomically and with the previous one kept as `config.prev/`, marking
//! the builder for `update` when a re-import changed something (`machines/M/needs-update`, the
//! reason inside, consumed by the builder), and listing machines.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{diff, Bundle, Diff, HostError};
use crate::fsutil::{FsError, IoContext};
use crate::store::{MachineDir, Store};

/// Marks a `config/` directory laid over the stage3's own configuration instead of replacing it.
pub const OVERLAY_MARKER: &str = ".gbuild-builtin";

/// `machines/M/import.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportRecord {
    /// Unix time of the import.
    pub imported: u64,
    /// The bundle file as given to `machine import`.
    pub source: String,
    /// The host named in the bundle's manifest.
    pub host: String,
    /// The bundle's creation time.
    pub created: u64,
}

/// What an import did.
#[derive(Debug)]
pub struct ImportReport {
    pub machine: String,
    pub config: PathBuf,
    /// The differences to the previous configuration (None on the first import).
    pub changes: Option<Diff>,
    /// Host name of the previous configuration when it differs from the new one.
    pub previous_host: Option<String>,
    /// Whether `needs-update` was written.
    pub needs_update: bool,
    /// Requests (`gbuild request`) removed because the host's world has them now.
    pub satisfied: Vec<String>,
    /// Why the publish gate cannot use this bundle (no installed-package database), if so.
    pub gate_notice: Option<String>,
}

/// Why the publish gate cannot check publications against the host of `b`, if it cannot.
pub fn gate_notice(b: &Bundle) -> Option<String> {
    if b.installed().is_some() {
        return None;
    }
    Some(if b.manifest.format < 2 {
        format!(
            "bundle format {} carries no installed-package database: publications are not checked against this host until it is exported again with this gbuild (`gbuild host export`)",
            b.manifest.format
        )
    } else {
        "the bundle carries no installed-package database (its root has no var/db/pkg): publications are not checked against this host".to_string()
    })
}

/// One machine as `machine list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct MachineInfo {
    pub name: String,
    pub host: Option<String>,
    pub imported: Option<u64>,
    pub kernel: Option<String>,
    pub snapshot: Option<String>,
    /// The reason in `needs-update`, when an update is pending.
    pub update_pending: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    #[error("invalid machine name {0:?}: use letters, digits, '-', '_', '.'")]
    Name(String),
    #[error("machine {0:?} has no configuration (import a bundle first)")]
    NoConfig(String),
    #[error(transparent)]
    Host(#[from] HostError),
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error(transparent)]
    Lock(#[from] crate::lock::LockError),
    #[error(transparent)]
    Layer(#[from] crate::layer::LayerError),
    #[error(transparent)]
    Requests(#[from] super::requests::RequestError),
}

use crate::time::now;

fn check_name(name: &str) -> Result<(), MachineError> {
    if crate::store::valid_name(name) {
        Ok(())
    } else {
        Err(MachineError::Name(name.to_string()))
    }
}

/// The configuration directory of machine `name` (`machines/M/config`).
pub fn config_dir(store: &Store, name: &str) -> PathBuf {
    store.machine(name).config()
}

/// The machine's current configuration as a bundle.
pub fn config_bundle(store: &Store, name: &str) -> Result<Bundle, MachineError> {
    check_name(name)?;
    let dir = config_dir(store, name);
    if !dir.is_dir() {
        return Err(MachineError::NoConfig(name.to_string()));
    }
    Ok(Bundle::load(&dir)?)
}

use crate::fsutil::remove_tree;

/// Swap the completed `tmp` directory in as `dest`; the old `dest` (if any) becomes `prev`.
fn swap_in(tmp: &Path, dest: &Path, prev: &Path) -> Result<(), FsError> {
    if !dest.exists() {
        return crate::fsutil::rename_dir_into_place(tmp, dest);
    }
    use nix::fcntl::{renameat2, RenameFlags};
    match renameat2(None, tmp, None, dest, RenameFlags::RENAME_EXCHANGE) {
        Ok(()) => {
            // `tmp` now holds the old configuration.
            remove_tree(prev)?;
            crate::fsutil::rename_dir_into_place(tmp, prev)
        }
        Err(_) => {
            // No RENAME_EXCHANGE on this filesystem: two renames (a crash in between leaves
            // config.prev and the new tree under its temporary name; import again).
            remove_tree(prev)?;
            std::fs::rename(dest, prev).at("rename", dest)?;
            crate::fsutil::rename_dir_into_place(tmp, dest)
        }
    }
}

/// The lock that serializes imports of machine `name`: `machines/.M.import.lock`, beside the
/// machine's directory (never one: machine names do not start with a dot) so that a failed first
/// import can remove that directory. It is not the machine's build lock: importing while the
/// build loop runs is allowed (the loop picks the change up through `needs-update`).
pub fn import_lock_path(store: &Store, name: &str) -> PathBuf {
    store.import_lock(name)
}

/// The temporary-name purpose of the directory an import unpacks into before swapping it in.
pub const CONFIG_TMP: &str = "config";

/// Remove what crashed imports of the machine in `mdir` left behind (caller holds the import
/// lock, or the store lock exclusively).
pub fn remove_import_leftovers(mdir: &MachineDir) -> Result<Vec<PathBuf>, FsError> {
    let removed = crate::fsutil::stale_temps(mdir.path(), Some(CONFIG_TMP))?;
    for p in &removed {
        remove_tree(p)?;
    }
    Ok(removed)
}

/// Import the bundle at `bundle` as machine `name`'s configuration (see the module
/// documentation). The bundle is fully validated before anything in the store changes; imports
/// of one machine wait for each other; a failed first import leaves no machine behind.
pub fn import(store: &Store, name: &str, bundle: &Path) -> Result<ImportReport, MachineError> {
    check_name(name)?;
    let new = Bundle::load(bundle)?;
    import_bundle(store, name, bundle, new)
}

/// What `machine import -` names standard input as, in messages and `import.json`.
pub const STDIN_LABEL: &str = "(standard input)";

/// As `import`, reading the bundle tar from `r` (standard input: `host export -o - | ssh
/// builder gbuild machine import - --name M`). The whole bundle is read and validated, within
/// the bundle caps, before the store changes.
pub fn import_reader(
    store: &Store,
    name: &str,
    r: impl std::io::Read,
) -> Result<ImportReport, MachineError> {
    check_name(name)?;
    let label = Path::new(STDIN_LABEL);
    let new = Bundle::from_tar(std::io::BufReader::new(r), label)?;
    import_bundle(store, name, label, new)
}

fn import_bundle(
    store: &Store,
    name: &str,
    bundle: &Path,
    new: Bundle,
) -> Result<ImportReport, MachineError> {
    let _import = crate::lock::Lock::acquire(&import_lock_path(store, name))?;
    // `gc` removes unpack directories of imports only while no import runs.
    let _store = crate::layer::StoreLock::shared(store)?;
    let mdir = store.machine(name);
    let existed = mdir.path().is_dir();
    std::fs::create_dir_all(mdir.path()).at("create directory", mdir.path())?;
    let r = import_locked(store, name, bundle, new, &mdir);
    if r.is_err() && !existed {
        // Best effort while reporting the import's own error; a leftover is an empty machine.
        crate::fsutil::remove_tree_or_warn(mdir.path());
    }
    r
}

fn import_locked(
    store: &Store,
    name: &str,
    bundle: &Path,
    new: Bundle,
    mdir: &MachineDir,
) -> Result<ImportReport, MachineError> {
    remove_import_leftovers(mdir)?;
    let config = config_dir(store, name);
    let prev = mdir.config_prev();
    // A previous configuration that no longer loads is replaced all the same (kept as
    // config.prev/); the report then has no list of changes but the builder is marked.
    let (old, old_broken) = if config.is_dir() {
        match Bundle::load(&config) {
            Ok(b) => (Some(b), None),
            Err(e) => (None, Some(e.to_string())),
        }
    } else {
        (None, None)
    };
    let tmp = mdir.temp(CONFIG_TMP);
    // On the error paths below, removal is best effort while the import's own error is
    // returned; a leftover has a temporary name the next import or gc removes.
    if let Err(e) = new.unpack(&tmp) {
        crate::fsutil::remove_tree_or_warn(&tmp);
        return Err(e.into());
    }
    if let Err(e) = swap_in(&tmp, &config, &prev) {
        crate::fsutil::remove_tree_or_warn(&tmp);
        return Err(e.into());
    }

    let changes = old.as_ref().map(|o| diff(o, &new));
    let previous_host = old
        .as_ref()
        .map(|o| o.manifest.host.clone())
        .filter(|h| *h != new.manifest.host);
    let mut needs_update = false;
    let broken_note = old_broken.map(|e| format!("previous configuration unreadable: {e}\n"));
    if broken_note.is_some() || changes.as_ref().is_some_and(|d| !d.is_empty()) {
        let path = mdir.needs_update();
        let mut reason = std::fs::read_to_string(&path).unwrap_or_default();
        reason.push_str(&format!(
            "configuration changed by import of {} (host {}) at {}:\n",
            bundle.display(),
            new.manifest.host,
            crate::time::utc(now())
        ));
        reason.push_str(broken_note.as_deref().unwrap_or(""));
        for x in changes.iter().flat_map(|d| &d.differences) {
            reason.push_str(&format!("{x}\n"));
        }
        crate::fsutil::atomic_write(&path, reason.as_bytes())?;
        needs_update = true;
    }
    let record = ImportRecord {
        imported: now(),
        source: bundle.display().to_string(),
        host: new.manifest.host.clone(),
        created: new.manifest.created,
    };
    let mut json = serde_json::to_vec_pretty(&record).expect("record serializes");
    json.write_all(b"\n").expect("vec write");
    crate::fsutil::atomic_write(&mdir.import_record(), &json)?;
    // Packages requested on demand that the host's world has now are no longer requests.
    let satisfied = super::requests::prune_locked(store, name)?;
    Ok(ImportReport {
        machine: name.to_string(),
        config,
        satisfied,
        changes,
        previous_host,
        needs_update,
        gate_notice: gate_notice(&new),
    })
}

/// Make the overlay directory `dir` (a tree with `etc/portage/**` and
/// `var/lib/portage/{world,world_sets}`, nothing else) machine `name`'s configuration, laid over
/// the stage3's own /etc/portage and world instead of replacing them (a host bundle replaces
/// them). The tree is captured and validated like a bundle before the store changes; the
/// previous configuration is kept as `config.prev/`. The builder picks the change up at its next
/// pass (the configuration's hash changed).
pub fn import_overlay(store: &Store, name: &str, dir: &Path) -> Result<ImportReport, MachineError> {
    check_name(name)?;
    if !dir.is_dir() {
        return Err(MachineError::Host(HostError::bundle(
            dir,
            "an overlay is a directory holding etc/portage and var/lib/portage/world",
        )));
    }
    for e in std::fs::read_dir(dir).at("read directory", dir)?.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n != "etc" && n != "var" {
            return Err(MachineError::Host(HostError::entry(
                dir,
                &n,
                "not part of a configuration overlay (only etc/portage/**, var/lib/portage/world, var/lib/portage/world_sets)",
            )));
        }
    }
    let captured = super::export_root(dir, &super::ExportOptions::config_dir())?;
    // Only the files matter here (a repository named in repos.conf is not in the directory).
    if let Some(s) = captured
        .manifest
        .skipped
        .iter()
        .find(|s| s.path.starts_with("etc/") || s.path.starts_with("var/"))
    {
        return Err(MachineError::Host(HostError::entry(
            dir, &s.path, &s.reason,
        )));
    }
    let mdir = store.machine(name);
    std::fs::create_dir_all(mdir.path()).at("create directory", mdir.path())?;
    let config = config_dir(store, name);
    let old = config
        .is_dir()
        .then(|| Bundle::load(&config).ok())
        .flatten();
    let tmp = mdir.temp(CONFIG_TMP);
    let r = captured.unpack(&tmp).and_then(|()| {
        let m = tmp.join(super::bundle::MANIFEST_NAME);
        std::fs::remove_file(&m).at("remove", &m)?;
        let marker = tmp.join(OVERLAY_MARKER);
        std::fs::write(&marker, b"").at("write", &marker)
    });
    if let Err(e) = r {
        crate::fsutil::remove_tree_or_warn(&tmp);
        return Err(e.into());
    }
    swap_in(&tmp, &config, &mdir.config_prev())?;
    let record = ImportRecord {
        imported: now(),
        source: dir.display().to_string(),
        host: String::new(),
        created: now(),
    };
    let mut json = serde_json::to_vec_pretty(&record).expect("record serializes");
    json.write_all(b"\n").expect("vec write");
    crate::fsutil::atomic_write(&mdir.import_record(), &json)?;
    Ok(ImportReport {
        machine: name.to_string(),
        config,
        changes: old.map(|o| diff(&o, &captured)),
        previous_host: None,
        needs_update: false,
        satisfied: Vec::new(),
        gate_notice: None,
    })
}

/// Every machine in the store with a configuration, by name.
pub fn list(store: &Store) -> Result<Vec<MachineInfo>, MachineError> {
    let dir = store.machines();
    let mut names: Vec<String> = match std::fs::read_dir(&dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| crate::store::valid_name(n))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(FsError::new("read directory", &dir, e).into()),
    };
    names.sort();
    let mut out = Vec::new();
    for name in names {
        let mdir = store.machine(&name);
        let record: Option<ImportRecord> = std::fs::read(mdir.import_record())
            .ok()
            .and_then(|d| serde_json::from_slice(&d).ok());
        let manifest: Option<super::Manifest> =
            std::fs::read(mdir.config().join(super::MANIFEST_NAME))
                .ok()
                .and_then(|d| serde_json::from_slice(&d).ok());
        let snapshot = manifest.as_ref().and_then(|m| {
            let b = Bundle::from_parts(m.clone(), Default::default());
            b.snapshot_date()
        });
        let update_pending = std::fs::read_to_string(mdir.needs_update())
            .ok()
            .map(|s| s.lines().next().unwrap_or("").to_string());
        out.push(MachineInfo {
            name,
            host: manifest
                .as_ref()
                .map(|m| m.host.clone())
                .or(record.as_ref().map(|r| r.host.clone())),
            imported: record.map(|r| r.imported),
            kernel: manifest.and_then(|m| m.kernel),
            snapshot,
            update_pending,
        });
    }
    Ok(out)
}
