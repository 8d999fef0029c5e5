//! Cancel scopes, deadlines, shields and the timeout helpers (S4.x, S5.x), on the virtual clock.

mod support;

use hatchery::testing::{self, wait_all_tasks_blocked};
use hatchery::{
    CancelScope, CancelSource, Cancelled, Error, Instant, current_effective_deadline, fail_after,
    move_on_after, move_on_at, now, nursery, sleep, sleep_forever,
};
use support::{Log, at, secs};

#[test]
fn level_triggered_every_checkpoint_fails_until_exit_s4_1() {
    testing::run(async {
        let scope = CancelScope::new();
        let h = scope.handle();
        let r = scope
            .run(async {
                h.cancel();
                let mut fails = 0;
                for _ in 0..3 {
                    if hatchery::lowlevel::checkpoint().await.is_err() {
                        fails += 1;
                    }
                }
                assert_eq!(fails, 3);
                Ok::<_, Cancelled>(fails)
            })
            .await;
        // The body handled the cancellations and returned a value: it is kept.
        assert_eq!(r, Ok(Some(3)));
        assert!(!h.cancelled_caught());
        // Outside the scope, checkpoints work again.
        hatchery::lowlevel::checkpoint().await.unwrap();
    });
}

#[test]
fn cancel_before_entry_and_after_exit_s4_2() {
    testing::run(async {
        let scope = CancelScope::new();
        let h = scope.handle();
        h.cancel();
        h.cancel(); // idempotent
        let r = scope.run(async { sleep(secs(1)).await.map(|_| 1) }).await;
        assert_eq!(r, Ok(None));
        assert!(h.cancelled_caught());
        assert_eq!(now(), at(0), "cancelled at the first checkpoint, no time passed");

        let scope = CancelScope::new();
        let h = scope.handle();
        assert_eq!(scope.run(async { Ok::<_, Cancelled>(2) }).await, Ok(Some(2)));
        h.cancel();
        assert!(h.cancel_called());
        assert!(!h.cancelled_caught());
    });
}

#[test]
fn deadline_fires_at_exact_instant_and_can_move_s4_4() {
    testing::run(async {
        let scope = CancelScope::new().with_deadline(at(10));
        let h = scope.handle();
        let log = Log::new();
        let r = scope
            .run(async {
                sleep(secs(2)).await?;
                log.push(format!("t={:?}", now().as_secs_f64()));
                h.set_deadline(at(4)); // earlier, while running
                sleep(secs(100)).await?;
                Ok::<_, Cancelled>(())
            })
            .await;
        assert_eq!(r, Ok(None));
        assert_eq!(now(), at(4));
        assert_eq!(log.take(), ["t=2.0"]);
        // Moving the deadline later does not un-cancel.
        h.set_deadline(Instant::MAX);
        assert!(h.cancel_called());
    });
}

#[test]
fn deadline_into_the_past_fires_on_next_pass_s1_9() {
    testing::run(async {
        let scope = CancelScope::new();
        let h = scope.handle();
        let r = scope
            .run(async {
                h.set_deadline(Instant::ZERO);
                // Checkpoint yields first, so the expired deadline is seen.
                hatchery::lowlevel::checkpoint().await?;
                Ok::<_, Cancelled>(())
            })
            .await;
        assert_eq!(r, Ok(None));
        assert!(h.cancelled_caught());
    });
}

#[test]
fn deadline_passed_at_entry_cancels_with_source_deadline() {
    testing::run(async {
        sleep(secs(5)).await.unwrap();
        let r = move_on_at(at(1), async {
            let e = sleep(secs(1)).await.unwrap_err();
            assert_eq!(e.source(), CancelSource::Deadline);
            Err::<(), _>(e)
        })
        .await;
        assert_eq!(r, Ok(None));
        assert_eq!(now(), at(5));
    });
}

#[test]
fn relative_deadline_is_fixed_at_entry_s4_5() {
    testing::run(async {
        let scope = CancelScope::new().with_timeout(secs(3));
        let h = scope.handle();
        assert_eq!(h.deadline(), None);
        sleep(secs(10)).await.unwrap();
        let r = scope
            .run(async {
                assert_eq!(h.deadline(), Some(at(13)));
                sleep(secs(5)).await?;
                Ok::<_, Cancelled>(())
            })
            .await;
        assert_eq!(r, Ok(None));
        assert_eq!(now(), at(13));
    });
}

