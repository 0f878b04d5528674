//! The store's binpkg signing key and the signing of published gpkgs (see docs/signing.md).
//!
//! Hosts verify binpkgs with Portage's own verifier (gpg against `/etc/portage/gnupg`), so every
//! gpkg a machine publishes carries detached signatures of its parts and a clearsigned Manifest
//! made with this key. The key is an OpenPGP Ed25519 key generated and used by gbuild itself
//! (rpgp): the secret part lives only in `<store>/keys/secret.asc` (directory 0700, file 0600) and
//! is read by this process, never bound into a container, so neither ebuild code nor anything the
//! builder runs can reach it.
//!
//! `keys/public.asc` lists the public keys hosts may see at `/<M>/key.asc`: the current key first,
//! then keys retired by `rotate` until they are withdrawn. A published gpkg keeps its signature
//! while its signer is listed; once withdrawn, the next publication signs it again with the
//! current key.

pub mod gpkg;

use std::path::{Path, PathBuf};

use pgp::composed::{
    ArmorOptions, Deserializable, EncryptionCaps, KeyType, SecretKeyParamsBuilder, SignedPublicKey,
    SignedSecretKey,
};
use pgp::types::KeyDetails;

use crate::fsutil::IoContext;
use crate::store::Store;

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error(transparent)]
    Fs(#[from] crate::fsutil::FsError),
    #[error(transparent)]
    Lock(#[from] crate::lock::LockError),
    #[error("{0}: not an OpenPGP key file: {1}")]
    BadKey(PathBuf, String),
    #[error("{0}: mode {1:o} lets others read the secret key; expected 0600")]
    Exposed(PathBuf, u32),
    #[error("generate a signing key: {0}")]
    Generate(String),
    #[error("sign {0}: {1}")]
    Sign(PathBuf, String),
    #[error("{0}: not a gpkg: {1}")]
    NotGpkg(PathBuf, String),
    #[error("{0}: {1} does not match the Manifest of the package; refusing to sign it")]
    Corrupt(PathBuf, String),
    #[error("{0} is not a listed key (listed: {1})")]
    NotListed(String, String),
    #[error("{0} is the current signing key; rotate first")]
    Current(String),
}

pub type Result<T> = std::result::Result<T, SignError>;

/// Upper-case hex, the way gpg prints fingerprints.
pub fn fingerprint_hex(key: &impl KeyDetails) -> String {
    format!("{:X}", key.fingerprint())
}

/// A fingerprint as a user may type it (spaces, `0x`, lower case): 40 or 64 upper-case hex
/// digits, or `None`.
pub fn normalize_fingerprint(s: &str) -> Option<String> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    let s = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(&s);
    let ok = (s.len() == 40 || s.len() == 64) && s.bytes().all(|c| c.is_ascii_hexdigit());
    ok.then(|| s.to_ascii_uppercase())
}

/// The store's keys: the current secret key and the listed public keys.
pub struct Keys {
    dir: PathBuf,
    secret: SignedSecretKey,
    /// Listed public keys, the current one first.
    listed: Vec<SignedPublicKey>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keys({}, {})", self.dir.display(), self.fingerprint())
    }
}

/// What `open` did.
#[derive(Debug, PartialEq, Eq)]
pub enum Opened {
    Existing,
    Created,
}

impl Keys {
    fn secret_path(dir: &Path) -> PathBuf {
        dir.join(crate::store::SECRET_KEY)
    }
    fn public_path(dir: &Path) -> PathBuf {
        dir.join(crate::store::PUBLIC_KEYS)
    }

    /// The path of the listed public keys (what `/<M>/key.asc` serves).
    pub fn public_file(store: &Store) -> PathBuf {
        Self::public_path(&store.keys())
    }

    /// Open the store's keys, creating a key on first use.
    pub fn open(store: &Store) -> Result<(Keys, Opened)> {
        let dir = store.keys();
        if Self::secret_path(&dir).exists() {
            return Ok((Self::load(&dir)?, Opened::Existing));
        }
        let _lock = Self::lock(&dir)?;
        // Another gbuild may have created it between the look and the lock.
        if Self::secret_path(&dir).exists() {
            return Ok((Self::load(&dir)?, Opened::Existing));
        }
        let secret = generate()?;
        let mut listed = vec![secret.to_public_key()];
        // Keys listed before (a public.asc without its secret: an interrupted rotation or a
        // restored store) stay listed behind the new one.
        if let Ok(old) = read_public(&Self::public_path(&dir)) {
            listed.extend(old);
        }
        let keys = Keys {
            dir,
            secret,
            listed,
        };
        keys.save(true)?;
        Ok((keys, Opened::Created))
    }

