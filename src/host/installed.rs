//! The host's installed-package database as a bundle carries it (format 2): for every
//! `var/db/pkg/<category>/<pf>/` of the host, the metadata files Portage's resolver reads (SLOT,
//! USE, IUSE, the dependency strings, KEYWORDS, repository, EAPI, PROVIDES, REQUIRES, BUILD_ID,
//! COUNTER, ...), never the file lists (CONTENTS), saved environments or ebuilds. The publish gate
//! lays it out again as a `var/db/pkg` that emerge reads as the host's installed set.
//!
//! It is one JSON file of the bundle, `installed.json`, listed in the manifest with its size and
//! sha256 like every other entry, and checked strictly when a bundle is loaded: names of the
//! characters Portage allows (no `/`, no `..`, no hidden names), only the listed metadata keys,
//! no duplicates, and bounded sizes (`MAX_*`). Those files take 1.5 to 3 KB on a typical package,
//! so a 1,500-package desktop gives a few MB, far below the caps.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::beneath::Beneath;
use crate::fsutil::{FsError, IoContext};

/// Path of the installed-package database in a bundle (beside the manifest, so that applying a
/// configuration to a builder never copies it into the builder's own `var/db/pkg`).
pub const INSTALLED_NAME: &str = "installed.json";
/// Version of the document's format.
pub const INSTALLED_FORMAT: u32 = 1;
/// Most packages a host may have installed (a large desktop has 2,000 to 3,000).
pub const MAX_PACKAGES: usize = 50_000;
/// Largest value of one metadata file (dependency strings of the largest packages are tens of KB).
pub const MAX_VALUE_SIZE: usize = 1 << 20;
/// Largest `installed.json` (checked on the manifest before it is read).
pub const MAX_INSTALLED_SIZE: u64 = 48 << 20;

/// The metadata files of `var/db/pkg/<cat>/<pf>/` a bundle carries: what Portage's vardbapi
/// reads for dependency resolution (its aux cache keys) and the identity of the build.
pub const VDB_KEYS: &[&str] = &[
    "BDEPEND",
    "BUILD_ID",
    "BUILD_TIME",
    "CATEGORY",
    "CBUILD",
    "CHOST",
    "COUNTER",
    "DEFINED_PHASES",
    "DEPEND",
    "EAPI",
    "IDEPEND",
    "IUSE",
    "IUSE_EFFECTIVE",
    "KEYWORDS",
    "LICENSE",
    "PDEPEND",
    "PF",
    "PROPERTIES",
    "PROVIDES",
    "RDEPEND",
    "REQUIRES",
    "RESTRICT",
    "SLOT",
    "USE",
    "repository",
];

/// One installed package: its directory names and metadata files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Package {
    pub category: String,
    pub pf: String,
    /// Metadata file name -> content, as in the host's `var/db/pkg/<category>/<pf>/`.
    pub files: BTreeMap<String, String>,
}

impl Package {
    /// `category/pf`.
    pub fn cpv(&self) -> String {
        format!("{}/{}", self.category, self.pf)
    }

    /// A metadata value with surrounding white space removed.
    pub fn value(&self, key: &str) -> &str {
        self.files.get(key).map(|v| v.trim()).unwrap_or("")
    }
}

/// The document (`installed.json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Installed {
    pub format: u32,
    pub packages: Vec<Package>,
}

/// Whether `name` is a category or package directory name Portage could have written: letters,
/// digits and `+_.-`, not starting with `-` or `.` (no `..`, no hidden or `-MERGING-` entries).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.starts_with(['-', '.'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '_' | '.' | '-'))
}

impl Installed {
    /// Parse and check a document; the error says what is wrong (the caller names the bundle).
    pub fn parse(data: &[u8]) -> Result<Installed, String> {
        let doc: Installed =
            serde_json::from_slice(data).map_err(|e| format!("invalid document: {e}"))?;
        doc.check()?;
        Ok(doc)
    }

    /// The checks of `parse` (see the module documentation).
    pub fn check(&self) -> Result<(), String> {
        if self.format > INSTALLED_FORMAT {
            return Err(format!(
                "format {} is newer than this gbuild understands ({INSTALLED_FORMAT})",
                self.format
            ));
        }
        if self.packages.len() > MAX_PACKAGES {
            return Err(format!(
                "{} packages, more than the {MAX_PACKAGES} allowed",
                self.packages.len()
            ));
        }
        let mut seen = BTreeSet::new();
        for p in &self.packages {
            for n in [&p.category, &p.pf] {
                if !valid_name(n) {
                    return Err(format!(
                        "package {:?}/{:?}: {n:?} is not a category or package name",
                        p.category, p.pf
                    ));
                }
            }
            if !seen.insert((p.category.as_str(), p.pf.as_str())) {
                return Err(format!("package {} listed twice", p.cpv()));
            }
            for (k, v) in &p.files {
                if !VDB_KEYS.contains(&k.as_str()) {
                    return Err(format!(
                        "package {}: metadata file {k:?} is not one a bundle carries",
                        p.cpv()
                    ));
                }
                if v.len() > MAX_VALUE_SIZE {
                    return Err(format!(
                        "package {}: {k} of {} bytes, more than the {MAX_VALUE_SIZE} allowed",
                        p.cpv(),
                        v.len()
                    ));
                }
            }
        }
        Ok(())
    }

