//! [`generate`]: a lazy producer task feeding a consumer, Trio's `as_safe_channel` (S6.11).
//!
//! Trio wraps an async generator so that it runs as a background task that computes an item only
//! when the consumer asks for one, and is cancelled when the consumer leaves. Rust has no async
//! generators; the analogue is a *producer task* that hands items over with
//! [`Yielder::yield_`], run in a nursery next to a *consumer body* that receives them from
//! [`Items`]. Because the producer is an ordinary task, it may open nurseries and cancel scopes
//! freely: the misnesting that makes `yield` inside a nursery unsafe in Python (Trio #264, #638)
//! cannot happen.
//!
//! # Ground rules
//!
//! One `Link` per call (`generate/link.rs`), shared by the [`Yielder`], the [`Items`] and the
//! call's frame. Its state is a `RefCell`, never borrowed while user code runs, a waker is
//! called or a value is dropped.
//!
//! - `asked` is the consumer's standing request for an item. Only a receive sets it (when it
//!   finds no item), and only a yield clears it (when it hands an item over). A receive that is
//!   cancelled or dropped leaves it set: the producer's next item goes to the next receive.
//! - `item` holds the item handed over and not yet taken. Invariant: `item.is_some()` implies
//!   `!asked` (a receive takes the item before it asks again), so at most one item is ever
//!   outside the producer.
//! - There is at most one receive and one yield in progress: [`Items::recv`] and
//!   [`Yielder::yield_`] take `&mut self`, and there is one handle of each per call. So each
//!   side needs one waker slot, not a queue.
//! - The producer does not start before `asked` is first set; a yield that handed its item
//!   waits for `asked` again. Together: the producer never computes an item nobody asked for.
//! - `consumer_done` (the body finished, or [`Items::close`]) cancels the producer's own cancel
//!   scope, drops the untaken item and fails every later yield. `end` (the producer finished)
//!   tells the consumer whether the end is clean ([`RecvError::EndOfChannel`]) or a failure.
//!
//! Only `lowlevel` is used for waiting (`checkpoint_if_cancelled`, `Park`,
//! `cancel_shielded_checkpoint`), plus the public nursery and cancel scopes.

use std::rc::Rc;
use std::sync::Arc;

use crate::error::{CancelError, CancelSource, Cancelled, NurseryError};
use crate::lowlevel::checkpoint_if_cancelled;
use crate::{CancelScope, nursery};

mod items;
mod link;
mod yielder;

pub use items::{Items, ItemsRecv};
pub use yielder::{YieldFuture, Yielder};

#[cfg(doc)]
use super::channel::RecvError;
use link::{End, Link};

