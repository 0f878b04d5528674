//! Getting the two inputs of every build from a Gentoo mirror: the stage3 tarball and the
//! ebuild-tree snapshot, each verified (OpenPGP signature, and for the stage3 the signed
//! DIGESTS' SHA512 and BLAKE2B) before it is renamed into `<store>/downloads/`. This is the only
//! module that touches the network.
//!
//! Store records: beside each verified artifact a JSON manifest (`stage3-<arch>-<variant>.json`,
//! `snapshot-<YYYYMMDD>.json`) says what was verified, written last and atomically: an artifact
//! counts as verified only when its manifest names it. A re-run first fetches the small
//! pointer files (the latest-stage3 text; for `gentoo-latest` the snapshot's `.gpgsig`) and
//! downloads nothing more when they name what the store already holds; a dated snapshot that is
//! already verified needs no request at all. `--offline` only reads manifests.
//!
//! A host's tree is found by its timestamp (`fetch_snapshot_of_tree`): the snapshot dates that
//! Gentoo's naming rule allows for it (identity.rs), each verified, then compared by the
//! timestamps inside; the snapshot manifest records them.

pub mod digests;
pub mod git;
pub mod hashing;
pub mod http;
pub mod identity;
pub mod latest;
pub mod probe;
pub mod verify;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::fsutil::{atomic_write, fsync_dir, FsError, IoContext};
use crate::store::Store;
pub use hashing::Digests;
pub use http::{Bound, Fetcher, HttpError, RetryPolicy};
pub use identity::{read_tree_identity, TreeIdentity};
pub use verify::{Signer, Trust, VerifyError, PINNED};

/// Largest pointer, signature or DIGESTS file accepted.
const SMALL_LIMIT: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error(transparent)]
    Verify(#[from] VerifyError),
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error(transparent)]
    Lock(#[from] crate::lock::LockError),
    #[error("{file}: {message}")]
    Parse { file: String, message: String },
    #[error("{file}: {algo} mismatch (expected {expected}, got {got})")]
    Digest {
        file: String,
        algo: &'static str,
        expected: String,
        got: String,
    },
    #[error("{file}: {got} bytes, but {source_name} says {expected}")]
    Size {
        file: String,
        got: u64,
        expected: u64,
        source_name: String,
    },
    #[error("offline: no verified {what} in {dir} (run `gbuild fetch` without --offline first)")]
    Offline { what: String, dir: PathBuf },
    #[error("invalid {what} {value:?}")]
    Invalid { what: &'static str, value: String },
    #[error("no snapshot on {mirror} holds the ebuild tree of timestamp {timestamp} (tried {tried}); sync the host with emerge-webrsync, then export and import it again")]
    NoTreeSnapshot {
        timestamp: String,
        mirror: String,
        tried: String,
    },
}

/// What `fetch` records about a verified artifact (the JSON manifest beside it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// `stage3` or `snapshot`.
    pub kind: String,
    /// File name of the artifact in `downloads/`.
    pub file: String,
    /// Where it was downloaded from.
    pub url: String,
    pub size: u64,
    pub sha512: String,
    pub blake2b: String,
    /// File name of the detached signature kept beside it.
    pub signature: String,
    /// File name of the clearsigned DIGESTS kept beside it (stage3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digests: Option<String>,
    /// Who signed the artifact.
    pub signer: Signer,
    /// Unix time of the verification.
    pub verified_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// Stage3 build timestamp (`20260811T083102Z`) or snapshot date (`20260811`).
    pub date: String,
    /// For a snapshot fetched as `gentoo-latest.tar.xz`, that name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fetched_as: Option<String>,
    /// For a snapshot, its tree's `metadata/timestamp.*`, read after verification (absent in
    /// manifests written before it was recorded: then read from the tarball).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<TreeIdentity>,
}

/// A verified artifact in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    /// Full path of the artifact.
    pub path: PathBuf,
    pub manifest: Manifest,
}

/// What a fetch did.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub artifact: Artifact,
    /// False when the store already held it (nothing large was downloaded).
    pub downloaded: bool,
    /// Warnings to show the user (e.g. an expired copy of a pinned key).
    pub warnings: Vec<String>,
}

