//! Blocking work on threads (S10.x): `to_thread` and its options, `check_cancelled`,
//! `from_thread_run_sync`, the limiter, abandoned jobs, panics, and virtual time.
//!
//! Worker closures that must block do so on `std::sync::mpsc` channels the test controls; the
//! run side waits for them with `wait_all_tasks_blocked` (a task waiting for its thread counts
//! as blocked) or with another `to_thread` call on a channel. No real sleeps.

mod support;

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use hatchery::lowlevel::checkpoint;
use hatchery::sync::CapacityLimiter;
use hatchery::testing::{self, assert_checkpoints, registrations, wait_all_tasks_blocked};
use hatchery::thread::{
    DEFAULT_TOKENS, FromThreadError, ThreadOptions, check_cancelled, default_limiter, from_thread_run,
    from_thread_run_sync,
};
use hatchery::{
    CancelScope, CancelSource, Cancelled, Error, Instant, move_on_after, now, nursery, sleep, to_thread,
};
use support::{Log, at, in_cancelled_scope, poll_once, secs};

/// How long a test waits for a pool thread to report back before it fails (never reached when
/// things work).
const PATIENCE: Duration = Duration::from_secs(20);

/// Sends `()` when dropped: tells a test that a value on another thread is gone.
struct DropSignal(mpsc::Sender<()>);

impl Drop for DropSignal {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

// ---------------------------------------------------------------------------------------------
// Basics (S10.1)

#[test]
fn returns_the_value_of_the_closure_s10_1() {
    testing::run(async {
        assert_eq!(to_thread(|| 6 * 7).await, Ok(42));
        let s = to_thread(|| "owned".to_string()).await.unwrap();
        assert_eq!(s, "owned");
        assert_eq!(now(), Instant::ZERO);
    });
}

#[test]
fn works_on_the_real_clock_too() {
    let out = hatchery::run(async {
        let a = to_thread(|| 20).await?;
        let b = to_thread(move || a + 22).await?;
        Ok::<_, Cancelled>(b)
    });
    assert_eq!(out, Ok(42));
}

#[test]
fn runs_on_a_pool_thread_named_hatchery_blocking() {
    let here = std::thread::current().id();
    let (id, name) = testing::run(async {
        to_thread(|| {
            let t = std::thread::current();
            (t.id(), t.name().map(str::to_owned))
        })
        .await
        .unwrap()
    });
    assert_ne!(id, here);
    assert_eq!(name.as_deref(), Some("hatchery-blocking"));
}

#[test]
fn is_a_checkpoint_s2_1() {
    testing::run(async {
        assert_checkpoints(to_thread(|| 1)).await.unwrap();
        assert_checkpoints(ThreadOptions::new().abandon_on_cancel(true).run(|| 2)).await.unwrap();
    });
}

#[test]
fn a_cancelled_call_starts_no_thread_s10_1() {
    testing::run(async {
        let ran = Arc::new(AtomicBool::new(false));
        let (dropped_tx, dropped) = mpsc::channel();
        let guard = DropSignal(dropped_tx);
        let flag = ran.clone();
        let r = in_cancelled_scope(to_thread(move || {
            let _guard = guard;
            flag.store(true, Ordering::SeqCst);
        }))
        .await;
        assert_eq!(r.unwrap_err().source(), CancelSource::Explicit);
        // The closure was dropped unrun, here and now.
        assert_eq!(dropped.try_recv(), Ok(()));
        assert!(!ran.load(Ordering::SeqCst));
        assert_eq!(default_limiter().borrowed_tokens(), 0);
    });
}

#[test]
fn waiting_for_a_token_is_a_cancellable_checkpoint_s10_1() {
    testing::run(async {
        let limiter = Rc::new(CapacityLimiter::new(0));
        let base = registrations();
        let ran = Arc::new(AtomicBool::new(false));
        let flag = ran.clone();
        let job =
            ThreadOptions::new().limiter(limiter.clone()).run(move || flag.store(true, Ordering::SeqCst));
        // No thread runs while it waits for a token, so virtual time moves on.
        let r = move_on_after(secs(5), job).await;
        assert_eq!(r, Ok(None));
        assert_eq!(now(), at(5));
        assert_eq!(limiter.statistics().tasks_waiting, 0);
        assert_eq!(limiter.borrowed_tokens(), 0);
        assert_eq!(registrations(), base, "the cancelled wait left nothing registered");
        assert!(!ran.load(Ordering::SeqCst));
    });
}

#[test]
fn the_token_is_held_while_the_thread_runs_and_returned_after() {
    let (go, wait_go) = mpsc::channel::<()>();
    testing::run(async {
        let limiter = Rc::new(CapacityLimiter::new(1));
        nursery(async |n| {
            let l = limiter.clone();
            n.start_soon(async move {
                ThreadOptions::new().limiter(l).run(move || wait_go.recv_timeout(PATIENCE).unwrap()).await?;
                Ok(())
            });
            wait_all_tasks_blocked().await?;
            assert_eq!(limiter.borrowed_tokens(), 1);
            assert_eq!(default_limiter().borrowed_tokens(), 0, "a limiter of one's own replaces the default");
            go.send(()).unwrap();
            Ok::<_, Cancelled>(())
        })
        .await
        .unwrap();
        assert_eq!(limiter.borrowed_tokens(), 0);
    });
}

#[test]
fn a_limiter_bounds_how_many_threads_run_at_once() {
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let (started_tx, started) = mpsc::channel::<()>();
    let (go, wait_go) = mpsc::channel::<()>();
    let wait_go = Arc::new(Mutex::new(wait_go));
    let started = Arc::new(Mutex::new(started));
    testing::run(async {
        let limiter = Rc::new(CapacityLimiter::new(2));
        nursery(async |n| {
            for _ in 0..5 {
                let (running, most, started_tx, wait_go) =
                    (running.clone(), most.clone(), started_tx.clone(), wait_go.clone());
                let job = ThreadOptions::new().limiter(limiter.clone()).run(move || {
                    let now_running = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now_running, Ordering::SeqCst);
                    started_tx.send(()).unwrap();
                    wait_go.lock().unwrap().recv_timeout(PATIENCE).unwrap();
                    running.fetch_sub(1, Ordering::SeqCst);
                });
                n.start_soon(async move {
                    job.await?;
                    Ok(())
                });
            }
            // Wait (on a thread of the default limiter) until two jobs have started.
            for _ in 0..2 {
                let started = started.clone();
                to_thread(move || started.lock().unwrap().recv_timeout(PATIENCE).unwrap()).await?;
            }
            wait_all_tasks_blocked().await?;
            let s = limiter.statistics();
            assert_eq!((s.borrowed_tokens, s.tasks_waiting), (2, 3));
            assert_eq!(running.load(Ordering::SeqCst), 2);
            for _ in 0..5 {
                go.send(()).unwrap();
            }
            Ok::<_, Cancelled>(())
        })
        .await
        .unwrap();
        assert_eq!(limiter.borrowed_tokens(), 0);
    });
    assert_eq!(most.load(Ordering::SeqCst), 2);
}

