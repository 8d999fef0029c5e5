//! What UDP and Unix datagram sockets share: the macro that gives
//! [`UdpSocket`](super::UdpSocket) and [`UnixDatagram`](super::UnixDatagram) their common
//! methods, so that both keep the same rules and documentation.

/// Gives a datagram socket type (a struct with a `src: IoSource<$std>` field) the methods both
/// kinds share: `from_std`, `into_std`, `connect`, `local_addr`, `peer_addr`, `send_to`, `send`,
/// `recv_from` and `recv`, plus `AsFd`, `AsRawFd` and conversions from and into `OwnedFd`.
///
/// `$Addr` is the address type the socket reports. `connect` and `send_to` take their peer as
/// a parameter named `$peer` of type `$Peer`, which `$arg` turns into what `std`'s methods
/// take (the expression may use `$peer`).
macro_rules! datagram_socket {
    ($Socket:ident, $std:ty, $Addr:ty, $peer:ident: $Peer:ty => $arg:expr) => {
        impl $Socket {
            /// Wraps a socket from `std`, switching it to non-blocking mode.
            ///
            /// # Errors
            ///
            /// The OS error, from switching or from registering with the reactor.
            ///
            /// # Panics
            ///
            /// Outside a run.
            pub fn from_std(s: $std) -> std::io::Result<$Socket> {
                s.set_nonblocking(true)?;
                Ok($Socket { src: $crate::lowlevel::IoSource::new(s)? })
            }

            /// The `std` socket back (still non-blocking).
            pub fn into_std(self) -> $std {
                self.src.into_inner()
            }

            #[doc = concat!(
                "Sets `", stringify!($peer), "` as the default peer for [`send`](Self::send) and ",
                "the only one [`recv`](Self::recv) hears from. Does not block (there is no ",
                "handshake)."
            )]
            ///
            /// # Errors
            ///
            /// The OS error.
            pub fn connect(&self, $peer: $Peer) -> std::io::Result<()> {
                self.src.get_ref().connect($arg)
            }

            /// The local address.
            ///
            /// # Errors
            ///
            /// The OS error.
            pub fn local_addr(&self) -> std::io::Result<$Addr> {
                self.src.get_ref().local_addr()
            }

            /// The connected peer's address.
            ///
            /// # Errors
            ///
            /// The OS error (`NotConnected` if not connected).
            pub fn peer_addr(&self) -> std::io::Result<$Addr> {
                self.src.get_ref().peer_addr()
            }

            #[doc = concat!(
                "Sends a datagram to `", stringify!($peer), "`: the number of bytes sent. A ",
                "checkpoint; cancelled, it sends nothing."
            )]
            ///
            /// # Errors
            ///
            /// The OS error; [`Cancelled`]($crate::Cancelled);
            /// [`BusyResource`]($crate::BusyResource) if another task is sending.
            pub async fn send_to(&self, buf: &[u8], $peer: $Peer) -> std::io::Result<usize> {
                let $peer = $arg;
                self.src.write_with(|s| s.send_to(buf, $peer)).await
            }

            /// Sends a datagram to the connected peer. A checkpoint.
            ///
            /// # Errors
            ///
            /// As [`send_to`](Self::send_to).
            pub async fn send(&self, buf: &[u8]) -> std::io::Result<usize> {
                self.src.write_with(|s| s.send(buf)).await
            }

            /// Receives one datagram (truncated to `buf`) and its sender. A checkpoint;
            /// cancelled, it takes nothing: the datagram stays queued for the next receive.
            ///
            /// # Errors
            ///
            /// The OS error; [`Cancelled`]($crate::Cancelled);
            /// [`BusyResource`]($crate::BusyResource) if another task is receiving.
            pub async fn recv_from(&self, buf: &mut [u8]) -> std::io::Result<(usize, $Addr)> {
                self.src.read_with(|s| s.recv_from(buf)).await
            }

            /// Receives one datagram from the connected peer. A checkpoint.
            ///
            /// # Errors
            ///
            /// As [`recv_from`](Self::recv_from).
            pub async fn recv(&self, buf: &mut [u8]) -> std::io::Result<usize> {
                self.src.read_with(|s| s.recv(buf)).await
            }
        }

        $crate::net::fd_impls!($Socket, $std; src);
        $crate::net::close_methods!($Socket, "socket"; src);
    };
}
pub(crate) use datagram_socket;
