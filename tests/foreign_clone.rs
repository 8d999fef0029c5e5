//! A foreign waker whose `clone` does something: releases the very resource being acquired;
//! one whose destructor completes a channel operation just before it is cancelled; and one
//! whose destructor panics while the resource is being handed over.
//!
//! A primitive that finds its resource busy clones the poll's waker to park. For a waker of
//! another crate that clone is foreign code, and nothing stops it from releasing the mutex (or
//! the semaphore's unit, or setting the event) the task is about to wait for. The waiter must then
//! not queue behind nobody: it looks at the resource again before it parks.
//!
//! `std::task::Wake` cannot run code on clone, so this file builds its waker from a
//! `RawWakerVTable`: the one place in the test suite with `unsafe` code.

#![allow(unsafe_code)]

use std::cell::RefCell;
use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::task::{Context, Poll, RawWaker, RawWakerVTable, Waker};

use hatchery::{Condition, Event, Mutex, Semaphore};

thread_local! {
    /// What each clone of a hooked waker runs, until it returns `true` (it acted).
    static ON_CLONE: RefCell<Option<Box<dyn FnMut() -> bool>>> = const { RefCell::new(None) };
    /// What the next drop of a hooked waker runs (once).
    static ON_DROP: RefCell<Option<Box<dyn FnOnce()>>> = const { RefCell::new(None) };
    /// Whether the next drop of a hooked waker (a clone) panics.
    static PANIC_ON_DROP: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// Whether the next wake of a hooked waker panics (after passing the wake on).
    static PANIC_ON_WAKE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A waker that forwards its wakes to the `Waker` it boxes, and runs `ON_CLONE` when cloned.
fn hooked(inner: &Waker) -> Waker {
    let data = Box::into_raw(Box::new(inner.clone())).cast::<()>();
    // SAFETY: `data` is a `Box<Waker>` from `Box::into_raw`, which is what every function of
    // `VTABLE` expects; each clone owns its own box, and `wake`/`drop` free exactly that box.
    unsafe { Waker::new(data, &VTABLE) }
}

static VTABLE: RawWakerVTable =
    RawWakerVTable::new(clone_hooked, wake_hooked, wake_by_ref_hooked, drop_hooked);

unsafe fn clone_hooked(data: *const ()) -> RawWaker {
    if let Some(mut hook) = ON_CLONE.with(|h| h.borrow_mut().take())
        && !hook()
    {
        ON_CLONE.with(|h| *h.borrow_mut() = Some(hook));
    }
    // SAFETY: `data` points to a live `Box<Waker>` (see `hooked`).
    let inner = unsafe { &*data.cast::<Waker>() };
    RawWaker::new(Box::into_raw(Box::new(inner.clone())).cast::<()>(), &VTABLE)
}

unsafe fn wake_hooked(data: *const ()) {
    // SAFETY: `data` is this waker's own box; `wake` consumes the waker, so the box goes too.
    let inner = unsafe { Box::from_raw(data.cast_mut().cast::<Waker>()) };
    inner.wake();
    if PANIC_ON_WAKE.with(|p| p.replace(false)) {
        panic!("a foreign waker's wake panics (expected by this test)");
    }
}

unsafe fn wake_by_ref_hooked(data: *const ()) {
    // SAFETY: `data` points to a live `Box<Waker>`.
    unsafe { &*data.cast::<Waker>() }.wake_by_ref();
    if PANIC_ON_WAKE.with(|p| p.replace(false)) {
        panic!("a foreign waker's wake panics (expected by this test)");
    }
}

unsafe fn drop_hooked(data: *const ()) {
    // SAFETY: `data` is this waker's own box, dropped once, with the waker.
    drop(unsafe { Box::from_raw(data.cast_mut().cast::<Waker>()) });
    if let Some(hook) = ON_DROP.with(|h| h.borrow_mut().take()) {
        hook();
    }
    if PANIC_ON_DROP.with(|p| p.replace(false)) {
        panic!("a foreign waker's destructor panics (expected by this test)");
    }
}

/// Polls `fut` once with a hooked waker that runs `on_clone` whenever the future clones it, until
/// that returns `true`; then, if the future is pending, once more the same way: the result of the
/// last poll, and how many polls there were.
async fn poll_hooked<F: Future>(fut: F, on_clone: impl FnMut() -> bool + 'static) -> (Poll<F::Output>, u32) {
    ON_CLONE.with(|h| *h.borrow_mut() = Some(Box::new(on_clone)));
    let mut fut = pin!(fut);
    let mut polls = 0;
    let r = poll_fn(|cx| {
        let waker = hooked(cx.waker());
        let mut hcx = Context::from_waker(&waker);
        let mut r = Poll::Pending;
        while r.is_pending() && polls < 2 {
            polls += 1;
            r = fut.as_mut().poll(&mut hcx);
        }
        Poll::Ready(r)
    })
    .await;
    assert!(ON_CLONE.with(|h| h.borrow_mut().take().is_none()), "the hook never acted");
    (r, polls)
}

#[test]
fn a_lock_whose_waker_clone_unlocks_the_mutex_takes_it_instead_of_waiting() {
    hatchery::testing::run(async {
        let mutex: &'static Mutex<u32> = Box::leak(Box::new(Mutex::new(7)));
        let held = mutex.lock().await.unwrap();
        let mut held = Some(held);
        let (r, _) = poll_hooked(mutex.lock(), move || held.take().is_some()).await;
        let Poll::Ready(Ok(guard)) = r else { panic!("the lock waits behind nobody") };
        assert_eq!(*guard, 7);
        assert_eq!(mutex.statistics().tasks_waiting, 0);
        drop(guard);
        assert!(!mutex.is_locked());
        // Nothing was left behind: the next lock is immediate.
        assert!(mutex.try_lock().is_ok());
    });
}

#[test]
fn an_acquire_whose_waker_clone_releases_a_unit_takes_it() {
    hatchery::testing::run(async {
        let sem: &'static Semaphore = Box::leak(Box::new(Semaphore::new(1)));
        let permit = sem.acquire().await.unwrap();
        let mut permit = Some(permit);
        let (r, _) = poll_hooked(sem.acquire(), move || permit.take().is_some()).await;
        let Poll::Ready(Ok(permit)) = r else { panic!("the acquire waits behind nobody") };
        assert_eq!((sem.value(), sem.statistics().tasks_waiting), (0, 0));
        drop(permit);
        assert_eq!(sem.value(), 1);
    });
}

#[test]
fn a_wait_whose_waker_clone_sets_the_event_returns() {
    hatchery::testing::run(async {
        let event: &'static Event = Box::leak(Box::new(Event::new()));
        let (r, _) = poll_hooked(event.wait(), || {
            event.set();
            true
        })
        .await;
        assert!(matches!(r, Poll::Ready(Ok(()))), "the wait missed the set");
        assert_eq!(event.statistics().tasks_waiting, 0);
    });
}

#[test]
fn a_condition_wait_cancelled_then_relocking_through_a_clone_that_unlocks_takes_the_lock() {
    use hatchery::CancelScope;
    hatchery::testing::run(async {
        let mutex: &'static Mutex<u32> = Box::leak(Box::new(Mutex::new(3)));
        let cond: &'static Condition = Box::leak(Box::new(Condition::new()));
        let scope = CancelScope::new();
        let handle = scope.handle();
        let r = scope
            .run(async {
                let guard = mutex.lock().await.unwrap();
                let mut wait = pin!(cond.wait(guard));
                // Parked in the condition (the mutex is free now); another task takes the
                // mutex, and then the wait is cancelled: it must take the mutex back.
                let first = poll_fn(|cx| Poll::Ready(wait.as_mut().poll(cx))).await;
                assert!(first.is_pending());
                let other = mutex.try_lock().unwrap();
                handle.cancel();
                // The first clone refreshes the wait's wake-up in the condition (inside the
                // condition's borrow, so the hook must not touch it then); the second is the one
                // made to queue for the mutex again, after the wait left the condition.
                let mut other = Some(other);
                let mut clones = 0;
                let (r, polls) = poll_hooked(wait.as_mut(), move || {
                    clones += 1;
                    clones == 2 && other.take().is_some()
                })
                .await;
                assert_eq!(polls, 1, "the relock did not wait");
                match r {
                    Poll::Ready(Err(hatchery::sync::WaitError::Cancelled { guard, .. })) => {
                        Ok::<_, hatchery::Cancelled>(*guard)
                    }
                    _ => panic!("the cancelled wait did not relock"),
                }
            })
            .await;
        assert_eq!(r.unwrap(), Some(3));
        assert!(!mutex.is_locked());
        assert_eq!(mutex.statistics().tasks_waiting, 0);
    });
}

/// Polls `fut` once through a hooked waker, so that it parks keeping clones of it.
async fn park_through_hooked<F: Future + Unpin>(fut: &mut F) {
    poll_fn(|cx| {
        let waker = hooked(cx.waker());
        assert!(Pin::new(&mut *fut).poll(&mut Context::from_waker(&waker)).is_pending());
        Poll::Ready(())
    })
    .await;
}

/// Polls the parked `fut` once more through a hooked waker whose next drop panics (the poll
/// lets go of the registration's clone): whether that poll panicked, the panic message unprinted.
async fn repoll_with_panicking_drop<F: Future + Unpin>(fut: &mut F) -> bool {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let panicked = poll_fn(|cx| {
        let waker = hooked(cx.waker());
        PANIC_ON_DROP.with(|p| p.set(true));
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            Pin::new(&mut *fut).poll(&mut Context::from_waker(&waker)).is_ready()
        }));
        PANIC_ON_DROP.with(|p| p.set(false));
        Poll::Ready(r.is_err())
    })
    .await;
    std::panic::set_hook(hook);
    panicked
}

