//! `gbuild serve` against a store laid out as the build loop leaves it: a PKGDIR with published,
//! in-progress and held-back binpkgs, a published index in Portage's format, state.json, a log and
//! a snapshot. Requests are written by hand on a TCP socket so that nothing normalises the paths
//! the traversal tests send.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use md5::Digest;

use crate::util::{self, Scratch};

const SAMPLE_PACKAGES: &str = include_str!("../data/gentoo-formats/Packages.gbp-fl-test-fixture");
const SECRET: &str = "TOPSECRET-outside-the-served-tree";
const MTDEV: &str = "sys-libs/mtdev/mtdev-1.1.7-1.gpkg.tar";
const HELLO: &str = "app-misc/hello/hello-1.0-1.gpkg.tar";
const EVIL: &str = "app-misc/evil/evil-1-1.gpkg.tar";
const IN_PROGRESS: &str = "app-misc/newer/newer-2.0-1.gpkg.tar";
const HELD_BACK: &str = "dev-libs/needs-glibc/needs-glibc-1-1.gpkg.tar";
const SNAP: &str = "20260101";

/// Deterministic filler bytes.
fn bytes(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| {
            (i as u32)
                .wrapping_mul(2_654_435_761)
                .rotate_left(seed as u32 % 31) as u8
                ^ seed
        })
        .collect()
}

/// A package stanza in the style of the sample (the keys Portage writes, sorted).
fn stanza(cpv: &str, path: &str, size: usize) -> String {
    format!(
        "BUILD_ID: 1\nBUILD_TIME: 1767225600\nCPV: {cpv}\nDEFINED_PHASES: compile install\n\
         EAPI: 8\nKEYWORDS: amd64\nLICENSE: MIT\nMD5: 00000000000000000000000000000000\n\
         PATH: {path}\nSHA1: 0000000000000000000000000000000000000000\nSIZE: {size}\n\
         USE: abi_x86_64 amd64 elibc_glibc kernel_linux\nMTIME: 1767225601\nREPO: gentoo\n\n"
    )
}

struct Store {
    _scratch: Scratch,
    root: PathBuf,
}

impl Store {
    fn machine(&self, m: &str) -> PathBuf {
        self.root.join("machines").join(m)
    }
    fn pkg(&self, rel: &str) -> Vec<u8> {
        std::fs::read(self.machine("laptop").join("binpkgs").join(rel)).unwrap()
    }
}

fn write(p: &Path, data: impl AsRef<[u8]>) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

/// The published index: the sample's header and mtdev stanza, plus our own stanzas.
fn published_index(extra: &[(&str, &str, usize)]) -> String {
    let (header, mtdev) = SAMPLE_PACKAGES.split_once("\n\n").unwrap();
    let mut s = header.replace("PACKAGES: 1", &format!("PACKAGES: {}", 2 + extra.len()));
    s.push_str("\n\n");
    s.push_str(&mtdev.replace("SIZE: 40960", "SIZE: 300000"));
    if !s.ends_with("\n\n") {
        s.push('\n');
    }
    s.push_str(&stanza("app-misc/hello-1.0", HELLO, 5000));
    for (cpv, path, size) in extra {
        s.push_str(&stanza(cpv, path, *size));
    }
    s
}

