//! The state machine one [`generate`](super::generate) call shares between its producer, its
//! consumer and its frame. The ground rules are in the parent module's docs; in short: `asked`
//! is the standing request (set by a receive, cleared by the yield that answers it), `item` the
//! one item handed over and not yet taken, and each side has one waker slot.
//!
//! Every method borrows the state only for its own bookkeeping: wakers are woken, old wakers and
//! items dropped, and the cancel scope cancelled after the borrow ends.

use std::cell::RefCell;
use std::sync::Arc;
use std::task::{Context, Poll};

use super::super::channel::RecvError;
use crate::CancelHandle;
use crate::error::{CancelSource, Cancelled};
use crate::lowlevel::Wakeup;
use crate::lowlevel::{Park, checkpoint_if_cancelled};
use crate::sync::waker_slot::store;

/// The reason the producer's scope is cancelled with when the consumer is done.
pub(super) const CONSUMER_DONE: &str = "generate: the consumer is done";

/// How the producer finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum End {
    /// It returned `Ok` (or was cancelled because the consumer was done).
    Returned,
    /// It returned an error or panicked.
    Failed,
}

/// The state one call shares between its producer, its consumer and its frame.
pub(super) struct Link<T> {
    state: RefCell<State<T>>,
    /// The producer's own cancel scope: cancelled when the consumer is done.
    producer_scope: CancelHandle,
}

pub(super) struct State<T> {
    /// The consumer asked for an item and no yield has answered yet.
    pub(super) asked: bool,
    /// The item handed over and not yet taken. Invariant: `Some` implies `!asked`.
    pub(super) item: Option<T>,
    /// How the producer finished, once it has.
    pub(super) end: Option<End>,
    /// The consumer is done (its body finished, or it closed its `Items`).
    pub(super) consumer_done: bool,
    /// Whom to wake for the waiting receive.
    consumer: Option<Wakeup>,
    /// Whom to wake for the waiting producer (waiting for a request, before it starts or in a
    /// yield).
    producer: Option<Wakeup>,
}

/// How the start of a receive ended.
pub(super) enum RecvStart<T> {
    /// The item that was there, taken without waiting (the caller decides about a schedule
    /// point).
    Now(T),
    /// Waiting for the producer: the request is made, the waker stored and the park registered;
    /// poll it with [`Link::poll_recv`].
    Waiting,
    Failed(RecvError),
}

/// What a yield found when it tried to hand its value over.
pub(super) enum Hand<T> {
    /// Handed over.
    Done,
    /// Nobody asked yet: the value comes back; the waker is stored.
    Wait(T),
    /// The consumer is done: the value comes back, to be dropped.
    Gone(T),
}

/// What a producer waiting for a request found.
pub(super) enum Ask {
    Asked,
    /// Not yet; the waker is stored.
    Wait,
    Gone,
}

impl<T> Link<T> {
    pub(super) fn new(producer_scope: CancelHandle) -> Self {
        Link {
            state: RefCell::new(State {
                asked: false,
                item: None,
                end: None,
                consumer_done: false,
                consumer: None,
                producer: None,
            }),
            producer_scope,
        }
    }

    /// A view of the state, for `Debug` (`None` while it is borrowed).
    pub(super) fn peek<R>(&self, f: impl FnOnce(&State<T>) -> R) -> Option<R> {
        self.state.try_borrow().ok().map(|st| f(&st))
    }

    /// The consumer is done: cancel the producer, drop the untaken item. Idempotent.
    pub(super) fn consumer_done(&self) {
        let (item, waker) = {
            let mut st = self.state.borrow_mut();
            if st.consumer_done {
                return;
            }
            st.consumer_done = true;
            (st.item.take(), st.producer.take())
        };
        self.producer_scope.cancel_with_reason(CONSUMER_DONE);
        if let Some(w) = waker {
            w.wake();
        }
        drop(item);
    }

    pub(super) fn is_consumer_done(&self) -> bool {
        self.state.borrow().consumer_done
    }

