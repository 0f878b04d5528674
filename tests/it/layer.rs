//! Layers, images, snapshots and restores through the real `gbuild` binary: a stage3-like
//! fixture tarball built here (owners, setuid, hardlinks, symlinks, xattrs, a fifo, a device
//! node), the tar path policy, committing a real overlay upper dir, OCI export and restore, and
//! interrupted runs.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::util::{self, gbuild, require, rootless_ready, Scratch};

const MTIME: u64 = 1_700_000_000;

fn header(kind: tar::EntryType, mode: u32, uid: u64, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(uid);
    h.set_gid(uid);
    h.set_size(size);
    h.set_mtime(MTIME);
    h
}

/// Append an entry whose name is written raw (no validation by the tar crate).
fn raw(
    b: &mut tar::Builder<Vec<u8>>,
    mut h: tar::Header,
    name: &str,
    link: Option<&str>,
    data: &[u8],
) {
    let n = name.as_bytes();
    h.as_old_mut().name = [0; 100];
    h.as_old_mut().name[..n.len()].copy_from_slice(n);
    if let Some(l) = link {
        h.as_old_mut().linkname[..l.len()].copy_from_slice(l.as_bytes());
    }
    h.set_cksum();
    b.append(&h, data).unwrap();
}

fn dir(b: &mut tar::Builder<Vec<u8>>, name: &str, mode: u32, uid: u64) {
    raw(
        b,
        header(tar::EntryType::Directory, mode, uid, 0),
        name,
        None,
        &[],
    );
}

fn file(b: &mut tar::Builder<Vec<u8>>, name: &str, mode: u32, uid: u64, data: &[u8]) {
    raw(
        b,
        header(tar::EntryType::Regular, mode, uid, data.len() as u64),
        name,
        None,
        data,
    );
}

fn xz(data: &[u8]) -> Vec<u8> {
    let mut e = liblzma::write::XzEncoder::new(Vec::new(), 1);
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// Capabilities v2: cap_net_raw permitted + effective.
fn cap_net_raw() -> Vec<u8> {
    let mut v = Vec::new();
    for w in [0x0200_0001u32, 1 << 13, 0, 0, 0] {
        v.extend_from_slice(&w.to_le_bytes());
    }
    v
}

/// A small stage3-like root filesystem, xz-compressed.
fn fixture_stage3() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    dir(&mut b, "./", 0o755, 0);
    dir(&mut b, "./etc/", 0o755, 0);
    file(&mut b, "./etc/os-release", 0o644, 0, b"NAME=Gentoo\n");
    b.append_pax_extensions([("SCHILY.xattr.user.test", &b"hello"[..])])
        .unwrap();
    file(&mut b, "./etc/tagged", 0o644, 0, b"x");
    dir(&mut b, "./usr/", 0o755, 0);
    dir(&mut b, "./usr/bin/", 0o755, 0);
    b.append_pax_extensions([("mtime", &b"1700000000.123456789"[..])])
        .unwrap();
    file(&mut b, "./usr/bin/su", 0o4755, 0, b"su binary");
    raw(
        &mut b,
        header(tar::EntryType::Link, 0o755, 0, 0),
        "./usr/bin/hard",
        Some("./usr/bin/su"),
        &[],
    );
    let cap = cap_net_raw();
    b.append_pax_extensions([("SCHILY.xattr.security.capability", &cap[..])])
        .unwrap();
    file(&mut b, "./usr/bin/ping", 0o755, 0, b"ping binary");
    dir(&mut b, "./bin/", 0o755, 0);
    raw(
        &mut b,
        header(tar::EntryType::Symlink, 0o777, 0, 0),
        "./bin/su",
        Some("../usr/bin/su"),
        &[],
    );
    raw(
        &mut b,
        header(tar::EntryType::Symlink, 0o777, 0, 0),
        "./abs",
        Some("/etc"),
        &[],
    );
    dir(&mut b, "./home/", 0o755, 0);
    dir(&mut b, "./home/user/", 0o750, 250);
    file(&mut b, "./home/user/secret", 0o600, 250, b"secret");
    dir(&mut b, "./run/", 0o755, 0);
    raw(
        &mut b,
        header(tar::EntryType::Fifo, 0o620, 250, 0),
        "./run/fifo",
        None,
        &[],
    );
    dir(&mut b, "./dev/", 0o755, 0);
    let mut h = header(tar::EntryType::Char, 0o666, 0, 0);
    h.set_device_major(1).unwrap();
    h.set_device_minor(3).unwrap();
    raw(&mut b, h, "./dev/null", None, &[]);
    xz(&b.into_inner().unwrap())
}

struct Env {
    scratch: Scratch,
}

