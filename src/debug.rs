//! Introspection: a snapshot of the task tree, to find out why a run hangs or lags.
//!
//! A run built with [`Builder::track_tasks(true)`](crate::Builder::track_tasks) keeps a record
//! of every task: the nursery it belongs to, the call that spawned it, the name of its future's
//! type, when it last ran, and what it parked on in that run (a channel, a sleep, a socket,
//! a lock...), with the deadline that governs each wait. [`task_tree`] returns it as a
//! [`TaskTree`], whose `Display` is a readable dump:
//!
//! ```text
//! task tree at 2.000s: 4 tasks, 1 nursery
//! task 0 root, run at src/main.rs:5:5: running
//! └── nursery 1 opened at src/main.rs:6:9, deadline 10.000s
//!     ├── task 2 body at src/main.rs:6:9: waiting on a channel receive (deadline 10.000s); last ran at 0.000s
//!     ├── task 3 `app::dump_on_signal::{{closure}}` spawned at src/main.rs:7:11: running
//!     └── task 4 `app::worker::{{closure}}` spawned at src/main.rs:8:11: waiting on a sleep until 5.000s (deadline 10.000s); last ran at 1.000s
//! ```
//!
//! The task that took the snapshot shows as running, and so do the tasks polling it (here the
//! root, whose nursery polls its children from inside the root's poll).
//!
//! Tracking costs a hash-map update per spawn, per poll and per park, and a clock read per
//! poll (for "last ran"), so it is off by default;
//! a run without it pays one branch at each of those places. A task that parks on something
//! outside hatchery (another crate's channel) shows as waiting with nothing named.
//!
//! To dump the tree of a server that seems stuck, give it a task that prints on a signal:
//!
//! ```no_run
//! use hatchery::{nursery, signal::{Signals, SIGUSR1}, Builder, Error};
//!
//! Builder::new().track_tasks(true).run(async {
//!     nursery(async |n| {
//!         n.start_soon(async {
//!             let mut signals = Signals::new(&[SIGUSR1])?;
//!             loop {
//!                 signals.recv().await?;
//!                 if let Ok(tree) = hatchery::debug::task_tree() {
//!                     eprintln!("{tree}");
//!                 }
//!             }
//!             #[allow(unreachable_code)]
//!             Ok::<_, Error>(())
//!         });
//!         // ... the server's tasks ...
//!         Ok::<_, Error>(())
//!     })
//!     .await
//! });
//! ```
//!
//! From another thread, [`RunHandle::run_sync_soon`](crate::RunHandle::run_sync_soon) runs a
//! closure on the run's thread, where `task_tree` works too.

use std::fmt;
use std::os::fd::RawFd;
use std::panic::Location;

use crate::runtime::clock::Instant;
use crate::runtime::context;

/// What a parked task waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WaitingOn {
    /// A sleep (or a [`lowlevel::Timer`](crate::lowlevel::Timer)) until this instant; `None`:
    /// until cancelled.
    Sleep(Option<Instant>),
    /// A descriptor to become readable.
    Readable(RawFd),
    /// A descriptor to become writable.
    Writable(RawFd),
    /// Room in a channel, or a receiver for a rendezvous channel.
    Send,
    /// A value from a channel.
    Receive,
    /// A [`Mutex`](crate::Mutex).
    Lock,
    /// A permit from a [`Semaphore`](crate::Semaphore).
    Semaphore,
    /// A token from a [`CapacityLimiter`](crate::CapacityLimiter).
    CapacityLimiter,
    /// An [`Event`](crate::Event) to be set.
    Event,
    /// A [`Condition`](crate::Condition) to be notified.
    Condition,
    /// A child's value, through its [`JoinHandle`](crate::JoinHandle).
    Join,
    /// A job running on another thread ([`to_thread`](crate::to_thread)).
    Thread,
    /// Something else, named.
    Other(&'static str),
}

