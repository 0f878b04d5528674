//! The canonical layer tarball: one byte stream per directory content, so that a layer's id (the
//! sha256 of this stream) and its OCI blobs are the same on every machine and after every
//! restore. The format:
//!
//! - entries in depth-first order, a directory before its content, the names inside a directory
//!   sorted bytewise (the name as written in the tarball, so `.wh.x` sorts as such); the layer
//!   root itself is not an entry; directory names end in `/`, no `./` prefix;
//! - ustar headers with numeric owners (ids as seen inside the user namespace), no user or group
//!   names, mode bits `07777`, mtime in seconds; no atime or ctime;
//! - a PAX `x` header only when needed, records sorted by key: `path` / `linkpath` over 100
//!   bytes, `uid` / `gid` / `size` / `mtime` beyond the octal fields, `mtime=S.NNNNNNNNN` when
//!   the nanoseconds are not zero (mtimes are kept exactly: Portage records them), and
//!   `SCHILY.xattr.NAME` for `user.*`, `security.capability` and `system.posix_acl_*` xattrs
//!   (never `security.selinux`, `trusted.*` or overlayfs' own `*.overlay.*`);
//! - a file with several links is stored once, at its first name in this order; later names are
//!   hardlink entries pointing at it;
//! - overlayfs deletions (character device 0/0, or a file with an `overlay.whiteout` xattr)
//!   become `.wh.NAME`, and an opaque directory (`overlay.opaque=y`) is followed directly by
//!   `DIR/.wh..wh..opq`; these markers are empty regular files with mode 0, owner 0 and mtime 0,
//!   so they do not depend on how a whiteout was represented on disk;
//! - the archive ends with two zero blocks and no record padding.
//!
//! Sockets cannot be archived and are skipped.

use std::borrow::Cow;
use std::collections::HashMap;
use std::ffi::{CStr, CString, OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::dir::Dir;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{fstatat, FileStat, Mode, SFlag};

use super::{LayerError, Result};
use crate::progress::Progress;

const BLOCK: usize = 512;
/// Largest value of an 8-byte octal field (7 digits).
const MAX_OCT8: u64 = 0o7777777;
/// Largest value of a 12-byte octal field (11 digits).
const MAX_OCT12: u64 = 0o77777777777;

pub const WHITEOUT_PREFIX: &str = ".wh.";
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// What a pack wrote.
#[derive(Debug, Default, Clone, Copy)]
pub struct PackStats {
    /// Tar entries (PAX headers not counted).
    pub entries: u64,
    /// Bytes of regular-file content.
    pub content_bytes: u64,
    /// Sockets skipped.
    pub skipped: u64,
}

/// Where a pack writes. Besides `Write`, a sink that keeps a buffer of its own can lend the
/// free part of it (`spare`), so that a file's content is read straight into it instead of
/// being copied there through the packer's buffer: a layer's bytes are then copied once, by the
/// kernel, on their way to the hasher or the compressor.
pub trait PackSink: Write {
    /// Room for the next bytes of the stream, after making some (which may write); `None` when
    /// the sink has no buffer to lend.
    fn spare(&mut self) -> io::Result<Option<&mut [u8]>> {
        Ok(None)
    }
    /// The first `n` bytes of the last `spare` are now part of the stream (a buffer they fill
    /// is passed on at once, which may write).
    fn filled(&mut self, _n: usize) -> io::Result<()> {
        Ok(())
    }
}

impl PackSink for &mut dyn Write {}
impl PackSink for Vec<u8> {}

impl<S: PackSink + ?Sized> PackSink for &mut S {
    fn spare(&mut self) -> io::Result<Option<&mut [u8]>> {
        (**self).spare()
    }
    fn filled(&mut self, n: usize) -> io::Result<()> {
        (**self).filled(n)
    }
}

/// A buffered writer that lends its buffer to the packer (`std::io::BufWriter` does not): the
/// packer's many small headers and the files' content reach `inner` in pieces of `cap` bytes.
pub struct SinkBuf<W: Write> {
    inner: W,
    buf: Vec<u8>,
    len: usize,
}

impl<W: Write> SinkBuf<W> {
    pub fn new(cap: usize, inner: W) -> Self {
        SinkBuf {
            inner,
            buf: vec![0u8; cap],
            len: 0,
        }
    }

    fn drain(&mut self) -> io::Result<()> {
        if self.len > 0 {
            self.inner.write_all(&self.buf[..self.len])?;
            self.len = 0;
        }
        Ok(())
    }

    /// Write what is buffered and return the inner writer.
    pub fn into_inner(mut self) -> io::Result<W> {
        self.drain()?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for SinkBuf<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.len + data.len() > self.buf.len() {
            self.drain()?;
        }
        if data.len() >= self.buf.len() {
            return self.inner.write(data);
        }
        self.buf[self.len..self.len + data.len()].copy_from_slice(data);
        self.len += data.len();
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.drain()?;
        self.inner.flush()
    }
}

impl<W: Write> PackSink for SinkBuf<W> {
    fn spare(&mut self) -> io::Result<Option<&mut [u8]>> {
        // `write` fills the buffer to its end and drains it only when more comes.
        if self.len == self.buf.len() {
            self.drain()?;
        }
        Ok(Some(&mut self.buf[self.len..]))
    }
    fn filled(&mut self, n: usize) -> io::Result<()> {
        self.len += n;
        Ok(())
    }
}

/// Write the canonical tarball of the directory tree `root` to `out`.
pub fn pack_dir<W: PackSink>(
    root: &Path,
    out: W,
    progress: Option<&Progress>,
) -> Result<PackStats> {
    let mut p = Packer {
        out,
        stats: PackStats::default(),
        links: HashMap::new(),
        buf: Vec::new(),
        progress,
        root: root.to_path_buf(),
    };
    let dir = Packer::<W>::open_root(root)?;
    p.walk(dir, root)?;
    p.out.write_all(&[0u8; BLOCK * 2]).map_err(|e| p.werr(e))?;
    p.out.flush().map_err(|e| p.werr(e))?;
    Ok(p.stats)
}

struct Packer<'a, W> {
    out: W,
    stats: PackStats,
    /// (dev, ino) of multiply-linked files -> first tar name.
    links: HashMap<(u64, u64), Vec<u8>>,
    buf: Vec<u8>,
    progress: Option<&'a Progress>,
    root: PathBuf,
}

