//! The futures of `send` and `recv`, and the receive wait the `Stream` shares with `recv`.
//!
//! Both follow the parking protocol of [`crate::lowlevel`] (S2.3): on the first poll,
//! `checkpoint_if_cancelled` (a cancelled caller touches nothing), then the non-blocking
//! operation; if it completed, a `cancel_shielded_checkpoint`, otherwise park an entry in the
//! channel state and a [`Park`]. A parked future first reads its entry (completed operations
//! win over a cancellation that arrived meanwhile), and only then asks `poll_cancel`.

use crate::debug::WaitingOn;
use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::mem;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use super::error::{RecvError, SendError, SendErrorKind, TryRecvError, TrySendError};
use super::state::{Polled, RecvFailure, SendFailure, State};
use super::{Receiver, Sender};
use crate::Cancelled;
use crate::lowlevel::{Here, Leftover, Park, Wakeup};

/// Future of [`Sender::send`]. Resolves to `Ok(())` once the value was taken (into the buffer
/// or by a receiver), or to a [`SendError`] that hands the value back.
///
/// # Cancellation
///
/// A checkpoint (see [`Sender::send`]); cancellation is atomic. Dropping the future before it
/// completes is safe: a value still waiting for room is dropped with it, undelivered; a value
/// already taken stays delivered.
///
/// ```
/// use std::pin::pin;
/// use std::task::Poll;
/// use hatchery::channel;
/// hatchery::testing::run(async {
///     let (tx, rx) = channel::<u32>(0);
///     {
///         let mut send = pin!(tx.send(1));
///         // Poll it once by hand: nobody receives, so it waits.
///         let polled = std::future::poll_fn(|cx| Poll::Ready(send.as_mut().poll(cx))).await;
///         assert!(polled.is_pending());
///         assert_eq!(tx.statistics().tasks_waiting_send, 1);
///     } // dropped while waiting
///     assert_eq!(tx.statistics().tasks_waiting_send, 0);
///     assert!(rx.try_recv().is_err(), "nothing was delivered");
/// });
/// ```
#[must_use = "futures do nothing unless awaited"]
pub struct SendFuture<'a, T> {
    sender: &'a Sender<T>,
    state: SendState<T>,
}

enum SendState<T> {
    Start(T),
    Parked {
        key: usize,
        park: Park,
    },
    /// Delivered on the fast path; the cancel-shielded schedule point yielded (the turn's
    /// budget was spent): ready on the next poll.
    Yielded,
    Done,
}

// The value is never pinned: it is moved in and out by value.
impl<T> Unpin for SendFuture<'_, T> {}

impl<'a, T> SendFuture<'a, T> {
    pub(super) fn new(sender: &'a Sender<T>, value: T) -> Self {
        SendFuture { sender, state: SendState::Start(value) }
    }

    fn start(&mut self, value: T, cx: &mut Context<'_>) -> Poll<Result<(), SendError<T>>> {
        self.start_with(value, cx, &Here::get(), |here, waker| here.task_wakeup(waker))
    }

