//! `connect_tcp` and `happy_eyeballs` (S9.5), and `serve_tcp` (S9.4).

mod support;

use std::cell::Cell;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use hatchery::net::{
    ConnectError, TcpListener, TcpStream, connect_tcp, happy_eyeballs, serve_tcp, serve_tcp_in,
};
use hatchery::testing::{self, wait_all_tasks_blocked};
use hatchery::{CancelScope, Cancelled, Error, Instant, move_on_after, now, nursery, sleep, sleep_forever};
use support::{DropCounter, Log};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// What one fake attempt does: fail or succeed after a delay, or hang.
#[derive(Clone, Copy)]
enum Plan {
    Fail(u64),
    Succeed(u64),
    Hang,
}

/// Runs happy eyeballs over fake attempts, logging "start <addr> @<ms>" and the outcome.
async fn race(
    addrs: &[SocketAddr],
    plans: &[Plan],
    log: &Log,
    drops: &DropCounter,
) -> io::Result<SocketAddr> {
    happy_eyeballs(addrs, ms(250), async |a: SocketAddr| {
        let i = addrs.iter().position(|x| *x == a).unwrap();
        let t0 = now();
        log.push(format!("start {a} @{}", (t0 - Instant::ZERO).as_millis()));
        let _token = drops.token();
        match plans[i] {
            Plan::Fail(d) => {
                sleep(ms(d)).await?;
                Err(io::Error::new(io::ErrorKind::ConnectionRefused, format!("refused {a}")))
            }
            Plan::Succeed(d) => {
                sleep(ms(d)).await?;
                Ok(a)
            }
            Plan::Hang => {
                sleep_forever().await?;
                unreachable!()
            }
        }
    })
    .await
}

#[test]
fn attempts_are_staggered_by_the_delay_and_the_first_success_cancels_the_rest() {
    testing::run(async {
        let addrs = [addr("10.0.0.1:80"), addr("10.0.0.2:80"), addr("10.0.0.3:80")];
        let (log, drops) = (Log::new(), DropCounter::new());
        let won = race(&addrs, &[Plan::Hang, Plan::Hang, Plan::Succeed(10)], &log, &drops).await?;
        assert_eq!(won, addrs[2]);
        assert_eq!(now(), Instant::ZERO + ms(510));
        assert_eq!(log.take(), ["start 10.0.0.1:80 @0", "start 10.0.0.2:80 @250", "start 10.0.0.3:80 @500"]);
        assert_eq!(drops.count(), 3, "every attempt finished or was cancelled and dropped");
        Ok::<_, io::Error>(())
    })
    .unwrap();
}

#[test]
fn a_failure_starts_the_next_attempt_at_once() {
    testing::run(async {
        let addrs = [addr("10.0.0.1:80"), addr("10.0.0.2:80"), addr("10.0.0.3:80")];
        let (log, drops) = (Log::new(), DropCounter::new());
        let won = race(&addrs, &[Plan::Fail(20), Plan::Fail(30), Plan::Succeed(5)], &log, &drops).await?;
        assert_eq!(won, addrs[2]);
        assert_eq!(log.take(), ["start 10.0.0.1:80 @0", "start 10.0.0.2:80 @20", "start 10.0.0.3:80 @50"]);
        assert_eq!(now(), Instant::ZERO + ms(55));
        Ok::<_, io::Error>(())
    })
    .unwrap();
}

#[test]
fn all_failures_are_reported_together_in_start_order() {
    testing::run(async {
        let addrs = [addr("[::1]:80"), addr("[::2]:80"), addr("10.0.0.1:80")];
        let (log, drops) = (Log::new(), DropCounter::new());
        // The IPv4 address is moved second (RFC 6555 §5.4).
        let plans = [Plan::Fail(300), Plan::Fail(1), Plan::Fail(2)];
        let e = race(&addrs, &plans, &log, &drops).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
        let ce = e.get_ref().unwrap().downcast_ref::<ConnectError>().unwrap();
        let got: Vec<_> = ce.attempts().iter().map(|(a, e)| (*a, e.to_string())).collect();
        assert_eq!(
            got,
            [
                (addrs[0], "refused [::1]:80".to_string()),
                (addrs[2], "refused 10.0.0.1:80".to_string()),
                (addrs[1], "refused [::2]:80".to_string()),
            ]
        );
        assert_eq!(log.take(), ["start [::1]:80 @0", "start 10.0.0.1:80 @250", "start [::2]:80 @252"]);
        assert!(e.to_string().contains("all attempts to connect to [::1]:80 failed"), "{e}");
        Ok::<_, io::Error>(())
    })
    .unwrap();
}

#[test]
fn no_addresses_is_a_clear_error() {
    testing::run(async {
        let e = happy_eyeballs(&[], ms(250), async |a: SocketAddr| Ok(a)).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(e.to_string().contains("no results found for hostname lookup"), "{e}");
        Ok::<_, io::Error>(())
    })
    .unwrap();
}