impl Env {
    fn new() -> Env {
        let scratch = Scratch::new();
        std::fs::create_dir(scratch.path().join("store")).unwrap();
        Env { scratch }
    }
    fn p(&self, rel: &str) -> PathBuf {
        self.scratch.path().join(rel)
    }
    fn store(&self) -> PathBuf {
        self.p("store")
    }
    fn gb(&self, args: &[&str]) -> Output {
        self.gb_in(&self.store(), args)
    }
    fn gb_in(&self, store: &Path, args: &[&str]) -> Output {
        util::output(gbuild(store).args(args).arg("-q"))
    }
    fn ok(&self, args: &[&str]) -> String {
        let o = self.gb(args);
        assert!(
            o.status.success(),
            "gbuild {args:?} failed: {}",
            util::stderr(&o)
        );
        util::stdout(&o).trim().to_string()
    }
    fn write(&self, rel: &str, data: &[u8]) -> PathBuf {
        let p = self.p(rel);
        std::fs::write(&p, data).unwrap();
        p
    }
    /// Run a shell command as root of the containers' user namespace, with a mount namespace.
    fn ns_sh(&self, script: &str) -> String {
        let o = util::output(
            gbuild(&self.store()).args(["unshare", "--", "unshare", "-m", "sh", "-ec", script]),
        );
        assert!(o.status.success(), "{script}: {}", util::stderr(&o));
        util::stdout(&o)
    }
    /// Make `script`'s changes (the merged tree is $M) to image `base` through a real rootless
    /// overlay mount, as a container would; returns the upper dir holding them.
    fn change_through_overlay(&self, base: &str, script: &str) -> PathBuf {
        for d in ["upper", "work", "merged"] {
            std::fs::create_dir(self.p(d)).unwrap();
        }
        self.ns_sh(&format!(
            "M={m}; mount -t overlay overlay -o userxattr,lowerdir={l},upperdir={u},workdir={w} $M
             {script}
             umount $M",
            m = self.p("merged").display(),
            l = self.lowerdir(&self.store(), base),
            u = self.p("upper").display(),
            w = self.p("work").display(),
        ));
        self.p("upper")
    }
    /// `gbuild layer commit` of `upper` onto image `base` as image `new`: the new layer's id.
    fn commit(&self, base: &str, upper: &Path, new: &str) -> String {
        let id = self.ok(&[
            "layer",
            "commit",
            "--image",
            base,
            "--upper",
            upper.to_str().unwrap(),
            "--new-image",
            new,
        ]);
        assert!(is_id(&id), "{id}");
        id
    }
    fn layers(&self, store: &Path) -> Vec<String> {
        let o = self.gb_in(store, &["layer", "list"]);
        assert!(o.status.success());
        util::stdout(&o)
            .lines()
            .map(|l| l.split_whitespace().next().unwrap().to_string())
            .collect()
    }
    fn lowerdir(&self, store: &Path, image: &str) -> String {
        let o = self.gb_in(store, &["image", "lowerdir", image]);
        assert!(o.status.success(), "{}", util::stderr(&o));
        util::stdout(&o).trim().to_string()
    }
    fn leftovers(&self, store: &Path) -> Vec<String> {
        let mut out = Vec::new();
        for d in ["tmp", "layers"] {
            if let Ok(rd) = std::fs::read_dir(store.join(d)) {
                for e in rd.flatten() {
                    let n = e.file_name().to_string_lossy().into_owned();
                    if n.starts_with("layer-") || n.starts_with(".tmp") {
                        out.push(n);
                    }
                }
            }
        }
        out
    }
}

fn is_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[test]
fn stage3_unpacks_with_owners_modes_links_and_xattrs() {
    if !require(
        rootless_ready(),
        "rootless user namespaces with subordinate ids",
    ) {
        return;
    }
    let env = Env::new();
    let tarball = env.write(
        "stage3-amd64-openrc-20240101T000000Z.tar.xz",
        &fixture_stage3(),
    );
    let o = util::output(
        gbuild(&env.store())
            .args(["layer", "unpack"])
            .arg(&tarball)
            .args(["--image", "fx/base"]),
    );
    assert!(o.status.success());
    let id = util::stdout(&o).trim().to_string();
    assert!(is_id(&id), "{id}");
    assert!(
        util::stderr(&o).contains("skipped 1 device node"),
        "{}",
        util::stderr(&o)
    );
    let list = env.ok(&["layer", "list", "--json"]);
    let layers: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(layers[0]["id"], id.as_str());
    assert_eq!(layers[0]["devices_skipped"], 1);
    assert!(env.ok(&["image", "list"]).starts_with("fx/base"));

    let root = env.store().join("layers").join(&id);
    // Outside: inside uid 0 is us, inside 250 is subuid base + 249.
    let me = util::nix_uid();
    let base = util::subid_base("/etc/subuid").unwrap();
    let md = |p: &str| std::fs::symlink_metadata(root.join(p)).unwrap();
    assert_eq!(md("home/user").uid(), base + 249);
    assert_eq!(md("usr/bin/su").uid(), me);
    assert_eq!(md("usr/bin/su").mode() & 0o7777, 0o4755);
    assert_eq!(md("usr/bin/su").mtime_nsec(), 123_456_789);
    assert_eq!(md("usr/bin/su").mtime(), MTIME as i64);
    assert_eq!(
        md("usr/bin").mtime(),
        MTIME as i64,
        "dir mtime set after content"
    );
    assert_eq!(md("usr/bin/su").ino(), md("usr/bin/hard").ino());
    assert_eq!(
        std::fs::read_link(root.join("bin/su")).unwrap(),
        Path::new("../usr/bin/su")
    );
    assert_eq!(
        std::fs::read_link(root.join("abs")).unwrap(),
        Path::new("/etc")
    );
    assert!(!root.join("dev/null").exists());
    assert_eq!(
        xattr::get(root.join("etc/tagged"), "user.test")
            .unwrap()
            .as_deref(),
        Some(&b"hello"[..])
    );
    assert!(
        xattr::get(root.join("usr/bin/ping"), "security.capability")
            .unwrap()
            .is_some(),
        "file capability kept"
    );
    // Inside: owners and modes as in the tarball.
    let st = env.ns_sh(&format!(
        "cd {}; stat -c '%n %u %g %a %F' home/user home/user/secret usr/bin/su run/fifo",
        root.display()
    ));
    let want = "home/user 250 250 750 directory\n\
                home/user/secret 250 250 600 regular file\n\
                usr/bin/su 0 0 4755 regular file\n\
                run/fifo 250 250 620 fifo\n";
    assert_eq!(st, want);
    // Same tarball, another store: same id.
    let store2 = env.p("store2");
    std::fs::create_dir(&store2).unwrap();
    let o = env.gb_in(&store2, &["layer", "unpack", tarball.to_str().unwrap()]);
    assert_eq!(util::stdout(&o).trim(), id);
}

/// (name, archive) pairs that must all be refused.
fn escapes(outside: &Path) -> Vec<(&'static str, Vec<u8>)> {
    let mut v = Vec::new();
    let mut b = tar::Builder::new(Vec::new());
    file(&mut b, "../x", 0o644, 0, b"x");
    v.push(("../x", b.into_inner().unwrap()));
    let mut b = tar::Builder::new(Vec::new());
    let abs = format!("{}/abs-file", outside.display());
    file(&mut b, &abs, 0o644, 0, b"x");
    v.push(("/abs", b.into_inner().unwrap()));
    for (i, target) in [outside.to_str().unwrap(), "../../../../../../../../.."]
        .into_iter()
        .enumerate()
    {
        let mut b = tar::Builder::new(Vec::new());
        dir(&mut b, "./etc/", 0o755, 0);
        raw(
            &mut b,
            header(tar::EntryType::Symlink, 0o777, 0, 0),
            "./etc/evil",
            Some(target),
            &[],
        );
        file(&mut b, "./etc/evil/escaped", 0o644, 0, b"x");
        v.push((
            if i == 0 { "evil-abs" } else { "evil-rel" },
            b.into_inner().unwrap(),
        ));
    }
    let mut b = tar::Builder::new(Vec::new());
    raw(
        &mut b,
        header(tar::EntryType::Link, 0o644, 0, 0),
        "./h",
        Some("../../x"),
        &[],
    );
    v.push(("hardlink", b.into_inner().unwrap()));
    v
}

