//! The checkpoint rule: every public async operation is a checkpoint, the partial forms and the sync
//! operations are not, and an already-cancelled scope makes operations fail at once (S2.x, S3.9).

mod support;

use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;

use hatchery::lowlevel::{self, cancel_shielded_checkpoint, checkpoint_if_cancelled};
use hatchery::testing::{self, Sequencer, assert_checkpoints, assert_no_checkpoints, wait_all_tasks_blocked};
use hatchery::{CancelScope, Cancelled, Error, JoinError, TaskStatus, now, nursery, sleep, sleep_until};
use support::{at, secs};

/// Runs `f` in a fresh test run and returns the panic message it ended with, if any.
fn panic_message<F: std::future::Future<Output = ()>>(f: F) -> Option<String> {
    let r = catch_unwind(AssertUnwindSafe(|| testing::run(f)));
    r.err().map(|p| {
        p.downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap()
    })
}

#[test]
fn lowlevel_checkpoint_is_a_checkpoint_s2_1() {
    testing::run(async {
        assert_checkpoints(lowlevel::checkpoint()).await.unwrap();
    });
}

#[test]
fn sleeps_are_checkpoints_s2_1_s2_4() {
    testing::run(async {
        assert_checkpoints(sleep(Duration::ZERO)).await.unwrap();
        assert_checkpoints(sleep(secs(3))).await.unwrap();
        assert_eq!(now(), at(3));
        assert_checkpoints(sleep_until(at(1))).await.unwrap();
        assert_checkpoints(sleep_until(now())).await.unwrap();
        assert_eq!(now(), at(3));
    });
}

