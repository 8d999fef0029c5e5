//! Task tracking for the task-tree dump ([`crate::debug::task_tree`]): who exists, in which
//! nursery, and what each task waits on.
//!
//! Ground rules:
//! - Off unless the run was built with `Builder::track_tasks(true)`: then [`Core::tracker`] is
//!   `None` and every hook is one branch on it, so the hot paths pay nothing else.
//! - The tracker only records; it never wakes, polls or calls user code, and it is borrowed only
//!   inside its own methods (no other `RefCell` of the run is borrowed meanwhile, except by
//!   [`Tracker::snapshot`], which only reads them).
//! - A task's waits are its parks' registrations: with tracking on, every park has a waiter
//!   record in the cancel tree (a silent one, which wakes nothing, beside the task's mark on
//!   its node; or the waker-holding one of a foreign waker), and the waiter's key names the
//!   wait until the park unregisters it (when the operation completes or is dropped, wherever
//!   the park has moved meanwhile). Its node is read from the tree when the snapshot is taken,
//!   so a scope exited since (its waiters move to the parent) is seen.
//!
//! [`Core::tracker`]: super::context::Core

use std::collections::HashMap;
use std::panic::Location;

use super::cancel_tree::{CancelTree, NIL};
use super::clock::Instant;
use super::sched::{BODY, Sched, WakeTarget};
use crate::debug::{NurseryInfo, TaskInfo, TaskRole, TaskState, TaskTree, WaitInfo, WaitingOn};

/// Where a child came from: the name of its future's type and the call that spawned it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Origin {
    pub(crate) name: &'static str,
    pub(crate) at: &'static Location<'static>,
}

impl Origin {
    /// The origin of a child whose future is an `F`, spawned by the caller of a
    /// `#[track_caller]` function.
    #[track_caller]
    #[inline(always)]
    pub(crate) fn of<F>() -> Origin {
        Origin { name: std::any::type_name::<F>(), at: Location::caller() }
    }
}

#[derive(Debug)]
struct TaskRec {
    id: u64,
    role: TaskRole,
    name: &'static str,
    at: Option<&'static Location<'static>>,
    last_ran: Option<Instant>,
    /// A nursery body that has returned (its nursery waits for the children).
    done: bool,
}

#[derive(Debug)]
struct NurseryRec {
    id: u64,
    generation: u32,
    at: &'static Location<'static>,
    node: u32,
    /// The task that polled the nursery last: the one it was opened in, or, after a `start`
    /// moved that task into another nursery, the task it became; and that task's id.
    parent: WakeTarget,
    parent_id: u64,
}

/// The tracking state of one run.
#[derive(Debug)]
pub(crate) struct Tracker {
    next_id: u64,
    /// By (group, index); the root task is `(NIL, 0)`.
    tasks: HashMap<(u32, u32), TaskRec>,
    /// By group.
    nurseries: HashMap<u32, NurseryRec>,
    /// By waiter key: the task that registered the waiter (its key and its id: a wait left
    /// registered in a long-lived object, a stream's poll-style park, must not pass to a later
    /// task with the same key), what it waits on, and a sequence number (waits are listed in
    /// the order they began).
    waits: HashMap<u32, ((u32, u32), u64, WaitingOn, u64)>,
    next_wait: u64,
}

fn key(t: WakeTarget) -> (u32, u32) {
    (t.group, t.index)
}

impl Tracker {
    /// A tracker holding the root task, started by the call at `at`.
    pub(crate) fn new(at: &'static Location<'static>) -> Tracker {
        let mut tasks = HashMap::new();
        tasks.insert(key(WakeTarget::ROOT), TaskRec::new(0, TaskRole::Root, "root", Some(at)));
        Tracker { next_id: 1, tasks, nurseries: HashMap::new(), waits: HashMap::new(), next_wait: 0 }
    }

    fn fresh_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// The id of the task `t` (`None`: not tracked, or ended).
    fn id_of(&self, t: WakeTarget) -> Option<u64> {
        self.tasks.get(&key(t)).map(|rec| rec.id)
    }

    /// Whether `id` is still the task in the slot `task` (a slot is reused after its task ends).
    fn is_live(&self, task: (u32, u32), id: u64) -> bool {
        self.tasks.get(&task).is_some_and(|rec| rec.id == id)
    }

