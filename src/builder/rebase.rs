//! `rebase`: re-create a machine's builder from the newest stage3 of its family without
//! recompiling the world, and swap it in only once it is complete and sane.
//!
//! The new builder is staged beside the running one, under `machines/<M>/rebase/`: its own
//! PKGDIR (`binpkgs/`, hard links to every file of the machine's PKGDIR, so nothing is copied
//! and the running builder's files are never touched), the images `<M>/config-<id>` and
//! `<M>/bootstrap-<id>` on the new stage3, and an empty container. The world set is bootstrapped
//! there with Portage's own reuse rules (`--usepkg --binpkg-respect-use=y
//! --binpkg-changed-deps=y --changed-deps`, slot-operator dependencies of binpkgs checked by
//! emerge): emerge, not gbuild, decides which binpkg is still valid. Then the cleanup half of a
//! pass (preserved-rebuild, depclean, the language rebuild, prune) runs in it, and `check` on
//! the sealed image. What emerge installed from binaries and what it compiled is reported.
//!
//! Locking: staging holds `machines/<M>/rebase.lock` only, so a running build loop keeps its
//! machine lock, builds and serves for the hours a bootstrap can take. The only exclusive moment
//! is the swap, under the machine's lock: the staged PKGDIR and container are exchanged with the
//! machine's (`renameat2(RENAME_EXCHANGE)`, one atomic step each), `machine.json` names the new
//! image, and the new PKGDIR is published. When a loop holds the lock, `rebase` leaves the staged
//! builder ready (`rebase/staged.json`), wakes the loop, and the loop swaps before its next pass.
//! A crash during the swap is finished by the next holder of the machine's lock (each exchange is
//! recognised by a marker file in the staged directories, so it is never done twice). A failure
//! before the swap leaves the machine exactly as it was; the staged PKGDIR stays for the next
//! attempt, which reuses what it built. The previous image stays in the store until `gc`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::session::{PassResult, Session};
use super::state::{now, CleanupStep, LastPass, LoopState, PassKind, PassOutcome, State};
use super::{BuildEnv, BuilderError, Machine, MachineLock, Result};
use crate::fsutil::IoContext;

pub use super::RebaseLock;

/// A staged builder, checked and ready to be swapped in (`rebase/staged.json`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Staged {
    /// Names the attempt: the images and the marker files carry it.
    pub id: String,
    /// The sealed image of the new builder.
    pub image: String,
    /// The stage3 tarball it starts from.
    pub stage3: String,
    /// The snapshot date of its ebuild tree.
    pub snapshot: String,
    /// Hash of the configuration it was built for.
    pub config_hash: String,
    /// The image the machine ran on when staging began.
    pub previous_image: Option<String>,
    /// Packages emerge installed from a binpkg (`>>> Emerging binary`).
    pub reused: Vec<String>,
    /// Packages emerge compiled (`>>> Emerging (`).
    pub compiled: Vec<String>,
    /// The cleanup steps and what each did.
    pub cleanup: Vec<CleanupStep>,
    /// The staging log, relative to the machine's directory.
    pub log: String,
    pub started: u64,
    pub finished: u64,
    /// Set when the swap began (a crashed swap is finished, never staged again).
    pub swapping: bool,
    /// After the swap: the publish gate held the new builder's publication.
    pub held: bool,
}

/// Why a rebase did not produce a builder: the machine is as it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The package whose build failed, when one did.
    pub package: Option<String>,
    pub why: String,
    pub log: PathBuf,
    /// What emerge had compiled and reused before it stopped.
    pub compiled: Vec<String>,
    pub reused: Vec<String>,
}

/// What `rebase` does besides the defaults.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Mirror for the stage3 (default: the machine's, else gbuild.toml's).
    pub mirror: Option<String>,
    pub keyring: Option<PathBuf>,
    pub trust: Vec<String>,
    /// Use the newest stage3 already verified in the store.
    pub offline: bool,
    /// The bootstrap recipe.
    pub recipe: String,
}

