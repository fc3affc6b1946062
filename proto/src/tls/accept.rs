//! The accept side of every server: plaintext, or TLS with the current certificates.

use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tonic::transport::server::Connected;

use super::{identity_of, TlsCerts};
use crate::peer::PeerInfo;

/// How long a TLS handshake may take before the connection is dropped: a peer that opens a
/// connection and says nothing must not hold a slot for long.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes in progress at once; past it, accepting waits for one to end. Bounds what a
/// flood of connections that never finish their handshake can hold.
pub const MAX_HANDSHAKES: usize = 256;

const ACCEPT_PAUSE_MIN: Duration = Duration::from_millis(10);
const ACCEPT_PAUSE_MAX: Duration = Duration::from_secs(1);

enum Conn {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// An accepted connection, with who is at the other end; tonic hands the [`PeerInfo`] to every
/// request on it.
pub struct Accepted {
    conn: Conn,
    peer: PeerInfo,
}

impl Connected for Accepted {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.peer.clone()
    }
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match &mut $self.get_mut().conn {
            Conn::Plain($s) => {
                let $s = Pin::new($s);
                $e
            }
            Conn::Tls($s) => {
                let $s = Pin::new($s.as_mut());
                $e
            }
        }
    };
}

impl AsyncRead for Accepted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for Accepted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => s.poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_shutdown(cx))
    }

    // hyper writes headers and bodies as vectors: without these a plaintext connection would
    // lose writev and pay one syscall per buffer.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match &self.conn {
            Conn::Plain(s) => s.is_write_vectored(),
            Conn::Tls(s) => s.is_write_vectored(),
        }
    }
}

type Incoming = Pin<Box<dyn Stream<Item = io::Result<Accepted>> + Send>>;

/// The connections of `listener`, with Nagle's algorithm off, and through TLS when `tls` is
/// given.
///
/// Nagle: tonic applies its own `tcp_nodelay` only to listeners it binds itself, and a server
/// handed a listener would otherwise hold back small responses until the peer's delayed ACK
/// (40 ms on Linux): that was the whole p99 of strong writes, whose Raft rounds wait on such
/// responses.
///
/// Accept errors never reach tonic, which retries them at once: out of file descriptors
/// (`EMFILE`), every retry fails again immediately and the server spun at 100 % CPU. They are
/// logged and retried after a pause that grows to a second, so the process keeps serving the
/// connections it has until some close.
///
/// TLS handshakes run in tasks of their own, at most [`MAX_HANDSHAKES`] at once and each for
/// at most [`HANDSHAKE_TIMEOUT`], so that a peer that connects and stalls delays nobody; failed
/// ones are counted in `tls.stats.handshake_failures`, never handed to tonic.
pub fn incoming(listener: TcpListener, tls: Option<Arc<TlsCerts>>) -> Incoming {
    match tls {
        None => Box::pin(futures::stream::unfold(listener, |listener| async move {
            let (stream, addr) = accept(&listener).await;
            let peer = PeerInfo {
                addr: Some(addr),
                cert: None,
            };
            Some((
                Ok(Accepted {
                    conn: Conn::Plain(stream),
                    peer,
                }),
                listener,
            ))
        })),
        Some(tls) => {
            let (tx, rx) = mpsc::channel(64);
            tokio::spawn(accept_tls(listener, tls, tx));
            Box::pin(futures::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|conn| (Ok(conn), rx))
            }))
        }
    }
}

async fn accept(listener: &TcpListener) -> (TcpStream, std::net::SocketAddr) {
    let mut pause = ACCEPT_PAUSE_MIN;
    loop {
        match listener.accept().await {
            Ok((stream, addr)) => {
                // Only a latency setting: a socket that refuses it still works.
                let _ = stream.set_nodelay(true);
                return (stream, addr);
            }
            Err(e) => {
                tracing::warn!(error = %e, pause_ms = pause.as_millis() as u64, "accept failed; pausing");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(ACCEPT_PAUSE_MAX);
            }
        }
    }
}

/// Accepts until the server drops its end of `tx`.
async fn accept_tls(listener: TcpListener, tls: Arc<TlsCerts>, tx: mpsc::Sender<Accepted>) {
    let slots = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let permit = tokio::select! {
            _ = tx.closed() => return,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let (stream, addr) = tokio::select! {
            _ = tx.closed() => return,
            accepted = accept(&listener) => accepted,
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.server_config());
        let (tx, tls) = (tx.clone(), tls.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let stream =
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => {
                        tls.stats.handshake_failures.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(%addr, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tls.stats.handshake_failures.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(%addr, "TLS handshake timed out");
                        return;
                    }
                };
            let cert = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|leaf| identity_of(leaf))
                .map(Arc::new);
            let peer = PeerInfo {
                addr: Some(addr),
                cert,
            };
            let _ = tx
                .send(Accepted {
                    conn: Conn::Tls(Box::new(stream)),
                    peer,
                })
                .await;
        });
    }
}
