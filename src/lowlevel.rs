//! The low-level facade: the one parking protocol every hatchery primitive is built on.
//!
//! `time`, `sync`, `net` and `io` are written against this module (plus two crate-private
//! shortcuts of it, `Here` and `Wakeup`, which save lookups on hot paths), as anyone may write
//! their own primitives. The protocol, in Trio's shape (S2.3):
//!
//! 1. On the first poll, [`checkpoint_if_cancelled`]: in a cancelled scope, fail at once and
//!    touch nothing.
//! 2. Try to complete without blocking. If that works, pass a
//!    [`cancel_shielded_checkpoint`] (a schedule point that cannot fail, so a cancellation that
//!    arrives after the point of no return cannot undo the operation) and return.
//! 3. Otherwise record yourself as a waiter wherever the event you wait for will come from, and
//!    park with a [`Park`]: [`Park::poll_cancel`] registers the task for cancellation and tells
//!    you when cancellation reached it. That is the *abort path*: on `Ready(cancelled)`, remove
//!    your record and return the error, unless the operation already completed, in which case
//!    return the result (the cancellation stays pending for the next checkpoint).
//! 4. Dropping the future at any point is the same abort path: `Drop` removes the record.
//!
//! Whoever completes the operation ("reschedules" the task) records the result where the waiting
//! future will find it and wakes its waker.

use std::future::Future;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

pub use crate::debug::WaitingOn;
use crate::error::{BusyResource, Cancelled, ClosedResource};
use crate::runtime::cancel_tree::NIL;
pub(crate) use crate::runtime::context::Wakeup;
use crate::runtime::context::{self, ParkRef, TimerTarget};
use crate::runtime::reactor::{Dir, POLL_OP, Readiness};
use crate::runtime::sched::WakeTarget;

pub use crate::runtime::RunHandle;
pub use crate::runtime::clock::Instant;

/// The current time on the run's clock.
///
/// # Panics
///
/// Outside a run.
pub fn current_time() -> Instant {
    crate::runtime::now()
}

/// A handle that other threads use to run closures on this run's thread.
///
/// # Panics
///
/// Outside a run.
pub fn run_handle() -> RunHandle {
    RunHandle { shared: context::core().shared.clone() }
}

/// A cancel point: `Err(Cancelled)` if the calling code is effectively cancelled, else nothing.
/// It does not yield, so on its own it is not a checkpoint (S2.2); that is also why it is not
/// `async`.
///
/// # Panics
///
/// Outside a run.
pub fn checkpoint_if_cancelled() -> Result<(), Cancelled> {
    match cancel_point(&context::core()) {
        Some(c) => Err(c),
        None => Ok(()),
    }
}

/// A cancel point of the task being polled: counts it, and returns the cancellation to deliver
/// at the current status, if any.
#[inline]
fn cancel_point(core: &context::Core) -> Option<Cancelled> {
    core.cancel_points.set(core.cancel_points.get() + 1);
    core.cancel.borrow().effective(core.current_status.get())
}

/// The turn's yield budget for a poll-style operation (a `futures-io` impl, `poll_read_with`)
/// about to try its I/O: such an operation is not a checkpoint, but a foreign loop over it
/// (`futures::io::copy` over a socket that stays ready) must still let the other tasks run and
/// the deadlines fire, and stop in a cancelled scope. `Ready(Ok)` while the budget lasts; once
/// it is spent, `Ready(Err)` in a cancelled scope, else `Pending` with the task woken to go on
/// in the next batch (nothing was tried, so nothing is lost).
pub(crate) fn poll_budget(core: &context::Core, cx: &Context<'_>) -> Poll<Result<(), Cancelled>> {
    if core.spend_budget() {
        return Poll::Ready(Ok(()));
    }
    if let Some(c) = cancel_point(core) {
        return Poll::Ready(Err(c));
    }
    core.wake_self(cx.waker());
    Poll::Pending
}

/// A schedule point that never fails: the schedule point of an operation that completed without
/// blocking (step 2 above).
///
/// It counts as a schedule point (for `testing::assert_checkpoints` too), but the task only
/// yields, to run again in the next batch, once it has passed
/// [`Builder::yield_budget`](crate::Builder::yield_budget) such points in its current turn: a
/// loop of operations that never block still lets the other tasks run, without a trip through
/// the event loop per operation. [`checkpoint`] always yields.
pub fn cancel_shielded_checkpoint() -> YieldNow {
    YieldNow { state: YieldState::Budgeted }
}

/// A full checkpoint: a schedule point, then a cancel point (S2.2). `sleep(0)` is the same.
///
/// Unlike the schedule point of an operation's fast path, this one always yields: the task runs
/// again in the next batch, after every task that was runnable.
///
/// ```
/// hatchery::run(async {
///     hatchery::lowlevel::checkpoint().await.unwrap();
/// });
/// ```
pub async fn checkpoint() -> Result<(), Cancelled> {
    yield_always().await;
    checkpoint_if_cancelled()
}

