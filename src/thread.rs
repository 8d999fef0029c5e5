//! Blocking work on a pool of threads: [`to_thread`] (Trio's `to_thread.run_sync`, S10.x).
//!
//! A hatchery run is one thread; a closure that blocks (a synchronous file or database call, a
//! long computation) would stop every task. [`to_thread`] hands such a closure to a pool thread
//! and parks the calling task until it returns:
//!
//! ```
//! let len = hatchery::run(async {
//!     hatchery::to_thread(|| std::fs::read_to_string("Cargo.toml").map(|s| s.len())).await
//! });
//! assert!(len.unwrap().unwrap() > 0);
//! ```
//!
//! # The rules (S10.1 to S10.4)
//!
//! - **A checkpoint.** In a cancelled scope the call fails at once and starts no thread. A call
//!   that completes also passes a schedule point.
//! - **Limited.** Each job holds a token of a [`CapacityLimiter`] while its thread runs; waiting
//!   for one is cancellable. By default the limiter is the run's own [`default_limiter`], with
//!   [`DEFAULT_TOKENS`] (40) tokens, so at most 40 threads work for one run at a time; pass
//!   your own with [`ThreadOptions::limiter`].
//! - **Cancellation is cooperative.** A thread cannot be stopped from outside. By default a
//!   cancellation is ignored while the thread runs: the call returns the thread's value and the
//!   next checkpoint sees the cancellation (S10.2). With
//!   [`ThreadOptions::abandon_on_cancel`] the call returns [`Cancelled`] at once and the thread
//!   is *abandoned*: it runs on, its result is dropped, and its token is returned only when it
//!   really finishes (S10.3). In both modes the closure can ask [`check_cancelled`] and stop
//!   early (S10.4).
//! - **The thread can reach back into the run** (S10.4): [`from_thread_run_sync`] runs a
//!   closure on the run's thread, [`from_thread_run`] runs an async function there, in the task
//!   waiting for the job (so under its deadlines), and both block the thread until done.
//! - **Panics travel.** A panic in the closure is resumed in the task that awaits the call, as
//!   a nursery child's would be. A call dropped after its thread finished but before it was
//!   polled again (the losing side of a select) drops the outcome with it, value or panic.
//! - **The closure does the blocking work; it must not return a future.** Rust cannot refuse
//!   `to_thread(|| async { .. })` as Trio refuses a coroutine function (S10.1.4): the call would
//!   return the future unpolled, and awaiting it would run its blocking code on the run's
//!   thread. To run async code from a thread, use [`from_thread_run`] inside the closure.
//!
//! # The pool
//!
//! One pool per process. Threads (named `hatchery-blocking`) are started when a job finds no
//! idle one, and an idle thread exits after [`IDLE_TIMEOUT`] (10 s, as Trio's workers) without
//! work. The pool itself has no size limit: bounding it is the limiter's job (one per run, as
//! Trio's: several runs in one process may use 40 threads each). A job hands its result back
//! through the waiting task's waker, which reaches the run's thread from anywhere. If the OS
//! refuses a new thread (a process or container limit) while other pool threads are busy, the
//! job waits for the first of them to finish; with no thread at all, the call panics.
//!
//! # Virtual time
//!
//! On a [`MockClock`](crate::testing::MockClock) with autojump the clock does not jump while a
//! task waits for its thread (DESIGN §6): the thread's work takes real time, and jumping past
//! it would make results depend on how fast the machine is. (While the thread waits for a
//! [`from_thread_run`] request, the run is not waiting for it, and the clock jumps as usual.) So a deadline around a job that
//! blocks until something *later in virtual time* happens would wait forever; cancel such jobs
//! explicitly in tests. [`wait_all_tasks_blocked`](crate::testing::wait_all_tasks_blocked)
//! counts a task waiting for its thread as blocked, as Trio does.

use std::any::Any;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::pin::Pin;
use std::rc::Rc;
#[cfg(test)]
use std::sync::Condvar;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use crate::error::{CancelError, Cancelled};
use crate::lowlevel::{Park, RunHandle, cancel_shielded_checkpoint, checkpoint_if_cancelled, run_handle};
use crate::runtime::{context, external_work_finished, external_work_started};
use crate::sync::{CapacityLimiter, OwnedCapacityToken};

/// Tokens of the per-run default limiter (Trio's default, too).
pub const DEFAULT_TOKENS: usize = 40;

/// How long an idle pool thread waits for a new job before it exits.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// The name of every pool thread.
const THREAD_NAME: &str = "hatchery-blocking";

/// The process-wide pool.
static POOL: Pool = Pool::new(IDLE_TIMEOUT);

thread_local! {
    /// On a run's thread: the tokens of abandoned jobs whose threads may still run.
    static ABANDONED: RefCell<Vec<(Arc<dyn JobControl>, OwnedCapacityToken)>> = const { RefCell::new(Vec::new()) };
    /// On a pool thread: the job it is running.
    static WORKER_JOB: RefCell<Option<Arc<dyn JobControl>>> = const { RefCell::new(None) };
}

// ---------------------------------------------------------------------------------------------
// Public API

/// Runs the blocking closure `f` on a pool thread and returns its value, with the default
/// options (the run's [`default_limiter`]; cancellation waits for the thread). See the
/// [module docs](self) for the rules and [`ThreadOptions`] for the other choices.
///
/// ```
/// use hatchery::{to_thread, Cancelled};
/// let sum = hatchery::run(async {
///     let v: Vec<u64> = (1..=1000).collect();
///     let sum = to_thread(move || v.iter().sum::<u64>()).await?;
///     Ok::<_, Cancelled>(sum)
/// });
/// assert_eq!(sum.unwrap(), 500_500);
/// ```
///
/// # Cancellation
///
/// A checkpoint. Cancelled on entry or while waiting for a limiter token, it fails with
/// [`Cancelled`] and `f` never runs. Once the thread has started, a cancellation is noted
/// (for [`check_cancelled`]) but the call still waits for `f` and returns its value; the
/// cancellation is seen at the next checkpoint. Dropping the future while the thread runs
/// abandons the job as [`ThreadOptions::abandon_on_cancel`] does.
///
/// # Errors
///
/// [`Cancelled`], as above.
///
/// # Panics
///
/// Outside a run; if the OS refuses to start a thread when the pool has no thread at all
/// (when it has busy ones, the job waits for the first to finish instead); and, resumed, any
/// panic of `f`.
pub async fn to_thread<F, R>(f: F) -> Result<R, Cancelled>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    ThreadOptions::new().run(f).await
}