#[test]
fn shield_blocks_outer_cancel_and_unshield_delivers_it_s4_7() {
    testing::run(async {
        let log = Log::new();
        let outer = CancelScope::new();
        let oh = outer.handle();
        let inner = CancelScope::new().shielded();
        let ih = inner.handle();
        let r = outer
            .run(async {
                let r = inner
                    .run(async {
                        oh.cancel();
                        sleep(secs(2)).await?; // shielded: completes
                        log.push(format!("shielded sleep done at {}", now().as_secs_f64()));
                        ih.set_shield(false);
                        sleep(secs(2)).await?; // now the outer cancel reaches us
                        log.push("unreachable");
                        Ok::<_, Cancelled>(())
                    })
                    .await;
                // The inner scope was not cancelled itself, so it does not absorb.
                assert!(r.is_err());
                assert!(!ih.cancelled_caught());
                r
            })
            .await;
        assert_eq!(r, Ok(None));
        assert!(oh.cancelled_caught());
        assert_eq!(log.take(), ["shielded sleep done at 2"]);
        assert_eq!(now(), at(2));
    });
}

#[test]
fn unshield_wakes_a_blocked_task_s4_7() {
    testing::run(async {
        nursery(async |n| {
            let inner = CancelScope::new().shielded();
            let ih = inner.handle();
            n.start_soon(async move {
                let r = inner.run(async { sleep_forever().await.map(|_| ()) }).await;
                assert_eq!(r.as_ref().map_err(|c| c.reason()), Err(Some("stop")));
                r.map(|_| ())
            });
            wait_all_tasks_blocked().await?;
            n.cancel_scope().cancel_with_reason("stop");
            // The body is inside the cancelled nursery too: shield its own waiting.
            CancelScope::new()
                .shielded()
                .run(async {
                    wait_all_tasks_blocked().await?;
                    assert_eq!(n.child_count(), 1, "still shielded");
                    ih.set_shield(false);
                    Ok::<_, Cancelled>(())
                })
                .await?;
            Ok::<_, Cancelled>(())
        })
        .await
        .unwrap();
        assert_eq!(now(), at(0));
    });
}

#[test]
fn outermost_cancelled_scope_catches_s4_8() {
    testing::run(async {
        let s2 = CancelScope::new();
        let h2 = s2.handle();
        let s3 = CancelScope::new();
        let h3 = s3.handle();
        let r = s2
            .run(async {
                let r = s3
                    .run(async {
                        h3.cancel();
                        h2.cancel();
                        sleep(secs(1)).await?;
                        Ok::<_, Cancelled>(())
                    })
                    .await;
                assert!(r.is_err(), "the inner scope passes it on");
                r
            })
            .await;
        assert_eq!(r, Ok(None));
        assert!(h2.cancelled_caught());
        assert!(!h3.cancelled_caught());
    });
}

#[test]
fn never_cancelled_scope_does_not_swallow_even_if_shielded_later_s4_8() {
    testing::run(async {
        let outer = CancelScope::new();
        let oh = outer.handle();
        let r = outer
            .run(async {
                let inner = CancelScope::new();
                let ih = inner.handle();
                let r = inner
                    .run(async {
                        oh.cancel();
                        let e = sleep(secs(1)).await;
                        ih.set_shield(true); // while the error is in flight
                        e
                    })
                    .await;
                assert!(r.is_err());
                assert!(!ih.cancelled_caught());
                r
            })
            .await;
        assert_eq!(r, Ok(None));
    });
}

#[test]
fn a_timeout_set_while_running_counts_from_now_s4_3() {
    testing::run(async {
        let scope = CancelScope::new();
        let h = scope.handle();
        assert_eq!(h.deadline(), None, "a plain scope has no deadline");
        let r = scope
            .run(async {
                sleep(secs(2)).await?;
                h.set_timeout(secs(3));
                assert_eq!(h.deadline(), Some(at(5)));
                sleep_forever().await?;
                Ok::<_, Cancelled>(())
            })
            .await;
        assert_eq!(r, Ok(None));
        assert_eq!(now(), at(5));
        assert!(h.cancel_called() && h.cancelled_caught());
    });
}

#[test]
fn pending_cancel_without_checkpoint_is_dropped_s4_10() {
    testing::run(async {
        let scope = CancelScope::new();
        let h = scope.handle();
        let r = scope
            .run(async {
                h.cancel();
                Ok::<_, Cancelled>("no checkpoint ran")
            })
            .await;
        assert_eq!(r, Ok(Some("no checkpoint ran")));
        assert!(h.cancel_called());
        assert!(!h.cancelled_caught());
        hatchery::lowlevel::checkpoint().await.unwrap();
    });
}

