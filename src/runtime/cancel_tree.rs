//! Cancellation plumbing: the tree of cancel statuses and the tasks parked under each.
//!
//! Following Trio's split, a [`ScopeState`] is the *origin* of cancellation (the user's cancel
//! scope: `cancel_called`, shield, deadline, the first cause), while a node of the
//! [`CancelTree`] is the *plumbing*: where an entered scope sits relative to the others, and
//! which parked operations must be woken when cancellation reaches it.
//!
//! Ground rules:
//! - A node exists exactly while its scope is entered (from the first poll of the scope's future
//!   to its completion or drop). Nursery scopes and per-child scopes are nodes too.
//! - The parent of a node is the status that was current when the scope was entered. So a
//!   nursery child sits under the nursery's scope, wherever `spawn` was called (S3.3).
//! - "Effectively cancelled" is computed on demand by walking up from a node and stopping at the
//!   first shield. Nothing is cached, so there is nothing to invalidate; depth is usually small
//!   and the walk is an explicit loop, so 5,000 nested scopes cannot overflow the stack (S4.12).
//! - A parked operation makes sure that cancellation reaching the status current when it parked
//!   wakes its task. Polled with its own task's waker (the common case), it records that task
//!   as the node's *owner*: a scope's node is only ever current for the one task polling the
//!   scope, so one owner per node is enough, and it costs nothing to undo. A nursery's node,
//!   current for its body and its children without a node of their own, is owned by the whole
//!   group. Polled with any other waker (a foreign combinator's), it registers a *waiter*: the
//!   waker itself, in a list at the node. The waiter holds it in an `Rc`, cloned by the caller
//!   before it borrows the tree: cloning a foreign waker is foreign code, which may use the
//!   runtime (read a deadline, cancel a scope), and collecting it for a cancellation is then a
//!   count increment, not another call into that code.
//! - Cancelling a node, or removing a shield under a cancelled parent, wakes every owner and
//!   every waiter in the subtree except below shields. The woken operation decides itself, on
//!   its next poll, whether to abort (that is the abort path of the parking protocol; see
//!   `lowlevel`). An owner whose operations have completed gets a spurious poll, which the
//!   `Future` contract allows.
//! - Never calls a waker: wake-ups are returned to the caller ([`Wakeups`]), which delivers them
//!   once no runtime state is borrowed.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Waker;

use super::context::Core;
use super::sched::WakeTarget;
use super::slab::Slab;
use crate::error::{CancelSource, Cancelled};
use crate::panics::FirstPanic;
use crate::runtime::clock::Instant;

pub(crate) const NIL: u32 = u32::MAX;

/// [`ScopeState::relative`] for a timeout too long to end (`Instant` + it saturates to `MAX`).
const FOREVER: u64 = u64::MAX - 1;

/// Where a scope is in its single life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Unentered,
    Entered(u32),
    Exited,
}

/// The origin of cancellation for one scope. Its tree node holds it in place ([`ScopeRef::Own`])
/// until something outside the tree needs it, a handle, and then in an `Rc` shared with the
/// handles ([`ScopeRef::Shared`]).
///
/// Every scope (each `move_on_after`, each nursery) has one, so it is kept small: the cause's
/// source sits in padding, its rare reason is boxed, keys and run ids are 32 bits.
pub(crate) struct ScopeState {
    pub(crate) cancel_called: Cell<bool>,
    /// Cancelled while entered in a run that was not running (a handle used after its run
    /// ended, or from another run): that run's tree did not count it, so its exit must not
    /// uncount it.
    pub(crate) uncounted: Cell<bool>,
    pub(crate) shield: Cell<bool>,
    pub(crate) caught: Cell<bool>,
    /// The first cause recorded wins (S4.15): its source, and its reason if it has one (a
    /// deadline's has none, so cancelling by deadline allocates nothing).
    source: Cell<CancelSource>,
    reason: Cell<Option<Box<Arc<str>>>>,
    /// Absolute deadline; `Instant::MAX` means none.
    pub(crate) deadline: Cell<Instant>,
    /// For relative scopes before entry: the timeout, in nanoseconds, to add to the entry time;
    /// `u64::MAX` means none.
    relative: Cell<u64>,
    pub(crate) phase: Cell<Phase>,
    /// Key of this scope's entry in the runtime's deadline structure while entered; `NIL` if none.
    deadline_key: Cell<u32>,
    /// Low 32 bits of the id of the run the scope was entered in (its node key means nothing in
    /// another run).
    pub(crate) run: Cell<u32>,
}

