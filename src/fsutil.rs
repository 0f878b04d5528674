//! Crash-safe file writes: every file the store promotes is written under a temporary name in the
//! same directory, fsynced, renamed into place, and the directory fsynced. A crash at any point
//! leaves either the old file or the new one, never a torn one.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Error of a filesystem step, naming the path it concerns.
#[derive(Debug, thiserror::Error)]
#[error("{op} {path}: {source}")]
pub struct FsError {
    pub op: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

impl FsError {
    pub fn new(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        FsError {
            op,
            path: path.into(),
            source,
        }
    }
}

/// Adds the path to an `io::Result`.
pub trait IoContext<T> {
    fn at(self, op: &'static str, path: &Path) -> Result<T, FsError>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, op: &'static str, path: &Path) -> Result<T, FsError> {
        self.map_err(|e| FsError::new(op, path, e))
    }
}

/// What identifies one version of a file without reading it: the same inode of the same file
/// system, with the same size and modification time (to the nanosecond). A file written in place
/// changes its mtime; a file replaced, copied back or restored from a backup is another inode,
/// even when its size and mtime in seconds are the same (two builds of one package in the same
/// second, padded to the same tar record count, are exactly that).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct FileStamp {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime: i64,
    pub mtime_nsec: i64,
}

impl FileStamp {
    /// The stamp of the file at `path` (symlinks followed).
    pub fn of(path: &Path) -> Result<FileStamp, FsError> {
        fs::metadata(path)
            .map(|md| FileStamp::from_metadata(&md))
            .at("stat", path)
    }

    pub fn from_metadata(md: &fs::Metadata) -> FileStamp {
        use std::os::unix::fs::MetadataExt;
        FileStamp {
            dev: md.dev(),
            ino: md.ino(),
            size: md.len(),
            mtime: md.mtime(),
            mtime_nsec: md.mtime_nsec(),
        }
    }
}

/// A JSON file of the store that exists but cannot be read or parsed, naming the path.
#[derive(Debug, thiserror::Error)]
pub enum JsonFileError {
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error("invalid {}: {source}", path.display())]
    Invalid {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// Read the JSON file at `path` with its one schema: `None` when there is no such file, an error
/// naming the path when it is unreadable or does not parse (never silently a default).
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, JsonFileError> {
    match fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|source| JsonFileError::Invalid {
                path: path.to_path_buf(),
                source,
            }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(FsError::new("read", path, e).into()),
    }
}

/// Write `value` as pretty JSON to `path` atomically.
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<(), FsError> {
    atomic_write(
        path,
        &serde_json::to_vec_pretty(value).expect("json of a plain struct"),
    )
}

/// fsync a directory so that a rename inside it is durable.
pub fn fsync_dir(dir: &Path) -> Result<(), FsError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .at("fsync directory", dir)
}

/// The directory that names `path`: its parent, `.` for a relative name without one.
fn dir_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// The one scheme of temporary names in the store: `.tmp-<purpose>-<pid>-<n>`, where `pid` is the
/// process that made it and `n` counts within that process. A dot name is never one the store
/// lists, and `gc` (and the next holder of a machine's lock) recognises a leftover by the scheme
/// and removes it once its process is gone.
pub const TEMP_MARK: &str = ".tmp-";

/// A fresh temporary name for `purpose` (a word or a file name; may contain `-` and `.`).
pub fn temp_name(purpose: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("{TEMP_MARK}{purpose}-{}-{n}", std::process::id())
}

/// A fresh temporary path for `purpose` in `dir`.
pub fn temp_path(dir: &Path, purpose: &str) -> PathBuf {
    dir.join(temp_name(purpose))
}

/// A temporary name beside `path` (same directory, so a rename into place is atomic).
pub fn temp_sibling(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(temp_name(&name))
}

/// The purpose and owning pid of a name made by [`temp_name`], or `None` for any other name.
pub fn parse_temp_name(name: &str) -> Option<(&str, u32)> {
    let rest = name.strip_prefix(TEMP_MARK)?;
    let mut parts = rest.rsplitn(3, '-');
    let n = parts.next()?;
    let pid = parts.next()?;
    let purpose = parts.next()?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) || purpose.is_empty() {
        return None;
    }
    Some((purpose, pid.parse().ok()?))
}

/// Whether a process with this pid exists (in our pid namespace).
pub fn process_alive(pid: u32) -> bool {
    pid != 0 && Path::new("/proc").join(pid.to_string()).exists()
}

/// The temporary entries of `dir` (of `purpose`, when given) whose owning process is gone: what
/// a crash left behind. A missing directory has none.
pub fn stale_temps(dir: &Path, purpose: Option<&str>) -> Result<Vec<PathBuf>, FsError> {
    let mut out = Vec::new();
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(FsError::new("read directory", dir, e)),
    };
    for e in rd {
        let e = e.at("read directory", dir)?;
        let name = e.file_name();
        let Some((p, pid)) =
            parse_temp_name(&name.to_string_lossy()).map(|(p, pid)| (p.to_string(), pid))
        else {
            continue;
        };
        if purpose.is_none_or(|want| want == p) && !process_alive(pid) {
            out.push(e.path());
        }
    }
    out.sort();
    Ok(out)
}

