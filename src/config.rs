//! `gbuild.toml`: the user's defaults (mirror, arch, variant, keyring, loop interval, jobs,
//! whether a pass the publish gate holds is published anyway, published generations kept, the
//! build-side options of `[build]`) and per-machine settings (`[machines.<M>]`: the distcc
//! helpers its passes use, `[machines.<M>.build]` over `[build]`). A missing file means the
//! built-in defaults; a malformed one, or a value out of range, is an error naming the file and
//! the value.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const DEFAULT_MIRROR: &str = "https://distfiles.gentoo.org";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Gentoo mirror base URL (http, https or file) with the distfiles layout.
    pub mirror: String,
    pub arch: String,
    /// Stage3 variant (`openrc`, `systemd`, `desktop-openrc`, ...); empty: the one the machine's
    /// profile needs (`crate::stage3::FAMILIES`), `openrc` for a machine without a profile.
    pub variant: String,
    /// OpenPGP key bundle to trust instead of the shipped `stage3/keys/`.
    pub keyring: Option<PathBuf>,
    /// Extra primary fingerprints the user trusts besides the pinned Gentoo ones.
    pub trusted_fingerprints: Vec<String>,
    /// Wait between successful build passes, e.g. "24h", "30m".
    pub interval: String,
    /// Parallel make jobs inside the builder; 0 = number of cores.
    pub jobs: u32,
    /// Publish a pass that the publish gate holds (the host's upgrade would compile, conflict or
    /// leave something out) all the same; status then says `published-anyway`.
    pub publish_held: bool,
    /// Build-side options of every machine (`[build]`); each is off by default.
    pub build: BuildOptions,
    /// Published generations kept per machine (besides the one served and tagged ones); at
    /// least 1.
    pub keep: usize,
    /// Settings of one machine, by name (`[machines.laptop]`).
    pub machines: BTreeMap<String, MachineSettings>,
}

/// How the builder builds, beside the machine's configuration (build side only: never written
/// into it, and below every per-package entry of the host's package.env). A field left out
/// takes `[build]`'s value; an empty string or 0 turns a `[build]` value off for one machine.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BuildOptions {
    /// The builder's MAKEOPTS, e.g. `"-j16 -l12"`; unset: `-j<jobs>` (scaled to the distcc
    /// helpers that are up).
    pub makeopts: Option<String>,
    /// emerge's `--jobs`: packages built at the same time; unset or 0: one at a time.
    pub emerge_jobs: Option<u32>,
    /// emerge's `--load-average`: no new package while the load is above it; unset or 0: none.
    pub load_average: Option<f64>,
    /// PORTAGE_TMPDIR's build directory on a tmpfs of this size (`"16G"`, `"512M"`, `"50%"`
    /// of the memory); unset or empty: on disk, in the builder.
    pub tmpfs: Option<String>,
    /// ccache with a cache of this maximum size (`"20G"`) in the store, kept across builders
    /// and rebases; unset or empty: no ccache.
    pub ccache: Option<String>,
}

impl BuildOptions {
    /// These options with `over`'s set fields taking their place.
    pub fn merged(&self, over: &BuildOptions) -> BuildOptions {
        BuildOptions {
            makeopts: over.makeopts.clone().or_else(|| self.makeopts.clone()),
            emerge_jobs: over.emerge_jobs.or(self.emerge_jobs),
            load_average: over.load_average.or(self.load_average),
            tmpfs: over.tmpfs.clone().or_else(|| self.tmpfs.clone()),
            ccache: over.ccache.clone().or_else(|| self.ccache.clone()),
        }
    }

    /// MAKEOPTS when set (not empty).
    pub fn makeopts(&self) -> Option<&str> {
        self.makeopts
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
    }

    /// The tmpfs size when set (not empty), as the kernel's `size=` takes it.
    pub fn tmpfs(&self) -> Option<&str> {
        self.tmpfs
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
    }