    /// The start of a send. `wakeup` makes the wake-up if it must park: the task's own, or
    /// `None` for a foreign waker, which [`start_cloned`](Self::start_cloned) clones and
    /// starts over with (two copies: the common one carries no clone).
    #[inline]
    fn start_with(
        &mut self,
        value: T,
        cx: &mut Context<'_>,
        here: &Here,
        wakeup: impl FnOnce(&Here, &Waker) -> Option<Wakeup>,
    ) -> Poll<Result<(), SendError<T>>> {
        if let Err(c) = here.cancel_point() {
            return Poll::Ready(Err(SendError::new(value, SendErrorKind::Cancelled(c))));
        }
        if self.sender.is_closed() {
            return Poll::Ready(Err(SendError::new(value, SendErrorKind::Closed)));
        }
        let mut state = self.sender.shared.borrow_mut();
        match state.try_send(value) {
            Ok(woken) => {
                drop(state);
                drop(wakeup);
                // Within the turn's budget the schedule point passes at once (DESIGN §3.4).
                let passed = here.schedule_point(cx);
                self.state = if passed { SendState::Done } else { SendState::Yielded };
                if let Some(w) = woken {
                    here.wake(w);
                }
                if passed { Poll::Ready(Ok(())) } else { Poll::Pending }
            }
            Err(TrySendError::Full(value)) => {
                let Some(wakeup) = wakeup(here, cx.waker()) else {
                    drop(state);
                    return self.start_cloned(value, cx, here);
                };
                let for_task = wakeup.is_task();
                let key = state.park_sender(value, self.sender.id, wakeup);
                drop(state);
                self.state = SendState::Parked { key, park: Park::new() };
                // Nothing can have taken the value yet (no other code ran): no need to ask the
                // channel about the new entry; nor to check for cancellation again, unless a
                // foreign waker was cloned.
                self.poll_cancel_parked(here, for_task, cx)
            }
            Err(TrySendError::Disconnected(value)) => {
                drop(state);
                drop(wakeup);
                Poll::Ready(Err(SendError::new(value, SendErrorKind::Disconnected)))
            }
            Err(TrySendError::Closed(_)) => unreachable!("the handle was checked"),
        }
    }

    /// A send that must park with a foreign waker: cloning it is foreign code, which may use
    /// this channel (take a value, close it) or cancel us, so it is made with the channel free,
    /// and the send starts over with it.
    #[cold]
    #[inline(never)]
    fn start_cloned(
        &mut self,
        value: T,
        cx: &mut Context<'_>,
        here: &Here,
    ) -> Poll<Result<(), SendError<T>>> {
        let cloned = here.wakeup(cx.waker());
        self.start_with(value, cx, here, move |_, _| Some(cloned))
    }

    fn poll_parked(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), SendError<T>>> {
        let SendState::Parked { key, .. } = self.state else { unreachable!() };
        // The run is looked up only if the send still waits (a completed one needs nothing).
        let mut here = None;
        let mut needs_clone = false;
        let polled = self
            .sender
            .shared
            .borrow_mut()
            .poll_sender(key, |w| here.insert(Here::get()).refresh(w, cx.waker(), &mut needs_clone));
        if needs_clone && let Some(h) = here {
            return self.repoll_parked(h, key, cx);
        }
        self.finish_parked(polled, here, None, cx)
    }

    /// [`poll_parked`](Self::poll_parked) when the entry's wake-up needs a foreign waker's clone:
    /// out of line, so that the common path carries no [`Leftover`].
    #[cold]
    #[inline(never)]
    fn repoll_parked(&mut self, h: Here, key: usize, cx: &mut Context<'_>) -> Poll<Result<(), SendError<T>>> {
        let (polled, leftover) = h.repoll_with_clone(cx.waker(), |install| {
            self.sender.shared.borrow_mut().poll_sender(key, install)
        });
        self.finish_parked(polled, Some(h), Some(leftover), cx)
    }

    /// The rest of [`poll_parked`](Self::poll_parked), once the entry was looked at.
    #[inline(always)]
    fn finish_parked(
        &mut self,
        polled: Polled<Result<(), (SendFailure, T)>>,
        here: Option<Here>,
        leftover: Option<Leftover>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), SendError<T>>> {
        if let Polled::Waiting(old_waker) = polled {
            drop(old_waker);
            drop(leftover);
            let here = here.expect("hatchery internal error: a waiting send was not refreshed");
            return self.poll_cancel_parked(&here, false, cx);
        }
        // Dropping the `Park` unregisters it.
        self.state = SendState::Done;
        // After the state: a destructor that panics finds the send complete (a value the send
        // failed to deliver, handed back in the error, goes down with that panic: a re-poll
        // through a foreign clone that raced the channel's closing, then a panicking drop).
        drop(leftover);
        Poll::Ready(send_result(polled))
    }

