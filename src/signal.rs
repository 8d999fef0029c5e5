//! Signals: Ctrl-C as cancellation ([`ctrl_c_cancels`]), and a receiver of signal numbers
//! ([`Signals`]).
//!
//! Rust has no asynchronous exceptions, so hatchery delivers SIGINT the way the rest of the
//! crate works: as the cancellation of a scope (Trio's KeyboardInterrupt, restated in S11.x).
//! Nothing changes for a program that does not ask: signals keep their usual effect.
//!
//! # Graceful shutdown of a server
//!
//! ```no_run
//! use std::process::ExitCode;
//! use hatchery::{nursery, signal, sleep_forever, Error};
//!
//! async fn serve() -> Result<(), Error> {
//!     nursery(async |n| {
//!         n.start_soon(async {
//!             let r = sleep_forever().await; // accept connections, say
//!             println!("worker: cleaning up");
//!             r.map_err(Error::from)
//!         });
//!         Ok::<_, Error>(())
//!     })
//!     .await?;
//!     Ok(())
//! }
//!
//! fn main() -> ExitCode {
//!     match hatchery::run(signal::ctrl_c_cancels(serve())) {
//!         Ok(outcome) => outcome.exit_code(), // 0, or 130 after Ctrl-C, 143 after SIGTERM
//!         Err(e) => {
//!             eprintln!("error: {e}");
//!             ExitCode::FAILURE
//!         }
//!     }
//! }
//! ```
//!
//! The first SIGINT or SIGTERM cancels the body: its nurseries cancel their children, which
//! run their cleanup (shielded scopes work as usual), and the call returns
//! [`Outcome::Interrupted`]. A second SIGINT or SIGTERM while that cleanup runs ends the
//! process at once.
//!
//! # Exit statuses
//!
//! | situation | status |
//! |---|---|
//! | the body finished, no signal | `0` ([`Outcome::exit_status`]) |
//! | interrupted by SIGINT, cleanup finished | `130` = 128 + 2 (the shell's convention) |
//! | interrupted by SIGTERM, cleanup finished | `143` = 128 + 15 |
//! | a second SIGINT or SIGTERM during cleanup | 128 + that second signal (`130` or `143`), at once: the process calls `_exit` from the signal handler, so no destructor runs and unflushed output is lost |
//! | SIGINT when no [`ctrl_c_cancels`] or [`Signals`] listens for it | the usual: killed by the signal (a shell shows 130) |
//!
//! All but the last are exits with that status (`ExitStatus::code()` is `Some(130)`), not
//! deaths by the signal; a shell shows the same number either way in `$?`. Where the
//! difference matters (a shell script's loop stops at a child killed by Ctrl-C but not at one
//! that exited with 130; systemd counts a death by SIGTERM as a clean stop but exit status 143
//! as a failure), end `main` with [`Outcome::exit_by_signal`] instead of
//! [`Outcome::exit_code`]: after the cleanup, an interrupted run then dies by its signal.
//!
//! # Caveats
//!
//! Signals are process-wide; hatchery installs its handlers through `signal-hook`, which keeps
//! a handler installed once a signal has been registered. Dropping the last receiver of a
//! signal restores its earlier behaviour: on Linux hatchery reads the disposition the signal
//! had before its first registration (from `/proc/self/status`) and, if it was the default,
//! emulates the default again (for SIGINT: terminate); a signal that was ignored stays ignored,
//! and a handler installed by other code before keeps running. Elsewhere the default is
//! assumed. Signals whose default action `signal-hook` does not know (real-time signals) are
//! ignored once no receiver is left.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::io;
use std::os::unix::net::UnixStream;
use std::pin::{Pin, pin};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use signal_hook::SigId;
use signal_hook::iterator::backend::SignalDelivery;
use signal_hook::iterator::exfiltrator::SignalOnly;

use crate::cancel::CancelScope;
use crate::error::{CancelError, CancelSource, Cancelled};
use crate::lowlevel::{IoSource, Park, cancel_shielded_checkpoint, checkpoint_if_cancelled};
use crate::runtime::context;

pub use signal_hook::consts::signal::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2, SIGWINCH};

/// Largest signal number `signal-hook` accepts, plus one.
const MAX_SIGNAL: i32 = 128;

