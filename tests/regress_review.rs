//! Regressions found by the first code review (see the issue note): each test pins one bug that
//! was fixed, with the scenario that showed it.
#![cfg(unix)]

mod support;

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::Duration;

use hatchery::lowlevel::IoSource;
use hatchery::{
    CancelScope, Cancelled, Error, JoinHandle, TaskStatus, move_on_after, now, nursery, sleep, testing,
};
use support::{Log, TestError, at, secs};

/// A child that cancels itself through its own handle, before its first park, is cancelled at its
/// next checkpoint; the node the handle made is not leaked.
#[test]
fn self_cancel_through_own_handle_before_first_park() {
    let (t, nodes_before, nodes_after) = testing::run(async {
        let before = testing::registrations().cancel_nodes;
        let r = nursery(async |n| {
            let me: Rc<RefCell<Option<JoinHandle<'_, ()>>>> = Rc::new(RefCell::new(None));
            let me2 = me.clone();
            let h = n.spawn(async move {
                me2.borrow_mut().take().unwrap().cancel();
                sleep(secs(10)).await?;
                Ok::<_, Cancelled>(())
            });
            *me.borrow_mut() = Some(h);
            Ok::<_, Cancelled>(())
        })
        .await;
        assert_eq!(r.unwrap(), Some(()), "the child's own scope absorbed its cancellation");
        (now(), before, testing::registrations().cancel_nodes)
    });
    assert_eq!(t, at(0));
    assert_eq!(nodes_after, nodes_before);
}

/// The same, when the child's node is created lazily in the very poll that cancels it.
#[test]
fn self_cancel_in_the_poll_that_creates_the_childs_node() {
    let t = testing::run(async {
        nursery(async |n| {
            let me: Rc<RefCell<Option<JoinHandle<'_, ()>>>> = Rc::new(RefCell::new(None));
            let me2 = me.clone();
            let h = n.spawn(async move {
                CancelScope::new()
                    .run(async {
                        me2.borrow_mut().take().unwrap().cancel();
                        sleep(secs(10)).await
                    })
                    .await?;
                Ok::<_, Cancelled>(())
            });
            *me.borrow_mut() = Some(h);
            Ok::<_, Cancelled>(())
        })
        .await
        .unwrap();
        assert_eq!(testing::registrations().cancel_nodes, 1);
        now()
    });
    assert_eq!(t, at(0));
}

/// A quiescence waiter with a real-time cushion, under an autojump clock with a pending deadline,
/// is woken after its cushion (without a jump) instead of spinning forever (S8.4).
#[test]
fn cushion_waiter_under_autojump_wakes_instead_of_spinning() {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let t = testing::run(async {
            nursery(async |n| {
                n.start_soon(async {
                    sleep(secs(5)).await?;
                    Ok(())
                });
                testing::wait_all_tasks_blocked_cushion(Duration::from_millis(1)).await?;
                Ok::<_, Cancelled>(now())
            })
            .await
        });
        let _ = tx.send(t.map_err(|e| e.to_string()));
    });
    // A hang guard, not a timing assertion: the run takes about a millisecond.
    let woke_at = rx.recv_timeout(Duration::from_secs(30)).expect("the run livelocked");
    assert_eq!(woke_at, Ok(Some(at(0))), "woken before the clock jumped");
}

/// A child destructor that panics while the nursery future is dropped does not stop the other
/// children from being dropped, nor leak the nursery's registrations.
#[test]
fn panicking_destructor_during_nursery_drop_leaks_nothing() {
    struct Boom(#[allow(dead_code)] support::DropToken);
    impl Drop for Boom {
        fn drop(&mut self) {
            panic!("boom in drop");
        }
    }
    let drops = support::DropCounter::new();
    testing::run(async {
        let before = testing::registrations();
        {
            let mut fut = Box::pin(nursery(async |n| {
                for _ in 0..3 {
                    let b = Boom(drops.token());
                    n.spawn(async move {
                        let _b = b;
                        sleep(secs(10)).await?;
                        Ok::<_, Cancelled>(())
                    });
                }
                sleep(secs(10)).await?;
                Ok::<_, Cancelled>(())
            }));
            support::poll_twice(fut.as_mut()).await;
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(fut)));
            assert_eq!(r.unwrap_err().downcast_ref::<&str>(), Some(&"boom in drop"));
        }
        assert_eq!(testing::registrations(), before);
        assert_eq!(testing::live_tasks(), 1);
    });
    assert_eq!(drops.count(), 3);
}