fn store() -> Store {
    let scratch = Scratch::new();
    let root = scratch.path().join("store");
    let m = root.join("machines/laptop");
    let pk = m.join("binpkgs");
    write(&root.join("secret"), SECRET);
    write(&pk.join(MTDEV), bytes(300_000, 1));
    write(&pk.join(HELLO), bytes(5000, 2));
    write(&pk.join(IN_PROGRESS), bytes(7000, 3));
    write(&pk.join(HELD_BACK), bytes(9000, 4));
    std::fs::create_dir_all(pk.join("app-misc/evil")).unwrap();
    std::os::unix::fs::symlink("../../../../../secret", pk.join(EVIL)).unwrap();
    // Portage's own index in PKGDIR lists everything, the in-progress binpkg included.
    write(
        &pk.join("Packages"),
        published_index(&[
            ("app-misc/newer-2.0", IN_PROGRESS, 7000),
            ("dev-libs/needs-glibc-1", HELD_BACK, 9000),
        ]),
    );
    // The published one lists the symlink (a hostile index entry) but not the others.
    write(
        &m.join("published/Packages"),
        published_index(&[("app-misc/evil-1", EVIL, 10)]),
    );
    write(
        &m.join("published/info.json"),
        serde_json::to_vec_pretty(&serde_json::json!({
            "machine": "laptop", "published_at": 1767225700,
            "snapshot": {"date": SNAP, "tarball": format!("downloads/gentoo-{SNAP}.tar.xz"),
                         "timestamp_chk": "Thu, 01 Jan 2026 00:45:00 +0000",
                         "timestamp_commit": "0123456789abcdef0123456789abcdef01234567 1767227100 2026-01-01T00:25:00+00:00"},
            "packages": 3, "bytes": 305010,
            "held_back": [{"cpv": "dev-libs/needs-glibc-1", "file": "/usr/bin/needs",
                           "requires": "GLIBC_2.45", "kernel": "6.1.0"}]
        }))
        .unwrap(),
    );
    let log: String = (1..=50)
        .map(|i| format!("\u{1b}[32;01m>>>\u{1b}[0m emerge line {i}\n"))
        .collect();
    write(&m.join("logs/pass-1767225600.log"), log);
    write(
        &m.join("state.json"),
        serde_json::to_vec_pretty(&serde_json::json!({
            "machine": "laptop", "state": "building", "pid": std::process::id(),
            "updated": 1767225800,
            "current": {"package": "app-misc/newer-2.0", "phase": "compile", "index": 2, "total": 8},
            "last_pass": {"started": 1767225600, "finished": 1767225690, "result": "success",
                          "built": ["sys-libs/mtdev-1.1.7", "app-misc/hello-1.0"], "reused": 40,
                          "failed_package": null, "log": "logs/pass-1767225600.log"},
            "snapshot": SNAP,
            "drift": ["make.conf: CFLAGS differ (-O2 -pipe vs -O2)"],
            "abi_warnings": [{"cpv": "dev-libs/needs-glibc-1", "file": "/usr/bin/needs",
                              "requires": "GLIBC_2.45", "kernel": "6.1.0"}],
            "counts": {"binpkgs": 5, "bytes": 321000}
        }))
        .unwrap(),
    );
    write(
        &root.join(format!("downloads/gentoo-{SNAP}.tar.xz")),
        bytes(70_000, 5),
    );
    write(
        &root.join(format!("downloads/gentoo-{SNAP}.tar.xz.gpgsig")),
        "-----BEGIN PGP SIGNATURE-----\n\n-----END PGP SIGNATURE-----\n",
    );
    // A second machine that has not published anything yet.
    write(
        &root.join("machines/server/state.json"),
        r#"{"machine": "server", "state": "failed", "pid": null, "updated": 1767225000,
            "current": null, "last_pass": {"started": 1767220000, "finished": 1767221000,
            "result": "failed", "built": [], "reused": 0, "failed_package": "sys-devel/gcc-14.2.0",
            "log": "logs/pass-1767220000.log"}, "snapshot": null, "drift": [], "abi_warnings": [],
            "counts": {"binpkgs": 0, "bytes": 0}}"#,
    );
    write(
        &root.join("machines/server/logs/pass-1767220000.log"),
        "compiling gcc\n * ERROR: sys-devel/gcc-14.2.0::gentoo failed (compile phase)\n",
    );
    Store {
        _scratch: scratch,
        root,
    }
}

/// A running `gbuild serve`, stopped on drop.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(store: &Store) -> Server {
    serve_with(store, None, &[])
}

/// `gbuild serve` with extra arguments, under `ulimit` options (e.g. `-Sn 64`) when given.
fn serve_with(store: &Store, ulimit: Option<&str>, args: &[&str]) -> Server {
    let mut c = match ulimit {
        None => util::gbuild(&store.root),
        Some(u) => {
            let mut c = Command::new("sh");
            c.arg("-c")
                .arg(format!("ulimit {u} && exec \"$0\" \"$@\""))
                .arg(util::bin())
                .env("GBUILD_STORE", &store.root);
            c
        }
    };
    let mut child = c
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn gbuild serve");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("first line: {line:?}"))
        .parse()
        .unwrap();
    Server { child, addr }
}

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One HTTP/1.1 request with the target sent exactly as given.
fn request(addr: SocketAddr, method: &str, target: &str, headers: &[(&str, &str)]) -> Resp {
    request_on(
        TcpStream::connect(addr).unwrap(),
        addr,
        method,
        target,
        headers,
    )
}