    /// A nursery was opened by the task `parent`, at the call `at`; its body is a task too.
    pub(crate) fn open_nursery(
        &mut self,
        (group, generation): (u32, u32),
        node: u32,
        at: &'static Location<'static>,
        parent: WakeTarget,
    ) {
        let id = self.fresh_id();
        let parent_id = self.id_of(parent).unwrap_or(u64::MAX);
        self.nurseries.insert(group, NurseryRec { id, generation, at, node, parent, parent_id });
        let body = self.fresh_id();
        self.tasks.insert((group, BODY), TaskRec::new(body, TaskRole::Body, "body", Some(at)));
    }

    /// The nursery of `group` is being polled by `parent`.
    pub(crate) fn nursery_polled(&mut self, group: u32, parent: WakeTarget) {
        let parent_id = self.id_of(parent).unwrap_or(u64::MAX);
        if let Some(n) = self.nurseries.get_mut(&group) {
            (n.parent, n.parent_id) = (parent, parent_id);
        }
    }

    /// The nursery of `group` closed (its children are gone already, one by one).
    pub(crate) fn close_nursery(&mut self, group: u32) {
        self.nurseries.remove(&group);
        self.tasks.remove(&(group, BODY));
    }

    pub(crate) fn spawned(&mut self, t: WakeTarget, origin: Origin) {
        let id = self.fresh_id();
        self.tasks.insert(key(t), TaskRec::new(id, TaskRole::Child, origin.name, Some(origin.at)));
    }

    pub(crate) fn finished(&mut self, t: WakeTarget) {
        self.tasks.remove(&key(t));
    }

    /// A nursery's body returned.
    pub(crate) fn body_done(&mut self, t: WakeTarget) {
        if let Some(rec) = self.tasks.get_mut(&key(t)) {
            rec.done = true;
        }
    }

    /// A poll of `t` (a child or a body; the root runs at every pass) begins at `now`.
    pub(crate) fn begin_poll(&mut self, t: WakeTarget, now: Instant) {
        if let Some(rec) = self.tasks.get_mut(&key(t)) {
            rec.last_ran = Some(now);
        }
    }

    /// The tasks being polled: `current` (the task being polled, or the root between passes),
    /// the task polling its nursery, and so on up to the root. No hook is needed at the end of
    /// a poll for this: each nursery knows the task that polls it.
    fn running(&self, current: WakeTarget) -> Vec<(u32, u32)> {
        let mut out = vec![key(current)];
        let mut t = current;
        while t.group != NIL {
            match self.nurseries.get(&t.group) {
                Some(n) if !out.contains(&key(n.parent)) => {
                    t = n.parent;
                    out.push(key(t));
                }
                _ => break,
            }
        }
        out
    }

    /// The task `t` registered the waiter `waiter` to wait on `on` (or registered it again,
    /// maybe from another task, the future having moved).
    pub(crate) fn waiting(&mut self, waiter: u32, t: WakeTarget, on: WaitingOn) {
        let Some(owner) = self.id_of(t) else { return };
        let seq = match self.waits.get(&waiter) {
            Some(&(_, _, _, seq)) => seq,
            None => {
                self.next_wait += 1;
                self.next_wait
            }
        };
        self.waits.insert(waiter, (key(t), owner, on, seq));
    }

    /// The waiter `waiter` was unregistered: that wait is over.
    pub(crate) fn unregistered(&mut self, waiter: u32) {
        self.waits.remove(&waiter);
    }

