//! [`Condition`]: wait for a notification while holding a [`Mutex`] (S7.6).
//!
//! A waiter releases the mutex and parks in the condition's lot. `notify` moves waiters, in
//! order, onto the *mutex's* lot (`repark`), behind whoever already waits for the lock; each
//! wakes up owning the lock when it is handed over, so a notified waiter never competes for the
//! lock again. A cancelled waiter re-acquires the lock (cancellation refused, S4.13) before it
//! reports the cancellation, keeping its place in the mutex's queue if it already had one.

use crate::debug::WaitingOn;
use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::io;
use std::panic::{AssertUnwindSafe, Location, catch_unwind, resume_unwind};
use std::pin::Pin;
use std::task::{Context, Poll};

use super::mutex::{BrokenMutex, LockError, Mutex, MutexGuard, MutexState};
use super::parking_lot::{ParkingLot, Resource, Status, Take, Ticket};
use crate::error::{CancelError, Cancelled};
use crate::lowlevel::{Here, Leftover, Park};

/// A condition variable for [`Mutex`] (Trio's `Condition`, S7.6): a task holding the lock
/// [`wait`](Condition::wait)s, which releases the lock until another task holding it
/// [`notify`](Condition::notify)s, then returns with the lock held again.
///
/// - Waiters are notified in FIFO order, and a notified waiter queues for the lock at once,
///   behind the tasks already waiting for it: it never competes for the lock again.
/// - `notify` takes the guard, so only the lock's holder can notify (Trio checks this at run
///   time).
/// - One condition serves one mutex at a time (the waiters of a condition must all use the same
///   mutex, as with `std::sync::Condvar`), and a mutex may have several conditions.
/// - As with every condition variable, check the predicate in a loop: another task may have
///   taken what you were notified about before you got the lock back.
///
/// Waiting needs a hatchery run (polling a wait outside one panics); the synchronous methods
/// (`try_` twins, releases, statistics) work anywhere.
///
/// ```
/// use std::collections::VecDeque;
/// use hatchery::{nursery, sync::{Condition, Mutex}, testing, Error};
/// testing::run(async {
///     let queue = Mutex::new(VecDeque::new());
///     let not_empty = Condition::new();
///     nursery(async |n| {
///         n.start_soon(async {
///             let mut q = queue.lock().await?;
///             while q.is_empty() {
///                 q = not_empty.wait(q).await?;
///             }
///             assert_eq!(q.pop_front(), Some("job"));
///             Ok::<_, Error>(())
///         });
///         let mut q = queue.lock().await?;
///         q.push_back("job");
///         not_empty.notify_one(&q);
///         Ok(())
///     })
///     .await
///     .unwrap();
/// });
/// ```
#[derive(Default)]
pub struct Condition {
    lot: ParkingLot,
    /// Address of the mutex state that the current waiters released; meaningful only while the
    /// lot has waiters (they borrow that mutex, so it is alive and the address unique).
    mutex: Cell<usize>,
}

impl fmt::Debug for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Condition").field("tasks_waiting", &self.lot.tasks_waiting()).finish()
    }
}

/// What [`Condition::statistics`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConditionStatistics {
    /// Tasks blocked in [`Condition::wait`] and not yet notified.
    pub tasks_waiting: usize,
}

impl Condition {
    /// A condition with no waiters.
    pub const fn new() -> Condition {
        Condition { lot: ParkingLot::new(), mutex: Cell::new(0) }
    }

