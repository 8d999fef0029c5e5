//! [`BufWriter`]: buffered writing whose cancelled flushes keep their bytes.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures_io::{AsyncBufRead, AsyncRead, AsyncWrite};

use super::{DEFAULT_BUF_SIZE, Op, poll_write_checked, poll_write_some};
use crate::error::WriteAllError;
use crate::lowlevel::checkpoint_if_cancelled;

/// Adds a buffer to a writer: small writes are collected and go out together when the buffer
/// is full, on [`flush`](Self::flush) or on [`close`](Self::close).
///
/// # Cancellation
///
/// Every `async` method is a checkpoint (a cancel point on entry; a schedule point, which is
/// the wait itself if there is one) and loses nothing when cancelled or dropped:
///
/// - a cancelled [`flush`](Self::flush) (or a flush inside `write`, `write_all` or `close`)
///   keeps the bytes not yet written in the buffer, and the next flush continues after those
///   that went out: no byte is written twice or dropped;
/// - [`write`](Self::write) takes nothing if it fails or is dropped before it returns: the
///   bytes are copied in (or written through) in the poll that returns the count;
/// - [`write_all`](Self::write_all) reports in
///   [`WriteAllError::written`](crate::WriteAllError) how many bytes of its argument were
///   accepted (into the buffer or the stream), so the caller can resume with the rest. Only
///   cancellation reports it: a `write_all` *dropped* after some bytes went through (it yields
///   between writes, as a stream's `write_all` waits) cannot, as with a stream's.
///
/// # Dropping it
///
/// There is no async drop: **dropping a `BufWriter` with buffered bytes loses them**, and
/// nothing complains (a destructor cannot wait, and a panic in one would be worse). Flush or
/// close before dropping; [`buffer`](Self::buffer)`.is_empty()` tells whether something is
/// still pending (a handy `debug_assert!`), and [`into_parts`](Self::into_parts) hands the
/// pending bytes back.
///
/// # The `futures-io` impl
///
/// `BufWriter` implements `futures_io::AsyncWrite` (and `AsyncRead`/`AsyncBufRead`, passed
/// through, when the inner type is a reader too). Those poll-style methods are not
/// checkpoints; they only delegate, so they work with any executor.
///
/// ```
/// use hatchery::io::BufWriter;
/// use hatchery::testing::{self, memory_stream_pair};
///
/// testing::run(async {
///     let (a, b) = memory_stream_pair();
///     let mut writer = BufWriter::new(&a);
///     writer.write_all(b"hello, ").await?;
///     writer.write_all(b"world").await?;
///     assert_eq!(b.statistics().incoming_buffered, 0, "still in the BufWriter");
///     writer.flush().await?;
///     let mut buf = [0; 32];
///     let n = b.read(&mut buf).await?;
///     assert_eq!(&buf[..n], b"hello, world");
///     Ok::<_, std::io::Error>(())
/// })
/// .unwrap();
/// ```
pub struct BufWriter<W> {
    inner: W,
    /// `buf[written..]` is waiting to be written; `buf[..written]` went out during a flush that
    /// did not finish.
    buf: Vec<u8>,
    written: usize,
    capacity: usize,
}

impl<W: AsyncWrite + Unpin> BufWriter<W> {
    /// A writer with an 8 KiB buffer.
    pub fn new(inner: W) -> BufWriter<W> {
        BufWriter::with_capacity(DEFAULT_BUF_SIZE, inner)
    }

    /// A writer with a `capacity`-byte buffer (a capacity of 0 is taken as 1). Writes of at
    /// least `capacity` bytes skip the buffer (after flushing it).
    pub fn with_capacity(capacity: usize, inner: W) -> BufWriter<W> {
        let capacity = capacity.max(1);
        BufWriter { inner, buf: Vec::with_capacity(capacity), written: 0, capacity }
    }
}

impl<W> BufWriter<W> {
    /// The inner writer.
    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    /// The inner writer. Writing to it directly puts those bytes before the buffered ones.
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    /// The inner writer; **the buffered bytes are dropped** (flush first, or see
    /// [`into_parts`](Self::into_parts)).
    pub fn into_inner(self) -> W {
        self.inner
    }

    /// The inner writer and the bytes not written to it yet.
    pub fn into_parts(self) -> (W, Vec<u8>) {
        let mut buf = self.buf;
        buf.drain(..self.written);
        (self.inner, buf)
    }

    /// The bytes waiting to be written.
    pub fn buffer(&self) -> &[u8] {
        &self.buf[self.written..]
    }

    /// The size of the buffer.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn spare(&self) -> usize {
        self.capacity - (self.buf.len() - self.written)
    }

    /// Appends to the buffer (which must have room).
    fn push(&mut self, src: &[u8]) {
        if self.written > 0 {
            self.buf.drain(..self.written);
            self.written = 0;
        }
        debug_assert!(self.buf.len() + src.len() <= self.capacity);
        self.buf.extend_from_slice(src);
    }
}

impl<W: AsyncWrite + Unpin> BufWriter<W> {
    /// Writes the buffer out, poll-style; progress is recorded as it goes.
    fn poll_flush_buf(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.buf.len() {
            self.written += ready!(poll_write_some(&mut self.inner, cx, &self.buf[self.written..]))?;
        }
        self.buf.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }

    async fn flush_buf(&mut self, op: &mut Op) -> io::Result<()> {
        op.wait(|cx| self.poll_flush_buf(cx)).await
    }

