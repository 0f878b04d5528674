//! URL space of the binhost and the file responses behind it.
//!
//! Paths are parsed by hand from the raw request target, never mapped onto the file system: a
//! request names a machine and then either one of a few fixed documents or a binpkg path that
//! must appear verbatim in the machine's published `Packages` index. The file finally opened is
//! canonicalized, must lie inside the machine's PKGDIR (a symlink pointing out is refused), and
//! is opened with `O_NOFOLLOW` and checked to be a regular file. There is no directory listing.
//! Binpkgs come from the generation's own hardlinks, so an older generation is served whole
//! whatever Portage pruned from PKGDIR since.
//!
//! ```text
//! /                                    status page (HTML)
//! /api/status                          the same as JSON
//! /<M>/...                             the generation served now (`publish rollback`)
//! /<M>@<tag>/...                       the generation tagged <tag> (`publish tag`), the same files
//! /<M>/Packages                        published index (text/plain)
//! /<M>/<PATH>                          a binpkg listed in it (application/x-tar)
//! /<M>/binrepos.conf, /<M>/repos.conf  for the host's /etc/portage
//! /<M>/key.asc                         the public keys the binpkgs are signed with
//! /<M>/release.asc, /<M>/bundle.tar    the signed record of the publication and the
//!                                      configuration it was built for (`host upgrade`)
//! /<M>/snapshot, /<M>/snapshot.info    the ebuild-tree snapshot tarball and its identity (JSON)
//! /<M>/snapshots/gentoo-<date>.tar.xz  the same in emerge-webrsync's mirror layout, with
//!   (.md5sum, .gpgsig; also as          `.md5sum` and Gentoo's own `.gpgsig`, and as
//!    gentoo-latest.tar.xz)              `gentoo-latest.tar.xz`; `/<M>/repos/` is an alias
//! ```

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::index::{etag, safe_rel, IndexCache};
use super::status;
use crate::builder::state::PublishedInfo;
use crate::fsutil::FileStamp;
use crate::store::{valid_name, Store};
use crate::store::{PublishedDir, PACKAGES};

/// Files up to this size are read in one go; larger ones are streamed in chunks of this size.
const CHUNK: usize = 128 * 1024;

pub(crate) struct App {
    pub store: Store,
    pub index: IndexCache,
    /// MD5 of snapshot tarballs (emerge-webrsync's `.md5sum`), computed once per file version.
    md5: Mutex<HashMap<FileStamp, String>>,
    /// File bodies streamed at once (each holds an open file until sent).
    streams: Arc<Semaphore>,
}

impl App {
    pub fn new(store: Store, streams: Arc<Semaphore>) -> App {
        App {
            store,
            index: IndexCache::default(),
            md5: Mutex::new(HashMap::new()),
            streams,
        }
    }
}

pub(crate) fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(status_page))
        .route("/api/status", get(api_status))
        .fallback(machine_files)
        .with_state(app)
}

async fn status_page(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let host = host_of(&headers);
    blocking(move || {
        let machines = status::collect(&app.store, &app.index);
        let html = status::render_html(&machines, host.as_deref());
        let mut r = ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response();
        let h = r.headers_mut();
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'"),
        );
        r
    })
    .await
}

async fn api_status(State(app): State<Arc<App>>) -> Response {
    blocking(move || {
        let machines = status::collect(&app.store, &app.index);
        let mut r = axum::Json(status::to_json(&machines)).into_response();
        r.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        r
    })
    .await
}

