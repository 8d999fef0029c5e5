//! Sleeps, the virtual clock, autojump and quiescence (S2.4, S8.x), plus the system clock's offset (S1.8).

mod support;

use std::cell::{Cell, RefCell};
use std::time::Duration;

use hatchery::testing::{self, MockClock, registrations, wait_all_tasks_blocked};
use hatchery::{
    Builder, CancelScope, CancelSource, Cancelled, Instant, move_on_after, now, nursery, sleep,
    sleep_forever, sleep_until,
};
use support::{Log, at, poll_once, poll_once_foreign, secs};

#[test]
fn sleep_ends_at_its_exact_instant() {
    let (a, b, c) = testing::run(async {
        sleep(secs(3)).await.unwrap();
        let a = now();
        sleep(Duration::from_nanos(1)).await.unwrap();
        let b = now();
        sleep(Duration::from_millis(1500)).await.unwrap();
        (a, b, now())
    });
    assert_eq!(a, at(3));
    assert_eq!(b, at(3) + Duration::from_nanos(1));
    assert_eq!(c, at(3) + Duration::from_nanos(1) + Duration::from_millis(1500));
}

#[test]
fn sleep_until_ends_at_the_deadline() {
    let t = testing::run(async {
        sleep_until(at(42)).await.unwrap();
        now()
    });
    assert_eq!(t, at(42));
}

#[test]
fn sleep_zero_is_a_checkpoint_s2_4() {
    testing::run(async {
        // A schedule point: two tasks doing "record; sleep(0)" advance in lock-step.
        let log = Log::new();
        nursery(async |n| {
            for _ in 0..2 {
                let log = &log;
                n.start_soon(async move {
                    for k in 0..3 {
                        log.push(format!("{k}"));
                        sleep(Duration::ZERO).await?;
                    }
                    Ok::<_, Cancelled>(())
                });
            }
            Ok::<_, Cancelled>(())
        })
        .await
        .unwrap();
        assert_eq!(log.take(), ["0", "0", "1", "1", "2", "2"]);
        assert_eq!(now(), at(0), "sleep(0) does not move the clock");

        // A cancel point: in a cancelled scope it fails.
        let scope = CancelScope::new();
        scope.handle().cancel();
        let r = scope
            .run(async {
                let e = sleep(Duration::ZERO).await.unwrap_err();
                assert_eq!(e.source(), CancelSource::Explicit);
                Err::<(), _>(e)
            })
            .await;
        assert_eq!(r, Ok(None));

        // And a full checkpoint.
        testing::assert_checkpoints(sleep(Duration::ZERO)).await.unwrap();
    });
}

#[test]
fn sleep_until_in_the_past_checkpoints_and_returns_ok_s2_4() {
    testing::run(async {
        sleep(secs(5)).await.unwrap();
        testing::assert_checkpoints(sleep_until(at(1))).await.unwrap();
        testing::assert_checkpoints(sleep_until(Instant::ZERO)).await.unwrap();
        testing::assert_checkpoints(sleep_until(now())).await.unwrap();
        assert_eq!(now(), at(5), "a past deadline does not move the clock");

        // Still a cancel point.
        let scope = CancelScope::new();
        scope.handle().cancel();
        let r = scope.run(async { sleep_until(at(1)).await }).await;
        assert_eq!(r, Ok(None));
    });
}

