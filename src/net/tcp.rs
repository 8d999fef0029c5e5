//! TCP: [`TcpListener`] and [`TcpStream`].

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use socket2::{Domain, Protocol, SockRef, Type};

use super::stream::{StreamCore, StreamEnd, stream_type};
use crate::lowlevel::{self, IoSource};

/// How many connections the kernel may queue before `accept` (it caps this at its own
/// `somaxconn`).
const BACKLOG: i32 = 4096;

/// Trio's choice (S9.2): keep at most 16 KiB of unsent data in the kernel, so that
/// `writable` means what it says and a slow peer is noticed early.
const NOTSENT_LOWAT: u32 = 16 * 1024;

/// A TCP socket listening for connections.
///
/// ```
/// use hatchery::net::{TcpListener, TcpStream};
/// use hatchery::nursery;
///
/// hatchery::run(async {
///     let listener = TcpListener::bind(([127, 0, 0, 1], 0))?;
///     let addr = listener.local_addr()?;
///     nursery(async |n| {
///         n.start_soon(async {
///             let (conn, _peer) = listener.accept().await?;
///             conn.write_all(b"hello").await?;
///             Ok::<_, std::io::Error>(())
///         });
///         let client = TcpStream::connect(addr).await?;
///         let mut buf = [0; 5];
///         let n = client.read(&mut buf).await?;
///         assert_eq!(&buf[..n], b"hello");
///         Ok(())
///     })
///     .await
///     .map_err(|e| e.into_first())?;
///     Ok::<_, std::io::Error>(())
/// })
/// .unwrap();
/// ```
#[derive(Debug)]
pub struct TcpListener {
    src: IoSource<std::net::TcpListener>,
}

impl TcpListener {
    /// Binds to `addr` (port 0 picks a free port; see [`local_addr`](Self::local_addr)) and
    /// listens, with `SO_REUSEADDR` as servers expect. Takes an address, not a host name: no
    /// name resolution happens here. `([127, 0, 0, 1], 8080)` and a parsed `SocketAddr` both work.
    ///
    /// # Errors
    ///
    /// The OS error (address in use, permission denied, ...).
    ///
    /// # Panics
    ///
    /// Outside a run.
    pub fn bind(addr: impl Into<SocketAddr>) -> io::Result<TcpListener> {
        let addr = addr.into();
        let socket = super::nonblocking_socket(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        socket.bind(&addr.into())?;
        socket.listen(BACKLOG)?;
        Ok(TcpListener { src: IoSource::new(std::net::TcpListener::from(socket))? })
    }

    /// Wraps a listener from `std`, switching it to non-blocking mode.
    ///
    /// # Errors
    ///
    /// The OS error from switching, or from registering with the reactor.
    ///
    /// # Panics
    ///
    /// Outside a run.
    pub fn from_std(listener: std::net::TcpListener) -> io::Result<TcpListener> {
        listener.set_nonblocking(true)?;
        Ok(TcpListener { src: IoSource::new(listener)? })
    }

    /// The `std` listener back (still non-blocking).
    pub fn into_std(self) -> std::net::TcpListener {
        self.src.into_inner()
    }

    /// The address it listens on.
    ///
    /// # Errors
    ///
    /// The OS error.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.src.get_ref().local_addr()
    }

    /// Waits for a connection and returns it with the peer's address. A checkpoint. Cancelled,
    /// it accepts nothing: the connection stays queued for the next `accept`.
    ///
    /// The stream comes with `TCP_NODELAY` on (and, on Linux, `TCP_NOTSENT_LOWAT` of 16 KiB),
    /// as Trio's `SocketStream` does.
    ///
    /// # Errors
    ///
    /// The OS error (for example `EMFILE` when out of descriptors: see
    /// [`serve_tcp`](super::serve_tcp), which backs off and retries those);
    /// [`Cancelled`](crate::Cancelled); [`BusyResource`](crate::BusyResource) if another task
    /// is accepting on this listener; [`ClosedResource`](crate::ClosedResource) after
    /// [`close`](Self::close).
    pub async fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        // Each try is a whole operation (a cancel point, a schedule point): an error that
        // keeps coming (a security module refusing every connection) must not spin the run.
        let (s, peer) = loop {
            match self.src.read_with(|l| l.accept()).await {
                Err(e) if failed_before_accept(&e) => {}
                r => break r?,
            }
        };
        Ok((TcpStream::from_connected(s)?, peer))
    }
}

