//! How a cancellation finds the tasks it must wake (DESIGN §4.2): an operation parked with its
//! own task's waker leaves only a mark on its status's node (the node's owner; a nursery's node
//! is owned by the whole group), one parked with any other waker registers a waiter. These
//! tests cover the cases where the owner is not simply the task that entered the scope: a scope
//! moved to another task while parked, a scope a `start`ed task entered before `started`, a
//! shield under a cancelled nursery, a task that parks with a foreign waker and then its own.

mod support;

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use hatchery::lowlevel::Timer;
use hatchery::sync::Event;
use hatchery::testing::{self, registrations, wait_all_tasks_blocked};
use hatchery::{
    CancelScope, CancelSource, Cancelled, Error, Instant, RecvError, channel, now, nursery, sleep,
    sleep_forever,
};
use support::{DropCounter, at, counting_forward, foreign_waker, poll_once, poll_once_foreign, secs};

type Moved = Pin<Box<dyn Future<Output = Result<Option<()>, Cancelled>>>>;

#[test]
fn a_scope_moved_to_another_task_while_parked_wakes_that_task() {
    testing::run(async {
        let scope = CancelScope::new();
        let handle = scope.handle();
        let slot: RefCell<Option<Moved>> = RefCell::new(None);
        let handed = Event::new();
        let ended_at = Cell::new(None);
        nursery(async |n| {
            let (slot, handed, ended_at) = (&slot, &handed, &ended_at);
            // Task A enters the scope and parks inside it (the scope's node is marked as A's),
            // then hands the scope's future to task B and parks elsewhere for good.
            n.start_soon(async move {
                let mut fut: Moved = Box::pin(scope.run(async {
                    sleep_forever().await?;
                    Ok::<(), Cancelled>(())
                }));
                assert!(poll_once(fut.as_mut()).await.is_pending());
                *slot.borrow_mut() = Some(fut);
                handed.set();
                sleep_forever().await?;
                Ok::<(), Error>(())
            });
            // Task B awaits it: the first poll makes B the node's owner.
            n.start_soon(async move {
                handed.wait().await?;
                let fut = slot.borrow_mut().take().expect("handed over");
                assert_eq!(fut.await?, None, "the scope caught its own cancellation");
                ended_at.set(Some(now()));
                Ok::<(), Error>(())
            });
            sleep(secs(5)).await?;
            handle.cancel();
            wait_all_tasks_blocked().await?;
            assert_eq!(ended_at.get(), Some(at(5)), "B woke at the cancel, not later");
            n.cancel_scope().cancel();
            Ok(())
        })
        .await
        .unwrap();
    });
}

#[test]
fn a_scope_entered_before_started_is_cancelled_after_the_task_moved() {
    testing::run(async {
        let caught_at = Cell::new(None);
        let handle = RefCell::new(None);
        nursery(async |n| {
            let (caught_at, handle) = (&caught_at, &handle);
            // Before `started` the task is polled by the caller, so the scope's node first
            // belongs to the caller; after it the nursery polls the task as a child.
            n.start(|status| async move {
                let scope = CancelScope::new();
                *handle.borrow_mut() = Some(scope.handle());
                let r = scope
                    .run(async {
                        status.started(());
                        sleep_forever().await?;
                        Ok::<(), Cancelled>(())
                    })
                    .await?;
                assert_eq!(r, None);
                caught_at.set(Some(now()));
                Ok::<(), Error>(())
            })
            .await?;
            sleep(secs(3)).await?;
            handle.borrow().as_ref().expect("the task made its scope").cancel();
            Ok(())
        })
        .await
        .unwrap();
        assert_eq!(caught_at.get(), Some(at(3)));
    });
}

