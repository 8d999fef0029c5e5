//! The FIFO parking lot every synchronisation primitive waits in (Trio's `ParkingLot`, S7.7),
//! and [`Acquire`], the waiting machine most primitives share.
//!
//! # Ground rules
//!
//! - A lot is a FIFO queue of waiters. Each waiter's state lives in a slot of the lot, named by a
//!   [`Ticket`] that only the waiting future holds. The lot changes a slot's state (granted,
//!   broken, moved to another lot) and wakes its waker; the future reads the state on its next
//!   poll, frees the slot and acts on it. Nothing else ever frees a slot, so a ticket stays valid
//!   until its future has seen its fate.
//! - **Hand-off.** [`unpark`](ParkingLot::unpark) grants the resource to the oldest waiters
//!   *before* they run: the primitive updates its own state at the same moment (the mutex stays
//!   locked, the semaphore's value stays 0), so the releasing task cannot take the resource back
//!   with a `try_` call (S7.2, S7.4).
//! - **Cancellation and drop.** A waiter that is cancelled (its [`Park`] reports it) or whose
//!   future is dropped calls [`leave`](ParkingLot::leave). If it was still waiting it is gone
//!   without a trace. If the lot had already granted it the resource, `leave` says so and the
//!   primitive passes the resource on ([`Resource::give_back`]): nothing is lost and nothing is
//!   held by a future that will never return it (the S6.4 argument for channels, applied to
//!   locks). A cancelled poll first looks at its slot, so a waiter granted before it noticed the
//!   cancellation returns the resource and leaves the cancellation to the next checkpoint.
//! - [`repark`](ParkingLot::repark) moves waiters to the tail of another lot (Condition moves
//!   notified waiters onto its mutex's queue). The old slot forwards to the new ticket until the
//!   waiter follows it.
//! - [`break_lot`](ParkingLot::break_lot) fails every current and future waiter (a mutex whose
//!   owner panicked).
//! - Wakers are called, and old wakers dropped, only after the lot's `RefCell` borrow has ended,
//!   so a waker that calls back into the primitive cannot hit a `BorrowMutError`.
//!
//! # Costs
//!
//! No allocation per wait in the steady state: slots are reused through a free list and the queue
//! is a `VecDeque` of tickets. Leaving from the middle of the queue is O(1): the slot is freed and
//! its queue entry goes stale (the generation no longer matches); stale entries are skipped when
//! they reach the front and compacted away once they outnumber live ones.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt;
use std::task::{Context, Poll, Waker};

use crate::error::Cancelled;
use crate::lowlevel::{Here, Park, Wakeup};
use crate::panics::FirstPanic;

/// A waiter's place in a lot: a slot and the generation of its occupant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ticket {
    key: u32,
    generation: u32,
}

/// A waiter's fate, as [`ParkingLot::poll_with`] and [`ParkingLot::leave`] report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    /// Still in the queue (from `leave`: was in the queue, and is now gone).
    Waiting,
    /// Unparked: the resource was handed to this waiter.
    Granted,
    /// The lot was broken while it waited, or before it parked.
    Broken,
    /// Moved to another lot by [`ParkingLot::repark`], under this ticket.
    Moved(Ticket),
}

enum SlotState {
    Free,
    Waiting(Wakeup),
    Done(Status),
}

struct Slot {
    generation: u32,
    state: SlotState,
}

#[derive(Default)]
struct Lot {
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// Tickets in arrival order. A ticket whose generation still matches its slot is exactly a
    /// waiting one; the others are stale and skipped.
    queue: VecDeque<Ticket>,
    /// Number of waiting slots (the live tickets in `queue`).
    waiting: usize,
    broken: bool,
}

/// Stale queue entries tolerated beyond the live ones before the queue is compacted.
const SLACK: usize = 16;

/// Slot count beyond which an empty lot frees its memory (tiny in unit tests, to exercise it).
const SHRINK_ABOVE: usize = if cfg!(test) { 4 } else { 256 };

impl Lot {
    fn alloc(&mut self, state: SlotState) -> Ticket {
        match self.free.pop() {
            Some(key) => {
                let slot = &mut self.slots[key as usize];
                slot.state = state;
                Ticket { key, generation: slot.generation }
            }
            None => {
                let key = u32::try_from(self.slots.len())
                    .expect("more than 4 billion tasks waiting on one hatchery primitive");
                self.slots.push(Slot { generation: 0, state });
                Ticket { key, generation: 0 }
            }
        }
    }

