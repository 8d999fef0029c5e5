//! The I/O reactor: readiness of registered file descriptors, on the `polling` crate.
//!
//! # How readiness is tracked
//!
//! Each registered source has two directions, read and write. Each direction has a `ready` bit
//! and at most one waiting task (Trio's rule: a second task that waits on the same direction gets
//! [`BusyResource`](crate::BusyResource)). The bit means "the OS said this direction may make
//! progress since we last saw it fail": it is set by events and cleared by the task when its
//! non-blocking syscall fails with `WouldBlock`. Because the event loop only processes events
//! between batches, never while a task runs, a task's "syscall failed, clear the bit" cannot race
//! with an event.
//!
//! Where the backend supports it (epoll, kqueue), a source is registered once in **edge** mode
//! for both directions: no re-arming syscall per wait and no read retried after a short read,
//! which is what keeps an echo round trip near two syscalls (performance.md). Elsewhere (the
//! `poll(2)` backend, event ports) it falls back to **oneshot** mode and re-arms the interest of the
//! waiting directions with `modify` before each wait; `modify` re-checks readiness, so data that
//! arrived in between is not lost.
//!
//! # Close order
//!
//! A source must leave the poller before its descriptor is closed (the `Poller::add` contract,
//! and epoll keeps a registration alive as long as any duplicate of the descriptor lives). The
//! only way to register is [`Registration::new`], and [`Registration`]'s `Drop` deletes it;
//! `IoSource` (in `lowlevel`) holds its I/O object in a field declared *after* the registration
//! and drops the registration first. `notify_closing` wakes waiters with `ClosedResource` before
//! anything is closed (mark closed, wake, then close, as Trio's `notify_closing`).
//!
//! This module and `nursery/shared.rs` are the only ones allowed `unsafe` (DESIGN §10 lists
//! every block and its invariant): here, the registrations' `Poller::add_with_mode` and the
//! `BorrowedFd::borrow_raw`s of a registered descriptor.
#![allow(unsafe_code)]

use std::cell::RefCell;
use std::io;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::task::Waker;
use std::time::Duration;

use polling::{Event, Events, PollMode};

use super::context::{Core, Wakeup};
use super::sched::Shared;
use super::slab::Slab;

/// Read or write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dir {
    Read,
    Write,
}

impl Dir {
    /// What a task waiting on `fd` in this direction waits for (for the task-tree dump).
    pub(crate) fn waiting_on(self, fd: std::os::fd::RawFd) -> crate::debug::WaitingOn {
        match self {
            Dir::Read => crate::debug::WaitingOn::Readable(fd),
            Dir::Write => crate::debug::WaitingOn::Writable(fd),
        }
    }
}

#[derive(Debug, Default)]
struct DirState {
    ready: bool,
    /// The OS reported the end of this direction (peer shut down or reset, or an error): kept
    /// through a short read, so one that drains the data in front of the end of stream cannot
    /// hide it; cleared by a `WouldBlock`, which proves the condition did not last (a datagram
    /// socket's error is reported once, then it blocks again).
    hup: bool,
    /// The last event came through `polling`'s decoding, which cannot report a half close: a
    /// short read proves nothing then (the peer's FIN may have come with the data), so only a
    /// `WouldBlock` clears readiness. Always so on the portable path (kqueue reports no
    /// hang-up through `polling`); on the Linux path only for events drained by the notifier's
    /// `Poller::wait`.
    inexact: bool,
    /// The one waiting operation: its id and whom to wake.
    waiter: Option<(u64, Wakeup)>,
}

#[derive(Debug)]
struct Source {
    /// The registered descriptor; open while the source exists (the `Registration` invariant).
    fd: std::os::fd::RawFd,
    generation: u32,
    read: DirState,
    write: DirState,
    closed: bool,
    /// Oneshot mode only: taken out of the poller after a hang-up or error found no waiter,
    /// and added back by the next wait. polling's `poll(2)` backend keeps a disarmed
    /// descriptor in its set, and `poll` reports `POLLHUP`/`POLLERR` whatever the interest, so
    /// every wait of the loop would return at once: an idle run would spin.
    detached: bool,
}

