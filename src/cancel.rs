//! Cancel scopes: cancellation you can aim, with deadlines and shields.
//!
//! A [`CancelScope`] wraps a future ([`CancelScope::run`]). While the scope is cancelled, every
//! checkpoint inside it fails with [`Cancelled`](crate::Cancelled), again and again (level-triggered), until
//! control leaves the scope. When the `Cancelled` comes out of the scope, the scope absorbs it
//! if it is the outermost cancelled scope visible from inside (S4.8): the future then resolves to
//! `Ok(None)`. A value the body produced is never thrown away: a body that finishes with `Ok` is
//! reported as `Ok(Some(value))` even if the scope was cancelled meanwhile.
//!
//! This is a core module: it owns entering and leaving scopes in the runtime's cancel tree.

use std::cell::OnceCell;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;

use crate::error::{CancelError, CancelSource, TooSlow};
use crate::runtime::cancel_tree::{Phase, ScopeRef, ScopeState, Wakeups};
use crate::runtime::clock::Instant;
use crate::runtime::context::{self, Core, TimerTarget};

/// A cancel scope, not yet entered. Single-use: [`run`](CancelScope::run) consumes it.
///
/// Configure it (deadline, timeout, shield), keep a [`CancelHandle`] if you want to act on it
/// later, then run a future inside it.
///
/// ```
/// use std::time::Duration;
/// use hatchery::{testing::MockClock, Builder, CancelScope, Cancelled, sleep, now, Instant};
///
/// Builder::new().clock(MockClock::with_autojump(Duration::ZERO)).run(async {
///     let scope = CancelScope::new().with_timeout(Duration::from_secs(5));
///     let handle = scope.handle();
///     let out = scope.run(async {
///         sleep(Duration::from_secs(10)).await?;
///         Ok::<_, Cancelled>("slept")
///     }).await;
///     assert_eq!(out, Ok(None)); // the deadline fired and this scope absorbed it
///     assert!(handle.cancelled_caught());
///     assert_eq!(now(), Instant::ZERO + Duration::from_secs(5));
/// });
/// ```
pub struct CancelScope {
    /// The state while the scope has no handle: it moves into the scope's future and then into
    /// its tree node, so a scope nobody else reaches allocates nothing.
    own: ScopeState,
    /// The state once a handle exists (`own` is then unused).
    shared: OnceCell<Rc<ScopeState>>,
}

/// A shared handle to a cancel scope: cancel it, move its deadline, toggle its shield, and read
/// what happened, before, during or after the scope runs. Cheap to clone.
#[derive(Clone)]
pub struct CancelHandle {
    state: Rc<ScopeState>,
}

impl Default for CancelScope {
    fn default() -> Self {
        CancelScope::new()
    }
}

impl fmt::Debug for CancelScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        debug_state(self.state(), "CancelScope", f)
    }
}

impl fmt::Debug for CancelHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        debug_state(&self.state, "CancelHandle", f)
    }
}

fn debug_state(s: &ScopeState, name: &str, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    f.debug_struct(name)
        .field("cancel_called", &s.cancel_called.get())
        .field("shield", &s.shield.get())
        .field("deadline", &s.deadline.get())
        .field("cancelled_caught", &s.caught.get())
        .finish()
}

impl CancelScope {
    /// A scope with no deadline and no shield.
    pub fn new() -> CancelScope {
        CancelScope { own: ScopeState::new(), shared: OnceCell::new() }
    }

    fn state(&self) -> &ScopeState {
        match self.shared.get() {
            Some(rc) => rc,
            None => &self.own,
        }
    }

    /// Sets an absolute deadline.
    pub fn with_deadline(self, deadline: Instant) -> CancelScope {
        self.state().set_relative(None);
        self.state().deadline.set(deadline);
        self
    }

    /// Sets a deadline `timeout` after the moment the scope is entered (not now, S4.5).
    pub fn with_timeout(self, timeout: Duration) -> CancelScope {
        self.state().deadline.set(Instant::MAX);
        self.state().set_relative(Some(timeout));
        self
    }

    /// Shields the inside from cancellation of enclosing scopes (S4.7).
    pub fn shielded(self) -> CancelScope {
        self.state().shield.set(true);
        self
    }

