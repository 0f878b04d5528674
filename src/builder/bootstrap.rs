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
//!
//! It runs as a named list of steps, catalyst's prepare / build / finish ([`Step`], run by
//! `super::steps` like the pass's): each is announced (`bootstrap step NAME`, in the log too),
//! recorded in `last_pass.steps` with the key of its inputs (stage3, configuration, snapshot,
//! recipe), and skipped when a previous attempt did it with the same key and its product is
//! still there: the stage3 and configuration images, and, when the attempt that failed was this
//! process's (the loop idling after a failure), the build steps already done in the upper dir it
//! left.

use std::path::{Path, PathBuf};

use super::emerge;
use super::session::{PassResult, Session};
use super::state::{now, LastPass, LoopState, PassKind, PassOutcome, State};
use super::{BuildEnv, BuilderError, ConfigMode, Machine, MachineLock, Result};
use crate::fsutil::IoContext;
use crate::layer;

/// How many cycle-breaking rounds before giving up.
const MAX_CYCLE_ROUNDS: usize = 8;

/// The temporary-name purpose of the bootstrap's upper dir.
const WORK_TMP: &str = "bootstrap";

/// The steps of a first build, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// prepare: the stage3 unpacked as its own image (`stage3/<stem>`, shared by machines).
    Stage3,
    /// prepare: the machine's configuration as a layer over it (`<M>/config`).
    Config,
    /// build: the world set resolved, cycles broken with emerge's USE hints.
    Cycles,
    /// build: the ordered steps of the bootstrap recipe.
    Recipe,
    /// build: the world update, `--buildpkg`.
    World,
    /// build: distcc, for a machine with helpers (skipped otherwise).
    Distcc,
    /// finish: the upper dir sealed as `<M>/bootstrap`, the machine's record written.
    Seal,
}

impl super::steps::Step for Step {
    const ALL: &'static [Step] = &Step::ALL;
    fn name(self) -> &'static str {
        Step::name(self)
    }

    fn phase(self) -> &'static str {
        Step::phase(self)
    }
}

impl Step {
    pub const ALL: [Step; 7] = [
        Step::Stage3,
        Step::Config,
        Step::Cycles,
        Step::Recipe,
        Step::World,
        Step::Distcc,
        Step::Seal,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Step::Stage3 => "stage3",
            Step::Config => "config",
            Step::Cycles => "cycles",
            Step::Recipe => "recipe",
            Step::World => "world",
            Step::Distcc => "distcc",
            Step::Seal => "seal",
        }
    }

    pub fn phase(self) -> &'static str {
        match self {
            Step::Stage3 | Step::Config => "prepare",
            Step::Cycles | Step::Recipe | Step::World | Step::Distcc => "build",
            Step::Seal => "finish",
        }
    }
}

/// What a bootstrap is made from, fixed before its first step.
struct Inputs {
    mode: ConfigMode,
    stage3: crate::fetch::Artifact,
    snapshot: String,
    stage3_img: String,
    cfg_img: String,
    /// The hash of everything above and the recipe: a step done with another key is redone.
    key: String,
}

fn inputs(env: &BuildEnv, m: &MachineLock, recipe: &str) -> Result<Inputs> {
    use sha2::Digest;
    let mode = m.ensure_config()?;
    let variant = super::stage3_variant(&env.config, m)?;
    let stage3 = crate::fetch::latest_verified_stage3(&env.store, &env.config.arch, &variant)
        .ok_or(BuilderError::NoStage3)?;
    let snapshot = super::pinned_snapshot(env, m)?;
    let mut h = sha2::Sha256::new();
    for part in [
        stage3.manifest.file.as_str(),
        &m.config_hash()?,
        &snapshot,
        recipe,
    ] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    Ok(Inputs {
        mode,
        snapshot,
        stage3_img: stage3_image_name(&stage3),
        cfg_img: m.image_name("config"),
        key: hex::encode(&h.finalize()[..8]),
        stage3,
    })
}

/// The upper dir a failed attempt of this process left (recorded in its last pass), if the
/// record names one of ours that still exists.
fn own_work_dir(m: &MachineLock, previous: Option<&LastPass>) -> Option<PathBuf> {
    let name = previous?.work_dir.as_deref()?;
    let (purpose, pid) = crate::fsutil::parse_temp_name(name)?;
    let dir = m.dir().join(name);
    (purpose == WORK_TMP && pid == std::process::id() && dir.is_dir()).then_some(dir)
}

