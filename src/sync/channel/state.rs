//! The channel's state machine: the buffer, the queues of waiting senders and receivers, the
//! open-handle counts.
//!
//! Ground rules:
//! - Pure: no runtime access. Every transition returns the wakers to wake and the values to
//!   drop; the caller wakes and drops them **after** releasing the `RefCell` borrow, because a
//!   waker or a value's destructor may call back into the channel.
//! - A waiting operation owns a slot in a slab (its *entry*); the slot key is in the matching
//!   FIFO queue exactly while the entry is `Waiting`. Whoever completes the operation (the
//!   counterpart, or a close) takes the key out of the queue and writes the outcome into the
//!   entry; the operation's future reads it, frees the slot, and returns. A cancelled or dropped
//!   future removes its own key: that is the abort path, and it removes exactly that waiter.
//! - Invariants (checked by `debug_check`): a receiver waits only while the buffer is empty and
//!   no sender waits; a sender waits only while the buffer holds at least `capacity` values and
//!   no receiver waits; nobody waits on a side whose counterpart is all closed, except receivers
//!   while values are *in transit* (see `in_transit`): one of those may still come back.

use std::collections::VecDeque;
use std::mem;
use std::task::Waker;

use super::ChannelStatistics;
use super::error::{TryRecvError, TrySendError};
use crate::lowlevel::Wakeup;

/// Identifies one handle (one clone) of either side.
pub(super) type HandleId = u64;

/// The unbounded channel's capacity.
pub(super) const UNBOUNDED: usize = usize::MAX;

/// A parked send.
pub(super) enum SendEntry<T> {
    Waiting {
        value: T,
        handle: HandleId,
        waker: Wakeup,
    },
    /// The value was taken (into the buffer or by a receiver): the send succeeded.
    Sent,
    /// The send failed and its value is handed back.
    Failed(SendFailure, T),
}

/// Why a parked send failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SendFailure {
    Closed,
    Disconnected,
}

/// A parked receive.
pub(super) enum RecvEntry<T> {
    Waiting {
        handle: HandleId,
        waker: Wakeup,
        /// A value handed to it counts as in transit (`State::in_transit`): every receive but
        /// a `Stream`'s, whose wait a dropped `next()` may leave behind unpolled for good.
        counted: bool,
    },
    /// A value was handed to this receiver (and whether it counts as in transit).
    Got(T, bool),
    Failed(RecvFailure),
}

/// Why a parked receive failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RecvFailure {
    Closed,
    EndOfChannel,
}

/// What a parked operation finds when it polls its entry.
pub(super) enum Polled<R> {
    /// Still waiting; the replaced waker, to drop after the borrow.
    Waiting(Option<Waker>),
    /// Completed; the slot is free again.
    Done(R),
    /// Completed, and it was the last value in transit after every sender closed: the channel
    /// has ended, and the waiting receives failed with `EndOfChannel`; wake them
    /// (`State::take_ended`) after the borrow. Rare: kept out of the common variant's size.
    DoneEnded(R),
}

/// Slots for waiting operations, reused through a free list (no allocation per wait in the
/// steady state).
struct Slab<E> {
    slots: Vec<Option<E>>,
    free: Vec<usize>,
}

impl<E> Slab<E> {
    const fn new() -> Self {
        Slab { slots: Vec::new(), free: Vec::new() }
    }

    #[inline(always)]
    fn insert(&mut self, e: E) -> usize {
        match self.free.pop() {
            Some(k) => {
                self.slots[k] = Some(e);
                k
            }
            None => {
                self.slots.push(Some(e));
                self.slots.len() - 1
            }
        }
    }

    fn get_mut(&mut self, key: usize) -> &mut E {
        self.slots[key].as_mut().expect(BUG)
    }

    fn remove(&mut self, key: usize) -> E {
        let e = self.slots[key].take().expect(BUG);
        self.free.push(key);
        e
    }
}

const BUG: &str = "hatchery internal error: a channel waiter slot is missing; please report this bug";

/// Removes `key` from `queue` (the abort path: the waiter is usually near the back).
fn unqueue(queue: &mut VecDeque<usize>, key: usize) {
    let pos = queue.iter().rposition(|&k| k == key).expect(BUG);
    queue.remove(pos);
}