    /// A handle to this scope.
    pub fn handle(&self) -> CancelHandle {
        CancelHandle { state: self.shared.get_or_init(|| self.own.move_to_shared()).clone() }
    }

    /// Runs `future` inside this scope.
    ///
    /// Resolves to `Ok(Some(v))` when the future finished with `Ok(v)`, `Ok(None)` when this
    /// scope absorbed a cancellation, and `Err(e)` for any other error, including a
    /// cancellation that belongs to an enclosing scope.
    ///
    /// # Cancellation
    ///
    /// Entering and leaving the scope are not checkpoints; only what the future does inside is.
    pub fn run<F, T, E>(self, future: F) -> Scoped<F>
    where
        F: Future<Output = Result<T, E>>,
        E: CancelError,
    {
        let state = match self.shared.into_inner() {
            Some(rc) => ScopeRef::Shared(rc),
            None => ScopeRef::Own(self.own),
        };
        Scoped { fut: Some(future), guard: ScopeGuard { state: Some(state), entered: None } }
    }
}

impl CancelHandle {
    pub(crate) fn from_state(state: Rc<ScopeState>) -> CancelHandle {
        CancelHandle { state }
    }

    /// Cancels the scope. Idempotent; not a checkpoint: the code that calls it keeps running
    /// until its next checkpoint (S2.6). Works before entry, during the run, and after exit.
    pub fn cancel(&self) {
        cancel_state(&self.state, CancelSource::Explicit, None);
    }

    /// Cancels the scope with a reason that the resulting [`Cancelled`](crate::Cancelled) carries. The first
    /// reason recorded wins.
    pub fn cancel_with_reason(&self, reason: impl Into<String>) {
        self.cancel_from(CancelSource::Explicit, reason.into());
    }

    /// Cancels the scope from `source`, with a reason (the crate's own sources: signals).
    pub(crate) fn cancel_from(&self, source: CancelSource, reason: String) {
        cancel_state(&self.state, source, Some(Arc::from(reason)));
    }

    /// Whether cancellation was requested (by a call or by the deadline).
    ///
    /// An unentered or running scope whose deadline has passed is cancelled by this call if it
    /// was not yet (as Trio's getter does): the answer never goes back to `false`, even if the
    /// deadline is then moved later (S4.4). A scope that exited before its deadline was not
    /// cancelled.
    pub fn cancel_called(&self) -> bool {
        if self.state.cancel_called.get() {
            return true;
        }
        // Only a scope that is unentered or entered in the run on this thread: another run's
        // clock says nothing about this scope's deadline.
        let d = self.state.deadline.get();
        let here = match self.state.phase.get() {
            Phase::Unentered => context::try_core(),
            Phase::Entered(_) => entered_here(&self.state).map(|(core, _)| core),
            Phase::Exited => None,
        };
        let passed = d != Instant::MAX && here.is_some_and(|c| c.now() >= d);
        if passed {
            cancel_state(&self.state, CancelSource::Deadline, None);
        }
        passed
    }

    /// Whether this scope absorbed a cancellation.
    pub fn cancelled_caught(&self) -> bool {
        self.state.caught.get()
    }

    /// The absolute deadline, if any. For a relative scope that has not been entered yet this is
    /// `None`: the deadline is fixed at entry.
    pub fn deadline(&self) -> Option<Instant> {
        let d = self.state.deadline.get();
        (d != Instant::MAX).then_some(d)
    }

    /// Sets the absolute deadline (`Instant::MAX` removes it). Takes effect at once; a
    /// deadline in the past cancels the scope on the next pass of the loop (S1.9). Before
    /// entry, this replaces a relative timeout. Moving the deadline later does not undo a
    /// cancellation that already happened.
    pub fn set_deadline(&self, deadline: Instant) {
        self.state.set_relative(None);
        self.state.deadline.set(deadline);
        if let Some((core, node)) = entered_here(&self.state) {
            arm_deadline(&core, &self.state, node);
        }
    }

