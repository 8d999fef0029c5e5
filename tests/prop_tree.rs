//! Property test: random task trees (nested nurseries, sleeps, errors, deadlines) on the virtual
//! clock, against a reference model of Trio's semantics. Checks that no nursery finishes before
//! its children, every task is dropped exactly once, exactly the expected errors surface, and the
//! run finishes at the model's virtual instant.
//!
//! Default 256 cases; set `PROPTEST_CASES` for more.

mod support;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;

use hatchery::{Error, Instant, move_on_after, now, nursery, sleep};
use proptest::prelude::*;
use support::{DropCounter, secs};

#[derive(Debug, Clone)]
enum Task {
    Leaf { id: usize, sleep: u64, fail: bool },
    Nursery { id: usize, deadline: Option<u64>, body_sleep: u64, body_fail: bool, children: Vec<Task> },
}

/// Failures happen at 1 s or later. (At 0 s, tasks deeper in the tree start a few loop passes
/// after shallower ones, so a failure at 0 s may or may not reach a deeper zero-length sleep
/// before its entry check: an order the model would have to simulate pass by pass.)
fn shape() -> impl Strategy<Value = Task> {
    let leaf = (0..10u64, prop::bool::weighted(0.15)).prop_map(|(sleep, fail)| Task::Leaf {
        id: 0,
        sleep: if fail { sleep.max(1) } else { sleep },
        fail,
    });
    leaf.prop_recursive(5, 64, 6, |inner| {
        (
            prop::option::weighted(0.3, 0..12u64),
            0..10u64,
            prop::bool::weighted(0.1),
            prop::collection::vec(inner, 0..6),
        )
            .prop_map(|(deadline, body_sleep, body_fail, children)| Task::Nursery {
                id: 0,
                deadline,
                body_sleep: if body_fail { body_sleep.max(1) } else { body_sleep },
                body_fail,
                children,
            })
    })
}

