//! The cleanup half of a pass, as one container run: `@preserved-rebuild` compiled, depclean,
//! the soname rebuild (only for a builder made from binpkgs), the perl-cleaner-style language
//! rebuild, pruning binpkgs that no longer match what is installed, a fresh index. Used by every
//! pass and by `rebase` on its staged builder.

use super::session::Session;
use super::Result;

/// Inside the builder: remove binpkgs whose package is not installed or whose USE differs from
/// the installed one (stale after a USE, config or tree change), and superseded builds of the
/// same package and USE (all but the installed build, else the newest). Portage's own API
/// decides, as eclean-pkg would; `emaint --fix binhost` rewrites the index afterwards.
const PRUNE: &str = r#"
import os, portage
vardb = portage.db[portage.root]["vartree"].dbapi
bintree = portage.db[portage.root]["bintree"]
bintree.populate()
bindb = bintree.dbapi
def remove(cpv, why):
    path = bintree.getname(cpv)
    if path and os.path.exists(path):
        os.unlink(path)
        print("gbuild: pruned %s (%s)" % (os.path.relpath(path, bintree.pkgdir), why))
kept = {}
for cpv in bindb.cpv_all():
    inst = vardb.match("=" + str(cpv))
    if not inst:
        remove(cpv, "not installed")
        continue
    iuse = set(f.lstrip("+-") for f in vardb.aux_get(inst[0], ["IUSE"])[0].split())
    use_i = set(vardb.aux_get(inst[0], ["USE"])[0].split()) & iuse
    use_b = set(bindb.aux_get(cpv, ["USE"])[0].split()) & iuse
    if use_i != use_b:
        remove(cpv, "USE differs from the installed package")
        continue
    kept.setdefault(str(cpv), []).append(cpv)
def num(v):
    try:
        return int(v)
    except ValueError:
        return 0
for key, builds in kept.items():
    if len(builds) < 2:
        continue
    installed = vardb.aux_get(vardb.match("=" + key)[0], ["BUILD_TIME"])[0]
    def rank(c):
        bt, bid = bindb.aux_get(c, ["BUILD_TIME", "BUILD_ID"])
        return (bt == installed, num(bid), num(bt))
    builds.sort(key=rank)
    for c in builds[:-1]:
        remove(c, "superseded by a newer build")
# Empty files left by interrupted builds (they only reserve a BUILD_ID).
for d, _, files in os.walk(bintree.pkgdir):
    for f in files:
        p = os.path.join(d, f)
        if f.endswith((".gpkg.tar", ".tbz2", ".xpak")) and os.path.getsize(p) == 0:
            os.unlink(p)
            print("gbuild: pruned %s (empty)" % os.path.relpath(p, bintree.pkgdir))
"#;

/// Inside the builder, in the spirit of perl-cleaner: the packages to rebuild because they own
/// files under a directory of a language version that is no longer installed. For every
/// installed `dev-lang/*` package, its directories whose name ends in its version (full,
/// major.minor or sub-slot: `/usr/lib64/perl5/vendor_perl/5.40`, `/usr/lib/python3.12`) have
/// siblings named for other versions (`.../5.38`); those no installed instance of the package
/// owns are stale, and the packages owning files under them are printed as `cat/pn:slot`
/// atoms (the reasons go to stderr, hence the log). Stateless, so a pass killed half-way
/// finds the same work again.
const LANG_REBUILD: &str = r#"
import os, re, sys, portage
vardb = portage.db[portage.root]["vartree"].dbapi
VER = re.compile(r"^(.*?)(\d+(?:\.\d+)*)$")
contents = {}
for cpv in vardb.cpv_all():
    contents[cpv] = vardb._dblink(cpv).getcontents()
langs = [c for c in contents if c.startswith("dev-lang/")]
stale = set()
for lang in langs:
    cp = portage.cpv_getkey(lang)
    pv = portage.catpkgsplit(lang)[2]
    slot = vardb.aux_get(lang, ["SLOT"])[0]
    vers = {pv, ".".join(pv.split(".")[:2])}
    if "/" in slot:
        vers.add(slot.split("/", 1)[1])
    owned = set()
    for c in contents:
        if portage.cpv_getkey(c) == cp:
            owned.update(p.rstrip("/") for p, e in contents[c].items() if e[0] == "dir")
    for d, e in contents[lang].items():
        d = d.rstrip("/")
        m = VER.match(os.path.basename(d))
        if e[0] != "dir" or not m or m.group(2) not in vers:
            continue
        parent = os.path.dirname(d)
        try:
            names = os.listdir(parent)
        except OSError:
            continue
        for n in names:
            m2 = VER.match(n)
            sib = os.path.join(parent, n)
            if (m2 and m2.group(1) == m.group(1) and m2.group(2) not in vers
                    and sib not in owned and os.path.isdir(sib)):
                stale.add(sib + "/")