#[test]
fn a_waker_destructor_that_panics_as_the_lock_is_handed_over_does_not_strand_the_mutex() {
    hatchery::testing::run(async {
        let mutex = Mutex::new(1);
        let guard = mutex.lock().await.unwrap();
        let mut lock = Box::pin(mutex.lock());
        // Parks through the foreign waker: the lot and the cancel registration keep clones.
        park_through_hooked(&mut lock).await;
        drop(guard); // handed to the parked lock
        // The poll that takes the grant lets go of the registration's clone, which panics.
        let panicked = repoll_with_panicking_drop(&mut lock).await;
        assert!(panicked, "the destructor did not panic where this test expects");
        drop(lock); // the future that panicked goes, as its task would
        assert!(!mutex.is_locked(), "the granted lock went with the panic");
        assert_eq!(*mutex.try_lock().unwrap(), 1);
    });
}

/// Polls `fut` once through a hooked waker (it parks, keeping clones of it), then arms
/// `on_drop` and polls it again with the task's own waker: the channel lets go of the hooked
/// clone it kept, and its destructor runs `on_drop` before the future looks at cancellation.
async fn park_foreign_then_repoll<F: Future + Unpin>(
    mut fut: F,
    on_drop: impl FnOnce() + 'static,
) -> Poll<F::Output> {
    park_through_hooked(&mut fut).await;
    ON_DROP.with(|h| *h.borrow_mut() = Some(Box::new(on_drop)));
    let r = poll_fn(|cx| Poll::Ready(Pin::new(&mut fut).poll(cx))).await;
    assert!(ON_DROP.with(|h| h.borrow_mut().take().is_none()), "the hook never ran");
    r
}

