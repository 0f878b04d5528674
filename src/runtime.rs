//! The rootless container runtime: the only module that imports libcontainer (youki).
//!
//! `run` plans a container (rootfs, binds, id mapping, process), writes the OCI bundle, lets
//! libcontainer create and start it, then supervises it from one loop: it reaps the init process,
//! forwards signals, proxies the terminal when there is one, and removes every trace (state
//! directory, bundle, cgroup) on any exit. A watchdog process kills and removes the container if
//! gbuild itself dies. `docs/runtime.md` has the library's behaviour that shaped
//! this module ("pitfall N" in comments refers to its numbered list).

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::oci_spec::runtime::Spec;
use libcontainer::syscall::syscall::SyscallType;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use serde_json::json;

use crate::idmap::{IdMapping, IdRange};

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

/// Everything that defines one container run.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    pub rootfs: Rootfs,
    pub binds: Vec<Bind>,
    pub argv: Vec<String>,
    /// `KEY=VALUE` entries; the process gets exactly these.
    pub env: Vec<String>,
    pub cwd: String,
    pub hostname: String,
    /// Allocate a terminal (stdin must be one).
    pub tty: bool,
    pub map: IdMapping,
}

impl ContainerSpec {
    /// A spec with the usual environment for `argv` on `rootfs`.
    pub fn new(rootfs: Rootfs, argv: Vec<String>, map: IdMapping) -> ContainerSpec {
        ContainerSpec {
            rootfs,
            binds: Vec::new(),
            argv,
            env: default_env(),
            cwd: "/".into(),
            hostname: "gbuild".into(),
            tty: false,
            map,
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
    #[error("cgroup v1 controller {ctrl} has no directory delegated to uid {uid} ({path}): run `gbuild setup-host --user {user}` as root once")]
    NoCgroupDelegation {
        ctrl: String,
        path: PathBuf,
        uid: u32,
        user: String,
    },
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
/// `/tmp/gbuild-<uid>` (pitfall 6: the library's default /run/youki is root's).
pub fn default_state_root() -> PathBuf {
    let uid = nix::unistd::getuid().as_raw();
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        Some(d) if Path::new(&d).is_dir() => Path::new(&d).join("gbuild"),
        _ => PathBuf::from(format!("/tmp/gbuild-{uid}")),
    }
}

/// Where a container's output goes when it is captured.
pub type Sink<'a> = &'a mut dyn FnMut(&[u8]);

/// The container runtime bound to a state directory.
pub struct Runtime {
    state_root: PathBuf,
}

impl Runtime {
    pub fn new(state_root: PathBuf) -> Runtime {
        Runtime { state_root }
    }

    pub fn state_root(&self) -> &Path {
        &self.state_root
    }

    /// Run a container to completion and return its exit status (128+n when killed by signal n).
    /// Its stdin, stdout and stderr are ours.
    pub fn run(&self, spec: &ContainerSpec) -> Result<i32, RuntimeError> {
        self.run_with_output(spec, None)
    }

    /// As `run`, but the container's stdout and stderr go to `sink` (from the supervision loop,
    /// so no thread exists while libcontainer clones) and its stdin is empty.
    pub fn run_with_output(
        &self,
        spec: &ContainerSpec,
        sink: Option<Sink<'_>>,
    ) -> Result<i32, RuntimeError> {
        self.prepare_state_root()?;
        self.reap_stale();
        let id = format!(
            "gb-{}-{:x}",
            std::process::id(),
            Instant::now().elapsed().as_nanos() as u64 ^ nanos_now()
        );
        let bundle = self.state_root.join("bundles").join(&id);
        let cgroups_path = cgroups_path(&id)?;
        let config = oci_config(spec, &bundle, &cgroups_path)?;
        std::fs::create_dir_all(bundle.join("rootfs")).map_err(io_err("create", &bundle))?;
        let mut cleanup = Cleanup {
            state_root: self.state_root.clone(),
            id: id.clone(),
            bundle: bundle.clone(),
            watchdog: None,
        };
        let cfg_path = bundle.join("config.json");
        std::fs::write(&cfg_path, serde_json::to_vec_pretty(&config).expect("json"))
            .map_err(io_err("write", &cfg_path))?;
        // Validate with the library's own types before it acts on it.
        Spec::load(&cfg_path).map_err(|e| RuntimeError::Spec(e.to_string()))?;

        cleanup.watchdog = Some(Watchdog::spawn(&self.state_root, &id, &bundle)?);

        let console = if spec.tty {
            if !nix::unistd::isatty(std::io::stdin().as_raw_fd()).unwrap_or(false) {
                return Err(RuntimeError::NotATty);
            }
            let sock = bundle.join("console.sock");
            let listener = std::os::unix::net::UnixListener::bind(&sock)
                .map_err(io_err("bind console socket", &sock))?;
            Some((sock, listener))
        } else {
            None
        };

        let mut builder = ContainerBuilder::new(id.clone(), SyscallType::default())
            .with_root_path(self.state_root.clone())
            .map_err(lib_err(&id))?
            .validate_id()
            .map_err(lib_err(&id))?;
        if let Some((sock, _)) = &console {
            builder = builder.with_console_socket(Some(sock.clone()));
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
        // lost and none kills us half-way; the container's process unblocks them before exec
        // (GbuildExecutor).
        let mut mask = SigSet::empty();
        for s in SUPERVISED {
            mask.add(s);
        }
        let old_mask = mask.thread_swap_mask(nix::sys::signal::SigmaskHow::SIG_BLOCK)?;
        let _restore = RestoreMask(old_mask);
        let mut container = builder
            .with_executor(GbuildExecutor)
            .as_init(&bundle)
            .with_systemd(false)
            .with_detach(spec.tty)
            .build()
            .map_err(lib_err(&id))?;
        // Pitfall 7: build() leaves the caller non-dumpable.
        let _ = nix::sys::prctl::set_dumpable(true);
        let pid = container.pid().ok_or_else(|| RuntimeError::Container {
            id: id.clone(),
            message: "no init pid after create".into(),
        })?;
        if let Some(w) = cleanup.watchdog.as_mut() {
            w.tell(&format!("pid {pid}\n"));
        }

        let master = match &console {
            Some((_, listener)) => Some(receive_pty_master(listener)?),
            None => None,
        };

        let result = match container.start().map_err(lib_err(&id)) {
            Err(e) => Err(e),
            Ok(()) => {
                let output = match (output_rx, sink) {
                    (Some(rx), Some(f)) => Some((rx, f)),
                    _ => None,
                };
                supervise(pid, &mask, master, output)
            }
        };
        if result.is_err() {
            let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
            let _ = waitpid(pid, None);
        }
        let _ = container.delete(true);
        drop(cleanup);
        result
    }

    fn prepare_state_root(&self) -> Result<(), RuntimeError> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(self.state_root.join("bundles"))
            .map_err(io_err("create state directory", &self.state_root))?;
        let md = std::fs::metadata(&self.state_root)
            .map_err(io_err("stat state directory", &self.state_root))?;
        use std::os::unix::fs::MetadataExt;
        if md.uid() != nix::unistd::getuid().as_raw() {
            return Err(RuntimeError::Io {
                what: "state directory is owned by another user",
                path: self.state_root.clone(),
                source: std::io::Error::from_raw_os_error(libc::EPERM),
            });
        }
        let _ = std::fs::set_permissions(&self.state_root, std::fs::Permissions::from_mode(0o700));
        Ok(())
    }

    /// Remove containers left by a gbuild that was killed (pitfall 6): their init is gone or
    /// their creator is.
    fn reap_stale(&self) {
        let Ok(entries) = std::fs::read_dir(&self.state_root) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
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
            let _ = std::fs::remove_dir_all(self.state_root.join("bundles").join(&name));
        }
    }
}

fn nanos_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Restores the caller's signal mask when a run ends.
struct RestoreMask(SigSet);

impl Drop for RestoreMask {
    fn drop(&mut self) {
        let _ = self.0.thread_set_mask();
    }
}

/// Runs in the container's init right before exec: gives the process a clean signal mask (the
/// runtime blocks signals while it supervises) and ties its life to gbuild's (SIGKILL when the
/// gbuild thread that created it dies), then executes the OCI process like the default executor.
#[derive(Clone)]
struct GbuildExecutor;

impl libcontainer::workload::Executor for GbuildExecutor {
    fn exec(&self, spec: &Spec) -> Result<(), libcontainer::workload::ExecutorError> {
        let _ = SigSet::empty().thread_set_mask();
        let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
        libcontainer::workload::default::get_executor().exec(spec)
    }