#[test]
fn effective_deadline_is_the_minimum_up_to_a_shield_s4_11() {
    testing::run(async {
        assert_eq!(current_effective_deadline(), None);
        let r = move_on_after(secs(5), async {
            assert_eq!(current_effective_deadline(), Some(at(5)));
            move_on_after(secs(10), async {
                assert_eq!(current_effective_deadline(), Some(at(5)));
                CancelScope::new()
                    .with_timeout(secs(20))
                    .shielded()
                    .run(async {
                        assert_eq!(current_effective_deadline(), Some(at(20)));
                        Ok::<_, Cancelled>(())
                    })
                    .await?;
                Ok::<_, Cancelled>(())
            })
            .await?;
            let s = CancelScope::new();
            s.handle().cancel();
            s.run(async {
                assert_eq!(current_effective_deadline(), Some(Instant::ZERO));
                Ok::<_, Cancelled>(())
            })
            .await?;
            Ok::<_, Cancelled>(())
        })
        .await;
        assert_eq!(r, Ok(Some(())));
    });
}

#[test]
fn first_reason_wins_s4_15() {
    testing::run(async {
        let scope = CancelScope::new().with_timeout(secs(1));
        let h = scope.handle();
        let r = scope
            .run(async {
                h.cancel_with_reason("first");
                h.cancel_with_reason("second");
                let e = sleep(secs(5)).await.unwrap_err();
                assert_eq!(e.source(), CancelSource::Explicit);
                assert_eq!(e.reason(), Some("first"));
                assert_eq!(e.to_string(), "cancelled due to explicit cancel with reason 'first'");
                Err::<(), _>(e)
            })
            .await;
        assert_eq!(r, Ok(None));
    });
}

#[test]
fn cancelled_round_trips_through_io_error() {
    testing::run(async {
        let r: Result<Option<()>, std::io::Error> = move_on_after(secs(1), async {
            sleep(secs(2)).await?; // Cancelled -> io::Error
            Ok::<_, std::io::Error>(())
        })
        .await;
        assert_eq!(r.unwrap(), None, "the scope recognised its Cancelled inside io::Error");
        // A Cancelled inside an io::Error is found again, and the scope absorbs it.
        let s = CancelScope::new();
        s.handle().cancel();
        let r = s
            .run(async {
                let e = std::io::Error::from(hatchery::lowlevel::checkpoint_if_cancelled().unwrap_err());
                assert_eq!(Cancelled::from_io(&e).map(|c| c.source()), Some(CancelSource::Explicit));
                Err::<(), _>(e)
            })
            .await;
        assert!(r.unwrap().is_none());
    });
}

#[test]
fn nested_timeouts_compose_s5_3() {
    let log = Log::new();
    testing::run(async {
        let r = move_on_after(secs(5), async {
            // The inner scope is not the one that was cancelled: it passes the error on, and `?`
            // skips the code between the two exits, as the exception does in Trio.
            move_on_after(secs(10), async {
                sleep(secs(20)).await?;
                Ok::<_, Cancelled>(())
            })
            .await?;
            log.push("between the exits");
            Ok::<_, Cancelled>(())
        })
        .await;
        assert_eq!(r, Ok(None));
        assert_eq!(now(), at(5));
    });
    assert_eq!(log.take(), Vec::<String>::new(), "code between the two exits did not run");
}

#[test]
fn fail_after_raises_too_slow_only_if_interrupted_s5_2() {
    testing::run(async {
        let r: Result<(), Error> = fail_after(secs(1), async {
            sleep(secs(2)).await?;
            Ok(())
        })
        .await;
        assert!(matches!(r, Err(Error::TooSlow(_))));
        assert_eq!(now(), at(1));
        // The deadline passes but nothing checkpoints inside: the value is returned.
        let r: Result<u8, Error> = fail_after(Duration::ZERO, async { Ok(5) }).await;
        assert_eq!(r.unwrap(), 5);
        let r: Result<(), std::io::Error> = fail_after(secs(1), async {
            sleep(secs(2)).await?;
            Ok(())
        })
        .await;
        assert_eq!(r.unwrap_err().kind(), std::io::ErrorKind::TimedOut);
    });
}