/// The state shared by every handle of one channel.
pub(super) struct State<T> {
    /// `UNBOUNDED` for the unbounded channel.
    capacity: usize,
    /// Values sent and not yet received. Normally at most `capacity` long; a value handed to a
    /// receiver whose future was dropped before it returned goes back to the front, which may
    /// exceed `capacity` until receivers drain it (see `restore`).
    buffer: VecDeque<T>,
    peak: usize,
    open_senders: usize,
    open_receivers: usize,
    next_handle: HandleId,
    senders: Slab<SendEntry<T>>,
    /// Keys of `Waiting` senders, longest-waiting first.
    send_queue: VecDeque<usize>,
    receivers: Slab<RecvEntry<T>>,
    /// Keys of `Waiting` receivers, longest-waiting first.
    recv_queue: VecDeque<usize>,
    /// Values that left the channel for a receive that has not returned them yet: handed to a
    /// parked receive (`Got`), or taken by one whose schedule point yielded. Such a value comes
    /// back (`restore`) if that future is dropped, so the channel has not ended while any is
    /// in transit: `EndOfChannel` waits for them (S6.3: only once the buffer is drained).
    in_transit: usize,
    /// Wake-ups of the receives the last value in transit ended (see `Polled::DoneEnded`).
    ended: Vec<Wakeup>,
}

impl<T> State<T> {
    /// A channel with one open sender (handle 0) and one open receiver (handle 1).
    pub(super) fn new(capacity: usize) -> Self {
        State {
            capacity,
            buffer: VecDeque::new(),
            peak: 0,
            open_senders: 1,
            open_receivers: 1,
            next_handle: 2,
            senders: Slab::new(),
            send_queue: VecDeque::new(),
            receivers: Slab::new(),
            recv_queue: VecDeque::new(),
            in_transit: 0,
            ended: Vec::new(),
        }
    }

    /// A new open handle on the sending side (or receiving side).
    pub(super) fn open_handle(&mut self, sender: bool) -> HandleId {
        if sender {
            self.open_senders += 1;
        } else {
            self.open_receivers += 1;
        }
        self.next_handle += 1;
        self.next_handle - 1
    }

    /// An id for a handle cloned from a closed one (it counts as nothing).
    pub(super) fn closed_handle(&mut self) -> HandleId {
        self.next_handle += 1;
        self.next_handle - 1
    }

    pub(super) fn statistics(&self) -> ChannelStatistics {
        ChannelStatistics {
            buffer_used: self.buffer.len(),
            capacity: (self.capacity != UNBOUNDED).then_some(self.capacity),
            open_senders: self.open_senders,
            open_receivers: self.open_receivers,
            tasks_waiting_send: self.send_queue.len(),
            tasks_waiting_recv: self.recv_queue.len(),
            peak_buffer_used: self.peak,
        }
    }

    /// S6.2 from step 2 (the caller checked its handle): every receiver closed, a waiting
    /// receiver (it owns the value), room in the buffer (unless senders wait: they own it).
    /// On success, the waker of the receiver that got the value.
    #[inline(always)]
    pub(super) fn try_send(&mut self, value: T) -> Result<Option<Wakeup>, TrySendError<T>> {
        if self.open_receivers == 0 {
            return Err(TrySendError::Disconnected(value));
        }
        if let Some(key) = self.recv_queue.pop_front() {
            return Ok(Some(self.hand_to(key, value)));
        }
        if self.send_queue.is_empty() && self.buffer.len() < self.capacity {
            self.push_back(value);
            return Ok(None);
        }
        Err(TrySendError::Full(value))
    }

    /// S6.3 from step 2 (the caller checked its handle). Taking the head of the buffer frees a
    /// slot, which the longest-waiting sender owns: its value moves to the tail and it is woken
    /// as successful (for a full buffer this is exactly Trio's "push the sender's value, then pop
    /// the head"). With capacity 0 the sender's value is taken directly. On success, the value
    /// and the waker of the sender that completed.
    #[inline(always)]
    pub(super) fn try_recv(&mut self) -> Result<(T, Option<Wakeup>), TryRecvError> {
        if let Some(v) = self.buffer.pop_front() {
            let mut woken = None;
            if self.buffer.len() < self.capacity
                && let Some(key) = self.send_queue.pop_front()
            {
                let (value, waker) = self.complete_sender(key);
                self.push_back(value);
                woken = Some(waker);
            }
            return Ok((v, woken));
        }
        if let Some(key) = self.send_queue.pop_front() {
            let (value, waker) = self.complete_sender(key);
            return Ok((value, Some(waker)));
        }
        if self.ended() { Err(TryRecvError::EndOfChannel) } else { Err(TryRecvError::Empty) }
    }

