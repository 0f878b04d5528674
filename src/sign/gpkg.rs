//! Signing a gpkg in place the way Portage's own `gpkg-sign` does (`gpkg.update_signature` in
//! Portage's `lib/portage/gpkg.py`), so that Portage's verifier accepts it:
//!
//! ```text
//! <basename>/gpkg-1                   unchanged (empty; never signed)
//! <basename>/metadata.tar.<comp>      unchanged bytes and header
//! <basename>/metadata.tar.<comp>.sig  armored detached signature of it (binary, SHA512)
//! <basename>/image.tar.<comp>         unchanged bytes and header
//! <basename>/image.tar.<comp>.sig     the same for the image
//! <basename>/Manifest                 clearsigned (SHA512): one line per member above,
//!                                     "DATA <name> <size> BLAKE2B <hex> SHA512 <hex>"
//! ```
//!
//! The container keeps its tar format (ustar or GNU, read from the first header as Portage does)
//! and is padded to a 10240-byte record like Python's tarfile. Before signing, every member is
//! checked against the package's existing (unsigned) Manifest: a binpkg damaged on disk is refused,
//! never blessed. The new file is written beside the old one, fsynced and renamed over it.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use blake2::Blake2b512;
use md5::Md5;
use pgp::composed::{ArmorOptions, CleartextSignedMessage, DetachedSignature};
use pgp::crypto::hash::HashAlgorithm;
use pgp::packet::{SignatureConfig, SignatureType, Subpacket, SubpacketData};
use pgp::types::{KeyDetails, Password, Timestamp};
use sha1::Sha1;
use sha2::{Digest, Sha512};

use super::{fingerprint_hex, Keys, Result, SignError};
use crate::fsutil::IoContext;

/// The file facts Portage's `Packages` index records for a binpkg.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileFacts {
    pub size: u64,
    pub mtime: i64,
    pub md5: String,
    pub sha1: String,
}

/// The outcome of `ensure_signed`.
#[derive(Debug, Clone)]
pub struct Signed {
    pub facts: FileFacts,
    /// The fingerprint of the key whose signature the package carries now.
    pub signer: String,
    /// Whether the file was rewritten.
    pub rewritten: bool,
}

/// One member of the container.
struct Member {
    /// Full name inside the container (`<basename>/<name>`).
    path: String,
    /// The name without the basename (what the Manifest records).
    name: String,
    header: tar::Header,
    size: u64,
}

/// Whether a path names a gpkg (the only format gbuild publishes).
pub fn is_gpkg(path: &str) -> bool {
    path.ends_with(".gpkg.tar")
}

/// Sign `path` with the current key unless its Manifest already carries a valid signature of a
/// listed key. Returns the facts of the file as it is afterwards.
pub fn ensure_signed(path: &Path, keys: &Keys) -> Result<Signed> {
    if let Some(signer) = listed_signer(path, keys)? {
        return Ok(Signed {
            facts: file_facts(path)?,
            signer,
            rewritten: false,
        });
    }
    let facts = sign(path, keys)?;
    Ok(Signed {
        facts,
        signer: keys.fingerprint(),
        rewritten: true,
    })
}

/// MD5, SHA1, size and mtime of a file.
pub fn file_facts(path: &Path) -> Result<FileFacts> {
    let mut f = File::open(path).at("open", path)?;
    let mut w = HashingWriter::default();
    io::copy(&mut f, &mut w).at("read", path)?;
    let md = f.metadata().at("stat", path)?;
    Ok(w.facts(mtime_of(&md)))
}

fn mtime_of(md: &std::fs::Metadata) -> i64 {
    use std::os::unix::fs::MetadataExt;
    md.mtime()
}

/// The tar format of a container, detected the way Portage does (`_get_tar_format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Ustar,
    Gnu,
}

fn detect_format(path: &Path) -> Result<Format> {
    let mut f = File::open(path).at("open", path)?;
    let mut head = [0u8; 512];
    f.read_exact(&mut head)
        .map_err(|_| SignError::NotGpkg(path.to_path_buf(), "shorter than a tar header".into()))?;
    match &head[0x101..0x109] {
        b"ustar  \0" => Ok(Format::Gnu),
        b"ustar\x0000" => Ok(Format::Ustar),
        _ => Err(SignError::NotGpkg(
            path.to_path_buf(),
            "no ustar or GNU tar header".into(),
        )),
    }
}

