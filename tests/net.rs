//! Sockets: what is particular to each socket type (TCP, UDP, Unix): options, listeners,
//! datagrams, halves, the `futures-io` impls, resets. The rules every byte stream shares (S9.1–S9.3:
//! checkpoints, `BusyResource`, close, cancelled and dropped reads and writes) are checked once for
//! every kind of stream in `stream_conformance.rs`.

mod support;

use std::io;
use std::net::Shutdown;
use std::time::Duration;

use hatchery::net::{TcpListener, TcpStream, UdpSocket, UnixDatagram, UnixStream};
use hatchery::testing::{self, wait_all_tasks_blocked};
use hatchery::{BusyResource, ClosedResource, move_on_after, nursery};

use support::{cancelled_scope, inner, tcp_pair};

#[test]
fn tcp_round_trip_and_eof() {
    hatchery::run(async {
        let (a, b) = tcp_pair().await?;
        assert!(a.nodelay()?, "TCP_NODELAY is on by default (S9.2)");
        a.write_all(b"hello").await?;
        let mut buf = [0; 16];
        let n = b.read(&mut buf).await?;
        assert_eq!(&buf[..n], b"hello");
        a.shutdown(Shutdown::Write).await?;
        a.shutdown(Shutdown::Write).await?; // idempotent
        assert_eq!(b.read(&mut buf).await?, 0);
        assert_eq!(b.read(&mut buf).await?, 0, "EOF stays EOF");
        let e = a.write_all(b"x").await.unwrap_err();
        assert!(inner::<ClosedResource>(&e.error).is_some(), "{e:?}");
        assert_eq!(e.written, 0);
        Ok::<_, io::Error>(())
    })
    .unwrap();
}

/// Raw descriptors in and out (socket activation hands a server its listener as a descriptor):
/// a listener, the stream it accepts and a datagram pair go through `OwnedFd` and keep working.
#[test]
fn sockets_convert_from_and_into_owned_fds() {
    use std::os::fd::{AsRawFd, OwnedFd};
    hatchery::run(async {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = std_listener.local_addr()?;
        let raw = std_listener.as_raw_fd();
        let listener = TcpListener::try_from(OwnedFd::from(std_listener))?;
        assert_eq!((listener.as_raw_fd(), listener.local_addr()?), (raw, addr));
        let client = TcpStream::connect(addr).await?;
        let (served, peer) = listener.accept().await?;
        assert_eq!(peer, client.local_addr()?);
        // Out, as a descriptor, into `std` (non-blocking), and back in.
        let fd = OwnedFd::from(served);
        let std_served = std::net::TcpStream::from(fd);
        assert_eq!(std_served.peer_addr()?, client.local_addr()?);
        let served = TcpStream::try_from(OwnedFd::from(std_served))?;
        client.write_all(b"ping").await?;
        let mut got = Vec::new();
        while got.len() < 4 {
            let mut buf = [0; 4];
            let n = served.read(&mut buf).await?;
            assert!(n > 0, "early end of stream");
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, b"ping");
        let listener = std::net::TcpListener::from(OwnedFd::from(listener));
        assert_eq!(listener.local_addr()?, addr);

        let (a, b) = UnixDatagram::pair()?;
        let a = UnixDatagram::try_from(OwnedFd::from(a))?;
        let b = UnixDatagram::try_from(OwnedFd::from(b))?;
        a.send(b"dgram").await?;
        let mut buf = [0; 16];
        let n = b.recv(&mut buf).await?;
        assert_eq!(&buf[..n], b"dgram");
        Ok::<_, io::Error>(())
    })
    .unwrap();
}

