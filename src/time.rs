//! Sleeping, on the run's clock. Written only against `lowlevel`.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::error::Cancelled;
use crate::lowlevel::{Instant, Timer, checkpoint_if_cancelled, current_time, yield_always};

/// The current time on the run's clock.
///
/// # Panics
///
/// Outside a run.
pub fn now() -> Instant {
    current_time()
}

/// Sleeps for `duration`. A checkpoint: `sleep(Duration::ZERO)` behaves as
/// [`checkpoint`](crate::lowlevel::checkpoint).
///
/// # Errors
///
/// [`Cancelled`] if the enclosing scopes are cancelled, on entry or while sleeping.
///
/// ```
/// use std::time::Duration;
/// use hatchery::{testing::MockClock, Builder, Instant};
/// let t = Builder::new().clock(MockClock::with_autojump(Duration::ZERO)).run(async {
///     hatchery::sleep(Duration::from_secs(90)).await.unwrap();
///     hatchery::now()
/// });
/// assert_eq!(t, Instant::ZERO + Duration::from_secs(90));
/// ```
pub fn sleep(duration: Duration) -> Sleep {
    // Nanoseconds, saturating at about 584 years: a smaller future per sleeping task.
    Sleep::new(Until::After(u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)))
}

/// Sleeps until `deadline`. A checkpoint even when the deadline has passed (S2.4).
///
/// # Errors
///
/// [`Cancelled`] if the enclosing scopes are cancelled, on entry or while sleeping.
pub fn sleep_until(deadline: Instant) -> Sleep {
    Sleep::new(Until::At(deadline))
}

/// Sleeps until cancelled. Only ever ends with `Err(Cancelled)`, which `?` propagates.
///
/// ```
/// use std::time::Duration;
/// use hatchery::{testing::MockClock, Builder, move_on_after, sleep_forever};
/// Builder::new().clock(MockClock::with_autojump(Duration::ZERO)).run(async {
///     let r = move_on_after(Duration::from_secs(3), async {
///         sleep_forever().await?;
///         Ok::<(), hatchery::Cancelled>(())
///     }).await;
///     assert_eq!(r, Ok(None));
/// });
/// ```
pub fn sleep_forever() -> Sleep<Infallible> {
    Sleep::new(Until::Forever)
}

#[derive(Debug, Clone, Copy)]
enum Until {
    After(u64),
    At(Instant),
    Forever,
    Fixed(Instant),
    /// The deadline had come by the first poll: the sleep is a [`checkpoint`], and it yielded.
    ///
    /// [`checkpoint`]: crate::lowlevel::checkpoint
    Yielded,
}

/// Future of [`sleep`], [`sleep_until`] and [`sleep_forever`]. Dropping it removes its timer.
#[derive(Debug)]
#[must_use = "futures do nothing unless awaited"]
pub struct Sleep<T = ()> {
    until: Until,
    timer: Timer,
    _out: std::marker::PhantomData<fn() -> T>,
}

impl<T> Sleep<T> {
    fn new(until: Until) -> Sleep<T> {
        Sleep { until, timer: Timer::new(), _out: std::marker::PhantomData }
    }
}

/// What a finished sleep returns: `()` for timed sleeps; `sleep_forever` never finishes.
pub trait SleepOutput: Sized + sealed::Sealed {
    #[doc(hidden)]
    fn finished() -> Self;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for () {}
    impl Sealed for std::convert::Infallible {}
}

impl SleepOutput for () {
    fn finished() {}
}

impl SleepOutput for Infallible {
    fn finished() -> Infallible {
        unreachable!("hatchery internal error: sleep_forever has no deadline and cannot finish")
    }
}

/// A sleep already due at its first poll (`sleep(ZERO)`, a deadline in the past) is exactly a
/// checkpoint (S2.4): a yield, then the cancel point, so that a deadline expiring in that pass
/// is seen (S1.9); no timer, and no I/O poll for one. Cold: sleeps mostly wait.
#[cold]
#[inline(never)]
fn due_yield<T>(cx: &mut Context<'_>) -> Poll<T> {
    let yielded = Pin::new(&mut yield_always()).poll(cx);
    debug_assert!(yielded.is_pending(), "hatchery internal error: a yield did not yield");
    Poll::Pending
}

/// The cancel point after [`due_yield`].
#[cold]
#[inline(never)]
fn due_checkpoint<T: SleepOutput>() -> Result<T, Cancelled> {
    checkpoint_if_cancelled().map(|()| T::finished())
}

impl<T: SleepOutput> Future for Sleep<T> {
    type Output = Result<T, Cancelled>;

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let deadline = match this.until {
            Until::Fixed(t) => Some(t),
            Until::Forever => None,
            Until::Yielded => return Poll::Ready(due_checkpoint()),
            first => {
                // First poll: fix the deadline (the wait below is the cancel point; in a
                // cancelled scope it fails before arming anything).
                let (t, due) = match first {
                    // A duration later than now is due only if it is zero.
                    Until::After(nanos) => (now().saturating_add_nanos(nanos), nanos == 0),
                    Until::At(t) => (t, t <= now()),
                    _ => unreachable!(),
                };
                if due {
                    this.until = Until::Yielded;
                    return due_yield(cx);
                }
                this.until = Until::Fixed(t);
                Some(t)
            }
        };
        this.timer.poll_wait(deadline, cx).map_ok(|()| T::finished())
    }
}
