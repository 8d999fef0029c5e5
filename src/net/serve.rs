//! [`serve_tcp`]: accept connections forever, one child task per connection (S9.4).

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use super::{TcpListener, TcpStream};
use crate::error::{CancelError, NurseryError};
use crate::{Nursery, TaskStatus, nursery, sleep};

/// Where [`serve_tcp`] listens: an address to bind (port 0 picks a free one), or a listener
/// that is already bound.
#[derive(Debug)]
pub enum Listen {
    /// Bind this address.
    Addr(SocketAddr),
    /// Serve this listener.
    Listener(TcpListener),
}

impl<A: Into<SocketAddr>> From<A> for Listen {
    fn from(addr: A) -> Listen {
        Listen::Addr(addr.into())
    }
}

impl From<TcpListener> for Listen {
    fn from(l: TcpListener) -> Listen {
        Listen::Listener(l)
    }
}

/// How long [`serve_tcp`] waits before accepting again after running out of descriptors or
/// memory (Trio's 100 ms).
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Accept errors that mean "out of a resource for now": back off and retry, do not crash.
fn is_transient(e: &io::Error) -> bool {
    // EMFILE, ENFILE, ENOMEM, ENOBUFS, and ENOSPC (registering the accepted connection with
    // epoll, out of `max_user_watches`) (Linux numbering; the BSDs share EMFILE/ENFILE/ENOMEM/
    // ENOSPC and number ENOBUFS 55).
    let transient: &[i32] = if cfg!(any(target_os = "linux", target_os = "android")) {
        &[24, 23, 12, 105, 28]
    } else {
        &[24, 23, 12, 55, 28]
    };
    e.raw_os_error().is_some_and(|n| transient.contains(&n))
}

/// Serves TCP connections: binds (or takes) a listener, reports its address through `status`,
/// then accepts forever, running `handler(stream)` for each connection as a child task of its
/// own nursery (Trio's `serve_tcp`/`serve_listeners`, S9.4). Made to be used with
/// [`Nursery::start`](crate::Nursery::start), which returns once the listener is bound:
///
/// ```
/// use hatchery::net::{serve_tcp, TcpStream};
/// use hatchery::{nursery, Error};
///
/// hatchery::run(async {
///     nursery(async |n| {
///         let addr = n
///             .start(|status| {
///                 serve_tcp(([127, 0, 0, 1], 0), async |conn: TcpStream| {
///                     let mut buf = [0; 64];
///                     let k = conn.read(&mut buf).await?;
///                     conn.write_all(&buf[..k]).await?;
///                     Ok::<_, Error>(())
///                 }, status)
///             })
///             .await?;
///         let client = TcpStream::connect(addr).await?;
///         client.write_all(b"echo").await?;
///         let mut buf = [0; 4];
///         client.read(&mut buf).await?;
///         assert_eq!(&buf, b"echo");
///         n.cancel_scope().cancel(); // stop serving
///         Ok::<_, Error>(())
///     })
///     .await?;
///     Ok::<_, Error>(())
/// })
/// .unwrap();
/// ```
///
/// - **Each connection's stream is closed when its handler returns** (the handler owns it, so
///   it is dropped then, whether the handler succeeded, failed or was cancelled).
/// - **Serving stops only by cancellation or an error**: a handler's error, or an accept error
///   other than the transient ones below, cancels the other handlers and comes out of
///   `serve_tcp` (the nursery's errors, as `E`); the listener is closed on the way out.
/// - **Transient accept errors** (`EMFILE`, `ENFILE`, `ENOMEM`, `ENOBUFS`, and `ENOSPC`: epoll
///   out of watches for the new connection) are reported on stderr and retried after
///   [`ACCEPT_BACKOFF`], instead of crashing the server. Errors that belong to one connection
///   that failed before it was accepted never get here: `TcpListener::accept` passes over them.
///
/// The handler is an async closure taking the stream by value; it may borrow from the
/// caller (shared state such as a channel sender or a `Mutex`).
///
/// # Errors
///
/// Binding errors (before `started`), handler errors, fatal accept errors, and
/// [`Cancelled`](crate::Cancelled) when serving is cancelled (which a cancel scope or the
/// nursery absorbs).
pub async fn serve_tcp<H, E>(
    listen: impl Into<Listen>,
    handler: H,
    status: TaskStatus<SocketAddr>,
) -> Result<Infallible, E>
where
    H: AsyncFn(TcpStream) -> Result<(), E>,
    E: From<io::Error> + From<NurseryError<E>> + CancelError,
{
    let listener = match listen.into() {
        Listen::Addr(addr) => TcpListener::bind(addr)?,
        Listen::Listener(l) => l,
    };
    status.started(listener.local_addr()?);
    serve_listener(&listener, &handler).await
}

