//! The consumer's side: [`Items`], its `Stream` and the future of [`Items::recv`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use super::super::channel::RecvError;
use super::link::{Link, RecvStart};
use crate::lowlevel::{Park, YieldNow, cancel_shielded_checkpoint};

#[cfg(doc)]
use super::generate;

/// The consumer's handle, given to the consumer closure of [`generate`]: receives the items
/// the producer yields, with [`recv`](Items::recv) or as a [`Stream`](futures_core::Stream).
///
/// Each receive is the consumer's request for one item: the first one starts the producer.
pub struct Items<T> {
    link: Rc<Link<T>>,
    /// The `Stream`'s waiting receive, if it is waiting.
    stream: Option<Park>,
}

impl<T> fmt::Debug for Items<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Items");
        let state = self.link.peek(|st| (st.asked, st.item.is_some(), st.end.is_some(), st.consumer_done));
        if let Some((asked, item_ready, producer_finished, closed)) = state {
            d.field("asked", &asked)
                .field("item_ready", &item_ready)
                .field("producer_finished", &producer_finished)
                .field("closed", &closed);
        }
        d.finish_non_exhaustive()
    }
}

impl<T> Items<T> {
    pub(super) fn new(link: Rc<Link<T>>) -> Self {
        Items { link, stream: None }
    }

    /// Asks the producer for the next item and waits for it.
    ///
    /// The request outlives a cancelled receive: the producer goes on computing the item it was
    /// asked for, and the next receive gets it (no item is computed twice or lost).
    ///
    /// # Errors
    ///
    /// - [`RecvError::EndOfChannel`]: the producer returned `Ok` and every item was taken.
    /// - [`RecvError::Cancelled`]: the calling code is cancelled; this is also how a failure of
    ///   the producer shows (it cancels the consumer), while its error comes out of
    ///   [`generate`].
    /// - [`RecvError::Closed`]: [`close`](Items::close) was called, or the producer failed and a
    ///   shield keeps its cancellation away from this receive.
    ///
    /// # Cancellation
    ///
    /// A checkpoint, as [`Receiver::recv`](crate::Receiver::recv): a cancel point first (in a
    /// cancelled scope it fails at once and asks for nothing), and a schedule point whenever it
    /// returns an item, also one that was already there; like a channel's receive, one that finds
    /// the end or a closed handle returns after the cancel point alone. Cancellation is atomic: a
    /// cancelled receive took nothing, and one that was handed an item returns it. Dropping the
    /// future is the same as cancelling it (an item it had taken goes back).
    ///
    /// ```
    /// use std::time::Duration;
    /// use hatchery::{move_on_after, now, sleep, sync::generate, Error, Instant};
    /// let got = hatchery::testing::run(async {
    ///     generate(
    ///         async |y| {
    ///             sleep(Duration::from_secs(2)).await?;
    ///             y.yield_("slow").await?;
    ///             Ok::<_, Error>(())
    ///         },
    ///         async |items| {
    ///             // Gives up after 1 s, but the request stands...
    ///             let r = move_on_after(Duration::from_secs(1), items.recv()).await?;
    ///             assert_eq!(r, None);
    ///             // ...so the item computed meanwhile goes to the next receive.
    ///             let v = items.recv().await?;
    ///             assert_eq!(now(), Instant::ZERO + Duration::from_secs(2));
    ///             Ok(v)
    ///         },
    ///     )
    ///     .await
    /// });
    /// assert_eq!(got.unwrap(), "slow");
    /// ```
    pub fn recv(&mut self) -> ItemsRecv<'_, T> {
        // A `Stream` wait left pending (its `next()` dropped: a `select!` whose other branch
        // won) is over, for this borrow proves nothing polls it any more. Its request stands,
        // and this receive takes the answer; the stream must not go on waiting for an answer
        // to a request nobody then makes.
        if self.stream.take().is_some() {
            self.link.forget_consumer();
        }
        ItemsRecv { link: &self.link, step: RecvStep::Start, park: Park::new() }
    }

    /// Stops receiving: cancels the producer now (its pending `yield_` fails with `Cancelled`),
    /// drops an item handed over and not taken, and makes later receives fail with
    /// [`RecvError::Closed`]. Synchronous, idempotent, not a checkpoint. Returning from the
    /// consumer does the same.
    ///
    /// ```
    /// use hatchery::{sync::generate, Error, RecvError};
    /// let r = hatchery::testing::run(async {
    ///     generate(
    ///         async |y| loop {
    ///             y.yield_(1).await?;
    ///         },
    ///         async |items| {
    ///             items.recv().await?;
    ///             items.close(); // the producer is cancelled while the consumer goes on
    ///             assert_eq!(items.recv().await, Err(RecvError::Closed));
    ///             Ok::<_, Error>("done")
    ///         },
    ///     )
    ///     .await
    /// });
    /// assert_eq!(r.unwrap(), "done");
    /// ```
    pub fn close(&self) {
        self.link.consumer_done();
    }

    /// Whether [`close`](Items::close) was called.
    pub fn is_closed(&self) -> bool {
        self.link.is_consumer_done()
    }
}

