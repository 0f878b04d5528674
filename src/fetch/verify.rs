//! OpenPGP trust for downloads: which keys are trusted, and checking clearsigned and detached
//! signatures against them.
//!
//! Trust is by *primary* fingerprint: the pinned Gentoo keys ([`PINNED`]) plus fingerprints the
//! user names (`trusted_fingerprints` in gbuild.toml, `--trust`). Key material comes from the
//! bundle shipped in the binary (`stage3/keys/gentoo-release.asc`) or from `--keyring FILE`. A
//! signature may be made by the primary key or by a signing-capable subkey bound to it; the key
//! is picked by the signature's issuer fingerprint (or key id).
//!
//! Expiry: Gentoo extends the expiry of its keys every year while the fingerprints stay, so a
//! shipped copy goes stale. For a *pinned* key whose copy says it has expired, verification
//! still succeeds and a warning names the fix (a current `gentoo-release.asc` via `--keyring`).
//! For any other key, expiry is a hard error, as are revocation, a bad signature and an unknown
//! or untrusted signer.

use std::path::{Path, PathBuf};

use pgp::composed::{CleartextSignedMessage, Deserializable, DetachedSignature, SignedPublicKey};
use pgp::crypto::hash::HashAlgorithm;
use pgp::packet::{PublicKey, PublicSubkey, Signature, SignatureType, SignatureVersion};
use pgp::types::{KeyDetails, KeyVersion, VerifyingKey};

/// Gentoo's signing keys (primary fingerprints), confirmed from several public sources.
pub const PINNED: &[(&str, &str)] = &[
    (
        "13EBBDBEDE7A12775DFDB1BABB572E0E2D182910",
        "Gentoo Linux Release Engineering (Automated Weekly Release Key)",
    ),
    (
        "DCD05B71EAB94199527F44ACDB6B8C1F96D8BF6D",
        "Gentoo ebuild repository signing key (Automated Signing Key)",
    ),
];

/// The key bundle shipped with gbuild (`stage3/keys/gentoo-release.asc`).
pub const SHIPPED_KEYS: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/stage3/keys/gentoo-release.asc"
));

const SHIPPED_NAME: &str = "shipped stage3/keys/gentoo-release.asc";

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("read keyring {path}: {source}")]
    ReadKeyring {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("keyring {0}: no OpenPGP public key found")]
    EmptyKeyring(String),
    #[error("keyring {0}: {1}")]
    BadKeyring(String, String),
    #[error("invalid fingerprint {0:?}: expected 40 or 64 hex digits")]
    BadFingerprint(String),
    #[error("{0}: not signed (no OpenPGP cleartext signature)")]
    NotSigned(String),
    #[error("{0}: malformed signature: {1}")]
    Malformed(String, String),
    #[error("{what}: signed by unknown key {issuer} (not in keyring {keyring}){hint}")]
    UnknownKey {
        what: String,
        issuer: String,
        keyring: String,
        hint: &'static str,
    },
    #[error("{what}: signed by key {key} of {primary}, which is not trusted (pinned or --trust)")]
    Untrusted {
        what: String,
        key: String,
        primary: String,
    },
    #[error("{what}: key {key} may not sign: {reason}")]
    KeyUnusable {
        what: String,
        key: String,
        reason: String,
    },
    #[error("{what}: key {key} expired on {date}")]
    Expired {
        what: String,
        key: String,
        date: String,
    },
    #[error("{what}: key {key} is revoked")]
    Revoked { what: String, key: String },
    #[error("{what}: signature expired on {date}")]
    SignatureExpired { what: String, date: String },
    #[error("{what}: bad signature by key {key}: {reason}")]
    BadSignature {
        what: String,
        key: String,
        reason: String,
    },
}

/// Normalise a user-given fingerprint (spaces, `0x`, case) and check its shape.
pub fn normalize_fingerprint(s: &str) -> Result<String, VerifyError> {
    let t: String = s
        .trim()
        .trim_start_matches("0x")
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_uppercase();
    if (t.len() == 40 || t.len() == 64) && t.chars().all(|c| c.is_ascii_hexdigit()) {
        Ok(t)
    } else {
        Err(VerifyError::BadFingerprint(s.to_string()))
    }
}

