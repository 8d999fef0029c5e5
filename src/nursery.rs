//! Nurseries: tasks that have an owner.
//!
//! # How children can borrow, soundly and without `unsafe`
//!
//! [`nursery`] returns an `async` block. Its frame holds the [`Nursery`] as a local and the body's
//! future, which borrows it; the compiler builds that self-referential frame for us. The
//! children are boxed futures stored *inside the nursery* and polled by the nursery future itself
//! (the moro approach): they never enter a global task list. So:
//!
//! - children may borrow anything that outlives the nursery, including the `&Nursery` handle, and
//!   the handle cannot escape the body (the body is `for<'n> AsyncFnOnce(&'n Nursery<'n, ..>)`,
//!   as `std::thread::scope`);
//! - if the nursery future is leaked with `mem::forget`, its children are simply never polled
//!   again: nothing can touch the borrowed data after the borrow ends;
//! - if it is dropped, the body is dropped, then [`CloseGuard`] drops every child, while the
//!   borrows are still valid.
//!
//! Children are stored as a `ManuallyDrop` of their owner (a `Pin<Box<dyn Child + 'n>>`, or a
//! [`SharedChild`] whose future shares one allocation with its handle's output cell): a type with
//! no drop glue for `'n`, which is what lets the nursery be borrowed for `'n` by the very futures
//! it stores (drop-check would otherwise reject it). Every child is dropped explicitly, never
//! twice: when it finishes, or by the guard (user code that runs while a child is out of its
//! slot is caught, except a foreign waker woken when the nursery cancels itself; a panic there,
//! or of the nursery's own code, would leak the child, which is sound). A child is taken out of
//! its slot while
//! it is polled, so the nursery's state is never borrowed while user code runs.
//!
//! # Scheduling and cancellation
//!
//! Each nursery has a group in the scheduler (see `runtime/sched.rs`) and a cancel scope whose
//! parent is the status where the nursery was opened; the body and the children run under it
//! (S3.3). Children spawned with [`Nursery::spawn`] get a node of their own under that scope,
//! so that [`JoinHandle::cancel`] can cancel one child.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::mem::ManuallyDrop;
use std::panic::resume_unwind;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use pin_project_lite::pin_project;

use crate::cancel::{self, CancelHandle};
use crate::error::{CancelError, CancelSource, Cancelled, JoinError, NurseryError, StartError};
use crate::panics::FirstPanic;
use crate::runtime::cancel_tree::{NIL, ScopeRef, ScopeState, Wakeups};
use crate::runtime::context::{self, Core};
use crate::runtime::sched::{BODY, LentWaker, TaskWaker, WakeTarget};
use crate::runtime::slab::Slab;
use crate::runtime::tracker::Origin;

mod handle;
mod poll;
mod shared;
mod start;

pub use handle::JoinHandle;
use shared::SharedChild;
pub use start::TaskStatus;