    fn slot(&mut self, t: Ticket) -> &mut SlotState {
        let slot = &mut self.slots[t.key as usize];
        assert_eq!(slot.generation, t.generation, "hatchery internal error: stale parking-lot ticket");
        &mut slot.state
    }

    /// Frees the slot of `t` and returns what it held.
    fn free(&mut self, t: Ticket) -> SlotState {
        let old = std::mem::replace(self.slot(t), SlotState::Free);
        let slot = &mut self.slots[t.key as usize];
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(t.key);
        if self.free.len() == self.slots.len() && self.slots.len() > SHRINK_ABOVE {
            // Nobody holds a ticket any more and every queue entry is stale: give the memory of
            // a burst of waiters back.
            *self = Lot { broken: self.broken, ..Lot::default() };
            return old;
        }
        if let SlotState::Waiting(_) = old {
            self.waiting -= 1;
            if self.queue.len() > 2 * self.waiting + SLACK {
                let Lot { queue, slots, .. } = self;
                queue.retain(|q| {
                    let s = &slots[q.key as usize];
                    s.generation == q.generation && matches!(s.state, SlotState::Waiting(_))
                });
            }
        }
        old
    }

    /// Takes the oldest waiter out of the queue, puts `next` in its slot and returns its ticket
    /// and waker.
    fn pop_waiting(&mut self, next: Status) -> Option<(Ticket, Wakeup)> {
        while let Some(t) = self.queue.pop_front() {
            let slot = &mut self.slots[t.key as usize];
            if slot.generation == t.generation && matches!(slot.state, SlotState::Waiting(_)) {
                let SlotState::Waiting(w) = std::mem::replace(&mut slot.state, SlotState::Done(next)) else {
                    unreachable!()
                };
                self.waiting -= 1;
                return Some((t, w));
            }
        }
        None
    }

    /// Appends a waiter (or, in a broken lot, records it as broken at once).
    fn push(&mut self, waker: Wakeup) -> (Ticket, Option<Wakeup>) {
        if self.broken {
            return (self.alloc(SlotState::Done(Status::Broken)), Some(waker));
        }
        let t = self.alloc(SlotState::Waiting(waker));
        self.queue.push_back(t);
        self.waiting += 1;
        (t, None)
    }
}

/// A FIFO queue of parked waiters with hand-off, cancellation-safe removal, `repark` and
/// `break_lot`. Single-threaded: the state is a `RefCell`, never borrowed across a call out.
#[derive(Default)]
pub(crate) struct ParkingLot {
    lot: RefCell<Lot>,
}

impl fmt::Debug for ParkingLot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lot = self.lot.borrow();
        f.debug_struct("ParkingLot")
            .field("tasks_waiting", &lot.waiting)
            .field("broken", &lot.broken)
            .finish()
    }
}

impl ParkingLot {
    /// An empty lot.
    pub(crate) const fn new() -> ParkingLot {
        ParkingLot {
            lot: RefCell::new(Lot {
                slots: Vec::new(),
                free: Vec::new(),
                queue: VecDeque::new(),
                waiting: 0,
                broken: false,
            }),
        }
    }

    /// Number of waiters in the queue (granted ones that have not run yet are not counted).
    pub(crate) fn tasks_waiting(&self) -> usize {
        self.lot.borrow().waiting
    }

    /// Parks a waiter at the tail of the queue; `waker` is woken when its fate changes. In a
    /// broken lot the waiter is broken at once (and `waker` woken). For the unit tests, which
    /// drive a lot outside any run: the primitives park with [`park_wakeup`](Self::park_wakeup),
    /// the wake-up made with the run in hand.
    #[cfg(test)]
    pub(crate) fn park(&self, waker: &Waker) -> Ticket {
        // Made before the borrow: cloning a foreign waker is foreign code.
        self.park_wakeup(Wakeup::new(waker))
    }

    /// Parks a waiter, with the wake-up made by the caller (`lowlevel::Here::wakeup`), at the
    /// tail of the queue; the wake-up fires when its fate changes. In a broken lot the waiter is
    /// broken at once (and woken).
    pub(crate) fn park_wakeup(&self, w: Wakeup) -> Ticket {
        let (t, wake) = self.lot.borrow_mut().push(w);
        if let Some(w) = wake {
            w.wake();
        }
        t
    }

