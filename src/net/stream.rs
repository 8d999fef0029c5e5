//! What hatchery's byte streams share: [`StreamEnd`], which holds Trio's stream rules once for
//! the socket streams' [`StreamCore`] and for the memory stream, and the macros that give each
//! stream type its methods, its halves and its `futures-io` impls.

use std::cell::{Cell, RefCell};
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::AsFd;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use socket2::SockRef;

use crate::error::{BusyResource, Cancelled, ClosedResource, WriteAllError};
use crate::lowlevel::{self, IoSource, Park};

/// A direction of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dir {
    Read,
    Write,
}

/// Marks one direction in use for the length of an operation (Trio's conflict detector).
struct InUse<'a>(&'a Cell<bool>);

impl<'a> InUse<'a> {
    fn enter(end: &'a (impl StreamEnd + ?Sized), dir: Dir) -> io::Result<InUse<'a>> {
        let flag = end.in_use(dir);
        if flag.replace(true) {
            return Err(busy(dir));
        }
        Ok(InUse(flag))
    }
}

impl Drop for InUse<'_> {
    fn drop(&mut self) {
        self.0.set(false);
    }
}

/// The `BusyResource` error of `dir`.
pub(crate) fn busy(dir: Dir) -> io::Error {
    BusyResource(match dir {
        Dir::Read => "read",
        Dir::Write => "write",
    })
    .into()
}

/// What one direction of a stream remembers of its poll-style (`futures-io`) waits, to tell a
/// task that polls again with a new waker, or a future dropped while it waited (neither may
/// fail), from two live pollers (the second fails with `BusyResource`). The rule is
/// [`StreamEnd::poll_read`]'s.
///
/// Wakers are kept in `Rc`s: copying one under the direction's borrow is a count increment,
/// not a foreign waker's clone (foreign code, which may poll the stream again). The one clone
/// a new waker needs is made by the caller with nothing borrowed ([`PollWait::wait`]).
#[derive(Debug, Default)]
pub(crate) struct PollWait {
    /// The waker of the poll-style poll waiting now.
    waiting: Option<Rc<Waker>>,
    /// The waker that `waiting` replaced, if it replaced one.
    displaced: Option<Rc<Waker>>,
    /// This wait has woken the first waker it replaced.
    handed_off: bool,
    /// The waker waiting came back after `displaced` had replaced it, and replaced it in turn,
    /// waking it: if `displaced` polls again too, both are live.
    contested: bool,
}

/// A direction's [`PollWait`], boxed while a poll-style wait is under way.
pub(crate) type LazyPollWait = RefCell<Option<Box<PollWait>>>;

/// What every kind of stream end keeps per direction for [`StreamEnd`]'s rules: the flag that
/// marks the direction in use for the length of an operation, and its poll-style waits.
#[derive(Debug, Default)]
pub(crate) struct Directions {
    in_use: [Cell<bool>; 2],
    poll_waits: [LazyPollWait; 2],
}

impl Directions {
    fn index(dir: Dir) -> usize {
        match dir {
            Dir::Read => 0,
            Dir::Write => 1,
        }
    }
}

/// What a [`PollWait`] let go of: woken or dropped by [`finish`](Released::finish) once its
/// borrow has ended (a waker's code is foreign and may call back into the stream).
#[must_use = "call finish after the borrow ends"]
#[derive(Default)]
struct Released {
    wake: Option<Rc<Waker>>,
    drop: [Option<Rc<Waker>>; 2],
}

impl Released {
    fn finish(self) {
        let Released { wake, drop: dropped } = self;
        drop(dropped);
        if let Some(w) = wake {
            w.wake_by_ref();
        }
    }
}

impl PollWait {
    /// Whether a poll with `waker` is the second of two live pollers: it was replaced, took the
    /// direction back, was replaced again by the other one, which had been woken for it and
    /// polled (so is live), and it polls again (so is live too).
    fn is_conflict(&self, waker: &Waker) -> bool {
        self.contested
            && self.displaced.as_ref().is_some_and(|d| d.will_wake(waker))
            && self.waiting.as_ref().is_some_and(|w| !w.will_wake(waker))
    }

