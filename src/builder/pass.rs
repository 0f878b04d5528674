//! Build passes and the endless loop around them.
//!
//! A pass is a named step list in catalyst's prepare / build / finish shape ([`Step`], run by
//! `super::steps` like the bootstrap's, each step recorded in `state.json` as it goes). One
//! pass: apply the machine's configuration when it changed, `emerge -uDN --changed-deps
//! --buildpkg --usepkg @world` (every binpkg already built is reused, so a pass killed at any
//! point and restarted compiles nothing twice), then the cleanup half: `@preserved-rebuild`
//! compiled (`--usepkg=n`: a binpkg would still link the old library), `emerge --depclean`, a
//! perl-cleaner-style rebuild of packages left under an old language version's directories,
//! pruning binpkgs that no longer match what is installed (and superseded builds), a fresh index;
//! then publish: the index hosts see only lists complete binpkgs. The loop idles after a failure
//! until `resume` or a configuration change, and after a success until the interval ends or
//! `resume`. Emerge's output streams to the log and is parsed as it goes, never kept.

use std::path::Path;
use std::time::{Duration, Instant};

pub use super::session::{PassResult, Session};
use super::state::{
    now, CleanupStep, LastPass, LoopState, PassKind, PassOutcome, State, StepResult,
};
use super::steps::Ran;
use super::{BuildEnv, BuilderError, Machine, MachineLock, Result};

/// Shell script that applies the machine's configuration (bound at /run/gbuild-config).
fn apply_config_script(mode: super::ConfigMode) -> String {
    let copy = "cd /run/gbuild-config && for d in etc var; do [ -d \"$d\" ] && cp -a \"$d\" /; done; rm -f /.gbuild-builtin";
    match mode {
        super::ConfigMode::Replace => format!("set -e; rm -rf /etc/portage; {copy}"),
        super::ConfigMode::Overlay => format!("set -e; {copy}"),
    }
}

/// Apply the configuration to the builder when it changed since it was last applied.
pub fn apply_config_if_changed(env: &BuildEnv, m: &MachineLock) -> Result<bool> {
    let mode = m.ensure_config()?;
    let hash = m.config_hash()?;
    let mut meta = m.meta()?;
    if meta.config_hash.as_deref() == Some(hash.as_str()) {
        return Ok(false);
    }
    let image = meta
        .image
        .clone()
        .ok_or_else(|| BuilderError::NotBootstrapped(m.name.clone()))?;
    let snapshot = meta.recorded_snapshot(&m.name)?.to_string();
    // Without the builder's own package.env entry: its bind mount inside /etc/portage would
    // keep the old tree from being replaced.
    let mut spec = env.spec_with(
        m,
        &image,
        &m.upper(),
        &m.work(),
        &snapshot,
        vec!["/bin/sh".into(), "-c".into(), apply_config_script(mode)],
        false,
        None,
    )?;
    spec.binds.push(crate::runtime::Bind {
        src: m.config_dir(),
        dst: "/run/gbuild-config".into(),
        readonly: true,
    });
    let code = env
        .runtime
        .run_with_output(&spec, Some(&mut |_b: &[u8]| {}))?;
    if code != 0 {
        return Err(BuilderError::ApplyConfig {
            machine: m.name.clone(),
            code,
        });
    }
    meta.config_hash = Some(hash);
    m.save_meta(&meta)?;
    Ok(true)
}

/// The steps of a pass, in order. What a restart may skip (`Pass::done`): `config` when
/// `machine.json` records the configuration's hash as applied (its product); nothing else, on
/// purpose: `drift` and `helpers` look at the live builder and helpers; `world` reruns with
/// `--usepkg`, so an interrupted pass's packages install from their binpkgs and nothing compiles
/// twice, while its inputs include the builder's installed-package database, which another
/// command (`gbuild shell`) may have changed since; `cleanup`'s steps find the same work again
/// (each is stateless); `publish` makes no new generation for the same content. What the
/// interrupted pass did counts instead: a pass that applied the configuration or started the
/// world update and never ended makes the next one run the cleanup half whole and publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// prepare: the machine's configuration applied when it changed.
    Config,
    /// prepare: the builder compared with the host configuration it serves.
    Drift,
    /// prepare: build-side tools (ccache, distcc) and the distcc helpers probed.
    Helpers,
    /// build: the world update, `--buildpkg --usepkg`, with the requested packages.
    World,
    /// finish: the cleanup half (`super::cleanup`), one container run.
    Cleanup,
    /// finish: the publish gate and the publication (`super::gate`).
    Publish,
}

