//! Trio's generic stream checks (`testing/_check_streams.py`, S9.1–S9.3), written once over a
//! small trait and run against three kinds of connected pairs: TCP over 127.0.0.1, Unix socket
//! pairs and in-memory streams. Each check is a test per kind (`tcp::round_trip`,
//! `unix::round_trip`, `memory::round_trip`, ...).

mod support;

use std::cell::{Cell, RefCell};
use std::io;
use std::net::Shutdown;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use futures_io::{AsyncRead, AsyncWrite};

use hatchery::io::{BufReader, BufWriter};
use hatchery::net::{TcpStream, UnixStream};
use hatchery::testing::{
    MemoryStream, assert_checkpoints, memory_stream_pair, registrations, wait_all_tasks_blocked,
};
use hatchery::{
    BusyResource, Cancelled, ClosedResource, Instant, WriteAllError, move_on_after, now, nursery,
};
use std::pin::pin;
use support::{cancelled_scope, is, poll_once, poll_once_foreign, tcp_pair};

/// The stream API the checks use: what `TcpStream`, `UnixStream` and `MemoryStream` share.
trait TestStream {
    async fn read(&self, buf: &mut [u8]) -> io::Result<usize>;
    async fn write(&self, buf: &[u8]) -> io::Result<usize>;
    async fn write_all(&self, buf: &[u8]) -> Result<(), WriteAllError>;
    async fn shutdown(&self, how: Shutdown) -> io::Result<()>;
    async fn readable(&self) -> io::Result<()>;
    async fn writable(&self) -> io::Result<()>;
    fn close(&self);
    fn is_closed(&self) -> bool;
}

macro_rules! impl_test_stream {
    ($($t:ty),*) => {$(
        impl TestStream for $t {
            async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
                <$t>::read(self, buf).await
            }
            async fn write(&self, buf: &[u8]) -> io::Result<usize> {
                <$t>::write(self, buf).await
            }
            async fn write_all(&self, buf: &[u8]) -> Result<(), WriteAllError> {
                <$t>::write_all(self, buf).await
            }
            async fn shutdown(&self, how: Shutdown) -> io::Result<()> {
                <$t>::shutdown(self, how).await
            }
            async fn readable(&self) -> io::Result<()> {
                <$t>::readable(self).await
            }
            async fn writable(&self) -> io::Result<()> {
                <$t>::writable(self).await
            }
            fn close(&self) {
                <$t>::close(self)
            }
            fn is_closed(&self) -> bool {
                <$t>::is_closed(self)
            }
        }
    )*};
}

impl_test_stream!(TcpStream, UnixStream, MemoryStream);

async fn unix_pair() -> io::Result<(UnixStream, UnixStream)> {
    UnixStream::pair()
}

async fn memory_pair() -> io::Result<(MemoryStream, MemoryStream)> {
    Ok(memory_stream_pair())
}

/// Runs one check on a fresh pair, on the virtual clock. The clock jumps only after 1 s of
/// real idleness (`support::sockets_builder`), so that data in flight on loopback is never
/// overtaken by a jump; the virtual-hour watchdog then turns a check that hangs into a failure
/// within about a second. (Not one that livelocks: a run that is never idle never
/// jumps. See `second_op`.)
///
/// `yield_budget` is the run's [`hatchery::Builder::yield_budget`]: the checks that drop a
/// future at its schedule point run with 0, so that every schedule point yields.
fn run_check<S, M, C>(make: M, check: C, yield_budget: u32)
where
    M: AsyncFnOnce() -> io::Result<(S, S)>,
    C: AsyncFnOnce(S, S) -> io::Result<()>,
{
    support::sockets_builder()
        .yield_budget(yield_budget)
        .run(support::watchdog(async {
            let (a, b) = make().await?;
            check(a, b).await
        }))
        .unwrap();
}

macro_rules! suite {
    ($kind:ident, $make:ident, [$($check:ident),* $(,)?], [$($strict:ident),* $(,)?]) => {
        mod $kind {
            $(
                #[test]
                fn $check() {
                    super::run_check(super::$make, super::checks::$check, hatchery::DEFAULT_YIELD_BUDGET);
                }
            )*
            $(
                #[test]
                fn $strict() {
                    super::run_check(super::$make, super::checks::$strict, 0);
                }
            )*
        }
    };
}

macro_rules! all_suites {
    ([$($check:ident),* $(,)?], strict: [$($strict:ident),* $(,)?]) => {
        suite!(tcp, tcp_pair, [$($check),*], [$($strict),*]);
        suite!(unix, unix_pair, [$($check),*], [$($strict),*]);
        suite!(memory, memory_pair, [$($check),*], [$($strict),*]);
    };
}

all_suites!([
    round_trip,
    empty_read_is_invalid_input,
    every_operation_is_a_checkpoint,
    empty_write_is_a_checkpoint_and_fails_once_closed,
    a_cancelled_scope_stops_operations_before_they_act,
    second_reader_is_busy,
    second_writer_is_busy,
    close_wakes_blocked_reader_and_writer,
    closed_stream_rejects_everything_and_peer_sees_eof,
    half_close,
    shutdown_write_is_idempotent_and_later_writes_are_closed,
    cancelled_read_loses_nothing,
    cancelled_write_all_reports_a_count_and_the_stream_stays_usable,
    peer_dropped,
    readable_and_writable,
    buf_reader_lines_and_exact_reads,
    buf_reader_cancelled_read_exact_keeps_its_bytes,
    buf_writer_flush_and_close,
    poll_style_readers_in_two_tasks_the_second_is_busy,
    poll_style_writers_in_two_tasks_the_second_is_busy,
    a_poll_style_read_dropped_while_waiting_makes_no_one_busy,
    after_a_contest_the_busy_reader_reads_once_the_other_is_gone,
    a_cancelled_poll_style_read_wakes_the_one_it_replaced,
    a_new_waker_replaces_the_old_one,
    a_poll_style_waiter_gives_way_to_an_async_read,
    a_poll_style_read_loop_over_a_ready_stream_yields_and_is_cancelled,
], strict: [
    a_read_or_write_dropped_at_its_schedule_point_did_nothing,
]);