/// Everything under `/<M>/`.
async fn machine_files(
    State(app): State<Arc<App>>,
    method: Method,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    if method != Method::GET && method != Method::HEAD {
        let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let segs = match split_path(uri.path()) {
        Ok(s) => s,
        Err(code) => return plain(code, "bad path\n"),
    };
    let Some((first, rest)) = segs.split_first() else {
        return not_found();
    };
    let (machine, tag) = match first.split_once('@') {
        Some((m, t)) if crate::builder::generations::valid_tag(t) => {
            (m.to_string(), Some(t.to_string()))
        }
        Some(_) => return not_found(),
        None => (first.clone(), None),
    };
    if !valid_name(&machine) || rest.is_empty() {
        return not_found();
    }
    let host = host_of(&headers);
    let req = Req {
        head: method == Method::HEAD,
        headers,
    };
    let rest = rest.to_vec();
    blocking(move || {
        let Some(v) = View::resolve(&app.store, &machine, tag.as_deref()) else {
            return not_found();
        };
        let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
        match rest.as_slice() {
            [PACKAGES] => packages(&app, &v, &req),
            ["binrepos.conf"] => conf(&req, binrepos_conf(&v.name, host.as_deref())),
            ["key.asc"] => serve_file(
                &app.streams,
                &app.store.keys(),
                crate::store::PUBLIC_KEYS,
                &req,
                "application/pgp-keys",
                Vec::new(),
            ),
            ["repos.conf"] => {
                let info = read_info(&v.generation);
                conf(&req, repos_conf(&v.name, host.as_deref(), info.as_ref()))
            }
            ["snapshot"] => snapshot(&app, &v.generation, &req),
            ["snapshot.info"] => snapshot_info(&app, &v.name, &v.generation),
            [d, name] if *d == "snapshots" || *d == "repos" => {
                webrsync(&app, &v.generation, name, &req)
            }
            ["release.asc"] => serve_file(
                &app.streams,
                v.generation.path(),
                crate::store::PublishedDir::RELEASE,
                &req,
                "text/plain; charset=utf-8",
                Vec::new(),
            ),
            ["bundle.tar"] => serve_file(
                &app.streams,
                v.generation.path(),
                crate::store::PublishedDir::BUNDLE,
                &req,
                "application/x-tar",
                Vec::new(),
            ),
            ["overlays"] => super::overlays::list(&app.store, &machine),
            ["overlays", file] => super::overlays::tarball(&app.store, &machine, file),
            _ => binpkg(&app, &v, &rest.join("/"), &req),
        }
    })
    .await
}

/// What one request is served from: one generation of a machine, resolved once (the served
/// one for `/<M>/`, the tagged one for `/<M>@<tag>/`), so every file of a response comes from
/// the same publication even while `published` is switched.
pub(crate) struct View {
    /// `M` or `M@tag`: the name in URLs (and the index cache's key).
    pub name: String,
    /// The generation (`Packages`, `info.json`, `binpkgs/`); a `published/` directory of an
    /// older gbuild serves as one.
    pub generation: PublishedDir,
    /// Where its binpkgs are: the generation's hardlinks, else (an older gbuild's
    /// publication) PKGDIR.
    pub binpkgs: PathBuf,
}

impl View {
    pub(crate) fn resolve(store: &Store, machine: &str, tag: Option<&str>) -> Option<View> {
        let files = store.machine(machine);
        let dir = files.path();
        if !dir.is_dir() {
            return None;
        }
        let (name, generation) = match tag {
            Some(t) => {
                let m = crate::builder::Machine::open(store, machine).ok()?;
                let g = crate::builder::generations::tagged(&m, t)
                    .map_err(|e| tracing::warn!("{e}"))
                    .ok()
                    .flatten()?;
                (format!("{machine}@{t}"), g.path().to_path_buf())
            }
            None => (machine.to_string(), files.published().path().to_path_buf()),
        };
        // The symlink must stay inside the machine's directory.
        let generation = match (generation.canonicalize(), dir.canonicalize()) {
            (Ok(g), Ok(d)) if g.starts_with(&d) && g != d => g,
            (Err(_), _) => generation,
            _ => return None,
        };
        let generation = PublishedDir::at(generation);
        let own = generation.binpkgs();
        let binpkgs = if own.is_dir() { own } else { files.binpkgs() };
        Some(View {
            name,
            generation,
            binpkgs,
        })
    }
}

struct Req {
    head: bool,
    headers: HeaderMap,
}

/// Run file-system work off the async workers.
async fn blocking(f: impl FnOnce() -> Response + Send + 'static) -> Response {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        tracing::error!("request handler: {e}");
        plain(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n")
    })
}