impl Source {
    fn dir(&mut self, d: Dir) -> &mut DirState {
        match d {
            Dir::Read => &mut self.read,
            Dir::Write => &mut self.write,
        }
    }
}

pub(crate) struct Reactor {
    shared: Arc<Shared>,
    sources: RefCell<Slab<Source>>,
    events: RefCell<Events>,
    /// The buffer of the direct `epoll_wait` (see `wait_epoll`).
    #[cfg(all(any(target_os = "linux", target_os = "android"), not(polling_test_poll_backend)))]
    raw_events: RefCell<Vec<rustix::event::epoll::Event>>,
    edge: bool,
    next_generation: std::cell::Cell<u32>,
}

impl std::fmt::Debug for Reactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reactor").field("edge", &self.edge).finish_non_exhaustive()
    }
}

/// What a readiness poll found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Readiness {
    Ready,
    Pending,
    Busy,
    Closed,
}

/// Whether sources are registered with `epoll` directly (and waited for with `wait_epoll`).
const DIRECT_EPOLL: bool =
    cfg!(all(any(target_os = "linux", target_os = "android"), not(polling_test_poll_backend)));

/// Registers `fd` with the poller's epoll set directly, in edge mode for reading, writing and
/// the peer's half close (`EPOLLRDHUP`, which `polling` does not offer and without which a short
/// read that drains the data in front of an end of stream would hide it). The key is the data,
/// as `polling` would store it.
fn direct_add(r: &Reactor, fd: std::os::fd::BorrowedFd<'_>, key: usize) -> io::Result<()> {
    #[cfg(all(any(target_os = "linux", target_os = "android"), not(polling_test_poll_backend)))]
    {
        use rustix::event::epoll::{self, EventData, EventFlags as F};
        let flags = F::IN | F::OUT | F::RDHUP | F::ET;
        epoll::add(r.shared.poller.as_fd(), fd, EventData::new_u64(key as u64), flags)?;
        Ok(())
    }
    #[cfg(not(all(any(target_os = "linux", target_os = "android"), not(polling_test_poll_backend))))]
    {
        let _ = (r, fd, key);
        unreachable!("direct epoll registration is only compiled where DIRECT_EPOLL is true")
    }
}

/// Removes a source added by [`direct_add`].
fn direct_delete(r: &Reactor, fd: std::os::fd::BorrowedFd<'_>) -> io::Result<()> {
    #[cfg(all(any(target_os = "linux", target_os = "android"), not(polling_test_poll_backend)))]
    {
        rustix::event::epoll::delete(r.shared.poller.as_fd(), fd)?;
        Ok(())
    }
    #[cfg(not(all(any(target_os = "linux", target_os = "android"), not(polling_test_poll_backend))))]
    {
        let _ = (r, fd);
        unreachable!("direct epoll registration is only compiled where DIRECT_EPOLL is true")
    }
}

/// Wakes its wake-up, if any, when dropped.
struct WakeOnDrop(Option<Wakeup>);

impl Drop for WakeOnDrop {
    fn drop(&mut self) {
        if let Some(w) = self.0.take() {
            w.wake();
        }
    }
}

/// The operation id of poll-style waits ([`IoSource::poll_read_with`] and friends), which are
/// not bracketed by an operation that could remove them: such a waiter gives way to a real one.
pub(crate) const POLL_OP: u64 = 0;

/// The longest one wait of the portable (`Poller::wait`) path sleeps; see `wait_polling`.
#[cfg_attr(
    all(any(target_os = "linux", target_os = "android"), not(polling_test_poll_backend)),
    allow(dead_code)
)]
const POLL_BACKEND_MAX_WAIT: Duration = Duration::from_millis(100);

