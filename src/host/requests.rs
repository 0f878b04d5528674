//! On-demand packages: atoms a host asked the builder for (`gbuild request`) before they are in
//! its world. They join the machine's build set (the world update and depclean of every pass)
//! until the host's world has them, as the imported bundle says, or `request --drop` withdraws
//! them.
//!
//! Requests are part of a machine's configuration (next to the imported bundle whose world they
//! extend), so they live here, below both `machine import` (which prunes them) and the builder
//! (which builds them). Stored in `machines/<M>/requests.json`, written only under the lock that
//! serializes changes to the machine's configuration files (`Store::import_lock`: the build loop holds
//! the machine's own lock for its whole life, and a request must reach a running loop, like an
//! import). The loop only reads the file; a request the host's world now has is ignored by the
//! loop and removed by the next `request` or `machine import`.
//!
//! Atoms are validated before they are stored (they become arguments of emerge): an optional
//! operator (`=`, `>=`, `<=`, `>`, `<`, `~`), `category/name`, a version when there is an
//! operator (`*` after an `=` version), `:slot` and `::repository`; nothing else.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

use crate::store::Store;

/// A string that is not a package atom of the accepted form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{atom:?} is not a package atom: {why}")]
pub struct BadAtom {
    pub atom: String,
    pub why: &'static str,
}

#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error(transparent)]
    BadAtom(#[from] BadAtom),
    #[error(transparent)]
    Fs(#[from] crate::fsutil::FsError),
    #[error(transparent)]
    Lock(#[from] crate::lock::LockError),
}

pub type Result<T, E = RequestError> = std::result::Result<T, E>;

/// `machines/<M>/requests.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requests {
    #[serde(default)]
    pub atoms: Vec<Request>,
}

/// One requested atom and when it was asked for (unix seconds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub atom: String,
    pub requested: u64,
}

/// A parsed package atom of the restricted form above.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Atom {
    pub op: Option<String>,
    pub category: String,
    pub name: String,
    pub version: Option<String>,
    /// `=cat/pkg-1.2*`.
    pub glob: bool,
    pub slot: Option<String>,
    pub repo: Option<String>,
}

fn name_ok(s: &str, first_extra: &[u8]) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && (b[0].is_ascii_alphanumeric() || first_extra.contains(&b[0]))
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"+_.-".contains(c))
}

/// Split `name-version` at the last `-` that starts a version (`-1.2`, `-1.2-r3`).
fn split_version(pv: &str) -> Option<(&str, &str)> {
    let mut idx = None;
    for (i, _) in pv.match_indices('-') {
        let rest = &pv[i + 1..];
        if parse_version(rest).is_some() {
            idx = Some(i);
            break;
        }
    }
    let i = idx?;
    Some((&pv[..i], &pv[i + 1..]))
}

