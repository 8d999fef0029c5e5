//! The testing kit: virtual time, quiescence, forced orderings, checkpoint assertions,
//! in-memory streams and a fault-injecting proxy.
//!
//! These are part of the product, as in Trio: code built on hatchery is tested with them.
//! A typical test runs on a [`MockClock`] with autojump (so sleeps cost no real time and instants
//! are exact), orders tasks with [`wait_all_tasks_blocked`] or a [`Sequencer`], and checks the
//! checkpoint rule with [`assert_checkpoints`]. Network code meets a slow, choppy or breaking
//! network through [`chaos::ChaosProxy`], and streams without sockets through
//! [`memory_stream_pair`].

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use pin_project_lite::pin_project;

use crate::error::Cancelled;
use crate::lowlevel::{Park, checkpoint_if_cancelled};
use crate::runtime::context::{self, BlockedWaiter};

pub use crate::runtime::clock::{InvalidRate, MockClock};
pub use memory_stream::{
    DEFAULT_MEMORY_STREAM_CAPACITY, MemoryStream, MemoryStreamStatistics, memory_stream_pair,
    memory_stream_pair_with_capacity,
};

pub mod chaos;
mod memory_stream;

/// How long [`builder`]'s runs may have nothing they can do before they report a deadlock
/// (see [`Builder::stuck_after`](crate::Builder::stuck_after)): 30 seconds of real time.
pub const STUCK_AFTER: Duration = Duration::from_secs(30);

/// A [`Builder`](crate::Builder) on a fresh [`MockClock`] that jumps as soon as every task is
/// blocked, with a fixed seed: the usual set-up of a deterministic test. It also tracks tasks
/// and detects deadlocks: a run that can do nothing for [`STUCK_AFTER`] of real time (no task
/// runnable, no deadline to jump to, nothing arriving from outside) panics with the
/// [task tree](crate::debug::task_tree) instead of hanging. Change either on the builder.
pub fn builder() -> crate::Builder {
    crate::Builder::new()
        .clock(MockClock::with_autojump(Duration::ZERO))
        .seed(0x5eed)
        // CI's second pass swaps tracking (see `Builder::new`).
        .track_tasks(!cfg!(hatchery_swap_tracking))
        .stuck_after(Some(STUCK_AFTER))
}

/// Runs `future` with [`builder`]'s set-up.
#[track_caller]
pub fn run<F: Future>(future: F) -> F::Output {
    builder().run(future)
}

/// Waits until every other task is blocked (nothing runnable, no I/O ready). Takes precedence
/// over autojump: the clock does not jump while a task waits here (S8.4). Cancellable.
///
/// # Errors
///
/// [`Cancelled`] if the calling code is cancelled.
pub fn wait_all_tasks_blocked() -> WaitAllBlocked {
    wait_all_tasks_blocked_cushion(Duration::ZERO)
}

/// Like [`wait_all_tasks_blocked`], once every other task has been blocked for `cushion` of
/// real time. Among several waiters, the smallest cushion wakes first; equal cushions wake
/// together.
pub fn wait_all_tasks_blocked_cushion(cushion: Duration) -> WaitAllBlocked {
    WaitAllBlocked { cushion, id: None, park: Park::new() }
}

/// Future of [`wait_all_tasks_blocked`].
#[derive(Debug)]
#[must_use = "futures do nothing unless awaited"]
pub struct WaitAllBlocked {
    cushion: Duration,
    id: Option<(u64, u64)>,
    park: Park,
}