/// Where to fetch from and what.
#[derive(Debug, Clone)]
pub struct Source {
    /// Mirror base URL (http, https or file), without the trailing slash.
    pub mirror: String,
    pub arch: String,
    pub variant: String,
    /// `YYYYMMDD`, or None for `gentoo-latest`.
    pub snapshot_date: Option<String>,
}

impl Source {
    /// Check the values that become URL and file-name parts.
    pub fn new(
        mirror: &str,
        arch: &str,
        variant: &str,
        snapshot_date: Option<&str>,
    ) -> Result<Source, FetchError> {
        let word = |what: &'static str, v: &str| {
            if !v.is_empty()
                && v.len() <= 64
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                && !v.starts_with(['.', '-'])
            {
                Ok(v.to_string())
            } else {
                Err(FetchError::Invalid {
                    what,
                    value: v.to_string(),
                })
            }
        };
        if let Some(d) = snapshot_date {
            if d.len() != 8 || !d.chars().all(|c| c.is_ascii_digit()) {
                return Err(FetchError::Invalid {
                    what: "snapshot date (expected YYYYMMDD)",
                    value: d.into(),
                });
            }
        }
        let m = mirror.trim_end_matches('/');
        if !(m.starts_with("http://") || m.starts_with("https://") || m.starts_with("file:/")) {
            return Err(FetchError::Invalid {
                what: "mirror URL (expected http, https or file)",
                value: mirror.into(),
            });
        }
        Ok(Source {
            mirror: m.to_string(),
            arch: word("arch", arch)?,
            variant: word("variant", variant)?,
            snapshot_date: snapshot_date.map(str::to_string),
        })
    }

    fn autobuilds(&self) -> String {
        format!("{}/releases/{}/autobuilds", self.mirror, self.arch)
    }
}

use crate::time::now as now_secs;

fn stage3_manifest(store: &Store, arch: &str, variant: &str) -> PathBuf {
    store.stage3_manifest(arch, variant)
}

fn snapshot_manifest(store: &Store, date: &str) -> PathBuf {
    store.snapshot_manifest(date)
}

/// A manifest and its artifact, when both are present and consistent.
fn load_artifact(store: &Store, manifest: &Path) -> Option<Artifact> {
    let text = std::fs::read(manifest).ok()?;
    let m: Manifest = serde_json::from_slice(&text).ok()?;
    if m.file.contains('/') || m.signature.contains('/') {
        return None;
    }
    let path = store.download(&m.file);
    let meta = std::fs::metadata(&path).ok()?;
    if !meta.is_file() || meta.len() != m.size || !store.download(&m.signature).is_file() {
        return None;
    }
    Some(Artifact { path, manifest: m })
}

/// The verified stage3 for `arch`/`variant` in the store, if any.
pub fn latest_verified_stage3(store: &Store, arch: &str, variant: &str) -> Option<Artifact> {
    load_artifact(store, &stage3_manifest(store, arch, variant))
}

/// The verified snapshot of `date` (`YYYYMMDD`) in the store, if any.
pub fn verified_snapshot(store: &Store, date: &str) -> Option<Artifact> {
    load_artifact(store, &snapshot_manifest(store, date))
}

/// The newest verified snapshot in the store, if any.
pub fn latest_verified_snapshot(store: &Store) -> Option<Artifact> {
    let mut dates: Vec<String> = std::fs::read_dir(store.downloads())
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            let d = n.strip_prefix("snapshot-")?.strip_suffix(".json")?;
            (d.len() == 8 && d.chars().all(|c| c.is_ascii_digit())).then(|| d.to_string())
        })
        .collect();
    dates.sort();
    dates.iter().rev().find_map(|d| verified_snapshot(store, d))
}

/// Take the downloads lock (one fetch at a time per store).
pub fn lock(store: &Store) -> Result<crate::lock::Lock, FetchError> {
    Ok(crate::lock::Lock::try_acquire(&store.fetch_lock())?)
}