/// A listener's connections as a stream: each item is an `accept`, with its rules (S9.1): a
/// cancelled item accepts nothing, a dropped wait leaves nothing registered, and a second
/// acceptor meanwhile is told the listener is busy.
#[test]
fn incoming_yields_connections_and_loses_none_when_cancelled() {
    use hatchery::Cancelled;
    use std::pin::pin;
    use support::{next, poll_once};
    hatchery::run(async {
        let listener = TcpListener::bind(([127, 0, 0, 1], 0))?;
        let addr = listener.local_addr()?;
        let mut incoming = listener.incoming();
        let mut clients = Vec::new();
        for _ in 0..3 {
            clients.push(TcpStream::connect(addr).await?);
        }
        for c in &clients {
            let (served, peer) = next(&mut incoming).await.expect("never ends")?;
            assert_eq!((peer, served.peer_addr()?), (c.local_addr()?, c.local_addr()?));
        }
        // Cancelled with a connection queued: nothing accepted, the next accept gets it.
        let queued = TcpStream::connect(addr).await?;
        let r = support::in_cancelled_scope(next(&mut incoming)).await.expect("never ends");
        let e = r.expect_err("cancelled");
        assert!(Cancelled::from_io(&e).is_some(), "{e:?}");
        let (_, peer) = listener.accept().await?;
        assert_eq!(peer, queued.local_addr()?);
        // A wait in progress: another acceptor is busy; dropped, it leaves nothing behind.
        let base = testing::registrations();
        {
            let mut waiting = listener.incoming();
            assert!(poll_once(pin!(next(&mut waiting))).await.is_pending());
            let e = listener.accept().await.expect_err("busy");
            assert!(inner::<BusyResource>(&e).is_some(), "{e:?}");
        }
        assert_eq!(testing::registrations(), base);
        Ok::<_, io::Error>(())
    })
    .unwrap();
}

