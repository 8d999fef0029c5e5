//! Synchronisation primitives (S7.x): Event, Mutex, Semaphore, CapacityLimiter, Condition.
//! FIFO wake-ups, hand-off without barging, the checkpoint rule on fast and slow paths, a broken
//! mutex after a panicking owner, and cancellation or drop at every step leaving no trace.

mod support;

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};

use hatchery::lowlevel::checkpoint;
use hatchery::sync::{
    BrokenMutex, CapacityLimiter, Condition, Event, InvalidMaxValue, LockError, Mutex, Semaphore,
    TooManyReleases, TryLockError, WaitError,
};
use hatchery::testing::{
    self, assert_checkpoints, assert_no_checkpoints, registrations, wait_all_tasks_blocked,
};
use hatchery::{CancelError, CancelScope, Cancelled, Error, move_on_after, now, nursery, sleep};
use support::{Log, at, in_cancelled_scope, poll_once, secs};

/// `what@seconds` on the virtual clock.
fn stamp(log: &Log, what: impl std::fmt::Display) {
    log.push(format!("{what}@{}", now().since_origin().as_secs()));
}

// ---------------------------------------------------------------------------------------------
// Event (S7.1)

#[test]
fn event_set_wakes_every_waiter_at_once_s7_1() {
    let log = Log::new();
    testing::run(async {
        let ev = Event::new();
        nursery(async |n| {
            for i in 0..3 {
                let (ev, log) = (&ev, &log);
                n.start_soon(async move {
                    ev.wait().await?;
                    stamp(log, i);
                    Ok(())
                });
            }
            wait_all_tasks_blocked().await?;
            assert_eq!(ev.statistics().tasks_waiting, 3);
            sleep(secs(2)).await?;
            assert!(!ev.is_set());
            assert_no_checkpoints(async {
                ev.set();
                ev.set(); // idempotent
            })
            .await;
            assert!(ev.is_set());
            assert_eq!(ev.statistics().tasks_waiting, 0, "all were woken by the first set");
            Ok::<_, Cancelled>(())
        })
        .await
        .unwrap();
    });
    let mut l = log.take();
    l.sort();
    assert_eq!(l, ["0@2", "1@2", "2@2"]);
}

#[test]
fn event_wait_is_a_checkpoint_even_when_set_s7_1() {
    testing::run(async {
        let ev = Event::new();
        ev.set();
        // Fast path: yields and checks.
        assert_checkpoints(ev.wait()).await.unwrap();
        // A set event still fails in a cancelled scope.
        let r = in_cancelled_scope(ev.wait()).await;
        assert!(r.is_err());
        // Slow path.
        let late = Event::new();
        nursery(async |n| {
            n.start_soon(async {
                sleep(secs(1)).await?;
                late.set();
                Ok(())
            });
            assert_checkpoints(late.wait()).await?;
            assert_eq!(now(), at(1));
            Ok::<_, Cancelled>(())
        })
        .await
        .unwrap();
    });
}

#[test]
fn cancelled_or_dropped_event_wait_leaves_no_trace() {
    testing::run(async {
        let base = registrations();
        let ev = Event::new();
        let r = move_on_after(secs(1), ev.wait()).await;
        assert_eq!(r, Ok(None));
        assert_eq!(now(), at(1));
        assert_eq!(ev.statistics().tasks_waiting, 0);
        assert_eq!(registrations(), base);

        let mut w = ev.wait();
        assert!(poll_once(&mut w).await.is_pending());
        assert_eq!(ev.statistics().tasks_waiting, 1);
        drop(w);
        assert_eq!(ev.statistics().tasks_waiting, 0);
        assert_eq!(registrations(), base);
        ev.set();
        assert!(ev.is_set());
    });
}

#[test]
fn event_set_before_the_cancellation_is_noticed_completes_the_wait() {
    let log = Log::new();
    testing::run(async {
        let ev = Event::new();
        let scope = CancelScope::new();
        let handle = scope.handle();
        nursery(async |n| {
            n.start_soon(async {
                let r = scope
                    .run(async {
                        let w = ev.wait().await;
                        log.push(format!("wait: {}", w.is_ok()));
                        let c = checkpoint().await;
                        log.push(format!("next checkpoint: {}", c.is_ok()));
                        c
                    })
                    .await;
                log.push(format!("scope: {r:?}"));
                Ok::<_, Cancelled>(())
            });
            wait_all_tasks_blocked().await?;
            // Both in the same step: the event wins, the cancellation waits for a checkpoint.
            handle.cancel();
            ev.set();
            Ok(())
        })
        .await
        .unwrap();
    });
    assert_eq!(log.take(), ["wait: true", "next checkpoint: false", "scope: Ok(None)"]);
}

// ---------------------------------------------------------------------------------------------
// Mutex (S7.2, S7.3)

