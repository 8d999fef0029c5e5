//! The readiness reactor through `lowlevel::IoSource`, on socket pairs and pipes: waits, busy and
//! closed resources, cancellation, registrations, EOF, back-pressure and cross-thread wake-ups (S9.1).
#![cfg(unix)]

mod support;

use std::cell::Cell;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::time::Duration;

use hatchery::lowlevel::IoSource;
use hatchery::testing::{self, registrations, wait_all_tasks_blocked};
use hatchery::{
    BusyResource, CancelScope, Cancelled, ClosedResource, fail_after, move_on_after, now, nursery, sleep,
};
use support::{at, counting_forward, inner, poll_once, poll_once_foreign, secs};

/// A connected, non-blocking socket pair, both ends registered.
fn socket_pair() -> io::Result<(IoSource<UnixStream>, IoSource<UnixStream>)> {
    let (a, b) = UnixStream::pair()?;
    a.set_nonblocking(true)?;
    b.set_nonblocking(true)?;
    Ok((IoSource::new(a)?, IoSource::new(b)?))
}

/// A non-blocking pipe: (read end, write end), both registered.
fn pipe() -> io::Result<(IoSource<File>, IoSource<File>)> {
    let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::NONBLOCK).map_err(io::Error::from)?;
    Ok((IoSource::new(File::from(r))?, IoSource::new(File::from(w))?))
}

/// Reads what is there, waiting for readability if nothing is.
async fn read_some<T: AsFd>(src: &IoSource<T>, buf: &mut [u8]) -> io::Result<usize>
where
    for<'a> &'a T: Read,
{
    src.read_with(|mut s| s.read(buf)).await
}

/// Writes what fits, waiting for writability if nothing does.
async fn write_some<T: AsFd>(src: &IoSource<T>, data: &[u8]) -> io::Result<usize>
where
    for<'a> &'a T: Write,
{
    src.write_with(|mut s| s.write(data)).await
}