    /// A poll with `waker` is pending: its waker replaces a different one waiting (the last
    /// poll's waker is the one to wake). The first waker replaced in a wait is woken, and so is
    /// a waker replaced by the poller it had replaced (which is back); no other. So a wake-up
    /// is always the answer to a poll of the waker's replacer, never to the woken poller's own:
    /// no two pollers can wake each other for ever.
    ///
    /// `None` if `waker` must be stored and `fresh` holds no clone of it yet: the caller makes
    /// one with the borrow released and calls again (the state may have changed meanwhile).
    fn wait(&mut self, waker: &Waker, fresh: &mut Option<Rc<Waker>>) -> Option<Released> {
        let Some(w) = &self.waiting else {
            self.waiting = Some(fresh.take()?);
            return Some(Released::default());
        };
        if w.will_wake(waker) {
            return Some(Released::default());
        }
        let old = self.waiting.replace(fresh.take()?);
        let back = self.displaced.as_ref().is_some_and(|d| d.will_wake(waker));
        let wake = if back {
            // The replaced poller is live: the one that replaced it is woken, to show whether
            // it is live too. (Not `contested` yet: `is_conflict` stopped such a poll before.)
            self.contested = true;
            old.clone()
        } else {
            // A new waker: the same task's or another's, live or not, nothing says yet.
            self.contested = false;
            if std::mem::replace(&mut self.handed_off, true) { None } else { old.clone() }
        };
        Some(Released { wake, drop: [std::mem::replace(&mut self.displaced, old), None] })
    }

    /// A poll with `waker` completed: the wait is over. If that poll was `cancelled`, it may
    /// have replaced a different waker that was waiting and then left, taking the direction's
    /// registrations with it: that waker is woken to poll again.
    fn done(&mut self, waker: &Waker, cancelled: bool) -> Released {
        let PollWait { waiting, displaced, .. } = std::mem::take(self);
        match waiting {
            Some(w) if cancelled && !w.will_wake(waker) => {
                Released { wake: Some(w), drop: [displaced, None] }
            }
            w => Released { wake: None, drop: [w, displaced] },
        }
    }
}

/// The error of a read into an empty buffer, for every stream type and `BufReader`.
pub(crate) fn empty_read() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        "read into an empty buffer (0 bytes read would mean end of stream)",
    )
}

/// One end of a byte stream with Trio's stream rules (S9.1, S9.2): the socket streams'
/// [`StreamCore`] and [`MemoryStream`](crate::testing::MemoryStream). An end provides its flags
/// and its raw steps; the provided methods apply the rules around them, so every kind of stream
/// keeps the same ones: one operation per direction at a time (a second gets `BusyResource`),
/// `ClosedResource` once closed (for writing, also once shut down), `InvalidInput` for an empty
/// read, an empty write that is still a checkpoint, `write_all`'s count, `shutdown` that
/// checkpoints before it acts, and poll-style operations that are not checkpoints and detect a
/// second task where they can (see [`poll_read`](StreamEnd::poll_read)).
pub(crate) trait StreamEnd {
    /// The end's per-direction state.
    fn directions(&self) -> &Directions;

    /// The flag that marks `dir` in use for the length of an operation.
    fn in_use(&self, dir: Dir) -> &Cell<bool> {
        &self.directions().in_use[Directions::index(dir)]
    }

    /// What `dir` remembers of its poll-style waits (allocated by the first poll-style wait, so
    /// a stream used only through its async methods pays 8 bytes per direction for it).
    fn poll_wait(&self, dir: Dir) -> &LazyPollWait {
        &self.directions().poll_waits[Directions::index(dir)]
    }

    /// Whether the end was closed.
    fn is_closed(&self) -> bool;

    /// Whether writing was shut down.
    fn write_shut(&self) -> bool;

    /// One read into a non-empty `buf`, waiting until it can complete. A checkpoint that has
    /// done nothing if it is cancelled or dropped.
    async fn read_some(&self, buf: &mut [u8]) -> io::Result<usize>;

    /// One write of a non-empty `buf`, waiting until it can complete (as `read_some`).
    async fn write_some(&self, buf: &[u8]) -> io::Result<usize>;

    /// Waits until an operation in `dir` would not wait. A checkpoint.
    async fn wait_ready(&self, dir: Dir) -> io::Result<()>;

