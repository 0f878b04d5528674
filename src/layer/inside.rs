//! The inside half of the layer helper: `gbuild __layer-helper REQUEST-JSON` runs here, already in
//! the user namespace, does the layer work the request asks for and prints the answer on stdout.
//! `ns.rs` holds the protocol and the outside half that starts it.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::ns::{Answer, BlobToUnpack, Envelope, Reply, Request};
use super::{LayerError, LayerInfo, Result};
use crate::store::Store;

/// The inside half: run the request in `json` and print the answer. Returns the exit status.
pub fn serve(json: &str) -> i32 {
    let answer = match serde_json::from_str::<Envelope>(json) {
        Ok(env) => {
            // A credential change cleared the parent-death signal set before exec: set it again.
            let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);
            if nix::unistd::getppid().as_raw() as u32 != env.parent_pid {
                return 1;
            }
            crate::progress::set_quiet(env.quiet);
            let store = Store::at(&env.store);
            match handle(&store, env.request) {
                Ok(v) => Answer::Ok(v),
                Err(e) => Answer::Error(e.to_string()),
            }
        }
        Err(e) => Answer::Error(format!("bad layer helper request: {e}")),
    };
    let code = matches!(answer, Answer::Error(_)) as i32;
    // The answer is the protocol's stdout, not a message: a failed write shows as a helper that
    // answered nothing, which the outside half reports with the exit status.
    let mut out = std::io::stdout().lock();
    if writeln!(
        out,
        "{}",
        serde_json::to_string(&answer).expect("serialisable")
    )
    .and_then(|()| out.flush())
    .is_err()
    {
        return 1;
    }
    drop(out);
    remove_deferred();
    code
}

/// Trees this request emptied out of the way (`empty_dir_deferred`), removed once it answered.
static DEFERRED: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

fn defer_removal(dir: PathBuf) {
    DEFERRED.lock().unwrap_or_else(|e| e.into_inner()).push(dir);
}

/// Remove the deferred trees without keeping the caller waiting: a detached child (in the same
/// user namespace, so it may remove files of subordinate ids) does it after this process has
/// exited and the caller has its answer. When no child can be made, they are removed here.
fn remove_deferred() {
    let dirs = std::mem::take(&mut *DEFERRED.lock().unwrap_or_else(|e| e.into_inner()));
    if dirs.is_empty() {
        return;
    }
    // The child renames the trees after itself before this process exits and the caller lets
    // go of the store lock: under the name of this process, which is dead once it exits, `gc`
    // would remove them at the same time.
    let Ok((ready_r, ready_w)) = nix::unistd::pipe() else {
        for d in &dirs {
            crate::fsutil::remove_tree_or_warn(d);
        }
        return;
    };
    match crate::sys::fork_single_threaded() {
        Ok(nix::unistd::ForkResult::Parent { .. }) => {
            drop(ready_w);
            let mut b = [0u8; 1];
            // Returns at the child's exit or once it renamed the trees; either is enough.
            let _ = nix::unistd::read(ready_r.as_raw_fd(), &mut b);
        }
        Ok(nix::unistd::ForkResult::Child) => {
            drop(ready_r);
            let mine: Vec<PathBuf> = dirs
                .iter()
                .map(|d| {
                    let to = d.parent().map(|p| {
                        crate::fsutil::temp_path(p, &format!("{}-trash", super::TEMP_PURPOSE))
                    });
                    match to {
                        Some(m) if std::fs::rename(d, &m).is_ok() => m,
                        _ => d.clone(),
                    }
                })
                .collect();
            drop(ready_w);
            // Not holding the caller's pipes or terminal open, not in its process group.
            let _ = nix::unistd::setsid();
            if let Ok(null) = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")
            {
                for fd in 0..3 {
                    // Cannot fail for open descriptors; a standard one left open only keeps
                    // the caller's pipe open a little longer.
                    let _ = nix::unistd::dup2(null.as_raw_fd(), fd);
                }
            }
            for d in &mine {
                // Nobody reads this process's errors: a tree left over has a temporary name of
                // a process that is gone, which `gc` removes.
                let _ = super::remove_tree(d);
            }
            std::process::exit(0);
        }
        Err(_) => {
            for d in &dirs {
                crate::fsutil::remove_tree_or_warn(d);
            }
        }
    }
}

