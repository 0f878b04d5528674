//! distcc helpers (`gbuild helper`): distccd in a rootless container of a machine's image. The
//! builder scenario (`builder.rs`) starts two of them on 127.0.0.1 from the fixture machine's own
//! image and names them in gbuild.toml: its passes send their compiles there (the helpers' logs
//! show the jobs), a helper that is down leaves the pass to compile locally with a warning, and
//! the packages carry nothing of the helpers. Here: what a helper refuses before it starts, and
//! what it refuses once it runs (a client outside `--allow`, from a second loopback address).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::builder::Env;
use crate::util::{self, Scratch};

/// A running `gbuild helper` on 127.0.0.1.
pub(crate) struct Helper {
    child: Option<Child>,
    pub(crate) port: u16,
    pub(crate) log: PathBuf,
}

/// A port nothing listens on now.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

impl Helper {
    /// A helper of `machine` on a free port of 127.0.0.1 (allowing 127.0.0.1 only), once it
    /// accepts connections.
    pub(crate) fn start(env: &Env, machine: &str) -> Helper {
        let port = free_port();
        let mut child = env
            .gbuild()
            .args(["helper", "--machine", machine, "--jobs", "2", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let t = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(st) = child.try_wait().unwrap() {
                let mut err = String::new();
                child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut err)
                    .unwrap();
                panic!("gbuild helper on port {port} exited {st}: {err}");
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "helper on {port} never listened"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let log = env.store.join(format!(
            "machines/{machine}/logs/helper/127.0.0.1-{port}.log"
        ));
        Helper {
            child: Some(child),
            port,
            log,
        }
    }

    /// `127.0.0.1:PORT/1` for distcc_hosts: one job at a time, so that where each compile went
    /// follows from the order of the hosts alone.
    pub(crate) fn host(&self) -> String {
        format!("127.0.0.1:{}/1", self.port)
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// distccd's job lines (`COMPILE_OK ... FILE`) of this helper.
    pub(crate) fn jobs(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains("COMPILE_OK"))
            .map(str::to_string)
            .collect()
    }

    /// SIGTERM, as a service manager stops it: distccd ends, the container and its scratch root
    /// go.
    pub(crate) fn stop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let st = c.wait().unwrap();
        let mut err = String::new();
        c.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        assert!(
            matches!(st.code(), Some(0) | Some(143)),
            "helper on {} stopped with {st}: {err}",
            self.port
        );
        assert!(
            TcpStream::connect(("127.0.0.1", self.port)).is_err(),
            "port {} still open after the helper stopped",
            self.port
        );
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// gbuild.toml of the store with `[machines.M] distcc_hosts` (empty: none).
pub(crate) fn use_helpers(env: &Env, machine: &str, hosts: &[String]) {
    let list: Vec<String> = hosts.iter().map(|h| format!("{h:?}")).collect();
    std::fs::write(
        env.store.join("gbuild.toml"),
        format!(
            "[machines.{machine}]\ndistcc_hosts = [{}]\n",
            list.join(", ")
        ),
    )
    .unwrap();
}

/// The states `status --json` reports for the machine's helpers, by host.
pub(crate) fn states(env: &Env) -> Vec<(String, String)> {
    let st = env.status();
    st["helpers"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|h| {
                    (
                        h["host"].as_str().unwrap().to_string(),
                        h["state"].as_str().unwrap().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A client from 127.0.0.2, outside the helper's `--allow 127.0.0.1/32`, is turned away: the
/// connection is closed without an answer, and the helper's log says why.
pub(crate) fn refuses_outside_allow(h: &Helper) {
    let addr: SocketAddr = format!("127.0.0.1:{}", h.port).parse().unwrap();
    let mut s = crate::serve::connect_from([127, 0, 0, 2], addr);
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    // The start of a distcc request (protocol version 1).
    let _ = s.write_all(b"DIST00000001ARGC00000002");
    let mut got = Vec::new();
    match s.read_to_end(&mut got) {
        Ok(_) => assert!(got.is_empty(), "answered: {got:?}"),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
    let refused = || {
        h.log()
            .lines()
            .any(|l| l.contains("client '127.0.0.2:") && l.contains("denied"))
    };
    let t = Instant::now();
    while !refused() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "no refusal in {}:\n{}",
            h.log.display(),
            h.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every metadata file of a gpkg (`*/metadata.tar.*`), decompressed (`.bz2` members too).
pub(crate) fn gpkg_metadata(path: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut ar = tar::Archive::new(std::fs::File::open(path).unwrap());
    for e in ar.entries().unwrap() {
        let e = e.unwrap();
        let name = e.path().unwrap().to_string_lossy().into_owned();
        if !name.contains("/metadata.tar") || name.ends_with(".sig") {
            continue;
        }
        assert!(name.ends_with(".zst"), "{name}");
        let mut inner = tar::Archive::new(zstd::Decoder::new(e).unwrap());
        for f in inner.entries().unwrap() {
            let mut f = f.unwrap();
            let n = f.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            f.read_to_end(&mut data).unwrap();
            if n.ends_with(".bz2") {
                let mut plain = Vec::new();
                bzip2::read::BzDecoder::new(&data[..])
                    .read_to_end(&mut plain)
                    .unwrap();
                data = plain;
            }
            out.push((n, data));
        }
    }
    assert!(!out.is_empty(), "no metadata in {}", path.display());
    out
}

/// What `gbuild helper` refuses before anything starts: a listen address outside `--allow`,
/// every address, a range of every address. No store, image or namespace is needed for that.
#[test]
fn helper_refuses_to_listen_beyond_allow() {
    let s = Scratch::new();
    let store = s.path().join("store");
    for (args, needle) in [
        (
            &["--listen", "127.0.0.2:3632", "--allow", "127.0.0.1/32"][..],
            "outside --allow 127.0.0.1/32",
        ),
        (
            &["--listen", "0.0.0.0:3632", "--allow", "192.168.1.0/24"][..],
            "every network",
        ),
        (
            &["--listen", "127.0.0.1", "--allow", "0.0.0.0/0"][..],
            "every address",
        ),
        (&["--listen", "box2:3632"][..], "invalid listen address"),
    ] {
        let out = util::output(util::gbuild(&store).arg("helper").args(args));
        let err = util::stderr(&out);
        assert_ne!(out.status.code(), Some(0), "{args:?}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    assert!(!store.join("machines").exists());
    // A machine that does not exist is named.
    let out = util::output(util::gbuild(&store).args([
        "helper",
        "--machine",
        "nosuch",
        "--listen",
        "127.0.0.1:3632",
    ]));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        util::stderr(&out).contains("nosuch"),
        "{}",
        util::stderr(&out)
    );
}
