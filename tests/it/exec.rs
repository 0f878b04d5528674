//! `gbuild exec`, `unshare` and `setup-host`: the rootless runtime everything else runs on.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{self, Scratch};

/// A minimal root filesystem from busybox-static, owned by the test user.
pub fn busybox_rootfs(dir: &Path) {
    let bb = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("busybox-static is needed for the runtime tests");
    for d in ["bin", "etc", "proc", "dev", "sys", "tmp", "root", "mnt"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::copy(bb, dir.join("bin/busybox")).unwrap();
    for applet in [
        "sh", "id", "ls", "cat", "touch", "chown", "echo", "sleep", "stat", "mkdir", "rm", "true",
        "false", "kill", "tty", "mount", "grep",
    ] {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet)).unwrap();
    }
    std::fs::write(dir.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(dir.join("etc/group"), "root:x:0:\n").unwrap();
}

/// A scratch directory with a busybox root filesystem at `root/` in it.
fn busybox_scratch() -> (Scratch, std::path::PathBuf) {
    let s = Scratch::new();
    let root = s.path().join("root");
    busybox_rootfs(&root);
    (s, root)
}

fn ready() -> bool {
    util::require(
        util::rootless_ready(),
        "unprivileged user namespaces with subordinate ranges and newuidmap",
    )
}

fn exec(s: &Scratch, rootfs: &Path) -> Command {
    let mut c = util::gbuild(&s.path().join("store"));
    c.arg("exec").arg("--rootfs").arg(rootfs).arg("-T");
    c
}

#[test]
fn root_inside_and_chown_maps_to_subordinate_ids() {
    if !ready() {
        return;
    }
    let (s, root) = busybox_scratch();
    let out = util::output(exec(&s, &root).args([
        "--",
        "/bin/sh",
        "-c",
        "id -u; touch /f; chown 250:250 /f",
    ]));
    assert!(out.status.success());
    assert_eq!(util::stdout(&out).trim(), "0");
    let md = std::fs::metadata(root.join("f")).unwrap();
    // Mapping: 0 -> caller, 1..65536 -> subuid base.., so 250 inside is base + 249 outside.
    let ubase = util::subid_base("/etc/subuid").unwrap();
    let gbase = util::subid_base("/etc/subgid").unwrap();
    assert_eq!(md.uid(), ubase + 249);
    assert_eq!(md.gid(), gbase + 249);
}

#[test]
fn the_container_stays_in_the_callers_cgroups() {
    if !ready() {
        return;
    }
    // No cgroup of its own in any hierarchy: the processes inside are where gbuild is (a
    // service's unit, a login's session), and nothing is left to remove afterwards.
    let (s, root) = busybox_scratch();
    let out = util::output(exec(&s, &root).args(["--", "/bin/cat", "/proc/self/cgroup"]));
    assert!(out.status.success(), "{}", util::stderr(&out));
    let ours = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    assert_eq!(util::stdout(&out), ours);
}

#[test]
fn readonly_bind_and_overlay_upper() {
    if !ready() {
        return;
    }
    let (s, root) = busybox_scratch();
    let ro = s.path().join("ro");
    let rw = s.path().join("rw");
    std::fs::create_dir_all(&ro).unwrap();
    std::fs::create_dir_all(&rw).unwrap();
    std::fs::write(ro.join("keep"), "orig").unwrap();
    let upper = s.path().join("upper");
    let before = tree_listing(&root);
    let out = util::output(
        exec(&s, &root)
            .arg("--upper")
            .arg(&upper)
            .arg("--bind")
            .arg(format!("{}:/mnt/ro:ro", ro.display()))
            .arg("--bind")
            .arg(format!("{}:/mnt/rw", rw.display()))
            .args([
                "--",
                "/bin/sh",
                "-c",
                "if echo x > /mnt/ro/keep; then exit 10; fi; \
                 if touch /mnt/ro/new; then exit 11; fi; \
                 echo w > /mnt/rw/out && echo new > /etc/added && rm /bin/true && echo done",
            ]),
    );
    assert!(out.status.success(), "{}", util::stderr(&out));
    assert_eq!(util::stdout(&out).trim(), "done");
    assert_eq!(std::fs::read_to_string(ro.join("keep")).unwrap(), "orig");
    assert!(!ro.join("new").exists());
    assert_eq!(std::fs::read_to_string(rw.join("out")).unwrap(), "w\n");
    // The write and the deletion landed in the upper dir; the layer is untouched.
    assert_eq!(
        std::fs::read_to_string(upper.join("etc/added")).unwrap(),
        "new\n"
    );
    let wh = std::fs::symlink_metadata(upper.join("bin/true")).unwrap();
    assert!(
        std::os::unix::fs::FileTypeExt::is_char_device(&wh.file_type()),
        "deletion recorded as an overlay whiteout"
    );
    assert_eq!(tree_listing(&root), before);
    assert!(root.join("bin/true").exists());
}