#[test]
fn a_receive_completed_by_a_waker_destructor_just_before_its_cancellation_returns_the_value() {
    use hatchery::{CancelScope, channel};
    hatchery::testing::run(async {
        let (tx, rx) = channel::<u32>(1);
        let tx: &'static _ = Box::leak(Box::new(tx));
        let scope = CancelScope::new();
        let handle = scope.handle();
        let r = scope
            .run(async {
                let r = park_foreign_then_repoll(Box::pin(rx.recv()), move || {
                    handle.cancel();
                    tx.try_send(5).unwrap(); // handed to the parked receive
                })
                .await;
                Ok::<_, hatchery::Cancelled>(r)
            })
            .await;
        // The value was handed over before the cancellation was seen: it is returned, not lost
        // (and not a "missing slot" internal error).
        assert!(matches!(r, Ok(Some(Poll::Ready(Ok(5))))), "{r:?}");
        assert_eq!(rx.statistics().tasks_waiting_recv, 0);
        assert!(rx.try_recv().is_err(), "nothing else is in the channel");
    });
}

#[test]
fn a_send_completed_by_a_waker_destructor_just_before_its_cancellation_reports_it_delivered() {
    use hatchery::{CancelScope, channel};
    hatchery::testing::run(async {
        let (tx, rx) = channel::<u32>(0);
        let rx: &'static _ = Box::leak(Box::new(rx));
        let got = std::rc::Rc::new(std::cell::Cell::new(None));
        let scope = CancelScope::new();
        let handle = scope.handle();
        let seen = got.clone();
        let r = scope
            .run(async {
                let r = park_foreign_then_repoll(Box::pin(tx.send(7)), move || {
                    handle.cancel();
                    seen.set(rx.try_recv().ok()); // takes the parked send's value
                })
                .await;
                Ok::<_, hatchery::Cancelled>(r)
            })
            .await;
        assert_eq!(got.get(), Some(7));
        // Delivered, so the send reports success (a cancelled send would hand 7 back as well:
        // a duplicate).
        assert!(matches!(r, Ok(Some(Poll::Ready(Ok(()))))), "{r:?}");
        assert_eq!(tx.statistics().tasks_waiting_send, 0);
    });
}

#[test]
fn a_waker_destructor_that_panics_as_a_received_value_is_handed_out_does_not_lose_it() {
    use hatchery::channel;
    hatchery::testing::run(async {
        let (tx, rx) = channel::<u32>(1);
        let mut recv = Box::pin(rx.recv());
        // Parks through the foreign waker: the cancel registration keeps a clone.
        park_through_hooked(&mut recv).await;
        tx.try_send(9).unwrap(); // handed to the parked receive
        // The poll that takes the value lets go of the registration's clone, which panics.
        let panicked = repoll_with_panicking_drop(&mut recv).await;
        assert!(panicked, "the destructor did not panic where this test expects");
        drop(recv); // the future that panicked goes, as its task would
        assert_eq!(rx.try_recv(), Ok(9), "the value went down with the panic");
        assert!(rx.try_recv().is_err());
    });
}

#[test]
fn a_sender_waker_that_panics_when_a_fast_receive_wakes_it_does_not_lose_the_value() {
    use hatchery::channel;
    hatchery::testing::run(async {
        let (tx, rx) = channel::<u32>(0);
        let mut send = Box::pin(tx.send(7));
        // The send parks through the foreign waker: the channel keeps a clone to wake.
        park_through_hooked(&mut send).await;
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        PANIC_ON_WAKE.with(|p| p.set(true));
        // The receive takes 7 at once and wakes the sender, whose waker panics.
        let mut recv = Box::pin(rx.recv());
        let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let waker = Waker::noop();
            recv.as_mut().poll(&mut Context::from_waker(waker)).is_ready()
        }));
        PANIC_ON_WAKE.with(|p| p.set(false));
        std::panic::set_hook(hook);
        let payload = polled.expect_err("the wake did not panic where this test expects");
        assert_eq!(
            payload.downcast_ref::<&str>(),
            Some(&"a foreign waker's wake panics (expected by this test)")
        );
        drop(recv);
        assert_eq!(rx.try_recv(), Ok(7), "the value went down with the panic");
        // Its count is right too: with every sender gone, the channel ends.
        drop(send);
        drop(tx);
        assert_eq!(rx.try_recv(), Err(hatchery::TryRecvError::EndOfChannel));
    });
}