// ---------------------------------------------------------------------------------------------
// The receiver

/// A receiver of signals: each signal in its set that arrives is reported by
/// [`recv`](Signals::recv) (or the [`Stream`](futures_core::Stream) impl), as its number.
///
/// While a `Signals` exists, its signals no longer have their usual effect (a SIGINT does not
/// kill the process); dropping it restores that (see the [module docs](self)). Several
/// receivers may listen for the same signal: each gets every occurrence.
///
/// **Coalescing.** A signal that arrives several times before it is read is reported once,
/// and signals read together come out in ascending order of their numbers, not in arrival
/// order (the OS itself merges pending signals of one kind; `signal-hook` keeps one flag per
/// signal). Count events, not signals, if the count matters.
///
/// A `Signals` belongs to the run that created it (it waits through that run's reactor).
///
/// ```
/// use hatchery::signal::{Signals, SIGUSR1, SIGUSR2};
/// hatchery::run(async {
///     let mut signals = Signals::new(&[SIGUSR1, SIGUSR2])?;
///     signal_hook::low_level::raise(SIGUSR2)?; // a signal to this process
///     signal_hook::low_level::raise(SIGUSR1)?;
///     assert_eq!(signals.recv().await?, SIGUSR1); // ascending order
///     assert_eq!(signals.recv().await?, SIGUSR2);
///     Ok::<_, std::io::Error>(())
/// })
/// .unwrap();
/// ```
pub struct Signals {
    /// `signal-hook`'s side: the handlers' flags and the write end of the self-pipe. An
    /// `Option` only so that `Drop` can unregister it before the bookkeeping.
    delivery: Option<SignalDelivery<UnixStream, SignalOnly>>,
    /// The read end of the self-pipe (a duplicate of the one `delivery` drains), registered in
    /// the run's reactor.
    source: IoSource<UnixStream>,
    /// The run `source` is registered in.
    run: u64,
    /// Signals taken from `delivery` but not returned yet.
    buffer: VecDeque<i32>,
    /// The set, sorted, without duplicates.
    signals: Vec<i32>,
    /// The cancellation registration of a [`Stream`](futures_core::Stream) wait.
    park: Park,
}

impl fmt::Debug for Signals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signals").field("signals", &self.signals).field("buffered", &self.buffer).finish()
    }
}

