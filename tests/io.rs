//! `hatchery::io` (BufReader, BufWriter, copy) and the memory stream, unit by unit: exact bytes,
//! exact virtual instants, and what a cancelled or dropped call leaves behind.

mod support;

use std::io;
use std::net::Shutdown;
use std::num::NonZeroUsize;
use std::pin::{Pin, pin};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_io::{AsyncBufRead, AsyncRead, AsyncWrite};
use hatchery::io::{BufReader, BufWriter, copy, copy_bidirectional};
use hatchery::lowlevel;
use hatchery::testing::{
    self, MemoryStream, assert_checkpoints, memory_stream_pair, memory_stream_pair_with_capacity,
    wait_all_tasks_blocked,
};
use hatchery::{BusyResource, CancelScope, Cancelled, ClosedResource, Instant, move_on_after, now, nursery};
use support::{Scripted, cancelled_scope, is, poll_once, poll_once_foreign};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn at(n: u64) -> Instant {
    Instant::ZERO + ms(n)
}

/// Reads `s` to end of stream: the bytes and the instant of the end.
async fn read_to_eof(s: &MemoryStream) -> io::Result<(Vec<u8>, Instant)> {
    let mut all = Vec::new();
    let mut buf = [0; 7];
    loop {
        let k = s.read(&mut buf).await?;
        if k == 0 {
            return Ok((all, now()));
        }
        all.extend_from_slice(&buf[..k]);
    }
}

// ---------------------------------------------------------------------------------------------
// BufReader

#[test]
fn read_line_completes_when_the_rest_of_the_line_arrives() {
    testing::run(async {
        let mut r =
            BufReader::new(Scripted::new(&[(1000, b"hel"), (2000, b"lo\nwor"), (3000, b"ld\n")], 4000));
        let mut line = String::new();
        assert_eq!(r.read_line(&mut line).await?, 6);
        assert_eq!((line.as_str(), now()), ("hello\n", at(2000)));
        line.clear();
        assert_eq!(r.read_line(&mut line).await?, 6);
        assert_eq!((line.as_str(), now()), ("world\n", at(3000)));
        assert_eq!(r.read_line(&mut line).await?, 0, "end of stream");
        assert_eq!(now(), at(4000));
        Ok::<_, io::Error>(())
    })
    .unwrap();
}

#[test]
fn a_cancelled_read_line_keeps_the_partial_line() {
    testing::run(async {
        let mut r = BufReader::new(Scripted::new(&[(1000, b"hel"), (2000, b"lo\n")], 3000));
        let mut line = String::from("kept: ");
        let res = move_on_after(ms(1500), r.read_line(&mut line)).await;
        assert!(matches!(res, Ok(None)), "{res:?}");
        assert_eq!(now(), at(1500), "the wait on a foreign reader was interrupted at the deadline");
        assert_eq!(line, "kept: ", "nothing appended");
        assert_eq!(r.buffer(), b"hel", "the partial line waits in the reader");
        assert_eq!(r.read_line(&mut line).await?, 6);
        assert_eq!((line.as_str(), now()), ("kept: hello\n", at(2000)));
        Ok::<_, io::Error>(())
    })
    .unwrap();
}

#[test]
fn a_dropped_read_until_loses_nothing() {
    testing::run(async {
        let mut r = BufReader::new(Scripted::new(&[(0, b"ab"), (1000, b"cd"), (2000, b"e;f")], 3000));
        let mut out = Vec::new();
        {
            let mut fut = pin!(r.read_until(b';', &mut out));
            assert!(poll_once(fut.as_mut()).await.is_pending());
            hatchery::sleep(ms(1500)).await?;
            // Pulls "cd" in and waits for more; then the future is dropped.
            assert!(poll_once(fut.as_mut()).await.is_pending());
        }
        assert!(out.is_empty());
        assert_eq!(r.buffer(), b"abcd");
        assert_eq!(r.read_until(b';', &mut out).await?, 6);
        assert_eq!(out, b"abcde;");
        out.clear();
        assert_eq!(r.read_until(b';', &mut out).await?, 1, "the last piece has no delimiter");
        assert_eq!(out, b"f");
        Ok::<_, io::Error>(())
    })
    .unwrap();
}

#[test]
fn reads_are_checkpoints_even_when_buffered_and_a_cancelled_scope_consumes_nothing() {
    testing::run(async {
        let mut r = BufReader::new(Scripted::new(&[(0, b"one\ntwo\nthree\nfour")], 0));
        let mut line = String::new();
        // The first call buffers everything; the later ones complete from the buffer.
        assert_eq!(assert_checkpoints(r.read_line(&mut line)).await?, 4);
        assert_eq!(r.buffer(), b"two\nthree\nfour");
        // A complete line is buffered, and still a cancelled scope stops the call at entry.
        let res = cancelled_scope().run(r.read_line(&mut line)).await;
        assert!(matches!(res, Ok(None)), "{res:?}");
        let mut four = [0; 4];
        let res = cancelled_scope().run(r.read_exact(&mut four)).await;
        assert!(matches!(res, Ok(None)), "{res:?}");
        let res = cancelled_scope().run(r.read(&mut four)).await;
        assert!(matches!(res, Ok(None)), "{res:?}");
        let mut v = Vec::new();
        let res = cancelled_scope().run(r.read_until(b'\n', &mut v)).await;
        assert!(matches!(res, Ok(None)), "{res:?}");
        let res = cancelled_scope().run(r.read_to_end(&mut v)).await;
        assert!(matches!(res, Ok(None)), "{res:?}");
        assert_eq!((line.as_str(), &v[..], r.buffer()), ("one\n", &b""[..], &b"two\nthree\nfour"[..]));
        assert_eq!(assert_checkpoints(r.read_line(&mut line)).await?, 4);
        assert_eq!(assert_checkpoints(r.read_until(b'\n', &mut v)).await?, 6);
        assert_checkpoints(r.read_exact(&mut [0; 0])).await?;
        assert_eq!(assert_checkpoints(r.read(&mut four)).await?, 4);
        assert_eq!(assert_checkpoints(r.read_to_end(&mut v)).await?, 0);
        assert_eq!((line.as_str(), &v[..], &four), ("one\ntwo\n", &b"three\n"[..], b"four"));
        assert_eq!(now(), at(0));
        Ok::<_, io::Error>(())
    })
    .unwrap();
}

