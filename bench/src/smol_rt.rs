//! The workloads on smol's single-threaded stack: an `async_executor::LocalExecutor` driven by
//! `async_io::block_on`, with `async_io::Timer` for time and `async_channel` for channels.
//!
//! Tasks that spawn tasks reach the executor through an `Rc`, as smol users do.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::rc::Rc;
use std::time::{Duration, Instant};

use async_executor::{LocalExecutor, Task};
use async_io::{Async, Timer};
use futures_lite::future;
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{
    ECHO_BUF, FANIN_CAPACITY, LONG_SLEEP, PINGPONG_CAPACITY, SETTLE, SHORT_TIMEOUT, check, localhost,
    sum_below,
};
use crate::echo::EchoRun;
use crate::http::HttpConn;

/// The executor, shared by the tasks that spawn.
type Executor = Rc<LocalExecutor<'static>>;

/// Runs `main(executor)` on a fresh `LocalExecutor` under `async_io::block_on`.
fn block_on<F, Fut>(main: F) -> Fut::Output
where
    F: FnOnce(Executor) -> Fut,
    Fut: Future,
{
    let ex: Executor = Rc::new(LocalExecutor::new());
    async_io::block_on(ex.run(main(ex.clone())))
}

/// Awaits every task in order and sums the values.
async fn join_sum(tasks: Vec<Task<u64>>) -> u64 {
    let mut sum = 0;
    for t in tasks {
        sum += t.await;
    }
    sum
}

/// Counts its own drops: proves that every child was dropped.
struct DropCount(Rc<Cell<u64>>);

impl Drop for DropCount {
    fn drop(&mut self) {
        self.0.set(self.0.get() + 1);
    }
}

/// Size of the handle `spawn_join` keeps per task (`spawn_memory` reports the bytes beyond it).
pub const HANDLE_BYTES: usize = std::mem::size_of::<async_executor::Task<u64>>();

/// `spawn_join`: wall time of spawning `n` tasks returning `i` and awaiting them in order.
pub fn spawn_join(n: u64) -> Duration {
    let (elapsed, sum) = block_on(|ex| async move {
        let t0 = Instant::now();
        let tasks: Vec<_> = (0..n).map(|i| ex.spawn(async move { i })).collect();
        let sum = join_sum(tasks).await;
        (t0.elapsed(), sum)
    });
    check("smol spawn_join", sum, sum_below(n));
    elapsed
}

/// `spawn_nested`: `parents` tasks each spawn `children` tasks and await them.
pub fn spawn_nested(parents: u64, children: u64) -> Duration {
    let (elapsed, sum) = block_on(|ex| async move {
        let t0 = Instant::now();
        let tasks: Vec<_> = (0..parents)
            .map(|p| {
                let inner = ex.clone();
                ex.spawn(async move {
                    let tasks: Vec<_> =
                        (0..children).map(|c| inner.spawn(async move { p * children + c })).collect();
                    join_sum(tasks).await
                })
            })
            .collect();
        let sum = join_sum(tasks).await;
        (t0.elapsed(), sum)
    });
    check("smol spawn_nested", sum, sum_below(parents * children));
    elapsed
}

/// `pingpong`: wall time of `n` round trips over two `async_channel::bounded(1)` channels.
/// Task B (spawned first) echoes each value back; task A sends `i` and sums what comes back.
pub fn pingpong(n: u64) -> Duration {
    let (elapsed, sum) = block_on(|ex| async move {
        let t0 = Instant::now();
        let (ping_tx, ping_rx) = async_channel::bounded::<u64>(PINGPONG_CAPACITY);
        let (pong_tx, pong_rx) = async_channel::bounded::<u64>(PINGPONG_CAPACITY);
        let b = ex.spawn(async move {
            for _ in 0..n {
                let v = ping_rx.recv().await.expect("ping channel closed");
                pong_tx.send(v).await.expect("pong channel closed");
            }
        });
        let a = ex.spawn(async move {
            let mut sum = 0;
            for i in 0..n {
                ping_tx.send(i).await.expect("ping channel closed");
                sum += pong_rx.recv().await.expect("pong channel closed");
            }
            sum
        });
        let sum = a.await;
        b.await;
        (t0.elapsed(), sum)
    });
    check("smol pingpong", sum, sum_below(n));
    elapsed
}

/// `mpsc_fanin`: wall time of `producers` tasks each sending `per_producer` values into one
/// `async_channel::bounded` channel, and one consumer task (spawned first) summing them until
/// the channel ends.
pub fn mpsc_fanin(producers: u64, per_producer: u64) -> Duration {
    let (elapsed, (count, sum)) = block_on(|ex| async move {
        let t0 = Instant::now();
        let (tx, rx) = async_channel::bounded::<u64>(FANIN_CAPACITY);
        let consumer = ex.spawn(async move {
            let (mut count, mut sum) = (0, 0);
            while let Ok(v) = rx.recv().await {
                count += 1;
                sum += v;
            }
            (count, sum)
        });
        let tasks: Vec<_> = (0..producers)
            .map(|p| {
                let tx = tx.clone();
                ex.spawn(async move {
                    for j in 0..per_producer {
                        tx.send(p * per_producer + j).await.expect("channel closed");
                    }
                })
            })
            .collect();
        drop(tx);
        let got = consumer.await;
        for t in tasks {
            t.await;
        }
        (t0.elapsed(), got)
    });
    check("smol mpsc_fanin (messages)", count, producers * per_producer);
    check("smol mpsc_fanin", sum, sum_below(producers * per_producer));
    elapsed
}

