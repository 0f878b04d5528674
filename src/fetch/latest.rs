//! Parser for `latest-stage3-<arch>-<variant>.txt` (the signed body only): which stage3 tarball
//! is current, its path relative to `releases/<arch>/autobuilds/` and its size.

/// The stage3 named by a latest file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Latest {
    /// Path relative to `releases/<arch>/autobuilds/`, e.g. `20260811T083102Z/stage3-...tar.xz`.
    pub path: String,
    /// File name of the tarball.
    pub file: String,
    /// Size announced by the latest file.
    pub size: u64,
    /// The `# ts=` line, when present.
    pub ts: Option<u64>,
}

/// Find the `stage3-<arch>-<variant>-<timestamp>.tar.*` line in a latest file's signed body.
/// Paths with `..`, a leading `/`, or odd characters are refused.
pub fn parse(body: &str, arch: &str, variant: &str) -> Result<Latest, String> {
    let prefix = format!("stage3-{arch}-{variant}-");
    let mut ts = None;
    for line in body.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("# ts=") {
            ts = v.trim().parse().ok();
            continue;
        }
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut it = line.split_whitespace();
        let (Some(path), Some(size)) = (it.next(), it.next()) else {
            continue;
        };
        let file = path.rsplit('/').next().unwrap_or(path);
        let Some(rest) = file.strip_prefix(&prefix) else {
            continue;
        };
        if !rest.starts_with(|c: char| c.is_ascii_digit()) || !file.contains(".tar.") {
            continue;
        }
        let safe = !path.starts_with('/')
            && path
                .split('/')
                .all(|c| !c.is_empty() && c != "." && c != "..")
            && path
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '_' | '.' | '+'));
        if !safe {
            return Err(format!("unsafe stage3 path {path:?}"));
        }
        let size = size
            .parse()
            .map_err(|_| format!("bad size {size:?} for {path}"))?;
        return Ok(Latest {
            path: path.to_string(),
            file: file.to_string(),
            size,
            ts,
        });
    }
    Err(format!(
        "no stage3-{arch}-{variant} tarball listed in the signed text"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fetch::test_util::body_of;

    #[test]
    fn real_openrc_sample() {
        let s = include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/gentoo-formats/latest-stage3-amd64-openrc.txt.TRUNCATED-SIG"
        ));
        let l = parse(&body_of(s), "amd64", "openrc").unwrap();
        assert_eq!(
            l.path,
            "20260811T083102Z/stage3-amd64-openrc-20260811T083102Z.tar.xz"
        );
        assert_eq!(l.file, "stage3-amd64-openrc-20260811T083102Z.tar.xz");
        assert_eq!(l.size, 496363884);
        assert_eq!(l.ts, Some(1786785301));
    }

    #[test]
    fn real_systemd_sample_and_variant_mismatch() {
        let s = include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/gentoo-formats/latest-stage3-amd64-systemd.txt.TRUNCATED-SIG"
        ));
        let body = body_of(s);
        assert_eq!(parse(&body, "amd64", "systemd").unwrap().size, 511865372);
        assert!(parse(&body, "amd64", "openrc").is_err());
    }

    #[test]
    fn desktop_variant_is_not_taken_for_plain() {
        let body = "x/stage3-amd64-desktop-openrc-20260101T000000Z.tar.xz 5\n";
        assert!(parse(body, "amd64", "openrc").is_err());
        assert!(parse(body, "amd64", "desktop-openrc").is_ok());
    }

    #[test]
    fn unsafe_paths_refused() {
        let body = "../../etc/stage3-amd64-openrc-20260101T000000Z.tar.xz 5\n";
        assert!(parse(body, "amd64", "openrc")
            .unwrap_err()
            .contains("unsafe"));
    }
}