/// Whether a non-blocking read on `src` right now would block (nothing buffered).
fn nothing_buffered<T: AsFd>(src: &IoSource<T>) -> bool
where
    for<'a> &'a T: Read,
{
    let mut buf = [0u8; 1];
    matches!(src.get_ref().read(&mut buf), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

/// A reader blocks until another task writes; it gets exactly the bytes written.
async fn reader_waits_for_writer<R: AsFd, W: AsFd>(r: &IoSource<R>, w: &IoSource<W>) -> io::Result<Vec<u8>>
where
    for<'a> &'a R: Read,
    for<'a> &'a W: Write,
{
    let done = Cell::new(false);
    let got = nursery(async |n| {
        let h = n.spawn(async {
            let mut buf = [0u8; 64];
            let k = read_some(r, &mut buf).await?;
            done.set(true);
            Ok::<_, io::Error>(buf[..k].to_vec())
        });
        wait_all_tasks_blocked().await?;
        assert!(!done.get(), "the reader must wait for data");
        assert_eq!(write_some(w, b"hello").await?, 5);
        Ok(h.await?)
    })
    .await?;
    Ok(got.expect("the nursery was not cancelled"))
}

#[test]
fn read_waits_for_a_write_on_a_socket_pair() {
    let got = testing::run(async {
        let (a, b) = socket_pair()?;
        let got = reader_waits_for_writer(&a, &b).await?;
        assert_eq!(now(), at(0), "I/O waits do not move the virtual clock");
        Ok::<_, io::Error>(got)
    });
    assert_eq!(got.unwrap(), b"hello");
}

#[test]
fn read_waits_for_a_write_on_a_pipe() {
    let got = testing::run(async {
        let (r, w) = pipe()?;
        reader_waits_for_writer(&r, &w).await
    });
    assert_eq!(got.unwrap(), b"hello");
}

#[test]
fn readable_and_writable_report_readiness_without_consuming() {
    testing::run(async {
        let (a, b) = socket_pair()?;
        // A fresh socket can be written at once.
        a.writable().await?;
        b.writable().await?;
        assert_eq!(now(), at(0));
        // Nothing to read: readable waits (here until a timeout gives up).
        assert_eq!(move_on_after(secs(1), a.readable()).await?, None);
        assert_eq!(now(), at(1));

        b.get_ref().write_all(b"xy")?;
        a.readable().await?;
        // Readiness is not consumed by waiting for it: the data is still there, and asking
        // again answers at once.
        a.readable().await?;
        assert_eq!(now(), at(1));
        let calls = Cell::new(0);
        let mut buf = [0u8; 8];
        let k = a
            .read_with(|mut s| {
                calls.set(calls.get() + 1);
                s.read(&mut buf)
            })
            .await?;
        assert_eq!((&buf[..k], calls.get()), (&b"xy"[..], 1));

        // Drained: the next read's syscall says WouldBlock once, and then it waits.
        calls.set(0);
        let r = move_on_after(
            secs(1),
            a.read_with(|mut s| {
                calls.set(calls.get() + 1);
                s.read(&mut buf)
            }),
        )
        .await?;
        assert_eq!(r, None);
        assert_eq!(calls.get(), 1);
        assert_eq!(now(), at(2));
        // And readable() knows the direction is no longer ready.
        assert_eq!(move_on_after(secs(1), a.readable()).await?, None);
        assert_eq!(now(), at(3));
        Ok::<_, io::Error>(())
    })
    .unwrap();
}

#[test]
fn a_second_reader_gets_busy_resource_s9_1() {
    testing::run(async {
        let (a, b) = socket_pair()?;
        let got = nursery(async |n| {
            let first = n.spawn(async {
                let mut buf = [0u8; 16];
                let k = read_some(&a, &mut buf).await?;
                Ok::<_, io::Error>(buf[..k].to_vec())
            });
            wait_all_tasks_blocked().await?;

            let calls = Cell::new(0);
            let mut buf = [0u8; 16];
            let e = a
                .read_with(|mut s| {
                    calls.set(calls.get() + 1);
                    s.read(&mut buf)
                })
                .await
                .unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::ResourceBusy);
            let busy = inner::<BusyResource>(&e).expect("a BusyResource inside");
            assert!(busy.to_string().contains("read"), "{busy}");
            // In edge mode the reactor knows the socket is not readable and does not try; in
            // oneshot mode (the poll(2) backend) the op runs once (WouldBlock) first.
            let expected_calls = if cfg!(polling_test_poll_backend) { 1 } else { 0 };
            assert_eq!(calls.get(), expected_calls, "then the wait was refused");

            let e = a.readable().await.unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::ResourceBusy);
            assert!(inner::<BusyResource>(&e).is_some());

            // The first reader is undisturbed and gets the data.
            write_some(&b, b"data").await?;
            Ok(first.await?)
        })
        .await?;
        assert_eq!(got, Some(b"data".to_vec()));
        // Once the first reader is done, reading is free again.
        write_some(&b, b"more").await?;
        let mut buf = [0u8; 16];
        assert_eq!(read_some(&a, &mut buf).await?, 4);
        Ok::<_, io::Error>(())
    })
    .unwrap();
}

/// One task waits to read while another waits for (and gets) writability on the same source; the
/// write-side event must not leave the reader deaf to the data that follows.
#[test]
fn read_and_write_waits_on_one_source_are_independent_s9_1() {
    let got = testing::run(async {
        let (a, b) = socket_pair()?;
        nursery(async |n| {
            let reader = n.spawn(async {
                let mut buf = [0u8; 16];
                let k = read_some(&a, &mut buf).await?;
                Ok::<_, io::Error>(buf[..k].to_vec())
            });
            wait_all_tasks_blocked().await?;
            // The other direction is free (not busy) and ready.
            a.writable().await?;
            write_some(&b, b"data").await?;
            // Bounded: on the virtual clock a reader that is never woken makes this fail at once
            // (and the nursery then cancels it) instead of hanging.
            fail_after(secs(10), async { Ok::<_, io::Error>(reader.await?) }).await
        })
        .await
        .map_err(io::Error::from)
    });
    assert_eq!(got.unwrap(), Some(b"data".to_vec()));
}