#[test]
fn cancelling_a_nursery_wakes_every_child_but_not_past_a_shield() {
    testing::run(async {
        let drops = DropCounter::new();
        let unshield = Rc::new(RefCell::new(None));
        let shielded_saw = Rc::new(Cell::new(None));
        let r = nursery(async |n| {
            // Children at the nursery's own node (nobody awaits them), children with a node of
            // their own (a handle), and one parked inside a shielded scope.
            for _ in 0..5 {
                let token = drops.token();
                n.start_soon(async move {
                    let _token = token;
                    sleep_forever().await?;
                    Ok::<(), Cancelled>(())
                });
            }
            let mut handles = Vec::new();
            for _ in 0..3 {
                let token = drops.token();
                handles.push(n.spawn(async move {
                    let _token = token;
                    sleep_forever().await?;
                    Ok::<(), Cancelled>(())
                }));
            }
            let (unshield2, saw) = (unshield.clone(), shielded_saw.clone());
            n.start_soon(async move {
                let scope = CancelScope::new().shielded();
                *unshield2.borrow_mut() = Some(scope.handle());
                let r = scope
                    .run(async {
                        let e = sleep_forever().await.unwrap_err();
                        saw.set(Some((now(), e.source())));
                        Err::<(), Cancelled>(e)
                    })
                    .await;
                assert!(r.is_err(), "the outer cancellation is not this scope's to catch");
                r.map(|_| ())
            });
            wait_all_tasks_blocked().await?;
            assert_eq!(registrations().parked, 0, "every child parked with its own waker");
            n.cancel_scope().cancel();
            // The body looks on from a shielded scope of its own.
            CancelScope::new()
                .shielded()
                .run(async {
                    wait_all_tasks_blocked().await?;
                    // Everyone but the shielded child is gone; the shielded one is still parked.
                    assert_eq!(drops.count(), 8);
                    assert_eq!(n.child_count(), 1);
                    assert_eq!(shielded_saw.get(), None);
                    sleep(secs(2)).await?;
                    assert_eq!(shielded_saw.get(), None);
                    Ok::<(), Cancelled>(())
                })
                .await?;
            unshield.borrow().as_ref().expect("scope entered").set_shield(false);
            Ok::<(), Cancelled>(())
        })
        .await;
        // The body returned a value: it is kept, and the cancellation absorbed.
        assert_eq!(r.map_err(|e| e.to_string()), Ok(Some(())));
        assert_eq!(shielded_saw.get(), Some((at(2), CancelSource::Explicit)));
    });
}

#[test]
fn a_sleep_polled_with_a_foreign_waker_wakes_at_its_deadline_and_on_cancel() {
    // A combinator of another crate: polls its future with a waker of its own.
    struct Foreign<F>(Pin<Box<F>>);
    impl<F: Future> Future for Foreign<F> {
        type Output = F::Output;
        fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<F::Output> {
            let fut = self.0.as_mut();
            let mut once = std::pin::pin!(poll_once_foreign(fut));
            match once.as_mut().poll(cx) {
                std::task::Poll::Ready(p) => p,
                std::task::Poll::Pending => unreachable!("poll_once_foreign is ready at once"),
            }
        }
    }
    testing::run(async {
        Foreign(Box::pin(sleep(secs(7)))).await.unwrap();
        assert_eq!(now(), at(7));
        let scope = CancelScope::new();
        let h = scope.handle();
        nursery(async |n| {
            n.start_soon(async move {
                sleep(secs(4)).await?;
                h.cancel();
                Ok::<(), Cancelled>(())
            });
            let r = scope.run(Foreign(Box::pin(sleep_forever()))).await;
            assert_eq!(r, Ok(None));
            assert_eq!(now(), at(11));
            Ok(())
        })
        .await
        .unwrap();
        assert_eq!(registrations().parked, 0);
    });
}

#[test]
fn parking_with_a_foreign_waker_then_the_own_one_leaves_no_waiter_behind() {
    testing::run(async {
        let base = registrations();
        let scope = CancelScope::new();
        let h = scope.handle();
        let r = scope
            .run(async {
                let mut s = Box::pin(sleep(secs(10)));
                assert!(poll_once_foreign(s.as_mut()).await.is_pending());
                assert_eq!(registrations().parked, base.parked + 1);
                // The same sleep, now polled with the task's own waker: the waiter goes.
                assert!(poll_once(s.as_mut()).await.is_pending());
                assert_eq!(registrations().parked, base.parked);
                h.cancel();
                s.await
            })
            .await;
        assert_eq!(r, Ok(None));
        assert_eq!(now(), at(0));
        assert_eq!(registrations(), base);
    });
}

/// A hand-written future that arms its timer through a foreign waker, then checks for
/// cancellation only, with its own: the deadline must still wake it.
struct SwitchesWakers<'a> {
    timer: Timer,
    deadline: Instant,
    polls: u32,
    done: &'a Cell<Option<Instant>>,
}