    fn validate(&self, spec: &Spec) -> Result<(), libcontainer::workload::ExecutorValidationError> {
        libcontainer::workload::default::get_executor().validate(spec)
    }
}

/// Kill and remove container `id` through the library (init, every process, cgroup, state).
fn destroy(state_root: &Path, id: &str) {
    if let Ok(mut c) = Container::load(state_root.join(id)) {
        if c.can_kill() {
            let _ = c.kill(Signal::SIGKILL, true);
        }
        if c.delete(true).is_ok() {
            return;
        }
        if let Some(pid) = c.pid() {
            let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
        }
        let _ = c.delete(true);
    }
    let _ = std::fs::remove_dir_all(state_root.join(id));
}

/// Removes what a run created, whatever way it ends.
struct Cleanup {
    state_root: PathBuf,
    id: String,
    bundle: PathBuf,
    watchdog: Option<Watchdog>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if self.state_root.join(&self.id).exists() {
            destroy(&self.state_root, &self.id);
        }
        let _ = std::fs::remove_dir_all(&self.bundle);
        if let Some(w) = self.watchdog.take() {
            w.finish();
        }
    }
}

/// A separate gbuild process that removes the container if this process dies without doing it
/// (SIGKILL, crash): it waits for end-of-file on its stdin.
struct Watchdog {
    child: Child,
}