#[test]
fn notify_closing_wakes_a_blocked_reader_and_fails_later_waits_s9_1() {
    testing::run(async {
        let (a, _b) = socket_pair()?;
        let woke_with = nursery(async |n| {
            let reader = n.spawn(async {
                let mut buf = [0u8; 16];
                Ok::<_, io::Error>(read_some(&a, &mut buf).await)
            });
            wait_all_tasks_blocked().await?;
            a.notify_closing();
            Ok(reader.await?)
        })
        .await?
        .unwrap();
        let e = woke_with.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotConnected);
        assert!(inner::<ClosedResource>(&e).is_some(), "{e}");
        assert_eq!(now(), at(0));

        // Every later wait fails the same way, at once, in both directions.
        for e in [a.readable().await.unwrap_err(), a.writable().await.unwrap_err()] {
            assert!(inner::<ClosedResource>(&e).is_some(), "{e}");
        }
        let mut buf = [0u8; 4];
        let e = read_some(&a, &mut buf).await.unwrap_err();
        assert!(inner::<ClosedResource>(&e).is_some(), "{e}");
        // Idempotent.
        a.notify_closing();
        assert!(inner::<ClosedResource>(&a.readable().await.unwrap_err()).is_some());
        // The poll-style operations too, without running the syscall (data is there to read).
        std::io::Write::write_all(&mut _b.get_ref(), b"x")?;
        let ran = Cell::new(false);
        let mut park = hatchery::lowlevel::Park::new();
        let polled = std::future::poll_fn(|cx| {
            std::task::Poll::Ready(a.poll_read_with(cx, &mut park, |s| {
                ran.set(true);
                (&*s).read(&mut buf)
            }))
        })
        .await;
        let std::task::Poll::Ready(Err(e)) = polled else {
            panic!("a poll-style read of a closed source went on")
        };
        assert!(inner::<ClosedResource>(&e).is_some(), "{e}");
        assert!(!ran.get(), "the syscall ran on a closed source");
        assert_eq!(now(), at(0));
        Ok::<_, io::Error>(())
    })
    .unwrap();
}

#[test]
fn a_read_cancelled_by_a_timeout_consumes_nothing_s9_1() {
    testing::run(async {
        let (a, b) = socket_pair()?;
        let mut buf = [0u8; 16];
        assert_eq!(move_on_after(secs(1), read_some(&a, &mut buf)).await?, None);
        assert_eq!(now(), at(1));
        write_some(&b, b"abc").await?;
        let k = read_some(&a, &mut buf).await?;
        assert_eq!(&buf[..k], b"abc");

        // Data that arrives at the very instant of the deadline: the deadline wins (it is
        // seen before the write's readiness event), and the data stays for the next read.
        let mut buf = [0u8; 16];
        let r = nursery(async |n| {
            n.start_soon(async {
                sleep(secs(1)).await?;
                write_some(&b, b"late").await?;
                Ok::<_, io::Error>(())
            });
            move_on_after(secs(1), read_some(&a, &mut buf)).await
        })
        .await?;
        assert_eq!(r, Some(None));
        assert_eq!(now(), at(2));
        let mut buf = [0u8; 16];
        let k = read_some(&a, &mut buf).await?;
        assert_eq!(&buf[..k], b"late");
        Ok::<_, io::Error>(())
    })
    .unwrap();
}