impl Signals {
    /// Starts listening for `signals`. Signals that arrive from now on are kept until read.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for an empty set, a number that is not a signal, or a signal that cannot
    /// be handled (SIGKILL, SIGSTOP, and SIGSEGV, SIGILL, SIGFPE, which `signal-hook` refuses);
    /// otherwise what the OS reports (no descriptors left for the self-pipe, say).
    ///
    /// # Panics
    ///
    /// Outside a run.
    pub fn new(signals: &[i32]) -> io::Result<Signals> {
        let mut set = signals.to_vec();
        set.sort_unstable();
        set.dedup();
        if set.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "Signals::new needs at least one signal",
            ));
        }
        for &s in &set {
            check_signal(s)?;
        }
        let (read, write) = UnixStream::pair()?;
        read.set_nonblocking(true)?;
        write.set_nonblocking(true)?;
        let source = IoSource::new(read.try_clone()?)?;
        let run = context::core().id;
        // Take the signals away from their usual action before the handlers are in, so a
        // signal in between is dropped rather than fatal.
        for &s in &set {
            disposition::acquire(s);
        }
        let delivery = match SignalDelivery::with_pipe(read, write, SignalOnly, &set) {
            Ok(d) => d,
            Err(e) => {
                for &s in &set {
                    disposition::release(s);
                }
                return Err(e);
            }
        };
        Ok(Signals {
            delivery: Some(delivery),
            source,
            run,
            buffer: VecDeque::new(),
            signals: set,
            park: Park::new(),
        })
    }

    /// The signals this receiver listens for, in ascending order.
    pub fn signals(&self) -> &[i32] {
        &self.signals
    }

    /// Waits for the next signal and returns its number.
    ///
    /// # Cancellation
    ///
    /// A checkpoint. Cancelled or dropped while it waits, it consumes nothing: the signals
    /// that arrive are there for the next `recv`. Once it has taken a signal it returns it,
    /// even if a cancellation arrives meanwhile (the cancellation stays pending).
    ///
    /// # Errors
    ///
    /// [`Cancelled`] if the calling code is cancelled.
    ///
    /// # Panics
    ///
    /// Outside the run that created this receiver.
    pub async fn recv(&mut self) -> Result<i32, Cancelled> {
        self.check_run();
        self.stop_stream_wait();
        checkpoint_if_cancelled()?;
        if self.buffer.is_empty() {
            let Signals { source, delivery, buffer, .. } = self;
            let delivery = delivery.as_mut().expect("a Signals has its delivery until dropped");
            source.read_with(|_| fill(delivery, buffer)).await.map_err(expect_cancelled)?;
        } else {
            cancel_shielded_checkpoint().await;
        }
        // Taken only now, after the last await: a future dropped earlier consumed nothing.
        Ok(self.buffer.pop_front().expect("hatchery internal error: no signal after a successful wait"))
    }

    /// The next signal if one has arrived, without waiting; not a checkpoint.
    ///
    /// ```
    /// use hatchery::signal::{Signals, SIGUSR1};
    /// hatchery::run(async {
    ///     let mut signals = Signals::new(&[SIGUSR1])?;
    ///     assert_eq!(signals.try_recv(), None);
    ///     signal_hook::low_level::raise(SIGUSR1)?;
    ///     signal_hook::low_level::raise(SIGUSR1)?; // coalesced with the first
    ///     assert_eq!(signals.try_recv(), Some(SIGUSR1));
    ///     assert_eq!(signals.try_recv(), None);
    ///     Ok::<_, std::io::Error>(())
    /// })
    /// .unwrap();
    /// ```
    pub fn try_recv(&mut self) -> Option<i32> {
        self.stop_stream_wait();
        if self.buffer.is_empty() {
            let delivery = self.delivery.as_mut().expect("a Signals has its delivery until dropped");
            let _ = fill(delivery, &mut self.buffer);
        }
        self.buffer.pop_front()
    }

    fn check_run(&self) {
        assert!(
            context::core().id == self.run,
            "a hatchery::signal::Signals receiver belongs to the run that created it; create a new one in this run"
        );
    }

    fn stop_stream_wait(&mut self) {
        self.park.unpark();
    }
}

/// Moves the signals that arrived into `buffer`; `WouldBlock` if there were none.
fn fill(delivery: &mut SignalDelivery<UnixStream, SignalOnly>, buffer: &mut VecDeque<i32>) -> io::Result<()> {
    // `pending` drains the self-pipe first, then reads the flags the handlers set before they
    // wrote to it: a signal is either seen now or has left a byte that wakes the next wait.
    buffer.extend(delivery.pending());
    if buffer.is_empty() { Err(io::ErrorKind::WouldBlock.into()) } else { Ok(()) }
}

/// The only error a wait on the self-pipe can end with is a cancellation (the receiver is
/// used exclusively, never closed, and its run was checked).
fn expect_cancelled(e: io::Error) -> Cancelled {
    match Cancelled::from_io(&e) {
        Some(c) => c.clone(),
        None => panic!("hatchery internal error: waiting for signals failed: {e}"),
    }
}

fn check_signal(s: i32) -> io::Result<()> {
    if s <= 0 || s >= MAX_SIGNAL {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{s} is not a signal number")));
    }
    if signal_hook::consts::FORBIDDEN.contains(&s) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("signal {} cannot be handled", signal_name(s)),
        ));
    }
    Ok(())
}

/// `SIGINT` and the like, or the number for signals without a known name.
fn signal_name(s: i32) -> String {
    signal_hook::low_level::signal_name(s).map_or_else(|| format!("signal {s}"), str::to_owned)
}

impl Drop for Signals {
    /// Unregisters the handlers' actions, then gives the signals their earlier behaviour back
    /// if no other receiver listens.
    fn drop(&mut self) {
        drop(self.delivery.take());
        for &s in &self.signals {
            disposition::release(s);
        }
    }
}

