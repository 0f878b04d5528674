//! What identifies an ebuild tree: `metadata/timestamp.chk`, `metadata/timestamp.x` and
//! `metadata/timestamp.commit`, read from an unpacked tree or from a snapshot tarball; and
//! Gentoo's rule that names a snapshot by date. `gentoo-D.tar.xz` is made at 00:45 UTC on day
//! D+1 and its timestamps say D+1, so a tree's timestamp gives the snapshot date of the day
//! before (docs/snapshots.md). A tree is matched to a snapshot by its timestamp, never by the
//! date alone.

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

    /// The date `YYYYMMDD` of the Gentoo snapshot holding this tree by Gentoo's convention:
    /// the UTC day before its timestamp (gentoo-D is stamped at 00:45 UTC on D+1).
    pub fn snapshot_name_date(&self) -> Option<String> {
        let day = (self.unix_time()? / DAY) as i64;
        Some(date_of_days(day - 1))
    }

    /// The snapshot dates that may hold this tree, the convention's date D first, then D+1 (a
    /// tree stamped on its own date) and D-1 (a tree stamped at 00:00:00 exactly). These are the
    /// dates whose `emerge-webrsync --revert` accepts this timestamp, and only these.
    pub fn candidate_snapshot_dates(&self) -> Vec<String> {
        let Some(t) = self.unix_time() else {
            return Vec::new();
        };
        let d = (t / DAY) as i64 - 1;
        [d, d + 1, d - 1].map(date_of_days).to_vec()
    }

    /// Whether `other` (a snapshot's identity) is the same tree: the same unix time, and the
    /// same `timestamp.chk` and commit wherever both sides have one.
    pub fn same_tree(&self, other: &TreeIdentity) -> bool {
        fn agree<T: PartialEq>(a: &Option<T>, b: &Option<T>) -> bool {
            a.is_none() || b.is_none() || a == b
        }
        self.unix_time().is_some()
            && self.unix_time() == other.unix_time()
            && agree(&self.timestamp_chk, &other.timestamp_chk)
            && agree(&self.commit, &other.commit)
    }

    /// The timestamp for messages: `2026-02-02 00:45:01 UTC`, else timestamp.chk as written.
    pub fn describe(&self) -> String {
        match (self.unix_time(), &self.timestamp_chk) {
            (Some(t), _) => crate::time::utc(t),
            (None, Some(c)) => c.clone(),
            (None, None) => "unknown (no metadata/timestamp.*)".into(),
        }
    }
}

const DAY: u64 = 86_400;

/// `YYYYMMDD` of a day counted from 1970-01-01.
fn date_of_days(days: i64) -> String {
    let (y, m, d) = crate::time::civil_from_days(days);
    format!("{y:04}{m:02}{d:02}")
}

/// Days from 1970-01-01 of a `YYYYMMDD` date (H. Hinnant's days-from-civil), None when it is not
/// a real calendar date.
pub fn days_of_date(date: &str) -> Option<i64> {
    if date.len() != 8 || !date.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let y: i64 = date[..4].parse().ok()?;
    let m: i64 = date[4..6].parse().ok()?;
    let d: i64 = date[6..].parse().ok()?;
    if !(1..=12).contains(&m) || d < 1 {
        return None;
    }
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    // Reject 20260231 and the like: the day must come back unchanged.
    (date_of_days(days) == date).then_some(days)
}

/// Whether `emerge-webrsync --revert=DATE` accepts a snapshot with this timestamp: from 00:00
/// UTC of DATE to two days later, inclusive (its `is_snapshot_fresh`).
pub fn webrsync_accepts(date: &str, unix_time: u64) -> bool {
    let Some(days) = days_of_date(date) else {
        return false;
    };
    let start = days * DAY as i64;
    let t = unix_time as i64;
    start <= t && t <= start + 2 * DAY as i64
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
    Ok(parse_identity(
        read("timestamp.chk")?,
        read("timestamp.x")?,
        read("timestamp.commit")?,
    ))
}