impl Step {
    pub const ALL: [Step; 6] = [
        Step::Config,
        Step::Drift,
        Step::Helpers,
        Step::World,
        Step::Cleanup,
        Step::Publish,
    ];
}

impl super::steps::Step for Step {
    const ALL: &'static [Step] = &Step::ALL;
    fn name(self) -> &'static str {
        match self {
            Step::Config => "config",
            Step::Drift => "drift",
            Step::Helpers => "helpers",
            Step::World => "world",
            Step::Cleanup => "cleanup",
            Step::Publish => "publish",
        }
    }

    fn phase(self) -> &'static str {
        match self {
            Step::Config | Step::Drift | Step::Helpers => "prepare",
            Step::World => "build",
            Step::Cleanup | Step::Publish => "finish",
        }
    }
}

/// One pass as a step list: what it builds on, the session its steps run in (holding the
/// loop's state for the pass), and what the steps found.
struct Pass<'a, 'b> {
    env: &'a BuildEnv,
    m: &'a MachineLock,
    s: Session<'a>,
    image: &'b str,
    snapshot: &'b str,
    /// The atoms requested on demand (`--oneshot`: they never enter the builder's world file,
    /// which must stay the host's).
    requested: &'b [String],
    key: String,
    /// The previous pass never ended after it applied the configuration or started the world
    /// update: its cleanup half and publication are still to do.
    interrupted: bool,
    config_applied: bool,
    /// Whether something may have changed (the cleanup half runs whole, the publication).
    changed: bool,
    /// What the publish step decided.
    published: PassResult,
}

impl super::steps::StepList for Pass<'_, '_> {
    type Step = Step;

    fn what(&self) -> &'static str {
        "pass"
    }

    fn key(&self) -> String {
        self.key.clone()
    }

    fn done(&mut self, step: Step) -> Result<bool> {
        Ok(match step {
            Step::Config => {
                self.m.meta()?.config_hash.as_deref() == Some(self.m.config_hash()?.as_str())
            }
            _ => false,
        })
    }

    fn run(&mut self, step: Step) -> Result<Ran> {
        match step {
            Step::Config => {
                self.config_applied = apply_config_if_changed(self.env, self.m)?;
                Ok(if self.config_applied {
                    Ran::Done
                } else {
                    Ran::Nothing
                })
            }
            Step::Drift => self.drift(),
            Step::Helpers => {
                self.s.use_helpers()?;
                Ok(Ran::Done)
            }
            Step::World => {
                let code = self
                    .s
                    .run(super::emerge::world_update_with(self.requested))?;
                if code != 0 {
                    return Ok(Ran::Failed);
                }
                self.changed = self.config_applied
                    || self.interrupted
                    || !self.s.progress.built.is_empty()
                    || !self.s.progress.binary.is_empty()
                    || Some(self.snapshot) != published_snapshot(self.m)?.as_deref();
                Ok(Ran::Done)
            }
            Step::Cleanup => {
                // One more container run finishes the pass: @preserved-rebuild only when
                // Portage kept old libraries, the other cleanup steps only when something may
                // have changed (a no-change pass costs little more than the bare emerge it
                // wraps).
                let preserved = overlay_read(
                    self.env,
                    self.m,
                    self.image,
                    "var/lib/portage/preserved_libs_registry",
                )
                .is_some_and(|r| r.iter().any(u8::is_ascii_alphanumeric));
                if !self.changed && !preserved {
                    return Ok(Ran::Nothing);
                }
                let keep = crate::host::requests::keep_list(self.requested);
                let code = super::cleanup::run_cleanup(&mut self.s, self.changed, false, &keep)?;
                Ok(if code == 0 { Ran::Done } else { Ran::Failed })
            }
            Step::Publish => {
                let log = self.s.log_path();
                let built = self.s.progress.built.clone();
                let reused = self.s.progress.binary.len();
                let cleanup = self.s.progress.steps.clone();
                let state = self.s.pass_state();
                // The pass is built: what the publication records of it is final here.
                finish(state, built, reused, cleanup);
                let published = if self.changed || super::publish::stale(self.env, self.m)? {
                    match super::gate::publish(
                        self.env,
                        self.m,
                        self.image,
                        self.snapshot,
                        &log,
                        state,
                    ) {
                        Ok(r) => Some(r),
                        Err(e) => {
                            // Not finished: the pass stays `running` on disk, as a killed one.
                            if let Some(lp) = state.last_pass.as_mut() {
                                lp.finished = None;
                            }
                            return Err(e);
                        }
                    }
                } else {
                    None
                };
                if published != Some(PassResult::Held) {
                    let lp = state.last_pass.get_or_insert_with(LastPass::default);
                    lp.result = PassOutcome::Success;
                    lp.failed_package = None;
                    state.state = LoopState::Idle;
                }
                Ok(match published {
                    Some(r) => {
                        self.published = r;
                        Ran::Done
                    }
                    None => Ran::Nothing,
                })
            }
        }
    }

    fn records(&mut self) -> impl super::steps::Records + '_ {
        super::steps::SessionRecords {
            s: &mut self.s,
            m: self.m,
        }
    }
}