#[test]
fn escaping_entries_are_refused_and_nothing_is_created() {
    if !require(
        rootless_ready(),
        "rootless user namespaces with subordinate ids",
    ) {
        return;
    }
    let env = Env::new();
    let outside = env.p("outside");
    std::fs::create_dir(&outside).unwrap();
    for (what, data) in escapes(&outside) {
        let fname = what.replace(['.', '/'], "_");
        let t = env.write(&format!("{fname}.tar.xz"), &xz(&data));
        let o = util::output(
            gbuild(&env.store())
                .args(["layer", "unpack"])
                .arg(&t)
                .args(["--image", "bad"]),
        );
        assert!(!o.status.success(), "{what} accepted");
        let err = util::stderr(&o);
        assert!(err.contains("entry "), "{what}: {err}");
        assert_eq!(err.lines().count(), 1, "{what}: one line: {err}");
        assert!(env.layers(&env.store()).is_empty(), "{what}: layer listed");
        assert_eq!(env.leftovers(&env.store()), Vec::<String>::new(), "{what}");
        assert!(!env.store().join("images/bad.json").exists());
    }
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    assert!(!env.store().join("x").exists() && !env.store().join("tmp/x").exists());
}

#[test]
fn unpack_repo_is_a_plain_directory() {
    let env = Env::new();
    let mut b = tar::Builder::new(Vec::new());
    dir(&mut b, "gentoo-20240101/", 0o755, 0);
    dir(&mut b, "gentoo-20240101/metadata/", 0o755, 0);
    file(
        &mut b,
        "gentoo-20240101/metadata/timestamp.chk",
        0o644,
        250,
        b"Mon, 01 Jan 2024\n",
    );
    let t = env.write("gentoo-20240101.tar.xz", &xz(&b.into_inner().unwrap()));
    let path = env.ok(&["layer", "unpack-repo", t.to_str().unwrap()]);
    assert!(path.ends_with("repos/gentoo-20240101"), "{path}");
    let f = Path::new(&path).join("metadata/timestamp.chk");
    assert_eq!(std::fs::metadata(&f).unwrap().uid(), util::nix_uid());
    assert_eq!(std::fs::metadata(&f).unwrap().mtime(), MTIME as i64);
    // Again: kept as is.
    assert_eq!(env.ok(&["layer", "unpack-repo", t.to_str().unwrap()]), path);
}

/// An ebuild-tree snapshot `top`: `(path, mode, mtime, content)` per file under `top/cat/pkg/`.
fn repo_snapshot(top: &str, files: &[(&str, u32, u64, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    dir(&mut b, &format!("{top}/"), 0o755, 250);
    dir(&mut b, &format!("{top}/cat/"), 0o755, 250);
    dir(&mut b, &format!("{top}/cat/pkg/"), 0o755, 250);
    for (name, mode, mtime, data) in files {
        let mut h = header(tar::EntryType::Regular, *mode, 250, data.len() as u64);
        h.set_mtime(*mtime);
        raw(&mut b, h, &format!("{top}/cat/pkg/{name}"), None, data);
    }
    xz(&b.into_inner().unwrap())
}

/// Every entry under `root`: relative path, type, mode, mtime (s, ns), content or link target.
fn tree_listing(root: &Path) -> Vec<(String, String, u32, i64, i64, Vec<u8>)> {
    use std::os::unix::ffi::OsStringExt;
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let md = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let (kind, data) = if md.is_dir() {
                stack.push(p.clone());
                ("dir", Vec::new())
            } else if md.file_type().is_symlink() {
                (
                    "symlink",
                    std::fs::read_link(&p).unwrap().into_os_string().into_vec(),
                )
            } else {
                ("file", std::fs::read(&p).unwrap())
            };
            out.push((
                rel,
                kind.into(),
                md.mode(),
                md.mtime(),
                md.mtime_nsec(),
                data,
            ));
        }
    }
    out.sort();
    out
}

