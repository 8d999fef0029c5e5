//! Blocking work on a pool of threads: [`to_thread`].
