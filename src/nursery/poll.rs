//! The nursery's poll: one batch of its body and children, and what happens when a child ends.
//!
//! Ground rules: a child is taken out of its slot while it is polled, so the nursery's state is
//! never borrowed while user code runs; its status, lazy flag, checkpoint counters, `entity` and
//! `materialized` are set around the poll and restored after it.

use std::future::Future;
use std::mem::ManuallyDrop;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::pin::Pin;
use std::task::{Context, Poll};

use super::{BodyState, Nursery, RunState, Task};
use crate::cancel::{self, StatusGuard};
use crate::error::{CancelError, JoinError, NurseryError};
use crate::runtime::cancel_tree::{NIL, Wakeups};
use crate::runtime::context;
use crate::runtime::sched::BODY;

impl<'n, 'env, E> Nursery<'n, 'env, E> {
    pub(super) fn poll_nursery<B, T>(
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
        context::assert_current(core);
        if !st.closing {
            let (task, data, vtable) = core.entity.get();
            let local = if context::waker_id(cx.waker()) == (data, vtable) {
                Some(task)
            } else {
                keep_foreign_parent(core, self.group, cx.waker());
                None
            };
            let (mut batch, old_parent, all) = core.sched.borrow_mut().begin_poll(self.group, local);
            if let Some(t) = &core.tracker {
                t.borrow_mut().nursery_polled(self.group, task);
            }
            if all {
                // A cancellation reached the nursery's node: every task of the group runs.
                let inner = self.inner.borrow();
                let mut sched = core.sched.borrow_mut();
                batch.reserve(inner.children.len() + 1);
                let children = inner.children.iter().map(|(key, _)| key as u32 + 1);
                sched.queue(self.group, std::iter::once(BODY).chain(children), &mut batch);
            }
            // Only now, with the batch complete: a foreign waker's destructor is foreign code,
            // and what it wakes belongs to the next batch.
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
                            let budget = core.begin_turn();
                            if let Some(t) = &core.tracker {
                                t.borrow_mut().begin_poll(self.target(BODY), core.now());
                            }
                            let res = catch_unwind(AssertUnwindSafe(|| body.as_mut().poll(&mut bcx)));
                            core.budget.set(budget);
                            core.entity.set(prev);
                            if let Some(t) = &core.tracker
                                && !matches!(res, Ok(Poll::Pending))
                            {
                                t.borrow_mut().body_done(self.target(BODY));
                            }
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
            if !core.pass_schedule_point() {
                core.wake_self(cx.waker());
                return Poll::Pending;
            }
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
        match cancel::absorb(core, self.node, NurseryError::new(errors)) {
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
                Some(slot) => match slot.take() {
                    Some(t) => {
                        let (node, wants_node) = (slot.node(), slot.wants_node());
                        let kept = inner.kept.get_mut(index as usize - 1).and_then(Option::take);
                        let waker = match kept {
                            Some(w) => {
                                core.held_wakers.set(core.held_wakers.get() - 1);
                                w
                            }
                            None => core.wakers.borrow_mut().lend(&core.shared, self.target(index)),
                        };
                        Some((t, waker, node, wants_node))
                    }
                    None => None,
                },
                None => None,
            }
        };
        let Some((mut task, waker, node, wants_node)) = taken else { return };
        let (status, lazy) = if node != NIL { (node, false) } else { (self.node, wants_node) };
        let saved = (
            core.cancel_points.get(),
            core.schedule_points.get(),
            core.materialized.replace(NIL),
            core.begin_turn(),
        );
        let task_waker = waker.waker();
        let (data, vtable) = context::waker_id(task_waker);
        let prev_entity = core.entity.replace((self.target(index), data, vtable));
        if let Some(t) = &core.tracker {
            t.borrow_mut().begin_poll(self.target(index), core.now());
        }
        let res = {
            let _status = StatusGuard::enter_lazy(core, status, lazy);
            let mut cx = Context::from_waker(task_waker);
            catch_unwind(AssertUnwindSafe(|| task.poll_child(&mut cx)))
        };
        core.entity.set(prev_entity);
        core.cancel_points.set(saved.0);
        core.schedule_points.set(saved.1);
        core.budget.set(saved.3);
        let made = core.materialized.replace(saved.2);
        // The waker goes back to the pool unless a clone of it is registered somewhere.
        let kept = core.wakers.borrow_mut().give_back(waker);
        let node = self.reconcile_node(index, node, made);
        match res {
            Ok(Poll::Pending) => {
                let mut inner = self.inner.borrow_mut();
                let slot = &mut inner.children[index as usize - 1];
                slot.set_node(node);
                slot.put_back(task);
                if let Some(w) = kept {
                    let i = index as usize - 1;
                    if i >= inner.kept.len() {
                        inner.kept.resize_with((i + 1).next_power_of_two(), || None);
                    }
                    inner.kept[i] = Some(w);
                    core.held_wakers.set(core.held_wakers.get() + 1);
                }
            }
            Ok(Poll::Ready(Ok(()))) => self.finish_child(index, task, node),
            Ok(Poll::Ready(Err(e))) => {
                // `absorb` runs the error type's `CancelError` methods, which are user code for a
                // user's error type: a panic there counts as the child's (it would otherwise
                // leave the child out of its slot, never dropped).
                let absorbed = if node != NIL {
                    catch_unwind(AssertUnwindSafe(|| cancel::absorb(core, node, e)))
                } else {
                    Ok(Some(e))
                };
                match absorbed {
                    Err(p) => {
                        self.tell_handle(&mut task, &|| JoinError::Failed);
                        self.record_panic(p);
                    }
                    Ok(None) => {
                        let why = || JoinError::ChildCancelled(core.cancel.borrow().state(node).cause());
                        self.tell_handle(&mut task, &why);
                    }
                    Ok(Some(e)) => {
                        let why = || match e.cancelled() {
                            Some(c) => JoinError::ChildCancelled(c.clone()),
                            None => JoinError::Failed,
                        };
                        self.tell_handle(&mut task, &why);
                        self.record_error(e, "a child task failed");
                    }
                }
                self.finish_child(index, task, node);
            }
            Err(p) => {
                self.tell_handle(&mut task, &|| JoinError::Failed);
                self.record_panic(p);
                self.finish_child(index, task, node);
            }
        }
    }