#[test]
fn sleep_forever_only_ends_with_cancelled_s2_4() {
    testing::run(async {
        // By a deadline.
        let r = move_on_after(secs(3), async {
            sleep_forever().await?;
            Ok::<(), Cancelled>(())
        })
        .await;
        assert_eq!(r, Ok(None));
        assert_eq!(now(), at(3));

        // By an explicit cancel from a sibling, after all timers are gone: autojump has nothing
        // to jump to, so the cancel is the only way out.
        let scope = CancelScope::new();
        let h = scope.handle();
        let got = RefCell::new(None);
        nursery(async |n| {
            n.start_soon(async {
                let r = scope
                    .run(async {
                        sleep_forever().await?;
                        Ok::<(), Cancelled>(())
                    })
                    .await;
                *got.borrow_mut() = Some(r);
                Ok::<_, Cancelled>(())
            });
            wait_all_tasks_blocked().await?;
            assert_eq!(now(), at(3), "nothing to jump to");
            h.cancel();
            Ok(())
        })
        .await
        .unwrap();
        assert_eq!(got.take(), Some(Ok(None)));
        assert!(h.cancelled_caught());

        // The error itself, seen from inside.
        let scope = CancelScope::new();
        scope.handle().cancel_with_reason("stop");
        let r = scope
            .run(async {
                let Err(c) = sleep_forever().await;
                assert_eq!(c.source(), CancelSource::Explicit);
                assert_eq!(c.reason(), Some("stop"));
                Err::<(), _>(c)
            })
            .await;
        assert_eq!(r, Ok(None));
        assert_eq!(now(), at(3));
    });
}

#[test]
fn mock_clock_jump_moves_time_and_wakes_due_sleepers_s8_1() {
    let clock = MockClock::new();
    assert_eq!(clock.now(), Instant::ZERO);
    clock.jump(secs(2));
    assert_eq!(clock.now(), at(2), "jump works before the run too");
    let c = clock.clone();
    let woke = Cell::new(None);
    Builder::new().clock(clock.clone()).seed(1).run(async {
        assert_eq!(now(), at(2));
        nursery(async |n| {
            n.start_soon(async {
                sleep(secs(10)).await?;
                woke.set(Some(now()));
                Ok::<_, Cancelled>(())
            });
            wait_all_tasks_blocked().await?;
            c.jump(secs(4));
            assert_eq!(now(), at(6));
            // Not due yet: the sleeper stays asleep.
            wait_all_tasks_blocked().await?;
            assert_eq!(woke.get(), None);
            assert_eq!(now(), at(6));
            // Exactly due.
            c.jump(secs(6));
            wait_all_tasks_blocked().await?;
            assert_eq!(woke.get(), Some(at(12)));
            Ok(())
        })
        .await
        .unwrap();
    });
    assert_eq!(woke.get(), Some(at(12)));
    assert_eq!(clock.now(), at(12));
}

#[test]
fn a_jump_of_the_longest_duration_stops_short_of_never() {
    let clock = MockClock::new();
    clock.jump(Duration::MAX);
    assert!(clock.now() < Instant::MAX, "the clock reached never: {:?}", clock.now());
    let c = clock.clone();
    Builder::new().clock(clock.clone()).run(async {
        // A sleep until never still never ends; one until now passes.
        let mut never = Box::pin(sleep_until(Instant::MAX));
        assert!(poll_once(&mut never).await.is_pending());
        c.jump(Duration::MAX);
        assert!(now() < Instant::MAX);
        assert!(poll_once(&mut never).await.is_pending());
        assert_eq!(sleep_until(now()).await, Ok(()));
    });
}

#[test]
fn jump_past_a_deadline_wakes_at_the_jumped_time_s8_1() {
    let clock = MockClock::new();
    let c = clock.clone();
    let (woke, end) = Builder::new().clock(clock).seed(1).run(async {
        let woke = Cell::new(None);
        nursery(async |n| {
            n.start_soon(async {
                sleep(secs(10)).await?;
                woke.set(Some(now()));
                Ok::<_, Cancelled>(())
            });
            wait_all_tasks_blocked().await?;
            c.jump(secs(25));
            Ok(())
        })
        .await
        .unwrap();
        (woke.get(), now())
    });
    assert_eq!(woke, Some(at(25)), "a virtual clock cannot stop at the deadline it jumped over");
    assert_eq!(end, at(25));
}

#[test]
fn autojump_zero_jumps_straight_to_each_deadline_s8_3() {
    let clock = MockClock::with_autojump(Duration::ZERO);
    let log = Builder::new().clock(clock.clone()).seed(3).run(async {
        let mut log = Vec::new();
        sleep(secs(3600)).await.unwrap();
        log.push(now());
        sleep(secs(1)).await.unwrap();
        log.push(now());
        log
    });
    assert_eq!(log, [at(3600), at(3601)]);
    assert_eq!(clock.now(), at(3601));
}

