//! The published Portage `Packages` index of a machine: the only authority on which binpkgs a
//! host may fetch. A binpkg that sits in PKGDIR but is not listed here (a pass still running, a
//! package held back by the ABI check) is never served. Parsing is cached per machine, keyed by
//! the identity of the index file, so a request costs one `open` + `fstat` while it is unchanged.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;

use crate::fsutil::{FileStamp, FsError, IoContext};

/// Largest index accepted (a Packages file of tens of thousands of binpkgs is a few MB).
const MAX_INDEX: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error("{path}: index larger than {MAX_INDEX} bytes")]
    TooLarge { path: PathBuf },
}

/// A strong entity tag derived from a file's stamp (like nginx's, plus the inode): any rewrite
/// or atomic replacement of the file changes it.
pub fn etag(k: &FileStamp) -> String {
    let ns = i128::from(k.mtime) * 1_000_000_000 + i128::from(k.mtime_nsec);
    format!("\"{:x}-{:x}-{:x}\"", k.ino, k.size, ns.max(0) as u128)
}

/// One parsed version of `published/Packages`.
#[derive(Debug)]
pub struct Index {
    pub key: FileStamp,
    pub modified: SystemTime,
    /// The file's bytes, served as is (so the index a host sees is the one that was parsed).
    pub bytes: Bytes,
    /// Relative binpkg paths a host may fetch.
    paths: HashSet<String>,
    /// Header `TIMESTAMP`, when present.
    pub timestamp: Option<u64>,
    pub packages: usize,
}

impl Index {
    pub fn allows(&self, rel: &str) -> bool {
        self.paths.contains(rel)
    }
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.paths.iter().map(String::as_str)
    }
}

/// Parse a Packages index: blank-line separated stanzas of `KEY: value`; the first stanza is
/// the header. A package stanza names its file with `PATH:`; without it (no
/// binpkg-multi-instance) Portage derives `<CPV>.tbz2` or `<CPV>.gpkg.tar`, so both are allowed.
/// Paths that are absolute or climb out (`..`, empty or `.` segments, backslashes, NUL) are
/// dropped: they can never be served.
pub fn parse(text: &str) -> (HashSet<String>, Option<u64>, usize) {
    let mut paths = HashSet::new();
    let mut timestamp = None;
    let mut packages = 0;
    for (i, stanza) in stanzas(text).enumerate() {
        let get = |k: &str| stanza.iter().find(|(key, _)| *key == k).map(|(_, v)| *v);
        if i == 0 && get("CPV").is_none() {
            timestamp = get("TIMESTAMP").and_then(|t| t.parse().ok());
            continue;
        }
        let Some(cpv) = get("CPV") else { continue };
        packages += 1;
        match get("PATH") {
            Some(p) => {
                if safe_rel(p) {
                    paths.insert(p.to_string());
                }
            }
            None => {
                for ext in [".tbz2", ".gpkg.tar"] {
                    let p = format!("{cpv}{ext}");
                    if safe_rel(&p) {
                        paths.insert(p);
                    }
                }
            }
        }
    }
    (paths, timestamp, packages)
}

/// The CPVs a Packages index lists, sorted.
pub fn cpvs(text: &str) -> Vec<String> {
    let mut out: Vec<String> = stanzas(text)
        .filter_map(|st| {
            st.iter()
                .find(|(k, _)| *k == "CPV")
                .map(|(_, v)| v.to_string())
        })
        .collect();
    out.sort();
    out
}

fn stanzas(text: &str) -> impl Iterator<Item = Vec<(&str, &str)>> {
    let mut lines = text.lines().peekable();
    std::iter::from_fn(move || {
        while lines.peek().is_some_and(|l| l.trim().is_empty()) {
            lines.next();
        }
        lines.peek()?;
        let mut stanza = Vec::new();
        for line in lines.by_ref() {
            if line.trim().is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                stanza.push((k.trim(), v.trim()));
            }
        }
        Some(stanza)
    })
}

/// A relative path of plain segments: nothing a join could turn into an escape.
pub fn safe_rel(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 4096
        && !p.starts_with('/')
        && !p.contains(['\\', '\0'])
        && p.split('/').all(|s| !s.is_empty() && s != "." && s != "..")
}

