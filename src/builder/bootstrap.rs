//! `bootstrap`: from a verified stage3 to the sealed image `<M>/bootstrap`, in three layers:
//! the stage3 itself (shared by machines), the machine's configuration, and the world set built
//! with `--buildpkg`. Dependency cycles are broken the way emerge suggests: the USE change of
//! its `(Change USE: ...)` hint for a first, one-shot build of that package, after which the world
//! update rebuilds it with the final USE (as Gentoo's tinderbox does). Extra ordered steps come
//! from the bootstrap recipe (`stage3/bootstrap.recipe`).
//!
//! The first build is a pass: its progress is in `state.json` like any pass's, and an emerge
//! that fails (a package, a cycle emerge offers no way out of) leaves the machine `failed` with
//! the package and the log instead of an error; PKGDIR keeps every binpkg built before the
//! failure, so the next attempt installs those from binaries (`--usepkg`).

use std::path::Path;

use super::emerge;
use super::session::{PassResult, Session};
use super::state::{now, LastPass, LoopState, PassKind, PassOutcome, State};
use super::{BuildEnv, BuilderError, ConfigMode, Machine, MachineLock, Result};
use crate::fsutil::IoContext;
use crate::layer;

/// How many cycle-breaking rounds before giving up.
const MAX_CYCLE_ROUNDS: usize = 8;

/// Bootstrap the machine; `Failed` (state `failed`) when an emerge failed.
pub fn bootstrap(env: &BuildEnv, m: &MachineLock, recipe: &str) -> Result<PassResult> {
    let store = &env.store;
    let mode = m.ensure_config()?;
    let variant = super::stage3_variant(&env.config, m)?;
    let stage3 = crate::fetch::latest_verified_stage3(store, &env.config.arch, &variant)
        .ok_or(BuilderError::NoStage3)?;
    let snapshot = super::pinned_snapshot(env, m)?;
    let helper = env.helper();

    let stage3_img = stage3_image(env, &stage3)?;
    let cfg_img = m.image_name("config");
    helper.remove_trees(&m.files().stale_temps("config-layer")?)?;
    let tmp = m.files().temp("config-layer");
    config_image(env, m, mode, &stage3_img, &cfg_img, &tmp)?;

    // The bootstrap layer: the world set, built.
    helper.remove_trees(&m.files().stale_temps("bootstrap")?)?;
    let bdir = m.files().temp("bootstrap");
    let upper = bdir.join("upper");
    let work = bdir.join("work");
    let mut s = Session::new(env, m, &cfg_img, &upper, &work, &snapshot, "bootstrap")?;
    note(env, &format!("bootstrap log: {}", s.log_path().display()));
    let mut state = State::load(m);
    state.state = LoopState::Building;
    state.pid = Some(std::process::id());
    state.snapshot = Some(snapshot.clone());
    state.current = None;
    state.last_pass = Some(LastPass {
        started: now(),
        result: PassOutcome::Running,
        log: s
            .log_path()
            .strip_prefix(m.dir())
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        kind: PassKind::Bootstrap,
        ..LastPass::default()
    });
    state.save(m)?;
    s.state = Some(state);

    let built = build_world(&mut s, env, m, recipe);
    let mut state = s.state.take().unwrap_or_else(|| State::load(m));
    state.current = None;
    let lp = state.last_pass.get_or_insert_with(LastPass::default);
    lp.finished = Some(now());
    lp.built = s.progress.built.clone();
    lp.reused = s.progress.binary.len();
    match built {
        Ok(()) => {}
        Err(e @ (BuilderError::Emerge { .. } | BuilderError::Cycle { .. })) => {
            lp.result = PassOutcome::Failed;
            lp.failed_package = s.progress.failed.clone();
            state.state = LoopState::Failed;
            state.save(m)?;
            tracing::error!("{e}");
            return Ok(PassResult::Failed {
                package: s.progress.failed.clone(),
                log: s.log_path(),
            });
        }
        Err(e) => {
            lp.result = PassOutcome::Failed;
            state.state = LoopState::Failed;
            state.save(m)?;
            return Err(e);
        }
    }
    let boot_img = m.image_name("bootstrap");
    layer::image::commit(store, &helper, &cfg_img, &upper, Some(&boot_img))?;
    helper.remove_trees(std::slice::from_ref(&bdir))?;

    let mut meta = m.meta()?;
    meta.image = Some(boot_img.clone());
    meta.snapshot = Some(snapshot);
    meta.config_hash = Some(m.config_hash()?);
    meta.stage3 = Some(stage3.manifest.file.clone());
    meta.builder = false;
    m.save_meta(&meta)?;
    let lp = state.last_pass.get_or_insert_with(LastPass::default);
    lp.result = PassOutcome::Success;
    lp.failed_package = None;
    state.state = LoopState::Idle;
    state.save(m)?;
    Ok(PassResult::Success)
}

