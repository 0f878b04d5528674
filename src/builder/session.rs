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
    /// Environment beyond the usual one.
    pub extra_env: Vec<String>,
    /// Whether containers get the builder's own package.env entry (`buildside`); off for the
    /// drift check's capture.
    pub build_layer: bool,
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
            build_layer: true,
            pkgdir: None,
        })
    }

    pub fn log_path(&self) -> PathBuf {
        self.log_path.clone()
    }

    /// The snapshot date of the ebuild tree the session's containers see.
    pub fn snapshot(&self) -> &str {
        &self.snapshot
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
        )?;
        if let Some(p) = &self.pkgdir {
            for b in spec.binds.iter_mut() {
                if b.dst == Path::new(super::PKGDIR) {
                    b.src = p.clone();
                }
            }
        }
        spec.binds.extend(self.extra_binds.iter().cloned());
        spec.env.extend(self.extra_env.iter().cloned());
        let _ = writeln!(self.log, ">>> gbuild: {}", argv.join(" "));
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
        let _ = writeln!(self.log, ">>> gbuild: exit status {code}");
        Ok(code)
    }

    /// Run `argv`; a non-zero exit is an error naming `what` and the log.
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
    Failed {
        package: Option<String>,
        log: PathBuf,
    },
}