impl std::fmt::Debug for ScopeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScopeState")
            .field("cancel_called", &self.cancel_called.get())
            .field("shield", &self.shield.get())
            .field("deadline", &self.deadline.get())
            .field("phase", &self.phase.get())
            .finish_non_exhaustive()
    }
}

impl ScopeState {
    pub(crate) const fn new() -> ScopeState {
        ScopeState {
            cancel_called: Cell::new(false),
            uncounted: Cell::new(false),
            shield: Cell::new(false),
            caught: Cell::new(false),
            source: Cell::new(CancelSource::Explicit),
            reason: Cell::new(None),
            deadline: Cell::new(Instant::MAX),
            relative: Cell::new(u64::MAX),
            phase: Cell::new(Phase::Unentered),
            deadline_key: Cell::new(NIL),
            run: Cell::new(0),
        }
    }

    /// Moves this state's contents into a new shared state (the reason moves, the rest is
    /// copied), for a scope that has just been given its first handle.
    pub(crate) fn move_to_shared(&self) -> Rc<ScopeState> {
        Rc::new(ScopeState {
            cancel_called: Cell::new(self.cancel_called.get()),
            uncounted: Cell::new(self.uncounted.get()),
            shield: Cell::new(self.shield.get()),
            caught: Cell::new(self.caught.get()),
            source: Cell::new(self.source.get()),
            reason: Cell::new(self.reason.take()),
            deadline: Cell::new(self.deadline.get()),
            relative: Cell::new(self.relative.get()),
            phase: Cell::new(self.phase.get()),
            deadline_key: Cell::new(self.deadline_key.get()),
            run: Cell::new(self.run.get()),
        })
    }

    /// Whether the tree of the run it is entered in counts its cancellation.
    fn counted(&self) -> bool {
        self.cancel_called.get() && !self.uncounted.get()
    }

    /// Records the cancellation; returns true if this call is the one that cancelled it.
    pub(crate) fn mark_cancelled(&self, source: CancelSource, reason: Option<Arc<str>>) -> bool {
        if self.cancel_called.replace(true) {
            return false;
        }
        self.source.set(source);
        self.reason.set(reason.map(Box::new));
        true
    }

    #[inline]
    pub(crate) fn cause(&self) -> Cancelled {
        let reason = self.reason.take();
        let c = Cancelled::new(self.source.get(), reason.as_deref().cloned());
        self.reason.set(reason);
        c
    }

    /// A timeout of `u64::MAX - 1` ns (about 584 years) or more is stored as that, and means no
    /// deadline, whenever the scope is entered.
    pub(crate) fn set_relative(&self, timeout: Option<std::time::Duration>) {
        let nanos = timeout.map_or(u64::MAX, |d| u64::try_from(d.as_nanos()).unwrap_or(FOREVER).min(FOREVER));
        self.relative.set(nanos);
    }

    /// The relative timeout, taken at entry: the deadline it gives counted from `now`
    /// (`Instant::MAX`, none, for `FOREVER`), or `None` for an absolute scope.
    #[inline]
    pub(crate) fn take_relative(&self, now: impl FnOnce() -> Instant) -> Option<(Instant, Instant)> {
        let nanos = self.relative.replace(u64::MAX);
        if nanos == u64::MAX {
            return None;
        }
        let now = now();
        Some((now, if nanos == FOREVER { Instant::MAX } else { now.saturating_add_nanos(nanos) }))
    }

    pub(crate) fn deadline_key(&self) -> Option<usize> {
        let k = self.deadline_key.get();
        (k != NIL).then_some(k as usize)
    }

    pub(crate) fn set_deadline_key(&self, key: Option<usize>) {
        self.deadline_key.set(key.map_or(NIL, |k| k as u32));
    }
}

