//! A local Gentoo mirror for the fetch tests: a directory with the real layout, signed with
//! throwaway gpg keys, served by a small HTTP server on 127.0.0.1 that logs requests, honours
//! `Range`, and injects faults (404, 5xx, connection cut mid-body, Range ignored, endless and
//! trickled bodies).

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};

pub const ARCH: &str = "amd64";
pub const VARIANT: &str = "openrc";
pub const STAGE3_TS: &str = "20260101T000000Z";
pub const SNAP_DATE: &str = "20260102";

pub fn stage3_name() -> String {
    format!("stage3-{ARCH}-{VARIANT}-{STAGE3_TS}.tar.xz")
}

/// Path of the stage3 tarball relative to the mirror root.
pub fn stage3_rel() -> String {
    format!("releases/{ARCH}/autobuilds/{STAGE3_TS}/{}", stage3_name())
}

pub fn latest_rel() -> String {
    format!("releases/{ARCH}/autobuilds/latest-stage3-{ARCH}-{VARIANT}.txt")
}

// ---------------------------------------------------------------- HTTP server

#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    NotFound,
    Status(u16),
    /// Send headers for the whole body, then close the connection once the file offset reaches
    /// this value.
    CutAt(u64),
    /// Answer a Range request with the whole file (200).
    IgnoreRange,
    /// Ignore Range and cut every body short at this offset (a broken server or proxy).
    CutIgnoringRange(u64),
    /// 200 without a length: the file, then noise until the client goes away (or, so that a
    /// client without a bound cannot fill the disk, 256 MiB were sent).
    Endless,
    /// The whole file (200, with its length), one byte per this many milliseconds.
    Trickle(u64),
}

#[derive(Debug, Clone)]
struct Rule {
    path: String,
    fault: Fault,
    /// How many more requests it applies to (None: all).
    times: Option<usize>,
}

/// One request the server saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub range: Option<String>,
    pub status: u16,
}

struct State {
    root: PathBuf,
    rules: Vec<Rule>,
    log: Vec<Seen>,
    /// Bytes of endless bodies written to sockets.
    endless_sent: u64,
}

pub struct Server {
    pub url: String,
    state: Arc<Mutex<State>>,
}

impl Server {
    /// Serve `root` on an ephemeral port of 127.0.0.1 until the test process ends.
    pub fn start(root: &Path) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State {
            root: root.to_path_buf(),
            rules: Vec::new(),
            log: Vec::new(),
            endless_sent: 0,
        }));
        let st = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let st = st.clone();
                std::thread::spawn(move || {
                    let _ = handle(conn, &st);
                });
            }
        });
        Server { url, state }
    }

    /// Inject `fault` for requests of `path` (relative to the root), `times` times or always.
    pub fn fault(&self, path: &str, fault: Fault, times: Option<usize>) {
        self.state.lock().unwrap().rules.push(Rule {
            path: format!("/{}", path.trim_start_matches('/')),
            fault,
            times,
        });
    }

    /// Bytes the `Endless` fault wrote to sockets so far.
    pub fn endless_sent(&self) -> u64 {
        self.state.lock().unwrap().endless_sent
    }

    pub fn clear_faults(&self) {
        self.state.lock().unwrap().rules.clear();
    }

    pub fn log(&self) -> Vec<Seen> {
        self.state.lock().unwrap().log.clone()
    }

    /// Requests seen for `path` (relative to the root).
    pub fn requests_for(&self, path: &str) -> Vec<Seen> {
        let p = format!("/{}", path.trim_start_matches('/'));
        self.log().into_iter().filter(|s| s.path == p).collect()
    }
}

