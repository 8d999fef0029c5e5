//! Keeping a waiter's wake-up up to date without dropping an old waker under a borrow.
//!
//! A future re-polled by another task, or with a new waker, must leave its new wake-up behind;
//! one that still wakes the same task is kept, saving a clone. A waker replaced is handed back,
//! not dropped: a waker's destructor is foreign code that may call back into the primitive, so
//! the caller drops it after its `RefCell` borrow has ended.

use std::task::Waker;

use crate::lowlevel::Wakeup;

/// Makes `slot` wake the poll that has `new` (filling an empty slot); returns the waker
/// replaced, to be dropped after the borrow. The task polled with its own waker is recorded as
/// the task (see [`Wakeup`]); a waker that still wakes the same task is kept, saving a clone.
#[must_use = "drop the replaced waker after the borrow ends"]
#[inline]
pub(crate) fn store(slot: &mut Option<Wakeup>, new: &Waker) -> Option<Waker> {
    match slot {
        Some(w) => w.refresh(new),
        None => {
            *slot = Some(Wakeup::new(new));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::task::Wake;

    struct Task;

    impl Wake for Task {
        fn wake(self: Arc<Self>) {}
    }

    #[test]
    fn the_same_tasks_waker_is_kept_and_a_replaced_one_comes_back_undropped() {
        let (a, b) = (Arc::new(Task), Arc::new(Task));
        let (wa, wb) = (Waker::from(a.clone()), Waker::from(b.clone()));
        let mut slot = None;
        assert!(store(&mut slot, &wa).is_none(), "an empty slot is filled");
        assert_eq!(Arc::strong_count(&a), 3, "a, wa and the slot's clone");
        assert!(store(&mut slot, &wa.clone()).is_none());
        assert_eq!(Arc::strong_count(&a), 3, "the same task's waker is not cloned again");
        let old = store(&mut slot, &wb).expect("another task's waker replaces it");
        assert!(old.will_wake(&wa));
        assert!(matches!(&slot, Some(Wakeup::Waker(w)) if w.will_wake(&wb)), "outside a run: the waker");
        assert_eq!((Arc::strong_count(&a), Arc::strong_count(&b)), (3, 3), "the old one is not dropped yet");
        drop(old);
        assert_eq!(Arc::strong_count(&a), 2);
    }
}
