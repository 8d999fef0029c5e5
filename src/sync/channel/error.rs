//! The channel's errors. Every error of a send hands the value back; every error says which of
//! the three things happened: this handle was closed, the other side is gone, or the caller was
//! cancelled.
//!
//! Conversions into [`io::Error`] and [`crate::Error`] drop the value (there is nowhere to keep
//! a `T` that may not be `Send`), keep a cancellation recognisable ([`CancelError`] finds it
//! again) and report a closed handle as [`ClosedResource`], as the rest of the crate does.

use std::error::Error as StdError;
use std::fmt;
use std::io;

use crate::error::{CancelError, Cancelled, ClosedResource, Error};

/// Why [`Sender::send`](super::Sender::send) failed. The value was not delivered and comes back
/// in [`value`](SendError::value).
///
/// ```
/// use hatchery::{channel, SendErrorKind};
/// hatchery::testing::run(async {
///     let (tx, rx) = channel::<String>(1);
///     drop(rx);
///     let err = tx.send("hello".to_string()).await.unwrap_err();
///     assert_eq!(err.kind, SendErrorKind::Disconnected);
///     assert_eq!(err.into_inner(), "hello");
/// });
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct SendError<T> {
    /// The value that was not sent.
    pub value: T,
    /// What went wrong.
    pub kind: SendErrorKind,
}

/// What went wrong in a [`SendError`].
///
/// ```
/// use hatchery::{channel, SendErrorKind};
/// hatchery::testing::run(async {
///     let (tx, _rx) = channel::<u32>(0);
///     tx.close();
///     assert_eq!(tx.send(1).await.unwrap_err().kind, SendErrorKind::Closed);
/// });
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendErrorKind {
    /// This sender handle was closed (by [`close`](super::Sender::close)), before or while
    /// the task waited.
    #[error("this sender was closed")]
    Closed,
    /// Every receiver of the channel is closed: nobody can ever receive the value.
    #[error("every receiver of the channel is closed")]
    Disconnected,
    /// The calling code was cancelled before the value was delivered. `?` propagates it as a
    /// cancellation (this type implements [`CancelError`]); match the error to keep the value.
    #[error(transparent)]
    Cancelled(Cancelled),
}

impl<T> SendError<T> {
    /// An error with its value.
    ///
    /// ```
    /// use hatchery::{SendError, SendErrorKind};
    /// let e = SendError::new("v", SendErrorKind::Disconnected);
    /// assert!(e.is_disconnected() && !e.is_closed() && !e.is_cancelled());
    /// assert_eq!(e.to_string(), "every receiver of the channel is closed");
    /// assert_eq!(e.clone().into_inner(), "v");
    /// assert_eq!(e.into_parts(), ("v", SendErrorKind::Disconnected));
    /// ```
    pub fn new(value: T, kind: SendErrorKind) -> Self {
        SendError { value, kind }
    }

    /// The value that was not sent.
    pub fn into_inner(self) -> T {
        self.value
    }

    /// The value and what went wrong.
    pub fn into_parts(self) -> (T, SendErrorKind) {
        (self.value, self.kind)
    }

    /// Whether this sender handle was closed.
    pub fn is_closed(&self) -> bool {
        self.kind == SendErrorKind::Closed
    }

    /// Whether every receiver is closed.
    pub fn is_disconnected(&self) -> bool {
        self.kind == SendErrorKind::Disconnected
    }

    /// Whether the send was cancelled.
    pub fn is_cancelled(&self) -> bool {
        matches!(self.kind, SendErrorKind::Cancelled(_))
    }
}

impl<T> fmt::Debug for SendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendError").field("kind", &self.kind).finish_non_exhaustive()
    }
}

impl<T> fmt::Display for SendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.kind, f)
    }
}

impl<T> StdError for SendError<T> {}

impl<T> CancelError for SendError<T> {
    fn cancelled(&self) -> Option<&Cancelled> {
        self.kind.cancelled()
    }
}

impl CancelError for SendErrorKind {
    fn cancelled(&self) -> Option<&Cancelled> {
        match self {
            SendErrorKind::Cancelled(c) => Some(c),
            _ => None,
        }
    }
}

impl From<SendErrorKind> for io::Error {
    /// `Cancelled` stays a cancellation, `Closed` becomes [`ClosedResource`] (kind
    /// `NotConnected`), `Disconnected` has kind `BrokenPipe`.
    fn from(kind: SendErrorKind) -> io::Error {
        match kind {
            SendErrorKind::Cancelled(c) => c.into(),
            SendErrorKind::Closed => ClosedResource.into(),
            SendErrorKind::Disconnected => io::Error::new(io::ErrorKind::BrokenPipe, kind),
        }
    }
}