#[test]
fn the_default_limiter_has_40_tokens_and_belongs_to_its_run() {
    let (go, wait_go) = mpsc::channel::<()>();
    let first = testing::run(async {
        let l = default_limiter();
        assert_eq!(DEFAULT_TOKENS, 40);
        assert_eq!(l.total_tokens(), 40);
        assert!(Rc::ptr_eq(&l, &default_limiter()), "one limiter per run");
        nursery(async |n| {
            n.start_soon(async {
                to_thread(move || wait_go.recv_timeout(PATIENCE).unwrap()).await?;
                Ok(())
            });
            wait_all_tasks_blocked().await?;
            assert_eq!(l.borrowed_tokens(), 1, "the job holds a token of the default limiter");
            go.send(()).unwrap();
            Ok::<_, Cancelled>(())
        })
        .await
        .unwrap();
        assert_eq!(l.borrowed_tokens(), 0);
        l.set_total_tokens(3);
        l
    });
    testing::run(async {
        let l = default_limiter();
        assert!(!Rc::ptr_eq(&l, &first), "a new run has a new limiter");
        assert_eq!(l.total_tokens(), 40, "a change in one run does not leak into the next");
    });
}

#[test]
fn the_default_limiter_goes_with_its_run() {
    let (weak, jobs_limiter) = testing::run(async {
        let l = default_limiter();
        // A job of its own keeps a share of it while it runs; none is left after.
        let ptr = to_thread(|| ()).await.map(|()| Rc::as_ptr(&default_limiter()));
        assert_eq!(ptr, Ok(Rc::as_ptr(&l)));
        (Rc::downgrade(&l), Rc::strong_count(&l))
    });
    assert_eq!(jobs_limiter, 2, "the run and this test held it, no finished job did");
    assert!(weak.upgrade().is_none(), "dropped when its run ended, not kept for a later run");
}

#[test]
fn lowering_the_default_limiter_serialises_jobs() {
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let (go, wait_go) = mpsc::channel::<()>();
    let wait_go = Arc::new(Mutex::new(wait_go));
    testing::run(async {
        default_limiter().set_total_tokens(1);
        nursery(async |n| {
            for _ in 0..8 {
                let (running, most, wait_go) = (running.clone(), most.clone(), wait_go.clone());
                n.start_soon(async move {
                    to_thread(move || {
                        let r = running.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(r, Ordering::SeqCst);
                        // Hold the token until the test lets go, so that overlap would show.
                        let _ = wait_go.lock().unwrap().recv_timeout(PATIENCE);
                        running.fetch_sub(1, Ordering::SeqCst);
                    })
                    .await
                });
            }
            wait_all_tasks_blocked().await?;
            let s = default_limiter().statistics();
            assert_eq!(
                (s.borrowed_tokens, s.tasks_waiting),
                (1, 7),
                "one job runs, seven wait for the token"
            );
            for _ in 0..8 {
                go.send(()).unwrap();
            }
            Ok::<_, Cancelled>(())
        })
        .await
        .unwrap();
    });
    assert_eq!(most.load(Ordering::SeqCst), 1);
}