/// A connection to `addr` from the local address `from` (any 127.x.y.z is a loopback address).
pub(crate) fn connect_from(from: [u8; 4], addr: SocketAddr) -> TcpStream {
    use nix::sys::socket::{bind, connect, socket, AddressFamily, SockFlag, SockType, SockaddrIn};
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    let [a, b, c, d] = from;
    bind(fd.as_raw_fd(), &SockaddrIn::new(a, b, c, d, 0)).unwrap();
    let SocketAddr::V4(v4) = addr else {
        panic!("{addr}")
    };
    connect(fd.as_raw_fd(), &SockaddrIn::from(v4)).unwrap();
    TcpStream::from(fd)
}

fn request_on(
    mut s: TcpStream,
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> Resp {
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut req = format!("{method} {target} HTTP/1.1\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: {addr}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("Connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
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
        let eol = b.windows(2).position(|w| w == b"\r\n").unwrap();
        let n = usize::from_str_radix(std::str::from_utf8(&b[..eol]).unwrap().trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + n]);
        b = &b[eol + 4 + n..];
    }
}

fn get(addr: SocketAddr, target: &str) -> Resp {
    request(addr, "GET", target, &[])
}

#[test]
fn binpkg_get_head_range_and_validators() {
    let st = store();
    let srv = serve(&st);
    let a = srv.addr;
    let want = st.pkg(MTDEV);
    let url = format!("/laptop/{MTDEV}");

    let r = get(a, &url);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, want, "streamed body");
    assert_eq!(r.header("content-type"), Some("application/x-tar"));
    assert_eq!(r.header("content-length"), Some("300000"));
    assert_eq!(r.header("accept-ranges"), Some("bytes"));
    let etag = r.header("etag").expect("etag").to_string();
    let lm = r
        .header("last-modified")
        .expect("last-modified")
        .to_string();

    let small = get(a, &format!("/laptop/{HELLO}"));
    assert_eq!(small.status, 200);
    assert_eq!(small.body, st.pkg(HELLO));

    let h = request(a, "HEAD", &url, &[]);
    assert_eq!(h.status, 200);
    assert!(h.body.is_empty());
    assert_eq!(h.header("content-length"), Some("300000"));
    assert_eq!(h.header("etag"), Some(etag.as_str()));

    let r = request(a, "GET", &url, &[("Range", "bytes=100-199")]);
    assert_eq!(r.status, 206);
    assert_eq!(r.header("content-range"), Some("bytes 100-199/300000"));
    assert_eq!(r.body, &want[100..200]);

    // wget -c resuming a partial download.
    let r = request(
        a,
        "GET",
        &url,
        &[("Range", "bytes=299990-"), ("If-Range", &etag)],
    );
    assert_eq!(r.status, 206);
    assert_eq!(r.body, &want[299_990..]);
    let r = request(a, "GET", &url, &[("Range", "bytes=-7")]);
    assert_eq!(r.body, &want[300_000 - 7..]);
    let r = request(
        a,
        "GET",
        &url,
        &[("Range", "bytes=0-9"), ("If-Range", "\"stale\"")],
    );
    assert_eq!(r.status, 200, "stale If-Range sends the whole file");
    let r = request(a, "GET", &url, &[("Range", "bytes=300000-")]);
    assert_eq!(r.status, 416);
    assert_eq!(r.header("content-range"), Some("bytes */300000"));

    let r = request(a, "GET", &url, &[("If-None-Match", &etag)]);
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());
    let r = request(a, "GET", &url, &[("If-Modified-Since", &lm)]);
    assert_eq!(r.status, 304);

    // The index: text/plain, HEAD and If-Modified-Since as Portage's binhost client uses them.
    let p = get(a, "/laptop/Packages");
    assert_eq!(p.status, 200);
    assert!(p.header("content-type").unwrap().starts_with("text/plain"));
    assert_eq!(
        p.body,
        std::fs::read(st.machine("laptop").join("published/Packages")).unwrap()
    );
    let lm = p.header("last-modified").unwrap().to_string();
    let h = request(a, "HEAD", "/laptop/Packages", &[]);
    assert_eq!(h.status, 200);
    assert_eq!(
        h.header("content-length"),
        Some(p.body.len().to_string().as_str())
    );
    assert!(h.body.is_empty());
    let r = request(a, "GET", "/laptop/Packages", &[("If-Modified-Since", &lm)]);
    assert_eq!(r.status, 304);

    let r = request(a, "POST", "/laptop/Packages", &[("Content-Length", "0")]);
    assert_eq!(r.status, 405);
}

