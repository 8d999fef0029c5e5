//! The workloads on hatchery: children live in nurseries; the nursery's cost is included.
//!
//! Children that nobody awaits (`timers`, `timeout_cancel`, `cancel_nursery`, the echoing task
//! of `pingpong` and the producers of `mpsc_fanin`) use `Nursery::start_soon`, borrowing their
//! counters from the enclosing code where they have any: the nursery waits for them, so no
//! handle is needed.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hatchery::net::{TcpListener, TcpStream};
use hatchery::{Builder, Cancelled, Error, channel, move_on_after, nursery, sleep};

use crate::common::{
    ECHO_BUF, FANIN_CAPACITY, LONG_SLEEP, SETTLE, SHORT_TIMEOUT, check, localhost, sum_below,
};
use crate::echo::EchoRun;
use crate::http::HttpConn;

/// Runs `future` on a fresh hatchery run with the default options (what a user gets).
fn run<F: Future>(future: F) -> F::Output {
    Builder::new().run(future)
}

/// Counts its own drops: proves that every child was dropped.
struct DropCount<'a>(&'a Cell<u64>);

impl Drop for DropCount<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get() + 1);
    }
}

/// Size of the handle `spawn_join` keeps per task (`spawn_memory` reports the bytes beyond it).
pub const HANDLE_BYTES: usize = std::mem::size_of::<hatchery::JoinHandle<'static, u64>>();

/// `spawn_join`: wall time of spawning `n` children and awaiting their handles in order.
pub fn spawn_join(n: u64) -> Duration {
    let (elapsed, sum) = run(async {
        let t0 = Instant::now();
        let sum = nursery(async |nur| {
            let handles: Vec<_> = (0..n).map(|i| nur.spawn(async move { Ok::<_, Error>(i) })).collect();
            let mut sum = 0;
            for h in handles {
                sum += h.await?;
            }
            Ok(sum)
        })
        .await;
        (t0.elapsed(), sum)
    });
    check("hatchery spawn_join", sum.expect("nursery failed").expect("nursery cancelled"), sum_below(n));
    elapsed
}

/// `spawn_nested`: `parents` children each open a nursery with `children` children of their own.
pub fn spawn_nested(parents: u64, children: u64) -> Duration {
    let (elapsed, sum) = run(async {
        let t0 = Instant::now();
        let sum = nursery(async |outer| {
            let handles: Vec<_> = (0..parents)
                .map(|p| {
                    outer.spawn(async move {
                        let sum = nursery(async |inner| {
                            let handles: Vec<_> = (0..children)
                                .map(|c| inner.spawn(async move { Ok::<_, Error>(p * children + c) }))
                                .collect();
                            let mut sum = 0;
                            for h in handles {
                                sum += h.await?;
                            }
                            Ok(sum)
                        })
                        .await?;
                        Ok::<_, Error>(sum.unwrap_or(0))
                    })
                })
                .collect();
            let mut sum = 0;
            for h in handles {
                sum += h.await?;
            }
            Ok(sum)
        })
        .await;
        (t0.elapsed(), sum)
    });
    let sum = sum.expect("nursery failed").expect("nursery cancelled");
    check("hatchery spawn_nested", sum, sum_below(parents * children));
    elapsed
}

/// `pingpong` (`capacity` 1) and `pingpong_rendezvous` (`capacity` 0): wall time of `n` round
/// trips. Task B (started first) receives each value on one channel and sends it back on the
/// other; task A sends `i` and receives it back, summing what comes back.
pub fn pingpong(n: u64, capacity: usize) -> Duration {
    let (elapsed, sum) = run(async {
        let t0 = Instant::now();
        let sum = nursery(async |nur| {
            let (ping_tx, ping_rx) = channel::<u64>(capacity);
            let (pong_tx, pong_rx) = channel::<u64>(capacity);
            nur.start_soon(async move {
                for _ in 0..n {
                    let v = ping_rx.recv().await?;
                    pong_tx.send(v).await?;
                }
                Ok::<_, Error>(())
            });
            let a = nur.spawn(async move {
                let mut sum = 0;
                for i in 0..n {
                    ping_tx.send(i).await?;
                    sum += pong_rx.recv().await?;
                }
                Ok::<_, Error>(sum)
            });
            Ok(a.await?)
        })
        .await;
        (t0.elapsed(), sum)
    });
    let sum = sum.expect("nursery failed").expect("nursery cancelled");
    check(&format!("hatchery pingpong (capacity {capacity})"), sum, sum_below(n));
    elapsed
}

/// `mpsc_fanin`: wall time of `producers` tasks each sending `per_producer` values into one
/// bounded channel, and one consumer task (started first) summing them until the channel ends
/// (every sender dropped).
pub fn mpsc_fanin(producers: u64, per_producer: u64) -> Duration {
    let (elapsed, got) = run(async {
        let t0 = Instant::now();
        let got = nursery(async |nur| {
            let (tx, rx) = channel::<u64>(FANIN_CAPACITY);
            let consumer = nur.spawn(async move {
                let (mut count, mut sum) = (0, 0);
                loop {
                    match rx.recv().await {
                        Ok(v) => {
                            count += 1;
                            sum += v;
                        }
                        Err(e) if e.is_end_of_channel() => break,
                        Err(e) => return Err(e.into()),
                    }
                }
                Ok::<_, Error>((count, sum))
            });
            for p in 0..producers {
                let tx = tx.clone();
                nur.start_soon(async move {
                    for j in 0..per_producer {
                        tx.send(p * per_producer + j).await?;
                    }
                    Ok::<_, Error>(())
                });
            }
            drop(tx);
            Ok(consumer.await?)
        })
        .await;
        (t0.elapsed(), got)
    });
    let (count, sum) = got.expect("nursery failed").expect("nursery cancelled");
    check("hatchery mpsc_fanin (messages)", count, producers * per_producer);
    check("hatchery mpsc_fanin", sum, sum_below(producers * per_producer));
    elapsed
}