impl fmt::Display for WaitingOn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            WaitingOn::Sleep(Some(t)) => write!(f, "a sleep until {}", Secs(t)),
            WaitingOn::Sleep(None) => f.write_str("a sleep without end"),
            WaitingOn::Readable(fd) => write!(f, "fd {fd} to be readable"),
            WaitingOn::Writable(fd) => write!(f, "fd {fd} to be writable"),
            WaitingOn::Send => f.write_str("a channel send"),
            WaitingOn::Receive => f.write_str("a channel receive"),
            WaitingOn::Lock => f.write_str("a mutex"),
            WaitingOn::Semaphore => f.write_str("a semaphore"),
            WaitingOn::CapacityLimiter => f.write_str("a capacity limiter"),
            WaitingOn::Event => f.write_str("an event"),
            WaitingOn::Condition => f.write_str("a condition"),
            WaitingOn::Join => f.write_str("a child's value"),
            WaitingOn::Thread => f.write_str("a job on another thread"),
            WaitingOn::Other(what) => f.write_str(what),
        }
    }
}

/// [`task_tree`] in a run built without [`Builder::track_tasks`](crate::Builder::track_tasks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("task tracking is off in this run: build it with `Builder::track_tasks(true)`")]
pub struct TrackingOff;

/// A snapshot of every task of the run, as a tree: the root task, the nurseries it opened,
/// their tasks, and so on down. Its `Display` is a readable dump.
#[derive(Debug, Clone)]
pub struct TaskTree {
    now: Instant,
    root: TaskInfo,
    detached: Vec<NurseryInfo>,
}

impl TaskTree {
    pub(crate) fn new(now: Instant, root: TaskInfo, detached: Vec<NurseryInfo>) -> TaskTree {
        TaskTree { now, root, detached }
    }

    /// The run's time when the snapshot was taken.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// The root task (the future given to `run`).
    pub fn root(&self) -> &TaskInfo {
        &self.root
    }

    /// Every task, depth first: a task, then the tasks of each nursery it opened; the root's
    /// tree first, then any nursery whose task is not in it (none is expected).
    pub fn tasks(&self) -> Vec<&TaskInfo> {
        let mut out = Vec::new();
        self.walk(&mut |t| out.push(t), &mut |_| {});
        out
    }

    /// Every open nursery, in the same order as [`tasks`](TaskTree::tasks).
    pub fn nurseries(&self) -> Vec<&NurseryInfo> {
        let mut out = Vec::new();
        self.walk(&mut |_| {}, &mut |n| out.push(n));
        out
    }

    /// Visits the tree depth first, the root's tree then the detached nurseries.
    fn walk<'a>(&'a self, task: &mut dyn FnMut(&'a TaskInfo), nursery: &mut dyn FnMut(&'a NurseryInfo)) {
        fn in_task<'a>(
            t: &'a TaskInfo,
            task: &mut dyn FnMut(&'a TaskInfo),
            nursery: &mut dyn FnMut(&'a NurseryInfo),
        ) {
            task(t);
            for n in &t.nurseries {
                in_nursery(n, task, nursery);
            }
        }
        fn in_nursery<'a>(
            n: &'a NurseryInfo,
            task: &mut dyn FnMut(&'a TaskInfo),
            nursery: &mut dyn FnMut(&'a NurseryInfo),
        ) {
            nursery(n);
            for t in &n.tasks {
                in_task(t, task, nursery);
            }
        }
        in_task(&self.root, task, nursery);
        for n in &self.detached {
            in_nursery(n, task, nursery);
        }
    }
}

/// One task of a [`TaskTree`].
#[derive(Debug, Clone)]
pub struct TaskInfo {
    pub(crate) id: u64,
    pub(crate) role: TaskRole,
    pub(crate) name: &'static str,
    pub(crate) location: Option<&'static Location<'static>>,
    pub(crate) state: TaskState,
    pub(crate) waits: Vec<WaitInfo>,
    pub(crate) last_ran: Option<Instant>,
    pub(crate) nurseries: Vec<NurseryInfo>,
}

impl TaskInfo {
    /// A number that names the task for the whole run (the root is 0; nurseries take numbers
    /// from the same sequence).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Root, nursery body or child.
    pub fn role(&self) -> TaskRole {
        self.role
    }

    /// The type name of a child's future (for an `async fn`, its path followed by
    /// `::{{closure}}`); `"body"` or `"root"` for the others.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The call that spawned a child, that opened a body's nursery, or that started the run.
    pub fn location(&self) -> Option<&'static Location<'static>> {
        self.location
    }

    /// Running, runnable, waiting, or a body that has returned.
    pub fn state(&self) -> TaskState {
        self.state
    }

    /// What the task is registered as waiting on: the operations it parked on that have not
    /// completed, been cancelled or been dropped (more than one for a `select`; a poll-style
    /// read abandoned in a `select` stays until the stream's next read, as its registration
    /// does).
    pub fn waits(&self) -> &[WaitInfo] {
        &self.waits
    }

    /// When the task was last polled (`None`: never yet; and for the root, which is polled at
    /// every pass of the loop).
    pub fn last_ran(&self) -> Option<Instant> {
        self.last_ran
    }

    /// The nurseries open in this task, oldest first.
    pub fn nurseries(&self) -> &[NurseryInfo] {
        &self.nurseries
    }
}

/// Which kind of task a [`TaskInfo`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskRole {
    /// The future given to `run`.
    Root,
    /// A nursery's body.
    Body,
    /// A nursery's child (`spawn`, `start_soon`, `start`).
    Child,
}