#[test]
fn fail_after_with_shield_ignores_outer_cancel() {
    testing::run(async {
        let outer = CancelScope::new();
        let oh = outer.handle();
        let r = outer
            .run(async {
                oh.cancel();
                let r: Result<(), Error> = CancelScope::new()
                    .shielded()
                    .run(fail_after(secs(3), async {
                        sleep(secs(10)).await?;
                        Ok(())
                    }))
                    .await
                    .map(|o| o.unwrap_or(()));
                assert!(matches!(r, Err(Error::TooSlow(_))));
                assert_eq!(now(), at(3));
                Ok::<_, Error>(())
            })
            .await;
        assert!(matches!(r, Ok(Some(()))));
    });
}

use std::time::Duration;

#[test]
fn five_thousand_nested_scopes_do_not_overflow_s4_12() {
    fn nest(d: u32) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<u32, Cancelled>>>> {
        Box::pin(async move {
            if d == 0 {
                sleep_forever().await?;
                return Ok(0);
            }
            Ok(CancelScope::new().run(nest(d - 1)).await?.unwrap_or(0) + 1)
        })
    }
    // Polling 5,000 nested futures recurses 5,000 polls deep in any Rust runtime, so give the
    // thread room for that; what this checks is that hatchery's own cancel machinery (status
    // walks, wake-up collection, scope exit) does not recurse on top of it.
    let r = std::thread::Builder::new()
        .stack_size(512 << 20)
        .spawn(|| {
            testing::run(async {
                let r = move_on_after(secs(1), nest(5000)).await;
                (r, current_effective_deadline(), now())
            })
        })
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(r, (Ok(None), None, at(1)));
}

/// A nursery's scope lives in its tree node until a handle is asked for; the first handle moves
/// it out to be shared. Everything set before (the deadline from an inner `set_deadline` through
/// the first handle) survives the move, later handles see the same state, and the outcome is
/// readable after the nursery is gone.
#[test]
fn nursery_scope_shared_on_first_handle_keeps_its_state() {
    testing::run(async {
        let kept = std::cell::RefCell::new(None);
        let r = nursery(async |n| {
            let h1 = n.cancel_scope();
            h1.set_deadline(at(7));
            let h2 = n.cancel_scope();
            assert_eq!(h2.deadline(), Some(at(7)));
            assert!(h2.is_running() && !h2.cancel_called());
            *kept.borrow_mut() = Some(h2);
            sleep_forever().await?;
            Ok::<_, Cancelled>(())
        })
        .await;
        // The deadline cancelled the body and the nursery absorbed it.
        assert!(matches!(r, Ok(None)), "{r:?}");
        let h = kept.take().expect("handle kept");
        assert!(h.cancelled_caught() && h.cancel_called() && !h.is_running());
        assert_eq!(now(), at(7));
    });
    // A scope given a handle before entry shares one state with it from the start.
    testing::run(async {
        let scope = CancelScope::new().with_timeout(secs(3));
        let h = scope.handle();
        let scope = scope.shielded();
        assert!(h.shield(), "a setting made after the handle reaches it");
        let r = scope.run(async { sleep_forever().await.map(|_| ()) }).await;
        assert_eq!(r, Ok(None));
        assert!(h.cancelled_caught() && h.cancel_called() && !h.is_running());
        assert_eq!(h.deadline(), Some(at(3)));
        assert_eq!(now(), at(3));
    });
}

#[test]
fn cancel_called_that_saw_the_deadline_pass_stays_true_s4_4() {
    testing::run(async {
        let scope = CancelScope::new();
        let h = scope.handle();
        let r = scope
            .run(async {
                h.set_deadline(hatchery::now());
                assert!(h.cancel_called());
                // Moving the deadline later does not un-cancel what was reported cancelled.
                h.set_deadline(Instant::MAX);
                assert!(h.cancel_called());
                hatchery::lowlevel::checkpoint().await?;
                Ok::<_, Cancelled>(())
            })
            .await;
        assert_eq!(r, Ok(None));
        assert!(h.cancelled_caught());
    });
}

/// A scope not entered yet whose deadline has passed reports `cancel_called()` (S4.4, last
/// bullet), and entering it then cancels what runs in it at once.
#[test]
fn an_unentered_scope_past_its_deadline_reports_cancel_called_s4_4() {
    testing::run(async {
        let scope = CancelScope::new().with_deadline(at(1));
        let h = scope.handle();
        assert!(!h.cancel_called());
        sleep(secs(2)).await.unwrap();
        assert!(h.cancel_called(), "the deadline passed before entry");
        let r = scope.run(async { hatchery::lowlevel::checkpoint().await }).await;
        assert_eq!(r, Ok(None));
        assert!(h.cancelled_caught());
        assert_eq!(now(), at(2));
    });
}

