//! The receiving handle, and its `Stream`.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

#[cfg(doc)]
use super::Sender;
use super::future::{RecvStart, RecvWait};
use super::state::{HandleId, State};
use super::{ChannelStatistics, RecvError, RecvFuture, TryRecvError};
use crate::lowlevel::{Here, Wakeup};

/// The receiving side of a channel. Clone it for more consumers (each value goes to one of
/// them); dropping it closes it.
///
/// It belongs to the thread of the run that uses it (`!Send`). Each clone is a handle of its
/// own: closing one fails only the receives waiting on it; the senders see the channel
/// disconnected when every clone is closed.
///
/// ```
/// use std::cell::RefCell;
/// use hatchery::{channel, nursery, Error, RecvError};
/// let seen = RefCell::new(Vec::new());
/// hatchery::testing::run(async {
///     let (tx, rx) = channel::<u32>(0);
///     nursery(async |n| {
///         for worker in 0..2 {
///             let (rx, seen) = (rx.clone(), &seen);
///             n.start_soon(async move {
///                 loop {
///                     match rx.recv().await {
///                         Ok(v) => seen.borrow_mut().push(v),
///                         Err(RecvError::EndOfChannel) => return Ok(()),
///                         Err(e) => return Err(e.into()),
///                     }
///                 }
///             });
///         }
///         for v in 0..4 {
///             tx.send(v).await?;
///         }
///         drop(tx); // the end of the channel stops both workers
///         Ok::<_, Error>(())
///     })
///     .await
///     .unwrap();
/// });
/// let mut seen = seen.into_inner();
/// seen.sort();
/// assert_eq!(seen, [0, 1, 2, 3]); // each value exactly once
/// ```
///
/// It is also a [`Stream`](futures_core::Stream) of `Result<T, RecvError>` that ends (`None`)
/// at the end of the channel, so `TryStreamExt` combinators work on it.
pub struct Receiver<T> {
    pub(super) shared: Rc<RefCell<State<T>>>,
    /// Tells this handle's waiting receives apart from the other clones'.
    pub(super) id: HandleId,
    closed: Cell<bool>,
    /// The `Stream`'s pending receive, if it is waiting. A `RefCell`: a `next()` future dropped
    /// while it waited leaves it behind, and `recv`, `try_recv` and `close` (which cannot run
    /// while a `next()` future borrows the handle) give it up first (`drop_stream_wait`).
    stream: RefCell<Option<RecvWait>>,
}

impl<T> Receiver<T> {
    /// An open handle.
    pub(super) fn new(shared: Rc<RefCell<State<T>>>, id: HandleId) -> Self {
        Receiver { shared, id, closed: Cell::new(false), stream: RefCell::new(None) }
    }