impl Watchdog {
    fn spawn(state_root: &Path, id: &str, bundle: &Path) -> Result<Watchdog, RuntimeError> {
        let exe = crate::userns::self_exe();
        let mut cmd = std::process::Command::new(&exe);
        cmd.arg("__watchdog")
            .arg(std::process::id().to_string())
            .arg(state_root)
            .arg(id)
            .arg(bundle)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .process_group(0); // terminal signals (Ctrl-C) must not reach it
        let child = cmd.spawn().map_err(io_err("start watchdog", &exe))?;
        Ok(Watchdog { child })
    }

    fn tell(&mut self, line: &str) {
        if let Some(stdin) = self.child.stdin.as_mut() {
            let _ = stdin.write_all(line.as_bytes());
        }
    }

    fn finish(mut self) {
        self.tell("done\n");
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// The watchdog's side: wait until gbuild says `done` or exits (seen through a pidfd, since a
/// container process that has not exec'd yet still holds our pipe); in the second case kill the
/// container and remove its state. Runs as `gbuild __watchdog PARENT_PID STATE_ROOT ID BUNDLE`.
pub fn watchdog_main(parent: i32, state_root: &Path, id: &str, bundle: &Path) -> i32 {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let parent_fd = crate::sys::pidfd_open(parent).ok();
    let stdin = std::io::stdin();
    let mut input = Vec::new();
    let mut buf = [0u8; 256];
    let mut stdin_open = true;
    let said_done = |input: &[u8]| String::from_utf8_lossy(input).lines().any(|l| l == "done");
    loop {
        if said_done(&input) {
            return 0;
        }
        let mut fds = Vec::new();
        if stdin_open {
            fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLIN));
        }
        if let Some(p) = &parent_fd {
            fds.push(PollFd::new(p.as_fd(), PollFlags::POLLIN));
        }
        if fds.is_empty() {
            break;
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::Error::EINTR) => continue,
            Err(_) => break,
        }
        let ev: Vec<PollFlags> = fds
            .iter()
            .map(|f| f.revents().unwrap_or(PollFlags::empty()))
            .collect();
        drop(fds);
        let parent_ev = if stdin_open { ev.get(1) } else { ev.first() };
        if stdin_open && ev[0].intersects(PollFlags::POLLIN | PollFlags::POLLHUP) {
            match stdin.lock().read(&mut buf) {
                Ok(0) | Err(_) => stdin_open = false,
                Ok(n) => input.extend_from_slice(&buf[..n]),
            }
        }
        if parent_ev.is_some_and(|e| !e.is_empty()) {
            break; // gbuild is gone
        }
    }
    if said_done(&input) {
        return 0;
    }
    let pid = String::from_utf8_lossy(&input)
        .lines()
        .find_map(|l| l.strip_prefix("pid ").map(str::to_owned))
        .and_then(|p| p.trim().parse::<i32>().ok());
    if let Some(pid) = pid {
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
    } else {
        // Died while creating: the state appears when creation completes.
        let t = Instant::now();
        while !state_root.join(id).join("state.json").exists()
            && t.elapsed() < Duration::from_secs(2)
        {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    destroy(state_root, id);
    let _ = std::fs::remove_dir_all(bundle);
    0
}

const SUPERVISED: [Signal; 7] = [
    Signal::SIGCHLD,
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGWINCH,
];

/// Grace between a forwarded SIGTERM/SIGINT and SIGKILL: a container's init ignores signals it
/// has no handler for, so a bare `sleep` would never end otherwise.
const KILL_GRACE: Duration = Duration::from_millis(500);

/// The supervision loop: reap init, forward signals, proxy the terminal.
fn supervise(
    pid: Pid,
    mask: &SigSet,
    master: Option<OwnedFd>,
    mut output: Option<(OwnedFd, Sink<'_>)>,
) -> Result<i32, RuntimeError> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let sfd = SignalFd::with_flags(mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
    let stdin = std::io::stdin();
    let _raw = match &master {
        Some(m) => {
            copy_winsize(m.as_fd());
            Some(RawMode::enter(stdin.as_fd())?)
        }
        None => None,
    };
    let mut kill_at: Option<Instant> = None;
    let mut stdin_open = master.is_some();
    let mut buf = [0u8; 8192];
    loop {
        if let Some(code) = try_reap(pid)? {
            if let Some(m) = &master {
                drain(m.as_fd(), &mut buf, &mut |b| {
                    let mut out = std::io::stdout().lock();
                    let _ = out.write_all(b);
                    let _ = out.flush();
                });
            }
            if let Some((rx, f)) = output.as_mut() {
                drain(rx.as_fd(), &mut buf, *f);
            }
            return Ok(code);
        }
        let timeout = match kill_at {
            Some(t) => {
                let left = t.saturating_duration_since(Instant::now());
                PollTimeout::try_from(left.as_millis() as u64 + 1).unwrap_or(PollTimeout::MAX)
            }
            None => PollTimeout::NONE,
        };
        let sfd_fd = sfd.as_fd();
        let mut fds = vec![PollFd::new(sfd_fd, PollFlags::POLLIN)];
        let out_idx = output.as_ref().map(|(rx, _)| {
            fds.push(PollFd::new(rx.as_fd(), PollFlags::POLLIN));
            fds.len() - 1
        });
        let base = fds.len();
        if let Some(m) = &master {
            fds.push(PollFd::new(m.as_fd(), PollFlags::POLLIN));
            if stdin_open {
                fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLIN));
            }
        }
        match poll(&mut fds, timeout) {
            Ok(_) => {}
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
        let revents: Vec<PollFlags> = fds
            .iter()
            .map(|f| f.revents().unwrap_or(PollFlags::empty()))
            .collect();
        drop(fds);
        if let Some(t) = kill_at {
            if Instant::now() >= t {
                let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
                kill_at = None;
            }
        }
        if let (Some(i), Some((rx, f))) = (out_idx, output.as_mut()) {
            if revents[i].intersects(PollFlags::POLLIN | PollFlags::POLLHUP) {
                match nix::unistd::read(rx.as_raw_fd(), &mut buf) {
                    Ok(0) | Err(_) => {
                        // Everyone closed it; keep reaping without it.
                        output = None;
                    }
                    Ok(n) => f(&buf[..n]),
                }
            }
        }
        if revents[0].contains(PollFlags::POLLIN) {
            while let Ok(Some(info)) = sfd.read_signal() {
                let Ok(sig) = Signal::try_from(info.ssi_signo as i32) else {
                    continue;
                };
                match sig {
                    Signal::SIGCHLD => {}
                    Signal::SIGWINCH => {
                        if let Some(m) = &master {
                            copy_winsize(m.as_fd());
                        }
                    }
                    other => {
                        let _ = nix::sys::signal::kill(pid, other);
                        if matches!(other, Signal::SIGTERM | Signal::SIGINT | Signal::SIGHUP)
                            && kill_at.is_none()
                        {
                            kill_at = Some(Instant::now() + KILL_GRACE);
                        }
                    }
                }
            }
        }
        if let Some(m) = &master {
            if revents
                .get(base)
                .is_some_and(|r| r.intersects(PollFlags::POLLIN | PollFlags::POLLHUP))
            {
                match nix::unistd::read(m.as_raw_fd(), &mut buf) {
                    Ok(0) | Err(_) => {
                        // The terminal closed: the process is exiting; wait for it.
                        let status = waitpid(pid, None)?;
                        return Ok(code_of(status).unwrap_or(1));
                    }
                    Ok(n) => {
                        let mut out = std::io::stdout().lock();
                        let _ = out.write_all(&buf[..n]);
                        let _ = out.flush();
                    }
                }
            }
            if stdin_open
                && revents
                    .get(base + 1)
                    .is_some_and(|r| r.intersects(PollFlags::POLLIN | PollFlags::POLLHUP))
            {
                match nix::unistd::read(stdin.as_raw_fd(), &mut buf) {
                    Ok(0) | Err(_) => stdin_open = false,
                    Ok(n) => {
                        let _ = nix::unistd::write(m, &buf[..n]);
                    }
                }
            }
        }
    }
}

fn code_of(status: WaitStatus) -> Option<i32> {
    match status {
        WaitStatus::Exited(_, c) => Some(c),
        WaitStatus::Signaled(_, s, _) => Some(128 + s as i32),
        _ => None,
    }
}

fn try_reap(pid: Pid) -> Result<Option<i32>, RuntimeError> {
    match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
        Ok(s) => Ok(code_of(s)),
        Err(e) => Err(e.into()),
    }
}