#[test]
fn autojump_none_needs_a_manual_jump_s8_3() {
    let clock = MockClock::new();
    assert_eq!(clock.autojump_threshold(), None);
    let c = clock.clone();
    let (woke, blocked_at) = Builder::new().clock(clock).seed(3).run(async {
        let woke = Cell::new(None);
        let mut blocked_at = None;
        nursery(async |n| {
            n.start_soon(async {
                sleep(secs(100)).await?;
                woke.set(Some(now()));
                Ok::<_, Cancelled>(())
            });
            // Everything else is blocked, yet the clock did not move.
            wait_all_tasks_blocked().await?;
            blocked_at = Some(now());
            assert_eq!(woke.get(), None);
            c.jump(secs(100));
            Ok(())
        })
        .await
        .unwrap();
        (woke.get(), blocked_at)
    });
    assert_eq!(blocked_at, Some(Instant::ZERO));
    assert_eq!(woke, Some(at(100)));
}

#[test]
fn autojump_threshold_change_takes_effect_during_the_run_s8_3() {
    let clock = MockClock::new();
    let c = clock.clone();
    let woke = Builder::new().clock(clock).seed(4).run(async {
        let woke = Cell::new(None);
        nursery(async |n| {
            n.start_soon(async {
                sleep(secs(100)).await?;
                woke.set(Some(now()));
                Ok::<_, Cancelled>(())
            });
            wait_all_tasks_blocked().await?;
            assert_eq!(now(), Instant::ZERO);
            c.set_autojump_threshold(Some(Duration::ZERO));
            Ok(())
        })
        .await
        .unwrap();
        woke.get()
    });
    assert_eq!(woke, Some(at(100)));
}

#[test]
fn autojump_with_a_small_real_threshold_still_lands_exactly_s8_3() {
    let clock = MockClock::with_autojump(Duration::from_millis(1));
    let t = Builder::new().clock(clock).seed(4).run(async {
        sleep(secs(7)).await.unwrap();
        sleep(secs(7)).await.unwrap();
        now()
    });
    assert_eq!(t, at(14));
}

#[test]
fn sleeps_of_ten_i_seconds_end_on_their_deadlines_fast_s8_5() {
    let started = std::time::Instant::now();
    let ends = testing::run(async {
        let mut ends = Vec::new();
        for i in 0..10u64 {
            let start = now();
            sleep(secs(10 * i)).await.unwrap();
            ends.push(now() - start);
        }
        assert_eq!(now(), at(450));
        ends
    });
    let elapsed = started.elapsed();
    assert_eq!(ends, (0..10u64).map(|i| secs(10 * i)).collect::<Vec<_>>());
    assert!(elapsed < Duration::from_secs(5), "450 virtual seconds took {elapsed:?} of real time");
}

#[test]
fn wait_all_tasks_blocked_takes_precedence_over_autojump_s8_4() {
    testing::run(async {
        let log = Log::new();
        nursery(async |n| {
            n.start_soon(async {
                sleep(secs(5)).await?;
                log.push(format!("sleeper woke at {:?}", now()));
                Ok::<_, Cancelled>(())
            });
            n.start_soon(async {
                wait_all_tasks_blocked().await?;
                log.push(format!("quiescent at {:?}", now()));
                Ok(())
            });
            Ok(())
        })
        .await
        .unwrap();
        assert_eq!(log.take(), [format!("quiescent at {:?}", at(0)), format!("sleeper woke at {:?}", at(5))]);
    });
}

#[test]
fn wait_all_tasks_blocked_smallest_cushion_first_and_cancellable_s8_4() {
    testing::run(async {
        let before = registrations();
        let scope = CancelScope::new();
        let h = scope.handle();
        let r = nursery(async |n| {
            // The zero cushion wakes first (the body's hour-long cushion holds autojump back, and
            // is never reached in real time): it cancels the body's wait.
            n.start_soon(async {
                wait_all_tasks_blocked().await?;
                h.cancel();
                Ok::<_, Cancelled>(())
            });
            let r = scope.run(testing::wait_all_tasks_blocked_cushion(secs(3600))).await;
            assert_eq!(r, Ok(None));
            assert!(h.cancelled_caught());
            // An already-cancelled scope fails at once too.
            let r = CancelScope::new().with_deadline(Instant::ZERO).run(wait_all_tasks_blocked()).await;
            assert_eq!(r, Ok(None));
            Ok(())
        })
        .await;
        assert_eq!(r.unwrap(), Some(()));
        assert_eq!(now(), at(0));
        assert_eq!(registrations(), before);
    });
}

