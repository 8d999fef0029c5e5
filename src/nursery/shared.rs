//! A spawned child's future and its output cell in one allocation.
//!
//! [`Nursery::spawn`](super::Nursery::spawn) used to make two allocations per child: the boxed
//! future, owned by the nursery, and an `Rc` output cell shared with the [`JoinHandle`]. Here
//! both live in one `Rc`: the nursery's [`SharedChild`] polls and drops the future, the handle
//! reads the output cell through [`Output`]. For a trivial child that is one 64-byte allocation
//! instead of a 32- and a 48-byte one (DESIGN.md section 9).
//!
//! This is the crate's one `unsafe` outside the reactor. The future is reached through a shared
//! `Rc`, so polling it takes an `UnsafeCell` and a pin projection the compiler cannot check; the
//! module keeps both behind a safe API whose argument fits in a paragraph:
//!
//! - **Exclusive access.** The future is touched only by the private trait [`Drive`]'s `unsafe`
//!   methods, which only [`SharedChild`] calls, each time through `&mut self`. A `SharedChild` is
//!   made once per allocation, is not `Clone`, and its `Rc` field is private; the other clones of
//!   the `Rc` are typed `dyn Output<T>`, which reaches the output cell only. So a `&mut
//!   SharedChild` is a proof that nothing else is looking at the future, whatever its owner does
//!   with it. While the future runs, the handle may make a `&Shared` (to reach the output cell):
//!   that does not conflict with the `&mut F`, because every byte of `Shared` is interior-mutable
//!   (the future's `UnsafeCell`, the output's `Cell`).
//! - **Pinning.** The allocation is pinned from birth (`Rc::pin`) and nothing here moves the
//!   future out of it. The future is dropped in place, by [`SharedChild`]'s destructor, while the
//!   `SharedChild` still holds its strong count: the memory cannot be freed before the future's
//!   destructor has run, nor during a poll or that destructor (the calls borrow `Pin<&Self>`,
//!   which the count keeps valid). If the `SharedChild` is leaked, its count is leaked with it,
//!   and so is the allocation, which pinning allows. After that destructor (even one that
//!   panicked) nothing reads the future again: it is a `ManuallyDrop`, which the allocation's own
//!   destructor leaves alone.
//!
//! Valgrind (CI runs the nursery suites under it) checks the memory side; the aliasing side is
//! argued here, not checked by a tool (Miri is not available; its run of this module's tests
//! would need `-Zmiri-ignore-leaks`, for the deliberate leak).
//!
//! [`JoinHandle`]: super::JoinHandle

#![allow(unsafe_code)]

use std::cell::UnsafeCell;
use std::future::Future;
use std::mem::ManuallyDrop;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use super::handle::OutCell;
use crate::error::JoinError;

/// The allocation: the output cell, which every owner may read, and the future, which only the
/// [`SharedChild`] reaches.
struct Shared<F, T> {
    out: OutCell<T>,
    fut: UnsafeCell<ManuallyDrop<F>>,
}

/// What a [`JoinHandle`](super::JoinHandle) sees of its child: the output cell.
pub(super) trait Output<T> {
    fn cell(&self) -> &OutCell<T>;
}

impl<F, T> Output<T> for Shared<F, T> {
    fn cell(&self) -> &OutCell<T> {
        &self.out
    }
}

/// The nursery's side, type-erased. Private to this module: only [`SharedChild`] calls it.
trait Drive<E> {
    /// Polls the future; a value goes to the output cell.
    ///
    /// # Safety
    ///
    /// The caller has exclusive access to the future (it holds the `&mut SharedChild`) and has not
    /// called `drop_future`.
    unsafe fn poll_future(self: Pin<&Self>, cx: &mut Context<'_>) -> Poll<Result<(), E>>;

    /// Drops the future in place.
    ///
    /// # Safety
    ///
    /// As for `poll_future`, and it is called at most once: the future is never touched again.
    unsafe fn drop_future(self: Pin<&Self>);

    /// Tells the handle that no value will come (the output cell only).
    fn no_value(&self, why: &dyn Fn() -> JoinError);
}

impl<F, T, E> Drive<E> for Shared<F, T>
where
    F: Future<Output = Result<T, E>>,
{
    unsafe fn poll_future(self: Pin<&Self>, cx: &mut Context<'_>) -> Poll<Result<(), E>> {
        // SAFETY: the caller guarantees that no other reference to the future exists while this
        // one does (module docs: exclusive access). The future is structurally pinned: `self` is
        // pinned, nothing moves the future out of the allocation, and it is dropped in place
        // before the allocation can be freed (module docs: pinning).
        let fut = unsafe { Pin::new_unchecked(&mut **self.fut.get()) };
        match fut.poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(v)) => {
                self.out.set_value(v);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        }
    }

    unsafe fn drop_future(self: Pin<&Self>) {
        // SAFETY: exclusive access as above, and the caller drops the future only once and never
        // touches it after: `ManuallyDrop` keeps the allocation's destructor from dropping it again.
        unsafe { ManuallyDrop::drop(&mut *self.fut.get()) }
    }

