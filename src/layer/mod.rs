//! Sealed, content-addressed filesystem layers and the images built from them
//! (docs/layers.md). A layer is a directory `layers/<sha256>/` whose name is the sha256 of its canonical
//! tarball (`pack`), with `layers/<sha256>.json` beside it. Layers are built under a temporary
//! name, synced, renamed into place, and never written again.
//!
//! Layers hold files owned by subordinate ids, so everything that reads or writes their content
//! runs inside a user namespace with the containers' id mapping (`ns`). On disk a layer is in
//! overlayfs form, ready to be a lower directory: a deletion is a character device 0/0 (which the
//! kernel lets unprivileged users create since Linux 5.8) and an opaque directory carries
//! `user.overlay.opaque=y`. The canonical tarball turns both into OCI whiteouts.

pub mod blob;
mod filepool;
pub mod gc;
pub mod image;
pub mod inside;
pub mod ns;
pub mod oci;
pub mod pack;
pub mod tarpath;
pub mod unpack;

use std::fs::File;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::fsutil::{FsError, IoContext};
use crate::store::Store;

/// Errors of layer, image and export operations; each names the file, entry or value at fault.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error("{archive}: entry {entry}: {reason}")]
    Entry {
        archive: String,
        entry: String,
        reason: String,
    },
    #[error("{archive}: {source}")]
    Archive {
        archive: String,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Pack { path: PathBuf, reason: String },
    #[error("no layer {0} in the store")]
    NoLayer(String),
    #[error("layer {id} is damaged: its content hashes to {actual}")]
    Damaged { id: String, actual: String },
    #[error("no image {0} in the store (see `gbuild image list`)")]
    NoImage(String),
    #[error("invalid image name {0:?}: use NAME or GROUP/NAME of letters, digits, '-', '_', '.'")]
    BadImageName(String),
    #[error("{path}: {reason}")]
    Layout { path: PathBuf, reason: String },
    #[error("{what} {path}: digest mismatch: expected {expected}, got {actual}")]
    Digest {
        what: &'static str,
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("{path}: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    /// Waiting for the layer helper failed.
    #[error("layer helper: {0}")]
    HelperWait(std::io::Error),
    /// The helper answered something that is not the protocol's answer to the request.
    #[error("layer helper answer: {request} answered with {reply}")]
    HelperAnswer {
        request: &'static str,
        reply: String,
    },
    /// The helper ran the request and it failed there: its `LayerError`, rendered inside the
    /// namespace (so it names the path at fault) and carried across as text, the one form an
    /// error of another process takes.
    #[error("{0}")]
    HelperReported(String),
    /// The helper exited without an answer.
    #[error("layer helper failed ({status}){}", if output.is_empty() { String::new() } else { format!(": {output}") })]
    HelperExit {
        status: std::process::ExitStatus,
        output: String,
    },
    #[error("unpacker: {0}")]
    Unpacker(std::io::Error),
    #[error("decompression thread panicked")]
    DecompressorPanicked,
    #[error("{0} thread panicked")]
    Panicked(&'static str),
    #[error("invalid snapshot name {0:?}: use letters, digits, '-', '_', '.'")]
    BadSnapshotName(String),
    #[error(transparent)]
    Userns(#[from] crate::userns::UsernsError),
    #[error(transparent)]
    Lock(#[from] crate::lock::LockError),
}

pub type Result<T, E = LayerError> = std::result::Result<T, E>;

/// What `layers/<id>.json` records about a sealed layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerInfo {
    /// sha256 (hex) of the canonical uncompressed tarball: the OCI diff id.
    pub id: String,
    /// The layer below this one in the image it was made for, if any.
    pub parent: Option<String>,
    /// Where the content came from (tarball name, commit, restore).
    pub source: String,
    /// Bytes of regular-file content.
    pub size: u64,
    /// Entries of the canonical tarball.
    pub entries: u64,
    /// Seconds since the epoch when the layer was sealed.
    pub created: u64,
    /// Device nodes of the source archive that were skipped (not representable rootless).
    #[serde(default)]
    pub devices_skipped: u64,
}

/// Whether `s` looks like a layer id (64 lowercase hex digits).
pub fn is_layer_id(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `layers/<id>/`.
pub fn layer_dir(store: &Store, id: &str) -> PathBuf {
    store.layer(id)
}

/// `layers/<id>.json`.
pub fn layer_meta_path(store: &Store, id: &str) -> PathBuf {
    store.layer_meta(id)
}

/// The metadata of a sealed layer; `NoLayer` unless both the directory and the metadata exist.
pub fn layer_info(store: &Store, id: &str) -> Result<LayerInfo> {
    let meta = layer_meta_path(store, id);
    if !is_layer_id(id) || !layer_dir(store, id).is_dir() || !meta.is_file() {
        return Err(LayerError::NoLayer(id.to_string()));
    }
    read_json(&meta)
}

/// Every sealed layer (directory and metadata present), sorted by id. Temporary and half-made
/// layers are never listed.
pub fn list_layers(store: &Store) -> Result<Vec<LayerInfo>> {
    let dir = store.layers();
    let mut out = Vec::new();
    let rd = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(FsError::new("read directory", &dir, e).into()),
    };
    for ent in rd {
        let ent = ent.at("read directory", &dir)?;
        let name = ent.file_name().to_string_lossy().into_owned();
        if let Some(id) = name.strip_suffix(".json") {
            if is_layer_id(id) && layer_dir(store, id).is_dir() {
                out.push(read_json::<LayerInfo>(&ent.path())?);
            }
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let data = std::fs::read(path).at("read", path)?;
    serde_json::from_slice(&data).map_err(|source| LayerError::Json {
        path: path.to_path_buf(),
        source,
    })
}

pub(crate) fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let mut data = serde_json::to_vec_pretty(value).expect("serialisable");
    data.push(b'\n');
    crate::fsutil::atomic_write(path, &data)?;
    Ok(())
}

pub(crate) use crate::time::now as now_secs;

/// The temporary-name purpose of layer work directories under the store's `tmp/`; `gc` removes
/// leftovers.
pub const TEMP_PURPOSE: &str = "layer";

/// A fresh, empty work directory under `tmp/` (same filesystem as `layers/`).
pub fn temp_dir(store: &Store, what: &str) -> Result<PathBuf> {
    let base = store.tmp();
    std::fs::create_dir_all(&base).at("create directory", &base)?;
    let p = crate::fsutil::temp_path(&base, &format!("{TEMP_PURPOSE}-{what}"));
    std::fs::create_dir(&p).at("create directory", &p)?;
    Ok(p)
}

/// Make everything written under `dir` durable (one `syncfs` of its filesystem).
pub fn sync_tree(dir: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    let f = File::open(dir).at("open", dir)?;
    nix::unistd::syncfs(f.as_raw_fd())
        .map_err(|e| FsError::new("syncfs", dir, std::io::Error::from(e)))?;
    Ok(())
}

/// Seal a finished layer: sync it, rename `tmp` to `layers/<id>/`, write the metadata, and make
/// the layer root read-only. When the layer already exists (same content), `tmp` is removed and
/// the existing layer kept. Returns the recorded metadata.
pub fn publish(store: &Store, tmp: &Path, info: LayerInfo) -> Result<LayerInfo> {
    publish_synced(store, tmp, info, false)
}

/// `publish` for a work dir the caller has already synced (`synced`), e.g. with one `syncfs`
/// for several layers.
pub fn publish_synced(
    store: &Store,
    tmp: &Path,
    info: LayerInfo,
    synced: bool,
) -> Result<LayerInfo> {
    use std::os::unix::fs::PermissionsExt;
    let dest = layer_dir(store, &info.id);
    let meta = layer_meta_path(store, &info.id);
    if dest.is_dir() {
        remove_tree(tmp)?;
        if let Ok(existing) = read_json::<LayerInfo>(&meta) {
            return Ok(existing);
        }
    } else {
        if !synced {
            sync_tree(tmp)?;
        }
        if let Err(e) = crate::fsutil::rename_dir_into_place(tmp, &dest) {
            if !dest.is_dir() {
                return Err(e.into());
            }
            // Another process sealed the same content meanwhile.
            remove_tree(tmp)?;
        }
    }
    write_json(&meta, &info)?;
    if let Err(e) = std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o555)) {
        // Sealed by its name and metadata; the mode only guards against accidents.
        tracing::warn!("{}: chmod 555: {e}", dest.display());
    }
    Ok(info)
}

pub use crate::fsutil::remove_tree;

/// Remove everything inside `dir`, keeping `dir` itself (an overlay upper dir after a commit).
pub fn empty_dir(dir: &Path) -> Result<()> {
    for ent in std::fs::read_dir(dir).at("read directory", dir)? {
        let ent = ent.at("read directory", dir)?;
        remove_tree(&ent.path())?;
    }
    Ok(())
}

/// Empty `dir` at once and leave freeing what it held for later: its entries are moved into a
/// temporary directory of the store, one rename each, and that directory is returned for the
/// caller to remove when time allows (removing a tree costs a journal update per name, tens of
/// milliseconds for a few hundred). A temporary directory whose process died is removed by
/// `gc`, so a crash leaves nothing behind. On another filesystem than the store the entries
/// are removed in place and `None` is returned.
pub fn empty_dir_deferred(store: &Store, dir: &Path) -> Result<Option<PathBuf>> {
    use std::os::unix::fs::MetadataExt;
    let trash = temp_dir(store, "trash")?;
    let dev = |p: &Path| std::fs::metadata(p).map(|m| m.dev()).at("stat", p);
    if dev(&trash)? != dev(dir)? {
        remove_tree(&trash)?;
        empty_dir(dir)?;
        return Ok(None);
    }
    for ent in std::fs::read_dir(dir).at("read directory", dir)? {
        let ent = ent.at("read directory", dir)?;
        let from = ent.path();
        // A mount point inside, or another filesystem below: removed in place.
        if std::fs::rename(&from, trash.join(ent.file_name())).is_err() {
            remove_tree(&from)?;
        }
    }
    Ok(Some(trash))
}

/// Store-wide lock of layer operations: creators share it, `gc` takes it alone, so a collection
/// never removes a layer that is being made but not yet referenced by an image.
pub struct StoreLock {
    _lock: crate::lock::RwLock,
}

impl StoreLock {
    fn take(store: &Store, exclusive: bool) -> Result<StoreLock> {
        let path = store.store_lock();
        let lock = if exclusive {
            crate::lock::RwLock::exclusive(&path)?
        } else {
            crate::lock::RwLock::shared(&path)?
        };
        Ok(StoreLock { _lock: lock })
    }
    /// Held while creating layers and the images that reference them.
    pub fn shared(store: &Store) -> Result<StoreLock> {
        Self::take(store, false)
    }
    /// Held by `gc` (waits for running layer operations to finish).
    pub fn exclusive(store: &Store) -> Result<StoreLock> {
        Self::take(store, true)
    }
}

/// Hex sha256 of everything written through it; forwards to `inner`.
pub struct HashWriter<W> {
    pub inner: W,
    pub hasher: sha2::Sha256,
    pub count: u64,
}

impl<W: std::io::Write> HashWriter<W> {
    pub fn new(inner: W) -> Self {
        use sha2::Digest;
        HashWriter {
            inner,
            hasher: sha2::Sha256::new(),
            count: 0,
        }
    }
    /// (hex digest, bytes, inner writer).
    pub fn finish(self) -> (String, u64, W) {
        use sha2::Digest;
        (hex::encode(self.hasher.finalize()), self.count, self.inner)
    }
}

impl<W: std::io::Write> std::io::Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        use sha2::Digest;
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
