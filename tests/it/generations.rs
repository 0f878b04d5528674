//! Published generations and store retention, checked in the builder scenario's store (real
//! emerge, real gpkgs, `gbuild serve` over HTTP): `builder.rs` calls these at its steps.
//!
//! - the first publication is generation 1, served, and can be tagged; `/<M>@<tag>/` serves it;
//! - `publish rollback` serves the previous generation's `Packages` byte for byte, also to a
//!   client that holds the newer index (no 304), with the binpkgs only it lists (pruned from
//!   PKGDIR since, kept by the generation's hardlinks), and rolls forward again;
//! - a host following the tag installs that generation's packages after newer passes, on the
//!   tree snapshot the tag serves;
//! - `gc --dry-run` then `gc` on a store with four snapshots (one only a tagged generation
//!   needs), two stage3s, an old builder image, superseded binpkgs in old generations and crash
//!   leftovers: the dry run lists what goes with sizes and removes nothing; the collection
//!   removes exactly that; everything still served is still there; the builder still builds; a
//!   second collection removes nothing.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::builder::{self, counts, Env, Serve};
use crate::mirror;
use crate::util::{self, Scratch};

/// A response: status, headers (lowercase names), body bytes.
pub(crate) struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// GET `path` from `serve` with extra headers.
pub(crate) fn get(serve: &Serve, path: &str, headers: &[(&str, &str)]) -> Resp {
    let rest = serve.url.strip_prefix("http://").unwrap();
    let host = rest.split('/').next().unwrap();
    let mut c = std::net::TcpStream::connect(host).unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    c.write_all(req.as_bytes()).unwrap();
    let mut buf = Vec::new();
    c.read_to_end(&mut buf).unwrap();
    let split = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect::<Vec<_>>();
    let mut body = buf[split + 4..].to_vec();
    if headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"))
    {
        body = dechunk(&body);
    }
    Resp {
        status,
        headers,
        body,
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let nl = b.windows(2).position(|w| w == b"\r\n").unwrap();
        let n = usize::from_str_radix(std::str::from_utf8(&b[..nl]).unwrap().trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[nl + 2..nl + 2 + n]);
        b = &b[nl + 2 + n + 2..];
    }
}

fn ok(serve: &Serve, path: &str) -> Vec<u8> {
    let r = get(serve, path, &[]);
    assert_eq!(
        r.status,
        200,
        "GET {path}: {}",
        String::from_utf8_lossy(&r.body)
    );
    r.body
}

fn publish(env: &Env, args: &[&str]) -> String {
    let out = util::output(env.gbuild().arg("publish").args(args));
    assert!(
        out.status.success(),
        "publish {args:?}: {}",
        util::stderr(&out)
    );
    util::stdout(&out)
}

/// `publish list --json` of `machine`.
fn list(env: &Env, machine: &str) -> Vec<serde_json::Value> {
    let out = publish(env, &["--machine", machine, "list", "--json"]);
    serde_json::from_str(&out).unwrap()
}

fn served(gens: &[serde_json::Value]) -> u64 {
    gens.iter()
        .find(|g| g["served"] == true)
        .and_then(|g| g["generation"].as_u64())
        .expect("a served generation")
}

fn generation_dir(env: &Env, machine: &str, id: u64) -> PathBuf {
    env.store
        .join("machines")
        .join(machine)
        .join("generations")
        .join(id.to_string())
}

/// `(PATH, SIZE, SHA1)` of every stanza of an index.
fn entries(index: &[u8]) -> Vec<(String, u64, String)> {
    let text = String::from_utf8_lossy(index);
    text.split("\n\n")
        .filter(|st| st.lines().any(|l| l.starts_with("CPV: ")))
        .map(|st| {
            let f = |k: &str| {
                st.lines()
                    .find_map(|l| l.strip_prefix(k))
                    .unwrap_or_else(|| panic!("{k} in {st}"))
                    .to_string()
            };
            (f("PATH: "), f("SIZE: ").parse().unwrap(), f("SHA1: "))
        })
        .collect()
}

fn sha1_hex(b: &[u8]) -> String {
    use sha1::Digest;
    hex::encode(sha1::Sha1::digest(b))
}

/// Every binpkg the index at `/<base>/Packages` lists is served, with its SIZE and SHA1.
fn all_served(serve: &Serve, base: &str) -> usize {
    let index = ok(serve, &format!("/{base}/Packages"));
    let e = entries(&index);
    for (path, size, sha1) in &e {
        let body = ok(serve, &format!("/{base}/{path}"));
        assert_eq!(body.len() as u64, *size, "/{base}/{path}");
        assert_eq!(&sha1_hex(&body), sha1, "/{base}/{path}");
    }
    e.len()
}

