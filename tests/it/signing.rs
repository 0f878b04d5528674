//! Helpers for the signed-binhost checks of the builder scenario (`builder.rs`): what a man in
//! the middle could serve instead of a published gpkg (one byte changed, signed by another key,
//! unsigned), Portage's keyring as files, and a search of layers, exports and served files for
//! the store's secret key material.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::Digest;

/// Every regular file under `dir` with its sha256 (sockets and the like skipped).
pub fn tree_digest(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        let md = std::fs::symlink_metadata(&p).unwrap();
        if md.is_dir() {
            out.extend(tree_digest(&p));
        } else if md.is_file() {
            let data = std::fs::read(&p).unwrap();
            out.insert(p, hex::encode(sha2::Sha256::digest(&data)));
        }
    }
    out
}

/// The stanza of `cpv` in a Packages text and its PATH.
pub fn stanza_of<'a>(index: &'a str, cpv: &str) -> (&'a str, String) {
    let st = index
        .split("\n\n")
        .find(|s| s.lines().any(|l| l == format!("CPV: {cpv}")))
        .unwrap_or_else(|| panic!("{cpv} not in the index"));
    let path = st
        .lines()
        .find_map(|l| l.strip_prefix("PATH: "))
        .unwrap()
        .to_string();
    (st, path)
}

/// Serve `bytes` as the published gpkg of `cpv` of `machine`, with an index entry that matches
/// them (SIZE, MD5, SHA1): what someone controlling the HTTP path could do. Returns what to
/// restore: (binpkg path, its bytes, published/Packages, its bytes).
pub fn substitute(machine: &Path, cpv: &str, bytes: &[u8]) -> Restore {
    let published = machine.join("published/Packages");
    let index = std::fs::read_to_string(&published).unwrap();
    let (st, rel) = stanza_of(&index, cpv);
    let file = machine.join("binpkgs").join(&rel);
    let restore = Restore {
        file: file.clone(),
        file_bytes: std::fs::read(&file).unwrap(),
        index: published.clone(),
        index_bytes: index.clone().into_bytes(),
    };
    let new: Vec<String> = st
        .lines()
        .map(|l| {
            if l.starts_with("SIZE: ") {
                format!("SIZE: {}", bytes.len())
            } else if l.starts_with("MD5: ") {
                format!("MD5: {}", hex::encode(md5::Md5::digest(bytes)))
            } else if l.starts_with("SHA1: ") {
                format!("SHA1: {}", hex::encode(sha1::Sha1::digest(bytes)))
            } else {
                l.to_string()
            }
        })
        .collect();
    let text = index.replace(st, &new.join("\n"));
    std::fs::write(&file, bytes).unwrap();
    std::fs::write(&published, text).unwrap();
    restore
}

pub struct Restore {
    file: PathBuf,
    file_bytes: Vec<u8>,
    index: PathBuf,
    index_bytes: Vec<u8>,
}

impl Drop for Restore {
    fn drop(&mut self) {
        std::fs::write(&self.file, &self.file_bytes).unwrap();
        std::fs::write(&self.index, &self.index_bytes).unwrap();
    }
}

/// The members of a gpkg: (name, header, data).
fn members(gpkg: &[u8]) -> Vec<(String, tar::Header, Vec<u8>)> {
    let mut ar = tar::Archive::new(gpkg);
    let mut out = Vec::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().to_string_lossy().into_owned();
        let h = e.header().clone();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        out.push((name, h, data));
    }
    out
}