    fn no_value(&self, why: &dyn Fn() -> JoinError) {
        self.out.set_no_value(why());
    }
}

/// A spawned child as its nursery holds it: the only owner that may poll or drop the future.
/// Dropping it drops the future (the allocation lives on while the handle does).
pub(super) struct SharedChild<'n, E> {
    rc: Pin<Rc<dyn Drive<E> + 'n>>,
}

impl<'n, E: 'n> SharedChild<'n, E> {
    /// The child, and the view of it its handle keeps.
    pub(super) fn new<F, T>(fut: F) -> (Self, Pin<Rc<dyn Output<T> + 'n>>)
    where
        F: Future<Output = Result<T, E>> + 'n,
        T: 'n,
    {
        let rc = Rc::pin(Shared { out: OutCell::new(), fut: UnsafeCell::new(ManuallyDrop::new(fut)) });
        let out: Pin<Rc<dyn Output<T> + 'n>> = rc.clone();
        (SharedChild { rc }, out)
    }
}

impl<E> SharedChild<'_, E> {
    pub(super) fn poll_child(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), E>> {
        // SAFETY: `&mut self` is exclusive access to the future (module docs), and the future is
        // dropped only by `drop`, after which `self` is gone.
        unsafe { self.rc.as_ref().poll_future(cx) }
    }

    pub(super) fn no_value(&mut self, why: &dyn Fn() -> JoinError) {
        self.rc.no_value(why);
    }
}

impl<E> Drop for SharedChild<'_, E> {
    fn drop(&mut self) {
        // SAFETY: exclusive access as in `poll_child`; this is the one call, and `self.rc` (the
        // strong count that keeps the allocation alive) is released only after it returns.
        unsafe { self.rc.as_ref().drop_future() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::task::Waker;

    struct Counted<'a> {
        polls: &'a Cell<u32>,
        drops: &'a Cell<u32>,
        ready_at: u32,
    }

    impl Future for Counted<'_> {
        type Output = Result<u64, ()>;
        fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Self::Output> {
            self.polls.set(self.polls.get() + 1);
            if self.polls.get() >= self.ready_at {
                Poll::Ready(Ok(u64::from(self.polls.get())))
            } else {
                Poll::Pending
            }
        }
    }

    impl Drop for Counted<'_> {
        fn drop(&mut self) {
            self.drops.set(self.drops.get() + 1);
        }
    }

    fn cx() -> Context<'static> {
        Context::from_waker(Waker::noop())
    }

    #[test]
    fn the_value_stays_with_the_handle_after_the_child_and_its_future_are_dropped() {
        let (polls, drops) = (Cell::new(0), Cell::new(0));
        let (mut child, out) = SharedChild::new(Counted { polls: &polls, drops: &drops, ready_at: 2 });
        assert_eq!(child.poll_child(&mut cx()), Poll::Pending);
        assert_eq!(child.poll_child(&mut cx()), Poll::Ready(Ok(())));
        assert_eq!(drops.get(), 0);
        drop(child);
        assert_eq!((polls.get(), drops.get()), (2, 1));
        assert_eq!(out.cell().take(), Some(Ok(2)));
        drop(out);
        assert_eq!(drops.get(), 1, "the allocation's own destructor does not drop the future again");
    }

    #[test]
    fn dropping_the_child_unfinished_drops_the_future_even_while_the_handle_lives() {
        let (polls, drops) = (Cell::new(0), Cell::new(0));
        let (mut child, out) = SharedChild::new(Counted { polls: &polls, drops: &drops, ready_at: 9 });
        assert_eq!(child.poll_child(&mut cx()), Poll::Pending);
        drop(child);
        assert_eq!(drops.get(), 1);
        assert!(!out.cell().is_finished());
        drop(out);
        assert_eq!(drops.get(), 1);
    }

    #[test]
    fn a_leaked_child_leaks_the_future_rather_than_freeing_it_undropped() {
        let (polls, drops) = (Cell::new(0), Cell::new(0));
        let (child, out) = SharedChild::new(Counted { polls: &polls, drops: &drops, ready_at: 9 });
        // SAFETY: the unpinned `Rc` is used only to make a `Weak`; nothing is moved.
        let weak_view = Rc::downgrade(&unsafe { Pin::into_inner_unchecked(out.clone()) });
        std::mem::forget(child);
        drop(out);
        assert_eq!(drops.get(), 0);
        assert!(weak_view.upgrade().is_some(), "the leaked child's strong count keeps the allocation");
    }

    #[test]
    fn a_trivial_child_is_one_56_byte_request() {
        // The `Rc` header (16), the output cell of a `u64` (24) and a 16-byte future: the
        // allocator's 64-byte class, where the box and the separate cell took 32 + 48.
        let i = 7_u64;
        let fut = async move { Ok::<u64, ()>(i) };
        fn size<F: Future<Output = Result<u64, ()>>>(_: &F) -> usize {
            std::mem::size_of::<Shared<F, u64>>()
        }
        assert_eq!(std::mem::size_of_val(&fut), 16);
        assert_eq!(size(&fut) + 16, 56);
    }
}