impl<T> Drop for Items<T> {
    fn drop(&mut self) {
        if self.stream.take().is_some() {
            self.link.forget_consumer();
        }
    }
}

/// The items, until the producer returns.
///
/// Each item is what [`recv`](Items::recv) would return; the stream ends (`None`) at
/// [`RecvError::EndOfChannel`].
///
/// # Cancellation
///
/// As [`Receiver`](crate::Receiver)'s stream: each new item starts with a cancel point (in a
/// cancelled scope: `Some(Err(RecvError::Cancelled(_)))`, asking for nothing), and a wait is
/// cancellable without losing the item; but `poll_next` is not a schedule point when an item is
/// already there.
///
/// ```
/// use std::pin::Pin;
/// use futures_core::Stream;
/// use hatchery::{sync::generate, Error};
///
/// // What `StreamExt::next` does, without the dependency.
/// async fn next<S: Stream + Unpin>(s: &mut S) -> Option<S::Item> {
///     std::future::poll_fn(|cx| Pin::new(&mut *s).poll_next(cx)).await
/// }
///
/// let all = hatchery::testing::run(async {
///     generate(
///         async |y| {
///             for word in ["a", "b", "c"] {
///                 y.yield_(word).await?;
///             }
///             Ok::<_, Error>(())
///         },
///         async |items| {
///             let mut all = String::new();
///             while let Some(word) = next(items).await {
///                 all.push_str(word?);
///             }
///             Ok(all)
///         },
///     )
///     .await
/// });
/// assert_eq!(all.unwrap(), "abc");
/// ```
impl<T> futures_core::Stream for Items<T> {
    type Item = Result<T, RecvError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let r = match &mut this.stream {
            Some(park) => {
                let r = std::task::ready!(this.link.poll_recv(park, cx));
                this.stream = None;
                r
            }
            None => {
                let mut park = Park::new();
                match this.link.start_recv(&mut park, cx) {
                    RecvStart::Now(v) => Ok(v),
                    RecvStart::Waiting => {
                        this.stream = Some(park);
                        return Poll::Pending;
                    }
                    RecvStart::Failed(e) => Err(e),
                }
            }
        };
        match r {
            Err(RecvError::EndOfChannel) => Poll::Ready(None),
            r => Poll::Ready(Some(r)),
        }
    }
}

/// Future of [`Items::recv`]: the next item, or a [`RecvError`]. Dropping it is the same as
/// cancelling it: an item it had taken goes back, for the next receive.
#[must_use = "futures do nothing unless awaited"]
pub struct ItemsRecv<'a, T> {
    link: &'a Link<T>,
    step: RecvStep<T>,
    park: Park,
}

enum RecvStep<T> {
    Start,
    /// Took an item without waiting; passing the cancel-shielded schedule point before
    /// returning it.
    Yield(YieldNow, T),
    Waiting,
    Done,
}

// The item is never pinned: it is moved in and out by value.
impl<T> Unpin for ItemsRecv<'_, T> {}

impl<T> Future for ItemsRecv<'_, T> {
    type Output = Result<T, RecvError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        match std::mem::replace(&mut this.step, RecvStep::Done) {
            RecvStep::Start => match this.link.start_recv(&mut this.park, cx) {
                RecvStart::Now(v) => this.pass_schedule_point(cancel_shielded_checkpoint(), v, cx),
                RecvStart::Waiting => {
                    this.step = RecvStep::Waiting;
                    Poll::Pending
                }
                RecvStart::Failed(e) => Poll::Ready(Err(e)),
            },
            RecvStep::Yield(y, v) => this.pass_schedule_point(y, v, cx),
            RecvStep::Waiting => this.poll_waiting(cx),
            RecvStep::Done => panic!("a hatchery receive future was polled after it completed"),
        }
    }
}

impl<T> ItemsRecv<'_, T> {
    fn pass_schedule_point(
        &mut self,
        mut y: YieldNow,
        v: T,
        cx: &mut Context<'_>,
    ) -> Poll<Result<T, RecvError>> {
        if Pin::new(&mut y).poll(cx).is_ready() {
            return Poll::Ready(Ok(v));
        }
        self.step = RecvStep::Yield(y, v);
        Poll::Pending
    }

    fn poll_waiting(&mut self, cx: &mut Context<'_>) -> Poll<Result<T, RecvError>> {
        let r = self.link.poll_recv(&mut self.park, cx);
        if r.is_pending() {
            self.step = RecvStep::Waiting;
        }
        r
    }
}

impl<T> Drop for ItemsRecv<'_, T> {
    fn drop(&mut self) {
        match std::mem::replace(&mut self.step, RecvStep::Done) {
            RecvStep::Yield(_, v) => self.link.restore(v),
            RecvStep::Waiting => self.link.forget_consumer(),
            RecvStep::Start | RecvStep::Done => {}
        }
    }
}

impl<T> fmt::Debug for ItemsRecv<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let step = match self.step {
            RecvStep::Start => "not started",
            RecvStep::Yield(..) => "received",
            RecvStep::Waiting => "waiting",
            RecvStep::Done => "done",
        };
        f.debug_struct("ItemsRecv").field("step", &step).finish_non_exhaustive()
    }
}
