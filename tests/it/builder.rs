//! The builder with the real emerge, end to end, against the fixture mirror
//! (`scripts/fixture/build.sh OUTDIR`, given as `GBUILD_FIXTURE=OUTDIR`): `run --rootless`
//! bootstraps through the USE cycle, builds the world set, and a host-like root installs every
//! package from the binaries; a failing package idles the loop until the configuration is fixed
//! and `resume`; a second loop is refused; a newer snapshot with a new slot of the language
//! package rebuilds the binding, a pass killed with SIGKILL compiles nothing twice on restart, and
//! the host installs both from binaries with no slot conflict. Hosts install over HTTP from
//! `gbuild serve` with `emerge --getbinpkgonly`, Portage's defaults plus
//! `FEATURES=binpkg-request-signature`, and the store's key trusted with `gbuild host trust`:
//! every package verifies, substituted ones (a byte changed, another key, unsigned) are refused,
//! a key rotation keeps both old and new packages verifiable, and the secret key is in no layer,
//! export or served file.
//!
//! One writer per machine: while `run` works, a second `run`, `shell`, `update` and `bootstrap`
//! are refused at once naming it. The first build is a pass: an imported machine whose world
//! fails to build idles `failed`, and importing the fixed bundle plus `resume` completes it
//! without compiling again what was built. The cleanup half of a pass: after the newer snapshot,
//! a module installed under the old language version without a slot operator is rebuilt
//! (perl-cleaner style), a library's soname bump leaves nothing linked to the preserved old
//! library, superseded binpkgs are pruned, and a package the host dropped is depcleaned.
//!
//! One scenario in one store, because bootstrapping is the expensive part.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::generations;
use crate::helpers;
use crate::mirror;
use crate::signing;
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

    /// `status --machine M --json`.
    pub(crate) fn status_of(&self, machine: &str) -> serde_json::Value {
        let out = util::output(
            self.gbuild()
                .args(["status", "--machine", machine, "--json"]),
        );
        assert!(out.status.success());
        serde_json::from_slice(&out.stdout).unwrap()
    }

    pub(crate) fn machine(&self) -> PathBuf {
        self.store.join("machines/default")
    }

    pub(crate) fn newest_log(&self) -> String {
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

/// The machine's lock file names this pid as its holder.
fn lock_holder(env: &Env, machine: &str) -> Option<u32> {
    let text =
        std::fs::read_to_string(env.store.join("machines").join(machine).join("lock")).ok()?;
    text.lines().next()?.trim().parse().ok()
}

/// Run `cmd`, which must give up on its own: killed and reported if it has not within `limit`
/// (a refused command that waited or went on would hang the suite instead).
fn output_within(cmd: &mut Command, limit: Duration) -> std::process::Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{cmd:?} still running after {limit:?}: {}",
                util::stderr(&out)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// A host-like root with the default builder's configuration, its ebuild tree the store's
/// snapshot of `date`.
fn hostroot_from_builder(env: &Env, dir: &Path, date: &str) -> PathBuf {
    builder_config(env, "default", dir);
    let repo = dir.join("var/db/repos/gentoo");
    std::fs::create_dir_all(repo.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(env.store.join("repos").join(date), &repo).unwrap();
    dir.to_path_buf()
}

/// The log files of a machine whose name starts with `prefix`, oldest first, as text.
pub(crate) fn logs_named(env: &Env, machine: &str, prefix: &str) -> Vec<String> {
    let mut v: Vec<_> = std::fs::read_dir(env.store.join("machines").join(machine).join("logs"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| e.path())
        .collect();
    v.sort();
    v.iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect()
}

/// Whether `needle` occurs in the file `path` (an ELF file's dynamic strings, say).
fn file_contains(path: &Path, needle: &str) -> bool {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    b.windows(needle.len()).any(|w| w == needle.as_bytes())
}

pub(crate) fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every file below `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let t = e.file_type().unwrap();
            if t.is_dir() {
                todo.push(e.path());
            } else if t.is_file() {
                out.push(e.path());
            }
        }
    }
    out
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
pub(crate) fn stage3_layer(env: &Env) -> PathBuf {
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

/// The store's current signing key (`gbuild key --show`).
pub(crate) fn key_fingerprint(env: &Env) -> String {
    let out = util::output(env.gbuild().args(["key", "--show"]));
    assert!(out.status.success(), "{}", util::stderr(&out));
    util::stdout(&out).trim().to_string()
}

/// `gbuild host trust` for the host-like root whose upper dir is `upper`.
fn host_trust(env: &Env, serve: &Serve, upper: &Path, fpr: &str) -> std::process::Output {
    host_trust_at(env, serve, "default", upper, fpr)
}

/// `host_trust` against binhost path `binhost` (`default`, `default@TAG`).
fn host_trust_at(
    env: &Env,
    serve: &Serve,
    binhost: &str,
    upper: &Path,
    fpr: &str,
) -> std::process::Output {
    util::output(
        env.gbuild()
            .args(["host", "trust", "--root"])
            .arg(upper)
            .args(["--binhost", &format!("{}/{binhost}", serve.url)])
            .args(["--fingerprint", fpr]),
    )
}

/// A host-like root (the stage3 plus the machine's configuration, Portage's defaults plus
/// `FEATURES=binpkg-request-signature`, the keys `fprs` trusted with `gbuild host trust`) that
/// runs `emerge --getbinpkgonly ARGS` from `gbuild serve` with the binrepos.conf it serves;
/// returns whether emerge succeeded, and its output.
fn host_emerge(
    env: &Env,
    s: &Scratch,
    name: &str,
    snapshot: &str,
    serve: &Serve,
    fprs: &[&str],
    args: &str,
) -> (bool, String) {
    let tree = env.store.join("repos").join(snapshot);
    host_emerge_at(env, s, name, &tree, "default", serve, fprs, args)
}

/// `host_emerge` with the tree `tree` and the binhost at path `binhost` of `serve`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn host_emerge_at(
    env: &Env,
    s: &Scratch,
    name: &str,
    tree: &Path,
    binhost: &str,
    serve: &Serve,
    fprs: &[&str],
    args: &str,
) -> (bool, String) {
    let stage3 = stage3_layer(env);
    let host = s.path().join(name);
    let binrepos = host.join("binrepos");
    std::fs::create_dir_all(&binrepos).unwrap();
    std::fs::create_dir_all(host.join("upper")).unwrap();
    let conf = http_get(&format!("{}/{binhost}/binrepos.conf", serve.url));
    assert!(
        conf.contains(&format!("{}/{binhost}\n", serve.url)),
        "{conf}"
    );
    assert!(conf.contains("verify-signature = true"), "{conf}");
    std::fs::write(binrepos.join("gbuild.conf"), conf).unwrap();
    for fpr in fprs {
        let out = host_trust_at(env, serve, binhost, &host.join("upper"), fpr);
        assert!(out.status.success(), "host trust: {}", util::stderr(&out));
    }
    let out = util::host_root_exec(
        env.gbuild(),
        &stage3,
        &host.join("upper"),
        &[
            (tree, "/var/db/repos/gentoo", true),
            (&env.machine().join("config"), "/run/cfg", true),
            (&binrepos, "/run/binrepos", true),
        ],
        &["FEATURES=-userpriv -usersandbox -userfetch binpkg-request-signature"],
        &format!(
            "cp -a /run/cfg/etc /run/cfg/var / && mkdir -p /etc/portage/binrepos.conf && \
             cp /run/binrepos/gbuild.conf /etc/portage/binrepos.conf/ && \
             emerge --getbinpkgonly --color=n {args} 2>&1"
        ),
    );
    (out.status.success(), util::stdout(&out))
}

/// `host_emerge` of the world set, which must succeed.
#[allow(clippy::too_many_arguments)]
pub(crate) fn host_install(
    env: &Env,
    s: &Scratch,
    name: &str,
    snapshot: &str,
    serve: &Serve,
    fprs: &[&str],
) -> String {
    let (ok, text) = host_emerge(
        env,
        s,
        name,
        snapshot,
        serve,
        fprs,
        "--update --deep --newuse --with-bdeps=y @world",
    );
    assert!(ok, "host install failed:\n{text}");
    text
}

/// What a host does with gpkgs someone on the path substituted (index entries made to match):
/// each is refused with a signature error and nothing of it is installed.
fn refusals(env: &Env, s: &Scratch, serve: &Serve, fpr: &str) {
    let cpv = "app-misc/hello-1.0";
    let published = std::fs::read_to_string(env.machine().join("published/Packages")).unwrap();
    let (_, rel) = signing::stanza_of(&published, cpv);
    let original = std::fs::read(env.machine().join("binpkgs").join(&rel)).unwrap();
    let cases: [(&str, Vec<u8>, &[&str]); 3] = [
        (
            "one-byte",
            signing::one_byte_changed(&original),
            &["BADSIG"],
        ),
        (
            "other-key",
            signing::signed_by_other_key(&original, s.path()),
            &["NO_PUBKEY", "unknown key"],
        ),
        (
            "unsigned",
            signing::unsigned(&original),
            &["NODATA", "unsigned", "no signature"],
        ),
    ];
    for (name, bytes, why) in cases {
        let _restore = signing::substitute(&env.machine(), cpv, &bytes);
        let root = format!("host-{name}");
        let (ok, text) = host_emerge(
            env,
            s,
            &root,
            "20260101",
            serve,
            &[fpr],
            "--oneshot app-misc/hello",
        );
        assert!(!ok, "{name}: emerge accepted it:\n{text}");
        assert!(
            text.contains("verification failed") || text.contains("signature"),
            "{name}: not a signature error:\n{text}"
        );
        assert!(
            why.iter().any(|w| text.contains(w)),
            "{name}: expected one of {why:?}:\n{text}"
        );
        let vdb = s.path().join(&root).join("upper/var/db/pkg/app-misc");
        let installed: Vec<String> = std::fs::read_dir(&vdb)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        assert!(
            !installed.iter().any(|p| p.starts_with("hello-")),
            "{name}: hello was installed: {installed:?}"
        );
    }
}

/// `host trust`: a wrong fingerprint is refused and leaves the keyring as it was; the right one
/// twice changes nothing the second time.
fn trust_checks(env: &Env, s: &Scratch, serve: &Serve, fpr: &str) {
    let upper = s.path().join("host-trust/upper");
    std::fs::create_dir_all(&upper).unwrap();
    let keyring = upper.join("etc/portage/gnupg");
    let wrong = "0123456789ABCDEF0123456789ABCDEF01234567";
    let out = host_trust(env, serve, &upper, wrong);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        util::stderr(&out).contains(wrong) && util::stderr(&out).contains(fpr),
        "{}",
        util::stderr(&out)
    );
    assert!(!keyring.exists(), "a refused trust created the keyring");
    let out = host_trust(env, serve, &upper, &fpr.to_lowercase());
    assert!(out.status.success(), "{}", util::stderr(&out));
    assert!(keyring.join("trustdb.gpg").is_file() && keyring.join("mykeyid").is_file());
    let before = signing::tree_digest(&keyring);
    let out = host_trust(env, serve, &upper, fpr);
    assert!(out.status.success(), "{}", util::stderr(&out));
    assert!(
        util::stderr(&out).contains("nothing changed"),
        "{}",
        util::stderr(&out)
    );
    assert_eq!(
        signing::tree_digest(&keyring),
        before,
        "second trust changed the keyring"
    );
    let out = host_trust(env, serve, &upper, wrong);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        signing::tree_digest(&keyring),
        before,
        "refused trust changed the keyring"
    );
}

/// `published/Packages` has a TTL and an mtime equal to its TIMESTAMP, so Portage's
/// `If-Modified-Since: TIMESTAMP + 5 s` gets a 304.
fn index_caching(env: &Env, serve: &Serve) {
    use std::io::{Read, Write};
    let p = env.machine().join("published/Packages");
    let text = std::fs::read_to_string(&p).unwrap();
    let header = text.split("\n\n").next().unwrap();
    assert!(header.lines().any(|l| l.starts_with("TTL: ")), "{header}");
    let ts: u64 = header
        .lines()
        .find_map(|l| l.strip_prefix("TIMESTAMP: "))
        .unwrap()
        .parse()
        .unwrap();
    let mtime = std::fs::metadata(&p)
        .unwrap()
        .modified()
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert_eq!(mtime, ts);
    let ims = httpdate::fmt_http_date(std::time::UNIX_EPOCH + Duration::from_secs(ts + 5));
    let host = serve.url.strip_prefix("http://").unwrap();
    let mut c = std::net::TcpStream::connect(host).unwrap();
    write!(
        c,
        "GET /default/Packages HTTP/1.1\r\nHost: {host}\r\nIf-Modified-Since: {ims}\r\n\
         Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    c.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 304"), "{resp}");
}

/// The secret key is nowhere hosts or images can see: not in any layer, the builder's upper
/// dir, an exported snapshot, or anything served.
fn secret_nowhere(env: &Env, s: &Scratch, serve: &Serve) {
    let patterns = signing::secret_patterns(&env.store);
    let re = signing::pcre(&patterns);
    // Layers and the upper dir hold files only the namespace's root may read: grep there (the
    // secret key file itself is the positive control).
    let out = util::output(
        env.gbuild()
            .args([
                "unshare", "--", "env", "LC_ALL=C", "grep", "-rlaP", "-D", "skip",
            ])
            .arg(&re)
            .arg(env.store.join("keys/secret.asc"))
            .arg(env.store.join("layers"))
            .arg(env.machine().join("container")),
    );
    let found = util::stdout(&out);
    assert_eq!(
        found.trim(),
        env.store.join("keys/secret.asc").display().to_string(),
        "secret key material in layers or the builder: {found}{}",
        util::stderr(&out)
    );
    // An OCI export of the machine's image, every blob decompressed.
    let export = s.path().join("export");
    let out = util::output(
        env.gbuild()
            .args(["snapshot", "--image", "default/bootstrap", "-o"])
            .arg(&export),
    );
    assert!(out.status.success(), "{}", util::stderr(&out));
    let mut blobs = 0;
    for e in std::fs::read_dir(export.join("blobs/sha256"))
        .unwrap()
        .flatten()
    {
        let out = util::output(
            Command::new("sh")
                .args(["-c", "zstd -dcf < \"$1\" | LC_ALL=C grep -caP \"$2\"", "sh"])
                .arg(e.path())
                .arg(&re),
        );
        assert_eq!(
            util::stdout(&out).trim(),
            "0",
            "secret key material in {}",
            e.path().display()
        );
        blobs += 1;
    }
    assert!(blobs >= 3, "{blobs} blobs");
    // Served: the documents, and every published gpkg inside and out.
    for doc in [
        "Packages",
        "binrepos.conf",
        "repos.conf",
        "key.asc",
        "snapshot.info",
    ] {
        let body = http_get(&format!("{}/default/{doc}", serve.url));
        assert_eq!(signing::find_in(body.as_bytes(), &patterns), None, "{doc}");
    }
    let published = std::fs::read_to_string(env.machine().join("published/Packages")).unwrap();
    let mut n = 0;
    for rel in published.lines().filter_map(|l| l.strip_prefix("PATH: ")) {
        let p = env.machine().join("binpkgs").join(rel);
        assert_eq!(signing::find_in_gpkg(&p, &patterns), None, "{rel}");
        n += 1;
    }
    assert!(n >= 7, "{n} gpkgs searched");
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
    // Reading never creates a machine.
    env.fetch(Some("20260101"));
    let out = util::output(env.gbuild().args(["status", "--machine", "nosuch"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        util::stderr(&out).contains("nosuch"),
        "{}",
        util::stderr(&out)
    );
    assert!(!env.store.join("machines/nosuch").exists());

    // 1. The whole chain on the older snapshot; while it runs, every other writer is refused.
    let keyring = fx.dir.join("keyring.asc");
    let run_args = [
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
        keyring.to_str().unwrap(),
    ];
    let first = env
        .gbuild()
        .args(run_args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = first.id();
    wait_until("the first run's lock", Duration::from_secs(60), || {
        lock_holder(&env, "default") == Some(pid)
    });
    for args in [
        &run_args[..],
        &["shell", "--", "true"][..],
        &["update"][..],
        &["bootstrap"][..],
    ] {
        let out = output_within(env.gbuild().args(args), Duration::from_secs(30));
        let err = util::stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains(&format!(
                "locked by pid {pid} (gbuild run --rootless --once"
            )),
            "{args:?}: {err}"
        );
    }
    let out = first.wait_with_output().unwrap();
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
    // The same index as PKGDIR's (which follows the signed files), with the publication's own
    // TIMESTAMP and a TTL for clients.
    let plain = |t: &str| -> String {
        t.split_inclusive('\n')
            .filter(|l| !l.starts_with("TTL: ") && !l.starts_with("TIMESTAMP: "))
            .collect()
    };
    assert_eq!(plain(&published), plain(&index));

    // Every published binpkg is a gpkg signed with the store's key.
    let key1 = key_fingerprint(&env);
    for rel in published.lines().filter_map(|l| l.strip_prefix("PATH: ")) {
        assert!(rel.ends_with(".gpkg.tar"), "{rel}");
        let p = env.machine().join("binpkgs").join(rel);
        assert_eq!(
            signing::signer(&env.store, &p).as_deref(),
            Some(&key1[..]),
            "{rel}"
        );
    }

    // A host-like root with Portage's defaults plus binpkg-request-signature, trusting the
    // store's key, installs its world set from binaries only, every one verified.
    let serve = Serve::start(&env);
    index_caching(&env, &serve);
    trust_checks(&env, &s, &serve, &key1);
    let host = host_install(&env, &s, "host1", "20260101", &serve, &[&key1]);
    let (built, binary) = counts(&host);
    assert!(built.is_empty(), "host compiled {built:?}");
    assert!(binary.len() >= 7, "{binary:?}");
    // Substituted gpkgs are refused.
    refusals(&env, &s, &serve, &key1);
    // The publication is generation 1; hosts can follow it by a tag.
    let first = generations::tag_first(&env, &serve);

    // 1b. The first build is a pass: an imported machine whose world fails to build (greetd needs
    //     its build configuration under /etc/portage/savedconfig) idles `failed`; importing the
    //     fixed bundle and `resume` complete it, and what was built before is not compiled again.
    let laptop = hostroot_from_builder(&env, &s.path().join("laptoproot"), "20260101");
    std::fs::write(
        laptop.join("var/lib/portage/world"),
        "app-misc/greetd\napp-misc/hello\n",
    )
    .unwrap();
    let bundle = export_root(&env, &laptop, &s.path().join("laptop-broken.tar"));
    import(&env, "laptop", &bundle);
    let status_of = |m: &str| -> serde_json::Value {
        let out = util::output(env.gbuild().args(["status", "--json", "--machine", m]));
        assert!(out.status.success());
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let mut lp = env
        .gbuild()
        .args(["run", "--rootless", "--offline", "--machine", "laptop"])
        .args(["--mirror", &env.url, "--interval", "1h"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("the failed first build", Duration::from_secs(300), || {
        status_of("laptop")["state"] == "failed" || lp.try_wait().unwrap().is_some()
    });
    assert!(
        lp.try_wait().unwrap().is_none(),
        "run exited after the failure"
    );
    let st = status_of("laptop");
    assert_eq!(
        st["last_pass"]["failed_package"], "app-misc/greetd-1.0",
        "{st}"
    );
    assert_eq!(st["last_pass"]["kind"], "bootstrap", "{st}");
    let log = st["last_pass"]["log"].as_str().unwrap();
    assert!(env.store.join("machines/laptop").join(log).is_file());
    let before = counts(&logs_named(&env, "laptop", "bootstrap-").concat()).0;
    assert!(
        before
            .iter()
            .any(|p| p.starts_with("dev-libs/libgreet-1.0")),
        "{before:?}"
    );
    let saved = laptop.join("etc/portage/savedconfig/app-misc");
    std::fs::create_dir_all(&saved).unwrap();
    std::fs::write(saved.join("greetd"), "#define GREETING \"Welcome\"\n").unwrap();
    let fixed = export_root(&env, &laptop, &s.path().join("laptop-fixed.tar"));
    let out = util::output(
        env.gbuild()
            .args(["machine", "import", "--name", "laptop"])
            .arg(&fixed),
    );
    assert!(out.status.success(), "{}", util::stderr(&out));
    assert!(
        util::stdout(&out).contains(&format!("in use by pid {}", lp.id())),
        "{}",
        util::stdout(&out)
    );
    let out = util::output(env.gbuild().args(["resume", "--machine", "laptop"]));
    assert!(out.status.success());
    wait_until(
        "the completed first build",
        Duration::from_secs(400),
        || {
            let st = status_of("laptop");
            (st["state"] == "waiting" && st["last_pass"]["result"] == "success")
                || lp.try_wait().unwrap().is_some()
        },
    );
    assert!(lp.try_wait().unwrap().is_none(), "run exited");
    lp.kill().unwrap();
    lp.wait().unwrap();
    let boots = logs_named(&env, "laptop", "bootstrap-");
    assert_eq!(boots.len(), 2);
    let (again, reused) = counts(&boots[1]);
    for p in &again {
        assert!(
            p.starts_with("app-misc/greetd-1.0") || !before.contains(p),
            "{p} compiled again: {again:?}"
        );
    }
    assert!(reused
        .iter()
        .any(|p| p.starts_with("dev-libs/libgreet-1.0")));

    // 2. A failing package: the loop idles as `failed`; fixing the config and resume finish it.
    //    The world also gains a module installed per language version without a slot operator
    //    and a program linking a library without a sub-slot (for the newer snapshot below).
    let cfg = env.machine().join("config");
    let world = cfg.join("var/lib/portage/world");
    let mut w = std::fs::read_to_string(&world).unwrap();
    w.push_str("app-misc/failer\napp-misc/quoter\ndev-plang/plang-yaml\n");
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
    //    The store's key was rotated before: the new packages carry the new key.
    let out = util::output(env.gbuild().args(["key", "--rotate"]));
    assert!(out.status.success(), "{}", util::stderr(&out));
    let key2 = util::stdout(&out).trim().to_string();
    assert_ne!(key2, key1);
    assert_eq!(key_fingerprint(&env), key2);
    // The host's installed state travels with its bundle: a host with the builder's
    // configuration and what host1 installed from the binaries in step 1 (plang 5.38 and the
    // binding built against it). Every pass now ends with this host's upgrade, simulated.
    let slothost = hostroot_from_builder(&env, &s.path().join("slothost"), "20260101");
    let cp = util::output(
        Command::new("cp")
            .arg("-a")
            .arg(s.path().join("host1/upper/var/db"))
            .arg(slothost.join("var")),
    );
    assert!(cp.status.success(), "{}", util::stderr(&cp));
    assert!(slothost
        .join("var/db/pkg/dev-lang/plang-5.38.2/SLOT")
        .is_file());
    let bs = export_root(&env, &slothost, &s.path().join("slothost.tar"));
    import(&env, "default", &bs);
    env.fetch(Some("20260201"));
    let out = util::output(env.gbuild().args(["update"]));
    assert!(out.status.success(), "{}", util::stderr(&out));
    // The passes of this step compile on two distcc helpers run from the machine's own image
    // (the fixture's stand-in stage3 carries its distribution's distcc); a client outside a
    // helper's --allow range is turned away.
    let mut h1 = helpers::Helper::start(&env, "default");
    let mut h2 = helpers::Helper::start(&env, "default");
    helpers::use_helpers(&env, "default", &[h1.host(), h2.host()]);
    helpers::refuses_outside_allow(&h2);
    assert_eq!(
        helpers::states(&env),
        vec![(h1.host(), "up".into()), (h2.host(), "up".into())]
    );
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
    // The killed pass's steps are in its state as far as it got: the world update running.
    let killed = pass_steps(&env.status());
    assert_eq!(
        killed,
        [
            "config skipped",
            "drift done",
            "helpers done",
            "world running"
        ],
        "{killed:?}"
    );
    // plang's compile went to the first helper (distcc fills its hosts in order).
    assert!(
        h1.jobs().iter().any(|j| j.contains("plang.c")),
        "no plang.c job in {}:\n{}",
        h1.log.display(),
        h1.log()
    );
    // The first helper goes down: the restart pass warns, leaves it out and still succeeds; the
    // binding's compile goes to the second one.
    h1.stop();
    assert_eq!(
        helpers::states(&env),
        vec![(h1.host(), "down".into()), (h2.host(), "up".into())]
    );
    let out = util::output(env.gbuild().args(["build", "--once"]));
    let log = env.newest_log();
    assert!(
        out.status.success(),
        "{}\n{}",
        util::stderr(&out),
        log.lines().rev().take(40).collect::<Vec<_>>().join("\n")
    );
    // The restart ran every step in order (the configuration was applied by `update`); the
    // killed pass's world update makes it a changed pass: the cleanup half and the publication.
    let st = env.status();
    assert_eq!(
        pass_steps(&st),
        [
            "config skipped",
            "drift done",
            "helpers done",
            "world done",
            "cleanup done",
            "publish done"
        ],
        "{st}"
    );
    assert!(log.contains(">>> gbuild: step world (build)"), "{log}");
    let warning = format!("gbuild: warning: distcc helper {} is down", h1.host());
    assert!(log.contains(&warning), "{log}");
    assert!(util::stderr(&out).contains(&warning));
    assert!(
        h2.jobs().iter().any(|j| j.contains("binding.c")),
        "no binding.c job in {}:\n{}",
        h2.log.display(),
        h2.log()
    );
    assert!(!h1.jobs().iter().any(|j| j.contains("binding.c")));
    h2.stop();
    helpers::use_helpers(&env, "default", &[]);
    let (built, _) = counts(&log);
    assert!(
        !built.iter().any(|p| p.starts_with("dev-lang/plang-5.40.0")),
        "plang compiled twice: {built:?}"
    );
    let index = std::fs::read_to_string(env.machine().join("published/Packages")).unwrap();
    assert!(index.contains("CPV: dev-lang/plang-5.40.0\n"));
    // The gate: that host would upgrade the language and rebuild the binding, both from this
    // builder's binaries, nothing compiled, no conflict.
    let st = env.status();
    assert_eq!(st["gate"]["result"], "passed", "{st}");
    let merges: Vec<&str> = st["gate"]["merges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    for cpv in ["dev-lang/plang-5.40.0", "dev-plang/plang-binding-1.0"] {
        assert!(
            merges
                .iter()
                .any(|m| m.starts_with("[binary") && m.contains(&format!("] {cpv}-"))),
            "{cpv} from a binary: {merges:?}"
        );
    }
    assert!(
        merges
            .iter()
            .any(|m| m.contains("dev-lang/plang-5.40.0") && m.contains("[5.38.2")),
        "{merges:?}"
    );
    let (_, plang) = signing::stanza_of(&index, "dev-lang/plang-5.40.0");
    let plang = env.machine().join("binpkgs").join(plang);
    // Compiled on a helper, and nothing of the helpers in the package: no DISTCC_* variable
    // and no helper address in its metadata (the environment the host's pkg_* phases source
    // included), the builder's own configuration (config/) untouched.
    for (name, data) in helpers::gpkg_metadata(&plang) {
        let text = String::from_utf8_lossy(&data);
        assert!(!text.contains("DISTCC_"), "{name}: {text}");
        assert!(!text.contains(&format!(":{}", h1.port)), "{name}");
        assert!(!text.contains(&format!(":{}", h2.port)), "{name}");
    }
    for e in walk(&env.machine().join("config")) {
        let text = String::from_utf8_lossy(&std::fs::read(&e).unwrap()).into_owned();
        assert!(!text.contains("distcc"), "{}: {text}", e.display());
    }
    assert_eq!(
        signing::signer(&env.store, &plang).as_deref(),
        Some(&key2[..])
    );
    let (_, hello) = signing::stanza_of(&index, "app-misc/hello-1.0");
    let hello = env.machine().join("binpkgs").join(hello);
    assert_eq!(
        signing::signer(&env.store, &hello).as_deref(),
        Some(&key1[..])
    );
    // The binding was rebuilt against the new slot (two instances, or one newer). The host
    // trusted the old key and now the new one too.
    let host = host_install(&env, &s, "host2", "20260201", &serve, &[&key1, &key2]);
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
    // Superseded builds of the same package and USE are pruned: one binding binpkg left.
    assert_eq!(
        index.matches("CPV: dev-plang/plang-binding-1.0\n").count(),
        1,
        "{index}"
    );
    // The cleanup half rebuilt what the world update could not see.
    let st = env.status();
    let step = |name: &str| -> Vec<String> {
        st["last_pass"]["cleanup"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["name"] == name)
            .flat_map(|c| c["items"].as_array().unwrap().clone())
            .map(|i| i.as_str().unwrap().to_string())
            .collect()
    };
    assert!(
        step("language-rebuild")
            .iter()
            .any(|p| p.starts_with("dev-plang/plang-yaml-1.0")),
        "{st}"
    );
    assert!(
        step("preserved-rebuild")
            .iter()
            .any(|p| p.starts_with("app-misc/quoter-1.0")),
        "{st}"
    );
    // The language upgrade: the module without a slot operator now sits under 5.40.
    let hostup = s.path().join("host2/upper");
    assert!(hostup.join("usr/lib64/plang/5.40/vendor/yaml.pl").is_file());
    assert!(!hostup.join("usr/lib64/plang/5.38").exists());
    let out = util::output(env.gbuild().args([
        "shell",
        "--",
        "/bin/sh",
        "-c",
        "test -f /usr/lib64/plang/5.40/vendor/yaml.pl && ! test -e /usr/lib64/plang/5.38",
    ]));
    assert!(
        out.status.success(),
        "plang-yaml left under 5.38 in the builder"
    );
    // The soname bump: nothing links the preserved old library, on the builder or the host.
    let out = util::output(env.gbuild().args([
        "shell",
        "--",
        "/bin/sh",
        "-c",
        "! grep -q '[[:alnum:]]' /var/lib/portage/preserved_libs_registry && \
         ! test -e /usr/lib64/libquote.so.1 && scanelf -qRn /usr/bin /usr/lib64",
    ]));
    let linked = util::stdout(&out);
    assert!(out.status.success(), "preserved libraries left: {linked}");
    assert!(!linked.contains("libquote.so.1"), "{linked}");
    assert!(linked.contains("libquote.so.2"), "{linked}");
    assert!(file_contains(
        &hostup.join("usr/bin/quoter"),
        "libquote.so.2"
    ));
    assert!(!file_contains(
        &hostup.join("usr/bin/quoter"),
        "libquote.so.1"
    ));
    assert!(!hostup.join("usr/lib64/libquote.so.1").exists());

    // Generations: the previous one served again byte for byte, and forward; a host that
    // follows the tag still gets generation 1.
    generations::rollback_and_tag_host(&env, &s, &serve, &first, &[&key1]);

    // 4. The machine takes an imported host configuration (the builder's own, exported from a
    //    host-like root, plus a package whose binary needs Linux 9.0 while the host runs 6.1).
    let hostroot = hostroot_from_builder(&env, &s.path().join("hostroot"), "20260201");
    // The host also dropped app-misc/failer from its world: depclean removes it from the builder.
    let world = hostroot.join("var/lib/portage/world");
    let mut w: String = std::fs::read_to_string(&world)
        .unwrap()
        .lines()
        .filter(|l| *l != "app-misc/failer")
        .map(|l| format!("{l}\n"))
        .collect();
    w.push_str("app-misc/abinote\n");
    std::fs::write(&world, w).unwrap();
    let b1 = export_root(&env, &hostroot, &s.path().join("laptop1.tar"));
    import(&env, "default", &b1);
    // The old key is withdrawn: the next publication signs its packages again.
    let out = util::output(env.gbuild().args(["key", "--withdraw", &key1]));
    assert!(out.status.success(), "{}", util::stderr(&out));
    let out = util::output(env.gbuild().args(["build", "--once"]));
    assert!(
        out.status.success(),
        "{}\n{}",
        util::stderr(&out),
        env.newest_log()
    );
    assert_eq!(
        signing::signer(&env.store, &hello).as_deref(),
        Some(&key2[..])
    );
    let key_asc = http_get(&format!("{}/default/key.asc", serve.url));
    assert_eq!(gbuild::sign::parse_public(&key_asc).unwrap().len(), 1);
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
    let depcleaned: Vec<&serde_json::Value> = st["last_pass"]["cleanup"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["name"] == "depclean")
        .collect();
    assert!(
        depcleaned[0]["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i == "app-misc/failer-1.0"),
        "{st}"
    );
    assert!(!published.contains("app-misc/failer"), "{published}");
    // The status page shows the cleanup steps of the last pass.
    let page = http_get(&format!("{}/", serve.url));
    assert!(page.contains("depclean: 1 (app-misc/failer-1.0)"), "{page}");

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

    // A host whose installed goodbye was built with USE=wave, which its configuration no
    // longer sets (and that wants greetd now), while the builder, built past the drift, keeps
    // the flag: the host's upgrade would compile goodbye. The gate holds the pass, names the
    // package and the flag, and published/ stays as it was.
    let fixture_use = hostroot.join("etc/portage/package.use/fixture");
    let text = std::fs::read_to_string(&fixture_use).unwrap();
    assert!(text.contains("app-misc/goodbye wave"), "{text}");
    std::fs::write(&fixture_use, text.replace("app-misc/goodbye wave\n", "")).unwrap();
    let world = hostroot.join("var/lib/portage/world");
    let w: String = std::fs::read_to_string(&world)
        .unwrap()
        .lines()
        .filter(|l| *l != "app-misc/abinote")
        .map(|l| format!("{l}\n"))
        .chain(["app-misc/greetd\n".to_string()])
        .collect();
    std::fs::write(&world, w).unwrap();
    let saved = hostroot.join("etc/portage/savedconfig/app-misc");
    std::fs::create_dir_all(&saved).unwrap();
    std::fs::write(saved.join("greetd"), "#define GREETING \"Hi\"\n").unwrap();
    let cp = util::output(
        Command::new("cp")
            .arg("-a")
            .arg(s.path().join("host2/upper/var/db"))
            .arg(hostroot.join("var")),
    );
    assert!(cp.status.success(), "{}", util::stderr(&cp));
    let use_of = std::fs::read_to_string(hostroot.join("var/db/pkg/app-misc/goodbye-1.0/USE"));
    assert!(use_of.unwrap().split_whitespace().any(|f| f == "wave"));
    let b2 = export_root(&env, &hostroot, &s.path().join("laptop2.tar"));
    import(&env, "default", &b2);
    // The configuration applied first, then the builder drifts.
    let out = util::output(env.gbuild().args(["update"]));
    assert!(out.status.success(), "{}", util::stderr(&out));
    let out = util::output(env.gbuild().args([
        "shell",
        "--",
        "/bin/sh",
        "-c",
        "echo 'app-misc/goodbye wave' > /etc/portage/package.use/zz-local",
    ]));
    assert!(out.status.success());
    let before = std::fs::read(env.machine().join("published/Packages")).unwrap();
    let out = util::output(
        env.gbuild()
            .env("GBUILD_ALLOW_DRIFT", "1")
            .args(["build", "--once"]),
    );
    let err = util::stderr(&out);
    assert_eq!(out.status.code(), Some(3), "held pass: {err}");
    let st = env.status();
    assert_eq!(st["state"], "held", "{st}");
    assert_eq!(st["last_pass"]["result"], "held", "{st}");
    assert_eq!(st["gate"]["result"], "held", "{st}");
    let problems = st["gate"]["problems"].as_array().unwrap();
    assert!(
        problems
            .iter()
            .any(|p| p["package"] == "app-misc/goodbye-1.0"
                && p["reason"].as_str().unwrap().contains("wave")),
        "{st}"
    );
    assert!(
        err.contains("gate: app-misc/goodbye-1.0:") && err.contains("wave"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(env.machine().join("published/Packages")).unwrap(),
        before,
        "published/ changed"
    );
    let index = std::fs::read_to_string(env.machine().join("binpkgs/Packages")).unwrap();
    assert!(index.contains("CPV: app-misc/greetd-1.0\n"), "greetd built");
    let text = util::stdout(&util::output(env.gbuild().args(["status"])));
    assert!(
        text.contains("gate:     held") && text.contains("app-misc/goodbye-1.0: "),
        "{text}"
    );
    let api: serde_json::Value =
        serde_json::from_str(&http_get(&format!("{}/api/status", serve.url))).unwrap();
    let mine = api["machines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "default")
        .unwrap();
    assert_eq!(mine["state"]["gate"]["result"], "held", "{api}");
    let page = http_get(&format!("{}/", serve.url));
    assert!(
        page.contains("publish gate") && page.contains("app-misc/goodbye-1.0: "),
        "{page}"
    );
    // gbuild.toml can publish a held pass anyway; status says so.
    std::fs::write(env.store.join("gbuild.toml"), "publish_held = true\n").unwrap();
    let out = util::output(
        env.gbuild()
            .env("GBUILD_ALLOW_DRIFT", "1")
            .args(["build", "--once"]),
    );
    assert!(out.status.success(), "{}", util::stderr(&out));
    let st = env.status();
    assert_eq!(st["gate"]["result"], "published-anyway", "{st}");
    let published = std::fs::read_to_string(env.machine().join("published/Packages")).unwrap();
    assert!(
        published.contains("CPV: app-misc/greetd-1.0\n"),
        "{published}"
    );
    std::fs::remove_file(env.store.join("gbuild.toml")).unwrap();

    secret_nowhere(&env, &s, &serve);

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
    import(&env, "webrsync", &bl);
    let list = util::stdout(&util::output(env.gbuild().args(["machine", "list"])));
    let row = list.lines().find(|l| l.starts_with("webrsync ")).unwrap();
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
    let out = run_machine("webrsync");
    assert!(out.status.success(), "run webrsync: {}", util::stderr(&out));
    assert!(
        util::stdout(&out).contains("gentoo-20260201.tar.xz"),
        "{}",
        util::stdout(&out)
    );
    let st = util::output(
        env.gbuild()
            .args(["status", "--machine", "webrsync", "--json"]),
    );
    let st: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(st["last_pass"]["result"], "success", "{st}");
    assert_eq!(st["snapshot"], "20260201", "{st}");
    assert_eq!(st["drift"], serde_json::json!([]), "{st}");
    // `gbuild diff` of the builder (its configuration and the tree it builds on) against the
    // imported host: no snapshot line, nothing at all.
    let bview = s.path().join("laptop-builder");
    builder_config(&env, "webrsync", &bview);
    std::fs::create_dir_all(bview.join("var/db/repos")).unwrap();
    std::os::unix::fs::symlink(
        env.store.join("repos/20260201"),
        bview.join("var/db/repos/gentoo"),
    )
    .unwrap();
    let bb = export_root(&env, &bview, &s.path().join("laptop-builder.tar"));
    let out = util::output(
        env.gbuild()
            .args(["diff", "--machine", "webrsync"])
            .arg(&bb),
    );
    let text = util::stdout(&out);
    assert!(!text.contains("tree snapshot"), "{text}");
    assert_eq!(out.status.code(), Some(0), "{text}{}", util::stderr(&out));

    // What serve publishes names the snapshot by its file date, and the host's own
    // emerge-webrsync, given that date as the repos.conf comment says, rebuilds the host's tree
    // exactly (starting from the next day's tree).
    let info: serde_json::Value =
        serde_json::from_str(&http_get(&format!("{}/webrsync/snapshot.info", serve.url))).unwrap();
    assert_eq!(info["date"], "20260201", "{info}");
    assert_eq!(info["file"], "gentoo-20260201.tar.xz", "{info}");
    let repos_conf = http_get(&format!("{}/webrsync/repos.conf", serve.url));
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

    // 7. Retention: what nothing references goes, what is served stays.
    generations::gc(&env, &s, &serve, &first);
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
pub(crate) fn untar_snapshot(tarball: &Path, dest: &Path) {
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
    let out = util::host_root_exec(
        env.gbuild(),
        &stage3_layer(env),
        &dir.join("upper"),
        &[
            (snapshots, "/run/snapshots", true),
            (host_tree, "/run/host-tree", true),
            (&conf, "/run/conf", true),
        ],
        &[],
        &format!(
            "set -e; tar --strip-components=1 -xJf /run/snapshots/gentoo-20260202.tar.xz \
             -C /var/db/repos/gentoo && \
             cp /run/conf/gentoo.conf /etc/portage/repos.conf/gentoo.conf && \
             {cmd} --no-pgp-verify 2>&1 && \
             diff -r /run/host-tree /var/db/repos/gentoo 2>&1 && echo 'SAME TREE'"
        ),
    );
    let text = util::stdout(&out);
    assert!(
        out.status.success(),
        "emerge-webrsync host failed:\n{text}{}",
        util::stderr(&out)
    );
    text
}

/// The steps of `status`'s last pass as `NAME RESULT`, in order.
fn pass_steps(st: &serde_json::Value) -> Vec<String> {
    st["last_pass"]["steps"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| {
                    format!(
                        "{} {}",
                        r["name"].as_str().unwrap_or(""),
                        r["result"].as_str().unwrap_or("")
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}