fn fpr_hex(bytes: &[u8]) -> String {
    hex::encode_upper(bytes)
}

/// Public keys to verify against, and where they came from (for messages).
#[derive(Debug, Clone)]
pub struct Keyring {
    certs: Vec<SignedPublicKey>,
    source: String,
}

impl Keyring {
    /// The bundle built into the binary.
    pub fn shipped() -> Result<Keyring, VerifyError> {
        Keyring::parse(SHIPPED_KEYS, SHIPPED_NAME.to_string())
    }

    /// A key bundle file: armored (one or more blocks) or binary.
    pub fn load(path: &Path) -> Result<Keyring, VerifyError> {
        let data = std::fs::read(path).map_err(|source| VerifyError::ReadKeyring {
            path: path.to_path_buf(),
            source,
        })?;
        Keyring::parse(&data, path.display().to_string())
    }

    pub fn parse(data: &[u8], source: String) -> Result<Keyring, VerifyError> {
        let bad = |e: pgp::errors::Error| VerifyError::BadKeyring(source.clone(), e.to_string());
        let mut certs = Vec::new();
        let text = std::str::from_utf8(data).ok();
        match text.filter(|t| t.contains("-----BEGIN PGP PUBLIC KEY BLOCK-----")) {
            Some(text) => {
                // A bundle may be several armored blocks one after the other.
                const BEGIN: &str = "-----BEGIN PGP PUBLIC KEY BLOCK-----";
                const END: &str = "-----END PGP PUBLIC KEY BLOCK-----";
                let mut rest = text;
                while let Some(start) = rest.find(BEGIN) {
                    let block = &rest[start..];
                    let end = block.find(END).map(|e| e + END.len()).ok_or_else(|| {
                        VerifyError::BadKeyring(source.clone(), "unterminated key block".into())
                    })?;
                    let (iter, _) =
                        SignedPublicKey::from_string_many(&block[..end]).map_err(bad)?;
                    for k in iter {
                        certs.push(k.map_err(bad)?);
                    }
                    rest = &block[end..];
                }
            }
            None => {
                let iter = SignedPublicKey::from_bytes_many(data).map_err(bad)?;
                for k in iter {
                    certs.push(k.map_err(bad)?);
                }
            }
        }
        if certs.is_empty() {
            return Err(VerifyError::EmptyKeyring(source));
        }
        Ok(Keyring { certs, source })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Primary fingerprints of the keys in the bundle.
    pub fn fingerprints(&self) -> Vec<String> {
        self.certs
            .iter()
            .map(|c| fpr_hex(c.primary_key.fingerprint().as_bytes()))
            .collect()
    }
}

/// The keyring plus the set of trusted primary fingerprints.
#[derive(Debug, Clone)]
pub struct Trust {
    pub keyring: Keyring,
    pinned: Vec<String>,
    user: Vec<String>,
}

/// Who made a signature that verified.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Signer {
    /// Primary fingerprint (the trusted one).
    pub primary: String,
    /// Fingerprint of the key that signed (the primary or one of its subkeys).
    pub key: String,
    /// Signature creation time (unix seconds).
    pub signed_at: Option<u64>,
}

/// A key able to check a data signature (the primary or a subkey).
#[derive(Debug, Clone)]
pub enum SigningKey {
    Primary(PublicKey),
    Sub(PublicSubkey),
}

impl SigningKey {
    pub fn verify_data(
        &self,
        sig: &Signature,
        data: impl std::io::Read,
    ) -> pgp::errors::Result<()> {
        match self {
            SigningKey::Primary(k) => sig.verify(k, data),
            SigningKey::Sub(k) => sig.verify(k, data),
        }
    }
}

/// A signature whose signer is resolved and allowed; the data check is still to do.
#[derive(Debug, Clone)]
pub struct Pending {
    pub what: String,
    pub signature: Signature,
    pub key: SigningKey,
    pub signer: Signer,
    /// Non-fatal findings (expired copy of a pinned key) for the caller to print.
    pub warnings: Vec<String>,
}

