//! Tidy checks (run with the unit tests): the rules ARCHITECTURE.md states about the code, checked
//! on the source tree itself, so that a change breaking one fails the suite instead of making the
//! page quietly false.

use std::path::{Path, PathBuf};

fn top() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every text file under `dir` (recursively) that `want` accepts, as (path relative to the
/// checkout, content); files that are not UTF-8 are left out. The one walker of the checks.
fn text_files(dir: &str, want: impl Fn(&Path) -> bool) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut todo = vec![top().join(dir)];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("read {}: {e}", d.display())) {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else if want(&p) {
                if let Ok(text) = std::fs::read_to_string(&p) {
                    let rel = p
                        .strip_prefix(top())
                        .unwrap()
                        .to_string_lossy()
                        .into_owned();
                    out.push((rel, text));
                }
            }
        }
    }
    out.sort();
    out
}

/// Every `.rs` file under `dir`, as (path relative to the checkout, content).
fn rust_files(dir: &str) -> Vec<(String, String)> {
    text_files(dir, |p| p.extension().is_some_and(|x| x == "rs"))
}

/// The code of a file without comments and string literals' content, line by line (good
/// enough for the keyword checks below: a keyword in a comment or a message does not count).
fn code_lines(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_block = false;
    for line in text.lines() {
        let mut code = String::new();
        let mut chars = line.chars().peekable();
        let mut in_str = false;
        while let Some(c) = chars.next() {
            if in_block {
                if c == '*' && chars.peek() == Some(&'/') {
                    chars.next();
                    in_block = false;
                }
                continue;
            }
            if in_str {
                match c {
                    '\\' => {
                        chars.next();
                    }
                    '"' => {
                        in_str = false;
                        code.push('"');
                    }
                    _ => {}
                }
                continue;
            }
            match c {
                '/' if chars.peek() == Some(&'/') => break,
                '/' if chars.peek() == Some(&'*') => {
                    chars.next();
                    in_block = true;
                }
                '"' => {
                    in_str = true;
                    code.push('"');
                }
                _ => code.push(c),
            }
        }
        out.push(code);
    }
    out
}

fn under(path: &str, allowed: &[&str]) -> bool {
    allowed
        .iter()
        .any(|a| path == *a || path.starts_with(&format!("{a}/")))
}

/// Files outside `allowed` whose code uses one of `needles`, with the line.
fn offenders(files: &[(String, String)], needles: &[&str], allowed: &[&str]) -> Vec<String> {
    let mut bad = Vec::new();
    for (path, text) in files {
        if under(path, allowed) || path.ends_with("src/tidy.rs") {
            continue;
        }
        for (n, line) in code_lines(text).iter().enumerate() {
            if needles.iter().any(|k| line.contains(k)) {
                bad.push(format!("{path}:{}: {}", n + 1, line.trim()));
            }
        }
    }
    bad
}

#[test]
fn libcontainer_only_in_the_runtime() {
    let bad = offenders(
        &rust_files("src"),
        &[
            "libcontainer::",
            "use libcontainer",
            "libcgroups::",
            "use libcgroups",
        ],
        &["src/runtime.rs", "src/runtime"],
    );
    assert!(
        bad.is_empty(),
        "libcontainer or libcgroups outside src/runtime:\n{}",
        bad.join("\n")
    );
}

#[test]
fn unsafe_only_in_sys() {
    let bad = offenders(
        &rust_files("src"),
        &["unsafe {", "unsafe fn", "unsafe impl", "unsafe extern"],
        &["src/sys.rs"],
    );
    assert!(
        bad.is_empty(),
        "unsafe outside src/sys.rs:\n{}",
        bad.join("\n")
    );
    let lib = std::fs::read_to_string(top().join("src/lib.rs")).unwrap();
    assert!(
        lib.contains("#![deny(unsafe_code)]"),
        "src/lib.rs must deny unsafe_code outside sys"
    );
}