/// Runs `producer` as a task that computes items on demand, and `consumer` with the
/// [`Items`] it yields; returns the consumer's value once both have finished (Trio's
/// `as_safe_channel`, S6.11).
///
/// - **Lazy.** The producer starts when the consumer first asks for an item
///   ([`Items::recv`], or polling the [`Stream`](futures_core::Stream)), not before.
///   [`yield_(v)`](Yielder::yield_) hands `v` over and returns only when the consumer asks for
///   the *next* item, so the producer never computes ahead and at most one item exists outside
///   it.
/// - **The consumer is in charge.** When the consumer returns (with a value or an error), is
///   cancelled or panics, the producer is cancelled: its pending `yield_` fails with
///   [`Cancelled`] (reason `"generate: the consumer is done"`, or the nursery's own cause) and
///   its cleanup runs. The call returns once the producer has finished.
/// - **The end.** When the producer returns `Ok`, the consumer gets the items still to take,
///   then [`RecvError::EndOfChannel`] (the `Stream` ends).
/// - **Borrowing.** Both closures may borrow from the caller, as nursery children do.
/// - **One producer, one consumer.** [`Yielder::yield_`] and [`Items::recv`] take `&mut self`
///   (like a Python generator, which cannot be resumed twice at once), so there is never more
///   than one yield or receive in progress. The producer may still open nurseries and hand the
///   `&mut Yielder` to one of its children.
///
/// Use [`Items::close`] to cancel the producer before the consumer returns.
///
/// # Errors
///
/// The producer and the consumer run in one nursery, with its failure policy (S3.4): the first
/// error or panic cancels the other side, and the call returns every error in a
/// [`NurseryError`] (resuming the first panic), after both have finished. The consumer's value
/// is lost if the producer failed, even after the consumer returned: an error in the producer's
/// cleanup surfaces, as in Trio. The cancellation of the producer caused by the consumer being
/// done is absorbed and never surfaces.
///
/// When the producer fails, the consumer's pending or next receive reports the nursery's
/// cancellation ([`RecvError::Cancelled`]), never [`EndOfChannel`](RecvError::EndOfChannel): a
/// consumer cannot mistake a failure for the end of the items. (A receive in a shielded scope,
/// which that cancellation cannot reach, gets [`RecvError::Closed`] instead of waiting forever.)
///
/// # Cancellation
///
/// A checkpoint: in a cancelled scope it fails at once with that cancellation (converted into
/// `E`), running neither closure; otherwise it ends with the nursery's schedule point.
/// Cancelling the code around it cancels both sides, and it still waits for both. Items are not
/// lost to cancellation: see [`Items::recv`] and [`Yielder::yield_`].
///
/// # Examples
///
/// ```
/// use std::cell::Cell;
/// use std::time::Duration;
/// use hatchery::{sleep, sync::generate, Error};
///
/// let computed = Cell::new(0);
/// let total = hatchery::testing::run(async {
///     generate(
///         async |y| {
///             for i in 1.. {
///                 sleep(Duration::from_secs(1)).await?; // an expensive step
///                 computed.set(i);
///                 y.yield_(i).await?; // returns when the consumer asks for the next one
///             }
///             Ok::<_, Error>(())
///         },
///         async |items| {
///             let mut sum = 0;
///             while let Ok(v) = items.recv().await {
///                 sum += v;
///                 if sum > 10 {
///                     break;
///                 }
///             }
///             Ok(sum) // returning cancels the producer, blocked in `yield_(5)`
///         },
///     )
///     .await
/// });
/// assert_eq!(total.unwrap(), 1 + 2 + 3 + 4 + 5);
/// assert_eq!(computed.get(), 5, "nothing was computed ahead");
/// ```
pub async fn generate<T, R, E, P, B>(producer: P, consumer: B) -> Result<R, NurseryError<E>>
where
    P: for<'y> AsyncFnOnce(&'y mut Yielder<T>) -> Result<(), E>,
    B: for<'i> AsyncFnOnce(&'i mut Items<T>) -> Result<R, E>,
    E: CancelError + From<Cancelled>,
{
    if let Err(c) = checkpoint_if_cancelled() {
        return Err(NurseryError::new(vec![E::from(c)]));
    }
    let scope = CancelScope::new();
    let link = Rc::new(Link::new(scope.handle()));
    let mut yielder = Yielder::new(link.clone());
    let mut items = Items::new(link.clone());
    let mut consumer_cancelled = None;
    let out = nursery(async |n| {
        n.start_soon(produce(&link, scope, &mut yielder, producer));
        // However the consumer ends (a value, an error, a panic unwinding through here), the
        // producer is cancelled.
        let _done = ConsumerDone(&link);
        let r = consumer(&mut items).await;
        if let Err(e) = &r {
            consumer_cancelled = e.cancelled().cloned();
        }
        r
    })
    .await;
    match out {
        Ok(Some(v)) => Ok(v),
        // The nursery's scope absorbed the consumer's cancellation, which it does only when it
        // cancelled itself for an error that was nothing but a cancellation: a task returned a
        // `Cancelled` that no scope around it asked for (one kept from earlier). Nothing would
        // be left to report, and there is no value: report that cancellation.
        Ok(None) => {
            let c = consumer_cancelled.unwrap_or_else(|| {
                Cancelled::new(CancelSource::Nursery, Some(Arc::from("generate: the consumer was cancelled")))
            });
            Err(NurseryError::new(vec![E::from(c)]))
        }
        Err(e) => Err(e),
    }
}

/// The producer's task: wait for the first request, run the producer in its own scope (which
/// absorbs the cancellation caused by the consumer being done), and report how it ended.
async fn produce<T, E, P>(
    link: &Link<T>,
    scope: CancelScope,
    yielder: &mut Yielder<T>,
    producer: P,
) -> Result<(), E>
where
    P: for<'y> AsyncFnOnce(&'y mut Yielder<T>) -> Result<(), E>,
    E: CancelError + From<Cancelled>,
{
    // A guard, so that a panic (unwinding through this future) reports a failure too.
    let mut end = EndGuard { link, end: End::Failed };
    let r = scope
        .run(async {
            yielder::wait_for_ask(link).await?;
            producer(yielder).await
        })
        .await;
    if r.is_ok() {
        end.end = End::Returned;
    }
    r.map(drop)
}

struct EndGuard<'a, T> {
    link: &'a Link<T>,
    end: End,
}

impl<T> Drop for EndGuard<'_, T> {
    fn drop(&mut self) {
        self.link.producer_done(self.end);
    }
}

/// Marks the consumer done when the consumer's body finishes, fails or unwinds.
struct ConsumerDone<'a, T>(&'a Link<T>);

impl<T> Drop for ConsumerDone<'_, T> {
    fn drop(&mut self) {
        self.0.consumer_done();
    }
}