/// Each item is what [`recv`](Signals::recv) would return; the stream never ends.
///
/// # Cancellation
///
/// Every poll starts with a cancel point: in a cancelled scope the stream yields
/// `Some(Err(Cancelled))` and consumes nothing, even when a signal is ready (also after a wait
/// whose future was dropped, or a [`try_recv`](Signals::try_recv) in between). A wait is
/// cancellable and loses nothing, as for `recv`. Unlike `recv`, `poll_next` is not a schedule
/// point when a signal is ready.
///
/// ```
/// use std::pin::Pin;
/// use futures_core::Stream;
/// use hatchery::signal::{Signals, SIGUSR2};
///
/// async fn next<S: Stream + Unpin>(s: &mut S) -> Option<S::Item> {
///     std::future::poll_fn(|cx| Pin::new(&mut *s).poll_next(cx)).await
/// }
///
/// hatchery::run(async {
///     let mut signals = Signals::new(&[SIGUSR2])?;
///     signal_hook::low_level::raise(SIGUSR2)?;
///     assert_eq!(next(&mut signals).await.unwrap()?, SIGUSR2);
///     Ok::<_, std::io::Error>(())
/// })
/// .unwrap();
/// ```
impl futures_core::Stream for Signals {
    type Item = Result<i32, Cancelled>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        this.check_run();
        // Every poll, not only an item's first: the stream cannot tell a wait polled again from
        // a new item after a dropped wait, and neither may consume a signal once cancelled.
        if let Err(c) = checkpoint_if_cancelled() {
            this.stop_stream_wait();
            return Poll::Ready(Some(Err(c)));
        }
        if this.buffer.is_empty() {
            let Signals { source, delivery, buffer, park, .. } = this;
            let delivery = delivery.as_mut().expect("a Signals has its delivery until dropped");
            match source.poll_read_with(cx, park, |_| fill(delivery, buffer)) {
                // A result (an error too) has let go of the park already.
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(expect_cancelled(e)))),
                Poll::Ready(Ok(())) => {}
            }
        } else {
            // Signals were buffered (by `try_recv`) while a wait was registered.
            this.stop_stream_wait();
        }
        Poll::Ready(this.buffer.pop_front().map(Ok))
    }
}

// ---------------------------------------------------------------------------------------------
// Ctrl-C as cancellation

/// How [`ctrl_c_cancels`] ended (when the body did not fail).
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "the outcome says whether the program was interrupted; see `exit_code`"]
pub enum Outcome<T> {
    /// The body finished with this value and no signal arrived.
    Completed(T),
    /// SIGINT or SIGTERM arrived and cancelled the body.
    Interrupted {
        /// The signal that arrived first ([`SIGINT`] or [`SIGTERM`]).
        signal: i32,
        /// What the body returned anyway, if it finished with a value despite the cancellation
        /// (a body's value is never thrown away); `None` when the cancellation ended it.
        value: Option<T>,
    },
}

impl<T> Outcome<T> {
    /// The signal that interrupted the body, if any.
    pub fn signal(&self) -> Option<i32> {
        match self {
            Outcome::Completed(_) => None,
            Outcome::Interrupted { signal, .. } => Some(*signal),
        }
    }

    /// Whether a signal interrupted the body.
    pub fn is_interrupted(&self) -> bool {
        self.signal().is_some()
    }

    /// The body's value, if it produced one.
    pub fn into_value(self) -> Option<T> {
        match self {
            Outcome::Completed(v) => Some(v),
            Outcome::Interrupted { value, .. } => value,
        }
    }

    /// The conventional exit status: `0` when completed, `128 + signal` when interrupted
    /// (130 for SIGINT, 143 for SIGTERM), as a shell reports a process killed by that signal.
    ///
    /// ```
    /// use hatchery::signal::{Outcome, SIGINT, SIGTERM};
    /// assert_eq!(Outcome::Completed(()).exit_status(), 0);
    /// assert_eq!(Outcome::<()>::Interrupted { signal: SIGINT, value: None }.exit_status(), 130);
    /// assert_eq!(Outcome::<()>::Interrupted { signal: SIGTERM, value: None }.exit_status(), 143);
    /// ```
    pub fn exit_status(&self) -> u8 {
        self.signal().map_or(0, exit_status_for)
    }

