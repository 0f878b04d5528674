//! `gbuild helper`: a distccd for other builders, run inside a rootless container of a machine's
//! own image, so that every helper has the builder's compiler byte for byte (distcc needs the
//! same compiler on both ends; the image is that compiler, and `snapshot`/`restore` carries it
//! to another box). The container shares the host's network (gbuild's containers have no
//! network namespace), so distccd listens on the box's own address.
//!
//! Who may send compile jobs is bounded twice: distccd's own `--allow` ranges, and gbuild's check
//! that the listen address lies inside them (an unspecified address such as `0.0.0.0`, which
//! listens on every network of the box, or a range of every address, is refused). distccd runs
//! as the image's own unprivileged distcc user (`distcc`, `distccd`, else `nobody`) without
//! capabilities, which needs the subordinate id range.
//! Its log (`--log-stderr`) goes to the helper's own log file under the machine's `logs/helper/`.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use super::{BuildEnv, BuilderError, Machine, Result};
use crate::fsutil::IoContext;
use crate::runtime::{ContainerSpec, Rootfs};

/// An address range `ADDR/BITS` (a bare address is the one address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub bits: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Cidr, String> {
        let (a, b) = match s.split_once('/') {
            Some((a, b)) => (a, Some(b)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("invalid address range {s:?}: expected ADDR[/BITS]"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let bits =
            match b {
                Some(b) => b.parse::<u8>().ok().filter(|n| *n <= max).ok_or_else(|| {
                    format!("invalid address range {s:?}: BITS must be 0 to {max}")
                })?,
                None => max,
            };
        if bits == 0 {
            return Err(format!(
                "address range {s:?} is every address: name the network whose builders may send jobs"
            ));
        }
        Ok(Cidr {
            addr: mask(addr, bits),
            bits,
        })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.bits)
    }
}

fn mask(a: IpAddr, bits: u8) -> IpAddr {
    match a {
        IpAddr::V4(v) => {
            let m = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            IpAddr::V4((u32::from(v) & m).into())
        }
        IpAddr::V6(v) => {
            let m = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            IpAddr::V6((u128::from(v) & m).into())
        }
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.bits) == self.addr
    }

    /// The range of exactly `ip`.
    pub fn host(ip: IpAddr) -> Cidr {
        Cidr {
            addr: ip,
            bits: if ip.is_ipv4() { 32 } else { 128 },
        }
    }
}

/// `ADDR`, `ADDR:PORT` or `[ADDR]:PORT` (port 3632 when none is given).
pub fn parse_listen(s: &str) -> std::result::Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    s.trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, super::distcc::DEFAULT_PORT))
        .map_err(|_| {
            format!(
                "invalid listen address {s:?}: expected ADDR[:PORT] (an IP address of this box)"
            )
        })
}

/// gbuild's own check: the helper listens on one address, inside the allowed ranges.
pub fn check_listen(listen: &SocketAddr, allow: &[Cidr]) -> Result<()> {
    let ip = listen.ip();
    if ip.is_unspecified() {
        return Err(BuilderError::ListenEverywhere { ip });
    }
    if !allow.iter().any(|c| c.contains(ip)) {
        return Err(BuilderError::ListenOutsideAllow {
            ip,
            allow: allow
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(" "),
        });
    }
    Ok(())
}

/// What `gbuild helper` was asked for.
#[derive(Debug, Clone)]
pub struct HelperOptions {
    pub listen: SocketAddr,
    /// Empty: the listen address alone.
    pub allow: Vec<Cidr>,
    /// distccd's `--jobs` (its default: the number of cores + 2).
    pub jobs: Option<u32>,
    /// Default: `machines/<M>/logs/helper/<addr>-<port>.log`.
    pub log: Option<PathBuf>,
}

impl HelperOptions {
    pub fn allowed(&self) -> Vec<Cidr> {
        if self.allow.is_empty() {
            vec![Cidr::host(self.listen.ip())]
        } else {
            self.allow.clone()
        }
    }

