//! [`Semaphore`]: a fair counting semaphore with an optional maximum (S7.4).

use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use super::parking_lot::{Acquire, Failed, ParkingLot, Resource, Take};
use crate::error::Cancelled;

/// A counting semaphore (Trio's `Semaphore`, S7.4): [`acquire`](Semaphore::acquire) takes a
/// unit, waiting while the value is 0; [`release`](Semaphore::release) (or dropping a
/// [`SemaphorePermit`]) puts one back.
///
/// - **Fair**: waiters are served in FIFO order, and a released unit is *handed* to the oldest
///   waiter, so the value stays 0 while anyone waits and the releasing task cannot take the unit
///   back with [`try_acquire`](Semaphore::try_acquire).
/// - **No owner**: any task may release, e.g. a producer releasing what consumers acquire. For
///   the common "at most N at once" use, keep the [`SemaphorePermit`] that `acquire` returns and
///   let it release on drop ([`CapacityLimiter`](super::CapacityLimiter) is the same with
///   adjustable capacity).
/// - **Optional maximum** ([`with_max`](Semaphore::with_max)): releasing beyond it is an error,
///   which catches unbalanced releases.
///
/// Waiting needs a hatchery run (polling a wait outside one panics); the synchronous methods
/// (`try_` twins, releases, statistics) work anywhere.
///
/// ```
/// use hatchery::{nursery, now, sleep, sync::Semaphore, testing, Cancelled};
/// use std::time::Duration;
/// testing::run(async {
///     let two_at_a_time = Semaphore::new(2);
///     nursery(async |n| {
///         for _ in 0..4 {
///             let sem = &two_at_a_time;
///             n.start_soon(async move {
///                 let _permit = sem.acquire().await?;
///                 sleep(Duration::from_secs(1)).await
///             });
///         }
///         Ok::<_, Cancelled>(())
///     })
///     .await
///     .unwrap();
///     assert_eq!(now(), hatchery::Instant::ZERO + Duration::from_secs(2));
/// });
/// ```
pub struct Semaphore {
    /// Invariant: `value > 0` implies an empty lot (releases hand units to waiters).
    value: Cell<usize>,
    max: Option<usize>,
    lot: ParkingLot,
}

impl fmt::Debug for Semaphore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Semaphore")
            .field("value", &self.value.get())
            .field("max_value", &self.max)
            .field("tasks_waiting", &self.lot.tasks_waiting())
            .finish()
    }
}

/// What [`Semaphore::statistics`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct SemaphoreStatistics {
    /// Units available now.
    pub value: usize,
    /// The maximum value, if one was set.
    pub max_value: Option<usize>,
    /// Tasks blocked in [`Semaphore::acquire`].
    pub tasks_waiting: usize,
}

impl Semaphore {
    /// A semaphore holding `initial` units, with no maximum.
    pub const fn new(initial: usize) -> Semaphore {
        Semaphore { value: Cell::new(initial), max: None, lot: ParkingLot::new() }
    }

    /// A semaphore holding `initial` units that may never hold more than `max`.
    ///
    /// # Errors
    ///
    /// [`InvalidMaxValue`] if `initial > max`.
    ///
    /// ```
    /// use hatchery::sync::Semaphore;
    /// assert!(Semaphore::with_max(3, 2).is_err());
    /// let sem = Semaphore::with_max(1, 2).unwrap();
    /// assert_eq!((sem.value(), sem.max_value()), (1, Some(2)));
    /// ```
    pub const fn with_max(initial: usize, max: usize) -> Result<Semaphore, InvalidMaxValue> {
        if initial > max {
            return Err(InvalidMaxValue { initial, max });
        }
        Ok(Semaphore { value: Cell::new(initial), max: Some(max), lot: ParkingLot::new() })
    }

    /// Units available now.
    pub fn value(&self) -> usize {
        self.value.get()
    }