#[test]
fn ops_in_a_cancelled_scope_never_run_s9_1() {
    testing::run(async {
        let (a, b) = socket_pair()?;
        b.get_ref().write_all(b"xyz")?;
        a.readable().await?; // the data is there and the reactor knows it
        let calls = Cell::new(0);
        let scope = CancelScope::new();
        scope.handle().cancel();
        let r = scope
            .run(async {
                let mut buf = [0u8; 16];
                let e = a
                    .read_with(|mut s| {
                        calls.set(calls.get() + 1);
                        s.read(&mut buf)
                    })
                    .await
                    .unwrap_err();
                assert!(Cancelled::from_io(&e).is_some(), "{e}");
                let e = a
                    .write_with(|mut s| {
                        calls.set(calls.get() + 1);
                        s.write(b"never")
                    })
                    .await
                    .unwrap_err();
                assert!(Cancelled::from_io(&e).is_some(), "{e}");
                // Ready or not, the waits fail too.
                assert!(Cancelled::from_io(&a.readable().await.unwrap_err()).is_some());
                assert!(Cancelled::from_io(&a.writable().await.unwrap_err()).is_some());
                Err::<(), _>(e)
            })
            .await?;
        assert_eq!(r, None);
        assert_eq!(calls.get(), 0, "the op closures never ran");
        assert!(nothing_buffered(&b), "the cancelled write wrote nothing");
        let mut buf = [0u8; 16];
        let k = read_some(&a, &mut buf).await?;
        assert_eq!(&buf[..k], b"xyz", "the cancelled read consumed nothing");
        assert_eq!(now(), at(0));
        Ok::<_, io::Error>(())
    })
    .unwrap();
}

#[test]
fn cancelled_and_dropped_waits_leave_no_registration() {
    testing::run(async {
        let before = registrations();
        let (a, b) = socket_pair()?;
        let with_sources = registrations();
        assert_eq!(with_sources.io_sources, before.io_sources + 2);

        // A wait cancelled by a deadline.
        let mut buf = [0u8; 16];
        assert_eq!(move_on_after(secs(1), read_some(&a, &mut buf)).await?, None);
        assert_eq!(move_on_after(secs(1), a.readable()).await?, None);
        assert_eq!(registrations(), with_sources);

        // A wait dropped while parked, polled with a foreign waker (a waiter is registered
        // for cancellation) and with the task's own (nothing is).
        for foreign in [true, false] {
            let mut fut = Box::pin(read_some(&a, &mut buf));
            // In oneshot mode (the poll(2) backend) the read first takes its schedule point
            // (before trying the syscall), then parks; in edge mode it parks at once.
            for _ in 0..2 {
                let pending = if foreign {
                    poll_once_foreign(fut.as_mut()).await.is_pending()
                } else {
                    poll_once(fut.as_mut()).await.is_pending()
                };
                assert!(pending);
                if registrations().parked > with_sources.parked {
                    break;
                }
            }
            assert_eq!(registrations().parked, with_sources.parked + usize::from(foreign));
            drop(fut);
            assert_eq!(registrations(), with_sources);
        }
        // The dropped wait gave up its place: a new reader is not busy.
        let got = nursery(async |n| {
            let h = n.spawn(async {
                let mut buf = [0u8; 16];
                let k = read_some(&a, &mut buf).await?;
                Ok::<_, io::Error>(buf[..k].to_vec())
            });
            wait_all_tasks_blocked().await?;
            write_some(&b, b"ok").await?;
            Ok(h.await?)
        })
        .await?;
        assert_eq!(got, Some(b"ok".to_vec()));
        assert_eq!(registrations(), with_sources);

        // Dropping the sources unregisters them; into_inner too.
        drop(a);
        assert_eq!(registrations().io_sources, before.io_sources + 1);
        let b = b.into_inner();
        assert_eq!(registrations(), before);
        drop(b);
        Ok::<_, io::Error>(())
    })
    .unwrap();
}

#[test]
fn eof_reads_zero_on_a_socket_pair() {
    testing::run(async {
        let (a, b) = socket_pair()?;
        let b = Cell::new(Some(b));
        let got = nursery(async |n| {
            let h = n.spawn(async {
                let mut buf = [0u8; 16];
                read_some(&a, &mut buf).await
            });
            wait_all_tasks_blocked().await?;
            drop(b.take()); // the peer goes away while the reader waits
            Ok(h.await?)
        })
        .await?;
        assert_eq!(got, Some(0));
        // And stays at EOF.
        let mut buf = [0u8; 16];
        assert_eq!(read_some(&a, &mut buf).await?, 0);
        assert_eq!(now(), at(0));
        Ok::<_, io::Error>(())
    })
    .unwrap();
}

