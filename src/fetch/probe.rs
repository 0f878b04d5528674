//! Whether a TCP service answers: the distcc helpers a machine's passes use are probed before
//! each pass (a helper that is down is left out, its share compiled locally) and by `status`.
//! Outgoing connections live in `fetch`, so this small one does too.

use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Connect to `host:port` (every address it resolves to, in turn) within `timeout` each; the
/// connection is closed at once. The error is one lowercase line (`connection refused`, ...).
pub fn tcp(host: &str, port: u16, timeout: Duration) -> Result<(), String> {
    let addrs: Vec<_> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("resolve {host}: {e}"))?
        .collect();
    let mut last = format!("{host} resolves to no address");
    for a in addrs {
        match TcpStream::connect_timeout(&a, timeout) {
            Ok(_) => return Ok(()),
            Err(e) => {
                let s = e.to_string();
                let s = s.split(" (os error").next().unwrap_or(&s).to_string();
                last = lowercase_first(s);
            }
        }
    }
    Err(last)
}

fn lowercase_first(s: String) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => s,
    }
}