    /// Releases the lock held by `guard`, waits until notified, and returns once the lock is
    /// held again.
    ///
    /// # Cancellation
    ///
    /// A checkpoint. In a cancelled scope it fails at once without releasing anything: the
    /// error hands back the same guard. Cancelled while it waits, it first re-acquires the lock
    /// (refusing cancellation meanwhile, as Trio does with a shield) and then fails with
    /// [`WaitError::Cancelled`], which holds the guard. If it was notified and handed the lock
    /// before it noticed the cancellation, it returns the guard normally and the cancellation
    /// comes at the next checkpoint. Dropped at any point, it gives up the lock (handing it
    /// on) or its place in a queue, and leaves no trace.
    ///
    /// # Errors
    ///
    /// [`WaitError::Cancelled`] (with the guard), or [`WaitError::Broken`] if an owner of the
    /// mutex panicked before the lock came back. A wait not yet notified when the mutex broke
    /// is not woken by the break (no guard can notify it any more, as in Trio): it waits until
    /// cancelled, then fails with `Broken`.
    ///
    /// # Panics
    ///
    /// When polled first, if other tasks are waiting on this condition with a different mutex.
    ///
    /// ```
    /// use std::time::Duration;
    /// use hatchery::{move_on_after, sync::{Condition, Mutex, WaitError}, testing};
    /// testing::run(async {
    ///     let m = Mutex::new(5);
    ///     let cond = Condition::new();
    ///     let g = m.lock().await.unwrap();
    ///     // Nobody notifies: the deadline cancels the wait, which hands the lock back.
    ///     let mut kept = None;
    ///     let _ = move_on_after(Duration::from_secs(1), async {
    ///         match cond.wait(g).await {
    ///             Err(WaitError::Cancelled { guard, cancelled }) => {
    ///                 kept = Some(*guard);
    ///                 Err::<(), _>(cancelled)
    ///             }
    ///             _ => unreachable!(),
    ///         }
    ///     })
    ///     .await;
    ///     assert_eq!(kept, Some(5));
    /// });
    /// ```
    #[track_caller]
    pub fn wait<'a, T: ?Sized>(&'a self, guard: MutexGuard<'a, T>) -> ConditionWait<'a, T> {
        ConditionWait {
            cond: self,
            mutex: MutexGuard::mutex(&guard),
            at: Location::caller(),
            step: WaitStep::Start(guard),
            park: Park::new(),
        }
    }

    /// Wakes the oldest waiter: it will return from `wait` once `guard`'s lock is handed to it.
    /// Nothing happens if no task waits. Synchronous, not a checkpoint.
    ///
    /// # Panics
    ///
    /// If the waiters released a different mutex than the one `guard` holds.
    pub fn notify_one<T: ?Sized>(&self, guard: &MutexGuard<'_, T>) {
        self.notify(guard, 1);
    }

    /// Wakes the `n` oldest waiters (fewer if fewer wait), in order: they queue for `guard`'s
    /// lock and return from `wait` one by one as it is handed over. Synchronous, not a
    /// checkpoint.
    ///
    /// # Panics
    ///
    /// If the waiters released a different mutex than the one `guard` holds.
    ///
    /// ```
    /// use hatchery::{nursery, sync::{Condition, Mutex}, testing::{self, wait_all_tasks_blocked}, Error};
    /// testing::run(async {
    ///     let m = Mutex::new(Vec::new());
    ///     let cond = Condition::new();
    ///     nursery(async |n| {
    ///         for i in 0..3 {
    ///             let (m, cond) = (&m, &cond);
    ///             n.start_soon(async move {
    ///                 let g = cond.wait(m.lock().await?).await?;
    ///                 let mut g = g;
    ///                 g.push(i);
    ///                 Ok::<_, Error>(())
    ///             });
    ///             wait_all_tasks_blocked().await?;
    ///         }
    ///         let g = m.lock().await?;
    ///         cond.notify(&g, 2);
    ///         assert_eq!(cond.statistics().tasks_waiting, 1);
    ///         drop(g);
    ///         wait_all_tasks_blocked().await?;
    ///         assert_eq!(*m.lock().await?, [0, 1], "the two oldest, in order");
    ///         cond.notify_all(&m.lock().await?);
    ///         Ok(())
    ///     })
    ///     .await
    ///     .unwrap();
    /// });
    /// ```
    pub fn notify<T: ?Sized>(&self, guard: &MutexGuard<'_, T>, n: usize) {
        if n == 0 || self.lot.tasks_waiting() == 0 {
            return;
        }
        let state = MutexGuard::mutex(guard).state();
        assert_eq!(
            self.mutex.get(),
            state.addr(),
            "Condition::notify with the guard of a different mutex than the one its waiters released"
        );
        self.lot.repark(&state.lot, n);
    }

    /// Wakes every waiter; see [`notify`](Condition::notify).
    ///
    /// # Panics
    ///
    /// If the waiters released a different mutex than the one `guard` holds.
    pub fn notify_all<T: ?Sized>(&self, guard: &MutexGuard<'_, T>) {
        self.notify(guard, usize::MAX);
    }

