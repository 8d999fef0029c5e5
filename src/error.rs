//! Error types shared by the whole crate.
//!
//! Ground rules:
//! - [`Cancelled`] is created only by the runtime (its fields are private), so code cannot fake a
//!   cancellation, and it never converts silently into something that hides it: the conversions
//!   into [`std::io::Error`] and [`Error`] keep it recognisable through [`CancelError`].
//! - Every error that a cancel scope or a nursery must look through implements [`CancelError`].

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::sync::Arc;

/// Why a cancel scope was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CancelSource {
    /// [`CancelHandle::cancel`](crate::CancelHandle::cancel) was called.
    Explicit,
    /// The scope's deadline passed.
    Deadline,
    /// A nursery cancelled its own scope because a child or its body failed or panicked.
    Nursery,
    /// A signal asked the program to stop: [`ctrl_c_cancels`](crate::signal::ctrl_c_cancels)
    /// (Trio's `KeyboardInterrupt` source). The reason names the signal.
    Shutdown,
}

impl fmt::Display for CancelSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CancelSource::Explicit => "explicit cancel",
            CancelSource::Deadline => "deadline",
            CancelSource::Nursery => "nursery",
            CancelSource::Shutdown => "shutdown",
        })
    }
}

/// The error every checkpoint returns inside a cancelled scope.
///
/// Only the runtime creates it. Propagate it with `?`; the cancel scope that was cancelled
/// absorbs it when it leaves that scope. It carries its [`source`](Cancelled::source) and the
/// optional reason given to [`cancel_with_reason`](crate::CancelHandle::cancel_with_reason).
///
/// It converts into [`std::io::Error`] (kind `Other`) and stays recognisable there:
/// [`Cancelled::from_io`] finds it again, and cancel scopes look through `io::Error` too.
#[derive(Clone, PartialEq, Eq)]
pub struct Cancelled {
    source: CancelSource,
    reason: Option<Arc<str>>,
}

impl Cancelled {
    pub(crate) fn new(source: CancelSource, reason: Option<Arc<str>>) -> Self {
        Cancelled { source, reason }
    }

    /// What caused the cancellation.
    pub fn source(&self) -> CancelSource {
        self.source
    }

    /// The reason given when the scope was cancelled, if any.
    pub fn reason(&self) -> Option<&str> {
        self.reason.as_deref()
    }

    /// Finds a `Cancelled` inside an [`io::Error`] made from one.
    pub fn from_io(err: &io::Error) -> Option<&Cancelled> {
        err.get_ref()?.downcast_ref::<Cancelled>()
    }
}

impl fmt::Debug for Cancelled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cancelled({self})")
    }
}

impl fmt::Display for Cancelled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cancelled due to {}", self.source)?;
        if let Some(r) = &self.reason {
            write!(f, " with reason '{r}'")?;
        }
        Ok(())
    }
}

impl StdError for Cancelled {}

impl From<Cancelled> for io::Error {
    fn from(c: Cancelled) -> io::Error {
        io::Error::other(c)
    }
}

/// Why awaiting a [`JoinHandle`](crate::JoinHandle) gave no value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JoinError {
    /// The code awaiting the handle is cancelled. This is the only variant that is a
    /// cancellation of the awaiting code, so scopes and nurseries absorb it as such.
    #[error(transparent)]
    Cancelled(Cancelled),
    /// The child failed or panicked; its error went to the nursery, which is now cancelling its
    /// other tasks.
    #[error("the child task failed; its error went to its nursery")]
    Failed,
    /// The child was cancelled (through its handle, or with its nursery) before it produced a
    /// value. Not a cancellation of the awaiting code: propagating it with `?` is an error.
    #[error("the child task was cancelled before it produced a value ({0})")]
    ChildCancelled(Cancelled),
}

impl CancelError for JoinError {
    fn cancelled(&self) -> Option<&Cancelled> {
        match self {
            JoinError::Cancelled(c) => Some(c),
            _ => None,
        }
    }
}

