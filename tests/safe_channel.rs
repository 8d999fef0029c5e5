//! `sync::generate`, Trio's `as_safe_channel` (S6.11): a lazy producer task feeding a consumer.
//! Laziness (the exact order of requests and computations), the consumer ending or failing,
//! the producer ending, failing or panicking, nothing lost or duplicated under cancellation
//! (drop counts), the `Stream`, borrowing, closing early, and no registration left behind.

mod support;

use std::cell::{Cell, RefCell};
use std::iter;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

use hatchery::lowlevel::checkpoint;
use hatchery::sync::{Yielder, generate};
use hatchery::testing::{self, live_tasks, registrations};
use hatchery::{
    CancelError, CancelScope, CancelSource, Cancelled, Error, RecvError, move_on_after, now, nursery, sleep,
};
use support::{DropCounter, Log, TestError, at, cancelled_scope, next, poll_once, secs};

const CONSUMER_DONE: &str = "generate: the consumer is done";

impl From<RecvError> for TestError {
    /// Only cancellations are expected to travel this way in these tests.
    fn from(e: RecvError) -> Self {
        match e {
            RecvError::Cancelled(c) => TestError::Cancelled(c),
            other => panic!("unexpected receive error: {other:?}"),
        }
    }
}

/// The producer of several tests: `yield_`s the items of `items`, each after `period`, until
/// they run out (`Ok`) or the producer is cancelled (that cancellation).
async fn yield_every<T>(
    y: &mut Yielder<T>,
    period: Duration,
    items: impl IntoIterator<Item = T>,
) -> Result<(), Cancelled> {
    for item in items {
        sleep(period).await?;
        y.yield_(item).await?;
    }
    Ok(())
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned()).unwrap()
}

// ---- laziness ----

#[test]
fn the_producer_computes_each_item_only_when_the_consumer_asks_for_it_s6_11() {
    let log = Log::new();
    let total = testing::run(async {
        generate(
            async |y| {
                log.push(format!("start at {:?}", now()));
                for i in 0..3u64 {
                    sleep(secs(1)).await?;
                    log.push(format!("computed {i} at {:?}", now()));
                    y.yield_(i).await?;
                    log.push(format!("resumed after {i} at {:?}", now()));
                }
                log.push(format!("producer returns at {:?}", now()));
                Ok::<_, Error>(())
            },
            async |items| {
                sleep(secs(10)).await?;
                let mut sum = 0;
                loop {
                    log.push(format!("ask at {:?}", now()));
                    match items.recv().await {
                        Ok(v) => {
                            log.push(format!("got {v} at {:?}", now()));
                            sum += v;
                            sleep(secs(5)).await?;
                        }
                        Err(e) => {
                            assert_eq!(e, RecvError::EndOfChannel);
                            log.push(format!("end at {:?}", now()));
                            // The end stays the end.
                            assert_eq!(items.recv().await, Err(RecvError::EndOfChannel));
                            return Ok(sum);
                        }
                    }
                }
            },
        )
        .await
    });
    assert_eq!(total.unwrap(), 3);
    let t = |s: u64| format!("{:?}", at(s));
    assert_eq!(
        log.take(),
        [
            format!("ask at {}", t(10)),
            format!("start at {}", t(10)),
            format!("computed 0 at {}", t(11)),
            format!("got 0 at {}", t(11)),
            format!("ask at {}", t(16)),
            format!("resumed after 0 at {}", t(16)),
            format!("computed 1 at {}", t(17)),
            format!("got 1 at {}", t(17)),
            format!("ask at {}", t(22)),
            format!("resumed after 1 at {}", t(22)),
            format!("computed 2 at {}", t(23)),
            format!("got 2 at {}", t(23)),
            format!("ask at {}", t(28)),
            format!("resumed after 2 at {}", t(28)),
            format!("producer returns at {}", t(28)),
            format!("end at {}", t(28)),
        ]
    );
}

#[test]
fn a_consumer_that_never_asks_never_starts_the_producer_s6_11() {
    let drops = DropCounter::new();
    let token = drops.token();
    let ran_cell = Cell::new(false);
    let ran = &ran_cell;
    testing::run(async {
        let base = registrations();
        let r = generate(
            async move |y| {
                let _captured = &token;
                ran.set(true);
                y.yield_(1).await?;
                Ok::<_, Error>(())
            },
            async |_items| {
                sleep(secs(3)).await?;
                Ok(7)
            },
        )
        .await;
        assert_eq!(r.unwrap(), 7);
        assert_eq!(now(), at(3));
        assert_eq!(registrations(), base);
    });
    assert!(!ran_cell.get(), "the producer's body never ran");
    assert_eq!(drops.count(), 1, "its closure was dropped once");
}