fn staged_path(m: &Machine) -> PathBuf {
    m.files().rebase_staged()
}

fn marker(id: &str) -> String {
    crate::store::rebase_marker(id)
}

/// The staged builder waiting to be swapped in, if any.
pub fn staged(m: &Machine) -> Result<Option<Staged>> {
    Ok(crate::fsutil::read_json(&staged_path(m))?)
}

/// Fetch and verify the mirror's newest stage3 of the machine's family.
fn fetch_newest_stage3(env: &BuildEnv, m: &Machine, opts: &Options) -> Result<String> {
    use crate::fetch::{self, Fetcher, RetryPolicy, Source, Trust};
    let meta = m.meta()?;
    let mirror = opts
        .mirror
        .clone()
        .or(meta.mirror.clone())
        .unwrap_or_else(|| env.config.mirror.clone());
    let keyring = opts
        .keyring
        .clone()
        .or(meta.keyring.clone())
        .or_else(|| env.config.keyring.clone());
    let mut trusted = env.config.trusted_fingerprints.clone();
    trusted.extend(meta.trust.iter().cloned());
    trusted.extend(opts.trust.iter().cloned());
    let variant = super::stage3_variant(&env.config, m)?;
    let err = |e: &dyn std::fmt::Display| BuilderError::RebaseFetch {
        machine: m.name.clone(),
        why: e.to_string(),
    };
    let src = Source::new(&mirror, &env.config.arch, &variant, None).map_err(|e| err(&e))?;
    let trust = Trust::new(keyring.as_deref(), &trusted).map_err(|e| err(&e))?;
    let fetcher = Fetcher::new(RetryPolicy::from_env()).map_err(|e| err(&e))?;
    let _lock = fetch::lock(&env.store).map_err(|e| err(&e))?;
    let got = fetch::fetch_stage3(&env.store, &src, &trust, &fetcher).map_err(|e| err(&e))?;
    for w in &got.warnings {
        tracing::warn!("{w}");
    }
    Ok(got.artifact.manifest.file)
}