    /// Shuts down `how`, at once.
    fn shutdown_now(&self, how: Shutdown) -> io::Result<()>;

    /// The poll-style `read_some`: not a checkpoint; fails with `Cancelled` only where it would
    /// block in a cancelled scope. Where it waits, the waker of the last poll is the one woken:
    /// a different one left by an earlier poll is replaced, and not woken (the provided
    /// `poll_read` decides that).
    fn poll_read_some(&self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>>;

    /// The poll-style `write_some` (see `poll_read_some`).
    fn poll_write_some(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>>;

    // The rules, once for every end (documented on the public methods of each stream type).

    fn check_open(&self) -> io::Result<()> {
        if self.is_closed() { Err(ClosedResource.into()) } else { Ok(()) }
    }

    fn check_writable(&self) -> io::Result<()> {
        if self.is_closed() || self.write_shut() { Err(ClosedResource.into()) } else { Ok(()) }
    }

    async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Err(empty_read());
        }
        let _in_use = InUse::enter(self, Dir::Read)?;
        self.check_open()?;
        self.read_some(buf).await
    }

    async fn write(&self, buf: &[u8]) -> io::Result<usize> {
        let _in_use = InUse::enter(self, Dir::Write)?;
        self.check_writable()?;
        if buf.is_empty() {
            lowlevel::checkpoint().await?;
            // Closed while this yielded: the write does not report success (as `op_with`).
            self.check_writable()?;
            return Ok(0);
        }
        self.write_some(buf).await
    }

    async fn write_all(&self, buf: &[u8]) -> Result<(), WriteAllError> {
        let fail = |written, error| WriteAllError { written, error };
        let _in_use = InUse::enter(self, Dir::Write).map_err(|e| fail(0, e))?;
        self.check_writable().map_err(|e| fail(0, e))?;
        if buf.is_empty() {
            lowlevel::checkpoint().await.map_err(|c| fail(0, c.into()))?;
            // Closed while this yielded: no success to report (as `op_with`).
            return self.check_writable().map_err(|e| fail(0, e));
        }
        let mut written = 0;
        while written < buf.len() {
            match self.write_some(&buf[written..]).await {
                Ok(0) => return Err(fail(written, io::ErrorKind::WriteZero.into())),
                Ok(n) => written += n,
                Err(e) => return Err(fail(written, e)),
            }
        }
        Ok(())
    }