/// Bootstrap the machine; `Failed` (state `failed`) when an emerge failed.
pub fn bootstrap(env: &BuildEnv, m: &MachineLock, recipe: &str) -> Result<PassResult> {
    let inp = inputs(env, m, recipe)?;
    let helper = env.helper();
    let previous = State::load(m)
        .last_pass
        .filter(|lp| lp.kind == PassKind::Bootstrap && lp.result == PassOutcome::Failed);
    let leftover = own_work_dir(m, previous.as_ref());
    // The build steps go on in the upper dir of this process's failed attempt when it got
    // past the cycles with the same inputs.
    let resume = leftover.is_some()
        && super::steps::done_before(previous.as_ref(), Step::Cycles.name(), &inp.key);
    let bdir = match (&leftover, resume) {
        (Some(d), true) => d.clone(),
        _ => {
            if let Some(d) = &leftover {
                helper.remove_trees(std::slice::from_ref(d))?;
            }
            helper.remove_trees(&m.files().stale_temps(WORK_TMP)?)?;
            m.files().temp(WORK_TMP)
        }
    };
    let upper = bdir.join("upper");
    let work = bdir.join("work");
    let mut s = Session::new(
        env,
        m,
        &inp.cfg_img,
        &upper,
        &work,
        &inp.snapshot,
        "bootstrap",
    )?;
    crate::progress::note(&format!("bootstrap log: {}", s.log_path().display()));
    let mut state = State::load(m);
    state.state = LoopState::Building;
    state.pid = Some(std::process::id());
    state.snapshot = Some(inp.snapshot.clone());
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
        work_dir: bdir.file_name().map(|n| n.to_string_lossy().into_owned()),
        ..LastPass::default()
    });
    state.save(m)?;
    // The session keeps the state from here on (it updates the current package as emerge
    // goes); the steps record into it there.
    s.state = Some(state);

    let mut list = Bootstrap {
        env,
        m,
        s,
        inp: &inp,
        recipe,
        bdir: &bdir,
        upper: &upper,
        previous: previous.as_ref(),
        resume,
    };
    let outcome = super::steps::run(&mut list).map(|_| ());
    let mut s = list.s;
    let package = s.progress.failed.clone();
    let log = s.log_path();
    let built = s.progress.built.clone();
    let reused = s.progress.binary.len();
    let state = s
        .state
        .as_mut()
        .expect("the bootstrap's state is in its session");
    state.current = None;
    let lp = state.last_pass.get_or_insert_with(LastPass::default);
    lp.finished = Some(now());
    lp.built = built;
    lp.reused = reused;
    match outcome {
        Ok(()) => {
            lp.result = PassOutcome::Success;
            lp.failed_package = None;
            lp.work_dir = None;
            state.state = LoopState::Idle;
            state.save(m)?;
            Ok(PassResult::Success)
        }
        Err(e @ (BuilderError::Emerge { .. } | BuilderError::Cycle { .. })) => {
            // The upper dir stays for this process's next attempt (a temporary name: gone
            // with the process, `gc` removes it).
            lp.result = PassOutcome::Failed;
            lp.failed_package = package.clone();
            state.state = LoopState::Failed;
            state.save(m)?;
            tracing::error!("{e}");
            Ok(PassResult::Failed { package, log })
        }
        Err(e) => {
            lp.result = PassOutcome::Failed;
            lp.work_dir = None;
            state.state = LoopState::Failed;
            state.save(m)?;
            helper.remove_trees(std::slice::from_ref(&bdir))?;
            Err(e)
        }
    }
}

/// The first build as a step list: its inputs, the session the steps run in (holding the
/// state), and what the failed attempt before it left.
struct Bootstrap<'a, 'b> {
    env: &'a BuildEnv,
    m: &'a MachineLock,
    s: Session<'a>,
    inp: &'b Inputs,
    recipe: &'b str,
    bdir: &'b Path,
    upper: &'b Path,
    previous: Option<&'b LastPass>,
    /// Whether the build steps go on in the upper dir of this process's failed attempt.
    resume: bool,
}

impl super::steps::StepList for Bootstrap<'_, '_> {
    type Step = Step;

    fn what(&self) -> &'static str {
        "bootstrap"
    }

    fn key(&self) -> String {
        self.inp.key.clone()
    }

    /// The stage3 image is skipped whenever it exists (its name is the tarball's); the
    /// configuration image when the failed attempt made it with the same inputs and it is
    /// still there; the build steps when the attempt was this process's and its upper dir is
    /// reused; sealing never.
    fn done(&mut self, step: Step) -> Result<bool> {
        let done_before = super::steps::done_before(self.previous, step.name(), &self.inp.key);
        let store = &self.env.store;
        Ok(match step {
            Step::Stage3 => layer::image::load(store, &self.inp.stage3_img).is_ok(),
            Step::Config => done_before && layer::image::load(store, &self.inp.cfg_img).is_ok(),
            Step::Seal => false,
            _ => self.resume && done_before,
        })
    }

    fn run(&mut self, step: Step) -> Result<super::steps::Ran> {
        let ran = run_step(
            self.env,
            self.m,
            &mut self.s,
            self.inp,
            step,
            self.recipe,
            self.bdir,
            self.upper,
        )?;
        Ok(if ran {
            super::steps::Ran::Done
        } else {
            super::steps::Ran::Nothing
        })
    }

    fn records(&mut self) -> impl super::steps::Records + '_ {
        super::steps::SessionRecords {
            s: &mut self.s,
            m: self.m,
        }
    }
}