/// A service started into `outer` from a task of `inner` belongs to `outer` (ST.1): cancelling
/// `inner` does not reach it, although it opened a nursery before `started`.
#[test]
fn started_service_leaves_the_callers_scopes() {
    let log = Log::new();
    let t = testing::run(async {
        nursery(async |outer| {
            nursery(async |inner| {
                inner.start_soon(async {
                    outer
                        .start(|st: TaskStatus<()>| async {
                            let r = nursery(async move |_svc| {
                                st.started(());
                                sleep(secs(100)).await?;
                                Ok::<_, Error>(())
                            })
                            .await;
                            log.push(format!("service ended at {:?}", now()));
                            r?;
                            Ok::<_, Error>(())
                        })
                        .await?;
                    Ok(())
                });
                sleep(secs(1)).await?;
                inner.cancel_scope().cancel();
                Ok::<_, Error>(())
            })
            .await?;
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
        now()
    });
    assert_eq!(t, at(100));
    assert_eq!(log.take(), [format!("service ended at {:?}", at(100))]);
}

/// The caller's own timeout around `start` does not reach the service once it started, even if
/// the service entered a scope before `started`.
#[test]
fn callers_timeout_does_not_reach_a_started_service() {
    let t = testing::run(async {
        nursery(async |n| {
            let _ = move_on_after(secs(5), async {
                n.start(|st: TaskStatus<()>| async {
                    CancelScope::new()
                        .run(async move {
                            st.started(());
                            sleep(secs(20)).await
                        })
                        .await?;
                    Ok::<_, Error>(())
                })
                .await?;
                CancelScope::new().shielded().run(sleep(secs(10))).await?;
                Ok::<_, Error>(())
            })
            .await;
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
        now()
    });
    assert_eq!(t, at(20));
}

/// An error the task returns after `started`, in the same poll, goes to the nursery; `start`
/// returns the value (Trio: `started` moves the task at once).
#[test]
fn error_right_after_started_goes_to_the_nursery() {
    testing::run(async {
        let r = nursery(async |n| {
            let v = n
                .start(|st: TaskStatus<u8>| async move {
                    st.started(7);
                    Err::<(), _>(TestError::Boom(1))
                })
                .await;
            assert_eq!(v, Ok(7));
            Ok::<_, TestError>(())
        })
        .await;
        assert_eq!(r.unwrap_err().into_errors(), [TestError::Boom(1)]);
    });
}

/// A handle kept from a finished run neither cancels nor re-times scopes of the next run.
#[test]
fn cancel_handle_from_an_earlier_run_does_not_touch_this_run() {
    let h = testing::run(async {
        let s = CancelScope::new();
        let h = s.handle();
        let mut fut = Box::pin(s.run(hatchery::sleep_forever()));
        std::future::poll_fn(|cx| {
            let _ = fut.as_mut().poll(cx);
            std::task::Poll::Ready(())
        })
        .await;
        std::mem::forget(fut);
        h
    });
    let r = testing::run(async {
        CancelScope::new()
            .run(async {
                h.cancel();
                h.set_deadline(now());
                h.set_shield(true);
                h.set_shield(false);
                sleep(secs(1)).await?;
                Ok::<_, Cancelled>("innocent scope finished")
            })
            .await
    });
    assert_eq!(r, Ok(Some("innocent scope finished")));
}

/// After a syscall fails with `WouldBlock`, `clear_readable` makes `readable` wait again.
#[test]
fn readable_waits_again_after_clear_readable() {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    testing::run(async {
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let a = IoSource::new(a).unwrap();
        b.write_all(b"hi").unwrap();
        a.readable().await.unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(a.get_ref().read(&mut buf).unwrap(), 2);
        let e = a.get_ref().read(&mut buf).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock);
        a.clear_readable();
        let r = move_on_after(secs(10), async { a.readable().await.map_err(Error::from) }).await;
        assert!(matches!(r, Ok(None)), "{r:?}");
        assert_eq!(now(), at(10));
    });
}

/// An IoSource registered in a run that has ended reports an error instead of waiting forever.
#[test]
fn io_source_from_an_earlier_run_is_an_error() {
    use std::io::Read;
    use std::os::unix::net::UnixStream;
    let (a, _b) = UnixStream::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    let a = testing::run(async { IoSource::new(a).unwrap() });
    let e = testing::run(async {
        let mut buf = [0u8; 4];
        a.read_with(|s| (&*s).read(&mut buf)).await.unwrap_err()
    });
    assert!(e.to_string().contains("has ended"), "{e}");
}

/// A wait that began in one run and is polled again in a later run fails there with the same
/// error, instead of waiting on the ended run (session 9 review: an operation works with the run
/// its source's registration holds, so every poll checks that it is still the current one).
///
/// The runs happen on a thread of their own, and the test waits for them with a real-clock
/// timeout: should the check regress, the second run would wait forever, and this turns that
/// into a failure instead of a hung test binary.
#[test]
fn a_wait_carried_into_a_later_run_is_an_error() {
    use std::os::unix::net::UnixStream;
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (a, _b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        #[expect(clippy::async_yields_async, reason = "the wait is carried into the next run")]
        let mut wait = testing::run(async move {
            let a: &'static IoSource<UnixStream> = Box::leak(Box::new(IoSource::new(a).unwrap()));
            let mut wait = Box::pin(a.readable());
            let polled = std::future::poll_fn(|cx| Poll::Ready(wait.as_mut().poll(cx))).await;
            assert!(polled.is_pending(), "nothing to read yet");
            wait
        });
        let e = testing::run(async move { wait.as_mut().await.unwrap_err() });
        let _ = done_tx.send(e.to_string());
    });
    let e = done_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the carried wait neither failed nor finished: it waits on the ended run");
    assert!(e.contains("has ended"), "{e}");
}

/// A scope that exited before its deadline was not cancelled.
#[test]
fn cancel_called_is_false_after_exiting_before_the_deadline() {
    testing::run(async {
        let s = CancelScope::new().with_timeout(secs(5));
        let h = s.handle();
        s.run(async { sleep(secs(1)).await }).await.unwrap();
        sleep(secs(10)).await.unwrap();
        assert!(!h.cancel_called());
    });
}

/// A cross-thread callback that panics does not stop the callbacks queued after it (S1.10); the
/// panic then leaves the run.
#[test]
fn callbacks_after_a_panicking_one_still_run() {
    use std::sync::{Arc, Mutex};
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        testing::run(async move {
            let handle = hatchery::lowlevel::run_handle();
            let (s1, s3) = (seen2.clone(), seen2.clone());
            std::thread::spawn(move || {
                handle.run_sync_soon(move || s1.lock().unwrap().push(1)).unwrap();
                handle.run_sync_soon(|| panic!("callback two")).unwrap();
                handle.run_sync_soon(move || s3.lock().unwrap().push(3)).unwrap();
            })
            .join()
            .unwrap();
            loop {
                hatchery::lowlevel::checkpoint().await.unwrap();
            }
        })
    }));
    assert_eq!(r.unwrap_err().downcast_ref::<&str>(), Some(&"callback two"));
    assert_eq!(*seen.lock().unwrap(), [1, 3]);
}