#[test]
fn long_lines_grow_the_buffer_beyond_its_capacity() {
    testing::run(async {
        let long: Vec<u8> = (0..1000).map(|i| b'a' + (i % 26) as u8).chain([b'\n']).collect();
        let chunks: Vec<(u64, &[u8])> = long.chunks(7).enumerate().map(|(i, c)| (i as u64, c)).collect();
        let mut r = BufReader::with_capacity(4, Scripted::new(&chunks, 1000));
        assert_eq!(r.capacity(), 4);
        let mut out = Vec::new();
        assert_eq!(r.read_until(b'\n', &mut out).await?, 1001);
        assert_eq!(out, long);
        assert_eq!(now(), at(142), "the last of 143 chunks");
        assert!(r.buffer().is_empty());
        Ok::<_, io::Error>(())
    })
    .unwrap();
}

#[test]
fn the_line_length_limit_rejects_long_lines_and_keeps_their_bytes() {
    testing::run(async {
        let mut r =
            BufReader::with_capacity(4, Scripted::new(&[(0, b"1234567\n"), (1, b"0123456789\nok")], 2));
        r.set_max_line_length(Some(8));
        assert_eq!(r.max_line_length(), Some(8));
        let mut line = String::new();
        assert_eq!(r.read_line(&mut line).await?, 8, "exactly the limit, newline included");
        let e = r.read_line(&mut line).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert_eq!(line, "1234567\n", "nothing appended");
        assert!(r.buffer().starts_with(b"01234567"), "{:?}", r.buffer());
        r.set_max_line_length(None);
        let mut out = Vec::new();
        assert_eq!(r.read_until(b'\n', &mut out).await?, 11);
        assert_eq!(out, b"0123456789\n");
        Ok::<_, io::Error>(())
    })
    .unwrap();
}

#[test]
fn a_line_that_is_not_utf8_is_rejected_and_stays_buffered() {
    testing::run(async {
        let mut r = BufReader::new(Scripted::new(&[(0, b"ok\n\xff\xfe\nafter\n")], 0));
        let mut line = String::new();
        r.read_line(&mut line).await?;
        let e = r.read_line(&mut line).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert_eq!(line, "ok\n");
        let mut raw = Vec::new();
        assert_eq!(r.read_until(b'\n', &mut raw).await?, 3);
        assert_eq!(raw, b"\xff\xfe\n");
        r.read_line(&mut line).await?;
        assert_eq!(line, "ok\nafter\n");
        Ok::<_, io::Error>(())
    })
    .unwrap();
}

#[test]
fn read_exact_across_chunks_and_at_end_of_stream() {
    testing::run(async {
        let mut r =
            BufReader::with_capacity(2, Scripted::new(&[(1000, b"ab"), (2000, b"cd"), (3000, b"e")], 4000));
        let mut three = [0; 3];
        r.read_exact(&mut three).await?;
        assert_eq!((&three, now()), (b"abc", at(2000)));
        let e = r.read_exact(&mut three).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!((&three, now()), (b"abc", at(4000)), "the caller's buffer is untouched");
        assert_eq!(r.buffer(), b"de", "the bytes before the end stay buffered");
        let mut rest = String::new();
        assert_eq!(r.read_to_string(&mut rest).await?, 2);
        assert_eq!(rest, "de");
        Ok::<_, io::Error>(())
    })
    .unwrap();
}

#[test]
fn a_cancelled_read_exact_keeps_what_it_read() {
    testing::run(async {
        let mut r =
            BufReader::with_capacity(2, Scripted::new(&[(0, b"abc"), (1000, b"defg"), (5000, b"h")], 6000));
        let mut eight = [0; 8];
        let res = move_on_after(ms(2000), r.read_exact(&mut eight)).await;
        assert!(matches!(res, Ok(None)), "{res:?}");
        assert_eq!(eight, [0; 8]);
        assert_eq!(r.buffer(), b"abcdefg");
        let mut two = [0; 2];
        r.read_exact(&mut two).await?;
        assert_eq!((&two, now()), (b"ab", at(2000)));
        let mut six = [0; 6];
        r.read_exact(&mut six).await?;
        assert_eq!((&six, now()), (b"cdefgh", at(5000)));
        Ok::<_, io::Error>(())
    })
    .unwrap();
}

#[test]
fn read_gives_buffered_bytes_first_and_one_inner_read_otherwise() {
    testing::run(async {
        let mut r = BufReader::with_capacity(8, Scripted::new(&[(0, b"abcdefghij"), (1000, b"k")], 2000));
        let mut buf = [0; 100];
        assert_eq!(r.read(&mut buf[..3]).await?, 3);
        assert_eq!(&buf[..3], b"abc");
        assert_eq!(r.buffer(), b"defgh", "one inner read of the capacity");
        assert_eq!(r.read(&mut buf).await?, 5, "the buffered bytes, without reading more");
        assert_eq!(r.read(&mut buf).await?, 2);
        assert_eq!(&buf[..2], b"ij");
        assert_eq!(r.read(&mut buf).await?, 1);
        assert_eq!((buf[0], now()), (b'k', at(1000)));
        assert_eq!(r.read(&mut buf).await?, 0);
        assert_eq!(now(), at(2000));
        let e = r.read(&mut []).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        Ok::<_, io::Error>(())
    })
    .unwrap();
}

#[test]
fn into_parts_and_debug_show_the_buffered_bytes() {
    testing::run(async {
        let (a, b) = memory_stream_pair();
        a.write_all(b"line\nrest").await?;
        let mut r = BufReader::new(&b);
        let mut line = String::new();
        r.read_line(&mut line).await?;
        assert!(format!("{r:?}").contains("buffered: 4"), "{r:?}");
        r.consume(1);
        let (inner, rest) = r.into_parts();
        assert!(std::ptr::eq(inner, &b));
        assert_eq!(rest, b"est");
        Ok::<_, io::Error>(())
    })
    .unwrap();
}

#[test]
fn poll_style_impls_delegate() {
    testing::run(async {
        let (a, b) = memory_stream_pair();
        a.write_all(b"0123456789").await?;
        let mut r = BufReader::with_capacity(4, &b);
        let got =
            std::future::poll_fn(|cx| Pin::new(&mut r).poll_fill_buf(cx).map_ok(<[u8]>::to_vec)).await?;
        assert_eq!(got, b"0123");
        Pin::new(&mut r).consume(2);
        let mut buf = [0; 16];
        let n = std::future::poll_fn(|cx| Pin::new(&mut r).poll_read(cx, &mut buf)).await?;
        assert_eq!(&buf[..n], b"23", "buffered bytes first");
        // An empty buffer and a large read: straight from the stream.
        let n = std::future::poll_fn(|cx| Pin::new(&mut r).poll_read(cx, &mut buf)).await?;
        assert_eq!(&buf[..n], b"456789");
        // Writes pass through to a stream that is also a writer.
        let mut rw = BufReader::new(&b);
        let n = std::future::poll_fn(|cx| Pin::new(&mut rw).poll_write(cx, b"back")).await?;
        assert_eq!(n, 4);
        let mut four = [0; 4];
        assert_eq!(a.read(&mut four).await?, 4);
        assert_eq!(&four, b"back");
        Ok::<_, io::Error>(())
    })
    .unwrap();
}

