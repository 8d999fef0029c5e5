//! The runtime: `run`, its [`Builder`], and the event loop.
//!
//! This module orchestrates the others and defines no data structure of its own: `sched` routes
//! wake-ups, `cancel_tree` holds cancel statuses, `deadlines` the timers, `reactor` the I/O
//! sources, `clock` the time.

pub(crate) mod cancel_tree;
pub(crate) mod clock;
pub(crate) mod context;
pub(crate) mod deadlines;
pub(crate) mod reactor;
pub(crate) mod rng;
pub(crate) mod sched;
pub(crate) mod slab;
pub(crate) mod tracker;

use std::collections::VecDeque;
use std::future::Future;
use std::pin::pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::error::{RunError, RunFinished};
use cancel_tree::Wakeups;
use clock::{Clock, Instant, MockClock};
use context::{Core, CoreParts, ParkRef, SchedulePolicy, TimerTarget};
use sched::{Shared, TaskWaker, WakeTarget};

/// The longest the loop sleeps in one go (Trio caps its I/O wait at 24 hours).
const MAX_WAIT: Duration = Duration::from_secs(24 * 3600);

/// While tasks are runnable, poll I/O at least every this many passes (tokio polls its driver
/// every 61 scheduler ticks; a pass here is a whole batch).
const BUSY_IO_INTERVAL: u32 = 16;

/// ... or once this many schedule points (yields and parks) have gone by, so that one pass
/// with a huge batch cannot hold I/O back for long.
const BUSY_IO_WORK: u64 = 256;

/// The default of [`Builder::yield_budget`]: schedule points of completed operations a task
/// may pass in one turn before it yields (tokio's coop budget is 128 operations).
pub const DEFAULT_YIELD_BUDGET: u32 = 64;

/// Options for a run.
///
/// ```
/// use hatchery::{testing::MockClock, Builder, SchedulePolicy};
/// let out = Builder::new()
///     .clock(MockClock::with_autojump(std::time::Duration::ZERO))
///     .seed(7)
///     .schedule(SchedulePolicy::Shuffle)
///     .run(async { 40 + 2 });
/// assert_eq!(out, 42);
/// ```
#[derive(Debug, Clone)]
pub struct Builder {
    clock: Option<MockClock>,
    seed: Option<u64>,
    policy: SchedulePolicy,
    yield_budget: u32,
    track_tasks: bool,
    stuck_after: Option<Duration>,
}

impl Default for Builder {
    fn default() -> Self {
        Builder::new()
    }
}

impl Builder {
    /// The defaults: the system clock, a random seed, [`SchedulePolicy::RandomReverse`].
    pub fn new() -> Builder {
        Builder {
            clock: None,
            seed: None,
            policy: SchedulePolicy::RandomReverse,
            yield_budget: DEFAULT_YIELD_BUDGET,
            // CI runs the suite once more with tracking swapped (`--cfg hatchery_swap_tracking`:
            // `Builder::new` tracks, `testing::builder` does not), so both paths run every test:
            // tracking must not change what a run does.
            track_tasks: cfg!(hatchery_swap_tracking),
            stuck_after: None,
        }
    }

    /// Runs on a virtual clock instead of the system clock.
    pub fn clock(mut self, clock: MockClock) -> Builder {
        self.clock = Some(clock);
        self
    }

    /// Seeds the scheduler's random choices: with a virtual clock and no I/O, the same seed
    /// gives the same order of execution.
    pub fn seed(mut self, seed: u64) -> Builder {
        self.seed = Some(seed);
        self
    }

    /// How the tasks of one batch are ordered.
    pub fn schedule(mut self, policy: SchedulePolicy) -> Builder {
        self.policy = policy;
        self
    }