/// Runs `f` with panic messages silenced: whether it panicked.
fn panics_quietly(f: impl FnOnce()) -> bool {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    std::panic::set_hook(hook);
    r.is_err()
}

#[test]
fn a_waker_that_panics_when_an_event_is_set_does_not_keep_the_other_waiters_waiting() {
    hatchery::testing::run(async {
        let event = Event::new();
        // The first waiter parks through the foreign waker, the second with the task's own.
        let mut first = Box::pin(event.wait());
        park_through_hooked(&mut first).await;
        let mut second = Box::pin(event.wait());
        assert!(support_poll(&mut second).await.is_pending());
        assert_eq!(event.statistics().tasks_waiting, 2);
        PANIC_ON_WAKE.with(|p| p.set(true));
        assert!(panics_quietly(|| event.set()), "the first waiter's wake did not panic");
        PANIC_ON_WAKE.with(|p| p.set(false));
        // Both were released: the second one is not left waiting on a set event.
        assert_eq!(event.statistics().tasks_waiting, 0);
        assert!(matches!(support_poll(&mut second).await, Poll::Ready(Ok(()))));
        assert!(matches!(support_poll(&mut first).await, Poll::Ready(Ok(()))));
    });
}

#[test]
fn a_waker_that_panics_when_tokens_free_up_does_not_keep_the_other_borrowers_waiting() {
    use hatchery::CapacityLimiter;
    hatchery::testing::run(async {
        let limiter = CapacityLimiter::new(1);
        let held = limiter.acquire().await.unwrap();
        let mut first = Box::pin(limiter.acquire());
        park_through_hooked(&mut first).await;
        let mut second = Box::pin(limiter.acquire());
        assert!(support_poll(&mut second).await.is_pending());
        PANIC_ON_WAKE.with(|p| p.set(true));
        assert!(panics_quietly(|| limiter.set_total_tokens(3)), "the first waiter's wake did not panic");
        PANIC_ON_WAKE.with(|p| p.set(false));
        let s = limiter.statistics();
        assert_eq!((s.borrowed_tokens, s.tasks_waiting), (3, 0), "both waiters were granted a token");
        let Poll::Ready(Ok(a)) = support_poll(&mut first).await else { panic!("first not granted") };
        let Poll::Ready(Ok(b)) = support_poll(&mut second).await else { panic!("second not granted") };
        drop((a, b, held));
        assert_eq!(limiter.statistics().borrowed_tokens, 0);
    });
}

#[test]
fn a_cancelled_lock_whose_waker_destructor_panics_as_it_leaves_the_queue_leaves_it_once() {
    use hatchery::CancelScope;
    hatchery::testing::run(async {
        let mutex = Mutex::new(5);
        let guard = mutex.lock().await.unwrap();
        let scope = CancelScope::new();
        let handle = scope.handle();
        scope
            .run(async {
                let mut lock = Box::pin(mutex.lock());
                assert!(support_poll(&mut lock).await.is_pending());
                handle.cancel();
                // Re-polled through a foreign waker: its clone replaces the task's wake-up in
                // the queue, and leaving the queue drops that clone, which panics.
                assert!(repoll_with_panicking_drop(&mut lock).await, "no panic where expected");
                drop(lock); // must not leave the queue a second time
                Ok::<_, hatchery::Cancelled>(())
            })
            .await
            .unwrap();
        assert_eq!(mutex.statistics().tasks_waiting, 0);
        drop(guard);
        assert_eq!(*mutex.try_lock().unwrap(), 5);
    });
}

#[test]
fn a_cancelled_condition_wait_whose_waker_destructor_panics_as_it_leaves_leaves_once() {
    use hatchery::CancelScope;
    hatchery::testing::run(async {
        let mutex = Mutex::new(6);
        let cond = Condition::new();
        let scope = CancelScope::new();
        let handle = scope.handle();
        scope
            .run(async {
                let mut wait = Box::pin(cond.wait(mutex.lock().await.unwrap()));
                assert!(support_poll(&mut wait).await.is_pending());
                handle.cancel();
                assert!(repoll_with_panicking_drop(&mut wait).await, "no panic where expected");
                drop(wait);
                Ok::<_, hatchery::Cancelled>(())
            })
            .await
            .unwrap();
        assert_eq!(cond.statistics().tasks_waiting, 0);
        assert!(!mutex.is_locked() && !mutex.is_broken());
        assert_eq!(*mutex.try_lock().unwrap(), 6);
    });
}