// ---- the consumer is done: the producer is cancelled ----

#[test]
fn returning_early_cancels_the_producer_whose_cleanup_runs_before_the_call_returns_s6_11() {
    let log = Log::new();
    let got = testing::run(async {
        let base = (registrations(), live_tasks());
        let r = generate(
            async |y| {
                let c = yield_every(y, secs(1), 0..).await.unwrap_err();
                log.push(format!("producer cancelled at {:?}: {:?} {:?}", now(), c.source(), c.reason()));
                // Cleanup that needs time: shielded from the cancellation.
                CancelScope::new().shielded().run(sleep(secs(2))).await?;
                log.push(format!("cleanup done at {:?}", now()));
                Err::<(), _>(Error::from(c))
            },
            async |items| {
                let mut got = Vec::new();
                for _ in 0..3 {
                    got.push(items.recv().await?);
                }
                log.push(format!("consumer done at {:?}", now()));
                Ok::<_, Error>(got)
            },
        )
        .await;
        log.push(format!("generate returned at {:?}", now()));
        assert_eq!((registrations(), live_tasks()), base);
        r
    });
    assert_eq!(got.unwrap(), [0, 1, 2], "the producer's cancellation was absorbed");
    assert_eq!(
        log.take(),
        [
            format!("consumer done at {:?}", at(3)),
            format!(
                "producer cancelled at {:?}: {:?} {:?}",
                at(3),
                CancelSource::Explicit,
                Some(CONSUMER_DONE)
            ),
            format!("cleanup done at {:?}", at(5)),
            format!("generate returned at {:?}", at(5)),
        ]
    );
}

#[test]
fn a_shielded_yield_still_ends_when_the_consumer_is_done_with_the_same_source_and_reason_s6_11() {
    let log = Log::new();
    let got = testing::run(async {
        generate(
            async |y| {
                // The shield hides the producer scope's cancellation from the yield, which still
                // ends once the consumer is done, with that cancellation's source and reason.
                let c = CancelScope::new().shielded().run(y.yield_("only")).await.unwrap_err();
                log.push(format!("producer: {:?} {:?} at {:?}", c.source(), c.reason(), now()));
                Err::<(), _>(Error::from(c))
            },
            async |items| {
                let v = items.recv().await?;
                sleep(secs(1)).await?;
                Ok::<_, Error>(v)
            },
        )
        .await
    });
    assert_eq!(got.unwrap(), "only", "the producer's own scope absorbed the cancellation");
    assert_eq!(
        log.take(),
        [format!("producer: {:?} {:?} at {:?}", CancelSource::Explicit, Some(CONSUMER_DONE), at(1))]
    );
}

#[test]
fn a_consumer_error_cancels_the_producer_and_comes_out_s6_11() {
    let seen = RefCell::new(None);
    let r = testing::run(async {
        generate(
            async |y| {
                let r = y.yield_(1).await;
                *seen.borrow_mut() = Some((r.clone(), now()));
                Ok::<_, TestError>(r?)
            },
            async |items| {
                items.recv().await?;
                sleep(secs(2)).await?;
                Err::<(), _>(TestError::Boom(1))
            },
        )
        .await
    });
    assert_eq!(r.unwrap_err().into_errors(), [TestError::Boom(1)]);
    let (r, when) = seen.into_inner().unwrap();
    assert_eq!(when, at(2));
    assert_eq!(r.unwrap_err().source(), CancelSource::Nursery, "the nursery's failure policy");
}