    fn tag(&self) -> String {
        format!("{}-{}", self.listen.ip(), self.listen.port()).replace(':', "_")
    }
}

/// The log of a helper of `m`: `--log`, else the machine's helper log for its address.
pub fn log_path(m: &Machine, o: &HelperOptions) -> PathBuf {
    o.log
        .clone()
        .unwrap_or_else(|| m.files().helper_log(&o.tag()))
}

/// distccd's command line.
pub fn distccd_argv(o: &HelperOptions) -> Vec<String> {
    let mut v: Vec<String> = [
        "distccd",
        "--daemon",
        "--no-detach",
        "--log-stderr",
        "--log-level",
        "info",
        "--listen",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.push(o.listen.ip().to_string());
    v.push("--port".into());
    v.push(o.listen.port().to_string());
    for c in o.allowed() {
        v.push("--allow".into());
        v.push(c.to_string());
    }
    if let Some(j) = o.jobs {
        v.push("--jobs".into());
        v.push(j.to_string());
    }
    v
}

/// The user distccd runs as: the image's `distcc` (Gentoo's acct-user), else `distccd` (Debian's),
/// else `nobody`, as distccd itself would pick when started as root.
fn distcc_user(env: &BuildEnv, upper: &std::path::Path, image: &str) -> Option<(u32, u32)> {
    let passwd = super::session::overlay_read_in(env, upper, image, "etc/passwd")?;
    let passwd = String::from_utf8_lossy(&passwd);
    let entry = |name: &str| {
        passwd.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 4 && f[0] == name)
                .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
        })
    };
    ["distcc", "distccd", "nobody"]
        .into_iter()
        .find_map(entry)
        .filter(|(u, _)| *u != 0)
}