/// `timers`: wall time of `n` concurrent children each sleeping `duration`.
pub fn timers(n: u64, duration: Duration) -> Duration {
    let (elapsed, sum) = run(async {
        let sum = Cell::new(0);
        let t0 = Instant::now();
        let r = nursery(async |nur| {
            for i in 0..n {
                let sum = &sum;
                nur.start_soon(async move {
                    sleep(duration).await?;
                    sum.set(sum.get() + i);
                    Ok::<_, Cancelled>(())
                });
            }
            Ok(())
        })
        .await;
        let elapsed = t0.elapsed();
        r.expect("nursery failed").expect("nursery cancelled");
        (elapsed, sum.get())
    });
    check("hatchery timers", sum, sum_below(n));
    elapsed
}

/// `timeout_cancel`: wall time of `n` children each running a 1 ms timeout around a long sleep.
pub fn timeout_cancel(n: u64) -> Duration {
    let (elapsed, timed_out) = run(async {
        let timed_out = Cell::new(0);
        let t0 = Instant::now();
        let r = nursery(async |nur| {
            for _ in 0..n {
                let timed_out = &timed_out;
                nur.start_soon(async move {
                    let r = move_on_after(SHORT_TIMEOUT, async {
                        sleep(LONG_SLEEP).await?;
                        Ok::<_, Cancelled>(())
                    })
                    .await?;
                    if r.is_none() {
                        timed_out.set(timed_out.get() + 1);
                    }
                    Ok::<_, Cancelled>(())
                });
            }
            Ok(())
        })
        .await;
        let elapsed = t0.elapsed();
        r.expect("nursery failed").expect("nursery cancelled");
        (elapsed, timed_out.get())
    });
    check("hatchery timeout_cancel", timed_out, n);
    elapsed
}

/// `cancel_nursery`: `n` children sleep for an hour; once all are parked
/// (`wait_all_tasks_blocked`), the body cancels the nursery's scope. Measures from the cancel
/// call to the nursery's return.
pub fn cancel_nursery(n: u64) -> Duration {
    let (elapsed, dropped) = run(async {
        let dropped = Cell::new(0);
        let cancelled_at = Cell::new(None);
        let r = nursery(async |nur| {
            for _ in 0..n {
                let guard = DropCount(&dropped);
                nur.start_soon(async move {
                    let _guard = guard;
                    sleep(LONG_SLEEP).await?;
                    Ok::<_, Cancelled>(())
                });
            }
            hatchery::testing::wait_all_tasks_blocked().await?;
            cancelled_at.set(Some(Instant::now()));
            nur.cancel_scope().cancel();
            Ok(())
        })
        .await;
        let elapsed = cancelled_at.get().expect("the body never cancelled").elapsed();
        r.expect("nursery failed");
        (elapsed, dropped.get())
    });
    check("hatchery cancel_nursery (children dropped)", dropped, n);
    elapsed
}

/// Echoes everything it reads until end of stream; returns the bytes echoed.
async fn echo(stream: TcpStream) -> io::Result<u64> {
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

/// `tcp_echo` and `idle_conns`: an echo server with one child task per connection in a
/// nursery (the accepting body waits for every connection, lets the handlers park, then lets
/// the client go); returns the bytes echoed in all.
pub fn echo_server(probe: &EchoRun) -> u64 {
    let echoed = Cell::new(0);
    let r = run(async {
        let listener = TcpListener::bind(localhost())?;
        probe.start_client(listener.local_addr()?);
        let r = nursery(async |nur| {
            for _ in 0..probe.conns() {
                let (stream, _) = listener.accept().await?;
                let echoed = &echoed;
                nur.start_soon(async move {
                    let e = echo(stream).await?;
                    echoed.set(echoed.get() + e);
                    Ok::<_, io::Error>(())
                });
            }
            sleep(SETTLE).await?;
            probe.go();
            Ok::<_, io::Error>(())
        })
        .await;
        probe.stop();
        r?;
        Ok::<_, io::Error>(())
    });
    r.expect("hatchery echo server failed");
    echoed.get()
}

/// One keep-alive HTTP connection (see `http.rs`).
async fn http_conn(stream: TcpStream) -> io::Result<()> {
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

/// The bench crate's own minimal HTTP responder on hatchery (`http_wrk` uses it with
/// `--hello-http bench`, or when `examples/hello_http` cannot be built): serves forever.
pub fn http_server(addr: SocketAddr, listening: impl FnOnce(SocketAddr)) -> io::Result<()> {
    run(async {
        let listener = TcpListener::bind(addr)?;
        listening(listener.local_addr()?);
        nursery(async |nur| -> io::Result<()> {
            loop {
                let (stream, _) = listener.accept().await?;
                nur.start_soon(async move {
                    // A broken connection must not cancel the server.
                    let _ = http_conn(stream).await;
                    Ok::<_, io::Error>(())
                });
            }
        })
        .await?;
        Ok(())
    })
}