#[test]
fn network_only_in_fetch_and_serve() {
    let files = rust_files("src");
    let out = offenders(
        &files,
        &[
            "reqwest::",
            "TcpStream::connect",
            "UdpSocket",
            "UnixStream::connect",
        ],
        &[
            "src/fetch",
            "src/runtime.rs",
            "src/runtime",
            "src/userns.rs",
        ],
    );
    assert!(
        out.is_empty(),
        "outgoing connections outside src/fetch:\n{}",
        out.join("\n")
    );
    let listen = offenders(
        &files,
        &["TcpListener", "UdpSocket::bind", "axum::serve"],
        &["src/serve"],
    );
    assert!(
        listen.is_empty(),
        "listening outside src/serve:\n{}",
        listen.join("\n")
    );
}

#[test]
fn library_errors_have_no_catch_all() {
    // A variant that carries only a message hides what failed from callers and tests: each
    // error is a variant naming its path or value.
    let bad = offenders(
        &rust_files("src"),
        &["Other(String)", "Helper(String)"],
        &[],
    );
    assert!(bad.is_empty(), "catch-all error variants: {bad:#?}");
}

/// The `let _ =` lines of `text` (before its tests) that no comment justifies: a comment on
/// the line itself, or directly above it or above the run of `let _ =` lines it belongs to.
fn unjustified_ignores(text: &str) -> Vec<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let mut bad = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let t = line.trim_start();
        if t.starts_with("#[cfg(test)]") {
            break;
        }
        if !t.starts_with("let _ =") || t.contains("//") {
            continue;
        }
        let above = lines[..i]
            .iter()
            .rev()
            .map(|l| l.trim_start())
            .find(|l| !l.starts_with("let _ ="));
        if !above.is_some_and(|l| l.starts_with("//")) {
            bad.push(i + 1);
        }
    }
    bad
}

#[test]
fn every_ignored_result_says_why() {
    // A result thrown away without a word hides failures: each is handled, logged naming its
    // path, or commented with why ignoring it is right.
    let mut bad = Vec::new();
    for (path, text) in rust_files("src") {
        if path.ends_with("src/tidy.rs") {
            continue;
        }
        bad.extend(
            unjustified_ignores(&text)
                .into_iter()
                .map(|n| format!("{path}:{n}")),
        );
    }
    assert!(bad.is_empty(), "`let _ =` without a reason: {bad:#?}");
    let sample = "fn f() {\n    let _ = a();\n    // gone is fine\n    let _ = b();\n    let _ = c();\n    let _ = d(); // fine too\n}\n#[cfg(test)]\nlet _ = e();\n";
    assert_eq!(unjustified_ignores(sample), vec![2]);
}

#[test]
fn every_module_says_why_it_exists() {
    let missing: Vec<String> = rust_files("src")
        .into_iter()
        .filter(|(_, text)| !text.trim_start().starts_with("//!"))
        .map(|(p, _)| p)
        .collect();
    assert!(
        missing.is_empty(),
        "modules without a //! header:\n{}",
        missing.join("\n")
    );
}