    /// A parked send that nothing has completed: registers for cancellation, and when one
    /// arrives, takes the value back out of the channel. `just_parked`: parked in this poll,
    /// after its cancel point, with no foreign code run since (see `Here::register_parked`).
    #[inline(always)]
    fn poll_cancel_parked(
        &mut self,
        here: &Here,
        just_parked: bool,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), SendError<T>>> {
        let SendState::Parked { key, park } = &mut self.state else { unreachable!() };
        let Poll::Ready(c) = here.register_parked(park, just_parked, cx, WaitingOn::Send) else {
            return Poll::Pending;
        };
        let key = *key;
        let result = self.cancelled(key, c);
        self.state = SendState::Done;
        Poll::Ready(result)
    }

    /// A cancellation arrived: takes the value back, unless foreign code that ran since the
    /// entry was last seen (the destructor of a replaced waker, a clone made to register)
    /// completed the send: that wins.
    #[cold]
    #[inline(never)]
    fn cancelled(&self, key: usize, c: Cancelled) -> Result<(), SendError<T>> {
        let mut state = self.sender.shared.borrow_mut();
        match state.poll_sender(key, |_| None) {
            Polled::Waiting(_) => {
                let (value, waker) = state.cancel_sender(key);
                drop(state);
                drop(waker);
                Err(SendError::new(value, SendErrorKind::Cancelled(c)))
            }
            done => {
                drop(state);
                send_result(done)
            }
        }
    }
}

/// The result of a send whose entry the channel completed.
#[inline]
fn send_result<T>(polled: Polled<Result<(), (SendFailure, T)>>) -> Result<(), SendError<T>> {
    match polled {
        Polled::Done(Ok(())) => Ok(()),
        Polled::Done(Err((why, value))) => Err(SendError::new(
            value,
            match why {
                SendFailure::Closed => SendErrorKind::Closed,
                SendFailure::Disconnected => SendErrorKind::Disconnected,
            },
        )),
        Polled::Waiting(_) | Polled::DoneEnded(..) => {
            unreachable!("hatchery internal error: a send's entry was not complete")
        }
    }
}

impl<T> Future for SendFuture<'_, T> {
    type Output = Result<(), SendError<T>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        match &mut this.state {
            SendState::Start(_) => {
                let SendState::Start(value) = mem::replace(&mut this.state, SendState::Done) else {
                    unreachable!()
                };
                this.start(value, cx)
            }
            SendState::Parked { .. } => this.poll_parked(cx),
            SendState::Yielded => {
                this.state = SendState::Done;
                Poll::Ready(Ok(()))
            }
            SendState::Done => panic!("a hatchery channel send future was polled after it completed"),
        }
    }
}

impl<T> Drop for SendFuture<'_, T> {
    fn drop(&mut self) {
        if let SendState::Parked { key, .. } = self.state {
            let undelivered = self.sender.shared.borrow_mut().abandon_sender(key);
            drop(undelivered);
        }
    }
}

impl<T> fmt::Debug for SendFuture<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            SendState::Start(_) => "not started",
            SendState::Parked { .. } => "waiting",
            SendState::Yielded => "delivered",
            SendState::Done => "done",
        };
        f.debug_struct("SendFuture").field("state", &state).finish_non_exhaustive()
    }
}

/// [`RecvWait::key`] once its entry is gone without the wait being over (a panic while the
/// value was handed out, see `unpark_keeping`).
const GONE: usize = usize::MAX;

/// A parked receive: its entry in the channel and its cancellation registration. Shared by
/// [`RecvFuture`] and the receiver's `Stream`.
#[derive(Debug)]
pub(super) struct RecvWait {
    key: usize,
    park: Park,
}

