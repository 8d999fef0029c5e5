//! The state of one run and the crate's only thread-local: the run active on this thread.
//!
//! Ground rules:
//! - [`Core`] holds everything a run owns. Its parts sit in separate `RefCell`s, and no borrow
//!   of any of them is held while user code runs (polling a future, calling a waker, dropping a
//!   user value): collect first, release, then act.
//! - Only `runtime::run` installs or removes the current core.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::task::Waker;

use super::cancel_tree::{CancelTree, NIL, ScopeRef, ScopeState};
use super::clock::{Clock, Instant};
use super::deadlines::Deadlines;
use super::reactor::Reactor;
use super::sched::{Sched, Shared, WakeTarget};

/// How a parked operation is woken: the task it belongs to (it was polled with that task's own
/// waker), or the waker of its registration in the cancel tree (any other waker).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ParkRef {
    Task(WakeTarget),
    Waiter(u32),
}

/// A hatchery task of one run, named without a waker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TaskRef {
    /// Low 32 bits of the run's id (as in `lowlevel::Park`): a record left over from an earlier
    /// run on this thread (a leaked future) wakes nothing in a later one.
    run: u32,
    target: WakeTarget,
}

/// Whom a primitive or the reactor wakes when it completes a parked operation.
///
/// An operation polled by a hatchery task with that task's own waker (nearly always) is
/// recorded by the task's scheduler target, the way cancellation records owners (DESIGN.md
/// 4.2): parking clones no waker, the task's lent waker goes back to the pool after the poll,
/// and the wake goes straight into the scheduler. Any other waker (a foreign combinator's) is
/// cloned and kept. Whatever records one is not `Sync` (a channel, a parking lot, a reactor
/// source) and is borrowed by the future waiting on it, so the wake happens on the thread of
/// the run that parked (a `Mutex` may move to another thread, but only once nothing waits on
/// it); a wake after that run ended (the record of a leaked future) does nothing.
#[derive(Debug)]
pub(crate) enum Wakeup {
    Task(TaskRef),
    Waker(Waker),
}

impl Wakeup {
    /// Whether it names a task of the run (made without cloning a waker: no foreign code ran).
    #[inline]
    pub(crate) fn is_task(&self) -> bool {
        matches!(self, Wakeup::Task(_))
    }

    /// Who to wake for the poll that has `waker`, for paths without the run in hand; outside a
    /// run, the waker.
    pub(crate) fn new(waker: &Waker) -> Wakeup {
        Wakeup::for_poll(try_core().and_then(|core| core.task_of(waker)), waker)
    }

    /// The wake-up of a poll with `waker`, made by `task` if it is that task's own.
    #[inline]
    fn for_poll(task: Option<TaskRef>, waker: &Waker) -> Wakeup {
        match task {
            Some(task) => Wakeup::Task(task),
            None => Wakeup::Waker(waker.clone()),
        }
    }

    /// Makes this the wake-up of a poll with `waker` (`task`: as in [`Wakeup::for_poll`]) where
    /// that runs no foreign code: the wake-up already wakes the same, or the poll's waker is its
    /// task's own (the waker replaced comes back, to be dropped after the borrow). `Err(NeedsClone)`: a foreign
    /// waker must be cloned, which is foreign code, so the caller does it with nothing borrowed
    /// (`lowlevel::Here::refresh`).
    #[inline]
    fn try_refresh_for(&mut self, task: Option<TaskRef>, waker: &Waker) -> Result<Option<Waker>, NeedsClone> {
        match (task, &*self) {
            (Some(task), Wakeup::Task(old)) if *old == task => Ok(None),
            (None, Wakeup::Waker(old)) if old.will_wake(waker) => Ok(None),
            (Some(task), _) => Ok(self.replace(Wakeup::Task(task))),
            (None, _) => Err(NeedsClone),
        }
    }