    /// Counts for introspection.
    pub fn statistics(&self) -> ConditionStatistics {
        ConditionStatistics { tasks_waiting: self.lot.tasks_waiting() }
    }
}

enum WaitStep<'a, T: ?Sized> {
    /// Not polled yet: still holds the lock.
    Start(MutexGuard<'a, T>),
    /// Released the lock; parked in the condition's lot.
    InCondition(Ticket),
    /// Notified (or cancelled): parked in the mutex's lot, waiting for the lock to be handed
    /// over. `cancelled` is the cancellation to report once it is.
    InMutex {
        ticket: Ticket,
        cancelled: Option<Cancelled>,
    },
    Done,
}

/// Future of [`Condition::wait`]. Dropping it hands on the lock if it had it back, or leaves
/// its queue without a trace.
#[must_use = "futures do nothing unless awaited"]
pub struct ConditionWait<'a, T: ?Sized> {
    cond: &'a Condition,
    mutex: &'a Mutex<T>,
    at: &'static Location<'static>,
    step: WaitStep<'a, T>,
    park: Park,
}

impl<T: ?Sized> fmt::Debug for ConditionWait<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let step = match &self.step {
            WaitStep::Start(_) => "start",
            WaitStep::InCondition(_) => "waiting for a notification",
            WaitStep::InMutex { .. } => "waiting for the lock",
            WaitStep::Done => "done",
        };
        f.debug_struct("ConditionWait").field("step", &step).field("at", &self.at).finish()
    }
}

impl<'a, T: ?Sized> ConditionWait<'a, T> {
    fn state(&self) -> &'a MutexState {
        self.mutex.state()
    }

    /// The lock is ours again: the result to return.
    fn relocked(&mut self, cancelled: Option<Cancelled>) -> Result<MutexGuard<'a, T>, WaitError<'a, T>> {
        self.relocked_dropping(cancelled, None)
    }

    /// [`relocked`](Self::relocked), dropping a re-poll's [`Leftover`] wake-up with the
    /// registration.
    fn relocked_dropping(
        &mut self,
        cancelled: Option<Cancelled>,
        leftover: Option<Leftover>,
    ) -> Result<MutexGuard<'a, T>, WaitError<'a, T>> {
        // The guard first, so that the lock is never held by nobody. `unpark` may drop a
        // foreign waker whose destructor panics: the lock then goes back as usual (to the next
        // waiter), not broken, as a lock's `Acquire` gives it back: no critical section ran.
        let guard = MutexGuard::new(self.mutex, self.at);
        self.step = WaitStep::Done;
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| {
            drop(leftover);
            self.park.unpark()
        })) {
            drop(guard);
            resume_unwind(p);
        }
        match cancelled {
            None => Ok(guard),
            Some(cancelled) => Err(WaitError::Cancelled { guard, cancelled }),
        }
    }

    fn broken(&mut self) -> WaitError<'a, T> {
        self.step = WaitStep::Done;
        self.park.unpark();
        WaitError::Broken(
            self.state().broken().expect("hatchery internal error: broken lot, mutex not broken"),
        )
    }

    /// Cancelled before notified: take the lock back, or queue for it.
    fn reacquire(
        &mut self,
        cancelled: Cancelled,
        here: &Here,
        cx: &mut Context<'_>,
    ) -> Poll<Result<MutexGuard<'a, T>, WaitError<'a, T>>> {
        // The wake-up first: making it may clone a foreign waker, which is foreign code and
        // could release the mutex; after `try_take` that would leave this waiter queued behind
        // nobody. (A rare path: one wake-up too many costs nothing.)
        let wakeup = here.wakeup(cx.waker());
        match self.state().try_take() {
            Take::Taken => {
                // Not needed: dropped before the guard is made (a foreign destructor that
                // panics after would leak the guard in the return value, rust#47949, and the
                // lock with it), and if it panics the lock just taken goes back, unbroken.
                if let Err(p) = catch_unwind(AssertUnwindSafe(|| drop(wakeup))) {
                    self.step = WaitStep::Done;
                    self.state().release();
                    resume_unwind(p);
                }
                Poll::Ready(self.relocked(Some(cancelled)))
            }
            Take::Broken => {
                drop(wakeup);
                Poll::Ready(Err(self.broken()))
            }
            Take::Busy => {
                let ticket = self.state().lot.park_wakeup(wakeup);
                self.step = WaitStep::InMutex { ticket, cancelled: Some(cancelled) };
                Poll::Pending
            }
        }
    }
}

