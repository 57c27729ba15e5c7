//! The abrupt-reset fault: make the connector see `ECONNRESET` and no close
//! frame.
//!
//! actix-web owns the socket, so two hooks are needed:
//!
//! 1. [`on_connect`] runs for each accepted TCP connection and stores its raw
//!    fd in the connection's extensions, behind an `Rc` that the connection
//!    owns. The WebSocket handler takes a `Weak` to it, so it can later reach
//!    the socket exactly while the connection still exists.
//! 2. [`AbortableBody`] wraps the WebSocket response body. To reset, the
//!    session sets `SO_LINGER` to 0 on the fd and fires the body's abort
//!    channel; the body then yields an error, the HTTP/1 dispatcher gives up
//!    on the connection and drops the socket at once, and a close with linger
//!    0 makes the kernel send RST instead of FIN.
//!
//! actix-http logs that body error ("Response payload stream error"); it is
//! the expected trace of an injected reset.

use std::{
    any::Any,
    future::Future,
    os::fd::{AsRawFd, BorrowedFd, RawFd},
    pin::Pin,
    rc::{Rc, Weak},
    task::{Context, Poll},
    time::Duration,
};

use actix_web::{
    body::{BodySize, BoxBody, MessageBody},
    dev::Extensions,
    rt::net::TcpStream,
    web::Bytes,
};
use tokio::sync::oneshot;

/// The raw fd of an accepted connection; lives exactly as long as the
/// connection's extensions, i.e. the connection.
pub(crate) struct ConnFd(Rc<RawFd>);

/// `HttpServer::on_connect` hook: remembers the socket of each connection,
/// plain or (in TLS mode) under its TLS layer.
pub(crate) fn on_connect(conn: &dyn Any, ext: &mut Extensions) {
    type Tls = actix_tls::accept::rustls_0_23::TlsStream<TcpStream>;
    let tcp = conn
        .downcast_ref::<TcpStream>()
        .or_else(|| conn.downcast_ref::<Tls>().map(|tls| tls.get_ref().0));
    if let Some(tcp) = tcp {
        ext.insert(ConnFd(Rc::new(tcp.as_raw_fd())));
    }
}

/// A handle on a connection's socket that does not keep it open.
#[derive(Clone, Default)]
pub(crate) struct SocketRef(Option<Weak<RawFd>>);

impl SocketRef {
    pub(crate) fn from_conn(conn: Option<&ConnFd>) -> Self {
        SocketRef(conn.map(|c| Rc::downgrade(&c.0)))
    }

    /// Sets `SO_LINGER` to 0 so that the coming close sends RST. `false`
    /// when the connection is already gone.
    pub(crate) fn linger_zero(&self) -> bool {
        let Some(fd) = self.0.as_ref().and_then(Weak::upgrade) else {
            return false;
        };
        // SAFETY: the strong count proves the connection's extensions, and
        // so the connection and its fd, are alive. They live on this
        // single-threaded worker, so nothing can close the fd between the
        // upgrade and the `setsockopt` below.
        let borrowed = unsafe { BorrowedFd::borrow_raw(*fd) };
        match socket2::SockRef::from(&borrowed).set_linger(Some(Duration::ZERO)) {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(%error, "reset_linger_failed");
                false
            }
        }
    }
}

/// The WebSocket response body, with a way to fail it on purpose.
pub(crate) struct AbortableBody {
    inner: BoxBody,
    abort: Option<oneshot::Receiver<()>>,
}

/// Fires the abort of an [`AbortableBody`].
pub(crate) struct AbortHandle(Option<oneshot::Sender<()>>);

impl AbortHandle {
    pub(crate) fn abort(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

impl AbortableBody {
    pub(crate) fn wrap(inner: BoxBody) -> (AbortableBody, AbortHandle) {
        let (tx, rx) = oneshot::channel();
        (AbortableBody { inner, abort: Some(rx) }, AbortHandle(Some(tx)))
    }
}

/// The error the aborted body yields.
#[derive(Debug, thiserror::Error)]
#[error("connection reset injected by the simulator")]
struct InjectedReset;

impl MessageBody for AbortableBody {
    type Error = Box<dyn std::error::Error>;

    fn size(&self) -> BodySize {
        self.inner.size()
    }

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Self::Error>>> {
        let this = self.get_mut();
        if let Some(abort) = this.abort.as_mut() {
            match Pin::new(abort).poll(cx) {
                Poll::Ready(Ok(())) => return Poll::Ready(Some(Err(Box::new(InjectedReset)))),
                // The session ended without a reset: nothing to watch any more.
                Poll::Ready(Err(_)) => this.abort = None,
                Poll::Pending => {}
            }
        }
        Pin::new(&mut this.inner).poll_next(cx)
    }
}
