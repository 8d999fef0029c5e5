//! [`MemoryStream`]: a connected pair of in-memory byte streams with the same API and rules as
//! [`TcpStream`](crate::net::TcpStream), for tests and in-process plumbing.
//!
//! # How it works
//!
//! A pair shares one `Rc<RefCell<Pair>>` holding two [`Pipe`]s, one per direction: end `i`
//! writes into `pipes[i]` and reads from `pipes[1 - i]`. A pipe is a bounded `VecDeque<u8>`,
//! two flags (`eof`: its writer will write no more; `reader_gone`: its reader will read no
//! more) and one waker slot per side (`reader`, `writer`), which also says whether an `async`
//! operation or a poll-style (`futures-io`) poll waits there. Each end keeps, in the same
//! per-direction record as the socket streams (`Directions`), Trio's conflict detector (one
//! operation per direction) and the poll-style waits; besides, its `closed` flag and, for the
//! poll-style operations, two [`Park`]s.
//!
//! The stream rules (one operation per direction, closed and shut-down checks, empty buffers,
//! `write_all`'s count) are the socket streams' own: `MemoryStream` is a [`StreamEnd`] and gives
//! only its flags and raw steps. A step follows the parking protocol of [`lowlevel`]: a cancel
//! point on entry; if it can complete at once, a cancel-shielded schedule point **before** it
//! touches the pipe (so a future dropped during that yield has done nothing: no byte taken or
//! given without the caller learning it); then it completes synchronously in the poll that
//! returns `Ready`. Otherwise it puts its waker in its slot and parks with a [`Park`]; whoever
//! changes the pipe (a write, a read that frees space, a shutdown, a close) wakes the slot, and
//! the operation decides on its own next poll: completed, or cancelled (nothing touched).
//!
//! A slot's rules are the reactor's for a socket: a waiter polled again with a new waker
//! replaces its old one without waking it (waking it would poll the task again, with yet
//! another waker if a combinator wraps it, for ever); an `async` operation displaces a
//! poll-style waiter and wakes it (it then finds the direction busy); a poll-style poll never
//! displaces an `async` operation. Two poll-style waiters are [`StreamEnd::poll_read`]'s
//! business.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::net::Shutdown;
use std::num::NonZeroUsize;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use crate::error::{ClosedResource, WriteAllError};
use crate::lowlevel::{self, Park};
use crate::net::stream::{Dir, Directions, StreamEnd, busy};

/// Bytes each direction of [`memory_stream_pair`] buffers: 64 KiB, a socket buffer's order of
/// magnitude.
pub const DEFAULT_MEMORY_STREAM_CAPACITY: usize = 64 * 1024;

/// A connected pair of [`MemoryStream`]s, each direction buffering up to
/// [`DEFAULT_MEMORY_STREAM_CAPACITY`] bytes (Trio's `memory_stream_pair`, with the rules of
/// `SocketStream`).
///
/// ```
/// use hatchery::testing::{self, memory_stream_pair};
///
/// testing::run(async {
///     let (a, b) = memory_stream_pair();
///     a.write_all(b"ping").await?;
///     a.shutdown(std::net::Shutdown::Write).await?;
///     let mut buf = [0; 8];
///     let n = b.read(&mut buf).await?;
///     assert_eq!(&buf[..n], b"ping");
///     assert_eq!(b.read(&mut buf).await?, 0, "end of stream");
///     Ok::<_, std::io::Error>(())
/// })
/// .unwrap();
/// ```
pub fn memory_stream_pair() -> (MemoryStream, MemoryStream) {
    memory_stream_pair_with_capacity(DEFAULT_MEMORY_STREAM_CAPACITY)
}

