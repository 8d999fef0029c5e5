//! The `tokio-io` feature: tokio's `AsyncRead`/`AsyncWrite` on hatchery's streams, driven the
//! way a crate written against tokio's traits drives them (only the traits' poll methods,
//! through small generic helpers; no tokio runtime anywhere). Run with
//! `cargo test --features tokio-io --test tokio_io`.
#![cfg(feature = "tokio-io")]

mod support;

use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::Poll;

use hatchery::net::UnixStream;
use hatchery::testing::{self, memory_stream_pair, memory_stream_pair_with_capacity};
use hatchery::{CancelError, nursery};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// One read into `cap` bytes of uninitialised storage: what it filled (empty at end of stream).
async fn read_once<R: AsyncRead + Unpin>(r: &mut R, cap: usize) -> io::Result<Vec<u8>> {
    let mut storage = vec![MaybeUninit::<u8>::uninit(); cap];
    poll_fn(|cx| {
        let mut buf = ReadBuf::uninit(&mut storage);
        match Pin::new(&mut *r).poll_read(cx, &mut buf) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(buf.filled().to_vec())),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

/// Reads until end of stream.
async fn read_to_end<R: AsyncRead + Unpin>(mut r: R) -> io::Result<Vec<u8>> {
    let mut all = Vec::new();
    loop {
        let got = read_once(&mut r, 4096).await?;
        if got.is_empty() {
            return Ok(all);
        }
        all.extend_from_slice(&got);
    }
}

/// Writes all of `data`, flushes, then shuts down writing.
async fn write_all_and_shutdown<W: AsyncWrite + Unpin>(mut w: W, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        let n = poll_fn(|cx| Pin::new(&mut w).poll_write(cx, data)).await?;
        data = &data[n..];
    }
    poll_fn(|cx| Pin::new(&mut w).poll_flush(cx)).await?;
    poll_fn(|cx| Pin::new(&mut w).poll_shutdown(cx)).await
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

/// `data` from `w` to `r` with a writer task and a reader at once (more than the buffers hold,
/// so both wait in turn); returns what arrived before the end of stream.
async fn one_way<R, W>(r: R, w: W, data: &[u8]) -> io::Result<Vec<u8>>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let got = nursery(async |n| {
        n.start_soon(write_all_and_shutdown(w, data));
        read_to_end(r).await
    })
    .await
    .map_err(|e| e.into_first())?;
    Ok(got.expect("nothing cancels this nursery"))
}

#[test]
fn tcp_streams_carry_every_byte_both_ways_through_tokios_traits() {
    support::run_with_sockets(support::watchdog(async {
        let (a, b) = support::tcp_pair().await?;
        let there = pattern(256 << 10);
        let back = pattern(3000);
        // `&TcpStream` implements the traits too: one task writes while another reads.
        assert_eq!(one_way(&b, &a, &there).await?, there);
        assert_eq!(one_way(&a, &b, &back).await?, back);
        Ok(())
    }))
    .unwrap();
}

#[test]
fn owned_halves_unix_streams_and_memory_streams_implement_them_too() {
    support::run_with_sockets(support::watchdog(async {
        let data = pattern(100_000);
        let (a, b) = UnixStream::pair()?;
        let (_a_read, a_write) = a.into_split();
        let (b_read, _b_write) = b.into_split();
        assert_eq!(one_way(b_read, a_write, &data).await?, data);

        let (a, b) = memory_stream_pair();
        assert_eq!(one_way(&b, &a, &data).await?, data);
        assert_eq!(one_way(a, b, b"by value").await?, b"by value");
        Ok(())
    }))
    .unwrap();
}

#[test]
fn a_read_appends_after_what_the_buffer_already_holds() {
    testing::run(async {
        let (a, mut b) = memory_stream_pair();
        a.write_all(b"cd").await.unwrap();
        let mut storage = [0u8; 8];
        let filled = poll_fn(|cx| {
            let mut buf = ReadBuf::new(&mut storage);
            buf.put_slice(b"ab");
            match Pin::new(&mut b).poll_read(cx, &mut buf) {
                Poll::Ready(r) => Poll::Ready(r.map(|()| buf.filled().to_vec())),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
        .unwrap();
        assert_eq!(filled, b"abcd");
        // A full buffer reads nothing (as std's `read` of an empty buffer; hatchery's own async
        // `read` of an empty slice is an error).
        let mut full = [0u8; 2];
        let empty = poll_fn(|cx| {
            let mut buf = ReadBuf::new(&mut full);
            buf.put_slice(b"xy");
            Poll::Ready(Pin::new(&mut b).poll_read(cx, &mut buf).map(|r| r.map(|()| buf.filled().len())))
        })
        .await;
        assert!(matches!(empty, Poll::Ready(Ok(2))), "{empty:?}");
    });
}

#[test]
fn a_read_that_would_block_in_a_cancelled_scope_fails_with_cancelled_and_takes_nothing() {
    testing::run(async {
        let (a, mut b) = memory_stream_pair();
        let e = support::in_cancelled_scope(read_once(&mut b, 16)).await.unwrap_err();
        assert!(e.cancelled().is_some(), "{e}");
        // With bytes there it does not block: they are read, cancelled scope or not.
        a.write_all(b"hello").await.unwrap();
        assert_eq!(support::in_cancelled_scope(read_once(&mut b, 16)).await.unwrap(), b"hello");
    });
}

#[test]
fn a_full_buffer_on_a_closed_stream_still_reports_the_close() {
    testing::run(async {
        let (a, _b) = memory_stream_pair();
        a.close();
        let mut a = a;
        let mut none = [0u8; 0];
        let r = poll_fn(|cx| {
            let mut buf = ReadBuf::new(&mut none);
            Poll::Ready(Pin::new(&mut a).poll_read(cx, &mut buf))
        })
        .await;
        let e = match r {
            Poll::Ready(Err(e)) => e,
            other => panic!("expected the close, got {other:?}"),
        };
        assert!(support::inner::<hatchery::ClosedResource>(&e).is_some(), "{e}");
        // Shutting down twice is harmless.
        let (c, _d) = memory_stream_pair();
        let mut c = c;
        poll_fn(|cx| Pin::new(&mut c).poll_shutdown(cx)).await.unwrap();
        poll_fn(|cx| Pin::new(&mut c).poll_shutdown(cx)).await.unwrap();
    });
}

#[test]
fn a_read_fills_at_most_16_kib_of_a_large_buffer_per_call() {
    testing::run(async {
        let (a, mut b) = memory_stream_pair_with_capacity(64 << 10);
        a.write_all(&pattern(40 << 10)).await.unwrap();
        let got = read_once(&mut b, 1 << 20).await.unwrap();
        assert_eq!(got, pattern(16 << 10), "bounded, and the first bytes in order");
    });
}
