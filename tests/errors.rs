//! The error types: what survives a cancel scope's stripping (S4.9), how groups collapse into
//! `Error`, and how error chains read.
#![cfg(unix)]

mod support;

use std::error::Error as _;
use std::io;

use hatchery::{
    CancelError, CancelScope, Cancelled, Error, NurseryError, move_on_after, nursery, sleep, testing,
};
use support::secs;

/// Children that fail with `errors` (one child each) in a nursery inside an outer scope that is
/// cancelled meanwhile: their errors and the outer scope's cancellations travel up as one
/// group, which the outer scope strips. Returns the error that leaves the outer scope, and
/// whether that scope caught a cancellation.
fn fail_under_a_cancelled_outer_scope(errors: &[fn() -> io::Error]) -> (io::Error, bool) {
    testing::run(async {
        let outer = CancelScope::new();
        let oh = outer.handle();
        let r = outer
            .run(async {
                nursery(async |n| {
                    for &make in errors {
                        n.start_soon(async move { Err::<(), _>(make()) });
                    }
                    oh.cancel();
                    sleep(secs(1)).await?;
                    Ok::<_, io::Error>(())
                })
                .await?;
                Ok::<_, io::Error>(())
            })
            .await;
        (r.unwrap_err(), oh.cancelled_caught())
    })
}

/// The one error left after stripping comes out as it went in: its kind and its OS error
/// number, not `Other` (as it does when no cancellation joins it).
#[test]
fn a_lone_survivor_of_stripping_keeps_its_kind_and_os_error() {
    let (e, caught) =
        fail_under_a_cancelled_outer_scope(&[|| io::Error::from_raw_os_error(libc_econnrefused())]);
    assert!(caught);
    assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
    assert_eq!(e.raw_os_error(), Some(libc_econnrefused()));
}

/// S4.9 through `io::Error`: the cancellations are stripped out of the group that travels
/// inside an `io::Error`, and the one error left passes through alone, as the group's
/// conversion gives one error (moved here from the review's regressions).
#[test]
fn group_inside_io_error_is_stripped_s4_9() {
    let (e, caught) = fail_under_a_cancelled_outer_scope(&[|| io::Error::other("boom")]);
    assert!(caught);
    assert!(e.cancelled().is_none());
    assert!(e.get_ref().unwrap().downcast_ref::<NurseryError<io::Error>>().is_none(), "{e:?}");
    assert_eq!(e.to_string(), "boom");
}

/// Two real errors left after stripping stay a group, wrapped with the group's kind.
#[test]
fn survivors_of_stripping_stay_a_group() {
    let (e, caught) =
        fail_under_a_cancelled_outer_scope(&[|| io::Error::other("a"), || io::Error::other("b")]);
    assert!(caught);
    let group = e.get_ref().and_then(|g| g.downcast_ref::<NurseryError<io::Error>>()).expect("a group");
    let texts: Vec<String> = group.errors().iter().map(ToString::to_string).collect();
    assert_eq!(texts, ["a", "b"]);
}

fn libc_econnrefused() -> i32 {
    rustix::io::Errno::CONNREFUSED.raw_os_error()
}

/// A group of nothing but cancellations becomes `Error::Cancelled`, however each was carried
/// (`Error::Cancelled`, an `io::Error` made from one).
#[test]
fn a_group_of_cancellations_carried_in_different_ways_becomes_error_cancelled() {
    testing::run(async {
        let outer = CancelScope::new();
        let oh = outer.handle();
        let seen = outer
            .run(async {
                let r = nursery(async |n| {
                    n.start_soon(async {
                        sleep(secs(5)).await.map_err(io::Error::from)?;
                        Ok::<_, Error>(())
                    });
                    n.start_soon(async {
                        sleep(secs(5)).await?;
                        Ok::<_, Error>(())
                    });
                    oh.cancel();
                    Ok::<_, Error>(())
                })
                .await;
                let e = Error::from(r.unwrap_err());
                Ok::<_, Error>(matches!(e, Error::Cancelled(_)))
            })
            .await;
        assert_eq!(seen.unwrap(), Some(true), "the group collapsed into Error::Cancelled");
    });
}

/// A cancellation wrapped with `Error::other` is still one: the scope it belongs to absorbs it.
#[test]
fn error_other_wrapping_a_cancellation_is_absorbed() {
    testing::run(async {
        let r = move_on_after(secs(1), async {
            sleep(secs(5)).await.map_err(Error::other)?;
            Ok::<_, Error>(())
        })
        .await;
        assert!(matches!(r, Ok(None)), "{r:?}");
        let s = CancelScope::new();
        s.handle().cancel();
        let c = s.run(async { Ok::<_, Cancelled>(sleep(secs(1)).await.unwrap_err()) }).await;
        let c = c.unwrap().expect("the body returned the cancellation");
        assert!(Error::other(io::Error::from(c.clone())).cancelled().is_some());
        assert!(Error::other(Error::from(c)).cancelled().is_some());
    });
}