/// Like [`memory_stream_pair`], with `capacity` bytes of buffer per direction: a write waits
/// while its direction holds `capacity` unread bytes, and writes at most the free space. A
/// capacity of 0 is taken as 1 (nothing could ever be written), as `BufReader` and `BufWriter`
/// do.
pub fn memory_stream_pair_with_capacity(capacity: usize) -> (MemoryStream, MemoryStream) {
    let capacity = capacity.max(1);
    let pair = Rc::new(RefCell::new(Pair { pipes: [Pipe::new(capacity), Pipe::new(capacity)] }));
    (MemoryStream::new(pair.clone(), 0), MemoryStream::new(pair, 1))
}

/// One end of an in-memory byte stream, from [`memory_stream_pair`].
///
/// It follows [`TcpStream`](crate::net::TcpStream)'s rules exactly, so code and tests written
/// against one run against the other:
///
/// - every `async` operation is a checkpoint, even when it completes at once; cancelled (or
///   dropped) before it completes, it has no effect: a cancelled [`read`](Self::read) took no
///   byte, a cancelled [`write`](Self::write) gave none;
/// - all methods take `&self`; a second task reading (or writing) while another does gets
///   [`BusyResource`](crate::BusyResource);
/// - [`close`](Self::close), from any task, wakes this end's blocked tasks with
///   [`ClosedResource`] and fails later operations the same way; the peer
///   reads what was already written and then end of stream, and its writes fail with
///   `BrokenPipe` (as a Unix socket's). Dropping an end closes it;
/// - `shutdown(Write)` is Trio's `send_eof`: idempotent, the peer reads end of stream after the
///   data, and later writes fail with `ClosedResource`; `shutdown(Read)` discards what is
///   buffered, later reads return end of stream and the peer's writes fail with `BrokenPipe`;
/// - a cancelled [`write_all`](Self::write_all) reports how much went in
///   ([`WriteAllError::written`](crate::WriteAllError)) and the stream stays usable.
///
/// It also implements `futures_io::AsyncRead` and `AsyncWrite` (on `MemoryStream` and on
/// `&MemoryStream`). As for sockets, those poll-style impls are not checkpoints: they fail with
/// [`Cancelled`](crate::Cancelled) only where they would block in a cancelled scope (or once
/// the turn's yield budget is spent there; spent elsewhere, a poll returns `Pending` with the
/// task woken, trying nothing), and with
/// [`BusyResource`](crate::BusyResource) while an `async` operation uses the direction. A
/// waiting poll keeps only the waker of the latest poll, and of two tasks polling one
/// direction at once the second fails with `BusyResource` once both have polled again: the
/// rules of [`TcpStream`](crate::net::TcpStream)'s.
///
/// For tests of short reads and writes, [`set_max_read`](Self::set_max_read) and
/// [`set_max_write`](Self::set_max_write) cap what one operation moves.
///
/// A pair belongs to one thread (`!Send`) and waits through the current hatchery run.
pub struct MemoryStream {
    pair: Rc<RefCell<Pair>>,
    /// This end writes into `pipes[side]` and reads from `pipes[1 - side]`.
    side: usize,
    /// Operations in progress and poll-style waits, per direction (`StreamEnd`).
    dirs: Directions,
    closed: Cell<bool>,
    max_read: Cell<Option<NonZeroUsize>>,
    max_write: Cell<Option<NonZeroUsize>>,
    /// Cancellation registrations of the poll-style reads and writes.
    poll_parks: [RefCell<Park>; 2],
}

/// What [`MemoryStream::statistics`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemoryStreamStatistics {
    /// Bytes written by the peer that this end has not read yet.
    pub incoming_buffered: usize,
    /// Bytes this end wrote that the peer has not read yet.
    pub outgoing_buffered: usize,
    /// The most bytes each direction buffers.
    pub capacity: usize,
}

struct Pair {
    pipes: [Pipe; 2],
}

/// One direction of a pair.
struct Pipe {
    buf: VecDeque<u8>,
    capacity: usize,
    /// The writing end shut down writing or closed: the reader gets end of stream once `buf` is
    /// drained.
    eof: bool,
    /// The reading end shut down reading or closed: writes fail with `BrokenPipe`.
    reader_gone: bool,
    /// The operation waiting to read from this pipe.
    reader: Option<(Waiter, Waker)>,
    /// The operation waiting to write into it.
    writer: Option<(Waiter, Waker)>,
}