impl Pass<'_, '_> {
    /// Zero drift: the builder must equal the host configuration it serves.
    fn drift(&mut self) -> Result<Ran> {
        let Some(diff) = super::drift::check(self.env, self.m, &mut self.s)? else {
            return Ok(Ran::Done);
        };
        let lines: Vec<String> = diff.differences.iter().map(|d| d.to_string()).collect();
        // The host follows the builder's tree (it is served and named by `status`): a host on
        // another snapshot is reported, not a reason to stop building.
        let blocking = diff
            .differences
            .iter()
            .any(|d| d.kind != crate::host::Kind::Snapshot);
        self.s.pass_state().drift = lines.clone();
        if blocking && !opts_allow_drift() {
            for l in &lines {
                tracing::error!("drift: {l}");
            }
            return Ok(Ran::Failed);
        }
        Ok(Ran::Done)
    }
}

/// What the finished pass in `state` built and cleaned up, and its end.
fn finish(state: &mut State, built: Vec<String>, reused: usize, cleanup: Vec<CleanupStep>) {
    let lp = state.last_pass.get_or_insert_with(LastPass::default);
    lp.finished = Some(now());
    lp.built = built;
    lp.reused = reused;
    lp.cleanup = cleanup;
    state.current = None;
}

/// One build pass on the machine's builder: its steps ([`Step`]) in order, recorded in
/// `state`'s last pass as they go.
pub fn pass(env: &BuildEnv, m: &MachineLock, state: &mut State) -> Result<PassResult> {
    let meta = m.meta()?;
    if !meta.builder {
        return Err(BuilderError::NoBuilder(m.name.clone()));
    }
    let image = meta
        .image
        .clone()
        .ok_or_else(|| BuilderError::NotBootstrapped(m.name.clone()))?;
    let snapshot = meta.recorded_snapshot(&m.name)?.to_string();
    let requested = crate::host::requests::active(&m.store, &m.name);
    let key = pass_key(&[&image, &snapshot, &m.config_hash()?, &requested.join(" ")]);
    // A pass that never ended (killed, or an error that stopped the loop) after it applied the
    // configuration or started the world update.
    let interrupted = state.last_pass.as_ref().is_some_and(|lp| {
        lp.kind == PassKind::Pass
            && lp.result == PassOutcome::Running
            && lp
                .steps
                .iter()
                .any(|r| (r.name == "config" && r.result == StepResult::Done) || r.name == "world")
    });
    let mut s = Session::new(env, m, &image, &m.upper(), &m.work(), &snapshot, "pass")?;
    let log_rel = s
        .log_path()
        .strip_prefix(m.dir())
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    state.state = LoopState::Building;
    state.pid = Some(std::process::id());
    state.snapshot = Some(snapshot.clone());
    state.current = None;
    state.last_pass = Some(LastPass {
        started: now(),
        finished: None,
        result: PassOutcome::Running,
        log: log_rel,
        kind: PassKind::Pass,
        ..LastPass::default()
    });
    state.save(m)?;
    // The session holds the state for the pass (it updates the current package as emerge goes,
    // the steps record into it), and gives it back at its end.
    s.state = Some(std::mem::take(state));
    let mut list = Pass {
        env,
        m,
        s,
        image: &image,
        snapshot: &snapshot,
        requested: &requested,
        key,
        interrupted,
        config_applied: false,
        changed: true,
        published: PassResult::Success,
    };
    let outcome = super::steps::run(&mut list);
    let Pass {
        mut s, published, ..
    } = list;
    *state = s.state.take().expect("a pass's session holds its state");
    let failed = match outcome {
        Ok(None) => {
            state.record_pass();
            state.save(m)?;
            return Ok(published);
        }
        Ok(Some(step)) => step,
        Err(e) => return Err(e),
    };
    let package = match failed {
        Step::World | Step::Cleanup => s.progress.failed.clone(),
        _ => None,
    };
    let log = s.log_path();
    finish(
        state,
        s.progress.built.clone(),
        s.progress.binary.len(),
        s.progress.steps.clone(),
    );
    let lp = state.last_pass.get_or_insert_with(LastPass::default);
    lp.result = PassOutcome::Failed;
    lp.failed_package = package.clone();
    state.state = LoopState::Failed;
    state.record_pass();
    state.save(m)?;
    Ok(PassResult::Failed { package, log })
}