fn at_ms(ms: u64) -> Instant {
    Instant::ZERO + Duration::from_millis(ms)
}

/// Reads exactly `n` bytes with plain reads.
async fn read_n<S: TestStream>(s: &S, n: usize) -> io::Result<Vec<u8>> {
    let mut out = vec![0; n];
    let mut got = 0;
    while got < n {
        let k = s.read(&mut out[got..]).await?;
        assert!(k > 0, "unexpected end of stream after {got} of {n} bytes");
        got += k;
    }
    Ok(out)
}

/// Reads to end of stream.
async fn read_to_eof<S: TestStream>(s: &S) -> io::Result<Vec<u8>> {
    let mut all = Vec::new();
    let mut buf = vec![0; 65536];
    loop {
        let k = s.read(&mut buf).await?;
        if k == 0 {
            return Ok(all);
        }
        all.extend_from_slice(&buf[..k]);
    }
}

/// Data with a recognisable order.
fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

/// More than any of the three kinds buffers when nobody reads (socket buffers on loopback stay
/// at a few MiB without reads).
const CLOG: usize = 32 << 20;

/// Polls `op`, started while another task waits in the same direction, once and returns its
/// output: it must fail at once (with `BusyResource`), before it could park. Awaiting it instead
/// would hang if the busy guard were broken: the two operations would take turns displacing each
/// other's waker from the direction's one slot (the displaced one is woken), so the run would
/// never be idle, the clock would never jump, and no deadline on the virtual clock, the
/// watchdog's included, would ever pass.
async fn second_op<F: Future>(op: F, what: &str) -> F::Output {
    match poll_once(pin!(op)).await {
        Poll::Ready(out) => out,
        Poll::Pending => panic!(
            "{what}, started while another task waits in the same direction, must fail at once \
             with BusyResource, but it waited: the busy guard is broken"
        ),
    }
}

/// Writes until the stream's buffers are full and the writer is blocked; returns when another
/// task stops it, with the error that stopped it and the number of bytes written.
async fn write_forever<S: TestStream>(s: &S) -> (usize, io::Error) {
    let chunk = pattern(65536);
    let mut total = 0;
    loop {
        match s.write_all(&chunk).await {
            Ok(()) => total += chunk.len(),
            Err(e) => return (total + e.written, e.error),
        }
    }
}

/// The most polls a [`Driver`] allows one operation: far more than any check needs, so that a
/// livelock (two wakers that displace and wake each other, a run that is never idle, so that
/// neither the clock nor the watchdog ever moves) fails the check instead of hanging it.
const POLL_LIMIT: u32 = 50;

/// A waker that logs its `id` when woken, then wakes `inner`: given a fresh one on every poll,
/// an operation sees what a combinator that wraps the task's waker (`futures-io` adapters, TLS
/// and WebSocket layers) shows it, the same task with a new waker each time.
struct Tagged {
    inner: Waker,
    id: u32,
    log: Arc<Mutex<Vec<u32>>>,
}

impl Wake for Tagged {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.log.lock().unwrap().push(self.id);
        self.inner.wake_by_ref();
    }
}

/// Polls one operation by hand, at most [`POLL_LIMIT`] times, counting the polls, keeping the
/// task's waker (so that the check can wake the task itself, as another branch of a `select`
/// would) and, in `fresh` mode, passing a new [`Tagged`] waker, numbered by the poll, each time.
#[derive(Default)]
struct Driver {
    polls: Cell<u32>,
    task: RefCell<Option<Waker>>,
    woken: Arc<Mutex<Vec<u32>>>,
}