impl Future for SwitchesWakers<'_> {
    type Output = Result<(), Cancelled>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        this.polls += 1;
        if this.polls == 1 {
            let waker = foreign_waker(cx.waker());
            assert!(this.timer.poll_at(this.deadline, &mut Context::from_waker(&waker)).is_pending());
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        if let Poll::Ready(c) = this.timer.poll_cancel(cx) {
            return Poll::Ready(Err(c));
        }
        if this.polls == 2 {
            return Poll::Pending;
        }
        match this.timer.poll_at(this.deadline, cx) {
            Poll::Ready(()) => {
                this.done.set(Some(now()));
                Poll::Ready(Ok(()))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

#[test]
fn a_timer_armed_through_a_foreign_waker_then_polled_with_its_own_fires() {
    testing::run(async {
        let done = Cell::new(None);
        nursery(async |n| {
            let done = &done;
            n.start_soon(SwitchesWakers { timer: Timer::new(), deadline: at(5), polls: 0, done });
            sleep(secs(10)).await?;
            assert_eq!(done.get(), Some(at(5)), "woken at its deadline");
            Ok::<(), Cancelled>(())
        })
        .await
        .unwrap();
    });
}

#[test]
fn a_scope_parked_before_started_is_cancelled_before_the_tasks_first_poll_in_the_nursery() {
    testing::run(async {
        let caught = Cell::new(None);
        let handle = RefCell::new(None);
        nursery(async |n| {
            let (caught, handle) = (&caught, &handle);
            n.start(|status| async move {
                let scope = CancelScope::new();
                *handle.borrow_mut() = Some(scope.handle());
                let mut inner: Moved = Box::pin(scope.run(async {
                    sleep_forever().await?;
                    Ok::<(), Cancelled>(())
                }));
                assert!(poll_once(inner.as_mut()).await.is_pending());
                status.started(());
                assert_eq!(inner.await?, None);
                caught.set(Some(now()));
                Ok::<(), Error>(())
            })
            .await?;
            // At once: the task has not been polled by the nursery yet.
            handle.borrow().as_ref().expect("the task made its scope").cancel();
            Ok(())
        })
        .await
        .unwrap();
        assert_eq!(caught.get(), Some(at(0)));
    });
}

/// Counts the polls of the future it wraps.
struct Counted<'a, F> {
    polls: &'a Cell<u32>,
    fut: Pin<Box<F>>,
}

impl<F: Future> Future for Counted<'_, F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.polls.set(self.polls.get() + 1);
        self.fut.as_mut().poll(cx)
    }
}

/// A child's waker is lent to it for each poll and goes back to the run's pool afterwards,
/// unless a clone of it is still held somewhere (DESIGN §3.3). A clone a child gave away must
/// keep naming that child, even after the child parks in a way that keeps no waker and other
/// children are polled with pooled wakers: it wakes that child and no other.
#[test]
fn a_waker_a_child_gave_away_keeps_naming_that_child() {
    testing::run(async {
        let stash: RefCell<Option<std::task::Waker>> = RefCell::new(None);
        let (polls_a, polls_b) = (Cell::new(0), Cell::new(0));
        nursery(async |n| {
            let (stash, polls_a, polls_b) = (&stash, &polls_a, &polls_b);
            n.start_soon(Counted {
                polls: polls_a,
                fut: Box::pin(async move {
                    std::future::poll_fn(|cx| {
                        *stash.borrow_mut() = Some(cx.waker().clone());
                        Poll::Ready(())
                    })
                    .await;
                    // Parks with its own waker: nothing is registered, no clone is made.
                    sleep_forever().await?;
                    Ok::<(), Cancelled>(())
                }),
            });
            n.start_soon(Counted {
                polls: polls_b,
                fut: Box::pin(async move {
                    sleep_forever().await?;
                    Ok::<(), Cancelled>(())
                }),
            });
            wait_all_tasks_blocked().await?;
            assert_eq!((polls_a.get(), polls_b.get()), (1, 1));
            for round in 2..5 {
                stash.borrow().as_ref().expect("A gave its waker away").wake_by_ref();
                wait_all_tasks_blocked().await?;
                assert_eq!((polls_a.get(), polls_b.get()), (round, 1), "the clone woke A, only A");
            }
            n.cancel_scope().cancel();
            Ok(())
        })
        .await
        .unwrap();
        assert_eq!(polls_b.get(), 2, "B was polled once more, by the cancellation");
    });
}

type MovedRecv<'a> = Pin<Box<dyn Future<Output = Result<u32, RecvError>> + 'a>>;

