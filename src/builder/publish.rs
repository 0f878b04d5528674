//! What hosts may see of a machine's PKGDIR after a completed pass: a new generation
//! (`generations`: Portage's index without the binpkgs held back, `info.json` with the tree
//! snapshot the binaries were built on and the pass, a hardlink of every binpkg listed), made
//! complete under a temporary name and then served by replacing the `published` symlink, so a
//! host never reads an index that names a file still being written.
//!
//! Only gpkgs are published, each signed with the store's key (`crate::sign`) before the index
//! naming it is written: a gpkg whose signature is not from a listed key is signed in place, and
//! its entry in PKGDIR's own `Packages` (SIZE, MD5, SHA1, MTIME: what Portage matches a file by)
//! is updated to the signed file, so the builder's emerge and the hosts see one consistent index.
//! xpak binpkgs (`.tbz2`, `.xpak`) cannot carry signatures and are never published.
//!
//! A generation's `Packages` gets a `TIMESTAMP` that changes only when its content does, the file's
//! mtime equal to it (Portage's client asks with `If-Modified-Since` = its cached TIMESTAMP + 5 s,
//! so it gets 304 until a new publication), and a `TTL` within which clients do not ask at all.
//!
//! Held back: binpkgs with an ELF file whose ABI note (`readelf -n`: `OS: Linux, ABI: x.y.z`)
//! asks for a newer kernel than the hosts of the machine run (the kernel recorded in the
//! imported host bundle, or `machines/<M>/kernel`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::state::{now, AbiWarning, Counts, LastPass, PassSummary, PublishedInfo, SnapshotRef};
use super::{BuildEnv, BuilderError, Machine, MachineLock, Result};
use crate::fsutil::FileStamp;
use crate::sign::gpkg::{ensure_signed, in_pkgdir, is_gpkg, FileFacts};
use crate::sign::Keys;

/// Seconds within which a host reuses its cached copy of `Packages` without asking (`TTL:`).
pub const INDEX_TTL_SECS: u64 = 300;

/// The kernel release the machine's hosts run, when known.
pub fn host_kernel(m: &Machine) -> Option<String> {
    if let Some(k) = m.host_bundle().and_then(|b| b.manifest.kernel.clone()) {
        return Some(k);
    }
    std::fs::read_to_string(m.files().kernel())
        .ok()
        .map(|k| k.trim().to_string())
        .filter(|k| !k.is_empty())
}

/// One scanned binpkg: the file's stamp when it was scanned, its ABI notes as (file, "x.y.z").
type Scanned = (FileStamp, Vec<(String, String)>);

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

/// Signing results per binpkg file, so a pass only reads new or changed files. Each result
/// holds for the file it was taken from (its stamp): a file of that name that is another
/// inode is read again, whatever its size and mtime (a builder swapped in by `rebase` brings a
/// PKGDIR whose builds may carry the names, sizes and mtime seconds of the old one's).
#[derive(Default, Serialize, Deserialize)]
struct SignCache {
    /// path relative to PKGDIR -> what signing found
    files: BTreeMap<String, SignedFile>,
}

#[derive(Serialize, Deserialize)]
struct SignedFile {
    stamp: FileStamp,
    facts: FileFacts,
    /// The fingerprint of the key whose signature the file carries.
    signer: String,
}

fn sign_error(e: crate::sign::SignError) -> BuilderError {
    BuilderError::Sign(e)
}

/// Replace (or add) `KEY: value` lines of a stanza.
fn set_fields(stanza: &str, fields: &[(&str, String)]) -> String {
    let mut lines: Vec<String> = stanza
        .trim_end_matches('\n')
        .lines()
        .map(str::to_string)
        .collect();
    for (k, v) in fields {
        let line = format!("{k}: {v}");
        match lines
            .iter_mut()
            .find(|l| l.split_once(": ").map(|(a, _)| a) == Some(k))
        {
            Some(l) => *l = line,
            None => lines.push(line),
        }
    }
    lines.sort_by(|a, b| a.split(": ").next().cmp(&b.split(": ").next()));
    lines.join("\n")
}