#[test]
fn thousand_sleepers_wake_at_their_exact_instants_in_order() {
    const N: u64 = 1000;
    // A permutation of 1..=N milliseconds, so spawn order is not deadline order.
    let deadline = |id: u64| at(0) + Duration::from_millis((id * 7919) % N + 1);
    let log = RefCell::new(Vec::new());
    testing::run(async {
        nursery(async |n| {
            for id in 0..N {
                let log = &log;
                n.start_soon(async move {
                    sleep_until(deadline(id)).await?;
                    log.borrow_mut().push((now(), id));
                    Ok::<_, Cancelled>(())
                });
            }
            Ok(())
        })
        .await
        .unwrap();
        assert_eq!(now(), at(0) + Duration::from_millis(N));
    });
    let log = log.into_inner();
    assert_eq!(log.len(), N as usize);
    for &(t, id) in &log {
        assert_eq!(t, deadline(id), "sleeper {id} woke at {t:?}");
    }
    assert!(log.windows(2).all(|w| w[0].0 < w[1].0), "wake order follows the deadlines");
}

#[test]
fn dropping_a_pending_sleep_removes_its_timer() {
    testing::run(async {
        let before = registrations();
        let mut s = Box::pin(sleep(secs(10)));
        assert!(poll_once(s.as_mut()).await.is_pending());
        let armed = registrations();
        assert_eq!(armed.timers, before.timers + 1);
        // The task's own waker: the timer entry names the task, no waiter.
        assert_eq!(armed.parked, before.parked);
        drop(s);
        assert_eq!(registrations(), before);
        // A foreign waker: a waiter too, which the entry names; both go with the sleep.
        let mut s = Box::pin(sleep(secs(10)));
        assert!(poll_once_foreign(s.as_mut()).await.is_pending());
        let armed = registrations();
        assert_eq!((armed.timers, armed.parked), (before.timers + 1, before.parked + 1));
        drop(s);
        assert_eq!(registrations(), before);

        // With nothing left to wait for, the clock does not move to the dropped deadline.
        sleep(secs(1)).await.unwrap();
        assert_eq!(now(), at(1));

        // The same for a sleep_until and for a sleep_forever.
        let mut s = Box::pin(sleep_until(at(50)));
        assert!(poll_once(s.as_mut()).await.is_pending());
        assert_eq!(registrations().timers, before.timers + 1);
        drop(s);
        let mut f = Box::pin(sleep_forever());
        assert!(poll_once_foreign(f.as_mut()).await.is_pending());
        assert_eq!(registrations().parked, before.parked + 1);
        drop(f);
        assert_eq!(registrations(), before);
    });
}

#[test]
fn a_cancelled_sleep_leaves_no_registration() {
    testing::run(async {
        let before = registrations();
        let r = move_on_after(secs(1), sleep(secs(10))).await;
        assert_eq!(r, Ok(None));
        assert_eq!(now(), at(1));
        assert_eq!(registrations(), before);
        // A later sleep is not disturbed by a stale timer at t=10.
        sleep(secs(20)).await.unwrap();
        assert_eq!(now(), at(21));
    });
}

#[test]
fn system_clock_has_a_large_offset_s1_8() {
    let (t0, t1) = hatchery::run(async {
        let t0 = now();
        sleep(Duration::from_millis(1)).await.unwrap();
        (t0, now())
    });
    assert!(t0 >= at(10_000), "system clock starts at {t0:?}");
    assert!(t0 <= at(200_001), "system clock starts at {t0:?}");
    assert!(t1 >= t0 + Duration::from_millis(1), "a real sleep moved the clock: {t0:?} -> {t1:?}");
}

