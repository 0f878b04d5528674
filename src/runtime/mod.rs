//! The rootless container runtime on youki's libcontainer (the only module that imports it).
//!
//! A run goes plan, then execute, as bubblewrap does: `prepare::resolve` checks the
//! description's paths (reading only), `plan::plan` turns the description and the host's facts
//! into the OCI spec and a list of files to create (pure, tested against `testdata/`), then,
//! once the cleanup guard exists, `prepare::prepare` creates the bundle, libcontainer creates
//! and starts the container, whose pid 1 is gbuild's own minimal init (`init`), and
//! `supervise` reaps it, forwards signals and proxies the terminal (`tty`). Every trace (state
//! directory, bundle, cgroup) is removed on any exit; a `watchdog` process removes them if
//! gbuild itself dies. `cgroup` says where containers' cgroups go.

mod cgroup;
mod init;
mod plan;
mod prepare;
mod supervise;
mod tty;
mod watchdog;

use std::cell::{OnceCell, RefCell};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::syscall::syscall::SyscallType;
use nix::sys::signal::Signal;
use nix::sys::wait::waitpid;

use crate::idmap::IdMapping;

pub use plan::HostFacts;
pub use watchdog::watchdog_main;

/// The container's root filesystem.
#[derive(Debug, Clone)]
pub enum Rootfs {
    /// A directory used as it is (writes go to it).
    Dir(PathBuf),
    /// An overlay of read-only layers (lowest first) with a writable upper dir; `work` must be on
    /// the same filesystem as `upper`.
    Overlay {
        layers: Vec<PathBuf>,
        upper: PathBuf,
        work: PathBuf,
    },
}

/// A bind mount `src` -> `dst` inside the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    pub src: PathBuf,
    pub dst: PathBuf,
    pub readonly: bool,
}

impl std::str::FromStr for Bind {
    type Err = String;

    /// `SRC:DST[:ro|:rw]`
    fn from_str(s: &str) -> Result<Bind, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let (src, dst, readonly) = match parts.as_slice() {
            [src, dst] => (src, dst, false),
            [src, dst, "ro"] => (src, dst, true),
            [src, dst, "rw"] => (src, dst, false),
            _ => return Err(format!("invalid bind {s:?}: expected SRC:DST[:ro]")),
        };
        if src.is_empty() || !dst.starts_with('/') {
            return Err(format!(
                "invalid bind {s:?}: SRC must be given and DST must be absolute"
            ));
        }
        Ok(Bind {
            src: PathBuf::from(src),
            dst: PathBuf::from(dst),
            readonly,
        })
    }
}

/// A tmpfs of `size` (the kernel's `size=` syntax: `512M`, `16G`, `50%`) mounted at `dst` inside
/// the container, after the binds (so it may lie inside a bound directory), mode 0775.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tmpfs {
    pub dst: PathBuf,
    pub size: String,
}

/// Everything that defines one container run.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    pub rootfs: Rootfs,
    pub binds: Vec<Bind>,
    pub tmpfs: Vec<Tmpfs>,
    pub argv: Vec<String>,
    /// `KEY=VALUE` entries; the process gets exactly these.
    pub env: Vec<String>,
    pub cwd: String,
    pub hostname: String,
    /// Allocate a terminal (stdin must be one).
    pub tty: bool,
    pub map: IdMapping,
    /// The uid and gid the command runs as inside (0: the container's root, with its
    /// capabilities; any other: an unprivileged user without capabilities). Must be mapped.
    pub user: (u32, u32),
}

impl ContainerSpec {
    /// A spec with the usual environment for `argv` on `rootfs`.
    pub fn new(rootfs: Rootfs, argv: Vec<String>, map: IdMapping) -> ContainerSpec {
        ContainerSpec {
            rootfs,
            binds: Vec::new(),
            tmpfs: Vec::new(),
            argv,
            env: default_env(),
            cwd: "/".into(),
            hostname: "gbuild".into(),
            tty: false,
            map,
            user: (0, 0),
        }
    }
}

/// The environment a container process starts with when none is given.
pub fn default_env() -> Vec<String> {
    let mut env = vec![
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
        "HOME=/root".to_string(),
        "LANG=C.UTF-8".to_string(),
    ];
    if let Ok(term) = std::env::var("TERM") {
        env.push(format!("TERM={term}"));
    }
    env
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("rootfs {0} does not exist or is not a directory")]
    NoRootfs(PathBuf),
    #[error("bind source {0} does not exist")]
    NoBindSource(PathBuf),
    #[error("invalid container spec: {0}")]
    Spec(String),
    #[error("container {id}: {message}")]
    Container { id: String, message: String },
    #[error("a terminal was requested but stdin is not a terminal")]
    NotATty,
    #[error("{0}")]
    Sys(#[from] nix::Error),
}