#[test]
fn only_published_binpkgs_are_served() {
    let st = store();
    let srv = serve(&st);
    let a = srv.addr;
    // In PKGDIR but not in the published index: a pass in progress, or held back by the ABI check.
    for rel in [IN_PROGRESS, HELD_BACK] {
        let r = get(a, &format!("/laptop/{rel}"));
        assert_eq!(r.status, 404, "{rel}");
        assert_eq!(
            request(a, "HEAD", &format!("/laptop/{rel}"), &[]).status,
            404
        );
    }
    let index = get(a, "/laptop/Packages").text();
    assert!(!index.contains("newer-2.0") && !index.contains("needs-glibc"));
    // Portage's own in-progress index in PKGDIR is not reachable either.
    assert_eq!(get(a, "/laptop/binpkgs/Packages").status, 404);
    // Nothing published yet for this machine.
    assert_eq!(get(a, "/server/Packages").status, 404);
    assert_eq!(get(a, "/nosuch/Packages").status, 404);

    // The builder publishes the next pass (atomic replacement): the new binpkg appears.
    let published = st.machine("laptop").join("published/Packages");
    let tmp = published.with_file_name(".Packages.tmp");
    std::fs::write(
        &tmp,
        published_index(&[("app-misc/newer-2.0", IN_PROGRESS, 7000)]),
    )
    .unwrap();
    std::fs::rename(&tmp, &published).unwrap();
    let r = get(a, &format!("/laptop/{IN_PROGRESS}"));
    assert_eq!(r.status, 200);
    assert_eq!(r.body, st.pkg(IN_PROGRESS));
    assert!(get(a, "/laptop/Packages").text().contains("newer-2.0"));
    // ... and the old index's entries that are gone are no longer served.
    assert_eq!(get(a, &format!("/laptop/{EVIL}")).status, 404);
}

#[test]
fn nothing_outside_the_served_tree_is_reachable() {
    let st = store();
    let srv = serve(&st);
    let a = srv.addr;
    let targets = [
        "/../secret".to_string(),
        "/laptop/../../secret".into(),
        "/laptop/../../../etc/passwd".into(),
        "/laptop/%2e%2e/%2e%2e/secret".into(),
        "/laptop/%2E%2E/%2e%2E/%2e%2e/etc/passwd".into(),
        "/laptop/..%2f..%2fsecret".into(),
        "/laptop%2f..%2f..%2fsecret".into(),
        "/laptop/binpkgs%2f..%2f..%2f..%2fsecret".into(),
        "/laptop/binpkgs/../../../secret".into(),
        "/laptop/..%5c..%5csecret".into(),
        "//etc/passwd".into(),
        "/etc/passwd".into(),
        "/laptop//etc/passwd".into(),
        "/laptop/%2fetc%2fpasswd".into(),
        format!("/laptop/{EVIL}"),
        "/laptop/state.json".into(),
        "/laptop/published/info.json".into(),
        "/laptop/logs/pass-1767225600.log".into(),
        "/laptop/".into(),
        "/laptop/binpkgs/".into(),
        "/laptop/sys-libs/".into(),
        "/laptop/snapshots/".into(),
        "/laptop/snapshots/../../secret".into(),
        "/laptop/snapshots/gentoo-19990101.tar.xz".into(),
        "/laptop/%00".into(),
        "/secret".into(),
        "/machines/laptop/state.json".into(),
        "http://127.0.0.1/laptop/../../secret".into(),
    ];
    for t in &targets {
        let r = get(a, t);
        assert!(
            r.status == 404 || r.status == 400,
            "{t}: status {} body {}",
            r.status,
            r.text()
        );
        let body = r.text();
        assert!(
            !body.contains("TOPSECRET") && !body.contains("root:") && !body.contains("\"state\""),
            "{t} leaked: {body}"
        );
    }
    // Absolute-form targets work for real files and still cannot climb out.
    let r = get(a, &format!("http://{a}/laptop/{HELLO}"));
    assert_eq!(r.status, 200);
}