/// A nursery cancelled because a sibling failed, with two steps waiting: each step reports its
/// cancellation (no panic about the order), and the sibling's error is what comes out (found in
/// review: the second step's panic hid it). A step before the broken one still runs.
#[test]
fn a_sequencer_in_a_failing_nursery_lets_the_real_error_out() {
    use hatchery::testing::Sequencer;
    let r = testing::run(async {
        let seq = Sequencer::new();
        nursery(async |n| {
            n.start_soon(async {
                let _g = seq.step(1).await?;
                Ok(())
            });
            n.start_soon(async {
                let _g = seq.step(2).await?;
                Ok(())
            });
            n.start_soon(async {
                testing::wait_all_tasks_blocked().await?;
                Err::<(), _>(hatchery::Error::other(std::io::Error::other("the real failure")))
            });
            Ok::<_, hatchery::Error>(())
        })
        .await
    });
    let e = r.unwrap_err();
    assert_eq!(e.errors().len(), 1, "{e:?}");
    assert!(e.to_string().contains("the real failure"), "{e}");
    // Step 2 cancelled: steps 0 and 1 still run, in order.
    let order = std::cell::RefCell::new(Vec::new());
    testing::run(async {
        let seq = Sequencer::new();
        nursery(async |n| {
            n.start_soon(async {
                let _g = seq.step(1).await?;
                order.borrow_mut().push(1);
                Ok(())
            });
            let r =
                hatchery::move_on_after(Duration::from_secs(1), async { seq.step(2).await.map(drop) }).await;
            assert_eq!(r, Ok(None));
            let g = seq.step(0).await?;
            order.borrow_mut().push(0);
            drop(g);
            Ok::<_, Cancelled>(())
        })
        .await
        .unwrap();
    });
    assert_eq!(*order.borrow(), [0, 1]);
}

#[test]
fn a_sequencer_step_cancelled_while_waiting_breaks_the_sequence() {
    use hatchery::testing::Sequencer;
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        testing::run(async {
            let seq = Sequencer::new();
            nursery(async |n| {
                n.start_soon(async {
                    // Step 2 waits for step 1, which is cancelled instead.
                    let _g = seq.step(2).await?;
                    Ok::<_, Cancelled>(())
                });
                let r =
                    hatchery::move_on_after(Duration::from_secs(1), async { seq.step(1).await.map(|_| ()) })
                        .await;
                assert_eq!(r, Ok(None));
                Ok::<_, Cancelled>(())
            })
            .await
            .unwrap();
        })
    }));
    let p = r.unwrap_err();
    let msg = p.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        msg.contains(
            "Sequencer broken: step 1 was cancelled (or dropped) before it ran, so step 2 can never run"
        ),
        "{msg}"
    );
}

/// A sleep parked in one run and awaited in another: its deadline entry belonged to the first
/// run, and the same key in the second run's deadlines is another sleep's. It must arm an entry
/// of its own there (its deadline is the instant fixed in the first run), and leave the other
/// sleep's entry alone: both end at their own instants.
#[test]
#[expect(
    clippy::async_yields_async,
    reason = "the first run hands the parked sleep out, to be awaited in the second"
)]
fn a_sleep_moved_to_another_run_arms_an_entry_of_its_own() {
    let mut moved = testing::run(async {
        let mut s = Box::pin(sleep(secs(10)));
        assert!(poll_once(s.as_mut()).await.is_pending(), "parked, with an entry in this run");
        s
    });
    let (other_ended, moved_ended) = testing::run(async {
        let other_ended = Cell::new(None);
        let moved_ended = Cell::new(None);
        // Bounded, so that a lost wake-up fails the asserts below instead of hanging the test.
        let bounded = move_on_after(
            secs(60),
            nursery(async |n| {
                let (other_ended, moved_ended, moved) = (&other_ended, &moved_ended, &mut moved);
                // Armed first: it takes the key the moved sleep had in the first run.
                n.start_soon(async move {
                    sleep(secs(4)).await?;
                    other_ended.set(Some(now()));
                    Ok::<(), Cancelled>(())
                });
                n.start_soon(async move {
                    wait_all_tasks_blocked().await?;
                    moved.as_mut().await?;
                    moved_ended.set(Some(now()));
                    Ok::<(), Cancelled>(())
                });
                Ok(())
            }),
        )
        .await;
        assert!(matches!(bounded, Ok(Some(Some(())))), "both sleeps ended: {bounded:?}");
        (other_ended.get(), moved_ended.get())
    });
    assert_eq!(other_ended, Some(at(4)));
    assert_eq!(moved_ended, Some(at(10)), "the deadline fixed in the first run (both clocks start at 0)");
}