    /// [`exit_status`](Outcome::exit_status) as the value `main` returns.
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(self.exit_status())
    }

    /// Like [`exit_code`](Outcome::exit_code), except that an interrupted run ends the process
    /// here by the signal that interrupted it (its default action, as if hatchery had never
    /// caught it), after flushing standard output and error: the parent then sees a death by
    /// SIGINT or SIGTERM, not an exit with status 130 or 143. Call it last in `main`, once the
    /// run is over: destructors still pending do not run. A completed run returns
    /// `ExitCode::SUCCESS`; if the default action cannot be emulated, the exit status is
    /// returned instead.
    ///
    /// ```no_run
    /// use std::process::ExitCode;
    /// use hatchery::signal::ctrl_c_cancels;
    /// fn main() -> ExitCode {
    ///     let outcome = hatchery::run(ctrl_c_cancels(async { Ok::<_, std::io::Error>(()) }));
    ///     match outcome {
    ///         Ok(o) => o.exit_by_signal(), // killed by SIGINT after Ctrl-C, like `sleep` is
    ///         Err(_) => ExitCode::FAILURE,
    ///     }
    /// }
    /// ```
    pub fn exit_by_signal(&self) -> ExitCode {
        if let Some(signal) = self.signal() {
            use std::io::Write;
            let _ = std::io::stdout().flush();
            let _ = std::io::stderr().flush();
            // Resets the disposition to the default and raises the signal: does not return for
            // SIGINT and SIGTERM.
            let _ = signal_hook::low_level::emulate_default_handler(signal);
        }
        self.exit_code()
    }
}

/// 128 + the signal number, saturated (signal numbers are small).
fn exit_status_for(signal: i32) -> u8 {
    u8::try_from(128 + signal).unwrap_or(u8::MAX)
}

/// Runs `body` in a cancel scope that the first SIGINT or SIGTERM cancels: the way a server
/// shuts down gracefully on Ctrl-C. See the [module docs](self) for a complete `main` and the
/// exit statuses.
///
/// - No signal: the body's value, as [`Outcome::Completed`].
/// - A first SIGINT or SIGTERM cancels the scope (reason `"SIGINT received"` or
///   `"SIGTERM received"`); nurseries inside cancel their children, which run their cleanup.
///   When the body is done, the call returns [`Outcome::Interrupted`] with that signal (and
///   the body's value, if it finished with one anyway). A signal that arrives while the body
///   is finishing, before the call returns, counts too.
/// - A second SIGINT or SIGTERM, while the body is still shutting down, ends the process at
///   once with status 128 + that signal (130 for SIGINT) from the signal handler, which works
///   even if the run is stuck.
///
/// Outside the call, the signals have their usual effect again. A signal that was ignored when
/// hatchery first looked at it is left alone (as Trio leaves an ignored SIGINT), whether the
/// process started with it ignored or the program ignored it itself before: a server started
/// as a background job of a shell script (`server &`, which starts with SIGINT ignored) does
/// not stop at the script's Ctrl-C, and still stops at a SIGTERM. That is read from
/// `/proc/self/status`, so on Linux only; elsewhere both signals are taken.
///
/// ```
/// use hatchery::signal::{ctrl_c_cancels, Outcome, SIGTERM};
/// use hatchery::{nursery, sleep_forever, testing};
/// let out = testing::run(ctrl_c_cancels(async {
///     nursery(async |n| {
///         n.start_soon(async { sleep_forever().await.map_err(std::io::Error::from) });
///         // In a test, send ourselves the signal once everything waits.
///         n.start_soon(async {
///             testing::wait_all_tasks_blocked().await?;
///             signal_hook::low_level::raise(SIGTERM)
///         });
///         Ok::<_, std::io::Error>(())
///     })
///     .await?;
///     Ok::<_, std::io::Error>("never returned")
/// }));
/// let outcome = out.unwrap();
/// assert_eq!(outcome, Outcome::Interrupted { signal: SIGTERM, value: None });
/// assert_eq!(outcome.exit_status(), 143);
/// ```
///
/// # Errors
///
/// The body's own errors, unchanged (the signal then is not reported), and an `io::Error`
/// (converted into `E`) if the handlers cannot be installed.
///
/// # Panics
///
/// Outside a run.
pub async fn ctrl_c_cancels<F, T, E>(body: F) -> Result<Outcome<T>, E>
where
    F: Future<Output = Result<T, E>>,
    E: CancelError + From<io::Error>,
{
    // A signal ignored when hatchery first looked stays ignored (as Trio leaves an ignored
    // SIGINT alone): a shell script's background job must not stop at the script's Ctrl-C.
    let taken: Vec<i32> =
        [SIGINT, SIGTERM].into_iter().filter(|&s| !disposition::ignored_at_start(s)).collect();
    // The receiver first: its bookkeeping records the signals' earlier disposition before the
    // exit actions below install `signal-hook`'s handler.
    let mut signals = if taken.is_empty() { None } else { Some(Signals::new(&taken)?) };
    let exit = ExitOnSecondSignal::register(&taken)?;
    let scope = CancelScope::new();
    let handle = scope.handle();
    let mut body = pin!(scope.run(body));
    let mut first = None;
    let mut watcher = signals.as_ref().map(|_| Watcher::new());
    let out = std::future::poll_fn(|cx| {
        if let Some(w) = &mut watcher
            && let Some(signals) = &mut signals
            && let Some(mut wcx) = w.context_if_woken(cx)
        {
            match futures_core::Stream::poll_next(Pin::new(signals), &mut wcx) {
                Poll::Ready(Some(Ok(sig))) => {
                    watcher = None;
                    first = Some(sig);
                    // A signal that came before the exit actions were in did not arm them.
                    exit.arm();
                    handle.cancel_from(CancelSource::Shutdown, format!("{} received", signal_name(sig)));
                }
                // The code around is cancelled: the body sees that too and ends; nothing
                // left to watch for (a second signal still ends the process).
                Poll::Ready(Some(Err(_)) | None) => watcher = None,
                Poll::Pending => {}
            }
        }
        body.as_mut().poll(cx)
    })
    .await;
    if first.is_none() {
        // A signal that arrived while the body was finishing is not lost: the run was
        // interrupted all the same (as Trio raises a KeyboardInterrupt that arrives after main
        // finished).
        first = signals.as_mut().and_then(Signals::try_recv);
    }
    // From here on the signals have their usual effect. One that came after the receiver was
    // last read went to it and not to that effect: the exit actions, still in, saw it.
    drop(signals);
    if first.is_none() {
        first = exit.seen();
    }
    drop(exit);
    match (out, first) {
        (Ok(Some(v)), None) => Ok(Outcome::Completed(v)),
        (Ok(value), Some(signal)) => Ok(Outcome::Interrupted { signal, value }),
        (Ok(None), None) => {
            unreachable!("hatchery internal error: only a signal cancels the scope of ctrl_c_cancels")
        }
        (Err(e), _) => Err(e),
    }
}

