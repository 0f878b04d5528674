//! `gbuild rebase` with the real emerge against the fixture mirror as it is at two moments: the
//! machine is built from the first stage3; weeks later the mirror (`mirror-later/`) publishes a
//! newer stage3 of the same family whose compiler has GCC 14's defaults.
//!
//! A rebase whose new image cannot build a package of the world (pre-C99 code the stricter
//! compiler rejects) fails naming it, while a build loop started meanwhile on the same machine is
//! not blocked: it builds and publishes on the old builder, which keeps serving. Then the
//! language upgrade: `update` moves the machine to the snapshot with a new plang sub-slot, and a
//! rebase onto the newer stage3 builds that snapshot (the machine's: a rebase changes the stage3,
//! not the tree) while the loop does the same upgrade in place on the old builder. The rebase
//! reuses every binpkg that is still valid (counted in emerge's output, and what `rebase`
//! reports), compiles only the new versions, the binding (whose binpkg was built against the
//! sub-slot that is gone) and the program whose binpkg links the old library's soname (the soname
//! step: `--usepkg` ignores soname dependencies), keeps the package requested on demand, swaps the builder through the
//! publish gate, and a host installs the publication from binaries with no conflict and nothing
//! compiled.

use std::process::Stdio;
use std::time::Duration;

use crate::builder::{self, counts, fixture, wait_until, Env, Serve};
use crate::mirror;
use crate::util::{self, Scratch};

/// The staging log of the newest rebase (not its check's).
fn rebase_log(env: &Env) -> String {
    let dir = env.machine().join("logs");
    let mut logs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("rebase-") && !n.starts_with("rebase-check-"))
        .collect();
    logs.sort();
    std::fs::read_to_string(dir.join(logs.last().expect("a rebase log"))).unwrap()
}

/// The newest pass log.
fn pass_log(env: &Env) -> String {
    builder::logs_named(env, "default", "pass-").pop().unwrap()
}

/// The CPV of every entry of a `Packages` index.
fn builder_cpvs(index: &str) -> Vec<String> {
    index
        .lines()
        .filter_map(|l| l.strip_prefix("CPV: "))
        .map(str::to_string)
        .collect()
}

fn meta(env: &Env) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(env.machine().join("machine.json")).unwrap()).unwrap()
}

