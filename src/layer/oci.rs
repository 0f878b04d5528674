//! Snapshots as OCI image layouts (docs/layers.md): `oci-layout`, `index.json` and
//! `blobs/sha256/`, with one compressed blob per layer, a config whose `rootfs.diff_ids` are the
//! layer ids, and a manifest. Other tools (skopeo, podman) read the same directory.
//!
//! Same content gives byte-identical blobs: the canonical tarball is deterministic, the config
//! and manifest carry no timestamps, and compression is deterministic too. zstd (level 3 by
//! default) always runs in its multithreaded mode (`nbWorkers >= 1`), whose output depends on the
//! level and parameters but not on the number of workers; gzip (`--compression gzip`, for older
//! tools) writes a header without name or time.
//!
//! Restore checks every digest (manifest and config before anything else; each compressed blob's
//! size first, its sha256 in the same read that decompresses and unpacks it, and the uncompressed
//! tarball against its diff id) and publishes the layers only when all of them unpacked and
//! verified; the image is written last.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::Digest;

pub use super::blob::{BlobInfo, Compression, MT_LAYER};
use super::image::{self, Image};
use super::ns::{BlobToUnpack, Helper};
use super::{is_layer_id, layer_dir, layer_info, HashWriter, LayerError, Result};
use crate::fsutil::{FileStamp, FsError, IoContext};
use crate::progress::Progress;
use crate::store::Store;

pub const MT_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MT_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MT_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// zstd level used for layer blobs.
pub const ZSTD_LEVEL: i32 = 3;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType")]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub annotations: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Index {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(rename = "mediaType", default)]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(rename = "mediaType", default)]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type")]
    pub kind: String,
    pub diff_ids: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    pub architecture: String,
    pub os: String,
    #[serde(default)]
    pub config: serde_json::Value,
    pub rootfs: RootFs,
}

enum Encoder<W: Write> {
    Zstd(zstd::stream::write::Encoder<'static, W>),
    Gzip(flate2::write::GzEncoder<W>),
}

impl<W: Write> Encoder<W> {
    fn new(w: W, c: Compression) -> std::io::Result<Self> {
        Ok(match c {
            Compression::Zstd => {
                let mut e = zstd::stream::write::Encoder::new(w, ZSTD_LEVEL)?;
                let n = std::thread::available_parallelism()
                    .map(|n| n.get() as u32)
                    .unwrap_or(1);
                e.multithread(n.max(1))?;
                Encoder::Zstd(e)
            }
            Compression::Gzip => Encoder::Gzip(
                flate2::GzBuilder::new()
                    .operating_system(255)
                    .write(w, flate2::Compression::default()),
            ),
        })
    }
    fn finish(self) -> std::io::Result<W> {
        match self {
            Encoder::Zstd(e) => e.finish(),
            Encoder::Gzip(e) => e.finish(),
        }
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Encoder::Zstd(e) => e.write(buf),
            Encoder::Gzip(e) => e.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Encoder::Zstd(e) => e.flush(),
            Encoder::Gzip(e) => e.flush(),
        }
    }
}

/// Version of the blob encoding beyond the codec and level (job size, header fields, ...): part
/// of the blob cache's key, bumped whenever the same layer would be written to other bytes.
const BLOB_FORMAT: u32 = 1;

/// The key of blobs written with `c` in the blob cache: codec, level, format and library
/// version, so that a cached blob is always the one this build would write.
fn encoding(c: Compression) -> String {
    match c {
        Compression::Zstd => format!(
            "zstd{ZSTD_LEVEL}-f{BLOB_FORMAT}-{}",
            zstd::zstd_safe::version_number()
        ),
        Compression::Gzip => format!("gzip6-f{BLOB_FORMAT}-{}", env!("CARGO_PKG_VERSION")),
    }
}