/// The schedule point of [`checkpoint`]: always yields (no budget), never fails.
pub(crate) fn yield_always() -> YieldNow {
    YieldNow { state: YieldState::Always }
}

/// Future of [`cancel_shielded_checkpoint`].
#[derive(Debug)]
#[must_use = "futures do nothing unless awaited"]
pub struct YieldNow {
    state: YieldState,
}

#[derive(Debug, Clone, Copy)]
enum YieldState {
    /// Yield only if the turn's budget is used up.
    Budgeted,
    Always,
    Yielded,
}

impl Future for YieldNow {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if let YieldState::Yielded = self.state {
            return Poll::Ready(());
        }
        let core = context::core();
        match self.state {
            YieldState::Yielded => {}
            YieldState::Budgeted => {
                if core.pass_schedule_point() {
                    self.state = YieldState::Yielded;
                    return Poll::Ready(());
                }
            }
            YieldState::Always => core.schedule_points.set(core.schedule_points.get() + 1),
        }
        self.state = YieldState::Yielded;
        core.wake_self(cx.waker());
        Poll::Pending
    }
}

/// The run being polled, looked up once for all the steps of one poll of an operation (each
/// free function of this module looks it up again: a thread-local read and a reference count).
/// The crate's own primitives use it on their hot paths; it is not public because a primitive
/// written outside the crate follows the same protocol through the free functions.
///
/// Usually it owns a reference to the run (`Here::get`); an I/O source, whose registration
/// holds the run already, lends its own instead (`Here<&Core>`), so that an operation keeps no
/// extra word in its future across awaits.
pub(crate) struct Here<C: std::ops::Deref<Target = context::Core> = std::rc::Rc<context::Core>> {
    core: C,
}

impl Here {
    /// # Panics
    ///
    /// Outside a run.
    #[inline]
    pub(crate) fn get() -> Here {
        Here { core: context::core() }
    }
}

impl<'a> Here<&'a context::Core> {
    /// The run `core` belongs to, borrowed from something that holds it (a nursery), which must
    /// be the run on this thread: checked with one thread-local word instead of a look-up.
    ///
    /// # Panics
    ///
    /// Outside a run, or in a run other than `core`'s (a future polled after its run ended, in
    /// a later one).
    #[inline]
    pub(crate) fn of(core: &'a context::Core) -> Self {
        context::assert_current(core);
        Here { core }
    }
}

impl<C: std::ops::Deref<Target = context::Core>> Here<C> {
    /// [`checkpoint_if_cancelled`].
    #[inline]
    pub(crate) fn cancel_point(&self) -> Result<(), Cancelled> {
        match cancel_point(&self.core) {
            Some(c) => Err(c),
            None => Ok(()),
        }
    }

    /// The schedule point of an operation that completed ([`cancel_shielded_checkpoint`]):
    /// true if it passes at once. If not, the task has been woken to run in the next batch:
    /// return `Pending`, and the result on the next poll.
    #[inline]
    pub(crate) fn schedule_point(&self, cx: &Context<'_>) -> bool {
        if self.core.pass_schedule_point() {
            return true;
        }
        self.core.wake_self(cx.waker());
        false
    }

    /// Who to wake, later, for the poll that has `waker` (see [`Wakeup`]).
    #[inline]
    pub(crate) fn wakeup(&self, waker: &Waker) -> Wakeup {
        self.core.wakeup(waker)
    }

    /// Brings a parked entry's wake-up up to date with the waker of a new poll (the entry lives in
    /// a primitive's `RefCell`), without running foreign code under that borrow: cloning a
    /// foreign waker is foreign code, which may use the very primitive (take the value, release
    /// the lock). Under the borrow this updates `slot` when that needs no clone (the task's own
    /// waker, or one that wakes the same) and returns the waker replaced, to be dropped after
    /// the borrow; otherwise it sets `needs_clone` and leaves `slot` alone, and the caller polls
    /// its entry again through [`repoll_with_clone`](Here::repoll_with_clone).
    #[must_use = "drop the replaced waker after the borrow ends"]
    #[inline]
    pub(crate) fn refresh(&self, slot: &mut Wakeup, waker: &Waker, needs_clone: &mut bool) -> Option<Waker> {
        match self.core.try_refresh_wakeup(slot, waker) {
            Ok(old) => old,
            Err(context::NeedsClone) => {
                *needs_clone = true;
                None
            }
        }
    }

    /// The rare second half of [`refresh`](Here::refresh): clones `waker` with nothing borrowed,
    /// then runs `repoll`, which borrows the primitive and polls its entry again (its state may
    /// have changed meanwhile), handing the entry's wake-up slot to `install`: that puts the
    /// clone in and returns the waker replaced. A clone left over (the entry completed
    /// meanwhile) comes back as a [`Leftover`], for the caller to drop once its own state says
    /// what the re-poll found.
    #[cold]
    #[inline(never)]
    pub(crate) fn repoll_with_clone<R>(
        &self,
        waker: &Waker,
        repoll: impl FnOnce(&mut dyn FnMut(&mut Wakeup) -> Option<Waker>) -> R,
    ) -> (R, Leftover) {
        let mut fresh = Some(self.wakeup(waker));
        let r = repoll(&mut |slot| fresh.take().and_then(|f| slot.replace(f)));
        (r, Leftover(fresh))
    }