#[test]
fn many_jobs_on_the_real_clock() {
    assert_eq!(sum_of_thread_jobs(1, 200, |i| i * i), (0..200u64).map(|i| i * i).sum::<u64>());
}

/// Runs `rounds` nurseries, one after another, of `per_round` thread jobs each, on the real
/// clock; job `k` (counted across rounds) returns `f(k)`. Returns the sum of their values.
fn sum_of_thread_jobs(rounds: u64, per_round: u64, f: fn(u64) -> u64) -> u64 {
    hatchery::run(async {
        let sum = std::cell::Cell::new(0u64);
        for round in 0..rounds {
            nursery(async |n| {
                for i in 0..per_round {
                    let sum = &sum;
                    n.start_soon(async move {
                        let v = to_thread(move || f(round * per_round + i)).await?;
                        sum.set(sum.get() + v);
                        Ok(())
                    });
                }
                Ok::<_, Cancelled>(())
            })
            .await
            .unwrap();
        }
        sum.get()
    })
}

// ---------------------------------------------------------------------------------------------
// Cancellation while the thread runs (S10.2, S10.3, S10.4)

#[test]
fn by_default_cancellation_waits_for_the_thread_and_stays_pending_s10_2() {
    let log = Log::new();
    let (go, wait_go) = mpsc::channel::<u32>();
    testing::run(async {
        let scope = CancelScope::new();
        let handle = scope.handle();
        nursery(async |n| {
            let log2 = log.clone();
            n.start_soon(async move {
                let out = scope
                    .run(async {
                        let v = to_thread(move || wait_go.recv_timeout(PATIENCE).unwrap() * 2).await?;
                        log2.push(format!("value {v}"));
                        checkpoint().await?;
                        log2.push("not reached");
                        Ok::<_, Cancelled>(())
                    })
                    .await;
                assert_eq!(out, Ok(None));
                log2.push("absorbed");
                Ok(())
            });
            wait_all_tasks_blocked().await?;
            handle.cancel();
            wait_all_tasks_blocked().await?;
            log.push("cancelled, still waiting");
            go.send(21).unwrap();
            Ok::<_, Cancelled>(())
        })
        .await
        .unwrap();
        assert_eq!(now(), Instant::ZERO);
    });
    assert_eq!(log.take(), ["cancelled, still waiting", "value 42", "absorbed"]);
}

#[test]
fn check_cancelled_sees_a_delivered_cancellation_in_the_default_mode_s10_4() {
    let (go, wait_go) = mpsc::channel::<()>();
    let (checked_tx, checked) = mpsc::channel();
    testing::run(async {
        let scope = CancelScope::new();
        let handle = scope.handle();
        nursery(async |n| {
            n.start_soon(async move {
                let out = scope
                    .run(async {
                        let (before, after) = to_thread(move || {
                            let before = check_cancelled();
                            checked_tx.send(()).unwrap();
                            wait_go.recv_timeout(PATIENCE).unwrap();
                            (before, check_cancelled())
                        })
                        .await?;
                        assert_eq!(before, Ok(()));
                        let c = match after {
                            Err(FromThreadError::Cancelled(c)) => c,
                            other => panic!("expected a delivered cancellation, got {other:?}"),
                        };
                        assert_eq!(c.reason(), Some("stop"));
                        // Returned from the closure, it travels as any cancellation.
                        Err::<(), _>(Error::from(FromThreadError::Cancelled(c)))
                    })
                    .await;
                assert!(matches!(out, Ok(None)), "the scope absorbed it");
                Ok(())
            });
            // Wait, on another thread, until the job has made its first check.
            to_thread(move || checked.recv_timeout(PATIENCE).unwrap()).await?;
            wait_all_tasks_blocked().await?;
            handle.cancel_with_reason("stop");
            wait_all_tasks_blocked().await?; // the waiting task has been woken and saw it
            go.send(()).unwrap();
            Ok::<_, Cancelled>(())
        })
        .await
        .unwrap();
    });
}

#[test]
fn a_cancellation_held_off_by_a_shield_is_not_seen_from_the_thread_s10_4() {
    let (go, wait_go) = mpsc::channel::<()>();
    testing::run(async {
        let scope = CancelScope::new().shielded();
        let handle = scope.handle();
        let outer = CancelScope::new();
        let outer_handle = outer.handle();
        let r = outer
            .run(async {
                nursery(async |n| {
                    n.start_soon(async move {
                        // Shielded: the outer cancellation never reaches the waiting task.
                        let seen = scope
                            .run(to_thread(move || {
                                wait_go.recv_timeout(PATIENCE).unwrap();
                                check_cancelled()
                            }))
                            .await?;
                        assert_eq!(seen, Some(Ok(())));
                        Ok(())
                    });
                    wait_all_tasks_blocked().await?;
                    outer_handle.cancel();
                    wait_all_tasks_blocked().await.ok(); // cancelled itself: returns at once
                    go.send(()).unwrap();
                    Ok::<_, Cancelled>(())
                })
                .await?;
                Ok::<_, Cancelled>(())
            })
            .await;
        assert_eq!(r, Ok(Some(())), "the body finished: its value is kept");
        assert!(!handle.cancel_called(), "only the outer scope was cancelled");
    });
}

