//! [`connect_tcp`]: name resolution plus happy eyeballs (RFC 8305, Trio's S9.5).

use std::cell::RefCell;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

use super::TcpStream;
use crate::sync::Event;
use crate::{move_on_after, nursery};

/// How long [`connect_tcp`] lets one attempt run before starting the next in parallel
/// (RFC 8305's recommended 250 ms, Trio's default).
pub const HAPPY_EYEBALLS_DELAY: Duration = Duration::from_millis(250);

/// Every attempt of a [`connect_tcp`] (or [`happy_eyeballs`]) failed: the target and each
/// attempt's address and error, in the order the attempts were started. Found inside the
/// returned `io::Error` (its `get_ref` downcasts to it).
#[derive(Debug)]
pub struct ConnectError {
    target: String,
    attempts: Vec<(SocketAddr, io::Error)>,
}

impl ConnectError {
    /// What was being connected to (`host:port`).
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Each attempt's address and error.
    pub fn attempts(&self) -> &[(SocketAddr, io::Error)] {
        &self.attempts
    }
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.attempts.is_empty() {
            return write!(f, "no results found for hostname lookup of {}", self.target);
        }
        write!(f, "all attempts to connect to {} failed:", self.target)?;
        for (addr, e) in &self.attempts {
            write!(f, " [{addr}: {e}]")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConnectError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.attempts.last().map(|(_, e)| e as _)
    }
}

impl From<ConnectError> for io::Error {
    fn from(e: ConnectError) -> io::Error {
        // One kind if the attempts agree on it (all refused, say), else `Other`.
        let kind = match e.attempts.split_first() {
            None => io::ErrorKind::NotFound,
            Some(((_, first), rest)) if rest.iter().all(|(_, x)| x.kind() == first.kind()) => first.kind(),
            Some(_) => io::ErrorKind::Other,
        };
        io::Error::new(kind, e)
    }
}

/// Connects to `host:port`: resolves `host` on the blocking pool ([`to_thread`](crate::to_thread);
/// an IP literal needs no lookup), then races the addresses with happy eyeballs (see
/// [`happy_eyeballs`]) with [`HAPPY_EYEBALLS_DELAY`]. A checkpoint; cancelled, every socket it
/// opened is closed.
///
/// ```
/// use hatchery::net::{connect_tcp, TcpListener};
///
/// hatchery::run(async {
///     let listener = TcpListener::bind(([127, 0, 0, 1], 0))?;
///     let port = listener.local_addr()?.port();
///     let stream = connect_tcp("localhost", port).await?;
///     assert_eq!(stream.peer_addr()?.port(), port);
///     Ok::<_, std::io::Error>(())
/// })
/// .unwrap();
/// ```
///
/// # Errors
///
/// `InvalidInput` for an empty host; the lookup's error; [`ConnectError`] (inside the
/// `io::Error`) when the lookup found nothing or every attempt failed;
/// [`Cancelled`](crate::Cancelled).
pub async fn connect_tcp(host: &str, port: u16) -> io::Result<TcpStream> {
    connect_tcp_with_delay(host, port, HAPPY_EYEBALLS_DELAY).await
}

/// [`connect_tcp`] with another delay between attempts.
///
/// # Errors
///
/// As [`connect_tcp`].
pub async fn connect_tcp_with_delay(host: &str, port: u16, delay: Duration) -> io::Result<TcpStream> {
    if host.is_empty() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "connect_tcp: empty host name"));
    }
    let target = format!("{host}:{port}");
    let addrs: Vec<SocketAddr> = match host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => {
            let owned = host.to_owned();
            // Abandoned on cancellation, as Trio's `getaddrinfo`: a timeout around a connect
            // must not wait for a resolver that takes tens of seconds (the lookup's thread
            // finishes on its own, and its answer is dropped).
            crate::thread::ThreadOptions::new()
                .abandon_on_cancel(true)
                .run(move || (owned.as_str(), port).to_socket_addrs().map(Iterator::collect))
                .await??
        }
    };
    happy_eyeballs_to(target, addrs, delay, async |addr| TcpStream::connect(addr).await).await
}