#[test]
fn a_consumer_panic_cancels_the_producer_runs_its_cleanup_and_resumes_s6_11() {
    let log = Log::new();
    let r = catch_unwind(AssertUnwindSafe(|| {
        testing::run(async {
            generate(
                async |y| {
                    let r = y.yield_(1).await;
                    log.push(format!("producer: {:?} at {:?}", r.as_ref().map_err(|c| c.source()), now()));
                    Ok::<_, Error>(r?)
                },
                async |items| {
                    items.recv().await?;
                    sleep(secs(1)).await?;
                    if now() == at(1) {
                        panic!("consumer exploded");
                    }
                    Ok(())
                },
            )
            .await
        })
    }));
    assert_eq!(panic_text(&*r.unwrap_err()), "consumer exploded");
    // The nursery's cancellation (for the panic) encloses the producer's own scope's.
    assert_eq!(log.take(), [format!("producer: {:?} at {:?}", Err::<(), _>(CancelSource::Nursery), at(1))]);
}

#[test]
fn closing_the_items_cancels_the_producer_while_the_consumer_goes_on_s6_11() {
    let log = Log::new();
    let drops = DropCounter::new();
    let r = testing::run(async {
        generate(
            async |y| {
                let r = yield_every(y, secs(2), iter::repeat_with(|| drops.token())).await;
                let why = r.as_ref().map_err(|c| (c.source(), c.reason()));
                log.push(format!("producer stopped at {:?}, {} dropped: {why:?}", now(), drops.count()));
                r.map_err(Error::from)
            },
            async |items| {
                drop(items.recv().await?); // taken at 2 s and dropped
                // Gives up at 3 s; the item it asked for is handed over at 4 s, never taken.
                assert!(move_on_after(secs(1), items.recv()).await?.is_none());
                sleep(secs(2)).await?;
                assert!(!items.is_closed());
                items.close();
                items.close(); // idempotent
                assert!(items.is_closed());
                log.push(format!("closed at {:?}, {} dropped", now(), drops.count()));
                assert!(matches!(items.recv().await, Err(RecvError::Closed)));
                sleep(secs(10)).await?;
                log.push(format!("consumer returns at {:?}", now()));
                Ok::<_, Error>("done")
            },
        )
        .await
    });
    assert_eq!(r.unwrap(), "done");
    assert_eq!(
        log.take(),
        [
            format!("closed at {:?}, 2 dropped", at(5)),
            format!(
                "producer stopped at {:?}, 2 dropped: {:?}",
                at(5),
                Err::<&(), _>((CancelSource::Explicit, Some(CONSUMER_DONE)))
            ),
            format!("consumer returns at {:?}", at(15)),
        ]
    );
    assert_eq!(drops.count(), 2, "each item dropped exactly once");
}

// ---- the producer ends or fails ----

#[test]
fn a_producer_error_cancels_the_consumer_and_comes_out_s6_11() {
    let log = Log::new();
    let r = testing::run(async {
        generate(
            async |y| {
                y.yield_(1).await?;
                sleep(secs(2)).await?;
                Err(TestError::Boom(7))
            },
            async |items| {
                assert_eq!(items.recv().await?, 1);
                let e = items.recv().await.unwrap_err();
                log.push(format!("{:?} at {:?}", e.cancelled().map(|c| (c.source(), c.reason())), now()));
                // Not an end of the items: later receives are cancelled too.
                assert!(matches!(items.recv().await, Err(RecvError::Cancelled(_))));
                assert!(matches!(next(items).await, Some(Err(RecvError::Cancelled(_)))));
                Err::<u32, _>(e.into())
            },
        )
        .await
    });
    assert_eq!(
        r.unwrap_err().into_errors(),
        [TestError::Boom(7)],
        "the consumer's cancellation was absorbed"
    );
    assert_eq!(
        log.take(),
        [format!("{:?} at {:?}", Some((CancelSource::Nursery, Some("a child task failed"))), at(2))]
    );
}

#[test]
fn an_error_in_the_producers_cleanup_after_the_consumer_left_still_comes_out_s6_11() {
    let r = testing::run(async {
        generate(
            async |y| {
                assert!(y.yield_(1).await.is_err());
                Err::<(), _>(TestError::Boom(3))
            },
            async |items| Ok(items.recv().await?),
        )
        .await
    });
    assert_eq!(r.unwrap_err().into_errors(), [TestError::Boom(3)], "the consumer's value is lost");
}