/// Polls the future `make` builds once in one run, then awaits it in a second run, on a thread
/// of its own with a real-clock timeout (a regression fails instead of hanging the test
/// binary): the panic message of that second run.
fn panic_of_a_future_carried_into_a_later_run<F: Future + 'static>(
    make: impl FnOnce() -> Pin<Box<F>> + Send + 'static,
    hang: &str,
) -> String {
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        #[expect(clippy::async_yields_async, reason = "the future is carried into the next run")]
        let mut carried = testing::run(async {
            let mut fut = make();
            let polled = std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await;
            assert!(polled.is_pending(), "the future waits at its first poll");
            fut
        });
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            testing::run(async move {
                let _ = carried.as_mut().await;
            })
        }));
        let msg = match r {
            Ok(()) => "no panic".to_string(),
            Err(p) => p.downcast_ref::<&str>().map_or("a panic without a message", |m| m).to_string(),
        };
        let _ = done_tx.send(msg);
    });
    done_rx.recv_timeout(Duration::from_secs(60)).expect(hang)
}

/// A nursery future carried into a later run says so at its first poll there. Before the
/// check it waited forever: its children's wake-ups went to the ended run's scheduler.
#[test]
fn a_nursery_carried_into_a_later_run_panics_with_a_clear_message() {
    let msg = panic_of_a_future_carried_into_a_later_run(
        || {
            Box::pin(nursery(async |n| {
                let h = n.spawn(async { Ok::<_, Cancelled>(7) });
                let v = h.await.unwrap_or(0);
                Ok::<_, Cancelled>(v)
            }))
        },
        "the carried nursery neither failed nor finished: it waits on the ended run",
    );
    assert!(msg.contains("polled in a run other than the one it started in"), "{msg:?}");
}

/// A quiescence waiter woken but never polled again (polled once by hand) leaves the waiting
/// list when woken: the loop does not spin on it with a zero timeout, and the virtual clock
/// still jumps. (A thread bounds the test: before the fix it spun for ever.)
#[test]
fn a_woken_but_unpolled_quiescence_waiter_does_not_stop_the_clock() {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let t = hatchery::testing::run(async {
            let mut w = std::pin::pin!(hatchery::testing::wait_all_tasks_blocked());
            assert!(support::poll_once(w.as_mut()).await.is_pending(), "registered");
            // Idle: `w` is woken, and never polled again.
            hatchery::sleep(secs(1)).await.unwrap();
            let t = hatchery::now();
            // Polled again later, it is done.
            assert!(matches!(support::poll_once(w.as_mut()).await, Poll::Ready(Ok(()))));
            t
        });
        let _ = tx.send(t);
    });
    assert_eq!(rx.recv_timeout(Duration::from_secs(20)).expect("the loop spun"), at(1));
}

/// A cancel-scope future carried into a later run says so at its first poll there, as a
/// nursery does. Before the check its body ran outside the scope: the scope's deadline lives in
/// the ended run and never fired, so this loop of checkpoints went on for ever.
#[test]
fn a_cancel_scope_carried_into_a_later_run_panics_with_a_clear_message() {
    let msg = panic_of_a_future_carried_into_a_later_run(
        || {
            Box::pin(CancelScope::new().with_timeout(secs(1)).run(async {
                loop {
                    hatchery::lowlevel::checkpoint().await?;
                }
                #[allow(unreachable_code)]
                Ok::<(), Cancelled>(())
            }))
        },
        "the carried scope neither failed nor finished: its deadline lives in the ended run",
    );
    assert!(msg.contains("polled in a run other than the one it started in"), "{msg:?}");
}
