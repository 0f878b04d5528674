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

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::mirror;
use crate::util::{self, Scratch};

struct Fixture {
    dir: PathBuf,
    fingerprint: String,
}

fn fixture() -> Option<Fixture> {
    let dir = PathBuf::from(std::env::var_os("GBUILD_FIXTURE").filter(|v| !v.is_empty())?);
    let fingerprint = std::fs::read_to_string(dir.join("fingerprint.txt"))
        .ok()?
        .trim()
        .to_string();
    Some(Fixture { dir, fingerprint })
}

struct Env<'a> {
    store: PathBuf,
    url: String,
    fx: &'a Fixture,
}

impl Env<'_> {
    fn gbuild(&self) -> Command {
        util::gbuild(&self.store)
    }

    fn fetch(&self, date: Option<&str>) {
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

    fn status(&self) -> serde_json::Value {
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
fn counts(log: &str) -> (Vec<String>, Vec<String>) {
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
struct Serve {
    child: std::process::Child,
    url: String,
}

impl Serve {
    fn start(env: &Env) -> Serve {
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
fn http_get(url: &str) -> String {
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

/// A host-like root (the stage3 plus the machine's configuration) that installs the world set
/// with `emerge --getbinpkgonly` from `gbuild serve`, using the binrepos.conf it serves; returns
/// emerge's output.
fn host_install(env: &Env, s: &Scratch, name: &str, snapshot: &str, serve: &Serve) -> String {
    let store = &env.store;
    let images = store.join("images/stage3");
    let img = std::fs::read_dir(&images)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let img: serde_json::Value = serde_json::from_slice(&std::fs::read(img).unwrap()).unwrap();
    let stage3 = store
        .join("layers")
        .join(img["layers"][0].as_str().unwrap());
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

    // 1. The whole chain on the older snapshot.
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
    std::fs::create_dir_all(&hostroot).unwrap();
    let tar = util::output(env.gbuild().args([
        "shell",
        "--",
        "tar",
        "-C",
        "/",
        "-cf",
        "-",
        "etc/portage",
        "var/lib/portage/world",
    ]));
    assert!(tar.status.success());
    tar::Archive::new(&tar.stdout[..])
        .unpack(&hostroot)
        .unwrap();
    let repo = hostroot.join("var/db/repos/gentoo");
    std::fs::create_dir_all(repo.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(env.store.join("repos/20260201"), &repo).unwrap();
    let world = hostroot.join("var/lib/portage/world");
    let mut w = std::fs::read_to_string(&world).unwrap();
    w.push_str("app-misc/abinote\n");
    std::fs::write(&world, w).unwrap();
    let export = |name: &str| -> PathBuf {
        let b = s.path().join(name);
        let out = util::output(
            env.gbuild()
                .args(["host", "export", "--root"])
                .arg(&hostroot)
                .args([
                    "--kernel",
                    "6.1.0-13-amd64",
                    "--hostname",
                    "laptop",
                    "--no-emerge",
                ])
                .args(["--no-cpu", "-o"])
                .arg(&b),
        );
        assert!(out.status.success(), "{}", util::stderr(&out));
        b
    };
    let b1 = export("laptop1.tar");
    let out = util::output(
        env.gbuild()
            .args(["machine", "import", "--name", "default"])
            .arg(&b1),
    );
    assert!(out.status.success(), "{}", util::stderr(&out));
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
}
