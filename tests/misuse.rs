//! Misuse and foreign failures: a panicking waker, a panicking child destructor, a user error
//! type whose `CancelError` method panics, a panic in the main future. Each surfaces as a propagated panic with its own message, and the thread can run
//! again afterwards: nothing corrupts the loop.

mod support;

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::task::{Context, Wake, Waker};

use hatchery::{Cancelled, Error, nursery, sleep, testing};
use support::{DropCounter, secs};

struct PanickyWaker;

impl Wake for PanickyWaker {
    fn wake(self: Arc<Self>) {
        panic!("this waker refuses to wake");
    }
}

#[test]
fn a_panicking_foreign_waker_propagates_out_of_run() {
    let r = catch_unwind(AssertUnwindSafe(|| {
        testing::run(async {
            let mut s = Box::pin(sleep(secs(1)));
            // Register the sleep with a foreign waker that panics when the timer fires.
            let waker = Waker::from(Arc::new(PanickyWaker));
            assert!(s.as_mut().poll(&mut Context::from_waker(&waker)).is_pending());
            sleep(secs(2)).await.unwrap();
            unreachable!("the loop calls the panicking waker at 1 s");
        })
    }));
    let p = r.unwrap_err();
    assert_eq!(p.downcast_ref::<&str>(), Some(&"this waker refuses to wake"));
    // The thread is clean: a new run works.
    assert_eq!(testing::run(async { sleep(secs(1)).await.map(|_| 5) }), Ok(5));
}