/// Opens a nursery, runs `body` in it, and returns when the body and every child have finished.
///
/// The body gets a [`Nursery`] handle to spawn children with. A plain return from the body does
/// not cancel the children: the nursery waits for them (S3.1).
///
/// # Errors and panics
///
/// The first error (or panic) of the body or of a child cancels the nursery's scope at once, so
/// the others are cancelled at their next checkpoint. The nursery waits for everyone, then:
/// resumes the first panic, if there was one; otherwise returns every error in a
/// [`NurseryError`] (none dropped; the `Cancelled` errors that the nursery's own cancellation
/// caused are absorbed, S4.9). If no error is left it returns `Ok(Some(value))`, the body's
/// value, or `Ok(None)` when the nursery's own scope was cancelled and absorbed the body's
/// cancellation, so there is no value.
///
/// # Cancellation
///
/// Opening a nursery is not a checkpoint; closing it is a schedule point and never a cancel
/// point (S2.5, S3.9). Cancelling the code around a nursery reaches the body and the children
/// through their scopes; the nursery still waits for all of them (S3.8).
///
/// ```
/// use std::time::Duration;
/// use hatchery::{nursery, sleep, testing::MockClock, Builder, Error};
///
/// let names = vec!["alice".to_string(), "bob".to_string()];
/// let out = Builder::new().clock(MockClock::with_autojump(Duration::ZERO)).run(async {
///     nursery(async |n| {
///         let handles: Vec<_> = names
///             .iter()
///             .enumerate()
///             .map(|(i, name)| n.spawn(async move {
///                 sleep(Duration::from_secs(i as u64 + 1)).await?;
///                 Ok::<_, Error>(name.len())
///             }))
///             .collect();
///         let mut total = 0;
///         for h in handles {
///             total += h.await?;
///         }
///         Ok(total)
///     })
///     .await
/// });
/// assert_eq!(out.unwrap(), Some(8));
/// ```
///
/// The handle cannot leave the body:
///
/// ```compile_fail
/// # use hatchery::{nursery, Cancelled};
/// hatchery::run(async {
///     let mut escaped = None;
///     let _ = nursery(async |n| {
///         escaped = Some(n);
///         Ok::<_, Cancelled>(())
///     })
///     .await;
/// });
/// ```
///
/// Nor can a child (or a handle's value) borrow the body's own locals, which end before the
/// children do:
///
/// ```compile_fail
/// # use hatchery::{nursery, Cancelled};
/// hatchery::run(async {
///     let _ = nursery(async |n| {
///         let local = String::from("the body's");
///         n.start_soon(async {
///             let _ = &local;
///             Ok::<_, Cancelled>(())
///         });
///         Ok::<_, Cancelled>(())
///     })
///     .await;
/// });
/// ```
///
/// ```compile_fail
/// # use hatchery::{nursery, Cancelled};
/// hatchery::run(async {
///     let _ = nursery(async |n| {
///         let local = String::from("the body's");
///         let h = n.spawn(async { Ok::<_, Cancelled>(local.as_str()) });
///         drop(h);
///         Ok::<_, Cancelled>(())
///     })
///     .await;
/// });
/// ```
#[track_caller]
pub fn nursery<'env, B, T, E>(body: B) -> impl Future<Output = Result<Option<T>, NurseryError<E>>>
where
    B: for<'n> AsyncFnOnce(&'n Nursery<'n, 'env, E>) -> Result<T, E>,
    E: CancelError,
{
    // The call's location, for the task-tree dump (an `async fn` cannot track its caller).
    let at = std::panic::Location::caller();
    async move {
        let n = Nursery::open(at);
        let _guard = CloseGuard { n: &n };
        let body = body(&n);
        let mut body = std::pin::pin!(body);
        // Dropped first: the body's own destructors find the nursery closed (the children are
        // dropped after them, by `_guard`, and a child spawned meanwhile would never run).
        let _closed = CloseOnDrop { n: &n };
        let mut state = RunState { body: BodyState::Running, closing: false };
        std::future::poll_fn(|cx| n.poll_nursery(cx, body.as_mut(), &mut state)).await
    }
}

enum BodyState<T> {
    Running,
    Done(Option<T>),
}

struct RunState<T> {
    body: BodyState<T>,
    closing: bool,
}

/// The handle a nursery's body gets: spawn children, start services, reach the nursery's scope.
///
/// `'n` is the nursery's lifetime: children may borrow anything that lives that long, including
/// this handle, so a child can spawn siblings. `'env` is the lifetime of what the nursery's
/// caller lends. `E` is the error type shared by the body and the children.
pub struct Nursery<'n, 'env, E> {
    core: Rc<Core>,
    group: u32,
    generation: u32,
    body_waker: Waker,
    node: u32,
    inner: RefCell<Inner<'n, E>>,
    /// The nursery's scope has been seen cancelled (it stays so): `cancel_self` has nothing to
    /// do, without a look at the cancel tree for each of the children that end with an error.
    seen_cancelled: Cell<bool>,
    /// Invariant in both lifetimes, as `std::thread::Scope` is, whatever the fields above: a
    /// covariant `'n` would let `start_soon` shrink it to a lifetime of the body's own locals,
    /// and a child borrowing one would outlive it (pinned by a `compile_fail` example on
    /// [`nursery`]).
    _marker: PhantomData<(&'n mut &'n (), &'env mut &'env ())>,
}

type BoxedChild<'n, E> = Pin<Box<dyn Child<E> + 'n>>;

