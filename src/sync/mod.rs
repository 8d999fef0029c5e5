//! Channels and synchronisation primitives that lose nothing under cancellation.
//!
//! Library layer: written only against [`crate::lowlevel`] (the parking protocol), like `time`.

// -- channels (memory channels) --
pub mod channel;

// -- a lazy producer task feeding a consumer (Trio's `as_safe_channel`) --
mod generate;

pub use generate::{Items, ItemsRecv, YieldFuture, Yielder, generate};

// -- synchronisation primitives (parking lot, Event, Mutex, Semaphore, CapacityLimiter, Condition) --
mod condition;
mod event;
mod limiter;
mod mutex;
mod parking_lot;
mod semaphore;

// -- an optional wake-up slot kept up to date (`generate`) --
mod waker_slot;

pub use condition::{Condition, ConditionStatistics, ConditionWait, WaitError};
pub use event::{Event, EventStatistics, EventWait};
pub(crate) use limiter::OwnedCapacityToken;
pub use limiter::{CapacityLimiter, CapacityLimiterStatistics, CapacityToken, LimiterAcquire};
pub use mutex::{BrokenMutex, LockError, Mutex, MutexGuard, MutexLock, MutexStatistics, TryLockError};
pub use semaphore::{
    InvalidMaxValue, Semaphore, SemaphoreAcquire, SemaphorePermit, SemaphoreStatistics, TooManyReleases,
    TryAcquireError,
};
