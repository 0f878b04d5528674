//! Layer work that must happen inside the user namespace (files owned by subordinate ids can only
//! be created, read and removed there), done by re-executing gbuild as a hidden helper
//! (`gbuild __layer-helper REQUEST-JSON`) through `userns::spawn`. The request goes in as one
//! argument, the answer comes back on stdout as `{"ok": {"reply": KIND, "value": ...}}` (one reply
//! kind per request, checked by the outside half) or `{"error": "..."}`; stderr stays the
//! terminal, so progress bars drawn by the helper show. The helper dies with its parent.
//!
//! This module is the protocol and its outside half, `Helper` (what the verbs and the builder
//! call); `inside.rs` is the inside half, which runs the requests.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde::{Deserialize, Serialize};

use super::blob::{BlobInfo, Compression};
use super::{LayerError, LayerInfo, Result};
use crate::idmap::IdMapping;
use crate::store::Store;

/// One layer blob to unpack during a restore.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BlobToUnpack {
    pub path: PathBuf,
    /// Expected sha256 (hex) and length of the blob file itself, checked in the same read that
    /// decompresses it.
    pub digest: String,
    pub size: u64,
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
        /// Also write the layer's blob in this compression into the blob cache, in the same pass.
        blob: Option<Compression>,
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

impl Request {
    /// The request's name on the wire (its `op`), for diagnostics.
    pub fn op(&self) -> &'static str {
        match self {
            Request::UnpackRootfs { .. } => "unpack-rootfs",
            Request::Commit { .. } => "commit",
            Request::PackBlobs { .. } => "pack-blobs",
            Request::UnpackBlobs { .. } => "unpack-blobs",
            Request::RemoveTrees { .. } => "remove-trees",
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Envelope {
    pub store: PathBuf,
    pub quiet: bool,
    pub parent_pid: u32,
    pub request: Request,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum Answer {
    Ok(Reply),
    Error(String),
}

/// The answer to each request, typed: the outside half takes only the reply its request has.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "reply", content = "value", rename_all = "kebab-case")]
pub(super) enum Reply {
    /// `UnpackRootfs`.
    Layer(LayerInfo),
    /// `Commit` (`None`: the upper dir was empty).
    Committed(Option<LayerInfo>),
    /// `PackBlobs`.
    Blobs(Vec<BlobInfo>),
    /// `UnpackBlobs`.
    Layers(Vec<LayerInfo>),
    /// `RemoveTrees`.
    Removed,
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

    /// Send one request and wait for its reply.
    fn call(&self, request: Request) -> Result<Reply> {
        tracing::debug!("layer helper: {}", request.op());
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
        let out = child.wait_with_output().map_err(LayerError::HelperWait)?;
        let text = String::from_utf8_lossy(&out.stdout);
        match serde_json::from_str::<Answer>(text.trim()) {
            Ok(Answer::Ok(reply)) => Ok(reply),
            Ok(Answer::Error(msg)) => Err(LayerError::HelperReported(msg)),
            Err(_) => Err(LayerError::HelperExit {
                status: out.status,
                output: text.trim().to_string(),
            }),
        }
    }

    pub fn unpack_rootfs(&self, tarball: &Path, source: &str) -> Result<LayerInfo> {
        match self.call(Request::UnpackRootfs {
            tarball: abs(tarball),
            source: source.to_string(),
        })? {
            Reply::Layer(l) => Ok(l),
            other => Err(unexpected("unpack-rootfs", &other)),
        }
    }

    pub fn commit(
        &self,
        upper: &Path,
        parent: Option<&str>,
        source: &str,
        blob: Option<Compression>,
    ) -> Result<Option<LayerInfo>> {
        // An empty upper dir makes no layer: when it can be listed from here, that takes no
        // namespace (one that cannot is the helper's to list, or to report).
        if std::fs::read_dir(upper).is_ok_and(|mut d| d.next().is_none()) {
            return Ok(None);
        }
        match self.call(Request::Commit {
            upper: abs(upper),
            parent: parent.map(str::to_string),
            source: source.to_string(),
            blob,
        })? {
            Reply::Committed(l) => Ok(l),
            other => Err(unexpected("commit", &other)),
        }
    }

    pub fn pack_blobs(
        &self,
        layers: &[String],
        blob_dir: &Path,
        compression: Compression,
    ) -> Result<Vec<BlobInfo>> {
        match self.call(Request::PackBlobs {
            layers: layers.to_vec(),
            blob_dir: abs(blob_dir),
            compression,
        })? {
            Reply::Blobs(b) => Ok(b),
            other => Err(unexpected("pack-blobs", &other)),
        }
    }

    pub fn unpack_blobs(&self, blobs: Vec<BlobToUnpack>, source: &str) -> Result<Vec<LayerInfo>> {
        match self.call(Request::UnpackBlobs {
            blobs,
            source: source.to_string(),
        })? {
            Reply::Layers(l) => Ok(l),
            other => Err(unexpected("unpack-blobs", &other)),
        }
    }

    /// Remove trees that may hold files owned by subordinate ids (layers, upper and work dirs).
    pub fn remove_trees(&self, paths: &[PathBuf]) -> Result<()> {
        if paths.is_empty() {
            return Ok(());
        }
        match self.call(Request::RemoveTrees {
            paths: paths.iter().map(|p| abs(p)).collect(),
        })? {
            Reply::Removed => Ok(()),
            other => Err(unexpected("remove-trees", &other)),
        }
    }
}

/// A reply of another request's kind: a helper of another gbuild version, or a bug.
fn unexpected(op: &'static str, reply: &Reply) -> LayerError {
    LayerError::HelperAnswer {
        request: op,
        reply: format!("{reply:?}"),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_round_trip_with_their_reply_kind() {
        for a in [
            Answer::Ok(Reply::Committed(None)),
            Answer::Ok(Reply::Removed),
            Answer::Ok(Reply::Layers(Vec::new())),
            Answer::Error("no such layer".into()),
        ] {
            let text = serde_json::to_string(&a).unwrap();
            let back: Answer = serde_json::from_str(&text).unwrap();
            assert_eq!(format!("{a:?}"), format!("{back:?}"), "{text}");
        }
        // An untyped value is not an answer.
        assert!(serde_json::from_str::<Answer>(r#"{"ok": null}"#).is_err());
        let e = unexpected("commit", &Reply::Removed).to_string();
        assert!(e.contains("commit") && e.contains("Removed"), "{e}");
    }

    #[test]
    fn a_request_names_itself_as_the_wire_does() {
        let p = PathBuf::from("/x");
        for r in [
            Request::UnpackRootfs {
                tarball: p.clone(),
                source: String::new(),
            },
            Request::Commit {
                upper: p.clone(),
                parent: None,
                source: String::new(),
                blob: Some(Compression::Zstd),
            },
            Request::PackBlobs {
                layers: Vec::new(),
                blob_dir: p.clone(),
                compression: Compression::Gzip,
            },
            Request::UnpackBlobs {
                blobs: Vec::new(),
                source: String::new(),
            },
            Request::RemoveTrees { paths: Vec::new() },
        ] {
            let v = serde_json::to_value(&r).unwrap();
            assert_eq!(v["op"], r.op(), "{v}");
        }
    }
}