impl<'a, T: ?Sized> Future for ConditionWait<'a, T> {
    type Output = Result<MutexGuard<'a, T>, WaitError<'a, T>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        // One look-up of the run for the whole poll: the cancel point, the wake-ups and the
        // cancellation registration share it (as the parking lot's `Acquire` does).
        let here = Here::get();
        loop {
            match &mut this.step {
                WaitStep::Start(_) => {
                    let WaitStep::Start(guard) = std::mem::replace(&mut this.step, WaitStep::Done) else {
                        unreachable!()
                    };
                    if let Err(cancelled) = here.cancel_point() {
                        return Poll::Ready(Err(WaitError::Cancelled { guard, cancelled }));
                    }
                    // The wake-up first (cloning a foreign waker is foreign code): if that
                    // panics, the guard is released as usual, not dropped by the unwinding,
                    // which would break a mutex whose data nobody was changing.
                    let wakeup = match catch_unwind(AssertUnwindSafe(|| here.wakeup(cx.waker()))) {
                        Ok(w) => w,
                        Err(p) => {
                            drop(guard);
                            resume_unwind(p);
                        }
                    };
                    let state = this.mutex.state();
                    if this.cond.lot.tasks_waiting() > 0 && this.cond.mutex.get() != state.addr() {
                        // The guard goes first, released as usual: a panic that dropped it would
                        // break a mutex whose data nobody was changing.
                        drop(guard);
                        panic!(
                            "Condition::wait at {}: other tasks wait on this condition with a different mutex",
                            this.at
                        );
                    }
                    this.cond.mutex.set(state.addr());
                    let ticket = this.cond.lot.park_wakeup(wakeup);
                    this.step = WaitStep::InCondition(ticket);
                    guard.into_locked();
                    state.release();
                }
                WaitStep::InCondition(ticket) => {
                    let ticket = *ticket;
                    let mut needs_clone = false;
                    let mut status =
                        this.cond.lot.poll_with(ticket, |w| here.refresh(w, cx.waker(), &mut needs_clone));
                    let mut leftover = None;
                    if needs_clone {
                        let (s, l) = here.repoll_with_clone(cx.waker(), |install| {
                            this.cond.lot.poll_with(ticket, install)
                        });
                        (status, leftover) = (s, Some(l));
                    }
                    // Dropped once the step records what the re-poll found (`Drop` then leaves
                    // the right ticket if the destructor panics); still waiting, it records it.
                    if status == Status::Waiting {
                        drop(leftover.take());
                    }
                    match status {
                        Status::Moved(to) => {
                            this.step = WaitStep::InMutex { ticket: to, cancelled: None };
                            drop(leftover);
                        }
                        Status::Waiting => match here.poll_cancel(&mut this.park, cx, WaitingOn::Condition) {
                            Poll::Pending => return Poll::Pending,
                            Poll::Ready(c) => {
                                // `leave` frees the ticket, then drops the waiter's waker: a
                                // panic there (a foreign destructor), or below (a foreign
                                // waker's clone), must not make `Drop` leave it again.
                                this.step = WaitStep::Done;
                                match this.cond.lot.leave(ticket) {
                                    Status::Waiting => return this.reacquire(c, &here, cx),
                                    Status::Moved(to) => {
                                        this.step = WaitStep::InMutex { ticket: to, cancelled: Some(c) }
                                    }
                                    s => unreachable!("hatchery internal error: condition waiter {s:?}"),
                                }
                            }
                        },
                        s => unreachable!("hatchery internal error: condition waiter {s:?}"),
                    }
                }
                WaitStep::InMutex { ticket, cancelled } => {
                    let ticket = *ticket;
                    let lot = &this.mutex.state().lot;
                    let mut needs_clone = false;
                    let mut status = lot.poll_with(ticket, |w| here.refresh(w, cx.waker(), &mut needs_clone));
                    let mut leftover = None;
                    if needs_clone {
                        let (s, l) =
                            here.repoll_with_clone(cx.waker(), |install| lot.poll_with(ticket, install));
                        (status, leftover) = (s, Some(l));
                    }
                    if status == Status::Waiting {
                        drop(leftover.take());
                    }
                    match status {
                        Status::Granted => {
                            let c = cancelled.take();
                            return Poll::Ready(this.relocked_dropping(c, leftover));
                        }
                        Status::Broken => {
                            let e = this.broken();
                            drop(leftover);
                            return Poll::Ready(Err(e));
                        }
                        Status::Waiting => {
                            // Until cancelled, listen for cancellation; after, only for the lock.
                            if cancelled.is_none()
                                && let Poll::Ready(c) = here.poll_cancel(&mut this.park, cx, WaitingOn::Lock)
                            {
                                *cancelled = Some(c);
                            }
                            return Poll::Pending;
                        }
                        Status::Moved(_) => unreachable!("hatchery internal error: a mutex waiter was moved"),
                    }
                }
                WaitStep::Done => panic!("a hatchery synchronisation future was polled after it completed"),
            }
        }
    }
}

