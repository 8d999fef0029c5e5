//! Memory channels (S6.1–S6.10): rendezvous and bounded semantics, the exact check orders of
//! `try_send`/`try_recv`, fairness, closing and cloning, atomic cancellation, dropped futures,
//! the checkpoint rule, statistics, the `Stream` and the error conversions.

mod support;

use std::cell::{Cell, RefCell};
use std::io;
use std::pin::pin;
use std::rc::Rc;

use hatchery::testing::{self, assert_checkpoints, registrations, wait_all_tasks_blocked};
use hatchery::{
    CancelError, CancelScope, Cancelled, ChannelStatistics, ClosedResource, Error, RecvError, SendError,
    SendErrorKind, TryRecvError, TrySendError, channel, move_on_after, now, nursery, sleep, unbounded,
};
use support::{DropCounter, DropToken, Log, at, next, poll_once, poll_once_foreign, secs};

fn stats(
    buffer_used: usize,
    capacity: Option<usize>,
    open: (usize, usize),
    waiting: (usize, usize),
    peak_buffer_used: usize,
) -> ChannelStatistics {
    ChannelStatistics {
        buffer_used,
        capacity,
        open_senders: open.0,
        open_receivers: open.1,
        tasks_waiting_send: waiting.0,
        tasks_waiting_recv: waiting.1,
        peak_buffer_used,
    }
}

// ---- S6.1 capacity ----

#[test]
fn rendezvous_send_completes_when_the_receiver_arrives_s6_1() {
    let log = Log::new();
    testing::run(async {
        let (tx, rx) = channel::<&str>(0);
        assert_eq!(tx.try_send("x"), Err(TrySendError::Full("x")), "nobody is receiving");
        nursery(async |n| {
            n.start_soon(async {
                tx.send("hello").await?;
                log.push(format!("sent at {:?}", now()));
                Ok::<_, Error>(())
            });
            wait_all_tasks_blocked().await?;
            assert_eq!(tx.statistics(), stats(0, Some(0), (1, 1), (1, 0), 0));
            sleep(secs(5)).await?;
            log.push("receiving");
            assert_eq!(rx.recv().await?, "hello");
            log.push(format!("received at {:?}", now()));
            Ok(())
        })
        .await
        .unwrap();
    });
    let mut l = log.take();
    l[1..].sort();
    assert_eq!(l, ["receiving", &format!("received at {:?}", at(5)), &format!("sent at {:?}", at(5))]);
}

#[test]
fn rendezvous_receiver_first_takes_the_value_at_the_send_instant_s6_1() {
    let got = testing::run(async {
        let (tx, rx) = channel::<u32>(0);
        nursery(async |n| {
            let h = n.spawn(async {
                let v = rx.recv().await?;
                Ok((v, now()))
            });
            sleep(secs(3)).await?;
            assert_eq!(rx.statistics().tasks_waiting_recv, 1);
            // The waiting receiver owns the value: try_send succeeds on a 0-capacity channel.
            tx.try_send(9).unwrap();
            assert_eq!(tx.statistics().buffer_used, 0);
            Ok::<_, Error>(h.await?)
        })
        .await
        .unwrap()
        .unwrap()
    });
    assert_eq!(got, (9, at(3)));
}

#[test]
fn bounded_sends_wait_only_when_full_s6_1() {
    let log = Log::new();
    testing::run(async {
        let (tx, rx) = channel::<u32>(2);
        nursery(async |n| {
            n.start_soon(async {
                for i in 0..3 {
                    tx.send(i).await?;
                    log.push(format!("sent {i} at {:?}", now()));
                }
                Ok::<_, Error>(())
            });
            sleep(secs(4)).await?;
            assert_eq!(rx.statistics(), stats(2, Some(2), (1, 1), (1, 0), 2));
            assert_eq!(rx.recv().await?, 0);
            Ok(())
        })
        .await
        .unwrap();
        assert_eq!(rx.try_recv(), Ok(1));
        assert_eq!(rx.try_recv(), Ok(2));
    });
    assert_eq!(
        log.take(),
        [
            format!("sent 0 at {:?}", at(0)),
            format!("sent 1 at {:?}", at(0)),
            format!("sent 2 at {:?}", at(4))
        ]
    );
}

#[test]
fn unbounded_never_waits_s6_1() {
    testing::run(async {
        let (tx, rx) = unbounded::<u32>();
        for i in 0..10_000 {
            tx.send(i).await.unwrap();
        }
        assert_eq!(now(), at(0));
        assert_eq!(rx.statistics(), stats(10_000, None, (1, 1), (0, 0), 10_000));
        for i in 0..10_000 {
            assert_eq!(rx.try_recv(), Ok(i));
        }
    });
}

// ---- S6.2 / S6.3 check orders ----