/// A header with PACKAGES, TIMESTAMP and TTL set, keys in Portage's (sorted) order.
fn header_with(header: &str, count: usize, timestamp: u64) -> String {
    set_fields(
        header,
        &[
            ("PACKAGES", count.to_string()),
            ("TIMESTAMP", timestamp.to_string()),
            ("TTL", INDEX_TTL_SECS.to_string()),
        ],
    )
}

/// The identity of PKGDIR's index as the last publication left it (size, mtime in ns).
fn index_identity(m: &Machine) -> Option<(u64, i128)> {
    let md = std::fs::metadata(m.files().binpkgs_index()).ok()?;
    let t = md.modified().ok()?;
    let ns = match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i128,
        Err(e) => -(e.duration().as_nanos() as i128),
    };
    Some((md.len(), ns))
}

/// Whether what is published is out of date: PKGDIR's index changed since, or the listed
/// signing keys did (a rotation or withdrawal re-signs at the next publication).
pub fn stale(env: &BuildEnv, m: &Machine) -> Result<bool> {
    let Some(info) = latest_info(m)? else {
        return Ok(true);
    };
    let index = index_identity(m).map(|(s, t)| (s, t.to_string()));
    let listed = crate::sign::read_public(&Keys::public_file(&env.store))
        .map(|ks| {
            ks.iter()
                .map(crate::sign::fingerprint_hex)
                .collect::<Vec<_>>()
        })
        .ok();
    Ok(index != info.index || listed.as_ref() != Some(&info.listed_keys))
}