#[test]
fn cancelled_and_dropped_reads_leave_nothing_registered() {
    testing::run(async {
        let (a, b) = memory_stream_pair();
        let before = testing::registrations();
        let mut r = BufReader::new(&b);
        let mut line = String::new();
        a.write_all(b"par").await?;
        let res = move_on_after(ms(10), r.read_line(&mut line)).await;
        assert!(matches!(res, Ok(None)));
        assert_eq!(testing::registrations(), before);
        {
            let mut fut = pin!(r.read_line(&mut line));
            assert!(poll_once(fut.as_mut()).await.is_pending());
        }
        // With the task's own waker nothing was registered.
        assert_eq!(testing::registrations(), before);
        {
            let mut fut = pin!(r.read_line(&mut line));
            assert!(poll_once_foreign(fut.as_mut()).await.is_pending());
        }
        // With a foreign waker: the BufReader's own registration went with the future; the
        // stream keeps the one of its poll-style read (as sockets do) until its next
        // poll-style operation completes.
        let after_drop = testing::registrations();
        assert_eq!(after_drop.parked, before.parked + 1);
        a.write_all(b"tial\n").await?;
        r.read_line(&mut line).await?;
        assert_eq!(line, "partial\n");
        assert_eq!(testing::registrations(), before);
        Ok::<_, io::Error>(())
    })
    .unwrap();
}

// ---------------------------------------------------------------------------------------------
// BufWriter

#[test]
fn writes_stay_buffered_until_a_flush() {
    testing::run(async {
        let (a, b) = memory_stream_pair();
        let mut w = BufWriter::with_capacity(16, &a);
        assert_eq!(w.write(b"hello").await?, 5);
        w.write_all(b", world").await.unwrap();
        assert_eq!(w.buffer(), b"hello, world");
        assert_eq!(b.statistics().incoming_buffered, 0);
        // Does not fit any more: the buffer goes out first, the new bytes wait.
        w.write_all(b"!!!!!").await.unwrap();
        assert_eq!((b.statistics().incoming_buffered, w.buffer()), (12, &b"!!!!!"[..]));
        w.flush().await?;
        assert!(w.buffer().is_empty());
        let mut buf = [0; 32];
        let n = b.read(&mut buf).await?;
        assert_eq!(&buf[..n], b"hello, world!!!!!");
        Ok::<_, io::Error>(())
    })
    .unwrap();
}

#[test]
fn large_writes_skip_the_buffer_after_flushing_it() {
    testing::run(async {
        let (a, b) = memory_stream_pair();
        let mut w = BufWriter::with_capacity(8, &a);
        w.write_all(b"abc").await.unwrap();
        let big = [b'x'; 20];
        assert_eq!(w.write(&big).await?, 20);
        assert!(w.buffer().is_empty());
        assert_eq!(b.statistics().incoming_buffered, 23);
        w.write_all(&big).await.unwrap();
        assert_eq!(b.statistics().incoming_buffered, 43);
        let mut buf = [0; 64];
        let n = b.read(&mut buf).await?;
        assert_eq!(&buf[..3], b"abc");
        assert!(buf[3..n].iter().all(|&x| x == b'x') && n == 43);
        Ok::<_, io::Error>(())
    })
    .unwrap();
}

#[test]
fn writer_operations_are_checkpoints_and_a_cancelled_scope_accepts_nothing() {
    testing::run(async {
        let (a, _b) = memory_stream_pair();
        let mut w = BufWriter::new(&a);
        assert_eq!(assert_checkpoints(w.write(b"x")).await?, 1);
        assert_eq!(assert_checkpoints(w.write(b"")).await?, 0);
        assert_checkpoints(w.write_all(b"")).await.unwrap();
        let res = cancelled_scope().run(w.write(b"lost")).await;
        assert!(matches!(res, Ok(None)), "{res:?}");
        let res = cancelled_scope()
            .run(async {
                let e = w.write_all(b"lost").await.unwrap_err();
                assert_eq!(e.written, 0);
                Err::<(), _>(e)
            })
            .await;
        assert!(matches!(res, Ok(None)), "{res:?}");
        let res = cancelled_scope().run(w.flush()).await;
        assert!(matches!(res, Ok(None)), "{res:?}");
        assert_eq!(w.buffer(), b"x");
        assert_checkpoints(w.flush()).await?;
        assert_checkpoints(w.flush()).await?;
        assert_checkpoints(w.close()).await?;
        Ok::<_, io::Error>(())
    })
    .unwrap();
}

#[test]
fn a_cancelled_flush_keeps_the_unwritten_bytes_and_the_next_flush_continues() {
    testing::run(async {
        let (a, b) = memory_stream_pair_with_capacity(10);
        let mut w = BufWriter::with_capacity(64, &a);
        let data: Vec<u8> = (0..30).collect();
        w.write_all(&data).await.unwrap();
        let res = move_on_after(ms(1000), w.flush()).await;
        assert!(matches!(res, Ok(None)), "{res:?}");
        assert_eq!(now(), at(1000));
        assert_eq!(w.buffer(), &data[10..], "ten went out, twenty wait");
        let mut got = vec![0; 30];
        let n = b.read(&mut got).await?;
        assert_eq!(n, 10);
        nursery(async |n| {
            n.start_soon(async {
                let mut k = 10;
                while k < 30 {
                    k += b.read(&mut got[k..]).await?;
                }
                Ok(())
            });
            w.flush().await?;
            Ok::<_, io::Error>(())
        })
        .await
        .map_err(|e| e.into_first())?;
        assert_eq!(got, data, "every byte exactly once, in order");
        Ok::<_, io::Error>(())
    })
    .unwrap();
}