fn handle(mut conn: TcpStream, st: &Mutex<State>) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut first = String::new();
    reader.read_line(&mut first)?;
    let mut range = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.trim().eq_ignore_ascii_case("range") {
                range = Some(v.trim().to_string());
            }
        }
    }
    let path = first.split_whitespace().nth(1).unwrap_or("/").to_string();
    let (root, fault) = {
        let mut s = st.lock().unwrap();
        let mut fault = None;
        for r in s.rules.iter_mut() {
            if r.path == path && r.times != Some(0) {
                if let Some(t) = r.times.as_mut() {
                    *t -= 1;
                }
                fault = Some(r.fault.clone());
                break;
            }
        }
        (s.root.clone(), fault)
    };
    let record = |status: u16| {
        st.lock().unwrap().log.push(Seen {
            path: path.clone(),
            range: range.clone(),
            status,
        });
    };
    let simple = |conn: &mut TcpStream, status: u16, reason: &str| -> std::io::Result<()> {
        write!(
            conn,
            "HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
    };
    match fault {
        Some(Fault::NotFound) => {
            record(404);
            return simple(&mut conn, 404, "Not Found");
        }
        Some(Fault::Status(code)) => {
            record(code);
            return simple(&mut conn, code, "Injected");
        }
        _ => {}
    }
    let rel = path.trim_start_matches('/');
    let file = root.join(rel);
    if rel.split('/').any(|c| c == "..") || !file.is_file() {
        record(404);
        return simple(&mut conn, 404, "Not Found");
    }
    let data = std::fs::read(&file)?;
    let len = data.len() as u64;
    let ignores_range = matches!(
        fault,
        Some(Fault::IgnoreRange | Fault::CutIgnoringRange(_) | Fault::Endless | Fault::Trickle(_))
    );
    match fault {
        Some(Fault::Endless) => {
            record(200);
            write!(conn, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")?;
            conn.write_all(&data)?;
            st.lock().unwrap().endless_sent += len;
            let junk = noise(1 << 16, len);
            for _ in 0..(256 << 20) / junk.len() {
                conn.write_all(&junk)?;
                st.lock().unwrap().endless_sent += junk.len() as u64;
            }
            return Ok(());
        }
        Some(Fault::Trickle(ms)) => {
            record(200);
            write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
            )?;
            for b in &data {
                conn.write_all(std::slice::from_ref(b))?;
                conn.flush()?;
                std::thread::sleep(std::time::Duration::from_millis(ms));
            }
            return Ok(());
        }
        _ => {}
    }
    let start = match &range {
        Some(r) if !ignores_range => r
            .strip_prefix("bytes=")
            .and_then(|r| r.strip_suffix('-'))
            .and_then(|n| n.parse::<u64>().ok()),
        _ => None,
    };
    if let Some(s) = start {
        if s >= len {
            record(416);
            return write!(
                conn,
                "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{len}\r\n\
                 Content-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    }
    let from = start.unwrap_or(0);
    if start.is_some() {
        record(206);
        write!(
            conn,
            "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes \
             {from}-{}/{len}\r\nConnection: close\r\n\r\n",
            len - from,
            len - 1
        )?;
    } else {
        record(200);
        write!(
            conn,
            "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nAccept-Ranges: bytes\r\n\
             Connection: close\r\n\r\n"
        )?;
    }
    let end = match fault {
        Some(Fault::CutAt(at)) | Some(Fault::CutIgnoringRange(at)) => at.clamp(from, len),
        _ => len,
    };
    conn.write_all(&data[from as usize..end as usize])?;
    conn.flush()?;
    if end < len {
        // Cut the body short: the client sees the connection end before Content-Length.
        let _ = conn.shutdown(std::net::Shutdown::Both);
    }
    Ok(())
}

// ---------------------------------------------------------------- gpg

/// Throwaway keys, generated once per test process, exported with their secrets.
pub struct Keys {
    /// Trusted by the tests: RSA primary (certify only) + RSA signing subkey, like Gentoo's.
    pub main_fpr: String,
    /// Another key, never trusted.
    pub other_fpr: String,
    /// A key that expired in 2021 (made and used with gpg's faked system time).
    pub old_fpr: String,
    secret: Vec<u8>,
}

fn gpg_cmd(home: &Path) -> Command {
    let mut c = Command::new("gpg");
    c.env("GNUPGHOME", home)
        .args([
            "--batch",
            "--quiet",
            "--no-tty",
            "--pinentry-mode",
            "loopback",
        ])
        .args(["--passphrase", ""])
        .stdin(Stdio::null());
    c
}

fn run_ok(c: &mut Command) -> Vec<u8> {
    let out = c.output().unwrap_or_else(|e| panic!("{c:?}: {e}"));
    assert!(
        out.status.success(),
        "{c:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn fpr_of(home: &Path, uid: &str) -> String {
    let out = run_ok(gpg_cmd(home).args(["--with-colons", "--list-keys", uid]));
    String::from_utf8_lossy(&out)
        .lines()
        .find_map(|l| l.strip_prefix("fpr:"))
        .map(|l| l.trim_matches(':').to_string())
        .unwrap()
}

fn kill_agent(home: &Path) {
    let _ = Command::new("gpgconf")
        .env("GNUPGHOME", home)
        .args(["--kill", "all"])
        .stderr(Stdio::null())
        .status();
}

pub fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("gbuild-gpg-")
            .tempdir()
            .unwrap();
        let home = dir.path();
        run_ok(gpg_cmd(home).args([
            "--quick-gen-key",
            "Mirror Test Release <release@example.org>",
            "rsa2048",
            "cert",
            "never",
        ]));
        let main_fpr = fpr_of(home, "release@example.org");
        run_ok(gpg_cmd(home).args(["--quick-add-key", &main_fpr, "rsa2048", "sign", "never"]));
        run_ok(gpg_cmd(home).args([
            "--quick-gen-key",
            "Someone Else <other@example.org>",
            "ed25519",
            "sign",
            "never",
        ]));
        let other_fpr = fpr_of(home, "other@example.org");
        run_ok(gpg_cmd(home).args([
            "--faked-system-time",
            "20200101T000000!",
            "--quick-gen-key",
            "Old Key <old@example.org>",
            "ed25519",
            "sign",
            "1y",
        ]));
        let old_fpr = fpr_of(home, "old@example.org");
        let secret = run_ok(gpg_cmd(home).args(["--armor", "--export-secret-keys"]));
        kill_agent(home);
        Keys {
            main_fpr,
            other_fpr,
            old_fpr,
            secret,
        }
    })
}

/// A GNUPGHOME with the test keys, for one test; its agent is stopped on drop.
pub struct Gpg {
    pub home: PathBuf,
}

impl Gpg {
    pub fn new(dir: &Path) -> Gpg {
        let home = dir.join("gnupg");
        std::fs::create_dir_all(&home).unwrap();
        std::fs::set_permissions(&home, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .unwrap();
        let mut c = gpg_cmd(&home);
        c.arg("--import")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(&keys().secret)
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Gpg { home }
    }

    fn signer(&self, fpr: &str) -> Command {
        let mut c = gpg_cmd(&self.home);
        c.args(["--local-user", fpr]);
        if fpr == keys().old_fpr {
            c.args(["--faked-system-time", "20200601T000000!"]);
        }
        c
    }

    /// Clearsign `text` with `fpr`.
    pub fn clearsign(&self, fpr: &str, text: &str) -> Vec<u8> {
        let mut c = self.signer(fpr);
        c.arg("--clearsign")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// Armored detached signature of `file` with `fpr`.
    pub fn detach_sign(&self, fpr: &str, file: &Path) -> Vec<u8> {
        run_ok(
            self.signer(fpr)
                .args(["--armor", "--detach-sign", "--output", "-"])
                .arg(file),
        )
    }

    /// Armored detached signature of `file` with `fpr`, hashing with `digest` (e.g. SHA256).
    pub fn detach_sign_digest(&self, fpr: &str, file: &Path, digest: &str) -> Vec<u8> {
        run_ok(
            self.signer(fpr)
                .args(["--digest-algo", digest])
                .args(["--armor", "--detach-sign", "--output", "-"])
                .arg(file),
        )
    }

    /// Armored public keys of `fprs`.
    pub fn export(&self, fprs: &[&str]) -> Vec<u8> {
        run_ok(
            gpg_cmd(&self.home)
                .arg("--armor")
                .arg("--export")
                .args(fprs),
        )
    }
}

impl Drop for Gpg {
    fn drop(&mut self) {
        kill_agent(&self.home);
    }
}

// ---------------------------------------------------------------- mirror content

/// Deterministic incompressible bytes.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A tar.xz with `entries` (path, contents).
pub fn tar_xz(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let xz = liblzma::write::XzEncoder::new(Vec::new(), 0);
    let mut ar = tar::Builder::new(xz);
    for (path, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1767225600);
        h.set_cksum();
        ar.append_data(&mut h, path, *data).unwrap();
    }
    ar.into_inner().unwrap().finish().unwrap()
}

pub fn sha512_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha512::digest(data))
}