/// One tar entry's metadata.
#[derive(Debug, Default, Clone)]
pub struct Meta {
    pub kind: u8,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub size: u64,
    pub mtime: i64,
    pub mtime_nsec: u32,
    pub link: Vec<u8>,
    pub devmajor: u32,
    pub devminor: u32,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Meta {
    /// The fixed header of a whiteout or opaque marker.
    pub fn marker() -> Meta {
        Meta {
            kind: b'0',
            ..Meta::default()
        }
    }
}

fn is_overlay_xattr(name: &[u8]) -> bool {
    name.starts_with(b"user.overlay.") || name.starts_with(b"trusted.overlay.")
}

/// Whether an xattr is layer content (kept in the tarball and restored).
pub fn keep_xattr(name: &[u8]) -> bool {
    !is_overlay_xattr(name)
        && (name.starts_with(b"user.")
            || name == b"security.capability"
            || name == b"system.posix_acl_access"
            || name == b"system.posix_acl_default")
}

/// A directory entry as the walk sees it: the name in the tarball, the name on disk, its
/// status, and, for an empty regular file (whose xattrs tell whether it is a whiteout), the
/// xattrs already read.
struct Item {
    tar_name: Vec<u8>,
    name: CString,
    st: FileStat,
    whiteout: bool,
    xattrs: Option<Xattrs>,
}

/// A directory being visited: its entries not yet emitted, in tarball order, its descriptor
/// (none past `FD_DEPTH`), its path (for messages, and to reach its entries without the
/// descriptor) and its tar name prefix.
struct Level {
    items: std::vec::IntoIter<Item>,
    dir: Option<Dir>,
    path: PathBuf,
    prefix: Vec<u8>,
}

/// Kept xattrs (name, value), sorted by name.
type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

fn file_type(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
}

/// Directory levels whose descriptors the walk keeps open while it visits their content; below
/// them a directory's descriptor is closed once its entries are read and its content is reached
/// by path, so a tree deeper than the descriptors a process may hold still packs (as far as
/// paths go).
const FD_DEPTH: usize = 256;

/// How `name` in the directory at `dir_path` is reached: from the directory's descriptor, or,
/// without one (past `FD_DEPTH`), as a path.
fn at<'n>(
    dir: Option<RawFd>,
    dir_path: &Path,
    name: &'n CStr,
) -> io::Result<(RawFd, Cow<'n, CStr>)> {
    match dir {
        Some(fd) => Ok((fd, Cow::Borrowed(name))),
        None => {
            let path = dir_path.join(OsStr::from_bytes(name.to_bytes()));
            let c = CString::new(path.into_os_string().into_vec())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            Ok((libc::AT_FDCWD, Cow::Owned(c)))
        }
    }
}