/// Write the compressed canonical tarball of layer `id` as `blob_dir/<digest>`. A blob of the
/// same layer and encoding from an earlier snapshot is reused (see [`cached_blob`]); otherwise the
/// layer is packed, its content checked to still hash to the id, and the new blob kept in the
/// store's blob cache. Runs inside the namespace.
pub fn pack_blob(
    store: &Store,
    id: &str,
    blob_dir: &Path,
    compression: Compression,
    progress: Option<&Progress>,
) -> Result<BlobInfo> {
    let info = layer_info(store, id)?;
    if let Some(b) = reuse_cached(store, id, blob_dir, compression)? {
        if let Some(p) = progress {
            p.inc(info.size);
        }
        return Ok(b);
    }
    let b = pack_new_blob(store, id, blob_dir, compression, progress)?;
    keep_in_cache(store, &b, &blob_dir.join(&b.digest), compression)?;
    Ok(b)
}

/// The cached blob of layer `id` in `compression`, placed in `blob_dir` (linked, or copied across
/// filesystems) once it checks out against its record; `None` when there is none. Blob cache and
/// layout belong to the caller, so this needs no namespace: a snapshot whose layers all have a
/// cached blob starts no helper.
pub fn cached_blob(
    store: &Store,
    id: &str,
    blob_dir: &Path,
    compression: Compression,
) -> Result<Option<BlobInfo>> {
    layer_info(store, id)?;
    reuse_cached(store, id, blob_dir, compression)
}

fn pack_new_blob(
    store: &Store,
    id: &str,
    blob_dir: &Path,
    compression: Compression,
    progress: Option<&Progress>,
) -> Result<BlobInfo> {
    let dir = layer_dir(store, id);
    let w = BlobWriter::create(blob_dir, id, compression)?;
    let tmp = w.path().to_path_buf();
    // The packer writes many small headers: hand the hasher and encoder large pieces.
    let mut plain = super::pack::SinkBuf::new(1 << 20, w);
    let done = super::pack::pack_dir(&dir, &mut plain, progress).and_then(|_| {
        let w = plain
            .into_inner()
            .map_err(|e| FsError::new("write", &tmp, e))?;
        let w = w.finish()?;
        let actual = w.diff_id.clone().unwrap_or_default();
        if actual != id {
            return Err(LayerError::Damaged {
                id: id.to_string(),
                actual,
            });
        }
        let dest = blob_dir.join(&w.digest);
        std::fs::rename(&w.path, &dest).at("rename into place", &dest)?;
        Ok(w.info(actual))
    });
    if done.is_err() {
        // Best effort beside the step's own error; gc removes a temporary-named leftover.
        let _ = std::fs::remove_file(&tmp);
    }
    done
}

/// A layer blob being written: the canonical tarball goes in, compressed, to a file under a
/// temporary name; `finish` makes it read-only and durable and tells its digests. The caller
/// renames the file into place (or removes it on failure).
pub struct BlobWriter {
    tmp: PathBuf,
    compression: Compression,
    /// The tarball's own sha256 (the diff id), unless the caller hashes the same stream.
    plain: Option<sha2::Sha256>,
    enc: Encoder<HashWriter<BufWriter<Writeback>>>,
}

/// The blob file, whose written bytes are handed to the disk every `WRITEBACK_EVERY` while the
/// compressor still works: without it the final fsync writes the whole blob at once (the
/// kernel's own writeback waits for far more dirty memory than one blob), after everything else.
struct Writeback {
    f: File,
    written: u64,
    started: u64,
}

/// Bytes of a blob written between two writeback starts.
const WRITEBACK_EVERY: u64 = 8 << 20;

impl Write for Writeback {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.f.write(buf)?;
        self.written += n as u64;
        if self.written - self.started >= WRITEBACK_EVERY {
            // Only a head start: the fsync in `finish` makes the blob durable and reports errors.
            let _ = crate::sys::start_writeback(&self.f, self.started, self.written - self.started);
            self.started = self.written;
        }
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.f.flush()
    }
}

/// A blob written and synced by a [`BlobWriter`], still under its temporary name.
pub struct WrittenBlob {
    pub path: PathBuf,
    pub digest: String,
    pub size: u64,
    /// The sha256 of the tarball, when the writer hashed it.
    pub diff_id: Option<String>,
    media_type: String,
}