/// Options for a [`to_thread`] call, builder style; [`run`](ThreadOptions::run) starts the
/// job.
///
/// ```
/// use std::rc::Rc;
/// use hatchery::{sync::CapacityLimiter, thread::ThreadOptions, Cancelled};
/// hatchery::run(async {
///     // At most two of these at a time, whatever else uses threads.
///     let disk = Rc::new(CapacityLimiter::new(2));
///     let n = ThreadOptions::new()
///         .limiter(disk.clone())
///         .abandon_on_cancel(true)
///         .run(|| 6 * 7)
///         .await?;
///     assert_eq!(n, 42);
///     assert_eq!(disk.borrowed_tokens(), 0);
///     Ok::<_, Cancelled>(())
/// })
/// .unwrap();
/// ```
#[derive(Debug, Clone, Default)]
#[must_use = "options do nothing until `run` is awaited"]
pub struct ThreadOptions {
    limiter: Option<Rc<CapacityLimiter>>,
    abandon_on_cancel: bool,
}

impl ThreadOptions {
    /// The defaults: the run's [`default_limiter`], and cancellation waits for the thread.
    pub fn new() -> ThreadOptions {
        ThreadOptions::default()
    }

    /// Takes the job's token from `limiter` instead of the run's default limiter.
    ///
    /// The limiter is shared through an `Rc` because an abandoned job keeps its token, and so
    /// a reference to the limiter, until its thread finishes, after the call has returned.
    pub fn limiter(mut self, limiter: Rc<CapacityLimiter>) -> ThreadOptions {
        self.limiter = Some(limiter);
        self
    }

    /// With `true`, a cancellation that reaches the waiting call makes it return
    /// [`Cancelled`] at once and abandons the thread: it runs on, its result (or panic) is
    /// dropped, and its limiter token is returned only when it finishes (S10.3). With `false`
    /// (the default), the call waits for the thread whatever happens (S10.2).
    ///
    /// ```
    /// use std::sync::mpsc;
    /// use hatchery::{nursery, thread::ThreadOptions, testing::{self, wait_all_tasks_blocked}};
    /// use hatchery::{CancelScope, Cancelled};
    /// let (release, blocked) = mpsc::channel::<()>();
    /// testing::run(async {
    ///     let scope = CancelScope::new();
    ///     let handle = scope.handle();
    ///     nursery(async |n| {
    ///         n.start_soon(async move {
    ///             wait_all_tasks_blocked().await?; // the job's thread is blocked
    ///             handle.cancel();
    ///             Ok(())
    ///         });
    ///         let job = ThreadOptions::new().abandon_on_cancel(true).run(move || blocked.recv().is_ok());
    ///         let out = scope.run(job).await;
    ///         assert_eq!(out, Ok(None), "cancelled at once, although the thread still runs");
    ///         Ok::<_, Cancelled>(())
    ///     })
    ///     .await
    ///     .unwrap();
    /// });
    /// release.send(()).unwrap(); // lets the abandoned thread finish
    /// ```
    pub fn abandon_on_cancel(mut self, abandon: bool) -> ThreadOptions {
        self.abandon_on_cancel = abandon;
        self
    }

    /// Runs `f` on a pool thread with these options; see [`to_thread`].
    ///
    /// # Errors
    ///
    /// [`Cancelled`]: on entry, while waiting for a token, or (with
    /// [`abandon_on_cancel`](ThreadOptions::abandon_on_cancel)) while the thread runs.
    ///
    /// # Panics
    ///
    /// As [`to_thread`].
    pub async fn run<F, R>(self, f: F) -> Result<R, Cancelled>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        checkpoint_if_cancelled()?;
        sweep_abandoned();
        let limiter = self.limiter.unwrap_or_else(default_limiter);
        // A free token is taken without yielding: the wait for the job is the schedule point.
        let token = match limiter.try_acquire_owned() {
            Ok(token) => token,
            Err(_) => limiter.acquire_owned().await?,
        };
        // The wait for a token completes even if a cancellation arrives meanwhile; nothing has
        // started yet, so honour it now (the token goes back) rather than start a thread that
        // would be cancelled at once.
        checkpoint_if_cancelled()?;

        let job = Arc::new(Job::new(run_handle()));
        let worker_job = job.clone();
        if let Err(e) = POOL.submit(Box::new(move || worker_job.execute(f))) {
            panic!(
                "hatchery::to_thread could not start a thread for the blocking pool, which has no other thread to wait for: {e}"
            );
        }
        let mut wait = JobWait {
            live: Some(Live {
                job,
                token,
                park: Park::new(),
                work: Some(ExternalWork::start()),
                serving: None,
            }),
            abandon_on_cancel: self.abandon_on_cancel,
            waited: false,
        };
        let outcome = (&mut wait).await;
        if !wait.waited {
            // The thread finished before the first poll: still a schedule point (S2.3).
            cancel_shielded_checkpoint().await;
        }
        match outcome {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(panic)) => resume_unwind(panic),
            Err(c) => Err(c),
        }
    }
}

