//! The workloads on tokio's current_thread runtime, in two modes: `tokio::spawn` on the runtime
//! itself (`local == false`) and `spawn_local` inside a `LocalSet` (`local == true`).
//!
//! Every future here is `Send`, so one code path serves both modes.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet, LocalSet};
use tokio::time::{sleep, timeout};

use crate::common::{
    ECHO_BUF, FANIN_CAPACITY, LONG_SLEEP, PINGPONG_CAPACITY, SETTLE, SHORT_TIMEOUT, check, localhost,
    sum_below,
};
use crate::echo::EchoRun;
use crate::http::HttpConn;

/// Runs `future` on a fresh current_thread runtime (time driver on), inside a `LocalSet` if
/// `local`.
fn block_on<F: Future>(local: bool, future: F) -> F::Output {
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("tokio runtime");
    if local { LocalSet::new().block_on(&rt, future) } else { rt.block_on(future) }
}

/// Like [`block_on`], with the I/O driver on too (the socket workloads).
fn block_on_io<F: Future>(local: bool, future: F) -> F::Output {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    if local { LocalSet::new().block_on(&rt, future) } else { rt.block_on(future) }
}

/// Spawns with `spawn_local` if `local`, else with `tokio::spawn`.
fn spawn<F>(local: bool, future: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    if local { tokio::task::spawn_local(future) } else { tokio::spawn(future) }
}

/// Awaits every handle in order and sums the values.
async fn join_sum(handles: Vec<JoinHandle<u64>>) -> u64 {
    let mut sum = 0;
    for h in handles {
        sum += h.await.expect("task failed");
    }
    sum
}

/// Counts its own drops: proves that every child was dropped.
struct DropCount(Arc<AtomicU64>);

impl Drop for DropCount {
    fn drop(&mut self) {
        self.0.fetch_add(1, Relaxed);
    }
}

/// Size of the handle `spawn_join` keeps per task (`spawn_memory` reports the bytes beyond it).
pub const HANDLE_BYTES: usize = std::mem::size_of::<JoinHandle<u64>>();

/// `spawn_join`: wall time of spawning `n` tasks returning `i` and awaiting their handles.
pub fn spawn_join(local: bool, n: u64) -> Duration {
    let (elapsed, sum) = block_on(local, async move {
        let t0 = Instant::now();
        let handles: Vec<_> = (0..n).map(|i| spawn(local, async move { i })).collect();
        let sum = join_sum(handles).await;
        (t0.elapsed(), sum)
    });
    check("tokio spawn_join", sum, sum_below(n));
    elapsed
}

/// `spawn_nested`: `parents` tasks each spawn `children` tasks and await them.
pub fn spawn_nested(local: bool, parents: u64, children: u64) -> Duration {
    let (elapsed, sum) = block_on(local, async move {
        let t0 = Instant::now();
        let handles: Vec<_> = (0..parents)
            .map(|p| {
                spawn(local, async move {
                    let handles: Vec<_> =
                        (0..children).map(|c| spawn(local, async move { p * children + c })).collect();
                    join_sum(handles).await
                })
            })
            .collect();
        let sum = join_sum(handles).await;
        (t0.elapsed(), sum)
    });
    check("tokio spawn_nested", sum, sum_below(parents * children));
    elapsed
}

/// `pingpong`: wall time of `n` round trips over two `tokio::sync::mpsc` channels of capacity 1.
/// Task B (spawned first) echoes each value back; task A sends `i` and sums what comes back.
pub fn pingpong(local: bool, n: u64) -> Duration {
    let (elapsed, sum) = block_on(local, async move {
        let t0 = Instant::now();
        let (ping_tx, mut ping_rx) = mpsc::channel::<u64>(PINGPONG_CAPACITY);
        let (pong_tx, mut pong_rx) = mpsc::channel::<u64>(PINGPONG_CAPACITY);
        let b = spawn(local, async move {
            for _ in 0..n {
                let v = ping_rx.recv().await.expect("ping channel closed");
                pong_tx.send(v).await.expect("pong channel closed");
            }
        });
        let a = spawn(local, async move {
            let mut sum = 0;
            for i in 0..n {
                ping_tx.send(i).await.expect("ping channel closed");
                sum += pong_rx.recv().await.expect("pong channel closed");
            }
            sum
        });
        let sum = a.await.expect("task failed");
        b.await.expect("task failed");
        (t0.elapsed(), sum)
    });
    check("tokio pingpong", sum, sum_below(n));
    elapsed
}

/// `mpsc_fanin`: wall time of `producers` tasks each sending `per_producer` values into one
/// bounded `tokio::sync::mpsc` channel, and one consumer task (spawned first) summing them until
/// the channel ends.
pub fn mpsc_fanin(local: bool, producers: u64, per_producer: u64) -> Duration {
    let (elapsed, (count, sum)) = block_on(local, async move {
        let t0 = Instant::now();
        let (tx, mut rx) = mpsc::channel::<u64>(FANIN_CAPACITY);
        let consumer = spawn(local, async move {
            let (mut count, mut sum) = (0, 0);
            while let Some(v) = rx.recv().await {
                count += 1;
                sum += v;
            }
            (count, sum)
        });
        let handles: Vec<_> = (0..producers)
            .map(|p| {
                let tx = tx.clone();
                spawn(local, async move {
                    for j in 0..per_producer {
                        tx.send(p * per_producer + j).await.expect("channel closed");
                    }
                })
            })
            .collect();
        drop(tx);
        let got = consumer.await.expect("task failed");
        for h in handles {
            h.await.expect("task failed");
        }
        (t0.elapsed(), got)
    });
    check("tokio mpsc_fanin (messages)", count, producers * per_producer);
    check("tokio mpsc_fanin", sum, sum_below(producers * per_producer));
    elapsed
}

