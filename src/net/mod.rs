//! Networking: TCP, UDP and Unix domain sockets on hatchery's reactor.
//!
//! Written only against [`crate::lowlevel`] (registration, readiness, parking), like `time` and
//! `sync`. The rules (Trio's S9.1 and S9.2):
//!
//! - **Every operation is a checkpoint**, even when it completes at once; cancelled before it
//!   runs, it has no effect: a cancelled read consumed no bytes, a cancelled `accept` took no
//!   connection, a cancelled `recv_from` took no datagram. Dropping the future is the same.
//! - **One task per direction**: a second task reading (or writing) the same socket while
//!   another does gets [`BusyResource`](crate::BusyResource).
//! - **Closing wakes waiters**: a stream's `close`, callable from any task that can reach it,
//!   wakes tasks blocked on it with [`ClosedResource`](crate::ClosedResource).
//! - **A cancelled `write_all` says how far it got** ([`WriteAllError`](crate::WriteAllError)),
//!   and the stream stays usable (S9.3).
//!
//! Readiness is edge-triggered where the OS allows: a read that returns less than asked for
//! marks the socket drained, so the next read waits for the OS instead of trying a syscall that
//! would fail (an echo round trip costs one `recv` and one `send`).
//!
//! A listener's `incoming()` is a `futures_core::Stream` of its connections (each item one
//! `accept`, with its rules).
//!
//! The stream types (`TcpStream`, `UnixStream`, their borrowed and owned halves, and
//! [`MemoryStream`](crate::testing::MemoryStream)) implement `futures_io::AsyncRead` and
//! `AsyncWrite`. A crate written against tokio's I/O traits instead (hyper through
//! hyper-util's `TokioIo`, tokio-rustls, tokio-util codecs) takes them through tokio-util's
//! `compat()` adapter (`tokio_util::compat::FuturesAsyncReadCompatExt`), which needs no tokio
//! runtime; what such a crate needs from a runtime besides I/O (hyper-util's `TokioExecutor`
//! and `TokioTimer`) must come from hatchery instead (a nursery to spawn into, `sleep`).
//!
//! Every socket type converts from and into its `std` type (`from_std`, `into_std`, and
//! `TryFrom`) and an `OwnedFd` (`TryFrom<OwnedFd>`, `From<_> for OwnedFd`: a descriptor handed
//! over by socket activation, say), and lends its descriptor (`AsFd`, `AsRawFd`). Coming in,
//! the socket is switched to non-blocking mode and registered with the current run; going out,
//! it is deregistered and stays non-blocking.
//!
//! Addresses are taken as `impl Into<SocketAddr>` (a `SocketAddr`, or `([127, 0, 0, 1], 80)`):
//! nothing here resolves host names except [`connect_tcp`], which does so on the blocking pool.

use std::io;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

mod connect;
mod datagram;
mod serve;
pub(crate) mod stream;
pub mod tcp;
mod udp;
pub mod unix;

pub use connect::{ConnectError, HAPPY_EYEBALLS_DELAY, connect_tcp, connect_tcp_with_delay, happy_eyeballs};
pub use serve::{ACCEPT_BACKOFF, Listen, serve_tcp, serve_tcp_in};
pub use tcp::{TcpListener, TcpStream};
pub use udp::UdpSocket;
pub use unix::{UnixDatagram, UnixListener, UnixStream};

/// `AsFd` and `AsRawFd` for a socket type whose registered I/O object is at `self.$field`, and
/// conversions from and into an `OwnedFd` through its `std` type `$std` (`from_std`,
/// `into_std`).
macro_rules! fd_impls {
    ($T:ty, $std:ty; $field:ident) => {
        impl std::os::fd::AsFd for $T {
            fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
                std::os::fd::AsFd::as_fd(self.$field.get_ref())
            }
        }

        impl std::os::fd::AsRawFd for $T {
            fn as_raw_fd(&self) -> std::os::fd::RawFd {
                std::os::fd::AsRawFd::as_raw_fd(self.$field.get_ref())
            }
        }

        impl TryFrom<std::os::fd::OwnedFd> for $T {
            type Error = std::io::Error;

            /// Wraps a socket descriptor (one inherited through socket activation, say), as
            /// `from_std` does: the descriptor must be a socket of this kind, which is not
            /// checked; it is switched to non-blocking mode and registered with this run's
            /// reactor.
            ///
            /// # Errors
            ///
            /// The OS error, from switching or from registering with the reactor (the
            /// descriptor is then closed).
            ///
            /// # Panics
            ///
            /// Outside a run.
            fn try_from(fd: std::os::fd::OwnedFd) -> std::io::Result<$T> {
                <$T>::from_std(<$std>::from(fd))
            }
        }

        impl From<$T> for std::os::fd::OwnedFd {
            /// The descriptor, deregistered from the reactor (still non-blocking).
            fn from(s: $T) -> std::os::fd::OwnedFd {
                std::os::fd::OwnedFd::from(s.into_std())
            }
        }
    };
}
pub(crate) use fd_impls;

