//! `run` and `Builder`: return values, nesting, panics, cross-thread entry, the batch rule and seeded
//! determinism (S1.x).

mod support;

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use hatchery::lowlevel::{self, checkpoint};
use hatchery::testing::{self, MockClock, wait_all_tasks_blocked};
use hatchery::{
    Builder, Cancelled, Error, RunError, RunFinished, SchedulePolicy, fail_after, now, nursery, sleep,
};
use support::{at, secs};

/// The text of a caught panic payload.
fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "<non-string panic>".to_string()
    }
}

fn explode() -> Result<(), Cancelled> {
    panic!("child exploded")
}

#[test]
fn run_returns_the_futures_value_s1_1() {
    assert_eq!(hatchery::run(async { 40 + 2 }), 42);
    // Not `Send`, and borrowing from the caller: fine for a single-threaded run.
    let local = Rc::new(RefCell::new(vec![1, 2]));
    let out = hatchery::run(async {
        local.borrow_mut().push(3);
        Rc::clone(&local)
    });
    assert_eq!(*out.borrow(), [1, 2, 3]);
    // Errors come back as they are, unwrapped.
    let r: Result<(), Error> = hatchery::run(async { Err(Error::other("plain")) });
    assert_eq!(r.unwrap_err().to_string(), "plain");
    // The same through a Builder, with every policy.
    for policy in [SchedulePolicy::Fifo, SchedulePolicy::RandomReverse, SchedulePolicy::Shuffle] {
        let v = Builder::new().schedule(policy).seed(9).clock(MockClock::new()).run(async {
            sleep(Duration::ZERO).await.unwrap();
            "done"
        });
        assert_eq!(v, "done");
    }
}

#[test]
fn try_run_returns_the_value_outside_a_run() {
    let r = testing::builder().try_run(async {
        sleep(secs(2)).await.unwrap();
        now()
    });
    assert_eq!(r.unwrap(), at(2));
}

#[test]
fn nested_run_is_an_error_s1_2() {
    let (nested, message, after) = hatchery::run(async {
        let nested = Builder::new().try_run(async { 1 });
        let caught = catch_unwind(AssertUnwindSafe(|| hatchery::run(async { 2 })));
        let message = panic_text(&*caught.unwrap_err());
        // The outer run is unharmed.
        checkpoint().await.unwrap();
        (nested, message, 3)
    });
    assert!(matches!(nested, Err(RunError::Nested)), "got {nested:?}");
    assert!(message.contains("inside a running hatchery runtime"), "panic message: {message}");
    assert_eq!(after, 3);
    // Inside a task in a nursery too.
    let nested = testing::run(async {
        nursery(async |n| {
            let h = n.spawn(async { Ok(matches!(Builder::new().try_run(async {}), Err(RunError::Nested))) });
            Ok::<_, Cancelled>(h.await.unwrap())
        })
        .await
        .unwrap()
    });
    assert_eq!(nested, Some(true));
}

#[test]
fn panic_in_main_future_propagates_and_the_thread_can_run_again_s1_1() {
    let r = catch_unwind(|| {
        hatchery::run(async {
            checkpoint().await.unwrap();
            panic!("main exploded");
        })
    });
    let p = r.unwrap_err();
    assert_eq!(panic_text(&*p), "main exploded");
    assert_eq!(hatchery::run(async { 5 }), 5);

    // A child's panic too, resumed by its nursery and out of run.
    let r = catch_unwind(|| {
        testing::run(async {
            let _ = nursery(async |n| {
                n.start_soon(async {
                    sleep(secs(1)).await?;
                    explode()
                });
                Ok(())
            })
            .await;
        })
    });
    assert_eq!(panic_text(&*r.unwrap_err()), "child exploded");
    assert_eq!(testing::run(async { 6 }), 6);
}