#[test]
fn lock_is_a_checkpoint_on_the_fast_and_the_slow_path() {
    testing::run(async {
        let m = Mutex::new(0);
        *assert_checkpoints(m.lock()).await.unwrap() += 1;
        nursery(async |n| {
            let g = m.lock().await?;
            n.start_soon(async move {
                sleep(secs(2)).await?;
                drop(g);
                Ok(())
            });
            let g = assert_checkpoints(m.lock()).await?;
            assert_eq!(now(), at(2));
            assert_eq!(*g, 1);
            // try_lock and dropping a guard are not checkpoints.
            assert_no_checkpoints(async {
                assert!(matches!(m.try_lock(), Err(TryLockError::WouldBlock)));
                drop(g);
                drop(m.try_lock().unwrap());
            })
            .await;
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
    });
}

#[test]
fn lock_in_a_cancelled_scope_fails_at_once_and_leaves_the_mutex_alone() {
    testing::run(async {
        let m = Mutex::new(());
        let r = in_cancelled_scope(m.lock()).await;
        assert!(matches!(r, Err(LockError::Cancelled(_))));
        assert!(!m.is_locked());
        assert_eq!(now(), at(0));
        // A LockError carrying a cancellation is absorbed by the scope it belongs to.
        let r = move_on_after(secs(1), async {
            let _g = m.lock().await?;
            let _h = m.lock().await?; // not reentrant: waits until the deadline
            Ok::<_, LockError>(())
        })
        .await;
        assert_eq!(r, Ok(None));
        assert_eq!(now(), at(1));
        assert!(!m.is_locked());
    });
}

#[test]
fn waiters_get_the_lock_in_fifo_order_s7_2() {
    let log = Log::new();
    testing::run(async {
        let m = Mutex::new(Vec::new());
        nursery(async |n| {
            let g = m.lock().await?;
            for i in 0..5 {
                let (m, log) = (&m, &log);
                n.start_soon(async move {
                    let mut g = m.lock().await?;
                    g.push(i);
                    stamp(log, i);
                    sleep(secs(1)).await?;
                    Ok::<_, Error>(())
                });
                // Each parks before the next one starts: arrival order is 0, 1, 2, ...
                wait_all_tasks_blocked().await?;
            }
            assert_eq!(m.statistics().tasks_waiting, 5);
            sleep(secs(1)).await?;
            drop(g);
            Ok(())
        })
        .await
        .unwrap();
        assert_eq!(*m.lock().await.unwrap(), [0, 1, 2, 3, 4]);
    });
    assert_eq!(log.take(), ["0@1", "1@2", "2@3", "3@4", "4@5"]);
}

#[test]
fn release_hands_the_lock_over_so_the_releaser_cannot_barge_s7_2() {
    let log = Log::new();
    testing::run(async {
        let m = Mutex::new(());
        nursery(async |n| {
            let g = m.lock().await?;
            n.start_soon(async {
                let _g = m.lock().await?;
                stamp(&log, "child");
                sleep(secs(1)).await?;
                Ok::<_, Error>(())
            });
            wait_all_tasks_blocked().await?;
            drop(g);
            // Handed to the child, which has not run yet: still locked, nobody waiting.
            let s = m.statistics();
            assert!(s.locked);
            assert_eq!(s.tasks_waiting, 0);
            assert!(matches!(m.try_lock(), Err(TryLockError::WouldBlock)), "no barging");
            let _g = m.lock().await?;
            stamp(&log, "body");
            Ok(())
        })
        .await
        .unwrap();
    });
    assert_eq!(log.take(), ["child@0", "body@1"]);
}

#[test]
fn a_panicking_owner_breaks_the_mutex_for_waiters_and_later_locks() {
    let log = Log::new();
    let line = testing::run(async {
        let m = Mutex::new(7);
        let line = line!() + 2; // the owner's `lock` call
        nursery(async |n| {
            let g = m.lock().await?;
            for i in 0..2 {
                let (m, log) = (&m, &log);
                n.start_soon(async move {
                    match m.lock().await {
                        Err(LockError::Broken(b)) => {
                            stamp(log, format!("{i} at line {}", b.locked_at().line()))
                        }
                        other => panic!("{other:?}"),
                    }
                    Ok::<_, Error>(())
                });
            }
            wait_all_tasks_blocked().await?;
            sleep(secs(1)).await?;
            let hook = std::panic::take_hook();
            std::panic::set_hook(Box::new(|_| {}));
            let r = catch_unwind(AssertUnwindSafe(move || {
                let _g = g;
                panic!("owner dies");
            }));
            std::panic::set_hook(hook);
            assert!(r.is_err());
            Ok(())
        })
        .await
        .unwrap();
        assert!(m.is_broken());
        assert!(m.statistics().broken);
        let e = m.lock().await.unwrap_err();
        assert!(e.to_string().contains("panicked while holding the lock"), "{e}");
        let LockError::Broken(b) = e else { panic!() };
        assert_eq!(b.locked_at().line(), line);
        assert!(matches!(m.try_lock(), Err(TryLockError::Broken(_))));
        // A later lock is still a cancel point.
        assert!(matches!(in_cancelled_scope(m.lock()).await, Err(LockError::Cancelled(_))));
        let io: std::io::Error = LockError::Broken(b.clone()).into();
        assert_eq!(io.get_ref().unwrap().downcast_ref::<BrokenMutex>(), Some(&b));
        line
    });
    let mut l = log.take();
    l.sort();
    assert_eq!(l, [format!("0 at line {line}@1"), format!("1 at line {line}@1")]);
}

#[test]
fn a_lock_taken_and_released_by_a_destructor_while_unwinding_does_not_break_the_mutex() {
    // The panic began before the lock was taken: the critical section itself was not cut short.
    struct LocksOnDrop<'a>(&'a Mutex<u32>);
    impl Drop for LocksOnDrop<'_> {
        fn drop(&mut self) {
            *self.0.try_lock().expect("the mutex is free") += 1;
        }
    }
    let m = Mutex::new(0);
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = catch_unwind(AssertUnwindSafe(|| {
        let _cleanup = LocksOnDrop(&m);
        panic!("unrelated");
    }));
    std::panic::set_hook(hook);
    assert!(r.is_err());
    assert!(!m.is_broken(), "a clean critical section during unwinding broke the mutex");
    assert_eq!(*m.try_lock().unwrap(), 1);
}