    /// How many schedule points a task may pass in one turn without yielding, when they come
    /// from operations that completed without blocking (a send into a channel with room, a read
    /// of bytes already there, awaiting a child that has finished). Default
    /// [`DEFAULT_YIELD_BUDGET`].
    ///
    /// Every such operation is still a checkpoint: it checks for cancellation and counts as a
    /// schedule point (`testing::assert_checkpoints` sees it). The runtime just takes the
    /// schedule point only once the task has used its budget, so a loop of operations that
    /// never block still lets every other task run, at most `budget` operations apart, without
    /// paying a trip through the event loop per operation (Trio's #1757). Explicit yields
    /// ([`checkpoint`](crate::lowlevel::checkpoint), `sleep(Duration::ZERO)`) always yield.
    /// `0` makes every schedule point yield, exactly as Trio does.
    ///
    /// ```
    /// use hatchery::Builder;
    /// let n = Builder::new().yield_budget(0).run(async {
    ///     let (tx, rx) = hatchery::channel(4);
    ///     tx.send(1).await.unwrap(); // budget 0: this send yields (with 64 it would not)
    ///     rx.recv().await.unwrap()
    /// });
    /// assert_eq!(n, 1);
    /// ```
    pub fn yield_budget(mut self, budget: u32) -> Builder {
        self.yield_budget = budget;
        self
    }

    /// Keeps a record of every task, for [`debug::task_tree`](crate::debug::task_tree): its
    /// nursery, where it was spawned, when it last ran and what it waits on. Off by default:
    /// it costs a hash-map update per spawn, per poll and per park, and a clock read per poll.
    /// Tracking changes nothing in what the run does: the records it adds wake nothing.
    pub fn track_tasks(mut self, on: bool) -> Builder {
        self.track_tasks = on;
        self
    }

    /// Deadlock detection, for tests: if the run has nothing it can do for `limit` of real
    /// time, it panics with a report instead of waiting for ever. "Nothing it can do": no task
    /// is runnable, no deadline is pending that the clock will reach on its own (a virtual clock
    /// at rate 0 without autojump reaches none), no `wait_all_tasks_blocked` waits, no thread
    /// job is running (it will wake the run when it ends), and nothing arrives from outside the
    /// run (I/O that wakes a task, a wake or a callback from another thread) during the whole
    /// `limit`. The report says how many I/O sources are open (a peer outside the run could
    /// still have written), and, if the run tracks its tasks, prints the
    /// [task tree](crate::debug::task_tree): who waits on what.
    ///
    /// `None`, the default, waits for ever, as Trio does (S8.3): a server idle on `accept` has
    /// nothing to do either. [`testing::builder`](crate::testing::builder) sets
    /// [`testing::STUCK_AFTER`](crate::testing::STUCK_AFTER) (and tracks tasks), so a
    /// deadlocked test fails with a picture of the deadlock instead of hanging CI.
    ///
    /// ```
    /// use std::time::Duration;
    /// use hatchery::{channel, testing};
    ///
    /// let stuck = std::panic::catch_unwind(|| {
    ///     testing::builder().stuck_after(Some(Duration::ZERO)).run(async {
    ///         let (_tx, rx) = channel::<u32>(0);
    ///         rx.recv().await // the sender is alive, and nobody will ever send
    ///     })
    /// });
    /// let report = stuck.unwrap_err();
    /// let report = report.downcast_ref::<String>().unwrap();
    /// assert!(report.starts_with("hatchery: the run is stuck"), "{report}");
    /// assert!(report.contains("waiting on a channel receive"), "{report}");
    /// ```
    pub fn stuck_after(mut self, limit: Option<Duration>) -> Builder {
        self.stuck_after = limit;
        self
    }

    /// Runs `future` to completion on this thread and returns its output.
    ///
    /// # Panics
    ///
    /// If a hatchery run is already active on this thread, or the event loop cannot be created
    /// (see [`try_run`](Builder::try_run) for both as errors); if the run is stuck longer than
    /// [`stuck_after`](Builder::stuck_after) allows; and, re-raised, any panic of the future or
    /// of a task it did not catch.
    #[track_caller]
    pub fn run<F: Future>(self, future: F) -> F::Output {
        match self.try_run(future) {
            Ok(v) => v,
            Err(e) => panic!("{e}"),
        }
    }