/// Download `url` (at most `bound` bytes) to `<downloads>/<file>.partial` while hashing and
/// checking `sig`. Returns the
/// digests and the signature verdict; the caller checks digests first (the more precise
/// message), then the verdict, and removes the partial file when a check fails.
fn download_checked(
    fetcher: &Fetcher,
    url: &str,
    partial: &Path,
    sig: verify::Pending,
    label: &str,
    bound: &Bound,
) -> Result<(Digests, Result<Signer, VerifyError>), FetchError> {
    let mut pipe = hashing::Pipeline::new(Some(sig));
    fetcher.download(url, partial, &mut pipe, label, bound)?;
    let (digests, verdict) = pipe.finish();
    let verdict = verdict.expect("a signature was given");
    Ok((digests, verdict))
}

/// Download `url` into `partial` (created or resumed), exactly `size` bytes as `by` signs, its
/// digests computed and the detached signature `sig`, when given, checked on the way (for a
/// snapshot a host is brought to by `gbuild host upgrade`). The caller compares the digests.
pub fn download_signed_size(
    fetcher: &Fetcher,
    url: &str,
    partial: &Path,
    size: u64,
    by: &str,
    sig: Option<verify::Pending>,
) -> Result<(Digests, Option<Result<Signer, VerifyError>>), FetchError> {
    let mut pipe = hashing::Pipeline::new(sig);
    let bound = Bound::Signed {
        size,
        by: by.to_string(),
    };
    let label = url.rsplit('/').next().unwrap_or(url).to_string();
    fetcher.download(url, partial, &mut pipe, &label, &bound)?;
    Ok(pipe.finish())
}

/// Run `checks`; on failure remove `partial` (a complete file that fails is useless for a
/// resume) and return the error.
fn or_discard<T>(partial: &Path, r: Result<T, FetchError>) -> Result<T, FetchError> {
    if r.is_err() {
        // Best effort beside the step's own error; gc removes a temporary-named leftover.
        let _ = std::fs::remove_file(partial);
    }
    r
}

fn compare(file: &str, algo: &'static str, expected: &str, got: &str) -> Result<(), FetchError> {
    if expected.eq_ignore_ascii_case(got) {
        Ok(())
    } else {
        Err(FetchError::Digest {
            file: file.into(),
            algo,
            expected: expected.into(),
            got: got.into(),
        })
    }
}

/// Rename a verified partial file into place (fsync done by the download).
fn promote(partial: &Path, dest: &Path) -> Result<(), FetchError> {
    std::fs::rename(partial, dest).at("rename into place", dest)?;
    if let Some(parent) = dest.parent() {
        fsync_dir(parent)?;
    }
    Ok(())
}

fn write_manifest(path: &Path, m: &Manifest) -> Result<(), FetchError> {
    let mut json = serde_json::to_vec_pretty(m).expect("manifest serialises");
    json.push(b'\n');
    atomic_write(path, &json)?;
    Ok(())
}

/// The stage3 in the store without any network access.
pub fn offline_stage3(store: &Store, src: &Source) -> Result<Artifact, FetchError> {
    latest_verified_stage3(store, &src.arch, &src.variant).ok_or_else(|| FetchError::Offline {
        what: format!("stage3 for {}/{}", src.arch, src.variant),
        dir: store.downloads(),
    })
}

/// The snapshot in the store without any network access.
pub fn offline_snapshot(store: &Store, src: &Source) -> Result<Artifact, FetchError> {
    let found = match &src.snapshot_date {
        Some(d) => verified_snapshot(store, d),
        None => latest_verified_snapshot(store),
    };
    found.ok_or_else(|| FetchError::Offline {
        what: match &src.snapshot_date {
            Some(d) => format!("snapshot gentoo-{d}"),
            None => "snapshot".into(),
        },
        dir: store.downloads(),
    })
}

