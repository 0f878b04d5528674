//! What hosts may see of a machine's PKGDIR after a completed pass: `published/Packages`
//! (Portage's index without the binpkgs held back) and `published/info.json` (the tree snapshot
//! the binaries were built on), replaced together in one rename, so a host never reads an index
//! that names a file still being written.
//!
//! Held back: binpkgs with an ELF file whose ABI note (`readelf -n`: `OS: Linux, ABI: x.y.z`)
//! asks for a newer kernel than the hosts of the machine run (the kernel recorded in the
//! imported host bundle, or `machines/<M>/kernel`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::state::{now, AbiWarning, Counts};
use super::{BuildEnv, Machine, MachineLock, Result};
use crate::fsutil::IoContext;

/// The kernel release the machine's hosts run, when known.
pub fn host_kernel(env: &BuildEnv, m: &Machine) -> Option<String> {
    let _ = env;
    if let Some(k) = m.host_bundle().and_then(|b| b.manifest.kernel.clone()) {
        return Some(k);
    }
    std::fs::read_to_string(m.dir().join("kernel"))
        .ok()
        .map(|k| k.trim().to_string())
        .filter(|k| !k.is_empty())
}

/// One scanned binpkg: (size, mtime, its ABI notes as (file, "x.y.z")).
type Scanned = (u64, i64, Vec<(String, String)>);

/// Scan results per binpkg file, so a pass only scans new files.
#[derive(Default, Serialize, Deserialize)]
struct AbiCache {
    /// path relative to PKGDIR -> what its scan found
    files: BTreeMap<String, Scanned>,
}

/// Split a Packages index into its header and package stanzas.
pub fn stanzas(text: &str) -> (String, Vec<String>) {
    let mut parts = text.split("\n\n").filter(|p| !p.trim().is_empty());
    let header = parts.next().unwrap_or("").to_string();
    (header, parts.map(str::to_string).collect())
}

fn field<'a>(stanza: &'a str, key: &str) -> Option<&'a str> {
    stanza
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(": ")))
}

/// The path of a stanza's binpkg relative to PKGDIR (PATH, else the classic layout).
fn stanza_path(stanza: &str) -> Option<String> {
    if let Some(p) = field(stanza, "PATH") {
        return Some(p.to_string());
    }
    let cpv = field(stanza, "CPV")?;
    Some(format!("{cpv}.tbz2"))
}