    /// After a poll of child `index`, works out its node: `before` (its node before the poll),
    /// `made` (created by the child during the poll, lazily) and whatever its handle created
    /// meanwhile to cancel it (the child cancelled itself, or a task it polls did).
    fn reconcile_node(&self, index: u32, before: u32, made: u32) -> u32 {
        let during = self.inner.borrow().children.get(index as usize - 1).map_or(before, |s| s.node());
        if during == before {
            return if made != NIL { made } else { before };
        }
        if made == NIL {
            return during;
        }
        // Both exist: the child's registrations are under `made`, the cancellation is on
        // `during`. Give `made` the cancelled origin and wake what hangs below it.
        // The slot names `made` from now on: `during` is freed below, and the slot must not name
        // a freed node even for the moment before the caller stores the result (a handle's
        // cancel, woken re-entrantly, reads it).
        if let Some(slot) = self.inner.borrow_mut().children.get_mut(index as usize - 1) {
            slot.set_node(made);
        }
        let mut wakeups = Wakeups::default();
        {
            let mut tree = self.core.cancel.borrow_mut();
            let state = tree.exit(during);
            tree.replace_state(made, state);
            tree.collect(made, &mut wakeups);
        }
        wakeups.wake(&self.core);
        made
    }

    /// Tells a child's handle why there is no value. Working out why may call the error type's
    /// `CancelError` methods, and waking the awaiting task calls its waker: both may be foreign
    /// code, and a panic there counts as the child's. The handle is told all the same (as
    /// `Failed`), or it would wait for ever.
    fn tell_handle(&self, task: &mut ManuallyDrop<Task<'n, E>>, why: &dyn Fn() -> JoinError) {
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| task.no_value(why))) {
            // A second word after a panicking waker only replaces the first (no second wake).
            if let Err(again) = catch_unwind(AssertUnwindSafe(|| task.no_value(&|| JoinError::Failed))) {
                // The waker panicked again: the first panic is the one recorded.
                std::mem::forget(again);
            }
            self.record_panic(p);
        }
    }

    fn finish_child(&self, index: u32, task: ManuallyDrop<Task<'n, E>>, node: u32) {
        self.inner.borrow_mut().children.remove(index as usize - 1);
        self.core.live_tasks.set(self.core.live_tasks.get() - 1);
        if let Some(t) = &self.core.tracker {
            t.borrow_mut().finished(self.target(index));
        }
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

/// A nursery polled with a foreign waker (a combinator's): its group keeps a clone of that waker
/// to wake, unless it has one that wakes the same. The clone is foreign code, so it is made with
/// the scheduler free; the waker replaced is dropped after the borrow.
#[cold]
#[inline(never)]
fn keep_foreign_parent(core: &crate::runtime::context::Core, group: u32, waker: &std::task::Waker) {
    if core.sched.borrow().needs_parent(group, waker) {
        let fresh = std::rc::Rc::new(waker.clone());
        let old = core.sched.borrow_mut().set_foreign_parent(group, fresh);
        drop(old);
    }
}