/// A generation that matches any source: what 32-bit targets, whose keys have no room for one,
/// read back. Never allocated.
const ANY_GENERATION: u32 = u32::MAX;

#[cfg(target_pointer_width = "64")]
fn pack(index: usize, generation: u32) -> usize {
    // Key usize::MAX is reserved by polling; generations never reach u32::MAX, so it never occurs.
    ((generation as u64) << 32 | index as u64) as usize
}

#[cfg(target_pointer_width = "64")]
fn unpack(key: usize) -> (usize, u32) {
    ((key as u64 & 0xffff_ffff) as usize, ((key as u64) >> 32) as u32)
}

#[cfg(not(target_pointer_width = "64"))]
fn pack(index: usize, _generation: u32) -> usize {
    index
}

#[cfg(not(target_pointer_width = "64"))]
fn unpack(key: usize) -> (usize, u32) {
    (key, ANY_GENERATION)
}

fn same_source(s: &Source, generation: u32) -> bool {
    generation == ANY_GENERATION || s.generation == generation
}

impl Reactor {
    pub(crate) fn new(shared: Arc<Shared>) -> Reactor {
        let edge = shared.poller.supports_edge();
        Reactor {
            shared,
            sources: RefCell::new(Slab::new()),
            events: RefCell::new(Events::new()),
            #[cfg(all(any(target_os = "linux", target_os = "android"), not(polling_test_poll_backend)))]
            raw_events: RefCell::new(Vec::with_capacity(1024)),
            edge,
            next_generation: std::cell::Cell::new(0),
        }
    }

    pub(crate) fn source_count(&self) -> usize {
        self.sources.borrow().len()
    }

    fn interest(&self, key: usize) -> Event {
        let (index, _) = unpack(key);
        let sources = self.sources.borrow();
        let s = &sources[index];
        let mut ev = Event::none(key);
        ev.readable = s.read.waiter.is_some() && !s.read.ready;
        ev.writable = s.write.waiter.is_some() && !s.write.ready;
        ev
    }

