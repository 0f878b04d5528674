//! Where gbuild keeps everything: one directory (the store) whose layout is a contract
//! (docs/design.md). This module resolves it and names its parts; nothing else builds store
//! paths by hand.

use std::path::{Path, PathBuf};

use crate::fsutil::IoContext;

/// The store directory and its well-known parts.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no store directory: set --store, GBUILD_STORE, XDG_DATA_HOME or HOME")]
    NoHome,
    #[error(transparent)]
    Fs(#[from] crate::fsutil::FsError),
}

impl Store {
    /// Resolve the store: an explicit directory (from `--store` or `GBUILD_STORE`), else
    /// `$XDG_DATA_HOME/gbuild`, else `~/.local/share/gbuild`.
    pub fn resolve(explicit: Option<&Path>) -> Result<Store, StoreError> {
        if let Some(p) = explicit {
            return Ok(Store::at(p));
        }
        if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
            return Ok(Store::at(Path::new(&x).join("gbuild")));
        }
        match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
            Some(h) => Ok(Store::at(Path::new(&h).join(".local/share/gbuild"))),
            None => Err(StoreError::NoHome),
        }
    }

    pub fn at(root: impl Into<PathBuf>) -> Store {
        let root = root.into();
        let root = if root.is_relative() {
            std::env::current_dir()
                .map(|d| d.join(&root))
                .unwrap_or(root)
        } else {
            root
        };
        Store { root }
    }

    /// Create the store's directories (idempotent).
    pub fn init(&self) -> Result<(), StoreError> {
        for d in [
            self.root.clone(),
            self.downloads(),
            self.layers(),
            self.images(),
            self.repos(),
            self.machines(),
            self.distfiles(),
            self.exports(),
            self.tmp(),
        ] {
            std::fs::create_dir_all(&d).at("create directory", &d)?;
        }
        Ok(())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn config_file(&self) -> PathBuf {
        self.root.join("gbuild.toml")
    }
    /// Verified artifacts; in-flight files end in `.partial` and are never used.
    pub fn downloads(&self) -> PathBuf {
        self.root.join("downloads")
    }
    /// Unpacked layers, `layers/<sha256>/`, read-only once sealed; `<sha256>.json` beside each.
    pub fn layers(&self) -> PathBuf {
        self.root.join("layers")
    }
    pub fn images(&self) -> PathBuf {
        self.root.join("images")
    }
    /// Ebuild trees, plain directories (never on overlay), one per snapshot.
    pub fn repos(&self) -> PathBuf {
        self.root.join("repos")
    }
    /// Git-synced overlays checked out at a commit: `overlays/<name>/<commit>/`.
    pub fn overlay_checkout(&self, name: &str, commit: &str) -> PathBuf {
        self.root.join("overlays").join(name).join(commit)
    }
    pub fn machines(&self) -> PathBuf {
        self.root.join("machines")
    }
    pub fn machine(&self, name: &str) -> PathBuf {
        self.machines().join(name)
    }
    pub fn distfiles(&self) -> PathBuf {
        self.root.join("distfiles")
    }
    pub fn exports(&self) -> PathBuf {
        self.root.join("exports")
    }
    /// The binpkg signing keys (mode 0700; the secret key 0600): never bound into a container,
    /// never in a layer, an export or a served directory.
    pub fn keys(&self) -> PathBuf {
        self.root.join("keys")
    }
    /// Scratch space on the store's filesystem (so renames into place are atomic); anything in it
    /// may be deleted when no gbuild process runs.
    pub fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }
}

/// Validate a machine or image name: it becomes a directory name.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['.', '-'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_name("laptop-1"));
        assert!(!valid_name("../x"));
        assert!(!valid_name(".hidden"));
        assert!(!valid_name(""));
        assert!(!valid_name("a/b"));
    }

    #[test]
    fn explicit_store_wins() {
        let s = Store::resolve(Some(Path::new("/srv/gb"))).unwrap();
        assert_eq!(s.layers(), Path::new("/srv/gb/layers"));
    }
}
