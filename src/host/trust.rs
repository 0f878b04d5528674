//! `gbuild host trust`: make a Gentoo host's Portage trust the builder's binpkg signing key.
//!
//! Portage verifies gpkg signatures with gpg against the keyring in `/etc/portage/gnupg`
//! (`BINPKG_GPG_VERIFY_GPG_HOME`), and accepts a signature only when gpg reports it good *and*
//! its key fully or ultimately valid (`GOODSIG` plus `TRUST_FULLY`/`TRUST_ULTIMATE`). Gentoo's
//! getuto builds that keyring with a local, ultimately trusted key that lsigns the keys
//! binpkgs may be signed with; this module does the same for the builder's key:
//!
//! 1. fetch `<binhost>/key.asc` (through `crate::fetch`) and keep only the key whose primary
//!    fingerprint equals the one the user typed (read from `gbuild key --show` on the builder,
//!    never from the binhost): anything else is refused before the keyring is touched;
//! 2. create the keyring when it is missing: with getuto when the running system has it (so
//!    Gentoo's release keys are set up as well), otherwise the way getuto lays it out (0755
//!    directory, `gpg.conf` with `no-permission-warning`, a local trust key whose passphrase is
//!    in `pass` (0600) and fingerprint in `mykeyid`, a world-readable trustdb: Portage runs gpg
//!    as `nobody`);
//! 3. import the key and lsign it with the local key (or, in a keyring without one, give it
//!    ultimate ownertrust as gentoo-zh documents), update the trustdb.
//!
//! Nothing is written when the key is already there, unchanged and valid, so a second run
//! changes nothing.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use pgp::composed::ArmorOptions;