/// `O_NOFOLLOW` on every open: a layer's symlinks are entries, never followed.
fn open_at(dir: RawFd, name: &CStr, flags: OFlag) -> io::Result<File> {
    let fd = nix::fcntl::openat(
        Some(dir),
        name,
        flags | OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NOCTTY,
        Mode::empty(),
    )?;
    Ok(File::from(crate::sys::own_fd(fd)))
}

/// The xattr names that mark an overlayfs whiteout or opaque directory (`key`), in the order
/// they are looked up.
fn overlay_names(key: &str) -> [String; 2] {
    [
        format!("user.overlay.{key}"),
        format!("trusted.overlay.{key}"),
    ]
}

impl<W: PackSink> Packer<'_, W> {
    fn werr(&self, e: io::Error) -> LayerError {
        LayerError::Pack {
            path: self.root.clone(),
            reason: format!("write tarball: {e}"),
        }
    }

    fn perr(path: &Path, what: &str, e: impl std::fmt::Display) -> LayerError {
        LayerError::Pack {
            path: path.to_path_buf(),
            reason: format!("{what}: {e}"),
        }
    }

    fn open_root(root: &Path) -> Result<File> {
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY)
            .open(root)
            .map_err(|e| Self::perr(root, "open directory", e))
    }

    /// Emit the content of the tree whose root directory is open as `root` (at `root_path`).
    /// Directories are visited with a stack of levels on the heap, not by recursion, so that no
    /// tree is too deep for the thread's stack.
    fn walk(&mut self, root: File, root_path: &Path) -> Result<()> {
        let mut stack = vec![Self::level(root, root_path.to_path_buf(), Vec::new(), 0)?];
        while let Some(top) = stack.last_mut() {
            let Some(item) = top.items.next() else {
                stack.pop();
                continue;
            };
            let full: Vec<u8> = [&top.prefix[..], &item.tar_name].concat();
            if item.whiteout {
                self.entry(&full, &Meta::marker())?;
                continue;
            }
            if file_type(&item.st) == SFlag::S_IFSOCK {
                self.stats.skipped += 1;
                continue;
            }
            let fd = top.dir.as_ref().map(|d| d.as_raw_fd());
            if let Some((dir, path, prefix)) = self.node(fd, &top.path, item, full)? {
                let depth = stack.len();
                stack.push(Self::level(dir, path, prefix, depth)?);
            }
        }
        Ok(())
    }

    /// Read the entries of the directory open as `dir` (at `path`, for messages), `depth`
    /// levels below the root, whose tar name prefix is `prefix` ("" or "a/b/"), in tarball
    /// order. Every name is resolved from the directory's descriptor, as tar does, so no path is
    /// walked from the root again (down to `FD_DEPTH`).
    fn level(dir: File, path: PathBuf, prefix: Vec<u8>, depth: usize) -> Result<Level> {
        let mut dir = Dir::from(dir).map_err(|e| Self::perr(&path, "read directory", e))?;
        let fd = dir.as_raw_fd();
        let mut items: Vec<Item> = Vec::new();
        for ent in dir.iter() {
            let ent = ent.map_err(|e| Self::perr(&path, "read directory", e))?;
            let name = ent.file_name();
            if matches!(name.to_bytes(), b"." | b"..") {
                continue;
            }
            let child = || path.join(OsStr::from_bytes(name.to_bytes()));
            let st = fstatat(Some(fd), name, AtFlags::AT_SYMLINK_NOFOLLOW)
                .map_err(|e| Self::perr(&child(), "stat", e))?;
            let bytes = name.to_bytes();
            if bytes.starts_with(WHITEOUT_PREFIX.as_bytes()) {
                return Err(Self::perr(
                    &child(),
                    "name",
                    "names starting with .wh. are reserved for OCI whiteouts",
                ));
            }
            let ft = file_type(&st);
            let mut whiteout = ft == SFlag::S_IFCHR && st.st_rdev == 0;
            let mut xattrs = None;
            if ft == SFlag::S_IFREG && st.st_size == 0 {
                let f = open_at(fd, name, OFlag::empty())
                    .map_err(|e| Self::perr(&child(), "open", e))?;
                let (x, overlay) = Self::xattrs_of(&f, &child(), "whiteout")?;
                whiteout = overlay.is_some();
                xattrs = Some(x);
            }
            let tar_name = if whiteout {
                [WHITEOUT_PREFIX.as_bytes(), bytes].concat()
            } else {
                bytes.to_vec()
            };
            items.push(Item {
                tar_name,
                name: name.to_owned(),
                st,
                whiteout,
                xattrs,
            });
        }
        items.sort_by(|a, b| a.tar_name.cmp(&b.tar_name));
        Ok(Level {
            items: items.into_iter(),
            dir: (depth < FD_DEPTH).then_some(dir),
            path,
            prefix,
        })
    }

    /// Emit one entry of the directory `dir` (its descriptor, `None` past `FD_DEPTH`) at
    /// `dir_path`, named `name` in the tarball. A directory is returned, open, with its path and
    /// tar name prefix, for its content to be visited next.
    fn node(
        &mut self,
        dir: Option<RawFd>,
        dir_path: &Path,
        item: Item,
        mut name: Vec<u8>,
    ) -> Result<Option<(File, PathBuf, Vec<u8>)>> {
        let st = &item.st;
        let ft = file_type(st);
        let path = || dir_path.join(OsStr::from_bytes(item.name.to_bytes()));
        let mut m = Meta {
            mode: st.st_mode & 0o7777,
            uid: st.st_uid as u64,
            gid: st.st_gid as u64,
            mtime: st.st_mtime,
            mtime_nsec: st.st_mtime_nsec as u32,
            ..Meta::default()
        };
        if ft != SFlag::S_IFDIR && st.st_nlink > 1 {
            let key = (st.st_dev, st.st_ino);
            if let Some(first) = self.links.get(&key) {
                m.kind = b'1';
                m.link = first.clone();
                return self.entry(&name, &m).map(|()| None);
            }
            self.links.insert(key, name.clone());
        }
        match ft {
            SFlag::S_IFDIR => {
                let f = at(dir, dir_path, &item.name)
                    .and_then(|(d, n)| open_at(d, &n, OFlag::O_DIRECTORY))
                    .map_err(|e| Self::perr(&path(), "open directory", e))?;
                let (x, opaque) = Self::xattrs_of(&f, &path(), "opaque")?;
                m.xattrs = x;
                m.kind = b'5';
                name.push(b'/');
                self.entry(&name, &m)?;
                if opaque.as_deref() == Some(b"y") {
                    let marker = [&name[..], OPAQUE_MARKER.as_bytes()].concat();
                    self.entry(&marker, &Meta::marker())?;
                }
                return Ok(Some((f, path(), name)));
            }
            SFlag::S_IFREG => {
                m.kind = b'0';
                m.size = st.st_size as u64;
                if let Some(x) = item.xattrs {
                    // An empty file: its xattrs were read with the whiteout check.
                    m.xattrs = x;
                    self.entry(&name, &m)?;
                } else {
                    let mut f = at(dir, dir_path, &item.name)
                        .and_then(|(d, n)| open_at(d, &n, OFlag::empty()))
                        .map_err(|e| Self::perr(&path(), "open", e))?;
                    m.xattrs = Self::xattrs_of(&f, &path(), "whiteout")?.0;
                    self.entry(&name, &m)?;
                    self.content(&mut f, &path(), m.size)?;
                }
            }
            SFlag::S_IFLNK => {
                m.kind = b'2';
                m.link = at(dir, dir_path, &item.name)
                    .and_then(|(d, n)| Ok(nix::fcntl::readlinkat(Some(d), n.as_ref())?))
                    .map_err(|e| Self::perr(&path(), "read link", e))?
                    .into_vec();
                self.entry(&name, &m)?;
            }
            _ => {
                // Fifos and device nodes cannot be opened without side effects: their xattrs
                // are read by path.
                m.xattrs = Self::xattrs_at(&path())?;
                if ft == SFlag::S_IFIFO {
                    m.kind = b'6';
                } else {
                    m.kind = if ft == SFlag::S_IFCHR { b'3' } else { b'4' };
                    m.devmajor = nix::sys::stat::major(st.st_rdev) as u32;
                    m.devminor = nix::sys::stat::minor(st.st_rdev) as u32;
                }
                self.entry(&name, &m)?;
            }
        }
        Ok(None)
    }

    /// The kept xattrs of the open file `f`, sorted, and the value of its overlayfs xattr `key`
    /// (`user.` before `trusted.`) when it has one.
    #[allow(clippy::type_complexity)]
    fn xattrs_of(f: &File, path: &Path, key: &str) -> Result<(Xattrs, Option<Vec<u8>>)> {
        use xattr::FileExt;
        let names: Vec<OsString> = match f.list_xattr() {
            Ok(n) => n.collect(),
            Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok((Vec::new(), None)),
            Err(e) => return Err(Self::perr(path, "list xattrs", e)),
        };
        let mut overlay = None;
        for want in overlay_names(key) {
            if names.iter().any(|n| n.as_bytes() == want.as_bytes()) {
                if let Some(v) = f
                    .get_xattr(&want)
                    .map_err(|e| Self::perr(path, "read xattr", e))?
                {
                    overlay = Some(v);
                    break;
                }
            }
        }
        let kept = Self::kept(names, |n| f.get_xattr(n), path)?;
        Ok((kept, overlay))
    }

    /// The kept xattrs of the node at `path` (not followed), sorted.
    fn xattrs_at(path: &Path) -> Result<Xattrs> {
        let names = match xattr::list(path) {
            Ok(n) => n,
            Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(Self::perr(path, "list xattrs", e)),
        };
        Self::kept(names, |n| xattr::get(path, n), path)
    }

    /// The values of the kept xattrs among `names`, read with `get`, sorted by name.
    fn kept(
        names: impl IntoIterator<Item = OsString>,
        get: impl Fn(&OsStr) -> io::Result<Option<Vec<u8>>>,
        path: &Path,
    ) -> Result<Xattrs> {
        let mut out = Vec::new();
        for n in names {
            if !keep_xattr(n.as_bytes()) {
                continue;
            }
            if let Some(v) = get(&n).map_err(|e| Self::perr(path, "read xattr", e))? {
                out.push((n.into_vec(), v));
            }
        }
        out.sort();
        Ok(out)
    }

    fn content(&mut self, f: &mut File, path: &Path, size: u64) -> Result<()> {
        let mut left = size;
        let werr = |e: io::Error| LayerError::Pack {
            path: path.to_path_buf(),
            reason: format!("write tarball: {e}"),
        };
        while left > 0 {
            let n = match self.out.spare().map_err(werr)? {
                Some(room) => {
                    let want = left.min(room.len() as u64) as usize;
                    let n = f
                        .read(&mut room[..want])
                        .map_err(|e| Self::perr(path, "read", e))?;
                    self.out.filled(n).map_err(werr)?;
                    n
                }
                None => {
                    if self.buf.is_empty() {
                        self.buf = vec![0u8; 256 * 1024];
                    }
                    let want = left.min(self.buf.len() as u64) as usize;
                    let n = f
                        .read(&mut self.buf[..want])
                        .map_err(|e| Self::perr(path, "read", e))?;
                    self.out.write_all(&self.buf[..n]).map_err(werr)?;
                    n
                }
            };
            if n == 0 {
                return Err(Self::perr(path, "read", "file shrank while being packed"));
            }
            left -= n as u64;
            if let Some(p) = self.progress {
                p.inc(n as u64);
            }
        }
        let pad = (BLOCK - (size as usize % BLOCK)) % BLOCK;
        self.out
            .write_all(&[0u8; BLOCK][..pad])
            .map_err(|e| self.werr(e))?;
        self.stats.content_bytes += size;
        Ok(())
    }

    fn entry(&mut self, name: &[u8], m: &Meta) -> Result<()> {
        let bytes = header_bytes(name, m);
        self.out.write_all(&bytes).map_err(|e| self.werr(e))?;
        self.stats.entries += 1;
        Ok(())
    }
}

