//! The only network access in gbuild: GET over http(s) (rustls) and reads of `file://` URLs,
//! with retries on transient failures and resumable downloads into a `.partial` file.
//!
//! Retry policy: connect errors, timeouts, 5xx, 408/429 and a body cut short are retried with
//! exponential backoff (`GBUILD_RETRY_BASE_MS`, default 1000 ms, doubling, capped at 30 s;
//! `GBUILD_RETRIES` attempts, default 5); the count starts again whenever an attempt made
//! progress. Any other status (404 first of all) fails at once naming the URL.
//!
//! Resume: an existing `.partial` is continued with `Range: bytes=N-`; its bytes are fed to the
//! hashing pipeline first so the digests cover the whole file. A server that answers 200 (or an
//! unexpected `Content-Range`) makes the download start over from byte 0.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

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
    #[error("{url}: unsupported URL (use http, https or file)")]
    BadUrl { url: String },
    #[error("{url}: {source}")]
    Local { url: String, source: std::io::Error },
    #[error("http client: {0}")]
    Client(String),
    #[error(transparent)]
    Fs(#[from] FsError),
}

/// Attempts and backoff for transient failures.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub base: Duration,
}

impl RetryPolicy {
    /// From `GBUILD_RETRIES` and `GBUILD_RETRY_BASE_MS`, else 5 attempts from 1 s.
    pub fn from_env() -> RetryPolicy {
        let num = |k: &str| {
            std::env::var(k)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        RetryPolicy {
            attempts: num("GBUILD_RETRIES").unwrap_or(5).max(1) as u32,
            base: Duration::from_millis(num("GBUILD_RETRY_BASE_MS").unwrap_or(1000)),
        }
    }

    fn delay(&self, attempt: u32) -> Duration {
        let d = self
            .base
            .saturating_mul(1 << attempt.saturating_sub(1).min(16));
        d.min(Duration::from_secs(30))
    }
}

/// A GET-only client for mirror URLs.
pub struct Fetcher {
    client: Client,
    retry: RetryPolicy,
}

enum Attempt {
    /// Transient failure: retry (the bool: whether this attempt made progress).
    Retry(String, bool),
    Done,
}

impl Fetcher {
    pub fn new(retry: RetryPolicy) -> Result<Fetcher, HttpError> {
        let client = Client::builder()
            .user_agent(concat!("gbuild/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(30))
            .timeout(Duration::from_secs(120))
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
                Ok(resp) => {
                    let status = resp.status();
                    check_status(url, status)?;
                    if status.is_success() {
                        let mut buf = Vec::new();
                        match resp.take(limit + 1).read_to_end(&mut buf) {
                            Ok(_) if buf.len() as u64 > limit => {
                                return Err(HttpError::TooLarge {
                                    url: url.into(),
                                    limit,
                                })
                            }
                            Ok(_) => return Ok(buf),
                            Err(e) => format!("reading body: {e}"),
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
            log::info!("{url}: {message}; retrying");
            self.backoff(attempt);
        }
    }

    /// Download `url` into `partial` (created or resumed), feeding every byte of the file to
    /// `pipe` exactly once in order. Returns the file's size. On failure the partial file is
    /// kept for a later resume.
    pub fn download(
        &self,
        url: &str,
        partial: &Path,
        pipe: &mut Pipeline,
        label: &str,
    ) -> Result<u64, HttpError> {
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(partial)
            .at("open", partial)?;
        if let Some(path) = Fetcher::local_path(url)? {
            return copy_local(url, &path, &mut file, partial, pipe, label);
        }
        let mut have = file.metadata().at("stat", partial)?.len();
        let mut attempt = 0;
        let mut bar = None;
        loop {
            attempt += 1;
            match self.attempt(url, &mut file, partial, pipe, &mut have, &mut bar, label)? {
                Attempt::Done => break,
                Attempt::Retry(message, progressed) => {
                    if progressed {
                        attempt = 1;
                    }
                    if attempt >= self.retry.attempts {
                        return Err(HttpError::GaveUp {
                            url: url.into(),
                            message,
                            attempts: attempt,
                        });
                    }
                    log::info!("{url}: {message}; retrying from byte {have}");
                    self.backoff(attempt);
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
    ) -> Result<Attempt, HttpError> {
        let mut resp = match self.send(url, *have) {
            Ok(r) => r,
            Err(e) => return Ok(Attempt::Retry(e.to_string(), false)),
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
            return Ok(Attempt::Retry("range not satisfiable".into(), true));
        }
        check_status(url, status)?;
        if !status.is_success() {
            return Ok(Attempt::Retry(format!("HTTP {}", status.as_u16()), false));
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
            return Ok(Attempt::Retry("unexpected Content-Range".into(), false));
        }
        if !resumed && *have > 0 {
            log::info!("{url}: server ignored the range request; starting over");
            restart(file, partial, pipe, have)?;
        }
        if pipe.fed() < *have {
            rehash(file, partial, pipe, *have)?;
        }
        file.seek(SeekFrom::Start(*have)).at("seek", partial)?;
        let total = resp.content_length().map(|n| n + *have);
        let b = bar.get_or_insert_with(|| crate::progress::bytes(label, total));
        b.set_position(*have);
        let start = *have;
        let mut buf = vec![0u8; CHUNK];
        loop {
            let mut filled = 0;
            let mut err = None;
            while filled < buf.len() {
                match resp.read(&mut buf[filled..]) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        err = Some(e);
                        break;
                    }
                }
            }
            if filled > 0 {
                file.write_all(&buf[..filled]).at("write", partial)?;
                pipe.feed(Arc::from(&buf[..filled]));
                *have += filled as u64;
                b.inc(filled as u64);
            }
            if let Some(e) = err {
                return Ok(Attempt::Retry(
                    format!("connection lost after {} bytes: {e}", *have),
                    *have > start,
                ));
            }
            if filled < buf.len() {
                break;
            }
        }
        if let Some(t) = total {
            if *have < t {
                return Ok(Attempt::Retry(
                    format!("body ended at {} of {t} bytes", *have),
                    *have > start,
                ));
            }
        }
        Ok(Attempt::Done)
    }
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
        };
        assert_eq!(p.delay(1), Duration::from_millis(100));
        assert_eq!(p.delay(3), Duration::from_millis(400));
        assert_eq!(p.delay(30), Duration::from_secs(30));
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