use crate::fsutil::IoContext;
use crate::sign::{fingerprint_hex, normalize_fingerprint, parse_public};

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("{0:?} is not a fingerprint (40 or 64 hex digits)")]
    BadFingerprint(String),
    #[error(transparent)]
    Http(#[from] crate::fetch::http::HttpError),
    #[error("{url}: not an OpenPGP public key file: {reason}")]
    BadKeyFile { url: String, reason: String },
    #[error("{url} has no key {wanted} (it has {found}): refusing, the keyring is unchanged")]
    WrongKey {
        url: String,
        wanted: String,
        found: String,
    },
    #[error("{url}: key {fpr} has a bad self-signature: {reason}")]
    BadSelfSignature {
        url: String,
        fpr: String,
        reason: String,
    },
    #[error(transparent)]
    Fs(#[from] crate::fsutil::FsError),
    #[error("{cmd} (homedir {home}): {reason}")]
    Gpg {
        cmd: String,
        home: PathBuf,
        reason: String,
    },
    #[error("{home}: key {fpr} imported but gpg does not consider it valid ({validity})")]
    NotValid {
        home: PathBuf,
        fpr: String,
        validity: String,
    },
}

pub type Result<T> = std::result::Result<T, TrustError>;

/// What `trust` did.
#[derive(Debug, PartialEq, Eq)]
pub enum Trusted {
    /// The key was imported (and the keyring created, when `created`).
    Added { created: bool, how: &'static str },
    /// The key was there and valid already; nothing was written.
    Already,
}

#[derive(Debug, Clone)]
pub struct TrustOptions {
    /// Root of the host (`/`, or a mounted system).
    pub root: PathBuf,
    /// The binhost URL of the machine, e.g. `http://builder:8788/laptop`.
    pub binhost: String,
    /// The fingerprint the user expects.
    pub fingerprint: String,
}

/// The keyring Portage verifies binpkgs with, under `root`.
pub fn keyring_dir(root: &Path) -> PathBuf {
    root.join("etc/portage/gnupg")
}

/// Fetch, check and trust the builder's key (see the module documentation).
pub fn trust(o: &TrustOptions) -> Result<Trusted> {
    let fpr = normalize_fingerprint(&o.fingerprint)
        .ok_or_else(|| TrustError::BadFingerprint(o.fingerprint.clone()))?;
    let url = format!("{}/key.asc", o.binhost.trim_end_matches('/'));
    let fetcher = crate::fetch::http::Fetcher::new(crate::fetch::http::RetryPolicy::from_env())?;
    let body = fetcher.get_small(&url, 1 << 20)?;
    let armored = select_key(&url, &String::from_utf8_lossy(&body), &fpr)?;

    let home = keyring_dir(&o.root);
    let gpg = Gpg::new(home.clone());
    let created = if home.is_dir() {
        false
    } else {
        create_keyring(&o.root, &gpg)?;
        true
    };
    let was_valid = !created && gpg.validity(&fpr)?.is_some_and(|v| valid(&v));
    // gpg writes nothing when an import changes nothing ("IMPORT_OK 0").
    let status = gpg.exec(&["--status-fd", "1", "--import"], Some(armored.as_bytes()))?;
    let unchanged = status
        .lines()
        .any(|l| l.trim() == format!("[GNUPG:] IMPORT_OK 0 {fpr}"));
    if was_valid && unchanged {
        return Ok(Trusted::Already);
    }
    let how = match gpg.local_key() {
        Some((id, pass)) => {
            if !gpg.validity(&fpr)?.is_some_and(|v| valid(&v)) {
                gpg.run(
                    &[
                        "--yes",
                        "--pinentry-mode",
                        "loopback",
                        "--passphrase-file",
                        pass.to_str().unwrap_or_default(),
                        "--default-key",
                        &id,
                        "--quick-lsign-key",
                        &fpr,
                    ],
                    None,
                )?;
            }
            "lsigned by the keyring's local trust key"
        }
        None => {
            gpg.run(
                &["--import-ownertrust"],
                Some(format!("{fpr}:6:\n").as_bytes()),
            )?;
            "ultimate ownertrust (the keyring has no local trust key)"
        }
    };
    gpg.run(&["--check-trustdb"], None)?;
    gpg.finish()?;
    match gpg.validity(&fpr)? {
        Some(v) if valid(&v) => Ok(Trusted::Added { created, how }),
        v => Err(TrustError::NotValid {
            home,
            fpr,
            validity: v.unwrap_or_else(|| "missing".into()),
        }),
    }
}

/// A clearsigned document that verified against Portage's keyring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The signed text, as gpg output it.
    pub body: Vec<u8>,
    /// The primary fingerprint of the signing key.
    pub signer: String,
}

/// Verify the clearsigned `data` (named `what` in errors) with the keyring Portage verifies
/// binpkgs with (`<root>/etc/portage/gnupg`), under Portage's rule: exactly one good signature,
/// by a key gpg considers fully or ultimately valid there. Returns the signed text as gpg
/// itself extracted it (never re-parsed from the armour by other code).
pub fn verify_clearsigned(root: &Path, what: &str, data: &[u8]) -> Result<Verified> {
    let home = keyring_dir(root);
    let err = |reason: String| TrustError::Gpg {
        cmd: format!("gpg --decrypt {what}"),
        home: home.clone(),
        reason,
    };
    if !home.is_dir() {
        return Err(err(
            "no keyring: trust the builder's key first with `gbuild host trust`".into(),
        ));
    }
    let gpg = Gpg::new(home.clone());
    let mut c = gpg.command();
    c.args(["--status-fd", "2", "--output", "-", "--decrypt"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().map_err(|e| err(format!("cannot run gpg: {e}")))?;
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("piped");
        stdin
            .write_all(data)
            .map_err(|e| err(format!("write to gpg: {e}")))?;
    }
    let out = child.wait_with_output().map_err(|e| err(e.to_string()))?;
    let status = String::from_utf8_lossy(&out.stderr);
    let st: Vec<&str> = status
        .lines()
        .filter_map(|l| l.strip_prefix("[GNUPG:] "))
        .collect();
    let count = |k: &str| st.iter().filter(|l| l.split(' ').next() == Some(k)).count();
    if count("BADSIG") > 0 || count("ERRSIG") > 0 || count("GOODSIG") != 1 {
        let why = st
            .iter()
            .find(|l| l.starts_with("BADSIG") || l.starts_with("ERRSIG") || l.starts_with("NO_"))
            .map(|l| l.to_string())
            .unwrap_or_else(|| "not exactly one good signature".into());
        return Err(err(format!("not verified ({why})")));
    }
    let signer = st
        .iter()
        .find_map(|l| l.strip_prefix("VALIDSIG "))
        .and_then(|l| l.split(' ').nth(9).or_else(|| l.split(' ').next()))
        .unwrap_or("")
        .to_string();
    if count("TRUST_FULLY") + count("TRUST_ULTIMATE") == 0 || !out.status.success() {
        return Err(err(format!(
            "signed by {signer}, which the keyring does not trust (run `gbuild host trust` with the builder's fingerprint)"
        )));
    }
    Ok(Verified {
        body: out.stdout,
        signer,
    })
}

/// gpg's validity letters that Portage accepts (TRUST_FULLY, TRUST_ULTIMATE).
fn valid(v: &str) -> bool {
    v == "f" || v == "u"
}

/// The one key of `text` whose primary fingerprint is `fpr`, armored alone.
fn select_key(url: &str, text: &str, fpr: &str) -> Result<String> {
    let keys = parse_public(text).map_err(|reason| TrustError::BadKeyFile {
        url: url.to_string(),
        reason,
    })?;
    let found: Vec<String> = keys.iter().map(fingerprint_hex).collect();
    let Some(key) = keys.into_iter().find(|k| fingerprint_hex(k) == fpr) else {
        return Err(TrustError::WrongKey {
            url: url.to_string(),
            wanted: fpr.to_string(),
            found: found.join(", "),
        });
    };
    key.verify_bindings()
        .map_err(|e| TrustError::BadSelfSignature {
            url: url.to_string(),
            fpr: fpr.to_string(),
            reason: e.to_string(),
        })?;
    Ok(key
        .to_armored_string(ArmorOptions::default())
        .expect("a parsed key serializes"))
}

/// Create the keyring: with the system's getuto when it has one, else as getuto lays it out.
fn create_keyring(root: &Path, gpg: &Gpg) -> Result<()> {
    let getuto = Path::new("/usr/bin/getuto");
    if root == Path::new("/") && getuto.exists() {
        let st = Command::new(getuto).status().at("run", getuto)?;
        if !st.success() || !gpg.home.is_dir() {
            return Err(TrustError::Gpg {
                cmd: "getuto".into(),
                home: gpg.home.clone(),
                reason: format!("failed ({st})"),
            });
        }
        return Ok(());
    }
    // Built under a temporary name and renamed: a half-made keyring is never left behind.
    let home = &gpg.home;
    let parent = home.parent().expect("keyring has a parent");
    std::fs::create_dir_all(parent).at("create directory", parent)?;
    let tmp = crate::fsutil::temp_sibling(home);
    // Best effort: a fresh name (a dead namesake would fail the next step, named).
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir(&tmp).at("create directory", &tmp)?;
    let t = Gpg::new(tmp.clone());
    let made = (|| -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let set = |p: &Path, mode: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).at("chmod", p)
        };
        set(&tmp, 0o755)?;
        let write = |name: &str, text: &str, mode: u32| -> Result<()> {
            let p = tmp.join(name);
            std::fs::write(&p, text).at("write", &p)?;
            set(&p, mode)?;
            Ok(())
        };
        write(
            "dirmngr.conf",
            "honor-http-proxy\nno-use-tor\n\nresolver-timeout 180\nconnect-timeout 180\n",
            0o644,
        )?;
        write("gpg-agent.conf", "disable-scdaemon\n", 0o644)?;
        write("gpg.conf", "no-greeting\nno-permission-warning\n", 0o644)?;
        let pass = hex::encode(rand::random::<[u8; 32]>());
        write("pass", &format!("{pass}\n"), 0o600)?;
        // getuto makes an RSA 3072 key; the anchor only certifies locally, so an Ed25519 key
        // does the same job and is made in milliseconds rather than seconds.
        let params = format!(
            "%echo Generating Portage local OpenPGP trust key\n\
             Key-Type: EDDSA\nKey-Curve: ed25519\nKey-Usage: cert\n\
             Name-Real: Portage Local Trust Key\nName-Comment: local signing only\n\
             Name-Email: portage@localhost\nExpire-Date: 0\nPassphrase: {pass}\n\
             %commit\n%echo done\n"
        );
        t.run(
            &["--pinentry-mode", "loopback", "--generate-key"],
            Some(params.as_bytes()),
        )?;
        let out = t.output(&["--list-secret-keys", "--with-colons"])?;
        let id = out
            .lines()
            .find_map(|l| {
                l.strip_prefix("fpr:")
                    .map(|r| r.trim_matches(':').to_string())
            })
            .ok_or_else(|| TrustError::Gpg {
                cmd: "gpg --list-secret-keys".into(),
                home: tmp.clone(),
                reason: "no local trust key after --generate-key".into(),
            })?;
        write("mykeyid", &format!("{id}\n"), 0o644)?;
        t.run(&["--check-trustdb"], None)?;
        t.finish()?;
        Ok(())
    })();
    if let Err(e) = made {
        // Best effort beside the step's own error; gc removes a temporary-named leftover.
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, home).at("rename into place", home)?;
    crate::fsutil::fsync_dir(parent)?;
    Ok(())
}

