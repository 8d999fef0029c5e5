//! [`Mutex`]: a fair lock that owns its data (Trio's `Lock` and `StrictFIFOLock`, S7.2, S7.3).
//!
//! The lock state ([`MutexState`]) is separate from the data so that [`Condition`] can release
//! and re-acquire any mutex without knowing its type.
//!
//! [`Condition`]: super::Condition

use std::cell::{Cell, RefCell, RefMut};
use std::fmt;
use std::future::Future;
use std::io;
use std::ops::{Deref, DerefMut};
use std::panic::Location;
use std::pin::Pin;
use std::task::{Context, Poll};

use super::parking_lot::{Acquire, Failed, ParkingLot, Resource, Take};
use crate::error::{CancelError, Cancelled};

/// A mutual-exclusion lock protecting a `T`, for tasks of one run (Trio's `Lock`, S7.2).
///
/// - **Fair, strict FIFO**: waiters get the lock in the order they asked for it. On release the
///   lock is *handed* to the oldest waiter, so the releasing task cannot take it back with
///   [`try_lock`](Mutex::try_lock) or barge ahead with [`lock`](Mutex::lock) (S7.3: this is
///   also Trio's `StrictFIFOLock`).
/// - **Broken on panic**: if a task panics while it holds the guard, the data may be
///   half-updated; the mutex becomes *broken*: every waiting and every later `lock` fails with
///   [`BrokenMutex`] (a [`Condition`](super::Condition) wait not yet notified is the exception:
///   it fails only once cancelled), which says where the dead owner had locked it (Trio's
///   `BrokenResourceError` for an owner that exited, #3035). The data stays reachable through
///   [`get_mut`](Mutex::get_mut) and [`into_inner`](Mutex::into_inner).
/// - Not reentrant: locking it again from the task that holds it waits forever (or until
///   cancelled). A data-less lock is a `Mutex<()>`.
///
/// Single-threaded, like everything in a hatchery run: share it by reference with the tasks
/// of a nursery (or through an `Rc`). Waiting needs a hatchery run (polling a wait outside one
/// panics); the synchronous methods (`try_` twins, releases, statistics) work anywhere. A
/// waiting `lock` future that is leaked (`mem::forget`) or kept past its run is still in the
/// queue: the lock is handed to it in turn and stays with it (the same goes for
/// [`Semaphore`](super::Semaphore) and [`CapacityLimiter`](super::CapacityLimiter) waits).
///
/// ```
/// use hatchery::{nursery, sync::{LockError, Mutex}, testing};
/// testing::run(async {
///     let total = Mutex::new(0);
///     nursery(async |n| {
///         for i in 1..=3 {
///             let total = &total;
///             n.start_soon(async move {
///                 let mut t = total.lock().await?;
///                 *t += i;
///                 Ok(())
///             });
///         }
///         Ok::<_, LockError>(())
///     })
///     .await
///     .unwrap();
///     assert_eq!(total.into_inner(), 6);
/// });
/// ```
pub struct Mutex<T: ?Sized> {
    state: MutexState,
    data: RefCell<T>,
}

/// The lock itself, without the data.
///
/// Invariant: `!locked` implies an empty lot (a release with waiters hands the lock over and
/// stays locked), so the fast path never barges.
#[derive(Debug, Default)]
pub(super) struct MutexState {
    locked: Cell<bool>,
    /// Where the owner that panicked had locked the mutex.
    broken: Cell<Option<&'static Location<'static>>>,
    pub(super) lot: ParkingLot,
}

impl MutexState {
    /// The `BrokenMutex` error, if the mutex is broken.
    pub(super) fn broken(&self) -> Option<BrokenMutex> {
        self.broken.get().map(|locked_at| BrokenMutex { locked_at })
    }

    /// Releases the lock: hands it to the oldest waiter, or unlocks it.
    pub(super) fn release(&self) {
        if self.lot.tasks_waiting() == 0 {
            self.locked.set(false);
        } else {
            self.lot.unpark(1);
        }
    }

    /// The owner panicked: fail every waiter now and every `lock` from now on.
    fn break_by(&self, locked_at: &'static Location<'static>) {
        self.broken.set(Some(locked_at));
        self.locked.set(false);
        self.lot.break_lot();
    }

    /// Identity, for [`Condition`](super::Condition)'s check that its waiters share one mutex.
    pub(super) fn addr(&self) -> usize {
        std::ptr::from_ref(self).addr()
    }
}