#[test]
fn try_send_checks_closed_handle_then_receivers_then_waiting_receiver_then_room_s6_2() {
    testing::run(async {
        // 1. This handle closed wins over "every receiver gone".
        let (tx, rx) = channel::<u32>(1);
        let tx2 = tx.clone();
        drop(rx);
        tx.close();
        assert_eq!(tx.try_send(1), Err(TrySendError::Closed(1)));
        // 2. Every receiver gone.
        assert_eq!(tx2.try_send(2), Err(TrySendError::Disconnected(2)));

        // 3. The longest-waiting receiver gets the value, even with room in the buffer.
        let (tx, rx) = channel::<u32>(5);
        let rx2 = rx.clone();
        nursery(async |n| {
            let first = n.spawn(async { Ok(rx2.recv().await?) });
            wait_all_tasks_blocked().await?;
            let second = n.spawn(async { Ok(rx.recv().await?) });
            wait_all_tasks_blocked().await?;
            tx.try_send(10).unwrap();
            tx.try_send(20).unwrap();
            assert_eq!(tx.statistics().buffer_used, 0, "both went straight to receivers");
            // 4. Room: append. 5. Full.
            for i in 0..5 {
                tx.try_send(i).unwrap();
            }
            assert_eq!(tx.try_send(5), Err(TrySendError::Full(5)));
            assert_eq!((first.await?, second.await?), (10, 20));
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
    });
}

#[test]
fn try_recv_checks_closed_then_waiting_sender_then_buffer_then_end_s6_3() {
    testing::run(async {
        let (tx, rx) = channel::<u32>(1);
        let rx2 = rx.clone();
        tx.try_send(1).unwrap();
        rx2.close();
        // 1. This handle closed, although a value is there.
        assert_eq!(rx2.try_recv(), Err(TryRecvError::Closed));
        nursery(async |n| {
            let sender = n.spawn(async {
                tx.send(2).await?;
                Ok(now())
            });
            wait_all_tasks_blocked().await?;
            // 2. A sender waits: its value goes to the tail, the head comes out, the send completes.
            assert_eq!(rx.try_recv(), Ok(1));
            assert_eq!(rx.statistics(), stats(1, Some(1), (1, 1), (0, 0), 1));
            assert_eq!(sender.await?, at(0));
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
        // 3. The buffer's head; 4. end of channel only once drained; 5. empty.
        assert_eq!(rx.try_recv(), Ok(2));
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
        tx.try_send(3).unwrap();
        drop(tx);
        assert_eq!(rx.try_recv(), Ok(3), "buffered values outlive the senders");
        assert_eq!(rx.try_recv(), Err(TryRecvError::EndOfChannel));
    });
}

#[test]
fn rendezvous_try_recv_takes_from_the_longest_waiting_sender_s6_3() {
    testing::run(async {
        let (tx, rx) = channel::<&str>(0);
        let log = Log::new();
        nursery(async |n| {
            for name in ["a", "b", "c"] {
                let (tx, log) = (&tx, &log);
                n.start_soon(async move {
                    tx.send(name).await?;
                    log.push(name);
                    Ok::<_, Error>(())
                });
                wait_all_tasks_blocked().await?;
            }
            assert_eq!(rx.statistics().tasks_waiting_send, 3);
            assert_eq!(rx.try_recv(), Ok("a"));
            assert_eq!(rx.statistics().tasks_waiting_send, 2);
            wait_all_tasks_blocked().await?;
            assert_eq!(log.take(), ["a"], "exactly the sender whose value was taken completed");
            assert_eq!(rx.recv().await?, "b");
            assert_eq!(rx.recv().await?, "c");
            Ok(())
        })
        .await
        .unwrap();
        assert_eq!(log.take(), ["b", "c"]);
    });
}

// ---- S6.4 atomic cancellation ----

#[test]
fn in_a_cancelled_scope_neither_operation_touches_the_channel_s6_4() {
    testing::run(async {
        let (tx, rx) = channel::<u32>(1);
        tx.try_send(1).unwrap();
        let scope = CancelScope::new();
        scope.handle().cancel();
        let r = scope
            .run(async {
                let r = rx.recv().await;
                assert!(matches!(r, Err(RecvError::Cancelled(_))), "{r:?}");
                let e = tx.send(2).await.unwrap_err();
                assert!(e.is_cancelled());
                assert_eq!(e.into_inner(), 2);
                r.map(|_| ())
            })
            .await;
        assert_eq!(r, Ok(None), "the scope absorbed the RecvError::Cancelled");
        assert_eq!(rx.try_recv(), Ok(1), "the available value was not consumed");
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty), "the value 2 was not sent");
    });
}

#[test]
fn a_cancelled_send_returns_its_value_and_delivered_nothing_s6_4() {
    testing::run(async {
        let (tx, rx) = channel::<String>(1);
        tx.try_send("first".into()).unwrap();
        let mut back = None;
        let out = move_on_after(secs(2), async {
            let r = tx.send("second".into()).await;
            if let Err(SendError { value, kind: SendErrorKind::Cancelled(c) }) = &r {
                back = Some((value.clone(), c.source(), now()));
            }
            r
        })
        .await;
        assert_eq!(out, Ok(None), "the scope absorbed the cancellation");
        assert_eq!(back, Some(("second".to_string(), hatchery::CancelSource::Deadline, at(2))));
        assert_eq!(rx.statistics(), stats(1, Some(1), (1, 1), (0, 0), 1));
        assert_eq!(rx.try_recv().as_deref(), Ok("first"));
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
    });
}

#[test]
fn question_mark_propagates_a_cancelled_send_to_its_scope_s6_4() {
    testing::run(async {
        let (tx, _rx) = channel::<u32>(0);
        let r = move_on_after(secs(1), async {
            tx.send(5).await?;
            Ok::<_, SendError<u32>>(())
        })
        .await;
        assert_eq!(r, Ok(None), "SendError implements CancelError");
        let r = move_on_after(secs(1), async {
            tx.send(5).await?;
            Ok::<_, Error>(())
        })
        .await;
        assert!(matches!(r, Ok(None)), "the Error conversion keeps the cancellation");
        assert_eq!(now(), at(2));
    });
}

#[test]
fn a_receive_that_timed_out_leaves_no_ghost_waiter_s6_4() {
    testing::run(async {
        let (tx, rx) = channel::<u32>(1);
        let r = move_on_after(secs(1), async { rx.recv().await }).await;
        assert_eq!(r, Ok(None));
        assert_eq!(rx.statistics().tasks_waiting_recv, 0);
        assert_eq!(tx.try_send(7), Ok(()), "the 1-slot buffer takes it at once");
        assert_eq!(rx.statistics().buffer_used, 1);
        assert_eq!(rx.try_recv(), Ok(7));
    });
}

#[test]
fn a_taken_send_completes_even_if_cancelled_before_it_runs_again_s6_4() {
    testing::run(async {
        let (tx, rx) = channel::<u32>(0);
        nursery(async |n| {
            let scope = CancelScope::new();
            let cancel = scope.handle();
            let sender = n.spawn(async move {
                scope
                    .run(async {
                        let sent = tx.send(1).await.map_err(|e| e.kind);
                        // The cancellation stays pending for the next checkpoint.
                        let next = hatchery::lowlevel::checkpoint().await.is_err();
                        Ok::<_, Error>((sent, next))
                    })
                    .await
            });
            wait_all_tasks_blocked().await?;
            // Take the value and cancel the sender in the same breath: the send has completed.
            assert_eq!(rx.try_recv(), Ok(1));
            cancel.cancel();
            assert_eq!(sender.await?, Some((Ok(()), true)));
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
    });
}

#[test]
fn a_handed_value_survives_a_cancellation_before_the_receiver_runs_again_s6_4() {
    testing::run(async {
        let (tx, rx) = channel::<u32>(0);
        nursery(async |n| {
            let scope = CancelScope::new();
            let cancel = scope.handle();
            let receiver = n.spawn(async move {
                scope
                    .run(async {
                        let v = rx.recv().await?;
                        let next = hatchery::lowlevel::checkpoint().await.is_err();
                        Ok::<_, Error>((v, next))
                    })
                    .await
            });
            wait_all_tasks_blocked().await?;
            tx.try_send(42).unwrap();
            cancel.cancel();
            assert_eq!(receiver.await?, Some((42, true)), "received, not dropped or re-queued");
            assert_eq!(tx.statistics(), stats(0, Some(0), (1, 0), (0, 0), 0));
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
    });
}

#[test]
fn a_cancelled_receive_consumed_nothing_s6_4() {
    testing::run(async {
        let (tx, rx) = channel::<u32>(1);
        let rx2 = rx.clone();
        nursery(async |n| {
            let scope = CancelScope::new();
            let cancel = scope.handle();
            let r = n.spawn(async move { Ok(scope.run(async { rx2.recv().await }).await?) });
            wait_all_tasks_blocked().await?;
            cancel.cancel();
            assert_eq!(r.await?, None);
            assert_eq!(rx.statistics().tasks_waiting_recv, 0);
            tx.try_send(3).unwrap();
            assert_eq!(rx.try_recv(), Ok(3));
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
    });
}

#[test]
fn cancellations_leave_no_registration_behind() {
    testing::run(async {
        let base = registrations();
        let (tx, rx) = channel::<u32>(0);
        for _ in 0..10 {
            assert_eq!(move_on_after(secs(1), async { rx.recv().await }).await, Ok(None));
            assert_eq!(move_on_after(secs(1), async { tx.send(1).await }).await, Ok(None));
        }
        nursery(async |n| {
            for _ in 0..5 {
                let scope = CancelScope::new();
                let c = scope.handle();
                let tx = &tx;
                n.start_soon(async move {
                    let _ = scope.run(async { tx.send(1).await }).await;
                    Ok(())
                });
                wait_all_tasks_blocked().await?;
                c.cancel();
            }
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
        assert_eq!(registrations(), base);
        assert_eq!(tx.statistics(), stats(0, Some(0), (1, 1), (0, 0), 0));
        assert_eq!(now(), at(20));
    });
}

// ---- S6.5 fairness ----

#[test]
fn a_waiting_receiver_owns_the_next_value_s6_5() {
    testing::run(async {
        let (tx, rx) = channel::<u32>(3);
        let third_party = rx.clone();
        nursery(async |n| {
            let waiting = n.spawn(async { Ok(rx.recv().await?) });
            wait_all_tasks_blocked().await?;
            tx.try_send(1).unwrap();
            assert_eq!(third_party.try_recv(), Err(TryRecvError::Empty));
            assert_eq!(waiting.await?, 1);
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
    });
}

#[test]
fn a_blocked_sender_owns_the_freed_slot_s6_5() {
    testing::run(async {
        let (tx, rx) = channel::<u32>(1);
        let third_party = tx.clone();
        tx.try_send(1).unwrap();
        nursery(async |n| {
            n.start_soon(async {
                tx.send(2).await?;
                Ok::<_, Error>(())
            });
            wait_all_tasks_blocked().await?;
            assert_eq!(rx.try_recv(), Ok(1));
            assert_eq!(third_party.try_send(3), Err(TrySendError::Full(3)));
            Ok(())
        })
        .await
        .unwrap();
        assert_eq!(rx.try_recv(), Ok(2));
    });
}

#[test]
fn senders_and_receivers_are_served_in_arrival_order_s6_5() {
    let log = Log::new();
    testing::run(async {
        let (tx, rx) = channel::<u32>(1);
        nursery(async |n| {
            // Receivers first: each one gets the values in its arrival order.
            for i in 0..4u32 {
                let (rx, log) = (&rx, &log);
                n.start_soon(async move {
                    let v = rx.recv().await?;
                    log.push(format!("r{i} got {v}"));
                    Ok::<_, Error>(())
                });
                wait_all_tasks_blocked().await?;
            }
            for v in 10..14 {
                tx.try_send(v).unwrap();
            }
            wait_all_tasks_blocked().await?;
            // Then senders: a full buffer and four waiting senders, drained one by one.
            tx.try_send(0).unwrap();
            for i in 1..=4u32 {
                let (tx, log) = (&tx, &log);
                n.start_soon(async move {
                    tx.send(i).await?;
                    log.push(format!("s{i} sent"));
                    Ok::<_, Error>(())
                });
                wait_all_tasks_blocked().await?;
            }
            let mut got = Vec::new();
            for _ in 0..5 {
                got.push(rx.recv().await?);
            }
            assert_eq!(got, [0, 1, 2, 3, 4]);
            Ok(())
        })
        .await
        .unwrap();
    });
    let mut l = log.take();
    l[..4].sort();
    assert_eq!(l[..4], ["r0 got 10", "r1 got 11", "r2 got 12", "r3 got 13"]);
    assert_eq!(l[4..], ["s1 sent", "s2 sent", "s3 sent", "s4 sent"]);
}

// ---- S6.6 / S6.7 closing ----

#[test]
fn closing_a_sender_fails_the_sends_waiting_on_that_handle_only_s6_6() {
    testing::run(async {
        let (tx, rx) = channel::<u32>(0);
        let other = tx.clone();
        nursery(async |n| {
            let mine = n.spawn(async { Ok(tx.send(1).await.map_err(|e| (e.value, e.kind))) });
            let theirs = n.spawn(async { Ok(other.send(2).await.map_err(|e| (e.value, e.kind))) });
            sleep(secs(1)).await?;
            tx.close();
            assert_eq!(mine.await?, Err((1, SendErrorKind::Closed)));
            assert_eq!(now(), at(1));
            assert_eq!(rx.statistics(), stats(0, Some(0), (1, 1), (1, 0), 0));
            assert_eq!(tx.send(3).await.map_err(|e| e.into_parts()), Err((3, SendErrorKind::Closed)));
            assert_eq!(rx.recv().await?, 2);
            assert_eq!(theirs.await?, Ok(()));
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
    });
}

#[test]
fn the_last_sender_closing_ends_every_waiting_receiver_s6_6() {
    let log = Log::new();
    testing::run(async {
        let (tx, rx) = channel::<u32>(4);
        let tx2 = tx.clone();
        nursery(async |n| {
            for i in 0..3 {
                let (rx, log) = (rx.clone(), &log);
                n.start_soon(async move {
                    let r = rx.recv().await;
                    log.push(format!("r{i}: {r:?} at {:?}", now()));
                    Ok::<_, Error>(())
                });
            }
            sleep(secs(2)).await?;
            tx.close();
            wait_all_tasks_blocked().await?;
            assert_eq!(rx.statistics().tasks_waiting_recv, 3, "one sender is still open");
            sleep(secs(1)).await?;
            drop(tx2);
            Ok(())
        })
        .await
        .unwrap();
    });
    let mut l = log.take();
    l.sort();
    let t = at(3);
    assert_eq!(
        l,
        [0, 1, 2].map(|i| format!("r{i}: Err(EndOfChannel) at {t:?}")),
        "woken at the instant of the last close"
    );
}

#[test]
fn closing_a_receiver_fails_the_receives_waiting_on_that_handle_only_s6_6() {
    testing::run(async {
        let (tx, rx) = channel::<u32>(0);
        let other = rx.clone();
        nursery(async |n| {
            let mine = n.spawn(async { Ok(rx.recv().await) });
            wait_all_tasks_blocked().await?;
            let theirs = n.spawn(async { Ok(other.recv().await) });
            wait_all_tasks_blocked().await?;
            rx.close();
            assert_eq!(mine.await?, Err(RecvError::Closed));
            assert_eq!(rx.recv().await, Err(RecvError::Closed));
            assert_eq!(rx.try_recv(), Err(TryRecvError::Closed));
            tx.send(5).await?;
            assert_eq!(theirs.await?, Ok(5));
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
    });
}

#[test]
fn the_last_receiver_closing_discards_the_buffer_and_fails_waiting_senders_s6_6() {
    let drops = DropCounter::new();
    testing::run(async {
        let (tx, rx) = channel::<DropToken>(2);
        let rx2 = rx.clone();
        tx.try_send(drops.token()).unwrap();
        tx.try_send(drops.token()).unwrap();
        nursery(async |n| {
            let waiting = n.spawn(async {
                let e = tx.send(drops.token()).await.unwrap_err();
                Ok((e.kind.clone(), now(), e.into_inner()))
            });
            sleep(secs(1)).await?;
            rx.close();
            assert_eq!(drops.count(), 0, "another receiver is open");
            drop(rx2);
            assert_eq!(drops.count(), 2, "the buffer was discarded at the close");
            let (kind, t, token) = waiting.await?;
            assert_eq!((kind, t), (SendErrorKind::Disconnected, at(1)));
            drop(token);
            assert_eq!(drops.count(), 3);
            let e = tx.try_send(drops.token()).unwrap_err();
            assert!(e.is_disconnected());
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
        assert_eq!(tx.statistics(), stats(0, Some(2), (1, 0), (0, 0), 2));
    });
    assert_eq!(drops.count(), 4);
}

#[test]
fn close_is_synchronous_idempotent_and_works_in_a_cancelled_scope_s6_7() {
    testing::run(async {
        let (tx, rx) = channel::<u32>(1);
        let scope = CancelScope::new();
        scope.handle().cancel();
        let r = scope
            .run(async {
                tx.close();
                tx.close();
                rx.close();
                rx.close();
                Ok::<_, Cancelled>(now())
            })
            .await;
        assert_eq!(r, Ok(Some(at(0))), "no checkpoint: nothing failed");
        assert_eq!(tx.statistics(), stats(0, Some(1), (0, 0), (0, 0), 0));
        assert!(tx.is_closed() && rx.is_closed());
    });
}

#[test]
fn a_value_whose_destructor_uses_the_channel_can_be_discarded() {
    // The buffer is dropped after the channel's state is released: a value holding a sender of
    // the same channel closes it from its destructor without a BorrowMutError.
    struct Holder(hatchery::Sender<Holder>, Rc<Cell<u32>>);
    impl Drop for Holder {
        fn drop(&mut self) {
            self.0.close();
            assert!(self.0.is_disconnected());
            self.1.set(self.1.get() + 1);
        }
    }
    let dropped = Rc::new(Cell::new(0));
    let (tx, rx) = channel::<Holder>(2);
    tx.try_send(Holder(tx.clone(), dropped.clone())).unwrap();
    tx.try_send(Holder(tx.clone(), dropped.clone())).unwrap();
    drop(rx);
    assert_eq!(dropped.get(), 2);
    assert_eq!(tx.statistics().open_senders, 1);
}

// ---- S6.8 clones ----

#[test]
fn the_channel_ends_only_when_every_sender_clone_is_closed_s6_8() {
    testing::run(async {
        let (tx, rx) = channel::<u32>(4);
        let clones: Vec<_> = (0..3).map(|_| tx.clone()).collect();
        drop(tx);
        for (i, c) in clones.iter().enumerate() {
            c.try_send(i as u32).unwrap();
        }
        for c in &clones[..2] {
            c.close();
        }
        assert_eq!(rx.statistics().open_senders, 1);
        for i in 0..3 {
            assert_eq!(rx.recv().await, Ok(i));
        }
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty), "one clone is still open");
        drop(clones);
        assert_eq!(rx.recv().await, Err(RecvError::EndOfChannel));
    });
}

#[test]
fn disconnection_only_when_every_receiver_clone_is_closed_s6_8() {
    let (tx, rx) = channel::<u32>(4);
    let rx2 = rx.clone();
    drop(rx);
    assert_eq!(tx.try_send(1), Ok(()));
    assert!(!tx.is_disconnected());
    drop(rx2);
    assert!(tx.is_disconnected());
    assert_eq!(tx.try_send(2), Err(TrySendError::Disconnected(2)));
}

#[test]
fn cloning_a_closed_handle_gives_a_closed_handle_s6_8() {
    let (tx, rx) = channel::<u32>(4);
    tx.close();
    let tx2 = tx.clone();
    assert!(tx2.is_closed());
    assert_eq!(tx2.try_send(1), Err(TrySendError::Closed(1)));
    assert_eq!(rx.try_recv(), Err(TryRecvError::EndOfChannel), "the clone did not reopen the channel");
    let rx2 = rx.clone();
    rx.close();
    let rx3 = rx.clone();
    assert_eq!(rx3.try_recv(), Err(TryRecvError::Closed));
    assert_eq!(rx2.statistics().open_receivers, 1);
    assert!(rx2.same_channel(&rx3) && tx.same_channel(&tx2));
    assert!(!tx.same_channel(&channel::<u32>(0).0));
}

#[test]
fn receiver_clones_share_the_values_s6_8() {
    let got = RefCell::new(Vec::new());
    testing::run(async {
        let (tx, rx) = channel::<u32>(0);
        nursery(async |n| {
            for w in 0..3 {
                let (rx, got) = (rx.clone(), &got);
                n.start_soon(async move {
                    loop {
                        match rx.recv().await {
                            Ok(v) => got.borrow_mut().push((v, w)),
                            Err(RecvError::EndOfChannel) => return Ok(()),
                            Err(e) => return Err(e.into()),
                        }
                        sleep(secs(1)).await?;
                    }
                });
            }
            drop(rx);
            for v in 0..9 {
                tx.send(v).await?;
            }
            drop(tx);
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
    });
    let mut values: Vec<u32> = got.borrow().iter().map(|&(v, _)| v).collect();
    values.sort();
    assert_eq!(values, (0..9).collect::<Vec<_>>(), "each value exactly once");
    for w in 0..3 {
        assert_eq!(got.borrow().iter().filter(|&&(_, x)| x == w).count(), 3, "worker {w} took its share");
    }
}

// ---- S6.9 loops and the Stream ----

#[test]
fn a_stream_loop_ends_cleanly_at_the_end_of_the_channel_s6_9() {
    let out = testing::run(async {
        let (tx, mut rx) = channel::<u32>(0);
        let mut got = Vec::new();
        nursery(async |n| {
            n.start_soon(async move {
                for i in 0..5 {
                    sleep(secs(1)).await?;
                    tx.send(i).await?;
                }
                Ok::<_, Error>(())
            });
            while let Some(v) = next(&mut rx).await {
                got.push((v?, now()));
            }
            Ok(())
        })
        .await
        .unwrap();
        got
    });
    assert_eq!(out, (0..5).map(|i| (i, at(i as u64 + 1))).collect::<Vec<_>>());
}

#[test]
fn a_stream_reports_cancellation_and_consumes_nothing_s6_9() {
    testing::run(async {
        let (tx, mut rx) = channel::<u32>(2);
        let r = move_on_after(secs(1), async {
            while let Some(v) = next(&mut rx).await {
                v?;
            }
            Ok::<_, RecvError>(())
        })
        .await;
        assert_eq!(r, Ok(None), "the scope absorbed the stream's Cancelled");
        assert_eq!(rx.statistics().tasks_waiting_recv, 0);
        tx.try_send(1).unwrap();
        let scope = CancelScope::new();
        scope.handle().cancel();
        let r = scope.run(async { next(&mut rx).await.unwrap() }).await;
        assert_eq!(r, Ok(None));
        assert_eq!(rx.try_recv(), Ok(1), "nothing consumed in the cancelled scope");
        rx.close();
        assert_eq!(next(&mut rx).await, Some(Err(RecvError::Closed)));
    });
}

/// Polls the receiver's `Stream` once, which parks a wait in the handle, and drops that
/// `next()` future: the wait stays behind (as after a `select!` whose other branch won).
async fn leave_a_stream_wait(rx: &mut hatchery::Receiver<u32>) {
    let mut fut = pin!(next(rx));
    assert!(poll_once(fut.as_mut()).await.is_pending());
}

#[test]
fn dropping_a_receiver_whose_stream_was_handed_a_value_gives_it_back() {
    testing::run(async {
        let (tx, rx) = channel::<u32>(0);
        let mut streaming = rx.clone();
        leave_a_stream_wait(&mut streaming).await;
        assert_eq!(rx.statistics().tasks_waiting_recv, 1, "the stream's wait lives in the receiver");
        tx.try_send(8).unwrap();
        drop(streaming);
        assert_eq!(rx.statistics(), stats(1, Some(0), (1, 1), (0, 0), 1));
        assert_eq!(rx.recv().await, Ok(8));
    });
}

#[test]
fn a_value_handed_to_an_abandoned_stream_wait_comes_first_to_the_handles_recv() {
    testing::run(async {
        // A `next()` dropped while it waited (a `select!` whose other branch won, say).
        let (tx, mut rx) = channel::<u32>(0);
        leave_a_stream_wait(&mut rx).await;
        tx.try_send(1).unwrap(); // handed to the wait nobody polls
        assert_eq!(rx.try_recv(), Ok(1), "try_recv finds it");
        // With a buffer: the value handed over comes before a later one, in order.
        let (tx, mut rx) = channel::<u32>(4);
        leave_a_stream_wait(&mut rx).await;
        tx.try_send(1).unwrap();
        tx.try_send(2).unwrap();
        assert_eq!(rx.recv().await, Ok(1));
        assert_eq!(rx.recv().await, Ok(2));
        // A wait that got nothing just goes: it no longer counts as waiting.
        leave_a_stream_wait(&mut rx).await;
        assert_eq!(rx.statistics().tasks_waiting_recv, 1);
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
        assert_eq!(rx.statistics().tasks_waiting_recv, 0);
        // Closing the handle gives a handed value to another receiver instead of keeping it.
        let (tx, mut rx) = channel::<u32>(0);
        let other = rx.clone();
        leave_a_stream_wait(&mut rx).await;
        tx.try_send(3).unwrap();
        rx.close();
        assert_eq!(other.try_recv(), Ok(3));
    });
}

#[test]
fn the_channel_ends_only_after_a_value_in_transit_has_reached_its_caller_s6_3() {
    testing::run(async {
        // A value handed to a parked receive, then every sender gone: another receiver waits
        // instead of ending, since the value may come back.
        let (tx, rx) = channel::<u32>(0);
        let rx2 = rx.clone();
        let mut first = Box::pin(rx.recv());
        assert!(poll_once(first.as_mut()).await.is_pending());
        tx.try_send(1).unwrap();
        drop(tx);
        assert_eq!(rx2.try_recv(), Err(TryRecvError::Empty), "not ended: 1 is in transit");
        let mut second = Box::pin(rx2.recv());
        assert!(poll_once(second.as_mut()).await.is_pending());
        // The first receive is dropped before it returned: 1 goes to the waiting one.
        drop(first);
        assert_eq!(second.await, Ok(1));
        assert_eq!(rx2.recv().await, Err(RecvError::EndOfChannel));

        // Delivered instead: then the waiting receive ends.
        let (tx, rx) = channel::<u32>(0);
        let rx2 = rx.clone();
        let mut first = Box::pin(rx.recv());
        assert!(poll_once(first.as_mut()).await.is_pending());
        tx.try_send(2).unwrap();
        drop(tx);
        let mut second = Box::pin(rx2.recv());
        assert!(poll_once(second.as_mut()).await.is_pending());
        assert_eq!(first.await, Ok(2));
        assert_eq!(second.await, Err(RecvError::EndOfChannel));
    });
}

#[test]
fn a_value_handed_to_a_stream_wait_left_behind_does_not_hold_the_end_back() {
    testing::run(async {
        // A `next()` dropped while it waited: its wait may never be polled again, so a value
        // handed to it does not keep the other receivers from ending (they would wait for
        // ever); the handle's own next receive still finds it.
        let (tx, mut rx) = channel::<u32>(0);
        let rx2 = rx.clone();
        leave_a_stream_wait(&mut rx).await;
        tx.try_send(1).unwrap();
        drop(tx);
        // Bounded: were the value counted, this would wait for ever (the virtual clock jumps).
        let r = move_on_after(secs(1), rx2.recv()).await;
        assert_eq!(r, Err(RecvError::EndOfChannel));
        assert_eq!(rx.try_recv(), Ok(1));
    });
}

#[test]
fn a_value_held_across_a_yield_keeps_the_channel_open_until_returned() {
    // A budget of 0: every fast-path receive yields before it returns its value.
    testing::builder().yield_budget(0).run(async {
        let (tx, rx) = channel::<u32>(1);
        let rx2 = rx.clone();
        tx.try_send(3).unwrap();
        drop(tx);
        let mut first = Box::pin(rx.recv());
        assert!(poll_once(first.as_mut()).await.is_pending(), "it took 3 and yielded");
        assert_eq!(rx2.try_recv(), Err(TryRecvError::Empty), "not ended: 3 may come back");
        drop(first);
        assert_eq!(rx2.try_recv(), Ok(3));
        assert_eq!(rx2.try_recv(), Err(TryRecvError::EndOfChannel));
    });
}

// ---- dropped futures ----

#[test]
fn a_value_handed_to_a_dropped_receive_goes_to_the_next_receiver() {
    testing::run(async {
        let (tx, rx) = channel::<u32>(0);
        let rx2 = rx.clone();
        nursery(async |n| {
            let mut first = Box::pin(rx.recv());
            assert!(poll_once(first.as_mut()).await.is_pending());
            let second = n.spawn(async { Ok(rx2.recv().await?) });
            wait_all_tasks_blocked().await?;
            assert_eq!(rx.statistics().tasks_waiting_recv, 2);
            tx.try_send(1).unwrap(); // handed to `first`, the longest-waiting receiver
            assert_eq!(rx.statistics().tasks_waiting_recv, 1);
            drop(first);
            assert_eq!(second.await?, 1);
            assert_eq!(rx.statistics(), stats(0, Some(0), (1, 2), (0, 0), 0));
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
    });
}

#[test]
fn a_value_handed_to_a_dropped_receive_goes_back_to_the_front_of_the_buffer() {
    testing::run(async {
        let (tx, rx) = channel::<u32>(1);
        let mut parked = Box::pin(rx.recv());
        assert!(poll_once(parked.as_mut()).await.is_pending());
        tx.try_send(1).unwrap(); // handed to the parked receive
        tx.try_send(2).unwrap(); // the buffer had room
        drop(parked);
        // Still first in line; the buffer holds one more than its capacity until drained.
        assert_eq!(rx.statistics(), stats(2, Some(1), (1, 1), (0, 0), 2));
        assert_eq!(tx.try_send(3), Err(TrySendError::Full(3)));
        assert_eq!(rx.recv().await, Ok(1));
        assert_eq!(tx.try_send(3), Err(TrySendError::Full(3)));
        assert_eq!(rx.recv().await, Ok(2));
        assert_eq!(tx.try_send(3), Ok(()));
    });
}

#[test]
fn a_fast_path_receive_dropped_during_its_schedule_point_gives_the_value_back() {
    // A budget of 0: every schedule point yields, so the future can be dropped there.
    testing::builder().yield_budget(0).run(async {
        let (tx, rx) = channel::<u32>(2);
        tx.try_send(1).unwrap();
        tx.try_send(2).unwrap();
        let mut fut = Box::pin(rx.recv());
        assert!(poll_once(fut.as_mut()).await.is_pending(), "took 1, now yielding");
        assert_eq!(rx.statistics().buffer_used, 1);
        drop(fut);
        assert_eq!(rx.try_recv(), Ok(1));
        assert_eq!(rx.try_recv(), Ok(2));
    });
}

#[test]
fn a_dropped_waiting_send_delivers_nothing() {
    let drops = DropCounter::new();
    testing::run(async {
        let (tx, rx) = channel::<DropToken>(0);
        let mut fut = Box::pin(tx.send(drops.token()));
        assert!(poll_once(fut.as_mut()).await.is_pending());
        assert_eq!(tx.statistics().tasks_waiting_send, 1);
        drop(fut);
        assert_eq!(drops.count(), 1);
        assert_eq!(tx.statistics().tasks_waiting_send, 0);
        assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
    });
}

#[test]
fn dropped_parked_futures_leave_no_registration() {
    testing::run(async {
        let base = registrations();
        let (full_tx, _full_rx) = channel::<u32>(0);
        let (_empty_tx, empty_rx) = channel::<u32>(0);
        {
            // Parked with the task's own waker: nothing to register.
            let mut s = Box::pin(full_tx.send(1));
            let mut r = Box::pin(empty_rx.recv());
            assert!(poll_once(s.as_mut()).await.is_pending());
            assert!(poll_once(r.as_mut()).await.is_pending());
            assert_eq!(registrations(), base);
        }
        assert_eq!(registrations(), base);
        {
            // Parked with a foreign waker: a waiter each, gone with the futures.
            let mut s = Box::pin(full_tx.send(1));
            let mut r = Box::pin(empty_rx.recv());
            assert!(poll_once_foreign(s.as_mut()).await.is_pending());
            assert!(poll_once_foreign(r.as_mut()).await.is_pending());
            assert_eq!(registrations().parked, base.parked + 2);
        }
        assert_eq!(registrations(), base);
        assert_eq!(full_tx.statistics(), stats(0, Some(0), (1, 1), (0, 0), 0));
        assert_eq!(empty_rx.statistics(), stats(0, Some(0), (1, 1), (0, 0), 0));
    });
}

// ---- the checkpoint rule ----

#[test]
fn send_and_recv_are_checkpoints_on_the_fast_path_s2_1() {
    testing::run(async {
        let (tx, rx) = channel::<u32>(1);
        assert_checkpoints(tx.send(1)).await.unwrap();
        assert_eq!(assert_checkpoints(rx.recv()).await, Ok(1));
        let (tx, rx) = channel::<u32>(0);
        nursery(async |n| {
            // A waiting receiver: the send hands the value over without waiting.
            let r = n.spawn(async { Ok(rx.recv().await?) });
            wait_all_tasks_blocked().await?;
            assert_checkpoints(tx.send(2)).await?;
            assert_eq!(r.await?, 2);
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
    });
}

#[test]
fn a_recv_that_waits_is_a_checkpoint() {
    testing::run(async {
        let (tx, rx) = channel::<u32>(1);
        nursery(async |n| {
            n.start_soon(async {
                sleep(secs(1)).await?;
                tx.send(5).await?;
                Ok::<_, Error>(())
            });
            assert_eq!(assert_checkpoints(rx.recv()).await?, 5);
            assert_eq!(now(), at(1));
            Ok(())
        })
        .await
        .unwrap();
    });
}

#[test]
fn a_send_that_waits_is_a_checkpoint() {
    testing::run(async {
        let (tx, rx) = channel::<u32>(0);
        nursery(async |n| {
            n.start_soon(async {
                sleep(secs(1)).await?;
                assert_eq!(rx.recv().await?, 5);
                Ok::<_, Error>(())
            });
            assert_checkpoints(tx.send(5)).await?;
            assert_eq!(now(), at(1));
            Ok(())
        })
        .await
        .unwrap();
    });
}

#[test]
fn try_operations_and_close_are_not_checkpoints() {
    testing::run(async {
        let (tx, rx) = channel::<u32>(1);
        testing::assert_no_checkpoints(async {
            tx.try_send(1).unwrap();
            assert_eq!(rx.try_recv(), Ok(1));
            tx.close();
            rx.close();
        })
        .await;
    });
}

// ---- statistics ----

#[test]
fn statistics_track_every_field_and_the_peak_survives_draining_s6_10() {
    testing::run(async {
        let (tx, rx) = channel::<u32>(3);
        assert_eq!(tx.statistics(), stats(0, Some(3), (1, 1), (0, 0), 0));
        let tx2 = tx.clone();
        let rx2 = rx.clone();
        for i in 0..3 {
            tx.try_send(i).unwrap();
        }
        nursery(async |n| {
            n.start_soon(async {
                tx2.send(9).await?;
                Ok::<_, Error>(())
            });
            wait_all_tasks_blocked().await?;
            assert_eq!(rx.statistics(), stats(3, Some(3), (2, 2), (1, 0), 3));
            assert_eq!(rx.try_recv(), Ok(0));
            assert_eq!(rx.statistics(), stats(3, Some(3), (2, 2), (0, 0), 3));
            Ok(())
        })
        .await
        .unwrap();
        for v in [1, 2, 9] {
            assert_eq!(rx.try_recv(), Ok(v));
        }
        nursery(async |n| {
            n.start_soon(async {
                rx2.recv().await?;
                Ok::<_, Error>(())
            });
            wait_all_tasks_blocked().await?;
            assert_eq!(tx.statistics(), stats(0, Some(3), (2, 2), (0, 1), 3));
            tx.try_send(0).unwrap();
            Ok(())
        })
        .await
        .unwrap();
        rx2.close();
        assert_eq!(tx.statistics(), rx.statistics());
        assert_eq!(tx.statistics(), stats(0, Some(3), (2, 1), (0, 0), 3));
    });
}

// ---- errors ----

#[test]
fn errors_convert_into_io_errors_and_the_crate_error() {
    let closed = io::Error::from(SendError::new(1u32, SendErrorKind::Closed));
    assert_eq!(closed.kind(), io::ErrorKind::NotConnected);
    assert!(closed.get_ref().unwrap().is::<ClosedResource>());
    let broken = io::Error::from(SendError::new(1u32, SendErrorKind::Disconnected));
    assert_eq!(broken.kind(), io::ErrorKind::BrokenPipe);
    assert_eq!(broken.to_string(), "every receiver of the channel is closed");
    assert_eq!(io::Error::from(TrySendError::Full(1)).kind(), io::ErrorKind::WouldBlock);
    assert_eq!(io::Error::from(TrySendError::Disconnected(1)).kind(), io::ErrorKind::BrokenPipe);
    assert_eq!(io::Error::from(TrySendError::Closed(1)).kind(), io::ErrorKind::NotConnected);
    assert_eq!(io::Error::from(TryRecvError::Empty).kind(), io::ErrorKind::WouldBlock);
    assert_eq!(io::Error::from(TryRecvError::EndOfChannel).kind(), io::ErrorKind::UnexpectedEof);
    assert_eq!(io::Error::from(RecvError::EndOfChannel).kind(), io::ErrorKind::UnexpectedEof);
    assert_eq!(io::Error::from(RecvError::Closed).kind(), io::ErrorKind::NotConnected);
    assert!(matches!(Error::from(RecvError::Closed), Error::Other(e) if e.is::<ClosedResource>()));
    assert!(matches!(Error::from(RecvError::EndOfChannel), Error::Other(e) if e.is::<RecvError>()));
    assert!(matches!(Error::from(TrySendError::Full(1)), Error::Other(e) if e.is::<TrySendError<()>>()));
    assert_eq!(
        RecvError::EndOfChannel.to_string(),
        "end of channel: every sender is closed and the buffer is drained"
    );
    assert_eq!(TrySendError::Full(1).to_string(), "the channel is full");
    assert_eq!(format!("{:?}", TrySendError::Full(1)), "Full(..)");
    assert!(TrySendError::Closed(()).cancelled().is_none());

    // A real cancellation stays recognisable through every conversion.
    testing::run(async {
        let (tx, rx) = channel::<u32>(0);
        let scope = CancelScope::new();
        scope.handle().cancel();
        let (send_err, recv_err) = scope
            .run(async { Ok::<_, Cancelled>((tx.send(1).await.unwrap_err(), rx.recv().await.unwrap_err())) })
            .await
            .unwrap()
            .unwrap();
        assert!(send_err.cancelled().is_some() && recv_err.cancelled().is_some());
        assert_eq!(format!("{send_err:?}"), format!("SendError {{ kind: {:?}, .. }}", send_err.kind));
        let io_err = io::Error::from(send_err.clone());
        assert!(Cancelled::from_io(&io_err).is_some());
        assert!(Error::from(send_err).cancelled().is_some());
        assert!(io::Error::from(recv_err.clone()).cancelled().is_some());
        assert!(matches!(Error::from(recv_err), Error::Cancelled(_)));
    });
}
