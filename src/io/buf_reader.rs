//! [`BufReader`]: buffered reading whose cancelled operations keep their bytes.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures_io::{AsyncBufRead, AsyncRead, AsyncWrite};

use super::{DEFAULT_BUF_SIZE, Op};
use crate::net::stream::empty_read;

/// Adds a buffer to a reader, with line, delimiter and exact-length reads that lose nothing
/// when they are cancelled.
///
/// # Cancellation
///
/// Every `async` method is a checkpoint, and a cancelled (or dropped) call has **consumed
/// nothing**: bytes it already pulled from the reader stay in this `BufReader`'s buffer, never
/// half in the caller's `Vec` or slice, so the next call sees them again. That works because a
/// method first fills the internal buffer until what it was asked for is there (the delimiter,
/// or enough bytes), and only then, in the poll that returns, moves the bytes out. Precisely:
///
/// 1. **Cancel point on entry**: in a cancelled scope the call fails with
///    [`Cancelled`](crate::Cancelled) even if the answer is already buffered, and touches
///    nothing.
/// 2. **Filling**: polls the inner reader into the buffer. Where it would wait, the call parks
///    and a cancellation interrupts it (hatchery's streams fail their `poll_read` with
///    `Cancelled` there; for any other reader this type registers for cancellation itself), so
///    waiting is cancellable whatever the reader is.
/// 3. **Schedule point, then completion**: if the call never had to wait, it passes a
///    cancel-shielded schedule point (S2.3; a yield once the turn's
///    [`yield_budget`](crate::Builder::yield_budget) is spent), *before* moving anything out;
///    then it moves the bytes out and returns in the same poll. A future dropped during that
///    yield has moved nothing.
///
/// # Growing the buffer
///
/// The buffer holds [`capacity`](Self::capacity) bytes for ordinary reads, and grows (doubling)
/// when a line or an exact read is longer, since the bytes must stay here until the call can
/// complete. It shrinks back to `capacity` once emptied. A peer that never sends a newline
/// could thus make [`read_line`](Self::read_line) buffer without bound: set
/// [`set_max_line_length`](Self::set_max_line_length) when reading untrusted input, and a
/// longer line fails with `InvalidData` (leaving its bytes buffered). `read_exact` grows to the
/// requested length (the caller chose it); `read_to_end` to the whole stream.
///
/// # One reader per stream
///
/// A `BufReader` reads its inner stream through the poll-style `futures-io` calls, so the
/// stream's check for a second reader (S9.1: [`BusyResource`](crate::BusyResource)) catches
/// another task only where a read waits. Two `BufReader`s over one stream (each over a
/// `&TcpStream`, say) whose reads never wait would split its bytes between them, unseen. Give a
/// stream's reading half to one `BufReader` and read through it alone (the bytes it has
/// buffered are its own anyway).
///
/// # The `futures-io` impls
///
/// `BufReader` implements `futures_io::AsyncRead` and `AsyncBufRead` (and `AsyncWrite`, passed
/// through, when the inner type is a writer too). As for hatchery's streams, those poll-style
/// impls are not checkpoints; they only delegate, so they work with any executor, and
/// cancellation reaches them through the inner reader.
///
/// ```
/// use hatchery::io::BufReader;
/// use hatchery::testing::{self, memory_stream_pair};
///
/// testing::run(async {
///     let (a, b) = memory_stream_pair();
///     a.write_all(b"hello\nworld\n").await?;
///     let mut reader = BufReader::new(&b);
///     let mut line = String::new();
///     reader.read_line(&mut line).await?;
///     assert_eq!(line, "hello\n");
///     let mut word = [0; 5];
///     reader.read_exact(&mut word).await?;
///     assert_eq!(&word, b"world");
///     Ok::<_, std::io::Error>(())
/// })
/// .unwrap();
/// ```
pub struct BufReader<R> {
    inner: R,
    /// Always initialised; `buf[pos..filled]` is the unread data.
    buf: Vec<u8>,
    pos: usize,
    filled: usize,
    capacity: usize,
    max_line: usize,
}

impl<R: AsyncRead + Unpin> BufReader<R> {
    /// A reader with an 8 KiB buffer.
    pub fn new(inner: R) -> BufReader<R> {
        BufReader::with_capacity(DEFAULT_BUF_SIZE, inner)
    }