#[test]
fn a_cancelled_write_all_reports_the_bytes_it_accepted() {
    testing::run(async {
        let (a, b) = memory_stream_pair_with_capacity(8);
        let mut w = BufWriter::with_capacity(4, &a);
        let data: Vec<u8> = (0..100).collect();
        let res = move_on_after(ms(1000), async {
            let e = w.write_all(&data).await.unwrap_err();
            assert!(is::<Cancelled>(&e.error));
            assert_eq!(e.written, 8, "one write through filled the stream");
            Err::<(), _>(e)
        })
        .await;
        assert!(matches!(res, Ok(None)));
        assert_eq!(now(), at(1000));
        let got = nursery(async |n| {
            let reader = n.spawn(async { read_to_eof(&b).await });
            w.write_all(&data[8..]).await?;
            w.close().await?;
            Ok::<_, io::Error>(reader.await?)
        })
        .await
        .map_err(|e| e.into_first())?
        .unwrap();
        assert_eq!(got.0, data);
        Ok::<_, io::Error>(())
    })
    .unwrap();
}

#[test]
fn close_flushes_then_shuts_down_writing() {
    testing::run(async {
        let (a, b) = memory_stream_pair();
        let mut w = BufWriter::new(&a);
        w.write_all(b"bye").await.unwrap();
        w.close().await?;
        let mut buf = [0; 8];
        assert_eq!(b.read(&mut buf).await?, 3);
        assert_eq!(b.read(&mut buf).await?, 0);
        // After close, write_all only buffers; the flush is what meets the closed stream.
        w.write_all(b"more").await.unwrap();
        let e = w.flush().await.unwrap_err();
        assert!(is::<ClosedResource>(&e), "{e:?}");
        Ok::<_, io::Error>(())
    })
    .unwrap();
}

#[test]
fn a_buffered_write_dropped_at_its_schedule_point_buffered_nothing() {
    // A budget of 0: every schedule point yields, so the future can be dropped there.
    testing::builder()
        .yield_budget(0)
        .run(async {
            let (a, _b) = memory_stream_pair();
            let mut w = BufWriter::new(&a);
            for _ in 0..2 {
                let pending = {
                    let fut = pin!(w.write_all(b"abc"));
                    poll_once(fut).await.is_pending()
                };
                assert!(pending, "write_all stopped at its schedule point");
                assert!(w.buffer().is_empty(), "the dropped write_all buffered nothing");
                let pending = {
                    let fut = pin!(w.write(b"abc"));
                    poll_once(fut).await.is_pending()
                };
                assert!(pending, "write stopped at its schedule point");
                assert!(w.buffer().is_empty(), "the dropped write buffered nothing");
            }
            Ok::<_, io::Error>(())
        })
        .unwrap();
}

/// A writer that never waits: each call keeps what `take` says of the buffer's length (at most
/// all of it) and reports what `claim` says.
struct TestWriter {
    kept: Vec<u8>,
    take: fn(usize) -> usize,
    claim: fn(usize) -> usize,
}

impl TestWriter {
    /// Takes (and reports) at most 16 bytes a call.
    fn takes_16() -> TestWriter {
        TestWriter { kept: Vec::new(), take: |n| n.min(16), claim: |n| n.min(16) }
    }

    /// Takes nothing and claims twice what it was given: broken.
    fn overclaims() -> TestWriter {
        TestWriter { kept: Vec::new(), take: |_| 0, claim: |n| 2 * n }
    }
}