/// The run's default limiter for [`to_thread`] (Trio's `current_default_thread_limiter`):
/// [`DEFAULT_TOKENS`] tokens, created on first use, one per run (the run drops its share when
/// it ends). Change its size with
/// [`set_total_tokens`](CapacityLimiter::set_total_tokens); it applies to the rest of the run.
///
/// ```
/// use hatchery::thread::{default_limiter, DEFAULT_TOKENS};
/// hatchery::run(async {
///     assert_eq!(default_limiter().total_tokens(), DEFAULT_TOKENS);
///     default_limiter().set_total_tokens(4); // at most 4 threads for this run from now on
///     assert_eq!(default_limiter().total_tokens(), 4);
/// });
/// hatchery::run(async { assert_eq!(default_limiter().total_tokens(), DEFAULT_TOKENS) });
/// ```
///
/// # Panics
///
/// Outside a run.
pub fn default_limiter() -> Rc<CapacityLimiter> {
    context::core().default_thread_limiter(|| CapacityLimiter::new(DEFAULT_TOKENS))
}

/// Inside a [`to_thread`] closure: `Err(Cancelled)` if a cancellation has been delivered to the
/// task waiting for this job (S10.4), in either mode, so the closure can stop early. A
/// cancellation counts as delivered once it has reached the waiting task (the task was woken
/// and saw it), and then it stays delivered.
///
/// ```
/// use std::sync::mpsc;
/// use hatchery::{thread, testing::{self, wait_all_tasks_blocked}, CancelScope, Cancelled};
/// let (go, wait_for_go) = mpsc::channel::<()>();
/// testing::run(async {
///     let scope = CancelScope::new();
///     let handle = scope.handle();
///     hatchery::nursery(async |n| {
///         n.start_soon(async {
///             wait_all_tasks_blocked().await?;
///             handle.cancel();
///             wait_all_tasks_blocked().await?; // the waiting task has seen it
///             go.send(()).unwrap();
///             Ok(())
///         });
///         let out = scope
///             .run(async {
///                 // The default mode waits for the thread, which notices the cancellation.
///                 let r = hatchery::to_thread(move || {
///                     wait_for_go.recv().unwrap();
///                     thread::check_cancelled()
///                 })
///                 .await?;
///                 assert!(matches!(r, Err(thread::FromThreadError::Cancelled(_))));
///                 hatchery::lowlevel::checkpoint().await?; // the pending cancellation
///                 Ok::<_, Cancelled>("not reached")
///             })
///             .await?;
///         assert_eq!(out, None); // absorbed by the scope
///         Ok::<_, Cancelled>(())
///     })
///     .await
///     .unwrap();
/// });
/// assert!(matches!(thread::check_cancelled(), Err(thread::FromThreadError::NotInWorker)));
/// ```
///
/// # Errors
///
/// - [`FromThreadError::Cancelled`]: cancellation delivered;
/// - [`FromThreadError::Abandoned`]: the waiting future was dropped without a cancellation;
/// - [`FromThreadError::NotInWorker`]: called from a thread that is not running a
///   [`to_thread`] job.
pub fn check_cancelled() -> Result<(), FromThreadError> {
    with_worker_job(|job| job.check_cancelled())
}

/// Inside a [`to_thread`] closure: runs `f` on the thread of the run that started the job and
/// returns its value (Trio's `from_thread.run_sync`). The pool thread blocks until `f` has run.
///
/// `f` runs between two batches of the run, outside any task: it may use the synchronous parts
/// of hatchery it can reach from the run's thread (the clock; a
/// [`CancelHandle`](crate::CancelHandle) kept in a thread-local there, since handles are not
/// `Send`) but cannot await. It does not check for cancellation; use
/// [`check_cancelled`]. A panic in `f` is resumed here, in the pool thread (and so travels on
/// to the task waiting for the job).
///
/// ```
/// use hatchery::{now, testing, thread, Instant};
/// testing::run(async {
///     let t = hatchery::to_thread(|| thread::from_thread_run_sync(now)).await.unwrap();
///     assert_eq!(t, Ok(Instant::ZERO)); // virtual time stands still while a thread works
/// });
/// ```
///
/// # Errors
///
/// - [`FromThreadError::NotInWorker`]: called from a thread that is not running a
///   [`to_thread`] job;
/// - [`FromThreadError::RunFinished`]: the run has ended (only an abandoned job can outlive it).
pub fn from_thread_run_sync<F, R>(f: F) -> Result<R, FromThreadError>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let run = with_worker_job(|job| Ok(job.run_handle().clone()))?;
    let (tx, rx) = mpsc::sync_channel(1);
    let call = move || {
        // Caught here: a panicking callback would otherwise take the whole run down.
        let _ = tx.send(catch_unwind(AssertUnwindSafe(f)));
    };
    if run.run_sync_soon(call).is_err() {
        return Err(FromThreadError::RunFinished);
    }
    match rx.recv() {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(panic)) => resume_unwind(panic),
        // The run ended before it got to the callback, which was dropped unrun.
        Err(_) => Err(FromThreadError::RunFinished),
    }
}

