//! The signed record of a publication, for `gbuild host upgrade` on the host: what the binpkgs
//! were built for and on, so that the host can prove its configuration and tree are the same
//! before it installs anything.
//!
//! Written with every publication into its generation (`super::generations`), beside
//! `Packages`, so `/<M>/` and `/<M>@<tag>/` each serve the record of the index they serve:
//! - `bundle.tar`: the machine's configuration as the pass applied it (the imported host
//!   bundle), absent for a machine without one;
//! - `release.asc`: a JSON document, clearsigned with the store's binpkg signing key (the key
//!   hosts already trust for the binpkgs): the machine, the snapshot's file, size and SHA512 and
//!   its `metadata/timestamp.*`, the SHA256 and size of `bundle.tar`, and the atoms requested on
//!   demand that the pass built (the build set is the bundle's world plus these).
//!
//! Portage's `Packages` index is not signed; this record is what authenticates the tree a host
//! is brought to when Gentoo's own signature cannot be checked there.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{BuildEnv, BuilderError, MachineLock, Result};
use crate::fsutil::IoContext;
use crate::sign::Keys;
use crate::store::PublishedDir;

/// Version of the record's format.
pub const RELEASE_FORMAT: u32 = 1;
/// File names inside `published/` (and under `/<M>/` on the binhost).
pub const RELEASE_FILE: &str = PublishedDir::RELEASE;
pub const BUNDLE_FILE: &str = PublishedDir::BUNDLE;

/// The snapshot the binpkgs were built on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseSnapshot {
    /// `YYYYMMDD`, the file's date.
    pub date: String,
    /// `gentoo-<date>.tar.xz`.
    pub file: String,
    pub size: u64,
    pub sha512: String,
    /// The tree's `metadata/timestamp.*`.
    pub identity: crate::fetch::TreeIdentity,
}

/// The configuration the binpkgs were built for (`bundle.tar`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseBundle {
    pub sha256: String,
    pub size: u64,
}

/// `release.asc`'s signed body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    pub format: u32,
    pub machine: String,
    pub published_at: u64,
    pub snapshot: Option<ReleaseSnapshot>,
    pub bundle: Option<ReleaseBundle>,
    /// Atoms requested on demand and built with the world.
    #[serde(default)]
    pub requests: Vec<String>,
}

/// Write `bundle.tar` and `release.asc` into the publication being assembled in `dir`;
/// returns the record signed.
pub fn write(
    env: &BuildEnv,
    m: &MachineLock,
    keys: &Keys,
    dir: &Path,
    snapshot: &str,
) -> Result<Release> {
    let snap = crate::fetch::verified_snapshot(&env.store, snapshot).map(|a| ReleaseSnapshot {
        date: snapshot.to_string(),
        file: a.manifest.file.clone(),
        size: a.manifest.size,
        sha512: a.manifest.sha512.clone(),
        identity: crate::fetch::snapshot_identity(&a).unwrap_or_default(),
    });
    // The configuration the builder has applied; when `config/` was replaced since (an import
    // during the pass), what was built for is not known and no bundle is published.
    let applied = m.meta()?.config_hash;
    let bundle = match m.host_bundle() {
        Some(b) if applied.is_some() && m.config_hash().ok() == applied => {
            let p = PublishedDir::bundle_in(dir);
            let mut f = std::fs::File::create(&p).at("create", &p)?;
            let mut w = b
                .write_tar(std::io::BufWriter::new(&mut f))
                .at("write", &p)?;
            std::io::Write::flush(&mut w).at("write", &p)?;
            drop(w);
            f.sync_all().at("fsync", &p)?;
            let data = std::fs::read(&p).at("read", &p)?;
            Some(ReleaseBundle {
                sha256: crate::host::bundle::sha256_hex(&data),
                size: data.len() as u64,
            })
        }
        _ => None,
    };
    let release = Release {
        format: RELEASE_FORMAT,
        machine: m.name.clone(),
        published_at: super::state::now(),
        snapshot: snap,
        bundle,
        requests: crate::host::requests::active(&m.store, &m.name),
    };
    let mut text = serde_json::to_string_pretty(&release).expect("release serializes");
    text.push('\n');
    let signed =
        crate::sign::gpkg::clearsign(&text, keys).map_err(|e| BuilderError::SignRelease {
            file: RELEASE_FILE,
            source: e,
        })?;
    let p = PublishedDir::release_in(dir);
    std::fs::write(&p, signed).at("write", &p)?;
    std::fs::File::open(&p)
        .and_then(|f| f.sync_all())
        .at("fsync", &p)?;
    Ok(release)
}