#[test]
fn nothing_points_outside_the_repository() {
    let mut bad = Vec::new();
    let mut files = rust_files("src");
    files.extend(rust_files("tests"));
    for name in ["README.md", "ARCHITECTURE.md", "build.rs"] {
        files.push((
            name.into(),
            std::fs::read_to_string(top().join(name)).unwrap(),
        ));
    }
    for dir in ["docs", "scripts"] {
        files.extend(text_files(dir, |_| true));
    }
    for (path, text) in &files {
        if path.ends_with("src/tidy.rs") {
            continue;
        }
        for (n, line) in text.lines().enumerate() {
            if line.contains("../shared") || line.contains("DESIGN.md") {
                bad.push(format!("{path}:{}: {}", n + 1, line.trim()));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "references to files outside the repository:\n{}",
        bad.join("\n")
    );
}

#[test]
fn architecture_code_map_names_what_exists() {
    let arch = std::fs::read_to_string(top().join("ARCHITECTURE.md")).unwrap();
    let mut missing = Vec::new();
    let mut mapped = Vec::new();
    for line in arch.lines().filter(|l| l.starts_with("| `")) {
        let path = line[3..].split('`').next().unwrap_or("");
        if path.contains('<') || path.contains('*') {
            continue;
        }
        mapped.push(path.trim_end_matches('/').to_string());
        if !top().join(path).exists() {
            missing.push(path.to_string());
        }
    }
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md maps paths that do not exist: {missing:?}"
    );
    // Every top-level module of the library is on the map.
    let mut unmapped = Vec::new();
    for e in std::fs::read_dir(top().join("src")).unwrap() {
        let p = e.unwrap().path();
        let rel = p
            .strip_prefix(top())
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let rel = rel.trim_end_matches(".rs").to_string();
        if rel == "src/tidy" || rel == "src/cmd" {
            continue;
        }
        let known = mapped
            .iter()
            .any(|m| m.trim_end_matches(".rs") == rel || m.starts_with(&format!("{rel}/")));
        if !known {
            unmapped.push(rel);
        }
    }
    assert!(
        unmapped.is_empty(),
        "modules missing from ARCHITECTURE.md's code map: {unmapped:?}"
    );
    // A directory's row names each of its files (but `mod.rs`), and only files it has.
    let mut wrong = Vec::new();
    for line in arch.lines().filter(|l| l.starts_with("| `src/")) {
        let dir = line[3..].split('`').next().unwrap_or("");
        if !dir.ends_with('/') {
            continue;
        }
        let named: Vec<&str> = line
            .split('`')
            .skip(3)
            .step_by(2)
            .filter(|t| {
                t.ends_with(".rs")
                    && t.chars()
                        .all(|c| c.is_ascii_lowercase() || "_.".contains(c))
            })
            .collect();
        for n in &named {
            if !top().join(dir).join(n).is_file() {
                wrong.push(format!("{dir}{n} is on the map but not in the tree"));
            }
        }
        for e in std::fs::read_dir(top().join(dir)).unwrap() {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            if name.ends_with(".rs") && name != "mod.rs" && !named.contains(&name.as_str()) {
                wrong.push(format!("{dir}{name} is in the tree but not on the map"));
            }
        }
    }
    assert!(wrong.is_empty(), "ARCHITECTURE.md's code map: {wrong:#?}");
}

#[test]
fn the_scanner_sees_code_not_comments() {
    let lines =
        code_lines("let a = 1; // unsafe {\n/* unsafe fn */ let b = \"unsafe {\";\nunsafe { x }");
    assert!(!lines[0].contains("unsafe"));
    assert!(!lines[1].contains("unsafe"));
    assert!(lines[2].contains("unsafe {"));
    assert!(under("src/fetch/http.rs", &["src/fetch"]));
    assert!(!under("src/fetchy.rs", &["src/fetch"]));
    let _ = Path::new("");
}

/// Package names (`category/name`) of the fixture's repositories and overlays.
fn fixture_packages() -> Vec<String> {
    let mut out = Vec::new();
    let mut repos = Vec::new();
    for base in ["scripts/fixture/repo", "scripts/fixture/overlays"] {
        for e in std::fs::read_dir(top().join(base)).unwrap() {
            repos.push(e.unwrap().path());
        }
    }
    for repo in repos {
        for cat in std::fs::read_dir(&repo).into_iter().flatten() {
            let cat = cat.unwrap().path();
            let c = cat.file_name().unwrap().to_string_lossy().into_owned();
            if !(c.contains('-') || c == "virtual") || !cat.is_dir() {
                continue;
            }
            for p in std::fs::read_dir(&cat).unwrap() {
                let p = p.unwrap().path();
                if p.is_dir() {
                    out.push(format!("{c}/{}", p.file_name().unwrap().to_string_lossy()));
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

#[test]
fn the_product_carries_no_fixture_data() {
    let pkgs = fixture_packages();
    assert!(pkgs.len() > 5, "fixture repositories not found: {pkgs:?}");
    let mut files = rust_files("src");
    for dir in ["stage3", "overlays"] {
        files.extend(text_files(dir, |_| true));
    }
    let mut bad = Vec::new();
    for (path, text) in &files {
        if path.ends_with("src/tidy.rs") {
            continue;
        }
        for (n, line) in text.lines().enumerate() {
            // A name followed by a letter, digit or '-' is another package's prefix.
            let hit = pkgs.iter().any(|p| {
                line.match_indices(p.as_str()).any(|(i, _)| {
                    !line[i + p.len()..]
                        .chars()
                        .next()
                        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
                })
            });
            if hit {
                bad.push(format!("{path}:{}: {}", n + 1, line.trim()));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "fixture package names in the product (use real Gentoo names in examples):\n{}",
        bad.join("\n")
    );
}

/// The string literals of a file's code before its `#[cfg(test)]` module, with their line
/// (plain `"..."` literals; escapes kept as written). Tests may spell store names: they check
/// the layout from outside.
fn string_literals(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut in_block = false;
    for (n, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("#[cfg(test)]") {
            break;
        }
        let mut chars = line.chars().peekable();
        let mut lit: Option<String> = None;
        let mut prev = ' ';
        while let Some(c) = chars.next() {
            if in_block {
                if c == '*' && chars.peek() == Some(&'/') {
                    chars.next();
                    in_block = false;
                }
                continue;
            }
            if let Some(l) = lit.as_mut() {
                match c {
                    '\\' => {
                        l.push(c);
                        if let Some(d) = chars.next() {
                            l.push(d);
                        }
                    }
                    '"' => out.push((n + 1, lit.take().unwrap())),
                    _ => l.push(c),
                }
                continue;
            }
            match c {
                '/' if chars.peek() == Some(&'/') => break,
                '/' if chars.peek() == Some(&'*') => {
                    chars.next();
                    in_block = true;
                }
                // A char literal '"' is not the start of a string.
                '"' if prev != '\'' => lit = Some(String::new()),
                _ => {}
            }
            prev = c;
        }
    }
    out
}

/// The names of the files in a machine's directory and the store's own file names: spelled only
/// by `src/store.rs` (ARCHITECTURE.md: nothing else builds store paths).
const STORE_FILE_NAMES: &[&str] = &[
    "state.json",
    "machine.json",
    "import.json",
    "info.json",
    "Packages",
    "needs-update",
    "sign-cache.json",
    "abi-cache.json",
    "build-side",
    "config.prev",
    "secret.asc",
    "public.asc",
    ".fetch.lock",
    ".lock",
];

#[test]
fn store_file_names_only_in_the_store_module() {
    let mut bad = Vec::new();
    for (path, text) in rust_files("src") {
        // The runtime's state root (libcontainer's `<id>/state.json`) is not the store.
        if path == "src/store.rs" || path.ends_with("src/tidy.rs") || under(&path, &["src/runtime"])
        {
            continue;
        }
        for (n, lit) in string_literals(&text) {
            let hit = STORE_FILE_NAMES.iter().any(|name| {
                lit == *name
                    || lit.ends_with(&format!("/{name}"))
                    || lit.starts_with(&format!("{name}/"))
                    || lit.contains(&format!("/{name}/"))
            });
            if hit {
                bad.push(format!("{path}:{n}: \"{lit}\""));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "store file names outside src/store.rs (use store::Store / MachineDir):\n{}",
        bad.join("\n")
    );
}

#[test]
fn string_literals_are_found_outside_comments_and_tests() {
    let lits = string_literals(
        "let a = \"state.json\"; // \"x\"\n/* \"y\" */ let c = '\"'; f(\"a\\\"b\");\n#[cfg(test)]\nlet t = \"z\";",
    );
    let texts: Vec<&str> = lits.iter().map(|(_, l)| l.as_str()).collect();
    assert_eq!(texts, ["state.json", "a\\\"b"]);
}

/// A file's module path (`src/layer/ns.rs` -> `layer::ns`, `src/layer/mod.rs` -> `layer`; the
/// crate roots `lib.rs` and `main.rs` -> empty).
fn module_of(path: &str) -> Vec<String> {
    let rel = path.strip_prefix("src/").unwrap_or(path);
    let rel = rel.strip_suffix(".rs").unwrap_or(rel);
    let mut segs: Vec<String> = rel.split('/').map(str::to_string).collect();
    if segs.last().is_some_and(|s| s == "mod") {
        segs.pop();
    }
    if segs == ["lib"] || segs == ["main"] {
        segs.clear();
    }
    segs
}

/// Every path a piece of code names through `crate::` or `super::` (use trees expanded: `use
/// super::{a::{self, B}, c}` gives `super::a::self`, `super::a::B`, `super::c`).
fn crate_paths(code: &str) -> Vec<Vec<String>> {
    fn ident(c: char) -> bool {
        c.is_alphanumeric() || c == '_'
    }
    fn skip_ws(s: &[char], i: &mut usize) {
        while *i < s.len() && s[*i].is_whitespace() {
            *i += 1;
        }
    }
    // One use tree at `i` below `prefix`.
    fn tree(s: &[char], i: &mut usize, mut prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
        loop {
            skip_ws(s, i);
            if *i < s.len() && s[*i] == '{' {
                *i += 1;
                loop {
                    skip_ws(s, i);
                    if *i >= s.len() || s[*i] == '}' {
                        *i += 1;
                        return;
                    }
                    tree(s, i, prefix.clone(), out);
                    skip_ws(s, i);
                    if *i < s.len() && s[*i] == ',' {
                        *i += 1;
                    }
                }
            }
            let start = *i;
            while *i < s.len() && ident(s[*i]) {
                *i += 1;
            }
            if *i == start {
                break;
            }
            prefix.push(s[start..*i].iter().collect());
            if s.get(*i) == Some(&':') && s.get(*i + 1) == Some(&':') {
                *i += 2;
            } else {
                break;
            }
        }
        out.push(prefix);
    }
    let s: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < s.len() {
        let at_word = i == 0 || !(ident(s[i - 1]) || s[i - 1] == ':');
        let rest = &s[i..];
        let starts = |w: &str| {
            let w: Vec<char> = w.chars().collect();
            rest.starts_with(&w)
        };
        if at_word && (starts("crate::") || starts("super::")) {
            tree(&s, &mut i, Vec::new(), &mut out);
        } else {
            i += 1;
        }
    }
    out
}

/// The module import graph of one crate: an edge `a -> b` when `a`'s code (before its tests)
/// names a path into module `b` through `crate::` or `super::`. A module's uses of its own
/// ancestors are not edges: a parent (`mod.rs`, `lib.rs`) declares its children and holds what
/// they share (the error type, `Result`), so children naming it is the shape Rust gives modules.
fn import_graph(
    files: &[(String, String)],
) -> std::collections::BTreeMap<Vec<String>, std::collections::BTreeSet<Vec<String>>> {
    let modules: std::collections::BTreeSet<Vec<String>> =
        files.iter().map(|(p, _)| module_of(p)).collect();
    let mut graph = std::collections::BTreeMap::new();
    for (path, text) in files {
        let me = module_of(path);
        let mut code = String::new();
        for line in code_lines(text) {
            if line.trim_start().starts_with("#[cfg(test)]") {
                break;
            }
            code.push_str(&line);
            code.push('\n');
        }
        let edges: &mut std::collections::BTreeSet<Vec<String>> =
            graph.entry(me.clone()).or_default();
        for p in crate_paths(&code) {
            let mut base: Vec<String> = Vec::new();
            let mut rest = p.as_slice();
            if rest.first().is_some_and(|s| s == "crate") {
                rest = &rest[1..];
            } else {
                base = me.clone();
                while rest.first().is_some_and(|s| s == "super") {
                    base.pop();
                    rest = &rest[1..];
                }
            }
            base.extend(rest.iter().filter(|s| *s != "self").cloned());
            let target = (0..=base.len())
                .rev()
                .map(|n| base[..n].to_vec())
                .find(|m| modules.contains(m));
            if let Some(t) = target {
                if !me.starts_with(&t) {
                    edges.insert(t);
                }
            }
        }
    }
    graph
}

/// One cycle of `graph`, if it has any, as the modules along it.
fn find_cycle(
    graph: &std::collections::BTreeMap<Vec<String>, std::collections::BTreeSet<Vec<String>>>,
) -> Option<Vec<String>> {
    fn visit(
        g: &std::collections::BTreeMap<Vec<String>, std::collections::BTreeSet<Vec<String>>>,
        v: &Vec<String>,
        done: &mut std::collections::BTreeSet<Vec<String>>,
        stack: &mut Vec<Vec<String>>,
    ) -> Option<Vec<String>> {
        if let Some(at) = stack.iter().position(|s| s == v) {
            let mut cycle: Vec<String> = stack[at..].iter().map(|m| m.join("::")).collect();
            cycle.push(v.join("::"));
            return Some(cycle);
        }
        if done.contains(v) {
            return None;
        }
        stack.push(v.clone());
        for w in g.get(v).into_iter().flatten() {
            if let Some(c) = visit(g, w, done, stack) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(v.clone());
        None
    }
    let mut done = std::collections::BTreeSet::new();
    graph
        .keys()
        .find_map(|v| visit(graph, v, &mut done, &mut Vec::new()))
}

#[test]
fn module_imports_have_no_cycle() {
    // Two crates: the binary (main.rs and the modules it declares) and the library.
    let files = rust_files("src");
    let main = std::fs::read_to_string(top().join("src/main.rs")).unwrap();
    let bin_mods: Vec<String> = main
        .lines()
        .filter_map(|l| l.strip_prefix("mod ")?.strip_suffix(';'))
        .map(|m| format!("src/{m}"))
        .collect();
    assert!(!bin_mods.is_empty(), "src/main.rs declares no module");
    let bin_mods: Vec<&str> = bin_mods.iter().map(String::as_str).collect();
    let is_bin = |p: &str| p == "src/main.rs" || under(p.trim_end_matches(".rs"), &bin_mods);
    let (bin, lib): (Vec<_>, Vec<_>) = files.into_iter().partition(|(p, _)| is_bin(p));
    for (name, files) in [("library", lib), ("binary", bin)] {
        let graph = import_graph(&files);
        assert!(graph.len() > 3, "{name}: too few modules found");
        if let Some(c) = find_cycle(&graph) {
            panic!("{name}: import cycle {}", c.join(" -> "));
        }
    }
}

#[test]
fn the_import_graph_sees_use_trees_and_finds_cycles() {
    let files = vec![
        (
            "src/x/a.rs".to_string(),
            "use super::{b::{self, B}, c::C};\nuse crate::d;\nfn f() { crate::x::c::g() }\n\
             #[cfg(test)]\nuse super::e::E;"
                .to_string(),
        ),
        ("src/x/b.rs".to_string(), "use super::Shared;".to_string()),
        (
            "src/x/c.rs".to_string(),
            "// use super::a;\nfn g() { super::super::d::h() }".to_string(),
        ),
        ("src/x/mod.rs".to_string(), "pub struct Shared;".to_string()),
        ("src/x/e.rs".to_string(), String::new()),
        ("src/d.rs".to_string(), String::new()),
    ];
    let g = import_graph(&files);
    let names = |m: &str| -> Vec<String> {
        let k: Vec<String> = m.split("::").map(str::to_string).collect();
        g[&k].iter().map(|t| t.join("::")).collect()
    };
    assert_eq!(names("x::a"), ["d", "x::b", "x::c"]);
    assert!(
        names("x::b").is_empty(),
        "a child's use of its parent is no edge"
    );
    assert_eq!(names("x::c"), ["d"]);
    assert_eq!(find_cycle(&g), None);
    let mut files = files;
    files[2].1.push_str("\nuse super::a::A;");
    let c = find_cycle(&import_graph(&files)).expect("a cycle");
    assert_eq!(c.first(), c.last());
    assert!(c.contains(&"x::a".to_string()) && c.contains(&"x::c".to_string()));
}

/// Where text may be printed directly: the binary (its verbs print their results) and the
/// progress module (bars and progress lines). Everything else reports through `tracing`
/// events, which the binary renders (ARCHITECTURE.md, invariants).
const PRINTING_ALLOWED: &[&str] = &["src/main.rs", "src/cli.rs", "src/cmd", "src/progress.rs"];

#[test]
fn no_printing_in_the_library() {
    let needles = ["println!", "print!(", "eprint!", "dbg!(", "log::"];
    let mut bad = Vec::new();
    for (path, text) in rust_files("src") {
        if under(&path, PRINTING_ALLOWED) || path.ends_with("src/tidy.rs") {
            continue;
        }
        for (n, line) in code_lines(&text).iter().enumerate() {
            if line.trim_start().starts_with("#[cfg(test)]") {
                break;
            }
            let hit = needles.iter().any(|k| {
                line.match_indices(k).any(|(i, _)| {
                    // `log::` only as a path of its own (not `catalog::`).
                    !k.starts_with("log")
                        || !line[..i]
                            .chars()
                            .last()
                            .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':')
                })
            });
            if hit {
                bad.push(format!("{path}:{}: {}", n + 1, line.trim()));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "library code printing (use tracing events, or progress::note for progress lines):\n{}",
        bad.join("\n")
    );
}

#[test]
fn flock_only_in_the_lock_module() {
    let bad = offenders(
        &rust_files("src"),
        &["Flock::lock", "fcntl::flock", "libc::flock", "FlockArg::"],
        &["src/lock.rs"],
    );
    assert!(
        bad.is_empty(),
        "flock outside src/lock.rs (use lock::Lock or lock::RwLock):\n{}",
        bad.join("\n")
    );
}

/// Whether a string literal spells a temporary file name of its own, beside fsutil's scheme:
/// `.tmp…`, `….tmp`, `….new`, `….part`, `…~` (the store's `.partial` downloads are named by
/// `src/store.rs`).
fn own_temp_name(lit: &str) -> bool {
    let last = lit.rsplit('/').next().unwrap_or(lit);
    last.starts_with(".tmp")
        || last.starts_with("{}.tmp")
        || [".tmp", ".new", ".part", "~"]
            .iter()
            .any(|s| last.len() > s.len() && last.ends_with(s))
}

#[test]
fn temporary_names_from_one_scheme() {
    let mut bad = Vec::new();
    for (path, text) in rust_files("src") {
        if ["src/fsutil.rs", "src/store.rs"].contains(&path.as_str()) || path.ends_with("tidy.rs") {
            continue;
        }
        for (n, lit) in string_literals(&text) {
            if own_temp_name(&lit) {
                bad.push(format!("{path}:{n}: \"{lit}\""));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "temporary names outside fsutil's `.tmp-<purpose>-<pid>-<n>` scheme (gc would not know \
         them; use fsutil::temp_path):\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_temp_name_check_sees_other_schemes() {
    for lit in [
        ".tmp",
        "x/.tmp-a",
        "{name}.tmp",
        "Packages.new",
        "blob.part",
        "file~",
    ] {
        assert!(own_temp_name(lit), "{lit}");
    }
    for lit in ["~", "a.tmpl", "news", "Packages", "x.partial"] {
        assert!(!own_temp_name(lit), "{lit}");
    }
}