/// Publish; returns the counts and the binpkgs held back.
pub fn publish(
    env: &BuildEnv,
    m: &MachineLock,
    snapshot: &str,
) -> Result<(Counts, Vec<AbiWarning>)> {
    let index = m.binpkgs().join("Packages");
    let text = std::fs::read_to_string(&index).unwrap_or_default();
    let (header, all) = stanzas(&text);
    let kernel = host_kernel(env, m);
    let held = match &kernel {
        Some(k) => abi_check(m, &all, k)?,
        None => Vec::new(),
    };
    let held_cpvs: std::collections::BTreeSet<&str> = held.iter().map(|w| w.cpv.as_str()).collect();
    let mut kept = Vec::new();
    let (mut count, mut bytes) = (0usize, 0u64);
    for st in &all {
        let cpv = field(st, "CPV").unwrap_or("");
        if held_cpvs.contains(cpv) {
            continue;
        }
        count += 1;
        bytes += field(st, "SIZE")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        kept.push(st.clone());
    }
    let header: String = header
        .lines()
        .map(|l| {
            if l.starts_with("PACKAGES: ") {
                format!("PACKAGES: {count}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = header;
    out.push_str("\n\n");
    for st in &kept {
        out.push_str(st.trim_end_matches('\n'));
        out.push_str("\n\n");
    }

    let tmp = m
        .dir()
        .join(format!("published.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).at("create directory", &tmp)?;
    std::fs::write(tmp.join("Packages"), &out).at("write", &tmp)?;
    let tarball = crate::fetch::verified_snapshot(&env.store, snapshot)
        .and_then(|a| {
            a.path
                .strip_prefix(env.store.root())
                .ok()
                .map(|p| p.display().to_string())
        })
        .unwrap_or_default();
    let ident = crate::fetch::read_tree_identity(&env.store.repos().join(snapshot)).ok();
    let info = serde_json::json!({
        "machine": m.name,
        "published_at": now(),
        "snapshot": {
            "date": snapshot,
            "tarball": tarball,
            "timestamp_chk": ident.as_ref().and_then(|i| i.timestamp_chk.clone()),
            "timestamp_commit": ident.as_ref().and_then(|i| i.commit.clone()),
        },
        "kernel": kernel,
        "packages": count,
        "bytes": bytes,
        "held_back": held,
    });
    std::fs::write(
        tmp.join("info.json"),
        serde_json::to_vec_pretty(&info).expect("json"),
    )
    .at("write", &tmp)?;
    for f in ["Packages", "info.json"] {
        let p = tmp.join(f);
        std::fs::File::open(&p)
            .and_then(|f| f.sync_all())
            .at("fsync", &p)?;
    }
    crate::fsutil::fsync_dir(&tmp)?;
    let dest = m.published();
    let old = m
        .dir()
        .join(format!("published.old-{}", std::process::id()));
    if dest.exists() {
        std::fs::rename(&dest, &old).at("rename", &dest)?;
    }
    crate::fsutil::rename_dir_into_place(&tmp, &dest)?;
    let _ = std::fs::remove_dir_all(&old);
    Ok((
        Counts {
            binpkgs: count,
            bytes,
        },
        held,
    ))
}

/// Scan the binpkgs of `stanzas` for ABI notes newer than `kernel` (cached per file).
fn abi_check(m: &Machine, stanzas: &[String], kernel: &str) -> Result<Vec<AbiWarning>> {
    let cache_path = m.dir().join("abi-cache.json");
    let mut cache: AbiCache = std::fs::read(&cache_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let mut fresh = AbiCache::default();
    let mut held = Vec::new();
    for st in stanzas {
        let (Some(cpv), Some(rel)) = (field(st, "CPV"), stanza_path(st)) else {
            continue;
        };
        let path = m.binpkgs().join(&rel);
        let Ok(md) = std::fs::metadata(&path) else {
            continue;
        };
        use std::os::unix::fs::MetadataExt;
        let key = (md.size(), md.mtime());
        let notes = match cache.files.remove(&rel) {
            Some((size, mtime, notes)) if (size, mtime) == key => notes,
            _ => match crate::abi::scan_binpkg(&path) {
                Ok(v) => v
                    .into_iter()
                    .map(|n| {
                        (
                            n.file.clone(),
                            format!("{}.{}.{}", n.version.0, n.version.1, n.version.2),
                        )
                    })
                    .collect(),
                Err(e) => {
                    eprintln!("gbuild: warning: {e}");
                    Vec::new()
                }
            },
        };
        for (file, ver) in &notes {
            let v: Vec<u32> = ver.split('.').filter_map(|x| x.parse().ok()).collect();
            if v.len() == 3 && crate::abi::kernel_too_old((v[0], v[1], v[2]), kernel) {
                held.push(AbiWarning {
                    cpv: cpv.to_string(),
                    file: file.clone(),
                    requires: ver.clone(),
                    kernel: kernel.to_string(),
                });
            }
        }
        fresh.files.insert(rel, (key.0, key.1, notes));
    }
    crate::fsutil::atomic_write(&cache_path, &serde_json::to_vec(&fresh).expect("json"))?;
    Ok(held)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stanza_split() {
        let text = "ARCH: amd64\nPACKAGES: 2\n\nCPV: a/b-1\nPATH: a/b/b-1-1.gpkg.tar\nSIZE: 10\n\nCPV: c/d-2\nSIZE: 5\n\n";
        let (h, s) = stanzas(text);
        assert!(h.contains("PACKAGES: 2"));
        assert_eq!(s.len(), 2);
        assert_eq!(stanza_path(&s[0]).unwrap(), "a/b/b-1-1.gpkg.tar");
        assert_eq!(stanza_path(&s[1]).unwrap(), "c/d-2.tbz2");
    }
}
