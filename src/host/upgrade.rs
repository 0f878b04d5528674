//! `gbuild host upgrade`: on the host, as root, what docs/serve.md otherwise asks a user to do
//! by hand, with every step proven before the next:
//!
//! 1. read the builder's signed record of the publication (`<binhost>/release.asc`, verified
//!    with Portage's keyring `/etc/portage/gnupg`, where `gbuild host trust` put the builder's
//!    key) and the configuration it was built for (`<binhost>/bundle.tar`, checked against the
//!    record's SHA256);
//! 2. capture the host as `host export` does and compare (`host::diff`), the build set being
//!    the bundle's world plus the atoms requested on demand: any difference but the main tree's
//!    snapshot (which step 3 brings) is drift and refuses, unless `force`. World atoms with no
//!    binpkg on the binhost are named with the request that builds them;
//! 3. bring the main tree to the served snapshot: untouched when its `metadata/timestamp.*`
//!    already are the snapshot's; otherwise the tarball is downloaded (exactly the size the
//!    record signs), its SHA512 compared with the record's, Gentoo's own signature checked with
//!    Gentoo's release keys where the host (or gbuild) has them, unpacked beside the tree and
//!    swapped in (`distfiles/`, `packages/`, `local/` carried over), owned like the old tree;
//! 4. write `binrepos.conf/gbuild-<M>.conf` and the main repository's section of repos.conf
//!    from the binhost (only when they change); a binhost `.../<M>@<tag>` is the generation
//!    the tag names, with its own record, tree and binrepos.conf, in the same file;
//! 5. the check: `emerge --pretend -uDN @world --getbinpkgonly --rebuilt-binaries` with the
//!    host's own options; anything that would compile, be skipped ("masked or don't exist"),
//!    block, be uninstalled or conflict refuses, with emerge's reason;
//! 6. unless `pretend`: the same emerge for real, and what it installed.
//!
//! Outcomes map to exit statuses (`Outcome::code`, documented in docs/host-upgrade.md).

use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::bundle::{Bundle, MAX_MANIFEST_SIZE, MAX_TOTAL_SIZE};
use super::requests::{published_matches, Atom};
use super::{diff, ExportOptions, Kind};
use crate::builder::release::{Release, ReleaseSnapshot, BUNDLE_FILE, RELEASE_FILE};
use crate::fsutil::IoContext;

