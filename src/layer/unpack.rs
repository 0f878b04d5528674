//! Unpacking archives into the store: a stage3 (or any root filesystem tarball) into a new sealed
//! layer, an OCI layer blob into a layer (whiteouts converted to overlayfs form), and an
//! ebuild-tree snapshot into `repos/<snapshot>/` as a plain directory.
//!
//! The `tar` crate only parses; every file is written here, under the path policy of `tarpath`:
//! entry names are split into plain components, and each parent directory is checked on disk
//! without following symlinks, so no entry can land outside the target directory. Owners, modes
//! (setuid included), hardlinks, symlinks, fifos, mtimes (nanoseconds from PAX) and xattrs are
//! restored; device nodes cannot be created rootless and are skipped and counted.
//!
//! Decompression (xz, gzip, bzip2, zstd, detected by magic bytes; xz with liblzma's
//! multithreaded decoder) runs on its own thread and hands 1 MiB chunks over a bounded channel
//! to the thread that writes files; the same channel carries the sha256 of the decompressed
//! stream, which is the layer's diff id for OCI blobs.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;

use filetime::FileTime;
use sha2::Digest as _;
use xattr::FileExt;

use super::filepool::Pool;
use super::pack::{keep_xattr, parse_mtime, OPAQUE_MARKER, WHITEOUT_PREFIX};
use super::tarpath::{components, display};
use super::{LayerError, LayerInfo, Result};
use crate::fsutil::{FsError, IoContext};
use crate::progress::{self, Progress};
use crate::store::Store;

const CHUNK: usize = 1 << 20;
const CHANNEL_DEPTH: usize = 8;
/// What a file or directory costs on disk beyond its content, for `Flusher`.
const BLOCK: u64 = 4096;
/// Bytes (content, plus a block per file and directory) written between two early writebacks.
const FLUSH_EVERY: u64 = 16 << 20;
/// Regular files up to this size are written by the file pool's workers (`filepool`).
const POOL_FILE_MAX: u64 = 256 << 10;
/// Content handed to the workers and not yet written, at most.
const POOL_BUDGET: u64 = 2 << 20;
/// Workers at most: beyond a few, the filesystem's own locks and the one parsing thread decide.
const POOL_WORKERS_MAX: usize = 4;
/// Files compared with the previous tree's (`UnpackOptions::link_from`) up to this size; larger
/// ones are written: they are rare in ebuild trees and comparing them would hold them in memory.
const LINK_COMPARE_MAX: u64 = 4 << 20;

/// Early writeback while an archive is written: every unpack ends with a `syncfs` before the
/// result is renamed into place, and on its own that final sync writes everything at once while
/// nothing else runs. Every `FLUSH_EVERY` bytes a background thread starts a `syncfs` of the
/// target's filesystem, so the disk works while files are still being created and the final
/// sync finds little left. A flush already queued is not queued twice; the background syncs'
/// errors are left to the final sync, which reports them.
struct Flusher {
    dir: PathBuf,
    pending: u64,
    kick: Option<SyncSender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Flusher {
    fn new(dir: &Path) -> Flusher {
        Flusher {
            dir: dir.to_path_buf(),
            pending: 0,
            kick: None,
            thread: None,
        }
    }

    /// Count `n` bytes made dirty; start a writeback when enough have gathered.
    fn wrote(&mut self, n: u64) {
        self.pending += n;
        if self.pending < FLUSH_EVERY {
            return;
        }
        self.pending = 0;
        if self.kick.is_none() {
            let Ok(dir) = File::open(&self.dir) else {
                // No early writeback (tried again at the next threshold); the final sync
                // still covers everything.
                return;
            };
            let (tx, rx) = sync_channel::<()>(1);
            self.kick = Some(tx);
            self.thread = Some(std::thread::spawn(move || {
                use std::os::fd::AsRawFd;
                for () in rx {
                    // Only a head start: the caller's final syncfs reports any error.
                    let _ = nix::unistd::syncfs(dir.as_raw_fd());
                }
            }));
        }
        if let Some(tx) = &self.kick {
            // Full means a flush is already queued, which covers these bytes too.
            let _ = tx.try_send(());
        }
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.kick = None;
        if let Some(t) = self.thread.take() {
            // The thread only runs syncfs; a panic there has nothing to report.
            let _ = t.join();
        }
    }
}

/// How entries are written.
#[derive(Debug, Clone)]
pub struct UnpackOptions {
    /// The archive's name, for error messages.
    pub label: String,
    /// Give entries the owners recorded in the archive (inside the user namespace); otherwise
    /// files belong to the caller and setuid/setgid/sticky bits are dropped.
    pub owners: bool,
    /// Interpret OCI whiteouts (`.wh.NAME`, `.wh..wh..opq`) and write overlayfs whiteouts.
    /// Without it, names starting with `.wh.` are refused when `owners` is set (layers).
    pub oci_whiteouts: bool,
    /// Drop the first path component (the top directory of an ebuild-tree snapshot).
    pub strip_top: bool,
    /// Fail when an xattr cannot be set (restores must be exact) instead of counting it.
    pub strict_xattrs: bool,
    /// A previous complete tree (read-only from then on): a regular file whose path, size,
    /// mode, mtime and content equal that tree's file becomes a hardlink to it instead of a
    /// copy. Only for trees without owners (ebuild trees), unless `link_from_is_source`.
    pub link_from: Option<PathBuf>,
    /// `link_from` is the tree the archive is being read from, as it is read (a commit of an
    /// upper dir that nothing writes meanwhile): a file whose size, mode, owner and mtime are
    /// those of its entry is that entry's content, so it is linked without being compared
    /// (whatever its size), and overlayfs' own xattrs on it (which the archive leaves out) are
    /// removed. Owners are kept.
    pub link_from_is_source: bool,
}

/// What an unpack did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct UnpackStats {
    pub entries: u64,
    pub content_bytes: u64,
    pub devices_skipped: u64,
    pub xattrs_skipped: u64,
    pub other_skipped: u64,
    /// Files hardlinked from `UnpackOptions::link_from` instead of written.
    pub files_linked: u64,
}

pub use crate::compress::{decoder, sniff, Codec};

/// Counts bytes read into a progress bar.
pub struct ProgressReader<R> {
    pub inner: R,
    pub progress: Arc<Progress>,
}

impl<R: Read> Read for ProgressReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.inc(n as u64);
        Ok(n)
    }
}

/// Hands the bytes written to it to another thread in chunks of `CHUNK`. A chunk is kept at its
/// full length (`fill` says how much is written, always less than `CHUNK` between calls: a full
/// chunk is sent at once) so that the packer can read a file's content straight into it
/// (`PackSink`); a consumer may send its used chunks back to be filled again.
struct ChanWriter {
    tx: SyncSender<Vec<u8>>,
    back: Option<Receiver<Vec<u8>>>,
    buf: Vec<u8>,
    fill: usize,
}

impl ChanWriter {
    fn new(tx: SyncSender<Vec<u8>>, back: Option<Receiver<Vec<u8>>>) -> Self {
        ChanWriter {
            tx,
            back,
            buf: vec![0u8; CHUNK],
            fill: 0,
        }
    }

    fn send(&mut self) -> io::Result<()> {
        if self.fill == 0 {
            return Ok(());
        }
        let fresh = match self.back.as_ref().and_then(|b| b.try_recv().ok()) {
            Some(mut v) => {
                v.resize(CHUNK, 0);
                v
            }
            None => vec![0u8; CHUNK],
        };
        let mut chunk = std::mem::replace(&mut self.buf, fresh);
        chunk.truncate(self.fill);
        self.fill = 0;
        self.tx
            .send(chunk)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "unpacker stopped"))
    }
}

