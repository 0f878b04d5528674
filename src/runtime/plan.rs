//! The planner: from a container description and the facts of the host to the OCI spec and the
//! list of files to create, without touching the system. Everything the runtime decides about a
//! container is decided here, so it can be read in one place and tested against checked-in
//! expectations (`testdata/`).
//!
//! Every field libcontainer acts on is set explicitly: the oci-spec builders fill unset fields
//! with defaults that bite (a deny-all device cgroup, RLIMIT_NOFILE 1024, default mounts).

use std::path::{Path, PathBuf};

use libcontainer::oci_spec::runtime::{
    Capabilities, Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxIdMapping,
    LinuxIdMappingBuilder, LinuxNamespaceBuilder, LinuxNamespaceType, Mount, MountBuilder,
    PosixRlimitBuilder, PosixRlimitType, ProcessBuilder, RootBuilder, Spec, SpecBuilder,
    UserBuilder,
};

use super::{ContainerSpec, Rootfs, RuntimeError};
use crate::idmap::IdRange;

/// What the planner needs to know about the host. `probe` reads it; tests pass it in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts {
    /// The running kernel's `(major, minor)`.
    pub kernel: (u32, u32),
    /// Not real root: the container gets a user namespace with the spec's id mapping.
    pub rootless: bool,
    /// Capability names the kernel supports (`CAP_CHOWN`, ...).
    pub caps: Vec<String>,
    /// The hard RLIMIT_NOFILE gbuild runs with (the container gets it as soft and hard limit).
    pub nofile: u64,
    /// The host has an /etc/resolv.conf to lend the container.
    pub resolv_conf: bool,
}

impl HostFacts {
    /// The facts of the running system.
    pub fn probe() -> HostFacts {
        let release = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default();
        let caps = caps::runtime::procfs_all_supported(None)
            .unwrap_or_else(|_| caps::all())
            .into_iter()
            .map(|c| c.to_string())
            .collect();
        let nofile = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .map(|(_, hard)| hard)
            .unwrap_or(4096);
        HostFacts {
            kernel: kernel_version(&release),
            rootless: !nix::unistd::geteuid().is_root(),
            caps,
            nofile,
            resolv_conf: Path::new("/etc/resolv.conf").exists(),
        }
    }
}

/// `(major, minor)` of a kernel release string such as `6.8.0-45-generic`.
pub fn kernel_version(release: &str) -> (u32, u32) {
    let mut it = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    (it.next().unwrap_or(0), it.next().unwrap_or(0))
}

/// A container description whose paths were checked and resolved against the filesystem
/// (`prepare::resolve`): the rootfs and bind sources exist and are canonical.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub spec: ContainerSpec,
    /// A plain rootfs directory has an `etc/resolv.conf` to mount the host's over (an overlay
    /// always may: the mount point lands in its upper dir).
    pub rootfs_has_resolv_conf: bool,
}

/// Where one run keeps its files.
#[derive(Debug, Clone)]
pub struct RunPaths {
    pub bundle: PathBuf,
    /// Absolute, never empty (an empty path is the caller's own cgroup: libcontainer's cleanup
    /// would kill every process in it).
    pub cgroups_path: String,
}

/// What the runtime will do for one container: the spec, and the directories and symlinks the
/// prepare step creates (after the cleanup guard exists).
#[derive(Debug, Clone)]
pub struct Plan {
    pub spec: Spec,
    pub dirs: Vec<PathBuf>,
    /// `(target, link)`.
    pub links: Vec<(PathBuf, PathBuf)>,
}

fn spec_err(e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Spec(e.to_string())
}

