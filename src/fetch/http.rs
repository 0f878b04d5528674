//! The only network access in gbuild: GET over http(s) (rustls) and reads of `file://` URLs,
//! with retries on transient failures and resumable downloads into a `.partial` file. Every
//! limit below is described for users in docs/fetch.md.
//!
//! Retry policy: connect errors, timeouts, stalls, 5xx, 408/429 and a body cut short are retried
//! with exponential backoff (`GBUILD_RETRY_BASE_MS`, default 1000 ms, doubling, capped at 30 s;
//! the backoff starts again after an attempt that got further into the file than any before).
//! `GBUILD_RETRIES` (default 5) bounds the attempts of one download whatever their progress, so
//! a server that cuts every body short cannot keep a download going forever. Any other status
//! (404 first of all) fails at once naming the URL.
//!
//! Stalls: an attempt that receives less than 1 KiB/s over a whole stall window
//! (`GBUILD_STALL_SECS`, default 60 s; no byte at all for that long included) is aborted and
//! counts as a failed attempt.
//!
//! Bounds: a download stops as soon as it would exceed its [`Bound`], the size the signed
//! latest file gives for a stage3 or a cap (`GBUILD_DOWNLOAD_CAP_MB`, default 2048) where no
//! size is signed. A body longer than that (or announced as such) fails at once and its
//! `.partial` is removed; an existing `.partial` already longer than the bound is discarded.
//!
//! Resume: an existing `.partial` is continued with `Range: bytes=N-`; its bytes are fed to the
//! hashing pipeline first so the digests cover the whole file. A server that answers 200 (or an
//! unexpected `Content-Range`) makes the download start over from byte 0.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::blocking::Client;
use reqwest::header::{CONTENT_RANGE, RANGE};
use reqwest::StatusCode;

use super::hashing::{Pipeline, CHUNK};
use crate::fsutil::{FsError, IoContext};

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{url}: not found{}", status.map(|c| format!(" (HTTP {c})")).unwrap_or_default())]
    NotFound { url: String, status: Option<u16> },
    #[error("{url}: HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url}: {message} (gave up after {attempts} attempts)")]
    GaveUp {
        url: String,
        message: String,
        attempts: u32,
    },
    #[error("{url}: larger than {limit} bytes")]
    TooLarge { url: String, limit: u64 },
    #[error("{url}: more than the {limit} bytes {why}; download stopped and discarded")]
    Oversize {
        url: String,
        limit: u64,
        why: String,
    },
    #[error("{url}: unsupported URL (use http, https or file)")]
    BadUrl { url: String },
    #[error("{url}: {source}")]
    Local { url: String, source: std::io::Error },
    #[error("http client: {0}")]
    Client(String),
    #[error(transparent)]
    Fs(#[from] FsError),
}

/// Attempts, backoff, stall window and the cap for downloads without a signed size.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts of one request, whatever their progress.
    pub attempts: u32,
    pub base: Duration,
    /// An attempt receiving less than [`MIN_RATE`] bytes per second over this long is aborted.
    pub stall: Duration,
    /// Largest download whose size nothing signed.
    pub cap: u64,
}

/// The slowest transfer rate (bytes per second, averaged over the stall window) kept alive.
pub const MIN_RATE: u64 = 1024;

