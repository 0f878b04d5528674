//! Layer work that must happen inside the user namespace (files owned by subordinate ids can only
//! be created, read and removed there), done by re-executing gbuild as a hidden helper
//! (`gbuild __layer-helper REQUEST-JSON`) through `userns::spawn`. The request goes in as one
//! argument, the answer comes back on stdout as `{"ok": ...}` or `{"error": "..."}`; stderr stays
//! the terminal, so progress bars drawn by the helper show. The helper dies with its parent.
//!
//! This module is the protocol and its outside half, `Helper` (what the verbs and the builder
//! call); `inside.rs` is the inside half, which runs the requests.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::blob::{BlobInfo, Compression};
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
pub(super) struct Envelope {
    pub store: PathBuf,
    pub quiet: bool,
    pub parent_pid: u32,
    pub request: Request,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum Answer {
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