/// Fetch and verify the current stage3 for `src.arch`/`src.variant` (see the module doc).
pub fn fetch_stage3(
    store: &Store,
    src: &Source,
    trust: &Trust,
    fetcher: &Fetcher,
) -> Result<Fetched, FetchError> {
    let mut warnings = Vec::new();
    let latest_name = format!("latest-stage3-{}-{}.txt", src.arch, src.variant);
    let latest_url = format!("{}/{latest_name}", src.autobuilds());
    let raw = fetcher.get_small(&latest_url, SMALL_LIMIT)?;
    let signed = trust.clearsigned(&latest_name, &raw)?;
    warnings.extend(signed.warnings);
    let latest = latest::parse(&signed.body, &src.arch, &src.variant).map_err(|message| {
        FetchError::Parse {
            file: latest_name.clone(),
            message,
        }
    })?;
    let file = latest.file.clone();
    if let Some(a) = latest_verified_stage3(store, &src.arch, &src.variant) {
        if a.manifest.file == file && a.manifest.size == latest.size {
            return Ok(Fetched {
                artifact: a,
                downloaded: false,
                warnings,
            });
        }
    }
    let url = format!("{}/{}", src.autobuilds(), latest.path);
    let asc_name = format!("{file}.asc");
    let digests_name = format!("{file}.DIGESTS");
    let asc = fetcher.get_small(&format!("{url}.asc"), SMALL_LIMIT)?;
    let digests_raw = fetcher.get_small(&format!("{url}.DIGESTS"), SMALL_LIMIT)?;
    let signed_digests = trust.clearsigned(&digests_name, &digests_raw)?;
    warnings.extend(signed_digests.warnings);
    let (want_sha, want_b2) =
        digests::expected_for(&signed_digests.body, &file).map_err(|message| {
            FetchError::Parse {
                file: digests_name.clone(),
                message,
            }
        })?;
    let pending = trust.detached(&asc_name, &asc)?;
    warnings.extend(pending.warnings.iter().cloned());

    let partial = store.partial_download(&file);
    let bound = Bound::Signed {
        size: latest.size,
        by: latest_name.clone(),
    };
    let (got, verdict) = download_checked(fetcher, &url, &partial, pending, &file, &bound)?;
    let checks = (|| {
        if got.size != latest.size {
            return Err(FetchError::Size {
                file: file.clone(),
                got: got.size,
                expected: latest.size,
                source_name: latest_name.clone(),
            });
        }
        compare(&file, "SHA512", &want_sha, &got.sha512)?;
        compare(&file, "BLAKE2B", &want_b2, &got.blake2b)?;
        Ok(verdict?)
    })();
    let signer = or_discard(&partial, checks)?;
    atomic_write(&store.download(&asc_name), &asc)?;
    atomic_write(&store.download(&digests_name), &digests_raw)?;
    let dest = store.download(&file);
    promote(&partial, &dest)?;
    let date = file
        .strip_prefix(&format!("stage3-{}-{}-", src.arch, src.variant))
        .and_then(|r| r.split('.').next())
        .unwrap_or_default()
        .to_string();
    let manifest = Manifest {
        kind: "stage3".into(),
        file,
        url,
        size: got.size,
        sha512: got.sha512,
        blake2b: got.blake2b,
        signature: asc_name,
        digests: Some(digests_name),
        signer,
        verified_at: now_secs(),
        arch: Some(src.arch.clone()),
        variant: Some(src.variant.clone()),
        date,
        fetched_as: None,
        identity: None,
    };
    write_manifest(&stage3_manifest(store, &src.arch, &src.variant), &manifest)?;
    Ok(Fetched {
        artifact: Artifact {
            path: dest,
            manifest,
        },
        downloaded: true,
        warnings,
    })
}