    /// The document as written into a bundle (compact JSON, packages in name order).
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("installed packages serialize")
    }

    /// Lay the database out as `var/db/pkg/<category>/<pf>/<KEY>` beneath `root` (which must
    /// exist), never through a symlink (`crate::beneath`).
    pub fn write_vdb(&self, root: &Path) -> Result<(), FsError> {
        let b = Beneath::open(root)?;
        b.create_dir_all("var/db/pkg", 0o755)?;
        for p in &self.packages {
            let dir = format!("var/db/pkg/{}/{}", p.category, p.pf);
            b.create_dir_all(&dir, 0o755)?;
            for (k, v) in &p.files {
                let rel = format!("{dir}/{k}");
                let mut f = b.create_file(&rel, 0o644)?;
                f.write_all(v.as_bytes()).at("write", &b.path(&rel))?;
            }
        }
        Ok(())
    }

    /// `category/pf` -> package.
    pub fn by_cpv(&self) -> BTreeMap<String, &Package> {
        self.packages.iter().map(|p| (p.cpv(), p)).collect()
    }
}

/// Read `<root>/var/db/pkg`: `None` when the root has none. Entries Portage would not have
/// written (hidden, `-MERGING-`), unreadable files and values that are not UTF-8 are left out
/// and reported in `skipped` as (path, reason).
pub fn capture(root: &Path, skipped: &mut Vec<(String, String)>) -> Option<Installed> {
    let vdb = root.join("var/db/pkg");
    if !vdb.is_dir() {
        return None;
    }
    let sorted = |dir: &Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    let mut doc = Installed {
        format: INSTALLED_FORMAT,
        packages: Vec::new(),
    };
    for cat in sorted(&vdb) {
        if !valid_name(&cat) {
            continue;
        }
        for pf in sorted(&vdb.join(&cat)) {
            let rel = format!("var/db/pkg/{cat}/{pf}");
            if !valid_name(&pf) {
                skipped.push((rel, "not a package Portage finished merging".into()));
                continue;
            }
            let dir = vdb.join(&cat).join(&pf);
            let mut files = BTreeMap::new();
            for k in VDB_KEYS {
                let p = dir.join(k);
                let Ok(md) = std::fs::symlink_metadata(&p) else {
                    continue;
                };
                if !md.is_file() || md.len() > MAX_VALUE_SIZE as u64 {
                    skipped.push((
                        format!("{rel}/{k}"),
                        "not a regular file of at most 1 MiB".into(),
                    ));
                    continue;
                }
                match std::fs::read(&p).map(String::from_utf8) {
                    Ok(Ok(v)) => {
                        files.insert(k.to_string(), v);
                    }
                    Ok(Err(_)) => skipped.push((format!("{rel}/{k}"), "not UTF-8".into())),
                    Err(e) => skipped.push((format!("{rel}/{k}"), e.to_string())),
                }
            }
            doc.packages.push(Package {
                category: cat.clone(),
                pf,
                files,
            });
        }
    }
    Some(doc)
}

/// Installed-set differences between two hosts (or two exports of one), as lines
/// `installed CAT/PN:SLOT: LEFT -> RIGHT` (versions; `(none)` where one side lacks it) and
/// `installed CPV: USE "..." -> "..."`. Information only: what a host has installed does not
/// change what a binpkg contains.
pub fn differences(a: &Installed, b: &Installed) -> Vec<String> {
    type Slots<'a> = BTreeMap<String, Vec<&'a Package>>;
    let key = |p: &Package| -> String {
        let slot = p.value("SLOT");
        let slot = slot.split('/').next().unwrap_or("0");
        format!("{}/{}:{}", p.category, pn_of(&p.pf), slot)
    };
    fn group<'a>(d: &'a Installed, key: &dyn Fn(&Package) -> String) -> Slots<'a> {
        let mut m: Slots<'a> = BTreeMap::new();
        for p in &d.packages {
            m.entry(key(p)).or_default().push(p);
        }
        m
    }
    let (ga, gb) = (group(a, &key), group(b, &key));
    let names = |v: Option<&Vec<&Package>>| -> String {
        match v {
            None => "(none)".into(),
            Some(v) => v.iter().map(|p| p.pf.clone()).collect::<Vec<_>>().join(" "),
        }
    };
    let mut out = Vec::new();
    for k in ga.keys().chain(gb.keys()).collect::<BTreeSet<_>>() {
        let (x, y) = (ga.get(k), gb.get(k));
        let (nx, ny) = (names(x), names(y));
        if nx != ny {
            out.push(format!("installed {k}: {nx} -> {ny}"));
            continue;
        }
        for (p, q) in x.into_iter().flatten().zip(y.into_iter().flatten()) {
            let use_of = |p: &Package| -> BTreeSet<String> {
                let iuse: BTreeSet<&str> = p
                    .value("IUSE")
                    .split_whitespace()
                    .map(|f| f.trim_start_matches(['+', '-']))
                    .collect();
                p.value("USE")
                    .split_whitespace()
                    .filter(|f| iuse.contains(f))
                    .map(str::to_string)
                    .collect()
            };
            let (ux, uy) = (use_of(p), use_of(q));
            if ux != uy {
                let show = |s: &BTreeSet<String>| {
                    format!("{:?}", s.iter().cloned().collect::<Vec<_>>().join(" "))
                };
                out.push(format!(
                    "installed {}: USE {} -> {}",
                    p.cpv(),
                    show(&ux),
                    show(&uy)
                ));
            }
        }
    }
    out
}