    /// Whether it wakes the same as `other` (the same task, or wakers that `will_wake` alike).
    #[inline]
    pub(crate) fn wakes_same(&self, other: &Wakeup) -> bool {
        match (self, other) {
            (Wakeup::Task(a), Wakeup::Task(b)) => a == b,
            (Wakeup::Waker(a), Wakeup::Waker(b)) => a.will_wake(b),
            _ => false,
        }
    }

    /// Makes `fresh` the wake-up; returns the waker replaced, to be dropped once no `RefCell`
    /// is borrowed.
    #[must_use = "drop the replaced waker after the borrow ends"]
    #[inline]
    pub(crate) fn replace(&mut self, fresh: Wakeup) -> Option<Waker> {
        match std::mem::replace(self, fresh) {
            Wakeup::Waker(old) => Some(old),
            Wakeup::Task(_) => None,
        }
    }

    /// Wakes it, looking up the run if it names a task (for paths without the run in hand:
    /// drops, closes, `try_` calls).
    pub(crate) fn wake(self) {
        match self {
            Wakeup::Task(t) => {
                if let Some(core) = try_core() {
                    core.wake_up(Wakeup::Task(t));
                }
            }
            Wakeup::Waker(w) => w.wake(),
        }
    }
}

/// A wake-up cannot be brought up to date without cloning a foreign waker (see
/// [`Wakeup::try_refresh_for`]).
#[derive(Debug)]
pub(crate) struct NeedsClone;

/// What a deadline entry stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TimerTarget {
    /// A sleeping task, woken as its parking registration says. Whether the deadline passed is
    /// the entry's own state (`Deadlines::armed`): a sleep's entry is never disarmed, only
    /// popped when due or removed.
    Sleep(ParkRef),
    /// An entered cancel scope (its tree node), cancelled when the deadline passes.
    Scope(u32),
}

/// A [`TimerTarget`] in 12 bytes, so that a deadline entry is 24 (a sleeping task has one). The
/// kind is told by a group value that no real group reaches (`Sched::open_group` checks).
#[derive(Debug, Clone, Copy)]
pub(crate) struct PackedTarget([u32; 3]);

/// [`PackedTarget`]'s first word for a waiter (then the third word is its key).
const PACKED_WAITER: u32 = NIL - 1;
/// [`PackedTarget`]'s first word for a scope (then the third word is its node).
const PACKED_SCOPE: u32 = NIL - 2;
/// The first group key that [`PackedTarget`] cannot tell from its markers.
pub(crate) const FIRST_RESERVED_GROUP: u32 = PACKED_SCOPE;

impl From<TimerTarget> for PackedTarget {
    #[inline]
    fn from(t: TimerTarget) -> PackedTarget {
        PackedTarget(match t {
            TimerTarget::Sleep(ParkRef::Task(t)) => [t.group, t.generation, t.index],
            TimerTarget::Sleep(ParkRef::Waiter(w)) => [PACKED_WAITER, 0, w],
            TimerTarget::Scope(node) => [PACKED_SCOPE, 0, node],
        })
    }
}

impl PackedTarget {
    #[inline]
    pub(crate) fn get(self) -> TimerTarget {
        match self.0 {
            [PACKED_WAITER, _, w] => TimerTarget::Sleep(ParkRef::Waiter(w)),
            [PACKED_SCOPE, _, node] => TimerTarget::Scope(node),
            [group, generation, index] => {
                TimerTarget::Sleep(ParkRef::Task(WakeTarget { group, generation, index }))
            }
        }
    }
}

/// Order in which a nursery polls the children of one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchedulePolicy {
    /// In the order they were woken. Deterministic, and lets code come to rely on an order no
    /// one promised; meant for benchmarks and debugging.
    Fifo,
    /// Reversed with probability one half on each batch (Trio's default): cheap, keeps
    /// locality, and breaks code that relies on wake order.
    RandomReverse,
    /// A full seeded shuffle of every batch: the strongest check that nothing relies on order.
    Shuffle,
}

pub(crate) struct BlockedWaiter {
    pub(crate) id: u64,
    pub(crate) cushion: std::time::Duration,
    pub(crate) waker: Waker,
}