#[test]
fn a_late_second_success_is_dropped() {
    testing::run(async {
        let addrs = [addr("10.0.0.1:80"), addr("10.0.0.2:80")];
        let drops = DropCounter::new();
        let made = Cell::new(0);
        // Both complete at the same instant; only one is kept.
        let won = happy_eyeballs(&addrs, ms(10), async |a: SocketAddr| {
            let t = if a == addrs[0] { 20 } else { 10 };
            sleep(ms(t)).await?;
            made.set(made.get() + 1);
            Ok((a, drops.token()))
        })
        .await?;
        assert_eq!(won.0, addrs[0], "attempt 1 finishes first, at t=20, in the same batch as attempt 2");
        assert_eq!(made.get(), 2, "both attempts connected");
        assert_eq!(drops.count(), 1, "the late one was dropped");
        Ok::<_, io::Error>(())
    })
    .unwrap();
}

#[test]
fn cancellation_from_outside_propagates_and_drops_every_attempt() {
    testing::run(async {
        let addrs = [addr("10.0.0.1:80"), addr("10.0.0.2:80")];
        let (log, drops) = (Log::new(), DropCounter::new());
        let r = move_on_after(ms(300), async {
            let e = race(&addrs, &[Plan::Hang, Plan::Hang], &log, &drops).await.unwrap_err();
            assert!(Cancelled::from_io(&e).is_some(), "{e:?}");
            Err::<(), _>(e)
        })
        .await;
        assert!(matches!(r, Ok(None)), "the outer scope absorbed it");
        assert_eq!(now(), Instant::ZERO + ms(300));
        assert_eq!(drops.count(), 2);
        assert_eq!(testing::live_tasks(), 1, "only the main task is left");
        Ok::<_, io::Error>(())
    })
    .unwrap();
}

#[test]
fn connect_tcp_to_a_name_and_to_a_closed_port() {
    hatchery::run(async {
        let listener = TcpListener::bind(([127, 0, 0, 1], 0))?;
        let port = listener.local_addr()?.port();
        // A name, resolved on the blocking pool (an IP literal would skip the lookup).
        let s = connect_tcp("localhost", port).await?;
        let (_srv, peer) = listener.accept().await?;
        assert_eq!(peer, s.local_addr()?);
        drop(listener);
        let e = connect_tcp("127.0.0.1", port).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
        assert!(e.get_ref().unwrap().is::<ConnectError>());
        let e = connect_tcp("", 80).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        let e = connect_tcp("no-such-host.invalid", 80).await.unwrap_err();
        assert!(Cancelled::from_io(&e).is_none(), "a lookup failure: {e}");
        Ok::<_, io::Error>(())
    })
    .unwrap();
}

async fn echo_once(conn: TcpStream) -> Result<(), Error> {
    let mut buf = [0; 64];
    let k = conn.read(&mut buf).await?;
    conn.write_all(&buf[..k]).await?;
    Ok(())
}

#[test]
fn serve_tcp_reports_the_bound_address_and_closes_each_stream_when_its_handler_returns() {
    testing::run(async {
        let served = Cell::new(0);
        nursery(async |n| {
            let addr = n
                .start(|status| {
                    serve_tcp(
                        ([127, 0, 0, 1], 0),
                        async |conn: TcpStream| {
                            echo_once(conn).await?;
                            served.set(served.get() + 1);
                            Ok::<_, Error>(())
                        },
                        status,
                    )
                })
                .await?;
            assert_ne!(addr.port(), 0, "port 0 was replaced by the bound port");
            for msg in [&b"one"[..], b"two", b"three"] {
                let c = TcpStream::connect(addr).await?;
                c.write_all(msg).await?;
                let mut buf = [0; 16];
                let k = c.read(&mut buf).await?;
                assert_eq!(&buf[..k], msg);
                assert_eq!(c.read(&mut buf).await?, 0, "the server closed the stream after the handler");
            }
            assert_eq!(served.get(), 3);
            n.cancel_scope().cancel();
            Ok::<_, Error>(())
        })
        .await?;
        Ok::<_, Error>(())
    })
    .unwrap();
}

#[test]
fn cancelling_serve_tcp_cancels_handlers_and_closes_the_listener() {
    testing::run(async {
        let log = Log::new();
        let addr = Cell::new(None);
        // Kept open past the server's end, so that the handler sees its cancellation, not EOF.
        let client = std::cell::RefCell::new(None);
        nursery(async |n| {
            let a = n
                .start(|status| {
                    serve_tcp(
                        ([127, 0, 0, 1], 0),
                        async |conn: TcpStream| {
                            log.push("handler parked");
                            let mut buf = [0; 1];
                            let r = conn.read(&mut buf).await;
                            log.push(format!("handler: {}", if r.is_err() { "cancelled" } else { "read" }));
                            r?;
                            Ok::<_, Error>(())
                        },
                        status,
                    )
                })
                .await?;
            addr.set(Some(a));
            *client.borrow_mut() = Some(TcpStream::connect(a).await?);
            wait_all_tasks_blocked().await?;
            n.cancel_scope().cancel();
            Ok::<_, Error>(())
        })
        .await?;
        assert_eq!(log.take(), ["handler parked", "handler: cancelled"]);
        let e = TcpStream::connect(addr.get().unwrap()).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "the listener is closed");
        assert_eq!(testing::registrations().io_sources, 1, "only the client is left");
        drop(client);
        assert_eq!(testing::registrations().io_sources, 0);
        Ok::<_, Error>(())
    })
    .unwrap();
}