/// The image of a verified stage3 (`stage3/<tarball stem>`, shared by machines), unpacked the
/// first time.
pub fn stage3_image(env: &BuildEnv, stage3: &crate::fetch::Artifact) -> Result<String> {
    let stem = stage3
        .manifest
        .file
        .trim_end_matches(".tar.xz")
        .trim_end_matches(".tar.zst")
        .trim_end_matches(".tar.gz")
        .trim_end_matches(".tar.bz2")
        .to_string();
    let stage3_img = format!("stage3/{stem}");
    if layer::image::load(&env.store, &stage3_img).is_err() {
        note(env, &format!("unpacking {}", stage3.manifest.file));
        layer::image::from_rootfs(&env.store, &env.helper(), &stage3.path, Some(&stage3_img))?;
    }
    Ok(stage3_img)
}

/// Image `name`: `base` plus the machine's configuration layer, made in scratch dir `tmp`.
pub fn config_image(
    env: &BuildEnv,
    m: &Machine,
    mode: ConfigMode,
    base: &str,
    name: &str,
    tmp: &Path,
) -> Result<()> {
    let helper = env.helper();
    helper.remove_trees(&[tmp.to_path_buf()])?;
    let upper = tmp.join("upper");
    write_config_upper(&m.config_dir(), mode, &upper)?;
    layer::image::commit(&env.store, &helper, base, &upper, Some(name))?;
    helper.remove_trees(&[tmp.to_path_buf()])?;
    Ok(())
}

/// Build the world set in session `s` on a fresh image: break dependency cycles, run the
/// recipe's steps, then the world update (every valid binpkg in PKGDIR is reused).
pub fn build_world(s: &mut Session, env: &BuildEnv, m: &Machine, recipe: &str) -> Result<()> {
    break_cycles(s, m)?;
    for (i, step) in recipe_steps(recipe).into_iter().enumerate() {
        let mut argv = vec!["emerge".to_string(), "--buildpkg".into(), "--usepkg".into()];
        argv.extend(step);
        s.run_ok(&format!("bootstrap recipe step {}", i + 1), argv)?;
    }
    s.run_ok("emerge @world", emerge::world_update_args())?;
    // A machine with helpers carries distcc in its image: the builder's client, and the
    // distccd its helpers run (`gbuild helper`).
    if !super::distcc::hosts_of(env, m)?.is_empty() {
        s.run_ok(
            "installing distcc",
            vec![
                "/bin/sh".into(),
                "-c".into(),
                super::distcc::ENSURE_DISTCC.into(),
            ],
        )?;
    }
    Ok(())
}