    fn lock(dir: &Path) -> Result<crate::lock::Lock> {
        create_private_dir(dir)?;
        Ok(crate::lock::Lock::try_acquire(
            &dir.join(crate::store::LOCK),
        )?)
    }

    fn load(dir: &Path) -> Result<Keys> {
        let sp = Self::secret_path(dir);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&sp).at("stat", &sp)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(SignError::Exposed(sp, mode));
        }
        let text = std::fs::read_to_string(&sp).at("read", &sp)?;
        let (secret, _) = SignedSecretKey::from_string(&text)
            .map_err(|e| SignError::BadKey(sp.clone(), e.to_string()))?;
        secret
            .verify_bindings()
            .map_err(|e| SignError::BadKey(sp.clone(), e.to_string()))?;
        let fpr = fingerprint_hex(&secret.primary_key);
        let mut listed = vec![secret.to_public_key()];
        let pp = Self::public_path(dir);
        if pp.exists() {
            for k in read_public(&pp)? {
                if fingerprint_hex(&k) != fpr {
                    listed.push(k);
                }
            }
        }
        Ok(Keys {
            dir: dir.to_path_buf(),
            secret,
            listed,
        })
    }

    /// Write public.asc, then (when `secret` is set) secret.asc; each atomically.
    fn save(&self, secret: bool) -> Result<()> {
        create_private_dir(&self.dir)?;
        let mut text = String::new();
        for k in &self.listed {
            text.push_str(&armor_public(k));
        }
        crate::fsutil::atomic_write(&Self::public_path(&self.dir), text.as_bytes())?;
        if secret {
            let sp = Self::secret_path(&self.dir);
            let armored = self
                .secret
                .to_armored_string(ArmorOptions::default())
                .map_err(|e| SignError::Generate(e.to_string()))?;
            let mut f = crate::fsutil::AtomicFile::create(&sp)?;
            use std::io::Write;
            use std::os::unix::fs::PermissionsExt;
            let tmp = f.tmp_path().to_path_buf();
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
                .at("chmod", &tmp)?;
            f.write_all(armored.as_bytes()).at("write", &tmp)?;
            f.commit()?;
        }
        Ok(())
    }

    /// The current key's fingerprint (upper-case hex).
    pub fn fingerprint(&self) -> String {
        fingerprint_hex(&self.secret.primary_key)
    }

    /// Fingerprints of every listed key, the current one first.
    pub fn listed(&self) -> Vec<String> {
        self.listed.iter().map(fingerprint_hex).collect()
    }

    /// The listed public keys, armored (what hosts fetch as `key.asc`).
    pub fn public_armored(&self) -> String {
        self.listed.iter().map(armor_public).collect()
    }

    pub fn secret(&self) -> &SignedSecretKey {
        &self.secret
    }

    /// The listed key with this fingerprint.
    pub fn listed_key(&self, fpr: &str) -> Option<&SignedPublicKey> {
        self.listed.iter().find(|k| fingerprint_hex(*k) == fpr)
    }

    /// Make a new current key; the old one stays listed (its signatures stay verifiable) until
    /// `withdraw`. Returns the new fingerprint.
    pub fn rotate(store: &Store) -> Result<(String, String)> {
        let (keys, _) = Self::open(store)?;
        let _lock = Self::lock(&keys.dir)?;
        let mut keys = Self::load(&keys.dir)?;
        let old = keys.fingerprint();
        keys.secret = generate()?;
        keys.listed.insert(0, keys.secret.to_public_key());
        // public.asc first: a crash before secret.asc is replaced leaves the old key current
        // and the new public key listed, which is harmless.
        keys.save(true)?;
        Ok((old, keys.fingerprint()))
    }

    /// Stop listing a retired key. Packages it signed are signed again with the current key at
    /// the next publication.
    pub fn withdraw(store: &Store, fpr: &str) -> Result<()> {
        let (keys, _) = Self::open(store)?;
        let _lock = Self::lock(&keys.dir)?;
        let mut keys = Self::load(&keys.dir)?;
        if keys.fingerprint() == fpr {
            return Err(SignError::Current(fpr.to_string()));
        }
        let before = keys.listed.len();
        keys.listed.retain(|k| fingerprint_hex(k) != fpr);
        if keys.listed.len() == before {
            return Err(SignError::NotListed(
                fpr.to_string(),
                keys.listed().join(", "),
            ));
        }
        keys.save(false)
    }
}

fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if !dir.is_dir() {
        if let Some(p) = dir.parent() {
            std::fs::create_dir_all(p).at("create directory", p)?;
        }
        match std::fs::DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(crate::fsutil::FsError::new("create directory", dir, e).into()),
        }
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).at("chmod", dir)?;
    Ok(())
}

fn armor_public(k: &SignedPublicKey) -> String {
    k.to_armored_string(ArmorOptions::default())
        .expect("a parsed key serializes")
}

/// Every key of an armored key file.
pub fn read_public(path: &Path) -> Result<Vec<SignedPublicKey>> {
    let text = std::fs::read_to_string(path).at("read", path)?;
    parse_public(&text).map_err(|e| SignError::BadKey(path.to_path_buf(), e))
}

/// Every key of an armored text with one or more public key blocks.
pub fn parse_public(text: &str) -> std::result::Result<Vec<SignedPublicKey>, String> {
    let mut out = Vec::new();
    for block in text.split_inclusive("-----END PGP PUBLIC KEY BLOCK-----") {
        if !block.contains("-----BEGIN PGP PUBLIC KEY BLOCK-----") {
            continue;
        }
        let (k, _) = SignedPublicKey::from_string(block.trim_start()).map_err(|e| e.to_string())?;
        out.push(k);
    }
    if out.is_empty() {
        return Err("no public key block".into());
    }
    Ok(out)
}

/// A new signing key: Ed25519 (the v4 "legacy" form every gpg since 2.1 verifies), one user id
/// naming this builder, no expiry, no passphrase (signing is unattended; the file's mode
/// protects it, as with an unattended gpg key).
fn generate() -> Result<SignedSecretKey> {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || b".-_".contains(&c))
        })
        .unwrap_or_else(|| "localhost".into());
    let uid = format!("gbuild binpkg signing key ({host}) <gbuild@{host}>");
    let mut params = SecretKeyParamsBuilder::default();
    params
        .key_type(KeyType::Ed25519Legacy)
        .can_certify(true)
        .can_sign(true)
        .can_encrypt(EncryptionCaps::None)
        .primary_user_id(uid);
    let params = params
        .build()
        .map_err(|e| SignError::Generate(e.to_string()))?;
    let key = params
        .generate(rand::thread_rng())
        .map_err(|e| SignError::Generate(e.to_string()))?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_as_typed() {
        let f = "0xabcd 1234ABCD1234abcd1234ABCD1234abcd1234";
        assert_eq!(
            normalize_fingerprint(f).unwrap(),
            "ABCD1234ABCD1234ABCD1234ABCD1234ABCD1234"
        );
        assert!(normalize_fingerprint("ABCD").is_none());
        assert!(normalize_fingerprint(&"G".repeat(40)).is_none());
    }

    #[test]
    fn create_rotate_withdraw() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::at(d.path());
        let (k, how) = Keys::open(&store).unwrap();
        assert_eq!(how, Opened::Created);
        let first = k.fingerprint();
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&store.keys()), 0o700);
        assert_eq!(mode(&store.keys().join("secret.asc")), 0o600);
        let (k2, how) = Keys::open(&store).unwrap();
        assert_eq!((how, k2.fingerprint()), (Opened::Existing, first.clone()));
        let (old, new) = Keys::rotate(&store).unwrap();
        assert_eq!(old, first);
        let (k3, _) = Keys::open(&store).unwrap();
        assert_eq!(k3.listed(), vec![new.clone(), first.clone()]);
        assert_eq!(parse_public(&k3.public_armored()).unwrap().len(), 2);
        assert!(matches!(
            Keys::withdraw(&store, &new),
            Err(SignError::Current(_))
        ));
        Keys::withdraw(&store, &first).unwrap();
        let (k4, _) = Keys::open(&store).unwrap();
        assert_eq!(k4.listed(), vec![new]);
        // The public file never holds secret material.
        let public = std::fs::read_to_string(Keys::public_file(&store)).unwrap();
        assert!(!public.contains("PRIVATE KEY"));
        // A secret key others can read is refused.
        std::fs::set_permissions(
            store.keys().join("secret.asc"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        assert!(matches!(Keys::open(&store), Err(SignError::Exposed(..))));
    }
}
