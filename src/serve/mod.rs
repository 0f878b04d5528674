//! The binhost (docs/serve.md): a read-only HTTP server over the store that hands hosts
//! exactly what a completed build pass published — the `Packages` index, the binpkgs it lists,
//! the ebuild-tree snapshot they were built on, ready-to-use `binrepos.conf` / `repos.conf` — and
//! a status page of every machine's build loop.
//!
//! It runs beside `gbuild build` as a separate process and only reads the store (the store
//! contract says what is publishable); `run` is also what `gbuild run --serve` starts. Resource
//! use is bounded: a fixed number of worker threads, a cap on concurrent connections sized from
//! the file descriptors the process may open, a smaller cap on the file bodies streamed at once
//! (the rest of the connections stay free for `Packages`, the status page and the other small
//! documents), a cap per client address, idle timeouts on every socket read and write, request
//! heads of at most [`HEAD_LIMIT`] bytes, no request bodies. docs/serve.md states these limits.

pub mod index;
mod io;
mod overlays;
mod routes;
pub mod status;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{watch, Semaphore};

/// Largest request head (request line and headers) accepted; a longer one gets 431.
pub const HEAD_LIMIT: usize = 64 * 1024;

/// Connections kept for requests that stream no file (the index, the status page, the
/// configuration documents) when file bodies use every other one.
const RESERVED_CONNECTIONS: usize = 16;

/// Connections over the per-client cap that are answered 503 at once; beyond that they are
/// closed without an answer.
const REJECTING: usize = 16;

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
    /// Connections served at once; more wait in the listen backlog. Lowered at start when the
    /// file-descriptor limit cannot hold that many (see [`Capacity`]).
    pub max_connections: usize,
    /// Connections from one client address at once; more are answered 503 and closed.
    pub max_per_client: usize,
    /// A connection that makes no progress reading or writing for this long is closed.
    pub idle_timeout: Duration,
    /// Time allowed for a request's headers to arrive, counted from the connection's start or
    /// the end of the previous response: also the keep-alive idle time.
    pub header_timeout: Duration,
    /// Threads running the async runtime.
    pub worker_threads: usize,
    /// Threads doing file-system reads.
    pub blocking_threads: usize,
}

impl Limits {
    /// The defaults the command line shows (constants: working out the thread count reads
    /// cgroup files, which every gbuild command would pay for while parsing its arguments).
    pub const MAX_CONNECTIONS: usize = 512;
    pub const MAX_PER_CLIENT: usize = 64;
    pub const HEADER_TIMEOUT: Duration = Duration::from_secs(15);
}

impl Default for Limits {
    fn default() -> Self {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        Limits {
            max_connections: Limits::MAX_CONNECTIONS,
            max_per_client: Limits::MAX_PER_CLIENT,
            idle_timeout: Duration::from_secs(60),
            header_timeout: Limits::HEADER_TIMEOUT,
            worker_threads: cpus.clamp(1, 4),
            blocking_threads: 32,
        }
    }
}

/// What the server can hold at once, from the wanted connection cap and the file descriptors
/// left under the soft `RLIMIT_NOFILE`. A connection needs one descriptor, a streamed file body a
/// second; a fixed allowance covers the runtime, the file-reading threads' short-lived opens
/// and the connections being refused. File bodies get all connections but a reserve, so the
/// index and the status page answer however many downloads run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    pub connections: usize,
    pub streams: usize,
}

impl Capacity {
    pub fn plan(wanted: usize, fd_room: usize, blocking_threads: usize) -> Capacity {
        let fixed = 16 + REJECTING + blocking_threads;
        let room = fd_room.saturating_sub(fixed);
        // connections + streams <= room, with streams = connections - reserve.
        let reserve = RESERVED_CONNECTIONS.min(wanted / 2);
        let by_fds = (room + reserve) / 2;
        let connections = wanted.min(by_fds).max(2);
        let reserve = reserve.min(connections / 2);
        Capacity {
            connections,
            streams: (connections - reserve).max(1),
        }
    }
}