#[test]
fn second_day_tree_shares_unchanged_files_and_equals_a_plain_unpack() {
    let env = Env::new();
    let day1 = [
        ("same.ebuild", 0o644, MTIME, &b"EAPI=8\nSLOT=0\n"[..]),
        ("Manifest", 0o644, MTIME, b"DIST a 1 BLAKE2B aa\n"),
        ("edited.ebuild", 0o644, MTIME, b"KEYWORDS=~amd64\n"),
        ("touched.xml", 0o644, MTIME, b"<pkgmetadata/>\n"),
        ("chmod.sh", 0o644, MTIME, b"#!/bin/sh\n"),
    ];
    // Day 2: "edited" has other bytes of the same size and the same mtime (only the content
    // tells it apart), "touched" a new mtime, "chmod" a new mode, "new" is new.
    let day2 = [
        ("same.ebuild", 0o644, MTIME, &b"EAPI=8\nSLOT=0\n"[..]),
        ("Manifest", 0o644, MTIME, b"DIST a 1 BLAKE2B aa\n"),
        ("edited.ebuild", 0o644, MTIME, b"KEYWORDS=amd64 \n"),
        ("touched.xml", 0o644, MTIME + 86400, b"<pkgmetadata/>\n"),
        ("chmod.sh", 0o755, MTIME, b"#!/bin/sh\n"),
        ("new.patch", 0o644, MTIME + 86400, b"--- a\n+++ b\n"),
    ];
    let t1 = env.write(
        "gentoo-20250301.tar.xz",
        &repo_snapshot("gentoo-20250301", &day1),
    );
    let t2 = env.write(
        "gentoo-20250302.tar.xz",
        &repo_snapshot("gentoo-20250302", &day2),
    );
    let p1 = PathBuf::from(env.ok(&["layer", "unpack-repo", t1.to_str().unwrap()]));
    let before = tree_listing(&p1);
    let p2 = PathBuf::from(env.ok(&["layer", "unpack-repo", t2.to_str().unwrap()]));
    // A plain unpack of day 2 into an empty store.
    let plain_store = env.p("plain");
    std::fs::create_dir(&plain_store).unwrap();
    let o = env.gb_in(
        &plain_store,
        &["layer", "unpack-repo", t2.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", util::stderr(&o));
    let plain = PathBuf::from(util::stdout(&o).trim());
    assert_eq!(tree_listing(&p2), tree_listing(&plain));
    assert_eq!(
        tree_listing(&p1),
        before,
        "the first day's tree is unchanged"
    );
    let ino = |p: &Path, n: &str| std::fs::metadata(p.join("cat/pkg").join(n)).unwrap().ino();
    for n in ["same.ebuild", "Manifest"] {
        assert_eq!(ino(&p1, n), ino(&p2, n), "{n} is shared");
    }
    for n in ["edited.ebuild", "touched.xml", "chmod.sh"] {
        assert_ne!(ino(&p1, n), ino(&p2, n), "{n} changed: not shared");
    }
    for n in ["same.ebuild", "edited.ebuild", "new.patch"] {
        assert_eq!(
            std::fs::metadata(plain.join("cat/pkg").join(n))
                .unwrap()
                .nlink(),
            1
        );
    }
}

/// A Gentoo-shaped tree snapshot `top`: `cats` categories of `pkgs` packages, each with an
/// ebuild, a Manifest and metadata.xml of a few KiB; `changed(i)` gives file number `i` other
/// bytes (the next day's commits).
fn gentoo_like(top: &str, cats: usize, pkgs: usize, changed: &dyn Fn(usize) -> bool) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    dir(&mut b, &format!("{top}/"), 0o755, 250);
    let mut n = 0;
    for c in 0..cats {
        dir(&mut b, &format!("{top}/cat-{c}/"), 0o755, 250);
        for p in 0..pkgs {
            let d = format!("{top}/cat-{c}/pkg-{p}");
            dir(&mut b, &format!("{d}/"), 0o755, 250);
            for (name, len) in [
                ("pkg-1.0.ebuild", 3000),
                ("Manifest", 700),
                ("metadata.xml", 1200),
            ] {
                let mut data: Vec<u8> = format!("cat-{c}/pkg-{p}/{name}\n").into_bytes();
                data.resize(len, b'#');
                let mut mtime = MTIME;
                if changed(n) {
                    data.extend_from_slice(b"KEYWORDS=\"amd64\"\n");
                    mtime += 86400;
                }
                let mut h = header(tar::EntryType::Regular, 0o644, 250, data.len() as u64);
                h.set_mtime(mtime);
                raw(&mut b, h, &format!("{d}/{name}"), None, &data);
                n += 1;
            }
        }
    }
    xz(&b.into_inner().unwrap())
}

/// Blocks (bytes) of the inodes under `root` by kind: (files, directories), each inode once,
/// and the set of file inodes.
fn usage(root: &Path) -> (u64, u64, std::collections::HashSet<u64>) {
    let (mut files, mut dirs) = (0, 0);
    let mut seen = std::collections::HashSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let md = std::fs::symlink_metadata(&d).unwrap();
        dirs += md.blocks() * 512;
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let md = std::fs::symlink_metadata(&p).unwrap();
            if md.is_dir() {
                stack.push(p);
            } else if seen.insert(md.ino()) {
                files += md.blocks() * 512;
            }
        }
    }
    (files, dirs, seen)
}

#[test]
fn next_day_costs_what_changed_and_gc_keeps_it_whole() {
    let env = Env::new();
    // 3,000 files; the next day 1% of them (every 100th) changed.
    let t1 = env.write(
        "gentoo-20250401.tar.xz",
        &gentoo_like("gentoo-20250401", 20, 50, &|_| false),
    );
    let t2 = env.write(
        "gentoo-20250402.tar.xz",
        &gentoo_like("gentoo-20250402", 20, 50, &|i| i % 100 == 0),
    );
    let p1 = PathBuf::from(env.ok(&["layer", "unpack-repo", t1.to_str().unwrap()]));
    let p2 = PathBuf::from(env.ok(&["layer", "unpack-repo", t2.to_str().unwrap()]));
    let (f1, _, ino1) = usage(&p1);
    let (f2, d2, ino2) = usage(&p2);
    assert_eq!(ino2.len(), 3000);
    let shared = ino2.intersection(&ino1).count();
    assert_eq!(shared, 2970, "every unchanged file is a hardlink");
    // What the second day adds in files: its 1% of changed files, about 1% of the first day's.
    let added: u64 = {
        let mut sum = 0;
        let mut stack = vec![p2.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                let md = std::fs::symlink_metadata(&p).unwrap();
                if md.is_dir() {
                    stack.push(p);
                } else if !ino1.contains(&md.ino()) {
                    sum += md.blocks() * 512;
                }
            }
        }
        sum
    };
    let pct = added as f64 * 100.0 / f1 as f64;
    assert!((0.5..=2.0).contains(&pct), "day 2 adds {pct:.2}% in files");
    assert!(f2 >= f1, "day 2 holds as much as day 1");
    eprintln!(
        "day 1: {} KiB of files; day 2 adds {} KiB of files ({pct:.2}%) and {} KiB of directories",
        f1 / 1024,
        added / 1024,
        d2 / 1024
    );

    // gc: the older tree goes (it is neither the newest nor used), freeing only what it does
    // not share; the newer one is whole.
    let before = tree_listing(&p2);
    let dry = env.ok(&["gc", "--dry-run"]);
    let line = dry
        .lines()
        .find(|l| l.ends_with("repos/gentoo-20250401"))
        .unwrap_or_else(|| panic!("{dry}"));
    assert!(line.starts_with("tree"), "{line}");
    // It frees its directories and its own 1% of files, not the files the next day shares.
    let freed = {
        let f: Vec<&str> = line.split_whitespace().collect();
        let unit = match f[2] {
            "B" => 1.0,
            "KiB" => 1024.0,
            "MiB" => 1048576.0,
            u => panic!("{u}"),
        };
        (f[1].parse::<f64>().unwrap() * unit) as u64
    };
    assert!(freed < f1 / 2, "{line}: day 1 has {f1} bytes of files");
    assert!(!dry.contains("repos/gentoo-20250402"), "{dry}");
    assert!(p1.is_dir());
    env.ok(&["gc"]);
    assert!(!p1.exists());
    assert_eq!(tree_listing(&p2), before);
    assert_eq!(
        std::fs::metadata(p2.join("cat-3/pkg-7/Manifest"))
            .unwrap()
            .nlink(),
        1
    );
    assert_eq!(env.ok(&["gc", "--dry-run"]), "");
}

