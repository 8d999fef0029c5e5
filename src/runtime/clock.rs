//! The runtime's clock: the only place in the crate that reads the operating system's time.
//!
//! Ground rules: every instant the crate handles is a [`Instant`] from the clock of the run it
//! belongs to. The system clock adds a large random offset (as Trio does), so code that mixes
//! hatchery instants with wall-clock time breaks visibly instead of subtly. The virtual clock
//! ([`MockClock`]) moves by [`MockClock::jump`], by autojump, which the event loop performs when
//! every task is blocked, and, at a rate above zero, with real time.

use std::cell::Cell;
use std::fmt;
use std::ops::{Add, AddAssign, Sub};
use std::rc::Rc;
use std::time::Duration;

/// A point in time on the clock of a hatchery run.
///
/// Nanoseconds since the clock's origin. The virtual clock starts at [`Instant::ZERO`]; the system
/// clock starts at a random point between 10,000 and 200,000 seconds. Arithmetic saturates:
/// adding a huge duration gives [`Instant::MAX`], which means "never".
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Instant(u64);

impl Instant {
    /// The clock's origin.
    pub const ZERO: Instant = Instant(0);
    /// The far future: a deadline of `MAX` never fires.
    pub const MAX: Instant = Instant(u64::MAX);

    /// `nanos` later, saturating at `MAX` (never).
    #[inline]
    pub(crate) fn saturating_add_nanos(self, nanos: u64) -> Instant {
        Instant(self.0.saturating_add(nanos))
    }

    /// The instant `d` after the origin.
    pub fn from_origin(d: Duration) -> Instant {
        Instant(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }

    /// Time since the clock's origin.
    pub fn since_origin(self) -> Duration {
        Duration::from_nanos(self.0)
    }

    /// Seconds since the origin, as a float (handy in examples and logs).
    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / 1e9
    }

    /// Time from `earlier` to `self`, or zero if `earlier` is later.
    pub fn saturating_duration_since(self, earlier: Instant) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }

    /// `self + d`, or `None` if that is past [`Instant::MAX`].
    pub fn checked_add(self, d: Duration) -> Option<Instant> {
        let d = u64::try_from(d.as_nanos()).ok()?;
        self.0.checked_add(d).map(Instant)
    }

    /// `self - d`, or `None` if that is before the origin.
    pub fn checked_sub(self, d: Duration) -> Option<Instant> {
        let d = u64::try_from(d.as_nanos()).ok()?;
        self.0.checked_sub(d).map(Instant)
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;
    fn add(self, d: Duration) -> Instant {
        self.checked_add(d).unwrap_or(Instant::MAX)
    }
}

impl AddAssign<Duration> for Instant {
    fn add_assign(&mut self, d: Duration) {
        *self = *self + d;
    }
}

impl Sub<Duration> for Instant {
    type Output = Instant;
    fn sub(self, d: Duration) -> Instant {
        self.checked_sub(d).unwrap_or(Instant::ZERO)
    }
}

impl Sub<Instant> for Instant {
    type Output = Duration;
    /// Saturates at zero.
    fn sub(self, earlier: Instant) -> Duration {
        self.saturating_duration_since(earlier)
    }
}

impl fmt::Debug for Instant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == Instant::MAX {
            f.write_str("Instant(never)")
        } else {
            write!(f, "Instant({:?})", self.since_origin())
        }
    }
}