/// Sign every gpkg stanza's file (cached by size and mtime), update the stanzas to the files as
/// they are now, and rewrite PKGDIR's `Packages` when an entry changed. Returns the gpkg stanzas
/// to publish; xpak and damaged binpkgs are left out with a warning.
fn sign_all(m: &MachineLock, keys: &Keys, header: &str, all: &[String]) -> Result<Vec<String>> {
    let cache_path = m.files().sign_cache();
    // A cache: an unreadable one only costs the work it would have saved.
    let mut cache: SignCache = std::fs::read(&cache_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let mut fresh = SignCache::default();
    let listed = keys.listed();
    let mut updated = Vec::with_capacity(all.len());
    let mut publish = Vec::new();
    let mut changed = false;
    let mut xpak = 0usize;
    for st in all {
        let rel = stanza_path(st);
        let path = rel.as_deref().and_then(|r| in_pkgdir(&m.binpkgs(), r));
        let (Some(rel), Some(path)) = (rel, path) else {
            updated.push(st.clone());
            continue;
        };
        if !is_gpkg(&rel) {
            xpak += 1;
            updated.push(st.clone());
            continue;
        }
        let Ok(stamp) = FileStamp::of(&path) else {
            updated.push(st.clone());
            continue;
        };
        let (facts, signer, stamp) = match cache.files.remove(&rel) {
            Some(c) if c.stamp == stamp && listed.contains(&c.signer) => (c.facts, c.signer, stamp),
            _ => match ensure_signed(&path, keys) {
                // Signing replaced the file: the stamp is the new file's.
                Ok(s) if s.rewritten => (s.facts, s.signer, FileStamp::of(&path)?),
                Ok(s) => (s.facts, s.signer, stamp),
                Err(e @ crate::sign::SignError::Corrupt(..))
                | Err(e @ crate::sign::SignError::NotGpkg(..)) => {
                    tracing::warn!("not published: {e}");
                    updated.push(st.clone());
                    continue;
                }
                Err(e) => return Err(sign_error(e)),
            },
        };
        let new = set_fields(
            st,
            &[
                ("MD5", facts.md5.clone()),
                ("MTIME", facts.mtime.to_string()),
                ("SHA1", facts.sha1.clone()),
                ("SIZE", facts.size.to_string()),
            ],
        );
        if new != st.trim_end_matches('\n') {
            changed = true;
        }
        fresh.files.insert(
            rel,
            SignedFile {
                stamp,
                facts,
                signer,
            },
        );
        updated.push(new.clone());
        publish.push(new);
    }
    if xpak > 0 {
        tracing::warn!(
            "{xpak} xpak binpkg(s) not published: hosts verify signatures, \
             which only gpkg carries (set BINPKG_FORMAT=gpkg)"
        );
    }
    if changed {
        let mut text = header.trim_end_matches('\n').to_string();
        text.push_str("\n\n");
        for st in &updated {
            text.push_str(st.trim_end_matches('\n'));
            text.push_str("\n\n");
        }
        crate::fsutil::atomic_write(&m.files().binpkgs_index(), text.as_bytes())?;
    }
    crate::fsutil::atomic_write(&cache_path, &serde_json::to_vec(&fresh).expect("json"))?;
    Ok(publish)
}

/// The published index text without its TIMESTAMP line (to tell whether the content changed).
fn without_timestamp(text: &str) -> String {
    let (header, rest) = text.split_once("\n\n").unwrap_or((text, ""));
    let header: Vec<&str> = header
        .lines()
        .filter(|l| !l.starts_with("TIMESTAMP: "))
        .collect();
    format!("{}\n\n{rest}", header.join("\n"))
}

/// What the newest publication holds (the newest generation, else a `published/` directory an
/// older gbuild wrote). A rollback does not change it: what the builder made last is what the
/// next pass compares with.
pub fn latest_info(m: &Machine) -> Result<Option<PublishedInfo>> {
    match super::generations::newest(m)? {
        Some(id) => PublishedInfo::read_in(&m.files().generation(id)),
        None => PublishedInfo::read(m),
    }
}

/// The newest publication's index text.
fn latest_index(m: &Machine) -> Result<Option<String>> {
    let path = match super::generations::newest(m)? {
        Some(id) => m.files().generation(id).packages(),
        None => m.published().packages(),
    };
    match std::fs::read_to_string(&path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(crate::fsutil::FsError::new("read", &path, e).into()),
    }
}

/// What makes two publications the same for hosts: the index without its TIMESTAMP, the
/// signed record without its time (snapshot, configuration, requests) and the key that signs.
fn content_digest(index: &str, release: &super::release::Release, key: &str) -> String {
    let mut r = release.clone();
    r.published_at = 0;
    let body = serde_json::to_string(&r).expect("release serializes");
    crate::host::bundle::sha256_hex(
        [without_timestamp(index).as_str(), &body, key]
            .join("\0")
            .as_bytes(),
    )
}

/// A publication written as the next generation, under a temporary name, but not yet
/// served: what the gate checks and `commit` makes a generation.
#[derive(Debug)]
pub struct Staged {
    /// Its directory (`generations/` under a temporary name): `Packages`, the signed record,
    /// the bundle, `binpkgs/` (hardlinks); `info.json` is written by `commit`.
    pub dir: std::path::PathBuf,
    /// Its `Packages` index.
    pub index: String,
    /// The binpkgs it names, relative to PKGDIR.
    pub paths: Vec<String>,
    pub counts: Counts,
    pub held: Vec<AbiWarning>,
    /// Its `info.json`, which `commit` completes (number, pass) and writes.
    pub info: PublishedInfo,
}

/// What `stage` found.
#[derive(Debug)]
pub enum Staging {
    /// The newest generation (its id) already is this publication (same index, snapshot,
    /// configuration, requests and key): nothing to check or publish.
    Unchanged(u64, Counts, Vec<AbiWarning>),
    /// A new publication, staged.
    New(Box<Staged>),
}

/// What a publication did.
#[derive(Debug, Clone, Default)]
pub struct Published {
    pub counts: Counts,
    pub held: Vec<AbiWarning>,
    /// The new generation, None when nothing new was published.
    pub generation: Option<u64>,
    /// Generations removed beyond gbuild.toml's `keep`.
    pub pruned: Vec<u64>,
}

/// Sign, hold back, and write the next publication as a generation under a temporary name
/// (see `Staged`), unless the newest generation already is it.
pub fn stage(env: &BuildEnv, m: &MachineLock, snapshot: &str) -> Result<Staging> {
    let index = m.files().binpkgs_index();
    let text = std::fs::read_to_string(&index).unwrap_or_default();
    let (header, all) = stanzas(&text);
    let (keys, opened) = Keys::open(&env.store).map_err(sign_error)?;
    if opened == crate::sign::Opened::Created {
        tracing::info!(
            "created the binpkg signing key {} (hosts: gbuild host trust --fingerprint {})",
            keys.fingerprint(),
            keys.fingerprint()
        );
    }
    let all = sign_all(m, &keys, &header, &all)?;
    let kernel = host_kernel(m);
    let held = match &kernel {
        Some(k) => abi_check(m, &all, k)?,
        None => Vec::new(),
    };
    let held_cpvs: std::collections::BTreeSet<&str> = held.iter().map(|w| w.cpv.as_str()).collect();
    let mut kept = Vec::new();
    let mut files = Vec::new();
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
        files.extend(stanza_path(st));
        kept.push(st.clone());
    }
    let render = |timestamp: u64| {
        let mut out = header_with(&header, count, timestamp);
        out.push_str("\n\n");
        for st in &kept {
            out.push_str(st.trim_end_matches('\n'));
            out.push_str("\n\n");
        }
        out
    };
    let counts = Counts {
        binpkgs: count,
        bytes,
    };
    // A new TIMESTAMP only for new content, and always more than 5 s after the previous one
    // (and after the mtime of what is served, which a rollback moves on): a client whose cached
    // copy is older must never get a 304.
    let newest = super::generations::newest(m)?;
    let previous = latest_index(m)?;
    let prev_ts = previous
        .as_deref()
        .and_then(|t| field(t.split("\n\n").next().unwrap_or(""), "TIMESTAMP"))
        .and_then(|v| v.trim().parse::<u64>().ok());
    let served = std::fs::metadata(m.published().packages())
        .ok()
        .map(|md| filetime::FileTime::from_last_modification_time(&md).unix_seconds() as u64);
    let now_secs = now();
    let same_index = matches!((prev_ts, &previous),
        (Some(ts), Some(p)) if without_timestamp(p) == without_timestamp(&render(ts)));
    let timestamp = match (prev_ts, same_index) {
        (Some(ts), true) => ts,
        _ => match prev_ts.max(served) {
            Some(ts) => now_secs.max(ts + 6),
            None => now_secs,
        },
    };
    let out = render(timestamp);
    let tarball = crate::fetch::verified_snapshot(&env.store, snapshot)
        .and_then(|a| {
            a.path
                .strip_prefix(env.store.root())
                .ok()
                .map(|p| p.display().to_string())
        })
        .unwrap_or_default();
    let ident = crate::fetch::read_tree_identity(&env.store.repo(snapshot)).ok();
    let info = PublishedInfo {
        machine: m.name.clone(),
        published_at: now_secs,
        snapshot: Some(SnapshotRef {
            date: Some(snapshot.to_string()),
            tarball: (!tarball.is_empty()).then_some(tarball),
            timestamp_chk: ident.as_ref().and_then(|i| i.timestamp_chk.clone()),
            timestamp_commit: ident.as_ref().and_then(|i| i.commit.clone()),
        }),
        kernel,
        packages: count,
        bytes,
        held_back: held.clone(),
        signing_key: Some(keys.fingerprint()),
        listed_keys: keys.listed(),
        index: index_identity(m).map(|(s, t)| (s, t.to_string())),
        ..PublishedInfo::default()
    };
    // The signed record of the publication (and the configuration it was built for) goes into
    // the generation with its index, so a host following an older generation is brought to
    // that generation's tree and configuration.
    let mut release = None;
    let record = |dir: &std::path::Path| -> Result<()> {
        release = Some(super::release::write(env, m, &keys, dir, snapshot)?);
        Ok(())
    };
    let dir = super::generations::stage(m, out.as_bytes(), timestamp, &files, record)?;
    let content = release
        .as_ref()
        .map(|r| content_digest(&out, r, &keys.fingerprint()));
    if let Some(id) = newest {
        let newest_content =
            PublishedInfo::read_in(&m.files().generation(id))?.and_then(|i| i.content);
        if same_index && content.is_some() && newest_content == content {
            super::generations::discard(&dir);
            return Ok(Staging::Unchanged(id, counts, held));
        }
    }
    Ok(Staging::New(Box::new(Staged {
        dir,
        paths: files,
        index: out,
        counts,
        held,
        info: PublishedInfo { content, ..info },
    })))
}

