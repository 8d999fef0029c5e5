//! [`JoinHandle`]: await a child's value, or cancel that one child.

use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};

use super::ChildControl;
use super::shared::Output;
use crate::error::JoinError;
use crate::lowlevel::{Here, Park, Wakeup};
use crate::runtime::context;

enum Out<T> {
    /// The child runs; the handle's wake-up while it waits. Kept in this variant, not beside
    /// it: the enum's tag then lives in the wake-up's, and the cell of a `u64` child is 24
    /// bytes, not 40 (with the `Rc` header and a trivial future, a 56-byte request, the
    /// allocator's 64-byte class, instead of 72 and 80).
    Running(Option<Wakeup>),
    Value(T),
    /// Boxed: rare, and it keeps the cell small for every child.
    NoValue(Box<JoinError>),
    Taken,
}

/// Where a child leaves its value for its handle.
pub(crate) struct OutCell<T> {
    out: Cell<Out<T>>,
}

impl<T> OutCell<T> {
    pub(crate) fn new() -> Self {
        OutCell { out: Cell::new(Out::Running(None)) }
    }

    fn finish(&self, out: Out<T>) {
        match self.out.replace(out) {
            Out::Running(Some(w)) => w.wake(),
            Out::Running(None) => {}
            // Finished already: the waker the first finish woke panicked, so the nursery counts
            // the child as failed and says so again. The later word stands (as the handle's
            // `JoinError::Failed`), and the earlier value is dropped.
            earlier => drop(earlier),
        }
    }

    pub(crate) fn set_value(&self, v: T) {
        self.finish(Out::Value(v));
    }

    pub(crate) fn set_no_value(&self, why: JoinError) {
        self.finish(Out::NoValue(Box::new(why)));
    }

    /// Puts back a state taken out with `replace(Out::Taken)`. The placeholder it displaces is
    /// forgotten, not dropped: it owns nothing, and dropping an `Out` is an out-of-line call
    /// (a wake-up may hold a waker) on the handle's every poll.
    #[inline]
    fn put_back(&self, out: Out<T>) {
        let placeholder = self.out.replace(out);
        debug_assert!(matches!(placeholder, Out::Taken), "hatchery internal error: output cell changed");
        std::mem::forget(placeholder);
    }

    /// Looks at the state (a `Cell` of a type that is not `Copy` lends no reference).
    #[inline]
    fn peek<R>(&self, f: impl FnOnce(&Out<T>) -> R) -> R {
        let out = self.out.replace(Out::Taken);
        let r = f(&out);
        self.put_back(out);
        r
    }

    fn is_taken(&self) -> bool {
        self.peek(|out| matches!(out, Out::Taken))
    }

    pub(super) fn is_finished(&self) -> bool {
        self.peek(|out| !matches!(out, Out::Running(_)))
    }

    /// Sets the handle's wake-up while the child runs; returns the one replaced, to drop (a
    /// waker's destructor is foreign code, and may run with the cell in any state).
    #[must_use = "drop the replaced wake-up"]
    fn set_waiter(&self, w: Option<Wakeup>) -> Option<Wakeup> {
        match self.out.replace(Out::Taken) {
            Out::Running(old) => {
                self.put_back(Out::Running(w));
                old
            }
            other => {
                self.put_back(other);
                w
            }
        }
    }

    /// The result, if the child has finished and it was not taken yet. The value's path is
    /// inline (an await of a finished child is the common case); the rest is not.
    #[inline]
    pub(super) fn take(&self) -> Option<Result<T, JoinError>> {
        match self.out.replace(Out::Taken) {
            Out::Value(v) => Some(Ok(v)),
            other => self.take_other(other),
        }
    }

    #[cold]
    #[inline(never)]
    fn take_other(&self, out: Out<T>) -> Option<Result<T, JoinError>> {
        match out {
            running @ Out::Running(_) => {
                self.put_back(running);
                None
            }
            Out::Value(v) => Some(Ok(v)),
            Out::NoValue(why) => {
                self.put_back(Out::NoValue(why.clone()));
                // If the awaiting code is itself cancelled (typically: the child failed, and its
                // nursery, which the awaiter is in, is cancelling), say so: that is the error the
                // awaiter's scopes know how to absorb.
                let core = context::core();
                let mine = core.cancel.borrow().effective(core.current_status.get());
                Some(Err(mine.map(JoinError::Cancelled).unwrap_or(*why)))
            }
            Out::Taken => None,
        }
    }
}