impl WrittenBlob {
    /// The blob's record as the blob of layer `diff_id`.
    pub fn info(&self, diff_id: String) -> BlobInfo {
        BlobInfo {
            diff_id,
            digest: self.digest.clone(),
            size: self.size,
            media_type: self.media_type.clone(),
        }
    }
}

impl BlobWriter {
    /// A new blob file in `dir`, named as a temporary of `purpose`; the tarball is hashed too.
    pub fn create(dir: &Path, purpose: &str, compression: Compression) -> Result<Self> {
        let mut w = Self::of_hashed_stream(dir, purpose, compression)?;
        w.plain = Some(sha2::Sha256::new());
        Ok(w)
    }

    /// The same for a caller that hashes the tarball itself (one sha256 of the stream, not two).
    pub fn of_hashed_stream(dir: &Path, purpose: &str, compression: Compression) -> Result<Self> {
        let tmp = crate::fsutil::temp_path(dir, purpose);
        let f = File::create(&tmp).at("create", &tmp)?;
        let f = Writeback {
            f,
            written: 0,
            started: 0,
        };
        let compressed = HashWriter::new(BufWriter::with_capacity(1 << 20, f));
        let enc = Encoder::new(compressed, compression).at("write", &tmp)?;
        Ok(BlobWriter {
            tmp,
            compression,
            plain: None,
            enc,
        })
    }

    /// The file being written.
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// End the compressed stream, make the file read-only and sync it.
    pub fn finish(self) -> Result<WrittenBlob> {
        use std::os::unix::fs::PermissionsExt;
        let tmp = self.tmp;
        let io = |e: std::io::Error| FsError::new("write", &tmp, e);
        let compressed = self.enc.finish().map_err(io)?;
        let (digest, size, bw) = compressed.finish();
        let f = bw.into_inner().map_err(|e| io(e.into_error()))?.f;
        // Blobs are content-addressed: never written again (the cache shares the file).
        f.set_permissions(std::fs::Permissions::from_mode(0o444))
            .map_err(io)?;
        f.sync_all().map_err(io)?;
        Ok(WrittenBlob {
            path: tmp,
            digest,
            size,
            diff_id: self.plain.map(|h| hex::encode(h.finalize())),
            media_type: self.compression.media_type(),
        })
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.enc.write(buf)?;
        if let Some(h) = &mut self.plain {
            h.update(&buf[..n]);
        }
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.enc.flush()
    }
}

/// The blob `b` of layer `b.diff_id`, written and synced by a [`BlobWriter`] as `tmp` in the
/// blob cache's directory, becomes the cached blob of that layer: renamed to its digest, then
/// the record that names it. A snapshot that follows links it instead of packing the layer.
pub fn cache_new_blob(
    store: &Store,
    b: &BlobInfo,
    tmp: &Path,
    compression: Compression,
) -> Result<()> {
    let cached = store.cached_blob(&b.digest);
    std::fs::rename(tmp, &cached).at("rename into place", &cached)?;
    crate::fsutil::fsync_dir(&store.cached_blobs())?;
    write_record(store, b, FileStamp::of(&cached)?, compression)
}

/// sha256 (hex) and length of a file.
fn hash_file(path: &Path) -> Result<(String, u64)> {
    let mut f = File::open(path).at("open", path)?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf).at("read", path)?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((hex::encode(h.finalize()), n))
}

/// `dest` becomes the same file as `src` (a hardlink), or a synced copy under a temporary name
/// renamed into place when they are on different filesystems.
fn link_or_copy(src: &Path, dest: &Path) -> Result<()> {
    match std::fs::hard_link(src, dest) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            let tmp = crate::fsutil::temp_sibling(dest);
            let r = (|| {
                std::fs::copy(src, &tmp).at("copy to", &tmp)?;
                File::open(&tmp)
                    .and_then(|f| f.sync_all())
                    .at("fsync", &tmp)?;
                std::fs::rename(&tmp, dest).at("rename into place", dest)?;
                Ok(())
            })();
            if r.is_err() {
                // Best effort beside the step's own error; gc removes a temporary-named leftover.
                let _ = std::fs::remove_file(&tmp);
            }
            r
        }
        Err(e) => Err(FsError::new("link", dest, e).into()),
    }
}