    /// Receives the next value, waiting until there is one.
    ///
    /// # Errors
    ///
    /// [`RecvError::Closed`] if this handle is closed, before or while waiting;
    /// [`RecvError::EndOfChannel`] once every sender is closed and the buffer is drained;
    /// [`RecvError::Cancelled`] if the calling code is cancelled first.
    ///
    /// # Cancellation
    ///
    /// A checkpoint, also when a value is ready (S2.1). Cancellation is atomic: a cancelled
    /// receive consumed nothing; a receive that was handed a value returns it even if a
    /// cancellation arrived meanwhile. In an already-cancelled scope it fails without touching
    /// the channel, even if a value is ready. Dropping the future after it was handed a value
    /// gives the value back to the channel (to the next waiting receiver, or the front of the
    /// buffer).
    ///
    /// ```
    /// use std::time::Duration;
    /// use hatchery::{channel, nursery, now, sleep, Error, Instant};
    /// hatchery::testing::run(async {
    ///     let (tx, rx) = channel::<&str>(0);
    ///     nursery(async |n| {
    ///         n.start_soon(async {
    ///             sleep(Duration::from_secs(2)).await?;
    ///             tx.send("ping").await?;
    ///             Ok::<_, Error>(())
    ///         });
    ///         assert_eq!(rx.recv().await?, "ping");
    ///         assert_eq!(now(), Instant::ZERO + Duration::from_secs(2));
    ///         Ok::<_, Error>(())
    ///     })
    ///     .await
    ///     .unwrap();
    /// });
    /// ```
    pub fn recv(&self) -> RecvFuture<'_, T> {
        RecvFuture::new(self)
    }

    /// Receives a value if one is available without waiting (S6.3): from a waiting sender (its
    /// send completes) or the buffer's head.
    ///
    /// # Cancellation
    ///
    /// Not a checkpoint (it cannot block): it works the same in a cancelled scope.
    ///
    /// # Errors
    ///
    /// [`TryRecvError::Closed`] (this handle), [`TryRecvError::EndOfChannel`] (every sender
    /// closed, buffer drained) or [`TryRecvError::Empty`].
    ///
    /// ```
    /// use hatchery::{channel, TryRecvError};
    /// let (tx, rx) = channel::<u32>(2);
    /// tx.try_send(7).unwrap();
    /// assert_eq!(rx.try_recv(), Ok(7));
    /// assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
    /// rx.close();
    /// assert_eq!(rx.try_recv(), Err(TryRecvError::Closed));
    /// ```
    pub fn try_recv(&self) -> Result<T, TryRecvError> {
        if self.is_closed() {
            return Err(TryRecvError::Closed);
        }
        self.drop_stream_wait();
        let r = self.shared.borrow_mut().try_recv();
        r.map(|(v, woken)| {
            woken.into_iter().for_each(Wakeup::wake);
            v
        })
    }

    /// Closes this handle (S6.6, S6.7): synchronous, idempotent, not a checkpoint. Tasks
    /// waiting in [`recv`](Receiver::recv) on this handle fail with `Closed`. If it was the last
    /// open receiver, the buffer is discarded, waiting senders fail with `Disconnected` (and get
    /// their values back), and later sends fail the same way. Dropping the handle does the same.
    ///
    /// ```
    /// use hatchery::{channel, SendErrorKind};
    /// hatchery::testing::run(async {
    ///     let (tx, rx) = channel::<u32>(1);
    ///     tx.send(1).await.unwrap();
    ///     rx.close();
    ///     assert_eq!(tx.statistics().buffer_used, 0); // discarded
    ///     let e = tx.send(2).await.unwrap_err();
    ///     assert_eq!((e.value, e.kind), (2, SendErrorKind::Disconnected));
    /// });
    /// ```
    pub fn close(&self) {
        if self.closed.replace(true) {
            return;
        }
        self.drop_stream_wait();
        let (woken, discarded) = self.shared.borrow_mut().close_receiver(self.id);
        woken.into_iter().for_each(Wakeup::wake);
        drop(discarded);
    }

    /// Whether this handle is closed.
    ///
    /// ```
    /// let (_tx, rx) = hatchery::channel::<u32>(0);
    /// drop(rx.clone()); // closes the clone only
    /// assert!(!rx.is_closed());
    /// ```
    pub fn is_closed(&self) -> bool {
        self.closed.get()
    }

    /// Whether `other` is a handle of the same channel.
    ///
    /// ```
    /// let (_tx, rx) = hatchery::channel::<u32>(0);
    /// assert!(rx.same_channel(&rx.clone()));
    /// ```
    pub fn same_channel(&self, other: &Receiver<T>) -> bool {
        Rc::ptr_eq(&self.shared, &other.shared)
    }

    /// The channel's [`ChannelStatistics`] (the same as [`Sender::statistics`]).
    ///
    /// ```
    /// use hatchery::{channel, nursery, testing::wait_all_tasks_blocked, Error};
    /// hatchery::testing::run(async {
    ///     let (tx, rx) = channel::<u32>(0);
    ///     nursery(async |n| {
    ///         n.start_soon(async {
    ///             rx.recv().await?;
    ///             Ok::<_, Error>(())
    ///         });
    ///         wait_all_tasks_blocked().await?;
    ///         assert_eq!(rx.statistics().tasks_waiting_recv, 1);
    ///         tx.try_send(1)?;
    ///         assert_eq!(rx.statistics().tasks_waiting_recv, 0);
    ///         Ok(())
    ///     })
    ///     .await
    ///     .unwrap();
    /// });
    /// ```
    pub fn statistics(&self) -> ChannelStatistics {
        self.shared.borrow().statistics()
    }
}