#[test]
fn a_producer_panic_cancels_the_consumer_and_resumes_s6_11() {
    let log = Log::new();
    let r = catch_unwind(AssertUnwindSafe(|| {
        testing::run(async {
            generate(
                async |y| {
                    y.yield_(1).await?;
                    sleep(secs(1)).await?;
                    if now() == at(1) {
                        panic!("producer exploded");
                    }
                    Ok::<_, Error>(())
                },
                async |items| {
                    items.recv().await?;
                    let r = items.recv().await;
                    log.push(format!(
                        "{:?} at {:?}",
                        r.as_ref().map_err(|e| e.cancelled().map(|c| c.source())),
                        now()
                    ));
                    Ok(r?)
                },
            )
            .await
        })
    }));
    assert_eq!(panic_text(&*r.unwrap_err()), "producer exploded");
    assert_eq!(log.take(), [format!("{:?} at {:?}", Err::<u32, _>(Some(CancelSource::Nursery)), at(1))]);
}

#[test]
fn a_shielded_receive_learns_of_a_producer_failure_instead_of_waiting_forever_s6_11() {
    let r = testing::run(async {
        generate(
            async |y| {
                y.yield_(1).await?;
                sleep(secs(1)).await?;
                Err(TestError::Boom(2))
            },
            async |items| {
                items.recv().await?;
                let r = CancelScope::new()
                    .shielded()
                    .run(async { Ok::<_, TestError>(items.recv().await) })
                    .await?;
                assert_eq!(r, Some(Err(RecvError::Closed)));
                assert_eq!(now(), at(1));
                Ok(())
            },
        )
        .await
    });
    assert_eq!(r.unwrap_err().into_errors(), [TestError::Boom(2)]);
}

#[test]
fn a_stale_cancellation_returned_by_the_producer_still_comes_out_s6_11() {
    // A `Cancelled` kept from a scope that is long gone: no scope around `generate` asked for
    // it, so it must not vanish (the nursery alone would absorb it, having cancelled itself).
    let r = testing::run(async {
        generate(
            async |y| {
                let mut kept = None;
                let _ = cancelled_scope()
                    .run(async {
                        let r = checkpoint().await;
                        kept = r.clone().err();
                        r
                    })
                    .await;
                y.yield_(1).await?;
                Err(kept.unwrap().into())
            },
            async |items| {
                items.recv().await?;
                items.recv().await?;
                Ok::<_, Error>(())
            },
        )
        .await
    });
    let errors = r.unwrap_err().into_errors();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].cancelled().map(|c| c.source()), Some(CancelSource::Nursery));
}

// ---- nothing lost, nothing duplicated ----

#[test]
fn a_receive_cancelled_while_the_producer_computes_loses_nothing_s6_11() {
    let computed = Log::new();
    let drops = DropCounter::new();
    let got = testing::run(async {
        generate(
            async |y| {
                for i in 0..3 {
                    sleep(secs(2)).await?;
                    computed.push(format!("{i} at {:?}", now()));
                    y.yield_((i, drops.token())).await?;
                }
                Ok::<_, Error>(())
            },
            async |items| {
                let mut got = Vec::new();
                // Gives up at 1 s; the producer goes on with item 0 (it was asked for).
                assert!(move_on_after(secs(1), items.recv()).await?.is_none());
                assert_eq!(now(), at(1));
                sleep(secs(5)).await?;
                assert_eq!(computed.take(), [format!("0 at {:?}", at(2))], "nothing computed ahead");
                // The next receive gets item 0 at once: no second request, no duplicate.
                let (v, _token) = items.recv().await?;
                got.push((v, now()));
                // A receive dropped while it waits leaves its request too.
                {
                    let mut fut = pin!(items.recv());
                    assert!(poll_once(fut.as_mut()).await.is_pending());
                }
                sleep(secs(3)).await?;
                assert_eq!(computed.take(), [format!("1 at {:?}", at(8))]);
                while let Some(item) = next(items).await {
                    got.push((item?.0, now()));
                }
                assert_eq!(computed.take(), [format!("2 at {:?}", at(11))]);
                Ok(got)
            },
        )
        .await
    });
    assert_eq!(got.unwrap(), [(0, at(6)), (1, at(9)), (2, at(11))]);
    assert_eq!(drops.count(), 3);
}

#[test]
fn a_stream_wait_cancelled_while_the_producer_computes_loses_nothing_s6_11() {
    let got = testing::run(async {
        generate(
            async |y| {
                yield_every(y, secs(2), 0..2).await?;
                Ok::<_, Error>(())
            },
            async |items| {
                let first =
                    move_on_after(secs(1), async { Ok::<_, Error>(next(items).await.transpose()?) }).await?;
                assert!(first.is_none());
                let mut got = Vec::new();
                while let Some(v) = next(items).await {
                    got.push((v?, now()));
                }
                // After the end, still the end.
                assert!(next(items).await.is_none());
                Ok(got)
            },
        )
        .await
    });
    assert_eq!(got.unwrap(), [(0, at(2)), (1, at(4))]);
}