impl Write for ChanWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.fill == 0 && data.len() >= CHUNK {
            self.tx
                .send(data.to_vec())
                .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "unpacker stopped"))?;
            return Ok(data.len());
        }
        let n = data.len().min(CHUNK - self.fill);
        self.buf[self.fill..self.fill + n].copy_from_slice(&data[..n]);
        self.fill += n;
        if self.fill >= CHUNK {
            self.send()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

impl super::pack::PackSink for ChanWriter {
    fn spare(&mut self) -> io::Result<Option<&mut [u8]>> {
        Ok(Some(&mut self.buf[self.fill..]))
    }
    fn filled(&mut self, n: usize) -> io::Result<()> {
        self.fill += n;
        if self.fill >= CHUNK {
            self.send()?;
        }
        Ok(())
    }
}

struct ChanReader {
    rx: Receiver<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
}

impl Read for ChanReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos >= self.cur.len() {
            match self.rx.recv() {
                Ok(c) => {
                    self.cur = c;
                    self.pos = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// The result of a pipeline: what was written and the length of the tar stream, with its
/// sha256 when `StreamHash::Compute` asked for it.
#[derive(Debug, Clone)]
pub struct PipelineResult {
    pub stats: UnpackStats,
    pub tar_sha256: Option<String>,
    pub tar_bytes: u64,
}

/// Whether a pipeline hashes the tar stream: a commit's layer id and a restored layer's diff
/// id are that hash; an ebuild tree or a stage3 (whose id comes from its canonical form) does
/// not need it, and its decoder thread is the one that sets the pace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamHash {
    Compute,
    Skip,
}

/// Length and, when asked, sha256 of the bytes written through it (`HashReader`'s mirror).
struct StreamWriter<W> {
    inner: W,
    hasher: Option<sha2::Sha256>,
    count: u64,
}

impl<W: Write> Write for StreamWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        if let Some(h) = &mut self.hasher {
            h.update(&buf[..n]);
        }
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Run `producer` (which writes an uncompressed tar stream) on its own thread and unpack what it
/// writes into `dest` on this one; the producer's own result comes back beside the unpack's.
pub fn pipeline<P, T>(
    producer: P,
    dest: &Path,
    opts: &UnpackOptions,
    hash: StreamHash,
) -> Result<(PipelineResult, T)>
where
    P: FnOnce(&mut dyn Write) -> Result<T> + Send + 'static,
    T: Send + 'static,
{
    let (tx, rx) = sync_channel::<Vec<u8>>(CHANNEL_DEPTH);
    let handle = std::thread::spawn(move || {
        let mut w = StreamWriter {
            inner: ChanWriter::new(tx, None),
            hasher: (hash == StreamHash::Compute).then(sha2::Sha256::new),
            count: 0,
        };
        let r = producer(&mut w);
        let r = r.and_then(|t| w.flush().map(|()| t).map_err(LayerError::Unpacker));
        r.map(|t| (w.hasher.map(|h| hex::encode(h.finalize())), w.count, t))
    });
    let mut reader = ChanReader {
        rx,
        cur: Vec::new(),
        pos: 0,
    };
    let res = unpack_tar(&mut reader, dest, opts);
    if res.is_ok() {
        // Read (and so hash) the whole stream, trailing blocks included.
        let _ = io::copy(&mut reader, &mut io::sink());
    }
    drop(reader);
    let prod = handle
        .join()
        .map_err(|_| LayerError::DecompressorPanicked)?;
    match (res, prod) {
        (Ok(stats), Ok((tar_sha256, tar_bytes, t))) => Ok((
            PipelineResult {
                stats,
                tar_sha256,
                tar_bytes,
            },
            t,
        )),
        // A stream that ends early is the producer's fault when it failed (bad compression),
        // and anything the unpacker refused in a file that is not the expected one is that.
        (Err(LayerError::Archive { .. }), Err(pe)) => Err(pe),
        (Err(_), Err(pe @ (LayerError::Digest { .. } | LayerError::Layout { .. }))) => Err(pe),
        (Err(e), _) => Err(e),
        (Ok(_), Err(pe)) => Err(pe),
    }
}

/// Unpack the (possibly compressed) archive file `archive` into `dest`, with a progress bar.
pub fn unpack_file(
    archive: &Path,
    dest: &Path,
    opts: &UnpackOptions,
    what: &str,
) -> Result<PipelineResult> {
    unpack_checked(archive, None, dest, opts, what)
}

/// What an archive file must be: its sha256 (hex) and length, as a descriptor states them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub sha256: String,
    pub size: u64,
}

/// Sha256 (when there is an expected one to compare with) and length of the bytes read
/// through it.
struct HashReader<R> {
    inner: R,
    hasher: Option<sha2::Sha256>,
    count: u64,
}

impl<R: Read> Read for HashReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(h) = &mut self.hasher {
            h.update(&buf[..n]);
        }
        self.count += n as u64;
        Ok(n)
    }
}

/// `unpack_file` of an archive that must hash to `expected` (an OCI blob): the compressed bytes
/// are hashed as the decoder reads them, in the same read, and the whole file is read. A file
/// that differs fails with a digest or size error (preferred to whatever the decoder or the
/// unpacker made of the damaged bytes); `dest` then holds what was written, which the caller
/// removes.
pub fn unpack_verified(
    archive: &Path,
    expected: &Expected,
    dest: &Path,
    opts: &UnpackOptions,
    what: &str,
) -> Result<PipelineResult> {
    unpack_checked(archive, Some(expected), dest, opts, what)
}

fn unpack_checked(
    archive: &Path,
    expected: Option<&Expected>,
    dest: &Path,
    opts: &UnpackOptions,
    what: &str,
) -> Result<PipelineResult> {
    let f = File::open(archive).at("open", archive)?;
    let len = f.metadata().at("stat", archive)?.len();
    let bar = Arc::new(progress::bytes(what, Some(len)));
    let label = opts.label.clone();
    let p2 = bar.clone();
    let path = archive.to_path_buf();
    // A verified archive is an OCI blob, whose stream is checked against its diff id.
    let hash = match expected {
        Some(_) => StreamHash::Compute,
        None => StreamHash::Skip,
    };
    let expected = expected.cloned();
    let producer = move |w: &mut dyn Write| -> Result<()> {
        let r = ProgressReader {
            inner: HashReader {
                inner: f,
                hasher: expected.as_ref().map(|_| sha2::Sha256::new()),
                count: 0,
            },
            progress: p2,
        };
        let arch = |source| LayerError::Archive {
            archive: label.clone(),
            source,
        };
        // The file's own check: read what the decoder left, then compare.
        let check = |r: ProgressReader<HashReader<File>>| -> Result<()> {
            let Some(exp) = &expected else {
                return Ok(());
            };
            let mut h = r.inner;
            io::copy(&mut h, &mut io::sink()).at("read", &path)?;
            let actual = hex::encode(sha2::Digest::finalize(h.hasher.unwrap_or_default()));
            if actual != exp.sha256 {
                return Err(LayerError::Digest {
                    what: "blob",
                    path: path.clone(),
                    expected: format!("sha256:{}", exp.sha256),
                    actual: format!("sha256:{actual}"),
                });
            }
            if h.count != exp.size {
                return Err(LayerError::Layout {
                    path: path.clone(),
                    reason: format!(
                        "size {} differs from the descriptor's {}",
                        h.count, exp.size
                    ),
                });
            }
            Ok(())
        };
        let mut d = decoder(r).map_err(arch)?;
        // Large reads: each one is a round trip through the (multithreaded) decoder.
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = match d.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Damaged bytes are reported as such, not as what the decoder saw.
                    check(d.into_inner().into_inner())?;
                    return Err(arch(e));
                }
            };
            match w.write_all(&buf[..n]) {
                Ok(()) => {}
                // The unpacker stopped (its error is the one reported, unless the file
                // itself is not the one expected).
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => break,
                Err(e) => return Err(arch(e)),
            }
        }
        check(d.into_inner().into_inner())
    };
    let r = pipeline(producer, dest, opts, hash).map(|(r, ())| r);
    if r.is_ok() {
        bar.done();
    }
    r
}