impl<T: ?Sized> Drop for ConditionWait<'_, T> {
    fn drop(&mut self) {
        let in_mutex = match std::mem::replace(&mut self.step, WaitStep::Done) {
            WaitStep::InCondition(t) => match self.cond.lot.leave(t) {
                Status::Moved(to) => Some(to),
                _ => None,
            },
            WaitStep::InMutex { ticket, .. } => Some(ticket),
            // A guard not yet given up is dropped as any guard.
            WaitStep::Start(_) | WaitStep::Done => None,
        };
        if let Some(t) = in_mutex
            && self.state().lot.leave(t) == Status::Granted
        {
            self.state().release();
        }
    }
}

/// Why [`Condition::wait`] failed.
#[non_exhaustive]
pub enum WaitError<'a, T: ?Sized> {
    /// The calling code is cancelled. The lock was re-acquired first (or never released, if the
    /// scope was cancelled on entry): here is its guard.
    Cancelled {
        /// The lock, held again.
        guard: MutexGuard<'a, T>,
        /// The cancellation, to propagate.
        cancelled: Cancelled,
    },
    /// An owner of the mutex panicked while holding it, before the lock came back.
    Broken(BrokenMutex),
}

impl<'a, T: ?Sized> WaitError<'a, T> {
    /// The guard, if the lock is held again.
    pub fn into_guard(self) -> Option<MutexGuard<'a, T>> {
        match self {
            WaitError::Cancelled { guard, .. } => Some(guard),
            WaitError::Broken(_) => None,
        }
    }
}

impl<T: ?Sized> fmt::Debug for WaitError<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WaitError::Cancelled { cancelled, .. } => f
                .debug_struct("Cancelled")
                .field("guard", &format_args!("MutexGuard"))
                .field("cancelled", cancelled)
                .finish(),
            WaitError::Broken(b) => f.debug_tuple("Broken").field(b).finish(),
        }
    }
}

impl<T: ?Sized> fmt::Display for WaitError<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WaitError::Cancelled { cancelled, .. } => fmt::Display::fmt(cancelled, f),
            WaitError::Broken(b) => fmt::Display::fmt(b, f),
        }
    }
}

impl<T: ?Sized> std::error::Error for WaitError<'_, T> {}

impl<T: ?Sized> CancelError for WaitError<'_, T> {
    fn cancelled(&self) -> Option<&Cancelled> {
        match self {
            WaitError::Cancelled { cancelled, .. } => Some(cancelled),
            WaitError::Broken(_) => None,
        }
    }
}

impl<T: ?Sized> From<WaitError<'_, T>> for LockError {
    /// Drops the guard (releasing the lock) and keeps the reason.
    fn from(e: WaitError<'_, T>) -> LockError {
        match e {
            WaitError::Cancelled { cancelled, .. } => LockError::Cancelled(cancelled),
            WaitError::Broken(b) => LockError::Broken(b),
        }
    }
}

impl<T: ?Sized> From<WaitError<'_, T>> for io::Error {
    /// Drops the guard (releasing the lock); a cancellation stays recognisable.
    fn from(e: WaitError<'_, T>) -> io::Error {
        LockError::from(e).into()
    }
}

impl<T: ?Sized> From<WaitError<'_, T>> for crate::Error {
    /// Drops the guard (releasing the lock); a cancellation becomes [`crate::Error::Cancelled`].
    fn from(e: WaitError<'_, T>) -> crate::Error {
        LockError::from(e).into()
    }
}
