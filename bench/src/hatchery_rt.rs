//! The workloads on hatchery: children live in nurseries; the nursery's cost is included.
//!
//! Children that nobody awaits (`timers`, `timeout_cancel`, `cancel_nursery`) use
//! `Nursery::start_soon` and borrow their counters from the enclosing code: the nursery waits
//! for them, so no handle is needed.

use std::cell::Cell;
use std::future::Future;
use std::time::{Duration, Instant};

use hatchery::{Builder, Cancelled, Error, SchedulePolicy, move_on_after, nursery, sleep};

use crate::common::{LONG_SLEEP, SHORT_TIMEOUT, check, sum_below};

/// Runs `future` on a fresh hatchery run with FIFO scheduling (the benchmark policy).
fn run<F: Future>(future: F) -> F::Output {
    Builder::new().schedule(SchedulePolicy::Fifo).run(future)
}

/// Counts its own drops: proves that every child was dropped.
struct DropCount<'a>(&'a Cell<u64>);

impl Drop for DropCount<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get() + 1);
    }
}

/// `spawn_join`: wall time of spawning `n` children and awaiting their handles in order.
pub fn spawn_join(n: u64) -> Duration {
    let (elapsed, sum) = run(async {
        let t0 = Instant::now();
        let sum = nursery(async |nur| {
            let handles: Vec<_> = (0..n).map(|i| nur.spawn(async move { Ok::<_, Error>(i) })).collect();
            let mut sum = 0;
            for h in handles {
                sum += h.await?;
            }
            Ok(sum)
        })
        .await;
        (t0.elapsed(), sum)
    });
    check("hatchery spawn_join", sum.expect("nursery failed").expect("nursery cancelled"), sum_below(n));
    elapsed
}

/// `spawn_nested`: `parents` children each open a nursery with `children` children of their own.
pub fn spawn_nested(parents: u64, children: u64) -> Duration {
    let (elapsed, sum) = run(async {
        let t0 = Instant::now();
        let sum = nursery(async |outer| {
            let handles: Vec<_> = (0..parents)
                .map(|p| {
                    outer.spawn(async move {
                        let sum = nursery(async |inner| {
                            let handles: Vec<_> = (0..children)
                                .map(|c| inner.spawn(async move { Ok::<_, Error>(p * children + c) }))
                                .collect();
                            let mut sum = 0;
                            for h in handles {
                                sum += h.await?;
                            }
                            Ok(sum)
                        })
                        .await?;
                        Ok::<_, Error>(sum.unwrap_or(0))
                    })
                })
                .collect();
            let mut sum = 0;
            for h in handles {
                sum += h.await?;
            }
            Ok(sum)
        })
        .await;
        (t0.elapsed(), sum)
    });
    let sum = sum.expect("nursery failed").expect("nursery cancelled");
    check("hatchery spawn_nested", sum, sum_below(parents * children));
    elapsed
}

/// `timers`: wall time of `n` concurrent children each sleeping `duration`.
pub fn timers(n: u64, duration: Duration) -> Duration {
    let (elapsed, sum) = run(async {
        let sum = Cell::new(0);
        let t0 = Instant::now();
        let r = nursery(async |nur| {
            for i in 0..n {
                let sum = &sum;
                nur.start_soon(async move {
                    sleep(duration).await?;
                    sum.set(sum.get() + i);
                    Ok::<_, Cancelled>(())
                });
            }
            Ok(())
        })
        .await;
        let elapsed = t0.elapsed();
        r.expect("nursery failed").expect("nursery cancelled");
        (elapsed, sum.get())
    });
    check("hatchery timers", sum, sum_below(n));
    elapsed
}

/// `timeout_cancel`: wall time of `n` children each running a 1 ms timeout around a long sleep.
pub fn timeout_cancel(n: u64) -> Duration {
    let (elapsed, timed_out) = run(async {
        let timed_out = Cell::new(0);
        let t0 = Instant::now();
        let r = nursery(async |nur| {
            for _ in 0..n {
                let timed_out = &timed_out;
                nur.start_soon(async move {
                    let r = move_on_after(SHORT_TIMEOUT, async {
                        sleep(LONG_SLEEP).await?;
                        Ok::<_, Cancelled>(())
                    })
                    .await?;
                    if r.is_none() {
                        timed_out.set(timed_out.get() + 1);
                    }
                    Ok::<_, Cancelled>(())
                });
            }
            Ok(())
        })
        .await;
        let elapsed = t0.elapsed();
        r.expect("nursery failed").expect("nursery cancelled");
        (elapsed, timed_out.get())
    });
    check("hatchery timeout_cancel", timed_out, n);
    elapsed
}

/// `cancel_nursery`: `n` children sleep for an hour; once all are parked
/// (`wait_all_tasks_blocked`), the body cancels the nursery's scope. Measures from the cancel
/// call to the nursery's return.
pub fn cancel_nursery(n: u64) -> Duration {
    let (elapsed, dropped) = run(async {
        let dropped = Cell::new(0);
        let cancelled_at = Cell::new(None);
        let r = nursery(async |nur| {
            for _ in 0..n {
                let guard = DropCount(&dropped);
                nur.start_soon(async move {
                    let _guard = guard;
                    sleep(LONG_SLEEP).await?;
                    Ok::<_, Cancelled>(())
                });
            }
            hatchery::testing::wait_all_tasks_blocked().await?;
            cancelled_at.set(Some(Instant::now()));
            nur.cancel_scope().cancel();
            Ok(())
        })
        .await;
        let elapsed = cancelled_at.get().expect("the body never cancelled").elapsed();
        r.expect("nursery failed");
        (elapsed, dropped.get())
    });
    check("hatchery cancel_nursery (children dropped)", dropped, n);
    elapsed
}
