//! Writing (and reading) a tree described by untrusted input beneath one directory without ever
//! leaving it: every path is resolved from a descriptor of that directory with no symlink
//! followed on the way or at the end (`openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`, or,
//! where the kernel lacks it, one `openat(O_NOFOLLOW)` per component). A bundle that carries a
//! symlink and entries "below" it therefore fails with ELOOP/ENOTDIR instead of writing where
//! the link points. Paths must be relative and normalized (no `.`, `..` or empty components).

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;

use crate::fsutil::{FsError, IoContext};

/// An open directory that relative paths are resolved beneath.
pub struct Beneath {
    dir: OwnedFd,
    path: PathBuf,
}

fn invalid(rel: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("path {rel:?} is not relative and normalized"),
    )
}

/// The components of a relative, normalized path.
fn components(rel: &str) -> io::Result<Vec<&str>> {
    let c: Vec<&str> = rel.split('/').collect();
    if rel.is_empty() || c.iter().any(|c| matches!(*c, "" | "." | "..")) || rel.contains('\0') {
        return Err(invalid(rel));
    }
    Ok(c)
}

impl Beneath {
    /// Open the directory `path` itself (which must not be a symlink).
    pub fn open(path: &Path) -> Result<Beneath, FsError> {
        let fd = nix::fcntl::open(
            path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(io::Error::from)
        .at("open directory", path)?;
        Ok(Beneath {
            dir: crate::sys::own_fd(fd),
            path: path.to_path_buf(),
        })
    }

    /// The path `rel` names, for messages.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.path.join(rel)
    }

    /// Open `rel` with `flags` (O_NOFOLLOW and O_CLOEXEC added), never through a symlink.
    fn open_at(&self, rel: &str, flags: OFlag, mode: Mode) -> io::Result<OwnedFd> {
        let comps = components(rel)?;
        let flags = flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let how = OpenHow::new()
            .flags(flags)
            .mode(mode)
            .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
        match nix::fcntl::openat2(self.dir.as_raw_fd(), rel, how) {
            Ok(fd) => Ok(crate::sys::own_fd(fd)),
            // No openat2 (Linux < 5.6, or a seccomp filter that refuses it).
            Err(Errno::ENOSYS) | Err(Errno::EPERM) => self.open_by_components(&comps, flags, mode),
            Err(e) => Err(e.into()),
        }
    }

    /// The fallback of `open_at`: one `openat(O_NOFOLLOW)` per component.
    fn open_by_components(&self, comps: &[&str], flags: OFlag, mode: Mode) -> io::Result<OwnedFd> {
        let (last, parents) = comps.split_last().expect("at least one component");
        let mut cur: Option<OwnedFd> = None;
        for c in parents {
            let at = cur.as_ref().unwrap_or(&self.dir).as_raw_fd();
            let fd = nix::fcntl::openat(
                Some(at),
                *c,
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )?;
            cur = Some(crate::sys::own_fd(fd));
        }
        let at = cur.as_ref().unwrap_or(&self.dir).as_raw_fd();
        let fd = nix::fcntl::openat(Some(at), *last, flags, mode)?;
        Ok(crate::sys::own_fd(fd))
    }