impl From<JoinError> for io::Error {
    fn from(e: JoinError) -> io::Error {
        match e {
            JoinError::Cancelled(c) => c.into(),
            other => io::Error::other(other),
        }
    }
}

/// Returned by [`fail_after`](crate::fail_after) and [`fail_at`](crate::fail_at) when their
/// deadline interrupted the work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the operation did not finish before its deadline")]
pub struct TooSlow {
    _private: (),
}

impl TooSlow {
    pub(crate) fn new() -> Self {
        TooSlow { _private: () }
    }
}

impl From<TooSlow> for io::Error {
    fn from(e: TooSlow) -> io::Error {
        io::Error::new(io::ErrorKind::TimedOut, e)
    }
}

/// Misuse of [`Nursery::start`](crate::Nursery::start).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The started task returned before it called [`TaskStatus::started`](crate::TaskStatus::started).
    #[error("the task returned without calling TaskStatus::started")]
    NotStarted,
    /// The nursery has finished and takes no new tasks.
    #[error("the nursery is closed to new tasks")]
    Closed,
}

impl From<StartError> for io::Error {
    fn from(e: StartError) -> io::Error {
        io::Error::other(e)
    }
}

/// Every error a nursery collected, in the order they happened; none is dropped.
///
/// A nursery returns it when its body or a child failed (after the nursery's own cancellation
/// of the others has been absorbed). It always holds at least one error.
#[derive(Debug)]
pub struct NurseryError<E> {
    errors: Vec<E>,
}

impl<E> NurseryError<E> {
    pub(crate) fn new(errors: Vec<E>) -> Self {
        debug_assert!(!errors.is_empty());
        NurseryError { errors }
    }

    /// The first error that happened.
    pub fn first(&self) -> &E {
        &self.errors[0]
    }

    /// Every error, oldest first.
    pub fn errors(&self) -> &[E] {
        &self.errors
    }

    /// Number of errors (at least one).
    pub fn len(&self) -> usize {
        self.errors.len()
    }

    /// Always false: a `NurseryError` holds at least one error.
    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    /// The errors, oldest first.
    pub fn into_errors(self) -> Vec<E> {
        self.errors
    }

    /// The first error; the others are dropped.
    pub fn into_first(self) -> E {
        self.errors.into_iter().next().expect("a NurseryError is never empty")
    }
}

impl<E: fmt::Display> fmt::Display for NurseryError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.errors[0])?;
        if self.errors.len() > 1 {
            write!(f, " (and {} more error(s) from the same nursery)", self.errors.len() - 1)?;
        }
        Ok(())
    }
}

/// The display already shows the first error, so the chain goes on with that error's source
/// (a chain printer would otherwise print the first error twice).
impl<E: StdError + 'static> StdError for NurseryError<E> {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.errors[0].source()
    }
}

impl From<NurseryError<Cancelled>> for Cancelled {
    /// All the cancellations in one nursery come from the same place; the first stands for all.
    fn from(e: NurseryError<Cancelled>) -> Cancelled {
        e.into_first()
    }
}

impl From<NurseryError<io::Error>> for io::Error {
    /// One error passes through unchanged, and so does a group of nothing but cancellations
    /// (they all come from the same scope: the first stands for all, as for
    /// `NurseryError<Cancelled>`); other groups are wrapped, kind `Other`, all kept.
    fn from(e: NurseryError<io::Error>) -> io::Error {
        let only_cancelled = e.errors().iter().all(|x| Cancelled::from_io(x).is_some());
        if e.len() == 1 || only_cancelled { e.into_first() } else { io::Error::other(e) }
    }
}

