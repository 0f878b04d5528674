//! Real Gentoo hosts with the real emerge, against the fixture mirror (`GBUILD_FIXTURE`):
//!
//! - the `default` machine is the stage3's own configuration: it builds exactly the world file
//!   inside the stage3 tarball, nothing of the tests';
//! - a host configured like a real desktop (`scripts/fixture/realhost/`: `--ask` and
//!   `--getbinpkg` in EMERGE_DEFAULT_OPTS, signing and binhost FEATURES, BINPKG_FORMAT=xpak, its
//!   own MAKEOPTS, a package.env file with a host-only PORTAGE_TMPDIR for one package and
//!   MAKEOPTS=-j1 for another, its profile in a local overlay without sync source, a world
//!   package from that overlay and one from a git-synced overlay) goes through export, import
//!   (on standard input, as a host's timer sends it), `run --once`, and installs its whole world
//!   from the binaries with nothing compiled;
//! - `gbuild host upgrade` on a host of that machine (gbuild itself run as the host's root in a
//!   container of the stage3): with its configuration changed and a world package the builder
//!   never got, it refuses with the drift lines and the request that builds the package; with
//!   `--force` the binary-only check refuses the skipped package, nothing installed; `request
//!   --wait` wakes the loop, which moves to the mirror's newest snapshot and publishes the package;
//!   then the upgrade brings the host's tree to that snapshot (verified by the SHA512 the builder
//!   signed), writes the binhost configuration and installs everything from binaries, and a
//!   second `--pretend` finds nothing to do with the tree untouched;
//! - a host following a tag (`/desk@stable`) keeps that generation's record, index and tree
//!   after the builder publishes a newer one.
//!
//! One store for both, so the stage3 is unpacked once.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::builder::{self, Env, Serve};
use crate::mirror;
use crate::util::{self, Scratch};

fn fixture_src(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts/fixture")
        .join(rel)
}

fn sh(cmd: &mut Command) -> String {
    let out = util::output(cmd);
    assert!(out.status.success(), "{cmd:?}: {}", util::stderr(&out));
    util::stdout(&out)
}

fn run_once(env: &Env, machine: &str, date: &str) {
    let out = util::output(env.gbuild().args([
        "run",
        "--rootless",
        "--once",
        "--machine",
        machine,
        "--mirror",
        &env.url,
        "--trust",
        &env.fx.fingerprint,
        "--snapshot-date",
        date,
        "--keyring",
        env.fx.dir.join("keyring.asc").to_str().unwrap(),
    ]));
    let log = util::stdout(&util::output(env.gbuild().args([
        "logs",
        "--machine",
        machine,
    ])));
    assert!(
        out.status.success(),
        "run --machine {machine}: {}\n{}",
        util::stderr(&out),
        log.lines().rev().take(60).collect::<Vec<_>>().join("\n")
    );
}

/// CPV -> the block of Portage's Packages index that describes it.
fn index_entries(index: &str) -> Vec<(String, String)> {
    index
        .split("\n\n")
        .filter_map(|b| {
            let cpv = b.lines().find_map(|l| l.strip_prefix("CPV: "))?;
            Some((cpv.to_string(), b.to_string()))
        })
        .collect()
}