fn tree_listing(dir: &Path) -> Vec<(String, u64, u32)> {
    let mut v = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let md = e.path().symlink_metadata().unwrap();
            v.push((e.path().display().to_string(), md.len(), md.mode()));
            if md.is_dir() {
                stack.push(e.path());
            }
        }
    }
    v.sort();
    v
}

#[test]
fn exit_codes_and_stdin_pass_through() {
    if !ready() {
        return;
    }
    let (s, root) = busybox_scratch();
    // A shell that signals itself: pid 1 would ignore a signal without a handler; the command
    // is not pid 1, so it dies of it and its status is 128+15.
    for (cmd, code) in [("exit 0", 0), ("exit 3", 3), ("kill -TERM $$; exit 0", 143)] {
        let out = util::output(exec(&s, &root).args(["--", "/bin/sh", "-c", cmd]));
        assert_eq!(out.status.code(), Some(code), "{cmd}");
    }
    // stdin reaches the command.
    let mut child = exec(&s, &root)
        .args(["--", "/bin/cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"through stdin\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "through stdin\n");
    // A command killed by SIGKILL: 128+9.
    let marker = "424242";
    let mut child = exec(&s, &root)
        .args(["--", "/bin/sleep", marker])
        .spawn()
        .unwrap();
    let pid = wait_for_process(&format!("/bin/sleep\0{marker}"), Duration::from_secs(10))
        .expect("the container's sleep shows up");
    Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(137));
}

/// The pid of a process of ours whose command line contains `needle` (NUL-separated args).
fn wait_for_process(needle: &str, limit: Duration) -> Option<u32> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(p) = find_process(needle) {
            return Some(p);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

fn find_process(needle: &str) -> Option<u32> {
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            if String::from_utf8_lossy(&cmd).starts_with(needle) {
                return Some(pid);
            }
        }
    }
    None
}

