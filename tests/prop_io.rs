//! Property tests: `BufReader` line, delimiter, exact and plain reads over random input in
//! random chunkings, with random cancellations and dropped calls, against a reference model.
//!
//! 1. `scripted_reader_matches_the_model`: a scripted foreign reader delivers the input in
//!    random chunks at random virtual instants (whole milliseconds), then end of stream. Each
//!    operation runs plainly, under a deadline (always at a half millisecond, so it never ties
//!    with an arrival), in an already-cancelled scope, or is polled once and dropped. The model
//!    knows when the bytes an operation needs arrive, so it predicts for every operation its
//!    exact outcome (bytes, `InvalidData` for a line that is not UTF-8, `UnexpectedEof`, or
//!    cancelled with nothing consumed) and the exact virtual instant it ends at; a plain read's
//!    length is the one thing left open (between 1 and what was asked).
//! 2. `memory_stream_with_a_throttled_writer_loses_nothing`: a writer task sends the input
//!    through a small memory stream with a per-write cap and random pauses, while the reader
//!    runs random operations with random deadlines and drops, under the `Shuffle` policy. Every
//!    result must be the next bytes of the input, and everything returned, drained at the end,
//!    must be the input exactly: nothing lost, nothing duplicated.
//!
//! Default 256 and 128 cases; set `PROPTEST_CASES` for more.

mod support;

use std::collections::VecDeque;
use std::io;
use std::num::NonZeroUsize;
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

use futures_io::AsyncRead;
use hatchery::io::BufReader;
use hatchery::testing::{self, memory_stream_pair_with_capacity};
use hatchery::{Instant, SchedulePolicy, move_on_after, move_on_at, now, nursery, sleep};
use proptest::prelude::*;
use support::{Scripted, cancelled_scope, poll_once};

fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

fn us(t: u64) -> Instant {
    Instant::from_origin(Duration::from_micros(t))
}

fn now_us() -> u64 {
    now().since_origin().as_micros() as u64
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Line,
    Until(u8),
    Exact(usize),
    Read(usize),
    ToEnd,
}