#[test]
fn abandon_on_cancel_returns_at_once_and_keeps_the_token_until_the_thread_ends_s10_3() {
    let log = Log::new();
    let (go, wait_go) = mpsc::channel::<()>();
    let (report_tx, report) = mpsc::channel();
    let (result_dropped_tx, result_dropped) = mpsc::channel();
    testing::run(async {
        let limiter = Rc::new(CapacityLimiter::new(1));
        let scope = CancelScope::new();
        let handle = scope.handle();
        nursery(async |n| {
            let (log2, l) = (log.clone(), limiter.clone());
            n.start_soon(async move {
                let job = ThreadOptions::new().limiter(l).abandon_on_cancel(true).run(move || {
                    wait_go.recv_timeout(PATIENCE).unwrap();
                    report_tx.send(check_cancelled()).unwrap();
                    DropSignal(result_dropped_tx) // the result nobody will read
                });
                let out = scope.run(job).await;
                assert!(matches!(out, Ok(None)));
                log2.push(format!("returned@{}", now().since_origin().as_secs()));
                Ok(())
            });
            wait_all_tasks_blocked().await?;
            handle.cancel();
            wait_all_tasks_blocked().await?;
            assert_eq!(log.take(), ["returned@0"], "returned while the thread is still blocked");
            assert_eq!(limiter.borrowed_tokens(), 1, "the abandoned thread keeps its token");
            Ok::<_, Cancelled>(())
        })
        .await
        .unwrap();
        // The autojump is back as soon as nobody waits for a thread.
        sleep(secs(3)).await.unwrap();
        assert_eq!(now(), at(3));
        go.send(()).unwrap();
        // The token comes back when the thread finishes: this waits for it.
        let token = limiter.acquire().await.unwrap();
        assert_eq!(limiter.borrowed_tokens(), 1);
        drop(token);
    });
    let seen = report.recv_timeout(PATIENCE).unwrap();
    assert!(matches!(seen, Err(FromThreadError::Cancelled(ref c)) if c.source() == CancelSource::Explicit));
    result_dropped.recv_timeout(PATIENCE).expect("the late result was dropped");
}

#[test]
fn a_late_result_after_the_run_ended_is_dropped_silently_s10_3() {
    let limiter = Rc::new(CapacityLimiter::new(1));
    let (go, wait_go) = mpsc::channel::<()>();
    let (dropped_tx, dropped) = mpsc::channel();
    let (panic_go, wait_panic_go) = mpsc::channel::<()>();
    testing::run(async {
        let scope = CancelScope::new();
        let handle = scope.handle();
        let l = limiter.clone();
        nursery(async |n| {
            n.start_soon(async move {
                let jobs = nursery(async |m| {
                    let job = ThreadOptions::new().limiter(l).abandon_on_cancel(true).run(move || {
                        wait_go.recv_timeout(PATIENCE).unwrap();
                        DropSignal(dropped_tx)
                    });
                    m.start_soon(async move {
                        job.await?;
                        Ok(())
                    });
                    let job = ThreadOptions::new().abandon_on_cancel(true).run(move || {
                        wait_panic_go.recv_timeout(PATIENCE).unwrap();
                        panic!("a late panic, dropped silently (expected by this test)");
                    });
                    m.start_soon(async move {
                        job.await?;
                        Ok(())
                    });
                    Ok::<_, Cancelled>(())
                });
                assert!(matches!(scope.run(jobs).await, Ok(None)));
                Ok(())
            });
            wait_all_tasks_blocked().await?;
            handle.cancel();
            Ok::<_, Cancelled>(())
        })
        .await
        .unwrap();
    });
    // The run is over; now the threads finish.
    go.send(()).unwrap();
    panic_go.send(()).unwrap();
    dropped.recv_timeout(PATIENCE).expect("the late result was dropped");
    // The run ended first, so the token was not returned to it (S10.3). hatchery hands it back
    // at the next `to_thread` call on this thread, once the thread has finished.
    assert_eq!(limiter.borrowed_tokens(), 1);
    testing::run(async {
        let v = ThreadOptions::new().limiter(limiter.clone()).run(|| 5).await.unwrap();
        assert_eq!(v, 5);
        assert_eq!(limiter.borrowed_tokens(), 0);
    });
}