    /// The directory holding `rel` (this one for a single component) and `rel`'s last name.
    fn parent_of<'a>(&self, rel: &'a str) -> io::Result<(Option<OwnedFd>, &'a str)> {
        components(rel)?;
        match rel.rsplit_once('/') {
            None => Ok((None, rel)),
            Some((parent, name)) => Ok((
                Some(self.open_at(parent, OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty())?),
                name,
            )),
        }
    }

    /// Create the directory `rel` (mode `mode` before umask); an existing directory is fine, an
    /// existing anything else is an error.
    pub fn create_dir(&self, rel: &str, mode: u32) -> Result<(), FsError> {
        let p = self.path(rel);
        let (parent, name) = self.parent_of(rel).at("create directory", &p)?;
        let at = parent.as_ref().unwrap_or(&self.dir).as_raw_fd();
        match nix::sys::stat::mkdirat(Some(at), name, Mode::from_bits_truncate(mode)) {
            Ok(()) => Ok(()),
            Err(Errno::EEXIST) => self.open_dir(rel).map(drop),
            Err(e) => Err(io::Error::from(e)).at("create directory", &p),
        }
    }

    /// Create `rel` and every missing directory above it.
    pub fn create_dir_all(&self, rel: &str, mode: u32) -> Result<(), FsError> {
        let mut end = 0;
        while end < rel.len() {
            end = rel[end..].find('/').map(|i| end + i).unwrap_or(rel.len());
            self.create_dir(&rel[..end], mode)?;
            end += 1;
        }
        Ok(())
    }

    /// Create the new regular file `rel` for writing (it must not exist, not even as a link).
    pub fn create_file(&self, rel: &str, mode: u32) -> Result<File, FsError> {
        let fd = self
            .open_at(
                rel,
                OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL,
                Mode::from_bits_truncate(mode),
            )
            .at("create", &self.path(rel))?;
        Ok(File::from(fd))
    }

    /// Open the existing regular file `rel` for reading.
    pub fn open_file(&self, rel: &str) -> Result<File, FsError> {
        let fd = self
            .open_at(rel, OFlag::O_RDONLY, Mode::empty())
            .at("open", &self.path(rel))?;
        Ok(File::from(fd))
    }

    /// Open the directory `rel` (for its mode, times, fsync).
    pub fn open_dir(&self, rel: &str) -> Result<File, FsError> {
        let fd = self
            .open_at(rel, OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty())
            .at("open directory", &self.path(rel))?;
        Ok(File::from(fd))
    }

    /// Create the symlink `rel` with `target` (stored as given, never resolved here).
    pub fn symlink(&self, rel: &str, target: &str) -> Result<(), FsError> {
        let p = self.path(rel);
        let (parent, name) = self.parent_of(rel).at("create symlink", &p)?;
        let at = parent.as_ref().unwrap_or(&self.dir).as_raw_fd();
        nix::unistd::symlinkat(target, Some(at), name)
            .map_err(io::Error::from)
            .at("create symlink", &p)
    }

    /// Flush everything written on this directory's filesystem to disk (syncfs).
    pub fn sync_filesystem(&self) -> Result<(), FsError> {
        nix::unistd::syncfs(self.dir.as_raw_fd())
            .map_err(io::Error::from)
            .at("sync filesystem of", &self.path)
    }
}

/// Set the permission bits and the modification time of an open file or directory.
pub fn set_mode_mtime(f: &File, path: &Path, mode: u32, mtime: u64) -> Result<(), FsError> {
    use std::os::unix::fs::PermissionsExt;
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .at("set mode", path)?;
    let t = filetime::FileTime::from_unix_time(mtime as i64, 0);
    filetime::set_file_handle_times(f, None, Some(t)).at("set mtime", path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn nothing_is_written_through_a_link() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        let outside = t.path().join("outside");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("etc/abs")).unwrap();
        std::os::unix::fs::symlink("../../outside", root.join("etc/rel")).unwrap();
        std::os::unix::fs::symlink(outside.join("f"), root.join("etc/file")).unwrap();
        let b = Beneath::open(&root).unwrap();
        for rel in ["etc/abs/x", "etc/rel/x", "etc/file"] {
            assert!(b.create_file(rel, 0o644).is_err(), "{rel}");
            assert!(b.open_file(rel).is_err(), "{rel}");
        }
        assert!(b.create_dir("etc/abs/d", 0o755).is_err());
        assert!(b.create_dir_all("etc/rel/d/e", 0o755).is_err());
        assert!(b.symlink("etc/abs/l", "/").is_err());
        assert!(b.create_file("../outside/y", 0o644).is_err());
        assert!(b.create_file("/etc/x", 0o644).is_err());
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
        // The same through the per-component fallback.
        let comps = ["etc", "abs", "x"];
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW;
        assert!(b
            .open_by_components(&comps, flags, Mode::from_bits_truncate(0o644))
            .is_err());
        assert!(b
            .open_by_components(&["etc", "file"], flags, Mode::from_bits_truncate(0o644))
            .is_err());
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
        // Ordinary paths work.
        b.create_dir_all("etc/portage/package.use", 0o755).unwrap();
        let mut f = b.create_file("etc/portage/package.use/x", 0o644).unwrap();
        f.write_all(b"a/b c\n").unwrap();
        let f = b
            .open_by_components(
                &["etc", "portage", "package.use", "y"],
                flags,
                Mode::from_bits_truncate(0o644),
            )
            .unwrap();
        drop(f);
        assert!(root.join("etc/portage/package.use/y").is_file());
        assert_eq!(
            std::fs::read(root.join("etc/portage/package.use/x")).unwrap(),
            b"a/b c\n"
        );
    }
}