impl RecvWait {
    /// Polls a parked receive: a completed one (value or failure) wins over a cancellation.
    /// Once this returned `Ready`, the entry is gone: drop the wait (its `Park` unregisters).
    pub(super) fn poll<T>(
        &mut self,
        shared: &RefCell<State<T>>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<T, RecvError>> {
        // The run is looked up only if the receive still waits (a completed one needs nothing).
        let mut here = None;
        let mut needs_clone = false;
        let polled = shared
            .borrow_mut()
            .poll_receiver(self.key, |w| here.insert(Here::get()).refresh(w, cx.waker(), &mut needs_clone));
        if needs_clone && let Some(h) = here {
            return self.repoll(h, shared, cx);
        }
        self.finish(polled, here, None, shared, cx)
    }

    /// [`poll`](Self::poll) when the entry's wake-up needs a foreign waker's clone: out of line,
    /// so that the common path carries no [`Leftover`].
    #[cold]
    #[inline(never)]
    fn repoll<T>(
        &mut self,
        h: Here,
        shared: &RefCell<State<T>>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<T, RecvError>> {
        let (polled, leftover) =
            h.repoll_with_clone(cx.waker(), |install| shared.borrow_mut().poll_receiver(self.key, install));
        self.finish(polled, Some(h), Some(leftover), shared, cx)
    }

    /// The rest of [`poll`](Self::poll), once the entry was looked at.
    #[inline(always)]
    fn finish<T>(
        &mut self,
        polled: Polled<Result<T, RecvFailure>>,
        here: Option<Here>,
        leftover: Option<Leftover>,
        shared: &RefCell<State<T>>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<T, RecvError>> {
        match polled {
            Polled::Waiting(old_waker) => {
                drop(old_waker);
                drop(leftover);
                let here = here.expect("hatchery internal error: a waiting receive was not refreshed");
                self.poll_cancel(&here, shared, false, cx)
            }
            Polled::Done(r) => self.unpark_keeping_dropping(shared, r.map_err(recv_error), leftover),
            ended @ Polled::DoneEnded(_) => {
                let r = recv_result(shared, ended);
                self.unpark_keeping_dropping(shared, r, leftover)
            }
        }
    }

    /// [`unpark_keeping`](Self::unpark_keeping), after dropping a re-poll's unused wake-up (a
    /// foreign waker's clone, whose destructor may panic just as well).
    #[inline(always)]
    fn unpark_keeping_dropping<T>(
        &mut self,
        shared: &RefCell<State<T>>,
        r: Result<T, RecvError>,
        leftover: Option<Leftover>,
    ) -> Poll<Result<T, RecvError>> {
        if leftover.is_some() {
            return self.drop_leftover_keeping(shared, r, leftover);
        }
        self.unpark_keeping(shared, r)
    }

    /// A completed receive met a panic (a foreign destructor) before handing its value out:
    /// the value goes back to the channel, and the panic goes on.
    #[cold]
    fn give_back_and_resume<T>(
        &mut self,
        shared: &RefCell<State<T>>,
        r: Result<T, RecvError>,
        p: Box<dyn std::any::Any + Send>,
    ) -> ! {
        // The entry is gone already: the future's drop must not look for it.
        self.key = GONE;
        if let Ok(v) = r {
            restore_after_panic(shared, v);
        }
        std::panic::resume_unwind(p)
    }

    #[cold]
    #[inline(never)]
    fn drop_leftover_keeping<T>(
        &mut self,
        shared: &RefCell<State<T>>,
        r: Result<T, RecvError>,
        leftover: Option<Leftover>,
    ) -> Poll<Result<T, RecvError>> {
        if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(leftover))) {
            self.give_back_and_resume(shared, r, p);
        }
        self.unpark_keeping(shared, r)
    }

    /// The receive completed: its cancellation registration goes, before the value is handed
    /// out. Unregistering drops a foreign waker (a combinator's), whose destructor may panic:
    /// then the value goes back to the channel instead of being lost with the unwinding.
    #[inline]
    fn unpark_keeping<T>(
        &mut self,
        shared: &RefCell<State<T>>,
        r: Result<T, RecvError>,
    ) -> Poll<Result<T, RecvError>> {
        let park = &mut self.park;
        if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| park.unpark())) {
            self.give_back_and_resume(shared, r, p);
        }
        Poll::Ready(r)
    }

    /// A parked receive that nothing has completed: registers for cancellation, and when one
    /// arrives, removes the entry (nothing was consumed). `just_parked`: parked in this poll,
    /// after its cancel point, with no foreign code run since (see `Here::register_parked`).
    #[inline]
    fn poll_cancel<T>(
        &mut self,
        here: &Here,
        shared: &RefCell<State<T>>,
        just_parked: bool,
        cx: &mut Context<'_>,
    ) -> Poll<Result<T, RecvError>> {
        match here.register_parked(&mut self.park, just_parked, cx, WaitingOn::Receive) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(c) => Poll::Ready(self.cancelled(shared, c)),
        }
    }

    /// A cancellation arrived: gives the entry up, unless foreign code that ran since the entry
    /// was last seen (the destructor of a replaced waker, a clone made to register) completed
    /// the receive: that wins.
    #[cold]
    #[inline(never)]
    fn cancelled<T>(&mut self, shared: &RefCell<State<T>>, c: Cancelled) -> Result<T, RecvError> {
        let mut state = shared.borrow_mut();
        match state.poll_receiver(self.key, |_| None) {
            Polled::Waiting(_) => {
                let waker = state.cancel_receiver(self.key);
                drop(state);
                drop(waker);
                Err(RecvError::Cancelled(c))
            }
            done => {
                drop(state);
                recv_result(shared, done)
            }
        }
    }

    /// The parked receive is dropped: a value already handed to it goes back to the channel.
    pub(super) fn abandon<T>(&self, shared: &RefCell<State<T>>) {
        if self.key == GONE {
            return;
        }
        let (woken, undeliverable, waker) = shared.borrow_mut().abandon_receiver(self.key);
        woken.into_iter().for_each(Wakeup::wake);
        drop((undeliverable, waker));
    }
}

