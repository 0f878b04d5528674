//! Which stage3 a machine starts from. Gentoo publishes one stage3 per profile family
//! (`stage3-amd64-openrc`, `-systemd`, `-desktop-openrc`, `-musl`, ...); bootstrapping a systemd,
//! musl or split-usr host's configuration on another family's stage3 makes a different system,
//! so the family follows the host's profile. One table, [`FAMILIES`], says which stage3 serves
//! which profile; docs/real-hosts.md shows the same table.

/// Whether `/bin`, `/sbin`, `/lib` are links into `/usr` (merged-usr) or real directories.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usr {
    Merged,
    Split,
}

/// One row: the profile below `default/linux/<arch>/<release>/` ("" for the release's own
/// profile), the stage3 variant (`stage3-<arch>-<variant>-<timestamp>.tar.xz`), its /usr layout.
pub struct Family {
    pub profile: &'static str,
    pub variant: &'static str,
    pub usr: Usr,
}

const fn row(profile: &'static str, variant: &'static str, usr: Usr) -> Family {
    Family {
        profile,
        variant,
        usr,
    }
}

/// Profile releases the table is written for (23.0 made merged-usr the default and moved
/// split-usr into sub-profiles).
pub const RELEASES: &[&str] = &["23.0"];

/// Profile (below `default/linux/<arch>/23.0/`) -> stage3 variant, as Gentoo's release
/// engineering builds them.
pub const FAMILIES: &[Family] = &[
    row("", "openrc", Usr::Merged),
    row("systemd", "systemd", Usr::Merged),
    row("desktop", "desktop-openrc", Usr::Merged),
    row("desktop/gnome", "desktop-openrc", Usr::Merged),
    row("desktop/plasma", "desktop-openrc", Usr::Merged),
    row("desktop/systemd", "desktop-systemd", Usr::Merged),
    row("desktop/gnome/systemd", "desktop-systemd", Usr::Merged),
    row("desktop/plasma/systemd", "desktop-systemd", Usr::Merged),
    row("hardened", "hardened-openrc", Usr::Merged),
    row("hardened/selinux", "hardened-selinux-openrc", Usr::Merged),
    row("hardened/systemd", "hardened-systemd", Usr::Merged),
    row("musl", "musl", Usr::Merged),
    row("musl/hardened", "musl-hardened", Usr::Merged),
    row("musl/llvm", "musl-llvm", Usr::Merged),
    row("llvm", "llvm-openrc", Usr::Merged),
    row("llvm/systemd", "llvm-systemd", Usr::Merged),
    row("no-multilib", "nomultilib-openrc", Usr::Merged),
    row("no-multilib/systemd", "nomultilib-systemd", Usr::Merged),
    row("split-usr", "openrc-splitusr", Usr::Split),
    row("split-usr/desktop", "desktop-openrc-splitusr", Usr::Split),
    row(
        "split-usr/desktop/gnome",
        "desktop-openrc-splitusr",
        Usr::Split,
    ),
    row(
        "split-usr/desktop/plasma",
        "desktop-openrc-splitusr",
        Usr::Split,
    ),
    row("split-usr/hardened", "hardened-openrc-splitusr", Usr::Split),
    row("split-usr/musl", "musl-splitusr", Usr::Split),
    row(
        "split-usr/no-multilib",
        "nomultilib-openrc-splitusr",
        Usr::Split,
    ),
];

/// The stage3 a profile needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage3For {
    pub arch: String,
    pub variant: String,
    pub usr: Usr,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("no stage3 is known for profile {profile:?}: set `variant = \"<stage3 variant>\"` in gbuild.toml (e.g. \"openrc\", \"systemd\", \"musl\") to choose one")]
pub struct UnknownProfile {
    pub profile: String,
}

/// The stage3 for `profile` (a path below a repository's `profiles/`, e.g.
/// `default/linux/amd64/23.0/desktop/plasma/systemd`).
pub fn for_profile(profile: &str) -> Result<Stage3For, UnknownProfile> {
    let unknown = || UnknownProfile {
        profile: profile.to_string(),
    };
    let p = profile.trim_matches('/');
    let rest = p.strip_prefix("default/linux/").ok_or_else(unknown)?;
    let (arch, rest) = rest.split_once('/').ok_or_else(unknown)?;
    let (release, sub) = rest.split_once('/').unwrap_or((rest, ""));
    if !RELEASES.contains(&release) || arch.is_empty() {
        return Err(unknown());
    }
    let f = FAMILIES
        .iter()
        .find(|f| f.profile == sub)
        .ok_or_else(unknown)?;
    Ok(Stage3For {
        arch: arch.to_string(),
        variant: f.variant.to_string(),
        usr: f.usr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(p: &str) -> String {
        for_profile(p).unwrap().variant
    }

    #[test]
    fn every_family() {
        let base = "default/linux/amd64/23.0";
        assert_eq!(v(base), "openrc");
        assert_eq!(v(&format!("{base}/systemd")), "systemd");
        assert_eq!(v(&format!("{base}/desktop")), "desktop-openrc");
        assert_eq!(v(&format!("{base}/desktop/plasma")), "desktop-openrc");
        assert_eq!(
            v(&format!("{base}/desktop/plasma/systemd")),
            "desktop-systemd"
        );
        assert_eq!(
            v(&format!("{base}/desktop/gnome/systemd")),
            "desktop-systemd"
        );
        assert_eq!(v(&format!("{base}/hardened")), "hardened-openrc");
        assert_eq!(
            v(&format!("{base}/hardened/selinux")),
            "hardened-selinux-openrc"
        );
        assert_eq!(v(&format!("{base}/musl")), "musl");
        assert_eq!(v(&format!("{base}/musl/llvm")), "musl-llvm");
        assert_eq!(v(&format!("{base}/llvm")), "llvm-openrc");
        assert_eq!(v(&format!("{base}/llvm/systemd")), "llvm-systemd");
        assert_eq!(v(&format!("{base}/no-multilib")), "nomultilib-openrc");
        let s = for_profile(&format!("{base}/split-usr")).unwrap();
        assert_eq!((s.variant.as_str(), s.usr), ("openrc-splitusr", Usr::Split));
        assert_eq!(for_profile(base).unwrap().usr, Usr::Merged);
        assert_eq!(
            v("default/linux/arm64/23.0/systemd/"),
            "systemd",
            "arch comes from the profile"
        );
        assert_eq!(
            for_profile("default/linux/arm64/23.0").unwrap().arch,
            "arm64"
        );
        // Every row is reachable and distinct.
        for f in FAMILIES {
            let p = if f.profile.is_empty() {
                base.to_string()
            } else {
                format!("{base}/{}", f.profile)
            };
            assert_eq!(v(&p), f.variant, "{p}");
        }
    }

    #[test]
    fn unknown_profiles_name_the_profile_and_the_override() {
        for p in [
            "default/linux/amd64/17.1",
            "default/linux/amd64/23.0/weird",
            "myoverlay/laptop",
            "",
        ] {
            let e = for_profile(p).unwrap_err();
            assert_eq!(e.profile, p);
            let msg = e.to_string();
            assert!(msg.contains(&format!("{p:?}")), "{msg}");
            assert!(msg.contains("variant = "), "{msg}");
            assert!(msg.contains("gbuild.toml"), "{msg}");
        }
    }
}