/// The header block(s) of one entry: an optional PAX `x` header with its records, then the ustar
/// header. Exposed for tests and for the restore-side checks.
pub fn header_bytes(name: &[u8], m: &Meta) -> Vec<u8> {
    let mut pax: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    if name.len() > 100 {
        pax.push((b"path".to_vec(), name.to_vec()));
    }
    if m.link.len() > 100 {
        pax.push((b"linkpath".to_vec(), m.link.clone()));
    }
    if m.uid > MAX_OCT8 {
        pax.push((b"uid".to_vec(), m.uid.to_string().into_bytes()));
    }
    if m.gid > MAX_OCT8 {
        pax.push((b"gid".to_vec(), m.gid.to_string().into_bytes()));
    }
    if m.size > MAX_OCT12 {
        pax.push((b"size".to_vec(), m.size.to_string().into_bytes()));
    }
    if m.mtime_nsec != 0 || m.mtime < 0 || m.mtime as u64 > MAX_OCT12 {
        pax.push((
            b"mtime".to_vec(),
            format_mtime(m.mtime, m.mtime_nsec).into_bytes(),
        ));
    }
    for (k, v) in &m.xattrs {
        pax.push(([b"SCHILY.xattr.", &k[..]].concat(), v.clone()));
    }
    pax.sort();
    let mut out = Vec::with_capacity(BLOCK * 3);
    if !pax.is_empty() {
        let mut body = Vec::new();
        for (k, v) in &pax {
            body.extend_from_slice(&pax_record(k, v));
        }
        let xm = Meta {
            kind: b'x',
            mode: 0o644,
            size: body.len() as u64,
            ..Meta::default()
        };
        out.extend_from_slice(&ustar(b"././@PaxHeader", &xm));
        out.extend_from_slice(&body);
        out.resize(out.len().div_ceil(BLOCK) * BLOCK, 0);
    }
    out.extend_from_slice(&ustar(name, m));
    out
}