#[test]
fn a_waker_destructor_that_panics_as_a_condition_wait_relocks_gives_the_lock_back_unbroken() {
    hatchery::testing::run(async {
        let mutex = Mutex::new(8);
        let cond = Condition::new();
        let mut wait = Box::pin(cond.wait(mutex.lock().await.unwrap()));
        // Parked through the foreign waker: the cancel registration keeps a clone of it.
        park_through_hooked(&mut wait).await;
        let guard = mutex.try_lock().unwrap();
        cond.notify(&guard, 1);
        drop(guard); // the lock goes to the moved waiter
        // The poll that relocks lets go of the registration's clone, which panics.
        assert!(repoll_with_panicking_drop(&mut wait).await, "no panic where expected");
        drop(wait);
        // No critical section ran: the lock came back, and the mutex is not broken.
        assert!(!mutex.is_broken(), "a foreign destructor's panic broke the mutex");
        assert!(!mutex.is_locked());
        assert_eq!(*mutex.try_lock().unwrap(), 8);
    });
}

/// Polls `fut` once with the task's own waker.
async fn support_poll<F: Future + Unpin>(fut: &mut F) -> Poll<F::Output> {
    poll_fn(|cx| Poll::Ready(Pin::new(&mut *fut).poll(cx))).await
}

#[test]
fn a_wait_whose_waker_clone_reads_the_effective_deadline_parks() {
    use hatchery::{CancelScope, current_effective_deadline, sleep};
    use std::cell::Cell;
    use std::rc::Rc;
    use std::time::Duration;
    hatchery::testing::run(async {
        let deadline = hatchery::now() + Duration::from_secs(10);
        CancelScope::new()
            .with_deadline(deadline)
            .run(async {
                // The cancellation registration clones the foreign waker; the clone reads the
                // cancel tree (which must not be borrowed by then).
                let seen = Rc::new(Cell::new(None));
                let (r, _) = poll_hooked(sleep(Duration::from_secs(1)), {
                    let seen = seen.clone();
                    move || {
                        seen.set(Some(current_effective_deadline()));
                        true
                    }
                })
                .await;
                assert!(r.is_pending(), "the sleep ended early");
                assert_eq!(seen.get(), Some(Some(deadline)));
                Ok::<_, hatchery::Cancelled>(())
            })
            .await
            .unwrap();
    });
}

#[test]
fn a_waker_that_panics_when_its_scope_is_cancelled_does_not_keep_the_other_waiters_waiting() {
    use hatchery::{CancelScope, sleep};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::task::Wake;
    use std::time::Duration;
    struct Flag(AtomicBool);
    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    hatchery::testing::run(async {
        let scope = CancelScope::new();
        let handle = scope.handle();
        scope
            .run(async {
                // Two waits parked with foreign wakers, each a waiter of the scope: one flags its
                // wake, the other (registered last, so woken first) panics in its wake.
                let flag = Arc::new(Flag(AtomicBool::new(false)));
                let flag_waker = Waker::from(flag.clone());
                let mut flagged = Box::pin(sleep(Duration::from_secs(3600)));
                assert!(flagged.as_mut().poll(&mut Context::from_waker(&flag_waker)).is_pending());
                let mut hooked_sleep = Box::pin(sleep(Duration::from_secs(3600)));
                park_through_hooked(&mut hooked_sleep).await;
                PANIC_ON_WAKE.with(|p| p.set(true));
                assert!(panics_quietly(|| handle.cancel()), "the hooked waiter's wake did not panic");
                PANIC_ON_WAKE.with(|p| p.set(false));
                assert!(flag.0.load(Ordering::SeqCst), "the other waiter was left asleep");
                assert!(matches!(
                    flagged.as_mut().poll(&mut Context::from_waker(&flag_waker)),
                    Poll::Ready(Err(_))
                ));
                assert!(matches!(support_poll(&mut hooked_sleep).await, Poll::Ready(Err(_))));
                Ok::<_, hatchery::Cancelled>(())
            })
            .await
            .unwrap();
    });
}

#[test]
fn a_receive_whose_waker_clone_sends_on_the_channel_takes_the_value() {
    hatchery::testing::run(async {
        let (tx, rx) = hatchery::channel::<u32>(1);
        let (r, polls) = poll_hooked(rx.recv(), move || tx.try_send(5).is_ok()).await;
        assert!(matches!(r, Poll::Ready(Ok(5))), "the receive waits for a value it was sent");
        assert_eq!(polls, 1);
        let s = rx.statistics();
        assert_eq!((s.tasks_waiting_recv, s.buffer_used), (0, 0));
    });
}

#[test]
fn a_send_whose_waker_clone_makes_room_delivers_at_once() {
    hatchery::testing::run(async {
        let (tx, rx) = hatchery::channel::<u32>(1);
        tx.try_send(1).unwrap();
        let rx: &'static _ = Box::leak(Box::new(rx));
        let (r, polls) = poll_hooked(tx.send(2), move || rx.try_recv() == Ok(1)).await;
        assert!(matches!(r, Poll::Ready(Ok(()))), "the send waits for room it was given");
        assert_eq!(polls, 1);
        assert_eq!(rx.try_recv(), Ok(2));
        assert_eq!(rx.statistics().tasks_waiting_send, 0);
    });
}