impl RetryPolicy {
    /// From `GBUILD_RETRIES`, `GBUILD_RETRY_BASE_MS`, `GBUILD_STALL_SECS` and
    /// `GBUILD_DOWNLOAD_CAP_MB`, else 5 attempts from 1 s, a 60 s stall window and 2 GiB.
    pub fn from_env() -> RetryPolicy {
        let num = |k: &str| {
            std::env::var(k)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        RetryPolicy {
            attempts: num("GBUILD_RETRIES").unwrap_or(5).clamp(1, 1000) as u32,
            base: Duration::from_millis(num("GBUILD_RETRY_BASE_MS").unwrap_or(1000)),
            stall: Duration::from_secs(num("GBUILD_STALL_SECS").unwrap_or(60).max(1)),
            cap: num("GBUILD_DOWNLOAD_CAP_MB")
                .unwrap_or(2048)
                .max(1)
                .saturating_mul(1 << 20),
        }
    }

    fn delay(&self, attempt: u32) -> Duration {
        let d = self
            .base
            .saturating_mul(1 << attempt.saturating_sub(1).min(16));
        d.min(Duration::from_secs(30))
    }
}

/// The most bytes a download may have.
#[derive(Debug, Clone)]
pub enum Bound {
    /// The size a signed file gives (`by` names it): any other size cannot be the file.
    Signed { size: u64, by: String },
    /// Nothing signed the size: the policy's cap applies.
    Unsigned,
}

/// Aborts an attempt whose transfer rate stays below [`MIN_RATE`] for a whole window.
struct Stall {
    window: Duration,
    min: u64,
    mark: Instant,
    since: u64,
}

impl Stall {
    fn new(window: Duration) -> Stall {
        Stall {
            window,
            min: MIN_RATE.saturating_mul(window.as_secs().max(1)),
            mark: Instant::now(),
            since: 0,
        }
    }