#[test]
fn run_sync_soon_runs_callbacks_in_fifo_order_s1_10() {
    let got: Arc<Mutex<Vec<u32>>> = Arc::default();
    let handle = hatchery::run(async {
        let handle = lowlevel::run_handle();
        let h = handle.clone();
        let g = got.clone();
        let (done_tx, done_rx) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            for i in 0..100 {
                let g = g.clone();
                h.run_sync_soon(move || g.lock().unwrap().push(i)).unwrap();
            }
            done_tx.send(()).unwrap();
        });
        let r: Result<(), Error> = fail_after(secs(10), async {
            while got.lock().unwrap().len() < 100 {
                wait_all_tasks_blocked().await?;
            }
            Ok(())
        })
        .await;
        r.unwrap();
        done_rx.recv().unwrap();
        thread.join().unwrap();
        handle
    });
    assert_eq!(*got.lock().unwrap(), (0..100).collect::<Vec<_>>());

    // After the run: the closure is handed back, unrun.
    let ran = Arc::new(Mutex::new(false));
    let r2 = ran.clone();
    let Err((RunFinished, rejected)) = handle.run_sync_soon(move || *r2.lock().unwrap() = true) else {
        panic!("run_sync_soon after the run must fail");
    };
    assert!(!*ran.lock().unwrap());
    (rejected.0)();
    assert!(*ran.lock().unwrap(), "the rejected closure is the one we passed");
}

#[test]
fn run_sync_soon_from_the_runs_own_thread_is_fifo_too_s1_10() {
    let order = Arc::new(Mutex::new(Vec::new()));
    testing::run(async {
        let h = lowlevel::run_handle();
        for i in 0..10 {
            let o = order.clone();
            h.run_sync_soon(move || o.lock().unwrap().push(i)).unwrap();
        }
        assert!(order.lock().unwrap().is_empty(), "callbacks run between batches, not inline");
        wait_all_tasks_blocked().await.unwrap();
    });
    assert_eq!(*order.lock().unwrap(), (0..10).collect::<Vec<_>>());
}

/// Pending once: stores its waker where another thread can find it, then ready.
struct ParkOnce {
    slot: Arc<Mutex<Option<Waker>>>,
    parked: mpsc::Sender<()>,
    polled: bool,
}

impl Future for ParkOnce {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.polled {
            // Only a real wake gets us here: the waker was taken by the other thread.
            if self.slot.lock().unwrap().is_some() {
                return Poll::Pending;
            }
            return Poll::Ready(());
        }
        self.polled = true;
        *self.slot.lock().unwrap() = Some(cx.waker().clone());
        self.parked.send(()).unwrap();
        Poll::Pending
    }
}

fn waker_thread(slot: Arc<Mutex<Option<Waker>>>, parked: mpsc::Receiver<()>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        parked.recv().unwrap();
        let w = slot.lock().unwrap().take().unwrap();
        w.wake();
    })
}

#[test]
fn a_waker_sent_to_another_thread_wakes_the_root_task() {
    let slot = Arc::new(Mutex::new(None));
    let (tx, rx) = mpsc::channel();
    let thread = waker_thread(slot.clone(), rx);
    let r: Result<(), Error> = hatchery::run(fail_after(secs(10), async {
        ParkOnce { slot, parked: tx, polled: false }.await;
        Ok(())
    }));
    r.unwrap();
    thread.join().unwrap();
}

#[test]
fn a_waker_sent_to_another_thread_wakes_a_child_task() {
    let slot = Arc::new(Mutex::new(None));
    let (tx, rx) = mpsc::channel();
    let thread = waker_thread(slot.clone(), rx);
    let woke = Cell::new(false);
    let r: Result<_, Error> = hatchery::run(fail_after(secs(10), async {
        nursery(async |n| {
            n.start_soon(async {
                ParkOnce { slot, parked: tx, polled: false }.await;
                woke.set(true);
                Ok::<_, Error>(())
            });
            Ok(())
        })
        .await
        .map_err(Error::from)
    }));
    assert_eq!(r.unwrap(), Some(()));
    assert!(woke.get());
    thread.join().unwrap();
}

