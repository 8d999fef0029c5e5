//! Channels and synchronisation primitives that lose nothing under cancellation.
//!
//! Library layer: written only against [`crate::lowlevel`] (the parking protocol), like `time`.

// -- channels (memory channels) --

// -- synchronisation primitives (parking lot, Event, Mutex, Semaphore, CapacityLimiter, Condition) --