#[test]
fn rebase_onto_a_newer_stage3() {
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
    let later_dir = fx.dir.join("mirror-later");
    if !util::require(
        later_dir.is_dir(),
        "a fixture with mirror-later/ (scripts/fixture/build.sh)",
    ) {
        return;
    }
    let next_ts = std::fs::read_to_string(fx.dir.join("fixture.env"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("STAGE3_NEXT_TS=").map(str::to_string))
        .expect("STAGE3_NEXT_TS in fixture.env");
    let server = mirror::Server::start(&fx.dir.join("mirror"));
    let s = Scratch::new();
    let env = Env {
        store: s.path().join("store"),
        url: server.url.clone(),
        fx: &fx,
    };
    let keyring = fx.dir.join("keyring.asc");

    // The machine, built from the first stage3 on the older snapshot.
    util::import_fixture_machine(&env.store, "default");
    let out = util::output(
        env.gbuild()
            .args(["run", "--rootless", "--once", "--mirror", &env.url])
            .args(["--trust", &fx.fingerprint, "--snapshot-date", "20260101"])
            .arg("--keyring")
            .arg(&keyring),
    );
    assert!(out.status.success(), "run: {}", util::stderr(&out));
    let first = meta(&env);
    let old_image = first["image"].as_str().unwrap().to_string();
    assert!(!first["stage3"].as_str().unwrap().contains(&next_ts));
    let serve = Serve::start(&env);
    let served = || builder::http_get(&format!("{}/default/Packages", serve.url));

    // 1. The host adds pre-C99 code to its world. A rebase onto the later stage3 (GCC 14's
    //    defaults) fails in it; a loop started while the rebase works is not blocked and builds
    //    the package on the old builder, which keeps serving.
    let later = mirror::Server::start(&later_dir);
    let rebase_args = |c: &mut std::process::Command| {
        c.args(["rebase", "--mirror", &later.url, "--trust", &fx.fingerprint])
            .arg("--keyring")
            .arg(&keyring);
    };
    // A package requested on demand, not in the world: every builder of the machine builds it.
    let out = util::output(env.gbuild().args(["request", "app-misc/abinote"]));
    assert!(out.status.success(), "request: {}", util::stderr(&out));
    let world = env.machine().join("config/var/lib/portage/world");
    let mut w = std::fs::read_to_string(&world).unwrap();
    // And a program linking a library that has no sub-slot (its next version changes the
    // soname), as a user's world has.
    w.push_str("app-misc/oldstyle\napp-misc/quoter\n");
    std::fs::write(&world, w).unwrap();
    let before = served();
    assert!(!before.contains("CPV: app-misc/oldstyle-1.0\n"));
    let mut c = env.gbuild();
    rebase_args(&mut c);
    let rebase = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The staged PKGDIR is linked before the staging log opens: from then on the loop's builds
    // are its own.
    wait_until("the rebase's log", Duration::from_secs(300), || {
        std::fs::read_dir(env.machine().join("logs"))
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("rebase-"))
    });
    let mut lp = env
        .gbuild()
        .args(["build", "--interval", "1h"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = rebase.wait_with_output().unwrap();
    let err = util::stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("rebase of default failed in app-misc/oldstyle-1.0"),
        "{err}"
    );
    assert!(err.contains("keeps its builder"), "{err}");
    let log = rebase_log(&env);
    assert!(log.contains("implicit-function-declaration"), "{log}");
    wait_until("the loop's pass", Duration::from_secs(400), || {
        let st = env.status();
        (st["state"] == "waiting" && st["last_pass"]["result"] == "success")
            || lp.try_wait().unwrap().is_some()
    });
    assert!(lp.try_wait().unwrap().is_none(), "the loop exited");
    lp.kill().unwrap();
    lp.wait().unwrap();
    let after = meta(&env);
    assert_eq!(after["image"], first["image"]);
    assert_eq!(after["stage3"], first["stage3"]);
    assert!(!env.machine().join("rebase/staged.json").exists());
    let (built, _) = counts(&pass_log(&env));
    assert!(
        built.iter().any(|p| p.starts_with("app-misc/oldstyle-1.0")),
        "{built:?}"
    );
    let published = served();
    assert!(published.contains("CPV: app-misc/oldstyle-1.0\n"));
    assert!(published.contains("CPV: app-misc/abinote-1.0\n"));
    assert!(published.contains("CPV: dev-lang/plang-5.38.2\n"));

    // 2. The language upgrade: `update` moves the machine to the snapshot with plang 5.40 (a new
    //    sub-slot). The rebase onto the later stage3 builds that snapshot; once its staged PKGDIR
    //    is linked, a loop starts and does the same upgrade in place on the old builder; the loop
    //    swaps the staged builder in between two passes.
    env.fetch(Some("20260201"));
    let out = util::output(env.gbuild().arg("update"));
    assert!(out.status.success(), "update: {}", util::stderr(&out));
    assert_eq!(meta(&env)["snapshot"], "20260201");
    // The host's own copy of that tree (a host keeps the tree it synced): once the loop below
    // re-syncs to a newer one, its gc may remove the store's.
    let host_tree = s.path().join("host-tree");
    let cp = std::process::Command::new("cp")
        .arg("-al")
        .arg(env.store.join("repos/20260201"))
        .arg(&host_tree)
        .status()
        .unwrap();
    assert!(cp.success(), "cp -al of the tree");
    let index_before = std::fs::read_to_string(env.machine().join("binpkgs/Packages")).unwrap();
    let rebase_logs = || {
        std::fs::read_dir(env.machine().join("logs"))
            .unwrap()
            .flatten()
            .filter(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.starts_with("rebase-") && !n.starts_with("rebase-check-")
            })
            .count()
    };
    let (logs_before, passes_before) = (
        rebase_logs(),
        builder::logs_named(&env, "default", "pass-").len(),
    );
    let mut c = env.gbuild();
    rebase_args(&mut c);
    let rebase = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the second rebase's log", Duration::from_secs(300), || {
        rebase_logs() > logs_before
    });
    let loop_err = s.path().join("loop.err");
    let mut lp = env
        .gbuild()
        .args(["build", "--interval", "1h"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&loop_err).unwrap())
        .spawn()
        .unwrap();
    let out = rebase.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "rebase: {}\n{}",
        util::stderr(&out),
        rebase_log(&env)
    );
    assert!(
        util::stderr(&out).contains("the build loop of default swapped to image"),
        "{}",
        util::stderr(&out)
    );

    let (compiled, reused) = counts(&rebase_log(&env));
    // Emerge's own count is what rebase reports.
    let said = util::stdout(&out);
    assert!(
        said.contains(&format!(
            "reused {} binpkg(s), compiled {}",
            reused.len(),
            compiled.len()
        )),
        "{said}"
    );
    let cpvs = |v: &[String]| {
        let mut c: Vec<String> = v
            .iter()
            .map(|p| p.split("::").next().unwrap().to_string())
            .collect();
        c.sort();
        c.dedup();
        c
    };
    // Compiled: the new language and library versions, the binding built against the
    // sub-slot that is gone, and the program whose binpkg links the old library's soname
    // (installed from its binpkg, then rebuilt by the soname step), nothing else.
    assert_eq!(
        cpvs(&compiled),
        [
            "app-misc/quoter-1.0",
            "dev-lang/plang-5.40.0",
            "dev-libs/libquote-2.0",
            "dev-plang/plang-binding-1.0"
        ],
        "compiled {compiled:?}"
    );
    assert!(
        rebase_log(&env).contains("app-misc/quoter-1.0 needs"),
        "the soname step names quoter"
    );
    // Reused: every binpkg of the old PKGDIR that is still valid (built by the old stage3's
    // compiler; oldstyle, which the new one cannot compile, and the requested abinote
    // included): all but the old language and the binding built against it.
    let mut valid: Vec<String> = builder_cpvs(&index_before)
        .into_iter()
        .filter(|c| {
            ![
                "dev-lang/plang-5.38.2",
                "dev-plang/plang-binding-1.0",
                "dev-libs/libquote-1.0",
            ]
            .contains(&c.as_str())
        })
        .collect();
    valid.sort();
    valid.dedup();
    assert!(
        valid.contains(&"app-misc/oldstyle-1.0".to_string()),
        "{valid:?}"
    );
    assert!(
        valid.contains(&"app-misc/abinote-1.0".to_string()),
        "{valid:?}"
    );
    assert_eq!(cpvs(&reused), valid, "reused {reused:?}");
    // The loop's pass on the old builder (started before the swap) did the same upgrade in
    // place: the same packages compiled (quoter by `@preserved-rebuild`).
    let passes = builder::logs_named(&env, "default", "pass-");
    let in_place = passes.get(passes_before).expect("the loop's in-place pass");
    let (built, _) = counts(in_place);
    assert_eq!(cpvs(&built), cpvs(&compiled), "in place: {built:?}");
    // The builder now runs on the later stage3, on the machine's snapshot; the old image is
    // still in the store.
    let m = meta(&env);
    assert!(m["stage3"].as_str().unwrap().contains(&next_ts), "{m}");
    assert_ne!(m["image"], first["image"]);
    // The swap kept the machine's snapshot (the loop, woken by it, then re-syncs as after any
    // wait, so machine.json may already name a newer tree).
    let err = std::fs::read_to_string(&loop_err).unwrap();
    let swap_line = err
        .lines()
        .find(|l| l.contains("default now builds on"))
        .unwrap_or_default();
    assert!(swap_line.contains("snapshot 20260201"), "{err}");
    assert!(env
        .store
        .join("images")
        .join(format!("{old_image}.json"))
        .is_file());
    // Published at the swap, through the publish gate (this machine has no host bundle, so the
    // gate says it skipped; it ran after the loop's in-place pass): one binding (the old one
    // pruned), the new language, the requested package.
    let err = std::fs::read_to_string(&loop_err).unwrap();
    let swap_at = err.find("default now builds on").expect("the loop's swap");
    let last_pass = err[..swap_at]
        .rfind("pass of default:")
        .expect("the in-place pass");
    assert!(
        err[last_pass..swap_at].contains("publish gate of default:"),
        "{err}"
    );
    let published = served();
    for cpv in ["dev-lang/plang-5.40.0", "app-misc/abinote-1.0"] {
        assert!(published.contains(&format!("CPV: {cpv}\n")), "{published}");
    }
    assert_eq!(
        published
            .matches("CPV: dev-plang/plang-binding-1.0\n")
            .count(),
        1,
        "{published}"
    );

    // A host installs it from binaries: no conflict, nothing compiled.
    let fpr = builder::key_fingerprint(&env);
    let (ok, host) = builder::host_emerge_at(
        &env,
        &s,
        "host",
        &host_tree,
        "default",
        &serve,
        &[&fpr],
        "--update --deep --newuse --with-bdeps=y @world",
    );
    assert!(ok, "host install failed:\n{host}");
    let (built, binary) = counts(&host);
    assert!(built.is_empty(), "host compiled {built:?}");
    assert!(!host.contains("slot conflict"), "{host}");
    for p in [
        "dev-lang/plang-5.40.0",
        "dev-plang/plang-binding-1.0",
        "app-misc/oldstyle-1.0",
    ] {
        assert!(binary.iter().any(|b| b.starts_with(p)), "{p}: {binary:?}");
    }

    // The loop's next pass, on the new builder, has nothing to compile.
    wait_until(
        "the loop's pass on the new builder",
        Duration::from_secs(300),
        || {
            let st = env.status();
            (st["state"] == "waiting"
                && st["last_pass"]["kind"] == "pass"
                && st["last_pass"]["result"] == "success")
                || lp.try_wait().unwrap().is_some()
        },
    );
    assert!(lp.try_wait().unwrap().is_none(), "the loop exited");
    lp.kill().unwrap();
    lp.wait().unwrap();
    let newest = builder::logs_named(&env, "default", "pass-");
    let (built, _) = counts(newest.last().unwrap());
    assert!(built.is_empty(), "{built:?}");
    let out = util::output(env.gbuild().args([
        "shell",
        "--",
        "/bin/sh",
        "-c",
        "grep -q 'GCC 14' /usr/bin/x86_64-pc-linux-gnu-gcc && test -f /usr/lib64/plang/5.40/vendor/binding.so",
    ]));
    assert!(out.status.success(), "the new builder's root");
}