#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error(transparent)]
    Http(#[from] crate::fetch::http::HttpError),
    #[error(transparent)]
    Fetch(#[from] crate::fetch::FetchError),
    #[error(transparent)]
    Trust(#[from] super::trust::TrustError),
    #[error(transparent)]
    Host(#[from] super::HostError),
    #[error(transparent)]
    Fs(#[from] crate::fsutil::FsError),
    #[error(transparent)]
    Layer(#[from] crate::layer::LayerError),
    #[error("{url}: {reason}")]
    Served { url: String, reason: String },
    #[error(transparent)]
    Verify(#[from] crate::fetch::VerifyError),
    #[error("{url:?}: expected http://BUILDER[:PORT]/MACHINE or .../MACHINE@TAG")]
    BadBinhost { url: String },
    #[error("{what}: {source}")]
    Emerge {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("the signed record names a bad snapshot file {0:?}")]
    BadSnapshotFile(String),
    #[error("{}: no parent directory", .0.display())]
    NoParent(std::path::PathBuf),
    #[error("{file}: the tree inside is of {got}, not {want}")]
    OtherTree {
        file: String,
        got: String,
        want: String,
    },
    #[error("{} is a file: make it a directory (move the file into it) so that gbuild-{machine}.conf can go beside it", .path.display())]
    BinreposIsFile {
        path: std::path::PathBuf,
        machine: String,
    },
}

pub type Result<T> = std::result::Result<T, UpgradeError>;

#[derive(Debug, Clone)]
pub struct UpgradeOptions {
    /// Root of the host (`/`).
    pub root: PathBuf,
    /// The machine's binhost, `http://builder:8788/<M>`.
    pub binhost: String,
    /// Stop after the check.
    pub pretend: bool,
    /// Go on despite configuration drift.
    pub force: bool,
}

/// What the upgrade ended with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Installed these packages (empty: nothing to do).
    Installed(Vec<String>),
    /// `pretend`: the check passed; these would be installed.
    Checked(Vec<String>),
    /// The host's configuration is not the one the binpkgs were built for.
    Drift(Vec<String>),
    /// The check found what the binhost cannot satisfy.
    Refused(Vec<String>),
    /// emerge failed while installing (after a passed check).
    Failed { code: i32, installed: Vec<String> },
}

impl Outcome {
    /// The exit status: 0 done (or, with `--pretend`, the check passed), 1 the install failed,
    /// 3 configuration drift, 4 the check refused.
    pub fn code(&self) -> i32 {
        match self {
            Outcome::Installed(_) | Outcome::Checked(_) => 0,
            Outcome::Failed { .. } => 1,
            Outcome::Drift(_) => 3,
            Outcome::Refused(_) => 4,
        }
    }
}

/// The machine name and the builder's host name of a binhost URL: `http://B[:P]/<M>`, or
/// `http://B[:P]/<M>@<tag>` for the generation a tag names (the record is still machine M's).
fn parse_binhost(url: &str) -> Result<(String, String)> {
    let bad = || UpgradeError::BadBinhost {
        url: url.to_string(),
    };
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(bad)?;
    let rest = rest.trim_end_matches('/');
    let (host, path) = rest.split_once('/').ok_or_else(bad)?;
    let (machine, tag) = match path.split_once('@') {
        Some((m, t)) => (m, Some(t)),
        None => (path, None),
    };
    if !crate::store::valid_name(machine)
        || tag.is_some_and(|t| !crate::store::valid_name(t))
        || host.is_empty()
    {
        return Err(bad());
    }
    let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
    Ok((machine.to_string(), host.to_string()))
}

/// Run the upgrade (see the module documentation); `say` gets one line per step, `emerge_line`
/// each line the real upgrade's emerge prints, as it comes.
pub fn upgrade(
    o: &UpgradeOptions,
    say: &mut dyn FnMut(&str),
    emerge_line: &mut dyn FnMut(&str),
) -> Result<Outcome> {
    let base = o.binhost.trim_end_matches('/').to_string();
    let (machine, builder) = parse_binhost(&base)?;
    let fetcher = crate::fetch::http::Fetcher::new(crate::fetch::http::RetryPolicy::from_env())?;

    // 1. What the builder built for, signed.
    let url = format!("{base}/{RELEASE_FILE}");
    let signed = fetcher.get_small(&url, 1 << 20)?;
    let v = super::trust::verify_clearsigned(&o.root, &url, &signed)?;
    let release: Release = serde_json::from_slice(&v.body).map_err(|e| UpgradeError::Served {
        url: url.clone(),
        reason: format!("not a publication record: {e}"),
    })?;
    if release.machine != machine {
        return Err(UpgradeError::Served {
            url,
            reason: format!(
                "the record is of machine {:?}, not {machine:?}",
                crate::term::printable(&release.machine)
            ),
        });
    }
    say(&format!(
        "builder: publication of {} signed by {}",
        crate::time::utc(release.published_at),
        v.signer
    ));
    let built_for = match &release.bundle {
        Some(b) => {
            let url = format!("{base}/{BUNDLE_FILE}");
            let data = fetcher.get_small(&url, b.size.min(MAX_TOTAL_SIZE + MAX_MANIFEST_SIZE))?;
            if super::bundle::sha256_hex(&data) != b.sha256 {
                return Err(UpgradeError::Served {
                    url,
                    reason: "its SHA256 is not the one the signed record gives".into(),
                });
            }
            Some(Bundle::from_tar(&data[..], Path::new(&url))?)
        }
        None => None,
    };

    // 2. The host now against it.
    let live = o.root == Path::new("/");
    let host = super::export_root(
        &o.root,
        &ExportOptions {
            // make.conf's values: effective ones depend on the tree, which step 3 changes.
            effective: false,
            cpu: live,
            detect_kernel: true,
            ..ExportOptions::default()
        },
    )?;
    // Portage's index name, on the binhost as in any PKGDIR.
    let index_url = format!("{base}/{}", crate::store::PACKAGES);
    let index = String::from_utf8_lossy(&fetcher.get_small(&index_url, 256 << 20)?).into_owned();
    let missing = missing_world_atoms(&host, &index);
    let mut drift = Vec::new();
    match &built_for {
        Some(b) => {
            let world = "var/lib/portage/world";
            let mut text = b
                .file(world)
                .map(|d| String::from_utf8_lossy(d).into_owned())
                .unwrap_or_default();
            for a in &release.requests {
                if !text.is_empty() && !text.ends_with('\n') {
                    text.push('\n');
                }
                text.push_str(a);
                text.push('\n');
            }
            let build_set = b.clone().with_file(world, text.into_bytes());
            let d = diff(&build_set, &host);
            drift.extend(
                d.differences
                    .iter()
                    .filter(|x| x.kind != Kind::Snapshot)
                    .map(|x| crate::term::printable(&x.to_string()).into_owned()),
            );
        }
        None => drift.push(format!(
            "machine {machine}: the builder publishes no host configuration to compare with \
             (not imported from a host bundle, or changed during its last pass)"
        )),
    }
    let hints: Vec<String> = missing
        .iter()
        .map(|a| {
            format!(
                "{a}: in the world file, no binpkg on the binhost; build it with: ssh {builder} gbuild request --machine {machine} {a}"
            )
        })
        .collect();
    if !drift.is_empty() {
        let mut lines: Vec<String> = drift.iter().map(|l| format!("drift: {l}")).collect();
        lines.extend(hints.iter().cloned());
        if !o.force {
            return Ok(Outcome::Drift(lines));
        }
        for l in &lines {
            say(l);
        }
        say("--force: going on despite the drift");
    }

    // 3 and 4: the tree, binrepos.conf, repos.conf.
    let main = host.main_repo().cloned();
    let conf_writes = confs(&fetcher, &base, &machine, &o.root, main.as_ref())?;
    match (&release.snapshot, &main) {
        (Some(snap), Some(repo)) => {
            bring_tree(&fetcher, &base, &o.root, repo, snap, say)?;
        }
        (None, _) => say("tree: the builder names no snapshot; left as it is"),
        (_, None) => say("tree: no main repository in repos.conf; left as it is"),
    }
    for (path, text) in conf_writes {
        write_conf(&path, &text)?;
        say(&format!("wrote {}", path.display()));
    }

    // 5. The check, on the index just read: Portage's cached copy would be reused within the
    // index's TTL, hiding a publication made since (a package built on request minutes ago).
    refresh_cached_index(&o.root, &base, &index, say)?;
    let (code, out) = emerge(&o.root, true, &mut |_| {})?;
    let check = judge(&out);
    let mut problems = check.problems.clone();
    if code != 0 && problems.is_empty() {
        let tail: Vec<&str> = out.lines().rev().take(8).collect();
        problems.push(format!(
            "emerge --pretend failed (exit {code}): {}",
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        ));
    }
    if !problems.is_empty() {
        let mut lines = problems;
        lines.extend(hints);
        return Ok(Outcome::Refused(lines));
    }
    for p in &check.plan {
        say(&format!("would install: {p}"));
    }
    if o.pretend {
        return Ok(Outcome::Checked(check.plan));
    }
    if check.plan.is_empty() {
        return Ok(Outcome::Installed(Vec::new()));
    }

    // 6. The upgrade.
    let mut installed = Vec::new();
    let (code, _) = emerge(&o.root, false, &mut |l| {
        emerge_line(l);
        if let Some(r) = l.strip_prefix(">>> Emerging binary (") {
            if let Some(p) = r.split(") ").nth(1) {
                installed.push(p.trim().to_string());
            }
        }
    })?;
    if code != 0 {
        return Ok(Outcome::Failed { code, installed });
    }
    Ok(Outcome::Installed(installed))
}

/// The `TIMESTAMP` of a Packages index's header.
fn index_timestamp(text: &str) -> Option<&str> {
    text.split("\n\n")
        .next()?
        .lines()
        .find_map(|l| l.strip_prefix("TIMESTAMP:"))
        .map(str::trim)
}

/// Remove Portage's cached copy of the binhost's index (`/var/cache/edb/binhost/<host>/<path>/
/// Packages`, as the binhost client keeps it) when it is not the index being served, so that
/// emerge fetches the current one instead of trusting the copy's TTL.
fn refresh_cached_index(
    root: &Path,
    base: &str,
    index: &str,
    say: &mut dyn FnMut(&str),
) -> Result<()> {
    let rest = base.split_once("://").map_or(base, |(_, r)| r);
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let host = authority
        .rsplit_once(':')
        .filter(|(_, p)| p.bytes().all(|c| c.is_ascii_digit()))
        .map_or(authority, |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']');
    let cached = root
        .join("var/cache/edb/binhost")
        .join(host)
        .join(path.trim_matches('/'))
        .join(crate::store::PACKAGES);
    let Ok(text) = std::fs::read_to_string(&cached) else {
        return Ok(());
    };
    if index_timestamp(&text) != index_timestamp(index) {
        std::fs::remove_file(&cached).at("remove", &cached)?;
        say(&format!(
            "removed Portage's cached copy of an older index: {}",
            cached.display()
        ));
    }
    Ok(())
}

/// World atoms of `host` that no package of `index` satisfies.
fn missing_world_atoms(host: &Bundle, index: &str) -> Vec<String> {
    let text = host
        .file("var/lib/portage/world")
        .map(|d| String::from_utf8_lossy(d).into_owned())
        .unwrap_or_default();
    super::diff::normalize_atom_lines(&text)
        .iter()
        .filter_map(|l| Atom::parse(l).ok())
        .filter(|a| published_matches(index, a).is_empty())
        .map(|a| a.to_string())
        .collect()
}

/// What a pretend run says.
#[derive(Debug, Default, PartialEq, Eq)]
struct Check {
    /// `[binary ...]` merges, as `cat/pkg-ver::repo`.
    plan: Vec<String>,
    problems: Vec<String>,
}

/// The cpv of a merge-list line: `[binary  N   ] cat/pkg-1.0::repo  USE="..."`.
fn merge_target(line: &str) -> String {
    line.split_once(']')
        .map(|(_, r)| r.split_whitespace().next().unwrap_or("").to_string())
        .unwrap_or_default()
}

fn judge(out: &str) -> Check {
    let mut c = Check::default();
    let mut lines = out.lines().peekable();
    while let Some(l) = lines.next() {
        let t = l.trim();
        if t.starts_with("[binary") {
            c.plan.push(merge_target(t));
        } else if t.starts_with("[ebuild") {
            c.problems.push(format!(
                "would compile {} (no binpkg that fits): {t}",
                merge_target(t)
            ));
        } else if t.starts_with("[blocks") {
            c.problems.push(format!("blocker: {t}"));
        } else if t.starts_with("[uninstall") {
            c.problems.push(format!("would uninstall: {t}"));
        } else if t.ends_with("masked or don't exist:") {
            if let Some(next) = lines.next() {
                for a in next.split_whitespace() {
                    c.problems.push(format!(
                        "would be skipped: {a} (no binpkg on the binhost, or all masked)"
                    ));
                }
            }
        } else if t.contains("Multiple package instances within a single package slot") {
            c.problems.push(format!("slot conflict: {t}"));
        } else if t.starts_with("!!! The following binary packages have been ignored") {
            // After a blank line, one line per package until the next blank one.
            while lines.peek().is_some_and(|n| n.trim().is_empty()) {
                lines.next();
            }
            while let Some(n) = lines.peek() {
                if n.trim().is_empty() {
                    break;
                }
                let n = lines.next().unwrap_or_default().trim();
                if !n.starts_with('!') {
                    c.problems.push(format!(
                        "binpkg not usable: {n} ({})",
                        t.trim_start_matches("!!! ")
                    ));
                }
            }
        }
    }
    c.plan.retain(|p| !p.is_empty());
    c
}

/// The host's own upgrade, binaries only, with its options (EMERGE_DEFAULT_OPTS apply); `line`
/// gets every output line. Returns the exit status and, for `pretend`, the whole output.
fn emerge(root: &Path, pretend: bool, line: &mut dyn FnMut(&str)) -> Result<(i32, String)> {
    let mut c = Command::new("emerge");
    if root != Path::new("/") {
        c.arg(format!("--root={}", root.display()))
            .arg(format!("--config-root={}", root.display()));
    }
    if pretend {
        c.arg("--pretend");
    }
    c.args([
        "--update",
        "--deep",
        "--newuse",
        "--verbose",
        "--getbinpkgonly",
        "--rebuilt-binaries",
        // Never interactive, never a change to /etc/portage behind the user's back.
        "--ask=n",
        "--autounmask-write=n",
        "--color=n",
        "@world",
    ])
    .env("NOCOLOR", "true")
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    // The check reads emerge's problems (on stderr); the real run shows them as they come.
    .stderr(if pretend {
        Stdio::piped()
    } else {
        Stdio::inherit()
    });
    let what = if pretend {
        "emerge --pretend"
    } else {
        "emerge"
    };
    let mut child = c.spawn().map_err(|source| UpgradeError::Emerge {
        what: if pretend {
            "cannot run emerge --pretend"
        } else {
            "cannot run emerge"
        },
        source,
    })?;
    let errs = child.stderr.take().map(|mut err| {
        std::thread::spawn(move || {
            let mut s = String::new();
            // What arrived before a read error is what there is to show.
            let _ = err.read_to_string(&mut s);
            s
        })
    });
    let mut all = String::new();
    for l in std::io::BufReader::new(child.stdout.take().expect("piped")).lines() {
        let l = l.map_err(|source| UpgradeError::Emerge { what, source })?;
        line(&l);
        if pretend {
            all.push_str(&l);
            all.push('\n');
        }
    }
    let st = child
        .wait()
        .map_err(|source| UpgradeError::Emerge { what, source })?;
    if let Some(e) = errs {
        all.push_str(&e.join().unwrap_or_default());
    }
    let code = st
        .code()
        .unwrap_or_else(|| 128 + std::os::unix::process::ExitStatusExt::signal(&st).unwrap_or(0));
    Ok((code, all))
}

/// Bring the main tree at `repo.location` (under `root`) to the served snapshot.
fn bring_tree(
    fetcher: &crate::fetch::http::Fetcher,
    base: &str,
    root: &Path,
    repo: &super::Repo,
    snap: &ReleaseSnapshot,
    say: &mut dyn FnMut(&str),
) -> Result<()> {
    let loc = root.join(repo.location.trim_start_matches('/'));
    if repo.identity.same_tree(&snap.identity) {
        say(&format!(
            "tree {} at {}: already the served snapshot {}",
            repo.name, repo.location, snap.date
        ));
        return Ok(());
    }
    if !crate::store::valid_name(&snap.file) || snap.date.len() != 8 {
        return Err(UpgradeError::BadSnapshotFile(
            crate::term::printable(&snap.file).into_owned(),
        ));
    }
    let parent = loc
        .parent()
        .ok_or_else(|| UpgradeError::NoParent(loc.to_path_buf()))?;
    std::fs::create_dir_all(parent).at("create directory", parent)?;
    let leaf = loc
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "gentoo".into());
    let pid = std::process::id();
    let partial = parent.join(format!(".{leaf}.gbuild-{pid}.tar.xz.partial"));
    let new = parent.join(format!(".{leaf}.gbuild-new-{pid}"));
    let old = parent.join(format!(".{leaf}.gbuild-old-{pid}"));
    let cleanup = |paths: &[&Path]| {
        for p in paths {
            crate::fsutil::remove_tree_or_warn(p);
        }
    };
    let r = (|| -> Result<String> {
        // Gentoo's own signature, when a Gentoo release key here can check it.
        let sig_url = format!("{base}/snapshots/gentoo-{}.tar.xz.gpgsig", snap.date);
        let host_keys = root.join("usr/share/openpgp-keys/gentoo-release.asc");
        let trust = crate::fetch::verify::Trust::new(
            host_keys.is_file().then_some(host_keys.as_path()),
            &[],
        );
        let pending = match (fetcher.get_small(&sig_url, 1 << 16), trust) {
            (Ok(sig), Ok(t)) => t.detached(&sig_url, &sig).map_err(|e| match e {
                crate::fetch::verify::VerifyError::UnknownKey { issuer, .. } => {
                    format!("signed by key {issuer}, not one of the Gentoo release keys known here")
                }
                e => e.to_string(),
            }),
            (Err(e), _) => Err(e.to_string()),
            (_, Err(e)) => Err(e.to_string()),
        };
        let (sig, why_not) = match pending {
            Ok(p) => (Some(p), None),
            Err(e) => (None, Some(e)),
        };
        let (digests, verdict) = crate::fetch::download_signed_size(
            fetcher,
            &format!("{base}/snapshot"),
            &partial,
            snap.size,
            "the builder's signed record",
            sig,
        )?;
        if !digests.sha512.eq_ignore_ascii_case(&snap.sha512) || digests.size != snap.size {
            return Err(UpgradeError::Served {
                url: format!("{base}/snapshot"),
                reason: "its SHA512 is not the one the builder's signed record gives".into(),
            });
        }
        let how = match (verdict, why_not) {
            (Some(Ok(s)), _) => format!(
                "Gentoo's signature (key {}) and the builder's SHA512",
                s.key
            ),
            (Some(Err(e)), _) => return Err(e.into()),
            (None, Some(w)) => format!(
                "the SHA512 the builder signed (Gentoo's signature not checkable here: {w})"
            ),
            (None, None) => "the SHA512 the builder signed".into(),
        };
        std::fs::create_dir(&new).at("create directory", &new)?;
        let opts = crate::layer::unpack::UnpackOptions {
            label: snap.file.clone(),
            owners: false,
            oci_whiteouts: false,
            strip_top: true,
            strict_xattrs: false,
            link_from: None,
            link_from_is_source: false,
        };
        crate::layer::unpack::unpack_file(&partial, &new, &opts, &format!("unpack {}", snap.file))?;
        let got = crate::fetch::read_tree_identity(&new)?;
        if !got.same_tree(&snap.identity) {
            return Err(UpgradeError::OtherTree {
                file: snap.file.clone(),
                got: got.describe(),
                want: snap.identity.describe(),
            });
        }
        // What lives in the tree's directory but is not the tree.
        for keep in ["distfiles", "packages", "local"] {
            let from = loc.join(keep);
            if from.symlink_metadata().is_ok() && new.join(keep).symlink_metadata().is_err() {
                std::fs::rename(&from, new.join(keep)).at("rename", &from)?;
            }
        }
        if let Ok(md) = std::fs::symlink_metadata(&loc) {
            use std::os::unix::fs::MetadataExt;
            if nix::unistd::geteuid().is_root() {
                chown_tree(&new, md.uid(), md.gid())?;
            }
        }
        crate::layer::sync_tree(&new)?;
        Ok(how)
    })();
    let how = match r {
        Ok(h) => h,
        Err(e) => {
            cleanup(&[&partial, &new]);
            return Err(e);
        }
    };
    if loc.symlink_metadata().is_ok() {
        std::fs::rename(&loc, &old).at("rename", &loc)?;
    }
    std::fs::rename(&new, &loc).at("rename into place", &loc)?;
    crate::fsutil::fsync_dir(parent)?;
    cleanup(&[&partial, &old]);
    say(&format!(
        "tree {} at {}: {} -> snapshot {} ({}), verified by {how}",
        repo.name,
        repo.location,
        repo.identity.describe(),
        snap.date,
        snap.identity.describe()
    ));
    Ok(())
}

fn chown_tree(dir: &Path, uid: u32, gid: u32) -> Result<()> {
    let set = |p: &Path| std::os::unix::fs::lchown(p, Some(uid), Some(gid)).at("chown", p);
    set(dir)?;
    for e in std::fs::read_dir(dir).at("read directory", dir)? {
        let e = e.at("read directory", dir)?;
        let p = e.path();
        if e.file_type().at("stat", &p)?.is_dir() {
            chown_tree(&p, uid, gid)?;
        } else {
            set(&p)?;
        }
    }
    Ok(())
}

/// The host's configuration files to write: `binrepos.conf/gbuild-<M>.conf` and the main
/// repository's section of repos.conf, from the binhost, where they differ from the files.
fn confs(
    fetcher: &crate::fetch::http::Fetcher,
    base: &str,
    machine: &str,
    root: &Path,
    main: Option<&super::Repo>,
) -> Result<Vec<(PathBuf, String)>> {
    let mut out = Vec::new();
    let portage = root.join("etc/portage");
    let text = |url: String| -> Result<String> {
        Ok(String::from_utf8_lossy(&fetcher.get_small(&url, 1 << 16)?).into_owned())
    };
    let binrepos = portage.join("binrepos.conf");
    if binrepos.is_file() {
        return Err(UpgradeError::BinreposIsFile {
            path: binrepos,
            machine: machine.to_string(),
        });
    }
    let path = binrepos.join(format!("gbuild-{machine}.conf"));
    let served = text(format!("{base}/binrepos.conf"))?;
    if std::fs::read_to_string(&path).ok().as_deref() != Some(served.as_str()) {
        out.push((path, served));
    }
    if let Some(repo) = main {
        let served = text(format!("{base}/repos.conf"))?;
        let reposd = portage.join("repos.conf");
        let path = if reposd.is_file() {
            reposd
        } else {
            reposd.join(format!("{}.conf", repo.name))
        };
        let existing = std::fs::read_to_string(&path).ok();
        let merged = merge_repos_conf(existing.as_deref(), &repo.name, &repo.location, &served);
        if existing.as_deref() != Some(merged.as_str()) {
            out.push((path, merged));
        }
    }
    Ok(out)
}

/// Marks the lines `host upgrade` wrote into a repos.conf section.
const MARK: &str = "# gbuild host upgrade: synced from the binhost's snapshot (see its repos.conf)";

/// `existing` (a repos.conf file) with section `name` holding the served sync settings and
/// `location`, and every other key of that section (priority, masters, ...) and every other
/// section kept as they were.
fn merge_repos_conf(existing: Option<&str>, name: &str, location: &str, served: &str) -> String {
    let synced = |k: &str| k == "location" || k.starts_with("sync") || k.starts_with("auto-sync");
    let mut keys: Vec<String> = vec![format!("location = {location}")];
    let mut in_served = false;
    for l in served.lines().map(str::trim) {
        if let Some(s) = l.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            in_served = s.trim() == "gentoo" || s.trim() == name;
        } else if let Some((k, v)) = l.split_once('=') {
            let k = k.trim();
            if in_served && synced(k) && k != "location" && !l.starts_with('#') {
                keys.push(format!("{k} = {}", v.trim()));
            }
        }
    }
    let mut out: Vec<String> = Vec::new();
    let mut done = false;
    let emit = |out: &mut Vec<String>, kept: &mut Vec<String>| {
        out.push(MARK.to_string());
        out.push(format!("[{name}]"));
        out.extend(keys.iter().cloned());
        out.append(kept);
    };
    let mut kept: Vec<String> = Vec::new();
    let mut inside = false;
    for raw in existing.unwrap_or("").lines() {
        let l = raw.trim();
        if let Some(s) = l.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            if inside {
                emit(&mut out, &mut kept);
                done = true;
            }
            inside = s.trim() == name && !done;
            if inside {
                continue;
            }
        }
        if l == MARK {
            continue;
        }
        if inside {
            match l.split_once('=') {
                Some((k, _)) if synced(k.trim()) && !l.starts_with('#') => {}
                _ if l.is_empty() => {}
                _ => kept.push(raw.to_string()),
            }
        } else {
            out.push(raw.to_string());
        }
    }
    if inside {
        emit(&mut out, &mut kept);
        done = true;
    }
    if !done {
        if out.last().is_some_and(|l| !l.trim().is_empty()) {
            out.push(String::new());
        }
        emit(&mut out, &mut kept);
    }
    let mut s = out.join("\n");
    s.push('\n');
    s
}

fn write_conf(path: &Path, text: &str) -> Result<()> {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).at("create directory", p)?;
    }
    crate::fsutil::atomic_write(path, text.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binhost_urls() {
        assert_eq!(
            parse_binhost("http://builder.lan:8788/laptop/").unwrap(),
            ("laptop".into(), "builder.lan".into())
        );
        assert_eq!(
            parse_binhost("http://builder.lan:8788/laptop@stable").unwrap(),
            ("laptop".into(), "builder.lan".into())
        );
        assert!(parse_binhost("http://b/laptop@").is_err());
        assert!(parse_binhost("http://b/laptop@a@b").is_err());
        assert!(parse_binhost("http://builder:8788").is_err());
        assert!(parse_binhost("ftp://b/m").is_err());
        assert!(parse_binhost("http://b/../x").is_err());
    }

    #[test]
    fn pretend_output_is_judged() {
        let out = "\
These are the packages that would be merged, in order:

[binary     U  ] dev-lang/perl-5.40.0::gentoo [5.38.2-r3::gentoo] USE=\"-doc\" 0 KiB
[binary   R    ] dev-perl/DBI-1.0::gentoo  0 KiB
[ebuild  N     ] app-misc/screen-1.0::gentoo  0 KiB
[blocks B      ] sys-apps/openrc (\"sys-apps/openrc\" is soft blocking sys-apps/systemd-256)

!!! The following binary packages have been ignored due to non matching USE:

    =app-editors/vim-1.0 -nls

!!! Problems have been detected with your world file
!!! Please run emaint --check world


!!! Ebuilds for the following packages are either all
!!! masked or don't exist:
net-misc/curl sys-apps/less
";
        let c = judge(out);
        assert_eq!(
            c.plan,
            vec!["dev-lang/perl-5.40.0::gentoo", "dev-perl/DBI-1.0::gentoo"]
        );
        let p = c.problems.join("\n");
        for want in [
            "would compile app-misc/screen-1.0::gentoo",
            "blocker: [blocks B",
            "binpkg not usable: =app-editors/vim-1.0 -nls",
            "would be skipped: net-misc/curl",
            "would be skipped: sys-apps/less",
        ] {
            assert!(p.contains(want), "{want} in\n{p}");
        }
        assert_eq!(c.problems.len(), 5, "{p}");
        assert!(judge("[binary  N ] a/b-1::gentoo\n").problems.is_empty());
    }

    #[test]
    fn repos_conf_is_merged_idempotently() {
        let served = "# comment\n[gentoo]\nlocation = /var/db/repos/gentoo\nsync-type = webrsync\n\
                      auto-sync = no\nsync-webrsync-verify-signature = yes\n";
        let existing = "[DEFAULT]\nmain-repo = gentoo\n\n[gentoo]\nlocation = /srv/gentoo\n\
                        sync-type = rsync\nsync-uri = rsync://rsync.gentoo.org/gentoo-portage\n\
                        priority = -1000\n\n[other]\nlocation = /x\n";
        let m = merge_repos_conf(Some(existing), "gentoo", "/srv/gentoo", served);
        assert!(m.contains("[DEFAULT]\nmain-repo = gentoo\n"), "{m}");
        assert!(m.contains("location = /srv/gentoo\nsync-type = webrsync\nauto-sync = no\n"));
        assert!(m.contains("priority = -1000"), "{m}");
        assert!(!m.contains("rsync://"), "{m}");
        assert!(m.contains("[other]\nlocation = /x"), "{m}");
        assert_eq!(
            merge_repos_conf(Some(&m), "gentoo", "/srv/gentoo", served),
            m
        );
        let fresh = merge_repos_conf(None, "gentoo", "/var/db/repos/gentoo", served);
        assert!(fresh.starts_with(MARK), "{fresh}");
        assert_eq!(
            merge_repos_conf(Some(&fresh), "gentoo", "/var/db/repos/gentoo", served),
            fresh
        );
    }
}