    /// A reader with a `capacity`-byte buffer (a capacity of 0 is taken as 1).
    pub fn with_capacity(capacity: usize, inner: R) -> BufReader<R> {
        let capacity = capacity.max(1);
        BufReader { inner, buf: vec![0; capacity], pos: 0, filled: 0, capacity, max_line: usize::MAX }
    }
}

impl<R> BufReader<R> {
    /// The inner reader.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// The inner reader. Reading from it directly skips the buffered bytes, which would then
    /// come out after what it read.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// The inner reader; **the buffered bytes are dropped**. See
    /// [`into_parts`](Self::into_parts) to keep them.
    pub fn into_inner(self) -> R {
        self.inner
    }

    /// The inner reader and the bytes read from it that were not consumed yet.
    pub fn into_parts(self) -> (R, Vec<u8>) {
        let mut buf = self.buf;
        buf.truncate(self.filled);
        buf.drain(..self.pos);
        (self.inner, buf)
    }

    /// The bytes read from the inner reader and not consumed yet.
    pub fn buffer(&self) -> &[u8] {
        &self.buf[self.pos..self.filled]
    }

    /// Marks the first `amt` buffered bytes consumed (at most [`buffer`](Self::buffer)`.len()`),
    /// for example to skip a line that [`set_max_line_length`](Self::set_max_line_length) or
    /// [`read_line`](Self::read_line) rejected.
    pub fn consume(&mut self, amt: usize) {
        self.pos += amt.min(self.filled - self.pos);
        if self.pos == self.filled {
            self.pos = 0;
            self.filled = 0;
            if self.buf.len() > self.capacity {
                self.buf.truncate(self.capacity);
                self.buf.shrink_to_fit();
            }
        }
    }

    /// The size of the buffer for ordinary reads (it grows beyond for long lines and exact
    /// reads, then shrinks back).
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Limits the length of what [`read_until`](Self::read_until) and
    /// [`read_line`](Self::read_line) return, delimiter included; `None` (the default) for no
    /// limit. A longer line fails with `InvalidData`, and its bytes stay buffered: skip them
    /// with [`consume`](Self::consume) or read them with [`read`](Self::read).
    pub fn set_max_line_length(&mut self, max: Option<usize>) {
        self.max_line = max.unwrap_or(usize::MAX);
    }

    /// The limit set by [`set_max_line_length`](Self::set_max_line_length).
    pub fn max_line_length(&self) -> Option<usize> {
        (self.max_line != usize::MAX).then_some(self.max_line)
    }

    /// Makes room for reading: afterwards `buf.len() - pos >= need` and there is free space
    /// after `filled`.
    fn reserve_for(&mut self, need: usize) {
        let fits = need.max(self.capacity);
        if self.pos == self.filled && self.buf.len() > fits {
            // Empty but still grown (a long read cancelled before it consumed anything): back
            // to the size this read needs, so an ordinary read takes no more than `capacity`.
            self.pos = 0;
            self.filled = 0;
            self.buf.truncate(fits);
            self.buf.shrink_to_fit();
        }
        if self.buf.len() - self.pos >= need && self.filled < self.buf.len() {
            return;
        }
        if self.pos > 0 {
            self.buf.copy_within(self.pos..self.filled, 0);
            self.filled -= self.pos;
            self.pos = 0;
        }
        if self.buf.len() < need || self.filled == self.buf.len() {
            let len = need.max(self.buf.len().saturating_mul(2)).max(self.filled + 1);
            self.buf.resize(len, 0);
        }
    }
}