/// The identity of a waker: data address and vtable address.
pub(crate) fn waker_id(w: &Waker) -> (usize, usize) {
    (w.data() as usize, w.vtable() as *const std::task::RawWakerVTable as usize)
}

pub(crate) struct Core {
    pub(crate) id: u64,
    pub(crate) shared: Arc<Shared>,
    pub(crate) sched: RefCell<Sched>,
    pub(crate) cancel: RefCell<CancelTree>,
    pub(crate) timers: RefCell<Deadlines<PackedTarget>>,
    pub(crate) reactor: Reactor,
    pub(crate) clock: Clock,
    /// The cancel-status node of the code being polled right now.
    pub(crate) current_status: Cell<u32>,
    /// True while a child that may need a node of its own (it has a `JoinHandle`) runs without
    /// one: `current_status` is then its nursery's node, and the child's node is created under it
    /// the first time the child needs a precise status ([`Core::registration_status`]).
    pub(crate) lazy_status: Cell<bool>,
    /// The node [`Core::registration_status`] created during the current child poll, if any.
    pub(crate) materialized: Cell<u32>,
    /// The origin shared by children's nodes until one is cancelled on its own.
    pub(crate) inert: Rc<ScopeState>,
    /// The task being polled, and the address and vtable of its waker: lets a nursery recognise
    /// that its parent waker is a hatchery task of this run, and route wake-ups without it.
    pub(crate) entity: Cell<(WakeTarget, usize, usize)>,
    /// Checkpoint counters of the task being polled (saved and restored around each child).
    pub(crate) cancel_points: Cell<u64>,
    pub(crate) schedule_points: Cell<u64>,
    /// Schedule points the task being polled may still pass without yielding (see
    /// [`Core::pass_schedule_point`]); refilled to `yield_budget` at the start of each task's
    /// turn, saved and restored around nested turns.
    pub(crate) budget: Cell<u32>,
    /// The turn's one poll-style operation beyond the budget has passed
    /// ([`Core::spend_budget`]); cleared at the start of each turn (a nested turn clears its
    /// parent's too, which costs that parent at most one more operation before it yields).
    pub(crate) free_pass_used: Cell<bool>,
    pub(crate) yield_budget: u32,
    rng: Cell<u64>,
    pub(crate) policy: SchedulePolicy,
    pub(crate) blocked: RefCell<Vec<BlockedWaiter>>,
    pub(crate) wakers: RefCell<super::sched::WakerPool>,
    pub(crate) next_id: Cell<u64>,
    /// Tasks alive in this run (root and nursery children), for introspection and leak tests.
    pub(crate) live_tasks: Cell<usize>,
    /// Children holding on to their lent waker between polls, because something keeps a clone
    /// of it (`testing::Registrations::held_wakers`).
    pub(crate) held_wakers: Cell<usize>,
    /// Work outside the run that a task is waiting for (a `to_thread` job): while it is not zero,
    /// a virtual clock does not autojump (DESIGN §6).
    pub(crate) external_work: Cell<usize>,
    /// The run's default limiter for `to_thread`, created on first use
    /// ([`Core::default_thread_limiter`]) and dropped with the run (DESIGN §7c).
    thread_limiter: std::cell::OnceCell<Rc<crate::sync::CapacityLimiter>>,
    /// The task-tree dump's records (`Builder::track_tasks`); `None`, the default, costs each
    /// hook one branch.
    pub(crate) tracker: Option<RefCell<super::tracker::Tracker>>,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core").field("id", &self.id).finish_non_exhaustive()
    }
}

pub(crate) struct CoreParts {
    pub(crate) shared: Arc<Shared>,
    pub(crate) clock: Clock,
    pub(crate) seed: u64,
    pub(crate) policy: SchedulePolicy,
    pub(crate) yield_budget: u32,
    /// With task tracking: the call that started the run.
    pub(crate) track_tasks: Option<&'static std::panic::Location<'static>>,
}

