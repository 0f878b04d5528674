//! Worker threads that write small files while an archive is unpacked.
//!
//! An unpack is a pipeline: one thread decodes, one parses the tar stream and writes every
//! entry. On a tree of small files (an ebuild tree, most of a root filesystem by count) the
//! writing thread sets the pace: each file is an `openat`, a `write`, a `futimens` and a `close`,
//! the filesystem's inode and directory work, while the decoder waits. The parser hands such
//! files, content already read, to these workers and goes on parsing.
//!
//! The pool only runs jobs; what is safe to hand over is the parser's decision (see
//! `unpack::Writer`): it drains the pool before any entry that could meet a file still in flight
//! (the same name again, a directory replaced, a link to it), so every entry still takes effect
//! in archive order as far as any later entry can tell. Bytes in flight are capped, so memory
//! stays bounded whatever the archive holds. The first error a job returns is kept, later jobs
//! are skipped, and the parser gets that error at its next hand-over or drain.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use super::{LayerError, Result};

/// Jobs queued per worker beyond the one it runs.
const QUEUE_DEPTH: usize = 64;

/// What is in flight: jobs handed over and not finished, and their bytes; and how many threads
/// wait for that to shrink (a worker wakes them only then: a wake is a syscall, and most jobs
/// end with nobody waiting).
#[derive(Default)]
struct Inflight {
    jobs: usize,
    bytes: u64,
    waiters: usize,
}

struct Shared {
    inflight: Mutex<Inflight>,
    changed: Condvar,
    failed: AtomicBool,
    error: Mutex<Option<LayerError>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inflight> {
        // A poisoned lock only means a worker panicked while holding it; the counters it guards
        // are updated in one step, so they are still whole.
        self.inflight.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wait for a worker to finish a job, counted among the waiters meanwhile.
    fn wait<'a>(&self, mut f: MutexGuard<'a, Inflight>) -> MutexGuard<'a, Inflight> {
        f.waiters += 1;
        let mut f = self.changed.wait(f).unwrap_or_else(|p| p.into_inner());
        f.waiters -= 1;
        f
    }

    fn fail(&self, e: LayerError) {
        let mut slot = self.error.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(e);
        }
        self.failed.store(true, Ordering::Release);
    }

    /// The first error of a job, once.
    fn take_error(&self) -> Result<()> {
        if !self.failed.load(Ordering::Acquire) {
            return Ok(());
        }
        let e = self.error.lock().unwrap_or_else(|p| p.into_inner()).take();
        Err(e.unwrap_or_else(|| {
            LayerError::Unpacker(std::io::Error::other("a file writer failed earlier"))
        }))
    }
}

/// A fixed set of workers running `run` on the jobs handed to them.
pub(super) struct Pool<J: Send + 'static> {
    senders: Vec<SyncSender<(J, u64)>>,
    threads: Vec<JoinHandle<()>>,
    shared: Arc<Shared>,
    budget: u64,
}