/// A handle to a child spawned with [`Nursery::spawn`](crate::Nursery::spawn).
///
/// Await it (or a `&mut` to it) for the child's value. Awaiting is a checkpoint. It resolves to:
/// - `Ok(value)` when the child returned `Ok(value)`;
/// - `Err(JoinError::Cancelled)` when the awaiting code itself is cancelled (the value, if it
///   comes, stays in the handle: await it again later);
/// - `Err(JoinError::Failed)` when the child failed or panicked (its error went to the nursery);
/// - `Err(JoinError::ChildCancelled)` when the child was cancelled before producing a value.
///
/// Only `JoinError::Cancelled` is a cancellation of the awaiting code. A child you cancelled
/// yourself gives
/// `ChildCancelled`, which `?` propagates as an ordinary error, never as a silent cancellation of
/// the nursery.
///
/// Dropping the handle does not affect the child (it frees the child's allocation if the child has
/// ended: see [`Nursery::spawn`](crate::Nursery::spawn)). The handle cannot outlive its nursery.
///
/// # Panics
///
/// Awaiting it again after its value was taken (by an earlier await that returned it, or by
/// [`try_take`](JoinHandle::try_take)), as a future polled after it completed. An error result
/// is not taken away: awaiting again returns it again. `try_take` panics outside a run when the
/// child ended without a value (it looks up whether the awaiting code is cancelled).
pub struct JoinHandle<'n, T> {
    ctl: &'n dyn ChildControl,
    index: u32,
    out: Pin<Rc<dyn Output<T> + 'n>>,
    state: JoinState,
    park: Park,
}

#[derive(Clone, Copy)]
enum JoinState {
    Start,
    Waiting,
    Yielding,
}

impl<T> fmt::Debug for JoinHandle<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinHandle").field("finished", &self.out.cell().is_finished()).finish_non_exhaustive()
    }
}

impl<'n, T> JoinHandle<'n, T> {
    pub(super) fn new(ctl: &'n dyn ChildControl, index: u32, out: Pin<Rc<dyn Output<T> + 'n>>) -> Self {
        JoinHandle { ctl, index, out, state: JoinState::Start, park: Park::new() }
    }

    /// Cancels this child only (its own scope absorbs the cancellation). Not a checkpoint; no
    /// effect once the child has finished.
    pub fn cancel(&self) {
        if !self.out.cell().is_finished() && self.index != 0 {
            self.ctl.cancel_child(self.index, None);
        }
    }

    /// Like [`cancel`](JoinHandle::cancel), with a reason the child's [`Cancelled`](crate::Cancelled) carries.
    pub fn cancel_with_reason(&self, reason: impl Into<String>) {
        if !self.out.cell().is_finished() && self.index != 0 {
            self.ctl.cancel_child(self.index, Some(Arc::from(reason.into())));
        }
    }

    /// Whether the child has finished (with or without a value).
    pub fn is_finished(&self) -> bool {
        self.out.cell().is_finished()
    }

    /// The child's result if it has finished and was not taken yet, without waiting (not a
    /// checkpoint).
    pub fn try_take(&mut self) -> Option<Result<T, JoinError>> {
        self.out.cell().take()
    }
}

impl<T> Unpin for JoinHandle<'_, T> {}

impl<T> Future for JoinHandle<'_, T> {
    type Output = Result<T, JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        // One virtual call for the poll: the cell is inside the child's allocation, whose type the
        // handle cannot name.
        let out = this.out.cell();
        assert!(
            !out.is_taken(),
            "a hatchery JoinHandle was awaited after its value was taken (by an earlier await or try_take)"
        );
        // The run, from the nursery, for the whole poll.
        let here = Here::of(this.ctl.core());
        loop {
            match this.state {
                JoinState::Start => {
                    here.cancel_point().map_err(JoinError::Cancelled)?;
                    this.state = if out.is_finished() { JoinState::Yielding } else { JoinState::Waiting };
                    // Fast path: a schedule point that cannot fail, then the value (S2.3).
                    if let JoinState::Yielding = this.state
                        && !here.schedule_point(cx)
                    {
                        return Poll::Pending;
                    }
                }
                JoinState::Yielding => {
                    this.state = JoinState::Start;
                    // Only this handle takes the value, and it is borrowed for this poll.
                    return Poll::Ready(out.take().expect("a finished child keeps its result"));
                }
                JoinState::Waiting => {
                    if let Some(r) = out.take() {
                        this.park.unpark();
                        this.state = JoinState::Start;
                        return Poll::Ready(r);
                    }
                    if let Poll::Ready(c) =
                        here.poll_cancel(&mut this.park, cx, crate::debug::WaitingOn::Join)
                    {
                        drop(out.set_waiter(None));
                        this.state = JoinState::Start;
                        return Poll::Ready(Err(JoinError::Cancelled(c)));
                    }
                    drop(out.set_waiter(Some(here.wakeup(cx.waker()))));
                    return Poll::Pending;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_output_cell_of_a_u64_child_is_24_bytes() {
        // The handle's wake-up lives inside `Out::Running`, whose tag shares its niche (beside
        // it, the cell was 40 bytes, and a trivial child's allocation an 80-byte class).
        assert_eq!(std::mem::size_of::<OutCell<u64>>(), 24);
        // The handle reaches the cell through a trait object (it cannot name the child's future,
        // which shares the allocation), so it is 48 bytes.
        assert_eq!(std::mem::size_of::<JoinHandle<'static, u64>>(), 48);
    }
}