/// What a task is doing when the snapshot is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    /// Being polled: the task that took the snapshot, and the tasks polling it (a nursery polls
    /// its children from inside its parent's poll). From a
    /// [`run_sync_soon`](crate::RunHandle::run_sync_soon) callback, which runs between polls,
    /// the root shows as running.
    Running,
    /// Woken, and will run in a coming batch.
    Runnable,
    /// Parked: see [`TaskInfo::waits`] and [`TaskInfo::nurseries`].
    Waiting,
    /// A nursery body that has returned; its nursery waits for the children.
    Done,
}

/// One thing a task waits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitInfo {
    pub(crate) on: WaitingOn,
    pub(crate) deadline: Option<Instant>,
    pub(crate) cancelled: bool,
}

impl WaitInfo {
    /// What the task waits for.
    pub fn on(&self) -> WaitingOn {
        self.on
    }

    /// The earliest deadline of the cancel scopes around the wait (up to the first shield):
    /// when it passes, the wait ends with `Cancelled`.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The wait is cancelled already: the task will be woken to see it.
    pub fn cancelled(&self) -> bool {
        self.cancelled
    }
}

/// One open nursery of a [`TaskTree`].
#[derive(Debug, Clone)]
pub struct NurseryInfo {
    pub(crate) id: u64,
    pub(crate) location: &'static Location<'static>,
    pub(crate) deadline: Option<Instant>,
    pub(crate) cancelled: bool,
    pub(crate) tasks: Vec<TaskInfo>,
}

impl NurseryInfo {
    /// A number that names the nursery for the whole run (from the tasks' sequence).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The `nursery(...)` call that opened it.
    pub fn location(&self) -> &'static Location<'static> {
        self.location
    }

    /// The earliest deadline of its scope and the scopes around it (up to the first shield).
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Its scope is effectively cancelled: its tasks are being cancelled.
    pub fn cancelled(&self) -> bool {
        self.cancelled
    }

    /// Its body, then its children, oldest first.
    pub fn tasks(&self) -> &[TaskInfo] {
        &self.tasks
    }
}

/// A snapshot of the run's task tree.
///
/// # Errors
///
/// [`TrackingOff`] if the run was not built with
/// [`Builder::track_tasks(true)`](crate::Builder::track_tasks).
///
/// # Panics
///
/// Outside a run.
///
/// ```
/// use hatchery::debug::{task_tree, TaskState, WaitingOn};
/// use hatchery::{nursery, sleep, testing::MockClock, Builder, Error, Instant};
/// use std::time::Duration;
///
/// async fn nap() -> Result<(), Error> {
///     sleep(Duration::from_secs(5)).await?;
///     Ok(())
/// }
///
/// Builder::new().clock(MockClock::with_autojump(Duration::ZERO)).track_tasks(true).run(async {
///     nursery(async |n| {
///         n.start_soon(nap());
///         sleep(Duration::from_secs(1)).await?;
///         let tree = task_tree().unwrap();
///         let napper = tree.tasks().into_iter().find(|t| t.name().contains("nap")).unwrap();
///         assert_eq!(napper.state(), TaskState::Waiting);
///         let until = Instant::from_origin(Duration::from_secs(5));
///         assert_eq!(napper.waits()[0].on(), WaitingOn::Sleep(Some(until)));
///         println!("{tree}");
///         Ok::<_, Error>(())
///     })
///     .await
/// })
/// .unwrap();
/// ```
pub fn task_tree() -> Result<TaskTree, TrackingOff> {
    let core = context::core();
    let tracker = core.tracker.as_ref().ok_or(TrackingOff)?;
    let current = core.entity.get().0;
    let tree = tracker.borrow().snapshot(core.now(), current, &core.sched.borrow(), &core.cancel.borrow());
    Ok(tree)
}