#[test]
fn a_receive_dropped_during_its_schedule_point_gives_the_item_back_s6_11() {
    // A budget of 0: every schedule point yields, so the future can be dropped there.
    let got = testing::builder().yield_budget(0).run(async {
        generate(
            async |y| {
                sleep(secs(2)).await?;
                y.yield_(10).await?;
                y.yield_(20).await?;
                Ok::<_, Error>(())
            },
            async |items| {
                // Leave item 10 waiting: a receive that gives up before it is handed over.
                assert!(move_on_after(secs(1), items.recv()).await?.is_none());
                sleep(secs(2)).await?;
                {
                    let mut fut = pin!(items.recv());
                    assert!(poll_once(fut.as_mut()).await.is_pending(), "took 10, now yielding");
                } // dropped there
                let a = items.recv().await?;
                let b = items.recv().await?;
                Ok((a, b))
            },
        )
        .await
    });
    assert_eq!(got.unwrap(), (10, 20));
}

#[test]
fn an_item_handed_over_and_never_taken_is_dropped_once_when_the_consumer_is_done_s6_11() {
    let drops = DropCounter::new();
    let log = Log::new();
    let r = testing::run(async {
        generate(
            async |y| {
                let r = yield_every(y, secs(2), iter::repeat_with(|| drops.token())).await;
                log.push(format!("producer cancelled at {:?}, {} dropped", now(), drops.count()));
                r.map_err(Error::from)
            },
            async |items| {
                drop(items.recv().await?);
                assert!(move_on_after(secs(1), items.recv()).await?.is_none());
                sleep(secs(5)).await?; // item 2 was handed over at 4 s
                log.push(format!("consumer returns at {:?}, {} dropped", now(), drops.count()));
                Ok::<_, Error>(())
            },
        )
        .await
    });
    r.unwrap();
    assert_eq!(
        log.take(),
        [
            format!("consumer returns at {:?}, 1 dropped", at(8)),
            format!("producer cancelled at {:?}, 2 dropped", at(8))
        ]
    );
    assert_eq!(drops.count(), 2);
}

#[test]
fn a_yield_in_a_cancelled_scope_hands_nothing_and_drops_its_value_once_s6_11() {
    let drops = DropCounter::new();
    let got = testing::run(async {
        generate(
            async |y| {
                let r = cancelled_scope().run(y.yield_(("never", drops.token()))).await;
                assert_eq!(r.map(|v| v.is_some()), Ok(false), "cancelled, absorbed by its scope");
                assert_eq!(drops.count(), 1, "the value was dropped at once");
                y.yield_(("delivered", drops.token())).await?;
                Ok::<_, Cancelled>(())
            },
            async |items| {
                let mut got = Vec::new();
                while let Ok((v, _token)) = items.recv().await {
                    got.push(v);
                }
                Ok(got)
            },
        )
        .await
    });
    assert_eq!(got.unwrap(), ["delivered"]);
    assert_eq!(drops.count(), 2);
}

#[test]
fn a_yield_cancelled_after_handing_over_keeps_the_item_for_the_consumer_s6_11() {
    let log = Log::new();
    let got = testing::run(async {
        generate(
            async |y| {
                // Hands 1 over at once, then waits for the next request, gives up at 1 s.
                let r = move_on_after(secs(1), y.yield_(1)).await?;
                log.push(format!("first yield: {r:?} at {:?}", now()));
                // Nobody asked since: this one waits for a request before handing 2 over.
                y.yield_(2).await?;
                log.push(format!("second yield returned at {:?}", now()));
                Ok::<_, Error>(())
            },
            async |items| {
                let a = items.recv().await?;
                sleep(secs(3)).await?;
                let b = items.recv().await?;
                log.push(format!("got {a}, {b} at {:?}", now()));
                let end = items.recv().await;
                Ok((a, b, end))
            },
        )
        .await
    });
    assert_eq!(got.unwrap(), (1, 2, Err(RecvError::EndOfChannel)));
    assert_eq!(
        log.take(),
        [
            format!("first yield: None at {:?}", at(1)),
            format!("got 1, 2 at {:?}", at(3)),
            format!("second yield returned at {:?}", at(3)),
        ]
    );
}