#[test]
fn a_later_run_waiting_for_an_abandoned_jobs_token_gets_it_when_the_thread_finishes() {
    let limiter = Rc::new(CapacityLimiter::new(1));
    let (go, wait_go) = mpsc::channel::<()>();
    // Run 1 abandons a job whose thread then outlives it, holding the limiter's only token.
    testing::run(async {
        let mut job = Box::pin(ThreadOptions::new().limiter(limiter.clone()).run(move || {
            wait_go.recv_timeout(PATIENCE).unwrap();
        }));
        assert!(poll_once(job.as_mut()).await.is_pending());
    });
    assert_eq!(limiter.borrowed_tokens(), 1);
    // Run 2 needs that token. Its call finds the job still running, so the thread, when it
    // finishes, must tell run 2 (run 1 is gone), or run 2 would wait for ever (a deadlock the
    // stuck detector reports after 5 s here).
    let got = testing::builder().stuck_after(Some(secs(5))).run(async {
        nursery(async |n| {
            n.start_soon(async {
                wait_all_tasks_blocked().await?; // the call below waits for the token
                go.send(()).unwrap();
                Ok(())
            });
            let v = ThreadOptions::new().limiter(limiter.clone()).run(|| 5).await?;
            Ok::<_, Error>(v)
        })
        .await
    });
    assert_eq!(got.unwrap(), Some(5));
    assert_eq!(limiter.borrowed_tokens(), 0);
}

#[test]
fn dropping_the_waiting_future_abandons_the_job() {
    let (go, wait_go) = mpsc::channel::<()>();
    let (report_tx, report) = mpsc::channel();
    testing::run(async {
        let limiter = Rc::new(CapacityLimiter::new(1));
        let base = registrations();
        let mut job = Box::pin(ThreadOptions::new().limiter(limiter.clone()).run(move || {
            wait_go.recv_timeout(PATIENCE).unwrap();
            report_tx.send(check_cancelled()).unwrap();
        }));
        assert!(poll_once(job.as_mut()).await.is_pending());
        assert_eq!(limiter.borrowed_tokens(), 1);
        drop(job);
        assert_eq!(registrations(), base, "nothing of the job is left registered in the run");
        assert_eq!(limiter.borrowed_tokens(), 1, "the thread still runs and keeps its token");
        go.send(()).unwrap();
        let _token = limiter.acquire().await.unwrap(); // returned when the thread finished
    });
    assert_eq!(report.recv_timeout(PATIENCE).unwrap(), Err(FromThreadError::Abandoned));
}

#[test]
fn an_abandoned_jobs_token_stays_out_while_its_results_destructor_runs() {
    /// Tells the test its destructor has begun, then blocks until let go.
    struct SlowDrop(mpsc::Sender<()>, mpsc::Receiver<()>);
    impl Drop for SlowDrop {
        fn drop(&mut self) {
            let _ = self.0.send(());
            let _ = self.1.recv_timeout(PATIENCE);
        }
    }
    let (go, wait_go) = mpsc::channel::<()>();
    let (began_tx, began) = mpsc::channel();
    let (let_go, wait_let_go) = mpsc::channel::<()>();
    testing::run(async {
        let limiter = Rc::new(CapacityLimiter::new(1));
        let mut job = Box::pin(ThreadOptions::new().limiter(limiter.clone()).run(move || {
            wait_go.recv_timeout(PATIENCE).unwrap();
            SlowDrop(began_tx, wait_let_go)
        }));
        assert!(poll_once(job.as_mut()).await.is_pending());
        drop(job);
        go.send(()).unwrap();
        began.recv_timeout(PATIENCE).unwrap();
        // The thread still runs user code (the destructor): the token is not free yet.
        let mut next = Box::pin(ThreadOptions::new().limiter(limiter.clone()).run(|| 7));
        assert!(poll_once(next.as_mut()).await.is_pending());
        let st = limiter.statistics();
        assert_eq!((st.borrowed_tokens, st.tasks_waiting), (1, 1), "a second thread ran beside the first");
        let_go.send(()).unwrap();
        assert_eq!(next.await, Ok(7));
        assert_eq!(limiter.borrowed_tokens(), 0);
    });
}

#[test]
fn a_panicking_destructor_of_an_abandoned_result_still_gives_its_token_back() {
    /// Tells the test it is being dropped, then panics.
    struct Bomb(mpsc::Sender<()>);
    impl Drop for Bomb {
        fn drop(&mut self) {
            let _ = self.0.send(());
            panic!("a result's destructor panics (expected by this test)");
        }
    }
    let (go, wait_go) = mpsc::channel::<()>();
    let (dropped_tx, dropped) = mpsc::channel();
    // The real clock: the run waits for the thread, with a bound that only a failure reaches.
    hatchery::run(async {
        let limiter = Rc::new(CapacityLimiter::new(1));
        let mut job = Box::pin(ThreadOptions::new().limiter(limiter.clone()).run(move || {
            wait_go.recv_timeout(PATIENCE).unwrap();
            Bomb(dropped_tx)
        }));
        assert!(poll_once(job.as_mut()).await.is_pending());
        drop(job);
        go.send(()).unwrap();
        let r = move_on_after(PATIENCE, limiter.acquire()).await;
        assert!(matches!(r, Ok(Some(_))), "the token never came back");
    });
    dropped.recv_timeout(PATIENCE).expect("the result was dropped");
}