/// Read what is left in `fd` without waiting (a daemon may keep the write end open).
fn drain(fd: BorrowedFd<'_>, buf: &mut [u8], sink: &mut dyn FnMut(&[u8])) {
    let _ = nix::fcntl::fcntl(
        fd.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    );
    while let Ok(n) = nix::unistd::read(fd.as_raw_fd(), buf) {
        if n == 0 {
            break;
        }
        sink(&buf[..n]);
    }
}

fn copy_winsize(master: BorrowedFd<'_>) {
    if let Ok(ws) = crate::sys::get_winsize(std::io::stdin().as_raw_fd()) {
        let _ = crate::sys::set_winsize(master.as_raw_fd(), &ws);
    }
}

/// Receive the pty master the container's init sends over the console socket (SCM_RIGHTS).
fn receive_pty_master(
    listener: &std::os::unix::net::UnixListener,
) -> Result<OwnedFd, RuntimeError> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let (stream, _) = listener.accept().map_err(|e| RuntimeError::Io {
        what: "accept console socket",
        path: PathBuf::new(),
        source: e,
    })?;
    let mut data = [0u8; 4096];
    let mut iov = [std::io::IoSliceMut::new(&mut data)];
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(
        stream.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::empty(),
    )?;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            if let Some(&fd) = fds.first() {
                // The kernel gave us a new descriptor that nothing else owns.
                return Ok(crate::sys::own_fd(fd));
            }
        }
    }
    Err(RuntimeError::Container {
        id: String::new(),
        message: "no terminal received on the console socket".into(),
    })
}