// ---- cancellation from outside, the Stream, borrowing, nesting ----

#[test]
fn cancelling_the_caller_cancels_both_sides_s6_11() {
    let log = Log::new();
    let r = testing::run(async {
        let base = registrations();
        let r = move_on_after(
            secs(5),
            generate(
                async |y| {
                    let r = yield_every(y, secs(2), iter::repeat(())).await;
                    log.push(format!("producer: {:?} at {:?}", r.as_ref().map_err(|c| c.source()), now()));
                    r.map_err(Error::from)
                },
                async |items| {
                    let mut n = 0;
                    let r: Result<(), Error> = async {
                        loop {
                            items.recv().await?;
                            n += 1;
                        }
                    }
                    .await;
                    let why = r.as_ref().map_err(|e| e.cancelled().map(|c| c.source()));
                    log.push(format!("consumer: {n} items, {why:?} at {:?}", now()));
                    r
                },
            ),
        )
        .await;
        assert_eq!(registrations(), base);
        r
    });
    assert!(matches!(r, Ok(None)), "the caller's scope absorbed both cancellations");
    let mut l = log.take();
    l.sort();
    assert_eq!(
        l,
        [
            format!("consumer: 2 items, {:?} at {:?}", Err::<(), _>(Some(CancelSource::Deadline)), at(5)),
            format!("producer: {:?} at {:?}", Err::<(), _>(CancelSource::Deadline), at(5)),
        ]
    );
}

#[test]
fn in_a_cancelled_scope_neither_side_runs_s6_11() {
    let ran = Cell::new(0);
    testing::run(async {
        let r = cancelled_scope()
            .run(generate(
                async |y| {
                    ran.set(ran.get() + 1);
                    y.yield_(1).await
                },
                async |_items| {
                    ran.set(ran.get() + 1);
                    Ok::<_, Cancelled>(())
                },
            ))
            .await;
        assert!(matches!(r, Ok(None)), "{r:?}");
    });
    assert_eq!(ran.get(), 0);
}

#[test]
fn items_is_a_stream_that_ends_when_the_producer_returns_s6_11() {
    let got = testing::run(async {
        generate(
            async |y| {
                for w in ["a", "b", "c"] {
                    y.yield_(w).await?;
                }
                Ok::<_, Error>(())
            },
            async |items| {
                let mut got = Vec::new();
                while let Some(w) = next(items).await {
                    got.push(w?);
                }
                assert!(next(items).await.is_none(), "the stream stays ended");
                assert_eq!(items.recv().await, Err(RecvError::EndOfChannel));
                Ok(got)
            },
        )
        .await
    });
    assert_eq!(got.unwrap(), ["a", "b", "c"]);
}

#[test]
fn the_stream_in_a_cancelled_scope_asks_for_nothing_s6_11() {
    let started = Cell::new(false);
    testing::run(async {
        generate(
            async |y| {
                started.set(true);
                y.yield_(1).await
            },
            async |items| {
                let r = cancelled_scope()
                    .run(async {
                        let r = next(items).await;
                        assert!(matches!(r, Some(Err(RecvError::Cancelled(_)))));
                        Ok::<_, Cancelled>(())
                    })
                    .await;
                assert_eq!(r, Ok(Some(())));
                sleep(secs(1)).await?;
                Ok::<_, Cancelled>(())
            },
        )
        .await
        .unwrap();
    });
    assert!(!started.get(), "no request was made");
}

#[test]
fn both_sides_borrow_from_the_caller_s6_11() {
    let words = vec!["alpha".to_string(), "beta".to_string(), "gamma".to_string()];
    let mut lengths = Vec::new();
    let skipped = Cell::new(0);
    let r = testing::run(async {
        generate(
            async |y| {
                for w in &words {
                    if w.starts_with('b') {
                        skipped.set(skipped.get() + 1);
                        continue;
                    }
                    y.yield_(w.as_str()).await?;
                }
                Ok::<_, Error>(())
            },
            async |items| {
                let mut first = None;
                while let Ok(w) = items.recv().await {
                    lengths.push(w.len());
                    first.get_or_insert(w);
                }
                Ok(first)
            },
        )
        .await
    });
    assert_eq!(r.unwrap(), Some("alpha"));
    assert_eq!(lengths, [5, 5]);
    assert_eq!(skipped.get(), 1);
}