/// Stage a new builder for the machine of `lock` (see the module doc). `Ok(Err(_))` when the
/// new builder could not be made (a package failed, `check` found problems): nothing of the
/// machine changed.
pub fn prepare(
    env: &BuildEnv,
    lock: &RebaseLock,
    opts: &Options,
) -> Result<std::result::Result<Staged, Failure>> {
    let m = lock.machine();
    let store = &env.store;
    let meta = m.meta()?;
    let previous_image = meta
        .image
        .clone()
        .ok_or_else(|| BuilderError::NotBootstrapped(m.name.clone()))?;
    let mode = m
        .config_mode()
        .ok_or_else(|| BuilderError::NoConfig(m.name.clone()))?;
    if !opts.offline {
        fetch_newest_stage3(env, m, opts)?;
    }
    let variant = super::stage3_variant(&env.config, m)?;
    let stage3 = crate::fetch::latest_verified_stage3(store, &env.config.arch, &variant)
        .ok_or(BuilderError::NoStage3)?;
    // The machine's own tree: a rebase changes the stage3, not the snapshot hosts follow
    // (`update` moves the tree).
    let snapshot = m.meta()?.recorded_snapshot(&m.name)?.to_string();
    let config_hash = m.config_hash()?;
    let helper = env.helper();
    let d = m.files().rebase();
    std::fs::create_dir_all(&d).at("create directory", &d)?;
    // A staged builder that was never swapped in is replaced; its PKGDIR is kept and reused.
    crate::fsutil::remove_file_if_exists(&staged_path(m))?;
    let mut old = crate::fsutil::stale_temps(&d, None)?;
    old.push(m.files().rebase_container());
    helper.remove_trees(&old)?;
    let pkgdir = m.files().rebase_binpkgs();
    let linked = link_missing(&m.binpkgs(), &pkgdir)?;
    let id = now().to_string();
    let started = now();
    note(&format!(
        "rebase of {}: staging a builder on {} with snapshot {snapshot} ({linked} file(s) of PKGDIR linked)",
        m.name, stage3.manifest.file
    ));

    let stage3_img = super::bootstrap::stage3_image(env, &stage3)?;
    let cfg_img = m.image_name(&format!("config-{id}"));
    let ctmp = crate::fsutil::temp_path(&d, "config-layer");
    super::bootstrap::config_image(env, m, mode, &stage3_img, &cfg_img, &ctmp)?;

    let bdir = crate::fsutil::temp_path(&d, "bootstrap");
    let upper = bdir.join("upper");
    let mut s = Session::staged(
        env,
        lock,
        &cfg_img,
        &upper,
        &bdir.join("work"),
        &snapshot,
        "rebase",
        &pkgdir,
    )?;
    note(&format!("rebase log: {}", s.log_path().display()));
    let log_rel = s
        .log_path()
        .strip_prefix(m.dir())
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    // A failed attempt leaves no image behind (its layers go with the next `gc`).
    let drop_images = |names: &[&str]| {
        for n in names {
            // Best effort: a leftover image name only keeps its layers from `gc`.
            if let Err(e) = crate::layer::image::remove(store, n) {
                tracing::warn!("{e}");
            }
        }
    };
    let fail = |s: &Session, why: String| Failure {
        package: s.progress.failed.clone(),
        why,
        log: s.log_path(),
        compiled: s.progress.built.clone(),
        reused: s.progress.binary.clone(),
    };
    // The index must describe the linked files before emerge decides what to reuse.
    let code = s.run(vec!["emaint".into(), "--fix".into(), "binhost".into()])?;
    if code != 0 {
        drop_images(&[&cfg_img]);
        return Ok(Err(fail(
            &s,
            format!("emaint --fix binhost failed in the staged builder (exit {code})"),
        )));
    }
    // The world, then the packages requested on demand, exactly as a pass builds them: the new
    // builder must publish all that the running one does.
    let requested = crate::host::requests::active(&m.store, &m.name);
    let built = super::bootstrap::build_world(&mut s, env, m, &opts.recipe).and_then(|()| {
        if requested.is_empty() {
            return Ok(());
        }
        s.run_ok(
            "emerge of the requested packages",
            super::emerge::world_update_with(&requested),
        )
    });
    match built {
        Ok(()) => {}
        Err(e @ (BuilderError::Emerge { .. } | BuilderError::Cycle { .. })) => {
            drop_images(&[&cfg_img]);
            return Ok(Err(fail(&s, e.to_string())));
        }
        Err(e) => return Err(e),
    }
    let keep = crate::host::requests::keep_list(&requested);
    let code = super::cleanup::run_cleanup(&mut s, true, true, &keep)?;
    if code != 0 {
        drop_images(&[&cfg_img]);
        return Ok(Err(fail(
            &s,
            format!("the cleanup half failed in the staged builder (exit {code})"),
        )));
    }
    let boot_img = m.image_name(&format!("bootstrap-{id}"));
    crate::layer::image::commit(store, &helper, &cfg_img, &upper, Some(&boot_img), None)?;
    // The new image lists the configuration layer itself; the name is not needed.
    drop_images(&[&cfg_img]);
    helper.remove_trees(std::slice::from_ref(&bdir))?;

    // `check` on the sealed image, in a throwaway container.
    let cdir = crate::fsutil::temp_path(&d, "check");
    let mut c = Session::staged(
        env,
        lock,
        &boot_img,
        &cdir.join("upper"),
        &cdir.join("work"),
        &snapshot,
        "rebase-check",
        &pkgdir,
    )?;
    let problems = super::check::check(env, m, &mut c)?;
    helper.remove_trees(std::slice::from_ref(&cdir))?;
    for l in &problems.snapshot_drift {
        tracing::warn!("{l} (the builder leads; hosts follow the served snapshot)");
    }
    if !problems.lines.is_empty() {
        drop_images(&[&boot_img]);
        let mut f = fail(&s, format!("check failed: {}", problems.lines.join("; ")));
        f.log = c.log_path();
        return Ok(Err(f));
    }

    let container = m.files().rebase_container();
    for p in [container.join("upper"), container.join("work")] {
        std::fs::create_dir_all(&p).at("create directory", &p)?;
    }
    for p in [&container, &pkgdir] {
        let f = p.join(marker(&id));
        std::fs::write(&f, b"").at("write", &f)?;
    }
    let staged = Staged {
        id,
        image: boot_img,
        stage3: stage3.manifest.file.clone(),
        snapshot,
        config_hash,
        previous_image: Some(previous_image),
        reused: s.progress.binary.clone(),
        compiled: s.progress.built.clone(),
        cleanup: s.progress.steps.clone(),
        log: log_rel,
        started,
        finished: now(),
        swapping: false,
        held: false,
    };
    crate::fsutil::write_json(&staged_path(m), &staged)?;
    Ok(Ok(staged))
}