/// The identity from the texts of the three files.
fn parse_identity(chk: Option<String>, x: Option<String>, commit: Option<String>) -> TreeIdentity {
    let mut id = TreeIdentity {
        timestamp_chk: chk,
        ..TreeIdentity::default()
    };
    if let Some(x) = x {
        id.timestamp_x = x.split_whitespace().next().and_then(|v| v.parse().ok());
    }
    if let Some(c) = commit {
        let mut it = c.split_whitespace();
        id.commit = it
            .next()
            .filter(|h| h.len() >= 7 && h.chars().all(|c| c.is_ascii_hexdigit()))
            .map(str::to_string);
        id.commit_time = it.next().and_then(|v| v.parse().ok());
    }
    id
}

/// The identity of a snapshot tarball (`.tar.xz`, one top directory): its
/// `<top>/metadata/timestamp.{chk,x,commit}`, read while streaming the archive (as
/// emerge-webrsync reads `*/metadata/timestamp.x`), stopping once all three were seen.
pub fn read_tarball_identity(tarball: &Path) -> Result<TreeIdentity, crate::fsutil::FsError> {
    use crate::fsutil::IoContext;
    use std::io::Read;
    let f = std::fs::File::open(tarball).at("open", tarball)?;
    let xz = liblzma::read::XzDecoder::new(std::io::BufReader::new(f));
    let mut ar = tar::Archive::new(xz);
    let mut found: [Option<String>; 3] = [None, None, None];
    const NAMES: [&str; 3] = ["timestamp.chk", "timestamp.x", "timestamp.commit"];
    for entry in ar.entries().at("read", tarball)? {
        let mut entry = entry.at("read", tarball)?;
        let path = entry.path().at("read", tarball)?.into_owned();
        let parts: Vec<_> = path.components().map(|c| c.as_os_str()).collect();
        if parts.len() != 3 || parts[1] != "metadata" || !entry.header().entry_type().is_file() {
            continue;
        }
        let Some(i) = NAMES.iter().position(|n| parts[2] == *n) else {
            continue;
        };
        let mut text = String::new();
        // The files are one line; a huge one is not a timestamp.
        entry
            .by_ref()
            .take(4096)
            .read_to_string(&mut text)
            .at("read", tarball)?;
        found[i] = Some(text.trim().to_string()).filter(|s| !s.is_empty());
        if found.iter().all(Option::is_some) {
            break;
        }
    }
    let [chk, x, commit] = found;
    Ok(parse_identity(chk, x, commit))
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

    /// Unix time of `date` (YYYYMMDD) plus `hms` seconds.
    fn at(date: &str, secs: u64) -> u64 {
        days_of_date(date).unwrap() as u64 * DAY + secs
    }

    fn stamped(t: u64) -> TreeIdentity {
        TreeIdentity {
            timestamp_x: Some(t),
            ..TreeIdentity::default()
        }
    }

    const AT_0045: u64 = 45 * 60 + 1;

    #[test]
    fn a_gentoo_snapshot_is_named_the_day_before_its_timestamp() {
        // gentoo-20261201.tar.xz is made at 00:45 UTC on 2 December.
        let id = stamped(at("20261202", AT_0045));
        assert_eq!(id.snapshot_name_date().as_deref(), Some("20261201"));
        assert_eq!(
            id.candidate_snapshot_dates(),
            ["20261201", "20261202", "20261130"]
        );
        // Across a year and a leap day.
        let id = stamped(at("20270101", AT_0045));
        assert_eq!(id.snapshot_name_date().as_deref(), Some("20261231"));
        let id = stamped(at("20240301", AT_0045));
        assert_eq!(id.snapshot_name_date().as_deref(), Some("20240229"));
        // The commit time stands in when there is no timestamp.x.
        let id = TreeIdentity {
            commit_time: Some(at("20260202", AT_0045)),
            ..TreeIdentity::default()
        };
        assert_eq!(id.snapshot_name_date().as_deref(), Some("20260201"));
        assert_eq!(TreeIdentity::default().snapshot_name_date(), None);
        assert!(TreeIdentity::default()
            .candidate_snapshot_dates()
            .is_empty());
    }

    #[test]
    fn candidates_are_exactly_the_dates_emerge_webrsync_accepts() {
        for t in [
            at("20261202", AT_0045),
            at("20261202", 0),
            at("20261202", DAY - 1),
            at("20260301", 12 * 3600),
        ] {
            let id = stamped(t);
            let cands = id.candidate_snapshot_dates();
            assert!(webrsync_accepts(&cands[0], t), "convention date for {t}");
            let day = (t / DAY) as i64;
            for d in day - 5..day + 5 {
                let date = date_of_days(d);
                assert_eq!(
                    webrsync_accepts(&date, t),
                    cands.contains(&date) && (date != cands[2] || t % DAY == 0),
                    "{date} for {}",
                    id.describe()
                );
            }
        }
        assert!(!webrsync_accepts("2026-12-01", 0));
    }

    #[test]
    fn dates_round_trip_and_bad_dates_are_refused() {
        assert_eq!(days_of_date("19700101"), Some(0));
        assert_eq!(days_of_date("20260101"), Some(20454));
        for d in ["20000229", "20240229", "20261231", "19991231"] {
            assert_eq!(date_of_days(days_of_date(d).unwrap()), d);
        }
        for bad in [
            "20260231",
            "20261301",
            "20260100",
            "20250229",
            "2026011",
            "2026-1-01",
        ] {
            assert_eq!(days_of_date(bad), None, "{bad}");
        }
    }

    #[test]
    fn same_tree_needs_the_same_timestamp_and_agreeing_files() {
        let t = at("20260202", AT_0045);
        let host = TreeIdentity {
            timestamp_chk: Some("Mon, 02 Feb 2026 00:45:01 +0000".into()),
            timestamp_x: Some(t),
            commit: Some("a".repeat(40)),
            commit_time: Some(t),
        };
        assert!(host.same_tree(&host.clone()));
        assert!(host.same_tree(&stamped(t)), "missing files do not disagree");
        assert!(!host.same_tree(&stamped(t + DAY)));
        let other_commit = TreeIdentity {
            commit: Some("b".repeat(40)),
            ..host.clone()
        };
        assert!(!host.same_tree(&other_commit));
        assert!(!TreeIdentity::default().same_tree(&TreeIdentity::default()));
        assert_eq!(host.describe(), "2026-02-02 00:45:01 UTC");
    }

    #[test]
    fn identity_of_a_snapshot_tarball() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gentoo-20260201.tar.xz");
        let xz = liblzma::write::XzEncoder::new(std::fs::File::create(&path).unwrap(), 1);
        let mut b = tar::Builder::new(xz);
        for (name, body) in [
            ("gentoo-20260201/app-misc/jq/jq-1.7.1.ebuild", "EAPI=8\n"),
            (
                "gentoo-20260201/metadata/timestamp.chk",
                "Mon, 02 Feb 2026 00:45:01 +0000\n",
            ),
            (
                "gentoo-20260201/metadata/timestamp.x",
                "1769993101 Mon 02 Feb 2026 12:45:01 AM UTC\n",
            ),
            (
                "gentoo-20260201/metadata/md5-cache/timestamp.x",
                "1 wrong\n",
            ),
            (
                "gentoo-20260201/metadata/timestamp.commit",
                "0123456789abcdef0123456789abcdef01234567 1769993101 2026-02-02T00:45:01+00:00\n",
            ),
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_size(body.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, body.as_bytes()).unwrap();
        }
        b.into_inner().unwrap().finish().unwrap();
        let id = read_tarball_identity(&path).unwrap();
        assert_eq!(id.timestamp_x, Some(at("20260202", AT_0045)));
        assert_eq!(id.commit_time, id.timestamp_x);
        assert_eq!(id.snapshot_name_date().as_deref(), Some("20260201"));
        assert!(id.same_tree(&id.clone()));
        let junk = dir.path().join("junk.tar.xz");
        std::fs::write(&junk, b"not xz").unwrap();
        let e = read_tarball_identity(&junk).unwrap_err().to_string();
        assert!(e.contains("junk.tar.xz"), "{e}");
    }
}