/// What emerge printed while building `cpv` in the bootstrap of `machine` (from its
/// `>>> Emerging` line to the next one).
fn build_output(env: &Env, machine: &str, cpv: &str) -> String {
    let logs = env.store.join("machines").join(machine).join("logs");
    let text: String = std::fs::read_dir(&logs)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("bootstrap-"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .collect();
    let mut out = String::new();
    let mut inside = false;
    for l in text.lines() {
        if l.starts_with(">>> Emerging (") {
            inside = l.contains(&format!(" {cpv}::"));
        }
        if inside {
            out.push_str(l);
            out.push('\n');
        }
    }
    assert!(!out.is_empty(), "no build of {cpv} in {}", logs.display());
    out
}

/// A desktop-like host root: the real-host configuration, its two overlays (one a git checkout
/// of `git_src`), and the ebuild tree of `snapshot` at /var/db/repos/gentoo.
fn host_root(s: &Scratch, store: &Path, snapshot: &str) -> (PathBuf, String) {
    let root = s.path().join("desk");
    let cp = |from: &Path, to: &Path| {
        std::fs::create_dir_all(to).unwrap();
        sh(Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", from.display()))
            .arg(to));
    };
    cp(&fixture_src("realhost"), &root);
    cp(
        &fixture_src("overlays/localrepo"),
        &root.join("var/db/repos/localrepo"),
    );
    // A git overlay whose upstream is a local repository.
    let git_src = s.path().join("gitrepo.git");
    cp(&fixture_src("overlays/gitrepo"), &git_src);
    let git = |dir: &Path, args: &[&str]| {
        sh(Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .env("GIT_AUTHOR_NAME", "overlay")
            .env("GIT_AUTHOR_EMAIL", "overlay@localhost")
            .env("GIT_COMMITTER_NAME", "overlay")
            .env("GIT_COMMITTER_EMAIL", "overlay@localhost")
            .env("GIT_AUTHOR_DATE", "2026-01-01T00:00:00Z")
            .env("GIT_COMMITTER_DATE", "2026-01-01T00:00:00Z"))
    };
    git(&git_src, &["init", "--quiet", "--initial-branch=master"]);
    git(&git_src, &["add", "."]);
    git(&git_src, &["commit", "--quiet", "-m", "gitnote 1.0"]);
    let uri = format!("file://{}", git_src.display());
    sh(Command::new("git")
        .args(["clone", "--quiet", &uri])
        .arg(root.join("var/db/repos/gitrepo")));
    let head = git(&root.join("var/db/repos/gitrepo"), &["rev-parse", "HEAD"])
        .trim()
        .to_string();
    let conf = root.join("etc/portage/repos.conf/gitrepo.conf");
    let text = std::fs::read_to_string(&conf)
        .unwrap()
        .replace("@GIT_URI@", &uri);
    std::fs::write(&conf, text).unwrap();
    std::os::unix::fs::symlink(
        store.join("repos").join(snapshot),
        root.join("var/db/repos/gentoo"),
    )
    .unwrap();
    (root, head)
}

/// The host installs its world from `gbuild serve`'s binaries: a root of the stage3 with the
/// host's /etc/portage, world and overlays and the builder's key trusted with `gbuild host
/// trust`, running emerge with the host's own settings plus `binpkg-request-signature` (every
/// package verified) and `--ask` answered by `--ask=n` (no terminal). Returns emerge's output.
fn host_install(env: &Env, s: &Scratch, root: &Path, snapshot: &str, serve: &Serve) -> String {
    let images = env.store.join("images/stage3");
    let img = std::fs::read_dir(&images)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let img: serde_json::Value = serde_json::from_slice(&std::fs::read(img).unwrap()).unwrap();
    let stage3 = env
        .store
        .join("layers")
        .join(img["layers"][0].as_str().unwrap());
    let dir = s.path().join("desk-install");
    let binrepos = dir.join("binrepos");
    std::fs::create_dir_all(&binrepos).unwrap();
    let conf = builder::http_get(&format!("{}/desk/binrepos.conf", serve.url));
    std::fs::write(binrepos.join("gbuild.conf"), conf).unwrap();
    // The host trusts the builder's signing key (`gbuild host trust`) in a keyring that is
    // copied into its /etc/portage below.
    let key = util::output(env.gbuild().args(["key", "--show"]));
    assert!(key.status.success(), "{}", util::stderr(&key));
    let trust_root = dir.join("trust");
    std::fs::create_dir_all(&trust_root).unwrap();
    let trusted = util::output(
        env.gbuild()
            .args(["host", "trust", "--root"])
            .arg(&trust_root)
            .args(["--binhost", &format!("{}/desk", serve.url)])
            .args(["--fingerprint", util::stdout(&key).trim()]),
    );
    assert!(
        trusted.status.success(),
        "host trust: {}",
        util::stderr(&trusted)
    );
    let out = util::host_root_exec(
        env.gbuild(),
        &stage3,
        &dir.join("upper"),
        &[
            (
                &env.store.join("repos").join(snapshot),
                "/var/db/repos/gentoo",
                true,
            ),
            (
                &root.join("var/db/repos/localrepo"),
                "/var/db/repos/localrepo",
                true,
            ),
            (
                &root.join("var/db/repos/gitrepo"),
                "/var/db/repos/gitrepo",
                true,
            ),
            (&root.join("etc/portage"), "/run/host-portage", true),
            (&root.join("var/lib/portage"), "/run/host-world", true),
            (&binrepos, "/run/binrepos", true),
            (
                &trust_root.join("etc/portage/gnupg"),
                "/run/host-gnupg",
                true,
            ),
        ],
        &["FEATURES=binpkg-request-signature -userpriv -usersandbox -userfetch"],
        "set -e; rm -rf /etc/portage && cp -a /run/host-portage /etc/portage && \
         cp -a /run/host-gnupg /etc/portage/gnupg && \
         cp /run/host-world/world /var/lib/portage/world && \
         mkdir -p /etc/portage/binrepos.conf && \
         cp /run/binrepos/gbuild.conf /etc/portage/binrepos.conf/ && \
         emerge --ask=n --getbinpkgonly --update --deep --newuse --with-bdeps=y \
         --color=n @world 2>&1",
    );
    let text = util::stdout(&out);
    assert!(out.status.success(), "host install failed:\n{text}");
    text
}

/// A host of machine `desk` for `gbuild host upgrade`: the stage3 with the host's
/// /etc/portage and world as they are in `conf` (`etc/portage`, `world`) and the keyring that
/// `gbuild host trust` made, its repositories in the writable `repos` (at /var/db/repos), its
/// installed state kept in `dir/upper` from one run to the next. Runs `gbuild host upgrade
/// --binhost URL ARGS` there, as the host's root.
fn host_upgrade(
    env: &Env,
    dir: &Path,
    conf: &Path,
    repos: &Path,
    keyring: &Path,
    binhost: &str,
    args: &[&str],
) -> std::process::Output {
    let bin = util::bin();
    util::host_root_exec(
        env.gbuild(),
        &builder::stage3_layer(env),
        &dir.join("upper"),
        &[
            (repos, "/var/db/repos", false),
            (conf, "/run/host-conf", true),
            (keyring, "/run/host-gnupg", true),
            (bin.parent().unwrap(), "/run/gbuild-bin", true),
        ],
        &[
            "FEATURES=-userpriv -usersandbox -userfetch",
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        ],
        &format!(
            "set -e; rm -rf /etc/portage && cp -a /run/host-conf/etc/portage /etc/portage && \
             cp -a /run/host-gnupg /etc/portage/gnupg && \
             cp /run/host-conf/world /var/lib/portage/world && \
             exec /run/gbuild-bin/{} host upgrade --binhost {binhost} {}",
            bin.file_name().unwrap().to_string_lossy(),
            args.join(" ")
        ),
    )
}

/// Whether the host of `host_upgrade` has a package of `cp` installed.
fn installed_in(dir: &Path, cp: &str) -> bool {
    let (cat, pn) = cp.split_once('/').unwrap();
    std::fs::read_dir(dir.join("upper/var/db/pkg").join(cat))
        .map(|rd| {
            rd.flatten().any(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(&format!("{pn}-"))
            })
        })
        .unwrap_or(false)
}