/// Split a raw (percent-encoded) path into decoded segments. Any segment that decodes to `.` or
/// `..`, or contains `/`, `\` or NUL once decoded, or is not UTF-8, makes the request bad (400);
/// empty segments (`//`, a trailing `/`) name nothing (404).
pub(crate) fn split_path(raw: &str) -> Result<Vec<String>, StatusCode> {
    let rest = raw.strip_prefix('/').ok_or(StatusCode::BAD_REQUEST)?;
    if rest.is_empty() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for seg in rest.split('/') {
        let s = percent_decode(seg).ok_or(StatusCode::BAD_REQUEST)?;
        if s == "." || s == ".." || s.contains(['/', '\\', '\0']) {
            return Err(StatusCode::BAD_REQUEST);
        }
        if s.is_empty() {
            return Err(StatusCode::NOT_FOUND);
        }
        out.push(s);
    }
    Ok(out)
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The request's `Host`, if it is a plausible `host[:port]` (it is written into config files).
fn host_of(headers: &HeaderMap) -> Option<String> {
    let h = headers.get(header::HOST)?.to_str().ok()?;
    let ok = !h.is_empty()
        && h.len() <= 255
        && h.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b".-_:[]".contains(&c));
    ok.then(|| h.to_string())
}

fn plain(code: StatusCode, msg: &'static str) -> Response {
    let mut r = (code, msg).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn not_found() -> Response {
    plain(StatusCode::NOT_FOUND, "not found\n")
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> Response {
    tracing::warn!("{what}: {e}");
    plain(StatusCode::INTERNAL_SERVER_ERROR, "cannot read the store\n")
}

fn packages(app: &App, v: &View, req: &Req) -> Response {
    match app.index.get(&v.name, &v.generation.packages()) {
        Ok(Some(ix)) => {
            let meta = Meta {
                etag: etag(&ix.key),
                modified: ix.modified,
                size: ix.bytes.len() as u64,
            };
            let bytes = ix.bytes.clone();
            respond(
                req,
                &meta,
                "text/plain; charset=utf-8",
                Vec::new(),
                |s, e| Ok(Body::from(bytes.slice(s as usize..e as usize))),
            )
            .map(|mut r| {
                r.headers_mut()
                    .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
                r
            })
            .unwrap_or_else(|e| unavailable(PACKAGES, e))
        }
        Ok(None) => not_found(),
        Err(e) => unavailable(PACKAGES, e),
    }
}

fn binpkg(app: &App, v: &View, rel: &str, req: &Req) -> Response {
    if !safe_rel(rel) {
        return not_found();
    }
    let index = match app.index.get(&v.name, &v.generation.packages()) {
        Ok(Some(ix)) => ix,
        Ok(None) => return not_found(),
        Err(e) => return unavailable(PACKAGES, e),
    };
    if !index.allows(rel) {
        return not_found();
    }
    let ctype = if rel.ends_with(".tbz2") {
        "application/x-bzip2"
    } else if rel.ends_with(".tar") {
        "application/x-tar"
    } else {
        "application/octet-stream"
    };
    serve_file(&app.streams, &v.binpkgs, rel, req, ctype, Vec::new())
}

/// Open `root/rel` only if it resolves, symlinks followed, to a regular file inside `root`.
/// `None` for anything else (missing, outside, not a regular file).
fn open_beneath(root: &Path, rel: &str) -> std::io::Result<Option<(File, std::fs::Metadata)>> {
    let root = match root.canonicalize() {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let real = match root.join(rel).canonicalize() {
        Ok(r) => r,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
            ) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(e),
    };
    if !real.starts_with(&root) || real == root {
        return Ok(None);
    }
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&real)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        // ELOOP: replaced by a symlink since canonicalize.
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Ok(None),
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Ok(None);
    }
    Ok(Some((file, meta)))
}