/// gpg on one homedir, batch mode.
struct Gpg {
    home: PathBuf,
    /// A short symlink to `home` when its path is too long for gpg-agent's sockets (a Unix
    /// socket path has at most 107 bytes; a `--root` deep in a file system exceeds that).
    short: Option<tempfile::TempDir>,
}

impl Gpg {
    fn new(home: PathBuf) -> Gpg {
        let short = (home.as_os_str().len() > 60)
            .then(|| {
                let d = tempfile::Builder::new()
                    .prefix("gbuild-gpg-")
                    .tempdir()
                    .ok()?;
                std::os::unix::fs::symlink(&home, d.path().join("h")).ok()?;
                Some(d)
            })
            .flatten();
        Gpg { home, short }
    }

    /// The homedir as gpg is told it.
    fn homedir(&self) -> PathBuf {
        match &self.short {
            Some(d) => d.path().join("h"),
            None => self.home.clone(),
        }
    }

    fn command(&self) -> Command {
        let mut c = Command::new("gpg");
        c.arg("--homedir")
            .arg(self.homedir())
            .args(["--batch", "--no-tty", "--no-permission-warning"])
            .env_remove("GNUPGHOME")
            .env("LC_ALL", "C");
        c
    }

    fn describe(args: &[&str]) -> String {
        format!("gpg {}", args.first().copied().unwrap_or(""))
    }