/// A parked channel operation polled with its task's own waker records the task, not a waker
/// (DESIGN §7.1). When its future moves to another task, the first poll there must record the
/// new task: the value sent later wakes B, which would otherwise wait for ever.
#[test]
fn a_receive_moved_to_another_task_while_parked_wakes_that_task() {
    testing::run(async {
        let (tx, rx) = channel::<u32>(0);
        let slot: RefCell<Option<MovedRecv<'_>>> = RefCell::new(None);
        let handed = Event::new();
        let got = Cell::new(None);
        nursery(async |n| {
            let (slot, handed, got, rx) = (&slot, &handed, &got, &rx);
            n.start_soon(async move {
                let mut fut: MovedRecv<'_> = Box::pin(rx.recv());
                assert!(poll_once(fut.as_mut()).await.is_pending());
                *slot.borrow_mut() = Some(fut);
                handed.set();
                sleep_forever().await?;
                Ok::<(), Error>(())
            });
            n.start_soon(async move {
                handed.wait().await?;
                let mut fut = slot.borrow_mut().take().expect("handed over");
                // B parks it once itself, then waits on it.
                assert!(poll_once(fut.as_mut()).await.is_pending());
                got.set(Some((fut.await?, now())));
                Ok::<(), Error>(())
            });
            sleep(secs(5)).await?;
            tx.try_send(7).expect("a receiver waits");
            wait_all_tasks_blocked().await?;
            assert_eq!(got.get(), Some((7, at(5))), "B woke at the send");
            n.cancel_scope().cancel();
            Ok(())
        })
        .await
        .unwrap();
    });
}

/// Polled through a foreign waker, a parked send keeps a clone of that waker and is woken
/// through it; re-polled with the task's own waker, it gives the clone back (dropped, not
/// leaked) and the foreign waker is not woken again. (That the own waker is then recorded as
/// the task, not cloned, is what `children_parked_on_the_crates_primitives_hold_no_waker`
/// checks: these counts would be the same with a clone.)
#[test]
fn a_send_parked_through_a_foreign_waker_then_its_own_wakes_the_right_one() {
    testing::run(async {
        let (tx, rx) = channel::<u32>(0);
        let mut send = tx.send(1);
        let (counter, foreign) = counting_forward().await;
        assert!(Pin::new(&mut send).poll(&mut Context::from_waker(&foreign)).is_pending());
        // `counter`, `foreign`, the channel's clone and the cancellation waiter's clone.
        assert_eq!(std::sync::Arc::strong_count(&counter), 4, "the channel keeps a clone");
        // Completed by a receiver: woken through the foreign waker.
        assert_eq!(rx.try_recv(), Ok(1));
        assert_eq!(counter.wakes(), 1);
        assert_eq!(std::sync::Arc::strong_count(&counter), 3, "the woken clone is gone");
        assert_eq!(send.await, Ok(()));
        assert_eq!(std::sync::Arc::strong_count(&counter), 2, "and so is the waiter's");

        let mut send = tx.send(2);
        assert!(Pin::new(&mut send).poll(&mut Context::from_waker(&foreign)).is_pending());
        assert_eq!(std::sync::Arc::strong_count(&counter), 4);
        assert!(poll_once(&mut send).await.is_pending());
        assert_eq!(std::sync::Arc::strong_count(&counter), 2, "the own waker replaced both clones");
        assert_eq!(rx.try_recv(), Ok(2));
        assert_eq!(counter.wakes(), 1, "not woken through it");
        assert_eq!(send.await, Ok(()));
    });
}

/// A parked receive whose future was leaked records its task by its run: a value sent to it in
/// a later run on the same thread (the value is lost with the leaked future, as any leak loses
/// what it holds) wakes nothing there. The later run's root is polled exactly twice: once to
/// start, once when its sleep ends, and not a third time by the stale record.
#[test]
fn a_receive_leaked_in_one_run_wakes_nothing_in_the_next() {
    let (tx, rx) = channel::<u32>(0);
    testing::run(async {
        let mut recv = rx.recv();
        assert!(poll_once(&mut recv).await.is_pending());
        std::mem::forget(recv);
    });
    let polls = Cell::new(0);
    testing::run(Counted {
        polls: &polls,
        fut: Box::pin(async {
            tx.try_send(5).expect("the leaked receive still waits");
            sleep(secs(1)).await
        }),
    })
    .unwrap();
    assert_eq!(polls.get(), 2);
}