/// N tasks doing "record (k, i); checkpoint" K times, under `policy`.
fn lock_step_trace(policy: SchedulePolicy, seed: u64) -> Vec<(u32, u32)> {
    const N: u32 = 6;
    const K: u32 = 8;
    let log = RefCell::new(Vec::new());
    testing::builder().schedule(policy).seed(seed).run(async {
        nursery(async |n| {
            for i in 0..N {
                let log = &log;
                n.start_soon(async move {
                    for k in 0..K {
                        log.borrow_mut().push((k, i));
                        checkpoint().await?;
                    }
                    Ok::<_, Cancelled>(())
                });
            }
            Ok(())
        })
        .await
        .unwrap();
    });
    let log = log.into_inner();
    assert_eq!(log.len(), (N * K) as usize);
    log
}

#[test]
fn tasks_advance_in_lock_step_s1_5_s1_7() {
    for policy in [SchedulePolicy::Fifo, SchedulePolicy::RandomReverse, SchedulePolicy::Shuffle] {
        for seed in 0..4 {
            let log = lock_step_trace(policy, seed);
            // In iteration k every task records k before any records k + 1.
            assert!(log.windows(2).all(|w| w[0].0 <= w[1].0), "{policy:?}, seed {seed}: {log:?}");
            for chunk in log.chunks(6) {
                let mut ids: Vec<u32> = chunk.iter().map(|&(_, i)| i).collect();
                ids.sort_unstable();
                assert_eq!(ids, (0..6).collect::<Vec<_>>(), "{policy:?}, seed {seed}: {log:?}");
            }
        }
    }
}

/// A workload with seeded random sleeps and checkpoints; the trace is the order of the records.
fn random_workload_trace(seed: u64) -> Vec<(u32, u32, u64)> {
    let log = RefCell::new(Vec::new());
    testing::builder().schedule(SchedulePolicy::Shuffle).seed(seed).run(async {
        nursery(async |n| {
            for id in 0..8u32 {
                let log = &log;
                n.start_soon(async move {
                    // The workload itself is fixed: only the scheduler's seed varies.
                    let mut x = 0x9e37_79b9_u64.wrapping_mul(u64::from(id) + 1);
                    for step in 0..6 {
                        x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                        match (x >> 33) % 4 {
                            0 => checkpoint().await?,
                            k => sleep(Duration::from_millis(k)).await?,
                        }
                        log.borrow_mut().push((id, step, now().since_origin().as_millis() as u64));
                    }
                    Ok::<_, Cancelled>(())
                });
            }
            Ok(())
        })
        .await
        .unwrap();
    });
    log.into_inner()
}

#[test]
fn same_seed_same_trace_different_seeds_differ() {
    let a = random_workload_trace(17);
    let b = random_workload_trace(17);
    assert_eq!(a.len(), 48);
    assert_eq!(a, b, "the same seed must give the same trace");
    let traces: Vec<_> = (0..8).map(random_workload_trace).collect();
    for (seed, t) in traces.iter().enumerate() {
        assert_eq!(*t, random_workload_trace(seed as u64), "seed {seed} is not reproducible");
        // The virtual times are the workload's, whatever the order.
        let mut sorted = t.clone();
        sorted.sort_unstable();
        let mut reference = a.clone();
        reference.sort_unstable();
        assert_eq!(sorted, reference, "seed {seed} changed what happened, not just the order");
    }
    let distinct: std::collections::HashSet<_> = traces.iter().collect();
    assert!(distinct.len() >= 2, "eight seeds gave one single order");
}

