//! Nursery lifetime, errors, panics, `spawn` handles and the `start` handshake (S3.x, ST.x).

mod support;

use std::cell::{Cell, RefCell};
use std::panic::{AssertUnwindSafe, catch_unwind};

use hatchery::testing::{self, wait_all_tasks_blocked};
use hatchery::{
    CancelError, CancelSource, Cancelled, Error, Instant, JoinError, NurseryError, StartError, TaskStatus,
    now, nursery, sleep, sleep_forever,
};
use support::{DropCounter, Log, TestError, at, secs};

#[test]
fn body_return_does_not_cancel_children_s3_1() {
    let (value, t) = testing::run(async {
        let v = nursery(async |n| {
            n.start_soon(async {
                sleep(secs(5)).await?;
                Ok::<_, Cancelled>(())
            });
            Ok(7)
        })
        .await
        .unwrap();
        (v, now())
    });
    assert_eq!(value, Some(7));
    assert_eq!(t, at(5), "the nursery waited for its child");
}

#[test]
fn children_borrow_and_spawn_siblings() {
    let data = vec![1, 2, 3];
    let total = Cell::new(0);
    testing::run(async {
        nursery(async |n| {
            for x in &data {
                let total = &total;
                n.start_soon(async move {
                    sleep(secs(*x)).await?;
                    total.set(total.get() + x);
                    // A child spawns a sibling through the handle.
                    n.start_soon(async move {
                        total.set(total.get() + 100);
                        Ok(())
                    });
                    Ok::<_, Error>(())
                });
            }
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
    });
    assert_eq!(total.get(), 306);
}

#[test]
fn child_error_cancels_siblings_and_body_and_is_returned_s3_4() {
    let log = Log::new();
    let (res, t) = testing::run(async {
        let res = nursery(async |n| {
            n.start_soon(async {
                sleep(secs(1)).await?;
                Err::<(), _>(TestError::Boom(1))
            });
            n.start_soon(async {
                match sleep(secs(10)).await {
                    Err(c) => {
                        log.push(format!("sibling: {c}"));
                        Err(c.into())
                    }
                    Ok(()) => Ok(()),
                }
            });
            let r = sleep_forever().await;
            log.push(format!("body: {}", r.unwrap_err().source()));
            Ok::<_, TestError>(())
        })
        .await;
        (res, now())
    });
    let err = res.unwrap_err();
    assert_eq!(err.errors(), &[TestError::Boom(1)], "only the real error is left");
    assert_eq!(t, at(1), "siblings were cancelled at once");
    let mut l = log.take();
    l.sort();
    assert_eq!(l, ["body: nursery", "sibling: cancelled due to nursery with reason 'a child task failed'"]);
}

#[test]
fn every_error_is_kept_in_order() {
    let res = testing::run(async {
        nursery(async |n| {
            for i in 0..3u32 {
                n.start_soon(async move {
                    // All fail in the same batch; none is a checkpoint-cancelled one.
                    sleep(secs(1)).await.ok();
                    Err::<(), _>(TestError::Boom(i))
                });
            }
            Ok::<_, TestError>(())
        })
        .await
    });
    let mut errs = res.unwrap_err().into_errors();
    errs.sort_by_key(|e| format!("{e:?}"));
    assert_eq!(errs, [TestError::Boom(0), TestError::Boom(1), TestError::Boom(2)]);
}

#[test]
fn body_error_cancels_children_s3_5() {
    let (res, t) = testing::run(async {
        let res = nursery(async |n| {
            n.start_soon(async {
                sleep(secs(100)).await?;
                Ok::<_, TestError>(())
            });
            sleep(secs(2)).await?;
            Err::<(), _>(TestError::Boom(5))
        })
        .await;
        (res, now())
    });
    assert_eq!(res.unwrap_err().into_errors(), [TestError::Boom(5)]);
    assert_eq!(t, at(2));
}

#[test]
fn child_panic_cancels_and_is_resumed_after_everyone_finished() {
    let dropped = DropCounter::new();
    let finished = &Cell::new(false);
    let r = catch_unwind(AssertUnwindSafe(|| {
        testing::run(async {
            let _ = nursery(async |n| {
                n.start_soon(async {
                    sleep(secs(1)).await?;
                    panic!("child exploded");
                    #[allow(unreachable_code)]
                    Ok::<_, Cancelled>(())
                });

                let token = dropped.token();
                n.start_soon(async move {
                    let _t = token;
                    // Cleanup that must run before the panic is resumed.
                    let _ = sleep(secs(10)).await;
                    finished.set(true);
                    Ok::<_, Cancelled>(())
                });

                Ok(())
            })
            .await;
        })
    }));
    let payload = r.unwrap_err();
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"child exploded"));
    assert!(finished.get(), "the sibling ran its cleanup before the panic was resumed");
    assert_eq!(dropped.count(), 1);
}