    /// The wake-up for the poll that has `waker` if it is the task's own, made without foreign
    /// code; `None` for another waker, to be made with [`wakeup`](Here::wakeup) once nothing
    /// is borrowed (its clone is foreign code), and the state looked at again.
    #[inline]
    pub(crate) fn task_wakeup(&self, waker: &Waker) -> Option<Wakeup> {
        self.core.task_wakeup(waker)
    }

    /// Wakes `w` (with this run in hand: no thread-local lookup for a task).
    #[inline]
    pub(crate) fn wake(&self, w: Wakeup) {
        self.core.wake_up(w)
    }

    /// Registers for cancellation ([`Park::poll_cancel`]) a wait on `on`.
    #[inline]
    pub(crate) fn poll_cancel(
        &self,
        park: &mut Park,
        cx: &mut Context<'_>,
        on: WaitingOn,
    ) -> Poll<Cancelled> {
        park.poll_cancel_in(&self.core, cx, on)
    }

    /// Registers `park` for cancellation for an operation that passed its cancel point earlier
    /// in this same poll and has just parked. `made_for_task`: its wake-up names the task, so
    /// making it ran no foreign code (a foreign waker's clone could do anything); then nothing
    /// can have cancelled the operation in between, and the cancel point is not asked again.
    /// Otherwise this is [`poll_cancel`](Here::poll_cancel).
    #[inline]
    pub(crate) fn register_parked(
        &self,
        park: &mut Park,
        made_for_task: bool,
        cx: &mut Context<'_>,
        on: WaitingOn,
    ) -> Poll<Cancelled> {
        if made_for_task {
            park.register(&self.core, cx, on);
            Poll::Pending
        } else {
            park.poll_cancel_in(&self.core, cx, on)
        }
    }

    /// [`cancel_shielded_checkpoint`] with the run in hand (a future of one word for a
    /// borrowed `Here`).
    pub(crate) fn shielded_schedule_point(self) -> ShieldedPoint<C> {
        ShieldedPoint { here: Some(self) }
    }
}

/// A wake-up that [`Here::repoll_with_clone`] made and its entry did not take, the entry having
/// completed meanwhile: a clone of a foreign waker, whose destructor is foreign code and may
/// panic. The caller drops it only once its own state records what the re-poll found (a grant
/// held, a value to hand out), so that such a panic loses nothing: the future's `Drop` then
/// gives back what it held. (Dropped at once, a panic lost the grant: a mutex stayed locked.)
#[must_use = "drop it once the future's state records what the re-poll found"]
pub(crate) struct Leftover(#[allow(dead_code, reason = "held only to be dropped")] Option<Wakeup>);

/// Future of [`Here::shielded_schedule_point`]: passes at once within the turn's budget, else
/// yields once (`here` is `None` once it has).
pub(crate) struct ShieldedPoint<C: std::ops::Deref<Target = context::Core>> {
    here: Option<Here<C>>,
}

impl<C: std::ops::Deref<Target = context::Core>> Future for ShieldedPoint<C> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match &self.here {
            Some(here) if !here.schedule_point(cx) => {
                self.here = None;
                Poll::Pending
            }
            _ => Poll::Ready(()),
        }
    }
}

impl<C: std::ops::Deref<Target = context::Core>> Unpin for ShieldedPoint<C> {}

/// A parked operation's registration for cancellation: the abort path of the parking protocol.
///
/// Keep one in a future that may wait. While the future is parked, call
/// [`poll_cancel`](Park::poll_cancel) on every poll: it returns `Ready(Cancelled)` when the
/// current code is effectively cancelled (then abort), and otherwise registers the waker so that a
/// cancellation, a deadline or a removed shield wakes the task. Dropping it unregisters.
#[derive(Debug)]
pub struct Park {
    /// Low 32 bits of the id of the run the waiter is registered in (enough to tell runs apart
    /// on one thread; keeps parked futures small).
    run_id: u32,
    /// [`NEVER`] before the first registration; [`NO_WAITER`] after it while there is no waiter
    /// record (parked with the task's own waker, which needs none, or unparked); otherwise the
    /// key of the waiter registered with a foreign waker (or, with task tracking, of the
    /// silent waiter that names the wait). One word for three states keeps a
    /// `Park` at 8 bytes, and a `Sleep` at 32.
    state: u32,
}

/// [`Park::state`] before the first registration.
const NEVER: u32 = NIL;
/// [`Park::state`] after it, with no waiter record. Waiter keys stay below it (the waiter slab
/// would need 2^32 - 2 live waiters to reach it).
const NO_WAITER: u32 = NIL - 1;

