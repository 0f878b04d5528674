//! Layer work that must happen inside the user namespace (files owned by subordinate ids can only
//! be created, read and removed there), done by re-executing gbuild as a hidden helper
//! (`gbuild __layer-helper REQUEST-JSON`) through `userns::spawn`. The request goes in as one
//! argument, the answer comes back on stdout as `{"ok": ...}` or `{"error": "..."}`; stderr stays
//! the terminal, so progress bars drawn by the helper show. The helper dies with its parent.
//!
//! `Helper` is the outside half (what the verbs and the builder call); `serve` the inside half.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::oci::{BlobInfo, Compression};
use super::{LayerError, LayerInfo, Result};
use crate::idmap::IdMapping;
use crate::store::Store;

/// One layer blob to unpack during a restore.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BlobToUnpack {
    pub path: PathBuf,
    /// Expected sha256 (hex) of the uncompressed tarball.
    pub diff_id: String,
}

/// What the helper can do.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    /// Unpack a root filesystem tarball into a new layer -> `LayerInfo`.
    UnpackRootfs { tarball: PathBuf, source: String },
    /// Turn an overlay upper dir into a new layer and empty it -> `Option<LayerInfo>`.
    Commit {
        upper: PathBuf,
        parent: Option<String>,
        source: String,
    },
    /// Write the compressed canonical blob of each layer into `blob_dir` -> `Vec<BlobInfo>`.
    PackBlobs {
        layers: Vec<String>,
        blob_dir: PathBuf,
        compression: Compression,
    },
    /// Unpack OCI layer blobs into layers, all or none -> `Vec<LayerInfo>`.
    UnpackBlobs {
        blobs: Vec<BlobToUnpack>,
        source: String,
    },
    /// Remove directory trees -> `()`.
    RemoveTrees { paths: Vec<PathBuf> },
}

#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    store: PathBuf,
    quiet: bool,
    parent_pid: u32,
    request: Request,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Answer {
    Ok(serde_json::Value),
    Error(String),
}

/// Runs layer requests inside a user namespace with `map`.
#[derive(Debug, Clone)]
pub struct Helper {
    pub store: Store,
    pub map: IdMapping,
}

impl Helper {
    pub fn new(store: Store, map: IdMapping) -> Helper {
        Helper { store, map }
    }

    /// Send one request and wait for the answer.
    pub fn call<T: DeserializeOwned>(&self, request: Request) -> Result<T> {
        let env = Envelope {
            store: self.store.root().to_path_buf(),
            quiet: crate::progress::quiet(),
            parent_pid: std::process::id(),
            request,
        };
        let json = serde_json::to_string(&env).expect("serialisable");
        let mut cmd = crate::userns::self_command(["__layer-helper"]);
        cmd.arg(json).stdout(Stdio::piped()).stdin(Stdio::null());
        crate::sys::kill_child_with_parent(&mut cmd, nix::sys::signal::Signal::SIGKILL);
        let child = crate::userns::spawn(cmd, &self.map)?;
        let out = child
            .wait_with_output()
            .map_err(|e| LayerError::Helper(format!("layer helper: {e}")))?;
        let text = String::from_utf8_lossy(&out.stdout);
        match serde_json::from_str::<Answer>(text.trim()) {
            Ok(Answer::Ok(v)) => serde_json::from_value(v)
                .map_err(|e| LayerError::Helper(format!("layer helper answer: {e}"))),
            Ok(Answer::Error(msg)) => Err(LayerError::Helper(msg)),
            Err(_) => Err(LayerError::Helper(format!(
                "layer helper failed ({}){}",
                out.status,
                if text.trim().is_empty() {
                    String::new()
                } else {
                    format!(": {}", text.trim())
                }
            ))),
        }
    }

    pub fn unpack_rootfs(&self, tarball: &Path, source: &str) -> Result<LayerInfo> {
        self.call(Request::UnpackRootfs {
            tarball: abs(tarball),
            source: source.to_string(),
        })
    }

    pub fn commit(
        &self,
        upper: &Path,
        parent: Option<&str>,
        source: &str,
    ) -> Result<Option<LayerInfo>> {
        self.call(Request::Commit {
            upper: abs(upper),
            parent: parent.map(str::to_string),
            source: source.to_string(),
        })
    }

    pub fn pack_blobs(
        &self,
        layers: &[String],
        blob_dir: &Path,
        compression: Compression,
    ) -> Result<Vec<BlobInfo>> {
        self.call(Request::PackBlobs {
            layers: layers.to_vec(),
            blob_dir: abs(blob_dir),
            compression,
        })
    }

    pub fn unpack_blobs(&self, blobs: Vec<BlobToUnpack>, source: &str) -> Result<Vec<LayerInfo>> {
        self.call(Request::UnpackBlobs {
            blobs,
            source: source.to_string(),
        })
    }

    /// Remove trees that may hold files owned by subordinate ids (layers, upper and work dirs).
    pub fn remove_trees(&self, paths: &[PathBuf]) -> Result<()> {
        if paths.is_empty() {
            return Ok(());
        }
        self.call(Request::RemoveTrees {
            paths: paths.iter().map(|p| abs(p)).collect(),
        })
    }
}

fn abs(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    }
}

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
    println!("{}", serde_json::to_string(&answer).expect("serialisable"));
    code
}

fn handle(store: &Store, req: Request) -> Result<serde_json::Value> {
    let v = |x: serde_json::Result<serde_json::Value>| x.expect("serialisable");
    Ok(match req {
        Request::UnpackRootfs { tarball, source } => v(serde_json::to_value(
            super::unpack::unpack_rootfs(store, &tarball, &source)?,
        )),
        Request::Commit {
            upper,
            parent,
            source,
        } => v(serde_json::to_value(commit_upper(
            store,
            &upper,
            parent.as_deref(),
            &source,
        )?)),
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
            v(serde_json::to_value(out))
        }
        Request::UnpackBlobs { blobs, source } => {
            v(serde_json::to_value(unpack_blobs(store, &blobs, &source)?))
        }
        Request::RemoveTrees { paths } => {
            for p in &paths {
                super::remove_tree(p)?;
            }
            serde_json::Value::Null
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
            let res = super::unpack::unpack_file(&b.path, &tmp, &opts, &what)?;
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