/// The members of a gpkg container, validated as Portage validates them (`_verify_binpkg`): one
/// top directory, no deeper paths, no duplicates, regular files, a `gpkg-1` and a `Manifest`.
/// Returns the members and the Manifest's bytes.
fn members(path: &Path) -> Result<(Vec<Member>, Vec<u8>)> {
    let bad = |why: String| SignError::NotGpkg(path.to_path_buf(), why);
    let f = File::open(path).at("open", path)?;
    let mut ar = tar::Archive::new(f);
    let mut out: Vec<Member> = Vec::new();
    let mut manifest = None;
    let mut prefix: Option<String> = None;
    let unreadable = |e: io::Error| bad(format!("cannot read it as tar: {e}"));
    for e in ar.entries_with_seek().map_err(unreadable)? {
        let mut e = e.map_err(unreadable)?;
        let p = e.path().map_err(unreadable)?.to_string_lossy().into_owned();
        let Some((dir, name)) = p.split_once('/') else {
            return Err(bad(format!("member {p:?} is not inside a directory")));
        };
        if name.contains('/') || name.is_empty() || dir.is_empty() || p.starts_with('/') {
            return Err(bad(format!("member {p:?}: unexpected structure")));
        }
        match &prefix {
            None => prefix = Some(dir.to_string()),
            Some(d) if d != dir => return Err(bad(format!("member {p:?} outside {d}/"))),
            _ => {}
        }
        if !e.header().entry_type().is_file() {
            return Err(bad(format!("member {p:?} is not a regular file")));
        }
        if out.iter().any(|m| m.path == p) || (name == "Manifest" && manifest.is_some()) {
            return Err(bad(format!("duplicate member {p:?}")));
        }
        if name == "Manifest" {
            let mut buf = Vec::new();
            e.read_to_end(&mut buf).at("read", path)?;
            manifest = Some(buf);
            continue;
        }
        out.push(Member {
            path: p.clone(),
            name: name.to_string(),
            header: e.header().clone(),
            size: e.size(),
        });
    }
    if !out.iter().any(|m| m.name == "gpkg-1") {
        return Err(bad("no gpkg-1 member".into()));
    }
    let manifest = manifest.ok_or_else(|| bad("no Manifest member".into()))?;
    Ok((out, manifest))
}

/// The signer of the package's Manifest, if it is a listed key whose signature verifies and the
/// members' sizes match the signed Manifest.
pub fn listed_signer(path: &Path, keys: &Keys) -> Result<Option<String>> {
    let (members, manifest) = members(path)?;
    let text = String::from_utf8_lossy(&manifest);
    if !text.contains("-----BEGIN PGP SIGNED MESSAGE-----") {
        return Ok(None);
    }
    let Ok((msg, _)) = CleartextSignedMessage::from_string(&text) else {
        return Ok(None);
    };
    for sig in msg.signatures() {
        for fpr in sig.issuer_fingerprint() {
            let fpr = format!("{fpr:X}");
            let Some(key) = keys.listed_key(&fpr) else {
                continue;
            };
            if msg.verify(key).is_err() {
                continue;
            }
            let entries = parse_manifest(&msg.signed_text());
            let sizes_match = members
                .iter()
                .all(|m| entries.iter().any(|e| e.name == m.name && e.size == m.size))
                && entries.len() == members.len();
            let all_signed = members
                .iter()
                .filter(|m| m.name != "gpkg-1" && !m.name.ends_with(".sig"))
                .all(|m| members.iter().any(|s| s.name == format!("{}.sig", m.name)));
            if sizes_match && all_signed {
                return Ok(Some(fingerprint_hex(key)));
            }
        }
    }
    Ok(None)
}

/// One `DATA` line of a gpkg Manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    name: String,
    size: u64,
    /// (algorithm, lower-case hex)
    digests: Vec<(String, String)>,
}

fn parse_manifest(text: &str) -> Vec<Entry> {
    let mut out = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 3 || f[0] != "DATA" {
            continue;
        }
        let Ok(size) = f[2].parse() else { continue };
        let digests = f[3..]
            .chunks(2)
            .filter(|c| c.len() == 2)
            .map(|c| (c[0].to_string(), c[1].to_ascii_lowercase()))
            .collect();
        out.push(Entry {
            name: f[1].to_string(),
            size,
            digests,
        });
    }
    out
}