impl AsyncWrite for TestWriter {
    fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let n = (self.take)(buf.len()).min(buf.len());
        self.kept.extend_from_slice(&buf[..n]);
        Poll::Ready(Ok((self.claim)(buf.len())))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Over a writer that is always ready but takes 16 bytes a call, `write_all` passes a schedule
/// point between write-throughs (before, one poll wrote everything: a large write hogged the
/// thread and outran deadlines), and a cancellation there reports what went through.
#[test]
fn a_buffered_write_all_yields_between_write_throughs() {
    // A budget of 0: every schedule point taken yields.
    testing::builder()
        .yield_budget(0)
        .run(async {
            let mut w = BufWriter::with_capacity(8, TestWriter::takes_16());
            let data: Vec<u8> = (0..40).collect();
            let mut fut = Box::pin(w.write_all(&data));
            // The schedule point, before anything moves.
            assert!(poll_once(&mut fut).await.is_pending());
            // 16 bytes go through, then a schedule point; 16 more, another; the last 8 fit
            // the buffer.
            assert!(poll_once(&mut fut).await.is_pending());
            assert!(poll_once(&mut fut).await.is_pending());
            assert!(matches!(poll_once(&mut fut).await, Poll::Ready(Ok(()))));
            drop(fut);
            assert_eq!(w.buffer(), &data[32..]);
            assert_eq!(w.get_ref().kept, &data[..32]);

            // Cancelled at the first of those schedule points: the count of what went through.
            let mut w = BufWriter::with_capacity(8, TestWriter::takes_16());
            let scope = hatchery::CancelScope::new();
            let handle = scope.handle();
            let seen = std::cell::Cell::new(None);
            let mut fut = Box::pin(scope.run(async {
                let r = w.write_all(&data).await;
                seen.set(Some(
                    r.as_ref()
                        .map_err(|e| {
                            (e.written, e.error.get_ref().is_some_and(|i| i.is::<hatchery::Cancelled>()))
                        })
                        .copied(),
                ));
                r
            }));
            assert!(poll_once(&mut fut).await.is_pending());
            assert!(poll_once(&mut fut).await.is_pending());
            handle.cancel();
            assert!(matches!(poll_once(&mut fut).await, Poll::Ready(Ok(None))), "the scope absorbed it");
            drop(fut);
            assert_eq!(seen.take(), Some(Err((16, true))), "cancelled after 16 bytes went through");
            assert_eq!(w.get_ref().kept, &data[..16]);
            Ok::<_, io::Error>(())
        })
        .unwrap();
}

/// A reader that fills what it is given and claims one byte more.
struct Overclaims;

impl AsyncRead for Overclaims {
    fn poll_read(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        buf.fill(b'x');
        Poll::Ready(Ok(buf.len() + 1))
    }
}

#[test]
fn an_inner_stream_that_claims_more_than_its_buffer_is_an_invalid_data_error() {
    testing::run(async {
        let mut r = BufReader::with_capacity(8, Overclaims);
        let mut line = String::new();
        let e = r.read_line(&mut line).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        assert!(e.to_string().contains("reported 9 bytes moved through a buffer of 8"), "{e}");
        assert_eq!(line, "", "nothing was taken from a broken reader");

        let mut w = BufWriter::with_capacity(4, TestWriter::overclaims());
        let e = w.write_all(b"0123456789").await.unwrap_err();
        assert_eq!((e.written, e.error.kind()), (0, io::ErrorKind::InvalidData));
        // `write` straight through (at least the capacity): an error too, not a count the
        // caller's `&buf[n..]` would panic on.
        let e = w.write(b"0123456789").await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");

        let mut src = BufReader::new(&b"abcdef"[..]);
        let e = copy(&mut src, &mut TestWriter::overclaims()).await.unwrap_err();
        assert_eq!((e.copied, e.error.kind()), (0, io::ErrorKind::InvalidData), "no count beyond the source");
    });
}

#[test]
fn into_parts_hands_back_unflushed_bytes() {
    testing::run(async {
        let (a, _b) = memory_stream_pair();
        let mut w = BufWriter::new(&a);
        w.write_all(b"pending").await.unwrap();
        assert!(format!("{w:?}").contains("buffered: 7"), "{w:?}");
        let (inner, rest) = w.into_parts();
        assert!(std::ptr::eq(inner, &a));
        assert_eq!(rest, b"pending");
        Ok::<_, io::Error>(())
    })
    .unwrap();
}

#[test]
fn poll_write_buffers_and_poll_flush_sends() {
    testing::run(async {
        let (a, b) = memory_stream_pair();
        let mut w = BufWriter::with_capacity(8, &a);
        let n = std::future::poll_fn(|cx| Pin::new(&mut w).poll_write(cx, b"abc")).await?;
        assert_eq!((n, w.buffer()), (3, &b"abc"[..]));
        std::future::poll_fn(|cx| Pin::new(&mut w).poll_flush(cx)).await?;
        assert_eq!(b.statistics().incoming_buffered, 3);
        std::future::poll_fn(|cx| Pin::new(&mut w).poll_write(cx, b"de")).await?;
        std::future::poll_fn(|cx| Pin::new(&mut w).poll_close(cx)).await?;
        let mut buf = [0; 8];
        assert_eq!(b.read(&mut buf).await?, 5);
        assert_eq!(b.read(&mut buf).await?, 0, "poll_close shut down writing");
        Ok::<_, io::Error>(())
    })
    .unwrap();
}

// ---------------------------------------------------------------------------------------------
// copy

#[test]
fn copy_moves_everything_and_flushes_the_writer() {
    testing::run(async {
        let mut r = BufReader::with_capacity(3, Scripted::new(&[(0, b"hello "), (1000, b"world")], 2000));
        let (c, d) = memory_stream_pair();
        let mut w = BufWriter::new(&c);
        let n = copy(&mut r, &mut w).await?;
        assert_eq!((n, now()), (11, at(2000)));
        assert!(w.buffer().is_empty(), "copy flushed the writer");
        let mut buf = [0; 16];
        let k = d.read(&mut buf).await?;
        assert_eq!(&buf[..k], b"hello world");
        Ok::<_, io::Error>(())
    })
    .unwrap();
}

#[test]
fn a_cancelled_copy_reports_its_count_and_loses_nothing() {
    testing::run(async {
        let data: Vec<u8> = (0..50).collect();
        let (a, b) = memory_stream_pair();
        a.write_all(&data).await?;
        a.shutdown(Shutdown::Write).await?;
        let (c, d) = memory_stream_pair_with_capacity(16);
        let mut r = BufReader::with_capacity(10, &b);
        let copied = std::cell::Cell::new(0);
        let res = move_on_after(ms(1000), async {
            let e = copy(&mut r, &mut &c).await.unwrap_err();
            assert!(is::<Cancelled>(&e.error));
            copied.set(e.copied);
            Err::<(), _>(e)
        })
        .await;
        assert!(matches!(res, Ok(None)));
        assert_eq!(copied.get(), 16, "as much as the destination holds");
        assert_eq!(r.buffer(), &data[16..20], "the rest of the chunk in flight waits in the reader");
        let got = nursery(async |n| {
            let reader = n.spawn(async { read_to_eof(&d).await });
            assert_eq!(copy(&mut r, &mut &c).await?, 34);
            c.shutdown(Shutdown::Write).await?;
            Ok::<_, io::Error>(reader.await?)
        })
        .await
        .map_err(|e| e.into_first())?
        .unwrap();
        assert_eq!(got.0, data, "every byte exactly once, in order");
        Ok::<_, io::Error>(())
    })
    .unwrap();
}

#[test]
fn copy_between_ready_streams_yields_and_stops_when_cancelled() {
    testing::run(async {
        // A reader that is always ready: copy must still pass checkpoints between chunks.
        struct Zeros;
        impl AsyncRead for Zeros {
            fn poll_read(
                self: Pin<&mut Self>,
                _: &mut Context<'_>,
                buf: &mut [u8],
            ) -> Poll<io::Result<usize>> {
                buf.fill(0);
                Poll::Ready(Ok(buf.len()))
            }
        }
        struct Sink(u64);
        impl AsyncWrite for Sink {
            fn poll_write(
                mut self: Pin<&mut Self>,
                _: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                self.0 += buf.len() as u64;
                Poll::Ready(Ok(buf.len()))
            }
            fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(Ok(()))
            }
            fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(Ok(()))
            }
        }
        let mut r = BufReader::with_capacity(100, Zeros);
        let mut sink = Sink(0);
        let scope = CancelScope::new();
        let handle = scope.handle();
        nursery(async |n| {
            n.start_soon(async {
                for _ in 0..5 {
                    lowlevel::checkpoint().await?;
                }
                handle.cancel();
                Ok(())
            });
            let res = scope.run(copy(&mut r, &mut sink)).await;
            assert!(matches!(res, Ok(None)), "{res:?}");
            Ok::<_, io::Error>(())
        })
        .await
        .map_err(|e| e.into_first())?;
        // A yield at least every `DEFAULT_YIELD_BUDGET + 1` chunks of 100 bytes, so the copy
        // got one turn per batch: the canceller's start, its five checkpoints and its cancel
        // take seven batches (seven turns seen: 45,500 bytes).
        let bound = 7 * (u64::from(hatchery::DEFAULT_YIELD_BUDGET) + 1) * 100;
        assert!(sink.0 > 0 && sink.0.is_multiple_of(100) && sink.0 <= bound, "{}", sink.0);
        Ok::<_, io::Error>(())
    })
    .unwrap();
}

// ---------------------------------------------------------------------------------------------
// copy_bidirectional

