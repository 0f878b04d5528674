//! The builder with the real emerge, end to end, against the fixture mirror
//! (`scripts/fixture/build.sh OUTDIR`, given as `GBUILD_FIXTURE=OUTDIR`): `run --rootless`
//! bootstraps through the USE cycle, builds the world set, and a host-like root installs every
//! package from the binaries; a failing package idles the loop until the configuration is fixed
//! and `resume`; a second loop is refused; a newer snapshot with a new slot of the language
//! package rebuilds the binding, a pass killed with SIGKILL compiles nothing twice on restart, and
//! the host installs both from binaries with no slot conflict. Hosts install over HTTP from
//! `gbuild serve` with `emerge --getbinpkgonly`.
//!
//! One scenario in one store, because bootstrapping is the expensive part.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::mirror;
use crate::util::{self, Scratch};

pub(crate) struct Fixture {
    pub(crate) dir: PathBuf,
    pub(crate) fingerprint: String,
}

pub(crate) fn fixture() -> Option<Fixture> {
    let dir = PathBuf::from(std::env::var_os("GBUILD_FIXTURE").filter(|v| !v.is_empty())?);
    let fingerprint = std::fs::read_to_string(dir.join("fingerprint.txt"))
        .ok()?
        .trim()
        .to_string();
    Some(Fixture { dir, fingerprint })
}

pub(crate) struct Env<'a> {
    pub(crate) store: PathBuf,
    pub(crate) url: String,
    pub(crate) fx: &'a Fixture,
}

impl Env<'_> {
    pub(crate) fn gbuild(&self) -> Command {
        util::gbuild(&self.store)
    }

    pub(crate) fn fetch(&self, date: Option<&str>) {
        let mut c = self.gbuild();
        c.args([
            "fetch",
            "--mirror",
            &self.url,
            "--trust",
            &self.fx.fingerprint,
        ])
        .arg("--keyring")
        .arg(self.fx.dir.join("keyring.asc"));
        if let Some(d) = date {
            c.args(["--snapshot-date", d]);
        }
        let out = util::output(&mut c);
        assert!(out.status.success(), "fetch: {}", util::stderr(&out));
    }

    pub(crate) fn status(&self) -> serde_json::Value {
        let out = util::output(self.gbuild().args(["status", "--json"]));
        assert!(out.status.success());
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn machine(&self) -> PathBuf {
        self.store.join("machines/default")
    }

    fn newest_log(&self) -> String {
        let out = util::output(self.gbuild().args(["logs"]));
        util::stdout(&out)
    }
}

