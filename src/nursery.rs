//! Nurseries: tasks that have an owner.
//!
//! # How children can borrow, soundly and without `unsafe`
//!
//! [`nursery`] is an `async fn`. Its frame holds the [`Nursery`] as a local and the body's
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
//! Children are stored as `ManuallyDrop<Pin<Box<dyn Child + 'n>>>`: a type with no drop glue
//! for `'n`, which is what lets the nursery be borrowed for `'n` by the very futures it stores
//! (drop-check would otherwise reject it). Every child is dropped explicitly, exactly once:
//! when it finishes, or by the guard. A child is taken out of its slot while it is polled, so the
//! nursery's state is never borrowed while user code runs.
//!
//! # Scheduling and cancellation
//!
//! Each nursery has a group in the scheduler (see `runtime/sched.rs`) and a cancel scope whose
//! parent is the status where the nursery was opened; the body and the children run under it
//! (S3.3). Children spawned with [`Nursery::spawn`] get a node of their own under that scope,
//! so that [`JoinHandle::cancel`] can cancel one child.

use std::any::Any;
use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::mem::ManuallyDrop;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use pin_project_lite::pin_project;

use crate::cancel::{self, CancelHandle, StatusGuard};
use crate::error::{CancelError, CancelSource, Cancelled, JoinError, NurseryError, StartError};
use crate::runtime::cancel_tree::{NIL, ScopeState};
use crate::runtime::context::{self, Core};
use crate::runtime::sched::{BODY, TaskWaker, WakeTarget};
use crate::runtime::slab::Slab;

mod handle;
mod start;

pub use handle::JoinHandle;
use handle::OutCell;
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
pub async fn nursery<'env, B, T, E>(body: B) -> Result<Option<T>, NurseryError<E>>
where
    B: for<'n> AsyncFnOnce(&'n Nursery<'n, 'env, E>) -> Result<T, E>,
    E: CancelError,
{
    let n = Nursery::open();
    let _guard = CloseGuard { n: &n };
    let body = body(&n);
    let mut body = std::pin::pin!(body);
    let mut state = RunState { body: BodyState::Running, closing: false };
    std::future::poll_fn(|cx| n.poll_nursery(cx, body.as_mut(), &mut state)).await
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
    scope: Rc<ScopeState>,
    node: u32,
    inner: RefCell<Inner<'n, E>>,
    _marker: PhantomData<&'n mut &'env ()>,
}

type BoxedChild<'n, E> = Pin<Box<dyn Child<E> + 'n>>;

struct Slot<'n, E> {
    /// `None` while the child is being polled.
    task: Option<ManuallyDrop<BoxedChild<'n, E>>>,
    /// The child's waker, made at its first poll (from the run's pool) and kept until it ends.
    /// Kept as the `Arc` (8 bytes; a `Waker` is made from a clone for each poll) so that it can go
    /// back to the pool.
    waker: Option<Arc<TaskWaker>>,
    /// The child's own cancel-status node, once it has one (`NIL` before).
    node: u32,
    /// Whether the child may need a node of its own (it has a handle that can cancel it). The
    /// node is created lazily: when the child first parks, enters a scope or opens a nursery, or
    /// when its handle cancels it. Trivial children never get one.
    wants_node: bool,
}

struct Inner<'n, E> {
    children: Slab<Slot<'n, E>>,
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

/// A child future as the nursery sees it.
trait Child<E> {
    fn poll_child(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), E>>;
    /// The child ended without a value (failed, panicked, cancelled): tell its handle why.
    fn no_value(self: Pin<&mut Self>, why: JoinError);
}

pin_project! {
    struct ChildTask<F, T> {
        #[pin]
        fut: F,
        out: Option<Rc<OutCell<T>>>,
    }
}

impl<F, T, E> Child<E> for ChildTask<F, T>
where
    F: Future<Output = Result<T, E>>,
{
    fn poll_child(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), E>> {
        let this = self.project();
        match this.fut.poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(v)) => {
                if let Some(out) = this.out {
                    out.set_value(v);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        }
    }

    fn no_value(self: Pin<&mut Self>, why: JoinError) {
        if let Some(out) = self.project().out {
            out.set_no_value(why);
        }
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
        // the others from being dropped; the first panic is resumed at the end.
        let mut panic = None;
        loop {
            let next = {
                let mut inner = n.inner.borrow_mut();
                let key = inner.children.iter().map(|(k, _)| k).next();
                key.and_then(|k| inner.children.remove(k))
            };
            let Some(slot) = next else { break };
            n.core.live_tasks.set(n.core.live_tasks.get() - 1);
            if let Some(task) = slot.task
                && let Err(p) = catch_unwind(AssertUnwindSafe(|| drop(ManuallyDrop::into_inner(task))))
            {
                panic.get_or_insert(p);
            }
            if slot.node != NIL {
                n.core.cancel.borrow_mut().exit(slot.node);
            }
            if let Some(w) = slot.waker {
                n.core.wakers.borrow_mut().put(w);
            }
        }
        let parent = n.core.sched.borrow_mut().close_group(n.group);
        drop(parent);
        cancel::exit(&n.core, &n.scope, n.node);
        if let Some(p) = panic
            && !std::thread::panicking()
        {
            resume_unwind(p);
        }
    }
}