/// The same for a Unix listener: its `incoming` yields the connections, in order.
#[test]
fn unix_incoming_yields_connections() {
    let (dir, path) = socket_path("incoming");
    hatchery::run(async {
        let listener = hatchery::net::UnixListener::bind(&path)?;
        let mut incoming = listener.incoming();
        let a = UnixStream::connect(&path).await?;
        let b = UnixStream::connect(&path).await?;
        for (i, c) in [a, b].iter().enumerate() {
            let (served, _) = support::next(&mut incoming).await.expect("never ends")?;
            served.write_all(&[i as u8]).await?;
            let mut buf = [9; 1];
            assert_eq!(c.read(&mut buf).await?, 1);
            assert_eq!(buf, [i as u8]);
        }
        Ok::<_, io::Error>(())
    })
    .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn udp_and_unix_datagrams() {
    hatchery::run(async {
        let a = UdpSocket::bind(([127, 0, 0, 1], 0))?;
        let b = UdpSocket::bind(([127, 0, 0, 1], 0))?;
        b.connect(a.local_addr()?)?;
        b.send(b"one").await?;
        let mut buf = [0; 8];
        let (n, from) = a.recv_from(&mut buf).await?;
        assert_eq!((&buf[..n], from), (&b"one"[..], b.local_addr()?));
        let (x, y) = UnixDatagram::pair()?;
        x.send(b"d1").await?;
        // A cancelled recv takes nothing.
        let r = cancelled_scope().run(async { y.recv(&mut buf).await }).await;
        assert!(matches!(r, Ok(None)));
        assert_eq!(y.recv(&mut buf).await?, 2);
        Ok::<_, io::Error>(())
    })
    .unwrap();
}

#[test]
fn every_socket_operation_is_a_checkpoint_even_when_it_completes_at_once_s9_1() {
    use hatchery::testing::assert_checkpoints;
    hatchery::run(async {
        // Streams: data already waiting, room to write.
        let (a, b) = UnixStream::pair()?;
        b.write_all(b"xy").await?;
        let mut buf = [0; 8];
        wait_all_tasks_blocked().await.ok();
        assert_eq!(assert_checkpoints(a.read(&mut buf)).await?, 2);
        assert_eq!(assert_checkpoints(a.write(b"z")).await?, 1);
        assert_checkpoints(a.write_all(b"zz")).await?;
        assert_checkpoints(a.writable()).await?;
        assert_checkpoints(b.readable()).await?;
        assert_checkpoints(a.shutdown(Shutdown::Write)).await?;
        // A listener with a connection already queued.
        let listener = TcpListener::bind(([127, 0, 0, 1], 0))?;
        let _c = std::net::TcpStream::connect(listener.local_addr()?)?;
        assert_checkpoints(listener.accept()).await?;
        assert_checkpoints(TcpStream::connect(listener.local_addr()?)).await?;
        // Datagrams: one queued.
        let u = UdpSocket::bind(([127, 0, 0, 1], 0))?;
        assert_checkpoints(u.send_to(b"d", u.local_addr()?)).await?;
        assert_eq!(assert_checkpoints(u.recv_from(&mut buf)).await?.0, 1);
        let (x, y) = UnixDatagram::pair()?;
        assert_checkpoints(x.send(b"d")).await?;
        assert_eq!(assert_checkpoints(y.recv(&mut buf)).await?, 1);
        Ok::<_, io::Error>(())
    })
    .unwrap();
}

#[test]
fn a_cancelled_accept_takes_no_connection() {
    testing::run(async {
        let listener = TcpListener::bind(([127, 0, 0, 1], 0))?;
        let addr = listener.local_addr()?;
        let r = move_on_after(Duration::from_secs(1), listener.accept()).await;
        assert!(matches!(r, Ok(None)));
        let client = std::net::TcpStream::connect(addr)?;
        let r = cancelled_scope().run(listener.accept()).await;
        assert!(matches!(r, Ok(None)), "cancelled before it ran");
        let (_s, peer) = listener.accept().await?;
        assert_eq!(peer, client.local_addr()?, "the queued connection was still there");
        Ok::<_, io::Error>(())
    })
    .unwrap();
}

#[test]
fn owned_halves_work_from_two_tasks_and_reunite() {
    testing::run(async {
        let (a, b) = UnixStream::pair()?;
        let (r, w) = a.into_split();
        nursery(async |n| {
            n.start_soon(async {
                let mut buf = [0; 5];
                let k = r.read(&mut buf).await?;
                assert_eq!(&buf[..k], b"hello");
                Ok::<_, io::Error>(())
            });
            n.start_soon(async {
                w.write_all(b"ping").await?;
                Ok(())
            });
            b.write_all(b"hello").await?;
            let mut buf = [0; 4];
            assert_eq!(b.read(&mut buf).await?, 4);
            Ok(())
        })
        .await
        .map_err(|e| e.into_first())?;
        let a = UnixStream::reunite(r, w).expect("same stream");
        // Reuniting did not shut writing down.
        a.write_all(b"!").await?;
        let mut buf = [0; 1];
        assert_eq!(b.read(&mut buf).await?, 1);
        // Dropping an owned write half does.
        let (_r, w) = a.into_split();
        drop(w);
        assert_eq!(b.read(&mut buf).await?, 0);
        Ok::<_, io::Error>(())
    })
    .unwrap();
}

#[test]
fn futures_io_traits_read_and_write_and_fail_with_cancelled_when_they_would_block() {
    use std::future::poll_fn;
    use std::pin::Pin;
    testing::run(async {
        let (mut a, b) = UnixStream::pair()?;
        b.write_all(b"abc").await?;
        let mut buf = [0; 8];
        let n = poll_fn(|cx| futures_io::AsyncRead::poll_read(Pin::new(&mut a), cx, &mut buf)).await?;
        assert_eq!(&buf[..n], b"abc");
        let n = poll_fn(|cx| futures_io::AsyncWrite::poll_write(Pin::new(&mut &b), cx, b"de")).await?;
        assert_eq!(n, 2);
        let n = poll_fn(|cx| futures_io::AsyncRead::poll_read(Pin::new(&mut a), cx, &mut buf)).await?;
        assert_eq!(&buf[..n], b"de");
        // Would block, in a cancelled scope: Cancelled, and nothing consumed.
        let r = move_on_after(Duration::from_secs(1), async {
            poll_fn(|cx| futures_io::AsyncRead::poll_read(Pin::new(&mut a), cx, &mut buf)).await
        })
        .await;
        assert!(matches!(r, Ok(None)), "{r:?}");
        b.write_all(b"f").await?;
        let n = poll_fn(|cx| futures_io::AsyncRead::poll_read(Pin::new(&mut a), cx, &mut buf)).await?;
        assert_eq!(&buf[..n], b"f");
        // poll_close shuts down writing.
        poll_fn(|cx| futures_io::AsyncWrite::poll_close(Pin::new(&mut a), cx)).await?;
        assert_eq!(b.read(&mut buf).await?, 0);
        Ok::<_, io::Error>(())
    })
    .unwrap();
}

/// Two tasks poll-style read through copies of one `ReadHalf` (the rule for two poll-style
/// waiters, `stream_conformance`'s `poll_style_readers_in_two_tasks_the_second_is_busy`, holds
/// through the halves, which share the stream's state): each poller is woken once by the
/// other and polls again, so both are live, and the second fails with `BusyResource`; the
/// first gets the data. Each poll is counted: more than 50 (a livelock) fails instead of hanging.
async fn poll_style_half_readers_in_two_tasks<R>(
    half: R,
    write: impl AsyncFnOnce() -> io::Result<()>,
) -> io::Result<()>
where
    R: futures_io::AsyncRead + Copy + Unpin,
{
    use std::cell::Cell;
    use std::pin::Pin;
    let polls = [Cell::new(0), Cell::new(0)];
    nursery(async |n| {
        let read = |i: usize| {
            let (mut half, polls) = (half, &polls[i]);
            async move {
                let mut buf = [0; 4];
                let r = std::future::poll_fn(|cx| {
                    polls.set(polls.get() + 1);
                    if polls.get() > 50 {
                        return std::task::Poll::Ready(Err(io::Error::other("a livelock")));
                    }
                    Pin::new(&mut half).poll_read(cx, &mut buf)
                })
                .await;
                Ok::<_, io::Error>(r.map(|k| buf[..k].to_vec()))
            }
        };
        let first = n.spawn(read(0));
        wait_all_tasks_blocked().await?;
        let second = n.spawn(read(1));
        wait_all_tasks_blocked().await?;
        assert!(second.is_finished(), "the second reader must have failed with BusyResource");
        let e = second.await?.unwrap_err();
        assert!(support::is::<BusyResource>(&e), "{e:?}");
        assert_eq!((polls[0].get(), polls[1].get()), (2, 2));
        write().await?;
        assert_eq!(first.await??, b"xyz");
        assert_eq!(polls[0].get(), 3);
        Ok::<_, io::Error>(())
    })
    .await
    .map_err(|e| e.into_first())?;
    Ok(())
}

#[test]
fn poll_style_half_readers_in_two_tasks_the_second_is_busy() {
    support::run_with_sockets(support::watchdog(async {
        let (a, b) = tcp_pair().await?;
        poll_style_half_readers_in_two_tasks(a.split().0, async || Ok(b.write_all(b"xyz").await?)).await?;
        let (a, b) = UnixStream::pair()?;
        let (r, _w) = a.into_split();
        poll_style_half_readers_in_two_tasks(r.stream().split().0, async || Ok(b.write_all(b"xyz").await?))
            .await
    }))
    .unwrap();
}

#[test]
fn end_of_stream_queued_behind_data_is_seen_after_a_short_read() {
    // The data and the FIN arrive together, as one edge: the short read that drains the data
    // must not hide the end of stream (found by the chaos tests).
    testing::run(async {
        for (a, b) in [tcp_pair().await?, tcp_pair().await?] {
            a.write_all(b"hello").await?;
            a.shutdown(Shutdown::Write).await?;
            wait_all_tasks_blocked().await.ok();
            let mut buf = [0; 64];
            assert_eq!(b.read(&mut buf).await?, 5);
            let r = move_on_after(Duration::from_secs(2), b.read(&mut buf)).await?;
            assert_eq!(r, Some(0), "end of stream, not a hang");
            b.write_all(b"still open the other way").await?;
        }
        let (a, b) = UnixStream::pair()?;
        a.write_all(b"hello").await?;
        drop(a);
        let mut buf = [0; 64];
        assert_eq!(b.read(&mut buf).await?, 5);
        assert_eq!(move_on_after(Duration::from_secs(2), b.read(&mut buf)).await?, Some(0));
        Ok::<_, io::Error>(())
    })
    .unwrap();
}

#[test]
fn close_with_reset_makes_the_peers_read_fail_with_connection_reset() {
    hatchery::run(async {
        let (a, b) = tcp_pair().await?;
        assert_eq!(a.linger()?, None, "the kernel's default");
        a.write_all(b"before").await?;
        let mut buf = [0; 16];
        assert_eq!(b.read(&mut buf).await?, 6);
        a.close_with_reset();
        a.close_with_reset(); // idempotent
        assert!(a.is_closed());
        assert_eq!(a.linger()?, Some(Duration::ZERO));
        let e = a.read(&mut buf).await.unwrap_err();
        assert!(inner::<ClosedResource>(&e).is_some(), "{e:?}");
        // A close after the reset sends no end of stream: the peer's next read sees the reset,
        // not a 0.
        a.close();
        drop(a);
        let e = b.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e:?}");
        Ok::<_, io::Error>(())
    })
    .unwrap();
}