#[test]
fn cancelled_nursery_absorbs_its_own_cancellation() {
    let (res, caught, t) = testing::run(async {
        let mut scope = None;
        let res = nursery(async |n| {
            scope = Some(n.cancel_scope());
            n.start_soon(async {
                sleep_forever().await?;
                Ok::<_, Cancelled>(())
            });
            n.start_soon(async {
                sleep(secs(3)).await?;
                n.cancel_scope().cancel();
                Ok(())
            });
            Ok::<_, Cancelled>("body value")
        })
        .await;
        (res, scope.unwrap().cancelled_caught(), now())
    });
    assert_eq!(res.unwrap(), Some("body value"), "the body's value is kept");
    assert!(caught);
    assert_eq!(t, at(3));
}

#[test]
fn body_cancelled_by_own_scope_gives_no_value() {
    let res = testing::run(async {
        nursery(async |n| {
            n.cancel_scope().cancel();
            sleep(secs(1)).await?;
            Ok::<_, Cancelled>(1)
        })
        .await
    });
    assert_eq!(res.unwrap(), None);
}

#[test]
fn outer_cancellation_passes_through_the_nursery_s3_6() {
    let res = testing::run(async {
        hatchery::move_on_after(secs(2), async {
            let r: Result<Option<()>, NurseryError<Cancelled>> = nursery(async |n| {
                n.start_soon(async { sleep_forever().await.map(|_| ()) });
                sleep_forever().await?;
                Ok(())
            })
            .await;
            let err = r.unwrap_err();
            assert_eq!(err.len(), 2, "both Cancelled stay in the group: {err:?}");
            assert_eq!(err.cancelled().map(|c| c.source()), Some(CancelSource::Deadline));
            Err::<(), _>(err)
        })
        .await
        .map(|o| (o, now()))
    });
    assert_eq!(res.unwrap(), (None, at(2)), "the outer scope absorbed the whole group");
}

#[test]
fn empty_nursery_in_cancelled_scope_does_not_raise_s3_9() {
    testing::run(async {
        let scope = hatchery::CancelScope::new();
        let h = scope.handle();
        h.cancel();
        let r = scope
            .run(async {
                let v = nursery(async |_n| Ok::<_, Cancelled>(3)).await.map_err(Cancelled::from)?;
                Ok::<_, Cancelled>(v)
            })
            .await;
        assert_eq!(r, Ok(Some(Some(3))));
        assert!(!h.cancelled_caught());
    });
}

#[test]
fn spawned_child_into_cancelled_nursery_starts_then_sees_cancel_s3_2() {
    let log = Log::new();
    testing::run(async {
        nursery(async |n| {
            n.cancel_scope().cancel();
            n.start_soon(async {
                log.push("child ran");
                let r = sleep(secs(1)).await;
                log.push(format!("child: {}", r.is_err()));
                r
            });
            Ok::<_, Cancelled>(())
        })
        .await
        .unwrap();
    });
    assert_eq!(log.take(), ["child ran", "child: true"]);
}

#[test]
fn join_handle_value_and_cancel_one_child() {
    let (a, b, t) = testing::run(async {
        let out = nursery(async |n| {
            let slow = n.spawn(async {
                sleep(secs(100)).await?;
                Ok::<_, Cancelled>("slow")
            });
            let fast = n.spawn(async {
                sleep(secs(1)).await?;
                Ok("fast")
            });
            let a = fast.await;
            slow.cancel_with_reason("not needed");
            let b = slow.await;
            Ok((a, b))
        })
        .await
        .unwrap()
        .unwrap();
        (out.0, out.1, now())
    });
    assert_eq!(a, Ok("fast"));
    let Err(JoinError::ChildCancelled(b)) = b else { panic!("expected ChildCancelled, got {b:?}") };
    assert_eq!((b.source(), b.reason()), (CancelSource::Explicit, Some("not needed")));
    assert_eq!(t, at(1), "cancelling one child did not fail the nursery");
}

#[test]
fn cancelled_join_keeps_the_value_for_later() {
    testing::run(async {
        nursery(async |n| {
            let mut h = n.spawn(async {
                sleep(secs(5)).await?;
                Ok::<_, Cancelled>(42)
            });
            let r = hatchery::move_on_after(secs(1), async { (&mut h).await }).await;
            assert_eq!(r, Ok(None));
            assert_eq!((&mut h).await, Ok(42));
            assert_eq!(now(), at(5));
            Ok::<_, Cancelled>(())
        })
        .await
        .unwrap();
    });
}

