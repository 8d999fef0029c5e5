//! The task-tree dump (`hatchery::debug`): who is in the tree, where each task came from, what
//! it waits on and which deadline governs the wait. All on the virtual clock.

use std::future::Future;
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

use hatchery::debug::{TaskInfo, TaskRole, TaskState, TaskTree, TrackingOff, WaitingOn, task_tree};
use hatchery::testing::MockClock;
use hatchery::{
    Builder, Error, Event, Instant, Mutex, channel, fail_after, move_on_after, nursery, sleep, sleep_forever,
};

fn secs(s: u64) -> Instant {
    Instant::from_origin(Duration::from_secs(s))
}

fn tracked() -> Builder {
    Builder::new().clock(MockClock::with_autojump(Duration::ZERO)).track_tasks(true)
}

fn find<'a>(tree: &'a TaskTree, name: &str) -> &'a TaskInfo {
    let found: Vec<_> = tree.tasks().into_iter().filter(|t| t.name().contains(name)).collect();
    assert_eq!(found.len(), 1, "one task named {name} in\n{tree}");
    found[0]
}

async fn receiver(rx: hatchery::Receiver<u32>) -> Result<(), Error> {
    fail_after(Duration::from_secs(30), async { Ok::<_, Error>(rx.recv().await?) }).await?;
    Ok(())
}

async fn napper() -> Result<(), Error> {
    sleep(Duration::from_secs(5)).await?;
    Ok(())
}

async fn locker(m: &Mutex<u32>) -> Result<(), Error> {
    let _g = m.lock().await?;
    Ok(())
}

async fn event_waiter(e: &Event) -> Result<(), Error> {
    e.wait().await?;
    Ok(())
}

async fn joiner(h: hatchery::JoinHandle<'_, ()>) -> Result<(), Error> {
    h.await?;
    Ok(())
}

async fn inner_parent() -> Result<(), Error> {
    nursery(async |n| {
        n.start_soon(napper());
        Ok::<_, Error>(())
    })
    .await?;
    Ok(())
}

#[test]
fn without_tracking_the_dump_says_how_to_turn_it_on() {
    let r = Builder::new().track_tasks(false).run(async { task_tree().map(|_| ()) });
    assert_eq!(r, Err(TrackingOff));
    assert!(TrackingOff.to_string().contains("Builder::track_tasks(true)"));
}