/// The crate's primitives record a parked task, not a clone of its waker (DESIGN §7b), so a
/// child parked on a channel, a lock, an event, a socket, a timer, a `JoinHandle` or either
/// side of `generate` holds no waker between polls (its lent waker went back to the pool). A child whose waker is stashed elsewhere does
/// hold one, until a poll finds the clone gone.
#[test]
fn children_parked_on_the_crates_primitives_hold_no_waker() {
    testing::run(async {
        let (tx, rx) = channel::<u32>(0);
        let (tx_full, _rx_full) = channel::<u32>(0);
        let lock = hatchery::sync::Mutex::new(());
        let event = Event::new();
        let (sock_a, _sock_b) = hatchery::net::UnixStream::pair()?;
        let stash: RefCell<Option<std::task::Waker>> = RefCell::new(None);
        let cond_lock = hatchery::sync::Mutex::new(0u32);
        let cond = hatchery::sync::Condition::new();
        let guard = lock.lock().await?;
        nursery(async |n| {
            let (rx, tx_full, lock, event, sock_a, stash) = (&rx, &tx_full, &lock, &event, &sock_a, &stash);
            let (cond_lock, cond) = (&cond_lock, &cond);
            // A condition waiter: first in the condition's queue, then (notified) in the mutex's.
            n.start_soon(async move {
                let g = cond_lock.lock().await?;
                let mut g = cond.wait(g).await.map_err(hatchery::sync::LockError::from)?;
                *g += 1;
                Ok::<(), Error>(())
            });
            n.start_soon(async move { rx.recv().await.map(drop).map_err(Error::from) });
            n.start_soon(async move { tx_full.send(1).await.map_err(|e| Error::from(e.kind)) });
            n.start_soon(async move { lock.lock().await.map(drop).map_err(Error::from) });
            n.start_soon(async move { event.wait().await.map_err(Error::from) });
            n.start_soon(async move {
                let mut buf = [0u8; 4];
                sock_a.read(&mut buf).await.map(drop).map_err(Error::from)
            });
            n.start_soon(async move { sleep(secs(10)).await.map_err(Error::from) });
            // A child awaiting another's handle.
            let slow = n.spawn(async move {
                sleep(secs(30)).await?;
                Ok::<u32, Error>(3)
            });
            n.start_soon(async move {
                slow.await?;
                Ok::<(), Error>(())
            });
            // `generate`: the producer waits for a request, then (once asked) the consumer
            // waits for the item while the producer sleeps.
            n.start_soon(async move {
                hatchery::sync::generate(
                    async |y| {
                        sleep(secs(20)).await?;
                        y.yield_(1u32).await?;
                        Ok::<(), Error>(())
                    },
                    async |items| {
                        sleep(secs(1)).await?;
                        items.recv().await?;
                        Ok(())
                    },
                )
                .await?;
                Ok::<(), Error>(())
            });
            wait_all_tasks_blocked().await?;
            assert_eq!(registrations().held_wakers, 0, "the producer waits for a request");
            sleep(secs(2)).await?;
            wait_all_tasks_blocked().await?;
            assert_eq!(registrations().held_wakers, 0, "the consumer waits for the item");
            {
                let g = cond_lock.lock().await?;
                cond.notify_one(&g);
                wait_all_tasks_blocked().await?;
                assert_eq!(registrations().held_wakers, 0, "the notified waiter waits for the lock");
            }
            wait_all_tasks_blocked().await?;
            assert_eq!(*cond_lock.lock().await?, 1, "the waiter woke, holding the lock");
            n.start_soon(async move {
                let mut first = true;
                std::future::poll_fn(|cx| {
                    if std::mem::take(&mut first) {
                        *stash.borrow_mut() = Some(cx.waker().clone());
                        Poll::Pending
                    } else {
                        Poll::Ready(())
                    }
                })
                .await;
                Ok::<(), Error>(())
            });
            wait_all_tasks_blocked().await?;
            assert_eq!(registrations().held_wakers, 1, "the stashing child keeps its waker");
            stash.borrow_mut().take().expect("stashed").wake();
            wait_all_tasks_blocked().await?;
            assert_eq!(registrations().held_wakers, 0, "it finished");
            tx.try_send(1).expect("the receiver waits");
            n.cancel_scope().cancel();
            Ok::<(), Error>(())
        })
        .await?;
        drop(guard);
        assert_eq!(registrations().held_wakers, 0);
        Ok::<(), Error>(())
    })
    .unwrap();
}

#[test]
fn a_wake_from_a_thread_local_destructor_is_harmless() {
    // A foreign thread keeps a hatchery waker in a thread-local whose destructor wakes it. That
    // thread's own wake first touched hatchery's thread-local, registered later and so
    // destroyed first: the destructor's wake must not touch it (a panic in a thread-local
    // destructor aborts the process).
    struct WakeOnDrop(std::task::Waker);
    impl Drop for WakeOnDrop {
        fn drop(&mut self) {
            self.0.wake_by_ref();
        }
    }
    thread_local! {
        static KEPT: std::cell::RefCell<Option<WakeOnDrop>> = const { std::cell::RefCell::new(None) };
    }
    let waker =
        hatchery::run(async { std::future::poll_fn(|cx| std::task::Poll::Ready(cx.waker().clone())).await });
    std::thread::spawn(move || {
        KEPT.with(|k| *k.borrow_mut() = Some(WakeOnDrop(waker.clone())));
        waker.wake_by_ref();
    })
    .join()
    .expect("the thread ended cleanly");
}