#[test]
fn a_sleep_that_fired_wins_over_a_cancellation_that_came_before_its_task_ran_s2_3() {
    // Both sleeps fire in the same pass; under Fifo the one that began first runs first and
    // cancels the other's scope. The other's sleep has completed: it returns Ok (a completed
    // operation wins over a cancellation that arrived meanwhile), and the scope's body goes on
    // to its end.
    testing::builder().schedule(hatchery::SchedulePolicy::Fifo).run(async {
        let scope = CancelScope::new();
        let h = scope.handle();
        let slept = Cell::new(None);
        nursery(async |n| {
            let (h, slept) = (&h, &slept);
            n.start_soon(async move {
                sleep(secs(1)).await?;
                h.cancel();
                Ok::<_, Cancelled>(())
            });
            n.start_soon(async move {
                let r = scope
                    .run(async {
                        let r = sleep(secs(1)).await;
                        slept.set(Some(r));
                        Ok::<_, Cancelled>(now())
                    })
                    .await;
                assert_eq!(r, Ok(Some(at(1))), "the body ran to its end");
                Ok::<_, Cancelled>(())
            });
            Ok::<_, Cancelled>(())
        })
        .await
        .unwrap();
        assert_eq!(slept.take(), Some(Ok(())), "the fired sleep returned Ok, not Cancelled");
        assert!(h.cancel_called());
    });
}

#[test]
fn a_sleep_with_no_deadline_ends_only_cancelled() {
    // `Duration::MAX` and `Instant::MAX` mean never: a re-poll (here the cancellation's wake) must
    // not read the missing timer as fired.
    testing::run(async {
        let r = move_on_after(secs(5), async {
            sleep(Duration::MAX).await?;
            Ok::<_, Cancelled>(1)
        })
        .await;
        assert_eq!(r, Ok(None));
        assert_eq!(now(), at(5));
        let r = move_on_after(secs(5), async {
            sleep_until(Instant::MAX).await?;
            Ok::<_, Cancelled>(2)
        })
        .await;
        assert_eq!(r, Ok(None));
        assert_eq!(now(), at(10));
        let mut s = std::pin::pin!(sleep_until(Instant::MAX));
        assert!(poll_once(s.as_mut()).await.is_pending());
        hatchery::lowlevel::checkpoint().await.unwrap();
        assert!(poll_once(s.as_mut()).await.is_pending(), "a spurious re-poll ended a sleep that never ends");
    });
}

#[test]
fn a_sleep_already_due_is_exactly_a_checkpoint_and_sees_a_deadline_expiring_meanwhile_s1_9() {
    testing::run(async {
        for due in [sleep(Duration::ZERO), sleep_until(Instant::ZERO)] {
            let scope = CancelScope::new();
            let h = scope.handle();
            let r = scope
                .run(async {
                    h.set_deadline(now());
                    // The yield comes first, the pass expires the deadline, then the cancel point.
                    due.await?;
                    Ok::<_, Cancelled>(())
                })
                .await;
            assert_eq!(r, Ok(None));
            assert!(h.cancelled_caught());
        }
        // And it arms no timer.
        let mut s = std::pin::pin!(sleep(Duration::ZERO));
        assert!(poll_once(s.as_mut()).await.is_pending(), "it yields");
        assert_eq!(registrations().timers, 0);
        assert_eq!(s.await, Ok(()));
    });
}

