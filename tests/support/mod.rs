//! Shared helpers for the integration tests.
#![allow(dead_code, unreachable_pub)]

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;
use futures_io::AsyncRead;
use hatchery::lowlevel::{self, Timer};
use hatchery::net::{TcpListener, TcpStream};
use hatchery::{CancelScope, Cancelled, Instant};

/// Seconds after the virtual clock's origin.
pub fn at(secs: u64) -> Instant {
    Instant::ZERO + Duration::from_secs(secs)
}

pub fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Counts how many times values it handed out were dropped.
#[derive(Clone, Default)]
pub struct DropCounter(Rc<Cell<usize>>);

impl DropCounter {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn token(&self) -> DropToken {
        DropToken(self.0.clone())
    }
    pub fn count(&self) -> usize {
        self.0.get()
    }
}

pub struct DropToken(Rc<Cell<usize>>);

impl Drop for DropToken {
    fn drop(&mut self) {
        self.0.set(self.0.get() + 1);
    }
}

/// An append-only event log.
#[derive(Clone, Default)]
pub struct Log(Rc<RefCell<Vec<String>>>);

impl Log {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn push(&self, s: impl Into<String>) {
        self.0.borrow_mut().push(s.into());
    }
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut self.0.borrow_mut())
    }
}

/// A custom error type used to check that errors travel unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TestError {
    Cancelled(hatchery::Cancelled),
    Boom(u32),
    Start(hatchery::StartError),
}

impl From<hatchery::Cancelled> for TestError {
    fn from(c: hatchery::Cancelled) -> Self {
        TestError::Cancelled(c)
    }
}

impl From<hatchery::StartError> for TestError {
    fn from(e: hatchery::StartError) -> Self {
        TestError::Start(e)
    }
}

impl From<hatchery::TooSlow> for TestError {
    fn from(_: hatchery::TooSlow) -> Self {
        TestError::Boom(999)
    }
}

impl hatchery::CancelError for TestError {
    fn cancelled(&self) -> Option<&hatchery::Cancelled> {
        match self {
            TestError::Cancelled(c) => Some(c),
            _ => None,
        }
    }
}

/// Polls `fut` once with the current task's waker, then lets one batch pass and polls it once
/// more: enough for a nursery future to start its children and let them park, without driving
/// it to completion.
pub async fn poll_twice<F: Future + ?Sized>(mut fut: Pin<&mut F>) {
    for round in 0..2 {
        std::future::poll_fn(|cx| {
            let _ = fut.as_mut().poll(cx);
            Poll::Ready(())
        })
        .await;
        if round == 0 {
            hatchery::lowlevel::checkpoint().await.unwrap();
        }
    }
}

/// `testing::builder()` (virtual clock, fixed seed) with a clock that jumps only after 1 s of
/// real idleness, not at once, so that bytes in flight on loopback are never overtaken by a
/// jump. Loopback TCP is not always synchronous: a window update can wait for the delayed-ACK
/// timer (tens of milliseconds), and on a loaded two-core machine for longer; with 20 ms, and
/// even 250 ms, `stream_conformance`'s megabyte round trip sometimes met its virtual-hour
/// watchdog under load.
pub fn sockets_builder() -> hatchery::Builder {
    hatchery::testing::builder()
        .clock(hatchery::testing::MockClock::with_autojump(Duration::from_millis(1000)))
}

/// Runs `f` with [`sockets_builder`]'s set-up.
pub fn run_with_sockets<F: Future>(f: F) -> F::Output {
    sockets_builder().run(f)
}

/// A connected TCP pair on loopback: (client, server).
pub async fn tcp_pair() -> io::Result<(TcpStream, TcpStream)> {
    let listener = TcpListener::bind(([127, 0, 0, 1], 0))?;
    let client = TcpStream::connect(listener.local_addr()?).await?;
    let (server, peer) = listener.accept().await?;
    assert_eq!(peer, client.local_addr()?);
    Ok((client, server))
}

/// `f` under a deadline a virtual hour away: on an autojumping clock, a test that would hang
/// fails at once with `TimedOut` instead.
pub async fn watchdog<T>(f: impl Future<Output = io::Result<T>>) -> io::Result<T> {
    hatchery::fail_after(Duration::from_secs(3600), f).await
}

/// Polls `fut` once with the current task's waker and drops it: `Ready` with its output, or
/// `Pending`. Takes any `Unpin` future: a pinned reference (`fut.as_mut()`, `pin!(f)`) or a
/// `&mut` to an `Unpin` one.
pub async fn poll_once<F: Future + Unpin>(mut fut: F) -> Poll<F::Output> {
    std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut fut).poll(cx))).await
}

/// What `StreamExt::next` does: the next item of `s`, or `None` at its end.
pub async fn next<S: Stream + Unpin>(s: &mut S) -> Option<S::Item> {
    std::future::poll_fn(|cx| Pin::new(&mut *s).poll_next(cx)).await
}