/// Inside a [`to_thread`] closure: runs the async function `f` in the run that started the job
/// and returns its output (Trio's `from_thread.run`). The pool thread blocks until the future
/// `f` returns has completed.
///
/// The future runs *in the task waiting for the job*, polled from that task's wait (Trio
/// reuses the waiting task too, in the default mode): it sees that task's cancel scopes and
/// deadlines, so a cancellation of the `to_thread` call is delivered at the future's own
/// checkpoints, and it can use anything of hatchery's that works in a task (sleeps, sockets,
/// `to_thread` again; but a nested `to_thread` waits for a token of its limiter like any
/// other, and with every token held by threads blocked here it waits until a deadline or a
/// cancellation ends it).
/// While it runs, the job does not count as outside work: on a virtual clock with autojump the
/// future's sleeps jump as usual.
///
/// The thread blocks until the request is served: a wait that is leaked (`mem::forget` of a
/// polled `to_thread` future) or never polled again leaves the pool thread blocked for good. `f` must be `Send` (it is made on the pool thread), the
/// future it returns need not be (it is made and polled on the run's thread); reach the run's
/// other non-`Send` state through thread-locals there. A panic in `f` or in the future is
/// resumed here, in the pool thread (and so travels on to the waiting task).
///
/// ```
/// use std::time::Duration;
/// use hatchery::{now, sleep, testing, thread, Cancelled, Instant};
/// testing::run(async {
///     let waited = hatchery::to_thread(|| {
///         // Blocking code that needs to wait the run's way, on the run's clock:
///         thread::from_thread_run(|| async {
///             sleep(Duration::from_secs(5)).await?;
///             Ok::<_, Cancelled>(now())
///         })
///     })
///     .await
///     .unwrap();
///     assert_eq!(waited, Ok(Ok(Instant::from_origin(Duration::from_secs(5)))));
/// });
/// ```
///
/// # Errors
///
/// - [`FromThreadError::NotInWorker`]: called from a thread that is not running a
///   [`to_thread`] job;
/// - [`FromThreadError::Cancelled`] if an
///   [`abandon_on_cancel`](ThreadOptions::abandon_on_cancel) job was cancelled, and so
///   abandoned, before or while the future ran: the future got one poll under the
///   cancellation (a hatchery wait in it fails with [`Cancelled`] and the future may finish
///   with that) and, if still unfinished, was dropped. Trio would finish it as a system task
///   instead; hatchery has none, so no work outlives its owner. (In the default mode the job
///   is never abandoned by a cancellation: the future meets it at its checkpoints and runs on.)
/// - [`FromThreadError::Abandoned`] if nobody waits for the job any more without a
///   cancellation (the waiting future was dropped, or the run ended meanwhile); the future is
///   dropped unfinished;
/// - [`FromThreadError::RunFinished`]: the run has ended while the job was not abandoned (not
///   expected: a run that ends drops its waits, which abandons their jobs, so a thread that
///   outlives its run hears [`Abandoned`](FromThreadError::Abandoned) or
///   [`Cancelled`](FromThreadError::Cancelled)).
pub fn from_thread_run<F, Fut, R>(f: F) -> Result<R, FromThreadError>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = R> + 'static,
    R: Send + 'static,
{
    let (tx, rx) = mpsc::sync_channel(1);
    let request: Request = Box::new(move || -> Pin<Box<dyn Future<Output = ()>>> {
        // On the run's thread, in the waiting task's poll.
        match catch_unwind(AssertUnwindSafe(f)) {
            Ok(fut) => Box::pin(Remote { fut: Box::pin(fut), tx: Some(tx) }),
            Err(panic) => {
                let _ = tx.send(Err(panic));
                Box::pin(std::future::ready(()))
            }
        }
    });
    with_worker_job(|job| job.request(request))?;
    match rx.recv() {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(panic)) => resume_unwind(panic),
        // The request (or its future) was dropped unfinished: the wait was abandoned (which is
        // also what happens to it when the run ends), because of a cancellation or not.
        Err(_) => {
            Err(with_worker_job(|job| job.check_cancelled()).err().unwrap_or(FromThreadError::Abandoned))
        }
    }
}

/// A [`from_thread_run`] request: made on the pool thread, called on the run's thread to make
/// the future the waiting task polls.
type Request = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()>>> + Send>;

/// The future of a [`from_thread_run`] request, which sends its output (or its panic) to the
/// pool thread.
struct Remote<Fut: Future> {
    fut: Pin<Box<Fut>>,
    tx: Option<mpsc::SyncSender<Result<Fut::Output, Panic>>>,
}

impl<Fut: Future> Future for Remote<Fut> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        let Some(tx) = &this.tx else { return Poll::Ready(()) };
        let out = match catch_unwind(AssertUnwindSafe(|| this.fut.as_mut().poll(cx))) {
            Ok(Poll::Pending) => return Poll::Pending,
            Ok(Poll::Ready(v)) => Ok(v),
            Err(panic) => Err(panic),
        };
        // The pool thread waits on the other end; if it is gone, nobody wants the output.
        let _ = tx.send(out);
        this.tx = None;
        Poll::Ready(())
    }
}

/// Why [`check_cancelled`], [`from_thread_run_sync`] or [`from_thread_run`] refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FromThreadError {
    /// A cancellation was delivered to the task waiting for this job. Return it from the
    /// closure and propagate it with `?` after the call: the cancel scope absorbs it as usual
    /// ([`CancelError`] sees it).
    #[error(transparent)]
    Cancelled(Cancelled),
    /// The future waiting for this job was dropped (not cancelled): nobody will read the
    /// result.
    #[error("the task waiting for this to_thread job stopped waiting; its result will be dropped")]
    Abandoned,
    /// Called from a thread that is not running a `to_thread` job.
    #[error("called from a thread that is not running a hatchery::to_thread job")]
    NotInWorker,
    /// The run that started this job has ended.
    #[error("the hatchery run that started this to_thread job has finished")]
    RunFinished,
}

impl CancelError for FromThreadError {
    fn cancelled(&self) -> Option<&Cancelled> {
        match self {
            FromThreadError::Cancelled(c) => Some(c),
            _ => None,
        }
    }
}

impl From<FromThreadError> for io::Error {
    fn from(e: FromThreadError) -> io::Error {
        match e {
            FromThreadError::Cancelled(c) => c.into(),
            other => io::Error::other(other),
        }
    }
}

impl From<FromThreadError> for crate::Error {
    fn from(e: FromThreadError) -> crate::Error {
        match e {
            FromThreadError::Cancelled(c) => crate::Error::Cancelled(c),
            other => crate::Error::other(other),
        }
    }
}

fn with_worker_job<T>(
    f: impl FnOnce(&Arc<dyn JobControl>) -> Result<T, FromThreadError>,
) -> Result<T, FromThreadError> {
    let job = WORKER_JOB.try_with(|j| j.borrow().clone()).ok().flatten();
    match job {
        Some(job) => f(&job),
        None => Err(FromThreadError::NotInWorker),
    }
}

// ---------------------------------------------------------------------------------------------
// A job: shared between the waiting task (run thread) and the pool thread.

type Panic = Box<dyn Any + Send + 'static>;