#[test]
fn eof_reads_zero_on_a_pipe() {
    testing::run(async {
        let (r, w) = pipe()?;
        write_some(&w, b"last").await?;
        drop(w);
        let mut buf = [0u8; 16];
        let k = read_some(&r, &mut buf).await?;
        assert_eq!(&buf[..k], b"last");
        assert_eq!(read_some(&r, &mut buf).await?, 0);
        Ok::<_, io::Error>(())
    })
    .unwrap();
}

/// The writer fills the socket buffer, waits, and resumes as the reader drains.
async fn back_pressure<R: AsFd, W: AsFd>(r: &IoSource<R>, w: &IoSource<W>) -> io::Result<()>
where
    for<'a> &'a R: Read,
    for<'a> &'a W: Write,
{
    const TOTAL: usize = 1 << 20;
    let data: Vec<u8> = (0..TOTAL).map(|i| (i % 251) as u8).collect();
    let sent = Cell::new(0);
    let would_block = Cell::new(0);
    nursery(async |n| {
        n.start_soon(async {
            while sent.get() < TOTAL {
                let k = w
                    .write_with(|mut s| {
                        let r = s.write(&data[sent.get()..]);
                        if matches!(&r, Err(e) if e.kind() == io::ErrorKind::WouldBlock) {
                            would_block.set(would_block.get() + 1);
                        }
                        r
                    })
                    .await?;
                sent.set(sent.get() + k);
            }
            Ok::<_, io::Error>(())
        });
        wait_all_tasks_blocked().await?;
        let filled = sent.get();
        assert!(filled > 0 && filled < TOTAL, "the buffer filled after {filled} bytes");
        assert!(would_block.get() >= 1, "the writer saw WouldBlock before it waited");
        // It really waits: nothing moves until someone reads.
        wait_all_tasks_blocked().await?;
        assert_eq!(sent.get(), filled);
        // A second writer is refused meanwhile.
        let e = w.writable().await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ResourceBusy);

        let mut received = Vec::with_capacity(TOTAL);
        let mut buf = vec![0u8; 64 * 1024];
        while received.len() < TOTAL {
            let k = read_some(r, &mut buf).await?;
            assert!(k > 0, "unexpected EOF after {} bytes", received.len());
            received.extend_from_slice(&buf[..k]);
        }
        assert!(received == data, "the bytes arrive complete and in order");
        Ok(())
    })
    .await?;
    assert_eq!(sent.get(), TOTAL);
    assert!(would_block.get() >= 1);
    Ok(())
}

#[test]
fn a_full_socket_makes_the_writer_wait_until_the_reader_drains() {
    testing::run(async {
        let (a, b) = socket_pair()?;
        back_pressure(&b, &a).await
    })
    .unwrap();
}

#[test]
fn a_full_pipe_makes_the_writer_wait_until_the_reader_drains() {
    testing::run(async {
        let (r, w) = pipe()?;
        back_pressure(&r, &w).await
    })
    .unwrap();
}

#[test]
fn a_write_from_another_thread_wakes_the_reader() {
    let (a, b) = UnixStream::pair().unwrap();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let peer = std::thread::spawn(move || {
        let mut b = b;
        go_rx.recv().unwrap();
        b.write_all(b"from another thread").unwrap();
        b
    });
    let got: io::Result<Vec<u8>> = hatchery::run(fail_after(Duration::from_secs(10), async {
        a.set_nonblocking(true)?;
        let a = IoSource::new(a)?;
        let got = nursery(async |n| {
            let h = n.spawn(async {
                let mut got = Vec::new();
                let mut buf = [0u8; 64];
                while got.len() < 19 {
                    let k = read_some(&a, &mut buf).await?;
                    got.extend_from_slice(&buf[..k]);
                }
                Ok::<_, io::Error>(got)
            });
            wait_all_tasks_blocked().await?;
            // The reader is parked in the reactor; only now may the other thread write.
            go_tx.send(()).unwrap();
            Ok(h.await?)
        })
        .await?;
        Ok(got.unwrap())
    }));
    assert_eq!(got.unwrap(), b"from another thread");
    drop(peer.join().unwrap());
}