    /// Every sender closed, nothing buffered or waiting to be sent, and no value in transit
    /// that could come back.
    fn ended(&self) -> bool {
        self.open_senders == 0 && self.in_transit == 0 && self.buffer.is_empty() && self.send_queue.is_empty()
    }

    /// Hands `value` to the waiting receive `key` (taken out of its queue); its wake-up.
    #[inline]
    fn hand_to(&mut self, key: usize, value: T) -> Wakeup {
        let entry = self.receivers.get_mut(key);
        let RecvEntry::Waiting { counted, .. } = *entry else { panic!("{BUG}") };
        let RecvEntry::Waiting { waker, .. } = mem::replace(entry, RecvEntry::Got(value, counted)) else {
            unreachable!()
        };
        self.in_transit += usize::from(counted);
        waker
    }

    /// A receive whose schedule point yielded keeps the value it took until its next poll.
    pub(super) fn lend(&mut self) {
        self.in_transit += 1;
    }

    /// A value in transit reached its caller. If the channel has ended with it, the waiting
    /// receives fail with `EndOfChannel`: their wake-ups, to wake after the borrow.
    pub(super) fn returned(&mut self) -> Vec<Wakeup> {
        self.in_transit -= 1;
        if self.ended() { self.end_receivers() } else { Vec::new() }
    }

    /// The wake-ups a [`Polled::DoneEnded`] left to wake.
    pub(super) fn take_ended(&mut self) -> Vec<Wakeup> {
        mem::take(&mut self.ended)
    }

    /// Fails every waiting receive with `EndOfChannel`; their wake-ups.
    fn end_receivers(&mut self) -> Vec<Wakeup> {
        let mut wake = Vec::new();
        for key in mem::take(&mut self.recv_queue) {
            let entry =
                mem::replace(self.receivers.get_mut(key), RecvEntry::Failed(RecvFailure::EndOfChannel));
            let RecvEntry::Waiting { waker, .. } = entry else { panic!("{BUG}") };
            wake.push(waker);
        }
        wake
    }

    fn complete_sender(&mut self, key: usize) -> (T, Wakeup) {
        match mem::replace(self.senders.get_mut(key), SendEntry::Sent) {
            SendEntry::Waiting { value, waker, .. } => (value, waker),
            _ => panic!("{BUG}"),
        }
    }

    fn push_back(&mut self, value: T) {
        self.buffer.push_back(value);
        self.peak = self.peak.max(self.buffer.len());
    }

    /// Parks a send whose `try_send` found no room.
    #[inline]
    pub(super) fn park_sender(&mut self, value: T, handle: HandleId, waker: Wakeup) -> usize {
        let key = self.senders.insert(SendEntry::Waiting { value, handle, waker });
        self.send_queue.push_back(key);
        self.debug_check();
        key
    }

    /// Parks a receive whose `try_recv` found nothing.
    #[inline]
    pub(super) fn park_receiver(&mut self, handle: HandleId, waker: Wakeup, counted: bool) -> usize {
        let key = self.receivers.insert(RecvEntry::Waiting { handle, waker, counted });
        self.recv_queue.push_back(key);
        self.debug_check();
        key
    }

    /// A parked send looks at its entry; a completed one frees its slot. While it waits,
    /// `refresh` brings its wake-up up to date (and returns a replaced waker).
    #[inline]
    pub(super) fn poll_sender(
        &mut self,
        key: usize,
        refresh: impl FnOnce(&mut Wakeup) -> Option<Waker>,
    ) -> Polled<Result<(), (SendFailure, T)>> {
        match self.senders.get_mut(key) {
            SendEntry::Waiting { waker: stored, .. } => Polled::Waiting(refresh(stored)),
            _ => Polled::Done(match self.senders.remove(key) {
                SendEntry::Sent => Ok(()),
                SendEntry::Failed(why, value) => Err((why, value)),
                SendEntry::Waiting { .. } => unreachable!(),
            }),
        }
    }