/// What the pool thread needs of a job without knowing its result type.
trait JobControl: Send + Sync {
    fn check_cancelled(&self) -> Result<(), FromThreadError>;
    fn run_handle(&self) -> &RunHandle;
    /// The thread has finished the closure. If not, `sweeper` (the run sweeping the abandoned
    /// list now, maybe a later one than the job's) is the run the thread tells when it does.
    fn finished_or_tell(&self, sweeper: &RunHandle) -> bool;
    /// Hands a [`from_thread_run`] request to the waiting task and wakes it.
    fn request(&self, request: Request) -> Result<(), FromThreadError>;
}

struct Job<R: Send + 'static> {
    state: Mutex<JobState<R>>,
    run: RunHandle,
}

struct JobState<R> {
    /// The closure's outcome, until the waiting task takes it.
    outcome: Option<Result<R, Panic>>,
    finished: bool,
    /// The waiting task's waker (none once the job is abandoned). In an `Arc`, so that the pool
    /// thread takes a copy under the lock by a count increment, not by a foreign clone.
    waker: Option<Arc<Waker>>,
    /// Nobody waits for the result any more: the pool thread drops it.
    abandoned: bool,
    /// The first cancellation delivered to the waiting task (sticky, for `check_cancelled`).
    cancelled: Option<Cancelled>,
    /// A [`from_thread_run`] request the waiting task has not picked up yet.
    request: Option<Request>,
    /// Abandoned and still running: the run that last swept and found it so (see
    /// [`JobControl::finished_or_tell`]).
    sweeper: Option<RunHandle>,
}

impl<R: Send + 'static> Job<R> {
    fn new(run: RunHandle) -> Job<R> {
        Job {
            state: Mutex::new(JobState {
                outcome: None,
                finished: false,
                waker: None,
                abandoned: false,
                cancelled: None,
                request: None,
                sweeper: None,
            }),
            run,
        }
    }

    fn lock(&self) -> MutexGuard<'_, JobState<R>> {
        // Nothing panics while holding this lock; recover anyway rather than spread a poison.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// On the pool thread: runs the closure and hands its outcome over.
    fn execute(self: Arc<Self>, f: impl FnOnce() -> R) {
        let control: Arc<dyn JobControl> = self.clone();
        WORKER_JOB.with(|j| *j.borrow_mut() = Some(control));
        let outcome = catch_unwind(AssertUnwindSafe(f));
        WORKER_JOB.with(|j| j.borrow_mut().take());
        let mut st = self.lock();
        if st.abandoned {
            drop(st);
            // Dropped here, on the pool thread, silently (S10.3), and before the job counts as
            // finished: its token stays out while the result's destructor (user code) runs, and
            // a panic there must not keep the token from going back.
            if let Err(payload) = catch_unwind(AssertUnwindSafe(move || drop(outcome))) {
                // Its own destructor could panic too: leak it rather than skip the lines below.
                std::mem::forget(payload);
            }
            let sweeper = {
                let mut st = self.lock();
                st.finished = true;
                st.sweeper.take()
            };
            // The job's token waits on the run's thread; have it returned there: by the run
            // that last swept the abandoned list and found this job running (a later run on
            // that thread may be waiting for the token), else by the job's own run. If that
            // run has ended, the token stays out, as Trio's does (it goes at the next sweep).
            let _ = sweeper.as_ref().unwrap_or(&self.run).run_sync_soon(sweep_abandoned);
            return;
        }
        st.finished = true;
        st.outcome = Some(outcome);
        let waker = st.waker.take();
        drop(st);
        if let Some(w) = waker {
            w.wake_by_ref();
        }
    }
}

impl<R: Send + 'static> JobControl for Job<R> {
    fn check_cancelled(&self) -> Result<(), FromThreadError> {
        let st = self.lock();
        match (&st.cancelled, st.abandoned) {
            (Some(c), _) => Err(FromThreadError::Cancelled(c.clone())),
            (None, true) => Err(FromThreadError::Abandoned),
            (None, false) => Ok(()),
        }
    }

    fn run_handle(&self) -> &RunHandle {
        &self.run
    }

    fn finished_or_tell(&self, sweeper: &RunHandle) -> bool {
        let mut st = self.lock();
        if !st.finished {
            st.sweeper = Some(sweeper.clone());
        }
        st.finished
    }

    fn request(&self, request: Request) -> Result<(), FromThreadError> {
        let mut st = self.lock();
        // What happened to this job first: a run that ends drops its waits, so its jobs are
        // abandoned by then.
        if st.abandoned {
            return Err(match &st.cancelled {
                Some(c) => FromThreadError::Cancelled(c.clone()),
                None => FromThreadError::Abandoned,
            });
        }
        if self.run.shared.is_finished() {
            return Err(FromThreadError::RunFinished);
        }
        debug_assert!(st.request.is_none(), "hatchery internal error: two requests from one job's thread");
        st.request = Some(request);
        let waker = st.waker.clone();
        drop(st);
        // Without a waker (not polled yet) the first poll picks the request up.
        if let Some(w) = waker {
            w.wake_by_ref();
        }
        Ok(())
    }
}

/// The waiting half of a job, on the run's thread. Dropping it before the job finished
/// abandons the job.
struct JobWait<R: Send + 'static> {
    /// Everything the wait holds while the job is outstanding; `None` once it finished or was
    /// abandoned. Taking it out is the only way to end the wait, so each of its parts is
    /// released exactly once, whichever path ends it (a result, a cancellation, a drop, a panic).
    live: Option<Live<R>>,
    abandon_on_cancel: bool,
    /// Returned `Pending` at least once (so it passed a schedule point).
    waited: bool,
}

