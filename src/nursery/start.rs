//! `Nursery::start` and [`TaskStatus`]: start a task, wait until it says it is ready.

use std::cell::RefCell;
use std::fmt;
use std::future::{Future, poll_fn};
use std::rc::Rc;
use std::task::{Poll, Waker};

use super::{BoxedChild, ChildTask, Nursery, Task};
use crate::cancel::StatusGuard;
use crate::error::{CancelError, StartError};
use crate::runtime::cancel_tree::{NIL, ScopeRef, Wakeups};
use crate::runtime::context;
use crate::runtime::tracker::Origin;

/// Given to a task started with [`Nursery::start`]: call [`started`](TaskStatus::started) once
/// the task is ready (for example, once a socket is listening), handing a value to the starter.
///
/// `started` consumes the status, so it cannot be called twice (Trio raises at run time; here it
/// does not compile). A task that can also be awaited directly takes a
/// [`TaskStatus::ignored`] then (ST.8).
///
/// ```compile_fail
/// fn twice(status: hatchery::TaskStatus<u8>) {
///     status.started(1);
///     status.started(2); // error: use of moved value
/// }
/// ```
pub struct TaskStatus<V> {
    cell: Option<Rc<RefCell<Started<V>>>>,
}

/// What `started` hands over: the value, and the waker of the `start` waiting for it while
/// that `start` is not polling the task (so that a `started` from elsewhere, a task the status
/// was handed to, wakes it).
struct Started<V> {
    value: Option<V>,
    starter: Option<Waker>,
}

impl<V> fmt::Debug for TaskStatus<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskStatus").field("ignored", &self.cell.is_none()).finish()
    }
}

impl<V> TaskStatus<V> {
    /// A status whose `started` does nothing, to await a start-able function directly.
    pub fn ignored() -> TaskStatus<V> {
        TaskStatus { cell: None }
    }

    /// Tells the starter that the task is ready and hands it `value`. Once the poll of the task
    /// that called it ends, the task belongs to the nursery `start` was called on, unless the
    /// caller of `start` is cancelled by then (it then stays with the caller, ST.4). Not a
    /// checkpoint. It may be called from another task than the started one (the status may be
    /// handed on): the starter is woken.
    pub fn started(self, value: V) {
        if let Some(cell) = self.cell {
            let starter = {
                let mut c = cell.borrow_mut();
                c.value = Some(value);
                c.starter.take()
            };
            if let Some(w) = starter {
                w.wake();
            }
        }
    }
}

struct PendingStart<'a, 'n, 'env, E> {
    n: &'a Nursery<'n, 'env, E>,
    /// The task's own cancel node while it runs under the caller; `NIL` once it moved.
    node: std::cell::Cell<u32>,
}

impl<E> Drop for PendingStart<'_, '_, '_, E> {
    fn drop(&mut self) {
        let node = self.node.replace(NIL);
        if node != NIL {
            self.n.core.cancel.borrow_mut().exit(node);
        }
        self.n.inner.borrow_mut().pending_starts -= 1;
        // The nursery may have been waiting only for this start: have it look again.
        self.n.core.wake(self.n.target(super::BODY));
    }
}