    /// Reads a waiter's fate. While it waits, refreshes its waker; otherwise frees the slot (the
    /// ticket is spent). For the unit tests, as `park`; the primitives use
    /// [`poll_with`](Self::poll_with).
    #[cfg(test)]
    pub(crate) fn poll(&self, t: Ticket, waker: &Waker) -> Status {
        // Made before the borrow, as `park` does; one not kept is dropped after it.
        let mut fresh = Some(Wakeup::new(waker));
        self.poll_with(t, |w| {
            let fresh = fresh.take().expect("called once");
            if w.wakes_same(&fresh) { None } else { w.replace(fresh) }
        })
    }

    /// Reads a waiter's fate. While it waits, `refresh` brings its wake-up up to date (and
    /// returns a replaced waker, dropped here after the borrow); otherwise the slot is freed
    /// (the ticket is spent).
    pub(crate) fn poll_with(&self, t: Ticket, refresh: impl FnOnce(&mut Wakeup) -> Option<Waker>) -> Status {
        let mut lot = self.lot.borrow_mut();
        match lot.slot(t) {
            SlotState::Waiting(w) => {
                let old = refresh(w);
                drop(lot);
                drop(old);
                Status::Waiting
            }
            SlotState::Done(s) => {
                let s = *s;
                lot.free(t);
                s
            }
            SlotState::Free => unreachable!("hatchery internal error: free slot behind a live ticket"),
        }
    }

    /// Removes a waiter (cancelled or dropped) and reports what it was: `Waiting` means it is
    /// simply gone; `Granted` means the resource is the caller's to pass on.
    pub(crate) fn leave(&self, t: Ticket) -> Status {
        let old = self.lot.borrow_mut().free(t);
        match old {
            SlotState::Waiting(w) => {
                drop(w);
                Status::Waiting
            }
            SlotState::Done(s) => s,
            SlotState::Free => unreachable!("hatchery internal error: free slot behind a live ticket"),
        }
    }

    /// Grants the resource to the `n` oldest waiters (fewer if fewer wait) and wakes them, oldest
    /// first. Returns how many were granted. Unparking an empty lot does nothing.
    ///
    /// A wake that panics (a foreign waker's) does not stop the others: every grant is made and
    /// woken, then the first panic goes on. (Stopping there would leave waiters queued on a set
    /// event, or on free units, woken by nothing.)
    pub(crate) fn unpark(&self, n: usize) -> usize {
        let mut granted = 0;
        let mut panics = FirstPanic::default();
        while granted < n {
            let next = self.lot.borrow_mut().pop_waiting(Status::Granted);
            let Some((_, waker)) = next else { break };
            granted += 1;
            panics.catch(|| waker.wake());
        }
        panics.resume();
        granted
    }

    /// Grants every waiter.
    pub(crate) fn unpark_all(&self) -> usize {
        self.unpark(usize::MAX)
    }

    /// Moves the `n` oldest waiters, in order, to the tail of `to` (broken at once if `to` is
    /// broken). They are not woken, except for those broken. Returns how many moved.
    ///
    /// # Panics
    ///
    /// If `to` is this lot.
    pub(crate) fn repark(&self, to: &ParkingLot, n: usize) -> usize {
        assert!(!std::ptr::eq(self, to), "hatchery internal error: repark into the same lot");
        let mut moved = 0;
        while moved < n {
            let mut from = self.lot.borrow_mut();
            // The placeholder is replaced below, before anyone can read it.
            let Some((old, waker)) = from.pop_waiting(Status::Broken) else { break };
            let (new, wake) = to.lot.borrow_mut().push(waker);
            *from.slot(old) = SlotState::Done(Status::Moved(new));
            drop(from);
            if let Some(w) = wake {
                w.wake();
            }
            moved += 1;
        }
        moved
    }

    /// Breaks the lot: every waiter is woken with [`Status::Broken`], and so is every later one.
    pub(crate) fn break_lot(&self) {
        let mut wakers = Vec::new();
        {
            let mut lot = self.lot.borrow_mut();
            lot.broken = true;
            while let Some((_, w)) = lot.pop_waiting(Status::Broken) {
                wakers.push(w);
            }
        }
        // Every one, even if a foreign waker's wake panics; the first panic goes on after.
        FirstPanic::each(wakers, |w| w.wake());
    }
}