fn serve_file(
    streams: &Arc<Semaphore>,
    root: &Path,
    rel: &str,
    req: &Req,
    ctype: &'static str,
    extra: Vec<(&'static str, HeaderValue)>,
) -> Response {
    let (file, meta) = match open_beneath(root, rel) {
        Ok(Some(x)) => x,
        Ok(None) => return not_found(),
        Err(e) => return unavailable(&format!("{}/{rel}", root.display()), e),
    };
    let m = Meta {
        etag: etag(&FileStamp::from_metadata(&meta)),
        modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        size: meta.len(),
    };
    respond(req, &m, ctype, extra, move |start, end| {
        file_body(streams, file, start, end)
    })
    .unwrap_or_else(|e| {
        if e.kind() == std::io::ErrorKind::WouldBlock {
            busy()
        } else {
            unavailable(&format!("{}/{rel}", root.display()), e)
        }
    })
}

/// Every stream slot is taken: come back shortly (Portage's fetchers retry).
fn busy() -> Response {
    let mut r = plain(
        StatusCode::SERVICE_UNAVAILABLE,
        "too many downloads at once, retry shortly\n",
    );
    let h = r.headers_mut();
    h.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// The bytes `start..end` of `file`: read at once when small, else streamed while holding one
/// of `streams` (`WouldBlock` when none is free).
fn file_body(
    streams: &Arc<Semaphore>,
    mut file: File,
    start: u64,
    end: u64,
) -> std::io::Result<Body> {
    let len = end - start;
    if start > 0 {
        file.seek(SeekFrom::Start(start))?;
    }
    if len <= CHUNK as u64 {
        let mut buf = Vec::with_capacity(len as usize);
        file.take(len).read_to_end(&mut buf)?;
        return Ok(Body::from(buf));
    }
    let permit = Arc::clone(streams)
        .try_acquire_owned()
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::WouldBlock, "no free stream slot"))?;
    let f = Held {
        inner: tokio::fs::File::from_std(file).take(len),
        _permit: permit,
    };
    Ok(Body::from_stream(
        tokio_util::io::ReaderStream::with_capacity(f, CHUNK),
    ))
}

/// A reader that holds a stream slot until the body is dropped.
struct Held<R> {
    inner: R,
    _permit: OwnedSemaphorePermit,
}

impl<R: AsyncRead + Unpin> AsyncRead for Held<R> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

/// Validators and size of a representation.
pub(crate) struct Meta {
    pub etag: String,
    pub modified: SystemTime,
    pub size: u64,
}

/// What to send for a GET/HEAD of a representation, given the request's conditional and range
/// headers (RFC 9110 sections 13 and 14).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Plan {
    NotModified,
    Full,
    Partial(u64, u64),
    Unsatisfiable,
}

pub(crate) fn plan(headers: &HeaderMap, m: &Meta) -> Plan {
    let modified_secs = secs(m.modified);
    if let Some(inm) = headers.get(header::IF_NONE_MATCH) {
        let inm = inm.to_str().unwrap_or("");
        if etag_list_matches(inm, &m.etag, true) {
            return Plan::NotModified;
        }
    } else if let Some(ims) = header_date(headers, header::IF_MODIFIED_SINCE) {
        if modified_secs <= secs(ims) {
            return Plan::NotModified;
        }
    }
    let Some(range) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return Plan::Full;
    };
    if let Some(ir) = headers.get(header::IF_RANGE).and_then(|v| v.to_str().ok()) {
        let ir = ir.trim();
        let fresh = if ir.starts_with('"') {
            ir == m.etag
        } else {
            httpdate::parse_http_date(ir).is_ok_and(|d| secs(d) == modified_secs)
        };
        if !fresh {
            return Plan::Full;
        }
    }
    parse_range(range, m.size)
}

