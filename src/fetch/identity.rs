//! What identifies an ebuild-tree snapshot once unpacked: `metadata/timestamp.chk`,
//! `metadata/timestamp.x` and `metadata/timestamp.commit` (FORMATS.md). Later steps (repos/,
//! binhost) record this identity; fetch only knows the snapshot's date from its file name.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// The identity of an unpacked ebuild tree; every field is optional since trees differ.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeIdentity {
    /// `metadata/timestamp.chk`, e.g. `Wed, 16 Jun 2021 02:15:01 +0000`.
    pub timestamp_chk: Option<String>,
    /// First field of `metadata/timestamp.x`: unix time of the snapshot.
    pub timestamp_x: Option<u64>,
    /// Commit id from `metadata/timestamp.commit`.
    pub commit: Option<String>,
    /// Commit time (unix) from `metadata/timestamp.commit`.
    pub commit_time: Option<u64>,
}

impl TreeIdentity {
    /// Whether no timestamp file was found.
    pub fn is_empty(&self) -> bool {
        *self == TreeIdentity::default()
    }

    /// The best unix time for the tree: timestamp.x, else the commit time.
    pub fn unix_time(&self) -> Option<u64> {
        self.timestamp_x.or(self.commit_time)
    }
}

/// Read `metadata/timestamp.{chk,x,commit}` under `tree`. Missing files leave fields empty;
/// an unreadable file (other than missing) is an error naming it.
pub fn read_tree_identity(tree: &Path) -> Result<TreeIdentity, crate::fsutil::FsError> {
    use crate::fsutil::IoContext;
    let read = |name: &str| -> Result<Option<String>, crate::fsutil::FsError> {
        let p = tree.join("metadata").join(name);
        match std::fs::read_to_string(&p) {
            Ok(s) => Ok(Some(s.trim().to_string()).filter(|s| !s.is_empty())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).at("read", &p),
        }
    };
    let mut id = TreeIdentity {
        timestamp_chk: read("timestamp.chk")?,
        ..TreeIdentity::default()
    };
    if let Some(x) = read("timestamp.x")? {
        id.timestamp_x = x.split_whitespace().next().and_then(|v| v.parse().ok());
    }
    if let Some(c) = read("timestamp.commit")? {
        let mut it = c.split_whitespace();
        id.commit = it
            .next()
            .filter(|h| h.len() >= 7 && h.chars().all(|c| c.is_ascii_hexdigit()))
            .map(str::to_string);
        id.commit_time = it.next().and_then(|v| v.parse().ok());
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(name: &str) -> String {
        std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/data/gentoo-formats")
                .join(name),
        )
        .unwrap()
    }

    #[test]
    fn real_samples() {
        let dir = tempfile::tempdir().unwrap();
        let meta = dir.path().join("metadata");
        std::fs::create_dir_all(&meta).unwrap();
        std::fs::write(
            meta.join("timestamp.chk"),
            sample("metadata_timestamp.chk.swegener-rsync-mirror"),
        )
        .unwrap();
        std::fs::write(
            meta.join("timestamp.x"),
            sample("metadata_timestamp.x.swegener-rsync-mirror"),
        )
        .unwrap();
        std::fs::write(
            meta.join("timestamp.commit"),
            sample("metadata_timestamp.commit.swegener-rsync-mirror"),
        )
        .unwrap();
        let id = read_tree_identity(dir.path()).unwrap();
        assert_eq!(
            id.timestamp_chk.as_deref(),
            Some("Wed, 16 Jun 2021 02:15:01 +0000")
        );
        assert_eq!(id.timestamp_x, Some(1506665101));
        assert_eq!(
            id.commit.as_deref(),
            Some("9fc7a49ad6496faebea1c1d1848199fb6278bcec")
        );
        assert_eq!(id.commit_time, Some(1595048572));
        assert_eq!(id.unix_time(), Some(1506665101));
    }

    #[test]
    fn missing_files_leave_fields_empty() {
        let dir = tempfile::tempdir().unwrap();
        let id = read_tree_identity(dir.path()).unwrap();
        assert!(id.is_empty());
    }
}