impl<J: Send + 'static> Pool<J> {
    /// `workers` threads; at most `budget` bytes of jobs in flight (one larger job may run alone).
    pub(super) fn new<F>(workers: usize, budget: u64, run: F) -> Pool<J>
    where
        F: Fn(J) -> Result<()> + Send + Sync + 'static,
    {
        let shared = Arc::new(Shared {
            inflight: Mutex::new(Inflight::default()),
            changed: Condvar::new(),
            failed: AtomicBool::new(false),
            error: Mutex::new(None),
        });
        let run = Arc::new(run);
        let mut senders = Vec::new();
        let mut threads = Vec::new();
        for _ in 0..workers.max(1) {
            let (tx, rx) = sync_channel::<(J, u64)>(QUEUE_DEPTH);
            let shared = Arc::clone(&shared);
            let run = Arc::clone(&run);
            threads.push(std::thread::spawn(move || {
                for (job, bytes) in rx {
                    if !shared.failed.load(Ordering::Acquire) {
                        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(job)));
                        match r {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => shared.fail(e),
                            Err(_) => shared.fail(LayerError::Unpacker(std::io::Error::other(
                                "a file writer thread panicked",
                            ))),
                        }
                    }
                    let mut f = shared.lock();
                    f.jobs -= 1;
                    f.bytes -= bytes;
                    let wake = f.waiters > 0;
                    drop(f);
                    if wake {
                        shared.changed.notify_all();
                    }
                }
            }));
            senders.push(tx);
        }
        Pool {
            senders,
            threads,
            shared,
            budget,
        }
    }

    /// Hand `job` (`bytes` of content) to the worker chosen by `key`, waiting while the budget
    /// is spent. An earlier job's error is returned here instead.
    pub(super) fn submit(&self, key: u64, job: J, bytes: u64) -> Result<()> {
        self.shared.take_error()?;
        let mut f = self.shared.lock();
        while f.jobs > 0 && f.bytes + bytes > self.budget {
            f = self.shared.wait(f);
        }
        f.jobs += 1;
        f.bytes += bytes;
        drop(f);
        let worker = &self.senders[(key % self.senders.len() as u64) as usize];
        if worker.send((job, bytes)).is_err() {
            // The worker is gone (it only ends when its channel closes): undo the count.
            let mut f = self.shared.lock();
            f.jobs -= 1;
            f.bytes -= bytes;
            return Err(LayerError::Unpacker(std::io::Error::other(
                "a file writer thread ended early",
            )));
        }
        Ok(())
    }

    /// Wait until every job handed over has finished; the first error of any of them.
    pub(super) fn drain(&self) -> Result<()> {
        let mut f = self.shared.lock();
        while f.jobs > 0 {
            f = self.shared.wait(f);
        }
        drop(f);
        self.shared.take_error()
    }
}

impl<J: Send + 'static> Drop for Pool<J> {
    fn drop(&mut self) {
        // Dropped without a drain only when the unpack failed: skip what is still queued.
        self.shared.failed.store(true, Ordering::Release);
        self.senders.clear();
        for t in self.threads.drain(..) {
            // A worker's panic is caught around each job; joining reports nothing more.
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn every_job_runs_before_drain_returns() {
        let sum = Arc::new(AtomicU64::new(0));
        let s = Arc::clone(&sum);
        let pool = Pool::new(3, 10, move |n: u64| {
            std::thread::sleep(std::time::Duration::from_micros(n % 7));
            s.fetch_add(n, Ordering::SeqCst);
            Ok(())
        });
        for n in 1..=500u64 {
            pool.submit(n, n, 1 + n % 4).unwrap();
        }
        pool.drain().unwrap();
        assert_eq!(sum.load(Ordering::SeqCst), 500 * 501 / 2);
    }

    #[test]
    fn the_first_error_reaches_the_caller_once_and_later_jobs_are_skipped() {
        let ran = Arc::new(AtomicU64::new(0));
        let r = Arc::clone(&ran);
        let pool = Pool::new(1, 1 << 20, move |n: u64| {
            r.fetch_add(1, Ordering::SeqCst);
            if n == 3 {
                return Err(LayerError::Unpacker(std::io::Error::other("job 3")));
            }
            Ok(())
        });
        for n in 1..=3u64 {
            pool.submit(0, n, 1).unwrap();
        }
        let e = pool.drain().unwrap_err();
        assert!(e.to_string().contains("job 3"), "{e}");
        // Nothing more is taken once a job failed.
        assert!(pool.submit(0, 4, 1).is_err());
        assert!(pool.drain().is_err());
        assert_eq!(ran.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn a_panicking_job_is_an_error_not_a_hang() {
        let pool = Pool::new(2, 100, |n: u64| {
            if n == 2 {
                panic!("boom");
            }
            Ok(())
        });
        for n in 0..5u64 {
            // A submit after the panic may already return its error.
            if pool.submit(n, n, 1).is_err() {
                break;
            }
        }
        assert!(pool.drain().is_err());
    }
}