impl Driver {
    async fn drive<T>(
        &self,
        fresh: bool,
        mut poll: impl FnMut(&mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> io::Result<T> {
        std::future::poll_fn(|cx| {
            let n = self.polls.get() + 1;
            self.polls.set(n);
            if n > POLL_LIMIT {
                return Poll::Ready(Err(io::Error::other(format!(
                    "polled {n} times without completing: a livelock"
                ))));
            }
            *self.task.borrow_mut() = Some(cx.waker().clone());
            if fresh {
                let w = Waker::from(Arc::new(Tagged {
                    inner: cx.waker().clone(),
                    id: n,
                    log: self.woken.clone(),
                }));
                poll(&mut Context::from_waker(&w))
            } else {
                poll(cx)
            }
        })
        .await
    }

    fn polls(&self) -> u32 {
        self.polls.get()
    }

    /// Wakes the task, not through the operation.
    fn kick(&self) {
        self.task.borrow().as_ref().expect("polled at least once").wake_by_ref();
    }

    /// The ids of the [`Tagged`] wakers woken so far, in order.
    fn woken(&self) -> Vec<u32> {
        self.woken.lock().unwrap().clone()
    }
}

/// A poll-style read of `s` into `buf`, as a future.
fn poll_read<'a, S>(s: &'a S, buf: &'a mut [u8]) -> impl Future<Output = io::Result<usize>> + Unpin + 'a
where
    &'a S: AsyncRead,
{
    let mut s = s;
    std::future::poll_fn(move |cx| Pin::new(&mut s).poll_read(cx, buf))
}

mod checks {
    use super::*;

    pub(super) async fn round_trip<S: TestStream>(a: S, b: S) -> io::Result<()> {
        a.write_all(b"hello").await?;
        assert_eq!(read_n(&b, 5).await?, b"hello");
        b.write_all(b"world!").await?;
        assert_eq!(read_n(&a, 6).await?, b"world!");
        // A megabyte each way at once: more than the buffers hold, so both sides wait in turn.
        let data = pattern(1 << 20);
        nursery(async |n| {
            let ab = n.spawn(async {
                a.write_all(&data).await?;
                a.shutdown(Shutdown::Write).await?;
                Ok(())
            });
            let ba = n.spawn(async {
                b.write_all(&data).await?;
                b.shutdown(Shutdown::Write).await?;
                Ok(())
            });
            let (got_b, got_a) = (read_to_eof(&b).await?, read_to_eof(&a).await?);
            ab.await?;
            ba.await?;
            assert!(got_b == data && got_a == data, "every byte, in order, both ways");
            Ok::<_, io::Error>(())
        })
        .await
        .map_err(|e| e.into_first())?;
        Ok(())
    }

    pub(super) async fn empty_read_is_invalid_input<S: TestStream>(a: S, _b: S) -> io::Result<()> {
        let e = a.read(&mut []).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        Ok(())
    }

    pub(super) async fn every_operation_is_a_checkpoint<S: TestStream>(a: S, b: S) -> io::Result<()> {
        assert_eq!(assert_checkpoints(a.write(b"abc")).await?, 3);
        assert_checkpoints(a.write_all(b"def")).await.unwrap();
        b.readable().await?;
        assert_checkpoints(b.readable()).await?;
        assert_eq!(assert_checkpoints(read_n(&b, 6)).await?, b"abcdef");
        assert_checkpoints(a.writable()).await?;
        assert_checkpoints(a.shutdown(Shutdown::Write)).await?;
        assert_checkpoints(a.shutdown(Shutdown::Write)).await?;
        let mut buf = [0; 4];
        assert_eq!(assert_checkpoints(b.read(&mut buf)).await?, 0, "end of stream");
        Ok(())
    }

    pub(super) async fn empty_write_is_a_checkpoint_and_fails_once_closed<S: TestStream>(
        a: S,
        _b: S,
    ) -> io::Result<()> {
        assert_eq!(assert_checkpoints(a.write(b"")).await?, 0);
        assert_checkpoints(a.write_all(b"")).await.unwrap();
        let r = cancelled_scope().run(async { a.write_all(b"").await }).await;
        assert!(matches!(r, Ok(None)), "an empty write_all is a cancel point: {r:?}");
        a.close();
        let e = a.write(b"").await.unwrap_err();
        assert!(is::<ClosedResource>(&e), "{e:?}");
        let e = a.write_all(b"").await.unwrap_err();
        assert!(is::<ClosedResource>(&e.error), "{e:?}");
        assert_eq!(e.written, 0);
        Ok(())
    }

    pub(super) async fn a_cancelled_scope_stops_operations_before_they_act<S: TestStream>(
        a: S,
        b: S,
    ) -> io::Result<()> {
        // A write in a cancelled scope writes nothing, even with room to spare.
        let r = cancelled_scope()
            .run(async {
                let e = a.write_all(b"lost").await.unwrap_err();
                assert_eq!(e.written, 0);
                Err::<(), _>(e)
            })
            .await;
        assert!(matches!(r, Ok(None)), "{r:?}");
        let r = cancelled_scope().run(async { a.write(b"lost").await }).await;
        assert!(matches!(r, Ok(None)), "{r:?}");
        a.write_all(b"kept").await?;
        b.readable().await?;
        // A read in a cancelled scope reads nothing, even with data waiting.
        let mut buf = [0; 16];
        let r = cancelled_scope().run(async { b.read(&mut buf).await }).await;
        assert!(matches!(r, Ok(None)), "{r:?}");
        let r = cancelled_scope().run(async { a.shutdown(Shutdown::Write).await }).await;
        assert!(matches!(r, Ok(None)), "{r:?}");
        // Neither the shutdown nor the writes happened.
        a.write_all(b"!").await?;
        assert_eq!(read_n(&b, 5).await?, b"kept!");
        Ok(())
    }

    pub(super) async fn second_reader_is_busy<S: TestStream>(a: S, b: S) -> io::Result<()> {
        nursery(async |n| {
            let first = n.spawn(async { read_n(&a, 3).await });
            wait_all_tasks_blocked().await?;
            let mut buf = [0; 4];
            let e = second_op(a.read(&mut buf), "a second read").await.unwrap_err();
            assert!(is::<BusyResource>(&e), "{e:?}");
            let e = second_op(a.readable(), "readable").await.unwrap_err();
            assert!(is::<BusyResource>(&e), "{e:?}");
            // The first reader is undisturbed.
            b.write_all(b"xyz").await?;
            assert_eq!(first.await?, b"xyz");
            Ok::<_, io::Error>(())
        })
        .await
        .map_err(|e| e.into_first())?;
        Ok(())
    }

    pub(super) async fn second_writer_is_busy<S: TestStream>(a: S, _b: S) -> io::Result<()> {
        nursery(async |n| {
            let first = n.spawn(async { Ok(write_forever(&a).await) });
            wait_all_tasks_blocked().await?;
            let e = second_op(a.write_all(b"second"), "a second write_all").await.unwrap_err();
            assert!(is::<BusyResource>(&e.error), "{e:?}");
            assert_eq!(e.written, 0);
            let e = second_op(a.write(b"second"), "a second write").await.unwrap_err();
            assert!(is::<BusyResource>(&e), "{e:?}");
            let e = second_op(a.writable(), "writable").await.unwrap_err();
            assert!(is::<BusyResource>(&e), "{e:?}");
            let e = second_op(a.shutdown(Shutdown::Write), "shutdown(Write)").await.unwrap_err();
            assert!(is::<BusyResource>(&e), "{e:?}");
            a.close();
            let (written, e) = first.await?;
            assert!(is::<ClosedResource>(&e), "{e:?}");
            assert!(written > 0);
            Ok::<_, io::Error>(())
        })
        .await
        .map_err(|e| e.into_first())?;
        Ok(())
    }

    pub(super) async fn close_wakes_blocked_reader_and_writer<S: TestStream>(a: S, b: S) -> io::Result<()> {
        nursery(async |n| {
            let reader = n.spawn(async {
                let mut buf = [0; 8];
                Ok(a.read(&mut buf).await)
            });
            let writer = n.spawn(async { Ok(write_forever(&a).await) });
            wait_all_tasks_blocked().await?;
            assert!(!a.is_closed());
            a.close();
            assert!(a.is_closed());
            let e = reader.await?.unwrap_err();
            assert!(is::<ClosedResource>(&e), "{e:?}");
            let (_, e) = writer.await?;
            assert!(is::<ClosedResource>(&e), "{e:?}");
            // The peer sees the end of the stream after what was written.
            let got = read_to_eof(&b).await?;
            assert!(got.iter().enumerate().all(|(i, &x)| x == (i % 65536 % 251) as u8));
            Ok::<_, io::Error>(())
        })
        .await
        .map_err(|e| e.into_first())?;
        Ok(())
    }

    pub(super) async fn closed_stream_rejects_everything_and_peer_sees_eof<S: TestStream>(
        a: S,
        b: S,
    ) -> io::Result<()> {
        a.write_all(b"last words").await?;
        a.close();
        a.close(); // idempotent
        let mut buf = [0; 4];
        let closed = |e: &io::Error| assert!(is::<ClosedResource>(e), "{e:?}");
        closed(&a.read(&mut buf).await.unwrap_err());
        closed(&a.write(b"x").await.unwrap_err());
        closed(&a.write_all(b"x").await.unwrap_err().error);
        closed(&a.shutdown(Shutdown::Write).await.unwrap_err());
        closed(&a.readable().await.unwrap_err());
        closed(&a.writable().await.unwrap_err());
        assert_eq!(read_to_eof(&b).await?, b"last words");
        assert_eq!(b.read(&mut buf).await?, 0, "end of stream stays");
        Ok(())
    }

    pub(super) async fn half_close<S: TestStream>(a: S, b: S) -> io::Result<()> {
        a.write_all(b"before eof").await?;
        a.shutdown(Shutdown::Write).await?;
        assert_eq!(read_to_eof(&b).await?, b"before eof");
        let mut buf = [0; 8];
        assert_eq!(b.read(&mut buf).await?, 0, "end of stream, again");
        // The other direction still works, both ways round.
        b.write_all(b"reply").await?;
        assert_eq!(read_n(&a, 5).await?, b"reply");
        b.shutdown(Shutdown::Write).await?;
        assert_eq!(a.read(&mut buf).await?, 0);
        Ok(())
    }

    pub(super) async fn shutdown_write_is_idempotent_and_later_writes_are_closed<S: TestStream>(
        a: S,
        b: S,
    ) -> io::Result<()> {
        a.shutdown(Shutdown::Write).await?;
        a.shutdown(Shutdown::Write).await?;
        let e = a.write(b"x").await.unwrap_err();
        assert!(is::<ClosedResource>(&e), "{e:?}");
        let e = a.write_all(b"x").await.unwrap_err();
        assert!(is::<ClosedResource>(&e.error), "{e:?}");
        assert_eq!(e.written, 0);
        let e = a.writable().await.unwrap_err();
        assert!(is::<ClosedResource>(&e), "{e:?}");
        assert!(!a.is_closed(), "shutting down is not closing");
        let mut buf = [0; 4];
        assert_eq!(b.read(&mut buf).await?, 0);
        Ok(())
    }

    pub(super) async fn cancelled_read_loses_nothing<S: TestStream>(a: S, b: S) -> io::Result<()> {
        let mut buf = [0; 8];
        // Cancelled while parked: at the deadline, having read nothing.
        let r = move_on_after(Duration::from_secs(1), b.read(&mut buf)).await;
        assert!(matches!(r, Ok(None)), "{r:?}");
        assert_eq!(now(), at_ms(1000));
        a.write_all(b"abc").await?;
        b.readable().await?;
        // Cancelled before it runs, with data waiting: the data stays.
        let r = cancelled_scope().run(async { b.read(&mut buf).await }).await;
        assert!(matches!(r, Ok(None)), "{r:?}");
        assert_eq!(read_n(&b, 3).await?, b"abc");
        Ok(())
    }

    /// A read or write that could complete at once stops at its schedule point first; dropped
    /// there (as a `select` drops its loser), it has taken or sent nothing.
    pub(super) async fn a_read_or_write_dropped_at_its_schedule_point_did_nothing<S: TestStream>(
        a: S,
        b: S,
    ) -> io::Result<()> {
        a.write_all(b"abc").await?;
        b.readable().await?;
        let mut buf = [0; 8];
        let polled = poll_once(pin!(b.read(&mut buf))).await;
        assert!(polled.is_pending(), "the read stopped at its schedule point");
        assert_eq!(read_n(&b, 3).await?, b"abc", "the dropped read took nothing");
        a.writable().await?;
        assert!(
            poll_once(pin!(a.write(b"xyz"))).await.is_pending(),
            "the write stopped at its schedule point"
        );
        a.shutdown(Shutdown::Write).await?;
        assert_eq!(read_to_eof(&b).await?, b"", "the dropped write sent nothing");
        Ok(())
    }

    pub(super) async fn cancelled_write_all_reports_a_count_and_the_stream_stays_usable<S: TestStream>(
        a: S,
        b: S,
    ) -> io::Result<()> {
        let big = pattern(CLOG);
        let written = Cell::new(usize::MAX);
        let r = move_on_after(Duration::from_secs(1), async {
            let e = a.write_all(&big).await.unwrap_err();
            assert!(is::<Cancelled>(&e.error), "{e:?}");
            written.set(e.written);
            Err::<(), _>(e)
        })
        .await;
        assert!(matches!(r, Ok(None)), "the scope absorbed the cancellation: {r:?}");
        assert_eq!(now(), at_ms(1000));
        let written = written.get();
        assert!(written > 0 && written < big.len(), "{written}");
        // Not broken: the rest follows, and the reader gets every byte exactly once, in order.
        let got = nursery(async |n| {
            let reader = n.spawn(async { read_to_eof(&b).await });
            a.write_all(&big[written..]).await?;
            a.shutdown(Shutdown::Write).await?;
            Ok::<_, io::Error>(reader.await?)
        })
        .await
        .map_err(|e| e.into_first())?
        .unwrap();
        assert_eq!(got.len(), big.len());
        assert!(got == big, "every byte exactly once, in order");
        Ok(())
    }

    pub(super) async fn peer_dropped<S: TestStream>(a: S, b: S) -> io::Result<()> {
        drop(b);
        let mut buf = [0; 4];
        assert_eq!(a.read(&mut buf).await?, 0);
        assert_eq!(a.read(&mut buf).await?, 0);
        // Writes fail sooner or later (TCP may accept one before the reset comes back), and
        // then keep failing: the stream stays broken.
        let mut failures = 0;
        for _ in 0..10_000 {
            match a.write_all(b"anyone?").await {
                Ok(()) => assert_eq!(failures, 0, "a broken stream stays broken"),
                Err(e) => {
                    let kind = e.error.kind();
                    assert!(
                        matches!(kind, io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset),
                        "{e:?}"
                    );
                    failures += 1;
                    if failures == 3 {
                        return Ok(());
                    }
                }
            }
        }
        panic!("writes to a dropped peer never failed");
    }

    pub(super) async fn readable_and_writable<S: TestStream>(a: S, b: S) -> io::Result<()> {
        a.writable().await?;
        nursery(async |n| {
            let waiter = n.spawn(async {
                b.readable().await?;
                Ok(now())
            });
            wait_all_tasks_blocked().await?;
            assert!(!waiter.is_finished());
            hatchery::sleep(Duration::from_millis(5)).await?;
            a.write_all(b"!").await?;
            assert_eq!(waiter.await?, at_ms(5));
            Ok::<_, io::Error>(())
        })
        .await
        .map_err(|e| e.into_first())?;
        // Readable does not consume.
        assert_eq!(read_n(&b, 1).await?, b"!");
        Ok(())
    }

    pub(super) async fn buf_reader_lines_and_exact_reads<S: TestStream>(a: S, b: S) -> io::Result<()>
    where
        for<'x> &'x S: futures_io::AsyncRead + Unpin,
    {
        a.write_all(b"line one\nline two\nxyz").await?;
        a.shutdown(Shutdown::Write).await?;
        let mut r = BufReader::with_capacity(4, &b);
        let mut line = String::new();
        assert_eq!(r.read_line(&mut line).await?, 9);
        assert_eq!(line, "line one\n");
        let mut word = [0; 4];
        r.read_exact(&mut word).await?;
        assert_eq!(&word, b"line");
        line.clear();
        assert_eq!(r.read_line(&mut line).await?, 5);
        assert_eq!(line, " two\n");
        line.clear();
        assert_eq!(r.read_line(&mut line).await?, 3, "the last line has no newline");
        assert_eq!(line, "xyz");
        assert_eq!(r.read_line(&mut line).await?, 0, "end of stream");
        let e = r.read_exact(&mut word).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        Ok(())
    }

    pub(super) async fn buf_reader_cancelled_read_exact_keeps_its_bytes<S: TestStream>(
        a: S,
        b: S,
    ) -> io::Result<()>
    where
        for<'x> &'x S: futures_io::AsyncRead + Unpin,
    {
        let mut r = BufReader::new(&b);
        a.write_all(b"abc").await?;
        b.readable().await?;
        let mut five = [0; 5];
        let res = move_on_after(Duration::from_secs(1), r.read_exact(&mut five)).await;
        assert!(matches!(res, Ok(None)), "{res:?}");
        assert_eq!(now(), at_ms(1000));
        assert_eq!(five, [0; 5], "the caller's buffer is untouched");
        assert_eq!(r.buffer(), b"abc", "the partial bytes wait in the reader");
        // The same for a line.
        let mut line = String::new();
        let res = move_on_after(Duration::from_secs(1), r.read_line(&mut line)).await;
        assert!(matches!(res, Ok(None)), "{res:?}");
        assert_eq!(line, "");
        a.write_all(b"de\n").await?;
        r.read_exact(&mut five).await?;
        assert_eq!(&five, b"abcde");
        assert_eq!(r.read_line(&mut line).await?, 1);
        assert_eq!(line, "\n");
        Ok(())
    }

    pub(super) async fn buf_writer_flush_and_close<S: TestStream>(a: S, b: S) -> io::Result<()>
    where
        for<'x> &'x S: futures_io::AsyncWrite + Unpin,
    {
        let mut w = BufWriter::with_capacity(64, &a);
        w.write_all(b"one ").await?;
        w.write_all(b"two").await?;
        assert_eq!(w.buffer(), b"one two");
        w.flush().await?;
        assert!(w.buffer().is_empty());
        assert_eq!(read_n(&b, 7).await?, b"one two");
        // Larger than the buffer: written through.
        let big = pattern(1000);
        nursery(async |n| {
            let reader = n.spawn(async { read_to_eof(&b).await });
            w.write_all(b"[").await?;
            w.write_all(&big).await?;
            w.write_all(b"]").await?;
            w.close().await?;
            let got = reader.await?;
            assert_eq!(got.len(), 1002);
            assert!(got[0] == b'[' && got[1..1001] == big[..] && got[1001] == b']');
            Ok::<_, io::Error>(())
        })
        .await
        .map_err(|e| e.into_first())?;
        Ok(())
    }
    /// Two tasks poll-style read the same stream. A waker cannot say which task it wakes, so
    /// the second poll's waker replaces the first one's, which is woken once; the first poller
    /// polls again and takes the direction back, waking the second, which polls again: both are
    /// live, and the second fails with `BusyResource`. No waker is left unwoken, and no two
    /// wake each other for ever (a livelock, which `Driver`'s poll limit turns into a failure).
    /// A foreign loop that polls until `Pending` (what `futures::io::copy` does), over a stream
    /// that stays ready, gives the thread back once its turn's yield budget is spent: another
    /// task takes its turns in between, and a cancellation stops the loop. Before, the loop held
    /// the thread until the data ran out (for ever, had a peer kept the stream full), and
    /// ignored a cancelled scope.
    pub(super) async fn a_poll_style_read_loop_over_a_ready_stream_yields_and_is_cancelled<S: TestStream>(
        a: S,
        b: S,
    ) -> io::Result<()>
    where
        for<'x> &'x S: AsyncRead,
    {
        const BYTES: usize = 4096;
        const TURNS: u32 = 20;
        b.write_all(&[7u8; BYTES]).await?;
        let (turns, read) = (Cell::new(0u32), Cell::new(0usize));
        let scope = hatchery::CancelScope::new();
        let handle = scope.handle();
        let ended = nursery(async |n| {
            n.start_soon(async {
                for _ in 0..TURNS {
                    turns.set(turns.get() + 1);
                    hatchery::lowlevel::checkpoint().await?;
                }
                handle.cancel();
                Ok::<_, io::Error>(())
            });
            let looped = scope
                .run(std::future::poll_fn(|cx| {
                    let mut byte = [0u8; 1];
                    loop {
                        match Pin::new(&mut &a).poll_read(cx, &mut byte) {
                            Poll::Ready(Ok(0)) => return Poll::Ready(Ok(())),
                            Poll::Ready(Ok(k)) => read.set(read.get() + k),
                            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                            Poll::Pending => return Poll::Pending,
                        }
                    }
                }))
                .await?;
            Ok::<_, io::Error>(looped)
        })
        .await
        .map_err(|e| e.into_first())?;
        assert_eq!(ended, Some(None), "the loop ended by its cancellation");
        assert_eq!(turns.get(), TURNS);
        // At most a budget's worth of reads a turn, plus the one a turn always gets: one turn
        // before the other task's first, one between each of its turns, and the one that meets
        // the cancellation (1,430 bytes seen on the memory stream: 22 turns of 65).
        let per_turn = hatchery::DEFAULT_YIELD_BUDGET as usize + 1;
        assert!(
            read.get() >= TURNS as usize && read.get() <= per_turn * (TURNS as usize + 2),
            "read {} bytes while the other task took {TURNS} turns",
            read.get()
        );
        Ok(())
    }

    pub(super) async fn poll_style_readers_in_two_tasks_the_second_is_busy<S: TestStream>(
        a: S,
        b: S,
    ) -> io::Result<()>
    where
        for<'x> &'x S: AsyncRead,
    {
        let drivers = [Driver::default(), Driver::default()];
        let before = registrations();
        nursery(async |n| {
            let read = |i: usize| {
                let (a, driver) = (&a, &drivers[i]);
                async move {
                    let mut buf = [0; 4];
                    let r = driver.drive(false, |cx| Pin::new(&mut &*a).poll_read(cx, &mut buf)).await;
                    Ok::<_, io::Error>(r.map(|k| buf[..k].to_vec()))
                }
            };
            let first = n.spawn(read(0));
            wait_all_tasks_blocked().await?;
            assert_eq!(drivers[0].polls(), 1);
            let second = n.spawn(read(1));
            wait_all_tasks_blocked().await?;
            assert!(second.is_finished(), "the second reader must have failed with BusyResource");
            let e = second.await?.unwrap_err();
            assert!(is::<BusyResource>(&e), "{e:?}");
            assert_eq!((drivers[0].polls(), drivers[1].polls()), (2, 2));
            b.write_all(b"xyz").await?;
            assert_eq!(first.await??, b"xyz", "the first reader is undisturbed");
            assert_eq!(drivers[0].polls(), 3);
            Ok::<_, io::Error>(())
        })
        .await
        .map_err(|e| e.into_first())?;
        assert_eq!(registrations(), before, "nothing left registered");
        Ok(())
    }

    /// As `poll_style_readers_in_two_tasks_the_second_is_busy`, then the first reader stops
    /// polling its read while it waits (the losing branch of a `select`: no last poll tells the
    /// stream): the second task, reading again, is not told `BusyResource` for ever by what the
    /// contest left behind; it reads the data.
    pub(super) async fn after_a_contest_the_busy_reader_reads_once_the_other_is_gone<S: TestStream>(
        a: S,
        b: S,
    ) -> io::Result<()>
    where
        for<'x> &'x S: AsyncRead,
    {
        let drivers = [Driver::default(), Driver::default()];
        let (retry, stop) = (hatchery::Event::new(), hatchery::Event::new());
        nursery(async |n| {
            let first = n.spawn(async {
                let mut buf = [0; 4];
                let mut stopped = std::pin::pin!(stop.wait());
                std::future::poll_fn(|cx| {
                    if stopped.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Ok::<_, io::Error>(()));
                    }
                    assert!(Pin::new(&mut &a).poll_read(cx, &mut buf).is_pending());
                    Poll::Pending
                })
                .await
            });
            wait_all_tasks_blocked().await?;
            let second = n.spawn(async {
                let mut buf = [0; 4];
                let e = drivers[1]
                    .drive(false, |cx| Pin::new(&mut &a).poll_read(cx, &mut buf))
                    .await
                    .unwrap_err();
                assert!(is::<BusyResource>(&e), "{e:?}");
                retry.wait().await?;
                let k = drivers[1].drive(false, |cx| Pin::new(&mut &a).poll_read(cx, &mut buf)).await?;
                Ok::<_, io::Error>(buf[..k].to_vec())
            });
            wait_all_tasks_blocked().await?;
            stop.set();
            first.await?;
            retry.set();
            wait_all_tasks_blocked().await?;
            b.write_all(b"xyz").await?;
            assert_eq!(second.await?, b"xyz");
            Ok::<_, io::Error>(())
        })
        .await
        .map_err(|e| e.into_first())?;
        Ok(())
    }