/// An error that may be, or may carry, a [`Cancelled`].
///
/// Cancel scopes and nurseries use it to find the cancellations they must absorb. Implement it
/// for your own error type (usually by matching the variant that holds a `Cancelled`) to use
/// that type inside scopes and nurseries.
pub trait CancelError: Sized {
    /// The cancellation this error is or carries, if any.
    fn cancelled(&self) -> Option<&Cancelled>;

    /// Whether this error carries any cancellation (a group may carry some among other errors).
    fn has_cancelled(&self) -> bool {
        self.cancelled().is_some()
    }

    /// Removes the cancellations from this error. `None` if nothing else is left.
    ///
    /// The default drops the whole error when [`cancelled`](CancelError::cancelled) is some;
    /// errors that group several others override it to keep the rest.
    fn strip_cancelled(self) -> Option<Self> {
        if self.cancelled().is_some() { None } else { Some(self) }
    }
}

impl CancelError for Cancelled {
    fn cancelled(&self) -> Option<&Cancelled> {
        Some(self)
    }
}

impl CancelError for io::Error {
    fn cancelled(&self) -> Option<&Cancelled> {
        let inner = self.get_ref()?;
        if let Some(c) = inner.downcast_ref::<Cancelled>() {
            return Some(c);
        }
        if let Some(n) = inner.downcast_ref::<NurseryError<io::Error>>() {
            return n.cancelled();
        }
        // An `Error` wrapped with `io::Error::other` (or converted with `From`).
        inner.downcast_ref::<Error>().and_then(Error::cancelled)
    }

    fn has_cancelled(&self) -> bool {
        match self.get_ref() {
            Some(inner) => match inner.downcast_ref::<NurseryError<io::Error>>() {
                Some(n) => n.has_cancelled(),
                None => {
                    inner.is::<Cancelled>() || inner.downcast_ref::<Error>().is_some_and(Error::has_cancelled)
                }
            },
            None => false,
        }
    }

    /// Looks into a group of errors wrapped in this `io::Error` and keeps the rest (S4.9).
    fn strip_cancelled(self) -> Option<Self> {
        if self.get_ref().is_some_and(|e| e.is::<NurseryError<io::Error>>()) {
            let kind = self.kind();
            let group = self.into_inner().and_then(|b| b.downcast::<NurseryError<io::Error>>().ok())?;
            // What is left goes back through the group's conversion: one error alone passes
            // through with its own kind, as it would have had no cancellation joined it.
            return group.strip_cancelled().map(|rest| match rest.len() {
                1 => rest.into_first(),
                _ => io::Error::new(kind, rest),
            });
        }
        if self.get_ref().is_some_and(|e| e.is::<Error>()) {
            let kind = self.kind();
            let inner = self.into_inner().and_then(|b| b.downcast::<Error>().ok())?;
            return inner.strip_cancelled().map(|rest| match rest {
                Error::Io(e) => e,
                rest => io::Error::new(kind, rest),
            });
        }
        if self.cancelled().is_some() { None } else { Some(self) }
    }
}

impl<E: CancelError> CancelError for NurseryError<E> {
    /// Some only when every error in the group is a cancellation.
    fn cancelled(&self) -> Option<&Cancelled> {
        let mut first = None;
        for e in &self.errors {
            let c = e.cancelled()?;
            first.get_or_insert(c);
        }
        first
    }

    fn has_cancelled(&self) -> bool {
        self.errors.iter().any(E::has_cancelled)
    }

    fn strip_cancelled(self) -> Option<Self> {
        let rest: Vec<E> = self.errors.into_iter().filter_map(E::strip_cancelled).collect();
        if rest.is_empty() { None } else { Some(NurseryError { errors: rest }) }
    }
}

impl CancelError for TooSlow {
    fn cancelled(&self) -> Option<&Cancelled> {
        None
    }
}

