//! A session: one container configuration (image + upper dir + ebuild tree) in which the
//! builder runs its commands, each appended to one log and parsed as it streams. The pass, the
//! bootstrap and the drift check all run through it, so it lives apart from each of them.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::emerge::Progress;
use super::state::{now, Current, State};
use super::{BuildEnv, BuilderError, Machine, MachineLock, Result};
use crate::fsutil::IoContext;

/// One container configuration (image + upper + tree) in which commands run, with a log.
pub struct Session<'a> {
    env: &'a BuildEnv,
    machine: &'a Machine,
    /// The machine's lock, when the session works on the machine's own builder (the loop's
    /// state is saved as packages go by); `None` for a staged builder (`rebase`).
    lock: Option<&'a MachineLock>,
    image: String,
    upper: PathBuf,
    work: PathBuf,
    snapshot: String,
    log: std::fs::File,
    log_path: PathBuf,
    pub progress: Progress,
    /// State to update as packages go by (the build loop's).
    pub state: Option<State>,
    /// Bind mounts beyond the usual ones.
    pub extra_binds: Vec<crate::runtime::Bind>,
    /// Environment beyond the usual one (a variable given here replaces the usual value).
    pub extra_env: Vec<String>,
    /// Read-only layers laid over the image, below the upper dir (the gate runs on the
    /// builder's own upper dir this way, leaving it untouched).
    pub lowers: Vec<PathBuf>,
    /// Whether containers get the builder's own package.env entry (`buildside`); off for the
    /// drift check's capture.
    pub build_layer: bool,
    /// The distcc helpers this session's emerges use (`distcc`).
    pub distcc: Option<super::distcc::Plan>,
    /// PKGDIR bound into the containers instead of the machine's own (a staged builder's).
    pkgdir: Option<PathBuf>,
}