/// A cancel scope, already cancelled: what runs in it fails at its first cancel point.
pub fn cancelled_scope() -> CancelScope {
    let scope = CancelScope::new();
    scope.handle().cancel();
    scope
}

/// Runs `f` inside a scope cancelled before it starts; returns what `f` returned.
pub async fn in_cancelled_scope<T, F: Future<Output = T>>(f: F) -> T {
    let mut out = None;
    let _ = cancelled_scope()
        .run(async {
            out = Some(f.await);
            Ok::<_, Cancelled>(())
        })
        .await;
    out.expect("the scope runs its body, which sees the cancellation at its first cancel point")
}

/// The error of type `E` inside an `io::Error`, if that is what it holds.
pub fn inner<E: std::error::Error + 'static>(e: &io::Error) -> Option<&E> {
    e.get_ref().and_then(|i| i.downcast_ref::<E>())
}

/// Whether an `io::Error` holds an error of type `E`.
pub fn is<E: std::error::Error + 'static>(e: &io::Error) -> bool {
    inner::<E>(e).is_some()
}

/// A foreign (non-hatchery) reader that delivers scripted chunks at virtual instants, then end
/// of stream. It waits on a `lowlevel::Timer` and never looks at cancellation itself, so a
/// `BufReader` over it must register for cancellation on its own.
pub struct Scripted {
    chunks: VecDeque<(Instant, Vec<u8>)>,
    eof_at: Instant,
    timer: Timer,
    armed: Option<Instant>,
}

impl Scripted {
    /// `chunks` as (milliseconds, bytes), then end of stream at `eof_ms`.
    pub fn new(chunks: &[(u64, &[u8])], eof_ms: u64) -> Scripted {
        let ms = |t| Instant::ZERO + Duration::from_millis(t);
        Scripted::at(chunks.iter().map(|&(t, b)| (ms(t), b.to_vec())), ms(eof_ms))
    }

    /// `chunks` at their instants (in order), then end of stream at `eof_at`.
    pub fn at(chunks: impl IntoIterator<Item = (Instant, Vec<u8>)>, eof_at: Instant) -> Scripted {
        Scripted { chunks: chunks.into_iter().collect(), eof_at, timer: Timer::new(), armed: None }
    }
}

impl AsyncRead for Scripted {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let due = self.chunks.front().map_or(self.eof_at, |c| c.0);
        if lowlevel::current_time() < due {
            if self.armed != Some(due) {
                self.timer.reset();
                self.armed = Some(due);
            }
            if self.timer.poll_at(due, cx).is_pending() {
                return Poll::Pending;
            }
        }
        let Some((_, data)) = self.chunks.front_mut() else { return Poll::Ready(Ok(0)) };
        let n = data.len().min(buf.len());
        buf[..n].copy_from_slice(&data[..n]);
        data.drain(..n);
        if data.is_empty() {
            self.chunks.pop_front();
        }
        Poll::Ready(Ok(n))
    }
}

/// Forwards a wake to the waker it holds: a waker that is not the polling task's own, as a
/// combinator of another crate would pass.
struct Forward(std::task::Waker);

impl std::task::Wake for Forward {
    fn wake(self: std::sync::Arc<Self>) {
        self.0.wake_by_ref();
    }
}

/// A new waker that wakes `waker`: what a combinator of another crate polls its futures with.
pub fn foreign_waker(waker: &std::task::Waker) -> std::task::Waker {
    std::task::Waker::from(std::sync::Arc::new(Forward(waker.clone())))
}

/// A waker that counts its wakes and forwards each to the task's own: a foreign combinator's
/// waker, made observable.
pub struct CountingForward {
    wakes: std::sync::atomic::AtomicU32,
    to: std::task::Waker,
}

impl CountingForward {
    /// How many times it was woken.
    pub fn wakes(&self) -> u32 {
        self.wakes.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl std::task::Wake for CountingForward {
    fn wake(self: std::sync::Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &std::sync::Arc<Self>) {
        self.wakes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.to.wake_by_ref();
    }
}

/// A [`CountingForward`] to the current task, and a waker made from it.
pub async fn counting_forward() -> (std::sync::Arc<CountingForward>, std::task::Waker) {
    let counter = std::future::poll_fn(|cx| {
        Poll::Ready(std::sync::Arc::new(CountingForward {
            wakes: std::sync::atomic::AtomicU32::new(0),
            to: cx.waker().clone(),
        }))
    })
    .await;
    let waker = std::task::Waker::from(counter.clone());
    (counter, waker)
}

/// Like [`poll_once`], through a waker that is not the task's own (it forwards to it): a parked
/// operation then registers a waiter for cancellation, which `registrations().parked` counts.
/// (Polled with its own task's waker, an operation needs no registration at all.)
pub async fn poll_once_foreign<F: Future + Unpin>(mut fut: F) -> Poll<F::Output> {
    std::future::poll_fn(|cx| {
        let waker = foreign_waker(cx.waker());
        Poll::Ready(Pin::new(&mut fut).poll(&mut Context::from_waker(&waker)))
    })
    .await
}