/// A general error type for programs that do not need their own.
///
/// The errors of waiting operations convert into it (`Cancelled`, `TooSlow`, `JoinError`,
/// `StartError`, `io::Error`, `NurseryError<Error>`, `WriteAllError`, and the channel
/// (`try_send`'s and `try_recv`'s included), mutex, condition, copy and thread errors), so `?`
/// works on them, and it implements [`CancelError`], so it can be used inside cancel scopes and
/// nurseries. The errors of the other `try_` operations and of misuse (`TryLockError`,
/// `TryAcquireError`, the semaphore's, `RunError`, `ReuniteError`, `run_sync_soon`'s) do not:
/// handle them where they happen, or wrap them with [`Error::other`](Error::other), which still
/// finds a `Cancelled` inside what it wraps (a `Cancelled`, an `io::Error` or an `Error`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A checkpoint saw a cancellation.
    #[error(transparent)]
    Cancelled(#[from] Cancelled),
    /// A `fail_after`/`fail_at` deadline fired.
    #[error(transparent)]
    TooSlow(#[from] TooSlow),
    /// Awaiting a child's handle gave no value.
    #[error(transparent)]
    Join(#[from] JoinError),
    /// `Nursery::start` was misused.
    #[error(transparent)]
    Start(#[from] StartError),
    /// An I/O error.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// Several errors from one nursery.
    #[error(transparent)]
    Nursery(Box<NurseryError<Error>>),
    /// Any other error.
    #[error(transparent)]
    Other(Box<dyn StdError + Send + Sync + 'static>),
}

impl Error {
    /// Wraps any error.
    pub fn other(e: impl Into<Box<dyn StdError + Send + Sync + 'static>>) -> Error {
        Error::Other(e.into())
    }
}

impl From<Error> for io::Error {
    /// Each kind of error as its own conversion makes it (a `Cancelled` stays recognisable, a
    /// `TooSlow` is `TimedOut`, an `io::Error` passes through unchanged); a group or any other
    /// error is wrapped, kind `Other`, and a cancellation inside is still found there
    /// ([`CancelError`] for `io::Error` looks into a wrapped `Error`).
    fn from(e: Error) -> io::Error {
        match e {
            Error::Cancelled(c) => c.into(),
            Error::TooSlow(t) => t.into(),
            Error::Join(j) => j.into(),
            Error::Start(s) => s.into(),
            Error::Io(e) => e,
            other => io::Error::other(other),
        }
    }
}

impl From<NurseryError<Error>> for Error {
    /// A group of nothing but cancellations (however each is carried: `Error::Cancelled`, an
    /// `io::Error` made from one, a `JoinError`) becomes `Error::Cancelled` with the first one
    /// (they all come from the same scope); anything else is kept whole.
    fn from(e: NurseryError<Error>) -> Error {
        if let Some(c) = e.cancelled() {
            return Error::Cancelled(c.clone());
        }
        Error::Nursery(Box::new(e))
    }
}

impl CancelError for Error {
    fn cancelled(&self) -> Option<&Cancelled> {
        match self {
            Error::Cancelled(c) => Some(c),
            Error::Io(e) => e.cancelled(),
            Error::Nursery(n) => n.cancelled(),
            Error::Join(j) => j.cancelled(),
            Error::Other(e) => other_cancelled(&**e),
            Error::TooSlow(_) | Error::Start(_) => None,
        }
    }

    fn has_cancelled(&self) -> bool {
        match self {
            Error::Nursery(n) => n.has_cancelled(),
            Error::Io(e) => e.has_cancelled(),
            // A group wrapped in what `Other` holds, as `Io` finds one.
            Error::Other(e) => match (e.downcast_ref::<io::Error>(), e.downcast_ref::<Error>()) {
                (Some(io), _) => io.has_cancelled(),
                (_, Some(inner)) => inner.has_cancelled(),
                _ => other_cancelled(&**e).is_some(),
            },
            other => other.cancelled().is_some(),
        }
    }

    fn strip_cancelled(self) -> Option<Self> {
        match self {
            Error::Nursery(n) => n.strip_cancelled().map(|n| Error::Nursery(Box::new(n))),
            Error::Io(e) => e.strip_cancelled().map(Error::Io),
            // A group wrapped in what `Other` holds is stripped as `Io` strips one.
            Error::Other(e) => match e.downcast::<io::Error>() {
                Ok(io) => (*io).strip_cancelled().map(Error::other),
                Err(e) => match e.downcast::<Error>() {
                    Ok(inner) => (*inner).strip_cancelled().map(Error::other),
                    Err(e) => {
                        if other_cancelled(&*e).is_some() {
                            None
                        } else {
                            Some(Error::Other(e))
                        }
                    }
                },
            },
            other => {
                if other.cancelled().is_some() {
                    None
                } else {
                    Some(other)
                }
            }
        }
    }
}

/// A cancellation wrapped with [`Error::other`]: the wrapped error is, or carries, one.
fn other_cancelled<'a>(e: &'a (dyn StdError + Send + Sync + 'static)) -> Option<&'a Cancelled> {
    if let Some(c) = e.downcast_ref::<Cancelled>() {
        return Some(c);
    }
    if let Some(io) = e.downcast_ref::<io::Error>() {
        return io.cancelled();
    }
    e.downcast_ref::<Error>().and_then(Error::cancelled)
}

/// The result type used with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A second task tried to wait on something only one task may wait on at a time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("another task is already waiting to {0} this resource")]
pub struct BusyResource(pub(crate) &'static str);

impl From<BusyResource> for io::Error {
    fn from(e: BusyResource) -> io::Error {
        io::Error::new(io::ErrorKind::ResourceBusy, e)
    }
}

/// A `write_all` that did not finish: how far it got, and why it stopped.
///
/// `written` bytes of the buffer went out (in order, from its start); the rest did not. For a
/// socket the stream stays usable after a cancellation (Trio's S9.3): a later write continues
/// right after those bytes, so a caller can resume with `&buf[written..]`.
///
/// It converts into `io::Error` (the count is dropped, the error kept, so a [`Cancelled`]
/// inside is still found) and into [`Error`], and implements [`CancelError`], so a cancel
/// scope around a cancelled `write_all` absorbs it, count and all: to resume after a
/// deadline, read `written` inside the scope. A `write_all` future *dropped* (not cancelled)
/// part way reports nothing.
#[derive(Debug, thiserror::Error)]
#[error("write_all stopped after {written} bytes")]
#[non_exhaustive]
pub struct WriteAllError {
    /// Bytes written before the error.
    pub written: usize,
    /// Why it stopped.
    #[source]
    pub error: io::Error,
}

impl From<WriteAllError> for io::Error {
    fn from(e: WriteAllError) -> io::Error {
        e.error
    }
}

impl From<WriteAllError> for Error {
    fn from(e: WriteAllError) -> Error {
        Error::Io(e.error)
    }
}

impl CancelError for WriteAllError {
    fn cancelled(&self) -> Option<&Cancelled> {
        self.error.cancelled()
    }
}

/// The resource was closed, by this task or another, while or before it was used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the resource was closed")]
pub struct ClosedResource;

impl From<ClosedResource> for io::Error {
    fn from(e: ClosedResource) -> io::Error {
        io::Error::new(io::ErrorKind::NotConnected, e)
    }
}

/// The runtime that a [`RunHandle`](crate::RunHandle) belongs to has finished.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the hatchery run this handle belongs to has finished")]
pub struct RunFinished;

/// Why [`Builder::try_run`](crate::Builder::try_run) could not run the future.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// `run` was called while a hatchery runtime is already running on this thread.
    #[error(
        "hatchery::run was called from inside a running hatchery runtime on the same thread; \
         open a nursery and spawn the work there instead"
    )]
    Nested,
    /// The operating system refused to create the event loop.
    #[error("could not create the event loop: {0}")]
    Poller(io::Error),
}