/// Resolve the world set; while emerge reports a cycle with a USE hint, build the hinted
/// package once with that change.
fn break_cycles(s: &mut Session, m: &Machine) -> Result<()> {
    let pretend = emerge::pretend_update_args();
    for _ in 0..MAX_CYCLE_ROUNDS {
        let code = s.run(pretend.clone())?;
        if code == 0 {
            return Ok(());
        }
        let hints = s.progress.facts.hints.clone();
        if hints.is_empty() {
            if s.progress.facts.circular {
                return Err(BuilderError::Cycle {
                    machine: m.name.clone(),
                    log: s.log_path(),
                });
            }
            return Err(BuilderError::Emerge {
                what: "emerge --pretend @world".into(),
                machine: m.name.clone(),
                code,
                log: s.log_path(),
            });
        }
        for h in hints {
            let mut argv = vec![
                "env".to_string(),
                format!("USE={}", h.flags.join(" ")),
                "emerge".into(),
                "--oneshot".into(),
                "--buildpkg".into(),
                "--usepkg".into(),
                "--binpkg-respect-use=y".into(),
                "--color=n".into(),
            ];
            argv.push(format!("={}", h.cpv));
            s.run_ok(
                &format!("cycle breaking: {} with USE {}", h.cpv, h.flags.join(" ")),
                argv,
            )?;
        }
    }
    Err(BuilderError::Cycle {
        machine: m.name.clone(),
        log: s.log_path(),
    })
}

/// Recipe lines: one step per line of emerge arguments; `#` starts a comment.
pub fn recipe_steps(recipe: &str) -> Vec<Vec<String>> {
    recipe
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

/// Lay the machine's configuration out as an overlay upper dir: in replace mode the stage3's
/// /etc/portage is hidden (opaque directory) under the host's.
pub fn write_config_upper(config: &Path, mode: ConfigMode, upper: &Path) -> Result<()> {
    std::fs::create_dir_all(upper).at("create directory", upper)?;
    copy_tree(config, upper)?;
    crate::fsutil::remove_file_if_exists(&upper.join(super::OVERLAY_MARKER))?;
    // Captured overlay trees are bind-mounted at their location, never part of a layer.
    let captured = upper.join(crate::host::bundle::CAPTURED_DIR);
    if captured.is_dir() {
        std::fs::remove_dir_all(&captured).at("remove", &captured)?;
    }
    for f in [
        "gbuild-bundle.json",
        "MANIFEST.json",
        crate::host::installed::INSTALLED_NAME,
    ] {
        crate::fsutil::remove_file_if_exists(&upper.join(f))?;
    }
    if mode == ConfigMode::Replace {
        let portage = upper.join("etc/portage");
        if portage.is_dir() {
            xattr::set(&portage, "user.overlay.opaque", b"y").at("mark opaque", &portage)?;
        }
    }
    Ok(())
}

/// Copy a tree of plain files, directories and symlinks (the configuration), keeping modes and
/// mtimes.
pub fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).at("create directory", to)?;
    for e in std::fs::read_dir(from).at("read directory", from)? {
        let e = e.at("read directory", from)?;
        let src = e.path();
        let dst = to.join(e.file_name());
        let md = std::fs::symlink_metadata(&src).at("stat", &src)?;
        if md.file_type().is_symlink() {
            let t = std::fs::read_link(&src).at("read link", &src)?;
            crate::fsutil::remove_file_if_exists(&dst)?;
            std::os::unix::fs::symlink(&t, &dst).at("symlink", &dst)?;
        } else if md.is_dir() {
            copy_tree(&src, &dst)?;
        } else {
            std::fs::copy(&src, &dst).at("copy", &src)?;
            let mt = filetime::FileTime::from_last_modification_time(&md);
            filetime::set_file_mtime(&dst, mt).at("set mtime", &dst)?;
        }
    }
    Ok(())
}

fn note(_env: &BuildEnv, msg: &str) {
    crate::progress::note(msg);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipe_parsing() {
        let r = "# comment\n\n--oneshot sys-libs/foo  # why\n-1 =a/b-1\n";
        assert_eq!(
            recipe_steps(r),
            vec![vec!["--oneshot", "sys-libs/foo"], vec!["-1", "=a/b-1"]]
        );
    }
}
