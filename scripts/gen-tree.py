#!/usr/bin/env python3
"""Generate a synthetic ebuild tree with the shape of Gentoo's, packed like a snapshot.

Writes OUT/gentoo-DAY1.tar.xz and OUT/gentoo-DAY2.tar.xz, each with a top directory
gentoo-DAY/ like the snapshots on the mirrors: ~170 categories, ~30,000 package directories
(Manifest, metadata.xml, 1-5 ebuilds, files/ with patches for about a third), about 20,000
metadata/md5-cache entries, a few thousand files under profiles/, metadata/timestamp.*, in all
about 150,000 files owned by 250:250 (portage) with mtimes of their last commit. Sizes follow
the shape of a real snapshot: ebuilds 1-5 KiB with a long tail, Manifests a few hundred bytes
per distfile, patches of a few KiB with a tail to 100 KiB. The content is text assembled from a
line pool with per-line variation, so it compresses about like ebuilds do.

The second day's tree is the first with 0.5% of the files rewritten (new content, new mtime) and
the timestamps updated; everything else is byte-identical with the same mtime, as on the
mirrors (their trees carry each file's commit time).

Deterministic for a given --seed. xz runs single-threaded (one block, what `xz` writes without
-T), one process per day in parallel; --xz-level sets the preset (default 6; lower is much
faster to generate and decompresses at about the same speed); --scale makes a smaller tree.

Usage: scripts/gen-tree.py OUT [--seed N] [--scale F] [--xz-level L] [--threads]
"""
import argparse
import os
import random
import subprocess
import sys

DAY1, DAY2 = "20250301", "20250302"
T_DAY1 = 1740830400  # 2025-03-01 12:00 UTC
T_DAY2 = T_DAY1 + 86400

CAT_A = ["app", "dev", "media", "net", "sys", "x11", "games", "sci", "www", "mail", "kde",
         "gnome", "lxqt", "xfce", "mate", "acct", "gui", "llvm", "virtual", "java", "perl",
         "sec", "x11", "dev", "app", "media", "net", "sys"]
CAT_B = ["misc", "libs", "util", "admin", "apps", "plugins", "fonts", "text", "editors",
         "shells", "arch", "crypt", "emulation", "office", "portage", "python", "ruby", "lua",
         "lang", "db", "vcs", "sound", "video", "gfx", "fs", "kernel", "boot", "process",
         "firmware", "analyzer", "dns", "ftp", "irc", "im", "p2p", "proxy", "wireless",
         "servers", "terms", "wm", "base", "client", "filter", "mta", "haskell", "ml", "go",
         "qt", "tex", "doc", "power", "auth", "keys", "ai", "biology", "chemistry", "physics",
         "mathematics", "electronics", "geosciences", "astronomy", "visualization"]
WORDS = ("the a of to in is for on with that by this be are from or as at an it not which "
         "src_configure src_compile src_install src_prepare src_test pkg_setup pkg_postinst "
         "econf emake einstall dodoc doins insinto newins dobin dosym use_enable use_with "
         "eautoreconf default inherit KEYWORDS IUSE RDEPEND DEPEND BDEPEND SLOT LICENSE "
         "HOMEPAGE SRC_URI DESCRIPTION EAPI amd64 arm64 x86 ppc64 riscv ~amd64 ~arm64 "
         "python_targets_python3_12 ssl gtk qt5 qt6 X wayland doc test static-libs "
         "dev-libs/openssl:= sys-libs/zlib virtual/pkgconfig >=dev-lang/perl-5.36 "
         "https://github.com/ https://www.gnu.org/ ${PN} ${PV} ${P}.tar.gz ${WORKDIR} "
         "${ED} ${S} local myeconfargs=( ) fi if then else elif esac case in done do "
         "GPL-2 GPL-3+ MIT BSD LGPL-2.1+ Apache-2.0 || die einfo ewarn elog").split()