/// Who waits in a slot: an `async` operation (at most one per direction: it holds the
/// direction's in-use flag) or a poll-style poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waiter {
    Op,
    Poll,
}

/// Takes a slot's waker.
fn take(slot: &mut Option<(Waiter, Waker)>) -> Option<Waker> {
    slot.take().map(|(_, w)| w)
}

impl Pipe {
    fn new(capacity: usize) -> Pipe {
        Pipe { buf: VecDeque::new(), capacity, eof: false, reader_gone: false, reader: None, writer: None }
    }
}

/// Empties this end's waker slot of one direction when an operation ends or is dropped.
struct SlotGuard<'a> {
    stream: &'a MemoryStream,
    dir: Dir,
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        let old = self.stream.slot_take(self.dir);
        drop(old);
    }
}

fn broken_pipe() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the peer of this memory stream no longer reads")
}

impl MemoryStream {
    fn new(pair: Rc<RefCell<Pair>>, side: usize) -> MemoryStream {
        MemoryStream {
            pair,
            side,
            dirs: Directions::default(),
            closed: Cell::new(false),
            max_read: Cell::new(None),
            max_write: Cell::new(None),
            poll_parks: [RefCell::new(Park::new()), RefCell::new(Park::new())],
        }
    }

    fn inbound(&self) -> usize {
        1 - self.side
    }

    fn outbound(&self) -> usize {
        self.side
    }