/// A virtual clock for tests (Trio's `MockClock`).
///
/// Time starts at [`Instant::ZERO`] and moves only when [`jump`](MockClock::jump) is called or,
/// with an autojump threshold set, when every task has been blocked for that long in real time:
/// the clock then jumps straight to the next deadline. A threshold of zero jumps as soon as every
/// task is blocked, so a test of a one-hour timeout takes microseconds and can assert exact
/// instants. With no deadline pending, autojump does nothing, so a real deadlock still hangs.
///
/// It can also run: with a [rate](MockClock::set_rate) above zero, virtual time advances by
/// `rate` virtual seconds per real second (S8.1), and a run with nothing to do sleeps the real
/// time that takes (S8.2): at rate 10, a one-second sleep takes a tenth of a second. The rate is
/// zero by default (the clock stands still between jumps).
///
/// Clones share the same clock. Pass one to [`Builder::clock`](crate::Builder::clock).
///
/// ```
/// use std::time::Duration;
/// use hatchery::{testing::MockClock, Builder, Instant};
///
/// let clock = MockClock::with_autojump(Duration::ZERO);
/// let t = Builder::new().clock(clock.clone()).run(async {
///     hatchery::sleep(Duration::from_secs(3600)).await.unwrap();
///     hatchery::now()
/// });
/// assert_eq!(t, Instant::ZERO + Duration::from_secs(3600));
/// ```
#[derive(Clone)]
pub struct MockClock {
    state: Rc<MockState>,
}

struct MockState {
    /// The virtual time at `since` (nanoseconds).
    now: Cell<u64>,
    /// The real time the clock last stood at `now`; it matters only while `rate` is above zero.
    since: Cell<std::time::Instant>,
    rate: Cell<f64>,
    autojump: Cell<Option<Duration>>,
}

/// A [`MockClock`] rate that is negative or not a number.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[error("a MockClock's rate must be a finite number of zero or more, not {0}")]
pub struct InvalidRate(pub f64);

impl MockClock {
    /// A clock at zero with autojump off.
    pub fn new() -> MockClock {
        MockClock {
            state: Rc::new(MockState {
                now: Cell::new(0),
                since: Cell::new(real_now()),
                rate: Cell::new(0.0),
                autojump: Cell::new(None),
            }),
        }
    }

    /// Virtual seconds per real second; zero (the default) for a clock that moves only by
    /// jumps.
    pub fn rate(&self) -> f64 {
        self.state.rate.get()
    }

    /// Sets the rate at which the clock runs by itself. Changing it does not change the current
    /// time (S8.1).
    ///
    /// ```
    /// use std::time::Duration;
    /// use hatchery::{testing::MockClock, Builder};
    ///
    /// let clock = MockClock::new();
    /// clock.set_rate(1000.0).unwrap(); // a virtual second per real millisecond
    /// let real = std::time::Instant::now();
    /// Builder::new().clock(clock.clone()).run(async {
    ///     hatchery::sleep(Duration::from_secs(2)).await.unwrap();
    /// });
    /// assert!(clock.now().as_secs_f64() >= 2.0);
    /// assert!(real.elapsed() >= Duration::from_millis(2));
    /// assert!(clock.set_rate(-1.0).is_err());
    /// ```
    ///
    /// # Errors
    ///
    /// [`InvalidRate`] for a negative rate, an infinite one or not a number; the rate is then
    /// left as it was.
    pub fn set_rate(&self, rate: f64) -> Result<(), InvalidRate> {
        if !(rate.is_finite() && rate >= 0.0) {
            return Err(InvalidRate(rate));
        }
        self.rebase_at(real_now());
        self.state.rate.set(rate);
        Ok(())
    }

    /// Folds the time run since `since` into `now`; at rate zero nothing has run, and no OS
    /// time is read (`set_rate` restarts `since` before a rate above zero applies).
    fn rebase(&self) {
        if self.state.rate.get() != 0.0 {
            self.rebase_at(real_now());
        }
    }

    fn rebase_at(&self, real: std::time::Instant) {
        self.state.now.set(self.now_at(real).0);
        self.state.since.set(real);
    }

    /// The virtual time at real time `real`.
    fn now_at(&self, real: std::time::Instant) -> Instant {
        let base = self.state.now.get();
        let rate = self.state.rate.get();
        if rate == 0.0 {
            return Instant(base);
        }
        let ran = real.saturating_duration_since(self.state.since.get()).as_nanos() as f64 * rate;
        // Saturates short of `MAX`, which means "never".
        Instant(base.saturating_add(ran as u64).min(Instant::MAX.0 - 1))
    }