    async fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        let _in_use = match how {
            Shutdown::Read => None,
            Shutdown::Write | Shutdown::Both => Some(InUse::enter(self, Dir::Write)?),
        };
        self.check_open()?;
        lowlevel::checkpoint().await?;
        // Closed while this yielded: the stream is its closer's now; after a
        // `close_with_reset` a shutdown would send the peer a FIN before the reset.
        self.check_open()?;
        self.shutdown_now(how)
    }

    async fn readable(&self) -> io::Result<()> {
        let _in_use = InUse::enter(self, Dir::Read)?;
        self.check_open()?;
        self.wait_ready(Dir::Read).await
    }

    async fn writable(&self) -> io::Result<()> {
        let _in_use = InUse::enter(self, Dir::Write)?;
        self.check_writable()?;
        self.wait_ready(Dir::Write).await
    }

    /// `futures-io`'s `poll_read`. Not a checkpoint. `BusyResource` while an `async` operation
    /// reads (one that starts while this waits takes the direction and wakes this poller to
    /// tell it so).
    ///
    /// Two poll-style waiters on one direction. A waker cannot say which task it wakes, a task
    /// may poll with a new waker (a combinator that wraps it), and a future may be dropped while
    /// it waits, leaving its waker behind: none of that may fail. So only the last poll's waker
    /// is woken (`futures-io`'s contract, and tokio's), and the direction remembers which waker
    /// waits and which one it replaced. The first waker replaced in a wait is woken once, so
    /// that a poller of another task is not left waiting unwoken. If that poller polls again
    /// while the other waits, it takes the direction back, and the other is woken in turn; if
    /// that one polls again too, both are live: it fails with `BusyResource` (S9.1: the second
    /// task, as with the `async` methods), and the first waits on. A dropped future never polls
    /// again, so it never makes anyone fail. No other replaced waker is woken: a task whose
    /// waker changes on every poll is polled once more per wait, and no two pollers wake each
    /// other for ever. Not detected: three pollers, or a conflicting one whose waker changes on
    /// every poll; one of them then waits without a wake-up from the stream (a cancellation
    /// still reaches a task polled with its own waker: the runtime wakes a cancelled scope's
    /// owner).
    fn poll_read(&self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        if self.in_use(Dir::Read).get() {
            return Poll::Ready(Err(busy(Dir::Read)));
        }
        self.check_open()?;
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        self.poll_waiting(Dir::Read, cx, |cx| self.poll_read_some(cx, buf))
    }

    /// `futures-io`'s `poll_write`, with [`poll_read`](StreamEnd::poll_read)'s rules.
    fn poll_write(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.in_use(Dir::Write).get() {
            return Poll::Ready(Err(busy(Dir::Write)));
        }
        self.check_writable()?;
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        self.poll_waiting(Dir::Write, cx, |cx| self.poll_write_some(cx, buf))
    }

    /// Runs one poll-style step in `dir` under [`poll_read`](StreamEnd::poll_read)'s rule for
    /// two poll-style waiters.
    fn poll_waiting<R>(
        &self,
        dir: Dir,
        cx: &mut Context<'_>,
        step: impl FnOnce(&mut Context<'_>) -> Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        if let Some(w) = self.poll_wait(dir).borrow_mut().as_mut()
            && w.is_conflict(cx.waker())
        {
            // Reported once: the other poller may be gone without a last poll (the losing
            // branch of a `select`), and then this one must not be told busy for ever. If the
            // other is live and this poller tries again, the contest starts over and one of
            // the two hears of it again.
            w.contested = false;
            return Poll::Ready(Err(busy(dir)));
        }
        let r = step(cx);
        // A new waker to keep is cloned with the direction not borrowed (`PollWait::wait`);
        // one left unused is dropped after the borrow too.
        let mut fresh = None;
        let released = loop {
            let mut wait = self.poll_wait(dir).borrow_mut();
            let released = match &r {
                Poll::Pending => wait.get_or_insert_with(Box::default).wait(cx.waker(), &mut fresh),
                Poll::Ready(r) => Some(match wait.take() {
                    Some(mut w) => {
                        let cancelled = r.as_ref().is_err_and(|e| Cancelled::from_io(e).is_some());
                        w.done(cx.waker(), cancelled)
                    }
                    None => Released::default(),
                }),
            };
            drop(wait);
            match released {
                Some(released) => break released,
                None => fresh = Some(Rc::new(cx.waker().clone())),
            }
        };
        drop(fresh);
        released.finish();
        r
    }

    /// `futures-io`'s `poll_close`: shuts down writing.
    fn poll_close(&self) -> Poll<io::Result<()>> {
        if self.in_use(Dir::Write).get() {
            return Poll::Ready(Err(busy(Dir::Write)));
        }
        self.check_open()?;
        Poll::Ready(self.shutdown_now(Shutdown::Write))
    }
}

/// A connected stream socket type from `std` (`TcpStream`, `UnixStream`).
pub(crate) trait SocketIo: AsFd + 'static
where
    for<'a> &'a Self: Read + Write,
{
    fn shutdown(&self, how: Shutdown) -> io::Result<()>;
}

impl SocketIo for std::net::TcpStream {
    fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        std::net::TcpStream::shutdown(self, how)
    }
}

impl SocketIo for std::os::unix::net::UnixStream {
    fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        std::os::unix::net::UnixStream::shutdown(self, how)
    }
}

/// A registered, non-blocking stream socket: the [`StreamEnd`] of `TcpStream` and `UnixStream`,
/// plus `close` from any task and a write side that stays shut.
#[derive(Debug)]
pub(crate) struct StreamCore<T: SocketIo>
where
    for<'a> &'a T: Read + Write,
{
    src: IoSource<T>,
    /// Operations in progress and poll-style waits, per direction (`StreamEnd`).
    dirs: Directions,
    write_shut: Cell<bool>,
    closed: Cell<bool>,
    /// Cancellation registrations of the poll-style (`futures-io`) reads and writes, one per
    /// direction; taken out while a poll runs (see [`StreamCore::with_park`]).
    poll_parks: [RefCell<Park>; 2],
}