/// Raise the soft `RLIMIT_NOFILE` to the hard limit (systemd and most shells start processes
/// at 1024). Returns the soft limit in effect.
pub fn raise_fd_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(e) => {
                tracing::warn!("raise the open-file limit from {soft} to {hard}: {e}");
                soft
            }
        },
        Ok((soft, _)) => soft,
        Err(_) => 1024,
    }
}

/// Descriptors this process may still open under its soft limit.
fn fd_room() -> usize {
    use nix::sys::resource::{getrlimit, Resource};
    let soft = getrlimit(Resource::RLIMIT_NOFILE).map_or(1024, |(s, _)| s);
    // The directory listing holds one descriptor itself.
    let open = std::fs::read_dir("/proc/self/fd").map_or(16, |d| d.count().saturating_sub(1));
    (soft.min(usize::MAX as u64) as usize).saturating_sub(open)
}

/// Open connections per client address.
#[derive(Default)]
struct PerClient(Mutex<HashMap<IpAddr, usize>>);

/// One connection counted in [`PerClient`] until dropped.
struct ClientSlot {
    map: Arc<PerClient>,
    ip: IpAddr,
}

impl PerClient {
    fn enter(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<ClientSlot> {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(ClientSlot {
            map: Arc::clone(self),
            ip,
        })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut m = self.map.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

/// Answer a connection over its client's cap with 503 and close it; the request is read
/// (a little, briefly) so that closing does not reset the connection before the answer.
async fn refuse(mut stream: tokio::net::TcpStream, ip: IpAddr) {
    let body = format!("too many connections from {ip}\n");
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nRetry-After: 5\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    // A refusal is a courtesy: a client that does not take it in 2 s is dropped all the same.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let mut buf = vec![0u8; 8192];
        // The request head, if it comes at once.
        let _ = tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf)).await;
        stream.write_all(head.as_bytes()).await?;
        stream.shutdown().await?;
        let mut total = 0;
        while total < HEAD_LIMIT {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
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
        // Err: the sender is gone, which means shutting down as well.
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
/// --serve`, which leaves the process's open-file limit as it is: its containers inherit it).
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
    let cap = Capacity::plan(
        limits.max_connections.max(1),
        fd_room(),
        limits.blocking_threads.max(1),
    );
    if cap.connections < limits.max_connections {
        tracing::warn!(
            "serving at most {} connections ({} file downloads at once): the open-file limit \
             allows no more",
            cap.connections,
            cap.streams
        );
    }
    let app = routes::App::new(store, Arc::new(Semaphore::new(cap.streams)));
    let router = routes::router(Arc::new(app));
    let slots = Arc::new(Semaphore::new(cap.connections));
    let rejecting = Arc::new(Semaphore::new(REJECTING));
    let clients = Arc::new(PerClient::default());
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(HEAD_LIMIT)
        .keep_alive(true);

    loop {
        let permit = tokio::select! {
            p = Arc::clone(&slots).acquire_owned() => p.expect("semaphore never closed"),
            _ = shutdown.wait() => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!("accept on {addr}: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.wait() => break,
        };
        let Some(client) = clients.enter(peer.ip(), limits.max_per_client.max(1)) else {
            drop(permit);
            if let Ok(r) = Arc::clone(&rejecting).try_acquire_owned() {
                tokio::spawn(async move {
                    refuse(stream, peer.ip()).await;
                    drop(r);
                });
            }
            continue;
        };
        // Latency only; the connection works without it.
        let _ = stream.set_nodelay(true);
        let mut io = tokio_io_timeout::TimeoutStream::new(stream);
        io.set_read_timeout(Some(limits.idle_timeout));
        io.set_write_timeout(Some(limits.idle_timeout));
        let io = TokioIo::new(io::HeadLimit::new(Box::pin(io), HEAD_LIMIT));
        let conn = http.serve_connection(io, TowerToHyperService::new(router.clone()));
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("connection: {e}");
            }
            drop(client);
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
