//! The producer's side: [`Yielder`] and the future of [`Yielder::yield_`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use super::link::{Ask, Hand, Link, consumer_done_cancelled};
use crate::error::Cancelled;
use crate::lowlevel::{Park, checkpoint_if_cancelled};

#[cfg(doc)]
use super::generate;

/// The producer's handle, given to the producer closure of [`generate`]: hands items to the
/// consumer with [`yield_`](Yielder::yield_).
pub struct Yielder<T> {
    link: Rc<Link<T>>,
}

impl<T> fmt::Debug for Yielder<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Yielder");
        if let Some((asked, done)) = self.link.peek(|st| (st.asked, st.consumer_done)) {
            d.field("asked", &asked).field("consumer_done", &done);
        }
        d.finish_non_exhaustive()
    }
}

/// Waits for the consumer's first request: the producer's start.
pub(super) fn wait_for_ask<T>(link: &Link<T>) -> YieldFuture<'_, T> {
    YieldFuture { link, step: YieldStep::WaitForAsk, park: Park::new() }
}

impl<T> Yielder<T> {
    pub(super) fn new(link: Rc<Link<T>>) -> Self {
        Yielder { link }
    }

    /// Hands `value` to the consumer, then waits until the consumer asks for the next item.
    ///
    /// The producer only runs while the consumer has asked for an item, so the value is
    /// normally handed over at once; the wait that follows is what keeps the producer from
    /// computing ahead. (If an earlier `yield_` was cancelled after it handed its value, this one
    /// first waits for a request.)
    ///
    /// # Errors
    ///
    /// [`Cancelled`] if the producer is cancelled: most often because the consumer is done
    /// (reason `"generate: the consumer is done"`), or by the nursery's failure policy, or from
    /// outside. Propagate it with `?`; the producer's scope absorbs the cancellation that the
    /// consumer being done caused.
    ///
    /// # Cancellation
    ///
    /// A checkpoint. Nothing is lost or duplicated: a cancelled `yield_` either handed its value
    /// over (it goes to the consumer's next receive, or is dropped when the consumer is done) or
    /// did not (the value is dropped, never delivered). In a cancelled scope it hands nothing.
    /// Dropping the future is the same as cancelling it.
    ///
    /// ```
    /// use std::cell::RefCell;
    /// use hatchery::{sync::generate, Error};
    /// let outcome = RefCell::new(None);
    /// let got = hatchery::testing::run(async {
    ///     generate(
    ///         async |y| {
    ///             let r = y.yield_("only").await; // the consumer never asks again
    ///             *outcome.borrow_mut() = Some(r.clone());
    ///             Ok::<_, Error>(r?)
    ///         },
    ///         async |items| Ok(items.recv().await?), // takes one item, then is done
    ///     )
    ///     .await
    /// });
    /// assert_eq!(got.unwrap(), "only");
    /// let cancelled = outcome.into_inner().unwrap().unwrap_err();
    /// assert_eq!(cancelled.reason(), Some("generate: the consumer is done"));
    /// ```
    pub fn yield_(&mut self, value: T) -> YieldFuture<'_, T> {
        YieldFuture { link: &self.link, step: YieldStep::Start(value), park: Park::new() }
    }
}

/// Future of [`Yielder::yield_`]. Dropping it is the same as cancelling it: a value not yet
/// handed over is dropped.
#[must_use = "futures do nothing unless awaited"]
pub struct YieldFuture<'a, T> {
    link: &'a Link<T>,
    step: YieldStep<T>,
    park: Park,
}

enum YieldStep<T> {
    /// Not polled yet.
    Start(T),
    /// Waiting for a request to hand the value to.
    Hand(T),
    /// Handed over (or, for the producer's start, nothing to hand): waiting for a request.
    WaitForAsk,
    Done,
}

// The value is never pinned: it is moved in and out by value.
impl<T> Unpin for YieldFuture<'_, T> {}

impl<T> Future for YieldFuture<'_, T> {
    type Output = Result<(), Cancelled>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            match std::mem::replace(&mut this.step, YieldStep::Done) {
                YieldStep::Start(value) => {
                    if let Err(c) = checkpoint_if_cancelled() {
                        drop(value);
                        return Poll::Ready(Err(c));
                    }
                    this.step = YieldStep::Hand(value);
                }
                YieldStep::Hand(value) => match this.link.try_hand(value, cx) {
                    Hand::Done => this.step = YieldStep::WaitForAsk,
                    Hand::Gone(value) => {
                        drop(value);
                        this.park.unpark();
                        return Poll::Ready(Err(consumer_done_cancelled()));
                    }
                    Hand::Wait(value) => return this.wait_in(YieldStep::Hand(value), cx),
                },
                YieldStep::WaitForAsk => match this.link.poll_ask(cx) {
                    Ask::Asked => {
                        this.park.unpark();
                        return Poll::Ready(Ok(()));
                    }
                    Ask::Gone => {
                        this.park.unpark();
                        return Poll::Ready(Err(consumer_done_cancelled()));
                    }
                    Ask::Wait => return this.wait_in(YieldStep::WaitForAsk, cx),
                },
                YieldStep::Done => panic!("a hatchery yield future was polled after it completed"),
            }
        }
    }
}

impl<T> YieldFuture<'_, T> {
    /// Waits in `step` (the producer's waker is stored), unless the producer is cancelled: then
    /// the wait ends, and a value not handed over is dropped.
    fn wait_in(&mut self, step: YieldStep<T>, cx: &mut Context<'_>) -> Poll<Result<(), Cancelled>> {
        match self.park.poll_cancel_on(cx, crate::debug::WaitingOn::Other("a generator's consumer")) {
            Poll::Pending => {
                self.step = step;
                Poll::Pending
            }
            Poll::Ready(c) => {
                self.link.forget_producer();
                drop(step);
                Poll::Ready(Err(c))
            }
        }
    }
}

impl<T> Drop for YieldFuture<'_, T> {
    fn drop(&mut self) {
        match std::mem::replace(&mut self.step, YieldStep::Done) {
            YieldStep::Hand(value) => {
                self.link.forget_producer();
                drop(value);
            }
            YieldStep::WaitForAsk => self.link.forget_producer(),
            YieldStep::Start(_) | YieldStep::Done => {}
        }
    }
}

impl<T> fmt::Debug for YieldFuture<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let step = match self.step {
            YieldStep::Start(_) => "not started",
            YieldStep::Hand(_) => "waiting to hand over",
            YieldStep::WaitForAsk => "waiting for a request",
            YieldStep::Done => "done",
        };
        f.debug_struct("YieldFuture").field("step", &step).finish_non_exhaustive()
    }
}
