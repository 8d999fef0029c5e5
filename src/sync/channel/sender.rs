//! The sending handle.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::rc::Rc;

use super::state::{HandleId, State};
use super::{ChannelStatistics, SendFuture, TrySendError};
#[cfg(doc)]
use super::{RecvError, SendError, SendErrorKind, channel};
use crate::lowlevel::Wakeup;

/// The sending side of a channel. Clone it for more producers; dropping it closes it.
///
/// It belongs to the thread of the run that uses it (`!Send`). Each clone is a handle of its
/// own: closing one fails only the sends waiting on it, and the channel ends when every clone is
/// closed.
///
/// ```
/// use hatchery::{channel, nursery, Error};
/// let total = hatchery::testing::run(async {
///     let (tx, rx) = channel::<u32>(1);
///     nursery(async |n| {
///         for p in 0..3 {
///             let tx = tx.clone();
///             n.start_soon(async move {
///                 tx.send(p).await?;
///                 Ok::<_, Error>(())
///             });
///         }
///         drop(tx); // the producers hold the only senders now
///         let mut total = 0;
///         loop {
///             match rx.recv().await {
///                 Ok(v) => total += v,
///                 Err(e) if e.is_end_of_channel() => break,
///                 Err(e) => return Err(e.into()), // a cancellation, for instance
///             }
///         }
///         Ok(total)
///     })
///     .await
/// });
/// assert_eq!(total.unwrap(), Some(3));
/// ```
pub struct Sender<T> {
    pub(super) shared: Rc<RefCell<State<T>>>,
    /// Tells this handle's waiting sends apart from the other clones'.
    pub(super) id: HandleId,
    closed: Cell<bool>,
}

impl<T> Sender<T> {
    /// An open handle.
    pub(super) fn new(shared: Rc<RefCell<State<T>>>, id: HandleId) -> Self {
        Sender { shared, id, closed: Cell::new(false) }
    }

