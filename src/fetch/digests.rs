//! Parser for catalyst's `.DIGESTS` files (the signed body only), so the tarball's SHA512 and
//! BLAKE2B can be checked. Formats (FORMATS.md): `# SHA512 HASH` / `# BLAKE2B HASH` (older:
//! `# BLAKE2 (b2sum) HASH`) header lines each followed by `<hex>  <path>`, in any order, with
//! paths possibly absolute (match on basename); and BSD style `SHA512 (file) = hex`.

/// Hash algorithms gbuild checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algo {
    Sha512,
    Blake2b,
}

impl Algo {
    fn from_header(name: &str) -> Option<Algo> {
        let n = name.trim().to_ascii_uppercase();
        match n.as_str() {
            "SHA512" => Some(Algo::Sha512),
            "BLAKE2B" | "BLAKE2" | "BLAKE2 (B2SUM)" | "BLAKE2B (B2SUM)" | "B2SUM" => {
                Some(Algo::Blake2b)
            }
            _ => None,
        }
    }
}

/// One `(algorithm, hex digest, basename)` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub algo: Algo,
    pub hex: String,
    pub file: String,
}

fn basename(p: &str) -> &str {
    p.rsplit('/').next().unwrap_or(p)
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.chars().all(|c| c.is_ascii_hexdigit())
}

/// Every SHA512/BLAKE2B entry in a DIGESTS body. Lines for other algorithms (SHA256, MD5, ...)
/// and malformed lines are skipped.
pub fn parse(body: &str) -> Vec<Entry> {
    let mut out = Vec::new();
    // The algorithm announced by the last `# ... HASH` header (None: some other algorithm).
    let mut current: Option<Option<Algo>> = None;
    for raw in body.lines() {
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(h) = line.strip_prefix('#') {
            let h = h.trim();
            current = h.strip_suffix("HASH").map(|a| Algo::from_header(a.trim()));
            continue;
        }
        // BSD style: `SHA512 (file) = hex`
        if let Some((lhs, hex)) = line.split_once(") = ") {
            if let Some((alg, file)) = lhs.split_once(" (") {
                if let Some(algo) = Algo::from_header(alg) {
                    let hex = hex.trim();
                    if is_hex(hex, 128) {
                        out.push(Entry {
                            algo,
                            hex: hex.to_ascii_lowercase(),
                            file: basename(file).to_string(),
                        });
                    }
                }
                continue;
            }
        }
        // GNU style after a header: `<hex>  <path>` (or `<hex> *<path>`)
        if let Some(Some(algo)) = current {
            let mut it = line.splitn(2, char::is_whitespace);
            let (Some(hex), Some(path)) = (it.next(), it.next()) else {
                continue;
            };
            let path = path.trim_start().trim_start_matches('*');
            if is_hex(hex, 128) && !path.is_empty() {
                out.push(Entry {
                    algo,
                    hex: hex.to_ascii_lowercase(),
                    file: basename(path).to_string(),
                });
            }
        }
    }
    out
}

/// The expected SHA512 and BLAKE2B of `file` (a basename). Fails when either is missing or
/// when the body gives two different values for one algorithm.
pub fn expected_for(body: &str, file: &str) -> Result<(String, String), String> {
    let mut sha = None;
    let mut b2 = None;
    for e in parse(body).into_iter().filter(|e| e.file == file) {
        let slot = match e.algo {
            Algo::Sha512 => &mut sha,
            Algo::Blake2b => &mut b2,
        };
        match slot {
            Some(prev) if *prev != e.hex => {
                return Err(format!("conflicting {:?} digests for {file}", e.algo))
            }
            _ => *slot = Some(e.hex),
        }
    }
    match (sha, b2) {
        (Some(s), Some(b)) => Ok((s, b)),
        (None, _) => Err(format!("no SHA512 digest for {file}")),
        (_, None) => Err(format!("no BLAKE2B digest for {file}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fetch::test_util::body_of;

    #[test]
    fn bsd_style() {
        let h = "a".repeat(128);
        let b = "b".repeat(128);
        let body = format!("SHA512 (x.tar.xz) = {h}\nBLAKE2B (/abs/x.tar.xz) = {b}\n");
        assert_eq!(expected_for(&body, "x.tar.xz").unwrap(), (h, b));
    }

    #[test]
    fn other_algorithms_are_skipped() {
        let h = "a".repeat(128);
        let b = "b".repeat(128);
        let body = format!(
            "# SHA256 HASH\n{}  x\n# SHA512 HASH\n{h}  x\n# MD5 HASH\n{}  x\n# BLAKE2B HASH\n{b}  x\n",
            "c".repeat(64),
            "d".repeat(32)
        );
        assert_eq!(expected_for(&body, "x").unwrap(), (h, b));
    }

    #[test]
    fn missing_and_conflicting() {
        let h = "a".repeat(128);
        let body = format!("# SHA512 HASH\n{h}  x\n");
        assert!(expected_for(&body, "x").unwrap_err().contains("BLAKE2B"));
        let body = format!(
            "# SHA512 HASH\n{h}  x\n# SHA512 HASH\n{}  x\n# BLAKE2B HASH\n{h}  x\n",
            "f".repeat(128)
        );
        assert!(expected_for(&body, "x")
            .unwrap_err()
            .contains("conflicting"));
    }

    #[test]
    fn real_2026_digests() {
        let s = include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/gentoo-formats/stage3-amd64-openrc-20260811T083102Z.tar.xz.DIGESTS.TRUNCATED-SIG"
        ));
        let body = body_of(s);
        let (sha, b2) = expected_for(&body, "stage3-amd64-openrc-20260811T083102Z.tar.xz").unwrap();
        assert!(sha.starts_with("9db785763adc"));
        assert!(b2.starts_with("8a4686280f04"));
        let (sha, b2) = expected_for(
            &body,
            "stage3-amd64-openrc-20260811T083102Z.tar.xz.CONTENTS.gz",
        )
        .unwrap();
        assert!(sha.starts_with("6507dc8a23cc"));
        assert!(b2.starts_with("e16d75e1f288"));
        assert_eq!(parse(&body).len(), 4);
    }

    #[test]
    fn real_2022_legacy_digests_match_on_basename() {
        let body = include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/gentoo-formats/stage3-amd64-openrc-20220116T170534Z.tar.xz.DIGESTS.2022-legacy-body"
        ));
        let (sha, b2) = expected_for(body, "stage3-amd64-openrc-20220116T170534Z.tar.xz").unwrap();
        assert!(sha.starts_with("e801e19d5e29"));
        assert!(b2.starts_with("e59f33903902"));
        let (_, b2) = expected_for(
            body,
            "stage3-amd64-openrc-20220116T170534Z.tar.xz.CONTENTS.gz",
        )
        .unwrap();
        assert!(b2.starts_with("c78ed26c7188"));
    }
}