impl Kind {
    /// The delimiter of a line or delimiter read.
    fn delimiter(self) -> Option<u8> {
        match self {
            Kind::Line => Some(b'\n'),
            Kind::Until(b) => Some(b),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum How {
    Plain,
    /// A deadline this many whole milliseconds after the current one, plus half a millisecond.
    Deadline(u64),
    PreCancelled,
    /// Polled once, then dropped.
    Dropped,
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        3 => Just(Kind::Line),
        2 => prop_oneof![Just(b'\n'), Just(b'a'), Just(0xff)].prop_map(Kind::Until),
        3 => (0..24usize).prop_map(Kind::Exact),
        2 => (1..24usize).prop_map(Kind::Read),
        1 => Just(Kind::ToEnd),
    ]
}

fn how() -> impl Strategy<Value = How> {
    prop_oneof![
        3 => Just(How::Plain),
        4 => (1..12u64).prop_map(How::Deadline),
        1 => Just(How::PreCancelled),
        2 => Just(How::Dropped),
    ]
}

fn byte() -> impl Strategy<Value = u8> {
    prop_oneof![4 => Just(b'a'), 2 => Just(b'b'), 2 => Just(b'\n'), 1 => Just(0xffu8)]
}

/// Runs one operation; the bytes it returned. An appending read's `out` starts with a marker
/// that must survive.
async fn run_op<R: AsyncRead + Unpin>(r: &mut BufReader<R>, kind: Kind) -> io::Result<Vec<u8>> {
    const MARK: &str = "#";
    // What an appending read appended after the marker: its count if it succeeded, nothing if
    // it failed.
    let appended = |res: io::Result<usize>, mut v: Vec<u8>| {
        assert!(v.starts_with(MARK.as_bytes()), "the caller's buffer lost its contents");
        v.drain(..MARK.len());
        match res {
            Ok(n) => {
                assert_eq!(n, v.len());
                Ok(v)
            }
            Err(e) => {
                assert!(v.is_empty(), "a failed {kind:?} appended {v:?}");
                Err(e)
            }
        }
    };
    match kind {
        Kind::Line => {
            let mut s = String::from(MARK);
            let res = r.read_line(&mut s).await;
            appended(res, s.into_bytes())
        }
        Kind::Until(b) => {
            let mut v = MARK.as_bytes().to_vec();
            let res = r.read_until(b, &mut v).await;
            appended(res, v)
        }
        Kind::Exact(n) => {
            let mut buf = vec![0x55; n];
            match r.read_exact(&mut buf).await {
                Ok(()) => Ok(buf),
                Err(e) => {
                    assert!(buf.iter().all(|&x| x == 0x55), "a failed read_exact wrote into the buffer");
                    Err(e)
                }
            }
        }
        Kind::Read(n) => {
            let mut buf = vec![0; n];
            let k = r.read(&mut buf).await?;
            buf.truncate(k);
            Ok(buf)
        }
        Kind::ToEnd => {
            let mut v = MARK.as_bytes().to_vec();
            let res = r.read_to_end(&mut v).await;
            appended(res, v)
        }
    }
}

/// What an operation does, by the model.
#[derive(Debug, PartialEq, Eq)]
enum Expect {
    /// Exactly these bytes.
    Bytes(Vec<u8>),
    /// Between 1 and this many of the next bytes.
    Some(usize),
    InvalidData,
    UnexpectedEof,
}

struct Model {
    input: Vec<u8>,
    /// Arrival instant (µs) of each input byte.
    arrival: Vec<u64>,
    eof_at: u64,
}

impl Model {
    /// When the operation can complete, and its outcome, with `p` bytes consumed so far.
    fn predict(&self, kind: Kind, p: usize, start: u64) -> (u64, Expect) {
        let rest = &self.input[p..];
        let (need, expect) = match kind {
            Kind::Line | Kind::Until(_) => {
                let delim = kind.delimiter().unwrap();
                let (need, line) = match rest.iter().position(|&b| b == delim) {
                    Some(i) => (self.arrival[p + i], &rest[..=i]),
                    None => (self.eof_at, rest),
                };
                let bad = matches!(kind, Kind::Line) && std::str::from_utf8(line).is_err();
                (need, if bad { Expect::InvalidData } else { Expect::Bytes(line.to_vec()) })
            }
            Kind::Exact(0) => (start, Expect::Bytes(Vec::new())),
            Kind::Exact(n) if n <= rest.len() => (self.arrival[p + n - 1], Expect::Bytes(rest[..n].to_vec())),
            Kind::Exact(_) => (self.eof_at, Expect::UnexpectedEof),
            Kind::Read(_) if rest.is_empty() => (self.eof_at, Expect::Bytes(Vec::new())),
            Kind::Read(n) => (self.arrival[p], Expect::Some(n)),
            Kind::ToEnd => (self.eof_at, Expect::Bytes(rest.to_vec())),
        };
        (need.max(start), expect)
    }
}

/// Checks an outcome against the model; the number of bytes consumed.
fn check(got: &io::Result<Vec<u8>>, expect: &Expect, rest: &[u8]) -> Result<usize, TestCaseError> {
    match (got, expect) {
        (Ok(v), Expect::Bytes(want)) => {
            prop_assert_eq!(v, want);
            Ok(v.len())
        }
        (Ok(v), Expect::Some(n)) => {
            prop_assert!(!v.is_empty() && v.len() <= *n, "read {} of at most {}", v.len(), n);
            prop_assert_eq!(&v[..], &rest[..v.len()]);
            Ok(v.len())
        }
        (Err(e), Expect::InvalidData) if e.kind() == io::ErrorKind::InvalidData => Ok(0),
        (Err(e), Expect::UnexpectedEof) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(0),
        (got, expect) => Err(TestCaseError::fail(format!("got {got:?}, the model expected {expect:?}"))),
    }
}

/// Chunks with their arrival instants (µs).
type Chunks = VecDeque<(u64, Vec<u8>)>;

/// Splits `input` into chunks of the given sizes (cycled), at increasing whole milliseconds:
/// the chunks, each byte's arrival instant and the instant of the end of stream (µs).
fn schedule(input: &[u8], sizes: &[usize], gaps: &[u64]) -> (Chunks, Vec<u64>, u64) {
    let mut chunks = VecDeque::new();
    let mut arrival = Vec::new();
    let mut t = 0;
    let mut i = 0;
    let mut k = 0;
    while i < input.len() {
        t += gaps[k % gaps.len()] * 1000;
        let n = sizes[k % sizes.len()].min(input.len() - i);
        chunks.push_back((t, input[i..i + n].to_vec()));
        arrival.extend(std::iter::repeat_n(t, n));
        i += n;
        k += 1;
    }
    let eof_at = t + gaps[k % gaps.len()].max(1) * 1000;
    (chunks, arrival, eof_at)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(256), ..ProptestConfig::default() })]

    #[test]
    fn scripted_reader_matches_the_model(
        input in prop::collection::vec(byte(), 0..200),
        sizes in prop::collection::vec(1..20usize, 1..8),
        gaps in prop::collection::vec(0..4u64, 1..8),
        capacity in 1..16usize,
        ops in prop::collection::vec((kind(), how()), 0..40),
    ) {
        let (chunks, arrival, eof_at) = schedule(&input, &sizes, &gaps);
        // A gap of 0 puts two chunks at the same instant: both are there at once.
        let model = Model { input: input.clone(), arrival, eof_at };
        let result: Result<(), TestCaseError> = testing::run(async {
            let reader = Scripted::at(chunks.into_iter().map(|(t, b)| (us(t), b)), us(eof_at));
            let mut r = BufReader::with_capacity(capacity, reader);
            let mut p = 0;
            let mut collected = Vec::new();
            for &(kind, how) in &ops {
                let start = now_us();
                let (need, expect) = model.predict(kind, p, start);
                let got = match how {
                    How::Plain => Some(run_op(&mut r, kind).await),
                    How::Deadline(d) => {
                        let deadline = start / 1000 * 1000 + d * 1000 + 500;
                        let res = move_on_at(us(deadline), run_op(&mut r, kind)).await;
                        if res.as_ref().is_ok_and(Option::is_none) {
                            prop_assert!(need > deadline, "cancelled although ready at {} µs", need);
                            prop_assert_eq!(now_us(), deadline);
                            None
                        } else {
                            prop_assert!(need <= deadline, "not cancelled at {} µs although it needed {} µs", deadline, need);
                            Some(res.map(Option::unwrap))
                        }
                    }
                    How::PreCancelled => {
                        let res = cancelled_scope().run(run_op(&mut r, kind)).await;
                        prop_assert!(matches!(res, Ok(None)), "{:?}", res);
                        prop_assert_eq!(now_us(), start);
                        None
                    }
                    How::Dropped => {
                        let mut fut = pin!(run_op(&mut r, kind));
                        match poll_once(fut.as_mut()).await {
                            Poll::Ready(res) => Some(res),
                            Poll::Pending => {
                                prop_assert_eq!(now_us(), start);
                                None
                            }
                        }
                    }
                };
                if let Some(got) = got {
                    prop_assert_eq!(now_us(), need, "{:?} ended at the wrong instant", kind);
                    let n = check(&got, &expect, &input[p..])?;
                    collected.extend_from_slice(&input[p..p + n]);
                    p += n;
                }
                prop_assert!(r.buffer().len() <= input.len() - p, "buffered more than is left");
                prop_assert_eq!(r.buffer(), &input[p..p + r.buffer().len()], "the buffer holds the next bytes");
            }
            let before = now_us();
            let mut rest = Vec::new();
            r.read_to_end(&mut rest).await.unwrap();
            collected.extend_from_slice(&rest);
            prop_assert_eq!(collected, input.clone(), "nothing lost, nothing duplicated");
            prop_assert_eq!(now_us(), eof_at.max(before), "read_to_end ends at the end of stream");
            Ok(())
        });
        result?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(128), ..ProptestConfig::default() })]

    #[test]
    fn memory_stream_with_a_throttled_writer_loses_nothing(
        input in prop::collection::vec(byte(), 0..400),
        sizes in prop::collection::vec(1..40usize, 1..8),
        pauses in prop::collection::vec(0..3u64, 1..8),
        pipe in 1..48usize,
        max_write in 1..16usize,
        capacity in 1..16usize,
        seed in any::<u64>(),
        ops in prop::collection::vec((kind(), how()), 0..40),
    ) {
        let builder = testing::builder().seed(seed).schedule(SchedulePolicy::Shuffle);
        let result: Result<(), TestCaseError> = builder.run(async {
            let (a, b) = memory_stream_pair_with_capacity(pipe);
            a.set_max_write(NonZeroUsize::new(max_write));
            let mut r = BufReader::with_capacity(capacity, &b);
            let mut p = 0;
            let mut collected = Vec::new();
            nursery(async |n| {
                n.start_soon(async {
                    let mut i = 0;
                    let mut k = 0;
                    while i < input.len() {
                        let len = sizes[k % sizes.len()].min(input.len() - i);
                        a.write_all(&input[i..i + len]).await?;
                        i += len;
                        sleep(Duration::from_millis(pauses[k % pauses.len()])).await?;
                        k += 1;
                    }
                    a.shutdown(std::net::Shutdown::Write).await
                });
                for &(kind, how) in &ops {
                    let got = match how {
                        How::Plain => Some(run_op(&mut r, kind).await),
                        How::Deadline(d) => {
                            move_on_after(Duration::from_micros(d * 500), run_op(&mut r, kind)).await.transpose()
                        }
                        How::PreCancelled => {
                            let res = cancelled_scope().run(run_op(&mut r, kind)).await;
                            assert!(matches!(res, Ok(None)), "{res:?}");
                            None
                        }
                        How::Dropped => {
                            let mut fut = pin!(run_op(&mut r, kind));
                            match poll_once(fut.as_mut()).await {
                                Poll::Ready(res) => Some(res),
                                Poll::Pending => None,
                            }
                        }
                    };
                    let rest = &input[p..];
                    match got {
                        None => {}
                        Some(Ok(v)) => {
                            assert_eq!(&v[..], &rest[..v.len()], "{kind:?} returned what does not come next");
                            match kind {
                                Kind::Exact(n) => assert_eq!(v.len(), n),
                                Kind::Read(_) => assert!(!v.is_empty() || rest.is_empty()),
                                Kind::Line | Kind::Until(_) => {
                                    let delim = kind.delimiter().unwrap();
                                    let end = rest.iter().position(|&b| b == delim).map_or(rest.len(), |i| i + 1);
                                    assert_eq!(v.len(), end, "{kind:?} stopped early or late");
                                }
                                Kind::ToEnd => assert_eq!(v.len(), rest.len()),
                            }
                            collected.extend_from_slice(&v);
                            p += v.len();
                        }
                        Some(Err(e)) => match e.kind() {
                            io::ErrorKind::InvalidData => {
                                let end = rest.iter().position(|&b| b == b'\n').map_or(rest.len(), |i| i + 1);
                                assert!(std::str::from_utf8(&rest[..end]).is_err());
                            }
                            io::ErrorKind::UnexpectedEof => {
                                let Kind::Exact(n) = kind else { panic!("{kind:?}: {e}") };
                                assert!(rest.len() < n);
                            }
                            _ => panic!("{kind:?}: unexpected error {e:?}"),
                        },
                    }
                    assert_eq!(r.buffer(), &input[p..p + r.buffer().len()], "the buffer holds the next bytes");
                }
                let mut rest = Vec::new();
                r.read_to_end(&mut rest).await?;
                collected.extend_from_slice(&rest);
                Ok::<_, io::Error>(())
            })
            .await
            .map_err(|e| e.into_first())
            .unwrap();
            prop_assert_eq!(collected, input.clone(), "nothing lost, nothing duplicated");
            Ok(())
        });
        result?;
    }
}