impl Default for Park {
    fn default() -> Self {
        Park::new()
    }
}

impl Park {
    /// A registration not yet active.
    pub const fn new() -> Park {
        Park { run_id: 0, state: NEVER }
    }

    /// The key of the registered waiter, or `NIL`.
    fn waiter(&self) -> u32 {
        if self.state < NO_WAITER { self.state } else { NIL }
    }

    /// Checks for cancellation and, if there is none, makes sure a cancellation will wake `cx`.
    ///
    /// # Panics
    ///
    /// Outside a run.
    pub fn poll_cancel(&mut self, cx: &mut Context<'_>) -> Poll<Cancelled> {
        self.poll_cancel_on(cx, WaitingOn::Other("a lowlevel::Park"))
    }

    /// [`poll_cancel`](Park::poll_cancel), telling the task-tree dump what the wait is for.
    ///
    /// # Panics
    ///
    /// Outside a run.
    pub fn poll_cancel_on(&mut self, cx: &mut Context<'_>, on: WaitingOn) -> Poll<Cancelled> {
        self.poll_cancel_in(&context::core(), cx, on)
    }

    #[inline]
    fn poll_cancel_in(
        &mut self,
        core: &context::Core,
        cx: &mut Context<'_>,
        on: WaitingOn,
    ) -> Poll<Cancelled> {
        if let Some(c) = cancel_point(core) {
            self.unpark();
            return Poll::Ready(c);
        }
        self.register(core, cx, on);
        Poll::Pending
    }

    /// Makes sure a cancellation reaching the current status wakes `cx` (no cancellation
    /// check), and says how the task will be woken. Polled with the waker of the task being
    /// polled (the common case), that is a mark on the status's node, undone by nothing;
    /// with any other waker, a waiter holding it. The first registration of a park counts as
    /// the task's schedule point. `on` is what the task waits for, for the task-tree dump.
    fn register(&mut self, core: &context::Core, cx: &Context<'_>, on: WaitingOn) -> ParkRef {
        let node = core.registration_status();
        let (task, data, vtable) = core.entity.get();
        let mut tree = core.cancel.borrow_mut();
        let first = self.state == NEVER;
        let existing = if self.run_id == core.id as u32 { self.waiter() } else { NIL };
        let wake = if context::waker_id(cx.waker()) == (data, vtable) && tree.register_owner(node, task) {
            if core.tracker.is_none() {
                // A waiter from an earlier poll with another waker is not needed any more.
                let old = tree.unregister(existing);
                drop(tree);
                // The state first: dropping a waker is foreign code, which may panic.
                self.state = NO_WAITER;
                drop(old);
            } else {
                // Task tracking: a silent waiter record names the wait for the task-tree dump
                // for as long as it is registered (the task's mark on the node says neither
                // what it is for nor when it ends); it wakes nothing, so the run goes exactly
                // as without tracking.
                let (waiter, old) = tree.register_silent(existing, node);
                drop(tree);
                self.state = waiter;
                track(core, existing, waiter, task, on);
                drop(old);
            }
            ParkRef::Task(task)
        } else {
            let keeps = tree.keeps(existing, node, cx.waker());
            drop(tree);
            self.register_waiter(core, cx.waker(), keeps, existing, node, task, on)
        };
        self.run_id = core.id as u32;
        if first {
            core.schedule_points.set(core.schedule_points.get() + 1);
        }
        wake
    }

    /// [`register`](Park::register) with another waker than the task's own (a foreign
    /// combinator's): a waiter holds a clone, unless it `keeps` one that wakes the same. Cloning
    /// is foreign code, which may use the runtime (read a deadline, cancel a scope): it runs with
    /// nothing borrowed. The waiter's key and node stay valid meanwhile: only this park removes
    /// the one, and the other is the status of the poll still running.
    #[cold]
    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    fn register_waiter(
        &mut self,
        core: &context::Core,
        waker: &Waker,
        keeps: bool,
        existing: u32,
        node: u32,
        task: WakeTarget,
        on: WaitingOn,
    ) -> ParkRef {
        let (waiter, old) = if keeps {
            (existing, None)
        } else {
            let clone = std::rc::Rc::new(waker.clone());
            core.cancel.borrow_mut().register(existing, node, clone)
        };
        debug_assert!(waiter < NO_WAITER, "hatchery internal error: waiter key out of range");
        self.state = waiter;
        track(core, existing, waiter, task, on);
        drop(old);
        ParkRef::Waiter(waiter)
    }

    /// The operation completed: stop listening for cancellation.
    #[inline]
    pub fn unpark(&mut self) {
        // Parked with the task's own waker (the common case), there is nothing to undo: no call.
        if self.state < NO_WAITER {
            self.unregister();
        }
    }