/// The package name of a `pf` (`screen-4.9.1-r1` -> `screen`): everything before the first `-`
/// followed by a digit that starts a version.
pub fn pn_of(pf: &str) -> &str {
    let b = pf.as_bytes();
    let mut cut = pf.len();
    for i in (0..b.len()).rev() {
        if b[i] == b'-' && b.get(i + 1).is_some_and(u8::is_ascii_digit) {
            let rest = &pf[i + 1..];
            let ver = rest.split("-r").next().unwrap_or(rest);
            if ver
                .split(['.', '_'])
                .next()
                .is_some_and(|n| n.chars().all(|c| c.is_ascii_digit()))
            {
                cut = i;
                break;
            }
        }
    }
    &pf[..cut]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkg(cat: &str, pf: &str, kv: &[(&str, &str)]) -> Package {
        Package {
            category: cat.into(),
            pf: pf.into(),
            files: kv
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn names_and_keys_are_checked() {
        let ok = Installed {
            format: 1,
            packages: vec![pkg("app-misc", "screen-4.9.1", &[("SLOT", "0\n")])],
        };
        assert!(ok.check().is_ok());
        for (cat, pf) in [
            ("..", "x-1"),
            ("app-misc", ".."),
            ("app-misc/../..", "x-1"),
            ("app-misc", "a/b-1"),
            ("app-misc", "-MERGING-x-1"),
            ("", "x-1"),
        ] {
            let d = Installed {
                format: 1,
                packages: vec![pkg(cat, pf, &[])],
            };
            assert!(d.check().is_err(), "{cat}/{pf}");
        }
        let d = Installed {
            format: 1,
            packages: vec![pkg("app-misc", "x-1", &[("CONTENTS", "obj /etc/shadow")])],
        };
        assert!(d.check().unwrap_err().contains("CONTENTS"));
        let d = Installed {
            format: 1,
            packages: vec![pkg("a", "x-1", &[]), pkg("a", "x-1", &[])],
        };
        assert!(d.check().unwrap_err().contains("twice"));
        let big = "x".repeat(MAX_VALUE_SIZE + 1);
        let d = Installed {
            format: 1,
            packages: vec![pkg("a", "x-1", &[("DEPEND", &big)])],
        };
        assert!(d.check().unwrap_err().contains("bytes"));
    }

    #[test]
    fn package_names() {
        assert_eq!(pn_of("screen-4.9.1"), "screen");
        assert_eq!(pn_of("XML-Parser-2.470.0-r1"), "XML-Parser");
        assert_eq!(pn_of("gtk+-3.24.41"), "gtk+");
        assert_eq!(pn_of("font-adobe-100dpi-1.0.4"), "font-adobe-100dpi");
    }

    #[test]
    fn installed_differences() {
        let a = Installed {
            format: 1,
            packages: vec![
                pkg("dev-lang", "perl-5.38.2", &[("SLOT", "0/5.38\n")]),
                pkg(
                    "media-video",
                    "mpv-0.38.0",
                    &[
                        ("SLOT", "0\n"),
                        ("IUSE", "vaapi\n"),
                        ("USE", "amd64 vaapi\n"),
                    ],
                ),
            ],
        };
        let b = Installed {
            format: 1,
            packages: vec![
                pkg("dev-lang", "perl-5.40.0", &[("SLOT", "0/5.40\n")]),
                pkg(
                    "media-video",
                    "mpv-0.38.0",
                    &[("SLOT", "0\n"), ("IUSE", "vaapi\n"), ("USE", "amd64\n")],
                ),
                pkg("app-misc", "screen-4.9.1", &[("SLOT", "0\n")]),
            ],
        };
        assert_eq!(
            differences(&a, &b),
            [
                "installed app-misc/screen:0: (none) -> screen-4.9.1",
                "installed dev-lang/perl:0: perl-5.38.2 -> perl-5.40.0",
                "installed media-video/mpv-0.38.0: USE \"vaapi\" -> \"\"",
            ]
        );
    }
}