/// What a [`JobWait`] holds while its job is outstanding.
struct Live<R: Send + 'static> {
    job: Arc<Job<R>>,
    /// The job's limiter token: returned when the wait ends, or kept in [`ABANDONED`] until the
    /// thread finishes.
    token: OwnedCapacityToken,
    /// The registration for cancellation.
    park: Park,
    /// Stops the virtual clock's autojump while the task waits for the thread; `None` while a
    /// [`from_thread_run`] request runs (the thread then waits for the run, not the other way).
    work: Option<ExternalWork>,
    /// The future of the [`from_thread_run`] request being served.
    serving: Option<Pin<Box<dyn Future<Output = ()>>>>,
}

impl<R: Send + 'static> Live<R> {
    /// Ends the wait: the outcome if the thread has finished (completion wins), and everything
    /// held is released. Otherwise `None`, and the job is abandoned (S10.3): its state says so,
    /// so the thread drops its result; the token moves to this thread's [`ABANDONED`] list until
    /// the thread finishes; the registration and the external work end now.
    fn stop(self) -> Option<Result<R, Panic>> {
        let mut st = self.job.lock();
        if let Some(out) = st.outcome.take() {
            drop(st);
            return Some(out);
        }
        st.abandoned = true;
        let waker = st.waker.take();
        // A request not picked up yet, or being served, is dropped: the thread learns that the
        // job was abandoned.
        let request = st.request.take();
        drop(st);
        let Live { job, token, park, work, serving } = self;
        // The token first, so that no panic below can return it while the thread still runs.
        // During thread teardown the list may be gone; the token is then returned at once.
        let entry: (Arc<dyn JobControl>, OwnedCapacityToken) = (job, token);
        let _ = ABANDONED.try_with(|a| a.borrow_mut().push(entry));
        drop(park);
        drop(work);
        // Foreign code last, with the lock free: a waker's destructor, the request's captures,
        // the served future's destructor.
        drop(waker);
        drop(request);
        drop(serving);
        None
    }
}

impl<R: Send + 'static> Future for JobWait<R> {
    type Output = Result<Result<R, Panic>, Cancelled>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let live = this.live.as_mut().expect("hatchery internal error: a job's wait polled after it ended");
        // Completion first: an outcome that is there wins over a cancellation. The waker is
        // stored under the same lock, so a thread that finishes after this wakes the task.
        let mut st = live.job.lock();
        let mut old = None;
        loop {
            if let Some(out) = st.outcome.take() {
                drop(st);
                drop(old);
                this.live = None;
                return Poll::Ready(Ok(out));
            }
            if st.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                break;
            }
            // A new waker is cloned with the lock free (a clone is foreign code, and the pool
            // thread takes this lock), then the state is looked at again: the thread may have
            // finished meanwhile, waking the waker stored before.
            drop(st);
            let new = Arc::new(cx.waker().clone());
            st = live.job.lock();
            if st.outcome.is_none() {
                old = st.waker.replace(new);
                break;
            }
            // Dropped with the lock free, on the way out.
            old = Some(new);
        }
        let request = st.request.take();
        drop(st);
        drop(old);
        // A cancellation is noted first, so that the thread's `check_cancelled` sees it as soon
        // as anything here (a request's output) can reach the thread.
        let cancelled = match live.park.poll_cancel_on(cx, crate::debug::WaitingOn::Thread) {
            Poll::Ready(c) => {
                live.job.lock().cancelled.get_or_insert_with(|| c.clone());
                Some(c)
            }
            Poll::Pending => None,
        };
        if let Some(request) = request {
            // The thread waits for the run now: not outside work while the request runs.
            live.work = None;
            live.serving = Some(request());
        }
        // A request's future runs in this task, under its cancel status: it meets a
        // cancellation at its own checkpoints (in both modes, before an abandonment drops it).
        if let Some(serving) = &mut live.serving
            && serving.as_mut().poll(cx).is_ready()
        {
            live.serving = None;
            live.work = Some(ExternalWork::start());
        }
        // Default mode: a cancellation is noted for `check_cancelled` and stays pending for
        // the next checkpoint; keep waiting (S10.2). The park is no longer registered, and
        // needs not be: only the job (and a request's own waits) wake this task now.
        if let Some(c) = cancelled
            && this.abandon_on_cancel
        {
            let live = this.live.take().expect("checked above");
            return Poll::Ready(live.stop().ok_or(c));
        }
        this.waited = true;
        Poll::Pending
    }
}

impl<R: Send + 'static> Drop for JobWait<R> {
    /// The abort path: dropped while the thread runs, the job is abandoned (the thread cannot
    /// be stopped); dropped after it finished, the uncollected outcome is dropped.
    fn drop(&mut self) {
        if let Some(live) = self.live.take() {
            drop(live.stop());
        }
    }
}

/// One unit of the run's external work (DESIGN §6) while a task waits for its thread: counted
/// when created, uncounted when dropped, so no path can leave it counted or uncount it twice.
/// Dropped after its run has ended, it does nothing.
struct ExternalWork {
    run: u64,
}

impl ExternalWork {
    /// Counts one unit of external work of the current run.
    fn start() -> ExternalWork {
        ExternalWork { run: external_work_started() }
    }
}

impl Drop for ExternalWork {
    fn drop(&mut self) {
        external_work_finished(self.run);
    }
}

// ---------------------------------------------------------------------------------------------
// Abandoned jobs' tokens

/// Returns the tokens of abandoned jobs whose threads have finished. Runs on a run's thread:
/// queued by each abandoned job as it finishes, and at the start of every `to_thread` call (which
/// also catches the jobs that finished after their run ended).
fn sweep_abandoned() {
    let Some(core) = context::try_core() else { return };
    let done: Vec<(Arc<dyn JobControl>, OwnedCapacityToken)> = ABANDONED
        .try_with(|a| {
            let mut a = a.borrow_mut();
            if a.is_empty() {
                return Vec::new();
            }
            let this_run = RunHandle { shared: core.shared.clone() };
            // The jobs still running will tell this run when they finish.
            let (done, running) =
                std::mem::take(&mut *a).into_iter().partition(|(job, _)| job.finished_or_tell(&this_run));
            *a = running;
            done
        })
        .unwrap_or_default();
    // Returning a token may wake limiter waiters: do it outside the borrow.
    drop(done);
}