/// A child, out of its slot (while it is polled, inserted or dropped).
enum Task<'n, E> {
    /// A `start_soon` or `start` child: the nursery alone owns the future.
    Boxed(BoxedChild<'n, E>),
    /// A `spawn` child: the future shares one allocation with its handle's output cell.
    Shared(SharedChild<'n, E>),
}

impl<E> Task<'_, E> {
    fn poll_child(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), E>> {
        match self {
            Task::Boxed(t) => t.as_mut().poll_child(cx),
            Task::Shared(t) => t.poll_child(cx),
        }
    }

    /// Tells the handle, if any, why there is no value.
    fn no_value(&mut self, why: &dyn Fn() -> JoinError) {
        if let Task::Shared(t) = self {
            t.no_value(why);
        }
    }
}

/// A child in the nursery's slab. An enum, not a struct holding a [`Task`], so that its tag
/// sits beside `node`: 24 bytes per child instead of 32 (DESIGN.md section 9).
///
/// Every child has, besides its future, its own cancel-status node once it has one (`NIL`
/// before). Only a child with a handle that can cancel it (a `Shared` one) may need a node of
/// its own; the node is created lazily: when the child first parks, enters a scope or opens a
/// nursery, or when its handle cancels it. Trivial children never get one. A `Boxed` child
/// moved in by `start` comes with the node it ran under before `started`.
enum Slot<'n, E> {
    Boxed {
        task: ManuallyDrop<BoxedChild<'n, E>>,
        node: u32,
    },
    Shared {
        task: ManuallyDrop<SharedChild<'n, E>>,
        node: u32,
    },
    /// Taken out of its slot to be polled; `wants_node` says which of the others it was.
    Polled {
        node: u32,
        wants_node: bool,
    },
}

impl<'n, E> Slot<'n, E> {
    fn new(task: Task<'n, E>, node: u32) -> Self {
        match task {
            Task::Boxed(t) => Slot::Boxed { task: ManuallyDrop::new(t), node },
            Task::Shared(t) => Slot::Shared { task: ManuallyDrop::new(t), node },
        }
    }

    fn node(&self) -> u32 {
        match *self {
            Slot::Boxed { node, .. } | Slot::Shared { node, .. } | Slot::Polled { node, .. } => node,
        }
    }

    fn set_node(&mut self, to: u32) {
        match self {
            Slot::Boxed { node, .. } | Slot::Shared { node, .. } | Slot::Polled { node, .. } => *node = to,
        }
    }

    fn wants_node(&self) -> bool {
        match *self {
            Slot::Boxed { .. } => false,
            Slot::Shared { .. } => true,
            Slot::Polled { wants_node, .. } => wants_node,
        }
    }

    /// Takes the child out to be polled (`None` if it is out already).
    #[inline]
    fn take(&mut self) -> Option<ManuallyDrop<Task<'n, E>>> {
        let polled = Slot::Polled { node: self.node(), wants_node: self.wants_node() };
        std::mem::replace(self, polled).into_task()
    }

    /// Puts back a child taken out with `take`.
    fn put_back(&mut self, task: ManuallyDrop<Task<'n, E>>) {
        *self = Slot::new(ManuallyDrop::into_inner(task), self.node());
    }

    /// The child, if it is in its slot (to poll it, or for its final drop).
    #[inline]
    fn into_task(self) -> Option<ManuallyDrop<Task<'n, E>>> {
        match self {
            Slot::Boxed { task, .. } => Some(ManuallyDrop::new(Task::Boxed(ManuallyDrop::into_inner(task)))),
            Slot::Shared { task, .. } => {
                Some(ManuallyDrop::new(Task::Shared(ManuallyDrop::into_inner(task))))
            }
            Slot::Polled { .. } => None,
        }
    }
}

struct Inner<'n, E> {
    children: Slab<Slot<'n, E>>,
    /// By slot key (child index - 1): the waker a child keeps because its last poll left a clone of it
    /// registered somewhere (a reactor source, a channel's wait queue). Other children hold no
    /// waker between polls (see `WakerPool`), so this stays empty in a nursery of sleepers, and
    /// a slot stays small.
    kept: Vec<Option<LentWaker>>,
    errors: Vec<E>,
    panic: Option<Box<dyn Any + Send + 'static>>,
    closed: bool,
    pending_starts: usize,
}

impl<E> fmt::Debug for Nursery<'_, '_, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = self.inner.borrow();
        f.debug_struct("Nursery")
            .field("children", &inner.children.len())
            .field("errors", &inner.errors.len())
            .field("closed", &inner.closed)
            .finish_non_exhaustive()
    }
}

