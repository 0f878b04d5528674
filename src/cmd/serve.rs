//! `gbuild serve`: the binhost and status page over HTTP for every machine in the store
//! (docs/serve.md). Runs until SIGINT/SIGTERM; prints the bound address first so that
//! `--listen 127.0.0.1:0` can be used by scripts.

use std::io::Write;
use std::net::SocketAddr;

use anyhow::Context;
use gbuild::serve::{self, Limits, Shutdown};

use super::Ctx;

#[derive(clap::Args, Debug)]
pub struct ServeOpts {
    /// Address and port to listen on (port 0: any free port, printed on stdout)
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:8788")]
    pub listen: SocketAddr,
    /// Connections served at once; more wait in the listen backlog (lowered to what the
    /// open-file limit allows)
    #[arg(long, value_name = "N", default_value_t = Limits::MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Connections from one client address at once; more are answered 503 (raise it behind
    /// a reverse proxy)
    #[arg(long, value_name = "N", default_value_t = Limits::MAX_PER_CLIENT)]
    pub max_per_client: usize,
    /// Seconds a client has to send a request's headers, from connecting or from the end of
    /// the previous response (the keep-alive idle time)
    #[arg(long, value_name = "SECS", default_value_t = Limits::HEADER_TIMEOUT.as_secs())]
    pub header_timeout: u64,
}

pub fn run(ctx: &Ctx, o: ServeOpts) -> anyhow::Result<i32> {
    let store = ctx.store()?;
    // Each download holds a socket and a file: take every descriptor the hard limit allows.
    serve::raise_fd_limit();
    let listener = serve::bind(o.listen)?;
    let addr = listener.local_addr();
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on http://{addr}").context("write to stdout")?;
        out.flush().context("write to stdout")?;
    }
    ctx.note(&format!(
        "gbuild: serving {} (status page http://{addr}/)",
        store.machines().display()
    ));
    let limits = Limits {
        max_connections: o.max_connections.max(1),
        max_per_client: o.max_per_client.max(1),
        header_timeout: std::time::Duration::from_secs(o.header_timeout.max(1)),
        ..Limits::default()
    };
    listener.serve(store, limits, Shutdown::new().on_signals())?;
    Ok(0)
}