pub fn b2_hex(data: &[u8]) -> String {
    use blake2::Digest;
    hex::encode(blake2::Blake2b512::digest(data))
}

/// A signed mirror tree under `root`; every file can be rewritten by the tests afterwards.
pub struct Mirror {
    pub root: PathBuf,
    pub stage3: Vec<u8>,
    pub snapshot: Vec<u8>,
    /// Keyring file holding the public keys of the main and other keys (only main is trusted).
    pub keyring: PathBuf,
}

impl Mirror {
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    pub fn write(&self, rel: &str, data: &[u8]) {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }

    pub fn latest_body(size: usize) -> String {
        format!(
            "# Latest as of Thu, 01 Jan 2026 12:00:00 +0000\n# ts=1767268800\n{STAGE3_TS}/{} {size}\n",
            stage3_name()
        )
    }

    pub fn digests_body(data: &[u8]) -> String {
        let n = stage3_name();
        format!(
            "# BLAKE2B HASH\n{}  {n}\n# SHA512 HASH\n{}  {n}\n# BLAKE2B HASH\n{}  {n}.CONTENTS.gz\n# SHA512 HASH\n{}  {n}.CONTENTS.gz\n",
            b2_hex(data),
            sha512_hex(data),
            b2_hex(b"contents"),
            sha512_hex(b"contents"),
        )
    }