/// Fetch and verify the ebuild-tree snapshot `gentoo-<date>.tar.xz` (or `gentoo-latest`).
pub fn fetch_snapshot(
    store: &Store,
    src: &Source,
    trust: &Trust,
    fetcher: &Fetcher,
) -> Result<Fetched, FetchError> {
    if let Some(d) = &src.snapshot_date {
        // Dated snapshots never change: a verified one needs no request.
        if let Some(a) = verified_snapshot(store, d) {
            return Ok(Fetched {
                artifact: a,
                downloaded: false,
                warnings: Vec::new(),
            });
        }
    }
    let remote = match &src.snapshot_date {
        Some(d) => format!("gentoo-{d}.tar.xz"),
        None => "gentoo-latest.tar.xz".to_string(),
    };
    let url = format!("{}/snapshots/{remote}", src.mirror);
    let sig_name = format!("{remote}.gpgsig");
    let sig = fetcher.get_small(&format!("{url}.gpgsig"), SMALL_LIMIT)?;
    if src.snapshot_date.is_none() {
        // gentoo-latest: the same signature means the same file.
        if let Some(a) = latest_verified_snapshot(store) {
            let kept = std::fs::read(store.download(&a.manifest.signature)).ok();
            if kept.as_deref() == Some(&sig[..]) {
                return Ok(Fetched {
                    artifact: a,
                    downloaded: false,
                    warnings: Vec::new(),
                });
            }
        }
    }
    let pending = trust.detached(&sig_name, &sig)?;
    let warnings = pending.warnings.clone();
    // gentoo-latest changes daily: tie a partial download to the signature it must match.
    let partial = match &src.snapshot_date {
        Some(_) => store.partial_download(&remote),
        None => {
            use sha2::Digest;
            let id = hex::encode(&sha2::Sha256::digest(&sig)[..6]);
            store.partial_download(&format!("{remote}.{id}"))
        }
    };
    // Nothing signs the snapshot's size: the fetcher's cap bounds it.
    let (got, verdict) =
        download_checked(fetcher, &url, &partial, pending, &remote, &Bound::Unsigned)?;
    let signer = or_discard(&partial, verdict.map_err(FetchError::from))?;
    let date = match &src.snapshot_date {
        Some(d) => d.clone(),
        None => or_discard(
            &partial,
            snapshot_date_inside(&partial).ok_or_else(|| FetchError::Parse {
                file: remote.clone(),
                message: "no gentoo-YYYYMMDD/ top directory to date the snapshot".into(),
            }),
        )?,
    };
    let identity = or_discard(
        &partial,
        identity::read_tarball_identity(&partial).map_err(FetchError::from),
    )?;
    let file = format!("gentoo-{date}.tar.xz");
    let kept_sig = format!("{file}.gpgsig");
    atomic_write(&store.download(&kept_sig), &sig)?;
    let dest = store.download(&file);
    promote(&partial, &dest)?;
    let manifest = Manifest {
        kind: "snapshot".into(),
        file,
        url,
        size: got.size,
        sha512: got.sha512,
        blake2b: got.blake2b,
        signature: kept_sig,
        digests: None,
        signer,
        verified_at: now_secs(),
        arch: None,
        variant: None,
        date: date.clone(),
        fetched_as: src.snapshot_date.is_none().then_some(remote),
        identity: Some(identity),
    };
    write_manifest(&snapshot_manifest(store, &date), &manifest)?;
    Ok(Fetched {
        artifact: Artifact {
            path: dest,
            manifest,
        },
        downloaded: true,
        warnings,
    })
}

/// The tree identity of a verified snapshot: from its manifest, else from the tarball.
pub fn snapshot_identity(a: &Artifact) -> Result<TreeIdentity, FetchError> {
    match &a.manifest.identity {
        Some(id) => Ok(id.clone()),
        None => Ok(identity::read_tarball_identity(&a.path)?),
    }
}

/// The verified snapshot in the store that holds exactly `tree`, if any (the dates Gentoo's
/// convention allows for its timestamp, compared by the timestamps inside).
pub fn verified_snapshot_of_tree(store: &Store, tree: &TreeIdentity) -> Option<Artifact> {
    tree.candidate_snapshot_dates().iter().find_map(|d| {
        let a = verified_snapshot(store, d)?;
        snapshot_identity(&a).ok()?.same_tree(tree).then_some(a)
    })
}

/// As `offline_snapshot`, for the snapshot holding `tree`.
pub fn offline_snapshot_of_tree(
    store: &Store,
    tree: &TreeIdentity,
) -> Result<Artifact, FetchError> {
    verified_snapshot_of_tree(store, tree).ok_or_else(|| FetchError::Offline {
        what: format!("snapshot of the ebuild tree of {}", tree.describe()),
        dir: store.downloads(),
    })
}