/// What a primitive lends to the shared waiting machine [`Acquire`].
pub(crate) trait Resource {
    /// The lot its waiters park in.
    fn lot(&self) -> &ParkingLot;
    /// The fast path: takes the resource if it is free and nobody waits for it (never barging
    /// ahead of a waiter).
    fn try_take(&self) -> Take;
    /// Returns a resource that was taken or granted for a future that will not deliver it
    /// (dropped during its last yield, or after being granted): passes it on to the next waiter.
    fn give_back(&self);
    /// What a waiter waits for, for the task-tree dump.
    fn waiting_on(&self) -> crate::debug::WaitingOn;
}

/// Result of [`Resource::try_take`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Take {
    /// The resource is the caller's now.
    Taken,
    /// Not available: park.
    Busy,
    /// Broken for good.
    Broken,
}

/// Why an [`Acquire`] failed.
#[derive(Debug)]
pub(crate) enum Failed {
    Cancelled(Cancelled),
    Broken,
}

#[derive(Debug)]
enum Step {
    Start,
    /// Taken on the fast path; the shielded schedule point yielded (the turn's budget was
    /// spent): the resource is the caller's on the next poll.
    Holding,
    Parked(Ticket),
    Done,
}

/// The parking protocol for one acquisition of a [`Resource`] (S2.3): cancel point; fast path
/// with a cancel-shielded schedule point; or park in the resource's lot until granted, broken
/// or cancelled. Dropping it at any point gives back whatever it held.
pub(crate) struct Acquire<'a, R: Resource + ?Sized> {
    res: &'a R,
    step: Step,
    park: Park,
}

impl<R: Resource + ?Sized> fmt::Debug for Acquire<'_, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acquire").field("step", &self.step).finish_non_exhaustive()
    }
}

impl<'a, R: Resource + ?Sized> Acquire<'a, R> {
    pub(crate) const fn new(res: &'a R) -> Self {
        Acquire { res, step: Step::Start, park: Park::new() }
    }