#[test]
fn copy_bidirectional_copies_both_ways_and_passes_each_end_of_stream_on() {
    testing::run(support::watchdog(async {
        let (client, proxy_in) = memory_stream_pair();
        let (proxy_out, server) = memory_stream_pair();
        nursery(async |n| {
            let proxy = n.spawn(async {
                // Small buffers: many rounds each way.
                let mut a = BufReader::with_capacity(4, &proxy_in);
                let mut b = BufReader::with_capacity(4, &proxy_out);
                let counts = copy_bidirectional(&mut a, &mut b).await?;
                Ok::<_, io::Error>((counts, now()))
            });
            let server_side = n.spawn(async {
                let request = read_to_eof(&server).await?;
                // Half-closed: the server still answers, in two parts.
                hatchery::sleep_until(at(1000)).await?;
                server.write_all(b"hi, client").await?;
                hatchery::sleep_until(at(2000)).await?;
                server.write_all(b"; bye").await?;
                server.shutdown(Shutdown::Write).await?;
                Ok::<_, io::Error>(request)
            });
            client.write_all(b"hello, server").await?;
            client.shutdown(Shutdown::Write).await?;
            let response = read_to_eof(&client).await?;
            assert_eq!(response, (b"hi, client; bye".to_vec(), at(2000)));
            assert_eq!(
                server_side.await?,
                (b"hello, server".to_vec(), at(0)),
                "the client's end came at once"
            );
            assert_eq!(proxy.await?, ((13, 15), at(2000)), "both ends of stream passed on");
            Ok::<_, io::Error>(())
        })
        .await
        .map_err(|e| e.into_first())?;
        Ok::<_, io::Error>(())
    }))
    .unwrap();
}

#[test]
fn a_cancelled_copy_bidirectional_reports_both_counts_and_loses_nothing() {
    testing::run(support::watchdog(async {
        let up: Vec<u8> = (0..50).collect();
        let down: Vec<u8> = (100..112).collect();
        let (client, proxy_in) = memory_stream_pair();
        // The server does not read yet: each direction of its pair holds 16 bytes.
        let (proxy_out, server) = memory_stream_pair_with_capacity(16);
        client.write_all(&up).await?;
        server.write_all(&down).await?;
        let mut a = BufReader::with_capacity(10, &proxy_in);
        let mut b = BufReader::with_capacity(10, &proxy_out);
        let counts = std::cell::Cell::new((0, 0));
        let res = move_on_after(ms(500), async {
            let e = copy_bidirectional(&mut a, &mut b).await.unwrap_err();
            assert!(is::<Cancelled>(&e.error), "{e:?}");
            counts.set((e.a_to_b, e.b_to_a));
            Err::<(), _>(e)
        })
        .await;
        assert!(matches!(res, Ok(None)), "the scope absorbed the cancellation: {res:?}");
        assert_eq!(now(), at(500), "cancelled at its deadline, not before");
        assert_eq!(counts.get(), (16, 12), "as much as the server's direction holds; all of the other");
        assert_eq!(a.buffer(), &up[16..20], "the rest of the chunk in flight waits in the reader");
        assert!(b.buffer().is_empty());
        // Resume: every byte arrives exactly once, in order, and the ends of stream follow.
        client.shutdown(Shutdown::Write).await?;
        server.shutdown(Shutdown::Write).await?;
        nursery(async |n| {
            let server_got = n.spawn(async { read_to_eof(&server).await });
            assert_eq!(copy_bidirectional(&mut a, &mut b).await?, (34, 0));
            assert_eq!(server_got.await?.0, up);
            assert_eq!(read_to_eof(&client).await?.0, down);
            Ok::<_, io::Error>(())
        })
        .await
        .map_err(|e| e.into_first())?;
        Ok::<_, io::Error>(())
    }))
    .unwrap();
}

#[test]
fn copy_bidirectional_is_a_checkpoint_and_a_cancelled_scope_moves_nothing() {
    testing::run(support::watchdog(async {
        let (client, proxy_in) = memory_stream_pair();
        let (proxy_out, server) = memory_stream_pair();
        client.write_all(b"up").await?;
        client.shutdown(Shutdown::Write).await?;
        server.write_all(b"down").await?;
        server.shutdown(Shutdown::Write).await?;
        let mut a = BufReader::new(&proxy_in);
        let mut b = BufReader::new(&proxy_out);
        let res = cancelled_scope().run(copy_bidirectional(&mut a, &mut b)).await;
        assert!(matches!(res, Ok(None)), "{res:?}");
        assert_eq!(
            (proxy_in.statistics().incoming_buffered, proxy_out.statistics().incoming_buffered),
            (2, 4)
        );
        assert!(a.buffer().is_empty() && b.buffer().is_empty(), "nothing was read");
        let counts = assert_checkpoints(copy_bidirectional(&mut a, &mut b)).await?;
        assert_eq!(counts, (2, 4));
        assert_eq!(read_to_eof(&server).await?.0, b"up");
        assert_eq!(read_to_eof(&client).await?.0, b"down");
        Ok::<_, io::Error>(())
    }))
    .unwrap();
}

#[test]
fn copy_bidirectional_over_loopback_tcp_is_cancelled_at_its_deadline() {
    support::run_with_sockets(support::watchdog(async {
        let (client, proxy_in) = support::tcp_pair().await?;
        let (proxy_out, server) = support::tcp_pair().await?;
        // Less than loopback buffers, so that everything goes through before the deadline.
        let up: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let down: Vec<u8> = (0..20_000u32).map(|i| (i / 3) as u8).collect();
        let mut a = BufReader::new(&proxy_in);
        let mut b = BufReader::new(&proxy_out);
        let counts = std::cell::Cell::new((0, 0));
        nursery(async |n| {
            n.start_soon(async {
                client.write_all(&up).await?;
                server.write_all(&down).await?;
                Ok::<_, io::Error>(())
            });
            let res = move_on_after(Duration::from_secs(5), async {
                let e = copy_bidirectional(&mut a, &mut b).await.unwrap_err();
                assert!(is::<Cancelled>(&e.error), "{e:?}");
                counts.set((e.a_to_b, e.b_to_a));
                Err::<(), _>(e)
            })
            .await;
            assert!(matches!(res, Ok(None)), "{res:?}");
            Ok(())
        })
        .await
        .map_err(|e| e.into_first())?;
        assert_eq!(now(), Instant::ZERO + Duration::from_secs(5));
        assert_eq!(counts.get(), (10_000, 20_000), "everything sent had gone through");
        assert!(a.buffer().is_empty() && b.buffer().is_empty());
        let mut got = vec![0; up.len()];
        let mut r = BufReader::new(&server);
        r.read_exact(&mut got).await?;
        assert!(got == up, "the server got the client's bytes, in order");
        let mut got = vec![0; down.len()];
        let mut r = BufReader::new(&client);
        r.read_exact(&mut got).await?;
        assert!(got == down, "the client got the server's bytes, in order");
        // Both ends close: a new copy passes both ends of stream on.
        client.shutdown(Shutdown::Write).await?;
        server.shutdown(Shutdown::Write).await?;
        assert_eq!(copy_bidirectional(&mut a, &mut b).await?, (0, 0));
        let mut buf = [0; 8];
        assert_eq!((server.read(&mut buf).await?, client.read(&mut buf).await?), (0, 0));
        Ok::<_, io::Error>(())
    }))
    .unwrap();
}