    /// This end's waker slot for `dir`.
    fn slot<'p>(&self, pair: &'p mut Pair, dir: Dir) -> &'p mut Option<(Waiter, Waker)> {
        match dir {
            Dir::Read => &mut pair.pipes[self.inbound()].reader,
            Dir::Write => &mut pair.pipes[self.outbound()].writer,
        }
    }

    fn slot_take(&self, dir: Dir) -> Option<Waker> {
        let mut pair = self.pair.borrow_mut();
        take(self.slot(&mut pair, dir))
    }

    /// Puts `waker`, of a `waiter`, in this end's slot for `dir`, with the reactor's rules for
    /// a socket's direction: the same kind of waiter replaces its old waker without waking it
    /// (an `async` operation polled with a new waker, or the last poll-style poll: see
    /// [`StreamEnd::poll_read`] for two poll-style pollers); an `async` operation displaces a
    /// poll-style waiter and wakes it, to find `BusyResource`; a poll-style poll finds a waiting
    /// `async` operation busy (`false`; it cannot happen while the in-use flags are checked
    /// first).
    ///
    /// A waker that must be stored is cloned with the pair not borrowed (a clone is foreign
    /// code, which may use this stream), and the slot is then looked at again.
    fn slot_set(&self, dir: Dir, waiter: Waiter, waker: &Waker) -> bool {
        let mut fresh: Option<Waker> = None;
        loop {
            let mut pair = self.pair.borrow_mut();
            let slot = self.slot(&mut pair, dir);
            let outcome = match slot {
                Some((Waiter::Op, _)) if waiter == Waiter::Poll => Some((false, None, None)),
                Some((w, old)) if *w == waiter => {
                    if old.will_wake(waker) {
                        Some((true, None, None))
                    } else {
                        fresh.take().map(|f| (true, None, Some(std::mem::replace(old, f))))
                    }
                }
                _ => fresh.take().map(|f| (true, slot.replace((waiter, f)).map(|(_, w)| w), None)),
            };
            drop(pair);
            let Some((stored, wake, replaced)) = outcome else {
                fresh = Some(waker.clone());
                continue;
            };
            drop(fresh);
            drop(replaced);
            if let Some(w) = wake {
                w.wake();
            }
            return stored;
        }
    }

    /// One attempt to read: `None` if it must wait. With `commit == false` it only says what it
    /// would do (the byte count it would read), moving nothing.
    fn read_now(&self, dst: &mut [u8], commit: bool) -> Option<io::Result<usize>> {
        if self.closed.get() {
            return Some(Err(ClosedResource.into()));
        }
        let mut pair = self.pair.borrow_mut();
        let pipe = &mut pair.pipes[self.inbound()];
        if pipe.reader_gone {
            return Some(Ok(0));
        }
        if pipe.buf.is_empty() {
            return if pipe.eof { Some(Ok(0)) } else { None };
        }
        let limit = self.max_read.get().map_or(usize::MAX, NonZeroUsize::get);
        let n = pipe.buf.len().min(dst.len()).min(limit);
        if commit {
            for (d, s) in dst.iter_mut().zip(pipe.buf.drain(..n)) {
                *d = s;
            }
            let writer = take(&mut pipe.writer);
            drop(pair);
            if let Some(w) = writer {
                w.wake();
            }
        }
        Some(Ok(n))
    }

    /// One attempt to write (see [`read_now`](Self::read_now)).
    fn write_now(&self, src: &[u8], commit: bool) -> Option<io::Result<usize>> {
        if self.closed.get() {
            return Some(Err(ClosedResource.into()));
        }
        let mut pair = self.pair.borrow_mut();
        let pipe = &mut pair.pipes[self.outbound()];
        if pipe.eof {
            return Some(Err(ClosedResource.into()));
        }
        if pipe.reader_gone {
            return Some(Err(broken_pipe()));
        }
        let space = pipe.capacity - pipe.buf.len();
        if space == 0 {
            return None;
        }
        let limit = self.max_write.get().map_or(usize::MAX, NonZeroUsize::get);
        let n = space.min(src.len()).min(limit);
        if commit {
            pipe.buf.extend(&src[..n]);
            let reader = take(&mut pipe.reader);
            drop(pair);
            if let Some(w) = reader {
                w.wake();
            }
        }
        Some(Ok(n))
    }

    /// Whether an operation in `dir` would complete now (`None`: it would wait). A write that
    /// would fail because the peer no longer reads counts as ready: the write reports it.
    fn ready(&self, dir: Dir) -> Option<io::Result<()>> {
        let r = match dir {
            Dir::Read => self.read_now(&mut [0], false),
            Dir::Write => self.write_now(&[0], false),
        };
        match r? {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Some(Ok(())),
            r => Some(r.map(drop)),
        }
    }

    /// The parking protocol around `attempt`: a cancel point; if `attempt` says (without
    /// committing) that it would complete, a cancel-shielded schedule point *before* it runs;
    /// else park until it completes or the wait is cancelled. The attempt commits only in the
    /// poll that returns its result.
    async fn op<R>(
        &self,
        dir: Dir,
        mut attempt: impl FnMut(&Self, bool) -> Option<io::Result<R>>,
    ) -> io::Result<R> {
        lowlevel::checkpoint_if_cancelled()?;
        if attempt(self, false).is_some() {
            lowlevel::cancel_shielded_checkpoint().await;
            // A cancellation that arrived during the yield still finds nothing done (as
            // `IoSource::read_with`).
            lowlevel::checkpoint_if_cancelled()?;
        }
        let _slot = SlotGuard { stream: self, dir };
        let park = RefCell::new(Park::new());
        std::future::poll_fn(|cx| self.poll_attempt(dir, Waiter::Op, cx, &park, &mut attempt)).await
    }

    /// One poll of `attempt`: its result; or its waker in the slot and `park` registered for
    /// cancellation (`Cancelled`, with the slot emptied, in a cancelled scope). Not a
    /// checkpoint: a poll-style operation is this alone, with a `Park` of the stream's. `park`
    /// is borrowed only briefly, never while `attempt` or `slot_set` wake tasks.
    fn poll_attempt<R>(
        &self,
        dir: Dir,
        waiter: Waiter,
        cx: &mut Context<'_>,
        park: &RefCell<Park>,
        attempt: &mut impl FnMut(&Self, bool) -> Option<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        // The turn's budget, as a socket's poll-style operations spend it.
        match crate::lowlevel::poll_budget(&crate::runtime::context::core(), cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(c)) => {
                park.borrow_mut().unpark();
                return Poll::Ready(Err(c.into()));
            }
            Poll::Pending => return Poll::Pending,
        }
        if let Some(r) = attempt(self, true) {
            park.borrow_mut().unpark();
            return Poll::Ready(r);
        }
        if !self.slot_set(dir, waiter, cx.waker()) {
            return Poll::Ready(Err(busy(dir)));
        }
        let cancelled =
            park.borrow_mut().poll_cancel_on(cx, crate::debug::WaitingOn::Other("a memory stream"));
        match cancelled {
            Poll::Ready(c) => {
                drop(self.slot_take(dir));
                Poll::Ready(Err(c.into()))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    /// Reads what is available, waiting until something is: the number of bytes read, or `0`
    /// at end of stream (the peer shut down writing or closed, and everything it wrote has been
    /// read). A checkpoint. Cancelled before it completes, it reads nothing.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for an empty `buf`; [`BusyResource`](crate::BusyResource) if another task
    /// is reading; [`ClosedResource`] once this end is closed;
    /// [`Cancelled`](crate::Cancelled).
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        StreamEnd::read(self, buf).await
    }

    /// Writes some of `buf` (at most the free space of this direction, and at most the
    /// [`set_max_write`](Self::set_max_write) limit), waiting until there is room: the number
    /// of bytes written. A checkpoint; an empty `buf` writes nothing but is still one.
    ///
    /// # Errors
    ///
    /// [`BusyResource`](crate::BusyResource) if another task is writing;
    /// [`ClosedResource`] once closed or shut down for writing;
    /// `BrokenPipe` once the peer closed or shut down reading; [`Cancelled`](crate::Cancelled)
    /// (nothing was written).
    pub async fn write(&self, buf: &[u8]) -> io::Result<usize> {
        StreamEnd::write(self, buf).await
    }

    /// Writes all of `buf`, waiting for room as often as needed. A checkpoint, even for an
    /// empty `buf`.
    ///
    /// If it fails, [`WriteAllError::written`](crate::WriteAllError) says how many bytes went
    /// in, in order from the start of `buf`; after a cancellation the stream is not broken and
    /// a later write continues right after them.
    ///
    /// # Errors
    ///
    /// As [`write`](Self::write), with the count.
    pub async fn write_all(&self, buf: &[u8]) -> Result<(), WriteAllError> {
        StreamEnd::write_all(self, buf).await
    }

    /// Shuts down reading, writing or both (`send_eof` is `Shutdown::Write`). A checkpoint,
    /// before anything is shut down.
    ///
    /// Writing: idempotent; the peer reads what is buffered, then end of stream; later writes
    /// fail with [`ClosedResource`]. Reading: what the peer wrote and
    /// this end has not read is discarded, reads return end of stream, and the peer's writes
    /// fail with `BrokenPipe`.
    ///
    /// # Errors
    ///
    /// [`BusyResource`](crate::BusyResource) if writing is shut down while another task
    /// writes; [`ClosedResource`]; [`Cancelled`](crate::Cancelled).
    pub async fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        StreamEnd::shutdown(self, how).await
    }

    /// Closes this end from any task that can reach it: its blocked tasks wake with
    /// [`ClosedResource`], later operations fail the same way, and the
    /// peer reads what was already written, then end of stream, while its writes fail with
    /// `BrokenPipe`. Idempotent; not a checkpoint. Dropping the stream closes it too.
    pub fn close(&self) {
        if self.closed.replace(true) {
            return;
        }
        let _ = self.shutdown_now(Shutdown::Both);
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.closed.get()
    }

    /// Waits until a read would not wait (bytes are buffered, or end of stream). A checkpoint.
    ///
    /// # Errors
    ///
    /// As [`read`](Self::read).
    pub async fn readable(&self) -> io::Result<()> {
        StreamEnd::readable(self).await
    }

    /// Waits until a write would not wait (there is room, or the write would fail at once)
    /// (Trio's `wait_send_all_might_not_block`). A checkpoint.
    ///
    /// # Errors
    ///
    /// As [`write`](Self::write), except that a peer that no longer reads is not an error here
    /// (the write will report it).
    pub async fn writable(&self) -> io::Result<()> {
        StreamEnd::writable(self).await
    }

    /// Caps the bytes one read (of this end) returns: `None` for no cap. For tests of code
    /// that must cope with short reads.
    pub fn set_max_read(&self, max: Option<NonZeroUsize>) {
        self.max_read.set(max);
    }

    /// Caps the bytes one write (of this end) takes: `None` for no cap. For tests of code that
    /// must cope with short writes ([`write_all`](Self::write_all) still writes everything, in
    /// several steps).
    pub fn set_max_write(&self, max: Option<NonZeroUsize>) {
        self.max_write.set(max);
    }

    /// Buffered byte counts, for tests.
    pub fn statistics(&self) -> MemoryStreamStatistics {
        let pair = self.pair.borrow();
        MemoryStreamStatistics {
            incoming_buffered: pair.pipes[self.inbound()].buf.len(),
            outgoing_buffered: pair.pipes[self.outbound()].buf.len(),
            capacity: pair.pipes[0].capacity,
        }
    }
}