static NEXT_RUN_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl Core {
    pub(crate) fn new(parts: CoreParts) -> Core {
        let mut cancel = CancelTree::new();
        // The root scope has no handle, so nothing reads its phase.
        let root_status = cancel.enter(NIL, ScopeRef::Own(ScopeState::new()));
        Core {
            id: NEXT_RUN_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            reactor: Reactor::new(parts.shared.clone()),
            shared: parts.shared,
            sched: RefCell::new(Sched::new()),
            cancel: RefCell::new(cancel),
            timers: RefCell::new(Deadlines::new()),
            clock: parts.clock,
            current_status: Cell::new(root_status),
            lazy_status: Cell::new(false),
            materialized: Cell::new(NIL),
            inert: Rc::new(ScopeState::new()),
            entity: Cell::new((WakeTarget::ROOT, 0, 0)),
            cancel_points: Cell::new(0),
            schedule_points: Cell::new(0),
            budget: Cell::new(parts.yield_budget),
            free_pass_used: Cell::new(false),
            yield_budget: parts.yield_budget,
            rng: Cell::new(parts.seed | 1),
            policy: parts.policy,
            blocked: RefCell::new(Vec::new()),
            wakers: RefCell::new(Default::default()),
            next_id: Cell::new(1),
            live_tasks: Cell::new(1),
            held_wakers: Cell::new(0),
            external_work: Cell::new(0),
            thread_limiter: std::cell::OnceCell::new(),
            tracker: parts.track_tasks.map(|at| RefCell::new(super::tracker::Tracker::new(at))),
        }
    }

    pub(crate) fn now(&self) -> Instant {
        self.clock.now()
    }

    pub(crate) fn fresh_id(&self) -> u64 {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        id
    }

    /// The run's generator (xorshift64*): small, fast, and good enough to order a batch.
    pub(crate) fn random(&self) -> u64 {
        let mut x = self.rng.get();
        let out = super::rng::xorshift64star(&mut x);
        self.rng.set(x);
        out
    }

    /// Puts a batch in the order the schedule policy asks for.
    pub(crate) fn order_batch(&self, batch: &mut [u32]) {
        if batch.len() < 2 {
            return;
        }
        match self.policy {
            SchedulePolicy::Fifo => {}
            SchedulePolicy::RandomReverse => {
                if self.random() & 1 == 1 {
                    batch.reverse();
                }
            }
            SchedulePolicy::Shuffle => {
                for i in (1..batch.len()).rev() {
                    let j = (self.random() % (i as u64 + 1)) as usize;
                    batch.swap(i, j);
                }
            }
        }
    }

    /// The status a registration (a parked operation, a new scope) must use: creates the
    /// current child's own node first if it is still lazy.
    pub(crate) fn registration_status(&self) -> u32 {
        if self.lazy_status.get() {
            let parent = self.current_status.get();
            let node = self.cancel.borrow_mut().enter(parent, ScopeRef::Shared(self.inert.clone()));
            self.current_status.set(node);
            self.lazy_status.set(false);
            self.materialized.set(node);
        }
        self.current_status.get()
    }

    /// Counts a schedule point of an operation that completed without blocking (S2.3), and
    /// says whether the task may go on without yielding: true while the turn's budget lasts
    /// (DESIGN §3.4). The point is counted either way: it is a schedule point the runtime chose
    /// not to take.
    pub(crate) fn pass_schedule_point(&self) -> bool {
        self.schedule_points.set(self.schedule_points.get() + 1);
        let left = self.budget.get();
        if left > 0 {
            self.budget.set(left - 1);
            true
        } else {
            false
        }
    }

    /// Spends one unit of the turn's yield budget without counting a schedule point (for a
    /// poll-style operation, which is not a checkpoint): false once the budget is spent. One
    /// such operation a turn passes even with none left (the budget may be 0): a poll-style
    /// operation keeps no state across polls, so with nothing to spend it would never run.
    pub(crate) fn spend_budget(&self) -> bool {
        let left = self.budget.get();
        if left > 0 {
            self.budget.set(left - 1);
            true
        } else {
            // The turn's free pass: taken by the first operation that finds nothing to spend.
            !self.free_pass_used.replace(true)
        }
    }

    /// Starts a task's turn: a full budget. Returns the budget to restore when the turn ends
    /// (the turn of the task that polls this one goes on after it).
    pub(crate) fn begin_turn(&self) -> u32 {
        self.free_pass_used.set(false);
        self.budget.replace(self.yield_budget)
    }

    /// Wakes the task being polled, whose `Context` holds `waker`: straight into the scheduler
    /// when `waker` is that task's own (no thread-local lookup), else through the waker (a
    /// foreign combinator's).
    pub(crate) fn wake_self(&self, waker: &Waker) {
        let (target, data, vtable) = self.entity.get();
        if waker_id(waker) == (data, vtable) {
            self.wake(target);
        } else {
            waker.wake_by_ref();
        }
    }

    /// The run's default limiter for `to_thread`: the one `make` creates on the first call,
    /// the same one for the rest of the run.
    pub(crate) fn default_thread_limiter(
        &self,
        make: impl FnOnce() -> crate::sync::CapacityLimiter,
    ) -> Rc<crate::sync::CapacityLimiter> {
        self.thread_limiter.get_or_init(|| Rc::new(make())).clone()
    }

    /// The task being polled, if `waker` is its own.
    #[inline]
    fn task_of(&self, waker: &Waker) -> Option<TaskRef> {
        let (target, data, vtable) = self.entity.get();
        (waker_id(waker) == (data, vtable)).then_some(TaskRef { run: self.id as u32, target })
    }

    /// Who to wake, later, for the poll that has `waker` (see [`Wakeup`]).
    #[inline]
    pub(crate) fn wakeup(&self, waker: &Waker) -> Wakeup {
        Wakeup::for_poll(self.task_of(waker), waker)
    }

    /// Makes `slot` wake the poll that has `waker` where that runs no foreign code (see
    /// [`Wakeup::try_refresh_for`]).
    #[inline]
    pub(crate) fn try_refresh_wakeup(
        &self,
        slot: &mut Wakeup,
        waker: &Waker,
    ) -> Result<Option<Waker>, NeedsClone> {
        slot.try_refresh_for(self.task_of(waker), waker)
    }

    /// The wake-up for the poll that has `waker` if it is the polled task's own (made without
    /// foreign code); `None` for any other waker, whose clone the caller makes with nothing
    /// borrowed.
    #[inline]
    pub(crate) fn task_wakeup(&self, waker: &Waker) -> Option<Wakeup> {
        self.task_of(waker).map(Wakeup::Task)
    }

    /// Wakes `w`: a task of this run straight into the scheduler; a task of another run
    /// (a leaked record) not at all.
    #[inline]
    pub(crate) fn wake_up(&self, w: Wakeup) {
        match w {
            Wakeup::Task(t) if t.run == self.id as u32 => self.wake(t.target),
            Wakeup::Task(_) => {}
            Wakeup::Waker(w) => w.wake(),
        }
    }

    /// Routes a wake-up that happened on this thread.
    pub(crate) fn wake(&self, t: WakeTarget) {
        let parent = self.sched.borrow_mut().wake(t);
        if let Some(w) = parent {
            wake_foreign_parent(w);
        }
    }
}