    /// Drives the acquisition. `Ok(())`: the resource belongs to the caller from now on.
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Failed>> {
        // The run, looked up once, and only if needed (a poll that finds its waiter granted
        // does not need it).
        let mut here: Option<Here> = None;
        loop {
            match &mut self.step {
                Step::Start => {
                    let here = here.get_or_insert_with(Here::get);
                    if let Err(c) = here.cancel_point() {
                        self.step = Step::Done;
                        return Poll::Ready(Err(Failed::Cancelled(c)));
                    }
                    let mut take = self.res.try_take();
                    let mut wakeup = None;
                    if take == Take::Busy {
                        let w = here.wakeup(cx.waker());
                        // A foreign waker's clone is foreign code: it may have released or
                        // broken the resource since `try_take`. Look again before parking, or
                        // the waiter would queue behind nobody until the next release.
                        if !w.is_task() {
                            take = self.res.try_take();
                        }
                        wakeup = Some(w);
                    }
                    match take {
                        Take::Taken => {
                            // Held from here on: a foreign waker's destructor or wake below
                            // that panics leaves a step whose drop gives the resource back.
                            self.step = Step::Holding;
                            drop(wakeup);
                            // Within the turn's budget the schedule point passes at once
                            // (DESIGN §3.4).
                            if here.schedule_point(cx) {
                                self.step = Step::Done;
                                return Poll::Ready(Ok(()));
                            }
                            return Poll::Pending;
                        }
                        Take::Busy => {
                            let w = wakeup.expect("hatchery internal error: a busy acquire made no wake-up");
                            let for_task = w.is_task();
                            self.step = Step::Parked(self.res.lot().park_wakeup(w));
                            // Just parked, after this poll's cancel point: with a wake-up naming
                            // the task (no foreign code ran since) the cancel registration is
                            // all that is left, as in a channel (DESIGN.md section 9). A foreign
                            // waker's clone could have cancelled us: then the parked step asks
                            // for the cancellation again (and the resource was looked at again
                            // above).
                            if here
                                .register_parked(&mut self.park, for_task, cx, self.res.waiting_on())
                                .is_pending()
                            {
                                return Poll::Pending;
                            }
                        }
                        Take::Broken => {
                            drop(wakeup);
                            self.step = Step::Done;
                            return Poll::Ready(Err(Failed::Broken));
                        }
                    }
                }
                Step::Holding => {
                    self.step = Step::Done;
                    return Poll::Ready(Ok(()));
                }
                Step::Parked(t) => {
                    let t = *t;
                    let mut needs_clone = false;
                    let mut polled = self.res.lot().poll_with(t, |w| {
                        here.get_or_insert_with(Here::get).refresh(w, cx.waker(), &mut needs_clone)
                    });
                    let mut leftover = None;
                    if needs_clone && let Some(h) = &here {
                        let (p, l) =
                            h.repoll_with_clone(cx.waker(), |install| self.res.lot().poll_with(t, install));
                        (polled, leftover) = (p, Some(l));
                    }
                    let status = match polled {
                        Status::Waiting => {
                            // Still parked: a panicking destructor leaves the ticket in `Drop`.
                            drop(leftover.take());
                            let here = here.get_or_insert_with(Here::get);
                            match here.poll_cancel(&mut self.park, cx, self.res.waiting_on()) {
                                Poll::Pending => return Poll::Pending,
                                Poll::Ready(c) => {
                                    // The ticket is freed by `leave`, which then drops the waiter's
                                    // waker: a foreign destructor that panics there must find a
                                    // step whose drop does not leave the ticket again.
                                    self.step = Step::Done;
                                    match self.res.lot().leave(t) {
                                        Status::Waiting => return Poll::Ready(Err(Failed::Cancelled(c))),
                                        other => other,
                                    }
                                }
                            }
                        }
                        other => other,
                    };
                    // Granted: held until returned (a foreign waker's destructor in `unpark`
                    // that panics leaves a step whose drop gives the resource back).
                    self.step = if status == Status::Granted { Step::Holding } else { Step::Done };
                    self.park.unpark();
                    drop(leftover);
                    self.step = Step::Done;
                    return Poll::Ready(match status {
                        Status::Granted => Ok(()),
                        Status::Broken => Err(Failed::Broken),
                        Status::Waiting | Status::Moved(_) => {
                            unreachable!("hatchery internal error: waiter moved out of its primitive's lot")
                        }
                    });
                }
                Step::Done => panic!("a hatchery synchronisation future was polled after it completed"),
            }
        }
    }
}

impl<R: Resource + ?Sized> Drop for Acquire<'_, R> {
    fn drop(&mut self) {
        match std::mem::replace(&mut self.step, Step::Done) {
            Step::Holding => self.res.give_back(),
            Step::Parked(t) => {
                if self.res.lot().leave(t) == Status::Granted {
                    self.res.give_back();
                }
            }
            Step::Start | Step::Done => {}
        }
    }
}

#[cfg(test)]
mod tests {
    //! The lot's bookkeeping against a `VecDeque` model, with no runtime involved.