/// A blob cache record, `blobs/<layer id>.<encoding>.json`: the blob, and the stamp of the cached
/// file when its sha256 was last known to be the record's (written, or checked in full). Records
/// without a stamp (older gbuild) are checked in full once, then stamped.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CacheRecord {
    #[serde(flatten)]
    blob: BlobInfo,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    verified: Option<FileStamp>,
}

fn write_record(store: &Store, b: &BlobInfo, stamp: FileStamp, c: Compression) -> Result<()> {
    let record = CacheRecord {
        blob: b.clone(),
        verified: Some(stamp),
    };
    super::write_json(&store.cached_blob_record(&b.diff_id, &encoding(c)), &record)
}

/// The cached blob of layer `id` in `compression`, placed in `blob_dir` once it is the record's;
/// `None` when there is none. The blob's sha256 is not read again while the cached file still has
/// the stamp recorded when its digest was last established; any other file (another inode, size
/// or mtime) is hashed in full, and stamped again when it checks out. A record or blob that does
/// not check out is dropped (and the blob written anew).
fn reuse_cached(
    store: &Store,
    id: &str,
    blob_dir: &Path,
    compression: Compression,
) -> Result<Option<BlobInfo>> {
    let record = store.cached_blob_record(id, &encoding(compression));
    let Ok(CacheRecord {
        blob: info,
        verified,
    }) = super::read_json::<CacheRecord>(&record)
    else {
        return Ok(None);
    };
    let drop_entry = |info: &BlobInfo| {
        // Best effort: a stale entry is overwritten by the next write anyway.
        let _ = std::fs::remove_file(&record);
        if is_layer_id(&info.digest) {
            // Best effort too: an orphaned blob goes with the next `gc`.
            let _ = std::fs::remove_file(store.cached_blob(&info.digest));
        }
    };
    if info.diff_id != id
        || info.media_type != compression.media_type()
        || !is_layer_id(&info.digest)
    {
        drop_entry(&info);
        return Ok(None);
    }
    let cached = store.cached_blob(&info.digest);
    let Ok(stamp) = FileStamp::of(&cached) else {
        drop_entry(&info);
        return Ok(None);
    };
    let dest = blob_dir.join(&info.digest);
    if verified == Some(stamp) && stamp.size == info.size {
        link_or_copy(&cached, &dest)?;
        return Ok(Some(info));
    }
    // Stamped before the read: a change while hashing gives another stamp next time.
    if hash_file(&cached)? != (info.digest.clone(), info.size) {
        drop_entry(&info);
        return Ok(None);
    }
    write_record(store, &info, stamp, compression)?;
    link_or_copy(&cached, &dest)?;
    Ok(Some(info))
}

/// Keep the blob `blob` (just written, synced) in the blob cache: the file first, then the
/// record that names it, stamped with the file as written.
fn keep_in_cache(store: &Store, b: &BlobInfo, blob: &Path, compression: Compression) -> Result<()> {
    let cached = store.cached_blob(&b.digest);
    let dir = store.cached_blobs();
    if !cached.is_file() {
        std::fs::create_dir_all(&dir).at("create directory", &dir)?;
        link_or_copy(blob, &cached)?;
        crate::fsutil::fsync_dir(&dir)?;
    }
    let stamp = FileStamp::of(&cached)?;
    let (digest, size) = if stamp == FileStamp::of(blob)? {
        // The file just written and hashed on the way.
        (b.digest.clone(), b.size)
    } else {
        // A cached file from before (or a copy): its digest is established by reading it.
        hash_file(&cached)?
    };
    if (digest.as_str(), size) != (b.digest.as_str(), b.size) {
        // Another file under this digest's name: it goes, and the next snapshot caches anew.
        std::fs::remove_file(&cached).at("remove", &cached)?;
        return Ok(());
    }
    write_record(store, b, stamp, compression)
}