thread_local! {
    static CURRENT: RefCell<Option<Rc<Core>>> = const { RefCell::new(None) };
    /// The id of the run in `CURRENT`, 0 when there is none (run ids start at 1): a check
    /// that a run is still the current one reads a word, not the `RefCell`.
    static CURRENT_ID: Cell<u64> = const { Cell::new(0) };
}

/// The core of the run on this thread.
///
/// # Panics
///
/// Outside a run, with a message that says what to do.
pub(crate) fn core() -> Rc<Core> {
    try_core().unwrap_or_else(|| outside_a_run())
}

/// Checks that `core` is the run on this thread (one thread-local word), for code that holds its
/// run instead of looking it up: a nursery, a join handle.
///
/// # Panics
///
/// Outside a run, or in a run other than `core`'s: a future that started in one run was carried
/// into a later one, where it could only mix the two runs' state or wait forever.
#[inline]
pub(crate) fn assert_current(core: &Core) {
    if current_run_id() != core.id {
        polled_in_another_run();
    }
}

#[cold]
#[inline(never)]
fn polled_in_another_run() -> ! {
    panic!(
        "a hatchery future was polled in a run other than the one it started in (a nursery and its handles belong to one run)"
    )
}

/// The id of the run on this thread, without taking a reference to it.
///
/// # Panics
///
/// Outside a run, as [`core()`].
#[inline]
pub(crate) fn current_run_id() -> u64 {
    let id = CURRENT_ID.with(Cell::get);
    if id == 0 {
        outside_a_run();
    }
    id
}