/// Unpack a root filesystem tarball (a stage3) into a new sealed layer; returns its metadata.
/// Must run inside the user namespace with the containers' mapping.
pub fn unpack_rootfs(store: &Store, tarball: &Path, source: &str) -> Result<LayerInfo> {
    let tmp = super::temp_dir(store, "unpack")?;
    let r = (|| {
        let opts = UnpackOptions {
            label: tarball.display().to_string(),
            owners: true,
            oci_whiteouts: false,
            strip_top: false,
            strict_xattrs: false,
            link_from: None,
            link_from_is_source: false,
        };
        let name = tarball
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let res = unpack_file(tarball, &tmp, &opts, &format!("unpack {name}"))?;
        report_skips(&res.stats, &name);
        // The tree is complete: sync it while the checksum pass reads it (which writes nothing).
        let t2 = tmp.clone();
        let sync = std::thread::spawn(move || super::sync_tree(&t2));
        let bar = progress::bytes("checksum layer", Some(res.stats.content_bytes));
        let hashed = hash_tree(&tmp, &bar);
        let synced = sync.join().map_err(|_| LayerError::Panicked("sync"))?;
        let (id, ps) = hashed?;
        synced?;
        bar.done();
        super::publish_synced(
            store,
            &tmp,
            LayerInfo {
                id,
                parent: None,
                source: source.to_string(),
                size: ps.content_bytes,
                entries: ps.entries,
                created: super::now_secs(),
                devices_skipped: res.stats.devices_skipped,
            },
            true,
        )
    })();
    if r.is_err() {
        // Best effort beside the step's own error; gc removes a temporary-named leftover.
        let _ = super::remove_tree(&tmp);
    }
    r
}

/// The layer id of the tree `dir` (the sha256 of its canonical tarball) and what the tarball
/// holds: the tree is read on this thread and hashed on another one.
fn hash_tree(dir: &Path, bar: &Progress) -> Result<(String, super::pack::PackStats)> {
    let (tx, rx) = sync_channel::<Vec<u8>>(CHANNEL_DEPTH);
    let (back_tx, back) = sync_channel::<Vec<u8>>(CHANNEL_DEPTH);
    let hasher = std::thread::spawn(move || {
        let mut h = sha2::Sha256::new();
        for chunk in rx {
            h.update(&chunk);
            // Full means the writer has chunks enough to fill; this one is dropped.
            let _ = back_tx.try_send(chunk);
        }
        hex::encode(h.finalize())
    });
    let mut w = ChanWriter::new(tx, Some(back));
    let packed = super::pack::pack_dir(dir, &mut w, Some(bar));
    drop(w);
    let id = hasher.join().map_err(|_| LayerError::Panicked("hashing"))?;
    Ok((id, packed?))
}

/// A numeric field of a tar header as GNU tar and libarchive read it: the tar crate's value,
/// except that a field of only NUL bytes (written by tools that leave ownership unset) is 0
/// rather than an error. Anything else the crate refuses stays refused.
fn numeric(parsed: io::Result<u64>, field: &[u8]) -> io::Result<u64> {
    match parsed {
        Err(_) if field.iter().all(|b| *b == 0) => Ok(0),
        r => r,
    }
}

fn report_skips(s: &UnpackStats, name: &str) {
    if s.devices_skipped > 0 {
        progress::note(&format!(
            "{name}: skipped {} device node(s) (not creatable rootless; the container runtime provides /dev)",
            s.devices_skipped
        ));
    }
    if s.xattrs_skipped > 0 {
        progress::note(&format!(
            "{name}: {} extended attribute(s) could not be set and were dropped",
            s.xattrs_skipped
        ));
    }
}

/// The snapshot name of an ebuild-tree tarball: its file name without `.tar[.codec]`.
pub fn repo_name_of(tarball: &Path) -> String {
    let n = tarball
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    for ext in [".tar.xz", ".tar.gz", ".tgz", ".tar.bz2", ".tar.zst", ".tar"] {
        if let Some(s) = n.strip_suffix(ext) {
            return s.to_string();
        }
    }
    n
}

/// Unpack an ebuild-tree snapshot into `repos/<name>/` (top directory stripped, files owned by
/// the caller). An existing `repos/<name>/` is kept as is: snapshots are immutable.
pub fn unpack_repo(store: &Store, tarball: &Path, name: &str) -> Result<PathBuf> {
    if !crate::store::valid_name(name) {
        return Err(LayerError::BadSnapshotName(name.to_string()));
    }
    let dest = store.repo(name);
    if dest.is_dir() {
        return Ok(dest);
    }
    std::fs::create_dir_all(store.repos()).at("create directory", &store.repos())?;
    // Held while the work directory exists, so that `gc` leaves it alone.
    let _lock = super::StoreLock::shared(store)?;
    if dest.is_dir() {
        return Ok(dest);
    }
    let tmp = crate::fsutil::temp_path(&store.repos(), name);
    super::remove_tree(&tmp)?;
    std::fs::create_dir(&tmp).at("create directory", &tmp)?;
    let r = (|| {
        let opts = UnpackOptions {
            label: tarball.display().to_string(),
            owners: false,
            oci_whiteouts: false,
            strip_top: true,
            strict_xattrs: false,
            link_from: previous_repo(store, name),
            link_from_is_source: false,
        };
        unpack_file(tarball, &tmp, &opts, &format!("unpack {name}"))?;
        super::sync_tree(&tmp)?;
        crate::fsutil::rename_dir_into_place(&tmp, &dest)?;
        Ok(dest.clone())
    })();
    if r.is_err() {
        // Best effort beside the step's own error; gc removes a temporary-named leftover.
        let _ = super::remove_tree(&tmp);
    }
    r
}

/// The complete tree under `repos/` that a new snapshot `name` shares unchanged files with: the
/// one whose name sorts last before `name` (snapshot names carry their date), else the last one.
/// Work dirs (`.tmp-*`) are never complete and never chosen.
fn previous_repo(store: &Store, name: &str) -> Option<PathBuf> {
    let mut names: Vec<String> = std::fs::read_dir(store.repos())
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| !n.starts_with('.') && n != name)
        .collect();
    names.sort();
    let pick = names
        .iter()
        .rev()
        .find(|n| n.as_str() < name)
        .or(names.last())?;
    Some(store.repo(pick))
}

/// Parse and write every entry of the tar stream `r` into `dest` (an existing directory).
pub fn unpack_tar<R: Read>(r: R, dest: &Path, opts: &UnpackOptions) -> Result<UnpackStats> {
    let prev = match &opts.link_from {
        Some(p) if !opts.owners || opts.link_from_is_source => {
            crate::beneath::Beneath::open(p).ok()
        }
        _ => None,
    };
    let sink = Arc::new(Sink {
        root: dest.to_path_buf(),
        prev,
        opts: opts.clone(),
        umask: current_umask(),
        content_bytes: AtomicU64::new(0),
        files_linked: AtomicU64::new(0),
        xattrs_skipped: AtomicU64::new(0),
    });
    let workers = pool_workers();
    // A commit links its source's files without reading them, on the parsing thread.
    let pool = (workers > 0 && !opts.link_from_is_source).then(|| {
        let s = Arc::clone(&sink);
        Pool::new(workers, POOL_BUDGET, move |job: SmallFile| {
            s.write_small(job)
        })
    });
    let mut w = Writer {
        sink,
        pool,
        dispatched: HashSet::new(),
        flusher: Flusher::new(dest),
        known: HashSet::new(),
        deferred: Vec::new(),
        // New directories inherit a set-group-id bit, which only the final chmod removes.
        setgid_root: std::fs::metadata(dest).is_ok_and(|md| md.mode() & 0o2000 != 0),
        stats: UnpackStats::default(),
        buf: vec![0u8; 256 * 1024],
    };
    let mut archive = tar::Archive::new(r);
    let entries = archive.entries().map_err(|e| w.archive_err(e))?;
    for entry in entries {
        let entry = entry.map_err(|e| w.archive_err(e))?;
        w.entry(entry)?;
    }
    w.finish()?;
    Ok(w.stats)
}

/// How many file pool workers an unpack starts: none on a single processor, where the parsing
/// thread writing itself costs no hand-over.
fn pool_workers() -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus < 2 {
        0
    } else {
        cpus.min(POOL_WORKERS_MAX)
    }
}