fn io_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> RuntimeError + 'a {
    move |source| RuntimeError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

fn lib_err(id: &str) -> impl FnOnce(libcontainer::error::LibcontainerError) -> RuntimeError + '_ {
    move |e| RuntimeError::Container {
        id: id.to_string(),
        message: e.to_string(),
    }
}

/// The shell convention for a finished process: its code, or 128+signal.
pub fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => c,
        (None, Some(s)) => 128 + s,
        _ => 1,
    }
}

/// Where libcontainer keeps its per-container state: `$XDG_RUNTIME_DIR/gbuild`, else
/// `/run/user/<uid>/gbuild` when that runtime directory exists and is ours, else
/// `/dev/shm/gbuild-<uid>` when /dev/shm is a tmpfs, else `/tmp/gbuild-<uid>` (the library's
/// default, /run/youki, is root's). A memory filesystem first: every start writes, rewrites
/// and removes a handful of small files there (the state three times, the spec, a socket),
/// which on a disk filesystem costs journal work and, for the rewrites, waits on writeback
/// (milliseconds per start, tens under I/O load).
pub fn default_state_root() -> PathBuf {
    let uid = nix::unistd::getuid().as_raw();
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        if Path::new(&d).is_dir() {
            return Path::new(&d).join("gbuild");
        }
    }
    let run_user = PathBuf::from(format!("/run/user/{uid}"));
    if owned_dir(&run_user, uid) {
        return run_user.join("gbuild");
    }
    if is_tmpfs(Path::new("/dev/shm")) {
        return PathBuf::from(format!("/dev/shm/gbuild-{uid}"));
    }
    PathBuf::from(format!("/tmp/gbuild-{uid}"))
}

/// Where `gbuild exec` puts a temporary overlay upper dir: on disk unless the login's runtime
/// directory says otherwise, since a command may write a lot into it.
pub fn default_scratch_root() -> PathBuf {
    let uid = nix::unistd::getuid().as_raw();
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        Some(d) if Path::new(&d).is_dir() => Path::new(&d).join("gbuild/scratch"),
        _ => PathBuf::from(format!("/tmp/gbuild-{uid}/scratch")),
    }
}

/// `dir` is a directory (not a symlink) owned by `uid`.
fn owned_dir(dir: &Path, uid: u32) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir() && m.uid() == uid)
}

fn is_tmpfs(dir: &Path) -> bool {
    nix::sys::statfs::statfs(dir)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC)
}

/// Where a container's output goes when it is captured.
pub type Sink<'a> = &'a mut dyn FnMut(&[u8]);

/// What a runtime learns about the host once and reuses for every container.
struct Host {
    facts: HostFacts,
}

/// The container runtime bound to a state directory.
pub struct Runtime {
    state_root: PathBuf,
    host: OnceCell<Host>,
    /// Watchdogs of finished runs, told so, not yet reaped.
    released: RefCell<Vec<watchdog::Proc>>,
}

impl Runtime {
    pub fn new(state_root: PathBuf) -> Runtime {
        Runtime {
            state_root,
            host: OnceCell::new(),
            released: RefCell::new(Vec::new()),
        }
    }

    pub fn state_root(&self) -> &Path {
        &self.state_root
    }

    /// Run a container to completion and return its exit status (128+n when killed by signal n).
    /// Its stdin, stdout and stderr are ours.
    pub fn run(&self, spec: &ContainerSpec) -> Result<i32, RuntimeError> {
        self.run_with_output(spec, None)
    }

    fn host(&self) -> Result<&Host, RuntimeError> {
        if let Some(h) = self.host.get() {
            return Ok(h);
        }
        cgroup::disable();
        let h = Host {
            facts: HostFacts::probe(),
        };
        Ok(self.host.get_or_init(|| h))
    }