/// `close` and `is_closed` for a listener or datagram socket whose registered I/O object is at
/// `self.$field` (`$what` names it in the docs).
macro_rules! close_methods {
    ($T:ty, $what:literal; $field:ident) => {
        impl $T {
            #[doc = concat!(
                        "Closes the ", $what, " from any task that can reach it (S9.1): a task waiting ",
                        "on it wakes with [`ClosedResource`](crate::ClosedResource), and later ",
                        "operations fail the same way, without touching the socket. The descriptor ",
                        "itself (and its address or port) is released when the ", $what, " is dropped, ",
                        "which also closes it; until then the kernel may still queue what arrives for ",
                        "it. Idempotent; not a checkpoint."
                    )]
            pub fn close(&self) {
                // Idempotent itself: a second call finds no waiter to wake.
                self.$field.notify_closing();
            }

            /// Whether [`close`](Self::close) was called.
            pub fn is_closed(&self) -> bool {
                self.$field.is_closed()
            }
        }
    };
}
pub(crate) use close_methods;

/// A listener's `incoming` stream: `pub struct Incoming<'a>` in the listener's module, each item
/// one `accept`.
macro_rules! incoming_stream {
    ($Listener:ident, $Stream:ident, $Addr:ty) => {
        /// The connections of a listener as a [`Stream`](futures_core::Stream), from
        #[doc = concat!("[`", stringify!($Listener), "::incoming`].")]
        ///
        #[doc = concat!(
            "Each item is what [`accept`](", stringify!($Listener), "::accept) would return, with ",
            "the same rules: a checkpoint, and cancelled (the item is `Some(Err(e))`, `e` carrying ",
            "the [`Cancelled`](crate::Cancelled)) or dropped while it waits, it accepts nothing: the ",
            "connection stays queued. The stream never ends."
        )]
        pub struct Incoming<'a> {
            listener: &'a $Listener,
            /// The accept in progress, kept between polls.
            accepting: Option<
                std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<($Stream, $Addr)>> + 'a>>,
            >,
        }

        impl std::fmt::Debug for Incoming<'_> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct("Incoming")
                    .field("listener", &self.listener)
                    .field("accepting", &self.accepting.is_some())
                    .finish()
            }
        }

        impl $Listener {
            /// The connections as a stream of `accept` results (see [`Incoming`]).
            pub fn incoming(&self) -> Incoming<'_> {
                Incoming { listener: self, accepting: None }
            }
        }

        impl<'a> futures_core::Stream for Incoming<'a> {
            type Item = std::io::Result<($Stream, $Addr)>;

            fn poll_next(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<Option<Self::Item>> {
                let this = &mut *self;
                let listener: &'a $Listener = this.listener;
                let accepting = this.accepting.get_or_insert_with(|| Box::pin(listener.accept()));
                let r = std::task::ready!(accepting.as_mut().poll(cx));
                this.accepting = None;
                std::task::Poll::Ready(Some(r))
            }
        }
    };
}
pub(crate) use incoming_stream;

/// A new non-blocking stream socket whose `connect` to `addr` has started (`EINPROGRESS`, the
/// usual answer, is no error). Register it, then wait with
/// [`StreamCore::connected`](stream::StreamCore::connected).
fn start_connect(domain: Domain, protocol: Option<Protocol>, addr: &SockAddr) -> io::Result<Socket> {
    const EINPROGRESS: i32 = if cfg!(any(target_os = "linux", target_os = "android")) { 115 } else { 36 };
    let socket = nonblocking_socket(domain, Type::STREAM, protocol)?;
    match socket.connect(addr) {
        Err(e) if e.raw_os_error() != Some(EINPROGRESS) => Err(e),
        _ => Ok(socket),
    }
}

/// A new socket in non-blocking mode: made so in one call where the system has
/// `SOCK_NONBLOCK`, set just after elsewhere (macOS and iOS have no such flag).
fn nonblocking_socket(domain: Domain, ty: Type, protocol: Option<Protocol>) -> io::Result<Socket> {
    #[cfg(any(
        target_os = "linux",
        target_os = "android",
        target_os = "freebsd",
        target_os = "dragonfly",
        target_os = "netbsd",
        target_os = "openbsd",
        target_os = "illumos"
    ))]
    return Socket::new(domain, ty.nonblocking(), protocol);
    #[allow(unreachable_code)]
    {
        let socket = Socket::new(domain, ty, protocol)?;
        socket.set_nonblocking(true)?;
        Ok(socket)
    }
}

/// A connect that failed before it could wait (no such file, refused at once, no route, too
/// many open files) is still a checkpoint: it yields once, shielded, before the error goes
/// back (as Trio's `_try_sync`), so that a loop retrying it lets the rest of the run go on,
/// the listener it waits for included.
async fn failed_at_once<T>(e: io::Error) -> io::Result<T> {
    crate::lowlevel::cancel_shielded_checkpoint().await;
    Err(e)
}
