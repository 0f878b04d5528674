//! The request-head bound on a connection's socket. hyper checks its read buffer against its
//! limit only after a read, so a head that arrives in one large read could exceed it; here no
//! read hands hyper more than the limit counted from the end of the previous head. Since the
//! server reads no request bodies, every byte a client sends belongs to some request head: once
//! the limit is handed over without a head end, hyper's buffer is full and it answers 431.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub(crate) struct HeadLimit<S> {
    inner: S,
    limit: usize,
    /// Bytes handed over since the end of the last head.
    pending: usize,
    /// Newlines seen in a row (a `\r` between them does not count): two end a head.
    newlines: u8,
}

impl<S> HeadLimit<S> {
    pub(crate) fn new(inner: S, limit: usize) -> HeadLimit<S> {
        HeadLimit {
            inner,
            limit,
            pending: 0,
            newlines: 0,
        }
    }

    fn scan(&mut self, data: &[u8]) {
        for &b in data {
            self.pending += 1;
            match b {
                b'\n' => {
                    self.newlines += 1;
                    if self.newlines == 2 {
                        self.pending = 0;
                        self.newlines = 0;
                    }
                }
                b'\r' => {}
                _ => self.newlines = 0,
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for HeadLimit<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let room = this.limit.saturating_sub(this.pending);
        if room == 0 {
            return Poll::Ready(Err(io::Error::other("request head too large")));
        }
        let want = buf.remaining().min(room);
        let n = {
            let dst = buf.initialize_unfilled_to(want);
            let mut sub = ReadBuf::new(dst);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut sub))?;
            let n = sub.filled().len();
            this.scan(&dst[..n]);
            n
        };
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for HeadLimit<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_ends_reset_the_count() {
        let mut h = HeadLimit::new((), 100);
        h.scan(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(h.pending, 0);
        h.scan(b"GET /a HTTP/1.1\r\n");
        assert_eq!(h.pending, 17);
        h.scan(b"\r\n");
        assert_eq!(h.pending, 0);
        h.scan(b"GET /b HTTP/1.1\nX: \r\r\n");
        assert_eq!(h.pending, 22, "a lone \\r does not end a line");
        h.scan(b"\n");
        assert_eq!(h.pending, 0, "bare newlines end a head too");
    }
}