    /// Sets the deadline to `timeout` from now (or, before entry, from the moment of entry).
    pub fn set_timeout(&self, timeout: Duration) {
        match self.state.phase.get() {
            Phase::Unentered => {
                self.state.deadline.set(Instant::MAX);
                self.state.set_relative(Some(timeout));
            }
            _ => match context::try_core() {
                Some(core) => self.set_deadline(core.now() + timeout),
                None => self.state.set_relative(Some(timeout)),
            },
        }
    }

    /// Whether the scope is shielded.
    pub fn shield(&self) -> bool {
        self.state.shield.get()
    }

    /// Turns the shield on or off. Takes effect at once: turning it off while an enclosing
    /// scope is cancelled wakes the tasks blocked inside with [`Cancelled`](crate::Cancelled).
    pub fn set_shield(&self, shield: bool) {
        let was = self.state.shield.replace(shield);
        if was
            && !shield
            && let Some((core, node)) = entered_here(&self.state)
        {
            let mut wakeups = Wakeups::default();
            {
                let tree = core.cancel.borrow();
                let parent = tree.parent(node);
                if parent != crate::runtime::cancel_tree::NIL && tree.is_effectively_cancelled(parent) {
                    tree.collect(node, &mut wakeups);
                }
            }
            wakeups.wake(&core);
        }
    }

    /// Whether the scope has been entered and not yet left.
    pub fn is_running(&self) -> bool {
        matches!(self.state.phase.get(), Phase::Entered(_))
    }
}

/// The run's core and the scope's node, if the scope is entered in the run active on this
/// thread (a handle kept from an earlier run must not touch this run's tree).
fn entered_here(state: &ScopeState) -> Option<(Rc<Core>, u32)> {
    match state.phase.get() {
        Phase::Entered(node) => {
            context::try_core().filter(|c| c.id as u32 == state.run.get()).map(|c| (c, node))
        }
        _ => None,
    }
}

/// Cancels a scope's state, waking what it reaches if it is entered.
pub(crate) fn cancel_state(state: &Rc<ScopeState>, source: CancelSource, reason: Option<Arc<str>>) {
    match entered_here(state) {
        Some((core, node)) => {
            let mut wakeups = Wakeups::default();
            cancel_node(&core, node, source, reason, &mut wakeups);
            wakeups.wake(&core);
        }
        _ => {
            // Entered in a run that is not the one running (it ended, or the scope's future was
            // carried out of it): that run's tree must not count it.
            if state.mark_cancelled(source, reason) && matches!(state.phase.get(), Phase::Entered(_)) {
                state.uncounted.set(true);
            }
        }
    }
}

/// Cancels the scope at `node` and collects the wake-ups of everything it reaches.
pub(crate) fn cancel_node(
    core: &Core,
    node: u32,
    source: CancelSource,
    reason: Option<Arc<str>>,
    wakeups: &mut Wakeups,
) {
    let mut tree = core.cancel.borrow_mut();
    if tree.mark_cancelled(node, source, reason) {
        tree.collect(node, wakeups);
    }
}

/// Registers, moves or removes the deadline entry of an entered scope. Borrows the run's timers.
fn arm_deadline(core: &Core, state: &ScopeState, node: u32) {
    let d = state.deadline.get();
    let mut timers = core.timers.borrow_mut();
    match state.deadline_key() {
        Some(k) => timers.reset(k, d),
        None if d != Instant::MAX => {
            state.set_deadline_key(Some(timers.insert(d, TimerTarget::Scope(node).into())))
        }
        None => {}
    }
}

/// Enters `state` under the current status; returns its node, which holds the state from now
/// on.
pub(crate) fn enter(core: &Core, state: ScopeRef) -> u32 {
    let parent = core.registration_status();
    enter_under(core, state, parent)
}

/// Enters `state` under `parent`; returns its node.
pub(crate) fn enter_under(core: &Core, state: ScopeRef, parent: u32) -> u32 {
    state.run.set(core.id as u32);
    // One clock read serves both the relative deadline and the check that it has not passed.
    let mut read = None;
    if let Some((now, deadline)) = state.take_relative(|| core.now()) {
        read = Some(now);
        state.deadline.set(deadline);
    }
    let d = state.deadline.get();
    let mut tree = core.cancel.borrow_mut();
    let node = tree.enter(parent, state);
    tree.state(node).phase.set(Phase::Entered(node));
    if d != Instant::MAX {
        if d <= read.unwrap_or_else(|| core.now()) {
            // Already past: cancelled at entry (S4.4); nothing is parked inside yet.
            tree.mark_cancelled(node, CancelSource::Deadline, None);
        } else {
            arm_deadline(core, tree.state(node), node);
        }
    }
    node
}