// ---------------------------------------------------------------------------------------------
// The pool

/// A unit of work for a pool thread.
type Task = Box<dyn FnOnce() + Send + 'static>;

/// A pool of threads that start on demand and exit after `idle_timeout` without work.
///
/// Hand-off is direct: an idle thread waits on a channel of its own, and `submit` gives the
/// task to the most recently idle thread (so the others stay idle and time out) or starts a
/// new one. No thread polls or spins.
///
/// The unit tests below watch the pool's state change through a condition variable; that
/// part (`changed`, `watchers`) exists only in test builds.
struct Pool {
    inner: Mutex<PoolInner>,
    /// Notified, while someone watches, when a thread goes idle or exits.
    #[cfg(test)]
    changed: Condvar,
    idle_timeout: Duration,
}

struct PoolInner {
    /// Idle threads, the most recently idle last.
    idle: Vec<IdleThread>,
    /// Threads alive (working or idle).
    threads: usize,
    next_id: u64,
    /// Tasks for which the OS refused a new thread while others were alive: the next thread
    /// that finishes a task takes them, in order, before it goes idle.
    queued: VecDeque<Task>,
    /// Unit tests waiting on `changed` (in `wait_until`).
    #[cfg(test)]
    watchers: usize,
    /// Unit tests: how many of the next thread starts fail (as the OS may refuse them).
    #[cfg(test)]
    refuse_starts: usize,
}

struct IdleThread {
    id: u64,
    hand_off: mpsc::Sender<Task>,
}

impl Pool {
    const fn new(idle_timeout: Duration) -> Pool {
        Pool {
            inner: Mutex::new(PoolInner {
                idle: Vec::new(),
                threads: 0,
                next_id: 0,
                queued: VecDeque::new(),
                #[cfg(test)]
                watchers: 0,
                #[cfg(test)]
                refuse_starts: 0,
            }),
            #[cfg(test)]
            changed: Condvar::new(),
            idle_timeout,
        }
    }

    fn lock(&self) -> MutexGuard<'_, PoolInner> {
        // Tasks never run under this lock, so it cannot be poisoned by user code.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `task` on an idle thread, or on a new one. If the OS refuses a new thread (a
    /// process or cgroup limit, for a moment), the task waits for one of the pool's busy
    /// threads; only with no thread at all is that an error, and the task is dropped.
    fn submit(&'static self, mut task: Task) -> io::Result<()> {
        let mut inner = self.lock();
        while let Some(idle) = inner.idle.pop() {
            drop(inner);
            match idle.hand_off.send(task) {
                Ok(()) => return Ok(()),
                // Cannot happen (an idle thread holds its receiver until it leaves the idle
                // list under this lock); try the next one rather than lose the task.
                Err(mpsc::SendError(t)) => task = t,
            }
            inner = self.lock();
        }
        let id = inner.next_id;
        inner.next_id += 1;
        inner.threads += 1;
        #[cfg(test)]
        let refused = inner.refuse_starts.checked_sub(1).map(|n| inner.refuse_starts = n).is_some();
        drop(inner);
        // The task goes to the thread through this slot, so that it is not lost with the
        // thread's closure if the thread cannot start.
        let slot = Arc::new(Mutex::new(Some(task)));
        let first = slot.clone();
        let start = || {
            #[cfg(test)]
            if refused {
                return Err(io::Error::from(io::ErrorKind::WouldBlock));
            }
            std::thread::Builder::new().name(THREAD_NAME.to_owned()).spawn(move || {
                let task = first.lock().unwrap_or_else(|e| e.into_inner()).take();
                self.work(id, task);
            })
        };
        if let Err(e) = start() {
            let Some(task) = slot.lock().unwrap_or_else(|e| e.into_inner()).take() else {
                unreachable!("hatchery internal error: a pool thread that did not start took its task")
            };
            let mut inner = self.lock();
            inner.threads -= 1;
            self.notify_watchers(&inner);
            // A thread may have gone idle meanwhile (it found the queue empty): hand the task
            // to it, since nothing else would wake it. Otherwise a busy thread takes it when
            // done; with no thread at all, nothing would.
            if let Some(idle) = inner.idle.pop() {
                drop(inner);
                return idle.hand_off.send(task).map_err(|_| {
                    io::Error::other("hatchery internal error: an idle pool thread left without its task")
                });
            }
            if inner.threads == 0 {
                return Err(e);
            }
            inner.queued.push_back(task);
        }
        Ok(())
    }