#[test]
fn a_handler_error_crashes_the_server_and_cancels_the_other_handlers() {
    testing::run(async {
        let log = Log::new();
        let r = nursery(async |n| {
            let addr = n
                .start(|status| {
                    serve_tcp(
                        ([127, 0, 0, 1], 0),
                        async |conn: TcpStream| {
                            let mut buf = [0; 8];
                            let k = conn.read(&mut buf).await?;
                            if &buf[..k] == b"bad" {
                                return Err(Error::other("bad request"));
                            }
                            log.push("good handler waits");
                            if let Err(e) = conn.read(&mut buf).await {
                                log.push("good handler cancelled");
                                return Err(e.into());
                            }
                            Ok(())
                        },
                        status,
                    )
                })
                .await?;
            let good = TcpStream::connect(addr).await?;
            good.write_all(b"good").await?;
            wait_all_tasks_blocked().await?;
            let bad = TcpStream::connect(addr).await?;
            bad.write_all(b"bad").await?;
            sleep_forever().await?;
            Ok::<_, Error>(())
        })
        .await;
        let e = r.unwrap_err();
        assert_eq!(e.len(), 1, "only the handler's error; the cancellations were absorbed: {e:?}");
        assert_eq!(e.first().to_string(), "bad request");
        assert_eq!(log.take(), ["good handler waits", "good handler cancelled"]);
        Ok::<_, Error>(())
    })
    .unwrap();
}

#[test]
fn serve_tcp_in_stops_accepting_and_drains_the_connections_in_flight() {
    support::run_with_sockets(async {
        let log = Log::new();
        let started = Instant::ZERO;
        let handler = async |conn: TcpStream| {
            let mut buf = [0; 16];
            let k = conn.read(&mut buf).await?;
            log.push(format!("request {:?} at {:?}", String::from_utf8_lossy(&buf[..k]), now() - started));
            sleep(Duration::from_secs(2)).await?;
            conn.write_all(&buf[..k]).await?;
            log.push(format!("answered at {:?}", now() - started));
            Ok::<_, Error>(())
        };
        let accepting = CancelScope::new();
        let stop = accepting.handle();
        nursery(async |handlers| {
            let a = handlers
                .start(|status| accepting.run(serve_tcp_in(handlers, ([127, 0, 0, 1], 0), &handler, status)))
                .await?;
            let (one, two) = (TcpStream::connect(a).await?, TcpStream::connect(a).await?);
            one.write_all(b"one").await?;
            two.write_all(b"two").await?;
            sleep(Duration::from_secs(1)).await?;
            stop.cancel();
            hatchery::lowlevel::checkpoint().await?; // the serving task sees it
            let refused = TcpStream::connect(a).await.unwrap_err();
            assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused, "the listener is closed at once");
            log.push(format!("stopped accepting at {:?}", now() - started));
            let mut buf = [0; 16];
            for (conn, want) in [(&one, b"one"), (&two, b"two")] {
                let k = conn.read(&mut buf).await?;
                assert_eq!(&buf[..k], want);
            }
            Ok::<_, Error>(())
        })
        .await?;
        assert_eq!(now(), Instant::ZERO + Duration::from_secs(2), "the nursery waited for both handlers");
        let mut lines = log.take();
        lines[..2].sort();
        assert_eq!(
            lines,
            [
                "request \"one\" at 0ns",
                "request \"two\" at 0ns",
                "stopped accepting at 1s",
                "answered at 2s",
                "answered at 2s",
            ]
        );
        assert!(stop.cancelled_caught(), "the serving task's cancellation stayed in its scope");
        assert_eq!(testing::registrations().io_sources, 0, "listener and connections closed");
        Ok::<_, Error>(())
    })
    .unwrap();
}

#[test]
fn a_handler_error_in_serve_tcp_in_goes_to_the_handlers_nursery() {
    support::run_with_sockets(async {
        let handler = async |conn: TcpStream| {
            let mut buf = [0; 8];
            conn.read(&mut buf).await?;
            Err::<(), _>(Error::other("bad request"))
        };
        let r = nursery(async |handlers| {
            let a = handlers
                .start(|status| serve_tcp_in(handlers, ([127, 0, 0, 1], 0), &handler, status))
                .await?;
            let c = TcpStream::connect(a).await?;
            c.write_all(b"x").await?;
            sleep_forever().await?;
            Ok::<_, Error>(())
        })
        .await;
        let e = r.unwrap_err();
        assert_eq!(e.len(), 1, "the handler's error; the serving task's cancellation was absorbed: {e:?}");
        assert_eq!(e.first().to_string(), "bad request");
        assert_eq!(testing::registrations().io_sources, 0, "the listener closed with the nursery");
        Ok::<_, Error>(())
    })
    .unwrap();
}