/// Leaves the scope at `node`.
pub(crate) fn exit(core: &Core, node: u32) {
    let state = core.cancel.borrow_mut().exit(node);
    if let Some(k) = state.deadline_key() {
        state.set_deadline_key(None);
        core.timers.borrow_mut().remove(k);
    }
    state.phase.set(Phase::Exited);
}

/// Applies S4.8/S4.9 to an error leaving the scope at `node`: if this scope catches, the
/// cancellations are stripped (and `cancelled_caught` set when there were any).
pub(crate) fn absorb<E: CancelError>(core: &Core, node: u32, err: E) -> Option<E> {
    if !core.cancel.borrow().catches(node) {
        return Some(err);
    }
    if !err.has_cancelled() {
        return Some(err);
    }
    core.cancel.borrow().state(node).caught.set(true);
    err.strip_cancelled()
}

/// Makes `node` the current status for the duration of a poll; restores on drop (also on panic).
pub(crate) struct StatusGuard<'a> {
    core: &'a Core,
    prev: u32,
    prev_lazy: bool,
}

impl<'a> StatusGuard<'a> {
    pub(crate) fn enter(core: &'a Core, node: u32) -> StatusGuard<'a> {
        Self::enter_lazy(core, node, false)
    }

    /// With `lazy`, `node` is the parent of the polled child's own node, created on demand.
    pub(crate) fn enter_lazy(core: &'a Core, node: u32, lazy: bool) -> StatusGuard<'a> {
        let prev = core.current_status.replace(node);
        let prev_lazy = core.lazy_status.replace(lazy);
        StatusGuard { core, prev, prev_lazy }
    }
}

impl Drop for StatusGuard<'_> {
    fn drop(&mut self) {
        self.core.current_status.set(self.prev);
        self.core.lazy_status.set(self.prev_lazy);
    }
}

/// A scope's future's hold on the scope: its state until entry, then its node (which holds the
/// state) until exit.
struct ScopeGuard {
    state: Option<ScopeRef>,
    entered: Option<(Rc<Core>, u32)>,
}

impl Drop for ScopeGuard {
    fn drop(&mut self) {
        if let Some((core, node)) = self.entered.take() {
            exit(&core, node);
        }
    }
}

pin_project! {
    /// The future returned by [`CancelScope::run`] and [`move_on_after`].
    #[must_use = "futures do nothing unless awaited"]
    pub struct Scoped<F> {
        #[pin]
        fut: Option<F>,
        guard: ScopeGuard,
    }
}

impl<F> fmt::Debug for Scoped<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.guard.state, &self.guard.entered) {
            (Some(state), _) => debug_state(state, "Scoped", f),
            (None, Some((core, node))) => match core.cancel.try_borrow() {
                Ok(tree) => debug_state(tree.state(*node), "Scoped", f),
                Err(_) => f.debug_struct("Scoped").field("node", node).finish_non_exhaustive(),
            },
            (None, None) => f.debug_struct("Scoped").field("exited", &true).finish(),
        }
    }
}

impl<F, T, E> Future for Scoped<F>
where
    F: Future<Output = Result<T, E>>,
    E: CancelError,
{
    type Output = Result<Option<T>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let Some(fut) = this.fut.as_mut().as_pin_mut() else {
            panic!("a hatchery cancel-scope future was polled after it completed");
        };
        let (core, node) = match &this.guard.entered {
            Some((core, node)) => {
                // A scope entered in an ended run: its deadline and cancel state live there, so
                // going on would run the body outside its scope.
                context::assert_current(core);
                (core.clone(), *node)
            }
            None => {
                let core = context::core();
                let Some(state) = this.guard.state.take() else {
                    unreachable!("hatchery internal error: a cancel scope left without being entered")
                };
                let node = enter(&core, state);
                this.guard.entered = Some((core.clone(), node));
                (core, node)
            }
        };
        let out = {
            let _status = StatusGuard::enter(&core, node);
            match fut.poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(out) => out,
            }
        };
        // Drop the body before leaving the scope, so nothing inside outlives it.
        this.fut.set(None);
        let result = match out {
            Ok(v) => Ok(Some(v)),
            Err(e) => match absorb(&core, node, e) {
                None => Ok(None),
                Some(e) => Err(e),
            },
        };
        if let Some((core, node)) = this.guard.entered.take() {
            exit(&core, node);
        }
        Poll::Ready(result)
    }
}