#[test]
fn terminal_is_allocated_when_stdin_is_one() {
    if !ready() || !util::require(util::which("script"), "script(1) from util-linux") {
        return;
    }
    let (s, root) = busybox_scratch();
    // script(1) gives gbuild a terminal; the command inside must get one of its own.
    let inner = format!(
        "GBUILD_STORE={} GBUILD_SELF_EXE={} {} exec --rootfs {} -- /bin/sh -c 'tty; exit 5'",
        s.path().join("store").display(),
        util::bin().display(),
        util::bin().display(),
        root.display()
    );
    let out = Command::new("script")
        .args(["-qec", &inner, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = util::stdout(&out);
    assert!(text.contains("/dev/pts/"), "{text}");
    assert_eq!(out.status.code(), Some(5), "{text}");
}

/// `gbuild exec -- /bin/sleep MARKER` with its own state dir: (scratch, state dir, gbuild, the
/// pid of the container's sleep).
fn sleeping_container(marker: &str) -> (Scratch, std::path::PathBuf, std::process::Child, u32) {
    let (s, root) = busybox_scratch();
    let state = s.path().join("run");
    std::fs::create_dir_all(&state).unwrap();
    let child = exec(&s, &root)
        .env("XDG_RUNTIME_DIR", &state)
        .args(["--", "/bin/sleep", marker])
        .spawn()
        .unwrap();
    let inner = wait_for_process(&format!("/bin/sleep\0{marker}"), Duration::from_secs(10))
        .expect("container process");
    (s, state, child, inner)
}

#[test]
fn sigterm_ends_container_and_leaves_nothing() {
    if !ready() {
        return;
    }
    let (s, state, mut child, inner) = sleeping_container("434343");
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    // `sleep` has no SIGTERM handler: the forwarded signal itself ends it (not a SIGKILL after
    // a grace period), and gbuild exits with its status.
    assert_eq!(status.code(), Some(143));
    assert!(!Path::new(&format!("/proc/{inner}")).exists() || is_zombie(inner));
    // No state dir of the container, no bundle, no mount of ours left.
    let gb = state.join("gbuild");
    let left: Vec<_> = std::fs::read_dir(&gb)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n != "bundles")
        .collect();
    assert!(left.is_empty(), "state left: {left:?}");
    assert_eq!(std::fs::read_dir(gb.join("bundles")).unwrap().count(), 0);
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&s.path().display().to_string()));
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.contains(") Z "))
        .unwrap_or(true)
}

#[test]
fn sigkill_of_gbuild_takes_the_container_down() {
    if !ready() {
        return;
    }
    let (_scratch, state, mut child, inner) = sleeping_container("454545");
    child.kill().unwrap();
    child.wait().unwrap();
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(5) {
        if !Path::new(&format!("/proc/{inner}")).exists() || is_zombie(inner) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !Path::new(&format!("/proc/{inner}")).exists() || is_zombie(inner),
        "container outlived gbuild"
    );
    let t = Instant::now();
    let gb = state.join("gbuild");
    loop {
        let left = std::fs::read_dir(&gb)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name() != "bundles")
            .count();
        if left == 0 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "state dir left behind"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn command_is_pid_2_with_default_signal_actions() {
    if !ready() {
        return;
    }
    let (s, root) = busybox_scratch();
    let out = util::output(exec(&s, &root).args(["--", "/bin/sh", "-c", "echo $$"]));
    assert!(out.status.success(), "{}", util::stderr(&out));
    assert_eq!(util::stdout(&out).trim(), "2");
    // Nothing ignored or blocked is inherited from gbuild (Rust ignores SIGPIPE): the command
    // itself (no shell in between) reads its own status.
    let out = util::output(exec(&s, &root).args([
        "--",
        "/bin/grep",
        "-E",
        "^(SigIgn|SigBlk)",
        "/proc/self/status",
    ]));
    assert!(out.status.success(), "{}", util::stderr(&out));
    let text = util::stdout(&out);
    assert_eq!(text.lines().count(), 2, "{text}");
    for l in text.lines() {
        // The standard signals 1-31 (the C library reserves two real-time ones for itself).
        let mask = u64::from_str_radix(l.split_whitespace().last().unwrap(), 16).unwrap();
        assert_eq!(mask & 0x7fff_ffff, 0, "{text}");
    }
}

/// (pid, state, ppid) of every process on the host.
fn process_table() -> Vec<(u32, char, u32)> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let Some((head, tail)) = stat.rsplit_once(") ") else {
            continue;
        };
        let pid = head.split(' ').next().and_then(|p| p.parse().ok());
        let mut f = tail.split(' ');
        let state = f.next().and_then(|s| s.chars().next());
        let ppid = f.next().and_then(|p| p.parse().ok());
        if let (Some(pid), Some(state), Some(ppid)) = (pid, state, ppid) {
            v.push((pid, state, ppid));
        }
    }
    v
}