/// A store holding the fixture stage3 as image `fx/base` (`None`, said, without rootless
/// namespaces).
fn env_with_base() -> Option<Env> {
    if !require(
        rootless_ready(),
        "rootless user namespaces with subordinate ids",
    ) {
        return None;
    }
    let env = Env::new();
    let tarball = env.write("stage3.tar.xz", &fixture_stage3());
    env.ok(&[
        "layer",
        "unpack",
        tarball.to_str().unwrap(),
        "--image",
        "fx/base",
    ]);
    Some(env)
}

#[test]
fn a_commit_links_the_upper_files_into_the_layer_and_frees_the_rest_later() {
    let Some(env) = env_with_base() else {
        return;
    };
    let upper = env.change_through_overlay(
        "fx/base",
        "head -c 3000000 /dev/urandom > $M/etc/big
         mkdir -p $M/var/lib/deep/er; echo x > $M/var/lib/deep/er/f; chown 250:250 $M/var/lib/deep/er/f",
    );
    let big = upper.join("etc/big");
    // What overlayfs records for itself on a file it copied up stays out of the layer.
    xattr::set(&big, "user.overlay.origin", b"\0").unwrap();
    xattr::set(&big, "user.kept", b"yes").unwrap();
    let ino = std::fs::metadata(&big).unwrap().ino();
    let data = std::fs::read(&big).unwrap();
    let id = env.commit("fx/base", &upper, "fx/next");
    assert_eq!(
        std::fs::read_dir(&upper).unwrap().count(),
        0,
        "upper emptied at once"
    );
    // The layer's file is the upper dir's file itself: nothing was written twice.
    let in_layer = env.store().join("layers").join(&id).join("etc/big");
    assert_eq!(std::fs::metadata(&in_layer).unwrap().ino(), ino);
    assert_eq!(std::fs::read(&in_layer).unwrap(), data);
    let names: Vec<String> = xattr::list(&in_layer)
        .unwrap()
        .map(|n| n.to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["user.kept"], "overlayfs' own xattrs removed");
    // The layer is exactly what its id says: a snapshot packs it anew (no cached blob) and
    // refuses a layer whose content hashes otherwise.
    let snap = env.p("snap");
    env.ok(&[
        "snapshot",
        "--image",
        "fx/next",
        "-o",
        snap.to_str().unwrap(),
    ]);
    // What the upper dir held beside the layer's files goes in the background, soon.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let left: Vec<String> = env
            .leftovers(&env.store())
            .into_iter()
            .filter(|n| n.contains("trash"))
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still there: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let seen = with_image_mounted(
        &env,
        &env.store(),
        "fx/next",
        "stat -c '%u %s' $M/var/lib/deep/er/f $M/etc/big",
    );
    assert_eq!(seen, "250 2\n0 3000000\n");
}

