//! Shared test helpers: locating the binary, temporary stores, environment checks.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The gbuild binary under test (`GBUILD_BIN` when the runner copied it somewhere readable).
pub fn bin() -> PathBuf {
    std::env::var_os("GBUILD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_gbuild")))
}

/// `gbuild` with a store under `store`.
pub fn gbuild(store: &Path) -> Command {
    let mut c = Command::new(bin());
    c.env("GBUILD_STORE", store).env("GBUILD_SELF_EXE", bin());
    c
}

/// Run and capture, printing both streams on failure to ease debugging.
pub fn output(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    if !out.status.success() {
        eprintln!(
            "{cmd:?} -> {:?}\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn must_work() -> bool {
    std::env::var("GBUILD_MUST_WORK").as_deref() == Ok("1")
}

/// Skip (return false with a notice) when `ok` is false, unless CI demands it works. libtest
/// counts a test that returns as passed, so a skip is also appended, with the test's name, to the
/// file `GBUILD_SKIP_LOG` names: the test command lists those in its summary.
pub fn require(ok: bool, what: &str) -> bool {
    if !ok {
        if must_work() {
            panic!("GBUILD_MUST_WORK=1 but {what}");
        }
        // libtest names each test's thread after the test.
        let test = std::thread::current().name().unwrap_or("?").to_string();
        eprintln!("skipped: {test}: {what}");
        if let Some(log) = std::env::var_os("GBUILD_SKIP_LOG") {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .unwrap_or_else(|e| panic!("open {}: {e}", Path::new(&log).display()));
            writeln!(f, "{test}: {what}")
                .unwrap_or_else(|e| panic!("write {}: {e}", Path::new(&log).display()));
        }
    }
    ok
}

/// Whether this process may create user namespaces with its subordinate ranges, unprivileged.
pub fn rootless_ready() -> bool {
    let uid = nix_uid();
    if uid == 0 {
        return false;
    }
    let ok = Command::new("unshare")
        .args(["-Ur", "true"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    ok && which("newuidmap") && has_subids()
}

pub fn nix_uid() -> u32 {
    // SAFETY-free: read from /proc to avoid a libc dependency in tests.
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

pub fn user_name() -> String {
    std::env::var("USER").unwrap_or_else(|_| {
        let o = Command::new("id").arg("-un").output().unwrap();
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    })
}

pub fn has_subids() -> bool {
    subid_base("/etc/subuid").is_some() && subid_base("/etc/subgid").is_some()
}

/// The first subordinate id of the current user in `file`.
pub fn subid_base(file: &str) -> Option<u32> {
    let user = user_name();
    let uid = nix_uid().to_string();
    std::fs::read_to_string(file).ok()?.lines().find_map(|l| {
        let mut it = l.split(':');
        let who = it.next()?;
        if who != user && who != uid {
            return None;
        }
        it.next()?.parse().ok()
    })
}

pub fn which(tool: &str) -> bool {
    which_path(tool).is_some()
}

/// Where PATH finds `tool`.
pub fn which_path(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// A scratch directory readable by the test user, removed (from a user namespace when needed) at
/// drop.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Scratch {
        let base = std::env::var_os("GBUILD_TEST_TMP")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        Scratch {
            dir: tempfile::Builder::new()
                .prefix("gbuild-test-")
                .tempdir_in(base)
                .unwrap(),
        }
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::env::var_os("GBUILD_TEST_KEEP").is_some() {
            eprintln!("kept {}", self.dir.path().display());
            return;
        }
        // Files owned by subordinate ids cannot be removed from outside the namespace.
        let _ = Command::new(bin())
            .args(["unshare", "--", "rm", "-rf"])
            .arg(self.dir.path())
            .env("GBUILD_SELF_EXE", bin())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// The fixture's machine configuration (`scripts/fixture/machine/`: the world set and USE the
/// builder tests build), made machine `machine`'s configuration the way a user adds their own:
/// `gbuild machine import --overlay DIR`, laid over the stage3's own configuration.
pub fn import_fixture_machine(store: &Path, machine: &str) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/fixture/machine");
    let out = output(
        gbuild(store)
            .args(["machine", "import", "--overlay"])
            .arg(&dir)
            .args(["--name", machine]),
    );
    assert!(
        out.status.success(),
        "machine import --overlay {}: {}",
        dir.display(),
        stderr(&out)
    );
}

/// `gbuild exec` of a host-like root, the way the tests' hosts run (a desktop installing from
/// the binhost, a host upgrading, emerge-webrsync): the stage3 layer `stage3` under the
/// writable `upper`, the binds `(source, destination, read-only)`, the environment `env`
/// (`NAME=VALUE`) and `TERM=dumb`, then `script` run by /bin/sh as that host's root.
pub fn host_root_exec(
    mut gbuild: Command,
    stage3: &Path,
    upper: &Path,
    binds: &[(&Path, &str, bool)],
    env: &[&str],
    script: &str,
) -> Output {
    gbuild
        .args(["exec", "-T", "--layer"])
        .arg(stage3)
        .arg("--upper")
        .arg(upper);
    for (src, dst, ro) in binds {
        gbuild.arg("--bind").arg(format!(
            "{}:{dst}{}",
            src.display(),
            if *ro { ":ro" } else { "" }
        ));
    }
    for e in env {
        gbuild.args(["-e", e]);
    }
    gbuild.args(["-e", "TERM=dumb", "--", "/bin/sh", "-c", script]);
    output(&mut gbuild)
}