/// How a node (or a scope not yet entered) holds its state: in place while nothing else can
/// reach it, which spares a `move_on_after` or a nursery without a handle an allocation; in an
/// `Rc` once a handle exists.
#[derive(Debug)]
pub(crate) enum ScopeRef {
    Own(ScopeState),
    Shared(Rc<ScopeState>),
}

impl std::ops::Deref for ScopeRef {
    type Target = ScopeState;

    #[inline]
    fn deref(&self) -> &ScopeState {
        match self {
            ScopeRef::Own(s) => s,
            ScopeRef::Shared(s) => s,
        }
    }
}

impl ScopeRef {
    /// The shared state, created from the one held in place if need be.
    pub(crate) fn share(&mut self) -> Rc<ScopeState> {
        match self {
            ScopeRef::Shared(rc) => rc.clone(),
            ScopeRef::Own(s) => {
                let rc = s.move_to_shared();
                *self = ScopeRef::Shared(rc.clone());
                rc
            }
        }
    }

    /// Whether this is `other`, shared.
    pub(crate) fn is(&self, other: &Rc<ScopeState>) -> bool {
        matches!(self, ScopeRef::Shared(rc) if Rc::ptr_eq(rc, other))
    }
}

#[derive(Debug)]
struct Node {
    parent: u32,
    state: ScopeRef,
    first_child: u32,
    prev_sibling: u32,
    next_sibling: u32,
    first_waiter: u32,
    /// The task (or, for a nursery's node, the group) that parked here with its own waker;
    /// [`WakeTarget::NONE`] if none has.
    owner: WakeTarget,
}

/// What a cancellation must wake: hatchery tasks by target, foreign waiters by waker (shared
/// with the waiter record, so that collecting one runs no foreign code).
#[derive(Debug, Default)]
pub(crate) struct Wakeups {
    pub(crate) tasks: Vec<WakeTarget>,
    pub(crate) wakers: Vec<Rc<Waker>>,
}

impl Wakeups {
    /// Delivers and clears everything collected. Call with no runtime state borrowed. A waker
    /// that panics (foreign code: a foreign waker, or a nursery's parent waker) does not stop the
    /// others; the first panic goes on once every wake-up is delivered.
    pub(crate) fn wake(&mut self, core: &Core) {
        let mut panic = FirstPanic::default();
        for t in self.tasks.drain(..) {
            panic.catch(|| core.wake(t));
        }
        for w in self.wakers.drain(..) {
            panic.catch(|| match Rc::try_unwrap(w) {
                Ok(w) => w.wake(),
                Err(w) => w.wake_by_ref(),
            });
        }
        panic.resume();
    }
}

#[derive(Debug)]
struct Waiter {
    node: u32,
    /// `None`: a silent record, which wakes nothing (task tracking names a wait with it; the
    /// task itself is woken through its mark on the node, as without tracking).
    waker: Option<Rc<Waker>>,
    prev: u32,
    next: u32,
}

#[derive(Debug, Default)]
pub(crate) struct CancelTree {
    nodes: Slab<Node>,
    waiters: Slab<Waiter>,
    /// Silent waiters among `waiters`.
    silent: usize,
    /// Entered nodes whose scope is cancelled. While it is zero (the common case) nothing can be
    /// effectively cancelled, and checkpoints skip the walk up the tree.
    cancelled: usize,
}

impl CancelTree {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    pub(crate) fn state(&self, node: u32) -> &ScopeRef {
        &self.nodes[node as usize].state
    }

    /// The state of `node`, shared from now on (a handle is being made for it).
    pub(crate) fn share(&mut self, node: u32) -> Rc<ScopeState> {
        self.nodes[node as usize].state.share()
    }

    /// Gives `node` a new origin (used to cancel one nursery child on its own).
    pub(crate) fn replace_state(&mut self, node: u32, state: ScopeRef) {
        let old = std::mem::replace(&mut self.nodes[node as usize].state, state);
        if old.counted() {
            self.cancelled -= 1;
        }
        if self.nodes[node as usize].state.cancel_called.get() {
            self.nodes[node as usize].state.uncounted.set(false);
            self.cancelled += 1;
        }
    }