impl Atom {
    pub fn parse(s: &str) -> std::result::Result<Atom, BadAtom> {
        let bad = |why: &'static str| BadAtom {
            atom: s.to_string(),
            why,
        };
        let t = s.trim();
        if t.is_empty() || t != s {
            return Err(bad("empty or surrounded by blanks"));
        }
        let (t, repo) = match t.split_once("::") {
            Some((a, r)) => {
                if !name_ok(r, b"") {
                    return Err(bad("bad repository name"));
                }
                (a, Some(r.to_string()))
            }
            None => (t, None),
        };
        let (t, slot) = match t.split_once(':') {
            Some((a, sl)) => {
                let ok = !sl.is_empty()
                    && sl
                        .bytes()
                        .all(|c| c.is_ascii_alphanumeric() || b"+_.-/".contains(&c));
                if !ok {
                    return Err(bad("bad slot"));
                }
                (a, Some(sl.to_string()))
            }
            None => (t, None),
        };
        let op = ["<=", ">=", "=", "~", "<", ">"]
            .iter()
            .find(|o| t.starts_with(**o))
            .map(|o| o.to_string());
        let t = &t[op.as_ref().map_or(0, |o| o.len())..];
        let Some((category, pv)) = t.split_once('/') else {
            return Err(bad("no category/name"));
        };
        if !name_ok(category, b"_") || category.contains('/') {
            return Err(bad("bad category"));
        }
        let (name, version, glob) = match &op {
            None => (pv.to_string(), None, false),
            Some(o) => {
                let (pv, glob) = match pv.strip_suffix('*') {
                    Some(p) if o == "=" => (p, true),
                    Some(_) => return Err(bad("`*` goes only with `=`")),
                    None => (pv, false),
                };
                let (n, v) = split_version(pv).ok_or_else(|| bad("an operator needs a version"))?;
                (n.to_string(), Some(v.to_string()), glob)
            }
        };
        if !name_ok(&name, b"_") || name.contains('/') {
            return Err(bad("bad package name"));
        }
        if op.is_none() && split_version(&name).is_some() {
            return Err(bad("a version needs an operator (=cat/pkg-1.0)"));
        }
        Ok(Atom {
            op,
            category: category.to_string(),
            name,
            version,
            glob,
            slot,
            repo,
        })
    }

    /// `category/name`.
    pub fn cp(&self) -> String {
        format!("{}/{}", self.category, self.name)
    }

    /// `category/name[:slot]`: the form emerge's `--exclude` takes (no version, no repository).
    pub fn package_and_slot(&self) -> String {
        match &self.slot {
            Some(s) => format!("{}:{s}", self.cp()),
            None => self.cp(),
        }
    }

    /// Whether a package `cpv` (`cat/pkg-1.0-r1`) of `slot` from `repo` matches.
    pub fn matches(&self, cpv: &str, slot: Option<&str>, repo: Option<&str>) -> bool {
        let Some((cat, pv)) = cpv.split_once('/') else {
            return false;
        };
        let Some((name, ver)) = split_version(pv) else {
            return false;
        };
        if cat != self.category || name != self.name {
            return false;
        }
        if let (Some(want), Some(have)) = (&self.slot, slot) {
            let (ws, wsub) = want.split_once('/').unwrap_or((want, ""));
            let (hs, hsub) = have.split_once('/').unwrap_or((have, ""));
            if ws != hs || (!wsub.is_empty() && wsub != hsub) {
                return false;
            }
        }
        if let (Some(want), Some(have)) = (&self.repo, repo) {
            if want != have {
                return false;
            }
        }
        let (Some(op), Some(v)) = (&self.op, &self.version) else {
            return true;
        };
        if self.glob {
            return ver.starts_with(v.as_str());
        }
        let strip_rev = |x: &str| x.split("-r").next().unwrap_or(x).to_string();
        if op == "~" {
            return strip_rev(ver) == strip_rev(v);
        }
        let Some(c) = vercmp(ver, v) else {
            return false;
        };
        match op.as_str() {
            "=" => c == Ordering::Equal,
            ">=" => c != Ordering::Less,
            "<=" => c != Ordering::Greater,
            ">" => c == Ordering::Greater,
            "<" => c == Ordering::Less,
            _ => false,
        }
    }
}

impl std::fmt::Display for Atom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}", self.op.as_deref().unwrap_or(""), self.cp())?;
        if let Some(v) = &self.version {
            write!(f, "-{v}{}", if self.glob { "*" } else { "" })?;
        }
        if let Some(s) = &self.slot {
            write!(f, ":{s}")?;
        }
        if let Some(r) = &self.repo {
            write!(f, "::{r}")?;
        }
        Ok(())
    }
}

/// A Gentoo version split into comparable parts: numbers, letter, suffixes, revision.
#[derive(Debug, PartialEq, Eq)]
struct Version {
    nums: Vec<String>,
    letter: Option<char>,
    suffixes: Vec<(i32, u64)>,
    rev: u64,
}

fn parse_version(v: &str) -> Option<Version> {
    let (main, rev) = match v.rsplit_once("-r") {
        Some((m, r)) if !r.is_empty() && r.bytes().all(|c| c.is_ascii_digit()) => {
            (m, r.parse().ok()?)
        }
        _ => (v, 0),
    };
    let mut parts = main.split('_');
    let head = parts.next()?;
    let (digits, letter) = match head.chars().last() {
        Some(c) if c.is_ascii_lowercase() => (&head[..head.len() - 1], Some(c)),
        _ => (head, None),
    };
    let nums: Vec<String> = digits.split('.').map(str::to_string).collect();
    if nums
        .iter()
        .any(|n| n.is_empty() || !n.bytes().all(|c| c.is_ascii_digit()))
    {
        return None;
    }
    let mut suffixes = Vec::new();
    for s in parts {
        let (rank, rest) = [
            ("alpha", -4),
            ("beta", -3),
            ("pre", -2),
            ("rc", -1),
            ("p", 1),
        ]
        .iter()
        .find_map(|(n, r)| s.strip_prefix(n).map(|rest| (*r, rest)))?;
        if !rest.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        suffixes.push((rank, rest.parse().unwrap_or(0)));
    }
    Some(Version {
        nums,
        letter,
        suffixes,
        rev,
    })
}

