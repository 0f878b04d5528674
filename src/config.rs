//! `gbuild.toml`: the user's defaults (mirror, arch, variant, keyring, loop interval, jobs,
//! whether a pass the publish gate holds is published anyway, published generations kept) and per-machine settings
//! (`[machines.<M>]`: the distcc helpers its passes use). A missing file means the built-in
//! defaults; a malformed one is an error naming the file.

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
    /// Published generations kept per machine (besides the one served and tagged ones); at
    /// least 1.
    pub keep: usize,
    /// Settings of one machine, by name (`[machines.laptop]`).
    pub machines: BTreeMap<String, MachineSettings>,
}

/// What `[machines.<M>]` may set.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MachineSettings {
    /// distcc helpers (`gbuild helper`) the machine's passes compile on, in distcc's host
    /// syntax: `HOST[:PORT][/LIMIT]`, e.g. `"192.168.1.20:3632/8"`. Build side only.
    pub distcc_hosts: Vec<String>,
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
            Ok(text) => toml::from_str(&text).map_err(|e| ConfigError::Parse {
                path: path.to_path_buf(),
                message: e.message().to_string(),
            }),
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
    fn durations() {
        assert_eq!(parse_duration("24h").unwrap().as_secs(), 86400);
        assert_eq!(parse_duration("90").unwrap().as_secs(), 90);
        assert!(parse_duration("5y").is_err());
    }
}