/// `timers`: wall time of `n` concurrent tasks each sleeping `duration`.
pub fn timers(local: bool, n: u64, duration: Duration) -> Duration {
    let (elapsed, sum) = block_on(local, async move {
        let t0 = Instant::now();
        let handles: Vec<_> = (0..n)
            .map(|i| {
                spawn(local, async move {
                    sleep(duration).await;
                    i
                })
            })
            .collect();
        let sum = join_sum(handles).await;
        (t0.elapsed(), sum)
    });
    check("tokio timers", sum, sum_below(n));
    elapsed
}

/// `timeout_cancel`: wall time of `n` tasks each running `tokio::time::timeout(1 ms)` around a
/// long sleep.
pub fn timeout_cancel(local: bool, n: u64) -> Duration {
    let (elapsed, timed_out) = block_on(local, async move {
        let t0 = Instant::now();
        let handles: Vec<_> = (0..n)
            .map(|_| {
                spawn(local, async { u64::from(timeout(SHORT_TIMEOUT, sleep(LONG_SLEEP)).await.is_err()) })
            })
            .collect();
        let timed_out = join_sum(handles).await;
        (t0.elapsed(), timed_out)
    });
    check("tokio timeout_cancel", timed_out, n);
    elapsed
}

/// `cancel_nursery` peer: `n` tasks in a `JoinSet` sleep for an hour; once all are parked,
/// `abort_all` and drain the set. Measures from `abort_all` to the set being empty.
pub fn cancel_nursery(local: bool, n: u64) -> Duration {
    let (elapsed, cancelled, dropped) = block_on(local, async move {
        let parked = Arc::new(AtomicU64::new(0));
        let dropped = Arc::new(AtomicU64::new(0));
        let mut set = JoinSet::new();
        for _ in 0..n {
            let guard = DropCount(dropped.clone());
            let parked = parked.clone();
            let child = async move {
                let _guard = guard;
                parked.fetch_add(1, Relaxed);
                sleep(LONG_SLEEP).await;
            };
            if local {
                set.spawn_local(child);
            } else {
                set.spawn(child);
            }
        }
        while parked.load(Relaxed) < n {
            tokio::task::yield_now().await;
        }
        let t0 = Instant::now();
        set.abort_all();
        let mut cancelled = 0;
        while let Some(r) = set.join_next().await {
            cancelled += u64::from(r.is_err_and(|e| e.is_cancelled()));
        }
        (t0.elapsed(), cancelled, dropped.load(Relaxed))
    });
    check("tokio cancel_nursery (tasks cancelled)", cancelled, n);
    check("tokio cancel_nursery (children dropped)", dropped, n);
    elapsed
}

/// Echoes everything it reads until end of stream; returns the bytes echoed.
async fn echo(mut stream: TcpStream) -> io::Result<u64> {
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

/// `tcp_echo` and `idle_conns`: an echo server with one task per connection (`TCP_NODELAY`
/// on and `TCP_NOTSENT_LOWAT` of 16 KiB, as hatchery's accepted streams have them); the
/// accepting future keeps the handles, lets
/// the handlers park, lets the client go, then awaits them. Returns the bytes echoed in all.
pub fn echo_server(local: bool, probe: &EchoRun) -> u64 {
    block_on_io(local, async {
        let listener = TcpListener::bind(localhost()).await?;
        probe.start_client(listener.local_addr()?);
        let mut handles = Vec::new();
        for _ in 0..probe.conns() {
            let (stream, _) = listener.accept().await?;
            stream.set_nodelay(true)?;
            crate::common::like_hatchery_stream(&stream);
            handles.push(spawn(local, echo(stream)));
        }
        sleep(SETTLE).await;
        probe.go();
        let mut echoed = 0;
        for h in handles {
            echoed += h.await.expect("task failed")?;
        }
        probe.stop();
        Ok::<_, io::Error>(echoed)
    })
    .expect("tokio echo server failed")
}

/// One keep-alive HTTP connection (see `http.rs`).
async fn http_conn(mut stream: TcpStream) -> io::Result<()> {
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

/// The minimal HTTP responder on a current_thread runtime (in a `LocalSet` if `local`): one
/// task per connection; serves forever.
pub fn http_server(local: bool, addr: SocketAddr, listening: impl FnOnce(SocketAddr)) -> io::Result<()> {
    block_on_io(local, async {
        let listener = TcpListener::bind(addr).await?;
        listening(listener.local_addr()?);
        loop {
            let (stream, _) = listener.accept().await?;
            stream.set_nodelay(true)?;
            crate::common::like_hatchery_stream(&stream);
            spawn(local, http_conn(stream));
        }
    })
}
