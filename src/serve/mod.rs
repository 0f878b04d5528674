//! The binhost (docs/serve.md): a read-only HTTP server over the store that hands hosts
//! exactly what a completed build pass published — the `Packages` index, the binpkgs it lists,
//! the ebuild-tree snapshot they were built on, ready-to-use `binrepos.conf` / `repos.conf` — and
//! a status page of every machine's build loop.
//!
//! It runs beside `gbuild build` as a separate process and only reads the store (the store
//! contract says what is publishable); `run` is also what `gbuild run --serve` starts. Resource
//! use is bounded: a fixed number of worker threads, a cap on concurrent connections, idle
//! timeouts on every socket read and write, small header buffers, no request bodies.

pub mod index;
pub mod model;
mod routes;
pub mod status;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::sync::{watch, Semaphore};

use crate::store::Store;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("start the server's threads: {0}")]
    Runtime(#[source] std::io::Error),
}

/// Bounds on what clients can make the server use.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// A connection that makes no progress reading or writing for this long is closed (also
    /// the keep-alive idle time).
    pub idle_timeout: Duration,
    /// Time allowed for a request's headers to arrive.
    pub header_timeout: Duration,
    /// Threads running the async runtime.
    pub worker_threads: usize,
    /// Threads doing file-system reads.
    pub blocking_threads: usize,
}

impl Default for Limits {
    fn default() -> Self {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        Limits {
            max_connections: 512,
            idle_timeout: Duration::from_secs(60),
            header_timeout: Duration::from_secs(15),
            worker_threads: cpus.clamp(1, 4),
            blocking_threads: 32,
        }
    }
}

/// Tells a running server to stop: it stops accepting, lets requests in flight finish (up to a
/// few seconds) and returns. Clones share the same signal.
#[derive(Clone, Debug)]
pub struct Shutdown {
    tx: Arc<watch::Sender<bool>>,
    signals: bool,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown::new()
    }
}

impl Shutdown {
    pub fn new() -> Shutdown {
        Shutdown {
            tx: Arc::new(watch::channel(false).0),
            signals: false,
        }
    }

    /// Also stop on SIGINT or SIGTERM.
    pub fn on_signals(mut self) -> Shutdown {
        self.signals = true;
        self
    }

    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }

    pub fn is_triggered(&self) -> bool {
        *self.tx.borrow()
    }

    async fn wait(&self) {
        let mut rx = self.tx.subscribe();
        let _ = rx.wait_for(|v| *v).await;
    }
}

/// A bound listening socket: bind first, learn the address (port 0), then serve.
pub struct Listener {
    inner: std::net::TcpListener,
}

/// Bind `addr` (port 0 picks a free port).
pub fn bind(addr: SocketAddr) -> Result<Listener, ServeError> {
    let inner =
        std::net::TcpListener::bind(addr).map_err(|source| ServeError::Bind { addr, source })?;
    inner
        .set_nonblocking(true)
        .map_err(|source| ServeError::Bind { addr, source })?;
    Ok(Listener { inner })
}

impl Listener {
    pub fn local_addr(&self) -> SocketAddr {
        self.inner
            .local_addr()
            .expect("a bound socket has an address")
    }

    /// Serve the store until `shutdown` fires. Blocks the calling thread; builds its own runtime.
    pub fn serve(self, store: Store, limits: Limits, shutdown: Shutdown) -> Result<(), ServeError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(limits.worker_threads.max(1))
            .max_blocking_threads(limits.blocking_threads.max(1))
            .thread_name("gbuild-serve")
            .enable_all()
            .build()
            .map_err(ServeError::Runtime)?;
        rt.block_on(serve_on(self.inner, store, limits, shutdown))
    }
}

/// Bind `addr` and serve `store` until `shutdown` fires (the entry point for `gbuild run
/// --serve`).
pub fn run(store: Store, addr: SocketAddr, shutdown: Shutdown) -> Result<(), ServeError> {
    bind(addr)?.serve(store, Limits::default(), shutdown)
}

async fn serve_on(
    std_listener: std::net::TcpListener,
    store: Store,
    limits: Limits,
    shutdown: Shutdown,
) -> Result<(), ServeError> {
    let addr = std_listener.local_addr().map_err(ServeError::Runtime)?;
    let listener = tokio::net::TcpListener::from_std(std_listener)
        .map_err(|source| ServeError::Bind { addr, source })?;
    if shutdown.signals {
        let s = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            s.trigger();
        });
    }
    let router = routes::router(Arc::new(routes::App::new(store)));
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(64 * 1024)
        .keep_alive(true);

    loop {
        let permit = tokio::select! {
            p = Arc::clone(&slots).acquire_owned() => p.expect("semaphore never closed"),
            _ = shutdown.wait() => break,
        };
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _peer)) => s,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    log::warn!("accept on {addr}: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.wait() => break,
        };
        let _ = stream.set_nodelay(true);
        let mut io = tokio_io_timeout::TimeoutStream::new(stream);
        io.set_read_timeout(Some(limits.idle_timeout));
        io.set_write_timeout(Some(limits.idle_timeout));
        let io = TokioIo::new(Box::pin(io));
        let conn = http.serve_connection(io, TowerToHyperService::new(router.clone()));
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                log::debug!("connection: {e}");
            }
            drop(permit);
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(Duration::from_secs(5)) => {}
    }
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut int), Ok(mut term)) => {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}