/// Hard-link every file of `from` that `to` lacks into `to` (the same tree; directories made as
/// needed), copying where a link is refused; `Packages` is copied, never linked (emerge
/// rewrites it); names starting with a dot are left out. Files `to` already has are kept: a staged PKGDIR's own builds win. Returns how
/// many files were added.
fn link_missing(from: &Path, to: &Path) -> Result<usize> {
    std::fs::create_dir_all(to).at("create directory", to)?;
    let mut n = 0;
    for e in std::fs::read_dir(from).at("read directory", from)? {
        let e = e.at("read directory", from)?;
        let name = e.file_name();
        // Not Portage's: markers of an earlier rebase, temporary files of a running writer.
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let src = e.path();
        let dst = to.join(&name);
        let ft = e.file_type().at("stat", &src)?;
        if ft.is_dir() {
            n += link_missing(&src, &dst)?;
        } else if ft.is_file() && std::fs::symlink_metadata(&dst).is_err() {
            if name == crate::store::PACKAGES || std::fs::hard_link(&src, &dst).is_err() {
                std::fs::copy(&src, &dst).at("copy", &src)?;
                if let Ok(md) = std::fs::metadata(&src) {
                    let mt = filetime::FileTime::from_last_modification_time(&md);
                    // A copy with a new mtime is a binpkg Portage re-reads, nothing worse.
                    let _ = filetime::set_file_mtime(&dst, mt);
                }
            }
            n += 1;
        }
    }
    Ok(n)
}

fn note(msg: &str) {
    crate::progress::note(msg);
}

/// Exchange two directories in one atomic step.
fn exchange(a: &Path, b: &Path) -> Result<()> {
    use nix::fcntl::{renameat2, RenameFlags};
    renameat2(None, a, None, b, RenameFlags::RENAME_EXCHANGE).map_err(|e| {
        BuilderError::Exchange {
            a: a.to_path_buf(),
            b: b.to_path_buf(),
            source: std::io::Error::from(e),
        }
    })?;
    crate::fsutil::fsync_dir(a.parent().unwrap_or(a))?;
    if b.parent() != a.parent() {
        crate::fsutil::fsync_dir(b.parent().unwrap_or(b))?;
    }
    Ok(())
}

/// Put the staged directory `staged` (which carries the marker of attempt `id`) at `live`, the
/// live one at `staged`, unless a previous, interrupted swap already did: the marker tells which
/// side the staged directory is on, so the exchange happens once.
fn exchange_once(live: &Path, staged: &Path, id: &str) -> Result<()> {
    if live.join(marker(id)).exists() {
        return Ok(());
    }
    if !staged.join(marker(id)).exists() {
        return Err(BuilderError::NotStaged {
            dir: staged.to_path_buf(),
            id: id.to_string(),
        });
    }
    exchange(live, staged)
}