#[test]
fn a_panic_across_an_await_while_holding_breaks_the_mutex_and_still_propagates() {
    let log = Log::new();
    let m = Mutex::new(0);
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = catch_unwind(AssertUnwindSafe(|| {
        testing::run(async {
            let _ = nursery(async |n| {
                n.start_soon(async {
                    let mut g = m.lock().await?;
                    *g = 1; // half-done update
                    sleep(secs(1)).await?;
                    panic!("owner dies");
                    #[allow(unreachable_code)]
                    Ok::<_, Error>(())
                });
                n.start_soon(async {
                    wait_all_tasks_blocked().await?;
                    let r = m.lock().await;
                    stamp(&log, format!("waiter: {}", matches!(r, Err(LockError::Broken(_)))));
                    Ok(())
                });
                Ok(())
            })
            .await;
        })
    }));
    std::panic::set_hook(hook);
    assert_eq!(*r.unwrap_err().downcast::<&str>().unwrap(), "owner dies");
    assert_eq!(log.take(), ["waiter: true@1"]);
    assert!(m.is_broken());
    assert_eq!(m.into_inner(), 1, "the data stays reachable");
}

#[test]
fn cancelled_or_dropped_lock_leaves_no_trace() {
    // A budget of 0: every schedule point yields, so the future can be dropped there.
    testing::builder().yield_budget(0).run(async {
        let base = registrations();
        let m = Mutex::new(());
        let g = m.lock().await.unwrap();
        // Cancelled while waiting.
        let r = move_on_after(secs(1), m.lock()).await;
        assert!(matches!(r, Ok(None)));
        assert_eq!(now(), at(1));
        assert_eq!(m.statistics().tasks_waiting, 0);
        assert_eq!(registrations(), base);
        // Dropped while waiting.
        let mut l = m.lock();
        assert!(poll_once(&mut l).await.is_pending());
        assert_eq!(m.statistics().tasks_waiting, 1);
        drop(l);
        assert_eq!(m.statistics().tasks_waiting, 0);
        assert_eq!(registrations(), base);
        // Nobody took it: releasing unlocks.
        drop(g);
        assert!(!m.is_locked());
        // Dropped during the fast path's schedule point: the lock is released again.
        let mut l = m.lock();
        assert!(poll_once(&mut l).await.is_pending());
        assert!(m.is_locked());
        drop(l);
        assert!(!m.is_locked());
        assert_eq!(registrations(), base);
    });
}

#[test]
fn a_lock_handed_to_a_dropped_future_goes_to_the_next_waiter() {
    let log = Log::new();
    testing::run(async {
        let m = Mutex::new(());
        nursery(async |n| {
            let g = m.lock().await?;
            let mut first = m.lock();
            assert!(poll_once(&mut first).await.is_pending());
            n.start_soon(async {
                let _g = m.lock().await?;
                stamp(&log, "second");
                Ok::<_, Error>(())
            });
            wait_all_tasks_blocked().await?;
            assert_eq!(m.statistics().tasks_waiting, 2);
            drop(g); // handed to `first`
            assert_eq!(m.statistics().tasks_waiting, 1);
            drop(first); // never returned it: passed on
            assert!(m.is_locked());
            assert_eq!(m.statistics().tasks_waiting, 0);
            Ok(())
        })
        .await
        .unwrap();
        assert!(!m.is_locked());
    });
    assert_eq!(log.take(), ["second@0"]);
}

#[test]
fn a_lock_handed_over_before_the_cancellation_is_noticed_is_returned() {
    let log = Log::new();
    testing::run(async {
        let m = Mutex::new(());
        let scope = CancelScope::new();
        let handle = scope.handle();
        nursery(async |n| {
            let g = m.lock().await?;
            n.start_soon(async {
                let r = scope
                    .run(async {
                        let g = m.lock().await;
                        log.push(format!("lock: {}", g.is_ok()));
                        sleep(secs(1)).await?;
                        Ok::<_, LockError>(())
                    })
                    .await;
                log.push(format!("scope: {r:?}"));
                Ok::<_, Error>(())
            });
            wait_all_tasks_blocked().await?;
            handle.cancel();
            drop(g);
            Ok(())
        })
        .await
        .unwrap();
        assert!(!m.is_locked());
    });
    assert_eq!(log.take(), ["lock: true", "scope: Ok(None)"]);
}

#[test]
fn a_cancellation_during_the_fast_paths_schedule_point_does_not_undo_it() {
    let log = Log::new();
    // A budget of 0: every schedule point yields, so a cancellation can arrive during one.
    testing::builder().yield_budget(0).run(async {
        let m = Mutex::new(());
        let sem = Semaphore::new(1);
        let lim = CapacityLimiter::new(1);
        let scope = CancelScope::new();
        let handle = scope.handle();
        let mut body = Box::pin(scope.run(async {
            let g = m.lock().await;
            let p = sem.acquire().await;
            let t = lim.acquire().await;
            log.push(format!("{} {} {}", g.is_ok(), p.is_ok(), t.is_ok()));
            checkpoint().await
        }));
        // The first poll takes the lock and stops at the fast path's schedule point.
        assert!(poll_once(&mut body).await.is_pending());
        assert!(m.is_locked());
        handle.cancel();
        assert_eq!(body.await, Ok(None));
        log.push(format!("{} {} {}", m.is_locked(), sem.value(), lim.borrowed_tokens()));
    });
    // The lock was returned; the two later operations failed at their cancel point.
    assert_eq!(log.take(), ["true false false", "false 1 0"]);
}