/// `fail_after(ZERO, send)` into a channel with room fails with `TooSlow` and sends nothing:
/// the deadline is already due at entry, so the send's cancel point fires before it acts (S2.3,
/// Trio #1626).
#[test]
fn fail_after_zero_around_a_send_with_room_sends_nothing_s2_3() {
    testing::run(async {
        let (tx, rx) = hatchery::channel::<u32>(1);
        let r =
            hatchery::fail_after(Duration::ZERO, async { tx.send(5).await.map_err(hatchery::Error::from) })
                .await;
        assert!(matches!(r, Err(hatchery::Error::TooSlow(_))), "{r:?}");
        assert_eq!(rx.try_recv(), Err(hatchery::TryRecvError::Empty));
        // A deadline that passes during synchronous work after entry: the fast-path send that
        // follows still sees it at its cancel point and sends nothing.
        let r = hatchery::fail_after(secs(1), async {
            sleep(secs(1)).await.ok(); // wakes exactly at the deadline: cancelled or not, go on
            tx.send(6).await.map_err(hatchery::Error::from)
        })
        .await;
        assert!(matches!(r, Err(hatchery::Error::TooSlow(_))), "{r:?}");
        assert_eq!(rx.try_recv(), Err(hatchery::TryRecvError::Empty));
    });
}

#[test]
fn a_huge_timeout_means_no_deadline_at_any_time() {
    // At virtual time 0 and later alike: `Duration::MAX` saturates to "never", so the autojump
    // has nothing to jump to and the scope is never cancelled by it.
    testing::run(async {
        for _ in 0..2 {
            let scope = CancelScope::new().with_timeout(Duration::MAX);
            let h = scope.handle();
            let r = scope.run(async { Ok::<_, Cancelled>(hatchery::current_effective_deadline()) }).await;
            assert_eq!(r, Ok(Some(None)));
            assert_eq!(h.deadline(), None);
            sleep(secs(1)).await.unwrap();
        }
    });
}

#[test]
fn cancelling_a_scope_entered_in_an_ended_run_is_harmless() {
    let scope = CancelScope::new();
    let h = scope.handle();
    let mut fut = Box::pin(scope.run(async {
        hatchery::sleep_forever().await?;
        Ok::<_, Cancelled>(())
    }));
    // Entered in one run, carried out of it while entered.
    #[expect(clippy::async_yields_async, reason = "the scope's future is carried out of the run")]
    let fut = testing::run(async move {
        assert!(support::poll_once(fut.as_mut()).await.is_pending());
        fut
    });
    assert!(h.is_running());
    h.cancel(); // no run: the ended run's tree must not count it...
    assert!(h.cancel_called());
    drop(fut); // ...nor uncount it on exit (this was an overflow)
    // The same in another run.
    let scope = CancelScope::new();
    let h = scope.handle();
    let mut fut = Box::pin(scope.run(async {
        hatchery::sleep_forever().await?;
        Ok::<_, Cancelled>(())
    }));
    #[expect(clippy::async_yields_async, reason = "the scope's future is carried into the next run")]
    let fut = testing::run(async move {
        assert!(support::poll_once(fut.as_mut()).await.is_pending());
        fut
    });
    testing::run(async move {
        h.cancel();
        drop(fut);
        // This run's own cancellations still work.
        let r = move_on_after(secs(1), async {
            sleep(secs(5)).await?;
            Ok::<_, Cancelled>(())
        })
        .await;
        assert_eq!(r, Ok(None));
    });
}

#[test]
fn cancel_called_does_not_judge_a_scope_by_another_runs_clock() {
    // Entered in one run with a deadline at 5 s, carried into a later run whose clock reads
    // 10 s: that clock says nothing about the scope, which must not be cancelled by the getter.
    let scope = CancelScope::new().with_deadline(at(5));
    let h = scope.handle();
    let mut fut = Box::pin(scope.run(async {
        hatchery::sleep_forever().await?;
        Ok::<_, Cancelled>(())
    }));
    #[expect(clippy::async_yields_async, reason = "the scope's future is carried into the next run")]
    let fut = testing::run(async move {
        assert!(support::poll_once(fut.as_mut()).await.is_pending());
        fut
    });
    testing::run(async move {
        sleep(secs(10)).await.unwrap();
        assert!(!h.cancel_called());
        drop(fut);
        assert!(!h.cancel_called(), "still not cancelled");
    });
}