#[test]
fn random_reverse_runs_each_batch_in_order_or_reversed_and_a_seed_replays_it_s1_6() {
    let (mut forward, mut reversed) = (0, 0);
    for seed in 0..4 {
        let log = lock_step_trace(SchedulePolicy::RandomReverse, seed);
        assert_eq!(log, lock_step_trace(SchedulePolicy::RandomReverse, seed), "seed {seed} did not replay");
        for batch in log.chunks(6) {
            let ids: Vec<u32> = batch.iter().map(|&(_, i)| i).collect();
            if ids == [0, 1, 2, 3, 4, 5] {
                forward += 1;
            } else if ids == [5, 4, 3, 2, 1, 0] {
                reversed += 1;
            } else {
                panic!("seed {seed}: a batch neither in order nor reversed: {ids:?}");
            }
        }
    }
    // Neither order is a guarantee: both happen.
    assert!(forward > 0 && reversed > 0, "{forward} forward, {reversed} reversed");
}

#[test]
fn a_task_woken_during_a_batch_runs_in_the_next_one_s1_5() {
    let woke_in = Cell::new(0);
    testing::builder().schedule(SchedulePolicy::Fifo).run(async {
        let pass = Cell::new(0);
        let event = hatchery::Event::new();
        let done = Cell::new(false);
        nursery(async |n| {
            // First in every batch: counts the passes.
            n.start_soon(async {
                while !done.get() {
                    pass.set(pass.get() + 1);
                    checkpoint().await?;
                }
                Ok::<_, Cancelled>(())
            });
            // Parked on the event in pass 1.
            n.start_soon(async {
                event.wait().await?;
                woke_in.set(pass.get());
                done.set(true);
                Ok(())
            });
            // Sets the event in pass 2, after the waiter's turn in that batch.
            n.start_soon(async {
                checkpoint().await?;
                assert_eq!(pass.get(), 2);
                event.set();
                Ok(())
            });
            Ok(())
        })
        .await
        .unwrap();
    });
    assert_eq!(woke_in.get(), 3, "the woken task ran in the batch that woke it");
}

#[test]
fn fifo_runs_a_batch_in_spawn_order() {
    let log = RefCell::new(Vec::new());
    testing::builder().schedule(SchedulePolicy::Fifo).run(async {
        nursery(async |n| {
            for i in 0..10 {
                let log = &log;
                n.start_soon(async move {
                    log.borrow_mut().push(i);
                    checkpoint().await?;
                    log.borrow_mut().push(100 + i);
                    Ok::<_, Cancelled>(())
                });
            }
            Ok(())
        })
        .await
        .unwrap();
    });
    let expected: Vec<i32> = (0..10).chain(100..110).collect();
    assert_eq!(log.into_inner(), expected);
}

#[test]
fn a_waker_used_after_its_run_finished_is_harmless() {
    let (w1, w2) = testing::run(async {
        std::future::poll_fn(|cx| Poll::Ready((cx.waker().clone(), cx.waker().clone()))).await
    });
    std::thread::spawn(move || w1.wake()).join().unwrap();
    w2.wake_by_ref();
    // A new run on this thread is not disturbed by the stale wake-ups.
    assert_eq!(testing::run(async { sleep(secs(1)).await.map(|()| now()) }), Ok(at(1)));
    w2.wake();
}

#[test]
fn callbacks_accepted_just_before_the_end_still_run_s1_10() {
    // Trio runs what `run_sync_soon` accepted before the run ended; only later calls get
    // `RunFinished`.
    let (tx, rx) = mpsc::channel();
    hatchery::run(async {
        let h = lowlevel::run_handle();
        std::thread::spawn(move || h.run_sync_soon(move || tx.send(1).unwrap()).map_err(|_| ()).unwrap())
            .join()
            .unwrap();
    });
    assert_eq!(rx.try_recv(), Ok(1));
}

