//! Idle HTTP/1.1 connections parked as bare sockets.
//!
//! A hyper connection holds an 8 KiB read buffer (grown up to
//! `limits.max_header_bytes`), a write buffer and its dispatcher state for
//! as long as it lives, about 22 KiB in all. A keep-alive client that sends
//! nothing for minutes would keep all of it. So when an HTTP/1.1 connection
//! has nothing to do (no request in flight, every byte written and flushed,
//! the socket would block on read, and the last request could not have left
//! body bytes or an upgrade behind) and has stayed so for 50 ms (a busy
//! client's next request comes sooner and pays no rebuild), the connection
//! task takes the socket back
//! from hyper with `into_parts`, drops hyper's state, and waits for
//! readability on the bare socket. When bytes arrive, a new hyper connection
//! is built around it. The bytes hyper had read but not parsed (a partial
//! head) are copied out and handed to the next connection first, so a head
//! split across the park point is read whole.
//!
//! The conditions are tracked by `Resumable`, the I/O hyper is given, and by
//! the service (`IdleClock::set_parkable`), in relaxed atomics on the
//! connection's `IdleClock`: hyper does not say whether it is between
//! requests, so the connection is parked only when all of them hold.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use super::idle::IdleClock;

/// A client connection's stream that can wait for bytes without reading
/// them.
pub trait Readable: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Ready when the socket has bytes (or an error, or EOF) to read. Keeps
    /// no state of its own: the waker waits in the socket's registration.
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

impl Readable for TcpStream {
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_read_ready(cx)
    }
}

/// Boxed, so a cleartext connection's task is not as large as a TLS one's.
/// The TLS stream is parked only after hyper's read found neither buffered
/// plaintext nor bytes on the socket, so the socket's readability is the
/// only thing that can wake it.
impl Readable for Box<TlsStream<TcpStream>> {
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_ref().0.poll_read_ready(cx)
    }
}

/// The I/O one hyper connection is given: the bytes a previous connection
/// left unparsed, then the stream. Records on the connection's clock whether
/// the last read would block and whether everything written was flushed.
pub struct Resumable<I, C: AsRef<IdleClock>> {
    prefix: Bytes,
    io: I,
    owner: Arc<C>,
}

impl<I, C: AsRef<IdleClock>> Resumable<I, C> {
    pub fn new(prefix: Bytes, io: I, owner: Arc<C>) -> Resumable<I, C> {
        Resumable { prefix, io, owner }
    }

    /// The stream back; any prefix not yet read by hyper comes along.
    pub fn into_parts(self) -> (Bytes, I) {
        (self.prefix, self.io)
    }

    fn clock(&self) -> &IdleClock {
        AsRef::<IdleClock>::as_ref(&*self.owner)
    }
}

/// What the next connection must read first: what the previous one left
/// unread, then what hyper had read and not parsed. Copied, so a few bytes
/// of a partial head do not keep hyper's whole read buffer alive.
pub fn leftover(unread: Bytes, read_buf: Bytes) -> Bytes {
    match (unread.is_empty(), read_buf.is_empty()) {
        (true, true) => Bytes::new(),
        (true, false) => Bytes::copy_from_slice(&read_buf),
        (false, true) => unread,
        (false, false) => {
            let mut both = Vec::with_capacity(read_buf.len() + unread.len());
            both.extend_from_slice(&read_buf);
            both.extend_from_slice(&unread);
            Bytes::from(both)
        }
    }
}

impl<I: AsyncRead + Unpin, C: AsRef<IdleClock>> AsyncRead for Resumable<I, C> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        let read = Pin::new(&mut this.io).poll_read(cx, buf);
        this.clock().set_read_blocked(read.is_pending());
        read
    }
}

impl<I: AsyncWrite + Unpin, C: AsRef<IdleClock>> AsyncWrite for Resumable<I, C> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.clock().set_flushed(false);
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.clock().set_flushed(false);
        Pin::new(&mut this.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let flushed = Pin::new(&mut this.io).poll_flush(cx);
        if let Poll::Ready(Ok(())) = flushed {
            this.clock().set_flushed(true);
        }
        flushed
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn clock() -> Arc<IdleClock> {
        Arc::new(IdleClock::new(Duration::from_secs(10), Arc::default()))
    }

    #[test]
    fn leftover_copies_only_what_is_unread() {
        assert!(leftover(Bytes::new(), Bytes::new()).is_empty());
        let mut big = bytes::BytesMut::with_capacity(8192);
        big.extend_from_slice(b"GET / HT");
        let kept = leftover(Bytes::new(), big.freeze());
        assert_eq!(&kept[..], b"GET / HT");
        assert_eq!(
            &leftover(
                Bytes::from_static(b"TP/1.1"),
                Bytes::from_static(b"GET / HT")
            )[..],
            b"GET / HTTP/1.1",
            "hyper's bytes were read before the ones it never saw"
        );
    }

    #[tokio::test]
    async fn the_prefix_is_read_before_the_stream() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b" world").await.expect("write");
        let mut io = Resumable::new(Bytes::from_static(b"hello"), server, clock());
        let mut got = [0u8; 11];
        io.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"hello world");
    }

    #[tokio::test]
    async fn records_a_blocked_read_and_a_flush() {
        let (mut client, server) = tokio::io::duplex(64);
        let owner = clock();
        let mut io = Resumable::new(Bytes::new(), server, Arc::clone(&owner));
        let mut buf = [0u8; 8];
        let blocked = tokio::time::timeout(Duration::from_millis(20), io.read(&mut buf)).await;
        assert!(blocked.is_err());
        assert!(owner.read_blocked());
        client.write_all(b"x").await.expect("write");
        assert_eq!(io.read(&mut buf).await.expect("read"), 1);
        assert!(!owner.read_blocked());

        io.write_all(b"y").await.expect("write");
        assert!(!owner.flushed());
        io.flush().await.expect("flush");
        assert!(owner.flushed());
    }
}