#[test]
fn every_task_shows_where_it_came_from_what_it_waits_on_and_its_deadline() {
    let (nursery_line, spawn_line) = (line!() + 6, line!() + 7);
    let out = tracked().run(async {
        let (_tx, rx) = channel::<u32>(1);
        let m = Mutex::new(0);
        let guard = m.lock().await.unwrap();
        let e = Event::new();
        let r = nursery(async |n| {
            let long = n.spawn(sleep_forever_task());
            n.start_soon(receiver(rx));
            n.start_soon(napper());
            n.start_soon(locker(&m));
            n.start_soon(event_waiter(&e));
            n.start_soon(joiner(long));
            n.start_soon(inner_parent());
            sleep(Duration::from_secs(2)).await?;
            n.start_soon(napper_late());
            let tree = task_tree().unwrap();
            n.cancel_scope().cancel();
            Ok::<_, Error>(tree)
        })
        .await;
        drop(guard);
        r
    });
    let tree = out.unwrap().unwrap();
    assert_eq!(tree.now(), secs(2));
    let root = tree.root();
    assert_eq!((root.id(), root.role(), root.state()), (0, TaskRole::Root, TaskState::Running));
    // `track_caller` through `Builder::run`: the test's own call.
    assert_eq!(root.location().unwrap().file(), file!());
    assert_eq!(root.nurseries().len(), 1);
    let n = &root.nurseries()[0];
    assert_eq!(n.location().file(), file!());
    assert_eq!(n.location().line(), nursery_line);
    assert_eq!(n.deadline(), None);
    assert!(!n.cancelled());

    // The body is the task taking the snapshot.
    let body = &n.tasks()[0];
    assert_eq!((body.role(), body.state()), (TaskRole::Body, TaskState::Running));

    let long = find(&tree, "sleep_forever_task");
    assert_eq!(long.location().unwrap().line(), spawn_line);
    assert_eq!(long.role(), TaskRole::Child);
    assert_eq!(long.waits().iter().map(|w| w.on()).collect::<Vec<_>>(), [WaitingOn::Sleep(None)]);

    let recv = find(&tree, "receiver");
    assert_eq!(recv.state(), TaskState::Waiting);
    assert_eq!(recv.waits().len(), 1);
    assert_eq!(recv.waits()[0].on(), WaitingOn::Receive);
    // fail_after(30 s) from 0 s: the deadline that governs the receive.
    assert_eq!(recv.waits()[0].deadline(), Some(secs(30)));
    assert!(!recv.waits()[0].cancelled());
    assert_eq!(recv.last_ran(), Some(secs(0)));

    let nap: Vec<_> =
        tree.tasks().into_iter().filter(|t| t.name().ends_with("napper::{{closure}}")).collect();
    assert_eq!(nap.len(), 2, "{tree}");
    assert_eq!(nap[0].waits()[0].on(), WaitingOn::Sleep(Some(secs(5))));
    assert_eq!(nap[0].waits()[0].deadline(), None);

    assert_eq!(find(&tree, "locker").waits()[0].on(), WaitingOn::Lock);
    assert_eq!(find(&tree, "event_waiter").waits()[0].on(), WaitingOn::Event);
    assert_eq!(find(&tree, "joiner").waits()[0].on(), WaitingOn::Join);

    // A nested nursery hangs under the task that opened it; its body has returned.
    let inner = find(&tree, "inner_parent");
    assert!(inner.waits().is_empty());
    assert_eq!(inner.nurseries().len(), 1);
    let inner_n = &inner.nurseries()[0];
    assert_eq!(inner_n.tasks().len(), 2);
    assert_eq!(inner_n.tasks()[0].state(), TaskState::Done);
    assert_eq!(inner_n.tasks()[1].waits()[0].on(), WaitingOn::Sleep(Some(secs(5))));
    assert!(inner_n.id() > n.id());

    // Spawned in this batch, not run yet.
    let late = find(&tree, "napper_late");
    assert_eq!((late.state(), late.last_ran()), (TaskState::Runnable, None));

    // root, body, 8 children, and the inner nursery's body and child.
    assert_eq!(tree.tasks().len(), 12);
    assert_eq!(tree.nurseries().len(), 2);
    let ids: Vec<_> = tree.tasks().iter().map(|t| t.id()).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), ids.len(), "ids are unique: {ids:?}");

    let text = tree.to_string();
    assert!(text.starts_with("task tree at 2.000s: 12 tasks, 2 nurseries\ntask 0 root, run at "), "{text}");
    let expect = format!("nursery {} opened at {}:{nursery_line}:", n.id(), file!());
    assert!(text.contains(&expect), "{expect} in\n{text}");
    let expect = format!(
        "`{}` spawned at {}:{}:{}: waiting on a channel receive (deadline 30.000s); last ran at 0.000s",
        recv.name(),
        file!(),
        recv.location().unwrap().line(),
        recv.location().unwrap().column()
    );
    assert!(text.contains(&expect), "{expect} in\n{text}");
    assert!(text.contains(": returned, waiting for its children"), "{text}");
    assert!(text.contains("`debug::napper_late::{{closure}}` spawned at"), "{text}");
    assert!(text.contains(": runnable\n"), "{text}");
}

async fn sleep_forever_task() -> Result<(), Error> {
    sleep_forever().await?;
    Ok(())
}

async fn napper_late() -> Result<(), Error> {
    sleep(Duration::from_secs(5)).await?;
    Ok(())
}