#[test]
fn orphans_are_reaped_while_the_command_runs() {
    if !ready() {
        return;
    }
    let (s, root) = busybox_scratch();
    // Each inner shell exits at once and leaves its `sleep 0` to the namespace's pid 1; then the
    // command becomes a `sleep` that reaps nothing. Without an init the orphans would stay
    // zombies of that sleep for as long as it runs.
    let marker = "464646";
    let mut child = exec(&s, &root)
        .args([
            "--",
            "/bin/sh",
            "-c",
            &format!("for i in 1 2 3 4 5; do sh -c 'sleep 0 &'; done; exec sleep {marker}"),
        ])
        .spawn()
        .unwrap();
    let cmd = wait_for_process(&format!("sleep\0{marker}"), Duration::from_secs(10))
        .expect("the container's sleep shows up");
    let table = process_table();
    let init = table
        .iter()
        .find(|(p, _, _)| *p == cmd)
        .map(|(_, _, pp)| *pp)
        .unwrap();
    let zombies = || -> Vec<u32> {
        process_table()
            .into_iter()
            .filter(|(_, st, pp)| *st == 'Z' && (*pp == cmd || *pp == init))
            .map(|(p, _, _)| p)
            .collect()
    };
    let t = Instant::now();
    let mut left = zombies();
    while !left.is_empty() && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
        left = zombies();
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(left.is_empty(), "zombies left in the container: {left:?}");
}