/// Whether `accept` failed for one connection that failed before it could be accepted: the
/// kernel reports those as errors of `accept` itself (a client's reset, a firewall's `EPERM`,
/// the network errors Linux's accept(2) says to treat as `EAGAIN`), and they say nothing about
/// the listener. The list is Trio's (`_ignorable_accept_errno_names`), by number: EPERM,
/// ECONNABORTED, EPROTO, ENETDOWN, ENOPROTOOPT, EHOSTDOWN, ENONET (Linux only), EHOSTUNREACH,
/// EOPNOTSUPP, ENETUNREACH, ENOSR (not on the BSDs), ESOCKTNOSUPPORT, EPROTONOSUPPORT,
/// ETIMEDOUT, ECONNRESET. (Not `EACCES`, which std's `PermissionDenied` also covers.)
pub(super) fn failed_before_accept(e: &io::Error) -> bool {
    let list: &[i32] = if cfg!(any(target_os = "linux", target_os = "android")) {
        &[1, 103, 71, 100, 92, 112, 64, 113, 95, 101, 63, 94, 93, 110, 104]
    } else if cfg!(target_vendor = "apple") {
        &[1, 53, 100, 50, 42, 64, 65, 102, 51, 98, 44, 43, 60, 54]
    } else {
        &[1, 53, 92, 50, 42, 64, 65, 45, 51, 44, 43, 60, 54]
    };
    e.raw_os_error().is_some_and(|n| list.contains(&n))
}

super::fd_impls!(TcpListener, std::net::TcpListener; src);
super::close_methods!(TcpListener, "listener"; src);
super::incoming_stream!(TcpListener, TcpStream, SocketAddr);

impl TryFrom<std::net::TcpListener> for TcpListener {
    type Error = io::Error;

    /// Same as [`TcpListener::from_std`].
    fn try_from(l: std::net::TcpListener) -> io::Result<TcpListener> {
        TcpListener::from_std(l)
    }
}

/// A TCP connection.
///
/// All methods take `&self`: one task may read while another writes (a second concurrent
/// reader, or writer, gets [`BusyResource`](crate::BusyResource)), and any task may
/// [`close`](TcpStream::close) it, waking the others with
/// [`ClosedResource`](crate::ClosedResource). Dropping it closes the socket.
/// [`close_with_reset`](TcpStream::close_with_reset) closes it the same way but ends the
/// connection with a reset (RST) instead of an end of stream.
///
/// It implements `futures_io::AsyncRead` and `AsyncWrite` (on `TcpStream` and on
/// `&TcpStream`), so crates written against those traits work unchanged. Those poll-style
/// impls are not checkpoints: they fail with [`Cancelled`](crate::Cancelled) only where they
/// would block, or once the task's turn has used its
/// [yield budget](crate::Builder::yield_budget), and with
/// [`BusyResource`](crate::BusyResource) while an `async` operation uses the direction. With
/// the budget spent (and no cancellation) a poll returns `Pending` with the task woken, having
/// tried nothing: a foreign loop that polls until `Pending` (`futures::io::copy` over a socket
/// that stays ready) still lets the other tasks run and the deadlines fire. A waiting poll keeps only the waker of the latest poll, as `futures-io`
/// requires: a task may poll again with a new waker, and a future dropped while it waits
/// leaves its waker behind; neither makes anything fail. Two tasks polling one direction at
/// once are told apart from that when both poll again: the first one, replaced, is woken
/// once, takes the direction back and wakes the other, which then fails with `BusyResource`
/// if it polls again (the second task, as with the `async` methods); no two wakers wake each
/// other for ever. The `async` methods follow Trio's rules to the letter.
#[derive(Debug)]
pub struct TcpStream {
    core: StreamCore<std::net::TcpStream>,
}

stream_type!(TcpStream, std::net::TcpStream);

impl TcpStream {
    /// Connects to `addr`. A checkpoint; cancelled, the half-open socket is closed.
    ///
    /// For a host name, several addresses and happy eyeballs, use
    /// [`connect_tcp`](super::connect_tcp).
    ///
    /// # Errors
    ///
    /// The OS error (connection refused, unreachable, ...); [`Cancelled`](crate::Cancelled).
    ///
    /// # Panics
    ///
    /// Outside a run.
    pub async fn connect(addr: impl Into<SocketAddr>) -> io::Result<TcpStream> {
        let addr = addr.into();
        lowlevel::checkpoint_if_cancelled()?;
        let stream = match super::start_connect(Domain::for_address(addr), Some(Protocol::TCP), &addr.into())
            .and_then(|socket| TcpStream::from_connected(socket.into()))
        {
            Ok(stream) => stream,
            Err(e) => return super::failed_at_once(e).await,
        };
        stream.core.connected().await?;
        Ok(stream)
    }