    /// The tree as it stands.
    pub(crate) fn snapshot(
        &self,
        now: Instant,
        current: WakeTarget,
        sched: &Sched,
        tree: &CancelTree,
    ) -> TaskTree {
        let mut waits: HashMap<(u32, u32), Vec<(u64, WaitInfo)>> = HashMap::new();
        for (&w, &(task, owner, on, seq)) in &self.waits {
            // A wait whose task has ended (its park lives on in an object the task left behind)
            // belongs to nobody shown; every recorded waiter is registered (one that is not
            // would be a bug, and is left out too).
            if !self.is_live(task, owner) {
                continue;
            }
            let Some(node) = tree.waiter_node(w) else { continue };
            let (deadline, cancelled) = governing(tree, node);
            waits.entry(task).or_default().push((seq, WaitInfo { on, deadline, cancelled }));
        }
        for v in waits.values_mut() {
            v.sort_by_key(|&(seq, _)| seq);
        }
        let mut by_group: HashMap<u32, Vec<(u32, &TaskRec)>> = HashMap::new();
        for (&(group, index), rec) in &self.tasks {
            if group != NIL {
                by_group.entry(group).or_default().push((index, rec));
            }
        }
        let mut by_parent: HashMap<(u32, u32), Vec<(u32, &NurseryRec)>> = HashMap::new();
        for (&group, n) in &self.nurseries {
            // A parent that has ended is not this nursery's (it is shown detached).
            if self.is_live(key(n.parent), n.parent_id) {
                by_parent.entry(key(n.parent)).or_default().push((group, n));
            }
        }
        let running = self.running(current);
        let cx = Snap { running, sched, tree, waits, by_group, by_parent, visited: Default::default() };
        let root = match self.tasks.get(&key(WakeTarget::ROOT)) {
            Some(rec) => cx.task(WakeTarget::ROOT, rec),
            None => unreachable!("hatchery internal error: the tracker lost the root task"),
        };
        // Nurseries whose parent is not a tracked task (none are expected) are still shown.
        let mut rest: Vec<_> = self.nurseries.iter().collect();
        rest.sort_by_key(|(_, n)| n.id);
        let detached = rest
            .into_iter()
            .filter(|(_, n)| cx.visited.borrow_mut().insert(n.id))
            .map(|(&g, n)| cx.nursery(g, n))
            .collect();
        TaskTree::new(now, root, detached)
    }
}

/// The deadline that governs code parked at `node` (`NIL`: an orphaned waiter, governed by
/// nothing) and whether that code is effectively cancelled.
fn governing(tree: &CancelTree, node: u32) -> (Option<Instant>, bool) {
    if node == NIL || !tree.contains(node) {
        return (None, false);
    }
    (tree.effective_deadline(node), tree.is_effectively_cancelled(node))
}

impl TaskRec {
    fn new(id: u64, role: TaskRole, name: &'static str, at: Option<&'static Location<'static>>) -> TaskRec {
        TaskRec { id, role, name, at, last_ran: None, done: false }
    }
}

struct Snap<'a> {
    running: Vec<(u32, u32)>,
    sched: &'a Sched,
    tree: &'a CancelTree,
    waits: HashMap<(u32, u32), Vec<(u64, WaitInfo)>>,
    by_group: HashMap<u32, Vec<(u32, &'a TaskRec)>>,
    by_parent: HashMap<(u32, u32), Vec<(u32, &'a NurseryRec)>>,
    /// Nurseries shown already: a cycle (which would be a bug) cannot recurse for ever.
    visited: std::cell::RefCell<std::collections::HashSet<u64>>,
}

impl Snap<'_> {
    fn task(&self, t: WakeTarget, rec: &TaskRec) -> TaskInfo {
        let state = if self.running.contains(&key(t)) {
            TaskState::Running
        } else if rec.done {
            TaskState::Done
        } else if self.sched.is_queued(t) {
            TaskState::Runnable
        } else {
            TaskState::Waiting
        };
        let waits = self.waits.get(&key(t)).map(|v| v.iter().map(|&(_, w)| w).collect()).unwrap_or_default();
        let mut nurseries: Vec<_> = self
            .by_parent
            .get(&key(t))
            .map(|v| {
                v.iter()
                    .filter(|(_, n)| self.visited.borrow_mut().insert(n.id))
                    .map(|&(g, n)| self.nursery(g, n))
                    .collect()
            })
            .unwrap_or_default();
        nurseries.sort_by_key(|n| n.id);
        TaskInfo {
            id: rec.id,
            role: rec.role,
            name: rec.name,
            location: rec.at,
            state,
            waits,
            last_ran: rec.last_ran,
            nurseries,
        }
    }

    fn nursery(&self, group: u32, n: &NurseryRec) -> NurseryInfo {
        let mut tasks: Vec<_> = self
            .by_group
            .get(&group)
            .map(|v| {
                v.iter()
                    .map(|&(index, rec)| {
                        self.task(WakeTarget { group, generation: n.generation, index }, rec)
                    })
                    .collect()
            })
            .unwrap_or_default();
        tasks.sort_by_key(|t: &TaskInfo| t.id);
        let (deadline, cancelled) = governing(self.tree, n.node);
        NurseryInfo { id: n.id, location: n.at, deadline, cancelled, tasks }
    }
}