impl<T> Clone for Receiver<T> {
    /// Another receiver on the same channel; values are shared out, not broadcast. Cloning a
    /// closed handle gives a closed handle. The clone does not share a pending `Stream` wait.
    fn clone(&self) -> Self {
        let mut state = self.shared.borrow_mut();
        let id = if self.is_closed() { state.closed_handle() } else { state.open_handle(false) };
        drop(state);
        Receiver {
            shared: self.shared.clone(),
            id,
            closed: Cell::new(self.is_closed()),
            stream: RefCell::new(None),
        }
    }
}

impl<T> Receiver<T> {
    /// Gives up the wait a `Stream` poll left behind (its `next()` future was dropped, say in a
    /// `select!` whose other branch won): a value already handed to it goes back to the
    /// channel, to the longest-waiting receiver or the front of the buffer, where this
    /// handle's own `recv`, `try_recv` finds it first. Otherwise the value would sit in a wait
    /// nobody polls, behind later values.
    #[inline]
    pub(super) fn drop_stream_wait(&self) {
        if self.stream.borrow().is_some() {
            self.give_up_stream_wait();
        }
    }

    #[cold]
    fn give_up_stream_wait(&self) {
        // Out of the `RefCell` first: abandoning wakes, which is foreign code.
        let wait = self.stream.borrow_mut().take();
        if let Some(wait) = wait {
            wait.abandon(&self.shared);
        }
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        // `close` first gives back a value handed to the stream's pending wait, then closes
        // (which discards it with the buffer if this was the last receiver). A handle closed
        // earlier gave its wait up then, and cannot have parked another.
        self.close();
    }
}

impl<T> fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Receiver");
        d.field("closed", &self.is_closed());
        if let Ok(state) = self.shared.try_borrow() {
            d.field("statistics", &state.statistics());
        }
        d.finish_non_exhaustive()
    }
}

/// The values of the channel, until its end.
///
/// Each item is what [`recv`](Receiver::recv) would return; the stream ends (`None`) at the end
/// of the channel (every sender closed, buffer drained).
///
/// # Cancellation
///
/// Each new item starts with a cancel point: in a cancelled scope the stream yields
/// `Some(Err(RecvError::Cancelled(_)))` (again on every poll: cancellation is level-triggered),
/// consuming nothing, so `?` ends the loop and the cancel scope absorbs it. A wait is
/// cancellable and atomic as for `recv`. But **`poll_next` is not a schedule point when a value
/// is ready**: a loop over a busy channel does not yield to other tasks between items. Add a
/// [`checkpoint`](crate::lowlevel::checkpoint) in the loop if it must, or use `recv`, which
/// always is one.
///
/// ```
/// use std::pin::Pin;
/// use futures_core::Stream;
/// use hatchery::channel;
///
/// // What `StreamExt::next` does, without the dependency.
/// async fn next<S: Stream + Unpin>(s: &mut S) -> Option<S::Item> {
///     std::future::poll_fn(|cx| Pin::new(&mut *s).poll_next(cx)).await
/// }
///
/// let sum = hatchery::testing::run(async {
///     let (tx, mut rx) = channel::<u32>(8);
///     for i in 1..=4 {
///         tx.send(i).await?;
///     }
///     drop(tx);
///     let mut sum = 0;
///     while let Some(v) = next(&mut rx).await {
///         sum += v?;
///     }
///     Ok::<_, hatchery::Error>(sum)
/// });
/// assert_eq!(sum.unwrap(), 10);
/// ```
impl<T> futures_core::Stream for Receiver<T> {
    type Item = Result<T, RecvError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let r = match this.stream.get_mut() {
            Some(wait) => {
                let r = std::task::ready!(wait.poll(&this.shared, cx));
                // Completed: the entry is gone; dropping the wait unregisters its `Park`.
                *this.stream.get_mut() = None;
                r
            }
            None => match this.start_recv(&Here::get(), cx, true) {
                RecvStart::Now(v, woken) => {
                    woken.into_iter().for_each(Wakeup::wake);
                    Ok(v)
                }
                RecvStart::Parked(wait) => {
                    *this.stream.get_mut() = Some(wait);
                    return Poll::Pending;
                }
                RecvStart::Failed(e) => Err(e),
            },
        };
        match r {
            Err(RecvError::EndOfChannel) => Poll::Ready(None),
            r => Poll::Ready(Some(r)),
        }
    }
}