/// The key of a pass's inputs, kept in its step records.
fn pass_key(parts: &[&str]) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    hex::encode(&h.finalize()[..8])
}

/// A file of the builder's root as overlayfs would show it, read from outside: the upper dir
/// first, then the image's layers from the top. `None` when it is absent (or whited out), or
/// when it cannot be read.
fn overlay_read(env: &BuildEnv, m: &Machine, image: &str, rel: &str) -> Option<Vec<u8>> {
    super::session::overlay_read_in(env, &m.upper(), image, rel)
}

/// The snapshot date of the newest publication (a rollback serves an older one but does not
/// make the builder's work stale).
fn published_snapshot(m: &Machine) -> Result<Option<String>> {
    Ok(super::publish::latest_info(m)?
        .and_then(|i| i.snapshot)
        .and_then(|s| s.date))
}

/// `GBUILD_ALLOW_DRIFT=1` builds even when the builder differs from its host configuration.
fn opts_allow_drift() -> bool {
    std::env::var("GBUILD_ALLOW_DRIFT").as_deref() == Ok("1")
}

/// Exit status of `run --once` / `build --once` when the publish gate held the pass.
pub const HELD_EXIT: i32 = 3;

/// Options of the loop.
pub struct LoopOptions {
    pub once: bool,
    pub interval: Duration,
}

/// The build loop; the caller holds the machine's lock for the loop's whole life.
pub fn run_loop(env: &BuildEnv, m: &MachineLock, opts: &LoopOptions) -> Result<i32> {
    crate::fsutil::remove_file_if_exists(&m.resume_path())?;
    let mut state = State::load(m);
    loop {
        // A builder `rebase` staged and checked takes over between passes.
        if super::rebase::swap_if_staged(env, m)?.is_some() {
            state = State::load(m);
        }
        let result = pass(env, m, &mut state)?;
        // The same retention as `gbuild gc`, so a store that runs for months stays bounded.
        crate::gc::after_pass(env, m);
        if let (Some(lp), false) = (&state.last_pass, crate::progress::quiet()) {
            tracing::info!(
                "pass of {}: {} (built {}, from binpkgs {}{}{})",
                m.name,
                lp.result,
                lp.built.len(),
                lp.reused,
                if lp.cleanup.is_empty() { "" } else { "; " },
                lp.cleanup_summary()
            );
        }
        if opts.once {
            return Ok(match result {
                PassResult::Success => 0,
                PassResult::Held => HELD_EXIT,
                PassResult::Failed { .. } => 1,
            });
        }
        match result {
            PassResult::Held => {
                // Built; a new configuration, `resume` or the interval tries again.
                wait_for(m, Some(opts.interval), true)?;
                fetch_latest_snapshot(env, m);
                update(env, m)?;
            }
            PassResult::Success => {
                state.state = LoopState::Waiting;
                state.save(m)?;
                wait_for(m, Some(opts.interval), false)?;
                if super::rebase::swap_if_staged(env, m)?.is_some() {
                    state = State::load(m);
                }
                fetch_latest_snapshot(env, m);
                update(env, m)?;
            }
            PassResult::Failed { package, log } => {
                idle_after_failure(m, package, &log)?;
            }
        }
    }
}

/// The first build of the world set, a pass like the others: bootstrap; after a failure
/// (state `failed`, with the package and the log) idle until `resume` or a configuration change,
/// then bootstrap again (every binpkg built before is reused). `Some(1)` when `once` and it
/// failed, `None` once the image is sealed.
pub fn first_build(
    env: &BuildEnv,
    m: &MachineLock,
    recipe: &str,
    once: bool,
) -> Result<Option<i32>> {
    crate::fsutil::remove_file_if_exists(&m.resume_path())?;
    loop {
        match super::bootstrap::bootstrap(env, m, recipe)? {
            PassResult::Success | PassResult::Held => return Ok(None),
            PassResult::Failed { package, log } => {
                if once {
                    report_failure(package.as_deref(), &log, "the first build of the world set");
                    return Ok(Some(1));
                }
                idle_after_failure(m, package, &log)?;
            }
        }
    }
}