#[cold]
fn outside_a_run() -> ! {
    panic!(
        "this hatchery operation was used outside a hatchery run; \
         call it from a future driven by hatchery::run"
    )
}

/// The run active on this thread, if any. `None` too while the thread's locals are being
/// destroyed (a waker or a handle used from another thread-local's destructor).
pub(crate) fn try_core() -> Option<Rc<Core>> {
    CURRENT.try_with(|c| c.try_borrow().ok().and_then(|c| c.clone())).ok().flatten()
}

pub(crate) fn is_running() -> bool {
    CURRENT.try_with(|c| c.try_borrow().map(|c| c.is_some()).unwrap_or(true)).unwrap_or(false)
}

pub(crate) fn set_current(core: Option<Rc<Core>>) -> Option<Rc<Core>> {
    CURRENT_ID.with(|id| id.set(core.as_ref().map_or(0, |c| c.id)));
    CURRENT.with(|c| std::mem::replace(&mut *c.borrow_mut(), core))
}

/// Delivers a wake on this thread if `shared` belongs to the run active here.
pub(crate) fn wake_local(shared: &Arc<Shared>, t: WakeTarget) -> bool {
    // `try_with`: a wake from another thread-local's destructor, after this one's, must not
    // panic (a panic there aborts); no run is active then, and the wake goes the remote way.
    let core = CURRENT
        .try_with(|c| match c.try_borrow() {
            Ok(c) => c.as_ref().filter(|core| Arc::ptr_eq(&core.shared, shared)).cloned(),
            Err(_) => None,
        })
        .ok()
        .flatten();
    match core {
        Some(core) => {
            core.wake(t);
            true
        }
        None => false,
    }
}

/// Wakes a nursery's foreign parent (a combinator polls it), out of the hot path of a wake.
#[cold]
#[inline(never)]
fn wake_foreign_parent(w: Rc<Waker>) {
    w.wake_by_ref();
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn target() -> impl Strategy<Value = TimerTarget> {
        let group = prop_oneof![Just(NIL), 0..FIRST_RESERVED_GROUP];
        prop_oneof![
            (group, any::<u32>(), any::<u32>()).prop_map(|(group, generation, index)| {
                TimerTarget::Sleep(ParkRef::Task(WakeTarget { group, generation, index }))
            }),
            any::<u32>().prop_map(|w| TimerTarget::Sleep(ParkRef::Waiter(w))),
            any::<u32>().prop_map(TimerTarget::Scope),
        ]
    }

    proptest! {
        /// Packing loses nothing: every target a run can make comes back out as it went in.
        #[test]
        fn prop_packed_target_round_trips(t in target()) {
            prop_assert_eq!(PackedTarget::from(t).get(), t);
        }
    }

    #[test]
    fn a_sleeping_tasks_timer_records_keep_their_sizes() {
        assert_eq!(std::mem::size_of::<PackedTarget>(), 12);
        assert_eq!(std::mem::size_of::<crate::lowlevel::Timer>(), 16);
        assert_eq!(std::mem::size_of::<crate::time::Sleep>(), 32);
        assert_eq!(super::super::deadlines::slab_entry_size::<PackedTarget>(), 16);
    }
}
