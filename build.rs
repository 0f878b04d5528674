//! Embeds the built-in configuration layers (`overlays/<machine>/`) and the bootstrap recipe
//! (`stage3/bootstrap.recipe`) into the binary, so an installed gbuild needs no checkout.

use std::fmt::Write;
use std::path::Path;

fn walk(dir: &Path, base: &Path, out: &mut Vec<(String, String, bool)>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = rd.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let p = e.path();
        let rel = p.strip_prefix(base).unwrap().to_string_lossy().into_owned();
        let md = std::fs::symlink_metadata(&p).unwrap();
        if md.file_type().is_symlink() {
            let target = std::fs::read_link(&p).unwrap();
            out.push((rel, target.to_string_lossy().into_owned(), true));
        } else if md.is_dir() {
            walk(&p, base, out);
        } else {
            out.push((rel, p.canonicalize().unwrap().display().to_string(), false));
        }
    }
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let overlays = root.join("overlays");
    println!("cargo:rerun-if-changed=overlays");
    println!("cargo:rerun-if-changed=stage3/bootstrap.recipe");
    let mut files = Vec::new();
    walk(&overlays, &overlays, &mut files);
    // Only `overlays/<machine>/...` are configurations; files at the top document them.
    files.retain(|(rel, _, _)| rel.contains('/'));
    let mut code = String::from(
        "/// (path below overlays/, content or symlink target, is_symlink)\n\
         pub static OVERLAY_FILES: &[(&str, &[u8], bool)] = &[\n",
    );
    for (rel, src, link) in &files {
        if *link {
            writeln!(code, "    ({rel:?}, {:?}.as_bytes(), true),", src).unwrap();
        } else {
            writeln!(code, "    ({rel:?}, include_bytes!({src:?}), false),").unwrap();
        }
    }
    code.push_str("];\n");
    let recipe = root.join("stage3/bootstrap.recipe");
    if recipe.exists() {
        writeln!(
            code,
            "pub static BOOTSTRAP_RECIPE: &str = include_str!({:?});",
            recipe.display().to_string()
        )
        .unwrap();
    } else {
        code.push_str("pub static BOOTSTRAP_RECIPE: &str = \"\";\n");
    }
    let out = Path::new(&std::env::var("OUT_DIR").unwrap()).join("embedded.rs");
    std::fs::write(out, code).unwrap();
}