/// The signal receiver's side of [`ctrl_c_cancels`]: the receiver is polled with a waker of
/// its own, and only on the polls after that waker was woken (a signal arrived, or the code
/// around was cancelled), not on every poll of the body. A body that yields a million times
/// costs the receiver nothing.
struct Watcher {
    flag: Arc<WatcherWake>,
    /// A waker of `flag`, for the receiver's `Context`.
    waker: Waker,
    /// The task waker last stored in `flag`, to compare without its lock.
    task: Waker,
}

/// Records that the receiver was woken, and wakes the task.
struct WatcherWake {
    /// Set by a wake-up, cleared just before the receiver is polled.
    woken: AtomicBool,
    task: Mutex<Waker>,
}

impl Wake for WatcherWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::SeqCst);
        // Cloned out of the lock: the task's waker runs with no lock of ours held.
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).clone();
        task.wake();
    }
}

impl Watcher {
    fn new() -> Watcher {
        let flag =
            Arc::new(WatcherWake { woken: AtomicBool::new(true), task: Mutex::new(Waker::noop().clone()) });
        Watcher { waker: Waker::from(flag.clone()), flag, task: Waker::noop().clone() }
    }

    /// Makes a wake-up of the receiver wake the task of `cx`; then, if the receiver was woken
    /// since its last poll (or was never polled), the `Context` to poll it with.
    fn context_if_woken(&mut self, cx: &Context<'_>) -> Option<Context<'_>> {
        if !self.task.will_wake(cx.waker()) {
            self.task = cx.waker().clone();
            *self.flag.task.lock().unwrap_or_else(|e| e.into_inner()) = self.task.clone();
        }
        // Cleared before the poll, so a wake-up during or after it is not lost.
        self.flag.woken.swap(false, Ordering::SeqCst).then(|| Context::from_waker(&self.waker))
    }
}

/// The "second signal exits" actions of one [`ctrl_c_cancels`] call, unregistered on drop.
///
/// For each of SIGINT and SIGTERM: first an action that exits with 128 + signal if `armed` is
/// set, then one that sets `armed`. `signal-hook` runs a signal's actions in registration order,
/// so the first signal finds `armed` clear and sets it, and the second exits, all inside the
/// signal handler, without a pass of the event loop.
struct ExitOnSecondSignal {
    ids: Vec<SigId>,
    armed: Arc<AtomicBool>,
    /// Per signal, set by its handler: which signals arrived while these actions were in.
    seen: Vec<(i32, Arc<AtomicBool>)>,
}

impl ExitOnSecondSignal {
    fn register(signals: &[i32]) -> io::Result<ExitOnSecondSignal> {
        let armed = Arc::new(AtomicBool::new(false));
        let seen: Vec<_> = signals.iter().map(|&s| (s, Arc::new(AtomicBool::new(false)))).collect();
        let mut me = ExitOnSecondSignal { ids: Vec::with_capacity(3 * signals.len()), armed, seen };
        for &sig in signals {
            let status = i32::from(exit_status_for(sig));
            me.ids.push(signal_hook::flag::register_conditional_shutdown(sig, status, me.armed.clone())?);
        }
        for (sig, flag) in &me.seen {
            me.ids.push(signal_hook::flag::register(*sig, me.armed.clone())?);
            me.ids.push(signal_hook::flag::register(*sig, flag.clone())?);
        }
        Ok(me)
    }