    /// Count `n` more bytes; an error message when the window passed with too few.
    fn progress(&mut self, n: usize) -> Result<(), String> {
        self.since += n as u64;
        if self.since >= self.min {
            self.mark = Instant::now();
            self.since = 0;
        } else if self.mark.elapsed() >= self.window {
            return Err(format!(
                "stalled: {} bytes in {} s (less than {MIN_RATE} bytes/s)",
                self.since,
                self.window.as_secs()
            ));
        }
        Ok(())
    }
}

/// Read into `buf` until it is full, the body ends, an error occurs or the stall check fails.
/// Returns the bytes read and the error that stopped it, if any.
fn fill(r: &mut impl Read, buf: &mut [u8], stall: &mut Stall) -> (usize, Option<String>) {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => {
                filled += n;
                if let Err(m) = stall.progress(n) {
                    return (filled, Some(m));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return (filled, Some(e.to_string())),
        }
    }
    (filled, None)
}

/// A GET-only client for mirror URLs.
pub struct Fetcher {
    client: Client,
    retry: RetryPolicy,
}

enum Attempt {
    /// Transient failure: retry.
    Retry(String),
    Done,
}

impl Fetcher {
    pub fn new(retry: RetryPolicy) -> Result<Fetcher, HttpError> {
        let client = Client::builder()
            .user_agent(concat!("gbuild/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(30))
            // Per read (and for the response head): a silent server is a stall.
            .timeout(retry.stall)
            .build()
            .map_err(|e| HttpError::Client(e.to_string()))?;
        Ok(Fetcher { client, retry })
    }

    fn local_path(url: &str) -> Result<Option<PathBuf>, HttpError> {
        if url.starts_with("http://") || url.starts_with("https://") {
            return Ok(None);
        }
        if url.starts_with("file:") {
            return reqwest::Url::parse(url)
                .ok()
                .and_then(|u| u.to_file_path().ok())
                .map(Some)
                .ok_or_else(|| HttpError::BadUrl { url: url.into() });
        }
        Err(HttpError::BadUrl { url: url.into() })
    }

    fn send(&self, url: &str, from: u64) -> Result<reqwest::blocking::Response, reqwest::Error> {
        let mut req = self.client.get(url);
        if from > 0 {
            req = req.header(RANGE, format!("bytes={from}-"));
        }
        req.send()
    }

    fn backoff(&self, attempt: u32) {
        std::thread::sleep(self.retry.delay(attempt));
    }

    /// A small file (latest pointer, signature, DIGESTS) into memory, at most `limit` bytes.
    pub fn get_small(&self, url: &str, limit: u64) -> Result<Vec<u8>, HttpError> {
        if let Some(path) = Fetcher::local_path(url)? {
            let data = std::fs::read(&path).map_err(|source| match source.kind() {
                std::io::ErrorKind::NotFound => HttpError::NotFound {
                    url: url.into(),
                    status: None,
                },
                _ => HttpError::Local {
                    url: url.into(),
                    source,
                },
            })?;
            if data.len() as u64 > limit {
                return Err(HttpError::TooLarge {
                    url: url.into(),
                    limit,
                });
            }
            return Ok(data);
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            let message = match self.send(url, 0) {
                Err(e) => e.to_string(),
                Ok(mut resp) => {
                    let status = resp.status();
                    check_status(url, status)?;
                    if status.is_success() {
                        let mut buf = vec![0u8; (limit as usize).saturating_add(1)];
                        let mut stall = Stall::new(self.retry.stall);
                        match fill(&mut resp, &mut buf, &mut stall) {
                            (n, _) if n as u64 > limit => {
                                return Err(HttpError::TooLarge {
                                    url: url.into(),
                                    limit,
                                })
                            }
                            (n, None) => {
                                buf.truncate(n);
                                return Ok(buf);
                            }
                            (_, Some(e)) => format!("reading body: {e}"),
                        }
                    } else {
                        format!("HTTP {}", status.as_u16())
                    }
                }
            };
            if attempt >= self.retry.attempts {
                return Err(HttpError::GaveUp {
                    url: url.into(),
                    message,
                    attempts: attempt,
                });
            }
            tracing::debug!("{url}: {message}; retrying");
            self.backoff(attempt);
        }
    }

    /// Download `url` into `partial` (created or resumed), feeding every byte of the file to
    /// `pipe` exactly once in order, never more than `bound` bytes. Returns the file's size.
    /// On a transient failure the partial file is kept for a later resume; on a body longer
    /// than the bound it is removed.
    pub fn download(
        &self,
        url: &str,
        partial: &Path,
        pipe: &mut Pipeline,
        label: &str,
        bound: &Bound,
    ) -> Result<u64, HttpError> {
        let (max, why) = match bound {
            Bound::Signed { size, by } => (*size, format!("{by} signs")),
            Bound::Unsigned => (
                self.retry.cap,
                "allowed for a download without a signed size (GBUILD_DOWNLOAD_CAP_MB)".into(),
            ),
        };
        let exact = matches!(bound, Bound::Signed { .. }).then_some(max);
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(partial)
            .at("open", partial)?;
        let r = match Fetcher::local_path(url)? {
            Some(path) => copy_local(url, &path, &mut file, partial, pipe, label, max),
            None => self.download_http(url, &mut file, partial, pipe, label, max, exact),
        };
        match r {
            Err(HttpError::Oversize { url, .. }) => {
                drop(file);
                // Best effort beside the step's own error; gc removes a temporary-named leftover.
                let _ = std::fs::remove_file(partial);
                Err(HttpError::Oversize {
                    url,
                    limit: max,
                    why,
                })
            }
            r => r,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn download_http(
        &self,
        url: &str,
        file: &mut File,
        partial: &Path,
        pipe: &mut Pipeline,
        label: &str,
        max: u64,
        exact: Option<u64>,
    ) -> Result<u64, HttpError> {
        let mut have = file.metadata().at("stat", partial)?.len();
        if have > max {
            // Longer than the file can be: none of it is worth resuming.
            tracing::debug!(
                "{}: longer than {max} bytes, starting over",
                partial.display()
            );
            restart(file, partial, pipe, &mut have)?;
        }
        let mut attempt = 0;
        let mut failed_in_a_row = 0;
        let mut furthest = have;
        let mut bar = None;
        loop {
            attempt += 1;
            let a = Limits { max, exact };
            match self.attempt(url, file, partial, pipe, &mut have, &mut bar, label, a)? {
                Attempt::Done => break,
                Attempt::Retry(message) => {
                    // Only bytes beyond any reached before are progress (a server that
                    // ignores Range sends the same prefix again and again).
                    if have > furthest {
                        furthest = have;
                        failed_in_a_row = 1;
                    } else {
                        failed_in_a_row += 1;
                    }
                    if attempt >= self.retry.attempts {
                        return Err(HttpError::GaveUp {
                            url: url.into(),
                            message,
                            attempts: attempt,
                        });
                    }
                    tracing::debug!("{url}: {message}; retrying from byte {have}");
                    self.backoff(failed_in_a_row);
                }
            }
        }
        file.sync_all().at("fsync", partial)?;
        if let Some(b) = bar {
            crate::progress::Progress::done(&b);
        }
        Ok(have)
    }

    #[allow(clippy::too_many_arguments)]
    fn attempt(
        &self,
        url: &str,
        file: &mut File,
        partial: &Path,
        pipe: &mut Pipeline,
        have: &mut u64,
        bar: &mut Option<crate::progress::Progress>,
        label: &str,
        lim: Limits,
    ) -> Result<Attempt, HttpError> {
        let oversize = || HttpError::Oversize {
            url: url.into(),
            limit: lim.max,
            why: String::new(),
        };
        let mut resp = match self.send(url, *have) {
            Ok(r) => r,
            Err(e) => return Ok(Attempt::Retry(e.to_string())),
        };
        let status = resp.status();
        if status == StatusCode::RANGE_NOT_SATISFIABLE && *have > 0 {
            let total = resp
                .headers()
                .get(CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("bytes */"))
                .and_then(|v| v.trim().parse::<u64>().ok());
            if total == Some(*have) {
                // A previous run got every byte but stopped before its checks.
                rehash(file, partial, pipe, *have)?;
                return Ok(Attempt::Done);
            }
            // Our partial is longer than what the server has: start over.
            restart(file, partial, pipe, have)?;
            return Ok(Attempt::Retry("range not satisfiable".into()));
        }
        check_status(url, status)?;
        if !status.is_success() {
            return Ok(Attempt::Retry(format!("HTTP {}", status.as_u16())));
        }
        let resumed = status == StatusCode::PARTIAL_CONTENT
            && *have > 0
            && resp
                .headers()
                .get(CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.starts_with(&format!("bytes {}-", *have)))
                .unwrap_or(false);
        if status == StatusCode::PARTIAL_CONTENT && !resumed {
            // Not the range we asked for: its body cannot continue our file.
            restart(file, partial, pipe, have)?;
            return Ok(Attempt::Retry("unexpected Content-Range".into()));
        }
        if !resumed && *have > 0 {
            tracing::debug!("{url}: server ignored the range request; starting over");
            restart(file, partial, pipe, have)?;
        }
        if pipe.fed() < *have {
            rehash(file, partial, pipe, *have)?;
        }
        file.seek(SeekFrom::Start(*have)).at("seek", partial)?;
        let announced = resp.content_length().map(|n| n.saturating_add(*have));
        if announced.is_some_and(|t| t > lim.max) {
            return Err(oversize());
        }
        let total = announced.or(lim.exact);
        let b = bar.get_or_insert_with(|| crate::progress::bytes(label, total));
        b.set_position(*have);
        let mut stall = Stall::new(self.retry.stall);
        let mut buf = vec![0u8; CHUNK];
        loop {
            let (filled, err) = fill(&mut resp, &mut buf, &mut stall);
            if *have + filled as u64 > lim.max {
                return Err(oversize());
            }
            if filled > 0 {
                file.write_all(&buf[..filled]).at("write", partial)?;
                pipe.feed(Arc::from(&buf[..filled]));
                *have += filled as u64;
                b.inc(filled as u64);
            }
            if let Some(e) = err {
                return Ok(Attempt::Retry(format!(
                    "connection lost after {} bytes: {e}",
                    *have
                )));
            }
            if filled < buf.len() {
                break;
            }
        }
        if let Some(t) = total {
            if *have < t {
                return Ok(Attempt::Retry(format!(
                    "body ended at {} of {t} bytes",
                    *have
                )));
            }
        }
        Ok(Attempt::Done)
    }
}

/// The bound of one download: at most `max` bytes, exactly `exact` when a size is signed.
#[derive(Clone, Copy)]
struct Limits {
    max: u64,
    exact: Option<u64>,
}

/// 404 and other non-transient statuses fail at once; success and transient ones pass.
fn check_status(url: &str, status: StatusCode) -> Result<(), HttpError> {
    if status.is_success() || is_transient(status) {
        return Ok(());
    }
    if status == StatusCode::NOT_FOUND || status == StatusCode::GONE {
        return Err(HttpError::NotFound {
            url: url.into(),
            status: Some(status.as_u16()),
        });
    }
    Err(HttpError::Status {
        url: url.into(),
        status: status.as_u16(),
    })
}

fn is_transient(status: StatusCode) -> bool {
    status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
}

fn restart(
    file: &mut File,
    partial: &Path,
    pipe: &mut Pipeline,
    have: &mut u64,
) -> Result<(), HttpError> {
    file.set_len(0).at("truncate", partial)?;
    *have = 0;
    if pipe.fed() > 0 {
        pipe.reset();
    }
    Ok(())
}

/// Feed the bytes already in the partial file (from where the pipeline stands) to it.
fn rehash(
    file: &mut File,
    partial: &Path,
    pipe: &mut Pipeline,
    upto: u64,
) -> Result<(), HttpError> {
    let mut pos = pipe.fed();
    file.seek(SeekFrom::Start(pos)).at("seek", partial)?;
    let mut buf = vec![0u8; CHUNK];
    while pos < upto {
        let want = ((upto - pos) as usize).min(CHUNK);
        file.read_exact(&mut buf[..want]).at("read", partial)?;
        pipe.feed(Arc::from(&buf[..want]));
        pos += want as u64;
    }
    Ok(())
}

fn copy_local(
    url: &str,
    src: &Path,
    file: &mut File,
    partial: &Path,
    pipe: &mut Pipeline,
    label: &str,
    max: u64,
) -> Result<u64, HttpError> {
    let local = |source: std::io::Error| match source.kind() {
        std::io::ErrorKind::NotFound => HttpError::NotFound {
            url: url.into(),
            status: None,
        },
        _ => HttpError::Local {
            url: url.into(),
            source,
        },
    };
    let mut input = File::open(src).map_err(local)?;
    let len = input.metadata().map_err(local)?.len();
    let oversize = || HttpError::Oversize {
        url: url.into(),
        limit: max,
        why: String::new(),
    };
    if len > max {
        return Err(oversize());
    }
    file.set_len(0).at("truncate", partial)?;
    if pipe.fed() > 0 {
        pipe.reset();
    }
    let bar = crate::progress::bytes(label, Some(len));
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        let n = input.read(&mut buf).map_err(local)?;
        if n == 0 {
            break;
        }
        if total + n as u64 > max {
            // A file still growing (or a device) behind a file:// URL.
            return Err(oversize());
        }
        file.write_all(&buf[..n]).at("write", partial)?;
        pipe.feed(Arc::from(&buf[..n]));
        total += n as u64;
        bar.inc(n as u64);
    }
    file.sync_all().at("fsync", partial)?;
    bar.done();
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let p = RetryPolicy {
            attempts: 5,
            base: Duration::from_millis(100),
            stall: Duration::from_secs(60),
            cap: 1 << 30,
        };
        assert_eq!(p.delay(1), Duration::from_millis(100));
        assert_eq!(p.delay(3), Duration::from_millis(400));
        assert_eq!(p.delay(30), Duration::from_secs(30));
    }

    #[test]
    fn stall_needs_the_minimum_rate_over_a_whole_window() {
        let mut s = Stall::new(Duration::from_secs(1));
        assert_eq!(s.min, MIN_RATE);
        assert!(s.progress(10).is_ok(), "within the window");
        s.mark -= Duration::from_secs(2);
        let e = s.progress(10).unwrap_err();
        assert!(e.contains("20 bytes in 1 s"), "{e}");
        // Enough bytes open a new window.
        let mut s = Stall::new(Duration::from_secs(1));
        s.mark -= Duration::from_secs(2);
        assert!(s.progress(MIN_RATE as usize).is_ok());
        assert!(s.progress(1).is_ok());
    }

    #[test]
    fn urls() {
        assert!(Fetcher::local_path("ftp://x/y").is_err());
        assert_eq!(
            Fetcher::local_path("file:///srv/mirror/a").unwrap(),
            Some(PathBuf::from("/srv/mirror/a"))
        );
        assert_eq!(Fetcher::local_path("https://x/y").unwrap(), None);
    }
}
