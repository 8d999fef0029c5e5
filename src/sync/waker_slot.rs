//! Keeping a waiter's wake-up up to date without running foreign code under a borrow.
//!
//! A future re-polled by another task, or with a new waker, must leave its new wake-up behind.
//! Cloning a foreign waker and dropping one are both foreign code, which may call back into the
//! primitive: the caller makes the new wake-up before its `RefCell` borrow and drops whichever
//! one is not kept after it.

use crate::lowlevel::Wakeup;

/// Makes `slot` wake the poll whose wake-up is `new` (made by the caller before its borrow);
/// returns the wake-up not kept, to be dropped after the borrow: the old one, or `new` itself
/// when the slot already wakes the same task (the old one keeps its place).
#[must_use = "drop the wake-up not kept after the borrow ends"]
#[inline]
pub(crate) fn store(slot: &mut Option<Wakeup>, new: Wakeup) -> Option<Wakeup> {
    match slot {
        Some(old) if old.wakes_same(&new) => Some(new),
        _ => slot.replace(new),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::task::{Wake, Waker};

    struct Task;

    impl Wake for Task {
        fn wake(self: Arc<Self>) {}
    }

    #[test]
    fn the_same_tasks_waker_is_kept_and_a_replaced_one_comes_back_undropped() {
        let (a, b) = (Arc::new(Task), Arc::new(Task));
        let (wa, wb) = (Waker::from(a.clone()), Waker::from(b.clone()));
        let mut slot = None;
        assert!(store(&mut slot, Wakeup::new(&wa)).is_none(), "an empty slot is filled");
        assert_eq!(Arc::strong_count(&a), 3, "a, wa and the slot's clone");
        let unused = store(&mut slot, Wakeup::new(&wa.clone())).expect("the same task's is not kept");
        assert!(matches!(&unused, Wakeup::Waker(w) if w.will_wake(&wa)));
        drop(unused);
        assert_eq!(Arc::strong_count(&a), 3, "the slot keeps its own");
        let old = store(&mut slot, Wakeup::new(&wb)).expect("another task's waker replaces it");
        assert!(matches!(&old, Wakeup::Waker(w) if w.will_wake(&wa)));
        assert!(matches!(&slot, Some(Wakeup::Waker(w)) if w.will_wake(&wb)), "outside a run: the waker");
        assert_eq!((Arc::strong_count(&a), Arc::strong_count(&b)), (3, 3), "the old one is not dropped yet");
        drop(old);
        assert_eq!(Arc::strong_count(&a), 2);
    }
}