impl<'a> Session<'a> {
    pub fn new(
        env: &'a BuildEnv,
        machine: &'a MachineLock,
        image: &str,
        upper: &Path,
        work: &Path,
        snapshot: &str,
        what: &str,
    ) -> Result<Session<'a>> {
        let mut s = Self::open(env, machine, image, upper, work, snapshot, what)?;
        s.lock = Some(machine);
        Ok(s)
    }

    /// A session on a builder staged beside the machine's (`rebase`): the staged image, upper
    /// and PKGDIR. The rebase lock proves that no other process works on the staged builder;
    /// the machine's own builder is not touched.
    #[allow(clippy::too_many_arguments)]
    pub fn staged(
        env: &'a BuildEnv,
        lock: &'a super::RebaseLock,
        image: &str,
        upper: &Path,
        work: &Path,
        snapshot: &str,
        what: &str,
        pkgdir: &Path,
    ) -> Result<Session<'a>> {
        let mut s = Self::open(env, lock.machine(), image, upper, work, snapshot, what)?;
        s.pkgdir = Some(pkgdir.to_path_buf());
        Ok(s)
    }

    fn open(
        env: &'a BuildEnv,
        machine: &'a Machine,
        image: &str,
        upper: &Path,
        work: &Path,
        snapshot: &str,
        what: &str,
    ) -> Result<Session<'a>> {
        let log_path = machine.files().log(what, now());
        Self::open_at(env, machine, image, upper, work, snapshot, log_path)
    }

    /// As `new`, appending to the existing log `log_path` (a step run inside another's log,
    /// like the publish gate inside its pass's).
    pub fn with_log(
        env: &'a BuildEnv,
        machine: &'a MachineLock,
        image: &str,
        upper: &Path,
        work: &Path,
        snapshot: &str,
        log_path: PathBuf,
    ) -> Result<Session<'a>> {
        let mut s = Self::open_at(env, machine, image, upper, work, snapshot, log_path)?;
        s.lock = Some(machine);
        Ok(s)
    }

    fn open_at(
        env: &'a BuildEnv,
        machine: &'a Machine,
        image: &str,
        upper: &Path,
        work: &Path,
        snapshot: &str,
        log_path: PathBuf,
    ) -> Result<Session<'a>> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .at("open log", &log_path)?;
        Ok(Session {
            env,
            machine,
            lock: None,
            image: image.to_string(),
            upper: upper.to_path_buf(),
            work: work.to_path_buf(),
            snapshot: snapshot.to_string(),
            log,
            log_path,
            progress: Progress::default(),
            state: None,
            extra_binds: Vec::new(),
            extra_env: Vec::new(),
            lowers: Vec::new(),
            build_layer: true,
            distcc: None,
            pkgdir: None,
        })
    }

    /// The state of the pass this session runs (the step lists record into it).
    ///
    /// # Panics
    /// When the session was opened without one (a drift check, a staged builder): a pass or
    /// first build always gives its session its state before the first step.
    pub fn pass_state(&mut self) -> &mut State {
        self.state
            .as_mut()
            .expect("a pass's session holds its state")
    }

    pub fn log_path(&self) -> PathBuf {
        self.log_path.clone()
    }

    /// A line of gbuild's own in the log, and a notice through tracing.
    pub fn note(&mut self, line: &str) {
        // Best effort: a log that cannot take a line does not stop the pass.
        let _ = writeln!(self.log, "gbuild: {line}");
        tracing::info!("{line}");
    }

    /// Give the builder the build-side tools gbuild.toml asks for (ccache) when it lacks them;
    /// probe the machine's distcc helpers for this session's emerges, with a warning in the log
    /// for each one that is down; give the builder distcc when helpers are up and it lacks it.
    pub fn use_helpers(&mut self) -> Result<()> {
        let ccache = self
            .env
            .config
            .build_options(&self.machine.name)
            .ccache_bytes()
            .is_some();
        if ccache && !overlay_has(self.env, &self.upper, &self.image, "usr/bin/ccache") {
            self.run_ok(
                "installing ccache",
                vec![
                    "/bin/sh".into(),
                    "-c".into(),
                    super::buildside::ENSURE_CCACHE.into(),
                ],
            )?;
        }
        let Some(mut plan) = super::distcc::plan(self.env, self.machine)? else {
            self.distcc = None;
            return Ok(());
        };
        let changed = super::distcc::compilers_changed(&self.upper);
        if !changed.is_empty() {
            plan.held = Some(format!(
                "the builder's compiler changed since its image {} ({}): snapshot it \
                 (`gbuild snapshot --machine {}`) and restore that on the helpers",
                self.image,
                changed.join(", "),
                self.machine.name
            ));
        }
        for w in plan.warnings() {
            self.note(&w);
        }
        if plan.enabled() {
            let up: Vec<String> = plan
                .helpers
                .iter()
                .filter(|h| h.state.is_ok())
                .map(|h| h.spec.to_string())
                .collect();
            self.note(&format!(
                "distcc helpers {} (make -j{})",
                up.join(" "),
                plan.jobs()
            ));
            let has = |rel: &str| overlay_has(self.env, &self.upper, &self.image, rel);
            let installed = has("usr/bin/distcc") && has("usr/bin/distccd");
            if !installed {
                self.install_distcc()?;
            }
            let client = overlay_read_in(self.env, &self.upper, &self.image, "usr/bin/distcc");
            if !client.is_some_and(|c| super::distcc::supports_socks_proxy(&c)) {
                plan.no_proxy = true;
                self.note(
                    "the builder's distcc cannot connect through Portage's SOCKS5 proxy \
                     (no DISTCC_SOCKS_PROXY): its builds run without network-sandbox so that \
                     compile jobs reach the helpers",
                );
            }
        }
        self.distcc = Some(plan);
        Ok(())
    }

    /// The snapshot date of the ebuild tree the session's containers see.
    pub fn snapshot(&self) -> &str {
        &self.snapshot
    }

    /// The build-side packages depclean keeps in this session's builder (`buildside`).
    pub fn kept_atoms(&self) -> Vec<&'static str> {
        super::buildside::kept_atoms(self.env, self.machine, self.distcc.is_some())
    }

    /// Run `argv` in the container; output goes to the log (and stderr when echoing) and through
    /// `progress` as it comes, never into memory whole. What the run said is in
    /// `progress.facts`.
    pub fn run(&mut self, argv: Vec<String>) -> Result<i32> {
        let mut spec = self.env.spec_with(
            self.machine,
            &self.image,
            &self.upper,
            &self.work,
            &self.snapshot,
            argv.clone(),
            self.build_layer,
            self.distcc.as_ref(),
        )?;
        if let Some(p) = &self.pkgdir {
            for b in spec.binds.iter_mut() {
                if b.dst == Path::new(super::PKGDIR) {
                    b.src = p.clone();
                }
            }
        }
        spec.binds.extend(self.extra_binds.iter().cloned());
        for e in &self.extra_env {
            let key = e.split('=').next().unwrap_or("");
            spec.env.retain(|x| x.split('=').next() != Some(key));
            spec.env.push(e.clone());
        }
        if let crate::runtime::Rootfs::Overlay { layers, .. } = &mut spec.rootfs {
            layers.extend(self.lowers.iter().cloned());
        }
        writeln!(self.log, ">>> gbuild: {}", argv.join(" "))
            .map_err(|e| crate::fsutil::FsError::new("write log", &self.log_path, e))?;
        let echo = self.env.echo;
        let log = &mut self.log;
        let progress = &mut self.progress;
        progress.start_run();
        let state = &mut self.state;
        let lock = self.lock;
        let mut log_error: Option<std::io::Error> = None;
        let mut sink = |b: &[u8]| {
            if let Err(e) = log.write_all(b) {
                log_error.get_or_insert(e);
            }
            if echo {
                // Best effort: the terminal may be gone; the log has everything.
                let _ = std::io::stderr().write_all(b);
            }
            if progress.feed(b) {
                if let (false, Some((pkg, i, n))) = (echo, progress.current.as_ref()) {
                    if progress.phase != "install" {
                        crate::progress::note(&format!(
                            "  ({i} of {n}) {pkg} [{}]",
                            progress.phase
                        ));
                    }
                }
                if let (Some(st), Some((pkg, i, n)), Some(lock)) =
                    (state.as_mut(), progress.current.as_ref(), lock)
                {
                    st.current = Some(Current {
                        package: pkg.clone(),
                        phase: progress.phase.clone(),
                        index: *i,
                        total: *n,
                    });
                    if let Some(lp) = st.last_pass.as_mut() {
                        lp.cleanup = progress.steps.clone();
                    }
                    // Best effort: a progress update; the pass saves its outcome checked.
                    if let Err(e) = st.save(lock) {
                        tracing::warn!("{e}");
                    }
                }
            }
        };
        let code = self.env.runtime.run_with_output(&spec, Some(&mut sink))?;
        if let Some(e) = log_error {
            return Err(crate::fsutil::FsError::new("write log", &self.log_path, e).into());
        }
        writeln!(self.log, ">>> gbuild: exit status {code}")
            .map_err(|e| crate::fsutil::FsError::new("write log", &self.log_path, e))?;
        Ok(code)
    }

    /// Run `argv`; a non-zero exit is an error naming `what` and the log.
    /// Install distcc (client and distccd) in the upper dir, as `distcc::ENSURE_DISTCC` does.
    pub fn install_distcc(&mut self) -> Result<()> {
        self.run_ok(
            "installing distcc",
            vec![
                "/bin/sh".into(),
                "-c".into(),
                super::distcc::ENSURE_DISTCC.into(),
            ],
        )
    }

    /// A line of gbuild's own in the session's log (`>>> gbuild: LINE`).
    pub fn log_line(&mut self, line: &str) -> Result<()> {
        writeln!(self.log, ">>> gbuild: {line}")
            .map_err(|e| crate::fsutil::FsError::new("write log", &self.log_path, e))?;
        Ok(())
    }

    pub fn run_ok(&mut self, what: &str, argv: Vec<String>) -> Result<()> {
        let code = self.run(argv)?;
        if code != 0 {
            return Err(BuilderError::Emerge {
                what: what.to_string(),
                machine: self.machine.name.clone(),
                code,
                log: self.log_path(),
            });
        }
        Ok(())
    }
}