#[test]
fn awaiting_a_join_handle_is_a_checkpoint_s2_1() {
    testing::run(async {
        nursery(async |n| {
            // Already finished: the fast path still yields and checks.
            let done = n.spawn(async { Ok::<_, Error>(5) });
            wait_all_tasks_blocked().await?;
            assert!(done.is_finished());
            assert_eq!(assert_checkpoints(done).await?, 5);
            // Still running: a real wait.
            let running = n.spawn(async {
                sleep(secs(2)).await?;
                Ok(6)
            });
            assert!(!running.is_finished());
            assert_eq!(assert_checkpoints(running).await?, 6);
            assert_eq!(now(), at(2));
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
    });
}

/// A service for `Nursery::start`: sets up for `setup` (if any), reports 7, then serves for 5 s.
async fn service(status: TaskStatus<u32>, setup: Option<Duration>) -> Result<(), Error> {
    if let Some(d) = setup {
        sleep(d).await?;
    }
    status.started(7);
    sleep(secs(5)).await?;
    Ok(())
}

#[test]
fn nursery_start_of_a_task_ready_at_once_is_a_checkpoint_s2_1() {
    testing::run(async {
        nursery(async |n| {
            assert_eq!(assert_checkpoints(n.start(|s| service(s, None))).await?, 7);
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
    });
}

#[test]
fn nursery_start_of_a_task_that_sets_up_first_is_a_checkpoint_s2_1() {
    testing::run(async {
        nursery(async |n| {
            assert_eq!(assert_checkpoints(n.start(|s| service(s, Some(secs(1))))).await?, 7);
            assert_eq!(now(), at(1));
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
    });
}

#[test]
fn nursery_start_in_a_cancelled_scope_fails_s2_1() {
    testing::run(async {
        nursery(async |n| {
            let scope = CancelScope::new();
            scope.handle().cancel();
            let r = scope.run(n.start(|s| service(s, Some(secs(1))))).await;
            assert!(matches!(r, Ok(None)), "{r:?}");
            assert_eq!(now(), at(0));
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
    });
}

#[test]
fn wait_all_tasks_blocked_is_a_checkpoint_s2_1() {
    testing::run(async {
        assert_checkpoints(wait_all_tasks_blocked()).await.unwrap();
        nursery(async |n| {
            n.start_soon(async {
                sleep(secs(1)).await?;
                Ok::<_, Cancelled>(())
            });
            assert_checkpoints(wait_all_tasks_blocked()).await?;
            assert_eq!(now(), at(0));
            Ok(())
        })
        .await
        .unwrap();
    });
}

#[cfg(unix)]
#[test]
fn io_source_ops_are_checkpoints_on_both_paths_s2_1_s9_1() {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    use hatchery::lowlevel::IoSource;

    testing::run(async {
        let (a, b) = UnixStream::pair()?;
        a.set_nonblocking(true)?;
        let a = IoSource::new(a)?;
        let mut b = b;
        let mut buf = [0u8; 8];

        // Fast path: the data is already there.
        b.write_all(b"now")?;
        a.readable().await?; // let the reactor see it
        let k = assert_checkpoints(a.read_with(|mut s| s.read(&mut buf))).await?;
        assert_eq!(&buf[..k], b"now");
        // Readiness stays reported until an operation says WouldBlock: ready at once.
        assert_checkpoints(a.readable()).await?;
        assert_checkpoints(a.writable()).await?;
        let k = assert_checkpoints(a.write_with(|mut s| s.write(b"back"))).await?;
        assert_eq!(k, 4);

        // Slow path: the read must wait for a writer in another task.
        let b = Cell::new(Some(b));
        nursery(async |n| {
            n.start_soon(async {
                wait_all_tasks_blocked().await?;
                b.take().unwrap().write_all(b"later")?;
                Ok::<_, std::io::Error>(())
            });
            let k = assert_checkpoints(a.read_with(|mut s| s.read(&mut buf))).await?;
            assert_eq!(&buf[..k], b"later");
            Ok(())
        })
        .await?;
        Ok::<_, std::io::Error>(())
    })
    .unwrap();
}

#[test]
fn sequencer_step_is_a_checkpoint_s2_1() {
    testing::run(async {
        let seq = Sequencer::new();
        let order = Cell::new(0);
        nursery(async |n| {
            n.start_soon(async {
                let _g = assert_checkpoints(seq.step(1)).await?;
                assert_eq!(order.replace(2), 1);
                Ok::<_, Cancelled>(())
            });
            // Step 0 is due at once: still a checkpoint.
            let g = assert_checkpoints(seq.step(0)).await?;
            assert_eq!(order.replace(1), 0);
            drop(g);
            Ok(())
        })
        .await
        .unwrap();
        assert_eq!(order.get(), 2);
    });
}

#[test]
fn checkpoint_if_cancelled_alone_is_not_a_checkpoint_s2_2() {
    let msg = panic_message(async {
        assert_checkpoints(async { checkpoint_if_cancelled() }).await.unwrap();
    });
    let msg = msg.expect("assert_checkpoints must fail");
    assert!(msg.contains("1 cancel point(s) and 0 schedule point(s)"), "{msg}");

    // It is a cancel point, though: assert_no_checkpoints sees it.
    let msg = panic_message(async {
        assert_no_checkpoints(async { checkpoint_if_cancelled() }).await.unwrap();
    });
    let msg = msg.expect("assert_no_checkpoints must fail");
    assert!(msg.contains("assert_no_checkpoints"), "{msg}");
}

#[test]
fn cancel_shielded_checkpoint_alone_is_not_a_checkpoint_s2_2() {
    let msg = panic_message(async {
        assert_checkpoints(cancel_shielded_checkpoint()).await;
    });
    let msg = msg.expect("assert_checkpoints must fail");
    assert!(msg.contains("0 cancel point(s) and 1 schedule point(s)"), "{msg}");

    // It never fails, even in a cancelled scope.
    testing::run(async {
        let scope = CancelScope::new();
        scope.handle().cancel();
        let r = scope
            .run(async {
                cancel_shielded_checkpoint().await;
                Ok::<_, Cancelled>(1)
            })
            .await;
        assert_eq!(r, Ok(Some(1)));
    });
}

#[test]
fn both_partial_forms_together_make_a_checkpoint_s2_2() {
    testing::run(async {
        assert_checkpoints(async {
            cancel_shielded_checkpoint().await;
            checkpoint_if_cancelled()
        })
        .await
        .unwrap();
    });
}

#[test]
fn an_empty_nursery_in_a_cancelled_scope_is_not_a_cancel_point_s3_9() {
    testing::run(async {
        let scope = CancelScope::new();
        let h = scope.handle();
        h.cancel();
        let r = scope
            .run(async {
                let r = nursery(async |_| Ok::<_, Cancelled>(())).await;
                assert!(matches!(r, Ok(Some(()))), "opening and closing did not fail: {r:?}");
                let r = nursery(async |_| Ok::<_, Cancelled>(4)).await;
                Ok::<_, Cancelled>(r.ok().flatten())
            })
            .await;
        assert_eq!(r, Ok(Some(Some(4))));
        assert!(!h.cancelled_caught(), "nothing was cancelled, so nothing was caught");
        assert_eq!(now(), at(0));
    });
}

#[test]
fn sync_operations_are_not_checkpoints_s2_1_s2_6() {
    testing::run(async {
        let scope = CancelScope::new();
        let h = scope.handle();
        assert_no_checkpoints(async { h.cancel() }).await;
        assert_no_checkpoints(async { h.cancel_with_reason("again") }).await;
        assert!(h.cancel_called());
        nursery(async |n| {
            assert_no_checkpoints(async {
                n.start_soon(async { Ok(()) });
                let child = n.spawn(async {
                    sleep(secs(1)).await?;
                    Ok(())
                });
                child.cancel();
                let _ = now();
            })
            .await;
            Ok::<_, Cancelled>(())
        })
        .await
        .unwrap();
    });
}

#[test]
fn code_after_cancel_runs_until_the_next_checkpoint_s2_6() {
    testing::run(async {
        let scope = CancelScope::new();
        let h = scope.handle();
        let reached = Cell::new(0);
        let r = scope
            .run(async {
                h.cancel();
                reached.set(1); // still running
                lowlevel::checkpoint().await?;
                reached.set(2);
                Ok::<_, Cancelled>(())
            })
            .await;
        assert_eq!(r, Ok(None));
        assert_eq!(reached.get(), 1);
    });
}

#[cfg(unix)]
#[test]
fn operations_in_a_cancelled_scope_fail_at_once_s2_1() {
    use std::os::unix::net::UnixStream;

    use hatchery::lowlevel::IoSource;

    testing::run(async {
        sleep(secs(1)).await.unwrap();
        let (a, _b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let a = IoSource::new(a).unwrap();
        let seq = Sequencer::new();
        nursery(async |n| {
            let child = n.spawn(async {
                sleep(secs(100)).await?;
                Ok(())
            });
            let scope = CancelScope::new();
            scope.handle().cancel();
            let r = scope
                .run(async {
                    let t = now();
                    assert!(sleep(secs(3600)).await.is_err());
                    assert!(sleep_until(at(7200)).await.is_err());
                    assert!(sleep(Duration::ZERO).await.is_err());
                    assert!(lowlevel::checkpoint().await.is_err());
                    assert!(checkpoint_if_cancelled().is_err());
                    assert!(wait_all_tasks_blocked().await.is_err());
                    assert!(seq.step(0).await.is_err());
                    assert!(Cancelled::from_io(&a.readable().await.unwrap_err()).is_some());
                    let mut child = child;
                    assert!(matches!((&mut child).await, Err(JoinError::Cancelled(_))));
                    child.cancel();
                    assert_eq!(now(), t, "no operation waited");
                    let e = sleep(secs(1)).await.unwrap_err();
                    Err::<(), _>(Error::from(e))
                })
                .await;
            assert!(matches!(r, Ok(None)), "{r:?}");
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
        assert_eq!(now(), at(1), "the cancelled child did not hold the nursery");
    });
}

#[test]
fn generate_and_its_yield_and_recv_are_checkpoints_s2_1_s6_11() {
    use hatchery::sync::{Yielder, generate};
    testing::run(async {
        // The call itself: a cancel point on entry, the nursery's schedule point at the end,
        // even when the consumer never asks (and the producer never starts).
        let r = assert_checkpoints(generate(
            async |y: &mut Yielder<u32>| y.yield_(1).await,
            async |_items| Ok::<_, Cancelled>(5),
        ))
        .await;
        assert_eq!(r.unwrap(), 5);
        let r = generate(
            async |y| {
                sleep(secs(2)).await?;
                // Hands 1 over at once (it was asked for), then waits for the next request.
                assert_checkpoints(y.yield_(1)).await?;
                // Cancelled while waiting: the consumer is done.
                assert_checkpoints(y.yield_(2)).await?;
                Ok::<_, Error>(())
            },
            async |items| {
                // A receive that gives up leaves item 1 to be handed over meanwhile...
                assert!(hatchery::move_on_after(secs(1), items.recv()).await?.is_none());
                sleep(secs(2)).await?;
                // ...so this one finds it there without waiting: still a checkpoint.
                assert_eq!(assert_checkpoints(items.recv()).await?, 1);
                // This one waits for the producer.
                assert_eq!(assert_checkpoints(items.recv()).await?, 2);
                Ok(now())
            },
        )
        .await;
        assert_eq!(r.unwrap(), at(3));
    });
}

#[test]
fn a_sequencer_step_cancelled_on_entry_or_dropped_while_waiting_breaks_the_sequence() {
    // Either way step 1 can never run; step 2, waiting for it, must fail with the reason
    // rather than hang. On another thread with a real-time limit, so that a regression fails.
    for dropped in [false, true] {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let r = std::panic::catch_unwind(|| {
                testing::run(async {
                    let seq = Sequencer::new();
                    nursery(async |n| {
                        n.start_soon(async {
                            let _g = seq.step(2).await?;
                            Ok(())
                        });
                        let g0 = seq.step(0).await?;
                        if dropped {
                            let mut step = std::pin::pin!(seq.step(1));
                            let polled =
                                std::future::poll_fn(|cx| std::task::Poll::Ready(step.as_mut().poll(cx)))
                                    .await;
                            assert!(polled.is_pending(), "step 1 waits for step 0");
                        } else {
                            let scope = CancelScope::new().with_deadline(hatchery::Instant::ZERO);
                            assert_eq!(scope.run(async { seq.step(1).await.map(drop) }).await, Ok(None));
                        }
                        drop(g0);
                        Ok::<_, Cancelled>(())
                    })
                    .await
                })
            });
            let text = match r {
                Ok(_) => "no panic".to_owned(),
                Err(p) => p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_default(),
            };
            tx.send(text).unwrap();
        });
        let text = rx.recv_timeout(Duration::from_secs(30)).expect("the sequence hung");
        assert!(text.contains("Sequencer broken: step 1"), "{dropped}: {text}");
    }
}
