//! Wake routing: how a wake-up finds its way from a waker to the task that must be polled.
//!
//! hatchery polls child tasks from inside their nursery's future (that is what lets them borrow;
//! see `nursery.rs`). So the run loop polls one root future per pass, and each nursery polls the
//! children that were woken. Each nursery has a *group* record here: the indices of its ready
//! children (index [`BODY`] is the nursery's body), a flag per child saying it is already queued,
//! and the waker that the nursery was last polled with (its *parent waker*).
//!
//! Ground rules:
//! - A wake marks the child queued and pushes it on its group's ready list, once; if the group has
//!   not yet told its parent since its last poll, it wakes the parent waker. That recursion ends at
//!   the root waker, which sets [`Sched::root_scheduled`], or at a foreign waker (a combinator of
//!   another crate), which is how nurseries compose with `join!`, `select!` and the like.
//! - A nursery takes its ready list when it is polled ([`Sched::begin_poll`]) and polls exactly
//!   those children: a child woken while the list is being worked through waits for the next
//!   pass. That is Trio's batch rule, applied at every level of the tree.
//! - A wake of a whole group ([`WakeTarget::group_of`]; a cancellation reaching a nursery's
//!   scope) only sets a flag: the nursery queues every live task of the group when it next takes
//!   its batch, so a cancellation costs O(1) here however many children are parked.
//! - Wakers are `Send + Sync`. A wake on the runtime's thread goes straight to [`Sched`]; a wake
//!   from another thread is queued in [`Shared`] and the poller is notified.
//! - No waker is ever called while `Sched` is borrowed.

use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering, fence};
use std::sync::{Arc, Mutex};
use std::task::{Wake, Waker};

use super::cancel_tree::NIL;
use super::context;
use super::slab::Slab;

/// Index of the nursery body in its group.
pub(crate) const BODY: u32 = 0;

/// Where a wake-up goes: the root (`group == NIL`), a child of a nursery group, or every task of
/// a group (`index == ALL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WakeTarget {
    pub(crate) group: u32,
    pub(crate) generation: u32,
    pub(crate) index: u32,
}

/// The `index` of a target that names every task of its group.
const ALL: u32 = NIL;

impl WakeTarget {
    pub(crate) const ROOT: WakeTarget = WakeTarget { group: NIL, generation: 0, index: 0 };
    /// No task at all (an unowned cancel-tree node).
    pub(crate) const NONE: WakeTarget = WakeTarget { group: NIL, generation: NIL, index: NIL };

    /// The target that wakes every task of the group `t` belongs to.
    pub(crate) const fn group_of(t: WakeTarget) -> WakeTarget {
        WakeTarget { group: t.group, generation: t.generation, index: ALL }
    }

    /// Whether this names a whole group.
    pub(crate) const fn is_group(self) -> bool {
        self.index == ALL && self.group != NIL
    }

    /// Whether the task `t` is one of the tasks this target names.
    pub(crate) fn covers(self, t: WakeTarget) -> bool {
        self == t || (self.is_group() && self.group == t.group && self.generation == t.generation)
    }
}

pub(crate) type Callback = Box<dyn FnOnce() + Send + 'static>;

#[derive(Default)]
struct Remote {
    wakes: Vec<WakeTarget>,
    callbacks: VecDeque<Callback>,
    finished: bool,
}

