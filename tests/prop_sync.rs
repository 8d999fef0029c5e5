//! Property tests: the Mutex, the Semaphore and the CapacityLimiter (whose total also changes
//! at random instants) under random tasks, hold times, `try_` calls, deadline cancellations and
//! dropped futures, checked step by step against a model of a fair hand-off lock.
//!
//! The model is a FIFO queue of parked waiters, a set of waiters the resource was handed to and
//! a free count. The harness sees every transition as it happens (a future's first poll, its
//! result, its drop, a guard's drop) and applies it to the model; after each, the primitive's own
//! `value` and `tasks_waiting` must match. So a waiter served out of FIFO order, a unit lost by a
//! cancelled or dropped future, a barging `try_` call or two holders at once all fail at the
//! step where they happen. At the end: value back at its initial count, no waiter, nothing
//! registered.
//!
//! Default 256 cases per property; set `PROPTEST_CASES` for more.

mod support;

use std::cell::RefCell;
use std::collections::{BTreeSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use hatchery::sync::{
    CapacityLimiter, CapacityToken, LockError, Mutex, MutexGuard, Semaphore, SemaphorePermit,
};
use hatchery::testing::registrations;
use hatchery::{Cancelled, SchedulePolicy, move_on_after, nursery, sleep};
use proptest::prelude::*;
use support::secs;

/// A boxed acquire future of a [`Res`].
type AcquireFut<'r, G> = Pin<Box<dyn Future<Output = Result<G, Cancelled>> + 'r>>;

/// What the harness needs from a primitive with `permits` units.
trait Res {
    type Guard<'a>
    where
        Self: 'a;
    fn acquire(&self) -> AcquireFut<'_, Self::Guard<'_>>;
    fn try_acquire(&self) -> Option<Self::Guard<'_>>;
    fn waiting(&self) -> usize;
    /// Units free now.
    fn value(&self) -> usize;
    /// Changes the number of units (only the limiter can).
    fn resize(&self, _units: usize) {
        unreachable!("only a CapacityLimiter changes its total")
    }
}

impl Res for CapacityLimiter {
    type Guard<'a> = CapacityToken<'a>;
    fn acquire(&self) -> AcquireFut<'_, CapacityToken<'_>> {
        Box::pin(CapacityLimiter::acquire(self))
    }
    fn try_acquire(&self) -> Option<CapacityToken<'_>> {
        CapacityLimiter::try_acquire(self).ok()
    }
    fn waiting(&self) -> usize {
        self.statistics().tasks_waiting
    }
    fn value(&self) -> usize {
        self.available_tokens()
    }
    fn resize(&self, units: usize) {
        self.set_total_tokens(units);
    }
}

impl Res for Mutex<()> {
    type Guard<'a> = MutexGuard<'a, ()>;
    fn acquire(&self) -> AcquireFut<'_, MutexGuard<'_, ()>> {
        Box::pin(async move {
            self.lock().await.map_err(|e| match e {
                LockError::Cancelled(c) => c,
                other => panic!("unexpected {other}"),
            })
        })
    }
    fn try_acquire(&self) -> Option<MutexGuard<'_, ()>> {
        self.try_lock().ok()
    }
    fn waiting(&self) -> usize {
        self.statistics().tasks_waiting
    }
    fn value(&self) -> usize {
        usize::from(!self.is_locked())
    }
}

impl Res for Semaphore {
    type Guard<'a> = SemaphorePermit<'a>;
    fn acquire(&self) -> AcquireFut<'_, SemaphorePermit<'_>> {
        Box::pin(Semaphore::acquire(self))
    }
    fn try_acquire(&self) -> Option<SemaphorePermit<'_>> {
        Semaphore::try_acquire(self).ok()
    }
    fn waiting(&self) -> usize {
        self.statistics().tasks_waiting
    }
    fn value(&self) -> usize {
        Semaphore::value(self)
    }
}

#[derive(Debug, Default)]
struct Model {
    permits: usize,
    /// Units free: the total less the units out (below zero while a limiter's total is lowered
    /// under the tokens out: nothing is revoked).
    value: i64,
    /// Parked, not yet handed the resource, in arrival order.
    queue: VecDeque<usize>,
    /// Handed the resource, not yet returned from their future.
    granted: BTreeSet<usize>,
    holders: usize,
    /// Successful acquisitions, for the report.
    acquired: usize,
}