impl Resource for MutexState {
    fn waiting_on(&self) -> crate::debug::WaitingOn {
        crate::debug::WaitingOn::Lock
    }

    fn lot(&self) -> &ParkingLot {
        &self.lot
    }

    fn try_take(&self) -> Take {
        if self.broken.get().is_some() {
            Take::Broken
        } else if self.locked.get() {
            Take::Busy
        } else {
            debug_assert_eq!(self.lot.tasks_waiting(), 0, "an unlocked mutex has waiters");
            self.locked.set(true);
            Take::Taken
        }
    }

    fn give_back(&self) {
        self.release();
    }
}

/// What [`Mutex::statistics`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct MutexStatistics {
    /// Whether a task holds the lock (or it has been handed to a waiter that has not run yet).
    pub locked: bool,
    /// Tasks queued for the lock: in [`Mutex::lock`], and in a
    /// [`Condition::wait`](super::Condition::wait) that was notified (or cancelled) and is
    /// taking the lock back.
    pub tasks_waiting: usize,
    /// Whether an owner panicked while holding it.
    pub broken: bool,
}

impl<T> Mutex<T> {
    /// A new, unlocked mutex holding `value`.
    pub const fn new(value: T) -> Mutex<T> {
        Mutex {
            state: MutexState { locked: Cell::new(false), broken: Cell::new(None), lot: ParkingLot::new() },
            data: RefCell::new(value),
        }
    }

    /// The data, consuming the mutex (also when it is broken).
    ///
    /// ```
    /// let m = hatchery::sync::Mutex::new(vec![1]);
    /// assert_eq!(m.into_inner(), [1]);
    /// ```
    pub fn into_inner(self) -> T {
        self.data.into_inner()
    }
}

impl<T: ?Sized> Mutex<T> {
    /// Locks the mutex, waiting behind the tasks that asked before.
    ///
    /// # Cancellation
    ///
    /// A checkpoint (S2.1): in a cancelled scope it fails at once and leaves the mutex alone;
    /// when the mutex is free it takes it, then passes a schedule point that cannot fail.
    /// A `lock` cancelled or dropped while it waits leaves no trace; if the lock had already been
    /// handed to it, a cancelled `lock` returns the guard (the cancellation comes at the next
    /// checkpoint) and a dropped one hands the lock on to the next waiter.
    ///
    /// # Errors
    ///
    /// [`LockError::Cancelled`], or [`LockError::Broken`] if an owner panicked while holding it
    /// (before or during the wait).
    ///
    /// ```
    /// use hatchery::{sync::Mutex, testing};
    /// testing::run(async {
    ///     let m = Mutex::new(vec![1]);
    ///     m.lock().await.unwrap().push(2);
    ///     assert_eq!(*m.lock().await.unwrap(), [1, 2]);
    /// });
    /// ```
    #[track_caller]
    pub fn lock(&self) -> MutexLock<'_, T> {
        MutexLock { mutex: self, acquire: Acquire::new(&self.state), at: Location::caller() }
    }

    /// Locks the mutex if it is free and nobody waits for it; not a checkpoint.
    ///
    /// # Errors
    ///
    /// [`TryLockError::WouldBlock`] if it is held or any task waits for it (a task that just
    /// released it cannot take it back from a waiter); [`TryLockError::Broken`] if it is broken.
    ///
    /// ```
    /// use hatchery::{sync::{Mutex, TryLockError}, testing};
    /// testing::run(async {
    ///     let m = Mutex::new(());
    ///     let g = m.try_lock().unwrap();
    ///     assert!(matches!(m.try_lock(), Err(TryLockError::WouldBlock)));
    ///     drop(g);
    ///     assert!(m.try_lock().is_ok());
    /// });
    /// ```
    #[track_caller]
    pub fn try_lock(&self) -> Result<MutexGuard<'_, T>, TryLockError> {
        match self.state.try_take() {
            Take::Taken => Ok(MutexGuard::new(self, Location::caller())),
            Take::Busy => Err(TryLockError::WouldBlock),
            Take::Broken => Err(TryLockError::Broken(self.state.broken().expect("broken"))),
        }
    }

    /// Whether a task holds the lock (or it has been handed to a waiter that has not run yet).
    pub fn is_locked(&self) -> bool {
        self.state.locked.get()
    }

    /// Whether an owner panicked while holding it.
    pub fn is_broken(&self) -> bool {
        self.state.broken.get().is_some()
    }

    /// Counts for introspection.
    ///
    /// ```
    /// use hatchery::sync::Mutex;
    /// let m = Mutex::new(());
    /// let _g = m.try_lock().unwrap();
    /// let s = m.statistics();
    /// assert_eq!((s.locked, s.tasks_waiting, s.broken), (true, 0, false));
    /// ```
    pub fn statistics(&self) -> MutexStatistics {
        MutexStatistics {
            locked: self.state.locked.get(),
            tasks_waiting: self.state.lot.tasks_waiting(),
            broken: self.is_broken(),
        }
    }

    /// The data, through a unique borrow of the mutex: no locking is needed (also when it is
    /// broken).
    ///
    /// ```
    /// let mut m = hatchery::sync::Mutex::new(1);
    /// *m.get_mut() += 1;
    /// assert_eq!(m.into_inner(), 2);
    /// ```
    pub fn get_mut(&mut self) -> &mut T {
        self.data.get_mut()
    }

    pub(super) fn state(&self) -> &MutexState {
        &self.state
    }
}

