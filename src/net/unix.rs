//! Unix domain sockets: [`UnixListener`], [`UnixStream`] and [`UnixDatagram`].

use std::io;
use std::os::unix::net::SocketAddr;
use std::path::Path;

use socket2::{Domain, SockAddr};

use super::stream::{StreamCore, StreamEnd, stream_type};
use crate::lowlevel::{self, IoSource};

/// A Unix domain socket listening for stream connections.
///
/// ```
/// use hatchery::net::{UnixListener, UnixStream};
/// use hatchery::nursery;
///
/// let dir = std::env::temp_dir().join(format!("hatchery-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).unwrap();
/// let path = dir.join("sock");
/// hatchery::run(async {
///     let listener = UnixListener::bind(&path)?;
///     nursery(async |n| {
///         n.start_soon(async {
///             let (conn, _) = listener.accept().await?;
///             conn.write_all(b"hi").await?;
///             Ok::<_, std::io::Error>(())
///         });
///         let client = UnixStream::connect(&path).await?;
///         let mut buf = [0; 2];
///         assert_eq!(client.read(&mut buf).await?, 2);
///         Ok(())
///     })
///     .await
///     .map_err(|e| e.into_first())?;
///     Ok::<_, std::io::Error>(())
/// })
/// .unwrap();
/// std::fs::remove_dir_all(&dir).unwrap();
/// ```
#[derive(Debug)]
pub struct UnixListener {
    src: IoSource<std::os::unix::net::UnixListener>,
}

impl UnixListener {
    /// Binds to `path` and listens. The path must not exist yet (remove a stale socket file
    /// first); it is not removed on drop.
    ///
    /// # Errors
    ///
    /// The OS error.
    ///
    /// # Panics
    ///
    /// Outside a run.
    pub fn bind(path: impl AsRef<Path>) -> io::Result<UnixListener> {
        let l = std::os::unix::net::UnixListener::bind(path)?;
        UnixListener::from_std(l)
    }

    /// Wraps a listener from `std`, switching it to non-blocking mode.
    ///
    /// # Errors
    ///
    /// The OS error.
    ///
    /// # Panics
    ///
    /// Outside a run.
    pub fn from_std(l: std::os::unix::net::UnixListener) -> io::Result<UnixListener> {
        l.set_nonblocking(true)?;
        Ok(UnixListener { src: IoSource::new(l)? })
    }

    /// The `std` listener back (still non-blocking).
    pub fn into_std(self) -> std::os::unix::net::UnixListener {
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

    /// Waits for a connection. A checkpoint; cancelled, it accepts nothing. As with
    /// [`TcpListener::accept`](super::TcpListener::accept), an error that concerns only the
    /// connection being accepted (one that failed before it could be, `ECONNABORTED` and the
    /// like) is skipped: the call goes on waiting for the next.
    ///
    /// # Errors
    ///
    /// The OS error; [`Cancelled`](crate::Cancelled); [`BusyResource`](crate::BusyResource);
    /// [`ClosedResource`](crate::ClosedResource) after [`close`](Self::close).
    pub async fn accept(&self) -> io::Result<(UnixStream, SocketAddr)> {
        // Each try is a whole operation (a checkpoint), as in `TcpListener::accept`.
        let (s, peer) = loop {
            match self.src.read_with(|l| l.accept()).await {
                Err(e) if super::tcp::failed_before_accept(&e) => {}
                r => break r?,
            }
        };
        Ok((UnixStream::from_std(s)?, peer))
    }
}

super::fd_impls!(UnixListener, std::os::unix::net::UnixListener; src);
super::close_methods!(UnixListener, "listener"; src);
super::incoming_stream!(UnixListener, UnixStream, SocketAddr);

/// A Unix domain stream socket: the same rules and methods as
/// [`TcpStream`](super::TcpStream).
///
/// ```
/// use hatchery::net::UnixStream;
///
/// hatchery::run(async {
///     let (a, b) = UnixStream::pair()?;
///     a.write_all(b"ping").await?;
///     a.shutdown(std::net::Shutdown::Write).await?;
///     let mut buf = [0; 8];
///     assert_eq!(b.read(&mut buf).await?, 4);
///     assert_eq!(b.read(&mut buf).await?, 0, "end of stream");
///     Ok::<_, std::io::Error>(())
/// })
/// .unwrap();
/// ```
#[derive(Debug)]
pub struct UnixStream {
    core: StreamCore<std::os::unix::net::UnixStream>,
}

stream_type!(UnixStream, std::os::unix::net::UnixStream);

impl UnixStream {
    /// Connects to the socket at `path`. A checkpoint.
    ///
    /// # Errors
    ///
    /// The OS error (no such file, connection refused, `WouldBlock` if the listener's queue
    /// is full); [`Cancelled`](crate::Cancelled).
    ///
    /// # Panics
    ///
    /// Outside a run.
    pub async fn connect(path: impl AsRef<Path>) -> io::Result<UnixStream> {
        lowlevel::checkpoint_if_cancelled()?;
        let stream = match unix_addr(path.as_ref())
            .and_then(|addr| super::start_connect(Domain::UNIX, None, &addr))
            .and_then(|socket| StreamCore::new(socket.into()))
        {
            Ok(core) => UnixStream { core },
            Err(e) => return super::failed_at_once(e).await,
        };
        stream.core.connected().await?;
        Ok(stream)
    }