    /// The ccache size in bytes when set (not empty).
    pub fn ccache_bytes(&self) -> Option<u64> {
        let s = self
            .ccache
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())?;
        parse_size(s, false).ok()
    }

    /// emerge's options for these settings (`--jobs=N --load-average=X`), possibly empty.
    pub fn emerge_opts(&self) -> Vec<String> {
        let mut v = Vec::new();
        if let Some(j) = self.emerge_jobs.filter(|j| *j > 0) {
            v.push(format!("--jobs={j}"));
        }
        if let Some(l) = self.load_average.filter(|l| *l > 0.0) {
            v.push(format!("--load-average={l}"));
        }
        v
    }

    /// Every value checked; `at` names the table (`build`, `machines.M.build`).
    fn validate(&self, at: &str) -> Result<(), String> {
        if let Some(m) = self.makeopts() {
            if m.chars()
                .any(|c| c.is_control() || matches!(c, '"' | '\\' | '$' | '`'))
            {
                return Err(format!(
                    "{at}.makeopts {m:?}: quotes, backslashes, `$`, backquotes and control characters are not allowed"
                ));
            }
        }
        if let Some(l) = self.load_average {
            if !l.is_finite() || l < 0.0 {
                return Err(format!("{at}.load_average {l}: must be a number >= 0"));
            }
        }
        if let Some(t) = self.tmpfs() {
            parse_size(t, true).map_err(|e| format!("{at}.tmpfs: {e}"))?;
        }
        if let Some(c) = self
            .ccache
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            parse_size(c, false).map_err(|e| format!("{at}.ccache: {e}"))?;
        }
        Ok(())
    }
}

/// A size such as `512M`, `16G`, `1T`, `4096K` or a bare number of bytes (binary units, as the
/// kernel's tmpfs takes them); `N%` (of the memory) when `percent` is allowed. Never 0 (a tmpfs
/// of size 0 has no limit).
pub fn parse_size(s: &str, percent: bool) -> Result<u64, String> {
    let bad = || {
        format!(
            "invalid size {s:?}: expected e.g. 512M, 16G{}",
            if percent { " or 50%" } else { "" }
        )
    };
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| bad())?;
    let mult: u64 = match unit {
        "" => 1,
        "k" | "K" => 1 << 10,
        "m" | "M" => 1 << 20,
        "g" | "G" => 1 << 30,
        "t" | "T" => 1 << 40,
        "%" if percent && n <= 100 => 1,
        _ => return Err(bad()),
    };
    match n.checked_mul(mult) {
        Some(0) => Err(format!("invalid size {s:?}: must not be 0")),
        Some(b) => Ok(b),
        None => Err(bad()),
    }
}

/// What `[machines.<M>]` may set.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MachineSettings {
    /// distcc helpers (`gbuild helper`) the machine's passes compile on, in distcc's host
    /// syntax: `HOST[:PORT][/LIMIT]`, e.g. `"192.168.1.20:3632/8"`. Build side only.
    pub distcc_hosts: Vec<String>,
    /// `[machines.<M>.build]`: this machine's build-side options over `[build]`.
    pub build: BuildOptions,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            mirror: DEFAULT_MIRROR.to_string(),
            arch: "amd64".to_string(),
            variant: String::new(),
            keyring: None,
            trusted_fingerprints: Vec::new(),
            interval: "24h".to_string(),
            jobs: 0,
            build: BuildOptions::default(),
            machines: BTreeMap::new(),
            publish_held: false,
            keep: DEFAULT_KEEP,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
}

impl Config {
    /// Load `path`; a missing file gives the defaults only when `required` is false.
    pub fn load(path: &Path, required: bool) -> Result<Config, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let c: Config = toml::from_str(&text).map_err(|e| ConfigError::Parse {
                    path: path.to_path_buf(),
                    message: e.message().to_string(),
                })?;
                c.validate().map_err(|message| ConfigError::Parse {
                    path: path.to_path_buf(),
                    message,
                })?;
                Ok(c)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                Ok(Config::default())
            }
            Err(source) => Err(ConfigError::Read {
                path: path.to_path_buf(),
                source,
            }),
        }
    }
}

impl Config {
    /// The values serde cannot check.
    fn validate(&self) -> Result<(), String> {
        self.build.validate("build")?;
        for (name, m) in &self.machines {
            m.build.validate(&format!("machines.{name}.build"))?;
        }
        Ok(())
    }

    /// The build-side options of machine `name`: its own over `[build]`.
    pub fn build_options(&self, name: &str) -> BuildOptions {
        match self.machines.get(name) {
            Some(m) => self.build.merged(&m.build),
            None => self.build.clone(),
        }
    }

    /// The settings of machine `name` (the defaults when gbuild.toml has none).
    pub fn machine(&self, name: &str) -> MachineSettings {
        self.machines.get(name).cloned().unwrap_or_default()
    }