/// Swap the staged builder in, when one is ready (or finish a swap a crash interrupted), and
/// publish its PKGDIR through the publish gate, as a pass does: a held gate leaves what hosts
/// see as it was (state `held`; the next pass tries again), the builder is swapped all the
/// same (it passed `check`). The caller holds the machine's lock: the build loop calls this
/// between passes. `None` when nothing is staged.
pub fn swap_if_staged(env: &BuildEnv, m: &MachineLock) -> Result<Option<Staged>> {
    let Some(mut st) = staged(m)? else {
        return Ok(None);
    };
    if !st.swapping {
        st.swapping = true;
        crate::fsutil::write_json(&staged_path(m), &st)?;
    }
    let mut meta = m.meta()?;
    if meta.image.as_deref() != Some(st.image.as_str()) {
        exchange_once(&m.binpkgs(), &m.files().rebase_binpkgs(), &st.id)?;
        exchange_once(&m.container(), &m.files().rebase_container(), &st.id)?;
        meta.image = Some(st.image.clone());
        meta.stage3 = Some(st.stage3.clone());
        meta.snapshot = Some(st.snapshot.clone());
        meta.config_hash = Some(st.config_hash.clone());
        meta.builder = true;
        m.save_meta(&meta)?;
    }
    for live in [m.binpkgs(), m.container()] {
        crate::fsutil::remove_file_if_exists(&live.join(marker(&st.id)))?;
    }
    let mut state = State::load(m);
    state.snapshot = Some(st.snapshot.clone());
    state.current = None;
    if state.state != LoopState::Building {
        state.state = LoopState::Idle;
    }
    state.last_pass = Some(LastPass {
        started: st.started,
        finished: Some(st.finished),
        result: PassOutcome::Success,
        built: st.compiled.clone(),
        reused: st.reused.len(),
        failed_package: None,
        log: st.log.clone(),
        kind: PassKind::Rebase,
        cleanup: st.cleanup.clone(),
        generation: None,
        ..LastPass::default()
    });
    let log = m.dir().join(&st.log);
    let published = super::gate::publish(env, m, &st.image, &st.snapshot, &log, &mut state)?;
    st.held = published == PassResult::Held;
    state.record_pass();
    state.save(m)?;
    // The previous builder's container and PKGDIR (now under rebase/) go; its image stays
    // until `gc`.
    env.helper()
        .remove_trees(&[m.files().rebase_container(), m.files().rebase_binpkgs()])?;
    // What the swap did stays readable (`swap` waiting on a loop reads it).
    crate::fsutil::write_json(&m.files().rebase_swapped(), &st)?;
    std::fs::remove_file(staged_path(m)).at("remove", &staged_path(m))?;
    note(&format!(
        "gbuild: {} now builds on {} ({}), snapshot {}{}",
        m.name,
        st.image,
        st.stage3,
        st.snapshot,
        if st.held {
            "; the publish gate held its publication (hosts keep the previous one)"
        } else {
            ""
        }
    ));
    Ok(Some(st))
}

/// What `swap` did.
#[derive(Debug)]
pub enum Swap {
    /// Swapped by this process.
    Done(Staged),
    /// The build loop holding the machine's lock swapped it.
    ByLoop(Staged),
}

/// The record of the swap of `st` (what its publication did), as the swapping process left it.
fn swapped(m: &Machine, st: Staged) -> Result<Staged> {
    Ok(
        crate::fsutil::read_json::<Staged>(&m.files().rebase_swapped())?
            .filter(|s| s.id == st.id)
            .unwrap_or(st),
    )
}