#[test]
fn the_clock_autojumps_again_however_the_wait_for_a_thread_ended() {
    let (go, wait_go) = mpsc::channel::<()>();
    testing::run(async {
        // A value.
        assert_eq!(to_thread(|| 1).await, Ok(1));
        sleep(secs(1)).await.unwrap();
        assert_eq!(now(), at(1));
        // A panic, resumed in the task and caught here.
        let mut job = Box::pin(to_thread(|| -> u8 { panic!("boom (expected by this test)") }));
        let caught =
            std::future::poll_fn(|cx| match catch_unwind(AssertUnwindSafe(|| job.as_mut().poll(cx))) {
                Ok(Poll::Pending) => Poll::Pending,
                Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
                Err(panic) => Poll::Ready(Err(panic)),
            })
            .await;
        assert!(caught.is_err(), "the panic came through");
        drop(job);
        sleep(secs(1)).await.unwrap();
        assert_eq!(now(), at(2));
        // The future dropped while its thread runs on.
        let mut job = Box::pin(to_thread(move || wait_go.recv_timeout(PATIENCE).unwrap()));
        assert!(poll_once(job.as_mut()).await.is_pending());
        drop(job);
        sleep(secs(1)).await.unwrap();
        assert_eq!(now(), at(3), "the abandoned thread does not hold the clock");
        // A cancellation in the default mode: the wait goes on and ends with the thread's value.
        let (give, wait_give) = mpsc::channel::<u8>();
        let scope = CancelScope::new();
        let handle = scope.handle();
        nursery(async |n| {
            n.start_soon(async move {
                wait_all_tasks_blocked().await?;
                handle.cancel();
                wait_all_tasks_blocked().await?; // the waiting task saw it, and waits on
                give.send(5).unwrap();
                Ok(())
            });
            let r = scope
                .run(async {
                    assert_eq!(to_thread(move || wait_give.recv_timeout(PATIENCE).unwrap()).await, Ok(5));
                    checkpoint().await
                })
                .await;
            assert_eq!(r, Ok(None), "the scope absorbed the cancellation at the next checkpoint");
            Ok::<_, Cancelled>(())
        })
        .await
        .unwrap();
        assert_eq!(now(), at(3));
        sleep(secs(1)).await.unwrap();
        assert_eq!(now(), at(4));
    });
    go.send(()).unwrap();
}

/// Sends `()` each time it is woken: tells a test that a pool thread woke the task.
struct ReportWake(mpsc::Sender<()>);

impl Wake for ReportWake {
    fn wake(self: Arc<Self>) {
        let _ = self.0.send(());
    }
}

#[test]
fn with_abandon_on_cancel_a_finished_job_still_returns_its_value() {
    let (go, wait_go) = mpsc::channel::<()>();
    testing::run(async {
        let limiter = Rc::new(CapacityLimiter::new(1));
        let mut job =
            Box::pin(ThreadOptions::new().limiter(limiter.clone()).abandon_on_cancel(true).run(move || {
                wait_go.recv_timeout(PATIENCE).unwrap();
                9
            }));
        // Polled once by hand, with a waker that reports here when the thread has finished.
        let (woken_tx, woken) = mpsc::channel();
        let waker = Waker::from(Arc::new(ReportWake(woken_tx)));
        assert!(job.as_mut().poll(&mut Context::from_waker(&waker)).is_pending());
        go.send(()).unwrap();
        woken.recv_timeout(PATIENCE).expect("the thread finished and woke the waiting task");
        // A cancellation reaches the task before it sees the outcome: the outcome wins.
        let v = in_cancelled_scope(poll_once(job.as_mut())).await;
        assert_eq!(v, Poll::Ready(Ok(9)));
        assert_eq!(limiter.borrowed_tokens(), 0);
    });
}

// ---------------------------------------------------------------------------------------------
// Panics

#[test]
fn a_panic_in_the_closure_is_resumed_in_the_awaiting_task() {
    // A limiter that outlives the run, to see that the panicking job gave its token back.
    let limiter = Rc::new(CapacityLimiter::new(2));
    let caught = catch_unwind(AssertUnwindSafe(|| {
        testing::run(async {
            nursery(async |n| {
                n.start_soon(async {
                    let boom = || -> u32 { panic!("boom in a thread") };
                    ThreadOptions::new().limiter(limiter.clone()).run(boom).await?;
                    Ok(())
                });
                Ok::<_, Cancelled>(())
            })
            .await
        })
    }));
    let payload = caught.expect_err("the panic reached the run");
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"boom in a thread"));
    assert_eq!(limiter.borrowed_tokens(), 0, "the token came back on the panic path");
    // The pool survived, and the limiter of that run is gone with it.
    testing::run(async {
        assert_eq!(to_thread(|| 3).await, Ok(3));
        assert_eq!(default_limiter().borrowed_tokens(), 0);
    });
}

// ---------------------------------------------------------------------------------------------
// From the worker thread