impl Pending {
    /// Check the signature over `data` (streamed).
    pub fn check(&self, data: impl std::io::Read) -> Result<Signer, VerifyError> {
        self.key
            .verify_data(&self.signature, data)
            .map_err(|e| VerifyError::BadSignature {
                what: self.what.clone(),
                key: self.signer.key.clone(),
                reason: e.to_string(),
            })?;
        Ok(self.signer.clone())
    }
}

impl Pending {
    /// Whether the data hash of this signature is exactly the SHA512 of the data (a v4 binary
    /// signature using SHA512, Gentoo's usual case), so one SHA512 pass serves both the file
    /// digest and the signature ([`Pending::check_sha512`]).
    pub fn hashes_plain_sha512(&self) -> bool {
        let key_v4 = match &self.key {
            SigningKey::Primary(k) => k.version() == KeyVersion::V4,
            SigningKey::Sub(k) => k.version() == KeyVersion::V4,
        };
        key_v4
            && self.signature.version() == SignatureVersion::V4
            && self.signature.typ() == Some(SignatureType::Binary)
            && self.signature.hash_alg() == Some(HashAlgorithm::Sha512)
    }

    /// Finish the check of a signature for which [`Pending::hashes_plain_sha512`] holds, given
    /// the SHA512 state after all the data: append the signature's hashed trailer as OpenPGP
    /// prescribes (RFC 9580 5.2.4), compare the quick check bytes, verify with the key.
    pub fn check_sha512(&self, data: sha2::Sha512) -> Result<Signer, VerifyError> {
        use sha2::digest::DynDigest;
        let bad = |reason: String| VerifyError::BadSignature {
            what: self.what.clone(),
            key: self.signer.key.clone(),
            reason,
        };
        if !self.hashes_plain_sha512() {
            return Err(bad("not a v4 binary SHA512 signature".into()));
        }
        let config = self
            .signature
            .config()
            .ok_or_else(|| bad("unknown signature version".into()))?;
        let mut h: Box<dyn DynDigest + Send> = Box::new(data);
        let len = config
            .hash_signature_data(&mut h)
            .map_err(|e| bad(e.to_string()))?;
        h.update(&config.trailer(len).map_err(|e| bad(e.to_string()))?);
        let hash = h.finalize();
        if self.signature.signed_hash_value() != Some([hash[0], hash[1]]) {
            return Err(bad("signed hash value mismatch".into()));
        }
        let bytes = self
            .signature
            .signature()
            .ok_or_else(|| bad("no signature value".into()))?;
        let r = match &self.key {
            SigningKey::Primary(k) => k.verify(HashAlgorithm::Sha512, &hash, bytes),
            SigningKey::Sub(k) => k.verify(HashAlgorithm::Sha512, &hash, bytes),
        };
        r.map_err(|e| bad(e.to_string()))?;
        Ok(self.signer.clone())
    }
}

/// A clearsigned text that verified: the signed body only, and who signed it.
#[derive(Debug, Clone)]
pub struct SignedText {
    /// The signed text (dash-unescaped, `\n` line ends). Nothing outside the signature.
    pub body: String,
    pub signer: Signer,
    pub warnings: Vec<String>,
}