impl<'n, 'env, E> Nursery<'n, 'env, E> {
    fn open() -> Self {
        let core = context::core();
        let (group, generation) = core.sched.borrow_mut().open_group();
        let scope = ScopeState::new();
        let node = cancel::enter(&core, &scope);
        let body_waker = TaskWaker::waker(&core.shared, WakeTarget { group, generation, index: BODY });
        // The body is ready to run on the first poll.
        let _ = core.sched.borrow_mut().wake(WakeTarget { group, generation, index: BODY });
        Nursery {
            core,
            group,
            generation,
            body_waker,
            scope,
            node,
            inner: RefCell::new(Inner {
                children: Slab::new(),
                errors: Vec::new(),
                panic: None,
                closed: false,
                pending_starts: 0,
            }),
            _marker: PhantomData,
        }
    }

    /// A handle to the nursery's cancel scope: cancelling it cancels the body and every child.
    pub fn cancel_scope(&self) -> CancelHandle {
        CancelHandle::from_state(self.scope.clone())
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
    fn insert_child(&self, task: BoxedChild<'n, E>, own_node: bool) -> Result<u32, BoxedChild<'n, E>> {
        self.insert_child_at(task, own_node, NIL)
    }

    /// Like `insert_child`, for a child that already has its own node (a started task).
    fn insert_child_at(
        &self,
        task: BoxedChild<'n, E>,
        own_node: bool,
        node: u32,
    ) -> Result<u32, BoxedChild<'n, E>> {
        let index = {
            let mut inner = self.inner.borrow_mut();
            if inner.closed {
                return Err(task);
            }
            let index = inner.children.vacant_key() as u32 + 1;
            inner.children.insert(Slot {
                task: Some(ManuallyDrop::new(task)),
                waker: None,
                node,
                wants_node: own_node,
            });
            index
        };
        self.core.live_tasks.set(self.core.live_tasks.get() + 1);
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
    /// Spawning into a closed nursery (only possible from a child's destructor while the nursery
    /// is being torn down) runs nothing: the future is dropped and the handle reports it.
    pub fn spawn<F, T>(&'n self, future: F) -> JoinHandle<'n, T>
    where
        F: Future<Output = Result<T, E>> + 'n,
        T: 'n,
        E: 'n,
    {
        let out = Rc::new(OutCell::new());
        let task: BoxedChild<'n, E> = Box::pin(ChildTask { fut: future, out: Some(out.clone()) });
        match self.insert_child(task, true) {
            Ok(index) => JoinHandle::new(self, index, out),
            Err(task) => {
                drop(task);
                out.set_no_value(JoinError::ChildCancelled(closed_cancelled()));
                JoinHandle::new(self, 0, out)
            }
        }
    }

    /// Spawns a child whose value nobody awaits (Trio's `start_soon`). Cheaper than
    /// [`spawn`](Nursery::spawn): no handle, no per-child scope.
    ///
    /// A closed nursery can only be reached from a child's destructor while the nursery is
    /// being torn down; there the future is dropped without running (use
    /// [`try_start_soon`](Nursery::try_start_soon) to find out).
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
    pub fn try_start_soon<F, T>(&'n self, future: F) -> Result<(), StartError>
    where
        F: Future<Output = Result<T, E>> + 'n,
        T: 'n,
        E: 'n,
    {
        let task: BoxedChild<'n, E> = Box::pin(ChildTask { fut: future, out: None::<Rc<OutCell<T>>> });
        self.insert_child(task, false).map(|_| ()).map_err(|_| StartError::Closed)
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
        let mut wakers = Vec::new();
        cancel::cancel_node(
            &self.core,
            self.node,
            CancelSource::Nursery,
            Some(Arc::from(reason)),
            &mut wakers,
        );
        wakers.into_iter().for_each(Waker::wake);
    }

    /// Cancels one child (from its handle).
    fn cancel_child(&self, index: u32, reason: Option<Arc<str>>) {
        let node = {
            let mut inner = self.inner.borrow_mut();
            match inner.children.get_mut(index as usize - 1) {
                Some(slot) if slot.node != NIL => slot.node,
                Some(slot) if slot.wants_node => {
                    // The child has not needed a node yet: it has nothing registered, so a fresh
                    // node under the nursery's is all it takes.
                    let node = self.core.cancel.borrow_mut().enter(self.node, self.core.inert.clone());
                    slot.node = node;
                    node
                }
                _ => return,
            }
        };
        let state = {
            let mut tree = self.core.cancel.borrow_mut();
            if Rc::ptr_eq(tree.state(node), &self.core.inert) {
                let own = ScopeState::new();
                tree.replace_state(node, own.clone());
                own
            } else {
                tree.state(node).clone()
            }
        };
        state.phase.set(crate::runtime::cancel_tree::Phase::Entered(node));
        state.run.set(self.core.id);
        let mut wakers = Vec::new();
        cancel::cancel_node(&self.core, node, CancelSource::Explicit, reason, &mut wakers);
        wakers.into_iter().for_each(Waker::wake);
        // Wake the child itself: its parked operations registered before it had its own origin.
        self.core.wake(self.target(index));
    }

    fn poll_nursery<B, T>(
        &self,
        cx: &mut Context<'_>,
        mut body: Pin<&mut B>,
        st: &mut RunState<T>,
    ) -> Poll<Result<Option<T>, NurseryError<E>>>
    where
        B: Future<Output = Result<T, E>>,
        E: CancelError,
    {
        let core = &self.core;
        if !st.closing {
            let (mut batch, old_parent) =
                core.sched.borrow_mut().begin_poll(self.group, cx.waker(), core.entity.get());
            drop(old_parent);
            core.order_batch(&mut batch);
            {
                let _status = StatusGuard::enter(core, self.node);
                for &index in &batch {
                    core.sched.borrow_mut().unqueue(self.group, index);
                    if index == BODY {
                        if let BodyState::Running = st.body {
                            let mut bcx = Context::from_waker(&self.body_waker);
                            let (data, vtable) = context::waker_id(&self.body_waker);
                            let prev = core.entity.replace((self.target(BODY), data, vtable));
                            let res = catch_unwind(AssertUnwindSafe(|| body.as_mut().poll(&mut bcx)));
                            core.entity.set(prev);
                            match res {
                                Ok(Poll::Pending) => {}
                                Ok(Poll::Ready(Ok(v))) => st.body = BodyState::Done(Some(v)),
                                Ok(Poll::Ready(Err(e))) => {
                                    st.body = BodyState::Done(None);
                                    self.record_error(e, "the nursery's body returned an error");
                                }
                                Err(p) => {
                                    st.body = BodyState::Done(None);
                                    self.record_panic(p);
                                }
                            }
                        }
                    } else {
                        self.poll_child(index);
                    }
                }
            }
            core.sched.borrow_mut().recycle(self.group, batch);
            let inner = self.inner.borrow();
            let done = matches!(st.body, BodyState::Done(_))
                && inner.children.len() == 0
                && inner.pending_starts == 0;
            drop(inner);
            if !done {
                return Poll::Pending;
            }
            // Closing is a schedule point, never a cancel point (S3.9).
            st.closing = true;
            core.schedule_points.set(core.schedule_points.get() + 1);
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        // Finish.
        let (panic, errors) = {
            let mut inner = self.inner.borrow_mut();
            inner.closed = true;
            (inner.panic.take(), std::mem::take(&mut inner.errors))
        };
        if let Some(p) = panic {
            resume_unwind(p);
        }
        let value = match std::mem::replace(&mut st.body, BodyState::Done(None)) {
            BodyState::Done(v) => v,
            BodyState::Running => None,
        };
        if errors.is_empty() {
            return Poll::Ready(Ok(value));
        }
        match cancel::absorb(core, &self.scope, self.node, NurseryError::new(errors)) {
            None => Poll::Ready(Ok(value)),
            Some(rest) => Poll::Ready(Err(rest)),
        }
    }

    fn poll_child(&self, index: u32)
    where
        E: CancelError,
    {
        let core = &self.core;
        let taken = {
            let mut inner = self.inner.borrow_mut();
            match inner.children.get_mut(index as usize - 1) {
                Some(slot) => match slot.task.take() {
                    Some(t) => {
                        let waker = match slot.waker.take() {
                            Some(w) => w,
                            None => core.wakers.borrow_mut().get(&core.shared, self.target(index)),
                        };
                        Some((t, waker, slot.node, slot.wants_node))
                    }
                    None => None,
                },
                None => None,
            }
        };
        let Some((mut task, waker, node, wants_node)) = taken else { return };
        let (status, lazy) = if node != NIL { (node, false) } else { (self.node, wants_node) };
        let saved = (core.cancel_points.get(), core.schedule_points.get(), core.materialized.replace(NIL));
        let task_waker = Waker::from(waker.clone());
        let (data, vtable) = context::waker_id(&task_waker);
        let prev_entity = core.entity.replace((self.target(index), data, vtable));
        let res = {
            let _status = StatusGuard::enter_lazy(core, status, lazy);
            let mut cx = Context::from_waker(&task_waker);
            catch_unwind(AssertUnwindSafe(|| task.as_mut().poll_child(&mut cx)))
        };
        core.entity.set(prev_entity);
        core.cancel_points.set(saved.0);
        core.schedule_points.set(saved.1);
        let made = core.materialized.replace(saved.2);
        let node = self.reconcile_node(index, node, made);
        match res {
            Ok(Poll::Pending) => {
                let mut inner = self.inner.borrow_mut();
                let slot = &mut inner.children[index as usize - 1];
                slot.task = Some(task);
                slot.waker = Some(waker);
                slot.node = node;
                return;
            }
            Ok(Poll::Ready(Ok(()))) => self.finish_child(index, task, node),
            Ok(Poll::Ready(Err(e))) => {
                let absorbed = if node != NIL {
                    let state = core.cancel.borrow().state(node).clone();
                    cancel::absorb(core, &state, node, e)
                } else {
                    Some(e)
                };
                match absorbed {
                    None => {
                        let why = core.cancel.borrow().state(node).cause();
                        self.tell_handle(&mut task, JoinError::ChildCancelled(why));
                    }
                    Some(e) => {
                        let why = match e.cancelled() {
                            Some(c) => JoinError::ChildCancelled(c.clone()),
                            None => JoinError::Failed,
                        };
                        self.tell_handle(&mut task, why);
                        self.record_error(e, "a child task failed");
                    }
                }
                self.finish_child(index, task, node);
            }
            Err(p) => {
                self.tell_handle(&mut task, JoinError::Failed);
                self.record_panic(p);
                self.finish_child(index, task, node);
            }
        }
        drop(task_waker);
        core.wakers.borrow_mut().put(waker);
    }

    /// After a poll of child `index`, works out its node: `before` (its node before the poll),
    /// `made` (created by the child during the poll, lazily) and whatever its handle created
    /// meanwhile to cancel it (the child cancelled itself, or a task it polls did).
    fn reconcile_node(&self, index: u32, before: u32, made: u32) -> u32 {
        let during = self.inner.borrow().children.get(index as usize - 1).map_or(before, |s| s.node);
        if during == before {
            return if made != NIL { made } else { before };
        }
        if made == NIL {
            return during;
        }
        // Both exist: the child's registrations are under `made`, the cancellation is on
        // `during`. Give `made` the cancelled origin and wake what hangs below it.
        let mut wakers = Vec::new();
        {
            let mut tree = self.core.cancel.borrow_mut();
            let state = tree.state(during).clone();
            tree.replace_state(made, state);
            tree.exit(during);
            tree.collect_wakers(made, &mut wakers);
        }
        wakers.into_iter().for_each(Waker::wake);
        made
    }

    /// Tells a child's handle why there is no value. Waking the awaiting task calls its waker,
    /// which may be foreign code: a panic there counts as the child's.
    fn tell_handle(&self, task: &mut ManuallyDrop<BoxedChild<'n, E>>, why: JoinError) {
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| task.as_mut().no_value(why))) {
            self.record_panic(p);
        }
    }

    fn finish_child(&self, index: u32, task: ManuallyDrop<BoxedChild<'n, E>>, node: u32) {
        self.inner.borrow_mut().children.remove(index as usize - 1);
        self.core.live_tasks.set(self.core.live_tasks.get() - 1);
        // The child's destructor is user code: run it with nothing borrowed, and treat a panic
        // in it like a panic of the child.
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| drop(ManuallyDrop::into_inner(task)))) {
            self.record_panic(p);
        }
        if node != NIL {
            self.core.cancel.borrow_mut().exit(node);
        }
    }
}

fn closed_cancelled() -> Cancelled {
    Cancelled::new(CancelSource::Nursery, Some(Arc::from("the nursery was closed; the task never ran")))
}

/// What a [`JoinHandle`] needs from its nursery, without its type parameters.
trait ChildControl {
    fn cancel_child(&self, index: u32, reason: Option<Arc<str>>);
}

impl<E> ChildControl for Nursery<'_, '_, E> {
    fn cancel_child(&self, index: u32, reason: Option<Arc<str>>) {
        Nursery::cancel_child(self, index, reason)
    }
}