/// A key for a relative path in `Writer::dispatched` (FNV-1a): a collision only costs a drain.
fn path_key(rel: &[u8]) -> u64 {
    rel.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Hardlink the open file `f` at the new name `path`, through its descriptor (the file opened
/// beneath a tree's root, so no name is resolved again on the way).
fn link_open_file(f: &File, path: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let proc_path = PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd()));
    nix::unistd::linkat(
        None,
        proc_path.as_path(),
        None,
        path,
        nix::fcntl::AtFlags::AT_SYMLINK_FOLLOW,
    )
    .map_err(io::Error::from)
}

/// Remove overlayfs' own xattrs (`*.overlay.*`, e.g. the origin overlay records on a file it
/// copied up) from the file `path`: a layer holds only what its canonical tarball does.
fn drop_overlay_xattrs(path: &Path) -> Result<()> {
    let names = xattr::list(path).at("list xattrs", path)?;
    for n in names {
        if !super::pack::keep_xattr(n.as_encoded_bytes()) {
            xattr::remove(path, &n).at("remove xattr", path)?;
        }
    }
    Ok(())
}

/// Writes regular files: the parsing thread (`Writer`) and the file pool's workers share it.
/// Every path it is given has parents the parsing thread made or checked as real directories.
struct Sink {
    root: PathBuf,
    /// `opts.link_from`, open.
    prev: Option<crate::beneath::Beneath>,
    opts: UnpackOptions,
    /// The process's umask, when known: a mode it leaves alone is given at creation, which
    /// saves a chmod per entry.
    umask: Option<u32>,
    content_bytes: AtomicU64,
    files_linked: AtomicU64,
    xattrs_skipped: AtomicU64,
}

/// A regular file read whole from the archive, to be written (or linked) by `Sink::write_small`.
struct SmallFile {
    path: PathBuf,
    /// The entry's name in the archive, for errors.
    raw: Vec<u8>,
    content: Vec<u8>,
    meta: EntryMeta,
}

struct Writer {
    /// What writes files, with the target root, the options and the umask.
    sink: Arc<Sink>,
    /// Workers writing small files; `None` on one processor and for commits.
    pool: Option<Pool<SmallFile>>,
    /// Keys (`path_key`) of the relative paths handed to the pool since its last drain: an
    /// entry that could meet one of them waits for the pool first.
    dispatched: HashSet<u64>,
    flusher: Flusher,
    /// Relative paths (bytes) known to be real directories, not symlinks.
    known: HashSet<Vec<u8>>,
    /// Directories whose mode (unless creation gave the right one) and mtime are set at the
    /// end: (path, mode, mtime).
    deferred: Vec<(PathBuf, Option<u32>, FileTime)>,
    /// The target directory has the set-group-id bit, so every directory made in it gets it.
    setgid_root: bool,
    stats: UnpackStats,
    buf: Vec<u8>,
}

/// The metadata of an entry beyond its type and name.
struct EntryMeta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: FileTime,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Writer {
    fn archive_err(&self, source: io::Error) -> LayerError {
        LayerError::Archive {
            archive: self.sink.opts.label.clone(),
            source,
        }
    }

    fn refuse(&self, name: &[u8], reason: impl std::fmt::Display) -> LayerError {
        self.sink.refuse(name, reason)
    }

    fn entry<R: Read>(&mut self, mut e: tar::Entry<'_, R>) -> Result<()> {
        use tar::EntryType as T;
        let etype = e.header().entry_type();
        if matches!(
            etype,
            T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink
        ) {
            return Ok(());
        }
        let raw = e.path_bytes().into_owned();
        let comps = self.rel_components(&raw)?;
        if comps.is_empty() {
            return Ok(()); // the root (or the stripped top directory) itself
        }
        self.stats.entries += 1;
        let meta = self.meta(&mut e, &raw)?;
        let (parents, last) = comps.split_at(comps.len() - 1);
        let last = last[0];
        let lastb = last.as_bytes();
        if lastb.starts_with(WHITEOUT_PREFIX.as_bytes()) {
            if self.sink.opts.oci_whiteouts {
                // A whiteout removes a whole tree, which may hold files still in flight.
                self.drain()?;
                let parent = self.parent_dir(parents, &raw)?;
                return self.whiteout(&parent, lastb, &raw);
            }
            if self.sink.opts.owners {
                return Err(
                    self.refuse(&raw, "names starting with .wh. are reserved for whiteouts")
                );
            }
        }
        let parent = self.parent_dir(parents, &raw)?;
        let path = parent.join(last);
        let rel: Vec<u8> = rel_bytes(&comps);
        if !matches!(etype, T::Regular | T::Continuous | T::GNUSparse) {
            // Whatever replaces or links a name waits for a file of that name in flight.
            self.settle(&rel)?;
        }
        match etype {
            T::Directory => self.dir(&path, rel, &raw, meta),
            T::Regular | T::Continuous | T::GNUSparse => self.file(&mut e, &path, &rel, &raw, meta),
            T::Link => {
                let target = e
                    .link_name_bytes()
                    .map(|c| c.into_owned())
                    .unwrap_or_default();
                self.hardlink(&path, &raw, &target)
            }
            T::Symlink => {
                let target = e
                    .link_name_bytes()
                    .map(|c| c.into_owned())
                    .unwrap_or_default();
                self.symlink(&path, &raw, &target, meta)
            }
            T::Fifo => self.fifo(&path, &raw, meta),
            T::Char | T::Block => {
                self.stats.devices_skipped += 1;
                Ok(())
            }
            _ => {
                self.stats.other_skipped += 1;
                Ok(())
            }
        }
    }