    /// The next signal exits: for a first signal that came before these actions were in.
    fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    /// A signal that arrived while these actions were in (the first in the order given).
    fn seen(&self) -> Option<i32> {
        self.seen.iter().find(|(_, f)| f.load(Ordering::SeqCst)).map(|&(s, _)| s)
    }
}

impl Drop for ExitOnSecondSignal {
    fn drop(&mut self) {
        for id in self.ids.drain(..) {
            signal_hook::low_level::unregister(id);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Restoring a signal's behaviour when its last receiver goes

mod disposition {
    //! `signal-hook` never uninstalls its handler, and unregistering the last action of a
    //! signal leaves the signal ignored. For each signal hatchery listens for, this records
    //! whether it had the default disposition before hatchery first registered it; if so, a
    //! "conditional default" action is registered once and armed whenever no receiver
    //! listens, so the signal acts as by default again (SIGINT terminates).

    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex, MutexGuard};

    struct Entry {
        /// Live receivers of the signal.
        receivers: usize,
        /// The signal was ignored before hatchery first registered it.
        ignored_at_start: bool,
        /// Set when the signal should act as by default (no receiver); `None` if the signal's
        /// earlier disposition was not the default, or `signal-hook` cannot emulate it.
        default: Option<Arc<AtomicBool>>,
    }

    static TABLE: Mutex<BTreeMap<i32, Entry>> = Mutex::new(BTreeMap::new());

    fn table() -> MutexGuard<'static, BTreeMap<i32, Entry>> {
        TABLE.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A receiver of `sig` starts listening.
    pub(super) fn acquire(sig: i32) {
        let mut table = table();
        let entry = table.entry(sig).or_insert_with(|| {
            let (ignored, caught) = current_disposition(sig);
            Entry {
                receivers: 0,
                ignored_at_start: ignored,
                default: if ignored || caught { None } else { default_restorer(sig) },
            }
        });
        entry.receivers += 1;
        if let Some(armed) = &entry.default {
            armed.store(false, Ordering::SeqCst);
        }
    }

    /// A receiver of `sig` is gone.
    pub(super) fn release(sig: i32) {
        let mut table = table();
        if let Some(entry) = table.get_mut(&sig) {
            entry.receivers -= 1;
            if entry.receivers == 0
                && let Some(armed) = &entry.default
            {
                armed.store(true, Ordering::SeqCst);
            }
        }
    }

    /// Whether `sig` was ignored before hatchery first registered it (a background job of a
    /// shell script starts with SIGINT ignored). Unknown outside Linux: `false`.
    pub(super) fn ignored_at_start(sig: i32) -> bool {
        match table().get(&sig) {
            Some(entry) => entry.ignored_at_start,
            None => current_disposition(sig).0,
        }
    }

    fn default_restorer(sig: i32) -> Option<Arc<AtomicBool>> {
        let armed = Arc::new(AtomicBool::new(false));
        signal_hook::flag::register_conditional_default(sig, armed.clone()).ok()?;
        Some(armed)
    }

    /// Whether `sig` is ignored, and whether it is caught, right now. Linux tells through
    /// `/proc/self/status`; elsewhere, assume the default (neither).
    fn current_disposition(sig: i32) -> (bool, bool) {
        match std::fs::read_to_string("/proc/self/status") {
            Ok(status) => (in_mask(&status, "SigIgn:", sig), in_mask(&status, "SigCgt:", sig)),
            Err(_) => (false, false),
        }
    }

    /// Whether bit `sig - 1` is set in the hexadecimal mask of the line starting with `key`.
    pub(super) fn in_mask(status: &str, key: &str, sig: i32) -> bool {
        let mask = status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
            .unwrap_or(0);
        (1..=64).contains(&sig) && mask & (1 << (sig - 1)) != 0
    }

    #[cfg(test)]
    mod tests {
        use super::in_mask;

        #[test]
        fn masks_of_proc_status_are_read_by_signal_number() {
            let status = "Name:\tx\nSigIgn:\t0000000000001000\nSigCgt:\t0000000000000002\n";
            assert!(in_mask(status, "SigIgn:", 13), "SIGPIPE is bit 12");
            assert!(!in_mask(status, "SigIgn:", 2));
            assert!(in_mask(status, "SigCgt:", 2), "SIGINT is bit 1");
            assert!(!in_mask(status, "SigCgt:", 15));
            assert!(!in_mask(status, "SigBlk:", 2), "a missing line is an empty mask");
            assert!(!in_mask(status, "SigIgn:", 0));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::io;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use super::{Outcome, ctrl_c_cancels};
    use crate::runtime::context;
    use crate::testing;

    /// Returns `Pending` `n` times, waking itself each time, then `Ok(7)`: a body that yields
    /// without passing a cancel point.
    struct Yields(u32);

    impl Future for Yields {
        type Output = io::Result<u32>;

        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<u32>> {
            if self.0 == 0 {
                return Poll::Ready(Ok(7));
            }
            self.0 -= 1;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }

    /// The cancel points the task passes in `ctrl_c_cancels` around a body of `n` yields. The
    /// body passes none; each poll of the waiting receiver is one.
    fn cancel_points_around(n: u32) -> u64 {
        testing::run(async {
            let before = context::core().cancel_points.get();
            let out = ctrl_c_cancels(Yields(n)).await.unwrap();
            assert_eq!(out, Outcome::Completed(7));
            context::core().cancel_points.get() - before
        })
    }

    #[test]
    fn the_receiver_is_polled_when_woken_not_on_every_poll_of_the_body() {
        let idle = cancel_points_around(0);
        assert!(idle > 0, "the receiver was polled once, to register");
        assert_eq!(
            cancel_points_around(1000),
            idle,
            "a thousand polls of the body cost the receiver nothing"
        );
    }

    /// The exit actions tell which signal came while they were in (a signal that came after
    /// the receiver was last read), and `arm` makes the next one exit. SIGUSR2, which nothing
    /// else in this binary uses, stands in for SIGINT: raised once, it only sets flags.
    #[test]
    fn the_exit_actions_record_which_signal_came() {
        use super::{ExitOnSecondSignal, SIGUSR2};
        use std::sync::atomic::Ordering;
        let exit = ExitOnSecondSignal::register(&[SIGUSR2]).unwrap();
        assert_eq!(exit.seen(), None);
        assert!(!exit.armed.load(Ordering::SeqCst));
        exit.arm();
        assert!(exit.armed.load(Ordering::SeqCst));
        exit.armed.store(false, Ordering::SeqCst);
        signal_hook::low_level::raise(SIGUSR2).unwrap();
        assert_eq!(exit.seen(), Some(SIGUSR2));
        assert!(exit.armed.load(Ordering::SeqCst), "a second one would now exit");
    }
}