impl<'n, 'env, E> Nursery<'n, 'env, E> {
    /// Starts a task and waits until it calls [`TaskStatus::started`]; returns the value it
    /// passed (Trio's `nursery.start`).
    ///
    /// Until `started`, the task runs as part of the caller, under the caller's cancel scopes:
    /// cancelling the caller cancels it (ST.4). Then it moves into this nursery, under the
    /// nursery's scope, and `start` returns. An error the task returns before `started` comes out
    /// of `start` unchanged and does not touch the nursery (ST.2); a task that returns without
    /// calling `started` makes `start` fail with [`StartError::NotStarted`] (ST.3). While a start
    /// is pending the nursery stays open (ST.5).
    ///
    /// # Errors
    ///
    /// The task's own error before `started`, [`StartError::NotStarted`], or
    /// [`StartError::Closed`] (at once, without a checkpoint) if the nursery is closed.
    ///
    /// ```
    /// use std::time::Duration;
    /// use hatchery::{nursery, sleep, testing::MockClock, Builder, Error, TaskStatus};
    ///
    /// async fn service(status: TaskStatus<u16>) -> Result<(), Error> {
    ///     sleep(Duration::from_secs(1)).await?; // set up
    ///     status.started(8080);
    ///     sleep(Duration::from_secs(5)).await?; // serve
    ///     Ok(())
    /// }
    ///
    /// Builder::new().clock(MockClock::with_autojump(Duration::ZERO)).run(async {
    ///     nursery(async |n| {
    ///         let port = n.start(service).await?;
    ///         assert_eq!(port, 8080);
    ///         assert_eq!(hatchery::now().as_secs_f64(), 1.0);
    ///         Ok::<_, Error>(())
    ///     })
    ///     .await
    ///     .unwrap();
    ///     assert_eq!(hatchery::now().as_secs_f64(), 6.0);
    /// });
    /// ```
    #[track_caller]
    pub fn start<F, Fut, V, T>(&'n self, f: F) -> impl Future<Output = Result<V, E>>
    where
        F: FnOnce(TaskStatus<V>) -> Fut,
        Fut: Future<Output = Result<T, E>> + 'n,
        V: 'n,
        T: 'n,
        E: From<StartError> + CancelError + 'n,
    {
        // The call's location, for the task-tree dump (an `async fn` cannot track its caller).
        let origin = Origin::of::<Fut>();
        async move {
            if self.inner.borrow().closed {
                return Err(StartError::Closed.into());
            }
            self.inner.borrow_mut().pending_starts += 1;
            // Until `started`, the task runs under the caller's scopes, inside a node of its own, so
            // that everything it opens (scopes, nurseries) and parks on can move with it (ST.1).
            let node = {
                let core = &self.core;
                let parent = core.registration_status();
                core.cancel.borrow_mut().enter(parent, ScopeRef::Shared(core.inert.clone()))
            };
            let guard = PendingStart { n: self, node: std::cell::Cell::new(node) };
            let cell = Rc::new(RefCell::new(Started { value: None, starter: None }));
            let status = TaskStatus { cell: Some(cell.clone()) };
            let mut task: Option<BoxedChild<'n, E>> = Some(Box::pin(ChildTask { fut: f(status) }));
            // The caller's own checkpoint (S2.1): the task's checkpoints are its own, so `start`
            // counts its cancel point (the check below) and its schedule point (a wait, or one yield).
            let mut yielded = false;
            let value = poll_fn(|cx| {
                let core = context::core();
                let t = task.as_mut().expect("start polled after completion");
                // While the task is polled here, a `started` in it needs no wake-up. (After a
                // `started` from elsewhere the task is polled once more for nothing: harmless, and
                // needed when the caller turns out cancelled and keeps it, ST.4.)
                let starter = cell.borrow_mut().starter.take();
                drop(starter);
                // Before `started` the task is the caller's business, but its checkpoints are its own.
                let saved = (core.cancel_points.get(), core.schedule_points.get());
                let res = {
                    let _status = StatusGuard::enter(&core, guard.node.get());
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| t.as_mut().poll_child(cx)))
                };
                core.cancel_points.set(saved.0);
                core.schedule_points.set(saved.1);
                let res = match res {
                    Ok(res) => res,
                    Err(panic) => {
                        task = None;
                        // As an error (below): after `started` (the caller not cancelled) the
                        // task was the nursery's, and so is its panic; before, the caller's.
                        let node = core.current_status.get();
                        let value = cell.borrow_mut().value.take();
                        match value {
                            Some(v) if !core.cancel.borrow().is_effectively_cancelled(node) => {
                                self.record_panic(panic);
                                return Poll::Ready(Ok(v));
                            }
                            _ => std::panic::resume_unwind(panic),
                        }
                    }
                };
                let pending = |yielded: &mut bool| {
                    if !*yielded {
                        *yielded = true;
                        core.schedule_points.set(core.schedule_points.get() + 1);
                    }
                    Poll::Pending
                };
                match res {
                    Poll::Ready(Ok(())) => {
                        task = None;
                        Poll::Ready(
                            cell.borrow_mut().value.take().ok_or_else(|| E::from(StartError::NotStarted)),
                        )
                    }
                    Poll::Ready(Err(e)) => {
                        task = None;
                        // After `started` (and the caller not cancelled), the task belonged to the
                        // nursery already: its error goes there, and `start` has its value.
                        let node = core.current_status.get();
                        let value = cell.borrow_mut().value.take();
                        match value {
                            Some(v) if !core.cancel.borrow().is_effectively_cancelled(node) => {
                                self.record_error(e, "a child task failed");
                                Poll::Ready(Ok(v))
                            }
                            _ => Poll::Ready(Err(e)),
                        }
                    }
                    Poll::Pending => {
                        if cell.borrow().value.is_none() {
                            cell.borrow_mut().starter = Some(cx.waker().clone());
                            return pending(&mut yielded);
                        }
                        // `started` was called. If the caller is already cancelled, the task stays
                        // here (ST.4); otherwise it moves into the nursery.
                        let node = core.current_status.get();
                        core.cancel_points.set(core.cancel_points.get() + 1);
                        if core.cancel.borrow().is_effectively_cancelled(node) {
                            return pending(&mut yielded);
                        }
                        let moved = task.take().expect("task present while pending");
                        // The task's node (and all it holds) moves under the nursery's.
                        let task_node = guard.node.get();
                        core.cancel.borrow_mut().reparent(task_node, self.node);
                        // The slot owns the node from the insertion on, before the wake-up that
                        // follows it (a foreign parent waker may panic there: the guard must not
                        // exit a node the slot holds).
                        guard.node.set(NIL);
                        match self.insert_child_at(Task::Boxed(moved), task_node, origin) {
                            Ok(_) => {
                                // Moved under a nursery that was cancelled already (the caller was
                                // shielded from it): what the task parked on before `started`, in
                                // scopes and nurseries it opened, learns of it now (ST.7).
                                let mut wakeups = Wakeups::default();
                                {
                                    let tree = core.cancel.borrow();
                                    if tree.is_effectively_cancelled(task_node) {
                                        tree.collect(task_node, &mut wakeups);
                                    }
                                }
                                wakeups.wake(&core);
                                Poll::Ready(Ok(cell.borrow_mut().value.take().expect("started value")))
                            }
                            Err(moved) => {
                                guard.node.set(task_node);
                                drop(moved);
                                Poll::Ready(Err(StartError::Closed.into()))
                            }
                        }
                    }
                }
            })
            .await?;
            if !yielded {
                crate::lowlevel::cancel_shielded_checkpoint().await;
            }
            Ok(value)
        }
    }
}