#[test]
fn mutex_data_debug_and_conversions() {
    testing::run(async {
        let mut m = Mutex::new(String::from("a"));
        m.get_mut().push('b');
        {
            let mut g = m.lock().await.unwrap();
            g.push('c');
            assert_eq!(format!("{g:?}"), "\"abc\"");
            assert_eq!(format!("{g}"), "abc");
            assert!(format!("{m:?}").contains("<locked>"));
        }
        assert!(format!("{m:?}").contains("\"abc\""));
        let s = m.statistics();
        assert_eq!((s.locked, s.tasks_waiting, s.broken), (false, 0, false));
        let unsized_m: &Mutex<[u8]> = &Mutex::new([1u8, 2, 3]);
        unsized_m.lock().await.unwrap()[0] = 9;
        assert_eq!(&*unsized_m.lock().await.unwrap(), &[9, 2, 3]);
        // A cancelled lock converted to io::Error or hatchery::Error stays a cancellation.
        let e = in_cancelled_scope(m.lock()).await.unwrap_err();
        let io: std::io::Error = e.clone().into();
        assert!(Cancelled::from_io(&io).is_some());
        let err: Error = e.into();
        assert!(err.cancelled().is_some());
        assert_eq!(m.into_inner(), "abc");
    });
}

// ---------------------------------------------------------------------------------------------
// Semaphore (S7.4)

#[test]
fn semaphore_maximum_is_checked_s7_4() {
    assert_eq!(Semaphore::with_max(3, 2).unwrap_err(), InvalidMaxValue { initial: 3, max: 2 });
    assert_eq!(
        Semaphore::with_max(3, 2).unwrap_err().to_string(),
        "a semaphore's initial value (3) cannot be above its maximum value (2)"
    );
    let sem = Semaphore::with_max(1, 2).unwrap();
    assert_eq!(sem.release(), Ok(()));
    assert_eq!(sem.release(), Err(TooManyReleases { max: 2 }));
    assert_eq!(sem.value(), 2);
    let io: std::io::Error = TooManyReleases { max: 2 }.into();
    assert_eq!(io.kind(), std::io::ErrorKind::InvalidInput);
    let unbounded = Semaphore::new(usize::MAX);
    assert_eq!(unbounded.release(), Err(TooManyReleases { max: usize::MAX }));
    assert_eq!(unbounded.max_value(), None);
    // A permit given back at the maximum (its unit was also released by hand) adds nothing.
    let sem = Semaphore::with_max(1, 1).unwrap();
    let p = sem.try_acquire().unwrap();
    sem.release().unwrap();
    drop(p);
    assert_eq!(sem.value(), 1);
}

#[test]
fn semaphore_release_hands_the_unit_over_and_the_value_stays_zero_s7_4() {
    let log = Log::new();
    testing::run(async {
        let sem = Semaphore::new(0);
        nursery(async |n| {
            n.start_soon(async {
                let p = sem.acquire().await?;
                stamp(&log, "child");
                p.forget();
                Ok::<_, Cancelled>(())
            });
            wait_all_tasks_blocked().await?;
            assert_eq!(sem.statistics().tasks_waiting, 1);
            assert_no_checkpoints(async { sem.release().unwrap() }).await;
            let s = sem.statistics();
            assert_eq!((s.value, s.tasks_waiting), (0, 0));
            assert!(sem.try_acquire().is_err(), "handed over: the releaser cannot take it back");
            Ok(())
        })
        .await
        .unwrap();
        assert_eq!(sem.value(), 0, "the child kept its unit");
    });
    assert_eq!(log.take(), ["child@0"]);
}

#[test]
fn semaphore_waiters_are_served_in_fifo_order_and_acquire_is_a_checkpoint() {
    let log = Log::new();
    testing::run(async {
        let sem = Semaphore::new(2);
        let p = assert_checkpoints(sem.acquire()).await.unwrap();
        assert_eq!(sem.value(), 1);
        let r = in_cancelled_scope(sem.acquire()).await;
        assert!(r.is_err());
        assert_eq!(sem.value(), 1, "a cancelled acquire took nothing");
        let q = sem.try_acquire().unwrap();
        nursery(async |n| {
            for i in 0..4 {
                let (sem, log) = (&sem, &log);
                n.start_soon(async move {
                    let _p = assert_checkpoints(sem.acquire()).await?;
                    stamp(log, i);
                    sleep(secs(10)).await
                });
                wait_all_tasks_blocked().await?;
            }
            sleep(secs(1)).await?;
            drop(p);
            sleep(secs(1)).await?;
            drop(q);
            Ok::<_, Cancelled>(())
        })
        .await
        .unwrap();
        assert_eq!(sem.value(), 2);
    });
    assert_eq!(log.take(), ["0@1", "1@2", "2@11", "3@12"]);
}