impl StreamEnd for MemoryStream {
    fn directions(&self) -> &Directions {
        &self.dirs
    }

    fn is_closed(&self) -> bool {
        self.closed.get()
    }

    fn write_shut(&self) -> bool {
        self.pair.borrow().pipes[self.outbound()].eof
    }

    async fn read_some(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.op(Dir::Read, |s, commit| s.read_now(buf, commit)).await
    }

    async fn write_some(&self, buf: &[u8]) -> io::Result<usize> {
        self.op(Dir::Write, |s, commit| s.write_now(buf, commit)).await
    }

    async fn wait_ready(&self, dir: Dir) -> io::Result<()> {
        self.op(dir, |s, _| s.ready(dir)).await
    }

    fn shutdown_now(&self, how: Shutdown) -> io::Result<()> {
        let (write, read) = match how {
            Shutdown::Write => (true, false),
            Shutdown::Read => (false, true),
            Shutdown::Both => (true, true),
        };
        let mut wake = Vec::new();
        let mut pair = self.pair.borrow_mut();
        if write {
            let out = &mut pair.pipes[self.outbound()];
            out.eof = true;
            wake.extend(take(&mut out.reader));
            wake.extend(take(&mut out.writer));
        }
        if read {
            let inb = &mut pair.pipes[self.inbound()];
            inb.reader_gone = true;
            inb.buf = VecDeque::new();
            wake.extend(take(&mut inb.reader));
            wake.extend(take(&mut inb.writer));
        }
        drop(pair);
        wake.into_iter().for_each(Waker::wake);
        Ok(())
    }

    fn poll_read_some(&self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        self.poll_attempt(Dir::Read, Waiter::Poll, cx, &self.poll_parks[0], &mut |s, commit| {
            s.read_now(buf, commit)
        })
    }

    fn poll_write_some(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.poll_attempt(Dir::Write, Waiter::Poll, cx, &self.poll_parks[1], &mut |s, commit| {
            s.write_now(buf, commit)
        })
    }
}

impl Drop for MemoryStream {
    fn drop(&mut self) {
        self.close();
    }
}

impl fmt::Debug for MemoryStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let stats = self.statistics();
        f.debug_struct("MemoryStream")
            .field("side", &self.side)
            .field("closed", &self.closed.get())
            .field("incoming_buffered", &stats.incoming_buffered)
            .field("outgoing_buffered", &stats.outgoing_buffered)
            .field("capacity", &stats.capacity)
            .finish()
    }
}

crate::net::stream::async_read_impl!(MemoryStream);
crate::net::stream::async_read_impl!(&MemoryStream);
crate::net::stream::async_write_impl!(MemoryStream);
crate::net::stream::async_write_impl!(&MemoryStream);