fn handle(store: &Store, req: Request) -> Result<Reply> {
    Ok(match req {
        Request::UnpackRootfs { tarball, source } => {
            Reply::Layer(super::unpack::unpack_rootfs(store, &tarball, &source)?)
        }
        Request::Commit {
            upper,
            parent,
            source,
            blob,
        } => Reply::Committed(commit_upper(
            store,
            &upper,
            parent.as_deref(),
            &source,
            blob,
        )?),
        Request::PackBlobs {
            layers,
            blob_dir,
            compression,
        } => {
            let total: u64 = layers
                .iter()
                .map(|id| super::layer_info(store, id).map(|i| i.size))
                .sum::<Result<u64>>()?;
            let bar = crate::progress::bytes("snapshot layers", Some(total));
            let mut out = Vec::new();
            for id in &layers {
                out.push(super::oci::pack_blob(
                    store,
                    id,
                    &blob_dir,
                    compression,
                    Some(&bar),
                )?);
            }
            bar.done();
            Reply::Blobs(out)
        }
        Request::UnpackBlobs { blobs, source } => {
            Reply::Layers(unpack_blobs(store, &blobs, &source)?)
        }
        Request::RemoveTrees { paths } => {
            for p in &paths {
                super::remove_tree(p)?;
            }
            Reply::Removed
        }
    })
}

/// Turn the overlay upper dir `upper` into a new sealed layer (overlay whiteouts become OCI
/// whiteouts in the canonical tarball, and overlay whiteouts again in the layer), then empty
/// `upper`. An empty upper dir makes no layer (`None`). With `blob`, the same pass also writes
/// the layer's blob in that compression into the blob cache (a snapshot that follows links it
/// rather than packing the layer again). Runs inside the namespace.
pub fn commit_upper(
    store: &Store,
    upper: &Path,
    parent: Option<&str>,
    source: &str,
    blob: Option<super::blob::Compression>,
) -> Result<Option<LayerInfo>> {
    use crate::fsutil::IoContext;
    if std::fs::read_dir(upper)
        .at("read directory", upper)?
        .next()
        .is_none()
    {
        return Ok(None);
    }
    let tmp = super::temp_dir(store, "commit")?;
    let blob_writer = match blob {
        Some(c) => {
            let dir = store.cached_blobs();
            std::fs::create_dir_all(&dir).at("create directory", &dir)?;
            // The pipeline hashes the stream for the layer id, which is the blob's diff id.
            Some(super::oci::BlobWriter::of_hashed_stream(&dir, "commit", c)?)
        }
        None => None,
    };
    let blob_tmp = blob_writer.as_ref().map(|w| w.path().to_path_buf());
    let r = (|| {
        let opts = super::unpack::UnpackOptions {
            label: format!("commit of {}", upper.display()),
            owners: true,
            oci_whiteouts: true,
            strip_top: false,
            strict_xattrs: true,
            // The layer's files are the upper dir's, linked: nothing is written twice, and
            // emptying the upper dir afterwards frees no data.
            link_from: Some(upper.to_path_buf()),
            link_from_is_source: true,
        };
        let bar = Arc::new(crate::progress::bytes("commit layer", None));
        let b2 = bar.clone();
        let up = upper.to_path_buf();
        // The producer hands the blob writer back once the whole stream is in it.
        let (res, pending) = super::unpack::pipeline(
            move |w| match blob_writer {
                None => super::pack::pack_dir(&up, w, Some(&b2)).map(|_| None),
                Some(bw) => {
                    // The packer writes many small headers: the encoder gets large pieces.
                    let mut tee = Tee {
                        stream: w,
                        blob: super::pack::SinkBuf::new(1 << 20, bw),
                    };
                    super::pack::pack_dir(&up, &mut tee, Some(&b2))?;
                    tee.blob
                        .into_inner()
                        .map(Some)
                        .map_err(LayerError::Unpacker)
                }
            },
            &tmp,
            &opts,
            super::unpack::StreamHash::Compute,
        )?;
        let id = res
            .tar_sha256
            .expect("StreamHash::Compute hashes the stream");
        bar.done();
        let layer = LayerInfo {
            id,
            parent: parent.map(str::to_string),
            source: source.to_string(),
            size: res.stats.content_bytes,
            entries: res.stats.entries,
            created: super::now_secs(),
            devices_skipped: res.stats.devices_skipped,
        };
        // The compressor's last jobs and the blob's fsync overlap the layer's sync and rename.
        let (published, finished) = std::thread::scope(|s| {
            let finishing = pending.map(|w| s.spawn(move || w.finish()));
            let published = super::publish(store, &tmp, layer);
            let finished =
                finishing.map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)));
            (published, finished)
        });
        let info = published?;
        if let (Some(c), Some(w)) = (blob, finished.transpose()?) {
            // Its diff id is the layer id: both are the sha256 of the one stream.
            super::oci::cache_new_blob(store, &w.info(info.id.clone()), &w.path, c)?;
        }
        Ok(info)
    })();
    match r {
        Ok(info) => {
            if let Some(trash) = super::empty_dir_deferred(store, upper)? {
                defer_removal(trash);
            }
            Ok(Some(info))
        }
        Err(e) => {
            // Best effort beside the step's own error; gc removes a temporary-named leftover.
            let _ = super::remove_tree(&tmp);
            if let Some(t) = &blob_tmp {
                // Best effort too, for the same reason.
                let _ = std::fs::remove_file(t);
            }
            Err(e)
        }
    }
}

