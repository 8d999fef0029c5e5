//! The yield budget (DESIGN 3.4): the schedule point of an operation that completed without
//! blocking is taken once the task has passed `Builder::yield_budget` of them in its turn;
//! explicit checkpoints always yield; a budget of 0 yields at every schedule point, as Trio does.

use std::cell::{Cell, RefCell};

use hatchery::testing::{self, assert_checkpoints};
use hatchery::{Builder, DEFAULT_YIELD_BUDGET, Error, SchedulePolicy, lowlevel, nursery, unbounded};

const SENDS: u64 = 300;

/// Task A does `SENDS` sends that never block (an unbounded channel), counting them; task B
/// records the count each time it runs, until A is done. Returns B's observations.
fn observe(builder: Builder, explicit_checkpoint: bool) -> Vec<u64> {
    let sent = Cell::new(0u64);
    let seen = RefCell::new(Vec::new());
    builder.schedule(SchedulePolicy::Fifo).run(async {
        let (tx, rx) = unbounded::<u64>();
        nursery(async |n| {
            n.start_soon(async {
                for i in 0..SENDS {
                    tx.send(i).await?;
                    if explicit_checkpoint {
                        lowlevel::checkpoint().await?;
                    }
                    sent.set(sent.get() + 1);
                }
                Ok(())
            });
            n.start_soon(async {
                while sent.get() < SENDS {
                    seen.borrow_mut().push(sent.get());
                    lowlevel::checkpoint().await?;
                }
                Ok(())
            });
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
        assert_eq!(rx.statistics().buffer_used, SENDS as usize, "every send delivered");
    });
    seen.into_inner()
}

fn steps(seen: &[u64]) -> Vec<u64> {
    seen.windows(2).map(|w| w[1] - w[0]).collect()
}

#[test]
fn a_task_passes_its_budget_of_fast_paths_then_yields() {
    let seen = observe(testing::builder(), false);
    // A (polled first) completes 64 sends in its first turn and yields at the 65th; each later
    // turn returns from the pending send and completes 64 more.
    let budget = u64::from(DEFAULT_YIELD_BUDGET);
    let mut expected = vec![budget];
    while expected.last().unwrap() + budget + 1 < SENDS {
        expected.push(expected.last().unwrap() + budget + 1);
    }
    assert_eq!(seen, expected, "B runs between A's turns");
}

#[test]
fn a_budget_of_zero_yields_at_every_schedule_point() {
    let seen = observe(testing::builder().yield_budget(0), false);
    assert_eq!(seen.first(), Some(&0), "A's first send stopped at its schedule point");
    assert!(steps(&seen).iter().all(|&s| s == 1), "one send per turn: {:?}", steps(&seen));
    assert_eq!(seen.len() as u64, SENDS);
}

#[test]
fn a_small_budget_bounds_the_run_between_yields() {
    let seen = observe(testing::builder().yield_budget(3), false);
    assert_eq!(seen.first(), Some(&3));
    assert!(steps(&seen).iter().all(|&s| s == 4), "{:?}", steps(&seen));
}

#[test]
fn an_explicit_checkpoint_always_yields() {
    let seen = observe(testing::builder(), true);
    assert_eq!(seen.first(), Some(&0), "A yielded at its first checkpoint");
    assert!(steps(&seen).iter().all(|&s| s == 1), "{:?}", steps(&seen));
}

#[test]
fn a_fast_path_within_the_budget_is_still_a_checkpoint() {
    testing::run(async {
        let (tx, rx) = unbounded::<u32>();
        // Neither operation blocks, so neither yields; both count a cancel point and a
        // schedule point.
        assert_checkpoints(async { tx.send(1).await.unwrap() }).await;
        assert_checkpoints(async { assert_eq!(rx.recv().await, Ok(1)) }).await;
    });
}

#[test]
fn a_cancelled_scope_stops_a_fast_path_whatever_the_budget() {
    testing::run(async {
        let (tx, rx) = unbounded::<u32>();
        let scope = hatchery::CancelScope::new();
        scope.handle().cancel();
        let r = scope.run(tx.send(7)).await;
        assert!(matches!(r, Ok(None)), "{r:?}");
        assert_eq!(rx.try_recv(), Err(hatchery::TryRecvError::Empty), "nothing was sent");
    });
}