/// The text a Manifest's DATA lines are read from: the cleartext of a clearsigned one.
fn manifest_text(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw).into_owned();
    if text.contains("-----BEGIN PGP SIGNED MESSAGE-----") {
        if let Ok((msg, _)) = CleartextSignedMessage::from_string(&text) {
            return msg.signed_text().replace("\r\n", "\n");
        }
    }
    text
}

/// Digests of one member and, for signed members, its detached signature.
struct Digested {
    blake2b: String,
    sha512: String,
    sig: Option<Vec<u8>>,
}

/// A reader that hashes what passes through it.
struct Tee<'a, R> {
    inner: R,
    blake: &'a mut Blake2b512,
    sha: &'a mut Sha512,
}

impl<R: Read> Read for Tee<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.blake.update(&buf[..n]);
        self.sha.update(&buf[..n]);
        Ok(n)
    }
}

fn sign(path: &Path, keys: &Keys) -> Result<FileFacts> {
    let format = detect_format(path)?;
    let (members, old_manifest) = members(path)?;
    let old = parse_manifest(&manifest_text(&old_manifest));
    let key = &keys.secret().primary_key;
    let err = |e: pgp::errors::Error| SignError::Sign(path.to_path_buf(), e.to_string());

    // Pass 1: digest (and sign) every member that is not an old signature.
    let kept: Vec<&Member> = members
        .iter()
        .filter(|m| !m.name.ends_with(".sig"))
        .collect();
    let mut digested = Vec::new();
    {
        let f = File::open(path).at("open", path)?;
        let mut ar = tar::Archive::new(f);
        let mut it = ar.entries_with_seek().at("read", path)?;
        for m in &kept {
            let mut e = loop {
                let e = it
                    .next()
                    .ok_or_else(|| {
                        SignError::NotGpkg(path.to_path_buf(), "changed while read".into())
                    })?
                    .at("read", path)?;
                if e.path().at("read", path)?.to_string_lossy() == m.path {
                    break e;
                }
            };
            let (mut blake, mut sha) = (Blake2b512::new(), Sha512::new());
            let sig = {
                let tee = Tee {
                    inner: &mut e,
                    blake: &mut blake,
                    sha: &mut sha,
                };
                if m.name == "gpkg-1" {
                    let mut tee = tee;
                    io::copy(&mut tee, &mut io::sink()).at("read", path)?;
                    None
                } else {
                    let s = DetachedSignature::sign_binary_data(
                        rand::thread_rng(),
                        key,
                        &Password::empty(),
                        HashAlgorithm::Sha512,
                        tee,
                    )
                    .map_err(err)?;
                    Some(s.to_armored_bytes(ArmorOptions::default()).map_err(err)?)
                }
            };
            let d = Digested {
                blake2b: hex::encode(blake.finalize()),
                sha512: hex::encode(sha.finalize()),
                sig,
            };
            // What Portage wrote must still be what is on disk.
            if let Some(o) = old.iter().find(|o| o.name == m.name) {
                let same = o.size == m.size
                    && o.digests.iter().all(|(alg, hex)| match alg.as_str() {
                        "BLAKE2B" => *hex == d.blake2b,
                        "SHA512" => *hex == d.sha512,
                        _ => true,
                    });
                if !same {
                    return Err(SignError::Corrupt(path.to_path_buf(), m.name.clone()));
                }
            }
            digested.push(d);
        }
    }

    // The new Manifest, in the order Portage's update_signature writes it.
    let mut lines = String::new();
    let mut data_line = |name: &str, size: u64, blake: &str, sha: &str| {
        lines.push_str(&format!(
            "DATA {name} {size} BLAKE2B {blake} SHA512 {sha}\n"
        ));
    };
    for (m, d) in kept.iter().zip(&digested) {
        data_line(&m.name, m.size, &d.blake2b, &d.sha512);
        if let Some(sig) = &d.sig {
            data_line(
                &format!("{}.sig", m.name),
                sig.len() as u64,
                &hex::encode(Blake2b512::digest(sig)),
                &hex::encode(Sha512::digest(sig)),
            );
        }
    }
    let manifest = clearsign(&lines, keys).map_err(err)?;

    // Pass 2: write the new container beside the old one.
    let prefix = kept[0]
        .path
        .split_once('/')
        .map(|(d, _)| d.to_string())
        .unwrap_or_default();
    let now = crate::time::now();
    let mut out = crate::fsutil::AtomicFile::create(path)?;
    let tmp = out.tmp_path().to_path_buf();
    let old_mode = std::fs::metadata(path).at("stat", path)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            &tmp,
            std::fs::Permissions::from_mode(old_mode.permissions().mode() & 0o7777),
        )
        .at("chmod", &tmp)?;
    }
    let mut hashing = HashingWriter {
        inner: Some(&mut out),
        ..HashingWriter::default()
    };
    {
        let mut b = tar::Builder::new(&mut hashing);
        let f = File::open(path).at("open", path)?;
        let mut ar = tar::Archive::new(f);
        let mut it = ar.entries_with_seek().at("read", path)?;
        let new_header = |size: u64| -> tar::Header {
            let mut h = match format {
                Format::Ustar => tar::Header::new_ustar(),
                Format::Gnu => tar::Header::new_gnu(),
            };
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(now);
            h.set_size(size);
            h
        };
        for (m, d) in kept.iter().zip(&digested) {
            let e = loop {
                let e = it
                    .next()
                    .ok_or_else(|| {
                        SignError::NotGpkg(path.to_path_buf(), "changed while read".into())
                    })?
                    .at("read", path)?;
                if e.path().at("read", path)?.to_string_lossy() == m.path {
                    break e;
                }
            };
            let mut h = m.header.clone();
            b.append_data(&mut h, &m.path, e).at("write", &tmp)?;
            if let Some(sig) = &d.sig {
                let name = format!("{}.sig", m.path);
                let mut h = new_header(sig.len() as u64);
                b.append_data(&mut h, &name, &sig[..]).at("write", &tmp)?;
            }
        }
        let name = format!("{prefix}/Manifest");
        let mut h = new_header(manifest.len() as u64);
        b.append_data(&mut h, &name, manifest.as_bytes())
            .at("write", &tmp)?;
        b.finish().at("write", &tmp)?;
    }
    // Python's tarfile pads the archive to a whole record (20 blocks).
    let pad = (10240 - hashing.len % 10240) % 10240;
    hashing
        .write_all(&vec![0u8; pad as usize])
        .at("write", &tmp)?;
    let facts_without_mtime = hashing.facts(0);
    out.commit()?;
    let md = std::fs::metadata(path).at("stat", path)?;
    Ok(FileFacts {
        mtime: mtime_of(&md),
        ..facts_without_mtime
    })
}