/// Fetch the one snapshot whose tree is `tree` (a host's): for each date Gentoo's convention
/// allows for its timestamp (D, D+1, D-1), the verified `gentoo-<date>.tar.xz` (from the store,
/// else downloaded and verified like `fetch_snapshot`), compared after verification. A date the
/// mirror lacks is skipped; any other failure stops. None matching is an error naming the
/// timestamp and what each date held.
pub fn fetch_snapshot_of_tree(
    store: &Store,
    src: &Source,
    tree: &TreeIdentity,
    trust: &Trust,
    fetcher: &Fetcher,
) -> Result<Fetched, FetchError> {
    let mut tried = Vec::new();
    for date in tree.candidate_snapshot_dates() {
        let dated = Source {
            snapshot_date: Some(date.clone()),
            ..src.clone()
        };
        match fetch_snapshot(store, &dated, trust, fetcher) {
            Ok(got) => {
                let id = snapshot_identity(&got.artifact)?;
                if id.same_tree(tree) {
                    return Ok(got);
                }
                tried.push(format!("gentoo-{date} of {}", id.describe()));
            }
            Err(FetchError::Http(HttpError::NotFound { .. })) => {
                tried.push(format!("gentoo-{date}: not there"));
            }
            Err(e) => return Err(e),
        }
    }
    Err(FetchError::NoTreeSnapshot {
        timestamp: tree.describe(),
        mirror: src.mirror.clone(),
        tried: tried.join(", "),
    })
}

/// The date of a verified snapshot tarball from its top directory `gentoo-YYYYMMDD/` (only the
/// first entry is decompressed).
fn snapshot_date_inside(tarball: &Path) -> Option<String> {
    let f = std::fs::File::open(tarball).ok()?;
    let xz = liblzma::read::XzDecoder::new(std::io::BufReader::new(f));
    let mut ar = tar::Archive::new(xz);
    let mut entries = ar.entries().ok()?;
    let first = entries.next()?.ok()?;
    let path = first.path().ok()?.into_owned();
    let top = path.components().next()?.as_os_str().to_str()?.to_string();
    let d = top.strip_prefix("gentoo-")?;
    (d.len() == 8 && d.chars().all(|c| c.is_ascii_digit())).then(|| d.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_checks_its_parts() {
        assert!(Source::new("https://distfiles.gentoo.org/", "amd64", "openrc", None).is_ok());
        assert!(Source::new("ftp://x", "amd64", "openrc", None).is_err());
        assert!(Source::new("https://x", "../amd64", "openrc", None).is_err());
        assert!(Source::new("https://x", "amd64", "openrc", Some("2026-01-01")).is_err());
        let s = Source::new("file:///srv/m/", "arm64", "systemd", Some("20260101")).unwrap();
        assert_eq!(s.autobuilds(), "file:///srv/m/releases/arm64/autobuilds");
    }

    #[test]
    fn missing_or_inconsistent_manifests_are_not_artifacts() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::at(dir.path());
        store.init().unwrap();
        assert!(latest_verified_stage3(&store, "amd64", "openrc").is_none());
        assert!(latest_verified_snapshot(&store).is_none());
        let m = Manifest {
            kind: "snapshot".into(),
            file: "gentoo-20260101.tar.xz".into(),
            url: "u".into(),
            size: 3,
            sha512: String::new(),
            blake2b: String::new(),
            signature: "gentoo-20260101.tar.xz.gpgsig".into(),
            digests: None,
            signer: Signer {
                primary: "P".into(),
                key: "K".into(),
                signed_at: None,
            },
            verified_at: 0,
            arch: None,
            variant: None,
            date: "20260101".into(),
            fetched_as: None,
            identity: None,
        };
        write_manifest(&snapshot_manifest(&store, "20260101"), &m).unwrap();
        assert!(latest_verified_snapshot(&store).is_none());
        std::fs::write(store.downloads().join("gentoo-20260101.tar.xz"), b"abc").unwrap();
        std::fs::write(
            store.downloads().join("gentoo-20260101.tar.xz.gpgsig"),
            b"s",
        )
        .unwrap();
        let a = latest_verified_snapshot(&store).unwrap();
        assert_eq!(a.manifest.date, "20260101");
    }
}

#[cfg(test)]
pub(crate) mod test_util {
    /// The body of a clearsigned sample, cut by hand (the samples' signatures are truncated).
    pub fn body_of(armored: &str) -> String {
        let after = armored.split_once("\n\n").unwrap().1;
        after
            .split("-----BEGIN PGP SIGNATURE-----")
            .next()
            .unwrap()
            .to_string()
    }
}