/// Write `data` to `path` atomically (temp + fsync + rename + fsync of the directory).
pub fn atomic_write(path: &Path, data: &[u8]) -> Result<(), FsError> {
    let mut f = AtomicFile::create(path)?;
    f.write_all(data).at("write", &f.tmp)?;
    f.commit()
}

/// A file being written under a temporary name; `commit` renames it into place. Dropped without
/// commit, the temporary file is removed.
pub struct AtomicFile {
    file: Option<File>,
    tmp: PathBuf,
    dest: PathBuf,
}

impl AtomicFile {
    pub fn create(dest: &Path) -> Result<Self, FsError> {
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).at("create directory", parent)?;
        }
        let tmp = temp_sibling(dest);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .at("create", &tmp)?;
        Ok(AtomicFile {
            file: Some(file),
            tmp,
            dest: dest.to_path_buf(),
        })
    }

    pub fn tmp_path(&self) -> &Path {
        &self.tmp
    }

    pub fn file(&mut self) -> &mut File {
        self.file.as_mut().expect("file open until commit")
    }

    /// fsync, rename into place, fsync the directory.
    pub fn commit(mut self) -> Result<(), FsError> {
        let file = self.file.take().expect("file open until commit");
        file.sync_all().at("fsync", &self.tmp)?;
        drop(file);
        fs::rename(&self.tmp, &self.dest).at("rename into place", &self.dest)?;
        fsync_dir(dir_of(&self.dest))?;
        Ok(())
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file().write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file().flush()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.file.is_some() {
            // An abandoned temporary file: a leftover has a temporary name that gc removes.
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Remove the file at `path`; one that is not there is fine, any other failure an error naming it.
pub fn remove_file_if_exists(path: &Path) -> Result<(), FsError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(FsError::new("remove", path, e)),
        _ => Ok(()),
    }
}

/// Rename a completed directory into place atomically and make the rename durable.
pub fn rename_dir_into_place(tmp: &Path, dest: &Path) -> Result<(), FsError> {
    fs::rename(tmp, dest).at("rename into place", dest)?;
    fsync_dir(dir_of(dest))?;
    Ok(())
}

/// Remove a directory tree, including directories without write or search permission (overlay's
/// `work/work` has mode 000). Inside the user namespace this also removes files owned by
/// subordinate ids. A missing path is not an error. The one way a tree is removed in-process.
pub fn remove_tree(path: &Path) -> Result<(), FsError> {
    let md = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(FsError::new("stat", path, e)),
    };
    if !md.is_dir() {
        std::fs::remove_file(path).at("remove", path)?;
        return Ok(());
    }
    if std::fs::remove_dir_all(path).is_ok() {
        return Ok(());
    }
    open_up(path)?;
    std::fs::remove_dir_all(path).at("remove", path)?;
    Ok(())
}

/// `remove_tree` where a failure cannot be handled (cleanup on an error path or in a `Drop`):
/// the failure is a warning naming the path; what is left has a temporary name or lives under a
/// state directory that the next run or `gc` cleans.
pub fn remove_tree_or_warn(path: &Path) {
    if let Err(e) = remove_tree(path) {
        tracing::warn!("{e}");
    }
}

/// chmod u+rwx every directory under `dir` (depth first), so its content can be removed.
fn open_up(dir: &Path) -> Result<(), FsError> {
    use std::os::unix::fs::PermissionsExt;
    let md = std::fs::symlink_metadata(dir).at("stat", dir)?;
    if md.permissions().mode() & 0o700 != 0o700 {
        let mode = md.permissions().mode() | 0o700;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).at("chmod", dir)?;
    }
    for ent in std::fs::read_dir(dir).at("read directory", dir)? {
        let ent = ent.at("read directory", dir)?;
        if ent.file_type().at("stat", &ent.path())?.is_dir() {
            open_up(&ent.path())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.json");
        atomic_write(&p, b"one").unwrap();
        atomic_write(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn temp_names_parse_back() {
        let n = temp_name("config-layer");
        assert_eq!(
            parse_temp_name(&n),
            Some(("config-layer", std::process::id()))
        );
        let s = temp_sibling(Path::new("/x/state.json"));
        let name = s.file_name().unwrap().to_str().unwrap();
        assert_eq!(parse_temp_name(name).unwrap().0, "state.json");
        for other in [
            "state.json",
            ".tmp-x",
            ".tmp-x-1",
            ".tmp--1-2",
            ".tmp-x-y-z",
            "tmp-a-1-2",
        ] {
            assert_eq!(parse_temp_name(other), None, "{other}");
        }
    }

    #[test]
    fn stale_temps_are_those_of_dead_processes() {
        let dir = tempfile::tempdir().unwrap();
        let mine = temp_path(dir.path(), "work");
        let dead = dir.path().join(".tmp-work-4194303-0");
        let other = dir.path().join(".tmp-other-4194303-0");
        for p in [&mine, &dead, &other] {
            fs::create_dir(p).unwrap();
        }
        fs::write(dir.path().join("state.json"), b"{}").unwrap();
        assert_eq!(
            stale_temps(dir.path(), Some("work")).unwrap(),
            vec![dead.clone()]
        );
        assert_eq!(stale_temps(dir.path(), None).unwrap(), vec![other, dead]);
    }

    #[test]
    fn dropped_atomic_file_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b");
        {
            let mut f = AtomicFile::create(&p).unwrap();
            f.write_all(b"partial").unwrap();
        }
        assert!(!p.exists());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
