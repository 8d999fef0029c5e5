//! Memory channels: Trio's `open_memory_channel`, with values handed back instead of lost.
//!
//! [`channel(capacity)`](channel) makes a channel with a buffer of `capacity` values (`0` is a
//! *rendezvous* channel: a send completes only when a receiver takes the value);
//! [`unbounded`] makes one whose sends never wait. Both sides are cloneable: many producers,
//! many consumers, and each value goes to exactly one receiver. The [`Receiver`] is also a
//! [`Stream`](futures_core::Stream) that ends at the end of the channel.
//!
//! ```
//! use hatchery::{channel, nursery, Error};
//! let got = hatchery::testing::run(async {
//!     let (tx, rx) = channel::<u32>(0);
//!     let mut got = Vec::new();
//!     nursery(async |n| {
//!         n.start_soon(async move {
//!             for i in 0..3 {
//!                 tx.send(i).await?;
//!             }
//!             Ok(()) // dropping `tx`, the last sender, ends the channel
//!         });
//!         loop {
//!             match rx.recv().await {
//!                 Ok(v) => got.push(v),
//!                 Err(e) if e.is_end_of_channel() => break,
//!                 Err(e) => return Err(e.into()),
//!             }
//!         }
//!         Ok::<_, Error>(())
//!     })
//!     .await
//!     .unwrap();
//!     got
//! });
//! assert_eq!(got, [0, 1, 2]);
//! ```
//!
//! # Closing
//!
//! Each handle (each clone) is closed by [`close`](Sender::close) (synchronous, idempotent, not
//! a checkpoint) or by dropping it. A closed handle fails every later operation with a
//! `Closed` error, and the tasks waiting *on that handle* are woken with it. When the **last
//! sender** closes, receivers drain what is buffered and then get
//! [`EndOfChannel`](RecvError::EndOfChannel); waiting receivers get it at once. When the **last
//! receiver** closes, the buffer is discarded (dropped), waiting senders are woken with
//! [`Disconnected`](SendErrorKind::Disconnected) and their values, and later sends fail the
//! same way (S6.6, S6.8). Cloning a closed handle gives a closed handle (Trio raises; `Clone`
//! cannot fail), so a clone never reopens a side.
//!
//! # Order and fairness
//!
//! Waiting senders and waiting receivers each form a FIFO queue. A waiting receiver owns the
//! next value: a send hands it straight to the longest-waiting receiver, so a `try_recv` from a
//! third party right after finds nothing. A waiting sender owns the next free slot: a receive
//! that takes the head of a full buffer moves the longest-waiting sender's value to the tail and
//! completes that send, so a `try_send` from a third party finds the buffer full (S6.2, S6.3,
//! S6.5). Values from one producer are handed out in the order it sent them.
//!
//! # Cancellation
//!
//! [`send`](Sender::send) and [`recv`](Receiver::recv) are checkpoints and their cancellation is
//! atomic (S6.4): either the operation completed, or it fails with `Cancelled` and the channel
//! is as if it had never been called. A cancelled send hands its value back in the
//! [`SendError`]; a cancelled receive consumed nothing. In an already-cancelled scope neither
//! touches the channel. Once the counterpart has taken the value (or given one), the operation
//! has completed and returns its result; the cancellation waits for the next checkpoint.
//!
//! Dropping a pending future is safe too. A dropped send that was still waiting delivered
//! nothing (its value is dropped with it). A value already handed to a receive whose future is
//! dropped before it returned goes to the longest-waiting receiver, or else back to the front of
//! the buffer: never lost, never duplicated, ahead of every value not yet handed out (values
//! handed meanwhile to other receivers stay theirs, so it may then come out after a later value
//! from the same producer). That is also the one case where the buffer may hold more than its
//! capacity for a while; senders wait until it drains below.
//!
//! # How it works
//!
//! One `Rc<RefCell<State>>` per channel (a channel is for one run's thread: it is `!Send`).
//! `State` holds the buffer, the open-handle counts and two slabs of *waiter entries* with a
//! FIFO queue of keys each. A task that must wait stores an entry (a sender's entry holds its
//! value) and parks with [`lowlevel::Park`](crate::lowlevel::Park). Whoever completes it (a
//! counterpart, or a close) takes the key out of the queue, writes the outcome into the entry
//! (`Sent`, `Got(value)`, or a failure with the value handed back) and wakes the task. The task
//! reads its entry before it asks about cancellation, so a completed operation is never undone;
//! a cancelled or dropped one removes exactly its own key. Wakers are woken and values dropped
//! only after the state's borrow is released, since either may call back into the channel.