impl<R: AsyncRead + Unpin> BufReader<R> {
    /// One `poll_read` of the inner reader into the free space (there must be some), retried
    /// on `Interrupted`: the number of bytes added, 0 at end of stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        debug_assert!(self.filled < self.buf.len());
        loop {
            let space = self.buf.len() - self.filled;
            match Pin::new(&mut self.inner).poll_read(cx, &mut self.buf[self.filled..]) {
                Poll::Ready(Ok(n)) if n > space => {
                    return Poll::Ready(Err(super::overclaimed("reader", n, space)));
                }
                Poll::Ready(Ok(n)) => {
                    self.filled += n;
                    return Poll::Ready(Ok(n));
                }
                Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                other => return other,
            }
        }
    }

    /// Reads once more into the buffer, waiting if need be (cancellably, through `op`). There
    /// must be free space.
    async fn fill_more(&mut self, op: &mut Op) -> io::Result<usize> {
        op.wait(|cx| self.poll_fill(cx)).await
    }

    /// Buffers something (at least one byte, unless at end of stream), waiting if need be
    /// (cancellably, through `op`): the number of bytes buffered, 0 at end of stream. For `read`
    /// and `copy`.
    pub(super) async fn fill_some(&mut self, op: &mut Op) -> io::Result<usize> {
        op.wait(|cx| self.poll_fill_buf_impl(cx).map_ok(<[u8]>::len)).await
    }

    /// Buffers up to and including the next `byte` (or to end of stream), then passes the
    /// schedule point: the length of that run of buffered bytes.
    async fn fill_until(&mut self, byte: u8) -> io::Result<usize> {
        let mut op = Op::start()?;
        // Buffered bytes after `pos` known not to hold `byte`; positions are relative to `pos`,
        // which moves when the buffer is compacted.
        let mut searched = 0;
        // A read happened since the last search: the next one is another step of the call.
        let mut read_before = false;
        let end = loop {
            let avail = &self.buf[self.pos..self.filled];
            if let Some(i) = avail[searched..].iter().position(|&b| b == byte) {
                break searched + i + 1;
            }
            searched = avail.len();
            if searched > self.max_line {
                // No delimiter within the limit: whatever comes next, the line is too long.
                // (Exactly the limit and no delimiter yet: the end of stream would make it a
                // last line within the limit, so read on.)
                break usize::MAX;
            }
            if std::mem::replace(&mut read_before, true) {
                op.next_step().await?;
            }
            self.reserve_for(searched + 1);
            if self.fill_more(&mut op).await? == 0 {
                break searched;
            }
        };
        if end > self.max_line {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("line longer than the limit of {} bytes (its bytes stay buffered)", self.max_line),
            ));
        }
        op.schedule_point().await;
        Ok(end)
    }

    /// Buffers at least `n` bytes, then passes the schedule point.
    async fn fill_exact(&mut self, n: usize) -> io::Result<()> {
        let mut op = Op::start()?;
        while self.filled - self.pos < n {
            self.reserve_for(n);
            if self.fill_more(&mut op).await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "end of stream after {} of {n} bytes (they stay buffered)",
                        self.filled - self.pos
                    ),
                ));
            }
            if self.filled - self.pos < n {
                op.next_step().await?;
            }
        }
        op.schedule_point().await;
        Ok(())
    }

    /// Buffers everything up to end of stream, then passes the schedule point.
    async fn fill_to_end(&mut self) -> io::Result<()> {
        let mut op = Op::start()?;
        loop {
            self.reserve_for(self.filled - self.pos + self.capacity.min(DEFAULT_BUF_SIZE));
            if self.fill_more(&mut op).await? == 0 {
                break;
            }
            op.next_step().await?;
        }
        op.schedule_point().await;
        Ok(())
    }

    /// Reads what is available into `buf`: buffered bytes first, otherwise one read of the
    /// inner reader (waiting until it gives something). The number of bytes read, 0 at end of
    /// stream. A checkpoint; cancelled, it has consumed nothing.
    ///
    /// Unlike the poll-style `AsyncRead::poll_read`, this never reads into `buf` directly, even
    /// a large one: a read that completed before its schedule point could not otherwise keep
    /// its bytes if the call were dropped there.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for an empty `buf` (0 means end of stream);
    /// [`Cancelled`](crate::Cancelled); the inner reader's error.
    pub async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Err(empty_read());
        }
        let mut op = Op::start()?;
        self.fill_some(&mut op).await?;
        op.schedule_point().await;
        let n = buf.len().min(self.filled - self.pos);
        buf[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.consume(n);
        Ok(n)
    }

    /// Reads up to and including the next `byte`, or to end of stream, and appends it to
    /// `out`: the number of bytes appended (0 only at end of stream). A checkpoint; cancelled,
    /// it has appended nothing and consumed nothing (what it read is still buffered).
    ///
    /// # Errors
    ///
    /// `InvalidData` if a [line length limit](Self::set_max_line_length) is exceeded;
    /// [`Cancelled`](crate::Cancelled); the inner reader's error. In every case `out` is
    /// unchanged and the bytes read so far stay buffered.
    pub async fn read_until(&mut self, byte: u8, out: &mut Vec<u8>) -> io::Result<usize> {
        let end = self.fill_until(byte).await?;
        out.extend_from_slice(&self.buf[self.pos..self.pos + end]);
        self.consume(end);
        Ok(end)
    }

    /// Reads a line (up to and including `\n`, or to end of stream) and appends it to `out`:
    /// the number of bytes appended (0 only at end of stream). A checkpoint; cancelled, it has
    /// appended nothing and consumed nothing.
    ///
    /// # Errors
    ///
    /// `InvalidData` if the line is not UTF-8 (it stays buffered, so
    /// [`read_until`](Self::read_until) can still take it as bytes) or exceeds the
    /// [line length limit](Self::set_max_line_length); [`Cancelled`](crate::Cancelled); the
    /// inner reader's error. In every case `out` is unchanged.
    pub async fn read_line(&mut self, out: &mut String) -> io::Result<usize> {
        let end = self.fill_until(b'\n').await?;
        let line = std::str::from_utf8(&self.buf[self.pos..self.pos + end]).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("line is not valid UTF-8 (it stays buffered): {e}"),
            )
        })?;
        out.push_str(line);
        self.consume(end);
        Ok(end)
    }

    /// Fills `buf` exactly. A checkpoint; cancelled, it has consumed nothing: the bytes it
    /// already read stay buffered, and the next call gets them.
    ///
    /// # Errors
    ///
    /// `UnexpectedEof` if the stream ends first (the bytes read stay buffered, see
    /// [`buffer`](Self::buffer)); [`Cancelled`](crate::Cancelled); the inner reader's error.
    /// `buf` is then unchanged.
    pub async fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self.fill_exact(buf.len()).await?;
        buf.copy_from_slice(&self.buf[self.pos..self.pos + buf.len()]);
        self.consume(buf.len());
        Ok(())
    }

    /// Reads everything up to end of stream and appends it to `out`: the number of bytes
    /// appended. A checkpoint; cancelled, it has appended nothing (everything read so far stays
    /// buffered, which grows to the size of the rest of the stream).
    ///
    /// # Errors
    ///
    /// [`Cancelled`](crate::Cancelled); the inner reader's error. `out` is then unchanged.
    pub async fn read_to_end(&mut self, out: &mut Vec<u8>) -> io::Result<usize> {
        self.fill_to_end().await?;
        let n = self.filled - self.pos;
        out.extend_from_slice(self.buffer());
        self.consume(n);
        Ok(n)
    }

    /// Like [`read_to_end`](Self::read_to_end), for UTF-8 text.
    ///
    /// # Errors
    ///
    /// `InvalidData` if the text is not UTF-8 (it stays buffered); as `read_to_end`.
    pub async fn read_to_string(&mut self, out: &mut String) -> io::Result<usize> {
        self.fill_to_end().await?;
        let text = std::str::from_utf8(self.buffer()).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("stream is not valid UTF-8 (it stays buffered): {e}"),
            )
        })?;
        out.push_str(text);
        let n = self.filled - self.pos;
        self.consume(n);
        Ok(n)
    }

    fn poll_fill_buf_impl(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        if self.pos == self.filled {
            self.reserve_for(self.capacity);
            ready!(self.poll_fill(cx))?;
        }
        Poll::Ready(Ok(self.buffer()))
    }
}

impl<R: fmt::Debug> fmt::Debug for BufReader<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BufReader")
            .field("inner", &self.inner)
            .field("buffered", &(self.filled - self.pos))
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for BufReader<R> {
    /// Buffered bytes first; with an empty buffer, a `buf` at least as large as the capacity
    /// is read into directly.
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.pos == this.filled && buf.len() >= this.capacity {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let avail = ready!(this.poll_fill_buf_impl(cx))?;
        let n = avail.len().min(buf.len());
        buf[..n].copy_from_slice(&avail[..n]);
        this.consume(n);
        Poll::Ready(Ok(n))
    }
}

impl<R: AsyncRead + Unpin> AsyncBufRead for BufReader<R> {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        self.get_mut().poll_fill_buf_impl(cx)
    }

    fn consume(self: Pin<&mut Self>, amt: usize) {
        BufReader::consume(self.get_mut(), amt);
    }
}

impl<R: AsyncWrite + Unpin> AsyncWrite for BufReader<R> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_close(cx)
    }
}