/// Numbers the tasks in pre-order and records each one's parent.
fn number(t: &mut Task, next: &mut usize, parent: Option<usize>, parents: &mut BTreeMap<usize, usize>) {
    let me = *next;
    *next += 1;
    if let Some(p) = parent {
        parents.insert(me, p);
    }
    match t {
        Task::Leaf { id, .. } => *id = me,
        Task::Nursery { id, children, .. } => {
            *id = me;
            for c in children {
                number(c, next, Some(me), parents);
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Out {
    Ok,
    Cancelled,
    Errors(BTreeSet<String>),
}

const NEVER: u64 = u64::MAX;

/// The model: when the task ends and what it returns, if it starts at `t0` and the scopes around
/// it are cancelled at `c` (`NEVER` if not). `c_now`: the cancellation is already visible when the
/// task starts (a deadline that had passed when its scope was entered), so even a zero sleep
/// fails at its entry check (S2.3).
fn model(t: &Task, t0: u64, c: u64, c_now: bool) -> (u64, Out) {
    match t {
        Task::Leaf { .. } if c_now => (t0, Out::Cancelled),
        Task::Leaf { id, sleep, fail } => {
            let end = t0 + sleep;
            // A sleep whose deadline is due in the same pass as the cancellation completes.
            if end <= c {
                (end, if *fail { Out::Errors([id.to_string()].into()) } else { Out::Ok })
            } else {
                (c, Out::Cancelled)
            }
        }
        Task::Nursery { id, deadline, body_sleep, body_fail, children } => {
            let d = deadline.map_or(NEVER, |d| t0 + d);
            let e = c.min(d);
            let e_now = c_now || d == t0;
            let body = Task::Leaf { id: usize::MAX, sleep: *body_sleep, fail: *body_fail };
            let items: Vec<&Task> = children.iter().chain(std::iter::once(&body)).collect();
            let sim = |cancel: u64| -> Vec<(u64, Out)> {
                items.iter().map(|t| model(t, t0, cancel, e_now)).collect()
            };
            let mut res = sim(e);
            // The first failure cancels the nursery's scope at that instant.
            let first_failure =
                res.iter().filter(|(_, o)| matches!(o, Out::Errors(_))).map(|(end, _)| *end).min();
            if let Some(f) = first_failure
                && f < e
            {
                res = sim(f);
            }
            let end = res.iter().map(|(end, _)| *end).max().unwrap_or(t0).max(t0);
            let mut errors = BTreeSet::new();
            for (_, o) in &res {
                if let Out::Errors(es) = o {
                    errors
                        .extend(es.iter().map(|s| {
                            if s == &usize::MAX.to_string() { format!("{id}b") } else { s.clone() }
                        }));
                }
            }
            let cancelled = res.iter().any(|(_, o)| *o == Out::Cancelled);
            let out = if !errors.is_empty() {
                Out::Errors(errors)
            } else if cancelled {
                // The deadline scope absorbs it if it fired and the outer scopes did not.
                if d <= end && c > end { Out::Ok } else { Out::Cancelled }
            } else {
                Out::Ok
            };
            (end, out)
        }
    }
}

struct Ctx {
    drops: DropCounter,
    ends: RefCell<BTreeMap<usize, Instant>>,
}

struct EndRecorder<'a> {
    id: usize,
    ctx: &'a Ctx,
}

impl Drop for EndRecorder<'_> {
    fn drop(&mut self) {
        self.ctx.ends.borrow_mut().insert(self.id, now());
    }
}

fn run_task<'a>(t: &'a Task, ctx: &'a Ctx) -> Pin<Box<dyn Future<Output = Result<(), Error>> + 'a>> {
    Box::pin(async move {
        let _token = ctx.drops.token();
        match t {
            Task::Leaf { id, sleep: s, fail } => {
                let _end = EndRecorder { id: *id, ctx };
                sleep(secs(*s)).await?;
                if *fail { Err(Error::other(id.to_string())) } else { Ok(()) }
            }
            Task::Nursery { id, deadline, body_sleep, body_fail, children } => {
                let _end = EndRecorder { id: *id, ctx };
                let inner = async {
                    nursery(async |n| {
                        for c in children {
                            n.start_soon(run_task(c, ctx));
                        }
                        sleep(secs(*body_sleep)).await?;
                        if *body_fail {
                            return Err(Error::other(format!("{id}b")));
                        }
                        Ok(())
                    })
                    .await?;
                    Ok::<_, Error>(())
                };
                match deadline {
                    Some(d) => move_on_after(secs(*d), inner).await.map(|_| ()),
                    None => inner.await,
                }
            }
        }
    })
}

fn flatten(e: Error, out: &mut BTreeSet<String>) {
    match e {
        Error::Other(s) => {
            out.insert(s.to_string());
        }
        Error::Nursery(n) => n.into_errors().into_iter().for_each(|e| flatten(e, out)),
        Error::Cancelled(_) => {}
        other => panic!("unexpected error {other:?}"),
    }
}

fn count(t: &Task) -> usize {
    match t {
        Task::Leaf { .. } => 1,
        Task::Nursery { children, .. } => 1 + children.iter().map(count).sum::<usize>(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: std::env::var("PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(256), ..ProptestConfig::default() })]

    #[test]
    fn task_trees_match_the_model(mut root in shape().prop_map(|t| match t {
        leaf @ Task::Leaf { .. } => Task::Nursery { id: 0, deadline: None, body_sleep: 0, body_fail: false, children: vec![leaf] },
        n => n,
    }), seed in any::<u64>()) {
        let mut parents = BTreeMap::new();
        number(&mut root, &mut 0, None, &mut parents);
        let (want_end, want_out) = model(&root, 0, NEVER, false);
        let ctx = Ctx { drops: DropCounter::new(), ends: RefCell::new(BTreeMap::new()) };
        let (res, end, live) = testing_run(seed, async {
            let r = run_task(&root, &ctx).await;
            (r, now(), hatchery::testing::live_tasks())
        });
        prop_assert_eq!(live, 1, "every child task finished");
        prop_assert_eq!(ctx.drops.count(), count(&root), "every task dropped exactly once");
        prop_assert_eq!(end, Instant::ZERO + secs(want_end), "finishing instant");
        let mut got = BTreeSet::new();
        if let Err(e) = res { flatten(e, &mut got); }
        let want = match want_out { Out::Errors(e) => e, _ => BTreeSet::new() };
        prop_assert_eq!(got, want, "exactly the expected errors surface");
        let ends = ctx.ends.borrow();
        for (child, parent) in &parents {
            prop_assert!(ends[parent] >= ends[child], "nursery {} finished before its child {}", parent, child);
        }
    }
}

fn testing_run<F: Future>(seed: u64, f: F) -> F::Output {
    hatchery::testing::builder().seed(seed).schedule(hatchery::SchedulePolicy::Shuffle).run(f)
}