    fn rel_components<'n>(&self, raw: &'n [u8]) -> Result<Vec<&'n OsStr>> {
        let mut comps = components(raw).map_err(|r| self.refuse(raw, r))?;
        if self.sink.opts.strip_top && !comps.is_empty() {
            comps.remove(0);
        }
        Ok(comps)
    }

    fn meta<R: Read>(&self, e: &mut tar::Entry<'_, R>, raw: &[u8]) -> Result<EntryMeta> {
        let h = e.header();
        let bad = |what: &str, err: io::Error| self.refuse(raw, format!("bad {what}: {err}"));
        let old = h.as_old();
        let mut m = EntryMeta {
            mode: numeric(h.mode().map(u64::from), &old.mode).map_err(|x| bad("mode", x))? as u32
                & 0o7777,
            uid: numeric(h.uid(), &old.uid).map_err(|x| bad("uid", x))? as u32,
            gid: numeric(h.gid(), &old.gid).map_err(|x| bad("gid", x))? as u32,
            mtime: FileTime::from_unix_time(
                numeric(h.mtime(), &old.mtime).map_err(|x| bad("mtime", x))? as i64,
                0,
            ),
            xattrs: Vec::new(),
        };
        if let Some(exts) = e.pax_extensions().map_err(|x| bad("pax header", x))? {
            for ext in exts {
                let ext = ext.map_err(|x| bad("pax header", x))?;
                let k = ext.key_bytes();
                let v = ext.value_bytes();
                let num = || {
                    std::str::from_utf8(v)
                        .ok()
                        .and_then(|s| s.parse::<u32>().ok())
                };
                match k {
                    b"mtime" => {
                        let (s, n) = std::str::from_utf8(v)
                            .ok()
                            .and_then(parse_mtime)
                            .ok_or_else(|| self.refuse(raw, "bad pax mtime"))?;
                        m.mtime = FileTime::from_unix_time(s, n);
                    }
                    b"uid" => m.uid = num().ok_or_else(|| self.refuse(raw, "bad pax uid"))?,
                    b"gid" => m.gid = num().ok_or_else(|| self.refuse(raw, "bad pax gid"))?,
                    _ => {
                        if let Some(name) = k.strip_prefix(b"SCHILY.xattr.") {
                            m.xattrs.push((name.to_vec(), v.to_vec()));
                        }
                    }
                }
            }
        }
        if !self.sink.opts.owners {
            m.mode &= 0o777;
        }
        Ok(m)
    }

    /// The directory holding an entry: each component must be a real directory (created when
    /// missing), never a symlink.
    fn parent_dir(&mut self, parents: &[&OsStr], raw: &[u8]) -> Result<PathBuf> {
        let mut rel: Vec<u8> = Vec::new();
        let mut path = self.sink.root.clone();
        for c in parents {
            if !rel.is_empty() {
                rel.push(b'/');
            }
            rel.extend_from_slice(c.as_bytes());
            path.push(c);
            if self.known.contains(&rel) {
                continue;
            }
            self.settle(&rel)?;
            match std::fs::symlink_metadata(&path) {
                Ok(md) if md.file_type().is_symlink() => {
                    return Err(self.refuse(
                        raw,
                        format!(
                            "path passes through symlink {} (could leave the layer)",
                            display(&rel)
                        ),
                    ))
                }
                Ok(md) if md.is_dir() => {}
                Ok(_) => {
                    return Err(self.refuse(raw, format!("{} is not a directory", display(&rel))))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    std::fs::create_dir(&path).at("create directory", &path)?;
                    if self.sink.opts.owners {
                        self.sink.chown(&path, None, 0, 0, raw)?;
                    }
                    // Implied directory: fixed metadata, so the layer id stays deterministic.
                    self.deferred
                        .push((path.clone(), Some(0o755), FileTime::from_unix_time(0, 0)));
                }
                Err(e) => return Err(FsError::new("stat", &path, e).into()),
            }
            self.known.insert(rel.clone());
        }
        Ok(path)
    }

    /// Make room for a new non-directory entry at `path`. A directory is removed only once the
    /// pool has written everything handed to it, which may lie beneath it.
    fn clear(&mut self, path: &Path, raw: &[u8]) -> Result<()> {
        let pool = self.pool.as_ref();
        let removed_dir = self
            .sink
            .clear(path, raw, &mut || pool.map_or(Ok(()), |p| p.drain()))?;
        if removed_dir {
            self.known.clear();
            self.dispatched.clear();
        }
        Ok(())
    }

    /// Wait for every file handed to the pool; its first error.
    fn drain(&mut self) -> Result<()> {
        if let Some(p) = &self.pool {
            p.drain()?;
        }
        self.dispatched.clear();
        Ok(())
    }

    /// Drain the pool when a file at `rel` may still be in flight.
    fn settle(&mut self, rel: &[u8]) -> Result<()> {
        if !self.dispatched.is_empty() && self.dispatched.contains(&path_key(rel)) {
            self.drain()?;
        }
        Ok(())
    }

    fn dir(&mut self, path: &Path, rel: Vec<u8>, raw: &[u8], m: EntryMeta) -> Result<()> {
        // A directory the owner can fill gets its final mode at creation when nothing would
        // take bits away; any other (read-only, set-id, sticky) is made 0777 minus the umask
        // and given its mode at the end, once its entries are in.
        let at_creation = !self.setgid_root
            && m.mode & 0o700 == 0o700
            && exact_on_create(m.mode, self.sink.umask);
        let mut mode = Some(m.mode);
        // Creating first saves a `stat` per directory in the common case of a fresh tree.
        let create = || {
            std::fs::DirBuilder::new()
                .mode(if at_creation { m.mode } else { 0o777 })
                .create(path)
        };
        match create() {
            Ok(()) => {
                self.flusher.wrote(BLOCK);
                if at_creation {
                    mode = None;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let md = std::fs::symlink_metadata(path).at("stat", path)?;
                if !md.is_dir() {
                    self.clear(path, raw)?;
                    std::fs::create_dir(path).at("create directory", path)?;
                }
            }
            Err(e) => return Err(FsError::new("create directory", path, e).into()),
        }
        if self.sink.opts.owners {
            self.sink.chown(path, None, m.uid, m.gid, raw)?;
        }
        self.sink.set_xattrs(path, None, &m)?;
        self.known.insert(rel);
        self.deferred.push((path.to_path_buf(), mode, m.mtime));
        Ok(())
    }

    fn file<R: Read>(
        &mut self,
        e: &mut tar::Entry<'_, R>,
        path: &Path,
        rel: &[u8],
        raw: &[u8],
        m: EntryMeta,
    ) -> Result<()> {
        self.settle(rel)?;
        if self.known.contains(rel) {
            // A directory of this archive replaced by a file: only where its entries are.
            self.clear(path, raw)?;
        }
        let size = e.size();
        if self.sink.opts.link_from_is_source {
            if self.sink.link_source(path, raw, size, &m)? {
                return Ok(());
            }
        } else if size <= POOL_FILE_MAX || (self.sink.prev.is_some() && size <= LINK_COMPARE_MAX) {
            let mut content = Vec::with_capacity(size as usize);
            e.read_to_end(&mut content)
                .map_err(|x| self.archive_err(x))?;
            self.flusher.wrote(content.len() as u64 + BLOCK);
            let job = SmallFile {
                path: path.to_path_buf(),
                raw: raw.to_vec(),
                content,
                meta: m,
            };
            return match &self.pool {
                Some(pool) if size <= POOL_FILE_MAX => {
                    let key = path_key(rel);
                    self.dispatched.insert(key);
                    pool.submit(key, job, size + BLOCK)
                }
                _ => self.sink.write_small(job),
            };
        }
        // Larger files are streamed through the buffer, here.
        let (mut f, exact) = self.sink.create_for(path, raw, &m)?;
        loop {
            let n = match e.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(self.archive_err(err)),
            };
            f.write_all(&self.buf[..n]).at("write", path)?;
            self.sink
                .content_bytes
                .fetch_add(n as u64, Ordering::Relaxed);
            self.flusher.wrote(n as u64);
        }
        self.flusher.wrote(BLOCK);
        self.sink.finish_file(&f, path, raw, &m, exact)
    }

    fn hardlink(&mut self, path: &Path, raw: &[u8], target: &[u8]) -> Result<()> {
        let tcomps = self.rel_components(target).map_err(|_| {
            self.refuse(
                raw,
                format!("hardlink target {} leaves the layer", display(target)),
            )
        })?;
        if tcomps.is_empty() {
            return Err(self.refuse(raw, "hardlink to the root directory"));
        }
        // The target may be a file still in flight.
        self.settle(&rel_bytes(&tcomps))?;
        let (tparents, tlast) = tcomps.split_at(tcomps.len() - 1);
        let tparent = self.parent_dir(tparents, raw)?;
        let tpath = tparent.join(tlast[0]);
        match std::fs::symlink_metadata(&tpath) {
            Ok(md) if !md.is_dir() => {}
            _ => {
                return Err(self.refuse(
                    raw,
                    format!(
                        "hardlink target {} is not a file earlier in the archive",
                        display(target)
                    ),
                ))
            }
        }
        if tpath == path {
            return Ok(());
        }
        self.clear(path, raw)?;
        std::fs::hard_link(&tpath, path).at("link", path)?;
        Ok(())
    }

    fn symlink(&mut self, path: &Path, raw: &[u8], target: &[u8], m: EntryMeta) -> Result<()> {
        if target.is_empty() || target.contains(&0) {
            return Err(self.refuse(raw, "empty or invalid symlink target"));
        }
        self.clear(path, raw)?;
        std::os::unix::fs::symlink(OsStr::from_bytes(target), path).at("symlink", path)?;
        if self.sink.opts.owners {
            self.sink.chown(path, None, m.uid, m.gid, raw)?;
        }
        filetime::set_symlink_file_times(path, m.mtime, m.mtime).at("set times", path)?;
        Ok(())
    }

    fn fifo(&mut self, path: &Path, raw: &[u8], m: EntryMeta) -> Result<()> {
        use nix::sys::stat::{mknod, Mode, SFlag};
        self.clear(path, raw)?;
        mknod(path, SFlag::S_IFIFO, Mode::from_bits_truncate(0o600), 0)
            .map_err(|e| FsError::new("mkfifo", path, e.into()))?;
        if self.sink.opts.owners {
            self.sink.chown(path, None, m.uid, m.gid, raw)?;
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(m.mode))
            .at("chmod", path)?;
        self.sink.set_xattrs(path, None, &m)?;
        filetime::set_symlink_file_times(path, m.mtime, m.mtime).at("set times", path)?;
        Ok(())
    }

    /// `.wh.NAME` -> overlayfs whiteout (character device 0/0) for NAME; `.wh..wh..opq` ->
    /// `user.overlay.opaque=y` on the directory.
    fn whiteout(&mut self, parent: &Path, last: &[u8], raw: &[u8]) -> Result<()> {
        if last == OPAQUE_MARKER.as_bytes() {
            xattr::set(parent, "user.overlay.opaque", b"y").at("set xattr", parent)?;
            return Ok(());
        }
        let name = &last[WHITEOUT_PREFIX.len()..];
        if name.is_empty() || name.starts_with(WHITEOUT_PREFIX.as_bytes()) {
            return Err(self.refuse(raw, "malformed whiteout"));
        }
        let path = parent.join(OsStr::from_bytes(name));
        if std::fs::symlink_metadata(&path).is_ok() {
            super::remove_tree(&path)?;
            self.known.clear();
        }
        use nix::sys::stat::{mknod, Mode, SFlag};
        mknod(&path, SFlag::S_IFCHR, Mode::empty(), 0).map_err(|e| {
            FsError::new(
                "create whiteout (character device 0/0, Linux 5.8+)",
                &path,
                e.into(),
            )
        })?;
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        // Every file is in before its directory's mtime is set.
        self.drain()?;
        let sink = &self.sink;
        self.stats.content_bytes = sink.content_bytes.load(Ordering::Relaxed);
        self.stats.files_linked = sink.files_linked.load(Ordering::Relaxed);
        self.stats.xattrs_skipped = sink.xattrs_skipped.load(Ordering::Relaxed);
        for (path, mode, mtime) in &self.deferred {
            if let Some(mode) = mode {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(*mode))
                    .at("chmod", path)?;
            }
            filetime::set_symlink_file_times(path, *mtime, *mtime).at("set times", path)?;
        }
        Ok(())
    }
}