/// Make a staged publication the newest generation and serve it; generations beyond
/// gbuild.toml's `keep` are removed. `pass` is the pass it comes from, `gate` what the publish
/// gate decided on it.
pub fn commit(
    env: &BuildEnv,
    m: &MachineLock,
    staged: Staged,
    pass: Option<&LastPass>,
    gate: Option<super::state::GateResult>,
) -> Result<Published> {
    let mut info = staged.info;
    info.gate = gate;
    let now_secs = now();
    info.pass = pass.map(|p| PassSummary {
        started: p.started,
        finished: p.finished.unwrap_or(now_secs),
        kind: p.kind,
        built: p.built.len(),
        reused: p.reused,
    });
    let pl = super::generations::PublishLock::acquire(m)?;
    let id = match super::generations::seal(&pl, &staged.dir, &mut info) {
        Ok(id) => id,
        Err(e) => {
            super::generations::discard(&staged.dir);
            return Err(e);
        }
    };
    super::generations::switch(&pl, id)?;
    let pruned = super::generations::prune(&pl, env.config.keep)?;
    Ok(Published {
        counts: staged.counts,
        held: staged.held,
        generation: Some(id),
        pruned,
    })
}

/// Nothing new to publish: generations beyond `keep` are removed all the same.
pub fn unchanged(
    env: &BuildEnv,
    m: &MachineLock,
    counts: Counts,
    held: Vec<AbiWarning>,
) -> Result<Published> {
    let pl = super::generations::PublishLock::acquire(m)?;
    Ok(Published {
        counts,
        held,
        generation: None,
        pruned: super::generations::prune(&pl, env.config.keep)?,
    })
}