#[test]
fn drop_counts_every_child_exactly_once() {
    let counter = DropCounter::new();
    testing::run(async {
        let _ = hatchery::move_on_after(secs(5), async {
            nursery(async |n| {
                for i in 0..50u64 {
                    let t = counter.token();
                    n.start_soon(async move {
                        let _t = t;
                        sleep(secs(i % 10)).await?;
                        Ok::<_, Cancelled>(())
                    });
                }
                Ok::<_, Cancelled>(())
            })
            .await
            .map_err(Cancelled::from)
        })
        .await;
        assert_eq!(testing::live_tasks(), 1);
    });
    assert_eq!(counter.count(), 50);
}

#[test]
fn dropping_the_nursery_future_drops_children_once() {
    let counter = DropCounter::new();
    testing::run(async {
        let before = testing::registrations();
        {
            let mut fut = Box::pin(nursery(async |n| {
                for _ in 0..10 {
                    let t = counter.token();
                    n.start_soon(async move {
                        let _t = t;
                        sleep_forever().await?;
                        Ok::<_, Cancelled>(())
                    });
                }
                sleep_forever().await?;
                Ok::<_, Cancelled>(())
            }));
            // Poll it twice by hand so the children park, then drop it.
            support::poll_twice(fut.as_mut()).await;
            assert_eq!(counter.count(), 0);
        }
        assert_eq!(counter.count(), 10);
        assert_eq!(testing::registrations(), before, "nothing left registered");
        assert_eq!(testing::live_tasks(), 1);
    });
}