#[test]
fn host_configuration_snapshot_and_status_json() {
    let st = store();
    let srv = serve(&st);
    let a = srv.addr;

    let r = get(a, "/laptop/binrepos.conf");
    assert_eq!(r.status, 200);
    let conf = r.text();
    assert!(conf.contains("[gbuild-laptop]"), "{conf}");
    assert!(
        conf.contains(&format!("sync-uri = http://{a}/laptop\n")),
        "{conf}"
    );
    assert!(conf.contains("verify-signature = true"), "{conf}");
    assert!(conf.contains("gbuild host trust --binhost"), "{conf}");
    assert!(conf.contains("priority = "));
    // The signing key: none before the store has one, then its public part only.
    assert_eq!(get(a, "/laptop/key.asc").status, 404);
    let out = util::output(util::gbuild(&st.root).args(["key", "--show"]));
    assert!(out.status.success());
    let fpr = util::stdout(&out).trim().to_string();
    assert_eq!(fpr.len(), 40, "{fpr}");
    let r = get(a, "/laptop/key.asc");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/pgp-keys"));
    let key = r.text();
    assert!(
        key.contains("-----BEGIN PGP PUBLIC KEY BLOCK-----"),
        "{key}"
    );
    assert!(!key.contains("PRIVATE"), "{key}");
    let out = util::output(util::gbuild(&st.root).args(["key", "--export"]));
    assert_eq!(util::stdout(&out), key);
    assert_eq!(get(a, "/nosuchmachine/key.asc").status, 404);
    let r = request(
        a,
        "GET",
        "/laptop/binrepos.conf",
        &[("Host", "builder.lan:8788")],
    );
    assert!(r
        .text()
        .contains("sync-uri = http://builder.lan:8788/laptop\n"));
    let r = request(a, "GET", "/laptop/binrepos.conf", &[("Host", "evil\"host")]);
    assert!(
        !r.text().contains("evil"),
        "a bad Host header is not echoed"
    );

    let repos = get(a, "/laptop/repos.conf").text();
    assert!(
        repos.contains("[gentoo]") && repos.contains("sync-type = webrsync"),
        "{repos}"
    );
    assert!(repos.contains(&format!(
        "GENTOO_MIRRORS=\"http://{a}/laptop\" emerge-webrsync --revert={SNAP}"
    )));

    let tarball = std::fs::read(st.root.join(format!("downloads/gentoo-{SNAP}.tar.xz"))).unwrap();
    let r = get(a, "/laptop/snapshot");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, tarball);
    assert_eq!(r.header("x-gbuild-snapshot-date"), Some(SNAP));
    assert!(r.header("x-gbuild-snapshot-timestamp-commit").is_some());
    let info: serde_json::Value =
        serde_json::from_slice(&get(a, "/laptop/snapshot.info").body).unwrap();
    assert_eq!(info["date"], SNAP);
    assert_eq!(info["size"], 70_000);
    for name in [
        format!("gentoo-{SNAP}.tar.xz"),
        "gentoo-latest.tar.xz".into(),
    ] {
        let r = get(a, &format!("/laptop/snapshots/{name}"));
        assert_eq!(r.body, tarball, "{name}");
        let sum = get(a, &format!("/laptop/snapshots/{name}.md5sum")).text();
        assert_eq!(
            sum,
            format!("{}  {name}\n", hex::encode(md5::Md5::digest(&tarball)))
        );
        let sig = get(a, &format!("/laptop/snapshots/{name}.gpgsig"));
        assert_eq!(sig.status, 200);
        assert!(sig.text().contains("PGP SIGNATURE"));
    }
    assert_eq!(get(a, "/server/snapshot").status, 404);

    let r = get(a, "/api/status");
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("application/json"));
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let ms = v["machines"].as_array().unwrap();
    assert_eq!(ms.len(), 2);
    let lap = ms.iter().find(|m| m["name"] == "laptop").unwrap();
    assert_eq!(lap["state"]["state"], "building");
    assert_eq!(lap["state"]["current"]["package"], "app-misc/newer-2.0");
    assert_eq!(lap["published_packages"], 3);
    assert_eq!(lap["loop_alive"], true);
    let tail = lap["log_tail"].as_array().unwrap();
    assert_eq!(tail.len(), 30);
    assert_eq!(tail[29], ">>> emerge line 50");
    let srv2 = ms.iter().find(|m| m["name"] == "server").unwrap();
    assert_eq!(srv2["state"]["state"], "failed");
    assert_eq!(
        srv2["state"]["last_pass"]["failed_package"],
        "sys-devel/gcc-14.2.0"
    );
    assert!(srv2["published"].is_null());
}