#[test]
fn a_builder_snapshot_packs_its_new_layer_once_to_the_same_bytes() {
    let Some(env) = env_with_base() else {
        return;
    };
    // A builder on the base image (a restore makes one), its base layer's blob cached.
    let s0 = env.p("snap0");
    env.ok(&["snapshot", "--image", "fx/base", "-o", s0.to_str().unwrap()]);
    env.ok(&["restore", s0.to_str().unwrap(), "--machine", "mx"]);
    let container = env.store().join("machines/mx/container");
    let (upper, work) = (container.join("upper"), container.join("work"));
    let merged = env.p("merged");
    std::fs::create_dir(&merged).unwrap();
    env.ns_sh(&format!(
        "M={m}; mount -t overlay overlay -o userxattr,lowerdir={l},upperdir={u},workdir={w} $M
         head -c 2000000 /dev/urandom > $M/etc/big; echo new > $M/etc/newfile
         chown 250:250 $M/etc/newfile; rm $M/etc/os-release; mkdir -p $M/var/lib/a/b
         echo deep > $M/var/lib/a/b/f
         umount $M",
        m = merged.display(),
        l = env.lowerdir(&env.store(), "fx/base"),
        u = upper.display(),
        w = work.display(),
    ));
    // The commit writes the new layer's blob as it packs the layer: the export packs nothing.
    let s1 = env.p("snap1");
    let o = util::output(gbuild(&env.store()).args([
        "-v",
        "snapshot",
        "--machine",
        "mx",
        "-o",
        s1.to_str().unwrap(),
    ]));
    let err = util::stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("layer helper: commit"), "{err}");
    assert!(!err.contains("layer helper: pack-blobs"), "{err}");
    let manifest = util::stdout(&o).trim().to_string();
    assert_eq!(
        std::fs::read_dir(&upper).unwrap().count(),
        0,
        "upper emptied"
    );
    // Those bytes are the ones a snapshot packing every layer anew writes (in a fresh store).
    let store2 = env.p("store2");
    std::fs::create_dir(&store2).unwrap();
    let o = env.gb_in(&store2, &["restore", s1.to_str().unwrap()]);
    assert!(o.status.success(), "{}", util::stderr(&o));
    let image = util::stdout(&o).trim().to_string();
    assert!(image.starts_with("mx/snap-"), "{image}");
    let s2 = env.p("snap2");
    let o = env.gb_in(
        &store2,
        &["snapshot", "--image", &image, "-o", s2.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", util::stderr(&o));
    assert_eq!(util::stdout(&o).trim(), manifest);
    assert_eq!(tree_bytes(&s1), tree_bytes(&s2));
    let seen = with_image_mounted(
        &env,
        &store2,
        &image,
        "stat -c '%u %s' $M/etc/newfile $M/etc/big $M/var/lib/a/b/f; ls $M/etc",
    );
    assert!(seen.starts_with("250 4\n0 2000000\n0 5\n"), "{seen}");
    assert!(!seen.contains("os-release"), "{seen}");
}

/// Mount image `image` of `store` read-only (lower dirs only) and run `script` with $M.
fn with_image_mounted(env: &Env, store: &Path, image: &str, script: &str) -> String {
    let m = env.p("m-ro");
    let _ = std::fs::create_dir(&m);
    env.ns_sh(&format!(
        "M={m}; mount -t overlay overlay -o ro,userxattr,lowerdir={l} $M; {script}",
        m = m.display(),
        l = env.lowerdir(store, image)
    ))
}

#[test]
fn commit_snapshot_restore_round_trip() {
    let Some(env) = env_with_base() else {
        return;
    };
    // A first snapshot of the base image fills the store's blob cache.
    let s0 = env.p("snap0");
    env.ok(&["snapshot", "--image", "fx/base", "-o", s0.to_str().unwrap()]);
    // A container's changes through a real rootless overlay mount.
    let upper = env.change_through_overlay(
        "fx/base",
        "rm $M/etc/os-release
         echo new > $M/etc/newfile; chown 250:250 $M/etc/newfile; chmod 640 $M/etc/newfile
         rm -rf $M/usr/bin; mkdir $M/usr/bin; echo only > $M/usr/bin/only
         echo changed > $M/home/user/secret",
    );
    let id = env.commit("fx/base", &upper, "fx/next");
    assert_eq!(
        std::fs::read_dir(&upper).unwrap().count(),
        0,
        "upper emptied"
    );
    assert_eq!(env.layers(&env.store()).len(), 2);

    let check =
        "cd $M; ls etc usr/bin | tr '\\n' ' '; stat -c '%u %a' etc/newfile; cat home/user/secret";
    let want = "etc: newfile tagged  usr/bin: only 250 640\nchanged\n";
    let seen = with_image_mounted(&env, &env.store(), "fx/next", check);
    assert_eq!(seen, want);

    // Snapshot (the base layer's blob reused from the cache, the same file as in the first
    // snapshot), restore into a fresh store, snapshot there (everything packed anew): identical
    // layouts.
    let s1 = env.p("snap1");
    let manifest = env.ok(&["snapshot", "--image", "fx/next", "-o", s1.to_str().unwrap()]);
    assert!(manifest.starts_with("sha256:"), "{manifest}");
    let inodes = |dir: &Path| -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = std::fs::read_dir(dir.join("blobs/sha256"))
            .unwrap()
            .flatten()
            .map(|e| {
                (
                    e.file_name().into_string().unwrap(),
                    e.metadata().unwrap().ino(),
                )
            })
            .collect();
        v.sort();
        v
    };
    let base_blobs = inodes(&s0);
    let reused: Vec<_> = inodes(&s1)
        .into_iter()
        .filter(|b| base_blobs.contains(b))
        .collect();
    assert_eq!(
        reused.len(),
        1,
        "the base layer's blob is reused: {reused:?}"
    );
    let store2 = env.p("store2");
    std::fs::create_dir(&store2).unwrap();
    let o = env.gb_in(&store2, &["restore", s1.to_str().unwrap()]);
    assert!(o.status.success());
    assert_eq!(util::stdout(&o).trim(), "fx/next");
    let mut l1 = env.layers(&env.store());
    let mut l2 = env.layers(&store2);
    l1.sort();
    l2.sort();
    assert_eq!(l1, l2);
    let s2 = env.p("snap2");
    let o = env.gb_in(
        &store2,
        &["snapshot", "--image", "fx/next", "-o", s2.to_str().unwrap()],
    );
    assert_eq!(util::stdout(&o).trim(), manifest);
    assert_eq!(tree_bytes(&s1), tree_bytes(&s2));
    assert_eq!(with_image_mounted(&env, &store2, "fx/next", check), want);
    // Twice in the same store (every blob from the cache): the same bytes again.
    let s3 = env.p("snap3");
    let again = env.ok(&["snapshot", "--image", "fx/next", "-o", s3.to_str().unwrap()]);
    assert_eq!(again, manifest);
    assert_eq!(tree_bytes(&s3), tree_bytes(&s2));
    // A damaged cached blob is not handed out: the layer is packed again.
    let json = |dir: &Path, digest: &str| -> serde_json::Value {
        let d = digest.strip_prefix("sha256:").unwrap();
        serde_json::from_slice(&std::fs::read(dir.join("blobs/sha256").join(d)).unwrap()).unwrap()
    };
    let layers = json(&s1, manifest.trim())["layers"].clone();
    let damaged = layers[1]["digest"]
        .as_str()
        .unwrap()
        .strip_prefix("sha256:")
        .unwrap()
        .to_string();
    let cached = env.store().join("blobs/sha256").join(&damaged);
    std::fs::set_permissions(&cached, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut data = std::fs::read(&cached).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0x55;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&cached)
        .unwrap()
        .write_all(&data)
        .unwrap();
    let s4 = env.p("snap4");
    let fresh = env.ok(&["snapshot", "--image", "fx/next", "-o", s4.to_str().unwrap()]);
    assert_eq!(fresh, manifest);
    assert_eq!(tree_bytes(&s4), tree_bytes(&s2));
    // The same damage as another file given the cached one's size and modification time: not
    // the inode the cache recorded, so the blob is read, refused, and the layer packed again.
    let mtime = std::fs::metadata(&cached).unwrap().modified().unwrap();
    let mut data = std::fs::read(&cached).unwrap();
    data[mid] ^= 0x55;
    let swap = env.store().join("blobs/sha256/swap");
    std::fs::write(&swap, &data).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&swap)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    std::fs::rename(&swap, &cached).unwrap();
    let s5 = env.p("snap5");
    let fresh = env.ok(&["snapshot", "--image", "fx/next", "-o", s5.to_str().unwrap()]);
    assert_eq!(fresh, manifest);
    assert_eq!(tree_bytes(&s5), tree_bytes(&s2));
    std::fs::remove_dir_all(&s1).unwrap();
    std::fs::remove_dir_all(&s3).unwrap();

    if require(util::which("skopeo"), "skopeo installed") {
        let o = util::output(
            Command::new("skopeo")
                .arg("inspect")
                .arg(format!("oci:{}", s2.display())),
        );
        assert!(o.status.success(), "skopeo: {}", util::stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["Layers"].as_array().unwrap().len(), 2);
    }

    // gzip for older tools also restores to the same layers.
    let sg = env.p("snap-gz");
    env.ok(&[
        "snapshot",
        "--image",
        "fx/next",
        "--compression",
        "gzip",
        "-o",
        sg.to_str().unwrap(),
    ]);
    let store3 = env.p("store3");
    std::fs::create_dir(&store3).unwrap();
    assert!(env
        .gb_in(
            &store3,
            &["restore", sg.to_str().unwrap(), "--image", "fx/next"]
        )
        .status
        .success());
    let mut l3 = env.layers(&store3);
    l3.sort();
    assert_eq!(l1, l3);

    // gc keeps what images reference, removes the rest (subordinate-owned files included).
    env.ok(&["image", "rm", "fx/next"]);
    std::fs::remove_dir_all(&s4).unwrap();
    std::fs::remove_dir_all(&sg).unwrap();
    env.ok(&["gc"]);
    assert_eq!(env.layers(&env.store()).len(), 1);
    assert!(!env.store().join("layers").join(&id).exists());
    // The blob cache keeps the base layer's blobs only (zstd and gzip).
    let base = env.layers(&env.store())[0].clone();
    let cache: Vec<String> = std::fs::read_dir(env.store().join("blobs"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".json"))
        .collect();
    assert_eq!(cache.len(), 2, "{cache:?}");
    assert!(cache.iter().all(|n| n.starts_with(&base)), "{cache:?}");
    let blobs: Vec<(String, u64)> = inodes(&env.store());
    assert_eq!(blobs.len(), 2, "{blobs:?}");
}