impl Trust {
    /// `keyring` (else the shipped bundle) trusting the pinned fingerprints plus `extra`.
    pub fn new(keyring: Option<&Path>, extra: &[String]) -> Result<Trust, VerifyError> {
        let keyring = match keyring {
            Some(p) => Keyring::load(p)?,
            None => Keyring::shipped()?,
        };
        let user = extra
            .iter()
            .map(|f| normalize_fingerprint(f))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Trust {
            keyring,
            pinned: PINNED.iter().map(|(f, _)| f.to_string()).collect(),
            user,
        })
    }

    fn is_pinned(&self, fpr: &str) -> bool {
        self.pinned.iter().any(|p| p == fpr)
    }

    fn is_trusted(&self, fpr: &str) -> bool {
        self.is_pinned(fpr) || self.user.iter().any(|p| p == fpr)
    }

    /// Parse an armored detached signature and resolve its signer.
    pub fn detached(&self, what: &str, armored: &[u8]) -> Result<Pending, VerifyError> {
        let malformed = |e: String| VerifyError::Malformed(what.to_string(), e);
        let (sig, _) =
            DetachedSignature::from_reader_single(armored).map_err(|e| malformed(e.to_string()))?;
        self.resolve(what, sig.signature)
    }

    /// Verify a clearsigned text and return only its signed body. Text before the
    /// `BEGIN PGP SIGNED MESSAGE` line or after the signature block is ignored, never parsed.
    pub fn clearsigned(&self, what: &str, data: &[u8]) -> Result<SignedText, VerifyError> {
        let text = String::from_utf8_lossy(data);
        let block =
            extract_clearsigned(&text).ok_or_else(|| VerifyError::NotSigned(what.into()))?;
        let (msg, _) = CleartextSignedMessage::from_string(block)
            .map_err(|e| VerifyError::Malformed(what.to_string(), e.to_string()))?;
        let signed = msg.signed_text();
        let mut last_err = None;
        for sig in msg.signatures() {
            match self.resolve(what, sig.clone()) {
                Ok(p) => {
                    let signer = p.check(signed.as_bytes())?;
                    return Ok(SignedText {
                        body: signed.replace("\r\n", "\n"),
                        signer,
                        warnings: p.warnings,
                    });
                }
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| VerifyError::NotSigned(what.into())))
    }

    /// Find the key that made `sig`, check it is trusted, bound, not revoked, not expired.
    pub fn resolve(&self, what: &str, sig: Signature) -> Result<Pending, VerifyError> {
        let fprs: Vec<Vec<u8>> = sig
            .issuer_fingerprint()
            .iter()
            .map(|f| f.as_bytes().to_vec())
            .collect();
        let ids: Vec<Vec<u8>> = sig
            .issuer_key_id()
            .iter()
            .map(|k| k.as_ref().to_vec())
            .collect();
        let issuer = fprs
            .first()
            .map(|f| fpr_hex(f))
            .or_else(|| ids.first().map(|k| fpr_hex(k)))
            .unwrap_or_else(|| "(no issuer)".into());
        let matches = |fp: &[u8]| {
            fprs.iter().any(|f| f == fp) || ids.iter().any(|k| fp.len() >= 8 && fp.ends_with(k))
        };
        let signed_at = sig.created().map(|t| t.as_secs() as u64);
        if let Some(exp) = sig.signature_expiration_time().map(|d| d.as_secs() as u64) {
            if exp > 0 {
                let until = signed_at.unwrap_or(0) + exp;
                if until < crate::time::now() {
                    return Err(VerifyError::SignatureExpired {
                        what: what.into(),
                        date: crate::time::utc_date(until),
                    });
                }
            }
        }
        // Prefer a trusted certificate when several claim the issuer.
        let mut untrusted = None;
        for cert in &self.keyring.certs {
            let primary = &cert.primary_key;
            let pfpr = fpr_hex(primary.fingerprint().as_bytes());
            let sub = if matches(primary.fingerprint().as_bytes()) {
                None
            } else if let Some(sub) = cert
                .public_subkeys
                .iter()
                .find(|s| matches(s.key.fingerprint().as_bytes()))
            {
                Some(sub)
            } else {
                continue;
            };
            let key_fpr = match sub {
                Some(s) => fpr_hex(s.key.fingerprint().as_bytes()),
                None => pfpr.clone(),
            };
            if !self.is_trusted(&pfpr) {
                untrusted = Some((key_fpr, pfpr));
                continue;
            }
            let unusable = |reason: String| VerifyError::KeyUnusable {
                what: what.into(),
                key: key_fpr.clone(),
                reason,
            };
            if is_revoked(cert) {
                return Err(VerifyError::Revoked {
                    what: what.into(),
                    key: pfpr,
                });
            }
            let self_sig = newest_self_sig(cert)
                .ok_or_else(|| unusable("primary key has no valid self-signature".into()))?;
            let primary_until = self_sig
                .key_expiration_time()
                .map(|d| d.as_secs() as u64)
                .filter(|e| *e > 0)
                .map(|e| primary.created_at().as_secs() as u64 + e);
            let (key, until) = match sub {
                None => {
                    if has_key_flags(&self_sig) && !self_sig.key_flags().sign() {
                        return Err(unusable("primary key lacks the signing flag".into()));
                    }
                    (SigningKey::Primary(primary.clone()), primary_until)
                }
                Some(sub) => {
                    let binding = newest_binding(cert, sub).ok_or_else(|| {
                        unusable(format!("no valid binding to primary key {pfpr}"))
                    })?;
                    if binding.typ() == Some(SignatureType::SubkeyRevocation) {
                        return Err(VerifyError::Revoked {
                            what: what.into(),
                            key: key_fpr,
                        });
                    }
                    if !binding.key_flags().sign() {
                        return Err(unusable("subkey lacks the signing flag".into()));
                    }
                    let back_ok = binding
                        .embedded_signature()
                        .map(|b| b.verify_primary_key_binding(&sub.key, primary).is_ok())
                        .unwrap_or(false);
                    if !back_ok {
                        return Err(unusable(
                            "signing subkey has no valid back-signature".into(),
                        ));
                    }
                    let sub_until = binding
                        .key_expiration_time()
                        .map(|d| d.as_secs() as u64)
                        .filter(|e| *e > 0)
                        .map(|e| sub.key.created_at().as_secs() as u64 + e);
                    // A subkey expires at the earlier of its own expiry and its primary's.
                    let until = match (primary_until, sub_until) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                    (SigningKey::Sub(sub.key.clone()), until)
                }
            };
            let mut warnings = Vec::new();
            if let Some(until) = until {
                // The key must be alive when it signed and now.
                let at = signed_at.unwrap_or(0).max(crate::time::now());
                if until < at {
                    let date = crate::time::utc_date(until);
                    if self.is_pinned(&pfpr) {
                        warnings.push(format!(
                            "warning: {what}: the copy of pinned key {pfpr} in {} expired on \
                             {date}; accepted because its fingerprint is pinned. Fix: pass \
                             --keyring with a current gentoo-release.asc (e.g. \
                             /usr/share/openpgp-keys/gentoo-release.asc)",
                            self.keyring.source
                        ));
                    } else {
                        return Err(VerifyError::Expired {
                            what: what.into(),
                            key: key_fpr,
                            date,
                        });
                    }
                }
            }
            return Ok(Pending {
                what: what.into(),
                signature: sig,
                key,
                signer: Signer {
                    primary: pfpr,
                    key: key_fpr,
                    signed_at,
                },
                warnings,
            });
        }
        match untrusted {
            Some((key, primary)) => Err(VerifyError::Untrusted {
                what: what.into(),
                key,
                primary,
            }),
            None => Err(VerifyError::UnknownKey {
                what: what.into(),
                issuer,
                keyring: self.keyring.source.clone(),
                hint: if self.keyring.source == SHIPPED_NAME {
                    "; pass --keyring with a current gentoo-release.asc (e.g. \
                     /usr/share/openpgp-keys/gentoo-release.asc), which also holds the \
                     snapshot key"
                } else {
                    ""
                },
            }),
        }
    }
}