use std::cell::RefCell;
use std::rc::Rc;

mod error;
mod future;
mod receiver;
mod sender;
mod state;

pub use error::{RecvError, SendError, SendErrorKind, TryRecvError, TrySendError};
pub use future::{RecvFuture, SendFuture};
pub use receiver::Receiver;
pub use sender::Sender;

use state::{State, UNBOUNDED};

/// Makes a channel with room for `capacity` values. `0` makes a rendezvous channel: a send
/// completes only when a receiver takes the value (S6.1). `usize::MAX` is the same as
/// [`unbounded`].
///
/// ```
/// use hatchery::{channel, TrySendError};
/// let (tx, rx) = channel::<&str>(1);
/// tx.try_send("a").unwrap();
/// assert_eq!(tx.try_send("b"), Err(TrySendError::Full("b")));
/// assert_eq!(rx.try_recv(), Ok("a"));
/// ```
pub fn channel<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    // `usize::MAX` values could never be buffered anyway: it is `UNBOUNDED`.
    make(capacity)
}

/// Makes a channel without a bound: [`send`](Sender::send) never waits (it is still a
/// checkpoint) and [`try_send`](Sender::try_send) never reports `Full`.
///
/// ```
/// let (tx, rx) = hatchery::unbounded::<u32>();
/// for i in 0..1000 {
///     tx.try_send(i).unwrap();
/// }
/// assert_eq!(rx.statistics().buffer_used, 1000);
/// assert_eq!(rx.statistics().capacity, None);
/// ```
pub fn unbounded<T>() -> (Sender<T>, Receiver<T>) {
    make(UNBOUNDED)
}

fn make<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Rc::new(RefCell::new(State::new(capacity)));
    let tx = Sender::new(shared.clone(), 0);
    let rx = Receiver::new(shared, 1);
    (tx, rx)
}

/// A snapshot of a channel's state, from [`Sender::statistics`] or [`Receiver::statistics`]
/// (both report the same, S6.10).
///
/// ```
/// use hatchery::{channel, ChannelStatistics};
/// let (tx, rx) = channel::<u32>(2);
/// tx.try_send(1).unwrap();
/// tx.try_send(2).unwrap();
/// rx.try_recv().unwrap();
/// assert_eq!(
///     rx.statistics(),
///     ChannelStatistics {
///         buffer_used: 1,
///         capacity: Some(2),
///         open_senders: 1,
///         open_receivers: 1,
///         tasks_waiting_send: 0,
///         tasks_waiting_recv: 0,
///         peak_buffer_used: 2,
///     }
/// );
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChannelStatistics {
    /// Values in the buffer now.
    pub buffer_used: usize,
    /// The buffer's capacity; `None` for an [`unbounded`] channel.
    pub capacity: Option<usize>,
    /// Sender handles not yet closed.
    pub open_senders: usize,
    /// Receiver handles not yet closed.
    pub open_receivers: usize,
    /// Tasks waiting in [`Sender::send`].
    pub tasks_waiting_send: usize,
    /// Tasks waiting in [`Receiver::recv`] (and streams waiting for their next value).
    pub tasks_waiting_recv: usize,
    /// The most values the buffer ever held (draining does not lower it).
    pub peak_buffer_used: usize,
}
