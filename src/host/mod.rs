//! Host configuration bundles (docs/design.md): what `gbuild host export` captures on a
//! Gentoo host (its /etc/portage, world, profile, tree snapshot identities, kernel, CPU flags and
//! the variables Portage uses), how a bundle is stored and validated (`bundle`), and the
//! comparison of two bundles that tells whether a builder still mirrors its host (`diff`), and
//! the host's installed-package database a bundle carries for the publish gate (`installed`).
//!
//! The same code captures the builder's side: `export_root` works on any root directory, so the
//! build loop compares the machine's imported bundle with an export of the builder's rootfs.

pub mod bundle;
pub mod diff;
pub mod export;
pub mod installed;
pub mod machine;
pub mod makeconf;
pub mod requests;
pub mod trust;
pub mod upgrade;

pub use bundle::{
    Bundle, Cpu, EntryKind, FileEntry, Manifest, Profile, Repo, Skipped, VarSource, FORMAT_VERSION,
    MANIFEST_NAME,
};
pub use diff::{diff, Diff, Difference, Ignored, Kind};
pub use export::{export_root, ExportOptions};

use std::path::PathBuf;

/// Errors of capturing, loading, validating and unpacking bundles.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error(transparent)]
    Fs(#[from] crate::fsutil::FsError),
    #[error("bundle {bundle}: entry {entry:?}: {reason}")]
    Entry {
        bundle: PathBuf,
        entry: String,
        reason: String,
    },
    #[error("bundle {bundle}: {reason}")]
    Bundle { bundle: PathBuf, reason: String },
    #[error(transparent)]
    MakeConf(#[from] makeconf::MakeConfError),
    #[error("{path}: {reason}")]
    Capture { path: PathBuf, reason: String },
}

impl HostError {
    pub(crate) fn entry(bundle: &std::path::Path, entry: &str, reason: impl Into<String>) -> Self {
        HostError::Entry {
            bundle: bundle.to_path_buf(),
            entry: entry.to_string(),
            reason: reason.into(),
        }
    }
    pub(crate) fn bundle(bundle: &std::path::Path, reason: impl Into<String>) -> Self {
        HostError::Bundle {
            bundle: bundle.to_path_buf(),
            reason: reason.into(),
        }
    }
}