fn has_key_flags(sig: &Signature) -> bool {
    sig.config()
        .map(|c| {
            c.hashed_subpackets()
                .any(|p| matches!(p.data, pgp::packet::SubpacketData::KeyFlags(_)))
        })
        .unwrap_or(false)
}

fn is_self_issued(sig: &Signature, cert: &SignedPublicKey) -> bool {
    let fp = cert.primary_key.fingerprint();
    let id = cert.primary_key.legacy_key_id();
    let fprs = sig.issuer_fingerprint();
    let ids = sig.issuer_key_id();
    (fprs.is_empty() && ids.is_empty())
        || fprs.iter().any(|f| f.as_bytes() == fp.as_bytes())
        || ids.iter().any(|k| k.as_ref() == id.as_ref())
}

/// The newest valid self-certification (user id or direct-key signature) of the primary.
fn newest_self_sig(cert: &SignedPublicKey) -> Option<Signature> {
    let primary = &cert.primary_key;
    let mut best: Option<Signature> = None;
    let mut consider = |s: &Signature| {
        let newer = best
            .as_ref()
            .map(|b| s.created().map(|t| t.as_secs()) > b.created().map(|t| t.as_secs()))
            .unwrap_or(true);
        if newer {
            best = Some(s.clone());
        }
    };
    for user in &cert.details.users {
        for s in &user.signatures {
            if is_self_issued(s, cert)
                && s.verify_certification(primary, pgp::types::Tag::UserId, &user.id)
                    .is_ok()
            {
                consider(s);
            }
        }
    }
    for s in &cert.details.direct_signatures {
        if is_self_issued(s, cert) && s.verify_key(primary).is_ok() {
            consider(s);
        }
    }
    best
}