    /// Polls readiness of one direction for the operation `op_id`, registering its wake-up (for
    /// `waker`, in the run `core`) if not ready. `fd` is the descriptor registered under `key`
    /// (the `Registration`'s own, never the I/O object's `as_fd` of the moment, which a safe
    /// but odd `AsFd` impl could change).
    pub(crate) fn poll_ready(
        &self,
        core: &Core,
        key: usize,
        dir: Dir,
        op_id: u64,
        waker: &Waker,
        fd: std::os::fd::RawFd,
    ) -> io::Result<Readiness> {
        let (index, generation) = unpack(key);
        // Dropped after the borrow below ends: a replaced or finished waiter's waker's
        // destructor may be foreign code.
        let mut _replaced = None;
        let mut _finished = None;
        // Woken (after the borrow ends) if a poll-style waiter is displaced.
        let mut evicted = WakeOnDrop(None);
        // A foreign waker's wake-up, cloned with the sources not borrowed: the clone is foreign
        // code, which may use the reactor (open or close a source). Then the source is looked
        // at again.
        let mut cloned: Option<Wakeup> = None;
        let rearm = loop {
            let mut sources = self.sources.borrow_mut();
            let s = match sources.get_mut(index) {
                Some(s) if same_source(s, generation) => s,
                _ => return Ok(Readiness::Closed),
            };
            if s.closed {
                return Ok(Readiness::Closed);
            }
            let d = s.dir(dir);
            // A poll-style waiter (id `POLL_OP`) holds no operation open: it may have been
            // abandoned by a dropped future, so a real operation takes its place (and wakes it, in
            // case it is still live, so that it polls again and finds the direction busy).
            if op_id != POLL_OP && evicted.0.is_none() && matches!(d.waiter, Some((POLL_OP, _))) {
                evicted.0 = d.waiter.take().map(|(_, w)| w);
            }
            match &mut d.waiter {
                Some((id, _)) if *id != op_id => return Ok(Readiness::Busy),
                Some((_, w)) => {
                    if d.ready {
                        _finished = d.waiter.take();
                        return Ok(Readiness::Ready);
                    }
                    let refreshed = match cloned.take() {
                        Some(fresh) => Ok(w.replace(fresh)),
                        None => core.try_refresh_wakeup(w, waker),
                    };
                    // `Err(NeedsClone)`: a foreign waker to clone, below.
                    if let Ok(old) = refreshed {
                        _replaced = old;
                        break None;
                    }
                }
                None => {
                    if d.ready {
                        return Ok(Readiness::Ready);
                    }
                    if let Some(w) = cloned.take().or_else(|| core.task_wakeup(waker)) {
                        d.waiter = Some((op_id, w));
                        // Oneshot: arm it (back into the poller if it was detached).
                        break (!self.edge).then(|| std::mem::replace(&mut s.detached, false));
                    }
                }
            }
            drop(sources);
            cloned = Some(core.wakeup(waker));
        };
        match rearm {
            Some(false) => {
                // SAFETY: `fd` is the source's registered descriptor (the caller's
                // `Registration::fd`), open until that `Registration` is dropped (the invariant).
                let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
                self.shared.poller.modify(fd, self.interest(key))?
            }
            Some(true) => {
                // SAFETY: `fd` is the source's registered descriptor, open until its
                // `Registration` is dropped (the invariant), and that drop deletes it from the
                // poller first: the contract of `Poller::add`, as at registration. It was
                // deleted when detached, so it is not registered twice.
                let added =
                    unsafe { self.shared.poller.add_with_mode(fd, self.interest(key), PollMode::Oneshot) };
                if let Err(e) = added {
                    // Still out of the poller: the next wait must add it again, not modify it.
                    if let Some(s) =
                        self.sources.borrow_mut().get_mut(index).filter(|s| same_source(s, generation))
                    {
                        s.detached = true;
                    }
                    return Err(e);
                }
            }
            None => {}
        }
        Ok(Readiness::Pending)
    }

    /// Whether an operation should try its syscall before waiting. In edge mode the `ready`
    /// bit is exact (an edge is reported for every new arrival after it was cleared), so a clear
    /// bit means the syscall would fail with `WouldBlock`: skip it. In oneshot mode the bit
    /// only says what the last event said, so try.
    pub(crate) fn should_try(&self, key: usize, dir: Dir) -> bool {
        if !self.edge {
            return true;
        }
        let (index, generation) = unpack(key);
        let sources = self.sources.borrow();
        match sources.get(index).filter(|s| same_source(s, generation)) {
            Some(s) => (if dir == Dir::Read { &s.read } else { &s.write }).ready || s.closed,
            None => true,
        }
    }

    /// Whether `notify_closing` was called for the source (or it is gone).
    pub(crate) fn is_closed(&self, key: usize) -> bool {
        let (index, generation) = unpack(key);
        let sources = self.sources.borrow();
        sources.get(index).filter(|s| same_source(s, generation)).is_none_or(|s| s.closed)
    }

    /// The operation `op_id` stops waiting (completed, cancelled or dropped).
    pub(crate) fn forget_waiter(&self, key: usize, dir: Dir, op_id: u64) {
        let (index, generation) = unpack(key);
        // Dropped after the borrow below ends: a waker's destructor may be foreign code.
        let _forgotten = {
            let mut sources = self.sources.borrow_mut();
            match sources.get_mut(index).filter(|s| same_source(s, generation)) {
                Some(s) => {
                    let d = s.dir(dir);
                    if matches!(d.waiter, Some((id, _)) if id == op_id) { d.waiter.take() } else { None }
                }
                None => None,
            }
        };
    }