#[test]
fn a_quiescence_wait_carried_into_a_later_run_does_not_take_another_waiters_place() {
    // Waiter ids are per run: a wait registered in one run and polled in the next must not
    // be taken for the new run's waiter with the same id (whose wake-up it would steal).
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut stale = Box::pin(testing::wait_all_tasks_blocked());
        #[expect(clippy::async_yields_async, reason = "the wait is carried into the next run")]
        let mut stale = testing::run(async move {
            let polled = std::future::poll_fn(|cx| std::task::Poll::Ready(stale.as_mut().poll(cx))).await;
            assert!(polled.is_pending());
            stale
        });
        testing::run(async move {
            hatchery::nursery(async |n| {
                n.start_soon(async { testing::wait_all_tasks_blocked().await });
                n.start_soon(async {
                    lowlevel::checkpoint().await?;
                    let polled =
                        std::future::poll_fn(|cx| std::task::Poll::Ready(stale.as_mut().poll(cx))).await;
                    assert!(polled.is_pending());
                    drop(stale);
                    Ok(())
                });
                Ok::<_, Cancelled>(())
            })
            .await
            .unwrap();
        });
        tx.send(()).unwrap();
    });
    rx.recv_timeout(Duration::from_secs(30)).expect("the second run hung");
}

// ---------------------------------------------------------------------------------------------
// Deadlock detection (`Builder::stuck_after`)

/// Runs `f` expecting the run to report itself stuck; returns the report.
fn stuck_report(f: impl FnOnce()) -> String {
    let report = panic_text(&*catch_unwind(AssertUnwindSafe(f)).expect_err("the run was reported stuck"));
    assert!(report.starts_with("hatchery: the run is stuck: for 0ns of real time"), "{report}");
    // The thread is clean afterwards: another run works.
    assert_eq!(hatchery::run(async { 7 }), 7);
    report
}

#[test]
fn a_deadlock_is_reported_with_the_task_tree_instead_of_hanging() {
    let line = line!() + 7; // the two `start_soon` calls below
    let report = stuck_report(|| {
        testing::builder().track_tasks(true).stuck_after(Some(Duration::ZERO)).run(async {
            let (a_tx, a_rx) = hatchery::channel::<u32>(0);
            let (b_tx, b_rx) = hatchery::channel::<u32>(0);
            // Each waits for the other to send first.
            let _ = nursery(async |n| {
                n.start_soon(async move { b_tx.send(a_rx.recv().await?).await.map_err(Error::from) });
                n.start_soon(async move { a_tx.send(b_rx.recv().await?).await.map_err(Error::from) });
                Ok::<_, Error>(())
            })
            .await;
        })
    });
    assert!(report.contains("0 I/O source(s) open"), "{report}");
    assert!(report.contains("task tree at 0.000s: 4 tasks, 1 nursery"), "{report}");
    for l in [line, line + 1] {
        let child = format!("spawned at tests/run.rs:{l}:19: waiting on a channel receive");
        assert!(report.contains(&child), "{child:?} in {report}");
    }
}

#[test]
fn a_run_waiting_on_io_is_reported_with_its_open_sources() {
    let report = stuck_report(|| {
        testing::builder().track_tasks(true).stuck_after(Some(Duration::ZERO)).run(async {
            let listener = hatchery::net::TcpListener::bind(([127, 0, 0, 1], 0)).unwrap();
            let _ = listener.accept().await; // nobody connects
        })
    });
    assert!(report.contains("1 I/O source(s) open"), "{report}");
    assert!(report.contains("readable"), "{report}");
}

#[test]
fn without_tracking_the_report_says_how_to_see_the_tree() {
    let report = stuck_report(|| {
        Builder::new()
            .clock(MockClock::with_autojump(Duration::ZERO))
            .track_tasks(false)
            .stuck_after(Some(Duration::ZERO))
            .run(async {
                let (_tx, rx) = hatchery::channel::<u32>(1);
                let _ = rx.recv().await;
            })
    });
    assert!(report.contains("`Builder::track_tasks(true)` would list every task"), "{report}");
}

