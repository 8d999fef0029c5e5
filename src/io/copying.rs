//! [`copy`] and [`copy_bidirectional`]: moving bytes between streams, without losing any when
//! cancelled.
//!
//! Both read through a caller's [`BufReader`] and consume a byte from its buffer only once the
//! writer took it: whatever stops them (a cancellation, an error, a dropped future), every byte
//! read is either written or still in that buffer, in order.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures_io::{AsyncBufRead, AsyncRead, AsyncWrite};

use super::{BufReader, Op, poll_write_some};
use crate::error::{CancelError, Cancelled};

/// A [`copy`] that stopped before the end of the stream: how far it got, and why.
///
/// `copied` bytes went to the writer, in order; every other byte is still in the reader's
/// buffer or in the stream. It converts into `io::Error` (keeping a [`Cancelled`] findable) and
/// into [`Error`](crate::Error), and implements [`CancelError`], so a cancel scope around a
/// cancelled copy absorbs it, and its count with it: to learn how far a copy got before a
/// deadline, look at the error inside the scope (`move_on_after(t, async { let r = copy(..).await;
/// /* note r's count */ r })`).
#[derive(Debug, thiserror::Error)]
#[error("copy stopped after {copied} bytes")]
#[non_exhaustive]
pub struct CopyError {
    /// Bytes written to the writer before the error.
    pub copied: u64,
    /// Why it stopped.
    #[source]
    pub error: io::Error,
}

impl From<CopyError> for io::Error {
    fn from(e: CopyError) -> io::Error {
        e.error
    }
}

impl From<CopyError> for crate::Error {
    fn from(e: CopyError) -> crate::Error {
        crate::Error::Io(e.error)
    }
}

impl CancelError for CopyError {
    fn cancelled(&self) -> Option<&Cancelled> {
        self.error.cancelled()
    }
}

/// Copies everything from `reader` to `writer` until the reader's end of stream, then flushes
/// the writer (it does not close it: call `poll_close`, or `shutdown`, to pass the end of
/// stream on). The number of bytes copied.
///
/// Bytes leave the reader's buffer only once the writer took them, so nothing is lost if the
/// copy is cancelled, fails or is dropped: what was not copied is still in `reader` (see
/// [`BufReader::buffer`]) or in its stream. A checkpoint; between chunks that needed no wait it
/// passes a schedule point (within the turn's
/// [yield budget](crate::Builder::yield_budget)) and a cancel point, so a copy between streams
/// that are always ready neither hogs the thread nor ignores a cancellation.
///
/// ```
/// use std::net::Shutdown;
/// use hatchery::io::{BufReader, copy};
/// use hatchery::testing::{self, memory_stream_pair};
///
/// testing::run(async {
///     let (a, b) = memory_stream_pair();
///     let (c, d) = memory_stream_pair();
///     a.write_all(b"forwarded").await?;
///     a.shutdown(Shutdown::Write).await?;
///     let n = copy(&mut BufReader::new(&b), &mut &c).await?;
///     assert_eq!(n, 9);
///     let mut buf = [0; 16];
///     let k = d.read(&mut buf).await?;
///     assert_eq!(&buf[..k], b"forwarded");
///     Ok::<_, std::io::Error>(())
/// })
/// .unwrap();
/// ```
///
/// # Errors
///
/// [`CopyError`] with the count: [`Cancelled`], `WriteZero` if the writer accepted nothing,
/// or the reader's or writer's error.
pub async fn copy<R, W>(reader: &mut BufReader<R>, writer: &mut W) -> Result<u64, CopyError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + ?Sized,
{
    let mut copied = 0u64;
    let fail = |copied, error| CopyError { copied, error };
    let mut op = Op::start().map_err(|c| fail(0, c.into()))?;
    loop {
        if reader.fill_some(&mut op).await.map_err(|e| fail(copied, e))? == 0 {
            op.wait(|cx| Pin::new(&mut *writer).poll_flush(cx)).await.map_err(|e| fail(copied, e))?;
            op.schedule_point().await;
            return Ok(copied);
        }
        let n =
            op.wait(|cx| poll_write_some(writer, cx, reader.buffer())).await.map_err(|e| fail(copied, e))?;
        reader.consume(n);
        copied += n as u64;
        op.next_step().await.map_err(|c| fail(copied, c.into()))?;
    }
}