    /// A connected pair.
    ///
    /// # Errors
    ///
    /// The OS error.
    ///
    /// # Panics
    ///
    /// Outside a run.
    pub fn pair() -> io::Result<(UnixStream, UnixStream)> {
        let (a, b) = std::os::unix::net::UnixStream::pair()?;
        Ok((UnixStream::from_std(a)?, UnixStream::from_std(b)?))
    }

    /// Wraps a connected stream from `std`, switching it to non-blocking mode.
    ///
    /// # Errors
    ///
    /// The OS error.
    ///
    /// # Panics
    ///
    /// Outside a run.
    pub fn from_std(s: std::os::unix::net::UnixStream) -> io::Result<UnixStream> {
        s.set_nonblocking(true)?;
        Ok(UnixStream { core: StreamCore::new(s)? })
    }

    /// The `std` stream back (still non-blocking).
    pub fn into_std(self) -> std::os::unix::net::UnixStream {
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
    /// The OS error.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.core.get_ref().peer_addr()
    }
}

/// A Unix domain datagram socket. Each operation is a checkpoint; a cancelled `recv` loses no
/// datagram (it stays queued), a cancelled `send` sends nothing.
///
/// ```
/// use hatchery::net::UnixDatagram;
///
/// hatchery::run(async {
///     let (a, b) = UnixDatagram::pair()?;
///     a.send(b"one").await?;
///     a.send(b"two").await?;
///     let mut buf = [0; 8];
///     assert_eq!(b.recv(&mut buf).await?, 3);
///     assert_eq!(&buf[..3], b"one");
///     Ok::<_, std::io::Error>(())
/// })
/// .unwrap();
/// ```
#[derive(Debug)]
pub struct UnixDatagram {
    src: IoSource<std::os::unix::net::UnixDatagram>,
}

impl UnixDatagram {
    /// Binds to `path`.
    ///
    /// # Errors
    ///
    /// The OS error.
    ///
    /// # Panics
    ///
    /// Outside a run.
    pub fn bind(path: impl AsRef<Path>) -> io::Result<UnixDatagram> {
        UnixDatagram::from_std(std::os::unix::net::UnixDatagram::bind(path)?)
    }

    /// A socket bound to no address.
    ///
    /// # Errors
    ///
    /// The OS error.
    ///
    /// # Panics
    ///
    /// Outside a run.
    pub fn unbound() -> io::Result<UnixDatagram> {
        UnixDatagram::from_std(std::os::unix::net::UnixDatagram::unbound()?)
    }

    /// A connected pair.
    ///
    /// # Errors
    ///
    /// The OS error.
    ///
    /// # Panics
    ///
    /// Outside a run.
    pub fn pair() -> io::Result<(UnixDatagram, UnixDatagram)> {
        let (a, b) = std::os::unix::net::UnixDatagram::pair()?;
        Ok((UnixDatagram::from_std(a)?, UnixDatagram::from_std(b)?))
    }
}

super::datagram::datagram_socket!(
    UnixDatagram,
    std::os::unix::net::UnixDatagram,
    SocketAddr,
    path: impl AsRef<Path> => path.as_ref()
);

/// The address of the socket file at `path`. A NUL byte anywhere is refused, as std's `bind`
/// and datagram calls refuse it: the kernel would stop the name at the first one (connecting to
/// another file than the one named), or read a leading one as a Linux abstract name, which no
/// other entry point here accepts.
fn unix_addr(path: &Path) -> io::Result<SockAddr> {
    use std::os::unix::ffi::OsStrExt;
    if path.as_os_str().as_bytes().contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a Unix socket path must not contain NUL bytes",
        ));
    }
    SockAddr::unix(path)
}