fn mount(
    dst: &str,
    typ: &str,
    src: impl AsRef<Path>,
    opts: &[&str],
) -> Result<Mount, RuntimeError> {
    MountBuilder::default()
        .destination(dst)
        .typ(typ)
        .source(src.as_ref())
        .options(opts.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .build()
        .map_err(spec_err)
}

fn id_mappings(ranges: &[IdRange]) -> Result<Vec<LinuxIdMapping>, RuntimeError> {
    ranges
        .iter()
        .map(|r| {
            LinuxIdMappingBuilder::default()
                .container_id(r.inside)
                .host_id(r.outside)
                .size(r.count)
                .build()
                .map_err(spec_err)
        })
        .collect()
}

/// Plan the container `r` on a host with `host`'s facts.
pub fn plan(r: &Resolved, host: &HostFacts, paths: &RunPaths) -> Result<Plan, RuntimeError> {
    let spec = &r.spec;
    let mut dirs = Vec::new();
    let mut links = Vec::new();
    let mut mounts = Vec::new();
    let root_path = match &spec.rootfs {
        Rootfs::Dir(d) => d.clone(),
        Rootfs::Overlay {
            layers,
            upper,
            work,
        } => {
            dirs.push(upper.clone());
            dirs.push(work.clone());
            // overlayfs takes the topmost lower dir first. libcontainer configures the mount
            // with fsconfig(), whose string values are limited to 256 bytes: on kernels that
            // have it (6.8), give one `lowerdir+` per layer; else a colon list of short
            // symlinks in the bundle.
            let mut opts = Vec::new();
            if host.kernel >= (6, 8) {
                for l in layers.iter().rev() {
                    opts.push(format!("lowerdir+={}", l.display()));
                }
            } else {
                let dir = paths.bundle.join("l");
                dirs.push(dir.clone());
                let mut lower = Vec::new();
                for (i, l) in layers.iter().rev().enumerate() {
                    let link = dir.join(i.to_string());
                    lower.push(escape_overlay(&link.display().to_string()));
                    links.push((l.clone(), link));
                }
                opts.push(format!("lowerdir={}", lower.join(":")));
            }
            opts.push(format!("upperdir={}", upper.display()));
            opts.push(format!("workdir={}", work.display()));
            if host.rootless {
                opts.push("userxattr".into());
            }
            let opts: Vec<&str> = opts.iter().map(String::as_str).collect();
            mounts.push(mount("/", "overlay", "overlay", &opts)?);
            let root = paths.bundle.join("rootfs");
            dirs.push(root.clone());
            root
        }
    };
    mounts.push(mount(
        "/proc",
        "proc",
        "proc",
        &["nosuid", "noexec", "nodev"],
    )?);
    mounts.push(mount(
        "/dev",
        "tmpfs",
        "tmpfs",
        &["nosuid", "strictatime", "mode=755", "size=65536k"],
    )?);
    mounts.push(mount(
        "/dev/pts",
        "devpts",
        "devpts",
        &[
            "nosuid",
            "noexec",
            "newinstance",
            "ptmxmode=0666",
            "mode=0620",
        ],
    )?);
    mounts.push(mount(
        "/dev/shm",
        "tmpfs",
        "shm",
        &["nosuid", "noexec", "nodev", "mode=1777", "size=1g"],
    )?);
    mounts.push(mount(
        "/dev/mqueue",
        "mqueue",
        "mqueue",
        &["nosuid", "noexec", "nodev"],
    )?);
    // The host network namespace is kept, so sysfs cannot be mounted anew: bind it.
    mounts.push(mount(
        "/sys",
        "bind",
        "/sys",
        &["rbind", "nosuid", "noexec", "nodev", "ro"],
    )?);
    mounts.push(mount(
        "/tmp",
        "tmpfs",
        "tmpfs",
        &["nosuid", "nodev", "mode=1777"],
    )?);
    // DNS for distfile downloads: the host's resolver, unless that would write a mount point
    // into a plain rootfs directory that has no such file.
    if host.resolv_conf && r.rootfs_has_resolv_conf {
        mounts.push(mount(
            "/etc/resolv.conf",
            "bind",
            "/etc/resolv.conf",
            &["rbind", "ro"],
        )?);
    }
    for b in &spec.binds {
        let dst = b.dst.to_str().ok_or_else(|| {
            RuntimeError::Spec(format!("bind destination {} is not UTF-8", b.dst.display()))
        })?;
        let opts: &[&str] = if b.readonly {
            &["rbind", "ro"]
        } else {
            &["rbind"]
        };
        mounts.push(mount(dst, "bind", &b.src, opts)?);
    }
    for t in &spec.tmpfs {
        let dst = t.dst.to_str().ok_or_else(|| {
            RuntimeError::Spec(format!(
                "tmpfs destination {} is not UTF-8",
                t.dst.display()
            ))
        })?;
        if t.size.is_empty() || t.size.contains(',') {
            return Err(RuntimeError::Spec(format!(
                "invalid tmpfs size {:?}",
                t.size
            )));
        }
        let size = format!("size={}", t.size);
        mounts.push(mount(
            dst,
            "tmpfs",
            "tmpfs",
            &["nosuid", "nodev", "mode=775", &size],
        )?);
    }

    // Every capability, in every set: they are scoped to the container's user namespace and
    // Portage's own sandboxes need CAP_SYS_ADMIN and CAP_NET_ADMIN there.
    let caps: Capabilities = host
        .caps
        .iter()
        .filter_map(|c| serde_json::from_value::<Capability>(c.as_str().into()).ok())
        .collect();
    if spec.map.host_uid(spec.user.0).is_none() || spec.map.host_gid(spec.user.1).is_none() {
        return Err(RuntimeError::Spec(format!(
            "user {}:{} is not in the container's id mapping",
            spec.user.0, spec.user.1
        )));
    }
    // An unprivileged user inside gets no capability at all (as after setuid() from root).
    let caps = if spec.user.0 == 0 {
        caps
    } else {
        Capabilities::new()
    };
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps)
        .inheritable(Capabilities::new())
        .ambient(Capabilities::new())
        .build()
        .map_err(spec_err)?;
    let process = ProcessBuilder::default()
        .terminal(spec.tty)
        .user(
            UserBuilder::default()
                .uid(spec.user.0)
                .gid(spec.user.1)
                .build()
                .map_err(spec_err)?,
        )
        .args(spec.argv.clone())
        .env(spec.env.clone())
        .cwd(spec.cwd.as_str())
        .capabilities(capabilities)
        .rlimits(vec![PosixRlimitBuilder::default()
            .typ(PosixRlimitType::RlimitNofile)
            .hard(host.nofile)
            .soft(host.nofile)
            .build()
            .map_err(spec_err)?])
        .no_new_privileges(false)
        .build()
        .map_err(spec_err)?;

    let mut namespaces = Vec::new();
    for t in [
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
    ]
    .into_iter()
    .chain(host.rootless.then_some(LinuxNamespaceType::User))
    {
        namespaces.push(
            LinuxNamespaceBuilder::default()
                .typ(t)
                .build()
                .map_err(spec_err)?,
        );
    }
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .cgroups_path(PathBuf::from(&paths.cgroups_path))
        .masked_paths(strings(&[
            "/proc/acpi",
            "/proc/kcore",
            "/proc/keys",
            "/proc/latency_stats",
            "/proc/timer_list",
            "/proc/timer_stats",
            "/proc/sched_debug",
            "/proc/scsi",
            "/sys/firmware",
        ]))
        .readonly_paths(strings(&[
            "/proc/asound",
            "/proc/bus",
            "/proc/fs",
            "/proc/irq",
            "/proc/sys",
            "/proc/sysrq-trigger",
        ]))
        .build()
        .map_err(spec_err)?;
    // No resources: any limit (even the builder's default device list) forces cgroup writes a
    // user may not make.
    linux.set_resources(None);
    linux.set_sysctl(None);
    if host.rootless {
        linux.set_uid_mappings(Some(id_mappings(&spec.map.uid)?));
        linux.set_gid_mappings(Some(id_mappings(&spec.map.gid)?));
    } else {
        linux.set_uid_mappings(None);
        linux.set_gid_mappings(None);
    }

    let mut oci = SpecBuilder::default()
        .version("1.0.2")
        .root(
            RootBuilder::default()
                .path(root_path)
                .readonly(false)
                .build()
                .map_err(spec_err)?,
        )
        .hostname(spec.hostname.as_str())
        .mounts(mounts)
        .process(process)
        .linux(linux)
        .build()
        .map_err(spec_err)?;
    oci.set_annotations(None);
    Ok(Plan {
        spec: oci,
        dirs,
        links,
    })
}