    /// The task's syscall says the direction is not ready any more. `would_block`: it failed
    /// with `WouldBlock`, which also proves the direction is not at its end (an end would have
    /// been reported instead). Otherwise it moved less than asked (a short read or write): the
    /// direction is drained, unless its end was reported (the next syscall reports it) or the
    /// last event could not have said so (`DirState::inexact`).
    pub(crate) fn clear_ready(&self, key: usize, dir: Dir, would_block: bool) {
        let (index, generation) = unpack(key);
        let mut sources = self.sources.borrow_mut();
        if let Some(s) = sources.get_mut(index).filter(|s| same_source(s, generation)) {
            let d = s.dir(dir);
            if would_block {
                (d.ready, d.hup, d.inexact) = (false, false, false);
            } else if !d.inexact {
                d.ready = d.hup;
            }
        }
    }

    /// Marks the source closed and returns the wake-ups of its waiters (to wake outside).
    pub(crate) fn notify_closing(&self, key: usize) -> Vec<Wakeup> {
        let (index, generation) = unpack(key);
        let mut sources = self.sources.borrow_mut();
        let mut out = Vec::new();
        if let Some(s) = sources.get_mut(index).filter(|s| same_source(s, generation)) {
            s.closed = true;
            out.extend(s.read.waiter.take().map(|(_, w)| w));
            out.extend(s.write.waiter.take().map(|(_, w)| w));
        }
        out
    }

    /// Waits for I/O events (at most `timeout`) and returns the wake-ups of the tasks they
    /// concern.
    pub(crate) fn wait(&self, timeout: Option<Duration>, wakers: &mut Vec<Wakeup>) -> io::Result<()> {
        // Sources were registered with epoll directly (`direct_add`), so wait there too.
        #[cfg(all(any(target_os = "linux", target_os = "android"), not(polling_test_poll_backend)))]
        return self.wait_epoll(timeout, wakers);
        #[cfg(not(all(any(target_os = "linux", target_os = "android"), not(polling_test_poll_backend))))]
        self.wait_polling(timeout, wakers)
    }

    /// The portable wait, through `Poller::wait`. Used on every platform but Linux, and on
    /// Linux when built with `--cfg polling_test_poll_backend` (CI runs the suite that way too).
    fn wait_polling(&self, timeout: Option<Duration>, wakers: &mut Vec<Wakeup>) -> io::Result<()> {
        let mut events = self.events.borrow_mut();
        events.clear();
        // A wake-up from another thread can be missed by this backend (see the EAGAIN case
        // below; a run waiting for a thread job was seen to hang about once in eight test runs),
        // so it never sleeps longer than `POLL_BACKEND_MAX_WAIT`: a missed wake-up costs that
        // much latency instead of a hang. The Linux epoll path does not need this.
        let timeout = Some(timeout.map_or(POLL_BACKEND_MAX_WAIT, |t| t.min(POLL_BACKEND_MAX_WAIT)));
        match self.shared.poller.wait(&mut events, timeout) {
            Ok(_) => {}
            // polling's poll(2) backend: `notify` sets its flag before it writes the pipe, so a
            // `wait` that sees the flag can read the pipe first and fail with EAGAIN. That is a
            // wake-up (the byte arrives later and is drained by a later wait), not an error; it
            // crashed a run with a thread job once in CI.
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {}
            Err(e) => return Err(e),
        }
        let mut rearm = Vec::new();
        for ev in events.iter() {
            // Only the direct epoll path learns of a half close (EPOLLRDHUP); here a hang-up
            // or an error ends both directions.
            let end = ev.is_interrupt() || ev.is_err() == Some(true);
            self.deliver(ev.key, (ev.readable, ev.writable), (end, end), false, wakers, &mut rearm);
        }
        drop(events);
        self.rearm(rearm)
    }