#[test]
fn a_panicking_child_destructor_counts_as_the_childs_panic() {
    struct BoomOnDrop(#[allow(dead_code)] support::DropToken);
    impl Drop for BoomOnDrop {
        fn drop(&mut self) {
            panic!("destructor exploded");
        }
    }
    let drops = DropCounter::new();
    let r = catch_unwind(AssertUnwindSafe(|| {
        testing::run(async {
            let _ = nursery(async |n| {
                let guard = BoomOnDrop(drops.token());
                n.start_soon(async move {
                    let _g = guard;
                    sleep(secs(1)).await?;
                    Ok::<_, Cancelled>(())
                });
                Ok(())
            })
            .await;
        })
    }));
    assert_eq!(r.unwrap_err().downcast_ref::<&str>(), Some(&"destructor exploded"));
    assert_eq!(drops.count(), 1);
}

#[test]
fn a_panicking_cancel_error_method_counts_as_the_childs_panic_and_the_child_is_dropped() {
    // A user's error type whose `strip_cancelled` panics: the nursery calls it when a child with
    // a node of its own ends cancelled, to absorb the cancellation.
    #[derive(Debug)]
    struct Strict(Cancelled);
    impl From<Cancelled> for Strict {
        fn from(c: Cancelled) -> Self {
            Strict(c)
        }
    }
    impl hatchery::CancelError for Strict {
        fn cancelled(&self) -> Option<&Cancelled> {
            Some(&self.0)
        }
        fn strip_cancelled(self) -> Option<Self> {
            panic!("strip_cancelled exploded");
        }
    }
    // Keeps its token until it is dropped (an async block drops its locals when it returns).
    struct Holding(
        std::pin::Pin<Box<dyn Future<Output = Result<(), Strict>>>>,
        #[allow(dead_code)] support::DropToken,
    );
    impl Future for Holding {
        type Output = Result<(), Strict>;
        fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> std::task::Poll<Self::Output> {
            self.0.as_mut().poll(cx)
        }
    }
    let drops = DropCounter::new();
    let r = catch_unwind(AssertUnwindSafe(|| {
        testing::run(async {
            let _ = nursery(async |n| {
                let sleeper = Box::pin(async {
                    sleep(secs(10)).await?;
                    Ok::<_, Strict>(())
                });
                let child = n.spawn(Holding(sleeper, drops.token()));
                testing::wait_all_tasks_blocked().await.map_err(Strict)?;
                child.cancel();
                let joined = child.await;
                assert!(matches!(joined, Err(hatchery::JoinError::Failed)), "{joined:?}");
                Ok(())
            })
            .await;
        })
    }));
    assert_eq!(r.unwrap_err().downcast_ref::<&str>(), Some(&"strip_cancelled exploded"));
    assert_eq!(drops.count(), 1, "the child was dropped, not leaked out of its slot");
}

#[test]
fn a_handle_is_told_even_when_the_childs_error_panics_in_cancelled() {
    // The error type's `cancelled` panics when the nursery asks the failed child's error what
    // to tell its handle: the panic is the child's, and the handle still finishes.
    #[derive(Debug)]
    struct Picky;
    impl From<Cancelled> for Picky {
        fn from(_: Cancelled) -> Self {
            Picky
        }
    }
    impl hatchery::CancelError for Picky {
        fn cancelled(&self) -> Option<&Cancelled> {
            panic!("cancelled() exploded");
        }
    }
    let seen = std::cell::Cell::new(None);
    let r = catch_unwind(AssertUnwindSafe(|| {
        testing::run(async {
            let _ = nursery(async |n| {
                let h = n.spawn(async { Err::<(), _>(Picky) });
                // Shielded from the nursery's cancellation, so the panic's cancellation does not
                // end this wait early: only the handle's own word can.
                let r = hatchery::CancelScope::new()
                    .shielded()
                    .run(async {
                        let joined = hatchery::move_on_after(secs(5), h).await;
                        seen.set(Some(matches!(joined, Err(hatchery::JoinError::Failed))));
                        Ok::<_, Cancelled>(())
                    })
                    .await;
                let _ = r;
                Ok::<_, Picky>(())
            })
            .await;
        })
    }));
    assert_eq!(r.unwrap_err().downcast_ref::<&str>(), Some(&"cancelled() exploded"));
    assert_eq!(seen.get(), Some(true), "the handle never heard of its child's end");
}

#[test]
fn a_panic_in_the_main_future_propagates_and_cleans_up() {
    let drops = DropCounter::new();
    let r = catch_unwind(AssertUnwindSafe(|| {
        testing::run(async {
            nursery(async |n| {
                let t = drops.token();
                n.start_soon(async move {
                    let _t = t;
                    sleep(secs(10)).await?;
                    Ok::<_, Error>(())
                });
                sleep(secs(1)).await?;
                panic!("main exploded");
                #[allow(unreachable_code)]
                Ok::<_, Error>(())
            })
            .await
        })
    }));
    assert_eq!(r.unwrap_err().downcast_ref::<&str>(), Some(&"main exploded"));
    assert_eq!(drops.count(), 1, "the sibling was cancelled and dropped before the panic was resumed");
}

/// Panics the first time it is woken only, so that later wakes (a cancellation reaching a
/// registration it holds) do not hide the first panic.
struct PanicsOnceWaker(std::sync::atomic::AtomicBool);

impl Wake for PanicsOnceWaker {
    fn wake(self: Arc<Self>) {
        if !self.0.swap(true, std::sync::atomic::Ordering::Relaxed) {
            panic!("this waker refuses to wake once");
        }
    }
}

/// The run ended with `PanicsOnceWaker`'s own panic (not a complaint of the runtime's), and the
/// thread can run again.
fn assert_the_wakers_panic_and_a_clean_thread(r: std::thread::Result<()>) {
    let p = r.unwrap_err();
    assert_eq!(
        p.downcast_ref::<&str>(),
        Some(&"this waker refuses to wake once"),
        "{:?}",
        p.downcast_ref::<String>()
    );
    assert_eq!(testing::run(async { sleep(secs(1)).await.map(|_| 5) }), Ok(5));
}

#[test]
fn a_handle_waker_that_panics_when_the_child_finishes_surfaces_as_that_panic() {
    // The handle is first polled by a foreign combinator whose waker panics: the child's
    // value is stored, the wake panics, and the nursery reports the child as failed (telling
    // the handle a second time). The panic that leaves the run is the waker's own, not a
    // complaint about the handle.
    let r = catch_unwind(AssertUnwindSafe(|| {
        testing::run(async {
            let _ = nursery(async |n| {
                let mut h = n.spawn(async {
                    sleep(secs(1)).await?;
                    Ok::<u32, Cancelled>(5)
                });
                let waker = Waker::from(Arc::new(PanicsOnceWaker(Default::default())));
                assert!(std::pin::Pin::new(&mut h).poll(&mut Context::from_waker(&waker)).is_pending());
                sleep(secs(2)).await?;
                Ok::<_, Cancelled>(())
            })
            .await;
        })
    }));
    assert_the_wakers_panic_and_a_clean_thread(r);
}

/// A foreign parent waker that panics at the wake-up that follows `start`'s move of its task
/// into the nursery: the slot owns the task's cancel node from the insertion on, so the panic
/// surfaces as the waker's own and the tree stays whole (before, the start's guard exited the
/// node the slot still used: a "stale slab key" internal error, or another node's exit).
#[test]
fn a_parent_waker_that_panics_when_a_started_task_moves_in_surfaces_as_that_panic() {
    let r = catch_unwind(AssertUnwindSafe(|| {
        testing::run(async {
            let mut fut = Box::pin(nursery(async |n| {
                n.start(|s: hatchery::TaskStatus<()>| async move {
                    s.started(());
                    sleep(secs(1)).await?;
                    Ok::<_, Error>(())
                })
                .await?;
                sleep(secs(5)).await?;
                Ok::<_, Error>(())
            }));
            let waker = Waker::from(Arc::new(PanicsOnceWaker(Default::default())));
            let _ = fut.as_mut().poll(&mut Context::from_waker(&waker));
            let _ = fut.await;
        })
    }));
    assert_the_wakers_panic_and_a_clean_thread(r);
}