    /// The producer finished: wake a waiting receive to report it.
    pub(super) fn producer_done(&self, end: End) {
        let waker = {
            let mut st = self.state.borrow_mut();
            st.end.get_or_insert(end);
            st.consumer.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    // ---- the consumer's side ----

    /// The start of a receive, shared by `recv` and the `Stream`: its cancel point, then the
    /// item if there is one, or the end; otherwise the request (unless one still stands) and
    /// the wait.
    pub(super) fn start_recv(&self, park: &mut Park, cx: &mut Context<'_>) -> RecvStart<T> {
        if let Err(c) = checkpoint_if_cancelled() {
            return RecvStart::Failed(RecvError::Cancelled(c));
        }
        let mut st = self.state.borrow_mut();
        if st.consumer_done {
            return RecvStart::Failed(RecvError::Closed);
        }
        if let Some(v) = st.item.take() {
            return RecvStart::Now(v);
        }
        if let Some(end) = st.end {
            drop(st);
            return RecvStart::Failed(end_error(end));
        }
        let producer = if st.asked {
            None
        } else {
            st.asked = true;
            st.producer.take()
        };
        drop(st);
        // Woken before the wait below, which runs foreign code (a waker's clone, a replaced
        // one's destructor): a panic there must not leave the request standing with its wake-up
        // lost, or the producer would wait for a request that every later receive thinks it
        // has. Nothing is missed this way: the wait looks for an item first.
        if let Some(w) = producer {
            w.wake();
        }
        let polled = self.poll_recv(park, cx);
        match polled {
            Poll::Pending => RecvStart::Waiting,
            Poll::Ready(r) => r.map_or_else(RecvStart::Failed, RecvStart::Now),
        }
    }

    /// Polls a waiting receive. An item or the producer's end wins over a cancellation; a
    /// cancellation leaves the request standing.
    pub(super) fn poll_recv(&self, park: &mut Park, cx: &mut Context<'_>) -> Poll<Result<T, RecvError>> {
        loop {
            // Made before the borrow: cloning a foreign waker is foreign code.
            let wakeup = Wakeup::new(cx.waker());
            let mut st = self.state.borrow_mut();
            // `consumer_done`: `close` between two polls of the `Stream`.
            if st.item.is_none() && !st.consumer_done && st.end.is_none() {
                let old = store(&mut st.consumer, wakeup);
                drop(st);
                drop(old);
                let Poll::Ready(c) = park.poll_cancel_on(cx, crate::debug::WaitingOn::Other("a generator"))
                else {
                    return Poll::Pending;
                };
                self.forget_consumer();
                return Poll::Ready(Err(RecvError::Cancelled(c)));
            }
            // Done waiting. The wakers go, and the cancellation registration, before the item is
            // taken: their destructors are foreign code, and one that panics must leave the
            // item in the link for the next receive, not take it down with the unwinding (the
            // channel's `unpark_keeping` guards the same).
            let old = st.consumer.take();
            drop(st);
            drop((old, wakeup));
            park.unpark();
            let mut st = self.state.borrow_mut();
            let r = if let Some(v) = st.item.take() {
                Ok(v)
            } else if st.consumer_done {
                Err(None)
            } else if let Some(end) = st.end {
                Err(Some(end))
            } else {
                // The destructors above cannot take an item or undo an end (the consumer is
                // this receive, and holds the items exclusively); were it otherwise, wait again.
                continue;
            };
            drop(st);
            return Poll::Ready(r.map_err(|end| end.map_or(RecvError::Closed, end_error)));
        }
    }

    /// Puts back an item taken by a receive that was dropped before it returned it.
    pub(super) fn restore(&self, v: T) {
        let mut st = self.state.borrow_mut();
        if st.consumer_done || st.item.is_some() {
            // Cannot happen while the receive holds the `Items` exclusively; drop the item as
            // the consumer being done would have.
            drop(st);
            drop(v);
            return;
        }
        st.item = Some(v);
    }

    /// A waiting receive went away.
    pub(super) fn forget_consumer(&self) {
        let old = self.state.borrow_mut().consumer.take();
        drop(old);
    }

    // ---- the producer's side ----

    /// Hands `value` over if the consumer asked.
    pub(super) fn try_hand(&self, value: T, cx: &Context<'_>) -> Hand<T> {
        // Made before the borrow: cloning a foreign waker is foreign code.
        let wakeup = Wakeup::new(cx.waker());
        let mut st = self.state.borrow_mut();
        if st.consumer_done {
            drop(st);
            return Hand::Gone(value);
        }
        if !st.asked {
            let old = store(&mut st.producer, wakeup);
            drop(st);
            drop(old);
            return Hand::Wait(value);
        }
        debug_assert!(st.item.is_none(), "hatchery internal error: an item was asked for twice");
        st.asked = false;
        st.item = Some(value);
        let consumer = st.consumer.take();
        drop(st);
        drop(wakeup);
        if let Some(w) = consumer {
            w.wake();
        }
        Hand::Done
    }

    /// Whether the consumer asked for an item (the producer's start, and the end of a yield).
    /// Checked after `consumer_done`: a request from a consumer that is gone is moot.
    pub(super) fn poll_ask(&self, cx: &Context<'_>) -> Ask {
        // Made before the borrow: cloning a foreign waker is foreign code.
        let wakeup = Wakeup::new(cx.waker());
        let mut st = self.state.borrow_mut();
        if st.consumer_done {
            drop(st);
            return Ask::Gone;
        }
        let (old, taken) = if st.asked {
            (Some(wakeup), st.producer.take())
        } else {
            (store(&mut st.producer, wakeup), None)
        };
        let asked = st.asked;
        drop(st);
        drop((old, taken));
        if asked { Ask::Asked } else { Ask::Wait }
    }

    /// A waiting yield went away.
    pub(super) fn forget_producer(&self) {
        let old = self.state.borrow_mut().producer.take();
        drop(old);
    }
}

/// The consumer's error for the producer's end.
fn end_error(end: End) -> RecvError {
    match end {
        End::Returned => RecvError::EndOfChannel,
        // The failure cancelled the nursery, so the consumer is cancelled too, unless shielded.
        End::Failed => match checkpoint_if_cancelled() {
            Err(c) => RecvError::Cancelled(c),
            Ok(()) => RecvError::Closed,
        },
    }
}

/// The cancellation a yield reports once the consumer is done: the producer scope's own
/// cancellation, or, where a shield hides it, the same cause (so that scope still absorbs it).
pub(super) fn consumer_done_cancelled() -> Cancelled {
    match checkpoint_if_cancelled() {
        Err(c) => c,
        Ok(()) => Cancelled::new(CancelSource::Explicit, Some(Arc::from(CONSUMER_DONE))),
    }
}