impl<T> From<SendError<T>> for io::Error {
    /// Drops the value, then converts the kind.
    fn from(e: SendError<T>) -> io::Error {
        e.kind.into()
    }
}

impl From<SendErrorKind> for Error {
    /// `Cancelled` becomes [`Error::Cancelled`]; `Closed` wraps [`ClosedResource`]; anything
    /// else wraps the kind ([`Error::Other`]).
    fn from(kind: SendErrorKind) -> Error {
        match kind {
            SendErrorKind::Cancelled(c) => Error::Cancelled(c),
            SendErrorKind::Closed => Error::other(ClosedResource),
            other => Error::other(other),
        }
    }
}

impl<T> From<SendError<T>> for Error {
    /// Drops the value, then as `From<SendErrorKind>`.
    fn from(e: SendError<T>) -> Error {
        e.kind.into()
    }
}

/// Why [`Sender::try_send`](super::Sender::try_send) failed. The value comes back in every case.
///
/// ```
/// use hatchery::{channel, TrySendError};
/// let (tx, _rx) = channel::<u32>(1);
/// assert_eq!(tx.try_send(1), Ok(()));
/// assert_eq!(tx.try_send(2), Err(TrySendError::Full(2)));
/// tx.close();
/// assert_eq!(tx.try_send(3), Err(TrySendError::Closed(3)));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub enum TrySendError<T> {
    /// The buffer is full, or other senders are already waiting for room (they own the next
    /// free slots), or, with capacity 0, no receiver is waiting.
    Full(T),
    /// This sender handle was closed.
    Closed(T),
    /// Every receiver of the channel is closed.
    Disconnected(T),
}

impl<T> TrySendError<T> {
    /// The value that was not sent.
    ///
    /// ```
    /// use hatchery::{channel, TrySendError};
    /// let (tx, rx) = channel::<String>(0);
    /// let e = tx.try_send("hi".to_string()).unwrap_err();
    /// assert!(e.is_full() && !e.is_closed() && !e.is_disconnected());
    /// assert_eq!(e.without_value(), TrySendError::Full(()));
    /// assert_eq!(e.into_inner(), "hi");
    /// # drop(rx);
    /// ```
    pub fn into_inner(self) -> T {
        match self {
            TrySendError::Full(v) | TrySendError::Closed(v) | TrySendError::Disconnected(v) => v,
        }
    }

    /// Whether the channel had no room.
    pub fn is_full(&self) -> bool {
        matches!(self, TrySendError::Full(_))
    }

    /// Whether this sender handle was closed.
    pub fn is_closed(&self) -> bool {
        matches!(self, TrySendError::Closed(_))
    }

    /// Whether every receiver is closed.
    pub fn is_disconnected(&self) -> bool {
        matches!(self, TrySendError::Disconnected(_))
    }

    /// The same error without its value.
    pub fn without_value(&self) -> TrySendError<()> {
        match self {
            TrySendError::Full(_) => TrySendError::Full(()),
            TrySendError::Closed(_) => TrySendError::Closed(()),
            TrySendError::Disconnected(_) => TrySendError::Disconnected(()),
        }
    }
}

impl<T> fmt::Debug for TrySendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TrySendError::Full(_) => "Full(..)",
            TrySendError::Closed(_) => "Closed(..)",
            TrySendError::Disconnected(_) => "Disconnected(..)",
        })
    }
}

impl<T> fmt::Display for TrySendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TrySendError::Full(_) => "the channel is full",
            TrySendError::Closed(_) => "this sender was closed",
            TrySendError::Disconnected(_) => "every receiver of the channel is closed",
        })
    }
}

impl<T> StdError for TrySendError<T> {}

impl<T> CancelError for TrySendError<T> {
    /// Never: `try_send` is not a cancel point.
    fn cancelled(&self) -> Option<&Cancelled> {
        None
    }
}

impl<T> From<TrySendError<T>> for io::Error {
    /// Drops the value. `Full` has kind `WouldBlock`, `Closed` becomes [`ClosedResource`],
    /// `Disconnected` has kind `BrokenPipe`; the payload is the error as `TrySendError<()>`.
    fn from(e: TrySendError<T>) -> io::Error {
        match e {
            TrySendError::Full(_) => io::Error::new(io::ErrorKind::WouldBlock, e.without_value()),
            TrySendError::Closed(_) => ClosedResource.into(),
            TrySendError::Disconnected(_) => io::Error::new(io::ErrorKind::BrokenPipe, e.without_value()),
        }
    }
}