/// A [`copy_bidirectional`] that stopped before both ends of stream: how far each direction got,
/// and why.
///
/// `a_to_b` bytes read from `a` were written to `b`, in order, and `b_to_a` the other way; every
/// other byte read from `a` is still in `a`'s [`BufReader`] (see [`BufReader::buffer`]) or in
/// the stream, and likewise for `b`. It converts into `io::Error` (keeping a [`Cancelled`]
/// findable) and into [`Error`](crate::Error), and implements [`CancelError`], so a cancel scope
/// around a cancelled copy absorbs it, counts and all (look at them inside the scope, as for
/// [`CopyError`]).
#[derive(Debug, thiserror::Error)]
#[error("bidirectional copy stopped after {a_to_b} bytes from a to b and {b_to_a} from b to a")]
#[non_exhaustive]
pub struct CopyBidirectionalError {
    /// Bytes read from `a` and written to `b` before the error.
    pub a_to_b: u64,
    /// Bytes read from `b` and written to `a` before the error.
    pub b_to_a: u64,
    /// Why it stopped: the first error of either direction, or the cancellation.
    #[source]
    pub error: io::Error,
}

impl From<CopyBidirectionalError> for io::Error {
    fn from(e: CopyBidirectionalError) -> io::Error {
        e.error
    }
}

impl From<CopyBidirectionalError> for crate::Error {
    fn from(e: CopyBidirectionalError) -> crate::Error {
        crate::Error::Io(e.error)
    }
}

impl CancelError for CopyBidirectionalError {
    fn cancelled(&self) -> Option<&Cancelled> {
        self.error.cancelled()
    }
}

/// Copies both ways between `a` and `b` at once, each until its end of stream, which it passes
/// on by closing the other side's writing (`poll_flush` then `poll_close`: for hatchery's
/// streams, `shutdown(Write)`), so a half-closed connection stays half-closed. Returns the bytes
/// copied from `a` to `b` and from `b` to `a` once both directions have ended.
///
/// `a` and `b` are readers *and* writers, each behind a [`BufReader`] (reads go through its
/// buffer, writes through to the stream): `BufReader::new(&tcp_stream)`, or the reader that
/// already parsed a protocol header, whose buffered bytes then go first. For the owned halves of
/// a socket, use the stream they share (`half.stream()`).
///
/// # Cancellation and errors: nothing is lost
///
/// A byte leaves `a`'s buffer only in the poll where `b` took it (and the other way round).
/// However the copy stops (cancelled, failed, or dropped), every byte read from `a` so far was
/// either written to `b`, counted in [`CopyBidirectionalError::a_to_b`], or is still in `a`'s
/// buffer, in order, for a later call (or [`BufReader::into_parts`]) to take on; likewise for
/// `b`. A dropped future reports no counts, but loses no byte either. The first error of either
/// direction stops both (the other direction stops where it was: nothing half-done). An end of
/// stream already passed on stays passed on; calling again after a cancellation resumes both
/// directions (a reader at end of stream reports it again, and shutting writing down again does
/// nothing on hatchery's streams). For other streams resuming is only as good as their
/// `poll_flush` and `poll_close` after a close: a direction that had ended flushes and closes
/// its writer again, and a writer that fails there fails the resumed call.
///
/// # Checkpoints
///
/// A checkpoint: a cancel point on entry; a wait for either stream is the schedule point and a
/// cancellation interrupts it (hatchery's streams fail their poll-style operations with
/// [`Cancelled`] where they would block, and the copy registers for cancellation itself for
/// any other stream); between rounds that needed no wait it passes a schedule point (within the
/// turn's yield budget) and a cancel point, so
/// streams that are always ready neither hog the thread nor make the copy ignore a
/// cancellation. A round moves at most one buffer each way, `a` to `b` first.
///
/// One future polls both directions (no task per direction): it works for any stream (a
/// `&mut` foreign stream cannot be lent to two tasks), needs no nursery, and stops both
/// directions in the same poll, so the counts it reports are exact.
///
/// ```
/// use std::net::Shutdown;
/// use hatchery::io::{BufReader, copy_bidirectional};
/// use hatchery::testing::{self, memory_stream_pair};
///
/// testing::run(async {
///     let (client, proxy_in) = memory_stream_pair();
///     let (proxy_out, server) = memory_stream_pair();
///     client.write_all(b"request").await?;
///     client.shutdown(Shutdown::Write).await?;
///     server.write_all(b"response").await?;
///     server.shutdown(Shutdown::Write).await?;
///     let mut a = BufReader::new(&proxy_in);
///     let mut b = BufReader::new(&proxy_out);
///     assert_eq!(copy_bidirectional(&mut a, &mut b).await?, (7, 8));
///     let mut buf = [0; 16];
///     let n = server.read(&mut buf).await?;
///     assert_eq!(&buf[..n], b"request");
///     assert_eq!(server.read(&mut buf).await?, 0, "the client's end of stream was passed on");
///     Ok::<_, std::io::Error>(())
/// })
/// .unwrap();
/// ```
///
/// # Errors
///
/// [`CopyBidirectionalError`] with both counts: [`Cancelled`], `WriteZero` if a writer accepted
/// nothing, or either stream's error.
pub async fn copy_bidirectional<A, B>(
    a: &mut BufReader<A>,
    b: &mut BufReader<B>,
) -> Result<(u64, u64), CopyBidirectionalError>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let mut a_to_b = Direction::new();
    let mut b_to_a = Direction::new();
    let fail = |a_to_b: &Direction, b_to_a: &Direction, error| CopyBidirectionalError {
        a_to_b: a_to_b.copied,
        b_to_a: b_to_a.copied,
        error,
    };
    let mut op = Op::start().map_err(|c| fail(&a_to_b, &b_to_a, c.into()))?;
    loop {
        // One round: each direction that has not ended takes one step if it can.
        let round = op
            .wait(|cx| {
                let moved = a_to_b.poll_step(cx, a, b)?.is_ready() | b_to_a.poll_step(cx, b, a)?.is_ready();
                if moved { Poll::Ready(Ok(())) } else { Poll::Pending }
            })
            .await;
        if let Err(e) = round {
            return Err(fail(&a_to_b, &b_to_a, e));
        }
        if a_to_b.ended() && b_to_a.ended() {
            op.schedule_point().await;
            return Ok((a_to_b.copied, b_to_a.copied));
        }
        op.next_step().await.map_err(|c| fail(&a_to_b, &b_to_a, c.into()))?;
    }
}