    use super::*;
    use proptest::prelude::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Park,
        Leave(usize),
        Unpark(usize),
        Repark(usize),
        Poll(usize),
        Break,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => Just(Op::Park),
            3 => any::<usize>().prop_map(Op::Leave),
            2 => (0..4usize).prop_map(Op::Unpark),
            1 => (0..3usize).prop_map(Op::Repark),
            3 => any::<usize>().prop_map(Op::Poll),
            1 => Just(Op::Break),
        ]
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Fate {
        Waiting(bool), // in the second lot?
        Granted,
        Broken,
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: std::env::var("PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(256),
            ..ProptestConfig::default()
        })]

        /// FIFO grants, exact counts, removal from the middle, repark order, breaking, and a
        /// bounded queue under any sequence of operations.
        #[test]
        fn lot_matches_a_fifo_model(ops in prop::collection::vec(op(), 0..300)) {
            let a = ParkingLot::new();
            let b = ParkingLot::new();
            let counter = Arc::new(CountingWaker(AtomicUsize::new(0)));
            let waker = Waker::from(counter.clone());
            // Live waiters: (id, lot index, ticket), and the model queues of ids.
            let mut live: Vec<(usize, bool, Ticket)> = Vec::new();
            let mut fates: Vec<Fate> = Vec::new();
            let mut qa: VecDeque<usize> = VecDeque::new();
            let mut qb: VecDeque<usize> = VecDeque::new();
            let mut b_broken = false;
            let mut peak = 0;
            for op in ops {
                match op {
                    Op::Park => {
                        let id = fates.len();
                        let t = a.park(&waker);
                        live.push((id, false, t));
                        fates.push(Fate::Waiting(false));
                        qa.push_back(id);
                    }
                    Op::Leave(i) if !live.is_empty() => {
                        let (id, in_b, t) = live.swap_remove(i % live.len());
                        let lot = if in_b { &b } else { &a };
                        let s = lot.leave(t);
                        match fates[id] {
                            Fate::Waiting(x) => {
                                // A moved waiter is found through the forwarding slot first.
                                if let Status::Moved(nt) = s {
                                    prop_assert!(x && !in_b);
                                    prop_assert_eq!(b.leave(nt), Status::Waiting);
                                } else {
                                    prop_assert_eq!(s, Status::Waiting);
                                    prop_assert_eq!(x, in_b);
                                }
                                let q = if x { &mut qb } else { &mut qa };
                                q.retain(|&w| w != id);
                            }
                            Fate::Granted => {
                                let s = match s { Status::Moved(nt) => b.leave(nt), s => s };
                                prop_assert_eq!(s, Status::Granted);
                            }
                            Fate::Broken => {
                                let s = match s { Status::Moved(nt) => b.leave(nt), s => s };
                                prop_assert_eq!(s, Status::Broken);
                            }
                        }
                    }
                    Op::Unpark(n) => {
                        let got = b.unpark(n);
                        let want = n.min(qb.len());
                        prop_assert_eq!(got, want);
                        for id in qb.drain(..want) {
                            fates[id] = Fate::Granted;
                        }
                    }
                    Op::Repark(n) => {
                        let got = a.repark(&b, n);
                        let want = n.min(qa.len());
                        prop_assert_eq!(got, want);
                        for id in qa.drain(..want).collect::<Vec<_>>() {
                            if b_broken {
                                fates[id] = Fate::Broken;
                            } else {
                                fates[id] = Fate::Waiting(true);
                                qb.push_back(id);
                            }
                        }
                    }
                    Op::Poll(i) if !live.is_empty() => {
                        let k = i % live.len();
                        let (id, in_b, t) = live[k];
                        let lot = if in_b { &b } else { &a };
                        match lot.poll(t, &waker) {
                            Status::Waiting => prop_assert_eq!(fates[id], Fate::Waiting(in_b)),
                            Status::Moved(nt) => {
                                prop_assert!(!in_b);
                                live[k] = (id, true, nt);
                            }
                            Status::Granted => {
                                prop_assert_eq!(fates[id], Fate::Granted);
                                live.swap_remove(k);
                            }
                            Status::Broken => {
                                prop_assert_eq!(fates[id], Fate::Broken);
                                live.swap_remove(k);
                            }
                        }
                    }
                    Op::Break => {
                        b.break_lot();
                        b_broken = true;
                        for id in qb.drain(..) {
                            fates[id] = Fate::Broken;
                        }
                    }
                    Op::Leave(_) | Op::Poll(_) => {}
                }
                prop_assert_eq!(a.tasks_waiting(), qa.len());
                prop_assert_eq!(b.tasks_waiting(), qb.len());
                peak = peak.max(qa.len()).max(qb.len());
                for lot in [&a, &b] {
                    let l = lot.lot.borrow();
                    // Stale entries never outnumber the live ones by more than SLACK when they
                    // are made, so the queue stays within twice the peak.
                    prop_assert!(l.queue.len() <= 2 * peak + SLACK);
                    prop_assert!(l.slots.len() - l.free.len() <= live.len());
                }
            }
            // Every waiter left: every slot is free again.
            for (_, in_b, t) in live.drain(..) {
                let lot = if in_b { &b } else { &a };
                if let Status::Moved(nt) = lot.leave(t) {
                    b.leave(nt);
                }
            }
            for lot in [&a, &b] {
                let l = lot.lot.borrow();
                prop_assert_eq!(l.slots.len(), l.free.len());
                prop_assert_eq!(l.waiting, 0);
            }
        }
    }
}