impl<T: SocketIo> StreamCore<T>
where
    for<'a> &'a T: Read + Write,
{
    /// Registers `io`, which must already be non-blocking.
    pub(crate) fn new(io: T) -> io::Result<StreamCore<T>> {
        Ok(StreamCore {
            src: IoSource::new(io)?,
            dirs: Directions::default(),
            write_shut: Cell::new(false),
            closed: Cell::new(false),
            poll_parks: [RefCell::new(Park::new()), RefCell::new(Park::new())],
        })
    }

    /// Runs `f` with direction `i`'s poll-style registration taken out of its cell, so that no
    /// borrow is held while `f` clones, wakes or drops foreign wakers (foreign code, which may
    /// poll this stream again: it then finds a fresh registration, replaced after).
    fn with_park<R>(&self, i: usize, f: impl FnOnce(&mut Park) -> R) -> R {
        let mut park = self.poll_parks[i].take();
        let r = f(&mut park);
        let displaced = self.poll_parks[i].replace(park);
        drop(displaced);
        r
    }

    pub(crate) fn get_ref(&self) -> &T {
        self.src.get_ref()
    }

    pub(crate) fn into_inner(self) -> T {
        self.src.into_inner()
    }

    /// One `read` syscall. A short read drained the socket: say so at once rather than learn
    /// it from a read that fails with `WouldBlock` (not at end of stream, 0, after which no new
    /// edge would come). At once, inside the operation: the checkpoint after it yields, and an
    /// event that arrives meanwhile must not be overwritten by this stale news.
    fn read_now(&self, mut s: &T, buf: &mut [u8]) -> io::Result<usize> {
        let n = s.read(buf)?;
        if n > 0 && n < buf.len() {
            self.src.drained_readable();
        }
        Ok(n)
    }

    /// One `write` syscall; a short write filled the socket's buffer (see `read_now`).
    fn write_now(&self, mut s: &T, buf: &[u8]) -> io::Result<usize> {
        let n = s.write(buf)?;
        if n < buf.len() {
            self.src.filled_writable();
        }
        Ok(n)
    }

    /// Waits until the `connect` started on this socket ([`start_connect`](super::start_connect))
    /// has finished: its error, if it failed. A checkpoint.
    pub(crate) async fn connected(&self) -> io::Result<()> {
        // Writable means the attempt finished; SO_ERROR tells how.
        self.writable().await?;
        match SockRef::from(self.get_ref()).take_error()? {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    pub(crate) fn close(&self) {
        if self.closed.replace(true) {
            return;
        }
        // Let the peer see the end now (before the waiters are woken: a foreign waker that
        // panics must not keep the FIN back); the descriptor itself closes when the owner
        // drops it.
        let _ = self.src.get_ref().shutdown(Shutdown::Both);
        self.src.notify_closing();
    }

    /// Marks the stream closed and wakes its waiters with `ClosedResource`, shutting nothing
    /// down (an abortive close must not send an end of stream before its reset). Whether this
    /// call closed it (`false` if it was closed already).
    pub(crate) fn mark_closed(&self) -> bool {
        if self.closed.replace(true) {
            return false;
        }
        self.src.notify_closing();
        true
    }
}

impl<T: SocketIo> StreamEnd for StreamCore<T>
where
    for<'a> &'a T: Read + Write,
{
    fn directions(&self) -> &Directions {
        &self.dirs
    }

    fn is_closed(&self) -> bool {
        self.closed.get()
    }

    fn write_shut(&self) -> bool {
        self.write_shut.get()
    }

    async fn read_some(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.src.read_with(|s| self.read_now(s, buf)).await
    }

    async fn write_some(&self, buf: &[u8]) -> io::Result<usize> {
        self.src.write_with(|s| self.write_now(s, buf)).await
    }

    async fn wait_ready(&self, dir: Dir) -> io::Result<()> {
        match dir {
            Dir::Read => self.src.readable().await,
            Dir::Write => self.src.writable().await,
        }
    }

    fn shutdown_now(&self, how: Shutdown) -> io::Result<()> {
        if how == Shutdown::Write && self.write_shut.get() {
            return Ok(());
        }
        match self.src.get_ref().shutdown(how) {
            // The peer already reset the connection: there is nothing left to shut down.
            Err(e) if e.kind() == io::ErrorKind::NotConnected => {}
            Err(e) => return Err(e),
            Ok(()) => {}
        }
        if how != Shutdown::Read {
            self.write_shut.set(true);
        }
        Ok(())
    }

    fn poll_read_some(&self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        self.with_park(0, |park| self.src.poll_read_with(cx, park, |s| self.read_now(s, buf)))
    }

    fn poll_write_some(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.with_park(1, |park| self.src.poll_write_with(cx, park, |s| self.write_now(s, buf)))
    }
}

/// Gives a stream type (a struct with a `core: StreamCore<$std>` field) its stream methods, its
/// `futures-io` impls (on the type and on a shared reference to it) and its halves. Like the
/// macros below, it calls [`StreamEnd`]'s methods: expand it where that trait is in scope.
macro_rules! stream_type {
    ($Stream:ident, $std:ty) => {
        impl $Stream {
            /// Reads what is available, waiting until something is: the number of bytes read,
            /// or `0` at end of stream. A checkpoint. Cancelled before it completes, it reads
            /// nothing: the bytes stay in the socket for the next read.
            ///
            /// # Errors
            ///
            /// `InvalidInput` for an empty `buf` (0 is reserved for end of stream);
            /// [`BusyResource`](crate::BusyResource) if another task is reading;
            /// [`ClosedResource`](crate::ClosedResource) once closed; [`Cancelled`](crate::Cancelled);
            /// the OS error.
            pub async fn read(&self, buf: &mut [u8]) -> std::io::Result<usize> {
                self.core.read(buf).await
            }

            /// Writes some of `buf`, waiting until the socket can take something: the number
            /// of bytes written. A checkpoint; an empty `buf` writes nothing but is still one.
            ///
            /// # Errors
            ///
            /// [`BusyResource`](crate::BusyResource) if another task is writing;
            /// [`ClosedResource`](crate::ClosedResource) once closed or shut down for writing;
            /// [`Cancelled`](crate::Cancelled) (nothing was written); the OS error.
            pub async fn write(&self, buf: &[u8]) -> std::io::Result<usize> {
                self.core.write(buf).await
            }

            /// Writes all of `buf`. A checkpoint, even for an empty `buf`.
            ///
            /// If it fails, [`WriteAllError::written`](crate::WriteAllError) says how many bytes
            /// went out (the stream is not broken by a cancellation: the next write continues
            /// after those bytes, S9.3).
            ///
            /// # Errors
            ///
            /// As [`write`](Self::write), with the count.
            pub async fn write_all(&self, buf: &[u8]) -> Result<(), crate::WriteAllError> {
                self.core.write_all(buf).await
            }

            /// Shuts down reading, writing or both (`send_eof` is `Shutdown::Write`). A
            /// checkpoint, before anything is shut down. Shutting down writing is idempotent,
            /// and later writes fail with [`ClosedResource`](crate::ClosedResource); after
            /// shutting down reading, reads return end of stream once the bytes the kernel
            /// had queued are read (on Linux, for TCP, bytes arriving later are still
            /// delivered too: the peer is not told).
            ///
            /// # Errors
            ///
            /// [`BusyResource`](crate::BusyResource) if writing is shut down while another
            /// task writes; [`ClosedResource`](crate::ClosedResource); [`Cancelled`](crate::Cancelled);
            /// the OS error.
            pub async fn shutdown(&self, how: std::net::Shutdown) -> std::io::Result<()> {
                self.core.shutdown(how).await
            }

            /// Closes the stream from any task that can reach it: tasks blocked on it wake with
            /// [`ClosedResource`](crate::ClosedResource), later operations fail the same way,
            /// and the peer sees the end of the stream at once. The descriptor itself is
            /// released when the stream is dropped (which also closes it). Idempotent; not a
            /// checkpoint.
            pub fn close(&self) {
                self.core.close()
            }

            /// Whether [`close`](Self::close) was called.
            pub fn is_closed(&self) -> bool {
                self.core.is_closed()
            }

            /// Waits until the stream may be readable. A checkpoint.
            ///
            /// # Errors
            ///
            /// As [`read`](Self::read).
            pub async fn readable(&self) -> std::io::Result<()> {
                self.core.readable().await
            }

            /// Waits until a write may make progress (Trio's `wait_send_all_might_not_block`).
            /// A checkpoint.
            ///
            /// # Errors
            ///
            /// As [`write`](Self::write).
            pub async fn writable(&self) -> std::io::Result<()> {
                self.core.writable().await
            }

            /// Borrows a read half and a write half, for two tasks to use at once. (The
            /// methods take `&self`, so sharing `&self` between a reader and a writer works
            /// too; the halves only narrow what each side can do.)
            pub fn split(&self) -> (ReadHalf<'_>, WriteHalf<'_>) {
                (ReadHalf { stream: self }, WriteHalf { stream: self })
            }

            /// Splits into owned halves (sharing the stream through an `Rc`); put them back
            /// together with [`reunite`](Self::reunite). Dropping the write half shuts down
            /// writing.
            pub fn into_split(self) -> (OwnedReadHalf, OwnedWriteHalf) {
                let s = std::rc::Rc::new(self);
                (OwnedReadHalf { stream: s.clone() }, OwnedWriteHalf { stream: s, shutdown_on_drop: true })
            }

            /// Puts the halves of one [`into_split`](Self::into_split) back together.
            ///
            /// # Errors
            ///
            /// [`ReuniteError`] (holding both halves) if they come from different streams.
            pub fn reunite(read: OwnedReadHalf, write: OwnedWriteHalf) -> Result<$Stream, ReuniteError> {
                if !std::rc::Rc::ptr_eq(&read.stream, &write.stream) {
                    return Err(ReuniteError(read, write));
                }
                let mut write = write;
                write.shutdown_on_drop = false;
                let stream = read.stream;
                drop(write);
                Ok(std::rc::Rc::into_inner(stream).expect("the halves held the only references"))
            }
        }

        $crate::net::stream::async_read_impl!($Stream; core);
        $crate::net::stream::async_read_impl!(&$Stream; core);
        $crate::net::stream::async_write_impl!($Stream; core);
        $crate::net::stream::async_write_impl!(&$Stream; core);

        $crate::net::fd_impls!($Stream, $std; core);

        impl TryFrom<$std> for $Stream {
            type Error = std::io::Error;

            /// Same as [`from_std`]($Stream::from_std).
            fn try_from(s: $std) -> std::io::Result<$Stream> {
                $Stream::from_std(s)
            }
        }

        /// The read half of a borrowed stream, from `split`.
        #[derive(Debug, Clone, Copy)]
        pub struct ReadHalf<'a> {
            stream: &'a $Stream,
        }

        /// The write half of a borrowed stream, from `split`.
        #[derive(Debug, Clone, Copy)]
        pub struct WriteHalf<'a> {
            stream: &'a $Stream,
        }

        /// The owned read half of a stream, from `into_split`.
        #[derive(Debug)]
        pub struct OwnedReadHalf {
            stream: std::rc::Rc<$Stream>,
        }

        /// The owned write half of a stream, from `into_split`. Dropping it shuts down
        /// writing (the peer sees end of stream once the data already written is sent).
        #[derive(Debug)]
        pub struct OwnedWriteHalf {
            stream: std::rc::Rc<$Stream>,
            shutdown_on_drop: bool,
        }

        impl Drop for OwnedWriteHalf {
            fn drop(&mut self) {
                if self.shutdown_on_drop && !self.stream.core.is_closed() {
                    let _ = self.stream.core.poll_close();
                }
            }
        }

        /// Two halves given to `reunite` that come from different streams.
        #[derive(Debug)]
        pub struct ReuniteError(pub OwnedReadHalf, pub OwnedWriteHalf);

        impl std::fmt::Display for ReuniteError {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("tried to reunite halves that are not from the same stream")
            }
        }

        impl std::error::Error for ReuniteError {}

        $crate::net::stream::half_methods!(ReadHalf<'_>, read);
        $crate::net::stream::half_methods!(OwnedReadHalf, read);
        $crate::net::stream::half_methods!(WriteHalf<'_>, write);
        $crate::net::stream::half_methods!(OwnedWriteHalf, write);

        impl OwnedReadHalf {
            /// The whole stream, shared with the write half.
            pub fn stream(&self) -> &$Stream {
                &self.stream
            }
        }

        impl OwnedWriteHalf {
            /// The whole stream, shared with the read half.
            pub fn stream(&self) -> &$Stream {
                &self.stream
            }
        }
    };
}

/// The methods of one half: `read` halves read, `write` halves write.
macro_rules! half_methods {
    ($Half:ty, read) => {
        impl $Half {
            /// Same as the stream's `read`.
            ///
            /// # Errors
            ///
            /// As the stream's `read`.
            pub async fn read(&self, buf: &mut [u8]) -> std::io::Result<usize> {
                self.stream.core.read(buf).await
            }

            /// Same as the stream's `readable`.
            ///
            /// # Errors
            ///
            /// As the stream's `readable`.
            pub async fn readable(&self) -> std::io::Result<()> {
                self.stream.core.readable().await
            }
        }

        $crate::net::stream::async_read_impl!($Half; stream.core);
    };
    ($Half:ty, write) => {
        impl $Half {
            /// Same as the stream's `write`.
            ///
            /// # Errors
            ///
            /// As the stream's `write`.
            pub async fn write(&self, buf: &[u8]) -> std::io::Result<usize> {
                self.stream.core.write(buf).await
            }

            /// Same as the stream's `write_all`.
            ///
            /// # Errors
            ///
            /// As the stream's `write_all`.
            pub async fn write_all(&self, buf: &[u8]) -> Result<(), $crate::WriteAllError> {
                self.stream.core.write_all(buf).await
            }

            /// Shuts down writing (`send_eof`): idempotent, and later writes fail with
            /// [`ClosedResource`]($crate::ClosedResource). A checkpoint.
            ///
            /// # Errors
            ///
            /// As the stream's `shutdown`.
            pub async fn shutdown(&self) -> std::io::Result<()> {
                self.stream.core.shutdown(std::net::Shutdown::Write).await
            }

            /// Same as the stream's `writable`.
            ///
            /// # Errors
            ///
            /// As the stream's `writable`.
            pub async fn writable(&self) -> std::io::Result<()> {
                self.stream.core.writable().await
            }
        }

        $crate::net::stream::async_write_impl!($Half; stream.core);
    };
}

/// `futures_io::AsyncRead` for `$T`, whose [`StreamEnd`] is at `self.$path` (or is `self`).
macro_rules! async_read_impl {
    ($T:ty $(; $($path:ident).+)?) => {
        impl futures_io::AsyncRead for $T {
            /// Not a checkpoint: fails with [`Cancelled`]($crate::Cancelled) only where it would
            /// block in a cancelled scope. [`BusyResource`]($crate::BusyResource) while an
            /// `async` read is under way, and for the second of two tasks polling at once; a
            /// waiting read wakes only the waker of its latest poll (see
            /// [`TcpStream`]($crate::net::TcpStream)).
            fn poll_read(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &mut [u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                (&*self)$($(.$path)+)?.poll_read(cx, buf)
            }
        }
    };
}

/// `futures_io::AsyncWrite` for `$T`, whose [`StreamEnd`] is at `self.$path` (or is `self`):
/// writes go straight to the stream (flushing has nothing to do), and closing shuts down
/// writing.
macro_rules! async_write_impl {
    ($T:ty $(; $($path:ident).+)?) => {
        impl futures_io::AsyncWrite for $T {
            /// Not a checkpoint, with the rules of `poll_read`.
            fn poll_write(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                (&*self)$($(.$path)+)?.poll_write(cx, buf)
            }

            fn poll_flush(
                self: std::pin::Pin<&mut Self>,
                _cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::task::Poll::Ready(Ok(()))
            }

            /// Shuts down writing (the peer reads end of stream after the data).
            fn poll_close(
                self: std::pin::Pin<&mut Self>,
                _cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                (&*self)$($(.$path)+)?.poll_close()
            }
        }
    };
}

pub(crate) use {async_read_impl, async_write_impl, half_methods, stream_type};