    /// The maximum value, if one was set.
    pub fn max_value(&self) -> Option<usize> {
        self.max
    }

    /// Takes a unit, waiting in FIFO order while there is none. The permit gives it back when
    /// dropped; [`SemaphorePermit::forget`] keeps it taken.
    ///
    /// # Cancellation
    ///
    /// A checkpoint, even when a unit is free (S7.4): in a cancelled scope it fails at once and
    /// takes nothing. Cancelled or dropped while it waits, it leaves no trace; if a unit had
    /// already been handed to it, a cancelled `acquire` returns the permit (the cancellation
    /// comes at the next checkpoint) and a dropped one hands the unit to the next waiter.
    ///
    /// # Errors
    ///
    /// [`Cancelled`] if the calling code is cancelled.
    ///
    /// ```
    /// use std::time::Duration;
    /// use hatchery::{move_on_after, sync::Semaphore, testing};
    /// testing::run(async {
    ///     let sem = Semaphore::new(1);
    ///     let permit = sem.acquire().await.unwrap();
    ///     assert_eq!(sem.value(), 0);
    ///     // None left: a second acquire waits, here until a deadline gives up on it.
    ///     assert_eq!(move_on_after(Duration::from_secs(1), sem.acquire()).await.map(|p| p.is_some()), Ok(false));
    ///     drop(permit);
    ///     assert_eq!(sem.statistics().value, 1);
    /// });
    /// ```
    pub fn acquire(&self) -> SemaphoreAcquire<'_> {
        SemaphoreAcquire { sem: self, acquire: Acquire::new(self) }
    }

    /// Takes a unit if one is free; not a checkpoint. Fails when the value is 0, which is always
    /// the case while tasks wait.
    ///
    /// # Errors
    ///
    /// [`TryAcquireError`] if no unit is free.
    ///
    /// ```
    /// use hatchery::sync::Semaphore;
    /// let sem = Semaphore::new(1);
    /// let p = sem.try_acquire().unwrap();
    /// assert!(sem.try_acquire().is_err());
    /// drop(p);
    /// assert_eq!(sem.value(), 1);
    /// ```
    pub fn try_acquire(&self) -> Result<SemaphorePermit<'_>, TryAcquireError> {
        match self.try_take() {
            Take::Taken => Ok(SemaphorePermit { sem: self }),
            Take::Busy | Take::Broken => Err(TryAcquireError::new()),
        }
    }

    /// Puts a unit back: hands it to the oldest waiter if there is one (the value stays 0),
    /// otherwise increments the value. Synchronous, not a checkpoint; any task may call it.
    ///
    /// # Errors
    ///
    /// [`TooManyReleases`] if the value is already at the maximum (`usize::MAX` without one);
    /// the value is unchanged.
    ///
    /// ```
    /// use hatchery::sync::Semaphore;
    /// let sem = Semaphore::with_max(0, 1).unwrap();
    /// sem.release().unwrap();
    /// assert!(sem.release().is_err());
    /// assert_eq!(sem.value(), 1);
    /// ```
    pub fn release(&self) -> Result<(), TooManyReleases> {
        let max = self.max.unwrap_or(usize::MAX);
        // The value is 0 while tasks wait, so this refuses a hand-over only at a maximum of 0
        // (as Trio: the value is at its maximum either way).
        if self.value.get() >= max {
            return Err(TooManyReleases { max });
        }
        if self.lot.tasks_waiting() > 0 {
            self.lot.unpark(1);
        } else {
            self.value.set(self.value.get() + 1);
        }
        Ok(())
    }

    /// Counts for introspection.
    pub fn statistics(&self) -> SemaphoreStatistics {
        SemaphoreStatistics {
            value: self.value.get(),
            max_value: self.max,
            tasks_waiting: self.lot.tasks_waiting(),
        }
    }
}

impl Resource for Semaphore {
    fn waiting_on(&self) -> crate::debug::WaitingOn {
        crate::debug::WaitingOn::Semaphore
    }