/// The commit's tar stream, written to the unpacker and to the blob being made of it.
struct Tee<'a, W: Write> {
    stream: &'a mut dyn Write,
    blob: W,
}

impl<W: Write> Write for Tee<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.stream.write(buf)?;
        self.blob.write_all(&buf[..n])?;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.stream.flush()?;
        self.blob.flush()
    }
}

impl<W: Write> super::pack::PackSink for Tee<'_, W> {}

/// Unpack OCI layer blobs (bottom first) into layers, checking each diff id; nothing is published
/// unless every blob unpacked and verified. Layers already in the store are kept.
pub fn unpack_blobs(store: &Store, blobs: &[BlobToUnpack], source: &str) -> Result<Vec<LayerInfo>> {
    let mut pending: Vec<(Option<PathBuf>, LayerInfo)> = Vec::new();
    let r = (|| {
        let mut parent: Option<String> = None;
        for (i, b) in blobs.iter().enumerate() {
            if let Ok(info) = super::layer_info(store, &b.diff_id) {
                parent = Some(info.id.clone());
                pending.push((None, info));
                continue;
            }
            let tmp = super::temp_dir(store, "restore")?;
            pending.push((
                Some(tmp.clone()),
                LayerInfo {
                    id: String::new(),
                    parent: None,
                    source: String::new(),
                    size: 0,
                    entries: 0,
                    created: 0,
                    devices_skipped: 0,
                },
            ));
            let opts = super::unpack::UnpackOptions {
                label: b.path.display().to_string(),
                owners: true,
                oci_whiteouts: true,
                strip_top: false,
                strict_xattrs: true,
                link_from: None,
                link_from_is_source: false,
            };
            let what = format!("restore layer {}/{}", i + 1, blobs.len());
            let expected = super::unpack::Expected {
                sha256: b.digest.clone(),
                size: b.size,
            };
            let res = super::unpack::unpack_verified(&b.path, &expected, &tmp, &opts, &what)?;
            let actual = res.tar_sha256.expect("a verified unpack hashes the stream");
            if actual != b.diff_id {
                return Err(LayerError::Digest {
                    what: "uncompressed layer",
                    path: b.path.clone(),
                    expected: format!("sha256:{}", b.diff_id),
                    actual: format!("sha256:{actual}"),
                });
            }
            let last = pending.last_mut().expect("just pushed");
            last.1 = LayerInfo {
                id: b.diff_id.clone(),
                parent: parent.clone(),
                source: source.to_string(),
                size: res.stats.content_bytes,
                entries: res.stats.entries,
                created: super::now_secs(),
                devices_skipped: res.stats.devices_skipped,
            };
            parent = Some(b.diff_id.clone());
        }
        Ok(())
    })();
    if let Err(e) = r {
        for (tmp, _) in &pending {
            if let Some(t) = tmp {
                // Best effort beside the step's own error; gc removes a temporary-named leftover.
                let _ = super::remove_tree(t);
            }
        }
        return Err(e);
    }
    // One syncfs for all the layers (they share the store's filesystem), before any rename.
    if let Some(t) = pending.iter().find_map(|(t, _)| t.as_ref()) {
        super::sync_tree(t)?;
    }
    let mut out = Vec::new();
    for (tmp, info) in pending {
        out.push(match tmp {
            Some(t) => super::publish_synced(store, &t, info, true)?,
            None => info,
        });
    }
    Ok(out)
}