#[test]
fn close_with_reset_wakes_tasks_blocked_on_the_stream_with_closed_resource() {
    testing::run(async {
        let (a, b) = tcp_pair().await?;
        // More than loopback buffers when nobody reads.
        let big = vec![7u8; 32 << 20];
        nursery(async |n| {
            let reader = n.spawn(async {
                let mut buf = [0; 8];
                Ok::<_, hatchery::Error>(a.read(&mut buf).await)
            });
            let writer = n.spawn(async { Ok::<_, hatchery::Error>(a.write_all(&big).await) });
            wait_all_tasks_blocked().await?;
            a.close_with_reset();
            let e = reader.await?.unwrap_err();
            assert!(inner::<ClosedResource>(&e).is_some(), "{e:?}");
            let e = writer.await?.unwrap_err();
            assert!(inner::<ClosedResource>(&e.error).is_some(), "{e:?}");
            assert!(e.written > 0 && e.written < big.len(), "blocked part way: {}", e.written);
            Ok::<_, hatchery::Error>(())
        })
        .await
        .unwrap();
        drop(a);
        // The peer reads on (the kernel may still hand over what had arrived) until the reset.
        let mut buf = vec![0; 1 << 16];
        let e = loop {
            match b.read(&mut buf).await {
                Ok(0) => panic!("an end of stream instead of a reset"),
                Ok(_) => {}
                Err(e) => break e,
            }
        };
        assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e:?}");
        Ok::<_, io::Error>(())
    })
    .unwrap();
}