#[test]
fn check_cancelled_outside_a_worker_is_an_error_not_a_panic_s10_4() {
    assert_eq!(check_cancelled(), Err(FromThreadError::NotInWorker));
    assert_eq!(from_thread_run_sync(|| 1), Err(FromThreadError::NotInWorker));
    let nested = testing::run(async {
        to_thread(|| std::thread::spawn(check_cancelled).join().unwrap()).await.unwrap()
    });
    assert_eq!(nested, Err(FromThreadError::NotInWorker), "a thread started by the job is not a worker");
    let msg = FromThreadError::NotInWorker.to_string();
    assert!(msg.contains("not running a hatchery::to_thread job"), "{msg}");
}

#[test]
fn from_thread_run_sync_runs_on_the_run_thread() {
    let run_thread = std::thread::current().id();
    testing::run(async {
        let (on, t) = to_thread(|| from_thread_run_sync(|| (std::thread::current().id(), now())).unwrap())
            .await
            .unwrap();
        assert_eq!(on, run_thread);
        assert_eq!(t, Instant::ZERO);
    });
}

#[test]
fn a_panic_in_from_thread_run_sync_travels_back_through_the_worker() {
    let caught = catch_unwind(AssertUnwindSafe(|| {
        testing::run(async {
            let r = to_thread(|| from_thread_run_sync(|| -> u8 { panic!("boom on the run thread") })).await;
            unreachable!("{r:?}");
        })
    }));
    let payload = caught.expect_err("the panic reached the awaiting task");
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"boom on the run thread"));
}

#[test]
fn from_thread_errors_convert_and_keep_cancellations() {
    testing::run(async {
        let c = in_cancelled_scope(checkpoint()).await.unwrap_err();
        let io: std::io::Error = FromThreadError::Cancelled(c.clone()).into();
        assert_eq!(Cancelled::from_io(&io), Some(&c));
        let e: Error = FromThreadError::Abandoned.into();
        assert!(matches!(e, Error::Other(_)));
        let e: Error = FromThreadError::Cancelled(c).into();
        assert!(matches!(e, Error::Cancelled(_)));
    });
}

#[test]
fn from_thread_run_runs_async_code_in_the_waiting_task_on_virtual_time_s10_4() {
    let run_thread = std::thread::current().id();
    testing::run(async {
        let log = Log::default();
        let got = nursery(async |n| {
            // A sibling that runs while the request sleeps: the run is not held up.
            n.start_soon(async {
                sleep(secs(2)).await?;
                log.push("sibling at 2 s");
                Ok(())
            });
            let got = to_thread(|| {
                let before = std::thread::current().id();
                let r = from_thread_run(|| async {
                    // On the run's thread, where sleeps autojump as usual.
                    sleep(secs(5)).await?;
                    Ok::<_, Cancelled>((std::thread::current().id(), now()))
                });
                (before, r)
            })
            .await?;
            log.push("job done");
            Ok::<_, Error>(got)
        })
        .await
        .unwrap()
        .unwrap();
        let (worker, r) = got;
        assert_ne!(worker, run_thread);
        assert_eq!(r, Ok(Ok((run_thread, at(5)))));
        assert_eq!(now(), at(5));
        assert_eq!(log.take(), ["sibling at 2 s", "job done"]);
    });
}

#[test]
fn a_request_sees_the_cancellation_of_the_to_thread_call() {
    testing::run(async {
        let seen = move_on_after(secs(3), async {
            let r = to_thread(|| {
                let r = from_thread_run(|| async {
                    sleep(secs(10)).await?;
                    Ok::<_, Cancelled>("slept")
                });
                // The thread also sees the cancellation, and returns it for `?`.
                (r, check_cancelled().is_err())
            })
            .await?;
            Ok::<_, Cancelled>(r)
        })
        .await
        .unwrap();
        // Default mode: the wait completes with the thread's value; the scope absorbs nothing
        // because the value came back.
        let (r, thread_saw_cancel) = seen.expect("the job's value is kept");
        let c = r.unwrap().unwrap_err();
        assert_eq!(c.source(), CancelSource::Deadline);
        assert!(thread_saw_cancel);
        assert_eq!(now(), at(3), "cancelled at the deadline, not after the 10 s sleep");
    });
}

#[test]
fn a_panic_in_from_thread_run_travels_back_through_the_worker() {
    let caught = catch_unwind(AssertUnwindSafe(|| {
        testing::run(async {
            let r = to_thread(|| {
                from_thread_run(|| async {
                    sleep(secs(1)).await.unwrap();
                    panic!("async boom on the run thread")
                })
            })
            .await;
            unreachable!("{r:?}");
        })
    }));
    let payload = caught.expect_err("the panic reached the awaiting task");
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"async boom on the run thread"));
}