fn tree_bytes(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().display().to_string();
                out.push((rel, std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// A one-layer OCI layout around the uncompressed tar `layer`.
fn layout_with(dir: &Path, layer: &[u8]) {
    layout_blob(dir, layer, layer, "application/vnd.oci.image.layer.v1.tar");
}

/// A one-layer OCI layout whose layer is `blob` (the tar `layer`, compressed as `media_type`
/// says); returns the blob's path. The layer descriptor states the blob's digest and size.
fn layout_blob(dir: &Path, layer: &[u8], blob: &[u8], media_type: &str) -> PathBuf {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |data: &[u8]| {
        let d = sha256_hex(data);
        std::fs::write(blobs.join(&d), data).unwrap();
        (format!("sha256:{d}"), data.len())
    };
    let diff = format!("sha256:{}", sha256_hex(layer));
    let (ld, ls) = put(blob);
    let config = serde_json::json!({"architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [diff]}});
    let (cd, cs) = put(&serde_json::to_vec(&config).unwrap());
    let manifest = serde_json::json!({"schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
        "layers": [{"mediaType": media_type, "digest": ld, "size": ls}]});
    let (md, ms) = put(&serde_json::to_vec(&manifest).unwrap());
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{"mediaType":
        "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": ms,
        "annotations": {"org.opencontainers.image.ref.name": "evil"}}]});
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    blobs.join(ld.strip_prefix("sha256:").unwrap())
}

/// Rewrite the layer descriptor of the one-layer layout `dir` to state `size`.
fn restate_layer_size(dir: &Path, size: usize) {
    let blobs = dir.join("blobs/sha256");
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    let md = index["manifests"][0]["digest"].as_str().unwrap();
    let old = blobs.join(md.strip_prefix("sha256:").unwrap());
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&old).unwrap()).unwrap();
    manifest["layers"][0]["size"] = size.into();
    let data = serde_json::to_vec(&manifest).unwrap();
    let d = sha256_hex(&data);
    std::fs::write(blobs.join(&d), &data).unwrap();
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{"mediaType":
        "application/vnd.oci.image.manifest.v1+json", "digest": format!("sha256:{d}"),
        "size": data.len(), "annotations": {"org.opencontainers.image.ref.name": "evil"}}]});
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