    fn unregister(&mut self) {
        let waiter = self.waiter();
        // The state first: the waker dropped below is foreign code, which may panic, and the
        // waiter must not be unregistered twice.
        self.state = NO_WAITER;
        if let Some(core) = context::try_core().filter(|c| c.id as u32 == self.run_id) {
            let old = core.cancel.borrow_mut().unregister(waiter);
            if let Some(t) = &core.tracker {
                t.borrow_mut().unregistered(waiter);
            }
            drop(old);
        }
    }
}

/// Tells the task-tree dump, if the run keeps one, that `task` waits on `on` under the waiter
/// `waiter`, which replaced `existing`.
#[inline]
fn track(core: &context::Core, existing: u32, waiter: u32, task: WakeTarget, on: WaitingOn) {
    if let Some(t) = &core.tracker {
        let mut t = t.borrow_mut();
        if existing != NIL && existing != waiter {
            t.unregistered(existing);
        }
        t.waiting(waiter, task, on);
    }
}

impl Drop for Park {
    fn drop(&mut self) {
        self.unpark();
    }
}

pub use crate::runtime::reactor::IoSource;

impl<T: AsFd> IoSource<T> {
    /// Wakes any task waiting on this source with [`ClosedResource`]; later waits fail the same
    /// way. Call it before closing the descriptor while other tasks may be using it.
    pub fn notify_closing(&self) {
        self.reg.notify_closing();
    }

    /// Whether [`notify_closing`](IoSource::notify_closing) was called.
    pub fn is_closed(&self) -> bool {
        self.reg.reactor().is_closed(self.reg.key)
    }

    /// Forgets that the descriptor was readable. Call it when your own non-blocking syscall
    /// fails with `WouldBlock`, before waiting with [`readable`](IoSource::readable) again;
    /// otherwise `readable` keeps returning at once (the reactor only learns about readiness
    /// from the OS, and about its end from you). [`read_with`](IoSource::read_with) does this
    /// for you.
    pub fn clear_readable(&self) {
        self.reg.reactor().clear_ready(self.reg.key, Dir::Read, true);
    }

    /// Like [`clear_readable`](IoSource::clear_readable), for writing.
    pub fn clear_writable(&self) {
        self.reg.reactor().clear_ready(self.reg.key, Dir::Write, true);
    }

    /// A read returned less than asked: the descriptor was drained, unless its end was reported
    /// or the reactor cannot tell (see `reactor::DirState`). Weaker than
    /// [`clear_readable`](IoSource::clear_readable), which a `WouldBlock` proves.
    pub(crate) fn drained_readable(&self) {
        self.reg.reactor().clear_ready(self.reg.key, Dir::Read, false);
    }

    /// A write took less than offered: the buffer is full (as `drained_readable`).
    pub(crate) fn filled_writable(&self) {
        self.reg.reactor().clear_ready(self.reg.key, Dir::Write, false);
    }

    /// Waits until the OS reports the descriptor readable (or it already had reported so and no
    /// operation has failed with `WouldBlock` since: see
    /// [`clear_readable`](IoSource::clear_readable)). A checkpoint.
    ///
    /// # Errors
    ///
    /// [`Cancelled`], [`BusyResource`] or [`ClosedResource`], as `io::Error`s.
    pub async fn readable(&self) -> io::Result<()> {
        self.wait(Dir::Read).await
    }

    /// Waits until the OS reports the descriptor writable. A checkpoint.
    ///
    /// # Errors
    ///
    /// As [`readable`](IoSource::readable).
    pub async fn writable(&self) -> io::Result<()> {
        self.wait(Dir::Write).await
    }

    /// Runs the non-blocking `op` until it does not fail with `WouldBlock`, waiting for
    /// readability in between. A checkpoint: cancelled on entry means `op` never runs. Once `op`
    /// has succeeded its result is returned at once, with no await after it, so dropping the
    /// future at any point never loses what `op` did (the schedule point of an operation that
    /// does not have to wait comes before `op`).
    ///
    /// In edge mode `op` is not even tried while the reactor knows the descriptor would block.
    /// Do not call [`clear_readable`](IoSource::clear_readable) after a short read: the end of
    /// stream may have come with the data, and no new event would announce it; the next try's
    /// `WouldBlock` clears readiness (hatchery's own streams skip that syscall where the
    /// reactor can tell the end apart).
    ///
    /// # Errors
    ///
    /// Whatever `op` returns, or as [`readable`](IoSource::readable).
    pub async fn read_with<R>(&self, op: impl FnMut(&T) -> io::Result<R>) -> io::Result<R> {
        self.op_with(Dir::Read, op).await
    }

    /// Like [`read_with`](IoSource::read_with), for writing.
    ///
    /// # Errors
    ///
    /// Whatever `op` returns, or as [`readable`](IoSource::readable).
    pub async fn write_with<R>(&self, op: impl FnMut(&T) -> io::Result<R>) -> io::Result<R> {
        self.op_with(Dir::Write, op).await
    }