    /// The stage3 variant for a machine whose profile is `profile` (a path below `profiles/`):
    /// `variant` when set, else the profile's family, else `openrc`.
    pub fn variant_for(
        &self,
        profile: Option<&str>,
    ) -> Result<String, crate::stage3::UnknownProfile> {
        if !self.variant.is_empty() {
            return Ok(self.variant.clone());
        }
        match profile {
            Some(p) => Ok(crate::stage3::for_profile(p)?.variant),
            None => Ok(DEFAULT_VARIANT.to_string()),
        }
    }
}

/// Generations kept per machine when gbuild.toml does not say (`keep`).
pub const DEFAULT_KEEP: usize = 5;

/// The stage3 variant of a machine without a profile of its own (the `default` machine).
pub const DEFAULT_VARIANT: &str = "openrc";

/// Parse a duration such as `90s`, `30m`, `24h`, `2d`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 30m, 24h"))?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("invalid duration {s:?}: unit must be s, m, h or d")),
    };
    Ok(std::time::Duration::from_secs(n * mult))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_file_gives_defaults() {
        let c = Config::load(Path::new("/nonexistent/gbuild.toml"), false).unwrap();
        assert_eq!(c.mirror, DEFAULT_MIRROR);
    }

    #[test]
    fn bad_file_names_itself() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("gbuild.toml");
        std::fs::write(&p, "mirrorr = 3\n").unwrap();
        let e = Config::load(&p, false).unwrap_err().to_string();
        assert!(e.contains("gbuild.toml"), "{e}");
    }

    #[test]
    fn machine_settings() {
        let c: Config =
            toml::from_str("jobs = 2\n[machines.laptop]\ndistcc_hosts = [\"10.0.0.2:3632/8\"]\n")
                .unwrap();
        assert_eq!(c.machine("laptop").distcc_hosts, vec!["10.0.0.2:3632/8"]);
        assert!(c.machine("other").distcc_hosts.is_empty());
        assert!(toml::from_str::<Config>("[machines.x]\ndistcc = 1\n").is_err());
    }

    #[test]
    fn build_options_per_machine_over_global() {
        let c: Config = toml::from_str(
            "[build]\ntmpfs = \"8G\"\nemerge_jobs = 3\nmakeopts = \"-j8\"\n\
             [machines.small.build]\ntmpfs = \"\"\nmakeopts = \"-j2 -l2\"\nload_average = 2.5\n",
        )
        .unwrap();
        c.validate().unwrap();
        let big = c.build_options("big");
        assert_eq!(big.tmpfs(), Some("8G"));
        assert_eq!(big.makeopts(), Some("-j8"));
        assert_eq!(big.emerge_opts(), vec!["--jobs=3"]);
        let small = c.build_options("small");
        assert_eq!(small.tmpfs(), None);
        assert_eq!(small.makeopts(), Some("-j2 -l2"));
        assert_eq!(small.emerge_opts(), vec!["--jobs=3", "--load-average=2.5"]);
        assert_eq!(small.ccache_bytes(), None);
        assert_eq!(
            Config::default().build_options("x"),
            BuildOptions::default()
        );
    }

    #[test]
    fn bad_build_options_name_the_value() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("gbuild.toml");
        for (text, needle) in [
            (
                "[build]\ntmpfs = \"8Q\"\n",
                "build.tmpfs: invalid size \"8Q\"",
            ),
            ("[build]\ntmpfs = \"0\"\n", "must not be 0"),
            ("[build]\nccache = \"50%\"\n", "build.ccache: invalid size"),
            (
                "[machines.m.build]\nmakeopts = \"-j$(nproc)\"\n",
                "machines.m.build.makeopts",
            ),
            ("[build]\nload_average = -1.0\n", "build.load_average -1"),
            ("[build]\nemerge_jobs = -1\n", "gbuild.toml"),
        ] {
            std::fs::write(&p, text).unwrap();
            let e = Config::load(&p, false).unwrap_err().to_string();
            assert!(
                e.contains("gbuild.toml") && e.contains(needle),
                "{text}: {e}"
            );
        }
        assert_eq!(parse_size("512M", false), Ok(512 << 20));
        assert_eq!(parse_size("50%", true), Ok(50));
        assert!(parse_size("101%", true).is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("24h").unwrap().as_secs(), 86400);
        assert_eq!(parse_duration("90").unwrap().as_secs(), 90);
        assert!(parse_duration("5y").is_err());
    }
}