    /// Whether `node` is a live node.
    pub(crate) fn contains(&self, node: u32) -> bool {
        self.nodes.get(node as usize).is_some()
    }

    pub(crate) fn parent(&self, node: u32) -> u32 {
        self.nodes[node as usize].parent
    }

    pub(crate) fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Waiters that wake something (silent records are not registrations of the run).
    pub(crate) fn waiter_count(&self) -> usize {
        self.waiters.len() - self.silent
    }

    /// Marks the scope of an entered node cancelled; true if this call cancelled it.
    pub(crate) fn mark_cancelled(
        &mut self,
        node: u32,
        source: CancelSource,
        reason: Option<Arc<str>>,
    ) -> bool {
        let newly = self.nodes[node as usize].state.mark_cancelled(source, reason);
        if newly {
            self.cancelled += 1;
        }
        newly
    }

    /// Adds a node for `state` under `parent` (`NIL` for a root).
    pub(crate) fn enter(&mut self, parent: u32, state: ScopeRef) -> u32 {
        if state.cancel_called.get() {
            self.cancelled += 1;
        }
        let first_sibling = if parent == NIL { NIL } else { self.nodes[parent as usize].first_child };
        let key = self.nodes.insert(Node {
            parent,
            state,
            first_child: NIL,
            prev_sibling: NIL,
            next_sibling: first_sibling,
            first_waiter: NIL,
            owner: WakeTarget::NONE,
        }) as u32;
        if first_sibling != NIL {
            self.nodes[first_sibling as usize].prev_sibling = key;
        }
        if parent != NIL {
            self.nodes[parent as usize].first_child = key;
        }
        key
    }

    /// Removes a node and gives back its state. Its children and waiters (which can outlive it
    /// only when a future was moved out of the scope it was created in) move to its parent.
    pub(crate) fn exit(&mut self, key: u32) -> ScopeRef {
        let parent = self.nodes[key as usize].parent;
        // Re-home children.
        let mut c = self.nodes[key as usize].first_child;
        while c != NIL {
            let next = self.nodes[c as usize].next_sibling;
            self.unlink_child(c);
            self.nodes[c as usize].parent = parent;
            self.link_child(parent, c);
            c = next;
        }
        // Re-home waiters (or orphan them if there is no parent).
        let mut w = self.nodes[key as usize].first_waiter;
        while w != NIL {
            let next = self.waiters[w as usize].next;
            self.unlink_waiter(w);
            self.waiters[w as usize].node = parent;
            if parent != NIL {
                self.link_waiter(parent, w);
            }
            w = next;
        }
        self.unlink_child(key);
        let Some(n) = self.nodes.remove(key as usize) else {
            unreachable!("hatchery internal error: exit of a cancel node that does not exist")
        };
        if n.state.counted() {
            self.cancelled -= 1;
        }
        n.state
    }

    /// Moves `node` (with its subtree and waiters) under `parent`.
    pub(crate) fn reparent(&mut self, node: u32, parent: u32) {
        self.unlink_child(node);
        self.nodes[node as usize].parent = parent;
        self.link_child(parent, node);
    }

    fn link_child(&mut self, parent: u32, c: u32) {
        if parent == NIL {
            return;
        }
        let first = self.nodes[parent as usize].first_child;
        self.nodes[c as usize].prev_sibling = NIL;
        self.nodes[c as usize].next_sibling = first;
        if first != NIL {
            self.nodes[first as usize].prev_sibling = c;
        }
        self.nodes[parent as usize].first_child = c;
    }

    fn unlink_child(&mut self, c: u32) {
        let Node { parent, prev_sibling: prev, next_sibling: next, .. } = self.nodes[c as usize];
        if prev != NIL {
            self.nodes[prev as usize].next_sibling = next;
        } else if parent != NIL && self.nodes[parent as usize].first_child == c {
            self.nodes[parent as usize].first_child = next;
        }
        if next != NIL {
            self.nodes[next as usize].prev_sibling = prev;
        }
        self.nodes[c as usize].prev_sibling = NIL;
        self.nodes[c as usize].next_sibling = NIL;
    }