    /// As `run`, but the container's stdout and stderr go to `sink` (from the supervision loop,
    /// so no thread exists while libcontainer clones) and its stdin is empty.
    pub fn run_with_output(
        &self,
        spec: &ContainerSpec,
        sink: Option<Sink<'_>>,
    ) -> Result<i32, RuntimeError> {
        let mut steps = Steps::new();
        // Plan: nothing is created until the guard below exists.
        let resolved = prepare::resolve(spec)?;
        let host = self.host()?;
        steps.mark("host facts");
        self.prepare_state_root()?;
        self.reap_stale();
        self.reap_watchdogs();
        steps.mark("state root");
        let id = format!("gb-{}-{:x}", std::process::id(), crate::time::now_nanos());
        let bundle = self.state_root.join("bundles").join(&id);
        let paths = plan::RunPaths {
            bundle: bundle.clone(),
            cgroups_path: cgroup::container_path(&id),
        };
        let plan = plan::plan(&resolved, &host.facts, &paths)?;
        steps.mark("plan");

        // Execute.
        let mut cleanup = Cleanup {
            state_root: self.state_root.clone(),
            id: id.clone(),
            bundle: bundle.clone(),
            watchdog: None,
            released: &self.released,
        };
        prepare::prepare(&plan, &bundle)?;
        steps.mark("bundle");
        cleanup.watchdog = Some(watchdog::Watchdog::spawn(&self.state_root, &id, &bundle)?);
        steps.mark("watchdog");

        let console = if spec.tty {
            Some(tty::ConsoleSocket::bind(&bundle.join("console.sock"))?)
        } else {
            None
        };

        let mut builder = ContainerBuilder::new(id.clone(), SyscallType::default())
            .with_root_path(self.state_root.clone())
            .map_err(lib_err(&id))?
            .validate_id()
            .map_err(lib_err(&id))?;
        if let Some(c) = &console {
            builder = builder.with_console_socket(Some(c.path.clone()));
        }
        let mut output_rx = None;
        if sink.is_some() {
            let (rx, tx) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
            let devnull =
                std::fs::File::open("/dev/null").map_err(io_err("open", Path::new("/dev/null")))?;
            let tx2 = tx.try_clone().map_err(io_err("dup", Path::new("pipe")))?;
            builder = builder
                .with_stdin(OwnedFd::from(devnull))
                .with_stdout(tx)
                .with_stderr(tx2);
            output_rx = Some(rx);
        }
        // Block the signals we supervise before the container's processes are cloned, so none is
        // lost and none kills us half-way; the command unblocks them before exec (`init`).
        let mask = supervise::supervised_set();
        let old_mask = mask.thread_swap_mask(nix::sys::signal::SigmaskHow::SIG_BLOCK)?;
        let _restore = RestoreMask(old_mask);
        let mut container = builder
            .with_executor(init::InitExecutor)
            .as_init(&bundle)
            .with_systemd(false)
            .with_detach(spec.tty)
            .build()
            .map_err(lib_err(&id))?;
        steps.mark("create");
        // build() leaves the caller non-dumpable (it guards the namespaces being joined).
        let _ = nix::sys::prctl::set_dumpable(true);
        let pid = container.pid().ok_or_else(|| RuntimeError::Container {
            id: id.clone(),
            message: "no init pid after create".into(),
        })?;
        if let Some(w) = cleanup.watchdog.as_mut() {
            w.tell(&format!("pid {pid}\n"));
        }

        let master = match &console {
            Some(c) => Some(c.receive_master()?),
            None => None,
        };

        let result = match container.start().map_err(lib_err(&id)) {
            Err(e) => Err(e),
            Ok(()) => {
                steps.mark("start");
                let output = match (output_rx, sink) {
                    (Some(rx), Some(f)) => Some((rx, f)),
                    _ => None,
                };
                supervise::supervise(pid, &mask, master, output)
            }
        };
        steps.mark("run");
        if result.is_err() {
            // The start's or supervision's error is the one to report; ESRCH/ECHILD mean the
            // init is gone already.
            let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
            let _ = waitpid(pid, None);
        }
        if let Err(e) = container.delete(true) {
            tracing::warn!("delete container {id}: {e}; the next run reaps it");
        }
        steps.mark("delete");
        drop(cleanup);
        steps.mark("cleanup");
        steps.report(&id);
        result
    }

    /// Reap the watchdogs of earlier runs that have exited.
    fn reap_watchdogs(&self) {
        self.released.borrow_mut().retain_mut(|p| !p.try_reap());
    }

    fn prepare_state_root(&self) -> Result<(), RuntimeError> {
        use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(self.state_root.join("bundles"))
            .map_err(io_err("create state directory", &self.state_root))?;
        // Not followed: in a shared directory (/dev/shm, /tmp) another user may have put a
        // symlink to a directory of ours there.
        let md = std::fs::symlink_metadata(&self.state_root)
            .map_err(io_err("stat state directory", &self.state_root))?;
        if !md.is_dir() || md.uid() != nix::unistd::getuid().as_raw() {
            return Err(RuntimeError::Io {
                what: "state directory is a symlink or owned by another user",
                path: self.state_root.clone(),
                source: std::io::Error::from_raw_os_error(libc::EPERM),
            });
        }
        if md.mode() & 0o777 != 0o700 {
            if let Err(e) =
                std::fs::set_permissions(&self.state_root, std::fs::Permissions::from_mode(0o700))
            {
                tracing::warn!("{}: chmod 700: {e}", self.state_root.display());
            }
        }
        Ok(())
    }

