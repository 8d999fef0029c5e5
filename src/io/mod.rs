//! Buffered I/O over `futures-io` readers and writers, with cancellation that loses nothing.
//!
//! - [`BufReader`]: `read`, `read_until`, `read_line`, `read_exact`, `read_to_end`. A
//!   cancelled (or dropped) call leaves every byte it pulled from the stream in the reader's
//!   buffer, so the next call sees it again: the call fills the buffer until the line, or the
//!   count, is complete, and only then moves bytes out.
//! - [`BufWriter`]: `write`, `write_all`, `flush`, `close`. A cancelled flush keeps what it
//!   did not write; a cancelled `write_all` says how much it accepted.
//! - [`copy`]: moves a reader's bytes to a writer; cancelled, it says how much it copied and the
//!   rest is still in the reader's buffer or the stream.
//! - [`copy_bidirectional`]: both ways between two streams at once, passing each end of stream
//!   on as a shutdown of the other side's writing (a proxy's loop); cancelled, it says how much
//!   went each way, and the rest is still in the readers' buffers or the streams.
//!
//! They work over anything that implements `futures_io::AsyncRead`/`AsyncWrite`: hatchery's
//! [`TcpStream`](crate::net::TcpStream), [`UnixStream`](crate::net::UnixStream) and
//! [`MemoryStream`](crate::testing::MemoryStream) (and shared references to them, so one task
//! can read through a `BufReader<&TcpStream>` while another writes), or foreign types.
//!
//! # Checkpoints
//!
//! Every `async` method here is a checkpoint in Trio's sense (S2.1), with the fast path of
//! S2.3: a cancel point on entry (so a cancelled scope stops the call even when the answer is
//! already buffered); if the call has to wait for the stream, the wait is the schedule point
//! and a cancellation interrupts it; if it never waits, a cancel-shielded yield comes **before**
//! anything is handed to the caller, so a future dropped there has handed nothing. Then the
//! result is delivered in the poll that returns it.
//!
//! Waiting goes through the inner stream's `poll_read`/`poll_write`; hatchery's streams fail
//! those with [`Cancelled`] where they would block in a cancelled scope, and
//! for any other stream these methods register for cancellation themselves (with
//! [`Park`]), so a wait is cancellable whatever the stream is. The
//! `async` methods need a hatchery run; the `futures-io` trait impls only delegate and work
//! anywhere.

mod buf_reader;
mod buf_writer;
mod copying;

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_io::AsyncWrite;

pub use buf_reader::BufReader;
pub use buf_writer::BufWriter;
pub use copying::{CopyBidirectionalError, CopyError, copy, copy_bidirectional};

use crate::error::Cancelled;
use crate::lowlevel::{self, Park};

/// Buffer size of [`BufReader::new`] and [`BufWriter::new`], as `std::io`'s.
const DEFAULT_BUF_SIZE: usize = 8 * 1024;

/// The checkpoint bookkeeping of one `async` call here (S2.3): the [`Park`] that makes its waits
/// cancellable whatever the stream is, and whether it waited.
///
/// A call passes its cancel point on entry ([`Op::start`]), waits only through [`Op::wait`],
/// and, if it never waited, passes [`Op::schedule_point`] before it hands anything out. A call
/// made of many steps (`copy`, a `BufReader` call that reads until a line or a count is
/// complete) passes [`Op::next_step`] between them.
struct Op {
    park: Park,
    /// The call waited since it started (or since its last step): that wait was its schedule
    /// point.
    waited: bool,
}

impl Op {
    /// The bookkeeping alone, for a call that passes a cancel point of its own before each step.
    fn new() -> Op {
        Op { park: Park::new(), waited: false }
    }

    /// The cancel point on entry, then the bookkeeping.
    fn start() -> Result<Op, Cancelled> {
        lowlevel::checkpoint_if_cancelled()?;
        Ok(Op::new())
    }

    /// Drives a poll-style operation to completion: where it is pending, the park registers the
    /// task for cancellation (an interrupted wait fails with `Cancelled`), and the call has
    /// waited.
    async fn wait<T>(
        &mut self,
        mut poll: impl FnMut(&mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> io::Result<T> {
        let Op { park, waited } = self;
        std::future::poll_fn(|cx| match poll(cx) {
            Poll::Ready(r) => {
                park.unpark();
                Poll::Ready(r)
            }
            Poll::Pending => {
                match park.poll_cancel_on(cx, crate::debug::WaitingOn::Other("a stream to read or write")) {
                    Poll::Ready(c) => Poll::Ready(Err(c.into())),
                    Poll::Pending => {
                        *waited = true;
                        Poll::Pending
                    }
                }
            }
        })
        .await
    }

    /// The schedule point of a call that did not wait: a cancel-shielded yield, to be passed
    /// *before* the call moves anything, so that a future dropped there has moved nothing. A
    /// call that waited already passed one.
    async fn schedule_point(&self) {
        if !self.waited {
            lowlevel::cancel_shielded_checkpoint().await;
        }
    }

    /// Between two steps of a long call: a cancel point, after a schedule point if the step did
    /// not wait (a wait is one), so that steps that never wait (streams that are always ready, a
    /// decompressor over memory) neither hog the thread nor ignore a cancellation. That schedule
    /// point is an operation's (within the turn's yield budget, as
    /// [`cancel_shielded_checkpoint`](lowlevel::cancel_shielded_checkpoint)): a copy between
    /// always-ready streams yields every few chunks, not after each. The next step starts afresh.
    async fn next_step(&mut self) -> Result<(), Cancelled> {
        if !self.waited {
            lowlevel::cancel_shielded_checkpoint().await;
        }
        self.waited = false;
        lowlevel::checkpoint_if_cancelled()
    }
}

/// The error for an inner reader or writer that reported `n` bytes of a buffer of `len`.
fn overclaimed(what: &str, n: usize, len: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "the {what} reported {n} bytes moved through a buffer of {len}: a broken AsyncRead/AsyncWrite"
        ),
    )
}

/// One `poll_write` of `writer` that moves something: retried on `Interrupted`, and a
/// `WriteZero` error if the writer accepted none of a non-empty `buf` (it would accept nothing
/// the next time either, and a loop would spin). A writer that claims more than it was given is
/// broken: `InvalidData`, rather than a count that is wrong or a panic further on.
fn poll_write_some<W: AsyncWrite + Unpin + ?Sized>(
    writer: &mut W,
    cx: &mut Context<'_>,
    buf: &[u8],
) -> Poll<io::Result<usize>> {
    match poll_write_checked(writer, cx, buf) {
        Poll::Ready(Ok(0)) if !buf.is_empty() => {
            Poll::Ready(Err(io::Error::new(io::ErrorKind::WriteZero, "the writer accepted no bytes")))
        }
        other => other,
    }
}

/// One `poll_write` of `writer`, retried on `Interrupted`; a count above `buf.len()` is an
/// `InvalidData` error (a broken writer). A count of 0 is passed on.
fn poll_write_checked<W: AsyncWrite + Unpin + ?Sized>(
    writer: &mut W,
    cx: &mut Context<'_>,
    buf: &[u8],
) -> Poll<io::Result<usize>> {
    loop {
        match Pin::new(&mut *writer).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) if n > buf.len() => {
                return Poll::Ready(Err(overclaimed("writer", n, buf.len())));
            }
            Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}