/// `"<len> key=value\n"` where len counts the whole record, its own digits included.
fn pax_record(k: &[u8], v: &[u8]) -> Vec<u8> {
    let rest = k.len() + v.len() + 3; // ' ', '=', '\n'
    let mut len = rest + 1;
    while len.to_string().len() + rest != len {
        len = len.to_string().len() + rest;
    }
    let mut r = format!("{len} ").into_bytes();
    r.extend_from_slice(k);
    r.push(b'=');
    r.extend_from_slice(v);
    r.push(b'\n');
    r
}

/// PAX decimal time: `S` or `S.NNNNNNNNN` (negative times count down from the epoch).
pub fn format_mtime(sec: i64, nsec: u32) -> String {
    if nsec == 0 {
        return sec.to_string();
    }
    if sec >= 0 {
        format!("{sec}.{nsec:09}")
    } else {
        format!("-{}.{:09}", -(sec + 1), 1_000_000_000 - nsec)
    }
}

/// Inverse of [`format_mtime`] (also accepts fewer or more fraction digits).
pub fn parse_mtime(s: &str) -> Option<(i64, u32)> {
    let (neg, body) = match s.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, s),
    };
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    let int: i64 = int.parse().ok()?;
    let mut digits: String = frac.chars().take(9).collect();
    if !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    while digits.len() < 9 {
        digits.push('0');
    }
    let nsec: u32 = digits.parse().ok()?;
    if !neg {
        Some((int, nsec))
    } else if nsec == 0 {
        Some((-int, 0))
    } else {
        Some((-int - 1, 1_000_000_000 - nsec))
    }
}