/// The host terminal in raw mode for the lifetime of the value.
struct RawMode {
    fd: std::os::fd::RawFd,
    saved: nix::sys::termios::Termios,
}

impl RawMode {
    fn enter(fd: BorrowedFd<'_>) -> Result<RawMode, RuntimeError> {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let saved = tcgetattr(fd)?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(fd, SetArg::TCSANOW, &raw)?;
        Ok(RawMode {
            fd: fd.as_raw_fd(),
            saved,
        })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        use nix::sys::termios::{tcsetattr, SetArg};
        let fd = crate::sys::borrow_fd(self.fd);
        let _ = tcsetattr(fd, SetArg::TCSANOW, &self.saved);
    }
}

/// The absolute cgroup path for container `id` (pitfalls 1-3: never empty, always absolute).
/// On cgroup v1/hybrid hosts it lies under the directory `setup-host` delegated to the user.
fn cgroups_path(id: &str) -> Result<String, RuntimeError> {
    let uid = nix::unistd::getuid().as_raw();
    if uid == 0 {
        return Ok(format!("/gbuild/{id}"));
    }
    let user = crate::setup_host::user_name(uid);
    let base = crate::setup_host::delegated_cgroup(&user);
    if crate::setup_host::cgroup_is_v1() {
        for (ctrl, mnt) in crate::setup_host::v1_controller_mounts() {
            let dir = mnt.join(base.trim_start_matches('/'));
            let ok = std::fs::metadata(&dir)
                .map(|m| {
                    use std::os::unix::fs::MetadataExt;
                    m.uid() == uid
                })
                .unwrap_or(false);
            if !ok {
                return Err(RuntimeError::NoCgroupDelegation {
                    ctrl,
                    path: dir,
                    uid,
                    user,
                });
            }
        }
    }
    Ok(format!("{base}/{id}"))
}

