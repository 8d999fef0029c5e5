//! [`CapacityLimiter`]: "at most N at once", with N adjustable at run time (S7.5).

use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use super::TryAcquireError;
use super::parking_lot::{Acquire, Failed, ParkingLot, Resource, Take};
use crate::error::Cancelled;
use crate::panics::FirstPanic;

/// Limits how many tasks do something at once (Trio's `CapacityLimiter`, S7.5): each holds a
/// [`CapacityToken`] from [`acquire`](CapacityLimiter::acquire) while it works, and at most
/// [`total_tokens`](CapacityLimiter::total_tokens) tokens are out at any time.
///
/// - **Fair**: waiters get tokens in FIFO order; a returned token is handed to the oldest
///   waiter, and [`try_acquire`](CapacityLimiter::try_acquire) fails while anyone waits.
/// - **Adjustable**: [`set_total_tokens`](CapacityLimiter::set_total_tokens) raised wakes as
///   many waiters as there are new tokens at once; lowered, it revokes nothing: tokens already
///   out stay out, and new borrowers get in only once the count is below the new total.
///
/// **Deviation from Trio: borrowers are tokens, not tasks.** Trio records the current task as
/// the borrower and refuses a second token to the same borrower (and a release by a
/// non-borrower). hatchery cannot name the current task from the library layer, and a Rust guard
/// already ties the token to its holder: each token is its own borrower, is returned exactly
/// once (when dropped), and can be moved to whichever task does the work (Trio's
/// `acquire_on_behalf_of`). The one check lost is a task taking two tokens; design the holder so
/// that it cannot, as you would with a semaphore.
///
/// Waiting needs a hatchery run (polling a wait outside one panics); the synchronous methods
/// (`try_` twins, releases, statistics) work anywhere.
///
/// ```
/// use std::time::Duration;
/// use hatchery::{nursery, now, sleep, sync::CapacityLimiter, testing, Cancelled, Instant};
/// testing::run(async {
///     let limiter = CapacityLimiter::new(3);
///     nursery(async |n| {
///         for _ in 0..6 {
///             let limiter = &limiter;
///             n.start_soon(async move {
///                 let _token = limiter.acquire().await?;
///                 sleep(Duration::from_secs(1)).await
///             });
///         }
///         Ok::<_, Cancelled>(())
///     })
///     .await
///     .unwrap();
///     assert_eq!(now(), Instant::ZERO + Duration::from_secs(2));
/// });
/// ```
pub struct CapacityLimiter {
    total: Cell<usize>,
    /// Tokens out, including those handed to waiters that have not run yet.
    /// Invariant: waiters only while `borrowed >= total`.
    borrowed: Cell<usize>,
    lot: ParkingLot,
}

impl fmt::Debug for CapacityLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CapacityLimiter")
            .field("borrowed_tokens", &self.borrowed.get())
            .field("total_tokens", &self.total.get())
            .field("tasks_waiting", &self.lot.tasks_waiting())
            .finish()
    }
}

/// What [`CapacityLimiter::statistics`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct CapacityLimiterStatistics {
    /// Tokens out (each is its own borrower).
    pub borrowed_tokens: usize,
    /// The capacity.
    pub total_tokens: usize,
    /// Tasks blocked in [`CapacityLimiter::acquire`].
    pub tasks_waiting: usize,
}

impl CapacityLimiter {
    /// A limiter with `total_tokens` tokens. `0` is allowed (everyone waits until
    /// [`set_total_tokens`](CapacityLimiter::set_total_tokens) raises it); `usize::MAX` stands
    /// for Trio's `math.inf`.
    pub const fn new(total_tokens: usize) -> CapacityLimiter {
        CapacityLimiter { total: Cell::new(total_tokens), borrowed: Cell::new(0), lot: ParkingLot::new() }
    }

    /// The capacity.
    pub fn total_tokens(&self) -> usize {
        self.total.get()
    }

    /// Changes the capacity. Raising it hands the new tokens to the oldest waiters at once;
    /// lowering it revokes nothing (tokens out stay out until dropped). Synchronous, not a
    /// checkpoint.
    ///
    /// ```
    /// use hatchery::sync::CapacityLimiter;
    /// let limiter = CapacityLimiter::new(2);
    /// let (a, b) = (limiter.try_acquire().unwrap(), limiter.try_acquire().unwrap());
    /// limiter.set_total_tokens(1);
    /// assert_eq!(limiter.borrowed_tokens(), 2, "nothing was revoked");
    /// drop(a);
    /// assert!(limiter.try_acquire().is_err(), "still at the new total");
    /// drop(b);
    /// assert!(limiter.try_acquire().is_ok());
    /// ```
    pub fn set_total_tokens(&self, total_tokens: usize) {
        self.total.set(total_tokens);
        self.wake_waiters();
    }

    /// Tokens out now.
    pub fn borrowed_tokens(&self) -> usize {
        self.borrowed.get()
    }