/// Happy eyeballs over any connect function: the algorithm of [`connect_tcp`], for other
/// transports or a custom resolver. Trio's S9.5:
///
/// - the addresses are reordered so that the first one of the other family (IPv4 after IPv6
///   or the reverse) comes second (RFC 6555 §5.4);
/// - attempt 1 starts at once; each next attempt starts when the previous one *failed* or
///   `delay` after it started, whichever comes first;
/// - the first success cancels every other attempt; a connection that wins a race it has
///   already lost is dropped (closed);
/// - if every attempt fails, the error holds all of them ([`ConnectError`]).
///
/// ```
/// use std::time::Duration;
/// use hatchery::net::happy_eyeballs;
/// use hatchery::{sleep, testing, now, Instant};
///
/// testing::run(async {
///     let addrs = ["10.0.0.1:80".parse().unwrap(), "10.0.0.2:80".parse().unwrap()];
///     // The first address hangs; the second answers 100 ms after its start.
///     let won = happy_eyeballs(&addrs, Duration::from_millis(250), async |a| {
///         if a.ip().to_string() == "10.0.0.1" {
///             hatchery::sleep_forever().await?;
///         }
///         sleep(Duration::from_millis(100)).await?;
///         Ok(a)
///     })
///     .await?;
///     assert_eq!(won, addrs[1]);
///     assert_eq!(now(), Instant::ZERO + Duration::from_millis(350));
///     Ok::<_, std::io::Error>(())
/// })
/// .unwrap();
/// ```
///
/// # Errors
///
/// [`ConnectError`] inside the `io::Error` (no addresses, or every attempt failed);
/// [`Cancelled`](crate::Cancelled) if cancelled from outside.
pub async fn happy_eyeballs<T, F>(addrs: &[SocketAddr], delay: Duration, connect: F) -> io::Result<T>
where
    F: AsyncFn(SocketAddr) -> io::Result<T>,
{
    let target = match addrs.first() {
        Some(a) => a.to_string(),
        None => String::from("(no addresses)"),
    };
    happy_eyeballs_to(target, addrs.to_vec(), delay, connect).await
}

/// Moves the first address of the other family to the second position (RFC 6555 §5.4).
fn interleave_first(addrs: &mut Vec<SocketAddr>) {
    let Some(first) = addrs.first() else { return };
    let v4 = first.is_ipv4();
    if let Some(i) = addrs.iter().position(|a| a.is_ipv4() != v4) {
        let other = addrs.remove(i);
        addrs.insert(1, other);
    }
}

async fn happy_eyeballs_to<T, F>(
    target: String,
    mut addrs: Vec<SocketAddr>,
    delay: Duration,
    connect: F,
) -> io::Result<T>
where
    F: AsyncFn(SocketAddr) -> io::Result<T>,
{
    crate::lowlevel::checkpoint_if_cancelled()?;
    if addrs.is_empty() {
        return Err(ConnectError { target, attempts: Vec::new() }.into());
    }
    interleave_first(&mut addrs);
    let failed: Vec<Event> = addrs.iter().map(|_| Event::new()).collect();
    // Each attempt's failure, by attempt index (so the report keeps the start order).
    let failures: RefCell<Vec<Option<io::Error>>> = RefCell::new(addrs.iter().map(|_| None).collect());
    let winner: RefCell<Option<T>> = RefCell::new(None);
    let outcome = nursery(async |n| {
        for (i, &addr) in addrs.iter().enumerate() {
            let (failed, failures, winner, connect) = (&failed[i], &failures, &winner, &connect);
            n.start_soon(async move {
                match connect(addr).await {
                    Ok(conn) => {
                        let mut w = winner.borrow_mut();
                        if w.is_none() {
                            *w = Some(conn);
                            n.cancel_scope().cancel();
                        }
                        // else: a late second success; `conn` is dropped (closed) here.
                    }
                    // Cancelled because another attempt won (or from outside: then the
                    // nursery reports the cancellation itself).
                    Err(e) if crate::Cancelled::from_io(&e).is_some() => return Err(e),
                    Err(e) => {
                        failures.borrow_mut()[i] = Some(e);
                        failed.set();
                    }
                }
                Ok(())
            });
            if i + 1 < addrs.len() {
                move_on_after(delay, async { failed.wait().await.map_err(io::Error::from) }).await?;
            }
        }
        Ok::<_, io::Error>(())
    })
    .await;
    if let Some(conn) = winner.into_inner() {
        // A win cancels the nursery's own scope, which absorbs it; anything else is an error
        // from outside (a cancellation), and the connection is dropped.
        return match outcome {
            Ok(_) => Ok(conn),
            Err(e) => Err(e.into()),
        };
    }
    outcome.map_err(io::Error::from)?;
    let attempts =
        addrs.into_iter().zip(failures.into_inner()).filter_map(|(a, e)| e.map(|e| (a, e))).collect();
    Err(ConnectError { target, attempts }.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_address_of_the_other_family_comes_second() {
        let p = |s: &str| s.parse::<SocketAddr>().unwrap();
        let mut v = vec![p("[::1]:1"), p("[::2]:1"), p("[::3]:1"), p("1.1.1.1:1"), p("2.2.2.2:1")];
        interleave_first(&mut v);
        assert_eq!(v, [p("[::1]:1"), p("1.1.1.1:1"), p("[::2]:1"), p("[::3]:1"), p("2.2.2.2:1")]);
        let mut same = vec![p("1.1.1.1:1"), p("2.2.2.2:1")];
        interleave_first(&mut same);
        assert_eq!(same, [p("1.1.1.1:1"), p("2.2.2.2:1")]);
    }
}