/// The part of a run that other threads may touch.
pub(crate) struct Shared {
    pub(crate) poller: polling::Poller,
    remote: Mutex<Remote>,
    has_remote: AtomicBool,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

impl Shared {
    pub(crate) fn new(poller: polling::Poller) -> Arc<Shared> {
        Arc::new(Shared { poller, remote: Mutex::new(Remote::default()), has_remote: AtomicBool::new(false) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Remote> {
        // A panic while holding this lock cannot leave `Remote` inconsistent (pushes only).
        self.remote.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push_remote_wake(&self, t: WakeTarget) {
        let mut r = self.lock();
        if r.finished {
            return;
        }
        r.wakes.push(t);
        drop(r);
        self.has_remote.store(true, Ordering::Release);
        // Notification failures only happen if the poller is gone; nothing left to wake then.
        let _ = self.poller.notify();
    }

    /// The run has ended (it accepts no more callbacks or wakes).
    pub(crate) fn is_finished(&self) -> bool {
        self.lock().finished
    }

    pub(crate) fn push_callback(&self, cb: Callback) -> Result<(), Callback> {
        let mut r = self.lock();
        if r.finished {
            return Err(cb);
        }
        r.callbacks.push_back(cb);
        drop(r);
        self.has_remote.store(true, Ordering::Release);
        let _ = self.poller.notify();
        Ok(())
    }

    pub(crate) fn has_remote(&self) -> bool {
        self.has_remote.load(Ordering::Acquire)
    }

    /// Takes the queued remote wakes and callbacks.
    pub(crate) fn take_remote(&self, wakes: &mut Vec<WakeTarget>, callbacks: &mut VecDeque<Callback>) {
        self.has_remote.store(false, Ordering::Release);
        let mut r = self.lock();
        wakes.append(&mut r.wakes);
        callbacks.append(&mut r.callbacks);
    }

    /// Marks the run finished; returns the callbacks it accepted and has not run yet (to run
    /// them outside the lock).
    pub(crate) fn finish(&self) -> VecDeque<Callback> {
        let mut r = self.lock();
        r.finished = true;
        r.wakes.clear();
        std::mem::take(&mut r.callbacks)
    }
}

/// The waker of the root future or of one nursery child.
///
/// The target is atomic so that a pooled waker can be pointed at another child (see
/// [`WakerPool`]); it is only ever changed while the runtime's thread holds the only references.
pub(crate) struct TaskWaker {
    shared: Arc<Shared>,
    group: AtomicU32,
    generation: AtomicU32,
    index: AtomicU32,
}

impl TaskWaker {
    fn new(shared: &Arc<Shared>, t: WakeTarget) -> TaskWaker {
        TaskWaker {
            shared: shared.clone(),
            group: AtomicU32::new(t.group),
            generation: AtomicU32::new(t.generation),
            index: AtomicU32::new(t.index),
        }
    }

    pub(crate) fn waker(shared: &Arc<Shared>, target: WakeTarget) -> Waker {
        Waker::from(Arc::new(TaskWaker::new(shared, target)))
    }

    #[inline]
    fn target(&self) -> WakeTarget {
        WakeTarget {
            group: self.group.load(Ordering::Relaxed),
            generation: self.generation.load(Ordering::Relaxed),
            index: self.index.load(Ordering::Relaxed),
        }
    }

    #[inline]
    fn set_target(&self, t: WakeTarget) {
        self.group.store(t.group, Ordering::Relaxed);
        self.generation.store(t.generation, Ordering::Relaxed);
        self.index.store(t.index, Ordering::Relaxed);
    }
}

/// A child's waker for one poll: the `Waker` and a second reference to its `Arc`, which tells
/// after the poll whether anyone kept a clone.
pub(crate) struct LentWaker {
    waker: Waker,
    arc: Arc<TaskWaker>,
}

impl LentWaker {
    #[inline]
    pub(crate) fn waker(&self) -> &Waker {
        &self.waker
    }
}

/// Lends wakers to child polls and takes them back, so that a child that is not running holds
/// no waker unless something kept a clone of it.
///
/// A lent waker is a `Waker` plus an `Arc` handle on the same `TaskWaker`: two references that
/// the runtime owns. After the poll, a count of two means no clone exists, and none can appear:
/// the poll's `&Waker` does not outlive the poll (safe code; a scoped thread that used it has
/// been joined, so its clones are counted), no `Weak` of a `TaskWaker` is ever made, and nothing
/// in the crate keeps a waker's identity across polls without holding a clone (`Core::entity`
/// is set and cleared around each poll). So the waker goes back to the pool and can be pointed
/// at another child. A higher count means a clone is registered somewhere (a reactor source, a
/// channel's wait queue, a combinator): the child keeps the waker until a later poll finds it
/// free again. A child poll thus costs no allocation and no reference-count write, and a parked
/// child whose wake-up is recorded by target (DESIGN.md 4.2) costs no waker memory at all.
#[derive(Default)]
pub(crate) struct WakerPool {
    free: Vec<LentWaker>,
}

const WAKER_POOL_MAX: usize = 1024;

impl WakerPool {
    /// A waker for `target`, to give back to [`WakerPool::give_back`] after the poll.
    #[inline(always)]
    pub(crate) fn lend(&mut self, shared: &Arc<Shared>, target: WakeTarget) -> LentWaker {
        match self.free.pop() {
            Some(lent) => {
                lent.arc.set_target(target);
                lent
            }
            None => {
                let arc = Arc::new(TaskWaker::new(shared, target));
                LentWaker { waker: Waker::from(arc.clone()), arc }
            }
        }
    }

    /// Takes back a waker after a poll, unless a clone of it is still held elsewhere: then it is
    /// returned, for the child to keep until its next poll.
    #[inline(always)]
    pub(crate) fn give_back(&mut self, lent: LentWaker) -> Option<LentWaker> {
        debug_assert_eq!(Arc::weak_count(&lent.arc), 0, "hatchery internal error: a weak task waker");
        if Arc::strong_count(&lent.arc) != 2 {
            return Some(lent);
        }
        // Pairs with the release decrement of a clone dropped on another thread: its last use of
        // the target happens before the target is changed.
        fence(Ordering::Acquire);
        if self.free.len() < WAKER_POOL_MAX {
            self.free.push(lent);
        }
        None
    }
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref()
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let target = self.target();
        if !context::wake_local(&self.shared, target) {
            self.shared.push_remote_wake(target);
        }
    }
}

/// Who polls a group, and so must hear when it has work.
#[derive(Debug)]
enum Parent {
    None,
    /// A hatchery task of this run: wake-ups are routed inside [`Sched`], no waker call.
    Local(WakeTarget),
    /// Anything else (a combinator of another crate): its waker is woken. Shared, so that a
    /// wake-up takes it out of the borrow with a count increment instead of a clone, which would
    /// be foreign code.
    Foreign(Rc<Waker>),
}

#[derive(Debug)]
struct Group {
    generation: u32,
    parent: Parent,
    /// The parent has been woken since this group was last polled.
    notified: bool,
    /// Every task of the group was woken at once (see [`WakeTarget::group_of`]).
    all: bool,
    ready: Vec<u32>,
    /// The allocation of the batch being worked through, given back by [`Sched::recycle`]: each
    /// group alternates between two vectors, so a steady state allocates nothing.
    spare: Vec<u32>,
    queued: Vec<bool>,
}

impl Group {
    /// Marks `index` queued; false if it was queued already (it is in a list to be polled).
    #[inline]
    fn mark_queued(&mut self, index: u32) -> bool {
        let i = index as usize;
        if i >= self.queued.len() {
            self.queued.resize((i + 1).next_power_of_two(), false);
        }
        !std::mem::replace(&mut self.queued[i], true)
    }
}

/// A spare ready list of up to this capacity is always kept (4 KiB).
const SPARE_KEPT: usize = 1024;

/// Scheduling state of one run.
#[derive(Debug, Default)]
pub(crate) struct Sched {
    groups: Slab<Group>,
    next_generation: u32,
    pub(crate) root_scheduled: bool,
}

impl Sched {
    pub(crate) fn new() -> Self {
        Sched { root_scheduled: true, ..Default::default() }
    }

    pub(crate) fn open_group(&mut self) -> (u32, u32) {
        self.next_generation = self.next_generation.wrapping_add(1);
        let generation = self.next_generation;
        assert!(
            self.groups.vacant_key() < super::context::FIRST_RESERVED_GROUP as usize,
            "hatchery internal error: more than 2^32 - 3 nurseries open at once"
        );
        let key = self.groups.insert(Group {
            generation,
            parent: Parent::None,
            notified: false,
            all: false,
            ready: Vec::new(),
            spare: Vec::new(),
            queued: Vec::new(),
        });
        (key as u32, generation)
    }

    pub(crate) fn close_group(&mut self, group: u32) -> Option<Rc<Waker>> {
        match self.groups.remove(group as usize)?.parent {
            Parent::Foreign(w) => Some(w),
            _ => None,
        }
    }

    /// Queues `t` and tells the parents up the tree, as far as they are hatchery tasks of this
    /// run; returns a foreign parent waker to wake, if the chain ends at one.
    pub(crate) fn wake(&mut self, mut t: WakeTarget) -> Option<Rc<Waker>> {
        loop {
            if t.group == NIL {
                self.root_scheduled = true;
                return None;
            }
            let g = self.groups.get_mut(t.group as usize).filter(|g| g.generation == t.generation)?;
            if t.index == ALL {
                if g.all {
                    return None;
                }
                g.all = true;
            } else if g.mark_queued(t.index) {
                g.ready.push(t.index);
            } else {
                return None;
            }
            if g.notified {
                return None;
            }
            g.notified = true;
            match &g.parent {
                Parent::None => return None,
                Parent::Local(p) => t = *p,
                Parent::Foreign(w) => return Some(Rc::clone(w)),
            }
        }
    }

    /// Whether a poll of `group` with the foreign waker `parent` must keep a clone of it (the
    /// group's parent is not a waker that wakes the same). Asked before
    /// [`set_foreign_parent`](Sched::set_foreign_parent), so that the clone is made with
    /// nothing borrowed.
    pub(crate) fn needs_parent(&self, group: u32, parent: &Waker) -> bool {
        !matches!(&self.groups[group as usize].parent, Parent::Foreign(w) if w.will_wake(parent))
    }

    /// Makes `parent` (a foreign waker's clone) the waker `group`'s wake-ups go to; returns the
    /// one it replaced, to be dropped after the borrow.
    pub(crate) fn set_foreign_parent(&mut self, group: u32, parent: Rc<Waker>) -> Option<Rc<Waker>> {
        match std::mem::replace(&mut self.groups[group as usize].parent, Parent::Foreign(parent)) {
            Parent::Foreign(old) => Some(old),
            _ => None,
        }
    }

    /// Starts a poll of `group`: records who polls it and hands out its ready list, and whether
    /// the whole group was woken (the caller then adds every live task with [`Sched::queue`]).
    /// `entity` is the task being polled and its waker's identity: if `parent` is that waker,
    /// the group's parent is recorded as that task, so wake-ups need no waker call. Also
    /// returns the parent waker it replaced, for the caller to drop once `Sched` is no longer
    /// borrowed (a foreign waker's destructor is foreign code). `local`: the task polling, if it
    /// polls with its own waker; otherwise (a foreign waker) the caller has recorded that waker
    /// with [`set_foreign_parent`](Sched::set_foreign_parent) first.
    pub(crate) fn begin_poll(
        &mut self,
        group: u32,
        local: Option<WakeTarget>,
    ) -> (Vec<u32>, Option<Rc<Waker>>, bool) {
        let g = &mut self.groups[group as usize];
        let mut spare = std::mem::take(&mut g.spare);
        let replaced = match local {
            Some(target) if !matches!(&g.parent, Parent::Local(t) if *t == target) => {
                std::mem::replace(&mut g.parent, Parent::Local(target))
            }
            _ => Parent::None,
        };
        g.notified = false;
        let all = std::mem::take(&mut g.all);
        spare.clear();
        std::mem::swap(&mut spare, &mut g.ready);
        let old = match replaced {
            Parent::Foreign(w) => Some(w),
            _ => None,
        };
        (spare, old, all)
    }

    /// Adds the tasks `indices` of `group` to `batch` (a list [`Sched::begin_poll`] handed out),
    /// except those queued already.
    pub(crate) fn queue(&mut self, group: u32, indices: impl Iterator<Item = u32>, batch: &mut Vec<u32>) {
        let g = &mut self.groups[group as usize];
        for index in indices {
            if g.mark_queued(index) {
                batch.push(index);
            }
        }
    }

    /// Clears the queued flag of `index` just before it is polled.
    pub(crate) fn unqueue(&mut self, group: u32, index: u32) {
        if let Some(q) = self.groups[group as usize].queued.get_mut(index as usize) {
            *q = false;
        }
    }

    /// Gives back a ready list's allocation. One much larger than the list filling up meanwhile
    /// is freed instead: a burst (100,000 children spawned at once, then parked) would otherwise
    /// leave the group holding two lists of that size for ever, where steady traffic keeps the
    /// two about the same size and reuses both.
    pub(crate) fn recycle(&mut self, group: u32, mut v: Vec<u32>) {
        if let Some(g) = self.groups.get_mut(group as usize) {
            if v.capacity() > SPARE_KEPT.max(4 * g.ready.capacity()) {
                v = Vec::new();
            } else {
                v.clear();
            }
            g.spare = v;
        }
    }

    /// Whether `t` has been woken and waits for its turn (for the task-tree dump).
    pub(crate) fn is_queued(&self, t: WakeTarget) -> bool {
        if t.group == NIL {
            return self.root_scheduled;
        }
        self.groups
            .get(t.group as usize)
            .filter(|g| g.generation == t.generation)
            .is_some_and(|g| g.all || g.queued.get(t.index as usize).copied().unwrap_or(false))
    }

    pub(crate) fn group_count(&self) -> usize {
        self.groups.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ready_list_much_larger_than_the_filling_one_is_freed_not_kept() {
        let mut s = Sched::new();
        let (g, _) = s.open_group();
        // After a burst, with nothing much filling up meanwhile: freed.
        s.recycle(g, Vec::with_capacity(100_000));
        assert_eq!(s.groups[g as usize].spare.capacity(), 0);
        // Small lists are always kept.
        s.recycle(g, Vec::with_capacity(SPARE_KEPT));
        assert_eq!(s.groups[g as usize].spare.capacity(), SPARE_KEPT);
        // Steady traffic: the list filling up is about as large, so the spare is kept, emptied.
        s.groups[g as usize].ready.reserve_exact(50_000);
        let mut v = Vec::with_capacity(100_000);
        v.push(7);
        s.recycle(g, v);
        let spare = &s.groups[g as usize].spare;
        assert!(spare.is_empty() && spare.capacity() >= 100_000, "{}", spare.capacity());
    }
}