    /// The poll-style twin of [`read_with`](IoSource::read_with), for `poll_read`-shaped
    /// adapters (the `futures-io` traits) that cannot keep an operation open across polls:
    /// runs `op` when the descriptor may be readable, and otherwise registers `cx` for
    /// readiness and `park` for cancellation.
    ///
    /// Unlike `read_with` this is **not a checkpoint**: it neither checks for cancellation
    /// before trying `op` nor yields after a success. It fails with [`Cancelled`] only when it
    /// would block in a cancelled scope, so a loop of polls cannot block forever there, or
    /// when the task's turn has used its [yield budget](crate::Builder::yield_budget) in a
    /// cancelled scope; with the budget spent otherwise it returns `Pending`, the task woken,
    /// without trying `op`, so a loop of polls that never block still lets the others run. Keep
    /// `park` in the object that polls (one per direction) and call
    /// [`Park::unpark`] when done with it, or drop it.
    ///
    /// A poll-style waiter gives way to an `async` operation on the same direction (which then
    /// wins, and the poller is woken to find [`BusyResource`]); two poll-style waiters on one
    /// direction at once are a logic error: only the last one is woken.
    ///
    /// # Errors
    ///
    /// Whatever `op` returns, [`Cancelled`], [`BusyResource`] or [`ClosedResource`].
    pub fn poll_read_with<R>(
        &self,
        cx: &mut Context<'_>,
        park: &mut Park,
        op: impl FnMut(&T) -> io::Result<R>,
    ) -> Poll<io::Result<R>> {
        self.poll_op_with(Dir::Read, cx, park, op)
    }

    /// The poll-style twin of [`write_with`](IoSource::write_with); see
    /// [`poll_read_with`](IoSource::poll_read_with).
    ///
    /// # Errors
    ///
    /// As [`poll_read_with`](IoSource::poll_read_with).
    pub fn poll_write_with<R>(
        &self,
        cx: &mut Context<'_>,
        park: &mut Park,
        op: impl FnMut(&T) -> io::Result<R>,
    ) -> Poll<io::Result<R>> {
        self.poll_op_with(Dir::Write, cx, park, op)
    }

    fn poll_op_with<R>(
        &self,
        dir: Dir,
        cx: &mut Context<'_>,
        park: &mut Park,
        mut op: impl FnMut(&T) -> io::Result<R>,
    ) -> Poll<io::Result<R>> {
        let here = self.here()?;
        match poll_budget(here.core, cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(c)) => {
                park.unpark();
                return Poll::Ready(Err(c.into()));
            }
            Poll::Pending => return Poll::Pending,
        }
        let reactor = self.reg.reactor();
        loop {
            if reactor.should_try(self.reg.key, dir) {
                // A closed source (`should_try` says try, so that the wait below reports it):
                // `op` would reach a descriptor its owner has given up, as `op_with` refuses.
                if reactor.is_closed(self.reg.key) {
                    park.unpark();
                    return Poll::Ready(Err(ClosedResource.into()));
                }
                match op(self.get_ref()) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        reactor.clear_ready(self.reg.key, dir, true)
                    }
                    res => {
                        park.unpark();
                        return Poll::Ready(res);
                    }
                }
            }
            let fd = self.get_ref().as_fd();
            match self.reg.poll_ready(dir, POLL_OP, cx.waker())? {
                Readiness::Ready => continue,
                Readiness::Busy => {
                    park.unpark();
                    return Poll::Ready(Err(busy(dir)));
                }
                Readiness::Closed => {
                    park.unpark();
                    return Poll::Ready(Err(ClosedResource.into()));
                }
                Readiness::Pending => {
                    return match here.poll_cancel(park, cx, dir.waiting_on(fd.as_raw_fd())) {
                        Poll::Ready(c) => {
                            reactor.forget_waiter(self.reg.key, dir, POLL_OP);
                            Poll::Ready(Err(c.into()))
                        }
                        Poll::Pending => Poll::Pending,
                    };
                }
            }
        }
    }

    /// Checks that this source belongs to the run being polled (a read of the thread's run id)
    /// and returns that run, borrowed from the registration: the steps of the poll use it
    /// without looking the run up, and an operation keeps nothing more in its future. Every
    /// poll of an operation that waits checks again, so a future moved to a later run fails
    /// there instead of working on the run that ended.
    ///
    /// # Panics
    ///
    /// Outside a run.
    fn here(&self) -> io::Result<Here<&context::Core>> {
        if context::current_run_id() != self.reg.run_id() {
            return Err(io::Error::other(
                "this IoSource was registered in a hatchery run that has ended; register the descriptor again",
            ));
        }
        Ok(self.at())
    }

    /// The run of the registration: the one being polled, once [`here`](Self::here) has said
    /// so in the same poll.
    fn at(&self) -> Here<&context::Core> {
        Here { core: self.reg.core() }
    }

    /// The start of an `async` operation: the run check, the cancel point on entry, and the
    /// operation's id for the reactor.
    #[inline]
    fn begin_op(&self) -> io::Result<u64> {
        let here = self.here()?;
        here.cancel_point()?;
        Ok(here.core.fresh_id())
    }

    async fn wait(&self, dir: Dir) -> io::Result<()> {
        let id = self.begin_op()?;
        let waited = {
            let mut wait = ReadyWait { src: self, dir, id, park: Park::new(), waited: false };
            (&mut wait).await?;
            wait.waited
        };
        if !waited {
            self.at().shielded_schedule_point().await;
        }
        Ok(())
    }

    async fn op_with<R>(&self, dir: Dir, mut op: impl FnMut(&T) -> io::Result<R>) -> io::Result<R> {
        let id = self.begin_op()?;
        let mut waited = false;
        loop {
            if self.reg.reactor().should_try(self.reg.key, dir) {
                // The schedule point comes *before* the syscall, never after it: a future
                // dropped at an await after `op` took bytes, a datagram or a connection would
                // lose them. Having yielded, check for a cancellation that arrived meanwhile
                // (cancelled before `op` runs means no effect).
                if !waited {
                    self.at().shielded_schedule_point().await;
                    // Maybe a later poll: check the run again.
                    self.here()?.cancel_point()?;
                    waited = true;
                    // Closed while this yielded: the operation does not run (as a waiting one
                    // fails), it would reach a descriptor its owner has given up.
                    if self.reg.reactor().is_closed(self.reg.key) {
                        return Err(ClosedResource.into());
                    }
                }
                match op(self.get_ref()) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.reg.reactor().clear_ready(self.reg.key, dir, true);
                    }
                    res => return res,
                }
            }
            let mut wait = ReadyWait { src: self, dir, id, park: Park::new(), waited: false };
            (&mut wait).await?;
            waited |= wait.waited;
        }
    }
}