/// A single `bytes=` range; several ranges or bad syntax are ignored (the whole file is sent).
fn parse_range(v: &str, size: u64) -> Plan {
    let Some(spec) = v.trim().strip_prefix("bytes=") else {
        return Plan::Full;
    };
    if spec.contains(',') {
        return Plan::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return Plan::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    let num = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    if a.is_empty() {
        let Some(n) = num(b) else { return Plan::Full };
        if n == 0 || size == 0 {
            return Plan::Unsatisfiable;
        }
        return Plan::Partial(size.saturating_sub(n), size - 1);
    }
    let Some(first) = num(a) else {
        return Plan::Full;
    };
    let last = if b.is_empty() {
        size.saturating_sub(1)
    } else {
        match num(b) {
            Some(l) if l >= first => l.min(size.saturating_sub(1)),
            _ => return Plan::Full,
        }
    };
    if first >= size {
        return Plan::Unsatisfiable;
    }
    Plan::Partial(first, last)
}

fn etag_list_matches(list: &str, etag: &str, weak: bool) -> bool {
    let bare = |t: &str| -> String {
        let t = t.trim();
        if weak {
            t.strip_prefix("W/").unwrap_or(t).to_string()
        } else {
            t.to_string()
        }
    };
    list.split(',')
        .any(|t| t.trim() == "*" || bare(t) == bare(etag))
}

fn header_date(headers: &HeaderMap, name: header::HeaderName) -> Option<SystemTime> {
    httpdate::parse_http_date(headers.get(name)?.to_str().ok()?).ok()
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

/// Build the response for `m` following `plan`; `body(start, end)` yields the bytes
/// `start..end` (exclusive) when a body is sent.
fn respond(
    req: &Req,
    m: &Meta,
    ctype: &'static str,
    extra: Vec<(&'static str, HeaderValue)>,
    body: impl FnOnce(u64, u64) -> std::io::Result<Body>,
) -> std::io::Result<Response> {
    let mut b = Response::builder()
        .header(header::ETAG, &m.etag)
        .header(header::LAST_MODIFIED, httpdate::fmt_http_date(m.modified))
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    for (k, v) in extra {
        b = b.header(k, v);
    }
    let (status, start, end) = match plan(&req.headers, m) {
        Plan::NotModified => {
            return Ok(b
                .status(StatusCode::NOT_MODIFIED)
                .body(Body::empty())
                .expect("valid response"))
        }
        Plan::Unsatisfiable => {
            return Ok(b
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .header(header::CONTENT_RANGE, format!("bytes */{}", m.size))
                .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
                .body(Body::from("range not satisfiable\n"))
                .expect("valid response"))
        }
        Plan::Full => (StatusCode::OK, 0, m.size),
        Plan::Partial(first, last) => {
            b = b.header(
                header::CONTENT_RANGE,
                format!("bytes {first}-{last}/{}", m.size),
            );
            (StatusCode::PARTIAL_CONTENT, first, last + 1)
        }
    };
    let b = b
        .status(status)
        .header(header::CONTENT_TYPE, ctype)
        .header(header::CONTENT_LENGTH, end - start);
    let body = if req.head {
        Body::empty()
    } else {
        body(start, end)?
    };
    Ok(b.body(body).expect("valid response"))
}

fn conf(req: &Req, text: String) -> Response {
    let bytes = Bytes::from(text);
    let m = Meta {
        etag: format!("\"{}\"", md5sum::compute_hex(&bytes)),
        modified: SystemTime::now(),
        size: bytes.len() as u64,
    };
    let mut r = respond(req, &m, "text/plain; charset=utf-8", Vec::new(), |s, e| {
        Ok(Body::from(bytes.slice(s as usize..e as usize)))
    })
    .expect("in-memory body");
    r.headers_mut().remove(header::LAST_MODIFIED);
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

fn base_url(machine: &str, host: Option<&str>) -> String {
    format!("http://{}/{machine}", host.unwrap_or("127.0.0.1:8788"))
}

/// `/etc/portage/binrepos.conf/gbuild-<M>.conf` for the host (`gbuild-<M>-<tag>` for a tag,
/// whose URL is `/<M>@<tag>`).
pub(crate) fn binrepos_conf(machine: &str, host: Option<&str>) -> String {
    let repo = machine.replace('@', "-");
    let what = match machine.split_once('@') {
        Some((m, t)) => format!(
            "machine {m}, generation tagged {t} (it stays as newer passes publish; \
             `gbuild publish tag` moves it)"
        ),
        None => format!("machine {machine}"),
    };
    format!(
        "# Binary packages built by gbuild for {what}.\n\
         # Save as /etc/portage/binrepos.conf/gbuild-{repo}.conf, then use\n\
         # emerge --getbinpkg (or --getbinpkgonly).\n\
         # Every package is signed with the builder's key. Trust it once, as root, with the\n\
         # fingerprint that `gbuild key --show` prints on the builder (not one read from here):\n\
         #   gbuild host trust --binhost {base} --fingerprint <FINGERPRINT>\n\
         [gbuild-{repo}]\n\
         priority = 10\n\
         sync-uri = {base}\n\
         verify-signature = true\n",
        base = base_url(machine, host)
    )
}

/// `/etc/portage/repos.conf/gentoo.conf` for the host: the `gentoo` repository taken from the
/// exact snapshot the binpkgs were built on, in emerge-webrsync's mirror layout.
pub(crate) fn repos_conf(
    machine: &str,
    host: Option<&str>,
    info: Option<&PublishedInfo>,
) -> String {
    let base = base_url(machine, host);
    let date = info
        .and_then(|i| i.snapshot.as_ref())
        .and_then(|s| s.valid_date())
        .map(str::to_string);
    let (pin, revert) = match &date {
        Some(d) => (
            format!(
                "# The binpkgs of machine {machine} were built on the ebuild tree snapshot {d}.\n"
            ),
            format!("--revert={d}"),
        ),
        None => (
            format!("# Machine {machine} has not published a pass yet: no snapshot to pin.\n"),
            "--revert=YYYYMMDD".to_string(),
        ),
    };
    format!(
        "# The gentoo ebuild repository for use with gbuild's binhost {base}\n\
         {pin}\
         # Save as /etc/portage/repos.conf/gentoo.conf. To get exactly that tree run:\n\
         #   GENTOO_MIRRORS=\"{base}\" emerge-webrsync {revert}\n\
         # emerge-webrsync fetches {base}/snapshots/gentoo-<date>.tar.xz with its .md5sum and\n\
         # Gentoo's own .gpgsig, so the usual signature check applies.\n\
         # auto-sync is off so that `emerge --sync` does not move the tree away from the\n\
         # binpkgs; sync again with the command above after the builder publishes a new pass\n\
         # (the snapshot date is in {base}/snapshot.info).\n\
         [gentoo]\n\
         location = /var/db/repos/gentoo\n\
         sync-type = webrsync\n\
         auto-sync = no\n\
         sync-webrsync-verify-signature = yes\n\
         sync-openpgp-key-path = /usr/share/openpgp-keys/gentoo-release.asc\n"
    )
}

/// The `info.json` of a generation.
pub(crate) fn read_info(generation: &PublishedDir) -> Option<PublishedInfo> {
    // An unreadable description publishes nothing more than no description: logged, not served.
    crate::fsutil::read_json(&generation.info())
        .map_err(|e| tracing::warn!("{e}"))
        .ok()
        .flatten()
}

/// The snapshot tarball a generation's `info.json` names, as (store-relative path, file name).
fn snapshot_ref(dir: &PublishedDir) -> Option<(PublishedInfo, String, String)> {
    let info = read_info(dir)?;
    let rel = info.snapshot.as_ref()?.tarball.clone()?;
    if !safe_rel(&rel) {
        return None;
    }
    let name = rel.rsplit('/').next()?.to_string();
    Some((info, rel, name))
}

fn snapshot_headers(info: &PublishedInfo) -> Vec<(&'static str, HeaderValue)> {
    let mut out = Vec::new();
    let Some(s) = &info.snapshot else { return out };
    for (k, v) in [
        ("x-gbuild-snapshot-date", s.valid_date()),
        (
            "x-gbuild-snapshot-timestamp-chk",
            s.timestamp_chk.as_deref(),
        ),
        (
            "x-gbuild-snapshot-timestamp-commit",
            s.timestamp_commit.as_deref(),
        ),
    ] {
        if let Some(v) = v.and_then(|v| HeaderValue::from_str(v.trim()).ok()) {
            out.push((k, v));
        }
    }
    out
}

fn snapshot(app: &App, dir: &PublishedDir, req: &Req) -> Response {
    let Some((info, rel, _)) = snapshot_ref(dir) else {
        return not_found();
    };
    let extra = snapshot_headers(&info);
    serve_file(
        &app.streams,
        app.store.root(),
        &rel,
        req,
        "application/x-xz",
        extra,
    )
}

fn snapshot_info(app: &App, machine: &str, dir: &PublishedDir) -> Response {
    let Some((info, rel, name)) = snapshot_ref(dir) else {
        return not_found();
    };
    let size = open_beneath(app.store.root(), &rel)
        .ok()
        .flatten()
        .map(|(_, m)| m.len());
    let s = info.snapshot.clone().unwrap_or_default();
    let date = s.valid_date().map(str::to_string);
    let body = serde_json::json!({
        "machine": machine,
        "date": date,
        "file": name,
        "size": size,
        "timestamp_chk": s.timestamp_chk,
        "timestamp_commit": s.timestamp_commit,
        "published_at": info.published_at,
        "url": format!("/{machine}/snapshot"),
        "webrsync": date.as_ref().map(|d| format!("/{machine}/snapshots/gentoo-{d}.tar.xz")),
    });
    let mut r = axum::Json(body).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// emerge-webrsync's layout: `gentoo-<date>.tar.xz`, `gentoo-latest.tar.xz`, each with `.md5sum`
/// and `.gpgsig` (the signature kept by `gbuild fetch`, Gentoo's own).
fn webrsync(app: &App, dir: &PublishedDir, name: &str, req: &Req) -> Response {
    let Some((info, rel, _)) = snapshot_ref(dir) else {
        return not_found();
    };
    let Some(date) = info.snapshot.as_ref().and_then(|s| s.valid_date()) else {
        return not_found();
    };
    let dated = format!("gentoo-{date}.tar.xz");
    let (base, suffix) = match name.strip_suffix(".md5sum") {
        Some(b) => (b, ".md5sum"),
        None => match name.strip_suffix(".gpgsig") {
            Some(b) => (b, ".gpgsig"),
            None => (name, ""),
        },
    };
    if base != dated && base != "gentoo-latest.tar.xz" {
        return not_found();
    }
    let extra = snapshot_headers(&info);
    match suffix {
        "" => serve_file(
            &app.streams,
            app.store.root(),
            &rel,
            req,
            "application/x-xz",
            extra,
        ),
        ".gpgsig" => serve_file(
            &app.streams,
            app.store.root(),
            &format!("{rel}.gpgsig"),
            req,
            "application/pgp-signature",
            extra,
        ),
        _ => match snapshot_md5(app, &rel) {
            Ok(Some(sum)) => conf(req, format!("{sum}  {base}\n")),
            Ok(None) => not_found(),
            Err(e) => unavailable(&rel, e),
        },
    }
}

fn snapshot_md5(app: &App, rel: &str) -> std::io::Result<Option<String>> {
    let Some((mut file, meta)) = open_beneath(app.store.root(), rel)? else {
        return Ok(None);
    };
    let key = FileStamp::from_metadata(&meta);
    if let Some(s) = app.md5.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
        return Ok(Some(s.clone()));
    }
    let sum = md5sum::file_hex(&mut file)?;
    app.md5
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(key, sum.clone());
    Ok(Some(sum))
}

mod md5sum {
    use md5::{Digest, Md5};
    use std::io::Read;

    pub fn compute_hex(b: &[u8]) -> String {
        hex::encode(Md5::digest(b))
    }

    pub fn file_hex(f: &mut std::fs::File) -> std::io::Result<String> {
        let mut h = Md5::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        Ok(hex::encode(h.finalize()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hm(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn meta() -> Meta {
        Meta {
            etag: "\"abc\"".into(),
            modified: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            size: 1000,
        }
    }

    #[test]
    fn ranges() {
        let m = meta();
        let p = |v: &str| plan(&hm(&[("range", v)]), &m);
        assert_eq!(p("bytes=0-99"), Plan::Partial(0, 99));
        assert_eq!(p("bytes=900-"), Plan::Partial(900, 999));
        assert_eq!(p("bytes=-10"), Plan::Partial(990, 999));
        assert_eq!(p("bytes=-5000"), Plan::Partial(0, 999));
        assert_eq!(p("bytes=990-5000"), Plan::Partial(990, 999));
        assert_eq!(p("bytes=1000-"), Plan::Unsatisfiable);
        assert_eq!(p("bytes=0-1,5-6"), Plan::Full);
        assert_eq!(p("bytes=5-1"), Plan::Full);
        assert_eq!(p("items=0-1"), Plan::Full);
        assert_eq!(p("bytes=x-1"), Plan::Full);
    }

    #[test]
    fn conditionals() {
        let m = meta();
        let date = httpdate::fmt_http_date(m.modified);
        let older = httpdate::fmt_http_date(m.modified - Duration::from_secs(10));
        assert_eq!(
            plan(&hm(&[("if-none-match", "\"abc\"")]), &m),
            Plan::NotModified
        );
        assert_eq!(
            plan(&hm(&[("if-none-match", "W/\"abc\", \"x\"")]), &m),
            Plan::NotModified
        );
        assert_eq!(plan(&hm(&[("if-none-match", "*")]), &m), Plan::NotModified);
        assert_eq!(plan(&hm(&[("if-none-match", "\"x\"")]), &m), Plan::Full);
        assert_eq!(
            plan(&hm(&[("if-modified-since", &date)]), &m),
            Plan::NotModified
        );
        assert_eq!(plan(&hm(&[("if-modified-since", &older)]), &m), Plan::Full);
        // If-None-Match wins over If-Modified-Since.
        assert_eq!(
            plan(
                &hm(&[("if-none-match", "\"x\""), ("if-modified-since", &date)]),
                &m
            ),
            Plan::Full
        );
        // If-Range: a stale validator turns a range request into a full one.
        assert_eq!(
            plan(&hm(&[("range", "bytes=0-1"), ("if-range", "\"old\"")]), &m),
            Plan::Full
        );
        assert_eq!(
            plan(&hm(&[("range", "bytes=0-1"), ("if-range", "\"abc\"")]), &m),
            Plan::Partial(0, 1)
        );
        assert_eq!(
            plan(&hm(&[("range", "bytes=0-1"), ("if-range", &date)]), &m),
            Plan::Partial(0, 1)
        );
    }

    #[test]
    fn paths() {
        let ok = |p: &str| split_path(p).unwrap();
        assert_eq!(ok("/m/Packages"), vec!["m", "Packages"]);
        assert_eq!(ok("/m/a%2Bb/c"), vec!["m", "a+b", "c"]);
        assert!(ok("/").is_empty());
        for bad in [
            "/m/../etc",
            "/m/%2e%2e/x",
            "/m/a%2fb",
            "/m/%2E%2e",
            "/m/./x",
            "/m/%00",
            "/m/%zz",
            "/m/a%5cb",
            "m",
        ] {
            assert_eq!(split_path(bad), Err(StatusCode::BAD_REQUEST), "{bad}");
        }
        assert_eq!(split_path("//etc/passwd"), Err(StatusCode::NOT_FOUND));
        assert_eq!(split_path("/m/"), Err(StatusCode::NOT_FOUND));
    }

    #[test]
    fn beneath() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("binpkgs");
        std::fs::create_dir_all(root.join("a")).unwrap();
        std::fs::write(root.join("a/f"), b"x").unwrap();
        std::fs::write(d.path().join("secret"), b"s").unwrap();
        std::os::unix::fs::symlink("../../secret", root.join("a/out")).unwrap();
        std::os::unix::fs::symlink("f", root.join("a/in")).unwrap();
        assert!(open_beneath(&root, "a/f").unwrap().is_some());
        assert!(open_beneath(&root, "a/in").unwrap().is_some());
        assert!(open_beneath(&root, "a/out").unwrap().is_none());
        assert!(open_beneath(&root, "a").unwrap().is_none());
        assert!(open_beneath(&root, "a/missing").unwrap().is_none());
        assert!(open_beneath(&root, "a/f/x").unwrap().is_none());
    }

    #[test]
    fn host_header_is_checked() {
        assert_eq!(
            host_of(&hm(&[("host", "builder:8788")])).as_deref(),
            Some("builder:8788")
        );
        assert_eq!(
            host_of(&hm(&[("host", "[::1]:80")])).as_deref(),
            Some("[::1]:80")
        );
        assert_eq!(host_of(&hm(&[("host", "a b#sync-uri = x")])), None);
    }
}