/// Run one step; `false` when it had nothing to do (distcc without helpers).
#[allow(clippy::too_many_arguments)]
fn run_step(
    env: &BuildEnv,
    m: &MachineLock,
    s: &mut Session,
    inp: &Inputs,
    step: Step,
    recipe: &str,
    bdir: &Path,
    upper: &Path,
) -> Result<bool> {
    let store = &env.store;
    let helper = env.helper();
    match step {
        Step::Stage3 => {
            stage3_image(env, &inp.stage3)?;
        }
        Step::Config => {
            helper.remove_trees(&m.files().stale_temps("config-layer")?)?;
            let tmp = m.files().temp("config-layer");
            config_image(env, m, inp.mode, &inp.stage3_img, &inp.cfg_img, &tmp)?;
        }
        Step::Cycles | Step::Recipe | Step::World | Step::Distcc => {
            return build_step(s, env, m, step, recipe);
        }
        Step::Seal => {
            let boot_img = m.image_name("bootstrap");
            layer::image::commit(store, &helper, &inp.cfg_img, upper, Some(&boot_img), None)?;
            helper.remove_trees(&[bdir.to_path_buf()])?;
            let mut meta = m.meta()?;
            meta.image = Some(boot_img);
            meta.snapshot = Some(inp.snapshot.clone());
            meta.config_hash = Some(m.config_hash()?);
            meta.stage3 = Some(inp.stage3.manifest.file.clone());
            meta.builder = false;
            m.save_meta(&meta)?;
        }
    }
    Ok(true)
}

/// Run build step `step` (cycles, recipe, world, distcc) in session `s`; `false` when it had
/// nothing to do.
fn build_step(
    s: &mut Session,
    env: &BuildEnv,
    m: &Machine,
    step: Step,
    recipe: &str,
) -> Result<bool> {
    match step {
        Step::Cycles => break_cycles(s, m)?,
        Step::Recipe => {
            for (i, argv) in recipe_steps(recipe).into_iter().enumerate() {
                let mut full = vec!["emerge".to_string(), "--buildpkg".into(), "--usepkg".into()];
                full.extend(argv);
                s.run_ok(&format!("bootstrap recipe step {}", i + 1), full)?;
            }
        }
        Step::World => s.run_ok("emerge @world", emerge::world_update_args())?,
        Step::Distcc => {
            // A machine with helpers carries distcc in its image: the builder's client, and
            // the distccd its helpers run (`gbuild helper`).
            if super::distcc::hosts_of(env, m)?.is_empty() {
                return Ok(false);
            }
            s.install_distcc()?;
        }
        Step::Stage3 | Step::Config | Step::Seal => unreachable!("not a build step: {step:?}"),
    }
    Ok(true)
}

/// The image of a verified stage3 (`stage3/<tarball stem>`, shared by machines), unpacked the
/// first time.
pub fn stage3_image(env: &BuildEnv, stage3: &crate::fetch::Artifact) -> Result<String> {
    let stage3_img = stage3_image_name(stage3);
    if layer::image::load(&env.store, &stage3_img).is_err() {
        crate::progress::note(&format!("unpacking {}", stage3.manifest.file));
        layer::image::from_rootfs(&env.store, &env.helper(), &stage3.path, Some(&stage3_img))?;
    }
    Ok(stage3_img)
}

fn stage3_image_name(stage3: &crate::fetch::Artifact) -> String {
    let stem = stage3
        .manifest
        .file
        .trim_end_matches(".tar.xz")
        .trim_end_matches(".tar.zst")
        .trim_end_matches(".tar.gz")
        .trim_end_matches(".tar.bz2");
    format!("stage3/{stem}")
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
    layer::image::commit(&env.store, &helper, base, &upper, Some(name), None)?;
    helper.remove_trees(&[tmp.to_path_buf()])?;
    Ok(())
}

/// Build the world set in session `s` on a fresh image: the build steps of the bootstrap
/// (break dependency cycles, the recipe's steps, the world update, distcc for a machine with
/// helpers), every valid binpkg in PKGDIR reused. `rebase` builds its staged builder this way.
pub fn build_world(s: &mut Session, env: &BuildEnv, m: &Machine, recipe: &str) -> Result<()> {
    for step in [Step::Cycles, Step::Recipe, Step::World, Step::Distcc] {
        build_step(s, env, m, step, recipe)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_steps_go_prepare_build_finish_with_distinct_names() {
        let phases: Vec<&str> = Step::ALL.iter().map(|s| s.phase()).collect();
        let order = |p: &&str| ["prepare", "build", "finish"].iter().position(|x| x == p);
        assert!(phases.windows(2).all(|w| order(&w[0]) <= order(&w[1])));
        let mut names: Vec<&str> = Step::ALL.iter().map(|s| s.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Step::ALL.len());
    }

    #[test]
    fn recipe_parsing() {
        let r = "# comment\n\n--oneshot sys-libs/foo  # why\n-1 =a/b-1\n";
        assert_eq!(
            recipe_steps(r),
            vec![vec!["--oneshot", "sys-libs/foo"], vec!["-1", "=a/b-1"]]
        );
    }
}
