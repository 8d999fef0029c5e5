//! # hatchery
//!
//! A structured-concurrency async runtime in the tradition of Python's Trio and Curio.
//!
//! - **Nurseries own their tasks.** [`nursery()`] returns only when its body and every child have
//!   finished; children may borrow from the code that opened it; errors and panics always reach
//!   the nursery.
//! - **Cancel scopes with deadlines and shields.** [`CancelScope`], [`move_on_after`],
//!   [`fail_after`]: level-triggered, cooperative cancellation delivered at checkpoints; the
//!   scope that was cancelled absorbs it.
//! - **Channels that lose nothing**: [`channel`] (rendezvous or bounded) and [`unbounded`]; a
//!   cancelled `send` hands its value back, a cancelled `recv` took nothing. Locks, semaphores,
//!   events and [`sync::generate`] (a lazy producer task feeding a consumer, Trio's
//!   `as_safe_channel`) in [`sync`].
//! - **Sockets, servers and blocking work**: [`net`] (TCP, UDP, Unix; [`net::serve_tcp`],
//!   [`net::connect_tcp`] with happy eyeballs), [`to_thread`], and [`signal`] for Ctrl-C as a
//!   cancellation. Every socket operation is a checkpoint and loses nothing when cancelled.
//! - **Its own event loop** on the `polling` crate, one per [`run`], on one thread, with a
//!   virtual clock and seeded scheduling for tests ([`testing`]).
//!
//! ```
//! use std::time::Duration;
//! use hatchery::{nursery, sleep, Error};
//!
//! hatchery::run(async {
//!     let greeting = String::from("hello");
//!     nursery(async |n| {
//!         n.start_soon(async {
//!             sleep(Duration::from_millis(2)).await?;
//!             println!("{greeting}, alice");
//!             Ok(())
//!         });
//!         n.start_soon(async {
//!             sleep(Duration::from_millis(1)).await?;
//!             println!("{greeting}, bob");
//!             Ok(())
//!         });
//!         Ok::<_, Error>(())
//!     })
//!     .await?;
//!     Ok::<_, Error>(())
//! })
//! .unwrap();
//! ```
//!
//! # How it works
//!
//! [`run`] drives one root future with an event loop built on `polling` (epoll on Linux, kqueue
//! on the BSDs and macOS; hatchery is Unix-only for now, and tested on Linux).
//! A nursery polls its children from inside its own future, each with its own waker, so only
//! woken children run and children can borrow; wake-ups climb the tree of nurseries to the root.
//! Every blocking operation parks through one protocol ([`lowlevel`]) that a cancel scope can
//! interrupt, so every wait is cancellable and nothing is lost when it is.
//!
//! See `DESIGN.md` in the repository for the full design.

#![warn(clippy::undocumented_unsafe_blocks)]

mod cancel;
pub mod debug;
mod error;
pub mod io;
pub mod lowlevel;
pub mod net;
mod nursery;
mod panics;
mod runtime;
pub mod signal;
pub mod sync;
pub mod testing;
pub mod thread;
mod time;

pub use cancel::{
    CancelHandle, CancelScope, FailAfter, Scoped, current_effective_deadline, fail_after, fail_at,
    move_on_after, move_on_at,
};
pub use error::{
    BusyResource, CancelError, CancelSource, Cancelled, ClosedResource, Error, JoinError, NurseryError,
    Result, RunError, RunFinished, StartError, TooSlow, WriteAllError,
};
pub use nursery::{JoinHandle, Nursery, TaskStatus, nursery};
pub use runtime::clock::Instant;
pub use runtime::context::SchedulePolicy;
pub use runtime::{Builder, DEFAULT_YIELD_BUDGET, Rejected, RunHandle, run};
pub use sync::channel::{
    ChannelStatistics, Receiver, RecvError, RecvFuture, SendError, SendErrorKind, SendFuture, Sender,
    TryRecvError, TrySendError, channel, unbounded,
};
pub use sync::{CapacityLimiter, Condition, Event, Mutex, Semaphore};
pub use thread::to_thread;
pub use time::{Sleep, SleepOutput, now, sleep, sleep_forever, sleep_until};

/// The README's examples, compiled and run as doctests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