    /// A poll-style read dropped while it waits leaves its waker behind; the task that then
    /// reads again, with another waker, is not taken for a second task: no `BusyResource`,
    /// whichever waker each poll has.
    pub(super) async fn a_poll_style_read_dropped_while_waiting_makes_no_one_busy<S: TestStream>(
        a: S,
        b: S,
    ) -> io::Result<()>
    where
        for<'x> &'x S: AsyncRead,
    {
        let mut buf = [0; 4];
        assert!(poll_once(poll_read(&a, &mut buf)).await.is_pending());
        let foreign = poll_once_foreign(poll_read(&a, &mut buf)).await;
        assert!(foreign.is_pending(), "the task's own waker is replaced");
        assert!(poll_once(poll_read(&a, &mut buf)).await.is_pending(), "the foreign one is replaced back");
        assert!(poll_once_foreign(poll_read(&a, &mut buf)).await.is_pending());
        assert!(poll_once(poll_read(&a, &mut buf)).await.is_pending());
        b.write_all(b"xyz").await?;
        let k = poll_read(&a, &mut buf).await?;
        assert_eq!(&buf[..k], b"xyz");
        Ok(())
    }

    /// The same for two poll-style writers of a full stream.
    pub(super) async fn poll_style_writers_in_two_tasks_the_second_is_busy<S: TestStream>(
        a: S,
        _b: S,
    ) -> io::Result<()>
    where
        for<'x> &'x S: AsyncWrite,
    {
        let drivers = [Driver::default(), Driver::default()];
        let chunk = pattern(65536);
        nursery(async |n| {
            // Writes until the stream is full, then waits for room: ends only with an error.
            let write = |i: usize| {
                let (a, driver, chunk) = (&a, &drivers[i], &chunk);
                async move {
                    let r = driver
                        .drive(false, |cx| {
                            loop {
                                match Pin::new(&mut &*a).poll_write(cx, chunk) {
                                    Poll::Ready(Ok(k)) => assert!(k > 0),
                                    Poll::Ready(Err(e)) => return Poll::Ready(Err::<(), _>(e)),
                                    Poll::Pending => return Poll::Pending,
                                }
                            }
                        })
                        .await;
                    Ok::<_, io::Error>(r)
                }
            };
            let first = n.spawn(write(0));
            wait_all_tasks_blocked().await?;
            // (A socket may report a stale writable edge: the first writer then polls twice.)
            let first_polls = drivers[0].polls();
            let second = n.spawn(write(1));
            wait_all_tasks_blocked().await?;
            assert!(second.is_finished(), "the second writer must have failed with BusyResource");
            let e = second.await?.unwrap_err();
            assert!(is::<BusyResource>(&e), "{e:?}");
            assert_eq!((drivers[0].polls(), drivers[1].polls()), (first_polls + 1, 2));
            a.close();
            let e = first.await?.unwrap_err();
            assert!(is::<ClosedResource>(&e), "close wakes the first writer: {e:?}");
            assert_eq!(drivers[0].polls(), first_polls + 2);
            Ok::<_, io::Error>(())
        })
        .await
        .map_err(|e| e.into_first())?;
        Ok(())
    }