    /// Like [`run`](Builder::run), but reports a nested run or an event-loop creation failure
    /// as an error.
    #[track_caller]
    pub fn try_run<F: Future>(self, future: F) -> Result<F::Output, RunError> {
        if context::is_running() {
            return Err(RunError::Nested);
        }
        // Called here, not through a function pointer: that would lose the caller.
        let at = std::panic::Location::caller();
        let poller = polling::Poller::new().map_err(RunError::Poller)?;
        let shared = Shared::new(poller);
        let seed = self.seed.unwrap_or_else(random_seed);
        let clock = match self.clock {
            Some(m) => Clock::Mock(m),
            None => Clock::system(seed),
        };
        let core = Rc::new(Core::new(CoreParts {
            shared: shared.clone(),
            clock,
            seed,
            policy: self.policy,
            yield_budget: self.yield_budget,
            track_tasks: self.track_tasks.then_some(at),
        }));
        let guard = RunGuard { core: core.clone() };
        context::set_current(Some(core.clone()));
        let out = event_loop(&core, future, self.stuck_after);
        drop(guard);
        Ok(out)
    }
}

/// Runs `future` to completion on this thread with the default options and returns its output.
///
/// One runtime per call, with its own event loop; nothing is shared with other runs. The future
/// and the tasks it spawns need not be `Send`.
///
/// ```
/// let n = hatchery::run(async {
///     hatchery::sleep(std::time::Duration::from_millis(1)).await?;
///     Ok::<_, hatchery::Cancelled>(5)
/// });
/// assert_eq!(n.unwrap(), 5);
/// ```
///
/// # Panics
///
/// Inside another run on the same thread (open a nursery instead), if the OS refuses to create
/// the event loop, and, re-raised, any panic that escaped the future.
#[track_caller]
pub fn run<F: Future>(future: F) -> F::Output {
    Builder::new().run(future)
}

fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0x9e37_79b9_7f4a_7c15);
    h.finish()
}

/// Restores the thread's state and finishes the shared part when the run ends, also by panic.
struct RunGuard {
    core: Rc<Core>,
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        // From here `run_sync_soon` says `RunFinished`; what it accepted before still runs, as
        // in Trio, in the run (a callback may read its clock), after its tasks are gone.
        let panic = run_callbacks(self.core.shared.finish());
        context::set_current(None);
        // The first panic leaves the run (S1.10), unless the run is already leaving with one.
        if let Some(p) = panic
            && !std::thread::panicking()
        {
            std::panic::resume_unwind(p);
        }
    }
}

/// Runs `run_sync_soon` callbacks in order. One that panics does not stop the ones after it
/// (S1.10): the first panic is returned, for the run to leave with.
fn run_callbacks(
    callbacks: impl IntoIterator<Item = sched::Callback>,
) -> Option<Box<dyn std::any::Any + Send>> {
    let mut panics = crate::panics::FirstPanic::default();
    for cb in callbacks {
        panics.catch(cb);
    }
    panics.into_inner()
}