/// Portage's version order (PMS 3.3) for well-formed versions; `None` when one is not.
pub fn vercmp(a: &str, b: &str) -> Option<Ordering> {
    let (x, y) = (parse_version(a)?, parse_version(b)?);
    for i in 0..x.nums.len().max(y.nums.len()) {
        let (p, q) = match (x.nums.get(i), y.nums.get(i)) {
            (Some(p), Some(q)) => (p, q),
            (Some(_), None) => return Some(Ordering::Greater),
            (None, Some(_)) => return Some(Ordering::Less),
            (None, None) => break,
        };
        let c = if i > 0 && (p.starts_with('0') || q.starts_with('0')) {
            // Leading zeros: compared as strings, trailing zeros stripped.
            p.trim_end_matches('0').cmp(q.trim_end_matches('0'))
        } else {
            let (p, q) = (p.trim_start_matches('0'), q.trim_start_matches('0'));
            p.len().cmp(&q.len()).then_with(|| p.cmp(q))
        };
        if c != Ordering::Equal {
            return Some(c);
        }
    }
    let c = x.letter.cmp(&y.letter);
    if c != Ordering::Equal {
        return Some(c);
    }
    for i in 0..x.suffixes.len().max(y.suffixes.len()) {
        let c = match (x.suffixes.get(i), y.suffixes.get(i)) {
            (Some(p), Some(q)) => p.cmp(q),
            (Some(p), None) => p.0.cmp(&0),
            (None, Some(q)) => 0.cmp(&q.0),
            (None, None) => Ordering::Equal,
        };
        if c != Ordering::Equal {
            return Some(c);
        }
    }
    Some(x.rev.cmp(&y.rev))
}

/// The requests as stored (an unreadable or missing file is none).
pub fn load(store: &Store, name: &str) -> Requests {
    std::fs::read(store.machine(name).requests())
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// The `category/name` of every world entry of the machine's host bundle.
fn world_cps(store: &Store, name: &str) -> Vec<String> {
    let Some(b) = super::bundle::imported(&store.machine(name).config()) else {
        return Vec::new();
    };
    let text = b
        .file("var/lib/portage/world")
        .map(|d| String::from_utf8_lossy(d).into_owned())
        .unwrap_or_default();
    super::diff::normalize_atom_lines(&text)
        .iter()
        .filter_map(|l| Atom::parse(l).ok().map(|a| a.cp()))
        .collect()
}

/// The requested atoms the loop builds: those the host's world does not have yet.
pub fn active(store: &Store, name: &str) -> Vec<String> {
    let world = world_cps(store, name);
    load(store, name)
        .atoms
        .into_iter()
        .filter_map(|r| Atom::parse(&r.atom).ok())
        .filter(|a| !world.contains(&a.cp()))
        .map(|a| a.to_string())
        .collect()
}

/// The `cat/pn:slot` of each requested atom, space-separated: what the cleanup half's depclean
/// keeps.
pub fn keep_list(requested: &[String]) -> String {
    requested
        .iter()
        .filter_map(|a| Atom::parse(a).ok())
        .map(|a| a.package_and_slot())
        .collect::<Vec<_>>()
        .join(" ")
}

/// What `change` did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changed {
    pub added: Vec<String>,
    pub dropped: Vec<String>,
    /// Removed because the host's world has them now.
    pub satisfied: Vec<String>,
    /// Asked to drop but not requested.
    pub unknown: Vec<String>,
}

/// Add (or with `drop` withdraw) `atoms` for machine `name`, holding its configuration lock;
/// requests the host's world has are removed on the way. Atoms are validated first: nothing
/// changes when one is bad.
pub fn change(store: &Store, name: &str, atoms: &[String], drop: bool) -> Result<Changed> {
    let parsed: Vec<Atom> = atoms
        .iter()
        .map(|a| Atom::parse(a))
        .collect::<Result<_, BadAtom>>()?;
    let _lock = crate::lock::Lock::acquire(&store.import_lock(name))?;
    let mut ch = Changed::default();
    let mut reqs = load(store, name);
    prune_satisfied(store, name, &mut reqs, &mut ch.satisfied);
    let now = crate::time::now();
    for a in parsed {
        let s = a.to_string();
        let pos = reqs.atoms.iter().position(|r| r.atom == s);
        match (drop, pos) {
            (false, None) => {
                reqs.atoms.push(Request {
                    atom: s.clone(),
                    requested: now,
                });
                ch.added.push(s);
            }
            (false, Some(_)) => {}
            (true, Some(i)) => {
                reqs.atoms.remove(i);
                ch.dropped.push(s);
            }
            (true, None) => ch.unknown.push(s),
        }
    }
    save(store, name, &reqs)?;
    Ok(ch)
}

fn prune_satisfied(store: &Store, name: &str, reqs: &mut Requests, out: &mut Vec<String>) {
    let world = world_cps(store, name);
    reqs.atoms.retain(|r| {
        let keep = Atom::parse(&r.atom).is_ok_and(|a| !world.contains(&a.cp()));
        if !keep {
            out.push(r.atom.clone());
        }
        keep
    });
}

/// Remove the requests the host's world now has (caller holds the configuration lock, as
/// `machine import` does). Returns them.
pub fn prune_locked(store: &Store, name: &str) -> Result<Vec<String>> {
    let mut reqs = load(store, name);
    let mut out = Vec::new();
    prune_satisfied(store, name, &mut reqs, &mut out);
    if !out.is_empty() {
        save(store, name, &reqs)?;
    }
    Ok(out)
}