#[test]
fn bad_layouts_are_refused_and_nothing_is_restored() {
    if !require(
        rootless_ready(),
        "rootless user namespaces with subordinate ids",
    ) {
        return;
    }
    let env = Env::new();
    // A layout whose blob was altered.
    let mut b = tar::Builder::new(Vec::new());
    dir(&mut b, "etc/", 0o755, 0);
    file(&mut b, "etc/a", 0o644, 0, b"a");
    let good = b.into_inner().unwrap();
    let l1 = env.p("altered");
    layout_with(&l1, &good);
    let blob = l1.join("blobs/sha256").join(sha256_hex(&good));
    let mut data = std::fs::read(&blob).unwrap();
    data[600] ^= 1;
    std::fs::write(&blob, data).unwrap();
    let o = env.gb(&["restore", l1.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(
        util::stderr(&o).contains("digest mismatch"),
        "{}",
        util::stderr(&o)
    );
    // A truncated zstd blob: refused by its size before anything is unpacked, and, when the
    // descriptor states the truncated size, by its digest (not by what the decoder saw).
    let mut b = tar::Builder::new(Vec::new());
    dir(&mut b, "usr/", 0o755, 0);
    for i in 0..64 {
        let data: Vec<u8> = (0..4096u32).map(|k| (k * 7 + i) as u8).collect();
        file(&mut b, &format!("usr/f{i}"), 0o644, 0, &data);
    }
    let tar = b.into_inner().unwrap();
    let zst = zstd::encode_all(&tar[..], 3).unwrap();
    let half = zst.len() / 2;
    for restated in [false, true] {
        let lt = env.p(&format!("truncated-{restated}"));
        let blob = layout_blob(
            &lt,
            &tar,
            &zst,
            "application/vnd.oci.image.layer.v1.tar+zstd",
        );
        std::fs::write(&blob, &zst[..half]).unwrap();
        if restated {
            restate_layer_size(&lt, half);
        }
        let o = env.gb(&["restore", lt.to_str().unwrap()]);
        assert!(!o.status.success());
        let err = util::stderr(&o);
        let want = if restated {
            "digest mismatch".to_string()
        } else {
            format!("size {half} differs from the descriptor's {}", zst.len())
        };
        assert!(
            err.contains(&want) && err.contains(&*blob.to_string_lossy()),
            "{err}"
        );
    }
    // A layout with a traversal entry (digests all correct).
    let l2 = env.p("traversal");
    let mut b = tar::Builder::new(Vec::new());
    file(&mut b, "etc/ok", 0o644, 0, b"a");
    dir(&mut b, "etc/", 0o755, 0);
    raw(
        &mut b,
        header(tar::EntryType::Symlink, 0o777, 0, 0),
        "etc/up",
        Some("../.."),
        &[],
    );
    file(&mut b, "etc/up/x", 0o644, 0, b"x");
    layout_with(&l2, &b.into_inner().unwrap());
    let o = env.gb(&["restore", l2.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(
        util::stderr(&o).contains("entry etc/up/x"),
        "{}",
        util::stderr(&o)
    );
    assert!(env.layers(&env.store()).is_empty());
    assert!(env.ok(&["image", "list"]).is_empty());
    assert_eq!(env.leftovers(&env.store()), Vec::<String>::new());
    assert!(!env.store().join("x").exists());
}

/// A tarball big enough that unpacking takes well over 100 ms: pseudo-random file content.
fn big_tarball() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    dir(&mut b, "data/", 0o755, 0);
    for i in 0..3000 {
        let mut content = vec![0u8; 16 * 1024];
        for c in content.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
        }
        file(
            &mut b,
            &format!("data/f{i:05}"),
            0o644,
            (i % 300) as u64,
            &content,
        );
    }
    let tar = b.into_inner().unwrap();
    zstd::encode_all(&tar[..], 1).unwrap()
}

fn kill_after(mut cmd: Command, ms: u64) {
    let mut child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(ms));
    let _ = child.kill();
    let _ = child.wait();
    // Give the helper, killed with its parent, time to go.
    std::thread::sleep(std::time::Duration::from_millis(200));
}

#[test]
fn killed_unpack_and_snapshot_leave_nothing_half_made() {
    if !require(
        rootless_ready(),
        "rootless user namespaces with subordinate ids",
    ) {
        return;
    }
    let env = Env::new();
    let t = env.write("big.tar.zst", &big_tarball());
    let mut cmd = gbuild(&env.store());
    cmd.args(["layer", "unpack"])
        .arg(&t)
        .args(["--image", "big"]);
    kill_after(cmd, 100);
    let listed = env.layers(&env.store());
    assert!(listed.len() <= 1);
    for id in &listed {
        assert!(env
            .store()
            .join("layers")
            .join(format!("{id}.json"))
            .is_file());
    }
    let id = env.ok(&["layer", "unpack", t.to_str().unwrap(), "--image", "big"]);
    assert_eq!(env.layers(&env.store()), vec![id.clone()]);

    let out = env.p("snap");
    let mut cmd = gbuild(&env.store());
    cmd.args(["snapshot", "--image", "big", "-o"]).arg(&out);
    kill_after(cmd, 100);
    if out.exists() {
        // Only a complete layout is ever renamed into place.
        assert!(out.join("index.json").is_file());
        std::fs::remove_dir_all(&out).unwrap();
    }
    env.ok(&["snapshot", "--image", "big", "-o", out.to_str().unwrap()]);
    assert!(out.join("index.json").is_file());

    env.ok(&["gc"]);
    assert_eq!(env.leftovers(&env.store()), Vec::<String>::new());
    assert_eq!(env.layers(&env.store()), vec![id]);
}

/// Stop `pid` (SIGSTOP) or let it go on (SIGCONT).
fn signal(pid: u32, sig: &str) {
    let s = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(s.success());
}

#[test]
fn gc_waits_for_a_live_snapshot() {
    if !require(
        rootless_ready(),
        "rootless user namespaces with subordinate ids",
    ) {
        return;
    }
    let env = Env::new();
    let t = env.write("big.tar.zst", &big_tarball());
    env.ok(&["layer", "unpack", t.to_str().unwrap(), "--image", "big"]);
    let exports = env.store().join("exports");
    std::fs::create_dir_all(&exports).unwrap();
    // The default output is in the store (exports/big), where gc looks for leftovers.
    let mut snap = gbuild(&env.store())
        .args(["snapshot", "--image", "big", "-q"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let work = loop {
        let found = std::fs::read_dir(&exports).unwrap().find_map(|e| {
            let n = e.unwrap().file_name().to_string_lossy().into_owned();
            n.starts_with(".tmp-big-").then_some(n)
        });
        if let Some(n) = found {
            break exports.join(n);
        }
        assert!(
            snap.try_wait().unwrap().is_none(),
            "snapshot ended before it was seen"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    };
    // Freeze the snapshot mid-way, its work directory in place, and collect.
    signal(snap.id(), "-STOP");
    let gc = gbuild(&env.store())
        .args(["gc", "-q"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert!(
        work.exists(),
        "gc removed the work directory of a live snapshot"
    );
    signal(snap.id(), "-CONT");
    let o = snap.wait_with_output().unwrap();
    assert!(o.status.success(), "snapshot: {}", util::stderr(&o));
    let g = gc.wait_with_output().unwrap();
    assert!(g.status.success(), "gc: {}", util::stderr(&g));
    assert!(exports.join("big/index.json").is_file());
    assert!(!work.exists());
}

#[test]
fn gc_removes_crash_leftovers_everywhere_and_keeps_live_ones() {
    if !require(
        rootless_ready(),
        "rootless user namespaces with subordinate ids",
    ) {
        return;
    }
    let env = Env::new();
    let s = env.store();
    // Temporary names of processes that are gone (pid beyond any pid_max a test box uses),
    // in the store's own directories, a machine's directory, its PKGDIR and an export.
    let dead = [
        "downloads/.tmp-gentoo-20260101.tar.xz.DIGESTS-4194000-0",
        "repos/.tmp-20260101-4194000-1",
        "tmp/.tmp-layer-commit-4194000-2",
        "machines/laptop/.tmp-bootstrap-4194000-3/upper/usr/bin",
        "machines/laptop/.tmp-published-4194000-4",
        "machines/laptop/binpkgs/.tmp-Packages-4194000-5",
        "machines/laptop/binpkgs/app-misc/.tmp-hello-1.0-1.gpkg.tar-4194000-6",
        "exports/big/.tmp-index.json-4194000-7",
    ];
    for d in dead {
        std::fs::create_dir_all(s.join(d)).unwrap();
    }
    // One of a live process (this test), and names outside the scheme, stay.
    let live = format!("machines/laptop/.tmp-drift-{}-0", std::process::id());
    let keep = [
        live.as_str(),
        "machines/laptop/logs",
        "machines/laptop/.tmp-x",
    ];
    for d in keep {
        std::fs::create_dir_all(s.join(d)).unwrap();
    }
    std::fs::write(s.join("machines/laptop/state.json"), b"{}").unwrap();
    env.ok(&["gc"]);
    for d in dead {
        let top: PathBuf = d.split("/upper").next().unwrap().into();
        assert!(!s.join(&top).exists(), "{d} left behind");
    }
    for d in keep {
        assert!(s.join(d).exists(), "{d} removed");
    }
    assert!(s.join("machines/laptop/state.json").is_file());
}
