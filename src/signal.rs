//! Signals: Ctrl-C as cancellation, and a receiver of signal numbers.