fn save(store: &Store, name: &str, reqs: &Requests) -> Result<()> {
    let p = store.machine(name).requests();
    let mut json = serde_json::to_vec_pretty(reqs).expect("requests serialize");
    json.push(b'\n');
    crate::fsutil::atomic_write(&p, &json)?;
    Ok(())
}

/// The stanzas of a Packages index as (CPV, SLOT, repository).
pub fn index_packages(text: &str) -> Vec<(String, Option<String>, Option<String>)> {
    text.split("\n\n")
        .filter_map(|st| {
            let get = |k: &str| {
                st.lines()
                    .find_map(|l| l.strip_prefix(k).and_then(|r| r.strip_prefix(": ")))
                    .map(|v| v.trim().to_string())
            };
            Some((get("CPV")?, get("SLOT"), get("REPO")))
        })
        .collect()
}

/// The CPVs of `index` (a Packages text) that satisfy `atom`.
pub fn published_matches(index: &str, atom: &Atom) -> Vec<String> {
    index_packages(index)
        .into_iter()
        .filter(|(c, s, r)| atom.matches(c, s.as_deref(), r.as_deref()))
        .map(|(c, _, _)| c)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_kept_by_slot() {
        let req = vec![
            ">=app-editors/vim-9.0:0".to_string(),
            "dev-libs/openssl".into(),
        ];
        assert_eq!(keep_list(&req), "app-editors/vim:0 dev-libs/openssl");
    }

    #[test]
    fn atoms_are_validated() {
        for ok in [
            "app-editors/vim",
            "=app-editors/vim-1.0",
            ">=dev-lang/perl-5.40.0-r1:0/5.40",
            "=dev-libs/foo-1.2*",
            "~x11-libs/gtk+-3.24.41",
            "app-editors/vim::gentoo",
            "dev-libs/libfoo:2",
            "media-fonts/font-adobe-100dpi",
        ] {
            let a = Atom::parse(ok).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(a.to_string(), ok);
        }
        for bad in [
            "",
            "hello",
            " app-editors/vim",
            "app-editors/vim;rm -rf /",
            "app-editors/vim-1.0",
            ">=app-editors/vim",
            ">=app-editors/vim-1*",
            "app-editors/vim[foo]",
            "app-editors/$(x)",
            "@world",
            "-app-editors/vim",
            "app-editors/vim:",
            "a/b/c",
        ] {
            assert!(Atom::parse(bad).is_err(), "{bad:?} accepted");
        }
        let a = Atom::parse("media-fonts/font-adobe-100dpi").unwrap();
        assert_eq!(a.name, "font-adobe-100dpi");
        let a = Atom::parse(">=dev-lang/perl-5.40.0-r1:0/5.40::gentoo").unwrap();
        assert_eq!(a.package_and_slot(), "dev-lang/perl:0/5.40");
    }

    #[test]
    fn versions_order_like_portage() {
        use Ordering::*;
        for (a, b, o) in [
            ("1.0", "1.0", Equal),
            ("1.0", "1.0.1", Less),
            ("1.10", "1.9", Greater),
            ("1.0_rc1", "1.0", Less),
            ("1.0_p1", "1.0", Greater),
            ("1.0a", "1.0", Greater),
            ("1.0-r1", "1.0", Greater),
            ("5.40.0", "5.38.2", Greater),
            ("1.01", "1.1", Less),
            ("1.0_alpha", "1.0_beta", Less),
        ] {
            assert_eq!(vercmp(a, b), Some(o), "{a} vs {b}");
        }
    }

    #[test]
    fn atoms_match_index_entries() {
        let index = "ARCH: amd64\n\nCPV: app-editors/vim-1.0\nSLOT: 0\nREPO: gentoo\n\n\
                     CPV: dev-lang/perl-5.40.0\nSLOT: 0/5.40\n\n";
        let m = |s: &str| published_matches(index, &Atom::parse(s).unwrap());
        assert_eq!(m("app-editors/vim"), vec!["app-editors/vim-1.0"]);
        assert!(m("app-editors/vi").is_empty());
        assert!(m(">app-editors/vim-1.0").is_empty());
        assert_eq!(m(">=dev-lang/perl-5.40"), vec!["dev-lang/perl-5.40.0"]);
        assert!(m("dev-lang/perl:0/5.38").is_empty());
        assert_eq!(m("dev-lang/perl:0"), vec!["dev-lang/perl-5.40.0"]);
        assert_eq!(m("=dev-lang/perl-5.4*"), vec!["dev-lang/perl-5.40.0"]);
        assert!(m("app-editors/vim::other").is_empty());
    }
}
