//! The path policy for archive entries, kept apart so it can be tested on its own: an entry name
//! becomes a list of plain components below the layer root, or is refused. Refused: absolute
//! names, any `..` component, and (checked while unpacking, against what is already on disk) any
//! name whose parent directories pass through a symbolic link. tar never writes entries below a
//! symlink, so the last rule costs nothing on real archives and closes every symlink escape,
//! whether the link target is absolute or relative.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

/// Why an entry name is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathRefusal {
    Absolute,
    DotDot,
    Nul,
}

impl std::fmt::Display for PathRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PathRefusal::Absolute => "absolute path leaves the layer",
            PathRefusal::DotDot => "'..' component leaves the layer",
            PathRefusal::Nul => "NUL byte in name",
        })
    }
}

/// Split an entry name into its components below the root. `.` and empty components are dropped;
/// an empty result is the root itself.
pub fn components(name: &[u8]) -> Result<Vec<&OsStr>, PathRefusal> {
    if name.first() == Some(&b'/') {
        return Err(PathRefusal::Absolute);
    }
    if name.contains(&0) {
        return Err(PathRefusal::Nul);
    }
    let mut out = Vec::new();
    for c in name.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err(PathRefusal::DotDot),
            c => out.push(OsStr::from_bytes(c)),
        }
    }
    Ok(out)
}

/// Printable form of an entry name for error messages.
pub fn display(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(name: &str) -> Vec<String> {
        components(name.as_bytes())
            .unwrap()
            .iter()
            .map(|c| c.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn plain_names_split() {
        assert_eq!(ok("./usr/bin/ls"), ["usr", "bin", "ls"]);
        assert_eq!(ok("usr//lib/./x/"), ["usr", "lib", "x"]);
        assert!(ok("./").is_empty());
        assert_eq!(ok("a..b/..c"), ["a..b", "..c"]);
    }

    #[test]
    fn escapes_refused() {
        assert_eq!(components(b"/etc/passwd"), Err(PathRefusal::Absolute));
        assert_eq!(components(b"../x"), Err(PathRefusal::DotDot));
        assert_eq!(components(b"a/../../x"), Err(PathRefusal::DotDot));
        assert_eq!(components(b"a/.."), Err(PathRefusal::DotDot));
        assert_eq!(components(b"a\0b"), Err(PathRefusal::Nul));
    }
}