    /// A parked receive looks at its entry; a completed one frees its slot. While it waits,
    /// `refresh` brings its wake-up up to date (and returns a replaced waker).
    #[inline]
    pub(super) fn poll_receiver(
        &mut self,
        key: usize,
        refresh: impl FnOnce(&mut Wakeup) -> Option<Waker>,
    ) -> Polled<Result<T, RecvFailure>> {
        match self.receivers.get_mut(key) {
            RecvEntry::Waiting { waker: stored, .. } => Polled::Waiting(refresh(stored)),
            _ => match self.receivers.remove(key) {
                RecvEntry::Got(v, false) => Polled::Done(Ok(v)),
                RecvEntry::Got(v, true) => {
                    self.in_transit -= 1;
                    if self.in_transit == 0 && self.ended() {
                        self.ended = self.end_receivers();
                        return Polled::DoneEnded(Ok(v));
                    }
                    Polled::Done(Ok(v))
                }
                RecvEntry::Failed(why) => Polled::Done(Err(why)),
                RecvEntry::Waiting { .. } => unreachable!(),
            },
        }
    }

    /// A parked send that is still waiting gives up (cancelled): its value, undelivered, and
    /// its wake-up, both for the caller to drop after the borrow (a waker's destructor is
    /// foreign code).
    pub(super) fn cancel_sender(&mut self, key: usize) -> (T, Wakeup) {
        unqueue(&mut self.send_queue, key);
        match self.senders.remove(key) {
            SendEntry::Waiting { value, waker, .. } => (value, waker),
            _ => panic!("{BUG}"),
        }
    }

    /// A parked receive that is still waiting gives up (cancelled): nothing was consumed. Its
    /// wake-up, for the caller to drop after the borrow.
    pub(super) fn cancel_receiver(&mut self, key: usize) -> Wakeup {
        unqueue(&mut self.recv_queue, key);
        match self.receivers.remove(key) {
            RecvEntry::Waiting { waker, .. } => waker,
            _ => panic!("{BUG}"),
        }
    }

    /// The future of a parked send was dropped: forget it, whatever its state. Returns the
    /// value it still held (undelivered) and its wake-up, for the caller to drop after the
    /// borrow.
    pub(super) fn abandon_sender(&mut self, key: usize) -> (Option<T>, Option<Wakeup>) {
        match self.senders.get_mut(key) {
            SendEntry::Waiting { .. } => {
                let (value, waker) = self.cancel_sender(key);
                (Some(value), Some(waker))
            }
            _ => match self.senders.remove(key) {
                SendEntry::Failed(_, v) => (Some(v), None),
                _ => (None, None),
            },
        }
    }

    /// The future of a parked receive was dropped. A value already handed to it is given back
    /// to the channel ([`restore`](State::restore)). Returns the wake-up to wake, the value to
    /// drop, and the receive's own wake-up to drop, all after the borrow.
    pub(super) fn abandon_receiver(&mut self, key: usize) -> (Option<Wakeup>, Option<T>, Option<Wakeup>) {
        match self.receivers.get_mut(key) {
            RecvEntry::Waiting { .. } => (None, None, Some(self.cancel_receiver(key))),
            _ => match self.receivers.remove(key) {
                RecvEntry::Got(v, counted) => {
                    let (woken, undeliverable) = self.restore(v, counted);
                    (woken, undeliverable, None)
                }
                _ => (None, None, None),
            },
        }
    }

    /// A value that was taken from the channel but never returned to any caller (its receive
    /// future was dropped) goes to the longest-waiting receiver, or else back to the front of
    /// the buffer, so it is still the next value out: never lost, never duplicated, order kept.
    /// The buffer may then hold more than `capacity` values; senders keep waiting until it
    /// drains below. If every receiver is closed there is nobody to give it to: it is discarded
    /// like the rest of the buffer (returned, for the caller to drop).
    /// `counted`: the value was counted in transit (see `RecvEntry::Waiting::counted`).
    pub(super) fn restore(&mut self, value: T, counted: bool) -> (Option<Wakeup>, Option<T>) {
        // It was in transit; it is in the channel again (or discarded).
        self.in_transit -= usize::from(counted);
        if self.open_receivers == 0 {
            return (None, Some(value));
        }
        if let Some(key) = self.recv_queue.pop_front() {
            return (Some(self.hand_to(key, value)), None);
        }
        self.buffer.push_front(value);
        self.peak = self.peak.max(self.buffer.len());
        self.debug_check();
        (None, None)
    }