impl Model {
    /// A unit comes back: to the oldest waiter if none is owed (the total not lowered below the
    /// units out), else to the free count.
    fn release(&mut self) {
        match self.queue.front() {
            Some(_) if self.value == 0 => {
                let id = self.queue.pop_front().unwrap();
                self.granted.insert(id);
            }
            _ => self.value += 1,
        }
    }

    /// The total changes: the free count with it, and the oldest waiters get what is free.
    fn resize(&mut self, units: usize) {
        self.value += units as i64 - self.permits as i64;
        self.permits = units;
        while self.value > 0 {
            let Some(id) = self.queue.pop_front() else { break };
            self.granted.insert(id);
            self.value -= 1;
        }
    }
}

struct Ctx<'r, R> {
    res: &'r R,
    model: RefCell<Model>,
}

impl<R: Res> Ctx<'_, R> {
    fn check(&self, what: &str) {
        if std::thread::panicking() {
            return;
        }
        let m = self.model.borrow();
        assert_eq!(self.res.value() as i64, m.value.max(0), "free units after {what}: {m:?}");
        assert_eq!(self.res.waiting(), m.queue.len(), "waiters after {what}: {m:?}");
        assert!(
            m.value < 0 || (m.holders + m.granted.len()) as i64 + m.value <= m.permits as i64,
            "more holders than units after {what}"
        );
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Fresh,
    /// Took the resource on the fast path; passing its schedule point.
    Fast,
    Parked,
}

/// An acquire future under observation.
struct Tracked<'c, 'r, R: Res> {
    ctx: &'c Ctx<'r, R>,
    id: usize,
    fut: Option<AcquireFut<'r, R::Guard<'r>>>,
    phase: Phase,
}

/// A guard under observation: its drop is a release in the model.
struct Held<'c, 'r, R: Res> {
    ctx: &'c Ctx<'r, R>,
    guard: Option<R::Guard<'r>>,
}

impl<'c, 'r, R: Res> Held<'c, 'r, R> {
    fn new(ctx: &'c Ctx<'r, R>, guard: R::Guard<'r>) -> Self {
        let mut m = ctx.model.borrow_mut();
        m.holders += 1;
        m.acquired += 1;
        assert!(
            m.holders as i64 <= m.permits as i64 - m.value.min(0),
            "mutual exclusion violated: {} holders of {}",
            m.holders,
            m.permits
        );
        Held { ctx, guard: Some(guard) }
    }
}

impl<R: Res> Drop for Held<'_, '_, R> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut m = self.ctx.model.borrow_mut();
        m.holders -= 1;
        m.release();
        drop(m);
        self.ctx.check("a release");
    }
}

impl<'c, 'r, R: Res> Tracked<'c, 'r, R> {
    fn new(ctx: &'c Ctx<'r, R>, id: usize) -> Self {
        Tracked { ctx, id, fut: Some(ctx.res.acquire()), phase: Phase::Fresh }
    }
}

impl<'c, 'r, R: Res> Future for Tracked<'c, 'r, R> {
    type Output = Result<Held<'c, 'r, R>, Cancelled>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let ctx = this.ctx;
        let before = ctx.res.waiting();
        let r = this.fut.as_mut().expect("polled after completion").as_mut().poll(cx);
        if this.phase == Phase::Fresh {
            let mut m = ctx.model.borrow_mut();
            if ctx.res.waiting() == before + 1 {
                this.phase = Phase::Parked;
                assert!(m.value <= 0, "task {} parked while a unit was free", this.id);
                m.queue.push_back(this.id);
            } else if !matches!(r, Poll::Ready(Err(_))) {
                this.phase = Phase::Fast;
                assert!(m.value > 0 && m.queue.is_empty(), "task {} barged: {m:?}", this.id);
                m.value -= 1;
            }
            drop(m);
            ctx.check("a first poll");
        }
        let r = match r {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(r) => r,
        };
        this.fut = None;
        {
            let mut m = ctx.model.borrow_mut();
            match (&r, this.phase) {
                (Ok(_), Phase::Parked) => {
                    assert!(m.granted.remove(&this.id), "task {} served out of FIFO order: {m:?}", this.id)
                }
                (Ok(_), Phase::Fast) => {}
                (Err(_), Phase::Parked) => {
                    let pos = m.queue.iter().position(|&w| w == this.id);
                    assert!(
                        pos.is_some(),
                        "task {} was handed the unit but reported a cancellation",
                        this.id
                    );
                    m.queue.remove(pos.unwrap());
                }
                (Err(_), Phase::Fresh) => {}
                (r, phase) => panic!("task {}: {:?} in phase {phase:?}", this.id, r.is_ok()),
            }
        }
        ctx.check("a result");
        Poll::Ready(r.map(|g| Held::new(ctx, g)))
    }
}