    /// A poll-style read in a cancelled scope, while another task's poll-style read waits,
    /// replaces the waiting one's waker and then leaves (`Cancelled`, nothing read): the one
    /// waiting is woken to register again, rather than left with nothing that would wake it.
    pub(super) async fn a_cancelled_poll_style_read_wakes_the_one_it_replaced<S: TestStream>(
        a: S,
        b: S,
    ) -> io::Result<()>
    where
        for<'x> &'x S: AsyncRead,
    {
        let driver = Driver::default();
        nursery(async |n| {
            let waiting = n.spawn(async {
                let mut buf = [0; 4];
                let r = driver.drive(false, |cx| Pin::new(&mut &a).poll_read(cx, &mut buf)).await;
                Ok::<_, io::Error>(r.map(|k| buf[..k].to_vec()))
            });
            wait_all_tasks_blocked().await?;
            assert_eq!(driver.polls(), 1);
            let mut buf = [0; 4];
            let e = cancelled_scope()
                .run(async { std::future::poll_fn(|cx| Pin::new(&mut &a).poll_read(cx, &mut buf)).await })
                .await;
            assert!(matches!(e, Ok(None)), "{e:?}");
            wait_all_tasks_blocked().await?;
            assert_eq!(driver.polls(), 2, "woken, it waits again");
            b.write_all(b"xyz").await?;
            assert_eq!(waiting.await??, b"xyz");
            assert_eq!(driver.polls(), 3);
            Ok::<_, io::Error>(())
        })
        .await
        .map_err(|e| e.into_first())?;
        Ok(())
    }