/// After the first publication: generation 1 is served and tagged `first`, and `/default@first/`
/// serves it. Returns its index's bytes.
pub(crate) fn tag_first(env: &Env, serve: &Serve) -> Vec<u8> {
    let gens = list(env, "default");
    assert_eq!(gens.len(), 1, "{gens:?}");
    assert_eq!(served(&gens), 1);
    let first = ok(serve, "/default/Packages");
    assert_eq!(
        first,
        std::fs::read(generation_dir(env, "default", 1).join("Packages")).unwrap()
    );
    assert_eq!(publish(env, &["tag", "first"]).trim(), "1");
    assert_eq!(ok(serve, "/default@first/Packages"), first);
    let conf = String::from_utf8(ok(serve, "/default@first/binrepos.conf")).unwrap();
    assert!(conf.contains("[gbuild-default-first]"), "{conf}");
    assert!(
        conf.contains(&format!("sync-uri = {}/default@first\n", serve.url)),
        "{conf}"
    );
    assert_eq!(get(serve, "/default@nosuch/Packages", &[]).status, 404);
    assert_eq!(get(serve, "/default@../Packages", &[]).status, 404);
    first
}

/// After newer passes: `publish rollback` serves the previous generation byte for byte, with
/// the binpkgs only it lists; then forward again. A host following the tag installs its
/// packages (the older language version) from binaries only.
pub(crate) fn rollback_and_tag_host(
    env: &Env,
    s: &Scratch,
    serve: &Serve,
    first: &[u8],
    fprs: &[&str],
) {
    let gens = list(env, "default");
    let cur = served(&gens);
    assert_eq!(
        Some(cur),
        gens.last().and_then(|g| g["generation"].as_u64())
    );
    let prev = gens
        .iter()
        .rev()
        .filter_map(|g| g["generation"].as_u64())
        .find(|g| *g < cur)
        .expect("an older generation");
    let newer = get(serve, "/default/Packages", &[]);
    assert_eq!(newer.status, 200);
    let newer_modified = newer.header("last-modified").unwrap().to_string();
    let prev_bytes = std::fs::read(generation_dir(env, "default", prev).join("Packages")).unwrap();
    assert_ne!(prev_bytes, newer.body);

    assert_eq!(publish(env, &["rollback"]).trim(), prev.to_string());
    // A host holding the newer index asks with its date: it gets the older one, not a 304.
    let r = get(
        serve,
        "/default/Packages",
        &[("If-Modified-Since", &newer_modified)],
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body, prev_bytes,
        "the previous generation's index, byte for byte"
    );
    // Its binpkgs, also those Portage pruned from PKGDIR since (the older plang).
    let pkgdir = env.machine().join("binpkgs");
    let gone: Vec<String> = entries(&prev_bytes)
        .into_iter()
        .map(|(p, _, _)| p)
        .filter(|p| !pkgdir.join(p).exists())
        .collect();
    assert!(
        gone.iter()
            .any(|p| p.starts_with("dev-lang/plang/plang-5.38")),
        "{gone:?}"
    );
    assert!(all_served(serve, "default") > 0);
    let listed = list(env, "default");
    assert_eq!(served(&listed), prev);

    // Forward again.
    assert_eq!(
        publish(env, &["rollback", &cur.to_string()]).trim(),
        cur.to_string()
    );
    assert_eq!(ok(serve, "/default/Packages"), newer.body);

    // The tag still serves generation 1, whose tree snapshot is the older one; a host that
    // follows the tag (its binrepos.conf, its snapshot) installs from binaries only.
    assert_eq!(ok(serve, "/default@first/Packages"), first);
    let info: serde_json::Value =
        serde_json::from_slice(&ok(serve, "/default@first/snapshot.info")).unwrap();
    assert_eq!(info["date"], "20260101", "{info}");
    let tarball = s.path().join("first-snapshot.tar.xz");
    std::fs::write(&tarball, ok(serve, "/default@first/snapshot")).unwrap();
    let tree = s.path().join("first-tree");
    std::fs::create_dir_all(&tree).unwrap();
    builder::untar_snapshot(&tarball, &tree);
    let (ok_, text) = builder::host_emerge_at(
        env,
        s,
        "tag-host",
        &tree,
        "default@first",
        serve,
        fprs,
        "--oneshot dev-lang/plang dev-plang/plang-binding app-misc/hello",
    );
    assert!(ok_, "host following the tag:\n{text}");
    let (built, binary) = counts(&text);
    assert!(built.is_empty(), "compiled {built:?}");
    assert!(
        binary
            .iter()
            .any(|p| p.starts_with("dev-lang/plang-5.38.2")),
        "{binary:?}"
    );
}