#[test]
fn a_parked_receive_repolled_through_a_clone_that_sends_returns_the_value() {
    hatchery::testing::run(async {
        let (tx, rx) = hatchery::channel::<u32>(0);
        let mut recv = Box::pin(rx.recv());
        assert!(support_poll(&mut recv).await.is_pending());
        // The next poll's waker is another: bringing the wake-up up to date clones it, and the
        // clone hands the receive a value.
        let (r, polls) = poll_hooked(&mut recv, move || tx.try_send(9).is_ok()).await;
        assert!(matches!(r, Poll::Ready(Ok(9))));
        assert_eq!(polls, 1);
    });
}

#[test]
fn a_waker_destructor_that_panics_as_a_generated_item_is_handed_out_does_not_lose_it() {
    let got = hatchery::testing::run(async {
        hatchery::sync::generate(
            async |y| {
                y.yield_(9).await?;
                y.yield_(10).await?;
                Ok::<_, hatchery::Error>(())
            },
            async |items| {
                let mut recv = Box::pin(items.recv());
                // Asks; the link and the cancel registration keep hooked clones.
                park_through_hooked(&mut recv).await;
                // The producer runs and hands 9 over.
                hatchery::testing::wait_all_tasks_blocked().await?;
                assert!(repoll_with_panicking_drop(&mut recv).await, "no panic where expected");
                drop(recv);
                Ok(items.recv().await?)
            },
        )
        .await
    });
    assert_eq!(got.unwrap(), 9, "the item went down with the panic");
}

#[test]
fn a_receive_whose_waker_clone_panics_leaves_the_producer_woken() {
    let got = hatchery::testing::run(async {
        hatchery::sync::generate(
            async |y| {
                y.yield_(4).await?;
                Ok::<_, hatchery::Error>(())
            },
            async |items| {
                // The producer waits for a request, its wake-up stored in the link.
                hatchery::testing::wait_all_tasks_blocked().await?;
                {
                    let mut recv = Box::pin(items.recv());
                    let panicked = poll_fn(|cx| {
                        let waker = hooked(cx.waker());
                        ON_CLONE.with(|h| {
                            *h.borrow_mut() =
                                Some(Box::new(|| panic!("a foreign waker's clone panics (expected)")))
                        });
                        let r = panics_quietly(|| {
                            let _ = recv.as_mut().poll(&mut Context::from_waker(&waker));
                        });
                        ON_CLONE.with(|h| h.borrow_mut().take());
                        Poll::Ready(r)
                    })
                    .await;
                    assert!(panicked, "the clone did not panic");
                }
                // The request stands, and its producer was woken: the next receive gets the item.
                Ok(items.recv().await?)
            },
        )
        .await
    });
    assert_eq!(got.unwrap(), 4);
}

/// A `to_thread` wait polled with a foreign waker clones it with the job's lock free: a clone
/// that waits for the job's thread to get past `check_cancelled` (which takes that lock) returns.
/// Before, the clone ran under the lock and the two waited for each other until the clone's
/// (real-clock) patience ran out. The thread starts its part only once the clone has begun, so
/// the job cannot finish before the wait's first poll (which then would clone nothing).
#[test]
fn a_thread_wait_whose_waker_clone_waits_for_the_thread_does_not_deadlock() {
    let patience = std::time::Duration::from_secs(20);
    let (cloning_tx, cloning_rx) = std::sync::mpsc::channel::<()>();
    let (checked_tx, checked_rx) = std::sync::mpsc::channel::<()>();
    let got = hatchery::testing::run(async move {
        let mut job = Box::pin(hatchery::to_thread(move || {
            cloning_rx.recv_timeout(patience).expect("the wait never cloned its waker");
            hatchery::thread::check_cancelled().unwrap();
            checked_tx.send(()).unwrap();
            7
        }));
        let (r, _) = poll_hooked(&mut job, move || {
            cloning_tx.send(()).unwrap();
            let seen = checked_rx.recv_timeout(patience);
            assert!(seen.is_ok(), "the thread never got past check_cancelled: the clone holds its lock");
            true
        })
        .await;
        match r {
            Poll::Ready(r) => r.unwrap(),
            Poll::Pending => job.await.unwrap(),
        }
    });
    assert_eq!(got, 7);
}

/// A token released by a destructor during a panic (its holder panicked) wakes a waiter whose
/// waker panics too: the grant is made, the waker's panic is dropped, and the first panic goes
/// on. Before, the waker's panic was resumed during the unwinding, which aborted the process.
#[test]
fn a_waker_that_panics_while_a_panicking_holder_releases_does_not_abort() {
    use hatchery::CapacityLimiter;
    hatchery::testing::run(async {
        let limiter = CapacityLimiter::new(1);
        let held = limiter.acquire().await.unwrap();
        let mut waiter = Box::pin(limiter.acquire());
        park_through_hooked(&mut waiter).await;
        let panicked = panics_quietly(|| {
            let _held = held;
            PANIC_ON_WAKE.with(|p| p.set(true));
            panic!("the holder panics (expected by this test)");
        });
        assert!(panicked);
        assert!(!PANIC_ON_WAKE.with(|p| p.get()), "the waiter's wake ran (and panicked)");
        let Poll::Ready(Ok(token)) = support_poll(&mut waiter).await else {
            panic!("the waiter was not granted")
        };
        drop(token);
        assert_eq!(limiter.statistics().borrowed_tokens, 0);
    });
}