/// Serves TCP connections as [`serve_tcp`] does, but runs each connection's handler in
/// `handlers`, a nursery of the caller's, instead of one of its own (Trio's `serve_listeners`
/// with `handler_nursery`). Cancelling the serving task then only stops accepting: the listener
/// closes, and the connections being handled go on until their handlers return, in
/// `handlers`, where a deadline can bound them. That is a graceful drain:
///
/// ```
/// use std::time::Duration;
/// use hatchery::net::{serve_tcp_in, TcpStream};
/// use hatchery::{nursery, sleep, testing, CancelScope, Error, Event};
///
/// testing::run(async {
///     let busy = Event::new();
///     // Answers after a second of work.
///     let handler = async |conn: TcpStream| {
///         let mut buf = [0; 64];
///         let k = conn.read(&mut buf).await?;
///         busy.set();
///         sleep(Duration::from_secs(1)).await?;
///         conn.write_all(&buf[..k]).await?;
///         Ok::<_, Error>(())
///     };
///     let accepting = CancelScope::new();
///     let stop_accepting = accepting.handle();
///     nursery(async |handlers| {
///         let addr = handlers
///             .start(|status| accepting.run(serve_tcp_in(handlers, ([127, 0, 0, 1], 0), &handler, status)))
///             .await?;
///         let client = TcpStream::connect(addr).await?;
///         client.write_all(b"in flight").await?;
///         busy.wait().await?; // the handler has the request
///         stop_accepting.cancel(); // shutting down: no new connections...
///         let mut buf = [0; 64];
///         let k = client.read(&mut buf).await?; // ...but this one is answered
///         assert_eq!(&buf[..k], b"in flight");
///         assert!(TcpStream::connect(addr).await.is_err(), "the listener is closed");
///         Ok::<_, Error>(())
///     })
///     .await?;
///     Ok::<_, Error>(())
/// })
/// .unwrap();
/// ```
///
/// The handler is borrowed for as long as `handlers` lives, since its connections' tasks run
/// there. A handler's error goes to `handlers` (which it cancels, by the nursery's rules), not
/// to the serving task.
///
/// Connections still waiting in the kernel's accept queue when serving stops are reset, as in
/// Trio.
///
/// # Errors
///
/// Binding errors (before `started`), fatal accept errors, [`Cancelled`](crate::Cancelled) when
/// serving is cancelled (also by a cancellation of `handlers`, which a handler's error causes),
/// and an `io::Error` if `handlers` has closed (only reachable by polling the serving future by
/// hand from a destructor during teardown).
pub async fn serve_tcp_in<'n, 'env, H, E>(
    handlers: &'n Nursery<'n, 'env, E>,
    listen: impl Into<Listen>,
    handler: &'n H,
    status: TaskStatus<SocketAddr>,
) -> Result<Infallible, E>
where
    H: AsyncFn(TcpStream) -> Result<(), E>,
    E: From<io::Error> + CancelError + 'n,
{
    let listener = match listen.into() {
        Listen::Addr(addr) => TcpListener::bind(addr)?,
        Listen::Listener(l) => l,
    };
    status.started(listener.local_addr()?);
    accept_loop("serve_tcp_in", &listener, |stream| {
        handlers.try_start_soon(handler(stream)).map_err(|e| {
            io::Error::other(format!(
                "hatchery::net::serve_tcp_in: cannot hand a connection to the handlers' nursery: {e}"
            ))
        })
    })
    .await
}

/// Accepts connections from `listener` for ever, giving each to `spawn`; backs off on
/// transient errors (reported on stderr under `name`). Ends with a fatal accept error,
/// `spawn`'s error or a cancellation.
async fn accept_loop<E: From<io::Error>>(
    name: &str,
    listener: &TcpListener,
    mut spawn: impl FnMut(TcpStream) -> io::Result<()>,
) -> Result<Infallible, E> {
    loop {
        match listener.accept().await {
            Ok((stream, _peer)) => spawn(stream)?,
            Err(e) if is_transient(&e) => {
                eprintln!("hatchery::net::{name}: accept failed ({e}); retrying in {ACCEPT_BACKOFF:?}");
                sleep(ACCEPT_BACKOFF).await.map_err(io::Error::from)?;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

async fn serve_listener<H, E>(listener: &TcpListener, handler: &H) -> Result<Infallible, E>
where
    H: AsyncFn(TcpStream) -> Result<(), E>,
    E: From<io::Error> + From<NurseryError<E>> + CancelError,
{
    let r = nursery(async |n| {
        accept_loop("serve_tcp", listener, |stream| {
            n.start_soon(handler(stream));
            Ok(())
        })
        .await
    })
    .await;
    match r {
        Err(e) => Err(E::from(e)),
        Ok(Some(never)) => match never {},
        // Only a nursery that cancels itself absorbs its cancellation, and this one never does.
        Ok(None) => Err(E::from(io::Error::other("serve_tcp: the accept loop stopped without an error"))),
    }
}