#[test]
fn a_unit_handed_over_before_the_cancellation_is_noticed_is_kept() {
    let log = Log::new();
    testing::run(async {
        let sem = Semaphore::new(0);
        let scope = CancelScope::new();
        let handle = scope.handle();
        nursery(async |n| {
            n.start_soon(async {
                let r = scope
                    .run(async {
                        let p = sem.acquire().await?;
                        log.push("acquired");
                        p.forget();
                        checkpoint().await
                    })
                    .await;
                log.push(format!("scope: {r:?}"));
                Ok::<_, Cancelled>(())
            });
            wait_all_tasks_blocked().await?;
            handle.cancel();
            sem.release().unwrap();
            Ok(())
        })
        .await
        .unwrap();
        assert_eq!(sem.value(), 0, "the waiter kept (and forgot) its unit");
    });
    assert_eq!(log.take(), ["acquired", "scope: Ok(None)"]);
}

#[test]
fn cancelled_dropped_or_abandoned_acquire_loses_no_unit() {
    let log = Log::new();
    testing::run(async {
        let base = registrations();
        let sem = Semaphore::new(0);
        let r = move_on_after(secs(1), sem.acquire()).await;
        assert!(matches!(r, Ok(None)));
        assert_eq!((sem.value(), sem.statistics().tasks_waiting), (0, 0));
        assert_eq!(registrations(), base);
        nursery(async |n| {
            let mut first = sem.acquire();
            assert!(poll_once(&mut first).await.is_pending());
            n.start_soon(async {
                let _p = sem.acquire().await?;
                stamp(&log, "second");
                Ok::<_, Cancelled>(())
            });
            wait_all_tasks_blocked().await?;
            sem.release().unwrap(); // to `first`
            drop(first); // passed on to the child
            assert_eq!((sem.value(), sem.statistics().tasks_waiting), (0, 0));
            Ok(())
        })
        .await
        .unwrap();
        assert_eq!(sem.value(), 1, "the child's permit came back");
        assert_eq!(registrations(), base);
    });
    assert_eq!(log.take(), ["second@1"]);
}

// ---------------------------------------------------------------------------------------------
// CapacityLimiter (S7.5)

#[test]
fn raising_the_total_wakes_waiters_at_once_in_fifo_order_s7_5() {
    let log = Log::new();
    testing::run(async {
        let lim = CapacityLimiter::new(1);
        nursery(async |n| {
            let t = lim.acquire().await?;
            for i in 0..3 {
                let (lim, log) = (&lim, &log);
                n.start_soon(async move {
                    let _t = lim.acquire().await?;
                    stamp(log, i);
                    sleep(secs(10)).await
                });
                wait_all_tasks_blocked().await?;
            }
            sleep(secs(1)).await?;
            assert_no_checkpoints(async { lim.set_total_tokens(3) }).await;
            let s = lim.statistics();
            assert_eq!((s.borrowed_tokens, s.total_tokens, s.tasks_waiting), (3, 3, 1));
            assert!(lim.try_acquire().is_err());
            sleep(secs(1)).await?;
            drop(t);
            Ok::<_, Cancelled>(())
        })
        .await
        .unwrap();
        assert_eq!(lim.borrowed_tokens(), 0);
    });
    let mut l = log.take();
    l.sort();
    // The two new tokens went to the two oldest waiters; the third waited for a release.
    assert_eq!(l, ["0@1", "1@1", "2@2"]);
}

thread_local! {
    /// What the next wake of a [`HookedWake`] runs first (once).
    static ON_WAKE: std::cell::RefCell<Option<Box<dyn FnOnce()>>> = const { std::cell::RefCell::new(None) };
}

/// A foreign waker (a combinator's) whose wake runs `ON_WAKE` before waking the task.
struct HookedWake(std::task::Waker);

impl std::task::Wake for HookedWake {
    fn wake(self: std::sync::Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &std::sync::Arc<Self>) {
        if let Some(hook) = ON_WAKE.with(|h| h.borrow_mut().take()) {
            hook();
        }
        self.0.wake_by_ref();
    }
}

#[test]
fn raising_the_total_counts_only_the_tokens_it_handed_out_when_a_wake_releases_one() {
    testing::run(async {
        let lim: &'static CapacityLimiter = Box::leak(Box::new(CapacityLimiter::new(1)));
        let held = lim.acquire().await.unwrap();
        let mut a = std::pin::pin!(lim.acquire());
        let mut b = std::pin::pin!(lim.acquire());
        std::future::poll_fn(|cx| {
            // `a` waits through a foreign waker whose wake gives the held token back.
            let w = std::task::Waker::from(std::sync::Arc::new(HookedWake(cx.waker().clone())));
            assert!(a.as_mut().poll(&mut std::task::Context::from_waker(&w)).is_pending());
            assert!(b.as_mut().poll(cx).is_pending());
            std::task::Poll::Ready(())
        })
        .await;
        ON_WAKE.with(|h| *h.borrow_mut() = Some(Box::new(move || drop(held))));
        // Two free tokens for two waiters; waking `a` frees a third, which `b` gets at once.
        lim.set_total_tokens(3);
        assert!(ON_WAKE.with(|h| h.borrow().is_none()), "the hook never ran");
        let s = lim.statistics();
        assert_eq!((s.borrowed_tokens, s.tasks_waiting), (2, 0), "a token counted but never handed out");
        let (ta, tb) = (a.await.unwrap(), b.await.unwrap());
        assert_eq!(lim.available_tokens(), 1);
        drop((ta, tb));
        assert_eq!(lim.borrowed_tokens(), 0);
    });
}