#[test]
fn the_producer_may_yield_from_inside_nurseries_and_cancel_scopes_s6_11() {
    let log = Log::new();
    let got = testing::run(async {
        generate(
            async |y| {
                nursery(async |n| {
                    n.start_soon(async {
                        sleep(secs(1)).await?;
                        log.push(format!("sibling done at {:?}", now()));
                        Ok::<_, Error>(())
                    });
                    n.start_soon(async move {
                        y.yield_(1).await?;
                        move_on_after(secs(100), async { y.yield_(2).await }).await?;
                        CancelScope::new().shielded().run(async { y.yield_(3).await }).await?;
                        Ok(())
                    });
                    Ok(())
                })
                .await?;
                log.push(format!("producer returns at {:?}", now()));
                Ok::<_, Error>(())
            },
            async |items| {
                let mut got = Vec::new();
                while let Some(v) = next(items).await {
                    got.push(v?);
                    sleep(secs(1)).await?;
                }
                Ok(got)
            },
        )
        .await
    });
    assert_eq!(got.unwrap(), [1, 2, 3]);
    assert_eq!(
        log.take(),
        [format!("sibling done at {:?}", at(1)), format!("producer returns at {:?}", at(3))]
    );
}

#[test]
fn nested_generators_compose_s6_11() {
    // A producer that consumes another generator: each level asks only for what it needs.
    let inner_computed = Cell::new(0);
    let got = testing::run(async {
        generate(
            async |outer: &mut Yielder<u32>| {
                generate(
                    async |inner| {
                        for i in 1.. {
                            inner_computed.set(i);
                            inner.yield_(i).await?;
                        }
                        Ok::<_, Error>(())
                    },
                    async |numbers| {
                        while let Ok(v) = numbers.recv().await {
                            if v % 2 == 0 {
                                outer.yield_(v * 10).await?;
                            }
                        }
                        Ok(())
                    },
                )
                .await?;
                Ok::<_, Error>(())
            },
            async |evens| {
                let a = evens.recv().await?;
                let b = evens.recv().await?;
                Ok((a, b))
            },
        )
        .await
    });
    assert_eq!(got.unwrap(), (20, 40));
    assert_eq!(inner_computed.get(), 4, "nothing computed beyond what was asked");
}

// ---- property: random consumers against the laziness and no-loss rules ----