fn busy(dir: Dir) -> io::Error {
    BusyResource(match dir {
        Dir::Read => "read",
        Dir::Write => "write",
    })
    .into()
}

struct ReadyWait<'a, T: AsFd> {
    src: &'a IoSource<T>,
    dir: Dir,
    id: u64,
    park: Park,
    waited: bool,
}

impl<T: AsFd> Future for ReadyWait<'_, T> {
    type Output = io::Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let src = this.src;
        let here = src.here()?;
        let fd = src.get_ref().as_fd();
        let r = src.reg.poll_ready(this.dir, this.id, cx.waker());
        match r {
            Err(e) => Poll::Ready(Err(e)),
            Ok(Readiness::Ready) => {
                this.park.unpark();
                Poll::Ready(Ok(()))
            }
            Ok(Readiness::Busy) => Poll::Ready(Err(busy(this.dir))),
            Ok(Readiness::Closed) => Poll::Ready(Err(ClosedResource.into())),
            Ok(Readiness::Pending) => {
                match here.poll_cancel(&mut this.park, cx, this.dir.waiting_on(fd.as_raw_fd())) {
                    Poll::Ready(c) => {
                        src.reg.reactor().forget_waiter(src.reg.key, this.dir, this.id);
                        Poll::Ready(Err(c.into()))
                    }
                    Poll::Pending => {
                        this.waited = true;
                        Poll::Pending
                    }
                }
            }
        }
    }
}

impl<T: AsFd> Drop for ReadyWait<'_, T> {
    fn drop(&mut self) {
        self.src.reg.reactor().forget_waiter(self.src.reg.key, self.dir, self.id);
    }
}

/// A one-shot timer on the run's deadline structure, with the parking registration of the task
/// that waits on it: the building block of `sleep`.
///
/// [`poll_at`](Timer::poll_at) arms it on first use and is `Ready` once the run's clock has
/// passed the deadline (deadlines expire between batches, so a timer that is already due still
/// yields once). The deadline and a cancellation wake the task the same way, as its [`Park`]
/// registration says: the task itself when polled with its own waker, else the waker it was
/// polled with. Every call ([`poll_at`](Timer::poll_at), [`poll_cancel`](Timer::poll_cancel),
/// [`poll_wait`](Timer::poll_wait)) brings that up to date, so the waker of the latest call is
/// the one woken; `poll_cancel` tells whether a cancellation arrived. Dropping it removes both.
#[derive(Debug, Default)]
pub struct Timer {
    /// Its `run_id` is also the run of the armed entry: every arming follows a registration.
    park: Park,
    /// The key of the armed entry, `NIL` when there is none.
    key: u32,
    fired: bool,
}

impl Timer {
    /// An unarmed timer.
    pub const fn new() -> Timer {
        Timer { park: Park::new(), key: NIL, fired: false }
    }

    /// The key of the armed entry if it belongs to the current run.
    fn entry(&self, core: &context::Core) -> Option<usize> {
        (self.key != NIL && self.park.run_id == core.id as u32).then_some(self.key as usize)
    }