    /// Tokens that can be taken now (0 while the total is lowered below the tokens out).
    pub fn available_tokens(&self) -> usize {
        self.total.get().saturating_sub(self.borrowed.get())
    }

    /// Borrows a token, waiting in FIFO order while none is free.
    ///
    /// # Cancellation
    ///
    /// A checkpoint, even when a token is free: in a cancelled scope it fails at once and
    /// borrows nothing. Cancelled or dropped while it waits, it leaves no trace (Trio #548); if a
    /// token had already been handed to it, a cancelled `acquire` returns it (the cancellation
    /// comes at the next checkpoint) and a dropped one hands it to the next waiter.
    ///
    /// # Errors
    ///
    /// [`Cancelled`] if the calling code is cancelled.
    ///
    /// ```
    /// use hatchery::{nursery, sync::CapacityLimiter, testing::{self, wait_all_tasks_blocked}, Cancelled};
    /// testing::run(async {
    ///     let limiter = CapacityLimiter::new(1);
    ///     let token = limiter.acquire().await.unwrap();
    ///     nursery(async |n| {
    ///         n.start_soon(async {
    ///             let _token = limiter.acquire().await?;
    ///             Ok(())
    ///         });
    ///         wait_all_tasks_blocked().await?;
    ///         let s = limiter.statistics();
    ///         assert_eq!((s.borrowed_tokens, s.total_tokens, s.tasks_waiting), (1, 1, 1));
    ///         drop(token); // handed to the waiting child
    ///         Ok::<_, Cancelled>(())
    ///     })
    ///     .await
    ///     .unwrap();
    ///     assert_eq!(limiter.borrowed_tokens(), 0);
    /// });
    /// ```
    pub fn acquire(&self) -> LimiterAcquire<'_> {
        LimiterAcquire { limiter: self, acquire: Acquire::new(self) }
    }

    /// Borrows a token if one is free and nobody waits for one (fairness); not a checkpoint.
    ///
    /// # Errors
    ///
    /// [`TryAcquireError`] if all tokens are out or tasks are waiting.
    ///
    /// ```
    /// use hatchery::sync::CapacityLimiter;
    /// let limiter = CapacityLimiter::new(1);
    /// let token = limiter.try_acquire().unwrap();
    /// assert!(limiter.try_acquire().is_err());
    /// drop(token);
    /// assert_eq!(limiter.available_tokens(), 1);
    /// ```
    pub fn try_acquire(&self) -> Result<CapacityToken<'_>, TryAcquireError> {
        match self.try_take() {
            Take::Taken => Ok(CapacityToken { limiter: self }),
            Take::Busy | Take::Broken => Err(TryAcquireError::new()),
        }
    }

    /// [`try_acquire`](CapacityLimiter::try_acquire) for a holder that outlives any borrow of
    /// the limiter: the token keeps the limiter alive.
    pub(crate) fn try_acquire_owned(self: &Rc<Self>) -> Result<OwnedCapacityToken, TryAcquireError> {
        self.try_acquire().map(|token| OwnedCapacityToken::adopt(token, self))
    }

    /// [`acquire`](CapacityLimiter::acquire) for a holder that outlives any borrow of the
    /// limiter: `acquire` itself, so the same checkpoint, fairness and cancellation rules.
    pub(crate) async fn acquire_owned(self: Rc<Self>) -> Result<OwnedCapacityToken, Cancelled> {
        let token = self.acquire().await?;
        Ok(OwnedCapacityToken::adopt(token, &self))
    }

    /// Counts for introspection.
    pub fn statistics(&self) -> CapacityLimiterStatistics {
        CapacityLimiterStatistics {
            borrowed_tokens: self.borrowed.get(),
            total_tokens: self.total.get(),
            tasks_waiting: self.lot.tasks_waiting(),
        }
    }

    /// Hands the free tokens to the oldest waiters (counted as borrowed before they run), one
    /// at a time: a wake is foreign code for a foreign waker, and may release a token or change
    /// the total meanwhile (a nested call then hands out what it freed), so each grant is
    /// counted only once it happened.
    ///
    /// A wake that panics (a foreign waker's) has made its grant, and does not stop the others:
    /// the first panic goes on once every free token has found its waiter.
    fn wake_waiters(&self) {
        let mut panics = FirstPanic::default();
        while self.available_tokens() > 0 && self.lot.tasks_waiting() > 0 {
            self.borrowed.set(self.borrowed.get() + 1);
            // `unpark` panics only in a wake, after the grant (`None` here).
            if panics.catch(|| self.lot.unpark(1)) == Some(0) {
                self.borrowed.set(self.borrowed.get() - 1);
                break;
            }
        }
        panics.resume();
    }
}

impl Resource for CapacityLimiter {
    fn waiting_on(&self) -> crate::debug::WaitingOn {
        crate::debug::WaitingOn::CapacityLimiter
    }

    fn lot(&self) -> &ParkingLot {
        &self.lot
    }

