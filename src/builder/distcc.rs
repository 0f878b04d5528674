//! The build side of distcc helpers: a machine's `distcc_hosts` (gbuild.toml) become, for each
//! pass, `FEATURES=distcc`, `DISTCC_HOSTS` and a MAKEOPTS scaled to the helpers, written into the
//! builder's own package.env entry (`buildside`), never into the machine's configuration. Each
//! helper is probed before the pass: one that is down is left out with a warning in the pass log,
//! and its share compiles locally (distcc itself also falls back to a local compile when a helper
//! fails in the middle of a pass). The helpers run the machine's own image (`helper`), so their
//! compiler is the builder's.

use std::time::Duration;

use super::{BuildEnv, BuilderError, Machine, Result};
use crate::config::Config;

/// distccd's port.
pub const DEFAULT_PORT: u16 = 3632;
/// distcc's default number of jobs for a TCP host without `/LIMIT`.
pub const DEFAULT_LIMIT: u32 = 4;
/// How long a probe waits for a helper to accept a connection.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// One entry of `distcc_hosts`: distcc's `HOST[:PORT][/LIMIT][,OPTIONS]` for a TCP host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSpec {
    pub host: String,
    pub port: u16,
    pub limit: u32,
    /// distcc's per-host options after the first comma (`lzo`), passed through.
    pub options: String,
}

impl std::str::FromStr for HostSpec {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<HostSpec, String> {
        let t = s.trim();
        if t.starts_with('@') || t.contains("--") || t.is_empty() {
            return Err("expected HOST[:PORT][/LIMIT] (a distcc helper over TCP)".into());
        }
        let (main, options) = match t.split_once(',') {
            Some((m, o)) => (m, o.to_string()),
            None => (t, String::new()),
        };
        let (hostport, limit) = match main.split_once('/') {
            Some((h, l)) => (
                h,
                l.parse::<u32>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| format!("invalid job limit {l:?}"))?,
            ),
            None => (main, DEFAULT_LIMIT),
        };
        let (host, port) = if let Some(rest) = hostport.strip_prefix('[') {
            let (h, p) = rest
                .split_once(']')
                .ok_or("an IPv6 address needs its closing ']'")?;
            (h.to_string(), p.strip_prefix(':'))
        } else {
            match hostport.split_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (hostport.to_string(), None),
            }
        };
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("invalid port {p:?}"))?,
            None => DEFAULT_PORT,
        };
        if host.is_empty()
            || host == "localhost"
            || !host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-_:".contains(c))
        {
            return Err(format!(
                "invalid host {host:?} (the builder itself always compiles too; name other boxes)"
            ));
        }
        Ok(HostSpec {
            host,
            port,
            limit,
            options,
        })
    }
}

impl std::fmt::Display for HostSpec {
    /// The entry as DISTCC_HOSTS takes it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}/{}", self.host, self.port, self.limit)?;
        } else {
            write!(f, "{}:{}/{}", self.host, self.port, self.limit)?;
        }
        if !self.options.is_empty() {
            write!(f, ",{}", self.options)?;
        }
        Ok(())
    }
}

/// A helper and whether it answered.
#[derive(Debug, Clone)]
pub struct Helper {
    pub spec: HostSpec,
    /// `Err` says why it is down.
    pub state: std::result::Result<(), String>,
}

/// The distcc settings of one pass.
#[derive(Debug, Clone)]
pub struct Plan {
    pub helpers: Vec<Helper>,
    /// Jobs the builder runs itself.
    pub local_jobs: usize,
    /// Why no helper may be used now although some may be up (the builder's compiler is no
    /// longer its image's).
    pub held: Option<String>,
    /// The builder's distcc cannot connect through Portage's SOCKS5 proxy, so the builds of
    /// the pass run without Portage's network sandbox (else no job would leave it).
    pub no_proxy: bool,
}