impl<T> From<TrySendError<T>> for Error {
    /// Drops the value; `Closed` wraps [`ClosedResource`], the others `TrySendError<()>`.
    fn from(e: TrySendError<T>) -> Error {
        match e {
            TrySendError::Closed(_) => Error::other(ClosedResource),
            other => Error::other(other.without_value()),
        }
    }
}

/// Why [`Receiver::recv`](super::Receiver::recv) gave no value. Nothing was consumed.
///
/// ```
/// use hatchery::{channel, RecvError};
/// hatchery::testing::run(async {
///     let (tx, rx) = channel::<u32>(4);
///     tx.try_send(1).unwrap();
///     drop(tx);
///     assert_eq!(rx.recv().await, Ok(1)); // buffered values outlive the senders
///     assert_eq!(rx.recv().await, Err(RecvError::EndOfChannel));
/// });
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecvError {
    /// The calling code was cancelled; nothing was received. `?` propagates it as a cancellation.
    #[error(transparent)]
    Cancelled(Cancelled),
    /// This receiver handle was closed (by [`close`](super::Receiver::close)), before or while
    /// the task waited.
    #[error("this receiver was closed")]
    Closed,
    /// Every sender is closed and the buffer is drained: no value will ever come.
    #[error("end of channel: every sender is closed and the buffer is drained")]
    EndOfChannel,
}

impl RecvError {
    /// Whether this is the normal end of the channel.
    ///
    /// ```
    /// use hatchery::RecvError;
    /// assert!(RecvError::EndOfChannel.is_end_of_channel());
    /// assert!(!RecvError::Closed.is_end_of_channel());
    /// ```
    pub fn is_end_of_channel(&self) -> bool {
        *self == RecvError::EndOfChannel
    }
}

impl From<Cancelled> for RecvError {
    fn from(c: Cancelled) -> Self {
        RecvError::Cancelled(c)
    }
}

impl CancelError for RecvError {
    fn cancelled(&self) -> Option<&Cancelled> {
        match self {
            RecvError::Cancelled(c) => Some(c),
            _ => None,
        }
    }
}

impl From<RecvError> for io::Error {
    /// `Cancelled` stays a cancellation, `Closed` becomes [`ClosedResource`], `EndOfChannel`
    /// has kind `UnexpectedEof`.
    fn from(e: RecvError) -> io::Error {
        match e {
            RecvError::Cancelled(c) => c.into(),
            RecvError::Closed => ClosedResource.into(),
            RecvError::EndOfChannel => io::Error::new(io::ErrorKind::UnexpectedEof, e),
        }
    }
}

impl From<RecvError> for Error {
    /// `Cancelled` becomes [`Error::Cancelled`], `Closed` wraps [`ClosedResource`],
    /// `EndOfChannel` wraps itself.
    fn from(e: RecvError) -> Error {
        match e {
            RecvError::Cancelled(c) => Error::Cancelled(c),
            RecvError::Closed => Error::other(ClosedResource),
            other => Error::other(other),
        }
    }
}

/// Why [`Receiver::try_recv`](super::Receiver::try_recv) gave no value.
///
/// ```
/// use hatchery::{channel, TryRecvError};
/// let (tx, rx) = channel::<u32>(1);
/// assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
/// drop(tx);
/// assert_eq!(rx.try_recv(), Err(TryRecvError::EndOfChannel));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TryRecvError {
    /// Nothing to receive now (a sender is open and may send later).
    #[error("the channel is empty")]
    Empty,
    /// This receiver handle was closed.
    #[error("this receiver was closed")]
    Closed,
    /// Every sender is closed and the buffer is drained.
    #[error("end of channel: every sender is closed and the buffer is drained")]
    EndOfChannel,
}

impl CancelError for TryRecvError {
    /// Never: `try_recv` is not a cancel point.
    fn cancelled(&self) -> Option<&Cancelled> {
        None
    }
}

impl From<TryRecvError> for io::Error {
    /// `Empty` has kind `WouldBlock`, `Closed` becomes [`ClosedResource`], `EndOfChannel` has
    /// kind `UnexpectedEof`.
    fn from(e: TryRecvError) -> io::Error {
        match e {
            TryRecvError::Empty => io::Error::new(io::ErrorKind::WouldBlock, e),
            TryRecvError::Closed => ClosedResource.into(),
            TryRecvError::EndOfChannel => io::Error::new(io::ErrorKind::UnexpectedEof, e),
        }
    }
}

impl From<TryRecvError> for Error {
    /// `Closed` wraps [`ClosedResource`], the others wrap themselves.
    fn from(e: TryRecvError) -> Error {
        match e {
            TryRecvError::Closed => Error::other(ClosedResource),
            other => Error::other(other),
        }
    }
}