/// Swap the staged builder in: now when the machine's lock is free, else wake the build loop
/// that holds it and wait until it has swapped (between two of its passes).
pub fn swap(env: &BuildEnv, lock: &RebaseLock) -> Result<Swap> {
    let m = lock.machine();
    let st = staged(m)?.ok_or_else(|| BuilderError::NoStagedBuilder(m.name.clone()))?;
    let mut told = false;
    loop {
        match MachineLock::acquire(&env.store, &m.name) {
            Ok(ml) => {
                return match swap_if_staged(env, &ml)? {
                    Some(s) => Ok(Swap::Done(s)),
                    // The loop swapped it and exited in between.
                    None => Ok(Swap::ByLoop(swapped(m, st)?)),
                };
            }
            Err(BuilderError::Busy { holder, .. }) => {
                if staged(m)?.is_none() && m.meta()?.image.as_deref() == Some(st.image.as_str()) {
                    return Ok(Swap::ByLoop(swapped(m, st)?));
                }
                if !told {
                    note(&format!(
                        "rebase of {}: the staged builder is ready; {} holds the machine and swaps it in before its next pass",
                        m.name, holder
                    ));
                    crate::fsutil::atomic_write(&m.resume_path(), now().to_string().as_bytes())?;
                    told = true;
                }
                std::thread::sleep(std::time::Duration::from_millis(500));
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staged_pkgdir_links_what_it_lacks_and_keeps_its_own() {
        let t = tempfile::tempdir().unwrap();
        let (live, staged) = (t.path().join("live"), t.path().join("staged"));
        std::fs::create_dir_all(live.join("app-editors/nano")).unwrap();
        std::fs::write(live.join("app-editors/nano/nano-8.2-1.gpkg.tar"), b"one").unwrap();
        std::fs::write(live.join("app-editors/nano/nano-8.2-2.gpkg.tar"), b"two").unwrap();
        std::fs::write(live.join("Packages"), b"index").unwrap();
        std::fs::write(live.join(marker("7")), b"").unwrap();
        std::fs::create_dir_all(staged.join("app-editors/nano")).unwrap();
        std::fs::write(staged.join("app-editors/nano/nano-8.2-2.gpkg.tar"), b"mine").unwrap();
        assert_eq!(link_missing(&live, &staged).unwrap(), 2);
        use std::os::unix::fs::MetadataExt;
        let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();
        let rel = "app-editors/nano/nano-8.2-1.gpkg.tar";
        assert_eq!(ino(&live.join(rel)), ino(&staged.join(rel)), "a hard link");
        assert_eq!(
            std::fs::read(staged.join("app-editors/nano/nano-8.2-2.gpkg.tar")).unwrap(),
            b"mine"
        );
        assert_ne!(ino(&live.join("Packages")), ino(&staged.join("Packages")));
        assert_eq!(std::fs::read(staged.join("Packages")).unwrap(), b"index");
        assert!(!staged.join(marker("7")).exists());
        assert_eq!(link_missing(&live, &staged).unwrap(), 0);
    }

    #[test]
    fn an_interrupted_swap_exchanges_once() {
        let t = tempfile::tempdir().unwrap();
        let (live, staged) = (t.path().join("binpkgs"), t.path().join("rebase-binpkgs"));
        std::fs::create_dir_all(&live).unwrap();
        std::fs::create_dir_all(&staged).unwrap();
        std::fs::write(live.join("old"), b"").unwrap();
        std::fs::write(staged.join(marker("9")), b"").unwrap();
        exchange_once(&live, &staged, "9").unwrap();
        assert!(live.join(marker("9")).exists() && staged.join("old").exists());
        // Done again after a crash: nothing moves back.
        exchange_once(&live, &staged, "9").unwrap();
        assert!(live.join(marker("9")).exists() && staged.join("old").exists());
        // A directory of another attempt is never exchanged.
        let other = t.path().join("other");
        std::fs::create_dir_all(&other).unwrap();
        assert!(exchange_once(&other, &live, "10").is_err());
    }
}