    fn try_take(&self) -> Take {
        if self.borrowed.get() < self.total.get() && self.lot.tasks_waiting() == 0 {
            self.borrowed.set(self.borrowed.get() + 1);
            Take::Taken
        } else {
            Take::Busy
        }
    }

    fn give_back(&self) {
        self.borrowed.set(self.borrowed.get() - 1);
        self.wake_waiters();
    }
}

/// A token borrowed from a [`CapacityLimiter`], returned when dropped. It is its own borrower:
/// move it to the task that does the work if that is not the one that acquired it.
#[must_use = "dropping the token returns it at once"]
pub struct CapacityToken<'a> {
    limiter: &'a CapacityLimiter,
}

impl fmt::Debug for CapacityToken<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CapacityToken").finish_non_exhaustive()
    }
}

impl CapacityToken<'_> {
    /// The limiter this token was borrowed from.
    pub fn limiter(&self) -> &CapacityLimiter {
        self.limiter
    }
}

impl Drop for CapacityToken<'_> {
    /// Returns the token: hands it to the oldest waiter if the count allows.
    fn drop(&mut self) {
        self.limiter.give_back();
    }
}

/// A token that owns a share of its limiter, returned when dropped: for a holder that must keep
/// its token after the code that acquired it has returned (an abandoned `to_thread` job keeps
/// its token until its thread finishes, DESIGN §7c). Crate-internal: users move a
/// [`CapacityToken`] instead.
pub(crate) struct OwnedCapacityToken {
    limiter: Rc<CapacityLimiter>,
}

impl fmt::Debug for OwnedCapacityToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OwnedCapacityToken").finish_non_exhaustive()
    }
}

impl OwnedCapacityToken {
    /// Takes over `token`, borrowed from `limiter`: the token is forgotten, and this value
    /// returns it instead.
    fn adopt(token: CapacityToken<'_>, limiter: &Rc<CapacityLimiter>) -> OwnedCapacityToken {
        debug_assert!(std::ptr::eq(token.limiter, &**limiter), "a token adopted by another limiter");
        std::mem::forget(token);
        OwnedCapacityToken { limiter: limiter.clone() }
    }
}

impl Drop for OwnedCapacityToken {
    /// Returns the token: hands it to the oldest waiter if the count allows.
    fn drop(&mut self) {
        self.limiter.give_back();
    }
}

/// Future of [`CapacityLimiter::acquire`]. Dropping it leaves no trace; a token already handed
/// to it goes on to the next waiter.
#[must_use = "futures do nothing unless awaited"]
#[derive(Debug)]
pub struct LimiterAcquire<'a> {
    limiter: &'a CapacityLimiter,
    acquire: Acquire<'a, CapacityLimiter>,
}

impl<'a> Future for LimiterAcquire<'a> {
    type Output = Result<CapacityToken<'a>, Cancelled>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let limiter = self.limiter;
        self.acquire.poll(cx).map(|r| match r {
            Ok(()) => Ok(CapacityToken { limiter }),
            Err(Failed::Cancelled(c)) => Err(c),
            Err(Failed::Broken) => unreachable!("hatchery internal error: a limiter's lot is never broken"),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::rc::Rc;
    use std::time::Duration;

    use super::CapacityLimiter;
    use crate::testing::{self, registrations};
    use crate::{Instant, move_on_after, now};

    #[test]
    fn an_owned_token_keeps_its_limiter_and_returns_its_token_when_dropped() {
        let limiter = Rc::new(CapacityLimiter::new(1));
        let token = limiter.try_acquire_owned().unwrap();
        assert!(limiter.try_acquire_owned().is_err(), "the only token is out");
        let weak = Rc::downgrade(&limiter);
        drop(limiter);
        let limiter = weak.upgrade().expect("the token keeps the limiter alive");
        assert_eq!(limiter.borrowed_tokens(), 1);
        drop(token);
        assert_eq!(limiter.borrowed_tokens(), 0);
        drop(limiter);
        assert!(weak.upgrade().is_none(), "nothing else held it");
    }

    #[test]
    fn acquire_owned_waits_its_turn_and_a_cancelled_wait_leaves_nothing() {
        testing::run(async {
            let limiter = Rc::new(CapacityLimiter::new(1));
            let first = limiter.clone().acquire_owned().await.unwrap();
            let base = registrations();
            let r = move_on_after(Duration::from_secs(2), limiter.clone().acquire_owned()).await;
            assert!(matches!(r, Ok(None)), "cancelled by the deadline while it waited");
            assert_eq!(now(), Instant::ZERO + Duration::from_secs(2));
            assert_eq!(registrations(), base);
            assert_eq!((limiter.borrowed_tokens(), limiter.statistics().tasks_waiting), (1, 0));
            drop(first);
            let second = limiter.clone().acquire_owned().await.unwrap();
            assert_eq!(limiter.borrowed_tokens(), 1);
            drop(second);
            assert_eq!(limiter.borrowed_tokens(), 0);
        });
    }
}