impl<T: Default> Default for Mutex<T> {
    fn default() -> Mutex<T> {
        Mutex::new(T::default())
    }
}

impl<T> From<T> for Mutex<T> {
    fn from(value: T) -> Mutex<T> {
        Mutex::new(value)
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for Mutex<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        /// Releases the lock taken for formatting, also if `T::fmt` panics (it changed nothing).
        struct Unlock<'a>(&'a MutexState);
        impl Drop for Unlock<'_> {
            fn drop(&mut self) {
                self.0.release();
            }
        }
        let mut d = f.debug_struct("Mutex");
        // Formatting holds the lock, as std's `Mutex` does: a `try_lock` from inside `T::fmt`
        // then finds it busy, instead of taking a lock whose data is borrowed here.
        let locked = format_args!("<locked>");
        match self.state.try_take() {
            Take::Taken => {
                let _unlock = Unlock(&self.state);
                match self.data.try_borrow() {
                    Ok(data) => d.field("data", &&*data),
                    Err(_) => d.field("data", &locked),
                };
            }
            Take::Busy => {
                d.field("data", &locked);
            }
            // Nobody can lock a broken mutex: its data is shown as it was left.
            Take::Broken => {
                match self.data.try_borrow() {
                    Ok(data) => d.field("data", &&*data),
                    Err(_) => d.field("data", &locked),
                };
            }
        }
        d.field("tasks_waiting", &self.state.lot.tasks_waiting()).field("broken", &self.is_broken());
        d.finish()
    }
}

/// Holds the lock of a [`Mutex`] and gives access to its data; dropping it releases the lock
/// (hands it to the oldest waiter). Dropping it while the task panics breaks the mutex, unless
/// the panic began before the lock was taken (a destructor that locks while unwinding finishes
/// its critical section).
#[must_use = "dropping the guard releases the lock at once"]
pub struct MutexGuard<'a, T: ?Sized> {
    // Field order is drop order: the data borrow ends before the lock is released.
    data: RefMut<'a, T>,
    owner: Owner<'a>,
    mutex: &'a Mutex<T>,
}

/// The part of a guard that releases the lock.
struct Owner<'a> {
    state: &'a MutexState,
    at: &'static Location<'static>,
    /// The thread was unwinding already when the lock was taken (a destructor that locks): a
    /// panic that began before the critical section did not interrupt it (std's poisoning
    /// makes the same distinction).
    unwinding_at_lock: bool,
}

impl Drop for Owner<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() && !self.unwinding_at_lock {
            self.state.break_by(self.at);
        } else {
            self.state.release();
        }
    }
}

impl<'a, T: ?Sized> MutexGuard<'a, T> {
    /// A guard for a lock the caller has just taken.
    pub(super) fn new(mutex: &'a Mutex<T>, at: &'static Location<'static>) -> Self {
        let data =
            mutex.data.try_borrow_mut().expect("hatchery internal error: a free mutex's data is borrowed");
        let owner = Owner { state: &mutex.state, at, unwinding_at_lock: std::thread::panicking() };
        MutexGuard { data, owner, mutex }
    }

    /// Gives up the data borrow and returns the mutex, still locked: the caller must release it.
    pub(super) fn into_locked(self) -> &'a Mutex<T> {
        let MutexGuard { data, owner, mutex } = self;
        drop(data);
        std::mem::forget(owner);
        mutex
    }

    /// The mutex this guard locks.
    pub fn mutex(this: &Self) -> &'a Mutex<T> {
        this.mutex
    }
}

