//! Every combination of child outcome x cancel timing x body outcome x shield (in the style of
//! tokio's task_combinations): the exact nursery result, the final virtual instant, and that the
//! child was dropped exactly once.

mod support;

use std::panic::{AssertUnwindSafe, catch_unwind};

use hatchery::{CancelScope, Error, JoinError, lowlevel, now, nursery, sleep, testing};
use support::{DropCounter, at, secs};

#[derive(Debug, Clone, Copy, PartialEq)]
enum ChildOutcome {
    Ok,
    Error,
    Panic,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Timing {
    BeforeFirstPoll,
    WhileParked,
    AfterCompletion,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum BodyOutcome {
    Ok,
    Error,
    Cancelled,
}

#[derive(Debug, PartialEq)]
enum Expect {
    Panic,
    Value(Option<&'static str>),
    Errors(Vec<String>),
}

/// Time at which the body acts (cancels the child through its handle, then finishes).
fn act_at(t: Timing) -> u64 {
    match t {
        Timing::BeforeFirstPoll => 0,
        Timing::WhileParked => 1,
        Timing::AfterCompletion => 3,
    }
}

/// The reference: what the nursery must return, and when everything is over.
fn expect(c: ChildOutcome, t: Timing, b: BodyOutcome, shield: bool) -> (Expect, u64) {
    let act = act_at(t);
    // The body's own action cancels the nursery if it fails or cancels, at `act`.
    let body_cancels_nursery_at = (b != BodyOutcome::Ok).then_some(act);
    // The child completes (at 2 s) unless something cancels it first and it is not shielded.
    let child_cancel_at = [(act < 2).then_some(act), body_cancels_nursery_at].into_iter().flatten().min();
    let child_completes = shield || child_cancel_at.is_none_or(|x| x >= 2);
    let child_fails = child_completes && c != ChildOutcome::Ok;
    // A failing child cancels the nursery at 2 s; a body still sleeping until 3 s is cut short.
    let body_acts = !(child_fails && act > 2);
    let child_end = if child_completes { 2 } else { child_cancel_at.unwrap() };
    let body_end = if body_acts { act } else { 2 };
    let end = child_end.max(body_end);
    if child_fails && c == ChildOutcome::Panic {
        return (Expect::Panic, end);
    }
    let mut errors = Vec::new();
    if child_fails {
        errors.push("child failed".to_string());
    }
    if body_acts && b == BodyOutcome::Error {
        errors.push("body failed".to_string());
    }
    if !errors.is_empty() {
        return (Expect::Errors(errors), end);
    }
    let value = (body_acts && b == BodyOutcome::Ok).then_some("body value");
    (Expect::Value(value), end)
}

fn run_one(c: ChildOutcome, t: Timing, b: BodyOutcome, shield: bool) -> (Expect, u64, usize) {
    let drops = DropCounter::new();
    let end = std::cell::Cell::new(0);
    let r = catch_unwind(AssertUnwindSafe(|| {
        testing::run(async {
            let token = drops.token();
            let r = nursery(async |n| {
                let work = async move {
                    let _t = token;
                    sleep(secs(2)).await?;
                    match c {
                        ChildOutcome::Ok => Ok(1),
                        ChildOutcome::Error => Err(Error::other("child failed")),
                        ChildOutcome::Panic => panic!("child panicked"),
                    }
                };
                let h = if shield {
                    n.spawn(
                        async move { CancelScope::new().shielded().run(work).await.map(|v| v.unwrap_or(0)) },
                    )
                } else {
                    n.spawn(work)
                };
                sleep(secs(act_at(t))).await?;
                h.cancel();
                match b {
                    BodyOutcome::Ok => Ok("body value"),
                    BodyOutcome::Error => Err(Error::other("body failed")),
                    BodyOutcome::Cancelled => {
                        n.cancel_scope().cancel();
                        lowlevel::checkpoint().await?;
                        unreachable!("the checkpoint fails in a cancelled scope")
                    }
                }
            })
            .await;
            end.set(now().since_origin().as_secs());
            r
        })
    }));
    let got = match r {
        Err(p) => {
            assert_eq!(p.downcast_ref::<&str>(), Some(&"child panicked"));
            Expect::Panic
        }
        Ok(Ok(v)) => Expect::Value(v),
        Ok(Err(e)) => Expect::Errors(
            e.into_errors()
                .into_iter()
                .map(|e| match e {
                    Error::Other(s) => s.to_string(),
                    Error::Join(JoinError::ChildCancelled(_)) => "join".into(),
                    other => panic!("unexpected error {other:?}"),
                })
                .collect(),
        ),
    };
    (got, end.get(), drops.count())
}

#[test]
fn all_combinations() {
    use BodyOutcome as B;
    use ChildOutcome as C;
    use Timing as T;
    let mut checked = 0;
    for c in [C::Ok, C::Error, C::Panic] {
        for t in [T::BeforeFirstPoll, T::WhileParked, T::AfterCompletion] {
            for b in [B::Ok, B::Error, B::Cancelled] {
                for shield in [false, true] {
                    let (want, want_end) = expect(c, t, b, shield);
                    let (got, end, drops) = run_one(c, t, b, shield);
                    let case = format!("child {c:?}, cancel {t:?}, body {b:?}, shield {shield}");
                    let mut got = got;
                    if let Expect::Errors(v) = &mut got {
                        v.sort();
                    }
                    let mut want = want;
                    if let Expect::Errors(v) = &mut want {
                        v.sort();
                    }
                    assert_eq!(got, want, "{case}");
                    if want != Expect::Panic {
                        assert_eq!(at(end), at(want_end), "{case}: finishing time");
                    }
                    assert_eq!(drops, 1, "{case}: the child is dropped exactly once");
                    checked += 1;
                }
            }
        }
    }
    assert_eq!(checked, 54);
}