    /// Registers the park ([`Park::register`]), which makes its run the current one; an entry
    /// armed in another run is forgotten first (unreachable from here; that run removes it when
    /// it ends).
    fn register(&mut self, core: &context::Core, cx: &Context<'_>, on: WaitingOn) -> ParkRef {
        if self.park.run_id != core.id as u32 {
            self.key = NIL;
        }
        self.park.register(core, cx, on)
    }

    /// The cancellation check of the waiting task ([`Park::poll_cancel`]).
    ///
    /// # Panics
    ///
    /// Outside a run.
    pub fn poll_cancel(&mut self, cx: &mut Context<'_>) -> Poll<Cancelled> {
        let core = context::core();
        if let Some(c) = cancel_point(&core) {
            self.park.unpark();
            return Poll::Ready(c);
        }
        // The registration may have changed kind (own waker or foreign): the armed entry must
        // name the current one.
        let wake = self.register(&core, cx, WaitingOn::Other("a lowlevel::Timer"));
        self.arm(&core, None, wake);
        Poll::Pending
    }

    /// Arms the timer for `deadline` if it is not armed yet, and reports whether it has fired.
    /// The waker of the latest call is the one woken.
    ///
    /// # Panics
    ///
    /// Outside a run.
    pub fn poll_at(&mut self, deadline: Instant, cx: &mut Context<'_>) -> Poll<()> {
        if self.fired {
            return Poll::Ready(());
        }
        let core = context::core();
        if self.settle(&core, false).is_some() {
            return Poll::Ready(());
        }
        let wake = self.register(&core, cx, WaitingOn::Sleep(Some(deadline)));
        self.arm(&core, Some(deadline), wake);
        Poll::Pending
    }

    /// Waits for `deadline` (`None`: no deadline) or a cancellation, whichever comes first: a
    /// [`poll_at`](Timer::poll_at) and a [`poll_cancel`](Timer::poll_cancel) in one call, with
    /// one registration. If both happened, the deadline wins. After `Ready(Err)` the timer is
    /// reset.
    ///
    /// # Panics
    ///
    /// Outside a run.
    pub fn poll_wait(
        &mut self,
        deadline: Option<Instant>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), Cancelled>> {
        if self.fired {
            return Poll::Ready(Ok(()));
        }
        let core = context::core();
        if let Some(outcome) = self.settle(&core, true) {
            return Poll::Ready(outcome);
        }
        let wake = self.register(&core, cx, WaitingOn::Sleep(deadline));
        self.arm(&core, deadline, wake);
        Poll::Pending
    }

    /// Whether the wait is over, with the armed entry looked up once: `Ok` if it has fired
    /// (that wins), else, if `cancellable`, `Err` at a cancel point that finds the caller
    /// cancelled. Either way the entry is removed and the park unregistered (`fired` is set
    /// for `Ok`). `None`: neither, and the entry stays armed.
    #[inline(always)]
    fn settle(&mut self, core: &context::Core, cancellable: bool) -> Option<Result<(), Cancelled>> {
        let outcome = match self.entry(core) {
            Some(key) => {
                let mut timers = core.timers.borrow_mut();
                // A sleep's entry is only disarmed by firing.
                let outcome = if timers.armed(key) == Some(false) {
                    Ok(())
                } else if cancellable {
                    Err(cancel_point(core)?)
                } else {
                    return None;
                };
                timers.remove(key);
                outcome
            }
            None if cancellable => Err(cancel_point(core)?),
            None => return None,
        };
        self.key = NIL;
        self.fired = outcome.is_ok();
        self.park.unpark();
        Some(outcome)
    }

    /// Makes the armed entry name `wake`, how the latest registration wakes the task; arms one
    /// for `deadline` if there is none yet.
    fn arm(&mut self, core: &context::Core, deadline: Option<Instant>, wake: ParkRef) {
        let mut timers = core.timers.borrow_mut();
        match (self.entry(core), deadline) {
            (Some(key), _) => {
                if let Some(t) = timers.get_mut(key) {
                    *t = TimerTarget::Sleep(wake).into();
                }
            }
            // `MAX` never comes: no entry (an entry would read as fired, see `settle`).
            (None, Some(deadline)) if deadline != Instant::MAX => {
                let target = TimerTarget::Sleep(wake).into();
                // Keys stay below `NIL`: `Deadlines::insert` checks.
                self.key = timers.insert(deadline, target) as u32;
            }
            (None, _) => {}
        }
    }

    /// Removes the entry and the registration; the timer can be armed again.
    pub fn reset(&mut self) {
        // Without an entry, no need to look the run up.
        let core = if self.key != NIL { context::try_core() } else { None };
        self.reset_in(core.as_deref());
    }

    /// [`reset`](Timer::reset) with the current run, if any, in hand.
    fn reset_in(&mut self, core: Option<&context::Core>) {
        self.fired = false;
        if let Some(core) = core
            && let Some(key) = self.entry(core)
        {
            core.timers.borrow_mut().remove(key);
        }
        self.key = NIL;
        self.park.unpark();
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        self.reset();
    }
}