#[test]
fn stage3_default_and_a_real_desktop_host() {
    if !util::require(
        util::rootless_ready(),
        "unprivileged user namespaces with subordinate ranges and newuidmap",
    ) {
        return;
    }
    let Some(fx) = builder::fixture() else {
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
    let date = "20260101";

    // 1. The default machine is the stage3's own: its world is the tarball's world file, and
    //    what it built is exactly what that world (with @system) installs.
    run_once(&env, "default", date);
    let stage3 = std::fs::read_dir(fx.dir.join("mirror/releases/amd64/autobuilds"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .flat_map(|d| std::fs::read_dir(d.path()).unwrap().flatten())
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(".tar.xz"))
        .expect("a stage3 tarball in the fixture mirror");
    let stage3_world = sh(Command::new("tar")
        .arg("-xJOf")
        .arg(&stage3)
        .arg("./var/lib/portage/world"));
    let builder_world = sh(env
        .gbuild()
        .args(["shell", "--", "cat", "/var/lib/portage/world"]));
    assert_eq!(builder_world, stage3_world);
    let installed = sh(env.gbuild().args([
        "shell",
        "--",
        "/bin/sh",
        "-c",
        "cd /var/db/pkg && ls -d */* | sort",
    ]));
    let index =
        std::fs::read_to_string(env.store.join("machines/default/binpkgs/Packages")).unwrap();
    let mut built: Vec<String> = index_entries(&index).into_iter().map(|(c, _)| c).collect();
    built.sort();
    built.dedup();
    let installed: Vec<String> = installed.lines().map(str::to_string).collect();
    assert_eq!(built, installed, "binpkgs are exactly the installed set");
    for atom in stage3_world.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            installed.iter().any(|c| c.starts_with(&format!("{atom}-"))),
            "{atom} of the stage3's world"
        );
    }
    // None of the tests' configuration reached it.
    let fixture_world =
        std::fs::read_to_string(fixture_src("machine/var/lib/portage/world")).unwrap();
    for atom in fixture_world.lines().filter(|l| !stage3_world.contains(*l)) {
        assert!(
            !installed.iter().any(|c| c.starts_with(&format!("{atom}-"))),
            "{atom} built on the stage3's own machine"
        );
    }

    // 2. A real desktop host: export, import, run --once. Its kernel is the one its
    //    containers run on (`host upgrade` there compares it).
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap()
        .trim()
        .to_string();
    let (root, head) = host_root(&s, &env.store, date);
    let bundle = s.path().join("desk.tar");
    sh(env
        .gbuild()
        .args(["host", "export", "--root"])
        .arg(&root)
        .args([
            "--kernel",
            &kernel,
            "--hostname",
            "desk",
            "--no-emerge",
            "--no-cpu",
        ])
        .arg("-o")
        .arg(&bundle));
    let manifest: serde_json::Value = {
        let f = std::fs::File::open(&bundle).unwrap();
        let mut a = tar::Archive::new(f);
        let mut e = a.entries().unwrap().next().unwrap().unwrap();
        serde_json::from_reader(&mut e).unwrap()
    };
    let repo = |n: &str| {
        manifest["repos"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == n)
            .unwrap_or_else(|| panic!("repository {n} in {manifest}"))
            .clone()
    };
    assert_eq!(repo("gitrepo")["git_commit"], serde_json::json!(head));
    assert!(repo("localrepo")["captured"].is_string(), "{manifest}");
    assert_eq!(manifest["profile"]["repo"], "localrepo");
    // Imported the way a host's timer does it: `host export -o - | ssh builder gbuild machine
    // import - --name desk` (the bundle on standard input).
    sh(env
        .gbuild()
        .args(["machine", "import", "-", "--name", "desk"])
        .stdin(std::fs::File::open(&bundle).unwrap()));
    // The builder's own make parallelism, distinct from the host's -j16 and the -j1 of one
    // package; build directories on a tmpfs, and ccache (the machine's own options over the
    // global ones).
    let toml = "jobs = 3\n[build]\ntmpfs = \"1G\"\nmakeopts = \"-j2\"\n\
                [machines.desk.build]\nmakeopts = \"-j3 -l5\"\nccache = \"256M\"\n";
    std::fs::write(env.store.join("gbuild.toml"), toml).unwrap();
    run_once(&env, "desk", date);
    let st: serde_json::Value = serde_json::from_str(&sh(env.gbuild().args([
        "status",
        "--machine",
        "desk",
        "--json",
    ])))
    .unwrap();
    assert_eq!(st["last_pass"]["result"], "success", "{st}");
    assert_eq!(st["drift"], serde_json::json!([]), "{st}");

    let index = std::fs::read_to_string(env.store.join("machines/desk/binpkgs/Packages")).unwrap();
    let entries = index_entries(&index);
    let entry = |cpv: &str| {
        entries
            .iter()
            .find(|(c, _)| c == cpv)
            .map(|(_, b)| b.clone())
            .unwrap_or_else(|| panic!("{cpv} in Packages:\n{index}"))
    };
    // The overlay profile's USE reached the overlay package; the overlays' packages were built.
    assert!(
        entry("app-misc/localnote-1.0")
            .lines()
            .any(|l| l.starts_with("USE:") && l.split_whitespace().any(|f| f == "laptop")),
        "{index}"
    );
    entry("app-misc/gitnote-1.0");
    // gpkg whatever BINPKG_FORMAT the host has.
    let gpkgs = sh(Command::new("find")
        .arg(env.store.join("machines/desk/binpkgs"))
        .args(["-name", "*.xpak", "-o", "-name", "*.tbz2"]));
    assert_eq!(gpkgs.trim(), "", "xpak binpkgs written");
    // package.env wins over the builder's MAKEOPTS, which wins over the host's make.conf's.
    // (Portage leaves MAKEOPTS out of the environment saved in a binpkg, so that binpkgs do not
    // depend on the size of the machine that built them: the build output shows emake's
    // command line.)
    let emake = |cpv: &str| -> String {
        build_output(&env, "desk", cpv)
            .lines()
            .find(|l| l.starts_with("make -j") || l.starts_with("make "))
            .unwrap_or_else(|| panic!("no emake line in the build of {cpv}"))
            .to_string()
    };
    let j1 = emake("app-misc/goodbye-1.0");
    assert!(j1.starts_with("make -j1 "), "{j1}");
    let own = emake("app-misc/hello-1.0");
    assert!(own.starts_with("make -j3 -l5 "), "{own}");
    // The host-only PORTAGE_TMPDIR was honoured (it exists in the builder).
    assert!(
        build_output(&env, "desk", "app-misc/hello-1.0")
            .contains("/var/tmp/notmpfs/portage/app-misc/hello-1.0/image"),
        "hello did not build in /var/tmp/notmpfs"
    );

    // The machine's configuration is still the host's: `diff` against the host after it dropped
    // `--ask` reports the host's old and new values (as build-side, not blocking).
    let make_conf = root.join("etc/portage/make.conf");
    let original = std::fs::read_to_string(&make_conf).unwrap();
    std::fs::write(&make_conf, original.replace("--ask ", "")).unwrap();
    let bundle2 = s.path().join("desk2.tar");
    sh(env
        .gbuild()
        .args(["host", "export", "--root"])
        .arg(&root)
        .args([
            "--kernel",
            &kernel,
            "--hostname",
            "desk",
            "--no-emerge",
            "--no-cpu",
        ])
        .arg("-o")
        .arg(&bundle2));
    std::fs::write(&make_conf, &original).unwrap();
    let out = util::output(
        env.gbuild()
            .args(["diff", "--machine", "desk"])
            .arg(&bundle2),
    );
    let text = util::stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.lines().any(|l| l.contains("EMERGE_DEFAULT_OPTS")
            && l.contains("\"--ask --verbose --getbinpkg")
            && l.contains("-> \"--verbose --getbinpkg")),
        "{text}"
    );

    // 3. The host installs its whole world from the binaries, nothing compiled.
    let serve = Serve::start(&env);
    // Hosts are offered the overlays the binpkgs were built with, like the main tree.
    let list: serde_json::Value =
        serde_json::from_str(&builder::http_get(&format!("{}/desk/overlays", serve.url))).unwrap();
    let offered = list["overlays"].as_array().unwrap();
    assert_eq!(offered.len(), 2, "{list}");
    for o in offered {
        assert!(o["url"].is_string(), "{list}");
    }
    assert!(offered
        .iter()
        .any(|o| o["name"] == "gitrepo" && o["git_commit"] == serde_json::json!(head)));
    let tar = builder::http_get(&format!("{}/desk/overlays/localrepo.tar", serve.url));
    assert!(tar.contains("app-misc/localnote/localnote-1.0.ebuild"));
    assert!(tar.contains("profiles/laptop/parent"));
    let out = host_install(&env, &s, &root, date, &serve);
    let (compiled, binary) = builder::counts(&out);
    assert!(compiled.is_empty(), "host compiled {compiled:?}:\n{out}");
    for p in [
        "app-misc/localnote-1.0",
        "app-misc/gitnote-1.0",
        "app-misc/goodbye-1.0",
        "app-misc/hello-1.0",
    ] {
        assert!(
            binary.iter().any(|b| b.starts_with(p)),
            "{p} from a binary: {binary:?}"
        );
    }

    // 4. `gbuild host upgrade` on a host of desk, and a package asked for on demand.
    let binhost = format!("{}/desk", serve.url);
    let up = s.path().join("hostup");
    let conf = up.join("conf");
    let repos = up.join("repos");
    std::fs::create_dir_all(&conf).unwrap();
    std::fs::create_dir_all(&repos).unwrap();
    sh(Command::new("cp")
        .arg("-a")
        .arg(root.join("etc"))
        .arg(&conf));
    let world = std::fs::read_to_string(root.join("var/lib/portage/world")).unwrap();
    // The host wants a package that is not in the world the builder got.
    std::fs::write(conf.join("world"), format!("{world}app-misc/quoter\n")).unwrap();
    for (from, to) in [
        (env.store.join("repos").join(date), "gentoo"),
        (root.join("var/db/repos/localrepo"), "localrepo"),
        (root.join("var/db/repos/gitrepo"), "gitrepo"),
    ] {
        sh(Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", from.display()))
            .arg(repos.join(to)));
    }
    // ... and changed its configuration since the import.
    let extra_use = conf.join("etc/portage/package.use/extra");
    std::fs::write(&extra_use, "app-misc/failer debug\n").unwrap();
    let trust_root = up.join("trust");
    std::fs::create_dir_all(&trust_root).unwrap();
    let key = sh(env.gbuild().args(["key", "--show"]));
    sh(env
        .gbuild()
        .args(["host", "trust", "--root"])
        .arg(&trust_root)
        .args(["--binhost", &binhost, "--fingerprint", key.trim()]));
    let keyring = trust_root.join("etc/portage/gnupg");
    let tree_chk = |p: &Path| std::fs::read_to_string(p.join("metadata/timestamp.chk")).unwrap();
    let host_tree = repos.join("gentoo");
    let before = tree_chk(&host_tree);

    // Drift: refused with the drift lines and the request that builds the missing package,
    // before anything changed.
    let out = host_upgrade(&env, &up, &conf, &repos, &keyring, &binhost, &[]);
    let err = util::stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("drift: etc/portage/package.use/extra: (none) -> \"app-misc/failer debug\""),
        "{err}"
    );
    assert!(
        err.contains("drift: var/lib/portage/world: (none) -> \"app-misc/quoter\""),
        "{err}"
    );
    assert!(
        err.contains("gbuild request --machine desk app-misc/quoter"),
        "{err}"
    );
    assert!(!installed_in(&up, "app-misc/hello"), "{err}");
    assert!(!up.join("upper/etc/portage/binrepos.conf").exists());

    // --force goes on to the check, which refuses: the world atom would be skipped.
    let out = host_upgrade(&env, &up, &conf, &repos, &keyring, &binhost, &["--force"]);
    let err = util::stderr(&out);
    assert_eq!(out.status.code(), Some(4), "{err}\n{}", util::stdout(&out));
    assert!(err.contains("would be skipped: app-misc/quoter"), "{err}");
    assert!(err.contains("already the served snapshot"), "{err}");
    for p in ["app-misc/hello", "app-misc/quoter", "dev-libs/libquote"] {
        assert!(!installed_in(&up, p), "{p} installed by a refused upgrade");
    }
    std::fs::remove_file(&extra_use).unwrap();

    // The builder's loop (woken by the request) moves to the mirror's newest snapshot and
    // builds the requested package with the world; --wait returns once it is published.
    let mut lp = env
        .gbuild()
        .args(["build", "--machine", "desk"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Asked for once the loop waits for its next pass (the request wakes it).
    let t = std::time::Instant::now();
    while env.status_of("desk")["state"] != "waiting" {
        assert!(
            t.elapsed() < std::time::Duration::from_secs(600),
            "the loop of desk never waited: {}",
            env.status_of("desk")
        );
        assert!(lp.try_wait().unwrap().is_none(), "the loop of desk ended");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let req = util::output(env.gbuild().args([
        "request",
        "--machine",
        "desk",
        "app-misc/quoter",
        "--wait",
    ]));
    let log = util::stdout(&util::output(env.gbuild().args([
        "logs",
        "--machine",
        "desk",
    ])));
    let _ = lp.kill();
    let _ = lp.wait();
    assert_eq!(
        req.status.code(),
        Some(0),
        "request --wait: {}\n{}",
        util::stderr(&req),
        log.lines().rev().take(40).collect::<Vec<_>>().join("\n")
    );
    assert!(
        util::stdout(&req).contains("published app-misc/quoter: app-misc/quoter-1.0"),
        "{}",
        util::stdout(&req)
    );
    // Requests live beside the machine, never in its world.
    let builder_world = sh(env.gbuild().args([
        "shell",
        "--machine",
        "desk",
        "--",
        "cat",
        "/var/lib/portage/world",
    ]));
    assert!(!builder_world.contains("quoter"), "{builder_world}");
    let info: serde_json::Value =
        serde_json::from_str(&builder::http_get(&format!("{binhost}/snapshot.info"))).unwrap();
    let served_date = info["date"].as_str().unwrap().to_string();
    assert_ne!(served_date, date, "the loop moved to the newest snapshot");

    // Now the host upgrades: its tree brought to the served snapshot (verified by the SHA512
    // the builder signed: the fixture's Gentoo key is not Gentoo's), the binhost configured,
    // its world installed from binaries with the requested package, nothing compiled.
    let out = host_upgrade(&env, &up, &conf, &repos, &keyring, &binhost, &[]);
    let (text, err) = (util::stdout(&out), util::stderr(&out));
    assert_eq!(out.status.code(), Some(0), "{err}\n{text}");
    assert!(
        err.contains(&format!("-> snapshot {served_date}"))
            && err.contains("the SHA512 the builder signed"),
        "{err}"
    );
    assert_eq!(
        tree_chk(&host_tree),
        tree_chk(&env.store.join("repos").join(&served_date))
    );
    assert_ne!(tree_chk(&host_tree), before);
    let (compiled, binary) = builder::counts(&text);
    assert!(compiled.is_empty(), "host compiled {compiled:?}:\n{text}");
    for p in [
        "app-misc/quoter-1.0",
        "app-misc/hello-1.0",
        "app-misc/localnote-1.0",
    ] {
        assert!(
            binary.iter().any(|b| b.starts_with(p)),
            "{p} from a binary: {binary:?}\n{text}"
        );
        assert!(text.contains(&format!("  {p}")), "{p} reported:\n{text}");
    }
    assert!(installed_in(&up, "app-misc/quoter"));
    let binrepos =
        std::fs::read_to_string(up.join("upper/etc/portage/binrepos.conf/gbuild-desk.conf"))
            .unwrap();
    assert!(
        binrepos.contains(&format!("sync-uri = {binhost}")),
        "{binrepos}"
    );

    // Again: nothing to do, the tree untouched.
    let out = host_upgrade(&env, &up, &conf, &repos, &keyring, &binhost, &["--pretend"]);
    let (text, err) = (util::stdout(&out), util::stderr(&out));
    assert_eq!(out.status.code(), Some(0), "{err}\n{text}");
    assert!(err.contains("already the served snapshot"), "{err}");
    assert!(text.contains("0 package(s) would be installed"), "{text}");

    // 5. The build options on a rebuilt builder: emerge's --jobs and --load-average from
    //    gbuild.toml, build directories on the tmpfs (but a host's per-package PORTAGE_TMPDIR
    //    still on disk), and the compiles of the first builder's ccache as hits.
    std::fs::write(
        env.store.join("gbuild.toml"),
        format!("{toml}emerge_jobs = 2\nload_average = 7.5\n"),
    )
    .unwrap();
    // The first builder's compiles fill the machine's cache in the store: the bootstrap's, and
    // the language package's (compiled with -c, then linked, as most real builds are: ccache
    // caches compiles, not a compile and link in one gcc call).
    sh(env.gbuild().args([
        "shell",
        "--machine",
        "desk",
        "--",
        "emerge",
        "--oneshot",
        "--usepkg=n",
        "--buildpkg=n",
        "--color=n",
        "dev-lang/plang",
    ]));
    let cache = env.store.join("machines/desk/ccache");
    assert!(
        std::fs::read_dir(&cache).unwrap().next().is_some(),
        "nothing in {}",
        cache.display()
    );
    sh(env.gbuild().args(["builder", "--machine", "desk"]));
    let out = sh(env.gbuild().args([
        "shell",
        "--machine",
        "desk",
        "--",
        "sh",
        "-c",
        "set -e; export CCACHE_DIR=/var/cache/ccache; ccache -z >/dev/null; \
         echo \"opts: $EMERGE_DEFAULT_OPTS\"; \
         FEATURES=\"$FEATURES keepwork\" emerge --oneshot --usepkg=n --buildpkg=n --color=n \
           dev-libs/libgreet app-misc/hello dev-lang/plang; \
         for d in /var/tmp/portage/dev-libs/libgreet-1.0 /var/tmp/notmpfs/portage/app-misc/hello-1.0; do \
           echo \"fs $d $(stat -f -c %T $d/work)\"; done; \
         echo \"tmpfs $(stat -f -c '%b %S' /var/tmp/portage)\"; ccache -s",
    ]));
    assert!(out.contains("opts: --jobs=2 --load-average=7.5"), "{out}");
    // With --jobs emerge reports its jobs, and each build's output goes to its log only.
    assert!(
        out.contains("Jobs: ") && out.contains("Load avg: "),
        "{out}"
    );
    assert!(!out.lines().any(|l| l.starts_with("make ")), "{out}");
    assert!(
        out.contains("fs /var/tmp/portage/dev-libs/libgreet-1.0 tmpfs"),
        "{out}"
    );
    let hello_fs = out
        .lines()
        .find_map(|l| l.strip_prefix("fs /var/tmp/notmpfs/portage/app-misc/hello-1.0 "))
        .unwrap_or_else(|| panic!("{out}"));
    assert_ne!(hello_fs, "tmpfs", "{out}");
    let size: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("tmpfs "))
        .map(|l| {
            l.split_whitespace()
                .map(|n| n.parse::<u64>().unwrap())
                .product()
        })
        .unwrap_or_else(|| panic!("{out}"));
    assert_eq!(size, 1 << 30, "{out}");
    let hits: u64 = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Hits:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no hit count in ccache -s:\n{out}"));
    assert!(
        hits > 0,
        "the rebuilt builder's compiles missed the cache:\n{out}"
    );
    println!("ccache on a rebuilt builder: {hits} hit(s)");

    // 6. A host that follows a tag keeps its generation while newer ones are published: the
    //    generation it just installed is tagged, the builder publishes a newer one (a package
    //    requested on demand), and `host upgrade` on the tag's binhost finds that generation's
    //    record, index and tree (nothing to do), and points binrepos.conf at the tag; on the
    //    untagged binhost the newer record builds a package its world lacks.
    let tagged: u64 = sh(env
        .gbuild()
        .args(["publish", "--machine", "desk", "tag", "stable"]))
    .trim()
    .parse()
    .unwrap();
    let stable = format!("{}/desk@stable", serve.url);
    let stable_index = builder::http_get(&format!("{stable}/Packages"));
    let stable_release = builder::http_get(&format!("{stable}/release.asc"));
    assert_eq!(
        stable_index,
        builder::http_get(&format!("{binhost}/Packages"))
    );
    sh(env
        .gbuild()
        .args(["request", "--machine", "desk", "dev-plang/plang-yaml"]));
    let out = util::output(env.gbuild().args(["build", "--once", "--machine", "desk"]));
    assert!(out.status.success(), "{}", util::stderr(&out));
    let gens: Vec<serde_json::Value> = serde_json::from_str(&sh(env.gbuild().args([
        "publish",
        "--machine",
        "desk",
        "list",
        "--json",
    ])))
    .unwrap();
    let newest = gens.last().and_then(|g| g["generation"].as_u64()).unwrap();
    assert!(newest > tagged, "{gens:?}");
    assert!(
        builder::http_get(&format!("{binhost}/Packages")).contains("CPV: dev-plang/plang-yaml-1.0"),
        "the newer generation is served at /desk/"
    );
    assert_eq!(
        builder::http_get(&format!("{stable}/Packages")),
        stable_index
    );
    assert_eq!(
        builder::http_get(&format!("{stable}/release.asc")),
        stable_release
    );
    let out = host_upgrade(&env, &up, &conf, &repos, &keyring, &stable, &[]);
    let (text, err) = (util::stdout(&out), util::stderr(&out));
    assert_eq!(out.status.code(), Some(0), "{err}\n{text}");
    assert!(err.contains("already the served snapshot"), "{err}");
    let (compiled, binary) = builder::counts(&text);
    assert!(compiled.is_empty() && binary.is_empty(), "{err}\n{text}");
    assert!(!installed_in(&up, "dev-plang/plang-yaml"));
    let binrepos =
        std::fs::read_to_string(up.join("upper/etc/portage/binrepos.conf/gbuild-desk.conf"))
            .unwrap();
    assert!(
        binrepos.contains(&format!("sync-uri = {stable}\n")),
        "{binrepos}"
    );
    let out = host_upgrade(&env, &up, &conf, &repos, &keyring, &binhost, &["--pretend"]);
    let err = util::stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("dev-plang/plang-yaml"), "{err}");
}