/// A future that keeps what it owns after it is ready (an async block would have dropped its
/// locals by then): it shows when the nursery drops a finished child's future.
struct ReadyHolding(u64, #[allow(dead_code)] support::DropToken);

impl std::future::Future for ReadyHolding {
    type Output = Result<u64, Cancelled>;
    fn poll(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::task::Poll::Ready(Ok(self.0))
    }
}

#[test]
fn a_spawned_childs_future_is_dropped_when_it_ends_not_when_its_handle_goes() {
    // The future shares its allocation with the handle's output cell; the allocation outlives
    // the child, the future must not.
    let counter = DropCounter::new();
    testing::run(async {
        nursery(async |n| {
            let handles: Vec<_> = (0..3).map(|i| n.spawn(ReadyHolding(i, counter.token()))).collect();
            let parked = n.spawn(async {
                let _t = counter.token();
                sleep_forever().await?;
                Ok::<_, Cancelled>(9)
            });
            wait_all_tasks_blocked().await?;
            assert_eq!(counter.count(), 3, "the finished children's futures are gone, their handles not");
            parked.cancel();
            wait_all_tasks_blocked().await?;
            assert_eq!(counter.count(), 4, "so is the cancelled child's");
            let mut values = Vec::new();
            for h in handles {
                values.push(h.await.unwrap());
            }
            assert_eq!(values, [0, 1, 2]);
            assert!(matches!(parked.await, Err(JoinError::ChildCancelled(_))));
            Ok::<_, Cancelled>(())
        })
        .await
        .unwrap();
    });
    assert_eq!(counter.count(), 4, "each future dropped once");
}

#[test]
fn dropping_the_nursery_future_drops_spawned_children_once() {
    let counter = DropCounter::new();
    testing::run(async {
        {
            let mut fut = Box::pin(nursery(async |n| {
                for _ in 0..5 {
                    let t = counter.token();
                    let h = n.spawn(async move {
                        let _t = t;
                        sleep_forever().await?;
                        Ok::<_, Cancelled>(())
                    });
                    assert!(!h.is_finished());
                    drop(h);
                }
                sleep_forever().await?;
                Ok::<_, Cancelled>(())
            }));
            support::poll_twice(fut.as_mut()).await;
            assert_eq!(counter.count(), 0);
        }
        assert_eq!(counter.count(), 5);
        assert_eq!(testing::live_tasks(), 1);
    });
}

#[test]
fn forgetting_the_nursery_future_is_sound() {
    let counter = DropCounter::new();
    let data = String::from("borrowed");
    let log = Log::default();
    testing::run(async {
        let mut fut = Box::pin(nursery(async |n| {
            let t = counter.token();
            let d = &data;
            let log = &log;
            n.start_soon(async move {
                let _t = t;
                log.push("child parked");
                sleep(secs(1)).await?;
                log.push("child woke");
                assert_eq!(d, "borrowed");
                Ok::<_, Cancelled>(())
            });
            Ok::<_, Cancelled>(())
        }));
        // Polled until the child runs and parks: a live nursery with a live child.
        support::poll_twice(fut.as_mut()).await;
        assert_eq!(log.take(), ["child parked"]);
        // Leak it: its children are never polled again, so nothing can touch `data` later (the
        // child's timer fires at 1 s and wakes nothing that runs).
        std::mem::forget(fut);
        sleep(secs(2)).await.unwrap();
    });
    drop(data);
    assert_eq!(counter.count(), 0, "leaked, not dropped");
    assert!(log.take().is_empty(), "the leaked child never ran again");
}

async fn service(status: TaskStatus<&'static str>, log: &Log) -> Result<(), TestError> {
    log.push("setting up");
    sleep(secs(1)).await?;
    status.started("ready");
    log.push("serving");
    sleep(secs(5)).await?;
    log.push("done");
    Ok(())
}

#[test]
fn start_returns_started_value_and_child_moves_to_nursery_st_1() {
    let log = Log::new();
    let t = testing::run(async {
        nursery(async |n| {
            let v = n.start(|s| service(s, &log)).await?;
            assert_eq!(v, "ready");
            assert_eq!(now(), at(1));
            Ok::<_, TestError>(())
        })
        .await
        .unwrap();
        now()
    });
    assert_eq!(t, at(6));
    assert_eq!(log.take(), ["setting up", "serving", "done"]);
}

#[test]
fn start_error_before_started_is_unwrapped_st_2() {
    testing::run(async {
        let r = nursery(async |n| {
            let e = n
                .start(|_s: TaskStatus<()>| async {
                    sleep(secs(1)).await?;
                    Err::<(), _>(TestError::Boom(3))
                })
                .await;
            assert_eq!(e, Err(TestError::Boom(3)));
            // The nursery itself was not crashed.
            Ok::<_, TestError>("fine")
        })
        .await;
        assert_eq!(r.unwrap(), Some("fine"));
    });
}

#[test]
fn start_without_started_is_an_error_st_3() {
    testing::run(async {
        let r = nursery(async |n| {
            let e = n.start(|_s: TaskStatus<u8>| async { Ok::<_, TestError>(()) }).await;
            assert_eq!(e, Err(TestError::Start(StartError::NotStarted)));
            Ok::<_, TestError>(())
        })
        .await;
        assert!(r.is_ok());
    });
}

#[test]
fn cancelling_start_caller_cancels_child_st_4() {
    let log = Log::new();
    testing::run(async {
        let r = nursery(async |n| {
            let r = hatchery::move_on_after(secs(1), async {
                n.start(|s: TaskStatus<()>| async {
                    let r = sleep(secs(10)).await;
                    log.push(format!("child cancelled: {}", r.is_err()));
                    r?;
                    s.started(());
                    Ok::<_, TestError>(())
                })
                .await
            })
            .await;
            assert_eq!(r, Ok(None));
            assert_eq!(now(), at(1));
            Ok::<_, TestError>(n.child_count())
        })
        .await;
        assert_eq!(r.unwrap(), Some(0));
    });
    assert_eq!(log.take(), ["child cancelled: true"]);
}

#[test]
fn started_child_gets_target_nursery_cancellation_st_7() {
    let log = Log::new();
    testing::run(async {
        nursery(async |n| {
            n.cancel_scope().cancel_with_reason("target cancelled");
            let r = hatchery::CancelScope::new()
                .shielded()
                .run(async {
                    n.start(|s: TaskStatus<()>| async {
                        s.started(());
                        let r = sleep(secs(10)).await;
                        log.push(format!("{:?}", r.map_err(|c| c.reason().map(str::to_owned))));
                        Ok::<_, TestError>(())
                    })
                    .await
                })
                .await;
            assert_eq!(r, Ok(Some(())));
            Ok::<_, TestError>(())
        })
        .await
        .unwrap();
    });
    assert_eq!(log.take(), ["Err(Some(\"target cancelled\"))"]);
}

#[test]
fn a_cancel_right_after_started_reaches_the_scopes_and_grandchildren_opened_before_it_st_7() {
    let log = Log::new();
    testing::run(async {
        nursery(async |n| {
            n.start(|s: TaskStatus<()>| {
                let log = &log;
                async move {
                    // Opened before `started`, under the caller's scopes; they move with the task.
                    let r = nursery(async |inner| {
                        inner.start_soon(async move {
                            let c = sleep_forever().await.unwrap_err();
                            log.push(format!(
                                "grandchild: {}@{}",
                                c.reason().unwrap_or("-"),
                                now().since_origin().as_secs()
                            ));
                            Err::<(), _>(c)
                        });
                        hatchery::CancelScope::new()
                            .run(async {
                                s.started(());
                                let c = sleep_forever().await.unwrap_err();
                                log.push(format!(
                                    "task: {}@{}",
                                    c.reason().unwrap_or("-"),
                                    now().since_origin().as_secs()
                                ));
                                Err::<(), _>(c)
                            })
                            .await
                    })
                    .await;
                    assert!(r.is_err(), "the cancellation belongs to the target nursery: {r:?}");
                    Ok::<_, TestError>(())
                }
            })
            .await?;
            // No checkpoint in between: the task is the nursery's from here on.
            n.cancel_scope().cancel_with_reason("x");
            Ok::<_, TestError>(())
        })
        .await
        .unwrap();
        assert_eq!(now(), at(0));
    });
    let mut l = log.take();
    l.sort();
    assert_eq!(l, ["grandchild: x@0", "task: x@0"]);
}

#[test]
fn a_task_started_from_a_shield_into_a_cancelled_nursery_wakes_what_it_opened_st_7() {
    let log = Log::new();
    testing::run(async {
        nursery(async |n| {
            n.cancel_scope().cancel_with_reason("target");
            hatchery::CancelScope::new()
                .shielded()
                .run(n.start(|s: TaskStatus<()>| {
                    let log = &log;
                    async move {
                        let r = nursery(async |inner| {
                            inner.start_soon(async move {
                                let r = sleep(secs(100)).await;
                                log.push(format!(
                                    "worker {:?}@{}",
                                    r.as_ref().map_err(|c| c.reason().map(str::to_owned)),
                                    now().since_origin().as_secs()
                                ));
                                r
                            });
                            hatchery::lowlevel::checkpoint().await?; // the worker parks first
                            s.started(());
                            sleep(secs(100)).await
                        })
                        .await;
                        assert!(r.is_err(), "{r:?}");
                        Ok::<_, TestError>(())
                    }
                }))
                .await?;
            Ok::<_, TestError>(())
        })
        .await
        .unwrap();
        // Both the worker and the task's own sleep end at once, not after 100 s.
        assert_eq!(now(), at(0));
    });
    assert_eq!(log.take(), ["worker Err(Some(\"target\"))@0"]);
}

#[test]
fn task_status_ignored_lets_a_service_be_awaited_directly_st_8() {
    let log = Log::new();
    let t = testing::run(async {
        service(TaskStatus::ignored(), &log).await.unwrap();
        now()
    });
    assert_eq!(t, at(6));
}

#[test]
fn wait_all_tasks_blocked_orders_tasks() {
    let log = Log::new();
    testing::run(async {
        nursery(async |n| {
            n.start_soon(async {
                log.push("child parks");
                sleep_forever().await?;
                Ok::<_, Cancelled>(())
            });
            wait_all_tasks_blocked().await?;
            log.push("everyone blocked");
            n.cancel_scope().cancel();
            Ok(())
        })
        .await
        .unwrap();
    });
    assert_eq!(log.take(), ["child parks", "everyone blocked"]);
}

#[test]
fn deep_nesting_does_not_overflow() {
    fn nest(depth: u32) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<u32, Cancelled>>>> {
        Box::pin(async move {
            if depth == 0 {
                sleep(secs(1)).await?;
                return Ok(0);
            }
            let v = nursery(async |n| {
                let h = n.spawn(nest(depth - 1));
                h.await.map_err(|e| match e {
                    JoinError::Cancelled(c) | JoinError::ChildCancelled(c) => c,
                    other => panic!("{other}"),
                })
            })
            .await
            .map_err(Cancelled::from)?;
            Ok(v.unwrap() + 1)
        })
    }
    let v = testing::run(async { nest(200).await });
    assert_eq!(v, Ok(200));
}

/// Tries to spawn when dropped, and records whether the nursery said it was closed.
struct SpawnOnDrop<'n, 'env>(&'n hatchery::Nursery<'n, 'env, Cancelled>, &'n RefCell<Option<bool>>);

impl Drop for SpawnOnDrop<'_, '_> {
    fn drop(&mut self) {
        let r = self.0.try_start_soon(async { Ok::<_, Cancelled>(()) });
        *self.1.borrow_mut() = Some(r == Err(StartError::Closed));
    }
}

/// Drops, after two polls, a nursery whose body (`in_child` false) or child holds a
/// [`SpawnOnDrop`]: whether the spawn from its destructor was refused as closed.
fn spawn_from_a_destructor_at_teardown(in_child: bool) -> Option<bool> {
    let seen = RefCell::new(None);
    testing::run(async {
        let mut fut = Box::pin(nursery(async |n| {
            let guard = SpawnOnDrop(n, &seen);
            let _kept = if in_child {
                n.start_soon(async move {
                    let _g = guard;
                    sleep_forever().await?;
                    Ok(())
                });
                None
            } else {
                Some(guard)
            };
            sleep_forever().await?;
            Ok::<_, Cancelled>(())
        }));
        support::poll_twice(fut.as_mut()).await;
        drop(fut);
    });
    seen.into_inner()
}

#[test]
fn a_closed_nursery_refuses_new_children_from_destructors() {
    assert_eq!(spawn_from_a_destructor_at_teardown(true), Some(true));
}

/// The body's own destructors run after the nursery closed, too: a child spawned from one is
/// refused, not accepted and then dropped unpolled.
#[test]
fn a_closed_nursery_refuses_new_children_from_the_bodys_destructors() {
    assert_eq!(spawn_from_a_destructor_at_teardown(false), Some(true));
}

/// `started` may come from another task than the started one (the status handed on): the
/// starter is woken then, not at the started task's next wake-up (ST.1).
#[test]
fn started_from_another_task_wakes_the_starter_st_1() {
    let (v, t, end) = testing::run(async {
        let mut seen = (0, Instant::ZERO);
        nursery(async |n| {
            let v = n
                .start(|st: TaskStatus<u8>| async move {
                    n.start_soon(async move {
                        sleep(secs(1)).await?;
                        st.started(5);
                        Ok::<_, Error>(())
                    });
                    sleep(secs(10)).await?;
                    Ok::<_, Error>(())
                })
                .await?;
            seen = (v, now());
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
        (seen.0, seen.1, now())
    });
    assert_eq!((v, t, end), (5, at(1), at(10)));
}

#[test]
fn start_on_a_closed_nursery_fails_at_once_without_running_the_task_st_6() {
    struct StartOnDrop<'n, 'env>(
        &'n hatchery::Nursery<'n, 'env, TestError>,
        &'n Cell<Option<bool>>,
        &'n Cell<bool>,
    );
    impl Drop for StartOnDrop<'_, '_> {
        fn drop(&mut self) {
            let ran = self.2;
            let start = std::pin::pin!(self.0.start(|s: TaskStatus<()>| {
                ran.set(true);
                async move {
                    s.started(());
                    Ok::<_, TestError>(())
                }
            }));
            // One poll, no run needed: the answer comes before any checkpoint.
            let polled = std::future::Future::poll(
                start,
                &mut std::task::Context::from_waker(std::task::Waker::noop()),
            );
            self.1.set(Some(matches!(
                polled,
                std::task::Poll::Ready(Err(TestError::Start(StartError::Closed)))
            )));
        }
    }
    let (seen, ran) = (Cell::new(None), Cell::new(false));
    testing::run(async {
        let mut fut = Box::pin(nursery(async |n| {
            let guard = StartOnDrop(n, &seen, &ran);
            n.start_soon(async move {
                let _g = guard;
                sleep_forever().await?;
                Ok(())
            });
            sleep_forever().await?;
            Ok::<_, TestError>(())
        }));
        support::poll_twice(fut.as_mut()).await;
        drop(fut);
    });
    assert_eq!(seen.get(), Some(true), "start on a closed nursery did not fail at once with Closed");
    assert!(!ran.get(), "the task function ran");
}

#[test]
fn start_soon_and_spawn_return_before_the_child_runs_s3_2() {
    let log = Log::new();
    testing::run(async {
        nursery(async |n| {
            n.start_soon(async {
                log.push("start_soon child");
                Ok::<_, Error>(())
            });
            let h = n.spawn(async {
                log.push("spawned child");
                Ok::<_, Error>(1)
            });
            assert!(!h.is_finished());
            log.push("body after both calls");
            wait_all_tasks_blocked().await?;
            assert!(h.is_finished());
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
    });
    let mut l = log.take();
    assert_eq!(l[0], "body after both calls");
    l[1..].sort();
    assert_eq!(l[1..], ["spawned child", "start_soon child"]);
}

#[test]
fn awaiting_a_child_you_cancelled_is_an_error_not_a_silent_cancel() {
    // Regression: `kid.cancel(); kid.await?` used to send a Cancelled out of the body, which the
    // nursery then absorbed, losing the body's value silently.
    let log = Log::new();
    let r = testing::run(async {
        nursery(async |n| {
            n.start_soon(async {
                sleep(secs(5)).await?;
                log.push("sibling finished normally");
                Ok::<_, Error>(())
            });
            let kid = n.spawn(async {
                sleep(secs(100)).await?;
                Ok::<_, Error>(())
            });
            sleep(secs(1)).await?;
            kid.cancel();
            kid.await?;
            Ok::<_, Error>("body value")
        })
        .await
    });
    let err = r.unwrap_err();
    assert_eq!(err.len(), 1);
    assert!(matches!(err.first(), Error::Join(JoinError::ChildCancelled(_))), "{err:?}");
    assert!(log.take().is_empty(), "the sibling was cancelled because the body failed");
}

#[test]
fn awaiting_a_failed_child_reports_the_awaiters_cancellation() {
    testing::run(async {
        let r = nursery(async |n| {
            let bad = n.spawn(async {
                sleep(secs(1)).await?;
                Err::<(), _>(TestError::Boom(9))
            });
            let j = bad.await;
            // The awaiter is inside the failing nursery: it is told it is cancelled.
            assert!(
                matches!(&j, Err(JoinError::Cancelled(c)) if c.source() == CancelSource::Nursery),
                "{j:?}"
            );
            j.map_err(|e| match e {
                JoinError::Cancelled(c) => TestError::Cancelled(c),
                other => panic!("{other}"),
            })
        })
        .await;
        assert_eq!(
            r.unwrap_err().into_errors(),
            [TestError::Boom(9)],
            "the awaiter's Cancelled was absorbed"
        );
    });
}

#[test]
fn cancelling_a_child_reaches_scopes_it_entered_before_the_cancel() {
    // The child's own cancel node is created lazily; scopes it entered earlier must hang below it.
    let log = Log::new();
    testing::run(async {
        nursery(async |n| {
            let h = n.spawn(async {
                let r = hatchery::move_on_after(secs(100), async {
                    let r = sleep(secs(50)).await;
                    log.push(format!("inner sleep: {:?}", r.as_ref().map_err(|c| c.reason())));
                    r
                })
                .await;
                log.push(format!("scope: {r:?}"));
                r.map(|_| ())
            });
            sleep(secs(2)).await?;
            h.cancel_with_reason("stop that");
            let j = h.await;
            assert!(
                matches!(j, Err(JoinError::ChildCancelled(ref c)) if c.reason() == Some("stop that")),
                "{j:?}"
            );
            assert_eq!(now(), at(2));
            Ok::<_, Cancelled>(())
        })
        .await
        .unwrap();
        assert_eq!(testing::registrations().cancel_nodes, 1, "only the run's root node is left");
    });
    assert_eq!(log.take()[0], "inner sleep: Err(Some(\"stop that\"))");
}

#[test]
fn trivial_spawned_children_leave_no_cancel_nodes() {
    testing::run(async {
        nursery(async |n| {
            let hs: Vec<_> = (0..100u32).map(|i| n.spawn(async move { Ok::<_, Cancelled>(i) })).collect();
            hatchery::lowlevel::checkpoint().await?;
            // nursery node + root only: children that never parked never needed a node.
            assert_eq!(testing::registrations().cancel_nodes, 2);
            let mut s = 0;
            for h in hs {
                s += h.await.unwrap();
            }
            assert_eq!(s, 4950);
            Ok::<_, Cancelled>(())
        })
        .await
        .unwrap();
    });
}

/// Dropping a nursery future with many children left takes time linear in their number. Before,
/// each step looked for the next child from the first slot, past all those already dropped:
/// 60,000 children took 27 s in a debug build. Timed on the real clock, but as a ratio of two
/// sizes measured in the same process (the best of three each), so a slow machine or valgrind
/// does not matter: eight times the children take about eight times as long, where the
/// quadratic teardown took sixty-four times as long and more.
#[test]
fn dropping_a_nursery_with_many_children_is_linear() {
    fn drop_time(children: usize) -> std::time::Duration {
        let drops = DropCounter::new();
        let elapsed = testing::run(async {
            let mut fut = Box::pin(nursery(async |n| {
                for _ in 0..children {
                    let c = drops.token();
                    n.start_soon(async move {
                        let _c = c;
                        hatchery::sleep_forever().await?;
                        Ok::<_, Cancelled>(())
                    });
                }
                hatchery::sleep_forever().await?;
                Ok::<_, Cancelled>(())
            }));
            support::poll_twice(fut.as_mut()).await;
            let t0 = std::time::Instant::now();
            drop(fut);
            t0.elapsed()
        });
        assert_eq!(drops.count(), children);
        elapsed
    }
    let best = |n| (0..3).map(|_| drop_time(n)).min().unwrap();
    let (small, large) = (best(2_500), best(20_000));
    assert!(
        large < small * 30,
        "8x the children took {:.1}x as long ({small:?}, {large:?})",
        large.as_secs_f64() / small.as_secs_f64()
    );
}

/// A child's panic recorded before the nursery future is dropped (as a foreign select or
/// timeout would drop it, while a sibling still finishes in a shield) comes out of the drop.
/// Before, it was dropped with the nursery: only the panic hook's line on stderr told of it.
#[test]
fn a_recorded_child_panic_comes_out_when_the_nursery_future_is_dropped() {
    let r = catch_unwind(AssertUnwindSafe(|| {
        testing::run(async {
            let mut fut = Box::pin(nursery(async |n| {
                n.start_soon(async {
                    if true {
                        panic!("boom (expected by this test)");
                    }
                    Ok::<_, Cancelled>(())
                });
                n.start_soon(async {
                    let _ = hatchery::sleep_forever().await;
                    hatchery::CancelScope::new().shielded().run(hatchery::sleep(secs(10))).await?;
                    Ok::<_, Cancelled>(())
                });
                hatchery::sleep_forever().await?;
                Ok::<_, Cancelled>(())
            }));
            support::poll_twice(fut.as_mut()).await;
            drop(fut);
        })
    }));
    let p = r.expect_err("the child's panic must come out");
    assert_eq!(p.downcast_ref::<&str>(), Some(&"boom (expected by this test)"));
}

/// A started task that panics right after `started`, in the same poll, is the target nursery's
/// crash, as an error there would be (ST.1): `start` returns the value to the caller, and the
/// target nursery resumes the panic. Before, the panic unwound through `start` into the caller,
/// whose code after `start` never ran and whose own nursery took the crash of a service that
/// already belonged elsewhere.
#[test]
fn a_panic_right_after_started_goes_to_the_target_nursery() {
    let log = Log::new();
    let r = catch_unwind(AssertUnwindSafe(|| {
        testing::run(async {
            nursery(async |outer| {
                nursery(async |inner| {
                    inner.start_soon(async {
                        let v = outer
                            .start(async |st: TaskStatus<u32>| {
                                st.started(7);
                                if true {
                                    panic!("svc (expected by this test)");
                                }
                                Ok::<_, Error>(())
                            })
                            .await?;
                        log.push(format!("start returned {v}"));
                        Ok::<_, Error>(())
                    });
                    inner.start_soon(async {
                        sleep(secs(1)).await?;
                        log.push("sibling finished");
                        Ok(())
                    });
                    Ok(())
                })
                .await
                .map_err(|e| e.into_first())?;
                log.push("inner nursery done");
                Ok::<_, Error>(())
            })
            .await
        })
    }));
    let p = r.expect_err("the service's panic comes out of the outer nursery");
    assert_eq!(p.downcast_ref::<&str>(), Some(&"svc (expected by this test)"));
    // The caller went on after `start`; the crash of the outer nursery then cancelled the rest
    // of it, the inner nursery included.
    assert_eq!(log.take(), ["start returned 7"]);
}

/// A finished child's handle, its slot since reused by a new child, cancels nothing: the slot's
/// new occupant runs to its end.
#[test]
fn cancelling_through_a_finished_childs_handle_leaves_the_child_in_its_reused_slot_alone() {
    let (t, second) = testing::run(async {
        let second = nursery(async |n| {
            let first = n.spawn(async { Ok::<_, Error>(1) });
            wait_all_tasks_blocked().await?;
            assert!(first.is_finished());
            // The first child's slot is free again: the second takes it.
            let second = n.spawn(async {
                sleep(secs(2)).await?;
                Ok::<_, Error>(2)
            });
            first.cancel();
            Ok(second.await?)
        })
        .await
        .unwrap();
        (now(), second)
    });
    assert_eq!(second, Some(2), "the new child was not cancelled");
    assert_eq!(t, at(2));
}

/// A deadline set on the nursery's own scope cancels its children at exactly that instant; a
/// child that finished before is untouched, and the nursery absorbs its own cancellation (the
/// body had returned its value before).
#[test]
fn a_deadline_on_the_nursery_scope_cancels_its_children_at_that_instant() {
    let log = Log::new();
    let (t, r) = testing::run(async {
        let r = nursery(async |n| {
            n.cancel_scope().set_deadline(Instant::ZERO + secs(5));
            n.start_soon(async {
                sleep(secs(3)).await?;
                log.push("short child done");
                Ok(())
            });
            n.start_soon(async {
                let r = sleep(secs(10)).await;
                log.push(format!(
                    "long child woke at {:?}, cancelled: {}",
                    now() - Instant::ZERO,
                    r.is_err()
                ));
                r.map_err(Error::from)
            });
            Ok::<_, Error>(())
        })
        .await;
        (now(), r.map(|v| v.is_some()))
    });
    assert_eq!(t, at(5));
    assert!(r.unwrap(), "the body's value stands; the children's cancellation is absorbed");
    assert_eq!(log.take(), ["short child done", "long child woke at 5s, cancelled: true"]);
}