    /// One task whose waker changes on every poll (as under a combinator that wraps it). An
    /// `async` read keeps only the new waker and never wakes the old one (or the task would be
    /// polled again, with yet another waker, for ever). A poll-style read keeps only the new
    /// one too, but wakes the first one replaced in a wait, once (in case it is another task's:
    /// see `poll_style_readers_in_two_tasks_the_second_is_busy`): one poll more, not a loop,
    /// and no `BusyResource` for a task that only changed wakers. The data then wakes the newest
    /// waker.
    pub(super) async fn a_new_waker_replaces_the_old_one<S: TestStream>(a: S, b: S) -> io::Result<()>
    where
        for<'x> &'x S: AsyncRead,
    {
        for poll_style in [false, true] {
            let driver = Driver::default();
            nursery(async |n| {
                let reader = n.spawn(async {
                    let mut buf = [0; 4];
                    let r = if poll_style {
                        driver.drive(true, |cx| Pin::new(&mut &a).poll_read(cx, &mut buf)).await
                    } else {
                        let mut read = pin!(a.read(&mut buf));
                        driver.drive(true, |cx| read.as_mut().poll(cx)).await
                    };
                    Ok::<_, io::Error>(r.map(|k| buf[..k].to_vec()))
                });
                wait_all_tasks_blocked().await?;
                let (parked_at, mut woken) = (driver.polls(), driver.woken());
                driver.kick();
                wait_all_tasks_blocked().await?;
                let last = if poll_style {
                    woken.push(parked_at);
                    parked_at + 2
                } else {
                    parked_at + 1
                };
                assert_eq!(driver.polls(), last, "poll-style: {poll_style}");
                assert_eq!(driver.woken(), woken, "poll-style: {poll_style}");
                b.write_all(b"xyz").await?;
                assert_eq!(reader.await??, b"xyz");
                assert_eq!(driver.polls(), last + 1);
                woken.push(last);
                assert_eq!(driver.woken(), woken, "the data woke the newest waker");
                Ok::<_, io::Error>(())
            })
            .await
            .map_err(|e| e.into_first())?;
        }
        Ok(())
    }

    /// An `async` read displaces a poll-style reader's waker and wakes it: it finds the
    /// direction busy (the `async` operation holds it until it completes).
    pub(super) async fn a_poll_style_waiter_gives_way_to_an_async_read<S: TestStream>(
        a: S,
        b: S,
    ) -> io::Result<()>
    where
        for<'x> &'x S: AsyncRead,
    {
        let driver = Driver::default();
        nursery(async |n| {
            let poller = n.spawn(async {
                let mut buf = [0; 4];
                Ok(driver.drive(false, |cx| Pin::new(&mut &a).poll_read(cx, &mut buf)).await)
            });
            wait_all_tasks_blocked().await?;
            let reader = n.spawn(async { read_n(&a, 3).await });
            let e = poller.await?.unwrap_err();
            assert!(is::<BusyResource>(&e), "{e:?}");
            assert_eq!(driver.polls(), 2);
            b.write_all(b"won").await?;
            assert_eq!(reader.await?, b"won");
            Ok::<_, io::Error>(())
        })
        .await
        .map_err(|e| e.into_first())?;
        Ok(())
    }
}
