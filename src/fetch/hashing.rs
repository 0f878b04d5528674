//! One pass over a download's bytes: each chunk, as it arrives, goes to worker threads that
//! compute SHA512, BLAKE2B and the detached signature's hash in parallel, so verifying a large
//! tarball costs no second read and little more wall time than the transfer itself.

use std::io::Read;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use blake2::Blake2b512;
use sha2::{Digest, Sha512};

use super::verify::{Pending, Signer, VerifyError};

/// Size of the chunks handed to the workers.
pub const CHUNK: usize = 1 << 20;
/// Chunks queued per worker before the reader waits.
const DEPTH: usize = 8;

type Chunk = Arc<[u8]>;
/// The outcome of a signature check, when there was one.
type Verdict = Option<Result<Signer, VerifyError>>;

/// The digests of everything fed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digests {
    pub sha512: String,
    pub blake2b: String,
    pub size: u64,
}

/// Running workers for one stream of bytes. `reset` starts over (the server ignored a Range
/// request); `finish` waits for the results.
pub struct Pipeline {
    sig: Option<Pending>,
    txs: Vec<SyncSender<Chunk>>,
    /// SHA512 of the data, and the signature verdict when the same pass serves both.
    sha: Option<JoinHandle<(String, Verdict)>>,
    b2: Option<JoinHandle<String>>,
    verify: Option<JoinHandle<Result<Signer, VerifyError>>>,
    size: u64,
}

fn hasher<D: Digest + Send + 'static>(rx: Receiver<Chunk>) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut d = D::new();
        for chunk in rx {
            d.update(&chunk);
        }
        hex::encode(d.finalize())
    })
}

/// SHA512 of the data; with `sig` (a plain-SHA512 signature) also its verdict from the same
/// hash state.
fn sha512_worker(rx: Receiver<Chunk>, sig: Option<Pending>) -> JoinHandle<(String, Verdict)> {
    std::thread::spawn(move || {
        let mut d = Sha512::new();
        for chunk in rx {
            d.update(&chunk);
        }
        let verdict = sig.map(|p| p.check_sha512(d.clone()));
        (hex::encode(d.finalize()), verdict)
    })
}
/// `Read` over the chunks of a channel (what the signature check pulls from).
struct ChannelReader {
    rx: Receiver<Chunk>,
    cur: Option<Chunk>,
    pos: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if let Some(c) = &self.cur {
                if self.pos < c.len() {
                    let n = buf.len().min(c.len() - self.pos);
                    buf[..n].copy_from_slice(&c[self.pos..self.pos + n]);
                    self.pos += n;
                    return Ok(n);
                }
            }
            match self.rx.recv() {
                Ok(c) => {
                    self.cur = Some(c);
                    self.pos = 0;
                }
                Err(_) => return Ok(0),
            }
        }
    }
}

impl Pipeline {
    /// Workers for SHA512 and BLAKE2B, plus the check of `sig` when given (sharing the SHA512
    /// pass when the signature hashes with plain SHA512).
    pub fn new(sig: Option<Pending>) -> Pipeline {
        let (tx_sha, rx_sha) = sync_channel(DEPTH);
        let (tx_b2, rx_b2) = sync_channel(DEPTH);
        let mut txs = vec![tx_sha, tx_b2];
        let shared = sig.as_ref().is_some_and(|p| p.hashes_plain_sha512());
        let verify = sig.clone().filter(|_| !shared).map(|p| {
            let (tx, rx) = sync_channel(DEPTH);
            txs.push(tx);
            std::thread::spawn(move || {
                let reader = ChannelReader {
                    rx,
                    cur: None,
                    pos: 0,
                };
                p.check(std::io::BufReader::with_capacity(1 << 16, reader))
            })
        });
        Pipeline {
            sha: Some(sha512_worker(rx_sha, sig.clone().filter(|_| shared))),
            sig,
            txs,
            b2: Some(hasher::<Blake2b512>(rx_b2)),
            verify,
            size: 0,
        }
    }

    /// Hand a chunk to every worker.
    pub fn feed(&mut self, chunk: Chunk) {
        self.size += chunk.len() as u64;
        for tx in &self.txs {
            // A worker that stopped early has its result ready; nothing to do then.
            let _ = tx.send(chunk.clone());
        }
    }

    pub fn fed(&self) -> u64 {
        self.size
    }

    /// Drop everything fed so far and start again from byte 0.
    pub fn reset(&mut self) {
        let fresh = Pipeline::new(self.sig.clone());
        let old = std::mem::replace(self, fresh);
        // The hashes of the abandoned attempt are of no use; finishing only joins its workers.
        let _ = old.finish();
    }

    /// Close the streams and collect the digests and the signature verdict (None when no
    /// signature was given).
    pub fn finish(mut self) -> (Digests, Verdict) {
        self.txs.clear();
        let panicked = || {
            Err(VerifyError::Malformed(
                "signature check".into(),
                "worker panicked".into(),
            ))
        };
        let (sha512, shared) = self
            .sha
            .take()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| (String::new(), Some(panicked())))
            })
            .unwrap_or_default();
        let blake2b = self
            .b2
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        let verdict = match self.verify.take() {
            Some(h) => Some(h.join().unwrap_or_else(|_| panicked())),
            None => shared,
        };
        (
            Digests {
                sha512,
                blake2b,
                size: self.size,
            },
            verdict,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_match_one_shot() {
        let data: Vec<u8> = (0..3 * CHUNK + 17).map(|i| (i * 31 % 251) as u8).collect();
        let mut p = Pipeline::new(None);
        for c in data.chunks(CHUNK / 3) {
            p.feed(Arc::from(c));
        }
        let (d, v) = p.finish();
        assert!(v.is_none());
        assert_eq!(d.size, data.len() as u64);
        assert_eq!(d.sha512, hex::encode(Sha512::digest(&data)));
        assert_eq!(d.blake2b, hex::encode(Blake2b512::digest(&data)));
    }

    #[test]
    fn reset_forgets_earlier_bytes() {
        let mut p = Pipeline::new(None);
        p.feed(Arc::from(&b"garbage"[..]));
        p.reset();
        p.feed(Arc::from(&b"abc"[..]));
        let (d, _) = p.finish();
        assert_eq!(d.sha512, hex::encode(Sha512::digest(b"abc")));
        assert_eq!(d.size, 3);
    }
}