    /// Sends `value`, waiting while the channel has no room (with capacity 0: until a receiver
    /// takes it).
    ///
    /// # Errors
    ///
    /// A [`SendError`] that hands `value` back, with its [`kind`](SendError::kind):
    /// [`Closed`](SendErrorKind::Closed) if this handle is closed, before or while waiting;
    /// [`Disconnected`](SendErrorKind::Disconnected) if every receiver is closed;
    /// [`Cancelled`](SendErrorKind::Cancelled) if the calling code is cancelled first.
    ///
    /// # Cancellation
    ///
    /// A checkpoint, also when it completes at once (S2.1). Cancellation is atomic: a cancelled
    /// send delivered nothing and returns the value; a send whose value was taken returns
    /// `Ok(())` even if a cancellation arrived meanwhile. In an already-cancelled scope it fails
    /// without touching the channel. Dropping the future while it waits drops the value,
    /// undelivered.
    ///
    /// ```
    /// use std::time::Duration;
    /// use hatchery::{channel, move_on_after, SendErrorKind};
    /// hatchery::testing::run(async {
    ///     let (tx, rx) = channel::<String>(0);
    ///     // Nobody receives: give up after a second, and get the value back.
    ///     let r = move_on_after(Duration::from_secs(1), async {
    ///         match tx.send("hello".to_string()).await {
    ///             Err(e) if e.is_cancelled() => Ok(Some(e.into_inner())),
    ///             other => other.map(|()| None),
    ///         }
    ///     })
    ///     .await;
    ///     assert_eq!(r.unwrap(), Some(Some("hello".to_string())));
    ///     assert_eq!(rx.statistics().tasks_waiting_send, 0);
    /// });
    /// ```
    pub fn send(&self, value: T) -> SendFuture<'_, T> {
        SendFuture::new(self, value)
    }

    /// Sends `value` if that is possible without waiting (S6.2): to the longest-waiting receiver
    /// if there is one, else into the buffer if it has room and no sender is waiting.
    ///
    /// # Cancellation
    ///
    /// Not a checkpoint (it cannot block): it works the same in a cancelled scope.
    ///
    /// # Errors
    ///
    /// [`TrySendError`] with `value`: `Closed` (this handle), `Disconnected` (every receiver
    /// closed) or `Full`, checked in that order.
    ///
    /// ```
    /// use hatchery::{channel, TrySendError};
    /// let (tx, rx) = channel::<u32>(1);
    /// assert_eq!(tx.try_send(1), Ok(()));
    /// assert_eq!(tx.try_send(2), Err(TrySendError::Full(2)));
    /// drop(rx);
    /// assert_eq!(tx.try_send(3), Err(TrySendError::Disconnected(3)));
    /// ```
    pub fn try_send(&self, value: T) -> Result<(), TrySendError<T>> {
        if self.is_closed() {
            return Err(TrySendError::Closed(value));
        }
        let r = self.shared.borrow_mut().try_send(value);
        r.map(|woken| woken.into_iter().for_each(Wakeup::wake))
    }

    /// Closes this handle (S6.6, S6.7): synchronous, idempotent, not a checkpoint. Tasks waiting
    /// in [`send`](Sender::send) on this handle fail with `Closed` and get their values back. If
    /// it was the last open sender, receivers get [`EndOfChannel`](RecvError::EndOfChannel)
    /// once the buffer is drained (waiting receivers at once). Dropping the handle does the same.
    ///
    /// ```
    /// use hatchery::{channel, RecvError, TrySendError};
    /// hatchery::testing::run(async {
    ///     let (tx, rx) = channel::<u32>(2);
    ///     let tx2 = tx.clone();
    ///     tx.try_send(1).unwrap();
    ///     tx.close();
    ///     tx.close(); // idempotent
    ///     assert_eq!(tx.try_send(2), Err(TrySendError::Closed(2)));
    ///     tx2.close(); // the last sender
    ///     assert_eq!(rx.recv().await, Ok(1));
    ///     assert_eq!(rx.recv().await, Err(RecvError::EndOfChannel));
    /// });
    /// ```
    pub fn close(&self) {
        if self.closed.replace(true) {
            return;
        }
        let woken = self.shared.borrow_mut().close_sender(self.id);
        woken.into_iter().for_each(Wakeup::wake);
    }

    /// Whether this handle is closed.
    ///
    /// ```
    /// let (tx, _rx) = hatchery::channel::<u32>(0);
    /// let tx2 = tx.clone();
    /// tx.close();
    /// assert!(tx.is_closed() && !tx2.is_closed());
    /// ```
    pub fn is_closed(&self) -> bool {
        self.closed.get()
    }

    /// Whether every receiver is closed (sends fail with `Disconnected`).
    ///
    /// ```
    /// let (tx, rx) = hatchery::channel::<u32>(0);
    /// assert!(!tx.is_disconnected());
    /// drop(rx);
    /// assert!(tx.is_disconnected());
    /// ```
    pub fn is_disconnected(&self) -> bool {
        self.shared.borrow().statistics().open_receivers == 0
    }

    /// Whether `other` is a handle of the same channel.
    ///
    /// ```
    /// let (tx, _rx) = hatchery::channel::<u32>(0);
    /// let (other, _other_rx) = hatchery::channel::<u32>(0);
    /// assert!(tx.same_channel(&tx.clone()) && !tx.same_channel(&other));
    /// ```
    pub fn same_channel(&self, other: &Sender<T>) -> bool {
        Rc::ptr_eq(&self.shared, &other.shared)
    }

    /// The channel's [`ChannelStatistics`].
    ///
    /// ```
    /// let (tx, rx) = hatchery::channel::<u32>(4);
    /// tx.try_send(1).unwrap();
    /// let _rx2 = rx.clone();
    /// let s = tx.statistics();
    /// assert_eq!((s.buffer_used, s.capacity, s.open_senders, s.open_receivers), (1, Some(4), 1, 2));
    /// assert_eq!(s, rx.statistics());
    /// ```
    pub fn statistics(&self) -> ChannelStatistics {
        self.shared.borrow().statistics()
    }
}

impl<T> Clone for Sender<T> {
    /// Another sender on the same channel. The channel ends only when every clone is closed.
    /// Cloning a closed handle gives a closed handle (Trio raises instead; `Clone` cannot
    /// fail): it cannot reopen the sending side.
    fn clone(&self) -> Self {
        let mut state = self.shared.borrow_mut();
        let id = if self.is_closed() { state.closed_handle() } else { state.open_handle(true) };
        drop(state);
        Sender { shared: self.shared.clone(), id, closed: Cell::new(self.is_closed()) }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        self.close();
    }
}

impl<T> fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Sender");
        d.field("closed", &self.is_closed());
        if let Ok(state) = self.shared.try_borrow() {
            d.field("statistics", &state.statistics());
        }
        d.finish_non_exhaustive()
    }
}