    /// Remove containers (state and bundle) left by a gbuild that was killed: libcontainer
    /// keeps a killed run's `<state>/<id>` for good.
    fn reap_stale(&self) {
        let mut names = Vec::new();
        for dir in [self.state_root.clone(), self.state_root.join("bundles")] {
            if let Ok(entries) = std::fs::read_dir(&dir) {
                names.extend(
                    entries
                        .flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned()),
                );
            }
        }
        names.sort();
        names.dedup();
        for name in names {
            let Some(rest) = name.strip_prefix("gb-") else {
                continue;
            };
            let owner: i32 = rest
                .split('-')
                .next()
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            if owner > 0 && Path::new(&format!("/proc/{owner}")).exists() {
                continue; // its gbuild still runs (and is responsible for it)
            }
            destroy(&self.state_root, &name);
            crate::fsutil::remove_tree_or_warn(&self.state_root.join("bundles").join(&name));
        }
    }
}

/// How long each step of a run took, reported as one debug event (`-v`; the start-up
/// benchmark shows them).
struct Steps {
    last: std::time::Instant,
    done: Vec<(&'static str, std::time::Duration)>,
}

impl Steps {
    fn new() -> Steps {
        Steps {
            last: std::time::Instant::now(),
            done: Vec::new(),
        }
    }

    fn mark(&mut self, step: &'static str) {
        let now = std::time::Instant::now();
        self.done.push((step, now - self.last));
        self.last = now;
    }

    fn report(&self, id: &str) {
        let parts: Vec<String> = self
            .done
            .iter()
            .map(|(s, d)| format!("{s} {:.2}", d.as_secs_f64() * 1000.0))
            .collect();
        tracing::debug!("container {id} steps (ms): {}", parts.join(", "));
    }
}

/// Restores the caller's signal mask when a run ends.
struct RestoreMask(nix::sys::signal::SigSet);

impl Drop for RestoreMask {
    fn drop(&mut self) {
        // Cannot fail for SIG_SETMASK with the mask saved before.
        let _ = self.0.thread_set_mask();
    }
}

/// Kill and remove container `id` through the library (its init, which takes every other
/// process of the pid namespace with it, then its state).
fn destroy(state_root: &Path, id: &str) {
    cgroup::disable();
    if let Ok(mut c) = Container::load(state_root.join(id)) {
        // The recorded status may be stale (an init that has exited still reads `running`);
        // the library refuses to kill a stopped container, loudly. A failed refresh keeps the
        // recorded status, and the wait and delete below follow either way.
        let _ = c.refresh_status();
        if c.can_kill() {
            // Best effort: the wait and the delete below follow either way.
            let _ = c.kill(Signal::SIGKILL, false);
        }
        if let Some(pid) = c.pid() {
            if !wait_ended(pid.as_raw(), std::time::Duration::from_secs(5)) {
                tracing::warn!("container {id}: init {pid} still runs after SIGKILL");
            }
        }
        if let Err(e) = c.delete(true) {
            tracing::warn!("delete container {id}: {e}");
        }
    }
    crate::fsutil::remove_tree_or_warn(&state_root.join(id));
}

/// Wait until process `pid` is gone or a zombie (what the library's delete takes as stopped),
/// at most `limit`.
fn wait_ended(pid: i32, limit: std::time::Duration) -> bool {
    let stat = PathBuf::from(format!("/proc/{pid}/stat"));
    let start = std::time::Instant::now();
    loop {
        let ended = match std::fs::read_to_string(&stat) {
            // The state follows the command's closing parenthesis.
            Ok(s) => s
                .rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
            Err(_) => true,
        };
        if ended {
            return true;
        }
        if start.elapsed() >= limit {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// Removes what a run created, whatever way it ends. It exists before anything of the run is
/// created.
struct Cleanup<'a> {
    state_root: PathBuf,
    id: String,
    bundle: PathBuf,
    watchdog: Option<watchdog::Watchdog>,
    released: &'a RefCell<Vec<watchdog::Proc>>,
}

impl Drop for Runtime {
    fn drop(&mut self) {
        // Those still running exit on their own; the system reaps them once gbuild is gone.
        self.reap_watchdogs();
    }
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        if self.state_root.join(&self.id).exists() {
            destroy(&self.state_root, &self.id);
        }
        crate::fsutil::remove_tree_or_warn(&self.bundle);
        if let Some(w) = self.watchdog.take() {
            self.released.borrow_mut().push(w.release());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_syntax() {
        let b: Bind = "/a:/b:ro".parse().unwrap();
        assert!(b.readonly);
        let b: Bind = "/a:/b".parse().unwrap();
        assert!(!b.readonly);
        assert!("/a".parse::<Bind>().is_err());
        assert!("/a:rel".parse::<Bind>().is_err());
        assert!("/a:/b:rx".parse::<Bind>().is_err());
    }
}