/// Drop blob cache entries of layers no longer in the store (`removed`, or missing), then the
/// cached blobs no record names. Blobs belong to the caller: no namespace needed.
pub fn prune_blob_cache(store: &Store, removed: &std::collections::BTreeSet<String>) -> Result<()> {
    let root = store.blob_cache();
    let rd = match std::fs::read_dir(&root) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(FsError::new("read directory", &root, e).into()),
    };
    let mut named = std::collections::BTreeSet::new();
    for e in rd {
        let e = e.at("read directory", &root)?;
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(stem) = name.strip_suffix(".json") else {
            continue;
        };
        let id = stem.split('.').next().unwrap_or_default();
        let keep = is_layer_id(id) && !removed.contains(id) && layer_info(store, id).is_ok();
        match super::read_json::<BlobInfo>(&e.path()) {
            Ok(b) if keep => {
                named.insert(b.digest);
            }
            _ => std::fs::remove_file(e.path()).at("remove", &e.path())?,
        }
    }
    let blobs = store.cached_blobs();
    if let Ok(rd) = std::fs::read_dir(&blobs) {
        for e in rd {
            let e = e.at("read directory", &blobs)?;
            let name = e.file_name().to_string_lossy().into_owned();
            if is_layer_id(&name) && !named.contains(&name) {
                std::fs::remove_file(e.path()).at("remove", &e.path())?;
            }
        }
    }
    Ok(())
}

/// What an export wrote.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExportResult {
    pub dir: PathBuf,
    pub manifest_digest: String,
    pub blobs: Vec<BlobInfo>,
}

/// Write `data` as `path` in the layout being built (a temporary directory nobody else reads, so
/// no temporary name of its own); the file is synced with the others before the layout is
/// renamed into place. Returns the path.
fn write_file(path: PathBuf, data: &[u8]) -> Result<PathBuf> {
    std::fs::write(&path, data).at("write", &path)?;
    Ok(path)
}

fn write_blob(blob_dir: &Path, data: &[u8]) -> Result<(String, PathBuf)> {
    let digest = hex::encode(sha2::Sha256::digest(data));
    let path = write_file(blob_dir.join(&digest), data)?;
    Ok((digest, path))
}

/// fsync `files`, then the directories that name them: after all the writes, so that the first
/// fsync's journal commit carries the others (with ext4's ordered data, one commit).
fn sync_all(files: &[PathBuf], dirs: &[&Path]) -> Result<()> {
    for f in files {
        File::open(f).and_then(|f| f.sync_all()).at("fsync", f)?;
    }
    for d in dirs {
        crate::fsutil::fsync_dir(d)?;
    }
    Ok(())
}

/// The default snapshot directory of an image: `exports/<name>`.
pub fn default_export_dir(store: &Store, name: &str) -> PathBuf {
    store.export(name)
}

