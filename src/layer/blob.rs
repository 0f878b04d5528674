//! What a layer blob is, apart from how it is written: its compression and the description of a
//! written blob. Both the OCI layout code and the layer helper's protocol speak of blobs, so these
//! types live below both.

use serde::{Deserialize, Serialize};

/// The OCI media type of an uncompressed layer tarball.
pub const MT_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

/// Compression of layer blobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// zstd level 3 on all cores (`tar+zstd`)
    #[default]
    Zstd,
    /// gzip (`tar+gzip`), readable by older tools
    Gzip,
}

impl Compression {
    pub fn media_type(self) -> String {
        match self {
            Compression::Zstd => format!("{MT_LAYER}+zstd"),
            Compression::Gzip => format!("{MT_LAYER}+gzip"),
        }
    }
}

/// A written layer blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobInfo {
    /// sha256 (hex) of the uncompressed tarball (the layer id).
    pub diff_id: String,
    /// sha256 (hex) of the blob.
    pub digest: String,
    pub size: u64,
    pub media_type: String,
}