/// Real time, so tolerant bounds: each idle stretch must last its threshold (or cushion) once,
/// from the moment nothing is runnable: not twice (the first pass used to wait a whole
/// threshold before it started counting), nor zero (a stretch after a jump or a quiescence
/// wake-up used to count from the stretch before).
fn assert_one_threshold(took: Duration, what: &str) {
    assert!(took >= Duration::from_millis(150), "{what}: too early: {took:?}");
    assert!(took < Duration::from_millis(290), "{what}: waited the threshold twice: {took:?}");
}

#[test]
fn autojump_waits_its_threshold_once_per_idle_stretch() {
    Builder::new().clock(MockClock::with_autojump(Duration::from_millis(150))).run(async {
        for i in 0..2 {
            let start = std::time::Instant::now();
            sleep(secs(1)).await.unwrap();
            assert_one_threshold(start.elapsed(), &format!("jump {i}"));
        }
    });
}

#[test]
fn quiescence_waits_its_cushion_once_per_idle_stretch() {
    testing::run(async {
        for i in 0..2 {
            let start = std::time::Instant::now();
            testing::wait_all_tasks_blocked_cushion(Duration::from_millis(150)).await.unwrap();
            assert_one_threshold(start.elapsed(), &format!("wait {i}"));
        }
    });
}

#[test]
fn after_a_jump_that_woke_nothing_the_next_waits_a_whole_threshold() {
    // A scope's deadline at 5 s above a shielded sleep until 10 s: the jump to 5 s cancels the
    // scope but wakes nothing (the sleep is shielded); the jump to 10 s must wait its own
    // threshold of idleness (as Trio), not follow at once.
    let start = std::time::Instant::now();
    Builder::new().clock(MockClock::with_autojump(Duration::from_millis(150))).run(async {
        let r = move_on_after(secs(5), async {
            CancelScope::new().shielded().run(sleep(secs(10))).await?;
            Ok::<_, Cancelled>(())
        })
        .await;
        assert_eq!(r, Ok(Some(())), "the shielded body ran to its end");
        assert_eq!(now(), at(10));
    });
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(300), "two jumps, one threshold each: {took:?}");
    assert!(took < Duration::from_millis(580), "{took:?}");
}

/// A running virtual clock (S8.1, S8.2): at rate 10, a run with nothing to do sleeps a tenth of
/// the virtual time in real time, and the sleep ends at or after its virtual instant. Real time,
/// so tolerant bounds; the autojump of 5 s is only a safety net (had the rate no effect, it
/// would fire after 5 s of real time and fail the upper bound instead of hanging).
#[test]
fn a_running_mock_clock_advances_rate_virtual_seconds_per_real_second_s8_1_s8_2() {
    let clock = MockClock::with_autojump(secs(5));
    clock.set_rate(10.0).unwrap();
    let real = std::time::Instant::now();
    let t = Builder::new().clock(clock.clone()).run(async {
        sleep(secs(1)).await.unwrap();
        now()
    });
    let elapsed = real.elapsed();
    assert!(t >= at(1), "{t:?}");
    assert!(elapsed >= Duration::from_millis(95), "1 virtual second at rate 10 took {elapsed:?}");
    assert!(elapsed < Duration::from_secs(3), "1 virtual second at rate 10 took {elapsed:?}");
}

/// Changing the rate does not change the current time; at rate zero the clock stands still
/// and moves only by jumps; a negative, infinite or NaN rate is refused and changes nothing.
#[test]
fn changing_a_mock_clocks_rate_keeps_its_time_s8_1() {
    let clock = MockClock::new();
    clock.jump(secs(5));
    clock.set_rate(10.0).unwrap();
    let a = clock.now();
    clock.set_rate(0.0).unwrap();
    let b = clock.now();
    assert!(a >= at(5) && b >= a && b - a < secs(1), "{a:?} {b:?}");
    assert_eq!(clock.now(), b, "stands still at rate zero");
    clock.jump(secs(1));
    assert_eq!(clock.now(), b + secs(1));
    for bad in [-1.0, f64::INFINITY, f64::NAN] {
        let e = clock.set_rate(bad).unwrap_err();
        assert!(e.to_string().contains("rate"), "{e}");
    }
    assert_eq!(clock.rate(), 0.0);
    assert_eq!(clock.now(), b + secs(1));
}