    /// Build the whole mirror signed by the main key. `stage3_len`: size of the noise file.
    pub fn build(root: &Path, gpg: &Gpg, stage3_len: usize) -> Mirror {
        let k = keys();
        let stage3 = tar_xz(&[
            ("etc/os-release", b"NAME=Gentoo\n"),
            ("usr/lib/noise.bin", &noise(stage3_len, 7)),
        ]);
        let snapshot = tar_xz(&[
            (
                &format!("gentoo-{SNAP_DATE}/metadata/timestamp.x"),
                b"1767401101 Sat 03 Jan 2026 12:45:01 AM UTC\n",
            ),
            (
                &format!("gentoo-{SNAP_DATE}/metadata/timestamp.chk"),
                b"Sat, 03 Jan 2026 00:45:01 +0000\n",
            ),
        ]);
        let m = Mirror {
            root: root.to_path_buf(),
            stage3,
            snapshot,
            keyring: root.parent().unwrap().join("keyring.asc"),
        };
        std::fs::write(&m.keyring, gpg.export(&[&k.main_fpr, &k.other_fpr])).unwrap();
        m.sign_stage3(gpg, &k.main_fpr);
        m.sign_snapshot(gpg, &k.main_fpr);
        m
    }

    /// (Re)write the stage3 tarball, its .asc, DIGESTS and the latest file, signed by `fpr`.
    pub fn sign_stage3(&self, gpg: &Gpg, fpr: &str) {
        let rel = stage3_rel();
        self.write(&rel, &self.stage3);
        self.write(
            &format!("{rel}.asc"),
            &gpg.detach_sign(fpr, &self.path(&rel)),
        );
        self.write(
            &format!("{rel}.DIGESTS"),
            &gpg.clearsign(fpr, &Mirror::digests_body(&self.stage3)),
        );
        self.write(
            &latest_rel(),
            &gpg.clearsign(fpr, &Mirror::latest_body(self.stage3.len())),
        );
    }

    /// Replace the stage3 bytes with `data`, with a DIGESTS and latest file signed by `fpr`
    /// that match the new bytes, but keep the old detached signature.
    pub fn replace_stage3_keep_asc(&self, gpg: &Gpg, fpr: &str, data: &[u8]) {
        let rel = stage3_rel();
        self.write(&rel, data);
        self.write(
            &format!("{rel}.DIGESTS"),
            &gpg.clearsign(fpr, &Mirror::digests_body(data)),
        );
        self.write(
            &latest_rel(),
            &gpg.clearsign(fpr, &Mirror::latest_body(data.len())),
        );
    }

    /// (Re)write the dated and the latest snapshot with .gpgsig signatures by `fpr`.
    pub fn sign_snapshot(&self, gpg: &Gpg, fpr: &str) {
        for name in [
            format!("gentoo-{SNAP_DATE}.tar.xz"),
            "gentoo-latest.tar.xz".into(),
        ] {
            let rel = format!("snapshots/{name}");
            self.write(&rel, &self.snapshot);
            self.write(
                &format!("{rel}.gpgsig"),
                &gpg.detach_sign(fpr, &self.path(&rel)),
            );
        }
    }
}

/// Read a whole stream (for tests that need a body).
pub fn read_all(mut r: impl Read) -> Vec<u8> {
    let mut v = Vec::new();
    r.read_to_end(&mut v).unwrap();
    v
}