#[test]
fn a_cancelled_abandoned_job_drops_its_unfinished_request_and_the_thread_hears_cancelled() {
    let (tx, rx) = mpsc::channel();
    let dropped = Arc::new(AtomicBool::new(false));
    let flag = dropped.clone();
    testing::run(async move {
        let r = move_on_after(
            secs(1),
            ThreadOptions::new().abandon_on_cancel(true).run(move || {
                let r = from_thread_run(move || {
                    let guard = SetOnDrop(flag);
                    async move {
                        let _guard = guard;
                        // Shielded: the cancellation does not end it; the abandonment drops it.
                        CancelScope::new().shielded().run(hatchery::sleep_forever()).await
                    }
                });
                tx.send(r.map(|_| ())).unwrap();
            }),
        )
        .await;
        assert_eq!(r.map(|v| v.is_none()), Ok(true), "the scope absorbed its cancellation");
        assert_eq!(now(), at(1));
        assert!(dropped.load(Ordering::SeqCst), "the request's future was dropped with the wait");
    });
    let heard = rx.recv_timeout(PATIENCE).expect("the abandoned thread reported");
    match heard {
        Err(FromThreadError::Cancelled(c)) => assert_eq!(c.source(), CancelSource::Deadline),
        other => panic!("expected the cancellation, got {other:?}"),
    }
    // Outside a job there is nobody to ask.
    assert_eq!(from_thread_run(|| async {}), Err(FromThreadError::NotInWorker));
}

#[test]
fn in_abandon_mode_a_request_gets_a_poll_under_the_cancellation() {
    let (tx, rx) = mpsc::channel();
    testing::run(async move {
        let r = move_on_after(
            secs(1),
            ThreadOptions::new().abandon_on_cancel(true).run(move || {
                let r = from_thread_run(hatchery::sleep_forever);
                tx.send(r).unwrap();
            }),
        )
        .await;
        // Absorbed (`None`), or, if the thread finished before the wait looked again, the
        // job's value: a completion wins over the abandonment.
        assert!(r.is_ok(), "{r:?}");
    });
    // The request's sleep failed with the cancellation and that was its output.
    match rx.recv_timeout(PATIENCE).expect("the abandoned thread reported") {
        Ok(Err(c)) => assert_eq!(c.source(), CancelSource::Deadline),
        other => panic!("expected the request's own Cancelled, got {other:?}"),
    }
}

#[test]
fn after_a_request_the_job_counts_as_outside_work_again() {
    testing::run(async {
        let log = Log::default();
        nursery(async |n| {
            n.start_soon(async {
                sleep(secs(1)).await?;
                log.push("sibling at 1 s");
                Ok(())
            });
            let read = to_thread(|| {
                from_thread_run(|| async {}).unwrap();
                // Real work after the request: the clock must not jump past the sibling's
                // deadline meanwhile (it would, were the job not counted again).
                let spin: u64 = (0..5_000_000u64).map(std::hint::black_box).sum();
                assert!(spin > 0);
                from_thread_run_sync(now).unwrap()
            })
            .await?;
            assert_eq!(read, Instant::ZERO);
            log.push("job done");
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
        assert_eq!(log.take(), ["job done", "sibling at 1 s"]);
    });
}

#[test]
fn a_dropped_wait_abandons_its_request_and_the_thread_hears_abandoned() {
    let (go, wait_go) = mpsc::channel::<()>();
    let (heard_tx, heard) = mpsc::channel();
    testing::run(async move {
        let mut job = Box::pin(to_thread(move || {
            wait_go.recv_timeout(PATIENCE).unwrap();
            heard_tx.send(from_thread_run(|| async { "served" })).unwrap();
        }));
        assert!(poll_once(job.as_mut()).await.is_pending());
        // Dropped before the thread asks, without a cancellation, and after the run ended.
        drop(job);
        go.send(()).unwrap();
    });
    assert_eq!(heard.recv_timeout(PATIENCE).expect("the thread reported"), Err(FromThreadError::Abandoned));
}

/// Sets its flag when dropped.
struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

// ---------------------------------------------------------------------------------------------
// Virtual time (S8.3)

#[test]
fn the_clock_does_not_autojump_while_a_thread_job_runs_s8_3() {
    let log = Log::new();
    testing::run(async {
        nursery(async |n| {
            let log2 = log.clone();
            n.start_soon(async move {
                sleep(secs(10)).await?;
                log2.push(format!("sleeper@{}", now().since_origin().as_secs()));
                Ok(())
            });
            // Each call below is a round trip to the run's thread, which is idle in between:
            // an autojump would show as a later time.
            let seen =
                to_thread(|| (0..20).map(|_| from_thread_run_sync(now).unwrap()).collect::<Vec<Instant>>())
                    .await?;
            assert!(seen.iter().all(|t| *t == Instant::ZERO), "{seen:?}");
            log.push(format!("thread done@{}", now().since_origin().as_secs()));
            Ok::<_, Cancelled>(())
        })
        .await
        .unwrap();
        assert_eq!(now(), at(10));
    });
    assert_eq!(log.take(), ["thread done@0", "sleeper@10"]);
}

/// Thread jobs finishing one after another, each waking the loop from its pool thread while the
/// loop waits for I/O. On polling's poll(2) backend a wake-up could make the wait fail with
/// EAGAIN (its `notify` raises a flag before it writes the pipe); the reactor takes that as a
/// wake-up. Real clock: the race needs a real wait; 3,000 short jobs take well under a second.
#[test]
fn a_storm_of_thread_wakeups_never_fails_the_wait() {
    assert_eq!(sum_of_thread_jobs(30, 100, |k| k), (0..3_000u64).sum::<u64>());
}