    /// The cancellation a checkpoint at `node` must deliver, if any: the cause of the outermost
    /// cancelled scope visible from `node` (scopes above a shield are not visible).
    #[inline]
    pub(crate) fn effective(&self, node: u32) -> Option<Cancelled> {
        // Every checkpoint asks: the common answer must not cost a call.
        if self.cancelled == 0 { None } else { self.effective_walk(node) }
    }

    fn effective_walk(&self, mut node: u32) -> Option<Cancelled> {
        let mut found: Option<&ScopeState> = None;
        while node != NIL {
            let n = &self.nodes[node as usize];
            if n.state.cancel_called.get() {
                found = Some(&*n.state);
            }
            if n.state.shield.get() {
                break;
            }
            node = n.parent;
        }
        found.map(|s| s.cause())
    }

    #[inline]
    pub(crate) fn is_effectively_cancelled(&self, node: u32) -> bool {
        self.cancelled != 0 && self.cancelled_walk(node)
    }

    fn cancelled_walk(&self, mut node: u32) -> bool {
        while node != NIL {
            let n = &self.nodes[node as usize];
            if n.state.cancel_called.get() {
                return true;
            }
            if n.state.shield.get() {
                return false;
            }
            node = n.parent;
        }
        false
    }

    /// Whether the scope at `node` absorbs a cancellation leaving it (S4.8): it is cancelled
    /// itself, and its parent's cancellation is not visible to it.
    pub(crate) fn catches(&self, node: u32) -> bool {
        let n = &self.nodes[node as usize];
        n.state.cancel_called.get()
            && (n.state.shield.get() || n.parent == NIL || !self.is_effectively_cancelled(n.parent))
    }

    /// The earliest deadline that governs `node`: the minimum over the chain up to the first
    /// shield; `Some(ZERO)` if effectively cancelled; `None` if there is none.
    pub(crate) fn effective_deadline(&self, mut node: u32) -> Option<Instant> {
        let mut best = Instant::MAX;
        while node != NIL {
            let n = &self.nodes[node as usize];
            if n.state.cancel_called.get() {
                return Some(Instant::ZERO);
            }
            best = best.min(n.state.deadline.get());
            if n.state.shield.get() {
                break;
            }
            node = n.parent;
        }
        (best != Instant::MAX).then_some(best)
    }

    /// Everything parked in the subtree of `root` that cancellation reaches (not below a
    /// shield): owners and waiters. Uses an explicit stack.
    pub(crate) fn collect(&self, root: u32, out: &mut Wakeups) {
        self.collect_node(root, out);
        let first_child = self.nodes[root as usize].first_child;
        if first_child == NIL {
            // The common case (a timeout around a leaf operation): no allocation.
            return;
        }
        let mut stack = Vec::new();
        let mut c = first_child;
        while c != NIL {
            stack.push(c);
            c = self.nodes[c as usize].next_sibling;
        }
        while let Some(n) = stack.pop() {
            let node = &self.nodes[n as usize];
            if node.state.shield.get() {
                continue;
            }
            self.collect_node(n, out);
            let mut c = node.first_child;
            while c != NIL {
                stack.push(c);
                c = self.nodes[c as usize].next_sibling;
            }
        }
    }

    fn collect_node(&self, n: u32, out: &mut Wakeups) {
        let node = &self.nodes[n as usize];
        if node.owner != WakeTarget::NONE {
            out.tasks.push(node.owner);
        }
        let mut w = node.first_waiter;
        while w != NIL {
            out.wakers.extend(self.waiters[w as usize].waker.clone());
            w = self.waiters[w as usize].next;
        }
    }

    /// Makes the whole group of `task` the owner of `node` (a nursery's node).
    pub(crate) fn set_group_owner(&mut self, node: u32, task: WakeTarget) {
        self.nodes[node as usize].owner = WakeTarget::group_of(task);
    }

    /// Records that `task`, parking with its own waker, must be woken when cancellation reaches
    /// `node`. False if the node belongs to a group `task` is not in: the caller registers a
    /// waiter instead.
    pub(crate) fn register_owner(&mut self, node: u32, task: WakeTarget) -> bool {
        let owner = &mut self.nodes[node as usize].owner;
        if owner.covers(task) {
            return true;
        }
        if owner.is_group() {
            return false;
        }
        // A scope's node is current only for the task polling the scope; a different task
        // here means the scope's future moved to it (everything parked inside moved along).
        *owner = task;
        true
    }