impl<T: ?Sized> Deref for MutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.data
    }
}

impl<T: ?Sized> DerefMut for MutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.data
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for MutexGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.data, f)
    }
}

impl<T: ?Sized + fmt::Display> fmt::Display for MutexGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&*self.data, f)
    }
}

/// Future of [`Mutex::lock`]. Dropping it leaves no trace; if the lock had already been handed
/// to it, the lock goes on to the next waiter.
#[must_use = "futures do nothing unless awaited"]
pub struct MutexLock<'a, T: ?Sized> {
    mutex: &'a Mutex<T>,
    acquire: Acquire<'a, MutexState>,
    at: &'static Location<'static>,
}

impl<T: ?Sized> fmt::Debug for MutexLock<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MutexLock").field("acquire", &self.acquire).field("at", &self.at).finish()
    }
}

impl<'a, T: ?Sized> Future for MutexLock<'a, T> {
    type Output = Result<MutexGuard<'a, T>, LockError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        this.acquire.poll(cx).map(|r| match r {
            Ok(()) => Ok(MutexGuard::new(this.mutex, this.at)),
            Err(Failed::Cancelled(c)) => Err(LockError::Cancelled(c)),
            Err(Failed::Broken) => Err(LockError::Broken(this.mutex.state.broken().expect("broken"))),
        })
    }
}

/// A task panicked while it held the mutex, so its data may be inconsistent: the mutex refuses
/// every later lock (Trio's `BrokenResourceError` for a lock whose owner died).
///
/// ```
/// use std::panic::{catch_unwind, AssertUnwindSafe};
/// use hatchery::{sync::{LockError, Mutex}, testing};
/// testing::run(async {
///     let m = Mutex::new(0);
///     let (g, line) = (m.lock().await.unwrap(), line!());
///     # std::panic::set_hook(Box::new(|_| {}));
///     let _ = catch_unwind(AssertUnwindSafe(move || {
///         let _g = g;
///         panic!("the owner dies mid-update");
///     }));
///     let Err(LockError::Broken(e)) = m.lock().await else { unreachable!() };
///     assert_eq!(e.locked_at().line(), line, "where the owner locked it");
/// });
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the mutex is broken: a task panicked while holding the lock it took at {locked_at}; \
     its data may be inconsistent (reach it with Mutex::get_mut or Mutex::into_inner)"
)]
pub struct BrokenMutex {
    locked_at: &'static Location<'static>,
}

impl BrokenMutex {
    /// Where the task that panicked had locked the mutex (the call to `lock`, `try_lock` or
    /// `Condition::wait`).
    pub fn locked_at(&self) -> &'static Location<'static> {
        self.locked_at
    }
}

impl From<BrokenMutex> for io::Error {
    fn from(e: BrokenMutex) -> io::Error {
        io::Error::other(e)
    }
}

/// Why [`Mutex::lock`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    /// The calling code is cancelled.
    #[error(transparent)]
    Cancelled(#[from] Cancelled),
    /// An owner panicked while holding the mutex.
    #[error(transparent)]
    Broken(#[from] BrokenMutex),
}

impl CancelError for LockError {
    fn cancelled(&self) -> Option<&Cancelled> {
        match self {
            LockError::Cancelled(c) => Some(c),
            LockError::Broken(_) => None,
        }
    }
}

impl From<LockError> for io::Error {
    /// A cancellation stays recognisable ([`Cancelled::from_io`]); a broken mutex is kind `Other`.
    fn from(e: LockError) -> io::Error {
        match e {
            LockError::Cancelled(c) => c.into(),
            LockError::Broken(b) => b.into(),
        }
    }
}

impl From<LockError> for crate::Error {
    fn from(e: LockError) -> crate::Error {
        match e {
            LockError::Cancelled(c) => crate::Error::Cancelled(c),
            LockError::Broken(b) => crate::Error::other(b),
        }
    }
}

/// Why [`Mutex::try_lock`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TryLockError {
    /// The mutex is held, or tasks wait for it.
    #[error("the mutex is locked or other tasks are waiting for it")]
    WouldBlock,
    /// An owner panicked while holding the mutex.
    #[error(transparent)]
    Broken(#[from] BrokenMutex),
}

impl From<TryLockError> for io::Error {
    fn from(e: TryLockError) -> io::Error {
        match e {
            TryLockError::WouldBlock => io::Error::new(io::ErrorKind::WouldBlock, e),
            TryLockError::Broken(b) => b.into(),
        }
    }
}