/// A child future the nursery owns alone (`start_soon`, `start`): nobody awaits its value.
trait Child<E> {
    fn poll_child(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), E>>;
}

pin_project! {
    struct ChildTask<F> {
        #[pin]
        fut: F,
    }
}

impl<F, T, E> Child<E> for ChildTask<F>
where
    F: Future<Output = Result<T, E>>,
{
    fn poll_child(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), E>> {
        match self.project().fut.poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(r) => Poll::Ready(r.map(drop)),
        }
    }
}

/// Closes the nursery to new children.
struct CloseOnDrop<'a, 'n, 'env, E> {
    n: &'a Nursery<'n, 'env, E>,
}

impl<E> Drop for CloseOnDrop<'_, '_, '_, E> {
    fn drop(&mut self) {
        self.n.inner.borrow_mut().closed = true;
    }
}

/// Drops whatever children remain when the nursery future goes away, and leaves the runtime.
struct CloseGuard<'a, 'n, 'env, E> {
    n: &'a Nursery<'n, 'env, E>,
}

impl<E> Drop for CloseGuard<'_, '_, '_, E> {
    fn drop(&mut self) {
        let n = self.n;
        n.inner.borrow_mut().closed = true;
        // Drop children one at a time, with nothing borrowed: a child's destructor may call back
        // into the nursery (and is told it is closed). A destructor that panics does not stop
        // the others from being dropped; the first panic is resumed at the end. The nursery is
        // closed, so no slot below the last one emptied fills again: the search for the next
        // child goes on from there (from 0 each time, a large nursery took quadratic time).
        let mut panics = FirstPanic::default();
        let mut from = 0;
        loop {
            let next = {
                let mut inner = n.inner.borrow_mut();
                let key = inner.children.next_key_from(from);
                key.and_then(|k| inner.children.remove(k).map(|slot| (k, slot)))
            };
            let Some((key, slot)) = next else { break };
            from = key + 1;
            n.core.live_tasks.set(n.core.live_tasks.get() - 1);
            if let Some(t) = &n.core.tracker {
                t.borrow_mut().finished(n.target(key as u32 + 1));
            }
            let node = slot.node();
            if let Some(task) = slot.into_task() {
                panics.catch(|| drop(ManuallyDrop::into_inner(task)));
            }
            if node != NIL {
                n.core.cancel.borrow_mut().exit(node);
            }
        }
        // Wakers kept by children that were dropped unfinished (dropped here, nothing borrowed).
        let kept = std::mem::take(&mut n.inner.borrow_mut().kept);
        let held = kept.iter().flatten().count();
        n.core.held_wakers.set(n.core.held_wakers.get() - held);
        drop(kept);
        let parent = n.core.sched.borrow_mut().close_group(n.group);
        drop(parent);
        if let Some(t) = &n.core.tracker {
            t.borrow_mut().close_nursery(n.group);
        }
        cancel::exit(&n.core, n.node);
        // A child's panic recorded before the nursery future was dropped (by a foreign select
        // or timeout, while siblings were still finishing) comes out too, before any from a
        // destructor: a panic never goes only to stderr.
        let recorded = n.inner.borrow_mut().panic.take();
        if let Some(p) = recorded.or(panics.into_inner())
            && !std::thread::panicking()
        {
            resume_unwind(p);
        }
    }
}

impl<'n, 'env, E> Nursery<'n, 'env, E> {
    fn open(at: &'static std::panic::Location<'static>) -> Self {
        let core = context::core();
        let (group, generation) = core.sched.borrow_mut().open_group();
        let node = cancel::enter(&core, ScopeRef::Own(ScopeState::new()));
        if let Some(t) = &core.tracker {
            t.borrow_mut().open_nursery((group, generation), node, at, core.entity.get().0);
        }
        // The body and the children without a node of their own all park at this node: a
        // cancellation reaching it wakes the whole group.
        core.cancel.borrow_mut().set_group_owner(node, WakeTarget { group, generation, index: BODY });
        let body_waker = TaskWaker::waker(&core.shared, WakeTarget { group, generation, index: BODY });
        // The body is ready to run on the first poll.
        let _ = core.sched.borrow_mut().wake(WakeTarget { group, generation, index: BODY });
        Nursery {
            core,
            group,
            generation,
            body_waker,
            node,
            inner: RefCell::new(Inner {
                children: Slab::new(),
                kept: Vec::new(),
                errors: Vec::new(),
                panic: None,
                closed: false,
                pending_starts: 0,
            }),
            seen_cancelled: Cell::new(false),
            _marker: PhantomData,
        }
    }