/// The event loop. One pass:
/// 1. run the callbacks other threads queued (FIFO), then route their wake-ups;
/// 2. compute how long to wait: zero if the root is scheduled, else until the next deadline;
/// 3. wait for I/O and wake the tasks it concerns (skipped when nothing could arrive);
/// 4. expire due deadlines: wake sleepers, cancel scopes;
/// 5. if nothing is runnable: wake `wait_all_tasks_blocked` waiters, else autojump the
///    virtual clock; with `stuck_after`, report a run that could do nothing for that long;
/// 6. run one batch: poll the root future once; each nursery in it polls the children that
///    were ready when it was reached.
fn event_loop<F: Future>(core: &Rc<Core>, future: F, stuck_after: Option<Duration>) -> F::Output {
    let mut future = pin!(future);
    let root_waker = TaskWaker::waker(&core.shared, WakeTarget::ROOT);
    let mut wakers: Vec<context::Wakeup> = Vec::new();
    let mut wakeups = Wakeups::default();
    let mut remote_wakes: Vec<WakeTarget> = Vec::new();
    let mut callbacks: VecDeque<sched::Callback> = VecDeque::new();
    // When the loop last found nothing runnable (real time), for cushions and autojump.
    let mut idle_since: Option<std::time::Instant> = None;
    // Busy passes, and the schedule-point count, since I/O was last polled (step 3).
    let mut busy_passes: u32 = 0;
    let mut points_at_poll: u64 = 0;
    // With `stuck_after`: since when (real time) the loop has had nothing it could do.
    let mut stuck_since: Option<std::time::Instant> = None;
    loop {
        // 1. Cross-thread entry.
        if core.shared.has_remote() {
            // Something arrived from outside: whatever it does, the run is not stuck.
            stuck_since = None;
            core.shared.take_remote(&mut remote_wakes, &mut callbacks);
            // The callbacks first: a wake-up can run foreign code (a combinator's waker) that
            // panics, and a callback whose caller was told `Ok` must not be dropped unrun.
            let panic = run_callbacks(callbacks.drain(..));
            for t in remote_wakes.drain(..) {
                core.wake(t);
            }
            if let Some(p) = panic {
                std::panic::resume_unwind(p);
            }
        }

        // 2. How long may we wait?
        let runnable = core.sched.borrow().root_scheduled;
        let timeout = if runnable {
            Some(Duration::ZERO)
        } else {
            let next_deadline = core.timers.borrow_mut().next_deadline();
            let blocked = core.blocked.borrow();
            // The idle time starts now if it has not yet: a quiescence waiter or an autojump
            // waits its cushion or threshold from here, once (S8.3, S8.4). Read only when
            // something counts it, so a server's idle pass pays no clock read for it.
            let counts_idle = !blocked.is_empty()
                || matches!(&core.clock, Clock::Mock(m) if m.autojump_threshold().is_some());
            if counts_idle && idle_since.is_none() {
                idle_since = Some(clock::real_now());
            }
            let idle_for = idle_since.map_or(Duration::ZERO, |t| t.elapsed());
            let until_deadline = next_deadline.and_then(|d| core.clock.real_wait_until(d));
            let blocked_cushion = blocked.iter().map(|b| b.cushion.saturating_sub(idle_for)).min();
            // Quiescence waiters take precedence: no jump while one waits (S8.4).
            // Nor while a task waits for work outside the run (a thread job): the jump would
            // race the work's real duration.
            let autojump = match &core.clock {
                Clock::Mock(m)
                    if next_deadline.is_some() && blocked.is_empty() && core.external_work.get() == 0 =>
                {
                    m.autojump_threshold().map(|t| t.saturating_sub(idle_for))
                }
                _ => None,
            };
            drop(blocked);
            [until_deadline, blocked_cushion, autojump].into_iter().flatten().min().map(|d| d.min(MAX_WAIT))
        };
        // Nothing to wait for but the outside world: with `stuck_after`, wait only what is left
        // of it (step 5 reports the run if it runs out). A thread job in flight will wake the
        // run when it ends, as a deadline would: not stuck.
        let timeout = match (timeout, stuck_after) {
            (None, Some(limit)) if core.external_work.get() == 0 => {
                let since = *stuck_since.get_or_insert_with(clock::real_now);
                Some(limit.saturating_sub(since.elapsed()).min(MAX_WAIT))
            }
            (timeout, _) => {
                stuck_since = None;
                timeout
            }
        };

        // 3. I/O. A pass with nothing runnable always polls I/O (even with a zero timeout, as
        // when a virtual clock is about to jump). A busy pass (tasks runnable) polls I/O only
        // when sources are registered and at least `BUSY_IO_INTERVAL` passes or `BUSY_IO_WORK`
        // schedule points have gone by since the last poll: a bounded delay, without a syscall
        // per schedule point (Trio's #1595).
        // Remote wake-ups are seen through the atomic flag in step 1 either way.
        let points = core.schedule_points.get();
        let need_poll = !runnable
            || (core.reactor.source_count() > 0
                && (busy_passes >= BUSY_IO_INTERVAL || points.wrapping_sub(points_at_poll) >= BUSY_IO_WORK));
        busy_passes += 1;
        if need_poll {
            busy_passes = 0;
            points_at_poll = points;
            if let Err(e) = core.reactor.wait(timeout, &mut wakers) {
                panic!("hatchery internal error: waiting for I/O failed: {e}");
            }
            for w in wakers.drain(..) {
                core.wake_up(w);
            }
        }

        // 4. Deadlines.
        expire_deadlines(core, &mut wakeups);

        // 5. Idle: quiescence waiters first, then autojump.
        let mut scheduled = core.sched.borrow().root_scheduled;
        if scheduled || core.shared.has_remote() {
            idle_since = None;
        } else if let Some(since) = idle_since {
            // Set by step 2 when a quiescence waiter or an autojump counts idle time; with
            // neither, there is nothing to do here and no clock to read.
            let idle_for = since.elapsed();
            if !wake_blocked_waiters(core, idle_for)
                && core.external_work.get() == 0
                && let Clock::Mock(m) = &core.clock
                && m.autojump_threshold().is_some_and(|t| t <= idle_for)
            {
                if let Some(d) = core.timers.borrow_mut().next_deadline() {
                    m.jump_to(d);
                }
                expire_deadlines(core, &mut wakeups);
                // As Trio: after a jump the next one waits a whole threshold again, even if
                // this one woke nothing (a deadline above a shielded sleep).
                idle_since = None;
            }
            scheduled = core.sched.borrow().root_scheduled;
            if scheduled {
                // What this woke runs; the next idle stretch is measured afresh.
                idle_since = None;
            }
        }

        if !scheduled
            && let (Some(since), Some(limit)) = (stuck_since, stuck_after)
            && !core.shared.has_remote()
            && since.elapsed() >= limit
        {
            report_stuck(core, limit);
        }

        // 6. One batch.
        if scheduled {
            stuck_since = None;
            core.sched.borrow_mut().root_scheduled = false;
            let (data, vtable) = context::waker_id(&root_waker);
            core.entity.set((WakeTarget::ROOT, data, vtable));
            let mut cx = Context::from_waker(&root_waker);
            core.begin_turn();
            if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
                return out;
            }
        }
    }
}