fn mapping_json(ranges: &[IdRange]) -> serde_json::Value {
    ranges
        .iter()
        .map(|r| json!({"containerID": r.inside, "hostID": r.outside, "size": r.count}))
        .collect()
}

/// Every capability, in every set: they are scoped to the container's user namespace and
/// Portage's own sandboxes need CAP_SYS_ADMIN and CAP_NET_ADMIN there.
fn all_caps() -> Vec<String> {
    let mut v: Vec<String> = caps::runtime::procfs_all_supported(None)
        .unwrap_or_else(|_| caps::all())
        .into_iter()
        .map(|c| c.to_string())
        .collect();
    v.sort();
    v
}

/// The OCI runtime config for `spec`, every field we depend on set explicitly (pitfall 9).
fn oci_config(
    spec: &ContainerSpec,
    bundle: &Path,
    cgroups_path: &str,
) -> Result<serde_json::Value, RuntimeError> {
    let rootless = !nix::unistd::geteuid().is_root();
    let mut mounts = Vec::new();
    let root_path = match &spec.rootfs {
        Rootfs::Dir(d) => {
            if !d.is_dir() {
                return Err(RuntimeError::NoRootfs(d.clone()));
            }
            d.canonicalize().map_err(io_err("resolve rootfs", d))?
        }
        Rootfs::Overlay {
            layers,
            upper,
            work,
        } => {
            for l in layers {
                if !l.is_dir() {
                    return Err(RuntimeError::NoRootfs(l.clone()));
                }
            }
            for d in [upper, work] {
                std::fs::create_dir_all(d).map_err(io_err("create", d))?;
            }
            // overlayfs takes the topmost lower dir first. libcontainer configures the mount
            // with fsconfig(), whose string values are limited to 256 bytes: on kernels that
            // have it, give one `lowerdir+` per layer; else a colon list of short symlinks.
            let mut opts = Vec::new();
            if kernel_at_least(6, 8) {
                for l in layers.iter().rev() {
                    opts.push(format!("lowerdir+={}", l.display()));
                }
            } else {
                let links = bundle.join("l");
                std::fs::create_dir_all(&links).map_err(io_err("create", &links))?;
                let mut lower = Vec::new();
                for (i, l) in layers.iter().rev().enumerate() {
                    let link = links.join(i.to_string());
                    std::os::unix::fs::symlink(l, &link).map_err(io_err("symlink", &link))?;
                    lower.push(escape_overlay(&link.display().to_string()));
                }
                opts.push(format!("lowerdir={}", lower.join(":")));
            }
            opts.push(format!("upperdir={}", upper.display()));
            opts.push(format!("workdir={}", work.display()));
            if rootless {
                opts.push("userxattr".into());
            }
            mounts.push(json!({
                "destination": "/", "type": "overlay", "source": "overlay", "options": opts
            }));
            bundle.join("rootfs")
        }
    };
    mounts.extend([
        json!({"destination": "/proc", "type": "proc", "source": "proc",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
               "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
               "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=1g"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
               "options": ["nosuid", "noexec", "nodev"]}),
        // The host network namespace is kept, so sysfs cannot be mounted anew: bind it.
        json!({"destination": "/sys", "type": "bind", "source": "/sys",
               "options": ["rbind", "nosuid", "noexec", "nodev", "ro"]}),
        json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "nodev", "mode=1777"]}),
    ]);
    // DNS for distfile downloads: the host's resolver, unless that would write into a plain
    // rootfs directory that has no such file.
    let rootfs_has_resolv = match &spec.rootfs {
        Rootfs::Dir(d) => d.join("etc/resolv.conf").exists(),
        Rootfs::Overlay { .. } => true,
    };
    if rootfs_has_resolv && Path::new("/etc/resolv.conf").exists() {
        mounts.push(json!({"destination": "/etc/resolv.conf", "type": "bind",
            "source": "/etc/resolv.conf", "options": ["rbind", "ro"]}));
    }
    for b in &spec.binds {
        if !b.src.exists() {
            return Err(RuntimeError::NoBindSource(b.src.clone()));
        }
        let src = b.src.canonicalize().map_err(io_err("resolve", &b.src))?;
        let mut opts = vec!["rbind"];
        if b.readonly {
            opts.push("ro");
        }
        mounts.push(json!({"destination": b.dst, "type": "bind", "source": src,
                           "options": opts}));
    }
    let caps = all_caps();
    let nofile = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .unwrap_or((1024, 4096));
    let mut namespaces = vec![
        json!({"type": "pid"}),
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
        json!({"type": "mount"}),
    ];
    let mut linux = json!({
        "namespaces": [],
        "cgroupsPath": cgroups_path,
        "maskedPaths": ["/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                        "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug",
                        "/proc/scsi", "/sys/firmware"],
        "readonlyPaths": ["/proc/asound", "/proc/bus", "/proc/fs", "/proc/irq",
                          "/proc/sys", "/proc/sysrq-trigger"],
    });
    if rootless {
        namespaces.push(json!({"type": "user"}));
        linux["uidMappings"] = mapping_json(&spec.map.uid);
        linux["gidMappings"] = mapping_json(&spec.map.gid);
    }
    linux["namespaces"] = serde_json::Value::Array(namespaces);
    Ok(json!({
        "ociVersion": "1.0.2",
        "root": {"path": root_path, "readonly": false},
        "hostname": spec.hostname,
        "mounts": mounts,
        "process": {
            "terminal": spec.tty,
            "user": {"uid": 0, "gid": 0},
            "args": spec.argv,
            "env": spec.env,
            "cwd": spec.cwd,
            "capabilities": {
                "bounding": caps, "effective": caps, "permitted": caps,
                "inheritable": [], "ambient": []
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": nofile.1, "soft": nofile.1}],
            "noNewPrivileges": false
        },
        "linux": linux,
    }))
}

/// Whether the running kernel is at least `major.minor`.
fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut it = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    let (a, b) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
    (a, b) >= (major, minor)
}

/// overlayfs option values cannot contain `,` or `:` unescaped.
fn escape_overlay(p: &str) -> String {
    p.replace('\\', "\\\\")
        .replace(':', "\\:")
        .replace(',', "\\,")
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

    #[test]
    fn overlay_escaping() {
        assert_eq!(escape_overlay("/a:b,c"), "/a\\:b\\,c");
    }
}