/// The result of a receive whose entry the channel completed; wakes the receives it ended.
fn recv_result<T>(
    shared: &RefCell<State<T>>,
    polled: Polled<Result<T, RecvFailure>>,
) -> Result<T, RecvError> {
    match polled {
        Polled::Done(r) => r.map_err(recv_error),
        Polled::DoneEnded(r) => {
            let ended = shared.borrow_mut().take_ended();
            ended.into_iter().for_each(Wakeup::wake);
            r.map_err(recv_error)
        }
        Polled::Waiting(_) => unreachable!("hatchery internal error: a receive's entry was not complete"),
    }
}

/// A value taken from the channel whose hand-out a foreign waker's panic interrupted: back to
/// the channel (it no longer counts in transit), as a dropped receive's.
#[cold]
#[inline(never)]
fn restore_after_panic<T>(shared: &RefCell<State<T>>, v: T) {
    let (woken, undeliverable) = shared.borrow_mut().restore(v, false);
    // The receive it went to is woken; a second panic there is dropped (one is unwinding).
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        drop(undeliverable);
        woken.into_iter().for_each(Wakeup::wake);
    }));
}

fn recv_error(why: RecvFailure) -> RecvError {
    match why {
        RecvFailure::Closed => RecvError::Closed,
        RecvFailure::EndOfChannel => RecvError::EndOfChannel,
    }
}

/// The outcome of the start of a receive.
pub(super) enum RecvStart<T> {
    /// Got a value without waiting (the caller decides about a schedule point), and the
    /// sender that completed, to wake once the value is stored.
    Now(T, Option<Wakeup>),
    /// Parked: poll the wait again later.
    Parked(RecvWait),
    /// Failed without waiting.
    Failed(RecvError),
}