/// Run a helper for machine `m` in the foreground until distccd exits (a SIGTERM or SIGINT to
/// gbuild stops it); its exit status. The machine is only read: its builder may run meanwhile.
pub fn run(env: &BuildEnv, m: &Machine, o: &HelperOptions, echo: bool) -> Result<i32> {
    check_listen(&o.listen, &o.allowed())?;
    if !env.map.is_full() {
        return Err(BuilderError::HelperNeedsIdRange);
    }
    let image = m
        .meta()?
        .image
        .ok_or_else(|| BuilderError::NotBootstrapped(m.name.clone()))?;
    // The container's root: the image under a temporary upper dir of its own (the store's
    // temporary-name scheme, so a helper killed before its cleanup leaves nothing gc misses).
    let files = m.files();
    let scratch = files.temp("helper");
    let absent = scratch.join("absent");
    if !super::session::overlay_has(env, &absent, &image, "usr/bin/distccd") {
        return Err(BuilderError::NoDistccd {
            image,
            machine: m.name.clone(),
        });
    }
    let user = distcc_user(env, &absent, &image).ok_or_else(|| BuilderError::NoDistccUser {
        image: image.clone(),
    })?;
    let log_path = log_path(m, o);
    if let Some(d) = log_path.parent() {
        std::fs::create_dir_all(d).at("create directory", d)?;
    }
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .at("open log", &log_path)?;
    // Scratch roots of helpers that died before their cleanup.
    let stale = files.stale_temps("helper")?;
    env.helper().remove_trees(&stale)?;
    let (upper, work) = (scratch.join("upper"), scratch.join("work"));
    for d in [&upper, &work] {
        std::fs::create_dir_all(d).at("create directory", d)?;
    }
    let img = crate::layer::image::load(&env.store, &image)?;
    let mut layers = crate::layer::image::lowerdirs(&env.store, &img);
    layers.reverse();
    let argv = distccd_argv(o);
    let mut spec = ContainerSpec::new(
        Rootfs::Overlay {
            layers,
            upper,
            work,
        },
        argv.clone(),
        env.map.clone(),
    );
    spec.hostname = format!("gbuild-helper-{}", m.name);
    // Never root: distccd runs what clients send. (As root it would drop to this user itself,
    // but setgroups() is denied in a rootless user namespace.)
    spec.user = user;
    spec.env = vec![
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        "HOME=/tmp".into(),
        "TMPDIR=/tmp".into(),
        "LANG=C.UTF-8".into(),
    ];
    writeln!(
        log,
        ">>> gbuild {}: helper of {} on image {image}: {}",
        super::state::now(),
        m.name,
        argv.join(" ")
    )
    .at("write", &log_path)?;
    tracing::info!(
        "distcc helper of {} on {} (allow {}), image {image}; log: {}",
        m.name,
        o.listen,
        o.allowed()
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(" "),
        log_path.display()
    );
    // A helper serves builders for as long as it runs: a full disk costs its log, not the
    // helper (the first failure is a warning naming the log).
    let mut log_failed = false;
    let mut sink = |b: &[u8]| {
        if let (Err(e), false) = (log.write_all(b), log_failed) {
            log_failed = true;
            tracing::warn!("{}: {e}", log_path.display());
        }
        if echo {
            // Echo only; the log has it.
            let _ = std::io::stderr().write_all(b);
        }
    };
    let result = env.runtime.run_with_output(&spec, Some(&mut sink));
    // The helper's own outcome is what is returned; the log's last line is a courtesy.
    let _ = writeln!(
        log,
        ">>> gbuild {}: helper stopped ({})",
        super::state::now(),
        match &result {
            Ok(c) => format!("exit status {c}"),
            Err(e) => e.to_string(),
        }
    );
    let removed = env.helper().remove_trees(std::slice::from_ref(&scratch));
    let code = result?;
    removed?;
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let c: Cidr = "192.168.1.7/24".parse().unwrap();
        assert_eq!(c.to_string(), "192.168.1.0/24");
        assert!(c.contains("192.168.1.200".parse().unwrap()));
        assert!(!c.contains("192.168.2.1".parse().unwrap()));
        assert!(!c.contains("::1".parse().unwrap()));
        assert_eq!(
            "127.0.0.1".parse::<Cidr>().unwrap().to_string(),
            "127.0.0.1/32"
        );
        assert!("fd00::/8"
            .parse::<Cidr>()
            .unwrap()
            .contains("fd12::5".parse().unwrap()));
        for bad in ["0.0.0.0/0", "10.0.0.0/33", "box", "::/0"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn listen_must_lie_in_the_allowed_ranges() {
        let lan: Vec<Cidr> = vec!["192.168.1.0/24".parse().unwrap()];
        let l = parse_listen("192.168.1.5").unwrap();
        assert_eq!(l.port(), 3632);
        check_listen(&l, &lan).unwrap();
        let e = check_listen(&parse_listen("0.0.0.0:3632").unwrap(), &lan).unwrap_err();
        let e = e.to_string();
        assert!(e.contains("every network"), "{e}");
        let e = check_listen(&parse_listen("10.0.0.5:3700").unwrap(), &lan).unwrap_err();
        let e = e.to_string();
        assert!(e.contains("outside --allow 192.168.1.0/24"), "{e}");
        assert_eq!(parse_listen("[::1]:3700").unwrap().port(), 3700);
        assert!(parse_listen("box2").is_err());
    }

    #[test]
    fn distccd_is_bounded_by_the_same_ranges() {
        let o = HelperOptions {
            listen: parse_listen("127.0.0.1:3701").unwrap(),
            allow: vec![],
            jobs: Some(2),
            log: None,
        };
        let a = distccd_argv(&o).join(" ");
        assert!(
            a.contains("--listen 127.0.0.1 --port 3701 --allow 127.0.0.1/32 --jobs 2"),
            "{a}"
        );
        assert!(
            a.contains("--no-detach") && a.contains("--log-stderr"),
            "{a}"
        );
    }
}