    /// A pool thread's life: run the task (and any queued ones), go idle, take the next task
    /// or time out.
    fn work(&'static self, id: u64, first: Option<Task>) {
        let (hand_off, tasks) = mpsc::channel::<Task>();
        let mut task = first;
        loop {
            // Jobs catch their own panics; this guards the pool against anything else (a
            // panicking destructor of an abandoned result, say).
            if let Some(task) = task.take() {
                let _ = catch_unwind(AssertUnwindSafe(task));
            }
            let mut inner = self.lock();
            if let Some(next) = inner.queued.pop_front() {
                task = Some(next);
                continue;
            }
            inner.idle.push(IdleThread { id, hand_off: hand_off.clone() });
            self.notify_watchers(&inner);
            drop(inner);
            task = Some(match tasks.recv_timeout(self.idle_timeout) {
                Ok(t) => t,
                Err(RecvTimeoutError::Timeout) => {
                    let mut inner = self.lock();
                    if let Some(pos) = inner.idle.iter().position(|t| t.id == id) {
                        inner.idle.remove(pos);
                        inner.threads -= 1;
                        self.notify_watchers(&inner);
                        return;
                    }
                    drop(inner);
                    // A submitter took this thread off the idle list just as it timed out;
                    // its task is on the way.
                    match tasks.recv() {
                        Ok(t) => t,
                        Err(_) => unreachable!("hatchery internal error: a pool thread holds its own sender"),
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    unreachable!("hatchery internal error: a pool thread holds its own sender")
                }
            });
        }
    }

    /// Tells the unit tests waiting in [`wait_until`](Pool::wait_until) that the state changed.
    #[cfg(test)]
    fn notify_watchers(&self, inner: &PoolInner) {
        if inner.watchers > 0 {
            self.changed.notify_all();
        }
    }

    /// Outside unit tests nobody watches.
    #[cfg(not(test))]
    fn notify_watchers(&self, _inner: &PoolInner) {}

    #[cfg(test)]
    fn threads(&self) -> usize {
        self.lock().threads
    }

    /// Waits (at most 10 s) until `cond` holds of the pool's state; false on timeout.
    #[cfg(test)]
    fn wait_until(&self, cond: impl Fn(&PoolInner) -> bool) -> bool {
        let mut inner = self.lock();
        inner.watchers += 1;
        let (mut inner, timeout) = self
            .changed
            .wait_timeout_while(inner, Duration::from_secs(10), |i| !cond(i))
            .unwrap_or_else(|e| e.into_inner());
        inner.watchers -= 1;
        !timeout.timed_out()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Barrier;

    fn leaked_pool(idle: Duration) -> &'static Pool {
        Box::leak(Box::new(Pool::new(idle)))
    }

    /// Waits (bounded) until the pool has `n` threads.
    fn wait_threads(pool: &Pool, n: usize) {
        assert!(pool.wait_until(|i| i.threads == n), "the pool has {} threads, expected {n}", pool.threads());
    }

    fn run_and_report(pool: &'static Pool) -> String {
        let (tx, rx) = mpsc::channel();
        pool.submit(Box::new(move || {
            tx.send(std::thread::current().name().unwrap_or_default().to_owned()).unwrap();
        }))
        .unwrap();
        rx.recv_timeout(Duration::from_secs(10)).unwrap()
    }

    #[test]
    fn sequential_tasks_reuse_one_named_thread() {
        let pool = leaked_pool(Duration::from_secs(60));
        for _ in 0..5 {
            assert_eq!(run_and_report(pool), THREAD_NAME);
            assert!(pool.wait_until(|i| i.idle.len() == 1), "the thread went idle");
        }
        assert_eq!(pool.threads(), 1);
    }

    #[test]
    fn concurrent_tasks_get_threads_of_their_own() {
        let pool = leaked_pool(Duration::from_secs(60));
        let barrier = Arc::new(Barrier::new(4));
        let (tx, rx) = mpsc::channel();
        for _ in 0..3 {
            let (barrier, tx) = (barrier.clone(), tx.clone());
            pool.submit(Box::new(move || {
                barrier.wait(); // all three at once: each needs its own thread
                tx.send(()).unwrap();
            }))
            .unwrap();
        }
        barrier.wait();
        for _ in 0..3 {
            rx.recv_timeout(Duration::from_secs(10)).unwrap();
        }
        assert_eq!(pool.threads(), 3);
    }

    #[test]
    fn idle_threads_exit_after_the_timeout() {
        let pool = leaked_pool(Duration::from_millis(50));
        run_and_report(pool);
        wait_threads(pool, 0);
        // And the pool starts a fresh thread afterwards.
        assert_eq!(run_and_report(pool), THREAD_NAME);
        wait_threads(pool, 0);
    }

    #[test]
    fn a_panicking_task_does_not_kill_its_thread() {
        let pool = leaked_pool(Duration::from_secs(60));
        let (tx, rx) = mpsc::channel();
        pool.submit(Box::new(move || {
            tx.send(std::thread::current().id()).unwrap();
            panic!("a task panicked (expected by this test)");
        }))
        .unwrap();
        let first = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(pool.wait_until(|i| i.idle.len() == 1), "the thread went idle after the panic");
        let (tx, rx) = mpsc::channel();
        pool.submit(Box::new(move || tx.send(std::thread::current().id()).unwrap())).unwrap();
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(10)).unwrap(),
            first,
            "the same thread ran the next task"
        );
        assert_eq!(pool.threads(), 1);
    }

    #[test]
    fn a_task_whose_thread_the_os_refuses_waits_for_a_busy_thread() {
        let pool = leaked_pool(Duration::from_secs(60));
        let (release, wait_release) = mpsc::channel::<()>();
        let (tx, rx) = mpsc::channel();
        let tx2 = tx.clone();
        pool.submit(Box::new(move || {
            wait_release.recv().unwrap();
            tx.send(("first", std::thread::current().id())).unwrap();
        }))
        .unwrap();
        pool.lock().refuse_starts = 1;
        pool.submit(Box::new(move || tx2.send(("second", std::thread::current().id())).unwrap()))
            .expect("queued, not refused: a thread is alive");
        {
            let inner = pool.lock();
            assert_eq!((inner.threads, inner.queued.len(), inner.refuse_starts), (1, 1, 0));
        }
        release.send(()).unwrap();
        let (a, first) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        let (b, second) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!((a, b), ("first", "second"));
        assert_eq!(first, second, "the busy thread took the queued task when done");
        assert!(pool.wait_until(|i| i.idle.len() == 1 && i.queued.is_empty()), "then it went idle");
        assert_eq!(pool.threads(), 1);
    }

    #[test]
    fn a_refused_thread_with_none_alive_is_an_error_and_the_task_is_dropped() {
        struct Dropped(mpsc::Sender<()>);
        impl Drop for Dropped {
            fn drop(&mut self) {
                let _ = self.0.send(());
            }
        }
        let pool = leaked_pool(Duration::from_secs(60));
        pool.lock().refuse_starts = 1;
        let (tx, rx) = mpsc::channel();
        let guard = Dropped(tx);
        let r = pool.submit(Box::new(move || drop(guard)));
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::WouldBlock);
        rx.recv_timeout(Duration::from_secs(10)).expect("the refused task was dropped");
        let inner = pool.lock();
        assert_eq!((inner.threads, inner.queued.len()), (0, 0));
    }
}