    /// A clock at zero that autojumps after `threshold` of real time with every task blocked.
    pub fn with_autojump(threshold: Duration) -> MockClock {
        let c = MockClock::new();
        c.set_autojump_threshold(Some(threshold));
        c
    }

    /// The current virtual time.
    pub fn now(&self) -> Instant {
        if self.state.rate.get() == 0.0 { Instant(self.state.now.get()) } else { self.now_at(real_now()) }
    }

    /// Moves the clock forward by `d`. Deadlines that become due fire on the next loop pass.
    ///
    /// The clock stops one nanosecond short of [`Instant::MAX`], which means "never": a jump
    /// of `Duration::MAX` fires every deadline but leaves `sleep_until(Instant::MAX)` waiting.
    pub fn jump(&self, d: Duration) {
        self.rebase();
        let now = (Instant(self.state.now.get()) + d).0.min(Instant::MAX.0 - 1);
        self.state.now.set(now);
    }

    /// How long in real time until the clock reaches `deadline` by itself: never at rate zero.
    fn real_wait_until(&self, deadline: Instant) -> Option<Duration> {
        let now = self.now();
        if deadline <= now {
            return Some(Duration::ZERO);
        }
        let rate = self.state.rate.get();
        if rate == 0.0 || deadline == Instant::MAX {
            return None;
        }
        // Rounded up, so the loop does not wake a hair early and spin.
        let nanos = ((deadline.0 - now.0) as f64 / rate).ceil();
        Some(Duration::from_nanos(if nanos >= u64::MAX as f64 { u64::MAX } else { nanos as u64 }))
    }

    /// Sets (or, with `None`, turns off) the autojump threshold. Takes effect at once, also
    /// during a run.
    pub fn set_autojump_threshold(&self, threshold: Option<Duration>) {
        self.state.autojump.set(threshold);
    }

    /// The autojump threshold.
    pub fn autojump_threshold(&self) -> Option<Duration> {
        self.state.autojump.get()
    }

    pub(crate) fn jump_to(&self, t: Instant) {
        self.rebase();
        if t.0 > self.state.now.get() {
            self.state.now.set(t.0);
        }
    }
}

impl Default for MockClock {
    fn default() -> Self {
        MockClock::new()
    }
}

impl fmt::Debug for MockClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockClock")
            .field("now", &self.now())
            .field("rate", &self.rate())
            .field("autojump_threshold", &self.autojump_threshold())
            .finish()
    }
}

/// Real time, for measuring how long the loop has been idle (quiescence cushions and the
/// autojump threshold are in real time, S8.3, S8.4).
pub(crate) fn real_now() -> std::time::Instant {
    std::time::Instant::now()
}

/// The clock a run uses.
#[derive(Clone, Debug)]
pub(crate) enum Clock {
    System { origin: std::time::Instant, offset: u64 },
    Mock(MockClock),
}

impl Clock {
    pub(crate) fn system(seed: u64) -> Clock {
        // 10,000 to 200,000 seconds, as Trio's SystemClock.
        let offset = 10_000_000_000_000 + seed % 190_000_000_000_000;
        Clock::System { origin: std::time::Instant::now(), offset }
    }

    pub(crate) fn now(&self) -> Instant {
        match self {
            Clock::System { origin, offset } => Instant(offset + origin.elapsed().as_nanos() as u64),
            Clock::Mock(m) => m.now(),
        }
    }

    /// How long the event loop may sleep in real time before `deadline` is due.
    /// `None` means "as long as it likes" (a virtual clock at rate zero never reaches a deadline
    /// by itself).
    pub(crate) fn real_wait_until(&self, deadline: Instant) -> Option<Duration> {
        match self {
            Clock::System { .. } => {
                if deadline == Instant::MAX {
                    None
                } else {
                    Some(deadline.saturating_duration_since(self.now()))
                }
            }
            Clock::Mock(m) => m.real_wait_until(deadline),
        }
    }
}