    /// A handle to the nursery's cancel scope: cancelling it cancels the body and every child.
    pub fn cancel_scope(&self) -> CancelHandle {
        CancelHandle::from_state(self.core.cancel.borrow_mut().share(self.node))
    }

    /// Number of children still running.
    pub fn child_count(&self) -> usize {
        self.inner.borrow().children.len()
    }

    /// Whether the nursery has finished and takes no new children.
    pub fn is_closed(&self) -> bool {
        self.inner.borrow().closed
    }

    fn target(&self, index: u32) -> WakeTarget {
        WakeTarget { group: self.group, generation: self.generation, index }
    }

    /// Adds a child and schedules it. Returns its index, or gives the task back if closed.
    fn insert_child(&self, task: Task<'n, E>, origin: Origin) -> Result<u32, Task<'n, E>> {
        self.insert_child_at(task, NIL, origin)
    }

    /// Inserts a child with its node (`NIL`: none yet) and schedules it; gives the child back if
    /// the nursery is closed.
    fn insert_child_at(&self, task: Task<'n, E>, node: u32, origin: Origin) -> Result<u32, Task<'n, E>> {
        let index = {
            let mut inner = self.inner.borrow_mut();
            if inner.closed {
                return Err(task);
            }
            let index = inner.children.vacant_key() as u32 + 1;
            inner.children.insert(Slot::new(task, node));
            index
        };
        self.core.live_tasks.set(self.core.live_tasks.get() + 1);
        if let Some(t) = &self.core.tracker {
            t.borrow_mut().spawned(self.target(index), origin);
        }
        self.core.wake(self.target(index));
        Ok(index)
    }

    /// Spawns a child and returns a handle to await its value or cancel it.
    ///
    /// The child starts in the next batch, under the nursery's cancel scope (not under the
    /// scopes around this call, S3.3). It may borrow anything that outlives the nursery. If it
    /// fails, its error goes to the nursery (which cancels its other tasks) and its handle
    /// resolves to [`JoinError::Failed`] (or to the awaiter's own cancellation).
    ///
    /// Memory: the child's future and its result share one allocation with the handle. The
    /// future is dropped as soon as the child ends; the allocation (the future's size plus the
    /// result's) is freed when the handle is dropped too. To keep nothing of a finished child,
    /// drop its handle, or use [`start_soon`](Nursery::start_soon) for a child nobody awaits.
    ///
    /// Spawning into a closed nursery (only possible from a destructor, a child's or the
    /// body's, while the nursery is being torn down) runs nothing: the future is dropped and the
    /// handle reports it.
    #[track_caller]
    pub fn spawn<F, T>(&'n self, future: F) -> JoinHandle<'n, T>
    where
        F: Future<Output = Result<T, E>> + 'n,
        T: 'n,
        E: 'n,
    {
        let origin = Origin::of::<F>();
        let (task, out) = SharedChild::new(future);
        match self.insert_child(Task::Shared(task), origin) {
            Ok(index) => JoinHandle::new(self, index, out),
            Err(task) => {
                drop(task);
                out.cell().set_no_value(JoinError::ChildCancelled(closed_cancelled()));
                JoinHandle::new(self, 0, out)
            }
        }
    }

    /// Spawns a child whose value nobody awaits (Trio's `start_soon`). Cheaper than
    /// [`spawn`](Nursery::spawn): no handle, no per-child scope.
    ///
    /// A closed nursery can only be reached from a destructor (a child's or the body's) while
    /// the nursery is being torn down; there the future is dropped without running (use
    /// [`try_start_soon`](Nursery::try_start_soon) to find out).
    #[track_caller]
    pub fn start_soon<F, T>(&'n self, future: F)
    where
        F: Future<Output = Result<T, E>> + 'n,
        T: 'n,
        E: 'n,
    {
        let _ = self.try_start_soon(future);
    }

    /// Like [`start_soon`](Nursery::start_soon), but reports a closed nursery.
    ///
    /// # Errors
    ///
    /// [`StartError::Closed`], with the future dropped, if the nursery is closed.
    #[track_caller]
    pub fn try_start_soon<F, T>(&'n self, future: F) -> Result<(), StartError>
    where
        F: Future<Output = Result<T, E>> + 'n,
        T: 'n,
        E: 'n,
    {
        let origin = Origin::of::<F>();
        let task = Task::Boxed(Box::pin(ChildTask { fut: future }));
        self.insert_child(task, origin).map(|_| ()).map_err(|_| StartError::Closed)
    }

    /// Records an error and cancels the nursery's scope (S3.4, S3.5).
    fn record_error(&self, e: E, what: &'static str) {
        self.inner.borrow_mut().errors.push(e);
        self.cancel_self(what);
    }

    fn record_panic(&self, p: Box<dyn Any + Send>) {
        {
            let mut inner = self.inner.borrow_mut();
            if inner.panic.is_none() {
                inner.panic = Some(p);
            }
        }
        self.cancel_self("a task in this nursery panicked");
    }

    fn cancel_self(&self, reason: &'static str) {
        // The first cause wins (S4.15): once cancelled, there is nothing to record or wake (each
        // child of a cancelled nursery ends here with its `Cancelled`).
        if self.seen_cancelled.get() {
            return;
        }
        // Cancelled already, or about to be below: either way, for good.
        self.seen_cancelled.set(true);
        if self.core.cancel.borrow().state(self.node).cancel_called.get() {
            return;
        }
        let mut wakeups = Wakeups::default();
        cancel::cancel_node(
            &self.core,
            self.node,
            CancelSource::Nursery,
            Some(Arc::from(reason)),
            &mut wakeups,
        );
        wakeups.wake(&self.core);
    }

    /// Cancels one child (from its handle).
    fn cancel_child(&self, index: u32, reason: Option<Arc<str>>) {
        let node = {
            let mut inner = self.inner.borrow_mut();
            match inner.children.get_mut(index as usize - 1) {
                Some(slot) if slot.node() != NIL => slot.node(),
                Some(slot) if slot.wants_node() => {
                    // The child has not needed a node yet: it has nothing registered, so a fresh
                    // node under the nursery's is all it takes.
                    let state = ScopeRef::Shared(self.core.inert.clone());
                    let node = self.core.cancel.borrow_mut().enter(self.node, state);
                    slot.set_node(node);
                    node
                }
                _ => return,
            }
        };
        {
            // The child's origin of its own, held in its node: no handle can reach it, so it
            // needs no phase or run of its own either.
            let mut tree = self.core.cancel.borrow_mut();
            if tree.state(node).is(&self.core.inert) {
                tree.replace_state(node, ScopeRef::Own(ScopeState::new()));
            }
        }
        let mut wakeups = Wakeups::default();
        cancel::cancel_node(&self.core, node, CancelSource::Explicit, reason, &mut wakeups);
        wakeups.wake(&self.core);
        // Wake the child itself: its parked operations registered before it had its own origin.
        self.core.wake(self.target(index));
    }
}

fn closed_cancelled() -> Cancelled {
    Cancelled::new(CancelSource::Nursery, Some(Arc::from("the nursery was closed; the task never ran")))
}

/// What a [`JoinHandle`] needs from its nursery, without its type parameters.
trait ChildControl {
    fn cancel_child(&self, index: u32, reason: Option<Arc<str>>);
    /// The nursery's run, for a handle's poll (no thread-local look-up).
    fn core(&self) -> &Core;
}

impl<E> ChildControl for Nursery<'_, '_, E> {
    fn cancel_child(&self, index: u32, reason: Option<Arc<str>>) {
        Nursery::cancel_child(self, index, reason)
    }
    fn core(&self) -> &Core {
        &self.core
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_is_24_bytes_whichever_owner_it_holds() {
        // The enum's tag sits beside `node`; a struct holding a two-way `Task` would be 32, and
        // the slab's own tag lives in the slot's niche.
        assert_eq!(std::mem::size_of::<Slot<'static, Cancelled>>(), 24);
        assert_eq!(crate::runtime::slab::entry_size::<Slot<'static, Cancelled>>(), 24);
        assert_eq!(std::mem::size_of::<Task<'static, Cancelled>>(), 24, "a task out of its slot");
    }
}