/// `timers`: wall time of `n` concurrent tasks each sleeping `duration` on an `async_io::Timer`.
pub fn timers(n: u64, duration: Duration) -> Duration {
    let (elapsed, sum) = block_on(|ex| async move {
        let t0 = Instant::now();
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                ex.spawn(async move {
                    Timer::after(duration).await;
                    i
                })
            })
            .collect();
        let sum = join_sum(tasks).await;
        (t0.elapsed(), sum)
    });
    check("smol timers", sum, sum_below(n));
    elapsed
}

/// `timeout_cancel`: wall time of `n` tasks each racing a long sleep against a 1 ms timer
/// (`future::or`, the composition of the `smol-timeout` crate).
pub fn timeout_cancel(n: u64) -> Duration {
    let (elapsed, timed_out) = block_on(|ex| async move {
        let t0 = Instant::now();
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                ex.spawn(future::or(
                    async {
                        Timer::after(LONG_SLEEP).await;
                        0
                    },
                    async {
                        Timer::after(SHORT_TIMEOUT).await;
                        1
                    },
                ))
            })
            .collect();
        let timed_out = join_sum(tasks).await;
        (t0.elapsed(), timed_out)
    });
    check("smol timeout_cancel", timed_out, n);
    elapsed
}

/// `cancel_nursery` peer: `n` tasks sleep for an hour; once all are parked, drop their `Task`
/// handles (which cancels them). Measures from the drop to the executor having dropped every
/// child's future.
pub fn cancel_nursery(n: u64) -> Duration {
    let (elapsed, dropped) = block_on(|ex| async move {
        let parked = Rc::new(Cell::new(0));
        let dropped = Rc::new(Cell::new(0));
        let tasks: Vec<Task<()>> = (0..n)
            .map(|_| {
                let guard = DropCount(dropped.clone());
                let parked = parked.clone();
                ex.spawn(async move {
                    let _guard = guard;
                    parked.set(parked.get() + 1);
                    Timer::after(LONG_SLEEP).await;
                })
            })
            .collect();
        while parked.get() < n {
            future::yield_now().await;
        }
        let t0 = Instant::now();
        drop(tasks);
        while dropped.get() < n {
            future::yield_now().await;
        }
        (t0.elapsed(), dropped.get())
    });
    check("smol cancel_nursery (children dropped)", dropped, n);
    elapsed
}

/// Echoes everything it reads until end of stream; returns the bytes echoed.
async fn echo(mut stream: Async<TcpStream>) -> io::Result<u64> {
    let mut buf = [0u8; ECHO_BUF];
    let mut echoed = 0;
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(echoed);
        }
        stream.write_all(&buf[..n]).await?;
        echoed += n as u64;
    }
}

/// `tcp_echo` and `idle_conns`: an echo server on `Async<TcpListener>` with one task per
/// connection (`TCP_NODELAY` on and `TCP_NOTSENT_LOWAT` of 16 KiB, as hatchery's accepted streams have them); the accepting
/// future keeps the tasks, lets the handlers park, lets the client go, then awaits them.
/// Returns the bytes echoed in all.
pub fn echo_server(probe: &EchoRun) -> u64 {
    block_on(|ex| async move {
        let listener = Async::<TcpListener>::bind(localhost())?;
        probe.start_client(listener.get_ref().local_addr()?);
        let mut tasks = Vec::new();
        for _ in 0..probe.conns() {
            let (stream, _) = listener.accept().await?;
            stream.get_ref().set_nodelay(true)?;
            crate::common::like_hatchery_stream(stream.get_ref());
            tasks.push(ex.spawn(echo(stream)));
        }
        Timer::after(SETTLE).await;
        probe.go();
        let mut echoed = 0;
        for t in tasks {
            echoed += t.await?;
        }
        probe.stop();
        Ok::<_, io::Error>(echoed)
    })
    .expect("smol echo server failed")
}

/// One keep-alive HTTP connection (see `http.rs`).
async fn http_conn(mut stream: Async<TcpStream>) -> io::Result<()> {
    let mut conn = HttpConn::new();
    loop {
        let n = stream.read(conn.spare()).await?;
        if n == 0 {
            return Ok(());
        }
        let close = conn.received(n)?;
        if !conn.out.is_empty() {
            stream.write_all(&conn.out).await?;
            conn.out.clear();
        }
        if close {
            return Ok(());
        }
    }
}

/// The minimal HTTP responder on a `LocalExecutor`: one task per connection (detached);
/// serves forever.
pub fn http_server(addr: SocketAddr, listening: impl FnOnce(SocketAddr)) -> io::Result<()> {
    block_on(|ex| async move {
        let listener = Async::<TcpListener>::bind(addr)?;
        listening(listener.get_ref().local_addr()?);
        loop {
            let (stream, _) = listener.accept().await?;
            stream.get_ref().set_nodelay(true)?;
            crate::common::like_hatchery_stream(stream.get_ref());
            ex.spawn(http_conn(stream)).detach();
        }
    })
}