/// Panics with a report of a run that had nothing it could do for `limit` of real time.
#[cold]
#[inline(never)]
fn report_stuck(core: &Core, limit: Duration) -> ! {
    let tree = match &core.tracker {
        Some(t) => {
            // Between passes no task runs.
            let tree = t.borrow().snapshot(
                core.now(),
                WakeTarget::NONE,
                &core.sched.borrow(),
                &core.cancel.borrow(),
            );
            tree.to_string()
        }
        None => {
            "(a run built with `Builder::track_tasks(true)` would list every task and what it waits on)\n"
                .to_string()
        }
    };
    panic!(
        "hatchery: the run is stuck: for {limit:?} of real time no task could run, no deadline was pending \
         that the clock would reach, no thread job was running, and nothing arrived from outside the run; {} I/O \
         source(s) open. A deadlock? (`Builder::stuck_after` sets this limit.)\n{tree}",
        core.reactor.source_count(),
    );
}

fn expire_deadlines(core: &Core, wakeups: &mut Wakeups) {
    // No deadline, no clock read: this runs once per pass.
    let Some(next) = core.timers.borrow_mut().next_deadline() else { return };
    let now = core.now();
    if next > now {
        return;
    }
    {
        let mut timers = core.timers.borrow_mut();
        while let Some(key) = timers.pop_expired(now) {
            // A popped sleep entry is disarmed: that is how its timer learns that it fired.
            match timers.get(key).map(|t| t.get()) {
                Some(TimerTarget::Sleep(ParkRef::Task(t))) => wakeups.tasks.push(t),
                Some(TimerTarget::Sleep(ParkRef::Waiter(w))) => {
                    wakeups.wakers.extend(core.cancel.borrow().waker_of(w).cloned())
                }
                // Cancelling only touches the cancel tree, not the timers, so it can happen here.
                Some(TimerTarget::Scope(node)) => {
                    crate::cancel::cancel_node(core, node, crate::CancelSource::Deadline, None, wakeups)
                }
                None => {}
            }
        }
    }
    wakeups.wake(core);
}