fn report_failure(package: Option<&str>, log: &Path, what: &str) {
    tracing::error!(
        "{what} failed{}; log: {}",
        package.map(|p| format!(" in {p}")).unwrap_or_default(),
        log.display(),
    );
}

fn idle_after_failure(m: &Machine, package: Option<String>, log: &Path) -> Result<()> {
    tracing::error!(
        "pass failed{}; log: {}. Fix the configuration, then `gbuild resume --machine {}`",
        package.map(|p| format!(" in {p}")).unwrap_or_default(),
        log.display(),
        m.name
    );
    wait_for(m, None, true)
}

/// Sleep until `resume`, the interval, or (when idle after a failure) a configuration change.
fn wait_for(m: &Machine, interval: Option<Duration>, on_config_change: bool) -> Result<()> {
    let start = Instant::now();
    let hash = m.config_hash().ok();
    loop {
        if m.resume_path().exists() {
            crate::fsutil::remove_file_if_exists(&m.resume_path())?;
            return Ok(());
        }
        if interval.is_some_and(|i| start.elapsed() >= i) {
            return Ok(());
        }
        if on_config_change && m.config_hash().ok() != hash {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Bring the builder to the newest verified snapshot and the machine's current configuration.
pub fn update(env: &BuildEnv, m: &MachineLock) -> Result<Option<String>> {
    let mut meta = m.meta()?;
    if !meta.builder {
        return Err(BuilderError::NoBuilder(m.name.clone()));
    }
    let (newest, _) = super::newest_snapshot(&env.store)?;
    let changed = meta.snapshot.as_deref() != Some(newest.as_str());
    if changed {
        meta.snapshot = Some(newest.clone());
        m.save_meta(&meta)?;
    }
    apply_config_if_changed(env, m)?;
    let marker = m.files().needs_update();
    match std::fs::remove_file(&marker) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(crate::fsutil::FsError::new("remove", &marker, e).into())
        }
        _ => {}
    }
    Ok(changed.then_some(newest))
}

/// Re-sync: download and verify the mirror's newest ebuild-tree snapshot (the loop's equivalent
/// of `emerge --sync`). Failures are reported and the loop goes on with the tree it has.
pub fn fetch_latest_snapshot(env: &BuildEnv, m: &Machine) {
    use crate::fetch::{self, Fetcher, RetryPolicy, Source, Trust};
    let meta = match m.meta() {
        Ok(meta) => meta,
        Err(e) => {
            tracing::warn!("snapshot not re-synced ({e}); keeping the current tree");
            return;
        }
    };
    let mirror = meta
        .mirror
        .clone()
        .unwrap_or_else(|| env.config.mirror.clone());
    let keyring = meta.keyring.clone().or_else(|| env.config.keyring.clone());
    let mut trusted = env.config.trusted_fingerprints.clone();
    trusted.extend(meta.trust.iter().cloned());
    let r = (|| -> std::result::Result<String, String> {
        let variant = super::stage3_variant(&env.config, m).map_err(|e| e.to_string())?;
        let src =
            Source::new(&mirror, &env.config.arch, &variant, None).map_err(|e| e.to_string())?;
        let trust = Trust::new(keyring.as_deref(), &trusted).map_err(|e| e.to_string())?;
        let fetcher = Fetcher::new(RetryPolicy::from_env()).map_err(|e| e.to_string())?;
        let _lock = fetch::lock(&env.store).map_err(|e| e.to_string())?;
        let got =
            fetch::fetch_snapshot(&env.store, &src, &trust, &fetcher).map_err(|e| e.to_string())?;
        Ok(got.artifact.manifest.date)
    })();
    match r {
        Ok(d) => tracing::info!("newest verified snapshot: {d}"),
        Err(e) => {
            tracing::warn!("snapshot not re-synced ({e}); keeping the current tree")
        }
    }
}

/// Ask a waiting or idle loop to go on.
pub fn resume(m: &Machine) -> Result<()> {
    crate::fsutil::atomic_write(&m.resume_path(), now().to_string().as_bytes())?;
    Ok(())
}