    fn from_connected(s: std::net::TcpStream) -> io::Result<TcpStream> {
        s.set_nonblocking(true)?;
        // Best effort, as Trio: macOS refuses it (EINVAL) on a socket its peer has already
        // closed, which `accept` meets whenever a client leaves before it is accepted; that
        // must not fail the accept (nor stop a server).
        let _ = s.set_nodelay(true);
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            // Best effort: an older kernel may not know it.
            let _ = SockRef::from(&s).set_tcp_notsent_lowat(NOTSENT_LOWAT);
        }
        Ok(TcpStream { core: StreamCore::new(s)? })
    }

    /// Wraps a connected stream from `std`: switches it to non-blocking mode and turns
    /// `TCP_NODELAY` on.
    ///
    /// # Errors
    ///
    /// The OS error from those settings, or from registering with the reactor.
    ///
    /// # Panics
    ///
    /// Outside a run.
    pub fn from_std(s: std::net::TcpStream) -> io::Result<TcpStream> {
        TcpStream::from_connected(s)
    }

    /// The `std` stream back (still non-blocking).
    pub fn into_std(self) -> std::net::TcpStream {
        self.core.into_inner()
    }

    /// The local address.
    ///
    /// # Errors
    ///
    /// The OS error.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.core.get_ref().local_addr()
    }

    /// The peer's address.
    ///
    /// # Errors
    ///
    /// The OS error (`NotConnected` once the peer has gone).
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.core.get_ref().peer_addr()
    }

    /// Sets `TCP_NODELAY` (on by default).
    ///
    /// # Errors
    ///
    /// The OS error.
    pub fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        self.core.get_ref().set_nodelay(nodelay)
    }

    /// Whether `TCP_NODELAY` is on.
    ///
    /// # Errors
    ///
    /// The OS error.
    pub fn nodelay(&self) -> io::Result<bool> {
        self.core.get_ref().nodelay()
    }

    /// Sets `SO_LINGER`. `None`, the default, lets the kernel end the connection gracefully in
    /// the background when the stream is dropped. `Some(Duration::ZERO)` makes dropping it
    /// **reset** the connection instead: the peer gets an RST, not an end of stream, and data
    /// not yet sent is discarded. [`close_with_reset`](Self::close_with_reset) sets it and
    /// closes in one call.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for a duration other than zero: a lingering close blocks the thread that
    /// closes the descriptor, here the whole run, until the data is sent or the time is up
    /// (tokio deprecated its `set_linger` for that reason). To know that the peer got
    /// everything, shut down writing and read until its end of stream instead; code that
    /// accepts the blocking can still set the option through `socket2::SockRef`. The OS error.
    pub fn set_linger(&self, linger: Option<Duration>) -> io::Result<()> {
        if linger.is_some_and(|d| !d.is_zero()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a non-zero SO_LINGER would block the whole run while the descriptor closes; \
                 use None, or Some(Duration::ZERO) to reset the connection on close",
            ));
        }
        SockRef::from(self.core.get_ref()).set_linger(linger)
    }

    /// The `SO_LINGER` setting (see [`set_linger`](Self::set_linger)).
    ///
    /// # Errors
    ///
    /// The OS error.
    pub fn linger(&self) -> io::Result<Option<Duration>> {
        SockRef::from(self.core.get_ref()).linger()
    }

    /// Closes the stream abortively. As with [`close`](Self::close), tasks blocked on it wake
    /// with [`ClosedResource`](crate::ClosedResource) and later operations fail the same way;
    /// but the connection ends with a reset (`SO_LINGER` of zero) instead of an end of stream:
    /// the peer's next read fails with `ConnectionReset` (its writes with `ConnectionReset` or
    /// `BrokenPipe`), and data not yet delivered is discarded. For a proxy passing a reset on, a
    /// protocol violation, or a test of a peer's error handling.
    ///
    /// The reset goes out when the descriptor is released: when the stream is dropped (after
    /// [`into_split`](Self::into_split), when both halves are; either half reaches this method
    /// through `stream()`), which a handler that returns after calling this does at once. Until then the peer sees an open connection. Nothing is
    /// shut down first, so the peer never sees an end of stream before the reset (after a plain
    /// `close`, which sent one, this still turns what is left into a reset).
    ///
    /// Idempotent; not a checkpoint. Setting the option is best effort: should the kernel
    /// refuse it, the stream is closed all the same and dropping it ends the connection
    /// gracefully.
    pub fn close_with_reset(&self) {
        let _ = SockRef::from(self.core.get_ref()).set_linger(Some(Duration::ZERO));
        self.core.mark_closed();
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    #[test]
    fn accept_passes_over_connections_that_failed_but_not_listener_errors() {
        #[cfg(target_os = "linux")]
        for errno in [103, 104, 1, 71, 100, 92, 112, 64, 113, 95, 101, 63, 94, 93, 110] {
            assert!(super::failed_before_accept(&io::Error::from_raw_os_error(errno)), "errno {errno}");
        }
        // Out of descriptors or memory, would block, bad descriptor, invalid, EACCES: about the
        // listener (or a policy that refuses every connection).
        for errno in [24, 23, 12, 11, 9, 22, 13] {
            assert!(!super::failed_before_accept(&io::Error::from_raw_os_error(errno)), "errno {errno}");
        }
    }
}