/// Runs `future` with a deadline `timeout` after its first poll (the scope is entered then,
/// S4.5: a future built now and awaited later starts its clock later); `Ok(None)` if the
/// deadline interrupted it.
///
/// ```
/// use std::time::Duration;
/// use hatchery::{testing::MockClock, Builder, move_on_after, sleep, Cancelled};
/// Builder::new().clock(MockClock::with_autojump(Duration::ZERO)).run(async {
///     let r = move_on_after(Duration::from_secs(1), async {
///         sleep(Duration::from_secs(2)).await?;
///         Ok::<_, Cancelled>(())
///     }).await;
///     assert_eq!(r, Ok(None));
/// });
/// ```
pub fn move_on_after<F, T, E>(timeout: Duration, future: F) -> Scoped<F>
where
    F: Future<Output = Result<T, E>>,
    E: CancelError,
{
    CancelScope::new().with_timeout(timeout).run(future)
}

/// Runs `future` with an absolute deadline; `Ok(None)` if the deadline interrupted it.
pub fn move_on_at<F, T, E>(deadline: Instant, future: F) -> Scoped<F>
where
    F: Future<Output = Result<T, E>>,
    E: CancelError,
{
    CancelScope::new().with_deadline(deadline).run(future)
}

pin_project! {
    /// The future returned by [`fail_after`] and [`fail_at`].
    #[must_use = "futures do nothing unless awaited"]
    #[derive(Debug)]
    pub struct FailAfter<F> {
        #[pin]
        inner: Scoped<F>,
    }
}

impl<F, T, E> Future for FailAfter<F>
where
    F: Future<Output = Result<T, E>>,
    E: CancelError + From<TooSlow>,
{
    type Output = Result<T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().inner.poll(cx).map(|r| match r {
            Ok(Some(v)) => Ok(v),
            Ok(None) => Err(E::from(TooSlow::new())),
            Err(e) => Err(e),
        })
    }
}

/// Runs `future` with a deadline `timeout` after its first poll (as [`move_on_after`]); fails
/// with [`TooSlow`] (converted into the
/// future's error type) if the deadline interrupted it (S5.2). If the deadline passes but no
/// checkpoint ran inside, the value is returned.
///
/// ```
/// use std::time::Duration;
/// use hatchery::{testing::MockClock, Builder, fail_after, sleep, Error};
/// Builder::new().clock(MockClock::with_autojump(Duration::ZERO)).run(async {
///     let r: Result<(), Error> = fail_after(Duration::from_secs(1), async {
///         sleep(Duration::from_secs(2)).await?;
///         Ok(())
///     }).await;
///     assert!(matches!(r, Err(Error::TooSlow(_))));
/// });
/// ```
pub fn fail_after<F, T, E>(timeout: Duration, future: F) -> FailAfter<F>
where
    F: Future<Output = Result<T, E>>,
    E: CancelError + From<TooSlow>,
{
    FailAfter { inner: move_on_after(timeout, future) }
}

/// Like [`fail_after`] with an absolute deadline.
pub fn fail_at<F, T, E>(deadline: Instant, future: F) -> FailAfter<F>
where
    F: Future<Output = Result<T, E>>,
    E: CancelError + From<TooSlow>,
{
    FailAfter { inner: move_on_at(deadline, future) }
}

/// The deadline that governs the code calling this: the earliest deadline of the enclosing
/// scopes up to the first shield (S4.11). `None` if there is none; [`Instant::ZERO`] (always
/// due) if the current code is already effectively cancelled.
///
/// # Panics
///
/// Outside a run.
pub fn current_effective_deadline() -> Option<Instant> {
    let core = context::core();
    let node = core.current_status.get();
    core.cancel.borrow().effective_deadline(node)
}