/// The Manifest text, clearsigned with SHA512 as Portage's `BINPKG_GPG_SIGNING_DIGEST` default.
pub(crate) fn clearsign(text: &str, keys: &Keys) -> pgp::errors::Result<String> {
    let key = &keys.secret().primary_key;
    let mut config =
        SignatureConfig::v4(SignatureType::Text, key.algorithm(), HashAlgorithm::Sha512);
    config.hashed_subpackets = vec![
        Subpacket::regular(SubpacketData::SignatureCreationTime(Timestamp::now()))?,
        Subpacket::regular(SubpacketData::IssuerFingerprint(key.fingerprint()))?,
    ];
    config.unhashed_subpackets = vec![Subpacket::regular(SubpacketData::IssuerKeyId(
        key.legacy_key_id(),
    ))?];
    let msg = CleartextSignedMessage::new(text, config, key, &Password::empty())?;
    msg.to_armored_string(ArmorOptions::default())
}

/// Counts and hashes (MD5, SHA1: what Portage's index records) what is written through it.
#[derive(Default)]
struct HashingWriter<'a> {
    inner: Option<&'a mut crate::fsutil::AtomicFile>,
    md5: Md5,
    sha1: Sha1,
    len: u64,
}

impl HashingWriter<'_> {
    fn facts(&self, mtime: i64) -> FileFacts {
        FileFacts {
            size: self.len,
            mtime,
            md5: hex::encode(self.md5.clone().finalize()),
            sha1: hex::encode(self.sha1.clone().finalize()),
        }
    }
}

impl Write for HashingWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = match &mut self.inner {
            Some(w) => w.write(buf)?,
            None => buf.len(),
        };
        self.md5.update(&buf[..n]);
        self.sha1.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        match &mut self.inner {
            Some(w) => w.flush(),
            None => Ok(()),
        }
    }
}