/// Per-machine cache of the parsed published index.
#[derive(Default)]
pub struct IndexCache {
    by_machine: Mutex<HashMap<String, Arc<Index>>>,
}

impl IndexCache {
    /// The current index of `machine` at `path`, or `None` when nothing is published yet.
    /// Opens the file once; re-reads and re-parses only when its identity changed.
    pub fn get(&self, machine: &str, path: &Path) -> Result<Option<Arc<Index>>, IndexError> {
        let mut f = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.lock().remove(machine);
                return Ok(None);
            }
            Err(e) => return Err(FsError::new("open", path, e).into()),
        };
        let meta = f.metadata().at("stat", path)?;
        if !meta.is_file() {
            return Ok(None);
        }
        let key = FileStamp::from_metadata(&meta);
        if let Some(hit) = self.lock().get(machine).filter(|i| i.key == key) {
            return Ok(Some(Arc::clone(hit)));
        }
        if meta.len() > MAX_INDEX {
            return Err(IndexError::TooLarge {
                path: path.to_path_buf(),
            });
        }
        let mut buf = Vec::with_capacity(meta.len() as usize);
        f.by_ref()
            .take(MAX_INDEX + 1)
            .read_to_end(&mut buf)
            .at("read", path)?;
        let text = String::from_utf8_lossy(&buf);
        let (paths, timestamp, packages) = parse(&text);
        let index = Arc::new(Index {
            key,
            modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            bytes: Bytes::from(buf),
            paths,
            timestamp,
            packages,
        });
        self.lock().insert(machine.to_string(), Arc::clone(&index));
        Ok(Some(index))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Index>>> {
        self.by_machine.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "ARCH: amd64\nPACKAGES: 3\nTIMESTAMP: 1738033770\nVERSION: 0\n\n\
        BUILD_ID: 1\nCPV: sys-libs/mtdev-1.1.7\nPATH: sys-libs/mtdev/mtdev-1.1.7-1.gpkg.tar\n\
        PROVIDES: x86_64: libmtdev.so.1\nSIZE: 40960\n\n\
        CPV: app-misc/old-1.0\nSIZE: 10\n\n\
        CPV: app-misc/evil-1\nPATH: ../../../etc/passwd\n\n";

    #[test]
    fn paths_from_stanzas() {
        let (paths, ts, n) = parse(SAMPLE);
        assert_eq!(ts, Some(1738033770));
        assert_eq!(n, 3);
        assert!(paths.contains("sys-libs/mtdev/mtdev-1.1.7-1.gpkg.tar"));
        assert!(paths.contains("app-misc/old-1.0.tbz2"));
        assert!(paths.contains("app-misc/old-1.0.gpkg.tar"));
        assert!(!paths.iter().any(|p| p.contains("..")));
        assert_eq!(paths.len(), 3);
    }

    #[test]
    fn values_may_contain_colons_and_crlf() {
        let (paths, _, _) = parse("VERSION: 0\r\n\r\nCPV: a/b-1\r\nPATH: a/b/b-1-2.gpkg.tar\r\n");
        assert!(paths.contains("a/b/b-1-2.gpkg.tar"));
    }

    #[test]
    fn unsafe_paths() {
        for p in ["/etc/passwd", "a/../b", "a//b", "./a", "a\\b", "", "a/./b"] {
            assert!(!safe_rel(p), "{p}");
        }
        assert!(safe_rel("cat/pn/pn-1-1.gpkg.tar"));
    }

    #[test]
    fn cache_follows_replacement() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("Packages");
        let cache = IndexCache::default();
        assert!(cache.get("m", &p).unwrap().is_none());
        std::fs::write(&p, SAMPLE).unwrap();
        let a = cache.get("m", &p).unwrap().unwrap();
        let b = cache.get("m", &p).unwrap().unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        crate::fsutil::atomic_write(&p, b"VERSION: 0\n\nCPV: x/y-1\nPATH: x/y/y-1-1.gpkg.tar\n")
            .unwrap();
        let c = cache.get("m", &p).unwrap().unwrap();
        assert!(c.allows("x/y/y-1-1.gpkg.tar"));
        assert!(!c.allows("sys-libs/mtdev/mtdev-1.1.7-1.gpkg.tar"));
    }
}