/// Outcome of one pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PassResult {
    Success,
    /// Built, but the publish gate kept the previous publication (`super::gate`).
    Held,
    Failed {
        package: Option<String>,
        log: PathBuf,
    },
}

/// The bytes of file `rel` as overlayfs would show it on `upper` (which may be absent) over
/// `image`'s layers; `None` when it is absent, whited out or unreadable.
pub(super) fn overlay_read_in(
    env: &BuildEnv,
    upper: &Path,
    image: &str,
    rel: &str,
) -> Option<Vec<u8>> {
    use std::os::unix::fs::FileTypeExt;
    let img = crate::layer::image::load(&env.store, image).ok()?;
    let mut dirs = vec![upper.to_path_buf()];
    dirs.extend(crate::layer::image::lowerdirs(&env.store, &img));
    for d in dirs {
        let p = d.join(rel);
        match std::fs::symlink_metadata(&p) {
            Ok(md) if md.file_type().is_char_device() => return None,
            Ok(md) if md.is_file() => return std::fs::read(&p).ok(),
            Ok(_) => return None,
            Err(_) => continue,
        }
    }
    None
}

/// Whether `rel` is a file or a symlink in the root of `upper` on `image`, as overlayfs would
/// show it (`upper` may be absent: then the image alone).
pub(super) fn overlay_has(env: &BuildEnv, upper: &Path, image: &str, rel: &str) -> bool {
    use std::os::unix::fs::FileTypeExt;
    let Ok(img) = crate::layer::image::load(&env.store, image) else {
        return false;
    };
    let mut dirs = vec![upper.to_path_buf()];
    dirs.extend(crate::layer::image::lowerdirs(&env.store, &img));
    for d in dirs {
        match std::fs::symlink_metadata(d.join(rel)) {
            Ok(md) if md.file_type().is_char_device() => return false,
            Ok(md) => return md.is_file() || md.file_type().is_symlink(),
            Err(_) => continue,
        }
    }
    false
}
