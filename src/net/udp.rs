//! UDP: [`UdpSocket`].

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Type};

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
        let socket = super::nonblocking_socket(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        socket.bind(&addr.into())?;
        Ok(UdpSocket { src: IoSource::new(std::net::UdpSocket::from(socket))? })
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

super::datagram::datagram_socket!(UdpSocket, std::net::UdpSocket, SocketAddr, addr: impl Into<SocketAddr> => addr.into());