/// One line of `gc` output: (kind, path relative to the store).
fn gc_lines(out: &str) -> BTreeSet<(String, String)> {
    out.lines()
        .map(|l| {
            let kind = l.split_whitespace().next().unwrap().to_string();
            let path = l.rsplit("  ").next().unwrap().trim().to_string();
            (kind, path)
        })
        .collect()
}

fn has(lines: &BTreeSet<(String, String)>, kind: &str, path: &str) -> bool {
    lines.contains(&(kind.to_string(), path.to_string()))
}

/// The end of the scenario: retention.
pub(crate) fn gc(env: &Env, s: &Scratch, serve: &Serve, first: &[u8]) {
    let store = &env.store;
    // Keep two generations per machine (besides the served and tagged ones).
    std::fs::write(store.join("gbuild.toml"), "keep = 2\n").unwrap();

    // A second stage3: once fetched from another mirror, then superseded by the fixture's
    // again (with that mirror's own snapshot, 20260102, used by nothing).
    let gpg = mirror::Gpg::new(&s.path().join("gpg2"));
    let root = s.path().join("mirror2/root");
    std::fs::create_dir_all(&root).unwrap();
    let m2 = mirror::Mirror::build(&root, &gpg, 64 * 1024);
    let server2 = mirror::Server::start(&root);
    let out = util::output(
        env.gbuild()
            .args(["fetch", "--mirror", &server2.url, "--keyring"])
            .arg(&m2.keyring)
            .args(["--trust", &mirror::keys().main_fpr]),
    );
    assert!(out.status.success(), "fetch: {}", util::stderr(&out));
    env.fetch(None);
    let old_stage3 = format!("downloads/{}", mirror::stage3_name());
    assert!(store.join(&old_stage3).is_file());
    // The laptop machine moves to the newest tree: nothing builds on 20260101 any more, only
    // the tagged generation 1 names its snapshot (served as a tarball).
    let out = util::output(env.gbuild().args(["update", "--machine", "laptop"]));
    assert!(out.status.success(), "{}", util::stderr(&out));
    // An old builder image (the other stage3 unpacked as the machine's earlier image).
    let t = s.path().join("old-stage3.tar.xz");
    std::fs::write(&t, &m2.stage3).unwrap();
    let out = util::output(
        env.gbuild()
            .args(["layer", "unpack"])
            .arg(&t)
            .args(["--image", "default/previous"]),
    );
    assert!(out.status.success(), "layer unpack: {}", util::stderr(&out));
    let old_layer = util::stdout(&out).trim().to_string();
    assert_eq!(old_layer.len(), 64, "{old_layer}");
    // Crash leftovers (the store's temporary names, of a process that is gone): a half-written
    // generation, a publication's symlink; and a partial download.
    let dead = dead_pid();
    let mdir = env.machine();
    let half = mdir.join(format!("generations/.tmp-generation-{dead}-0"));
    std::fs::create_dir_all(half.join("binpkgs")).unwrap();
    std::fs::write(half.join("Packages"), "half").unwrap();
    let link = format!(".tmp-published-{dead}-1");
    std::os::unix::fs::symlink("generations/1", mdir.join(&link)).unwrap();
    std::fs::write(store.join("downloads/gentoo-20260301.tar.xz.partial"), "x").unwrap();

    let gens = list(env, "default");
    let cur = served(&gens);
    let ids: Vec<u64> = gens
        .iter()
        .filter_map(|g| g["generation"].as_u64())
        .collect();
    assert!(ids.len() >= 4, "{ids:?}");
    let kept: BTreeSet<u64> = ids.iter().rev().take(2).copied().chain([1, cur]).collect();
    let pruned: Vec<u64> = ids.iter().copied().filter(|i| !kept.contains(i)).collect();
    // Superseded binpkgs only a pruned generation still holds (their last link).
    let only_pruned: Vec<PathBuf> = pruned
        .iter()
        .flat_map(|id| util_files(&generation_dir(env, "default", *id).join("binpkgs")))
        .filter(|p| {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(p).unwrap().nlink() == 1
        })
        .collect();

    assert!(!only_pruned.is_empty(), "{pruned:?}");

    let out = util::output(env.gbuild().args(["gc", "--dry-run"]));
    assert!(out.status.success(), "{}", util::stderr(&out));
    let dry = util::stdout(&out);
    let lines = gc_lines(&dry);
    for (kind, path) in [
        ("download", old_stage3.as_str()),
        ("download", &format!("{old_stage3}.asc")),
        ("download", "downloads/snapshot-20260102.json"),
        ("download", "downloads/gentoo-20260102.tar.xz"),
        ("download", "downloads/gentoo-20260301.tar.xz.partial"),
        ("tree", "repos/20260101"),
        ("image", "images/default/previous.json"),
        ("layer", &format!("layers/{old_layer}")),
        (
            "leftover",
            &format!("machines/default/generations/.tmp-generation-{dead}-0"),
        ),
        ("leftover", &format!("machines/default/{link}")),
    ] {
        assert!(has(&lines, kind, path), "{kind} {path} not in:\n{dry}");
    }
    for id in &pruned {
        let p = format!("machines/default/generations/{id}");
        assert!(has(&lines, "generation", &p), "{p} not in:\n{dry}");
    }
    // What machines, the served and tagged generations and the next unpack need stays.
    let fixture_stage3 = std::fs::read_dir(store.join("downloads"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("stage3-amd64-openrc-20260111"))
        .unwrap();
    for keep in [
        format!("downloads/{fixture_stage3}"),
        "downloads/gentoo-20260101.tar.xz".into(),
        "downloads/snapshot-20260101.json".into(),
        "repos/20260201".into(),
        "repos/20260202".into(),
        "machines/default/generations/1".into(),
        format!("machines/default/generations/{cur}"),
    ] {
        assert!(!lines.iter().any(|(_, p)| *p == keep), "{keep} in:\n{dry}");
    }
    // Sizes: the old stage3's line says its size on disk.
    let size_line = dry.lines().find(|l| l.ends_with(&old_stage3)).unwrap();
    assert!(!size_line.contains(" 0 B "), "{size_line}");
    // A dry run removes nothing.
    for (_, p) in &lines {
        assert!(
            std::fs::symlink_metadata(store.join(p)).is_ok(),
            "{p} removed by a dry run"
        );
    }
    let err = util::stderr(&out);
    assert!(err.contains("would remove"), "{err}");

    let out = util::output(env.gbuild().args(["gc"]));
    assert!(out.status.success(), "{}", util::stderr(&out));
    assert_eq!(
        gc_lines(&util::stdout(&out)),
        lines,
        "gc removed what the dry run listed"
    );
    for (_, p) in &lines {
        assert!(
            std::fs::symlink_metadata(store.join(p)).is_err(),
            "{p} still there"
        );
    }
    for p in &only_pruned {
        assert!(!p.exists(), "{}", p.display());
    }
    assert!(store.join(format!("downloads/{fixture_stage3}")).is_file());

    // Everything still served is still there: the machines' indexes with every binpkg and
    // their snapshots, the tag.
    for base in ["default", "default@first", "laptop", "webrsync"] {
        assert!(all_served(serve, base) > 0, "{base}");
        let tarball = get(serve, &format!("/{base}/snapshot"), &[]);
        assert_eq!(tarball.status, 200, "/{base}/snapshot");
    }
    assert_eq!(ok(serve, "/default@first/Packages"), first);
    let listed: Vec<u64> = list(env, "default")
        .iter()
        .filter_map(|g| g["generation"].as_u64())
        .collect();
    assert_eq!(listed.iter().copied().collect::<BTreeSet<_>>(), kept);

    // The builder still builds (once the drift made earlier is undone), and a second
    // collection finds nothing to remove.
    let out =
        util::output(
            env.gbuild()
                .args(["shell", "--", "rm", "/etc/portage/package.use/zz-local"]),
        );
    assert!(out.status.success(), "{}", util::stderr(&out));
    let out = util::output(env.gbuild().args(["build", "--once"]));
    assert!(out.status.success(), "{}", util::stderr(&out));
    let out = util::output(env.gbuild().args(["gc"]));
    assert!(out.status.success(), "{}", util::stderr(&out));
    assert_eq!(util::stdout(&out), "", "second gc removed something");
    assert!(
        util::stderr(&out).contains("nothing to remove"),
        "{}",
        util::stderr(&out)
    );
}

/// A pid no process has (the highest the kernel hands out, or below it).
fn dead_pid() -> u32 {
    let max: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(32768);
    (2..max)
        .rev()
        .find(|p| !Path::new(&format!("/proc/{p}")).exists())
        .unwrap()
}

/// Every regular file under `dir`.
fn util_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}