fn octal(field: &mut [u8], v: u64) {
    let digits = field.len() - 1;
    let s = format!("{:0width$o}", v, width = digits);
    let s = if s.len() > digits {
        &s[s.len() - digits..]
    } else {
        &s[..]
    };
    field[..digits].copy_from_slice(s.as_bytes());
    field[digits] = 0;
}

fn ustar(name: &[u8], m: &Meta) -> [u8; BLOCK] {
    let mut h = [0u8; BLOCK];
    let n = name.len().min(100);
    h[..n].copy_from_slice(&name[..n]);
    octal(&mut h[100..108], m.mode as u64);
    octal(&mut h[108..116], m.uid.min(MAX_OCT8));
    octal(&mut h[116..124], m.gid.min(MAX_OCT8));
    let size = if matches!(m.kind, b'0' | b'x') {
        m.size
    } else {
        0
    };
    octal(&mut h[124..136], size.min(MAX_OCT12));
    octal(&mut h[136..148], (m.mtime.max(0) as u64).min(MAX_OCT12));
    h[156] = m.kind;
    let l = m.link.len().min(100);
    h[157..157 + l].copy_from_slice(&m.link[..l]);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    if matches!(m.kind, b'3' | b'4') {
        octal(&mut h[329..337], m.devmajor as u64);
        octal(&mut h[337..345], m.devminor as u64);
    }
    h[148..156].fill(b' ');
    let sum: u64 = h.iter().map(|&b| b as u64).sum();
    octal(&mut h[148..155], sum);
    h[155] = b' ';
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn names_of(tar: &[u8]) -> Vec<String> {
        let mut a = tar::Archive::new(tar);
        a.entries()
            .unwrap()
            .map(|e| String::from_utf8_lossy(&e.unwrap().path_bytes()).into_owned())
            .collect()
    }

    #[test]
    fn order_is_depth_first_bytewise_and_deterministic() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        for dir in ["b", "a", "a/z", "a.b", "B"] {
            std::fs::create_dir(r.join(dir)).unwrap();
        }
        for f in ["a/z/1", "a/y", "a.b/x", "c", "B/q"] {
            std::fs::write(r.join(f), f).unwrap();
        }
        std::fs::hard_link(r.join("c"), r.join("a/h")).unwrap();
        std::os::unix::fs::symlink("../c", r.join("b/s")).unwrap();
        let mut one = Vec::new();
        pack_dir(r, &mut one, None).unwrap();
        assert_eq!(
            names_of(&one),
            ["B/", "B/q", "a/", "a/h", "a/y", "a/z/", "a/z/1", "a.b/", "a.b/x", "b/", "b/s", "c"]
        );
        // a/h comes first in this order, so c is the hardlink entry.
        let mut a = tar::Archive::new(&one[..]);
        let c = a.entries().unwrap().map(|e| e.unwrap()).last().unwrap();
        assert_eq!(c.header().entry_type(), tar::EntryType::Link);
        assert_eq!(&*c.link_name_bytes().unwrap(), b"a/h");
        let mut two = Vec::new();
        pack_dir(r, &mut two, None).unwrap();
        assert_eq!(one, two);
        assert_eq!(one.len() % 512, 0);
    }

    #[test]
    fn xattr_whiteouts_and_empty_files_keep_their_xattrs() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::write(r.join("gone"), "").unwrap();
        std::fs::write(r.join("empty"), "").unwrap();
        std::fs::write(r.join("full"), "x").unwrap();
        if xattr::set(r.join("gone"), "user.overlay.whiteout", b"").is_err() {
            eprintln!("skipped: user xattrs not supported here");
            return;
        }
        xattr::set(r.join("empty"), "user.a", b"1").unwrap();
        xattr::set(r.join("full"), "user.b", b"2").unwrap();
        let mut out = Vec::new();
        pack_dir(r, &mut out, None).unwrap();
        assert_eq!(names_of(&out), [".wh.gone", "empty", "full"]);
        let mut a = tar::Archive::new(&out[..]);
        let mut seen = Vec::new();
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
            for x in e.pax_extensions().unwrap().into_iter().flatten() {
                let x = x.unwrap();
                if !x.key().unwrap().starts_with("SCHILY.xattr.") {
                    continue;
                }
                seen.push((
                    name.clone(),
                    x.key().unwrap().to_string(),
                    x.value_bytes().to_vec(),
                ));
            }
        }
        assert_eq!(
            seen,
            [
                ("empty".into(), "SCHILY.xattr.user.a".into(), b"1".to_vec()),
                ("full".into(), "SCHILY.xattr.user.b".into(), b"2".to_vec()),
            ]
        );
    }

    /// Records the most descriptors the process held while the pack wrote.
    struct FdCount {
        out: Vec<u8>,
        most: usize,
    }

    impl Write for FdCount {
        fn write(&mut self, data: &[u8]) -> io::Result<usize> {
            let open = std::fs::read_dir("/proc/self/fd")?.count();
            self.most = self.most.max(open);
            self.out.write(data)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl PackSink for FdCount {}

    #[test]
    fn a_tree_deeper_than_the_descriptor_budget_packs_by_path_below_it() {
        let d = tempfile::tempdir().unwrap();
        let levels = FD_DEPTH + 300;
        let mut deep = d.path().to_path_buf();
        let mut names = Vec::new();
        let mut prefix = String::new();
        for i in 0..levels {
            deep.push("d");
            std::fs::create_dir(&deep).unwrap();
            prefix.push_str("d/");
            names.push(prefix.clone());
            if i % 100 == 99 || i == levels - 1 {
                std::fs::write(deep.join("f"), format!("{i}")).unwrap();
                std::os::unix::fs::symlink("f", deep.join("l")).unwrap();
                std::fs::write(deep.join("z"), "").unwrap();
            }
        }
        let mut sink = FdCount {
            out: Vec::new(),
            most: 0,
        };
        pack_dir(d.path(), &mut sink, None).unwrap();
        assert!(
            sink.most < FD_DEPTH + 100,
            "{} descriptors open for {levels} levels",
            sink.most
        );
        let got = names_of(&sink.out);
        let dirs: Vec<&String> = got.iter().filter(|n| n.ends_with('/')).collect();
        assert_eq!(dirs.len(), levels);
        let mut a = tar::Archive::new(&sink.out[..]);
        let mut files = Vec::new();
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
            let depth = name.matches('/').count();
            match e.header().entry_type() {
                tar::EntryType::Regular if name.ends_with("/f") => {
                    let mut body = String::new();
                    e.read_to_string(&mut body).unwrap();
                    files.push((depth, body));
                }
                tar::EntryType::Symlink => {
                    assert_eq!(&*e.link_name_bytes().unwrap(), b"f", "{name}");
                }
                _ => {}
            }
        }
        // "d/" sorts before "f": the deepest file comes first.
        let want: Vec<(usize, String)> = (0..levels)
            .rev()
            .filter(|i| i % 100 == 99 || *i == levels - 1)
            .map(|i| (i + 1, i.to_string()))
            .collect();
        assert_eq!(files, want);
        assert_eq!(got.iter().filter(|n| n.ends_with("/z")).count(), want.len());
    }

    #[test]
    fn a_header_that_fills_the_lent_buffer_is_written_before_content() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("d/a");
        std::fs::create_dir(d.path().join("d")).unwrap();
        std::fs::write(&f, "content").unwrap();
        // Whole-second mtimes: one 512-byte header each, "d/" and "d/a" exactly the buffer.
        let t = filetime::FileTime::from_unix_time(1_000_000, 0);
        filetime::set_file_mtime(&f, t).unwrap();
        filetime::set_file_mtime(d.path().join("d"), t).unwrap();
        let mut plain = Vec::new();
        pack_dir(d.path(), &mut plain, None).unwrap();
        let mut lent = SinkBuf::new(2 * BLOCK, Vec::new());
        pack_dir(d.path(), &mut lent, None).unwrap();
        assert_eq!(lent.into_inner().unwrap(), plain);
    }

    #[test]
    fn lending_sinks_write_the_same_bytes() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir(r.join("d")).unwrap();
        // Sizes around the sink's capacity and the 512-byte blocks.
        for (i, n) in [0usize, 1, 511, 512, 999, 1000, 1001, 4096, 70_000]
            .iter()
            .enumerate()
        {
            let body: Vec<u8> = (0..*n).map(|k| (k * 7 + i) as u8).collect();
            std::fs::write(r.join(format!("d/f{i}")), body).unwrap();
        }
        let mut plain = Vec::new();
        pack_dir(r, &mut plain, None).unwrap();
        let mut lent = SinkBuf::new(1000, Vec::new());
        pack_dir(r, &mut lent, None).unwrap();
        assert_eq!(lent.into_inner().unwrap(), plain);
    }

    #[test]
    fn whiteouts_opaque_and_nanoseconds() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir(r.join("o")).unwrap();
        let opaque = xattr::set(r.join("o"), "user.overlay.opaque", b"y").is_ok();
        std::fs::write(r.join("o/k"), "k").unwrap();
        let wh = nix::sys::stat::mknod(
            &r.join("gone"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::empty(),
            0,
        )
        .is_ok();
        let f = r.join("f");
        std::fs::write(&f, "x").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o4755)).unwrap();
        filetime::set_file_mtime(&f, filetime::FileTime::from_unix_time(1_000_000, 5)).unwrap();
        let mut out = Vec::new();
        pack_dir(r, &mut out, None).unwrap();
        let names = names_of(&out);
        if wh {
            assert!(names.contains(&".wh.gone".to_string()), "{names:?}");
        }
        if opaque {
            let i = names.iter().position(|n| n == "o/").unwrap();
            assert_eq!(names[i + 1], "o/.wh..wh..opq");
        }
        let mut a = tar::Archive::new(&out[..]);
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            if &*e.path_bytes() == b"f" {
                assert_eq!(e.header().mode().unwrap(), 0o4755);
                let pax: Vec<_> = e
                    .pax_extensions()
                    .unwrap()
                    .unwrap()
                    .map(|p| p.unwrap().value().unwrap().to_string())
                    .collect();
                assert_eq!(pax, ["1000000.000000005"]);
            }
        }
    }

    #[test]
    fn long_names_and_times() {
        let long = "d".repeat(150);
        let h = header_bytes(long.as_bytes(), &Meta::marker());
        assert_eq!(h.len(), 3 * 512);
        let data = [h, vec![0u8; 1024]].concat();
        let mut a = tar::Archive::new(&data[..]);
        let e = a.entries().unwrap().next().unwrap().unwrap();
        assert_eq!(&*e.path_bytes(), long.as_bytes());
        for (s, n) in [
            (0i64, 0u32),
            (5, 1),
            (-2, 500_000_000),
            (-1, 0),
            (1_700_000_000, 999),
        ] {
            assert_eq!(parse_mtime(&format_mtime(s, n)), Some((s, n)));
        }
        assert_eq!(format_mtime(-2, 500_000_000), "-1.500000000");
        assert_eq!(pax_record(b"path", b"ab"), b"11 path=ab\n");
        assert_eq!(pax_record(&[b'k'; 3], &[b'v'; 91]).len(), 99);
        assert_eq!(pax_record(&[b'k'; 3], &[b'v'; 92]).len(), 101);
    }
}