atoms = set()
lang_cps = set(portage.cpv_getkey(c) for c in langs)
for cpv, files in contents.items():
    if portage.cpv_getkey(cpv) in lang_cps:
        continue
    for p, e in files.items():
        hit = next((s for s in stale if p.startswith(s)), None)
        if e[0] != "dir" and hit:
            slot = vardb.aux_get(cpv, ["SLOT"])[0].split("/")[0]
            atoms.add("%s:%s" % (portage.cpv_getkey(cpv), slot))
            print("gbuild: %s owns %s under %s, a language version no longer installed"
                  % (cpv, p, hit), file=sys.stderr)
            break
for a in sorted(atoms):
    print(a)
"#;

/// Inside the builder: the installed packages that need a shared library no installed package
/// provides (their `REQUIRES` against every `PROVIDES` and the profile's `soname.provided`,
/// Portage's own soname metadata and parser), printed as `cat/pn:slot` atoms; the reasons go
/// to stderr. A builder made from binpkgs has no preserved libraries: a binpkg linked against a
/// soname the new image no longer has (a library bumped without a sub-slot) installs without
/// complaint under `--usepkg`, which ignores soname dependencies.
const SONAME_REBUILD: &str = r#"
import sys, portage
from portage.dep.soname.parse import parse_soname_deps
vardb = portage.db[portage.root]["vartree"].dbapi
provided = set(portage.settings.soname_provided)
requires = {}
for cpv in vardb.cpv_all():
    prov, req = vardb.aux_get(cpv, ["PROVIDES", "REQUIRES"])
    provided.update(parse_soname_deps(prov))
    requires[cpv] = list(parse_soname_deps(req))
for cpv in sorted(requires):
    missing = [str(a) for a in requires[cpv] if a not in provided]
    if missing:
        slot = vardb.aux_get(cpv, ["SLOT"])[0].split("/")[0]
        print("%s:%s" % (portage.cpv_getkey(cpv), slot))
        print("gbuild: %s needs %s, which no installed package provides"
              % (cpv, " ".join(missing)), file=sys.stderr)
"#;

/// The cleanup half of a pass as one script (one container run), each step announced with a
/// `gbuild: step NAME` line that `Progress` files what follows under. `GBUILD_FULL=1` runs every
/// step; otherwise only `@preserved-rebuild`, when Portage kept old libraries. `GBUILD_SONAME=1`
/// adds the soname rebuild after depclean (what it removed provides nothing). `GBUILD_KEEP`:
/// the build-side packages depclean keeps although no world set has them (ccache, distcc).
const CLEANUP: &str = r#"set -e
export CLEAN_DELAY=0 EMERGE_WARNING_DELAY=0
if [ -s /var/lib/portage/preserved_libs_registry ] && \
   grep -q '[[:alnum:]]' /var/lib/portage/preserved_libs_registry; then
  echo "gbuild: step preserved-rebuild"
  emerge --buildpkg --usepkg=n --color=n @preserved-rebuild
fi
[ "$GBUILD_FULL" = 1 ] || exit 0
echo "gbuild: step depclean"
# Packages requested on demand stay installed (and their binpkgs published) like world's;
# GBUILD_KEEP: build-side tools (ccache, distcc) that no world set has.
set -f
keep=""
for a in $GBUILD_REQUESTED $GBUILD_KEEP; do keep="$keep --exclude $a"; done
emerge --depclean --with-bdeps=y --color=n $keep
set +f
if [ "$GBUILD_SONAME" = 1 ]; then
  echo "gbuild: step soname-rebuild"
  atoms=$(python3 -c "$GBUILD_SONAME_REBUILD")
  if [ -n "$atoms" ]; then
    emerge --oneshot --buildpkg --usepkg=n --color=n $atoms
  fi
fi
echo "gbuild: step language-rebuild"
atoms=$(python3 -c "$GBUILD_LANG_REBUILD")
if [ -n "$atoms" ]; then
  emerge --oneshot --buildpkg --usepkg=n --color=n $atoms
fi
echo "gbuild: step prune"
python3 -c "$GBUILD_PRUNE"
emaint --fix binhost
"#;

/// Run the cleanup half in session `s`: every step when `full`, else only `@preserved-rebuild`
/// when Portage kept old libraries; `soname` adds the rebuild of packages that need a soname
/// nothing installed provides (a builder made from binpkgs, `rebase`); `requested`: the
/// `cat/pn:slot` of packages built on request (kept by depclean). Returns the exit status.
pub fn run_cleanup(s: &mut Session, full: bool, soname: bool, requested: &str) -> Result<i32> {
    s.extra_env = vec![
        format!("GBUILD_REQUESTED={requested}"),
        format!("GBUILD_KEEP={}", s.kept_atoms().join(" ")),
        format!("GBUILD_FULL={}", u8::from(full)),
        format!("GBUILD_SONAME={}", u8::from(soname)),
        format!("GBUILD_SONAME_REBUILD={SONAME_REBUILD}"),
        format!("GBUILD_PRUNE={PRUNE}"),
        format!("GBUILD_LANG_REBUILD={LANG_REBUILD}"),
    ];
    let code = s.run(vec!["/bin/sh".into(), "-c".into(), CLEANUP.into()]);
    s.extra_env.clear();
    code
}