/// Drop a staged publication: what is published stays.
pub fn discard(staged: Staged) {
    super::generations::discard(&staged.dir);
}

/// Scan the binpkgs of `stanzas` for ABI notes newer than `kernel` (cached per file).
fn abi_check(m: &MachineLock, stanzas: &[String], kernel: &str) -> Result<Vec<AbiWarning>> {
    let cache_path = m.files().abi_cache();
    // A cache: an unreadable one only costs the work it would have saved.
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
        let Ok(stamp) = FileStamp::of(&path) else {
            continue;
        };
        let notes = match cache.files.remove(&rel) {
            Some((s, notes)) if s == stamp => notes,
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
                    tracing::warn!("{e}");
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
        fresh.files.insert(rel, (stamp, notes));
    }
    crate::fsutil::atomic_write(&cache_path, &serde_json::to_vec(&fresh).expect("json"))?;
    Ok(held)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A binpkg replaced by another build of the same name, size and mtime second (what a
    /// rebase swap brings when the running builder built the same package in the same second)
    /// is read and signed again: the index never carries the old file's digests.
    #[test]
    fn a_replaced_binpkg_is_read_again_whatever_its_size_and_mtime() {
        use crate::sign::gpkg::{file_facts, listed_signer, tests::unsigned_gpkg};
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::tempdir().unwrap();
        let store = crate::store::Store::at(d.path().join("store"));
        let m = MachineLock::create(&store, "m").unwrap();
        let (keys, _) = Keys::open(&store).unwrap();
        let rel = "app-editors/nano/nano-8.2-2.gpkg.tar";
        let file = m.binpkgs().join(rel);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        unsigned_gpkg(&file, b"first build");
        let header = "ARCH: amd64\nVERSION: 0";
        let stanza = format!("CPV: app-editors/nano-8.2\nBUILD_ID: 2\nPATH: {rel}");
        let first = sign_all(&m, &keys, header, std::slice::from_ref(&stanza)).unwrap();
        let signed_first = file_facts(&file).unwrap();
        assert_eq!(field(&first[0], "SHA1"), Some(signed_first.sha1.as_str()));

        // The other build, signed in another PKGDIR (same length), renamed over the first with
        // the first's mtime.
        let other = d.path().join("other.gpkg.tar");
        unsigned_gpkg(&other, b"other build");
        crate::sign::gpkg::ensure_signed(&other, &keys).unwrap();
        let md = std::fs::metadata(&file).unwrap();
        filetime::set_file_mtime(&other, filetime::FileTime::from_last_modification_time(&md))
            .unwrap();
        std::fs::rename(&other, &file).unwrap();
        let md2 = std::fs::metadata(&file).unwrap();
        assert_eq!((md2.size(), md2.mtime()), (md.size(), md.mtime()));

        let index = std::fs::read_to_string(m.files().binpkgs_index()).unwrap();
        let (_, stanzas_now) = stanzas(&index);
        let again = sign_all(&m, &keys, header, &stanzas_now).unwrap();
        let now = file_facts(&file).unwrap();
        assert_ne!(now.sha1, signed_first.sha1);
        assert_eq!(field(&again[0], "SHA1"), Some(now.sha1.as_str()));
        assert_eq!(
            listed_signer(&file, &keys).unwrap(),
            Some(keys.fingerprint()),
            "the other build is published signed"
        );
    }

    #[test]
    fn stanza_split() {
        let text = "ARCH: amd64\nPACKAGES: 2\n\nCPV: a/b-1\nPATH: a/b/b-1-1.gpkg.tar\nSIZE: 10\n\nCPV: c/d-2\nSIZE: 5\n\n";
        let (h, s) = stanzas(text);
        assert!(h.contains("PACKAGES: 2"));
        assert_eq!(s.len(), 2);
        assert_eq!(stanza_path(&s[0]).unwrap(), "a/b/b-1-1.gpkg.tar");
        assert_eq!(stanza_path(&s[1]).unwrap(), "c/d-2.tbz2");
    }

    #[test]
    fn fields_and_header() {
        let st = "CPV: a/b-1\nMD5: 00\nSIZE: 10\nPATH: a/b/b-1-1.gpkg.tar";
        let new = set_fields(st, &[("SIZE", "20".into()), ("MTIME", "5".into())]);
        assert_eq!(
            new,
            "CPV: a/b-1\nMD5: 00\nMTIME: 5\nPATH: a/b/b-1-1.gpkg.tar\nSIZE: 20"
        );
        let h = header_with("ARCH: amd64\nPACKAGES: 9\nTIMESTAMP: 1\nVERSION: 0", 2, 77);
        assert_eq!(
            h,
            format!("ARCH: amd64\nPACKAGES: 2\nTIMESTAMP: 77\nTTL: {INDEX_TTL_SECS}\nVERSION: 0")
        );
        let a = format!("{h}\n\nCPV: a/b-1\n\n");
        let b = a.replace("TIMESTAMP: 77", "TIMESTAMP: 99");
        assert_eq!(without_timestamp(&a), without_timestamp(&b));
        assert_ne!(
            without_timestamp(&a),
            without_timestamp(&a.replace("b-1", "b-2"))
        );
    }
}
