//! Shared helpers for the integration tests.
#![allow(dead_code, unreachable_pub)]

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use hatchery::Instant;

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
pub async fn poll_twice<F: std::future::Future + ?Sized>(mut fut: std::pin::Pin<&mut F>) {
    for round in 0..2 {
        std::future::poll_fn(|cx| {
            let _ = fut.as_mut().poll(cx);
            std::task::Poll::Ready(())
        })
        .await;
        if round == 0 {
            hatchery::lowlevel::checkpoint().await.unwrap();
        }
    }
}

/// Runs `f` on the virtual clock with a fixed seed, jumping only after 20 ms of real idleness
/// (not at once, as `testing::run` does), so that bytes in flight on loopback are never
/// overtaken by a jump.
pub fn run_with_sockets<F: std::future::Future>(f: F) -> F::Output {
    hatchery::testing::builder()
        .clock(hatchery::testing::MockClock::with_autojump(Duration::from_millis(20)))
        .run(f)
}

/// A connected TCP pair on loopback: (client, server).
pub async fn tcp_pair() -> std::io::Result<(hatchery::net::TcpStream, hatchery::net::TcpStream)> {
    let listener = hatchery::net::TcpListener::bind(([127, 0, 0, 1], 0))?;
    let client = hatchery::net::TcpStream::connect(listener.local_addr()?).await?;
    let (server, peer) = listener.accept().await?;
    assert_eq!(peer, client.local_addr()?);
    Ok((client, server))
}

/// `f` under a deadline a virtual hour away: on an autojumping clock, a test that would hang
/// fails at once with `TimedOut` instead.
pub async fn watchdog<T>(f: impl std::future::Future<Output = std::io::Result<T>>) -> std::io::Result<T> {
    hatchery::fail_after(Duration::from_secs(3600), f).await
}