/// Wakes the `wait_all_tasks_blocked` waiters whose cushion the idle time has reached (the
/// smallest cushion first, equal cushions together). Returns true if any are waiting: they take
/// precedence over autojump (S8.4).
fn wake_blocked_waiters(core: &Core, waited: Duration) -> bool {
    let mut blocked = core.blocked.borrow_mut();
    let Some(min) = blocked.iter().map(|b| b.cushion).min() else { return false };
    let mut to_wake = Vec::new();
    if min <= waited {
        // Woken waiters leave the list at once (as in Trio): one that is never polled again (a
        // future polled by hand, or with a waker that does nothing) must not count as waiting,
        // or the loop would spin with a zero timeout and the clock would never jump. Its future
        // finds itself gone from the list, which means woken.
        let keep;
        (to_wake, keep) = std::mem::take(&mut *blocked).into_iter().partition(|b| b.cushion == min);
        *blocked = keep;
    }
    drop(blocked);
    // Foreign code, with nothing borrowed; one that panics does not keep the others asleep.
    crate::panics::FirstPanic::each(to_wake, |b| b.waker.wake());
    true
}

/// A handle that other threads use to reach a run: it queues closures that the run's thread
/// executes between batches, in FIFO order.
///
/// Get one with [`lowlevel::run_handle`](crate::lowlevel::run_handle). It is `Send + Sync` and
/// cheap to clone. Once the run has finished, [`run_sync_soon`](RunHandle::run_sync_soon) fails
/// with [`RunFinished`] and hands the closure back inside the error.
///
/// ```
/// use std::sync::mpsc;
/// let (tx, rx) = mpsc::channel();
/// hatchery::run(async {
///     let handle = hatchery::lowlevel::run_handle();
///     std::thread::spawn(move || handle.run_sync_soon(move || tx.send(1).unwrap()).unwrap())
///         .join()
///         .unwrap();
///     hatchery::testing::wait_all_tasks_blocked().await.unwrap();
/// });
/// assert_eq!(rx.recv().unwrap(), 1);
/// ```
#[derive(Clone)]
pub struct RunHandle {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for RunHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunHandle").finish_non_exhaustive()
    }
}

/// The closure given to [`RunHandle::run_sync_soon`] after the run finished.
pub struct Rejected(pub Box<dyn FnOnce() + Send + 'static>);

impl std::fmt::Debug for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Rejected(..)")
    }
}

impl RunHandle {
    /// Queues `f` to run on the run's thread, between batches, after everything queued before.
    ///
    /// # Errors
    ///
    /// [`RunFinished`] (with the closure, in [`Rejected`]) if the run has ended.
    pub fn run_sync_soon(&self, f: impl FnOnce() + Send + 'static) -> Result<(), (RunFinished, Rejected)> {
        self.shared.push_callback(Box::new(f)).map_err(|cb| (RunFinished, Rejected(cb)))
    }
}

pub(crate) fn now() -> Instant {
    context::core().now()
}

/// Records that a task of the current run waits for work outside the run (a `to_thread` job)
/// that will wake it: until the matching [`external_work_finished`], a virtual clock does not
/// autojump. Returns the run's id, to pass back.
///
/// # Panics
///
/// Outside a run.
pub(crate) fn external_work_started() -> u64 {
    let core = context::core();
    core.external_work.set(core.external_work.get() + 1);
    core.id
}

/// Ends one [`external_work_started`] of run `run_id`; nothing if that run is not the one on
/// this thread (it has ended).
pub(crate) fn external_work_finished(run_id: u64) {
    if let Some(core) = context::try_core().filter(|c| c.id == run_id) {
        core.external_work.set(core.external_work.get() - 1);
    }
}
