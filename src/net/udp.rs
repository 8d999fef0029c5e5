//! UDP: [`UdpSocket`].

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

use crate::lowlevel::IoSource;

/// A UDP socket. Each operation is a checkpoint; a cancelled `recv_from` loses no datagram (it
/// stays queued for the next receive), a cancelled `send_to` sends nothing.
///
/// ```
/// use hatchery::net::UdpSocket;
///
/// hatchery::run(async {
///     let a = UdpSocket::bind(([127, 0, 0, 1], 0))?;
///     let b = UdpSocket::bind(([127, 0, 0, 1], 0))?;
///     a.send_to(b"ping", b.local_addr()?).await?;
///     let mut buf = [0; 16];
///     let (n, from) = b.recv_from(&mut buf).await?;
///     assert_eq!((&buf[..n], from), (&b"ping"[..], a.local_addr()?));
///     Ok::<_, std::io::Error>(())
/// })
/// .unwrap();
/// ```
#[derive(Debug)]
pub struct UdpSocket {
    src: IoSource<std::net::UdpSocket>,
}

impl UdpSocket {
    /// Binds to `addr` (port 0 picks a free port).
    ///
    /// # Errors
    ///
    /// The OS error.
    ///
    /// # Panics
    ///
    /// Outside a run.
    pub fn bind(addr: impl Into<SocketAddr>) -> io::Result<UdpSocket> {
        let addr = addr.into();
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM.nonblocking(), Some(Protocol::UDP))?;
        socket.bind(&addr.into())?;
        Ok(UdpSocket { src: IoSource::new(std::net::UdpSocket::from(socket))? })
    }

    /// Wraps a socket from `std`, switching it to non-blocking mode.
    ///
    /// # Errors
    ///
    /// The OS error.
    ///
    /// # Panics
    ///
    /// Outside a run.
    pub fn from_std(s: std::net::UdpSocket) -> io::Result<UdpSocket> {
        s.set_nonblocking(true)?;
        Ok(UdpSocket { src: IoSource::new(s)? })
    }

    /// The `std` socket back (still non-blocking).
    pub fn into_std(self) -> std::net::UdpSocket {
        self.src.into_inner()
    }

    /// Sets the default peer for [`send`](Self::send) and the only one [`recv`](Self::recv)
    /// hears from. Does not block (UDP has no handshake).
    ///
    /// # Errors
    ///
    /// The OS error.
    pub fn connect(&self, addr: impl Into<SocketAddr>) -> io::Result<()> {
        self.src.get_ref().connect(addr.into())
    }

    /// The local address.
    ///
    /// # Errors
    ///
    /// The OS error.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.src.get_ref().local_addr()
    }

    /// The connected peer's address.
    ///
    /// # Errors
    ///
    /// The OS error (`NotConnected` if not connected).
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.src.get_ref().peer_addr()
    }

    /// Sends a datagram to `addr`. A checkpoint.
    ///
    /// # Errors
    ///
    /// The OS error; [`Cancelled`](crate::Cancelled) (nothing was sent).
    pub async fn send_to(&self, buf: &[u8], addr: impl Into<SocketAddr>) -> io::Result<usize> {
        let addr = addr.into();
        self.src.write_with(|s| s.send_to(buf, addr)).await
    }

    /// Sends a datagram to the connected peer. A checkpoint.
    ///
    /// # Errors
    ///
    /// As [`send_to`](Self::send_to).
    pub async fn send(&self, buf: &[u8]) -> io::Result<usize> {
        self.src.write_with(|s| s.send(buf)).await
    }

    /// Receives one datagram (truncated to `buf`) and its sender. A checkpoint; cancelled, it
    /// takes nothing.
    ///
    /// # Errors
    ///
    /// The OS error; [`Cancelled`](crate::Cancelled); [`BusyResource`](crate::BusyResource) if
    /// another task is receiving.
    pub async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        self.src.read_with(|s| s.recv_from(buf)).await
    }

    /// Receives one datagram from the connected peer. A checkpoint.
    ///
    /// # Errors
    ///
    /// As [`recv_from`](Self::recv_from).
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.src.read_with(|s| s.recv(buf)).await
    }

    /// Sets `SO_BROADCAST`.
    ///
    /// # Errors
    ///
    /// The OS error.
    pub fn set_broadcast(&self, on: bool) -> io::Result<()> {
        self.src.get_ref().set_broadcast(on)
    }
}

super::fd_impls!(UdpSocket; src);