#[test]
fn finished_tasks_and_closed_nurseries_leave_the_tree() {
    let counts = tracked().run(async {
        let mut counts = Vec::new();
        nursery(async |n| {
            n.start_soon(napper());
            n.spawn(inner_parent());
            counts.push(task_tree().unwrap().tasks().len());
            sleep(Duration::from_secs(6)).await?;
            counts.push(task_tree().unwrap().tasks().len());
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
        let tree = task_tree().unwrap();
        counts.push(tree.tasks().len());
        counts.push(tree.nurseries().len());
        counts
    });
    // Before the children run: root, body, two children (the inner nursery is not open yet).
    // After them: root and body. After the nursery: the root alone.
    assert_eq!(counts, [4, 2, 1, 0]);
}

#[test]
fn a_task_waiting_on_two_things_shows_both() {
    let waits = tracked().run(async {
        let (tx, rx) = channel::<u32>(1);
        let (_tx2, rx2) = channel::<u32>(1);
        tx.send(1).await.unwrap();
        nursery(async |n| {
            n.start_soon(async {
                // The receive from `rx2` parks; in a later poll, after a receive that completes
                // at once, the task waits on it and on a sleep.
                let mut a = pin!(rx2.recv());
                std::future::poll_fn(|cx| {
                    assert!(a.as_mut().poll(cx).is_pending());
                    Poll::Ready(())
                })
                .await;
                rx.recv().await?;
                let mut b = pin!(sleep(Duration::from_secs(3)));
                std::future::poll_fn(|cx| match (a.as_mut().poll(cx), b.as_mut().poll(cx)) {
                    (Poll::Pending, Poll::Pending) => Poll::Pending,
                    _ => Poll::Ready(()),
                })
                .await;
                Ok::<_, Error>(())
            });
            sleep(Duration::from_secs(1)).await?;
            let tree = task_tree().unwrap();
            let child = &tree.root().nurseries()[0].tasks()[1];
            let waits: Vec<_> = child.waits().iter().map(|w| w.on()).collect();
            n.cancel_scope().cancel();
            Ok::<_, Error>(waits)
        })
        .await
    });
    assert_eq!(waits.unwrap().unwrap(), [WaitingOn::Receive, WaitingOn::Sleep(Some(secs(3)))]);
}

#[test]
fn a_wait_dropped_in_the_poll_that_parked_it_is_not_listed() {
    let waits = tracked().run(async {
        let (_tx, rx) = channel::<u32>(1);
        nursery(async |n| {
            n.start_soon(async {
                // Each parks in the poll that drops it: a bare receive, and one in a scope
                // (whose node is gone with it).
                {
                    let mut a = pin!(rx.recv());
                    let mut b = pin!(move_on_after(Duration::from_secs(9), rx.recv()));
                    std::future::poll_fn(|cx| {
                        assert!(a.as_mut().poll(cx).is_pending());
                        assert!(b.as_mut().poll(cx).is_pending());
                        Poll::Ready(())
                    })
                    .await;
                }
                sleep(Duration::from_secs(4)).await?;
                Ok::<_, Error>(())
            });
            sleep(Duration::from_secs(1)).await?;
            let tree = task_tree().unwrap();
            let waits: Vec<_> =
                tree.root().nurseries()[0].tasks()[1].waits().iter().map(|w| w.on()).collect();
            n.cancel_scope().cancel();
            Ok::<_, Error>(waits)
        })
        .await
    });
    assert_eq!(waits.unwrap().unwrap(), [WaitingOn::Sleep(Some(secs(4)))]);
}

#[test]
fn a_cancelled_nursery_and_its_waits_say_so() {
    let text = tracked().run(async {
        nursery(async |n| {
            n.start_soon(napper());
            sleep(Duration::from_secs(1)).await?;
            n.cancel_scope().cancel();
            // The cancel wakes the napper; the snapshot is taken before it runs.
            let tree = task_tree().unwrap();
            let nap = find(&tree, "napper");
            assert_eq!(nap.state(), TaskState::Runnable);
            assert!(nap.waits()[0].cancelled());
            assert_eq!(nap.waits()[0].deadline(), Some(Instant::ZERO));
            assert!(tree.root().nurseries()[0].cancelled());
            Ok::<_, Error>(tree.to_string())
        })
        .await
    });
    let text = text.unwrap().unwrap();
    assert!(text.contains(&format!("nursery 1 opened at {}:", file!())), "{text}");
    assert!(text.lines().nth(2).unwrap().ends_with(", cancelled"), "{text}");
    assert!(text.contains(": runnable; last ran at 0.000s"), "{text}");
}

/// The order in which a cancelled nursery's tasks run, with or without tracking: the records
/// tracking adds wake nothing, so the order is the same.
fn order_after_cancel(track: bool) -> Vec<&'static str> {
    let log = std::cell::RefCell::new(Vec::new());
    Builder::new()
        .clock(MockClock::with_autojump(Duration::ZERO))
        .schedule(hatchery::SchedulePolicy::Fifo)
        .track_tasks(track)
        .run(async {
            let (e1, e2, e3) = (Event::new(), Event::new(), Event::new());
            let wait = async |e: &Event, name: &'static str| {
                let r = e.wait().await;
                log.borrow_mut().push(name);
                r
            };
            let r = nursery(async |n| {
                n.start_soon(wait(&e1, "child 1"));
                n.start_soon(wait(&e2, "child 2"));
                n.start_soon(async {
                    sleep(Duration::from_secs(1)).await?;
                    n.cancel_scope().cancel();
                    Ok(())
                });
                wait(&e3, "body").await
            })
            .await;
            assert!(r.is_ok());
        });
    log.into_inner()
}