/// The newest valid binding (or revocation) signature of a subkey.
fn newest_binding(
    cert: &SignedPublicKey,
    sub: &pgp::composed::SignedPublicSubKey,
) -> Option<Signature> {
    let mut best: Option<Signature> = None;
    for s in &sub.signatures {
        if s.verify_subkey_binding(&cert.primary_key, &sub.key)
            .is_err()
        {
            continue;
        }
        if s.typ() == Some(SignatureType::SubkeyRevocation) {
            return Some(s.clone());
        }
        let newer = best
            .as_ref()
            .map(|b| s.created().map(|t| t.as_secs()) > b.created().map(|t| t.as_secs()))
            .unwrap_or(true);
        if newer {
            best = Some(s.clone());
        }
    }
    best
}

fn is_revoked(cert: &SignedPublicKey) -> bool {
    cert.details
        .revocation_signatures
        .iter()
        .any(|s| s.verify_key(&cert.primary_key).is_ok())
}

/// The armored cleartext-signed block of `text`, from its `BEGIN PGP SIGNED MESSAGE` line to
/// the end of its signature block; anything before or after is dropped.
pub fn extract_clearsigned(text: &str) -> Option<&str> {
    const BEGIN: &str = "-----BEGIN PGP SIGNED MESSAGE-----";
    const END: &str = "-----END PGP SIGNATURE-----";
    let start = line_start(text, BEGIN)?;
    let rest = &text[start..];
    let end = rest.find(END)? + END.len();
    Some(&rest[..end])
}

