//! Running several pieces of foreign code in a row (wakers, destructors, callbacks) so that one
//! that panics does not stop the others: the first panic is kept and goes on at the end.

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};

/// The first panic caught so far, if any.
#[derive(Default)]
pub(crate) struct FirstPanic(Option<Box<dyn Any + Send>>);

impl FirstPanic {
    /// Runs `f`; its value, or `None` if it panicked (the panic is kept unless one already is).
    pub(crate) fn catch<R>(&mut self, f: impl FnOnce() -> R) -> Option<R> {
        match catch_unwind(AssertUnwindSafe(f)) {
            Ok(r) => Some(r),
            Err(p) => {
                self.0.get_or_insert(p);
                None
            }
        }
    }

    /// Resumes the kept panic, if there is one, unless the thread is already unwinding (a
    /// destructor run by a panic got here: a guard released, a waiter woken): a second panic
    /// then would abort the process, so the kept one is dropped (the panic hook has printed it)
    /// and the first goes on.
    pub(crate) fn resume(self) {
        if let Some(p) = self.0
            && !std::thread::panicking()
        {
            resume_unwind(p);
        }
    }

    /// Runs `f` on every item, catching each panic, then resumes the first (see
    /// [`resume`](FirstPanic::resume)): wakes a list of waiters, none of which a panicking one
    /// may leave asleep.
    pub(crate) fn each<T>(items: impl IntoIterator<Item = T>, mut f: impl FnMut(T)) {
        let mut panics = FirstPanic::default();
        for item in items {
            panics.catch(|| f(item));
        }
        panics.resume();
    }

    /// The kept panic, for a caller that decides when it goes on.
    pub(crate) fn into_inner(self) -> Option<Box<dyn Any + Send>> {
        self.0
    }
}