impl<R: Res> Drop for Tracked<'_, '_, R> {
    fn drop(&mut self) {
        let Some(fut) = self.fut.take() else { return };
        let before = self.ctx.res.waiting();
        drop(fut);
        if std::thread::panicking() {
            return;
        }
        let mut m = self.ctx.model.borrow_mut();
        match self.phase {
            Phase::Fresh => {}
            Phase::Fast => m.release(),
            Phase::Parked => match m.queue.iter().position(|&w| w == self.id) {
                Some(pos) => {
                    m.queue.remove(pos);
                    assert_eq!(self.ctx.res.waiting() + 1, before, "a dropped waiter left the queue");
                }
                None => {
                    assert!(m.granted.remove(&self.id));
                    m.release();
                }
            },
        }
        drop(m);
        self.ctx.check("a drop");
    }
}

#[derive(Debug, Clone)]
enum Cancel {
    None,
    /// The acquire and the hold run in a scope with this deadline (seconds from the start of
    /// the operation).
    Deadline(u64),
    /// The acquire future is dropped if it has not finished after this many seconds. With
    /// `timer_first`, the timer is polled first, so the future may be dropped after the resource
    /// was handed to it (or during its fast path's schedule point) without seeing it.
    Drop {
        after: u64,
        timer_first: bool,
    },
}

#[derive(Debug, Clone)]
struct Op {
    try_first: bool,
    hold: u64,
    cancel: Cancel,
}

#[derive(Debug, Clone)]
struct Plan {
    start: u64,
    ops: Vec<Op>,
}

fn plans() -> impl Strategy<Value = Vec<Plan>> {
    let cancel = prop_oneof![
        3 => Just(Cancel::None),
        2 => (0..5u64).prop_map(Cancel::Deadline),
        2 => (0..5u64, any::<bool>()).prop_map(|(after, timer_first)| Cancel::Drop { after, timer_first }),
    ];
    let op = (prop::bool::weighted(0.2), 0..4u64, cancel).prop_map(|(try_first, hold, cancel)| Op {
        try_first,
        hold,
        cancel,
    });
    let plan = (0..4u64, prop::collection::vec(op, 1..4)).prop_map(|(start, ops)| Plan { start, ops });
    prop::collection::vec(plan, 1..9)
}

async fn hold<R: Res>(h: Held<'_, '_, R>, secs_: u64) -> Result<(), Cancelled> {
    let r = sleep(secs(secs_)).await;
    drop(h);
    r
}

async fn run_op<R: Res>(ctx: &Ctx<'_, R>, id: usize, op: &Op) -> Result<(), Cancelled> {
    if op.try_first {
        let want = ctx.model.borrow().value > 0 && ctx.model.borrow().queue.is_empty();
        let got = ctx.res.try_acquire();
        assert_eq!(got.is_some(), want, "try_acquire with {:?}", ctx.model.borrow());
        if let Some(g) = got {
            ctx.model.borrow_mut().value -= 1;
            ctx.check("a try_acquire");
            return hold(Held::new(ctx, g), op.hold).await;
        }
    }
    match op.cancel {
        Cancel::None => {
            let h = Tracked::new(ctx, id).await?;
            hold(h, op.hold).await
        }
        Cancel::Deadline(d) => {
            move_on_after(secs(d), async {
                let h = Tracked::new(ctx, id).await?;
                hold(h, op.hold).await
            })
            .await?;
            Ok(())
        }
        Cancel::Drop { after, timer_first } => {
            let mut acq = Box::pin(Tracked::new(ctx, id));
            let mut timer = Box::pin(sleep(secs(after)));
            let got = std::future::poll_fn(|cx| {
                if timer_first && timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(None);
                }
                if let Poll::Ready(r) = acq.as_mut().poll(cx) {
                    return Poll::Ready(Some(r));
                }
                if !timer_first && timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(None);
                }
                Poll::Pending
            })
            .await;
            drop(acq);
            match got {
                Some(r) => hold(r?, op.hold).await,
                None => Ok(()),
            }
        }
    }
}