/// Export image `name` as an OCI image layout at `out` (must not exist or be empty). The layout
/// is written beside `out` under a temporary name and renamed into place when complete.
pub fn export(
    store: &Store,
    helper: &Helper,
    name: &str,
    out: &Path,
    compression: Compression,
) -> Result<ExportResult> {
    let img = image::load(store, name)?;
    if out.exists() {
        let empty = std::fs::read_dir(out)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
        if !empty {
            return Err(LayerError::Layout {
                path: out.to_path_buf(),
                reason: "exists and is not an empty directory".into(),
            });
        }
    }
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).at("create directory", parent)?;
    // Held while the work directory exists, so that `gc` leaves it alone.
    let _lock = super::StoreLock::shared(store)?;
    let tmp = crate::fsutil::temp_sibling(out);
    let blob_dir = tmp.join("blobs/sha256");
    std::fs::create_dir_all(&blob_dir).at("create directory", &blob_dir)?;
    let r = (|| {
        // Cached blobs are linked from here; only the layers without one are packed, by the
        // helper (layer files belong to subordinate ids).
        let mut blobs = Vec::with_capacity(img.layers.len());
        let mut missing = Vec::new();
        for id in &img.layers {
            let b = cached_blob(store, id, &blob_dir, compression)?;
            if b.is_none() {
                missing.push(id.clone());
            }
            blobs.push(b);
        }
        let mut packed = if missing.is_empty() {
            Vec::new()
        } else {
            helper.pack_blobs(&missing, &blob_dir, compression)?
        }
        .into_iter();
        let blobs = blobs
            .into_iter()
            .map(|b| b.or_else(|| packed.next()))
            .collect::<Option<Vec<BlobInfo>>>()
            .ok_or_else(|| LayerError::HelperAnswer {
                request: "pack-blobs",
                reply: format!("fewer blobs than the {} layers asked for", missing.len()),
            })?;
        let config = Config {
            architecture: img.architecture.clone(),
            os: "linux".into(),
            config: serde_json::json!({}),
            rootfs: RootFs {
                kind: "layers".into(),
                diff_ids: blobs
                    .iter()
                    .map(|b| format!("sha256:{}", b.diff_id))
                    .collect(),
            },
        };
        let config_json = serde_json::to_vec(&config).expect("serialisable");
        let (config_digest, config_file) = write_blob(&blob_dir, &config_json)?;
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(MT_MANIFEST.into()),
            config: Descriptor {
                media_type: MT_CONFIG.into(),
                digest: format!("sha256:{config_digest}"),
                size: config_json.len() as u64,
                annotations: Default::default(),
            },
            layers: blobs
                .iter()
                .map(|b| Descriptor {
                    media_type: b.media_type.clone(),
                    digest: format!("sha256:{}", b.digest),
                    size: b.size,
                    annotations: Default::default(),
                })
                .collect(),
        };
        let manifest_json = serde_json::to_vec(&manifest).expect("serialisable");
        let (manifest_digest, manifest_file) = write_blob(&blob_dir, &manifest_json)?;
        let index = Index {
            schema_version: 2,
            media_type: Some(MT_INDEX.into()),
            manifests: vec![Descriptor {
                media_type: MT_MANIFEST.into(),
                digest: format!("sha256:{manifest_digest}"),
                size: manifest_json.len() as u64,
                annotations: [(REF_NAME.to_string(), name.to_string())].into(),
            }],
        };
        let mut index_json = serde_json::to_vec(&index).expect("serialisable");
        index_json.push(b'\n');
        let index_file = write_file(tmp.join("index.json"), &index_json)?;
        let layout_file = write_file(
            tmp.join("oci-layout"),
            b"{\"imageLayoutVersion\":\"1.0.0\"}\n",
        )?;
        // Layer blobs were synced when written (a cached one long ago).
        sync_all(
            &[config_file, manifest_file, index_file, layout_file],
            &[&blob_dir, &tmp.join("blobs"), &tmp],
        )?;
        if out.exists() {
            std::fs::remove_dir(out).at("remove", out)?;
        }
        crate::fsutil::rename_dir_into_place(&tmp, out)?;
        Ok(ExportResult {
            dir: out.to_path_buf(),
            manifest_digest: format!("sha256:{manifest_digest}"),
            blobs,
        })
    })();
    if r.is_err() {
        // Best effort beside the step's own error; gc removes a temporary-named leftover.
        let _ = std::fs::remove_dir_all(&tmp);
    }
    r
}