#[test]
fn copy_bidirectional_stops_at_a_reset_and_reports_the_counts() {
    support::run_with_sockets(support::watchdog(async {
        let (client, proxy_in) = support::tcp_pair().await?;
        let (proxy_out, server) = support::tcp_pair().await?;
        let mut a = BufReader::new(&proxy_in);
        let mut b = BufReader::new(&proxy_out);
        let res = nursery(async |n| {
            let client = &client;
            n.start_soon(async move {
                client.write_all(&[1; 100]).await?;
                let mut got = [0; 100];
                BufReader::new(&server).read_exact(&mut got).await?;
                server.close_with_reset();
                drop(server); // the reset goes out now
                Ok::<_, io::Error>(())
            });
            Ok::<_, io::Error>(copy_bidirectional(&mut a, &mut b).await)
        })
        .await
        .map_err(|e| e.into_first())?;
        let e = res.unwrap().unwrap_err();
        assert_eq!(e.error.kind(), io::ErrorKind::ConnectionReset, "{e:?}");
        assert_eq!((e.a_to_b, e.b_to_a), (100, 0));
        Ok::<_, io::Error>(())
    }))
    .unwrap();
}

// ---------------------------------------------------------------------------------------------
// MemoryStream specifics (the shared stream rules are in stream_conformance.rs)

#[test]
fn memory_stream_capacity_bounds_each_direction() {
    testing::run(async {
        let (a, b) = memory_stream_pair_with_capacity(5);
        assert_eq!(a.write(b"abcdefgh").await?, 5, "a write takes at most the free space");
        let stats = a.statistics();
        assert_eq!((stats.outgoing_buffered, stats.incoming_buffered, stats.capacity), (5, 0, 5));
        assert_eq!(b.statistics().incoming_buffered, 5);
        let r = move_on_after(ms(100), a.write(b"x")).await;
        assert!(matches!(r, Ok(None)), "a full direction makes writes wait");
        nursery(async |n| {
            let w = n.spawn(async {
                a.write_all(b"fghij").await?;
                Ok(now())
            });
            hatchery::sleep(ms(50)).await?;
            let mut buf = [0; 3];
            assert_eq!(b.read(&mut buf).await?, 3);
            hatchery::sleep(ms(50)).await?;
            let mut buf = [0; 16];
            assert_eq!(b.read(&mut buf).await?, 5);
            assert_eq!(&buf[..5], b"defgh");
            assert_eq!(w.await?, at(200), "write_all finished when the second read made room");
            Ok::<_, io::Error>(())
        })
        .await
        .map_err(|e| e.into_first())?;
        Ok::<_, io::Error>(())
    })
    .unwrap();
}

#[test]
fn memory_stream_throttles_make_short_reads_and_writes() {
    testing::run(async {
        let (a, b) = memory_stream_pair();
        a.set_max_write(NonZeroUsize::new(3));
        b.set_max_read(NonZeroUsize::new(2));
        assert_eq!(a.write(b"abcdefg").await?, 3);
        a.write_all(b"defg").await.unwrap();
        let mut buf = [0; 16];
        assert_eq!(b.read(&mut buf).await?, 2);
        b.set_max_read(None);
        assert_eq!(b.read(&mut buf).await?, 5);
        assert_eq!(&buf[..5], b"cdefg");
        Ok::<_, io::Error>(())
    })
    .unwrap();
}

#[test]
fn memory_stream_close_and_shutdown_read_break_the_peer_writes() {
    testing::run(async {
        let (a, b) = memory_stream_pair();
        b.write_all(b"unread").await.unwrap();
        a.shutdown(Shutdown::Read).await?;
        let mut buf = [0; 8];
        assert_eq!(a.read(&mut buf).await?, 0, "reads end after shutting down reading");
        let e = b.write(b"x").await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
        assert_eq!(b.statistics().outgoing_buffered, 0, "what was unread is discarded");
        b.writable().await?; // a write would not wait: it would fail
        // Writing the other way still works.
        a.write_all(b"still").await.unwrap();
        assert_eq!(b.read(&mut buf).await?, 5);
        Ok::<_, io::Error>(())
    })
    .unwrap();
}

#[test]
fn memory_stream_poll_style_waiter_gives_way_to_an_async_read() {
    testing::run(async {
        let (a, b) = memory_stream_pair();
        nursery(async |n| {
            let poller = n.spawn(async {
                let mut buf = [0; 4];
                let mut r = &b;
                Ok(std::future::poll_fn(|cx| Pin::new(&mut r).poll_read(cx, &mut buf)).await)
            });
            wait_all_tasks_blocked().await?;
            let reader = n.spawn(async {
                let mut buf = [0; 4];
                let k = b.read(&mut buf).await?;
                Ok(buf[..k].to_vec())
            });
            let e = poller.await?.unwrap_err();
            assert!(is::<BusyResource>(&e), "{e:?}");
            a.write_all(b"won").await.unwrap();
            assert_eq!(reader.await?, b"won");
            Ok::<_, io::Error>(())
        })
        .await
        .map_err(|e| e.into_first())?;
        Ok::<_, io::Error>(())
    })
    .unwrap();
}

#[test]
fn memory_stream_poll_read_is_cancelled_only_where_it_would_block() {
    testing::run(async {
        let (a, b) = memory_stream_pair();
        a.write_all(b"ab").await.unwrap();
        let mut buf = [0; 4];
        let res = cancelled_scope()
            .run(async {
                let mut r = &b;
                // Data is there: the poll-style read is not a cancel point and succeeds.
                let n = std::future::poll_fn(|cx| Pin::new(&mut r).poll_read(cx, &mut buf)).await?;
                assert_eq!(&buf[..n], b"ab");
                // Nothing left: it would block, so it fails with Cancelled.
                let e =
                    std::future::poll_fn(|cx| Pin::new(&mut r).poll_read(cx, &mut buf)).await.unwrap_err();
                assert!(is::<Cancelled>(&e));
                Err::<(), _>(e)
            })
            .await;
        assert!(matches!(res, Ok(None)), "{res:?}");
        assert_eq!(testing::registrations().parked, 0);
        Ok::<_, io::Error>(())
    })
    .unwrap();
}

