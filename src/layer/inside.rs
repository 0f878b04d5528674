//! The inside half of the layer helper: `gbuild __layer-helper REQUEST-JSON` runs here, already in
//! the user namespace, does the layer work the request asks for and prints the answer on stdout.
//! `ns.rs` holds the protocol and the outside half that starts it.

use std::io::Write;
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
    .is_err()
    {
        return 1;
    }
    code
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
        } => Reply::Committed(commit_upper(store, &upper, parent.as_deref(), &source)?),
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
/// `upper`. An empty upper dir makes no layer (`None`). Runs inside the namespace.
pub fn commit_upper(
    store: &Store,
    upper: &Path,
    parent: Option<&str>,
    source: &str,
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
    let r = (|| {
        let opts = super::unpack::UnpackOptions {
            label: format!("commit of {}", upper.display()),
            owners: true,
            oci_whiteouts: true,
            strip_top: false,
            strict_xattrs: true,
            link_from: None,
        };
        let bar = Arc::new(crate::progress::bytes("commit layer", None));
        let b2 = bar.clone();
        let up = upper.to_path_buf();
        let res = super::unpack::pipeline(
            move |w| super::pack::pack_dir(&up, w, Some(&b2)).map(|_| ()),
            &tmp,
            &opts,
        )?;
        bar.done();
        super::publish(
            store,
            &tmp,
            LayerInfo {
                id: res.tar_sha256,
                parent: parent.map(str::to_string),
                source: source.to_string(),
                size: res.stats.content_bytes,
                entries: res.stats.entries,
                created: super::now_secs(),
                devices_skipped: res.stats.devices_skipped,
            },
        )
    })();
    match r {
        Ok(info) => {
            super::empty_dir(upper)?;
            Ok(Some(info))
        }
        Err(e) => {
            // Best effort beside the step's own error; gc removes a temporary-named leftover.
            let _ = super::remove_tree(&tmp);
            Err(e)
        }
    }
}

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
            };
            let what = format!("restore layer {}/{}", i + 1, blobs.len());
            let expected = super::unpack::Expected {
                sha256: b.digest.clone(),
                size: b.size,
            };
            let res = super::unpack::unpack_verified(&b.path, &expected, &tmp, &opts, &what)?;
            if res.tar_sha256 != b.diff_id {
                return Err(LayerError::Digest {
                    what: "uncompressed layer",
                    path: b.path.clone(),
                    expected: format!("sha256:{}", b.diff_id),
                    actual: format!("sha256:{}", res.tar_sha256),
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