class Gen:
    def __init__(self, seed, scale):
        self.r = random.Random(seed)
        self.scale = scale
        r = self.r
        lines = []
        for _ in range(20000):
            n = r.randint(2, 10)
            indent = "\t" * r.choice([0, 0, 1, 1, 1, 2])
            lines.append(indent + " ".join(r.choice(WORDS) for _ in range(n)))
        # A pool of text (lines with per-line variation) that files take slices of: large
        # enough that xz's window rarely sees the same slice twice.
        pool = []
        for ln in r.choices(lines, k=int(1_600_000 * max(scale, 0.05))):
            pool.append(ln)
            pool.append(" %x\n" % r.getrandbits(32) if r.random() < 0.5 else "\n")
        self.pool = "".join(pool).encode()

    def text(self, r, size, head=""):
        h = head.encode()
        n = max(0, size - len(h) - 1)
        at = r.randrange(len(self.pool) - n - 1)
        at = self.pool.find(b"\n", at) + 1
        body = self.pool[at:at + n]
        return h + body + b"\n"

    def lognormal_size(self, r, median, lo, hi, sigma):
        import math
        return int(min(hi, max(lo, math.exp(r.gauss(math.log(median), sigma)))))

    def tree(self):
        """The first day's tree: a list of (path, mtime, kind, seed, size) sorted by path;
        content is made lazily from the seed so both days agree byte for byte."""
        r = self.r
        cats = sorted({f"{a}-{b}" for a in CAT_A for b in CAT_B})
        r.shuffle(cats)
        cats = sorted(cats[:170])
        npkg = int(30000 * self.scale)
        weights = [1.0 / (i + 1) ** 0.6 for i in range(len(cats))]
        r.shuffle(weights)
        files = []
        ebuilds = []
        pkgnames = set()
        dirs = set()
        for _ in range(npkg):
            cat = r.choices(cats, weights)[0]
            while True:
                name = "-".join(r.choice(WORDS).strip("~$/{}()=<>|:").lower() or "x"
                                for _ in range(r.choice([1, 1, 2, 2, 3])))
                name = "".join(c for c in name if c.isalnum() or c in "-_") or "pkg"
                name = f"{name}{r.randrange(1000)}"
                if (cat, name) not in pkgnames:
                    pkgnames.add((cat, name))
                    break
            d = f"{cat}/{name}"
            dirs.add(cat)
            dirs.add(d)
            t = T_DAY1 - r.randrange(86400 * 365 * 3)
            nver = r.choices([1, 2, 3, 4, 5], [45, 30, 14, 7, 4])[0]
            ndist = 0
            for v in range(nver):
                pv = f"{r.randint(0, 30)}.{r.randint(0, 20)}.{v}"
                size = self.lognormal_size(r, 2200, 400, 80000, 0.6)
                p = f"{d}/{name}-{pv}.ebuild"
                files.append((p, t - r.randrange(86400 * 30), "ebuild", r.getrandbits(64), size))
                ebuilds.append((cat, f"{name}-{pv}", t))
                ndist += r.choice([0, 1, 1, 1, 2])
            files.append((f"{d}/Manifest", t, "manifest", r.getrandbits(64), 60 + 230 * max(1, ndist)))
            files.append((f"{d}/metadata.xml", t - 86400 * 200, "xml", r.getrandbits(64),
                          self.lognormal_size(r, 700, 250, 6000, 0.4)))
            if r.random() < 0.3:
                dirs.add(f"{d}/files")
                for i in range(r.choices([1, 2, 3, 5], [50, 30, 15, 5])[0]):
                    files.append((f"{d}/files/{name}-{i}-fix.patch", t, "patch",
                                  r.getrandbits(64), self.lognormal_size(r, 1800, 200, 120000, 1.0)))
        # md5-cache for about 20,000 ebuilds (scaled)
        ncache = int(20000 * self.scale)
        r.shuffle(ebuilds)
        for cat, pf, t in ebuilds[:ncache]:
            dirs.add(f"metadata/md5-cache/{cat}")
            files.append((f"metadata/md5-cache/{cat}/{pf}", t, "cache", r.getrandbits(64),
                          self.lognormal_size(r, 1300, 500, 8000, 0.35)))
        # profiles: a few thousand files in nested directories
        nprof = int(3500 * self.scale)
        pdirs = ["profiles"] + [f"profiles/{a}" for a in ("arch", "default/linux", "desc",
                                                            "features", "prefix", "updates",
                                                            "releases", "targets")]
        for i in range(nprof):
            base = r.choice(pdirs)
            sub = f"{base}/{r.choice(CAT_B)}" if r.random() < 0.6 else base
            dirs.add(sub)
            files.append((f"{sub}/f{i}.{r.choice(['use', 'mask', 'desc', 'keywords', 'env'])}",
                          T_DAY1 - r.randrange(86400 * 900), "profile", r.getrandbits(64),
                          self.lognormal_size(r, 900, 30, 200000, 1.3)))
        for p in ("metadata/md5-cache", "metadata", "profiles"):
            dirs.add(p)
        for d in list(dirs):
            parts = d.split("/")
            for i in range(1, len(parts)):
                dirs.add("/".join(parts[:i]))
        return sorted(dirs), files

    def content(self, kind, seed, size, path):
        r = random.Random(seed)
        if kind == "ebuild":
            head = ("# Copyright 1999-2025 Gentoo Authors\n# Distributed under the terms of "
                    "the GNU General Public License v2\n\nEAPI=8\n\n")
        elif kind == "xml":
            head = ('<?xml version="1.0" encoding="UTF-8"?>\n<!DOCTYPE pkgmetadata SYSTEM '
                    '"https://www.gentoo.org/dtd/metadata.dtd">\n<pkgmetadata>\n')
        elif kind == "manifest":
            return b"".join(
                f"DIST {path.split('/')[1]}-{i}.tar.gz {r.randrange(10**7)} BLAKE2B "
                f"{r.getrandbits(512):0128x} SHA512 {r.getrandbits(512):0128x}\n".encode()
                for i in range(max(1, (size - 60) // 230)))
        elif kind == "cache":
            head = "BDEPEND=virtual/pkgconfig\nDEFINED_PHASES=compile configure install\n"
        else:
            head = ""
        return self.text(r, size, head)


def header(name, mode, size, mtime, typeflag):
    """A ustar header (names over 100 bytes split into prefix and name), owner portage."""
    nb = name.encode()
    prefix = b""
    if len(nb) > 100:
        cut = nb.rindex(b"/", 0, 156)
        prefix, nb = nb[:cut], nb[cut + 1:]
    h = bytearray(512)
    h[0:len(nb)] = nb
    h[100:108] = b"%07o\0" % mode
    h[108:116] = b"%07o\0" % 250
    h[116:124] = b"%07o\0" % 250
    h[124:136] = b"%011o\0" % size
    h[136:148] = b"%011o\0" % mtime
    h[148:156] = b" " * 8
    h[156:157] = typeflag
    h[257:265] = b"ustar\x0000"
    h[265:272] = b"portage"
    h[297:304] = b"portage"
    h[345:345 + len(prefix)] = prefix
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h)


def write_tars(days, dirs, xz_level, threads):
    """Write one tarball per (out, top, files, day_time) in `days`, each through its own xz
    process so that they compress in parallel."""
    cmd = ["xz", f"-{xz_level}", "-c"] + (["-T0"] if threads else ["-T1"])
    procs = []
    for out, top, files, day_time in days:
        f = open(out + ".part", "wb")
        xz = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=f)
        entries = [(d, None) for d in dirs] + [(x[0], x) for x in files]
        entries.sort(key=lambda e: e[0])
        procs.append((out, f, xz, iter(entries), top, day_time))
    for out, f, xz, entries, top, day_time in procs:
        xz.stdin.write(header(top + "/", 0o755, 0, day_time, b"5"))
    live = list(procs)
    while live:
        for p in list(live):
            out, f, xz, entries, top, day_time = p
            buf = []
            for name, x in entries:
                if x is None:
                    buf.append(header(f"{top}/{name}/", 0o755, 0, day_time - 86400 * 7, b"5"))
                else:
                    data = x[5]
                    buf.append(header(f"{top}/{name}", 0o644, len(data), x[1], b"0"))
                    buf.append(data)
                    if len(data) % 512:
                        buf.append(bytes(512 - len(data) % 512))
                if len(buf) > 2048:
                    break
            else:
                buf.append(bytes(10240))
                live.remove(p)
            xz.stdin.write(b"".join(buf))
    for out, f, xz, _, _, _ in procs:
        xz.stdin.close()
        if xz.wait() != 0:
            sys.exit("xz failed")
        f.close()
        os.rename(out + ".part", out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of the real size")
    ap.add_argument("--xz-level", type=int, default=6)
    ap.add_argument("--threads", action="store_true", help="multi-block xz (-T0)")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    g = Gen(a.seed, a.scale)
    dirs, files = g.tree()
    day1 = [(p, t, k, s, z, g.content(k, s, z, p)) for p, t, k, s, z in files]
    stamps = lambda t: [  # noqa: E731
        ("metadata/timestamp", t, "x", 0, 0, f"{t}\n".encode()),
        ("metadata/timestamp.chk", t, "x", 0, 0, b"Sat, 01 Mar 2025 00:45:01 +0000\n"
         if t == T_DAY1 else b"Sun, 02 Mar 2025 00:45:01 +0000\n"),
        ("metadata/timestamp.commit", t, "x", 0, 0, f"{t:x}{t:x}{t:x}{t:x}{t:x} {t}\n".encode()),
        ("metadata/timestamp.x", t, "x", 0, 0, f"{t} {t}\n".encode()),
    ]
    # Day 2: 0.5% of the files rewritten with new content and the commit time of the day.
    r = random.Random(a.seed + 1)
    changed = set(r.sample(range(len(day1)), max(1, len(day1) // 200)))
    day2 = []
    for i, (p, t, k, s, z, data) in enumerate(day1):
        if i in changed:
            s2 = s ^ 0x5A5A5A5A
            z2 = max(1, z + r.randint(-200, 400))
            day2.append((p, T_DAY2 - r.randrange(80000), k, s2, z2, g.content(k, s2, z2, p)))
        else:
            day2.append((p, t, k, s, z, data))
    write_tars([(os.path.join(a.out, f"gentoo-{DAY1}.tar.xz"), f"gentoo-{DAY1}",
                 day1 + stamps(T_DAY1), T_DAY1),
                (os.path.join(a.out, f"gentoo-{DAY2}.tar.xz"), f"gentoo-{DAY2}",
                 day2 + stamps(T_DAY2), T_DAY2)], dirs, a.xz_level, a.threads)
    total = sum(len(f[5]) for f in day1)
    print(f"{len(dirs)} directories, {len(day1) + 4} files, {total >> 20} MiB of content, "
          f"{len(changed)} changed on day 2", file=sys.stderr)


if __name__ == "__main__":
    main()