#[test]
fn set_linger_takes_none_or_zero_and_a_zero_linger_resets_on_drop() {
    hatchery::run(async {
        let (a, b) = tcp_pair().await?;
        let e = a.set_linger(Some(Duration::from_secs(5))).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "a lingering close would block the run");
        assert_eq!(a.linger()?, None, "unchanged");
        a.set_linger(Some(Duration::ZERO))?;
        assert_eq!(a.linger()?, Some(Duration::ZERO));
        a.set_linger(None)?;
        assert_eq!(a.linger()?, None);
        a.set_linger(Some(Duration::ZERO))?;
        assert!(!a.is_closed(), "setting the option closes nothing");
        a.write_all(b"x").await?;
        let mut buf = [0; 4];
        assert_eq!(b.read(&mut buf).await?, 1);
        drop(a);
        let e = b.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e:?}");
        Ok::<_, io::Error>(())
    })
    .unwrap();
}

/// Runs `f` on its own thread and fails if it does not finish within `limit` of real time: for
/// a regression that would spin the run without ever yielding, where no deadline can fire.
fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(f()).unwrap());
    rx.recv_timeout(limit).expect("the run did not finish: it spins")
}

#[test]
fn a_datagram_error_reported_once_does_not_leave_the_socket_ready_for_ever() {
    // An ICMP port-unreachable makes the kernel report EPOLLERR once; `recv` returns the error,
    // and the next `recv` blocks (EAGAIN). That `WouldBlock` must clear the reported end: the
    // socket used to stay "ready", so the next `recv` retried its syscall for ever.
    within(Duration::from_secs(30), || {
        support::run_with_sockets(async {
            let dead = std::net::UdpSocket::bind("127.0.0.1:0")?;
            let dead_addr = dead.local_addr()?;
            drop(dead);
            let u = UdpSocket::bind(([127, 0, 0, 1], 0))?;
            u.connect(dead_addr)?;
            u.send(b"x").await?;
            let mut buf = [0u8; 8];
            let e = u.recv(&mut buf).await.unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
            let r = move_on_after(Duration::from_secs(1), u.recv(&mut buf)).await;
            assert!(matches!(r, Ok(None)), "{r:?}");
            // And it still works: a datagram that comes later wakes a waiting `recv` (on the
            // oneshot backends the error took the idle socket out of the poller; the wait puts
            // it back).
            let v = UdpSocket::bind(([127, 0, 0, 1], 0))?;
            u.connect(v.local_addr()?)?;
            let got = nursery(async |n| {
                let got = n.spawn(async { u.recv(&mut buf).await });
                wait_all_tasks_blocked().await?;
                v.send_to(b"late", u.local_addr()?).await?;
                Ok::<_, io::Error>(got.await?)
            })
            .await
            .map_err(|e| e.into_first())?
            .expect("not cancelled");
            assert_eq!(got, 4);
            Ok::<_, io::Error>(())
        })
    })
    .unwrap();
}