/// A parked lock re-polled through a foreign waker whose clone releases the mutex (so the lock
/// is granted during the clone) and whose unused clone then panics when dropped: the lock is
/// not lost. Before, the clone was dropped before the future recorded the grant, so its `Drop`
/// looked for a ticket already freed, and the mutex stayed locked (or the process aborted).
#[test]
fn a_lock_granted_during_a_repoll_clone_whose_drop_panics_is_given_back() {
    hatchery::testing::run(async {
        let mutex: &'static Mutex<u32> = Box::leak(Box::new(Mutex::new(3)));
        let held = mutex.lock().await.unwrap();
        let mut lock = Box::pin(mutex.lock());
        assert!(support_poll(&mut lock).await.is_pending());
        let mut held = Some(held);
        ON_CLONE.with(|h| *h.borrow_mut() = Some(Box::new(move || held.take().is_some())));
        assert!(repoll_with_panicking_drop(&mut lock).await, "the unused clone's drop did not panic");
        assert!(ON_CLONE.with(|h| h.borrow_mut().take().is_none()), "the clone hook never ran");
        drop(lock);
        assert!(!mutex.is_locked(), "the grant went back with the dropped future");
        assert_eq!(*mutex.try_lock().expect("free, not broken"), 3);
    });
}

/// A parked receive re-polled through a foreign waker whose clone sends it a value, and whose
/// unused clone then panics when dropped: the value goes back to the channel, not down with the
/// panic (before, the clone was dropped with the value already taken out).
#[test]
fn a_receive_completed_during_a_repoll_clone_whose_drop_panics_keeps_the_value() {
    hatchery::testing::run(async {
        let (tx, rx) = hatchery::channel::<u32>(0);
        let mut recv = Box::pin(rx.recv());
        assert!(support_poll(&mut recv).await.is_pending());
        ON_CLONE.with(|h| *h.borrow_mut() = Some(Box::new(move || tx.try_send(9).is_ok())));
        assert!(repoll_with_panicking_drop(&mut recv).await, "the unused clone's drop did not panic");
        assert!(ON_CLONE.with(|h| h.borrow_mut().take().is_none()), "the clone hook never ran");
        drop(recv);
        assert_eq!(rx.try_recv(), Ok(9), "the value is still in the channel");
    });
}

/// Closing a stream whose reader waits through a waker that panics when woken: the writer
/// waiting in the other direction is woken too (with `ClosedResource`), and the peer sees the
/// end of the stream. Before, the panic skipped the writer's wake-up (it slept on) and the
/// shutdown (the peer saw no end until the stream was dropped).
#[test]
fn closing_a_stream_whose_reader_waker_panics_still_wakes_the_writer_and_ends_the_stream() {
    let outcome = hatchery::testing::run(async {
        let (a, b) = hatchery::net::UnixStream::pair().unwrap();
        let big = vec![1u8; 32 << 20];
        hatchery::nursery(async |n| {
            let writer = n.spawn(async { Ok::<_, hatchery::Error>(a.write_all(&big).await) });
            let mut buf = [0u8; 8];
            let mut read = Box::pin(a.read(&mut buf));
            park_through_hooked(&mut read).await;
            hatchery::testing::wait_all_tasks_blocked().await?;
            PANIC_ON_WAKE.with(|p| p.set(true));
            assert!(panics_quietly(|| a.close()), "the reader's wake did not panic");
            PANIC_ON_WAKE.with(|p| p.set(false));
            let e = writer.await?.unwrap_err();
            let closed = e.error.get_ref().is_some_and(|i| i.is::<hatchery::ClosedResource>());
            drop(read);
            // The peer reads what got through, then the end of the stream.
            let mut sink = vec![0u8; 1 << 16];
            let mut total = 0;
            loop {
                match b.read(&mut sink).await? {
                    0 => break,
                    k => total += k,
                }
            }
            Ok::<_, hatchery::Error>((closed, total == e.written))
        })
        .await
    });
    let (closed, all_seen) = outcome.unwrap().unwrap();
    assert!(closed, "the writer failed with ClosedResource");
    assert!(all_seen, "the peer read exactly what the writer reported, then the end");
}

/// Polls `fut` once through a hooked waker, catching a panic of the poll (the message unprinted):
/// whether it panicked.
async fn poll_hooked_catching<F: Future + Unpin>(fut: &mut F) -> bool {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let panicked = poll_fn(|cx| {
        let waker = hooked(cx.waker());
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            Pin::new(&mut *fut).poll(&mut Context::from_waker(&waker)).is_ready()
        }));
        Poll::Ready(r.is_err())
    })
    .await;
    std::panic::set_hook(hook);
    panicked
}