#[test]
fn status_page_renders_in_headless_chromium() {
    let st = store();
    let srv = serve(&st);
    let a = srv.addr;
    let html = get(a, "/");
    assert_eq!(html.status, 200);
    assert!(html
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    let page = html.text();
    for needle in [
        "id=\"m-laptop\"",
        "id=\"m-server\"",
        "app-misc/newer-2.0",
        "sys-devel/gcc-14.2.0",
        "GLIBC_2.45",
        "CFLAGS differ",
        "emerge line 50",
    ] {
        assert!(page.contains(needle), "{needle} missing from the page");
    }
    assert!(!page.contains("emerge line 20\n"), "only the last 30 lines");

    let chromium = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|c| util::which(c));
    if !util::require(chromium.is_some(), "chromium is not installed") {
        return;
    }
    let chromium = chromium.unwrap();
    let out_dir = st._scratch.path().join("chromium");
    std::fs::create_dir_all(&out_dir).unwrap();
    let run = |extra: &[&str]| {
        let profile = tempfile::Builder::new()
            .prefix("profile-")
            .tempdir_in(&out_dir)
            .unwrap();
        let mut c = Command::new(chromium);
        c.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--window-size=1280,900",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(format!("http://{a}/"))
        .env("HOME", &out_dir)
        .stdin(Stdio::null());
        util::output(&mut c)
    };
    let dom = run(&["--dump-dom"]);
    assert!(dom.status.success(), "chromium --dump-dom failed");
    let dom = util::stdout(&dom);
    assert!(
        dom.contains("<tr class=\"machine\" id=\"m-laptop\">"),
        "{dom}"
    );
    assert!(
        dom.contains("<tr class=\"machine\" id=\"m-server\">"),
        "{dom}"
    );
    assert!(!dom.contains("<script"), "no script in the page");

    let shot = out_dir.join("status-page.png");
    let o = run(&[&format!("--screenshot={}", shot.display())]);
    assert!(o.status.success(), "chromium --screenshot failed");
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "a real screenshot"
    );
    if let Some(dir) = std::env::var_os("GBUILD_ARTIFACTS") {
        let dir = PathBuf::from(dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(&shot, dir.join("serve-status-page.png")).unwrap();
    }
}

/// The soft and hard open-file limits of a process.
fn nofile(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let mut f = line["Max open files".len()..].split_whitespace();
    (f.next().unwrap().into(), f.next().unwrap().into())
}