#[test]
fn a_read_whose_stream_is_closed_at_its_schedule_point_does_not_run() {
    // With a yield budget of 0 the read yields before its syscall; the stream is closed
    // meanwhile: the read fails with `ClosedResource` (as a waiting one would) instead of
    // taking the byte from a stream its owner has given up.
    support::sockets_builder()
        .yield_budget(0)
        .run(async {
            let (a, b) = UnixStream::pair()?;
            b.write_all(b"x").await?;
            a.readable().await?; // the reactor knows: the read will try its syscall
            let mut buf = [0u8; 8];
            let mut read = std::pin::pin!(a.read(&mut buf));
            assert!(support::poll_once(read.as_mut()).await.is_pending(), "it yields first");
            a.close();
            let e = read.await.unwrap_err();
            assert!(e.get_ref().is_some_and(|e| e.is::<ClosedResource>()), "{e:?}");
            Ok::<_, io::Error>(())
        })
        .unwrap();
}

/// A connect that fails before it can wait (ENOENT for a missing socket file) still yields: a
/// loop retrying it lets the task that will bind the socket run (Trio's `_try_sync`).
#[test]
fn a_connect_that_fails_at_once_is_a_checkpoint_and_a_retry_loop_lets_the_listener_run() {
    let (dir, path) = socket_path("retry");
    let missing = dir.join("missing");
    let attempts = hatchery::run(async {
        let e = testing::assert_checkpoints(UnixStream::connect(&missing)).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        nursery(async |n| {
            let path = &path;
            n.start_soon(async move {
                // Binds only once the client has failed a few times (it runs after them).
                hatchery::lowlevel::checkpoint().await?;
                let listener = hatchery::net::UnixListener::bind(path)?;
                let (s, _) = listener.accept().await?;
                s.write_all(b"k").await?;
                Ok::<_, io::Error>(())
            });
            let mut attempts = 0u32;
            let client = loop {
                attempts += 1;
                match UnixStream::connect(path).await {
                    Ok(c) => break c,
                    Err(e) => assert!(matches!(
                        e.kind(),
                        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                    )),
                }
            };
            let mut buf = [0; 1];
            assert_eq!(client.read(&mut buf).await?, 1);
            Ok(attempts)
        })
        .await
    })
    .unwrap()
    .unwrap();
    assert!(attempts >= 2, "the listener was there at once ({attempts} attempt)");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A NUL byte in a Unix socket path is refused by `connect` as by `bind`: the kernel would
/// stop the name at it and connect to another file.
#[test]
fn a_unix_connect_refuses_a_path_with_a_nul_byte() {
    let (dir, path) = socket_path("nul");
    hatchery::run(async {
        let _listener = hatchery::net::UnixListener::bind(&path)?;
        let mut bad = path.clone().into_os_string();
        bad.push("\0junk");
        let e = UnixStream::connect(&bad).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
        assert_eq!(hatchery::net::UnixListener::bind(&bad).unwrap_err().kind(), io::ErrorKind::InvalidInput);
        Ok::<_, io::Error>(())
    })
    .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A shutdown whose stream is closed (with a reset) while it yields does not act: the peer
/// sees the reset, not an end of stream first.
#[test]
fn a_shutdown_whose_stream_is_closed_at_its_checkpoint_does_not_run() {
    support::run_with_sockets(async {
        let (a, b) = tcp_pair().await?;
        {
            let mut sd = std::pin::pin!(a.shutdown(Shutdown::Write));
            assert!(support::poll_once(sd.as_mut()).await.is_pending(), "a checkpoint yields");
            a.close_with_reset();
            let e = sd.await.unwrap_err();
            assert!(support::is::<ClosedResource>(&e), "{e:?}");
        }
        // So do an empty write and write_all.
        let (c, _d) = tcp_pair().await?;
        {
            let mut w = std::pin::pin!(c.write(b""));
            assert!(support::poll_once(w.as_mut()).await.is_pending());
            c.close();
            assert!(support::is::<ClosedResource>(&w.await.unwrap_err()));
        }
        drop(a);
        let mut buf = [0; 1];
        let e = b.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e:?}");
        Ok::<_, io::Error>(())
    })
    .unwrap();
}

/// A fresh directory for this test's Unix socket files (named after `tag` and the process),
/// and the path of a socket in it, not bound yet.
fn socket_path(tag: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("hatchery-net-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("sock");
    let _ = std::fs::remove_file(&path);
    (dir, path)
}

#[test]
fn closing_a_listener_or_datagram_socket_wakes_its_waiter_with_closed_resource() {
    let (dir, path) = socket_path("close-listener");
    testing::run(async {
        let tcp = TcpListener::bind(([127, 0, 0, 1], 0))?;
        let unix = hatchery::net::UnixListener::bind(&path)?;
        let udp = UdpSocket::bind(([127, 0, 0, 1], 0))?;
        let (dgram, _peer) = UnixDatagram::pair()?;
        nursery(async |n| {
            let tcp_accept = n.spawn(async { Ok::<_, hatchery::Error>(tcp.accept().await.map(|_| ())) });
            let unix_accept = n.spawn(async { Ok::<_, hatchery::Error>(unix.accept().await.map(|_| ())) });
            let udp_recv =
                n.spawn(async { Ok::<_, hatchery::Error>(udp.recv_from(&mut [0; 8]).await.map(|_| ())) });
            let dgram_recv =
                n.spawn(async { Ok::<_, hatchery::Error>(dgram.recv(&mut [0; 8]).await.map(|_| ())) });
            wait_all_tasks_blocked().await?;
            assert!(!tcp.is_closed() && !udp.is_closed());
            tcp.close();
            unix.close();
            udp.close();
            dgram.close();
            tcp.close(); // idempotent
            for r in [tcp_accept.await?, unix_accept.await?, udp_recv.await?, dgram_recv.await?] {
                let e = r.unwrap_err();
                assert!(inner::<ClosedResource>(&e).is_some(), "{e:?}");
            }
            assert!(tcp.is_closed() && unix.is_closed() && udp.is_closed() && dgram.is_closed());
            // Later operations fail the same way, without reaching the socket: a connection
            // queued for the closed listener is not accepted.
            let _client = std::net::TcpStream::connect(tcp.local_addr()?)?;
            let e = tcp.accept().await.unwrap_err();
            assert!(inner::<ClosedResource>(&e).is_some(), "{e:?}");
            let e = udp.send_to(b"x", udp.local_addr()?).await.unwrap_err();
            assert!(inner::<ClosedResource>(&e).is_some(), "{e:?}");
            Ok::<_, hatchery::Error>(())
        })
        .await
        .unwrap();
        Ok::<_, io::Error>(())
    })
    .unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}