/// The group's display shows its first error, so the chain goes on with that error's source
/// rather than with the first error again.
#[test]
fn a_group_does_not_repeat_its_first_error_in_the_chain() {
    let r = testing::run(async {
        nursery(async |n| {
            n.start_soon(async { Err::<(), _>(Error::from(io::Error::other("a"))) });
            n.start_soon(async { Err::<(), _>(Error::from(io::Error::other("b"))) });
            Ok::<_, Error>(())
        })
        .await
    });
    let e = r.unwrap_err();
    assert_eq!(e.to_string(), "a (and 1 more error(s) from the same nursery)");
    assert!(e.source().is_none(), "{:?}", e.source());
}

/// The other direction: an `Error` turned into an `io::Error` (with `From`, or wrapped with
/// `io::Error::other`, the only conversion that compiled before) still carries its
/// cancellation, which the scope it belongs to absorbs (found in review: it escaped as a
/// failure).
#[test]
fn an_error_turned_into_an_io_error_keeps_its_cancellation_recognisable() {
    testing::run(async {
        let r = move_on_after(secs(1), async {
            let inner: hatchery::Result<()> = async { Ok(sleep(secs(5)).await?) }.await;
            inner.map_err(io::Error::other)
        })
        .await;
        assert!(matches!(r, Ok(None)), "{r:?}");
        let r = move_on_after(secs(1), async {
            let inner: hatchery::Result<()> = async { Ok(sleep(secs(5)).await?) }.await;
            inner.map_err(io::Error::from)
        })
        .await;
        assert!(matches!(r, Ok(None)), "{r:?}");
        // `From` keeps each kind's own conversion.
        let e = io::Error::from(Error::from(io::Error::new(io::ErrorKind::AddrInUse, "taken")));
        assert_eq!((e.kind(), e.to_string()), (io::ErrorKind::AddrInUse, "taken".to_string()));
        let c = sleep_cancelled().await;
        let e = io::Error::from(Error::from(c.clone()));
        assert_eq!(Cancelled::from_io(&e), Some(&c));
    });
}

/// A group holding a cancellation among other errors is stripped the same however it is
/// wrapped: `Error::Io`, or `Error::other` around an `io::Error` or an `Error` (found in review:
/// the last two kept the cancellation).
#[test]
fn a_wrapped_mixed_group_is_stripped_however_it_is_wrapped() {
    testing::run(async {
        let as_io = io::Error::from(mixed_group().await);
        let wrapped = [
            Error::other(mixed_group().await),
            Error::other(io::Error::from(mixed_group().await)),
            Error::Io(as_io),
        ];
        for w in wrapped {
            assert!(w.has_cancelled(), "{w:?}");
            let rest = w.strip_cancelled().expect("the failure stays");
            assert!(!rest.has_cancelled(), "{rest:?}");
            assert!(rest.to_string().contains("the failure"), "{rest}");
        }
    });
}

/// A nursery in a scope that one child cancels as it fails: the other child's cancellation
/// belongs to that outer scope, so the group keeps it beside the failure.
async fn mixed_group() -> Error {
    let outer = CancelScope::new();
    let handle = outer.handle();
    let group = outer
        .run(async {
            let r = nursery(async |n| {
                n.start_soon(async {
                    sleep(secs(5)).await?;
                    Ok::<_, Error>(())
                });
                n.start_soon(async {
                    testing::wait_all_tasks_blocked().await?;
                    handle.cancel();
                    Err::<(), _>(Error::from(io::Error::other("the failure")))
                });
                Ok(())
            })
            .await;
            Ok::<_, Cancelled>(r.unwrap_err())
        })
        .await
        .unwrap()
        .expect("the body's value is kept");
    assert_eq!(group.len(), 2, "{group:?}");
    assert!(group.has_cancelled() && group.cancelled().is_none());
    Error::from(group)
}

/// A `Cancelled` from a sleep in a scope cancelled at once.
async fn sleep_cancelled() -> Cancelled {
    let s = CancelScope::new();
    s.handle().cancel();
    s.run(async { Ok::<_, Cancelled>(sleep(secs(1)).await.unwrap_err()) }).await.unwrap().unwrap()
}