/// Byte offset of the first line that is exactly `marker` (ignoring trailing whitespace).
fn line_start(text: &str, marker: &str) -> Option<usize> {
    let mut off = 0;
    for line in text.split_inclusive('\n') {
        if line.trim_end() == marker {
            return Some(off);
        }
        off += line.len();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_bundle_holds_the_pinned_releng_key() {
        let k = Keyring::shipped().unwrap();
        assert!(k
            .fingerprints()
            .contains(&"13EBBDBEDE7A12775DFDB1BABB572E0E2D182910".to_string()));
        let cert = &k.certs[0];
        let subs: Vec<String> = cert
            .public_subkeys
            .iter()
            .map(|s| fpr_hex(s.key.fingerprint().as_bytes()))
            .collect();
        assert!(subs.contains(&"534E4209AB49EEE1C19D96162C44695DB9F6043D".to_string()));
        let sub = cert
            .public_subkeys
            .iter()
            .find(|s| fpr_hex(s.key.fingerprint().as_bytes()).starts_with("534E"))
            .unwrap();
        let b = newest_binding(cert, sub).expect("valid binding");
        assert!(b.key_flags().sign());
        // The shipped copy expired 2023-07-01: its self-signature carries that expiry.
        let exp = newest_self_sig(cert)
            .and_then(|s| s.key_expiration_time())
            .unwrap()
            .as_secs() as u64;
        let until = cert.primary_key.created_at().as_secs() as u64 + exp;
        assert_eq!(crate::time::utc_date(until), "2023-07-01");
    }

    /// A signature claiming Gentoo's release signing subkey, made "now". Its value is junk:
    /// resolving the signer does not look at the data.
    fn claimed_releng_signature() -> Signature {
        use pgp::crypto::public_key::PublicKeyAlgorithm;
        use pgp::packet::{SignatureConfig, Subpacket, SubpacketData};
        use pgp::types::{Fingerprint, Mpi, SignatureBytes, Timestamp};
        let fpr = hex::decode("534E4209AB49EEE1C19D96162C44695DB9F6043D").unwrap();
        let mut config = SignatureConfig::v4(
            SignatureType::Binary,
            PublicKeyAlgorithm::RSA,
            HashAlgorithm::Sha512,
        );
        config.hashed_subpackets = vec![
            Subpacket::regular(SubpacketData::SignatureCreationTime(Timestamp::now())).unwrap(),
            Subpacket::regular(SubpacketData::IssuerFingerprint(
                Fingerprint::new(KeyVersion::V4, &fpr).unwrap(),
            ))
            .unwrap(),
        ];
        Signature::from_config(
            config,
            [0, 0],
            SignatureBytes::Mpis(vec![Mpi::from_slice(&[1; 256])]),
        )
        .unwrap()
    }

    #[test]
    fn expired_copy_of_a_pinned_key_warns_and_names_the_fix() {
        let trust = Trust::new(None, &[]).unwrap();
        let p = trust
            .resolve("stage3.tar.xz.asc", claimed_releng_signature())
            .unwrap();
        assert_eq!(p.signer.primary, "13EBBDBEDE7A12775DFDB1BABB572E0E2D182910");
        assert_eq!(p.signer.key, "534E4209AB49EEE1C19D96162C44695DB9F6043D");
        assert!(p.hashes_plain_sha512());
        assert_eq!(p.warnings.len(), 1);
        let w = &p.warnings[0];
        assert!(
            w.contains("expired on 2023-07-01") && w.contains("--keyring"),
            "{w}"
        );
        // The signature value itself is still checked, with either hashing path.
        assert!(p.check(&b"data"[..]).is_err());
        let mut h = sha2::Sha512::default();
        sha2::Digest::update(&mut h, b"data");
        assert!(matches!(
            p.check_sha512(h),
            Err(VerifyError::BadSignature { .. })
        ));
    }

    #[test]
    fn unpinned_key_is_untrusted_without_trust() {
        let mut trust = Trust::new(None, &[]).unwrap();
        trust.pinned.clear();
        let e = trust
            .resolve("x.asc", claimed_releng_signature())
            .unwrap_err();
        assert!(matches!(e, VerifyError::Untrusted { .. }), "{e}");
        // Trusted by the user but not pinned: expiry is a hard error.
        trust
            .user
            .push("13EBBDBEDE7A12775DFDB1BABB572E0E2D182910".into());
        let e = trust
            .resolve("x.asc", claimed_releng_signature())
            .unwrap_err();
        assert!(e.to_string().contains("expired on 2023-07-01"), "{e}");
    }

    #[test]
    fn fingerprints_normalise() {
        assert_eq!(
            normalize_fingerprint("0x13eb bdbe de7a 1277 5dfd  b1ba bb57 2e0e 2d18 2910").unwrap(),
            "13EBBDBEDE7A12775DFDB1BABB572E0E2D182910"
        );
        assert!(normalize_fingerprint("1234").is_err());
    }

    #[test]
    fn clearsigned_block_drops_outside_text() {
        let t = "junk\n-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\nbody\n\
                 -----BEGIN PGP SIGNATURE-----\n\nAAAA\n-----END PGP SIGNATURE-----\nforged\n";
        let b = extract_clearsigned(t).unwrap();
        assert!(b.starts_with("-----BEGIN PGP SIGNED MESSAGE-----"));
        assert!(b.ends_with("-----END PGP SIGNATURE-----"));
        assert!(!b.contains("forged") && !b.contains("junk"));
        assert!(extract_clearsigned("no signature here").is_none());
    }
}