    fn exec(&self, args: &[&str], input: Option<&[u8]>) -> Result<String> {
        use std::io::Write;
        let mut c = self.command();
        c.args(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let err = |reason: String| TrustError::Gpg {
            cmd: Self::describe(args),
            home: self.home.clone(),
            reason,
        };
        let mut child = c.spawn().map_err(|e| err(format!("cannot run gpg: {e}")))?;
        if let Some(data) = input {
            let mut stdin = child.stdin.take().expect("piped");
            stdin
                .write_all(data)
                .map_err(|e| err(format!("write to gpg: {e}")))?;
        }
        let out = child.wait_with_output().map_err(|e| err(e.to_string()))?;
        if !out.status.success() {
            let text = String::from_utf8_lossy(&out.stderr);
            let lines: Vec<&str> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            let last = lines
                .iter()
                .rfind(|l| {
                    ["error", "fail", "can't", "cannot", "invalid"]
                        .iter()
                        .any(|w| l.contains(w))
                })
                .or(lines.last())
                .copied()
                .unwrap_or("")
                .to_string();
            return Err(err(format!("{} ({last})", out.status)));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn run(&self, args: &[&str], input: Option<&[u8]>) -> Result<()> {
        self.exec(args, input).map(|_| ())
    }

    fn output(&self, args: &[&str]) -> Result<String> {
        self.exec(args, None)
    }

    /// The validity letter of the key `fpr` (`None`: not in the keyring).
    fn validity(&self, fpr: &str) -> Result<Option<String>> {
        let mut c = self.command();
        c.args(["--with-colons", "--list-keys", fpr])
            .stdin(Stdio::null())
            .stderr(Stdio::null());
        let out = c.output().at("run", Path::new("gpg"))?;
        if !out.status.success() {
            return Ok(None);
        }
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(text
            .lines()
            .find(|l| l.starts_with("pub:"))
            .and_then(|l| l.split(':').nth(1))
            .map(str::to_string))
    }

    /// The local trust key getuto (or `create_keyring`) made: (fingerprint, passphrase file).
    fn local_key(&self) -> Option<(String, PathBuf)> {
        let id = std::fs::read_to_string(self.home.join("mykeyid")).ok()?;
        let id = id.trim().to_string();
        let pass = self.home.join("pass");
        (!id.is_empty() && pass.is_file()).then_some((id, pass))
    }

    /// Stop the agent a lsign started, and leave the trustdb readable for `nobody`.
    fn finish(&self) -> Result<()> {
        // No agent running (or no gpgconf) leaves nothing to stop.
        let _ = Command::new("gpgconf")
            .arg("--homedir")
            .arg(self.homedir())
            .args(["--kill", "gpg-agent"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let db = self.home.join("trustdb.gpg");
        if db.exists() {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644))
                .at("chmod", &db)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selects_only_the_asked_key() {
        let d = tempfile::tempdir().unwrap();
        let store = crate::store::Store::at(d.path());
        crate::sign::Keys::open(&store).unwrap();
        let (old, new) = crate::sign::Keys::rotate(&store).unwrap();
        let (keys, _) = crate::sign::Keys::open(&store).unwrap();
        let text = keys.public_armored();
        let one = select_key("u", &text, &old).unwrap();
        let parsed = parse_public(&one).unwrap();
        assert_eq!(parsed.len(), 1);
        assert_eq!(fingerprint_hex(&parsed[0]), old);
        let wrong = "0".repeat(40);
        match select_key("http://b/m/key.asc", &text, &wrong) {
            Err(TrustError::WrongKey { found, .. }) => {
                assert!(found.contains(&old) && found.contains(&new))
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            select_key("u", "hello", &old),
            Err(TrustError::BadKeyFile { .. })
        ));
    }
}