fn layout_err(path: &Path, reason: impl Into<String>) -> LayerError {
    LayerError::Layout {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// `sha256:<hex>` -> hex, refusing anything else (a digest becomes a file name).
fn digest_hex(d: &str, path: &Path) -> Result<String> {
    match d.strip_prefix("sha256:") {
        Some(h) if is_layer_id(h) => Ok(h.to_string()),
        _ => Err(layout_err(
            path,
            format!("unsupported or malformed digest {d:?}"),
        )),
    }
}

/// Path of a (JSON) blob, after checking its size and sha256 (streamed).
fn verified_blob(dir: &Path, d: &Descriptor) -> Result<PathBuf> {
    let hex = digest_hex(&d.digest, &dir.join("index.json"))?;
    let path = dir.join("blobs/sha256").join(&hex);
    let (actual, n) = hash_file(&path)?;
    if actual != hex {
        return Err(LayerError::Digest {
            what: "blob",
            path,
            expected: d.digest.clone(),
            actual: format!("sha256:{actual}"),
        });
    }
    if n != d.size {
        return Err(layout_err(
            &path,
            format!("size {n} differs from the descriptor's {}", d.size),
        ));
    }
    Ok(path)
}

fn read_verified<T: serde::de::DeserializeOwned>(dir: &Path, d: &Descriptor) -> Result<T> {
    let path = verified_blob(dir, d)?;
    super::read_json(&path)
}

/// The manifest of image `name` in the layout `dir` (or its only manifest), with the image name.
fn select_manifest(dir: &Path, name: Option<&str>) -> Result<(Descriptor, Option<String>)> {
    let layout = dir.join("oci-layout");
    let v: serde_json::Value = super::read_json(&layout)?;
    if v.get("imageLayoutVersion").and_then(|x| x.as_str()) != Some("1.0.0") {
        return Err(layout_err(&layout, "not an OCI image layout 1.0.0"));
    }
    let index_path = dir.join("index.json");
    let index: Index = super::read_json(&index_path)?;
    let found: Vec<&Descriptor> = index
        .manifests
        .iter()
        .filter(|m| match name {
            Some(n) => m.annotations.get(REF_NAME).map(String::as_str) == Some(n),
            None => true,
        })
        .collect();
    match (found.as_slice(), name) {
        ([one], _) => Ok(((*one).clone(), one.annotations.get(REF_NAME).cloned())),
        ([], Some(n)) if index.manifests.len() == 1 => {
            Ok((index.manifests[0].clone(), Some(n.to_string())))
        }
        ([], _) => Err(layout_err(&index_path, "no matching manifest")),
        _ => Err(layout_err(
            &index_path,
            "several manifests: choose one with --image NAME",
        )),
    }
}

/// Layer ids referenced by the layout at `dir` (for `gc`); unreadable layouts give none.
pub fn layout_diff_ids(dir: &Path) -> Vec<String> {
    let Ok(index) = super::read_json::<Index>(&dir.join("index.json")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for m in index.manifests {
        let Ok(man) = read_verified::<Manifest>(dir, &m) else {
            continue;
        };
        let Ok(cfg) = read_verified::<Config>(dir, &man.config) else {
            continue;
        };
        out.extend(
            cfg.rootfs
                .diff_ids
                .iter()
                .filter_map(|d| d.strip_prefix("sha256:").map(str::to_string)),
        );
    }
    out
}

/// Restore an image from the OCI layout `dir`: verify, unpack every layer (inside the
/// namespace), and write `images/<name>.json`. `name` picks the manifest by its ref name and
/// names the image; without it the layout must hold one manifest with a ref name.
pub fn import(store: &Store, helper: &Helper, dir: &Path, name: Option<&str>) -> Result<Image> {
    let (mdesc, ref_name) = select_manifest(dir, name)?;
    let image_name = name.map(str::to_string).or(ref_name).ok_or_else(|| {
        layout_err(
            &dir.join("index.json"),
            "manifest has no image name: use --image NAME",
        )
    })?;
    image::image_path(store, &image_name)?;
    let manifest: Manifest = read_verified(dir, &mdesc)?;
    let config: Config = read_verified(dir, &manifest.config)?;
    if manifest.layers.len() != config.rootfs.diff_ids.len() {
        return Err(layout_err(
            &dir.join("blobs/sha256")
                .join(digest_hex(&manifest.config.digest, dir)?),
            "config lists a different number of layers than the manifest",
        ));
    }
    // Each blob's digest is checked in the read that unpacks it (inside the helper); its size
    // is checked here first, so a truncated or overlong blob is refused before any work.
    let mut blobs = Vec::new();
    for (l, diff) in manifest.layers.iter().zip(&config.rootfs.diff_ids) {
        if !l.media_type.starts_with(MT_LAYER) {
            return Err(layout_err(
                dir,
                format!("unsupported layer type {}", l.media_type),
            ));
        }
        let digest = digest_hex(&l.digest, &dir.join("index.json"))?;
        let path = dir.join("blobs/sha256").join(&digest);
        let len = std::fs::metadata(&path).at("stat", &path)?.len();
        if len != l.size {
            return Err(layout_err(
                &path,
                format!("size {len} differs from the descriptor's {}", l.size),
            ));
        }
        blobs.push(BlobToUnpack {
            path,
            digest,
            size: l.size,
            diff_id: digest_hex(diff, dir)?,
        });
    }
    let _lock = super::StoreLock::shared(store)?;
    let infos = helper.unpack_blobs(blobs, &format!("restore of {}", dir.display()))?;
    let img = Image {
        name: image_name,
        layers: infos.into_iter().map(|i| i.id).collect(),
        made_by: format!("restore {}", dir.display()),
        architecture: config.architecture,
        created: super::now_secs(),
    };
    image::save(store, &img)?;
    Ok(img)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blob_file_goes_to_the_disk_as_it_grows_and_keeps_every_byte() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("blob");
        let mut w = Writeback {
            f: File::create(&p).unwrap(),
            written: 0,
            started: 0,
        };
        let len = WRITEBACK_EVERY * 2 + 12_345;
        let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        for c in data.chunks((1 << 20) + 17) {
            w.write_all(c).unwrap();
        }
        assert_eq!(w.written, len);
        // Two writebacks were started, each from where the last one ended.
        assert!(w.started > 2 * WRITEBACK_EVERY - (1 << 20) && w.started <= len);
        crate::sys::start_writeback(&w.f, 0, len).unwrap();
        w.f.sync_all().unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), data);
    }

    fn compress(data: &[u8], threads: u32) -> Vec<u8> {
        let mut e = zstd::stream::write::Encoder::new(Vec::new(), ZSTD_LEVEL).unwrap();
        e.multithread(threads).unwrap();
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn cache_records_with_and_without_a_stamp() {
        let blob = BlobInfo {
            diff_id: "a".repeat(64),
            digest: "b".repeat(64),
            size: 7,
            media_type: Compression::Zstd.media_type(),
        };
        // A record written before stamps: read, with nothing verified.
        let old = serde_json::to_vec(&blob).unwrap();
        let r: CacheRecord = serde_json::from_slice(&old).unwrap();
        assert_eq!((r.blob.clone(), r.verified), (blob.clone(), None));
        // A stamped record keeps its stamp, and still reads as the blob (gc reads it so).
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, b"content").unwrap();
        let stamp = FileStamp::of(&f).unwrap();
        assert_eq!(stamp.size, 7);
        let new = serde_json::to_vec(&CacheRecord {
            blob: blob.clone(),
            verified: Some(stamp),
        })
        .unwrap();
        let r: CacheRecord = serde_json::from_slice(&new).unwrap();
        assert_eq!(r.verified, Some(stamp));
        assert_eq!(serde_json::from_slice::<BlobInfo>(&new).unwrap(), blob);
        // A write in place is another stamp.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&f, b"CONTENT").unwrap();
        assert_ne!(FileStamp::of(&f).unwrap(), stamp);
    }

    #[test]
    fn zstd_multithreaded_output_does_not_depend_on_worker_count() {
        // Big enough for several jobs (level 3 jobs are 8 MiB by default... use 24 MiB).
        let mut data = Vec::with_capacity(24 << 20);
        let mut x: u64 = 1;
        while data.len() < 24 << 20 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let word = (x >> 60) as usize;
            data.extend_from_slice(&b"usr/lib/python3 portage ebuild gentoo "[word..word + 4]);
        }
        let one = compress(&data, 1);
        assert_eq!(one, compress(&data, 2));
        assert_eq!(one, compress(&data, 4));
    }
}