/// A request whose answer is never read: the server's side stays busy writing.
fn slow_download(addr: SocketAddr, target: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(s, "GET {target} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    s
}

#[test]
fn fd_limit_is_raised_and_sized_so_the_index_answers_under_slow_downloads() {
    let st = store();
    // A large published binpkg (sparse: no disk used) that a slow client never finishes.
    const BIG: &str = "app-misc/big/big-1-1.gpkg.tar";
    let pk = st.machine("laptop").join("binpkgs");
    std::fs::create_dir_all(pk.join("app-misc/big")).unwrap();
    std::fs::File::create(pk.join(BIG))
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let published = st.machine("laptop").join("published/Packages");
    let mut index = std::fs::read_to_string(&published).unwrap();
    index.push_str(&stanza("app-misc/big-1", BIG, 64 << 20));
    write(&published, index);

    // A soft limit below the hard one is raised to it.
    let srv = serve_with(&st, Some("-Sn 64"), &[]);
    let (soft, hard) = nofile(srv.child.id());
    assert_eq!(soft, hard, "soft limit raised to the hard limit");
    drop(srv);

    // A low hard limit: the caps shrink to fit and the small documents keep answering.
    let srv = serve_with(&st, Some("-n 128"), &["--max-per-client", "1000"]);
    assert_eq!(nofile(srv.child.id()), ("128".into(), "128".into()));
    let a = srv.addr;
    let target = format!("/laptop/{BIG}");
    let slow: Vec<TcpStream> = (0..120).map(|_| slow_download(a, &target)).collect();
    for _ in 0..2 {
        let p = get(a, "/laptop/Packages");
        assert_eq!(p.status, 200, "{}", p.text());
        assert!(p.text().contains("CPV: app-misc/big-1"));
        let page = get(a, "/");
        assert_eq!(page.status, 200);
        assert!(page.text().contains("id=\"m-laptop\""));
    }
    // Downloads beyond the cap were refused with 503, not left waiting for a descriptor.
    let busy = slow
        .into_iter()
        .rev()
        .take(20)
        .filter(|s| {
            let mut s = s.try_clone().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            let mut head = [0u8; 12];
            s.read_exact(&mut head).is_ok() && &head == b"HTTP/1.1 503"
        })
        .count();
    assert!(busy > 0, "the last downloads should have been refused");
}

#[test]
fn one_client_cannot_take_every_connection() {
    let st = store();
    let srv = serve_with(&st, None, &["--max-per-client", "8"]);
    let a = srv.addr;
    let idle: Vec<TcpStream> = (0..8).map(|_| TcpStream::connect(a).unwrap()).collect();
    let r = request(a, "GET", "/laptop/Packages", &[]);
    assert_eq!(r.status, 503);
    assert!(
        r.text().contains("too many connections from 127.0.0.1"),
        "{}",
        r.text()
    );
    assert!(r.header("retry-after").is_some());
    // Another client address is served at once.
    let r = request_on(
        connect_from([127, 0, 0, 2], a),
        a,
        "GET",
        "/laptop/Packages",
        &[],
    );
    assert_eq!(r.status, 200);
    // Closing its connections gives the first client its share back.
    drop(idle);
    let mut ok = false;
    for _ in 0..50 {
        if get(a, "/laptop/Packages").status == 200 {
            ok = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        ok,
        "the client's slots are freed when its connections close"
    );
}

/// Read one response with a `Content-Length` from a kept-alive connection.
fn read_response(r: &mut BufReader<TcpStream>) -> (u16, Vec<u8>) {
    let mut status = String::new();
    r.read_line(&mut status).unwrap();
    let code = status.split(' ').nth(1).unwrap().parse().unwrap();
    let mut len = 0;
    loop {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        if line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().unwrap();
            }
        }
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).unwrap();
    (code, body)
}

#[test]
fn header_limit_and_keep_alive_timeout_are_as_documented() {
    let st = store();
    let srv = serve_with(&st, None, &["--header-timeout", "3"]);
    let a = srv.addr;
    // Headers up to 64 KiB in all are read; more get 431, even when sent in one write.
    let under = "x".repeat(60 * 1024);
    let r = request(a, "GET", "/laptop/binrepos.conf", &[("X-Pad", &under)]);
    assert_eq!(r.status, 200);
    let over = "x".repeat(100 * 1024);
    let mut s = TcpStream::connect(a).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let req = format!("GET /laptop/binrepos.conf HTTP/1.1\r\nHost: {a}\r\nX-Pad: {over}\r\n\r\n");
    // The server may close before reading it all: a reset after its answer is fine.
    let _ = s.write_all(req.as_bytes());
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&got);
    assert!(head.starts_with("HTTP/1.1 431"), "{head}");

    // A kept-alive connection serves the next request while within the header timeout, and
    // is closed once idle for longer (well before the 60 s transfer timeout).
    let s = TcpStream::connect(a).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    let req = format!("GET /laptop/binrepos.conf HTTP/1.1\r\nHost: {a}\r\n\r\n");
    for _ in 0..2 {
        w.write_all(req.as_bytes()).unwrap();
        let (code, body) = read_response(&mut r);
        assert_eq!(code, 200);
        assert!(String::from_utf8_lossy(&body).contains("[gbuild-laptop]"));
        std::thread::sleep(Duration::from_millis(500));
    }
    let mut rest = Vec::new();
    let n = r
        .read_to_end(&mut rest)
        .expect("closed by the server, not timed out");
    assert_eq!(n, 0);
}