/// What the consumer does next.
#[derive(Debug, Clone)]
enum Act {
    Recv,
    /// `recv` under a deadline (seconds).
    RecvWithin(u64),
    /// The `Stream`'s next item under a deadline.
    NextWithin(u64),
    /// Poll a `recv` once, then drop it.
    PollAndDrop,
    Sleep(u64),
    /// Return early.
    Stop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ev {
    /// The consumer starts a receive.
    Ask,
    Got(usize),
    End,
    /// The producer computed an item.
    Computed(usize),
}

fn act() -> impl Strategy<Value = Act> {
    prop_oneof![
        4 => Just(Act::Recv),
        4 => (0..4u64).prop_map(Act::RecvWithin),
        3 => (0..4u64).prop_map(Act::NextWithin),
        2 => Just(Act::PollAndDrop),
        3 => (0..4u64).prop_map(Act::Sleep),
        1 => Just(Act::Stop),
    ]
}

use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(256),
        ..ProptestConfig::default()
    })]

    /// Any mix of plain, timed-out, dropped and `Stream` receives, with any computation times,
    /// scheduling seed and yield budget: the consumer gets 0, 1, 2, ... in order without gaps
    /// or duplicates; item `i` is computed only after item `i - 1` was received and a new
    /// receive began (so never more than one item outside the producer); the end comes only
    /// after every item; every item is dropped exactly once; nothing stays registered.
    #[test]
    fn receives_of_any_kind_get_every_item_once_in_order_and_nothing_early(
        compute in prop::collection::vec(0..3u64, 0..6),
        acts in prop::collection::vec(act(), 0..16),
        seed in any::<u64>(),
        budget in 0..3u32,
    ) {
        let evs = RefCell::new(Vec::new());
        let ev = |e| evs.borrow_mut().push(e);
        let drops = DropCounter::new();
        let n = compute.len();
        let leaked = testing::builder().seed(seed).yield_budget(budget).run(async {
            let base = registrations();
            let r = generate(
                async |y| {
                    for (i, &d) in compute.iter().enumerate() {
                        sleep(secs(d)).await?;
                        ev(Ev::Computed(i));
                        y.yield_((i, drops.token())).await?;
                    }
                    Ok::<_, Error>(())
                },
                async |items| {
                    for a in &acts {
                        let got: Option<Option<usize>> = match *a {
                            Act::Recv => {
                                ev(Ev::Ask);
                                match items.recv().await {
                                    Ok((i, _)) => Some(Some(i)),
                                    Err(RecvError::EndOfChannel) => Some(None),
                                    Err(e) => return Err(e.into()),
                                }
                            }
                            Act::RecvWithin(d) => {
                                ev(Ev::Ask);
                                match move_on_after(secs(d), items.recv()).await {
                                    Ok(r) => r.map(|(i, _)| Some(i)),
                                    Err(RecvError::EndOfChannel) => Some(None),
                                    Err(e) => return Err(e.into()),
                                }
                            }
                            Act::NextWithin(d) => {
                                ev(Ev::Ask);
                                let r = move_on_after(secs(d), async { next(items).await.transpose() });
                                r.await?.map(|item| item.map(|(i, _)| i))
                            }
                            Act::PollAndDrop => {
                                ev(Ev::Ask);
                                let mut fut = pin!(items.recv());
                                match poll_once(fut.as_mut()).await {
                                    Poll::Ready(Ok((i, _))) => Some(Some(i)),
                                    Poll::Ready(Err(RecvError::EndOfChannel)) => Some(None),
                                    Poll::Ready(Err(e)) => return Err(e.into()),
                                    Poll::Pending => None,
                                }
                            }
                            Act::Sleep(d) => {
                                sleep(secs(d)).await?;
                                None
                            }
                            Act::Stop => break,
                        };
                        match got {
                            Some(Some(i)) => ev(Ev::Got(i)),
                            Some(None) => {
                                ev(Ev::End);
                                break;
                            }
                            None => {}
                        }
                    }
                    Ok(())
                },
            )
            .await;
            r.unwrap();
            registrations() != base
        });
        prop_assert!(!leaked, "registrations left behind");
        let evs = evs.into_inner();
        let mut got = Vec::new();
        let mut computed = 0;
        for (k, e) in evs.iter().enumerate() {
            match *e {
                Ev::Computed(i) => {
                    prop_assert_eq!(i, computed);
                    computed += 1;
                    // The request that asked for it came after the previous item was received.
                    let after = if i == 0 {
                        0
                    } else {
                        let g = evs[..k].iter().position(|x| *x == Ev::Got(i - 1));
                        prop_assert!(g.is_some(), "item {} computed before item {} was received: {:?}", i, i - 1, evs);
                        g.unwrap() + 1
                    };
                    prop_assert!(evs[after..k].contains(&Ev::Ask), "item {} computed unasked: {:?}", i, evs);
                }
                Ev::Got(i) => got.push(i),
                Ev::End => prop_assert_eq!(got.len(), n, "the end came early: {:?}", evs),
                Ev::Ask => {}
            }
        }
        let in_order: Vec<usize> = (0..got.len()).collect();
        prop_assert_eq!(got, in_order);
        prop_assert_eq!(drops.count(), computed, "every item dropped exactly once");
    }
}

/// A `Stream` wait abandoned while pending (its `next()` dropped, as by a `select!` whose other
/// branch won), then a `recv` that takes the answer to its request: the next `next()` asks
/// again instead of waiting for an answer to a request nobody made (found in review: a hang).
#[test]
fn a_receive_after_an_abandoned_stream_wait_does_not_strand_the_stream_s6_11() {
    let got = testing::run(async {
        generate(
            async |y| {
                for i in 0..3 {
                    y.yield_(i).await?;
                }
                Ok::<_, Error>(())
            },
            async |items| {
                assert!(poll_once(pin!(next(items))).await.is_pending(), "the producer has not run");
                let a = items.recv().await?;
                let b = next(items).await.expect("the stream ended early")?;
                let c = items.recv().await?;
                Ok((a, b, c))
            },
        )
        .await
    });
    assert_eq!(got.unwrap(), (0, 1, 2));
}