#[test]
fn a_deadline_the_clock_reaches_is_not_stuck_but_one_it_never_reaches_is() {
    // Autojump reaches the sleeper's deadline: the receiver gets its value at exactly 1 h.
    let got = testing::builder().stuck_after(Some(Duration::ZERO)).run(async {
        let (tx, rx) = hatchery::channel::<u32>(0);
        nursery(async |n| {
            n.start_soon(async move {
                sleep(secs(3600)).await?;
                tx.send(5).await.map_err(Error::from)
            });
            let v = rx.recv().await?;
            assert_eq!(now(), at(3600));
            Ok::<_, Error>(v)
        })
        .await
    });
    assert_eq!(got.unwrap(), Some(5));
    // A virtual clock without autojump never gets there on its own.
    let report = stuck_report(|| {
        let _ = Builder::new()
            .clock(MockClock::new())
            .track_tasks(true)
            .stuck_after(Some(Duration::ZERO))
            .run(sleep(secs(1)));
    });
    assert!(report.contains("sleep until 1.000s"), "{report}");
}

#[test]
fn wakes_from_another_thread_are_progress() {
    // The root parks 3,000 times; each time a std thread wakes it. Each wait lasts a thread
    // hand-off, together far more than the 100 ms limit, which must count from the last wake.
    const WAKES: u32 = 3000;
    let slot: Arc<Mutex<Option<Waker>>> = Arc::new(Mutex::new(None));
    let (tx, rx) = mpsc::channel::<()>();
    let waker_slot = slot.clone();
    let thread = std::thread::spawn(move || {
        while rx.recv().is_ok() {
            if let Some(w) = waker_slot.lock().unwrap().take() {
                w.wake();
            }
        }
    });
    let mut parked = 0;
    let polls =
        testing::builder().stuck_after(Some(Duration::from_millis(100))).run(std::future::poll_fn(|cx| {
            if parked == WAKES {
                return Poll::Ready(parked);
            }
            parked += 1;
            *slot.lock().unwrap() = Some(cx.waker().clone());
            tx.send(()).unwrap();
            Poll::Pending
        }));
    assert_eq!(polls, WAKES);
    drop(tx);
    thread.join().unwrap();
}

#[test]
fn io_that_wakes_a_task_is_progress() {
    // A std thread echoes bytes over a socket pair, one at a time: each wait lasts a thread
    // hand-off (tens of microseconds), and thousands of them add up to more than the limit,
    // which must count from the last progress, not from the first wait.
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let echo = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let mut theirs = theirs;
        let mut b = [0u8];
        while theirs.read(&mut b).unwrap() == 1 {
            theirs.write_all(&b).unwrap();
        }
    });
    const ROUND_TRIPS: u32 = 6000;
    let real = std::time::Instant::now();
    // An unbounded yield budget: the task never yields on its own, so only the I/O that wakes
    // it marks progress.
    let builder = testing::builder().yield_budget(u32::MAX).stuck_after(Some(Duration::from_millis(200)));
    let echoed = builder.run(async {
        let ours = hatchery::net::UnixStream::from_std(ours).unwrap();
        let mut b = [0u8];
        for i in 0..ROUND_TRIPS {
            ours.write_all(&[i as u8]).await.unwrap();
            assert_eq!(ours.read(&mut b).await.unwrap(), 1);
            assert_eq!(b[0], i as u8);
        }
        ROUND_TRIPS
    });
    assert_eq!(echoed, ROUND_TRIPS);
    echo.join().unwrap();
    println!("{ROUND_TRIPS} round trips with a std thread in {:?}", real.elapsed());
}

#[test]
fn a_running_thread_job_is_not_stuck() {
    // The job computes for longer than the zero limit: the run waits for it, not stuck.
    let sum = testing::builder().stuck_after(Some(Duration::ZERO)).run(async {
        hatchery::to_thread(|| (0..20_000_000u64).map(std::hint::black_box).sum::<u64>()).await
    });
    assert_eq!(sum.unwrap(), 20_000_000 * 19_999_999 / 2);
}