/// The spec as JSON in a stable form: capability sets (hash sets in oci-spec) sorted.
pub fn spec_json(spec: &Spec) -> serde_json::Value {
    let mut v = serde_json::to_value(spec).expect("an OCI spec serializes");
    if let Some(caps) = v
        .pointer_mut("/process/capabilities")
        .and_then(|c| c.as_object_mut())
    {
        for set in caps.values_mut() {
            if let Some(a) = set.as_array_mut() {
                a.sort_by(|x, y| x.as_str().cmp(&y.as_str()));
            }
        }
    }
    v
}

/// overlayfs option values cannot contain `,` or `:` unescaped.
pub fn escape_overlay(p: &str) -> String {
    p.replace('\\', "\\\\")
        .replace(':', "\\:")
        .replace(',', "\\,")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idmap::IdMapping;
    use crate::runtime::Bind;

    fn facts(kernel: (u32, u32), rootless: bool) -> HostFacts {
        HostFacts {
            kernel,
            rootless,
            caps: [
                "CAP_CHOWN",
                "CAP_SYS_ADMIN",
                "CAP_NET_ADMIN",
                "CAP_NOT_YET_KNOWN",
            ]
            .map(String::from)
            .to_vec(),
            nofile: 524288,
            resolv_conf: true,
        }
    }

    fn mapping() -> IdMapping {
        IdMapping {
            uid: vec![
                IdRange {
                    inside: 0,
                    outside: 1001,
                    count: 1,
                },
                IdRange {
                    inside: 1,
                    outside: 165536,
                    count: 65536,
                },
            ],
            gid: vec![
                IdRange {
                    inside: 0,
                    outside: 1001,
                    count: 1,
                },
                IdRange {
                    inside: 1,
                    outside: 165536,
                    count: 65536,
                },
            ],
        }
    }

    fn paths() -> RunPaths {
        RunPaths {
            bundle: "/run/user/1001/gbuild/bundles/gb-7-1".into(),
            cgroups_path: "/gbuild/builder/gb-7-1".into(),
        }
    }

    fn description(rootfs: Rootfs) -> ContainerSpec {
        ContainerSpec {
            rootfs,
            binds: Vec::new(),
            tmpfs: Vec::new(),
            argv: vec!["/bin/sh".into(), "-c".into(), "true".into()],
            env: vec!["PATH=/usr/bin:/bin".into(), "HOME=/root".into()],
            cwd: "/".into(),
            hostname: "gbuild".into(),
            tty: false,
            map: mapping(),
            user: (0, 0),
        }
    }

    /// A resolved description of `spec` (a plain rootfs with or without an etc/resolv.conf).
    fn resolved(spec: ContainerSpec, rootfs_has_resolv_conf: bool) -> Resolved {
        Resolved {
            spec,
            rootfs_has_resolv_conf,
        }
    }

    /// The usual overlay description, planned for a kernel `(major, minor)`, rootless or not.
    fn overlay_plan(kernel: (u32, u32), rootless: bool) -> Plan {
        let r = resolved(description(overlay()), true);
        plan(&r, &facts(kernel, rootless), &paths()).unwrap()
    }

    fn overlay() -> Rootfs {
        Rootfs::Overlay {
            layers: vec!["/store/layers/stage3".into(), "/store/layers/world".into()],
            upper: "/store/machines/m/container/upper".into(),
            work: "/store/machines/m/container/work".into(),
        }
    }

    /// Compare the planned spec with `testdata/NAME.json` (GBUILD_BLESS=1 rewrites it).
    fn golden(name: &str, plan: &Plan) {
        let got = serde_json::to_string_pretty(&spec_json(&plan.spec)).unwrap() + "\n";
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/runtime/testdata")
            .join(format!("{name}.json"));
        if std::env::var_os("GBUILD_BLESS").is_some() {
            std::fs::write(&path, &got).unwrap();
        }
        let want = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (GBUILD_BLESS=1 writes it)", path.display()));
        assert_eq!(got, want, "planned spec differs from {}", path.display());
    }

    #[test]
    fn plain_directory_rootless() {
        let r = resolved(description(Rootfs::Dir("/srv/rootfs".into())), false);
        let p = plan(&r, &facts((6, 18), true), &paths()).unwrap();
        assert!(p.dirs.is_empty() && p.links.is_empty(), "{p:?}");
        golden("dir-rootless", &p);
    }

    #[test]
    fn overlay_with_binds_and_terminal_new_kernel() {
        let mut d = description(overlay());
        d.tty = true;
        d.binds = vec![
            Bind {
                src: "/store/repos/2024-05-01".into(),
                dst: "/var/db/repos/gentoo".into(),
                readonly: true,
            },
            Bind {
                src: "/store/machines/m/binpkgs".into(),
                dst: "/var/cache/binpkgs".into(),
                readonly: false,
            },
        ];
        d.tmpfs = vec![super::super::Tmpfs {
            dst: "/var/tmp/portage".into(),
            size: "8G".into(),
        }];
        let r = resolved(d, true);
        let p = plan(&r, &facts((6, 8), true), &paths()).unwrap();
        assert_eq!(
            p.dirs,
            [
                PathBuf::from("/store/machines/m/container/upper"),
                "/store/machines/m/container/work".into(),
                "/run/user/1001/gbuild/bundles/gb-7-1/rootfs".into()
            ]
        );
        assert!(p.links.is_empty());
        golden("overlay-binds-tty", &p);
    }

    #[test]
    fn overlay_before_6_8_uses_short_links_in_the_bundle() {
        let p = overlay_plan((6, 1), true);
        let l = PathBuf::from("/run/user/1001/gbuild/bundles/gb-7-1/l");
        assert!(p.dirs.contains(&l));
        // Topmost layer first.
        assert_eq!(
            p.links,
            [
                (PathBuf::from("/store/layers/world"), l.join("0")),
                ("/store/layers/stage3".into(), l.join("1")),
            ]
        );
        golden("overlay-old-kernel", &p);
    }

    #[test]
    fn as_root_no_user_namespace() {
        let p = overlay_plan((6, 18), false);
        golden("overlay-root", &p);
    }

    #[test]
    fn the_library_reads_the_plan_back() {
        // What we write is what libcontainer's own types read.
        let p = overlay_plan((6, 18), true);
        let text = serde_json::to_string(&spec_json(&p.spec)).unwrap();
        let back: Spec = serde_json::from_str(&text).unwrap();
        assert_eq!(back, p.spec);
    }

    #[test]
    fn kernel_versions() {
        assert_eq!(kernel_version("6.8.0-45-generic"), (6, 8));
        assert_eq!(kernel_version("6.18.44-fc-v1045"), (6, 18));
        assert_eq!(kernel_version("5.15"), (5, 15));
        assert_eq!(kernel_version(""), (0, 0));
    }

    #[test]
    fn overlay_escaping() {
        assert_eq!(escape_overlay("/a:b,c"), "/a\\:b\\,c");
    }
}