    fn link_waiter(&mut self, node: u32, w: u32) {
        let first = self.nodes[node as usize].first_waiter;
        self.waiters[w as usize].prev = NIL;
        self.waiters[w as usize].next = first;
        if first != NIL {
            self.waiters[first as usize].prev = w;
        }
        self.nodes[node as usize].first_waiter = w;
    }

    fn unlink_waiter(&mut self, w: u32) {
        let Waiter { node, prev, next, .. } = self.waiters[w as usize];
        if prev != NIL {
            self.waiters[prev as usize].next = next;
        } else if node != NIL && self.nodes[node as usize].first_waiter == w {
            self.nodes[node as usize].first_waiter = next;
        }
        if next != NIL {
            self.waiters[next as usize].prev = prev;
        }
        self.waiters[w as usize].prev = NIL;
        self.waiters[w as usize].next = NIL;
    }

    /// Whether the waiter `existing` (`NIL`: none) is registered at `node` with a waker that
    /// wakes the same task as `waker`: then there is nothing to register again.
    pub(crate) fn keeps(&self, existing: u32, node: u32, waker: &Waker) -> bool {
        existing != NIL
            && self
                .waiters
                .get(existing as usize)
                .is_some_and(|w| w.node == node && w.waker.as_ref().is_some_and(|k| k.will_wake(waker)))
    }

    /// Registers (or updates) a waiter at `node`. `existing` is the key this caller got last time.
    /// `waker` was cloned by the caller before it borrowed the tree (see the module's notes).
    /// Returns the key and any waker it replaced, which the caller drops once the tree is no
    /// longer borrowed (a waker's destructor may be foreign code).
    pub(crate) fn register(
        &mut self,
        existing: u32,
        node: u32,
        waker: Rc<Waker>,
    ) -> (u32, Option<Rc<Waker>>) {
        self.register_as(existing, node, Some(waker))
    }

    /// Registers (or updates) a silent waiter at `node`, which wakes nothing: a record for the
    /// task-tree dump of a wait whose task is woken through its mark on the node.
    pub(crate) fn register_silent(&mut self, existing: u32, node: u32) -> (u32, Option<Rc<Waker>>) {
        self.register_as(existing, node, None)
    }

    fn register_as(
        &mut self,
        existing: u32,
        node: u32,
        waker: Option<Rc<Waker>>,
    ) -> (u32, Option<Rc<Waker>>) {
        let mut old = None;
        if existing != NIL {
            let w = &mut self.waiters[existing as usize];
            if w.node == node {
                match (w.waker.is_some(), waker.is_some()) {
                    (true, false) => self.silent += 1,
                    (false, true) => self.silent -= 1,
                    _ => {}
                }
                old = std::mem::replace(&mut w.waker, waker);
                return (existing, old);
            }
            old = self.unregister(existing);
        }
        if waker.is_none() {
            self.silent += 1;
        }
        let w = self.waiters.insert(Waiter { node, waker, prev: NIL, next: NIL }) as u32;
        if node != NIL {
            self.link_waiter(node, w);
        }
        (w, old)
    }

    /// The node the waiter `w` waits at (`NIL`: orphaned), if it is registered.
    pub(crate) fn waiter_node(&self, w: u32) -> Option<u32> {
        self.waiters.get(w as usize).map(|w| w.node)
    }

    /// The waker registered under `w`, if it is still registered.
    pub(crate) fn waker_of(&self, w: u32) -> Option<&Rc<Waker>> {
        self.waiters.get(w as usize).and_then(|w| w.waker.as_ref())
    }

    /// Removes a waiter; returns its waker for the caller to drop outside the borrow.
    pub(crate) fn unregister(&mut self, w: u32) -> Option<Rc<Waker>> {
        if w == NIL {
            return None;
        }
        self.unlink_waiter(w);
        let waiter = self.waiters.remove(w as usize)?;
        if waiter.waker.is_none() {
            self.silent -= 1;
        }
        waiter.waker
    }
}