/// Runs the plans against `res` (which starts with `permits` free units) and checks the end
/// state. `resizes` are `(instant, units)` changes of the total (a limiter's), in order.
fn check_plans<R: Res>(
    res: &R,
    permits: usize,
    plans: &[Plan],
    resizes: &[(u64, usize)],
    seed: u64,
) -> usize {
    let ctx = Ctx { res, model: RefCell::new(Model { permits, value: permits as i64, ..Model::default() }) };
    // A small yield budget taken from the seed: 0 makes every fast path stop at its schedule
    // point (where a cancellation or a drop can meet it); 1 to 3 mix the two paths.
    let builder = hatchery::testing::builder().seed(seed).schedule(SchedulePolicy::Shuffle);
    builder.yield_budget((seed % 4) as u32).run(async {
        let base = registrations();
        nursery(async |n| {
            if !resizes.is_empty() {
                let ctx = &ctx;
                n.start_soon(async move {
                    let mut at = 0;
                    for &(when, units) in resizes {
                        sleep(secs(when.saturating_sub(at))).await?;
                        at = at.max(when);
                        ctx.res.resize(units);
                        ctx.model.borrow_mut().resize(units);
                        ctx.check("a change of the total");
                    }
                    Ok::<_, Cancelled>(())
                });
            }
            for (i, plan) in plans.iter().enumerate() {
                let ctx = &ctx;
                n.start_soon(async move {
                    sleep(secs(plan.start)).await?;
                    for (k, op) in plan.ops.iter().enumerate() {
                        run_op(ctx, i * 16 + k, op).await?;
                    }
                    Ok::<_, Cancelled>(())
                });
            }
            Ok::<_, Cancelled>(())
        })
        .await
        .unwrap();
        assert_eq!(registrations(), base, "nothing left registered");
    });
    let m = ctx.model.into_inner();
    let total = resizes.last().map_or(permits, |&(_, units)| units);
    assert_eq!((res.value(), res.waiting()), (total, 0), "no unit leaked, no waiter left");
    assert!(m.queue.is_empty() && m.granted.is_empty() && m.holders == 0, "{m:?}");
    m.acquired
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(256),
        ..ProptestConfig::default()
    })]

    #[test]
    fn mutex_is_exclusive_fifo_and_leaks_nothing(plans in plans(), seed in any::<u64>()) {
        let m = Mutex::new(());
        check_plans(&m, 1, &plans, &[], seed);
        prop_assert!(!m.is_locked());
    }

    #[test]
    fn semaphore_never_exceeds_its_units_is_fifo_and_leaks_nothing(
        plans in plans(),
        permits in 1..4usize,
        seed in any::<u64>(),
    ) {
        let sem = Semaphore::new(permits);
        check_plans(&sem, permits, &plans, &[], seed);
        prop_assert_eq!(sem.value(), permits);
    }

    /// As the semaphore, while the total goes up and down at random instants (lowered below the
    /// tokens out, it revokes nothing; raised, it serves the oldest waiters at once).
    #[test]
    fn limiter_follows_its_changing_total_is_fifo_and_leaks_nothing(
        plans in plans(),
        permits in 1..4usize,
        resizes in prop::collection::vec((0..12u64, 0..5usize), 0..5),
        seed in any::<u64>(),
    ) {
        let mut resizes = resizes;
        resizes.sort_by_key(|&(at, _)| at);
        // Ends with at least one token, or the waiters left would wait for ever.
        if let Some(last) = resizes.last_mut() {
            last.1 = last.1.max(1);
        }
        let limiter = CapacityLimiter::new(permits);
        check_plans(&limiter, permits, &plans, &resizes, seed);
        prop_assert_eq!(limiter.borrowed_tokens(), 0);
    }
}