#[test]
fn lowering_the_total_revokes_nothing_s7_5() {
    let log = Log::new();
    testing::run(async {
        let lim = CapacityLimiter::new(3);
        nursery(async |n| {
            let mut held: Vec<_> = (0..3).map(|_| lim.try_acquire().unwrap()).collect();
            lim.set_total_tokens(1);
            assert_eq!((lim.borrowed_tokens(), lim.available_tokens()), (3, 0));
            n.start_soon(async {
                let _t = lim.acquire().await?;
                stamp(&log, "waiter");
                Ok::<_, Cancelled>(())
            });
            for _ in 0..2 {
                wait_all_tasks_blocked().await?;
                sleep(secs(1)).await?;
                held.pop();
                assert_eq!(lim.statistics().tasks_waiting, 1, "still at or above the new total");
            }
            sleep(secs(1)).await?;
            held.pop();
            assert_eq!(lim.statistics().tasks_waiting, 0);
            assert_eq!(lim.borrowed_tokens(), 1, "handed to the waiter");
            Ok(())
        })
        .await
        .unwrap();
    });
    assert_eq!(log.take(), ["waiter@3"]);
}

#[test]
fn limiter_is_fair_and_cancellation_leaves_no_trace_s7_5() {
    testing::run(async {
        let base = registrations();
        let lim = CapacityLimiter::new(1);
        let t = assert_checkpoints(lim.acquire()).await.unwrap();
        assert!(in_cancelled_scope(lim.acquire()).await.is_err());
        let r = move_on_after(secs(1), lim.acquire()).await;
        assert!(matches!(r, Ok(None)));
        assert_eq!(lim.statistics().tasks_waiting, 0);
        assert_eq!(registrations(), base);
        nursery(async |n| {
            n.start_soon(async {
                let t = assert_checkpoints(lim.acquire()).await?;
                assert_eq!(now(), at(1));
                assert_eq!(t.limiter().total_tokens(), 1);
                Ok::<_, Cancelled>(())
            });
            wait_all_tasks_blocked().await?;
            drop(t);
            assert!(lim.try_acquire().is_err(), "handed to the waiter");
            Ok(())
        })
        .await
        .unwrap();
        let s = lim.statistics();
        assert_eq!((s.borrowed_tokens, s.total_tokens, s.tasks_waiting), (0, 1, 0));
        // Total 0: everyone waits until it is raised.
        lim.set_total_tokens(0);
        assert!(lim.try_acquire().is_err());
        assert_eq!(registrations(), base);
    });
}

// ---------------------------------------------------------------------------------------------
// Condition (S7.6)

#[test]
fn notify_moves_waiters_in_fifo_order_and_they_take_the_lock_in_turn_s7_6() {
    let log = Log::new();
    testing::run(async {
        let m = Mutex::new(0);
        let cond = Condition::new();
        nursery(async |n| {
            for i in 0..3 {
                let (m, cond, log) = (&m, &cond, &log);
                n.start_soon(async move {
                    let mut g = m.lock().await?;
                    g = assert_checkpoints(cond.wait(g)).await?;
                    *g += 1;
                    stamp(log, i);
                    sleep(secs(1)).await?;
                    Ok::<_, Error>(())
                });
                wait_all_tasks_blocked().await?;
            }
            assert_eq!(cond.statistics().tasks_waiting, 3);
            assert!(!m.is_locked(), "every waiter released the lock");
            let g = m.lock().await?;
            assert_no_checkpoints(async { cond.notify(&g, 2) }).await;
            assert_eq!(cond.statistics().tasks_waiting, 1);
            assert_eq!(m.statistics().tasks_waiting, 2, "notified waiters queue for the lock");
            sleep(secs(1)).await?;
            drop(g);
            sleep(secs(5)).await?;
            let g = m.lock().await?;
            cond.notify_all(&g);
            cond.notify_one(&g); // nobody left: nothing happens
            Ok(())
        })
        .await
        .unwrap();
        assert_eq!(*m.lock().await.unwrap(), 3);
    });
    assert_eq!(log.take(), ["0@1", "1@2", "2@6"]);
}

#[test]
fn a_cancelled_wait_reacquires_the_lock_before_returning_s7_6() {
    let log = Log::new();
    testing::run(async {
        let base = registrations();
        let m = Mutex::new(String::new());
        let cond = Condition::new();
        nursery(async |n| {
            n.start_soon(async {
                sleep(secs(1)).await?;
                let mut g = m.lock().await?;
                g.push_str("holder");
                sleep(secs(4)).await?;
                Ok::<_, Error>(())
            });
            let r = move_on_after(secs(2), async {
                let g = m.lock().await?;
                match assert_checkpoints(cond.wait(g)).await {
                    Err(WaitError::Cancelled { guard, cancelled }) => {
                        stamp(&log, format!("cancelled, holding '{}'", *guard));
                        assert!(m.is_locked());
                        Err::<(), _>(LockError::Cancelled(cancelled))
                    }
                    other => panic!("{other:?}"),
                }
            })
            .await;
            assert_eq!(r, Ok(None));
            assert_eq!(cond.statistics().tasks_waiting, 0);
            Ok(())
        })
        .await
        .unwrap();
        assert_eq!(registrations(), base);
        assert!(!m.is_locked());
    });
    assert_eq!(log.take(), ["cancelled, holding 'holder'@5"]);
}