#[test]
fn a_stream_from_another_thread_arrives_whole_until_eof() {
    const CHUNKS: usize = 100;
    const CHUNK: usize = 1000;
    let (a, b) = UnixStream::pair().unwrap();
    let peer = std::thread::spawn(move || {
        let mut b = b; // blocking on this side
        for i in 0..CHUNKS {
            b.write_all(&[(i % 256) as u8; CHUNK]).unwrap();
        }
        // Dropping `b` is the EOF.
    });
    let got: io::Result<Vec<u8>> = hatchery::run(fail_after(Duration::from_secs(10), async {
        a.set_nonblocking(true)?;
        let a = IoSource::new(a)?;
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match read_some(&a, &mut buf).await? {
                0 => break,
                k => got.extend_from_slice(&buf[..k]),
            }
        }
        Ok(got)
    }));
    peer.join().unwrap();
    let got = got.unwrap();
    let expected: Vec<u8> = (0..CHUNKS).flat_map(|i| [(i % 256) as u8; CHUNK]).collect();
    assert_eq!(got.len(), CHUNKS * CHUNK);
    assert!(got == expected, "the bytes arrive complete and in order");
}

/// A read parked through a foreign waker: the reactor keeps a clone of that waker (and the
/// cancel tree another). Re-polled with the task's own waker, it gives both back, and the write
/// that follows wakes the task, not the foreign waker. (That the reactor then records the task
/// rather than a clone, DESIGN §7b, is checked by `wake_paths.rs`'s held-wakers test.)
#[test]
fn a_read_parked_through_a_foreign_waker_then_its_own_gives_the_clone_back() {
    use std::future::Future;
    use std::sync::Arc;
    let got = testing::run(async {
        let (a, b) = socket_pair()?;
        let (counter, foreign) = counting_forward().await;
        let mut buf = [0u8; 8];
        let mut read = Box::pin(read_some(&a, &mut buf));
        assert!(read.as_mut().poll(&mut std::task::Context::from_waker(&foreign)).is_pending());
        assert_eq!(Arc::strong_count(&counter), 4, "counter, foreign, the reactor's and the waiter's clones");
        assert!(poll_once(read.as_mut()).await.is_pending());
        assert_eq!(Arc::strong_count(&counter), 2, "both clones given back");
        assert_eq!(b.get_ref().write(b"x")?, 1);
        let k = read.await?;
        assert_eq!(counter.wakes(), 0, "the task was woken, not the foreign waker");
        drop(foreign);
        Ok::<_, io::Error>((k, buf[0]))
    });
    assert_eq!(got.unwrap(), (1, b'x'));
}

/// CPU time this thread has used, from `/proc/thread-self/stat` (clock ticks, 10 ms apart).
#[cfg(target_os = "linux")]
fn thread_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("/proc/thread-self/stat");
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap().split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

#[test]
#[cfg(target_os = "linux")]
fn an_idle_run_with_a_hung_up_source_registered_does_not_spin() {
    // polling's poll(2) backend (CI runs the suite on it too) reports a hang-up whatever the
    // interest: a hung-up source left registered with no waiter made every wait of the loop
    // return at once. Real time, tolerant: a 300 ms sleep must not burn anything like 300 ms.
    hatchery::run(async {
        let (a, b) = UnixStream::pair()?;
        a.set_nonblocking(true)?;
        let a = IoSource::new(a)?;
        drop(b);
        let mut buf = [0u8; 8];
        assert_eq!(a.read_with(|mut s| s.read(&mut buf)).await?, 0, "end of stream");
        let before = thread_cpu();
        sleep(Duration::from_millis(300)).await?;
        let used = thread_cpu() - before;
        assert!(used < Duration::from_millis(150), "the idle run spun: {used:?} of CPU in 300 ms");
        // Still usable: a wait on it returns at once with the end.
        assert_eq!(a.read_with(|mut s| s.read(&mut buf)).await?, 0);
        Ok::<_, io::Error>(())
    })
    .unwrap();
}
