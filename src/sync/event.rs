//! [`Event`]: a flag set once, that tasks wait for (S7.1).

use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use super::parking_lot::{Acquire, Failed, ParkingLot, Resource, Take};
use crate::error::Cancelled;

/// A one-shot flag: [`set`](Event::set) it once, and every task waiting in
/// [`wait`](Event::wait) wakes up (Trio's `Event`, S7.1).
///
/// There is no `clear`: an event that could be reset loses wake-ups (a task that was woken may
/// see the flag cleared again before it runs). Make a new `Event` instead.
///
/// Waiting needs a hatchery run (polling a wait outside one panics); the synchronous methods
/// (`try_` twins, releases, statistics) work anywhere.
///
/// ```
/// use hatchery::{nursery, sync::Event, testing, Cancelled};
/// testing::run(async {
///     let ready = Event::new();
///     nursery(async |n| {
///         n.start_soon(async {
///             ready.wait().await?;
///             println!("go!");
///             Ok(())
///         });
///         ready.set();
///         Ok::<_, Cancelled>(())
///     })
///     .await
///     .unwrap();
/// });
/// ```
#[derive(Default)]
pub struct Event {
    set: Cell<bool>,
    lot: ParkingLot,
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("is_set", &self.set.get())
            .field("tasks_waiting", &self.lot.tasks_waiting())
            .finish()
    }
}

/// What [`Event::statistics`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct EventStatistics {
    /// Tasks blocked in [`Event::wait`].
    pub tasks_waiting: usize,
}

impl Event {
    /// A new event, not set.
    pub const fn new() -> Event {
        Event { set: Cell::new(false), lot: ParkingLot::new() }
    }

    /// Whether the event has been set.
    pub fn is_set(&self) -> bool {
        self.set.get()
    }

    /// Sets the event and wakes every waiting task. Idempotent; synchronous, not a checkpoint.
    ///
    /// ```
    /// use hatchery::sync::Event;
    /// let e = Event::new();
    /// e.set();
    /// e.set();
    /// assert!(e.is_set());
    /// ```
    pub fn set(&self) {
        if !self.set.replace(true) {
            self.lot.unpark_all();
        }
    }

    /// Waits until the event is set.
    ///
    /// # Cancellation
    ///
    /// A checkpoint, even when the event is already set (S7.1): in a cancelled scope it fails at
    /// once; otherwise a set event still passes a schedule point (which yields once the task's
    /// [`yield_budget`](crate::Builder::yield_budget) is spent). A wait cancelled while blocked leaves the
    /// event untouched. If the event was set before the cancellation was noticed, the wait
    /// returns `Ok(())` and the cancellation is delivered at the next checkpoint.
    ///
    /// # Errors
    ///
    /// [`Cancelled`] if the calling code is cancelled.
    ///
    /// ```
    /// use std::time::Duration;
    /// use hatchery::{move_on_after, sync::Event, testing};
    /// testing::run(async {
    ///     let never = Event::new();
    ///     let r = move_on_after(Duration::from_secs(1), never.wait()).await;
    ///     assert_eq!(r, Ok(None), "nobody set it; the deadline interrupted the wait");
    ///     assert_eq!(never.statistics().tasks_waiting, 0);
    /// });
    /// ```
    pub fn wait(&self) -> EventWait<'_> {
        EventWait { acquire: Acquire::new(self) }
    }

    /// Counts for introspection.
    pub fn statistics(&self) -> EventStatistics {
        EventStatistics { tasks_waiting: self.lot.tasks_waiting() }
    }
}

impl Resource for Event {
    fn waiting_on(&self) -> crate::debug::WaitingOn {
        crate::debug::WaitingOn::Event
    }

    fn lot(&self) -> &ParkingLot {
        &self.lot
    }

    fn try_take(&self) -> Take {
        if self.set.get() { Take::Taken } else { Take::Busy }
    }

    fn give_back(&self) {}
}

/// Future of [`Event::wait`]. Dropping it leaves the event untouched.
#[must_use = "futures do nothing unless awaited"]
#[derive(Debug)]
pub struct EventWait<'a> {
    acquire: Acquire<'a, Event>,
}

impl Future for EventWait<'_> {
    type Output = Result<(), Cancelled>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.acquire.poll(cx).map(|r| match r {
            Ok(()) => Ok(()),
            Err(Failed::Cancelled(c)) => Err(c),
            Err(Failed::Broken) => unreachable!("hatchery internal error: an event's lot is never broken"),
        })
    }
}