#[test]
fn a_notified_then_cancelled_waiter_keeps_its_place_for_the_lock() {
    let log = Log::new();
    testing::run(async {
        let m = Mutex::new(());
        let cond = Condition::new();
        let scope = CancelScope::new();
        let handle = scope.handle();
        nursery(async |n| {
            n.start_soon(async {
                let r = scope
                    .run(async {
                        let g = m.lock().await?;
                        let r = cond.wait(g).await;
                        stamp(&log, format!("waiter cancelled: {}", r.is_err()));
                        r.map(drop).map_err(LockError::from)
                    })
                    .await;
                assert!(matches!(r, Ok(None)));
                Ok::<_, Error>(())
            });
            wait_all_tasks_blocked().await?;
            let g = m.lock().await?;
            cond.notify_one(&g);
            n.start_soon(async {
                let _g = m.lock().await?;
                stamp(&log, "latecomer");
                Ok::<_, Error>(())
            });
            wait_all_tasks_blocked().await?;
            assert_eq!(m.statistics().tasks_waiting, 2);
            handle.cancel();
            sleep(secs(1)).await?;
            assert_eq!(m.statistics().tasks_waiting, 2, "the cancelled waiter still queues");
            drop(g);
            Ok(())
        })
        .await
        .unwrap();
    });
    assert_eq!(log.take(), ["waiter cancelled: true@1", "latecomer@1"]);
}

#[test]
fn wait_in_a_cancelled_scope_gives_the_guard_back_untouched() {
    let log = Log::new();
    testing::run(async {
        let m = Mutex::new(1);
        let cond = Condition::new();
        nursery(async |n| {
            let g = m.lock().await?;
            n.start_soon(async {
                let _g = m.lock().await?;
                stamp(&log, "other");
                Ok::<_, Error>(())
            });
            wait_all_tasks_blocked().await?;
            let g = match in_cancelled_scope(cond.wait(g)).await {
                Err(e @ WaitError::Cancelled { .. }) => {
                    assert!(e.cancelled().is_some());
                    e.into_guard().unwrap()
                }
                other => panic!("{other:?}"),
            };
            assert_eq!(cond.statistics().tasks_waiting, 0);
            assert_eq!(m.statistics().tasks_waiting, 1, "the lock was never released");
            stamp(&log, format!("kept {}", *g));
            sleep(secs(1)).await?;
            drop(g);
            Ok(())
        })
        .await
        .unwrap();
    });
    assert_eq!(log.take(), ["kept 1@0", "other@1"]);
}