impl Future for WaitAllBlocked {
    type Output = Result<(), Cancelled>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let core = context::core();
        match self.id {
            // Never registered, or registered in an earlier run (gone with it; its id could
            // name another waiter of this run).
            Some((run, _)) if run != core.id => {
                self.id = None;
                return self.poll(cx);
            }
            None => {
                checkpoint_if_cancelled()?;
                let id = core.fresh_id();
                let waker = cx.waker().clone();
                core.blocked.borrow_mut().push(BlockedWaiter { id, cushion: self.cushion, waker });
                self.id = Some((core.id, id));
            }
            Some((_, id)) => {
                // Gone from the list: the loop woke it (only that, and `remove`, which forgets
                // the id, take an entry out).
                let same =
                    core.blocked.borrow().iter().find(|b| b.id == id).map(|b| b.waker.will_wake(cx.waker()));
                match same {
                    None => {
                        self.id = None;
                        self.park.unpark();
                        return Poll::Ready(Ok(()));
                    }
                    Some(true) => {}
                    Some(false) => {
                        // Cloned with nothing borrowed: a clone is foreign code.
                        let waker = cx.waker().clone();
                        let old = core
                            .blocked
                            .borrow_mut()
                            .iter_mut()
                            .find(|b| b.id == id)
                            .map(|b| std::mem::replace(&mut b.waker, waker));
                        drop(old);
                    }
                }
            }
        }
        match self.park.poll_cancel_on(cx, crate::debug::WaitingOn::Other("wait_all_tasks_blocked")) {
            Poll::Ready(c) => {
                self.remove();
                Poll::Ready(Err(c))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl WaitAllBlocked {
    fn remove(&mut self) {
        if let Some((run, id)) = self.id.take()
            && let Some(core) = context::try_core().filter(|c| c.id == run)
        {
            let mut blocked = core.blocked.borrow_mut();
            let gone = blocked.iter().position(|b| b.id == id).map(|pos| blocked.remove(pos));
            drop(blocked);
            // The waker's destructor is foreign code: after the borrow.
            drop(gone);
        }
    }
}

impl Drop for WaitAllBlocked {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Forces an order on code in different tasks (Trio's `Sequencer`): the code holding the guard
/// for step `i` runs only after the guard of step `i - 1` was dropped.
///
/// ```
/// use std::cell::RefCell;
/// use hatchery::{nursery, testing::{self, Sequencer}, Cancelled};
/// let log = RefCell::new(Vec::new());
/// testing::run(async {
///     let seq = Sequencer::new();
///     nursery(async |n| {
///         n.start_soon(async {
///             let _g = seq.step(1).await?;
///             log.borrow_mut().push("b");
///             Ok(())
///         });
///         n.start_soon(async {
///             let _g = seq.step(0).await?;
///             log.borrow_mut().push("a");
///             Ok(())
///         });
///         Ok::<_, Cancelled>(())
///     }).await.unwrap();
/// });
/// assert_eq!(*log.borrow(), ["a", "b"]);
/// ```
#[derive(Default)]
pub struct Sequencer {
    next: Cell<usize>,
    /// Set when a step was cancelled while waiting: the order can no longer be kept.
    broken: Cell<Option<usize>>,
    claimed: RefCell<std::collections::BTreeSet<usize>>,
    waiting: RefCell<BTreeMap<usize, Waker>>,
}

impl fmt::Debug for Sequencer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sequencer").field("next", &self.next.get()).finish()
    }
}

impl Sequencer {
    /// A sequencer at step 0.
    pub fn new() -> Sequencer {
        Sequencer::default()
    }

    /// Waits for step `i`. A checkpoint, step 0 included (Trio's step 0 is not one, so it
    /// cannot be cancelled there; here a step 0 cancelled on entry breaks the sequence too).
    ///
    /// # Errors
    ///
    /// [`Cancelled`] if the calling code is cancelled while waiting.
    ///
    /// # Panics
    ///
    /// If step `i` was already claimed (each step is used once), or if an earlier step was
    /// cancelled (on entry or while it waited) or its future dropped before it ran (as Trio's,
    /// the sequencer is then broken: a later step could never run, and a panic says why instead
    /// of a hang). A step that is itself cancelled returns [`Cancelled`] rather than panicking,
    /// so that when a whole nursery is cancelled (a sibling failed) its error is what comes
    /// out; the steps before the broken one still run.
    pub async fn step(&self, i: usize) -> Result<SequencerGuard<'_>, Cancelled> {
        assert!(self.claimed.borrow_mut().insert(i), "Sequencer step {i} used twice");
        // Any way out of here but the guard (cancelled on entry or while waiting, or the future
        // dropped, even at its last schedule point) breaks the sequence: the step can never run.
        let claim = Claim { seq: self, i };
        checkpoint_if_cancelled()?;
        let mut park = Park::new();
        std::future::poll_fn(|cx| {
            if self.next.get() == i {
                let old = self.waiting.borrow_mut().remove(&i);
                drop(old);
                park.unpark();
                return Poll::Ready(Ok(()));
            }
            // Cancelled first: a step cancelled with the rest of its nursery (a sibling failed)
            // reports its cancellation, and the sibling's error is what the nursery returns, not
            // a panic about the order.
            if let Poll::Ready(c) = park.poll_cancel_on(cx, crate::debug::WaitingOn::Other("a Sequencer step")) {
                return Poll::Ready(Err(c));
            }
            if let Some(b) = self.broken.get()
                && b < i
            {
                panic!(
                    "Sequencer broken: step {b} was cancelled (or dropped) before it ran, so step {i} can never run"
                );
            }
            // Cloned, and the one replaced dropped, with nothing borrowed (foreign code).
            let waker = cx.waker().clone();
            let old = self.waiting.borrow_mut().insert(i, waker);
            drop(old);
            Poll::Pending
        })
        .await?;
        crate::lowlevel::cancel_shielded_checkpoint().await;
        std::mem::forget(claim);
        Ok(SequencerGuard { seq: self })
    }
}

/// A claimed step that has not handed out its guard; dropped, it breaks the sequencer and wakes
/// every waiting step (to panic with the reason instead of hanging).
struct Claim<'a> {
    seq: &'a Sequencer,
    i: usize,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        let own = self.seq.waiting.borrow_mut().remove(&self.i);
        drop(own);
        // The earliest step that can no longer run: every later one waits for ever.
        if self.seq.broken.get().is_none_or(|b| self.i < b) {
            self.seq.broken.set(Some(self.i));
        }
        let waiting = std::mem::take(&mut *self.seq.waiting.borrow_mut());
        waiting.into_values().for_each(Waker::wake);
    }
}