/// A condition wait whose first poll's waker clone panics gives the lock back as usual: the
/// mutex is neither broken (no critical section was cut short) nor left locked. Before, the
/// guard was a bare local when the clone ran, and the unwinding broke the mutex.
#[test]
fn a_condition_wait_whose_first_clone_panics_gives_the_lock_back_unbroken() {
    hatchery::testing::run(async {
        let mutex = Mutex::new(1u32);
        let cond = Condition::new();
        let mut wait = Box::pin(cond.wait(mutex.lock().await.unwrap()));
        ON_CLONE.with(|h| {
            *h.borrow_mut() =
                Some(Box::new(|| panic!("a foreign waker's clone panics (expected by this test)")))
        });
        assert!(poll_hooked_catching(&mut wait).await, "the clone did not panic");
        drop(wait);
        let s = mutex.statistics();
        assert_eq!((s.locked, s.broken), (false, false));
    });
}

/// A cancelled condition wait that takes the (free) lock back while its unused wake-up's
/// destructor panics: the lock goes back, unbroken. Before, the wake-up was dropped after the
/// guard was built into the return value, and the panic leaked it: the mutex stayed locked.
#[test]
fn a_cancelled_condition_wait_whose_wakeup_drop_panics_as_it_relocks_leaves_the_mutex_free() {
    use hatchery::CancelScope;
    hatchery::testing::run(async {
        let mutex: &'static Mutex<u32> = Box::leak(Box::new(Mutex::new(3)));
        let cond: &'static Condition = Box::leak(Box::new(Condition::new()));
        let scope = CancelScope::new();
        let handle = scope.handle();
        let _ = scope
            .run(async {
                let guard = mutex.lock().await.unwrap();
                let mut wait = Box::pin(cond.wait(guard));
                assert!(support_poll(&mut wait).await.is_pending());
                handle.cancel();
                // The first clone refreshes the wait's wake-up in the condition; the second is
                // the re-lock's, not needed since the mutex is free: its drop panics.
                let mut clones = 0;
                ON_CLONE.with(|h| {
                    *h.borrow_mut() = Some(Box::new(move || {
                        clones += 1;
                        if clones == 2 {
                            PANIC_ON_DROP.with(|p| p.set(true));
                        }
                        clones == 2
                    }))
                });
                assert!(poll_hooked_catching(&mut wait).await, "the wake-up's drop did not panic");
                PANIC_ON_DROP.with(|p| p.set(false));
                drop(wait);
                Ok::<_, hatchery::Cancelled>(())
            })
            .await;
        let s = mutex.statistics();
        assert_eq!((s.locked, s.broken, s.tasks_waiting), (false, false, 0));
    });
}

/// A poll-style read parked through a foreign waker whose clone writes to the same stream
/// (poll-style too): the write runs. Before, the read held one cell for both
/// directions' registrations while the waker was cloned, and the write panicked on it.
#[test]
fn a_poll_style_read_whose_waker_clone_writes_to_the_same_stream_does_not_panic() {
    use futures_io::{AsyncRead, AsyncWrite};
    hatchery::testing::run(async {
        let (a, b) = hatchery::net::UnixStream::pair().unwrap();
        let a: &'static hatchery::net::UnixStream = Box::leak(Box::new(a));
        let wrote = std::rc::Rc::new(std::cell::Cell::new(None));
        let seen = wrote.clone();
        ON_CLONE.with(|h| {
            *h.borrow_mut() = Some(Box::new(move || {
                let mut cx = Context::from_waker(Waker::noop());
                let r = Pin::new(&mut &*a).poll_write(&mut cx, b"hi");
                // Written, or waiting for the edge that says the socket is writable: not an
                // error, and not a panic.
                seen.set(Some(matches!(r, Poll::Ready(Ok(2)) | Poll::Pending)));
                true
            }))
        });
        let mut buf = [0u8; 4];
        let read = poll_fn(|cx| Pin::new(&mut &*a).poll_read(cx, &mut buf));
        let mut read = pin!(read);
        park_through_hooked(&mut read).await;
        assert_eq!(wrote.get(), Some(true), "the clone's write ran (and did not fail)");
        drop(b);
    });
}

/// The memory stream likewise: a poll-style read parked through a foreign waker whose clone
/// writes to the same stream. Before, the clone ran under the pair's borrow and the write
/// panicked on it.
#[test]
fn a_memory_stream_read_whose_waker_clone_writes_to_the_stream_does_not_panic() {
    use futures_io::{AsyncRead, AsyncWrite};
    hatchery::testing::run(async {
        let (a, b) = hatchery::testing::memory_stream_pair();
        let a: &'static hatchery::testing::MemoryStream = Box::leak(Box::new(a));
        let wrote = std::rc::Rc::new(std::cell::Cell::new(None));
        let seen = wrote.clone();
        ON_CLONE.with(|h| {
            *h.borrow_mut() = Some(Box::new(move || {
                let mut cx = Context::from_waker(Waker::noop());
                let r = Pin::new(&mut &*a).poll_write(&mut cx, b"hi");
                seen.set(Some(matches!(r, Poll::Ready(Ok(2)))));
                true
            }))
        });
        let mut buf = [0u8; 4];
        let read = poll_fn(|cx| Pin::new(&mut &*a).poll_read(cx, &mut buf));
        let mut read = pin!(read);
        park_through_hooked(&mut read).await;
        assert_eq!(wrote.get(), Some(true), "the clone's write went through");
        let mut got = [0u8; 2];
        assert_eq!(b.read(&mut got).await.unwrap(), 2);
        assert_eq!(&got, b"hi");
    });
}