    /// Writes some of `buf`: into the buffer if it fits (flushing first if the buffer is too
    /// full), or, if `buf` is at least as large as the capacity, straight to the inner writer
    /// once the buffer is flushed. The number of bytes accepted; for a non-empty `buf`, 0 only
    /// if the inner writer accepted nothing. A checkpoint, even for an empty `buf`. Cancelled
    /// or dropped before it returns, it accepted nothing (a flush it started keeps its
    /// progress).
    ///
    /// # Errors
    ///
    /// [`Cancelled`](crate::Cancelled); the inner writer's error.
    pub async fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut op = Op::start()?;
        if buf.len() > self.spare() {
            self.flush_buf(&mut op).await?;
        }
        op.schedule_point().await;
        if buf.len() >= self.capacity {
            // One write of the inner writer, waiting until it takes something (a broken
            // writer's count is an error, not a panic in the caller's `&buf[n..]`).
            return op.wait(|cx| poll_write_checked(&mut self.inner, cx, buf)).await;
        }
        self.push(buf);
        Ok(buf.len())
    }

    /// Writes all of `buf` (buffering the tail that fits). A checkpoint, even for an empty
    /// `buf`; a cancel point before each step.
    ///
    /// # Errors
    ///
    /// [`WriteAllError`] with the number of bytes of `buf` accepted
    /// (into the buffer or the inner writer), and why it stopped:
    /// [`Cancelled`](crate::Cancelled), `WriteZero` if the writer accepted nothing, or the
    /// writer's error. Resume with `&buf[written..]`.
    pub async fn write_all(&mut self, buf: &[u8]) -> Result<(), WriteAllError> {
        let fail = |written, error| WriteAllError { written, error };
        // A cancel point before each step, the first one included.
        let mut op = Op::new();
        let mut written = 0;
        loop {
            // Once bytes went through, a step boundary: over a writer that is always ready but
            // takes a little at a time (an encoder over memory), the call must not hog the
            // thread or outrun a deadline. Cancelled there, the error says what went through.
            let point = if written == 0 { checkpoint_if_cancelled() } else { op.next_step().await };
            point.map_err(|c| fail(written, c.into()))?;
            let rest = &buf[written..];
            if rest.len() <= self.spare() {
                // The schedule point comes before anything moves (after a step, `next_step`
                // passed one).
                if written == 0 {
                    op.schedule_point().await;
                }
                self.push(rest);
                return Ok(());
            }
            if !self.buffer().is_empty() {
                self.flush_buf(&mut op).await.map_err(|e| fail(written, e))?;
                continue;
            }
            // An empty buffer and more than it holds: write through, after the schedule point
            // if nothing moved yet (nothing may be moved before it). All written is done: no
            // cancel point after it turns a complete write into an error.
            if written == 0 {
                op.schedule_point().await;
            }
            written += op
                .wait(|cx| poll_write_some(&mut self.inner, cx, rest))
                .await
                .map_err(|e| fail(written, e))?;
            if written == buf.len() {
                return Ok(());
            }
        }
    }

    /// Writes the buffer out and flushes the inner writer. A checkpoint. Cancelled, the bytes
    /// not yet written stay buffered and the next flush continues with them.
    ///
    /// # Errors
    ///
    /// [`Cancelled`](crate::Cancelled); the inner writer's error.
    pub async fn flush(&mut self) -> io::Result<()> {
        let mut op = Op::start()?;
        self.flush_buf(&mut op).await?;
        op.wait(|cx| Pin::new(&mut self.inner).poll_flush(cx)).await?;
        op.schedule_point().await;
        Ok(())
    }

    /// Flushes, then closes the inner writer (`poll_close`: for a hatchery stream, shuts down
    /// writing, so the peer reads end of stream). A checkpoint. Cancelled while flushing, it has
    /// closed nothing and the unwritten bytes stay buffered (call it again, or take the writer
    /// with [`into_parts`](Self::into_parts) and close it yourself).
    ///
    /// # Errors
    ///
    /// [`Cancelled`](crate::Cancelled); the inner writer's error.
    pub async fn close(&mut self) -> io::Result<()> {
        let mut op = Op::start()?;
        self.flush_buf(&mut op).await?;
        op.wait(|cx| Pin::new(&mut self.inner).poll_flush(cx)).await?;
        op.wait(|cx| Pin::new(&mut self.inner).poll_close(cx)).await?;
        op.schedule_point().await;
        Ok(())
    }
}

impl<W: fmt::Debug> fmt::Debug for BufWriter<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BufWriter")
            .field("inner", &self.inner)
            .field("buffered", &(self.buf.len() - self.written))
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for BufWriter<W> {
    /// Buffers `buf` if it fits (flushing first if the buffer is too full); a `buf` at least as
    /// large as the capacity goes straight to the inner writer once the buffer is flushed.
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.len() > this.spare() {
            ready!(this.poll_flush_buf(cx))?;
        }
        if buf.len() >= this.capacity {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        }
        this.push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_flush_buf(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_flush_buf(cx))?;
        ready!(Pin::new(&mut this.inner).poll_flush(cx))?;
        Pin::new(&mut this.inner).poll_close(cx)
    }
}

impl<W: AsyncRead + Unpin> AsyncRead for BufWriter<W> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<W: AsyncBufRead + Unpin> AsyncBufRead for BufWriter<W> {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        Pin::new(&mut self.get_mut().inner).poll_fill_buf(cx)
    }

    fn consume(self: Pin<&mut Self>, amt: usize) {
        Pin::new(&mut self.get_mut().inner).consume(amt)
    }
}