impl Plan {
    fn up(&self) -> impl Iterator<Item = &HostSpec> {
        self.helpers
            .iter()
            .filter(|h| h.state.is_ok())
            .map(|h| &h.spec)
    }

    /// Whether any helper is up and may be used (else the pass compiles locally, without
    /// distcc).
    pub fn enabled(&self) -> bool {
        self.held.is_none() && self.up().next().is_some()
    }

    /// MAKEOPTS' `-j`: the builder's own jobs plus every job slot of the helpers that are up.
    pub fn jobs(&self) -> usize {
        self.local_jobs + self.up().map(|h| h.limit as usize).sum::<usize>()
    }

    /// DISTCC_HOSTS: the helpers first (distcc fills the hosts in this order), then the builder.
    pub fn distcc_hosts(&self) -> String {
        let mut v: Vec<String> = self.up().map(|h| h.to_string()).collect();
        v.push(format!("localhost/{}", self.local_jobs));
        v.join(" ")
    }

    /// One line per helper that is down.
    pub fn warnings(&self) -> Vec<String> {
        if let Some(why) = &self.held {
            return vec![format!(
                "warning: distcc helpers not used: {why}; this pass compiles locally"
            )];
        }
        let mut out: Vec<String> = self
            .helpers
            .iter()
            .filter_map(|h| {
                h.state.as_ref().err().map(|e| {
                    format!(
                        "warning: distcc helper {} is down ({e}): its share of the compiles runs locally",
                        h.spec
                    )
                })
            })
            .collect();
        if !self.enabled() {
            out.push("warning: no distcc helper is up: this pass compiles locally only".into());
        }
        out
    }
}

/// The builder's own parallel jobs: gbuild.toml's `jobs`, else the number of cores.
pub fn local_jobs(env: &BuildEnv) -> usize {
    if env.config.jobs > 0 {
        env.config.jobs as usize
    } else {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    }
}

/// The helpers gbuild.toml names for machine `m`, parsed; an entry that does not parse is an
/// error naming it.
pub fn hosts_of(env: &BuildEnv, m: &Machine) -> Result<Vec<HostSpec>> {
    parse_hosts(&env.config, &m.name)
}

/// As `hosts_of`, from a configuration and a machine name.
pub fn parse_hosts(config: &Config, machine: &str) -> Result<Vec<HostSpec>> {
    config
        .machine(machine)
        .distcc_hosts
        .iter()
        .map(|h| {
            h.parse().map_err(|why| BuilderError::BadDistccHost {
                machine: machine.to_string(),
                value: h.clone(),
                why,
            })
        })
        .collect()
}