/// Seconds since the run's origin, to the millisecond.
struct Secs(Instant);

impl fmt::Display for Secs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.3}s", self.0.as_secs_f64())
    }
}

impl fmt::Display for TaskTree {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tasks = self.tasks().len();
        let nurseries = self.nurseries().len();
        let plural = |n: usize, one: &'static str, many: &'static str| if n == 1 { one } else { many };
        writeln!(
            f,
            "task tree at {}: {tasks} {}, {nurseries} {}",
            Secs(self.now),
            plural(tasks, "task", "tasks"),
            plural(nurseries, "nursery", "nurseries"),
        )?;
        write_task(f, &self.root, "", "")?;
        for (i, n) in self.detached.iter().enumerate() {
            let last = i + 1 == self.detached.len();
            writeln!(f, "(not in any task's tree:)")?;
            write_nursery(f, n, "", last)?;
        }
        Ok(())
    }
}

fn write_task(f: &mut fmt::Formatter<'_>, t: &TaskInfo, first: &str, rest: &str) -> fmt::Result {
    write!(f, "{first}task {}", t.id)?;
    match t.role {
        TaskRole::Root => f.write_str(" root, run")?,
        TaskRole::Body => f.write_str(" body")?,
        TaskRole::Child => write!(f, " `{}` spawned", t.name)?,
    }
    if let Some(at) = t.location {
        write!(f, " at {at}")?;
    }
    f.write_str(": ")?;
    match t.state {
        TaskState::Running => f.write_str("running")?,
        TaskState::Runnable => f.write_str("runnable")?,
        TaskState::Done => f.write_str("returned, waiting for its children")?,
        TaskState::Waiting if !t.waits.is_empty() => {
            f.write_str("waiting on ")?;
            for (i, w) in t.waits.iter().enumerate() {
                if i > 0 {
                    f.write_str(" or ")?;
                }
                write!(f, "{}", w.on)?;
                match (w.cancelled, w.deadline) {
                    (true, _) => f.write_str(" (cancelled)")?,
                    (false, Some(d)) => write!(f, " (deadline {})", Secs(d))?,
                    (false, None) => {}
                }
            }
        }
        TaskState::Waiting if !t.nurseries.is_empty() => f.write_str("waiting on its nursery")?,
        TaskState::Waiting => f.write_str("waiting on something outside hatchery")?,
    }
    if let Some(at) = t.last_ran
        && t.state != TaskState::Running
    {
        write!(f, "; last ran at {}", Secs(at))?;
    }
    writeln!(f)?;
    for (i, n) in t.nurseries.iter().enumerate() {
        let last = i + 1 == t.nurseries.len();
        write_nursery(f, n, rest, last)?;
    }
    Ok(())
}

/// The branch drawn before an entry and the indent below it, for the last entry of a list or not.
fn branch(last: bool) -> (&'static str, &'static str) {
    if last { ("└── ", "    ") } else { ("├── ", "│   ") }
}

fn write_nursery(f: &mut fmt::Formatter<'_>, n: &NurseryInfo, indent: &str, last: bool) -> fmt::Result {
    let (branch_here, next) = branch(last);
    write!(f, "{indent}{branch_here}nursery {} opened at {}", n.id, n.location)?;
    if n.cancelled {
        f.write_str(", cancelled")?;
    } else if let Some(d) = n.deadline {
        write!(f, ", deadline {}", Secs(d))?;
    }
    writeln!(f)?;
    let inner = format!("{indent}{next}");
    for (i, t) in n.tasks.iter().enumerate() {
        let (b, r) = branch(i + 1 == n.tasks.len());
        write_task(f, t, &format!("{inner}{b}"), &format!("{inner}{r}"))?;
    }
    Ok(())
}