impl<T> Receiver<T> {
    /// The start of a receive: cancel point, then S6.3, then park. `for_stream`: the
    /// `Stream`'s receive (a value handed to its wait is not counted in transit).
    pub(super) fn start_recv(&self, here: &Here, cx: &mut Context<'_>, for_stream: bool) -> RecvStart<T> {
        self.start_recv_with(here, cx, for_stream, |here, waker| here.task_wakeup(waker))
    }

    /// The start of a receive. `wakeup` makes the wake-up if it must park: the task's own, or
    /// `None` for a foreign waker, which [`start_recv_cloned`](Self::start_recv_cloned) clones
    /// and starts over with (two copies: the common one carries no clone).
    #[inline]
    fn start_recv_with(
        &self,
        here: &Here,
        cx: &mut Context<'_>,
        for_stream: bool,
        wakeup: impl FnOnce(&Here, &Waker) -> Option<Wakeup>,
    ) -> RecvStart<T> {
        if let Err(c) = here.cancel_point() {
            return RecvStart::Failed(RecvError::Cancelled(c));
        }
        if self.is_closed() {
            return RecvStart::Failed(RecvError::Closed);
        }
        self.drop_stream_wait();
        let mut state = self.shared.borrow_mut();
        match state.try_recv() {
            Ok((v, woken)) => {
                drop(state);
                drop(wakeup);
                RecvStart::Now(v, woken)
            }
            Err(TryRecvError::Empty) => {
                let Some(wakeup) = wakeup(here, cx.waker()) else {
                    drop(state);
                    return self.start_recv_cloned(here, cx, for_stream);
                };
                let for_task = wakeup.is_task();
                let key = state.park_receiver(self.id, wakeup, !for_stream);
                drop(state);
                // Nobody can have sent or closed meanwhile (no other code ran): no need to ask
                // the channel about the new entry; nor to check for cancellation again, unless
                // a foreign waker was cloned.
                let mut wait = RecvWait { key, park: Park::new() };
                match wait.poll_cancel(here, &self.shared, for_task, cx) {
                    Poll::Pending => RecvStart::Parked(wait),
                    Poll::Ready(Ok(v)) => RecvStart::Now(v, None),
                    Poll::Ready(Err(e)) => RecvStart::Failed(e),
                }
            }
            Err(e) => {
                drop(state);
                drop(wakeup);
                match e {
                    TryRecvError::EndOfChannel => RecvStart::Failed(RecvError::EndOfChannel),
                    _ => unreachable!("the handle was checked"),
                }
            }
        }
    }

    /// A receive that must park with a foreign waker: cloning it is foreign code, which may use
    /// this channel (send, close it) or cancel us, so it is made with the channel free, and the
    /// receive starts over with it.
    #[cold]
    #[inline(never)]
    fn start_recv_cloned(&self, here: &Here, cx: &mut Context<'_>, for_stream: bool) -> RecvStart<T> {
        let cloned = here.wakeup(cx.waker());
        self.start_recv_with(here, cx, for_stream, move |_, _| Some(cloned))
    }

    /// A value taken on the fast path whose future was dropped before returning it.
    fn restore(&self, value: T) {
        let (woken, undeliverable) = self.shared.borrow_mut().restore(value, true);
        woken.into_iter().for_each(Wakeup::wake);
        drop(undeliverable);
    }
}