/// Source builds and binary installs in emerge output.
pub(crate) fn counts(log: &str) -> (Vec<String>, Vec<String>) {
    let mut built = Vec::new();
    let mut binary = Vec::new();
    for l in log.lines() {
        if let Some(r) = l.strip_prefix(">>> Emerging binary (") {
            binary.push(r.split(") ").nth(1).unwrap_or("").to_string());
        } else if let Some(r) = l.strip_prefix(">>> Emerging (") {
            built.push(r.split(") ").nth(1).unwrap_or("").to_string());
        }
    }
    (built, binary)
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `gbuild serve` on an ephemeral port of 127.0.0.1, stopped when dropped.
pub(crate) struct Serve {
    child: std::process::Child,
    pub(crate) url: String,
}

impl Serve {
    pub(crate) fn start(env: &Env) -> Serve {
        use std::io::BufRead;
        let mut child = env
            .gbuild()
            .args(["serve", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("serve said {line:?}"))
            .to_string();
        Serve { child, url }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP GET of `url` (http://127.0.0.1:PORT/path): the body.
pub(crate) fn http_get(url: &str) -> String {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').unwrap();
    let mut c = std::net::TcpStream::connect(host).unwrap();
    write!(
        c,
        "GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = Vec::new();
    c.read_to_end(&mut buf).unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "GET {url}: {head}");
    body.to_string()
}

/// The stage3's layer in the store (hosts are made from it).
fn stage3_layer(env: &Env) -> PathBuf {
    let images = env.store.join("images/stage3");
    let img = std::fs::read_dir(&images)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let img: serde_json::Value = serde_json::from_slice(&std::fs::read(img).unwrap()).unwrap();
    env.store
        .join("layers")
        .join(img["layers"][0].as_str().unwrap())
}

/// A host-like root (the stage3 plus the machine's configuration) that installs the world set
/// with `emerge --getbinpkgonly` from `gbuild serve`, using the binrepos.conf it serves; returns
/// emerge's output.
fn host_install(env: &Env, s: &Scratch, name: &str, snapshot: &str, serve: &Serve) -> String {
    let store = &env.store;
    let stage3 = stage3_layer(env);
    let host = s.path().join(name);
    let binrepos = host.join("binrepos");
    std::fs::create_dir_all(&binrepos).unwrap();
    let conf = http_get(&format!("{}/default/binrepos.conf", serve.url));
    assert!(conf.contains(&format!("{}/default", serve.url)), "{conf}");
    std::fs::write(binrepos.join("gbuild.conf"), conf).unwrap();
    let out = util::output(
        env.gbuild()
            .args(["exec", "-T", "--layer"])
            .arg(&stage3)
            .arg("--upper")
            .arg(host.join("upper"))
            .arg("--bind")
            .arg(format!(
                "{}:/var/db/repos/gentoo:ro",
                store.join("repos").join(snapshot).display()
            ))
            .arg("--bind")
            .arg(format!(
                "{}:/run/cfg:ro",
                env.machine().join("config").display()
            ))
            .arg("--bind")
            .arg(format!("{}:/run/binrepos:ro", binrepos.display()))
            .args([
                "-e",
                "FEATURES=-userpriv -usersandbox -userfetch",
                "-e",
                "TERM=dumb",
                "--",
                "/bin/sh",
                "-c",
                "cp -a /run/cfg/etc /run/cfg/var / && mkdir -p /etc/portage/binrepos.conf && \
                 cp /run/binrepos/gbuild.conf /etc/portage/binrepos.conf/ && \
                 emerge --getbinpkgonly --update --deep --newuse --with-bdeps=y --color=n \
                 @world 2>&1",
            ]),
    );
    let text = util::stdout(&out);
    assert!(out.status.success(), "host install failed:\n{text}");
    text
}

#[test]
fn builder_scenario_with_real_emerge() {
    if !util::require(
        util::rootless_ready(),
        "unprivileged user namespaces with subordinate ranges and newuidmap",
    ) {
        return;
    }
    let Some(fx) = fixture() else {
        util::require(false, "GBUILD_FIXTURE=OUTDIR of scripts/fixture/build.sh");
        return;
    };
    let server = mirror::Server::start(&fx.dir.join("mirror"));
    let s = Scratch::new();
    let env = Env {
        store: s.path().join("store"),
        url: server.url.clone(),
        fx: &fx,
    };

    // 1. The whole chain on the older snapshot, with the fixture's world set and USE.
    util::import_fixture_machine(&env.store, "default");
    env.fetch(Some("20260101"));
    let out = util::output(env.gbuild().args([
        "run",
        "--rootless",
        "--once",
        "--mirror",
        &env.url,
        "--trust",
        &fx.fingerprint,
        "--snapshot-date",
        "20260101",
        "--keyring",
        fx.dir.join("keyring.asc").to_str().unwrap(),
    ]));
    assert!(out.status.success(), "run: {}", util::stderr(&out));
    // The cycle was broken without a manual step, with emerge's own hint.
    let boot_logs: String = std::fs::read_dir(env.machine().join("logs"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("bootstrap-"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .collect();
    assert!(boot_logs.contains("(Change USE: -shaping)"));
    assert!(boot_logs.contains("USE=-shaping emerge --oneshot"));
    let st = env.status();
    assert_eq!(st["last_pass"]["result"], "success");
    let index = std::fs::read_to_string(env.machine().join("binpkgs/Packages")).unwrap();
    for cpv in [
        "app-misc/hello-1.0",
        "app-misc/goodbye-1.0",
        "dev-plang/plang-binding-1.0",
        "dev-lang/plang-5.38.2",
        "media-libs/ftype-2.13",
        "media-libs/shaper-8.0",
        "dev-libs/libgreet-1.0",
    ] {
        assert!(
            index.contains(&format!("CPV: {cpv}\n")),
            "{cpv} in Packages"
        );
    }
    let published = std::fs::read_to_string(env.machine().join("published/Packages")).unwrap();
    assert_eq!(published, index);

    // A host-like root installs its world set from binaries only.
    let serve = Serve::start(&env);
    let host = host_install(&env, &s, "host1", "20260101", &serve);
    let (built, binary) = counts(&host);
    assert!(built.is_empty(), "host compiled {built:?}");
    assert!(binary.len() >= 7, "{binary:?}");

    // 2. A failing package: the loop idles as `failed`; fixing the config and resume finish it.
    let cfg = env.machine().join("config");
    let world = cfg.join("var/lib/portage/world");
    let mut w = std::fs::read_to_string(&world).unwrap();
    w.push_str("app-misc/failer\n");
    std::fs::write(&world, &w).unwrap();
    let mut lp = env
        .gbuild()
        .args(["build", "--interval", "1h"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("the failed state", Duration::from_secs(300), || {
        env.status()["state"] == "failed"
    });
    let st = env.status();
    assert_eq!(st["last_pass"]["failed_package"], "app-misc/failer-1.0");
    // A second loop on the same machine is refused while the first runs.
    let second = util::output(env.gbuild().args(["build", "--once"]));
    assert_eq!(second.status.code(), Some(1));
    assert!(
        util::stderr(&second).contains("locked by pid"),
        "{}",
        util::stderr(&second)
    );
    let pu = cfg.join("etc/portage/package.use");
    std::fs::create_dir_all(&pu).unwrap();
    std::fs::write(pu.join("failer"), "app-misc/failer fixed\n").unwrap();
    let out = util::output(env.gbuild().args(["resume"]));
    assert!(out.status.success());
    wait_until("a successful pass", Duration::from_secs(300), || {
        let st = env.status();
        st["state"] == "waiting" && st["last_pass"]["result"] == "success"
    });
    lp.kill().unwrap();
    lp.wait().unwrap();
    assert!(env.newest_log().contains("app-misc/failer-1.0"));

    // 3. A newer snapshot brings plang 5.40 (new slot): update, a pass killed mid-way, restart.
    env.fetch(Some("20260201"));
    let out = util::output(env.gbuild().args(["update"]));
    assert!(out.status.success(), "{}", util::stderr(&out));
    let mut lp = env
        .gbuild()
        .args(["build", "--once"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill it as soon as the new plang has a complete binpkg (in Portage's index); the
    // binding is next.
    wait_until("plang-5.40.0's binpkg", Duration::from_secs(300), || {
        std::fs::read_to_string(env.machine().join("binpkgs/Packages"))
            .map(|t| t.contains("CPV: dev-lang/plang-5.40.0\n"))
            .unwrap_or(false)
            || lp.try_wait().unwrap().is_some()
    });
    let _ = lp.kill();
    lp.wait().unwrap();
    let out = util::output(env.gbuild().args(["build", "--once"]));
    let log = env.newest_log();
    assert!(
        out.status.success(),
        "{}\n{}",
        util::stderr(&out),
        log.lines().rev().take(40).collect::<Vec<_>>().join("\n")
    );
    let (built, _) = counts(&log);
    assert!(
        !built.iter().any(|p| p.starts_with("dev-lang/plang-5.40.0")),
        "plang compiled twice: {built:?}"
    );
    let index = std::fs::read_to_string(env.machine().join("published/Packages")).unwrap();
    assert!(index.contains("CPV: dev-lang/plang-5.40.0\n"));
    // The binding was rebuilt against the new slot (two instances, or one newer).
    let host = host_install(&env, &s, "host2", "20260201", &serve);
    let (built, binary) = counts(&host);
    assert!(built.is_empty(), "host compiled {built:?}");
    assert!(
        binary
            .iter()
            .any(|p| p.starts_with("dev-lang/plang-5.40.0"))
            && binary
                .iter()
                .any(|p| p.starts_with("dev-plang/plang-binding-1.0")),
        "{binary:?}"
    );
    assert!(!host.contains("slot conflict"));

    // 4. The machine takes an imported host configuration (the builder's own, exported from a
    //    host-like root, plus a package whose binary needs Linux 9.0 while the host runs 6.1).
    let hostroot = s.path().join("hostroot");
    builder_config(&env, "default", &hostroot);
    let repo = hostroot.join("var/db/repos/gentoo");
    std::fs::create_dir_all(repo.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(env.store.join("repos/20260201"), &repo).unwrap();
    let world = hostroot.join("var/lib/portage/world");
    let mut w = std::fs::read_to_string(&world).unwrap();
    w.push_str("app-misc/abinote\n");
    std::fs::write(&world, w).unwrap();
    let b1 = export_root(&env, &hostroot, &s.path().join("laptop1.tar"));
    import(&env, "default", &b1);
    let out = util::output(env.gbuild().args(["build", "--once"]));
    assert!(
        out.status.success(),
        "{}\n{}",
        util::stderr(&out),
        env.newest_log()
    );
    let st = env.status();
    assert_eq!(st["drift"], serde_json::json!([]), "{st}");
    let warnings = st["abi_warnings"].as_array().unwrap();
    assert!(
        warnings.iter().any(|w| w["cpv"] == "app-misc/abinote-1.0"
            && w["requires"] == "9.0.0"
            && w["file"] == "/usr/bin/abinote"),
        "{st}"
    );
    // Built, but not published to the host.
    let index = std::fs::read_to_string(env.machine().join("binpkgs/Packages")).unwrap();
    assert!(index.contains("CPV: app-misc/abinote-1.0\n"));
    let published = std::fs::read_to_string(env.machine().join("published/Packages")).unwrap();
    assert!(!published.contains("app-misc/abinote"));
    assert!(published.contains("CPV: app-misc/hello-1.0\n"));

    // A change made in the builder behind the configuration's back is drift: the pass refuses.
    let out = util::output(env.gbuild().args([
        "shell",
        "--",
        "/bin/sh",
        "-c",
        "echo 'app-misc/hello -*' > /etc/portage/package.use/zz-local",
    ]));
    assert!(out.status.success());
    let out = util::output(env.gbuild().args(["build", "--once"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        util::stderr(&out).contains("zz-local"),
        "{}",
        util::stderr(&out)
    );
    let st = env.status();
    assert_eq!(st["state"], "failed");
    assert!(
        st["drift"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d.as_str().unwrap().contains("zz-local")),
        "{st}"
    );

    // 5. A new machine from a host that synced gentoo-20260201: Gentoo made that snapshot at
    //    00:45 UTC on 2 February and stamped it so, while the mirror also holds gentoo-20260202.
    //    `run` finds the host's own tree by its timestamp and everything names it 20260201.
    let laptop = s.path().join("laptop-root");
    let tree = laptop.join("var/db/repos/gentoo");
    std::fs::create_dir_all(&tree).unwrap();
    let cp = util::output(
        Command::new("cp")
            .arg("-a")
            .arg(hostroot.join("etc"))
            .arg(&laptop),
    );
    assert!(cp.status.success(), "{}", util::stderr(&cp));
    let snapshots = fx.dir.join("mirror/snapshots");
    untar_snapshot(&snapshots.join("gentoo-20260201.tar.xz"), &tree);
    let world = laptop.join("var/lib/portage/world");
    std::fs::create_dir_all(world.parent().unwrap()).unwrap();
    std::fs::write(&world, "app-misc/hello\n").unwrap();
    let bl = export_root(&env, &laptop, &s.path().join("laptop-on-20260201.tar"));
    import(&env, "laptop", &bl);
    let list = util::stdout(&util::output(env.gbuild().args(["machine", "list"])));
    let row = list.lines().find(|l| l.starts_with("laptop ")).unwrap();
    assert!(row.contains("20260201"), "{list}");
    let run_machine = |name: &str| {
        util::output(env.gbuild().args([
            "run",
            "--rootless",
            "--once",
            "--machine",
            name,
            "--mirror",
            &env.url,
            "--trust",
            &fx.fingerprint,
            "--keyring",
            fx.dir.join("keyring.asc").to_str().unwrap(),
        ]))
    };
    let out = run_machine("laptop");
    assert!(out.status.success(), "run laptop: {}", util::stderr(&out));
    assert!(
        util::stdout(&out).contains("gentoo-20260201.tar.xz"),
        "{}",
        util::stdout(&out)
    );
    let st = util::output(
        env.gbuild()
            .args(["status", "--machine", "laptop", "--json"]),
    );
    let st: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(st["last_pass"]["result"], "success", "{st}");
    assert_eq!(st["snapshot"], "20260201", "{st}");
    assert_eq!(st["drift"], serde_json::json!([]), "{st}");
    // `gbuild diff` of the builder (its configuration and the tree it builds on) against the
    // imported host: no snapshot line, nothing at all.
    let bview = s.path().join("laptop-builder");
    builder_config(&env, "laptop", &bview);
    std::fs::create_dir_all(bview.join("var/db/repos")).unwrap();
    std::os::unix::fs::symlink(
        env.store.join("repos/20260201"),
        bview.join("var/db/repos/gentoo"),
    )
    .unwrap();
    let bb = export_root(&env, &bview, &s.path().join("laptop-builder.tar"));
    let out = util::output(env.gbuild().args(["diff", "--machine", "laptop"]).arg(&bb));
    let text = util::stdout(&out);
    assert!(!text.contains("tree snapshot"), "{text}");
    assert_eq!(out.status.code(), Some(0), "{text}{}", util::stderr(&out));

    // What serve publishes names the snapshot by its file date, and the host's own
    // emerge-webrsync, given that date as the repos.conf comment says, rebuilds the host's tree
    // exactly (starting from the next day's tree).
    let info: serde_json::Value =
        serde_json::from_str(&http_get(&format!("{}/laptop/snapshot.info", serve.url))).unwrap();
    assert_eq!(info["date"], "20260201", "{info}");
    assert_eq!(info["file"], "gentoo-20260201.tar.xz", "{info}");
    let repos_conf = http_get(&format!("{}/laptop/repos.conf", serve.url));
    assert!(repos_conf.contains("snapshot 20260201."), "{repos_conf}");
    let revert = repos_conf
        .lines()
        .find(|l| l.contains("emerge-webrsync --revert="))
        .unwrap_or_else(|| panic!("no emerge-webrsync line in {repos_conf}"))
        .trim_start_matches('#')
        .trim()
        .to_string();
    assert!(revert.ends_with("--revert=20260201"), "{revert}");
    let log = webrsync_host(&env, &s, &snapshots, &tree, &repos_conf, &revert);
    assert!(log.contains("SAME TREE"), "{log}");

    // 6. A host whose tree is no snapshot (rsync'd at 02:15): a one-line error naming its
    //    timestamp, and nothing bootstrapped.
    let meta = tree.join("metadata");
    std::fs::write(
        meta.join("timestamp.chk"),
        "Mon, 02 Feb 2026 02:15:01 +0000\n",
    )
    .unwrap();
    std::fs::write(
        meta.join("timestamp.x"),
        "1769998501 Mon 02 Feb 2026 02:15:01 AM UTC\n",
    )
    .unwrap();
    std::fs::write(
        meta.join("timestamp.commit"),
        "5d0a6c1e0f3b2a4c6e8d0f1a3b5c7d9e1f2a4b6c 1769998501 2026-02-02T02:15:01+00:00\n",
    )
    .unwrap();
    let br = export_root(&env, &laptop, &s.path().join("laptop-rsync.tar"));
    import(&env, "rsynced", &br);
    let out = run_machine("rsynced");
    assert_eq!(out.status.code(), Some(1), "{}", util::stderr(&out));
    let err = util::stderr(&out);
    let last = err.lines().last().unwrap_or("");
    assert!(
        last.starts_with("gbuild: ")
            && last.contains("timestamp 2026-02-02 02:15:01 UTC")
            && last.contains("gentoo-20260201")
            && last.contains("gentoo-20260202"),
        "{err}"
    );
    assert_eq!(
        err.lines().filter(|l| l.contains("02:15:01")).count(),
        1,
        "{err}"
    );
    assert!(!err.contains("bootstrapping"), "{err}");
}

/// The builder's /etc/portage and world set of `machine`, unpacked under `dest` (what a host
/// with that configuration has).
fn builder_config(env: &Env, machine: &str, dest: &Path) {
    std::fs::create_dir_all(dest).unwrap();
    let tar = util::output(env.gbuild().args([
        "shell",
        "--machine",
        machine,
        "--",
        "tar",
        "-C",
        "/",
        "-cf",
        "-",
        // The builder's own package.env entry is build side, not configuration.
        "--exclude=etc/portage/package.env/zz-gbuild-builder",
        "etc/portage",
        "var/lib/portage/world",
    ]));
    assert!(tar.status.success(), "{}", util::stderr(&tar));
    tar::Archive::new(&tar.stdout[..]).unpack(dest).unwrap();
}

/// `gbuild host export` of a host-like root (host laptop, Linux 6.1) into `out`.
fn export_root(env: &Env, root: &Path, out: &Path) -> PathBuf {
    let o = util::output(
        env.gbuild()
            .args(["host", "export", "--root"])
            .arg(root)
            .args(["--kernel", "6.1.0-13-amd64", "--hostname", "laptop"])
            .args(["--no-emerge", "--no-cpu", "-o"])
            .arg(out),
    );
    assert!(o.status.success(), "{}", util::stderr(&o));
    out.to_path_buf()
}

/// `gbuild machine import --name NAME BUNDLE`.
fn import(env: &Env, name: &str, bundle: &Path) {
    let o = util::output(
        env.gbuild()
            .args(["machine", "import", "--name", name])
            .arg(bundle),
    );
    assert!(o.status.success(), "{}", util::stderr(&o));
}

/// Unpack a snapshot tarball as emerge-webrsync does (without its top directory).
fn untar_snapshot(tarball: &Path, dest: &Path) {
    let out = util::output(
        Command::new("tar")
            .arg("--strip-components=1")
            .arg("-xJf")
            .arg(tarball)
            .arg("-C")
            .arg(dest),
    );
    assert!(out.status.success(), "{}", util::stderr(&out));
}

/// A host-like root (the stage3) whose tree is `gentoo-20260202` runs Portage's own
/// emerge-webrsync with `cmd` (from serve's repos.conf, saved as the host's gentoo.conf), then
/// compares the tree it made with `host_tree` (`diff -r`, printing `SAME TREE` when equal).
/// The fixture's stage3 has no gpg, so the signature check is off (`--no-pgp-verify`): gbuild
/// verified Gentoo's signature at fetch time; emerge-webrsync still checks the `.md5sum` and
/// that the timestamp fits the date.
fn webrsync_host(
    env: &Env,
    s: &Scratch,
    snapshots: &Path,
    host_tree: &Path,
    repos_conf: &str,
    cmd: &str,
) -> String {
    let dir = s.path().join("webrsync-host");
    let conf = dir.join("conf");
    std::fs::create_dir_all(&conf).unwrap();
    std::fs::write(conf.join("gentoo.conf"), repos_conf).unwrap();
    let out = util::output(
        env.gbuild()
            .args(["exec", "-T", "--layer"])
            .arg(stage3_layer(env))
            .arg("--upper")
            .arg(dir.join("upper"))
            .arg("--bind")
            .arg(format!("{}:/run/snapshots:ro", snapshots.display()))
            .arg("--bind")
            .arg(format!("{}:/run/host-tree:ro", host_tree.display()))
            .arg("--bind")
            .arg(format!("{}:/run/conf:ro", conf.display()))
            .args(["-e", "TERM=dumb", "--", "/bin/sh", "-c"])
            .arg(format!(
                "set -e; tar --strip-components=1 -xJf /run/snapshots/gentoo-20260202.tar.xz \
                 -C /var/db/repos/gentoo && \
                 cp /run/conf/gentoo.conf /etc/portage/repos.conf/gentoo.conf && \
                 {cmd} --no-pgp-verify 2>&1 && \
                 diff -r /run/host-tree /var/db/repos/gentoo 2>&1 && echo 'SAME TREE'"
            )),
    );
    let text = util::stdout(&out);
    assert!(
        out.status.success(),
        "emerge-webrsync host failed:\n{text}{}",
        util::stderr(&out)
    );
    text
}