    /// The Linux wait: one `epoll_wait` on the poller's own epoll descriptor.
    ///
    /// `Poller::wait` costs five syscalls on Linux (arm its timerfd, re-register it, wait, drain
    /// its eventfd, re-register that), which would triple the cost of an echo round trip
    /// (performance.md's target is 2.05 syscalls). Sources are registered through `polling` in
    /// edge mode with the key as epoll data, so the events can be read directly; the readiness
    /// flags are decoded as polling decodes them. The notifier (polling's reserved key) is the
    /// exception: when it fires, `Poller::wait` with a zero timeout runs once to drain and re-arm
    /// it and reset polling's coalescing flag, and its events are delivered too. The timerfd is
    /// never armed on this path (timeouts go to `epoll_wait` itself).
    #[cfg(all(any(target_os = "linux", target_os = "android"), not(polling_test_poll_backend)))]
    fn wait_epoll(&self, timeout: Option<Duration>, wakers: &mut Vec<Wakeup>) -> io::Result<()> {
        use rustix::event::{Timespec, epoll};
        let mut raw = self.raw_events.borrow_mut();
        raw.clear();
        let ts = timeout.map(|t| Timespec {
            tv_sec: t.as_secs().try_into().unwrap_or(i64::MAX),
            tv_nsec: t.subsec_nanos().into(),
        });
        match epoll::wait(self.shared.poller.as_fd(), rustix::buffer::spare_capacity(&mut raw), ts.as_ref()) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        use epoll::EventFlags as F;
        let read_flags = F::IN | F::RDHUP | F::HUP | F::ERR | F::PRI;
        let write_flags = F::OUT | F::HUP | F::ERR;
        let mut notified = false;
        let mut rearm = Vec::new();
        for ev in raw.iter() {
            let (flags, key) = (ev.flags, ev.data.u64() as usize);
            if key == usize::MAX {
                notified = true;
                continue;
            }
            let ready = (flags.intersects(read_flags), flags.intersects(write_flags));
            let hup = (flags.intersects(F::RDHUP | F::HUP | F::ERR), flags.intersects(F::HUP | F::ERR));
            self.deliver(key, ready, hup, true, wakers, &mut rearm);
        }
        drop(raw);
        if notified {
            self.wait_polling(Some(Duration::ZERO), wakers)?;
        }
        self.rearm(rearm)
    }

    /// Records one event for `key` and collects the wake-ups it concerns.
    fn deliver(
        &self,
        key: usize,
        (readable, writable): (bool, bool),
        (read_hup, write_hup): (bool, bool),
        exact: bool,
        wakers: &mut Vec<Wakeup>,
        rearm: &mut Vec<(std::os::fd::RawFd, usize, bool)>,
    ) {
        let (index, generation) = unpack(key);
        let mut sources = self.sources.borrow_mut();
        let Some(s) = sources.get_mut(index).filter(|s| same_source(s, generation)) else { return };
        s.read.hup |= read_hup;
        s.write.hup |= write_hup;
        // An epoll event carries every condition of the descriptor, so an exact one tells both
        // directions everything.
        s.read.inexact = !exact;
        s.write.inexact = !exact;
        // An error or hang-up is reported as readable and writable; either way the next syscall
        // will report it.
        if readable {
            s.read.ready = true;
            wakers.extend(s.read.waiter.take().map(|(_, w)| w));
        }
        if writable {
            s.write.ready = true;
            wakers.extend(s.write.waiter.take().map(|(_, w)| w));
        }
        // In oneshot mode any event disarms the whole registration: re-arm the direction that
        // still has a waiter (a reader must not lose its interest to a writer's event). A
        // hang-up or error that nobody waits for detaches the source (see `Source::detached`).
        if !self.edge {
            if s.read.waiter.is_some() || s.write.waiter.is_some() {
                rearm.push((s.fd, key, false));
            } else if read_hup || write_hup {
                s.detached = true;
                rearm.push((s.fd, key, true));
            }
        }
    }