/// Held while a [`Sequencer`] step runs; dropping it lets the next step go.
#[derive(Debug)]
pub struct SequencerGuard<'a> {
    seq: &'a Sequencer,
}

impl Drop for SequencerGuard<'_> {
    fn drop(&mut self) {
        let next = self.seq.next.get() + 1;
        self.seq.next.set(next);
        let w = self.seq.waiting.borrow_mut().remove(&next);
        if let Some(w) = w {
            w.wake();
        }
    }
}

pin_project! {
    /// Future of [`assert_checkpoints`] and [`assert_no_checkpoints`].
    #[must_use = "futures do nothing unless awaited"]
    #[derive(Debug)]
    pub struct CheckpointCount<F> {
        #[pin]
        fut: F,
        cancel_points: u64,
        schedule_points: u64,
        expect: bool,
    }
}

impl<F: Future> Future for CheckpointCount<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let core = context::core();
        let before = (core.cancel_points.get(), core.schedule_points.get());
        let res = this.fut.poll(cx);
        *this.cancel_points += core.cancel_points.get() - before.0;
        *this.schedule_points += core.schedule_points.get() - before.1;
        if res.is_ready() {
            let (c, s) = (*this.cancel_points, *this.schedule_points);
            if *this.expect {
                assert!(
                    c > 0 && s > 0,
                    "assert_checkpoints: the future passed {c} cancel point(s) and {s} schedule point(s); a checkpoint needs both"
                );
            } else {
                assert!(
                    c == 0 && s == 0,
                    "assert_no_checkpoints: the future passed {c} cancel point(s) and {s} schedule point(s)"
                );
            }
        }
        res
    }
}

/// Runs `future` and panics if it did not pass a checkpoint (a cancel point and a schedule
/// point) of the task polling it. Children of nurseries inside do not count (they are other
/// tasks).
///
/// It checks whatever the output is, an `Err` too. Trio's checks only a call that returns
/// normally: an operation that fails at once (a receive on an ended channel) passes its cancel
/// point but no schedule point, in Trio as here. So wrap only calls expected to succeed.
pub fn assert_checkpoints<F: Future>(future: F) -> CheckpointCount<F> {
    CheckpointCount { fut: future, cancel_points: 0, schedule_points: 0, expect: true }
}

/// Runs `future` and panics if it passed any cancel point or schedule point.
pub fn assert_no_checkpoints<F: Future>(future: F) -> CheckpointCount<F> {
    CheckpointCount { fut: future, cancel_points: 0, schedule_points: 0, expect: false }
}

/// Number of tasks alive in the current run (the root task and every nursery child), for leak
/// checks in tests.
///
/// # Panics
///
/// Outside a run.
pub fn live_tasks() -> usize {
    context::core().live_tasks.get()
}

/// Counts of the run's internal registrations, for leak checks in tests: entered cancel-status
/// nodes (the run's root included), parked waiters, timers and I/O sources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Registrations {
    /// Entered cancel scopes, nursery scopes and per-child nodes, plus the run's root.
    pub cancel_nodes: usize,
    /// Waiters registered for cancellation: operations parked with a waker other than their
    /// task's own (a combinator of another crate polled them). An operation parked with its own
    /// task's waker needs no registration (the task is found through its cancel status), so it
    /// does not count here.
    pub parked: usize,
    /// Timer and deadline entries.
    pub timers: usize,
    /// Registered I/O sources.
    pub io_sources: usize,
    /// Open nursery groups.
    pub nurseries: usize,
    /// Children holding on to a waker between polls because something else keeps a clone of
    /// their waker (a combinator of another crate, a waker user code stashed). The crate's own
    /// primitives (channels, locks, events, sockets, timers) record the task instead of a
    /// waker, so a child parked on one of them holds none.
    pub held_wakers: usize,
}

/// The current [`Registrations`].
///
/// # Panics
///
/// Outside a run.
pub fn registrations() -> Registrations {
    let core = context::core();
    let tree = core.cancel.borrow();
    Registrations {
        cancel_nodes: tree.node_count(),
        parked: tree.waiter_count(),
        timers: core.timers.borrow().len(),
        io_sources: core.reactor.source_count(),
        nurseries: core.sched.borrow().group_count(),
        held_wakers: core.held_wakers.get(),
    }
}