#[test]
fn memory_stream_debug_and_drop() {
    testing::run(async {
        let (a, b): (MemoryStream, MemoryStream) = memory_stream_pair();
        a.write_all(b"xy").await.unwrap();
        let dbg = format!("{a:?}");
        assert!(dbg.contains("outgoing_buffered: 2") && dbg.contains("closed: false"), "{dbg}");
        drop(a);
        let mut buf = [0; 4];
        assert_eq!(b.read(&mut buf).await?, 2, "what was written before the drop arrives");
        assert_eq!(b.read(&mut buf).await?, 0);
        assert_eq!(b.write(b"z").await.unwrap_err().kind(), io::ErrorKind::BrokenPipe);
        Ok::<_, io::Error>(())
    })
    .unwrap();
}

/// A reader that is always ready, with `left` bytes of `b'a'` (no newline), one byte a read.
struct Trickle {
    left: usize,
}

impl AsyncRead for Trickle {
    fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        if self.left == 0 || buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        self.left -= 1;
        buf[0] = b'a';
        Poll::Ready(Ok(1))
    }
}

#[test]
fn reads_that_gather_over_an_always_ready_reader_yield_and_stop_when_cancelled() {
    // `read_to_end`, `read_until` and `read_exact` read many times in one call; over a reader
    // that never waits they must still let other tasks run and see a cancellation between
    // reads, keeping what they read buffered.
    testing::run(async {
        for which in 0..3 {
            let mut r = BufReader::with_capacity(100, Trickle { left: 1_000_000 });
            let scope = CancelScope::new();
            let handle = scope.handle();
            nursery(async |n| {
                n.start_soon(async {
                    for _ in 0..5 {
                        lowlevel::checkpoint().await?;
                    }
                    handle.cancel();
                    Ok(())
                });
                let mut out = Vec::new();
                let mut exact = vec![0; 1_000_000];
                let res = scope
                    .run(async {
                        match which {
                            0 => r.read_to_end(&mut out).await,
                            1 => r.read_until(b'\n', &mut out).await,
                            _ => r.read_exact(&mut exact).await.map(|()| 0),
                        }
                    })
                    .await;
                assert!(matches!(res, Ok(None)), "{which}: {res:?}");
                assert!(out.is_empty(), "a cancelled call hands out nothing");
                let kept = r.buffer().len();
                assert!(kept > 0 && kept < 1_000_000, "{which}: {kept} bytes kept buffered");
                Ok::<_, io::Error>(())
            })
            .await
            .map_err(|e| e.into_first())?;
        }
        Ok::<_, io::Error>(())
    })
    .unwrap();
}

#[test]
fn a_last_line_of_exactly_the_limit_without_a_newline_is_within_it() {
    testing::run(async {
        let mut r = BufReader::new(Scripted::new(&[(0, b"abcde")], 0));
        r.set_max_line_length(Some(5));
        let mut v = Vec::new();
        assert_eq!(r.read_until(b'\n', &mut v).await?, 5);
        assert_eq!(v, b"abcde");
        // A limit of 0 on a stream at its end: no line, no error.
        r.set_max_line_length(Some(0));
        assert_eq!(r.read_until(b'\n', &mut v).await?, 0);
        // One byte over the limit is still too long.
        let mut r = BufReader::new(Scripted::new(&[(0, b"abcdef")], 0));
        r.set_max_line_length(Some(5));
        let e = r.read_until(b'\n', &mut v).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        Ok::<_, io::Error>(())
    })
    .unwrap();
}

#[test]
fn a_write_all_that_wrote_everything_is_not_reported_cancelled() {
    // The write-through waits for room; in the same pass the room comes and the scope is
    // cancelled: the write then completes, and a complete write is `Ok`, not a cancellation
    // with `written == len`.
    testing::run(async {
        let (a, b) = memory_stream_pair_with_capacity(4);
        let mut w = BufWriter::with_capacity(2, &a);
        let scope = CancelScope::new();
        let handle = scope.handle();
        nursery(async |n| {
            n.start_soon(async {
                wait_all_tasks_blocked().await?;
                // Room for the whole write, and the cancellation, before the writer runs.
                let mut buf = [0; 4];
                assert_eq!(b.read(&mut buf).await?, 4);
                handle.cancel();
                Ok(())
            });
            let r = scope.run(async { w.write_all(b"12345678").await.map_err(|e| e.error) }).await;
            assert_eq!(r.map_err(|e| e.to_string()), Ok(Some(())));
            Ok::<_, io::Error>(())
        })
        .await
        .map_err(|e| e.into_first())?;
        let mut buf = [0; 8];
        assert_eq!(b.read(&mut buf).await?, 4);
        assert_eq!(&buf[..4], b"5678");
        Ok::<_, io::Error>(())
    })
    .unwrap();
}

#[test]
fn a_memory_stream_of_capacity_zero_holds_one_byte() {
    testing::run(async {
        let (a, b) = memory_stream_pair_with_capacity(0);
        assert_eq!(a.write(b"xy").await?, 1);
        let mut buf = [0; 4];
        assert_eq!(b.read(&mut buf).await?, 1);
        Ok::<_, io::Error>(())
    })
    .unwrap();
}

/// A long `read_exact` cancelled before anything arrived leaves an empty buffer that had grown
/// for it; the next ordinary read takes no more than the capacity from the stream (before, it
/// took as much as the grown buffer held).
#[test]
fn an_ordinary_read_after_a_cancelled_long_read_takes_at_most_the_capacity() {
    testing::run(async {
        let (a, b) = memory_stream_pair();
        let mut r = BufReader::with_capacity(8, &a);
        let mut big = [0u8; 4096];
        let got = move_on_after(Duration::from_secs(1), r.read_exact(&mut big)).await?;
        assert!(got.is_none(), "nothing to read: the deadline ended it");
        assert!(r.buffer().is_empty());
        b.write_all(&[1u8; 100]).await?;
        let mut small = [0u8; 4];
        assert_eq!(r.read(&mut small).await?, 4);
        assert_eq!(r.buffer().len(), 4, "one fill of the capacity (8), 4 of it taken");
        assert_eq!(a.statistics().incoming_buffered, 92, "the rest is still in the stream");
        Ok::<_, io::Error>(())
    })
    .unwrap();
}