/// Future of [`Receiver::recv`]. Resolves to the next value, or to a [`RecvError`].
///
/// # Cancellation
///
/// A checkpoint (see [`Receiver::recv`]); cancellation is atomic. Dropping the future before it
/// returns is safe: nothing is consumed, and a value already handed to it goes to the
/// longest-waiting receiver, or back to the front of the buffer (which may then hold more than
/// its capacity, a value per such dropped receive, until it drains).
///
/// ```
/// use std::pin::pin;
/// use std::task::Poll;
/// use hatchery::channel;
/// hatchery::testing::run(async {
///     let (tx, rx) = channel::<u32>(0);
///     {
///         let mut recv = pin!(rx.recv());
///         let polled = std::future::poll_fn(|cx| Poll::Ready(recv.as_mut().poll(cx))).await;
///         assert!(polled.is_pending());
///         tx.try_send(7).unwrap(); // handed to the waiting receive...
///     } // ...which is dropped before it returns the value
///     assert_eq!(rx.try_recv(), Ok(7), "the value came back to the channel");
/// });
/// ```
#[must_use = "futures do nothing unless awaited"]
pub struct RecvFuture<'a, T> {
    receiver: &'a Receiver<T>,
    state: RecvState<T>,
}

enum RecvState<T> {
    Start,
    Parked(RecvWait),
    /// Received on the fast path; the cancel-shielded schedule point yielded (the turn's
    /// budget was spent): the value is returned on the next poll.
    Yielded(Option<T>),
    Done,
}

// The value is never pinned: it is moved in and out by value.
impl<T> Unpin for RecvFuture<'_, T> {}

impl<'a, T> RecvFuture<'a, T> {
    pub(super) fn new(receiver: &'a Receiver<T>) -> Self {
        RecvFuture { receiver, state: RecvState::Start }
    }
}

impl<T> Future for RecvFuture<'_, T> {
    type Output = Result<T, RecvError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        match &mut this.state {
            RecvState::Start => {
                let here = Here::get();
                match this.receiver.start_recv(&here, cx, false) {
                    RecvStart::Now(v, woken) => {
                        // Within the turn's budget the schedule point passes at once (DESIGN §3.4).
                        let passed = here.schedule_point(cx);
                        if let Some(w) = woken {
                            // A foreign waker's wake may panic: the value goes back, not down.
                            if let Err(p) =
                                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| here.wake(w)))
                            {
                                // Not lent yet: it does not count in transit.
                                restore_after_panic(&this.receiver.shared, v);
                                std::panic::resume_unwind(p);
                            }
                        }
                        if passed {
                            this.state = RecvState::Done;
                            return Poll::Ready(Ok(v));
                        }
                        // Held across the yield: in transit until returned (or restored).
                        this.receiver.shared.borrow_mut().lend();
                        this.state = RecvState::Yielded(Some(v));
                        Poll::Pending
                    }
                    RecvStart::Parked(wait) => {
                        this.state = RecvState::Parked(wait);
                        Poll::Pending
                    }
                    RecvStart::Failed(e) => {
                        this.state = RecvState::Done;
                        Poll::Ready(Err(e))
                    }
                }
            }
            RecvState::Parked(wait) => {
                let r = std::task::ready!(wait.poll(&this.receiver.shared, cx));
                this.state = RecvState::Done;
                Poll::Ready(r)
            }
            RecvState::Yielded(v) => {
                let v = v.take().expect("hatchery internal error: received value missing");
                this.state = RecvState::Done;
                let ended = this.receiver.shared.borrow_mut().returned();
                ended.into_iter().for_each(Wakeup::wake);
                Poll::Ready(Ok(v))
            }
            RecvState::Done => panic!("a hatchery channel receive future was polled after it completed"),
        }
    }
}

impl<T> Drop for RecvFuture<'_, T> {
    fn drop(&mut self) {
        match mem::replace(&mut self.state, RecvState::Done) {
            RecvState::Parked(wait) => wait.abandon(&self.receiver.shared),
            RecvState::Yielded(Some(v)) => self.receiver.restore(v),
            _ => {}
        }
    }
}

impl<T> fmt::Debug for RecvFuture<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            RecvState::Start => "not started",
            RecvState::Parked(_) => "waiting",
            RecvState::Yielded(_) => "received",
            RecvState::Done => "done",
        };
        f.debug_struct("RecvFuture").field("state", &state).finish_non_exhaustive()
    }
}