fn pack(members: &[(String, tar::Header, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, h, data) in members {
        let mut h = h.clone();
        h.set_size(data.len() as u64);
        b.append_data(&mut h, name, &data[..]).unwrap();
    }
    b.into_inner().unwrap()
}

/// The gpkg with one byte of its image's compressed data flipped.
pub fn one_byte_changed(gpkg: &[u8]) -> Vec<u8> {
    let mut ms = members(gpkg);
    let (_, _, data) = ms
        .iter_mut()
        .find(|(n, _, _)| n.contains("/image.tar") && !n.ends_with(".sig"))
        .unwrap();
    let at = data.len() / 2;
    data[at] ^= 0x01;
    pack(&ms)
}

/// The gpkg as Portage writes it without signing: no `.sig` members, a plain Manifest without
/// their lines.
pub fn unsigned(gpkg: &[u8]) -> Vec<u8> {
    let ms = members(gpkg);
    let mut out = Vec::new();
    for (name, h, data) in ms {
        if name.ends_with(".sig") {
            continue;
        }
        if name.ends_with("/Manifest") {
            let text = String::from_utf8(data).unwrap();
            let (msg, _) = pgp::composed::CleartextSignedMessage::from_string(&text).unwrap();
            let plain: String = msg
                .signed_text()
                .replace("\r\n", "\n")
                .lines()
                .filter(|l| !l.split_whitespace().nth(1).unwrap_or("").ends_with(".sig"))
                .map(|l| format!("{l}\n"))
                .collect();
            out.push((name, h, plain.into_bytes()));
        } else {
            out.push((name, h, data));
        }
    }
    pack(&out)
}

/// The gpkg signed again, by gbuild's own signer, with the key of another store.
pub fn signed_by_other_key(gpkg: &[u8], scratch: &Path) -> Vec<u8> {
    let store = gbuild::store::Store::at(scratch.join("other-store"));
    let (keys, _) = gbuild::sign::Keys::open(&store).unwrap();
    let p = scratch.join("other.gpkg.tar");
    std::fs::write(&p, gpkg).unwrap();
    let s = gbuild::sign::gpkg::ensure_signed(&p, &keys).unwrap();
    assert!(s.rewritten && s.signer == keys.fingerprint());
    std::fs::read(&p).unwrap()
}

/// The fingerprint of the listed key that signed a gpkg of `store` (None: none of them).
pub fn signer(store: &Path, gpkg: &Path) -> Option<String> {
    let (keys, _) = gbuild::sign::Keys::open(&gbuild::store::Store::at(store)).unwrap();
    gbuild::sign::gpkg::listed_signer(gpkg, &keys).unwrap()
}

/// Byte strings that betray the store's secret key: its Ed25519 secret scalar, and each line of
/// its armored file that is not also a line of the public keys.
pub fn secret_patterns(store: &Path) -> Vec<Vec<u8>> {
    use pgp::composed::{Deserializable, SignedSecretKey};
    use pgp::types::{PlainSecretParams, SecretParams};
    let text = std::fs::read_to_string(store.join("keys/secret.asc")).unwrap();
    let public = std::fs::read_to_string(store.join("keys/public.asc")).unwrap();
    let (key, _) = SignedSecretKey::from_string(&text).unwrap();
    let mut out = Vec::new();
    match key.primary_key.secret_params() {
        SecretParams::Plain(PlainSecretParams::EdDSALegacy(
            pgp::crypto::eddsa_legacy::SecretKey::Ed25519(k),
        )) => out.push(k.as_bytes().to_vec()),
        other => panic!("unexpected secret key type {other:?}"),
    }
    for l in text.lines() {
        let l = l.trim();
        if l.len() >= 40 && !l.starts_with("-----") && !public.contains(l) {
            out.push(l.as_bytes().to_vec());
        }
    }
    assert!(out.len() >= 2);
    out
}

/// The first pattern found in what `r` yields.
pub fn find_in(mut r: impl Read, patterns: &[Vec<u8>]) -> Option<usize> {
    let keep = patterns.iter().map(Vec::len).max().unwrap_or(0);
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut chunk).unwrap();
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        for (i, p) in patterns.iter().enumerate() {
            if buf.windows(p.len()).any(|w| w == &p[..]) {
                return Some(i);
            }
        }
        if buf.len() > keep {
            buf.drain(..buf.len() - keep);
        }
    }
}

/// The first pattern found in a gpkg, looking inside its zstd-compressed members.
pub fn find_in_gpkg(path: &Path, patterns: &[Vec<u8>]) -> Option<usize> {
    if let Some(i) = find_in(std::fs::File::open(path).unwrap(), patterns) {
        return Some(i);
    }
    let mut ar = tar::Archive::new(std::fs::File::open(path).unwrap());
    for e in ar.entries().unwrap() {
        let e = e.unwrap();
        if e.path().unwrap().to_string_lossy().ends_with(".zst") {
            if let Some(i) = find_in(zstd::Decoder::new(e).unwrap(), patterns) {
                return Some(i);
            }
        }
    }
    None
}

/// A grep (PCRE, bytes) for the patterns, for trees with files only the namespace's root reads.
pub fn pcre(patterns: &[Vec<u8>]) -> String {
    let alts: Vec<String> = patterns
        .iter()
        .map(|p| p.iter().map(|b| format!("\\x{b:02x}")).collect())
        .collect();
    format!("(?:{})", alts.join("|"))
}