#[test]
fn tracking_does_not_change_the_order_tasks_run_in() {
    let untracked = order_after_cancel(false);
    assert_eq!(untracked.len(), 3);
    assert_eq!(order_after_cancel(true), untracked);
}

/// Waits are listed in the order they began, even when a wait that ended earlier left its
/// record's key to a newer one (the records are keyed by the cancel tree's reused waiter keys).
#[test]
fn waits_are_listed_in_the_order_they_began() {
    let waits = tracked().run(async {
        let (_tx, rx) = channel::<u32>(1);
        nursery(async |n| {
            n.start_soon(async {
                let mut x = pin!(rx.recv());
                // A one-second sleep parks first, then the receive; the sleep ends at 1 s.
                let mut a = pin!(sleep(Duration::from_secs(1)));
                std::future::poll_fn(|cx| match a.as_mut().poll(cx) {
                    Poll::Ready(r) => Poll::Ready(r),
                    Poll::Pending => {
                        assert!(x.as_mut().poll(cx).is_pending());
                        Poll::Pending
                    }
                })
                .await?;
                // Then a second sleep parks, after the receive, which keeps waiting.
                let mut b = pin!(sleep(Duration::from_secs(5)));
                // (Until the body cancels the nursery: then the receive ends with it.)
                std::future::poll_fn(|cx| {
                    if let Poll::Ready(r) = x.as_mut().poll(cx) {
                        return Poll::Ready(r.map(drop).map_err(Error::from));
                    }
                    b.as_mut().poll(cx).map_err(Error::from)
                })
                .await?;
                Ok::<_, Error>(())
            });
            sleep(Duration::from_secs(2)).await?;
            let tree = task_tree().unwrap();
            let waits: Vec<_> = find(&tree, "{{closure}}").waits().iter().map(|w| w.on()).collect();
            n.cancel_scope().cancel();
            Ok::<_, Error>(waits)
        })
        .await
    });
    assert_eq!(waits.unwrap().unwrap(), [WaitingOn::Receive, WaitingOn::Sleep(Some(secs(6)))]);
}