impl Sink {
    fn refuse(&self, name: &[u8], reason: impl std::fmt::Display) -> LayerError {
        LayerError::Entry {
            archive: self.opts.label.clone(),
            entry: display(name),
            reason: reason.to_string(),
        }
    }

    /// Give `path` (or the open `file`) the owner `uid:gid`, never following a symlink.
    fn chown(
        &self,
        path: &Path,
        file: Option<&File>,
        uid: u32,
        gid: u32,
        raw: &[u8],
    ) -> Result<()> {
        let r = match file {
            Some(f) => std::os::unix::fs::fchown(f, Some(uid), Some(gid)),
            None => std::os::unix::fs::lchown(path, Some(uid), Some(gid)),
        };
        match r {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Err(self.refuse(
                raw,
                format!(
                    "owner {uid}:{gid} is not mapped in this user namespace \
                     (subordinate ids missing? run `gbuild setup-host --user USER` as root)"
                ),
            )),
            Err(e) => Err(FsError::new("chown", path, e).into()),
        }
    }

    /// Make room for a new non-directory entry at `path`; `before_dir` runs before a directory
    /// is removed. Whether a directory was removed.
    fn clear(
        &self,
        path: &Path,
        raw: &[u8],
        before_dir: &mut dyn FnMut() -> Result<()>,
    ) -> Result<bool> {
        match std::fs::symlink_metadata(path) {
            Ok(md) if md.is_dir() => {
                before_dir()?;
                std::fs::remove_dir(path).map_err(|e| {
                    self.refuse(raw, format!("replaces a non-empty directory: {e}"))
                })?;
                Ok(true)
            }
            Ok(_) => {
                std::fs::remove_file(path).at("remove", path)?;
                Ok(false)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(FsError::new("stat", path, e).into()),
        }
    }

    fn set_xattrs(&self, path: &Path, file: Option<&File>, m: &EntryMeta) -> Result<()> {
        for (k, v) in &m.xattrs {
            if !keep_xattr(k) {
                self.xattrs_skipped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let name = OsStr::from_bytes(k);
            let r = match file {
                Some(f) => f.set_xattr(name, v),
                None => xattr::set(path, name, v),
            };
            if let Err(e) = r {
                if self.opts.strict_xattrs {
                    return Err(FsError::new("set xattr", path.join(name), e).into());
                }
                self.xattrs_skipped.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// Create the new file `path`; whatever is there is replaced (a later entry of the same
    /// name). Creating first saves a `stat` per file in the common case of a fresh directory.
    fn create_file(&self, path: &Path, raw: &[u8], mode: u32) -> Result<File> {
        let open = || {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .custom_flags(libc::O_NOFOLLOW)
                .open(path)
        };
        match open() {
            Ok(f) => Ok(f),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                // The pool is never given a path that is a directory of this archive.
                self.clear(path, raw, &mut || Ok(()))?;
                Ok(open().at("create", path)?)
            }
            Err(e) => Err(FsError::new("create", path, e).into()),
        }
    }

    /// Create the file of entry `m` at `path`, and whether it has its final mode already: a mode
    /// the umask leaves alone and no write or chown can clear is given at creation.
    fn create_for(&self, path: &Path, raw: &[u8], m: &EntryMeta) -> Result<(File, bool)> {
        let exact = exact_on_create(m.mode, self.umask);
        let f = self.create_file(path, raw, if exact { m.mode } else { 0o600 })?;
        Ok((f, exact))
    }

    /// A created file's owner, mode (when creation could not give it), xattrs and times.
    fn finish_file(
        &self,
        f: &File,
        path: &Path,
        raw: &[u8],
        m: &EntryMeta,
        exact: bool,
    ) -> Result<()> {
        if self.opts.owners {
            self.chown(path, Some(f), m.uid, m.gid, raw)?;
        }
        if !exact {
            f.set_permissions(std::fs::Permissions::from_mode(m.mode))
                .at("chmod", path)?;
        }
        self.set_xattrs(path, Some(f), m)?;
        filetime::set_file_handle_times(f, Some(m.mtime), Some(m.mtime)).at("set times", path)?;
        Ok(())
    }

    /// Write a file read whole from the archive, or link it to the previous tree's copy.
    fn write_small(&self, job: SmallFile) -> Result<()> {
        let SmallFile {
            path,
            raw,
            content,
            meta: m,
        } = job;
        self.content_bytes
            .fetch_add(content.len() as u64, Ordering::Relaxed);
        if self.prev.is_some() && self.link_same(&path, &raw, &content, &m)? {
            return Ok(());
        }
        let (mut f, exact) = self.create_for(&path, &raw, &m)?;
        f.write_all(&content).at("write", &path)?;
        self.finish_file(&f, &path, &raw, &m, exact)
    }

    /// The previous tree's file at the same relative path, open, when its size, mode and mtime
    /// (and owner, for a commit's source) are the entry's. It is opened beneath that tree's root
    /// without following symlinks, so a link never leaves it.
    fn previous_same_meta(&self, path: &Path, size: u64, m: &EntryMeta) -> Option<File> {
        let prev = self.prev.as_ref()?;
        let rel = path.strip_prefix(&self.root).ok()?.to_str()?;
        let old = prev.open_file(rel).ok()?;
        let source = self.opts.link_from_is_source;
        let md = old.metadata().ok()?;
        let same = md.file_type().is_file()
            && md.len() == size
            && md.mode() & 0o7777 == m.mode
            && (!source || (md.uid() == m.uid && md.gid() == m.gid))
            && md.mtime() == m.mtime.unix_seconds()
            && md.mtime_nsec() == i64::from(m.mtime.nanoseconds());
        same.then_some(old)
    }

    /// Hardlink `path` to the open `old`, making room when a name is there already. False when
    /// linking is not possible (a file at its link limit, another filesystem, a tree removed
    /// meanwhile): the caller writes a copy.
    fn link_to(&self, old: &File, path: &Path, raw: &[u8]) -> Result<bool> {
        match link_open_file(old, path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                self.clear(path, raw, &mut || Ok(()))?;
                Ok(link_open_file(old, path).is_ok())
            }
            Err(_) => Ok(false),
        }
    }

    /// Link `path` to the previous tree's file when it holds the same bytes and metadata.
    fn link_same(&self, path: &Path, raw: &[u8], content: &[u8], m: &EntryMeta) -> Result<bool> {
        let Some(mut old) = self.previous_same_meta(path, content.len() as u64, m) else {
            return Ok(false);
        };
        // Its size is the entry's (checked above): one read of that many bytes, where
        // `read_to_end` would ask the size again, seek and read once more to see the end.
        let mut cur = vec![0; content.len()];
        if old.read_exact(&mut cur).is_err() || cur != content {
            return Ok(false);
        }
        let linked = self.link_to(&old, path, raw)?;
        if linked {
            self.files_linked.fetch_add(1, Ordering::Relaxed);
        }
        Ok(linked)
    }

    /// A commit: link the source tree's file the stream was read from (no comparison; whatever
    /// its size), without overlayfs' own xattrs. False when the caller must write the entry.
    fn link_source(&self, path: &Path, raw: &[u8], size: u64, m: &EntryMeta) -> Result<bool> {
        let Some(old) = self.previous_same_meta(path, size, m) else {
            return Ok(false);
        };
        if !self.link_to(&old, path, raw)? {
            return Ok(false);
        }
        drop_overlay_xattrs(path)?;
        self.content_bytes.fetch_add(size, Ordering::Relaxed);
        self.files_linked.fetch_add(1, Ordering::Relaxed);
        Ok(true)
    }
}

/// The process's umask, from `/proc/self/status` (reading it through umask(2) would change it
/// for a moment under the other threads); `None` when that file does not say.
fn current_umask() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let value = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
    u32::from_str_radix(value.trim(), 8).ok()
}

/// Whether creating an entry with `mode` leaves exactly `mode` on disk: the umask takes none of
/// its bits, and it has no set-id or sticky bit (which creation, a write or a chown may clear).
fn exact_on_create(mode: u32, umask: Option<u32>) -> bool {
    umask.is_some_and(|u| mode & 0o7000 == 0 && mode & u == 0)
}

fn rel_bytes(comps: &[&OsStr]) -> Vec<u8> {
    let mut v = Vec::new();
    for (i, c) in comps.iter().enumerate() {
        if i > 0 {
            v.push(b'/');
        }
        v.extend_from_slice(c.as_bytes());
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> UnpackOptions {
        UnpackOptions {
            label: "t.tar".into(),
            owners: false,
            oci_whiteouts: false,
            strip_top: false,
            strict_xattrs: false,
            link_from: None,
            link_from_is_source: false,
        }
    }

    #[test]
    fn the_layer_id_hashes_the_canonical_tarball_through_recycled_chunks() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        // Several chunks' worth, with files smaller and larger than a chunk, so that chunks go
        // to the hasher, come back and are filled again, partly and whole. The first file's
        // content ends exactly at the end of the first chunk (one 512-byte header before it: a
        // whole-second mtime needs no PAX header), so the next header meets a full chunk.
        for (i, n) in [
            CHUNK - 512,
            3 * CHUNK + 17,
            10,
            CHUNK - 1,
            2 * CHUNK,
            0,
            700_000,
        ]
        .iter()
        .enumerate()
        {
            let body: Vec<u8> = (0..*n).map(|k| (k % 251 + i) as u8).collect();
            let f = r.join(format!("f{i}"));
            std::fs::write(&f, body).unwrap();
            filetime::set_file_mtime(&f, filetime::FileTime::from_unix_time(1_000_000, 0)).unwrap();
        }
        let mut plain = Vec::new();
        let stats = super::super::pack::pack_dir(r, &mut plain, None).unwrap();
        let (id, ps) = hash_tree(r, &progress::bytes("t", None)).unwrap();
        assert_eq!(id, hex::encode(sha2::Sha256::digest(&plain)));
        assert_eq!(
            (ps.entries, ps.content_bytes),
            (stats.entries, stats.content_bytes)
        );
    }

    fn tar_with(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        b.into_inner().unwrap()
    }

    fn header(kind: tar::EntryType, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(0o644);
        h.set_mtime(1000);
        h.set_uid(0);
        h.set_gid(0);
        h
    }

    fn raw_name(h: &mut tar::Header, name: &str) {
        let n = name.as_bytes();
        h.as_old_mut().name[..n.len()].copy_from_slice(n);
    }

    fn raw_link(h: &mut tar::Header, name: &str) {
        let n = name.as_bytes();
        h.as_old_mut().linkname[..n.len()].copy_from_slice(n);
    }

    fn refused(data: Vec<u8>) -> String {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let e = unpack_tar(&data[..], &root, &opts())
            .unwrap_err()
            .to_string();
        assert!(!d.path().join("x").exists() && !d.path().join("escaped").exists());
        e
    }

    #[test]
    fn dotdot_and_absolute_refused() {
        for name in ["../x", "/abs/x", "a/../../x"] {
            let data = tar_with(|b| {
                let mut h = header(tar::EntryType::Regular, 1);
                raw_name(&mut h, name);
                h.set_cksum();
                b.append(&h, &b"x"[..]).unwrap();
            });
            let e = refused(data);
            assert!(e.contains(&format!("entry {name}")), "{e}");
        }
    }

    #[test]
    fn symlink_then_write_refused() {
        for target in ["..", "/tmp", "../..", "sub/../.."] {
            let data = tar_with(|b| {
                let mut h = header(tar::EntryType::Symlink, 0);
                raw_name(&mut h, "evil");
                raw_link(&mut h, target);
                h.set_cksum();
                b.append(&h, io::empty()).unwrap();
                let mut h = header(tar::EntryType::Regular, 1);
                raw_name(&mut h, "evil/escaped");
                h.set_cksum();
                b.append(&h, &b"x"[..]).unwrap();
            });
            let e = refused(data);
            assert!(
                e.contains("evil/escaped") && e.contains("symlink evil"),
                "{e}"
            );
        }
    }

    /// Small files are written by the pool's workers while the archive is still parsed; each
    /// later entry must still meet the file as an unpack in archive order leaves it.
    #[test]
    fn archive_order_holds_while_files_are_in_flight() {
        fn file(b: &mut tar::Builder<Vec<u8>>, name: &str, body: &[u8]) {
            let mut h = header(tar::EntryType::Regular, body.len() as u64);
            raw_name(&mut h, name);
            h.set_cksum();
            b.append(&h, body).unwrap();
        }
        fn special(b: &mut tar::Builder<Vec<u8>>, kind: tar::EntryType, name: &str, to: &str) {
            let mut h = header(kind, 0);
            raw_name(&mut h, name);
            raw_link(&mut h, to);
            h.set_cksum();
            b.append(&h, io::empty()).unwrap();
        }
        let data = tar_with(|b| {
            // Enough files to fill the budget several times, in a few directories.
            for i in 0..3000 {
                file(
                    b,
                    &format!("d{}/f{i}", i % 7),
                    &vec![(i % 251) as u8; 1 + i * 13 % 4000],
                );
            }
            file(b, "dup", b"first");
            file(b, "dup", b"second");
            file(b, "target", b"linked content");
            special(b, tar::EntryType::Link, "hard", "target");
            file(b, "becomes-link", b"old");
            special(b, tar::EntryType::Symlink, "becomes-link", "dup");
            file(b, "becomes-dir", b"old");
            let mut h = header(tar::EntryType::Directory, 0);
            raw_name(&mut h, "becomes-dir");
            h.set_cksum();
            b.append(&h, io::empty()).unwrap();
            file(b, "becomes-dir/inside", b"in");
        });
        let d = tempfile::tempdir().unwrap();
        let st = unpack_tar(&data[..], d.path(), &opts()).unwrap();
        for i in 0..3000 {
            let got = std::fs::read(d.path().join(format!("d{}/f{i}", i % 7))).unwrap();
            assert_eq!(got, vec![(i % 251) as u8; 1 + i * 13 % 4000], "f{i}");
        }
        assert_eq!(std::fs::read(d.path().join("dup")).unwrap(), b"second");
        assert_eq!(
            std::fs::read(d.path().join("hard")).unwrap(),
            b"linked content"
        );
        let (t, h) = (
            std::fs::metadata(d.path().join("target")).unwrap(),
            std::fs::metadata(d.path().join("hard")).unwrap(),
        );
        assert_eq!(t.ino(), h.ino());
        assert_eq!(
            std::fs::read_link(d.path().join("becomes-link")).unwrap(),
            Path::new("dup")
        );
        assert_eq!(
            std::fs::read(d.path().join("becomes-dir/inside")).unwrap(),
            b"in"
        );
        // The directories' times are set after their files are in.
        let md = std::fs::metadata(d.path().join("d3")).unwrap();
        assert_eq!(md.mtime(), 0, "implied directory keeps its fixed mtime");
        assert!(st.content_bytes > 3000);
    }

    #[test]
    fn hardlink_outside_refused() {
        let data = tar_with(|b| {
            let mut h = header(tar::EntryType::Link, 0);
            raw_name(&mut h, "h");
            raw_link(&mut h, "../x");
            h.set_cksum();
            b.append(&h, io::empty()).unwrap();
        });
        let e = refused(data);
        assert!(
            e.contains("entry h") && e.contains("leaves the layer"),
            "{e}"
        );
    }

    #[test]
    fn verified_unpack_checks_the_compressed_file_in_the_same_read() {
        use sha2::Digest;
        let data = tar_with(|b| {
            for i in 0..32u32 {
                let body: Vec<u8> = (0..8192u32).map(|k| (k * 13 + i) as u8).collect();
                let mut h = header(tar::EntryType::Regular, body.len() as u64);
                raw_name(&mut h, &format!("f{i}"));
                h.set_cksum();
                b.append(&h, &body[..]).unwrap();
            }
        });
        let zst = zstd::encode_all(&data[..], 3).unwrap();
        let d = tempfile::tempdir().unwrap();
        let blob = d.path().join("blob");
        let good = Expected {
            sha256: hex::encode(sha2::Sha256::digest(&zst)),
            size: zst.len() as u64,
        };
        let run = |content: &[u8], exp: &Expected| {
            std::fs::write(&blob, content).unwrap();
            let root = d.path().join(format!("root-{}", rand::random::<u32>()));
            std::fs::create_dir(&root).unwrap();
            unpack_verified(&blob, exp, &root, &opts(), "test")
        };
        let ok = run(&zst, &good).unwrap();
        assert_eq!(
            ok.tar_sha256.as_deref(),
            Some(hex::encode(sha2::Sha256::digest(&data)).as_str())
        );
        assert_eq!(ok.stats.entries, 32);
        // Trailing bytes after the last frame are part of the file, hence of its digest.
        let mut longer = zst.clone();
        longer.extend_from_slice(&[0u8; 7]);
        let e = run(&longer, &good).unwrap_err().to_string();
        assert!(e.contains("digest mismatch"), "{e}");
        // Truncated, damaged in the middle: a digest error, not the decoder's complaint.
        for bad in [zst[..zst.len() / 2].to_vec(), {
            let mut v = zst.clone();
            let mid = v.len() / 2;
            v[mid] ^= 0xff;
            v
        }] {
            let exp = Expected {
                sha256: good.sha256.clone(),
                size: bad.len() as u64,
            };
            let e = run(&bad, &exp).unwrap_err().to_string();
            assert!(e.contains("digest mismatch") && e.contains("blob"), "{e}");
        }
        // Right digest, wrong length stated.
        let exp = Expected {
            sha256: good.sha256.clone(),
            size: good.size + 1,
        };
        let e = run(&zst, &exp).unwrap_err().to_string();
        assert!(e.contains("differs from the descriptor"), "{e}");
    }

    #[test]
    fn plain_unpack_keeps_modes_links_and_times() {
        let data = tar_with(|b| {
            let mut h = header(tar::EntryType::Directory, 0);
            raw_name(&mut h, "top/d/");
            h.set_mode(0o555);
            h.set_mtime(77);
            h.set_cksum();
            b.append(&h, io::empty()).unwrap();
            let mut h = header(tar::EntryType::Regular, 2);
            raw_name(&mut h, "top/d/f");
            h.set_mode(0o4755);
            h.set_cksum();
            b.append(&h, &b"hi"[..]).unwrap();
            let mut h = header(tar::EntryType::Link, 0);
            raw_name(&mut h, "top/g");
            raw_link(&mut h, "top/d/f");
            h.set_cksum();
            b.append(&h, io::empty()).unwrap();
        });
        let d = tempfile::tempdir().unwrap();
        let mut o = opts();
        o.strip_top = true;
        let st = unpack_tar(&data[..], d.path(), &o).unwrap();
        assert_eq!(st.entries, 3);
        use std::os::unix::fs::MetadataExt;
        let f = std::fs::metadata(d.path().join("d/f")).unwrap();
        assert_eq!(f.mode() & 0o7777, 0o755, "setuid dropped for plain trees");
        assert_eq!(f.nlink(), 2);
        let dm = std::fs::metadata(d.path().join("d")).unwrap();
        assert_eq!((dm.mode() & 0o7777, dm.mtime()), (0o555, 77));
        std::fs::set_permissions(d.path().join("d"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
    }

    #[test]
    fn modes_are_exact_whether_given_at_creation_or_set_after() {
        // Under the usual umask 022, 0644 and 0750 are given at creation; 0666 and 0777 lose
        // bits to it and 0400, 0500 and 0555 cannot be filled as they are, so those are set
        // afterwards. Whatever the umask is, every mode must come out as archived, and an
        // archive's implied directory as 0755.
        let files = [("a", 0o644), ("b", 0o666), ("c", 0o400), ("d/e", 0o600)];
        let dirs = [("d", 0o750), ("f", 0o777), ("g", 0o555), ("h", 0o500)];
        let data = tar_with(|b| {
            for (name, mode) in dirs {
                let mut h = header(tar::EntryType::Directory, 0);
                raw_name(&mut h, &format!("{name}/"));
                h.set_mode(mode);
                h.set_cksum();
                b.append(&h, io::empty()).unwrap();
            }
            for (name, mode) in files
                .iter()
                .copied()
                .chain([("g/i", 0o644), ("j/k", 0o664)])
            {
                let mut h = header(tar::EntryType::Regular, 1);
                raw_name(&mut h, name);
                h.set_mode(mode);
                h.set_cksum();
                b.append(&h, &b"x"[..]).unwrap();
            }
        });
        let d = tempfile::tempdir().unwrap();
        unpack_tar(&data[..], d.path(), &opts()).unwrap();
        use std::os::unix::fs::MetadataExt;
        let mode = |p: &str| std::fs::metadata(d.path().join(p)).unwrap().mode() & 0o7777;
        for (name, m) in files.iter().chain(dirs.iter()) {
            assert_eq!(mode(name), *m, "{name}");
        }
        assert_eq!((mode("g/i"), mode("j/k"), mode("j")), (0o644, 0o664, 0o755));
        for p in ["g", "h"] {
            std::fs::set_permissions(d.path().join(p), std::fs::Permissions::from_mode(0o755))
                .unwrap();
        }
    }

    #[test]
    fn unset_numeric_fields_read_as_zero_like_gnu_tar() {
        // Tools that leave ownership unset write uid and gid as NUL bytes; GNU tar and
        // libarchive read them as 0.
        let entry = |uid: &[u8]| {
            tar_with(|b| {
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(2);
                h.set_mode(0o644);
                h.set_mtime(1000);
                raw_name(&mut h, "etc/os-release");
                h.as_old_mut().uid[..uid.len()].copy_from_slice(uid);
                h.set_cksum();
                b.append(&h, &b"hi"[..]).unwrap();
            })
        };
        let d = tempfile::tempdir().unwrap();
        let st = unpack_tar(&entry(b"")[..], d.path(), &opts()).unwrap();
        assert_eq!(st.entries, 1);
        assert_eq!(
            std::fs::read(d.path().join("etc/os-release")).unwrap(),
            b"hi"
        );
        assert_eq!(numeric(Ok(7), &[0; 8]).unwrap(), 7);
        // A field that holds something other than a number stays refused.
        let e = refused(entry(b"12x4"));
        assert!(e.contains("etc/os-release") && e.contains("bad uid"), "{e}");
    }
}