    /// Sender `handle` closes (S6.6): its own waiting sends fail with `Closed` and get their
    /// values back; if it was the last open sender, every waiting receive gets `EndOfChannel`
    /// (once no value is in transit: until then they wait, for one may come back).
    pub(super) fn close_sender(&mut self, handle: HandleId) -> Vec<Wakeup> {
        self.open_senders -= 1;
        let mut wake = Vec::new();
        let senders = &mut self.senders;
        self.send_queue.retain(|&key| {
            let entry = senders.get_mut(key);
            if !matches!(entry, SendEntry::Waiting { handle: h, .. } if *h == handle) {
                return true;
            }
            let SendEntry::Waiting { value, waker, .. } = mem::replace(entry, SendEntry::Sent) else {
                unreachable!()
            };
            *entry = SendEntry::Failed(SendFailure::Closed, value);
            wake.push(waker);
            false
        });
        if self.ended() {
            wake.extend(self.end_receivers());
        }
        self.debug_check();
        wake
    }

    /// Receiver `handle` closes (S6.6): its own waiting receives fail with `Closed`; if it was
    /// the last open receiver, every waiting send fails with `Disconnected` (values handed
    /// back) and the buffer is discarded (returned, for the caller to drop after the borrow).
    pub(super) fn close_receiver(&mut self, handle: HandleId) -> (Vec<Wakeup>, VecDeque<T>) {
        self.open_receivers -= 1;
        let mut wake = Vec::new();
        let receivers = &mut self.receivers;
        self.recv_queue.retain(|&key| {
            let entry = receivers.get_mut(key);
            if !matches!(entry, RecvEntry::Waiting { handle: h, .. } if *h == handle) {
                return true;
            }
            let RecvEntry::Waiting { waker, .. } =
                mem::replace(entry, RecvEntry::Failed(RecvFailure::Closed))
            else {
                unreachable!()
            };
            wake.push(waker);
            false
        });
        let mut discarded = VecDeque::new();
        if self.open_receivers == 0 {
            for key in mem::take(&mut self.send_queue) {
                let entry = self.senders.get_mut(key);
                let SendEntry::Waiting { value, waker, .. } = mem::replace(entry, SendEntry::Sent) else {
                    panic!("{BUG}")
                };
                *entry = SendEntry::Failed(SendFailure::Disconnected, value);
                wake.push(waker);
            }
            discarded = mem::take(&mut self.buffer);
        }
        self.debug_check();
        (wake, discarded)
    }

    fn debug_check(&self) {
        if cfg!(debug_assertions) {
            if !self.recv_queue.is_empty() {
                assert!(
                    self.buffer.is_empty()
                        && self.send_queue.is_empty()
                        && (self.open_senders > 0 || self.in_transit > 0),
                    "{BUG}"
                );
            }
            if !self.send_queue.is_empty() {
                assert!(self.buffer.len() >= self.capacity && self.open_receivers > 0, "{BUG}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::task::Wake;

    struct Noop;

    impl Wake for Noop {
        fn wake(self: Arc<Self>) {}
    }

    /// A waiter that gives up (cancelled, or its future dropped) hands its waker back for the
    /// caller to drop after the `RefCell` borrow: a waker's destructor is foreign code that may
    /// call back into the channel.
    #[test]
    fn a_waiter_that_gives_up_hands_its_waker_back_undropped() {
        let task = Arc::new(Noop);
        let waker = Waker::from(task.clone());
        let parked = || Wakeup::Waker(waker.clone());
        let mut st = State::<u32>::new(0);

        let key = st.park_receiver(1, parked(), true);
        let back = st.cancel_receiver(key);
        assert_eq!(Arc::strong_count(&task), 3, "task, waker and the waker handed back");
        drop(back);

        let key = st.park_sender(5, 0, parked());
        let (value, back) = st.cancel_sender(key);
        assert_eq!((value, Arc::strong_count(&task)), (5, 3));
        drop(back);

        let key = st.park_receiver(1, parked(), true);
        let (woken, value, back) = st.abandon_receiver(key);
        assert!(woken.is_none() && value.is_none() && back.is_some());
        assert_eq!(Arc::strong_count(&task), 3);
        drop(back);

        let key = st.park_sender(6, 0, parked());
        let (value, back) = st.abandon_sender(key);
        assert_eq!((value, Arc::strong_count(&task)), (Some(6), 3));
        drop(back);
        assert_eq!(Arc::strong_count(&task), 2, "nothing kept");
        assert_eq!(st.statistics().tasks_waiting_send + st.statistics().tasks_waiting_recv, 0);
    }
}