    fn lot(&self) -> &ParkingLot {
        &self.lot
    }

    fn try_take(&self) -> Take {
        match self.value.get() {
            0 => Take::Busy,
            v => {
                debug_assert_eq!(self.lot.tasks_waiting(), 0, "a semaphore with units has waiters");
                self.value.set(v - 1);
                Take::Taken
            }
        }
    }

    /// A permit's unit going back. If `release` was also called for it (a forgotten permit
    /// released twice) and the value is at its maximum, the unit is not added again.
    fn give_back(&self) {
        let _ = self.release();
    }
}

/// One unit of a [`Semaphore`], released when dropped.
#[must_use = "dropping the permit releases the unit at once"]
pub struct SemaphorePermit<'a> {
    sem: &'a Semaphore,
}

impl fmt::Debug for SemaphorePermit<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SemaphorePermit").finish_non_exhaustive()
    }
}

impl SemaphorePermit<'_> {
    /// Keeps the unit taken: the semaphore's value is not restored. Give it back later with
    /// [`Semaphore::release`], possibly from another task (Trio's manual `acquire`/`release`).
    ///
    /// ```
    /// use hatchery::sync::Semaphore;
    /// let sem = Semaphore::new(1);
    /// sem.try_acquire().unwrap().forget();
    /// assert_eq!(sem.value(), 0);
    /// sem.release().unwrap();
    /// assert_eq!(sem.value(), 1);
    /// ```
    pub fn forget(self) {
        std::mem::forget(self);
    }
}

impl Drop for SemaphorePermit<'_> {
    /// Releases the unit (hands it to the oldest waiter). If the semaphore is already at its
    /// maximum, because [`Semaphore::release`] was called for this unit too, nothing is added.
    fn drop(&mut self) {
        self.sem.give_back();
    }
}

/// Future of [`Semaphore::acquire`]. Dropping it leaves no trace; a unit already handed to it
/// goes on to the next waiter.
#[must_use = "futures do nothing unless awaited"]
#[derive(Debug)]
pub struct SemaphoreAcquire<'a> {
    sem: &'a Semaphore,
    acquire: Acquire<'a, Semaphore>,
}

impl<'a> Future for SemaphoreAcquire<'a> {
    type Output = Result<SemaphorePermit<'a>, Cancelled>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let sem = self.sem;
        self.acquire.poll(cx).map(|r| match r {
            Ok(()) => Ok(SemaphorePermit { sem }),
            Err(Failed::Cancelled(c)) => Err(c),
            Err(Failed::Broken) => unreachable!("hatchery internal error: a semaphore's lot is never broken"),
        })
    }
}

/// [`Semaphore::with_max`] was given an initial value above the maximum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a semaphore's initial value ({initial}) cannot be above its maximum value ({max})")]
pub struct InvalidMaxValue {
    /// The initial value asked for.
    pub initial: usize,
    /// The maximum asked for.
    pub max: usize,
}

impl From<InvalidMaxValue> for io::Error {
    fn from(e: InvalidMaxValue) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidInput, e)
    }
}

/// [`Semaphore::release`] would raise the value above the maximum: more releases than
/// acquisitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("semaphore released too many times: its value is already at its maximum ({max})")]
pub struct TooManyReleases {
    /// The semaphore's maximum value.
    pub max: usize,
}

impl From<TooManyReleases> for io::Error {
    fn from(e: TooManyReleases) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidInput, e)
    }
}

/// A `try_acquire` found nothing free (or found tasks already waiting, which come first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("nothing to acquire without waiting")]
pub struct TryAcquireError {
    _private: (),
}

impl TryAcquireError {
    pub(super) const fn new() -> Self {
        TryAcquireError { _private: () }
    }
}

impl From<TryAcquireError> for io::Error {
    fn from(e: TryAcquireError) -> io::Error {
        io::Error::new(io::ErrorKind::WouldBlock, e)
    }
}