/// Where one direction of [`copy_bidirectional`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Moving bytes.
    Copying,
    /// The reader ended: flushing the writer.
    Flushing,
    /// Flushed: closing the writer (shutting down its writing).
    Closing,
    /// The end of stream was passed on.
    Ended,
}

/// One direction of [`copy_bidirectional`].
#[derive(Debug)]
struct Direction {
    copied: u64,
    stage: Stage,
}

impl Direction {
    fn new() -> Direction {
        Direction { copied: 0, stage: Stage::Copying }
    }

    fn ended(&self) -> bool {
        self.stage == Stage::Ended
    }

    /// Takes one step from `from` to `to` if it can: `Ready(Ok(()))` when it moved bytes or
    /// passed the end of stream on, `Pending` when it must wait (or has ended). Bytes leave
    /// `from`'s buffer only once `to` took them.
    fn poll_step<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut BufReader<R>,
        to: &mut W,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        loop {
            match self.stage {
                Stage::Copying => {
                    let buf = ready!(Pin::new(&mut *from).poll_fill_buf(cx))?;
                    if buf.is_empty() {
                        self.stage = Stage::Flushing;
                        continue;
                    }
                    let n = ready!(poll_write_some(to, cx, buf))?;
                    from.consume(n);
                    self.copied += n as u64;
                    return Poll::Ready(Ok(()));
                }
                Stage::Flushing => {
                    ready!(Pin::new(&mut *to).poll_flush(cx))?;
                    self.stage = Stage::Closing;
                }
                Stage::Closing => {
                    ready!(Pin::new(&mut *to).poll_close(cx))?;
                    self.stage = Stage::Ended;
                    return Poll::Ready(Ok(()));
                }
                Stage::Ended => return Poll::Pending,
            }
        }
    }
}