#[test]
fn dropped_condition_waits_leave_no_trace_and_hand_the_lock_on() {
    let log = Log::new();
    testing::run(async {
        let base = registrations();
        let m = Mutex::new(());
        let cond = Condition::new();
        // Dropped while waiting for a notification.
        let mut w = cond.wait(m.lock().await.unwrap());
        assert!(poll_once(&mut w).await.is_pending());
        assert!(!m.is_locked());
        drop(w);
        assert_eq!(cond.statistics().tasks_waiting, 0);
        // Dropped after being notified, before and after the lock was handed to it.
        nursery(async |n| {
            let mut w = cond.wait(m.lock().await?);
            assert!(poll_once(&mut w).await.is_pending());
            let g = m.lock().await?;
            cond.notify_one(&g);
            n.start_soon(async {
                let _g = m.lock().await?;
                stamp(&log, "next");
                Ok::<_, Error>(())
            });
            wait_all_tasks_blocked().await?;
            assert_eq!(m.statistics().tasks_waiting, 2);
            drop(g); // handed to `w`
            drop(w); // passed on
            assert_eq!(m.statistics().tasks_waiting, 0);
            assert!(m.is_locked());
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
        assert!(!m.is_locked());
        let mut w = cond.wait(m.lock().await.unwrap());
        assert!(poll_once(&mut w).await.is_pending());
        let g = m.lock().await.unwrap();
        cond.notify_all(&g);
        drop(w); // notified, lock not handed yet
        assert_eq!(m.statistics().tasks_waiting, 0);
        drop(g);
        assert!(!m.is_locked());
        assert_eq!(registrations(), base);
    });
    assert_eq!(log.take(), ["next@0"]);
}

#[test]
fn a_condition_waiter_sees_a_broken_mutex() {
    testing::run(async {
        let m = Mutex::new(());
        let cond = Condition::new();
        nursery(async |n| {
            n.start_soon(async {
                let g = m.lock().await?;
                let r = cond.wait(g).await;
                assert!(matches!(r, Err(WaitError::Broken(_))), "{r:?}");
                Ok::<_, Error>(())
            });
            wait_all_tasks_blocked().await?;
            let g = m.lock().await?;
            cond.notify_all(&g);
            let hook = std::panic::take_hook();
            std::panic::set_hook(Box::new(|_| {}));
            let _ = catch_unwind(AssertUnwindSafe(move || {
                let _g = g;
                panic!("owner dies");
            }));
            std::panic::set_hook(hook);
            Ok(())
        })
        .await
        .unwrap();
    });
}

#[test]
fn one_condition_serves_one_mutex_at_a_time() {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = catch_unwind(AssertUnwindSafe(|| {
        testing::run(async {
            let (a, b) = (Mutex::new(()), Mutex::new(()));
            let cond = Condition::new();
            let mut w = cond.wait(a.lock().await.unwrap());
            assert!(poll_once(&mut w).await.is_pending());
            let g = b.lock().await.unwrap();
            cond.notify_one(&g);
        })
    }));
    std::panic::set_hook(hook);
    let msg = r.unwrap_err().downcast::<String>().unwrap();
    assert!(msg.contains("different mutex"), "{msg}");
    // With no waiters left, the condition can be used with another mutex.
    testing::run(async {
        let (a, b) = (Mutex::new(()), Mutex::new(()));
        let cond = Condition::new();
        let mut w = cond.wait(a.lock().await.unwrap());
        assert!(poll_once(&mut w).await.is_pending());
        drop(w);
        let mut w = cond.wait(b.lock().await.unwrap());
        assert!(poll_once(&mut w).await.is_pending());
        cond.notify_one(&b.lock().await.unwrap());
        assert!(poll_once(&mut w).await.is_ready());
    });
}

// ---------------------------------------------------------------------------------------------
// Scale

#[test]
fn thousands_of_waiters_cancelled_at_once_leave_no_trace_and_fifo_survives() {
    const N: usize = 5_000;
    let served = std::cell::RefCell::new(Vec::new());
    testing::run(async {
        let base = registrations();
        let m = Mutex::new(());
        nursery(async |n| {
            let g = m.lock().await?;
            for i in 0..N {
                let (m, served) = (&m, &served);
                n.start_soon(async move {
                    // Every other waiter gives up after 1 s.
                    let limit = if i % 2 == 0 { secs(1) } else { secs(100) };
                    if move_on_after(limit, m.lock()).await?.is_some() {
                        served.borrow_mut().push(i);
                    }
                    Ok::<_, Error>(())
                });
            }
            wait_all_tasks_blocked().await?;
            assert_eq!(m.statistics().tasks_waiting, N);
            sleep(secs(2)).await?;
            assert_eq!(m.statistics().tasks_waiting, N / 2);
            drop(g);
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
        assert_eq!(now(), at(2));
        assert_eq!(registrations(), base);
    });
    let served = served.into_inner();
    assert_eq!(served.len(), N / 2);
    // Tasks parked in spawn order (one batch); the survivors are served in that order.
    assert!(served.windows(2).all(|w| w[0] < w[1]) || served.windows(2).all(|w| w[0] > w[1]));
}

#[test]
fn a_wait_with_the_wrong_mutex_panics_without_breaking_that_mutex() {
    testing::run(async {
        let (a, b) = (Mutex::new(1), Mutex::new(2));
        let cond = Condition::new();
        let mut w = cond.wait(a.lock().await.unwrap());
        assert!(poll_once(&mut w).await.is_pending());
        let mut wrong = cond.wait(b.lock().await.unwrap());
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let r = catch_unwind(AssertUnwindSafe(|| {
            let waker = std::task::Waker::noop();
            let _ = std::pin::Pin::new(&mut wrong).poll(&mut std::task::Context::from_waker(waker));
        }));
        std::panic::set_hook(hook);
        let msg = r.unwrap_err().downcast::<String>().unwrap();
        assert!(msg.contains("different mutex"), "{msg}");
        drop(wrong);
        // The mistake was the caller's, not a panic in a critical section: `b` is released as
        // usual, not broken.
        assert!(!b.is_broken(), "the usage panic broke the mutex");
        assert!(!b.is_locked());
        assert_eq!(*b.try_lock().unwrap(), 2);
    });
}

/// Formats as the outcome of a `try_lock` of the mutex it lives in (found through `PROBED`).
struct Probe;

thread_local! {
    static PROBED: std::cell::Cell<Option<&'static Mutex<Probe>>> = const { std::cell::Cell::new(None) };
}

impl std::fmt::Debug for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = PROBED.with(|p| p.get()).expect("probe installed");
        write!(f, "Probe(try_lock ok: {})", m.try_lock().is_ok())
    }
}

#[test]
fn a_mutex_formats_its_data_under_its_lock_so_a_try_lock_from_the_data_finds_it_busy() {
    testing::run(async {
        let m: &'static Mutex<Probe> = Box::leak(Box::new(Mutex::new(Probe)));
        PROBED.with(|p| p.set(Some(m)));
        let shown = format!("{m:?}");
        assert!(shown.contains("Probe(try_lock ok: false)"), "{shown}");
        // Formatting let the lock go: nothing is left locked.
        assert!(!m.is_locked());
        assert!(m.try_lock().is_ok());
        let held = m.try_lock().unwrap();
        assert!(format!("{m:?}").contains("<locked>"));
        drop(held);
        PROBED.with(|p| p.set(None));
    });
}

#[test]
fn a_semaphore_at_a_maximum_of_zero_refuses_a_release_even_with_a_waiter_s7_4() {
    testing::run(async {
        let sem = Semaphore::with_max(0, 0).unwrap();
        let mut acquire = sem.acquire();
        assert!(poll_once(&mut acquire).await.is_pending());
        // As Trio: the value is at its maximum (0), so a release is one too many.
        assert_eq!(sem.release(), Err(TooManyReleases { max: 0 }));
        assert_eq!(sem.statistics().tasks_waiting, 1, "the waiter got nothing");
        drop(acquire);
        assert_eq!((sem.value(), sem.statistics().tasks_waiting), (0, 0));
    });
}