    /// Re-arms (or, `true`, detaches) the sources an event disarmed.
    fn rearm(&self, rearm: Vec<(std::os::fd::RawFd, usize, bool)>) -> io::Result<()> {
        for (fd, key, detach) in rearm {
            // SAFETY: the source is still registered (we hold no borrow that could have removed
            // it, and only a `Registration` drop removes it), so by the `Registration` invariant
            // its descriptor is open.
            let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
            if detach {
                self.shared.poller.delete(fd)?;
            } else {
                self.shared.poller.modify(fd, self.interest(key))?;
            }
        }
        Ok(())
    }

    fn alloc_generation(&self) -> u32 {
        let mut g = self.next_generation.get().wrapping_add(1);
        if g == ANY_GENERATION {
            g = 0;
        }
        self.next_generation.set(g);
        g
    }
}

/// A file descriptor registered with the reactor.
///
/// # Invariant
///
/// From construction until `Drop`, `fd` is open and registered under `key`; `Drop` deletes the
/// registration. The owner must keep the descriptor open until this value is dropped, which
/// [`Registration::new`]'s safety contract states and `IoSource` guarantees by field order.
#[derive(Debug)]
pub(crate) struct Registration {
    pub(crate) key: usize,
    fd: std::os::fd::RawFd,
    core: std::rc::Rc<super::context::Core>,
}

impl Registration {
    /// Registers `fd` with the reactor of the current run.
    ///
    /// # Safety
    ///
    /// `fd` must stay open until the returned `Registration` is dropped.
    pub(crate) unsafe fn new(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<Registration> {
        use std::os::fd::AsRawFd;
        let core = super::context::core();
        let r = &core.reactor;
        let generation = r.alloc_generation();
        let index = r.sources.borrow_mut().insert(Source {
            fd: fd.as_raw_fd(),
            generation,
            read: DirState::default(),
            write: DirState::default(),
            closed: false,
            detached: false,
        });
        let key = pack(index, generation);
        let res = if DIRECT_EPOLL {
            direct_add(r, fd, key)
        } else if r.edge {
            // SAFETY: the caller keeps `fd` open until the Registration is dropped, and Drop
            // deletes it from the poller first; that is exactly `Poller::add`'s contract.
            unsafe { r.shared.poller.add_with_mode(fd.as_raw_fd(), Event::all(key), PollMode::Edge) }
        } else {
            // SAFETY: as above.
            unsafe { r.shared.poller.add_with_mode(fd.as_raw_fd(), Event::none(key), PollMode::Oneshot) }
        };
        if let Err(e) = res {
            r.sources.borrow_mut().remove(index);
            return Err(e);
        }
        Ok(Registration { key, fd: fd.as_raw_fd(), core })
    }

    pub(crate) fn reactor(&self) -> &Reactor {
        &self.core.reactor
    }

    /// The run this source is registered in.
    pub(crate) fn core(&self) -> &super::context::Core {
        &self.core
    }

    /// [`Reactor::poll_ready`] for this source (its registered descriptor).
    pub(crate) fn poll_ready(&self, dir: Dir, op_id: u64, waker: &Waker) -> io::Result<Readiness> {
        self.core.reactor.poll_ready(&self.core, self.key, dir, op_id, waker, self.fd)
    }

    /// Marks the source closed and wakes its waiters (through the run on this thread, as in
    /// `drop`).
    pub(crate) fn notify_closing(&self) {
        wake_all(self.core.reactor.notify_closing(self.key));
    }

    /// The run this registration belongs to.
    pub(crate) fn run_id(&self) -> u64 {
        self.core.id
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let wakers = self.core.reactor.notify_closing(self.key);
        // Woken through the run on this thread (not `self.core`): a source that outlives its
        // run wakes nothing in the ended run.
        let (index, _) = unpack(self.key);
        // SAFETY: the invariant says `fd` is still open here (the owner drops the descriptor
        // only after this Registration).
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(self.fd) };
        // Deleting fails only if the descriptor is not registered: a detached source (oneshot
        // mode, `Source::detached`), which needs nothing more.
        let _ = if DIRECT_EPOLL {
            direct_delete(&self.core.reactor, fd)
        } else {
            self.core.shared.poller.delete(fd)
        };
        self.core.reactor.sources.borrow_mut().remove(index);
        wake_all(wakers);
    }
}