/// The path of a gpkg relative to PKGDIR, joined safely (no absolute paths, no `..`).
pub fn in_pkgdir(pkgdir: &Path, rel: &str) -> Option<PathBuf> {
    let p = Path::new(rel);
    let ok = !rel.is_empty()
        && p.components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
    ok.then(|| pkgdir.join(p))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::store::Store;
    use std::collections::BTreeMap;

    /// A gpkg as Portage writes it without signing: ustar, gpkg-1, metadata, image, Manifest.
    pub(crate) fn unsigned_gpkg(path: &Path, image: &[u8]) {
        let base = "hello-1.0-1";
        let metadata = b"metadata bytes".to_vec();
        let mut manifest = String::new();
        let mut b = tar::Builder::new(File::create(path).unwrap());
        for (name, data) in [
            ("gpkg-1", Vec::new()),
            ("metadata.tar.zst", metadata),
            ("image.tar.zst", image.to_vec()),
        ] {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_mtime(1_700_000_000);
            b.append_data(&mut h, format!("{base}/{name}"), &data[..])
                .unwrap();
            manifest.push_str(&format!(
                "DATA {name} {} SHA512 {} BLAKE2B {}\n",
                data.len(),
                hex::encode(Sha512::digest(&data)),
                hex::encode(Blake2b512::digest(&data)),
            ));
        }
        let mut h = tar::Header::new_ustar();
        h.set_size(manifest.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, format!("{base}/Manifest"), manifest.as_bytes())
            .unwrap();
        b.finish().unwrap();
    }

    #[test]
    fn signs_like_gpkg_sign_and_keeps_members() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::at(d.path().join("store"));
        let (keys, _) = Keys::open(&store).unwrap();
        let p = d.path().join("hello-1.0-1.gpkg.tar");
        unsigned_gpkg(&p, b"image bytes");
        assert_eq!(listed_signer(&p, &keys).unwrap(), None);
        let s = ensure_signed(&p, &keys).unwrap();
        assert!(s.rewritten);
        assert_eq!(s.signer, keys.fingerprint());
        assert_eq!(s.facts, file_facts(&p).unwrap());
        assert_eq!(s.facts.size % 10240, 0);
        let (members, manifest) = members(&p).unwrap();
        let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "gpkg-1",
                "metadata.tar.zst",
                "metadata.tar.zst.sig",
                "image.tar.zst",
                "image.tar.zst.sig"
            ]
        );
        // The data members kept their bytes and headers.
        assert_eq!(members[3].header.mtime().unwrap(), 1_700_000_000);
        let text = String::from_utf8(manifest).unwrap();
        assert!(text.starts_with("-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA512\n\n"));
        let entries = parse_manifest(&manifest_text(text.as_bytes()));
        assert_eq!(entries.len(), 5);
        assert_eq!(entries[3].name, "image.tar.zst");
        assert_eq!(
            entries[3].digests[1].1,
            hex::encode(Sha512::digest(b"image bytes"))
        );
        // Signed already: left alone.
        let again = ensure_signed(&p, &keys).unwrap();
        assert!(!again.rewritten);
        assert_eq!(again.facts, s.facts);
        // After a rotation the old signature is still a listed one.
        Keys::rotate(&store).unwrap();
        let (keys2, _) = Keys::open(&store).unwrap();
        let kept = ensure_signed(&p, &keys2).unwrap();
        assert!(!kept.rewritten);
        assert_eq!(kept.signer, keys.fingerprint());
        // Withdrawn: signed again with the current key.
        Keys::withdraw(&store, &keys.fingerprint()).unwrap();
        let (keys3, _) = Keys::open(&store).unwrap();
        let re = ensure_signed(&p, &keys3).unwrap();
        assert!(re.rewritten);
        assert_eq!(re.signer, keys3.fingerprint());
        assert_eq!(members_of(&p), names);
    }

    /// What Portage's verifier runs (BINPKG_GPG_VERIFY_BASE_COMMAND) accepts gbuild's
    /// signatures: GOODSIG and a trusted key for the Manifest and each signed member.
    #[test]
    fn real_gpg_verifies_like_portage() {
        if std::process::Command::new("gpg")
            .arg("--version")
            .output()
            .is_err()
        {
            assert!(
                std::env::var("GBUILD_MUST_WORK").as_deref() != Ok("1"),
                "no gpg, and GBUILD_MUST_WORK=1"
            );
            eprintln!("skipped: no gpg");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let store = Store::at(d.path().join("store"));
        let (keys, _) = Keys::open(&store).unwrap();
        let p = d.path().join("hello-1.0-1.gpkg.tar");
        unsigned_gpkg(&p, &vec![7u8; 100_000]);
        ensure_signed(&p, &keys).unwrap();
        let home = d.path().join("gnupg");
        std::fs::create_dir(&home).unwrap();
        let gpg = |args: &[&str], input: &[u8]| -> (bool, String, Vec<u8>) {
            use std::io::Write;
            let mut c = std::process::Command::new("gpg")
                .arg("--homedir")
                .arg(&home)
                .args(["--batch", "--no-tty", "--no-permission-warning"])
                .args(args)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            c.stdin.take().unwrap().write_all(input).unwrap();
            let o = c.wait_with_output().unwrap();
            (
                o.status.success(),
                String::from_utf8_lossy(&o.stderr).into_owned(),
                o.stdout,
            )
        };
        assert!(gpg(&["--import"], keys.public_armored().as_bytes()).0);
        let trust = format!("{}:6:\n", keys.fingerprint());
        assert!(gpg(&["--import-ownertrust"], trust.as_bytes()).0);
        assert!(gpg(&["--check-trustdb"], b"").0);
        let verify = ["--verify", "--no-auto-check-trustdb", "--status-fd", "2"];
        let accepted = |status: &str| {
            status.contains("[GNUPG:] GOODSIG")
                && (status.contains("[GNUPG:] TRUST_ULTIMATE")
                    || status.contains("[GNUPG:] TRUST_FULLY"))
        };
        let data = std::fs::read(&p).unwrap();
        let mut ar = tar::Archive::new(&data[..]);
        let mut files = BTreeMap::new();
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let name = e.path().unwrap().to_string_lossy().into_owned();
            let mut buf = Vec::new();
            e.read_to_end(&mut buf).unwrap();
            files.insert(name, buf);
        }
        let manifest = &files["hello-1.0-1/Manifest"];
        let mut args = verify.to_vec();
        args.extend(["--output", "-", "-"]);
        let (ok, status, out) = gpg(&args, manifest);
        assert!(ok && accepted(&status), "{status}");
        assert!(String::from_utf8(out)
            .unwrap()
            .contains("DATA image.tar.zst 100000 "));
        for m in ["metadata.tar.zst", "image.tar.zst"] {
            let sig = d.path().join("member.sig");
            std::fs::write(&sig, &files[&format!("hello-1.0-1/{m}.sig")]).unwrap();
            let mut args = verify.to_vec();
            args.extend([sig.to_str().unwrap(), "-"]);
            let (ok, status, _) = gpg(&args, &files[&format!("hello-1.0-1/{m}")]);
            assert!(ok && accepted(&status), "{m}: {status}");
            let mut bad = files[&format!("hello-1.0-1/{m}")].clone();
            bad[0] ^= 1;
            let (ok, status, _) = gpg(&args, &bad);
            assert!(!ok && status.contains("BADSIG"), "{m}: {status}");
        }
    }

    fn members_of(p: &Path) -> Vec<String> {
        members(p).unwrap().0.into_iter().map(|m| m.name).collect()
    }

    #[test]
    fn refuses_damaged_and_foreign_files() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::at(d.path().join("store"));
        let (keys, _) = Keys::open(&store).unwrap();
        let p = d.path().join("x.gpkg.tar");
        unsigned_gpkg(&p, b"image bytes");
        // One byte of the image changed after Portage wrote its Manifest.
        let mut bytes = std::fs::read(&p).unwrap();
        let at = bytes.windows(11).position(|w| w == b"image bytes").unwrap();
        bytes[at] ^= 1;
        std::fs::write(&p, &bytes).unwrap();
        assert!(matches!(
            ensure_signed(&p, &keys),
            Err(SignError::Corrupt(_, ref m)) if m == "image.tar.zst"
        ));
        std::fs::write(&p, b"not a tar").unwrap();
        assert!(matches!(
            ensure_signed(&p, &keys),
            Err(SignError::NotGpkg(..))
        ));
    }

    #[test]
    fn pkgdir_paths() {
        let d = Path::new("/p");
        assert_eq!(
            in_pkgdir(d, "a/b/c.gpkg.tar").unwrap(),
            Path::new("/p/a/b/c.gpkg.tar")
        );
        assert!(in_pkgdir(d, "../x").is_none());
        assert!(in_pkgdir(d, "/etc/x").is_none());
        assert!(is_gpkg("a/b-1.gpkg.tar") && !is_gpkg("a/b-1.tbz2") && !is_gpkg("a/b-1.xpak"));
    }
}