#[test]
fn a_failed_start_leaves_nothing_in_the_state_root() {
    if !ready() {
        return;
    }
    let (s, root) = busybox_scratch();
    let state = s.path().join("run");
    std::fs::create_dir_all(&state).unwrap();
    let missing = s.path().join("missing");
    let upper = s.path().join("upper");
    let attempts: Vec<(Vec<std::ffi::OsString>, Option<&Path>)> = vec![
        // No rootfs.
        (
            vec![
                "--rootfs".into(),
                missing.clone().into(),
                "--".into(),
                "/bin/true".into(),
            ],
            Some(&missing),
        ),
        // An overlay whose bind source is missing.
        (
            vec![
                "--rootfs".into(),
                root.clone().into(),
                "--upper".into(),
                upper.clone().into(),
                "--bind".into(),
                format!("{}:/mnt", missing.display()).into(),
                "--".into(),
                "/bin/true".into(),
            ],
            Some(&missing),
        ),
        // A command the rootfs does not have: fails inside libcontainer, after the bundle and
        // the container's state exist.
        (
            vec![
                "--rootfs".into(),
                root.clone().into(),
                "--upper".into(),
                upper.clone().into(),
                "--".into(),
                "/bin/no-such-command".into(),
            ],
            None,
        ),
    ];
    for (args, named) in attempts {
        let out = util::gbuild(&s.path().join("store"))
            .env("XDG_RUNTIME_DIR", &state)
            .args(["exec", "-T"])
            .args(&args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        if let Some(p) = named {
            assert!(
                util::stderr(&out).contains(&p.display().to_string()),
                "{}",
                util::stderr(&out)
            );
        }
        let gb = state.join("gbuild");
        let left: Vec<_> = std::fs::read_dir(&gb)
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(
            left.iter().all(|n| n == "bundles" || n == "scratch"),
            "{args:?}: state left: {left:?}"
        );
        let bundles: Vec<_> = std::fs::read_dir(gb.join("bundles"))
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(bundles.is_empty(), "{args:?}: bundles left: {bundles:?}");
    }
    // Neither left a mount.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&s.path().display().to_string()));
}

#[test]
fn missing_newuidmap_is_one_line_naming_the_fix() {
    if !util::has_subids() || util::nix_uid() == 0 {
        util::require(!util::must_work(), "a user with subordinate ranges");
        return;
    }
    let (s, root) = busybox_scratch();
    let out = exec(&s, &root)
        .env("PATH", s.path())
        .args(["--", "/bin/true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = util::stderr(&out);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("newuidmap") && err.contains("apt install uidmap"),
        "{err}"
    );
}

#[test]
fn bad_rootfs_and_bind_are_named() {
    let s = Scratch::new();
    let missing = s.path().join("nope");
    let out = util::gbuild(&s.path().join("store"))
        .args(["exec", "--idmap", "single", "--rootfs"])
        .arg(&missing)
        .args(["--", "/bin/true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(util::stderr(&out).contains(&missing.display().to_string()));
    let out = util::gbuild(&s.path().join("store"))
        .args(["exec", "--rootfs", "/", "--bind", "relative", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "usage error");
    assert!(util::stderr(&out).contains("relative"));
}

/// Tests that must run as root (setup-host, users without ranges); `scripts/test.sh` runs them
/// in a separate root pass.
mod as_root {
    use super::*;

    /// A user made for one test, removed with its subordinate ranges at drop. Tests that make
    /// one change /etc/passwd, /etc/subuid and /etc/subgid, which other such tests read and
    /// compare: one at a time.
    struct TempUser {
        name: String,
        _one_at_a_time: std::sync::MutexGuard<'static, ()>,
    }

    static SYSTEM_USERS: std::sync::Mutex<()> = std::sync::Mutex::new(());

    impl TempUser {
        fn new(name: &str) -> TempUser {
            // A test that failed while holding it leaves nothing to protect.
            let guard = SYSTEM_USERS
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let _ = Command::new("userdel").arg(name).status();
            let ok = Command::new("useradd")
                .args(["-M", "-K", "SUB_UID_COUNT=0", "-K", "SUB_GID_COUNT=0", name])
                .status()
                .unwrap()
                .success();
            assert!(ok, "useradd {name}");
            TempUser {
                name: name.to_string(),
                _one_at_a_time: guard,
            }
        }
    }

    impl Drop for TempUser {
        fn drop(&mut self) {
            let _ = Command::new("userdel").arg(&self.name).status();
            for f in ["/etc/subuid", "/etc/subgid"] {
                if let Ok(t) = std::fs::read_to_string(f) {
                    let kept: String = t
                        .lines()
                        .filter(|l| !l.starts_with(&format!("{}:", self.name)))
                        .map(|l| format!("{l}\n"))
                        .collect();
                    let _ = std::fs::write(f, kept);
                }
            }
        }
    }

    /// `gbuild exec --idmap full` of `command` as `user`, on a busybox rootfs of its own, with
    /// `path` as PATH when given.
    fn exec_as(user: &TempUser, command: &[&str], path: Option<&Path>) -> std::process::Output {
        let (s, root) = super::busybox_scratch();
        Command::new("chmod")
            .args(["-R", "a+rX"])
            .arg(s.path())
            .status()
            .unwrap();
        let mut c = Command::new("runuser");
        c.args(["-u", &user.name, "--"]);
        if let Some(p) = path {
            // Set for gbuild alone (runuser itself is looked up in the caller's PATH).
            c.arg("env").arg(format!("PATH={}", p.display()));
        }
        // Output through files, not pipes: a process left behind holding them cannot make the
        // test wait forever.
        let (out, err) = (s.path().join("stdout"), s.path().join("stderr"));
        let status = c
            .arg(util::bin())
            .args(["exec", "--idmap", "full", "--rootfs"])
            .arg(&root)
            .arg("--")
            .args(command)
            .env("GBUILD_STORE", s.path().join("store"))
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .status()
            .unwrap();
        std::process::Output {
            status,
            stdout: std::fs::read(&out).unwrap(),
            stderr: std::fs::read(&err).unwrap(),
        }
    }

    /// `gbuild setup-host --user USER`, which must succeed.
    fn setup_host(user: &TempUser) -> std::process::Output {
        let s = Scratch::new();
        let out = util::output(util::gbuild(&s.path().join("store")).args([
            "setup-host",
            "--user",
            &user.name,
        ]));
        assert!(out.status.success(), "{}", util::stderr(&out));
        out
    }

    /// Every mounted cgroup hierarchy (v1 controllers and the v2 one).
    fn cgroup_mounts() -> Vec<(String, std::path::PathBuf)> {
        let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        text.lines()
            .filter_map(|l| {
                let (left, right) = l.split_once(" - ")?;
                (right.starts_with("cgroup ") || right.starts_with("cgroup2 ")).then(|| {
                    let mnt = left.split_whitespace().nth(4).unwrap();
                    (mnt.to_string(), std::path::PathBuf::from(mnt))
                })
            })
            .collect()
    }

    fn is_root() -> bool {
        util::require(
            util::nix_uid() == 0,
            "needs root (scripts/test.sh runs these in its root pass)",
        )
    }

    #[test]
    fn a_refused_id_mapping_names_the_helper_and_what_it_said() {
        if !is_root() {
            return;
        }
        // newuidmap and newgidmap run at the same time; the kernel takes one uid map per
        // namespace, so a set-uid "newgidmap" that is really newuidmap makes one of the two
        // fail for real. The error names the helper and carries its own message, instead of a
        // later failure inside the container.
        let user = TempUser::new("gbuild-map-t");
        setup_host(&user);
        let s = Scratch::new();
        let bin = s.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let real = util::which_path("newuidmap").expect("newuidmap");
        std::os::unix::fs::symlink(&real, bin.join("newuidmap")).unwrap();
        let fake = bin.join("newgidmap");
        std::fs::copy(&real, &fake).unwrap();
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o4755))
            .unwrap();
        Command::new("chmod")
            .args(["-R", "a+rX"])
            .arg(s.path())
            .status()
            .unwrap();
        let path = std::env::join_paths([bin.clone(), "/usr/bin".into(), "/bin".into()]).unwrap();
        let run = exec_as(&user, &["/bin/true"], Some(Path::new(&path)));
        assert!(!run.status.success());
        let err = util::stderr(&run);
        // newuidmap says "write to uid_map failed" under either name.
        assert!(
            err.contains(&bin.display().to_string()) && err.contains("uid_map"),
            "{err}"
        );
        // Nothing of the container is left waiting (the intermediate process once was; the
        // watchdog ends on its own once gbuild is gone).
        let start = Instant::now();
        let left = loop {
            let left = Command::new("pgrep")
                .args(["-a", "-u", &user.name])
                .output()
                .unwrap();
            if left.stdout.is_empty() || start.elapsed() > Duration::from_secs(5) {
                break util::stdout(&left);
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(left, "", "processes left");
    }

    #[test]
    fn setup_host_is_idempotent() {
        if !is_root() {
            return;
        }
        let user = TempUser::new("gbuild-setup-t");
        let first = setup_host(&user);
        let said = util::stdout(&first);
        assert!(
            said.contains("/etc/subuid") && said.contains("/etc/subgid"),
            "{said}"
        );
        let subuid = std::fs::read("/etc/subuid").unwrap();
        let subgid = std::fs::read("/etc/subgid").unwrap();
        let second = setup_host(&user);
        assert_eq!(util::stdout(&second), "", "second run changes nothing");
        assert!(util::stderr(&second).contains("nothing to change"));
        assert_eq!(std::fs::read("/etc/subuid").unwrap(), subuid);
        assert_eq!(std::fs::read("/etc/subgid").unwrap(), subgid);

        // The ranges are all a user needs: containers make no cgroup, so none is delegated and
        // none is created under any controller.
        let run = exec_as(&user, &["/bin/sh", "-c", "cat /proc/self/uid_map"], None);
        assert!(run.status.success(), "{}", util::stderr(&run));
        assert!(
            util::stdout(&run).lines().count() >= 2,
            "a full mapping: {}",
            util::stdout(&run)
        );
        let mounts = cgroup_mounts();
        for (_, mnt) in &mounts {
            let dir = mnt.join("gbuild").join(&user.name);
            assert!(!dir.exists(), "no cgroup {}", dir.display());
        }
    }

    #[test]
    fn missing_ranges_is_one_line_naming_the_fix() {
        if !is_root() {
            return;
        }
        let user = TempUser::new("gbuild-norange-t");
        let out = exec_as(&user, &["/bin/true"], None);
        assert_eq!(out.status.code(), Some(1));
        let err = util::stderr(&out);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(
            err.contains(&format!("gbuild setup-host --user {}", user.name)),
            "{err}"
        );
    }
}