/// Wakes every waiter of a closed source, even if a foreign waker's wake panics (the first
/// panic goes on after): the other direction's waiter must not sleep on.
fn wake_all(wakers: Vec<Wakeup>) {
    crate::panics::FirstPanic::each(wakers, Wakeup::wake);
}

/// A non-blocking file descriptor registered with the run's reactor.
///
/// Owns the I/O object `T`. On drop it leaves the reactor first (waking any waiter with
/// [`ClosedResource`](crate::ClosedResource)) and only then drops `T`, which is the order `polling` requires. `T` must
/// already be in non-blocking mode.
///
/// At most one task may wait to read and one to write at a time; another gets
/// [`BusyResource`](crate::BusyResource) (as an `io::Error` of kind `ResourceBusy`).
///
/// ```
/// use std::io::{Read, Write};
/// use std::os::unix::net::UnixStream;
/// use hatchery::lowlevel::IoSource;
///
/// hatchery::run(async {
///     let (a, mut b) = UnixStream::pair()?;
///     a.set_nonblocking(true)?;
///     let a = IoSource::new(a)?;
///     b.write_all(b"hi")?;
///     let mut buf = [0; 2];
///     let n = a.read_with(|s| (&*s).read(&mut buf)).await?;
///     assert_eq!(&buf[..n], b"hi");
///     Ok::<_, std::io::Error>(())
/// }).unwrap();
/// ```
#[derive(Debug)]
pub struct IoSource<T: AsFd> {
    // Field order matters: the registration is dropped (and leaves the poller) before `io`.
    pub(crate) reg: Registration,
    io: Option<T>,
}

impl<T: AsFd + 'static> IoSource<T> {
    /// Registers `io` with the current run's reactor.
    ///
    /// `T` is `'static` so that it owns its descriptor (or borrows one that is never closed):
    /// a borrowed descriptor could be closed by its owner while the registration lives, if the
    /// `IoSource` were leaked.
    ///
    /// ```compile_fail
    /// # use std::os::unix::net::UnixStream;
    /// let (a, _b) = UnixStream::pair().unwrap();
    /// hatchery::run(async {
    ///     let _src = hatchery::lowlevel::IoSource::new(&a); // error: `a` does not live long enough
    /// });
    /// ```
    ///
    /// # Errors
    ///
    /// What the poller reports (for example a descriptor type epoll does not support).
    ///
    /// # Panics
    ///
    /// Outside a run.
    pub fn new(io: T) -> io::Result<IoSource<T>> {
        // SAFETY: `io` is stored in this IoSource next to the registration and is only dropped
        // after it (field order, and `into_inner` drops the registration first). `T: 'static`
        // owns the descriptor or borrows one that lives for the rest of the program, so nothing
        // else can close it first; if the IoSource is leaked, `io` leaks with the registration
        // and the descriptor stays open. Either way it is open while registered.
        let reg = unsafe { Registration::new(io.as_fd())? };
        Ok(IoSource { reg, io: Some(io) })
    }
}

impl<T: AsFd> IoSource<T> {
    /// The I/O object.
    pub fn get_ref(&self) -> &T {
        self.io.as_ref().expect("IoSource holds its I/O object until into_inner")
    }

    /// Leaves the reactor and returns the I/O object.
    pub fn into_inner(mut self) -> T {
        let io = self.io.take().expect("IoSource holds its I/O object until into_inner");
        drop(self);
        io
    }
}