/// Probe each helper (in parallel, each within `PROBE_TIMEOUT`).
pub fn probe(specs: &[HostSpec]) -> Vec<Helper> {
    std::thread::scope(|sc| {
        let handles: Vec<_> = specs
            .iter()
            .map(|s| {
                sc.spawn(move || Helper {
                    spec: s.clone(),
                    state: crate::fetch::probe::tcp(&s.host, s.port, PROBE_TIMEOUT),
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("probe thread"))
            .collect()
    })
}

/// The distcc settings of a pass of `m`, its helpers probed now; `None` when it has none.
pub fn plan(env: &BuildEnv, m: &Machine) -> Result<Option<Plan>> {
    let specs = hosts_of(env, m)?;
    if specs.is_empty() {
        return Ok(None);
    }
    Ok(Some(Plan {
        helpers: probe(&specs),
        local_jobs: local_jobs(env),
        held: None,
        no_proxy: false,
    }))
}

/// Packages whose programs compile on a helper (distcc sends preprocessed code: the compiler
/// and assembler are what must match, headers and libraries stay on the builder).
const COMPILERS: &[&str] = &[
    "sys-devel/gcc-",
    "sys-devel/binutils-",
    "sys-devel/clang-",
    "llvm-core/clang-",
];

/// The compiler packages merged (or removed) in the builder's upper dir since its image was
/// made: the helpers, which run that image, no longer have the builder's compiler.
pub fn compilers_changed(upper: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for prefix in COMPILERS {
        let (cat, pn) = prefix.split_once('/').unwrap_or(("", prefix));
        let Ok(rd) = std::fs::read_dir(upper.join("var/db/pkg").join(cat)) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(pn) && name[pn.len()..].starts_with(|c: char| c.is_ascii_digit()) {
                out.push(format!("{cat}/{name}"));
            }
        }
    }
    out.sort();
    out
}

/// Whether a distcc client binary connects through `DISTCC_SOCKS_PROXY`, the SOCKS5 proxy on a
/// UNIX socket that Portage starts under `FEATURES=network-sandbox` (Gentoo's distcc does;
/// other distributions' builds may not).
pub fn supports_socks_proxy(client: &[u8]) -> bool {
    let needle = b"DISTCC_SOCKS_PROXY";
    client.windows(needle.len()).any(|w| w == needle)
}

/// A shell step that gives a builder distcc when its image lacks it: `sys-devel/distcc` once,
/// outside the world set, without a binpkg (it is the builder's tool, not something hosts get).
/// A root that already has a distcc (and distccd) is left alone.
pub const ENSURE_DISTCC: &str = "command -v distcc >/dev/null && command -v distccd >/dev/null || \
     emerge --oneshot --noreplace --buildpkg=n --usepkg=n --color=n sys-devel/distcc";

/// The package depclean must keep while a machine uses helpers (it is in no world set).
pub const DISTCC_ATOM: &str = "sys-devel/distcc";

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(s: &str) -> HostSpec {
        s.parse().unwrap()
    }

    #[test]
    fn host_syntax() {
        assert_eq!(
            spec("10.0.0.2"),
            HostSpec {
                host: "10.0.0.2".into(),
                port: 3632,
                limit: 4,
                options: String::new()
            }
        );
        let h = spec("box2:3700/8,lzo");
        assert_eq!((h.port, h.limit, h.options.as_str()), (3700, 8, "lzo"));
        assert_eq!(h.to_string(), "box2:3700/8,lzo");
        assert_eq!(spec("[fd00::2]:3633").to_string(), "[fd00::2]:3633/4");
        for bad in [
            "",
            "@box2",
            "box2:0",
            "box2/0",
            "localhost/2",
            "a b",
            "box:x",
        ] {
            assert!(bad.parse::<HostSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn plan_scales_jobs_to_the_helpers_that_are_up() {
        let p = Plan {
            helpers: vec![
                Helper {
                    spec: spec("10.0.0.2/8"),
                    state: Ok(()),
                },
                Helper {
                    spec: spec("10.0.0.3:3700/4"),
                    state: Err("connection refused".into()),
                },
            ],
            local_jobs: 2,
            held: None,
            no_proxy: false,
        };
        assert!(p.enabled());
        assert_eq!(p.jobs(), 10);
        assert_eq!(p.distcc_hosts(), "10.0.0.2:3632/8 localhost/2");
        let w = p.warnings();
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("10.0.0.3:3700/4 is down (connection refused)"));
        let held = Plan {
            held: Some("why".into()),
            ..p
        };
        assert!(!held.enabled());
        assert_eq!(held.warnings().len(), 1);
    }

    #[test]
    fn a_compiler_merged_since_the_image_is_seen() {
        let t = tempfile::tempdir().unwrap();
        assert!(compilers_changed(t.path()).is_empty());
        for d in [
            "var/db/pkg/sys-devel/gcc-14.2.1_p20241221",
            "var/db/pkg/sys-devel/gcc-config-2.11",
            "var/db/pkg/app-editors/vim-9.1.0",
        ] {
            std::fs::create_dir_all(t.path().join(d)).unwrap();
        }
        assert_eq!(
            compilers_changed(t.path()),
            vec!["sys-devel/gcc-14.2.1_p20241221"]
        );
    }
}
